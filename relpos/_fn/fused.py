"""Fused Functions of the training step (perf area).

Each one does in one C pass what the unfused ops do in several, or what the
Python layer would do with NumPy copies:

- :func:`add_layer_norm`: the residual add and the next LayerNorm
  (``s = x + y``, ``h = layer_norm(s)``); its backward adds the residual
  gradient inside the LayerNorm backward.
- :func:`linear_gelu`: ``gelu(x @ W.T + b)`` (the MLP's first layer); the
  backward computes ``dh = gelu'(h) * da`` and the bias gradient in one pass.
- :func:`qkv_heads`: the q, k, v projections as one GEMM on the concatenated
  weights; q, k, v are views of its (B, T, 3, H, Dh) output in the head
  layout, RoPE turned in place on the q and k thirds (no copies into the head
  layout: the fused attention reads the views where they are, and its
  backward hands back one (B, T, 3, H, Dh) gradient block, see ``_fn/qkv.py``).
- :func:`heads_linear`: the attention output's head merge and the output
  projection (backward: one GEMM, then the split back into heads), for an
  output in the (B, H, T, Dh) layout. MultiHeadAttention no longer needs it:
  its attention writes the merged layout itself (``attention(...,
  merge_heads=True)``), and a plain linear follows.
- :func:`head_cross_entropy`: the LM head (a bias-free Linear onto the
  vocabulary) and the mean cross-entropy as one node; the backward turns the
  saved logits into their gradient in place (no second (N, V) array).

The forward results are the same bits as the unfused ops (the same span
kernels in C); gradients differ only in summation order (one GEMM over the
concatenated q/k/v gradient instead of three summed).
"""
from __future__ import annotations

import numpy as np

from .. import _C
from ..tensor import Function, Tensor, as_array
from .ops import IGNORE_INDEX, _ignore_index, _targets
from .qkv import packed_grad_block, qkv_views

__all__ = ["add_layer_norm", "linear_gelu", "qkv_heads", "heads_linear", "head_cross_entropy"]


def _c32(x, name="x"):
    a = as_array(x, name)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


class _AddLayerNorm(Function):
    @staticmethod
    def forward(ctx, x, y, weight, bias, eps):
        s, h, mean, rstd = _C.add_layer_norm_fwd(_c32(x, "x"), _c32(y, "y"), weight, bias, eps)
        ctx.save_for_backward(s, weight, mean, rstd)
        return s, h

    @staticmethod
    def backward(ctx, ds, dh):
        s, w, mean, rstd = ctx.saved
        nx, ny, nw, nb = ctx.needs_input_grad[:4]
        if dh is None:
            return (ds if nx else None), (ds if ny else None), None, None, None
        dx, dw, db = _C.add_layer_norm_bwd(s, w, mean, rstd, _c32(dh, "dh"),
                                           None if ds is None else _c32(ds, "ds"),
                                           need_x=nx or ny, need_weight=nw, need_bias=nb)
        return (dx if nx else None), (dx if ny else None), dw, db, None


def add_layer_norm(x, y, weight, bias, eps: float = 1e-5):
    """Residual add and LayerNorm in one pass: ``s = x + y``, ``h = layer_norm(s) * weight + bias``.

    Shapes: x, y (..., D) (same shape); weight, bias (D,). Returns the Tensors
    (s, h), both (..., D). The gradient of x and of y is the same array:
    ``ds + layer_norm_backward(dh)``.
    """
    return _AddLayerNorm.apply(x, y, weight, bias, float(eps))


class _LinearGelu(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, approximate):
        x = _c32(x, "x")
        w = _c32(weight, "weight")
        if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear_gelu: x must have shape (..., in_features) and weight (out_features, "
                             f"in_features); got x {x.shape} and weight {w.shape}")
        x2 = x.reshape(-1, w.shape[1])
        h, a = _C.linear_gelu_fwd(x2, w, bias, approximate)
        ctx.save_for_backward(x2, w, h)
        ctx.x_shape, ctx.approximate, ctx.has_bias = x.shape, approximate, bias is not None
        return a.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, da):
        x2, w, h = ctx.saved
        nx, nw, nb = ctx.needs_input_grad[:3]
        dx, dw, db = _C.linear_gelu_bwd(x2, w, h, _c32(da, "da").reshape(h.shape), ctx.approximate,
                                        need_x=nx, need_weight=nw, need_bias=nb and ctx.has_bias)
        return (None if dx is None else dx.reshape(ctx.x_shape)), dw, db, None


