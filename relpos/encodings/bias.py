"""Channel B: encodings that add a bias ``b_h(i, j)`` to the attention logits.

The Toeplitz biases (ALiBi, T5 buckets, KERPLE, Sandwich, learned per-distance
bias) depend on ``d = i - j`` only. Each is a :class:`DistanceBias`: it
implements ``bias(d)`` over an array of distances with relpos ops (Sandwich,
which has no parameters, with a C kernel), and relpos tabulates it over the
``Tq + Tk - 1`` distances of the attention window and feeds the table to the
fused kernel as ``bias_vec``. FIRE depends on ``i`` as well: its MLP of one
input is piecewise linear, and the kernels evaluate it pair by pair from
O(Tq + Tk + H * width) numbers (the ``pwl_*`` channel); no (Tq, Tk) input is built.

The bias is added to ``scale * q.k`` and is not multiplied by the scale.

Notebook helpers: :func:`alibi_slopes`, :func:`t5_bucket`, :func:`relative_positions`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _C
from .. import functional as F
from ..nn import Parameter
from ..tensor import Function, Tensor, no_grad
from .base import DistanceBias, Encoding, distance_window
from .registry import register

__all__ = ["alibi_slopes", "t5_bucket", "relative_positions"]


# ---- notebook helpers ----------------------------------------------------------

def _pos_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes m_h (Press et al. 2022) -> (n_heads,) float64 ndarray.

    For n_heads a power of two, ``m_h = 2^(-8(h+1)/n_heads)``. Otherwise, with
    ``c`` the largest power of two below n_heads: the c slopes of ``c`` heads,
    followed by every other slope of ``2c`` heads (``slopes(2c)[0::2][:n_heads-c]``).
    Example: 12 heads -> 2^-1 ... 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    """
    n_heads = _pos_int(n_heads, "n_heads")

    def pow2(n):
        return 2.0 ** (-8.0 * np.arange(1, n + 1) / n)

    c = 1 << (n_heads.bit_length() - 1)
    if c == n_heads:
        return pow2(n_heads)
    return np.concatenate([pow2(c), pow2(2 * c)[0::2][:n_heads - c]])


def t5_bucket(relative_position, num_buckets: int = 32, max_distance: int = 128,
              bidirectional: bool = True) -> np.ndarray:
    """T5 bucket index (Raffel et al. 2020) of each relative position ``j - i``.

    relative_position: int array of any shape (key position minus query
    position). Returns an int64 array of the same shape. Half the buckets hold
    exact distances ``< num_buckets/2`` (a quarter each way when bidirectional),
    the rest are log-spaced up to ``max_distance``; farther distances share the
    last bucket. Computed in double precision.
    """
    rel = np.asarray(relative_position)
    if rel.dtype.kind not in "iu":
        raise TypeError(f"relative_position must be integers; got dtype {rel.dtype}")
    num_buckets = _pos_int(num_buckets, "num_buckets")
    max_distance = _pos_int(max_distance, "max_distance")
    return _C.t5_bucket(rel.astype(np.int64), num_buckets=num_buckets, max_distance=max_distance,
                        bidirectional=bool(bidirectional))


def relative_positions(Tq: int, Tk: int, q_offset: int = 0) -> np.ndarray:
    """(Tq, Tk) int64 matrix of ``i - j``: query i at absolute position
    ``q_offset + i``, key j at position j (positive = key in the past)."""
    Tq = _pos_int(Tq, "Tq", 0)
    Tk = _pos_int(Tk, "Tk", 0)
    q_offset = _pos_int(q_offset, "q_offset", 0)
    return (q_offset + np.arange(Tq, dtype=np.int64))[:, None] - np.arange(Tk, dtype=np.int64)[None, :]


# ---- encodings -------------------------------------------------------------------

