"""Fused (FlashAttention-2 style) attention: relpos._C.attention_fwd / attention_bwd.

Checked against
  * a float64 materialised reference (forward: tests/reference.attention; backward:
    ``ref_grads`` below, itself checked against central finite differences),
  * the materialised float32 kernel (_C.attention_mat_fwd / _bwd),
for every channel alone and combined, causal and bidirectional, padding,
q_offset, sizes that are not multiples of the 64-row tile, T = 1, head dims
16/32/64/128, extreme logits and fully masked rows; and bit-identical results
for 1 and 2 threads.

Tolerance (float32): max |fused - ref| <= TOL * max(1, max |ref|) per array,
TOL = 5e-5 (float32 eps is 1.2e-7; sums run over up to ~150 keys and D <= 128).
"""
import numpy as np
import pytest

from relpos import _C
from tests import reference as R

TOL = 5e-5
GRAD_NAMES = ("q", "k", "v", "qr", "relk", "relq", "relv", "bias_vec", "bias_full", "pwl_u", "pwl_w", "pwl_slope",
              "pwl_icpt")


# ----------------------------------------------------------------- reference

def ref_grads(q, k, v, dout, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
              qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None, relv=None, relv_ix=None,
              bias_vec=None, bias_ix=None, bias_full=None, **pwl):
    """Float64 gradients of reference.attention's out for the cotangent dout
    (B, H, Tq, Dv), materialised: dP = dO (v + relv[idx])^T, dS = P (dP - rowsum(P dP)).
    Returns {name: gradient} for every tensor given. With the piecewise-linear
    channel (pwl_u, ...): reference.attention_backward (checked against finite
    differences in tests/test_attention.py)."""
    if pwl:
        return R.attention_backward(q, k, v, dout, causal=causal, key_padding_mask=key_padding_mask,
                                    q_offset=q_offset, scale=scale, qr=qr, relk=relk, relk_ix=relk_ix, relq=relq,
                                    relq_ix=relq_ix, relv=relv, relv_ix=relv_ix, bias_vec=bias_vec, bias_ix=bias_ix,
                                    bias_full=bias_full, **pwl)
    f64 = lambda x: None if x is None else np.asarray(x, dtype=np.float64)  # noqa: E731
    q, k, v, dout, qr = f64(q), f64(k), f64(v), f64(dout), f64(qr)
    relk, relq, relv, bias_vec, bias_full = f64(relk), f64(relq), f64(relv), f64(bias_vec), f64(bias_full)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(D) if D > 0 else 1.0
    _, _, P = R.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, q_offset=q_offset,
                          scale=scale, qr=qr, relk=relk, relk_ix=relk_ix, relq=relq, relq_ix=relq_ix,
                          relv=relv, relv_ix=relv_ix, bias_vec=bias_vec, bias_ix=bias_ix,
                          bias_full=bias_full)
    g = {"q": None, "k": None, "v": None}
    dP = np.einsum("bhid,bhjd->bhij", dout, v)
    g["v"] = np.einsum("bhij,bhid->bhjd", P, dout)
    if relv is not None:
        idx = R.attention_relidx(relv_ix, relv.shape[1], Tq, Tk, q_offset)
        tab = np.broadcast_to(relv, (H,) + relv.shape[1:])[:, idx, :]          # (H, Tq, Tk, Dv)
        dP = dP + np.einsum("bhid,hijd->bhij", dout, tab)
        contrib = np.einsum("bhij,bhid->hijd", P, dout)                        # (H, Tq, Tk, Dv)
        d = np.zeros((H,) + relv.shape[1:])
        for h in range(H):
            np.add.at(d[h], idx, contrib[h])
        g["relv"] = d.sum(0, keepdims=True) if relv.shape[0] == 1 else d
    dS = P * (dP - (P * dP).sum(-1, keepdims=True))
    if bias_vec is not None:
        idx = R.attention_relidx(bias_ix, bias_vec.shape[1], Tq, Tk, q_offset)
        d = np.zeros((H, bias_vec.shape[1]))
        for h in range(H):
            np.add.at(d[h], idx, dS[:, h].sum(0))
        g["bias_vec"] = d.sum(0, keepdims=True) if bias_vec.shape[0] == 1 else d
    if bias_full is not None:
        g["bias_full"] = dS.sum(0, keepdims=True) if bias_full.shape[0] == 1 else dS
    dSs = scale * dS
    g["q"] = np.einsum("bhij,bhjd->bhid", dSs, k)
    g["k"] = np.einsum("bhij,bhid->bhjd", dSs, q)
    if relk is not None:
        idx = R.attention_relidx(relk_ix, relk.shape[1], Tq, Tk, q_offset)
        tab = np.broadcast_to(relk, (H,) + relk.shape[1:])[:, idx, :]
        dqq = np.einsum("bhij,hijd->bhid", dSs, tab)
        if qr is None:
            g["q"] = g["q"] + dqq
        else:
            g["qr"] = dqq
        qq = q if qr is None else qr
        contrib = np.einsum("bhij,bhid->hijd", dSs, qq)
        d = np.zeros((H,) + relk.shape[1:])
        for h in range(H):
            np.add.at(d[h], idx, contrib[h])
        g["relk"] = d.sum(0, keepdims=True) if relk.shape[0] == 1 else d
    elif qr is not None:
        g["qr"] = np.zeros_like(qr)
    if relq is not None:
        idx = R.attention_relidx(relq_ix, relq.shape[1], Tq, Tk, q_offset)
        tab = np.broadcast_to(relq, (H,) + relq.shape[1:])[:, idx, :]
        g["k"] = g["k"] + np.einsum("bhij,hijd->bhjd", dSs, tab)
        contrib = np.einsum("bhij,bhjd->hijd", dSs, k)
        d = np.zeros((H,) + relq.shape[1:])
        for h in range(H):
            np.add.at(d[h], idx, contrib[h])
        g["relq"] = d.sum(0, keepdims=True) if relq.shape[0] == 1 else d
    return {n: x for n, x in g.items() if x is not None}


