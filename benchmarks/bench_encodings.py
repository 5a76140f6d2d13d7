"""What each position encoding costs on its own, next to plain attention.

    python benchmarks/bench_encodings.py [--T 256,512,1024,2048,4096] [--B 1] [--H 4] [--D 64]
                                         [--only rope,xpos] [--threads 2] [--json PATH] [--quick]

For every row of ``cases()`` it times the encoding's own forward and backward — the
rotary transform of q and k (channel R), the embedding added to the input
(channel A), the bias table / relative terms of ``attention_inputs``
(channels B and C) — at each T, and divides by the time of plain causal
attention forward + backward with no encoding at the same (B, H, T, D).
The baseline is ``relpos.functional.attention_core`` when it exists, else a
float32 NumPy materialised attention (said in the output); PyTorch's
``scaled_dot_product_attention`` is timed beside it when torch is installed.
Prints a table (milliseconds and ratio to the baseline) and writes JSON.

Every registered encoding gets a row (``cases()``); VARIANTS adds rows for
options; a channel needing a special driver adds a function to DRIVERS.
"""
import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import relpos  # noqa: E402
from relpos import encodings  # noqa: E402

# One row per registered encoding with its default options (the registry is the
# list: a new encoding is measured without touching this file), then VARIANTS,
# rows for options worth their own figure: (label, registry name, options).
# Context keywords (n_heads, head_dim, d_model, max_len, seed) are filled in by
# the driver; an encoding that builds the token embedding gets vocab_size=256.
VARIANTS = [
    ("rope-half", "rope", {"layout": "half"}),
    ("rope-partial", "rope", {"rotary_dim": 32}),
    ("rope-yarn", "rope", {"scaling": "yarn", "scaling_factor": 4.0, "original_max_len": 512}),
    ("alibi-learn", "alibi", {"learnable": True}),
    ("kerple-power", "kerple", {"variant": "power"}),
    ("shaw-values", "shaw", {"values": True}),
]


def cases():
    rows = [(r["name"], r["name"], {}) for r in encodings.available() if r["name"] != "none"]
    return rows + VARIANTS


def best_time(fn, min_time=0.2, min_reps=3, max_reps=30):
    """Best-of wall time in seconds (one warm-up call first)."""
    fn()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < max_reps and (reps < min_reps or spent < min_time):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


# ----------------------------------------------------------------- drivers
# Each driver builds (forward, backward) callables for one encoding at one shape.


def drive_rotary(enc, B, H, T, D, rng):
    q = relpos.Tensor(rng.standard_normal((B, H, T, D), dtype=np.float32), requires_grad=True)
    k = relpos.Tensor(rng.standard_normal((B, H, T, D), dtype=np.float32), requires_grad=True)
    g = rng.standard_normal((B, H, T, D), dtype=np.float32)
    state = {}

    def fwd():
        state["q"], state["k"] = enc.rotate_q(q, 0), enc.rotate_k(k, 0)
        return state

    def bwd():
        state["q"].backward(g)
        state["k"].backward(g)

    return fwd, bwd


def drive_absolute(enc, B, H, T, D, rng):
    d_model = H * D
    x = relpos.Tensor(rng.standard_normal((B, T, d_model), dtype=np.float32), requires_grad=True)
    ids = rng.integers(0, 256, (B, T))
    pos = np.arange(T)
    g = rng.standard_normal((B, T, d_model), dtype=np.float32)
    state = {}

    def fwd():
        xin = None if enc.replaces_token_embedding else x
        state["y"] = enc.embed(xin, pos, ids)

    def bwd():
        if state["y"].requires_grad:
            state["y"].backward(g)

    return fwd, bwd


def drive_attention_inputs(enc, B, H, T, D, rng):
    """Channels B/C: time attention_inputs (tables / relative terms) and the
    backward of every Tensor it returns that requires a gradient."""
    q = relpos.Tensor(rng.standard_normal((B, H, T, D), dtype=np.float32), requires_grad=True)
    k = relpos.Tensor(rng.standard_normal((B, H, T, D), dtype=np.float32), requires_grad=True)
    state = {}

    def fwd():
        state["out"] = enc.attention_inputs(q, k, q_offset=0, causal=True)

    def bwd():
        for v in state["out"].values():
            if isinstance(v, relpos.Tensor) and v.requires_grad:
                v.backward(np.ones(v.shape, np.float32))

    return fwd, bwd


DRIVERS = {"A": drive_absolute, "R": drive_rotary, "B": drive_attention_inputs, "C": drive_attention_inputs}


# ---------------------------------------------------------------- baselines


