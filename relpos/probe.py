"""Look inside: attention maps, biases against distance, RoPE decay, head statistics.

Every ``plot_*`` helper takes ``ax=None`` (a new figure is made when None),
returns the matplotlib Axes and never calls ``plt.show()``. matplotlib is
imported lazily; without it the plot helpers raise ImportError saying how to
install it, and everything else works.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

from . import encodings
from .encodings import Encoding
from .encodings.rotary import rope_angles
from .nn import MultiHeadAttention
from .tensor import no_grad

__all__ = [
    "attention_maps", "plot_attention", "bias_vs_distance", "plot_bias", "rope_decay",
    "plot_rope_decay", "attention_stats", "plot_attention_stats", "plot_extrapolation",
]


def _plt():
    try:
        import matplotlib
        if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline") \
                and not _has_display():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("relpos plots need matplotlib: pip install 'relpos[plot]' "
                          "(or pip install matplotlib)") from exc
    return plt


def _has_display():
    return bool(os.environ.get("DISPLAY") or os.environ.get("MPLBACKEND"))


def _axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax
    plt = _plt()
    _, ax = plt.subplots(figsize=figsize)
    return ax


# ---------------------------------------------------------------- attention maps

def _attention_modules(model):
    mods = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not mods:
        raise ValueError(f"model {type(model).__name__} has no MultiHeadAttention layers to probe")
    return mods


@contextmanager
def _capture_weights(model):
    """Make every attention layer of `model` return its weights while inside."""
    mods = _attention_modules(model)
    captured = [None] * len(mods)

    def wrap(i, m):
        original = type(m).forward

        def forward(x, *args, **kwargs):
            kwargs["return_weights"] = True
            out, w = original(m, x, *args, **kwargs)
            captured[i] = np.asarray(w)
            return out
        return forward

    for i, m in enumerate(mods):
        m.forward = wrap(i, m)
    try:
        yield captured
    finally:
        for m in mods:
            del m.forward


def attention_maps(model, ids) -> np.ndarray:
    """Attention weights of every layer and head for one sequence.

    ``ids``: (T,) or (1, T) int token ids. Runs the model once (no gradient,
    eval mode, the materialised attention path) and returns an ndarray of shape
    (n_layers, n_heads, T, T): ``maps[l, h, i, j]`` is how much query i of head h
    in layer l attends to key j.
    """
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"ids must have shape (T,) or (1, T); got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers; got dtype {ids.dtype}")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with no_grad(), _capture_weights(model) as captured:
            model(ids)
    finally:
        model.train(was_training)
    return np.stack([w[0] for w in captured])


def plot_attention(maps, layer=0, heads=None, tokens=None, ax=None, cmap="viridis"):
    """Heat maps of attention weights.

    maps: (n_layers, n_heads, Tq, Tk) from :func:`attention_maps` (or (n_heads, Tq, Tk)).
    heads: a head index or a list (default all heads of ``layer``, side by side
    in one image, separated by a blank column). Returns the Axes.
    """
    maps = np.asarray(maps)
    if maps.ndim == 4:
        if not 0 <= layer < maps.shape[0]:
            raise ValueError(f"layer must be in [0, {maps.shape[0]}); got {layer}")
        maps = maps[layer]
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (L, H, Tq, Tk) or (H, Tq, Tk); got {maps.shape}")
    heads = list(range(maps.shape[0])) if heads is None else list(np.atleast_1d(heads))
    for h in heads:
        if not 0 <= h < maps.shape[0]:
            raise ValueError(f"head {h} out of range [0, {maps.shape[0]})")
    Tq, Tk = maps.shape[1:]
    gap = np.full((Tq, 1), np.nan)
    panel = np.concatenate(sum(([maps[h], gap] for h in heads), [])[:-1], axis=1)
    ax = _axes(ax, figsize=(min(3 * len(heads), 15), 3.2))
    im = ax.imshow(panel, cmap=cmap, vmin=0.0, vmax=float(np.nanmax(panel)) if panel.size else 1.0,
                   aspect="auto", interpolation="nearest")
    ax.set_xlabel("key position j (heads " + ", ".join(map(str, heads)) + ")")
    ax.set_ylabel("query position i")
    ax.set_title(f"attention weights, layer {layer}")
    if tokens is not None and len(heads) == 1:
        ax.set_xticks(range(Tk))
        ax.set_xticklabels(list(tokens)[:Tk], rotation=90)
        ax.set_yticks(range(Tq))
        ax.set_yticklabels(list(tokens)[-Tq:])
    ax.figure.colorbar(im, ax=ax, fraction=0.03)
    return ax


# ---------------------------------------------------------------- bias vs distance

def _encoding_of(obj, **options):
    """An encoding from a name, 'module:Class', a class or an instance (built with options),
    or a model's first encoding."""
    if isinstance(obj, (str, type)) or encodings.is_encoding(obj):
        return encodings.get(obj, **options)
    for m in obj.modules():  # a model: its first encoding
        if isinstance(m, Encoding):
            return m
    raise ValueError(f"{type(obj).__name__} holds no position encoding")


