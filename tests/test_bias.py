"""Channel B encodings: ALiBi, T5 buckets, KERPLE, Sandwich, learned bias, FIRE.

Each encoding's bias(d) against its float64 twin in tests/reference.py (bias
section) and its parameter gradients against central finite differences of the
twin; Sandwich's C table; FIRE through the attention kernels' piecewise-linear
channel (fused = materialised = the MLP twin, gradients of all six parameters,
dead units and shared kinks, NaN parameters); published facts of ENCODINGS.md,
shift invariance, thread determinism and bad inputs."""
import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import relpos
from relpos import _C
from relpos import encodings as E
from relpos import functional as F
from relpos.encodings.bias import alibi_slopes, relative_positions, t5_bucket

f32 = np.float32


def window(Tq, Tk, q_offset):
    return q_offset - (Tk - 1), Tq + Tk - 1


# ---------------------------------------------------------------- published facts

def test_t5_bucket_published_vectors():
    # ENCODINGS.md: bidirectional, 32 buckets, max_distance 128, 12 positions, rel = j - i
    rel = -relative_positions(12, 12)
    assert t5_bucket(rel[0]).tolist() == [0, 17, 18, 19, 20, 21, 22, 23, 24, 24, 24, 24]
    assert t5_bucket(rel[5]).tolist() == [5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21, 22]


def test_t5_bucket_matches_twin_wide_range():
    rel = np.arange(-3000, 3000)
    for nb, md, bi in [(32, 128, True), (32, 128, False), (16, 20, True), (8, 5, False), (7, 40, True)]:
        np.testing.assert_array_equal(t5_bucket(rel, nb, md, bi), ref.t5_bucket_ref(rel, nb, md, bi))


