"""Hostile values: every kernel's *results* against its float64 twin (issue 12).

tests/test_fuzz_entrypoints.py checks that bad input never crashes; this file
checks that the answer stays right when the values are hostile. For each `_C`
entry point of the areas gemm, ops, optim, posenc, CoPE and blocks (attention,
FIRE and the Toeplitz biases are covered by the attention area's tests) and for
the public ops of relpos.functional, hypothesis draws small arrays of ordinary
values and overwrites some elements with NaN, +-inf, +-0, denormals, huge
magnitudes (+-1e30, +-3e38, +-FLT_MAX) and values around the kernel's special
points (exp overflow / underflow edges, GELU / sigmoid / erf saturation, ...).
Each example runs on the SIMD path and on the portable path
(`relpos._C.force_portable(True)`), and every output element is judged against
the float64 twin in tests/reference.py with PyTorch's semantics as the rule:

* the twin gives NaN      -> the kernel must give NaN (NaN positions match exactly);
* else, if a finite intermediate term of the computation (a product, a partial
  sum, a square, ...) exceeds the float32 range, float32 arithmetic cannot
  promise anything (torch gives inf or NaN there too): any result;
* the twin gives +-inf    -> the kernel must give the same infinity;
* the twin gives a finite value v, with an error scale s (the magnitude of the
  terms the float32 computation adds or multiplies, e.g. sum |a_k b_k| for a
  dot product; |v| when the result is one correctly rounded operation):
    - if v itself is beyond the float32 range: the infinity of its sign;
    - else a finite result within rtol * max(s, |v|) + atol of v.

Where PyTorch is installed, test_twins_follow_torch checks the twins'
special-value semantics against torch itself (relu(nan) = nan, gelu(-inf) =
nan, softmax of a row with NaN or +inf = NaN row, cross-entropy with a NaN
logit = NaN, AdamW with a NaN gradient = NaN parameter, ...).

    python -m pytest tests/test_hostile_values.py -q        (-s prints the counts)
RELPOS_HOSTILE_EXAMPLES overrides the 200 examples per entry point.
"""
import math
import os
from collections import Counter

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relpos._C as C

# the twins compute with the hostile values in float64: NumPy's warnings are expected
pytestmark = [pytest.mark.hostile, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

N_EXAMPLES = int(os.environ.get("RELPOS_HOSTILE_EXAMPLES", "200"))
HYP = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
               suppress_health_check=list(HealthCheck))

FMAX = float(np.finfo(np.float32).max)
NAN, INF = float("nan"), float("inf")
# hostile values for every kernel
GENERAL = (NAN, INF, -INF, 0.0, -0.0, 1e-40, -1e-40, 1.4e-45, -1.4e-45, 1.1754944e-38,
           1e30, -1e30, 3e38, -3e38, FMAX, -FMAX)
# around the kernels' special points
EXP_EDGES = (88.72, 88.73, 89.0, 90.0, -87.33, -87.34, -103.9, -104.0, -104.5, -150.0, 104.0, 200.0, -200.0)
GELU_EDGES = (5.5, -5.5, 9.0, -9.0, 10.0, -10.0, 15.0, -15.0, 44.0, -44.0, 45.0, -45.0,
              7e12, -7e12, 1e13, -1e13, 1.9e19, -1.9e19)
SIGMOID_EDGES = (17.0, -17.0, 17.5, -17.5, 80.0, -80.0, 88.0, -88.0, 104.0, -104.0)
ERF_EDGES = (4.0, -4.0, 6.0, -6.0, 9.2, -9.2, 13.0, -13.0, 13.2, -13.2, 14.0, -14.0, 20.0, -20.0)
SQUARE_EDGES = (1e19, -1e19, 2e19, -2e19, 1e-20, -1e-20, 1e-23, 1.8e19)
HUGE_INTS = (2 ** 40, -(2 ** 40), 2 ** 60, -(2 ** 60))
# the error scale of a float32 intermediate that may be denormal (absolute error
# 2^-149 / rtol): added where such a value is multiplied by a large factor
DENORMAL = 1e-39

# entry points of the attention area (attention*, bias.c, fire.c): their hostile-value
# checks belong to that area's tests
OTHER_AREA = {"attention_fwd", "attention_bwd", "attention_mat_fwd", "attention_mat_bwd", "bias_alibi_fwd",
              "bias_alibi_bwd", "bias_t5_fwd", "bias_t5_bwd", "t5_bucket", "bias_kerple_fwd", "bias_kerple_bwd",
              "bias_sandwich_fwd", "fire_fwd", "fire_bwd"}
CONFIG = {"config", "get_num_threads", "set_num_threads", "force_portable", "gemm_kernel", "fma_peak_gflops",
          "back_off"}

COUNTS = Counter()
SHOW = int(os.environ.get("RELPOS_HOSTILE_SHOW", "48"))   # inputs up to this size are shown in a failure


# ---------------------------------------------------------------- drawing hostile arrays

def uniform(draw, shape, lo, hi):
    """Ordinary values for the elements hypothesis does not replace: a cheap
    hash of a drawn seed and the flat index (a Generator costs ~1 ms to seed)."""
    n = int(np.prod(shape))
    seed = np.uint64(draw(st.integers(0, 2 ** 32 - 1)) * 2 + 1)
    with np.errstate(over="ignore"):
        h = (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (seed * np.uint64(0xBF58476D1CE4E5B9))
        h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
    u = (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
    return (lo + (hi - lo) * u).reshape(shape)


_POOLS = {}


def _pool(special):
    """One sampled_from strategy per special tuple: NaN and +-inf weighted like
    all the other values together."""
    if special not in _POOLS:
        rest = GENERAL + tuple(special)
        _POOLS[special] = st.sampled_from((NAN, INF, -INF) * max(1, len(rest) // 3) + rest)
    return _POOLS[special]


def hostile(draw, shape, special=(), lo=-3.0, hi=3.0, most=8, dtype=np.float32):
    """Uniform [lo, hi) values with some elements (drawn by hypothesis, so failures
    shrink) replaced by GENERAL + special values: none (1 in 8 arrays), one, or up
    to `most`; NaN and +-inf are drawn about as often as all the others together."""
    x = uniform(draw, shape, lo, hi).astype(dtype)
    if x.size:
        k = draw(st.sampled_from([0, 1, 1, 2, 2, 3, most, most]))
        pool = _pool(tuple(special))
        for _ in range(min(k, x.size)):
            x.flat[draw(st.integers(0, x.size - 1))] = draw(pool)
    return x


def dim(draw, lo=0, hi=3):
    return draw(st.integers(lo, hi))


def lead(draw):
    return tuple(dim(draw, 0, 2) for _ in range(dim(draw, 0, 2)))


def ids_for(draw, shape, V):
    return np.minimum(uniform(draw, shape, 0, V).astype(np.int64), V - 1)


# ---------------------------------------------------------------- error scales

def a64(x):
    return np.asarray(x, np.float64)


def free_where(inter, *terms):
    """inter, marked NaN (= nothing is promised) wherever one of the float32
    intermediates `terms` (magnitudes, broadcast to inter) leaves the float32
    range. An accidental NaN of inter (0 * inf of an infinite input) becomes inf:
    a loose bound, never a free pass."""
    inter = np.nan_to_num(np.array(inter, np.float64, copy=True), nan=np.inf)
    with np.errstate(all="ignore"):
        for t in terms:
            over = np.broadcast_to(np.asarray(t, np.float64) > FMAX, inter.shape)
            inter = np.where(over, np.nan, inter)
    return inter


def underflows(v):
    """Nonzero magnitudes that float32 rounds to 0 (below 2^-150)."""
    v = np.abs(a64(v))
    return (v > 0) & (v < 2.0 ** -150)


def finite_abs(x):
    """|x| with the infinite elements (an infinite input, not an overflow) as 0."""
    x = np.abs(a64(x))
    return np.where(np.isfinite(x), x, 0.0)


def prod_sum(a, b):
    """(sum_k a[..., i, k] b[..., k, j], sum_k |a b| over finite products) in float64 by explicit
    products (IEEE NaN / inf semantics, no BLAS shortcuts)."""
    a, b = a64(a), a64(b)
    with np.errstate(all="ignore"):
        p = a[..., :, :, None] * b[..., None, :, :]
        return p.sum(-2), finite_abs(p).sum(-2)


def rows_sum(x):
    """Sum over every axis but the last (column sums of the rows), float64."""
    x = a64(x)
    return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]).sum(0) if x.ndim else x


def exp_arg(t):
    """|argument| of an exp, capped where float32's exp is exactly 0 or inf."""
    return np.minimum(np.abs(np.nan_to_num(a64(t), nan=0.0, posinf=200.0, neginf=200.0)), 200.0)


def rot_inter(x, cos, sin, rotary_dim, layout, scale=None):
    """Error scale of a rotation: (|c x_a| + |s x_b|) |sc| on each pair (+inf where
    the pair's sum leaves float32's range), |x| on copied channels."""
    x, c, s = np.abs(a64(x)), np.abs(a64(cos)), np.abs(a64(sin))
    out = x.copy()
    sc = None if scale is None else np.abs(a64(scale))
    with np.errstate(all="ignore"):
        for k, (ia, ib) in enumerate(ref.rope_pairs(rotary_dim, layout)):
            for dst, (u, v) in ((ia, (ia, ib)), (ib, (ib, ia))):
                t = finite_abs(c[:, k] * x[..., u]) + finite_abs(s[:, k] * x[..., v])
                out[..., dst] = free_where(t if sc is None else t * sc[:, k], t)
    return out


# ---------------------------------------------------------------- judging results

def flat(result):
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in flat(r)]
    return [result]


def first_bad(got, want, inter, rtol, atol, wide=False):
    """None, or (index, reason) of the first element of got that breaks the rule
    of the module docstring (wide: a float64 result, whose range is not float32's)."""
    fmax = np.finfo(np.float64).max if wide else FMAX
    got, want = a64(got), a64(want)
    if got.shape != want.shape:
        return None, f"shape {got.shape}, expected {want.shape}"
    inter = np.broadcast_to(np.zeros(()) if inter is None else a64(inter), want.shape)
    with np.errstate(all="ignore"):
        wn, gn = np.isnan(want), np.isnan(got)
        free = ~wn & np.isnan(inter)
        bad = wn & ~gn
        winf = np.isinf(want)
        bad |= winf & ~free & (got != want)
        chk = ~wn & ~winf & ~free
        bound = rtol * np.maximum(np.where(chk, inter, 0.0), np.abs(np.where(chk, want, 0.0))) + atol
        over = chk & (np.abs(want) - bound > fmax)
        bad |= over & (got != np.sign(want) * np.inf)
        near = chk & ~over & (np.abs(want) + bound >= fmax) & (got == np.sign(want) * np.inf)
        rest = chk & ~over & ~near
        bad |= rest & ~(np.abs(got - want) <= bound)
    if not bad.any():
        return None
    i = np.unravel_index(np.flatnonzero(bad)[0], bad.shape) if bad.ndim else ()
    return i, (f"got {got[i]!r}, expected {want[i]!r} (error scale {inter[i]:.3g}, "
               f"bound {rtol * max(float(inter[i]), abs(float(want[i])) if np.isfinite(want[i]) else 0) + atol:.3g})")


def judge(name, path, got, expected, rtol, atol, inputs, wide=False):
    got = flat(got)
    assert len(got) == len(expected), f"{name}: {len(got)} outputs, expected {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"{name} [{path}] output {k}: expected None, got {type(g).__name__}"
            continue
        want, inter = e
        assert g is not None, f"{name} [{path}] output {k}: got None"
        r = first_bad(g, want, inter, rtol, atol, wide)
        if r is not None:
            idx, why = r
            shown = {n: (v if not isinstance(v, np.ndarray) or v.size <= SHOW else f"array{v.shape}")
                     for n, v in inputs.items()}
            raise AssertionError(f"{name} [{path}] output {k} at {idx}: {why}\ninputs: {shown}")


# ---------------------------------------------------------------- the cases

class Case:
    """call(): runs the kernel on fresh copies of the inputs; expected: a list
    aligned with the flattened result, of (want, error scale) or None; raises:
    (exception type, text the message must contain) for a call that must fail."""

    def __init__(self, call, expected=None, inputs=None, raises=None, wide=False):
        self.call, self.expected, self.inputs, self.raises = call, expected, inputs or {}, raises
        self.wide = wide


CASES = {}


def case(name, rtol=2e-5, atol=1e-42):
    def deco(fn):
        CASES[name] = (fn, rtol, atol)
        return fn
    return deco


def run_case(name, data):
    fn, rtol, atol = CASES[name]
    c = fn(data.draw)
    for portable in (False, True):
        path = "portable" if portable else "simd"
        C.force_portable(portable)
        try:
            if c.raises is not None:
                exc, text = c.raises
                with pytest.raises(exc, match=text) as info:
                    c.call()
                # the message says what came (PyErr_Format has no %g: it printed a literal "%g")
                assert "%" not in str(info.value), f"{name}: {info.value}"
                continue
            got = c.call()
        finally:
            C.force_portable(False)
        judge(name, path, got, c.expected, rtol, atol, c.inputs, c.wide)
    COUNTS[name] += 1


# ---- gemm area

GEMM_DIMS = st.sampled_from([0, 1, 2, 3, 4, 1, 2, 3, 5, 9, 17, 33, 40])


def _gemm(draw, batched):
    M, K, N = draw(GEMM_DIMS), draw(GEMM_DIMS), draw(GEMM_DIMS)
    if M * K * N > 40 ** 3:
        M = min(M, 4)
    Bt = (dim(draw, 0, 2),) if batched else ()
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = hostile(draw, Bt + ((K, M) if ta else (M, K)))
    b = hostile(draw, Bt + ((N, K) if tb else (K, N)))
    alpha = draw(st.sampled_from([1.0, 1.0, -0.5, 2.0 ** -20, 0.0, 1e30, NAN, INF]))
    beta = draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, NAN]))
    c = hostile(draw, Bt + (M, N)) if beta != 0.0 or draw(st.booleans()) else None
    A = np.swapaxes(a, -1, -2) if ta else a
    B = np.swapaxes(b, -1, -2) if tb else b
    S, Sabs = prod_sum(A, B)
    with np.errstate(all="ignore"):
        # alpha == 0: op(a) op(b) is not read (BLAS; torch.addmm too); beta == 0: out is not read
        # K == 0: no product is formed (BLAS, torch): only beta * c
        skip = alpha == 0.0 or K == 0
        want = np.zeros(Bt + (M, N)) if skip else alpha * S
        # each product may be denormal (absolute error 2^-150 before the alpha scaling)
        inter = np.zeros(Bt + (M, N)) if skip else free_where(abs(alpha) * (Sabs + K * DENORMAL), Sabs,
                                                               abs(alpha) * Sabs)
        if beta != 0.0:
            want = want + beta * a64(c)
            inter = inter + np.abs(beta * a64(c))
    fn = C.gemm_batched if batched else C.gemm
    kw = dict(trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
    call = lambda: fn(a, b, out=None if c is None else c.copy(), **kw)
    return Case(call, [(want, inter)], dict(a=a, b=b, c=c, **kw))


case("gemm", rtol=2e-6)(lambda draw: _gemm(draw, False))
case("gemm_batched", rtol=2e-6)(lambda draw: _gemm(draw, True))


@case("linear_fwd", rtol=2e-6)
def _(draw):
    M, K, N = draw(GEMM_DIMS), draw(GEMM_DIMS), draw(GEMM_DIMS)
    x, w = hostile(draw, (M, K)), hostile(draw, (N, K))
    b = hostile(draw, (N,)) if draw(st.booleans()) else None
    S, Sabs = prod_sum(x, w.T)
    Sabs = free_where(Sabs + K * DENORMAL, Sabs)
    want, inter = (S, Sabs) if b is None else (S + a64(b), Sabs + np.abs(a64(b)))
    return Case(lambda: C.linear_fwd(x, w, b), [(want, inter)], dict(x=x, w=w, b=b))


@case("colsum", rtol=2e-6)
def _(draw):
    x = hostile(draw, (draw(GEMM_DIMS), dim(draw, 0, 5)))
    fa = finite_abs(x).sum(0)
    return Case(lambda: C.colsum(x), [(a64(x).sum(0), free_where(fa, fa))], dict(x=x))


# ---- ops area: elementwise

BINARY_OPS = ["add", "sub", "mul", "div", "rsub", "rdiv"]


def _binary_shapes(draw):
    shape = lead(draw) + (dim(draw, 1, 3),)
    return shape, draw(st.sampled_from([shape, (1,), shape[-1:]]))


def _binary_fwd64(op, a, b):
    a, b = a64(a), a64(b)
    with np.errstate(all="ignore"):
        return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b, "rsub": b - a, "rdiv": b / a}[op]


