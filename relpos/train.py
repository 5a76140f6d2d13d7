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

import numpy as np
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, LMData, Task
from .optim import AdamW, WarmupCosine, clip_grad_norm
from .serialization import load, save
from .tensor import no_grad

__all__ = ["History", "fit", "evaluate", "evaluate_lengths", "CheckpointError", "save_checkpoint",
           "load_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume this run."""


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

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls()
        for k, v in d.items():
            setattr(h, k, list(v) if isinstance(v, list) else v)
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
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        pred = model(xb).numpy().argmax(axis=-1)
        ok = (pred == yb) | (yb == IGNORE_INDEX)
        correct += int(ok.all(axis=1).sum())
    return correct / x.shape[0]


def evaluate(model, data, batches: int = 4, batch_size: int = 16, seq_len: int = 64, seed: int = 1234):
    """Mean validation loss over ``batches`` random batches drawn with ``seed``
    (the same batches every call). Task data: loss on problems at the training sizes."""
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
    return total / max(count, 1)


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
    that long (learned absolute positions past ``max_len``).
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
                    out[L] = float(math.exp(min(total / count, 700.0)))
                else:
                    if max_pos is not None and data.seq_len(L) > max_pos:
                        out[L] = None
                        continue
                    x, y = data.sample(n_samples, L, np.random.default_rng([seed, L]))
                    out[L] = _predict_exact(model, x, y, max(1, batch_tokens // data.seq_len(L)))
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------- checkpoints
def _rng_to_json(rng):
    return json.dumps(rng.bit_generator.state)


def _rng_from_json(s):
    state = json.loads(s)
    bg = getattr(np.random, state["bit_generator"])()
    bg.state = state
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
    sampler's RNG, the modules' dropout RNGs, history) with :func:`relpos.save`,
    which writes atomically (temp file, fsync, rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {"step": int(step), "rng": _rng_to_json(rng), "history": history.to_dict(), "run": run_info,
            "module_rngs": {k: _rng_to_json(g) for k, g in _generators(model).items()}}
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "meta": json.dumps(meta)}
    save(state, path)


def load_checkpoint(path, model):
    """Read a checkpoint and check it belongs to ``model`` (same keys and shapes).

    Returns (state, meta). Raises FileNotFoundError or CheckpointError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = load(path)
    except Exception as e:  # any failure to parse is a bad checkpoint
        raise CheckpointError(f"checkpoint {path!r} could not be read: {e}") from e
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "meta"} <= set(state):
        raise CheckpointError(f"{path!r} is not a relpos.train checkpoint "
                              f"(expected keys model, optimizer, scheduler, meta)")
    mine = model.state_dict()
    theirs = state["model"]
    missing = sorted(set(mine) - set(theirs))
    extra = sorted(set(theirs) - set(mine))
    if missing or extra:
        raise CheckpointError(f"checkpoint {path!r} is from a different model: missing keys {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                              f"{'...' if len(extra) > 5 else ''}")
    for k, v in mine.items():
        if tuple(np.shape(theirs[k])) != tuple(np.shape(v)):
            raise CheckpointError(f"checkpoint {path!r} is from a different model: {k} has shape "
                                  f"{tuple(np.shape(theirs[k]))} there, {tuple(np.shape(v))} in this model")
    return state, json.loads(state["meta"])


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
        resume=None, seed: int = 0, progress: bool = True, callback=None, desc: str | None = None) -> History:
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
        seed: seeds the batch sampler.
        progress: show a tqdm bar with the loss.
        callback: ``callback(step, loss)`` after every step.

    Raises FloatingPointError naming the step when the loss or the gradient
    norm is not finite; CheckpointError for a checkpoint of another model.
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
    if warmup is None:
        warmup = max(1, steps // 20)

    run_info = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len if kind == "lm" else None,
                "lr": lr, "seed": seed, "kind": kind}
    opt = _make_optimizer(model, lr, weight_decay, tuple(betas))
    sched = WarmupCosine(opt, min(warmup, max(steps, 1)), max(steps, 1), min_lr=lr * min_lr_ratio)
    rng = np.random.default_rng(seed)
    hist = History()
    start = 0
    if resume is not None:
        state, meta = load_checkpoint(resume, model)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(meta["step"])
        if start > steps:
            raise CheckpointError(f"checkpoint {os.fspath(resume)!r} is at step {start}, past steps={steps}")
        rng = _rng_from_json(meta["rng"])
        hist = History.from_dict(meta["history"])
        gens = _generators(model)
        for key, js in meta.get("module_rngs", {}).items():
            if key in gens:
                gens[key].bit_generator.state = _rng_from_json(js).bit_generator.state

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
                gnorm = float(math.sqrt(sum(float(np.dot(p.grad.ravel(), p.grad.ravel()))
                                            for p in params if p.grad is not None)))
            if not math.isfinite(gnorm):
                raise FloatingPointError(f"gradient norm is {gnorm} at step {step} (of {steps})")
            hist.lrs.append(float(sched.get_last_lr()[0]))
            opt.step()
            sched.step()
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
