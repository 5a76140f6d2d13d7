"""Channel R: RoPE tables, the rotary transform (both layouts, partial, xPos
scale) and its backward, the scalings (PI / NTK / dynamic NTK / YaRN / Llama 3 / LongRoPE),
switching a built encoding's scaling, the rope/xpos encodings."""
import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import relpos
from relpos import _C
from relpos import encodings as E
from relpos.encodings.rotary import (
    rope_angles,
    rope_encodings,
    rope_inv_freq,
    rope_scaling,
    xpos_scale,
    yarn_ramp,
)

LAYOUTS = ["interleaved", "half"]


def tables(T, rotary_dim, offset=0, base=10000.0):
    ang = rope_angles(T, rotary_dim, base=base, offset=offset)
    c, s = _C.rope_tables(rope_inv_freq(rotary_dim, base), T, offset=offset)
    return ang, c, s


# ------------------------------------------------------------------ tables


def test_rope_tables_match_float64():
    ang, c, s = tables(7, 10, offset=3)
    np.testing.assert_allclose(c, np.cos(ang), atol=1e-7, rtol=0)
    np.testing.assert_allclose(s, np.sin(ang), atol=1e-7, rtol=0)
    assert c.dtype == np.float32 and c.shape == (7, 5)


def test_rope_angles_at_position_1e6_within_1e6_rad():
    inv = rope_inv_freq(64)
    pos0 = 1_000_000
    c, s = _C.rope_tables(inv, 4, offset=pos0)
    exact = (np.arange(4, dtype=np.float64)[:, None] + pos0) * inv[None, :]
    got = np.arctan2(s.astype(np.float64), c.astype(np.float64))
    err = np.abs(np.angle(np.exp(1j * (got - exact))))  # wrapped difference
    assert err.max() < 1e-6
    # the naive float32 product misses by far more: the test can tell them apart
    naive = (np.float32(pos0) * inv.astype(np.float32)).astype(np.float64)
    assert np.abs(np.angle(np.exp(1j * (naive - exact[0])))).max() > 1e-3


def test_pi_linear_scaling_divides_positions():
    s = 4.0
    ang = rope_angles(9, 16, offset=5, scaling="linear", scaling_factor=s)
    plain = (np.arange(9)[:, None] + 5) / s * ref.rope_inv_freq_paper(16)[None, :]
    np.testing.assert_allclose(ang, plain, rtol=1e-14)
    enc = E.get("rope", head_dim=16, scaling="linear", scaling_factor=s)
    c, sn = enc.tables(9, 5, 16)
    np.testing.assert_allclose(c, np.cos(plain), atol=1e-7)
    np.testing.assert_allclose(sn, np.sin(plain), atol=1e-7)


def test_ntk_base_formula():
    d, s = 32, 8.0
    got = rope_inv_freq(d, base=10000.0, scaling="ntk", scaling_factor=s)
    base2 = 10000.0 * s ** (d / (d - 2))
    np.testing.assert_allclose(got, base2 ** (-np.arange(0, d, 2) / d), rtol=1e-13)
    np.testing.assert_allclose(got, ref.rope_inv_freq_paper(d, scaling="ntk", s=s), rtol=1e-13)
    # the lowest frequency is exactly the original divided by s (the NTK design point)
    np.testing.assert_allclose(got[-1] / rope_inv_freq(d)[-1], s ** (-(d - 2) / (d - 2)), rtol=1e-12)


@pytest.mark.parametrize("d,L,s", [(64, 2048, 4.0), (128, 4096, 16.0), (32, 512, 2.0)])
def test_yarn_matches_paper_rederivation(d, L, s):
    got = rope_inv_freq(d, scaling="yarn", scaling_factor=s, original_max_len=L)
    want = ref.rope_inv_freq_paper(d, scaling="yarn", s=s, L=L, alpha=1.0, beta=32.0)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    # high frequencies kept, low frequencies interpolated by s
    theta = rope_inv_freq(d)
    assert got[0] == theta[0]
    np.testing.assert_allclose(got[-1], theta[-1] / s, rtol=1e-13)


