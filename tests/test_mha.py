"""MultiHeadAttention: projections + encoding + attention_core, key/value cache."""
import numpy as np
import pytest

import relpos
from relpos import nn
from relpos.tensor import Function, Tensor, no_grad

import reference as ref


class _LinearFn(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        y = x @ w.T
        return (y + b if b is not None else y).astype(np.float32)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        g2 = g.reshape(-1, g.shape[-1])
        return (g @ w).astype(np.float32), (g2.T @ x.reshape(-1, x.shape[-1])).astype(np.float32), g2.sum(0)


class _StubLinear(nn.Module):
    """Stand-in for relpos.nn.Linear until the nn area lands (same layout as torch)."""

    def __init__(self, in_features, out_features, bias=True, seed=None):
        super().__init__()
        rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(in_features)
        self.weight = nn.Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        self.bias = nn.Parameter(rng.uniform(-bound, bound, out_features).astype(np.float32)) if bias else None

    def forward(self, x):
        return _LinearFn.apply(x, self.weight, self.bias)


@pytest.fixture(autouse=True)
def linear(monkeypatch):
    if not hasattr(nn, "Linear"):
        monkeypatch.setattr(nn, "Linear", _StubLinear, raising=False)
    yield


def proj(lin, x):
    y = x.astype(np.float64) @ lin.weight.data.T.astype(np.float64)
    return y + lin.bias.data if lin.bias is not None else y


def mha_reference(m, x, key_padding_mask=None):
    """float64 MHA with encoding=None: projections, reference.attention, out projection."""
    B, T, d = x.shape
    H, Dh = m.n_heads, m.head_dim
    heads = lambda y: y.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
    q, k, v = heads(proj(m.q_proj, x)), heads(proj(m.k_proj, x)), heads(proj(m.v_proj, x))
    o, _, p = ref.attention(q, k, v, causal=m.causal, key_padding_mask=key_padding_mask)
    return proj(m.out_proj, o.transpose(0, 2, 1, 3).reshape(B, T, d)), p


@pytest.mark.parametrize("causal", [True, False])
def test_forward_matches_reference(rng, causal):
    m = nn.MultiHeadAttention(12, 3, encoding=None, causal=causal, seed=1)
    x = rng.standard_normal((2, 5, 12)).astype(np.float32)
    mask = np.zeros((2, 5), bool)
    mask[1, 0] = True
    out, w = m(Tensor(x), key_padding_mask=mask, return_weights=True)
    want, p = mha_reference(m, x, mask)
    assert out.shape == (2, 5, 12) and w.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(out.data, want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(w, p, atol=2e-6)


def test_cache_generation_matches_full(rng):
    m = nn.MultiHeadAttention(8, 2, encoding=None, seed=3)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    with no_grad():
        full = m(Tensor(x)).data
        cache = nn.KVCache()
        first = m(Tensor(x[:, :2]), cache=cache).data  # a prompt of 2 tokens
        steps = [m(Tensor(x[:, t:t + 1]), cache=cache).data for t in range(2, 6)]
    assert cache.length == 6
    got = np.concatenate([first] + steps, axis=1)
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=1e-5)


def test_gradients_vs_torch(rng):
    torch = pytest.importorskip("torch")
    d, H = 8, 2
    m = nn.MultiHeadAttention(d, H, encoding=None, seed=5)
    x = rng.standard_normal((2, 4, d)).astype(np.float32)
    X = Tensor(x, requires_grad=True)
    out = m(X)
    dout = 2 * (out.data + 1) / out.data.size
    out.backward(dout)

    tx = torch.tensor(x, requires_grad=True)
    tl = {n: (torch.tensor(getattr(m, n).weight.data, requires_grad=True),
              torch.tensor(getattr(m, n).bias.data, requires_grad=True))
          for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
    lin = lambda n, y: torch.nn.functional.linear(y, *tl[n])
    heads = lambda y: y.reshape(2, 4, H, d // H).transpose(1, 2)
    o = torch.nn.functional.scaled_dot_product_attention(heads(lin("q_proj", tx)), heads(lin("k_proj", tx)),
                                                         heads(lin("v_proj", tx)), is_causal=True)
    tout = lin("out_proj", o.transpose(1, 2).reshape(2, 4, d))
    ((tout + 1).square().mean()).backward()
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(X.grad, tx.grad.numpy(), atol=1e-6, rtol=1e-4)
    for n, (tw, tb) in tl.items():
        np.testing.assert_allclose(getattr(m, n).weight.grad, tw.grad.numpy(), atol=1e-6, rtol=1e-4, err_msg=n)
        np.testing.assert_allclose(getattr(m, n).bias.grad, tb.grad.numpy(), atol=1e-6, rtol=1e-4, err_msg=n)


def test_parameters_and_repr():
    m = nn.MultiHeadAttention(8, 2, encoding=None, bias=False, seed=0)
    names = [n for n, _ in m.named_parameters()]
    assert set(names) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"}
    assert "n_heads=2" in repr(m)
    a = nn.MultiHeadAttention(8, 2, encoding=None, seed=0)
    b = nn.MultiHeadAttention(8, 2, encoding=None, seed=0)
    np.testing.assert_array_equal(a.q_proj.weight.data, b.q_proj.weight.data)
    assert not np.array_equal(a.q_proj.weight.data, a.k_proj.weight.data)


def test_bad_arguments(rng):
    with pytest.raises(ValueError, match="divisible by n_heads"):
        nn.MultiHeadAttention(10, 3, encoding=None)
    with pytest.raises(ValueError, match="n_heads must be a positive int"):
        nn.MultiHeadAttention(8, 0, encoding=None)
    with pytest.raises(ValueError, match="dropout must be"):
        nn.MultiHeadAttention(8, 2, encoding=None, dropout=1.5)
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.MultiHeadAttention(8, 2, encoding=None, impl="cuda")
    m = nn.MultiHeadAttention(8, 2, encoding=None)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model\)"):
        m(Tensor(np.zeros((2, 3, 6), np.float32)))
    with pytest.raises(TypeError, match="cache must be"):
        m(Tensor(np.zeros((2, 3, 8), np.float32)), cache={})
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        m(Tensor(np.zeros((2, 3, 8), np.float32)), key_padding_mask=np.zeros((2, 4), bool))
