"""Transformer models built from relpos layers: a block, a decoder LM, an encoder.

    >>> from relpos.models import TransformerLM     # also relpos.nn.TransformerLM
    >>> model = TransformerLM(vocab_size=256, d_model=64, n_layers=2, n_heads=4, encoding="alibi")
    >>> logits = model(ids)                      # ids (B, T) int64 -> (B, T, 256)
    >>> loss = model.loss(ids[:, :-1], ids[:, 1:])
    >>> model.generate(prompt, max_new_tokens=20, temperature=0)   # greedy, with a KV cache

Position encodings are chosen by name (``relpos.encodings.available()``).
Channel-A encodings (none, sinusoidal, learned, complex) act once, on the token
embeddings; the others act inside every attention layer, each layer holding
its own copy (with its own learnable parameters, if any).
"""
from __future__ import annotations

import math
import numbers
import re

import numpy as np

from . import encodings, nn
from . import functional as F
from .encodings import Encoding
from .functional import IGNORE_INDEX
from .nn.module import IncompatibleKeys, _as_numpy
from .tensor import Tensor, no_grad

__all__ = ["TransformerBlock", "TransformerLM", "TransformerEncoder", "TORCH_NAME_MAP", "to_torch_names",
           "from_torch_names"]


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _check_sizes(d_model, n_heads, n_layers=None, d_ff=None, dropout=0.0, norm="layernorm"):
    d_model = _check_int(d_model, "d_model")
    n_heads = _check_int(n_heads, "n_heads")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    if n_layers is not None:
        _check_int(n_layers, "n_layers")
    if d_ff is not None:
        _check_int(d_ff, "d_ff")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    if norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm must be 'layernorm' or 'rmsnorm'; got {norm!r}")


def _norm(kind, d):
    return nn.LayerNorm(d) if kind == "layernorm" else nn.RMSNorm(d)


def _ids(ids, name="ids"):
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer token ids; got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T) or (T,); got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


class TransformerBlock(nn.Module):
    """Attention and a GELU MLP, each with a residual connection.

    Pre-LN (default): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.
    Post-LN: ``norm1(x + attn(x))``, then ``norm2(x + mlp(x))``.

    Args:
        d_model, n_heads: width and heads (d_model divisible by n_heads).
        encoding: an encoding name (or Encoding) for the attention layer.
        d_ff: MLP hidden width (default 4 * d_model).
        norm: "layernorm" or "rmsnorm". pre_ln: see above.
        dropout: on attention probabilities and after each sublayer.
        causal: causal mask. impl: attention implementation ("auto",
            "fused", "materialized"). seed: initialisation seed.
        **encoding_options: passed to the encoding.

    forward(x (B, T, d_model), cache=None, key_padding_mask=None) -> (B, T, d_model).
    """

    def __init__(self, d_model, n_heads, encoding="rope", d_ff=None, norm="layernorm", pre_ln=True,
                 dropout=0.0, causal=True, impl="auto", seed=0, **encoding_options):
        super().__init__()
        _check_sizes(d_model, n_heads, d_ff=d_ff, dropout=dropout, norm=norm)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.d_model, self.n_heads, self.d_ff = d_model, n_heads, d_ff
        self.pre_ln, self.causal = bool(pre_ln), bool(causal)
        self.norm1 = _norm(norm, d_model)
        self.attn = nn.MultiHeadAttention(d_model, n_heads, encoding=encoding, causal=causal, bias=True,
                                          dropout=dropout, impl=impl, seed=seed, **encoding_options)
        self.norm2 = _norm(norm, d_model)
        self.fc1 = nn.Linear(d_model, d_ff, seed=seed + 1)
        self.fc2 = nn.Linear(d_ff, d_model, seed=seed + 2)
        self.drop = nn.Dropout(dropout, seed=seed + 3)

    def _mlp(self, x):
        return self.drop(self.fc2(F.linear_gelu(x, self.fc1.weight, self.fc1.bias)))

    def _fusable(self):
        return self.pre_ln and isinstance(self.norm1, nn.LayerNorm) and isinstance(self.norm2, nn.LayerNorm)

    def forward_fused(self, x, h, next_norm, key_padding_mask=None):
        """Pre-LN block with the residual adds fused into the following LayerNorm:
        x (B, T, d) the residual stream, h = norm1(x) -> (x', next_norm(x'))."""
        a = self.attn(h, key_padding_mask=key_padding_mask)
        x, h = F.add_layer_norm(x, a, self.norm2.weight, self.norm2.bias, self.norm2.eps)
        return F.add_layer_norm(x, self._mlp(h), next_norm.weight, next_norm.bias, next_norm.eps)

    def forward(self, x, cache=None, key_padding_mask=None):
        if self.pre_ln:
            # the attention layer applies its own dropout to its output
            x = x + self.attn(self.norm1(x), cache=cache, key_padding_mask=key_padding_mask)
            return x + self._mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, cache=cache, key_padding_mask=key_padding_mask))
        return self.norm2(x + self._mlp(x))

    def extra_repr(self):
        return f"pre_ln={self.pre_ln}, causal={self.causal}"


