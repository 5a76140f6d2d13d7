"""Channel R: rotary encodings of q and k — RoPE (with PI / NTK-aware / YaRN
context extension) and xPos.

    >>> enc = relpos.encodings.get("rope", head_dim=64, layout="half", scaling="yarn",
    ...                            scaling_factor=4.0, original_max_len=512)
    >>> q = enc.rotate_q(q, offset=0)      # q (B, H, T, 64) Tensor

Angles are computed in float64 by the C core (``_C.rope_tables``) and stored
as float32 cos/sin tables; the transform and its backward (rotation by the
negative angle) are C kernels (``_C.rotary_fwd`` / ``_C.rotary_bwd``).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import _C
from .._fn.attention import check_q_offset
from ..tensor import Function, Tensor, as_array
from .registry import register
from .base import Encoding

__all__ = ["rope_inv_freq", "rope_angles", "yarn_ramp", "xpos_scale", "apply_rotary"]

_LAYOUTS = ("interleaved", "half")
_SCALINGS = (None, "linear", "ntk", "yarn")


# ---------------------------------------------------------------- helpers


def _check_rotary_dim(rotary_dim, name="rotary_dim"):
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(rotary_dim).__name__}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"{name} must be a positive even int (channels rotate in pairs); got {rotary_dim}")
    return int(rotary_dim)


def _check_scaling(scaling, scaling_factor, original_max_len, beta_fast, beta_slow, ramp):
    if scaling not in _SCALINGS:
        raise ValueError(f"scaling must be one of None, 'linear', 'ntk', 'yarn'; got {scaling!r}")
    try:
        s = float(scaling_factor)
    except (TypeError, ValueError):
        raise TypeError(f"scaling_factor must be a number; got {type(scaling_factor).__name__}") from None
    if not math.isfinite(s) or s < 1.0:
        raise ValueError(f"scaling_factor must be a finite number >= 1 (the context extension ratio); got {scaling_factor!r}")
    if scaling == "yarn":
        if original_max_len is None or isinstance(original_max_len, bool) or \
                not isinstance(original_max_len, (int, np.integer)) or original_max_len <= 0:
            raise ValueError("scaling='yarn' needs original_max_len, the training context length as a "
                             f"positive int; got {original_max_len!r}")
        if not (float(beta_fast) > float(beta_slow) > 0):
            raise ValueError(f"YaRN needs beta_fast > beta_slow > 0; got beta_fast={beta_fast!r}, "
                             f"beta_slow={beta_slow!r}")
        if ramp not in ("paper", "hf"):
            raise ValueError(f"yarn_ramp must be 'paper' or 'hf'; got {ramp!r}")
    return s


def yarn_ramp(rotary_dim, base=10000.0, original_max_len=2048, beta_fast=32.0, beta_slow=1.0, ramp="paper"):
    """YaRN's per-frequency blend γ_k ∈ [0, 1] (1 = keep θ_k, 0 = interpolate θ_k/s).

    Returns (rotary_dim/2,) float64.
    ``ramp="paper"`` (Peng et al. 2024, eq. 18): with the number of rotations
    r_k = L/λ_k = L·θ_k/(2π) over the training length L, γ = 0 for r < beta_slow,
    1 for r > beta_fast, and linear in r between.
    ``ramp="hf"`` (HF transformers ``_compute_yarn_parameters``): the same
    endpoints turned into pair indices (floor/ceil), and linear in the pair
    index between them; it differs from the paper between the endpoints.
    """
    return _yarn_gamma(rotary_dim, base, original_max_len, beta_fast, beta_slow, ramp)


def _yarn_gamma(rotary_dim, base, original_max_len, beta_fast, beta_slow, ramp):
    rotary_dim = _check_rotary_dim(rotary_dim)
    P = rotary_dim // 2
    k = np.arange(P, dtype=np.float64)
    theta = float(base) ** (-2.0 * k / rotary_dim)
    if ramp == "paper":
        r = original_max_len * theta / (2 * math.pi)
        return np.clip((r - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    if ramp != "hf":
        raise ValueError(f"ramp must be 'paper' or 'hf'; got {ramp!r}")

    def index_of(n_rot):  # pair index (fractional) where r_k = n_rot
        return rotary_dim * math.log(original_max_len / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(index_of(beta_fast)), 0)
    high = min(math.ceil(index_of(beta_slow)), rotary_dim - 1)
    if low == high:
        high += 0.001
    return 1.0 - np.clip((k - low) / (high - low), 0.0, 1.0)


def _check_user_freqs(theta, rotary_dim):
    """User frequencies as a float64 (rotary_dim/2,) array of positive finite numbers."""
    try:
        theta = np.array(theta, dtype=np.float64).reshape(-1) if np.ndim(theta) <= 1 else None
    except (TypeError, ValueError):
        theta = None
    if theta is None:
        raise TypeError("inv_freq must be a 1-d array of numbers or a callable f(rotary_dim) -> array")
    if rotary_dim is not None and theta.shape != (rotary_dim // 2,):
        raise ValueError(f"inv_freq must have rotary_dim/2 = {rotary_dim // 2} entries; got {theta.shape[0]}")
    if theta.size == 0 or not np.all(np.isfinite(theta)) or np.any(theta <= 0):
        raise ValueError("inv_freq must be positive finite numbers (one per rotated pair)")
    return theta


def _yarn_gamma_of(theta, original_max_len, beta_fast, beta_slow, ramp, rotary_dim, base):
    """YaRN's blend for arbitrary frequencies: the paper's ramp is defined on each θ_k's
    rotations over the training length, so it applies as it is; HF's ramp is defined on
    pair indices of the default frequencies and is used as it is."""
    if ramp == "paper":
        r = original_max_len * theta / (2 * math.pi)
        return np.clip((r - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    return _yarn_gamma(rotary_dim, base, original_max_len, beta_fast, beta_slow, ramp)


def rope_inv_freq(rotary_dim, base=10000.0, scaling=None, scaling_factor=1.0, original_max_len=None,
                  beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper"):
    """RoPE frequencies θ_k, (rotary_dim/2,) float64.

    θ_k = base^(-2k/rotary_dim) (Su et al.), changed by ``scaling``:
    None or "linear" (PI scales positions, not θ: see :func:`rope_angles`);
    "ntk": base' = base · s^(d/(d−2)) (bloc97 2023); "yarn": θ_k·γ_k + (θ_k/s)·(1 − γ_k)
    with γ from :func:`yarn_ramp` (Peng et al. 2024). s = scaling_factor.
    """
    rotary_dim = _check_rotary_dim(rotary_dim)
    s = _check_scaling(scaling, scaling_factor, original_max_len, beta_fast, beta_slow, yarn_ramp)
    base = float(base)
    if not math.isfinite(base) or base <= 1.0:
        raise ValueError(f"base must be a finite number > 1; got {base!r}")
    if scaling == "ntk" and rotary_dim > 2:
        base = base * s ** (rotary_dim / (rotary_dim - 2))
    k = np.arange(rotary_dim // 2, dtype=np.float64)
    theta = base ** (-2.0 * k / rotary_dim)
    if scaling == "yarn":
        g = _yarn_gamma(rotary_dim, base, original_max_len, beta_fast, beta_slow, yarn_ramp)
        theta = theta * g + (theta / s) * (1.0 - g)
    return theta


def _pos_scale(scaling, scaling_factor):
    return 1.0 / float(scaling_factor) if scaling == "linear" else 1.0


def rope_angles(T, rotary_dim, base=10000.0, offset=0, scaling=None, scaling_factor=1.0, original_max_len=None,
                beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper"):
    """RoPE angles (T, rotary_dim/2) float64: angle[t, k] = p_t · θ_k.

    p_t = offset + t, divided by s for ``scaling="linear"`` (position
    interpolation, Chen et al. 2023); θ_k from :func:`rope_inv_freq`.
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"T must be an int >= 0; got {T!r}")
    inv = rope_inv_freq(rotary_dim, base, scaling, scaling_factor, original_max_len, beta_fast, beta_slow,
                        yarn_ramp)
    pos = (np.arange(T, dtype=np.float64) + int(offset)) * _pos_scale(scaling, scaling_factor)
    return pos[:, None] * inv[None, :]


