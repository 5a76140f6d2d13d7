"""Channel A: sinusoidal table, learned absolute, complex word order, NoPE."""
import numpy as np
import pytest
import reference as ref

import relpos
from relpos import _C
from relpos import encodings as E
from relpos.encodings.absolute import sinusoidal_table

# ------------------------------------------------------------------ sinusoidal


@pytest.mark.parametrize("layout", ["interleaved", "concat"])
@pytest.mark.parametrize("d_model", [2, 8, 14])
def test_sinusoidal_table_matches_formula(layout, d_model):
    got = sinusoidal_table(9, d_model, offset=3, layout=layout)
    want = ref.sinusoidal(np.arange(3, 12), d_model, layout=layout)
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert got.dtype == np.float32


def test_sinusoidal_layouts_are_a_permutation_of_each_other():
    a = sinusoidal_table(5, 8, layout="interleaved")
    b = sinusoidal_table(5, 8, layout="concat")
    perm = np.r_[np.arange(0, 8, 2), np.arange(1, 8, 2)]
    np.testing.assert_array_equal(a[:, perm], b)
    # the paper's own formula for one element: PE(pos=3, 2k=2) = sin(3 / 10000^(2/8))
    assert a[3, 2] == pytest.approx(np.sin(3 / 10000 ** (2 / 8)), abs=1e-7)
    assert a[3, 3] == pytest.approx(np.cos(3 / 10000 ** (2 / 8)), abs=1e-7)


def test_sinusoidal_large_positions_and_explicit_positions():
    pos = np.array([0, 5, 1_000_000, 7])
    got = sinusoidal_table(4, 6, positions=pos, base=500.0)
    np.testing.assert_allclose(got, ref.sinusoidal(pos, 6, base=500.0), atol=1e-6)


def test_sinusoidal_bit_identical_one_and_two_threads(threads):
    a = threads(1, _C.sinusoidal_table, 301, 64, offset=17, layout="concat")
    b = threads(2, _C.sinusoidal_table, 301, 64, offset=17, layout="concat")
    assert np.array_equal(a, b)


