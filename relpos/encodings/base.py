"""The contract every position encoding follows.

An encoding is a :class:`relpos.nn.Module` (it may hold learnable parameters)
that fills one or two of the four channels of DESIGN.md §4:

- A (absolute): ``embed(x, positions, ids=None)`` changes the token embeddings
  ``x`` (B, T, d_model) before the first layer. Encodings whose
  ``replaces_token_embedding`` is True (complex word order) build the token
  embedding themselves from ``ids`` and ignore ``x`` (which is then None).
- R (rotary): ``rotate_q(q, offset)`` / ``rotate_k(k, offset)`` transform
  q (B, H, Tq, D) and k (B, H, Tk, D) whose first row sits at absolute position
  ``offset`` (queries: q_offset; keys: 0, or the cache length for new keys).
- B (bias) and C (relative content): ``attention_inputs(q, k, q_offset, causal)``
  returns keyword arguments for :func:`relpos.functional.attention_core`
  (``bias_vec``/``bias_ix``, ``bias_full``, ``qr``, ``relk``/``relk_ix``,
  ``relq``/``relq_ix``, ``relv``/``relv_ix``, and optionally ``q``/``k``
  replacing the content query/key, and ``scale``). q and k arrive after rotation.
  Keys are at absolute positions 0..Tk-1, queries at q_offset..q_offset+Tq-1.

Context keywords every encoding accepts (a model passes them; most users don't):
``n_heads``, ``head_dim``, ``d_model``, ``max_len``, ``seed``.
"""
from __future__ import annotations

import numpy as np

from ..nn import Module

CONTEXT_KEYS = ("n_heads", "head_dim", "d_model", "max_len", "seed")


class Encoding(Module):
    #: registry name, e.g. "rope"
    name: str = ""
    #: channels it fills: a string of "A", "R", "B", "C"
    channel: str = ""
    #: short citation
    paper: str = ""
    #: True when it only makes sense with a causal mask (xPos, FIRE, NoPE)
    causal_only: bool = False
    #: True when it needs the whole logit row (CoPE): forces impl="materialized"
    materialized_only: bool = False
    #: True when it builds the token embedding itself (complex word order)
    replaces_token_embedding: bool = False

    def __init__(self, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.d_model = d_model
        self.max_len = max_len
        self.seed = seed

    # ---- helpers for subclasses ---------------------------------------------
    def _need(self, **named):
        """Raise ValueError unless every named context value is a positive int."""
        for key, val in named.items():
            if val is None or isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val <= 0:
                raise ValueError(f"encoding {self.name!r} needs {key} as a positive int; got {val!r}")

    def check_causal(self, causal: bool) -> None:
        """Raise ValueError if this encoding is used where it cannot work."""
        if self.causal_only and not causal:
            raise ValueError(f"encoding {self.name!r} works with causal attention only "
                             f"(causal=True); got causal=False")

    def check_attention(self, causal: bool, where: str = "attention") -> None:
        """Raise ValueError if this encoding cannot act inside attention as asked:
        a causal-only encoding with causal=False, or an absolute (channel A)
        encoding, which acts on token embeddings and would be ignored there."""
        self.check_causal(causal)
        if "A" in self.channel and self.name != "none":
            raise ValueError(f"encoding {self.name!r} is absolute (channel A): it acts on the token "
                             f"embeddings, not inside attention, so {where} would ignore it; add it to "
                             "the input with enc.embed(x, positions) (as TransformerLM does) and use "
                             "encoding=None here")

    # ---- channel A -------------------------------------------------------------
    def embed(self, x, positions, ids=None):
        """x (B, T, d_model) Tensor, positions (T,) int64 absolute positions -> (B, T, d_model)."""
        return x

    # ---- channel R -------------------------------------------------------------
    def rotate_q(self, q, offset: int = 0):
        """q (B, H, Tq, D) with row t at absolute position offset + t -> same shape."""
        return q

    def rotate_k(self, k, offset: int = 0):
        """k (B, H, Tk, D) with row t at absolute position offset + t -> same shape."""
        return k

    # ---- channels B and C ------------------------------------------------------
    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """Keyword arguments for ``attention_core``; q (B,H,Tq,D), k (B,H,Tk,D) Tensors."""
        return {}

    def bias_matrix(self, Tq: int, Tk: int, q_offset: int = 0) -> np.ndarray:
        """What the encoding adds to the logits, (H, Tq, Tk) float64 ndarray (zeros if
        it adds nothing position-only; content-dependent terms are not included)."""
        return np.zeros((self.n_heads or 1, Tq, Tk))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        return f"{type(self).__name__}(name={self.name!r}{', ' + extra if extra else ''})"
