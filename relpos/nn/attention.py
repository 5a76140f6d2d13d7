"""Multi-head attention with a pluggable position encoding and a key/value cache."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._fn.attention import check_impl
from .._fn.encoded import KVCache, build
from ..tensor import Tensor, as_array
from .layers import Linear
from .module import Module

__all__ = ["MultiHeadAttention", "KVCache"]


def _is_int(x):
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


class MultiHeadAttention(Module):
    """Multi-head self-attention: q/k/v/out projections, a position encoding, attention_core.

    Args:
        d_model: model width; must be divisible by n_heads (head dim Dh = d_model / n_heads).
        n_heads: number of heads H.
        encoding: a registered encoding name (``relpos.encodings.available()``), an
            Encoding module, or None (no position information inside attention; use
            this with channel-A encodings, which act on the embeddings).
        causal: mask keys after each query's absolute position.
        bias: give the four projections a bias.
        dropout: probability of dropping elements of the attention output (after the
            out projection) in training mode; the kernels never drop attention weights.
        impl: "auto", "fused" or "materialized" (see ``attention_core``).
        seed: seeds the projection initialisation, the encoding and the dropout masks.
        **encoding_options: options of the encoding (e.g. ``base=10000.0`` for RoPE).

    ``forward(x, cache=None, key_padding_mask=None, return_weights=False)``:
    x (B, T, d_model) -> (B, T, d_model); with return_weights, also the
    attention weights (B, H, T, Tk) as an ndarray (materialised path).
    """

    def __init__(self, d_model, n_heads, encoding="rope", causal=True, bias=True, dropout=0.0,
                 impl="auto", seed=None, **encoding_options):
        super().__init__()
        if not _is_int(d_model) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int; got {d_model!r}")
        if not _is_int(n_heads) or n_heads <= 0:
            raise ValueError(f"n_heads must be a positive int; got {n_heads!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads; got d_model={d_model}, n_heads={n_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1); got {dropout!r}")
        check_impl(impl)
        if seed is not None and not _is_int(seed):
            raise TypeError(f"seed must be an int or None; got {type(seed).__name__}")
        self.d_model = int(d_model)
        self.n_heads = int(n_heads)
        self.head_dim = self.d_model // self.n_heads
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.impl = impl
        ss = np.random.SeedSequence(seed)
        seeds = [int(s) for s in ss.generate_state(6, dtype=np.uint32)]
        self.q_proj = Linear(d_model, d_model, bias=bias, seed=seeds[0])
        self.k_proj = Linear(d_model, d_model, bias=bias, seed=seeds[1])
        self.v_proj = Linear(d_model, d_model, bias=bias, seed=seeds[2])
        self.out_proj = Linear(d_model, d_model, bias=bias, seed=seeds[3])
        self._dropout_rng = np.random.default_rng(seeds[4])
        if encoding is None:
            if encoding_options:
                raise ValueError(f"encoding options {sorted(encoding_options)} given with encoding=None")
            self.encoding = None
        else:
            context = dict(n_heads=self.n_heads, head_dim=self.head_dim, d_model=self.d_model, seed=seeds[5])
            enc = build(encoding, context, **encoding_options)
            enc.check_attention(self.causal, where="MultiHeadAttention")
            self.encoding = enc

    def _heads(self, x, B, T):
        """(B, T, d_model) -> (B, H, T, Dh)."""
        return x.reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)

    def forward(self, x, cache=None, key_padding_mask=None, return_weights=False):
        """x (B, T, d_model) Tensor -> (B, T, d_model) [, weights (B, H, T, Tk) ndarray].

        cache: a :class:`KVCache` (or None). Its past keys/values are used and the
        new ones appended; queries sit at absolute positions cache.length + t.
        key_padding_mask: (B, Tk) bool, True = padding, over every key attended to
        (cached and new: Tk = cache.length + T).
        """
        if not isinstance(x, Tensor):
            x = Tensor(as_array(x, "x"))
        if x.ndim != 3 or x.shape[2] != self.d_model:
            raise ValueError(f"x must have shape (B, T, d_model) = (*, *, {self.d_model}); got {x.shape}")
        B, T, _ = x.shape
        enc = self.encoding
        # training/full-sequence fast path: one GEMM into the head layout, a plain rotation on the way
        rope = None
        fused = cache is None and not return_weights
        if fused and enc is not None and enc.rotates:
            rope = enc.rotation(T, 0, self.head_dim)
            fused = rope is not None
        if fused:
            p = (self.q_proj, self.k_proj, self.v_proj)
            q, k, v = F.qkv_heads(x, *(m.weight for m in p), *(m.bias for m in p), n_heads=self.n_heads, rope=rope)
        else:
            q = self._heads(self.q_proj(x), B, T)
            k = self._heads(self.k_proj(x), B, T)
            v = self._heads(self.v_proj(x), B, T)
        res = F.attention(q, k, v, enc, causal=self.causal, key_padding_mask=key_padding_mask, cache=cache,
                          return_weights=return_weights, impl=self.impl, rotated=rope is not None,
                          merge_heads=True)
        out, w = (res if return_weights else (res, None))
        out = self.out_proj(out)
        if self.dropout > 0.0 and self.training:
            seed = int(self._dropout_rng.integers(0, 2 ** 63))
            out = F.dropout(out, self.dropout, seed)
        return (out, w) if return_weights else out

    def extra_repr(self) -> str:
        enc = "None" if self.encoding is None else repr(self.encoding.name)
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, encoding={enc}, causal={self.causal}, "
                f"dropout={self.dropout}, impl={self.impl!r}")
