"""Hostile values in attention (issue 12, item 1): NaN, +-inf, huge (+-1e30) and
denormal values in q, k, v, every channel table, the biases, and the FIRE / ALiBi
parameters. Every path (fused with the CPU's SIMD kernels, fused portable, the
AVX2 kernels too on an AVX-512 CPU, materialised) must give the answer of the
float64 reference (tests/reference.py attention / attention_backward, which
follow torch's softmax; csrc/core/attention.h states the rules):

- equal NaN positions, in the outputs, lse, weights and every gradient;
- equal infinities;
- finite values within float32 rounding of the sum of the terms' magnitudes
  (attention_backward(magnitude=True)): a result that cancels huge terms is only
  known to that scale in float32. The weights themselves are only known to
  exp(ulp of the logits): a row whose logits are near 1e30 (ulp ~1e23) has
  weights float32 cannot pin down, so its tolerance grows to the bound.

The rules are also checked against torch (where installed) on small cases.

    python -m pytest tests/test_attention_hostile.py -q
RELPOS_HOSTILE_EXAMPLES overrides the 200 examples per entry point.
"""
import os

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relpos
import relpos._C as C
import relpos.functional as F
from relpos import encodings as E

N_EXAMPLES = int(os.environ.get("RELPOS_HOSTILE_EXAMPLES", "200"))
HOSTILE = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))
VALUES = (np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-40, -1e-40)  # 1e-40: a float32 denormal
f32 = np.float32


def modes():
    """The kernel choices a call can take on this machine: (name, force_portable, gemm kernel)."""
    out = [("simd", False, None), ("portable", True, None)]
    if C.gemm_kernel() == "avx512":
        out.append(("avx2", False, "avx2"))
    return out


def run_mode(mode, fn, *args, **kw):
    _, portable, kernel = mode
    before = C.gemm_kernel()
    C.force_portable(portable)
    if kernel:
        C.gemm_kernel(kernel)
    try:
        return fn(*args, **kw)
    finally:
        C.force_portable(False)
        C.gemm_kernel(before)


# ---------------------------------------------------------------- the comparison



def agree(name, got, want, scale, rtol=1e-4, atol=1e-5):
    """got (float32) against want (float64): NaN where want is NaN, the same infinity, and
    |got - want| <= rtol * (|want| + scale) + atol elsewhere."""
    got = np.asarray(got, np.float64)
    want = ref._round32(want)  # a value past float32's range is an infinity
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    gn, wn = np.isnan(got), np.isnan(want)
    if not np.array_equal(gn, wn):
        bad = np.argwhere(gn != wn)[:5].tolist()
        raise AssertionError(f"{name}: NaN positions differ at {bad} (got NaN: {int(gn.sum())}, "
                             f"want NaN: {int(wn.sum())})")
    inf = np.isinf(want) & ~wn
    if not np.array_equal(got[inf], want[inf]):
        raise AssertionError(f"{name}: infinities differ: got {got[inf][:5]}, want {want[inf][:5]}")
    fin = ~wn & ~inf
    sc = np.nan_to_num(np.broadcast_to(scale, want.shape)[fin], nan=0.0, posinf=np.finfo(f32).max)
    err = np.abs(got[fin] - want[fin])
    tol = rtol * (np.abs(want[fin]) + sc) + atol
    if not (err <= tol).all():
        i = int(np.argmax(err - tol))
        raise AssertionError(f"{name}: {int((err > tol).sum())} values off; worst got {got[fin][i]!r}, "
                             f"want {want[fin][i]!r} (scale {sc[i]:.3g})")


def row_slack(q, k, rk):
    """Per row (B, H, Tq): how far float32 rounding of the logits can move the weights (relative): 4 ulp
    of the largest finite unmasked logit; and whether that is too far to say anything (>= 0.5: logits
    past ~1e6, whose ulp is a large step of exp)."""
    s, allowed = ref.attention_logits(q, k, **{n: x for n, x in rk.items() if n not in ("relv", "relv_ix")})
    s = np.where(np.broadcast_to(allowed, s.shape) & np.isfinite(s), np.abs(s), 0.0)
    d = 4 * 2.0**-24 * s.max(axis=-1, initial=0.0)
    return np.minimum(d, 1.0), d >= 0.5


