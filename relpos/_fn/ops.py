"""Elementwise arithmetic, activations, norms, softmax, cross-entropy,
embedding and dropout as differentiable functions on Tensors.

Each op is a :class:`relpos.tensor.Function` whose forward and backward call
the C kernels in ``relpos._C`` (``exp``, ``log`` and ``tanh`` use NumPy).
Shapes: ``(..., D)`` means any leading axes and a last axis of size ``D``;
norms, softmax and activations act on the last axis.
"""
import numpy as np

from .. import _C
from ..tensor import _F32, Function, Tensor, _unbroadcast, as_array
from .views import getitem

__all__ = ["add", "sub", "mul", "div", "scale", "bias_add", "neg",
           "gelu", "relu", "silu", "exp", "log", "tanh",
           "layer_norm", "rms_norm", "softmax", "log_softmax", "cross_entropy",
           "embedding", "dropout", "IGNORE_INDEX"]

#: the target id that cross_entropy skips (as torch's default ignore_index)
IGNORE_INDEX = -100


def _f32(x, name):
    """float32 C-contiguous ndarray from whatever came (Tensor data, scalar,
    list); keeps the shape (0-d stays 0-d)."""
    return _c(as_array(x, name))


def _c(a):
    """C-contiguous float32 ndarray of a gradient (keeps 0-d arrays 0-d,
    which np.ascontiguousarray would not)."""
    if type(a) is not np.ndarray or a.dtype is not _F32:
        a = np.asarray(a, dtype=np.float32)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


# ---- elementwise binary ----------------------------------------------------

_SWAP = {"add": "add", "mul": "mul", "sub": "rsub", "div": "rdiv"}
_NUMPY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _kernel_form(small, big_shape):
    """small as the C kernel takes it against an operand of big_shape: the
    same shape, one element (shape (1,)), or big_shape's trailing axes (leading
    1s of small dropped), repeated over big's leading axes; None if none fits."""
    if small.shape == big_shape:
        return small
    if small.size == 1 and small.ndim <= len(big_shape):
        return small.reshape(1)
    shape = small.shape
    while shape and shape[0] == 1:
        shape = shape[1:]
    k = len(shape)
    if 0 < k <= len(big_shape) and small.ndim <= len(big_shape) and tuple(big_shape[len(big_shape) - k:]) == shape:
        return small.reshape(shape)
    return None


class _Binary(Function):
    """op(a, b) for op in add, sub, mul, div. The C kernel takes the cases
    where one operand has the result's shape and the other the same shape,
    one element, or only trailing axes of it (a bias (D,), positions (T, D)
    against (B, T, D)); NumPy takes every other broadcast.
    add and sub save nothing for the backward (it needs only the shapes)."""

    @staticmethod
    def forward(ctx, a, b, op):
        a = _f32(a, "a")
        b = _f32(b, "b")
        sa, sb = a.shape, b.shape
        if sa == sb or (not sb and sa):  # same shapes, or a 0-d b (a Python number): no broadcast to work out
            shape = sa
        else:
            shape = np.broadcast_shapes(sa, sb)
        ctx.op, ctx.a_shape, ctx.b_shape = op, a.shape, b.shape
        ctx.path = None
        linear = op in ("add", "sub")
        for path, big, small, kop in (("ab", a, b, op), ("ba", b, a, _SWAP[op])):
            if shape != big.shape:
                continue
            sk = _kernel_form(small, big.shape)
            if sk is None:
                continue
            ctx.path, ctx.kop, ctx.small_shape = path, kop, sk.shape
            if not linear:
                ctx.save_for_backward(big, sk)
            return _C.binary_fwd(big, sk, kop)
        # general broadcasting: NumPy
        if not linear:
            ctx.save_for_backward(a, b)
        return np.asarray(_NUMPY[op](a, b), dtype=np.float32)

    @staticmethod
    def backward(ctx, g):
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = _c(g)
        op = ctx.op
        linear = op in ("add", "sub")
        if ctx.path is not None:
            if linear:  # the kernel reads only g: shape-only stand-ins
                big = g
                small = g if ctx.small_shape == g.shape else np.zeros(ctx.small_shape, np.float32)
            else:
                big, small = ctx.saved
            need_big, need_small = (need_a, need_b) if ctx.path == "ab" else (need_b, need_a)
            dbig, dsmall = _C.binary_bwd(big, small, g, ctx.kop, need_a=need_big, need_b=need_small)
            da, db = (dbig, dsmall) if ctx.path == "ab" else (dsmall, dbig)
            da = None if da is None else da.reshape(ctx.a_shape)
            db = None if db is None else db.reshape(ctx.b_shape)
            return da, db, None
        ga = gb = None
        if op == "add":
            ga, gb = (g if need_a else None), (g if need_b else None)
        elif op == "sub":
            ga, gb = (g if need_a else None), (-g if need_b else None)
        else:
            a, b = ctx.saved
            if op == "mul":
                ga, gb = (g * b if need_a else None), (g * a if need_b else None)
            else:
                ga = g / b if need_a else None
                gb = -g * ((a / b) / b) if need_b else None  # torch's order: b * b underflows first
        da = None if ga is None else _unbroadcast(np.asarray(ga, dtype=np.float32), ctx.a_shape)
        db = None if gb is None else _unbroadcast(np.asarray(gb, dtype=np.float32), ctx.b_shape)
        return da, db, None


