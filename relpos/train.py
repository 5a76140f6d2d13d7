"""Training and length evaluation.

    >>> from relpos.data import LMData, default_corpus
    >>> from relpos.nn import TransformerLM
    >>> from relpos.train import fit, evaluate_lengths
    >>> data = LMData(default_corpus())
    >>> model = TransformerLM(256, d_model=64, n_layers=2, n_heads=4, encoding="alibi")
    >>> hist = fit(model, data, steps=200, seq_len=64)
    >>> evaluate_lengths(model, data, [64, 128, 256])      # {64: ppl, 128: ppl, 256: ppl}

``fit`` works for :class:`relpos.data.LMData` (random windows of ``seq_len``)
and for a :class:`relpos.data.Task` (problems at sizes drawn from its
``train_lengths``; the loss covers only the answers).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, LMData, Task
from .optim import AdamW, WarmupCosine, clip_grad_norm, grad_norm
from .serialization import CheckpointError, _crc32, load, save
from .tensor import no_grad

__all__ = ["History", "fit", "evaluate", "evaluate_lengths", "CheckpointError", "save_checkpoint",
           "load_checkpoint"]


class History:
    """What ``fit`` measured.

    Attributes:
        steps, losses, lrs, grad_norms: one entry per optimisation step
            (``steps`` counts from 1).
        eval_steps, eval_losses: the evaluation points (every ``eval_every`` steps).
        wall_time: seconds spent in ``fit`` (summed over resumed runs).
        tokens: input tokens seen.
    """

    def __init__(self):
        self.steps, self.losses, self.lrs, self.grad_norms = [], [], [], []
        self.eval_steps, self.eval_losses = [], []
        self.wall_time = 0.0
        self.tokens = 0

    @property
    def final_loss(self):
        """Mean of the last (up to) 10 training losses; None before any step."""
        if not self.losses:
            return None
        return float(np.mean(self.losses[-10:]))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("steps", "losses", "lrs", "grad_norms", "eval_steps",
                                               "eval_losses", "wall_time", "tokens")}

    _LISTS = ("steps", "losses", "lrs", "grad_norms", "eval_steps", "eval_losses")

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        """The inverse of ``to_dict``; a ValueError names any field of the wrong type
        (unknown fields are ignored)."""
        if not isinstance(d, dict):
            raise ValueError(f"history must be a dict; got {type(d).__name__}")
        h = cls()
        for k in cls._LISTS:
            if k in d:
                v = d[k]
                if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      for x in v):
                    raise ValueError(f"history field {k!r} must be a list of numbers")
                setattr(h, k, list(v))
        if "wall_time" in d:
            if not isinstance(d["wall_time"], (int, float)) or isinstance(d["wall_time"], bool):
                raise ValueError("history field 'wall_time' must be a number")
            h.wall_time = float(d["wall_time"])
        if "tokens" in d:
            if not isinstance(d["tokens"], int) or isinstance(d["tokens"], bool) or d["tokens"] < 0:
                raise ValueError("history field 'tokens' must be an int >= 0")
            h.tokens = d["tokens"]
        return h

    def __len__(self):
        return len(self.steps)

    def __repr__(self):
        last = f"{self.final_loss:.4f}" if self.losses else "-"
        ev = f", last eval loss {self.eval_losses[-1]:.4f}" if self.eval_losses else ""
        return (f"History({len(self.steps)} steps, final loss {last}{ev}, "
                f"{self.wall_time:.1f} s, {self.tokens} tokens)")


# ------------------------------------------------------------------ helpers
def _data_kind(data):
    if isinstance(data, LMData):
        return "lm"
    if isinstance(data, Task):
        return "task"
    raise TypeError(f"data must be a relpos.data.LMData or a relpos.data.Task; got {type(data).__name__}")


def _train_batch(data, kind, batch_size, seq_len, rng):
    if kind == "lm":
        return data.batch(batch_size, seq_len, rng)
    return data.batch(batch_size, rng)


def _model_max_positions(model):
    """Longest input the model can take (None = unlimited)."""
    return getattr(model, "max_positions", None)


def _nll_sum(model, x, y, batch_size):
    """Summed negative log-likelihood (float64) and count of scored targets."""
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = model(xb).numpy().astype(np.float64)
        m = logits.max(axis=-1, keepdims=True)
        lse = (m[..., 0] + np.log(np.exp(logits - m).sum(axis=-1)))
        keep = yb != IGNORE_INDEX
        picked = np.take_along_axis(logits, np.where(keep, yb, 0)[..., None], axis=-1)[..., 0]
        total += float(((lse - picked) * keep).sum())
        count += int(keep.sum())
    return total, count


def _predict_exact(model, x, y, batch_size):
    """(accuracy, whether every logit was finite): argmax of NaN logits is meaningless."""
    correct, finite = 0, True
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = model(xb).numpy()
        finite = finite and bool(np.isfinite(logits).all())
        pred = logits.argmax(axis=-1)
        ok = (pred == yb) | (yb == IGNORE_INDEX)
        correct += int(ok.all(axis=1).sum())
    return correct / x.shape[0], finite


def _warn_non_finite(what):
    # stacklevel 3: the caller of evaluate / evaluate_lengths
    warnings.warn(f"{what}; the model's parameters or logits are not finite (check for a diverged run)",
                  RuntimeWarning, stacklevel=3)


def evaluate(model, data, batches: int = 4, batch_size: int = 16, seq_len: int = 64, seed: int = 1234):
    """Mean validation loss over ``batches`` random batches drawn with ``seed``
    (the same batches every call). Task data: loss on problems at the training sizes.
    A non-finite loss comes with a RuntimeWarning (a diverged model)."""
    kind = _data_kind(data)
    rng = np.random.default_rng(seed)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with no_grad():
            total, count = 0.0, 0
            for _ in range(batches):
                if kind == "lm":
                    x, y = data.batch(batch_size, seq_len, rng, split="val")
                else:
                    x, y = data.batch(batch_size, rng)
                t, c = _nll_sum(model, x, y, batch_size)
                total, count = total + t, count + c
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    if not math.isfinite(loss):
        _warn_non_finite(f"evaluate: the validation loss is {loss}")
    return loss


def evaluate_lengths(model, data, lengths, batch_tokens: int = 4096, max_tokens: int | None = 16384,
                     sliding: bool = False, stride: int | None = None, n_samples: int = 256,
                     seed: int = 0) -> dict:
    """Quality at each evaluation length.

    LM data: perplexity on the validation split cut into windows of each length
    (non-overlapping, or ``sliding=True`` with ``stride``), using the same
    first ``max_tokens`` validation tokens at every length (None: all of them).
    Task: exact-match accuracy of ``n_samples`` problems of each size (drawn
    from ``seed`` and the size), scored by teacher-forced argmax, which equals
    greedy decoding when every answer token is right.

    ``batch_tokens``: about this many tokens go through the model at once.

    Returns {length: float or None}; None where the model cannot take inputs
    that long (learned absolute positions past ``max_len``). A non-finite
    perplexity (NaN, or inf for an infinite loss), or an accuracy computed
    from non-finite logits, comes with a RuntimeWarning naming the length.
    """
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, (int, np.integer)) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive int; got {batch_tokens!r}")
    kind = _data_kind(data)
    max_pos = _model_max_positions(model)
    out = {}
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with no_grad():
            for L in lengths:
                L = int(L)
                if kind == "lm":
                    if max_pos is not None and L > max_pos:
                        out[L] = None
                        continue
                    x, y = data.eval_windows(L, sliding=sliding, stride=stride, max_tokens=max_tokens)
                    if x.shape[0] == 0:
                        raise ValueError(f"no evaluation window of length {L} fits in max_tokens={max_tokens}")
                    total, count = _nll_sum(model, x, y, max(1, batch_tokens // L))
                    nll = total / count
                    if math.isfinite(nll):
                        out[L] = float(math.exp(min(nll, 700.0)))
                    else:  # min(nan, 700) is nan but min(inf, 700) would hide an infinite loss
                        out[L] = float("nan") if math.isnan(nll) else float("inf")
                        _warn_non_finite(f"evaluate_lengths: the perplexity at length {L} is {out[L]}")
                else:
                    if max_pos is not None and data.seq_len(L) > max_pos:
                        out[L] = None
                        continue
                    x, y = data.sample(n_samples, L, np.random.default_rng([seed, L]))
                    out[L], finite = _predict_exact(model, x, y, max(1, batch_tokens // data.seq_len(L)))
                    if not finite:
                        _warn_non_finite(f"evaluate_lengths: the accuracy at length {L} ({out[L]}) comes from "
                                         f"non-finite logits")
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------- checkpoints
# The bit generators a checkpoint may name, and the exact layout of each one's
# state: the file chooses among these classes, never any other attribute of numpy.
_BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM, "Philox": np.random.Philox,
                   "SFC64": np.random.SFC64, "MT19937": np.random.MT19937}
_FLAG = ("int", 0, 1)
_U32 = ("int", 0, 2**32 - 1)
_PCG_STATE = {"state": {"state": ("int", 0, 2**128 - 1), "inc": ("int", 0, 2**128 - 1)},
              "has_uint32": _FLAG, "uinteger": _U32}
_RNG_LAYOUT = {
    "PCG64": _PCG_STATE,
    "PCG64DXSM": _PCG_STATE,
    "Philox": {"state": {"counter": ("array", np.uint64, 4), "key": ("array", np.uint64, 2)},
               "buffer": ("array", np.uint64, 4), "buffer_pos": ("int", 0, 4), "has_uint32": _FLAG,
               "uinteger": _U32},
    "SFC64": {"state": {"state": ("array", np.uint64, 4)}, "has_uint32": _FLAG, "uinteger": _U32},
    "MT19937": {"state": {"key": ("array", np.uint32, 624), "pos": ("int", 0, 624)}},
}


def _rng_to_json(rng):
    """A Generator's bit-generator state as JSON (arrays as lists of ints)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return [int(x) for x in v.tolist()]
        return int(v) if isinstance(v, np.integer) else v
    return json.dumps(plain(rng.bit_generator.state))


