"""linalg: matrix products and the Linear layer, on the packed C GEMM.

Backward passes use the GEMM's transpose flags instead of transposed copies:
for C = A·B, dA = dC·Bᵀ (``trans_b``) and dB = Aᵀ·dC (``trans_a``).
"""
import numpy as np

from .. import _C
from ..tensor import Function, Tensor, as_array

__all__ = ["matmul", "linear"]


def _c32(x):
    """C-contiguous float32 view or copy."""
    return np.ascontiguousarray(x, dtype=np.float32)


class MatMul(Function):
    """C = A @ B for 2-D, equal-batch (..., M, K) @ (..., K, N), and (..., M, K) @ (K, N)."""

    @staticmethod
    def forward(ctx, a, b):
        a = _c32(as_array(a, "a"))
        b = _c32(as_array(b, "b"))
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul needs a with shape (..., M, K) and b with shape (..., K, N) "
                             f"(at least 2-D); got a {a.shape} and b {b.shape}")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: inner dimensions differ: a {a.shape} has K={a.shape[-1]}, "
                             f"b {b.shape} has K={b.shape[-2]}")
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        if b.ndim == 2:
            # (..., M, K) @ (K, N): one GEMM on the flattened rows of a
            ctx.mode = "rows"
            a2 = a.reshape(int(np.prod(a.shape[:-1])), K)  # -1 is ambiguous when K == 0
            ctx.save_for_backward(a2, b)
            return _C.gemm(a2, b).reshape(a.shape[:-1] + (N,))
        if a.shape[:-2] != b.shape[:-2]:
            raise ValueError(f"matmul: batch dimensions must be equal (or b 2-D); got a {a.shape} and b {b.shape}")
        ctx.mode = "batched"
        nb = int(np.prod(a.shape[:-2]))
        a3 = a.reshape(nb, M, K)
        b3 = b.reshape(nb, K, N)
        ctx.save_for_backward(a3, b3)
        return _C.gemm_batched(a3, b3).reshape(a.shape[:-2] + (M, N))

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad[:2]
        da = db = None
        if ctx.mode == "rows":
            g2 = _c32(g).reshape(-1, b.shape[1])
            if need_a:
                da = _C.gemm(g2, b, trans_b=True).reshape(ctx.a_shape)
            if need_b:
                db = _C.gemm(a, g2, trans_a=True)
        else:
            g3 = _c32(g).reshape(a.shape[0], a.shape[1], b.shape[2])
            if need_a:
                da = _C.gemm_batched(g3, b, trans_b=True).reshape(ctx.a_shape)
            if need_b:
                db = _C.gemm_batched(a, g3, trans_a=True).reshape(ctx.b_shape)
        return da, db


class Linear(Function):
    """y = x·Wᵀ + b with x (..., in), W (out, in), b (out,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        x = _c32(as_array(x, "x"))
        w = _c32(as_array(weight, "weight"))
        bvec = None if bias is None else _c32(as_array(bias, "bias"))
        if w.ndim != 2:
            raise ValueError(f"linear: weight must have shape (out_features, in_features); got {w.shape}")
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: x must have shape (..., in_features={w.shape[1]}) to match "
                             f"weight {w.shape}; got x {x.shape}")
        if bvec is not None and bvec.shape != (w.shape[0],):
            raise ValueError(f"linear: bias must have shape (out_features,) = ({w.shape[0]},) to match "
                             f"weight {w.shape}; got bias {bvec.shape}")
        x2 = x.reshape(-1, w.shape[1])
        ctx.x_shape = x.shape
        ctx.has_bias = bvec is not None
        ctx.save_for_backward(x2, w)
        y = _C.linear_fwd(x2, w, bvec)
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, g):
        x2, w = ctx.saved
        needs = tuple(ctx.needs_input_grad) + (False,) * 3
        g2 = _c32(g).reshape(-1, w.shape[0])
        dx = dw = db = None
        if needs[0]:
            dx = _C.gemm(g2, w).reshape(ctx.x_shape)           # dY (R, out) · W (out, in)
        if needs[1]:
            dw = _C.gemm(g2, x2, trans_a=True)                  # dYᵀ (out, R) · X (R, in)
        if needs[2] and ctx.has_bias:
            db = _C.colsum(g2)
        return dx, dw, db


def matmul(a, b) -> Tensor:
    """Matrix product ``a @ b`` of Tensors (or arrays).

    Shapes: (M, K) @ (K, N) -> (M, N); (..., M, K) @ (..., K, N) -> (..., M, N)
    with equal batch dimensions; (..., M, K) @ (K, N) -> (..., M, N).
    Raises ValueError naming both shapes when they do not fit.
    """
    return MatMul.apply(a, b)


def linear(x, weight, bias=None) -> Tensor:
    """Affine map in torch layout: ``x @ weight.T + bias``.

    Shapes: x (..., in_features), weight (out_features, in_features),
    bias (out_features,) or None -> (..., out_features). The bias is added in
    the GEMM's epilogue; its gradient is a deterministic column sum.
    """
    return Linear.apply(x, weight, bias)