@case("binary_fwd")
def _(draw):
    shape, bshape = _binary_shapes(draw)
    op = draw(st.sampled_from(BINARY_OPS))
    a, b = hostile(draw, shape), hostile(draw, bshape)
    bb = b if bshape == shape else np.broadcast_to(b, shape)
    return Case(lambda: C.binary_fwd(a, b, op), [(_binary_fwd64(op, a, bb), None)], dict(a=a, b=b, op=op))


@case("binary_bwd")
def _(draw):
    shape, bshape = _binary_shapes(draw)
    op = draw(st.sampled_from(BINARY_OPS))
    a, b, g = hostile(draw, shape), hostile(draw, bshape), hostile(draw, shape)
    na, nb = draw(st.booleans()), draw(st.booleans())
    bb = np.broadcast_to(b, shape)
    da, db = ref.binary_grads(op, a, bb, g)
    # torch's intermediates: a / b and (a / b) / b for div (b / a ... for rdiv)
    with np.errstate(all="ignore"):
        num, den = (a64(a), a64(bb)) if op == "div" else (a64(bb), a64(a))
        q1 = np.abs(num / den) if op in ("div", "rdiv") else 0.0
        q2 = np.abs(num / den / den) if op in ("div", "rdiv") else 0.0
    # the quotients may be denormal: their absolute error times |g|
    den = DENORMAL * finite_abs(g) * 2
    ia = free_where(np.abs(da) + den, q1, q2) if op == "rdiv" else np.abs(da)
    ib = free_where(np.abs(db) + den, q1, q2) if op == "div" else np.abs(db)
    if op in ("div", "rdiv"):
        # the quotient is 0 in float32 below 2^-150: times an infinite g, NaN (torch too)
        lost = (underflows(q1) | underflows(q2)) & np.isinf(a64(g))
        if op == "div":
            ib = np.where(lost, np.nan, ib)
        else:
            ia = np.where(lost, np.nan, ia)
    if bshape != shape:
        n = b.size
        fa = finite_abs(db).reshape(-1, n).sum(0)
        ib = free_where(ib.reshape(-1, n).sum(0), fa).reshape(bshape)
        db = db.reshape(-1, n).sum(0).reshape(bshape)
    exp = [(da, ia) if na else None, (db, ib) if nb else None]
    return Case(lambda: C.binary_bwd(a, b, g, op, need_a=na, need_b=nb), exp, dict(a=a, b=b, grad=g, op=op))


@case("scale")
def _(draw):
    x = hostile(draw, lead(draw) + (dim(draw),))
    alpha = draw(st.sampled_from([0.5, -2.0, 0.0, -0.0, 1e-30, 1e30, NAN, INF, -INF]))
    with np.errstate(all="ignore"):
        want = float(np.float32(alpha)) * a64(x)
    return Case(lambda: C.scale(x, alpha), [(want, None)], dict(x=x, alpha=alpha))


@case("bias_add")
def _(draw):
    shape = lead(draw) + (dim(draw),)
    x, b = hostile(draw, shape), hostile(draw, shape[-1:])
    with np.errstate(all="ignore"):
        want = a64(x) + a64(b)
    return Case(lambda: C.bias_add(x, b), [(want, None)], dict(x=x, bias=b))


@case("sum_rows")
def _(draw):
    x = hostile(draw, lead(draw) + (dim(draw),))
    with np.errstate(all="ignore"):
        want, inter = rows_sum(x), rows_sum(finite_abs(x))
    return Case(lambda: C.sum_rows(x), [(want, free_where(inter, inter))], dict(x=x))


# ---- ops area: activations

def _gelu_tanh_arg(x):
    with np.errstate(all="ignore"):
        return 2.0 * math.sqrt(2.0 / math.pi) * (a64(x) + 0.044715 * a64(x) ** 3)


ACT_SPECIAL = {"tanh": GELU_EDGES, "none": ERF_EDGES + GELU_EDGES, "relu": (), "silu": SIGMOID_EDGES + EXP_EDGES}


def act_twin(kind, x, g=None):
    """(want, error scale) of the activation kind ("tanh" / "none": GELU, "relu",
    "silu") at x, or of its backward with upstream gradient g. The error scale
    grows with the exp's argument (its rounding is relative to it). A derivative
    below 1e-30 may be exactly 0 in float32 (an exp overflowed or underflowed):
    times an infinite g that is inf in float64, NaN in float32 (torch too), free."""
    want, inter = _act_twin(kind, x, g)
    if g is not None and kind != "relu":
        d = np.abs(_act_twin(kind, x, np.ones(np.shape(x)))[0])
        inter = np.where(np.isinf(a64(g)) & (d < 1e-30) & (d > 0), np.nan, inter)
    return want, inter


def _act_twin(kind, x, g=None):
    xx = a64(x)
    with np.errstate(all="ignore"):
        if kind == "relu":
            return (ref.relu(x), None) if g is None else (ref.relu_grad(x, g), None)
        if kind == "tanh":
            t = 1.0 + exp_arg(_gelu_tanh_arg(x))
            if g is None:
                want = ref.gelu_tanh(x)
                return want, np.abs(want) * t
            want = ref.gelu_tanh_grad(x, g)
            return want, np.abs(a64(g)) * (1.0 + np.abs(ref.gelu_tanh_grad(x, np.ones_like(xx)))) * t * 4
        if kind == "none":
            t = 1.0 + exp_arg(0.5 * xx * xx)
            if g is None:
                want = ref.gelu_erf(x)
                return want, np.abs(want) * t
            want = ref.gelu_erf_grad(x, g)
            return want, np.abs(a64(g)) * (1.0 + np.abs(xx) * np.exp(-0.5 * xx * xx)) * t * 2
        t = 1.0 + exp_arg(xx)
        if g is None:
            want = ref.silu(x)
            return want, np.abs(want) * t
        want = ref.silu_grad(x, g)
        return want, np.abs(a64(g)) * (1.0 + np.abs(xx) * ref._sigmoid(xx) * ref._sigmoid(-xx)) * t * 2


def _act(kind, fwd):
    def build(draw):
        shape = lead(draw) + (dim(draw),)
        x = hostile(draw, shape, ACT_SPECIAL[kind])
        g = None if fwd else hostile(draw, shape)
        if kind in ("tanh", "none"):
            call = (lambda: C.gelu_fwd(x, kind)) if fwd else (lambda: C.gelu_bwd(x, g, kind))
        else:
            f = getattr(C, f"{kind}_{'fwd' if fwd else 'bwd'}")
            call = (lambda: f(x)) if fwd else (lambda: f(x, g))
        return Case(call, [act_twin(kind, x, g)], dict(x=x, grad=g, kind=kind))
    return build


def _gelu(fwd):
    def build(draw):
        return _act(draw(st.sampled_from(["tanh", "none"])), fwd)(draw)
    return build


case("gelu_fwd")(_gelu(True))
case("gelu_bwd")(_gelu(False))
for _k in ("relu", "silu"):
    case(f"{_k}_fwd")(_act(_k, True))
    case(f"{_k}_bwd")(_act(_k, False))


# ---- ops area: norms

def _norm_fwd(x, w, b, eps, rms):
    """Float64 (y, mean, rstd) of LayerNorm (RMSNorm: rms=True, mean 0) over the last
    axis with error scales: the centring x - mean errs by ~u (|x| + |mean|), the
    variance relatively by ~u (D + 2) mean((|x| + |mean|)^2) / (var + eps)."""
    xx = a64(x)
    D = xx.shape[-1]
    Dd = max(D, 1)
    fx = finite_abs(x)
    w = np.ones(D) if w is None else a64(w)
    b = np.zeros(D) if b is None else a64(b)
    with np.errstate(all="ignore"):
        m = np.zeros(xx.shape[:-1] + (1,)) if rms else xx.sum(-1, keepdims=True) / Dd
        c = xx - m
        var = (c * c).sum(-1, keepdims=True) / Dd
        rs = 1.0 / np.sqrt(var + eps)
        y = c * rs * w + b
        A = fx + finite_abs(m) + DENORMAL
        sq = ((A - DENORMAL) ** 2).sum(-1, keepdims=True)
        rel = (D + 2) * (sq / Dd) / (var + eps)
        marks = (fx.sum(-1, keepdims=True), sq)
        i_m = free_where(fx.sum(-1, keepdims=True), *marks)
        i_rs = free_where(rs * (1.0 + rel), *marks)
        i_y = free_where(np.abs(w) * rs * (A + np.abs(c) * rel) + np.abs(b), *marks, np.abs(c),
                         finite_abs(c * rs * w))
    return (y, i_y), (m[..., 0], i_m[..., 0]), (rs[..., 0], i_rs[..., 0])


NORM_EPS = st.sampled_from([1e-5, 1e-5, 1e-6, 1e-12])


def _norm_fwd_case(rms):
    def build(draw):
        L, D = lead(draw), dim(draw)
        x = hostile(draw, L + (D,), SQUARE_EDGES)
        w = hostile(draw, (D,)) if draw(st.booleans()) else None
        b = None if rms or not draw(st.booleans()) else hostile(draw, (D,))
        eps = draw(NORM_EPS)
        y, m, rs = _norm_fwd(x, w, b, float(np.float32(eps)), rms)
        if rms:
            return Case(lambda: C.rms_norm_fwd(x, w, eps), [y, rs], dict(x=x, weight=w, eps=eps))
        return Case(lambda: C.layer_norm_fwd(x, w, b, eps), [y, m, rs], dict(x=x, weight=w, bias=b, eps=eps))
    return build


def _norm_bwd64(x, w, m, r, g, rms):
    """Twin gradients of the norms from the saved statistics, with error scales."""
    if rms:
        dx, dw = ref.rms_norm_grad(x, w, r, g)
        db = None
    else:
        dx, dw, db = ref.layer_norm_grad(x, w, m, r, g)
    D = a64(x).shape[-1]
    ww = np.ones(D) if w is None else a64(w)
    mm = np.zeros(a64(x).shape[:-1] + (1,)) if rms else a64(m)[..., None]
    rr = np.abs(a64(r))[..., None]
    with np.errstate(all="ignore"):
        diff = finite_abs(a64(x) - mm)
        # a bound on |h| and on its error scale (a denormal h errs by 2^-149 absolutely)
        Hb = (finite_abs(x) + finite_abs(mm)) * rr + DENORMAL
        gw = finite_abs(g) * finite_abs(ww)
        S1 = gw.sum(-1, keepdims=True)
        S2 = (gw * Hb).sum(-1, keepdims=True)
        marks = (diff, Hb, gw, S1, S2, gw * Hb)
        i_dx = free_where(rr * (gw + S1 + Hb * S2) * (D + 2), *marks)
        gh = finite_abs(g) * Hb
        i_dw = free_where(rows_sum(gh), rows_sum(Hb), rows_sum(gh))
        i_db = free_where(rows_sum(finite_abs(g)), rows_sum(finite_abs(g)))
        # h = (x - mean) rstd is 0 in float32 below 2^-150: times an infinite grad or
        # weight, NaN where float64 keeps inf (torch too): the row's dx and that column's dweight
        hu = underflows((a64(x) - mm) * a64(r)[..., None])
        inf_g = ~np.isfinite(a64(g) * ww)
        row = (hu.any(-1, keepdims=True) & inf_g.any(-1, keepdims=True)) | (hu & inf_g).any(-1, keepdims=True)
        i_dx = np.where(np.broadcast_to(row, i_dx.shape), np.nan, i_dx)
        col = (hu & ~np.isfinite(a64(g))).reshape(-1, D).any(0)
        i_dw = np.where(col, np.nan, i_dw)
    return (dx, i_dx), (dw, i_dw), (None if db is None else (db, i_db))


