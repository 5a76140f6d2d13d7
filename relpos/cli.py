"""The command line: ``python -m relpos compare | encodings | info``.

Bad input (a missing or empty text file, an unknown task or encoding, a
training length longer than the data) prints one clear line and exits with
status 2, as argparse does for bad options.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from tqdm.auto import tqdm

from . import encodings
from ._config import max_threads, set_num_threads, show_config
from .data import load_text
from .experiments import (
    DEFAULT_ENCODINGS,
    DEFAULT_SEEDS,
    DEFAULTS,
    EXTEND_METHODS,
    KIND_DEFAULTS,
    TASK_PRESETS,
    _preset,
    compare,
)

__all__ = ["main", "build_parser"]

PROG = "relpos"


#: the largest value each size flag takes: checked while parsing, before anything is allocated
CAPS = {"--train-len": 16_384, "--eval-lens": 131_072, "--steps": 10_000_000, "--seeds": 1_000,
        "seed": 2 ** 32 - 1, "--d-model": 4_096, "--layers": 64, "--heads": 64, "--batch-size": 4_096}
#: the largest model compare trains (parameters, embeddings included): d_model and layers
#: within their caps can still ask for one that does not fit in memory
MAX_PARAMS = 500_000_000


def _preset_help(key):
    """'default: A for lm, B for tasks, C for reverse, ...' for a run setting, read from
    experiments' presets (so the help cannot drift from what compare does)."""
    task = KIND_DEFAULTS["task"][key]
    parts = [f"{KIND_DEFAULTS['lm'][key]:g} for lm", f"{task:g} for tasks"]
    parts += [f"{p[key]:g} for {name}" for name, p in TASK_PRESETS.items() if p.get(key, task) != task]
    return "default: " + ", ".join(parts)


def _bounded(flag, cap=None, why=""):
    """argparse type: an integer from 1 to the flag's cap (a callable cap is read when parsing)."""
    def parse(text):
        hi = cap() if callable(cap) else (cap if cap is not None else CAPS[flag])
        because = why.format(cpus=os.cpu_count() or 1)
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from 1 to {hi:,}{because}; got {text!r}") from None
        if not 1 <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from 1 to {hi:,}{because}; got {v:,}")
        return v
    return parse


