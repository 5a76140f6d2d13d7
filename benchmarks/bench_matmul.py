"""relpos GEMM vs NumPy `@` (its BLAS), measured in the same run.

    python benchmarks/bench_matmul.py [--threads 1,2] [--json PATH] [--quick]

Cases: square n^3 products (n = 256, 512, 1024, 2048) and the model's Linear
shapes with M = 4096 rows: forward Y = X·Wᵀ (+ b), and the backward products
dX = dY·W and dW = dYᵀ·X, for 256->768, 256->1024 and 1024->256. NumPy's BLAS
threads are limited with threadpoolctl, relpos' with set_num_threads. Prints a
markdown table (GFLOP/s of both from the best wall time, their ratio, the
fraction of the measured FMA peak of relpos' kernel, and the ratio of the best
process CPU times, which a shared overloaded machine distorts far less) and
writes JSON.

The script removes OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from its own
environment (re-executing itself) so OpenBLAS runs the kernel it picks for
this CPU; nothing else is changed.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _util  # noqa: E402  (no numpy import at module level)


def _wait_policy_from_argv():
    """--omp-wait-policy must act before libgomp loads, so it is read here."""
    for i, a in enumerate(sys.argv):
        if a.startswith("--omp-wait-policy="):
            v = a.split("=", 1)[1]
        elif a == "--omp-wait-policy" and i + 1 < len(sys.argv):
            v = sys.argv[i + 1]
        else:
            continue
        return {} if v == "inherit" else {"OMP_WAIT_POLICY": v.upper()}
    return {}


_util.clean_blas_env(_wait_policy_from_argv())

import numpy as np  # noqa: E402

try:
    from threadpoolctl import threadpool_limits  # noqa: E402
except ImportError:  # pragma: no cover
    sys.exit("bench_matmul needs threadpoolctl: pip install threadpoolctl")

import relpos  # noqa: E402
from relpos import _C  # noqa: E402


def cases(quick):
    sq = [256, 512, 1024] if quick else [256, 512, 1024, 2048]
    out = []
    for n in sq:
        out.append(dict(name=f"square {n}^3", kind="nn", M=n, N=n, K=n))
    M = 1024 if quick else 4096
    for fin, fout in [(256, 768), (256, 1024), (1024, 256)]:
        tag = f"{fin}->{fout}"
        out.append(dict(name=f"fwd  Y=X·Wᵀ+b {tag}", kind="linear", M=M, N=fout, K=fin))
        out.append(dict(name=f"bwd dX=dY·W   {tag}", kind="nn", M=M, N=fin, K=fout))
        out.append(dict(name=f"bwd dW=dYᵀ·X  {tag}", kind="tn", M=fout, N=fin, K=M))
    return out


def make(case, rng):
    """(relpos callable, numpy callable, max abs difference check) for one case."""
    M, N, K = case["M"], case["N"], case["K"]
    kind = case["kind"]
    f32 = np.float32
    if kind == "nn":
        a = rng.standard_normal((M, K)).astype(f32)
        b = rng.standard_normal((K, N)).astype(f32)
        out = np.empty((M, N), f32)
        return (lambda: _C.gemm(a, b, out)), (lambda: np.matmul(a, b, out=out)), (a, b, None)
    if kind == "tn":  # dW = dYᵀ·X with dY (K, M), X (K, N)
        dy = rng.standard_normal((K, M)).astype(f32)
        x = rng.standard_normal((K, N)).astype(f32)
        out = np.empty((M, N), f32)
        return (lambda: _C.gemm(dy, x, out, trans_a=True)), (lambda: np.matmul(dy.T, x, out=out)), (dy.T, x, None)
    if kind == "linear":  # Y = X·Wᵀ + b, W (N, K)
        x = rng.standard_normal((M, K)).astype(f32)
        w = rng.standard_normal((N, K)).astype(f32)
        bias = rng.standard_normal(N).astype(f32)
        out = np.empty((M, N), f32)

        def np_linear():
            np.matmul(x, w.T, out=out)
            np.add(out, bias, out=out)

        return (lambda: _C.linear_fwd(x, w, bias, out)), np_linear, (x, w.T, bias)
    raise ValueError(kind)


def check(case, rel_fn, rng):
    """Sanity: relpos agrees with float64 on this case (small relative error)."""
    a, b, bias = case["operands"]
    got = rel_fn()
    want = a.astype(np.float64) @ b.astype(np.float64)
    if bias is not None:
        want += bias
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    return err


def settle():
    """Before a relpos block: let OpenBLAS's threads from the NumPy block before it
    stop spinning (they spin ~0.1 s after a call), and wait out a back-off their
    spinning caused (relpos then runs every kernel on one thread for a second;
    config()["backing_off"]): the block measures relpos on a quiet machine."""
    time.sleep(0.2)
    for _ in range(30):
        if not relpos.config()["backing_off"]:
            break
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--json", default=os.path.join("bench_results", "bench_matmul.json"))
    ap.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per case and library")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every case this many times, spread over time, and keep each library's best")
    ap.add_argument("--kernel", default="auto", choices=["auto", "avx512", "avx2", "portable"],
                    help="relpos GEMM micro-kernel (default: the widest this CPU has)")
    ap.add_argument("--omp-wait-policy", default="inherit", choices=["inherit", "passive", "active"],
                    help="OMP_WAIT_POLICY for relpos' libgomp (default: as inherited). On a loaded machine "
                         "libgomp's spinning idle threads starve the working ones; passive avoids that")
    ap.add_argument("--interleave", action="store_true",
                    help="alternate relpos and NumPy call by call (default: one block per library and case, "
                         "so neither library's spinning idle threads land on the other's timings)")
    args = ap.parse_args()
    if args.kernel == "portable":
        _C.force_portable(True)
    else:
        _C.gemm_kernel(args.kernel)
    threads = [int(t) for t in args.threads.split(",")]

    info = _util.machine_info()
    blas = _util.blas_info()
    kernel = _C.gemm_kernel()
    info["gemm_kernel"] = kernel
    print(f"CPU: {info['cpu']}; numpy {info['numpy']}; relpos SIMD path: {info['relpos']['simd']}, "
          f"GEMM micro-kernel: {kernel}")
    for d in blas:
        print(f"NumPy BLAS: {d.get('internal_api')} {d.get('version')} kernel={d.get('architecture')} "
              f"threading={d.get('threading_layer')} ({d.get('filepath')})")
    removed = [k for k in _util.BLAS_ENV_OVERRIDES if k in os.environ]
    print(f"OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE in this process: {removed or 'unset'}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")

    rng = np.random.default_rng(0)
    best = {}   # (threads, case name) -> row with the best times over rounds
    peaks = {}
    prev = relpos.get_num_threads()
    try:
        for rnd in range(args.rounds):
            for nt in threads:
                relpos.set_num_threads(nt)
                peaks[nt] = max(peaks.get(nt, 0.0), _util.measured_peak(nt))
                with threadpool_limits(limits=nt, user_api="blas"):
                    for case in cases(args.quick):
                        rel_fn, np_fn, ops = make(case, rng)
                        case = dict(case, operands=ops)
                        err = check(case, rel_fn, rng)
                        if args.interleave:
                            (t_rel, t_np), (c_rel, c_np) = _util.time_pair([rel_fn, np_fn], min_time=args.min_time)
                        else:
                            # each library in a block of its own: both OpenBLAS's and libgomp's idle
                            # threads spin after a call and would steal the cores the other is timed on
                            settle()
                            (t_rel,), (c_rel,) = _util.time_pair([rel_fn], min_time=args.min_time)
                            (t_np,), (c_np,) = _util.time_pair([np_fn], min_time=args.min_time)
                        key = (nt, case["name"])
                        row = best.setdefault(key, dict(
                            case=case["name"], threads=nt, kernel=kernel, M=case["M"], N=case["N"], K=case["K"],
                            relpos_s=float("inf"), numpy_s=float("inf"), relpos_cpu_s=float("inf"),
                            numpy_cpu_s=float("inf"), max_rel_err=0.0, loads=[]))
                        row["relpos_s"] = min(row["relpos_s"], t_rel)
                        row["numpy_s"] = min(row["numpy_s"], t_np)
                        row["relpos_cpu_s"] = min(row["relpos_cpu_s"], c_rel)
                        row["numpy_cpu_s"] = min(row["numpy_cpu_s"], c_np)
                        row["max_rel_err"] = max(row["max_rel_err"], err)
                        row["loads"].append(os.getloadavg()[0])
            print(f"round {rnd + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        relpos.set_num_threads(prev)

    results = []
    for nt in threads:
        peak = peaks[nt]
        loads = [x for (t, _), r in best.items() if t == nt for x in r["loads"]]
        print(f"\n### {nt} thread(s) — measured FMA peak {peak:.1f} GFLOP/s ({kernel} FMA chains, per-thread "
              f"CPU time); load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs; "
              f"best of {args.rounds} round(s)\n")
        print("| case | M | N | K | relpos GFLOP/s | numpy GFLOP/s | relpos/numpy | relpos % of peak "
              "| relpos/numpy by CPU time | max rel err |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for case in cases(args.quick):
            row = best[(nt, case["name"])]
            flops = 2.0 * row["M"] * row["N"] * row["K"]
            g_rel, g_np = flops / row["relpos_s"] * 1e-9, flops / row["numpy_s"] * 1e-9
            row.update(relpos_gflops=g_rel, numpy_gflops=g_np, ratio=g_rel / g_np, peak_gflops=peak,
                       frac_peak=g_rel / peak, cpu_ratio=row["numpy_cpu_s"] / row["relpos_cpu_s"])
            results.append(row)
            print(f"| {row['case']} | {row['M']} | {row['N']} | {row['K']} | {g_rel:.1f} | {g_np:.1f} "
                  f"| {g_rel / g_np:.2f} | {100 * g_rel / peak:.0f}% | {row['cpu_ratio']:.2f} "
                  f"| {row['max_rel_err']:.1e} |")
    _util.write_json({"benchmark": "matmul", "machine": info, "numpy_blas": blas, "results": results}, args.json)


if __name__ == "__main__":
    main()