def test_yarn_hf_ramp_endpoints_and_difference_from_paper():
    d, L = 64, 2048
    g_hf = yarn_ramp(d, original_max_len=L, ramp="hf")
    g_pp = yarn_ramp(d, original_max_len=L, ramp="paper")
    assert g_hf[0] == 1.0 and g_hf[-1] == 0.0 and g_pp[0] == 1.0 and g_pp[-1] == 0.0
    assert np.all(np.diff(g_hf) <= 0) and np.all(np.diff(g_pp) <= 0)
    # HF is linear in the pair index between floor/ceil endpoints, the paper in rotations
    k = np.arange(d // 2)
    idx = lambda n: d * math.log(L / (n * 2 * math.pi)) / (2 * math.log(10000.0))
    low, high = math.floor(idx(32)), math.ceil(idx(1))
    np.testing.assert_allclose(g_hf, 1 - np.clip((k - low) / (high - low), 0, 1), rtol=1e-14)
    assert np.abs(g_hf - g_pp).max() > 0.05


def test_yarn_attention_scale():
    q = relpos.Tensor(np.zeros((1, 1, 2, 16), np.float32))
    m = 0.1 * math.log(8.0) + 1
    enc = E.get("rope", head_dim=16, scaling="yarn", scaling_factor=8.0, original_max_len=256,
                attention_scaling="logits")
    assert enc.attention_inputs(q, q)["scale"] == pytest.approx(m ** 2 / 4.0, rel=1e-12)
    # default (HF, the authors' code): cos and sin carry m, the logit scale is untouched
    enc = E.get("rope", head_dim=16, scaling="yarn", scaling_factor=8.0, original_max_len=256)
    assert enc.attention_inputs(q, q) == {}
    c, s = enc.tables(5, 3, 16)
    np.testing.assert_allclose(np.hypot(c, s), m, rtol=1e-6)
    assert E.get("rope", head_dim=16).attention_inputs(q, q) == {}


# ----------------------------------------------------------- Llama 3, dynamic NTK, LongRoPE


def test_llama3_matches_meta_rule_and_llama31_facts():
    # Llama 3.1: head dim 128, base 500000, factor 8, low 1, high 4, original context 8192
    d, base, s, L = 128, 500000.0, 8.0, 8192
    got = rope_inv_freq(d, base, scaling="llama3", scaling_factor=s, original_max_len=L,
                        low_freq_factor=1.0, high_freq_factor=4.0)
    np.testing.assert_allclose(got, ref.rope_inv_freq_paper(d, base, "llama3", s, L, low=1.0, high=4.0), rtol=1e-13)
    plain = rope_inv_freq(d, base)
    wavelen = 2 * np.pi / plain
    # wavelengths under 8192/4 = 2048 tokens keep their frequency, over 8192 are divided by 8:
    # λ_k = 2π·500000^(k/64) crosses 2048 between k = 28 and 29, 8192 between k = 34 and 35
    assert wavelen[28] < 2048 < wavelen[29] and wavelen[34] < 8192 < wavelen[35]
    np.testing.assert_array_equal(got[:29], plain[:29])
    np.testing.assert_allclose(got[35:], plain[35:] / 8, rtol=1e-15)
    assert got[0] == 1.0 and got[63] == pytest.approx(500000.0 ** (-126 / 128) / 8, rel=1e-14)
    # the 6 middle pairs blend, each strictly between θ/8 and θ
    mid = slice(29, 35)
    assert np.all(got[mid] < plain[mid]) and np.all(got[mid] > plain[mid] / 8)
    # angles at position 131071 (the extended context's last): fast pairs as trained, slow ones as at 131071/8
    ang = rope_angles(1, d, base, offset=131071, scaling="llama3", scaling_factor=s, original_max_len=L)[0]
    np.testing.assert_allclose(ang[:29], 131071 * plain[:29], rtol=1e-14)
    np.testing.assert_allclose(ang[35:], (131071 / 8) * plain[35:], rtol=1e-14)


@pytest.mark.parametrize("s", [1.0, 2.0, 4.0])
def test_dynamic_ntk_matches_formula(s):
    d, L = 16, 64
    for n in (10, 64, 65, 128, 500):
        got = rope_inv_freq(d, scaling="dynamic", scaling_factor=s, original_max_len=L, seq_len=n)
        np.testing.assert_allclose(got, ref.rope_inv_freq_paper(d, scaling="dynamic", s=s, L=L, seq_len=n),
                                   rtol=1e-13)
    # nothing changes up to the training length
    np.testing.assert_array_equal(rope_inv_freq(d, scaling="dynamic", scaling_factor=s, original_max_len=L,
                                                seq_len=64), rope_inv_freq(d))
    # with factor 1, dynamic NTK at length n is NTK-aware scaling with s = n / L
    if s == 1.0:
        np.testing.assert_allclose(rope_inv_freq(d, scaling="dynamic", scaling_factor=1.0, original_max_len=L,
                                                 seq_len=256),
                                   rope_inv_freq(d, scaling="ntk", scaling_factor=4.0), rtol=1e-13)


def test_dynamic_ntk_uses_the_length_of_each_call():
    enc = E.get("rope", head_dim=8, scaling="dynamic", scaling_factor=2.0, original_max_len=4)
    c6, _ = enc.tables(6, 0, 8)
    c3, _ = enc.tables(3, 3, 8)       # the same positions 3..5, same length 6: same angles
    np.testing.assert_array_equal(c6[3:], c3)
    c2, _ = enc.tables(2, 0, 8)       # length 2 <= 4: the trained base
    np.testing.assert_array_equal(c2, E.get("rope", head_dim=8).tables(2, 0, 8)[0])
    assert not np.allclose(c6[:2], c2)  # the same positions 0, 1 in a longer call turn slower


def test_longrope_switches_factors_at_the_training_length():
    d, L = 8, 16
    short, long_ = [1.0, 1.1, 1.3, 1.5], [1.0, 2.0, 5.0, 9.0]
    enc = E.get("rope", head_dim=d, scaling="longrope", scaling_factor=8.0, original_max_len=L,
                short_factor=short, long_factor=long_)
    np.testing.assert_allclose(enc.frequencies(d, 16), ref.rope_inv_freq_paper(d, scaling="longrope", L=L,
                               seq_len=16, short=short, long=long_), rtol=1e-14)
    np.testing.assert_allclose(enc.frequencies(d, 17), rope_inv_freq(d) / np.array(long_), rtol=1e-14)
    # attention factor sqrt(1 + ln s / ln L0): s = 8, L0 = 16 -> sqrt(1 + 3/4)
    assert enc.attention_factor_value() == pytest.approx(math.sqrt(1.75), rel=1e-14)
    # Phi-3-mini-128k (original 4096, extended 131072, s = 32): sqrt(1 + 5/12)
    phi = E.get("rope", head_dim=96, scaling="longrope", scaling_factor=32.0, original_max_len=4096,
                short_factor=[1.0] * 48, long_factor=[1.0] * 48)
    assert phi.attention_factor_value() == pytest.approx(math.sqrt(17 / 12), rel=1e-14)
    with pytest.raises(ValueError, match="short_factor and long_factor"):
        E.get("rope", head_dim=d, scaling="longrope", original_max_len=L)
    bad = E.get("rope", head_dim=d, scaling="longrope", original_max_len=L, short_factor=[1.0] * 3,
                long_factor=long_)
    with pytest.raises(ValueError, match="short_factor must have rotary_dim/2 = 4 entries; got 3"):
        bad.tables(4, 0, d)


def _hf_inv_freqs(torch, kind, d, base, s, L, seq_len=None, **kw):
    """HF transformers' modeling_rope_utils rules, written here in torch as HF computes them."""
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float64) / d))
    if kind == "dynamic":
        n = seq_len if seq_len is not None and seq_len > L else L
        b = base * ((s * n / L) - (s - 1)) ** (d / (d - 2))
        return 1.0 / (b ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float64) / d))
    if kind == "llama3":
        low, high = kw["low"], kw["high"]
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > L / low, inv / s, inv)
        g = (L / wavelen - low) / (high - low)
        smoothed = (1 - g) * out / s + g * out
        mid = ~(wavelen < L / high) * ~(wavelen > L / low)
        return torch.where(mid, smoothed, out)
    if kind == "yarn":
        def dim_of(n_rot):
            return (d * math.log(L / (n_rot * 2 * math.pi))) / (2 * math.log(base))
        low = max(math.floor(dim_of(32)), 0)
        high = min(math.ceil(dim_of(1)), d - 1)
        ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        return (inv / s) * (1 - extra) + inv * extra
    if kind == "longrope":
        ext = torch.tensor(kw["long"] if seq_len > L else kw["short"], dtype=torch.float64)
        return 1.0 / (ext * base ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float64) / d))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["dynamic", "llama3", "yarn", "longrope"])