class _Stack(nn.Module):
    """Token embedding, channel-A encoding, blocks, final norm: shared by the LM and the encoder."""

    def _build(self, vocab_size, d_model, n_layers, n_heads, encoding, max_len, d_ff, norm, pre_ln,
               dropout, causal, impl, seed, encoding_options, embed_scale="auto"):
        _check_int(vocab_size, "vocab_size")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"seed must be an int >= 0 (models are initialised reproducibly); got {seed!r}")
        _check_sizes(d_model, n_heads, n_layers, d_ff, dropout, norm)
        if max_len is not None:
            _check_int(max_len, "max_len")
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        self.max_len, self.causal, self.seed = max_len, causal, seed
        head_dim = d_model // n_heads
        # one probe instance tells the channel; absolute encodings live here, others in each layer
        ctx = dict(n_heads=n_heads, head_dim=head_dim, d_model=d_model, max_len=max_len, seed=seed)
        cls = type(encoding) if encodings.is_encoding(encoding) else encodings.lookup(encoding or "none")
        if cls.replaces_token_embedding and not encodings.is_encoding(encoding):
            # e.g. complex word order: it builds the token embedding itself
            encoding_options = dict(encoding_options)
            encoding_options.setdefault("vocab_size", vocab_size)
        if encodings.is_encoding(encoding):
            if encoding_options:
                raise ValueError(f"encoding options {sorted(encoding_options)} are given with an already built "
                                 "encoding")
            probe = encoding
        else:
            probe = encodings.build(encoding, ctx, **encoding_options)
        probe.check_causal(causal)
        self.encoding_name = probe.name
        self.absolute = "A" in probe.channel
        self.tok_emb = None if probe.replaces_token_embedding else nn.Embedding(vocab_size, d_model, seed=seed)
        if embed_scale == "auto":
            # Vaswani et al. scale token embeddings by sqrt(d_model) before adding the fixed
            # sinusoids; without it the unit-amplitude table drowns N(0, 0.02) embeddings
            embed_scale = math.sqrt(d_model) if probe.name == "sinusoidal" else 1.0
        if isinstance(embed_scale, bool) or not isinstance(embed_scale, (int, float)) or embed_scale <= 0:
            raise ValueError(f"embed_scale must be 'auto' or a number > 0; got {embed_scale!r}")
        self.embed_scale = float(embed_scale)
        if self.absolute:
            self.pos = probe
            layer_encoding, layer_opts = None, {}
        elif probe is encoding:
            # an Encoding instance given by the caller: one module shared by every layer (as T5 shares its table)
            self.pos = None
            layer_encoding, layer_opts = probe, {}
        else:
            self.pos = None
            layer_encoding, layer_opts = type(probe), dict(encoding_options)
            if max_len is not None:
                layer_opts.setdefault("max_len", max_len)
        self.drop = nn.Dropout(dropout, seed=seed + 7919)
        self.blocks = nn.ModuleList([
            TransformerBlock(d_model, n_heads, encoding=layer_encoding, d_ff=d_ff, norm=norm, pre_ln=pre_ln,
                             dropout=dropout, causal=causal, impl=impl, seed=seed * 1000 + 10 * i + 1,
                             **layer_opts)
            for i in range(n_layers)])
        self.norm_f = _norm(norm, d_model) if pre_ln else None

    @property
    def max_positions(self):
        """Longest input the model can take: max_len for learned absolute
        positions, None (no limit) otherwise."""
        if self.pos is not None and getattr(self.pos, "name", "") == "learned" \
                and not getattr(self.pos, "clamp", False):
            return self.max_len
        return None

    def _init_weights(self):
        """GPT-2 initialisation from ``seed``: weights N(0, 0.02), residual
        projections N(0, 0.02 / sqrt(2 n_layers)), biases 0, norms 1. Encoding
        parameters keep their own initialisation."""
        rng = np.random.default_rng(self.seed)
        resid = 0.02 / math.sqrt(2 * self.n_layers)
        residual = set()
        for blk in self.blocks:
            residual.add(id(blk.fc2.weight))
            residual.add(id(blk.attn.out_proj.weight))
        skip = set()
        for m in self.modules():
            if isinstance(m, Encoding):
                skip.update(id(p) for p in m.parameters())
        for name, p in self.named_parameters():
            if id(p) in skip:
                continue
            if isinstance(self._owner(name), (nn.LayerNorm, nn.RMSNorm)):
                p.data[...] = 1.0 if name.endswith("weight") else 0.0
            elif p.data.ndim >= 2:
                std = resid if id(p) in residual else 0.02
                p.data[...] = rng.normal(0.0, std, size=p.shape).astype(np.float32)
            else:
                p.data[...] = 0.0

    def _owner(self, name):
        mod = self
        for part in name.split(".")[:-1]:
            mod = getattr(mod, part) if not part.isdigit() else mod[int(part)]
        return mod

    def _embed(self, ids, offset=0):
        B, T = ids.shape
        if self.max_positions is not None and offset + T > self.max_positions:
            raise ValueError(f"sequence of {offset + T} tokens is longer than max_len={self.max_positions} "
                             f"of the learned absolute positions")
        x = self.tok_emb(ids) if self.tok_emb is not None else None
        if x is not None and self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.pos is not None:
            positions = np.arange(offset, offset + T, dtype=np.int64)
            x = self.pos.embed(x, positions, ids=ids)
        return self.drop(x)

    def _trunk(self, ids, caches=None, key_padding_mask=None):
        offset = 0
        if caches is not None:
            offset = caches[0].length if caches[0] is not None else 0
        x = self._embed(ids, offset)
        if caches is None and self.norm_f is not None and isinstance(self.norm_f, nn.LayerNorm) \
                and all(blk._fusable() for blk in self.blocks):
            # same values, fewer passes: each residual add fused into the next LayerNorm
            blocks = list(self.blocks)
            h = blocks[0].norm1(x)
            for i, blk in enumerate(blocks):
                nxt = blocks[i + 1].norm1 if i + 1 < len(blocks) else self.norm_f
                x, h = blk.forward_fused(x, h, nxt, key_padding_mask=key_padding_mask)
            return h
        for i, blk in enumerate(self.blocks):
            x = blk(x, cache=None if caches is None else caches[i], key_padding_mask=key_padding_mask)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x

    def torch_state_dict(self) -> dict:
        """This model's weights under the names of a plain torch module (see
        ``TORCH_NAME_MAP``): name -> ndarray copy, ready for
        ``relpos.save(..., "x.safetensors")`` and torch's ``load_state_dict``.
        A tied output head is stored once, as ``embed_tokens.weight`` (as
        ``safetensors.torch.save_model`` and Hugging Face files do)."""
        return to_torch_names(self.state_dict())

    def load_torch_state_dict(self, state_dict, strict: bool = True):
        """Load weights named as in ``TORCH_NAME_MAP`` (ndarrays, or torch tensors
        read through ``.detach().cpu().numpy()``), e.g. ``relpos.load("x.safetensors")``
        of a file written by torch. With tied weights, an ``lm_head.weight``
        entry must equal ``embed_tokens.weight`` (a ValueError otherwise).
        Missing and unexpected keys are reported with the torch names, as
        ``IncompatibleKeys`` (strict=False) or in one ValueError (strict=True,
        nothing loaded); shape mismatches name the relpos parameter."""
        sd = dict(state_dict)
        if getattr(self, "tie_weights", False) and "lm_head.weight" in sd:
            head, emb = sd.pop("lm_head.weight"), sd.get("embed_tokens.weight")
            if emb is None:  # only the head was stored: with tied weights it is the embedding
                sd["embed_tokens.weight"] = head
            elif not np.array_equal(np.asarray(_as_numpy(head)), np.asarray(_as_numpy(emb))):
                raise ValueError("this model ties its output head to the token embedding, but lm_head.weight "
                                 "differs from embed_tokens.weight; build it with tie_weights=False")
        own = list(to_torch_names(dict.fromkeys(name for name, _ in self._state_items())))
        own_set = set(own)
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own_set]
        if strict and (missing or unexpected):
            problems = ([f"missing keys: {', '.join(missing)}"] if missing else []) + \
                       ([f"unexpected keys: {', '.join(unexpected)}"] if unexpected else [])
            raise ValueError(f"load_torch_state_dict into {type(self).__name__} failed (torch names, see "
                             f"relpos.models.TORCH_NAME_MAP):\n  " + "\n  ".join(problems))
        self.load_state_dict(from_torch_names(sd), strict=False)
        return IncompatibleKeys(missing, unexpected)


