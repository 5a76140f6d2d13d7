"""ops area: elementwise, activations, norms, softmax, cross-entropy, embedding, dropout.

Forward checked against the float64 twins in tests/reference.py, backward
against central finite differences of those twins; determinism across thread
counts; bad inputs; torch as an oracle where installed.
"""
import numpy as np
import pytest

import relpos
import relpos.functional as F
from relpos import _C, Tensor
from tests import reference as ref

SIZES = [0, 1, 7, 65]


@pytest.fixture(params=["simd", "portable"])
def path(request):
    """Run a test on the AVX2 kernels (when the CPU has them) and on the portable C path."""
    portable = request.param == "portable"
    if not portable and not relpos.config()["cpu_avx2_fma"]:
        pytest.skip("this CPU or build has no AVX2/FMA path")
    _C.force_portable(portable)
    yield request.param
    _C.force_portable(False)


def f32(rng, *shape, lo=None):
    x = rng.standard_normal(shape).astype(np.float32)
    if lo is not None:  # keep magnitudes away from 0 (divisors)
        x = (np.sign(x) + (x == 0)) * (lo + np.abs(x))
        x = x.astype(np.float32)
    return x


def grads_of(fn, arrays, G, needs=None):
    """Analytic gradients of sum(fn(*tensors) * G) w.r.t. each array."""
    needs = needs or [True] * len(arrays)
    ts = [Tensor(a.copy(), requires_grad=n) for a, n in zip(arrays, needs)]
    out = fn(*ts)
    out.backward(G.astype(np.float32))
    return out, [t.grad for t in ts]


def check_grad(fn64, arrays, i, analytic, G, tol=2e-3):
    """Compare the analytic gradient of input i with finite differences of
    the float64 twin fn64 (taking float64 arrays)."""
    args = [a.astype(np.float64) for a in arrays]
    assert analytic.shape == args[i].shape
    if args[i].size == 0:
        return

    def f(xi):
        a2 = list(args)
        a2[i] = xi
        return float((fn64(*a2) * G).sum())

    num = ref.numgrad(f, args[i])
    np.testing.assert_allclose(analytic, num, rtol=tol, atol=tol)


# ----------------------------------------------------------------- binary ops

OPS = {"add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div}


def _operands(rng, case, n):
    a = f32(rng, 3, n, lo=0.5)
    if case == "same":
        return a, f32(rng, 3, n, lo=0.5)
    if case == "vector":
        return a, f32(rng, n, lo=0.5)
    if case == "row":         # (1, n): last-axis kernel after a reshape
        return a, f32(rng, 1, n, lo=0.5)
    if case == "scalar":
        return a, f32(rng, 1, lo=0.5).reshape(())
    if case == "vector_left":
        return f32(rng, n, lo=0.5), a
    if case == "scalar_left":
        return f32(rng, 1, 1, lo=0.5), a
    if case == "trailing":    # (3, n) against (2, 3, n): the C kernel repeats it over axis 0
        return f32(rng, 2, 3, n, lo=0.5), a
    if case == "numpy":       # column broadcast: NumPy path
        return a, f32(rng, 3, 1, lo=0.5)
    if case == "both":        # both broadcast: (3, 1) with (1, n)
        return f32(rng, 3, 1, lo=0.5), f32(rng, 1, n, lo=0.5)
    raise AssertionError(case)


CASES = ["same", "vector", "row", "scalar", "vector_left", "scalar_left", "trailing", "numpy", "both"]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", SIZES)
def test_binary_forward_backward(rng, op, case, n):
    a, b = _operands(rng, case, n)
    a0, b0 = a.copy(), b.copy()
    G = rng.standard_normal(np.broadcast_shapes(a.shape, b.shape))
    out, (ga, gb) = grads_of(OPS[op], [a, b], G)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, ref.binary(op, a, b), rtol=1e-6, atol=1e-6)
    assert ga.shape == a.shape and gb.shape == b.shape
    check_grad(lambda x, y: ref.binary(op, x, y), [a, b], 0, ga, G)
    check_grad(lambda x, y: ref.binary(op, x, y), [a, b], 1, gb, G)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("op", list(OPS))
def test_binary_python_scalars_and_operators(rng, op):
    a = f32(rng, 2, 5, lo=0.5)
    t = Tensor(a, requires_grad=True)
    np.testing.assert_allclose(OPS[op](t, 2.0).data, ref.binary(op, a, 2.0), rtol=1e-6)
    np.testing.assert_allclose(OPS[op](3.0, t).data, ref.binary(op, 3.0, a), rtol=1e-6)
    # float64 ndarray on the other side is converted, result float32
    b = rng.standard_normal(5) + 3.0
    r = OPS[op](b, t)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r.data, ref.binary(op, b, a), rtol=1e-5)
    np.testing.assert_allclose((-t).data, -a)
    np.testing.assert_allclose((t + 1).data, a + 1, rtol=1e-6)
    np.testing.assert_allclose((1 - t).data, 1 - a, rtol=1e-6)
    np.testing.assert_allclose(F.div(2, t).data, 2 / a, rtol=1e-6)  # Tensor has no __rtruediv__ yet


def test_binary_needs_input_grad(rng):
    a = Tensor(f32(rng, 4, 3), requires_grad=True)
    b = Tensor(f32(rng, 3), requires_grad=False)
    (a * b).backward(np.ones((4, 3), np.float32))
    assert b.grad is None
    np.testing.assert_allclose(a.grad, np.broadcast_to(b.data, (4, 3)))
    # the bridge skips the unneeded gradient
    da, db = _C.binary_bwd(a.data, b.data, np.ones((4, 3), np.float32), "mul", need_a=False)
    assert da is None and db.shape == (3,)


