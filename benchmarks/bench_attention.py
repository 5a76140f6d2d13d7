"""Fused attention (relpos._C.attention_fwd/_bwd) against PyTorch on the CPU.

Not a test. Forward + backward, B=1, H=8, D=64, causal, at T = 512 ... 4096
(and 8192, 16384 for relpos alone), each against PyTorch in the same run:

  plain  relpos without a bias        vs torch SDPA(is_causal=True).
         RoPE-free: a rotary pre-pass on q and k would be the same O(T*D)
         work on both sides, so it is left out of both.
  alibi  relpos with the ALiBi bias as a per-head Toeplitz vector (bias_vec),
  t5     and with a T5-style bucketed bias (also a Toeplitz vector), each
         vs SDPA with the bias materialised as an additive (H, T, T) attn_mask
         (SDPA gives no gradient for the mask: the bias gets none there), and
         vs eager torch attention (softmax(q k^T * scale + bias) v) in which the
         bias vector does get its gradient, like relpos.

Each (implementation, case, T) runs in a fresh process (relpos and torch each
bring an OpenMP runtime whose idle threads would spin on the other's cores):
first one forward + backward for memory, then best-of-repeat timings.
Peak memory: the number is
the resident-set high-water mark (VmHWM) minus the resident set after the
imports: inputs (q, k, v, dout: 4 x B*H*T*D floats, the same everywhere), the
bias as each implementation needs it (SDPA: the materialised (H, T, T) mask),
one forward + backward, outputs and gradients. Timings exclude building the
mask (it is built once, outside the timed loop: favourable to SDPA).

FLOP count (same for every implementation, causal half of the square):
forward 2 matmuls, backward 5, each 2*B*H*T*T*D/2 flops. The FMA peak comes
from relpos._C.fma_peak_gflops when the build has it, else from a small AVX2
FMA loop compiled here with the system C compiler.

    OMP_NUM_THREADS=2 python benchmarks/bench_attention.py [--T 512 1024] [--repeat 5]
        [--long 8192 16384] [--json results.json]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin on our cores
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
B, H, D = 1, 8, 64
CASES = ("plain", "alibi", "t5")


# ------------------------------------------------------------------- inputs

def alibi_vec(T):
    """(H, 2T-1) ALiBi bias over r = i - j + T - 1: -slope_h * |i - j|."""
    slopes = 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
    dist = np.abs(np.arange(2 * T - 1) - (T - 1))
    return (-slopes[:, None] * dist[None, :]).astype(np.float32)


def t5_vec(T, num_buckets=32, max_distance=128, seed=0):
    """(H, 2T-1) T5-style bias: a learned value per log-spaced bucket of j - i."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((H, num_buckets)).astype(np.float32) * 0.5
    rel = -(np.arange(2 * T - 1) - (T - 1))          # j - i for r = i - j + T - 1
    n = num_buckets // 2
    bucket = (rel > 0).astype(np.int64) * n
    a = np.abs(rel)
    exact = n // 2
    large = exact + (np.log(np.maximum(a, 1) / exact) / math.log(max_distance / exact) * (n - exact)).astype(np.int64)
    bucket += np.where(a < exact, a, np.minimum(large, n - 1))
    return table[:, bucket]


def make_inputs(T, case, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))
    bias = None if case == "plain" else (alibi_vec(T) if case == "alibi" else t5_vec(T))
    return q, k, v, dout, bias


# ------------------------------------------------------------------ runners

def relpos_runner(T, case):
    from relpos import _C
    q, k, v, dout, bias = make_inputs(T, case)
    kw = {"causal": True}
    if bias is not None:
        kw.update(bias_vec=bias, bias_ix=(1, T - 1))

    def fwd():
        return _C.attention_fwd(q, k, v, **kw)

    def bwd(res):
        out, lse = res
        return _C.attention_bwd(q, k, v, out, lse, dout, **kw)

    return fwd, bwd


def _torch_inputs(T, case):
    import torch
    q, k, v, dout, bias = make_inputs(T, case)
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tb = None if bias is None else torch.from_numpy(bias)
    return torch, tq, tk, tv, torch.from_numpy(dout), tb


