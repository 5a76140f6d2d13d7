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


# ============================================================== posenc
# (area: absolute and rotary encodings: sinusoidal, complex word order, RoPE + scalings, xPos)


# ============================================================== bias
# (area: bias and relative-content encodings: ALiBi, T5, KERPLE, Sandwich, FIRE, learned, Shaw, XL, DeBERTa, CoPE)


# ============================================================== attention
# (area: materialised attention with all channels)
