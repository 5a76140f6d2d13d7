"""The core's one exp (csrc/core/simd_math.h): the scalar, AVX2 and AVX-512 forms
give the same bits lane for lane, it is within 1.1 ulp of float64 exp over the
normal range, and the special values come out as IEEE exp's do.

The forms are reached through the test hook relpos._C._exp_check(x, form); the
scalar form is the one compiled into the portable translation units (its fused
multiply-adds are fmaf calls there), the vector ones the *_x86.c kernels'.

The activation spans (GELU tanh/erf, ReLU, SiLU; forward and gradient) are compiled
three times, portable, AVX2 and AVX-512F; relpos._C._act_check(x, grad, act, form)
reaches each, and all give the same bits (NaN as NaN)."""
import numpy as np
import pytest

from relpos import _C

FLT_MIN = np.float32(np.finfo(np.float32).tiny)
LN_FLT_MAX = 88.72283935546875  # float32 just above ln(FLT_MAX)


def _available(form):
    try:
        _C._exp_check(np.zeros(1, np.float32), form)
        return True
    except RuntimeError:
        return False


VECTOR_FORMS = [
    pytest.param("avx2", marks=pytest.mark.skipif(not _available("avx2"), reason="this CPU or build has no AVX2/FMA")),
    pytest.param("avx512", marks=pytest.mark.skipif(not _available("avx512"),
                                                   reason="this CPU or build has no AVX-512F")),
]


def _f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _edge_sweep():
    """Specials, NaN payloads of both signs, denormals, and every float within a
    few hundred ulps of the overflow and underflow edges and of 0."""
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, FLT_MIN, -FLT_MIN,
                         np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    nans = _f32([0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFC54321, 0x7F800001, 0xFF812345])  # quiet and signalling
    denormals = np.concatenate([_f32(np.arange(1, 4096, dtype=np.uint32)),
                                _f32(np.arange(0x007FF000, 0x00800000, dtype=np.uint32))])
    around = []
    for edge in [LN_FLT_MAX, 88.3762626647949, np.log(FLT_MIN), np.log(2.0 ** -149), np.log(2.0 ** -150),
                 -104.0, 89.0, 0.5 * np.log(2.0)]:
        e = np.float32(edge).view(np.uint32).astype(np.int64)
        around.append(_f32((e + np.arange(-300, 301)).astype(np.uint32)))
    around = np.concatenate(around)
    return np.concatenate([specials, nans, denormals, -denormals, around, -around])


def _dense_sweep(step=61):
    """Every `step`-th float32 of [-110, 110] (both signs): about 35 million / step values."""
    hi = np.float32(110.0).view(np.uint32)
    pos = _f32(np.arange(0, hi, step, dtype=np.uint32))
    return np.concatenate([pos, -pos])


@pytest.mark.parametrize("form", VECTOR_FORMS)
def test_vector_forms_give_the_scalar_bits(form):
    for x in (_edge_sweep(), _dense_sweep()):
        ys = _C._exp_check(x, "scalar").view(np.uint32)
        yv = _C._exp_check(x, form).view(np.uint32)
        bad = np.flatnonzero(ys != yv)
        assert bad.size == 0, (f"{bad.size} lanes differ, first x={x[bad[0]]!r} "
                               f"scalar={ys[bad[0]]:#010x} {form}={yv[bad[0]]:#010x}")


@pytest.mark.parametrize("n", [1, 5, 7, 8, 9, 15, 16, 17, 31, 33])
@pytest.mark.parametrize("form", VECTOR_FORMS)
def test_vector_tails_give_the_scalar_bits(form, n):
    # the last, partial vector of a span goes through the vector form too
    x = np.linspace(-100, 88, n).astype(np.float32)
    np.testing.assert_array_equal(_C._exp_check(x, form).view(np.uint32), _C._exp_check(x, "scalar").view(np.uint32))


def _ulp(t):
    """ulp of float32 at the (float64) true value t, normal range."""
    _, e = np.frexp(t)
    return np.ldexp(1.0, e - 24)


def test_scalar_exp_within_1_1_ulp_of_float64_over_the_normal_range():
    # an exhaustive sweep of every float32 in [-87.34, 88.72] measured 1.0103 ulp
    # at most (x = -5.87788439); this dense sample must stay below 1.1
    x = _dense_sweep(step=37)
    x = x[(x >= np.log(FLT_MIN)) & (x <= LN_FLT_MAX)]
    t = np.exp(x.astype(np.float64))
    keep = (t >= FLT_MIN) & (t <= np.finfo(np.float32).max)
    x, t = x[keep], t[keep]
    y = _C._exp_check(x, "scalar").astype(np.float64)
    err = np.abs(y - t) / _ulp(t)
    assert x.size > 900_000
    assert err.max() < 1.1, f"max {err.max():.4f} ulp at x={x[np.argmax(err)]!r}"
    # and the mean error is that of a faithful, nearly correctly rounded exp
    assert err.mean() < 0.3


def test_special_values():
    x = np.array([np.nan, -np.nan, -np.inf, np.inf, 0.0, -0.0, 89.0, 88.7229, 1e30, -1e30, -104.0, -200.0],
                 np.float32)
    y = _C._exp_check(x, "scalar")
    assert np.isnan(y[0]) and np.isnan(y[1])
    # NaN comes out as the input NaN, quieted: no clamp turns it into a number
    assert y[:2].view(np.uint32).tolist() == [x[0].view(np.uint32), x[1].view(np.uint32)]
    assert y[2] == 0.0 and not np.signbit(y[2])
    assert y[3] == np.inf
    assert y[4] == 1.0 and y[5] == 1.0
    assert y[6] == np.inf and y[7] == np.inf and y[8] == np.inf  # overflow -> +inf
    assert y[9] == 0.0 and y[10] == 0.0 and y[11] == 0.0          # underflow -> 0