def _norm_bwd_case(rms):
    def build(draw):
        L, D = lead(draw), dim(draw, 1, 3)
        x, g = hostile(draw, L + (D,), SQUARE_EDGES), hostile(draw, L + (D,))
        w = hostile(draw, (D,)) if draw(st.booleans()) else None
        m = hostile(draw, L)
        r = hostile(draw, L, lo=0.2, hi=1.5)
        nx, nw, nb = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
        dx, dw, db = _norm_bwd64(x, w, m, r, g, rms)
        # the gradient of the weight is computed (and returned) only for a given weight
        if rms:
            return Case(lambda: C.rms_norm_bwd(x, w, r, g, need_x=nx, need_weight=nw),
                        [dx if nx else None, dw if nw else None], dict(x=x, weight=w, rstd=r, grad=g))
        return Case(lambda: C.layer_norm_bwd(x, w, m, r, g, need_x=nx, need_weight=nw, need_bias=nb),
                    [dx if nx else None, dw if nw else None, db if nb else None],
                    dict(x=x, weight=w, mean=m, rstd=r, grad=g))
    return build


case("layer_norm_fwd")(_norm_fwd_case(False))
case("rms_norm_fwd")(_norm_fwd_case(True))
case("layer_norm_bwd")(_norm_bwd_case(False))
case("rms_norm_bwd")(_norm_bwd_case(True))


# ---- ops area: softmax family, cross-entropy

def _rowmax(x):
    return a64(x).max(-1, keepdims=True, initial=-np.inf)


@case("softmax_fwd")
def _(draw):
    shape = lead(draw) + (dim(draw),)
    x = hostile(draw, shape, EXP_EDGES)
    want = ref.softmax(x)
    with np.errstate(all="ignore"):
        inter = np.abs(np.nan_to_num(want)) * (shape[-1] + exp_arg(a64(x) - _rowmax(x)))
    return Case(lambda: C.softmax_fwd(x), [(want, inter)], dict(x=x))


@case("log_softmax_fwd")
def _(draw):
    shape = lead(draw) + (dim(draw),)
    x = hostile(draw, shape, EXP_EDGES)
    want = ref.log_softmax(x)
    with np.errstate(all="ignore"):
        inter = np.abs(a64(x) - _rowmax(x)) + np.abs(want) + 4 * shape[-1]
    return Case(lambda: C.log_softmax_fwd(x), [(want, inter)], dict(x=x))


@case("softmax_bwd")
def _(draw):
    shape = lead(draw) + (dim(draw),)
    y, g = hostile(draw, shape, lo=0.0, hi=1.0), hostile(draw, shape)
    want = ref.softmax_grad(y, g)
    with np.errstate(all="ignore"):
        gy = finite_abs(a64(g) * a64(y))
        S = gy.sum(-1, keepdims=True)
        inter = free_where(finite_abs(y) * (finite_abs(g) + S) * (shape[-1] + 1), gy, S, finite_abs(g) + S)
    return Case(lambda: C.softmax_bwd(y, g), [(want, inter)], dict(y=y, grad=g))


@case("log_softmax_bwd")
def _(draw):
    shape = lead(draw) + (dim(draw),)
    y, g = hostile(draw, shape, EXP_EDGES, lo=-4.0, hi=0.0), hostile(draw, shape)
    want = ref.log_softmax_grad(y, g)
    with np.errstate(all="ignore"):
        ey = finite_abs(np.exp(a64(y)))
        S = finite_abs(g).sum(-1, keepdims=True)
        inter = free_where(finite_abs(g) + (ey * (1 + exp_arg(y)) + DENORMAL) * S * (shape[-1] + 1), ey, S, ey * S)
        # exp(y) is 0 in float32 below 2^-150: times an infinite sum, NaN (torch too)
        inf_sum = np.isinf(a64(g).sum(-1, keepdims=True))
        inter = np.where(underflows(np.exp(a64(y))) & inf_sum, np.nan, inter)
    return Case(lambda: C.log_softmax_bwd(y, g), [(want, inter)], dict(y=y, grad=g))


def _targets(draw, N, V):
    t = ids_for(draw, (N,), V)
    for _ in range(draw(st.integers(0, N))):
        t[draw(st.integers(0, N - 1))] = -100
    return t


@case("cross_entropy_fwd")
def _(draw):
    N, V = dim(draw, 0, 4), dim(draw, 1, 5)
    x = hostile(draw, (N, V), EXP_EDGES)
    t = _targets(draw, N, V)
    loss, lse, count = ref.cross_entropy_rows(x, t)
    keep = t != -100
    with np.errstate(all="ignore"):
        m = _rowmax(x)[:, 0]
        i_lse = np.where(keep, np.abs(m) + np.abs(np.nan_to_num(lse)) + 4 * V, 0.0)
        xt = a64(x)[np.arange(N), np.where(keep, t, 0)]
        diff = np.where(keep, finite_abs(m - xt), 0.0)
        i_loss = free_where(np.mean(i_lse[keep] + finite_abs(xt)[keep]) if keep.any() else 0.0, diff.max(initial=0))
    return Case(lambda: C.cross_entropy_fwd(x, t), [(loss, i_loss), (lse, i_lse), (count, None)],
                dict(logits=x, targets=t))


@case("cross_entropy_bwd")
def _(draw):
    N, V = dim(draw, 0, 4), dim(draw, 1, 5)
    x = hostile(draw, (N, V), EXP_EDGES)
    t = _targets(draw, N, V)
    _, lse64, count = ref.cross_entropy_rows(x, t)
    lse = lse64.astype(np.float32)          # the forward's saved lse
    dloss = draw(st.sampled_from([1.0, 1.0, -0.5, 3.0, 0.0, 1e30, 1e-30, NAN]))
    want = ref.cross_entropy_grad(x, t, dloss, count)
    sc = abs(float(np.float32(dloss)) / count) if count else 0.0
    with np.errstate(all="ignore"):
        p = np.abs(np.nan_to_num(ref.softmax(x)))
        inter = sc * (p * (V + 1 + exp_arg(a64(x) - lse64[:, None])) + 1e-33)
        inter = np.where((t != -100)[:, None], inter + sc, 0.0)
    return Case(lambda: C.cross_entropy_bwd(x, t, lse, dloss, count), [(want, inter)],
                dict(logits=x, targets=t, lse=lse, dloss=dloss, count=count))


# ---- ops area: embedding, dropout

@case("embedding_fwd")
def _(draw):
    V, D = dim(draw, 1, 4), dim(draw)
    ids = ids_for(draw, lead(draw) + (dim(draw),), V)
    w = hostile(draw, (V, D))
    return Case(lambda: C.embedding_fwd(ids, w), [(ref.embedding(ids, w), None)], dict(ids=ids, weight=w))


@case("embedding_bwd")
def _(draw):
    V, D = dim(draw, 1, 4), dim(draw)
    ids = ids_for(draw, lead(draw) + (dim(draw),), V)
    g = hostile(draw, ids.shape + (D,))
    want = ref.embedding_grad(ids, g, V)
    fa = ref.embedding_grad(ids, finite_abs(g), V)
    return Case(lambda: C.embedding_bwd(ids, g, V), [(want, free_where(fa, fa))], dict(ids=ids, grad=g))


DROP_P = st.sampled_from([0.0, 0.3, 0.5, 0.9])
SEED64 = st.integers(0, 2 ** 64 - 1)


def _dropout_case(bwd):
    def build(draw):
        x = hostile(draw, lead(draw) + (dim(draw, 0, 5),))
        p, seed = draw(DROP_P), draw(SEED64)
        want = ref.dropout(x, ref.dropout_mask(x.size, p, seed).reshape(x.shape), p)
        f = C.dropout_bwd if bwd else C.dropout_fwd
        return Case(lambda: f(x, p, seed), [(want, None)], dict(x=x, p=p, seed=seed))
    return build


case("dropout_fwd")(_dropout_case(False))
case("dropout_bwd")(_dropout_case(True))


@case("dropout_mask")
def _(draw):
    n = dim(draw, 0, 40)
    p = draw(st.sampled_from([0.0, 2.0 ** -32, 1e-10, 0.25, 0.5, 0.75, float(np.nextafter(np.float32(1), 0))]))
    seed = draw(SEED64)
    return Case(lambda: C.dropout_mask(n, p, seed), [(ref.dropout_mask(n, p, seed), None)],
                dict(n=n, p=p, seed=seed))


# ---- optim area

@case("sgd_step")
def _(draw):
    shape = lead(draw) + (dim(draw),)
    p, g, buf = hostile(draw, shape), hostile(draw, shape), hostile(draw, shape)
    lr = draw(st.sampled_from([0.1, 0.1, 0.0, 1e-30, 1e30]))
    mom = draw(st.sampled_from([0.0, 0.9, 0.9]))
    damp = draw(st.sampled_from([0.0, 0.5])) if mom else 0.0
    wd = draw(st.sampled_from([0.0, 0.01, 1e30]))
    nest = mom > 0 and damp == 0 and draw(st.booleans())
    init = draw(st.booleans())
    kw = dict(lr=lr, momentum=mom, dampening=damp, weight_decay=wd, nesterov=nest, init_buf=init)
    f32 = lambda v: float(np.float32(v))
    want_p, want_b = ref.sgd_step(p, g, buf, f32(lr), f32(mom), 1 - f32(1 - damp), f32(wd), nest, init)
    with np.errstate(all="ignore"):
        # magnitudes of g + wd p, the new buf, the step
        T = finite_abs(g) + f32(wd) * finite_abs(p)
        B = T if (init or not mom) else f32(mom) * finite_abs(buf) + T
        Dn = T + f32(mom) * B if nest else (B if mom else T)
        marks = (f32(wd) * finite_abs(p), T, B, Dn, f32(lr) * Dn)
        i_p = free_where(finite_abs(p) + 2 * f32(lr) * Dn + DENORMAL * f32(lr), *marks)
        i_b = free_where(B * 2, *marks[:3])
    exp = [(want_p, i_p), (want_b, i_b) if mom else (buf, None)]

    def call():
        pp, bb = p.copy(), buf.copy()
        C.sgd_step(pp, g, bb, **kw)
        return pp, bb
    return Case(call, exp, dict(param=p, grad=g, buf=buf, **kw))


@case("adamw_step", rtol=5e-5)
def _(draw):
    shape = lead(draw) + (dim(draw),)
    p, g, m = hostile(draw, shape), hostile(draw, shape, SQUARE_EDGES), hostile(draw, shape)
    v = hostile(draw, shape, SQUARE_EDGES, lo=0.0, hi=2.0)
    lr = draw(st.sampled_from([1e-2, 1e-2, 0.0, 1.0]))
    b1, b2 = draw(st.sampled_from([0.9, 0.0])), draw(st.sampled_from([0.999, 0.0, 0.5]))
    eps = draw(st.sampled_from([1e-8, 1e-6]))
    wd = draw(st.sampled_from([0.01, 0.0]))
    step = draw(st.sampled_from([1, 2, 10, 10 ** 6]))
    kw = dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, step=step)
    want_p, want_m, want_v = ref.adamw_step(p, g, m, v, lr, b1, b2, eps, wd, step)
    with np.errstate(all="ignore"):
        fg, fm, fv, fp = finite_abs(g), finite_abs(m), finite_abs(v), finite_abs(p)
        g2 = fg * fg
        i_m = b1 * fm + (1 - b1) * fg
        i_v = b2 * fv + (1 - b2) * g2 + DENORMAL
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        den = np.sqrt(np.abs(np.nan_to_num(want_v, nan=0.0)) / bc2) + eps
        R = i_m / bc1 / den * (1 + i_v / (np.abs(np.nan_to_num(want_v, nan=0.0)) + eps * eps * bc2))
        marks = (g2, i_m, i_v, R, lr * R)
        i_p = free_where(fp + lr * R * 4, *marks)
        exp = [(want_p, i_p), (want_m, free_where(i_m, *marks[:2])), (want_v, free_where(i_v, *marks[:3]))]

    def call():
        pp, mm, vv = p.copy(), m.copy(), v.copy()
        C.adamw_step(pp, g, mm, vv, **kw)
        return pp, mm, vv
    return Case(call, exp, dict(param=p, grad=g, m=m, v=v, **kw))


@case("adamw_multi", rtol=5e-5)
def _(draw):
    """Two tensors in one call: each must get adamw_step's answer (the same update)."""
    cases = [CASES["adamw_step"][0](draw) for _ in range(2)]
    ins = [c.inputs for c in cases]
    hyper = np.array([[i["lr"], i["beta1"], i["beta2"], i["eps"], i["weight_decay"], i["step"]] for i in ins])

    def call():
        ps, ms, vs = ([i[k].copy() for i in ins] for k in ("param", "m", "v"))
        C.adamw_multi(ps, [i["grad"] for i in ins], ms, vs, hyper)
        return ps[0], ms[0], vs[0], ps[1], ms[1], vs[1]
    return Case(call, cases[0].expected + cases[1].expected, dict(first=ins[0], second=ins[1]))


