"""Channel R: rotary encodings of q and k — RoPE (with PI / NTK-aware / dynamic
NTK / YaRN / Llama-3 / LongRoPE context extension) and xPos.

    >>> enc = relpos.encodings.get("rope", head_dim=64, layout="half", scaling="yarn",
    ...                            scaling_factor=4.0, original_max_len=512)
    >>> q = enc.rotate_q(q, offset=0)      # q (B, H, T, 64) Tensor

Angles are computed in float64 by the C core (``_C.rope_tables``) and stored
as float32 cos/sin tables; the transform and its backward (rotation by the
negative angle) are C kernels (``_C.rotary_fwd`` / ``_C.rotary_bwd``).
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections import OrderedDict

import numpy as np

from .. import _C
from .._fn.attention import check_q_offset
from ..tensor import Function, as_array
from .base import Encoding
from .registry import register

__all__ = ["rope_inv_freq", "rope_angles", "yarn_ramp", "xpos_scale", "apply_rotary", "rope_scaling",
           "rope_encodings", "SCALINGS"]

_LAYOUTS = ("interleaved", "half")
#: RoPE scalings (HF ``rope_type`` names; "pi" is accepted for "linear")
SCALINGS = (None, "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")
_SCALINGS = SCALINGS
_ALIASES = {"pi": "linear", "none": None, "default": None}
#: scalings whose rule needs the training context length
_NEED_L0 = ("dynamic", "yarn", "llama3", "longrope")
#: scalings whose frequencies depend on the length of the call
_LENGTH_DEPENDENT = ("dynamic", "longrope")


# ---------------------------------------------------------------- helpers


def _check_rotary_dim(rotary_dim, name="rotary_dim"):
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(rotary_dim).__name__}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"{name} must be a positive even int (channels rotate in pairs); got {rotary_dim}")
    return int(rotary_dim)


def _normalise_scaling(scaling):
    if isinstance(scaling, str) and scaling.lower() in _ALIASES:
        return _ALIASES[scaling.lower()]
    if isinstance(scaling, str):
        scaling = scaling.lower()
    if scaling not in _SCALINGS:
        raise ValueError("scaling must be one of None, 'linear' (or 'pi'), 'ntk', 'dynamic', 'yarn', 'llama3', "
                         f"'longrope'; got {scaling!r}")
    return scaling


def _positive_number(value, name, minimum=0.0, strict=True):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}") from None
    if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}; got {value!r}")
    return v


def _check_factors(values, name):
    """LongRoPE rescale factors: a 1-d float64 array of positive finite numbers (or None)."""
    if values is None:
        return None
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a list of numbers (one per rotated pair)") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a non-empty 1-d list of positive finite numbers; got {values!r}")
    arr.flags.writeable = False
    return arr


def _check_scaling(scaling, scaling_factor, original_max_len, beta_fast, beta_slow, ramp, low_freq_factor=1.0,
                   high_freq_factor=4.0, short_factor=None, long_factor=None, attention_factor=None,
                   attention_scaling="rotary"):
    """Validate one scaling's options; returns them normalised as a dict (the encoding's state)."""
    scaling = _normalise_scaling(scaling)
    try:
        s = float(scaling_factor)
    except (TypeError, ValueError):
        raise TypeError(f"scaling_factor must be a number; got {type(scaling_factor).__name__}") from None
    if not math.isfinite(s) or s < 1.0:
        raise ValueError("scaling_factor must be a finite number >= 1 (the context extension ratio); "
                         f"got {scaling_factor!r}")
    if scaling in _NEED_L0:
        if original_max_len is None or isinstance(original_max_len, bool) or \
                not isinstance(original_max_len, (int, np.integer)) or original_max_len <= 0:
            raise ValueError(f"scaling={scaling!r} needs original_max_len, the training context length as a "
                             f"positive int (or an encoding built with max_len); got {original_max_len!r}")
        original_max_len = int(original_max_len)
    elif original_max_len is not None and (isinstance(original_max_len, bool) or
                                           not isinstance(original_max_len, (int, np.integer)) or
                                           original_max_len <= 0):
        raise ValueError(f"original_max_len must be a positive int or None; got {original_max_len!r}")
    if not (float(beta_fast) > float(beta_slow) > 0):
        raise ValueError(f"YaRN needs beta_fast > beta_slow > 0; got beta_fast={beta_fast!r}, "
                         f"beta_slow={beta_slow!r}")
    if ramp not in ("paper", "hf"):
        raise ValueError(f"yarn_ramp must be 'paper' or 'hf'; got {ramp!r}")
    low = _positive_number(low_freq_factor, "low_freq_factor")
    high = _positive_number(high_freq_factor, "high_freq_factor")
    if scaling == "llama3" and not high > low:
        raise ValueError(f"llama3 scaling needs high_freq_factor > low_freq_factor; got high_freq_factor={high!r}, "
                         f"low_freq_factor={low!r}")
    short_factor = _check_factors(short_factor, "short_factor")
    long_factor = _check_factors(long_factor, "long_factor")
    if scaling == "longrope" and (short_factor is None or long_factor is None):
        raise ValueError("scaling='longrope' needs short_factor and long_factor, one rescale factor per rotated "
                         "pair each (e.g. from a model's rope_scaling config)")
    if attention_factor is not None:
        attention_factor = _positive_number(attention_factor, "attention_factor")
    if attention_scaling not in ("rotary", "logits"):
        raise ValueError(f"attention_scaling must be 'rotary' (HF: cos and sin times the factor) or 'logits' "
                         f"(the whole logit); got {attention_scaling!r}")
    return dict(scaling=scaling, scaling_factor=s, original_max_len=original_max_len,
                beta_fast=float(beta_fast), beta_slow=float(beta_slow), yarn_ramp=ramp, low_freq_factor=low,
                high_freq_factor=high, short_factor=short_factor, long_factor=long_factor,
                attention_factor=attention_factor, attention_scaling=attention_scaling)


def yarn_ramp(rotary_dim, base=10000.0, original_max_len=2048, beta_fast=32.0, beta_slow=1.0, ramp="paper"):
    """YaRN's per-frequency blend γ_k ∈ [0, 1] (1 = keep θ_k, 0 = interpolate θ_k/s).

    Returns (rotary_dim/2,) float64.
    ``ramp="paper"`` (Peng et al. 2024, eq. 18): with the number of rotations
    r_k = L/λ_k = L·θ_k/(2π) over the training length L, γ = 0 for r < beta_slow,
    1 for r > beta_fast, and linear in r between.
    ``ramp="hf"`` (HF transformers ``_compute_yarn_parameters``): the same
    endpoints turned into pair indices (floor/ceil), and linear in the pair
    index between them; it differs from the paper between the endpoints.

    β = 32 and α = 1 were chosen for long training contexts (4096 tokens). In a
    short one no pair may turn β times: with L = 64 and rotary_dim 16 the paper's
    γ is at most 0.3, so YaRN interpolates nearly every pair, as PI does.
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


