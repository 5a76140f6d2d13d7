"""The public Python surface as a notebook user meets it: bad inputs give clear
exceptions naming the argument, Tensors mix with NumPy, modules print and round-trip,
every encoding in the catalogue works (or says why not), and the fused and
materialised attention paths agree through ``relpos.functional.attention``.

The ``test_fixed_*`` cases at the end were found by this file and then fixed.
"""
import re

import numpy as np
import pytest

import relpos
import relpos.functional as F
from relpos import Tensor, encodings, nn, optim

ALL = [row["name"] for row in encodings.available()]
ROW = {row["name"]: row for row in encodings.available()}
# what an absolute encoding needs beyond n_heads/head_dim: the vocabulary or a length
EXTRA = {"complex": dict(vocab_size=11, d_model=16), "learned": dict(max_len=32, d_model=16)}
ABSOLUTE = [n for n in ALL if "A" in ROW[n]["channel"]]
IN_ATTENTION = [n for n in ALL if n not in ABSOLUTE or n == "none"]
BIAS = [n for n in ALL if "B" in ROW[n]["channel"]]


def t(a, grad=False):
    return relpos.tensor(np.asarray(a, np.float32), requires_grad=grad)


# ---------------------------------------------------------------------------
# Tensor and autograd usability
# ---------------------------------------------------------------------------

def test_tensor_repr_numpy_and_array_protocol():
    x = t(np.arange(6).reshape(2, 3), grad=True)
    r = repr(x)
    assert r.startswith("Tensor([[") and "requires_grad=True" in r
    assert "requires_grad" not in repr(t([1.0]))
    big = repr(t(np.zeros((100, 100))))
    assert "..." in big and len(big) < 600
    assert x.numpy() is x.data                       # no copy
    a = np.asarray(x)                                # float32 data, not an object array
    assert a.dtype == np.float32 and np.shares_memory(a, x.data)
    assert np.asarray(x, dtype=np.float64).dtype == np.float64
    assert not np.shares_memory(np.array(x), x.data)


BINOPS = {
    "+": (lambda a, b: a + b, np.add),
    "-": (lambda a, b: a - b, np.subtract),
    "*": (lambda a, b: a * b, np.multiply),
    "/": (lambda a, b: a / b, np.divide),
}


