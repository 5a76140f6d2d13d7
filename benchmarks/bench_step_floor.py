"""The floor of a relpos training step: every relpos._C call of one step, timed
alone, and their sum beside the step itself.

    OMP_NUM_THREADS=2 python benchmarks/bench_step_floor.py [--config small,large]
        [--enc rope,alibi] [--threads 1] [--steps 21] [--reps 7] [--json PATH]

The model and step are bench_train.py's (the same configurations). The script
records one step's calls into relpos._C (function, arguments), then replays
each call on its own, --reps times, every time on fresh copies of its array
arguments (so calls that write in place, AdamW or the cross-entropy gradient
written over the logits, start from the same inputs each time), and keeps the
best time of each. Their sum is the step's *kernel floor*: what the step
would take with no Python between the calls, every input already in cache
(the copies were just written) and no other process on the machine.

Printed per (configuration, encoding, threads):
  the step (--steps steps, back to back): median and best wall time;
  the Python layer: the main thread's CPU time outside _C per step;
  the floor and, per _C function, its calls per step, its time alone (the sum
    over its calls), its share of the floor and its time inside the step
    (wall time in the function per step, over the same steps as the Python
    figure: the same work on inputs that are no longer in cache); GEMM-like
    calls also show GFLOP/s alone against the measured FMA peak;
  the gap: median step - floor (the Python layer, cold caches, allocation).

This is the arithmetic behind a speed target: a step cannot be faster than its
kernels alone, so a target below the floor needs different kernels (fused
further, or doing less work), not less overhead around them.
"""
import argparse
import collections
import functools
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # NumPy's BLAS pool would spin beside OpenMP

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_train  # noqa: E402
import numpy as np  # noqa: E402

import relpos  # noqa: E402

# FLOPs of the calls whose work is a matrix product: name -> f(args, kwargs) -> FLOPs
_FLOPS = {
    "gemm": lambda a, k: 2 * (a[0].shape[1] if k.get("trans_a") else a[0].shape[0])
    * (a[0].shape[0] if k.get("trans_a") else a[0].shape[1])
    * (a[1].shape[0] if k.get("trans_b") else a[1].shape[1]),
    "linear_fwd": lambda a, k: 2 * a[0].shape[0] * a[0].shape[1] * a[1].shape[0],
    "linear_gelu_fwd": lambda a, k: 2 * a[0].shape[0] * a[0].shape[1] * a[1].shape[0],
    # dx and dw, 2 M N K each, for those asked for (both by default)
    "linear_gelu_bwd": lambda a, k: 2 * a[0].shape[0] * a[0].shape[1] * a[1].shape[0]
    * (int(bool(k.get("need_x", True))) + int(bool(k.get("need_weight", True)))),
}


def _copy(x, memo):
    """A fresh copy of every ndarray in x (lists, tuples and dict values too);
    the same array object maps to the same copy, so an output given as one of
    the inputs (out=logits) stays that input."""
    if isinstance(x, np.ndarray):
        c = memo.get(id(x))
        if c is None:
            c = memo[id(x)] = np.array(x, copy=True, order="K")
        return c
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(v, memo) for v in x)
    if isinstance(x, dict):
        return {k: _copy(v, memo) for k, v in x.items()}
    return x


def record_step(step, x, y):
    """The _C calls of one step(x, y), in order: [(name, fn, args, kwargs)] with
    every array argument copied as it was when the call was made."""
    calls = []

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            memo = {}
            calls.append((name, fn, _copy(a, memo), _copy(k, memo)))
            return fn(*a, **k)
        return inner

    with bench_train.patched_core(wrap):
        step(x, y)
    return calls


def time_alone(calls, reps):
    """Best wall time of each recorded call run on its own (fresh input copies every time)."""
    best = []
    for _name, fn, a, k in calls:
        ts = []
        for _ in range(reps + 1):  # the first run warms the code and the copies' pages
            memo = {}
            aa, kk = _copy(a, memo), _copy(k, memo)
            t0 = time.perf_counter()
            fn(*aa, **kk)
            ts.append(time.perf_counter() - t0)
        best.append(min(ts[1:]))
    return best


def in_step(step, x, y, n):
    """n steps with every _C call timed: (median main-thread CPU ms per step
    outside _C calls, {name: wall seconds per step inside that _C function})."""
    wall = collections.Counter()
    res = []
    with bench_train.timed_core(wall) as spent:
        for _ in range(n):
            s0, c0 = spent[1], time.thread_time()
            step(x, y)
            res.append((time.thread_time() - c0) - (spent[1] - s0))
    return 1e3 * float(np.median(res)), {k: v / n for k, v in wall.items()}