def _bias_matrix(torch, tb, T):
    """(H, T, T) causal bias from the Toeplitz vector: bias[h, r = i - j + T - 1], -inf above
    the diagonal. Differentiable in tb."""
    i = torch.arange(T)
    idx = (i[:, None] - i[None, :] + T - 1)
    m = tb[:, idx]
    return m.masked_fill(i[None, :] > i[:, None], float("-inf"))


def sdpa_runner(T, case):
    torch, tq, tk, tv, td, tb = _torch_inputs(T, case)
    F = torch.nn.functional.scaled_dot_product_attention
    mask = None if tb is None else _bias_matrix(torch, tb, T)  # materialised once, no gradient

    def fwd():
        for t in (tq, tk, tv):
            t.grad = None
        return F(tq, tk, tv, is_causal=True) if mask is None else F(tq, tk, tv, attn_mask=mask)

    def bwd(out):
        out.backward(td)

    return fwd, bwd


def eager_runner(T, case):
    torch, tq, tk, tv, td, tb = _torch_inputs(T, case)
    tb.requires_grad_()
    scale = 1.0 / math.sqrt(D)

    def fwd():
        for t in (tq, tk, tv, tb):
            t.grad = None
        s = torch.matmul(tq, tk.transpose(-1, -2)) * scale + _bias_matrix(torch, tb, T)
        return torch.matmul(torch.softmax(s, dim=-1), tv)

    def bwd(out):
        out.backward(td)

    return fwd, bwd


RUNNERS = {"relpos": relpos_runner, "sdpa": sdpa_runner, "eager": eager_runner}


def set_threads(n):
    import relpos
    relpos.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def time_runner(fwd, bwd, repeat):
    """Best-of-repeat forward, backward and forward+backward times in ms."""
    tf, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fwd()
        t1 = time.perf_counter()
        bwd(res)
        t2 = time.perf_counter()
        tf.append(t1 - t0)
        tb.append(t2 - t1)
        del res
    return 1e3 * min(tf), 1e3 * min(tb), 1e3 * min(a + b for a, b in zip(tf, tb))


def _status_kib(field):
    """VmRSS / VmHWM of this process in KiB. VmHWM belongs to this address space
    (ru_maxrss would carry the forking parent's high-water mark across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(impl, T, case, threads, repeat):
    """One case in this fresh process: memory of the first forward + backward,
    then best-of-repeat timings. Prints one JSON line."""
    if impl != "relpos":
        __import__("torch")  # imported before the baseline
    set_threads(threads)
    base = _status_kib("VmRSS")
    fwd, bwd = RUNNERS[impl](T, case)  # inputs, and SDPA's materialised mask, count
    bwd(fwd())
    peak = _status_kib("VmHWM")
    tf, tb, tt = time_runner(fwd, bwd, repeat)
    print(json.dumps({"extra_mib": (peak - base) / 1024.0, "fwd_ms": tf, "bwd_ms": tb, "total_ms": tt}))


def run_child(impl, T, case, threads, repeat):
    """Timing and memory of one case in a fresh process: relpos and torch each
    bring their own OpenMP runtime, whose idle spinning threads would otherwise
    steal the cores from the other's measurement."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, str(T), case, str(threads), str(repeat)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{impl} {case} T={T} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- peak