@case("scale_multi")
def _(draw):
    """Two arrays in one call: each must get scale_'s answer."""
    cases = [CASES["scale_"][0](draw) for _ in range(2)]
    f = cases[0].inputs["factor"]
    xs = [cases[0].inputs["array"] if "array" in cases[0].inputs else hostile(draw, (3,)),
          cases[1].inputs.get("array", hostile(draw, (2,)))]
    if not math.isfinite(f):
        return Case(lambda: C.scale_multi([x.copy() for x in xs], f), raises=(ValueError, "factor"),
                    inputs=dict(factor=f))
    with np.errstate(all="ignore"):
        want = [a64(x) * float(np.float32(f)) for x in xs]

    def call():
        ys = [x.copy() for x in xs]
        C.scale_multi(ys, f)
        return tuple(ys)
    return Case(call, [(w, None) for w in want], dict(arrays=xs, factor=f))


@case("grad_norm", rtol=1e-12)
def _(draw):
    arrs = [hostile(draw, lead(draw) + (dim(draw),)) for _ in range(dim(draw, 0, 3))]
    # a float64 result: the sum of squares of float32 values never overflows it
    return Case(lambda: C.grad_norm(arrs), [(ref.grad_norm(arrs), None)], dict(arrays=arrs), wide=True)


@case("scale_")
def _(draw):
    x = hostile(draw, lead(draw) + (dim(draw),))
    f = draw(st.sampled_from([0.5, -3.0, 0.0, 1e-30, 1e30, NAN, INF]))
    if not math.isfinite(f):
        # documented: the factor of an in-place scaling must be finite
        return Case(lambda: C.scale_(x.copy(), f), raises=(ValueError, "factor"), inputs=dict(factor=f))
    with np.errstate(all="ignore"):
        want = a64(x) * float(np.float32(f))

    def call():
        y = x.copy()
        C.scale_(y, f)
        return y
    return Case(call, [(want, None)], dict(array=x, factor=f))


# ---- posenc area

INV_FREQ_SPECIAL = GENERAL + (1e300, -1e300, 5e-324, 1e-300, 1e-3, 1e4)


@case("rope_tables", rtol=1e-6, atol=1e-7)
def _(draw):
    P, T = dim(draw), dim(draw, 0, 5)
    inv = hostile(draw, (P,), INV_FREQ_SPECIAL, lo=1e-4, hi=1.0, dtype=np.float64)
    offset = draw(st.sampled_from((0, 0, 7, -3) + HUGE_INTS))
    ps = draw(st.sampled_from([1.0, 1.0, 0.25, 0.0, 1e300, NAN, INF, -INF]))
    call = lambda: C.rope_tables(inv, T, offset=offset, pos_scale=ps)
    if not (math.isfinite(ps) and ps > 0):
        return Case(call, raises=(ValueError, "pos_scale"), inputs=dict(inv_freq=inv, pos_scale=ps))
    c, s_ = ref.rope_tables(inv, T, offset, ps)
    return Case(call, [(c, np.ones_like(c)), (s_, np.ones_like(s_))], dict(inv_freq=inv, T=T, offset=offset,
                                                                              pos_scale=ps))


@case("xpos_scale", rtol=1e-6)
def _(draw):
    P, T = dim(draw), dim(draw, 0, 5)
    offset = draw(st.sampled_from((0, 0, 7, -3) + HUGE_INTS))
    center = draw(st.sampled_from([0.0, 0.0, 100.5, -7.0, 1e300, NAN, INF, -INF]))
    base = draw(st.sampled_from([512.0, 512.0, 1.0, 1e-300, 1e300, 0.0, -1.0, NAN, INF]))
    gamma = draw(st.sampled_from([0.4, 0.4, 1e-30, 0.0, -0.5, 1e30, NAN, INF]))
    inverse = draw(st.booleans())
    kw = dict(offset=offset, center=center, scale_base=base, gamma=gamma, inverse=inverse)
    call = lambda: C.xpos_scale(P, T, **kw)
    bad = [name for name, ok in (("center", math.isfinite(center)), ("scale_base", math.isfinite(base) and base > 0),
                                 ("gamma", math.isfinite(gamma) and gamma > 0)) if not ok]
    if bad:
        return Case(call, raises=(ValueError, "|".join(bad)), inputs=kw)
    want = ref.xpos_scale(np.arange(T) + offset, 2 * P, center, gamma, base, inverse, max_log=80.0)
    return Case(call, [(want, None)], kw)


def _rotary_case(bwd):
    def build(draw):
        L, T, P = lead(draw), dim(draw), dim(draw, 0, 2)
        D = 2 * P + dim(draw, 0, 2)
        x = hostile(draw, L + (T, D))
        cos, sin = hostile(draw, (T, P), lo=-1, hi=1), hostile(draw, (T, P), lo=-1, hi=1)
        layout = draw(st.sampled_from(["interleaved", "half"]))
        sc = hostile(draw, (T, P), lo=0.2, hi=1.5) if draw(st.booleans()) else None
        want = ref.rope_rotate_tables(x, cos, sin, 2 * P, layout, inverse=bwd, scale=sc)
        inter = rot_inter(x, cos, sin, 2 * P, layout, sc)
        f = C.rotary_bwd if bwd else C.rotary_fwd
        return Case(lambda: f(x, cos, sin, rotary_dim=2 * P, layout=layout, scale=sc), [(want, inter)],
                    dict(x=x, cos=cos, sin=sin, scale=sc, layout=layout))
    return build


case("rotary_fwd")(_rotary_case(False))
case("rotary_bwd")(_rotary_case(True))


@case("sinusoidal_table", rtol=1e-6, atol=1e-7)
def _(draw):
    T, d = dim(draw, 0, 5), 2 * dim(draw)
    offset = draw(st.sampled_from((0, 0, 5) + HUGE_INTS))
    layout = draw(st.sampled_from(["interleaved", "concat"]))
    base = draw(st.sampled_from([10000.0, 10000.0, 2.0, 1.0, 1e300, 0.5, 0.0, -1.0, NAN, INF]))
    pos = None
    if draw(st.booleans()):
        pos = ids_for(draw, (T,), 100)
        for _ in range(draw(st.integers(0, T))):
            pos[draw(st.integers(0, T - 1))] = draw(st.sampled_from((0, -1, 2 ** 62, -(2 ** 62)) + HUGE_INTS))
    kw = dict(offset=offset, layout=layout, base=base, positions=pos)
    call = lambda: C.sinusoidal_table(T, d, **kw)
    if not (math.isfinite(base) and base > 0):
        return Case(call, raises=(ValueError, "base"), inputs=kw)
    p = np.arange(T) + offset if pos is None else pos
    want = ref.sinusoidal(p, d, layout, base)
    # the angle p * base^(-2k/d) is rounded in float64 (~1e-16 relative, times
    # 1 + |log base| through the power): chaotic for |p| ~ 1e18
    ang = np.abs(a64(p))[:, None] * (1 + abs(math.log(base))) * 1e-9 + 1.0
    inter = np.repeat(ang, max(d, 1), axis=1)[:, :d]
    return Case(call, [(want, inter)], kw)


def _complex_args(draw):
    V, d = dim(draw, 1, 4), dim(draw)
    ids = ids_for(draw, (dim(draw, 0, 2), dim(draw)), V)
    T = ids.shape[-1]
    r, om, th = (hostile(draw, (V, d)) for _ in range(3))
    pos = ids_for(draw, (T,), 50)
    for _ in range(draw(st.integers(0, T))):
        pos[draw(st.integers(0, T - 1))] = draw(st.sampled_from((0, -1) + HUGE_INTS))
    return ids, r, om, th, pos


def _phase_err(om, th, ids, pos):
    """Error scale of cos/sin of the float64 phase omega pos + theta (|phase| 1e-16)."""
    with np.errstate(all="ignore"):
        ph = finite_abs(a64(om)[ids] * a64(pos)[None, :, None])
        return 1.0 + (ph + finite_abs(a64(th)[ids])) * 1e-9


@case("complex_embed_fwd")
def _(draw):
    ids, r, om, th, pos = _complex_args(draw)
    want = ref.complex_embed(ids, pos, r, om, th)
    e = finite_abs(a64(r)[ids]) * _phase_err(om, th, ids, pos)
    return Case(lambda: C.complex_embed_fwd(ids, r, om, th, pos), [(want, np.concatenate([e, e], -1))],
                dict(ids=ids, r=r, omega=om, theta=th, positions=pos))


@case("complex_embed_bwd")
def _(draw):
    ids, r, om, th, pos = _complex_args(draw)
    d = r.shape[1]
    g = hostile(draw, ids.shape + (2 * d,))
    dr, dom, dth = ref.complex_embed_grad(ids, pos, r, om, th, g)
    with np.errstate(all="ignore"):
        pe = _phase_err(om, th, ids, pos)
        ga = finite_abs(g[..., :d]) + finite_abs(g[..., d:])
        t_r = ga * pe
        t_th = finite_abs(a64(r)[ids]) * ga * pe
        t_om = t_th * finite_abs(a64(pos))[None, :, None]
        V = r.shape[0]
        scat = lambda t: ref.embedding_grad(ids, t, V)
        # a token's term or the float32 sum of the terms of one row leaving the range
        exp = [(dr, free_where(scat(t_r), scat(t_r))), (dom, free_where(scat(t_om), scat(t_om))),
               (dth, free_where(scat(t_th), scat(t_th)))]
    return Case(lambda: C.complex_embed_bwd(ids, r, om, th, pos, g), exp,
                dict(ids=ids, r=r, omega=om, theta=th, positions=pos, grad=g))


# ---- CoPE

def _cope_inputs(draw):
    B, H, Tq, Tk, D, P = dim(draw, 0, 2), dim(draw, 0, 2), dim(draw), dim(draw), dim(draw), dim(draw, 1, 4)
    q, k = hostile(draw, (B, H, Tq, D), EXP_EDGES), hostile(draw, (B, H, Tk, D), EXP_EDGES)
    e = hostile(draw, (P, D))
    qo = draw(st.sampled_from([0, 0, 1, 2, 3, 2 ** 40]))
    scale = draw(st.sampled_from([1.0, 1.0, 0.5, -1.0, 0.0, 1e30, NAN]))
    return q, k, e, qo, scale


def _cope_scales(q, k, e, G, qo, scale):
    """Error scales of cope_bias (out) and cope_grad (dq, dk, de). Units of rtol:
    a gate errs by ~(4 + |scale| D |q||k|) u (float exp, a float32 cast of the
    logit), a position by the sum of its gates' errors. d out / d pos jumps at
    integer positions (z[ceil] - z[floor]); where the twin's position is within
    1e-4 of an integer, float32 may be on the other side: the jump (|G| 2 max|z|)
    is added in full."""
    q, k, e = finite_abs(q), finite_abs(k), finite_abs(e)
    G = None if G is None else finite_abs(G)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    sc = abs(float(np.float32(scale))) if math.isfinite(scale) else 0.0
    i_out = np.zeros((B, H, Tq, Tk))
    i_dq, i_dk, i_de = np.zeros_like(q), np.zeros_like(k), np.zeros_like(e)
    qt, kt, et, Gt = (np.asarray(a, np.float64) for a in (_COPE_RAW["q"], _COPE_RAW["k"], _COPE_RAW["e"],
                                                          _COPE_RAW["G"] if G is not None else np.zeros(1)))
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                jmax = min(qo + i, Tk - 1)
                if jmax < 0:
                    continue
                qi = q[b, h, i]
                qk = (k[b, h, :jmax + 1] * qi).sum(-1)
                E = float(np.sum(4.0 + sc * D * qk))
                Zp = (e * qi).sum(-1)
                Zm = float(Zp.max(initial=0.0))
                i_out[b, h, i, :jmax + 1] = D * (Zm + 2 * Zm * (1 + E)) + DENORMAL
                with np.errstate(all="ignore"):
                    gates, pos, zr = ref._cope_row(qt[b, h, i], kt[b, h], et, jmax, float(np.float32(scale)))
                    g32 = gates.astype(np.float32)
                # a gate whose derivative g (1 - g) is 0 in float32 (saturated) but not in float64:
                # an infinite running gradient times it is NaN in float32 (as in PyTorch), inf in the twin
                saturated = bool(np.any((g32 == 0) | (g32 == 1) | (gates * (1 - gates) < 1.2e-38)))
                near = np.abs(np.nan_to_num(pos) - np.round(np.nan_to_num(pos))) < 1e-4
                # an infinite z weighted by a tiny w (float64) or by exactly 0 (a float32 gate
                # saturated): inf vs inf * 0 = NaN, float32's own semantics
                wild = near & ~np.all(np.isfinite(zr))
                i_out[b, h, i, :jmax + 1] = np.where(wild, np.nan, i_out[b, h, i, :jmax + 1])
                if G is None:
                    continue
                Gi = G[b, h, i, :jmax + 1]
                # a non-finite gradient at a position on the clamp's edge: float32 (a gate
                # saturated to exactly 0 or 1) may sit on the passing side, where NaN * 0 is NaN,
                # while the float64 twin is past the clamp, where the gradient is 0
                edge_nonfinite = near.any() and not np.all(np.isfinite(Gt[b, h, i, :jmax + 1][near]))
                row_nonfinite = not np.all(np.isfinite(Gt[b, h, i, :jmax + 1]))
                if (wild.any() or edge_nonfinite or (saturated and row_nonfinite)
                        or (near.any() and not np.all(np.isfinite(et)))):
                    i_dq[b, h, i] = np.nan
                    i_dk[b, h] = np.nan
                    i_de[:] = np.nan
                U = float(np.sum(Gi[near]) * 2 * Zm) / 2e-5
                dz = float(Gi.sum()) * (1 + E)
                run = np.cumsum(Gi * 2 * Zm)
                ds = sc * (run * (0.25 + E) + U * 0.25) + DENORMAL
                i_dq[b, h, i] += (ds[:, None] * k[b, h, :jmax + 1]).sum(0) + dz * e.sum(0) + DENORMAL
                i_dk[b, h, :jmax + 1] += ds[:, None] * qi[None, :]
                i_de += dz * qi[None, :]
    return i_out, i_dq, i_dk, i_de


_COPE_RAW = {}


