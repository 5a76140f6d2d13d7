"""Numerics at the edges (issue 6): T = 32768 on the fused path (index
arithmetic past 2**30 pairs; forward and backward spot-checked against float64),
RoPE angles at position 10**6, softmax / log_softmax / cross-entropy / attention
with logits of +-1e4; FIRE at q_offset = 2**27 (memory and answer).

    python -m pytest tests/test_numerics.py -q
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import relpos
import relpos._C as C
import relpos.functional as F
from relpos import Tensor
from relpos.encodings.rotary import RoPE, rope_inv_freq

BIG_T = 32768


def ref_rows(q, k, v, bias, rows, scale):
    """float64 causal attention rows (out, lse, P) with a Toeplitz bias bias[i - j + T - 1]."""
    T = k.shape[0]
    out, lse, P = [], [], []
    for i in rows:
        s = (k[: i + 1] @ q[i]) * scale + bias[i - np.arange(i + 1) + T - 1]
        m = s.max()
        e = np.exp(s - m)
        l_ = m + np.log(e.sum())
        p = np.exp(s - l_)
        out.append(p @ v[: i + 1])
        lse.append(l_)
        P.append(p)
    return np.array(out), np.array(lse), P


def test_fused_attention_T32768_forward_backward():
    r = np.random.default_rng(0)
    T, D = BIG_T, 4
    q, k, v, dout = (r.standard_normal((1, 1, T, D)).astype(np.float32) for _ in range(4))
    # ALiBi-like Toeplitz bias over i - j: indices up to 2T - 2 exercise the bias-vector arithmetic
    slope = 1.0 / 64
    bias = (-slope * np.abs(np.arange(2 * T - 1) - (T - 1))).astype(np.float32)[None]
    kw = dict(causal=True, bias_vec=bias, bias_ix=(1, T - 1))
    out, lse = C.attention_fwd(q, k, v, **kw)
    assert out.shape == (1, 1, T, D) and np.isfinite(out).all() and np.isfinite(lse).all()
    g = C.attention_bwd(q, k, v, out, lse, dout, **kw)
    for name in ("q", "k", "v", "bias_vec"):
        assert np.isfinite(g[name]).all(), name

    q64, k64, v64, d64 = (a[0, 0].astype(np.float64) for a in (q, k, v, dout))
    b64 = bias[0].astype(np.float64)
    scale = 1 / np.sqrt(D)
    rows = [0, 1, 4097, 20000, T - 3, T - 2, T - 1]
    o_ref, lse_ref, P = ref_rows(q64, k64, v64, b64, rows, scale)
    np.testing.assert_allclose(out[0, 0, rows], o_ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(lse[0, 0, rows], lse_ref, rtol=2e-5, atol=2e-5)
    # dq of those rows: scale * sum_j P_ij (dout_i . v_j - dout_i . o_i) k_j
    for n, i in enumerate(rows):
        dp = v64[: i + 1] @ d64[i]
        ds = P[n] * (dp - d64[i] @ o_ref[n])
        np.testing.assert_allclose(g["q"][0, 0, i], scale * ds @ k64[: i + 1], rtol=2e-3, atol=2e-4)
    # dk, dv of the last keys: only the last rows see them (causal)
    tail = [T - 3, T - 2, T - 1]
    for j in tail:
        dv = sum(P[rows.index(i)][j] * d64[i] for i in tail if i >= j)
        dk = sum(scale * P[rows.index(i)][j] * (v64[j] @ d64[i] - d64[i] @ o_ref[rows.index(i)]) * q64[i]
                 for i in tail if i >= j)
        np.testing.assert_allclose(g["v"][0, 0, j], dv, rtol=2e-3, atol=2e-5)
        np.testing.assert_allclose(g["k"][0, 0, j], dk, rtol=2e-3, atol=2e-5)


def wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


@pytest.mark.parametrize("rotary_dim", [8, 64])
def test_rope_angles_at_position_1e6(rotary_dim):
    pos0 = 10**6 - 2
    inv = rope_inv_freq(rotary_dim)
    cos, sin = C.rope_tables(inv, 5, offset=pos0)
    got = np.arctan2(sin.astype(np.float64), cos.astype(np.float64))
    want = (np.arange(5, dtype=np.float64)[:, None] + pos0) * inv[None, :]
    err = np.abs(wrap(got - want))
    assert err.max() < 1e-6, f"largest angle error {err.max():.2e} rad"
    # the encoding's own tables (what attention uses) are the same
    enc = RoPE(rotary_dim=rotary_dim, head_dim=rotary_dim)
    c2, s2 = enc.tables(5, pos0, rotary_dim)
    assert np.array_equal(c2, cos) and np.array_equal(s2, sin)
    # a rotation at 10**6 applied to a vector matches float64 within float32 rounding
    x = np.random.default_rng(1).standard_normal((1, 1, 5, rotary_dim)).astype(np.float32)
    y = C.rotary_fwd(x, cos, sin, rotary_dim=rotary_dim)
    x64 = x.astype(np.float64)[0, 0]
    c64, s64 = np.cos(want), np.sin(want)
    ref = np.empty_like(x64)
    ref[:, 0::2] = x64[:, 0::2] * c64 - x64[:, 1::2] * s64
    ref[:, 1::2] = x64[:, 0::2] * s64 + x64[:, 1::2] * c64
    np.testing.assert_allclose(y[0, 0], ref, atol=2e-6 * np.abs(x64).max() * 4)


def big_logits():
    r = np.random.default_rng(2)
    x = r.choice([-1e4, 1e4, 0.0, 9999.0], size=(6, 5)).astype(np.float32)
    x[0] = 1e4
    x[1] = -1e4
    x[2, 0] = 1e4
    return x


def test_softmax_family_with_1e4_logits():
    x = big_logits()
    y = C.softmax_fwd(x)
    ls = C.log_softmax_fwd(x)
    assert np.isfinite(y).all() and np.isfinite(ls).all()
    x64 = x.astype(np.float64)
    m = x64.max(-1, keepdims=True)
    lse = m + np.log(np.exp(x64 - m).sum(-1, keepdims=True))
    np.testing.assert_allclose(y, np.exp(x64 - lse), atol=1e-6)
    np.testing.assert_allclose(ls, x64 - lse, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
    g = np.ones_like(x)
    assert np.isfinite(C.softmax_bwd(y, g)).all() and np.isfinite(C.log_softmax_bwd(ls, g)).all()
    # through autograd
    t = Tensor(x, requires_grad=True)
    F.log_softmax(t).sum().backward()
    assert np.isfinite(t.grad).all()


def test_cross_entropy_with_1e4_logits():
    x = big_logits()
    targets = np.array([0, 1, 2, 3, 4, 0])
    loss, lse, count = C.cross_entropy_fwd(x, targets)
    x64 = x.astype(np.float64)
    m = x64.max(-1)
    lse_ref = m + np.log(np.exp(x64 - m[:, None]).sum(-1))
    want = np.mean(lse_ref - x64[np.arange(6), targets])
    assert np.isfinite(loss) and np.isfinite(lse).all()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    d = C.cross_entropy_bwd(x, targets, lse, 1.0, count)
    assert np.isfinite(d).all()
    t = Tensor(x, requires_grad=True)
    out = F.cross_entropy(t, targets)
    out.backward()
    assert np.isfinite(out.item()) and np.isfinite(t.grad).all()
    np.testing.assert_allclose(out.item(), want, rtol=1e-5)


@pytest.mark.parametrize("path", ["fused", "materialized"])
def test_attention_with_1e4_logits(path):
    """Logits of +-1e4 (huge bias and a large scale) stay finite; the result is the float64 one."""
    r = np.random.default_rng(3)
    B, H, T, D = 1, 2, 9, 4
    q, k, v = (r.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(3))
    bias_full = r.choice([-1e4, 1e4, 0.0], size=(1, H, T, T)).astype(np.float32)
    fwd, bwd = (C.attention_fwd, C.attention_bwd) if path == "fused" else (C.attention_mat_fwd,
                                                                           C.attention_mat_bwd)
    out, lse = fwd(q, k, v, causal=True, bias_full=bias_full)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(D) + bias_full
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    m = s.max(-1, keepdims=True)
    lse_ref = m[..., 0] + np.log(np.exp(s - m).sum(-1))
    p = np.exp(s - lse_ref[..., None])
    # a float32 logit near 1e4 is only known to 1e4 * 2**-24 ~ 6e-4: probabilities to that relative accuracy
    np.testing.assert_allclose(out, p @ v.astype(np.float64), rtol=0, atol=3e-3)
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-6)
    g = bwd(q, k, v, out, lse, np.ones_like(out), causal=True, bias_full=bias_full)
    assert all(np.isfinite(a).all() for a in g.values())
    # a large scale instead of a large bias: q.k * 1e3 reaches ~1e4
    out2, lse2 = fwd(q, k, v, causal=True, scale=1e3)
    assert np.isfinite(out2).all() and np.isfinite(lse2).all()
    # through the public functional API
    o3 = F.attention(Tensor(q), Tensor(k), Tensor(v), scale=1e3, impl="fused" if path == "fused" else "materialized")
    assert np.isfinite(o3.numpy()).all()


# ---------------------------------------------------------------- FIRE far from the origin (issue 12, item 2)

FIRE_MEMORY_SCRIPT = r"""
import resource, sys
import numpy as np
import relpos, relpos.functional as F
enc = relpos.encodings.get("fire", n_heads=2, seed=0)
r = np.random.default_rng(0)
q, k, v = (relpos.Tensor(r.standard_normal((1, 2, T, 8)).astype(np.float32), requires_grad=True) for T in (8, 4, 4))
for impl in ("fused", "materialized"):  # every code path once, at a small offset
    F.attention(q, k, v, encoding=enc, q_offset=4, impl=impl).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for impl in ("fused", "materialized"):
    F.attention(q, k, v, encoding=enc, q_offset=2**27, impl=impl).sum().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's unit")
