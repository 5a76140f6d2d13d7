"""Channel C: relative-content encodings (Shaw, Transformer-XL, DeBERTa), and
CoPE, which needs the whole logit row (materialised path only).

The attention kernel reads tables of relative embeddings through the index
rule of ``csrc/core/attention.h``: ``idx = clamp(sign * (i_abs - j) + off, 0, R-1)``.
Each encoding here returns its tables (Tensors, so gradients reach its
parameters) and their ``(sign, off)`` for :func:`relpos.functional.attention_core`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _C
from ..nn import Parameter
from ..tensor import Function, no_grad
from .base import Encoding, _window
from .bias import _pos_int, relative_positions
from .registry import register

__all__ = ["deberta_log_bucket"]


# ---- autograd Functions ------------------------------------------------------------

class AddHeadVector(Function):
    """x (B, H, T, D) + u (H, D) broadcast over batch and positions."""

    @staticmethod
    def forward(ctx, x, u):
        return x + u[None, :, None, :]

    @staticmethod
    def backward(ctx, g):
        gx = g if ctx.needs_input_grad[0] else None
        gu = g.sum(axis=(0, 2)) if ctx.needs_input_grad[1] else None
        return gx, gu


class ProjectTable(Function):
    """table (R, E) projected per head: W (H, E, D) -> (H, R, D), ``out[h] = table @ W[h]``.

    One GEMM of the relpos core, (R, E) @ (E, H*D): deterministic for any
    thread count, and no second thread pool (BLAS) next to OpenMP's."""

    @staticmethod
    def forward(ctx, table, W):
        H, E, D = W.shape
        R = table.shape[0]
        t = np.ascontiguousarray(table, dtype=np.float32)
        W2 = np.ascontiguousarray(W.transpose(1, 0, 2), dtype=np.float32).reshape(E, H * D)
        ctx.save_for_backward(t, W2)
        ctx.dims = (H, E, D, R)
        return np.ascontiguousarray(_C.gemm(t, W2).reshape(R, H, D).transpose(1, 0, 2))

    @staticmethod
    def backward(ctx, g):
        t, W2 = ctx.saved
        H, E, D, R = ctx.dims
        g2 = np.ascontiguousarray(np.asarray(g, dtype=np.float32).transpose(1, 0, 2)).reshape(R, H * D)
        gt = _C.gemm(g2, W2, trans_b=True) if ctx.needs_input_grad[0] else None
        gW = None
        if ctx.needs_input_grad[1]:
            gW = np.ascontiguousarray(_C.gemm(t, g2, trans_a=True).reshape(E, H, D).transpose(1, 0, 2))
        return gt, gW


class CopeBias(Function):
    """q (B, H, Tq, D), k (B, H, Tk, D), e (npos, D) -> (B, H, Tq, Tk) CoPE logits (C kernel)."""

    @staticmethod
    def forward(ctx, q, k, e, q_offset=0, scale=1.0):
        ctx.save_for_backward(q, k, e)
        ctx.args = (q_offset, scale)
        return _C.cope_fwd(q, k, e, q_offset, scale)

    @staticmethod
    def backward(ctx, g):
        if not any(ctx.needs_input_grad):
            return None, None, None
        q, k, e = ctx.saved
        q_offset, scale = ctx.args
        grads = _C.cope_bwd(q, k, e, np.ascontiguousarray(g, dtype=np.float32), q_offset, scale)
        return tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad))


def sinusoid_table(distances, dim: int) -> np.ndarray:
    """Transformer-XL relative sinusoids: distances (n,) -> (n, dim) float32,
    ``[sin(d w_k), cos(d w_k)]`` concatenated, ``w_k = 10000^(-2k/dim)``
    (computed in float64)."""
    inv = 1.0 / 10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    a = np.asarray(distances, dtype=np.float64)[:, None] * inv[None, :]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1).astype(np.float32)


def _check_heads(enc, q):
    if q.shape[1] != enc.n_heads:
        raise ValueError(f"encoding {enc.name!r} was built for n_heads={enc.n_heads}; "
                         f"got q with {q.shape[1]} heads (q.shape={tuple(q.shape)})")
    if enc.head_dim is not None and q.shape[3] != enc.head_dim:
        raise ValueError(f"encoding {enc.name!r} was built for head_dim={enc.head_dim}; "
                         f"got q with head dim {q.shape[3]} (q.shape={tuple(q.shape)})")