def _seeds(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers; got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("--seeds must name at least one integer")
    bad = [v for v in vals if not 0 <= v <= CAPS["seed"]]
    if bad:
        raise argparse.ArgumentTypeError(f"seeds must be integers from 0 to {CAPS['seed']:,}; got {bad[0]}")
    if len(vals) > CAPS["--seeds"]:
        raise argparse.ArgumentTypeError(f"at most {CAPS['--seeds']:,} seeds; got {len(vals):,}")
    return vals


def _eval_lens(text):
    """'64,128,512' (lengths) or '1x,2x,4x' (multiples of --train-len)."""
    out = []
    usage = f"--eval-lens takes lengths (64,128) or multiples of --train-len (1x,2x,4x); got {text!r}"
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            item = ("x", float(part[:-1])) if part.lower().endswith("x") else ("n", int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(usage) from None
        kind, v = item
        if kind == "x" and not (math.isfinite(v) and 0 < v <= CAPS["--eval-lens"]):
            raise argparse.ArgumentTypeError(f"multiples in --eval-lens must be finite and positive; got {part!r}")
        if kind == "n" and not 1 <= v <= CAPS["--eval-lens"]:
            raise argparse.ArgumentTypeError(
                f"lengths in --eval-lens must be from 1 to {CAPS['--eval-lens']:,}; got {v:,}")
        out.append(item)
    if not out:
        raise argparse.ArgumentTypeError("--eval-lens must name at least one length")
    return out


def _extend(text):
    """'pi,ntk,yarn' -> ["pi", "ntk", "yarn"] (checked against EXTEND_METHODS)."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--extend must name at least one method")
    for n in names:
        if n == "longrope":
            raise argparse.ArgumentTypeError(
                "--extend longrope needs rescale factors from LongRoPE's search, which relpos does not run "
                "(the scaling itself is RoPE(scaling='longrope', short_factor=..., long_factor=...))")
        if n not in EXTEND_METHODS:
            raise argparse.ArgumentTypeError(f"unknown --extend method {n!r}; known: {','.join(EXTEND_METHODS)}")
    return names


def _nonnegative(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {CAPS['--steps']:,}; got {text!r}") from None
    if not 0 <= v <= CAPS["--steps"]:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {CAPS['--steps']:,}; got {v:,}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number; got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (with where to look), not the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="relpos: small transformers on NumPy arrays with a C core, made to compare "
                    "position encodings.",
        epilog="Start with:  python -m relpos compare    (about 2 minutes on 2 cores: 9 encodings x 3 seeds)\n"
               "Run 'python -m relpos COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "compare", help="train one small model per encoding and test it at longer lengths",
        description="Train the same small decoder with each position encoding at one training "
                    "length, evaluate it at longer lengths (default 1x, 2x, 4x, 8x), print a table "
                    "and write results.json and extrapolation.png into --out. Language modelling "
                    "reports perplexity (lower is better); synthetic tasks report exact-match "
                    "accuracy. Results are written as each encoding finishes, so an interrupted run "
                    "keeps what it finished.",
        epilog="examples:\n"
               "  python -m relpos compare\n"
               "  python -m relpos compare --encodings rope,alibi --steps 500 --seeds 0,1,2,3,4\n"
               "  python -m relpos compare --encodings rope --extend pi,ntk,yarn --eval-lens 1x,2x,4x\n"
               "  python -m relpos compare --task copy --train-len 8 --eval-lens 8,16,32\n"
               "  python -m relpos compare --text my_corpus.txt --train-len 128 --out runs/mine\n"
               "  python -m relpos compare --dask tcp://scheduler:8786      (runs on a Dask cluster)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--encodings", default=",".join(DEFAULT_ENCODINGS), metavar="A,B,...|all",
                   help="encodings to compare, comma-separated, or 'all' (default: %(default)s)")
    c.add_argument("--task", default="lm", metavar="TASK",
                   help="'lm' (language modelling on --text or the default corpus) or a synthetic "
                        "task: copy, reverse, sort, recall, parity, addition (default: lm)")
    c.add_argument("--train-len", type=_bounded("--train-len"), default=None, metavar="N",
                   help="training length: tokens for lm, largest problem size for tasks "
                        f"({_preset_help('train_len')})")
    c.add_argument("--eval-lens", type=_eval_lens, default=None, metavar="L,L,...",
                   help="evaluation lengths, or multiples of the training length such as "
                        "1x,2x,4x,8x (the default for lm; 1x,1.25x,1.5x,2x for tasks)")
    c.add_argument("--steps", type=_bounded("--steps"), default=None, metavar="N",
                   help=f"training steps per model ({_preset_help('steps')})")
    c.add_argument("--seeds", type=_seeds, default=list(DEFAULT_SEEDS),
                   metavar="S,S,...",
                   help="seeds; one model per encoding and seed, the table shows the mean ± the "
                        "half-width of a 95%% t-interval and says which encodings cannot be told apart "
                        "(default: " + ",".join(map(str, DEFAULT_SEEDS)) + ")")
    c.add_argument("--extend", type=_extend, default=None, metavar="M,M,...",
                   help="context extension at inference for every RoPE model: evaluate it again with "
                        f"each scaling switched on ({','.join(EXTEND_METHODS)}), one row each "
                        "(e.g. rope+yarn)")
    c.add_argument("--extend-steps", type=_nonnegative, default=0, metavar="N",
                   help="with --extend: also fine-tune each RoPE model N steps at the longest evaluation "
                        "length, plainly and with each scaling (rows rope+ft, rope+yarn+ft); lm only "
                        "(default: 0)")
    c.add_argument("--extend-lr", type=_positive_float, default=None, metavar="LR",
                   help="peak learning rate of that fine-tune (default: --lr / 10)")
    c.add_argument("--text", default=None, metavar="FILE",
                   help="a UTF-8 text file to model (default: the Python documentation topics "
                        "shipped with CPython, ~465 KB)")
    c.add_argument("--out", default="relpos_compare", metavar="DIR",
                   help="folder for results.json, results.csv and extrapolation.png (default: %(default)s)")
    c.add_argument("--jobs", type=_bounded("--jobs", max_threads, " (4 x the {cpus} CPUs here)"),
                   default=None, metavar="N",
                   help="runs trained at once, each in its own process (default: one per core, "
                        f"{os.cpu_count() or 1} here); 1 trains them one after another in this process")
    c.add_argument("--dask", default=None, metavar="ADDRESS|local",
                   help="run the (encoding, seed) runs on a Dask cluster: the scheduler's address "
                        "(tcp://HOST:8786), or 'local' to start a LocalCluster here with --jobs "
                        "worker processes. Needs dask.distributed (pip install 'relpos[dask]'). "
                        "Results equal a serial run's")
    c.add_argument("--threads", type=_bounded("--threads", max_threads, " (4 x the {cpus} CPUs here)"),
                   default=None, metavar="N",
                   help="relpos threads per run (default: cores / jobs with several jobs, "
                        "else OMP_NUM_THREADS or all cores). Results do not depend on it")
    m = c.add_argument_group("model and optimiser")
    m.add_argument("--d-model", type=_bounded("--d-model"), default=DEFAULTS["d_model"], metavar="N",
                   help="model width (default: %(default)s)")
    m.add_argument("--layers", type=_bounded("--layers"), default=None, metavar="N",
                   help=f"transformer blocks ({_preset_help('n_layers')})")
    m.add_argument("--heads", type=_bounded("--heads"), default=DEFAULTS["n_heads"], metavar="N",
                   help="attention heads (default: %(default)s)")
    m.add_argument("--batch-size", type=_bounded("--batch-size"), default=None, metavar="N",
                   help=f"sequences per step ({_preset_help('batch_size')})")
    m.add_argument("--lr", type=_positive_float, default=None, metavar="LR",
                   help=f"peak learning rate ({_preset_help('lr')})")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=_cmd_compare)

    e = sub.add_parser("encodings", help="list the position encodings relpos knows",
                       description="List every registered position encoding with its channel "
                                   "(A absolute, R rotary, B bias, C relative content).")
    e.set_defaults(func=_cmd_encodings)

    i = sub.add_parser("info", help="print the build and run-time configuration",
                       description="Print the version, OpenMP and thread count, the SIMD path, "
                                   "compiler and flags (relpos.show_config()).")
    i.set_defaults(func=_cmd_info)
    return parser


class UsageError(Exception):
    """Bad input from the user: print the message, exit 2."""


class Interrupted(Exception):
    """Ctrl-C during a command: print what was kept, exit 130."""


def _dask_executor(address, jobs, threads):
    """(executor, [close callables], relpos threads per run) for --dask ADDRESS|local."""
    try:
        import distributed
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'relpos[dask]'") from None
    closers = []
    try:
        if address == "local":
            # one single-threaded Dask worker process per job; each run then gets cores / jobs
            # relpos threads (results do not depend on it)
            cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                               dashboard_address=None)
            closers.append(cluster.close)
            client = distributed.Client(cluster)
            if threads is None:
                threads = max(1, (os.cpu_count() or 1) // jobs)
        else:
            client = distributed.Client(address, timeout="10s")
        closers.append(client.close)
    except (OSError, ValueError, TypeError) as e:
        for close in reversed(closers):
            close()
        what = "start a local Dask cluster" if address == "local" else \
            f"connect to the Dask scheduler at {address!r}"
        raise UsageError(f"--dask: could not {what}: {e}") from None
    return client.get_executor(), closers, threads


def _cmd_info(args):
    show_config()
    return 0


def _cmd_encodings(args):
    print(encodings.available())
    return 0


def _cmd_compare(args):
    args.jobs_given = args.jobs is not None
    if args.jobs is None:
        args.jobs = os.cpu_count() or 1

    progress = not args.no_progress
    train_len = args.train_len
    preset = _preset(args.task)
    base = train_len if train_len is not None else preset["train_len"]
    eval_lens = None
    if args.eval_lens is not None:
        eval_lens = sorted({int(round(v * base)) if kind == "x" else v for kind, v in args.eval_lens})
        if min(eval_lens) < 1 or max(eval_lens) > CAPS["--eval-lens"]:
            raise UsageError(f"--eval-lens must give lengths from 1 to {CAPS['--eval-lens']:,}; "
                             f"got {eval_lens} (with --train-len {base})")
    # checks of compare's own, in the flags' names rather than the API's
    if args.d_model % args.heads:
        raise UsageError(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    if args.extend_steps and not args.extend:
        raise UsageError("--extend-steps needs --extend (the scalings to fine-tune with)")
    if args.extend_steps and args.task != "lm":
        raise UsageError(f"--extend-steps fine-tunes at the longest evaluation length, which is for "
                         f"language modelling; with --task {args.task} it would train on the test sizes")
    if args.dask not in (None, "local") and args.jobs_given:
        raise UsageError("--jobs sets the number of worker processes of --dask local; a Dask cluster "
                         f"({args.dask}) runs as many runs at once as it has workers")
    # a model within every flag's cap can still be too big to allocate: bound its size too
    # (blocks: attention 4 d^2 + MLP 8 d^2; embedding and head of a byte vocabulary)
    layers = args.layers if args.layers is not None else preset["n_layers"]
    n_params = layers * 12 * args.d_model ** 2 + 2 * 256 * args.d_model
    if n_params > MAX_PARAMS:
        layers_from = f"--layers {layers}" if args.layers is not None else f"{layers} layers (the {args.task} default)"
        raise UsageError(f"--d-model {args.d_model} with {layers_from} gives about {n_params:,} "
                         f"parameters; the cap is {MAX_PARAMS:,}")
    text = None
    if args.text is not None:
        try:
            text = load_text(args.text)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
    if args.threads is not None:
        set_num_threads(args.threads)
    threads = args.threads
    executor, closers = None, []
    try:
        if args.dask is not None:
            executor, closers, threads = _dask_executor(args.dask, args.jobs, args.threads)
        if progress:
            where = "" if args.dask is None else f", on Dask ({args.dask})"
            tqdm.write(f"relpos compare: task {args.task}, encodings {args.encodings}{where}, writing to "
                       f"{args.out}/", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            res = compare(args.encodings, task=args.task, train_len=train_len, eval_lens=eval_lens,
                          steps=args.steps, seeds=args.seeds, d_model=args.d_model, n_layers=args.layers,
                          n_heads=args.heads, batch_size=args.batch_size, lr=args.lr, text=text,
                          out=args.out, progress=progress, jobs=args.jobs, threads=threads,
                          executor=executor, extend=args.extend, extend_steps=args.extend_steps,
                          extend_lr=args.extend_lr)
        except (ValueError, OSError) as e:
            # compare checks names, sizes and the data before training anything
            raise UsageError(str(e)) from None
        except KeyboardInterrupt as e:
            done = getattr(e, "result", None)
            names = sorted({r["encoding"] for r in done.runs}) if done is not None else []
            raise Interrupted(f"finished encodings ({', '.join(names)}) are in "
                              f"{os.path.join(args.out, 'results.json')} and results.csv" if names
                              else "no encoding had finished") from None
    finally:
        for close in reversed(closers):
            close()
    wall = time.perf_counter() - t0
    print(res.table())
    print(f"\nwall time {wall:.0f} s; results: {os.path.join(args.out, 'results.json')} "
          f"(and results.csv)")
    png = os.path.join(args.out, "extrapolation.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    res.plot(ax=ax)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"plot: {png}")
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m relpos`` and the ``relpos`` script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"\n{PROG} {args.command}: interrupted; {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
