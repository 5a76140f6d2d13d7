"""Optimizer kernels (relpos._C.sgd_step/adamw_step/grad_norm/scale_) against
their float64 twins, determinism across thread counts, the Python optimizers,
the warmup-cosine schedule and gradient clipping."""
import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import relpos
from relpos import _C, nn, optim


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- kernels

@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [
    (0.0, 0.0, False, 0.0), (0.0, 0.0, False, 0.1), (0.9, 0.0, False, 0.0),
    (0.9, 0.1, False, 0.01), (0.8, 0.0, True, 0.05)])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5), (40000,)])
def test_sgd_kernel_matches_twin(rng, shape, momentum, dampening, nesterov, wd):
    p = f32(rng, *shape)
    buf = np.zeros(shape, np.float32) if momentum else None
    p64, b64 = p.astype(np.float64), None
    for step in range(3):
        g = f32(rng, *shape)
        _C.sgd_step(p, g, buf, lr=0.05, momentum=momentum, dampening=dampening, weight_decay=wd,
                    nesterov=nesterov, init_buf=(step == 0))
        p64, b64 = ref.sgd_step(p64, g, b64, 0.05, momentum, dampening, wd, nesterov, init_buf=(step == 0))
        np.testing.assert_allclose(p, p64, rtol=1e-5, atol=1e-6)
        if momentum:
            np.testing.assert_allclose(buf, b64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(0,), (1,), (5, 3), (40000,)])
@pytest.mark.parametrize("lr,b1,b2,eps,wd", [(1e-3, 0.9, 0.999, 1e-8, 0.01), (0.1, 0.0, 0.5, 1e-3, 0.0),
                                             (0.01, 0.95, 0.95, 0.0, 0.3)])