# ------------------------------------------------------------------- helpers

def make_case(rng, *, B=2, H=2, Tq=70, Tk=None, D=16, Dv=None, q_offset=0, channels=(),
              padding=False, shared=False):
    """Random inputs and keyword arguments with the listed channels:
    'c2p' (relk with its own qr), 'c2p_q' (relk on q), 'p2c', 'relv', 'bias_vec',
    'bias_full', 'bias_full_b' (per-batch bias_full), 'pwl' (FIRE's channel, 6 segments)."""
    Tk = Tq + q_offset if Tk is None else Tk
    Dv = D if Dv is None else Dv
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    q, k, v = f(B, H, Tq, D), f(B, H, Tk, D), f(B, H, Tk, Dv)
    Hr = 1 if shared else H
    kw = {"q_offset": q_offset}
    if "c2p" in channels:
        kw.update(qr=f(B, H, Tq, D), relk=0.5 * f(Hr, 9, D), relk_ix=(-1, 4))       # Shaw keys, clip 4
    if "c2p_q" in channels:
        kw.update(relk=0.5 * f(Hr, 10, D), relk_ix=(1, 5))                          # DeBERTa c2p, k 5
    if "p2c" in channels:
        kw.update(relq=0.5 * f(Hr, 10, D), relq_ix=(-1, 5))                         # DeBERTa p2c
    if "relv" in channels:
        kw.update(relv=f(Hr, 7, Dv), relv_ix=(-1, 3))
    if "bias_vec" in channels:
        kw.update(bias_vec=f(Hr, Tq + Tk - 1), bias_ix=(1, Tk - 1 - q_offset))      # full Toeplitz
    if "bias_full" in channels:
        kw.update(bias_full=f(1, H, Tq, Tk))
    if "bias_full_b" in channels:
        kw.update(bias_full=f(B, H, Tq, Tk))
    if "pwl" in channels:
        kw.update(pwl_u=np.abs(f(Tq + Tk - 1)), pwl_ix=(1, Tk - 1 - q_offset), pwl_w=np.abs(f(Tq)) + 0.2,
                  pwl_bp=np.sort(f(5)), pwl_slope=f(Hr, 6), pwl_icpt=f(Hr, 6))
    if padding:
        m = rng.random((B, Tk)) < 0.25
        m[:, -1] = False  # at least one key of every batch visible
        kw["key_padding_mask"] = m
    return q, k, v, kw


