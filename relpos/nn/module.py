"""Module and Parameter: the containers every relpos layer and model builds on.

``Module`` mirrors ``torch.nn.Module`` where it matters: assigning a
:class:`Parameter` or a sub-``Module`` to an attribute registers it (in
assignment order), ``register_buffer`` keeps non-learned arrays that belong in
the ``state_dict``, and ``named_parameters()`` gives dotted names
(``"blocks.0.attn.q.weight"``).
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Callable, Iterator

import numpy as np

from ..tensor import Tensor, _bump, as_array

__all__ = ["Parameter", "Module", "IncompatibleKeys"]


class Parameter(Tensor):
    """A learnable Tensor: ``requires_grad=True`` by default.

    ``data`` is kept as a float32, C-contiguous, writeable ndarray (copied only
    when the given array is not already one), because optimizers update it in
    place through the C core.

    Args:
        data: array-like of any shape.
        requires_grad: whether gradients are accumulated into ``.grad``.
    """

    def __init__(self, data, requires_grad: bool = True, name: str | None = None):
        arr = as_array(data, "data")
        arr = np.require(arr, dtype=np.float32, requirements=["C", "A", "W"])
        super().__init__(arr, requires_grad=requires_grad, name=name)

    def __repr__(self):
        body = np.array2string(self.data, precision=4, threshold=20, edgeitems=2, prefix="Parameter(")
        extra = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter({body}{extra})"


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What ``load_state_dict(strict=False)`` could not match."


def _as_numpy(value):
    """ndarray view of a relpos Tensor, a torch tensor (duck-typed: detach, cpu,
    numpy; never importing torch) or anything np.asarray takes."""
    if isinstance(value, Tensor):
        return value.data
    if not isinstance(value, np.ndarray) and all(
            callable(getattr(value, a, None)) for a in ("detach", "cpu", "numpy")):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            if callable(getattr(t, "float", None)):
                return t.float().numpy()
            raise
    return value


def _count(n: int) -> str:
    return f"{n:,} param" + ("" if n == 1 else "s")


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, then assign Parameters and
    sub-Modules as attributes and implement ``forward``. ``module(x)`` calls
    ``module.forward(x)``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ------------------------------------------------------
    def _check_init(self, what):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {what} before Module.__init__() is called "
                                 f"(call super().__init__() first in {type(self).__name__}.__init__)")

    @staticmethod
    def _check_name(name, kind):
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a str; got {type(name).__name__}")
        if name == "" or "." in name:
            raise ValueError(f"{kind} name must be non-empty and contain no '.'; got {name!r}")

    def _forget(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        self.__dict__.pop(name, None)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (a Parameter, or None for an absent optional one) as ``name``."""
        self._check_init("parameters")
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"parameter {name!r} must be a relpos.nn.Parameter or None; "
                            f"got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """Register a non-learned array ``value`` (ndarray or None) as ``name``.

        Persistent buffers are part of ``state_dict()``; the array is stored as
        given (no copy), available as ``self.<name>``.
        """
        self._check_init("buffers")
        self._check_name(name, "buffer")
        if value is not None:
            if isinstance(value, Tensor):
                value = value.data
            if not isinstance(value, np.ndarray):
                raise TypeError(f"buffer {name!r} must be a numpy.ndarray or None; got {type(value).__name__}")
        self._forget(name)
        self._buffers[name] = value
        if not persistent:
            self.__dict__.setdefault("_non_persistent", set()).add(name)
        else:
            self.__dict__.get("_non_persistent", set()).discard(name)

    def add_module(self, name: str, module: "Module | None") -> None:
        """Register ``module`` (or None) as the child ``name``."""
        self._check_init("submodules")
        self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module {name!r} must be a relpos.nn.Module or None; got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                f"(expected a relpos.nn.Parameter or None)")
            self._parameters[name] = None
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to submodule {name!r} "
                                f"(expected a relpos.nn.Module or None)")
            self._modules[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if isinstance(value, Tensor):
                value = value.data
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} "
                                f"(expected a numpy.ndarray or None)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            store = d.get(key)
            if store is not None and name in store:
                return store[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for key in ("_parameters", "_buffers", "_modules"):
            store = self.__dict__.get(key)
            if store is not None and name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    # ---- traversal ---------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) for each direct child, in registration order."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator["Module"]:
        """Each direct child module once, in registration order."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "", _seen=None) -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) for self (name ``prefix``) and every descendant, each once."""
        if _seen is None:
            _seen = set()
        if id(self) in _seen:
            return
        _seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, _seen)

    def modules(self) -> Iterator["Module"]:
        """Self and every descendant module, each once, depth first."""
        for _, m in self.named_modules():
            yield m

    def _named_members(self, store, prefix, recurse):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, v in getattr(m, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mprefix}.{name}" if mprefix else name), v

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) in registration order; a shared Parameter appears once."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Every Parameter once (shared ones once), in ``named_parameters()`` order."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """(dotted name, ndarray) of every buffer, in registration order."""
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        """Every buffer array once, in ``named_buffers()`` order."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters (each shared Parameter counted once)."""
        return int(sum(p.data.size for p in self.parameters() if p.requires_grad or not trainable_only))

    # ---- state -------------------------------------------------------------
    def _state_items(self):
        """(dotted name, target) for everything a state_dict holds; targets are
        Parameters or (module, buffer name) pairs. Shared Parameters appear under
        every name, like torch."""
        out = []
        seen = set()

        def walk(m, prefix):
            if id(m) in seen:
                return
            seen.add(id(m))
            for name, p in m._parameters.items():
                if p is not None:
                    out.append((prefix + name, p))
            skip = m.__dict__.get("_non_persistent", ())
            for name, b in m._buffers.items():
                if b is not None and name not in skip:
                    out.append((prefix + name, (m, name)))
            for name, c in m._modules.items():
                if c is not None:
                    walk(c, prefix + name + ".")

        walk(self, "")
        return out

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted name -> a copy (ndarray) of every parameter and persistent buffer."""
        sd = OrderedDict()
        for name, target in self._state_items():
            if isinstance(target, Parameter):
                sd[name] = target.data.copy()
            else:
                m, bname = target
                sd[name] = np.array(m._buffers[bname], copy=True)
        return sd

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into this module's parameters and
        buffers, in place (converted to their dtype, float32 for parameters).

        ``state_dict`` maps dotted names to ndarrays, relpos Tensors, or torch
        tensors (read through ``.detach().cpu().numpy()``, bfloat16 widened to
        float32; torch itself is never imported). The names must be relpos
        names: for a torch model's names see ``TransformerLM.load_torch_state_dict``.

        Shape mismatches are always an error. With ``strict=True`` missing and
        unexpected keys are too; every problem is listed in one ``ValueError``
        and nothing is modified. Loading is an in-place change: it bumps each
        loaded parameter's version counter (see :mod:`relpos.tensor`). With ``strict=False`` the matching entries are
        loaded and ``IncompatibleKeys(missing_keys, unexpected_keys)`` returned.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping of name -> array; got {type(state_dict).__name__}")
        items = self._state_items()
        own = OrderedDict(items)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched, bad_type, plan = [], [], []
        for name, target in items:
            if name not in state_dict:
                continue
            value = state_dict[name]
            try:
                value = np.asarray(_as_numpy(value))
            except Exception:  # exotic objects, or a torch tensor numpy cannot hold
                bad_type.append(f"{name} ({type(value).__name__})")
                continue
            cur = target.data if isinstance(target, Parameter) else target[0]._buffers[target[1]]
            if value.dtype.kind not in "fiub":
                bad_type.append(f"{name} (dtype {value.dtype})")
            elif value.shape != cur.shape:
                mismatched.append(f"{name}: expected shape {cur.shape}, got {value.shape}")
            else:
                plan.append((cur, value, target if isinstance(target, Parameter) else None))
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if bad_type:
            problems.append("non-numeric values: " + ", ".join(bad_type))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed:\n  " + "\n  ".join(problems))
        for cur, value, param in plan:
            np.copyto(cur, value, casting="unsafe")
            if param is not None:
                _bump(param._vc)  # an in-place change: graphs recorded before cannot be backpropagated
        return IncompatibleKeys(missing, unexpected)

    # ---- modes and gradients -------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set ``training`` on self and every descendant; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool; got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        """``train(False)``: dropout off. Returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True) -> "Module":
        """Set ``requires_grad`` on every parameter (freeze with False); returns self."""
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        """Call ``fn(m)`` on every descendant (children first) and then on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- calling -----------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- printing ----------------------------------------------------------
    def extra_repr(self) -> str:
        """One line of constructor facts shown inside the parentheses."""
        return ""

    def _repr_lines(self):
        n = self.num_parameters()
        head = type(self).__name__ + "(" + self.extra_repr()
        kids = list(self._modules.items())
        kids = [(k, m) for k, m in kids if m is not None]
        own_note = f"  # {_count(n)}" if n else ""
        if not kids:
            return [head + ")" + own_note]
        lines = [head + own_note]
        for name, m in kids:
            sub = m._repr_lines()
            lines.append(f"  ({name}): " + sub[0])
            lines.extend("  " + s for s in sub[1:])
        lines.append(")")
        return lines

    def __repr__(self):
        lines = self._repr_lines()
        total = self.num_parameters()
        trainable = self.num_parameters(trainable_only=True)
        lines.append(f"Total: {total:,} parameters ({trainable:,} trainable)")
        return "\n".join(lines)
