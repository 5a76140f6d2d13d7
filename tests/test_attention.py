"""Materialised attention: kernel vs the float64 twin, finite-difference
gradients, masking edge cases, determinism, bad inputs, torch oracle."""
import numpy as np
import pytest
import reference as ref

from relpos import _C
from relpos.functional import attention_core
from relpos.tensor import Tensor

CHANNELS = ("plain", "shaw", "deberta", "xl", "bias_vec", "bias_full", "pwl", "all")


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def make_case(rng, channel, *, B=2, H=2, Tq=3, Tk=5, D=4, Dv=3, q_offset=2, shared=False,
              causal=True, padding=False):
    """q, k, v and the channel keywords of one attention call (float32)."""
    q, k, v = f32(rng, B, H, Tq, D), f32(rng, B, H, Tk, D), f32(rng, B, H, Tk, Dv)
    Ht = 1 if shared else H
    kw = dict(causal=causal, q_offset=q_offset)
    clip = 2
    if channel in ("shaw", "all"):
        kw.update(relk=0.5 * f32(rng, Ht, 2 * clip + 1, D), relk_ix=(-1, clip),
                  relv=0.5 * f32(rng, Ht, 2 * clip + 1, Dv), relv_ix=(-1, clip))
    if channel in ("deberta", "all"):
        kw.update(relq=0.5 * f32(rng, Ht, 2 * clip, D), relq_ix=(-1, clip))
        if channel == "deberta":
            kw.update(relk=0.5 * f32(rng, Ht, 2 * clip, D), relk_ix=(1, clip))
    if channel in ("xl", "all"):
        kw.update(qr=f32(rng, B, H, Tq, D))
        if channel == "xl":  # full Toeplitz table over i - j
            kw.update(relk=0.5 * f32(rng, Ht, Tq + Tk - 1, D), relk_ix=(1, Tk - 1 - q_offset))
    if channel in ("bias_vec", "all"):
        kw.update(bias_vec=f32(rng, Ht, Tq + Tk - 1), bias_ix=(1, Tk - 1 - q_offset))
    if channel in ("bias_full", "all"):
        kw.update(bias_full=f32(rng, 1 if shared else B, H, Tq, Tk))
    if channel in ("pwl", "all"):  # FIRE's channel: slope * x + icpt on the segment of x = u[idx] * w[i]
        S = 4
        kw.update(pwl_u=np.abs(f32(rng, Tq + Tk - 1)), pwl_ix=(1, Tk - 1 - q_offset),
                  pwl_w=np.abs(f32(rng, Tq)) + 0.2, pwl_bp=np.sort(f32(rng, S - 1)),
                  pwl_slope=f32(rng, Ht, S), pwl_icpt=f32(rng, Ht, S))
    if padding:
        m = np.zeros((B, Tk), dtype=bool)
        m[0, 1] = True
        m[-1, -1] = True
        kw["key_padding_mask"] = m
    return q, k, v, kw


def assert_close(got, want, atol=1e-5, rtol=1e-4, name=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=atol, rtol=rtol, err_msg=name)


# ---------------------------------------------------------------- reference sanity

