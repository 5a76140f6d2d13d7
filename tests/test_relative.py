"""Channel C encodings (Shaw, Transformer-XL, DeBERTa) and CoPE.

The channel inputs an encoding returns are materialised with the rule of
csrc/core/attention.h (reference.channel_logits) and compared with each paper's
formula written plainly (reference.shaw_logits, xl_logits, deberta_logits);
CoPE's C kernel against its float64 twin, backward against finite differences."""
import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import relpos
from relpos import _C
from relpos import encodings as E

f32 = np.float32


def qk(rng, B=2, H=2, Tq=4, Tk=6, D=4):
    return (relpos.Tensor(rng.standard_normal((B, H, Tq, D)).astype(f32)),
            relpos.Tensor(rng.standard_normal((B, H, Tk, D)).astype(f32)))


def randomise(enc, rng, scale=0.5):
    for _, p in enc.named_parameters():
        p.data[...] = rng.standard_normal(p.shape).astype(f32) * scale
    return enc


def d64(t):
    return np.asarray(getattr(t, "data", t), dtype=np.float64)


# ---------------------------------------------------------------- channels reproduce the papers

@pytest.mark.parametrize("Tq,Tk,qo", [(4, 6, 2), (5, 5, 0), (2, 9, 7)])
@pytest.mark.parametrize("causal", [True, False])
def test_shaw_channels(rng, Tq, Tk, qo, causal):
    enc = randomise(E.get("shaw", n_heads=2, head_dim=4, k=2, values=True), rng)
    q, k = qk(rng, Tq=Tq, Tk=Tk)
    inp = enc.attention_inputs(q, k, qo, causal)
    want = ref.shaw_logits(d64(q), d64(k), d64(enc.wK)[0], 2, 0.5, qo)
    np.testing.assert_allclose(ref.channel_logits(q, k, inp, qo), want, rtol=1e-6, atol=1e-6)
    # values: relv rows picked by the index rule are w^V[clip(j - i) + k]
    ix = ref.relidx(*inp["relv_ix"], inp["relv"].shape[1], Tq, Tk, qo)
    np.testing.assert_array_equal(d64(inp["relv"])[0][ix], ref.shaw_values(d64(enc.wV)[0], 2, Tq, Tk, qo)[0, 0])
    assert "relv" not in E.get("shaw", n_heads=2, head_dim=4).attention_inputs(q, k, qo, causal)


