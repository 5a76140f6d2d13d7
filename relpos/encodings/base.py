"""The contract every position encoding follows, and the open door: :class:`DistanceBias`.

An encoding is a :class:`relpos.nn.Module` (it may hold learnable parameters)
that fills one or two of the four channels of DESIGN.md §4:

- A (absolute): ``embed(x, positions, ids=None)`` changes the token embeddings
  ``x`` (B, T, d_model) before the first layer. Encodings whose
  ``replaces_token_embedding`` is True (complex word order) build the token
  embedding themselves from ``ids`` and ignore ``x`` (which is then None).
- R (rotary): ``rotate_q(q, offset)`` / ``rotate_k(k, offset)`` transform
  q (B, H, Tq, D) and k (B, H, Tk, D) whose first row sits at absolute position
  ``offset`` (queries: q_offset; keys: 0, or the cache length for new keys).
  ``rotates`` says whether they do anything; ``rotation(T, offset, D)`` gives
  the cos/sin tables of a plain rotation (RoPE), which lets a layer fuse it into
  its q/k projection, or None.
- B (bias) and C (relative content): ``attention_inputs(q, k, q_offset, causal)``
  returns keyword arguments for :func:`relpos.functional.attention_core`
  (``bias_vec``/``bias_ix``, ``bias_full``, ``qr``, ``relk``/``relk_ix``,
  ``relq``/``relq_ix``, ``relv``/``relv_ix``, and optionally ``q``/``k``
  replacing the content query/key, and ``scale``). q and k arrive after rotation.
  Keys are at absolute positions 0..Tk-1, queries at q_offset..q_offset+Tq-1.
  ``materialized_only`` asks for the materialised kernel (CoPE).

``relpos.functional.attention`` is the one place that calls these methods
(``relpos/_fn/encoded.py``); nothing looks at concrete classes.

Context keywords every encoding accepts (a model passes them; most users don't):
``n_heads``, ``head_dim``, ``d_model``, ``max_len``, ``seed``.
"""
from __future__ import annotations

import inspect

import numpy as np

from .._fn.encoded import CONTEXT_KEYS
from ..nn import Module
from ..tensor import Tensor, no_grad

__all__ = ["Encoding", "DistanceBias", "CONTEXT_KEYS", "distance_window"]


def distance_window(Tq: int, Tk: int, q_offset: int = 0) -> np.ndarray:
    """The distances ``d = i - j`` (query position minus key position) of a
    window of Tq queries at ``q_offset ..`` and Tk keys at ``0 ..``, ascending:
    ``q_offset-(Tk-1) .. q_offset+Tq-1`` (int64, ``Tq + Tk - 1`` of them; at
    least one, so that an empty window still gives a valid table)."""
    d0, n = _window(Tq, Tk, q_offset)
    return np.arange(d0, d0 + n, dtype=np.int64)


def _window(Tq, Tk, q_offset):
    """(d0, n): the first of the distances :func:`distance_window` lists, and how many."""
    return int(q_offset) - (int(Tk) - 1), max(int(Tq) + int(Tk) - 1, 1)


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
        if "A" in self.channel:
            raise ValueError(f"encoding {self.name!r} is absolute (channel A): it acts on the token "
                             f"embeddings, not inside attention, so {where} would ignore it; add it to "
                             "the input with enc.embed(x, positions) (as TransformerLM does) and use "
                             "encoding=None here")

    # ---- channel A -------------------------------------------------------------
    def embed(self, x, positions, ids=None):
        """x (B, T, d_model) Tensor, positions (T,) int64 absolute positions -> (B, T, d_model)."""
        return x

    # ---- channel R -------------------------------------------------------------
    @property
    def rotates(self) -> bool:
        """True when :meth:`rotate_q` / :meth:`rotate_k` change q and k (channel R)."""
        return "R" in self.channel

    def rotation(self, T: int, offset: int, head_dim: int):
        """A plain rotation's tables for rows at positions offset .. offset+T-1:
        ``(cos, sin, rotary_dim, layout)`` with cos, sin (T, rotary_dim/2) float32,
        or None when the encoding rotates some other way (or not at all). A layer
        may then rotate q and k inside its projection instead of calling
        rotate_q / rotate_k; both must give the same result."""
        return None

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