def test_reference_matches_a_plain_loop(rng):
    """The twin itself against a loop that follows attention.h word by word."""
    q, k, v, kw = make_case(rng, "all", causal=True, padding=True)
    out, lse, probs = ref.attention(q, k, v, **kw)
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    kw = {n: (x.astype(np.float64) if isinstance(x, np.ndarray) and x.dtype == np.float32 else x)
          for n, x in kw.items()}
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    sc = 1 / np.sqrt(D)

    def idx(ix, R, ia, j):
        return min(max(ix[0] * (ia - j) + ix[1], 0), R - 1)

    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                ia = kw["q_offset"] + i
                s = np.full(Tk, -np.inf)
                for j in range(Tk):
                    if j > ia or kw["key_padding_mask"][b, j]:
                        continue
                    rk = kw["relk"][h, idx(kw["relk_ix"], kw["relk"].shape[1], ia, j)]
                    rq = kw["relq"][h, idx(kw["relq_ix"], kw["relq"].shape[1], ia, j)]
                    bv = kw["bias_vec"][h, idx(kw["bias_ix"], kw["bias_vec"].shape[1], ia, j)]
                    x = kw["pwl_u"][idx(kw["pwl_ix"], len(kw["pwl_u"]), ia, j)] * kw["pwl_w"][i]
                    seg = sum(1 for t in kw["pwl_bp"] if t <= x)
                    s[j] = sc * (q[b, h, i] @ k[b, h, j] + kw["qr"][b, h, i] @ rk + k[b, h, j] @ rq) \
                        + bv + kw["bias_full"][b, h, i, j] + kw["pwl_slope"][h, seg] * x + kw["pwl_icpt"][h, seg]
                p = np.exp(s - s.max())
                p /= p.sum()
                o = sum(p[j] * (v[b, h, j] + kw["relv"][h, idx(kw["relv_ix"], kw["relv"].shape[1], ia, j)])
                        for j in range(Tk) if p[j] > 0)
                np.testing.assert_allclose(probs[b, h, i], p, atol=1e-12)
                np.testing.assert_allclose(out[b, h, i], o, atol=1e-12)
                np.testing.assert_allclose(lse[b, h, i], s.max() + np.log(np.exp(s - s.max()).sum()))


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("shared,causal,padding", [(False, True, True), (True, False, False)])
def test_reference_backward_matches_finite_differences(rng, channel, shared, causal, padding):
    """reference.attention_backward (torch's autograd written out) against central differences of
    reference.attention, for every channel: the twin the hostile-value tests rely on."""
    q, k, v, kw = make_case(rng, channel, shared=shared, causal=causal, padding=padding, B=2, H=2, D=3, Dv=2)
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    kw = {n: (x.astype(np.float64) if isinstance(x, np.ndarray) and x.dtype == np.float32 else x)
          for n, x in kw.items()}
    W = rng.standard_normal((2, 2, q.shape[2], 2))
    g = ref.attention_backward(q, k, v, W, **kw)
    tensors = {"q": q, "k": k, "v": v}
    tensors.update({n: kw[n] for n in ("qr", "relk", "relq", "relv", "bias_vec", "bias_full", "pwl_u", "pwl_w",
                                       "pwl_slope", "pwl_icpt") if n in kw})
    assert set(g) == set(tensors)
    for name, x in tensors.items():
        def loss(xx, name=name):
            args = dict(tensors, **{name: xx})
            other = {n: kw[n] for n in kw if n not in args}
            return float((ref.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args, **other)[0] * W).sum())
        np.testing.assert_allclose(g[name], ref.numgrad(loss, x), rtol=1e-6, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_forward_matches_reference(rng, channel, causal, shared):
    q, k, v, kw = make_case(rng, channel, causal=causal, shared=shared, padding=True)
    out, lse, probs = _C.attention_mat_fwd(q, k, v, return_weights=True, **kw)
    rout, rlse, rprobs = ref.attention(q, k, v, **kw)
    assert out.shape == rout.shape and lse.shape == rlse.shape and probs.shape == rprobs.shape
    assert_close(out, rout, name="out")
    assert_close(probs, rprobs, name="probs")
    finite = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), finite)
    assert_close(lse[finite], rlse[finite], name="lse")
    out2, lse2 = _C.attention_mat_fwd(q, k, v, **kw)  # same result without the weights
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(lse2, lse)


@pytest.mark.parametrize("Tq,Tk,q_offset", [(1, 1, 0), (4, 4, 0), (2, 7, 5), (3, 6, 0), (5, 3, 0), (2, 4, 9)])
def test_forward_shapes_and_offsets(rng, Tq, Tk, q_offset):
    q, k, v, kw = make_case(rng, "all", Tq=Tq, Tk=Tk, q_offset=q_offset, causal=True)
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    rout, rlse, _ = ref.attention(q, k, v, **kw)
    assert_close(out, rout)
    finite = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), finite)
    assert_close(lse[finite], rlse[finite])


def test_scale_and_dv_differs_from_d(rng):
    q, k, v, kw = make_case(rng, "shaw", D=6, Dv=2)
    out, lse = _C.attention_mat_fwd(q, k, v, scale=0.3, **kw)
    rout, rlse, _ = ref.attention(q, k, v, scale=0.3, **kw)
    assert_close(out, rout)
    assert_close(lse, rlse)


def test_zero_size_dims(rng):
    for B, H, Tq, Tk, D in [(0, 2, 3, 3, 4), (1, 0, 3, 3, 4), (1, 2, 0, 3, 4), (1, 2, 3, 0, 4), (1, 2, 3, 3, 0)]:
        q, k, v = f32(rng, B, H, Tq, D), f32(rng, B, H, Tk, D), f32(rng, B, H, Tk, 2)
        out, lse, p = _C.attention_mat_fwd(q, k, v, causal=False, return_weights=True)
        assert out.shape == (B, H, Tq, 2) and lse.shape == (B, H, Tq) and p.shape == (B, H, Tq, Tk)
        if Tk == 0:
            assert np.all(out == 0) and np.all(lse == -np.inf)
        g = _C.attention_mat_bwd(q, k, v, out, lse, np.ones_like(out), causal=False)
        assert g["q"].shape == q.shape and g["k"].shape == k.shape and g["v"].shape == v.shape
        assert all(np.all(np.isfinite(x)) for x in g.values())