def _llama3(theta, s, L0, low, high):
    """Llama 3.1's rule (Meta's ``apply_scaling``, HF ``rope_type="llama3"``): wavelengths
    λ = 2π/θ shorter than L0/high keep θ, longer than L0/low take θ/s, and between
    the two θ blends linearly in L0/λ: (1 − g)·θ/s + g·θ with g = (L0/λ − low)/(high − low)."""
    wavelen = 2 * math.pi / theta
    g = (L0 / wavelen - low) / (high - low)
    out = np.where(wavelen > L0 / low, theta / s, theta)
    mid = ~(wavelen < L0 / high) & ~(wavelen > L0 / low)
    return np.where(mid, (1 - g) * theta / s + g * theta, out)


def _dynamic_base(base, s, L0, seq_len, rotary_dim):
    """HF ``_compute_dynamic_ntk_parameters``: base·((s·L/L0) − (s − 1))^(d/(d−2)) with
    L = max(seq_len, L0) (so nothing changes up to the training length)."""
    L = max(int(seq_len), L0) if seq_len is not None else L0
    if rotary_dim <= 2:
        return base
    return base * ((s * L / L0) - (s - 1)) ** (rotary_dim / (rotary_dim - 2))


def _scaled_freqs(theta, state, rotary_dim, base, seq_len):
    """Apply a scaling's frequency rule to θ (rotary_dim/2,) float64 (linear scales positions instead)."""
    sc, s = state["scaling"], state["scaling_factor"]
    if sc == "yarn":
        g = _yarn_gamma_of(theta, state["original_max_len"], state["beta_fast"], state["beta_slow"],
                           state["yarn_ramp"], rotary_dim, base)
        return theta * g + (theta / s) * (1.0 - g)
    if sc == "llama3":
        return _llama3(theta, s, state["original_max_len"], state["low_freq_factor"], state["high_freq_factor"])
    if sc == "longrope":
        long_ = seq_len is not None and int(seq_len) > state["original_max_len"]
        ext = state["long_factor"] if long_ else state["short_factor"]
        if ext.shape != theta.shape:
            raise ValueError(f"{'long' if long_ else 'short'}_factor must have rotary_dim/2 = {theta.size} "
                             f"entries; got {ext.size}")
        return theta / ext
    return theta


