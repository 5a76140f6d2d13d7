"""Attention with the four position-encoding channels, differentiable.

One function, :func:`attention_core`, runs either the materialised kernel
(``_C.attention_mat_fwd/_bwd``: builds the (Tq, Tk) logits, can return the
attention weights) or the fused one (``_C.attention_fwd/_bwd``: O(T·D) extra
memory). Both take the same arguments; see csrc/core/attention.h for the logit
formula and the relative index rules.
"""
from __future__ import annotations

import numpy as np

from .. import _C
from ..tensor import Function, Tensor, as_array
from .qkv import qkv_block, qkv_views

__all__ = ["attention_core"]

# Positional (differentiable) arguments of _AttentionCore, in order; the
# gradient dict of the _C backward is keyed by these names.
_TENSOR_ARGS = ("q", "k", "v", "qr", "relk", "relq", "relv", "bias_vec", "bias_full",
                "pwl_u", "pwl_w", "pwl_slope", "pwl_icpt")
_IMPLS = ("auto", "materialized", "fused")


def has_fused() -> bool:
    """True when the extension provides the fused kernel (_C.attention_fwd/_bwd)."""
    return hasattr(_C, "attention_fwd") and hasattr(_C, "attention_bwd")


#: the largest q_offset: positions stay far from int64 overflow (the bridge's bound too)
MAX_POSITION = 2 ** 60


def check_q_offset(q_offset, name="q_offset") -> int:
    """``q_offset`` as an int in [0, 2**60], or TypeError/ValueError naming it."""
    if isinstance(q_offset, bool) or not isinstance(q_offset, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(q_offset).__name__}")
    if not 0 <= q_offset <= MAX_POSITION:
        raise ValueError(f"{name} must be in [0, 2**60]; got {q_offset}")
    return int(q_offset)