# ---------------------------------------------------------------- backward vs finite differences

def _fd_check(rng, channel, shared, causal, padding, q_offset=2, Tq=3, Tk=5):
    q, k, v, kw = make_case(rng, channel, shared=shared, causal=causal, padding=padding,
                            q_offset=q_offset, Tq=Tq, Tk=Tk, B=2, H=2, D=3, Dv=2)
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    W = f32(rng, *out.shape)
    grads = _C.attention_mat_bwd(q, k, v, out, lse, W, **kw)
    tensors = {"q": q, "k": k, "v": v}
    tensors.update({n: kw[n] for n in ("qr", "relk", "relq", "relv", "bias_vec", "bias_full", "pwl_u", "pwl_w",
                                       "pwl_slope", "pwl_icpt") if n in kw})
    assert set(grads) == set(tensors)
    W64 = W.astype(np.float64)
    for name, x in tensors.items():
        def loss(xx, name=name):
            args = {n: t.astype(np.float64) for n, t in tensors.items()}
            args[name] = xx
            other = {n: kw[n] for n in kw if n not in args}
            o, _, _ = ref.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args, **other)
            return float((o * W64).sum())
        num = ref.numgrad(loss, x.astype(np.float64))
        assert grads[name].shape == x.shape
        assert_close(grads[name], num, atol=2e-4, rtol=2e-3, name=f"d{name} ({channel})")


@pytest.mark.parametrize("channel", CHANNELS)
def test_backward_finite_differences(rng, channel):
    _fd_check(rng, channel, shared=False, causal=True, padding=True)


@pytest.mark.parametrize("channel", ["shaw", "deberta", "xl", "bias_vec", "all"])
def test_backward_shared_tables_bidirectional(rng, channel):
    _fd_check(rng, channel, shared=True, causal=False, padding=False, q_offset=0, Tq=4, Tk=4)


def test_backward_q_offset_longer_keys(rng):
    _fd_check(rng, "all", shared=False, causal=True, padding=False, q_offset=4, Tq=2, Tk=6)


def test_backward_needs_subset(rng):
    q, k, v, kw = make_case(rng, "all")
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    W = f32(rng, *out.shape)
    full = _C.attention_mat_bwd(q, k, v, out, lse, W, **kw)
    sub = _C.attention_mat_bwd(q, k, v, out, lse, W, needs=["relq", "bias_vec", "v"], **kw)
    assert set(sub) == {"relq", "bias_vec", "v"}
    for n in sub:
        np.testing.assert_array_equal(sub[n], full[n])


# ---------------------------------------------------------------- masking and range

def test_fully_masked_rows(rng):
    q, k, v, kw = make_case(rng, "all", causal=True)
    m = np.zeros((2, 5), dtype=bool)
    m[1] = True  # batch 1: every key is padding
    kw["key_padding_mask"] = m
    out, lse, probs = _C.attention_mat_fwd(q, k, v, return_weights=True, **kw)
    assert np.all(out[1] == 0) and np.all(lse[1] == -np.inf) and np.all(probs[1] == 0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse[0]))
    g = _C.attention_mat_bwd(q, k, v, out, lse, f32(rng, *out.shape), **kw)
    for name, x in g.items():
        assert np.all(np.isfinite(x)), name
    for name in ("q", "k", "v", "qr"):
        assert np.all(g[name][1] == 0), name
    assert np.all(g["bias_full"][1] == 0)
    rout, _, _ = ref.attention(q, k, v, **kw)
    assert_close(out, rout)


def test_causal_row_before_first_key_is_masked(rng):
    # q_offset = 0, causal, key 0 padded: query 0 sees nothing
    q, k, v, kw = make_case(rng, "plain", q_offset=0, Tq=3, Tk=3, causal=True)
    kw["key_padding_mask"] = np.array([[True, False, False]] * 2)
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    assert np.all(out[:, :, 0] == 0) and np.all(lse[:, :, 0] == -np.inf)
    g = _C.attention_mat_bwd(q, k, v, out, lse, np.ones_like(out), **kw)
    assert np.all(g["q"][:, :, 0] == 0) and all(np.all(np.isfinite(x)) for x in g.values())