def test_gradual_underflow_and_the_largest_finite_result():
    # results below FLT_MIN are denormals rounded once, as float64 exp rounded to float32
    x = np.linspace(np.log(2.0 ** -149), np.log(FLT_MIN), 20001).astype(np.float32)
    y = _C._exp_check(x, "scalar")
    t = np.exp(x.astype(np.float64))
    assert np.all(y > 0)
    assert np.max(np.abs(y.astype(np.float64) - t)) <= 2.0 ** -149  # within one denormal step
    top = np.float32(88.72283)  # exp = 3.40279852e38 < FLT_MAX
    assert np.isfinite(_C._exp_check(np.array([top]), "scalar")[0])


def test_signalling_nan_payload_is_quieted_not_replaced():
    x = _f32([0x7F800001, 0xFF812345])
    y = _C._exp_check(x, "scalar").view(np.uint32)
    assert y.tolist() == [0x7FC00001, 0xFFC12345]


def test_bad_form_and_dtype_are_named():
    with pytest.raises(ValueError, match="form must be 'scalar', 'avx2' or 'avx512'; got 'sse'"):
        _C._exp_check(np.zeros(3, np.float32), "sse")
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C._exp_check(np.zeros(3), "scalar")


# ---- activation spans (ops.h rp_span_act_*): the AVX-512 instantiation of the same source as the AVX2 one

ACTS = ["gelu_tanh", "gelu_erf", "relu", "silu"]
AVX512_VS_AVX2 = pytest.mark.skipif(not (_available("avx2") and _available("avx512")),
                                    reason="needs both the AVX2 and the AVX-512F forms (this CPU or build lacks one)")


def _act_inputs(n_dense=200_003):
    """Hostile values (specials, NaN payloads, denormals, the exp edges scaled into GELU's
    argument range) and a dense spread; an odd length so the last vector is partial."""
    r = np.random.default_rng(5)
    dense = np.concatenate([r.standard_normal(n_dense // 2) * 4, r.uniform(-30, 30, n_dense - n_dense // 2)])
    with np.errstate(invalid="ignore"):  # the signalling NaNs of the sweep
        edge = _edge_sweep().astype(np.float64)
        return np.concatenate([edge, edge / 8, dense]).astype(np.float32)


@AVX512_VS_AVX2
@pytest.mark.parametrize("other", ["avx512", "scalar"])
@pytest.mark.parametrize("act", ACTS)
def test_act_forms_give_the_avx2_bits(act, other):
    """The portable span (explicit fmaf, no contraction) and the AVX-512 instantiation give the AVX2 bits."""
    x = _act_inputs()
    g = np.random.default_rng(6).standard_normal(x.size).astype(np.float32)
    g[:12] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3e38, -3e38, 1.0, -1.0, 2.0, 0.5]
    for grad in (None, g):
        a = _C._act_check(x, grad, act=act, form="avx2")
        b = _C._act_check(x, grad, act=act, form=other)
        # bits equal, except that a NaN may come out with another sign or payload (NaN is all torch promises)
        bad = np.flatnonzero((a.view(np.uint32) != b.view(np.uint32)) & ~(np.isnan(a) & np.isnan(b)))
        a, b = a.view(np.uint32), b.view(np.uint32)
        what = "forward" if grad is None else "backward"
        assert bad.size == 0, (f"{act} {what}: {bad.size} lanes differ, first x={x[bad[0]]!r} "
                               f"avx2={a[bad[0]]:#010x} {other}={b[bad[0]]:#010x}")


@AVX512_VS_AVX2
@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 31, 33, 100])
def test_act_avx512_tails_give_the_avx2_bits(n):
    x = np.linspace(-12, 12, n).astype(np.float32)
    g = np.linspace(1, 2, n).astype(np.float32)
    for act in ACTS:
        for grad in (None, g):
            np.testing.assert_array_equal(_C._act_check(x, grad, act=act, form="avx512").view(np.uint32),
                                          _C._act_check(x, grad, act=act, form="avx2").view(np.uint32))


def test_act_check_says_what_came():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="act must be .* got 'gelu2'"):
        _C._act_check(x, act="gelu2")
    with pytest.raises(ValueError, match="form must be .* got 'sse'"):
        _C._act_check(x, form="sse")
    with pytest.raises(ValueError, match="grad must have x's 4 elements; got 3"):
        _C._act_check(x, np.zeros(3, np.float32))


@pytest.mark.parametrize("act", ACTS)
def test_act_dispatch_is_the_widest_form(act):
    """What relpos runs (gelu_fwd/silu_fwd... through rp_ops_act_fwd and its dispatch) gives the bits of
    the widest form the CPU has (and so, by the test above, of every form)."""
    x = _act_inputs(20_001)
    form = "avx512" if _available("avx512") else "avx2" if _available("avx2") else "scalar"
    want = _C._act_check(x, act=act, form=form)
    got = {"gelu_tanh": lambda: _C.gelu_fwd(x, "tanh"), "gelu_erf": lambda: _C.gelu_fwd(x, "none"),
           "relu": lambda: _C.relu_fwd(x), "silu": lambda: _C.silu_fwd(x)}[act]()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