def scales(q, k, v, dout, rk, rtol_out=1e-4, rtol_grad=2e-4):
    """The rounding scales of out and of every gradient for :func:`agree`: the sums of the terms'
    magnitudes, with each row's weights moved by its slack, and taken as 1 on every unmasked key in a
    row float32 cannot pin down."""
    slack, loose = row_slack(q, k, rk)
    absv = dict(rk, relv=np.abs(rk["relv"])) if "relv" in rk else rk
    s_out = ref.attention(q, k, np.abs(v), f32=True, **absv)[0] * (1 + slack / rtol_out)[..., None]
    # a loose row: sum over its unmasked keys of |v_j| (+ |relv|), whatever the weights
    s, allowed = ref.attention_logits(q, k, **{n: x for n, x in rk.items() if n not in ("relv", "relv_ix")})
    present = np.broadcast_to(allowed, s.shape)
    vals = np.broadcast_to(np.abs(np.asarray(v, np.float64))[:, :, None], present.shape + (v.shape[-1],))
    if "relv" in rk:
        H, Tq, Tk = s.shape[1:]
        tab = np.broadcast_to(np.abs(rk["relv"]), (H,) + rk["relv"].shape[1:]).astype(np.float64)
        vals = vals + tab[:, ref.attention_relidx(rk["relv_ix"], tab.shape[1], Tq, Tk, rk.get("q_offset", 0))][None]
    sum_v = np.where(present[..., None], vals, 0.0).sum(axis=-2)
    s_out = np.where(loose[..., None], sum_v / rtol_out, s_out)
    grown = np.abs(dout) * (1 + slack / rtol_grad)[..., None]
    s_grad = ref.attention_backward(q, k, v, grown, f32=True, magnitude=True, p_floor=np.where(loose, 1.0, 0.0),
                                    **rk)
    return s_out, s_grad


# ---------------------------------------------------------------- cases

@st.composite
def cases(draw):
    """q, k, v and channel keywords (float32) with 1 to 3 hostile values in distinct tensors."""
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    big = draw(st.integers(0, 9)) == 0  # now and then two key tiles and two query blocks
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    Tq = draw(st.integers(65, 67)) if big else draw(st.integers(1, 5))
    Tk = draw(st.integers(65, 70)) if big else draw(st.integers(1, 6))
    D, Dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    causal = draw(st.booleans())
    qo = draw(st.sampled_from([0, max(Tk - Tq, 0), draw(st.integers(0, 3))]))
    g = lambda *s: r.standard_normal(s).astype(f32)
    q, k, v = g(B, H, Tq, D), g(B, H, Tk, D), g(B, H, Tk, Dv)
    kw = dict(causal=causal, q_offset=qo)
    if draw(st.booleans()):
        kw["key_padding_mask"] = r.random((B, Tk)) < 0.3
    Ht = draw(st.sampled_from([1, H]))
    rel = draw(st.sampled_from(["none", "shaw", "deberta", "xl"]))
    if rel == "shaw":
        c = draw(st.integers(0, 2))
        kw.update(relk=0.5 * g(Ht, 2 * c + 1, D), relk_ix=(-1, c), relv=0.5 * g(Ht, 2 * c + 1, Dv), relv_ix=(-1, c))
    elif rel == "deberta":
        c = draw(st.integers(1, 2))
        kw.update(relk=0.5 * g(Ht, 2 * c, D), relk_ix=(1, c), relq=0.5 * g(Ht, 2 * c, D), relq_ix=(-1, c))
    elif rel == "xl":
        kw.update(qr=g(B, H, Tq, D), relk=0.5 * g(Ht, Tq + Tk - 1, D), relk_ix=(1, Tk - 1 - qo))
    if draw(st.booleans()):
        kw.update(bias_vec=g(Ht, Tq + Tk - 1), bias_ix=(1, Tk - 1 - qo))
    if draw(st.integers(0, 3)) == 0:
        kw["bias_full"] = g(draw(st.sampled_from([1, B])), H, Tq, Tk)
    if draw(st.integers(0, 2)) == 0:
        S = draw(st.integers(1, 4))
        kw.update(pwl_u=np.abs(g(Tq + Tk - 1)), pwl_ix=(1, Tk - 1 - qo), pwl_w=np.abs(g(Tq)) + 0.1,
                  pwl_bp=np.sort(g(S - 1)), pwl_slope=g(Ht, S), pwl_icpt=g(Ht, S))
    tensors = {"q": q, "k": k, "v": v}
    tensors.update({n: x for n, x in kw.items() if isinstance(x, np.ndarray) and x.dtype == f32 and n != "pwl_bp"})
    targets = draw(st.lists(st.sampled_from(sorted(tensors)), min_size=1, max_size=3, unique=True))
    for name in targets:
        x = tensors[name]
        if x.size:
            x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(VALUES))
    dout = g(B, H, Tq, Dv)
    return q, k, v, kw, dout, targets