def bias_vs_distance(encoding_or_model, max_distance, query_positions=None, causal=None, **options):
    """What an encoding adds to the logits as a function of i − j.

    Returns (distances (n,), bias (H, len(query_positions), n)): for each query
    position i (default: the last one, ``max_distance``), the bias of key
    j = i − d for d = 0..max_distance (keys before position 0 are NaN).
    ``causal``: the mask the encoding is used with (ALiBi and T5 by default
    change form with it); None = the model's own, or True for an encoding.
    """
    if int(max_distance) != max_distance or max_distance < 0:
        raise ValueError(f"max_distance must be an int >= 0; got {max_distance!r}")
    max_distance = int(max_distance)
    enc = _encoding_of(encoding_or_model, **options)
    if causal is None:
        # a model: the mask its layers use; an encoding alone: causal
        causal = True if isinstance(encoding_or_model, (str, type)) or encodings.is_encoding(encoding_or_model) \
            else bool(getattr(encoding_or_model, "causal", True))
    qs = [max_distance] if query_positions is None else [int(q) for q in np.atleast_1d(query_positions)]
    Tk = max(max(qs), max_distance) + 1
    dist = np.arange(max_distance + 1)
    out = []
    for qpos in qs:
        m = np.asarray(encodings.bias_matrix(enc, 1, Tk, q_offset=qpos, causal=causal))[:, 0, :]  # (H, Tk)
        j = qpos - dist
        row = np.where(j >= 0, m[:, np.clip(j, 0, Tk - 1)], np.nan)
        out.append(row)
    return dist, np.stack(out, axis=1)


def plot_bias(encoding_or_model, max_distance=64, heads=None, query_positions=None, ax=None, **options):
    """Plot the logit bias against distance i − j, one line per head (and per
    query position for encodings such as FIRE that depend on i). Returns the Axes."""
    enc = _encoding_of(encoding_or_model, **options)
    dist, bias = bias_vs_distance(enc, max_distance, query_positions)
    H = bias.shape[0]
    heads = list(range(H)) if heads is None else list(np.atleast_1d(heads))
    ax = _axes(ax)
    qs = [max_distance] if query_positions is None else list(np.atleast_1d(query_positions))
    styles = ["-", "--", ":", "-."]
    for qi, qpos in enumerate(qs):
        for h in heads:
            label = f"head {h}" + (f", i={qpos}" if len(qs) > 1 else "")
            ax.plot(dist, bias[h, qi], styles[qi % len(styles)], label=label, lw=1.2)
    ax.set_xlabel("distance i − j")
    ax.set_ylabel("bias added to the logit")
    ax.set_title(f"{enc.name}: bias against distance")
    if len(heads) * len(qs) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return ax


# ---------------------------------------------------------------- RoPE decay

def rope_decay(rotary_dim=64, base=10000.0, max_distance=1024, scaling=None, scaling_factor=1.0,
               **rope_options):
    """RoFormer's long-term decay of RoPE (Su et al., §3.4.3).

    With S_m(Δ) = Σ_{k<m} exp(i·Δ·θ_k) over the rotary frequencies θ_k, the
    relative upper bound of |q·k| at distance Δ is proportional to
    (1/(d/2)) Σ_{m=1}^{d/2} |S_m(Δ)|. Returns (distances (n,), decay (n,)) with the
    decay normalised so that its value at distance 0 is 1 (its maximum).
    Scalings (``"linear"``, ``"ntk"``, ``"yarn"``) use the same frequencies as
    the ``rope`` encoding.
    """
    if int(max_distance) != max_distance or max_distance < 0:
        raise ValueError(f"max_distance must be an int >= 0; got {max_distance!r}")
    ang = np.asarray(rope_angles(int(max_distance) + 1, rotary_dim, base=base, scaling=scaling,
                                 scaling_factor=scaling_factor, **rope_options), dtype=np.float64)
    partial = np.cumsum(np.exp(1j * ang), axis=1)  # (n, d/2): S_m for m = 1..d/2
    decay = np.abs(partial).mean(axis=1)
    return np.arange(ang.shape[0]), decay / decay[0]