def close(name, got, want, tol=TOL):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.all(np.isfinite(got) == np.isfinite(want)), f"{name}: finiteness differs"
    fin = np.isfinite(want)
    if not fin.any():
        assert np.array_equal(got, want), name
        return
    assert np.array_equal(got[~fin], want[~fin]), f"{name}: infinities differ"
    err = np.abs(got[fin] - want[fin]).max()
    lim = tol * max(1.0, np.abs(want[fin]).max())
    assert err <= lim, f"{name}: max error {err:.3g} > {lim:.3g}"


def run_fused(q, k, v, dout, kw):
    out, lse = _C.attention_fwd(q, k, v, **kw)
    grads = _C.attention_bwd(q, k, v, out, lse, dout, **kw)
    return out, lse, grads


def check_against_reference(q, k, v, kw, rng, tol=TOL):
    out, lse = _C.attention_fwd(q, k, v, **kw)
    rout, rlse, _ = R.attention(q, k, v, **kw)
    close("out", out, rout, tol)
    close("lse", lse, rlse, tol)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = _C.attention_bwd(q, k, v, out, lse, dout, **kw)
    rg = ref_grads(q, k, v, dout, **kw)
    assert set(grads) == set(rg)
    for n in rg:
        close("d" + n, grads[n], rg[n], tol)
    return out, lse, dout, grads


CHANNEL_SETS = [
    (), ("c2p",), ("c2p_q",), ("p2c",), ("relv",), ("bias_vec",), ("bias_full",), ("bias_full_b",), ("pwl",),
    ("c2p", "p2c", "relv", "bias_vec", "bias_full"),
    ("c2p_q", "p2c", "relv", "bias_vec", "bias_full_b", "pwl"),
]


# --------------------------------------------------------------------- tests

