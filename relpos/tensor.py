"""Tensor and the autograd tape.

A :class:`Tensor` wraps a float32 ``numpy.ndarray``. Differentiable operations
are :class:`Function` subclasses with ``forward(ctx, *arrays)`` and
``backward(ctx, *grads)`` working on plain ndarrays; ``Function.apply`` records
them on the tape when any input requires a gradient and grad mode is on.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "as_array"]

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside :func:`no_grad` (per thread)."""
    return getattr(_state, "grad_enabled", True)


@contextmanager
def no_grad():
    """Context manager: operations inside record nothing on the tape."""
    prev = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = prev


@contextmanager
def enable_grad():
    """Context manager: record on the tape again inside a :func:`no_grad` block."""
    prev = is_grad_enabled()
    _state.grad_enabled = True
    try:
        yield
    finally:
        _state.grad_enabled = prev


def as_array(x, name="x"):
    """float32 ndarray from a Tensor, ndarray, list or scalar.

    Other float dtypes (and ints/bools) are converted to float32; complex and
    object arrays raise ``TypeError``.
    """
    if isinstance(x, Tensor):
        return x.data
    arr = np.asarray(x)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float32)
    raise TypeError(f"{name} must be real numbers convertible to float32; got dtype {arr.dtype}")


class Context:
    """Scratch space a Function's forward leaves for its backward."""

    __slots__ = ("saved", "needs_input_grad", "__dict__")

    def __init__(self):
        self.saved = ()
        self.needs_input_grad = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays


class _Node:
    """One recorded call: the function, its context, its Tensor inputs."""

    __slots__ = ("fn", "ctx", "inputs", "n_outputs", "out_shapes", "grads")

    def __init__(self, fn, ctx, inputs, out_shapes):
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs  # tuple of Tensor or None, aligned with forward's arguments
        self.out_shapes = out_shapes
        self.n_outputs = len(out_shapes)
        self.grads = None