def check_impl(impl) -> str:
    """``impl`` is one of "auto", "materialized", "fused", or ValueError."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}; got {impl!r}")
    return impl


def choose_impl(impl, return_weights=False, encoding=None) -> str:
    """The kernel that runs: "fused" or "materialized".

    "auto" is fused unless the attention weights are asked for or the encoding
    needs the whole logit row (``encoding.materialized_only``, CoPE)."""
    check_impl(impl)
    whole_row = encoding is not None and getattr(encoding, "materialized_only", False)
    if impl == "auto":
        return "fused" if (has_fused() and not return_weights and not whole_row) else "materialized"
    if impl == "fused":
        if whole_row:
            raise ValueError(f"encoding {encoding.name!r} needs the whole logit row: impl='fused' "
                             "is not possible; use impl='materialized' or 'auto'")
        if not has_fused():
            raise RuntimeError("impl='fused' was asked for but this build of relpos._C has no fused "
                               "attention kernel (_C.attention_fwd/_C.attention_bwd); use impl='materialized'")
        if return_weights:
            raise ValueError("return_weights=True needs impl='materialized' (or 'auto'): the fused "
                             "kernel never builds the attention weights")
    return impl


class _AttentionCore(Function):
    """forward(q, k, v, <the channel tensors of _TENSOR_ARGS>; opts) -> out [, probs].

    merge_heads: out is (B, Tq, H*Dv) instead of (B, H, Tq, Dv). The fused
    kernel writes (and its backward reads) that layout itself; the
    materialised path transposes (a copy each way)."""

    @staticmethod
    def forward(ctx, *tensors, opts, impl, return_weights, merge_heads=False):
        arrays = dict(zip(_TENSOR_ARGS, tensors))
        q, k, v = arrays["q"], arrays["k"], arrays["v"]
        given = {n: a for n, a in arrays.items() if a is not None and n not in ("q", "k", "v")}
        if impl == "materialized":
            res = _C.attention_mat_fwd(q, k, v, return_weights=return_weights, **opts, **given)
        else:
            res = _C.attention_fwd(q, k, v, merged=merge_heads, **opts, **given)
        out, lse = res[0], res[1]
        ctx.arrays = arrays
        ctx.given = given
        ctx.opts = opts
        ctx.impl = impl
        ctx.out = out  # as the kernel laid it out: its backward reads it back
        ctx.lse = lse
        ctx.merge_heads = merge_heads
        # q, k, v the thirds of one projection (qkv_heads): the backward writes their
        # gradients into one such block, which qkv_heads' backward takes as it stands
        ctx.packed = impl != "materialized" and qkv_block(q, k, v) is not None
        if merge_heads:
            B, H, Tq, Dv = lse.shape + (v.shape[3],)
            if impl == "materialized":
                out = out.transpose(0, 2, 1, 3)
            out = np.ascontiguousarray(out).reshape(B, Tq, H * Dv)
        if return_weights:
            return out, res[2]
        return out

    @staticmethod
    def backward(ctx, dout, *unused):
        if dout is None:
            return (None,) * len(_TENSOR_ARGS)
        needs = [n for n, w in zip(_TENSOR_ARGS, ctx.needs_input_grad) if w]
        if not needs:
            return (None,) * len(_TENSOR_ARGS)
        a = ctx.arrays
        kw = {}
        if ctx.merge_heads:  # dout (B, Tq, H*Dv) -> the kernel's layout of out
            B, H, Tq = ctx.lse.shape
            dout = dout.reshape(B, Tq, H, a["v"].shape[3])  # not -1: B, Tq or H may be 0
            if ctx.impl == "materialized":
                dout = dout.transpose(0, 2, 1, 3)
            else:
                kw["merged"] = True
        dout = np.ascontiguousarray(dout, dtype=np.float32)
        bwd = _C.attention_mat_bwd if ctx.impl == "materialized" else _C.attention_bwd
        packed = ctx.packed and all(ctx.needs_input_grad[:3])
        if packed:
            kw["packed_grads"] = True
        grads = bwd(a["q"], a["k"], a["v"], ctx.out, ctx.lse, dout, needs=needs, **kw, **ctx.opts, **ctx.given)
        if packed:
            # the block is ours (made by the bridge just now): its users may turn it in place
            B, H, T, Dh = a["q"].shape
            grads["q"], grads["k"], grads["v"] = qkv_views(grads.pop("qkv"), B, T, H, Dh, owned=True)
        return tuple(grads.get(n) if w else None for n, w in zip(_TENSOR_ARGS, ctx.needs_input_grad))


def _as_input(x, name):
    if x is None or isinstance(x, Tensor):
        return x
    return as_array(x, name)


def _shape(x):
    return tuple(x.shape)


def _check_ix(ix, name, table):
    if ix is None:
        return None
    if not isinstance(ix, (tuple, list)) or len(ix) != 2:
        raise TypeError(f"{name} must be a (sign, off) tuple of 2 ints for {table}; got {ix!r}")
    sign, off = ix
    ints = (int, np.integer)
    if isinstance(sign, bool) or isinstance(off, bool) or not isinstance(sign, ints) or not isinstance(off, ints):
        raise TypeError(f"{name} must be a (sign, off) tuple of ints; got {ix!r}")
    if sign not in (1, -1):
        raise ValueError(f"{name} sign must be +1 or -1; got {sign}")
    return (int(sign), int(off))


def check_attention_args(q, k, v, *, q_offset=0, total_k=None, key_padding_mask=None, scale=None):
    """Check the shapes of q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv),
    the mask and the scale; the one place these are checked.

    ``total_k``: the number of keys attended to when k holds only the new keys
    of a cache (the mask covers them all). Returns (B, H, Tq, total_k, D, Dv).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) (4 dimensions); got {_shape(x)}")
    B, H, Tq, D = _shape(q)
    if _shape(k)[:2] != (B, H) or _shape(k)[3] != D:
        raise ValueError(f"k must have shape (B, H, Tk, D) = ({B}, {H}, *, {D}) to match q {_shape(q)}; "
                         f"got {_shape(k)}")
    Tk = _shape(k)[2]
    if _shape(v)[:3] != (B, H, Tk):
        raise ValueError(f"v must have shape (B, H, Tk, Dv) = ({B}, {H}, {Tk}, *) to match q {_shape(q)} "
                         f"and k {_shape(k)}; got {_shape(v)}")
    total_k = Tk if total_k is None else int(total_k)
    if key_padding_mask is not None:
        m = np.asarray(key_padding_mask.data if isinstance(key_padding_mask, Tensor) else key_padding_mask)
        if m.dtype != np.bool_:
            raise TypeError(f"key_padding_mask must have dtype bool (True = padding); got {m.dtype}")
        if m.shape != (B, total_k):
            raise ValueError(f"key_padding_mask must have shape (B, Tk) = ({B}, {total_k}); got {m.shape}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
            raise TypeError(f"scale must be a float or None; got {type(scale).__name__}")
        if not np.isfinite(scale):
            raise ValueError(f"scale must be finite; got {scale}")
    return B, H, Tq, total_k, D, _shape(v)[3]


_PWL = ("pwl_u", "pwl_ix", "pwl_w", "pwl_bp", "pwl_slope", "pwl_icpt")


def _check_pwl(pwl):
    """The piecewise-linear channel's inputs: all six or none (pwl_ix a (sign, off) tuple)."""
    given = [n for n in _PWL if pwl[n] is not None]
    if not given:
        return {}
    missing = [n for n in _PWL if pwl[n] is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} required with {', '.join(given)}: the piecewise-linear channel "
                         f"takes {', '.join(_PWL)} together")
    out = dict(pwl)
    out["pwl_ix"] = _check_ix(pwl["pwl_ix"], "pwl_ix", "pwl_u")
    # the breakpoints place the kinks; the gradient flows through slopes and intercepts
    out["pwl_bp"] = np.ascontiguousarray(as_array(pwl["pwl_bp"], "pwl_bp"))
    return out