def test_adamw_kernel_matches_twin(rng, shape, lr, b1, b2, eps, wd):
    p = f32(rng, *shape)
    m = np.zeros(shape, np.float32)
    v = np.zeros(shape, np.float32)
    p64, m64, v64 = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for step in range(1, 5):
        g = f32(rng, *shape)
        if eps == 0.0 and g.size:
            g[g == 0] = 1.0  # keep sqrt(v) > 0
        _C.adamw_step(p, g, m, v, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, step=step)
        p64, m64, v64 = ref.adamw_step(p64, g, m64, v64, lr, b1, b2, eps, wd, step)
        np.testing.assert_allclose(m, m64, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(v, v64, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(p, p64, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 300), step=st.integers(1, 1000), seed=st.integers(0, 2**31 - 1))
def test_adamw_kernel_property(n, step, seed):
    rng = np.random.default_rng(seed)
    p, g = f32(rng, n), f32(rng, n, scale=10.0)
    m, v = f32(rng, n), np.abs(f32(rng, n))
    want = ref.adamw_step(p, g, m, v, 0.01, 0.9, 0.99, 1e-6, 0.1, step)
    _C.adamw_step(p, g, m, v, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, step=step)
    for got, w in zip((p, m, v), want):
        np.testing.assert_allclose(got, w, rtol=2e-5, atol=1e-5)


def test_grad_norm_matches_twin(rng):
    arrays = [f32(rng, 3, 4), f32(rng, 0), f32(rng, 20001), np.zeros((2, 0), np.float32), f32(rng, 8192)]
    assert _C.grad_norm(arrays) == pytest.approx(ref.grad_norm(arrays), rel=1e-12)
    assert _C.grad_norm(tuple(arrays)) == _C.grad_norm(arrays)
    assert _C.grad_norm([]) == 0.0
    assert _C.grad_norm([np.zeros(0, np.float32)]) == 0.0
    # a non-contiguous input is read correctly (copied)
    a = f32(rng, 10, 6)
    assert _C.grad_norm([a[:, ::2]]) == pytest.approx(ref.grad_norm([a[:, ::2]]), rel=1e-12)


def test_grad_norm_float64_accumulation():
    # 2**22 copies of 0.1f: a float32 running sum of the squares drifts by ~1e-3
    x = np.full(2**22, 0.1, np.float32)
    exact = math.sqrt(2**22 * float(np.float64(x[0]) ** 2))
    assert _C.grad_norm([x]) == pytest.approx(exact, rel=1e-12)


def test_grad_norm_and_adamw_bit_identical_across_threads(threads):
    rng = np.random.default_rng(1)
    arrays = [f32(rng, 50000), f32(rng, 7), f32(rng, 123, 457), f32(rng, 8192 * 3 + 1)]
    n1 = threads(1, _C.grad_norm, arrays)
    n2 = threads(2, _C.grad_norm, arrays)
    assert n1 == n2  # exact

    def run(nt):
        p, m, v = f32(np.random.default_rng(2), 70001), np.zeros(70001, np.float32), np.zeros(70001, np.float32)
        g = f32(np.random.default_rng(3), 70001)
        for step in range(1, 4):
            threads(nt, _C.adamw_step, p, g, m, v, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.01, step=step)
        buf = np.zeros_like(p)
        threads(nt, _C.sgd_step, p, g, buf, lr=0.1, momentum=0.9, init_buf=True)
        threads(nt, _C.scale_, p, 0.37)
        return p, m, v, buf

    for a, b in zip(run(1), run(2)):
        assert np.array_equal(a, b)


def _multi_case(rng, shapes=((0,), (1,), (5, 3), (40000,), (8192 * 2 + 7,))):
    ps = [f32(rng, *s) for s in shapes]
    gs = [f32(rng, *s) for s in shapes]
    ms = [f32(rng, *s, scale=0.1) for s in shapes]
    vs = [np.abs(f32(rng, *s, scale=0.1)) for s in shapes]
    # a different group per tensor: every hyperparameter varies
    hyper = np.array([[1e-3 * (t + 1), 0.9 - 0.1 * t, 0.999 - 0.1 * t, 1e-8 * 10 ** t, 0.01 * t, t + 1]
                      for t in range(len(shapes))], np.float64)
    return ps, gs, ms, vs, hyper


@pytest.mark.parametrize("grad_scale", [1.0, 0.37])
def test_adamw_multi_matches_twin_and_single_calls(rng, grad_scale):
    ps, gs, ms, vs, hyper = _multi_case(rng)
    one = [[a.copy() for a in x] for x in (ps, gs, ms, vs)]
    want = []
    for t in range(len(ps)):
        lr, b1, b2, eps, wd, step = hyper[t]
        want.append(ref.adamw_step(ps[t], gs[t].astype(np.float64) * np.float32(grad_scale), ms[t], vs[t],
                                   lr, b1, b2, eps, wd, int(step)))
    _C.adamw_multi(ps, gs, ms, vs, hyper, grad_scale=grad_scale)
    for t in range(len(ps)):
        np.testing.assert_allclose(ps[t], want[t][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ms[t], want[t][1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(vs[t], want[t][2], rtol=1e-5, atol=1e-9)
    # the same bits as clip's scale_ then one adamw_step per tensor
    p1, g1, m1, v1 = one
    for t in range(len(p1)):
        lr, b1, b2, eps, wd, step = hyper[t]
        if grad_scale != 1.0:
            _C.scale_(g1[t], grad_scale)
        _C.adamw_step(p1[t], g1[t], m1[t], v1[t], lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
                      step=int(step))
    for got, exp in zip((ps, gs, ms, vs), (p1, g1, m1, v1)):
        for a, b in zip(got, exp):
            assert np.array_equal(a, b)


def test_adamw_multi_and_scale_multi_bit_identical_across_threads(threads):
    def run(nt):
        ps, gs, ms, vs, hyper = _multi_case(np.random.default_rng(5))
        threads(nt, _C.adamw_multi, ps, gs, ms, vs, hyper, grad_scale=0.5)
        threads(nt, _C.scale_multi, ps, 1.25)
        return ps + gs + ms + vs

    for a, b in zip(run(1), run(2)):
        assert np.array_equal(a, b)


def test_scale_multi_matches_scale_(rng):
    arrs = [f32(rng, *s) for s in ((0,), (3, 4), (40001,))]
    want = [a.copy() for a in arrs]
    for a in want:
        _C.scale_(a, 0.3)
    _C.scale_multi(arrs, 0.3)
    for a, b in zip(arrs, want):
        assert np.array_equal(a, b)
    _C.scale_multi([], 2.0)


def test_multi_bad_inputs(rng):
    ps, gs, ms, vs, hyper = _multi_case(rng, shapes=((4,), (3,)))
    with pytest.raises(ValueError, match=r"grads must have one array per parameter \(2\); got 1"):
        _C.adamw_multi(ps, gs[:1], ms, vs, hyper)
    with pytest.raises(ValueError, match=r"hyper must have shape \(n_params, 6\) = \(2, 6\); got \(2, 5\)"):
        _C.adamw_multi(ps, gs, ms, vs, hyper[:, :5])
    with pytest.raises(TypeError, match="hyper must have dtype float64"):
        _C.adamw_multi(ps, gs, ms, vs, hyper.astype(np.float32))
    with pytest.raises(ValueError, match=r"ms\[1\] must have the shape of params\[1\] \(3,\); got \(4,\)"):
        _C.adamw_multi(ps, gs, [ms[0], ms[0].copy()], vs, hyper)
    with pytest.raises(ValueError, match=r"params\[1\] and ms\[1\] must not share memory|ms\[1\] and params\[1\]"):
        _C.adamw_multi(ps, gs, [ms[0], ps[1]], vs, hyper)
    with pytest.raises(ValueError, match="must not share memory"):  # two tensors' updates would race
        _C.adamw_multi([ps[0], ps[0]], [gs[0], gs[0].copy()], [ms[0], ms[0].copy()], [vs[0], vs[0].copy()], hyper)
    bad = hyper.copy()
    bad[1, 5] = 0
    with pytest.raises(ValueError, match=r"hyper\[1, 5\] \(step\) must be an integer >= 1"):
        _C.adamw_multi(ps, gs, ms, vs, bad)
    for col, what in ((0, "lr"), (1, "beta1"), (2, "beta2"), (3, "eps"), (4, "weight_decay")):
        bad = hyper.copy()
        bad[0, col] = -0.5 if col != 1 else 1.0
        with pytest.raises(ValueError, match=rf"hyper\[0, {col}\] \({what}\)"):
            _C.adamw_multi(ps, gs, ms, vs, bad)
    with pytest.raises(ValueError, match="grad_scale"):
        _C.adamw_multi(ps, gs, ms, vs, hyper, grad_scale=float("nan"))
    ro = gs[0].copy()
    ro.flags.writeable = False
    _C.adamw_multi(ps, [ro, gs[1]], ms, vs, hyper)  # a read-only gradient is fine when it is only read
    with pytest.raises(ValueError, match=r"grads\[0\] must be writeable"):
        _C.adamw_multi(ps, [ro, gs[1]], ms, vs, hyper, grad_scale=0.5)
    with pytest.raises(TypeError, match="params must be a list or tuple"):
        _C.adamw_multi(ps[0], gs, ms, vs, hyper)
    with pytest.raises(ValueError, match="must not share memory"):
        _C.scale_multi([ps[0], ps[0]], 0.5)
    with pytest.raises(ValueError, match="factor"):
        _C.scale_multi(ps, float("inf"))


def test_scale_in_place(rng):
    a = f32(rng, 5, 7)
    want = a.astype(np.float64) * 0.25
    _C.scale_(a, 0.25)
    np.testing.assert_allclose(a, want, rtol=1e-7)
    _C.scale_(np.zeros(0, np.float32), 3.0)


def test_kernel_bad_inputs(rng):
    p, g = f32(rng, 4), f32(rng, 4)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(TypeError, match="grad must have dtype float32"):
        _C.adamw_step(p, g.astype(np.float64), m, v, **kw)
    with pytest.raises(TypeError, match="param must be a numpy.ndarray"):
        _C.adamw_step([1.0] * 4, g, m, v, **kw)
    with pytest.raises(ValueError, match=r"m must have the shape of param \(4,\); got \(5,\)"):
        _C.adamw_step(p, g, np.zeros(5, np.float32), v, **kw)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.adamw_step(f32(rng, 8)[::2], g, m, v, **kw)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param must be writeable"):
        _C.adamw_step(ro, g, m, v, **kw)
    with pytest.raises(ValueError, match="m and v must not share memory"):
        _C.adamw_step(p, g, m, m, **kw)
    with pytest.raises(TypeError, match="step is required"):
        _C.adamw_step(p, g, m, v, lr=0.1)
    with pytest.raises(TypeError, match="lr is required"):
        _C.adamw_step(p, g, m, v, step=1)
    for bad, msg in [(dict(step=0), "step must be"), (dict(lr=-1.0), "lr must be"), (dict(beta1=1.0), "beta1"),
                     (dict(beta2=-0.1), "beta2"), (dict(eps=float("nan")), "eps"), (dict(weight_decay=-1.0),
                                                                                    "weight_decay")]:
        with pytest.raises(ValueError, match=msg):
            _C.adamw_step(p, g, m, v, **{**kw, **bad})
    with pytest.raises(ValueError, match="buf must be"):
        _C.sgd_step(p, g, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        _C.sgd_step(p, g, None, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="dampening"):
        _C.sgd_step(p, g, m, lr=0.1, momentum=0.9, dampening=2.0)
    with pytest.raises(TypeError, match=r"arrays\[1\] must have dtype float32"):
        _C.grad_norm([g, g.astype(np.float64)])
    with pytest.raises(TypeError, match="list or tuple"):
        _C.grad_norm(g)
    with pytest.raises(ValueError, match="factor"):
        _C.scale_(p, float("inf"))


# ---------------------------------------------------------------- optimizers

def _params(rng, shapes=((3, 4), (4,), (2, 2))):
    return [nn.Parameter(f32(rng, *s)) for s in shapes]


def test_sgd_class_matches_twin_and_skips_none(rng):
    ps = _params(rng)
    opt = optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    p64 = [p.data.astype(np.float64) for p in ps]
    b64 = [None] * 3
    first = [True] * 3
    for step in range(4):
        for i, p in enumerate(ps):
            p.grad = None if (i == 2 and step < 2) else f32(rng, *p.shape)
        before = ps[2].data.copy()
        opt.step()
        for i, p in enumerate(ps):
            if p.grad is None:
                assert np.array_equal(p.data, before)
                continue
            p64[i], b64[i] = ref.sgd_step(p64[i], p.grad, b64[i], 0.1, 0.9, 0.1, 0.01, init_buf=first[i])
            first[i] = False
            np.testing.assert_allclose(p.data, p64[i], rtol=1e-5, atol=1e-6)


def test_adamw_class_matches_twin_with_groups(rng):
    a, b = _params(rng, ((5, 3), (3,)))
    opt = optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.05, "weight_decay": 0.0}], lr=0.01,
                      betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
    st_ = {id(a): (a.data.astype(np.float64), 0.0, 0.0, 0.01, 0.1), id(b): (b.data.astype(np.float64), 0.0, 0.0,
                                                                              0.05, 0.0)}
    for step in range(1, 6):
        for p in (a, b):
            p.grad = f32(rng, *p.shape)
        opt.step()
        for p in (a, b):
            p64, m, v, lr, wd = st_[id(p)]
            p64, m, v = ref.adamw_step(p64, p.grad, m, v, lr, 0.8, 0.99, 1e-7, wd, step)
            st_[id(p)] = (p64, m, v, lr, wd)
            np.testing.assert_allclose(p.data, p64, rtol=1e-5, atol=1e-6)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


@pytest.mark.parametrize("make", [
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.05),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)])
def test_resume_from_state_dict_is_exact(tmp_path, make):
    rng = np.random.default_rng(5)
    grads = [[f32(rng, 3, 4), f32(rng, 4)] for _ in range(6)]
    init = [f32(rng, 3, 4), f32(rng, 4)]

    def fresh():
        return [nn.Parameter(x.copy()) for x in init]

    straight = fresh()
    opt = make(straight)
    for gs in grads:
        for p, g in zip(straight, gs):
            p.grad = g.copy()
        opt.step()

    first = fresh()
    opt1 = make(first)
    for gs in grads[:3]:
        for p, g in zip(first, gs):
            p.grad = g.copy()
        opt1.step()
    relpos.save({"params": [p.data for p in first], "opt": opt1.state_dict()}, tmp_path / "ck.relpos")
    ck = relpos.load(tmp_path / "ck.relpos")
    resumed = [nn.Parameter(x) for x in ck["params"]]
    opt2 = make(resumed)
    opt2.load_state_dict(ck["opt"])
    for gs in grads[3:]:
        for p, g in zip(resumed, gs):
            p.grad = g.copy()
        opt2.step()
    for a, b in zip(straight, resumed):
        assert np.array_equal(a.data, b.data)


def test_optimizer_load_state_dict_rejects_mismatch(rng):
    opt = optim.AdamW(_params(rng), lr=0.01)
    for p in opt.param_groups[0]["params"]:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    sd = opt.state_dict()
    other = optim.AdamW(_params(rng, ((3, 4), (5,), (2, 2))), lr=0.01)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 1 has shape \(4,\)"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="state for 3 parameters"):
        optim.AdamW(_params(rng, ((3, 4), (4,), (2, 2), (1,))), lr=0.01).load_state_dict(
            {"state": sd["state"], "param_groups": [{**sd["param_groups"][0], "params": [0, 1, 2, 3]}]})


def test_optimizer_validation(rng):
    ps = _params(rng)
    with pytest.raises(ValueError, match="lr must be"):
        optim.SGD(ps, lr=-0.1)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(ps, lr=0.1, momentum=-1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(ps, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\)"):
        optim.AdamW(ps, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.AdamW(ps, betas=(0.9, -0.5))
    with pytest.raises(ValueError, match="eps"):
        optim.AdamW(ps, eps=-1e-8)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdamW(ps, weight_decay=float("nan"))
    with pytest.raises(TypeError, match="lr must be a real number"):
        optim.AdamW(ps, lr="fast")
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.AdamW([ps[0], ps[0]])
    with pytest.raises(TypeError, match="single Tensor"):
        optim.AdamW(ps[0])
    with pytest.raises(ValueError, match="unknown options"):
        optim.AdamW([{"params": ps, "momentum": 0.9}])
    opt = optim.AdamW(ps)
    opt.param_groups[0]["lr"] = -1.0
    ps[0].grad = np.ones(ps[0].shape, np.float32)
    with pytest.raises(ValueError, match="lr must be"):
        opt.step()


# ---------------------------------------------------------------- schedule

def test_warmup_cosine_known_points(rng):
    opt = optim.AdamW(_params(rng), lr=1.0)
    s = optim.WarmupCosine(opt, warmup_steps=4, total_steps=14, min_lr=0.1)
    assert s.lr_at(0) == pytest.approx(0.25)
    assert s.lr_at(1) == pytest.approx(0.5)
    assert s.lr_at(3) == pytest.approx(1.0)  # last warmup step reaches the base
    assert s.lr_at(4) == pytest.approx(1.0)  # cosine starts at the base
    assert s.lr_at(9) == pytest.approx(0.55)  # halfway: (base + min) / 2
    assert s.lr_at(14) == pytest.approx(0.1)
    assert s.lr_at(100) == pytest.approx(0.1)
    for k in range(20):
        assert s.lr_at(k) == pytest.approx(ref.warmup_cosine_lr(k, 1.0, 4, 14, 0.1), rel=1e-12)
    # the optimizer follows the schedule
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    for k in range(1, 10):
        s.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(k))
    # monotone non-increasing after warmup
    vals = [s.lr_at(k) for k in range(4, 15)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_warmup_cosine_groups_and_state(rng):
    a, b = _params(rng, ((2,), (3,)))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    s = optim.WarmupCosine(opt, warmup_steps=0, total_steps=10)
    assert s.lr_at(0, group=0) == pytest.approx(0.1) and s.lr_at(0, group=1) == pytest.approx(0.5)
    assert s.lr_at(10, group=1) == pytest.approx(0.0)
    s.step()
    s.step()
    sd = s.state_dict()
    opt2 = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    s2 = optim.WarmupCosine(opt2, warmup_steps=0, total_steps=10)
    s2.load_state_dict(sd)
    assert s2.get_last_lr() == s.get_last_lr()


def test_warmup_cosine_validation(rng):
    opt = optim.AdamW(_params(rng))
    with pytest.raises(ValueError, match="warmup_steps must be <= total_steps"):
        optim.WarmupCosine(opt, 10, 5)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        optim.WarmupCosine(opt, 0, 0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        optim.WarmupCosine(opt, -1, 5)
    with pytest.raises(TypeError, match="warmup_steps must be an int"):
        optim.WarmupCosine(opt, 1.5, 5)
    with pytest.raises(ValueError, match="min_lr"):
        optim.WarmupCosine(opt, 1, 5, min_lr=-1.0)


# ---------------------------------------------------------------- clipping

def test_clip_grad_norm_scales_to_max(rng):
    ps = _params(rng)
    for p in ps[:2]:
        p.grad = f32(rng, *p.shape, scale=3.0)
    ps[2].grad = None
    want = ref.grad_norm([p.grad for p in ps[:2]])
    before = [p.grad.astype(np.float64) for p in ps[:2]]
    total = optim.clip_grad_norm(ps, 1.0)
    assert isinstance(total, float)
    assert total == pytest.approx(want, rel=1e-12)
    assert ref.grad_norm([p.grad for p in ps[:2]]) == pytest.approx(1.0, rel=1e-5)
    for p, g0 in zip(ps[:2], before):  # direction kept
        np.testing.assert_allclose(p.grad, g0 * (1.0 / (want + 1e-6)), rtol=1e-6)
    assert ps[2].grad is None


def test_clip_grad_norm_leaves_small_and_scales_nonfinite(rng):
    ps = _params(rng)
    for p in ps:
        p.grad = f32(rng, *p.shape, scale=0.01)
    keep = [p.grad.copy() for p in ps]
    total = optim.clip_grad_norm(ps, 10.0)
    assert total < 10.0
    for p, k in zip(ps, keep):
        assert np.array_equal(p.grad, k)
    # an infinite norm scales by max_norm / inf = 0, as torch: finite -> 0, inf -> NaN
    ps[0].grad[0, 0] = np.inf
    with pytest.raises(FloatingPointError):
        optim.clip_grad_norm(ps, 1.0, error_if_nonfinite=True)
    assert math.isinf(optim.clip_grad_norm(ps, 1.0))
    assert np.isnan(ps[0].grad[0, 0]) and np.count_nonzero(ps[0].grad) == 1
    assert not np.any(ps[1].grad)
    # a NaN norm makes every gradient NaN (torch's clamp(NaN, max=1) = NaN)
    assert math.isnan(optim.clip_grad_norm(ps, 1.0))
    assert all(np.isnan(p.grad).all() for p in ps if p.grad is not None)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm(ps, -1.0)
    assert optim.clip_grad_norm([nn.Parameter(np.ones(3))], 1.0) == 0.0  # no grads


def test_adamw_subclass_with_its_own_update_keeps_it(rng):
    """AdamW.step updates every tensor in one C call, unless a subclass brings
    its own per-tensor _update, which then runs as before."""
    calls = []

    class Logged(optim.AdamW):
        def _update(self, p, g, state, group):
            calls.append(p.shape)
            super()._update(p, g, state, group)

    ps = _params(rng)
    for p in ps:
        p.grad = f32(rng, *p.shape)
    qs = [nn.Parameter(p.data.copy()) for p in ps]
    for p, q in zip(ps, qs):
        q.grad = p.grad.copy()
    Logged(ps, lr=0.1).step()
    optim.AdamW(qs, lr=0.1).step()
    assert calls == [p.shape for p in ps]
    for p, q in zip(ps, qs):
        assert np.array_equal(p.data, q.data)  # the multi-tensor call gives the same bits


def test_grad_norm_public(rng):
    # optim.grad_norm: the float64 twin's value, None grads skipped, other dtypes converted
    ps = [nn.Parameter(f32(rng, 3, 4)) for _ in range(3)]
    ps[0].grad = f32(rng, 3, 4)
    ps[1].grad = rng.standard_normal((3, 4))  # float64: converted to float32 in place
    want = ref.grad_norm([ps[0].grad, ps[1].grad.astype(np.float32)])
    assert optim.grad_norm(ps) == pytest.approx(want, rel=1e-12)
    assert ps[1].grad.dtype == np.float32
    assert optim.grad_norm(ps[0]) == pytest.approx(ref.grad_norm([ps[0].grad]), rel=1e-12)
    assert optim.grad_norm([ps[2]]) == 0.0
    ps[0].grad[1, 2] = np.inf
    assert optim.grad_norm(ps) == math.inf
    # fit without clipping records it (before, a float32 np.dot per parameter through NumPy's BLAS)
    from relpos.data import get_task
    from relpos.models import TransformerLM
    from relpos.train import fit
    task = get_task("copy", train_lengths=(2, 3), n_symbols=4)
    model = TransformerLM(task.vocab_size, d_model=16, n_layers=1, n_heads=2, encoding="alibi", seed=0)
    grads = []
    hist = fit(model, task, steps=3, batch_size=4, lr=1e-3, clip=None, progress=False,
               callback=lambda step, loss: grads.append(ref.grad_norm(
                   [p.grad for p in model.parameters() if p.grad is not None])))
    assert hist.grad_norms == pytest.approx(grads, rel=1e-12)