def test_sinusoidal_encoding_embed_and_grad(rng):
    enc = E.get("sinusoidal", d_model=6, layout="concat")
    x = relpos.Tensor(rng.standard_normal((2, 4, 6)), requires_grad=True)
    y = enc.embed(x, np.arange(10, 14))
    np.testing.assert_allclose(y.data - x.data, np.broadcast_to(ref.sinusoidal(np.arange(10, 14), 6, "concat"),
                                                                (2, 4, 6)), atol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    np.testing.assert_array_equal(x.grad, g)


def test_sinusoidal_bad_inputs():
    with pytest.raises(ValueError, match="d_model must be even"):
        _C.sinusoidal_table(3, 5)
    with pytest.raises(ValueError, match="layout must be 'interleaved' or 'concat'"):
        _C.sinusoidal_table(3, 4, layout="stacked")
    with pytest.raises(ValueError, match="positions must have shape"):
        _C.sinusoidal_table(3, 4, positions=np.arange(4))
    with pytest.raises(ValueError, match="base must be"):
        _C.sinusoidal_table(3, 4, base=-1.0)
    with pytest.raises(ValueError, match="layout"):
        E.get("sinusoidal", layout="stacked")
    with pytest.raises(ValueError, match="even d_model"):
        E.get("sinusoidal", d_model=5)
    with pytest.raises(ValueError, match="needs d_model"):
        E.get("sinusoidal").embed(relpos.Tensor(np.zeros((1, 2, 4))), np.arange(2))
    assert _C.sinusoidal_table(0, 4).shape == (0, 4)


# ------------------------------------------------------------- learned absolute


def test_learned_embed_values_and_grad(rng):
    enc = E.get("learned", d_model=4, max_len=6, seed=1)
    assert enc.weight.shape == (6, 4)
    assert 0.005 < enc.weight.data.std() < 0.05  # N(0, 0.02^2)
    np.testing.assert_array_equal(E.get("learned", d_model=4, max_len=6, seed=1).weight.data, enc.weight.data)
    x = relpos.Tensor(rng.standard_normal((3, 3, 4)), requires_grad=True)
    pos = np.array([2, 0, 2])  # a repeated position accumulates
    y = enc.embed(x, pos)
    np.testing.assert_allclose(y.data, x.data + enc.weight.data[pos], rtol=1e-6)
    g = rng.standard_normal(y.shape)
    y.backward(g.astype(np.float32))
    want = np.zeros((6, 4))
    for t, p in enumerate(pos):
        want[p] += g[:, t].sum(0)
    np.testing.assert_allclose(enc.weight.grad, want, atol=1e-5)
    np.testing.assert_allclose(x.grad, g, atol=1e-7)
    assert [n for n, _ in enc.named_parameters()] == ["weight"]
    # consecutive positions (the fast path) give the same gradient rows
    enc.weight.grad = None
    y = enc.embed(x, np.arange(2, 5))
    y.backward(g.astype(np.float32))
    want = np.zeros((6, 4))
    want[2:5] = g.sum(0)
    np.testing.assert_allclose(enc.weight.grad, want, atol=1e-5)


def test_learned_past_max_len_says_the_numbers():
    enc = E.get("learned", d_model=4, max_len=8)
    x = relpos.Tensor(np.zeros((1, 10, 4), np.float32))
    with pytest.raises(ValueError, match=r"max_len - 1 = 7; got position 9") as info:
        enc.embed(x, np.arange(10))
    assert "clamp=True" in str(info.value)
    clamped = E.get("learned", d_model=4, max_len=8, clamp=True, seed=0)
    y = clamped.embed(x, np.arange(10))
    np.testing.assert_array_equal(y.data[0, 8], clamped.weight.data[7])
    np.testing.assert_array_equal(y.data[0, 9], clamped.weight.data[7])


def test_learned_bad_inputs():
    with pytest.raises(ValueError, match="needs d_model"):
        E.get("learned", max_len=4)
    with pytest.raises(ValueError, match="needs max_len"):
        E.get("learned", d_model=4)
    enc = E.get("learned", d_model=4, max_len=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=4\)"):
        enc.embed(relpos.Tensor(np.zeros((1, 2, 5))), np.arange(2))
    with pytest.raises(ValueError, match="positions must be >= 0"):
        enc.embed(relpos.Tensor(np.zeros((1, 2, 4))), np.array([-1, 0]))
    with pytest.raises(TypeError, match="positions must be integers"):
        enc.embed(relpos.Tensor(np.zeros((1, 2, 4))), np.array([0.0, 1.0]))


# ------------------------------------------------------------- complex order


def complex_tables(rng, V=5, d=3):
    r = rng.standard_normal((V, d)).astype(np.float32)
    om = rng.uniform(0, 1, (V, d)).astype(np.float32)
    th = rng.uniform(0, 6, (V, d)).astype(np.float32)
    return r, om, th


def test_complex_fwd_matches_reference(rng):
    r, om, th = complex_tables(rng)
    ids = np.array([[0, 4, 4, 2], [1, 1, 3, 0]])
    pos = np.array([3, 4, 5, 6])
    got = _C.complex_embed_fwd(ids, r, om, th, pos)
    np.testing.assert_allclose(got, ref.complex_embed(ids, pos, r, om, th), atol=2e-6)
    assert got.shape == (2, 4, 6)


def test_complex_bwd_matches_finite_differences(rng):
    r, om, th = complex_tables(rng)
    ids = np.array([[0, 4, 4, 2], [1, 4, 3, 0]])
    pos = np.array([0, 1, 7, 3])
    w = rng.standard_normal((2, 4, 6))
    dr, dom, dth = _C.complex_embed_bwd(ids, r, om, th, pos, w.astype(np.float32))
    r64, om64, th64 = (a.astype(np.float64) for a in (r, om, th))
    loss = lambda rr, oo, tt: float(np.sum(w * ref.complex_embed(ids, pos, rr, oo, tt)))
    np.testing.assert_allclose(dr, ref.numgrad(lambda z: loss(z, om64, th64), r64), atol=2e-5)
    np.testing.assert_allclose(dom, ref.numgrad(lambda z: loss(r64, z, th64), om64), atol=2e-5)
    np.testing.assert_allclose(dth, ref.numgrad(lambda z: loss(r64, om64, z), th64), atol=2e-5)


def test_complex_bwd_bit_identical_one_and_two_threads(rng, threads):
    V, d = 40, 37
    r, om, th = complex_tables(rng, V, d)
    ids = rng.integers(0, V, (3, 200))
    pos = np.arange(200)
    g = rng.standard_normal((3, 200, 2 * d)).astype(np.float32)
    a = threads(1, _C.complex_embed_bwd, ids, r, om, th, pos, g)
    b = threads(2, _C.complex_embed_bwd, ids, r, om, th, pos, g)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    f1 = threads(1, _C.complex_embed_fwd, ids, r, om, th, pos)
    f2 = threads(2, _C.complex_embed_fwd, ids, r, om, th, pos)
    assert np.array_equal(f1, f2)


def test_complex_bad_inputs(rng):
    r, om, th = complex_tables(rng)
    pos = np.arange(3)
    with pytest.raises(IndexError, match=r"ids contains 5 .*vocab_size = 5"):
        _C.complex_embed_fwd(np.array([[0, 5, 1]]), r, om, th, pos)
    with pytest.raises(IndexError, match=r"ids contains -1"):
        _C.complex_embed_bwd(np.array([[0, -1, 1]]), r, om, th, pos, np.zeros((1, 3, 6), np.float32))
    with pytest.raises(ValueError, match="omega must have shape"):
        _C.complex_embed_fwd(np.array([[0, 1, 1]]), r, om[:4], th, pos)
    with pytest.raises(ValueError, match="positions must have shape"):
        _C.complex_embed_fwd(np.array([[0, 1, 1]]), r, om, th, np.arange(4))
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        _C.complex_embed_fwd(np.array([[0.0, 1, 1]]), r, om, th, pos)
    with pytest.raises(ValueError, match="grad must have shape"):
        _C.complex_embed_bwd(np.array([[0, 1, 1]]), r, om, th, pos, np.zeros((1, 3, 5), np.float32))
    assert _C.complex_embed_fwd(np.zeros((0, 3), np.int64), r, om, th, pos).shape == (0, 3, 6)
    with pytest.raises(ValueError, match="needs vocab_size"):
        E.get("complex", d_model=8)
    with pytest.raises(ValueError, match="combine"):
        E.get("complex", d_model=8, vocab_size=4, combine="sum")
    with pytest.raises(ValueError, match="ids"):
        E.get("complex", d_model=8, vocab_size=4).embed(None, np.arange(3))


@pytest.mark.parametrize("combine", ["concat", "project"])
def test_complex_encoding_end_to_end_gradients(rng, combine):
    enc = E.get("complex", d_model=4, vocab_size=6, combine=combine, seed=3)
    assert enc.replaces_token_embedding
    ids = np.array([[1, 5, 1], [0, 2, 5]])
    pos = np.array([2, 3, 4])
    y = enc.embed(None, pos, ids)
    assert y.shape == (2, 3, 4)
    w = rng.standard_normal(y.shape)
    params = dict(enc.named_parameters())
    p64 = {k: v.data.astype(np.float64) for k, v in params.items()}

    def f(name, z):
        q = dict(p64, **{name: z})
        out = ref.complex_embed(ids, pos, q["r"], q["omega"], q["theta"])
        if combine == "project":
            out = out @ q["proj"]
        return float(np.sum(w * out))

    np.testing.assert_allclose(y.data, (ref.complex_embed(ids, pos, p64["r"], p64["omega"], p64["theta"])
                                        @ (p64["proj"] if combine == "project" else np.eye(4))), atol=1e-6)
    y.backward(w.astype(np.float32))
    for name, p in params.items():
        want = ref.numgrad(lambda z: f(name, z), p64[name])
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(p.grad, want, atol=2e-5 * scale, err_msg=name)


# --------------------------------------------------------------------- NoPE


def test_nope_is_identity_and_causal_only():
    enc = E.get("none")
    x = relpos.Tensor(np.ones((1, 2, 4), np.float32))
    assert enc.embed(x, np.arange(2)) is x
    with pytest.raises(ValueError, match="causal"):
        enc.check_causal(False)
    with pytest.raises(ValueError, match="unknown option"):
        E.get("none", layout="x")
    with pytest.raises(ValueError, match="unknown option"):
        E.get("learned", max_length=5, d_model=4)


def test_registry_lists_channel_a_and_r():
    names = {row["name"]: row for row in E.available()}
    for n in ("none", "sinusoidal", "learned", "complex"):
        assert names[n]["channel"] == "A"
    for n in ("rope", "xpos"):
        assert names[n]["channel"] == "R"
    assert names["none"]["causal only"] == "yes" and names["xpos"]["causal only"] == "yes"
    assert names["learned"]["learnable"] == "weight"


def test_complex_bridge_keeps_reference_counts(rng):
    import sys

    r, om, th = complex_tables(rng)
    ids = np.array([[0, 1, 2]])
    pos = np.arange(3)
    g = np.ones((1, 3, 6), np.float32)
    before = [sys.getrefcount(a) for a in (r, om, th, ids, pos, g)]
    for _ in range(100):
        _C.complex_embed_fwd(ids, r, om, th, pos)
        _C.complex_embed_bwd(ids, r, om, th, pos, g)
        with pytest.raises(IndexError):
            _C.complex_embed_fwd(ids + 4, r, om, th, pos)
        with pytest.raises(ValueError):
            _C.complex_embed_bwd(ids, r, om, th, pos, g[..., :5])
    assert [sys.getrefcount(a) for a in (r, om, th, ids, pos, g)] == before
