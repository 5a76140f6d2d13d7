"""Shared helpers for relpos benchmarks: environment, timing, peak, JSON.

Import this module before NumPy in a benchmark script and call
``clean_blas_env()`` first thing: it re-executes the script without the
OpenBLAS overrides that would hold NumPy's BLAS back (a fair comparison uses
the kernel OpenBLAS picks for this CPU).
"""
import json
import os
import platform
import sys
import time

BLAS_ENV_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_blas_env(set_env=None):
    """Re-exec the running script with BLAS_ENV_OVERRIDES removed (only if set)
    and the variables of `set_env` set (only if they differ).

    Must run before NumPy or relpos is imported: OpenBLAS and libgomp read
    their variables when they load.
    """
    set_env = dict(set_env or {})
    stale = any(k in os.environ for k in BLAS_ENV_OVERRIDES)
    differ = any(os.environ.get(k) != v for k, v in set_env.items())
    if stale or differ:
        if "numpy" in sys.modules or "relpos" in sys.modules:
            raise RuntimeError("clean_blas_env() must run before numpy and relpos are imported")
        env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV_OVERRIDES}
        env.update(set_env)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def time_pair(fns, min_time=0.3, min_reps=3, max_reps=50):
    """Best-of wall time of each callable in `fns`, run interleaved so that
    machine noise hits all of them alike. One warm-up call each first.

    Returns (best wall seconds, best process CPU seconds) lists. The CPU time
    (all threads of the process, spinning included) is what the call costs when
    it is not waiting for a CPU: on a shared, overloaded machine it shows the
    code's own speed where the wall time mostly shows the queue."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    best_cpu = [float("inf")] * len(fns)
    spent = 0.0
    reps = 0
    while reps < max_reps and (reps < min_reps or spent < min_time * len(fns)):
        for i, f in enumerate(fns):
            c0 = time.process_time()
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            best_cpu[i] = min(best_cpu[i], time.process_time() - c0)
            spent += dt
            best[i] = min(best[i], dt)
        reps += 1
    return best, best_cpu


def measured_peak(threads, seconds=0.5, tries=3):
    """Best of a few runs of relpos' FMA peak probe (GFLOP/s)."""
    from relpos import _C

    return max(_C.fma_peak_gflops(threads=threads, seconds=seconds) for _ in range(tries))


def blas_info():
    """threadpoolctl's description of the BLAS libraries loaded (NumPy's)."""
    from threadpoolctl import threadpool_info

    return [d for d in threadpool_info() if d.get("user_api") == "blas"]


def machine_info():
    import numpy as np

    import relpos

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "python": platform.python_version(), "numpy": np.__version__,
            "relpos": relpos.config(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_json(obj, path):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    print(f"wrote {path}")