@case("cope_fwd", rtol=2e-5)
def _(draw):
    q, k, e, qo, scale = _cope_inputs(draw)
    want = ref.cope_bias(q, k, e, qo, float(np.float32(scale)))
    _COPE_RAW.update(q=q, k=k, e=e, G=None)
    i_out = _cope_scales(q, k, e, None, qo, scale)[0]
    return Case(lambda: C.cope_fwd(q, k, e, qo, scale), [(want, i_out)], dict(q=q, k=k, e=e, q_offset=qo,
                                                                              scale=scale))


@case("cope_bwd", rtol=2e-5)
def _(draw):
    q, k, e, qo, scale = _cope_inputs(draw)
    G = hostile(draw, q.shape[:3] + (k.shape[2],))
    dq, dk, de = ref.cope_grad(q, k, e, G, qo, float(np.float32(scale)))
    _COPE_RAW.update(q=q, k=k, e=e, G=G)
    _, i_dq, i_dk, i_de = _cope_scales(q, k, e, G, qo, scale)
    return Case(lambda: C.cope_bwd(q, k, e, G, qo, scale), [(dq, i_dq), (dk, i_dk), (de, i_de)],
                dict(q=q, k=k, e=e, grad=G, q_offset=qo, scale=scale))


# ---- blocks (fused kernels of the training step)

@case("add_layer_norm_fwd")
def _(draw):
    L, D = lead(draw), dim(draw)
    x, y = hostile(draw, L + (D,), SQUARE_EDGES), hostile(draw, L + (D,), SQUARE_EDGES)
    w, b = hostile(draw, (D,)), hostile(draw, (D,))
    with np.errstate(all="ignore"):
        s64 = a64(x) + a64(y)
    s32 = s64.astype(np.float32)          # s is an output: h normalises the float32 s
    h, m, rs = _norm_fwd(s32, w, b, float(np.float32(1e-5)), False)
    N = int(np.prod(L))
    flat_ = lambda t: (t[0].reshape(N), t[1].reshape(N))
    return Case(lambda: C.add_layer_norm_fwd(x, y, w, b), [(s64, None), h, flat_(m), flat_(rs)],
                dict(x=x, y=y, weight=w, bias=b))


@case("add_layer_norm_bwd")
def _(draw):
    L, D = lead(draw), dim(draw, 1, 3)
    N = int(np.prod(L))
    s_, dh = hostile(draw, L + (D,), SQUARE_EDGES), hostile(draw, L + (D,))
    w = hostile(draw, (D,))
    m, r = hostile(draw, (N,)), hostile(draw, (N,), lo=0.2, hi=1.5)
    ds = hostile(draw, L + (D,)) if draw(st.booleans()) else None
    nx, nw, nb = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    (dx, i_dx), dw, db = _norm_bwd64(s_.reshape(N, D), w, m, r, dh.reshape(N, D), False)
    with np.errstate(all="ignore"):
        if ds is not None:
            dx, i_dx = dx + a64(ds).reshape(N, D), i_dx + finite_abs(ds).reshape(N, D)
    exp = [(dx.reshape(L + (D,)), i_dx.reshape(L + (D,))) if nx else None, dw if nw else None, db if nb else None]
    return Case(lambda: C.add_layer_norm_bwd(s_, w, m, r, dh, ds, need_x=nx, need_weight=nw, need_bias=nb), exp,
                dict(s=s_, weight=w, mean=m, rstd=r, dh=dh, ds=ds))


def _gelu64(h, kind):
    return ref.gelu_tanh(h) if kind == "tanh" else ref.gelu_erf(h)


def _gelu_grad64(h, g, kind):
    return ref.gelu_tanh_grad(h, g) if kind == "tanh" else ref.gelu_erf_grad(h, g)


def _gelu_scale(h, kind):
    """Error scale factor of gelu / its derivative at h (the exp argument's size)."""
    hh = a64(h)
    return 1.0 + exp_arg(_gelu_tanh_arg(hh) if kind == "tanh" else 0.5 * hh * hh)


@case("linear_gelu_fwd")
def _(draw):
    M, K, N = dim(draw, 0, 4), dim(draw, 0, 4), dim(draw, 0, 4)
    x, w = hostile(draw, (M, K), GELU_EDGES), hostile(draw, (N, K))
    b = hostile(draw, (N,), GELU_EDGES) if draw(st.booleans()) else None
    kind = draw(st.sampled_from(["tanh", "none"]))
    S, Sabs = prod_sum(x, w.T)
    with np.errstate(all="ignore"):
        h = S if b is None else S + a64(b)
        i_h = free_where(Sabs + K * DENORMAL + (0 if b is None else finite_abs(b)), Sabs)
        h32 = h.astype(np.float32)   # a is the activation of the float32 h the kernel returns
        a = _gelu64(h32, kind)
        i_a = i_h * 1.2 + finite_abs(a) * _gelu_scale(h32, kind)
    return Case(lambda: C.linear_gelu_fwd(x, w, b, approximate=kind), [(h, i_h), (a, i_a)],
                dict(x=x, weight=w, bias=b, approximate=kind))


@case("linear_gelu_bwd")
def _(draw):
    M, K, N = dim(draw, 0, 4), dim(draw, 0, 4), dim(draw, 0, 4)
    x, w = hostile(draw, (M, K)), hostile(draw, (N, K))
    h, da = hostile(draw, (M, N), GELU_EDGES), hostile(draw, (M, N))
    kind = draw(st.sampled_from(["tanh", "none"]))
    nx, nw, nb = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    with np.errstate(all="ignore"):
        dh = _gelu_grad64(h, da, kind)
        i_dh = finite_abs(da) * (1.0 + finite_abs(_gelu_grad64(h, np.ones((M, N)), kind))) * _gelu_scale(h, kind) * 4
        dx, _ = prod_sum(dh, w)
        dw, _ = prod_sum(dh.T, x)
        _, i_dx = prod_sum(i_dh + finite_abs(dh), finite_abs(w))
        _, i_dw = prod_sum((i_dh + finite_abs(dh)).T, finite_abs(x))
        fdh = finite_abs(dh)
        # products of a finite dh with a finite w / x that leave the float32 range
        _, o_dx = prod_sum(fdh, finite_abs(w))
        _, o_dw = prod_sum(fdh.T, finite_abs(x))
        i_dx, i_dw = free_where(i_dx + DENORMAL, o_dx), free_where(i_dw + DENORMAL, o_dw)
        db, i_db = dh.sum(0), free_where(i_dh.sum(0) + fdh.sum(0), fdh.sum(0))
    exp = [(dx, i_dx) if nx else None, (dw, i_dw) if nw else None, (db, i_db) if nb else None]
    return Case(lambda: C.linear_gelu_bwd(x, w, h, da, approximate=kind, need_x=nx, need_weight=nw, need_bias=nb),
                exp, dict(x=x, weight=w, h=h, da=da, approximate=kind))


def _heads_args(draw):
    B, T, H, P, G = dim(draw, 0, 2), dim(draw, 0, 3), dim(draw, 1, 2), dim(draw, 1, 2), dim(draw, 1, 3)
    Dh = 2 * P
    kw = {}
    if draw(st.booleans()):
        rd = 2 * dim(draw, 1, P)
        cos, sin = hostile(draw, (T, rd // 2), lo=-1, hi=1), hostile(draw, (T, rd // 2), lo=-1, hi=1)
        kw = dict(rotate=dim(draw, 0, G), cos=cos, sin=sin, rotary_dim=rd,
                  layout=draw(st.sampled_from(["interleaved", "half"])))
    return (B, T, H, Dh, G), kw


@case("heads_split")
def _(draw):
    (B, T, H, Dh, G), kw = _heads_args(draw)
    y = hostile(draw, (B, T, G * H * Dh))
    want = ref.heads_split(y, H, G, **kw)
    parts = ref.heads_split(np.abs(a64(y)), H, G)     # each group's copy, then the rotation's error scale
    rot = kw.get("rotate", 0)
    inter = [rot_inter(parts[g], kw["cos"], kw["sin"], kw["rotary_dim"], kw["layout"]) if g < rot else None
             for g in range(G)]
    return Case(lambda: C.heads_split(y, H, groups=G, **kw), [(w_, i_) for w_, i_ in zip(want, inter)],
                dict(y=y, n_heads=H, groups=G, **kw))


@case("heads_merge")
def _(draw):
    (B, T, H, Dh, G), kw = _heads_args(draw)
    xs = [hostile(draw, (B, H, T, Dh)) for _ in range(G)]
    want = ref.heads_merge(xs, **kw)
    rot = kw.get("rotate", 0)
    inter = ref.heads_merge([rot_inter(x, kw["cos"], kw["sin"], kw["rotary_dim"], kw["layout"]) if g < rot
                             else np.zeros(x.shape) for g, x in enumerate(xs)])
    return Case(lambda: C.heads_merge(xs, **kw), [(want, inter)], dict(xs=xs, **kw))


@case("heads_rotate")
def _(draw):
    (B, T, H, Dh, G), kw = _heads_args(draw)
    inv = draw(st.booleans())
    y = hostile(draw, (B, T, G * H * Dh))
    want = ref.heads_rotate(y, H, G, inverse=inv, **kw)
    parts = ref.heads_split(np.abs(a64(y)), H, G)
    rot = kw.get("rotate", 0)
    # error scale: the rotation's on the turned groups, 0 (exact copies) on the others, laid out as y
    inter = np.stack([rot_inter(parts[g], kw["cos"], kw["sin"], kw["rotary_dim"], kw["layout"]) if g < rot
                      else np.zeros(parts[g].shape) for g in range(G)])
    inter = inter.transpose(1, 3, 0, 2, 4).reshape(y.shape)

    def call():
        yy = y.copy()
        assert C.heads_rotate(yy, H, groups=G, inverse=inv, **kw) is None
        return yy
    return Case(call, [(want, inter)], dict(y=y, n_heads=H, groups=G, inverse=inv, **kw))


# ---------------------------------------------------------------- the runs

@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_values(name):
    @HYP
    @given(data=st.data())
    def run(data):
        run_case(name, data)
    run()


def test_every_entry_point_is_covered():
    entry = {n for n in dir(C) if not n.startswith("_") and callable(getattr(C, n))}
    missing = sorted(entry - CONFIG - OTHER_AREA - set(CASES))
    assert not missing, f"entry points without a hostile-value case: {missing}"
    assert not set(CASES) - entry, f"cases of no entry point: {sorted(set(CASES) - entry)}"



# ---------------------------------------------------------------- the twins' semantics are torch's

def _same_specials(got, want, what):
    """NaN where torch has NaN, the same infinities, finite values close."""
    got, want = a64(got), a64(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN at {np.isnan(got)} vs torch {np.isnan(want)}"
    assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)]), f"{what}: infinities differ"
    fin = np.isfinite(want)
    assert np.isfinite(got[fin]).all(), f"{what}: non-finite where torch is finite"
    # semantics, not precision: torch's own forms cancel in the tails (gelu(-10) = -0 there)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-6, atol=1e-12, err_msg=what)


