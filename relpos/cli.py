"""The command line: ``python -m relpos compare | encodings | info``.

Bad input (a missing or empty text file, an unknown task or encoding, a
training length longer than the data) prints one clear line and exits with
status 2, as argparse does for bad options.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from tqdm.auto import tqdm

from . import encodings
from ._config import set_num_threads, show_config
from .data import load_text
from .experiments import DEFAULT_ENCODINGS, DEFAULT_SEEDS, DEFAULTS, EXTEND_METHODS, compare

__all__ = ["main", "build_parser"]

PROG = "relpos"


def _int_list(text, what):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers; got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"{what} must name at least one integer")
    return vals


def _eval_lens(text):
    """'64,128,512' (lengths) or '1x,2x,4x' (multiples of --train-len)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(("x", float(part[:-1])) if part.lower().endswith("x") else ("n", int(part)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--eval-lens takes lengths (64,128) or multiples of --train-len (1x,2x,4x); got {text!r}") from None
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
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {v}")
    return v


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="relpos: small transformers on NumPy arrays with a C core, made to compare "
                    "position encodings.",
        epilog="Start with:  python -m relpos compare    (about five minutes on 2 cores)\n"
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
               "  python -m relpos compare --text my_corpus.txt --train-len 128 --out runs/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--encodings", default=",".join(DEFAULT_ENCODINGS), metavar="A,B,...|all",
                   help="encodings to compare, comma-separated, or 'all' (default: %(default)s)")
    c.add_argument("--task", default="lm", metavar="TASK",
                   help="'lm' (language modelling on --text or the default corpus) or a synthetic "
                        "task: copy, reverse, sort, recall, parity, addition (default: lm)")
    c.add_argument("--train-len", type=_positive, default=None, metavar="N",
                   help="training length: tokens for lm (default 64), largest problem size for "
                        "tasks (default 8)")
    c.add_argument("--eval-lens", type=_eval_lens, default=None, metavar="L,L,...",
                   help="evaluation lengths, or multiples of the training length such as "
                        "1x,2x,4x,8x (the default for lm; 1x,1.25x,1.5x,2x for tasks)")
    c.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help="training steps per model (default: 1500 for lm, 3000 for tasks)")
    c.add_argument("--seeds", type=lambda t: _int_list(t, "--seeds"), default=list(DEFAULT_SEEDS),
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
    c.add_argument("--extend-lr", type=float, default=None, metavar="LR",
                   help="peak learning rate of that fine-tune (default: --lr / 10)")
    c.add_argument("--text", default=None, metavar="FILE",
                   help="a UTF-8 text file to model (default: the Python documentation topics "
                        "shipped with CPython, ~465 KB)")
    c.add_argument("--out", default="relpos_compare", metavar="DIR",
                   help="folder for results.json and extrapolation.png (default: %(default)s)")
    c.add_argument("--jobs", type=_positive, default=os.cpu_count() or 1, metavar="N",
                   help="runs trained at once, each in its own process (default: one per core, "
                        "%(default)s here); 1 trains them one after another in this process")
    c.add_argument("--threads", type=_positive, default=None, metavar="N",
                   help="relpos threads per run (default: cores / jobs with several jobs, "
                        "else OMP_NUM_THREADS or all cores). Results do not depend on it")
    m = c.add_argument_group("model and optimiser")
    m.add_argument("--d-model", type=_positive, default=DEFAULTS["d_model"], metavar="N",
                   help="model width (default: %(default)s)")
    m.add_argument("--layers", type=_positive, default=None, metavar="N",
                   help="transformer blocks (default: 2 for lm, 3 for tasks, 4 for reverse)")
    m.add_argument("--heads", type=_positive, default=DEFAULTS["n_heads"], metavar="N",
                   help="attention heads (default: %(default)s)")
    m.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help="sequences per step (default: 16 for lm, 32 for tasks)")
    m.add_argument("--lr", type=float, default=DEFAULTS["lr"], metavar="LR",
                   help="peak learning rate (default: %(default)s)")
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


def _cmd_info(args):
    show_config()
    return 0


def _cmd_encodings(args):
    print(encodings.available())
    return 0


def _cmd_compare(args):

    progress = not args.no_progress
    train_len = args.train_len
    base = train_len if train_len is not None else (64 if args.task == "lm" else 8)
    eval_lens = None
    if args.eval_lens is not None:
        eval_lens = sorted({int(round(v * base)) if kind == "x" else v for kind, v in args.eval_lens})
        if min(eval_lens) < 1:
            raise UsageError(f"--eval-lens must be positive; got {eval_lens}")
    text = None
    if args.text is not None:
        try:
            text = load_text(args.text)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
    if args.threads is not None:
        set_num_threads(args.threads)
    if progress:
        tqdm.write(f"relpos compare: task {args.task}, encodings {args.encodings}, writing to {args.out}/",
                   file=sys.stderr)
    t0 = time.perf_counter()
    try:
        res = compare(args.encodings, task=args.task, train_len=train_len, eval_lens=eval_lens,
                      steps=args.steps, seeds=args.seeds, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, batch_size=args.batch_size, lr=args.lr, text=text,
                      out=args.out, progress=progress, jobs=args.jobs, threads=args.threads,
                      extend=args.extend, extend_steps=args.extend_steps, extend_lr=args.extend_lr)
    except (ValueError, OSError) as e:
        # compare checks names, sizes and the data before training anything
        raise UsageError(str(e)) from None
    wall = time.perf_counter() - t0
    print(res.table())
    print(f"\nwall time {wall:.0f} s; results: {os.path.join(args.out, 'results.json')}")
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
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f"; finished encodings are in {os.path.join(out, 'results.json')}" if out else ""
        print(f"\n{PROG} {args.command}: interrupted{where}", file=sys.stderr)
        return 130
