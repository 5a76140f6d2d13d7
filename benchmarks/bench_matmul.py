"""relpos GEMM vs NumPy `@` (its BLAS), measured in the same run.

    python benchmarks/bench_matmul.py [--threads 1,2] [--json PATH] [--quick]

Cases: square n^3 products (n = 256, 512, 1024, 2048) and the model's Linear
shapes with M = 4096 rows: forward Y = X·Wᵀ (+ b), and the backward products
dX = dY·W and dW = dYᵀ·X, for 256->768, 256->1024 and 1024->256. NumPy's BLAS
threads are limited with threadpoolctl, relpos' with set_num_threads. Prints a
markdown table (GFLOP/s of both, ratio, fraction of the measured FMA peak of
relpos' SIMD path) and writes JSON.

The script removes OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from its own
environment (re-executing itself) so OpenBLAS runs the kernel it picks for
this CPU; nothing else is changed.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _util  # noqa: E402  (no numpy import at module level)

_util.clean_blas_env()

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--json", default=os.path.join("bench_results", "bench_matmul.json"))
    ap.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per case and library")
    ap.add_argument("--kernel", default="auto", choices=["auto", "avx512", "avx2", "portable"],
                    help="relpos GEMM micro-kernel (default: the widest this CPU has)")
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
    print(f"OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE in this process: {removed or 'unset'}")

    rng = np.random.default_rng(0)
    results = []
    prev = relpos.get_num_threads()
    try:
        for nt in threads:
            relpos.set_num_threads(nt)
            peak = _util.measured_peak(nt)
            load = os.getloadavg()[0]
            print(f"\n### {nt} thread(s) — measured FMA peak {peak:.1f} GFLOP/s ({kernel} FMA chains, per-thread "
                  f"CPU time); load average {load:.1f} on {os.cpu_count()} CPUs\n")
            print("| case | M | N | K | relpos GFLOP/s | numpy GFLOP/s | relpos/numpy | relpos % of peak | max rel err |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            with threadpool_limits(limits=nt, user_api="blas"):
                for case in cases(args.quick):
                    rel_fn, np_fn, ops = make(case, rng)
                    case = dict(case, operands=ops)
                    err = check(case, rel_fn, rng)
                    t_rel, t_np = _util.time_pair([rel_fn, np_fn], min_time=args.min_time)
                    flops = 2.0 * case["M"] * case["N"] * case["K"]
                    g_rel, g_np = flops / t_rel * 1e-9, flops / t_np * 1e-9
                    row = dict(case=case["name"], threads=nt, load=os.getloadavg()[0], kernel=kernel, M=case["M"], N=case["N"], K=case["K"],
                               relpos_gflops=g_rel, numpy_gflops=g_np, ratio=g_rel / g_np,
                               peak_gflops=peak, frac_peak=g_rel / peak, max_rel_err=err,
                               relpos_s=t_rel, numpy_s=t_np)
                    results.append(row)
                    print(f"| {case['name']} | {case['M']} | {case['N']} | {case['K']} | {g_rel:.1f} | {g_np:.1f} "
                          f"| {g_rel / g_np:.2f} | {100 * g_rel / peak:.0f}% | {err:.1e} |", flush=True)
    finally:
        relpos.set_num_threads(prev)
    _util.write_json({"benchmark": "matmul", "machine": info, "numpy_blas": blas, "results": results}, args.json)


if __name__ == "__main__":
    main()