@pytest.mark.parametrize("big", [1e4, -1e4])
def test_huge_logits_stay_finite(rng, big):
    q, k, v, kw = make_case(rng, "bias_full", causal=False)
    bf = np.zeros_like(kw["bias_full"])
    bf[..., 0] = big
    bf[..., 2] = -big
    kw["bias_full"] = bf
    out, lse, p = _C.attention_mat_fwd(q, k, v, return_weights=True, **kw)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse)) and np.all(np.isfinite(p))
    rout, rlse, _ = ref.attention(q, k, v, **kw)
    assert_close(out, rout, atol=1e-4)
    np.testing.assert_allclose(lse, rlse, rtol=1e-6)
    g = _C.attention_mat_bwd(q, k, v, out, lse, f32(rng, *out.shape), **kw)
    assert all(np.all(np.isfinite(x)) for x in g.values())


# ---------------------------------------------------------------- determinism and offsets

def test_bit_identical_one_and_two_threads(rng, threads):
    q, k, v, kw = make_case(rng, "all", B=1, H=2, Tq=13, Tk=17, D=8, Dv=5, q_offset=4, shared=True)
    W = f32(rng, 1, 2, 13, 5)

    def run():
        out, lse, p = _C.attention_mat_fwd(q, k, v, return_weights=True, **kw)
        return (out, lse, p), _C.attention_mat_bwd(q, k, v, out, lse, W, **kw)

    (o1, g1), (o2, g2) = threads(1, run), threads(2, run)
    for a, b in zip(o1, o2):
        assert a.tobytes() == b.tobytes()
    assert set(g1) == set(g2)
    for n in g1:
        assert g1[n].tobytes() == g2[n].tobytes(), n


def test_last_row_with_q_offset_equals_full(rng):
    T = 6
    q, k, v, kw = make_case(rng, "all", Tq=T, Tk=T, q_offset=0, causal=True)
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    kw1 = dict(kw)
    # the same tables and relative indices: positions are absolute, q_offset moves the query
    kw1.update(q_offset=T - 1, qr=np.ascontiguousarray(kw["qr"][:, :, -1:]),
               bias_full=np.ascontiguousarray(kw["bias_full"][:, :, -1:]), pwl_w=kw["pwl_w"][-1:].copy())
    o1, l1 = _C.attention_mat_fwd(np.ascontiguousarray(q[:, :, -1:]), k, v, **kw1)
    np.testing.assert_array_equal(o1[:, :, 0], out[:, :, -1])
    np.testing.assert_array_equal(l1[:, :, 0], lse[:, :, -1])


# ---------------------------------------------------------------- Function / autograd

@pytest.mark.parametrize("channel", ["all", "plain"])
def test_attention_core_autograd(rng, channel):
    q, k, v, kw = make_case(rng, channel, padding=True)
    names = ("qr", "relk", "relq", "relv", "bias_vec", "bias_full", "pwl_u", "pwl_w", "pwl_slope", "pwl_icpt")
    T = {n: Tensor(x, requires_grad=True) for n, x in [("q", q), ("k", k), ("v", v)]}
    T.update({n: Tensor(kw[n], requires_grad=True) for n in names if n in kw})
    kw_t = {n: (T[n] if n in T else x) for n, x in kw.items()}
    out = attention_core(T["q"], T["k"], T["v"], impl="materialized", **kw_t)
    assert isinstance(out, Tensor)
    rout, _, _ = ref.attention(q, k, v, **kw)
    assert_close(out.data, rout)
    W = f32(rng, *out.shape)
    out.backward(W)
    o, lse = _C.attention_mat_fwd(q, k, v, **kw)
    want = _C.attention_mat_bwd(q, k, v, o, lse, W, **kw)
    for n, t in T.items():
        assert t.grad is not None, n
        np.testing.assert_allclose(t.grad, want[n], rtol=1e-6, atol=1e-7, err_msg=n)


def test_attention_core_only_needed_grads(rng):
    q, k, v, kw = make_case(rng, "shaw")
    tq = Tensor(q, requires_grad=True)
    tk = Tensor(k)  # no grad
    relk = Tensor(kw.pop("relk"), requires_grad=True)
    out = attention_core(tq, tk, v, relk=relk, impl="materialized", **kw)
    out.backward(np.ones(out.shape, np.float32))
    assert tq.grad is not None and relk.grad is not None and tk.grad is None