def linear_gelu(x, weight, bias=None, approximate: str = "tanh") -> Tensor:
    """``gelu(x @ weight.T + bias)``: the GEMM with its bias epilogue, then GELU.

    Shapes: x (..., in_features), weight (out_features, in_features), bias
    (out_features,) or None -> (..., out_features). approximate: "tanh" or "none".
    """
    if approximate not in ("tanh", "none"):
        raise ValueError(f"approximate must be 'tanh' or 'none'; got {approximate!r}")
    return _LinearGelu.apply(x, weight, bias, approximate)


def _rope_kw(rope):
    if rope is None:
        return dict(rotate=0)
    cos, sin, rotary_dim, layout = rope
    return dict(rotate=2, cos=cos, sin=sin, rotary_dim=int(rotary_dim), layout=layout)


class _QKVHeads(Function):
    @staticmethod
    def forward(ctx, x, wq, wk, wv, bq, bk, bv, n_heads, rope):
        x = _c32(x, "x")
        if x.ndim != 3:
            raise ValueError(f"qkv_heads: x must have shape (B, T, d_model); got {x.shape}")
        B, T, d = x.shape
        for name, w in (("wq", wq), ("wk", wk), ("wv", wv)):
            if w.shape != (d, d):
                raise ValueError(f"qkv_heads: {name} must have shape (d_model, d_model) = ({d}, {d}); got {w.shape}")
        biases = (bq, bk, bv)
        if any(b is None for b in biases) and not all(b is None for b in biases):
            raise ValueError("qkv_heads: give all three biases or none")
        w = np.concatenate((wq, wk, wv))
        b = None if bq is None else np.concatenate(biases)
        if n_heads < 1 or d % n_heads:
            raise ValueError(f"qkv_heads: n_heads must be a positive divisor of d_model = {d}; got {n_heads}")
        x2 = x.reshape(B * T, d)
        y = _C.linear_fwd(x2, w, b)
        kw = _rope_kw(rope)
        if kw["rotate"]:  # q and k turned where they are (the same bits as heads_split gives)
            _C.heads_rotate(y.reshape(B, T, 3 * d), n_heads, groups=3, **kw)
        ctx.save_for_backward(x2, w)
        ctx.kw, ctx.has_bias, ctx.shape, ctx.n_heads = kw, b is not None, (B, T, d), n_heads
        return qkv_views(y, B, T, n_heads, d // n_heads)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        x2, w = ctx.saved
        B, T, d = ctx.shape
        needs = ctx.needs_input_grad
        blk = packed_grad_block(dq, dk, dv)
        if blk is not None:
            # attention's backward wrote dq, dk, dv into one (B, T, 3, H, Dh) block: y's gradient
            # as it stands, once RoPE's rotation is undone in place on its q and k thirds
            dy = blk.reshape(B * T, 3 * d)
            if ctx.kw["rotate"]:
                _C.heads_rotate(blk.reshape(B, T, 3 * d), ctx.n_heads, groups=3, inverse=True, **ctx.kw)
        else:
            dy = _C.heads_merge([dq, dk, dv], **ctx.kw).reshape(B * T, 3 * d)
        dx = _C.gemm(dy, w).reshape(B, T, d) if needs[0] else None
        dws = dbs = (None, None, None)
        if any(needs[1:4]):
            dw = _C.gemm(dy, x2, trans_a=True)
            dws = tuple(dw[i * d:(i + 1) * d] if needs[1 + i] else None for i in range(3))
        if ctx.has_bias and any(needs[4:7]):
            db = _C.colsum(dy)
            dbs = tuple(db[i * d:(i + 1) * d] if needs[4 + i] else None for i in range(3))
        return (dx,) + dws + dbs + (None, None)


def qkv_heads(x, wq, wk, wv, bq=None, bk=None, bv=None, *, n_heads, rope=None):
    """q, k, v projections of x in the attention head layout, RoPE applied to q and k.

    Shapes: x (B, T, d_model); wq, wk, wv (d_model, d_model); bq, bk, bv
    (d_model,) or all None. ``rope``: None, or (cos, sin, rotary_dim, layout)
    with cos, sin (T, rotary_dim/2) tables and layout "interleaved" or "half"
    (the rotation RoPE applies: pairs turned by the angle of their row).
    Returns Tensors q, k, v, each (B, n_heads, T, d_model / n_heads): views of
    one (B, T, 3, n_heads, Dh) array (``y[:, :, g].transpose(0, 2, 1, 3)``, not
    C-contiguous), which the fused attention reads in place.
    """
    return _QKVHeads.apply(x, wq, wk, wv, bq, bk, bv, int(n_heads), rope)


class _HeadsLinear(Function):
    @staticmethod
    def forward(ctx, o, weight, bias):
        o = _c32(o, "o")
        if o.ndim != 4:
            raise ValueError(f"heads_linear: o must have shape (B, H, T, Dh); got {o.shape}")
        B, H, T, Dh = o.shape
        if weight.ndim != 2 or weight.shape[1] != H * Dh:
            raise ValueError(f"heads_linear: weight must have shape (out_features, H*Dh = {H * Dh}); "
                             f"got {weight.shape}")
        m = _C.heads_merge([o]).reshape(B * T, H * Dh)
        y = _C.linear_fwd(m, weight, bias)
        ctx.save_for_backward(m, weight)
        ctx.o_shape, ctx.has_bias = o.shape, bias is not None
        return y.reshape(B, T, weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        m, w = ctx.saved
        B, H, T, Dh = ctx.o_shape
        no, nw, nb = ctx.needs_input_grad[:3]
        g2 = _c32(g, "grad").reshape(B * T, w.shape[0])
        do = _C.heads_split(_C.gemm(g2, w).reshape(B, T, H * Dh), H)[0] if no else None
        dw = _C.gemm(g2, m, trans_a=True) if nw else None
        db = _C.colsum(g2) if nb and ctx.has_bias else None
        return do, dw, db


def heads_linear(o, weight, bias=None) -> Tensor:
    """Merge attention heads and project: ``o.transpose(0, 2, 1, 3).reshape(B, T, H*Dh) @ weight.T + bias``.

    Shapes: o (B, H, T, Dh); weight (out_features, H*Dh); bias (out_features,)
    or None -> (B, T, out_features). The merge is a parallel C copy; the
    backward splits the input gradient back into heads the same way.
    """
    return _HeadsLinear.apply(o, weight, bias)


class _HeadCrossEntropy(Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index):
        h = _c32(h, "h")
        w = _c32(weight, "weight")
        if w.ndim != 2 or h.ndim < 1 or h.shape[-1] != w.shape[1]:
            raise ValueError(f"head_cross_entropy: h must have shape (..., d) and weight (vocab_size, d); "
                             f"got h {h.shape} and weight {w.shape}")
        t = _targets(targets)
        if t.shape != h.shape[:-1]:
            raise ValueError(f"targets must have shape {h.shape[:-1]} (h.shape[:-1]); got {t.shape}")
        h2 = h.reshape(int(np.prod(h.shape[:-1])), h.shape[-1])
        t1 = t.reshape(-1)
        logits = _C.linear_fwd(h2, w, None)
        loss, lse, count = _C.cross_entropy_fwd(logits, t1, ignore_index)
        ctx.save_for_backward(h2, w, t1, lse)
        ctx.logits, ctx.count, ctx.ignore_index, ctx.h_shape = logits, count, ignore_index, h.shape
        return np.array(loss, dtype=np.float32)

    @staticmethod
    def backward(ctx, g):
        h2, w, t1, lse = ctx.saved
        nh, nw = ctx.needs_input_grad[:2]
        logits = ctx.logits
        if logits is None:
            # a second backward through this node: the first one turned the logits into
            # their gradient; the GEMM gives the same bits again
            logits = _C.linear_fwd(h2, w, None)
        ctx.logits = None
        d = _C.cross_entropy_bwd(logits, t1, lse, float(np.asarray(g)), ctx.count, ctx.ignore_index, out=logits)
        dh = _C.gemm(d, w).reshape(ctx.h_shape) if nh else None    # dlogits (N, V) · W (V, d)
        dw = _C.gemm(d, h2, trans_a=True) if nw else None          # dlogitsᵀ (V, N) · h (N, d)
        return dh, dw, None, None


def head_cross_entropy(h, weight, targets, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy of the logits ``h @ weight.T`` (an LM head without bias)
    against ``targets``, as one node: ``cross_entropy(linear(h, weight), targets)``
    with the same bits, and the logits' gradient computed in place of the saved
    logits in the backward.

    Shapes: h (..., d), weight (vocab_size, d), targets integer h.shape[:-1]
    with values in [0, vocab_size) or ``ignore_index`` (not scored). Returns a
    0-d Tensor (0 when every target is ignored).
    """
    return _HeadCrossEntropy.apply(h, weight, targets, _ignore_index(ignore_index))