def numpy_attention(B, H, T, D, rng):
    """Plain causal attention forward + backward, float32 NumPy, materialised."""
    q, k, v, do = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(4))
    scale = np.float32(1 / np.sqrt(D))
    mask = np.triu(np.ones((T, T), bool), 1)

    def run():
        s = (q @ np.swapaxes(k, -1, -2)) * scale
        s[..., mask] = -np.inf
        s -= s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        p @ v  # out
        dv = np.swapaxes(p, -1, -2) @ do
        dp = do @ np.swapaxes(v, -1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
        dq, dk = ds @ k, np.swapaxes(ds, -1, -2) @ q
        return dq, dk, dv

    return run


def relpos_attention(B, H, T, D, rng):
    """relpos.functional.attention_core fwd + bwd, or None when it is not built yet."""
    F = relpos.functional
    if not hasattr(F, "attention_core"):
        return None
    q, k, v = (relpos.Tensor(rng.standard_normal((B, H, T, D), dtype=np.float32), requires_grad=True)
               for _ in range(3))
    g = rng.standard_normal((B, H, T, D), dtype=np.float32)

    def run():
        out = F.attention_core(q, k, v, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(g)

    try:
        run()
    except Exception as exc:  # an attention area still in progress: fall back, say why
        print(f"(attention_core not usable yet: {type(exc).__name__}: {exc}; using the NumPy baseline)")
        return None
    return run


def torch_attention(B, H, T, D, rng, threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    q, k, v = (torch.tensor(rng.standard_normal((B, H, T, D), dtype=np.float32), requires_grad=True)
               for _ in range(3))
    g = torch.tensor(rng.standard_normal((B, H, T, D), dtype=np.float32))

    def run():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(g)

    return run


# --------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", default="256,512,1024,2048,4096")
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated row labels (registry names or VARIANTS labels)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    ap.add_argument("--json", default=os.path.join(os.path.dirname(HERE), "bench_results", "bench_encodings.json"))
    ap.add_argument("--quick", action="store_true", help="T = 256, 1024 only")
    args = ap.parse_args(argv)

    relpos.set_num_threads(args.threads)
    Ts = [256, 1024] if args.quick else [int(t) for t in args.T.split(",")]
    only = set(filter(None, args.only.split(",")))
    rows_to_run = [c for c in cases() if not only or c[0] in only]
    B, H, D = args.B, args.H, args.D
    rng = np.random.default_rng(0)
    rows = []
    print(f"relpos {relpos.__version__}, threads={args.threads}, B={B} H={H} D={D}")
    for T in Ts:
        base = relpos_attention(B, H, T, D, rng)
        base_name = "relpos attention_core" if base else "numpy attention"
        base = base or numpy_attention(B, H, T, D, rng)
        t_base = best_time(base)
        tt = torch_attention(B, H, T, D, rng, args.threads)
        t_torch = best_time(tt) if tt else None
        print(f"\nT={T}: plain causal attention fwd+bwd: {base_name} {t_base * 1e3:.2f} ms"
              + (f", torch sdpa {t_torch * 1e3:.2f} ms" if t_torch else ""))
        print(f"  {'encoding':<14} {'channel':<7} {'fwd ms':>9} {'bwd ms':>9} {'(fwd+bwd)/attn':>15}")
        for label, name, opts in rows_to_run:
            ctx = dict(n_heads=H, head_dim=D, d_model=H * D, max_len=max(Ts), seed=0)
            if encodings.lookup(name).replaces_token_embedding:
                ctx["vocab_size"] = 256
            enc = encodings.get(name, **ctx, **opts)
            driver = DRIVERS[enc.channel[0]]
            fwd, bwd = driver(enc, B, H, T, D, rng)
            t_f = best_time(fwd)
            t_fb = best_time(lambda: (fwd(), bwd()))
            t_b = max(t_fb - t_f, 0.0)
            ratio = t_fb / t_base
            print(f"  {label:<14} {enc.channel:<7} {t_f * 1e3:9.3f} {t_b * 1e3:9.3f} {ratio:15.3f}")
            rows.append(dict(label=label, encoding=name, options=opts, channel=enc.channel, B=B, H=H, T=T, D=D,
                             fwd_s=t_f, bwd_s=t_b, attention_s=t_base, attention_impl=base_name,
                             torch_sdpa_s=t_torch, ratio_to_attention=ratio))
    out = dict(machine=dict(python=platform.python_version(), numpy=np.__version__, relpos=relpos.config(),
                            time=time.strftime("%Y-%m-%dT%H:%M:%S")), rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