def _checked_state(value, layout, where):
    """value checked against layout (see _RNG_LAYOUT); arrays rebuilt with their dtype."""
    if isinstance(layout, dict):
        if not isinstance(value, dict) or set(value) != set(layout):
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise CheckpointError(f"{where} must be a dict with keys {sorted(layout)}; got {got}")
        return {k: _checked_state(value[k], layout[k], f"{where}[{k!r}]") for k in layout}
    if layout[0] == "int":
        _, lo, hi = layout
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CheckpointError(f"{where} must be an int in [{lo}, {hi}]; got {str(value)[:40]}")
        return value
    _, dtype, n = layout
    limit = np.iinfo(dtype).max
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= limit for x in value):
        raise CheckpointError(f"{where} must be a list of {n} ints in [0, {limit}]")
    return np.array(value, dtype=dtype)


def _rng_state_from_json(s, where):
    """The validated state dict of an allowed bit generator, from its JSON."""
    try:
        state = json.loads(s) if isinstance(s, str) else None
    except (ValueError, RecursionError):
        state = None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the generator state is not a JSON object")
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in _BIT_GENERATORS:
        raise CheckpointError(f"{where}: bit generator {str(name)[:40]!r} is not one relpos restores "
                              f"({', '.join(_BIT_GENERATORS)})")
    body = {k: v for k, v in state.items() if k != "bit_generator"}
    checked = _checked_state(body, _RNG_LAYOUT[name], where)
    checked["bit_generator"] = name
    return checked


