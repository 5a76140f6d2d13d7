"""Tensor and the autograd tape.

A :class:`Tensor` wraps a float32 ``numpy.ndarray``. Differentiable operations
are :class:`Function` subclasses with ``forward(ctx, *arrays)`` and
``backward(ctx, *grads)`` working on plain ndarrays; ``Function.apply`` records
them on the tape when any input requires a gradient and grad mode is on.

In-place changes and the tape (as in PyTorch): every Tensor carries a version
counter (``Tensor._version``), bumped by each in-place operation relpos offers:
``add_``, ``mul_``, ``zero_``, ``copy_``, assignment to
``t.data``, the optimizers' parameter updates and ``Module.load_state_dict``.
A tensor and the tensors that alias its memory (``detach()``, and outputs of
view ops such as ``reshape``, ``transpose`` or basic indexing) share one
counter. ``Function.apply`` records the versions of a node's Tensor inputs and
outputs; ``backward`` raises ``RuntimeError`` naming the op and the tensor's
shape if one changed since. relpos cannot tell which inputs a backward reads,
so it checks them all (stricter than PyTorch, which checks saved tensors only).
What bypasses the counter, as ``.data`` does in PyTorch: writes into the
ndarray itself (``t.data[...] = x``, ``t.numpy()[0] = 1``, ``np.add(t.data, 1,
out=t.data)``, any NumPy view of it). Such writes are unchecked: make them
only when no recorded graph still needs the old values.

Threads: several Python threads may run ``backward()`` into the same leaves at
once (e.g. one model, one batch per thread): each leaf has its own lock, held
only while its ``.grad`` is created or ``+=``-updated, so no contribution is
lost. The per-call gradients of intermediate nodes live in the ``backward``
call, not on the graph, so threads may also share parts of a graph. The order
in which threads add into a leaf is not fixed: float sums of concurrent
backward passes may differ in the last bits from a serial run.
"""
from __future__ import annotations

import itertools
import operator
import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "as_array"]

_state = threading.local()

# guards the lazy creation of the per-leaf gradient locks (never held during arithmetic)
_LOCK_GUARD = threading.Lock()

# The in-place epoch: a fresh number from _EPOCHS is stored in _epoch[0] after every version bump.
# A node records _epoch[0]; if it is unchanged at backward, nothing was changed in place since, and
# backward skips comparing the node's versions. (Numbers are never reused, so a bump stored after
# the node was recorded always changes _epoch[0], even when threads race.)
_EPOCHS = itertools.count(1)
_epoch = [0]


def _bump(counter):
    """Record an in-place change of the tensors sharing ``counter`` (a one-element list)."""
    counter[0] += 1
    _epoch[0] = next(_EPOCHS)


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
        return x._data
    if type(x) is np.ndarray and x.dtype is _F32:
        return x
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
    """One recorded call: the function, its context, its Tensor inputs, and the
    version counters (with the versions seen at record time) of its Tensor
    inputs then outputs, checked again before the backward runs."""

    __slots__ = ("fn", "ctx", "inputs", "n_outputs", "out_shapes", "counters", "versions", "epoch")

    def __init__(self, fn, ctx, inputs, out_shapes, counters, versions):
        self.epoch = _epoch[0]
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs  # tuple of Tensor or None, aligned with forward's arguments
        self.out_shapes = out_shapes
        self.n_outputs = len(out_shapes)
        self.counters = counters
        self.versions = versions

    def version_error(self):
        """The error for a Tensor input or output changed in place since the forward."""
        shapes = [t.shape for t in self.inputs if t is not None] + list(self.out_shapes)
        kinds = ["input"] * (len(shapes) - self.n_outputs) + ["output"] * self.n_outputs
        for c, v, shape, kind in zip(self.counters, self.versions, shapes, kinds):
            if c[0] != v:
                raise RuntimeError(
                    f"{self.fn.__name__}.backward: one of the tensors needed for the gradient (the "
                    f"{kind} of shape {shape}) has been modified by an in-place operation: it is at "
                    f"version {c[0]}; expected version {v} (as recorded by the forward). Change it "
                    "after backward(), or change a copy (out-of-place ops) instead.")


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
        raw, needs, inputs, tin = [], [], [], []
        for a in args:
            if isinstance(a, Tensor):
                raw.append(a._data)
                needs.append(a.requires_grad)
                inputs.append(a)
                tin.append(a)
            else:
                raw.append(a)
                needs.append(False)
                inputs.append(None)
        ctx.needs_input_grad = needs = tuple(needs)
        out = cls.forward(ctx, *raw, **kwargs)
        track = any(needs) and is_grad_enabled()
        if not isinstance(out, tuple):  # one output: the common case, kept lean
            # a custom forward returning float64, a NumPy scalar or a list still gives a float32 Tensor
            if type(out) is not np.ndarray or out.dtype is not _F32:
                out = as_array(out, f"{cls.__name__}.forward output")
            # a view of an input's array shares that input's version counter (_alias_counter, inlined)
            vc = None
            if tin:
                base = out.base
                for x in tin:
                    d = x._data
                    if out is d or (base is not None and (base is d or base is d.base)):
                        vc = x._vc
                        break
            t = Tensor._wrap(out, track, vc)
            if track:
                tin.append(t)
                counters = tuple(map(_VC, tin))
                t._node = _Node(cls, ctx, tuple(inputs), (out.shape,), counters, tuple(map(_FIRST, counters)))
            return t
        outs = tuple(o if type(o) is np.ndarray and o.dtype is _F32
                     else as_array(o, f"{cls.__name__}.forward output") for o in out)
        tensors = tuple(Tensor._wrap(o, track, _alias_counter(o, tin)) for o in outs)
        if track:
            counters = tuple(map(_VC, tin)) + tuple(map(_VC, tensors))
            node = _Node(cls, ctx, tuple(inputs), tuple(o.shape for o in outs), counters,
                         tuple(map(_FIRST, counters)))
            for i, t in enumerate(tensors):
                t._node = node
                t._index = i
        return tensors