# ---- encodings -----------------------------------------------------------------------

@register
class Shaw(Encoding):
    """Shaw, Uszkoreit, Vaswani 2018, "Self-Attention with Relative Position
    Representations": ``e_ij = q_i.(k_j + a^K_ij) / sqrt(d)``,
    ``z_i = sum_j a_ij (v_j + a^V_ij)``, ``a_ij = w[clip(j - i, -k, k)]``.
    The tables w^K, w^V (1, 2k+1, head_dim) are shared across heads, as in the paper.

    Options:
        k (int, 16): the clipping distance.
        values (bool, False): also add a^V to the values (w^V).
    Context: n_heads, head_dim (required), seed (init N(0, 0.02^2)).

    Where relpos departs from the paper: values=False by default (the paper's
    models add a^V as well; its ablation found a^K alone about as good). k = 16
    is the paper's setting (its clipping ablation shows k >= 2 all close).
    """

    name = "shaw"
    channel = "C"
    paper = "Shaw, Uszkoreit, Vaswani 2018 (arXiv 1803.02155)"
    learnable = ("wK", "wV (if values=True)")

    def __init__(self, k=16, values=False, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(n_heads=n_heads, head_dim=head_dim)
        self.k = _pos_int(k, "k", 0)
        self.values = bool(values)
        rng = np.random.default_rng(seed)
        R = 2 * self.k + 1
        self.wK = Parameter(rng.normal(0.0, 0.02, (1, R, head_dim)).astype(np.float32))
        if self.values:
            self.wV = Parameter(rng.normal(0.0, 0.02, (1, R, head_dim)).astype(np.float32))

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """relk = w^K (1, 2k+1, D) with relk_ix = (-1, k); relv = w^V likewise if values."""
        self.check_causal(causal)
        _check_heads(self, q)
        out = {"relk": self.wK, "relk_ix": (-1, self.k)}
        if self.values:
            out.update(relv=self.wV, relv_ix=(-1, self.k))
        return out

    def extra_repr(self):
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}, k={self.k}, values={self.values}"


@register
class TransformerXL(Encoding):
    """Transformer-XL relative attention (Dai et al. 2019):
    ``A_ij = q_i.k_j + q_i.W_R R_{i-j} + u.k_j + v.W_R R_{i-j}``, R the
    sinusoids of :func:`sinusoid_table` (not learned), W_R a learned projection
    per head, u and v learned per head. Given to attention as the content query
    ``q + u``, the position query ``qr = q + v`` and ``relk = W_R R`` over the
    window's whole distance range (index (+1, Tk-1-q_offset)), so no rel-shift.

    Options:
        r_dim (int or None, None): width of R; None uses d_model, or n_heads * head_dim.
    Context: n_heads, head_dim (required), d_model, seed
    (W_R ~ N(0, 1/r_dim), u, v ~ N(0, 0.02^2)).

    Where relpos departs from the authors' code (kimiyoung/transformer-xl): u and v
    belong to each layer (the code shares them across layers unless ``untie_r``);
    there is no segment-level memory (a KV cache plays that part in generation);
    and the terms are computed per tile instead of with the rel-shift trick
    (same logits).
    """

    name = "xl"
    channel = "C"
    paper = "Dai et al. 2019 (Transformer-XL, arXiv 1901.02860)"
    learnable = ("W_R", "u", "v")

    def __init__(self, r_dim=None, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(n_heads=n_heads, head_dim=head_dim)
        if r_dim is None:
            r_dim = d_model or n_heads * head_dim
        r_dim = _pos_int(r_dim, "r_dim", 2)
        if r_dim % 2:
            raise ValueError(f"xl r_dim must be even (sin and cos halves); got {r_dim}")
        self.r_dim = r_dim
        rng = np.random.default_rng(seed)
        self.W_R = Parameter(rng.normal(0.0, 1.0 / math.sqrt(r_dim), (n_heads, r_dim, head_dim)).astype(np.float32))
        self.u = Parameter(rng.normal(0.0, 0.02, (n_heads, head_dim)).astype(np.float32))
        self.v = Parameter(rng.normal(0.0, 0.02, (n_heads, head_dim)).astype(np.float32))

    def rel_keys(self, d0: int, n: int):
        """(H, n, D) Tensor ``W_R R_d`` for d = d0 .. d0+n-1."""
        key = (d0, n)
        cached = self.__dict__.get("_r_cache")
        if cached is None or cached[0] != key:  # the same window comes back every layer and step
            cached = (key, sinusoid_table(np.arange(d0, d0 + n), self.r_dim))
            self.__dict__["_r_cache"] = cached
        return ProjectTable.apply(cached[1], self.W_R)

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """q = q + u, qr = q + v, relk = W_R R (H, Tq+Tk-1, D), relk_ix = (+1, Tk-1-q_offset)."""
        self.check_causal(causal)
        _check_heads(self, q)
        Tq, Tk = q.shape[2], k.shape[2]
        d0, n = _window(Tq, Tk, q_offset)
        return {"q": AddHeadVector.apply(q, self.u), "qr": AddHeadVector.apply(q, self.v),
                "relk": self.rel_keys(d0, n), "relk_ix": (1, Tk - 1 - q_offset)}

    def bias_matrix(self, Tq: int, Tk: int, q_offset: int = 0) -> np.ndarray:
        """(H, Tq, Tk): the position-only term ``v.W_R R_{i-j} / sqrt(head_dim)``."""
        d0, n = _window(Tq, Tk, q_offset)
        with no_grad():
            rk = self.rel_keys(d0, n).data.astype(np.float64)          # (H, n, D)
        prof = np.einsum("hnd,hd->hn", rk, self.v.data.astype(np.float64)) / math.sqrt(self.head_dim)
        return prof[:, relative_positions(Tq, Tk, q_offset) - d0]

    def extra_repr(self):
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}, r_dim={self.r_dim}"