def run_attention_core(q, k, v, dims, *, causal, key_padding_mask, q_offset, scale, impl, return_weights,
                       qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None, relv=None, relv_ix=None,
                       bias_vec=None, bias_ix=None, bias_full=None, pwl_u=None, pwl_ix=None, pwl_w=None,
                       pwl_bp=None, pwl_slope=None, pwl_icpt=None, merge_heads=False):
    """attention_core after :func:`check_attention_args` and :func:`choose_impl`
    (the channel inputs come from an encoding and are checked here)."""
    tabs = {}
    for name, x, ixname, ix in (("relk", relk, "relk_ix", relk_ix), ("relq", relq, "relq_ix", relq_ix),
                                ("relv", relv, "relv_ix", relv_ix), ("bias_vec", bias_vec, "bias_ix", bias_ix)):
        if x is None:
            if ix is not None:
                raise ValueError(f"{ixname} was given but {name} is None")
            continue
        if ix is None:
            raise ValueError(f"{ixname} is required when {name} is given: a (sign, off) tuple")
        tabs[ixname] = _check_ix(ix, ixname, name)
    if qr is not None and relk is None:
        raise ValueError("qr was given but relk is None (qr is the query of the relk term)")
    if key_padding_mask is not None:
        m = key_padding_mask.data if isinstance(key_padding_mask, Tensor) else key_padding_mask
        key_padding_mask = np.ascontiguousarray(m)
    pwl = _check_pwl(dict(pwl_u=pwl_u, pwl_ix=pwl_ix, pwl_w=pwl_w, pwl_bp=pwl_bp, pwl_slope=pwl_slope,
                          pwl_icpt=pwl_icpt))
    if pwl:
        tabs["pwl_ix"], tabs["pwl_bp"] = pwl["pwl_ix"], pwl["pwl_bp"]
    opts = dict(causal=bool(causal), key_padding_mask=key_padding_mask, q_offset=int(q_offset),
                scale=None if scale is None else float(scale), **tabs)
    args = [_as_input(x, n) for n, x in zip(_TENSOR_ARGS, (q, k, v, qr, relk, relq, relv, bias_vec, bias_full,
                                                            pwl.get("pwl_u"), pwl.get("pwl_w"),
                                                            pwl.get("pwl_slope"), pwl.get("pwl_icpt")))]
    res = _AttentionCore.apply(*args, opts=opts, impl=impl, return_weights=bool(return_weights),
                               merge_heads=bool(merge_heads))
    if return_weights:
        out, w = res
        return out, w.data
    return res