def test_reference_grads_match_numgrad():
    """The float64 backward used below is itself right: central differences of
    reference.attention for a tiny case with every channel, padding and q_offset."""
    rng = np.random.default_rng(1)
    q, k, v, kw = make_case(rng, B=2, H=2, Tq=3, Tk=5, D=3, q_offset=2,
                            channels=("c2p", "p2c", "relv", "bias_vec", "bias_full"), padding=True,
                            shared=True)
    kw["key_padding_mask"] = np.array([[False, True, False, False, False], [False] * 5])
    dout = rng.standard_normal((2, 2, 3, 3))
    args = {"q": q, "k": k, "v": v, **{n: kw[n] for n in GRAD_NAMES[3:] if n in kw}}
    rest = {n: x for n, x in kw.items() if n not in args}
    g = ref_grads(dout=dout, **{n: x.astype(np.float64) for n, x in args.items()}, **rest)
    for name in args:
        def f(x, name=name):
            a = {n: (x if n == name else y.astype(np.float64)) for n, y in args.items()}
            return float((R.attention(**a, **rest)[0] * dout).sum())
        ng = R.numgrad(f, args[name].astype(np.float64))
        np.testing.assert_allclose(g[name], ng, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("channels", CHANNEL_SETS, ids=lambda c: "+".join(c) or "plain")
def test_channels_vs_reference(channels, causal, rng):
    q, k, v, kw = make_case(rng, Tq=70, Tk=90, q_offset=20, channels=channels)
    kw["causal"] = causal
    check_against_reference(q, k, v, kw, rng)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("channels", CHANNEL_SETS, ids=lambda c: "+".join(c) or "plain")
def test_channels_vs_materialised(channels, causal, rng):
    q, k, v, kw = make_case(rng, Tq=130, Tk=130, channels=channels, padding=True, shared=True)
    kw["causal"] = causal
    out, lse = _C.attention_fwd(q, k, v, **kw)
    mout, mlse = _C.attention_mat_fwd(q, k, v, **kw)
    close("out", out, mout)
    close("lse", lse, mlse)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    g = _C.attention_bwd(q, k, v, out, lse, dout, **kw)
    gm = _C.attention_mat_bwd(q, k, v, mout, mlse, dout, **kw)
    assert set(g) == set(gm)
    for n in g:
        close("d" + n, g[n], gm[n])


@pytest.mark.parametrize("Tq,Tk,q_offset", [(1, 1, 0), (1, 65, 64), (65, 65, 0), (64, 64, 0), (129, 200, 71),
                                            (7, 3, 0), (33, 100, 5)])
@pytest.mark.parametrize("causal", [True, False])
def test_shapes_and_offsets(Tq, Tk, q_offset, causal, rng):
    q, k, v, kw = make_case(rng, B=1, H=2, Tq=Tq, Tk=Tk, q_offset=q_offset,
                            channels=("c2p", "p2c", "relv", "bias_vec"), padding=Tk > 1)
    kw["causal"] = causal
    check_against_reference(q, k, v, kw, rng)


@pytest.mark.parametrize("D", [5, 13, 16, 32, 64, 128])  # 5, 13: the ragged edges of the 8 x 8 tile transpose
def test_head_dims(D, rng):
    q, k, v, kw = make_case(rng, B=1, H=2, Tq=67, Tk=67, D=D, channels=("c2p_q", "p2c", "relv", "bias_vec"),
                            padding=True)
    check_against_reference(q, k, v, kw, rng)


@pytest.mark.parametrize("qr", [True, False])
def test_single_head_key_chunks(qr, rng):
    """B*H = 1: the backward deals key blocks to chunks with dq/dqr partials."""
    q, k, v, kw = make_case(rng, B=1, H=1, Tq=150, Tk=330, q_offset=180,
                            channels=("c2p" if qr else "c2p_q", "p2c", "relv", "bias_vec"), padding=True)
    check_against_reference(q, k, v, kw, rng)


def test_dv_differs_from_d(rng):
    q, k, v, kw = make_case(rng, B=1, H=2, Tq=40, Tk=75, D=24, Dv=40, q_offset=35, channels=("relv", "c2p"))
    check_against_reference(q, k, v, kw, rng)


def _kernels():
    """Tile-product kernels this machine can run (they follow _C.gemm_kernel)."""
    names = ["portable"]
    if _C.config()["simd"] != "portable":
        names.append("avx2")
        try:
            _C.gemm_kernel("avx512")
            names.append("avx512")
        except Exception:  # CPU or build without AVX-512: not available here
            pass
        finally:
            _C.gemm_kernel("auto")
    return names


@pytest.mark.parametrize("kernel", _kernels())
def test_every_kernel_path(kernel, rng):
    """Portable, AVX2 and (where the CPU has it) AVX-512 tile products, D not a
    multiple of the vector width."""
    q, k, v, kw = make_case(rng, B=1, H=2, Tq=77, Tk=77, D=20, channels=("c2p", "p2c", "relv", "bias_vec"),
                            padding=True)
    if kernel == "portable":
        _C.force_portable(True)
    else:
        _C.gemm_kernel(kernel)
    try:
        check_against_reference(q, k, v, kw, rng)
    finally:
        _C.force_portable(False)
        _C.gemm_kernel("auto")


@pytest.mark.parametrize("kernel", _kernels())
@pytest.mark.parametrize("Tq,Tk,q_offset", [(64, 64, 0), (130, 130, 0), (37, 100, 63), (100, 37, 0), (200, 230, 30)])
def test_causal_skips_exactly_the_masked_work(kernel, Tq, Tk, q_offset, rng):
    """Causal tiles compute only the visible pairs (row blocks of the diagonal tiles).
    The same call made bidirectional, with the causal mask given as a -inf bias_full,
    computes every pair of every tile: the outputs and gradients must be the same bits,
    so the skipped work was exactly the masked work (0 terms) and nothing else."""
    q, k, v, kw = make_case(rng, B=2, H=2, Tq=Tq, Tk=Tk, D=20, Dv=17, q_offset=q_offset,
                            channels=("c2p", "p2c", "relv", "bias_vec"))
    kw["q_offset"] = q_offset
    ia = q_offset + np.arange(Tq)[:, None]
    mask = np.where(np.arange(Tk)[None, :] > ia, -np.inf, 0.0).astype(np.float32)
    dout = rng.standard_normal((2, 2, Tq, 17)).astype(np.float32)
    needs = ["q", "k", "v", "qr", "relk", "relq", "relv", "bias_vec"]  # not bias_full: its gradient scales dS later
    if kernel == "portable":
        _C.force_portable(True)
    else:
        _C.gemm_kernel(kernel)
    try:
        o1, l1 = _C.attention_fwd(q, k, v, **dict(kw, causal=True))
        g1 = _C.attention_bwd(q, k, v, o1, l1, dout, needs=needs, **dict(kw, causal=True))
        kw2 = dict(kw, causal=False, bias_full=np.broadcast_to(mask, (1, 2, Tq, Tk)).copy())
        o2, l2 = _C.attention_fwd(q, k, v, **kw2)
        g2 = _C.attention_bwd(q, k, v, o2, l2, dout, needs=needs, **kw2)
    finally:
        _C.force_portable(False)
        _C.gemm_kernel("auto")
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(l1, l2)
    for n in needs:
        np.testing.assert_array_equal(g1[n], g2[n], err_msg=n)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("case", ["per_head", "shared_tables", "batch_shared_bias_full", "single_head"])
def test_bit_identical_threads(case, portable, threads, rng):
    """1 and 2 threads give the same bits, including the table reductions and,
    with few heads, the per-chunk dq partials of the backward."""
    chans = ("c2p", "p2c", "relv", "bias_vec", "bias_full_b")
    if case == "batch_shared_bias_full":
        chans = ("c2p", "p2c", "relv", "bias_vec", "bias_full")
    B, H = (1, 1) if case == "single_head" else (2, 3)
    q, k, v, kw = make_case(rng, B=B, H=H, Tq=100, Tk=300, q_offset=200, channels=chans, padding=True,
                            shared=case not in ("per_head", "single_head"))
    dout = rng.standard_normal((B, H, 100, 16)).astype(np.float32)
    _C.force_portable(portable)
    try:
        r1 = threads(1, run_fused, q, k, v, dout, kw)
        r2 = threads(2, run_fused, q, k, v, dout, kw)
    finally:
        _C.force_portable(False)
    assert np.array_equal(r1[0], r2[0]) and np.array_equal(r1[1], r2[1])
    assert set(r1[2]) == set(r2[2]) == {"q", "k", "v", "qr", "relk", "relq", "relv", "bias_vec", "bias_full"}
    for n in r1[2]:
        assert np.array_equal(r1[2][n], r2[2][n]), n


def test_extreme_logits_finite(rng):
    """Logits near +-1e4 before scaling stay finite and match float64."""
    q, k, v, kw = make_case(rng, B=1, H=2, Tq=70, Tk=70, D=16, channels=("bias_vec",))
    q = (q / np.linalg.norm(q, axis=-1, keepdims=True) * 100).astype(np.float32)
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True) * 100).astype(np.float32)   # |q.k| <= 1e4
    kw["scale"] = 1.0
    kw["bias_vec"] = (kw["bias_vec"] * 1e3).astype(np.float32)
    out, lse = _C.attention_fwd(q, k, v, **kw)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert np.abs(lse).max() > 1e3
    rout, rlse, _ = R.attention(q, k, v, **kw)
    close("out", out, rout, 1e-4)
    # logits ~ 1e4: float32 accuracy relative to the largest lse
    close("lse", lse, rlse, 1e-6)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    g = _C.attention_bwd(q, k, v, out, lse, dout, **kw)
    for n, x in g.items():
        assert np.isfinite(x).all(), n
    # near one-hot rows: dv is well conditioned
    close("dv", g["v"], ref_grads(q, k, v, dout, **kw)["v"], 1e-4)


