"""Channel A: absolute encodings added to (or building) the token embeddings —
none (NoPE), sinusoidal, learned absolute, complex word order (Wang et al. 2020).

    >>> enc = relpos.encodings.get("sinusoidal", d_model=64)
    >>> h = enc.embed(x, np.arange(T))          # x (B, T, 64) Tensor -> (B, T, 64)
    >>> enc = relpos.encodings.get("complex", d_model=64, vocab_size=256)
    >>> h = enc.embed(None, np.arange(T), ids)  # ids (B, T) ints -> (B, T, 64)
"""
from __future__ import annotations

import math

import numpy as np

from .. import _C
from ..nn import Parameter
from ..tensor import Function, as_array
from .base import Encoding
from .registry import register

__all__ = ["sinusoidal_table"]

_SIN_LAYOUTS = ("interleaved", "concat")


def sinusoidal_table(T, d_model, offset=0, layout="interleaved", base=10000.0, positions=None):
    """Sinusoidal positions (Vaswani et al. 2017), (T, d_model) float32.

    interleaved: PE(p, 2k) = sin(p·base^(−2k/d)), PE(p, 2k+1) = cos(...);
    concat: [sin_0 … sin_{d/2−1}, cos_0 … cos_{d/2−1}]. p = offset + t, or
    ``positions`` (T,) ints. Angles in float64. d_model must be even.
    """
    if positions is not None:
        positions = np.asarray(positions)
        if positions.ndim != 1:
            raise ValueError(f"positions must have shape (T,); got {positions.shape}")
        T = positions.shape[0]
    return _C.sinusoidal_table(int(T), int(d_model), offset=int(offset), layout=layout, base=float(base),
                               positions=positions)


def _positions(positions, T):
    """(T,) int64 positions, or arange(T) for None; ValueError naming what is wrong."""
    if positions is None:
        return np.arange(T, dtype=np.int64)
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers; got dtype {pos.dtype}")
    if pos.shape != (T,):
        raise ValueError(f"positions must have shape (T,) = ({T},); got {pos.shape}")
    if T and pos.min() < 0:
        raise ValueError(f"positions must be >= 0; got {int(pos.min())}")
    return np.ascontiguousarray(pos, dtype=np.int64)


def _check_x(x, d_model, name):
    if x is None:
        raise ValueError(f"encoding {name!r} adds to token embeddings: x (B, T, d_model) must be given")
    if len(x.shape) != 3 or (d_model is not None and x.shape[2] != d_model):
        raise ValueError(f"x must have shape (B, T, d_model={d_model}); got {tuple(x.shape)}")


class _AddTable(Function):
    """x (B, T, d) + table (T, d) (a constant): dx = g."""

    @staticmethod
    def forward(ctx, x, table):
        return as_array(x, "x") + table

    @staticmethod
    def backward(ctx, g):
        return g if ctx.needs_input_grad[0] else None


class _AddRows(Function):
    """x (B, T, d) + E[positions] with E (L, d): dx = g, dE[p] += Σ_b g[b, t] for positions[t] = p."""

    @staticmethod
    def forward(ctx, x, E, positions):
        ctx.positions, ctx.E_shape = positions, E.shape
        return as_array(x, "x") + E[positions]

    @staticmethod
    def backward(ctx, g):
        dx = g if ctx.needs_input_grad[0] else None
        dE = None
        if ctx.needs_input_grad[1]:
            dE = np.zeros(ctx.E_shape, dtype=np.float32)
            gsum = g.sum(axis=0, dtype=np.float32)
            pos = ctx.positions
            T = len(pos)
            if T and pos[-1] - pos[0] == T - 1 and np.all(np.diff(pos) == 1):
                dE[pos[0]:pos[0] + T] = gsum  # consecutive positions (the usual case): one row each
            else:
                # np.add.at runs in index order: deterministic, and correct for repeated positions
                np.add.at(dE, pos, gsum)
        return dx, dE


class _ComplexEmbed(Function):
    """[r cos(ω p + θ) | r sin(ω p + θ)] for ids (B, T); gradients into r, ω, θ by the C core."""

    @staticmethod
    def forward(ctx, r, omega, theta, ids, positions):
        ctx.save_for_backward(r, omega, theta, ids, positions)
        return _C.complex_embed_fwd(ids, r, omega, theta, positions)

    @staticmethod
    def backward(ctx, g):
        r, omega, theta, ids, positions = ctx.saved
        dr, dom, dth = _C.complex_embed_bwd(ids, r, omega, theta, positions, np.ascontiguousarray(g, np.float32))
        n = ctx.needs_input_grad
        return (dr if n[0] else None, dom if n[1] else None, dth if n[2] else None)