class TransformerLM(_Stack):
    """A decoder-only (causal) language model.

    Args:
        vocab_size: token ids are in [0, vocab_size).
        d_model, n_layers, n_heads: sizes (d_model divisible by n_heads).
        encoding: position encoding name (default "rope"); its options as
            extra keyword arguments (e.g. ``base=500``). Each layer builds its
            own copy; an Encoding instance instead is shared by all layers.
        max_len: maximum sequence length, needed by learned absolute positions
            (past it they have no row: inputs that long raise ValueError and
            ``evaluate_lengths`` reports them as not applicable).
        tie_weights: output projection = token embedding (transposed).
        d_ff, norm, pre_ln, dropout, impl: see :class:`TransformerBlock`.
        seed: initialisation (GPT-2 style) and dropout seed.
        embed_scale: factor on the token embeddings before a channel-A
            encoding is added; "auto" = sqrt(d_model) for sinusoidal (as in
            Vaswani et al.), 1 otherwise.

    forward(ids (B, T) int) -> logits Tensor (B, T, vocab_size).
    """

    def __init__(self, vocab_size, d_model=64, n_layers=2, n_heads=4, encoding="rope", max_len=None,
                 tie_weights=True, d_ff=None, norm="layernorm", pre_ln=True, dropout=0.0, impl="auto",
                 seed=0, embed_scale="auto", **encoding_options):
        super().__init__()
        self._build(vocab_size, d_model, n_layers, n_heads, encoding, max_len, d_ff, norm, pre_ln, dropout,
                    True, impl, seed, encoding_options, embed_scale)
        self.tie_weights = bool(tie_weights) and self.tok_emb is not None
        self.lm_head = None if self.tie_weights else nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights()

    def _logits(self, h):
        if self.tie_weights:
            return F.linear(h, self.tok_emb.weight)
        return self.lm_head(h)

    def forward(self, ids, cache=None):
        """ids (B, T) or (T,) int -> logits (B, T, vocab_size). ``cache``: a list
        of per-layer KV caches (from :meth:`new_cache`) to continue from."""
        ids = _ids(ids)
        self._check_ids(ids)
        return self._logits(self._trunk(ids, cache))

    def _check_ids(self, ids):
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise IndexError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")

    def loss(self, ids, targets, ignore_index: int = IGNORE_INDEX):
        """Mean cross-entropy of next-token prediction: ids (B, T), targets
        (B, T) int (``ignore_index`` entries not scored) -> scalar Tensor."""
        ids = _ids(ids)
        targets = _ids(targets, "targets")
        if targets.shape != ids.shape:
            raise ValueError(f"targets must have the shape of ids {ids.shape}; got {targets.shape}")
        if type(self).forward is TransformerLM.forward and type(self)._logits is TransformerLM._logits:
            # the head and the loss as one node (same bits as the logits then cross_entropy)
            self._check_ids(ids)
            h = self._trunk(ids, None)
            w = self.tok_emb.weight if self.tie_weights else self.lm_head.weight
            return F.head_cross_entropy(h, w, targets, ignore_index=ignore_index)
        logits = self(ids)
        B, T, V = logits.shape
        return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), ignore_index=ignore_index)

    def new_cache(self):
        """Empty per-layer key/value caches for incremental decoding."""
        return [nn.KVCache() for _ in self.blocks]

    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, seed=None,
                 use_cache=True):
        """Continue ``prompt_ids`` ((T0,) or (B, T0) int) by ``max_new_tokens``.

        Sampling: softmax(logits / temperature) restricted to the ``top_k``
        most likely tokens, drawn from ``np.random.default_rng(seed)``;
        ``temperature`` is any real scalar >= 0 (Python or NumPy); 0 is greedy
        (argmax), and so, in the limit, is a temperature too small for
        logits / temperature to be finite. With ``use_cache`` (default) the
        prompt runs once and each new token attends to cached keys/values
        (queries placed at their absolute positions by q_offset); without it
        the whole sequence is recomputed every step (same result).

        Returns int64 ids of shape (B, T0 + max_new_tokens) ((T,) for a 1-D prompt).
        """
        one_d = np.asarray(prompt_ids).ndim == 1
        ids = _ids(prompt_ids, "prompt_ids")
        self._check_ids(ids)
        max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 0)
        if ids.shape[1] == 0:
            raise ValueError("prompt_ids must hold at least one token")
        # any real scalar (Python or NumPy: np.float32(0.5) is as good as 0.5)
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature must be a real number; got {type(temperature).__name__}")
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0; got {temperature!r}")
        if top_k is not None:
            top_k = _check_int(top_k, "top_k")
        if self.max_positions is not None and ids.shape[1] + max_new_tokens > self.max_positions:
            raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_len={self.max_positions} of the learned absolute positions")
        rng = np.random.default_rng(seed)
        was_training = self.training
        self.eval()
        out = ids
        try:
            with no_grad():
                cache = self.new_cache() if use_cache else None
                step_in = ids
                for _ in range(max_new_tokens):
                    logits = self(step_in if use_cache else out, cache=cache).numpy()[:, -1, :]
                    nxt = self._sample(logits, temperature, top_k, rng)
                    out = np.concatenate([out, nxt[:, None]], axis=1)
                    step_in = nxt[:, None]
        finally:
            self.train(was_training)
        return out[0] if one_d else out

    @staticmethod
    def _sample(logits, temperature, top_k, rng):
        logits = logits.astype(np.float64)
        if temperature == 0:
            return logits.argmax(axis=-1).astype(np.int64)
        if top_k is not None and top_k < logits.shape[-1]:
            kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
            logits = np.where(logits < kth, -np.inf, logits)
        # shift before scaling: (logits - max) <= 0, so dividing by a tiny temperature can only
        # overflow towards -inf (probability 0), and the maximum stays at 0 (probability 1) —
        # the greedy limit, instead of inf - inf = nan
        with np.errstate(over="ignore"):
            z = (logits - logits.max(axis=-1, keepdims=True)) / temperature
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        u = rng.random(p.shape[0])
        idx = (np.cumsum(p, axis=-1) < u[:, None]).sum(axis=-1)
        return np.minimum(idx, p.shape[-1] - 1).astype(np.int64)

    def extra_repr(self):
        return (f"vocab_size={self.vocab_size}, encoding={self.encoding_name!r}, "
                f"tie_weights={self.tie_weights}, max_len={self.max_len}")


