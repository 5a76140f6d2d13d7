"""MultiHeadAttention: projections + encoding + attention_core, key/value cache."""
import numpy as np
import pytest
import reference as ref

import relpos
from relpos import functional as F
from relpos import nn
from relpos.tensor import Tensor, no_grad


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


# every registered encoding that acts inside attention (the registry is the list)
ENCODINGS = [r["name"] for r in relpos.encodings.available() if "A" not in r["channel"]]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encoding_matches_functional_and_cache(rng, encoding):
    """MHA with an encoding == projections + F.attention(encoding=...) + out projection,
    and token-by-token generation through the cache == the full causal pass."""
    B, T, d, H = 2, 6, 16, 2
    m = nn.MultiHeadAttention(d, H, encoding=encoding, seed=2)
    x = rng.standard_normal((B, T, d)).astype(np.float32)
    with no_grad():
        full = m(Tensor(x)).data
        heads = lambda y: y.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)
        X = Tensor(x)
        o = F.attention(heads(m.q_proj(X)), heads(m.k_proj(X)), heads(m.v_proj(X)), encoding=m.encoding,
                        impl="materialized")
        want = m.out_proj(o.transpose(0, 2, 1, 3).reshape(B, T, d)).data
        cache = nn.KVCache()
        steps = [m(Tensor(x[:, :2]), cache=cache).data]
        steps += [m(Tensor(x[:, t:t + 1]), cache=cache).data for t in range(2, T)]
    np.testing.assert_allclose(full, want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-4)


def test_rope_weights_depend_on_relative_position_only(rng):
    """With RoPE, shifting every position by a cache offset leaves the weights unchanged:
    a query at absolute position p attending to keys 0..p sees the same logits as ever."""
    m = nn.MultiHeadAttention(8, 2, encoding="rope", seed=4)
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    with no_grad():
        _, w = m(Tensor(x), return_weights=True)
        cache = nn.KVCache()
        m(Tensor(x[:, :4]), cache=cache)
        _, w_last = m(Tensor(x[:, 4:]), cache=cache, return_weights=True)
    assert w.shape == (1, 2, 5, 5) and w_last.shape == (1, 2, 1, 5)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w_last[:, :, 0], w[:, :, -1], atol=1e-6)


def test_gradients_reach_encoding_parameters(rng):
    m = nn.MultiHeadAttention(8, 2, encoding="shaw", seed=0)
    out = m(Tensor(rng.standard_normal((2, 5, 8)).astype(np.float32)))
    out.backward(np.ones(out.shape, np.float32))
    enc_params = [(n, p) for n, p in m.named_parameters() if n.startswith("encoding.")]
    assert enc_params, "shaw has learnable tables"
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, n
        assert np.any(p.grad != 0), n


def test_dropout_train_and_eval(rng):
    x = Tensor(rng.standard_normal((2, 4, 8)).astype(np.float32))
    a = nn.MultiHeadAttention(8, 2, encoding=None, dropout=0.5, seed=7)
    b = nn.MultiHeadAttention(8, 2, encoding=None, dropout=0.5, seed=7)
    ya, yb = a(x).data, b(x).data
    np.testing.assert_array_equal(ya, yb)  # the same seed drops the same elements
    assert np.mean(ya == 0) > 0.2
    a.eval()
    clean = nn.MultiHeadAttention(8, 2, encoding=None, seed=7)
    np.testing.assert_array_equal(a(x).data, clean(x).data)


def test_materialized_only_encoding_rejects_fused():
    with pytest.raises(ValueError, match="impl='fused' is not possible"):
        m = nn.MultiHeadAttention(8, 2, encoding="cope", impl="fused", seed=0)
        m(Tensor(np.zeros((1, 3, 8), np.float32)))


def test_cache_batch_mismatch(rng):
    m = nn.MultiHeadAttention(8, 2, encoding=None)
    cache = nn.KVCache()
    with no_grad():
        m(Tensor(np.zeros((2, 3, 8), np.float32)), cache=cache)
        with pytest.raises(ValueError, match="batch"):
            m(Tensor(np.zeros((1, 1, 8), np.float32)), cache=cache)
    assert "length=3" in repr(cache)


@pytest.mark.parametrize("encoding", ["rope", "alibi", None])
@pytest.mark.parametrize("shape", [(0, 4, 16), (2, 0, 16)])
def test_empty_batch_or_sequence_forward_and_backward(encoding, shape):
    """The attention output arrives in the merged layout (merge_heads): an empty
    batch or sequence still gives empty outputs and gradients, not a reshape error."""
    m = nn.MultiHeadAttention(16, 2, encoding=encoding)
    x = Tensor(np.zeros(shape, np.float32), requires_grad=True)
    y = m(x)
    assert y.shape == shape
    y.backward(np.ones(shape, np.float32))
    assert x.grad.shape == shape