def test_twins_follow_torch():
    """The twins' NaN / inf semantics, checked against torch in float64 (no float32
    overflow in either): activations and their gradients at the special values,
    softmax / log_softmax / cross-entropy rows with NaN, +-inf and all -inf,
    LayerNorm, dropout, the division gradient, AdamW / SGD with NaN and inf
    gradients, products with 0 * inf."""
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    t64 = lambda a, grad=False: torch.tensor(np.asarray(a, np.float64), requires_grad=grad)
    x = np.array([NAN, INF, -INF, 0.0, -0.0, 1e-40, 1e30, -1e30, 3e38, -3e38, -10.0, 10.0, 1.5, -0.7])
    g = np.linspace(-2.0, 2.0, x.size)
    for name, tf, twin, twin_grad in [
            ("relu", torch.relu, ref.relu, ref.relu_grad),
            ("gelu tanh", lambda t: tF.gelu(t, approximate="tanh"), ref.gelu_tanh, ref.gelu_tanh_grad),
            ("gelu erf", tF.gelu, ref.gelu_erf, ref.gelu_erf_grad),
            ("silu", tF.silu, ref.silu, ref.silu_grad)]:
        xt = t64(x, True)
        y = tf(xt)
        y.backward(t64(g))
        _same_specials(twin(x), y.detach().numpy(), name)
        _same_specials(twin_grad(x, g), xt.grad.numpy(), name + " grad")

    rows = np.array([[NAN, 1.0, 2.0], [INF, 1.0, 2.0], [-INF, -INF, -INF], [-INF, 1.0, 2.0], [INF, INF, 0.0],
                     [-3e38, 3e38, 0.0], [1.0, 2.0, 3.0]])
    G = np.linspace(-1.0, 1.0, rows.size).reshape(rows.shape)
    for name, tf, twin, twin_grad in [("softmax", torch.softmax, ref.softmax, ref.softmax_grad),
                                      ("log_softmax", torch.log_softmax, ref.log_softmax, ref.log_softmax_grad)]:
        xt = t64(rows, True)
        y = tf(xt, -1)
        y.backward(t64(G))
        _same_specials(twin(rows), y.detach().numpy(), name)
        _same_specials(twin_grad(twin(rows), G), xt.grad.numpy(), name + " grad")

    # cross-entropy: a NaN, a +inf, an all -inf counted row is NaN; -inf at the target is +inf
    for logits, t in [(rows[:1], [1]), (rows[1:2], [1]), (rows[2:3], [0]), (rows[3:4], [0]), (rows[3:4], [1]),
                      (rows[5:7], [0, 2])]:
        xt = t64(logits, True)
        loss = tF.cross_entropy(xt, torch.tensor(t))
        loss.backward()
        _same_specials(ref.cross_entropy_rows(logits, np.array(t))[0], loss.detach().numpy(), f"xent {logits}")
        _same_specials(ref.cross_entropy_grad(logits, np.array(t), 1.0, len(t)), xt.grad.numpy(), "xent grad")
    # the one deliberate difference: an ignored row's gradient is 0 in the fused kernel; torch's
    # unfused log_softmax + nll_loss sends 0 * exp(NaN) = NaN into an ignored row with a NaN logit
    both = np.array([[NAN, 1.0], [1.0, 2.0]])
    assert np.array_equal(ref.cross_entropy_grad(both, np.array([-100, 0]), 1.0, 1)[0], [0.0, 0.0])
    assert np.array_equal(C.cross_entropy_bwd(both.astype(np.float32), np.array([-100, 0]),
                                              np.array([0, 2.3132617], np.float32), 1.0, 1)[0], [0.0, 0.0])

    ln_x = np.array([[INF, 1.0, 2.0], [NAN, 0.0, 1.0], [1.0, 2.0, 4.0]])
    _same_specials(ref.layer_norm(ln_x), tF.layer_norm(t64(ln_x), (3,)).numpy(), "layer_norm")

    # dropout is a product: a dropped NaN / inf is NaN
    xt = t64(np.array([NAN, INF, -INF] * 20))
    y = tF.dropout(xt, 0.5, training=True).numpy()
    assert np.isnan(y[0::3]).all() and np.isnan(ref.dropout(xt.numpy(), np.arange(60) % 2 == 0, 0.5)[1::2]).all()
    assert np.isnan(y[1:][y[1:] == 0]).all() and np.isnan(y).sum() > 20

    # division gradient, torch's order -g ((a / b) / b), in float32 as the kernel
    a32, b32 = torch.tensor([1e-30, 1e30], requires_grad=True), torch.tensor([1e-30, 1e30], requires_grad=True)
    (a32 / b32).backward(torch.tensor([1.0, 1e30]))
    _same_specials(C.binary_bwd(a32.detach().numpy(), b32.detach().numpy(), np.array([1.0, 1e30], np.float32),
                                "div")[1], b32.grad.numpy(), "div grad (float32)")

    # optimizers: NaN / inf gradients give NaN parameters (and moments)
    p0 = np.array([1.0, -2.0, 0.5, 3.0, 1.0])
    gr = np.array([NAN, INF, -INF, 1e30, 0.0])
    pt = t64(p0, True)
    pt.grad = t64(gr)
    opt = torch.optim.AdamW([pt], lr=1e-2, weight_decay=0.01)
    opt.step()
    want_p, want_m, want_v = ref.adamw_step(p0, gr, np.zeros(5), np.zeros(5), 1e-2, 0.9, 0.999, 1e-8, 0.01, 1)
    _same_specials(want_p, pt.detach().numpy(), "adamw param")
    _same_specials(want_m, opt.state[pt]["exp_avg"].numpy(), "adamw m")
    _same_specials(want_v, opt.state[pt]["exp_avg_sq"].numpy(), "adamw v")
    pt = t64(p0, True)
    pt.grad = t64(gr)
    opt = torch.optim.SGD([pt], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()
    _same_specials(ref.sgd_step(p0, gr, None, 0.1, 0.9, 0.0, 0.01, False, True)[0], pt.detach().numpy(), "sgd")

    # clip_grad_norm scales non-finite norms too (float32, relpos against torch)
    for bad in (INF, NAN):
        gs = [np.array([1.0, bad, -2.0], np.float32), np.array([[0.5, 3.0]], np.float32)]
        ts = [torch.zeros(g_.shape, requires_grad=True) for g_ in gs]
        for t_, g_ in zip(ts, gs):
            t_.grad = torch.tensor(g_)
        ps = [nn.Parameter(np.zeros(g_.shape, np.float32)) for g_ in gs]
        for p_, g_ in zip(ps, gs):
            p_.grad = g_.copy()
        tn = float(torch.nn.utils.clip_grad_norm_(ts, 1.0))
        n = optim.clip_grad_norm(ps, 1.0)
        assert (math.isnan(tn) and math.isnan(n)) or tn == n
        for p_, t_ in zip(ps, ts):
            _same_specials(p_.grad, t_.grad.numpy(), f"clip_grad_norm with {bad}")

    # products: 0 * inf = NaN, inf + (-inf) = NaN, NaN anywhere in a dot product
    A = np.array([[0.0, 1.0], [INF, 1.0], [INF, -INF], [NAN, 0.0]])
    B = np.array([[INF, 2.0], [1.0, 1.0]])
    _same_specials(prod_sum(A, B)[0], (t64(A) @ t64(B)).numpy(), "matmul")

# ---------------------------------------------------------------- regressions (each failed before its fix)

@pytest.fixture(params=[False, True], ids=["simd", "portable"])
def path(request):
    C.force_portable(request.param)
    yield request.param
    C.force_portable(False)


def test_relu_propagates_nan(path):
    """relu(nan) was 0 (x > 0 ? x : 0); torch gives nan. Its backward passes the
    gradient through a NaN input, as torch's threshold_backward (x <= 0 is false)."""
    x = np.array([np.nan, -np.nan, -1.0, 0.0, 2.0, np.inf, -np.inf], np.float32)
    y = C.relu_fwd(x)
    assert np.isnan(y[:2]).all() and np.array_equal(y[2:], [0, 0, 2, np.inf, 0])
    dx = C.relu_bwd(x, np.full(7, 3.0, np.float32))
    assert np.array_equal(dx, [3, 3, 0, 0, 3, 3, 0])


def test_gelu_tanh_grad_of_huge_finite_x(path):
    """gelu'(x) (tanh form) was NaN for |x| > ~1.8e19: 2 x s (1 - s) du/dx formed 0 * inf
    (du/dx overflows with x^2); the exact value is 1 (x > 0) or 0 (x < 0). Still NaN at
    +-inf, as torch."""
    x = np.array([1e30, -1e30, 3e38, -3e38, 2e19, -2e19, np.inf, -np.inf], np.float32)
    dx = C.gelu_bwd(x, np.ones(8, np.float32), "tanh")
    assert np.array_equal(dx[:6], [1, 0, 1, 0, 1, 0]) and np.isnan(dx[6:]).all()


@pytest.mark.parametrize("op", ["div", "rdiv"])
def test_div_grad_of_tiny_divisor(path, op):
    """d(a / b)/db was -g a / (b b): b b underflows to 0 for |b| < 1e-19 (and g a
    overflows), giving inf where the result is a float; torch's -g ((a / b) / b) is
    used now (also on the NumPy broadcasting path of F.div)."""
    a = np.array([1e-30, 1e-20, 1e30], np.float32)
    b = np.array([1e-30, 1e-20, 1e30], np.float32)
    g = np.array([1.0, 1.0, 1e30], np.float32)
    small, big = (b, a) if op == "div" else (a, b)   # rdiv is b / a: its divisor is a
    d = C.binary_bwd(big, small, g, op)[1 if op == "div" else 0]
    assert np.allclose(d, [-1e30, -1e20, -1e-30 * 1e30], rtol=1e-6), d


def test_div_grad_numpy_broadcast_path():
    import relpos.functional as F
    from relpos import Tensor
    a = Tensor(np.full((2, 1), 1e-30, np.float32), requires_grad=True)
    b = Tensor(np.full((1, 3), 1e-30, np.float32), requires_grad=True)
    F.div(a, b).sum().backward()
    assert np.allclose(b.grad, -2e30, rtol=1e-6), b.grad


@pytest.mark.parametrize("bwd", [False, True])
def test_dropout_keeps_nan_and_inf_of_dropped_elements(path, bwd):
    """A dropped element was set to 0 (a select); torch multiplies by the mask, so a
    dropped NaN or inf gives NaN."""
    n, p, seed = 64, 0.5, 7
    keep = C.dropout_mask(n, p, seed)
    x = np.full(n, np.nan, np.float32)
    x[::2] = np.inf
    y = (C.dropout_bwd if bwd else C.dropout_fwd)(x, p, seed)
    even = np.arange(n) % 2 == 0
    assert 0 < keep.sum() < n
    assert np.array_equal(np.isinf(y), keep & even) and np.array_equal(np.isnan(y), ~(keep & even))


def test_cope_grad_keeps_zero_times_inf(path):
    """cope_bwd skipped terms whose coefficient is 0, so an infinite key behind a
    saturated gate (ds = 0) or an infinite row of e with dz = 0 left finite gradients;
    an autograd framework forms 0 * inf = NaN there."""
    q = np.ones((1, 1, 1, 2), np.float32)
    k = np.array([[[[np.inf, 1.0]]]], np.float32)          # gate sigmoid(inf) = 1: ds = 0
    e = np.ones((2, 2), np.float32)
    g = np.ones((1, 1, 1, 1), np.float32)
    dq, dk, de = C.cope_bwd(q, k, e, g)
    assert np.isnan(dq[..., 0]).all() and np.isfinite(dq[..., 1]).all() and np.isfinite(de).all()
    k2 = np.zeros((1, 1, 1, 2), np.float32)
    e2 = np.array([[1.0, 1.0], [np.inf, 1.0], [1.0, 1.0]], np.float32)   # row 2 unused (dz = 0)
    dq, dk, de = C.cope_bwd(q, k2, e2, g)
    assert np.isnan(dq[..., 0]).all() and np.isfinite(de[0]).all()


def test_cope_nan_position_is_nan_everywhere_downstream(path):
    """A NaN gate made a NaN position, cast to an index by (int64_t)NaN (undefined
    behaviour; on x86 index 2^63, read as z[0] by wrapping); its derivative was taken
    as 0, so the other keys' gradients stayed finite. Now: index 0 with a NaN weight
    (NaN out) and a NaN derivative (NaN for every key of the window)."""
    q = np.ones((1, 1, 1, 2), np.float32)
    k = np.array([[[[1.0, 0.5], [np.nan, 1.0], [0.2, 0.3]]]], np.float32)
    e = np.ones((3, 2), np.float32)
    out = C.cope_fwd(q, k, e, q_offset=2)
    assert np.isnan(out[..., :2]).all() and np.isfinite(out[..., 2]).all()
    dq, dk, de = C.cope_bwd(q, k, e, np.ones((1, 1, 1, 3), np.float32), q_offset=2)
    assert np.isnan(dk).all() and np.isnan(dq).all()


@pytest.mark.parametrize("call, name, shown", [
    (lambda: C.rope_tables(np.ones(2), 3, pos_scale=np.nan), "pos_scale", "got nan"),
    (lambda: C.xpos_scale(2, 3, scale_base=np.inf), "scale_base", "got inf"),
    (lambda: C.xpos_scale(2, 3, gamma=np.nan), "gamma", "got nan"),
    (lambda: C.xpos_scale(2, 3, center=-np.inf), "center", "got -inf"),
    (lambda: C.sinusoidal_table(3, 4, base=np.inf), "base", "got inf"),
    (lambda: C.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), beta=0.5), "beta", "beta=0.5"),
    (lambda: C.add_layer_norm_fwd(*[np.ones((1, 2), np.float32)] * 2, np.ones(2, np.float32),
                                  np.ones(2, np.float32), np.nan), "eps", "got nan"),
    (lambda: C.fma_peak_gflops(seconds=-1.0), "seconds", "got -1.0"),
    (lambda: C.back_off(np.nan), "seconds", "got nan"),
])
def test_float_argument_messages_say_what_came(call, name, shown):
    """PyErr_Format has no %g: these messages ended in a literal "got %g"."""
    with pytest.raises(ValueError, match=name) as info:
        call()
    msg = str(info.value)
    assert "%" not in msg and shown in msg, msg


# ---------------------------------------------------------------- public ops (relpos.functional, autograd)

import relpos.functional as F  # noqa: E402
from relpos import Tensor, nn, optim  # noqa: E402

PUBLIC_EXAMPLES = max(N_EXAMPLES // 2, 10)
PUB = settings(HYP, max_examples=PUBLIC_EXAMPLES)


class Pub:
    """fn(**tensors) -> Tensor or tuple of Tensors; inputs: name -> ndarray (each a
    leaf Tensor with requires_grad); G: upstream gradient(s), one per output;
    outs: (want, error scale) per output; grads: name -> (want, error scale).
    direct=True: fn(**arrays) returns arrays (optimizers, clipping), no autograd."""

    def __init__(self, fn, inputs, G, outs, grads=None, direct=False, wide=()):
        self.fn, self.inputs, self.G, self.outs, self.grads, self.direct = fn, inputs, G, outs, grads, direct
        self.wide = wide


PUBLIC = {}


def public(name, rtol=5e-5, atol=1e-42):
    def deco(fn):
        PUBLIC[name] = (fn, rtol, atol)
        return fn
    return deco


def run_public(name, data):
    fn, rtol, atol = PUBLIC[name]
    c = fn(data.draw)
    for portable in (False, True):
        path = "portable" if portable else "simd"
        C.force_portable(portable)
        try:
            if c.direct:
                got = c.fn(**{n: a.copy() for n, a in c.inputs.items()})
                for k, (g, e) in enumerate(zip(got, c.outs)):
                    judge(name, path, [g], [e], rtol, atol, c.inputs, k in c.wide)
                continue
            ts = {n: Tensor(a.copy(), requires_grad=True) for n, a in c.inputs.items()}
            out = c.fn(**ts)
            outs = out if isinstance(out, tuple) else (out,)
            judge(name, path, [o.numpy() for o in outs], c.outs, rtol, atol, c.inputs)
            if len(outs) == 1:
                outs[0].backward(np.asarray(c.G[0], np.float32))
            else:
                total = None
                for o, g in zip(outs, c.G):
                    term = F.sum(o * Tensor(np.asarray(g, np.float32)))
                    total = term if total is None else total + term
                total.backward()
            for n, e in c.grads.items():
                judge(f"{name} d{n}", path, [ts[n].grad], [e], rtol, atol, dict(c.inputs, G=c.G))
        finally:
            C.force_portable(False)
    COUNTS["F." + name] += 1


def unbroadcast64(g, shape):
    """Sum g over the axes that broadcasting added or stretched, back to shape."""
    g = a64(g)
    while g.ndim > len(shape):
        g = g.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdims=True)
    return g


def pub_shape(draw, lo=1):
    return tuple(dim(draw, lo, 3) for _ in range(dim(draw, 1, 3)))