def test_attention_core_weights(rng):
    q, k, v, kw = make_case(rng, "bias_vec", padding=True)
    out, w = attention_core(q, k, v, return_weights=True, **kw)
    assert isinstance(w, np.ndarray) and w.shape == (2, 2, 3, 5)
    _, _, rp = ref.attention(q, k, v, **kw)
    assert_close(w, rp)
    assert isinstance(out, Tensor)


def test_attention_core_impl_choice(rng):
    q, k, v, _ = make_case(rng, "plain")
    with pytest.raises(ValueError, match="impl must be one of"):
        attention_core(q, k, v, impl="flash")
    if not hasattr(_C, "attention_fwd"):
        with pytest.raises(RuntimeError, match="no fused attention kernel"):
            attention_core(q, k, v, impl="fused")
    else:
        with pytest.raises(ValueError, match="return_weights"):
            attention_core(q, k, v, impl="fused", return_weights=True)
    out = attention_core(q, k, v, impl="auto")
    assert_close(out.data, ref.attention(q, k, v)[0])


# ---------------------------------------------------------------- bad inputs

def _bad_cases(rng):
    q, k, v = f32(rng, 2, 4, 3, 16), f32(rng, 2, 4, 5, 16), f32(rng, 2, 4, 5, 8)
    tab = f32(rng, 4, 5, 16)
    return q, k, v, [
        (dict(k=f32(rng, 2, 3, 5, 16)), ValueError, r"k must have shape \(B, H, Tk, D\) = \(2, 4, \*, 16\); got \(2, 3, 5, 16\)"),
        (dict(k=f32(rng, 2, 4, 5, 8)), ValueError, r"k must have shape"),
        (dict(v=f32(rng, 2, 4, 6, 8)), ValueError, r"v must have shape"),
        (dict(q=f32(rng, 2, 4, 3)), ValueError, r"q must have shape"),
        (dict(q=q.astype(np.float64)), TypeError, r"q must have dtype float32"),
        (dict(q_offset=-1), ValueError, r"q_offset must be in \[0, 2\*\*60\]; got -1"),
        (dict(scale=float("nan")), ValueError, r"scale must be finite"),
        (dict(scale="x"), TypeError, r"scale must be a float"),
        (dict(key_padding_mask=np.zeros((2, 5), np.int64)), TypeError, r"key_padding_mask must have dtype bool"),
        (dict(key_padding_mask=np.zeros((2, 4), bool)), ValueError, r"key_padding_mask must have shape \(B, Tk\)"),
        (dict(relk=tab), ValueError, r"relk_ix is required"),
        (dict(relk_ix=(1, 0)), ValueError, r"relk_ix was given but relk is None"),
        (dict(relk=tab, relk_ix=(2, 0)), ValueError, r"relk_ix sign must be \+1 or -1; got 2"),
        (dict(relk=tab, relk_ix=(1,)), (ValueError, TypeError), r"relk_ix must be a \(sign, off\) tuple"),
        (dict(relk=tab, relk_ix=(1.0, 0)), TypeError, r"relk_ix must be a \(sign, off\) tuple of ints"),
        (dict(relk=tab, relk_ix=(True, 0)), TypeError, r"relk_ix must be a \(sign, off\) tuple of ints"),
        (dict(relk=f32(rng, 3, 5, 16), relk_ix=(1, 0)), ValueError, r"relk must have a head dim of 1 or H = 4"),
        (dict(relk=f32(rng, 4, 5, 8), relk_ix=(1, 0)), ValueError, r"relk must have shape"),
        (dict(relk=f32(rng, 4, 0, 16), relk_ix=(1, 0)), ValueError, r"relk must have at least one"),
        (dict(relv=f32(rng, 1, 5, 16), relv_ix=(1, 0)), ValueError, r"relv must have shape \(1\|H, R, Dv\)"),
        (dict(relq=f32(rng, 1, 5, 16)), ValueError, r"relq_ix is required"),
        (dict(bias_vec=f32(rng, 4, 5, 1), bias_ix=(1, 0)), ValueError, r"bias_vec must have shape"),
        (dict(bias_full=f32(rng, 3, 4, 3, 5)), ValueError, r"bias_full must have a batch dim of 1 or B = 2"),
        (dict(bias_full=f32(rng, 2, 4, 3, 4)), ValueError, r"bias_full must have shape"),
        (dict(qr=f32(rng, 2, 4, 3, 16)), ValueError, r"qr was given but relk is None"),
        (dict(qr=f32(rng, 2, 4, 2, 16), relk=tab, relk_ix=(1, 0)), ValueError, r"qr must have shape"),
    ]