def test_fully_masked_rows(rng):
    """Rows with no visible key: out = 0, lse = -inf, zero gradients, no NaN."""
    q, k, v, kw = make_case(rng, B=2, H=2, Tq=70, Tk=70, channels=("c2p", "p2c", "relv", "bias_vec", "bias_full"))
    m = np.zeros((2, 70), dtype=bool)
    m[0, :] = True          # batch 0: every key is padding
    m[1, :5] = True         # batch 1, causal: rows 0..4 see only padding
    kw["key_padding_mask"] = m
    kw["causal"] = True
    out, lse, dout, g = check_against_reference(q, k, v, kw, rng)
    assert np.all(out[0] == 0) and np.all(lse[0] == -np.inf)
    assert np.all(out[1, :, :5] == 0) and np.all(lse[1, :, :5] == -np.inf)
    assert np.isfinite(lse[1, :, 5:]).all()
    for n, x in g.items():
        assert np.isfinite(x).all(), n
    assert np.all(g["q"][0] == 0) and np.all(g["k"][0] == 0) and np.all(g["v"][0] == 0)
    assert np.all(g["q"][1, :, :5] == 0) and np.all(g["k"][1, :, :5] == 0)


@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (1, 0, 5, 5), (1, 2, 0, 5), (1, 2, 5, 0)])
def test_zero_size(shape):
    B, H, Tq, Tk = shape
    q = np.ones((B, H, Tq, 8), np.float32)
    k = np.ones((B, H, Tk, 8), np.float32)
    v = np.ones((B, H, Tk, 8), np.float32)
    out, lse = _C.attention_fwd(q, k, v, causal=False)
    assert out.shape == (B, H, Tq, 8) and lse.shape == (B, H, Tq)
    assert np.all(out == 0) and np.all(lse == -np.inf)
    g = _C.attention_bwd(q, k, v, out, lse, np.ones_like(out), causal=False)
    assert g["q"].shape == q.shape and np.all(g["q"] == 0) and np.all(g["k"] == 0)


