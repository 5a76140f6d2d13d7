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


def gemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    """alpha * op(a) @ op(b) + beta * c in float64 (c read only if beta != 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    opa = np.swapaxes(a, -1, -2) if trans_a else a
    opb = np.swapaxes(b, -1, -2) if trans_b else b
    out = alpha * np.matmul(opa, opb)
    if beta != 0.0:
        out = out + beta * np.asarray(c, np.float64)
    return out


def matmul(a, b):
    """a @ b in float64 (2-D, equal batch dims, or (..., M, K) @ (K, N))."""
    return np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))


def linear(x, w, b=None):
    """x (..., in) @ w (out, in).T + b (out,) in float64."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def colsum(x):
    """Column sums of x (M, N) -> (N,) in float64."""
    return np.asarray(x, np.float64).sum(axis=0)


# ============================================================== ops
# (area: elementwise, activations, norms, softmax, cross-entropy, embedding, dropout)

def binary(op, a, b):
    """add/sub/mul/div with NumPy broadcasting, float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[op]


def gelu_tanh(x):
    """0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as
    x * sigmoid(2u) (the same function, without the cancellation of
    1 + tanh(u) in the negative tail). gelu(-inf) = nan, gelu(+inf) = inf (as torch)."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
        return x / (1.0 + np.exp(-2.0 * u))


def gelu_erf(x):
    """x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2 (accurate in the negative tail).
    gelu(-inf) = nan, gelu(+inf) = inf (as torch)."""
    from math import erfc
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        return x * 0.5 * np.vectorize(erfc, otypes=[np.float64])(-x / np.sqrt(2.0))


def relu(x):
    """max(x, 0); relu(nan) = nan (np.maximum propagates NaN, as torch)."""
    return np.maximum(np.asarray(x, np.float64), 0.0)


def silu(x):
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        return x / (1.0 + np.exp(-x))


def _sigmoid(t):
    with np.errstate(all="ignore"):
        return 1.0 / (1.0 + np.exp(-t))


def relu_grad(x, grad):
    """grad where x > 0, 0 where x <= 0; NaN x passes grad through (torch's
    threshold_backward tests `x <= 0`, false for NaN)."""
    x = np.asarray(x, np.float64)
    return np.where(x <= 0, 0.0, np.asarray(grad, np.float64))


def gelu_tanh_grad(x, grad):
    """grad * d/dx [x sigmoid(2u)] = grad * (s + 2 x s (1 - s) u'), with
    1 - s = sigmoid(-2u) (no cancellation). NaN at x = +-inf (inf * 0), as torch."""
    x = np.asarray(x, np.float64)
    k, c = np.sqrt(2.0 / np.pi), 0.044715
    with np.errstate(all="ignore"):
        u = k * (x + c * x ** 3)
        s, sm = _sigmoid(2.0 * u), _sigmoid(-2.0 * u)
        du = k * (1.0 + 3.0 * c * x * x)
        return np.asarray(grad, np.float64) * (s + 2.0 * x * (s * sm) * du)


def gelu_erf_grad(x, grad):
    """grad * (Phi(x) + x phi(x)); NaN at x = +-inf (inf * 0), as torch."""
    from math import erfc
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        cdf = 0.5 * np.vectorize(erfc, otypes=[np.float64])(-x / np.sqrt(2.0))
        pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
        return np.asarray(grad, np.float64) * (cdf + x * pdf)


