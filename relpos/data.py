"""Data for language modelling and length generalisation.

* Tokenizers: :class:`ByteTokenizer` (UTF-8 bytes, 256 ids) and
  :class:`CharTokenizer` (one id per character seen in a text).
* Text: :func:`default_corpus` (the English documentation shipped with every
  CPython as ``pydoc_data.topics``, ~465 KB, no download) and :func:`load_text`.
* :class:`LMData`: token ids split into train/validation, random training
  batches and evaluation windows.
* Synthetic tasks (:func:`get_task`): copy, reverse, sort, associative recall,
  parity and addition, generated from a seed at any problem size, laid out for a
  decoder LM as ``prompt <sep> answer <end>`` with the loss only on the answer.

Ids are int64 everywhere; targets that must not be scored hold
``IGNORE_INDEX`` (-100), as in ``cross_entropy(..., ignore_index=-100)``.
"""
from __future__ import annotations

import functools
import os
import stat
from pydoc_data.topics import topics

import numpy as np

from .functional import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "ByteTokenizer", "CharTokenizer", "default_corpus", "load_text", "MAX_TEXT_BYTES",
           "LMData", "Task", "CopyTask", "ReverseTask", "SortTask", "RecallTask", "ParityTask",
           "AdditionTask", "TASKS", "get_task", "exact_match"]



def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None; got {type(rng).__name__}")


def _check_ids(ids, vocab_size, name="ids"):
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers; got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)].flat[0]
        raise IndexError(f"{name} contains id {int(bad)}, outside the vocabulary [0, {vocab_size})")
    return ids.astype(np.int64, copy=False)


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


# ----------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """UTF-8 bytes as ids 0..255. Every string round-trips exactly."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        """str -> int64 ids of shape (n_bytes,)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        """int ids of shape (n,) -> str (invalid UTF-8 sequences become U+FFFD)."""
        ids = _check_ids(np.ravel(ids), 256)
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self):
        return "ByteTokenizer(vocab_size=256)"

    def __eq__(self, other):
        return isinstance(other, ByteTokenizer)

    __hash__ = object.__hash__


