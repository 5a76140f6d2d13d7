"""Multi-head attention with a pluggable position encoding and a key/value cache."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, as_array
from .module import Module

__all__ = ["MultiHeadAttention", "KVCache"]


class KVCache:
    """Past keys and values of one attention layer, for generation.

    ``k``, ``v`` are (B, H, length, Dh) float32 ndarrays (keys already rotated
    by the encoding at their absolute positions) or None while empty. The
    layer appends the new keys and values on every call; the next queries are
    placed at ``q_offset = length``. The cache holds plain arrays: gradients do
    not flow into past steps (generation runs under ``relpos.no_grad()``).
    """

    __slots__ = ("k", "v")

    def __init__(self):
        self.k = None
        self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[2])

    def append(self, k: np.ndarray, v: np.ndarray):
        """Add keys/values (B, H, T, Dh); returns all keys and values so far."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            if k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]:
                raise ValueError(f"new keys of shape {k.shape} do not fit the cache of shape {self.k.shape}")
            self.k = np.concatenate([self.k, k], axis=2)
            self.v = np.concatenate([self.v, v], axis=2)
        return self.k, self.v

    def reset(self):
        self.k = self.v = None

    def __repr__(self):
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, k_shape={shape})"


def _fused_rope(enc, T, q_offset):
    """(rope,) for the fused q/k/v path: rope None when the encoding does not
    rotate, the (cos, sin, rotary_dim, layout) of plain RoPE; None when the
    encoding rotates some other way (xPos...) and the general path must run."""
    from ..encodings.base import Encoding
    from ..encodings.rotary import RoPE
    if enc is None or (type(enc).rotate_q is Encoding.rotate_q and type(enc).rotate_k is Encoding.rotate_k):
        return (None,)
    if type(enc) is RoPE and enc.head_dim is not None:
        rd = enc._rotary_dim_for(enc.head_dim)
        cos, sin = enc.tables(T, q_offset, rd)
        return ((cos, sin, rd, enc.layout),)
    return None


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
        if impl not in ("auto", "fused", "materialized"):
            raise ValueError(f"impl must be one of ('auto', 'materialized', 'fused'); got {impl!r}")
        if seed is not None and not _is_int(seed):
            raise TypeError(f"seed must be an int or None; got {type(seed).__name__}")
        from . import Linear

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
            from .. import encodings
            if isinstance(encoding, encodings.Encoding):
                if encoding_options:
                    raise ValueError("encoding options are given to an already built encoding; "
                                     f"got {sorted(encoding_options)}")
                enc = encoding
            else:
                opts = dict(encoding_options)
                opts.setdefault("n_heads", self.n_heads)
                opts.setdefault("head_dim", self.head_dim)
                opts.setdefault("d_model", self.d_model)
                opts.setdefault("seed", seeds[5])
                enc = encodings.get(encoding, **opts)
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
        from ..functional import attention_core

        if not isinstance(x, Tensor):
            x = Tensor(as_array(x, "x"))
        if x.ndim != 3 or x.shape[2] != self.d_model:
            raise ValueError(f"x must have shape (B, T, d_model) = (*, *, {self.d_model}); got {x.shape}")
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a relpos.nn.KVCache or None; got {type(cache).__name__}")
        B, T, _ = x.shape
        q_offset = cache.length if cache is not None else 0
        if cache is not None and cache.k is not None and cache.k.shape[0] != B:
            raise ValueError(f"x has batch {B} but the cache holds batch {cache.k.shape[0]}")
        enc = self.encoding
        # training/full-sequence fast path: one GEMM into the head layout, RoPE on the way
        fused = None if cache is not None or return_weights else _fused_rope(enc, T, q_offset)
        if fused is not None:
            from ..functional import qkv_heads
            p = (self.q_proj, self.k_proj, self.v_proj)
            q, k, v = qkv_heads(x, *(m.weight for m in p), *(m.bias for m in p), n_heads=self.n_heads,
                                rope=fused[0])
        else:
            q = self._heads(self.q_proj(x), B, T)
            k = self._heads(self.k_proj(x), B, T)
            v = self._heads(self.v_proj(x), B, T)
        if enc is not None and fused is None:
            q = enc.rotate_q(q, q_offset)
            k = enc.rotate_k(k, q_offset)  # new keys sit right after the cached ones
        if cache is not None:
            from ..functional import concat
            past_k, past_v = cache.k, cache.v
            cache.append(np.ascontiguousarray(k.data), np.ascontiguousarray(v.data))
            if past_k is not None:
                k = concat([Tensor(past_k), k], axis=2)
                v = concat([Tensor(past_v), v], axis=2)
        inputs = {}
        scale = None
        impl = self.impl
        if enc is not None:
            inputs = dict(enc.attention_inputs(q, k, q_offset=q_offset, causal=self.causal))
            q = inputs.pop("q", q)
            k = inputs.pop("k", k)
            scale = inputs.pop("scale", None)
            if enc.materialized_only:
                if impl == "fused":
                    raise ValueError(f"encoding {enc.name!r} needs the whole logit row: impl='fused' "
                                     "is not possible; use impl='materialized' or 'auto'")
                impl = "materialized"
        res = attention_core(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask,
                             q_offset=q_offset, scale=scale, impl=impl,
                             return_weights=return_weights, **inputs)
        out, w = (res if return_weights else (res, None))
        if fused is not None:
            from ..functional import heads_linear
            out = heads_linear(out, self.out_proj.weight, self.out_proj.bias)
        else:
            out = out.transpose(0, 2, 1, 3).reshape(B, T, self.d_model)
            out = self.out_proj(out)
        if self.dropout > 0.0 and self.training:
            from ..functional import dropout
            seed = int(self._dropout_rng.integers(0, 2 ** 63))
            out = dropout(out, self.dropout, seed)
        return (out, w) if return_weights else out

    def extra_repr(self) -> str:
        enc = "None" if self.encoding is None else repr(self.encoding.name)
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, encoding={enc}, causal={self.causal}, "
                f"dropout={self.dropout}, impl={self.impl!r}")