def silu_grad(x, grad):
    """grad * s (1 + x (1 - s)), s = sigmoid(x), 1 - s = sigmoid(-x); NaN at +-inf, as torch."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        s, sm = _sigmoid(x), _sigmoid(-x)
        return np.asarray(grad, np.float64) * (s + x * s * sm)


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


def layer_norm_grad(x, weight, mean, rstd, grad):
    """LayerNorm backward from the saved statistics (x, grad (N, D); weight (D,)
    or None; mean, rstd (N,)): h = (x - mean) rstd, gw = grad weight,
    dx = rstd (gw - mean(gw) - h mean(gw h)), dweight = sum_rows grad h,
    dbias = sum_rows grad. Returns (dx, dweight, dbias), float64."""
    x, g = np.asarray(x, np.float64), np.asarray(grad, np.float64)
    w = np.ones(x.shape[-1]) if weight is None else np.asarray(weight, np.float64)
    m, r = np.asarray(mean, np.float64)[..., None], np.asarray(rstd, np.float64)[..., None]
    with np.errstate(all="ignore"):
        h = (x - m) * r
        gw = g * w
        D = max(x.shape[-1], 1)
        dx = r * (gw - gw.sum(-1, keepdims=True) / D - h * (gw * h).sum(-1, keepdims=True) / D)
        lead = tuple(range(x.ndim - 1))
        return dx, (g * h).sum(axis=lead), g.sum(axis=lead)


def rms_norm_grad(x, weight, rstd, grad):
    """RMSNorm backward from the saved rstd: h = x rstd, gw = grad weight,
    dx = rstd (gw - h mean(gw h)), dweight = sum_rows grad h. Returns (dx, dweight)."""
    x, g = np.asarray(x, np.float64), np.asarray(grad, np.float64)
    w = np.ones(x.shape[-1]) if weight is None else np.asarray(weight, np.float64)
    r = np.asarray(rstd, np.float64)[..., None]
    with np.errstate(all="ignore"):
        h = x * r
        gw = g * w
        dx = r * (gw - h * (gw * h).sum(-1, keepdims=True) / max(x.shape[-1], 1))
        return dx, (g * h).sum(axis=tuple(range(x.ndim - 1)))


def softmax_grad(y, grad):
    """dx = y (grad - sum(grad y)) over the last axis, from the saved output y."""
    y, g = np.asarray(y, np.float64), np.asarray(grad, np.float64)
    with np.errstate(all="ignore"):
        return y * (g - (g * y).sum(-1, keepdims=True))


def log_softmax_grad(y, grad):
    """dx = grad - exp(y) sum(grad) over the last axis, from the saved output y."""
    y, g = np.asarray(y, np.float64), np.asarray(grad, np.float64)
    with np.errstate(all="ignore"):
        return g - np.exp(y) * g.sum(-1, keepdims=True)


def cross_entropy_rows(logits, targets, ignore_index=-100):
    """(loss, lse (N,), count) of the fused kernel: lse = logsumexp of each
    counted row (0 for ignored rows), loss = mean over counted rows of
    lse - logits[target] (0 when none). A NaN, a +inf or an all -inf counted
    row gives NaN (log_softmax's semantics in torch)."""
    x = np.asarray(logits, np.float64)
    t = np.asarray(targets)
    keep = t != ignore_index
    lse = np.zeros(x.shape[0])
    with np.errstate(all="ignore"):
        m = x.max(axis=-1, initial=-np.inf) if x.shape[-1] else np.full(x.shape[0], -np.inf)
        ls = np.log(np.exp(x - m[:, None]).sum(-1))
        rows = np.flatnonzero(keep)
        lse[rows] = (m + ls)[rows]
        row_loss = (m[rows] - x[rows, t[rows]]) + ls[rows] if rows.size else np.zeros(0)
    loss = float(row_loss.mean()) if rows.size else 0.0
    return loss, lse, int(rows.size)


def cross_entropy_grad(logits, targets, dloss, count, ignore_index=-100):
    """dlogits (N, V) = (softmax(logits) - onehot(target)) * dloss / count on
    counted rows, 0 on ignored rows and when count == 0."""
    x = np.asarray(logits, np.float64)
    t = np.asarray(targets)
    out = np.zeros_like(x)
    if count == 0:
        return out
    scale = float(np.float32(dloss)) / count
    with np.errstate(all="ignore"):
        for r in np.flatnonzero(t != ignore_index):
            p = softmax(x[r])
            p[t[r]] -= 1.0
            out[r] = p * scale
    return out


def binary_grads(op, a, b, grad):
    """Elementwise partial derivatives times grad of out = op(a, b), in
    torch's forms (div: da = g / b, db = -g ((a / b) / b)); rsub is b - a,
    rdiv b / a. a, b, grad broadcast; returns (da, db) before any reduction."""
    a, b, g = (np.asarray(v, np.float64) for v in (a, b, grad))
    with np.errstate(all="ignore"):
        if op in ("rsub", "rdiv"):
            db, da = binary_grads(op[1:], b, a, g)
            return da, db
        full = np.broadcast_shapes(a.shape, b.shape, g.shape)
        if op == "add":
            return np.broadcast_to(g, full).copy(), np.broadcast_to(g, full).copy()
        if op == "sub":
            return np.broadcast_to(g, full).copy(), np.broadcast_to(-g, full).copy()
        if op == "mul":
            return g * b, g * a
        return g / b, -g * ((a / b) / b)


def embedding(ids, weight):
    return np.asarray(weight, np.float64)[np.asarray(ids)]


def embedding_grad(ids, grad, V):
    """dweight (V, D): grad rows added at their ids."""
    grad = np.asarray(grad, np.float64)
    D = grad.shape[-1]
    dw = np.zeros((V, D))
    ids = np.asarray(ids).reshape(-1)
    np.add.at(dw, ids, grad.reshape(ids.size, D))
    return dw


def dropout(x, mask, p):
    """Inverted dropout given the keep mask: x * mask / (1 - p), a product
    (as torch), so a dropped NaN or inf gives NaN."""
    with np.errstate(all="ignore"):
        return np.asarray(x, np.float64) * np.where(mask, np.float32(1.0) / np.float32(1.0 - np.float32(p)), 0.0)


def dropout_mask(n, p, seed):
    """The keep mask (n,) of csrc/core/dropout.c, from its definition: element i
    is kept when u >= ceil(p 2^32), u the low (even i) or high (odd i) 32 bits of
    SplitMix64's mix of key + (i // 2 + 1) * golden, key = mix(seed ^ 0x6A09E667F3BCC909)."""
    M = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    import math
    key = mix((seed ^ 0x6A09E667F3BCC909) & M)
    thr = math.ceil(float(np.float32(p)) * 4294967296.0)
    out = np.zeros(n, bool)
    for i in range(n):
        h = mix((key + (i // 2 + 1) * 0x9E3779B97F4A7C15) & M)
        out[i] = ((h >> 32) if i & 1 else (h & 0xFFFFFFFF)) >= thr
    return out


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
# (area: absolute and rotary encodings: sinusoidal, complex word order, RoPE + scalings, xPos)


def rope_pairs(rotary_dim, layout):
    """List of channel pairs (a, b) that rotate together, pair k first."""
    P = rotary_dim // 2
    if layout == "interleaved":
        return [(2 * k, 2 * k + 1) for k in range(P)]
    if layout == "half":
        return [(k, k + P) for k in range(P)]
    raise ValueError(layout)


def rope_inv_freq_paper(rotary_dim, base=10000.0, scaling=None, s=1.0, L=None, alpha=1.0, beta=32.0,
                        low=1.0, high=4.0, seq_len=None, short=None, long=None):
    """θ_k from the papers' formulas, one pair at a time (float64 list -> array).

    RoFormer θ_k = base^(-2k/d); NTK-aware base' = base·s^(d/(d-2));
    dynamic NTK (emozilla 2023, as HF): L' = max(seq_len, L), base' = base·(s·L'/L − (s−1))^(d/(d−2));
    YaRN (Peng et al. 2024 §3.2): λ_k = 2π/θ_k, r = L/λ_k,
    γ = 0 if r < α, 1 if r > β, else (r-α)/(β-α); h(θ) = (1-γ)·θ/s + γ·θ;
    Llama 3.1 (Meta's apply_scaling): λ_k < L/high: θ; λ_k > L/low: θ/s; else with
    g = (L/λ_k − low)/(high − low): (1−g)·θ/s + g·θ;
    LongRoPE (Phi-3): θ_k / long[k] if seq_len > L else θ_k / short[k].
    """
    d = rotary_dim
    if scaling == "ntk":
        base = base * s ** (d / (d - 2))
    if scaling == "dynamic":
        Lc = max(seq_len if seq_len is not None else L, L)
        base = base * (s * Lc / L - (s - 1)) ** (d / (d - 2))
    out = []
    for k in range(d // 2):
        theta = base ** (-2.0 * k / d)
        wavelength = 2 * np.pi / theta
        if scaling == "yarn":
            r = L / wavelength
            if r < alpha:
                gamma = 0.0
            elif r > beta:
                gamma = 1.0
            else:
                gamma = (r - alpha) / (beta - alpha)
            theta = (1 - gamma) * theta / s + gamma * theta
        elif scaling == "llama3":
            if wavelength < L / high:
                pass
            elif wavelength > L / low:
                theta = theta / s
            else:
                g = (L / wavelength - low) / (high - low)
                theta = (1 - g) * theta / s + g * theta
        elif scaling == "longrope":
            theta = theta / (long[k] if seq_len is not None and seq_len > L else short[k])
        out.append(theta)
    return np.array(out, dtype=np.float64)


def rotary(x, angles, rotary_dim, layout, scale=None):
    """Rotary transform in float64. x (..., T, D); angles, scale (T, rotary_dim/2).

    Each pair (a, b) of a row is treated as the complex number x_a + i·x_b and
    multiplied by scale·exp(i·angle); the other channels are copied.
    """
    x = np.asarray(x, dtype=np.float64)
    y = x.copy()
    T = x.shape[-2]
    for k, (a, b) in enumerate(rope_pairs(rotary_dim, layout)):
        for t in range(T):
            z = x[..., t, a] + 1j * x[..., t, b]
            z = z * np.exp(1j * angles[t, k])
            if scale is not None:
                z = z * scale[t, k]
            y[..., t, a] = z.real
            y[..., t, b] = z.imag
    return y


def xpos_scale(positions, rotary_dim, center=0.0, gamma=0.4, scale_base=512.0, inverse=False, max_log=None):
    """xPos ζ_k^((p - c)/B) (keys: the reciprocal), (T, rotary_dim/2) float64.
    max_log: clamp the exponent's log, exp(clip((p - c)/B log ζ_k, -max_log, max_log))
    (the kernel's RP_XPOS_MAX_LOG = 80); None: no clamping."""
    d = rotary_dim
    with np.errstate(all="ignore"):
        zeta = np.array([(2.0 * k / d + gamma) / (1 + gamma) for k in range(d // 2)])
        expo = (np.asarray(positions, dtype=np.float64)[:, None] - center) / scale_base
        if inverse:
            expo = -expo
        if max_log is None:
            return zeta[None, :] ** expo
        return np.exp(np.clip(expo * np.log(zeta)[None, :], -max_log, max_log))


def rope_tables(inv_freq, T, offset=0, pos_scale=1.0):
    """(cos, sin) (T, P) of angles (offset + t) * pos_scale * inv_freq[k] in
    float64 (libm's cos/sin through math, NaN for a non-finite angle)."""
    import math
    inv = np.asarray(inv_freq, np.float64)
    ang = np.array([[(float(offset + t) * pos_scale) * f for f in inv] for t in range(T)]).reshape(T, inv.size)
    fin = np.isfinite(ang)
    safe = np.where(fin, ang, 0.0)
    c = np.where(fin, np.vectorize(math.cos, otypes=[np.float64])(safe), np.nan) if ang.size else ang
    s = np.where(fin, np.vectorize(math.sin, otypes=[np.float64])(safe), np.nan) if ang.size else ang
    return c, s


def sinusoidal(positions, d_model, layout="interleaved", base=10000.0):
    """Vaswani et al. table (T, d_model) float64, written per element."""
    pos = np.asarray(positions, dtype=np.float64)
    out = np.zeros((len(pos), d_model))
    half = d_model // 2
    for t, p in enumerate(pos):
        for k in range(half):
            angle = p / base ** (2.0 * k / d_model)
            if layout == "interleaved":
                out[t, 2 * k], out[t, 2 * k + 1] = np.sin(angle), np.cos(angle)
            else:
                out[t, k], out[t, half + k] = np.sin(angle), np.cos(angle)
    return out


def complex_embed(ids, positions, r, omega, theta):
    """Wang et al. 2020: ids (B, T), positions (T,), tables (V, d) -> (B, T, 2d) =
    [r cos(phase) | r sin(phase)], phase = omega pos + theta (real products, so
    inf and NaN follow IEEE as in the kernel, not complex multiplication)."""
    ids = np.asarray(ids)
    pos = np.asarray(positions, dtype=np.float64)
    r, omega, theta = (np.asarray(a, dtype=np.float64) for a in (r, omega, theta))
    with np.errstate(all="ignore"):
        ph = omega[ids] * pos[None, :, None] + theta[ids]
        return np.concatenate([r[ids] * np.cos(ph), r[ids] * np.sin(ph)], axis=-1)


def complex_embed_grad(ids, positions, r, omega, theta, grad):
    """(dr, domega, dtheta) (V, d) of complex_embed for grad (B, T, 2d) = [g_re | g_im]:
    dphase = r (g_im cos - g_re sin); dr = g_re cos + g_im sin; dtheta = dphase;
    domega = dphase pos; scattered over ids."""
    ids = np.asarray(ids)
    pos = np.asarray(positions, dtype=np.float64)
    r, omega, theta = (np.asarray(a, dtype=np.float64) for a in (r, omega, theta))
    g = np.asarray(grad, np.float64)
    d = r.shape[1]
    gre, gim = g[..., :d], g[..., d:]
    with np.errstate(all="ignore"):
        ph = omega[ids] * pos[None, :, None] + theta[ids]
        c, s = np.cos(ph), np.sin(ph)
        dph = r[ids] * (gim * c - gre * s)
        outs = [np.zeros_like(r) for _ in range(3)]
        for o, v in zip(outs, (gre * c + gim * s, dph * pos[None, :, None], dph)):
            np.add.at(o, ids.reshape(-1), v.reshape(ids.size, d))
    return tuple(outs)


# ============================================================== bias
# (area: bias and relative-content encodings: ALiBi, T5, KERPLE, Sandwich, FIRE, learned, Shaw, XL, DeBERTa, CoPE)
#
# Toeplitz twins return (H, n) with column t holding distance d = d0 + t
# (d = query position - key position); toeplitz_matrix spreads such a vector
# over a (Tq, Tk) window whose queries start at q_offset.


def distances(Tq, Tk, q_offset=0):
    """(Tq, Tk) int matrix of i_abs - j."""
    return (q_offset + np.arange(Tq))[:, None] - np.arange(Tk)[None, :]


def toeplitz_matrix(vec, Tq, Tk, q_offset=0):
    """vec (H, Tq+Tk-1) over d = q_offset-(Tk-1) ... -> (H, Tq, Tk)."""
    d = distances(Tq, Tk, q_offset)
    return np.asarray(vec, dtype=np.float64)[:, d - (q_offset - (Tk - 1))]


def alibi_slopes_ref(H):
    """ALiBi slopes (Press et al.): power-of-two rule, else slopes(c) + slopes(2c)[0::2][:H-c]."""
    def pow2(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    c = 2 ** int(np.floor(np.log2(H)))
    if c == H:
        return np.array(pow2(H))
    return np.array(pow2(c) + pow2(2 * c)[0::2][:H - c])


def alibi_vec(slopes, d0, n, symmetric=False):
    d = d0 + np.arange(n)
    f = np.abs(d) if symmetric else np.maximum(d, 0)
    return -np.asarray(slopes, dtype=np.float64)[:, None] * f[None, :]


def t5_bucket_ref(rel, num_buckets=32, max_distance=128, bidirectional=True):
    """T5 relative bucket of rel = j - i, element by element, as in ENCODINGS.md."""
    rel = np.asarray(rel)
    out = np.zeros(rel.shape, dtype=np.int64)
    for idx, r in np.ndenumerate(rel):
        r = int(r)
        nb, ret = num_buckets, 0
        if bidirectional:
            nb //= 2
            ret += nb if r > 0 else 0
            n = abs(r)
        else:
            n = max(-r, 0)
        max_exact = nb // 2
        if n < max_exact:
            out[idx] = ret + n
        else:
            v = max_exact + int(np.log(n / max_exact) / np.log(max_distance / max_exact) * (nb - max_exact))
            out[idx] = ret + min(nb - 1, v)
    return out


def t5_vec(table, d0, n, max_distance=128, bidirectional=True):
    table = np.asarray(table, dtype=np.float64)
    b = t5_bucket_ref(-(d0 + np.arange(n)), table.shape[1], max_distance, bidirectional)
    return table[:, b]


def kerple_vec(r1, r2, d0, n, variant="log"):
    a = np.abs(d0 + np.arange(n)).astype(np.float64)[None, :]
    r1 = np.asarray(r1, dtype=np.float64)[:, None]
    r2 = np.asarray(r2, dtype=np.float64)[:, None]
    if variant == "log":
        return -r1 * np.log(1.0 + r2 * a)
    with np.errstate(divide="ignore"):
        return np.where(a == 0, 0.0, -r1 * a ** r2)


def sandwich_vec(scales, d0, n, dim=128, first=0):
    return sandwich_at(scales, d0 + np.arange(n), dim, first)


def sandwich_at(scales, d, dim=128, first=0):
    """Sandwich bias at the distances d (n,) -> (H, n): scales[h] sum_{k=first}^{first+dim/2-1}
    cos(d 10000^(-2k/dim)); first=0 the paper's frequencies, first=1 NeMo's."""
    d = np.asarray(d).astype(np.float64)
    w = 10000.0 ** (-2.0 * (first + np.arange(dim // 2)) / dim)
    prof = np.cos(d[:, None] * w[None, :]).sum(axis=1)
    return np.asarray(scales, dtype=np.float64)[:, None] * prof[None, :]


def fire_bias(W1, b1, W2, b2, c, L, Tq, Tk, q_offset=0, eps=1e-6):
    """FIRE (Li et al. 2024) -> (1, H, Tq, Tk), 0 above the causal diagonal:
    b_h(i, j) = W2[h] . relu(W1 x + b1) + b2[h], x = psi(i - j) / (psi(max(|L|, i)) + eps),
    psi(t) = log(|c| t + 1).

    Non-finite MLP weights follow relpos's documented convention rather than
    IEEE arithmetic through the MLP (where an infinite weight gives inf or
    inf * 0 = NaN depending on which units are active): a NaN or infinite
    value in W1 or b1 makes every bias NaN, one in W2[h] makes head h NaN;
    b2, c and L go through the formula as they are."""
    W1, b1, W2, b2 = (np.asarray(a, dtype=np.float64) for a in (W1, b1, W2, b2))
    c = abs(float(np.ravel(c)[0]))
    L = abs(float(np.ravel(L)[0]))
    H = W2.shape[0]
    out = np.zeros((1, H, Tq, Tk))
    poison = np.where(np.isfinite(W2).all(axis=1), 0.0, np.nan)
    if not (np.isfinite(W1).all() and np.isfinite(b1).all()):
        poison[:] = np.nan
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for i in range(Tq):
            ia = q_offset + i
            pn = np.log(c * np.maximum(ia, L) + 1.0) + eps  # a NaN L propagates
            for j in range(min(ia + 1, Tk)):
                x = np.log(c * (ia - j) + 1.0) / pn
                hid = np.maximum(W1 * x + b1, 0.0)  # NaN stays NaN
                out[0, :, i, j] = W2 @ hid + b2 + poison
    return out


def fire_bias_param(params, Tq, Tk, q_offset=0, eps=1e-6):
    """fire_bias from a dict W1, b1, W2, b2, c, L (for finite differences)."""
    return fire_bias(params["W1"], params["b1"], params["W2"], params["b2"], params["c"], params["L"],
                     Tq, Tk, q_offset, eps)


def _cope_row(qi, kb, e, jmax, scale):
    """Gates (jmax+1), suffix positions (jmax+1) and z = e q (P) of one CoPE row."""
    with np.errstate(all="ignore"):
        gates = np.array([1.0 / (1.0 + np.exp(-scale * np.sum(qi * kb[t]))) for t in range(jmax + 1)])
        pos = np.cumsum(gates[::-1])[::-1]
        z = np.sum(e * qi[None, :], axis=1)
    return gates, pos, z


def _cope_interp(p, top):
    """floor, ceil, weight of the clamped position p (NaN: indices 0, weight NaN)."""
    pc = np.minimum(p, top)
    if np.isnan(pc):
        return 0, 0, np.nan
    fl = int(np.floor(pc))
    return fl, int(np.ceil(pc)), pc - fl


def cope_bias(q, k, e, q_offset=0, scale=1.0):
    """CoPE (Golovneva et al. 2024) extra logits (B, H, Tq, Tk), causal, 0 above the diagonal.
    A NaN position (a NaN gate) gives NaN; z[p] = q.e[p] is gathered, so a NaN in an
    unused row of e does not reach the output."""
    q, k, e = (np.asarray(a, dtype=np.float64) for a in (q, k, e))
    B, H, Tq, D = q.shape
    Tk, P = k.shape[2], e.shape[0]
    out = np.zeros((B, H, Tq, Tk))
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                jmax = min(q_offset + i, Tk - 1)
                if jmax < 0:
                    continue
                _, pos, z = _cope_row(q[b, h, i], k[b, h], e, jmax, scale)
                for j in range(jmax + 1):
                    fl, ce, w = _cope_interp(pos[j], P - 1)
                    with np.errstate(all="ignore"):
                        out[b, h, i, j] = z[fl] * (1 - w) + z[ce] * w
    return out


def cope_grad(q, k, e, grad, q_offset=0, scale=1.0):
    """(dq, dk, de) of cope_bias for grad (B, H, Tq, Tk), by the chain rule with
    dense sums, as an autograd framework forms them: dq_i = sum_{t <= jmax} ds_t k_t
    + sum over all p of dz_p e_p, dk_t = sum_i ds_it q_i, de_p = sum_i dz_ip q_i
    (so 0 * inf = NaN reaches them). d out / d pos = z[ceil] - z[floor] below the
    clamp, 0 at or above it, NaN for a NaN position; ds_t = (sum_{j <= t} dpos_j)
    g_t (1 - g_t) scale."""
    q, k, e, G = (np.asarray(a, dtype=np.float64) for a in (q, k, e, grad))
    B, H, Tq, D = q.shape
    Tk, P = k.shape[2], e.shape[0]
    dq, dk, de = np.zeros_like(q), np.zeros_like(k), np.zeros_like(e)
    with np.errstate(all="ignore"):
        for b in range(B):
            for h in range(H):
                for i in range(Tq):
                    jmax = min(q_offset + i, Tk - 1)
                    if jmax < 0:
                        continue
                    qi = q[b, h, i]
                    gates, pos, z = _cope_row(qi, k[b, h], e, jmax, scale)
                    dz = np.zeros(P)
                    dp = np.zeros(jmax + 1)
                    for j in range(jmax + 1):
                        fl, ce, w = _cope_interp(pos[j], P - 1)
                        Gj = G[b, h, i, j]
                        dz[fl] += Gj * (1 - w)
                        dz[ce] += Gj * w
                        dp[j] = np.nan if np.isnan(w) else (0.0 if pos[j] > P - 1 else Gj * (z[ce] - z[fl]))
                    ds = np.cumsum(dp) * gates * (1 - gates) * scale
                    dq[b, h, i] = np.sum(ds[:, None] * k[b, h, :jmax + 1], 0) + np.sum(dz[:, None] * e, 0)
                    dk[b, h, :jmax + 1] += ds[:, None] * qi[None, :]
                    de += dz[:, None] * qi[None, :]
    return dq, dk, de


def relidx(sign, off, R, Tq, Tk, q_offset=0):
    """(Tq, Tk) table index clamp(sign*(i_abs - j) + off, 0, R-1) (attention.h)."""
    return np.clip(sign * distances(Tq, Tk, q_offset) + off, 0, R - 1)


def softmax_attention(logits, v, causal=True, q_offset=0, key_padding_mask=None, extra_v=None):
    """Plain softmax attention over materialised logits (B, H, Tq, Tk), v (B, H, Tk, Dv).

    extra_v (B or 1, H or 1, Tq, Tk, Dv): a per-pair value term (Shaw's a^V)."""
    logits = np.array(logits, dtype=np.float64, copy=True)
    B, H, Tq, Tk = logits.shape
    mask = np.zeros((B, 1, Tq, Tk), dtype=bool)
    if causal:
        mask |= (distances(Tq, Tk, q_offset) < 0)[None, None]
    if key_padding_mask is not None:
        mask |= np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]
    logits = np.where(mask, -np.inf, logits)
    m = logits.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(logits - m)
    s = p.sum(axis=-1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 0.0)
    out = p @ np.asarray(v, dtype=np.float64)
    if extra_v is not None:
        out = out + np.einsum("bhij,bhijd->bhid", p, np.broadcast_to(extra_v, (B, H, Tq, Tk, extra_v.shape[-1])))
    return out, p


def shaw_logits(q, k, wK, clip, scale, q_offset=0):
    """Shaw et al. 2018: scale * q_i.(k_j + wK[clip(j - i, -k, k) + k]); wK (2k+1, D)."""
    Tq, Tk = q.shape[2], k.shape[2]
    rel = np.clip(-distances(Tq, Tk, q_offset), -clip, clip) + clip
    aK = np.asarray(wK, dtype=np.float64)[rel]                     # (Tq, Tk, D)
    return scale * (q @ np.swapaxes(k, -1, -2) + np.einsum("bhid,ijd->bhij", q, aK))


def shaw_values(wV, clip, Tq, Tk, q_offset=0):
    rel = np.clip(-distances(Tq, Tk, q_offset), -clip, clip) + clip
    return np.asarray(wV, dtype=np.float64)[rel][None, None]      # (1, 1, Tq, Tk, D)


def sinusoid_R(dist, dim):
    """Transformer-XL relative sinusoids [sin, cos] of distances dist (n,) -> (n, dim)."""
    inv = 1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)
    a = np.asarray(dist, dtype=np.float64)[:, None] * inv[None, :]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def xl_logits(q, k, W_R, u, v, scale, q_offset=0):
    """Transformer-XL: scale * [(q_i + u).k_j + (q_i + v).(W_R R_{i-j})]; W_R (H, dR, D), u, v (H, D)."""
    Tq, Tk = q.shape[2], k.shape[2]
    d = distances(Tq, Tk, q_offset)
    R = sinusoid_R(d.ravel(), W_R.shape[1]).reshape(Tq, Tk, -1)
    rk = np.einsum("ije,hed->hijd", R, W_R)                          # (H, Tq, Tk, D)
    c = (q + u[None, :, None, :]) @ np.swapaxes(k, -1, -2)
    p = np.einsum("bhid,hijd->bhij", q + v[None, :, None, :], rk)
    return scale * (c + p)


def deberta_log_bucket_ref(d, bucket_size, max_position):
    """DeBERTa-v2 log bucket of one distance d (an int), one case at a time:
    |d| <= mid keeps d; else sign(d)·(mid + ceil(log(|d|/mid)/log((max_position-1)/mid)·(mid-1))),
    mid = bucket_size // 2."""
    mid = bucket_size // 2
    if abs(d) <= mid:
        return d
    sign = 1 if d > 0 else -1
    return sign * (mid + int(np.ceil(np.log(abs(d) / mid) / np.log((max_position - 1) / mid) * (mid - 1))))


def deberta_logits(q, k, P, W_kr, W_qr, clip, q_offset=0, p2c="official", buckets=None, max_position=None):
    """DeBERTa (He et al. 2021): [Qc.Kc + Qc.Kr[δ(i,j)] + Kc.Qr[δ']] / sqrt(3D),
    δ(i, j) = clip(i - j, -k, k-1) + k; δ' = δ(i, j) for p2c="official" (Microsoft/HF code),
    δ(j, i) for p2c="paper" (eq. 4 as written). With buckets (DeBERTa-v2), i - j is first
    mapped by deberta_log_bucket_ref and k = buckets. P (2k, dP), W_kr, W_qr (H, dP, D)."""
    D = q.shape[-1]
    Tq, Tk = q.shape[2], k.shape[2]
    d = distances(Tq, Tk, q_offset)
    if buckets is not None:
        clip = buckets
        bucket = np.vectorize(lambda x: deberta_log_bucket_ref(int(x), buckets, max_position))
        bd, bmd = bucket(d), bucket(-d)
    else:
        bd, bmd = d, -d
    c2p_ix = np.clip(bd, -clip, clip - 1) + clip
    p2c_ix = c2p_ix if p2c == "official" else np.clip(bmd, -clip, clip - 1) + clip
    Kr = np.einsum("re,hed->hrd", P, W_kr)
    Qr = np.einsum("re,hed->hrd", P, W_qr)
    h = np.arange(q.shape[1])[:, None, None]
    c2p = np.einsum("bhid,hijd->bhij", q, Kr[h, c2p_ix[None]])
    p2c = np.einsum("bhjd,hijd->bhij", k, Qr[h, p2c_ix[None]])
    return (q @ np.swapaxes(k, -1, -2) + c2p + p2c) / np.sqrt(3.0 * D)


def channel_logits(q, k, inputs, q_offset=0, scale=None):
    """Materialise the logits an attention_core call would form from an
    encoding's channel inputs (float64, no mask), following csrc/core/attention.h:
    scale*(q'.k' + qr.relk[idx] + k'.relq[idx]) + bias_vec[idx] + bias_full.
    inputs: dict of ndarrays / (sign, off) tuples; "q", "k" replace the content q, k."""
    f = lambda a: None if a is None else np.asarray(getattr(a, "data", a), dtype=np.float64)
    q = f(q)
    k = f(k)
    qc = f(inputs.get("q", q))
    kc = f(inputs.get("k", k))
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    scale = inputs.get("scale", scale if scale is not None else 1.0 / np.sqrt(D))
    s = qc @ np.swapaxes(kc, -1, -2)
    if inputs.get("relk") is not None:
        t = f(inputs["relk"])
        ix = relidx(*inputs["relk_ix"], t.shape[1], Tq, Tk, q_offset)
        qr = f(inputs.get("qr", qc))
        s = s + np.einsum("bhid,hijd->bhij", qr, np.broadcast_to(t, (H,) + t.shape[1:])[:, ix])
    if inputs.get("relq") is not None:
        t = f(inputs["relq"])
        ix = relidx(*inputs["relq_ix"], t.shape[1], Tq, Tk, q_offset)
        s = s + np.einsum("bhjd,hijd->bhij", kc, np.broadcast_to(t, (H,) + t.shape[1:])[:, ix])
    s = scale * s
    if inputs.get("bias_vec") is not None:
        t = f(inputs["bias_vec"])
        ix = relidx(*inputs["bias_ix"], t.shape[1], Tq, Tk, q_offset)
        s = s + np.broadcast_to(t, (H, t.shape[1]))[:, ix][None]
    if inputs.get("bias_full") is not None:
        s = s + f(inputs["bias_full"])
    return s


# ============================================================== attention
# (area: materialised attention with all channels)


def attention_relidx(ix, R, Tq, Tk, q_offset=0):
    """Relative index table (Tq, Tk) of csrc/core/attention.h:
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
                     bias_vec=None, bias_ix=None, bias_full=None, pwl=None, **pwl_kw):
    """Logits s (B, H, Tq, Tk) in float64 and the boolean mask (B, 1|H, Tq, Tk)
    of allowed (True) entries, exactly as the comment of csrc/core/attention.h says:

        s_ij = scale * (q_i·k_j + qr_i·relk[h, idx(relk_ix)] + k_j·relq[h, idx(relq_ix)])
               + bias_vec[h, idx(bias_ix)] + bias_full[b, h, i, j]

    q (B, H, Tq, D), k (B, H, Tk, D); qr defaults to q; tables (1|H, R, D);
    bias_vec (1|H, R); bias_full (1|B, H, Tq, Tk); key_padding_mask (B, Tk) bool,
    True = padding; pwl: the piecewise-linear channel, a dict (see
    :func:`pwl_logits`), or the _C keywords pwl_u, pwl_ix, pwl_w, pwl_bp,
    pwl_slope, pwl_icpt. Masked entries of s are left as computed (not -inf)."""
    pwl = _pwl_dict(pwl, pwl_kw)
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
    if pwl is not None:
        s = s + pwl_logits(pwl, H, Tq, Tk, q_offset)[0][None]
    allowed = np.ones((B, 1, Tq, Tk), dtype=bool)
    if causal:
        ia = q_offset + np.arange(Tq)[:, None]
        allowed = allowed & (np.arange(Tk)[None, :] <= ia)
    if key_padding_mask is not None:
        allowed = allowed & ~np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]
    return s, allowed


def _round32(x):
    """x rounded to float32 and back (float32 overflow -> inf, underflow -> 0)."""
    with np.errstate(over="ignore", under="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def _present_sum(w, x, present):
    """out[..., i, :] = sum over keys j with present[..., i, j] of w[..., i, j] * x[..., i, j, :].

    Every present pair is multiplied, so a zero weight times a NaN / inf gives
    NaN (as in torch); absent (masked) pairs take no part at all."""
    prod = w[..., None] * x
    return np.where(present[..., None], prod, 0.0).sum(axis=-2)


def softmax_rows(s, present, f32=False):
    """The softmax of attention rows with relpos's (and torch's) rules for
    non-finite logits. s, present (..., Tk): logits and the keys that are not
    masked (causal / padding). Returns (p, lse, kind) with kind per row:
    0 = normal, 1 = empty (no present key, or every present logit -inf:
    p = 0, lse = -inf, no gradient), 2 = NaN (a present logit is NaN or +inf:
    p = NaN on present keys, lse = NaN). f32 rounds the logits and the weights
    to float32 as the kernels hold them."""
    s = np.asarray(s, dtype=np.float64)
    if f32:
        s = _round32(s)
    sp = np.where(present, s, -np.inf)
    with np.errstate(invalid="ignore"):
        nan_row = (present & (np.isnan(s) | (s == np.inf))).any(axis=-1)
        m = np.max(np.where(np.isnan(sp), -np.inf, sp), axis=-1, initial=-np.inf)
    empty = ~nan_row & (m == -np.inf)
    kind = np.where(nan_row, 2, np.where(empty, 1, 0))
    mm = np.where(kind == 0, m, 0.0)[..., None]
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        e = np.where(present & (kind == 0)[..., None], np.exp(sp - mm), 0.0)
        z = e.sum(axis=-1)
        p = e / np.where(kind == 0, z, 1.0)[..., None]
        if f32:
            p = _round32(p)
        p = np.where((kind == 2)[..., None] & present, np.nan, p)
        with np.errstate(divide="ignore"):
            lse = np.where(kind == 0, mm[..., 0] + np.log(np.where(kind == 0, z, 1.0)),
                           np.where(kind == 2, np.nan, -np.inf))
    return p, lse, kind


def attention(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
              qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
              relv=None, relv_ix=None, bias_vec=None, bias_ix=None, bias_full=None,
              pwl=None, f32=False, **pwl_kw):
    """Materialised attention with all four channels, in float64.

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv); the channel arguments as
    in :func:`attention_logits`, plus relv (1|H, R, Dv) with relv_ix (sign, off).
    Returns (out (B, H, Tq, Dv), lse (B, H, Tq), probs (B, H, Tq, Tk)):
    out_i = Σ_j p_ij (v_j + relv[h, idx(relv_ix)]).

    Non-finite values follow torch's softmax (csrc/core/attention.h):
    a NaN or +inf logit on a key that is not masked makes the row NaN (out,
    lse, and p on its unmasked keys); a -inf logit has weight 0; every unmasked
    key's value is multiplied by its weight, so a NaN value gives NaN even at
    weight 0; masked keys (causal, padding) take no part at all. A row with no
    unmasked key, or whose unmasked logits are all -inf, has out = 0,
    lse = -inf and probs = 0. f32: logits and weights rounded to float32.
    pwl (or the _C keywords pwl_u, ...): see :func:`attention_logits`.
    """
    pwl = _pwl_dict(pwl, pwl_kw)
    v = np.asarray(v, dtype=np.float64)
    s, allowed = attention_logits(q, k, causal=causal, key_padding_mask=key_padding_mask,
                                  q_offset=q_offset, scale=scale, qr=qr, relk=relk,
                                  relk_ix=relk_ix, relq=relq, relq_ix=relq_ix,
                                  bias_vec=bias_vec, bias_ix=bias_ix, bias_full=bias_full, pwl=pwl)
    present = np.broadcast_to(allowed, s.shape)
    B, H, Tq, Tk = s.shape
    probs, lse, kind = softmax_rows(s, present, f32)
    vals = np.broadcast_to(v[:, :, None, :, :], (B, H, Tq, Tk, v.shape[-1]))
    if relv is not None:
        tab = _attn_heads(relv, H)
        idx = attention_relidx(relv_ix, tab.shape[1], Tq, Tk, q_offset)
        vals = vals + tab[:, idx, :][None]
    with np.errstate(invalid="ignore", over="ignore"):
        out = _present_sum(probs, vals, present & (kind != 1)[..., None])
    return out, lse, probs


def attention_backward(q, k, v, dout, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
                       qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
                       relv=None, relv_ix=None, bias_vec=None, bias_ix=None, bias_full=None,
                       pwl=None, f32=False, magnitude=False, p_floor=None, **pwl_kw):
    """Gradients of :func:`attention` (the out term) given dout (B, H, Tq, Dv),
    written out as torch's autograd computes them (softmax backward
    dS = P∘(dP − Σ_j P∘dP)), with the same rules for non-finite values: every
    unmasked pair takes part in every product, masked pairs in none, and a row
    with no unmasked key or only -inf logits gives nothing. Returns a dict of
    float64 gradients keyed like the _C backward (q, k, v and each channel
    given; pwl gives pwl_u, pwl_w, pwl_slope, pwl_icpt).

    magnitude=True returns instead, for each gradient, the same sums taken
    over the absolute values of every term (dS as P∘(|dP| + Σ_j P|dP|)): the
    scale of the float32 rounding error a kernel may make on that entry.
    p_floor (B, H, Tq), with magnitude: the weights of row i taken as at least
    p_floor[i] (1 for a row whose weights float32 cannot pin down)."""
    pwl = _pwl_dict(pwl, pwl_kw)
    q64, k64, v64 = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    dout = np.asarray(dout, dtype=np.float64)
    if magnitude:
        mag = lambda a: None if a is None else np.abs(np.asarray(a, dtype=np.float64))
        f32_, kw = f32, dict(causal=causal, key_padding_mask=key_padding_mask, q_offset=q_offset, scale=scale,
                             qr=qr, relk=relk, relk_ix=relk_ix, relq=relq, relq_ix=relq_ix, bias_vec=bias_vec,
                             bias_ix=bias_ix, bias_full=bias_full, pwl=pwl)
        s, allowed = attention_logits(q, k, **kw)
        p, _, kind = softmax_rows(s, np.broadcast_to(allowed, s.shape), f32_)
        if p_floor is not None:
            p = np.where(np.broadcast_to(allowed, p.shape), np.maximum(p, np.asarray(p_floor)[..., None]), p)
        return _attention_backward_terms(mag(q), mag(k), mag(v), mag(dout), p, kind, allowed,
                                         None if scale is None else abs(scale), mag(qr), mag(relk), relk_ix,
                                         mag(relq), relq_ix, mag(relv), relv_ix, bias_vec, bias_ix, bias_full, pwl,
                                         q_offset, True)
    B, H, Tq, D = q64.shape
    if scale is None:
        scale = 1.0 / np.sqrt(D) if D > 0 else 1.0
    s, allowed = attention_logits(q, k, causal=causal, key_padding_mask=key_padding_mask, q_offset=q_offset,
                                  scale=scale, qr=qr, relk=relk, relk_ix=relk_ix, relq=relq, relq_ix=relq_ix,
                                  bias_vec=bias_vec, bias_ix=bias_ix, bias_full=bias_full, pwl=pwl)
    p, lse, kind = softmax_rows(s, np.broadcast_to(allowed, s.shape), f32)
    return _attention_backward_terms(q64, k64, v64, dout, p, kind, allowed, scale, qr, relk, relk_ix, relq, relq_ix,
                                     relv, relv_ix, bias_vec, bias_ix, bias_full, pwl, q_offset, False)


def _attention_backward_terms(q64, k64, v64, dout, p, kind, allowed, scale, qr, relk, relk_ix, relq, relq_ix,
                              relv, relv_ix, bias_vec, bias_ix, bias_full, pwl, q_offset, magnitude):
    """attention_backward after the softmax: p (B, H, Tq, Tk), the row kinds and the mask."""
    B, H, Tq, D = q64.shape
    Tk = k64.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(D) if D > 0 else 1.0
    present = np.broadcast_to(allowed, p.shape)
    live = present & (kind != 1)[..., None]          # pairs that take part
    vals = np.broadcast_to(v64[:, :, None, :, :], (B, H, Tq, Tk, v64.shape[-1]))
    if relv is not None:
        tabv = _attn_heads(relv, H)
        idxv = attention_relidx(relv_ix, tabv.shape[1], Tq, Tk, q_offset)
        vals = vals + tabv[:, idxv, :][None]
    g = {}
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        dP = np.where(live, np.einsum("bhid,bhijd->bhij", dout, np.where(live[..., None], vals, 0.0)), 0.0)
        Dsum = np.where(live, p * dP, 0.0).sum(axis=-1, keepdims=True)
        dS = np.where(live, p * (dP + Dsum if magnitude else dP - Dsum), 0.0)
        # products over present pairs only: a masked pair must not meet a NaN
        pt = np.swapaxes(p, -1, -2)
        livet = np.swapaxes(live, -1, -2)
        g["v"] = _present_sum(pt, np.broadcast_to(dout[:, :, None], (B, H, Tk, Tq, dout.shape[-1])), livet)
        kk = np.broadcast_to(k64[:, :, None], (B, H, Tq, Tk, D))
        g["q"] = scale * _present_sum(dS, kk, live)
        qq = q64 if qr is None else np.asarray(qr, dtype=np.float64)
        g["k"] = scale * _present_sum(np.swapaxes(dS, -1, -2), np.broadcast_to(q64[:, :, None], (B, H, Tk, Tq, D)),
                                      livet)
        if relk is not None:
            tab = _attn_heads(relk, H)
            idx = attention_relidx(relk_ix, tab.shape[1], Tq, Tk, q_offset)
            gq = scale * _present_sum(dS, np.broadcast_to(tab[:, idx, :][None], (B, H, Tq, Tk, D)), live)
            if qr is None:
                g["q"] = g["q"] + gq
            else:
                g["qr"] = gq
            g["relk"] = _scatter_table(scale * dS[..., None] * np.broadcast_to(qq[:, :, :, None], (B, H, Tq, Tk, D)),
                                       live, idx, np.asarray(relk).shape)
        if relq is not None:
            tab = _attn_heads(relq, H)
            idx = attention_relidx(relq_ix, tab.shape[1], Tq, Tk, q_offset)
            g["k"] = g["k"] + scale * _present_sum(np.swapaxes(dS, -1, -2),
                                                   np.broadcast_to(np.swapaxes(tab[:, idx, :], 1, 2)[None],
                                                                   (B, H, Tk, Tq, D)), livet)
            g["relq"] = _scatter_table(scale * dS[..., None] * np.broadcast_to(k64[:, :, None], (B, H, Tq, Tk, D)),
                                       live, idx, np.asarray(relq).shape)
        if relv is not None:
            g["relv"] = _scatter_table(p[..., None] * np.broadcast_to(dout[:, :, :, None], (B, H, Tq, Tk, dout.shape[-1])),
                                       live, idxv, np.asarray(relv).shape)
        if bias_vec is not None:
            idx = attention_relidx(bias_ix, np.asarray(bias_vec).shape[1], Tq, Tk, q_offset)
            g["bias_vec"] = _scatter_table(dS[..., None], live, idx, np.asarray(bias_vec).shape + (1,))[..., 0]
        if bias_full is not None:
            bf = np.asarray(bias_full)
            g["bias_full"] = dS if bf.shape[0] == B else dS.sum(axis=0, keepdims=True)
        if qr is not None and "qr" not in g:
            g["qr"] = np.zeros_like(qq)
        if pwl is not None:
            g.update(_pwl_backward(pwl, dS, live, H, Tq, Tk, q_offset, magnitude))
    return g


def _pwl_dict(pwl, kw):
    """The pwl channel as one dict, from pwl= or from the _C keywords pwl_u, ... (or None)."""
    unknown = set(kw) - {"pwl_u", "pwl_ix", "pwl_w", "pwl_bp", "pwl_slope", "pwl_icpt"}
    if unknown:
        raise TypeError(f"unexpected keywords {sorted(unknown)}")
    if pwl is None and kw.get("pwl_u") is not None:
        pwl = {n[4:]: kw[n] for n in kw}
    return pwl


def pwl_logits(pwl, H, Tq, Tk, q_offset=0):
    """The piecewise-linear logit term of csrc/core/attention.h, (H, Tq, Tk):
    slope[h, seg(x)] * x + icpt[h, seg(x)] with x_ij = u[idx(ix)] * w[i] and
    seg(x) the number of breakpoints <= x. pwl: dict with u (R,), ix (sign, off),
    w (Tq,), bp (S-1,) ascending, slope and icpt (1|H, S). Also returns x, seg
    and the relative index (Tq, Tk)."""
    u = np.asarray(pwl["u"], dtype=np.float64)
    w = np.asarray(pwl["w"], dtype=np.float64)
    bp = np.asarray(pwl["bp"], dtype=np.float64)
    slope = np.broadcast_to(np.asarray(pwl["slope"], dtype=np.float64), (H, len(bp) + 1))
    icpt = np.broadcast_to(np.asarray(pwl["icpt"], dtype=np.float64), (H, len(bp) + 1))
    idx = attention_relidx(pwl["ix"], len(u), Tq, Tk, q_offset)
    with np.errstate(invalid="ignore", over="ignore"):
        x = u[idx] * w[:, None]
        seg = np.searchsorted(bp, np.where(np.isnan(x), -np.inf, x), side="right")
        return slope[:, seg] * x[None] + icpt[:, seg], x, seg, idx


def _pwl_backward(pwl, dS, live, H, Tq, Tk, q_offset, magnitude=False):
    """Gradients of the pwl channel from dS (B, H, Tq, Tk) over live pairs
    (magnitude: of the absolute values of the terms; pwl holds |u|, |w|, |slope|)."""
    _, x, seg, idx = pwl_logits(pwl, H, Tq, Tk, q_offset)
    u = np.asarray(pwl["u"], dtype=np.float64)
    w = np.asarray(pwl["w"], dtype=np.float64)
    S = len(np.asarray(pwl["bp"])) + 1
    slope = np.broadcast_to(np.asarray(pwl["slope"], dtype=np.float64), (H, S))
    if magnitude:
        x, u, w, slope = np.abs(x), np.abs(u), np.abs(w), np.abs(slope)
    dSl = np.where(live, dS, 0.0)
    dx = np.where(live, dS * slope[:, seg][None], 0.0)                    # (B, H, Tq, Tk)
    g_slope = np.zeros((H, S))
    g_icpt = np.zeros((H, S))
    xs = np.where(live, dS * x[None, None], 0.0)
    for s_ in range(S):
        sel = seg == s_
        g_slope[:, s_] = xs[:, :, sel].sum(axis=(0, 2))
        g_icpt[:, s_] = dSl[:, :, sel].sum(axis=(0, 2))
    dxs = dx.sum(axis=(0, 1))                                             # (Tq, Tk)
    g_u = np.zeros(len(u))
    np.add.at(g_u, idx.ravel(), np.where(live.any(axis=(0, 1)), dxs * w[:, None], 0.0).ravel())
    g_w = np.where(live.any(axis=(0, 1)), dxs * u[idx], 0.0).sum(axis=1)
    shape = np.asarray(pwl["slope"]).shape
    if shape[0] == 1:
        g_slope, g_icpt = g_slope.sum(0, keepdims=True), g_icpt.sum(0, keepdims=True)
    return {"pwl_u": g_u, "pwl_w": g_w, "pwl_slope": g_slope, "pwl_icpt": g_icpt}


def _scatter_table(contrib, live, idx, shape):
    """A (1|H, R, W) table gradient: the sum of contrib (B, H, Tq, Tk, W) over
    live pairs at relative index idx (Tq, Tk), heads summed when shared."""
    Ht, R, W = shape
    B, H = contrib.shape[:2]
    out = np.zeros((H, R, W))
    c = np.where(live[..., None], contrib, 0.0).sum(axis=0)          # (H, Tq, Tk, W)
    for r in range(R):
        sel = idx == r
        if sel.any():
            out[:, r] = c[:, sel].sum(axis=1)
    return out.sum(axis=0, keepdims=True) if Ht == 1 else out


# ============================================================== perf
# (area: fused training kernels — relpos/_fn/fused.py, csrc/core/blocks.c)


def add_layer_norm(x, y, weight, bias, eps=1e-5):
    """s = x + y, h = layer_norm(s) * weight + bias; float64 (s, h)."""
    s = np.asarray(x, np.float64) + np.asarray(y, np.float64)
    return s, layer_norm(s, weight, bias, eps)


def linear_gelu(x, weight, bias=None, approximate="tanh"):
    """gelu(x @ weight.T + bias), float64; x (..., K), weight (N, K)."""
    h = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    if bias is not None:
        h = h + np.asarray(bias, np.float64)
    return gelu_tanh(h) if approximate == "tanh" else gelu_erf(h)


def rope_rotate_tables(x, cos, sin, rotary_dim, layout, inverse=False, scale=None):
    """x (..., T, D) with pair k of row t turned by the angle whose cos/sin are
    cos[t, k], sin[t, k] (by minus that angle when inverse), then multiplied by
    scale[t, k] (None: 1); float64, real products (IEEE inf/NaN as the kernel)."""
    x = np.asarray(x, np.float64)
    y = x.copy()
    c = np.asarray(cos, np.float64)
    s = np.asarray(sin, np.float64) * (-1.0 if inverse else 1.0)
    sc = None if scale is None else np.asarray(scale, np.float64)
    with np.errstate(all="ignore"):
        for k, (a, b) in enumerate(rope_pairs(rotary_dim, layout)):
            xa, xb = x[..., a], x[..., b]
            y[..., a] = c[:, k] * xa - s[:, k] * xb
            y[..., b] = s[:, k] * xa + c[:, k] * xb
            if sc is not None:
                y[..., a] *= sc[:, k]
                y[..., b] *= sc[:, k]
    return y


def heads_split(y, n_heads, groups=1, rotate=0, cos=None, sin=None, rotary_dim=None, layout="interleaved"):
    """y (B, T, groups*H*Dh) -> list of groups arrays (B, H, T, Dh), the first
    `rotate` turned by the RoPE tables; float64."""
    y = np.asarray(y, np.float64)
    B, T, C = y.shape
    Dh = C // (groups * n_heads)
    parts = y.reshape(B, T, groups, n_heads, Dh).transpose(2, 0, 3, 1, 4)
    rd = Dh if rotary_dim is None else rotary_dim
    return [rope_rotate_tables(parts[g], cos, sin, rd, layout) if g < rotate else parts[g].copy()
            for g in range(groups)]


def heads_merge(xs, rotate=0, cos=None, sin=None, rotary_dim=None, layout="interleaved"):
    """Adjoint of heads_split: list of (B, H, T, Dh) arrays (None = zeros) ->
    (B, T, groups*H*Dh), the first `rotate` turned back; float64."""
    first = next(np.asarray(x) for x in xs if x is not None)
    B, H, T, Dh = first.shape
    rd = Dh if rotary_dim is None else rotary_dim
    out = []
    for g, x in enumerate(xs):
        x = np.zeros((B, H, T, Dh)) if x is None else np.asarray(x, np.float64)
        if g < rotate:
            x = rope_rotate_tables(x, cos, sin, rd, layout, inverse=True)
        out.append(x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh))
    return np.concatenate(out, axis=-1)


def heads_rotate(y, n_heads, groups=1, rotate=0, cos=None, sin=None, rotary_dim=None, layout="interleaved",
                 inverse=False):
    """y (B, T, groups*H*Dh) with its first `rotate` groups turned by the RoPE
    tables (inverse: turned back), the others as they are; float64, a new array
    (the kernel turns y in place)."""
    y = np.asarray(y, np.float64)
    B, T, C = y.shape
    Dh = C // (groups * n_heads)
    parts = y.reshape(B, T, groups, n_heads, Dh).transpose(2, 0, 3, 1, 4)
    rd = Dh if rotary_dim is None else rotary_dim
    out = [rope_rotate_tables(parts[g], cos, sin, rd, layout, inverse=inverse) if g < rotate else parts[g]
           for g in range(groups)]
    return np.stack(out).transpose(1, 3, 0, 2, 4).reshape(B, T, C)


def qkv_heads(x, wq, wk, wv, bq, bk, bv, n_heads, rope=None):
    """q, k, v (B, H, T, Dh) of x (B, T, d): projections, head split, RoPE on q
    and k with rope = (cos, sin, rotary_dim, layout) or None; float64."""
    x = np.asarray(x, np.float64)
    outs = []
    for i, (w, b) in enumerate(((wq, bq), (wk, bk), (wv, bv))):
        y = x @ np.asarray(w, np.float64).T + (0.0 if b is None else np.asarray(b, np.float64))
        B, T, d = y.shape
        h = y.reshape(B, T, n_heads, d // n_heads).transpose(0, 2, 1, 3)
        if rope is not None and i < 2:
            cos, sin, rd, layout = rope
            h = rope_rotate_tables(h, cos, sin, rd, layout)
        outs.append(h)
    return outs


def heads_linear(o, weight, bias=None):
    """o (B, H, T, Dh) -> merged (B, T, H*Dh) @ weight.T + bias; float64."""
    o = np.asarray(o, np.float64)
    B, H, T, Dh = o.shape
    y = o.transpose(0, 2, 1, 3).reshape(B, T, H * Dh) @ np.asarray(weight, np.float64).T
    return y if bias is None else y + np.asarray(bias, np.float64)


def head_cross_entropy(h, weight, targets, ignore_index=-100):
    """Mean cross-entropy of the logits h (..., d) @ weight (V, d).T; float64."""
    logits = np.asarray(h, np.float64) @ np.asarray(weight, np.float64).T
    return cross_entropy(logits, targets, ignore_index)
