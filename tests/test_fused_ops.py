"""Fused training kernels (perf area): add_layer_norm, linear_gelu, qkv_heads,
heads_linear and the _C head split/merge, against the float64 twins in
tests/reference.py (perf section), central finite differences, the unfused
ops, and across thread counts."""
import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import relpos
from relpos import _C
from relpos import functional as F
from relpos.tensor import Tensor


@pytest.fixture(params=[False, True], ids=["simd", "portable"])
def portable(request):
    _C.force_portable(request.param)
    yield request.param
    _C.force_portable(False)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def rope_tables(T, rd, base=10000.0, offset=0):
    inv = base ** (-np.arange(0, rd, 2, dtype=np.float64) / rd)
    ang = (np.arange(T, dtype=np.float64) + offset)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def grads_of(fn, arrays, weights):
    """Backward of sum(out_i * weights_i) through relpos; returns the input gradients."""
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    outs = fn(*ts)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    total = None
    for o, w in zip(outs, weights):
        term = (o * Tensor(w)).sum()
        total = term if total is None else total + term
    total.backward()
    return [t.grad for t in ts]


def check_numgrad(ref_fn, arrays, weights, got, atol=2e-3, rtol=2e-3):
    """Compare each gradient in `got` with central differences of the float64 twin."""
    for i, a in enumerate(arrays):
        def scalar(v, i=i):
            args = [np.asarray(x, np.float64) for x in arrays]
            args[i] = v
            outs = ref_fn(*args)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            return sum(float((np.asarray(o) * w).sum()) for o, w in zip(outs, weights))
        num = ref.numgrad(scalar, a)
        np.testing.assert_allclose(got[i], num, atol=atol, rtol=rtol, err_msg=f"gradient of input {i}")


# ------------------------------------------------------------------ add_layer_norm

def test_add_layer_norm_forward_matches_twin_and_unfused(rng, portable):
    x, y = f32(rng, 3, 7, 48), f32(rng, 3, 7, 48)
    w, b = f32(rng, 48), f32(rng, 48)
    s, h = F.add_layer_norm(x, y, w, b, eps=1e-5)
    rs, rh = ref.add_layer_norm(x, y, w, b, 1e-5)
    np.testing.assert_allclose(s.data, rs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h.data, rh, rtol=1e-4, atol=1e-5)
    # the same bits as the unfused add then layer_norm
    u = F.layer_norm(F.add(Tensor(x), Tensor(y)), w, b, 1e-5)
    assert np.array_equal(h.data, u.data)


def test_add_layer_norm_backward_numgrad(rng, portable):
    x, y = f32(rng, 2, 3, 6), f32(rng, 2, 3, 6)
    w, b = f32(rng, 6) + 1.0, f32(rng, 6)
    ws = [f32(rng, 2, 3, 6), f32(rng, 2, 3, 6)]
    got = grads_of(lambda *t: F.add_layer_norm(*t), [x, y, w, b], ws)
    check_numgrad(lambda *a: ref.add_layer_norm(*a), [x, y, w, b], ws, got)
    assert np.array_equal(got[0], got[1])  # d/dx == d/dy


# The AVX2 LayerNorm kernels run several rows side by side (ops_x86.c); each row must
# keep the operations, and their order, of the row-at-a-time span as GCC vectorises it
# for D % 8 == 0 (what compare's published numbers were computed with). That order,
# written out in NumPy float32 (a fused multiply-add rounded once, through long double):
_f = np.float32


def _fma(a, b, c):
    L = np.longdouble
    return (np.asarray(a, L) * np.asarray(b, L) + np.asarray(c, L)).astype(_f)


