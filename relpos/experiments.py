"""Compare position encodings: train the same small model with each, test longer.

    >>> from relpos.experiments import compare
    >>> res = compare(["sinusoidal", "rope", "alibi"], train_len=64, steps=300)
    >>> print(res.table())          # rows: encodings; columns: eval lengths
    >>> res.plot()                  # eval length vs perplexity, one line per encoding
    >>> res.save("results.json")

Every (encoding, seed) pair is one *run* described by a plain dict of options
(see :func:`run_config`), so grids run anywhere: :func:`sweep` takes any
``concurrent.futures.Executor`` (local processes by default, a Dask cluster
through ``client.get_executor()``) and gives the same numbers as a serial run,
because relpos results do not depend on the thread count.
"""
from __future__ import annotations

import copy
import csv
import functools
import html
import json
import multiprocessing
import os
import queue as _q
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing.managers import SyncManager

import numpy as np
from tqdm.auto import tqdm

from . import encodings
from ._config import get_num_threads, set_num_threads
from .data import LMData, default_corpus, get_task, load_text
from .encodings.rotary import rope_encodings, rope_scaling
from .models import TransformerLM
from .train import evaluate_lengths, fit

__all__ = ["DEFAULT_ENCODINGS", "ALL_ENCODINGS", "DEFAULTS", "DEFAULT_SEEDS", "EXTEND_METHODS", "TASK_PRESETS",
           "run_config",
           "compare", "sweep", "CompareResult", "t_quantile"]

#: the encodings the default comparison covers
DEFAULT_ENCODINGS = ("none", "sinusoidal", "learned", "rope", "alibi", "t5", "kerple", "fire", "shaw")

#: model and training defaults of a comparison run (small enough for a laptop)
DEFAULTS = dict(
    task="lm", train_len=None, eval_lens=None, steps=None, seed=0,
    d_model=64, n_layers=None, n_heads=4, d_ff=None, norm="layernorm", pre_ln=True, dropout=0.0,
    batch_size=None, lr=None, warmup=None, weight_decay=0.1, clip=1.0,
    text=None, text_file=None, val_fraction=0.1, eval_tokens=16384, n_eval=256,
    encoding_options=None, threads=None, impl="auto", task_options=None,
    extend=None, extend_steps=0, extend_lr=None,
)

#: seeds of a default comparison: three, so that every cell has a 95% interval
DEFAULT_SEEDS = (0, 1, 2)

#: context-extension methods ``compare(extend=...)`` applies at inference to every
#: RoPE model of a run: name -> RoPE scaling and fixed options. The factor s is
#: eval length / train length (sequence lengths for tasks), except for "dynamic",
#: whose rule takes the length of each call (with HF's ``factor`` 2, the value
#: of HF's examples; with factor 1 it would equal "ntk" at s = L/L_train here).
EXTEND_METHODS = {
    "pi": dict(scaling="linear"),
    "ntk": dict(scaling="ntk"),
    "dynamic": dict(scaling="dynamic", scaling_factor=2.0),
    "yarn": dict(scaling="yarn"),
    "llama3": dict(scaling="llama3", low_freq_factor=1.0, high_freq_factor=4.0),
}


def ALL_ENCODINGS():
    """Every registered encoding name."""
    return [row["name"] for row in encodings.available()]


#: per-kind defaults for what DEFAULTS leaves as None. The LM's 600 steps (1500 until
#: issue 11) keep the default 9 x 3-seed comparison near 2 minutes on 2 cores (2 min 11 s);
#: the models are less trained (RoPE 5.90 perplexity at 64 against 4.60 after 1500 steps)
#: but the length picture and the ranking at 8x are the same (README, "What you should see").
KIND_DEFAULTS = {"lm": dict(train_len=64, steps=600, batch_size=16, n_layers=2, lr=3e-3),
                 "task": dict(train_len=8, steps=3000, batch_size=32, n_layers=3, lr=1e-3)}
#: per-task settings over KIND_DEFAULTS (issue 13), from probes on 2 cores (README, "What
#: you should see"): with a <bos> token, 3000 steps, peak learning rate 1e-3 and these
#: depths every default encoding reaches >= 90% mean exact match at the training size on
#: copy (3 layers, 27 of 27 runs >= 0.97) and reverse (4 layers and 4000 steps; 3 layers
#: gave NoPE 75%; 26 of 27 runs at 1.000, one sinusoidal seed at 0.87). At the LM's 3e-3,
#: learned absolute positions stalled on copy (one seed at 0.63, another at 0.93).
#: Addition reached no exact match at all with full-size operands at one size per batch
#: (3 layers, up to 6000 steps, sizes 5 or 8, with or without a curriculum, learning rate
#: 3e-3 or 1e-3). With AdditionTask's default pad=True (training problems at one width,
#: digit counts balanced), sizes 1-4, 4 layers, peak learning rate 3e-3 and 6000 steps,
#: all 27 runs reach >= 0.90 (25 of them >= 0.99; 20 min 48 s on 2 cores). At 3000 steps
#: (10 min 42 s) one seed each of NoPE, KERPLE and FIRE was still on a plateau (0.00-0.15);
#: 4500 steps, batch 64, d_model 128, 2 heads or 3 layers x 5000 steps each left one of
#: those three below 0.9. Sizes 1-5 with 3 layers gave 22 of 27 (ALiBi 1 of 3 seeds); at
#: size 8 and 1e-3 the bias encodings and NoPE stayed near 0 after 3000 steps.
TASK_PRESETS = {"copy": dict(n_layers=3), "reverse": dict(n_layers=4, steps=4000),
                "addition": dict(train_len=4, n_layers=4, lr=3e-3, steps=6000)}
#: the multiples of train_len evaluated by default
KIND_EVAL_MULTIPLES = {"lm": (1, 2, 4, 8), "task": (1, 1.25, 1.5, 2)}
#: task options a comparison uses unless told otherwise (see relpos.data.Task)
TASK_DEFAULT_OPTIONS = {"bos": True}


