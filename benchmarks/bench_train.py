"""One training step of a relpos TransformerLM against the same model in PyTorch,
eager and compiled (torch.compile, inductor on CPU).

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--threads 1,2] [--enc rope,alibi]
        [--config large,small] [--repeat N] [--quick] [--no-compile] [--json PATH]

Configurations (--config):
  large: L=4 layers, d=256, 8 heads, T=256, batch 16, vocabulary 256;
  small: the model `python -m relpos compare` and the notebooks train:
         L=2, d=64, 4 heads, T=64, batch 16, vocabulary 256.
Both: pre-LN, GELU (tanh) MLP x4, tied embedding / output head, no dropout;
position encoding RoPE (interleaved pairs) or ALiBi. One step = forward, mean
cross-entropy of the next token, backward, AdamW (lr 1e-3, weight decay 0.01).

torch.compile compiles the loss function (forward; inductor generates the
backward), with the same eager AdamW as the eager peer. Compiling takes a
minute or more per model; where it fails (no C++ compiler, an unsupported
platform) the row says why (compile_error) and the other figures still come.
--quick skips it.

Every table line and every JSON row names the CPU model, relpos' SIMD path
and GEMM micro-kernel (the figures depend on them: AVX-512 vs AVX2).

The PyTorch model is written here from torch primitives (F.linear,
F.layer_norm, F.scaled_dot_product_attention, F.gelu, F.cross_entropy,
torch.optim.AdamW; RoPE as complex products, the form of Meta's LLaMA code,
the fastest of the forms tried), with the relpos model's initial weights copied in, so
the first losses must agree (to ~1e-4 relative; printed). All peers get
the same thread count (relpos.set_num_threads, torch.set_num_threads). PyTorch
runs in a process of its own (benchmarks/train_peer.py, driven over a pipe),
where torch is imported before relpos: its libgomp keeps the user's OpenMP wait
policy (libgomp's default spin unless set; the row's peer_process.omp_env)
instead of the spin relpos asks for in its own process, and neither library's
idle threads live in the other's process. The steps are still timed
interleaved (relpos, torch, compiled, relpos, ...; each timed inside its own
process, each after the same idle gap, --gap, default 20 ms, so that no step
starts while the other process's threads still spin), so machine noise hits
all alike; after a warm-up the median step time is reported, and the best
(fastest) step beside it (on a shared machine, the step least disturbed by
other processes).

Figures per (encoding, threads):
  tokens/s of relpos and torch and their ratio;
  model FLOP utilisation: (6 * N_params * tokens + attention FLOPs) / step time,
    as a fraction of the measured FMA peak (relpos._C.fma_peak_gflops, same
    threads). N_params counts every parameter (the tied embedding is the
    output head's matrix); attention FLOPs are the causal half of
    QK^T and PV: forward 2 products, backward 4 (6 * L * d * T^2 * B in all);
  Python overhead: the part of relpos' step spent outside relpos._C calls,
    timed by wrapping every _C function during extra steps: python_share =
    1 - (wall time inside _C) / (step wall time); python_cpu_ms = the main
    thread's CPU time outside _C per step; at 1 thread also python_cpu_share =
    python_cpu_ms / the step's process CPU time (both CPU-time figures are
    not inflated by other processes on a shared machine).

Two-thread stability: spread = median step time / best step time - 1 (the
issue's target: within 10%), for relpos and for each peer (torch_spread,
compile_spread): a machine that moves every library's steps alike is noisy,
not the library.

--quick: batch 4, fewer repetitions, no torch.compile (for benchmarks/run.py --quick).
"""
import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # NumPy's BLAS pool would spin beside OpenMP

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import relpos  # noqa: E402
from relpos import _C  # noqa: E402

#: timed steps per row unless --repeat says otherwise
DEFAULT_REPEAT = {"large": 7, "small": 21}

CONFIGS = {
    "large": dict(n_layers=4, d_model=256, n_heads=8, T=256, batch=16, vocab=256, lr=1e-3, weight_decay=0.01),
    "small": dict(n_layers=2, d_model=64, n_heads=4, T=64, batch=16, vocab=256, lr=1e-3, weight_decay=0.01),
}