def xpos_scale(T, rotary_dim, offset=0, center=0.0, gamma=0.4, scale_base=512.0, inverse=False):
    """xPos scales (T, rotary_dim/2) float32: ζ_k^((offset + t − center)/scale_base),
    ζ_k = (2k/rotary_dim + γ)/(1 + γ) (Sun et al. 2022); ``inverse`` for keys.

    Computed in logs and clamped to e^±80, so always finite; exact while
    |p − center|·|ln ζ_k|/scale_base ≤ 80 (for γ = 0.4, B = 512: ±32 695 positions
    around the centre for pair 0, the fastest-decaying one).
    """
    rotary_dim = _check_rotary_dim(rotary_dim)
    return _C.xpos_scale(rotary_dim // 2, int(T), offset=int(offset), center=float(center),
                         scale_base=float(scale_base), gamma=float(gamma), inverse=bool(inverse))


class _Rotary(Function):
    """y = scale ⊙ R(angle) x on the first rotary_dim channels; backward: scale ⊙ R(−angle) g."""

    @staticmethod
    def forward(ctx, x, cos, sin, scale, rotary_dim, layout):
        x = np.ascontiguousarray(as_array(x, "x"))
        ctx.args = (cos, sin, scale, rotary_dim, layout)
        return _C.rotary_fwd(x, cos, sin, rotary_dim=rotary_dim, layout=layout, scale=scale)

    @staticmethod
    def backward(ctx, g):
        if not ctx.needs_input_grad[0]:
            return None
        cos, sin, scale, rotary_dim, layout = ctx.args
        return _C.rotary_bwd(np.ascontiguousarray(g, dtype=np.float32), cos, sin, rotary_dim=rotary_dim,
                             layout=layout, scale=scale)


