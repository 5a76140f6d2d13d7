"""Attention with a position encoding applied: the one place that does it.

:func:`attention` turns (q, k, v, encoding, causal, q_offset, cache) into one
call of :func:`relpos.functional.attention_core`. ``relpos.functional.attention``
is this function, and :class:`relpos.nn.MultiHeadAttention` calls it too, so the
rules below hold everywhere:

- keys sit at absolute positions ``0 .. Tk-1`` (the cached ones first), queries
  at ``q_offset .. q_offset+Tq-1``; new keys are rotated at the position right
  after the cache (``cache.length``, 0 without a cache);
- an explicit ``scale`` wins over the encoding's (YaRN, DeBERTa), which wins
  over ``1/sqrt(D)``;
- the fused or materialised kernel is chosen here (:func:`choose_impl`);
- the KV cache grows only after the call succeeded.

An encoding is any object with the public methods of
:class:`relpos.encodings.Encoding` (``check_attention``, ``rotates``,
``rotate_q``, ``rotate_k``, ``attention_inputs``, ``materialized_only``);
nothing here looks at concrete classes. Names are looked up in the registry
below, which ``relpos.encodings`` fills (``@relpos.encodings.register``).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys

import numpy as np

from ..tensor import Tensor, as_array
from .attention import check_attention_args, check_q_offset, choose_impl, run_attention_core
from .views import concat

__all__ = ["attention", "KVCache"]

#: keywords every encoding accepts; a model passes them, most users don't
CONTEXT_KEYS = ("n_heads", "head_dim", "d_model", "max_len", "seed")

#: name -> encoding class; filled by ``relpos.encodings.register``
REGISTRY: dict = {}


# --------------------------------------------------------------------- registry
def encoding_options(cls):
    """The options (keyword parameters other than the context keys) of an encoding class."""
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters.values()
            if p.name not in ("self",) + CONTEXT_KEYS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _import_spec(spec: str):
    """'package.module:Class' -> the class, importing the module (the working
    directory is searched first, as ``python -m`` does for scripts)."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr or not attr.isidentifier():
        raise ValueError(f"encoding {spec!r} must be a registered name or 'module:Class'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"encoding {spec!r}: could not import module {mod_name!r} ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"encoding {spec!r}: module {mod_name!r} has no attribute {attr!r}") from None


def lookup(spec):
    """The encoding class a name, a 'module:Class' string or a class stands for."""
    if isinstance(spec, str):
        if ":" in spec:
            cls = _import_spec(spec)
        else:
            key = spec.lower()
            if key not in REGISTRY:
                raise ValueError(f"unknown encoding {spec!r}; available: {', '.join(sorted(REGISTRY))}"
                                 " (or 'module:Class' for a class of your own)")
            return REGISTRY[key]
    else:
        cls = spec
    if not (isinstance(cls, type) and hasattr(cls, "attention_inputs") and hasattr(cls, "channel")):
        raise TypeError(f"encoding must be a name, 'module:Class', an Encoding subclass or instance, or None; "
                        f"got {spec!r}")
    return cls


def is_encoding(obj) -> bool:
    """True for an encoding instance (anything with the encoding methods and a channel)."""
    return not isinstance(obj, type) and hasattr(obj, "attention_inputs") and hasattr(obj, "channel")


def build(spec, context=None, **options):
    """An encoding instance from ``spec`` (a name, 'module:Class', a class, or an
    instance returned as it is), built with ``options`` and the context keywords
    in ``context`` (n_heads, head_dim, ... : filled only where the caller did
    not give them). Unknown options raise ValueError listing the known ones."""
    if is_encoding(spec):
        if options:
            raise ValueError(f"options {sorted(options)} are given to an already built encoding")
        return spec
    if spec is None:
        spec = "none"
    cls = lookup(spec)
    allowed = {p.name for p in encoding_options(cls)}
    unknown = sorted(set(options) - allowed - set(CONTEXT_KEYS))
    name = getattr(cls, "name", "") or cls.__name__
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for encoding {name!r}; "
                         f"its options are: {', '.join(sorted(allowed)) or '(none)'}")
    for p in encoding_options(cls):
        # flags: bool("False") is True, so a string or 2 would silently switch the option on
        if isinstance(p.default, bool) and p.name in options and not isinstance(options[p.name], (bool, np.bool_)):
            raise TypeError(f"option {p.name!r} of encoding {name!r} must be a bool; got {options[p.name]!r}")
    kwargs = dict(options)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())  # a user's __init__(self, ..., **context)
    for key, val in (context or {}).items():
        if takes_any or key in params:
            kwargs.setdefault(key, val)
    return cls(**kwargs)


# --------------------------------------------------------------------- KV cache
class KVCache:
    """Past keys and values of one attention layer, for generation.

    ``k``, ``v`` are (B, H, length, Dh) float32 ndarrays (keys already rotated
    by the encoding at their absolute positions) or None while empty. Each
    attention call with this cache uses the past keys and values, then appends
    the new ones once the call succeeded; its queries sit at
    ``q_offset = length``. The cache holds plain arrays: gradients do not flow
    into past steps (generation runs under ``relpos.no_grad()``).
    """

    __slots__ = ("k", "v")

    def __init__(self):
        self.k = None
        self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[2])

    def check(self, k, v):
        """Raise ValueError unless new keys (B, H, T, Dh) and values fit this cache."""
        if self.k is None:
            return
        if tuple(k.shape[:2]) != self.k.shape[:2] or k.shape[3] != self.k.shape[3] \
                or tuple(v.shape[:2]) != self.v.shape[:2] or v.shape[3] != self.v.shape[3]:
            raise ValueError(f"new keys {tuple(k.shape)} / values {tuple(v.shape)} do not fit the cache of "
                             f"keys {self.k.shape} / values {self.v.shape} (batch, heads and head dim must match)")

    def append(self, k: np.ndarray, v: np.ndarray):
        """Add keys/values (B, H, T, Dh); returns all keys and values so far."""
        self.check(k, v)
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = np.concatenate([self.k, k], axis=2)
            self.v = np.concatenate([self.v, v], axis=2)
        return self.k, self.v

    def reset(self):
        self.k = self.v = None

    def __repr__(self):
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, k_shape={shape})"