def machine():
    """CPU model, relpos' SIMD path and GEMM micro-kernel: printed beside every table, stored in every row."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        import platform
        cpu = platform.processor() or cpu
    return dict(cpu=cpu, simd=relpos.config()["simd"], gemm_kernel=_C.gemm_kernel())


# ------------------------------------------------------------------ relpos side

def relpos_model(enc, cfg):
    from relpos.models import TransformerLM
    from relpos.optim import AdamW

    model = TransformerLM(cfg["vocab"], d_model=cfg["d_model"], n_layers=cfg["n_layers"],
                          n_heads=cfg["n_heads"], encoding=enc, seed=0)
    opt = AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    def step(x, y):
        opt.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        opt.step()
        return loss.item()

    return model, step


@contextlib.contextmanager
def patched_core(wrap):
    """Inside the block every public function ``fn`` of relpos._C is replaced by
    ``wrap(name, fn)`` (the Python layer calls them as attributes of _C); restored after."""
    saved = {}
    for name in dir(_C):
        fn = getattr(_C, name)
        if callable(fn) and not name.startswith("_") and type(fn).__name__ == "builtin_function_or_method":
            saved[name] = fn
            setattr(_C, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(_C, name, fn)


@contextlib.contextmanager
def timed_core(by_name=None):
    """Wrap every function of relpos._C so the time spent inside them adds up
    in the yielded list: [wall seconds, calling thread's CPU seconds]; with
    ``by_name`` (a collections.Counter) each function's wall seconds also add up
    under its name."""
    spent = [0.0, 0.0]
    clock, cpu = time.perf_counter, time.thread_time

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            t0, c0 = clock(), cpu()
            try:
                return fn(*a, **k)
            finally:
                dt = clock() - t0
                spent[0] += dt
                spent[1] += cpu() - c0
                if by_name is not None:
                    by_name[name] += dt
        return inner

    with patched_core(wrap):
        yield spent


# ------------------------------------------------------------------- torch side

def torch_model(model, enc, cfg, compile=False):
    """The same network in PyTorch, weights copied from the relpos `model`;
    compile=True runs the loss through torch.compile (inductor)."""
    import torch
    import torch.nn.functional as TF

    H, d, L = cfg["n_heads"], cfg["d_model"], cfg["n_layers"]
    Dh = d // H
    T = cfg["T"]
    params = {n: torch.nn.Parameter(torch.from_numpy(np.array(p.data, copy=True)))
              for n, p in model.named_parameters()}
    # RoPE, interleaved pairs (x_2k, x_2k+1), theta_k = 10000^(-2k/Dh), written as Meta's
    # LLaMA code does it: each pair a complex number times e^{i t theta_k}. (The
    # real form, stack((x0 cos - x1 sin, x0 sin + x1 cos)), took 3.4x as long per
    # call in eager torch, 680 vs 200 us fwd+bwd at (16, 4, 64, 16), and 1.3x
    # compiled: a slow peer would flatter relpos.)
    inv = 10000.0 ** (-np.arange(0, Dh, 2, dtype=np.float64) / Dh)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    freqs = torch.complex(torch.from_numpy(np.cos(ang).astype(np.float32)),
                          torch.from_numpy(np.sin(ang).astype(np.float32)))  # (T, Dh/2)
    # ALiBi: -m_h (i - j) on and below the diagonal, -inf above; built once
    slopes = 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
    dist = np.arange(T)[:, None] - np.arange(T)[None, :]
    bias = np.where(dist >= 0, -slopes[:, None, None] * dist[None], -np.inf).astype(np.float32)
    alibi = torch.from_numpy(bias)[None]  # (1, H, T, T)

    def rope(x):  # (B, H, T, Dh)
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs).flatten(-2)

    def ln(x, pre):
        return TF.layer_norm(x, (d,), params[pre + ".weight"], params[pre + ".bias"], 1e-5)

    def lin(x, pre):
        return TF.linear(x, params[pre + ".weight"], params[pre + ".bias"])

    def forward(ids, targets):
        B, Tn = ids.shape
        x = TF.embedding(ids, params["tok_emb.weight"])
        for i in range(L):
            p = f"blocks.{i}."
            h = ln(x, p + "norm1")
            q, k, v = (lin(h, p + "attn." + n).view(B, Tn, H, Dh).transpose(1, 2)
                       for n in ("q_proj", "k_proj", "v_proj"))
            if enc == "rope":
                q, k = rope(q), rope(k)
                a = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                a = TF.scaled_dot_product_attention(q, k, v, attn_mask=alibi)
            x = x + lin(a.transpose(1, 2).reshape(B, Tn, d), p + "attn.out_proj")
            h = ln(x, p + "norm2")
            x = x + lin(TF.gelu(lin(h, p + "fc1"), approximate="tanh"), p + "fc2")
        x = ln(x, "norm_f")
        logits = TF.linear(x, params["tok_emb.weight"])
        return TF.cross_entropy(logits.reshape(B * Tn, -1), targets.reshape(-1))

    opt = torch.optim.AdamW(list(params.values()), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            betas=(0.9, 0.999), eps=1e-8)
    if compile:
        # inductor runs the complex product of RoPE as an eager op (and says so on every
        # compile); that form is still faster compiled than the fused real form (384 vs
        # 487 us fwd+bwd at (16, 4, 64, 16))
        warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
    loss_fn = torch.compile(forward, dynamic=False) if compile else forward

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


# ------------------------------------------------------------------- figures

def step_flops(model, cfg, batch):
    n_params = sum(p.data.size for p in model.parameters())
    tokens = batch * cfg["T"]
    attn = 6 * cfg["n_layers"] * cfg["d_model"] * cfg["T"] ** 2 * batch
    return 6 * n_params * tokens + attn, n_params


def set_threads(n):
    relpos.set_num_threads(n)  # torch's count is set in its own process (train_peer.py)


def step_batch(cfg):
    """The one batch every library steps on: (inputs, next tokens), int64 (batch, T)."""
    ids = np.random.default_rng(1).integers(0, cfg["vocab"], size=(cfg["batch"], cfg["T"] + 1))
    return ids[:, :-1].copy(), ids[:, 1:].copy()


def _start_peer(enc, cfg, threads, compile):
    """Start benchmarks/train_peer.py (PyTorch's side, in its own process) and
    return (process, its start-up message)."""
    spec = json.dumps(dict(enc=enc, config=cfg, threads=threads, compile=bool(compile)))
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "train_peer.py"), spec],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        return None, {"torch_error": f"the torch peer process exited with status {proc.returncode}"}
    ready = json.loads(line)
    if "torch_error" in ready:
        _stop_peer(proc)
        return None, ready
    return proc, ready


def _ask(proc, **msg):
    proc.stdin.write(json.dumps(msg) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the torch peer process died (status {proc.wait()}) on {msg}")
    return json.loads(line)


def _stop_peer(proc):
    try:
        proc.stdin.write(json.dumps(dict(cmd="quit")) + "\n")
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: idle time before every timed step. Without it a step started while the other
#: process's OpenMP threads still spun after its own step (libgomp's default spin,
#: which the torch peer keeps, lasts ~7.5 ms on the AMD EPYC VM), so on 2 cores one
#: library's step ran with a core taken by the other's idle threads; relpos then
#: saw its partner thread stall and backed off to one thread (the row's
#: relpos_backed_off_steps): small model, 2 threads, 14.5 ms at 1-thread speed in
#: 19-21 of 21 steps, against 9.1 ms and no back-off with the gap. Every library
#: gets the same gap, so each step starts from sleeping threads, as a step does
#: after a data loader's pause.
GAP_S = 0.02


def _median_best(times, tokens):
    med, best = float(np.median(times)), float(np.min(times))
    return med, best, tokens / med, tokens / best


def measure(enc, threads, cfg, repeat, warmup, peak, with_torch=True, with_compile=True, config_name="large",
            log=print, gap=GAP_S):
    """One row: relpos, torch eager and torch.compile step times at `threads` for encoding `enc`;
    every timed step starts `gap` seconds after the previous one ended (see GAP_S)."""
    set_threads(threads)
    batch = cfg["batch"]
    x, y = step_batch(cfg)
    model, r_step = relpos_model(enc, cfg)
    row = dict(benchmark="train_step", config=config_name, encoding=enc, threads=threads, batch=batch, T=cfg["T"],
               d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], repeat=repeat,
               load_avg=os.getloadavg()[0], cpus=os.cpu_count(), **machine())
    peers = []  # "torch" (eager) and "compile" (torch.compile), stepped in the peer process
    proc = None
    if with_torch:
        proc, ready = _start_peer(enc, cfg, threads, with_compile)
        if "torch_error" in ready:
            row["torch_error"] = ready["torch_error"]
        else:
            peers.append("torch")
            row["loss_torch"] = ready["loss_torch"]
            row["peer_process"] = dict(omp_env=ready["omp_env"], torch_threads=ready["torch_threads"])
            if "loss_compile" in ready:
                peers.append("compile")
                row["loss_compile"], row["compile_s"] = ready["loss_compile"], ready["compile_s"]
            elif with_compile:
                row["compile_error"] = ready.get("compile_error", "torch.compile skipped: no reason given")
                if log:
                    log(row["compile_error"])
            else:
                row["compile_error"] = "torch.compile skipped: not asked for (--no-compile or --quick)"
    try:
        # first step of each from the same weights: the losses must agree
        row["loss_relpos"] = r_step(x, y)
        if "torch" in peers:
            row["loss_rel_diff"] = abs(row["loss_relpos"] - row["loss_torch"]) / abs(row["loss_torch"])
        if "compile" in peers:
            row["loss_compile_rel_diff"] = abs(row["loss_relpos"] - row["loss_compile"]) / abs(row["loss_compile"])
        for _ in range(warmup):
            r_step(x, y)
            if peers:
                _ask(proc, cmd="warm")
        times = {"relpos": [], **{k: [] for k in peers}}
        backed_off = 0  # relpos steps that ended with relpos backed off to one thread (see below)
        for _ in range(repeat):  # interleaved: noise on the machine hits every library alike
            time.sleep(gap)
            t0 = time.perf_counter()
            r_step(x, y)
            times["relpos"].append(time.perf_counter() - t0)
            backed_off += relpos.config()["backing_off"]
            for name in peers:
                time.sleep(gap)
                times[name].append(_ask(proc, cmd="step", peer=name)["s"])
    finally:
        if proc is not None:
            _stop_peer(proc)
    # Python share: extra steps with every _C function timed
    # (the main thread's CPU time outside _C is the Python layer's own work,
    # unaffected by other processes; at 1 thread the process CPU time of a step
    # is its compute time, so their ratio is a load-independent share)
    shares, py_ms, cpu_shares = [], [], []
    with timed_core() as spent:
        for _ in range(max(3, repeat // 2)):
            spent[0] = spent[1] = 0.0
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            r_step(x, y)
            wall, main_cpu, proc_cpu = time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0
            shares.append(1.0 - spent[0] / wall)
            py_ms.append(1e3 * (main_cpu - spent[1]))
            cpu_shares.append((main_cpu - spent[1]) / proc_cpu)
    flops, n_params = step_flops(model, cfg, batch)
    tokens = batch * cfg["T"]
    r_med, r_min, r_tok, r_best_tok = _median_best(times["relpos"], tokens)
    row.update(n_params=n_params, step_gflop=flops / 1e9, relpos_s=r_med, relpos_tok_s=r_tok,
               relpos_steps_s=1.0 / r_med, relpos_gflops=flops / r_med / 1e9, python_share=float(np.median(shares)),
               python_cpu_ms=float(np.median(py_ms)),
               python_cpu_share=float(np.median(cpu_shares)) if threads == 1 else None,
               peak_gflops=peak, mfu=flops / r_med / 1e9 / peak if peak else None,
               relpos_best_tok_s=r_best_tok, mfu_best=flops / r_min / 1e9 / peak if peak else None,
               relpos_spread=r_med / r_min - 1.0)
    for name, prefix in (("torch", "torch"), ("compile", "compile")):
        if name not in times:
            continue
        t_med, t_min, t_tok, t_best_tok = _median_best(times[name], tokens)
        row.update({f"{prefix}_s": t_med, f"{prefix}_tok_s": t_tok, f"{prefix}_steps_s": 1.0 / t_med,
                    f"{prefix}_gflops": flops / t_med / 1e9,
                    f"{prefix}_mfu": flops / t_med / 1e9 / peak if peak else None,
                    f"{prefix}_best_tok_s": t_best_tok,
                    # the peer's own spread: how much the machine moved its steps in the same minutes
                    f"{prefix}_spread": t_med / t_min - 1.0})
        # ratio: relpos speed / peer speed (> 1: relpos faster); "ratio" is vs eager
        key = "ratio" if name == "torch" else "ratio_compile"
        row[key] = t_med / r_med
        row[key + "_best"] = t_min / r_min
    row["gap_s"] = gap
    # relpos backs off to one thread for a second when its threads stall (another
    # process's threads on their cores, e.g. the peer's spinning after its step)
    row["relpos_backed_off_steps"] = backed_off if threads > 1 else None
    return row


def fma_peaks(threads, measure=None, tries=2):
    """{n: GFLOP/s} the FMA peak for each thread count, and {n: measured}.

    Each is the best of `tries` 0.3 s measurements. On a shared VM the host
    sometimes holds one of the vCPUs while the n-thread peak is measured; that
    figure then says one core's speed, and an MFU against it exceeds 100%. The
    hardware's peak on n cores is at least n times one core's, so the peak used
    for n > 1 threads is max(measured, n x the 1-thread peak)."""
    measure = measure or (lambda n: _C.fma_peak_gflops(threads=n, seconds=0.3))
    counts = sorted(set(threads) | {1})
    measured = {n: max(measure(n) for _ in range(tries)) for n in counts}
    used = {n: max(measured[n], n * measured[1]) for n in counts}
    return {n: used[n] for n in threads}, {n: measured[n] for n in threads}


def run(threads=(1, 2), encodings=("rope", "alibi"), quick=False, repeat=None, with_torch=True, log=print,
        configs=("large",), with_compile=True, gap=GAP_S):
    """All rows (dicts) of the benchmark; one per (configuration, encoding, thread
    count), plus one 'scaling' row per (configuration, encoding) (speed at max
    threads / at 1 thread)."""
    warmup = 1 if quick else 2
    rows = []
    peaks, measured = fma_peaks(threads)
    m = machine()
    for config_name in configs:
        cfg = dict(CONFIGS[config_name])
        if quick:
            cfg["batch"] = 4
        if log:
            log(f"== {config_name}: L={cfg['n_layers']} d={cfg['d_model']} H={cfg['n_heads']} T={cfg['T']} "
                f"B={cfg['batch']} | CPU {m['cpu']} | SIMD {m['simd']}, GEMM kernel {m['gemm_kernel']} | FMA peak "
                + ", ".join(f"{n} thr {peaks[n]:.0f}" + (f" (measured {measured[n]:.0f}, below {n} x 1 thread)"
                                                          if measured[n] < peaks[n] else "") for n in threads)
                + " GFLOP/s")
        # steps per row: the small model's ~15 ms steps need more of them for a stable median
        reps = repeat or (3 if quick else DEFAULT_REPEAT[config_name])
        for enc in encodings:
            per = {}
            for n in threads:
                row = measure(enc, n, cfg, reps, warmup, peaks[n], with_torch, with_compile and not quick,
                              config_name, log, gap)
                row["peak_gflops_measured"] = measured[n]
                rows.append(row)
                per[n] = row
                if log:
                    log(format_row(row))
            if 1 in per and len(per) > 1:
                top = max(per)
                sc = dict(benchmark="train_scaling", config=config_name, encoding=enc, threads=top, **m,
                          relpos_speedup=per[1]["relpos_s"] / per[top]["relpos_s"],
                          relpos_speedup_best=per[top]["relpos_best_tok_s"] / per[1]["relpos_best_tok_s"])
                for name in ("torch", "compile"):
                    if f"{name}_s" in per[1] and f"{name}_s" in per[top]:
                        sc[f"{name}_speedup"] = per[1][f"{name}_s"] / per[top][f"{name}_s"]
                        sc[f"{name}_speedup_best"] = per[top][f"{name}_best_tok_s"] / per[1][f"{name}_best_tok_s"]
                rows.append(sc)
                if log:
                    log(json.dumps(sc))
    return rows


def format_row(r):
    s = (f"[{r.get('config', 'large')} | {r.get('cpu', '?')} | {r.get('simd', '?')}/{r.get('gemm_kernel', '?')}] "
         f"{r['encoding']:6s} threads={r['threads']} relpos {r['relpos_tok_s']:8.0f} tok/s "
         f"({1e3 * r['relpos_s']:.2f} ms/step, {r['relpos_gflops']:6.1f} GFLOP/s, MFU {100 * (r['mfu'] or 0):4.1f}%, "
         f"best {r['relpos_best_tok_s']:.0f} tok/s, median {100 * r['relpos_spread']:.0f}% above best; "
         + (f"backed off to 1 thread in {r['relpos_backed_off_steps']} of {r['repeat']} steps; "
            if r.get("relpos_backed_off_steps") is not None else "")
         + f"python {100 * r['python_share']:4.1f}%, {r['python_cpu_ms']:.1f} ms CPU"
         + (f" = {100 * r['python_cpu_share']:.1f}% of step CPU" if r.get("python_cpu_share") is not None else "")
         + ")")
    if "torch_tok_s" in r:
        s += (f" | torch eager {r['torch_tok_s']:8.0f} tok/s  ratio {r['ratio']:.2f}x"
              f" (best of {r.get('repeat', '?')}: {r['relpos_best_tok_s']:.0f} vs {r['torch_best_tok_s']:.0f},"
              f" {r['ratio_best']:.2f}x, MFU {100 * (r['mfu_best'] or 0):.1f}%; torch's median"
              f" {100 * r['torch_spread']:.0f}% above its best)")
    if "compile_tok_s" in r:
        s += (f" | torch.compile {r['compile_tok_s']:8.0f} tok/s  ratio {r['ratio_compile']:.2f}x"
              f" (best {r['compile_best_tok_s']:.0f}, {r['ratio_compile_best']:.2f}x, median"
              f" {100 * r['compile_spread']:.0f}% above it; "
              f"first call incl. compiling {r['compile_s']:.1f} s)")
    elif "compile_error" in r:
        s += f" | {r['compile_error']}"
    if "torch_tok_s" in r:
        s += (f" | first loss relpos {r['loss_relpos']:.6f} torch {r['loss_torch']:.6f}"
              f" (rel diff {r['loss_rel_diff']:.1e})")
    elif "torch_error" in r:
        s += f" | {r['torch_error']}"
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--enc", default="rope,alibi")
    ap.add_argument("--config", default="large,small", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed steps per row (default: 7 for large, 21 for small; 3 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--gap", type=float, default=GAP_S,
                    help=f"seconds of idle before every timed step, every library alike (default {GAP_S})")
    args = ap.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        ap.error(f"--repeat must be >= 1 timed steps; got {args.repeat}")
    if not args.gap >= 0:
        ap.error(f"--gap must be >= 0 seconds; got {args.gap}")
    threads = tuple(int(t) for t in args.threads.split(","))
    configs = tuple(c for c in args.config.split(",") if c)
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"--config: unknown configuration {c!r}; known: {', '.join(CONFIGS)}")
    rows = run(threads, tuple(args.enc.split(",")), args.quick, args.repeat, not args.no_torch, configs=configs,
               with_compile=not args.no_compile, gap=args.gap)
    out = dict(benchmark="train", machine=machine(), configs={c: CONFIGS[c] for c in configs},
               quick=args.quick, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