def test_binary_reduction_deterministic(rng, threads):
    a = f32(rng, 4000, 33)
    b = f32(rng, 33)
    g = f32(rng, 4000, 33)
    r1 = threads(1, _C.binary_bwd, a, b, g, "mul")
    r2 = threads(2, _C.binary_bwd, a, b, g, "mul")
    for x, y in zip(r1, r2):
        assert np.array_equal(x, y)
    s = np.array(1.5, np.float32)
    r1 = threads(1, _C.binary_bwd, a, s, g, "div")
    r2 = threads(2, _C.binary_bwd, a, s, g, "div")
    assert np.array_equal(r1[1], r2[1])
    np.testing.assert_allclose(r1[1], -(g.astype(np.float64) * a / 2.25).sum(), rtol=1e-5)


def test_scale_bias_add_sum_rows(rng):
    x = f32(rng, 5, 7)
    bias = f32(rng, 7)
    np.testing.assert_allclose(_C.scale(x, 2.5), 2.5 * x.astype(np.float64), rtol=1e-6)
    np.testing.assert_allclose(_C.bias_add(x, bias), x.astype(np.float64) + bias, rtol=1e-6)
    np.testing.assert_allclose(_C.sum_rows(x), x.astype(np.float64).sum(0), rtol=1e-5, atol=1e-6)
    xt, bt = Tensor(x, requires_grad=True), Tensor(bias, requires_grad=True)
    G = f32(rng, 5, 7)
    F.bias_add(xt, bt).backward(G)
    np.testing.assert_allclose(bt.grad, G.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(xt.grad, G)
    st = Tensor(x, requires_grad=True)
    F.scale(st, -3.0).backward(G)
    np.testing.assert_allclose(st.grad, -3.0 * G)
    with pytest.raises(ValueError, match="bias"):
        _C.bias_add(x, f32(rng, 6))
    with pytest.raises(TypeError, match="alpha"):
        F.scale(st, "2")


def test_binary_bad_inputs(rng):
    a = f32(rng, 3, 4)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        _C.binary_fwd(a, a.astype(np.float64))
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        _C.binary_fwd([1.0], a)
    with pytest.raises(ValueError, match="b must have the shape of a"):
        _C.binary_fwd(a, f32(rng, 3))
    with pytest.raises(ValueError, match="trailing axes"):
        _C.binary_fwd(f32(rng, 2, 3, 4), f32(rng, 2, 4))
    with pytest.raises(ValueError, match="op must be one of"):
        _C.binary_fwd(a, a, "pow")
    with pytest.raises(ValueError, match="out"):
        _C.binary_fwd(a, a, out=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="grad must have the shape of a"):
        _C.binary_bwd(a, a, f32(rng, 4))
    with pytest.raises(ValueError):
        F.add(Tensor(a), f32(rng, 5))     # not broadcastable
    with pytest.raises(TypeError, match="dtype"):
        F.add(Tensor(a), np.array(["x"]))


def test_binary_out_and_noncontiguous(rng):
    a = f32(rng, 6, 4)
    out = np.empty((4, 6), np.float32)
    r = _C.binary_fwd(np.ascontiguousarray(a.T), np.array(2.0, np.float32), "mul", out=out)
    assert r is out
    np.testing.assert_allclose(out, a.T * 2)
    # a transposed (non-contiguous) view through the Python API
    t = Tensor(a)
    np.testing.assert_allclose(F.sub(t.data.T, f32(rng, 6) * 0).data, a.T)


# ----------------------------------------------------------- activations

ACTS = {
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), ref.gelu_tanh),
    "gelu_none": (lambda x: F.gelu(x, approximate="none"), ref.gelu_erf),
    "relu": (F.relu, ref.relu),
    "silu": (F.silu, ref.silu),
    "exp": (F.exp, np.exp),
    "tanh": (F.tanh, np.tanh),
    "log": (F.log, np.log),
}


@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("n", SIZES)
def test_activation_forward_backward(rng, name, n, path):
    fn, fn64 = ACTS[name]
    x = 2.0 * f32(rng, 2, n)
    if name == "log":
        x = np.abs(x) + 0.3
    if name == "relu":
        x = x + np.where(x >= 0, 1e-3, -1e-3).astype(np.float32)  # away from the kink
    x0 = x.copy()
    G = rng.standard_normal(x.shape)
    out, (gx,) = grads_of(fn, [x], G)
    np.testing.assert_allclose(out.data, fn64(x.astype(np.float64)), rtol=2e-6, atol=2e-6)
    check_grad(fn64, [x], 0, gx, G)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("approx", ["tanh", "none"])
def test_gelu_large_and_tails(approx, path):
    x = np.array([-1e4, -30, -8, 0, 8, 30, 1e4], np.float32)
    y = F.gelu(x, approximate=approx).data
    assert np.all(np.isfinite(y))
    fn64 = ref.gelu_tanh if approx == "tanh" else ref.gelu_erf
    np.testing.assert_allclose(y, fn64(x), rtol=1e-6, atol=1e-6)
    dx = _C.gelu_bwd(x, np.ones_like(x), approx)
    np.testing.assert_allclose(dx, [0, 0, 0, 0.5, 1, 1, 1], atol=1e-5)
    s = F.silu(x).data
    assert np.all(np.isfinite(s))
    assert np.all(np.isfinite(_C.silu_bwd(x, np.ones_like(x))))


def test_activation_negative_tails_relative(path):
    """Tiny outputs in the negative tails keep their relative accuracy (no 1 + tanh cancellation)."""
    x = np.linspace(-9, -3, 61).astype(np.float32)
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)
    s2 = 1 / (1 + np.exp(-2 * u))  # 0.5 (1 + tanh u) without cancellation
    np.testing.assert_allclose(_C.gelu_fwd(x), x64 * s2, rtol=2e-5)
    from math import erfc
    phi = np.array([0.5 * erfc(-v / np.sqrt(2)) for v in x64])
    np.testing.assert_allclose(_C.gelu_fwd(x, "none"), x64 * phi, rtol=2e-5)
    np.testing.assert_allclose(_C.silu_fwd(x), x64 / (1 + np.exp(-x64)), rtol=2e-6)


