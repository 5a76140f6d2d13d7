"""Run every benchmark in benchmarks/ and print ONE markdown table.

    OMP_NUM_THREADS=2 python benchmarks/run.py [--quick [--full train]] [--threads 1,2]
        [--only train,matmul] [--json bench_results/run.json] [--timeout 3600]

Benchmarks (each run as its own process with --json, so a crash, a timeout
or a missing torch is reported in the table as such, never stops the run):

  matmul     bench_matmul.py     relpos GEMM vs NumPy's BLAS, GFLOP/s
  attention  bench_attention.py  fused attention fwd+bwd vs torch SDPA, GFLOP/s
  encodings  bench_encodings.py  encoding fwd+bwd time; peer: plain attention
                                 (relpos attention_core), and torch SDPA for it
  train      bench_train.py      training step (large and small models) vs torch eager and torch.compile, tokens/s
  floor      bench_step_floor.py training step (1 thread) vs the sum of its C calls timed alone, ms

Every figure sits beside its peer's from the same run, with the ratio
(> 1: relpos ahead) and the fraction of the measured FMA peak at that thread
count (relpos._C.fma_peak_gflops; blank where no FLOP count applies). A
"scaling" row per case gives the speed at the highest thread count over the
speed at 1 thread, for relpos and for the peer. --quick passes each script
its quick mode (smaller shapes, fewer repetitions).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_script(script, args, timeout, env=None):
    """Run benchmarks/<script> with args plus --json <tmp>; returns (json or None, error or None, seconds)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    os.unlink(path)
    cmd = [sys.executable, os.path.join(HERE, script)] + list(args) + ["--json", path]
    t0 = time.perf_counter()
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    if r.returncode != 0 or not os.path.exists(path):
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"exit {r.returncode}: {tail[0][:160]}", dt
    with open(path) as f:
        data = json.load(f)
    os.unlink(path)
    return data, None, dt


def row(bench, case, threads, relpos, peer, peer_name, unit, peak=None, flops_per_unit=None, higher_better=True,
        note=""):
    """One table row; ratio > 1 means relpos is ahead. flops_per_unit: GFLOP
    per unit of the figure (1 for GFLOP/s), to compare with peak (GFLOP/s)."""
    r = dict(benchmark=bench, case=case, threads=threads, relpos=relpos, peer=peer, peer_name=peer_name, unit=unit,
             note=note)
    if relpos is not None and peer:
        r["ratio"] = relpos / peer if higher_better else peer / relpos
    if peak and relpos is not None and flops_per_unit is not None:
        r["frac_peak"] = relpos * flops_per_unit / peak
    return r


def scaling_rows(rows, higher_better_units=("GFLOP/s", "tokens/s")):
    """Speed at the top thread count / speed at 1 thread, relpos and peer, per (benchmark, case)."""
    out = []
    by = {}
    for r in rows:
        if r.get("relpos") is None or r["benchmark"] == "scaling":
            continue
        by.setdefault((r["benchmark"], r["case"]), {})[r["threads"]] = r
    for (bench, case), per in by.items():
        if 1 not in per or len(per) < 2:
            continue
        top = max(per)
        a, b = per[1], per[top]
        hb = a["unit"] in higher_better_units

        def sp(x1, x2):
            if x1 is None or x2 is None or not x1 or not x2:
                return None
            return x2 / x1 if hb else x1 / x2

        out.append(dict(benchmark="scaling", case=f"{bench}: {case}", threads=f"1→{top}",
                        relpos=sp(a["relpos"], b["relpos"]), peer=sp(a.get("peer"), b.get("peer")),
                        peer_name=a.get("peer_name"), unit="speed-up", note=""))
    return out


# ------------------------------------------------------------------ benchmarks

def bench_matmul(threads, quick, timeout):
    args = ["--threads", ",".join(map(str, threads))] + (["--quick", "--min-time", "0.1"] if quick else [])
    data, err, dt = run_script("bench_matmul.py", args, timeout)
    if err:
        return [dict(benchmark="matmul", case="(all)", threads="-", error=err)]
    rows = []
    for r in data["results"]:
        rows.append(row("matmul", f"{r['case']} ({r['M']}x{r['N']}x{r['K']})", r["threads"], r["relpos_gflops"],
                        r["numpy_gflops"], "numpy @ (BLAS)", "GFLOP/s", r["peak_gflops"], 1.0))
    return rows


