"""relpos.nn: Module registration and state, initialisers, and layers checked
against float64 NumPy versions (forward, and backward by finite differences)."""
import math

import numpy as np
import pytest
import reference as ref

import relpos
from relpos import nn
from relpos.nn import init


class Leaf(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.weight = nn.Parameter(np.ones((n, 2), np.float32))
        self.bias = nn.Parameter(np.zeros(n, np.float32))
        self.register_buffer("pos", np.arange(n, dtype=np.int64))
        self.register_buffer("cache", np.zeros(2, np.float32), persistent=False)

    def forward(self, x):
        return x


class Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Leaf(3)
        self.scale = nn.Parameter(np.full(1, 2.0, np.float32))
        self.blocks = nn.ModuleList([Leaf(4), Leaf(5)])
        self.note = "plain attribute"


# ---------------------------------------------------------------- Module

def test_registration_order_and_dotted_names():
    t = Tree()
    names = [n for n, _ in t.named_parameters()]
    assert names == ["scale", "first.weight", "first.bias", "blocks.0.weight", "blocks.0.bias",
                     "blocks.1.weight", "blocks.1.bias"]
    assert [n for n, _ in t.named_modules()] == ["", "first", "blocks", "blocks.0", "blocks.1"]
    assert [type(m).__name__ for m in t.children()] == ["Leaf", "ModuleList"]
    assert len(list(t.modules())) == 5
    assert [n for n, _ in t.named_buffers()] == ["first.pos", "first.cache", "blocks.0.pos", "blocks.0.cache",
                                                  "blocks.1.pos", "blocks.1.cache"]
    assert t.note == "plain attribute"
    assert t.first.weight is t._modules["first"]._parameters["weight"]
    assert [n for n, _ in t.named_parameters(recurse=False)] == ["scale"]


def test_reassigning_and_deleting():
    m = Leaf()
    m.bias = None  # an optional parameter may be absent
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    with pytest.raises(TypeError, match="cannot assign ndarray to parameter 'weight'"):
        m.weight = np.zeros((3, 2), np.float32)
    m.pos = np.arange(7)  # buffers take new arrays
    assert m.state_dict()["pos"].shape == (7,)
    with pytest.raises(TypeError, match="buffer 'pos'"):
        m.pos = "text"
    del m.weight
    assert list(m.parameters()) == []
    with pytest.raises(AttributeError, match="no attribute 'weight'"):
        _ = m.weight


def test_assign_before_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad()


def test_shared_parameter_counted_once_but_saved_under_both_names():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Leaf()
            self.b = Leaf()
            self.b.weight = self.a.weight

    t = Tied()
    assert len(list(t.parameters())) == 3
    assert t.num_parameters() == 6 + 3 + 3
    sd = t.state_dict()
    assert "a.weight" in sd and "b.weight" in sd
    t.load_state_dict(sd)


def test_state_dict_copies_and_round_trip():
    t = Tree()
    sd = t.state_dict()
    assert list(sd) == ["scale", "first.weight", "first.bias", "first.pos", "blocks.0.weight", "blocks.0.bias",
                        "blocks.0.pos", "blocks.1.weight", "blocks.1.bias", "blocks.1.pos"]
    assert "first.cache" not in sd  # non-persistent
    sd["scale"][...] = 99.0
    assert t.scale.data[0] == 2.0  # a copy
    other = Tree()
    w = other.first.weight
    other.load_state_dict(sd)
    assert other.scale.data[0] == 99.0
    assert other.first.weight is w  # loaded in place: optimizers keep working
    # Tensors are accepted as values; dtype is converted to the target's
    sd2 = {k: (relpos.Tensor(v) if v.dtype == np.float32 else v) for k, v in sd.items()}
    sd2["blocks.1.bias"] = np.full(5, 7, np.float64)
    other.load_state_dict(sd2)
    assert other.blocks[1].bias.data.dtype == np.float32 and np.all(other.blocks[1].bias.data == 7)


def test_load_state_dict_strict_lists_every_problem_and_changes_nothing():
    t = Tree()
    sd = t.state_dict()
    del sd["first.bias"]
    del sd["blocks.1.pos"]
    sd["extra.weight"] = np.zeros(2)
    sd["blocks.0.weight"] = np.zeros((2, 4), np.float32)
    sd["scale"] = np.full(1, 5.0, np.float32)
    with pytest.raises(ValueError) as e:
        t.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: first.bias, blocks.1.pos" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "blocks.0.weight: expected shape (4, 2), got (2, 4)" in msg
    assert t.scale.data[0] == 2.0  # nothing loaded

    # non-strict: mismatched shapes still refuse
    with pytest.raises(ValueError, match="shape mismatches"):
        t.load_state_dict(sd, strict=False)
    sd["blocks.0.weight"] = np.zeros((4, 2), np.float32)
    res = t.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["first.bias", "blocks.1.pos"]
    assert res.unexpected_keys == ["extra.weight"]
    assert t.scale.data[0] == 5.0
    with pytest.raises(TypeError, match="mapping"):
        t.load_state_dict([1, 2])


def test_train_eval_propagate_and_zero_grad_and_apply():
    t = Tree()
    assert all(m.training for m in t.modules())
    assert t.eval() is t
    assert not any(m.training for m in t.modules())
    t.train()
    assert all(m.training for m in t.modules())
    t.blocks.train(False)
    assert t.training and t.first.training and not t.blocks[0].training
    for p in t.parameters():
        p.grad = np.ones(p.shape, np.float32)
    t.zero_grad()
    assert all(p.grad is None for p in t.parameters())
    seen = []
    t.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Leaf", "Leaf", "Leaf", "ModuleList", "Tree"]  # children first
    t.requires_grad_(False)
    assert t.num_parameters(trainable_only=True) == 0 and t.num_parameters() == 1 + 9 + 12 + 15


def test_repr_shows_nesting_and_counts():
    t = Tree()
    r = repr(t)
    lines = r.splitlines()
    assert lines[0] == "Tree(  # 37 params"
    assert "  (first): Leaf()  # 9 params" in lines
    assert "  (blocks): ModuleList(  # 27 params" in lines
    assert "    (1): Leaf()  # 15 params" in lines
    assert lines[-1] == "Total: 37 parameters (37 trainable)"
    assert "Parameter(" in repr(t.scale)


def test_call_goes_to_forward_and_base_forward_raises():
    assert Leaf()(5) == 5
    with pytest.raises(NotImplementedError, match="Module must implement forward"):
        nn.Module()(1)


def test_parameter_is_float32_contiguous_and_trainable():
    p = nn.Parameter(np.arange(12, dtype=np.float64).reshape(3, 4).T)
    assert p.requires_grad and p.data.dtype == np.float32 and p.data.flags.c_contiguous
    assert isinstance(p, relpos.Tensor)
    a = np.zeros(3, np.float32)
    assert nn.Parameter(a).data is a  # no copy when not needed
    assert not nn.Parameter(a, requires_grad=False).requires_grad


# ---------------------------------------------------------------- init

def test_init_seeds_and_generators():
    a = init.normal((1000,), 0.0, 0.02, rng=3)
    assert np.array_equal(a, init.normal((1000,), 0.0, 0.02, rng=3))
    assert a.dtype == np.float32
    assert abs(a.std() - 0.02) < 0.002 and abs(a.mean()) < 0.003
    g = np.random.default_rng(3)
    b1, b2 = init.normal((1000,), 0.0, 0.02, rng=g), init.normal((1000,), 0.0, 0.02, rng=g)
    assert np.array_equal(b1, a) and not np.array_equal(b1, b2)  # a Generator continues its stream
    u = init.uniform((5000,), -2.0, 3.0, rng=0)
    assert u.min() >= -2.0 and u.max() < 3.0
    p = nn.Parameter(np.zeros((4, 4)))
    assert init.gpt2_normal_(p, rng=1) is p and p.data.std() > 0
    init.ones_(p)
    assert np.all(p.data == 1)
    init.zeros_(p.data)
    assert np.all(p.data == 0)
    with pytest.raises(ValueError, match="give seed or rng, not both"):
        init.make_rng(np.random.default_rng(0), seed=1)
    with pytest.raises(TypeError, match="rng must be an int seed or a numpy.random.Generator"):
        init.make_rng(1.5)
    with pytest.raises(ValueError, match="std must be >= 0"):
        init.normal((2,), std=-1.0)
    with pytest.raises(TypeError, match="float ndarray"):
        init.ones_(np.zeros(3, np.int64))


def test_layer_init_reproducible_and_shaped():
    a, b = nn.Linear(5, 3, seed=7), nn.Linear(5, 3, seed=7)
    assert a.weight.shape == (3, 5) and a.bias.shape == (3,)
    assert np.array_equal(a.weight.data, b.weight.data) and np.array_equal(a.bias.data, b.bias.data)
    bound = 1 / math.sqrt(5)
    assert np.abs(a.weight.data).max() <= bound
    big = nn.Linear(400, 300, seed=0)
    assert np.abs(big.weight.data).max() > 0.9 / math.sqrt(400)
    m1, m2 = nn.MLP(4, 8, seed=2), nn.MLP(4, 8, seed=2)
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2 and np.array_equal(p1.data, p2.data)
    assert not np.array_equal(m1.fc1.weight.data[:4, :4], m1.fc2.weight.data[:4, :4])
    assert m1.fc2.weight.shape == (4, 8)  # d_out defaults to d_in
    assert nn.Linear(3, 2, bias=False).bias is None
    e = nn.Embedding(10, 4, seed=0)
    assert e.weight.shape == (10, 4) and np.array_equal(e.weight.data, nn.Embedding(10, 4, seed=0).weight.data)


@pytest.mark.parametrize("make,msg", [
    (lambda: nn.Linear(0, 3), "in_features must be > 0; got 0"),
    (lambda: nn.Linear(3, -1), "out_features must be > 0; got -1"),
    (lambda: nn.Embedding(0, 3), "num_embeddings must be > 0"),
    (lambda: nn.Embedding(3, 0), "embedding_dim must be > 0"),
    (lambda: nn.LayerNorm(0), "d must be > 0"),
    (lambda: nn.LayerNorm(4, eps=0.0), "eps must be a finite number > 0"),
    (lambda: nn.RMSNorm(-2), "d must be > 0"),
    (lambda: nn.Dropout(1.0), r"p must be in \[0, 1\); got 1.0"),
    (lambda: nn.Dropout(-0.1), r"p must be in \[0, 1\)"),
    (lambda: nn.MLP(4, 0), "d_hidden must be > 0"),
    (lambda: nn.MLP(4, 8, dropout=1.5), r"dropout must be in \[0, 1\)"),
    (lambda: nn.MLP(4, 8, activation="tanhh"), "activation must be one of"),
    (lambda: nn.GELU("fast"), "approximate must be 'tanh' or 'none'"),
])
def test_bad_constructor_arguments(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_bad_constructor_types():
    with pytest.raises(TypeError, match="in_features must be an int"):
        nn.Linear(2.5, 3)
    with pytest.raises(TypeError, match="Sequential item 1 must be a Module"):
        nn.Sequential(nn.ReLU(), 3)


def test_containers():
    s = nn.Sequential(nn.Linear(2, 3, seed=0), nn.ReLU(), nn.Linear(3, 1, seed=1))
    assert len(s) == 3 and isinstance(s[1], nn.ReLU) and len(s[:2]) == 2
    assert [n for n, _ in s.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    ml = nn.ModuleList()
    ml.append(nn.Linear(2, 2, seed=0)).extend([nn.ReLU()])
    assert len(ml) == 2 and [type(m).__name__ for m in ml] == ["Linear", "ReLU"]
    ml[1] = nn.SiLU()
    assert isinstance(ml[-1], nn.SiLU)
    with pytest.raises(IndexError):
        ml[5] = nn.ReLU()
    with pytest.raises(TypeError):
        ml.append("x")


# ---------------------------------------------------------------- layer forwards

def _x(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _gelu_tanh64(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_exact64(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def test_linear_forward_backward(rng):
    lin = nn.Linear(4, 3, seed=0)
    x = _x(rng, 2, 5, 4)
    y = lin(relpos.Tensor(x))
    want = x.astype(np.float64) @ lin.weight.data.T.astype(np.float64) + lin.bias.data
    np.testing.assert_allclose(y.data, want, rtol=1e-5, atol=1e-5)
    assert y.shape == (2, 5, 3)
    (y * y).sum().backward()
    w0, b0 = lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)
    gw = ref.numgrad(lambda w: float(((x @ w.T + b0) ** 2).sum()), w0)
    gb = ref.numgrad(lambda b: float(((x @ w0.T + b) ** 2).sum()), b0)
    np.testing.assert_allclose(lin.weight.grad, gw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(lin.bias.grad, gb, rtol=1e-4, atol=1e-3)
    nb = nn.Linear(4, 3, bias=False, seed=0)
    np.testing.assert_allclose(nb(x).data, x.astype(np.float64) @ nb.weight.data.T, rtol=1e-5, atol=1e-5)


def test_embedding_forward_backward():
    e = nn.Embedding(6, 3, seed=0)
    ids = np.array([[0, 5, 2], [2, 2, 1]])
    y = e(ids)
    np.testing.assert_array_equal(y.data, e.weight.data[ids])
    y.sum().backward()
    counts = np.bincount(ids.ravel(), minlength=6).astype(np.float32)
    np.testing.assert_array_equal(e.weight.grad, np.repeat(counts[:, None], 3, axis=1))
    with pytest.raises(IndexError):
        e(np.array([6]))


def test_norms_forward_backward(rng):
    x = _x(rng, 3, 5) * 3 + 1
    ln = nn.LayerNorm(5)
    ln.weight.data[...] = np.linspace(0.5, 1.5, 5)
    ln.bias.data[...] = np.linspace(-1, 1, 5)

    def ln64(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b

    xt = relpos.Tensor(x, requires_grad=True)
    y = ln(xt)
    w64, b64 = ln.weight.data.astype(np.float64), ln.bias.data.astype(np.float64)
    np.testing.assert_allclose(y.data, ln64(x.astype(np.float64), w64, b64), rtol=1e-5, atol=1e-5)
    (y * y).sum().backward()
    gx = ref.numgrad(lambda v: float((ln64(v, w64, b64) ** 2).sum()), x)
    np.testing.assert_allclose(xt.grad, gx, rtol=1e-3, atol=1e-3)
    gw = ref.numgrad(lambda w: float((ln64(x.astype(np.float64), w, b64) ** 2).sum()), w64)
    np.testing.assert_allclose(ln.weight.grad, gw, rtol=1e-4, atol=1e-3)

    rms = nn.RMSNorm(5)
    rms.weight.data[...] = np.linspace(0.5, 1.5, 5)

    def rms64(x, w):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * w

    r64 = rms.weight.data.astype(np.float64)
    y = rms(x)
    np.testing.assert_allclose(y.data, rms64(x.astype(np.float64), r64), rtol=1e-5, atol=1e-5)
    (y * y).sum().backward()
    gw = ref.numgrad(lambda w: float((rms64(x.astype(np.float64), w) ** 2).sum()), r64)
    np.testing.assert_allclose(rms.weight.grad, gw, rtol=1e-4, atol=1e-3)


def test_activations(rng):
    x = _x(rng, 4, 6) * 2
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(nn.GELU()(x).data, _gelu_tanh64(x64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.GELU("none")(x).data, _gelu_exact64(x64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.ReLU()(x).data, np.maximum(x64, 0), rtol=0, atol=0)
    np.testing.assert_allclose(nn.SiLU()(x).data, x64 / (1 + np.exp(-x64)), rtol=1e-5, atol=1e-6)
    assert isinstance(nn.activation("gelu_exact"), nn.GELU) and nn.activation("gelu_exact").approximate == "none"


def test_dropout_reproducible_fresh_masks_and_eval_identity(rng):
    x = relpos.Tensor(np.ones((64, 64), np.float32))
    d1, d2 = nn.Dropout(0.25, seed=11), nn.Dropout(0.25, seed=11)
    a1, b1 = d1(x).data, d1(x).data
    a2, b2 = d2(x).data, d2(x).data
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)  # same seed, same run
    assert not np.array_equal(a1, b1)  # a fresh mask each call
    kept = a1 != 0
    assert 0.65 < kept.mean() < 0.85
    np.testing.assert_allclose(a1[kept], 1 / 0.75, rtol=1e-6)
    d1.eval()
    assert d1(x) is x
    assert nn.Dropout(0.0, seed=0)(x) is x
    d1.train()
    d1.reseed(11)
    assert np.array_equal(d1(x).data, a1)
    # the stream's state survives a save/load, so a resumed run repeats the masks
    state = d1.rng_state()
    want = d1(x).data
    d3 = nn.Dropout(0.25, seed=99)
    d3.set_rng_state(state)
    assert np.array_equal(d3(x).data, want)
    with pytest.raises(ValueError, match="rng_state"):
        d3.set_rng_state({"bit_generator": "MT19937"})


def test_mlp_forward_backward(rng):
    m = nn.MLP(4, 6, 3, activation="gelu", seed=0)
    x = _x(rng, 5, 4)
    y = m(x)
    w1, b1 = m.fc1.weight.data.astype(np.float64), m.fc1.bias.data.astype(np.float64)
    w2, b2 = m.fc2.weight.data.astype(np.float64), m.fc2.bias.data.astype(np.float64)

    def f64(w1_):
        return _gelu_tanh64(x @ w1_.T + b1) @ w2.T + b2

    np.testing.assert_allclose(y.data, f64(w1), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    np.testing.assert_allclose(m.fc1.weight.grad, ref.numgrad(lambda w: float(f64(w).sum()), w1),
                               rtol=1e-4, atol=1e-3)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    # dropout in the hidden layer: train differs from eval, eval is deterministic
    md = nn.MLP(4, 32, 3, dropout=0.5, seed=0)
    ev = md.eval()(x).data
    assert np.array_equal(ev, md(x).data)
    assert not np.array_equal(md.train()(x).data, ev)
