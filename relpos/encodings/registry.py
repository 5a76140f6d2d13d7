"""The encodings registry: register a class by name, build one, list them all."""
from __future__ import annotations

import html
import inspect

from .._fn.encoded import REGISTRY as _REGISTRY
from .._fn.encoded import build, encoding_options, is_encoding, lookup  # noqa: F401 - used by models, tests
from .base import Encoding

__all__ = ["register", "get", "available", "bias_matrix", "EncodingTable"]


def register(cls=None, *, name=None, replace=False):
    """Class decorator: make an :class:`Encoding` subclass available by name to
    :func:`get`, :func:`available`, ``relpos.functional.attention``,
    ``relpos.nn.MultiHeadAttention``, the models, ``experiments.compare`` and the CLI.

        >>> @relpos.encodings.register
        ... class LogDecay(relpos.encodings.DistanceBias):
        ...     name = "log_decay"
        ...     ...

    ``name`` overrides the class attribute ``name``. Registering a name that is
    taken by another class raises ValueError unless ``replace=True`` (a class
    re-registered under its own name, e.g. a notebook cell run twice, replaces
    the old one).
    """
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Encoding)):
            raise TypeError(f"register takes an Encoding subclass; got {cls!r}")
        key = name if name is not None else cls.name
        if not isinstance(key, str) or not key or not key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{cls.__name__} needs a name: a non-empty str of letters, digits, '_' or '-' "
                             f"(class attribute `name`); got {key!r}")
        key = key.lower()
        old = _REGISTRY.get(key)
        if old is not None and old is not cls and not replace \
                and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"encoding name {key!r} is taken by {old.__module__}.{old.__qualname__}; "
                             "choose another name or pass replace=True")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return deco if cls is None else deco(cls)


def get(name, **options) -> Encoding:
    """Build an encoding: ``name`` is a registered name, ``'module:Class'``, an
    Encoding subclass, or an Encoding instance (returned as it is), with its
    options (and context keywords n_heads, head_dim, d_model, max_len, seed).
    Unknown names or options raise ValueError listing what exists."""
    return build(name, None, **options)


class EncodingTable(list):
    """Rows of (name, channel, learnable parameters, causal-only, paper); prints as a table."""

    columns = ("name", "channel", "learnable", "causal only", "paper")

    def _rows(self):
        return [tuple(str(r[c]) for c in self.columns) for r in self]

    def __repr__(self):
        rows = [self.columns] + self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_html_(self):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self._rows())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def available() -> EncodingTable:
    """Every registered encoding as a table (prints well; ``_repr_html_`` in notebooks)."""
    rows = EncodingTable()
    for key in sorted(_REGISTRY, key=lambda k: ("ARBC".find(_REGISTRY[k].channel[:1]), k)):
        cls = _REGISTRY[key]
        rows.append({
            "name": key,
            "channel": cls.channel,
            "learnable": ", ".join(getattr(cls, "learnable", ())) or "-",
            "causal only": "yes" if cls.causal_only else "no",
            "paper": cls.paper,
        })
    return rows


def bias_matrix(encoding, Tq: int, Tk: int, q_offset: int = 0, causal: bool = True, **options):
    """(H, Tq, Tk) ndarray of what ``encoding`` adds to the logits.

    ``encoding``: an Encoding, or a name built with ``options`` (e.g.
    ``bias_matrix("alibi", 8, 8, n_heads=4)``). ``causal``: the form used with
    that mask (ALiBi and T5 with their defaults differ for bidirectional
    attention; masked entries are not set to -inf).
    """
    enc = get(encoding, **options)
    enc.check_causal(causal)
    if "causal" in inspect.signature(enc.bias_matrix).parameters:
        return enc.bias_matrix(Tq, Tk, q_offset, causal=bool(causal))
    return enc.bias_matrix(Tq, Tk, q_offset)