def _preset(task):
    """The defaults a run of this task takes where its config says None
    (KIND_DEFAULTS of its kind, with the task's own TASK_PRESETS over them)."""
    if task == "lm":
        return dict(KIND_DEFAULTS["lm"])
    return dict(KIND_DEFAULTS["task"], **TASK_PRESETS.get(task, {}))


def _resolve(config):
    """Fill defaults; check names and sizes. Returns a new dict."""
    cfg = dict(DEFAULTS)
    unknown = sorted(set(config) - set(DEFAULTS) - {"encoding", "label", "progress", "_progress_queue",
                                                    "_progress_tag"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in run config; known: encoding, progress, "
                         f"{', '.join(sorted(DEFAULTS))}")
    cfg.update(config)
    if "encoding" not in cfg:
        raise ValueError("a run config needs 'encoding'")
    kind = "lm" if cfg["task"] == "lm" else "task"
    for key, val in _preset(cfg["task"]).items():
        if cfg[key] is None:
            cfg[key] = val
    if kind == "task":
        cfg["task_options"] = {**TASK_DEFAULT_OPTIONS, **(cfg["task_options"] or {})}
    tl = cfg["train_len"]
    if isinstance(tl, bool) or not isinstance(tl, (int, np.integer)) or tl < 1:
        raise ValueError(f"train_len must be a positive int; got {tl!r}")
    cfg["train_len"] = int(tl)
    if cfg["eval_lens"] is None:
        cfg["eval_lens"] = sorted({max(1, int(round(cfg["train_len"] * m))) for m in KIND_EVAL_MULTIPLES[kind]})
    lens = list(cfg["eval_lens"])
    if not lens or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in lens):
        raise ValueError(f"eval_lens must be a non-empty list of positive ints; got {cfg['eval_lens']!r}")
    cfg["eval_lens"] = sorted({int(v) for v in lens})
    cfg["extend"] = _check_extend(cfg["extend"])
    es = cfg["extend_steps"]
    if isinstance(es, bool) or not isinstance(es, (int, np.integer)) or es < 0:
        raise ValueError(f"extend_steps must be an int >= 0; got {es!r}")
    cfg["extend_steps"] = int(es)
    if cfg["extend_steps"] and cfg["task"] != "lm":
        raise ValueError("extend_steps (a fine-tune at the longest evaluation length) is for language modelling; "
                         "on a synthetic task it would train on the test sizes")
    return cfg


def _check_extend(extend):
    """None or a list of EXTEND_METHODS names (from a list or a comma-separated string)."""
    if extend is None or extend == () or extend == []:
        return None
    if isinstance(extend, str):
        extend = [e for e in extend.split(",") if e.strip()]
    out = []
    for e in extend:
        if not isinstance(e, str):
            raise TypeError(f"extend must name methods (str); got {e!r}")
        e = e.strip().lower()
        if e == "longrope":
            raise ValueError("extend='longrope' needs rescale factors found by LongRoPE's search, which relpos "
                             "does not run; use RoPE(scaling='longrope', short_factor=..., long_factor=...) "
                             "with factors of your own")
        if e not in EXTEND_METHODS:
            raise ValueError(f"unknown extend method {e!r}; known: {', '.join(EXTEND_METHODS)}")
        if e not in out:
            out.append(e)
    return out or None


def _build_data(cfg):
    if cfg["task"] == "lm":
        if cfg["text"] is not None:
            text = cfg["text"]
        elif cfg["text_file"] is not None:
            text = load_text(cfg["text_file"])
        else:
            text = default_corpus()
        data = LMData(text, val_fraction=cfg["val_fraction"])
        data.check_seq_len(cfg["train_len"], "train")
        return data
    lo = 1
    return get_task(cfg["task"], train_lengths=(lo, cfg["train_len"]),
                    test_lengths=[L for L in cfg["eval_lens"] if L > cfg["train_len"]] or None,
                    **(cfg["task_options"] or {}))


def _build_model(cfg, data):
    if cfg["task"] == "lm":
        max_len = cfg["train_len"]
    else:
        max_len = data.seq_len(cfg["train_len"])
    opts = dict(cfg["encoding_options"] or {})
    enc = cfg["encoding"]
    if encodings.is_encoding(enc):
        enc = copy.deepcopy(enc)  # every run starts from the instance as it was given
    return TransformerLM(data.vocab_size, d_model=cfg["d_model"], n_layers=cfg["n_layers"],
                         n_heads=cfg["n_heads"], encoding=enc, max_len=max_len,
                         d_ff=cfg["d_ff"], norm=cfg["norm"], pre_ln=cfg["pre_ln"], dropout=cfg["dropout"],
                         impl=cfg["impl"], seed=cfg["seed"], **opts)


