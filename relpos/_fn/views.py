"""Shape ops: reshape, transpose, indexing, sum, mean, concat. NumPy views where possible."""
import numpy as np

from ..tensor import Function, Tensor, _unbroadcast

__all__ = ["reshape", "transpose", "getitem", "sum", "mean", "concat", "unbroadcast"]

unbroadcast = _unbroadcast


class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape), None


class Transpose(Function):
    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return np.transpose(x, axes)

    @staticmethod
    def backward(ctx, g):
        inv = None if ctx.axes is None else tuple(np.argsort(ctx.axes))
        return np.transpose(g, inv), None


class GetItem(Function):
    @staticmethod
    def forward(ctx, x, index):
        ctx.shape = x.shape
        ctx.index = index
        return x[index]

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=np.float32)
        np.add.at(out, ctx.index, g)  # handles repeated fancy indices
        return out, None


class Sum(Function):
    @staticmethod
    def forward(ctx, x, axis, keepdims):
        ctx.shape, ctx.axis, ctx.keepdims = x.shape, axis, keepdims
        return np.asarray(x.sum(axis=axis, keepdims=keepdims, dtype=np.float32), dtype=np.float32)

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)
        return np.broadcast_to(g, ctx.shape).astype(np.float32), None, None


class Concat(Function):
    @staticmethod
    def forward(ctx, axis, *xs):
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in xs]
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, g):
        splits = np.cumsum(ctx.sizes)[:-1]
        return (None,) + tuple(np.split(g, splits, axis=ctx.axis))


def reshape(x: Tensor, shape) -> Tensor:
    """Reshape (a view when the layout allows)."""
    return Reshape.apply(x, tuple(shape))


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute axes (a view; kernels that need contiguity copy)."""
    return Transpose.apply(x, None if axes is None else tuple(axes))


def getitem(x: Tensor, index) -> Tensor:
    """x[index], any NumPy index; the backward scatters (adds) into a zero array."""
    return GetItem.apply(x, index)


def _norm_axis(axis):
    if isinstance(axis, list):
        return tuple(axis)
    return axis


def sum(x: Tensor, axis=None, keepdims=False) -> Tensor:  # noqa: A001 - mirrors numpy
    """Sum over ``axis`` (None: all; an int, tuple or list), as ``numpy.sum``: x of any
    shape -> those axes removed (kept as size 1 with keepdims). Float32 accumulation."""
    return Sum.apply(x, _norm_axis(axis), keepdims)


class Mean(Function):
    @staticmethod
    def forward(ctx, x, axis, keepdims):
        ctx.shape, ctx.axis, ctx.keepdims = x.shape, axis, keepdims
        n = x.size if axis is None else int(np.prod([x.shape[a] for a in np.atleast_1d(axis)]))
        ctx.n = max(n, 1)
        return np.asarray(x.mean(axis=axis, keepdims=keepdims, dtype=np.float32), dtype=np.float32)

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)
        return (np.broadcast_to(g, ctx.shape) / np.float32(ctx.n)).astype(np.float32), None, None


def mean(x: Tensor, axis=None, keepdims=False) -> Tensor:
    """Mean over ``axis`` (None: all; an int, tuple or list), as ``numpy.mean``; shapes as :func:`sum`."""
    return Mean.apply(x, _norm_axis(axis), keepdims)


def concat(tensors, axis=0) -> Tensor:
    """Join a sequence of Tensors (or arrays) along ``axis``, as ``numpy.concatenate``:
    shapes equal except on ``axis``; the gradient is split back to each input."""
    return Concat.apply(axis, *tensors)