@pytest.mark.parametrize("Tq,Tk,qo", [(4, 6, 2), (3, 3, 0), (1, 7, 6)])
def test_xl_channels(rng, Tq, Tk, qo):
    enc = randomise(E.get("xl", n_heads=2, head_dim=4, d_model=6), rng)
    q, k = qk(rng, Tq=Tq, Tk=Tk)
    inp = enc.attention_inputs(q, k, qo, True)
    want = ref.xl_logits(d64(q), d64(k), d64(enc.W_R), d64(enc.u), d64(enc.v), 0.5, qo)
    np.testing.assert_allclose(ref.channel_logits(q, k, inp, qo), want, rtol=1e-5, atol=1e-5)
    # bias_matrix is the position-only term v.W_R R_{i-j} / sqrt(D)
    zq = relpos.Tensor(np.zeros((1, 2, Tq, 4), f32))
    zk = relpos.Tensor(np.zeros((1, 2, Tk, 4), f32))
    np.testing.assert_allclose(enc.bias_matrix(Tq, Tk, qo),
                               ref.xl_logits(d64(zq), d64(zk), d64(enc.W_R), d64(enc.u), d64(enc.v), 0.5, qo)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("Tq,Tk,qo", [(4, 6, 2), (5, 5, 0), (3, 12, 9)])
@pytest.mark.parametrize("p2c", ["official", "paper"])
def test_deberta_channels(rng, Tq, Tk, qo, p2c):
    enc = randomise(E.get("deberta", n_heads=2, head_dim=4, k=3, p_dim=5, p2c=p2c), rng)
    q, k = qk(rng, Tq=Tq, Tk=Tk)
    inp = enc.attention_inputs(q, k, qo, False)
    assert inp["scale"] == pytest.approx(1 / math.sqrt(12))
    want = ref.deberta_logits(d64(q), d64(k), d64(enc.P), d64(enc.W_kr), d64(enc.W_qr), 3, qo, p2c=p2c)
    np.testing.assert_allclose(ref.channel_logits(q, k, inp, qo), want, rtol=1e-5, atol=1e-5)
    assert enc.bias_matrix(Tq, Tk, qo).shape == (2, Tq, Tk)


@pytest.mark.parametrize("Tq,Tk,qo", [(6, 40, 34), (30, 30, 0), (2, 9, 7)])
@pytest.mark.parametrize("p2c", ["official", "paper"])
def test_deberta_bucket_channels(rng, Tq, Tk, qo, p2c):
    # 8 buckets reaching the last one at distance 12: distances up to 39 cover every case
    enc = randomise(E.get("deberta", n_heads=2, head_dim=4, p_dim=5, p2c=p2c, position_buckets=8,
                          max_relative_positions=13), rng)
    assert enc.P.shape == (16, 5)
    q, k = qk(rng, Tq=Tq, Tk=Tk)
    inp = enc.attention_inputs(q, k, qo, False)
    want = ref.deberta_logits(d64(q), d64(k), d64(enc.P), d64(enc.W_kr), d64(enc.W_qr), None, qo, p2c=p2c,
                              buckets=8, max_position=13)
    np.testing.assert_allclose(ref.channel_logits(q, k, inp, qo), want, rtol=1e-5, atol=1e-5)


def test_deberta_p2c_worked_example():
    # Microsoft/DeBERTa issue #162, as in relpos issue 13: T=3, k=2, one channel,
    # P = [[0],[1],[2],[3]], Q^c = 0, K^c = 1, W_qr = 1: only the p2c term is left,
    # row 0's logits x sqrt(3) read P[δ(0, j)] = [2, 1, 0] (official) or P[δ(j, 0)] = [2, 3, 3] (paper)
    want = {"official": [[2, 1, 0], [3, 2, 1], [3, 3, 2]], "paper": [[2, 3, 3], [1, 2, 3], [0, 1, 2]]}
    for p2c, rows in want.items():
        enc = E.get("deberta", n_heads=1, head_dim=1, k=2, p_dim=1, p2c=p2c)
        enc.P.data[:] = np.arange(4, dtype=f32)[:, None]
        enc.W_qr.data[:] = 1.0
        enc.W_kr.data[:] = 0.5  # multiplies Q^c = 0: no effect
        q = relpos.Tensor(np.zeros((1, 1, 3, 1), f32))
        k = relpos.Tensor(np.ones((1, 1, 3, 1), f32))
        v = relpos.Tensor(np.eye(3, dtype=f32).reshape(1, 1, 3, 3)[..., :1].copy())
        np.testing.assert_allclose(ref.channel_logits(q, k, enc.attention_inputs(q, k, 0, False), 0)[0, 0] * math.sqrt(3),
                                   rows, atol=1e-6)
        # the same through the C kernel: its weights are the softmax of those logits / sqrt(3)
        _, w = relpos.functional.attention(q, k, v, encoding=enc, causal=False, return_weights=True)
        logits = np.array(rows, dtype=np.float64) / math.sqrt(3)
        np.testing.assert_allclose(w[0, 0], np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-5)


def test_deberta_log_buckets_by_hand():
    from relpos.encodings.relative import deberta_log_bucket
    # deberta-v3's 256 buckets up to 512: mid = 128; |d| <= 128 keeps d; past it
    # 128 + ceil(ln(|d|/128) / ln(511/128) * 127), worked out by hand:
    # d=129: ln(129/128)/ln(511/128)*127 = 0.714 -> 129; d=300: 78.1 -> 207; d=511: 127 -> 255;
    # d=600: 141.7 -> 270 (past max_relative_positions the buckets keep growing; the row clamps)
    d = np.array([0, 1, -5, 127, 128, 129, -129, 300, -300, 511, 600])
    np.testing.assert_array_equal(deberta_log_bucket(d, 256, 512),
                                  [0, 1, -5, 127, 128, 129, -129, 207, -207, 255, 270])
    enc = E.get("deberta", n_heads=1, head_dim=4, position_buckets=256, max_relative_positions=512)
    np.testing.assert_array_equal(enc.table_rows([0, -129, 511, 600, -10 ** 6]), [256, 127, 511, 511, 0])
    ds = np.arange(-700, 700)
    np.testing.assert_array_equal(deberta_log_bucket(ds, 16, 40),
                                  [ref.deberta_log_bucket_ref(int(x), 16, 40) for x in ds])
    # the buckets never decrease with the distance, and are odd in it
    b = deberta_log_bucket(ds, 256, 512)
    assert np.all(np.diff(b) >= 0)
    np.testing.assert_array_equal(deberta_log_bucket(-ds, 256, 512), -b)


def test_deberta_bucket_gradients(rng):
    enc = randomise(E.get("deberta", n_heads=2, head_dim=3, p_dim=4, position_buckets=4, max_relative_positions=6,
                          p2c="paper"), rng)
    q, k = qk(rng, Tq=5, Tk=9, D=3)
    inp = enc.attention_inputs(q, k, 4, True)
    Gk = rng.standard_normal(inp["relk"].shape)
    Gq = rng.standard_normal(inp["relq"].shape)
    inp["relk"].backward(Gk.astype(f32))
    inp["relq"].backward(Gq.astype(f32))
    d = np.arange(4 - 8, 4 - 8 + 13)
    rk, rq = enc.table_rows(d), enc.table_rows(-d)
    P, Wk, Wq = d64(enc.P), d64(enc.W_kr), d64(enc.W_qr)

    def loss(P, Wk, Wq):
        return (np.einsum("re,hed->hrd", P[rk], Wk) * Gk).sum() + (np.einsum("re,hed->hrd", P[rq], Wq) * Gq).sum()

    np.testing.assert_allclose(enc.P.grad, ref.numgrad(lambda x: loss(x, Wk, Wq), P), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.W_kr.grad, ref.numgrad(lambda x: loss(P, x, Wq), Wk), rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(Tq=st.integers(1, 5), Tk=st.integers(1, 5), c=st.integers(1, 30), which=st.sampled_from(["shaw", "xl", "deberta"]))
def test_relative_logits_depend_on_i_minus_j_only(Tq, Tk, c, which):
    rng = np.random.default_rng(c)
    enc = randomise(E.get(which, n_heads=2, head_dim=4, k=3, seed=0) if which != "xl"
                    else E.get("xl", n_heads=2, head_dim=4, seed=0), rng)
    q, k = qk(rng, B=1, Tq=Tq, Tk=Tk)
    pad = rng.standard_normal((1, 2, c, 4)).astype(f32)
    k2 = relpos.Tensor(np.concatenate([pad, k.data], axis=2))
    base = ref.channel_logits(q, k, enc.attention_inputs(q, k, 0, False), 0)
    shifted = ref.channel_logits(q, k2, enc.attention_inputs(q, k2, c, False), c)[..., c:]
    np.testing.assert_allclose(shifted, base, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients of the tables

def test_xl_table_gradients(rng):
    enc = randomise(E.get("xl", n_heads=2, head_dim=3, r_dim=4), rng)
    q, k = qk(rng, Tq=3, Tk=5, D=3)
    q.requires_grad = True
    inp = enc.attention_inputs(q, k, 2, True)
    d0, n = 2 - 4, 7
    R = ref.sinusoid_R(np.arange(d0, d0 + n), 4)
    G = rng.standard_normal(inp["relk"].shape)
    inp["relk"].backward(G.astype(f32))
    num = ref.numgrad(lambda W: (np.einsum("ne,hed->hnd", R, W) * G).sum(), d64(enc.W_R))
    np.testing.assert_allclose(enc.W_R.grad, num, rtol=1e-4, atol=1e-4)
    Gq = rng.standard_normal(q.shape).astype(f32)
    inp["q"].backward(Gq)
    inp["qr"].backward(2 * Gq)
    np.testing.assert_allclose(enc.u.grad, Gq.sum(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(enc.v.grad, 2 * Gq.sum(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(q.grad, 3 * Gq, rtol=1e-6)


def test_deberta_table_gradients(rng):
    enc = randomise(E.get("deberta", n_heads=2, head_dim=3, k=2, p_dim=4), rng)
    q, k = qk(rng, D=3)
    inp = enc.attention_inputs(q, k, 0, True)
    Gk = rng.standard_normal(inp["relk"].shape)
    Gq = rng.standard_normal(inp["relq"].shape)
    inp["relk"].backward(Gk.astype(f32))
    inp["relq"].backward(Gq.astype(f32))
    P, Wk, Wq = d64(enc.P), d64(enc.W_kr), d64(enc.W_qr)

    def loss(P, Wk, Wq):
        return (np.einsum("re,hed->hrd", P, Wk) * Gk).sum() + (np.einsum("re,hed->hrd", P, Wq) * Gq).sum()

    np.testing.assert_allclose(enc.P.grad, ref.numgrad(lambda x: loss(x, Wk, Wq), P), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.W_kr.grad, ref.numgrad(lambda x: loss(P, x, Wq), Wk), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.W_qr.grad, ref.numgrad(lambda x: loss(P, Wk, x), Wq), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- CoPE

@pytest.mark.parametrize("Tq,Tk,qo,P", [(3, 5, 2, 3), (4, 4, 0, 6), (2, 6, 5, 2)])
def test_cope_kernel(rng, Tq, Tk, qo, P):
    q = rng.standard_normal((1, 2, Tq, 3)).astype(f32)
    k = rng.standard_normal((1, 2, Tk, 3)).astype(f32)
    e = rng.standard_normal((P, 3)).astype(f32)
    out = _C.cope_fwd(q, k, e, qo, 0.7)
    np.testing.assert_allclose(out, ref.cope_bias(q, k, e, qo, 0.7), rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(out.shape).astype(f32)
    dq, dk, de = _C.cope_bwd(q, k, e, g, qo, 0.7)
    qd, kd, ed = (a.astype(np.float64) for a in (q, k, e))
    np.testing.assert_allclose(dq, ref.numgrad(lambda x: (ref.cope_bias(x, kd, ed, qo, 0.7) * g).sum(), qd),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dk, ref.numgrad(lambda x: (ref.cope_bias(qd, x, ed, qo, 0.7) * g).sum(), kd),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(de, ref.numgrad(lambda x: (ref.cope_bias(qd, kd, x, qo, 0.7) * g).sum(), ed),
                               rtol=1e-3, atol=1e-4)


def test_cope_encoding(rng):
    enc = randomise(E.get("cope", n_heads=2, head_dim=4, npos=5), rng)
    assert enc.materialized_only and enc.causal_only
    q, k = qk(rng, Tq=3, Tk=6)
    q.requires_grad = True
    k.requires_grad = True
    bf = enc.attention_inputs(q, k, 3, True)["bias_full"]
    np.testing.assert_allclose(bf.data, ref.cope_bias(q.data, k.data, enc.e.data, 3, 0.5), rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(bf.shape).astype(f32)
    bf.backward(g)
    dq, dk, de = _C.cope_bwd(q.data, k.data, enc.e.data, g, 3, 0.5)
    np.testing.assert_array_equal(q.grad, dq)
    np.testing.assert_array_equal(k.grad, dk)
    np.testing.assert_array_equal(enc.e.grad, de)
    assert not np.any(E.get("cope", n_heads=2, head_dim=4).e.data)  # zero init, as in the authors' code


def test_cope_zero_sizes():
    e = np.ones((3, 2), f32)
    assert _C.cope_fwd(np.ones((1, 1, 0, 2), f32), np.ones((1, 1, 4, 2), f32), e).shape == (1, 1, 0, 4)
    dq, dk, de = _C.cope_bwd(np.ones((1, 1, 2, 2), f32), np.ones((1, 1, 0, 2), f32), e, np.ones((1, 1, 2, 0), f32))
    assert dq.shape == (1, 1, 2, 2) and not dq.any() and not de.any()


# ---------------------------------------------------------------- bad inputs

def test_bad_relative_options(rng):
    with pytest.raises(ValueError, match="head_dim"):
        E.get("shaw", n_heads=2)
    with pytest.raises(ValueError, match="unknown option"):
        E.get("shaw", n_heads=2, head_dim=4, clip=3)
    with pytest.raises(ValueError, match="r_dim"):
        E.get("xl", n_heads=2, head_dim=4, r_dim=5)
    with pytest.raises(ValueError, match="k must"):
        E.get("deberta", n_heads=2, head_dim=4, k=0)
    with pytest.raises(ValueError, match="p2c must be 'official'"):
        E.get("deberta", n_heads=2, head_dim=4, p2c="hf")
    with pytest.raises(ValueError, match="either k"):
        E.get("deberta", n_heads=2, head_dim=4, k=4, position_buckets=8)
    with pytest.raises(ValueError, match="used with position_buckets"):
        E.get("deberta", n_heads=2, head_dim=4, max_relative_positions=64)
    with pytest.raises(ValueError, match="max_relative_positions must be >"):
        E.get("deberta", n_heads=2, head_dim=4, position_buckets=8, max_relative_positions=5)
    with pytest.raises(ValueError, match="position_buckets must be"):
        E.get("deberta", n_heads=2, head_dim=4, position_buckets=1)
    with pytest.raises(ValueError, match="npos"):
        E.get("cope", n_heads=2, head_dim=4, npos=0)
    q, k = qk(rng)
    with pytest.raises(ValueError, match="causal"):
        E.get("cope", n_heads=2, head_dim=4).attention_inputs(q, k, 0, causal=False)
    with pytest.raises(ValueError, match="n_heads=3"):
        E.get("shaw", n_heads=3, head_dim=4).attention_inputs(q, k)
    with pytest.raises(ValueError, match="head_dim=8"):
        E.get("deberta", n_heads=2, head_dim=8).attention_inputs(q, k)


def test_bad_cope_kernel_inputs():
    q = np.ones((1, 2, 3, 4), f32)
    k = np.ones((1, 2, 5, 4), f32)
    e = np.ones((6, 4), f32)
    with pytest.raises(ValueError, match="e must have shape"):
        _C.cope_fwd(q, k, np.ones((6, 3), f32))
    with pytest.raises(ValueError, match="k must have shape"):
        _C.cope_fwd(q, np.ones((1, 3, 5, 4), f32), e)
    with pytest.raises(ValueError, match="npos >= 1"):
        _C.cope_fwd(q, k, np.ones((0, 4), f32))
    with pytest.raises(TypeError, match="q must have dtype float32"):
        _C.cope_fwd(q.astype(np.float64), k, e)
    with pytest.raises(ValueError, match="grad"):
        _C.cope_bwd(q, k, e, np.ones((1, 2, 3, 4), f32))
    with pytest.raises(ValueError, match="q_offset"):
        _C.cope_fwd(q, k, e, -2)


# ---------------------------------------------------------------- end to end through attention_core

from test_bias import run_e2e  # noqa: E402

QO = 2
REL_CASES = {
    "shaw": (dict(k=2, values=True),
             lambda enc: (lambda p, q, k: ref.shaw_logits(q, k, p["wK"][0], 2, 1 / np.sqrt(q.shape[-1]), QO)),
             lambda enc: (lambda p: ref.shaw_values(p["wV"][0], 2, 3, 5, QO))),
    "xl": (dict(r_dim=4),
           lambda enc: (lambda p, q, k: ref.xl_logits(q, k, p["W_R"], p["u"], p["v"], 1 / np.sqrt(q.shape[-1]), QO)),
           None),
    "deberta": (dict(k=2, p_dim=4),
                lambda enc: (lambda p, q, k: ref.deberta_logits(q, k, p["P"], p["W_kr"], p["W_qr"], 2, QO)),
                None),
    "deberta_buckets": (dict(position_buckets=4, max_relative_positions=5, p2c="paper", p_dim=4),
                        lambda enc: (lambda p, q, k: ref.deberta_logits(q, k, p["P"], p["W_kr"], p["W_qr"], None, QO,
                                                                        p2c="paper", buckets=4, max_position=5)),
                        None),
    "cope": (dict(npos=3),
             lambda enc: (lambda p, q, k: q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
                          + ref.cope_bias(q, k, p["e"], QO, 1 / np.sqrt(q.shape[-1]))),
             None),
}


@pytest.mark.parametrize("case", sorted(REL_CASES))
@pytest.mark.parametrize("causal,pad,impl", [(True, False, "materialized"), (False, True, "materialized"),
                                             (True, True, "fused"), (False, False, "fused")])
def test_relative_attention_end_to_end(case, causal, pad, impl):
    opts, make, extra = REL_CASES[case]
    enc = E.get(case.split("_")[0], n_heads=2, head_dim=3, seed=4, **opts)
    randomise(enc, np.random.default_rng(8))
    if case == "cope":
        if not causal:
            with pytest.raises(ValueError, match="causal"):
                run_e2e(enc, make(enc), causal=False)
            return
        if impl == "fused":
            with pytest.raises(ValueError, match="materialized"):
                run_e2e(enc, make(enc), impl="fused")
            return
    run_e2e(enc, make(enc), qo=QO, causal=causal, pad=pad, impl=impl,
            extra_v=extra(enc) if extra else None)


def test_cope_auto_runs_materialised(rng):
    enc = randomise(E.get("cope", n_heads=2, head_dim=3, npos=4), rng)
    q, k, v = (relpos.Tensor(rng.standard_normal((1, 2, 4, 3)).astype(f32)) for _ in range(3))
    out, w = relpos.functional.attention(q, k, v, encoding=enc, return_weights=True)
    logits = (ref.channel_logits(q, k, {}, 0)
              + ref.cope_bias(q.data, k.data, enc.e.data, 0, 1 / np.sqrt(3)))
    want_out, want_w = ref.softmax_attention(logits, v.data.astype(np.float64), True, 0)
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.data, want_out, rtol=1e-5, atol=1e-6)


# every registered bias and relative-content encoding (channels B and C)
EMPTY_CASES = [(r["name"], {}) for r in E.available() if set(r["channel"]) & {"B", "C"}] + [("shaw", {"values": True})]


@pytest.mark.parametrize("name,opts", EMPTY_CASES)
def test_empty_windows(name, opts):
    enc = E.get(name, n_heads=2, head_dim=3, **opts)
    for Tq, Tk, qo in [(0, 3, 0), (2, 0, 0), (0, 0, 0), (0, 0, 4)]:
        q = relpos.Tensor(np.ones((1, 2, Tq, 3), f32), requires_grad=True)
        k = relpos.Tensor(np.ones((1, 2, Tk, 3), f32), requires_grad=True)
        v = relpos.Tensor(np.ones((1, 2, Tk, 3), f32), requires_grad=True)
        out = relpos.functional.attention(q, k, v, encoding=enc, q_offset=qo, impl="materialized")
        assert out.shape == (1, 2, Tq, 3)
        out.backward(np.ones(out.shape, f32))
        assert q.grad.shape == q.shape and not np.any(q.grad)


def test_tables_bit_identical_across_threads(rng, threads):
    q, k = qk(rng, B=1, H=2, Tq=200, Tk=300, D=8)
    for name, opts in (("xl", {}), ("deberta", {"k": 150})):
        enc = randomise(E.get(name, n_heads=2, head_dim=8, d_model=64, **opts), rng)

        def run():
            enc.zero_grad()
            inp = enc.attention_inputs(q, k, 50, True)
            inp["relk"].backward(np.ones(inp["relk"].shape, f32))
            return [inp["relk"].data.copy()] + [p.grad.copy() for _, p in enc.named_parameters()
                                                if p.grad is not None]

        for a, b in zip(threads(1, run), threads(2, run)):
            np.testing.assert_array_equal(a, b)