def apply_rotary(x, cos, sin, rotary_dim=None, layout="interleaved", scale=None):
    """Rotate x (..., T, D) (Tensor or ndarray) by the tables cos, sin (T, rotary_dim/2)
    and the optional scale (T, rotary_dim/2); differentiable in x. Returns a Tensor."""
    return _Rotary.apply(x, cos, sin, scale, rotary_dim, layout)


# ---------------------------------------------------------------- encodings


@register
class RoPE(Encoding):
    """Rotary position embedding (Su et al., RoFormer), rotating q and k in pairs.

    Options:
        rotary_dim: channels that rotate (even, ≤ head_dim); None = head_dim. The
            rest pass through (partial rotary, as GPT-NeoX / GPT-J).
        base: θ_k = base^(−2k/rotary_dim).
        layout: "interleaved" — pairs (x_2k, x_2k+1), GPT-J / Meta LLaMA / ggml mode 0;
            "half" — pairs (x_k, x_k+rotary_dim/2), GPT-NeoX / HF LLaMA / ggml NEOX.
        scaling: None | "linear" (PI: positions / s) | "ntk" (base · s^(d/(d−2)))
            | "yarn" (per-frequency ramp, and logits × (0.1 ln s + 1)²).
            Dynamic NTK is not offered: it changes the angles with the current
            length, which is inconsistent with a KV cache (HF transformers #25104).
        scaling_factor: s ≥ 1.
        original_max_len: YaRN's training context length L (required for "yarn").
        beta_fast, beta_slow: YaRN's β and α (rotations per L at the ramp ends).
        yarn_ramp: "paper" (linear in rotations r, Peng et al.) or "hf" (linear in
            pair index between floor/ceil endpoints, as HF transformers).
        inv_freq: your own frequencies θ_k instead of base^(−2k/rotary_dim): an
            array of rotary_dim/2 positive finite numbers, or a callable
            ``f(rotary_dim) -> array`` (called once per rotary_dim, in float64).
            The scalings then apply to these θ_k as they would to the default ones
            (NTK-aware changes the base, so it cannot be combined with inv_freq).
            Example: ``get("rope", inv_freq=lambda d: 1 / 500000 ** (np.arange(0, d, 2) / d))``.

    YaRN's attention temperature: relpos multiplies the logit scale by
    (0.1 ln s + 1)² through ``attention_inputs`` (scale = (0.1 ln s + 1)²/√head_dim).
    HF instead multiplies cos and sin by 0.1 ln s + 1, which gives the same logits
    when rotary_dim = head_dim; with partial rotary HF leaves the pass-through
    channels unscaled, relpos scales the whole logit.
    """

    name = "rope"
    channel = "R"
    paper = "Su et al. 2021 (RoFormer); PI Chen et al. 2023; NTK bloc97 2023; YaRN Peng et al. 2024"
    learnable = ()

    def __init__(self, rotary_dim=None, base=10000.0, layout="interleaved", scaling=None, scaling_factor=1.0,
                 original_max_len=None, beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper", inv_freq=None,
                 n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        if inv_freq is not None and not callable(inv_freq):
            inv_freq = _check_user_freqs(inv_freq, None)
            if rotary_dim is None and head_dim is not None and 2 * len(inv_freq) != head_dim \
                    and 2 * len(inv_freq) <= head_dim:
                rotary_dim = 2 * len(inv_freq)  # fewer frequencies than pairs: partial rotary
        if inv_freq is not None and scaling == "ntk":
            raise ValueError("scaling='ntk' changes the base of the default frequencies; it cannot be "
                             "combined with your own inv_freq")
        if rotary_dim is not None:
            rotary_dim = _check_rotary_dim(rotary_dim)
            if head_dim is not None and rotary_dim > head_dim:
                raise ValueError(f"rotary_dim ({rotary_dim}) must be <= head_dim ({head_dim})")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be 'interleaved' or 'half'; got {layout!r}")
        base = float(base)
        if not math.isfinite(base) or base <= 1.0:
            raise ValueError(f"base must be a finite number > 1; got {base!r}")
        _check_scaling(scaling, scaling_factor, original_max_len, beta_fast, beta_slow, yarn_ramp)
        self.rotary_dim = rotary_dim
        self.base = base
        self.layout = layout
        self.scaling = scaling
        self.scaling_factor = float(scaling_factor)
        self.original_max_len = original_max_len
        self.beta_fast = float(beta_fast)
        self.beta_slow = float(beta_slow)
        self.yarn_ramp = yarn_ramp
        self.user_inv_freq = inv_freq
        self._cache = OrderedDict()

    # ---- tables ------------------------------------------------------------
    def _rotary_dim_for(self, D):
        if self.head_dim is not None and D != self.head_dim:
            raise ValueError(f"q/k head dim D ({D}) differs from the encoding's head_dim ({self.head_dim})")
        rd = self.rotary_dim if self.rotary_dim is not None else D
        if rd % 2:
            raise ValueError(f"rotary_dim must be even; head_dim {rd} is odd: give rotary_dim explicitly")
        if rd > D:
            raise ValueError(f"rotary_dim ({rd}) must be <= the head dim of q/k ({D})")
        return rd

    def frequencies(self, rotary_dim=None):
        """θ_k (rotary_dim/2,) float64 after scaling (your inv_freq, if given)."""
        rd = rotary_dim or self.rotary_dim or self.head_dim
        if self.user_inv_freq is None:
            return rope_inv_freq(rd, self.base, self.scaling, self.scaling_factor, self.original_max_len,
                                 self.beta_fast, self.beta_slow, self.yarn_ramp)
        theta = self.user_inv_freq(rd) if callable(self.user_inv_freq) else self.user_inv_freq
        theta = _check_user_freqs(theta, rd)
        if self.scaling == "yarn":
            g = _yarn_gamma_of(theta, self.original_max_len, self.beta_fast, self.beta_slow, self.yarn_ramp,
                               rd, self.base)
            theta = theta * g + (theta / self.scaling_factor) * (1.0 - g)
        return theta

    def tables(self, T, offset, rotary_dim):
        """(cos, sin) float32 (T, rotary_dim/2) for positions offset..offset+T−1 (cached)."""
        key = ("rope", int(T), int(offset), int(rotary_dim))
        hit = self._cache.get(key)
        if hit is None:
            hit = _C.rope_tables(self.frequencies(rotary_dim), int(T), offset=int(offset),
                                 pos_scale=_pos_scale(self.scaling, self.scaling_factor))
            for a in hit:
                a.flags.writeable = False  # shared by later calls
            self._cache[key] = hit
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return hit

    def _scale(self, T, offset, rotary_dim, is_key):
        return None

    def _rotate(self, x, offset, is_key):
        offset = check_q_offset(offset, "offset")
        shape = x.shape
        if len(shape) != 4:
            raise ValueError(f"{'k' if is_key else 'q'} must have shape (B, H, T, D); got {tuple(shape)}")
        T, D = shape[2], shape[3]
        rd = self._rotary_dim_for(D)
        cos, sin = self.tables(T, offset, rd)
        return apply_rotary(x, cos, sin, rotary_dim=rd, layout=self.layout,
                            scale=self._scale(T, offset, rd, is_key))

    def rotation(self, T, offset, head_dim):
        """(cos, sin, rotary_dim, layout) for rows at positions offset .. offset+T-1: plain RoPE is a
        table rotation, which MultiHeadAttention fuses into its q/k projection."""
        rd = self._rotary_dim_for(head_dim)
        cos, sin = self.tables(T, offset, rd)
        return cos, sin, rd, self.layout

    def rotate_q(self, q, offset: int = 0):
        """q (B, H, Tq, D) Tensor, row t at absolute position offset + t -> rotated (B, H, Tq, D)."""
        return self._rotate(q, offset, False)

    def rotate_k(self, k, offset: int = 0):
        """k (B, H, Tk, D) Tensor, row t at absolute position offset + t -> rotated (B, H, Tk, D)."""
        return self._rotate(k, offset, True)

    def attention_scale_factor(self) -> float:
        """Factor on the logit scale: (0.1 ln s + 1)² for YaRN with s > 1, else 1."""
        if self.scaling == "yarn" and self.scaling_factor > 1.0:
            return (0.1 * math.log(self.scaling_factor) + 1.0) ** 2
        return 1.0

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """{"scale": (0.1 ln s + 1)²/√D} for YaRN, else {} (rotation happens in rotate_q/k)."""
        f = self.attention_scale_factor()
        if f == 1.0:
            return {}
        return {"scale": f / math.sqrt(q.shape[-1])}

    def extra_repr(self):
        parts = [f"rotary_dim={self.rotary_dim}", f"base={self.base:g}", f"layout={self.layout!r}"]
        if self.scaling:
            parts.append(f"scaling={self.scaling!r}, scaling_factor={self.scaling_factor:g}")
            if self.scaling == "yarn":
                parts.append(f"original_max_len={self.original_max_len}")
        return ", ".join(parts)


@register
class XPos(RoPE):
    """xPos (Sun et al. 2022, arXiv 2212.10554): RoPE, then q·ζ^((i−c)/B) and k·ζ^(−(j−c)/B)
    per pair, ζ_k = (2k/rotary_dim + γ)/(1 + γ), so q_i·k_j decays as ζ^((i−j)/B). Causal only.

    Options: rotary_dim, base, layout as RoPE; gamma (γ = 0.4); scale_base (B = 512);
    center c (None = max_len // 2 if max_len is known, else 0). Any fixed c gives the
    same logits; it only places the window where the float32 factors are exact:
    scales are computed in logs and clamped to e^±80, exact for |p − c| ≤ 80·B/|ln ζ_0|
    (±32 695 positions at the defaults) and finite everywhere. Past that window a
    factor saturates: causal products q_i·k_j stay ≤ 1 but no longer decay exactly
    as ζ^((i−j)/B) for that pair. c is fixed per encoding so cached keys and new
    queries agree (torchscale re-centres on each call's length instead).
    """

    name = "xpos"
    channel = "R"
    paper = "Sun et al. 2022 (xPos, arXiv 2212.10554)"
    causal_only = True
    learnable = ()

    def __init__(self, rotary_dim=None, base=10000.0, layout="interleaved", gamma=0.4, scale_base=512.0, center=None,
                 n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(rotary_dim=rotary_dim, base=base, layout=layout, n_heads=n_heads, head_dim=head_dim,
                         d_model=d_model, max_len=max_len, seed=seed)
        gamma, scale_base = float(gamma), float(scale_base)
        if not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"gamma must be a finite number > 0; got {gamma!r}")
        if not math.isfinite(scale_base) or scale_base <= 0:
            raise ValueError(f"scale_base must be a finite number > 0; got {scale_base!r}")
        if center is None:
            center = (max_len // 2) if max_len else 0
        center = float(center)
        if not math.isfinite(center):
            raise ValueError(f"center must be finite; got {center!r}")
        self.gamma, self.scale_base, self.center = gamma, scale_base, center

    def rotation(self, T, offset, head_dim):
        """None: xPos also scales q and k, so it is not a plain table rotation."""
        return None

    def _scale(self, T, offset, rotary_dim, is_key):
        key = ("xpos", int(T), int(offset), int(rotary_dim), bool(is_key))
        hit = self._cache.get(key)
        if hit is None:
            hit = xpos_scale(T, rotary_dim, offset=offset, center=self.center, gamma=self.gamma,
                             scale_base=self.scale_base, inverse=is_key)
            hit.flags.writeable = False
            self._cache[key] = hit
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return hit

    def extra_repr(self):
        return (f"rotary_dim={self.rotary_dim}, base={self.base:g}, layout={self.layout!r}, "
                f"gamma={self.gamma:g}, scale_base={self.scale_base:g}, center={self.center:g}")
