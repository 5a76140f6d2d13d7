"""Standard layers built on relpos.functional: Linear, Embedding, LayerNorm,
RMSNorm, Dropout, activations, Sequential, ModuleList and MLP.

Layers that draw random numbers take ``seed=`` (an int) or ``rng=`` (a
``numpy.random.Generator``, drawn from so that several layers can share one
stream); with neither, initial values come from fresh OS entropy.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from .. import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "ReLU", "SiLU", "Identity",
           "Sequential", "ModuleList", "MLP", "activation"]


def _positive_int(name, v, allow_zero=False):
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{name} must be an int; got {type(v).__name__}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {v}")
    return int(v)


def _positive_float(name, v):
    if isinstance(v, bool) or not isinstance(v, Real) or not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {v!r}")
    return float(v)


def _dropout_p(p, name="p"):
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"{name} must be a float in [0, 1); got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {p}")
    return p


class Linear(Module):
    """``y = x @ weight.T + bias``.

    Shapes: x (..., in_features) -> (..., out_features); weight
    (out_features, in_features), bias (out_features,). Both start from
    U(-1/sqrt(in_features), 1/sqrt(in_features)), as in torch.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, seed=None, rng=None):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        g = init.make_rng(rng, seed=seed)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), np.float32))
        init.fan_in_uniform_(self.weight, self.in_features, g)
        if bias:
            self.bias = Parameter(np.empty(self.out_features, np.float32))
            init.fan_in_uniform_(self.bias, self.in_features, g)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Lookup table: integer ids (any shape) -> ids.shape + (embedding_dim,).

    weight (num_embeddings, embedding_dim) starts from N(0, 1), as in torch
    (use ``init.gpt2_normal_`` for GPT-2 style). Ids outside [0, num_embeddings)
    raise IndexError.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, seed=None, rng=None):
        super().__init__()
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        g = init.make_rng(rng, seed=seed)
        self.weight = Parameter(init.normal((self.num_embeddings, self.embedding_dim), 0.0, 1.0, g))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalisation over the last axis: x (..., d) -> (..., d); weight ones, bias zeros."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.d = _positive_int("d", d)
        self.eps = _positive_float("eps", eps)
        self.weight = Parameter(np.ones(self.d, np.float32))
        self.bias = Parameter(np.zeros(self.d, np.float32))

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.d}, eps={self.eps:g}"


class RMSNorm(Module):
    """Root-mean-square normalisation over the last axis (Zhang & Sennrich 2019):
    x (..., d) -> (..., d) = x / sqrt(mean(x**2) + eps) * weight; weight ones."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.d = _positive_int("d", d)
        self.eps = _positive_float("eps", eps)
        self.weight = Parameter(np.ones(self.d, np.float32))

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.d}, eps={self.eps:g}"


class Dropout(Module):
    """Inverted dropout with probability ``p`` in [0, 1); identity in eval mode or when p == 0.

    Each training-mode call draws a fresh mask seed from a Generator made at
    construction (``seed=``/``rng=``), so a run with the same seed repeats
    exactly; ``reseed(seed)`` restarts the stream.
    """

    def __init__(self, p: float = 0.1, *, seed=None, rng=None):
        super().__init__()
        self.p = _dropout_p(p)
        self._rng = init.make_rng(rng, seed=seed)

    def reseed(self, seed) -> None:
        """Restart the mask-seed stream from ``seed`` (int or Generator)."""
        self._rng = init.make_rng(seed, name="seed")

    def rng_state(self) -> dict:
        """The mask-seed Generator's state (a JSON-able dict, e.g. for ``relpos.save``)."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restore a state from ``rng_state()`` so the next masks repeat a saved run's."""
        if not isinstance(state, dict) or state.get("bit_generator") != type(self._rng.bit_generator).__name__:
            raise ValueError(f"state must be a dict from Dropout.rng_state() for "
                             f"{type(self._rng.bit_generator).__name__}; got {state!r:.80}")
        self._rng.bit_generator.state = state

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        seed = int(self._rng.integers(0, 2**63 - 1, dtype=np.int64))
        return F.dropout(x, self.p, seed, training=True)

    def extra_repr(self):
        return f"p={self.p:g}"


class GELU(Module):
    """GELU activation; ``approximate="tanh"`` (GPT-2) or ``"none"`` (exact, erf)."""

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"approximate must be 'tanh' or 'none'; got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """max(x, 0), any shape."""

    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    """x * sigmoid(x) (swish), any shape."""

    def forward(self, x):
        return F.silu(x)


class Identity(Module):
    """Returns its input."""

    def forward(self, x):
        return x


_ACTIVATIONS = {
    "gelu": lambda: GELU("tanh"),
    "gelu_tanh": lambda: GELU("tanh"),
    "gelu_exact": lambda: GELU("none"),
    "relu": ReLU,
    "silu": SiLU,
    "identity": Identity,
}


def activation(name: str) -> Module:
    """Activation module by name: 'gelu' (= 'gelu_tanh'), 'gelu_exact', 'relu', 'silu', 'identity'."""
    try:
        return _ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {name!r}") from None


_activation_module = activation


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ..."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential item {i} must be a Module; got {type(m).__name__}")
            self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]


class ModuleList(Module):
    """A list of Modules registered as children "0", "1", ... (no forward of its own)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList items must be Modules; got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(mods[i])
        return mods[i]

    def __setitem__(self, i, module):
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a ModuleList of length {n}")
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList items must be Modules; got {type(module).__name__}")
        self._modules[str(i % n)] = module

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward(); iterate over it")


class MLP(Module):
    """Two-layer perceptron: ``fc2(dropout(act(fc1(x))))``.

    Shapes: x (..., d_in) -> (..., d_out); fc1 (d_hidden, d_in), fc2 (d_out, d_hidden).
    ``activation``: 'gelu' (tanh approximation), 'gelu_exact', 'relu', 'silu'.
    ``dropout`` applies to the hidden activations in training mode.
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int | None = None, activation: str = "gelu",
                 dropout: float = 0.0, bias: bool = True, *, seed=None, rng=None):
        super().__init__()
        d_in = _positive_int("d_in", d_in)
        d_hidden = _positive_int("d_hidden", d_hidden)
        d_out = d_in if d_out is None else _positive_int("d_out", d_out)
        dropout = _dropout_p(dropout, "dropout")
        g = init.make_rng(rng, seed=seed)
        self.fc1 = Linear(d_in, d_hidden, bias, rng=g)
        self.act = _activation_module(activation)
        self.drop = Dropout(dropout, rng=g.spawn(1)[0]) if dropout > 0 else None
        self.fc2 = Linear(d_hidden, d_out, bias, rng=g)
        self.activation_name = activation

    def forward(self, x):
        h = self.act(self.fc1(x))
        if self.drop is not None:
            h = self.drop(h)
        return self.fc2(h)