def attention_core(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
                   qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
                   relv=None, relv_ix=None, bias_vec=None, bias_ix=None, bias_full=None,
                   pwl_u=None, pwl_ix=None, pwl_w=None, pwl_bp=None, pwl_slope=None, pwl_icpt=None,
                   impl="auto", return_weights=False, merge_heads=False):
    """Scaled dot-product attention with every position-encoding channel.

    Query i sits at absolute position ``q_offset + i``, key j at position j::

        s_ij = scale * (q_i·k_j + qr_i·relk[h, idx(relk_ix)] + k_j·relq[h, idx(relq_ix)])
               + bias_vec[h, idx(bias_ix)] + bias_full[b, h, i, j]
               + pwl_slope[h, g(x_ij)] * x_ij + pwl_icpt[h, g(x_ij)]
        out_i = Σ_j softmax_j(s_ij) (v_j + relv[h, idx(relv_ix)])

    with ``idx((sign, off)) = clip(sign * ((q_offset + i) - j) + off, 0, R - 1)``,
    ``x_ij = pwl_u[idx(pwl_ix)] * pwl_w[i]`` and ``g(x)`` the number of
    breakpoints ``pwl_bp <= x`` (csrc/core/attention.h). Masked: ``j > q_offset + i``
    when causal, and keys where ``key_padding_mask`` is True.

    Non-finite values give torch's answer: a NaN or +inf logit on an unmasked
    key makes the row NaN (output, and the gradients it feeds); a -inf logit
    has weight 0; a NaN value of an unmasked key gives NaN even at weight 0
    (0 * NaN); masked keys take no part at all. A query row with every key
    masked, or only -inf logits, gives zeros and zero gradients (relpos's
    choice, as torch's SDPA; a plain softmax would give NaN).

    Args:
        q: (B, H, Tq, D) Tensor or array. k: (B, H, Tk, D). v: (B, H, Tk, Dv).
            The fused path reads strided views where they are (each row's D
            floats contiguous); q, k, v as ``qkv_heads`` hands them out (the
            thirds of one (B, T, 3, H, D) projection) also get their gradients
            back as the thirds of one such block, which ``qkv_heads``' backward
            takes without a head merge.
        causal: mask keys after the query's absolute position.
        key_padding_mask: (B, Tk) bool ndarray, True = padding (ignored key).
        q_offset: int in [0, 2**60], the absolute position of query 0 (a cache of past keys).
        scale: float multiplying the content terms; None = 1/sqrt(D).
        qr: (B, H, Tq, D) query for the relk term (default q), e.g. Transformer-XL's q + u.
        relk, relq: (1|H, R, D) relative key / query tables with relk_ix, relq_ix (sign, off).
        relv: (1|H, R, Dv) relative value table with relv_ix.
        bias_vec: (1|H, R) Toeplitz bias over relative index bias_ix.
        bias_full: (1|B, H, Tq, Tk) any additive logit bias.
        pwl_u: (R,) with pwl_ix (sign, off), pwl_w: (Tq,), pwl_bp: (S-1,) ascending
            ndarray, pwl_slope, pwl_icpt: (1|H, S): a bias piecewise linear in
            x = u * w (FIRE), never materialised; all six or none.
        impl: "materialized", "fused" or "auto" (fused when built and no weights asked for).
        return_weights: also return the attention weights (materialised path).
        merge_heads: return out as (B, Tq, H*Dv), the heads side by side as an
            output projection reads them (the same values as
            ``out.transpose(0, 2, 1, 3).reshape(B, Tq, H*Dv)``, bit for bit).
            The fused kernel writes that layout directly, and its backward
            reads the gradient in it: no transposed copies.

    Returns:
        out (B, H, Tq, Dv) Tensor ((B, Tq, H*Dv) with merge_heads), or (out,
        weights (B, H, Tq, Tk) ndarray) when return_weights. Gradients flow
        to q, k, v and every channel Tensor.
    """
    impl = choose_impl(impl, bool(return_weights))
    q, k, v = _as_input(q, "q"), _as_input(k, "k"), _as_input(v, "v")
    q_offset = check_q_offset(q_offset)
    dims = check_attention_args(q, k, v, q_offset=q_offset, key_padding_mask=key_padding_mask, scale=scale)
    return run_attention_core(q, k, v, dims, causal=causal, key_padding_mask=key_padding_mask, q_offset=q_offset,
                              scale=scale, impl=impl, return_weights=return_weights, qr=qr, relk=relk,
                              relk_ix=relk_ix, relq=relq, relq_ix=relq_ix, relv=relv, relv_ix=relv_ix,
                              bias_vec=bias_vec, bias_ix=bias_ix, bias_full=bias_full, pwl_u=pwl_u, pwl_ix=pwl_ix,
                              pwl_w=pwl_w, pwl_bp=pwl_bp, pwl_slope=pwl_slope, pwl_icpt=pwl_icpt,
                              merge_heads=merge_heads)