class CharTokenizer:
    """One id per distinct character of ``text`` (sorted by code point).

    ``unknown`` says what encoding a character that was not in ``text`` does:
    ``"error"`` (default) raises ``ValueError`` naming it; ``"unk"`` maps it to
    an extra id ``unk_id`` (the last id), decoded as U+FFFD.
    """

    UNK_CHAR = "\ufffd"

    def __init__(self, text: str, unknown: str = "error"):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk'; got {unknown!r}")
        if not text:
            raise ValueError("text must not be empty: the vocabulary is built from its characters")
        self.chars = sorted(set(text))
        self.unknown = unknown
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.unk_id = len(self.chars) if unknown == "unk" else None
        self.vocab_size = len(self.chars) + (1 if unknown == "unk" else 0)
        # a dense table for the common (BMP) case makes encode one NumPy gather
        self._table = None
        if max(map(ord, self.chars)) < 65536:
            table = np.full(65536, -1, dtype=np.int64)
            for c, i in self.stoi.items():
                table[ord(c)] = i
            self._table = table

    def encode(self, text: str) -> np.ndarray:
        """str -> int64 ids of shape (len(text),)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if self._table is not None:
            ids = np.full(codes.shape, -1, dtype=np.int64)
            small = codes < 65536
            ids[small] = self._table[codes[small]]
        else:
            ids = np.array([self.stoi.get(c, -1) for c in text], dtype=np.int64)
        missing = ids < 0
        if missing.any():
            if self.unknown == "error":
                pos = int(np.argmax(missing))
                raise ValueError(f"character {text[pos]!r} at index {pos} is not in the vocabulary "
                                 f"of {len(self.chars)} characters (use unknown='unk' to map it to <unk>)")
            ids[missing] = self.unk_id
        return ids

    def decode(self, ids) -> str:
        """int ids of shape (n,) -> str."""
        ids = _check_ids(np.ravel(ids), self.vocab_size)
        table = self.chars + ([self.UNK_CHAR] if self.unknown == "unk" else [])
        return "".join(table[i] for i in ids)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size}, unknown={self.unknown!r})"


# ----------------------------------------------------------------------- text
@functools.lru_cache(maxsize=1)
def default_corpus() -> str:
    """The English text of CPython's ``pydoc_data.topics`` (the documentation
    behind ``help('topic')``): topics joined in sorted key order, ~465 KB.
    Ships with every CPython, so it needs no download; always the same string
    for one Python version."""
    return "\n\n".join(topics[k] for k in sorted(topics))


#: the default size limit of :func:`load_text`: 256 MiB of text. LMData holds every byte as an
#: int64 token id (8 bytes each, split into train and validation copies), so a text of this size
#: already takes about 4.5 GiB while it is prepared.
MAX_TEXT_BYTES = 256 * 2 ** 20


def _mib(n):
    return f"{n / 2 ** 20:,.0f} MiB" if n >= 2 ** 20 else f"{n:,} bytes"


def load_text(path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Read a UTF-8 text file of at most ``max_bytes`` bytes (default
    :data:`MAX_TEXT_BYTES`, 256 MiB).

    A regular file's size is checked before anything is read; a device or a
    pipe (``/dev/stdin``, a fifo) is read in chunks and refused as soon as it
    passes the limit, so ``/dev/zero`` or an endless pipe cannot exhaust memory.

    Raises FileNotFoundError (missing), IsADirectoryError, PermissionError
    (unreadable), ValueError (larger than ``max_bytes``; not UTF-8, naming the
    byte offset; or empty).
    """
    path = os.fspath(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int; got {max_bytes!r}")
    max_bytes = int(max_bytes)
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"text file {path!r} is a directory, not a file")
    too_big = f"text file {path!r} is larger than the limit of {_mib(max_bytes)}"
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            regular = stat.S_ISREG(st.st_mode)
            if regular and st.st_size > max_bytes:
                raise ValueError(f"{too_big}; it has {st.st_size:,} bytes")
            # a device or a pipe has no size to trust (and a file may grow): read in chunks and
            # stop one byte past the limit; a regular file usually comes in one read
            want = st.st_size + 1 if regular else 1 << 20
            chunks, n = [], 0
            while n <= max_bytes:
                chunk = f.read(min(want, max_bytes + 1 - n))
                if not chunk:
                    break
                chunks.append(chunk)
                n += len(chunk)
                want = 1 << 20
            raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except PermissionError as e:
        raise PermissionError(f"text file {path!r} cannot be read: permission denied") from e
    except OSError as e:
        raise OSError(f"text file {path!r} cannot be read: {e.strerror or e}") from e
    if len(raw) > max_bytes:
        raise ValueError(f"{too_big}; stopped reading there" + ("" if regular else " (a device or a pipe)"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {path!r} is not valid UTF-8 (byte {e.start}: "
                         f"{raw[e.start:e.start + 1]!r}); convert it to UTF-8 first") from None
    if not text.strip():
        raise ValueError(f"text file {path!r} is empty" + (" (only whitespace)" if text else ""))
    return text


# -------------------------------------------------------------- LM data
class LMData:
    """Token ids for next-token prediction, split into train and validation.

    ``text_or_ids`` is a str (encoded with ``tokenizer``, default
    :class:`ByteTokenizer`) or a 1-D integer array. The first
    ``1 - val_fraction`` of the ids are the training split, the rest the
    validation split (contiguous, so the split is deterministic).
    """

    kind = "lm"

    def __init__(self, text_or_ids, tokenizer=None, val_fraction: float = 0.1):
        if not (isinstance(val_fraction, (float, int)) and 0.0 < val_fraction < 1.0):
            raise ValueError(f"val_fraction must be a number in (0, 1); got {val_fraction!r}")
        if isinstance(text_or_ids, str):
            self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
            ids = self.tokenizer.encode(text_or_ids)
            vocab_size = self.tokenizer.vocab_size
        else:
            arr = np.asarray(text_or_ids)
            if arr.dtype.kind not in "iu":
                # e.g. a pathlib.Path or None: say what to pass, not "ids must be 1-D; got shape ()"
                what = f"dtype {arr.dtype}" if arr.ndim else type(text_or_ids).__name__
                raise TypeError(f"text_or_ids must be a str (the text itself; read a file with "
                                f"relpos.data.load_text(path)) or a 1-D integer array; got {what}")
            if arr.ndim != 1:
                raise ValueError(f"text_or_ids as ids must be 1-D; got shape {arr.shape}")
            self.tokenizer = tokenizer
            if tokenizer is not None:
                vocab_size = tokenizer.vocab_size
            else:
                vocab_size = int(arr.max()) + 1 if arr.size else 1
            ids = _check_ids(arr, vocab_size)
        if ids.size < 4:
            raise ValueError(f"need at least 4 tokens to split into train and validation; got {ids.size}")
        n_val = max(2, int(round(ids.size * val_fraction)))
        n_train = ids.size - n_val
        if n_train < 2:
            raise ValueError(f"val_fraction={val_fraction} leaves {n_train} training tokens")
        self.vocab_size = int(vocab_size)
        self.val_fraction = float(val_fraction)
        self.train = np.ascontiguousarray(ids[:n_train])
        self.val = np.ascontiguousarray(ids[n_train:])

    def _split(self, split):
        if split == "train":
            return self.train
        if split in ("val", "validation"):
            return self.val
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}")

    def check_seq_len(self, seq_len, split="train"):
        """Raise ValueError if windows of ``seq_len`` (+1 target) do not fit in the split."""
        seq_len = _positive_int(seq_len, "seq_len")
        ids = self._split(split)
        if seq_len + 1 > ids.size:
            raise ValueError(f"seq_len {seq_len} is longer than the data: the {split} split has "
                             f"{ids.size} tokens (a window needs seq_len + 1 = {seq_len + 1})")
        return seq_len

    def batch(self, batch_size: int, seq_len: int, rng, split: str = "train"):
        """Random windows: (x, y) int64 arrays of shape (batch_size, seq_len),
        ``y`` being ``x`` shifted by one token. Offsets drawn from ``rng``."""
        batch_size = _positive_int(batch_size, "batch_size")
        seq_len = self.check_seq_len(seq_len, split)
        ids = self._split(split)
        rng = _as_rng(rng)
        starts = rng.integers(0, ids.size - seq_len, size=batch_size)
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        w = ids[idx]
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])

    def eval_windows(self, seq_len: int, sliding: bool = False, stride: int | None = None,
                     split: str = "val", max_tokens: int | None = None):
        """Evaluation windows over a split: (x, y) int64 of shape (n_windows, seq_len).

        Non-overlapping (default): consecutive windows, every target scored.
        ``sliding=True``: windows start every ``stride`` tokens (default
        ``seq_len // 2``); after the first, only the last ``stride`` targets of
        each window are scored (the others hold IGNORE_INDEX), so each token
        is scored once, with up to ``seq_len - stride`` tokens of context.
        ``max_tokens`` limits the span of the split used (its first tokens).
        """
        seq_len = self.check_seq_len(seq_len, split)
        ids = self._split(split)
        if max_tokens is not None:
            max_tokens = _positive_int(max_tokens, "max_tokens")
            ids = ids[:max(max_tokens, seq_len) + 1]
        n = ids.size
        if not sliding:
            if stride is not None:
                raise ValueError("stride is only used with sliding=True")
            n_win = (n - 1) // seq_len
            starts = np.arange(n_win) * seq_len
            idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
            w = ids[idx]
            return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])
        if stride is None:
            stride = max(1, seq_len // 2)
        stride = _positive_int(stride, "stride")
        if stride > seq_len:
            raise ValueError(f"stride must be <= seq_len ({seq_len}); got {stride}")
        starts = np.arange(0, n - seq_len, stride)
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        w = ids[idx]
        x = w[:, :-1].copy()
        y = w[:, 1:].copy()
        y[1:, :seq_len - stride] = IGNORE_INDEX
        return x, y

    def __repr__(self):
        return (f"LMData(train={self.train.size} tokens, val={self.val.size} tokens, "
                f"vocab_size={self.vocab_size}, tokenizer={self.tokenizer!r})")


# -------------------------------------------------------------------- tasks
def exact_match(model_outputs, targets, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of sequences whose every scored target is predicted exactly.

    ``model_outputs``: predicted ids (n, T) or logits (n, T, V) (argmax is
    taken); ``targets``: (n, T) with ``ignore_index`` where nothing is scored.
    A sequence with no scored position counts as correct.
    """
    out = model_outputs.numpy() if hasattr(model_outputs, "numpy") and not isinstance(
        model_outputs, np.ndarray) else np.asarray(model_outputs)
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must have shape (n, T); got {targets.shape}")
    if out.ndim == 3:
        out = out.argmax(axis=-1)
    if out.shape != targets.shape:
        raise ValueError(f"model_outputs must have shape (n, T) or (n, T, V) matching targets "
                         f"{targets.shape}; got {np.shape(model_outputs)}")
    if targets.shape[0] == 0:
        raise ValueError("exact_match needs at least one sequence; got 0")
    scored = targets != ignore_index
    ok = (out == targets) | ~scored
    return float(ok.all(axis=1).mean())


class Task:
    """A synthetic sequence task for a decoder LM.

    A problem of size ``length`` is laid out as ``prompt <sep> answer <end>``;
    ``sample`` returns ``inputs = seq[:-1]`` and ``targets = seq[1:]`` with
    IGNORE_INDEX wherever the target lies in the prompt (or is the separator),
    so the loss covers only the answer and the end token.

    Ids: 0 ``<pad>``, 1 ``<sep>``, 2 ``<end>``, then the task's extra special
    tokens, then its symbols. ``train_lengths`` is the inclusive range of
    problem sizes seen in training; ``test_lengths`` are longer sizes.

    Options: ``length_sampling`` ("uniform" or "linear", see :meth:`batch`);
    ``curriculum`` (0): over the first that many training batches the largest
    size grows linearly from the smallest to the largest train length (a
    count of batches drawn, kept by the task: a fresh task starts over);
    ``bos`` (False): start every sequence with a ``<bos>`` token (the last id),
    as a pretrained tokenizer would. Position-free models (NoPE) need it: with
    causal attention, the share of attention a query gives a fixed first token
    tells how far in it is, which is how they find positions (Kazemnejad et al.
    2023, whose models see a start token).
    Subclasses implement ``_problems(n, length, rng) -> (prompt, answer)``,
    two int64 arrays of symbol ids, and ``seq_len(length)``.
    """

    kind = "task"
    name = "task"
    specials = ("<pad>", "<sep>", "<end>")
    extra_specials: tuple = ()
    pad_id, sep_id, end_id = 0, 1, 2
    default_train_lengths = (1, 16)
    default_test_lengths = (32, 64, 128)

    def __init__(self, train_lengths=None, test_lengths=None, n_symbols=None, length_sampling="uniform",
                 bos=False, curriculum=0):
        if n_symbols is not None:
            self.n_symbols = _positive_int(n_symbols, "n_symbols", 2)
        if length_sampling not in ("uniform", "linear"):
            raise ValueError(f"length_sampling must be 'uniform' or 'linear'; got {length_sampling!r}")
        self.length_sampling = length_sampling
        self.curriculum = _positive_int(curriculum, "curriculum", 0)
        self.batches_drawn = 0
        lo, hi = train_lengths if train_lengths is not None else self.default_train_lengths
        lo = _positive_int(lo, "train_lengths[0]", self.min_length)
        hi = _positive_int(hi, "train_lengths[1]", lo)
        self.train_lengths = (lo, hi)
        tl = test_lengths if test_lengths is not None else self.default_test_lengths
        self.test_lengths = tuple(_positive_int(t, "test_lengths[i]", self.min_length) for t in tl)
        self.tokens = list(self.specials) + list(self.extra_specials) + list(self.symbol_names())
        self.first_symbol = len(self.specials) + len(self.extra_specials)
        if not isinstance(bos, (bool, np.bool_)):
            raise TypeError(f"bos must be a bool; got {bos!r}")
        self.bos = bool(bos)
        self.bos_id = None
        if self.bos:  # the last id, so that every other id stays what it is without it
            self.bos_id = len(self.tokens)
            self.tokens.append("<bos>")
        self.vocab_size = len(self.tokens)

    min_length = 1
    n_symbols = 16

    def symbol_names(self):
        return [f"s{i}" for i in range(self.n_symbols)]

    def special_id(self, token):
        return self.tokens.index(token)

    def seq_len(self, length: int) -> int:
        """Model input length T for problem size ``length`` (= len(sequence) - 1)."""
        p, a = self._sizes(length)
        return int(self.bos) + p + 1 + a + 1 - 1

    def _sizes(self, length):  # (prompt length, answer length)
        raise NotImplementedError

    def max_length_for(self, seq_len: int) -> int:
        """Largest problem size whose sequence fits in ``seq_len`` model positions (0 if none)."""
        n = 0
        while self.seq_len(n + 1) <= seq_len:
            n += 1
        return n

    def _check_length(self, length):
        length = _positive_int(length, "length", self.min_length)
        return length

    def sample(self, n: int, length: int, rng):
        """``n`` problems of size ``length``: (inputs, targets), int64 (n, T)
        with T = ``seq_len(length)``; targets hold IGNORE_INDEX on the prompt."""
        n = _positive_int(n, "n")
        length = self._check_length(length)
        rng = _as_rng(rng)
        return self._assemble(*self._problems(n, length, rng))

    def _assemble(self, prompt, answer):
        """(prompt, answer) symbol ids, (n, P) and (n, A) -> (inputs, targets) as in :meth:`sample`."""
        n = prompt.shape[0]
        if self.bos:
            prompt = np.concatenate([np.full((n, 1), self.bos_id, np.int64), prompt], axis=1)
        seq = np.concatenate([prompt, np.full((n, 1), self.sep_id, np.int64), answer,
                              np.full((n, 1), self.end_id, np.int64)], axis=1)
        inputs = seq[:, :-1].copy()
        targets = seq[:, 1:].copy()  # copies: for n == 1 both slices would share memory
        targets[:, :prompt.shape[1]] = IGNORE_INDEX
        return inputs, targets

    def batch(self, batch_size: int, rng, lengths=None):
        """A training batch at one size drawn from ``lengths`` (default
        ``train_lengths``, inclusive): uniformly, or with probability ∝ size when
        ``length_sampling="linear"`` (more batches at the longest sizes, which
        are the hardest to get exactly right). (inputs, targets) as in :meth:`sample`."""
        rng = _as_rng(rng)
        lo, hi = self._train_range(lengths)
        return self.sample(batch_size, int(self._draw_sizes(lo, hi, rng)), rng)

    def _draw_sizes(self, lo, hi, rng, shape=None):
        """Sizes from lo..hi (inclusive), uniformly or, with ``length_sampling="linear"``,
        with probability proportional to the size; one (shape None) or an array of ``shape``."""
        if self.length_sampling == "linear":
            sizes = np.arange(lo, hi + 1)
            return sizes[np.searchsorted(np.cumsum(sizes) / sizes.sum(), rng.random(shape), side="right")
                         .clip(0, sizes.size - 1)]
        return rng.integers(lo, hi + 1, size=shape)

    def _train_range(self, lengths):
        """The sizes (lo, hi) a training batch draws from: ``lengths`` or
        ``train_lengths``, with the curriculum's current largest size."""
        lo, hi = lengths if lengths is not None else self.train_lengths
        if self.curriculum and lengths is None:
            # the largest size grows linearly from lo to hi over the first `curriculum` batches
            hi = lo + int((hi - lo) * min(1.0, (self.batches_drawn + 1) / self.curriculum))
            self.batches_drawn += 1
        return lo, hi

    def decode(self, ids) -> str:
        """ids -> space-separated token names (IGNORE_INDEX shown as '_')."""
        return " ".join("_" if i == IGNORE_INDEX else self.tokens[i] for i in np.ravel(ids))

    exact_match = staticmethod(exact_match)

    def __repr__(self):
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, train_lengths={self.train_lengths}, "
                f"test_lengths={self.test_lengths})")


class CopyTask(Task):
    """Repeat a random string of ``length`` symbols."""
    name = "copy"

    def _sizes(self, length):
        return length, length

    def _problems(self, n, length, rng):
        x = rng.integers(0, self.n_symbols, size=(n, length)) + self.first_symbol
        return x, self._answer(x)

    def _answer(self, x):
        return x.copy()


class ReverseTask(CopyTask):
    """Write a random string of ``length`` symbols backwards."""
    name = "reverse"

    def _answer(self, x):
        return x[:, ::-1].copy()


class SortTask(CopyTask):
    """Sort a random string of ``length`` symbols (by symbol id)."""
    name = "sort"

    def _answer(self, x):
        return np.sort(x, axis=1)


class RecallTask(Task):
    """Associative recall: ``length`` key-value pairs then a query key; the
    answer is the value stored under it. Keys are distinct, so ``length`` is at
    most ``n_keys``."""
    name = "recall"
    n_keys = 128
    n_values = 16
    default_train_lengths = (1, 8)
    default_test_lengths = (16, 32, 64)

    def __init__(self, train_lengths=None, test_lengths=None, n_keys=None, n_values=None,
                 length_sampling="uniform", bos=False, curriculum=0):
        if n_keys is not None:
            self.n_keys = _positive_int(n_keys, "n_keys", 2)
        if n_values is not None:
            self.n_values = _positive_int(n_values, "n_values", 2)
        super().__init__(train_lengths, test_lengths, length_sampling=length_sampling, bos=bos,
                         curriculum=curriculum)

    def symbol_names(self):
        return [f"k{i}" for i in range(self.n_keys)] + [f"v{i}" for i in range(self.n_values)]

    def _sizes(self, length):
        return 2 * length + 1, 1

    def _check_length(self, length):
        length = super()._check_length(length)
        if length > self.n_keys:
            raise ValueError(f"length must be <= n_keys ({self.n_keys}) for recall (keys are distinct); "
                             f"got {length}")
        return length

    def _problems(self, n, length, rng):
        keys = np.argsort(rng.random((n, self.n_keys)), axis=1)[:, :length]
        vals = rng.integers(0, self.n_values, size=(n, length))
        which = rng.integers(0, length, size=n)
        k_ids = keys + self.first_symbol
        v_ids = vals + self.first_symbol + self.n_keys
        prompt = np.empty((n, 2 * length + 1), np.int64)
        prompt[:, 0:2 * length:2] = k_ids
        prompt[:, 1:2 * length:2] = v_ids
        rows = np.arange(n)
        prompt[:, -1] = k_ids[rows, which]
        return prompt, v_ids[rows, which][:, None]


class ParityTask(Task):
    """Parity of a random bit string of ``length`` bits (answer: one bit)."""
    name = "parity"
    n_symbols = 2

    def symbol_names(self):
        return ["0", "1"]

    def _sizes(self, length):
        return length, 1

    def _problems(self, n, length, rng):
        bits = rng.integers(0, 2, size=(n, length))
        return bits + self.first_symbol, (bits.sum(axis=1) % 2)[:, None] + self.first_symbol


class AdditionTask(Task):
    """Add two numbers. Digits are written least significant first (``a + b``);
    the answer has one digit more than the operands, also reversed.

    ``pad=True`` (the default) writes every *training* problem at the largest
    training size: each operand's number of digits is drawn from
    ``train_lengths`` (per problem and per operand, ``length_sampling`` as for
    sizes) and zero-padded to that width, so that both operands and the answer
    stay aligned at fixed distances and short and long numbers are balanced, as
    in the small-transformer arithmetic of Lee et al. 2023 ("Teaching Arithmetic
    to Small Transformers", reversed output, balanced digit counts). Test
    problems (:meth:`sample`) always have two full-size operands, the hardest
    problems of their size. ``pad=False`` trains as the other tasks do, on
    full-size operands at a size drawn per batch; there the distance from an
    answer digit to its operand digits changes with the size, and sum digits
    carry no signal about one operand alone: 3-layer models of ``compare``'s size
    learned no exact match in that form in up to 6000 steps (README, "What you
    should see").
    """
    name = "addition"
    extra_specials = ("+",)
    n_symbols = 10
    default_train_lengths = (1, 8)
    default_test_lengths = (16, 32, 64)

    def __init__(self, train_lengths=None, test_lengths=None, length_sampling="uniform", bos=False,
                 curriculum=0, pad=True):
        if not isinstance(pad, (bool, np.bool_)):
            raise TypeError(f"pad must be a bool; got {pad!r}")
        self.pad = bool(pad)
        super().__init__(train_lengths, test_lengths, length_sampling=length_sampling, bos=bos,
                         curriculum=curriculum)

    def symbol_names(self):
        return [str(d) for d in range(10)]

    def _sizes(self, length):
        return 2 * length + 1, length + 1

    def _problems(self, n, length, rng):
        a = rng.integers(0, 10, size=(n, length))
        b = rng.integers(0, 10, size=(n, length))
        return self._write(a, b)

    def _write(self, a, b):
        """Digit arrays (n, width), least significant first -> (prompt, answer) ids."""
        n, width = a.shape
        out = np.zeros((n, width + 1), np.int64)
        carry = np.zeros(n, np.int64)
        for i in range(width):  # digit loop, least significant first
            s = a[:, i] + b[:, i] + carry
            out[:, i] = s % 10
            carry = s // 10
        out[:, width] = carry
        f = self.first_symbol
        plus = np.full((n, 1), self.special_id("+"), np.int64)
        return np.concatenate([a + f, plus, b + f], axis=1), out + f

    def batch(self, batch_size: int, rng, lengths=None):
        """A training batch; with ``pad`` every problem at the largest size of
        ``lengths`` (default ``train_lengths``), each operand with its own number
        of digits drawn from them and zero-padded. (inputs, targets) as in :meth:`sample`."""
        if not self.pad:
            return super().batch(batch_size, rng, lengths)
        n = _positive_int(batch_size, "batch_size")
        rng = _as_rng(rng)
        lo, hi = self._train_range(lengths)
        lo, hi = self._check_length(lo), self._check_length(hi)
        digits = self._draw_sizes(lo, hi, rng, (n, 2))
        col = np.arange(hi)
        a = np.where(col < digits[:, :1], rng.integers(0, 10, size=(n, hi)), 0)
        b = np.where(col < digits[:, 1:], rng.integers(0, 10, size=(n, hi)), 0)
        return self._assemble(*self._write(a, b))


TASKS = {cls.name: cls for cls in (CopyTask, ReverseTask, SortTask, RecallTask, ParityTask, AdditionTask)}


def get_task(name: str, **options) -> Task:
    """A task by name (copy, reverse, sort, recall, parity, addition), with
    options such as ``train_lengths=(lo, hi)``, ``test_lengths=(...)``."""
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise TypeError(f"task name must be a str; got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    if key in ("associative_recall", "assoc_recall"):
        key = "recall"
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key](**options)
