"""Optimizers, a learning-rate schedule and gradient clipping.

The updates run in the C core (``relpos._C.sgd_step``, ``adamw_step``), in
place on each parameter's float32 array; these classes hold the
hyperparameters, the per-parameter state (momentum buffers, Adam moments,
step counts) and a ``state_dict`` that lets a resumed run continue exactly.

    >>> opt = relpos.optim.AdamW(model.parameters(), lr=3e-4)
    >>> sched = relpos.optim.WarmupCosine(opt, warmup_steps=100, total_steps=2000)
    >>> loss.backward(); relpos.optim.clip_grad_norm(model.parameters(), 1.0)
    >>> opt.step(); opt.zero_grad(); sched.step()
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from . import _C
from .tensor import Tensor, _bump

__all__ = ["Optimizer", "SGD", "AdamW", "WarmupCosine", "clip_grad_norm", "grad_norm"]


def _check_real(name, x, lo=None, hi=None, lo_open=False, hi_open=False, expect=None):
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a real number; got {type(x).__name__}")
    x = float(x)
    ok = math.isfinite(x)
    if ok and lo is not None:
        ok = x > lo if lo_open else x >= lo
    if ok and hi is not None:
        ok = x < hi if hi_open else x <= hi
    if not ok:
        raise ValueError(f"{name} must be {expect}; got {x!r}")
    return x


def _as_f32_c(a):
    """float32 C-contiguous array (no copy when it already is one)."""
    return np.asarray(a, dtype=np.float32, order="C")


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and
    ``state_dict``/``load_state_dict``.

    ``params`` is an iterable of Parameters (Tensors with ``requires_grad``),
    or of dicts ``{"params": [...], <hyperparameter overrides>}`` (groups).
    Each parameter may appear once. Subclasses implement ``_update(p, g, state, group)``.
    """

    _hyper: tuple = ()

    def __init__(self, params, defaults: dict):
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()); "
                            "got a single Tensor — wrap it in a list")
        if isinstance(params, dict):
            raise TypeError("params must be an iterable of Parameters or of group dicts; "
                            "got a dict — wrap it in a list")
        if not hasattr(params, "__iter__"):
            raise TypeError(f"params must be an iterable of Parameters (e.g. model.parameters()); "
                            f"got {type(params).__name__}")
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self._state: dict[int, dict] = {}
        seen = set()
        for gi, g in enumerate(groups):
            if not isinstance(g, dict):
                raise TypeError(f"params must be all Parameters or all group dicts; item {gi} is {type(g).__name__}")
            if "params" not in g:
                raise ValueError(f"parameter group {gi} has no 'params' entry")
            ps = g["params"]
            ps = [ps] if isinstance(ps, Tensor) else list(ps)
            for j, p in enumerate(ps):
                if not isinstance(p, Tensor):
                    raise TypeError(f"group {gi} param {j} must be a relpos Tensor/Parameter; got {type(p).__name__}")
                if p.data.dtype != np.float32:
                    raise TypeError(f"group {gi} param {j} must be float32; got {p.data.dtype}")
                if id(p) in seen:
                    raise ValueError(f"group {gi} param {j} appears more than once in the optimizer")
                seen.add(id(p))
            unknown = set(g) - {"params"} - set(self.defaults)
            if unknown:
                raise ValueError(f"parameter group {gi} has unknown options {sorted(unknown)}; "
                                 f"known: {sorted(self.defaults)}")
            group = dict(self.defaults)
            group.update({k: v for k, v in g.items() if k != "params"})
            self._validate(group)
            group["params"] = ps
            self.param_groups.append(group)

    def _validate(self, group):  # pragma: no cover - overridden
        pass

    # ---- gradients -----------------------------------------------------------
    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``grad = None``)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient (those with ``grad`` None are skipped).

        Each update is in place, so it bumps the parameter's version counter: a graph
        recorded before ``step()`` can no longer be backpropagated (as in PyTorch)."""
        for group in self.param_groups:
            self._validate(group)  # lr may have been changed by a schedule or by hand
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.shape != p.data.shape:
                    raise ValueError(f"a parameter of shape {p.data.shape} has a gradient of shape {g.shape}")
                if g.dtype != np.float32 or not g.flags.c_contiguous:
                    g = _as_f32_c(g)
                self._update(p, g, self._state.setdefault(id(p), {}), group)
                _bump(p._vc)

    def _update(self, p, g, state, group):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- state ---------------------------------------------------------------
    def _flat_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """``{"state": [per-parameter dict, ...], "param_groups": [hyperparameters + "params": [indices]]}``.

        Parameters are numbered in group order; arrays are copies. The result
        holds only ndarrays, numbers, strings, lists and dicts with str keys,
        so ``relpos.save`` can write it.
        """
        flat = self._flat_params()
        state = []
        for p in flat:
            s = self._state.get(id(p), {})
            state.append({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()})
        groups, i = [], 0
        for g in self.param_groups:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            d["params"] = list(range(i, i + len(g["params"])))
            i += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and per-parameter state saved by ``state_dict()``.

        The optimizer must have been built over parameters of the same shapes
        in the same groups and order; anything else is a ``ValueError``.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with 'state' and 'param_groups'")
        groups, state = state_dict["param_groups"], list(state_dict["state"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} parameter groups; "
                             f"this optimizer has {len(self.param_groups)}")
        for gi, (sg, g) in enumerate(zip(groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"group {gi}: state_dict has {len(sg['params'])} parameters; "
                                 f"this optimizer has {len(g['params'])}")
        flat = self._flat_params()
        if len(state) != len(flat):
            raise ValueError(f"state_dict has state for {len(state)} parameters; this optimizer has {len(flat)}")
        new_state = {}
        for i, (p, s) in enumerate(zip(flat, state)):
            if not isinstance(s, dict):
                raise ValueError(f"state of parameter {i} must be a dict; got {type(s).__name__}")
            d = {}
            for k, v in s.items():
                if isinstance(v, Tensor):
                    v = v.data
                if isinstance(v, np.ndarray):
                    if v.shape != p.data.shape:
                        raise ValueError(f"state {k!r} of parameter {i} has shape {v.shape}; "
                                         f"the parameter has shape {p.data.shape}")
                    v = np.array(v, dtype=np.float32, order="C", copy=True)
                d[k] = v
            new_state[id(p)] = d
        new_groups = []
        for sg, g in zip(groups, self.param_groups):
            ng = dict(g)
            for k, v in sg.items():
                if k == "params":
                    continue
                if k not in self.defaults:
                    raise ValueError(f"state_dict group has unknown option {k!r}")
                ng[k] = tuple(v) if isinstance(self.defaults[k], tuple) else v
            self._validate(ng)
            new_groups.append(ng)
        self.param_groups = new_groups
        self._state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for i, g in enumerate(self.param_groups):
            n = sum(p.data.size for p in g["params"])
            opts = ", ".join(f"{k}={g[k]!r}" for k in self.defaults)
            lines.append(f"  group {i}: {len(g['params'])} tensors, {n:,} values; {opts}")
        lines.append(")")
        return "\n".join(lines)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (torch.optim.SGD semantics).

    ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + (1 - dampening) * g``
    (``buf = g`` on the first step), ``g = g + momentum * buf`` (nesterov) or ``buf``; ``p -= lr * g``.

    Args:
        params: iterable of Parameters or group dicts.
        lr: learning rate, >= 0.
        momentum: >= 0. dampening: in [0, 1]. weight_decay: >= 0 (L2, coupled).
        nesterov: needs momentum > 0 and dampening == 0.
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self, g):
        g["lr"] = _check_real("lr", g["lr"], lo=0.0, expect="a finite number >= 0")
        g["momentum"] = _check_real("momentum", g["momentum"], lo=0.0, expect="a finite number >= 0")
        g["dampening"] = _check_real("dampening", g["dampening"], lo=0.0, hi=1.0, expect="in [0, 1]")
        g["weight_decay"] = _check_real("weight_decay", g["weight_decay"], lo=0.0, expect="a finite number >= 0")
        if not isinstance(g["nesterov"], (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool; got {type(g['nesterov']).__name__}")
        g["nesterov"] = bool(g["nesterov"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening == 0; "
                             f"got momentum={g['momentum']}, dampening={g['dampening']}")

    def _update(self, p, g, state, group):
        buf = None
        init = False
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = np.zeros_like(p.data)
                state["momentum_buffer"] = buf
                init = True
        _C.sgd_step(p.data, g, buf, lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"], init_buf=init)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019; torch.optim.AdamW semantics).

    Per parameter: ``p *= 1 - lr * weight_decay``; ``m, v`` exponential moving
    averages of ``g`` and ``g**2``; ``p -= lr * m_hat / (sqrt(v_hat) + eps)``
    with bias corrections ``1 - beta**step`` (``step`` counted per parameter,
    from 1, advancing only when the parameter had a gradient).

    Args:
        params: iterable of Parameters or group dicts.
        lr: >= 0. betas: (beta1, beta2), each in [0, 1). eps: >= 0. weight_decay: >= 0.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _validate(self, g):
        g["lr"] = _check_real("lr", g["lr"], lo=0.0, expect="a finite number >= 0")
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        b1 = _check_real("betas[0]", betas[0], lo=0.0, hi=1.0, hi_open=True, expect="in [0, 1)")
        b2 = _check_real("betas[1]", betas[1], lo=0.0, hi=1.0, hi_open=True, expect="in [0, 1)")
        g["betas"] = (b1, b2)
        g["eps"] = _check_real("eps", g["eps"], lo=0.0, expect="a finite number >= 0")
        g["weight_decay"] = _check_real("weight_decay", g["weight_decay"], lo=0.0, expect="a finite number >= 0")

    def step(self) -> None:
        """Update every parameter that has a gradient (those with ``grad`` None
        are skipped), all of them in one C call (``_C.adamw_multi``: one
        parallel region; the same bits as updating them one by one)."""
        if type(self)._update is not AdamW._update:  # a subclass with its own per-tensor update
            return super().step()
        params, grads, ms, vs, hyper, states, tensors = [], [], [], [], [], [], []
        for group in self.param_groups:
            self._validate(group)  # lr may have been changed by a schedule or by hand
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.shape != p.data.shape:
                    raise ValueError(f"a parameter of shape {p.data.shape} has a gradient of shape {g.shape}")
                if g.dtype != np.float32 or not g.flags.c_contiguous:
                    g = _as_f32_c(g)
                state = self._state.setdefault(id(p), {})
                if "exp_avg" not in state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                params.append(p.data)
                grads.append(g)
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
                hyper.append((group["lr"], b1, b2, group["eps"], group["weight_decay"], int(state["step"]) + 1))
                states.append(state)
                tensors.append(p)
        if not params:
            return
        _C.adamw_multi(params, grads, ms, vs, np.array(hyper, dtype=np.float64))
        for state in states:  # counted only once the update went through
            state["step"] = int(state["step"]) + 1
        for p in tensors:  # updated in place: graphs recorded before the step are stale (as in PyTorch)
            _bump(p._vc)

    def _update(self, p, g, state, group):
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] = int(state["step"]) + 1
        b1, b2 = group["betas"]
        _C.adamw_step(p.data, g, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"], beta1=b1, beta2=b2,
                      eps=group["eps"], weight_decay=group["weight_decay"], step=state["step"])


class WarmupCosine:
    """Linear warmup then half-cosine decay of every group's learning rate.

    For 0-based step ``s`` and a group's base learning rate ``base`` (its lr
    when the schedule was made):

    * ``s < warmup_steps``: ``base * (s + 1) / warmup_steps`` (reaches base at the last warmup step);
    * ``warmup_steps <= s <= total_steps``: ``min_lr + (base - min_lr) * (1 + cos(pi * t)) / 2``
      with ``t = (s - warmup_steps) / (total_steps - warmup_steps)``, so base at the
      end of warmup and ``min_lr`` at ``total_steps``;
    * ``s > total_steps``: ``min_lr``.

    Making the schedule sets the step-0 rate; call ``.step()`` after each
    ``optimizer.step()`` to move to the next step's rate.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a relpos.optim.Optimizer; got {type(optimizer).__name__}")
        for name, v in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int; got {type(v).__name__}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {total_steps}")
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps must be <= total_steps; got {warmup_steps} > {total_steps}")
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr = _check_real("min_lr", min_lr, lo=0.0, expect="a finite number >= 0")
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, group: int = 0) -> float:
        """Learning rate of parameter group ``group`` at 0-based ``step``."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int; got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        base = self.base_lrs[group]
        if step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        span = self.total_steps - self.warmup_steps
        t = (step - self.warmup_steps) / span
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def _apply(self):
        for i, g in enumerate(self.optimizer.param_groups):
            g["lr"] = self.lr_at(self.last_step, i)

    def step(self) -> None:
        """Advance one step and set each group's lr to ``lr_at(step)``."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs), "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr": self.min_lr}

    def load_state_dict(self, sd: dict) -> None:
        if len(sd["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"state_dict has {len(sd['base_lrs'])} base lrs; the optimizer has "
                             f"{len(self.base_lrs)} groups")
        self.last_step = int(sd["last_step"])
        self.base_lrs = [float(x) for x in sd["base_lrs"]]
        self.warmup_steps, self.total_steps = int(sd["warmup_steps"]), int(sd["total_steps"])
        self.min_lr = float(sd["min_lr"])
        self._apply()

    def __repr__(self):
        return (f"WarmupCosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
                f"min_lr={self.min_lr}, step={self.last_step}, lr={self.get_last_lr()})")


def _float32_grads(params):
    """The parameters with a gradient, each gradient made float32 and C-contiguous in place."""
    if isinstance(params, Tensor):
        params = [params]
    ps = [p for p in params if p.grad is not None]
    for p in ps:
        g = p.grad
        if g.dtype != np.float32 or not g.flags.c_contiguous or not g.flags.writeable:
            p.grad = np.array(g, dtype=np.float32, order="C", copy=True)
    return ps


def grad_norm(params) -> float:
    """The global Euclidean norm of the gradients of ``params`` (a Parameter or
    an iterable of them; those with ``grad`` None are skipped), accumulated in
    float64 in a fixed order by one C call: bit-identical for any thread count,
    and NumPy's BLAS (whose own threads would compete with relpos') is not used.
    NaN and inf propagate. Gradients are converted to float32 in place if they
    are not already."""
    return _C.grad_norm([p.grad for p in _float32_grads(params)])


def clip_grad_norm(params, max_norm: float, error_if_nonfinite: bool = False) -> float:
    """Scale gradients in place so their global Euclidean norm is at most ``max_norm``.

    Args:
        params: a Parameter or an iterable of them; those with ``grad`` None are skipped.
        max_norm: >= 0.
        error_if_nonfinite: raise ``FloatingPointError`` when the norm is inf/nan;
            otherwise the gradients are scaled as for any other norm (as torch
            does): by 0 for an infinite norm (finite elements become 0, infinite
            ones NaN), by NaN for a NaN norm (every element becomes NaN), so a
            non-finite gradient is never hidden.

    Returns:
        The total norm before clipping (float). Gradients are multiplied by
        ``max_norm / (total + 1e-6)`` when that is below 1, or NaN (as torch
        does with ``clamp(coef, max=1)``). The norm is accumulated in float64
        in a fixed order: bit-identical for any thread count.
    """
    max_norm = _check_real("max_norm", max_norm, lo=0.0, expect="a finite number >= 0")
    ps = _float32_grads(params)
    total = _C.grad_norm([p.grad for p in ps])
    if not math.isfinite(total) and error_if_nonfinite:
        raise FloatingPointError(f"the total gradient norm is {total}; cannot clip")
    coef = max_norm / (total + 1e-6)
    if coef != coef:
        # a NaN norm: g * NaN for every element (torch's clamp keeps the NaN)
        for p in ps:
            p.grad.fill(np.nan)
    elif coef < 1.0:
        # one call for every gradient; a gradient shared by two parameters is scaled once
        grads = list({id(p.grad): p.grad for p in ps}.values())
        _C.scale_multi(grads, coef)
    return total
