"""relpos.encodings: every position encoding, behind one interface.

    >>> import relpos
    >>> relpos.encodings.available()          # a table: name, channel, parameters, causal-only, paper
    >>> enc = relpos.encodings.get("alibi", n_heads=8)
    >>> relpos.encodings.bias_matrix(enc, 4, 4).shape
    (8, 4, 4)
"""
from __future__ import annotations

import html
import inspect

import numpy as np

from .base import CONTEXT_KEYS, Encoding

_REGISTRY: dict = {}


def register(cls):
    """Class decorator: make an Encoding subclass available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _options_of(cls):
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters.values()
            if p.name not in ("self",) + CONTEXT_KEYS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def get(name, **options) -> Encoding:
    """Build the encoding ``name`` with its options (and context keywords
    n_heads, head_dim, d_model, max_len, seed). Unknown names or options raise
    ValueError listing what exists."""
    if isinstance(name, Encoding):
        return name
    if name is None:
        name = "none"
    if not isinstance(name, str):
        raise TypeError(f"encoding must be a name (str) or an Encoding; got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown encoding {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[key]
    allowed = {p.name for p in _options_of(cls)}
    unknown = sorted(set(options) - allowed - set(CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for encoding {key!r}; "
                         f"its options are: {', '.join(sorted(allowed)) or '(none)'}")
    for p in _options_of(cls):
        # flags: bool("False") is True, so a string or 2 would silently switch the option on
        if isinstance(p.default, bool) and p.name in options and not isinstance(options[p.name], (bool, np.bool_)):
            raise TypeError(f"option {p.name!r} of encoding {key!r} must be a bool; got {options[p.name]!r}")
    return cls(**options)


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
    if isinstance(encoding, Encoding):
        if options:
            raise ValueError("options are given to an already built encoding; got " + str(sorted(options)))
        enc = encoding
    else:
        enc = get(encoding, **options)
    enc.check_causal(causal)
    if "causal" in inspect.signature(enc.bias_matrix).parameters:
        return enc.bias_matrix(Tq, Tk, q_offset, causal=bool(causal))
    return enc.bias_matrix(Tq, Tk, q_offset)


# The catalogue. Each module registers its encodings on import.
from . import absolute, rotary, bias, relative  # noqa: E402,F401
from .helpers import *  # noqa: E402,F401,F403