def _rng_from_json(s, where="the batch sampler's generator"):
    """A new Generator with the state saved by _rng_to_json (CheckpointError for anything else)."""
    state = _rng_state_from_json(s, where)
    bg = _BIT_GENERATORS[state["bit_generator"]]()
    try:
        bg.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as e:  # numpy's own checks, e.g. an all-zero key
        raise CheckpointError(f"{where}: numpy refuses the saved state ({e})") from None
    return np.random.Generator(bg)


def _generators(model):
    """Every numpy Generator a module holds (dropout streams): {"path:attr": Generator}."""
    out = {}
    for name, m in model.named_modules():
        for attr, val in vars(m).items():
            if isinstance(val, np.random.Generator):
                out[f"{name}:{attr}"] = val
    return out


def save_checkpoint(path, model, optimizer, scheduler, step, rng, history, run_info):
    """Write a checkpoint (model, optimizer and schedule state, step, the batch
    sampler's RNG, the modules' dropout RNGs, history, the run's settings) with
    :func:`relpos.save`, which writes atomically (temp file, fsync, rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {"step": int(step), "rng": _rng_to_json(rng), "history": history.to_dict(), "run": run_info,
            "module_rngs": {k: _rng_to_json(g) for k, g in _generators(model).items()}}
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "meta": json.dumps(meta)}
    save(state, path)


def _checked_meta(raw, path):
    """The checkpoint's meta dict, its fields checked (CheckpointError naming the field)."""
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path!r}: its 'meta' entry is not a JSON object")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path!r}: meta 'step' must be an int >= 0; got {str(step)[:40]}")
    if not isinstance(meta.get("rng"), str):
        raise CheckpointError(f"checkpoint {path!r}: meta 'rng' (the batch sampler's state) is missing")
    if not isinstance(meta.get("run", {}), dict):
        raise CheckpointError(f"checkpoint {path!r}: meta 'run' must be a dict of the run's settings")
    rngs = meta.get("module_rngs", {})
    if not isinstance(rngs, dict) or not all(isinstance(v, str) for v in rngs.values()):
        raise CheckpointError(f"checkpoint {path!r}: meta 'module_rngs' must map names to generator states")
    try:
        History.from_dict(meta.get("history"))
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path!r}: {e}") from None
    return meta