def test_scalings_match_hf_rules_in_torch(kind):
    torch = pytest.importorskip("torch")
    d, base, s, L = 32, 10000.0, 4.0, 256
    kw = dict(low=1.0, high=4.0, short=list(np.linspace(1, 1.5, 16)), long=list(np.linspace(1, 6, 16)))
    for n in (100, 256, 1024):
        enc = E.get("rope", head_dim=d, scaling=kind, scaling_factor=s, original_max_len=L, yarn_ramp="hf",
                    short_factor=kw["short"], long_factor=kw["long"])
        got = enc.frequencies(d, n)
        want = _hf_inv_freqs(torch, kind, d, base, s, L, seq_len=n, **kw).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_partial_rotary_attention_factor_as_hf(rng, layout):
    """attention_scaling="rotary" (default): q·k = m²·(rotated part) + (pass-through part), as HF,
    which multiplies cos and sin by m; "logits": m² on the whole q·k."""
    B, H, T, D, rd, s = 1, 2, 5, 8, 4, 16.0
    m = 0.1 * math.log(s) + 1
    q, k, v = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(3))
    F = relpos.functional
    plain = E.get("rope", head_dim=D, rotary_dim=rd, layout=layout)
    ang = rope_angles(T, rd, scaling="yarn", scaling_factor=s, original_max_len=4)
    qr = ref.rotary(q, ang, rd, layout)
    kr = ref.rotary(k, ang, rd, layout)
    rot = qr[..., :rd] @ np.swapaxes(kr[..., :rd], -1, -2)
    rest = qr[..., rd:] @ np.swapaxes(kr[..., rd:], -1, -2)
    for mode, logits in (("rotary", m * m * rot + rest), ("logits", m * m * (rot + rest))):
        enc = plain.with_scaling("yarn", s, original_max_len=4, attention_scaling=mode)
        out, w = F.attention(relpos.Tensor(q), relpos.Tensor(k), relpos.Tensor(v), encoding=enc,
                             return_weights=True)
        _, want = ref.softmax_attention(logits / math.sqrt(D), v)
        np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)
    # the encoding it was copied from is untouched
    assert plain.scaling is None