@pytest.mark.parametrize("D,Dv", [(0, 4), (4, 0), (0, 0)])
def test_zero_head_dims(D, Dv):
    """D = 0 gives uniform weights over the visible keys (logits 0); Dv = 0 an empty output."""
    q = np.ones((1, 2, 5, D), np.float32)
    k = np.ones((1, 2, 70, D), np.float32)
    v = np.arange(140 * Dv, dtype=np.float32).reshape(1, 2, 70, Dv)
    out, lse = _C.attention_fwd(q, k, v, causal=True, q_offset=65)
    rout, rlse, _ = R.attention(q, k, v, causal=True, q_offset=65)
    close("out", out, rout)
    close("lse", lse, rlse)
    g = _C.attention_bwd(q, k, v, out, lse, np.ones_like(out), causal=True, q_offset=65)
    rg = ref_grads(q, k, v, np.ones(out.shape), causal=True, q_offset=65)
    for n in rg:
        close("d" + n, g[n], rg[n])


def test_needs_subset_and_inputs_untouched(rng):
    q, k, v, kw = make_case(rng, B=1, H=2, Tq=70, Tk=70, channels=("c2p", "bias_vec"))
    copies = [x.copy() for x in (q, k, v, kw["qr"], kw["relk"], kw["bias_vec"])]
    out, lse = _C.attention_fwd(q, k, v, **kw)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    full = _C.attention_bwd(q, k, v, out, lse, dout, **kw)
    part = _C.attention_bwd(q, k, v, out, lse, dout, needs=("relk", "v"), **kw)
    assert set(part) == {"relk", "v"}
    assert np.array_equal(part["relk"], full["relk"]) and np.array_equal(part["v"], full["v"])
    for a, b in zip(copies, (q, k, v, kw["qr"], kw["relk"], kw["bias_vec"])):
        assert np.array_equal(a, b)


def test_bad_inputs_raise(rng):
    q = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="k"):
        _C.attention_fwd(q, q[:, :1], q)
    with pytest.raises(TypeError):
        _C.attention_fwd(q.astype(np.float64), q, q)
    with pytest.raises(TypeError):
        _C.attention_fwd(q, q, q, return_weights=True)  # the fused path has no weights


def test_hypothesis_vs_materialised():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=25, deadline=None)
    @hyp.given(Tq=st.integers(1, 80), extra=st.integers(0, 70), D=st.sampled_from([4, 8, 13]),
               causal=st.booleans(), seed=st.integers(0, 2**31 - 1), chans=st.sets(
                   st.sampled_from(["c2p", "p2c", "relv", "bias_vec", "bias_full"])),
               pad=st.booleans())
    def prop(Tq, extra, D, causal, seed, chans, pad):
        rng = np.random.default_rng(seed)
        q, k, v, kw = make_case(rng, B=2, H=2, Tq=Tq, Tk=Tq + extra, D=D, q_offset=extra,
                                channels=tuple(sorted(chans)), padding=pad, shared=bool(seed % 2))
        kw["causal"] = causal
        out, lse = _C.attention_fwd(q, k, v, **kw)
        mout, mlse = _C.attention_mat_fwd(q, k, v, **kw)
        close("out", out, mout)
        close("lse", lse, mlse)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        g = _C.attention_bwd(q, k, v, out, lse, dout, **kw)
        gm = _C.attention_mat_bwd(q, k, v, mout, mlse, dout, **kw)
        for n in gm:
            close("d" + n, g[n], gm[n])

    prop()