def bench_attention(threads, quick, timeout):
    rows = []
    for n in threads:
        args = ["--threads", str(n), "--long"]
        args += ["--T", "512", "--repeat", "2", "--cases", "plain", "alibi"] if quick else ["--T", "1024", "2048"]
        data, err, dt = run_script("bench_attention.py", args, timeout)
        if err:
            rows.append(dict(benchmark="attention", case="(all)", threads=n, error=err))
            continue
        peak = data["config"]["fma_peak_gflops"]
        res = data["rows"]
        for r in res:
            if r["impl"] != "relpos":
                continue
            sdpa = next((p for p in res if p["impl"] == "sdpa" and p["T"] == r["T"] and p["case"] == r["case"]), None)
            rows.append(row("attention", f"{r['case']} T={r['T']} fwd+bwd", n, r["gflops"],
                            sdpa["gflops"] if sdpa else None, "torch SDPA" if sdpa else "(torch missing)",
                            "GFLOP/s", peak, 1.0))
    return rows


def bench_encodings(threads, quick, timeout):
    rows = []
    for n in threads:
        args = ["--threads", str(n)]
        args += ["--T", "512", "--only", "rope,alibi,t5,xpos,shaw"] if quick else ["--T", "512,2048"]
        data, err, dt = run_script("bench_encodings.py", args, timeout)
        if err:
            rows.append(dict(benchmark="encodings", case="(all)", threads=n, error=err))
            continue
        seen_T = set()
        for r in data["rows"]:
            if r["T"] not in seen_T:
                seen_T.add(r["T"])
                rows.append(row("encodings", f"plain attention T={r['T']} fwd+bwd", n, 1e3 * r["attention_s"],
                                None if r.get("torch_sdpa_s") is None else 1e3 * r["torch_sdpa_s"],
                                "torch SDPA" if r.get("torch_sdpa_s") else "(torch missing)", "ms",
                                higher_better=False))
            rows.append(row("encodings", f"{r['label']} T={r['T']} fwd+bwd", n, 1e3 * (r["fwd_s"] + r["bwd_s"]),
                            1e3 * r["attention_s"], "plain attention (relpos)", "ms", higher_better=False,
                            note="ratio = attention time / encoding time"))
    return rows


def bench_train(threads, quick, timeout):
    args = ["--threads", ",".join(map(str, threads))] + (["--quick"] if quick else [])
    data, err, dt = run_script("bench_train.py", args, timeout)
    if err:
        return [dict(benchmark="train", case="(all)", threads="-", error=err)]
    rows = []
    for r in data["rows"]:
        if r.get("benchmark") != "train_step":
            continue
        note = (f"MFU {100 * r['mfu']:.1f}% (torch {100 * r['torch_mfu']:.1f}%); python {100 * r['python_share']:.1f}%"
                if r.get("torch_mfu") is not None else f"MFU {100 * (r['mfu'] or 0):.1f}%; "
                f"python {100 * r['python_share']:.1f}%")
        if r.get("python_cpu_share") is not None:
            note += f" ({r['python_cpu_ms']:.1f} ms CPU = {100 * r['python_cpu_share']:.1f}% of step CPU)"
        if r.get("ratio_best") is not None:
            note += (f"; best step {r['relpos_best_tok_s']:.0f} vs {r['torch_best_tok_s']:.0f} tok/s "
                     f"= {r['ratio_best']:.2f}x, MFU {100 * r['mfu_best']:.1f}%")
        if r.get("relpos_spread") is not None:
            note += f"; median above best: relpos {100 * r['relpos_spread']:.0f}%" + (
                f", torch {100 * r['torch_spread']:.0f}%" if r.get("torch_spread") is not None else "")
        if r.get("load_avg") is not None:
            note += f"; load {r['load_avg']:.1f}"
        if "loss_rel_diff" in r:
            note += f"; first-loss rel diff {r['loss_rel_diff']:.1e}"
        if r.get("ratio_compile") is not None:
            note += f"; vs torch.compile {r['ratio_compile']:.2f}x ({r['compile_tok_s']:.0f} tok/s)"
        elif r.get("compile_error"):
            note += "; " + r["compile_error"]
        if r.get("cpu"):
            note += f"; {r['cpu']}, {r['simd']}/{r['gemm_kernel']}"
        if "torch_error" in r:
            note += "; " + r["torch_error"]
        what = f"{r.get('config', 'large')} {r['encoding']} step B={r['batch']} T={r['T']}"
        rows.append(row("train", what, r["threads"], r["relpos_tok_s"],
                        r.get("torch_tok_s"), "torch eager" if "torch_tok_s" in r else "(torch missing)",
                        "tokens/s", r["peak_gflops"], r["step_gflop"] / (r["batch"] * r["T"]), note=note))
    return rows