@pytest.mark.parametrize("op", list(BINOPS))
@pytest.mark.parametrize("other", ["ndarray", "int", "float", "np.float32", "row"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_operators_mix_with_numpy_and_scalars(op, other, side):
    """Tensor (op) x and x (op) Tensor both give a Tensor with NumPy's values and
    gradients summed back to the Tensor's shape."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
    o = {"ndarray": rng.uniform(0.5, 2, (2, 3)).astype(np.float32), "int": 3, "float": 1.5,
         "np.float32": np.float32(2.5), "row": rng.uniform(0.5, 2, (3,)).astype(np.float32)}[other]
    f, npf = BINOPS[op]
    x = t(base, grad=True)
    y = f(x, o) if side == "left" else f(o, x)
    assert isinstance(y, Tensor), type(y)
    want = npf(base, o) if side == "left" else npf(o, base)
    np.testing.assert_allclose(y.data, want, rtol=1e-6)
    y.sum().backward()
    eps = 1e-3
    xd = base.astype(np.float64)
    num = np.zeros_like(xd)
    for i in np.ndindex(xd.shape):
        for s in (1, -1):
            xx = xd.copy()
            xx[i] += s * eps
            num[i] += s * (npf(xx, o) if side == "left" else npf(o, xx)).sum() / (2 * eps)
    np.testing.assert_allclose(x.grad, num, rtol=2e-3, atol=2e-3)


def test_matmul_with_ndarray_on_either_side():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 2)).astype(np.float32)
    assert isinstance(a @ t(b), Tensor) and isinstance(t(a) @ b, Tensor)
    np.testing.assert_allclose((a @ t(b)).data, a @ b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [2, 1])
def test_pow_values_and_gradient(p):
    x = t([0.5, 1.0, 2.0, 3.0], grad=True)
    y = x ** p
    np.testing.assert_allclose(y.data, np.array([0.5, 1, 2, 3]) ** p, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, p * np.array([0.5, 1, 2, 3]) ** (p - 1), rtol=1e-5)


def test_pow_other_exponents_say_what_works():
    with pytest.raises(TypeError, match=r"only \*\* 2"):
        t([1.0]) ** 3


def test_scalar_conversions_follow_numpy():
    loss = (t([1.0, 2.0], grad=True) * 2).sum()
    assert float(loss) == 6.0 and loss.item() == 6.0
    assert bool(t(1.0)) and not bool(t([0.0]))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(t([1.0, 2.0]))                          # was True whatever the values
    with pytest.raises(ValueError, match="ambiguous"):
        if t([0.0, 0.0]):
            pass
    with pytest.raises(TypeError, match="one-element"):
        float(t([1.0, 2.0]))


def test_backward_twice_accumulates_and_zero_grad_clears():
    x = t([1.0, 2.0, 3.0], grad=True)
    y = (x * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, [2, 4, 6])
    y.backward()                                     # the graph is kept: gradients add up
    np.testing.assert_allclose(x.grad, [4, 8, 12])
    x.zero_grad()
    assert x.grad is None
    lin = nn.Linear(3, 2, seed=0)
    for _ in range(2):
        lin(x).sum().backward()
    np.testing.assert_allclose(lin.bias.grad, [2, 2])
    lin.zero_grad()
    assert all(p.grad is None for p in lin.parameters())


def test_backward_mistakes_are_clear():
    x = t([1.0, 2.0], grad=True)
    with pytest.raises(RuntimeError, match="grad must be given for a non-scalar"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"grad must have shape \(2,\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        (t([1.0]) * 2).sum().backward()
    with relpos.no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and relpos.is_grad_enabled()
    with pytest.raises(RuntimeError, match="no_grad"):
        y.backward()


def test_in_place_looking_mistakes_are_refused():
    x = t([1.0, 2.0], grad=True)
    with pytest.raises(TypeError):
        x[0] = 5.0                                   # no silent in-place write into the graph
    lin = nn.Linear(2, 2, seed=0)
    with pytest.raises(TypeError, match="cannot assign Tensor to parameter 'weight'"):
        lin.weight += 1.0                            # would replace the Parameter by a non-leaf Tensor
    with pytest.raises(TypeError, match="cannot assign"):
        lin.weight = np.zeros((2, 2))


def test_custom_function_outputs_are_float32_tensors():
    """A user's Function whose forward returns float64, a NumPy scalar or a list still
    gives a float32 Tensor (the Tensor contract), and its backward is used."""
    class Square(relpos.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.astype(np.float64) ** 2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved
            return 2 * x * g

    class Total(relpos.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return x.sum()                           # a NumPy scalar, not an ndarray

        @staticmethod
        def backward(ctx, g):
            return np.broadcast_to(g, ctx.shape)

    x = t([1.0, 2.0, 3.0], grad=True)
    y = Square.apply(x)
    assert y.dtype == np.float32 and type(y.data) is np.ndarray
    z = Total.apply(y)
    assert z.shape == () and z.dtype == np.float32
    z.backward()
    np.testing.assert_allclose(x.grad, [2, 4, 6])


@pytest.mark.parametrize("bad, exc, match", [
    (None, TypeError, "dtype object"),
    ("abc", TypeError, "dtype <U3"),
    (np.ones(2, complex), TypeError, "complex"),
])
def test_tensor_from_bad_data(bad, exc, match):
    with pytest.raises(exc, match=match):
        relpos.tensor(bad)


def test_tensor_converts_and_copies():
    a = np.arange(3)
    x = relpos.tensor(a)
    assert x.dtype == np.float32 and not np.shares_memory(x.data, a)
    assert relpos.tensor([1, 2]).shape == (2,)


# ---------------------------------------------------------------------------
# functional ops with bad inputs: clear exceptions naming the argument
# ---------------------------------------------------------------------------

X = np.ones((2, 3, 4), np.float32)
W = np.ones((10, 4), np.float32)

BAD_CALLS = [
    ("add bad broadcast", lambda: F.add(X, np.ones(5)), ValueError, r"\(2, 3, 4\).*\(5,\)"),
    ("mul None", lambda: F.mul(X, None), TypeError, "^b must be real"),
    ("add str", lambda: F.add("a", X), TypeError, "^a must be real"),
    ("add complex", lambda: F.add(X, 1j), TypeError, "complex"),
    ("matmul 1-d", lambda: F.matmul(np.ones(3), np.ones(3)), ValueError, r"at least 2-D.*\(3,\)"),
    ("matmul K", lambda: F.matmul(np.ones((2, 3)), np.ones((4, 5))), ValueError, "K=3.*K=4"),
    ("matmul batch", lambda: F.matmul(np.ones((2, 3, 4)), np.ones((3, 4, 5))), ValueError, "batch"),
    ("linear x", lambda: F.linear(np.ones((2, 3)), np.ones((4, 5))), ValueError, r"in_features=5.*\(2, 3\)"),
    ("linear bias", lambda: F.linear(np.ones((2, 3)), np.ones((4, 3)), np.ones(3)), ValueError, "bias"),
    ("linear weight 1-d", lambda: F.linear(np.ones((2, 3)), np.ones(3)), ValueError, "weight"),
    ("gelu approx", lambda: F.gelu(X, approximate="erf"), ValueError, "approximate.*'erf'"),
    ("gelu None", lambda: F.gelu(None), TypeError, "^x must be real"),
    ("layer_norm weight", lambda: F.layer_norm(X, np.ones(3)), ValueError, r"weight.*\(4,\).*\(3,\)"),
    ("layer_norm bias", lambda: F.layer_norm(X, np.ones(4), np.ones(5)), ValueError, r"bias.*\(5,\)"),
    ("layer_norm eps", lambda: F.layer_norm(X, eps=-1.0), ValueError, "eps"),
    ("layer_norm 0-d", lambda: F.layer_norm(1.0), ValueError, "0-d"),
    ("rms_norm weight", lambda: F.rms_norm(X, np.ones(3)), ValueError, "weight"),
    ("softmax axis", lambda: F.softmax(X, axis=3), ValueError, "axis.*got 3"),
    ("softmax axis float", lambda: F.softmax(X, axis=1.0), TypeError, "axis must be an int"),
    ("ce float targets", lambda: F.cross_entropy(np.ones((2, 5)), np.array([1.0, 2.0])), TypeError, "targets.*integer"),
    ("ce Tensor targets", lambda: F.cross_entropy(np.ones((2, 5)), t([1, 2])), TypeError, "targets"),
    ("ce out of range", lambda: F.cross_entropy(np.ones((2, 5)), np.array([1, 5])), IndexError, r"targets\[1\] = 5.*V = 5"),
    ("ce negative", lambda: F.cross_entropy(np.ones((2, 5)), np.array([-1, 0])), IndexError, "-1"),
    ("ce shape", lambda: F.cross_entropy(np.ones((2, 5)), np.array([1, 2, 3])), ValueError, r"targets.*\(2,\).*\(3,\)"),
    ("ce ignore_index", lambda: F.cross_entropy(np.ones((2, 5)), np.array([1, 2]), ignore_index=1.5), TypeError, "ignore_index"),
    ("embedding float ids", lambda: F.embedding(np.array([1.0]), W), TypeError, "ids.*integer.*float64"),
    ("embedding bool ids", lambda: F.embedding(np.array([True]), W), TypeError, "ids.*bool"),
    ("embedding Tensor ids", lambda: F.embedding(t([1]), W), TypeError, "ids"),
    ("embedding out of range", lambda: F.embedding(np.array([3, 10]), W), IndexError, "10.*V = 10"),
    ("embedding negative", lambda: F.embedding(np.array([-1]), W), IndexError, "-1"),
    ("embedding weight 1-d", lambda: F.embedding(np.array([1]), np.ones(10)), ValueError, r"weight.*\(V, D\)"),
    ("dropout p=1", lambda: F.dropout(X, 1.0, 0), ValueError, r"p must be in \[0, 1\); got 1.0"),
    ("dropout p nan", lambda: F.dropout(X, float("nan"), 0), ValueError, "p must be"),
    ("dropout p str", lambda: F.dropout(X, "0.1", 0), TypeError, "p must be"),
    ("dropout seed", lambda: F.dropout(X, 0.1, -1), ValueError, "seed"),
    ("dropout seed None", lambda: F.dropout(X, 0.1, None), TypeError, "seed"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_functional_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _layouts(a):
    """The same values as C-order, Fortran-order and strided (non-contiguous) arrays."""
    f = np.asfortranarray(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return {"C": a, "F": f, "strided": wide[..., ::2], "float64": a.astype(np.float64)}


@pytest.mark.parametrize("layout", ["C", "F", "strided", "float64"])
def test_ops_are_right_for_any_memory_layout(layout):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    A = _layouts(a)[layout]
    np.testing.assert_allclose(F.add(A, a).data, 2 * a, rtol=1e-6)
    np.testing.assert_allclose(F.mul(A, a[0]).data, a * a[0], rtol=1e-6)
    np.testing.assert_allclose(F.matmul(A, _layouts(b)[layout]).data, a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.linear(A, _layouts(w)[layout]).data, a @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.softmax(A).data, np.exp(a) / np.exp(a).sum(-1, keepdims=True), rtol=1e-5)
    mu, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
    np.testing.assert_allclose(F.layer_norm(A).data, (a - mu) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    ids = _layouts(np.array([[0, 2, 4], [1, 3, 9]]))[layout if layout != "float64" else "C"]
    table = rng.standard_normal((10, 3)).astype(np.float32)
    np.testing.assert_array_equal(F.embedding(ids, table).data, table[np.asarray(ids)])
    tg = _layouts(np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 1, 1]]))["strided"][:, 0]
    lse = np.log(np.exp(a).sum(-1))
    np.testing.assert_allclose(F.cross_entropy(A, tg).item(), np.mean(lse - a[np.arange(3), tg]), rtol=1e-5)


@pytest.mark.parametrize("shape_a, shape_b", [((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)), ((1, 4), (3, 1)),
                                              ((2, 1, 4), (1, 3, 1)), ((), (2, 3))])
@pytest.mark.parametrize("op", ["+", "*", "-", "/"])
def test_broadcast_gradients_sum_back(shape_a, shape_b, op):
    rng = np.random.default_rng(4)
    a = t(rng.uniform(0.5, 2, shape_a), grad=True)
    b = t(rng.uniform(0.5, 2, shape_b), grad=True)
    f, npf = BINOPS[op]
    y = f(a, b)
    np.testing.assert_allclose(y.data, npf(a.data, b.data), rtol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    ad, bd = a.data.astype(np.float64), b.data.astype(np.float64)
    da = {"+": g, "-": g, "*": g * bd, "/": g / bd}[op]
    db = {"+": g, "-": -g, "*": g * ad, "/": -g * ad / bd ** 2}[op]
    np.testing.assert_allclose(a.grad, relpos.functional.unbroadcast(da, a.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.grad, relpos.functional.unbroadcast(db, b.shape), rtol=1e-5, atol=1e-5)


def test_zero_size_inputs_give_empty_results():
    assert F.add(np.ones((0, 3)), np.ones(3)).shape == (0, 3)
    assert F.matmul(np.ones((0, 4)), np.ones((4, 5))).shape == (0, 5)
    assert F.linear(np.ones((0, 4)), np.ones((2, 4))).shape == (0, 2)
    assert F.layer_norm(np.ones((2, 0))).shape == (2, 0)
    assert F.softmax(np.ones((0, 3))).shape == (0, 3)
    assert F.embedding(np.zeros((0,), np.int64), W).shape == (0, 4)


def test_nan_propagates_instead_of_vanishing():
    assert np.isnan(F.matmul(np.full((2, 2), np.nan), np.eye(2)).data).all()
    assert np.isnan(F.cross_entropy(np.full((2, 5), np.nan), np.array([1, 2])).item())
    assert np.isnan(F.layer_norm(np.array([[np.nan, 1.0, 2.0]])).data).all()


# ---------------------------------------------------------------------------
# nn layers: constructors, forward, repr, state
# ---------------------------------------------------------------------------

BAD_LAYERS = [
    ("Linear 0", lambda: nn.Linear(0, 3), ValueError, "in_features must be > 0; got 0"),
    ("Linear -1", lambda: nn.Linear(4, -1), ValueError, "out_features"),
    ("Linear float", lambda: nn.Linear(2.0, 3), TypeError, "in_features must be an int; got float"),
    ("Linear seed", lambda: nn.Linear(2, 3, seed="x"), TypeError, "seed"),
    ("Embedding 0", lambda: nn.Embedding(0, 4), ValueError, "num_embeddings"),
    ("LayerNorm 0", lambda: nn.LayerNorm(0), ValueError, "d must be > 0"),
    ("LayerNorm eps", lambda: nn.LayerNorm(4, eps=0), ValueError, "eps"),
    ("RMSNorm eps", lambda: nn.RMSNorm(4, eps=float("nan")), ValueError, "eps"),
    ("Dropout 1", lambda: nn.Dropout(1.0), ValueError, r"p must be in \[0, 1\)"),
    ("Dropout str", lambda: nn.Dropout("a"), TypeError, "p must be"),
    ("MLP hidden", lambda: nn.MLP(4, 0), ValueError, "d_hidden"),
    ("MLP activation", lambda: nn.MLP(4, 8, activation="tanhh"), ValueError, "activation must be one of.*gelu"),
    ("Sequential item", lambda: nn.Sequential(nn.ReLU(), 3), TypeError, "item 1 must be a Module"),
    ("MHA divisible", lambda: nn.MultiHeadAttention(10, 3), ValueError, "d_model must be divisible by n_heads"),
    ("MHA zero", lambda: nn.MultiHeadAttention(0, 1), ValueError, "d_model must be a positive int"),
    ("MHA impl", lambda: nn.MultiHeadAttention(16, 2, impl="flash"), ValueError, "impl must be one of"),
    ("MHA dropout", lambda: nn.MultiHeadAttention(16, 2, dropout=1.0), ValueError, "dropout"),
    ("MHA encoding", lambda: nn.MultiHeadAttention(16, 2, encoding="ropee"), ValueError, "unknown encoding 'ropee'; available: .*rope"),
    ("MHA option", lambda: nn.MultiHeadAttention(16, 2, encoding="rope", bse=1), ValueError, r"\['bse'\].*base"),
    ("LM vocab", lambda: nn.TransformerLM(vocab_size=0), ValueError, "vocab_size must be >= 1; got 0"),
    ("LM heads", lambda: nn.TransformerLM(vocab_size=10, d_model=16, n_heads=3), ValueError, "divisible"),
    ("LM d_ff", lambda: nn.TransformerLM(vocab_size=10, d_model=16, n_heads=2, d_ff=0), ValueError, "d_ff"),
    ("LM dropout", lambda: nn.TransformerLM(vocab_size=10, d_model=16, n_heads=2, dropout=1.0), ValueError, "dropout"),
    ("LM learned no max_len", lambda: nn.TransformerLM(vocab_size=10, d_model=16, n_heads=2, encoding="learned"),
     ValueError, "max_len"),
    ("LM encoding", lambda: nn.TransformerLM(vocab_size=10, d_model=16, n_heads=2, encoding="nope"), ValueError,
     "available"),
    ("Encoder causal-only", lambda: nn.TransformerEncoder(vocab_size=10, d_model=16, n_heads=2, encoding="xpos"),
     ValueError, "causal"),
    ("Encoder head", lambda: nn.TransformerEncoder(vocab_size=10, d_model=16, n_heads=2, head="cls"), ValueError,
     "head"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD_LAYERS], ids=[c[0] for c in BAD_LAYERS])
def test_layer_constructor_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_layer_forward_bad_inputs():
    lin = nn.Linear(4, 3, seed=0)
    with pytest.raises(ValueError, match=r"in_features=4.*\(2, 5\)"):
        lin(np.ones((2, 5)))
    with pytest.raises(TypeError, match="x must be real"):
        lin(None)
    assert lin([[1, 2, 3, 4]]).shape == (1, 3)                      # lists are fine
    assert lin(np.ones((0, 4))).shape == (0, 3)
    with pytest.raises(IndexError, match="10"):
        nn.Embedding(10, 4, seed=0)(np.array([10]))
    with pytest.raises(ValueError, match="weight"):
        nn.LayerNorm(4)(np.ones((2, 3)))


def test_module_repr_is_readable_with_parameter_counts():
    mlp = nn.MLP(4, 16, seed=0)
    r = repr(mlp)
    assert r.splitlines()[0] == "MLP(  # 148 params"
    assert "(fc1): Linear(in_features=4, out_features=16, bias=True)  # 80 params" in r
    assert "Total: 148 parameters (148 trainable)" in r
    lm = nn.TransformerLM(vocab_size=20, d_model=16, n_layers=1, n_heads=2, encoding="alibi", seed=0)
    r = repr(lm)
    n = lm.num_parameters()
    assert f"# {n:,} params" in r.splitlines()[0]
    assert "MultiHeadAttention(d_model=16, n_heads=2, encoding='alibi'" in r
    assert n == sum(p.data.size for p in lm.parameters())


def test_state_dict_round_trip_through_save_load(tmp_path):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 20, (2, 7))
    kw = dict(vocab_size=20, d_model=16, n_layers=1, n_heads=2, encoding="t5")
    a = nn.TransformerLM(seed=0, **kw)
    # make it differ from any fresh init
    for p in a.parameters():
        p.data += rng.standard_normal(p.shape).astype(np.float32) * 0.01
    relpos.save(a, tmp_path / "a.relpos")
    b = nn.TransformerLM(seed=1, **kw)
    assert not np.array_equal(a(ids).data, b(ids).data)
    res = b.load_state_dict(relpos.load(tmp_path / "a.relpos"))
    assert res.missing_keys == [] and res.unexpected_keys == []
    np.testing.assert_array_equal(a(ids).data, b(ids).data)
    sd = a.state_dict()
    sd["tok_emb.weight"] = sd["tok_emb.weight"][:, :8]
    with pytest.raises(ValueError, match=r"tok_emb.weight: expected shape \(20, 16\), got \(20, 8\)"):
        b.load_state_dict(sd)
    with pytest.raises(TypeError, match="mapping"):
        b.load_state_dict(a)                            # a Module, not its state_dict()


# ---------------------------------------------------------------------------
# MultiHeadAttention and the models
# ---------------------------------------------------------------------------

def test_mha_bad_inputs():
    m = nn.MultiHeadAttention(16, 2, encoding="alibi", seed=0)
    x = np.random.default_rng(6).standard_normal((2, 5, 16)).astype(np.float32)
    assert m(x).shape == (2, 5, 16)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model\) = \(\*, \*, 16\); got \(2, 5, 8\)"):
        m(np.ones((2, 5, 8)))
    with pytest.raises(ValueError, match=r"\(5, 16\)"):
        m(np.ones((5, 16)))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Tk\) = \(2, 5\); got \(2, 4\)"):
        m(x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"got \(5, 2\)"):
        m(x, key_padding_mask=np.zeros((5, 2), bool))
    with pytest.raises(TypeError, match="key_padding_mask must have dtype bool"):
        m(x, key_padding_mask=np.zeros((2, 5), np.int64))
    with pytest.raises(TypeError, match="cache"):
        m(x, cache={})
    assert m(np.ones((2, 0, 16))).shape == (2, 0, 16)


@pytest.mark.parametrize("name", [n for n in ABSOLUTE if n != "none"])
def test_mha_refuses_absolute_encodings(name):
    """An absolute encoding inside MultiHeadAttention would be ignored (dead parameters,
    no positions at all); it must be refused with a pointer to the right place."""
    with pytest.raises(ValueError, match=f"'{name}' is absolute.*embed"):
        opts = {k: v for k, v in EXTRA.get(name, {}).items() if k != "d_model"}
        nn.MultiHeadAttention(16, 2, encoding=name, **opts)


@pytest.mark.parametrize("name", [n for n in ABSOLUTE if n != "none"])
def test_functional_attention_refuses_absolute_encodings(name):
    """Same as MultiHeadAttention: F.attention must not silently add no positions."""
    q = relpos.tensor(np.zeros((1, 2, 3, 8)))
    opts = {k: v for k, v in EXTRA.get(name, {}).items() if k not in ("d_model", "n_heads", "head_dim")}
    with pytest.raises(ValueError, match=f"'{name}' is absolute.*embed"):
        F.attention(q, q, q, encoding=name, d_model=16, **opts)


def test_transformer_lm_bad_ids():
    lm = nn.TransformerLM(vocab_size=20, d_model=16, n_layers=1, n_heads=2, encoding="rope", seed=0)
    ids = np.random.default_rng(7).integers(0, 20, (2, 6))
    assert lm(ids).shape == (2, 6, 20) and lm(ids.astype(np.int32)).shape == (2, 6, 20)
    assert lm(ids[0]).shape == (1, 6, 20)
    with pytest.raises(TypeError, match="ids must be integer token ids; got dtype float64"):
        lm(ids.astype(float))
    with pytest.raises(TypeError, match="ids must be integer token ids; got dtype float32"):
        lm(relpos.tensor(ids))                       # was "dtype object" before Tensor.__array__
    with pytest.raises(TypeError, match="bool"):
        lm(ids > 3)
    with pytest.raises(IndexError, match=r"token id 20 is outside the vocabulary \[0, 20\)"):
        lm(np.array([[1, 20]]))
    with pytest.raises(IndexError, match="-1"):
        lm(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match=r"\(B, T\) or \(T,\)"):
        lm(ids[None])
    with pytest.raises(ValueError, match="targets must have the shape of ids"):
        lm.loss(ids[:, :-1], ids)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(ids[0, :3], 2, temperature=-1)


def test_learned_absolute_max_len_is_enforced():
    lm = nn.TransformerLM(vocab_size=20, d_model=16, n_layers=1, n_heads=2, encoding="learned", max_len=8, seed=0)
    assert lm(np.zeros((1, 8), np.int64)).shape == (1, 8, 20)
    with pytest.raises(ValueError, match="9 tokens is longer than max_len=8"):
        lm(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match="max_len=8"):
        lm.generate(np.zeros(6, np.int64), 3)


# ---------------------------------------------------------------------------
# the encodings catalogue
# ---------------------------------------------------------------------------

def test_available_prints_as_a_table():
    table = encodings.available()
    text = repr(table)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["name", "channel", "learnable"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + len(ALL)
    for name in ALL:
        assert any(line.split()[0] == name for line in lines[2:])
    html = table._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 1 + len(ALL)
    assert {"rope", "alibi", "t5", "shaw", "fire", "sinusoidal", "learned", "xl"} <= set(ALL)


def test_get_unknown_name_or_option_lists_what_exists():
    with pytest.raises(ValueError) as e:
        encodings.get("alibii", n_heads=2)
    for name in ALL:
        assert name in str(e.value)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['slope'\] for encoding 'alibi'; its options are: .*symmetric"):
        encodings.get("alibi", n_heads=2, slope=1)
    with pytest.raises(TypeError, match="name"):
        encodings.get(3)
    assert encodings.get("ALiBi", n_heads=2).name == "alibi"


BAD_OPTIONS = [
    ("alibi", dict(learnable="yes"), TypeError, "'learnable' of encoding 'alibi' must be a bool"),
    ("shaw", dict(values="False"), TypeError, "'values' of encoding 'shaw' must be a bool; got 'False'"),
    ("learned", dict(clamp=1, max_len=8, d_model=16), TypeError, "'clamp'"),
    ("learned", dict(init_std=-1.0, max_len=8, d_model=16), ValueError, "init_std"),
    ("rope", dict(rotary_dim=7), ValueError, "rotary_dim must be a positive even int"),
    ("rope", dict(rotary_dim=16), ValueError, r"rotary_dim \(16\) must be <= head_dim \(8\)"),
    ("rope", dict(base=0.5), ValueError, "base"),
    ("rope", dict(scaling="yarn"), ValueError, "original_max_len"),
    ("rope", dict(scaling="foo"), ValueError, "scaling must be one of"),
    ("t5", dict(num_buckets=1), ValueError, "num_buckets"),
    ("kerple", dict(variant="loggg"), ValueError, "variant"),
    ("cope", dict(npos=0), ValueError, "npos"),
    ("deberta", dict(k=0), ValueError, "k must be"),
    ("fire", dict(width=0), ValueError, "width"),
    ("sandwich", dict(dim=3), ValueError, "even"),
    ("xl", dict(r_dim=0), ValueError, "r_dim"),
    ("xpos", dict(gamma=-1), ValueError, "gamma"),
]


@pytest.mark.parametrize("name, options, exc, match", BAD_OPTIONS,
                         ids=[f"{n}-{sorted(o)[0]}" for n, o, _, _ in BAD_OPTIONS])
def test_encoding_bad_option_values(name, options, exc, match):
    with pytest.raises(exc, match=match):
        encodings.get(name, n_heads=2, head_dim=8, **options)


def test_prebuilt_encoding_must_fit_the_heads():
    q = relpos.tensor(np.ones((1, 2, 3, 8)))
    for name, kw in (("alibi", dict(n_heads=4)), ("shaw", dict(n_heads=2, head_dim=4)),
                     ("xl", dict(n_heads=4, head_dim=8)), ("fire", dict(n_heads=4))):
        with pytest.raises(ValueError, match=f"'{name}' was built for"):
            F.attention(q, q, q, encoding=encodings.get(name, **kw))


@pytest.mark.parametrize("name", ALL)
def test_every_encoding_builds_from_heads_and_head_dim(name):
    if name in EXTRA:
        # absolute encodings need the vocabulary or a length: the message says which
        missing = [k for k in EXTRA[name] if k != "d_model"][0]
        with pytest.raises(ValueError, match=f"'{name}' needs"):
            encodings.get(name, n_heads=2, head_dim=8)
        enc = encodings.get(name, n_heads=2, head_dim=8, **EXTRA[name])
        assert getattr(enc, missing, None) == EXTRA[name][missing] or missing in repr(enc) or enc is not None
    else:
        enc = encodings.get(name, n_heads=2, head_dim=8)
    assert enc.name == name and isinstance(enc, nn.Module)
    assert repr(enc).startswith(type(enc).__name__ + "(")


@pytest.mark.parametrize("name", IN_ATTENTION)
@pytest.mark.parametrize("causal", [True, False])
def test_every_encoding_in_mha_forward_backward(name, causal):
    rng = np.random.default_rng(8)
    if ROW[name]["causal only"] == "yes" and not causal:
        with pytest.raises(ValueError, match=f"'{name}' works with causal attention only"):
            nn.MultiHeadAttention(16, 2, encoding=name, causal=False)
        return
    m = nn.MultiHeadAttention(16, 2, encoding=name, causal=causal, seed=0)
    x = relpos.tensor(rng.standard_normal((2, 5, 16)), requires_grad=True)
    out = m(x)
    assert out.shape == (2, 5, 16) and np.isfinite(out.data).all()
    out.backward(rng.standard_normal(out.shape))
    assert np.isfinite(x.grad).all() and np.abs(x.grad).sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and np.isfinite(p.grad).all(), pname
    if causal:
        # a causal layer's first output depends on the first token only
        x2 = x.data.copy()
        x2[:, 1:] += 1.0
        np.testing.assert_allclose(m(x2).data[:, 0], out.data[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BIAS)
def test_bias_matrix_for_every_bias_encoding(name):
    enc = encodings.get(name, n_heads=2, head_dim=8, seed=0)
    m = encodings.bias_matrix(enc, 3, 5, q_offset=2)
    assert m.shape == (2, 3, 5) and np.isfinite(m).all()
    by_name = encodings.bias_matrix(name, 3, 5, q_offset=2, n_heads=2, head_dim=8, seed=0)
    np.testing.assert_array_equal(by_name, m)
    with pytest.raises(ValueError, match="already built"):
        encodings.bias_matrix(enc, 3, 5, n_heads=2)


POSITION_ONLY_BIAS = ["alibi", "t5", "kerple", "learned_bias", "sandwich", "fire"]


@pytest.mark.parametrize("name", POSITION_ONLY_BIAS)
@pytest.mark.parametrize("causal", [True, False])
def test_bias_matrix_is_what_attention_adds(name, causal):
    """softmax(q·k/sqrt(D) + bias_matrix + mask) v in float64 NumPy == F.attention:
    bias_matrix shows exactly the term the kernels add."""
    if ROW[name]["causal only"] == "yes" and not causal:
        return
    rng = np.random.default_rng(14)
    B, H, Tq, off, D = 1, 2, 4, 3, 8
    Tk = Tq + off
    q = rng.standard_normal((B, H, Tq, D))
    k = rng.standard_normal((B, H, Tk, D))
    v = rng.standard_normal((B, H, Tk, D))
    enc = encodings.get(name, n_heads=H, seed=0)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D) + encodings.bias_matrix(enc, Tq, Tk, q_offset=off, causal=causal)[None]
    if causal:
        s = np.where(np.arange(Tk)[None, :] > (off + np.arange(Tq))[:, None], -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    for impl in ("fused", "materialized"):
        got = F.attention(q, k, v, encoding=enc, causal=causal, q_offset=off, impl=impl).data
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bias_matrix_causal_argument():
    with pytest.raises(ValueError, match="causal"):
        encodings.bias_matrix("fire", 3, 3, causal=False, n_heads=2)
    sym = encodings.bias_matrix("alibi", 3, 3, causal=False, n_heads=2)
    np.testing.assert_allclose(sym, sym.transpose(0, 2, 1))          # -m|i - j| for bidirectional


@pytest.mark.parametrize("encoding", ["t5", "alibi"])
def test_probe_bias_of_a_bidirectional_model_is_the_one_it_uses(encoding):
    from relpos import probe
    model = nn.TransformerEncoder(vocab_size=10, d_model=16, n_heads=2, n_layers=1, encoding=encoding, seed=0)
    enc = model.blocks[0].attn.encoding
    dist, bias = probe.bias_vs_distance(model, 60)
    want = encodings.bias_matrix(enc, 1, 61, q_offset=60, causal=False)[:, 0, ::-1]
    np.testing.assert_allclose(bias[:, 0], want, rtol=1e-6)


def test_padding_mask_hides_keys_through_mha():
    m = nn.MultiHeadAttention(16, 2, encoding="t5", causal=False, seed=0)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 6, 16)).astype(np.float32)
    mask = np.zeros((2, 6), bool)
    mask[0, 4:] = True
    y = x.copy()
    y[0, 4:] = rng.standard_normal((2, 16))          # change only the padded tokens
    a = m(x, key_padding_mask=mask).data
    b = m(y, key_padding_mask=mask).data
    np.testing.assert_allclose(a[0, :4], b[0, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])


DISTANCE = [n for n in ALL if issubclass(encodings.lookup(n), encodings.DistanceBias)]


def test_the_builtin_toeplitz_biases_are_distance_biases():
    assert {"alibi", "t5", "kerple", "learned_bias", "sandwich"} <= set(DISTANCE)


@pytest.mark.parametrize("name", DISTANCE)
def test_toeplitz_bias_depends_on_distance_only(name):
    m = encodings.bias_matrix(name, 6, 6, n_heads=2, seed=0)
    shifted = encodings.bias_matrix(name, 6, 9, q_offset=3, n_heads=2, seed=0)
    np.testing.assert_allclose(shifted[:, :, 3:], m, rtol=1e-6, atol=1e-7)
    alibi = encodings.bias_matrix("alibi", 4, 4, n_heads=2)
    slopes = encodings.alibi_slopes(2)
    np.testing.assert_allclose(alibi[:, 3, 0], -3 * slopes)


# ---------------------------------------------------------------------------
# fused == materialised through relpos.functional.attention
# ---------------------------------------------------------------------------

CASES = [(n, c) for n in IN_ATTENTION for c in (True, False) if c or ROW[n]["causal only"] == "no"]


@pytest.mark.parametrize("name, causal", CASES, ids=[f"{n}-{'causal' if c else 'bidir'}" for n, c in CASES])
def test_fused_matches_materialized(name, causal):
    rng = np.random.default_rng(9)
    B, H, Tq, off, D = 2, 2, 5, 3, 8
    Tk = Tq + off
    qd = rng.standard_normal((B, H, Tq, D)).astype(np.float32)
    kd = rng.standard_normal((B, H, Tk, D)).astype(np.float32)
    vd = rng.standard_normal((B, H, Tk, D)).astype(np.float32)
    g = rng.standard_normal((B, H, Tq, D)).astype(np.float32)
    mask = np.zeros((B, Tk), bool)
    mask[1, :2] = True
    enc = encodings.get(name, n_heads=H, head_dim=D, seed=0, **EXTRA.get(name, {}))
    res = {}
    impls = ("materialized",) if enc.materialized_only else ("fused", "materialized")
    for impl in impls:
        enc.zero_grad()
        q, k, v = (relpos.tensor(a, requires_grad=True) for a in (qd, kd, vd))
        out = F.attention(q, k, v, encoding=enc, causal=causal, impl=impl, q_offset=off, key_padding_mask=mask)
        out.backward(g)
        res[impl] = [out.data, q.grad, k.grad, v.grad] + [p.grad for _, p in enc.named_parameters()]
    if enc.materialized_only:
        with pytest.raises(ValueError, match="impl='fused' is not possible"):
            F.attention(q, k, v, encoding=enc, causal=causal, impl="fused")
        out_auto = F.attention(q, k, v, encoding=enc, causal=causal, q_offset=off, key_padding_mask=mask)
        np.testing.assert_allclose(out_auto.data, res["materialized"][0], rtol=1e-6, atol=1e-7)
        return
    for a, b in zip(res["fused"], res["materialized"]):
        if a is None or b is None:
            assert a is None and b is None
            continue
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    # the weights of the materialised path are a distribution over the unmasked keys
    _, w = F.attention(relpos.tensor(qd), relpos.tensor(kd), relpos.tensor(vd), encoding=enc, causal=causal,
                       q_offset=off, key_padding_mask=mask, return_weights=True)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert (w[1, :, :, :2] == 0).all()


def test_plain_attention_without_an_encoding_is_bidirectional_too():
    """F.attention(q, k, v, causal=False) with no encoding is plain softmax attention
    (it used to raise: the default was the causal-only NoPE entry "none")."""
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    out = F.attention(relpos.tensor(q), relpos.tensor(k), relpos.tensor(v), causal=False)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.data, p @ v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'none' works with causal attention only"):
        F.attention(relpos.tensor(q), relpos.tensor(k), relpos.tensor(v), encoding="none", causal=False)
    with pytest.raises(ValueError, match="encoding=None"):
        F.attention(relpos.tensor(q), relpos.tensor(k), relpos.tensor(v), base=10.0)


@pytest.mark.parametrize("layout", ["F", "float64", "strided view", "list"])
@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_attention_inputs_in_any_layout(layout, impl):
    rng = np.random.default_rng(12)
    q = rng.standard_normal((2, 2, 5, 8)).astype(np.float32)
    want = F.attention(q, q, q, encoding="rope", impl=impl).data
    a = {"F": np.asfortranarray(q), "float64": q.astype(np.float64),
         "strided view": np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3),
         "list": q.tolist()}[layout]
    np.testing.assert_allclose(F.attention(a, a, a, encoding="rope", impl=impl).data, want, rtol=1e-6, atol=1e-7)


def test_attention_bad_inputs():
    q = relpos.tensor(np.zeros((1, 2, 3, 8)))
    with pytest.raises(ValueError, match="unknown encoding"):
        F.attention(q, q, q, encoding="nope")
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, T, D\)"):
        F.attention(np.zeros((2, 3, 8)), q, q)
    with pytest.raises(ValueError, match="k must have shape"):
        F.attention(q, np.zeros((1, 2, 3, 4)), q)
    with pytest.raises(ValueError, match="v must have shape"):
        F.attention(q, q, np.zeros((1, 2, 4, 8)))
    with pytest.raises(ValueError, match="impl must be one of"):
        F.attention(q, q, q, impl="flash")
    with pytest.raises(ValueError, match="return_weights=True needs impl='materialized'"):
        F.attention(q, q, q, impl="fused", return_weights=True)
    with pytest.raises(ValueError, match="q_offset"):
        F.attention(q, q, q, q_offset=-1)
    with pytest.raises(ValueError, match="causal"):
        F.attention(q, q, q, encoding="fire", causal=False)
    with pytest.raises(ValueError, match="already built"):
        F.attention(q, q, q, encoding=encodings.get("alibi", n_heads=2), symmetric=True)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Tk\)"):
        F.attention(q, q, q, key_padding_mask=np.zeros((1, 4), bool))
    with pytest.raises(ValueError, match="scale must be finite"):
        F.attention(q, q, q, scale=float("nan"))


# ---------------------------------------------------------------------------
# optimizers and save/load
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["SGD", "AdamW"])
@pytest.mark.parametrize("lr, exc", [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                     ("0.1", TypeError), (None, TypeError), (True, TypeError), ([0.1], TypeError)])
def test_optimizer_bad_lr(opt, lr, exc):
    lin = nn.Linear(2, 2, seed=0)
    with pytest.raises(exc, match="lr must be"):
        getattr(optim, opt)(lin.parameters(), lr=lr)


def test_optimizer_bad_params():
    lin = nn.Linear(2, 2, seed=0)
    with pytest.raises(TypeError, match=r"model.parameters\(\)\); got Linear"):
        optim.AdamW(lin)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])
    with pytest.raises(TypeError, match="wrap it in a list"):
        optim.AdamW(lin.weight)
    with pytest.raises(ValueError, match="betas"):
        optim.AdamW(lin.parameters(), betas=(1.0, 0.9))


def test_optimizer_trains_a_tiny_regression():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    lin = nn.Linear(3, 1, seed=0)
    opt = optim.AdamW(lin.parameters(), lr=0.05, weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = ((lin(x) - y) ** 2).mean()
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 1e-3 * first


def test_checkpoint_of_model_optimizer_scheduler_resumes_exactly(tmp_path):
    x = np.random.default_rng(13).standard_normal((4, 3)).astype(np.float32)

    def make(seed):
        lin = nn.Linear(3, 2, seed=seed)
        opt = optim.AdamW(lin.parameters(), lr=0.01)
        return lin, opt, optim.WarmupCosine(opt, 2, 10)

    def step(lin, opt, sched):
        opt.zero_grad()
        (lin(x) ** 2).mean().backward()
        opt.step()
        sched.step()

    a = make(0)
    for _ in range(3):
        step(*a)
    relpos.save({"model": a[0], "opt": a[1].state_dict(), "sched": a[2].state_dict(), "step": 3},
                tmp_path / "ck.relpos")
    ck = relpos.load(tmp_path / "ck.relpos")
    b = make(1)
    b[0].load_state_dict(ck["model"])
    b[1].load_state_dict(ck["opt"])
    b[2].load_state_dict(ck["sched"])
    assert ck["step"] == 3
    step(*a)
    step(*b)
    np.testing.assert_array_equal(a[0].weight.data, b[0].weight.data)
    assert a[2].get_last_lr() == b[2].get_last_lr()


@pytest.mark.parametrize("path, exc, match", [
    ("missing/dir/x.relpos", FileNotFoundError, "does not exist"),
    ("", ValueError, "empty path"),
    (".", IsADirectoryError, "is a directory"),
    (None, TypeError, "path must be a str or os.PathLike; got NoneType"),
    (3, TypeError, "got int"),
])
def test_save_bad_paths(tmp_path, monkeypatch, path, exc, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc, match=match):
        relpos.save(nn.Linear(2, 2, seed=0), path)
    assert list(tmp_path.iterdir()) == []            # no temporary file left behind


def test_load_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        relpos.load(tmp_path / "nope.relpos")
    with pytest.raises(IsADirectoryError, match="directory"):
        relpos.load(tmp_path)
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(ValueError, match="not a relpos file"):
        relpos.load(tmp_path / "junk")
    with pytest.raises(TypeError, match="path must be"):
        relpos.load(None)
    with pytest.raises(TypeError, match="cannot save f: a function"):
        relpos.save({"f": lambda: 1}, tmp_path / "f.relpos")


# ---------------------------------------------------------------------------
# found by this file, then fixed (regressions)
# ---------------------------------------------------------------------------

def test_fixed_matmul_with_zero_inner_dimension():
    np.testing.assert_array_equal(F.matmul(np.ones((3, 0)), np.ones((0, 5))).data, np.zeros((3, 5)))


def test_fixed_embedding_of_a_scalar_id():
    assert F.embedding(3, W).shape == (4,)


def test_fixed_layer_norm_eps_type():
    with pytest.raises(TypeError, match="eps"):
        F.layer_norm(X, eps="a")


def test_fixed_lm_seed_none():
    with pytest.raises((TypeError, ValueError), match="seed"):
        nn.TransformerLM(vocab_size=10, d_model=16, n_heads=2, seed=None)


def test_fixed_encoder_float_mask_is_refused():
    enc = nn.TransformerEncoder(vocab_size=10, d_model=16, n_heads=2, n_layers=1, encoding="t5")
    with pytest.raises(TypeError, match="key_padding_mask"):
        enc(np.zeros((1, 4), np.int64), key_padding_mask=np.full((1, 4), 0.5))


# ---------------------------------------------------------------------------
# every public name has a docstring (the notebook's shift-tab)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["relpos", "relpos.functional", "relpos.nn", "relpos.optim", "relpos.data",
                                    "relpos.train", "relpos.probe", "relpos.experiments"])
def test_public_names_have_docstrings(module):
    import importlib
    mod = importlib.import_module(module)
    names = [n for n in mod.__all__ if callable(getattr(mod, n)) and not isinstance(getattr(mod, n), type(re))]
    undocumented = [n for n in names if not (getattr(mod, n).__doc__ or "").strip()]
    assert not undocumented, f"{module}: no docstring on {undocumented}"


def test_fixed_fit_with_a_non_lm_model():
    from relpos import data, train
    with pytest.raises(TypeError, match="model"):
        train.fit(nn.Linear(2, 2), data.LMData("hello world " * 20), steps=1, seq_len=8, progress=False)