def test_bad_inputs_bridge(rng):
    q, k, v, cases = _bad_cases(rng)
    for over, exc, msg in cases:
        args = dict(q=q, k=k, v=v)
        kw = dict(over)
        for n in ("q", "k", "v"):
            if n in kw:
                args[n] = kw.pop(n)
        with pytest.raises(exc, match=msg):
            _C.attention_mat_fwd(args["q"], args["k"], args["v"], **kw)


def test_bad_inputs_function(rng):
    q, k, v, cases = _bad_cases(rng)
    for over, exc, msg in cases:
        args = dict(q=q, k=k, v=v)
        kw = dict(over)
        for n in ("q", "k", "v"):
            if n in kw:
                args[n] = kw.pop(n)
        if args["q"].dtype == np.float64:
            continue  # attention_core converts other float dtypes to float32
        with pytest.raises(exc, match=msg.split(";")[0].split(" = ")[0]):
            attention_core(args["q"], args["k"], args["v"], impl="materialized", **kw)


def test_bad_inputs_backward(rng):
    q, k, v = f32(rng, 1, 2, 3, 4), f32(rng, 1, 2, 3, 4), f32(rng, 1, 2, 3, 4)
    out, lse = _C.attention_mat_fwd(q, k, v)
    with pytest.raises(ValueError, match=r"lse must have shape \(B, H, Tq\)"):
        _C.attention_mat_bwd(q, k, v, out, lse[:, :, :2], out)
    with pytest.raises(ValueError, match=r"dout must have shape"):
        _C.attention_mat_bwd(q, k, v, out, lse, out[:, :1])
    with pytest.raises(ValueError, match=r"unknown name 'relz'"):
        _C.attention_mat_bwd(q, k, v, out, lse, out, needs=["relz"])
    with pytest.raises(ValueError, match=r"gradient of relk but relk is None"):
        _C.attention_mat_bwd(q, k, v, out, lse, out, needs=["relk"])
    with pytest.raises(TypeError, match=r"needs must be a sequence"):
        _C.attention_mat_bwd(q, k, v, out, lse, out, needs="q")
    with pytest.raises(TypeError):
        _C.attention_mat_fwd(q, k, v, bogus=1)
    with pytest.raises(TypeError):
        _C.attention_mat_fwd(q, k, v, True)  # keywords only after v


def test_inputs_not_modified(rng):
    q, k, v, kw = make_case(rng, "all", padding=True)
    saved = [x.copy() for x in (q, k, v)] + [kw[n].copy() for n in ("relk", "relq", "relv", "bias_vec")]
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    _C.attention_mat_bwd(q, k, v, out, lse, np.ones_like(out), **kw)
    for a, b in zip(saved, [q, k, v] + [kw[n] for n in ("relk", "relq", "relv", "bias_vec")]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- torch oracle

@pytest.mark.parametrize("causal", [True, False])
def test_plain_attention_vs_torch_sdpa(rng, causal):
    torch = pytest.importorskip("torch")
    q, k, v = f32(rng, 2, 3, 6, 8), f32(rng, 2, 3, 6, 8), f32(rng, 2, 3, 6, 8)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    ((tout + 1).square().mean()).backward()
    Q, K, V = (Tensor(x, requires_grad=True) for x in (q, k, v))
    out = attention_core(Q, K, V, causal=causal, impl="materialized")
    np.testing.assert_allclose(out.data, tout.detach().numpy(), atol=1e-5, rtol=1e-5)
    dout = 2 * (out.data + 1) / out.data.size  # d mean((out+1)^2) / d out
    out.backward(dout)
    for t, tt, n in ((Q, tq, "q"), (K, tk, "k"), (V, tv, "v")):
        np.testing.assert_allclose(t.grad, tt.grad.numpy(), atol=1e-6, rtol=1e-4, err_msg=n)


# ---------------------------------------------------------------- properties

def test_numpy_integer_indices(rng):
    q, k, v, kw = make_case(rng, "shaw")
    a = _C.attention_mat_fwd(q, k, v, **kw)
    kw.update(relk_ix=(np.int64(-1), np.int32(2)), relv_ix=[np.int8(-1), 2])
    b = _C.attention_mat_fwd(q, k, v, **kw)
    np.testing.assert_array_equal(a[0], b[0])


def test_non_contiguous_inputs(rng):
    q, k, v, kw = make_case(rng, "all", Tq=4, Tk=4, D=4, Dv=4, q_offset=0)
    qt = np.ascontiguousarray(q.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, F-like strides
    assert not qt.flags.c_contiguous
    a = _C.attention_mat_fwd(qt, k, v, **kw)
    b = _C.attention_mat_fwd(q, k, v, **kw)
    np.testing.assert_array_equal(a[0], b[0])


def test_property_random_shapes_and_channels():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=40, deadline=None)
    @hyp.given(B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 5), Tk=st.integers(1, 6),
               D=st.integers(1, 5), Dv=st.integers(1, 4), q_offset=st.integers(0, 6),
               channel=st.sampled_from(CHANNELS), shared=st.booleans(), causal=st.booleans(),
               padding=st.booleans(), seed=st.integers(0, 2 ** 16))
    def check(B, H, Tq, Tk, D, Dv, q_offset, channel, shared, causal, padding, seed):
        rng = np.random.default_rng(seed)
        q, k, v, kw = make_case(rng, channel, B=B, H=H, Tq=Tq, Tk=Tk, D=D, Dv=Dv, q_offset=q_offset,
                                shared=shared, causal=causal)
        if padding:
            kw["key_padding_mask"] = rng.random((B, Tk)) < 0.4
        out, lse, p = _C.attention_mat_fwd(q, k, v, return_weights=True, **kw)
        rout, rlse, rp = ref.attention(q, k, v, **kw)
        assert_close(out, rout)
        assert_close(p, rp)
        assert np.array_equal(np.isfinite(lse), np.isfinite(rlse))
        g = _C.attention_mat_bwd(q, k, v, out, lse, np.ones_like(out), **kw)
        assert all(np.all(np.isfinite(x)) for x in g.values())
        # d(sum out)/dv_j = Σ_i p_ij (each value row is weighted by its total attention)
        assert_close(g["v"], np.broadcast_to(rp.sum(axis=2)[..., None], v.shape))

    check()