def test_fire_memory_does_not_grow_with_q_offset():
    """FIRE at q_offset = 2**27 with 8 queries and 4 keys, forward and backward on both kernels: peak
    RSS grows by < 64 MiB (it was 2 GiB: a psi table of q_offset + Tq doubles; the bias is now the
    kernels' pwl channel, O(Tq + Tk) numbers)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", FIRE_MEMORY_SCRIPT], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grown = int(res.stdout.split()[-1])
    assert grown < 64 * 2**20, f"peak RSS grew by {grown / 2**20:.1f} MiB"


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("L", [1e6, 3e8])  # the threshold below every query position, and above
def test_fire_at_q_offset_2_27_equals_the_twin(impl, L):
    import reference as ref
    r = np.random.default_rng(4)
    enc = relpos.encodings.get("fire", n_heads=2, seed=3, init_L=L)
    qo, Tq, Tk = 2**27, 8, 5
    q, k, v = (r.standard_normal((1, 2, T, 8)).astype(np.float32) for T in (Tq, Tk, Tk))
    out = F.attention(Tensor(q), Tensor(k), Tensor(v), encoding=enc, q_offset=qo, impl=impl).numpy()
    p = {n: t.data for n, t in enc.named_parameters()}
    bias = ref.fire_bias(p["W1"], p["b1"], p["W2"], p["b2"], p["c"], p["L"], Tq, Tk, qo, enc.eps)
    np.testing.assert_allclose(enc.bias_matrix(Tq, Tk, qo), bias[0], rtol=1e-5, atol=1e-5)
    want = ref.attention(q, k, v, q_offset=qo, bias_full=bias)[0]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