def measure(config_name, enc, threads, steps, reps, peak):
    cfg = dict(bench_train.CONFIGS[config_name])
    relpos.set_num_threads(threads)
    x, y = bench_train.step_batch(cfg)
    model, step = bench_train.relpos_model(enc, cfg)
    for _ in range(3):
        step(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
    py_ms, inside = in_step(step, x, y, max(3, steps // 2))
    calls = record_step(step, x, y)
    alone = time_alone(calls, reps)
    per = collections.OrderedDict()
    for (name, _fn, a, k), t in zip(calls, alone):
        d = per.setdefault(name, dict(calls=0, s=0.0, flops=0))
        d["calls"] += 1
        d["s"] += t
        if name in _FLOPS:
            d["flops"] += _FLOPS[name](a, k)
    floor = sum(alone)
    med, best = float(np.median(times)), float(np.min(times))
    kernels = []
    for name, d in sorted(per.items(), key=lambda kv: -kv[1]["s"]):
        row = dict(name=name, calls=d["calls"], ms=1e3 * d["s"], share=d["s"] / floor,
                   ms_in_step=1e3 * inside.get(name, 0.0))
        if d["flops"]:
            row["gflops"] = d["flops"] / d["s"] / 1e9
            row["peak_fraction"] = row["gflops"] / peak if peak else None
        kernels.append(row)
    return dict(benchmark="step_floor", config=config_name, encoding=enc, threads=threads, steps=steps, reps=reps,
                step_median_ms=1e3 * med, step_best_ms=1e3 * best, python_cpu_ms=py_ms, floor_ms=1e3 * floor,
                gap_ms=1e3 * (med - floor), calls_per_step=len(calls), peak_gflops=peak, kernels=kernels,
                **bench_train.machine())


def format_row(r):
    head = (f"[{r['config']} | {r['cpu']} | {r['simd']}/{r['gemm_kernel']}] {r['encoding']} threads={r['threads']}: "
            f"step median {r['step_median_ms']:.2f} ms (best {r['step_best_ms']:.2f}); kernel floor "
            f"{r['floor_ms']:.2f} ms over {r['calls_per_step']} _C calls; gap {r['gap_ms']:.2f} ms; "
            f"Python {r['python_cpu_ms']:.2f} ms CPU per step")
    lines = [head, f"    {'_C function':22s} {'calls':>5s} {'ms alone':>9s} {'share':>6s} {'ms in step':>11s}"
                   f"  GEMM GFLOP/s alone"]
    for k in r["kernels"]:
        g = ""
        if "gflops" in k:
            g = f"  {k['gflops']:.1f}" + (f" ({100 * k['peak_fraction']:.0f}% of peak)" if k.get("peak_fraction")
                                           else "")
        lines.append(f"    {k['name']:22s} {k['calls']:5d} {k['ms']:9.3f} {100 * k['share']:5.1f}% "
                     f"{k['ms_in_step']:11.3f}{g}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", help="comma-separated: " + ", ".join(bench_train.CONFIGS))
    ap.add_argument("--enc", default="rope,alibi")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--steps", type=int, default=21, help="steps timed back to back for the median (default 21)")
    ap.add_argument("--reps", type=int, default=7, help="runs of each call alone; the best counts (default 7)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    configs = [c for c in args.config.split(",") if c]
    for c in configs:
        if c not in bench_train.CONFIGS:
            ap.error(f"--config: unknown configuration {c!r}; known: {', '.join(bench_train.CONFIGS)}")
    if args.steps < 1:
        ap.error(f"--steps must be >= 1; got {args.steps}")
    if args.reps < 1:
        ap.error(f"--reps must be >= 1; got {args.reps}")
    encs = [e for e in args.enc.split(",") if e]
    if not encs:
        ap.error(f"--enc must name at least one encoding; got {args.enc!r}")
    for e in encs:  # before any measuring: a typo costs no minutes
        try:
            relpos.encodings.lookup(e)
        except (ValueError, ImportError) as err:
            ap.error(f"--enc: {err}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads must be comma-separated integers; got {args.threads!r}")
    if any(t < 1 for t in threads):
        ap.error(f"--threads must be >= 1; got {args.threads!r}")
    rows = []
    for c in configs:
        for n in threads:
            peak = bench_train.fma_peaks((n,))[0][n]  # never below n x the 1-thread peak
            for enc in encs:
                r = measure(c, enc, n, args.steps, args.reps, peak)
                rows.append(r)
                print(format_row(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="step_floor", machine=bench_train.machine(), rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