class TransformerEncoder(_Stack):
    """A bidirectional encoder with a token head or a classification head.

    Args as :class:`TransformerLM`, plus ``head``: "token" (logits per token,
    (B, T, n_classes), n_classes defaulting to vocab_size: a masked-LM head) or
    "classification" (mean over the non-padded tokens, then logits (B, n_classes)).
    Encodings that need a causal mask (NoPE, xPos, FIRE) raise ValueError.

    forward(ids (B, T), key_padding_mask=None ((B, T) bool, True = padding)).
    """

    def __init__(self, vocab_size, d_model=64, n_layers=2, n_heads=4, encoding="rope", max_len=None,
                 head="token", n_classes=None, d_ff=None, norm="layernorm", pre_ln=True, dropout=0.0,
                 impl="auto", seed=0, embed_scale="auto", **encoding_options):
        super().__init__()
        if head not in ("token", "classification"):
            raise ValueError(f"head must be 'token' or 'classification'; got {head!r}")
        if head == "classification" and n_classes is None:
            raise ValueError("head='classification' needs n_classes")
        n_classes = vocab_size if n_classes is None else _check_int(n_classes, "n_classes")
        self._build(vocab_size, d_model, n_layers, n_heads, encoding, max_len, d_ff, norm, pre_ln, dropout,
                    False, impl, seed, encoding_options, embed_scale)
        self.head_kind, self.n_classes = head, n_classes
        self.head = nn.Linear(d_model, n_classes)
        self._init_weights()

    def forward(self, ids, key_padding_mask=None):
        ids = _ids(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise IndexError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        mask = None
        if key_padding_mask is not None:
            mask = np.asarray(key_padding_mask)
            if mask.dtype != np.bool_:  # a float 0.5 must not silently become "padding"
                raise TypeError(f"key_padding_mask must have dtype bool (True = padding); got {mask.dtype}")
            if mask.shape != ids.shape:
                raise ValueError(f"key_padding_mask must have the shape of ids {ids.shape}; got {mask.shape}")
        h = self._trunk(ids, None, key_padding_mask=mask)
        if self.head_kind == "token":
            return self.head(h)
        keep = np.ones(ids.shape, np.float32) if mask is None else (~mask).astype(np.float32)
        denom = np.maximum(keep.sum(axis=1, keepdims=True), 1.0)
        pooled = (h * Tensor(keep[..., None] / denom[..., None])).sum(axis=1)
        return self.head(pooled)

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, encoding={self.encoding_name!r}, head={self.head_kind!r}"


# --------------------------------------------------------------- torch names
#: How relpos names map to the names of a plain torch module of the same
#: architecture (the layout of Llama-style Hugging Face code: ``nn.Embedding``,
#: ``nn.LayerNorm``/RMSNorm, ``nn.Linear`` with weights (out_features,
#: in_features) as in relpos, so no weight is transposed or reshaped). ``{i}``
#: is the layer index; the rest of the name (``weight``, ``bias``, an
#: encoding's parameter name) is kept.
#:
#: ================================  ==========================================
#: relpos                            torch
#: ================================  ==========================================
#: tok_emb.                          embed_tokens.        (vocab, d)
#: pos.                              embed_positions.     learned absolute positions (max_len, d), ...
#: blocks.{i}.norm1.                 layers.{i}.input_layernorm.
#: blocks.{i}.attn.q_proj.           layers.{i}.self_attn.q_proj.    (d, d) and (d,)
#: blocks.{i}.attn.k_proj.           layers.{i}.self_attn.k_proj.
#: blocks.{i}.attn.v_proj.           layers.{i}.self_attn.v_proj.
#: blocks.{i}.attn.out_proj.         layers.{i}.self_attn.o_proj.
#: blocks.{i}.attn.encoding.         layers.{i}.self_attn.encoding.  an encoding's parameters (T5 table, ...)
#: blocks.{i}.norm2.                 layers.{i}.post_attention_layernorm.
#: blocks.{i}.fc1.                   layers.{i}.mlp.up_proj.         (d_ff, d), GELU (tanh) after it
#: blocks.{i}.fc2.                   layers.{i}.mlp.down_proj.       (d, d_ff)
#: norm_f.                           norm.
#: lm_head.                          lm_head.             (untied models only; a tied head is not stored)
#: head.                             head.                (TransformerEncoder)
#: ================================  ==========================================
#:
#: Attention heads are the contiguous slices of d_model (head h is rows
#: h*D:(h+1)*D of q_proj.weight), RoPE rotates interleaved pairs (x_2k,
#: x_2k+1), and the attention scale is 1/sqrt(D), as in the torch twin in
#: tests/test_safetensors.py.
TORCH_NAME_MAP = (
    ("tok_emb.", "embed_tokens."),
    ("pos.", "embed_positions."),
    ("blocks.{i}.norm1.", "layers.{i}.input_layernorm."),
    ("blocks.{i}.attn.q_proj.", "layers.{i}.self_attn.q_proj."),
    ("blocks.{i}.attn.k_proj.", "layers.{i}.self_attn.k_proj."),
    ("blocks.{i}.attn.v_proj.", "layers.{i}.self_attn.v_proj."),
    ("blocks.{i}.attn.out_proj.", "layers.{i}.self_attn.o_proj."),
    ("blocks.{i}.attn.encoding.", "layers.{i}.self_attn.encoding."),
    ("blocks.{i}.norm2.", "layers.{i}.post_attention_layernorm."),
    ("blocks.{i}.fc1.", "layers.{i}.mlp.up_proj."),
    ("blocks.{i}.fc2.", "layers.{i}.mlp.down_proj."),
    ("norm_f.", "norm."),
    ("lm_head.", "lm_head."),
    ("head.", "head."),
)


def _prefix_regex(template):
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>0|[1-9][0-9]*)"))


_TO_TORCH = [(_prefix_regex(r), t) for r, t in TORCH_NAME_MAP]
_FROM_TORCH = [(_prefix_regex(t), r) for r, t in TORCH_NAME_MAP]


def _rename(name, rules):
    for rx, template in rules:
        m = rx.match(name)
        if m:
            return template.replace("{i}", m.groupdict().get("i") or "") + name[m.end():]
    return name  # not ours: left as it is, so load_state_dict reports it as unexpected


def to_torch_names(state_dict) -> dict:
    """A relpos state_dict renamed per ``TORCH_NAME_MAP`` (values as given)."""
    return {_rename(k, _TO_TORCH): v for k, v in state_dict.items()}


def from_torch_names(state_dict) -> dict:
    """The inverse of :func:`to_torch_names`: torch names -> relpos names (values as given)."""
    return {_rename(k, _FROM_TORCH): v for k, v in state_dict.items()}