def _check_flag(value, name, allow_none=True):
    """A bool option (or None where it means "follow the mask"): "no" or 2 must not pass as True."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool{' or None' if allow_none else ''}; got {value!r}")
    return bool(value)


@register
class ALiBi(DistanceBias):
    """ALiBi (Press, Smith, Lewis, ICLR 2022): ``b = -m_h (i - j)`` (causal) or
    ``-m_h |i - j|`` (symmetric, for bidirectional attention).

    Options:
        symmetric (bool or None, None): True always uses ``|i - j|``; False
            always uses the causal form ``-m_h (i - j)``, which is defined with
            a causal mask only (bidirectional attention raises ValueError);
            None follows the mask: causal form when causal=True, symmetric
            when causal=False (``bias_matrix`` then takes causal=True unless told).
        learnable (bool, False): make the slopes a Parameter (initialised to
            the paper's slopes).
    Context: n_heads (required). Slopes: :func:`alibi_slopes`.
    """

    name = "alibi"
    paper = "Press, Smith, Lewis 2022 (ALiBi, arXiv 2108.12409)"
    learnable = ("slopes (if learnable=True)",)

    def __init__(self, symmetric=None, learnable=False, n_heads=None, head_dim=None, d_model=None,
                 max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self.symmetric = _check_flag(symmetric, "symmetric")
        self.learn_slopes = _check_flag(learnable, "learnable", allow_none=False)
        self.causal_only = self.symmetric is False
        slopes = alibi_slopes(n_heads).astype(np.float32)
        if self.learn_slopes:
            self.slopes = Parameter(slopes)
        else:
            self.register_buffer("slopes", slopes, persistent=False)

    def check_causal(self, causal: bool) -> None:
        if not causal and self.symmetric is False:
            raise ValueError("encoding 'alibi' with symmetric=False is causal only (-m(i-j) grows without "
                             "bound for future keys); use causal=True, or symmetric=True / None")

    def bias(self, d, causal=True):
        """-m_h max(d, 0) (causal form: future keys are masked anyway) or -m_h |d| -> (H, len(d))."""
        symmetric = (not causal) if self.symmetric is None else self.symmetric
        dist = (np.abs(d) if symmetric else np.maximum(d, 0)).astype(np.float32)
        slopes = self.slopes if self.learn_slopes else Tensor(self.slopes)
        return slopes.reshape(-1, 1) * (-dist)

    def extra_repr(self):
        return f"n_heads={self.n_heads}, symmetric={self.symmetric}, learnable={self.learn_slopes}"


def _check_t5(num_buckets, max_distance, bidirectional):
    nb = _pos_int(num_buckets, "num_buckets", 2)
    md = _pos_int(max_distance, "max_distance", 1)
    for bidir in ((True, False) if bidirectional is None else (bool(bidirectional),)):
        half = nb // 2 if bidir else nb
        if half < 2:
            raise ValueError(f"num_buckets must be >= 4 for bidirectional T5 buckets; got {nb}")
        if md <= half // 2:
            raise ValueError(f"max_distance must be > {half // 2} (the exact buckets) for num_buckets={nb}; "
                             f"got {md}")
    return nb, md


@register
class T5Bias(DistanceBias):
    """T5 bucketed relative bias (Raffel et al. 2020): a learned table
    ``b[H, num_buckets]`` indexed by :func:`t5_bucket` of ``j - i``.

    Options:
        num_buckets (int, 32), max_distance (int, 128): as in T5.
        bidirectional (bool or None, None): None follows the attention's mask
            (bidirectional buckets when causal=False); ``bias_matrix`` then
            uses causal=True unless told otherwise.
    Context: n_heads (required), seed (table init N(0, 0.02^2)).
    """

    name = "t5"
    paper = "Raffel et al. 2020 (T5, JMLR)"
    learnable = ("table",)

    def __init__(self, num_buckets=32, max_distance=128, bidirectional=None, n_heads=None, head_dim=None,
                 d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self.bidirectional = _check_flag(bidirectional, "bidirectional")
        self.num_buckets, self.max_distance = _check_t5(num_buckets, max_distance, self.bidirectional)
        rng = np.random.default_rng(seed)
        self.table = Parameter(rng.normal(0.0, 0.02, (n_heads, self.num_buckets)).astype(np.float32))

    def _bidir(self, causal):
        return (not causal) if self.bidirectional is None else self.bidirectional

    def bias(self, d, causal=True):
        """table[h, bucket(-d)] -> (H, len(d)); the gradient scatters into the buckets."""
        buckets = t5_bucket(-d, self.num_buckets, self.max_distance, self._bidir(causal))
        return self.table[:, buckets]

    def extra_repr(self):
        return (f"n_heads={self.n_heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"bidirectional={self.bidirectional}")


@register
class Kerple(DistanceBias):
    """KERPLE (Chi, Fan, Ramadge, Rudnicky, NeurIPS 2022): conditionally
    positive definite kernels as a bias, per head learnable r1, r2 > 0.

    Options:
        variant ("log" | "power", "log"): ``-r1 log(1 + r2 |i-j|)`` or ``-r1 |i-j|^r2``.
    Like the authors' code, every forward first clamps the parameters in place:
    r1 >= 1e-2 and r2 >= 1e-2 (and r2 <= 2 for "power"); the gradient is that of
    the formula at the clamped values. For "power" the d/dr2 term at i = j
    (which holds log 0) is taken as 0. Init: r1 ~ U(0, 2), r2 ~ U(0, 1), then clamped.
    Context: n_heads (required), seed.
    """

    name = "kerple"
    paper = "Chi, Fan, Ramadge, Rudnicky 2022 (KERPLE, arXiv 2205.09921)"
    learnable = ("r1", "r2")
    EPS = 1e-2

    def __init__(self, variant="log", n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        if variant not in ("log", "power"):
            raise ValueError(f"kerple variant must be 'log' or 'power'; got {variant!r}")
        self.variant = variant
        rng = np.random.default_rng(seed)
        self.r1 = Parameter((rng.random(n_heads) * 2.0).astype(np.float32))
        self.r2 = Parameter(rng.random(n_heads).astype(np.float32))
        self.clamp_()

    def clamp_(self):
        """Clamp r1, r2 into their domain in place (what every forward does first)."""
        np.maximum(self.r1.data, self.EPS, out=self.r1.data)
        hi = 2.0 if self.variant == "power" else np.inf
        np.clip(self.r2.data, self.EPS, hi, out=self.r2.data)

    def bias(self, d):
        """-r1 log(1 + r2 |d|) or -r1 |d|^r2 -> (H, len(d))."""
        self.clamp_()
        a = np.abs(d).astype(np.float32)
        r1, r2 = self.r1.reshape(-1, 1), self.r2.reshape(-1, 1)
        if self.variant == "log":
            return -r1 * F.log(r2 * a + 1.0)
        # |d|^r2 = exp(r2 log|d|) for d != 0, and 0 at d = 0 (r2 > 0), with a zero d/dr2 there
        logd = np.log(np.maximum(a, 1.0))
        return -r1 * (F.exp(r2 * logd) * (a > 0).astype(np.float32))

    def extra_repr(self):
        return f"n_heads={self.n_heads}, variant={self.variant!r}"


@register
class Sandwich(DistanceBias):
    """Sandwich (Chi et al. 2023, "Dissecting Transformer Length Extrapolation via
    the Lens of Receptive Field Analysis"): ``b = s_h sum_k cos((i-j) w_k)``,
    ``w_k = 10000^(-2k/dim)``, with per-head scale ``s_h = H / (8 (h+1))`` (the
    scaling of NeMo's implementation, the public one). No parameters: a C kernel
    (``_C.bias_sandwich_fwd``) tabulates it.

    Which frequencies are summed (``freq_index``):

    - ``"nemo"`` (default): ``k = 1 .. dim/2``, as NeMo's
      ``SandwichRelativePositionEmbedding`` does (``arange(1, dim/2 + 1)``), the
      only public implementation with per-head scales, which relpos follows.
    - ``"paper"``: ``k = 0 .. dim/2 - 1``, the sum as the paper writes it (the
      sinusoidal embedding's inner product), the form relpos used before this option.

    The two differ by ``s_h (cos d - cos(d 10000^-1))`` per head: the paper's
    form keeps the fastest frequency (period 2 pi), NeMo's adds a slower one
    instead. NeMo also subtracts ``dim/2`` before scaling (making the bias 0 at
    distance 0); that is one constant per head, which no softmax row can see,
    so relpos leaves it out.

    The table of a window is kept: Sandwich has no parameters, so a training
    run computes it once, and generation (a window growing by one key per
    step) recomputes it only when it outgrows the kept range, which doubles.

    Options: dim (int, 128): the d-bar of the paper (even);
    freq_index ("nemo" or "paper", "nemo").
    Context: n_heads (required).
    """

    #: distances kept past what a call asked for, at most (generation's growing window)
    CACHE_LIMIT = 1 << 16

    name = "sandwich"
    paper = "Chi, Fan, Rudnicky, Ramadge 2023 (Sandwich, arXiv 2212.10356)"
    learnable = ()

    #: freq_index -> the first frequency index k summed
    FREQ_INDEX = {"nemo": 1, "paper": 0}

    def __init__(self, dim=128, freq_index="nemo", n_heads=None, head_dim=None, d_model=None, max_len=None,
                 seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        dim = _pos_int(dim, "dim", 2)
        if dim % 2:
            raise ValueError(f"sandwich dim must be even; got {dim}")
        if not isinstance(freq_index, str) or freq_index not in self.FREQ_INDEX:
            raise ValueError(f"sandwich freq_index must be one of {sorted(self.FREQ_INDEX)}; got {freq_index!r}")
        self.dim = dim
        self.freq_index = freq_index
        self.first = self.FREQ_INDEX[freq_index]
        self.register_buffer("scales", (n_heads / (8.0 * np.arange(1, n_heads + 1))).astype(np.float32),
                             persistent=False)
        self._table = None  # (lo, (H, n) table of distances lo .. lo+n-1)

    def bias(self, d):
        """s_h sum_k cos(d w_k) -> (H, len(d)) (a constant: no parameters)."""
        d = np.asarray(d, dtype=np.int64)
        if len(d) == 0:
            return Tensor(np.zeros((self.n_heads, 0), np.float32))
        lo, hi = int(d.min()), int(d.max())
        if self._table is not None:
            tlo, tab = self._table
            if tlo <= lo and hi < tlo + tab.shape[1]:
                return Tensor(np.ascontiguousarray(tab[:, d - tlo]))
        if hi - lo + 1 > len(d) + self.CACHE_LIMIT:  # scattered distances: no range to keep
            return Tensor(_C.bias_sandwich_fwd(self.scales, d, self.dim, self.first))
        # keep the range, with as much room again above it (capped) for a window that grows
        top = hi + min(hi - lo + 1, self.CACHE_LIMIT)
        tab = _C.bias_sandwich_fwd(self.scales, np.arange(lo, top + 1, dtype=np.int64), self.dim, self.first)
        self._table = (lo, tab)
        return Tensor(np.ascontiguousarray(tab[:, d - lo]))

    def extra_repr(self):
        return f"n_heads={self.n_heads}, dim={self.dim}, freq_index={self.freq_index!r}"


@register
class LearnedBias(DistanceBias):
    """A learned per-distance bias ``b[H, 2 max_distance + 1]`` over
    ``clip(i - j, -max_distance, max_distance)``; the simplest learnable
    Toeplitz bias.

    Options: max_distance (int, 128).
    Context: n_heads (required), seed (init N(0, 0.02^2)).
    """

    name = "learned_bias"
    paper = "learned per-distance bias (Toeplitz table over clipped i - j)"
    learnable = ("table",)

    def __init__(self, max_distance=128, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self.max_distance = _pos_int(max_distance, "max_distance", 0)
        rng = np.random.default_rng(seed)
        self.table = Parameter(rng.normal(0.0, 0.02, (n_heads, 2 * self.max_distance + 1)).astype(np.float32))

    def bias(self, d):
        """table[h, clip(d, -M, M) + M] -> (H, len(d))."""
        M = self.max_distance
        return self.table[:, np.clip(d, -M, M) + M]

    def extra_repr(self):
        return f"n_heads={self.n_heads}, max_distance={self.max_distance}"


def fire_segments(W1, b1):
    """The piecewise-linear form of FIRE's first layer ``relu(W1 x + b1)``
    (W1, b1 (W,) float32 ndarrays): ``(bp, on)`` with bp (S-1,) float32 the
    ascending breakpoints ``-b1_w / W1_w`` of the units with ``W1_w != 0``
    (shared by the heads) and on (S, W) float32 0/1: unit w is active on
    segment s, the x with exactly s breakpoints ``<= x``.

    A unit with ``W1_w = 0`` is constant (active on every segment iff
    ``b1_w > 0``) and adds no breakpoint; equal breakpoints stay separate (the
    segment between them is empty). The pattern is piecewise constant in the
    weights, so it carries no gradient. A NaN breakpoint (NaN weights; the
    bias is NaN anyway) is put last."""
    W1 = np.asarray(W1, dtype=np.float64)
    b1 = np.asarray(b1, dtype=np.float64)
    units = np.flatnonzero(W1 != 0)                  # NaN != 0: a NaN unit gets a breakpoint too
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = -b1[units] / W1[units]
    t = np.where(np.isnan(t), np.inf, t)
    order = np.argsort(t, kind="stable")
    rank = np.empty(len(units), dtype=np.int64)
    rank[order] = np.arange(len(units))
    S = len(units) + 1
    seg = np.arange(S)[:, None]
    on = np.repeat((b1 > 0)[None, :], S, axis=0)    # constant units
    on[:, units] = np.where(W1[units] > 0, rank[None, :] < seg, rank[None, :] >= seg)
    with np.errstate(over="ignore"):
        bp = t[order].astype(np.float32)
    return bp, on.astype(np.float32)


def pwl_bias_matrix(inputs, Tq, Tk, q_offset=0, causal=True):
    """What the ``pwl_*`` channel adds to logit (i, j): (H, Tq, Tk) float64 from
    the inputs of :meth:`Fire.pwl` (Tensors or arrays), 0 where j > i when causal."""
    val = {n: np.asarray(getattr(x, "data", x)) for n, x in inputs.items() if n != "pwl_ix"}
    sign, off = inputs["pwl_ix"]
    u, w, bp = val["pwl_u"], val["pwl_w"], val["pwl_bp"]
    ia = q_offset + np.arange(Tq, dtype=np.int64)[:, None]
    idx = np.clip(sign * (ia - np.arange(Tk, dtype=np.int64)[None, :]) + off, 0, len(u) - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        x = u[idx] * w[:, None]                      # float32, as the kernels form it
        seg = (bp[None, None, :] <= x[..., None]).sum(axis=-1)
        out = (val["pwl_slope"].astype(np.float64)[:, seg] * x.astype(np.float64)
               + val["pwl_icpt"].astype(np.float64)[:, seg])
    if causal:
        out = np.where((np.arange(Tk)[None, :] <= ia)[None], out, 0.0)
    return out


class _FirePwl(Function):
    """FIRE's six parameters -> the pwl_* inputs (u, w, slope, icpt) as one
    node on the tape (the composed relpos ops made 20 per layer and step).

    Forward: the same float32 operations in the same order as those ops.
    Backward: the chain rule through them, each step the same operation
    (the same C kernel for the broadcast products' reductions and the
    GEMM for the products), so the values and gradients are bit for bit
    those of the composed ops:

    - u = log(z_u), z_u = |c| d + 1: d|c| += sum(g_u / z_u * d);
    - w = 1 / y, y = log(z_w) + eps, z_w = |c| m + 1, m = |L| above + i (1 - above):
      g_z = d(1/y)/dy g_w / z_w; d|c| += sum(g_z m); d|L| = sum(g_z |c| above);
    - slope = W2 A_s^T, A_s = on * W1: dW2 = g_s A_s; dW1 = sum over segments of (g_s^T W2) * on;
    - icpt = W2 A_i^T + b2, A_i = on * b1: dW2 += g_i A_i; db1 likewise; db2 = sum over segments of g_i;
    - dc = d|c| sign(c), dL = d|L| sign(L) (0 at 0, as the kink of |x|).
    """

    @staticmethod
    def forward(ctx, c, L, W1, b1, W2, b2, d, ia, above, on, eps):
        # c, L (1,); W1, b1 (W,); W2 (H, W); b2 (H,); d (R,) >= 0; ia, above (Tq,); on (S, W)
        sc, sL = np.float32(np.sign(c[0])), np.float32(np.sign(L[0]))
        cabs, Labs = c * sc, L * sL
        zu = d * cabs + np.float32(1.0)
        m = Labs * above + ia * (1.0 - above)
        zw = m * cabs + np.float32(1.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = np.log(zu)
            y = np.log(zw) + np.float32(eps)
            w = np.float32(1.0) / y
            a_s = np.ascontiguousarray((on * W1).T)  # (W, S); inf * 0 = NaN, as the documented poison
            a_i = np.ascontiguousarray((on * b1).T)
        slope = _C.gemm(W2, a_s)
        icpt = np.add(_C.gemm(W2, a_i), b2.reshape(-1, 1))
        ctx.save_for_backward(sc, sL, cabs, Labs, W1, b1, d, zu, m, zw, y, above, on, W2, a_s, a_i)
        return u, w, slope, icpt

    @staticmethod
    def backward(ctx, g_u, g_w, g_s, g_i):
        sc, sL, cabs, Labs, W1, b1, d, zu, m, zw, y, above, on, W2, a_s, a_i = ctx.saved
        need = ctx.needs_input_grad
        dc = dL = dW1 = db1 = dW2 = db2 = None
        if need[0] or need[1]:
            dcabs = None
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                if g_u is not None and need[0]:
                    gz = np.ascontiguousarray(g_u / zu, dtype=np.float32)
                    dcabs = _C.binary_bwd(d, cabs, gz, "mul", need_a=False, need_b=True)[1]
                if g_w is not None:
                    gy = _C.binary_bwd(y, np.ones(1, np.float32), np.ascontiguousarray(g_w, dtype=np.float32),
                                       "rdiv", need_a=True, need_b=False)[0]
                    gz = np.ascontiguousarray(gy / zw, dtype=np.float32)
                    gm, dcw = _C.binary_bwd(m, cabs, gz, "mul", need_a=need[1], need_b=need[0])
                    if dcw is not None:
                        dcabs = dcw if dcabs is None else dcabs + dcw
                    if need[1]:
                        dL = _C.binary_bwd(above, Labs, gm, "mul", need_a=False, need_b=True)[1] * sL
            if need[0] and dcabs is not None:
                dc = dcabs * sc
        g_s = None if g_s is None else np.ascontiguousarray(g_s, dtype=np.float32)
        g_i = None if g_i is None else np.ascontiguousarray(g_i, dtype=np.float32)

        def factor_grad(g, factor):
            # W2 (on * factor)^T: g back through the product and the transpose, then the mask
            dA = np.ascontiguousarray(_C.gemm(W2, g, trans_a=True).T)  # (S, W)
            return _C.binary_bwd(on, factor, dA, "mul", need_a=False, need_b=True)[1]

        if need[4]:
            parts = [_C.gemm(g, A, trans_b=True) for g, A in ((g_s, a_s), (g_i, a_i)) if g is not None]
            dW2 = sum(parts[1:], parts[0]) if parts else None
        if need[2] and g_s is not None:
            dW1 = factor_grad(g_s, W1)
        if need[3] and g_i is not None:
            db1 = factor_grad(g_i, b1)
        if need[5] and g_i is not None:
            db2 = g_i.sum(axis=(1,), keepdims=True).reshape(-1)
        return dc, dL, dW1, db1, dW2, db2, None, None, None, None, None


@register
class Fire(Encoding):
    """FIRE (Li et al., ICLR 2024): ``b_h(i, j) = f(psi(i - j) / psi(max(L, i)))``,
    ``psi(x) = log(|c| x + 1)``, f an MLP 1 -> width -> H with ReLU; c and L
    learnable. Causal only.

    As in the authors' code the threshold is ``|L|`` and ``eps`` is added to
    the normaliser ``psi(max(|L|, i))``. L gets gradient from the rows with
    ``i < |L|`` (none from a row with i = |L| exactly, where max has a kink).

    How it runs: f has one input, so it is piecewise linear in
    ``x = psi(i - j) * w_i``, ``w_i = 1 / (psi(max(|L|, i)) + eps)``, with the
    breakpoints ``-b1/W1`` shared by the heads. :meth:`pwl` builds the slopes
    and intercepts of every segment and head, psi over the window of
    distances, and w per query, with relpos ops (autograd carries the kernel's
    gradients to W1, b1, W2, b2, c and L), and the attention kernels evaluate
    ``slope * x + intercept`` pair by pair. Inputs: O(Tq + Tk + H * width)
    numbers, whatever q_offset is. The fused kernel forms every pair's terms
    once per call (they do not depend on the batch index) in a scratch table
    of (2 + H) Tq Tk floats when that is at most 16 MB, and tile by tile,
    with nothing of size (Tq, Tk), above that; the same bits either way.

    Non-finite parameters: a NaN or infinite value in W1 or b1 makes every
    bias NaN, one in W2[h] makes head h's bias NaN (so the attention rows turn
    NaN, never silently finite); b2, c and L go through the formula.

    Options:
        width (int, 32): hidden width of the MLP.
        init_c (float, 0.1): initial c.
        init_L (float or None, None): initial threshold L; None uses max_len,
            or 512 if max_len is not given.
        eps (float, 1e-6).
    Context: n_heads (required), max_len, seed (MLP init like torch.nn.Linear).
    """

    name = "fire"
    channel = "B"
    paper = "Li et al. 2024 (FIRE, arXiv 2310.04418)"
    learnable = ("W1", "b1", "W2", "b2", "c", "L")
    causal_only = True

    def __init__(self, width=32, init_c=0.1, init_L=None, eps=1e-6, n_heads=None, head_dim=None, d_model=None,
                 max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(n_heads=n_heads)
        width = _pos_int(width, "width")
        if init_L is None:
            init_L = float(max_len) if max_len else 512.0
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a float >= 0; got {eps!r}")
        self.width, self.eps = width, float(eps)
        rng = np.random.default_rng(seed)
        lim = 1.0 / math.sqrt(width)
        self.W1 = Parameter(rng.uniform(-1.0, 1.0, width).astype(np.float32))
        self.b1 = Parameter(rng.uniform(-1.0, 1.0, width).astype(np.float32))
        self.W2 = Parameter(rng.uniform(-lim, lim, (n_heads, width)).astype(np.float32))
        self.b2 = Parameter(rng.uniform(-lim, lim, n_heads).astype(np.float32))
        self.c = Parameter(np.array([init_c], dtype=np.float32))
        self.L = Parameter(np.array([init_L], dtype=np.float32))

    def pwl(self, Tq: int, Tk: int, q_offset: int = 0) -> dict:
        """The ``pwl_*`` inputs of ``attention_core`` for Tq queries at
        ``q_offset ..`` and Tk keys at ``0 ..``:

        - pwl_u (Tq+Tk-1,) Tensor: psi(max(d, 0)) over the window of distances
          d = i - j (:func:`distance_window`), with pwl_ix = (+1, Tk-1-q_offset);
        - pwl_w (Tq,) Tensor: 1 / (psi(max(|L|, i)) + eps) per query;
        - pwl_bp (S-1,) ndarray, pwl_slope and pwl_icpt (H, S) Tensors: f on
          each segment (:func:`fire_segments`), S <= width + 1.
        """
        q_offset = int(q_offset)
        L = self.L.data[0]
        # |c| and |L| carry the gradients sign(c) and sign(L) (0 at 0, as max's kink)
        d = np.maximum(distance_window(Tq, Tk, q_offset), 0).astype(np.float32)  # d < 0 is masked (causal)
        ia = (q_offset + np.arange(Tq, dtype=np.int64)).astype(np.float32)
        # rows whose normaliser uses |L| (and so its gradient); a NaN L propagates, as torch.maximum does
        above = ((np.abs(L) > ia) | np.isnan(L)).astype(np.float32)
        bp, on = fire_segments(self.W1.data, self.b1.data)
        H = self.n_heads
        u, w, slope, icpt = _FirePwl.apply(self.c, self.L, self.W1, self.b1, self.W2, self.b2, d, ia, above, on,
                                           self.eps)
        # the documented NaN convention for non-finite weights (the segment form cannot follow inf * 0)
        poison = np.where(np.isfinite(self.W2.data).all(axis=1), 0.0, np.nan)
        if not (np.isfinite(self.W1.data).all() and np.isfinite(self.b1.data).all()):
            poison[:] = np.nan
        if np.isnan(poison).any():
            icpt = icpt + Tensor(poison.astype(np.float32).reshape(H, 1))
        return {"pwl_u": u, "pwl_ix": (1, Tk - 1 - q_offset), "pwl_w": w, "pwl_bp": bp,
                "pwl_slope": slope, "pwl_icpt": icpt}

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """The pwl_* channel (see :meth:`pwl`)."""
        self.check_causal(causal)
        if q.shape[1] != self.n_heads:
            raise ValueError(f"encoding 'fire' was built for n_heads={self.n_heads}; got q with {q.shape[1]} heads")
        return self.pwl(q.shape[2], k.shape[2], q_offset)

    def bias_matrix(self, Tq: int, Tk: int, q_offset: int = 0) -> np.ndarray:
        """(H, Tq, Tk) float64: the bias the kernels add to logit (i, j), 0 where j > i."""
        with no_grad():
            return pwl_bias_matrix(self.pwl(Tq, Tk, q_offset), Tq, Tk, q_offset)

    def extra_repr(self):
        return (f"n_heads={self.n_heads}, width={self.width}, c={float(self.c.data[0]):.4g}, "
                f"L={float(self.L.data[0]):.4g}")