class Function:
    """Base of every differentiable op.

    Subclasses implement ``forward(ctx, *args, **kwargs)`` on ndarrays (Tensor
    arguments arrive as their ``.data``) returning one ndarray or a tuple, and
    ``backward(ctx, *grad_outputs)`` returning one gradient (or None) per
    positional argument of forward. ``ctx.needs_input_grad[i]`` says whether
    argument i needs one; a backward should compute only those. Gradients of
    outputs that received none arrive as None.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = Context()
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx.needs_input_grad = needs
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = cls.forward(ctx, *raw, **kwargs)
        multi = isinstance(out, tuple)
        outs = out if multi else (out,)
        # a custom forward returning float64, a NumPy scalar or a list still gives a float32 Tensor
        outs = tuple(o if type(o) is np.ndarray and o.dtype == np.float32
                     else as_array(o, f"{cls.__name__}.forward output") for o in outs)
        track = is_grad_enabled() and any(needs)
        tensors = tuple(Tensor._wrap(o, track) for o in outs)
        if track:
            node = _Node(cls, ctx, tuple(a if isinstance(a, Tensor) else None for a in args),
                         tuple(o.shape for o in outs))
            for i, t in enumerate(tensors):
                t._node = node
                t._index = i
        return tensors if multi else tensors[0]


def _unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a broadcast gradient back to `shape`."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if lead > 0:
        grad = grad.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Tensor:
    """A float32 array with an optional gradient.

    Attributes: ``data`` (the ndarray), ``grad`` (ndarray or None, accumulated
    by ``backward`` on leaf tensors that require it), ``requires_grad``.
    """

    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        self.data = as_array(data, "data")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.name = name
        self._node = None
        self._index = 0

    @classmethod
    def _wrap(cls, arr, requires_grad):
        t = cls.__new__(cls)
        t.data = arr
        t.grad = None
        t.requires_grad = requires_grad
        t.name = None
        t._node = None
        t._index = 0
        return t

    # ---- array facts ------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self):
        return self._node is None

    def numpy(self) -> np.ndarray:
        """The underlying ndarray (no copy)."""
        return self.data

    def __array__(self, dtype=None, copy=None):
        # np.asarray(t), plt.plot(t): the float32 data, not an object array of 0-d Tensors
        if copy is False and dtype is not None and np.dtype(dtype) != self.data.dtype:
            raise ValueError(f"cannot view a float32 Tensor as {np.dtype(dtype)} without a copy")
        arr = self.data if dtype is None else self.data.astype(dtype, copy=False)
        return arr.copy() if copy else arr

    def item(self) -> float:
        return float(self.data.item())

    def detach(self) -> "Tensor":
        return Tensor._wrap(self.data, False)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self):
        self.grad = None

    def __len__(self):
        return len(self.data)

    def __bool__(self):
        # as NumPy: without this, bool() fell back to __len__ and `if t:` was True for any
        # non-empty tensor, whatever its values
        if self.data.size != 1:
            raise ValueError(f"the truth value of a Tensor of shape {self.shape} is ambiguous "
                             "(only one-element Tensors convert to bool); use .numpy().any() or .all()")
        return bool(self.data.item())

    def __float__(self):
        if self.data.size != 1:
            raise TypeError(f"only one-element Tensors convert to float; got shape {self.shape}")
        return float(self.data.item())

    def __repr__(self):
        body = np.array2string(self.data, precision=4, threshold=20, edgeitems=2, prefix="Tensor(")
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({body}{extra})"

    # ---- autograd ---------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires it.

        ``grad`` defaults to 1 for a one-element tensor.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad must be given for a non-scalar tensor of shape {self.shape}")
            grad = np.ones_like(self.data)
        else:
            grad = as_array(grad, "grad")
            if grad.shape != self.shape:
                raise ValueError(f"grad must have shape {self.shape}; got {grad.shape}")
        if self._node is None:
            self._accumulate(grad)
            return

        # reverse topological order over nodes
        order, seen = [], set()
        stack = [(self._node, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for t in node.inputs:
                if t is not None and t._node is not None and id(t._node) not in seen:
                    stack.append((t._node, False))

        self._node.grads = [None] * self._node.n_outputs
        self._node.grads[self._index] = grad
        for node in reversed(order):
            grads = node.grads
            node.grads = None
            if grads is None or all(g is None for g in grads):
                continue
            in_grads = node.fn.backward(node.ctx, *grads)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) < len(node.inputs):
                in_grads = in_grads + (None,) * (len(node.inputs) - len(in_grads))
            for t, g in zip(node.inputs, in_grads):
                if t is None or g is None or not t.requires_grad:
                    continue
                g = np.asarray(g, dtype=np.float32)
                if g.shape != t.shape:
                    raise RuntimeError(f"{node.fn.__name__}.backward returned a gradient of shape "
                                       f"{g.shape} for an input of shape {t.shape}")
                if t._node is None:
                    t._accumulate(g)
                else:
                    parent = t._node
                    if parent.grads is None:
                        parent.grads = [None] * parent.n_outputs
                    cur = parent.grads[t._index]
                    parent.grads[t._index] = g if cur is None else cur + g

    def _accumulate(self, g):
        if self.grad is None:
            self.grad = np.array(g, dtype=np.float32, copy=True)
        else:
            self.grad += g

    # ---- operators (implemented in relpos.functional) ----------------------
    def __add__(self, o):
        from . import functional as F
        return F.add(self, o)

    def __radd__(self, o):
        from . import functional as F
        return F.add(o, self)

    def __sub__(self, o):
        from . import functional as F
        return F.sub(self, o)

    def __rsub__(self, o):
        from . import functional as F
        return F.sub(o, self)

    def __mul__(self, o):
        from . import functional as F
        return F.mul(self, o)

    def __rmul__(self, o):
        from . import functional as F
        return F.mul(o, self)

    def __truediv__(self, o):
        from . import functional as F
        return F.div(self, o)

    def __rtruediv__(self, o):
        from . import functional as F
        return F.div(o, self)

    def __pow__(self, exponent):
        from . import functional as F
        if exponent == 2:
            return F.mul(self, self)
        if exponent == 1:
            return self
        raise TypeError(f"Tensor ** {exponent!r}: only ** 2 and ** 1 are supported; "
                        "use relpos.functional.exp/log for other powers")

    def __neg__(self):
        from . import functional as F
        return F.mul(self, -1.0)

    def __matmul__(self, o):
        from . import functional as F
        return F.matmul(self, o)

    def __rmatmul__(self, o):
        from . import functional as F
        return F.matmul(o, self)

    def __getitem__(self, index):
        from . import functional as F
        return F.getitem(self, index)

    def reshape(self, *shape):
        from . import functional as F
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def transpose(self, *axes):
        from . import functional as F
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return F.transpose(self, axes or None)

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis=None, keepdims=False):
        from . import functional as F
        return F.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        from . import functional as F
        return F.mean(self, axis=axis, keepdims=keepdims)


def tensor(data, requires_grad: bool = False) -> Tensor:
    """Make a Tensor (a float32 copy of ``data``)."""
    return Tensor(np.array(as_array(data), dtype=np.float32, copy=True), requires_grad=requires_grad)