def _lane_sums(rows):
    """(N, D) -> (N,): eight lane sums over the columns' chunks, then the lanes added in order."""
    N, D = rows.shape
    acc = np.zeros((N, 8), _f)
    for c in range(D // 8):
        acc = acc + rows[:, 8 * c:8 * c + 8]
    s = np.zeros(N, _f)
    for lane in range(8):
        s = s + acc[:, lane]
    return s


def _lane_fma_sums(a, b):
    """(N,) sums of a * b as eight lanes of fused multiply-adds, the lanes added in order."""
    N, D = a.shape
    acc = np.zeros((N, 8), _f)
    for c in range(D // 8):
        acc = _fma(a[:, 8 * c:8 * c + 8], b[:, 8 * c:8 * c + 8], acc)
    s = np.zeros(N, _f)
    for lane in range(8):
        s = s + acc[:, lane]
    return s


def _same(got, want):
    """The same float32 bits, except that any NaN matches any NaN (a NaN made by the
    hardware and one made through long double differ in sign)."""
    got, want = np.asarray(got, _f), np.asarray(want, _f)
    nan = np.isnan(want)
    return got.shape == want.shape and np.array_equal(np.isnan(got), nan) and \
        np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def _ln_fwd_in_order(x, w, b, eps):
    D = x.shape[1]
    m = _lane_sums(x) / _f(D)
    d = x - m[:, None]
    rs = _f(1) / np.sqrt(_lane_fma_sums(d, d) / _f(D) + _f(eps))
    return _fma(d * rs[:, None], w, b), m, rs


def _ln_bwd_in_order(x, w, m, rs, g, ds):
    N, D = x.shape
    h = (x - m[:, None]) * rs[:, None]
    gw = g * w
    a1 = _lane_fma_sums(g, np.broadcast_to(w, g.shape)) / _f(D)
    a2 = _lane_fma_sums(h, gw) / _f(D)
    dx = _fma(-h, a2[:, None], _fma(w, g, -a1[:, None])) * rs[:, None]
    if ds is not None:
        dx = ds + dx
    # dweight, dbias: per fixed row chunk (rows in order, from 0), the chunks added in order
    nch = min(N, 64)
    base, rem = divmod(N, nch)
    dw, db = np.zeros(D, _f), np.zeros(D, _f)
    for c in range(nch):
        lo = c * base + min(c, rem)
        hi = lo + base + (1 if c < rem else 0)
        pw, pb = np.zeros(D, _f), np.zeros(D, _f)
        for r in range(lo, hi):
            pw = _fma(h[r], g[r], pw)
            pb = pb + g[r]
        dw, db = dw + pw, db + pb
    return dx, dw, db


@pytest.mark.skipif("avx2" not in relpos.config()["simd"], reason="the AVX2 LayerNorm kernels need AVX2 + FMA")
@pytest.mark.parametrize("N,D", [(1, 8), (4, 64), (7, 24), (13, 64), (150, 16), (9, 256)])
def test_layer_norm_rows_keep_the_span_order_bit_for_bit(rng, threads, N, D):
    x, y = f32(rng, N, D) + 3.0, f32(rng, N, D)
    w, b = f32(rng, D), f32(rng, D)
    g, ds = f32(rng, N, D), f32(rng, N, D)
    x[N // 2, D // 3] = np.nan  # a NaN row stays NaN where the span's order puts it
    s = x + y
    want_h, want_m, want_rs = _ln_fwd_in_order(s, w, b, 1e-5)
    want_dx, want_dw, want_db = _ln_bwd_in_order(s, w, want_m, want_rs, g, ds)
    want_dx0 = _ln_bwd_in_order(s, w, want_m, want_rs, g, None)[0]
    for n in (1, 2):
        got_s, got_h, got_m, got_rs = threads(n, lambda: _C.add_layer_norm_fwd(x, y, w, b, 1e-5))
        for name, got, want in (("s", got_s, s), ("h", got_h, want_h), ("mean", got_m, want_m),
                                ("rstd", got_rs, want_rs)):
            assert _same(got, want), f"add_layer_norm_fwd {name}, {n} threads"
        h1, m1, rs1 = threads(n, lambda: _C.layer_norm_fwd(s, w, b, 1e-5))
        assert _same(h1, want_h) and _same(m1, want_m)
        dx, dw, db = threads(n, lambda: _C.add_layer_norm_bwd(got_s, w, got_m, got_rs, g, ds))
        for name, got, want in (("dx", dx, want_dx), ("dweight", dw, want_dw), ("dbias", db, want_db)):
            assert _same(got, want), f"add_layer_norm_bwd {name}, {n} threads"
        dx1, dw1, db1 = threads(n, lambda: _C.layer_norm_bwd(s, w, m1, rs1, g, need_x=True, need_weight=True,
                                                             need_bias=True))
        assert _same(dx1, want_dx0) and _same(dw1, want_dw)


def _rms_in_order(x, w, eps, g):
    """RMSNorm forward and backward in the AVX2 span's order (ops_x86.c)."""
    N, D = x.shape
    rs = _f(1) / np.sqrt(_lane_fma_sums(x, x) / _f(D) + _f(eps))
    h = x * rs[:, None]
    y = h * w
    a = _lane_fma_sums(g * w, h) / _f(D)
    dx = _fma(w, g, -(h * a[:, None])) * rs[:, None]
    nch = min(N, 64)
    base, rem = divmod(N, nch)
    dw = np.zeros(D, _f)
    for c in range(nch):
        lo = c * base + min(c, rem)
        pw = np.zeros(D, _f)
        for r in range(lo, lo + base + (1 if c < rem else 0)):
            pw = _fma(h[r], g[r], pw)
        dw = dw + pw
    return y, rs, dx, dw


@pytest.mark.skipif("avx2" not in relpos.config()["simd"], reason="the AVX2 RMSNorm kernels need AVX2 + FMA")
@pytest.mark.parametrize("N,D", [(1, 8), (6, 64), (150, 16), (9, 256)])
def test_rms_norm_rows_keep_the_span_order_bit_for_bit(rng, threads, N, D):
    x, w, g = f32(rng, N, D), f32(rng, D), f32(rng, N, D)
    x[N // 2, D // 3] = np.inf  # an inf row: its rstd is 0 and its outputs NaN where the span's are
    with np.errstate(invalid="ignore"):  # inf * 0 in the twin, as in the kernel
        want_y, want_rs, want_dx, want_dw = _rms_in_order(x, w, 1e-6, g)
    for n in (1, 2):
        y, rs = threads(n, lambda: _C.rms_norm_fwd(x, w, 1e-6))
        assert _same(y, want_y) and _same(rs, want_rs), f"forward, {n} threads"
        dx, dw = threads(n, lambda: _C.rms_norm_bwd(x, w, rs, g, need_x=True, need_weight=True))
        assert _same(dx, want_dx) and _same(dw, want_dw), f"backward, {n} threads"


@pytest.mark.parametrize("D", [7, 64])
def test_add_layer_norm_bwd_without_dx(rng, portable, D):
    """need_x=False computes no dx (not even as scratch) and the same dw, db bits."""
    s, w = f32(rng, 33, D), f32(rng, D)
    _, _, m, rs = _C.add_layer_norm_fwd(s, s, w, w)
    dh = f32(rng, 33, D)
    full = _C.add_layer_norm_bwd(s, w, m, rs, dh, s)
    part = _C.add_layer_norm_bwd(s, w, m, rs, dh, s, need_x=False)
    assert part[0] is None
    assert part[1].tobytes() == full[1].tobytes() and part[2].tobytes() == full[2].tobytes()


def test_add_layer_norm_only_s_used(rng):
    x, y = f32(rng, 4, 8), f32(rng, 4, 8)
    tx, ty = Tensor(x, requires_grad=True), Tensor(y, requires_grad=True)
    s, _ = F.add_layer_norm(tx, ty, np.ones(8, np.float32), np.zeros(8, np.float32))
    (s * 3.0).sum().backward()
    np.testing.assert_array_equal(tx.grad, np.full((4, 8), 3.0, np.float32))
    np.testing.assert_array_equal(ty.grad, np.full((4, 8), 3.0, np.float32))


def test_add_layer_norm_bad_inputs(rng):
    x = f32(rng, 4, 8)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        _C.add_layer_norm_fwd(x, f32(rng, 4, 9), w, b)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.add_layer_norm_fwd(x.astype(np.float64), x, w, b)
    with pytest.raises(ValueError, match="weight must have shape"):
        _C.add_layer_norm_fwd(x, x, np.ones(7, np.float32), b)
    with pytest.raises(ValueError, match="eps"):
        _C.add_layer_norm_fwd(x, x, w, b, -1.0)
    s, h, mean, rstd = _C.add_layer_norm_fwd(x, x, w, b)
    with pytest.raises(ValueError, match="mean must have shape"):
        _C.add_layer_norm_bwd(s, w, mean[:3], rstd, x)
    with pytest.raises(ValueError, match="ds must have the shape of s"):
        _C.add_layer_norm_bwd(s, w, mean, rstd, x, ds=x[:2])


def test_add_layer_norm_zero_rows():
    x = np.zeros((0, 5), np.float32)
    w, b = np.ones(5, np.float32), np.zeros(5, np.float32)
    s, h, mean, rstd = _C.add_layer_norm_fwd(x, x, w, b)
    assert s.shape == h.shape == (0, 5) and mean.shape == (0,)
    dx, dw, db = _C.add_layer_norm_bwd(s, w, mean, rstd, x, ds=x)
    assert dx.shape == (0, 5)
    np.testing.assert_array_equal(dw, np.zeros(5, np.float32))


# ------------------------------------------------------------------ linear_gelu

@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_linear_gelu_forward_matches_twin_and_unfused(rng, portable, approximate):
    x, w, b = f32(rng, 2, 9, 24), f32(rng, 40, 24, scale=0.3), f32(rng, 40)
    a = F.linear_gelu(x, w, b, approximate=approximate)
    np.testing.assert_allclose(a.data, ref.linear_gelu(x, w, b, approximate), rtol=1e-4, atol=2e-5)
    u = F.gelu(F.linear(x, w, b), approximate=approximate)
    assert np.array_equal(a.data, u.data)


@pytest.mark.skipif(not relpos.config()["cpu_avx2_fma"], reason="this CPU or build has no AVX2/FMA path")
def test_linear_gelu_bias_gradient_simd_gives_the_portable_bits(rng, threads):
    """db: the chunks' row sums of dh in order (registers on the SIMD path, memory on
    the portable one) and the activation's forms agree, so the same bits."""
    x, w, b = f32(rng, 300, 24), f32(rng, 72, 24), f32(rng, 72)
    h, _ = _C.linear_gelu_fwd(x, w, b, "tanh")
    da = f32(rng, 300, 72)
    _C.force_portable(True)
    try:
        want = _C.linear_gelu_bwd(x, w, h, da, "tanh")[2]
    finally:
        _C.force_portable(False)
    for n in (1, 2):
        assert threads(n, lambda: _C.linear_gelu_bwd(x, w, h, da, "tanh")[2]).tobytes() == want.tobytes()


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_linear_gelu_backward_numgrad(rng, portable, approximate):
    x, w, b = f32(rng, 5, 4), f32(rng, 6, 4, scale=0.5), f32(rng, 6)
    ws = [f32(rng, 5, 6)]
    got = grads_of(lambda *t: F.linear_gelu(*t, approximate=approximate), [x, w, b], ws)
    check_numgrad(lambda *a: ref.linear_gelu(*a, approximate=approximate), [x, w, b], ws, got)


def test_linear_gelu_no_bias_and_partial_needs(rng):
    x, w = f32(rng, 7, 5), f32(rng, 3, 5)
    tw = Tensor(w, requires_grad=True)
    F.linear_gelu(x, tw).sum().backward()  # x needs no gradient
    num = ref.numgrad(lambda v: ref.linear_gelu(x, v).sum(), w)
    np.testing.assert_allclose(tw.grad, num, atol=2e-3, rtol=2e-3)


def test_linear_gelu_bad_inputs(rng):
    x, w = f32(rng, 4, 8), f32(rng, 3, 8)
    with pytest.raises(ValueError, match="weight must have shape \\(out_features, in_features=8\\)"):
        _C.linear_gelu_fwd(x, f32(rng, 3, 7))
    with pytest.raises(ValueError, match="bias must have shape"):
        _C.linear_gelu_fwd(x, w, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="approximate must be"):
        _C.linear_gelu_fwd(x, w, None, "erf")
    with pytest.raises(ValueError, match="approximate must be"):
        F.linear_gelu(x, w, approximate="exact")
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        _C.linear_gelu_fwd(x, w.astype(np.float64))
    h, a = _C.linear_gelu_fwd(x, w)
    with pytest.raises(ValueError, match="da must have shape"):
        _C.linear_gelu_bwd(x, w, h, a[:, :2])


def test_linear_gelu_zero_rows():
    x, w = np.zeros((0, 4), np.float32), np.ones((3, 4), np.float32)
    h, a = _C.linear_gelu_fwd(x, w, np.ones(3, np.float32))
    assert h.shape == a.shape == (0, 3)
    dx, dw, db = _C.linear_gelu_bwd(x, w, h, a)
    assert dx.shape == (0, 4)
    np.testing.assert_array_equal(dw, np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(db, np.zeros(3, np.float32))


# ------------------------------------------------------------------ head split / merge

@pytest.mark.parametrize("layout", ["interleaved", "half"])
@pytest.mark.parametrize("rd", [8, 4])
def test_heads_split_merge_match_twin(rng, portable, layout, rd):
    B, T, H, Dh = 2, 5, 3, 8
    y = f32(rng, B, T, 3 * H * Dh)
    cos, sin = rope_tables(T, rd)
    kw = dict(rotate=2, cos=cos, sin=sin, rotary_dim=rd, layout=layout)
    got = _C.heads_split(y, H, groups=3, **kw)
    want = ref.heads_split(y, H, groups=3, **kw)
    for g, w in zip(got, want):
        assert g.shape == (B, H, T, Dh) and g.flags.c_contiguous
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    xs = [f32(rng, B, H, T, Dh), None, f32(rng, B, H, T, Dh)]
    np.testing.assert_allclose(_C.heads_merge(xs, **kw), ref.heads_merge(xs, **kw), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
@pytest.mark.parametrize("rd", [16, 10])
def test_heads_split_rotation_matches_posenc_kernel(rng, layout, rd):
    """The fused rotation gives the same bits as the rotary encoding's own kernel
    (both layouts, full and partial rotary_dim), and the merge those of its backward."""
    B, T, H, Dh = 2, 6, 2, 16
    y = f32(rng, B, T, H * Dh)
    cos, sin = rope_tables(T, rd)
    kw = dict(cos=cos, sin=sin, rotary_dim=rd, layout=layout)
    (q,) = _C.heads_split(y, H, rotate=1, **kw)
    plain = np.ascontiguousarray(y.reshape(B, T, H, Dh).transpose(0, 2, 1, 3))
    assert np.array_equal(q, _C.rotary_fwd(plain, **kw))
    merged = _C.heads_merge([q], rotate=1, **kw)
    back = _C.rotary_bwd(q, **kw)
    assert np.array_equal(merged, back.transpose(0, 2, 1, 3).reshape(B, T, H * Dh))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 3), T=st.integers(0, 6), H=st.integers(1, 3), P=st.integers(1, 4),
       groups=st.integers(1, 3), layout=st.sampled_from(["interleaved", "half"]), seed=st.integers(0, 99))
def test_heads_merge_is_adjoint_of_split(B, T, H, P, groups, layout, seed):
    rng = np.random.default_rng(seed)
    Dh = 2 * P
    cos, sin = rope_tables(T, Dh)
    kw = dict(rotate=min(2, groups), cos=cos, sin=sin, layout=layout)
    y = f32(rng, B, T, groups * H * Dh)
    xs = [f32(rng, B, H, T, Dh) for _ in range(groups)]
    left = sum(float((a.astype(np.float64) * b).sum()) for a, b in zip(_C.heads_split(y, H, groups=groups, **kw), xs))
    right = float((y.astype(np.float64) * _C.heads_merge(xs, **kw)).sum())
    assert abs(left - right) <= 1e-4 * (1.0 + abs(left))


def test_heads_bad_inputs(rng):
    y = f32(rng, 2, 3, 24)
    cos, sin = rope_tables(3, 8)
    with pytest.raises(ValueError, match="groups=3, n_heads=5"):
        _C.heads_split(y, 5, groups=3)
    with pytest.raises(ValueError, match="rotate=1 needs the RoPE tables"):
        _C.heads_split(y, 1, groups=3, rotate=1)
    with pytest.raises(ValueError, match="rotate must be"):
        _C.heads_split(y, 1, groups=3, rotate=4, cos=cos, sin=sin)
    with pytest.raises(ValueError, match="cos must have shape"):
        _C.heads_split(y, 1, groups=3, rotate=1, cos=cos[:2], sin=sin)
    with pytest.raises(ValueError, match="cos and sin must be given together"):
        _C.heads_split(y, 1, groups=3, cos=cos)
    with pytest.raises(ValueError, match="rotary_dim must be"):
        _C.heads_split(y, 1, groups=3, rotate=1, cos=cos, sin=sin, rotary_dim=3)
    with pytest.raises(ValueError, match="layout must be"):
        _C.heads_split(y, 1, groups=3, layout="neox")
    with pytest.raises(ValueError, match="y must have 3 dimensions|y must have shape"):
        _C.heads_split(y[0], 1)
    with pytest.raises(ValueError, match="n_heads must be >= 1"):
        _C.heads_split(y, 0)
    x = f32(rng, 2, 1, 3, 8)
    with pytest.raises(ValueError, match="at least one array"):
        _C.heads_merge([None, None])
    with pytest.raises(ValueError, match=r"xs\[1\] must have shape"):
        _C.heads_merge([x, f32(rng, 2, 1, 4, 8)])
    with pytest.raises(TypeError, match=r"xs\[0\] must have dtype float32"):
        _C.heads_merge([x.astype(np.float64)])
    with pytest.raises(TypeError, match="xs must be a sequence"):
        _C.heads_merge(3)


# ------------------------------------------------------------------ qkv_heads / heads_linear

@pytest.mark.parametrize("with_rope", [True, False])
def test_qkv_heads_forward_backward(rng, portable, with_rope):
    B, T, d, H = 2, 3, 8, 2
    x = f32(rng, B, T, d)
    ws = [f32(rng, d, d, scale=0.4) for _ in range(3)]
    bs = [f32(rng, d) for _ in range(3)]
    rope = (*rope_tables(T, d // H), d // H, "interleaved") if with_rope else None
    outs = F.qkv_heads(x, *ws, *bs, n_heads=H, rope=rope)
    want = ref.qkv_heads(x, *ws, *bs, H, rope)
    for o, w in zip(outs, want):
        np.testing.assert_allclose(o.data, w, rtol=1e-5, atol=1e-5)
    weights = [f32(rng, B, H, T, d // H) for _ in range(3)]
    arrays = [x] + ws + bs
    got = grads_of(lambda *t: F.qkv_heads(*t, n_heads=H, rope=rope), arrays, weights)
    check_numgrad(lambda *a: ref.qkv_heads(*a, H, rope), arrays, weights, got)


def test_heads_linear_forward_backward(rng, portable):
    B, H, T, Dh, N = 2, 3, 4, 2, 5
    o, w, b = f32(rng, B, H, T, Dh), f32(rng, N, H * Dh), f32(rng, N)
    np.testing.assert_allclose(F.heads_linear(o, w, b).data, ref.heads_linear(o, w, b), rtol=1e-5, atol=1e-5)
    weights = [f32(rng, B, T, N)]
    got = grads_of(F.heads_linear, [o, w, b], weights)
    check_numgrad(ref.heads_linear, [o, w, b], weights, got)


def test_qkv_heads_and_heads_linear_bad_inputs(rng):
    x = f32(rng, 2, 3, 8)
    w = f32(rng, 8, 8)
    with pytest.raises(ValueError, match="wk must have shape"):
        F.qkv_heads(x, w, f32(rng, 8, 4), w, n_heads=2)
    with pytest.raises(ValueError, match="all three biases or none"):
        F.qkv_heads(x, w, w, w, np.zeros(8, np.float32), n_heads=2)
    with pytest.raises(ValueError, match="x must have shape \\(B, T, d_model\\)"):
        F.qkv_heads(x[0], w, w, w, n_heads=2)
    with pytest.raises(ValueError, match="o must have shape"):
        F.heads_linear(x, w)
    with pytest.raises(ValueError, match="weight must have shape"):
        F.heads_linear(f32(rng, 2, 2, 3, 4), f32(rng, 5, 7))


# ------------------------------------------------------------------ threads

def test_fused_kernels_bit_identical_across_threads(rng, threads):
    """Shapes above every parallel threshold; same bits with 1 and 2 threads."""
    B, T, d, H, F4 = 2, 64, 128, 4, 512
    x, y = f32(rng, B, T, d), f32(rng, B, T, d)
    w, b = f32(rng, d) + 1, f32(rng, d)
    w1, b1 = f32(rng, F4, d, scale=0.1), f32(rng, F4)
    _unused = [f32(rng, d, d, scale=0.1) for _ in range(3)]  # keeps the later draws as they were
    cos, sin = rope_tables(T, d // H)
    g_out = f32(rng, B, T, F4)

    def run():
        s, h, mean, rstd = _C.add_layer_norm_fwd(x, y, w, b)
        dx, dw, db = _C.add_layer_norm_bwd(s, w, mean, rstd, y, ds=x)
        hh, a = _C.linear_gelu_fwd(h.reshape(-1, d), w1, b1)
        gx, gw, gb = _C.linear_gelu_bwd(h.reshape(-1, d), w1, hh, g_out.reshape(-1, F4))
        qkv = _C.heads_split(np.concatenate([s, h, x], axis=-1), H, groups=3, rotate=2, cos=cos, sin=sin)
        m = _C.heads_merge(qkv, rotate=2, cos=cos, sin=sin)
        return [s, h, mean, rstd, dx, dw, db, hh, a, gx, gw, gb, *qkv, m]

    one = threads(1, run)
    two = threads(2, run)
    for i, (p, q) in enumerate(zip(one, two)):
        assert np.array_equal(p, q), f"output {i} differs between 1 and 2 threads"


# ------------------------------------------------------------------ model level

def _unfused_loss_and_grads(model, ids, tgt):
    """The same model run block by block through TransformerBlock.forward (a
    separate residual add and LayerNorm, the unfused trunk)."""
    for p in model.parameters():
        p.grad = None
    x = model._embed(ids)
    for blk in model.blocks:
        x = blk(x, cache=None)
    logits = F.linear(model.norm_f(x), model.tok_emb.weight)
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.reshape(B * T, V), tgt.reshape(B * T))
    loss.backward()
    return float(loss.data), {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("encoding", ["rope", "alibi"])
def test_model_fused_path_matches_unfused(encoding):
    from relpos.models import TransformerLM

    model = TransformerLM(32, d_model=16, n_layers=2, n_heads=2, encoding=encoding, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 32, (2, 9))
    x, tgt = ids[:, :-1], ids[:, 1:]
    for p in model.parameters():
        p.grad = None
    loss = model.loss(x, tgt)
    loss.backward()
    fused = {n: p.grad.copy() for n, p in model.named_parameters()}
    ul, unfused = _unfused_loss_and_grads(model, np.ascontiguousarray(x), np.ascontiguousarray(tgt))
    # the block forward (general add + norm) and the fused trunk give the same loss
    assert abs(float(loss.data) - ul) <= 1e-6 * abs(ul)
    for n in fused:
        np.testing.assert_allclose(fused[n], unfused[n], rtol=1e-4, atol=1e-6, err_msg=n)


# ------------------------------------------------------------------ head_cross_entropy

def _head_case(rng, lead=(3, 5), d=8, V=11, ignore=True):
    h, w = f32(rng, *lead, d), f32(rng, V, d, scale=0.5)
    t = rng.integers(0, V, size=lead)
    if ignore:
        t.flat[::4] = -100
    return h, w, t


@pytest.mark.parametrize("lead", [(7,), (3, 5)])
def test_head_cross_entropy_matches_twin_and_numgrad(rng, portable, lead):
    h, w, t = _head_case(rng, lead)
    th, tw = Tensor(h.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
    loss = F.head_cross_entropy(th, tw, t)
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref.head_cross_entropy(h, w, t), rtol=1e-5)
    loss.backward()
    check_numgrad(lambda a, b: ref.head_cross_entropy(a, b, t), [h, w], [1.0], [th.grad, tw.grad])


def test_head_cross_entropy_same_bits_as_unfused(rng):
    h, w, t = _head_case(rng, (4, 16), d=32, V=64)
    th, tw = Tensor(h.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
    loss = F.head_cross_entropy(th, tw, t)
    loss.backward()
    uh, uw = Tensor(h.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
    logits = F.linear(uh, uw)
    uloss = F.cross_entropy(logits.reshape(-1, 64), t.reshape(-1))
    uloss.backward()
    assert loss.item() == uloss.item()
    assert np.array_equal(th.grad, uh.grad) and np.array_equal(tw.grad, uw.grad)


def test_head_cross_entropy_backward_twice_and_edge_cases(rng):
    """The first backward turns the saved logits into their gradient; a second
    one recomputes them and gives the same gradients again (accumulated)."""
    h, w, t = _head_case(rng)
    th, tw = Tensor(h.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
    loss = F.head_cross_entropy(th, tw, t)
    loss.backward()
    g1 = th.grad.copy(), tw.grad.copy()
    loss.backward()
    np.testing.assert_array_equal(th.grad, 2 * g1[0])
    np.testing.assert_array_equal(tw.grad, 2 * g1[1])
    # every target ignored: loss 0, zero gradients
    th2, tw2 = Tensor(h.copy(), requires_grad=True), Tensor(w.copy(), requires_grad=True)
    loss = F.head_cross_entropy(th2, tw2, np.full(t.shape, -100))
    assert loss.item() == 0.0
    loss.backward()
    assert not th2.grad.any() and not tw2.grad.any()
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 5\)"):
        F.head_cross_entropy(h, w, t[:, :4])
    with pytest.raises(ValueError, match="weight \\(vocab_size, d\\)"):
        F.head_cross_entropy(h, w[:, :5], t)
    with pytest.raises(TypeError, match="targets must be an integer ndarray"):
        F.head_cross_entropy(h, w, t.astype(np.float32))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        F.head_cross_entropy(h, w, t, ignore_index=1.5)
    bad = t.copy()
    bad[0, 0] = 11
    with pytest.raises(IndexError):
        F.head_cross_entropy(h, w, bad)


def test_lm_loss_uses_the_fused_head_with_the_same_bits():
    """TransformerLM.loss (fused head + loss) equals cross_entropy of the model's
    own logits, tied and untied; a subclass with its own head keeps its head."""
    from relpos.models import TransformerLM
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 50, size=(2, 9))
    for tie in (True, False):
        model = TransformerLM(50, d_model=16, n_layers=1, n_heads=2, encoding="alibi", tie_weights=tie, seed=1)
        logits = model(ids[:, :-1])
        want = F.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1))
        assert model.loss(ids[:, :-1], ids[:, 1:]).item() == want.item()

    class Doubled(TransformerLM):
        def _logits(self, h):
            return super()._logits(h) * 2.0

    model = Doubled(50, d_model=16, n_layers=1, n_heads=2, encoding="alibi", seed=1)
    logits = model(ids[:, :-1])
    want = F.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert model.loss(ids[:, :-1], ids[:, 1:]).item() == want.item()