class _Project(Function):
    """z (B, T, m) @ W (m, d) -> (B, T, d)."""

    @staticmethod
    def forward(ctx, z, W):
        ctx.save_for_backward(z, W)
        return np.matmul(z, W)

    @staticmethod
    def backward(ctx, g):
        z, W = ctx.saved
        dz = np.matmul(g, W.T) if ctx.needs_input_grad[0] else None
        dW = np.matmul(z.reshape(-1, z.shape[-1]).T, g.reshape(-1, g.shape[-1])) if ctx.needs_input_grad[1] else None
        return dz, dW


# ---------------------------------------------------------------- encodings


@register
class NoPE(Encoding):
    """No position encoding (Haviv et al. 2022; Kazemnejad et al. 2023).

    Causal attention alone tells order (a token sees only its past); a
    bidirectional model without positions cannot, so causal=False raises.
    """

    name = "none"
    channel = "A"
    paper = "Haviv et al. 2022; Kazemnejad et al. 2023"
    causal_only = True
    learnable = ()

    def __init__(self, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)

    def embed(self, x, positions=None, ids=None):
        """x (B, T, d_model) -> x unchanged."""
        return x

    def check_attention(self, causal: bool, where: str = "attention") -> None:
        """NoPE adds nothing anywhere, so it may stand inside attention too (causal only)."""
        self.check_causal(causal)