def test_set_scaling_on_a_trained_model_needs_no_rebuild(rng):
    ids = rng.integers(0, 50, (2, 24))
    model = relpos.nn.TransformerLM(50, d_model=16, n_layers=2, n_heads=2, encoding="rope", max_len=8, seed=3)
    before = model(ids).data.copy()
    encs = rope_encodings(model)
    assert len(encs) == 2 and all(e.max_len == 8 for e in encs)
    built = relpos.nn.TransformerLM(50, d_model=16, n_layers=2, n_heads=2, encoding="rope", max_len=8, seed=3,
                                    scaling="yarn", scaling_factor=3.0)
    want = built(ids).data
    with rope_scaling(model, "yarn", 3.0) as changed:   # original_max_len = max_len = 8
        assert changed == encs and encs[0].original_max_len == 8
        np.testing.assert_array_equal(model(ids).data, want)
    np.testing.assert_array_equal(model(ids).data, before)
    assert encs[0].scaling is None
    # restored on error too
    with pytest.raises(RuntimeError):
        with rope_scaling(model, "pi", 2.0):
            raise RuntimeError("boom")
    np.testing.assert_array_equal(model(ids).data, before)
    with pytest.raises(ValueError, match="has no RoPE"):
        with rope_scaling(relpos.nn.TransformerLM(50, d_model=16, n_heads=2, encoding="alibi"), "pi", 2.0):
            pass
    with pytest.raises(ValueError, match="unknown scaling option"):
        encs[0].set_scaling("yarn", 2.0, beta=3)
    with pytest.raises(ValueError, match="needs original_max_len"):
        E.get("rope", head_dim=8).set_scaling("llama3", 4.0)


def test_dynamic_ntk_kv_cache_inconsistency_is_as_documented(rng):
    # greedy decoding with a cache vs the full sequence: equal for a static scaling, different for
    # dynamic NTK once the sequence passes original_max_len (cached keys keep their old base)
    ids = rng.integers(0, 40, (1, 12))
    for scaling, same in (("ntk", True), ("dynamic", False)):
        model = relpos.nn.TransformerLM(40, d_model=16, n_layers=1, n_heads=2, encoding="rope", max_len=6, seed=1,
                                        scaling=scaling, scaling_factor=2.0, original_max_len=6)
        for p in model.parameters():  # larger weights than the init, so that angles matter
            p.data[...] = rng.normal(0, 0.5, p.shape).astype(np.float32)
        full = model(ids).data[0, -1]
        cache = model.new_cache()
        model(ids[:, :6], cache=cache)
        for t in range(6, 12):  # one token at a time, as generate() does
            step = model(ids[:, t:t + 1], cache=cache).data[0, -1]
        diff = np.abs(step - full).max()
        assert (diff < 2e-5) if same else (diff > 1e-3), (scaling, diff)


# ----------------------------------------------------------- rotary transform


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,rd", [((2, 3, 5, 8), 8), ((1, 2, 4, 10), 6), ((3, 7, 6), 4), ((2, 1, 3, 6), 0)])
def test_rotary_fwd_matches_reference(rng, layout, shape, rd):
    T = shape[-2]
    x = rng.standard_normal(shape).astype(np.float32)
    x0 = x.copy()
    ang = rope_angles(T, rd, offset=11) if rd else np.zeros((T, 0))
    c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    y = _C.rotary_fwd(x, c, s, rotary_dim=rd, layout=layout)
    np.testing.assert_allclose(y, ref.rotary(x, ang, rd, layout), atol=2e-6)
    np.testing.assert_array_equal(x, x0)  # input untouched
    assert np.array_equal(y[..., rd:], x[..., rd:])  # partial rotary: the tail passes through bit for bit


