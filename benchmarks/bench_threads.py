"""Does relpos release the GIL around its kernels? (issue 6)

relpos is set to ONE OpenMP thread; then N Python threads each run the same
long call (a GEMM, fused attention forward+backward). If the GIL were held,
N calls would take N times one call; released, they overlap on the cores.

    overlap = N * t(one call) / t(N calls in N threads)

1.0 means no overlap (GIL held); the ideal is min(N, cores). A second figure
does not depend on how busy the machine is: CPU time of the process / wall time
during the N-thread run -- above 1 only if two threads really ran at once. For
contrast both are printed for a pure-Python loop that holds the GIL.

    python benchmarks/bench_threads.py [--threads 4] [--json out.json]
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from _util import machine_info, write_json  # noqa: E402

import relpos  # noqa: E402
import relpos._C as C  # noqa: E402


def in_threads(fn, n):
    barrier = threading.Barrier(n + 1)

    def work():
        barrier.wait()
        fn()

    ts = [threading.Thread(target=work) for _ in range(n)]
    for t in ts:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return wall, (time.process_time() - c0) / wall


def measure(fn, n, reps=3):
    fn()  # warm-up
    one = min(_timed(fn) for _ in range(reps))
    runs = [in_threads(fn, n) for _ in range(reps)]
    many, par = min(runs)
    return one, many, n * one / many, par


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = args.threads
    relpos.set_num_threads(1)
    r = np.random.default_rng(0)
    a = r.standard_normal((512, 512)).astype(np.float32)
    q, k, v = (r.standard_normal((1, 4, 1024, 64)).astype(np.float32) for _ in range(3))
    dout = r.standard_normal((1, 4, 1024, 64)).astype(np.float32)

    def gemm():
        for _ in range(20):
            C.gemm(a, a)

    def attention():
        o, lse = C.attention_fwd(q, k, v, causal=True)
        C.attention_bwd(q, k, v, o, lse, dout, causal=True)

    def python_loop():  # holds the GIL: the contrast
        s = 0
        for i in range(2_000_000):
            s += i * i
        return s

    cores = len(os.sched_getaffinity(0))
    print(f"relpos threads per call: {relpos.get_num_threads()}, Python threads: {n}, cores: {cores}")
    print(f"{'call':<26}{'one call (s)':>14}{f'{n} threads (s)':>16}{'overlap':>10}{'cpu/wall':>10}"
          f"   (ideal {min(n, cores)}.0 for both)")
    out = {"machine": machine_info(), "python_threads": n, "cores": cores, "results": {}}
    for name, fn in (("gemm 512^3 x20", gemm), ("attention fwd+bwd T=1024", attention),
                     ("pure-Python loop", python_loop)):
        one, many, ov, par = measure(fn, n)
        out["results"][name] = {"one_call_s": one, "n_calls_in_threads_s": many, "overlap": ov,
                                "cpu_over_wall": par}
        print(f"{name:<26}{one:>14.4f}{many:>16.4f}{ov:>10.2f}{par:>10.2f}")
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