_F32 = np.dtype(np.float32)
_VC = operator.attrgetter("_vc")
_FIRST = operator.itemgetter(0)


def _alias_counter(arr, tensors):
    """The version counter of the Tensor among ``tensors`` whose memory ``arr``
    is (a view of), so that a view and its base share one counter; else None.
    (NumPy points ``base`` at the array that owns the memory, so one level is enough.)"""
    base = arr.base
    for t in tensors:
        d = t._data
        if arr is d or (base is not None and (base is d or base is d.base)):
            return t._vc
    return None


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
    by ``backward`` on leaf tensors that require it), ``requires_grad``,
    ``_version`` (bumped by every in-place operation, see the module docstring
    for what bypasses it).
    """

    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor
    _lock = None  # the leaf's gradient lock, made on its first accumulation

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        arr = as_array(data, "data")
        # Tensor(t) aliases t's array: one counter for both, as for detach()
        self._vc = data._vc if isinstance(data, Tensor) and data._data is arr else [0]
        self._data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.name = name
        self._node = None
        self._index = 0

    @classmethod
    def _wrap(cls, arr, requires_grad, counter=None):
        t = cls.__new__(cls)
        t.grad = None
        t.requires_grad = requires_grad
        t.name = None
        t._node = None
        t._index = 0
        t._vc = [0] if counter is None else counter
        t._data = arr
        return t

    def _set_data(self, value):
        self._data = as_array(value, "data")  # float32, as every Tensor holds (a list or float64 is converted)
        _bump(self._vc)

    # reading t.data is one C call (the autograd hot path reads it for every op input);
    # assigning it bumps the version counter
    data = property(operator.attrgetter("_data"), _set_data,
                    doc="The float32 ndarray (no copy). Assigning a new array bumps the version; "
                        "writing into it (t.data[...] = x) does not.")

    def __getstate__(self):
        # copy.deepcopy / pickle: a lock cannot be copied (the copy makes its own when needed)
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    @property
    def _version(self) -> int:
        """How many in-place changes this tensor (or an alias sharing its memory) has had."""
        return self._vc[0]

    # ---- array facts ------------------------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def is_leaf(self):
        return self._node is None

    def numpy(self) -> np.ndarray:
        """The underlying ndarray (no copy)."""
        return self._data

    def __array__(self, dtype=None, copy=None):
        # np.asarray(t), plt.plot(t): the float32 data, not an object array of 0-d Tensors
        if copy is False and dtype is not None and np.dtype(dtype) != self._data.dtype:
            raise ValueError(f"cannot view a float32 Tensor as {np.dtype(dtype)} without a copy")
        arr = self._data if dtype is None else self._data.astype(dtype, copy=False)
        return arr.copy() if copy else arr

    def item(self) -> float:
        return float(self._data.item())

    def detach(self) -> "Tensor":
        """The same array, off the tape; it shares this tensor's version counter."""
        return Tensor._wrap(self._data, False, self._vc)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self):
        self.grad = None

    def __len__(self):
        return len(self._data)

    def __bool__(self):
        # as NumPy: without this, bool() fell back to __len__ and `if t:` was True for any
        # non-empty tensor, whatever its values
        if self._data.size != 1:
            raise ValueError(f"the truth value of a Tensor of shape {self.shape} is ambiguous "
                             "(only one-element Tensors convert to bool); use .numpy().any() or .all()")
        return bool(self._data.item())

    def __float__(self):
        if self._data.size != 1:
            raise TypeError(f"only one-element Tensors convert to float; got shape {self.shape}")
        return float(self._data.item())

    def __repr__(self):
        body = np.array2string(self._data, precision=4, threshold=20, edgeitems=2, prefix="Tensor(")
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
            if self._data.size != 1:
                raise RuntimeError(f"grad must be given for a non-scalar tensor of shape {self.shape}")
            grad = np.ones_like(self._data)
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

        # gradients of each node's outputs, kept in this call (not on the shared graph) so that
        # threads may run backward through common parts at once; every node in `order` is alive,
        # so id() keys are unique
        pending = {id(self._node): [None] * self._node.n_outputs}
        pending[id(self._node)][self._index] = grad
        for node in reversed(order):
            grads = pending.pop(id(node), None)
            if grads is None or all(g is None for g in grads):
                continue
            if node.epoch != _epoch[0] and tuple(map(_FIRST, node.counters)) != node.versions:
                node.version_error()
            in_grads = node.fn.backward(node.ctx, *grads)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) < len(node.inputs):
                in_grads = in_grads + (None,) * (len(node.inputs) - len(in_grads))
            for t, g in zip(node.inputs, in_grads):
                if t is None or g is None or not t.requires_grad:
                    continue
                if type(g) is not np.ndarray or g.dtype is not _F32:
                    g = np.asarray(g, dtype=np.float32)
                if g.shape != t._data.shape:
                    raise RuntimeError(f"{node.fn.__name__}.backward returned a gradient of shape "
                                       f"{g.shape} for an input of shape {t.shape}")
                if t._node is None:
                    t._accumulate(g)
                else:
                    parent = pending.get(id(t._node))
                    if parent is None:
                        parent = pending[id(t._node)] = [None] * t._node.n_outputs
                    cur = parent[t._index]
                    parent[t._index] = g if cur is None else cur + g

    def _accumulate(self, g):
        """``grad += g`` under this leaf's lock (made once, under a global guard), so
        concurrent backward passes lose nothing; other leaves are not blocked."""
        lock = self._lock
        if lock is None:
            with _LOCK_GUARD:
                lock = self._lock
                if lock is None:
                    lock = self._lock = threading.Lock()
        lock.acquire()
        try:
            if self.grad is None:
                self.grad = np.array(g, dtype=np.float32, copy=True)
            else:
                self.grad += g
        finally:
            lock.release()

    # ---- in-place operations (each bumps the version counter) --------------
    def _check_inplace(self, op):
        if self.requires_grad and is_grad_enabled():
            raise RuntimeError(
                f"{op} on a tensor that requires grad (shape {self.shape}): relpos does not record "
                "in-place operations on the tape; use the out-of-place op, or make the change "
                "inside relpos.no_grad() as optimizers do")

    def _operand(self, other, op):
        o = as_array(other, "other")
        if o.shape != self.shape:
            try:
                ok = np.broadcast_shapes(o.shape, self.shape) == self.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{op}: the operand of shape {o.shape} does not broadcast to the "
                                 f"tensor's shape {self.shape}")
        return o

    def add_(self, other) -> "Tensor":
        """``self += other`` in place (other broadcasts to self's shape); returns self."""
        self._check_inplace("add_")
        np.add(self._data, self._operand(other, "add_"), out=self._data)
        _bump(self._vc)
        return self

    def mul_(self, other) -> "Tensor":
        """``self *= other`` in place (other broadcasts to self's shape); returns self."""
        self._check_inplace("mul_")
        np.multiply(self._data, self._operand(other, "mul_"), out=self._data)
        _bump(self._vc)
        return self

    def zero_(self) -> "Tensor":
        """Fill with zeros in place; returns self."""
        self._check_inplace("zero_")
        self._data.fill(0.0)
        _bump(self._vc)
        return self

    def copy_(self, src) -> "Tensor":
        """Copy ``src`` (broadcast to self's shape) into self in place; returns self."""
        self._check_inplace("copy_")
        np.copyto(self._data, self._operand(src, "copy_"))
        _bump(self._vc)
        return self

    # ---- operators (implemented in relpos.functional) ----------------------
    def __add__(self, o):
        return F.add(self, o)

    def __radd__(self, o):
        return F.add(o, self)

    def __sub__(self, o):
        return F.sub(self, o)

    def __rsub__(self, o):
        return F.sub(o, self)

    def __mul__(self, o):
        return F.mul(self, o)

    def __rmul__(self, o):
        return F.mul(o, self)

    def __truediv__(self, o):
        return F.div(self, o)

    def __rtruediv__(self, o):
        return F.div(o, self)

    def __pow__(self, exponent):
        if exponent == 2:
            return F.mul(self, self)
        if exponent == 1:
            return self
        raise TypeError(f"Tensor ** {exponent!r}: only ** 2 and ** 1 are supported; "
                        "use relpos.functional.exp/log for other powers")

    def __neg__(self):
        return F.mul(self, -1.0)

    def __matmul__(self, o):
        return F.matmul(self, o)

    def __rmatmul__(self, o):
        return F.matmul(o, self)

    def __getitem__(self, index):
        return F.getitem(self, index)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return F.transpose(self, axes or None)

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis=axis, keepdims=keepdims)


def tensor(data, requires_grad: bool = False) -> Tensor:
    """Make a Tensor (a float32 copy of ``data``)."""
    return Tensor(np.array(as_array(data), dtype=np.float32, copy=True), requires_grad=requires_grad)


# the tolerated tensor <-> functional pair: the operators above dispatch to relpos.functional,
# whose ops are Functions defined on top of this module
from . import functional as F  # noqa: E402
