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
    D = max(x.shape[-1], 1)  # D == 0: empty rows, no "mean of empty slice"
    mean = x.sum(axis=-1, keepdims=True) / D
    var = ((x - mean) ** 2).sum(axis=-1, keepdims=True) / D
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def rms_norm(x, weight=None, eps=1e-6):
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x * x).sum(axis=-1, keepdims=True) / max(x.shape[-1], 1) + eps)
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
# (area: absolute and rotary encodings: sinusoidal, complex word order, RoPE + scalings, xPos)


# ============================================================== bias
# (area: bias and relative-content encodings: ALiBi, T5, KERPLE, Sandwich, FIRE, learned, Shaw, XL, DeBERTa, CoPE)


# ============================================================== attention
# (area: materialised attention with all channels)


def attention_relidx(ix, R, Tq, Tk, q_offset=0):
    """Relative index table (Tq, Tk) of csrc/attention.h:
    idx[i, j] = clip(sign * ((q_offset + i) - j) + off, 0, R - 1) for ix = (sign, off)."""
    sign, off = ix
    ia = q_offset + np.arange(Tq)[:, None]
    j = np.arange(Tk)[None, :]
    return np.clip(sign * (ia - j) + off, 0, R - 1)


def _attn_heads(table, H):
    """A per-head table with leading dim 1 (shared) or H, as H copies."""
    table = np.asarray(table, dtype=np.float64)
    return np.broadcast_to(table, (H,) + table.shape[1:])


def attention_logits(q, k, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
                     qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
                     bias_vec=None, bias_ix=None, bias_full=None):
    """Logits s (B, H, Tq, Tk) in float64 and the boolean mask (B, 1|H, Tq, Tk)
    of allowed (True) entries, exactly as the comment of csrc/attention.h says:

        s_ij = scale * (q_i·k_j + qr_i·relk[h, idx(relk_ix)] + k_j·relq[h, idx(relq_ix)])
               + bias_vec[h, idx(bias_ix)] + bias_full[b, h, i, j]

    q (B, H, Tq, D), k (B, H, Tk, D); qr defaults to q; tables (1|H, R, D);
    bias_vec (1|H, R); bias_full (1|B, H, Tq, Tk); key_padding_mask (B, Tk) bool,
    True = padding. Masked entries of s are left as computed (not -inf)."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(D) if D > 0 else 1.0
    qq = q if qr is None else np.asarray(qr, dtype=np.float64)
    dot = np.einsum("bhid,bhjd->bhij", q, k)
    if relk is not None:
        tab = _attn_heads(relk, H)
        idx = attention_relidx(relk_ix, tab.shape[1], Tq, Tk, q_offset)
        dot = dot + np.einsum("bhid,hijd->bhij", qq, tab[:, idx, :])
    if relq is not None:
        tab = _attn_heads(relq, H)
        idx = attention_relidx(relq_ix, tab.shape[1], Tq, Tk, q_offset)
        dot = dot + np.einsum("bhjd,hijd->bhij", k, tab[:, idx, :])
    s = scale * dot
    if bias_vec is not None:
        tab = _attn_heads(bias_vec, H)
        idx = attention_relidx(bias_ix, tab.shape[1], Tq, Tk, q_offset)
        s = s + tab[:, idx][None]
    if bias_full is not None:
        s = s + np.asarray(bias_full, dtype=np.float64)
    allowed = np.ones((B, 1, Tq, Tk), dtype=bool)
    if causal:
        ia = q_offset + np.arange(Tq)[:, None]
        allowed = allowed & (np.arange(Tk)[None, :] <= ia)
    if key_padding_mask is not None:
        allowed = allowed & ~np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]
    return s, allowed


def attention(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
              qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
              relv=None, relv_ix=None, bias_vec=None, bias_ix=None, bias_full=None):
    """Materialised attention with all four channels, in float64.

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv); the channel arguments as
    in :func:`attention_logits`, plus relv (1|H, R, Dv) with relv_ix (sign, off).
    Returns (out (B, H, Tq, Dv), lse (B, H, Tq), probs (B, H, Tq, Tk)):
    out_i = Σ_j p_ij (v_j + relv[h, idx(relv_ix)]). A fully masked row has
    out = 0, lse = -inf and probs = 0.
    """
    v = np.asarray(v, dtype=np.float64)
    s, allowed = attention_logits(q, k, causal=causal, key_padding_mask=key_padding_mask,
                                  q_offset=q_offset, scale=scale, qr=qr, relk=relk,
                                  relk_ix=relk_ix, relq=relq, relq_ix=relq_ix,
                                  bias_vec=bias_vec, bias_ix=bias_ix, bias_full=bias_full)
    allowed = np.broadcast_to(allowed, s.shape)
    B, H, Tq, Tk = s.shape
    s = np.where(allowed, s, -np.inf)
    any_row = allowed.any(axis=-1, keepdims=True)
    m = np.where(any_row, np.max(np.where(allowed, s, -np.inf), axis=-1, keepdims=True,
                                 initial=-np.inf), 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, s - m, 0.0)), 0.0)
    z = e.sum(axis=-1, keepdims=True)
    probs = np.where(any_row, e / np.where(any_row, z, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(any_row, m + np.log(np.where(any_row, z, 1.0)), -np.inf)[..., 0]
    out = np.einsum("bhij,bhjd->bhid", probs, v)
    if relv is not None:
        tab = _attn_heads(relv, H)
        idx = attention_relidx(relv_ix, tab.shape[1], Tq, Tk, q_offset)
        out = out + np.einsum("bhij,hijd->bhid", probs, tab[:, idx, :])
    return out, lse, probs