FMA_LOOP = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <omp.h>
int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 1;
    double total = 0;
    #pragma omp parallel num_threads(nt) reduction(+:total)
    {
        __m256 r[10]; for (int i = 0; i < 10; i++) r[i] = _mm256_set1_ps(0.1f * i);
        const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
        struct timespec t0, t1; long n = 50000000;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long k = 0; k < n; k++) {
            for (int i = 0; i < 10; i++) r[i] = _mm256_fmadd_ps(r[i], x, y);
            __asm__ volatile("" : "+x"(r[0]), "+x"(r[1]), "+x"(r[2]), "+x"(r[3]), "+x"(r[4]),
                             "+x"(r[5]), "+x"(r[6]), "+x"(r[7]), "+x"(r[8]), "+x"(r[9]));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        volatile float sink = _mm256_cvtss_f32(r[0]); (void)sink;
        total += n * 10.0 * 16.0 / s * 1e-9;
    }
    printf("%f\n", total);
    return 0;
}
"""


def fma_peak(threads):
    from relpos import _C
    if hasattr(_C, "fma_peak_gflops"):
        return max(float(_C.fma_peak_gflops(threads=threads)) for _ in range(5)), "relpos._C.fma_peak_gflops, best of 5"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
        with open(src, "w") as f:
            f.write("#include <stdlib.h>\n" + FMA_LOOP)
        subprocess.run(["cc", "-O2", "-mavx2", "-mfma", "-fopenmp", src, "-o", exe], check=True)
        runs = [float(subprocess.run([exe, str(threads)], capture_output=True, text=True, check=True).stdout)
                for _ in range(5)]
        return max(runs), "AVX2 FMA loop, best of 5 (benchmarks/bench_attention.py)"


# --------------------------------------------------------------------- main

def flops(T):
    per_matmul = 2.0 * B * H * T * T * D / 2.0  # causal half
    return 2 * per_matmul, 5 * per_matmul


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--long", type=int, nargs="*", default=[8192, 16384], help="relpos-only lengths")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eager-max-T", type=int, default=4096)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(HERE), "bench_results", "bench_attention.json"))
    ap.add_argument("--child", nargs=5, metavar=("IMPL", "T", "CASE", "THREADS", "REPEAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, T, case, threads, repeat = args.child
        child(impl, int(T), case, int(threads), int(repeat))
        return

    import relpos
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch, torch_version = None, None
    set_threads(args.threads)
    peak, peak_src = fma_peak(args.threads)
    cfg = relpos.config()
    print(f"relpos {cfg.get('version')} simd={cfg.get('simd')} threads={args.threads} torch={torch_version} "
          f"B={B} H={H} D={D} causal; FMA peak {peak:.1f} GFLOP/s ({peak_src})\n")

    rows = []
    plan = [(T, case, impl) for T in args.T for case in args.cases
            for impl in ("relpos", "sdpa", "eager")
            if impl == "relpos"
            or (torch is not None and not (impl == "eager" and (case == "plain" or T > args.eager_max_T)))]
    plan += [(T, case, "relpos") for T in args.long for case in args.cases if case != "t5"]
    for T, case, impl in plan:
        res = run_child(impl, T, case, args.threads, args.repeat if T <= 4096 else max(1, args.repeat // 2))
        tf, tb, tt = res["fwd_ms"], res["bwd_ms"], res["total_ms"]
        ff, fb = flops(T)
        row = {"T": T, "case": case, "impl": impl, "fwd_ms": tf, "bwd_ms": tb, "total_ms": tt,
               "gflops": (ff + fb) / tt * 1e-6, "fwd_gflops": ff / tf * 1e-6, "extra_mib": res["extra_mib"]}
        row["peak_frac"] = row["gflops"] / peak
        rows.append(row)
        print(f"  {impl:6s} {case:5s} T={T:5d}  fwd {tf:8.1f} ms  bwd {tb:8.1f} ms  "
              f"{row['gflops']:6.1f} GF/s  mem {row.get('extra_mib') or float('nan'):8.1f} MiB", flush=True)

    ref = {(r["T"], r["case"]): r for r in rows if r["impl"] == "relpos"}
    for r in rows:
        base = ref[(r["T"], r["case"])]
        r["relpos_speedup"] = r["total_ms"] / base["total_ms"]  # > 1: relpos faster
        if r.get("extra_mib") and base.get("extra_mib"):
            r["relpos_mem_frac"] = base["extra_mib"] / r["extra_mib"]

    print("\n| T | case | impl | fwd ms | bwd ms | fwd+bwd ms | GFLOP/s | % FMA peak | relpos speed-up | extra MiB "
          "| relpos mem / this |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mem = r.get("extra_mib")
        print(f"| {r['T']} | {r['case']} | {r['impl']} | {r['fwd_ms']:.1f} | {r['bwd_ms']:.1f} | {r['total_ms']:.1f} | "
              f"{r['gflops']:.1f} | {100 * r['peak_frac']:.0f}% | "
              f"{'' if r['impl'] == 'relpos' else '%.2fx' % r['relpos_speedup']} | "
              f"{'' if mem is None else '%.1f' % mem} | "
              f"{'' if r['impl'] == 'relpos' or 'relpos_mem_frac' not in r else '%.3f' % r['relpos_mem_frac']} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"config": {"B": B, "H": H, "D": D, "causal": True, "threads": args.threads,
                              "torch": torch_version, "fma_peak_gflops": peak, "fma_peak_source": peak_src,
                              "relpos": cfg},
                   "rows": rows}, f, indent=1, default=str)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