def load_checkpoint(path, model):
    """Read a checkpoint and check it belongs to ``model`` (same keys and shapes)
    and that its bookkeeping (step, RNG states, history) is well formed.

    Returns (state, meta). Raises FileNotFoundError or CheckpointError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = load(path)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint could not be read: {e}") from e  # e names the file
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "meta"} <= set(state):
        raise CheckpointError(f"{path!r} is not a relpos.train checkpoint "
                              f"(expected keys model, optimizer, scheduler, meta)")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"checkpoint {path!r}: its 'model' entry is not a state_dict")
    mine = model.state_dict()
    theirs = state["model"]
    missing = sorted(set(mine) - set(theirs))
    extra = sorted(set(theirs) - set(mine))
    if missing or extra:
        raise CheckpointError(f"checkpoint {path!r} is from a different model: missing keys {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                              f"{'...' if len(extra) > 5 else ''}")
    for k, v in mine.items():
        if not isinstance(theirs[k], np.ndarray):
            raise CheckpointError(f"checkpoint {path!r}: {k} is a {type(theirs[k]).__name__}, not an array")
        if tuple(np.shape(theirs[k])) != tuple(np.shape(v)):
            raise CheckpointError(f"checkpoint {path!r} is from a different model: {k} has shape "
                                  f"{tuple(np.shape(theirs[k]))} there, {tuple(np.shape(v))} in this model")
    return state, _checked_meta(state["meta"], path)


def _plain(v):
    """A run setting as JSON stores it (so the saved and the new one compare equal)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def _run_info(model, data, kind, **settings):
    """The settings that decide a run's trajectory: a resumed run must match them."""
    info = {"kind": kind, "model": type(model).__name__, "encoding": getattr(model, "encoding_name", None),
            "data": type(data).__name__, "vocab_size": int(data.vocab_size)}
    if kind == "lm":
        # a fingerprint of the training text: the same length and vocabulary can still be other text
        info["train_tokens"] = int(np.size(data.train))
        info["train_crc32"] = _crc32(data.train)
    else:
        info["train_lengths"] = _plain(list(data.train_lengths))
    info.update({k: _plain(v) for k, v in settings.items()})
    return info