@settings(max_examples=30, deadline=None)
@given(N=st.integers(0, 3), T=st.integers(0, 5), half_rd=st.integers(0, 4), extra=st.integers(0, 3),
       offset=st.integers(0, 200_000), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_rotary_fwd_bwd_any_shape_and_offset(N, T, half_rd, extra, offset, layout, seed):
    rng = np.random.default_rng(seed)
    rd, D = 2 * half_rd, 2 * half_rd + extra
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    ang = rope_angles(T, rd, offset=offset) if rd else np.zeros((T, 0))
    c, s = _C.rope_tables(rope_inv_freq(rd) if rd else np.zeros(0), T, offset=offset)
    y = _C.rotary_fwd(x, c, s, rotary_dim=rd, layout=layout)
    np.testing.assert_allclose(y, ref.rotary(x, ang, rd, layout), atol=5e-6)
    # the backward is the inverse rotation: it undoes the forward
    np.testing.assert_allclose(_C.rotary_bwd(y, c, s, rotary_dim=rd, layout=layout), x, atol=5e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rotary_fwd_with_scale_matches_reference(rng, layout):
    x = rng.standard_normal((2, 2, 6, 8)).astype(np.float32)
    ang = rope_angles(6, 8, offset=2)
    sc = xpos_scale(6, 8, offset=2, center=3.0)
    y = _C.rotary_fwd(x, np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32), layout=layout, scale=sc)
    want = ref.rotary(x, ang, 8, layout, scale=ref.xpos_scale(np.arange(2, 8), 8, center=3.0))
    np.testing.assert_allclose(y, want, atol=2e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_scale", [False, True])
def test_rotary_bwd_matches_finite_differences(rng, layout, with_scale):
    shape, rd = (1, 2, 3, 6), 4
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape)
    ang = rope_angles(3, rd, offset=4)
    sc64 = ref.xpos_scale(np.arange(4, 7), rd, center=40.0, scale_base=8.0) if with_scale else None
    f = lambda z: float(np.sum(w * ref.rotary(z, ang, rd, layout, scale=sc64)))
    want = ref.numgrad(f, x)
    c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    sc = sc64.astype(np.float32) if with_scale else None
    got = _C.rotary_bwd(w.astype(np.float32), c, s, rotary_dim=rd, layout=layout, scale=sc)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rotary_in_place_and_out(rng):
    x = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)
    _, c, s = tables(4, 8)
    want = _C.rotary_fwd(x, c, s)
    buf = x.copy()
    got = _C.rotary_fwd(buf, c, s, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, want)


def test_zero_size_dims(rng):
    for shape in [(0, 2, 3, 4), (1, 0, 3, 4), (1, 2, 0, 4)]:
        _, c, s = tables(shape[2], 4)
        x = np.zeros(shape, np.float32)
        assert _C.rotary_fwd(x, c, s).shape == shape
        assert _C.rotary_bwd(x, c, s).shape == shape


def test_zero_size_tables():
    c, s = _C.rope_tables(rope_inv_freq(8), 0, offset=3)
    assert c.shape == s.shape == (0, 4)
    c, s = _C.rope_tables(np.zeros(0), 5)
    assert c.shape == (5, 0)
    assert xpos_scale(0, 8).shape == (0, 4)


def test_interleaved_equals_half_after_permutation(rng):
    D = 8
    perm = np.r_[np.arange(0, D, 2), np.arange(1, D, 2)]  # [0,2,4,6,1,3,5,7]
    x = rng.standard_normal((2, 3, 5, D)).astype(np.float32)
    _, c, s = tables(5, D, offset=7)
    inter = _C.rotary_fwd(x, c, s, layout="interleaved")
    half = _C.rotary_fwd(np.ascontiguousarray(x[..., perm]), c, s, layout="half")
    np.testing.assert_array_equal(inter[..., perm], half)


def test_partial_rotary_permutation_only_on_rotated_part(rng):
    D, rd = 10, 6
    perm = np.r_[np.arange(0, rd, 2), np.arange(1, rd, 2), np.arange(rd, D)]
    x = rng.standard_normal((1, 2, 4, D)).astype(np.float32)
    _, c, s = tables(4, rd)
    inter = _C.rotary_fwd(x, c, s, rotary_dim=rd, layout="interleaved")
    half = _C.rotary_fwd(np.ascontiguousarray(x[..., perm]), c, s, rotary_dim=rd, layout="half")
    np.testing.assert_array_equal(inter[..., perm], half)


def test_bit_identical_one_and_two_threads(rng, threads):
    x = rng.standard_normal((3, 4, 33, 48)).astype(np.float32)  # above the one-thread cutoff
    inv = rope_inv_freq(12)
    sc = xpos_scale(33, 12, center=10.0)
    for layout in LAYOUTS:
        run = lambda: (_C.rope_tables(inv, 1000, offset=5), xpos_scale(1000, 12, center=300.0),
                       _C.rotary_fwd(x, *_C.rope_tables(inv, 33), rotary_dim=12, layout=layout, scale=sc),
                       _C.rotary_bwd(x, *_C.rope_tables(inv, 33), rotary_dim=12, layout=layout, scale=sc))
        a, b = threads(1, run), threads(2, run)
        for u, v in zip(a, b):
            for p, q in zip(u if isinstance(u, tuple) else (u,), v if isinstance(v, tuple) else (v,)):
                assert np.array_equal(p, q)