def deberta_log_bucket(relative_position, position_buckets: int, max_relative_positions: int) -> np.ndarray:
    """DeBERTa-v2's log-bucketed relative position (HF ``make_log_bucket_position``,
    Microsoft's ``make_log_bucket_position``) of each ``i - j``, as int64.

    With ``mid = position_buckets // 2``: distances with ``|d| <= mid`` keep
    their value; beyond, ``sign(d) * (mid + ceil(log(|d|/mid) / log((max_relative_positions-1)/mid)
    * (mid - 1)))``, which reaches ``position_buckets - 1`` at ``|d| = max_relative_positions - 1``
    and keeps growing past it (the table index clamps it). Computed in float64
    (HF: float32; the same buckets away from exact ties of the log).
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    b = _pos_int(position_buckets, "position_buckets", 2)
    m = _pos_int(max_relative_positions, "max_relative_positions", 2)
    mid = b // 2
    if m - 1 <= mid:
        raise ValueError(f"max_relative_positions must be > position_buckets // 2 + 1 = {mid + 1}; got {m}")
    absd = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float64)
    log_pos = np.ceil(np.log(absd / mid) / math.log((m - 1) / mid) * (mid - 1)) + mid
    return np.where(absd <= mid, rel, np.sign(rel) * log_pos).astype(np.int64)


class _Rows(Function):
    """table (R, E) -> table[rows] (n, E); the gradient sums each row's
    gradients in order (several distances share one bucket)."""

    @staticmethod
    def forward(ctx, table, rows):
        ctx.rows, ctx.R = rows, table.shape[0]
        return np.ascontiguousarray(table[rows])

    @staticmethod
    def backward(ctx, g):
        if not ctx.needs_input_grad[0]:
            return None, None
        out = np.zeros((ctx.R, g.shape[1]), dtype=np.float32)
        np.add.at(out, ctx.rows, np.asarray(g, dtype=np.float32))
        return out, None


@register
class DeBERTa(Encoding):
    """DeBERTa disentangled attention (He et al. 2021):
    ``A_ij = Q^c_i.K^c_j + Q^c_i.K^r_{δ(i,j)} + K^c_j.Q^r_{δ(·)}`` scaled by
    ``1/sqrt(3 d)``, ``δ(i, j) = clip(i - j, -k, k-1) + k``. K^r and Q^r are per-head
    projections of one shared learned table P (2k, p_dim).

    Options:
        k (int, 128): the relative span (P has 2k rows); with ``position_buckets``
            the span is position_buckets instead, and k must be left None.
        p_dim (int or None, None): width of P; None uses d_model, or n_heads * head_dim.
        p2c ("official" | "paper", "official"): which index the position-to-content
            term reads.
            "official" (default): ``K^c_j.Q^r_{δ(i,j)}``, the same index as c2p — what
            Microsoft's code, HF transformers and every pretrained checkpoint compute
            (Microsoft/DeBERTa issue #162).
            "paper": ``K^c_j.Q^r_{δ(j,i)}``, as the paper's equation 4 is written.
            Example (T=3, k=2, one channel, P = [[0],[1],[2],[3]], Q^c = 0, K^c = 1,
            W_qr = 1): row 0's logits × sqrt(3) are [2, 1, 0] "official", [2, 3, 3] "paper".
        position_buckets (int or None, None): DeBERTa-v2/v3 log buckets (HF
            ``position_buckets``; 256 in deberta-v3): distances past
            position_buckets // 2 share log-spaced buckets
            (:func:`deberta_log_bucket`), and P has 2 * position_buckets rows.
        max_relative_positions (int or None, None): with buckets, the distance at
            which they reach the last bucket (HF ``max_relative_positions``, whose
            default -1 means max_position_embeddings, 512); None uses max_len, else 512.
    Context: n_heads, head_dim (required), d_model, max_len, seed
    (P ~ N(0, 0.02^2), projections ~ N(0, 1/p_dim)).

    Where relpos departs from the reference code: the projections of P have no
    bias (HF's ``pos_key_proj``/``pos_query_proj`` in v2 and ``pos_q_proj`` in
    v1 do); P is used as it is (v2 may LayerNorm it, ``norm_rel_ebd``); no
    ``share_att_key``; and every layer holds its own P (HF shares one table across
    layers) unless one instance is given to the model. With ``q_offset`` (a KV
    cache) positions are absolute on both sides; HF's p2c rebuilds a key-by-key
    index when query and key lengths differ.

    Given to attention as ``relk = K^r`` with index (+1, k) (c2p) and
    ``relq = Q^r`` with (+1, k) ("official") or (-1, k) ("paper"); with buckets,
    as tables over the window's distances (one row per ``i - j``, gathered from
    the buckets) with index (+1, Tk-1-q_offset), as Transformer-XL.
    """

    name = "deberta"
    channel = "C"
    paper = "He, Liu, Gao, Chen 2021 (DeBERTa, arXiv 2006.03654)"
    learnable = ("P", "W_kr", "W_qr")

    def __init__(self, k=None, p_dim=None, p2c="official", position_buckets=None, max_relative_positions=None,
                 n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(n_heads=n_heads, head_dim=head_dim)
        if p2c not in ("official", "paper"):
            raise ValueError(f"deberta p2c must be 'official' (Microsoft/HF, the default) or 'paper'; got {p2c!r}")
        self.p2c = p2c
        if position_buckets is not None:
            if k is not None:
                raise ValueError("deberta: give either k (plain clipping) or position_buckets (log buckets, "
                                 f"span = position_buckets); got k={k!r} and position_buckets={position_buckets!r}")
            self.position_buckets = _pos_int(position_buckets, "position_buckets", 2)
            if max_relative_positions is None:
                max_relative_positions = max_len if max_len else 512
            self.max_relative_positions = _pos_int(max_relative_positions, "max_relative_positions", 2)
            deberta_log_bucket(0, self.position_buckets, self.max_relative_positions)  # checks the pair
            self.k = self.position_buckets
        else:
            if max_relative_positions is not None:
                raise ValueError("deberta: max_relative_positions is used with position_buckets; without "
                                 "buckets the span is k")
            self.position_buckets = None
            self.max_relative_positions = None
            self.k = _pos_int(128 if k is None else k, "k", 1)
        if p_dim is None:
            p_dim = d_model or n_heads * head_dim
        self.p_dim = _pos_int(p_dim, "p_dim", 1)
        rng = np.random.default_rng(seed)
        std = 1.0 / math.sqrt(self.p_dim)
        self.P = Parameter(rng.normal(0.0, 0.02, (2 * self.k, self.p_dim)).astype(np.float32))
        self.W_kr = Parameter(rng.normal(0.0, std, (n_heads, self.p_dim, head_dim)).astype(np.float32))
        self.W_qr = Parameter(rng.normal(0.0, std, (n_heads, self.p_dim, head_dim)).astype(np.float32))

    def table_rows(self, distances) -> np.ndarray:
        """Row of P that a distance ``d = i - j`` reads: ``clamp(bucket(d) + k, 0, 2k - 1)``
        (bucket(d) = d without ``position_buckets``). int64, shaped like ``distances``."""
        d = np.asarray(distances, dtype=np.int64)
        if self.position_buckets is not None:
            d = deberta_log_bucket(d, self.position_buckets, self.max_relative_positions)
        return np.clip(d + self.k, 0, 2 * self.k - 1)

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """relk = K^r, relq = Q^r (H, 2k, D) with their index rules (see the class
        docstring); scale = 1/sqrt(3D)."""
        self.check_causal(causal)
        _check_heads(self, q)
        scale = 1.0 / math.sqrt(3.0 * q.shape[3])
        if self.position_buckets is None:
            return {"relk": ProjectTable.apply(self.P, self.W_kr), "relk_ix": (1, self.k),
                    "relq": ProjectTable.apply(self.P, self.W_qr),
                    "relq_ix": (1, self.k) if self.p2c == "official" else (-1, self.k), "scale": scale}
        # log buckets are not a clamp of i - j: one table row per distance of the window
        Tq, Tk = q.shape[2], k.shape[2]
        d0, n = _window(Tq, Tk, q_offset)
        d = np.arange(d0, d0 + n, dtype=np.int64)
        c2p_rows = self.table_rows(d)
        p2c_rows = c2p_rows if self.p2c == "official" else self.table_rows(-d)
        ix = (1, Tk - 1 - q_offset)
        return {"relk": ProjectTable.apply(_Rows.apply(self.P, c2p_rows), self.W_kr), "relk_ix": ix,
                "relq": ProjectTable.apply(_Rows.apply(self.P, p2c_rows), self.W_qr), "relq_ix": ix,
                "scale": scale}

    def extra_repr(self):
        extra = (f", position_buckets={self.position_buckets}, max_relative_positions={self.max_relative_positions}"
                 if self.position_buckets is not None else f", k={self.k}")
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}{extra}, p_dim={self.p_dim}, p2c={self.p2c!r}"


@register
class CoPE(Encoding):
    """CoPE, contextual position encoding (Golovneva et al. 2024). Gates
    ``g_ij = sigmoid(scale q_i.k_j)``, positions ``p_ij = sum_{t=j..i} g_it``
    (clamped to npos - 1), extra logit = linear interpolation of
    ``z_i[floor p]`` and ``z_i[ceil p]`` with ``z_i[p] = q_i.e[p]``; e (npos, head_dim)
    is shared by the heads and starts at zero, as in the authors' code, where
    the gates also see the scaled logits (scale = 1/sqrt(head_dim) here).

    It needs the whole logit row before the softmax, so it runs on the
    materialised attention path only (``materialized_only``), and it is causal
    only. Padded keys still count in p (attention_inputs does not see the mask).

    Options:
        npos (int, 64): number of position embeddings (the p_max of the paper).
    Context: n_heads, head_dim (required).
    """

    name = "cope"
    channel = "B"
    paper = "Golovneva et al. 2024 (CoPE, arXiv 2405.18719)"
    learnable = ("e",)
    causal_only = True
    materialized_only = True

    def __init__(self, npos=64, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(n_heads=n_heads, head_dim=head_dim)
        self.npos = _pos_int(npos, "npos", 1)
        self.e = Parameter(np.zeros((self.npos, head_dim), dtype=np.float32))

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """bias_full (B, H, Tq, Tk) from q, k and e (gradients into all three)."""
        self.check_causal(causal)
        _check_heads(self, q)
        return {"bias_full": CopeBias.apply(q, k, self.e, q_offset=q_offset,
                                            scale=1.0 / math.sqrt(q.shape[3]))}

    def extra_repr(self):
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}, npos={self.npos}"