def rope_inv_freq(rotary_dim, base=10000.0, scaling=None, scaling_factor=1.0, original_max_len=None,
                  beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper", *, low_freq_factor=1.0, high_freq_factor=4.0,
                  short_factor=None, long_factor=None, seq_len=None):
    """RoPE frequencies θ_k (rotary_dim/2,) float64 after a context-extension scaling.

    ``scaling``: None (θ_k = base^(−2k/rotary_dim)); "linear" / "pi" (θ unchanged:
    positions are divided by s, see :func:`rope_angles`); "ntk" (base·s^(d/(d−2)));
    "dynamic" (HF's dynamic NTK: base·((s·L/L0) − (s − 1))^(d/(d−2)), L = max(seq_len,
    L0)); "yarn" (per-frequency ramp, :func:`yarn_ramp`); "llama3" (Llama 3.1's
    wavelength bands with ``low_freq_factor``, ``high_freq_factor``); "longrope"
    (θ_k / λ_k with ``long_factor`` when seq_len > L0, else ``short_factor``).
    L0 = ``original_max_len``. ``seq_len``: the length of the call (dynamic and
    longrope only; None = L0).
    """
    rotary_dim = _check_rotary_dim(rotary_dim)
    state = _check_scaling(scaling, scaling_factor, original_max_len, beta_fast, beta_slow, yarn_ramp,
                           low_freq_factor, high_freq_factor, short_factor, long_factor)
    try:
        base = float(base)
    except (TypeError, ValueError):
        raise TypeError(f"base must be a number; got {type(base).__name__}") from None
    if not math.isfinite(base) or base <= 1.0:
        raise ValueError(f"base must be a finite number > 1; got {base!r}")
    s = state["scaling_factor"]
    if state["scaling"] == "ntk" and rotary_dim > 2:
        base = base * s ** (rotary_dim / (rotary_dim - 2))
    elif state["scaling"] == "dynamic":
        base = _dynamic_base(base, s, state["original_max_len"], seq_len, rotary_dim)
    k = np.arange(rotary_dim // 2, dtype=np.float64)
    theta = base ** (-2.0 * k / rotary_dim)
    return _scaled_freqs(theta, state, rotary_dim, base, seq_len)


def _pos_scale(scaling, scaling_factor):
    return 1.0 / float(scaling_factor) if _normalise_scaling(scaling) == "linear" else 1.0


def rope_angles(T, rotary_dim, base=10000.0, offset=0, scaling=None, scaling_factor=1.0, original_max_len=None,
                beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper", **options):
    """RoPE angles (T, rotary_dim/2) float64: angle[t, k] = p_t · θ_k.

    p_t = offset + t, divided by s for ``scaling="linear"`` (position
    interpolation, Chen et al. 2023); θ_k from :func:`rope_inv_freq` (other
    options, e.g. ``low_freq_factor``, go to it; dynamic and longrope see the
    call's length offset + T).
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"T must be an int >= 0; got {T!r}")
    options.setdefault("seq_len", int(offset) + int(T))
    inv = rope_inv_freq(rotary_dim, base, scaling, scaling_factor, original_max_len, beta_fast, beta_slow,
                        yarn_ramp, **options)
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


_SCALING_KEYS = ("scaling", "scaling_factor", "original_max_len", "beta_fast", "beta_slow", "yarn_ramp",
                 "low_freq_factor", "high_freq_factor", "short_factor", "long_factor", "attention_factor",
                 "attention_scaling")


@register
class RoPE(Encoding):
    """Rotary position embedding (Su et al., RoFormer), rotating q and k in pairs.

    Options:
        rotary_dim: channels that rotate (even, ≤ head_dim); None = head_dim. The
            rest pass through (partial rotary, as GPT-NeoX / GPT-J).
        base: θ_k = base^(−2k/rotary_dim).
        layout: "interleaved" — pairs (x_2k, x_2k+1), GPT-J / Meta LLaMA / ggml mode 0;
            "half" — pairs (x_k, x_k+rotary_dim/2), GPT-NeoX / HF LLaMA / ggml NEOX.
        scaling: context extension (HF ``rope_type`` names), s = scaling_factor,
            L0 = original_max_len:
            None; "linear" or "pi" (Chen et al. 2023: positions / s);
            "ntk" (bloc97 2023: base · s^(d/(d−2)));
            "dynamic" (dynamic NTK, emozilla 2023 / HF: base · ((s·L/L0) − (s − 1))^(d/(d−2))
            with L = max(offset + T, L0), the length of the current call — see below);
            "yarn" (Peng et al. 2024: per-frequency ramp, attention factor 0.1 ln s + 1);
            "llama3" (Meta Llama 3.1 / HF ``rope_type="llama3"``: wavelengths
            λ_k = 2π/θ_k < L0/high_freq_factor keep θ_k, > L0/low_freq_factor take θ_k/s,
            between: (1 − g)·θ_k/s + g·θ_k, g = (L0/λ_k − low)/(high − low));
            "longrope" (Ding et al. 2024 / Phi-3 / HF: θ_k / λ_k with per-pair factors
            λ = long_factor when the call is longer than L0, else short_factor;
            attention factor sqrt(1 + ln s / ln L0)).
        scaling_factor: s ≥ 1 (for "dynamic", HF's ``factor``; for "longrope", the
            extended / original length ratio, used for its attention factor only).
        original_max_len: L0, the training context length ("dynamic", "yarn",
            "llama3", "longrope"); None uses max_len (a model passes its max_len).
        beta_fast, beta_slow: YaRN's β and α (rotations per L0 at the ramp ends).
        yarn_ramp: "paper" (linear in rotations r, Peng et al.) or "hf" (linear in
            pair index between floor/ceil endpoints, as HF transformers).
        low_freq_factor, high_freq_factor: Llama 3's bands (1 and 4 in Llama 3.1,
            with factor 8, L0 = 8192, base 500000).
        short_factor, long_factor: LongRoPE's rescale factors, rotary_dim/2 each.
        attention_factor: override YaRN's / LongRoPE's attention factor m.
        attention_scaling: where m goes. "rotary" (default): cos and sin are
            multiplied by m, as HF and the YaRN / Phi-3 authors' code do, so the
            rotated channels' part of q·k gets m² and pass-through channels none.
            "logits": the whole logit scale is multiplied by m² (relpos before
            issue 13). The two are equal when rotary_dim = head_dim.
        inv_freq: your own frequencies θ_k instead of base^(−2k/rotary_dim): an
            array of rotary_dim/2 positive finite numbers, or a callable
            ``f(rotary_dim) -> array`` (called once per rotary_dim, in float64).
            The scalings then apply to these θ_k as they would to the default ones
            (NTK-aware and dynamic NTK change the base, so they cannot be combined
            with inv_freq).
            Example: ``get("rope", inv_freq=lambda d: 1 / 500000 ** (np.arange(0, d, 2) / d))``.

    Changing the scaling of a built (trained) encoding: :meth:`set_scaling`,
    :meth:`with_scaling`, or :func:`rope_scaling` for every RoPE of a model.

    Dynamic NTK and LongRoPE depend on the length of each call (offset + T, the
    position of its last row + 1), as in HF. Without a KV cache (training,
    ``model(ids)``, ``evaluate_lengths``) every row of a sequence sees one base. With
    a cache (``generate``), relpos does what HF does: cached keys keep the angles
    of the call that produced them and new rows use the base of the current
    length, so past L0 queries and older keys rotate with different bases (the
    inconsistency of HF transformers #25104); relpos does not re-rotate the
    cache. HF also keeps the largest base seen until the length drops below L0;
    relpos recomputes it for every call. LongRoPE switches factors per call the
    same way (Phi-3's code; earlier HF chose them once from the factor).

    Where relpos departs from the papers: "yarn" with ``yarn_ramp="paper"``
    follows the paper's ramp in rotations (HF: "hf"); nothing else differs from
    the reference implementations named above.
    """

    name = "rope"
    channel = "R"
    paper = ("Su et al. 2021 (RoFormer); PI Chen et al. 2023; NTK bloc97 2023; YaRN Peng et al. 2024; "
             "Llama 3.1 (Meta 2024); LongRoPE Ding et al. 2024")
    learnable = ()
    #: True for encodings whose scaling can be switched with set_scaling / rope_scaling
    supports_scaling = True

    def __init__(self, rotary_dim=None, base=10000.0, layout="interleaved", scaling=None, scaling_factor=1.0,
                 original_max_len=None, beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper", low_freq_factor=1.0,
                 high_freq_factor=4.0, short_factor=None, long_factor=None, attention_factor=None,
                 attention_scaling="rotary", inv_freq=None,
                 n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        if inv_freq is not None and not callable(inv_freq):
            inv_freq = _check_user_freqs(inv_freq, None)
            if rotary_dim is None and head_dim is not None and 2 * len(inv_freq) != head_dim \
                    and 2 * len(inv_freq) <= head_dim:
                rotary_dim = 2 * len(inv_freq)  # fewer frequencies than pairs: partial rotary
        if rotary_dim is not None:
            rotary_dim = _check_rotary_dim(rotary_dim)
            if head_dim is not None and rotary_dim > head_dim:
                raise ValueError(f"rotary_dim ({rotary_dim}) must be <= head_dim ({head_dim})")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be 'interleaved' or 'half'; got {layout!r}")
        base = float(base)
        if not math.isfinite(base) or base <= 1.0:
            raise ValueError(f"base must be a finite number > 1; got {base!r}")
        self.rotary_dim = rotary_dim
        self.base = base
        self.layout = layout
        self.user_inv_freq = inv_freq
        self._cache = OrderedDict()
        self.set_scaling(scaling, scaling_factor, original_max_len=original_max_len, beta_fast=beta_fast,
                         beta_slow=beta_slow, yarn_ramp=yarn_ramp, low_freq_factor=low_freq_factor,
                         high_freq_factor=high_freq_factor, short_factor=short_factor, long_factor=long_factor,
                         attention_factor=attention_factor, attention_scaling=attention_scaling)

    # ---- scaling -----------------------------------------------------------
    def scaling_config(self) -> dict:
        """The scaling options now in force (a dict :meth:`set_scaling` takes back)."""
        return {k: getattr(self, k) for k in _SCALING_KEYS}

    def set_scaling(self, scaling=None, scaling_factor=1.0, **options):
        """Switch the context-extension scaling in place (no rebuilding, no new
        parameters); returns self. ``options`` are the scaling options of the
        class (original_max_len, beta_fast, ... attention_scaling); those not given
        take their defaults, and original_max_len defaults to max_len. Raises
        ValueError for a bad combination, leaving the encoding unchanged."""
        unknown = sorted(set(options) - set(_SCALING_KEYS))
        if unknown:
            raise ValueError(f"unknown scaling option(s) {unknown}; known: {', '.join(_SCALING_KEYS[2:])}")
        opts = dict(original_max_len=None, beta_fast=32.0, beta_slow=1.0, yarn_ramp="paper", low_freq_factor=1.0,
                    high_freq_factor=4.0, short_factor=None, long_factor=None, attention_factor=None,
                    attention_scaling="rotary")
        opts.update(options)
        if opts["original_max_len"] is None and self.max_len:
            opts["original_max_len"] = int(self.max_len)
        L0, ramp = opts.pop("original_max_len"), opts.pop("yarn_ramp")
        state = _check_scaling(scaling, scaling_factor, L0, opts.pop("beta_fast"), opts.pop("beta_slow"), ramp,
                               **opts)
        if state["scaling"] in ("ntk", "dynamic") and self.user_inv_freq is not None:
            raise ValueError(f"scaling={state['scaling']!r} changes the base of the default frequencies; it "
                             "cannot be combined with your own inv_freq")
        for key, val in state.items():
            setattr(self, key, val)
        self._cache.clear()
        return self

    def with_scaling(self, scaling=None, scaling_factor=1.0, **options) -> "RoPE":
        """A copy of this encoding with another scaling (see :meth:`set_scaling`)."""
        new = copy.deepcopy(self)
        return new.set_scaling(scaling, scaling_factor, **options)

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

    def frequencies(self, rotary_dim=None, seq_len=None):
        """θ_k (rotary_dim/2,) float64 after scaling (your inv_freq, if given).
        ``seq_len``: the length of the call, for "dynamic" and "longrope" (None = L0)."""
        rd = rotary_dim or self.rotary_dim or self.head_dim
        if self.user_inv_freq is None:
            return rope_inv_freq(rd, self.base, self.scaling, self.scaling_factor, self.original_max_len,
                                 self.beta_fast, self.beta_slow, self.yarn_ramp,
                                 low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,
                                 short_factor=self.short_factor, long_factor=self.long_factor, seq_len=seq_len)
        theta = self.user_inv_freq(rd) if callable(self.user_inv_freq) else self.user_inv_freq
        theta = _check_user_freqs(theta, rd)
        return _scaled_freqs(theta, self.scaling_config(), rd, self.base, seq_len)

    def attention_factor_value(self) -> float:
        """m: YaRN's 0.1 ln s + 1, LongRoPE's sqrt(1 + ln s / ln L0) (1 when s = 1), or
        ``attention_factor`` if given; 1 for the other scalings."""
        if self.scaling not in ("yarn", "longrope"):
            return 1.0
        if self.attention_factor is not None:
            return float(self.attention_factor)
        s = self.scaling_factor
        if s <= 1.0:
            return 1.0
        if self.scaling == "yarn":
            return 0.1 * math.log(s) + 1.0
        return math.sqrt(1.0 + math.log(s) / math.log(self.original_max_len))

    def tables(self, T, offset, rotary_dim):
        """(cos, sin) float32 (T, rotary_dim/2) for positions offset..offset+T−1 (cached);
        multiplied by the attention factor m when attention_scaling="rotary"."""
        key = ("rope", int(T), int(offset), int(rotary_dim))
        hit = self._cache.get(key)
        if hit is None:
            seq_len = int(offset) + int(T) if self.scaling in _LENGTH_DEPENDENT else None
            hit = _C.rope_tables(self.frequencies(rotary_dim, seq_len), int(T), offset=int(offset),
                                 pos_scale=_pos_scale(self.scaling, self.scaling_factor))
            m = self.attention_factor_value()
            if m != 1.0 and self.attention_scaling == "rotary":
                hit = tuple((a * np.float32(m)).astype(np.float32) for a in hit)
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
        """Factor on the logit scale: m² with attention_scaling="logits" (YaRN, LongRoPE), else 1."""
        if self.attention_scaling == "logits":
            return self.attention_factor_value() ** 2
        return 1.0

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """{"scale": m²/√D} with attention_scaling="logits" and m != 1, else {} (rotation
        happens in rotate_q/k, and with "rotary" the tables carry m)."""
        f = self.attention_scale_factor()
        if f == 1.0:
            return {}
        return {"scale": f / math.sqrt(q.shape[-1])}

    def extra_repr(self):
        parts = [f"rotary_dim={self.rotary_dim}", f"base={self.base:g}", f"layout={self.layout!r}"]
        if self.scaling:
            parts.append(f"scaling={self.scaling!r}, scaling_factor={self.scaling_factor:g}")
            if self.scaling in _NEED_L0:
                parts.append(f"original_max_len={self.original_max_len}")
        return ", ".join(parts)


def rope_encodings(target) -> list:
    """The distinct RoPE encodings (those with ``supports_scaling``) of a model, a
    module or one encoding, in module order."""
    mods = target.modules() if hasattr(target, "modules") else [target]
    out, seen = [], set()
    for m in mods:
        if getattr(m, "supports_scaling", False) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


@contextlib.contextmanager
def rope_scaling(target, scaling=None, scaling_factor=1.0, **options):
    """Switch every RoPE of ``target`` (a model, a module or an encoding) to another
    scaling inside a ``with`` block, and back afterwards (even on error):

        >>> with rope_scaling(model, "yarn", 4.0):     # original_max_len: each encoding's max_len
        ...     ppl = evaluate_lengths(model, data, [256])

    Yields the list of encodings changed. Raises ValueError when ``target`` holds
    no RoPE (xPos is not switched: its decay has no published scaling rule).
    """
    encs = rope_encodings(target)
    if not encs:
        raise ValueError(f"{type(target).__name__} has no RoPE encoding to scale (rope_scaling works on models "
                         "whose encoding is 'rope')")
    saved = [(e, e.scaling_config()) for e in encs]
    try:
        for e in encs:
            e.set_scaling(scaling, scaling_factor, **options)
        yield encs
    finally:
        for e, cfg in saved:
            e.set_scaling(**cfg)


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
    supports_scaling = False

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