def test_alibi_slopes_8_and_12_heads():
    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=0, atol=0)
    want12 = [2.0 ** -e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
    np.testing.assert_allclose(alibi_slopes(12), want12, rtol=1e-15)
    for H in (1, 2, 3, 5, 6, 16, 24):
        np.testing.assert_allclose(alibi_slopes(H), ref.alibi_slopes_ref(H), rtol=1e-15)


def test_relative_positions():
    r = relative_positions(2, 4, q_offset=2)
    np.testing.assert_array_equal(r, [[2, 1, 0, -1], [3, 2, 1, 0]])
    assert r.dtype == np.int64


# ---------------------------------------------------------------- each bias(d) vs its float64 twin

def tab(enc, d, causal=True):
    """enc.bias over the distances d, float64, and the Tensor (for backward)."""
    t = enc.tabulate(np.asarray(d, np.int64), causal)
    return t.data.astype(np.float64), t


@pytest.mark.parametrize("Tq,Tk,qo", [(5, 5, 0), (3, 7, 4), (1, 6, 5), (4, 2, 9)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_alibi_bias_vs_twin(rng, Tq, Tk, qo, symmetric):
    d0, n = window(Tq, Tk, qo)
    enc = E.get("alibi", n_heads=3, symmetric=symmetric, learnable=True)
    enc.slopes.data[:] = rng.random(3).astype(f32)
    got, t = tab(enc, d0 + np.arange(n))
    s = enc.slopes.data.astype(np.float64)
    np.testing.assert_allclose(got, ref.alibi_vec(s, d0, n, symmetric), rtol=1e-6, atol=1e-6)
    g = rng.standard_normal((3, n)).astype(f32)
    t.backward(g)
    num = ref.numgrad(lambda x: (ref.alibi_vec(x, d0, n, symmetric) * g).sum(), s)
    np.testing.assert_allclose(enc.slopes.grad, num, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nb,md,bidir", [(32, 128, True), (32, 128, False), (8, 12, True), (6, 4, False)])
def test_t5_bias_vs_twin(rng, nb, md, bidir):
    d0, n = window(6, 40, 30)
    enc = E.get("t5", n_heads=2, num_buckets=nb, max_distance=md, bidirectional=bidir, seed=1)
    got, t = tab(enc, d0 + np.arange(n))
    table = enc.table.data.astype(np.float64)
    np.testing.assert_array_equal(got, ref.t5_vec(table, d0, n, md, bidir))
    g = rng.standard_normal((2, n)).astype(f32)
    t.backward(g)
    num = ref.numgrad(lambda x: (ref.t5_vec(x, d0, n, md, bidir) * g).sum(), table)
    np.testing.assert_allclose(enc.table.grad, num, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["log", "power"])
@pytest.mark.parametrize("Tq,Tk,qo", [(4, 6, 2), (3, 3, 0), (2, 5, 10)])
def test_kerple_bias_vs_twin(rng, variant, Tq, Tk, qo):
    d0, n = window(Tq, Tk, qo)
    enc = E.get("kerple", n_heads=3, variant=variant)
    enc.r1.data[:] = rng.random(3) + 0.2
    enc.r2.data[:] = rng.random(3) * 1.5 + 0.2
    got, t = tab(enc, d0 + np.arange(n))
    r1, r2 = enc.r1.data.astype(np.float64), enc.r2.data.astype(np.float64)
    np.testing.assert_allclose(got, ref.kerple_vec(r1, r2, d0, n, variant), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal((3, n)).astype(f32)
    t.backward(g)
    n1 = ref.numgrad(lambda x: (ref.kerple_vec(x, r2, d0, n, variant) * g).sum(), r1)
    n2 = ref.numgrad(lambda x: (ref.kerple_vec(r1, x, d0, n, variant) * g).sum(), r2)
    np.testing.assert_allclose(enc.r1.grad, n1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.r2.grad, n2, rtol=1e-4, atol=1e-4)


def test_sandwich_kernel(rng):
    s = rng.random(4).astype(f32)
    d0, n = window(5, 300, 700)
    for dim, first in ((128, 0), (16, 0), (128, 1), (16, 1)):
        d = d0 + np.arange(n)
        np.testing.assert_allclose(_C.bias_sandwich_fwd(s, d, dim, first), ref.sandwich_at(s, d, dim, first),
                                   rtol=1e-5, atol=2e-5)
        # any distances, in any order: one call, no loop per element
        d = rng.integers(-10**6, 10**6, size=50)
        np.testing.assert_allclose(_C.bias_sandwich_fwd(s, d, dim, first), ref.sandwich_at(s, d, dim, first),
                                   rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("dim", [128, 16])
def test_sandwich_freq_index_conventions(dim):
    """NeMo sums k = 1..dim/2, the paper k = 0..dim/2-1: the paper's form minus NeMo's is
    s_h (cos d - cos(d / 10000)) (the k = 0 term out, the k = dim/2 term in), for any dim."""
    nemo, paper = (E.get("sandwich", n_heads=3, dim=dim, freq_index=f) for f in ("nemo", "paper"))
    assert E.get("sandwich", n_heads=3, dim=dim).freq_index == "nemo"  # the default: the public implementation
    d = np.arange(-40, 41)
    s_h = 3 / (8.0 * np.arange(1, 4))[:, None]
    np.testing.assert_allclose(paper.bias(d).data - nemo.bias(d).data,
                               s_h * (np.cos(d) - np.cos(d / 10000.0))[None, :], atol=5e-5)
    np.testing.assert_allclose(nemo.bias(d).data, ref.sandwich_at(s_h[:, 0], d, dim, first=1), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(paper.bias(d).data, ref.sandwich_at(s_h[:, 0], d, dim, first=0), rtol=1e-5, atol=2e-5)
    assert "freq_index='nemo'" in repr(nemo)
    for bad in ("NeMo", 1, None, "hf"):
        with pytest.raises(ValueError, match="freq_index must be one of"):
            E.get("sandwich", n_heads=3, freq_index=bad)


def test_sandwich_bias_any_distances_and_its_table(monkeypatch):
    enc = E.get("sandwich", n_heads=3, dim=32)
    calls = []
    kernel = _C.bias_sandwich_fwd

    def counting(*a, **k):
        calls.append(len(a[1]))
        return kernel(*a, **k)

    monkeypatch.setattr(_C, "bias_sandwich_fwd", counting)
    want = lambda d: ref.sandwich_at(enc.scales, d, 32, first=1)
    for d in (np.arange(-4, 9), np.array([7, -3, 0, 2]), np.arange(-4, 9)):
        np.testing.assert_allclose(enc.bias(d).data, want(d), rtol=1e-5, atol=2e-5)
    assert len(calls) == 1  # the window's table is kept: the later calls are slices of it
    # generation: the window grows by one key per step; the table is recomputed log-many times
    for T in range(1, 200):
        np.testing.assert_allclose(enc.bias(np.arange(0, T)).data, want(np.arange(0, T)), rtol=1e-5, atol=2e-5)
    assert len(calls) <= 1 + 8
    # far-apart distances: computed directly, never a table spanning them
    d = np.array([0, 2**40])
    np.testing.assert_allclose(enc.bias(d).data, want(d), rtol=1e-5, atol=2e-5)
    assert calls[-1] == 2


# ---------------------------------------------------------------- FIRE

def fire_enc(rng, H=2, W=6, c=0.3, L=2.5, seed=1):
    enc = E.get("fire", n_heads=H, width=W, seed=seed)
    enc.W1.data[:] = rng.standard_normal(W)
    enc.b1.data[:] = rng.standard_normal(W)
    enc.W2.data[:] = rng.standard_normal((H, W))
    enc.b2.data[:] = rng.standard_normal(H)
    enc.c.data[:] = c
    enc.L.data[:] = L
    return enc


NAMES = ("W1", "b1", "W2", "b2", "c", "L")


def fire_params(enc):
    return {n: getattr(enc, n).data.astype(np.float64) for n in NAMES}


def fire_attention(enc, Tq, Tk, qo, impl, seed=0, B=1, D=3):
    """F.attention with FIRE: out, q/k/v grads and the parameters' grads of (out * G).sum()."""
    r = np.random.default_rng(seed)
    H = enc.n_heads
    q, k, v = (relpos.Tensor(r.standard_normal((B, H, T, D)).astype(f32), requires_grad=True)
               for T in (Tq, Tk, Tk))
    G = r.standard_normal((B, H, Tq, D)).astype(f32)
    enc.zero_grad()
    out = relpos.functional.attention(q, k, v, encoding=enc, q_offset=qo, impl=impl)
    out.backward(G)
    grads = {n: (getattr(enc, n).grad.copy() if getattr(enc, n).grad is not None else np.zeros(getattr(enc, n).shape))
             for n in NAMES}
    return out.data.copy(), grads, (q, k, v, G)


def fire_ref_out(params, q, k, v, qo, eps):
    logits = ref.attention_logits(q, k, q_offset=qo)[0] + ref.fire_bias_param(params, q.shape[2], k.shape[2], qo, eps)
    return ref.softmax_attention(logits, v, True, qo)[0]


@pytest.mark.parametrize("Tq,Tk,qo,c,L", [(5, 5, 0, 0.3, 2.5), (3, 6, 3, -0.2, 4.5), (4, 3, 1, 0.5, -1.5),
                                          (70, 70, 0, 0.1, 30.5)])
def test_fire_fused_equals_materialised_and_twin(rng, Tq, Tk, qo, c, L):
    """The pwl channel on both kernels (70 keys: two key tiles) against the MLP written plainly."""
    enc = fire_enc(rng, c=c, L=L)
    fo, fg, (q, k, v, G) = fire_attention(enc, Tq, Tk, qo, "fused")
    mo, mg, _ = fire_attention(enc, Tq, Tk, qo, "materialized")
    np.testing.assert_allclose(fo, mo, rtol=1e-5, atol=1e-5)
    for n in NAMES:
        np.testing.assert_allclose(fg[n], mg[n], rtol=1e-5, atol=1e-5 * (1 + np.abs(mg[n]).max()), err_msg=n)
    qd, kd, vd = (t.data.astype(np.float64) for t in (q, k, v))
    np.testing.assert_allclose(fo, fire_ref_out(fire_params(enc), qd, kd, vd, qo, enc.eps), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(enc.bias_matrix(Tq, Tk, qo), ref.fire_bias(*fire_params(enc).values(), Tq, Tk, qo)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("case", ["plain", "dead_units_and_shared_kinks"])
def test_fire_parameter_gradients_vs_finite_differences(rng, impl, case):
    """All six parameters: the kernel's pwl gradients through autograd against central differences of
    the float64 twin (the MLP, not the segment form)."""
    enc = fire_enc(rng, L=3.5)  # not an integer: max(L, i) has no tie
    if case == "dead_units_and_shared_kinks":
        # units with W1 = 0 (no kink: one on, one off), two units with the same kink, one never on
        enc.W1.data[:] = [0.0, 0.0, 1.0, 2.0, -1.5, 0.7]
        enc.b1.data[:] = [0.5, -0.5, -0.25, -0.5, 0.3, -0.2]
    Tq, Tk, qo = 4, 6, 2
    out, grads, (q, k, v, G) = fire_attention(enc, Tq, Tk, qo, impl)
    params = fire_params(enc)
    qd, kd, vd = (t.data.astype(np.float64) for t in (q, k, v))
    np.testing.assert_allclose(out, fire_ref_out(params, qd, kd, vd, qo, enc.eps), rtol=1e-4, atol=2e-5)
    for n in NAMES:
        def loss(x, n=n):
            p = dict(params)
            p[n] = x
            return float((fire_ref_out(p, qd, kd, vd, qo, enc.eps) * G).sum())
        np.testing.assert_allclose(grads[n], ref.numgrad(loss, params[n]), rtol=2e-3, atol=2e-4, err_msg=n)


def test_fire_segments_duplicate_and_constant_units():
    from relpos.encodings.bias import fire_segments
    W1 = np.array([0.0, 2.0, 1.0, -1.0, 0.0], f32)
    b1 = np.array([1.0, -1.0, -0.5, 0.5, -1.0], f32)  # kinks 0.5, 0.5, 0.5; units 0 and 4 constant
    bp, on = fire_segments(W1, b1)
    np.testing.assert_array_equal(bp, [0.5, 0.5, 0.5])
    assert on.shape == (4, 5)
    np.testing.assert_array_equal(on[:, 0], 1)  # b1 > 0: always on
    np.testing.assert_array_equal(on[:, 4], 0)  # b1 < 0: never on
    # below every kink (segment 0): only the unit with W1 < 0 of the kinked ones; above (segment 3): the others
    np.testing.assert_array_equal(on[0, 1:4], [0, 0, 1])
    np.testing.assert_array_equal(on[3, 1:4], [1, 1, 0])
    # the MLP and the segment form agree on each side of the shared kink
    for x in (0.25, 0.75):
        seg = int((bp <= x).sum())
        np.testing.assert_array_equal(on[seg], (W1 * x + b1 > 0).astype(f32))


@pytest.mark.parametrize("name,value", [("W1", np.nan), ("b1", np.nan), ("W2", np.nan), ("b2", np.nan),
                                        ("c", np.nan), ("L", np.nan), ("W1", np.inf), ("W2", -np.inf)])
@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_fire_nonfinite_parameter_makes_rows_nan(rng, name, value, impl):
    """Issue 12: a NaN FIRE parameter gave finite logits and a finite loss. Now the attention rows that
    the parameter reaches are NaN, as in the float64 twin."""
    enc = fire_enc(rng, L=3.5)
    getattr(enc, name).data.flat[0] = value
    out, _, (q, k, v, G) = fire_attention(enc, 4, 6, 2, impl)
    qd, kd, vd = (t.data.astype(np.float64) for t in (q, k, v))
    logits = ref.attention_logits(qd, kd, q_offset=2)[0] + ref.fire_bias(*fire_params(enc).values(), 4, 6, 2, enc.eps)
    want = ref.attention(qd, kd, vd, q_offset=2, bias_full=logits - ref.attention_logits(qd, kd, q_offset=2)[0])[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    assert np.isnan(out).any()
    fin = ~np.isnan(want)
    np.testing.assert_allclose(out[fin], want[fin], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fire_nan_parameter_nan_loss_in_a_model(name):
    """The issue's symptom: a TransformerLM with a NaN FIRE parameter returned finite logits and a finite loss."""
    model = relpos.models.TransformerLM(32, d_model=16, n_layers=1, n_heads=2, encoding="fire", max_len=16, seed=0)
    dict(model.named_parameters())[f"blocks.0.attn.encoding.{name}"].data.flat[0] = np.nan
    ids = np.arange(16)[None] % 32
    assert np.isnan(model(ids).numpy()).all()
    assert np.isnan(model.loss(ids[:, :-1], ids[:, 1:]).item())


def test_fire_L_gradient_is_live(rng):
    # with a threshold above every query position the L gradient is nonzero; below, exactly 0
    enc = fire_enc(rng, L=10.0)
    for impl in ("fused", "materialized"):
        _, g, _ = fire_attention(enc, 4, 4, 0, impl)
        assert abs(g["L"][0]) > 1e-6
    enc.L.data[0] = 0.5
    for impl in ("fused", "materialized"):
        _, g, _ = fire_attention(enc, 4, 6, 2, impl)
        assert g["L"][0] == 0.0


def test_fire_bias_depends_on_i():
    enc = E.get("fire", n_heads=2, seed=1, init_L=2.0)
    a = enc.bias_matrix(4, 4, 0)
    b = enc.bias_matrix(4, 4 + 3, 3)[:, :, 3:]
    assert not np.allclose(a, b)  # same i - j, different i: FIRE's normaliser moves


# ---------------------------------------------------------------- shift invariance

# every registered DistanceBias with its defaults, and the options that change its form
TOEPLITZ = [(r["name"], {}) for r in E.available() if issubclass(E.lookup(r["name"]), E.DistanceBias)] + [
    ("alibi", {"symmetric": True}), ("t5", {"bidirectional": True}), ("kerple", {"variant": "power"}),
    ("learned_bias", {"max_distance": 3})]


@settings(max_examples=20, deadline=None)
@given(Tq=st.integers(1, 6), Tk=st.integers(1, 6), c=st.integers(0, 40), which=st.integers(0, len(TOEPLITZ) - 1))
def test_toeplitz_bias_depends_on_i_minus_j_only(Tq, Tk, c, which):
    name, opts = TOEPLITZ[which]
    enc = E.get(name, n_heads=3, seed=0, **opts)
    base = enc.bias_matrix(Tq, Tk, 0)
    shifted = enc.bias_matrix(Tq, Tk + c, c)[:, :, c:]
    np.testing.assert_array_equal(base, shifted)


# ---------------------------------------------------------------- encodings

def expand(inputs, Tq, Tk, qo):
    vec = inputs["bias_vec"].data
    sign, off = inputs["bias_ix"]
    return vec[:, ref.relidx(sign, off, vec.shape[1], Tq, Tk, qo)]


def qk(rng, B=1, H=3, Tq=4, Tk=6, D=4):
    return (relpos.Tensor(rng.standard_normal((B, H, Tq, D)).astype(f32)),
            relpos.Tensor(rng.standard_normal((B, H, Tk, D)).astype(f32)))


@pytest.mark.parametrize("qo", [0, 2, 5])
def test_alibi_attention_inputs(rng, qo):
    q, k = qk(rng, Tq=3, Tk=qo + 3)
    enc = E.get("alibi", n_heads=3)
    m = ref.alibi_slopes_ref(3)
    d = ref.distances(3, qo + 3, qo)
    np.testing.assert_allclose(expand(enc.attention_inputs(q, k, qo, True), 3, qo + 3, qo),
                               -m[:, None, None] * np.maximum(d, 0), rtol=1e-6)
    # symmetric=None (default) follows the mask
    np.testing.assert_allclose(expand(enc.attention_inputs(q, k, qo, False), 3, qo + 3, qo),
                               -m[:, None, None] * np.abs(d), rtol=1e-6)
    sym = E.get("alibi", n_heads=3, symmetric=True)
    np.testing.assert_allclose(expand(sym.attention_inputs(q, k, qo, False), 3, qo + 3, qo),
                               -m[:, None, None] * np.abs(d), rtol=1e-6)
    np.testing.assert_allclose(sym.bias_matrix(3, qo + 3, qo), -m[:, None, None] * np.abs(d), rtol=1e-6)


def test_t5_follows_causal(rng):
    q, k = qk(rng, Tq=5, Tk=9)
    enc = E.get("t5", n_heads=3, seed=2)
    tab = enc.table.data.astype(np.float64)
    rel = -ref.distances(5, 9, 4)
    for causal in (True, False):
        got = expand(enc.attention_inputs(q, k, 4, causal), 5, 9, 4)
        want = tab[:, ref.t5_bucket_ref(rel, 32, 128, bidirectional=not causal)]
        np.testing.assert_array_equal(got, want)
    fixed = E.get("t5", n_heads=3, seed=2, bidirectional=True)
    np.testing.assert_array_equal(expand(fixed.attention_inputs(q, k, 4, True), 5, 9, 4),
                                  tab[:, ref.t5_bucket_ref(rel, 32, 128, True)])


def test_learned_bias_clips(rng):
    enc = E.get("learned_bias", n_heads=2, max_distance=2, seed=3)
    q, k = qk(rng, H=2, Tq=3, Tk=8)
    got = expand(enc.attention_inputs(q, k, 5, True), 3, 8, 5)
    d = np.clip(ref.distances(3, 8, 5), -2, 2) + 2
    np.testing.assert_array_equal(got, enc.table.data[:, d])
    np.testing.assert_array_equal(enc.bias_matrix(3, 8, 5), enc.table.data.astype(np.float64)[:, d])


def test_learnable_parameter_gradients_through_encodings(rng):
    Tq, Tk, qo = 4, 7, 3
    d0, n = window(Tq, Tk, qo)
    q, k = qk(rng, Tq=Tq, Tk=Tk)
    g = rng.standard_normal((3, n)).astype(f32)
    # ALiBi learnable slopes
    enc = E.get("alibi", n_heads=3, learnable=True)
    enc.attention_inputs(q, k, qo, True)["bias_vec"].backward(g)
    s0 = enc.slopes.data.astype(np.float64)
    num = ref.numgrad(lambda s: float(np.sum(ref.alibi_vec(s, d0, n, False) * g)), s0.copy())
    np.testing.assert_allclose(enc.slopes.grad, num, rtol=1e-5, atol=1e-4)
    assert [p for p, _ in enc.named_parameters()] == ["slopes"]
    assert list(dict(E.get("alibi", n_heads=3).named_parameters())) == []
    # T5 table: each bucket's gradient is the sum of g over the distances in it
    enc = E.get("t5", n_heads=3)
    enc.attention_inputs(q, k, qo, True)["bias_vec"].backward(g)
    t0 = enc.table.data.astype(np.float64)
    num = ref.numgrad(lambda t: float(np.sum(ref.t5_vec(t, d0, n, 128, False) * g)), t0.copy())
    np.testing.assert_allclose(enc.table.grad, num, rtol=1e-5, atol=1e-5)
    # KERPLE r1, r2
    enc = E.get("kerple", n_heads=3, variant="power", seed=4)
    enc.attention_inputs(q, k, qo, True)["bias_vec"].backward(g)
    r1, r2 = enc.r1.data.astype(np.float64), enc.r2.data.astype(np.float64)
    n1 = ref.numgrad(lambda a: float(np.sum(ref.kerple_vec(a, r2, d0, n, "power") * g)), r1.copy())
    n2 = ref.numgrad(lambda b: float(np.sum(ref.kerple_vec(r1, b, d0, n, "power") * g)), r2.copy())
    np.testing.assert_allclose(enc.r1.grad, n1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.r2.grad, n2, rtol=1e-4, atol=1e-4)


def test_kerple_clamps_in_place():
    enc = E.get("kerple", n_heads=2, variant="power")
    enc.r1.data[:] = [-1.0, 3.0]
    enc.r2.data[:] = [0.0, 5.0]
    enc.bias_matrix(3, 3)
    np.testing.assert_allclose(enc.r1.data, [0.01, 3.0], rtol=1e-6)
    np.testing.assert_allclose(enc.r2.data, [0.01, 2.0], rtol=1e-6)
    log = E.get("kerple", n_heads=1)
    log.r2.data[:] = 5.0
    log.bias_matrix(2, 2)
    assert log.r2.data[0] == 5.0  # the log variant has no upper bound on r2


def test_sandwich_scales():
    enc = E.get("sandwich", n_heads=4)
    np.testing.assert_allclose(enc.bias_matrix(3, 3), ref.toeplitz_matrix(
        ref.sandwich_vec(4 / (8.0 * np.arange(1, 5)), -2, 5, first=1), 3, 3), rtol=1e-5)


def test_fire_encoding_matches_twin(rng):
    enc = E.get("fire", n_heads=2, width=5, seed=7, init_L=3.0)
    p = [getattr(enc, n).data for n in NAMES]
    np.testing.assert_allclose(enc.bias_matrix(4, 6, 2), ref.fire_bias(*p, 4, 6, 2)[0], rtol=1e-5, atol=1e-6)
    assert enc.L.data[0] == 3.0 and abs(enc.c.data[0] - 0.1) < 1e-7
    assert E.get("fire", n_heads=2, max_len=64).L.data[0] == 64.0


def _fire_pwl_composed(enc, Tq, Tk, q_offset):
    """Fire.pwl's u, w, slope, icpt from relpos ops (what it was before one tape node made them)."""
    from relpos.encodings.base import distance_window
    from relpos.encodings.bias import fire_segments
    c, L = enc.c.data[0], enc.L.data[0]
    cabs = enc.c * float(np.sign(c))
    d = np.maximum(distance_window(Tq, Tk, q_offset), 0).astype(f32)
    u = F.log(cabs * d + 1.0)
    ia = (q_offset + np.arange(Tq)).astype(f32)
    Labs = enc.L * float(np.sign(L))
    above = ((np.abs(L) > ia) | np.isnan(L)).astype(f32)
    w = 1.0 / (F.log(cabs * (Labs * above + ia * (1.0 - above)) + 1.0) + enc.eps)
    _, on = fire_segments(enc.W1.data, enc.b1.data)
    slope = enc.W2 @ (relpos.Tensor(on) * enc.W1).T
    icpt = enc.W2 @ (relpos.Tensor(on) * enc.b1).T + enc.b2.reshape(enc.n_heads, 1)
    return {"pwl_u": u, "pwl_w": w, "pwl_slope": slope, "pwl_icpt": icpt}


@pytest.mark.parametrize("c,L,Tq,Tk,qo", [(0.3, 30.0, 20, 28, 8), (-0.2, -5.5, 12, 12, 0), (0.0, 3.0, 9, 16, 7)])
def test_fire_pwl_node_equals_composed_ops(rng, c, L, Tq, Tk, qo):
    """Fire.pwl's one tape node: the same values and the same gradients for the six
    parameters, bit for bit, as the relpos ops it replaced, whatever each output's
    upstream gradient."""
    enc = fire_enc(rng, H=3, W=10, c=c, L=L)
    G = None
    grads = []
    for make in (lambda: enc.pwl(Tq, Tk, qo), lambda: _fire_pwl_composed(enc, Tq, Tk, qo)):
        for p in enc.parameters():
            p.grad = None
        out = make()
        if G is None:
            G = {k: rng.standard_normal(out[k].shape).astype(f32) for k in ("pwl_u", "pwl_w", "pwl_slope", "pwl_icpt")}
            first = {k: out[k].data.copy() for k in G}
        else:
            for k in G:
                np.testing.assert_array_equal(out[k].data, first[k], err_msg=k)
        sum((out[k] * G[k]).sum() for k in G).backward()
        grads.append({n: getattr(enc, n).grad.copy() for n in NAMES})
    for n in NAMES:
        np.testing.assert_array_equal(grads[0][n], grads[1][n], err_msg=n)
    if c == 0.0:  # |c| has the kink's gradient 0 at c = 0
        assert grads[0]["c"][0] == 0.0


# ------------------------------------------------ pwl table against per-tile

@pytest.mark.parametrize("causal", [True, False])
def test_pwl_table_same_bits_as_per_tile(rng, causal):
    """With B * H >= 2 the fused kernel forms the pwl terms once per call (a table);
    with B = H = 1 each tile forms its own. Split into one-head, one-batch calls (no
    table), a two-head, two-batch call (table) must give the same bits: outputs and
    q/k/v gradients per (b, h), and for the pwl gradients exactly twice the
    one-batch value (both batch rows are the same, 0 + p + p = 2p)."""
    H, Tq, Tk, D, q_off = 2, 40, 56, 8, 16  # one key tile: no chunked partials
    enc = fire_enc(rng, H=H, W=12, L=30.0)
    pwl = {n: (x.data if isinstance(x, relpos.Tensor) else x) for n, x in enc.pwl(Tq, Tk, q_off).items()}
    q1 = rng.standard_normal((1, H, Tq, D)).astype(f32)
    k1 = rng.standard_normal((1, H, Tk, D)).astype(f32)
    v1 = rng.standard_normal((1, H, Tk, D)).astype(f32)
    do1 = rng.standard_normal((1, H, Tq, D)).astype(f32)
    q, k, v, do = (np.concatenate([t, t]) for t in (q1, k1, v1, do1))
    kw = dict(q_offset=q_off, causal=causal)
    o, lse = _C.attention_fwd(q, k, v, **kw, **pwl)
    g = _C.attention_bwd(q, k, v, o, lse, do, **kw, **pwl)
    for h in range(H):
        one = dict(pwl, pwl_slope=pwl["pwl_slope"][h:h + 1], pwl_icpt=pwl["pwl_icpt"][h:h + 1])
        args = [np.ascontiguousarray(t[:, h:h + 1]) for t in (q1, k1, v1)]
        oh, lh = _C.attention_fwd(*args, **kw, **one)
        gh = _C.attention_bwd(*args, oh, lh, np.ascontiguousarray(do1[:, h:h + 1]), **kw, **one)
        for b in range(2):
            np.testing.assert_array_equal(o[b, h], oh[0, 0])
            np.testing.assert_array_equal(lse[b, h], lh[0, 0])
            for name in ("q", "k", "v"):
                np.testing.assert_array_equal(g[name][b, h], gh[name][0, 0])
        np.testing.assert_array_equal(g["pwl_slope"][h], 2 * gh["pwl_slope"][0])
        np.testing.assert_array_equal(g["pwl_icpt"][h], 2 * gh["pwl_icpt"][0])
    assert np.isfinite(o).all() and np.abs(g["pwl_u"]).max() > 0
    # a padding mask that masks nothing takes the pwl gradients' general loop (per-key
    # tests) instead of the run-by-run one: the same bits
    gm = _C.attention_bwd(q, k, v, o, lse, do, key_padding_mask=np.zeros((2, Tk), bool), **kw, **pwl)
    assert sorted(gm) == sorted(g)
    for name in g:
        np.testing.assert_array_equal(gm[name], g[name])


# ---------------------------------------------------------------- threads

def test_bit_identical_across_threads(rng, threads):
    d0, n = window(3000, 9000, 100)  # H * n above the kernels' parallel threshold
    H = 4
    scales = (rng.random(H) + 0.1).astype(f32)
    q = rng.standard_normal((2, 3, 24, 8)).astype(f32)
    k = rng.standard_normal((2, 3, 30, 8)).astype(f32)
    e = rng.standard_normal((12, 8)).astype(f32)
    gc = rng.standard_normal((2, 3, 24, 30)).astype(f32)
    enc = fire_enc(rng, H=3, W=32, L=40.0)
    pwl = {n: (x.data if isinstance(x, relpos.Tensor) else x) for n, x in enc.pwl(24, 30, 6).items()}

    def run():
        out = [_C.bias_sandwich_fwd(scales, d0 + np.arange(n)), _C.cope_fwd(q, k, e, 6, 0.3),
               *_C.cope_bwd(q, k, e, gc, 6, 0.3)]
        for fwd, bwd in ((_C.attention_fwd, _C.attention_bwd), (_C.attention_mat_fwd, _C.attention_mat_bwd)):
            o, lse = fwd(q, k, k, q_offset=6, **pwl)
            g = bwd(q, k, k, o, lse, q, q_offset=6, **pwl)
            out += [o, lse] + [g[x] for x in sorted(g)]
        return out

    one = threads(1, run)
    two = threads(2, run)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- zero sizes

def test_zero_sizes():
    assert _C.bias_sandwich_fwd(np.ones(2, f32), np.zeros(0, np.int64)).shape == (2, 0)
    assert _C.bias_sandwich_fwd(np.ones(0, f32), np.arange(5)).shape == (0, 5)
    assert E.get("alibi", n_heads=2).bias_matrix(0, 0).shape == (2, 0, 0)
    assert E.get("t5", n_heads=2).bias_matrix(0, 3).shape == (2, 0, 3)
    enc = E.get("fire", n_heads=2, seed=0)
    assert enc.bias_matrix(0, 4).shape == (2, 0, 4) and enc.bias_matrix(3, 0).shape == (2, 3, 0)
    for Tq, Tk in ((0, 3), (3, 0)):
        q = relpos.Tensor(np.ones((1, 2, Tq, 4), f32), requires_grad=True)
        kv = relpos.Tensor(np.ones((1, 2, Tk, 4), f32), requires_grad=True)
        for impl in ("fused", "materialized"):
            enc.zero_grad()
            out = relpos.functional.attention(q, kv, kv, encoding=enc, impl=impl)
            assert out.shape == (1, 2, Tq, 4)
            out.sum().backward()
            assert all(np.all(p.grad == 0) for p in enc.parameters() if p.grad is not None)


# ---------------------------------------------------------------- bad inputs

def test_bad_encoding_options():
    with pytest.raises(ValueError, match="unknown option"):
        E.get("alibi", n_heads=4, slope=1)
    with pytest.raises(ValueError, match="n_heads"):
        E.get("t5")
    with pytest.raises(ValueError, match="num_buckets"):
        E.get("t5", n_heads=2, num_buckets=3)
    with pytest.raises(ValueError, match="num_buckets"):
        E.get("t5", n_heads=2, num_buckets=1, bidirectional=False)
    with pytest.raises(ValueError, match="max_distance"):
        E.get("t5", n_heads=2, num_buckets=32, max_distance=8)
    with pytest.raises(ValueError, match="variant"):
        E.get("kerple", n_heads=2, variant="cubic")
    with pytest.raises(ValueError, match="dim"):
        E.get("sandwich", n_heads=2, dim=7)
    with pytest.raises(ValueError, match="width"):
        E.get("fire", n_heads=2, width=0)
    with pytest.raises(ValueError, match="max_distance"):
        E.get("learned_bias", n_heads=2, max_distance=-1)


def test_causal_only_checks(rng):
    q, k = qk(rng)
    with pytest.raises(ValueError, match="causal"):
        E.get("fire", n_heads=3).attention_inputs(q, k, 0, causal=False)
    with pytest.raises(ValueError, match="symmetric=False is causal only"):
        E.get("alibi", n_heads=3, symmetric=False).attention_inputs(q, k, 0, causal=False)
    with pytest.raises(ValueError, match="n_heads=2"):
        E.get("alibi", n_heads=2).attention_inputs(q, k, 0, causal=True)
    assert E.get("fire", n_heads=3).causal_only and E.get("alibi", n_heads=3, symmetric=False).causal_only
    assert not E.get("alibi", n_heads=3, symmetric=True).causal_only
    assert not E.get("alibi", n_heads=3).causal_only  # symmetric=None follows the mask


def test_bad_kernel_inputs():
    s = np.ones(3, f32)
    with pytest.raises(TypeError, match="scales"):
        _C.bias_sandwich_fwd(np.ones(3), np.arange(4))
    with pytest.raises(ValueError, match="scales"):
        _C.bias_sandwich_fwd(np.ones((3, 1), f32), np.arange(4))
    with pytest.raises(TypeError, match="^d"):
        _C.bias_sandwich_fwd(s, np.arange(4.0))
    with pytest.raises(ValueError, match="d must have shape"):
        _C.bias_sandwich_fwd(s, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="dim"):
        _C.bias_sandwich_fwd(s, np.arange(4), 3)
    for first in (-1, 2, 2**40):
        with pytest.raises(ValueError, match="first must be 0 .* or 1"):
            _C.bias_sandwich_fwd(s, np.arange(4), 8, first)
    with pytest.raises(TypeError, match="relative_position"):
        t5_bucket(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="num_buckets"):
        t5_bucket(np.arange(3), num_buckets=1)


# ---------------------------------------------------------------- end to end through attention_core

def run_e2e(enc, ref_logits, *, B=1, H=2, Tq=3, Tk=5, D=3, qo=2, causal=True, pad=False, impl="materialized",
            extra_v=None, seed=0, check_grads=True):
    """attention(q, k, v, encoding=enc) vs a float64 softmax over ref_logits(params, q, k).

    ref_logits(params: dict of float64 arrays, q, k) -> (B, H, Tq, Tk) logits written
    plainly from the paper; extra_v(params) -> (.., Tq, Tk, Dv) value term or None.
    Checks the output and the gradients of q, k, v and every encoding parameter
    (central finite differences of the float64 reference)."""
    rng = np.random.default_rng(seed)
    q = relpos.Tensor(rng.standard_normal((B, H, Tq, D)).astype(f32), requires_grad=True)
    k = relpos.Tensor(rng.standard_normal((B, H, Tk, D)).astype(f32), requires_grad=True)
    v = relpos.Tensor(rng.standard_normal((B, H, Tk, D)).astype(f32), requires_grad=True)
    mask = None
    if pad:
        mask = np.zeros((B, Tk), dtype=bool)
        mask[:, Tk - 1] = True
    enc.zero_grad()
    out = relpos.functional.attention(q, k, v, encoding=enc, causal=causal, key_padding_mask=mask,
                                      q_offset=qo, impl=impl)
    G = rng.standard_normal(out.shape).astype(f32)
    out.backward(G)
    params = {n: p.data.astype(np.float64) for n, p in enc.named_parameters()}

    def f(qd, kd, vd, pd):
        ev = extra_v(pd) if extra_v is not None else None
        return ref.softmax_attention(ref_logits(pd, qd, kd), vd, causal, qo, mask, ev)[0]

    qd, kd, vd = (t.data.astype(np.float64) for t in (q, k, v))
    np.testing.assert_allclose(out.data, f(qd, kd, vd, params), rtol=1e-4, atol=2e-5)
    if not check_grads:
        return
    loss = lambda o: (o * G).sum()
    tol = dict(rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(q.grad, ref.numgrad(lambda x: loss(f(x, kd, vd, params)), qd), **tol, err_msg="dq")
    np.testing.assert_allclose(k.grad, ref.numgrad(lambda x: loss(f(qd, x, vd, params)), kd), **tol, err_msg="dk")
    np.testing.assert_allclose(v.grad, ref.numgrad(lambda x: loss(f(qd, kd, x, params)), vd), **tol, err_msg="dv")
    for name, p in enc.named_parameters():
        def lp(x, name=name):
            pd = dict(params)
            pd[name] = x
            return loss(f(qd, kd, vd, pd))
        got = p.grad if p.grad is not None else np.zeros(p.shape)
        np.testing.assert_allclose(got, ref.numgrad(lp, params[name]), **tol, err_msg=f"d{name}")


def content(q, k):
    return q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])


def _alibi_ref(enc, causal):
    symmetric = (not causal) if enc.symmetric is None else enc.symmetric

    def logits(p, q, k):
        m = p["slopes"] if "slopes" in p else ref.alibi_slopes_ref(enc.n_heads)
        d = ref.distances(q.shape[2], k.shape[2], QO)
        f = np.abs(d) if symmetric else d
        return content(q, k) - m[:, None, None] * f
    return logits


QO = 2
BIAS_CASES = {
    "alibi": (dict(learnable=True), _alibi_ref),
    "alibi_causal": (dict(symmetric=False, learnable=True), _alibi_ref),
    "alibi_sym": (dict(symmetric=True, learnable=True), _alibi_ref),
    "t5": (dict(num_buckets=8, max_distance=6), lambda enc, causal: lambda p, q, k: content(q, k) + p["table"][
        :, ref.t5_bucket_ref(-ref.distances(q.shape[2], k.shape[2], QO), 8, 6, enc._bidir(causal))]),
    "kerple_log": (dict(variant="log"), lambda enc, causal: lambda p, q, k: content(q, k) + ref.toeplitz_matrix(
        ref.kerple_vec(p["r1"], p["r2"], QO - (k.shape[2] - 1), q.shape[2] + k.shape[2] - 1, "log"),
        q.shape[2], k.shape[2], QO)),
    "kerple_power": (dict(variant="power"), lambda enc, causal: lambda p, q, k: content(q, k) + ref.toeplitz_matrix(
        ref.kerple_vec(p["r1"], p["r2"], QO - (k.shape[2] - 1), q.shape[2] + k.shape[2] - 1, "power"),
        q.shape[2], k.shape[2], QO)),
    "sandwich": (dict(), lambda enc, causal: lambda p, q, k: content(q, k) + ref.toeplitz_matrix(
        ref.sandwich_vec(enc.n_heads / (8.0 * np.arange(1, enc.n_heads + 1)), QO - (k.shape[2] - 1),
                         q.shape[2] + k.shape[2] - 1, first=1), q.shape[2], k.shape[2], QO)),
    "learned_bias": (dict(max_distance=2), lambda enc, causal: lambda p, q, k: content(q, k) + p["table"][
        :, np.clip(ref.distances(q.shape[2], k.shape[2], QO), -2, 2) + 2]),
    "fire": (dict(width=4, init_L=3.0), lambda enc, causal: lambda p, q, k: content(q, k) + ref.fire_bias_param(
        p, q.shape[2], k.shape[2], QO, enc.eps)),
}


@pytest.mark.parametrize("case", sorted(BIAS_CASES))
@pytest.mark.parametrize("causal,pad,impl", [(True, False, "materialized"), (False, True, "materialized"),
                                             (True, True, "fused"), (False, False, "fused")])
def test_bias_attention_end_to_end(case, causal, pad, impl):
    opts, make = BIAS_CASES[case]
    name = {"alibi_sym": "alibi", "alibi_causal": "alibi", "kerple_log": "kerple", "kerple_power": "kerple"}.get(case, case)
    enc = E.get(name, n_heads=2, head_dim=3, seed=11, **opts)
    if case in ("alibi_causal", "fire") and not causal:
        with pytest.raises(ValueError, match="causal"):
            run_e2e(enc, make(enc, causal), causal=causal)
        return
    rng = np.random.default_rng(3)
    for _, p in enc.named_parameters():  # away from init (and, for KERPLE, inside the clamp)
        p.data[...] = (rng.random(p.shape) * 0.8 + 0.2 if name == "kerple"
                       else rng.standard_normal(p.shape) * 0.5).astype(f32)
    run_e2e(enc, make(enc, causal), qo=QO, causal=causal, pad=pad, impl=impl)


@pytest.mark.parametrize("name,opts", [("alibi", {}), ("t5", {}), ("kerple", {}), ("fire", {})])
def test_last_row_with_offset_equals_full(name, opts, rng):
    enc = E.get(name, n_heads=2, head_dim=4, seed=1, **opts)
    T = 6
    q, k, v = (relpos.Tensor(rng.standard_normal((1, 2, T, 4)).astype(f32)) for _ in range(3))
    full = relpos.functional.attention(q, k, v, encoding=enc, impl="materialized")
    last = relpos.functional.attention(relpos.Tensor(q.data[:, :, -1:]), k, v, encoding=enc, q_offset=T - 1,
                                       impl="materialized")
    np.testing.assert_allclose(last.data[:, :, 0], full.data[:, :, -1], rtol=1e-5, atol=1e-6)


def test_alibi_attention_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    B, H, Tq, Tk, D, qo = 2, 4, 5, 7, 8, 2
    qn, kn, vn = (rng.standard_normal(s).astype(f32) for s in ((B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D)))
    G = rng.standard_normal((B, H, Tq, D)).astype(f32)
    for symmetric, causal in [(False, True), (True, False), (True, True)]:
        enc = E.get("alibi", n_heads=H, symmetric=symmetric, learnable=True)
        q, k, v = (relpos.Tensor(a, requires_grad=True) for a in (qn, kn, vn))
        out = relpos.functional.attention(q, k, v, encoding=enc, causal=causal, q_offset=qo, impl="materialized")
        out.backward(G)

        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (qn, kn, vn))
        m = torch.tensor(enc.slopes.data.copy(), requires_grad=True)
        i = torch.arange(Tq)[:, None] + qo
        j = torch.arange(Tk)[None, :]
        dist = (i - j).abs() if symmetric else (i - j).clamp(min=0)
        s = tq @ tk.transpose(-1, -2) / D ** 0.5 - m[:, None, None] * dist.float()
        if causal:
            s = s.masked_fill(j > i, float("-inf"))
        tout = torch.softmax(s, dim=-1) @ tv
        tout.backward(torch.tensor(G))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-5, atol=1e-5)
        for mine, theirs in ((q.grad, tq.grad), (k.grad, tk.grad), (v.grad, tv.grad), (enc.slopes.grad, m.grad)):
            np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-4, atol=1e-5)