# -------------------------------------------------------------------- attention
def attention(q, k, v, encoding=None, causal=True, key_padding_mask=None, q_offset=None, cache=None,
              return_weights=False, impl="auto", scale=None, options=None, rotated=False, merge_heads=False,
              **encoding_options):
    """Scaled dot-product attention with a position encoding.

    Args:
        q: (B, H, Tq, D) Tensor or array; k: (B, H, Tk, D); v: (B, H, Tk, Dv).
            With a ``cache``, k and v are the *new* keys and values.
        encoding: None (plain attention, causal or not), a registered name with
            its options (``options={...}`` or keywords), 'module:Class', an
            Encoding class, or an Encoding instance. Absolute (channel A)
            encodings act on token embeddings, not here: they raise ValueError.
        causal: mask keys after each query's absolute position.
        key_padding_mask: (B, Tk_total) bool, True = padding (ignored), over
            every key attended to (cached and new).
        q_offset: absolute position of query 0 (default: ``cache.length``, or 0).
            Keys sit at positions 0 .. Tk_total-1.
        cache: a :class:`KVCache`: its keys/values come first, and the new ones
            are appended after the call succeeded.
        return_weights: also return the attention weights (materialised path).
        impl: "auto" (fused unless weights are asked for or the encoding needs
            the whole logit row), "fused" or "materialized".
        scale: multiplies the content logits; None = the encoding's (YaRN,
            DeBERTa), else 1/sqrt(D). An explicit scale wins.
        options: the encoding's options as a dict, for options whose names
            clash with this function's arguments (Shaw's ``k``).
        rotated: q and k already carry the encoding's rotation (a caller that
            fused it into the projection, as MultiHeadAttention does).
        merge_heads: return out as (B, Tq, H*Dv), the heads side by side as the
            output projection reads them (the values of
            ``out.transpose(0, 2, 1, 3).reshape(B, Tq, H*Dv)``, bit for bit);
            the fused kernel writes it so, with no transposed copy.

    Returns:
        out (B, H, Tq, Dv) Tensor ((B, Tq, H*Dv) with merge_heads), or (out,
        weights (B, H, Tq, Tk_total) ndarray) when return_weights.
    """
    q, k, v = (x if isinstance(x, Tensor) else as_array(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
    if cache is not None and not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a relpos.nn.KVCache or None; got {type(cache).__name__}")
    past = 0 if cache is None else cache.length
    if q_offset is None:
        q_offset = past
    else:
        q_offset = check_q_offset(q_offset)
        if cache is not None and q_offset != past:
            raise ValueError(f"q_offset ({q_offset}) must equal the cache length ({past}) when a cache is "
                             "given: new queries follow the cached keys (or leave q_offset=None)")
    opts = dict(options or {})
    clash = sorted(set(opts) & set(encoding_options))
    if clash:
        raise ValueError(f"encoding option(s) {clash} given both in options= and as keywords")
    opts.update(encoding_options)
    if encoding is None:
        if opts:
            raise ValueError(f"encoding options {sorted(opts)} given with encoding=None")
        enc = None
    else:
        shape_q = tuple(q.shape)
        if len(shape_q) != 4:  # the encoding is built from q's shape, before attention_core sees it
            raise ValueError(f"q must have shape (B, H, T, D) (4 dimensions); got {shape_q}")
        enc = build(encoding, {"n_heads": shape_q[1], "head_dim": shape_q[3]}, **opts)
        enc.check_attention(bool(causal), where="attention")
    total_k = (past + k.shape[2]) if k.ndim == 4 else None
    dims = check_attention_args(q, k, v, q_offset=q_offset, total_k=total_k,
                                key_padding_mask=key_padding_mask, scale=scale)
    if cache is not None:
        cache.check(k, v)
    impl = choose_impl(impl, bool(return_weights), enc)
    if enc is not None and enc.rotates and not rotated:
        q = enc.rotate_q(q, q_offset)
        k = enc.rotate_k(k, past)  # new keys sit right after the cached ones
    new_k, new_v = k, v
    if past:
        k = concat([Tensor(cache.k), k], axis=2)
        v = concat([Tensor(cache.v), v], axis=2)
    inputs = {}
    if enc is not None:
        inputs = dict(enc.attention_inputs(q, k, q_offset=q_offset, causal=bool(causal)))
        q = inputs.pop("q", q)
        k = inputs.pop("k", k)
        enc_scale = inputs.pop("scale", None)
        if scale is None:
            scale = enc_scale
    res = run_attention_core(q, k, v, dims, causal=bool(causal), key_padding_mask=key_padding_mask,
                             q_offset=q_offset, scale=scale, impl=impl, return_weights=bool(return_weights),
                             merge_heads=bool(merge_heads), **inputs)
    if cache is not None:
        cache.append(np.ascontiguousarray(new_k.data if isinstance(new_k, Tensor) else new_k),
                     np.ascontiguousarray(new_v.data if isinstance(new_v, Tensor) else new_v))
    return res

