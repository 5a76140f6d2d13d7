"""Float64 NumPy twins of every relpos C kernel, written for clarity, not speed.

Every kernel's forward is checked against its twin here; every backward
against central finite differences of the twin (``numgrad``). Each area keeps
its twins in its own section below.
"""
import numpy as np


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar function f at float64 array x."""
    x = np.array(x, dtype=np.float64, copy=True)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


# ============================================================== gemm
# (area: gemm)


# ============================================================== ops
# (area: elementwise, activations, norms, softmax, cross-entropy, embedding, dropout)

def binary(op, a, b):
    """add/sub/mul/div with NumPy broadcasting, float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[op]


def gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    from math import erf
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / np.sqrt(2.0)))


def relu(x):
    return np.maximum(np.asarray(x, np.float64), 0.0)


def silu(x):
    x = np.asarray(x, np.float64)
    return x / (1.0 + np.exp(-x))


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Over the last axis; biased variance. Returns y only."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def rms_norm(x, weight=None, eps=1e-6):
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    return y


def softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True, initial=-np.inf))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True, initial=-np.inf)
    with np.errstate(divide="ignore"):  # empty rows: log(0), never used
        return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean over rows whose target != ignore_index of -log_softmax[target]; 0 if none."""
    x = np.asarray(logits, np.float64)
    x = x.reshape(-1, x.shape[-1])
    t = np.asarray(targets).reshape(-1)
    keep = t != ignore_index
    if not keep.any():
        return 0.0
    ls = log_softmax(x[keep])
    return float(-ls[np.arange(ls.shape[0]), t[keep]].mean())


def embedding(ids, weight):
    return np.asarray(weight, np.float64)[np.asarray(ids)]


def embedding_grad(ids, grad, V):
    """dweight (V, D): grad rows added at their ids."""
    grad = np.asarray(grad, np.float64)
    D = grad.shape[-1]
    dw = np.zeros((V, D))
    np.add.at(dw, np.asarray(ids).reshape(-1), grad.reshape(-1, D))
    return dw


def dropout(x, mask, p):
    """Inverted dropout given the keep mask."""
    return np.where(mask, np.asarray(x, np.float64) / (1.0 - p), 0.0)



# ============================================================== optim
# (area: optimizers, grad norm)


# ============================================================== posenc
# (area: position encodings: rotary, bias tables, relative content, FIRE, CoPE)


# ============================================================== attention
# (area: materialised attention with all channels)