def plot_rope_decay(configs=None, rotary_dim=64, max_distance=1024, ax=None):
    """Plot :func:`rope_decay` for several bases / scalings side by side.

    configs: list of dicts of rope_decay keywords (default: base 10000, and
    scalings linear / ntk / yarn with factor 4). Returns the Axes."""
    if configs is None:
        configs = [dict(base=10000.0), dict(base=500000.0),
                   dict(scaling="linear", scaling_factor=4.0),
                   dict(scaling="ntk", scaling_factor=4.0),
                   dict(scaling="yarn", scaling_factor=4.0, original_max_len=max(2, max_distance // 4))]
    ax = _axes(ax)
    for cfg in configs:
        cfg = dict(cfg)
        d, y = rope_decay(rotary_dim=cfg.pop("rotary_dim", rotary_dim), max_distance=max_distance, **cfg)
        label = ", ".join(f"{k}={v}" for k, v in cfg.items())
        ax.plot(d, y, label=label, lw=1.2)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("relative distance")
    ax.set_ylabel("relative upper bound (1 at distance 0)")
    ax.set_title("RoPE long-term decay")
    ax.legend(fontsize=7, loc="lower left")
    return ax


# ---------------------------------------------------------------- head statistics

def attention_stats(model_or_maps, ids=None) -> dict:
    """Entropy (nats) and mean attended distance per head and query position.

    Give a model and ``ids``, or the (L, H, Tq, Tk) array of
    :func:`attention_maps`. Returns {"entropy": (L, H, Tq), "mean_distance":
    (L, H, Tq), "table": list of per-(layer, head) rows averaged over queries},
    where the mean distance of query i is Σ_j p_ij |i − j| with query i at
    absolute position Tk − Tq + i.
    """
    if ids is not None:
        maps = attention_maps(model_or_maps, ids)
    else:
        maps = np.asarray(model_or_maps, dtype=np.float64)
    if maps.ndim != 4:
        raise ValueError(f"maps must have shape (L, H, Tq, Tk); got {maps.shape}")
    L, H, Tq, Tk = maps.shape
    p = maps.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    qpos = np.arange(Tq)[:, None] + (Tk - Tq)
    dist = np.abs(qpos - np.arange(Tk)[None, :])
    mean_d = (p * dist).sum(-1)
    table = [{"layer": li, "head": h, "entropy": float(ent[li, h].mean()),
              "mean_distance": float(mean_d[li, h].mean())} for li in range(L) for h in range(H)]
    return {"entropy": ent, "mean_distance": mean_d, "table": table}


def plot_attention_stats(stats, ax=None):
    """Scatter of mean attended distance against entropy, one point per (layer, head)."""
    ax = _axes(ax)
    rows = stats["table"]
    layers = sorted({r["layer"] for r in rows})
    for li in layers:
        pts = [r for r in rows if r["layer"] == li]
        ax.scatter([r["mean_distance"] for r in pts], [r["entropy"] for r in pts], label=f"layer {li}", s=25)
        for r in pts:
            ax.annotate(str(r["head"]), (r["mean_distance"], r["entropy"]), fontsize=6)
    ax.set_xlabel("mean attended distance (tokens)")
    ax.set_ylabel("attention entropy (nats)")
    ax.set_title("which heads look far")
    ax.legend(fontsize=7)
    return ax


# ---------------------------------------------------------------- extrapolation

def plot_extrapolation(result, ax=None, logy=None):
    """Evaluation length against perplexity (or accuracy), one line per encoding,
    with a band of ± one standard deviation over seeds.

    ``result``: a :class:`relpos.experiments.CompareResult` or its dict form
    (``{"metric": ..., "train_len": ..., "eval_lens": [...], "rows": {enc: {len: [values per seed]}}}``).
    Points that do not apply (None: e.g. learned absolute past max_len) are left out.
    """
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    metric = data.get("metric", "perplexity")
    lens = list(data["eval_lens"])
    ax = _axes(ax)
    for enc, per_len in data["rows"].items():
        xs, mean, std = [], [], []
        for L in lens:
            vals = per_len.get(str(L), per_len.get(L))
            vals = [v for v in (vals or []) if v is not None and np.isfinite(v)]
            if vals:
                xs.append(L)
                mean.append(float(np.mean(vals)))
                std.append(float(np.std(vals)))
        if not xs:
            continue
        xs, mean, std = map(np.asarray, (xs, mean, std))
        line, = ax.plot(xs, mean, "o-", label=enc, lw=1.4, ms=3)
        if np.any(std > 0):
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if data.get("train_len"):
        ax.axvline(data["train_len"], color="grey", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    if logy is None:
        logy = metric == "perplexity"
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(metric)
    ax.set_title(f"extrapolation (trained at {data.get('train_len')})")
    ax.legend(fontsize=7, ncol=2)
    return ax