def add(a, b) -> Tensor:
    """a + b. a, b: Tensor, ndarray or scalar with NumPy-broadcastable shapes
    -> Tensor of the broadcast shape. Same shapes, a scalar, or an operand
    shaped like the other's trailing axes ((D,), (T, D)) run in C; other
    broadcasts in NumPy. Gradients are summed back to each input's shape."""
    return _Binary.apply(a, b, "add")


def sub(a, b) -> Tensor:
    """a - b; shapes and broadcasting as in :func:`add`."""
    return _Binary.apply(a, b, "sub")


def mul(a, b) -> Tensor:
    """a * b; shapes and broadcasting as in :func:`add`."""
    return _Binary.apply(a, b, "mul")


def div(a, b) -> Tensor:
    """a / b; shapes and broadcasting as in :func:`add` (IEEE results for b == 0)."""
    return _Binary.apply(a, b, "div")


def neg(x) -> Tensor:
    """-x, any shape."""
    return _Scale.apply(x, -1.0)


class _Scale(Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = float(alpha)
        return _C.scale(_f32(x, "x"), ctx.alpha)

    @staticmethod
    def backward(ctx, g):
        return _C.scale(_c(g), ctx.alpha), None


def scale(x, alpha: float) -> Tensor:
    """alpha * x for a Python number alpha; x any shape."""
    if not isinstance(alpha, (int, float, np.number)) or isinstance(alpha, bool):
        raise TypeError(f"alpha must be a real number; got {type(alpha).__name__}")
    return _Scale.apply(x, alpha)


class _BiasAdd(Function):
    @staticmethod
    def forward(ctx, x, bias):
        return _C.bias_add(_f32(x, "x"), _f32(bias, "bias"))

    @staticmethod
    def backward(ctx, g):
        g = _c(g)
        dx = g if ctx.needs_input_grad[0] else None
        db = _C.sum_rows(g) if ctx.needs_input_grad[1] else None
        return dx, db


def bias_add(x, bias) -> Tensor:
    """x (..., D) + bias (D,)."""
    return _BiasAdd.apply(x, bias)


# ---- activations -----------------------------------------------------------

class _Gelu(Function):
    @staticmethod
    def forward(ctx, x, approximate):
        x = _f32(x, "x")
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        return _C.gelu_fwd(x, approximate)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return _C.gelu_bwd(x, _c(g), ctx.approximate), None


def gelu(x, approximate: str = "tanh") -> Tensor:
    """GELU, any shape. approximate="tanh": 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)));
    approximate="none": x * Phi(x) with the exact erf."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"approximate must be 'tanh' or 'none'; got {approximate!r}")
    return _Gelu.apply(x, approximate)


def _activation(name, fwd, bwd):
    """A Function for an elementwise activation whose backward needs its input x."""
    class Activation(Function):
        @staticmethod
        def forward(ctx, x):
            x = _f32(x, "x")
            ctx.save_for_backward(x)
            return fwd(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved
            return bwd(x, _c(g))

    Activation.__name__ = Activation.__qualname__ = name
    return Activation


_Relu = _activation("_Relu", _C.relu_fwd, _C.relu_bwd)
_Silu = _activation("_Silu", _C.silu_fwd, _C.silu_bwd)


def relu(x) -> Tensor:
    """max(x, 0), any shape (gradient 0 at x == 0)."""
    return _Relu.apply(x)


def silu(x) -> Tensor:
    """x * sigmoid(x), any shape."""
    return _Silu.apply(x)


class _Exp(Function):
    @staticmethod
    def forward(ctx, x):
        y = np.exp(_f32(x, "x"))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return (g * y).astype(np.float32, copy=False)


class _Log(Function):
    @staticmethod
    def forward(ctx, x):
        x = _f32(x, "x")
        ctx.save_for_backward(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        with np.errstate(divide="ignore"):
            return (g / x).astype(np.float32, copy=False)


class _Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        y = np.tanh(_f32(x, "x"))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return (g * (1.0 - y * y)).astype(np.float32, copy=False)


def exp(x) -> Tensor:
    """e**x elementwise (NumPy)."""
    return _Exp.apply(x)


def log(x) -> Tensor:
    """Natural log elementwise (NumPy; -inf at 0, nan below)."""
    return _Log.apply(x)


def tanh(x) -> Tensor:
    """tanh elementwise (NumPy)."""
    return _Tanh.apply(x)


# ---- norms -----------------------------------------------------------------

class _LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x = _f32(x, "x")
        w = None if weight is None else _f32(weight, "weight")
        b = None if bias is None else _f32(bias, "bias")
        y, mean, rstd = _C.layer_norm_fwd(x, w, b, eps)
        ctx.save_for_backward(x, w, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, mean, rstd = ctx.saved
        nx, nw, nb = ctx.needs_input_grad[:3]
        dx, dw, db = _C.layer_norm_bwd(x, w, mean, rstd, _c(g),
                                       need_x=nx, need_weight=nw and w is not None,
                                       need_bias=nb)
        return dx, dw, db, None


def _eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a float; got {type(eps).__name__}")
    eps = float(eps)
    if not (eps >= 0 and np.isfinite(eps)):
        raise ValueError(f"eps must be a finite float >= 0; got {eps}")
    return eps


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last axis. x: (..., D); weight, bias: (D,) or None
    (no scale / no shift). (x - mean) / sqrt(var + eps) * weight + bias, with
    the biased variance."""
    return _LayerNorm.apply(x, weight, bias, _eps(eps))


class _RMSNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x = _f32(x, "x")
        w = None if weight is None else _f32(weight, "weight")
        y, rstd = _C.rms_norm_fwd(x, w, eps)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, rstd = ctx.saved
        nx, nw = ctx.needs_input_grad[:2]
        dx, dw = _C.rms_norm_bwd(x, w, rstd, _c(g),
                                 need_x=nx, need_weight=nw and w is not None)
        return dx, dw, None


def rms_norm(x, weight=None, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last axis. x: (..., D); weight: (D,) or None.
    x / sqrt(mean(x^2) + eps) * weight."""
    return _RMSNorm.apply(x, weight, _eps(eps))


# ---- softmax ---------------------------------------------------------------

def _norm_axis(axis, ndim):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int; got {type(axis).__name__}")
    if ndim == 0:
        raise ValueError("softmax needs an input with at least 1 dimension; got a 0-d array")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim}) for an input with {ndim} dimensions; got {axis}")
    return int(axis) % ndim


class _Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis, log):
        x = _f32(x, "x")
        ax = _norm_axis(axis, x.ndim)
        last = ax == x.ndim - 1
        ctx.ax, ctx.log, ctx.last = ax, log, last
        xm = x if last else _c(np.moveaxis(x, ax, -1))
        y = _C.log_softmax_fwd(xm) if log else _C.softmax_fwd(xm)
        ctx.save_for_backward(y)
        return y if last else np.moveaxis(y, -1, ax)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        gm = _c(g if ctx.last else np.moveaxis(g, ctx.ax, -1))
        dx = _C.log_softmax_bwd(y, gm) if ctx.log else _C.softmax_bwd(y, gm)
        return (dx if ctx.last else np.moveaxis(dx, -1, ctx.ax)), None, None


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis` (any shape)."""
    return _Softmax.apply(x, axis, False)


def log_softmax(x, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis` (any shape)."""
    return _Softmax.apply(x, axis, True)


# ---- cross-entropy ---------------------------------------------------------

class _CrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        x = _f32(logits, "logits")
        if x.ndim < 1:
            raise ValueError("logits must have shape (N, V) or (..., V); got a 0-d array")
        t = _targets(targets)
        lead = x.shape[:-1]
        if t.shape != lead:
            raise ValueError(f"targets must have shape {lead} (logits.shape[:-1]); got {t.shape}")
        x2 = x.reshape(int(np.prod(lead)), x.shape[-1])  # not -1: ambiguous when V == 0
        t1 = t.reshape(-1)
        loss, lse, count = _C.cross_entropy_fwd(x2, t1, ignore_index)
        ctx.save_for_backward(x2, t1, lse)
        ctx.count, ctx.ignore_index, ctx.shape = count, ignore_index, x.shape
        return np.array(loss, dtype=np.float32)

    @staticmethod
    def backward(ctx, g):
        x2, t1, lse = ctx.saved
        d = _C.cross_entropy_bwd(x2, t1, lse, float(np.asarray(g)), ctx.count, ctx.ignore_index)
        return d.reshape(ctx.shape), None, None


def _targets(targets):
    """Class ids as a contiguous int64 array (a Tensor, or a float array, is refused)."""
    if isinstance(targets, Tensor):
        raise TypeError("targets must be an integer ndarray; got a Tensor (float)")
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer ndarray (an integer dtype); got dtype {t.dtype}")
    return np.ascontiguousarray(t, dtype=np.int64)


def _ignore_index(ignore_index) -> int:
    """The ignore_index of a cross-entropy, checked: an int (not a bool)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int; got {type(ignore_index).__name__}")
    return int(ignore_index)


def cross_entropy(logits, targets, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean softmax cross-entropy. logits: (N, V) or (..., V); targets: integer
    array of logits.shape[:-1] with values in [0, V) or ignore_index. The mean
    runs over rows whose target is not ignore_index (loss 0 when there are
    none). Returns a 0-d Tensor. Fused: saves only the per-row logsumexp."""
    return _CrossEntropy.apply(logits, targets, _ignore_index(ignore_index))


# ---- embedding -------------------------------------------------------------

class _Embedding(Function):
    @staticmethod
    def forward(ctx, weight, ids):
        w = _f32(weight, "weight")
        out = _C.embedding_fwd(ids, w)
        ctx.save_for_backward(ids)
        ctx.V = w.shape[0]
        return out

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved
        return _C.embedding_bwd(ids, _c(g), ctx.V), None


def embedding(ids, weight) -> Tensor:
    """Rows of weight (V, D) at integer ids (any shape) -> ids.shape + (D,).
    Ids outside [0, V) raise IndexError. The gradient into weight is a
    deterministic scatter-add (tokens summed in order)."""
    if isinstance(ids, Tensor):
        raise TypeError("ids must be an integer ndarray; got a Tensor (float)")
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must have an integer dtype; got {ids.dtype}")
    if ids.ndim == 0:  # one id -> one row (D,)
        return getitem(_Embedding.apply(weight, np.ascontiguousarray(ids.reshape(1), dtype=np.int64)), 0)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return _Embedding.apply(weight, ids)


# ---- dropout ---------------------------------------------------------------

class _Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return _C.dropout_fwd(_f32(x, "x"), p, seed)

    @staticmethod
    def backward(ctx, g):
        return _C.dropout_bwd(_c(g), ctx.p, ctx.seed), None, None


def dropout(x, p: float, seed: int, training: bool = True) -> Tensor:
    """Inverted dropout, any shape: element i (flat, C order) is zeroed with
    probability p, kept ones are scaled by 1/(1-p). The mask is a pure function
    of (seed, i) (counter-based hash), so it is the same for any thread count;
    the backward regenerates it from the seed (nothing is stored). Identity
    when training is False or p == 0. 0 <= p < 1; seed an int in [0, 2**64)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"p must be a float in [0, 1); got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1); got {p}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int in [0, 2**64); got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64); got {seed}")
    if not training or p == 0.0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return _Dropout.apply(x, p, seed)
