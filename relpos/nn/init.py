"""Parameter initialisers.

Every function that draws takes ``rng``: an int seed, a ``numpy.random.Generator``
(drawn from, so successive calls continue its stream), or None (fresh OS
entropy, not reproducible). There is no hidden global random state. The
``*_`` functions fill a Parameter, Tensor or float ndarray in place and return it.

    >>> g = np.random.default_rng(0)
    >>> init.normal_(layer.weight, std=0.02, rng=g)
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from ..tensor import Tensor

__all__ = ["make_rng", "normal_", "uniform_", "zeros_", "ones_", "constant_", "gpt2_normal_",
           "fan_in_uniform_", "normal", "uniform"]


def make_rng(rng=None, *, seed=None, name: str = "rng") -> np.random.Generator:
    """A numpy Generator from a seed or a Generator.

    Args:
        rng: int seed, ``numpy.random.Generator`` (returned as is) or None.
        seed: alternative spelling of an int seed; give at most one of seed/rng.
    Returns:
        ``numpy.random.Generator``; a fresh-entropy one when both are None.
    """
    if seed is not None and rng is not None:
        raise ValueError(f"give seed or {name}, not both; got seed={seed!r} and {name}={rng!r}")
    src = seed if seed is not None else rng
    if src is None:
        return np.random.default_rng()
    if isinstance(src, np.random.Generator):
        return src
    if isinstance(src, bool) or not isinstance(src, Integral):
        raise TypeError(f"{'seed' if seed is not None else name} must be an int seed or a numpy.random.Generator; "
                        f"got {type(src).__name__}")
    if src < 0:
        raise ValueError(f"{'seed' if seed is not None else name} must be >= 0; got {src}")
    return np.random.default_rng(int(src))


def _target(t, name="tensor"):
    arr = t.data if isinstance(t, Tensor) else t
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a Parameter/Tensor or a float ndarray; got {type(t).__name__}")
    if not arr.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return arr


def _real(name, x, positive=False, nonneg=False):
    if isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite number; got {x!r}")
    x = float(x)
    if positive and x <= 0:
        raise ValueError(f"{name} must be > 0; got {x}")
    if nonneg and x < 0:
        raise ValueError(f"{name} must be >= 0; got {x}")
    return x


def normal(shape, mean: float = 0.0, std: float = 1.0, rng=None) -> np.ndarray:
    """float32 array of ``shape`` drawn from N(mean, std**2) (drawn in float64, then rounded)."""
    std = _real("std", std, nonneg=True)
    return make_rng(rng).normal(_real("mean", mean), std, size=tuple(shape)).astype(np.float32)


def uniform(shape, a: float = 0.0, b: float = 1.0, rng=None) -> np.ndarray:
    """float32 array of ``shape`` drawn from U[a, b)."""
    a, b = _real("a", a), _real("b", b)
    if b < a:
        raise ValueError(f"uniform needs a <= b; got a={a}, b={b}")
    return make_rng(rng).uniform(a, b, size=tuple(shape)).astype(np.float32)


def normal_(t, mean: float = 0.0, std: float = 1.0, rng=None):
    """Fill ``t`` in place from N(mean, std**2); returns ``t``."""
    arr = _target(t)
    arr[...] = normal(arr.shape, mean, std, rng)
    return t


def uniform_(t, a: float = 0.0, b: float = 1.0, rng=None):
    """Fill ``t`` in place from U[a, b); returns ``t``."""
    arr = _target(t)
    arr[...] = uniform(arr.shape, a, b, rng)
    return t


def constant_(t, value: float):
    """Fill ``t`` with ``value``; returns ``t``."""
    _target(t)[...] = _real("value", value)
    return t


def zeros_(t):
    """Fill ``t`` with 0; returns ``t``."""
    return constant_(t, 0.0)


def ones_(t):
    """Fill ``t`` with 1; returns ``t``."""
    return constant_(t, 1.0)


def gpt2_normal_(t, std: float = 0.02, rng=None):
    """GPT-2 style: N(0, 0.02**2) (pass ``std=0.02 / sqrt(2 * n_layers)`` for residual projections)."""
    return normal_(t, 0.0, std, rng)


def fan_in_uniform_(t, fan_in: int, rng=None):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for nn.Linear weight and bias."""
    if isinstance(fan_in, bool) or not isinstance(fan_in, Integral) or fan_in < 0:
        raise ValueError(f"fan_in must be an int >= 0; got {fan_in!r}")
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform_(t, -bound, bound, rng)