def _check_run(saved, now, path, mode):
    """Compare the checkpoint's run settings with this run's; settings the
    checkpoint does not record (older files) are not compared."""
    diffs = [f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in now
             if k in saved and saved[k] != now[k]]
    if not diffs or mode == "allow":
        return
    msg = (f"checkpoint {path!r} was written by a run with other settings: " + "; ".join(diffs))
    if mode == "warn":
        warnings.warn(msg + " (resuming anyway: resume_mismatch='warn')", RuntimeWarning, stacklevel=3)
        return
    raise CheckpointError(msg + ". The resumed run would not equal an uninterrupted one; pass "
                                "resume_mismatch='warn' or 'allow' to resume anyway")


def _non_finite_params(model):
    return [name for name, p in model.named_parameters() if not np.isfinite(p.data).all()]


# ----------------------------------------------------------------------- fit
def _make_optimizer(model, lr, weight_decay, betas):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # GPT-2 habit: decay matrices, not biases, norm gains or per-head scalars
        (decay if p.data.ndim >= 2 and "norm" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def fit(model, data, steps: int, batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3,
        warmup: int | None = None, min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
        betas=(0.9, 0.95), clip: float | None = 1.0, eval_every: int | None = None,
        eval_batches: int = 4, checkpoint_every: int | None = None, checkpoint_path=None,
        resume=None, seed: int = 0, progress: bool = True, callback=None, desc: str | None = None,
        resume_mismatch: str = "error") -> History:
    """Train ``model`` for ``steps`` AdamW steps and return a :class:`History`.

    Args:
        model: a module with ``loss(x, y)`` (e.g. TransformerLM).
        data: LMData (random windows of ``seq_len`` from the train split) or a
            Task (problems at sizes drawn from its train_lengths).
        steps: total optimisation steps (a resumed run counts the steps already done).
        lr, warmup, min_lr_ratio: peak learning rate; linear warmup over
            ``warmup`` steps (default 5% of steps) then cosine to ``lr*min_lr_ratio``.
        weight_decay: AdamW decoupled decay on weight matrices (not on biases,
            norm gains or 1-D parameters).
        clip: clip the global gradient norm to this (None: no clipping).
        eval_every, eval_batches: validation loss every N steps (and at the end).
        checkpoint_every, checkpoint_path: write a checkpoint (model, optimizer,
            step, data RNG, history) atomically every N steps and at the end.
        resume: a checkpoint path to continue from; the run then equals an
            uninterrupted one bit for bit (same seed, steps and options).
        resume_mismatch: what to do when the checkpoint's run settings (model
            class, encoding, data, steps, batch_size, seq_len, lr, warmup,
            min_lr_ratio, weight_decay, betas, clip, seed) differ from this
            call's: "error" (default: CheckpointError listing each difference),
            "warn" (a RuntimeWarning listing them, then resume) or "allow".
        seed: seeds the batch sampler.
        progress: show a tqdm bar with the loss.
        callback: ``callback(step, loss)`` after every step.

    Raises FloatingPointError naming the step when the loss or the gradient
    norm is not finite, or when the parameters are not finite after the last
    step (before the final checkpoint is written); CheckpointError for a
    checkpoint of another model or run, or a corrupt one.
    """

    kind = _data_kind(data)
    if not callable(getattr(model, "loss", None)) or not callable(getattr(model, "parameters", None)):
        raise TypeError(f"model must be a relpos Module with a loss(x, y) method (e.g. TransformerLM); "
                        f"got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an int >= 0; got {steps!r}")
    steps = int(steps)
    if kind == "lm":
        data.check_seq_len(seq_len, "train")
        max_pos = _model_max_positions(model)
        if max_pos is not None and seq_len > max_pos:
            raise ValueError(f"seq_len {seq_len} is longer than the model's max_len {max_pos}")
    for name, val in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1):
            raise ValueError(f"{name} must be a positive int or None; got {val!r}")
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs checkpoint_path")
    if resume_mismatch not in ("error", "warn", "allow"):
        raise ValueError(f"resume_mismatch must be 'error', 'warn' or 'allow'; got {resume_mismatch!r}")
    if warmup is None:
        warmup = max(1, steps // 20)

    # the run's fingerprint (a CRC of the whole training text) only where a checkpoint needs it
    run_info = None if checkpoint_path is None and resume is None else \
        _run_info(model, data, kind, steps=steps, batch_size=batch_size,
                  seq_len=seq_len if kind == "lm" else None, lr=lr, warmup=warmup,
                  min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, betas=list(betas), clip=clip, seed=seed)
    opt = _make_optimizer(model, lr, weight_decay, tuple(betas))
    sched = WarmupCosine(opt, min(warmup, max(steps, 1)), max(steps, 1), min_lr=lr * min_lr_ratio)
    rng = np.random.default_rng(seed)
    hist = History()
    start = 0
    if resume is not None:
        where = os.fspath(resume)
        state, meta = load_checkpoint(resume, model)
        start = meta["step"]
        if start > steps:
            raise CheckpointError(f"checkpoint {where!r} is at step {start}, past steps={steps}")
        _check_run(meta.get("run", {}), run_info, where, resume_mismatch)
        # everything is checked before anything is changed: a bad file leaves the model as it was
        rng = _rng_from_json(meta["rng"], f"checkpoint {where!r}: the batch sampler's generator")
        hist = History.from_dict(meta["history"])
        gens = _generators(model)
        module_states = {}
        for key, js in meta.get("module_rngs", {}).items():
            if key in gens:
                st = _rng_state_from_json(js, f"checkpoint {where!r}: generator {key}")
                mine = type(gens[key].bit_generator).__name__
                if st["bit_generator"] != mine:
                    raise CheckpointError(f"checkpoint {where!r}: generator {key} is {st['bit_generator']} "
                                          f"there, {mine} in this model")
                module_states[key] = st
        try:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {where!r}: the optimizer or schedule state does not fit this "
                                  f"run ({type(e).__name__}: {str(e)[:200]})") from None
        try:
            for key, st in module_states.items():
                gens[key].bit_generator.state = st
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {where!r}: numpy refuses a saved generator state ({e})") from None
        model.load_state_dict(state["model"])

    model.train()
    t0 = time.perf_counter()
    wall0 = hist.wall_time
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=desc, leave=False,
               dynamic_ncols=True, unit="step")
    try:
        for step in range(start + 1, steps + 1):
            x, y = _train_batch(data, kind, batch_size, seq_len, rng)
            opt.zero_grad()
            loss = model.loss(x, y)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at step {step} (of {steps}); "
                                         f"try a lower lr (now {lr}) or gradient clipping")
            loss.backward()
            params = [p for p in model.parameters() if p.requires_grad]
            if clip is not None:
                gnorm = float(clip_grad_norm(params, clip))
            else:
                gnorm = grad_norm(params)
            if not math.isfinite(gnorm):
                raise FloatingPointError(f"gradient norm is {gnorm} at step {step} (of {steps})")
            hist.lrs.append(float(sched.get_last_lr()[0]))
            opt.step()
            sched.step()
            if step == steps:
                # a finite loss and gradient can still give an update that overflows (lr=3e38);
                # the loss check of the next step catches that earlier, but the last step has none
                bad = _non_finite_params(model)
                if bad:
                    raise FloatingPointError(
                        f"parameters are not finite after the last step ({step} of {steps}): "
                        f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} ({len(bad)} tensors); "
                        f"try a lower lr (now {lr}) or gradient clipping")
            hist.steps.append(step)
            hist.losses.append(value)
            hist.grad_norms.append(gnorm)
            hist.tokens += int(x.size)
            if eval_every is not None and (step % eval_every == 0 or step == steps):
                hist.eval_steps.append(step)
                hist.eval_losses.append(evaluate(model, data, eval_batches, batch_size, seq_len))
                model.train()
            if checkpoint_every is not None and (step % checkpoint_every == 0 or step == steps):
                hist.wall_time = wall0 + time.perf_counter() - t0
                save_checkpoint(checkpoint_path, model, opt, sched, step, rng, hist, run_info)
            bar.update(1)
            if step % 5 == 0 or step == steps:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if callback is not None:
                callback(step, value)
    finally:
        bar.close()
        hist.wall_time = wall0 + time.perf_counter() - t0
    return hist