def test_no_reference_leaks(rng):
    import sys
    q, k, v, kw = make_case(rng, "all", padding=True)
    arrays = [q, k, v] + [x for x in kw.values() if isinstance(x, np.ndarray)]
    before = [sys.getrefcount(a) for a in arrays]
    for _ in range(50):
        out, lse, p = _C.attention_mat_fwd(q, k, v, return_weights=True, **kw)
        _C.attention_mat_bwd(q, k, v, out, lse, out, **kw)
        with pytest.raises(ValueError):
            _C.attention_mat_fwd(q, k, v, **{**kw, "relv_ix": (3, 0)})
        with pytest.raises(ValueError):
            _C.attention_mat_bwd(q, k, v, out, lse, out, needs=["nope"], **kw)
    del out, lse, p
    assert [sys.getrefcount(a) for a in arrays] == before


@pytest.mark.parametrize("channel", CHANNELS)
def test_attention_core_fused_agrees_with_materialized(rng, channel):
    q, k, v, kw = make_case(rng, channel, padding=True)
    W = f32(rng, 2, 2, 3, 3)
    res = {}
    for impl in ("materialized", "fused"):
        T = [Tensor(x, requires_grad=True) for x in (q, k, v)]
        kwt = {n: (Tensor(x, requires_grad=True) if isinstance(x, np.ndarray) and x.dtype == np.float32
                   and n != "pwl_bp" else x)  # the breakpoints have no gradient (piecewise constant)
               for n, x in kw.items()}
        out = attention_core(*T, impl=impl, **kwt)
        out.backward(W)
        res[impl] = [out.data] + [t.grad for t in T] + [t.grad for t in kwt.values() if isinstance(t, Tensor)]
    for a, b in zip(res["materialized"], res["fused"]):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("channel", CHANNELS)