# ----------------------------------------------------------- the encodings


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_encoding_autograd_matches_reference(rng, layout):
    enc = E.get("rope", head_dim=8, rotary_dim=6, layout=layout, base=100.0)
    q = relpos.Tensor(rng.standard_normal((1, 2, 3, 8)), requires_grad=True)
    y = enc.rotate_q(q, offset=5)
    ang = rope_angles(3, 6, base=100.0, offset=5)
    np.testing.assert_allclose(y.data, ref.rotary(q.data, ang, 6, layout), atol=2e-6)
    w = rng.standard_normal(y.shape)
    y.backward(w.astype(np.float32))
    want = ref.numgrad(lambda z: float(np.sum(w * ref.rotary(z, ang, 6, layout))), q.data.astype(np.float64))
    np.testing.assert_allclose(q.grad, want, atol=1e-5)


def _logits(enc, q, k, q_off, k_off):
    qr = enc.rotate_q(relpos.Tensor(q), q_off).data.astype(np.float64)
    kr = enc.rotate_k(relpos.Tensor(k), k_off).data.astype(np.float64)
    return qr @ np.swapaxes(kr, -1, -2)


@settings(max_examples=25, deadline=None)
@given(shift=st.integers(0, 5000), layout=st.sampled_from(LAYOUTS), rd=st.sampled_from([4, 8]),
       seed=st.integers(0, 2**16))