def ref_kw(kw):
    """The reference's keywords: the pwl channel as one dict."""
    out = {n: x for n, x in kw.items() if not n.startswith("pwl_")}
    if "pwl_u" in kw:
        out["pwl"] = dict(u=kw["pwl_u"], ix=kw["pwl_ix"], w=kw["pwl_w"], bp=kw["pwl_bp"], slope=kw["pwl_slope"],
                          icpt=kw["pwl_icpt"])
    return out


def same_bits(name, got, want):
    """got and want hold the same float32 bits (NaN payloads and zero signs too)."""
    got, want = np.asarray(got, f32), np.asarray(want, f32)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    bad = np.argwhere(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{name}: bits differ at {bad[:5].tolist()}: {got[tuple(bad[0])]} vs {want[tuple(bad[0])]}"


def check_forward(fwd, q, k, v, kw, weights=False):
    rk = ref_kw(kw)
    want_out, want_lse, want_p = ref.attention(q, k, v, f32=True, **rk)
    # the scale of out's rounding: sum_j p_ij (|v_j| + |relv|)
    scale_out, _ = scales(q, k, v, np.zeros(q.shape[:3] + v.shape[-1:], f32), rk)
    logits = ref.attention_logits(q, k, **{n: x for n, x in rk.items() if n not in ("relv", "relv_ix")})[0]
    scale_lse = np.max(np.where(np.isfinite(logits), np.abs(logits), 0.0), axis=-1, initial=0.0)
    for mode in modes():
        res = run_mode(mode, fwd, q, k, v, return_weights=True, **kw) if weights else run_mode(mode, fwd, q, k, v, **kw)
        agree(f"{mode[0]} out", res[0], want_out, scale_out)
        agree(f"{mode[0]} lse", res[1], want_lse, scale_lse, rtol=2e-5)
        if weights:
            agree(f"{mode[0]} weights", res[2], want_p, 0.0)
        if fwd is C.attention_fwd:  # out written in the merged (B, Tq, H, Dv) layout: the same bits
            om, lm = run_mode(mode, fwd, q, k, v, merged=True, **kw)
            same_bits(f"{mode[0]} merged out", om, res[0].transpose(0, 2, 1, 3))
            same_bits(f"{mode[0]} merged lse", lm, res[1])


def check_backward(fwd, bwd, q, k, v, kw, dout):
    rk = ref_kw(kw)
    want = ref.attention_backward(q, k, v, dout, f32=True, **rk)
    _, scale = scales(q, k, v, dout, rk)
    for mode in modes():
        out, lse = run_mode(mode, fwd, q, k, v, **kw)
        got = run_mode(mode, bwd, q, k, v, out, lse, dout, **kw)
        assert set(got) == set(want), (sorted(got), sorted(want))
        for name in want:
            agree(f"{mode[0]} d{name}", got[name], want[name], scale[name], rtol=2e-4)
        if bwd is C.attention_bwd:  # out and dout in the merged layout: the same gradients, bit for bit
            om, lm = run_mode(mode, fwd, q, k, v, merged=True, **kw)
            gm = run_mode(mode, bwd, q, k, v, om, lm, np.ascontiguousarray(dout.transpose(0, 2, 1, 3)),
                          merged=True, **kw)
            assert set(gm) == set(got)
            for name in got:
                same_bits(f"{mode[0]} merged d{name}", gm[name], got[name])


@pytest.mark.parametrize("path", ["fused", "materialized"])
def test_hostile_forward(path):
    fwd = C.attention_fwd if path == "fused" else C.attention_mat_fwd

    @HOSTILE
    @given(case=cases())
    def run(case):
        q, k, v, kw, _, _ = case
        check_forward(fwd, q, k, v, kw, weights=path == "materialized")
    run()


@pytest.mark.parametrize("path", ["fused", "materialized"])
def test_hostile_backward(path):
    fwd, bwd = (C.attention_fwd, C.attention_bwd) if path == "fused" else (C.attention_mat_fwd, C.attention_mat_bwd)

    @HOSTILE
    @given(case=cases())
    def run(case):
        q, k, v, kw, dout, _ = case
        check_backward(fwd, bwd, q, k, v, kw, dout)
    run()


# ---------------------------------------------------------------- FIRE and ALiBi parameters

def encoding_case(draw, name):
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    H, Tq, Tk, D = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 6)), 2
    qo = draw(st.sampled_from([0, max(Tk - Tq, 0), 3]))
    if name == "fire":
        enc = E.get("fire", n_heads=H, width=draw(st.integers(1, 4)), seed=int(r.integers(1000)),
                    init_L=float(r.uniform(0.5, 6)))
    else:
        enc = E.get("alibi", n_heads=H, learnable=True, symmetric=draw(st.sampled_from([None, True])))
    params = dict(enc.named_parameters())
    # one parameter value (the segment form of FIRE meets a single hostile weight as the MLP does)
    pname = draw(st.sampled_from(sorted(params)))
    p = params[pname]
    p.data.flat[draw(st.integers(0, p.size - 1))] = draw(st.sampled_from(VALUES))
    q, k, v = (r.standard_normal((1, H, T, D)).astype(f32) for T in (Tq, Tk, Tk))
    if draw(st.booleans()):  # and one in the content
        x = (q, k, v)[draw(st.integers(0, 2))]
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(VALUES))
    return enc, q, k, v, qo, r.standard_normal((1, H, Tq, D)).astype(f32)