def test_merge_heads_gives_the_merged_layout_bit_for_bit(rng, threads, impl, channel):
    """merge_heads=True: out (B, Tq, H*Dv) holds the bits of the (B, H, Tq, Dv) result's
    merge, and every gradient is that of the unmerged call given the same upstream
    gradient (split back into heads); on 1 and 2 threads. The fused kernel writes and
    reads that layout itself; the materialised path transposes."""
    B, H, Tq, Dv = 2, 3, 19, 5
    q, k, v, kw = make_case(rng, channel, B=B, H=H, Tq=Tq, Tk=23, D=6, Dv=Dv, q_offset=4, padding=True)
    W = f32(rng, B, Tq, H * Dv)
    q[1, 2, 7, 0] = np.nan  # a NaN row, which must stay where it is

    def run(merge):
        T = [Tensor(x, requires_grad=True) for x in (q, k, v)]
        kwt = {n: (Tensor(x, requires_grad=True) if isinstance(x, np.ndarray) and x.dtype == np.float32
                   and n != "pwl_bp" else x) for n, x in kw.items()}
        out = attention_core(*T, impl=impl, merge_heads=merge, **kwt)
        if merge:
            assert out.shape == (B, Tq, H * Dv)
            out.backward(W)
            merged = out.data
        else:
            out.backward(np.ascontiguousarray(W.reshape(B, Tq, H, Dv).transpose(0, 2, 1, 3)))
            merged = out.data.transpose(0, 2, 1, 3).reshape(B, Tq, H * Dv)
        return [merged] + [t.grad for t in T] + [t.grad for t in kwt.values() if isinstance(t, Tensor)]

    want = threads(1, lambda: run(False))
    assert np.isnan(want[0][1, 7, 2 * Dv:3 * Dv]).all() and np.isfinite(want[0][0]).all()
    for n in (1, 2):
        got = threads(n, lambda: run(True))
        for i, (a, b) in enumerate(zip(got, want)):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), f"{n} threads, result {i}"


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("B,Tq", [(0, 3), (2, 0)])
def test_merge_heads_with_empty_batch_or_queries(impl, B, Tq):
    q = Tensor(np.zeros((B, 2, Tq, 4), np.float32), requires_grad=True)
    k = Tensor(np.zeros((B, 2, 5, 4), np.float32), requires_grad=True)
    v = Tensor(np.zeros((B, 2, 5, 3), np.float32), requires_grad=True)
    out = attention_core(q, k, v, impl=impl, merge_heads=True, causal=False)
    assert out.shape == (B, Tq, 6)
    out.backward(np.ones(out.shape, np.float32))
    assert q.grad.shape == q.shape and v.grad.shape == v.shape and not v.grad.any()


def test_merge_heads_with_weights_and_the_bridge_checks(rng):
    q, k, v, kw = make_case(rng, "bias_vec", padding=True)
    out, w = attention_core(q, k, v, return_weights=True, merge_heads=True, **kw)
    o0, w0 = attention_core(q, k, v, return_weights=True, **kw)
    np.testing.assert_array_equal(out.data, o0.data.transpose(0, 2, 1, 3).reshape(2, 3, 6))
    np.testing.assert_array_equal(w, w0)
    o, lse = _C.attention_fwd(q, k, v, merged=True, **kw)
    assert o.shape == (2, 3, 2, 3) and lse.shape == (2, 2, 3)
    # the backward checks out and dout against the layout it was told
    with pytest.raises(ValueError, match=r"dout must have shape \(B, Tq, H, Dv\) \(merged=True\)"):
        _C.attention_bwd(q, k, v, o, lse, np.zeros((2, 2, 3, 3), np.float32), merged=True, **kw)
    with pytest.raises(ValueError, match=r"out must have shape \(B, H, Tq, Dv\)"):
        _C.attention_bwd(q, k, v, o, lse, np.zeros((2, 2, 3, 3), np.float32), **kw)
    with pytest.raises(TypeError, match="merged"):  # the materialised kernel has only one layout
        _C.attention_mat_fwd(q, k, v, merged=True, **kw)


@pytest.mark.parametrize("portable", [True, False])
def test_portable_and_simd_gemm_paths(rng, threads, portable):
    """The content GEMMs run on the portable or the AVX2 path: both match the twin
    and stay bit-identical across thread counts."""
    q, k, v, kw = make_case(rng, "all", B=2, H=2, Tq=9, Tk=11, D=7, Dv=5, q_offset=3, padding=True)
    W = f32(rng, 2, 2, 9, 5)
    _C.force_portable(portable)
    try:
        def run():
            out, lse = _C.attention_mat_fwd(q, k, v, **kw)
            return out, lse, _C.attention_mat_bwd(q, k, v, out, lse, W, **kw)
        o1, l1, g1 = threads(1, run)
        o2, l2, g2 = threads(2, run)
    finally:
        _C.force_portable(False)
    assert o1.tobytes() == o2.tobytes() and l1.tobytes() == l2.tobytes()
    assert all(g1[n].tobytes() == g2[n].tobytes() for n in g1)
    assert_close(o1, ref.attention(q, k, v, **kw)[0])


def test_nan_propagates_never_hidden(rng):
    q, k, v, kw = make_case(rng, "bias_vec", causal=False)
    q[0, 1, 2, 0] = np.nan
    out, lse = _C.attention_mat_fwd(q, k, v, **kw)
    assert np.all(np.isnan(out[0, 1, 2])) and np.isnan(lse[0, 1, 2])
    good = np.ones(out.shape[:3], bool)
    good[0, 1, 2] = False
    assert np.all(np.isfinite(out[good]))