class DistanceBias(Encoding):
    """Base of every bias that depends on the distance ``d = i - j`` only
    (a Toeplitz bias, channel B): write :meth:`bias` with relpos ops, and relpos
    runs it at fused-kernel speed.

    relpos evaluates ``bias`` once per attention call over the window of
    distances the call needs (``Tq + Tk - 1`` per head, see
    :func:`distance_window`), hands the table to the fused kernel (which never
    builds the Tq x Tk matrix), and autograd carries the kernel's gradient of
    the table back to your parameters. The bias is added to ``scale * q.k`` and
    is not scaled.

    A subclass sets ``name``, creates its :class:`relpos.nn.Parameter` s in
    ``__init__`` (the context keywords ``n_heads``, ``head_dim``, ``d_model``,
    ``max_len``, ``seed`` arrive as for every encoding: accept ``**context`` and
    pass it on) and implements ``bias(self, d)``::

        import numpy as np
        import relpos
        from relpos import nn

        @relpos.encodings.register
        class LogDecay(relpos.encodings.DistanceBias):
            "b_h(d) = -w_h log(1 + |d|), one learnable w_h > 0 per head."
            name = "log_decay"

            def __init__(self, init=1.0, **context):
                super().__init__(**context)
                self.w = nn.Parameter(np.full((self.n_heads, 1), init, np.float32))

            def bias(self, d):
                return -self.w * np.log1p(np.abs(d)).astype(np.float32)   # (H, len(d))

        F.attention(q, k, v, encoding="log_decay")            # or LogDecay, or LogDecay(n_heads=4)
        relpos.experiments.compare(["log_decay", "alibi"])    # by name once registered

    ``bias`` may also take a ``causal`` keyword (True when the attention is
    causal), for biases with a different bidirectional form (ALiBi, T5).
    n_heads is required.
    """

    channel = "B"

    def __init__(self, n_heads=None, head_dim=None, d_model=None, max_len=None, seed=None):
        super().__init__(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        self._need(n_heads=n_heads)

    def bias(self, d: np.ndarray):
        """``d``: (n,) int64 ndarray of distances i - j (query minus key position).
        Returns an (H, n) relpos Tensor (or (1, n), shared by the heads), built
        with relpos ops so that gradients reach the parameters."""
        raise NotImplementedError(f"{type(self).__name__} must implement bias(self, d) -> (H, len(d)) Tensor")

    # ---- what relpos does with it ---------------------------------------------
    def _bias_takes_causal(self) -> bool:
        cls = type(self)
        hit = cls.__dict__.get("_takes_causal_cache")
        if hit is None or hit[0] is not cls.bias:
            hit = (cls.bias, "causal" in inspect.signature(cls.bias).parameters)
            cls._takes_causal_cache = hit
        return hit[1]

    def tabulate(self, d, causal: bool = True):
        """``bias(d)`` checked: a Tensor of shape (H, len(d)) or (1, len(d))."""
        d = np.asarray(d)
        if d.dtype.kind not in "iu" or d.ndim != 1:
            raise TypeError(f"d must be a 1-d int64 array of distances; got dtype {d.dtype}, shape {d.shape}")
        d = d.astype(np.int64, copy=False)
        out = self.bias(d, causal=bool(causal)) if self._bias_takes_causal() else self.bias(d)
        if not isinstance(out, Tensor):
            try:
                out = Tensor(np.asarray(out, dtype=np.float32))
            except (TypeError, ValueError):
                raise TypeError(f"{type(self).__name__}.bias(d) must return a relpos Tensor (or an array); "
                                f"got {type(out).__name__}") from None
        H = self.n_heads
        if out.ndim != 2 or out.shape[1] != len(d) or out.shape[0] not in (1, H):
            raise ValueError(f"{type(self).__name__}.bias(d) must return shape (n_heads, len(d)) = ({H}, {len(d)}) "
                             f"or (1, {len(d)}); got {tuple(out.shape)}")
        return out

    def _check_heads(self, q):
        if q.shape[1] != self.n_heads:
            raise ValueError(f"encoding {self.name!r} was built for n_heads={self.n_heads}; "
                             f"got q with {q.shape[1]} heads (q.shape={tuple(q.shape)})")

    def attention_inputs(self, q, k, q_offset: int = 0, causal: bool = True) -> dict:
        """bias_vec = bias(d) over the window (H, Tq+Tk-1), bias_ix = (+1, Tk-1-q_offset)."""
        self.check_causal(causal)
        self._check_heads(q)
        Tq, Tk = q.shape[2], k.shape[2]
        return {"bias_vec": self.tabulate(distance_window(Tq, Tk, q_offset), causal),
                "bias_ix": (1, Tk - 1 - int(q_offset))}

    def bias_matrix(self, Tq: int, Tk: int, q_offset: int = 0, causal: bool = True) -> np.ndarray:
        """(H, Tq, Tk) float64: the bias added to logit (i, j)."""
        d = distance_window(Tq, Tk, q_offset)
        with no_grad():
            vec = self.tabulate(d, causal).data.astype(np.float64)
        vec = np.broadcast_to(vec, (self.n_heads, vec.shape[1]))
        rel = (int(q_offset) + np.arange(Tq, dtype=np.int64))[:, None] - np.arange(Tk, dtype=np.int64)[None, :]
        return vec[:, rel - d[0]]