def encoding_bias(enc, Tq, Tk, qo):
    """The encoding's logit term from its float64 twin, (1, H, Tq, Tk)."""
    p = {n: x.data.astype(np.float64) for n, x in enc.named_parameters()}
    if enc.name == "fire":
        return ref.fire_bias(p["W1"], p["b1"], p["W2"], p["b2"], p["c"], p["L"], Tq, Tk, qo, enc.eps)
    d0 = qo - (Tk - 1)
    vec = ref.alibi_vec(p["slopes"], d0, Tq + Tk - 1, symmetric=bool(enc.symmetric))
    return ref.toeplitz_matrix(vec, Tq, Tk, qo)[None]


@pytest.mark.parametrize("name", ["fire", "alibi"])
def test_hostile_encoding_parameters(name):
    """F.attention with a hostile FIRE / ALiBi parameter (and maybe a hostile q, k or v): both kernels
    against the reference softmax over the content logits plus the encoding's float64 twin, output and
    the gradients of q, k, v."""
    @settings(max_examples=max(N_EXAMPLES // 2, 10), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        enc, q, k, v, qo, G = encoding_case(data.draw, name)
        Tq, Tk = q.shape[2], k.shape[2]
        bias = encoding_bias(enc, Tq, Tk, qo)
        kw = dict(q_offset=qo, bias_full=bias)
        want = ref.attention(q, k, v, f32=True, **kw)[0]
        wg = ref.attention_backward(q, k, v, G, f32=True, **kw)
        scale_out, sg = scales(q, k, v, G, kw)
        for impl in ("fused", "materialized"):
            ts = [relpos.Tensor(x, requires_grad=True) for x in (q, k, v)]
            out = F.attention(*ts, encoding=enc, q_offset=qo, impl=impl)
            agree(f"{impl} out", out.numpy(), want, scale_out)
            out.backward(G)
            for t, n in zip(ts, "qkv"):
                agree(f"{impl} d{n}", t.grad, wg[n], sg[n], rtol=2e-4)
    run()


# ---------------------------------------------------------------- the rules against torch

def torch_reference(q, k, v, mask, bias, dout):
    """torch with masked keys left out of each row (its softmax and autograd on the rest)."""
    torch = pytest.importorskip("torch")
    tq, tk, tv = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    B, H, Tq, D = q.shape
    rows = []
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                keep = np.flatnonzero(mask[b, h, i])
                if len(keep) == 0:
                    rows.append(torch.zeros(v.shape[-1], dtype=torch.float64))
                    continue
                s = tk[b, h, keep] @ tq[b, h, i] / np.sqrt(D) + torch.tensor(bias[b, h, i, keep])
                p = torch.softmax(s, dim=0)
                if bool(torch.all(s == -np.inf)):  # torch's SDPA: a row of -inf gives zeros
                    p = torch.zeros_like(s)
                rows.append(p @ tv[b, h, keep])
    out = torch.stack(rows).reshape(B, H, Tq, -1)
    out.backward(torch.tensor(dout, dtype=torch.float64))
    return out.detach().numpy(), {n: t.grad.numpy() for n, t in zip("qkv", (tq, tk, tv))}


TORCH_CASES = {
    "nan_q": ("q", (0, 0, 1, 0), np.nan), "nan_k": ("k", (0, 0, 1, 0), np.nan),
    "nan_v": ("v", (0, 0, 1, 0), np.nan), "nan_v_masked_key": ("v", (0, 0, 3, 0), np.nan),
    "inf_k": ("k", (0, 0, 1, 1), np.inf), "ninf_k": ("k", (0, 0, 0, 1), -np.inf),
    "inf_bias": ("bias", (0, 0, 2, 1), np.inf), "ninf_bias": ("bias", (0, 0, 2, 1), -np.inf),
    "nan_bias": ("bias", (0, 0, 2, 0), np.nan), "ninf_bias_then_nan_value": ("bias", (0, 0, 2, 1), -np.inf),
    "inf_v": ("v", (0, 0, 0, 1), np.inf), "huge_q": ("q", (0, 0, 2, 0), 1e30),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
@pytest.mark.parametrize("causal", [True, False])
def test_rules_match_torch(case, causal):
    """Small cases written with torch (masked keys left out of each row): every path gives torch's
    NaN positions and values, forward and backward; the float64 reference too."""
    pytest.importorskip("torch")
    r = np.random.default_rng(7)
    B, H, T, D = 1, 1, 4, 3
    q, k, v = (r.standard_normal((B, H, T, D)).astype(f32) for _ in range(3))
    bias = r.standard_normal((1, H, T, T)).astype(f32)
    pad = np.array([[False, False, True, False]])
    arrs = {"q": q, "k": k, "v": v, "bias": bias}
    name, idx, val = TORCH_CASES[case]
    arrs[name][idx] = val
    if case == "ninf_bias_then_nan_value":
        v[0, 0, 1, 2] = np.nan  # an unmasked key of weight 0 with a NaN value: 0 * NaN = NaN
    mask = np.ones((B, H, T, T), bool) & ~pad[:, None, None, :]
    if causal:
        mask &= np.tril(np.ones((T, T), bool))[None, None]
    dout = r.standard_normal((B, H, T, D)).astype(f32)
    t_out, t_grads = torch_reference(q, k, v, mask, bias.astype(np.float64), dout)
    kw = dict(causal=causal, key_padding_mask=pad, bias_full=bias)
    r_out = ref.attention(q, k, v, **kw)[0]
    r_grads = ref.attention_backward(q, k, v, dout, **kw)
    np.testing.assert_array_equal(np.isnan(r_out), np.isnan(t_out))
    for n in "qkv":
        np.testing.assert_array_equal(np.isnan(r_grads[n]), np.isnan(t_grads[n]), err_msg=n)
    for fwd, bwd in ((C.attention_fwd, C.attention_bwd), (C.attention_mat_fwd, C.attention_mat_bwd)):
        for mode in modes():
            out, lse = run_mode(mode, fwd, q, k, v, **kw)
            g = run_mode(mode, bwd, q, k, v, out, lse, dout, **kw)
            where = f"{fwd.__name__} {mode[0]}"
            np.testing.assert_array_equal(np.isnan(out), np.isnan(t_out), err_msg=where)
            fin = np.isfinite(t_out)
            np.testing.assert_allclose(out[fin], t_out[fin], rtol=1e-4, atol=1e-5, err_msg=where)
            np.testing.assert_array_equal(np.isinf(out), np.isinf(t_out), err_msg=where)
            for n in "qkv":
                np.testing.assert_array_equal(np.isnan(g[n]), np.isnan(t_grads[n]), err_msg=f"{where} d{n}")


def test_torch_sdpa_gives_zeros_for_a_fully_masked_row():
    """relpos keeps zeros for a row with every key masked; torch's SDPA (2.5+) does the same (the brief of
    issue 12 expected NaN there, which a plain softmax gives)."""
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(1)
    q, k, v = (torch.tensor(r.standard_normal((1, 1, 2, 4)), dtype=torch.float32) for _ in range(3))
    mask = torch.tensor([[True, True], [False, False]])
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.all(out[0, 0, 1] == 0)
    pad = np.array([[True, True]])
    for fwd in (C.attention_fwd, C.attention_mat_fwd):
        o, lse = fwd(q.numpy(), k.numpy(), v.numpy(), causal=False, key_padding_mask=pad)
        assert np.all(o == 0) and np.all(lse == -np.inf)