def test_activation_bad_inputs(rng):
    x = f32(rng, 3)
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none'"):
        F.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match="approximate"):
        _C.gelu_fwd(x, "fast")
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.relu_fwd(x.astype(np.float64))
    with pytest.raises(ValueError, match="grad must have the shape of x"):
        _C.silu_bwd(x, f32(rng, 4))
    with pytest.raises(TypeError, match="got dtype complex"):
        F.relu(np.ones(3, np.complex64))


# ------------------------------------------------------------------- norms

@pytest.mark.parametrize("D", [1, 7, 65])
@pytest.mark.parametrize("N", [0, 1, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(rng, N, D, affine, path):
    x = f32(rng, N, D) * 2 + 0.5
    w = f32(rng, D) if affine else None
    b = f32(rng, D) if affine else None
    arrays = [x] + ([w, b] if affine else [])
    fn = (lambda x_, w_, b_: F.layer_norm(x_, w_, b_)) if affine else (lambda x_: F.layer_norm(x_))
    fn64 = (lambda x_, w_, b_: ref.layer_norm(x_, w_, b_)) if affine else (lambda x_: ref.layer_norm(x_))
    G = rng.standard_normal((N, D))
    copies = [a.copy() for a in arrays]
    out, grads = grads_of(fn, arrays, G)
    np.testing.assert_allclose(out.data, fn64(*[a.astype(np.float64) for a in arrays]), rtol=1e-5, atol=1e-5)
    for i, g in enumerate(grads):
        assert g.shape == arrays[i].shape
        check_grad(fn64, arrays, i, g, G)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


def test_layer_norm_saved_stats_and_leading_axes(rng, path):
    x = f32(rng, 2, 3, 9) + 100.0   # a large common offset must not cost accuracy
    w, b = f32(rng, 9), f32(rng, 9)
    y, mean, rstd = _C.layer_norm_fwd(x, w, b, 1e-5)
    assert mean.shape == (2, 3) and rstd.shape == (2, 3)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x64.var(-1) + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(y, ref.layer_norm(x64, w, b), rtol=1e-4, atol=1e-4)


def test_layer_norm_needs_input_grad(rng):
    x = Tensor(f32(rng, 4, 5), requires_grad=True)
    w = Tensor(f32(rng, 5), requires_grad=False)
    b = Tensor(f32(rng, 5), requires_grad=True)
    F.layer_norm(x, w, b).backward(np.ones((4, 5), np.float32))
    assert w.grad is None and x.grad is not None
    np.testing.assert_allclose(b.grad, np.full(5, 4.0))
    dx, dw, db = _C.layer_norm_bwd(x.data, w.data, *_C.layer_norm_fwd(x.data, w.data)[1:],
                                   np.ones((4, 5), np.float32), need_x=False, need_bias=False)
    assert dx is None and db is None and dw.shape == (5,)


@pytest.mark.parametrize("D", [1, 7, 65])
@pytest.mark.parametrize("N", [0, 1, 3])
def test_rms_norm(rng, N, D, path):
    x, w = f32(rng, N, D), f32(rng, D)
    G = rng.standard_normal((N, D))
    out, (gx, gw) = grads_of(lambda a, b: F.rms_norm(a, b), [x, w], G)
    fn64 = lambda a, b: ref.rms_norm(a, b)  # noqa: E731
    np.testing.assert_allclose(out.data, fn64(x, w), rtol=1e-5, atol=1e-5)
    check_grad(fn64, [x, w], 0, gx, G)
    check_grad(fn64, [x, w], 1, gw, G)
    out2, (gx2,) = grads_of(lambda a: F.rms_norm(a, eps=1e-3), [x], G)
    np.testing.assert_allclose(out2.data, ref.rms_norm(x, eps=1e-3), rtol=1e-5, atol=1e-5)
    check_grad(lambda a: ref.rms_norm(a, eps=1e-3), [x], 0, gx2, G)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_deterministic_threads(rng, threads, kind, path):
    x, w, b = f32(rng, 600, 65), f32(rng, 65), f32(rng, 65)  # above the parallel thresholds
    g = f32(rng, 600, 65)

    def run():
        if kind == "layer":
            y, mean, rstd = _C.layer_norm_fwd(x, w, b)
            return (y,) + _C.layer_norm_bwd(x, w, mean, rstd, g)
        y, rstd = _C.rms_norm_fwd(x, w)
        return (y,) + _C.rms_norm_bwd(x, w, rstd, g)

    r1, r2 = threads(1, run), threads(2, run)
    for u, v in zip(r1, r2):
        assert u.tobytes() == v.tobytes()
    # the chunked dweight is still the column sum
    xh = ref.layer_norm(x) if kind == "layer" else ref.rms_norm(x)
    np.testing.assert_allclose(r1[2], (g * xh).sum(0), rtol=1e-4, atol=1e-4)


def test_norm_bad_inputs(rng):
    x = f32(rng, 4, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(D,\)"):
        F.layer_norm(x, f32(rng, 4))
    with pytest.raises(ValueError, match="bias"):
        _C.layer_norm_fwd(x, None, f32(rng, 6))
    with pytest.raises(ValueError, match="eps must be"):
        _C.layer_norm_fwd(x, None, None, -1.0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        _C.rms_norm_fwd(np.array(1.0, np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.rms_norm_fwd(x.astype(np.float16))
    y, mean, rstd = _C.layer_norm_fwd(x)
    with pytest.raises(ValueError, match="rstd must have the leading shape of x"):
        _C.layer_norm_bwd(x, None, mean, rstd[:3], x)
    with pytest.raises(ValueError, match="grad must have the shape of x"):
        _C.rms_norm_bwd(x, None, rstd, x[:2])


# ----------------------------------------------------------------- softmax

@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax(rng, log, n, axis, path):
    x = f32(rng, 3, n) * 3
    fn = F.log_softmax if log else F.softmax
    fn64 = ref.log_softmax if log else ref.softmax
    G = rng.standard_normal(x.shape)
    x0 = x.copy()
    out, (gx,) = grads_of(lambda t: fn(t, axis=axis), [x], G)
    np.testing.assert_allclose(out.data, fn64(x, axis=axis), rtol=1e-5, atol=1e-6)
    check_grad(lambda a: fn64(a, axis=axis), [x], 0, gx, G)
    np.testing.assert_array_equal(x, x0)


def test_softmax_extreme_logits(path):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], np.float32)
    y = F.softmax(x).data
    np.testing.assert_allclose(y, ref.softmax(x), atol=1e-7)
    ls = F.log_softmax(x).data
    np.testing.assert_allclose(ls, ref.log_softmax(x), rtol=1e-6)
    assert np.isfinite(ls).all()


def test_softmax_bad_inputs(rng):
    x = f32(rng, 2, 3)
    with pytest.raises(ValueError, match="axis must be in"):
        F.softmax(x, axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        F.softmax(x, axis=None)
    with pytest.raises(ValueError, match="0-d"):
        F.softmax(np.float32(1.0))
    with pytest.raises(ValueError, match="grad must have the shape of y"):
        _C.softmax_bwd(x, x.T.copy())


# ----------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("N", [0, 1, 7, 65])
@pytest.mark.parametrize("V", [1, 7, 65])
def test_cross_entropy(rng, N, V, path):
    x = f32(rng, N, V) * 2
    t = rng.integers(0, V, N)
    if N > 2:
        t[::3] = -100
    G = np.array(rng.standard_normal())
    x0, t0 = x.copy(), t.copy()
    out, (gx,) = grads_of(lambda a: F.cross_entropy(a, t), [x], G)
    assert out.shape == ()
    np.testing.assert_allclose(out.item(), ref.cross_entropy(x, t), rtol=1e-5, atol=1e-6)
    if N <= 7:
        check_grad(lambda a: ref.cross_entropy(a, t), [x], 0, gx, G)
    else:  # closed form of the gradient, cheaper than finite differences
        keep = t != -100
        p = ref.softmax(x)
        p[np.arange(N)[keep], t[keep]] -= 1
        want = np.where(keep[:, None], p, 0) / max(keep.sum(), 1) * G
        np.testing.assert_allclose(gx, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)


def test_cross_entropy_ignore_index_and_all_ignored(rng):
    x = f32(rng, 4, 5)
    t = np.array([1, 7, 7, 0])
    loss7 = F.cross_entropy(x, t, ignore_index=7)
    np.testing.assert_allclose(loss7.item(), ref.cross_entropy(x, t, ignore_index=7), rtol=1e-6)
    xt = Tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, np.full(4, -100))
    assert loss.item() == 0.0
    loss.backward()
    assert np.array_equal(xt.grad, np.zeros_like(x))


def test_cross_entropy_extreme_logits_and_leading_axes(rng, path):
    x = (np.sign(f32(rng, 2, 3, 6)) * 1e4).astype(np.float32)
    t = rng.integers(0, 6, (2, 3))
    xt = Tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, t)
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(xt.grad).all()
    assert xt.grad.shape == x.shape
    np.testing.assert_allclose(loss.item(), ref.cross_entropy(x, t), rtol=1e-6)
    s, lse, count = _C.cross_entropy_fwd(x.reshape(6, 6), t.reshape(-1))
    assert count == 6 and np.isfinite(lse).all()


def test_cross_entropy_bad_inputs(rng):
    x = f32(rng, 3, 5)
    with pytest.raises(IndexError, match=r"= 5 is out of range for V = 5"):
        F.cross_entropy(x, np.array([0, 5, 1]))
    with pytest.raises(IndexError, match=r"= -1 is out of range for V = 5"):
        F.cross_entropy(x, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="targets must have shape"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer dtype"):
        F.cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="logits must have dtype float32"):
        _C.cross_entropy_fwd(x.astype(np.float64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, V\)"):
        _C.cross_entropy_fwd(x[0], np.array([0]))
    with pytest.raises(TypeError, match="ignore_index"):
        F.cross_entropy(x, np.array([0, 1, 2]), ignore_index=None)


# ---------------------------------------------------------------- embedding

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("D", [1, 7, 65])
def test_embedding(rng, n, D):
    V = 11
    W = f32(rng, V, D)
    ids = rng.integers(0, V, (2, n))
    ids[:, ::2] = 3  # repeated ids
    G = rng.standard_normal((2, n, D))
    W0, ids0 = W.copy(), ids.copy()
    out, (gw,) = grads_of(lambda w: F.embedding(ids, w), [W], G)
    assert out.shape == (2, n, D)
    np.testing.assert_array_equal(out.data, ref.embedding(ids, W))
    np.testing.assert_allclose(gw, ref.embedding_grad(ids, G, V), rtol=1e-5, atol=1e-5)
    if n <= 7 and D <= 7:
        check_grad(lambda w: ref.embedding(ids, w), [W], 0, gw, G)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(ids, ids0)


def test_embedding_int_dtypes(rng):
    W = f32(rng, 5, 3)
    for dt in (np.int8, np.int32, np.uint16, np.int64):
        ids = np.array([[4, 0], [2, 2]], dtype=dt)
        np.testing.assert_array_equal(F.embedding(ids, W).data, W[ids.astype(np.int64)])


def test_rows_and_loss_deterministic(rng, threads, path):
    """softmax, log-softmax (fwd/bwd), activations and cross-entropy: 1 vs 2 threads bit-identical."""
    x, g = f32(rng, 600, 130) * 4, f32(rng, 600, 130)  # above the parallel thresholds
    t = rng.integers(0, 130, 600)
    t[::7] = -100

    def run():
        y, ls = _C.softmax_fwd(x), _C.log_softmax_fwd(x)
        loss, lse, cnt = _C.cross_entropy_fwd(x, t)
        return (y, ls, _C.softmax_bwd(y, g), _C.log_softmax_bwd(ls, g), np.float32(loss), lse,
                _C.cross_entropy_bwd(x, t, lse, 0.5, cnt), _C.gelu_fwd(x), _C.gelu_bwd(x, g, "none"),
                _C.sum_rows(g), _C.binary_bwd(x, np.array(0.7, np.float32), g, "div")[1])

    for u, v in zip(threads(1, run), threads(2, run)):
        assert u.tobytes() == v.tobytes()


def test_embedding_backward_deterministic(rng, threads):
    V, D, n = 50, 96, 4000
    ids = rng.integers(0, V, n)
    g = f32(rng, n, D)
    r1 = threads(1, _C.embedding_bwd, ids, g, V)
    r2 = threads(2, _C.embedding_bwd, ids, g, V)
    assert r1.tobytes() == r2.tobytes()
    np.testing.assert_allclose(r1, ref.embedding_grad(ids, g, V), rtol=1e-4, atol=1e-4)


def test_embedding_bad_inputs(rng):
    W = f32(rng, 5, 3)
    with pytest.raises(IndexError, match=r"ids contains 5 .*V = 5"):
        F.embedding(np.array([1, 5]), W)
    with pytest.raises(IndexError, match=r"ids contains -2 .*V = 5"):
        F.embedding(np.array([-2]), W)
    with pytest.raises(TypeError, match="integer dtype"):
        F.embedding(np.array([1.0]), W)
    with pytest.raises(TypeError, match="Tensor"):
        F.embedding(Tensor([1.0]), W)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, D\)"):
        _C.embedding_fwd(np.array([1]), W[0])
    with pytest.raises(ValueError, match="grad must have shape ids.shape"):
        _C.embedding_bwd(np.array([1, 2]), f32(rng, 3, 3), 5)
    with pytest.raises(IndexError, match="V = 2"):
        _C.embedding_bwd(np.array([1, 2]), f32(rng, 2, 3), 2)


# ------------------------------------------------------------------ dropout

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dropout_forward_backward(rng, n, p):
    x = f32(rng, 3, n)
    x0 = x.copy()
    mask = _C.dropout_mask(x.size, p, 1234).reshape(x.shape)
    xt = Tensor(x, requires_grad=True)
    y = F.dropout(xt, p, seed=1234)
    np.testing.assert_allclose(y.data, ref.dropout(x, mask, p), rtol=1e-6)
    G = f32(rng, 3, n)
    y.backward(G)
    np.testing.assert_allclose(xt.grad, ref.dropout(G, mask, p), rtol=1e-6)
    check_grad(lambda a: ref.dropout(a, mask, p), [x], 0, xt.grad, G)
    np.testing.assert_array_equal(x, x0)


def test_dropout_mask_threads_seeds_rate(threads):
    n, p = 200_000, 0.25
    m1 = threads(1, _C.dropout_mask, n, p, 42)
    m2 = threads(2, _C.dropout_mask, n, p, 42)
    assert np.array_equal(m1, m2)
    x = np.ones(n, np.float32)
    y1 = threads(1, _C.dropout_fwd, x, p, 42)
    y2 = threads(2, _C.dropout_fwd, x, p, 42)
    assert y1.tobytes() == y2.tobytes()
    np.testing.assert_array_equal(y1 != 0, m1)
    # keep rate within 5 standard deviations of 1 - p
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(m1.mean() - (1 - p)) < 5 * sd
    # different (even adjacent) seeds give different, uncorrelated masks
    m3 = _C.dropout_mask(n, p, 43)
    assert not np.array_equal(m1, m3)
    both = (m1 & m3).mean()
    assert abs(both - (1 - p) ** 2) < 5 * np.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)
    # the prefix of a longer mask is the mask of the shorter tensor (flat index based)
    assert np.array_equal(_C.dropout_mask(1000, p, 42), m1[:1000])
    assert _C.dropout_mask(1000, p, 2 ** 64 - 1).shape == (1000,)


def test_dropout_identity_cases(rng):
    x = Tensor(f32(rng, 4, 5), requires_grad=True)
    assert F.dropout(x, 0.0, seed=1) is x
    assert F.dropout(x, 0.5, seed=1, training=False) is x
    y = F.dropout(x.data, 0.5, seed=1, training=False)
    np.testing.assert_array_equal(y.data, x.data)


def test_dropout_bad_inputs(rng):
    x = f32(rng, 4)
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            F.dropout(x, p, seed=0)
        with pytest.raises(ValueError, match="p must be in"):
            _C.dropout_fwd(x, p, 0)
    with pytest.raises(ValueError, match="seed must be"):
        F.dropout(x, 0.5, seed=-1)
    with pytest.raises(ValueError, match="seed must be"):
        _C.dropout_fwd(x, 0.5, 2 ** 64)
    with pytest.raises(TypeError, match="seed must be an int"):
        F.dropout(x, 0.5, seed=1.5)
    with pytest.raises(TypeError, match="seed must be an int"):
        _C.dropout_fwd(x, 0.5, "1")
    with pytest.raises(TypeError, match="p must be"):
        F.dropout(x, "0.5", seed=1)


def test_cross_entropy_large_logits_gradient_precise(path):
    """Near-tied logits around +-1e4: the gradient keeps float32 accuracy
    (the backward does not trust the rounded lse when |lse| is large)."""
    x = np.array([[1e4, 1e4 - 1, 1e4 - 3, -1e4], [-1e4, -1e4 + 0.5, -1e4 + 2, -1e4 + 2]], np.float32)
    t = np.array([1, 0])
    xt = Tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, t)
    loss.backward()
    p = ref.softmax(x)
    p[[0, 1], t] -= 1
    np.testing.assert_allclose(xt.grad, p / 2, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(loss.item(), ref.cross_entropy(x, t), rtol=1e-6)


# ----------------------------------------------------------------- misc

def test_zero_size_dims(rng):
    """Zero-size axes anywhere: empty results or zeros, never a crash or NaN."""
    # cross-entropy with V = 0 and every row ignored; N = 0
    xt = Tensor(np.zeros((3, 0), np.float32), requires_grad=True)
    loss = F.cross_entropy(xt, np.full(3, -100))
    loss.backward()
    assert loss.item() == 0.0 and xt.grad.shape == (3, 0)
    with pytest.raises(IndexError, match="V = 0"):
        F.cross_entropy(np.zeros((2, 0), np.float32), np.array([0, -100]))
    # embedding with D = 0, and with no ids
    Wt = Tensor(np.zeros((5, 0), np.float32), requires_grad=True)
    out = F.embedding(np.array([[1, 4]]), Wt)
    out.backward(np.zeros((1, 2, 0), np.float32))
    assert out.shape == (1, 2, 0) and Wt.grad.shape == (5, 0)
    W = Tensor(f32(rng, 5, 3), requires_grad=True)
    e = F.embedding(np.zeros((0, 4), np.int64), W)
    e.backward(np.zeros((0, 4, 3), np.float32))
    assert e.shape == (0, 4, 3) and np.array_equal(W.grad, np.zeros((5, 3)))
    # norms with D = 0 rows and with N = 0 rows: weight gradients are zeros
    for shape in [(4, 0), (0, 6)]:
        D = shape[1]
        x = Tensor(np.zeros(shape, np.float32), requires_grad=True)
        w, b = Tensor(np.ones(D, np.float32), requires_grad=True), Tensor(np.zeros(D, np.float32), requires_grad=True)
        (F.layer_norm(x, w, b) * 1.0).backward(np.ones(shape, np.float32))
        assert x.grad.shape == shape and np.array_equal(w.grad, np.zeros(D)) and np.array_equal(b.grad, np.zeros(D))
        F.rms_norm(x, w).backward(np.ones(shape, np.float32))
        assert x.grad.shape == shape
    # broadcast binary with an empty leading axis: the vector's gradient is zeros
    a, v = Tensor(np.zeros((0, 3), np.float32), requires_grad=True), Tensor(f32(rng, 3), requires_grad=True)
    (a * v).backward(np.zeros((0, 3), np.float32))
    assert np.array_equal(v.grad, np.zeros(3))
    # dropout and softmax of empty tensors
    d = Tensor(np.zeros((0, 5), np.float32), requires_grad=True)
    F.dropout(d, 0.5, seed=1).backward(np.zeros((0, 5), np.float32))
    assert d.grad.shape == (0, 5)
    assert F.softmax(np.zeros((2, 0), np.float32)).shape == (2, 0)


def test_simd_and_portable_agree(rng):
    if not relpos.config()["cpu_avx2_fma"]:
        pytest.skip("this CPU or build has no AVX2/FMA path")
    x = f32(rng, 37, 129) * 3
    g = f32(rng, 37, 129)
    t = rng.integers(0, 129, 37)
    calls = [lambda: _C.gelu_fwd(x), lambda: _C.gelu_fwd(x, "none"), lambda: _C.silu_fwd(x),
             lambda: _C.gelu_bwd(x, g), lambda: _C.gelu_bwd(x, g, "none"), lambda: _C.silu_bwd(x, g),
             lambda: _C.softmax_fwd(x), lambda: _C.log_softmax_fwd(x),
             lambda: _C.cross_entropy_fwd(x, t)[1]]
    for call in calls:
        _C.force_portable(True)
        try:
            a = call()
        finally:
            _C.force_portable(False)
        b = call()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("V", [1, 16, 37, 256])
def test_cross_entropy_gradient_simd_gives_the_portable_bits(rng, V):
    """The gradient's exp(x - lse) * scale: the SIMD path (the hand-written 16-lane exp
    where the CPU has AVX-512) and the portable one are the same IEEE operations, so
    the same bits; a NaN is a NaN (its sign differs between the forms). Rows with
    |lse| >= 64, which recompute their log-sum with the forward's exp sum (whose SIMD
    form fuses the exp's last product into the sum), are not part of this test."""
    if not relpos.config()["cpu_avx2_fma"]:
        pytest.skip("this CPU or build has no AVX2/FMA path")
    N = 40
    x = f32(rng, N, V) * 4
    x[5, 0] = np.nan
    x[6, -1] = np.inf
    x[7, :] = -np.inf
    t = rng.integers(0, V, N)
    t[9] = -100                        # ignored
    _, lse, count = _C.cross_entropy_fwd(x, t)
    want = [None, None]
    for i, portable in enumerate((True, False)):
        _C.force_portable(portable)
        try:
            want[i] = _C.cross_entropy_bwd(x, t, lse, 0.7, count)
        finally:
            _C.force_portable(False)
    nan = np.isnan(want[0])
    assert np.array_equal(np.isnan(want[1]), nan)
    assert np.array_equal(want[0].view(np.uint32)[~nan], want[1].view(np.uint32)[~nan])
    assert nan[5].all() and not nan[0].any()


def test_out_in_place_and_overlap(rng):
    x = f32(rng, 6, 8)
    want = ref.softmax(x)
    y = x.copy()
    assert _C.softmax_fwd(y, out=y) is y
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-7)
    ls = _C.log_softmax_fwd(x)
    g = f32(rng, 6, 8)
    want = g - np.exp(ls.astype(np.float64)) * g.sum(-1, keepdims=True)
    g2 = g.copy()
    _C.log_softmax_bwd(ls, g2, out=g2)       # in place on grad
    np.testing.assert_allclose(g2, want, rtol=1e-5, atol=1e-5)
    z = x.copy()
    _C.gelu_fwd(z, out=z)
    np.testing.assert_allclose(z, ref.gelu_tanh(x), rtol=2e-6, atol=2e-6)
    big = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        _C.relu_fwd(big[:48].reshape(6, 8), out=big[8:56].reshape(6, 8))
    W = f32(rng, 4, 3)
    with pytest.raises(ValueError, match="out must not overlap weight"):
        _C.embedding_fwd(np.array([0]), W, out=W[1:2])
    with pytest.raises(ValueError, match="out.*writeable"):
        ro = np.zeros((6, 8), np.float32)
        ro.flags.writeable = False
        _C.relu_fwd(x, out=ro)


def test_no_reference_leaks(rng):
    """Every bridge function gives back the references it takes."""
    import sys
    x, g = f32(rng, 3, 5), f32(rng, 3, 5)
    w, b = f32(rng, 5), f32(rng, 5)
    t = np.array([0, 4, -100])
    ids = np.array([[1, 2], [0, 1]])
    y, mean, rstd = _C.layer_norm_fwd(x, w, b)
    _, rr = _C.rms_norm_fwd(x, w)
    loss, lse, cnt = _C.cross_entropy_fwd(x, t)
    calls = [
        lambda: _C.binary_fwd(x, w, "mul"), lambda: _C.binary_bwd(x, w, g, "div"),
        lambda: _C.scale(x, 2.0), lambda: _C.bias_add(x, b), lambda: _C.sum_rows(x),
        lambda: _C.gelu_fwd(x), lambda: _C.gelu_bwd(x, g, "none"), lambda: _C.silu_bwd(x, g),
        lambda: _C.layer_norm_fwd(x, w, b), lambda: _C.layer_norm_bwd(x, w, mean, rstd, g),
        lambda: _C.rms_norm_fwd(x, w), lambda: _C.rms_norm_bwd(x, w, rr, g),
        lambda: _C.softmax_fwd(x), lambda: _C.log_softmax_bwd(x, g),
        lambda: _C.cross_entropy_fwd(x, t), lambda: _C.cross_entropy_bwd(x, t, lse, 1.0, cnt),
        lambda: _C.embedding_fwd(ids, x), lambda: _C.embedding_bwd(ids, f32(rng, 2, 2, 5), 3),
        lambda: _C.dropout_fwd(x, 0.5, 3), lambda: _C.dropout_mask(10, 0.5, 3),
        # error paths too
        lambda: _C.binary_fwd(x, f32(rng, 4)), lambda: _C.layer_norm_fwd(x, w[:4]),
        lambda: _C.cross_entropy_fwd(x, np.array([0, 9, 1])), lambda: _C.embedding_fwd(np.array([7]), x),
        lambda: _C.layer_norm_bwd(x, w, mean, rstd[:2], g),
    ]
    arrays = [x, g, w, b, t, ids, mean, rstd, lse, rr]
    import tracemalloc
    tracemalloc.start()
    try:
        for call in calls:  # outputs that are never freed would grow traced memory
            for _ in range(3):
                try:
                    call()
                except (ValueError, IndexError, TypeError):
                    pass
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(200):
                try:
                    call()
                except (ValueError, IndexError, TypeError):
                    pass
            assert tracemalloc.get_traced_memory()[0] - base < 20_000
    finally:
        tracemalloc.stop()
    for call in calls:
        try:
            call()
        except (ValueError, IndexError, TypeError):
            pass
        before = [sys.getrefcount(a) for a in arrays]
        for _ in range(50):
            try:
                call()
            except (ValueError, IndexError, TypeError):
                pass
        assert [sys.getrefcount(a) for a in arrays] == before


def test_numpy_integer_seed_and_messages(rng):
    x = f32(rng, 10)
    np.testing.assert_array_equal(_C.dropout_fwd(x, 0.5, np.uint64(7)), _C.dropout_fwd(x, 0.5, 7))
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0; got -1.0"):
        _C.layer_norm_fwd(x.reshape(2, 5), None, None, -1.0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\); got 1.5"):
        _C.dropout_fwd(x, 1.5, 0)
    with pytest.raises(TypeError, match="seed must be an int"):
        _C.dropout_fwd(x, 0.5, True)

def test_all_names_exported():
    want = {"add", "sub", "mul", "div", "gelu", "relu", "silu", "layer_norm", "rms_norm",
            "softmax", "log_softmax", "cross_entropy", "embedding", "dropout", "exp", "log", "tanh"}
    assert want <= set(F.__all__)
    from relpos._fn import ops
    assert want <= set(ops.__all__)


def test_chain_backward(rng):
    """A small network made of these ops: gradient of the input vs finite differences."""
    x = f32(rng, 3, 6)
    w, b = f32(rng, 6), f32(rng, 6)
    t = np.array([0, 5, 2])

    def fn(x_):
        h = F.layer_norm(x_, w, b)
        h = F.gelu(h) * 0.5 + h
        return F.cross_entropy(F.softmax(h) * 3.0, t)

    def fn64(x_):
        h = ref.layer_norm(x_, w, b)
        h = ref.gelu_tanh(h) * 0.5 + h
        return ref.cross_entropy(ref.softmax(h) * 3.0, t)

    xt = Tensor(x, requires_grad=True)
    loss = fn(xt)
    np.testing.assert_allclose(loss.item(), fn64(x.astype(np.float64)), rtol=1e-5)
    loss.backward()
    check_grad(lambda a: np.asarray(fn64(a)), [x], 0, xt.grad, np.array(1.0))


# ------------------------------------------------------------------- torch

@pytest.mark.parametrize("approx", ["tanh", "none"])
def test_torch_gelu(rng, approx):
    torch = pytest.importorskip("torch")
    x = f32(rng, 4, 33) * 3
    G = f32(rng, 4, 33)
    xt = Tensor(x, requires_grad=True)
    F.gelu(xt, approximate=approx).backward(G)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx, approximate=approx)
    ty.backward(torch.tensor(G))
    np.testing.assert_allclose(F.gelu(x, approximate=approx).data, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_torch_layer_norm(rng):
    torch = pytest.importorskip("torch")
    x, w, b = f32(rng, 2, 5, 33) + 2, f32(rng, 33), f32(rng, 33)
    G = f32(rng, 2, 5, 33)
    ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    y = F.layer_norm(*ts, eps=1e-5)
    y.backward(G)
    tt = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    ty = torch.nn.functional.layer_norm(tt[0], (33,), tt[1], tt[2], eps=1e-5)
    ty.backward(torch.tensor(G))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ts, tt):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_torch_other_ops(rng):
    """softmax, log_softmax, rms_norm, silu, relu, embedding against torch (values and gradients)."""
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    x, G = f32(rng, 3, 17) * 2, f32(rng, 3, 17)
    w = f32(rng, 17)
    cases = [(lambda a: F.softmax(a, axis=0), lambda a: torch.softmax(a, 0)),
             (F.log_softmax, lambda a: torch.log_softmax(a, -1)),
             (lambda a: F.rms_norm(a, w, eps=1e-6), lambda a: tF.rms_norm(a, (17,), torch.tensor(w), eps=1e-6)),
             (F.silu, tF.silu), (F.relu, tF.relu)]
    for mine, theirs in cases:
        t = Tensor(x, requires_grad=True)
        y = mine(t)
        y.backward(G)
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        ty.backward(torch.tensor(G))
        np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    W = f32(rng, 9, 4)
    ids = rng.integers(0, 9, (5, 3))
    Gw = f32(rng, 5, 3, 4)
    Wt = Tensor(W, requires_grad=True)
    F.embedding(ids, Wt).backward(Gw)
    tW = torch.tensor(W, requires_grad=True)
    tF.embedding(torch.tensor(ids), tW).backward(torch.tensor(Gw))
    np.testing.assert_allclose(Wt.grad, tW.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_torch_cross_entropy(rng):
    torch = pytest.importorskip("torch")
    x = f32(rng, 9, 13) * 4
    x[0, 0] = 1e4
    t = rng.integers(0, 13, 9)
    t[[2, 5]] = -100
    xt = Tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, t)
    loss.backward()
    tx = torch.tensor(x, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tx, torch.tensor(t), ignore_index=-100)
    tl.backward()
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-5)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp  # noqa: E402


