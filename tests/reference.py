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


# ============================================================== optim
# (area: optimizers, grad norm)


def sgd_step(param, grad, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             init_buf=False):
    """One SGD step (torch.optim.SGD semantics) in float64; returns (param, buf).

    param, grad, buf: arrays of one shape (buf ignored when momentum == 0).
    """
    p = np.asarray(param, np.float64)
    g = np.asarray(grad, np.float64) + weight_decay * p
    b = None
    if momentum != 0:
        b = g.copy() if init_buf else momentum * np.asarray(buf, np.float64) + (1 - dampening) * g
        g = g + momentum * b if nesterov else b
    return p - lr * g, b


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step (decoupled weight decay, bias-corrected moments) in
    float64; returns (param, m, v). step is 1-based."""
    p = np.asarray(param, np.float64) * (1 - lr * weight_decay)
    g = np.asarray(grad, np.float64)
    m = beta1 * np.asarray(m, np.float64) + (1 - beta1) * g
    v = beta2 * np.asarray(v, np.float64) + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** step)
    vhat = v / (1 - beta2 ** step)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


def grad_norm(arrays):
    """Euclidean norm of every element of a list of arrays, as one vector (float64)."""
    return float(np.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays)))


def warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    """Learning rate at 0-based `step`: linear warmup base*(step+1)/warmup for
    step < warmup, then half a cosine from base (at step = warmup) to min_lr
    (at step = total_steps), min_lr after."""
    import math
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


# ============================================================== posenc
# (area: position encodings: rotary, bias tables, relative content, FIRE, CoPE)


# ============================================================== attention
# (area: materialised attention with all channels)
