"""Channel B encodings: ALiBi, T5 buckets, KERPLE, Sandwich, learned bias, FIRE.

C kernels against the float64 twins of tests/reference.py (bias section),
backward against central finite differences, published facts of
ENCODINGS.md, shift invariance, thread determinism and bad inputs."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import relpos
from relpos import _C
from relpos import encodings as E
from relpos.encodings.bias import alibi_slopes, relative_positions, t5_bucket

import reference as ref

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


# ---------------------------------------------------------------- kernels vs twins

@pytest.mark.parametrize("Tq,Tk,qo", [(5, 5, 0), (3, 7, 4), (1, 6, 5), (4, 2, 9)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_alibi_kernel(rng, Tq, Tk, qo, symmetric):
    d0, n = window(Tq, Tk, qo)
    s = rng.random(3).astype(f32)
    np.testing.assert_allclose(_C.bias_alibi_fwd(s, d0, n, symmetric), ref.alibi_vec(s, d0, n, symmetric),
                               rtol=1e-6, atol=1e-6)
    g = rng.standard_normal((3, n)).astype(f32)
    num = ref.numgrad(lambda x: (ref.alibi_vec(x, d0, n, symmetric) * g).sum(), s.astype(np.float64))
    np.testing.assert_allclose(_C.bias_alibi_bwd(g, d0, symmetric), num, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nb,md,bidir", [(32, 128, True), (32, 128, False), (8, 12, True), (6, 4, False)])
def test_t5_kernel(rng, nb, md, bidir):
    d0, n = window(6, 40, 30)
    table = rng.standard_normal((2, nb)).astype(f32)
    np.testing.assert_array_equal(_C.bias_t5_fwd(table, d0, n, md, bidir), ref.t5_vec(table, d0, n, md, bidir))
    g = rng.standard_normal((2, n)).astype(f32)
    num = ref.numgrad(lambda x: (ref.t5_vec(x, d0, n, md, bidir) * g).sum(), table.astype(np.float64))
    np.testing.assert_allclose(_C.bias_t5_bwd(g, d0, nb, md, bidir), num, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["log", "power"])
@pytest.mark.parametrize("Tq,Tk,qo", [(4, 6, 2), (3, 3, 0), (2, 5, 10)])
def test_kerple_kernel(rng, variant, Tq, Tk, qo):
    d0, n = window(Tq, Tk, qo)
    r1 = (rng.random(3) + 0.2).astype(f32)
    r2 = (rng.random(3) * 1.5 + 0.2).astype(f32)
    np.testing.assert_allclose(_C.bias_kerple_fwd(r1, r2, d0, n, variant), ref.kerple_vec(r1, r2, d0, n, variant),
                               rtol=1e-5, atol=1e-6)
    g = rng.standard_normal((3, n)).astype(f32)
    d1, d2 = _C.bias_kerple_bwd(r1, r2, g, d0, variant)
    r1d, r2d = r1.astype(np.float64), r2.astype(np.float64)
    n1 = ref.numgrad(lambda x: (ref.kerple_vec(x, r2d, d0, n, variant) * g).sum(), r1d)
    n2 = ref.numgrad(lambda x: (ref.kerple_vec(r1d, x, d0, n, variant) * g).sum(), r2d)
    np.testing.assert_allclose(d1, n1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d2, n2, rtol=1e-4, atol=1e-4)


def test_sandwich_kernel(rng):
    d0, n = window(5, 300, 700)
    s = rng.random(4).astype(f32)
    for dim in (128, 16):
        np.testing.assert_allclose(_C.bias_sandwich_fwd(s, d0, n, dim), ref.sandwich_vec(s, d0, n, dim),
                                   rtol=1e-5, atol=2e-5)


def fire_params(rng, H=2, W=6, c=0.3, L=2.5):
    return {"W1": rng.standard_normal(W).astype(f32), "b1": rng.standard_normal(W).astype(f32),
            "W2": rng.standard_normal((H, W)).astype(f32), "b2": rng.standard_normal(H).astype(f32),
            "c": np.array([c], f32), "L": np.array([L], f32)}


NAMES = ("W1", "b1", "W2", "b2", "c", "L")


@pytest.mark.parametrize("Tq,Tk,qo,c,L", [(5, 5, 0, 0.3, 2.5), (3, 6, 3, -0.2, 4.5), (4, 3, 1, 0.5, -1.5)])
def test_fire_kernel(rng, Tq, Tk, qo, c, L):
    p = fire_params(rng, c=c, L=L)
    args = [p[k] for k in NAMES]
    out = _C.fire_fwd(*args, Tq, Tk, qo)
    np.testing.assert_allclose(out, ref.fire_bias(*args, Tq, Tk, qo), rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(out.shape).astype(f32)
    grads = _C.fire_bwd(*args, g, qo)
    pd = {k: v.astype(np.float64) for k, v in p.items()}
    for name, got in zip(NAMES, grads):
        def loss(x, name=name):
            q = dict(pd)
            q[name] = x
            return (ref.fire_bias_param(q, Tq, Tk, qo) * g).sum()
        np.testing.assert_allclose(got, ref.numgrad(loss, pd[name]), rtol=2e-4, atol=2e-4, err_msg=name)


def test_fire_L_gradient_is_live(rng):
    # with a threshold above every query position the L gradient is nonzero; below, exactly 0
    p = fire_params(rng, L=10.0)
    args = [p[k] for k in NAMES]
    g = np.ones((1, 2, 4, 4), f32)
    assert abs(_C.fire_bwd(*args, g, 0)[5][0]) > 1e-6
    p["L"][0] = 0.5
    args = [p[k] for k in NAMES]
    assert _C.fire_bwd(*args, g, 2)[5][0] == 0.0


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
    # FIRE: all six parameters
    enc = E.get("fire", n_heads=3, seed=5, init_L=5.0)
    gf = rng.standard_normal((1, 3, Tq, Tk)).astype(f32)
    enc.attention_inputs(q, k, qo, True)["bias_full"].backward(gf)
    want = _C.fire_bwd(*[getattr(enc, nm).data for nm in NAMES], gf, qo)
    for nm, w in zip(NAMES, want):
        np.testing.assert_allclose(getattr(enc, nm).grad, w, rtol=0, err_msg=nm)


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
        ref.sandwich_vec(4 / (8.0 * np.arange(1, 5)), -2, 5), 3, 3), rtol=1e-5)


def test_fire_encoding_matches_twin(rng):
    enc = E.get("fire", n_heads=2, width=5, seed=7, init_L=3.0)
    p = [getattr(enc, n).data for n in NAMES]
    np.testing.assert_allclose(enc.bias_matrix(4, 6, 2), ref.fire_bias(*p, 4, 6, 2)[0], rtol=1e-5, atol=1e-6)
    assert enc.L.data[0] == 3.0 and abs(enc.c.data[0] - 0.1) < 1e-7
    assert E.get("fire", n_heads=2, max_len=64).L.data[0] == 64.0


# ---------------------------------------------------------------- threads

def test_bit_identical_across_threads(rng, threads):
    d0, n = window(3000, 9000, 100)  # H * n above the kernels' parallel threshold
    H = 4
    g = rng.standard_normal((H, n)).astype(f32)
    r1 = (rng.random(H) + 0.1).astype(f32)
    r2 = (rng.random(H) + 0.1).astype(f32)
    tab = rng.standard_normal((H, 32)).astype(f32)
    p = fire_params(rng, H=H, W=32, L=40.0)
    args = [p[k] for k in NAMES]
    gf = rng.standard_normal((1, H, 100, 120)).astype(f32)
    q = rng.standard_normal((2, 3, 24, 8)).astype(f32)
    k = rng.standard_normal((2, 3, 30, 8)).astype(f32)
    e = rng.standard_normal((12, 8)).astype(f32)
    gc = rng.standard_normal((2, 3, 24, 30)).astype(f32)

    def run():
        return ([_C.bias_alibi_fwd(r1, d0, n, True), _C.bias_alibi_bwd(g, d0, True),
                 _C.bias_t5_fwd(tab, d0, n, 128, True), _C.bias_t5_bwd(g, d0, 32, 128, True),
                 *_C.bias_kerple_bwd(r1, r2, g, d0, "power"), _C.bias_sandwich_fwd(r1, d0, n),
                 _C.fire_fwd(*args, 100, 120, 5), *_C.fire_bwd(*args, gf, 5),
                 _C.cope_fwd(q, k, e, 6, 0.3), *_C.cope_bwd(q, k, e, gc, 6, 0.3)])

    one = threads(1, run)
    two = threads(2, run)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- zero sizes

def test_zero_sizes():
    assert _C.bias_alibi_fwd(np.ones(2, f32), 0, 0).shape == (2, 0)
    assert _C.bias_alibi_fwd(np.ones(0, f32), 0, 5).shape == (0, 5)
    np.testing.assert_array_equal(_C.bias_t5_bwd(np.zeros((2, 0), f32), 0, 32, 128, True), np.zeros((2, 32)))
    np.testing.assert_array_equal(_C.bias_kerple_bwd(np.ones(2, f32), np.ones(2, f32), np.zeros((2, 0), f32), 0)[0],
                                  [0, 0])
    p = fire_params(np.random.default_rng(0))
    args = [p[k] for k in NAMES]
    assert _C.fire_fwd(*args, 0, 4).shape == (1, 2, 0, 4)
    assert _C.fire_fwd(*args, 3, 0).shape == (1, 2, 3, 0)
    np.testing.assert_array_equal(_C.fire_bwd(*args, np.zeros((1, 2, 0, 3), f32))[2], np.zeros((2, 6)))
    assert E.get("alibi", n_heads=2).bias_matrix(0, 0).shape == (2, 0, 0)
    assert E.get("t5", n_heads=2).bias_matrix(0, 3).shape == (2, 0, 3)


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
    with pytest.raises(TypeError, match="slopes"):
        _C.bias_alibi_fwd(np.ones(3), 0, 4)
    with pytest.raises(ValueError, match="slopes"):
        _C.bias_alibi_fwd(np.ones((3, 1), f32), 0, 4)
    with pytest.raises(ValueError, match="n "):
        _C.bias_alibi_fwd(s, 0, -1)
    with pytest.raises(ValueError, match="num_buckets"):
        _C.bias_t5_fwd(np.ones((2, 3), f32), 0, 4, 128, True)
    with pytest.raises(ValueError, match="max_distance"):
        _C.bias_t5_bwd(np.ones((2, 4), f32), 0, 32, 4, True)
    with pytest.raises(ValueError, match="r2"):
        _C.bias_kerple_fwd(s, np.ones(2, f32), 0, 4)
    with pytest.raises(ValueError, match="grad"):
        _C.bias_kerple_bwd(s, s, np.ones((2, 4), f32), 0)
    with pytest.raises(ValueError, match="variant"):
        _C.bias_kerple_fwd(s, s, 0, 4, "cubic")
    with pytest.raises(ValueError, match=r"r2 must be > 0 .* r2\[1\] = -0.5"):
        _C.bias_kerple_fwd(s, np.array([1.0, -0.5, 1.0], f32), 0, 4)
    with pytest.raises(ValueError, match="dim"):
        _C.bias_sandwich_fwd(s, 0, 4, 3)
    with pytest.raises(TypeError, match="relative_position"):
        t5_bucket(np.array([0.5, 1.0]))
    p = fire_params(np.random.default_rng(0))
    args = [p[k] for k in NAMES]
    bad = list(args)
    bad[2] = np.ones((2, 5), f32)
    with pytest.raises(ValueError, match="W2"):
        _C.fire_fwd(*bad, 3, 3)
    bad = list(args)
    bad[4] = np.ones(2, f32)
    with pytest.raises(ValueError, match="c must hold one value"):
        _C.fire_fwd(*bad, 3, 3)
    with pytest.raises(ValueError, match="q_offset"):
        _C.fire_fwd(*args, 3, 3, -1)
    bad = list(args)
    bad[4] = np.zeros(1, f32)
    with pytest.raises(ValueError, match="eps must be >= 0; got -1"):
        _C.fire_fwd(*args, 3, 3, 0, -1.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        _C.fire_fwd(*bad, 3, 3, 0, 0.0)
    assert np.isfinite(_C.fire_fwd(*bad, 3, 3, 0, 1e-6)).all()  # c = 0: a constant bias, no NaN
    with pytest.raises(ValueError, match="grad"):
        _C.fire_bwd(*args, np.ones((1, 3, 3, 3), f32))
    with pytest.raises(TypeError, match="W1"):
        _C.fire_fwd([1.0] * 6, *args[1:], 3, 3)


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
                         q.shape[2] + k.shape[2] - 1), q.shape[2], k.shape[2], QO)),
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


def test_fire_dead_units_and_shared_kinks(rng):
    # units with W1 = 0 (no kink), two units with the same kink, and one always off
    p = fire_params(rng, W=6, L=3.5)  # not an integer: max(L, i) has no tie
    p["W1"][:] = [0.0, 0.0, 1.0, 2.0, -1.5, 0.7]
    p["b1"][:] = [0.5, -0.5, -0.25, -0.5, 0.3, -0.2]
    args = [p[k] for k in NAMES]
    out = _C.fire_fwd(*args, 5, 5, 0)
    np.testing.assert_allclose(out, ref.fire_bias(*args, 5, 5, 0), rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(out.shape).astype(f32)
    grads = _C.fire_bwd(*args, g, 0)
    pd = {k: v.astype(np.float64) for k, v in p.items()}
    for name, got in zip(NAMES, grads):
        def loss(x, name=name):
            q = dict(pd)
            q[name] = x
            return (ref.fire_bias_param(q, 5, 5, 0) * g).sum()
        np.testing.assert_allclose(got, ref.numgrad(loss, pd[name]), rtol=2e-4, atol=2e-4, err_msg=name)
