"""attention(q, k, v, encoding=...): attention with a position encoding applied."""
__all__ = ["attention"]


def attention(q, k, v, encoding=None, causal=True, key_padding_mask=None, q_offset=0,
              return_weights=False, impl="auto", scale=None, **encoding_options):
    """Scaled dot-product attention with a position encoding.

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) Tensors; keys sit at
    absolute positions 0..Tk-1 and queries at q_offset..q_offset+Tq-1.
    ``encoding`` is a name (with ``encoding_options``) or an Encoding module;
    channel-A (absolute) encodings act on token embeddings, not here: they raise ValueError.
    None (default): plain attention, causal or not (the name "none", NoPE as a
    model's encoding, is causal-only).
    key_padding_mask (B, Tk) bool, True = padding (ignored).
    Returns out (B, H, Tq, Dv), or (out, weights (B, H, Tq, Tk) ndarray) when
    return_weights. impl: "auto" | "fused" | "materialized".
    """
    from .. import encodings
    from ..tensor import Tensor, as_array
    from .attention import attention_core

    q, k, v = (x if isinstance(x, Tensor) else as_array(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
    for name, x in (("q", q), ("k", k), ("v", v)):
        # checked here too: the encoding is built from q's shape before attention_core checks it
        if x.ndim != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) (4 dimensions); got {tuple(x.shape)}")
    if encoding is None:
        # plain attention: nothing to build, and bidirectional is fine (the way
        # MultiHeadAttention(encoding=None) treats it)
        if encoding_options:
            raise ValueError(f"encoding options {sorted(encoding_options)} given with encoding=None")
        return attention_core(q, k, v, causal=causal, key_padding_mask=key_padding_mask, q_offset=q_offset,
                              scale=scale, impl=impl, return_weights=return_weights)
    if isinstance(encoding, str):
        opts = dict(encoding_options)
        opts.setdefault("n_heads", q.shape[1])
        opts.setdefault("head_dim", q.shape[3])
        enc = encodings.get(encoding, **opts)
    else:
        if encoding_options:
            raise ValueError("encoding options are given to an already built encoding; "
                             f"got {sorted(encoding_options)}")
        enc = encoding
    enc.check_attention(causal, where="attention")
    # checked before attention_core does: the rotations use it first
    if isinstance(q_offset, bool) or int(q_offset) != q_offset or not 0 <= q_offset <= 2 ** 60:
        raise ValueError(f"q_offset must be in [0, 2**60]; got {q_offset!r}")
    q = enc.rotate_q(q, q_offset)
    k = enc.rotate_k(k, 0)
    inputs = dict(enc.attention_inputs(q, k, q_offset=q_offset, causal=causal))
    q = inputs.pop("q", q)
    k = inputs.pop("k", k)
    if "scale" in inputs:
        s = inputs.pop("scale")
        scale = s if scale is None else scale
    if enc.materialized_only:
        if impl == "fused":
            raise ValueError(f"encoding {enc.name!r} needs the whole logit row: impl='fused' "
                             "is not possible; use impl='materialized' or 'auto'")
        impl = "materialized"
    return attention_core(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                          q_offset=q_offset, scale=scale, impl=impl,
                          return_weights=return_weights, **inputs)