def bench_floor(threads, quick, timeout):
    """The training step beside its kernels timed alone (bench_step_floor.py), 1 thread."""
    args = ["--threads", "1"] + (["--config", "small", "--steps", "5", "--reps", "2"] if quick
                                 else ["--config", "small,large", "--steps", "7", "--reps", "3"])
    data, err, dt = run_script("bench_step_floor.py", args, timeout)
    if err:
        return [dict(benchmark="floor", case="(all)", threads=1, error=err)]
    rows = []
    for r in data["rows"]:
        inside = sum(k["ms_in_step"] for k in r["kernels"])
        note = (f"{r['calls_per_step']} _C calls: {inside:.2f} ms inside the step, Python {r['python_cpu_ms']:.2f} "
                f"ms CPU; ratio = floor / step")
        rows.append(row("floor", f"{r['config']} {r['encoding']} step vs its kernels alone", r["threads"],
                        r["step_median_ms"], r["floor_ms"], "kernels alone (floor)", "ms", higher_better=False,
                        note=note))
    return rows


BENCHES = {"matmul": bench_matmul, "attention": bench_attention, "encodings": bench_encodings,
           "train": bench_train, "floor": bench_floor}


def fmt(x, digits=1):
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"


def table(rows):
    lines = ["| benchmark | case | threads | relpos | peer | peer is | unit | relpos/peer | % FMA peak | note |",
             "|---|---|---|---:|---:|---|---|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['benchmark']} | {r['case']} | {r['threads']} | FAILED | | | | | | {r['error']} |")
            continue
        digits = 2 if r["unit"] in ("ms", "speed-up") else 1
        pk = "" if r.get("frac_peak") is None else f"{100 * r['frac_peak']:.0f}%"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['benchmark']} | {r['case']} | {r['threads']} | {fmt(r['relpos'], digits)} | "
                     f"{fmt(r.get('peer'), digits)} | {r.get('peer_name') or ''} | {r['unit']} | {ratio} | {pk} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's quick mode")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--full", default="", help="with --quick: benchmarks that still run in full mode (e.g. train)")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench_results", "run.json"))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark process")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    only = [b for b in args.only.split(",") if b] or list(BENCHES)
    full = set(b for b in args.full.split(",") if b)
    unknown = [b for b in only if b not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    rows = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for name in only:
        t0 = time.perf_counter()
        try:
            got = BENCHES[name](threads, args.quick and name not in full, args.timeout)
        except Exception as e:  # a benchmark's output we could not read: report, go on
            got = [dict(benchmark=name, case="(all)", threads="-", error=f"{type(e).__name__}: {e}")]
        rows += got
        print(f"[{name}: {len(got)} rows in {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    rows += scaling_rows(rows)
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    header = (f"relpos benchmarks, {started}, {cpu}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} at the end"
              + (f" (quick mode{', except ' + ','.join(sorted(full)) if full else ''})" if args.quick else ""))
    print(header + "\n")
    print(table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(header=header, quick=args.quick, threads=threads, rows=rows), f, indent=2, default=str)
    print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