def test_rope_logits_depend_on_distance_only(shift, layout, rd, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    enc = E.get("rope", head_dim=8, rotary_dim=rd, layout=layout)
    a = _logits(enc, q, k, 3, 0)
    b = _logits(enc, q, k, 3 + shift, shift)
    np.testing.assert_allclose(a, b, atol=2e-4 * max(1.0, np.abs(a).max()))


def test_xpos_logits_decay_as_zeta_power_of_distance(rng):
    D, B = 8, 16.0
    enc = E.get("xpos", head_dim=D, scale_base=B, center=1000)
    plain = E.get("rope", head_dim=D)
    q = rng.standard_normal((1, 1, 3, D)).astype(np.float32)
    k = rng.standard_normal((1, 1, 6, D)).astype(np.float32)
    qo, ko = 1003, 1000
    got = _logits(enc, q, k, qo, ko)
    # reference: rotate in float64, then weight each pair by ζ_k^((i-j)/B)
    ang_q = rope_angles(3, D, offset=qo)
    ang_k = rope_angles(6, D, offset=ko)
    qr = ref.rotary(q, ang_q, D, "interleaved", scale=ref.xpos_scale(np.arange(qo, qo + 3), D, 1000, 0.4, B))
    kr = ref.rotary(k, ang_k, D, "interleaved",
                    scale=ref.xpos_scale(np.arange(ko, ko + 6), D, 1000, 0.4, B, inverse=True))
    np.testing.assert_allclose(got, qr @ np.swapaxes(kr, -1, -2), rtol=1e-4, atol=1e-5)
    # and the shift property still holds for xPos (the centre cancels)
    shifted = _logits(enc, q, k, qo + 300, ko + 300)
    np.testing.assert_allclose(got, shifted, rtol=1e-3, atol=1e-4)
    assert not np.allclose(got, _logits(plain, q, k, qo, ko), atol=1e-3)


def test_xpos_scale_finite_at_T_100000():
    T, d = 100_000, 16
    sq = xpos_scale(T, d, center=T // 2)
    sk = xpos_scale(T, d, center=T // 2, inverse=True)
    assert np.all(np.isfinite(sq)) and np.all(np.isfinite(sk)) and np.all(sq > 0) and np.all(sk > 0)
    # exact (to float32) inside the window |p - c| <= 80 B / |ln ζ_0|
    window = int(80 * 512 / abs(math.log(0.4 / 1.4)))
    rows = np.arange(T // 2 - window + 1, T // 2 + window, 997)
    np.testing.assert_allclose(sq[rows], ref.xpos_scale(rows, d, center=T // 2), rtol=1e-5)
    # causal products q_i·k_j (i >= j) never exceed 1, even past the window
    i, j = np.array([T - 1, T - 1, 60000]), np.array([0, T - 2, 59999])
    prod = sq[i].astype(np.float64) * sk[j]
    assert np.all(prod <= 1.0 + 1e-6) and np.all(np.isfinite(prod))
    # the encoding itself at this length: finite output
    enc = E.get("xpos", head_dim=d, max_len=T)
    q = relpos.Tensor(np.ones((1, 1, T, d), np.float32))
    assert np.all(np.isfinite(enc.rotate_q(q, 0).data)) and np.all(np.isfinite(enc.rotate_k(q, 0).data))


def test_rope_kv_cache_offsets_match_full_rotation(rng):
    enc = E.get("rope", head_dim=8, layout="half")
    k = relpos.Tensor(rng.standard_normal((1, 2, 7, 8)))
    full = enc.rotate_k(k, 0).data
    tail = enc.rotate_k(relpos.Tensor(k.data[:, :, 4:]), 4).data
    np.testing.assert_array_equal(full[:, :, 4:], tail)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_core(rng):
    x = rng.standard_normal((1, 1, 3, 8)).astype(np.float32)
    _, c, s = tables(3, 8)
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        _C.rotary_fwd(x, c, s, rotary_dim=7)
    _, c10, s10 = tables(3, 10)
    with pytest.raises(ValueError, match=r"rotary_dim \(10\) must be <= the head dim"):
        _C.rotary_fwd(x, c10, s10)
    with pytest.raises(ValueError, match="cos must have shape"):
        _C.rotary_fwd(x, c[:2], s[:2])
    with pytest.raises(ValueError, match="sin must have shape"):
        _C.rotary_fwd(x, c, s[:, :3])
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.rotary_fwd(x.astype(np.float64), c, s)
    with pytest.raises(ValueError, match="layout must be 'interleaved' or 'half'"):
        _C.rotary_fwd(x, c, s, layout="neox")
    with pytest.raises(ValueError, match="scale must have shape"):
        _C.rotary_fwd(x, c, s, scale=np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        _C.rotary_fwd(x, c, s, out=np.zeros((1, 1, 3, 7), np.float32))
    with pytest.raises(TypeError, match="inv_freq"):
        _C.rope_tables(np.arange(3), 4)
    with pytest.raises(ValueError, match="T must be >= 0"):
        _C.rope_tables(np.ones(3), -1)


def test_bad_inputs_encodings():
    with pytest.raises(ValueError, match="rotary_dim must be a positive even int"):
        E.get("rope", rotary_dim=7)
    with pytest.raises(ValueError, match=r"rotary_dim \(16\) must be <= head_dim \(8\)"):
        E.get("rope", rotary_dim=16, head_dim=8)
    with pytest.raises(ValueError, match="unknown option"):
        E.get("rope", rotary_dims=8)
    with pytest.raises(ValueError, match="layout"):
        E.get("rope", layout="neox")
    with pytest.raises(ValueError, match="scaling must be one of"):
        E.get("rope", scaling="dynamics")
    with pytest.raises(ValueError, match="original_max_len"):
        E.get("rope", scaling="yarn", scaling_factor=4.0)
    with pytest.raises(ValueError, match="scaling_factor"):
        E.get("rope", scaling="linear", scaling_factor=0.5)
    for name in ("xpos", "none"):
        with pytest.raises(ValueError, match="causal"):
            E.get(name).check_causal(False)
        E.get(name).check_causal(True)
    E.get("rope").check_causal(False)
    enc = E.get("rope")
    q = relpos.Tensor(np.zeros((1, 1, 2, 7), np.float32))
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        enc.rotate_q(q)
    with pytest.raises(ValueError, match=r"head dim D \(8\) differs from the encoding's head_dim \(16\)"):
        E.get("rope", head_dim=16).rotate_k(relpos.Tensor(np.zeros((1, 1, 2, 8), np.float32)))
    with pytest.raises(ValueError, match=r"offset must be in \[0, 2\*\*60\]"):
        E.get("rope").rotate_q(relpos.Tensor(np.zeros((1, 1, 2, 8), np.float32)), -1)
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        E.get("rope").rotate_q(relpos.Tensor(np.zeros((2, 8), np.float32)))


# ------------------------------------------------------------------- torch


def _torch_rope(x, pos, d, base, layout):
    """RoPE written the usual torch way (float32 sin/cos of float32 angles, as most code does)."""
    torch = pytest.importorskip("torch")
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (pos.to(torch.float64)[:, None] * inv[None, :])
    cos, sin = ang.cos().float(), ang.sin().float()
    if layout == "half":
        cos2, sin2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        rot = torch.cat([-x2, x1], -1)
        return x * cos2 + rot * sin2
    xe, xo = x[..., 0::2], x[..., 1::2]
    ye = xe * cos - xo * sin
    yo = xe * sin + xo * cos
    return torch.stack([ye, yo], -1).flatten(-2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_matches_torch(rng, layout):
    torch = pytest.importorskip("torch")
    d, T, off = 16, 6, 9
    q = rng.standard_normal((2, 3, T, d)).astype(np.float32)
    k = rng.standard_normal((2, 3, T, d)).astype(np.float32)
    enc = E.get("rope", head_dim=d, layout=layout)
    tq = relpos.Tensor(q, requires_grad=True)
    tk = relpos.Tensor(k, requires_grad=True)
    rq, rk = enc.rotate_q(tq, off), enc.rotate_k(tk, 0)
    pq = torch.tensor(q, requires_grad=True)
    pk = torch.tensor(k, requires_grad=True)
    oq = _torch_rope(pq, torch.arange(off, off + T), d, 10000.0, layout)
    ok = _torch_rope(pk, torch.arange(T), d, 10000.0, layout)
    np.testing.assert_allclose(rq.data, oq.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(rk.data, ok.detach().numpy(), atol=2e-6)
    # gradients of (logits + 1)^2 mean through both rotations
    logits_t = oq @ ok.transpose(-1, -2)
    ((logits_t + 1) ** 2).mean().backward()
    L = rq.data @ np.swapaxes(rk.data, -1, -2)
    gL = 2 * (L + 1) / L.size
    rq.backward(gL @ rk.data)
    rk.backward(np.swapaxes(gL, -1, -2) @ rq.data)
    np.testing.assert_allclose(tq.grad, pq.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(tk.grad, pk.grad.numpy(), atol=1e-5)


def test_bridge_keeps_reference_counts(rng):
    """No leaked references on the success path, the error paths or in-place output."""
    import sys

    x = rng.standard_normal((1, 2, 4, 8)).astype(np.float32)
    c, s = _C.rope_tables(rope_inv_freq(8), 4)
    sc = np.ones((4, 4), np.float32)
    before = [sys.getrefcount(a) for a in (x, c, s, sc)]
    for _ in range(200):
        _C.rotary_fwd(x, c, s, scale=sc)
        _C.rotary_bwd(x, c, s, scale=sc)
        with pytest.raises(ValueError):
            _C.rotary_fwd(x, c, s, scale=sc[:2])
        with pytest.raises(ValueError):
            _C.rotary_fwd(x, c, s, rotary_dim=5)
    assert [sys.getrefcount(a) for a in (x, c, s, sc)] == before


# ------------------------------------------------- through attention (end to end)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", ["materialized", "auto"])
def test_rope_attention_matches_torch(rng, layout, impl):
    torch = pytest.importorskip("torch")
    F = relpos.functional
    B, H, Tq, Tk, D, off = 1, 2, 3, 7, 8, 4
    q, k, v = (rng.standard_normal((B, H, T, D)).astype(np.float32) for T in (Tq, Tk, Tk))
    g = rng.standard_normal((B, H, Tq, D)).astype(np.float32)
    tq, tk, tv = (relpos.Tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.attention(tq, tk, tv, encoding="rope", layout=layout, causal=True, q_offset=off, impl=impl)
    out.backward(g)
    pq, pk, pv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    rq = _torch_rope(pq, torch.arange(off, off + Tq), D, 10000.0, layout)
    rk = _torch_rope(pk, torch.arange(Tk), D, 10000.0, layout)
    mask = torch.arange(Tk)[None, :] <= (off + torch.arange(Tq))[:, None]
    o = torch.nn.functional.scaled_dot_product_attention(rq, rk, pv, attn_mask=mask)
    o.backward(torch.tensor(g))
    np.testing.assert_allclose(out.data, o.detach().numpy(), atol=2e-5)
    for mine, theirs in ((tq, pq), (tk, pk), (tv, pv)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), atol=3e-5)


def test_rope_last_row_with_q_offset_equals_full(rng):
    F = relpos.functional
    B, H, T, D = 1, 2, 6, 8
    q, k, v = (relpos.Tensor(rng.standard_normal((B, H, T, D)).astype(np.float32)) for _ in range(3))
    for name in ("rope", "xpos"):
        full = F.attention(q, k, v, encoding=name, causal=True).data
        last = F.attention(q[:, :, T - 1:], k, v, encoding=name, causal=True, q_offset=T - 1).data
        np.testing.assert_allclose(last[:, :, 0], full[:, :, -1], atol=1e-6)


@pytest.mark.parametrize("mode", ["rotary", "logits"])
def test_yarn_attention_uses_the_temperature(rng, mode):
    F = relpos.functional
    B, H, T, D, s = 1, 1, 5, 8, 16.0
    q, k, v = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(3))
    opts = dict(scaling="yarn", scaling_factor=s, original_max_len=4, attention_scaling=mode)
    out = F.attention(relpos.Tensor(q), relpos.Tensor(k), relpos.Tensor(v), encoding="rope", **opts).data
    ang = rope_angles(T, D, scaling="yarn", scaling_factor=s, original_max_len=4)
    qr, kr = ref.rotary(q, ang, D, "interleaved"), ref.rotary(k, ang, D, "interleaved")
    logits = qr @ np.swapaxes(kr, -1, -2) * (0.1 * np.log(s) + 1) ** 2 / np.sqrt(D)
    logits[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, p @ v, atol=2e-5)