def run_config(config: dict) -> dict:
    """Train and evaluate one model described by ``config`` (a dict; missing
    keys take :data:`DEFAULTS`; ``encoding`` is required). Picklable and
    self-contained, so it runs in another process or on a Dask worker.

    Returns a JSON-ready dict: encoding, seed, metrics {str(length): value or
    None}, final training loss, losses (every step), timings, threads (the
    thread counts the run used, in order: more than one when it ran in
    :func:`sweep`'s pool and took an idle worker's cores), n_params, config.
    """
    cfg = _resolve(config)
    progress = bool(config.get("progress", False))
    queue, tag = config.get("_progress_queue"), config.get("_progress_tag")
    every = max(1, int(cfg["steps"]) // 50)
    # in sweep's own worker pool: take the cores of idle workers (see sweep); never with a threads key
    pool = _POOL if cfg["threads"] is None else None
    used = []

    def take_spare():
        n = get_num_threads()
        if pool is not None and pool[0] + pool[1].value != n:
            n = pool[0] + pool[1].value
            set_num_threads(n)
        if not used or used[-1] != n:
            used.append(n)

    def callback(step, loss):
        take_spare()
        if queue is not None and (step % every == 0 or step == cfg["steps"]):
            queue.put((tag, step))
    prev_threads = None
    if cfg["threads"] is not None:
        prev_threads = get_num_threads()
        set_num_threads(int(cfg["threads"]))
    take_spare()
    try:
        data = _build_data(cfg)
        model = _build_model(cfg, data)
        t0 = time.perf_counter()
        hist = fit(model, data, cfg["steps"], batch_size=cfg["batch_size"], seq_len=cfg["train_len"],
                   lr=cfg["lr"], warmup=cfg["warmup"], weight_decay=cfg["weight_decay"], clip=cfg["clip"],
                   seed=cfg["seed"], progress=progress, callback=callback,
                   desc=f"{config.get('label') or _label(cfg['encoding'])} seed {cfg['seed']}")
        t1 = time.perf_counter()
        take_spare()
        metrics = evaluate_lengths(model, data, cfg["eval_lens"], max_tokens=cfg["eval_tokens"],
                                   n_samples=cfg["n_eval"], seed=cfg["seed"])
        t2 = time.perf_counter()
        extensions = _extend(model, data, cfg, config.get("label") or _label(cfg["encoding"]))
    finally:
        if prev_threads is not None:
            set_num_threads(prev_threads)
    public = {k: v for k, v in cfg.items() if k not in ("text", "progress") and not k.startswith("_")}
    public["encoding"] = _spec_json(cfg["encoding"])
    return {
        "encoding": config.get("label") or _label(cfg["encoding"]),
        "seed": int(cfg["seed"]),
        "metric": "perplexity" if cfg["task"] == "lm" else "accuracy",
        "metrics": {str(k): v for k, v in metrics.items()},
        "final_loss": hist.final_loss,
        "losses": [float(v) for v in hist.losses],
        "train_time": t1 - t0,
        "eval_time": t2 - t1,
        "threads": used,
        "n_params": int(sum(p.data.size for p in model.parameters())),
        "config": public,
        "extensions": extensions,
    }


def _seq_len(cfg, data, L):
    return L if cfg["task"] == "lm" else data.seq_len(L)


def _extend(model, data, cfg, label):
    """Evaluate a trained RoPE model again with each of cfg["extend"]'s scalings
    switched on at inference, and (extend_steps > 0) after a short fine-tune at
    the longest evaluation length. Returns [{"encoding": "rope+yarn", "metrics":
    ..., "extend": {...}, ...}] (empty for a model without RoPE)."""
    if not cfg["extend"] or not rope_encodings(model):
        return []
    train_T = _seq_len(cfg, data, cfg["train_len"])
    lens = cfg["eval_lens"]
    ev = dict(max_tokens=cfg["eval_tokens"], n_samples=cfg["n_eval"], seed=cfg["seed"])

    def options(method, factor):
        opts = dict(EXTEND_METHODS[method], original_max_len=train_T)
        opts.setdefault("scaling_factor", factor)
        return opts

    out = []
    for method in cfg["extend"]:
        t0 = time.perf_counter()
        metrics, factors = {}, {}
        for L in lens:  # each length with its own factor (PI, NTK, YaRN, Llama 3 zero-shot)
            opts = options(method, max(1.0, _seq_len(cfg, data, L) / train_T))
            factors[str(L)] = opts["scaling_factor"]
            with rope_scaling(model, **opts):
                metrics.update(evaluate_lengths(model, data, [L], **ev))
        out.append({"encoding": f"{label}+{method}", "metrics": {str(k): v for k, v in metrics.items()},
                    "extend": {"method": method, "fine_tune_steps": 0, "factors": factors, **{
                        k: v for k, v in EXTEND_METHODS[method].items() if k != "scaling"}},
                    "eval_time": time.perf_counter() - t0})
    if cfg["extend_steps"]:
        L_max = max(lens)
        s_max = max(1.0, L_max / train_T)
        # as in Chen et al. 2023: fine-tune at the longest length with the factor fixed for it
        # (and plain RoPE fine-tuned the same way, their "direct extrapolation" baseline);
        # the same number of tokens per step as in training
        bs = max(1, (cfg["batch_size"] * cfg["train_len"]) // L_max)
        lr = cfg["extend_lr"] if cfg["extend_lr"] is not None else cfg["lr"] / 10
        for method in (None,) + tuple(cfg["extend"]):
            t0 = time.perf_counter()
            tuned = copy.deepcopy(model)
            opts = options(method, s_max) if method else dict(scaling=None)
            for enc in rope_encodings(tuned):
                enc.set_scaling(**opts)
            hist = fit(tuned, data, cfg["extend_steps"], batch_size=bs, seq_len=L_max, lr=lr,
                       warmup=max(1, cfg["extend_steps"] // 10), weight_decay=cfg["weight_decay"],
                       clip=cfg["clip"], seed=cfg["seed"] + 7919, progress=False)
            metrics = evaluate_lengths(tuned, data, lens, **ev)
            name = f"{label}+{method}+ft" if method else f"{label}+ft"
            out.append({"encoding": name, "metrics": {str(k): v for k, v in metrics.items()},
                        "extend": {"method": method or "none", "fine_tune_steps": cfg["extend_steps"],
                                   "fine_tune_len": L_max, "fine_tune_lr": lr, "fine_tune_batch_size": bs,
                                   "scaling_factor": opts.get("scaling_factor", 1.0)},
                        "final_loss": hist.final_loss, "eval_time": time.perf_counter() - t0})
    return out


# --------------------------------------------------------------------- sweep
def _ignore_sigint():
    # Ctrl-C in a terminal reaches the whole process group: only the main process handles it
    # (it stops the workers itself), so workers do not each print a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: in a worker of sweep's own pool: (threads, spare) where spare.value is how many
#: more threads each running run may take (the cores of workers left idle)
_POOL = None


def _worker_init(threads, spare=None):
    global _POOL
    _ignore_sigint()
    # tqdm's default lock is a multiprocessing RLock (a named semaphore): a worker terminated by
    # Ctrl-C could not release it, and the parent would warn of "leaked semaphore objects".
    # A worker writes no bars of its own (its progress goes through the queue), so a thread lock does
    tqdm.set_lock(threading.RLock())
    if threads:
        set_num_threads(int(threads))
        if spare is not None:
            _POOL = (int(threads), spare)


def _stop_pool(executor, grace: float = 0.5):
    """Stop a ProcessPoolExecutor now: cancel what has not started, terminate the
    workers (SIGTERM, then SIGKILL after ``grace`` seconds) and let the pool go
    without waiting for the runs in progress."""
    procs = list((getattr(executor, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)
    executor.shutdown(wait=False, cancel_futures=True)


def _default_executor(n_jobs, max_workers=None):
    """(executor, spare, share): spare is a shared int the workers read, how many
    more threads each running run may take; share(left) is its value when `left`
    runs are not finished."""
    cores = os.cpu_count() or 1
    workers = max(1, min(n_jobs, max_workers or cores))
    threads = max(1, cores // workers)
    ctx = multiprocessing.get_context("spawn")
    spare = ctx.Value("i", 0, lock=False)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(threads, spare))
    return executor, spare, functools.partial(_spare_threads, workers, threads, cores=cores)


def _spare_threads(workers, threads, left, cores):
    """How many more threads each running run may take when `left` runs are not
    finished: the idle workers' threads, shared out, and never more threads in
    all than cores (more workers than cores may have been asked for)."""
    running = min(workers, left)
    if running < 1:
        return 0
    budget = min(workers * threads, max(cores, running * threads))
    return (budget - running * threads) // running


def sweep(configs, executor=None, max_workers: int | None = None, progress: bool = True,
          on_result=None) -> list:
    """Run :func:`run_config` on every config dict; results in config order.

    ``executor``: any ``concurrent.futures.Executor`` (a ThreadPoolExecutor,
    a ProcessPoolExecutor, Dask's ``client.get_executor()``...). Default:
    local processes (spawn), ``max_workers`` of them (default: one per core),
    each worker running relpos with ``cores // workers`` threads (a config's
    own ``threads`` key overrides that); once fewer runs are left than
    workers, the running runs take the idle workers' threads between two
    steps (each result's ``threads`` lists the counts it used). The numbers
    equal a serial run's: they do not depend on the thread count.
    ``on_result(index, result)`` is called as each run finishes. With the
    default executor the progress bar counts training steps of all runs;
    with another executor it counts finished runs.

    Ctrl-C (KeyboardInterrupt, e.g. Jupyter's "interrupt kernel") or a failed
    run stops the sweep at once: runs not yet started are cancelled, the
    default executor's worker processes are terminated (a given executor's
    running tasks are cancelled where it can), and the exception is re-raised
    within about a second; ``on_result`` has seen every run that finished.
    """
    configs = [dict(c) for c in configs]
    for c in configs:
        _resolve(c)  # fail early, in the caller, on a bad config
    if not configs:
        return []
    own = executor is None
    manager = spare = None
    if own:
        executor, spare, share = _default_executor(len(configs), max_workers)
        if progress:
            manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
            manager.start(_ignore_sigint)
            queue = manager.Queue()
            for i, c in enumerate(configs):
                c["_progress_queue"], c["_progress_tag"] = queue, i
    results = [None] * len(configs)
    total_steps = sum(_resolve(c)["steps"] for c in configs)
    bar = tqdm(total=total_steps if manager else len(configs), disable=not progress,
               desc="training" if manager else "runs", unit="step" if manager else "run", dynamic_ncols=True)
    done_steps = [0] * len(configs)
    stop = None
    futures = {}
    failed = False
    try:
        if manager is not None:
            stop = threading.Event()

            def pump():
                # after stop, read what is still queued (a finished run's last steps), then return
                while True:
                    try:
                        tag, step = queue.get(timeout=0.2 if not stop.is_set() else 0.01)
                    except _q.Empty:
                        if stop.is_set():
                            return
                        continue
                    except (EOFError, OSError):  # the manager went away
                        return
                    bar.update(step - done_steps[tag])
                    done_steps[tag] = step
            pump_thread = threading.Thread(target=pump, daemon=True)
            pump_thread.start()
        futures = {executor.submit(run_config, c): i for i, c in enumerate(configs)}
        finished = 0
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            finished += 1
            if spare is not None:
                spare.value = share(len(configs) - finished)
            if manager is None:
                bar.update(1)
            else:
                bar.set_postfix_str(f"{finished}/{len(configs)} runs done", refresh=True)
            if on_result is not None:
                on_result(i, results[i])
    except BaseException:
        # Ctrl-C, or a run that failed: stop now, not after the runs in progress finish
        failed = True
        for fut in futures:
            fut.cancel()
        if own:
            _stop_pool(executor)
        raise
    finally:
        if stop is not None:
            stop.set()
            pump_thread.join(timeout=2)
        bar.close()
        if own and not failed:
            executor.shutdown(wait=True)
        if manager is not None:
            manager.shutdown()
    return results


# ------------------------------------------------------------------- compare
def _label(spec):
    """The row name of an encoding spec: its registered name, else its class name."""
    if isinstance(spec, str):
        return spec.lower() if ":" not in spec else (getattr(encodings.lookup(spec), "name", "") or spec)
    cls = spec if isinstance(spec, type) else type(spec)
    return getattr(cls, "name", "") or cls.__name__


def _encoding_class(spec):
    """The class of an encoding spec (a name, 'module:Class', a class or an instance)."""
    return type(spec) if encodings.is_encoding(spec) else encodings.lookup(spec)


def _spec_json(spec):
    """What results.json says of an encoding spec (a name, 'module:Class', or the class path)."""
    if isinstance(spec, str):
        return spec
    cls = spec if isinstance(spec, type) else type(spec)
    return f"{cls.__module__}:{cls.__qualname__}" + ("" if isinstance(spec, type) else " (instance)")


def _encoding_specs(specs):
    """[(label, spec)] from names, 'module:Class' strings, Encoding classes or instances
    (or one comma-separated string, or "all"). Every spec is checked here, before any
    training; a repeated name counts once, other repeated labels get '#2', '#3'."""
    if isinstance(specs, str) or encodings.is_encoding(specs) or isinstance(specs, type):
        specs = [e for e in specs.split(",") if e.strip()] if isinstance(specs, str) else [specs]
    specs = list(specs)
    if not specs:
        raise ValueError("encodings must name at least one encoding")
    expanded = []
    for e in specs:
        if isinstance(e, str):
            e = e.strip()
            if e.lower() == "all":
                expanded += ALL_ENCODINGS()
                continue
            if ":" not in e:
                e = e.lower()
        expanded.append(e)
    out, labels = [], set()
    for e in expanded:
        if encodings.is_encoding(e):
            spec = e
        else:
            try:
                encodings.lookup(e)  # unknown names and bad 'module:Class' strings fail here
            except TypeError:
                raise TypeError(f"encodings must be names, 'module:Class' strings, Encoding classes or "
                                f"instances; got {e!r}") from None
            spec = e
            if isinstance(e, str) and any(s == e for _, s in out):
                continue
        label = _label(spec)
        n = 2
        base = label
        while label in labels:
            label = f"{base}#{n}"
            n += 1
        labels.add(label)
        out.append((label, spec))
    return out


def compare(encodings=DEFAULT_ENCODINGS, task: str = "lm", train_len: int | None = None, eval_lens=None,
            steps: int | None = None, seeds=DEFAULT_SEEDS, d_model: int = DEFAULTS["d_model"],
            n_layers: int | None = None, n_heads: int = DEFAULTS["n_heads"], d_ff=None,
            norm: str = "layernorm", pre_ln: bool = True, dropout: float = 0.0,
            batch_size: int | None = None, lr: float | None = None, warmup=None,
            weight_decay: float = 0.1, clip: float = 1.0, text=None, text_file=None,
            eval_tokens: int = DEFAULTS["eval_tokens"], n_eval: int = DEFAULTS["n_eval"],
            encoding_options: dict | None = None, out=None, progress: bool = True, executor=None,
            jobs: int = 1, threads: int | None = None, extend=None, extend_steps: int = 0,
            extend_lr: float | None = None, task_options: dict | None = None) -> "CompareResult":
    """Train the same model with each encoding at ``train_len``; evaluate at ``eval_lens``.

    Args:
        encodings: registered names, 'module:Class' strings (the module is imported from
            the working directory), Encoding subclasses or instances (an instance is
            copied for each run and shared by the model's layers); or a
            comma-separated string of names, or "all". Rows are named after each
            encoding's ``name`` (repeats get '#2', '#3').
        task: "lm" (perplexity on ``text`` / ``text_file`` / the default corpus)
            or a synthetic task name (exact-match accuracy; train_len is then the
            largest problem size trained on, sizes 1..train_len; every sequence
            starts with <bos> unless ``task_options={"bos": False}``).
        train_len: training length (default 64 for lm, 8 for tasks; per task in
            :data:`TASK_PRESETS`, e.g. 4 for addition).
        eval_lens: evaluation lengths (default 1x, 2x, 4x, 8x train_len for lm;
            1x, 1.25x, 1.5x, 2x for tasks).
        steps, seeds: optimisation steps per run (default 600 for lm, 3000 for
            tasks, 4000 for reverse, 6000 for addition); one run per (encoding, seed). Default seeds 0, 1, 2: the
            table gives each cell's mean ± the half-width of its 95% t-interval.
        d_model, n_layers, n_heads, d_ff, norm, pre_ln, dropout: the model
            (n_layers default 2 for lm, 3 for tasks, 4 for reverse and addition:
            :data:`TASK_PRESETS`).
        batch_size, lr, warmup, weight_decay, clip: the optimiser (batch_size
            default 16 for lm, 32 for tasks; peak lr 3e-3 for lm and addition, 1e-3 for
            the other tasks).
        text: the training text itself (str); text_file: a path to read it from.
        eval_tokens: LM evaluation uses the first eval_tokens validation tokens
            at every length; n_eval: problems per length for tasks.
        encoding_options: {encoding name: {option: value}} or options for all.
        out: a folder; results.json and results.csv (one row per encoding,
            seed and length) are rewritten there as each encoding finishes.
        executor: run the (encoding, seed) runs on it (see :func:`sweep`).
        jobs: without an executor, ``jobs > 1`` runs that many at once in local
            processes (each with ``cores // jobs`` threads unless ``threads``
            is given); ``jobs=1`` (default) runs them one after another here.
        threads: relpos threads for each run (default: unchanged).
        extend: context extension at inference (a list or comma-separated names of
            :data:`EXTEND_METHODS`: "pi", "ntk", "dynamic", "yarn", "llama3"):
            every RoPE model of the run is evaluated again at each length with
            the scaling switched on (factor = eval length / train length, or the
            method's own rule), each as its own row, e.g. "rope+yarn".
        extend_steps: also fine-tune a copy of each RoPE model this many steps at
            the longest evaluation length, plainly ("rope+ft") and with each
            method's scaling fixed for that length ("rope+yarn+ft"), then
            evaluate at every length (Chen et al. 2023's protocol). lm only.
        extend_lr: the fine-tune's peak learning rate (default lr / 10).
        task_options: options of the synthetic task (e.g.
            ``{"length_sampling": "linear"}``, see :class:`relpos.data.Task`).

    Returns a :class:`CompareResult`. Learned absolute positions past their
    max_len (= train_len) are reported as None ("n/a"), not an error.

    Ctrl-C (or Jupyter's "interrupt kernel") stops the runs in progress at
    once (worker processes are terminated, see :func:`sweep`) and re-raises
    KeyboardInterrupt; the encodings that had finished every seed stay in
    ``out/results.json``, and the exception's ``result`` attribute holds them
    as a CompareResult.
    """
    specs = _encoding_specs(encodings)
    names = [label for label, _ in specs]
    if isinstance(seeds, (int, np.integer)):
        seeds = (int(seeds),)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if isinstance(text, os.PathLike):
        text, text_file = None, text
    if text_file is not None:
        text_file = os.fspath(text_file)
    if task != "lm":
        task = get_task(task).name  # unknown names fail here, listing the known ones
    common = dict(task=task, train_len=train_len, eval_lens=eval_lens, steps=steps, d_model=d_model,
                  n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, norm=norm, pre_ln=pre_ln, dropout=dropout,
                  batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay, clip=clip,
                  text_file=text_file, eval_tokens=eval_tokens, n_eval=n_eval, threads=threads,
                  extend=extend, extend_steps=extend_steps, extend_lr=extend_lr, task_options=task_options)
    resolved = _resolve(dict(common, encoding=specs[0][1]))
    common["extend"] = resolved["extend"]
    # the rows each RoPE model adds (checked here, before any training)
    extra_rows = {}
    if resolved["extend"]:
        for name, spec in specs:
            cls = _encoding_class(spec)
            if getattr(cls, "supports_scaling", False):
                rows = [f"{name}+{m}" for m in resolved["extend"]]
                if resolved["extend_steps"]:
                    rows += [f"{name}+ft"] + [f"{name}+{m}+ft" for m in resolved["extend"]]
                extra_rows[name] = rows
        if not extra_rows:
            raise ValueError(f"extend={','.join(resolved['extend'])} needs a RoPE encoding among the encodings "
                             f"(got {', '.join(names)})")
    elif resolved["extend_steps"]:
        raise ValueError("extend_steps needs extend (the methods to fine-tune with)")
    names = [row for name in names for row in [name] + extra_rows.get(name, [])]
    # check the data once, here, so a bad file or a too-long train_len fails before any training
    data = _build_data(dict(resolved, text=text))
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    common["task_options"] = resolved["task_options"]

    configs = []
    for name, spec in specs:
        opts = encoding_options or {}
        if opts and all(isinstance(v, dict) for v in opts.values()):
            opts = opts.get(name, {})
        for s in seeds:
            configs.append(dict(common, encoding=spec, label=name, seed=s, text=text,
                                encoding_options=opts or None))

    public = {k: v for k, v in resolved.items() if k not in ("encoding", "seed", "text", "encoding_options")}
    public["extend"] = resolved["extend"]
    public["seeds"] = seeds
    public["encoding_options"] = encoding_options
    result = CompareResult(names, resolved["eval_lens"], resolved["train_len"],
                           "perplexity" if task == "lm" else "accuracy", public, [])
    del data
    remaining = {name: len(seeds) for name, _ in specs}

    def finished(i, run):
        if progress:
            cells = ", ".join(f"{L}: {_fmt(v, result.metric)}" for L, v in run["metrics"].items())
            tqdm.write(f"  {run['encoding']:<12s} seed {run['seed']}: train loss {run['final_loss']:.3f}, "
                       f"{result.metric} {cells}  ({run['train_time'] + run['eval_time']:.0f} s)")
            for ext in run.get("extensions") or []:
                cells = ", ".join(f"{L}: {_fmt(v, result.metric)}" for L, v in ext["metrics"].items())
                tqdm.write(f"    {ext['encoding']:<18s} {cells}")
        result.runs.append({k: v for k, v in run.items() if k != "extensions"})
        result.runs.extend(_extension_runs(run))
        remaining[run["encoding"]] -= 1
        if out is not None and remaining[run["encoding"]] == 0:
            result._sort_runs()
            _write(result, out)

    if out is not None:
        os.makedirs(os.fspath(out), exist_ok=True)
    t0 = time.perf_counter()
    try:
        if executor is None and jobs <= 1:
            for i, cfg in enumerate(configs):
                finished(i, run_config(dict(cfg, progress=progress)))
        else:
            sweep(configs, executor=executor, max_workers=jobs, progress=progress, on_result=finished)
    except KeyboardInterrupt as e:
        # keep what finished: results.json already holds every finished encoding; the exception
        # carries them too, for a notebook user who gave no `out`
        result.runs = [r for r in result.runs if remaining.get(r.get("extension_of", r["encoding"]), 1) == 0]
        result._sort_runs()
        result.wall_time = time.perf_counter() - t0
        e.result = result
        if out is not None and result.runs:
            # the interrupt may have landed between the two files of the last _write
            _write(result, out)
        raise
    result.wall_time = time.perf_counter() - t0
    result._sort_runs()
    if out is not None:
        _write(result, out)
    return result


def _write(result, out):
    """results.csv, then results.json (each replaced atomically): once the json of a
    finished encoding exists, so does the csv that has it."""
    out = os.fspath(out)
    result.save_csv(os.path.join(out, "results.csv"))
    result.save(os.path.join(out, "results.json"))


def _extension_runs(run):
    """The extension rows of one run as runs of their own (same seed and config)."""
    out = []
    for ext in run.get("extensions") or []:
        r = {k: v for k, v in run.items() if k not in ("extensions", "losses")}
        r.update(encoding=ext["encoding"], metrics=ext["metrics"], extend=ext["extend"], extension_of=run["encoding"],
                 eval_time=ext.get("eval_time"), train_time=0.0, losses=[])
        if "final_loss" in ext:
            r["final_loss"] = ext["final_loss"]
        out.append(r)
    return out


# ------------------------------------------------------------------- result
# Student t quantiles t_{0.975}(df), df = 1..30, from the standard tables
# (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.2).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student t quantile t_{(1+level)/2}(df) for level 0.95: a table for
    df ≤ 30, the Cornish–Fisher expansion in 1/df beyond (within 1e-4 there)."""
    if level != 0.95:
        raise ValueError(f"level must be 0.95 (the tabulated one); got {level!r}")
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df must be an int >= 1; got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def _overlap(a, b):
    """Do two (mean, low, high, n) intervals share a point?"""
    return a[1] <= b[2] and b[1] <= a[2]


def _fmt(v, metric):
    if v is None:
        return "n/a"
    if metric == "accuracy":
        return f"{v:.3f}"
    if v >= 1e4:
        return f"{v:.3g}"
    return f"{v:.2f}"


class CompareResult:
    """The numbers of a comparison.

    Attributes: ``encodings`` (row order), ``eval_lens``, ``train_len``,
    ``metric`` ("perplexity", lower is better, or "accuracy"), ``config`` and
    ``runs`` (one dict per (encoding, seed), see :func:`run_config`).
    """

    def __init__(self, encodings, eval_lens, train_len, metric, config, runs, wall_time=None):
        self.encodings = list(encodings)
        self.eval_lens = [int(v) for v in eval_lens]
        self.train_len = int(train_len)
        self.metric = metric
        self.config = dict(config)
        self.runs = list(runs)
        self.wall_time = wall_time

    def _sort_runs(self):
        order = {n: i for i, n in enumerate(self.encodings)}
        self.runs.sort(key=lambda r: (order.get(r["encoding"], len(order)), r["seed"]))

    # ---- numbers ---------------------------------------------------------
    def values(self, encoding, length):
        """The per-seed values at one cell (None where not applicable)."""
        return [r["metrics"].get(str(length)) for r in self.runs if r["encoding"] == encoding]

    def summary(self) -> dict:
        """{encoding: {length: (mean, std, n_seeds) or None}} over the finished runs
        (std: sample standard deviation, ddof=1; 0 for one seed)."""
        out = {}
        for enc in self.encodings:
            row = {}
            for L in self.eval_lens:
                vals = [v for v in self.values(enc, L) if v is not None]
                row[L] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                          len(vals)) if vals else None
            out[enc] = row
        return out

    def interval(self, encoding, length, level: float = 0.95):
        """(mean, low, high, n) of one cell: the Student t-interval over seeds,
        mean ± t_{0.975}(n−1)·s/√n (s the sample std). With one seed low = high =
        mean. None where no seed has a value."""
        vals = [v for v in self.values(encoding, length) if v is not None]
        if not vals:
            return None
        m = float(np.mean(vals))
        if len(vals) == 1:
            return (m, m, m, 1)
        h = t_quantile(len(vals) - 1, level) * float(np.std(vals, ddof=1)) / np.sqrt(len(vals))
        return (m, m - h, m + h, len(vals))

    def ranking(self, length):
        """The encodings at one length, best first, as groups: an encoding joins
        the current group when its 95% interval overlaps that of the group's
        first (best) encoding (not distinguishable from it at this budget), else
        it starts the next group. Returns [[encoding, ...], ...]; encodings
        without a value are left out. (Chaining neighbours instead would let one
        wide interval join encodings whose intervals are far apart.)"""
        cells = [(e, self.interval(e, length)) for e in self.encodings]
        cells = [(e, c) for e, c in cells if c is not None]
        sign = 1.0 if self.metric == "perplexity" else -1.0
        cells.sort(key=lambda ec: sign * ec[1][0])
        groups = []
        for e, c in cells:
            if groups and _overlap(groups[-1][0][1], c):
                groups[-1].append((e, c))
            else:
                groups.append([(e, c)])
        return [[e for e, _ in g] for g in groups]

    def indistinguishable(self, length) -> list:
        """Every pair (a, b) of encodings whose 95% intervals overlap at ``length``."""
        cells = [(e, self.interval(e, length)) for e in self.encodings]
        cells = [(e, c) for e, c in cells if c is not None and c[3] > 1]
        return [(a, b) for i, (a, ca) in enumerate(cells) for b, cb in cells[i + 1:] if _overlap(ca, cb)]

    def _n_seeds(self):
        return max((len([v for v in self.values(e, L) if v is not None]) for e in self.encodings
                    for L in self.eval_lens), default=0)

    def _cells(self):
        multi = self._n_seeds() > 1
        rows = []
        for enc in self.encodings:
            if not any(r["encoding"] == enc for r in self.runs):
                rows.append([enc] + ["(not run)"] * len(self.eval_lens))
                continue
            cells = [enc]
            for L in self.eval_lens:
                c = self.interval(enc, L)
                if c is None:
                    cells.append("n/a")
                elif multi and c[3] > 1:
                    cells.append(f"{_fmt(c[0], self.metric)} ± {_fmt(c[2] - c[0], self.metric)}")
                else:
                    cells.append(_fmt(c[0], self.metric))
            rows.append(cells)
        header = ["encoding"] + [f"{L}{' (train)' if L == self.train_len else ''}" for L in self.eval_lens]
        return header, rows

    def rankings_text(self) -> str:
        """One line per length: encodings best first in the groups of :meth:`ranking`,
        "≈" inside a group (its 95% interval overlaps the group leader's: not
        distinguishable at this budget), "<" or ">" between groups. Empty with one seed."""
        if self._n_seeds() < 2:
            return ""
        better = "<" if self.metric == "perplexity" else ">"
        lines = [f"ranking by mean {self.metric}; '≈': its 95% interval overlaps the first of its group's, "
                 "not distinguishable at this budget"]
        for L in self.eval_lens:
            groups = self.ranking(L)
            if groups:
                lines.append(f"  {L:>6}: " + f" {better} ".join(" ≈ ".join(g) for g in groups))
        return "\n".join(lines)

    def table(self) -> str:
        """A plain-text table: rows encodings, columns evaluation lengths, mean ± the
        half-width of the 95% t-interval over seeds; then the rankings per length."""
        header, rows = self._cells()
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])  # noqa: E731
                                  for i, c in enumerate(r))
        lines = [self._title(), fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows]
        ranks = self.rankings_text()
        if ranks:
            lines += ["", ranks]
        return "\n".join(lines)

    def _title(self):
        task = self.config.get("task", "lm")
        better = "lower is better" if self.metric == "perplexity" else "higher is better"
        seeds = self.config.get("seeds", [])
        spread = "; mean ± 95% t-interval half-width over seeds" if len(seeds) > 1 else ""
        return (f"{self.metric} ({better}) by evaluation length; task {task}, trained at {self.train_len}, "
                f"{self.config.get('steps')} steps, {len(seeds)} seed{'s' if len(seeds) != 1 else ''}{spread}")

    def to_markdown(self) -> str:
        header, rows = self._cells()
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)

    def _repr_html_(self):
        header, rows = self._cells()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        return (f"<p>{html.escape(self._title())}</p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")

    def __repr__(self):
        return self.table()

    # ---- plot ------------------------------------------------------------
    def plot(self, ax=None, logy: bool | None = None):
        """Evaluation length (log2 x axis) vs the metric, one line per
        encoding (context-extension rows dashed, fine-tuned ones dotted in the
        same colour) with a band for its 95% t-interval over seeds; the
        training length is marked. Returns the matplotlib Axes (never calls
        ``plt.show()``)."""
        try:
            import matplotlib  # noqa: F401 - fail early with a clear message
            if ax is None:
                import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("CompareResult.plot needs matplotlib: pip install matplotlib "
                              "(or pip install 'relpos[plot]')") from None
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4.5))
        xs = np.array(self.eval_lens, dtype=float)
        # one colour per row, shared by a row and its fine-tuned twin ("rope+yarn", "rope+yarn+ft"):
        # solid for a trained encoding, dashed for a scaling at inference, dotted after a fine-tune
        keys = list(dict.fromkeys(e[:-3] if e.endswith("+ft") else e for e in self.encodings))
        import matplotlib as mpl
        cmap = mpl.colormaps["tab10" if len(keys) <= 10 else "tab20"]
        colours = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
        for enc in self.encodings:
            cells = [self.interval(enc, L) for L in self.eval_lens]
            mean = np.array([c[0] if c else np.nan for c in cells])
            lo = np.array([c[1] if c else np.nan for c in cells])
            hi = np.array([c[2] if c else np.nan for c in cells])
            if np.all(np.isnan(mean)):
                continue
            key = enc[:-3] if enc.endswith("+ft") else enc
            style = ":" if enc.endswith("+ft") else ("--" if "+" in enc else "-")
            (line,) = ax.plot(xs, mean, marker="o", label=enc, linestyle=style, color=colours[key])
            if np.nanmax(hi - lo) > 0:
                if self.metric == "perplexity":  # a t-interval may reach below 1 (or 0): keep the log axis drawable
                    lo = np.maximum(lo, np.nanmin(mean) / 2)
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axvline(self.train_len, color="grey", linestyle="--", linewidth=1, label="train length")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(int(x)) for x in xs])
        ax.set_xlabel("evaluation length (tokens)" if self.metric == "perplexity" else "problem size")
        if self.metric == "perplexity":
            if logy is None or logy:
                from matplotlib.ticker import FuncFormatter, NullFormatter
                ax.set_yscale("log")
                plain = FuncFormatter(lambda v, _: f"{v:g}")
                ax.yaxis.set_major_formatter(plain)
                lo, hi = ax.get_ylim()
                # within a decade or so, label the minor ticks too (else a log axis shows one number)
                ax.yaxis.set_minor_formatter(plain if hi / max(lo, 1e-12) < 30 else NullFormatter())
                ax.set_ylabel("perplexity (log scale)")
            else:
                ax.set_ylabel("perplexity")
        else:
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("exact-match accuracy")
        ax.set_title(f"Length extrapolation: trained at {self.train_len} ({self.config.get('task', 'lm')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        return ax

    # ---- tidy rows: CSV and pandas -----------------------------------------
    def rows(self) -> list:
        """One dict per (encoding, seed, length) of the finished runs, in table
        order: ``{"encoding", "seed", "length", <metric>}`` where <metric> is
        "perplexity" or "accuracy" (None where not applicable, e.g. learned
        absolute positions past their max_len)."""
        self._sort_runs()
        out = []
        for r in self.runs:
            for L in self.eval_lens:
                v = r["metrics"].get(str(L))
                out.append({"encoding": r["encoding"], "seed": int(r["seed"]), "length": int(L),
                            self.metric: None if v is None else float(v)})
        return out

    def to_pandas(self):
        """A tidy pandas DataFrame of :meth:`rows`: columns encoding, seed,
        length and the metric (NaN where not applicable), e.g.
        ``df.pivot_table(index="encoding", columns="length", values="perplexity")``.
        pandas is imported here only (it is not a dependency of relpos)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("CompareResult.to_pandas needs pandas: pip install pandas "
                              "(or use CompareResult.rows() / results.csv without it)") from None
        cols = ["encoding", "seed", "length", self.metric]
        df = pd.DataFrame(self.rows(), columns=cols)
        return df.astype({"encoding": str, "seed": "int64", "length": "int64", self.metric: "float64"})

    def save_csv(self, path) -> None:
        """Write :meth:`rows` as CSV (a header line, then one line per row; an
        empty field where the metric is not applicable), atomically."""
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["encoding", "seed", "length", self.metric])
            for row in self.rows():
                v = row[self.metric]
                w.writerow([row["encoding"], row["seed"], row["length"], "" if v is None else repr(v)])
        os.replace(tmp, path)

    # ---- JSON ------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict; ``rows`` = {encoding: {str(length): [value per seed]}}
        (the form :func:`relpos.probe.plot_extrapolation` reads); ``intervals`` =
        {encoding: {str(length): [mean, low, high, n] or None}} (95% t-intervals);
        ``rankings`` = {str(length): groups of :meth:`ranking`}."""
        ran = [enc for enc in self.encodings if any(r["encoding"] == enc for r in self.runs)]
        rows = {enc: {str(L): self.values(enc, L) for L in self.eval_lens} for enc in ran}
        intervals = {enc: {str(L): (list(c) if (c := self.interval(enc, L)) else None) for L in self.eval_lens}
                     for enc in ran}
        return {"format": "relpos.compare/1", "encodings": self.encodings, "eval_lens": self.eval_lens,
                "train_len": self.train_len, "metric": self.metric, "config": self.config,
                "rows": rows, "intervals": intervals,
                "rankings": {str(L): self.ranking(L) for L in self.eval_lens}, "runs": self.runs,
                "wall_time": self.wall_time}

    @classmethod
    def from_dict(cls, d: dict) -> "CompareResult":
        if d.get("format") != "relpos.compare/1":
            raise ValueError(f"not a relpos compare result (format {d.get('format')!r})")
        return cls(d["encodings"], d["eval_lens"], d["train_len"], d["metric"], d["config"], d["runs"],
                   d.get("wall_time"))

    def save(self, path) -> None:
        """Write JSON atomically (a temp file, then rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=True)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "CompareResult":
        with open(os.fspath(path), encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