@register
class Sinusoidal(Encoding):
    """Fixed sinusoidal positions added to the token embeddings (Vaswani et al. 2017).

    Options: layout "interleaved" (PE(p,2k)=sin, PE(p,2k+1)=cos, as the paper) or
    "concat" ([sin…, cos…], as tensor2tensor / fairseq); base (10000).
    Needs d_model (even). The model, not this encoding, decides whether token
    embeddings are multiplied by √d_model first.
    """

    name = "sinusoidal"
    channel = "A"
    paper = "Vaswani et al. 2017"
    learnable = ()

    def __init__(self, layout="interleaved", base=10000.0, n_heads=None, head_dim=None, d_model=None,
                 max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        if layout not in _SIN_LAYOUTS:
            raise ValueError(f"layout must be 'interleaved' or 'concat'; got {layout!r}")
        base = float(base)
        if not math.isfinite(base) or base <= 0:
            raise ValueError(f"base must be a finite number > 0; got {base!r}")
        if d_model is not None and d_model % 2:
            raise ValueError(f"sinusoidal needs an even d_model (sin/cos pairs); got {d_model}")
        self.layout, self.base = layout, base
        self._last = None  # ((first position, T), table)

    def table(self, positions):
        """(T, d_model) float32 for positions (T,) ints (the last table of consecutive positions is kept)."""
        self._need(d_model=self.d_model)
        pos = _positions(positions, len(positions))
        T = len(pos)
        consecutive = T > 0 and pos[-1] - pos[0] == T - 1 and np.all(np.diff(pos) == 1)
        if not consecutive:
            return sinusoidal_table(T, self.d_model, layout=self.layout, base=self.base, positions=pos)
        key = (int(pos[0]), T)
        if self._last is None or self._last[0] != key:
            tab = sinusoidal_table(T, self.d_model, offset=int(pos[0]), layout=self.layout, base=self.base)
            tab.flags.writeable = False  # shared by later calls
            self._last = (key, tab)
        return self._last[1]

    def embed(self, x, positions=None, ids=None):
        """x (B, T, d_model) Tensor, positions (T,) ints (default 0..T−1) -> x + PE[positions]."""
        self._need(d_model=self.d_model)
        _check_x(x, self.d_model, self.name)
        pos = _positions(positions, x.shape[1])
        return _AddTable.apply(x, self.table(pos))

    def extra_repr(self):
        return f"d_model={self.d_model}, layout={self.layout!r}, base={self.base:g}"


@register
class LearnedAbsolute(Encoding):
    """A learned table E (max_len, d_model) added to the token embeddings (GPT, BERT).

    Init N(0, 0.02²) from ``seed`` (GPT-2). Positions ≥ max_len have no row: a
    ValueError with the numbers, unless clamp=True (they reuse row max_len − 1).
    """

    name = "learned"
    channel = "A"
    paper = "Radford et al. 2018 (GPT); Devlin et al. 2019 (BERT)"
    learnable = ("weight",)

    def __init__(self, clamp=False, init_std=0.02, n_heads=None, head_dim=None, d_model=None, max_len=None,
                 seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(d_model=d_model, max_len=max_len)
        self.clamp = bool(clamp)
        self.init_std = float(init_std)
        if not (np.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"init_std must be a finite number >= 0; got {init_std!r}")
        rng = np.random.default_rng(seed)
        self.weight = Parameter(rng.normal(0.0, self.init_std, size=(max_len, d_model)).astype(np.float32))

    def embed(self, x, positions=None, ids=None):
        """x (B, T, d_model) Tensor, positions (T,) ints (default 0..T−1) -> x + E[positions]."""
        _check_x(x, self.d_model, self.name)
        T = x.shape[1]
        pos = _positions(positions, T)
        if T and pos.max() >= self.max_len:
            if not self.clamp:
                raise ValueError(
                    f"learned absolute positions go up to max_len - 1 = {self.max_len - 1}; got position "
                    f"{int(pos.max())} (sequence of {T} positions from {int(pos[0])}). Build the encoding with "
                    f"max_len > {int(pos.max())}, or pass clamp=True to reuse the last row")
            pos = np.minimum(pos, self.max_len - 1)
        return _AddRows.apply(x, self.weight, pos)

    def extra_repr(self):
        return f"max_len={self.max_len}, d_model={self.d_model}, clamp={self.clamp}"


@register
class ComplexOrder(Encoding):
    """Complex word-order embeddings (Wang et al., ICLR 2020): token w at position p is
    r_w ⊙ exp(i(ω_w·p + θ_w)), with amplitude r, frequency ω and phase θ tables
    (vocab_size, d_c); real and imaginary parts feed the model.

    It builds the token embedding itself (``embed(None, positions, ids)``).
    Options: vocab_size (required); combine "concat" (d_c = d_model/2, output
    [real | imag]) or "project" (d_c = d_model, [real | imag] @ W with W (2·d_model,
    d_model)). Init (relpos's choice): r ~ N(0, 0.02²), ω_w,k = 10000^(−k/d_c)
    for every token (the sinusoidal spectrum), θ ~ U(0, 2π), W ~ N(0, 0.02²).
    """

    name = "complex"
    channel = "A"
    paper = "Wang et al. 2020 (complex word order, ICLR)"
    learnable = ("r", "omega", "theta", "proj (combine='project')")
    replaces_token_embedding = True

    def __init__(self, vocab_size=None, combine="concat", n_heads=None, head_dim=None, d_model=None,
                 max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(vocab_size=vocab_size, d_model=d_model)
        if combine not in ("concat", "project"):
            raise ValueError(f"combine must be 'concat' or 'project'; got {combine!r}")
        if combine == "concat" and d_model % 2:
            raise ValueError(f"complex with combine='concat' needs an even d_model (real | imag halves); got {d_model}")
        self.vocab_size, self.combine = int(vocab_size), combine
        dc = d_model // 2 if combine == "concat" else d_model
        self.complex_dim = dc
        rng = np.random.default_rng(seed)
        self.r = Parameter(rng.normal(0.0, 0.02, size=(vocab_size, dc)).astype(np.float32))
        spectrum = 10000.0 ** (-np.arange(dc, dtype=np.float64) / max(dc, 1))
        self.omega = Parameter(np.tile(spectrum, (vocab_size, 1)).astype(np.float32))
        self.theta = Parameter(rng.uniform(0.0, 2 * math.pi, size=(vocab_size, dc)).astype(np.float32))
        if combine == "project":
            self.proj = Parameter(rng.normal(0.0, 0.02, size=(2 * dc, d_model)).astype(np.float32))

    def embed(self, x, positions=None, ids=None):
        """ids (B, T) ints, positions (T,) ints (default 0..T−1); x is ignored -> (B, T, d_model)."""
        if ids is None:
            raise ValueError("encoding 'complex' builds the token embedding itself: ids (B, T) must be given")
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers; got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (B, T); got {ids.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        pos = _positions(positions, ids.shape[1])
        z = _ComplexEmbed.apply(self.r, self.omega, self.theta, ids, pos)
        if self.combine == "project":
            z = _Project.apply(z, self.proj)
        return z

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, combine={self.combine!r}"