def _pub_act(kind):
    def build(draw):
        shape = pub_shape(draw)
        x, G = hostile(draw, shape, ACT_SPECIAL[kind]), hostile(draw, shape)
        f = {"relu": F.relu, "silu": F.silu, "tanh": lambda x: F.gelu(x, "tanh"),
             "none": lambda x: F.gelu(x, "none")}[kind]
        return Pub(f, dict(x=x), [G], [act_twin(kind, x)], dict(x=act_twin(kind, x, G)))
    return build


for _k, _n in (("relu", "relu"), ("silu", "silu"), ("tanh", "gelu_tanh"), ("none", "gelu_none")):
    public(_n)(_pub_act(_k))


@public("exp")
def _(draw):
    shape = pub_shape(draw)
    x, G = hostile(draw, shape, EXP_EDGES), hostile(draw, shape)
    with np.errstate(all="ignore"):
        y = np.exp(a64(x))
        iy = np.abs(y) * (1 + exp_arg(x))
        # the saved float32 y: inf beyond 88.72, 0 below -103.97 (times an infinite G: NaN)
        dx = a64(G) * y
        idx = free_where(finite_abs(G) * iy, y, np.where(underflows(y) & np.isinf(a64(G)), np.inf, 0))
    return Pub(F.exp, dict(x=x), [G], [(y, iy)], dict(x=(dx, idx)))


@public("log")
def _(draw):
    shape = pub_shape(draw)
    x, G = hostile(draw, shape, (-1.0, 1.0)), hostile(draw, shape)
    with np.errstate(all="ignore"):
        y = np.log(a64(x))
        dx = a64(G) / a64(x)
    return Pub(F.log, dict(x=x), [G], [(y, None)], dict(x=(dx, None)))


@public("tanh")
def _(draw):
    shape = pub_shape(draw)
    x, G = hostile(draw, shape, GELU_EDGES), hostile(draw, shape)
    with np.errstate(all="ignore"):
        y = np.tanh(a64(x))
        # torch's form g (1 - y^2) from the float32 y: 1 - y^2 errs by ~2u absolutely
        dx = a64(G) * (1 - y * y)
        idx = finite_abs(G) * (np.abs(1 - y * y) + 4)
    return Pub(F.tanh, dict(x=x), [G], [(y, np.abs(y) + 1e-30)], dict(x=(dx, idx)))


def _pub_softmax(log):
    def build(draw):
        shape = pub_shape(draw)
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        x, G = hostile(draw, shape, EXP_EDGES), hostile(draw, shape)
        xm, Gm = np.moveaxis(a64(x), axis, -1), np.moveaxis(a64(G), axis, -1)
        D = xm.shape[-1]
        with np.errstate(all="ignore"):
            arg = exp_arg(xm - _rowmax(xm))
            if log:
                y = ref.log_softmax(xm)
                iy = np.abs(xm - _rowmax(xm)) + np.abs(y) + 4 * D
                dx = ref.log_softmax_grad(y, Gm)
                ey = finite_abs(np.exp(y))
                S = finite_abs(Gm).sum(-1, keepdims=True)
                idx = free_where(finite_abs(Gm) + (ey * (1 + np.nan_to_num(iy, nan=np.inf)) + DENORMAL) * S * (D + 1),
                                 S)
                idx = np.where(underflows(np.exp(y)) & np.isinf(Gm.sum(-1, keepdims=True)), np.nan, idx)
            else:
                y = ref.softmax(xm)
                iy = np.abs(np.nan_to_num(y)) * (D + arg)
                dx = ref.softmax_grad(y, Gm)
                gy = finite_abs(Gm) * np.abs(np.nan_to_num(y)) * (D + arg)
                S = gy.sum(-1, keepdims=True)
                idx = free_where((np.abs(np.nan_to_num(y)) * (D + arg) + DENORMAL) * (finite_abs(Gm) + S) * (D + 1),
                                 S, finite_abs(Gm) + S)
                # y is 0 in float32 below 2^-150: times an infinite G or an infinite sum(G y), NaN
                # (torch too) where float64 has inf
                lost = underflows(y).any(-1, keepdims=True) & np.isinf(Gm).any(-1, keepdims=True)
                idx = np.where(lost, np.nan, idx)
        mv = lambda a: np.moveaxis(a, -1, axis)
        f = (lambda x: F.log_softmax(x, axis)) if log else (lambda x: F.softmax(x, axis))
        return Pub(f, dict(x=x), [G], [(mv(y), mv(iy))], dict(x=(mv(dx), mv(idx))))
    return build


public("softmax")(_pub_softmax(False))
public("log_softmax")(_pub_softmax(True))


def _pub_norm(rms):
    def build(draw):
        shape = pub_shape(draw)
        D = shape[-1]
        x, G = hostile(draw, shape, SQUARE_EDGES), hostile(draw, shape)
        w = hostile(draw, (D,))
        b = None if rms else hostile(draw, (D,))
        (y, iy), (m, _), (rs, irs) = _norm_fwd(x, w, b, float(np.float32(1e-5 if not rms else 1e-6)), rms)
        # the backward uses the forward's float32 statistics: free where they are
        rel = np.where(np.isnan(irs), np.nan, np.nan_to_num(irs / rs, nan=np.inf, posinf=np.inf))[..., None]
        (dx, idx), (dw, idw), bb = _norm_bwd64(x, w, m, rs, G, rms)
        with np.errstate(all="ignore"):
            grads = dict(x=(dx, idx * (1 + rel)), weight=(dw, idw * (1 + np.max(rel, initial=0))))
        inputs = dict(x=x, weight=w)
        if rms:
            f = F.rms_norm
        else:
            inputs["bias"] = b
            grads["bias"] = bb
            f = F.layer_norm
        return Pub(f, inputs, [G], [(y, iy)], grads)
    return build


public("layer_norm")(_pub_norm(False))
public("rms_norm")(_pub_norm(True))


def _mm_scales(a, b):
    """(a @ b, error scale with float32-overflow marks) for matrices or stacks."""
    S, Sabs = prod_sum(a, b)
    K = a64(a).shape[-1]
    return S, free_where(Sabs + K * DENORMAL, Sabs)


@public("linear")
def _(draw):
    L, K, N = pub_shape(draw)[:2], dim(draw, 1, 4), dim(draw, 1, 4)
    x, w, b = hostile(draw, L + (K,)), hostile(draw, (N, K)), hostile(draw, (N,))
    G = hostile(draw, L + (N,))
    x2, G2 = x.reshape(-1, K), G.reshape(-1, N)
    y, iy = _mm_scales(x2, w.T)
    with np.errstate(all="ignore"):
        y, iy = y + a64(b), iy + finite_abs(b)
        dx, idx = _mm_scales(G2, w)
        dw, idw = _mm_scales(G2.T, x2)
        db, idb = a64(G2).sum(0), free_where(finite_abs(G2).sum(0), finite_abs(G2).sum(0))
    return Pub(F.linear, dict(x=x, weight=w, bias=b), [G], [(y.reshape(L + (N,)), iy.reshape(L + (N,)))],
               dict(x=(dx.reshape(x.shape), idx.reshape(x.shape)), weight=(dw, idw), bias=(db, idb)))


@public("matmul")
def _(draw):
    Bt = draw(st.sampled_from([(), (2,), (1, 2)]))
    M, K, N = dim(draw, 1, 4), dim(draw, 1, 4), dim(draw, 1, 4)
    a, b = hostile(draw, Bt + (M, K)), hostile(draw, Bt + (K, N))
    G = hostile(draw, Bt + (M, N))
    y, iy = _mm_scales(a, b)
    da, ida = _mm_scales(G, np.swapaxes(b, -1, -2))
    db, idb = _mm_scales(np.swapaxes(a, -1, -2), G)
    return Pub(F.matmul, dict(a=a, b=b), [G], [(y, iy)], dict(a=(da, ida), b=(db, idb)))


@public("cross_entropy")
def _(draw):
    N, V = dim(draw, 1, 4), dim(draw, 1, 5)
    x = hostile(draw, (N, V), EXP_EDGES)
    t = _targets(draw, N, V)
    G = draw(st.sampled_from([1.0, 1.0, -0.5, 1e30, NAN]))
    loss, lse, count = ref.cross_entropy_rows(x, t)
    keep = t != -100
    with np.errstate(all="ignore"):
        m = _rowmax(x)[:, 0]
        xt = a64(x)[np.arange(N), np.where(keep, t, 0)]
        i_loss = free_where(np.mean(np.abs(m) + np.abs(np.nan_to_num(lse)) + 4 * V + finite_abs(xt))
                            if keep.any() else 0.0, np.where(keep, finite_abs(m - xt), 0).max(initial=0))
        dx = ref.cross_entropy_grad(x, t, G, count)
        sc = abs(float(np.float32(G)) / count) if count else 0.0
        p = np.abs(np.nan_to_num(ref.softmax(x)))
        idx = np.where(keep[:, None], sc * (p * (V + 1 + exp_arg(a64(x) - lse[:, None])) + 1e-33) + sc, 0.0)
    return Pub(lambda logits: F.cross_entropy(logits, t), dict(logits=x), [np.float32(G)], [(loss, i_loss)],
               dict(logits=(dx, idx)))


BIN_SHAPES = [("same", None), ("scalar", None), ("trailing", None), ("general", None)]