def _reduce_to(g, shape):
    """float64 twin of unbroadcasting: sum g down to shape."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(axis=i, keepdims=True)
    return g


@settings(max_examples=60, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=5),
       op=st.sampled_from(list(OPS)), seed=st.integers(0, 2 ** 32 - 1))
def test_binary_broadcast_property(shapes, op, seed):
    """Any NumPy-broadcastable pair: the value and both gradients match float64 NumPy."""
    rng = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    a = f32(rng, *sa, lo=0.5)
    b = f32(rng, *sb, lo=0.5)
    G = rng.standard_normal(shapes.result_shape)
    out, (ga, gb) = grads_of(OPS[op], [np.asarray(a, np.float32), np.asarray(b, np.float32)], G)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.data, ref.binary(op, a64, b64), rtol=1e-6, atol=1e-6)
    if op in ("add", "sub"):
        wa, wb = G, (G if op == "add" else -G)
    elif op == "mul":
        wa, wb = G * b64, G * a64
    else:
        wa, wb = G / b64, -G * a64 / b64 ** 2
    np.testing.assert_allclose(ga, _reduce_to(np.broadcast_to(wa, G.shape), sa), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, _reduce_to(np.broadcast_to(wb, G.shape), sb), rtol=1e-4, atol=1e-4)


# the threads fixture restores the thread count itself after each call
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=st.integers(0, 2 ** 32 - 1))
def test_row_ops_property(shape, scale, seed, threads):
    """LayerNorm, RMSNorm, softmax, log-softmax on random shapes and scales:
    match float64, and are bit-identical with 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    D = shape[-1]
    w, b = f32(rng, D), f32(rng, D)
    for fn, fn64, tol in [(lambda v: _C.layer_norm_fwd(v, w, b)[0], lambda v: ref.layer_norm(v, w, b), 2e-4),
                          (lambda v: _C.rms_norm_fwd(v, w)[0], lambda v: ref.rms_norm(v, w), 2e-5),
                          (_C.softmax_fwd, ref.softmax, 1e-5), (_C.log_softmax_fwd, ref.log_softmax, 1e-5)]:
        y1, y2 = threads(1, fn, x), threads(2, fn, x)
        assert y1.tobytes() == y2.tobytes()
        np.testing.assert_allclose(y1, fn64(x.astype(np.float64)), rtol=tol, atol=tol)


def test_same_tensor_both_sides(rng):
    x = f32(rng, 3, 4)
    t = Tensor(x, requires_grad=True)
    (t * t).backward(np.ones((3, 4), np.float32))
    np.testing.assert_allclose(t.grad, 2 * x, rtol=1e-6)
    t2 = Tensor(x, requires_grad=True)
    F.sub(t2, t2).backward(np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(t2.grad, np.zeros_like(x))
