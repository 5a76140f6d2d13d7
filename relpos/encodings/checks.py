"""Check an encoding of your own: its gradients, and that both kernels agree.

    >>> relpos.encodings.gradcheck(LogDecay, n_heads=4)
    gradcheck of 'log_decay' (causal, Tq=6, Tk=6, q_offset=0): ok
    parameter  shape   max |autograd - finite diff.|  max rel. error  ok
    ...
"""
from __future__ import annotations

import html

import numpy as np

from .. import functional as F
from ..tensor import Tensor, no_grad
from .registry import get

__all__ = ["gradcheck", "GradcheckReport"]


class GradcheckReport:
    """What :func:`gradcheck` found. ``ok`` is True when every parameter's autograd
    gradient matches its central finite difference within ``rtol``/``atol`` and the
    fused and materialised kernels agree to 1e-5. ``rows`` holds one dict per
    parameter; ``kernel_diff`` the largest fused-vs-materialised difference (output
    and every gradient)."""

    def __init__(self, title, rows, kernel_diff, rtol, atol):
        self.title, self.rows, self.kernel_diff, self.rtol, self.atol = title, rows, kernel_diff, rtol, atol
        self.kernels_agree = kernel_diff is None or kernel_diff <= 1e-5
        self.ok = all(r["ok"] for r in rows) and self.kernels_agree

    def _table(self):
        head = ("parameter", "shape", "max |autograd - finite diff.|", "max rel. error", "ok")
        body = [(r["name"], str(r["shape"]), f"{r['max_abs']:.2e}", f"{r['max_rel']:.2e}", "yes" if r["ok"] else "NO")
                for r in self.rows]
        return head, body

    def __repr__(self):
        head, body = self._table()
        widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
        lines = [f"{self.title}: {'ok' if self.ok else 'MISMATCH'}"]
        lines += ["  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() for x in [head] + body]
        if self.kernel_diff is not None:
            lines.append(f"fused vs materialised kernel: max difference {self.kernel_diff:.2e} "
                         f"({'agree' if self.kernels_agree else 'DISAGREE'})")
        if not self.rows:
            lines.append("(no learnable parameters)")
        return "\n".join(lines)

    def _repr_html_(self):
        head, body = self._table()
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        tb = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        extra = "" if self.kernel_diff is None else \
            f"<p>fused vs materialised kernel: max difference {self.kernel_diff:.2e}</p>"
        return f"<p>{html.escape(self.title)}: {'ok' if self.ok else 'MISMATCH'}</p><table>{th}{tb}</table>{extra}"


def _loss(enc, q, k, v, g, causal, q_offset, impl):
    out = F.attention(q, k, v, encoding=enc, causal=causal, q_offset=q_offset, impl=impl)
    return out, float(np.sum(out.data.astype(np.float64) * g))


def gradcheck(encoding, n_heads=4, head_dim=16, Tq=6, Tk=None, q_offset=0, causal=True, batch=2, eps=1e-2,
              rtol=2e-2, atol=2e-3, max_entries=32, seed=0, **options) -> GradcheckReport:
    """Check an encoding's parameter gradients through attention against central
    finite differences, and its fused against its materialised kernel.

    The loss is ``sum(attention(q, k, v, encoding) * g)`` for random q, k, v
    (``batch``, ``n_heads``, ``Tq``/``Tk``, ``head_dim``) and upstream g. For each
    parameter (up to ``max_entries`` entries of it, chosen at random), the
    autograd gradient is compared with ``(L(p + eps) - L(p - eps)) / (2 eps)``;
    relpos computes in float32, so the tolerances are those of a float32
    finite difference. The parameters are restored afterwards.

    ``encoding``: a name, 'module:Class', a class (built with n_heads, head_dim
    and ``options``) or an instance (used as it is). Returns a
    :class:`GradcheckReport` (prints as a table; ``.ok``).
    """
    enc = get(encoding, n_heads=n_heads, head_dim=head_dim, seed=seed, **options) \
        if isinstance(encoding, (str, type)) else get(encoding)
    H = enc.n_heads or n_heads
    D = enc.head_dim or head_dim
    Tk = Tq + q_offset if Tk is None else Tk
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((batch, H, T, D)).astype(np.float32) for T in (Tq, Tk, Tk))
    g = rng.standard_normal((batch, H, Tq, D))
    params = list(enc.named_parameters())

    # fused vs materialised: the output and every gradient
    kernel_diff = None
    if not enc.materialized_only:
        got = {}
        for impl in ("fused", "materialized"):
            for _, p in params:
                p.grad = None
            qt, kt, vt = (Tensor(a, requires_grad=True) for a in (q, k, v))
            out, _ = _loss(enc, qt, kt, vt, g, causal, q_offset, impl)
            out.backward(g.astype(np.float32))
            got[impl] = [out.data, qt.grad, kt.grad, vt.grad] + [p.grad for _, p in params]
        kernel_diff = max(float(np.max(np.abs(a - b), initial=0.0)) if a is not None and b is not None else 0.0
                          for a, b in zip(got["fused"], got["materialized"]))

    for _, p in params:
        p.grad = None
    out, _ = _loss(enc, q, k, v, g, causal, q_offset, "auto")
    out.backward(g.astype(np.float32))
    rows = []
    for name, p in params:
        auto = np.zeros(p.shape, np.float64) if p.grad is None else p.grad.astype(np.float64)
        flat = p.data.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_entries:
            idx = np.sort(rng.choice(flat.size, max_entries, replace=False))
        num = np.zeros(len(idx))
        with no_grad():
            for n, i in enumerate(idx):
                old = flat[i]
                flat[i] = old + eps
                _, lp = _loss(enc, q, k, v, g, causal, q_offset, "auto")
                flat[i] = old - eps
                _, lm = _loss(enc, q, k, v, g, causal, q_offset, "auto")
                flat[i] = old
                num[n] = (lp - lm) / (2 * eps)
        a = auto.reshape(-1)[idx]
        err = np.abs(a - num)
        rel = err / np.maximum(np.abs(num), atol)
        rows.append({"name": name, "shape": tuple(p.shape), "max_abs": float(err.max(initial=0.0)),
                     "max_rel": float(rel.max(initial=0.0)), "ok": bool(np.all(err <= atol + rtol * np.abs(num)))})
    title = (f"gradcheck of {enc.name or type(enc).__name__!r} ({'causal' if causal else 'bidirectional'}, "
             f"Tq={Tq}, Tk={Tk}, q_offset={q_offset})")
    return GradcheckReport(title, rows, kernel_diff, rtol, atol)