def _pub_binary(op):
    def build(draw):
        kind = draw(st.sampled_from(["same", "scalar", "trailing", "general"]))
        shape = pub_shape(draw)
        if kind == "same":
            sa, sb = shape, shape
        elif kind == "scalar":
            sa, sb = shape, (1,)
        elif kind == "trailing":
            sa, sb = shape, shape[-1:]
        else:
            sa, sb = (dim(draw, 1, 3), 1, shape[-1]), (dim(draw, 1, 3), 1)
        if draw(st.booleans()):
            sa, sb = sb, sa
        a, b = hostile(draw, sa), hostile(draw, sb)
        full = np.broadcast_shapes(sa, sb)
        G = hostile(draw, full)
        ab, bb = np.broadcast_to(a, full), np.broadcast_to(b, full)
        with np.errstate(all="ignore"):
            y = _binary_fwd64(op, ab, bb)
            da, db = ref.binary_grads(op, ab, bb, G)
            q = (np.abs(a64(ab) / a64(bb)), np.abs(a64(ab) / a64(bb) / a64(bb))) if op == "div" else ()
            ia = free_where(unbroadcast64(finite_abs(da), sa), unbroadcast64(finite_abs(da), sa))
            den = DENORMAL * finite_abs(G) * 2 if op == "div" else 0.0
            ib = free_where(unbroadcast64(free_where(finite_abs(db) + den, *q), sb), unbroadcast64(finite_abs(db), sb))
            if op == "div":
                # (a / b) / b is 0 in float32 below 2^-150: times an infinite g, NaN (torch too)
                lost = (underflows(q[0]) | underflows(q[1])) & np.isinf(a64(G))
                ib = np.where(unbroadcast64(lost, sb) > 0, np.nan, ib)
        f = {"add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div}[op]
        return Pub(f, dict(a=a, b=b), [G], [(y, None)],
                   dict(a=(unbroadcast64(da, sa), ia), b=(unbroadcast64(db, sb), ib)))
    return build


for _op in ("add", "sub", "mul", "div"):
    public(_op)(_pub_binary(_op))


@public("bias_add")
def _(draw):
    shape = pub_shape(draw)
    x, b, G = hostile(draw, shape), hostile(draw, shape[-1:]), hostile(draw, shape)
    with np.errstate(all="ignore"):
        db = rows_sum(G)
    return Pub(F.bias_add, dict(x=x, bias=b), [G], [(a64(x) + a64(b), None)],
               dict(x=(a64(G), None), bias=(db, free_where(rows_sum(finite_abs(G)), rows_sum(finite_abs(G))))))


@public("scale_neg")
def _(draw):
    shape = pub_shape(draw)
    x, G = hostile(draw, shape), hostile(draw, shape)
    alpha = draw(st.sampled_from([-1.0, 0.5, 0.0, 1e30, NAN, INF]))
    f = F.neg if alpha == -1.0 else (lambda x: F.scale(x, alpha))
    with np.errstate(all="ignore"):
        return Pub(f, dict(x=x), [G], [(alpha * a64(x), None)], dict(x=(alpha * a64(G), None)))


@public("sum_mean")
def _(draw):
    shape = pub_shape(draw)
    axis = draw(st.sampled_from([None] + list(range(len(shape)))))
    mean = draw(st.booleans())
    x = hostile(draw, shape)
    n = x.size if axis is None else shape[axis]
    with np.errstate(all="ignore"):
        y = a64(x).sum(axis=axis) / (n if mean else 1)
        fa = finite_abs(x).sum(axis=axis)
        iy = free_where(fa / (n if mean else 1) * 2, fa)
        oshape = np.shape(y)
        G = hostile(draw, oshape)
        dx = np.broadcast_to(a64(G) if axis is None else np.expand_dims(a64(G), axis), shape) / (n if mean else 1)
    f = (lambda x: F.mean(x, axis)) if mean else (lambda x: F.sum(x, axis))
    return Pub(f, dict(x=x), [G], [(y, iy)], dict(x=(dx, None)))


@public("views")
def _(draw):
    """reshape, transpose, getitem, concat: data movement, exact (a repeated index adds)."""
    shape = (dim(draw, 1, 3), dim(draw, 1, 3))
    x = hostile(draw, shape)
    idx = draw(st.sampled_from([0, -1, slice(None, None, -1), [0, 0]]))
    xt = a64(x).T
    picked = xt[idx] if not isinstance(idx, list) else xt[idx]
    want = np.concatenate([xt.reshape(-1), np.asarray(picked).reshape(-1)])
    G = hostile(draw, want.shape)
    n = xt.size
    where = idx if not isinstance(idx, list) else (np.array(idx),)
    dxt, adxt = a64(G[:n]).reshape(xt.shape).copy(), finite_abs(G[:n]).reshape(xt.shape)
    with np.errstate(all="ignore"):
        np.add.at(dxt, where, a64(G[n:]).reshape(np.shape(picked)))
        np.add.at(adxt, where, finite_abs(G[n:]).reshape(np.shape(picked)))   # a repeated index sums
    f = lambda x: F.concat([F.reshape(F.transpose(x), (-1,)),
                            F.reshape(F.getitem(F.transpose(x), idx), (-1,))])
    return Pub(f, dict(x=x), [G], [(want, None)], dict(x=(dxt.T, free_where(adxt.T, adxt.T))))


@public("embedding")
def _(draw):
    V, D = dim(draw, 1, 4), dim(draw, 1, 3)
    ids = ids_for(draw, pub_shape(draw)[:2], V)
    w = hostile(draw, (V, D))
    G = hostile(draw, ids.shape + (D,))
    dw = ref.embedding_grad(ids, G, V)
    fa = ref.embedding_grad(ids, finite_abs(G), V)
    return Pub(lambda weight: F.embedding(ids, weight), dict(weight=w), [G], [(ref.embedding(ids, w), None)],
               dict(weight=(dw, free_where(fa, fa))))


@public("dropout")
def _(draw):
    shape = pub_shape(draw)
    x, G = hostile(draw, shape), hostile(draw, shape)
    p, seed = draw(DROP_P), draw(SEED64)
    mask = ref.dropout_mask(x.size, p, seed).reshape(shape)
    return Pub(lambda x: F.dropout(x, p, seed), dict(x=x), [G], [(ref.dropout(x, mask, p), None)],
               dict(x=(ref.dropout(G, mask, p), None)))


@public("add_layer_norm")
def _(draw):
    shape = pub_shape(draw)
    D = shape[-1]
    x, y = hostile(draw, shape, SQUARE_EDGES), hostile(draw, shape, SQUARE_EDGES)
    w, b = hostile(draw, (D,)), hostile(draw, (D,))
    Gs, Gh = hostile(draw, shape), hostile(draw, shape)
    with np.errstate(all="ignore"):
        s64 = a64(x) + a64(y)
    s32 = s64.astype(np.float32)
    (h, ih), (m, _), (rs, irs) = _norm_fwd(s32, w, b, float(np.float32(1e-5)), False)
    rel = np.where(np.isnan(irs), np.nan, np.nan_to_num(irs / rs, nan=np.inf, posinf=np.inf))[..., None]
    (dx, idx), (dw, idw), (db, idb) = _norm_bwd64(s32, w, m, rs, Gh, False)
    with np.errstate(all="ignore"):
        dx, idx = dx + a64(Gs), idx * (1 + rel) + finite_abs(Gs)
        idw = idw * (1 + np.max(rel, initial=0))
    return Pub(lambda x, y, weight, bias: F.add_layer_norm(x, y, weight, bias), dict(x=x, y=y, weight=w, bias=b),
               [Gs, Gh], [(s64, None), (h, ih)], dict(x=(dx, idx), y=(dx, idx), weight=(dw, idw), bias=(db, idb)))


@public("linear_gelu")
def _(draw):
    M, K, N = dim(draw, 1, 4), dim(draw, 1, 4), dim(draw, 1, 4)
    x, w = hostile(draw, (M, K), GELU_EDGES), hostile(draw, (N, K))
    b = hostile(draw, (N,), GELU_EDGES)
    kind = draw(st.sampled_from(["tanh", "none"]))
    G = hostile(draw, (M, N))
    S, i_h = _mm_scales(x, w.T)
    with np.errstate(all="ignore"):
        h = S + a64(b)
        i_h = i_h + finite_abs(b)
        h32 = h.astype(np.float32)
        a = _gelu64(h32, kind)
        i_a = i_h * 1.2 + finite_abs(a) * _gelu_scale(h32, kind)
        # the backward uses the float32 h it saved
        dh = _gelu_grad64(h32, G, kind)
        i_dh = finite_abs(G) * (1.0 + finite_abs(_gelu_grad64(h32, np.ones((M, N)), kind))) * _gelu_scale(h32, kind)
        i_dh = np.where(np.isnan(i_h), np.nan, i_dh * 4 + finite_abs(G) * i_h * 2)
        dx, o_dx = _mm_scales(dh, w)
        dw, o_dw = _mm_scales(dh.T, x)
        _, i_dx = prod_sum(np.nan_to_num(i_dh, nan=0) + finite_abs(dh), finite_abs(w))
        _, i_dw = prod_sum((np.nan_to_num(i_dh, nan=0) + finite_abs(dh)).T, finite_abs(x))
        anynan_col = np.isnan(i_dh).any(0)
        i_dx = np.where(np.isnan(o_dx) | np.isnan(i_dh).any(1, keepdims=True), np.nan, i_dx + DENORMAL)
        i_dw = np.where(np.isnan(o_dw) | anynan_col[:, None], np.nan, i_dw + DENORMAL)
        db = dh.sum(0)
        i_db = np.where(anynan_col, np.nan, free_where((np.nan_to_num(i_dh, nan=0) + finite_abs(dh)).sum(0),
                                                       finite_abs(dh).sum(0)))
    return Pub(lambda x, weight, bias: F.linear_gelu(x, weight, bias, kind), dict(x=x, weight=w, bias=b), [G],
               [(a, i_a)], dict(x=(dx, i_dx), weight=(dw, i_dw), bias=(db, i_db)))


@public("heads_linear")
def _(draw):
    B, H, T, Dh, N = dim(draw, 1, 2), dim(draw, 1, 2), dim(draw, 1, 3), dim(draw, 1, 3), dim(draw, 1, 4)
    o, w, b = hostile(draw, (B, H, T, Dh)), hostile(draw, (N, H * Dh)), hostile(draw, (N,))
    G = hostile(draw, (B, T, N))
    merged = a64(o).transpose(0, 2, 1, 3).reshape(B, T, H * Dh)
    y, iy = _mm_scales(merged, np.broadcast_to(a64(w).T, (B,) + w.T.shape))
    with np.errstate(all="ignore"):
        y, iy = y + a64(b), iy + finite_abs(b)
        dm, idm = _mm_scales(G, np.broadcast_to(a64(w), (B,) + w.shape))
        split = lambda t: t.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
        G2, m2 = G.reshape(-1, N), merged.reshape(-1, H * Dh)
        dw, idw = _mm_scales(G2.T, m2)
        db = a64(G2).sum(0)
        idb = free_where(finite_abs(G2).sum(0), finite_abs(G2).sum(0))
    return Pub(lambda o, weight, bias: F.heads_linear(o, weight, bias), dict(o=o, weight=w, bias=b), [G],
               [(y, iy)], dict(o=(split(dm), split(idm)), weight=(dw, idw), bias=(db, idb)))


@public("qkv_heads")
def _(draw):
    B, T, H, Dh = dim(draw, 1, 2), dim(draw, 1, 3), dim(draw, 1, 2), 2 * dim(draw, 1, 2)
    d = H * Dh
    x = hostile(draw, (B, T, d))
    ws = [hostile(draw, (d, d)) for _ in range(3)]
    bs = [hostile(draw, (d,)) for _ in range(3)]
    rope = None
    if draw(st.booleans()):
        rd = 2 * dim(draw, 1, Dh // 2)
        rope = (hostile(draw, (T, rd // 2), lo=-1, hi=1), hostile(draw, (T, rd // 2), lo=-1, hi=1), rd,
                draw(st.sampled_from(["interleaved", "half"])))
    Gs = [hostile(draw, (B, H, T, Dh)) for _ in range(3)]
    outs, grads = [], {}
    dx, idx = np.zeros((B, T, d)), np.zeros((B, T, d))
    for i, (w, b, G, nm) in enumerate(zip(ws, bs, Gs, ("q", "k", "v"))):
        y, iy = _mm_scales(x, np.broadcast_to(a64(w).T, (B, d, d)))
        with np.errstate(all="ignore"):
            y, iy = y + a64(b), iy + finite_abs(b)
            heads = lambda t: t.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
            yh, iyh = heads(y), heads(iy)
            if rope is not None and i < 2:
                cos, sin, rd, layout = rope
                # a pair's outputs are free when either input is (a rotation mixes the pair)
                ones = np.ones_like(a64(cos))
                dep = rot_inter(np.isnan(iyh) * 1.0, ones, ones, rd, layout) > 0
                iyh = np.where(dep, np.nan, rot_inter(np.nan_to_num(iyh, nan=0) + finite_abs(yh), cos, sin, rd,
                                                      layout))
                yh = ref.rope_rotate_tables(yh, cos, sin, rd, layout)
                Gm = ref.heads_merge([G], rotate=1, cos=cos, sin=sin, rotary_dim=rd, layout=layout)
                iGm = ref.heads_merge([rot_inter(G, cos, sin, rd, layout)])
            else:
                Gm = ref.heads_merge([G])
                iGm = finite_abs(Gm)
            outs.append((yh, iyh))
            dxi, idxi = _mm_scales(Gm, np.broadcast_to(a64(w), (B, d, d)))
            _, idxi2 = prod_sum(np.nan_to_num(iGm, nan=0), np.broadcast_to(finite_abs(w), (B, d, d)))
            dx, idx = dx + dxi, idx + np.where(np.isnan(idxi), np.nan, idxi2 + idxi) + np.where(
                np.isnan(iGm).any(-1, keepdims=True), np.nan, 0)
            G2, x2 = Gm.reshape(-1, d), a64(x).reshape(-1, d)
            dw, idw = _mm_scales(G2.T, x2)
            _, idw2 = prod_sum(np.nan_to_num(iGm, nan=0).reshape(-1, d).T, finite_abs(x2))
            # a rotated gradient that left the float32 range (NaN scale) frees its column
            col = np.isnan(iGm).reshape(-1, d).any(0)
            grads["w" + nm] = (dw, np.where(np.isnan(idw) | col[:, None], np.nan, idw + idw2))
            grads["b" + nm] = (G2.sum(0), np.where(col, np.nan, free_where(
                np.nan_to_num(iGm, nan=0).reshape(-1, d).sum(0), finite_abs(G2).sum(0))))
    grads["x"] = (dx, idx)
    return Pub(lambda x, wq, wk, wv, bq, bk, bv: F.qkv_heads(x, wq, wk, wv, bq, bk, bv, n_heads=H, rope=rope),
               dict(x=x, wq=ws[0], wk=ws[1], wv=ws[2], bq=bs[0], bk=bs[1], bv=bs[2]), Gs, outs, grads)


@public("clip_grad_norm")
def _(draw):
    grads = [hostile(draw, pub_shape(draw)) for _ in range(dim(draw, 1, 3))]
    max_norm = draw(st.sampled_from([1.0, 1.0, 0.0, 1e-30, 1e30]))
    total = ref.grad_norm(grads)
    with np.errstate(all="ignore"):
        coef = max_norm / (total + 1e-6)
        if coef != coef:
            want = [np.full(g.shape, np.nan) for g in grads]
        elif coef < 1.0:
            want = [a64(g) * float(np.float32(coef)) for g in grads]
        else:
            want = [a64(g) for g in grads]

    def fn(**gs):
        ps = []
        for i in range(len(grads)):
            p = nn.Parameter(np.zeros(grads[i].shape, np.float32))
            p.grad = gs[f"g{i}"]
            ps.append(p)
        t = optim.clip_grad_norm(ps, max_norm)
        return [t] + [p.grad for p in ps]
    return Pub(fn, {f"g{i}": g for i, g in enumerate(grads)}, None, [(total, None)] + [(w, None) for w in want],
               direct=True, wide=(0,))


@public("optimizers")
def _(draw):
    shape = pub_shape(draw)
    p, g = hostile(draw, shape), hostile(draw, shape, SQUARE_EDGES)
    which = draw(st.sampled_from(["sgd", "sgd_momentum", "adamw"]))
    lr = draw(st.sampled_from([0.1, 1e-3, 0.0]))
    if which == "adamw":
        want = ref.adamw_step(p, g, np.zeros(shape), np.zeros(shape), lr, 0.9, 0.999, 1e-8, 0.01, 1)[0]
        with np.errstate(all="ignore"):
            # first step: m = 0.1 g, v = 0.001 g^2, the update lr g / (|g| + eps) (sign(g) lr)
            inter = free_where(finite_abs(p) + lr * 4 + DENORMAL, finite_abs(g) * finite_abs(g))
    else:
        mom = 0.9 if which == "sgd_momentum" else 0.0
        want = ref.sgd_step(p, g, None, lr, mom, 0.0, 0.0, False, True)[0]
        inter = finite_abs(p) + lr * finite_abs(g) * 2

    def fn(p, g):
        prm = nn.Parameter(p)
        prm.grad = g
        opt = (optim.AdamW([prm], lr=lr) if which == "adamw"
               else optim.SGD([prm], lr=lr, momentum=0.9 if which == "sgd_momentum" else 0.0))
        opt.step()
        return [prm.data]
    return Pub(fn, dict(p=p, g=g), None, [(want, inter)], direct=True)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_hostile_public_ops(name):
    @PUB
    @given(data=st.data())
    def run(data):
        run_public(name, data)
    run()


# ---------------------------------------------------------------- counts (last: after every case ran)

def test_report_counts():
    """Examples run per entry point / public op (run the whole file; -s prints them)."""
    expected = {n: N_EXAMPLES for n in CASES} | {"F." + n: PUBLIC_EXAMPLES for n in PUBLIC}
    if set(COUNTS) != set(expected):
        pytest.skip("only part of the file ran; the counts are checked on a full run")
    print(f"\nhostile values: {len(CASES)} entry points x {N_EXAMPLES} examples, {len(PUBLIC)} public ops x "
          f"{PUBLIC_EXAMPLES} (each on the SIMD and the portable path):", dict(sorted(COUNTS.items())))
    low = {n: c for n, c in COUNTS.items() if c < expected[n]}
    assert not low, f"cases that ran fewer examples than asked: {low}"
