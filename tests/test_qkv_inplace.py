"""q, k, v read in place from one (B, T, 3, H, Dh) projection, and their gradients
written back into one such block (issue 14: no head split / merge around attention).

- _C.attention_fwd / _bwd on strided q, k, v views give the same bits as on
  dense copies, for every channel, padding, NaN values (the careful path) and
  few heads (dq from chunk partials); packed_grads=True gives the dense
  gradients' bits in the (B, Tq, 3, H, D) block.
- _C.heads_rotate turns groups in place: checked against its float64 twin
  (tests/reference.heads_rotate), the same bits as heads_split / heads_merge,
  and the inverse is the adjoint.
- qkv_heads hands out views; a model's gradients are the same bits whether
  attention's backward packs dq, dk, dv or not; the block is only turned in
  place when attention's backward made it.
"""
import gc

import numpy as np
import pytest

import relpos
import relpos._fn.qkv as qkv_mod
from relpos import _C
from relpos import functional as F
from relpos.nn import MultiHeadAttention
from relpos.tensor import Tensor
from tests import reference as R
from tests.test_fused import CHANNEL_SETS, make_case


def thirds(rng, B, H, T, D, nan=False):
    """q, k, v as views of one random (B, T, 3, H, D) block, and dense copies of them."""
    y = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    if nan:
        y[0, T // 2, 1, 0, 0] = np.nan  # a key
        y[-1, T - 1, 2, -1, -1] = np.inf  # a value
    views = tuple(y[:, :, g].transpose(0, 2, 1, 3) for g in range(3))
    assert not views[0].flags.c_contiguous
    return y, views, tuple(np.ascontiguousarray(a) for a in views)


def same(a, b):
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def bwd_both(views, dense, out, lse, dout, kw):
    g_dense = _C.attention_bwd(*dense, out, lse, dout, **kw)
    g_packed = _C.attention_bwd(*views, out, lse, dout, packed_grads=True, **kw)
    return g_dense, g_packed


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("channels", CHANNEL_SETS, ids=lambda c: "+".join(c) or "plain")
def test_strided_inputs_and_packed_grads_same_bits(channels, merged, rng):
    B, H, T, D = 2, 3, 70, 16
    _, views, dense = thirds(rng, B, H, T, D)
    _, _, _, kw = make_case(rng, B=B, H=H, Tq=T, Tk=T, D=D, channels=channels, padding=True)
    kw["merged"] = merged
    out, lse = _C.attention_fwd(*dense, **kw)
    out2, lse2 = _C.attention_fwd(*views, **kw)
    assert same(out, out2) and same(lse, lse2)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    g_dense, g_packed = bwd_both(views, dense, out, lse, dout, kw)
    blk = g_packed.pop("qkv")
    assert blk.shape == (B, T, 3, H, D) and blk.flags.c_contiguous
    for g, n in enumerate("qkv"):
        assert same(blk[:, :, g].transpose(0, 2, 1, 3), g_dense.pop(n)), n
    assert set(g_packed) == set(g_dense)
    for n in g_dense:
        assert same(g_packed[n], g_dense[n]), n
    # strided inputs with dense gradients too
    g_strided = _C.attention_bwd(*views, out, lse, dout, **kw)
    for g, n in enumerate("qkv"):
        assert g_strided[n].flags.c_contiguous and same(g_strided[n], blk[:, :, g].transpose(0, 2, 1, 3)), n


@pytest.mark.parametrize("B,H", [(1, 1), (1, 2), (3, 2), (16, 4)])  # B*H < 8: dq from chunk partials
@pytest.mark.parametrize("nan", [False, True])
def test_head_counts_and_nonfinite_values(B, H, nan, rng, threads):
    T, D = 150, 8
    _, views, dense = thirds(rng, B, H, T, D, nan=nan)
    kw = dict(causal=True, merged=True)
    results = []
    for n in (1, 2):
        out, lse = threads(n, _C.attention_fwd, *views, **kw)
        dout = np.random.default_rng(5).standard_normal(out.shape).astype(np.float32)
        g = threads(n, _C.attention_bwd, *views, out, lse, dout, packed_grads=True, **kw)
        results.append((out, lse, g["qkv"]))
    out, lse = _C.attention_fwd(*dense, **kw)
    g = _C.attention_bwd(*dense, out, lse, dout, **kw)
    for o, lz, blk in results:  # both thread counts: the dense bits
        assert same(o, out) and same(lz, lse)
        for gi, n in enumerate("qkv"):
            assert same(blk[:, :, gi].transpose(0, 2, 1, 3), g[n]), n
    if nan:
        assert np.isnan(out).any()


def test_strided_against_the_float64_reference(rng):
    B, H, T, D = 2, 2, 40, 8
    _, views, _ = thirds(rng, B, H, T, D)
    out, lse = _C.attention_fwd(*views, causal=True)
    rout, rlse, _ = R.attention(*views, causal=True)
    np.testing.assert_allclose(out, rout, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, rlse, rtol=1e-5, atol=1e-5)


def test_other_strides_and_the_materialised_path(rng):
    """Views with other layouts (every head's rows reversed in batch order, a sliced
    time axis) are read where they are; the materialised path copies them (same values)."""
    x = rng.standard_normal((3, 2, 50, 12)).astype(np.float32)
    q = x[::-1, :, ::2]            # negative batch stride: copied by the bridge
    k = x[:, :, 1::2]               # positive strides: read in place
    v = np.swapaxes(rng.standard_normal((3, 25, 2, 12)).astype(np.float32), 1, 2)
    dense = [np.ascontiguousarray(a) for a in (q, k, v)]
    out, lse = _C.attention_fwd(q, k, v)
    out2, lse2 = _C.attention_fwd(*dense)
    assert same(out, out2) and same(lse, lse2)
    mout, _ = _C.attention_mat_fwd(q, k, v)
    np.testing.assert_allclose(mout, out, rtol=1e-5, atol=1e-6)


def test_packed_grads_errors(rng):
    _, views, _ = thirds(rng, 1, 2, 10, 4)
    out, lse = _C.attention_fwd(*views)
    dout = np.ones_like(out)
    with pytest.raises(ValueError, match="q, k and v"):
        _C.attention_bwd(*views, out, lse, dout, needs=("q", "k"), packed_grads=True)
    q = views[0]
    k = np.zeros((1, 2, 11, 4), np.float32)
    v = np.zeros((1, 2, 11, 4), np.float32)
    out, lse = _C.attention_fwd(q, k, v)
    with pytest.raises(ValueError, match="Tk = Tq"):
        _C.attention_bwd(q, k, v, out, lse, dout, packed_grads=True)
    with pytest.raises(TypeError, match="packed_grads"):
        _C.attention_mat_bwd(*views, out, lse, dout, packed_grads=True)


# ------------------------------------------------------------------ heads_rotate

def rope_tables(rng, T, rd):
    ang = rng.uniform(-3, 3, (T, rd // 2))
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
# 16, 32: both layouts' vector forms (half: 8 pairs at a time; interleaved: 4); 8, 24:
# the interleaved one only; 4: neither; 300 > the stack copy (turned in place)
@pytest.mark.parametrize("rd", [16, 32, 8, 24, 4, 300])
def test_heads_rotate_twin_and_split_bits(layout, rd, rng):
    B, T, H, G = 2, 5, 3, 3
    Dh = max(rd, 8)
    y = rng.standard_normal((B, T, G * H * Dh)).astype(np.float32)
    cos, sin = rope_tables(rng, T, rd)
    kw = dict(rotate=2, cos=cos, sin=sin, rotary_dim=rd, layout=layout)
    yy = y.copy()
    assert _C.heads_rotate(yy, H, groups=G, **kw) is None
    np.testing.assert_allclose(yy, R.heads_rotate(y, H, G, **kw), rtol=1e-6, atol=1e-6)
    parts = _C.heads_split(y, H, groups=G, **kw)
    v = yy.reshape(B, T, G, H, Dh)
    for g in range(G):
        assert same(v[:, :, g].transpose(0, 2, 1, 3), parts[g]), g
    back = yy.copy()
    _C.heads_rotate(back, H, groups=G, inverse=True, **kw)
    np.testing.assert_allclose(back, R.heads_rotate(yy, H, G, inverse=True, **kw), rtol=1e-6, atol=1e-6)
    assert same(back, _C.heads_merge(list(parts), **kw))
    # the inverse is the adjoint: <rot(y), z> = <y, rot^T(z)>
    z = rng.standard_normal(y.shape)
    lhs = (R.heads_rotate(y, H, G, **kw) * z).sum()
    rhs = (y * R.heads_rotate(z, H, G, inverse=True, **kw)).sum()
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs))


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("layout", ["interleaved", "half"])
@pytest.mark.parametrize("rd,Dh", [(16, 16), (32, 40), (8, 8), (12, 16), (6, 6)])
def test_heads_rotate_simd_and_portable_same_bits_on_hostile_values(rd, Dh, layout, inverse, rng):
    B, T, H, G = 2, 7, 3, 3
    y = rng.standard_normal((B, T, G * H * Dh)).astype(np.float32)
    flat = y.reshape(-1)
    pick = rng.choice(flat.size, 40, replace=False)
    flat[pick] = rng.choice([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -0.0], 40)
    cos, sin = rope_tables(rng, T, rd)
    cos[1, 0], sin[2, -1], cos[3, 1] = np.nan, np.inf, 0.0
    kw = dict(groups=G, rotate=2, cos=cos, sin=sin, rotary_dim=rd, layout=layout, inverse=inverse)
    got = {}
    for portable in (False, True):
        _C.force_portable(portable)
        try:
            yy = y.copy()
            _C.heads_rotate(yy, H, **kw)
            got[portable] = yy
        finally:
            _C.force_portable(False)
    assert got[False].tobytes() == got[True].tobytes()
    rkw = {k: v for k, v in kw.items() if k != "groups"}
    want = R.heads_rotate(y, H, G, **rkw)
    # error scale of each result: |c a| + |s b| (two products and a sum, each rounded once)
    # (turning |y| by |c|, |s| one way gives |c a| - |s b| on a pair's a, the other way on its b)
    with np.errstate(all="ignore"):
        mag = np.maximum(*(R.heads_rotate(np.abs(y.astype(np.float64)), H, G,
                                          **{**rkw, "cos": np.abs(cos), "sin": np.abs(sin), "inverse": inv})
                           for inv in (False, True)))
    assert np.array_equal(np.isnan(got[False]), np.isnan(want))
    fin = np.isfinite(want) & np.isfinite(mag) & (mag < 3e38)  # beyond: float32 overflows where float64 does not
    err = np.abs(got[False][fin] - want[fin])
    assert np.all(err <= 4e-7 * mag[fin] + 1e-44)


def test_heads_rotate_rejects_what_it_cannot_turn_in_place(rng):
    y = rng.standard_normal((2, 3, 24)).astype(np.float32)
    cos, sin = rope_tables(rng, 3, 4)
    kw = dict(groups=3, rotate=2, cos=cos, sin=sin)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.heads_rotate(y[:, ::-1], 2, **kw)
    ro = y.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _C.heads_rotate(ro, 2, **kw)
    with pytest.raises(ValueError, match="float32"):
        _C.heads_rotate(y.astype(np.float64), 2, **kw)
    with pytest.raises(TypeError, match="ndarray"):
        _C.heads_rotate(y.tolist(), 2, **kw)
    with pytest.raises(ValueError, match="last dim"):
        _C.heads_rotate(y, 5, **kw)
    with pytest.raises(ValueError, match="cos"):
        _C.heads_rotate(y, 2, groups=3, rotate=1)


# ------------------------------------------------------------ the model's path

def test_qkv_heads_hands_out_views(rng):
    B, T, d, H = 2, 6, 8, 2
    x = Tensor(rng.standard_normal((B, T, d)).astype(np.float32), requires_grad=True)
    ws = [Tensor(rng.standard_normal((d, d)).astype(np.float32), requires_grad=True) for _ in range(3)]
    q, k, v = F.qkv_heads(x, *ws, n_heads=H)
    assert q.shape == (B, H, T, d // H)
    base = q.data.base
    assert base is not None and k.data.base is base and v.data.base is base
    assert qkv_mod.qkv_block(q.data, k.data, v.data) is base
    # any other arrays, or the same ones in another order, are not a triple
    assert qkv_mod.qkv_block(k.data, q.data, v.data) is None
    assert qkv_mod.qkv_block(np.ascontiguousarray(q.data), k.data, v.data) is None
    # made by qkv_heads (not by attention's backward): never turned in place
    assert qkv_mod.packed_grad_block(q.data, k.data, v.data) is None


def _mha_grads(enc, monkeypatch, packed, threads=1):
    if not packed:  # attention never asks for packed gradients: the head merge path
        monkeypatch.setattr("relpos._fn.attention.qkv_block", lambda q, k, v: None)
    relpos.set_num_threads(threads)
    try:
        rng = np.random.default_rng(3)
        mha = MultiHeadAttention(32, 4, encoding=enc, seed=1)
        x = Tensor(rng.standard_normal((3, 20, 32)).astype(np.float32), requires_grad=True)
        out = mha(x)
        out.backward(rng.standard_normal(out.shape).astype(np.float32))
        return [out.data.copy(), x.grad.copy()] + [p.grad.copy() for _, p in sorted(mha.named_parameters())]
    finally:
        monkeypatch.undo()
        relpos.set_num_threads(1)


@pytest.mark.parametrize("enc", ["rope", "alibi", None, "t5"])
def test_mha_gradients_same_bits_packed_or_not(enc, monkeypatch):
    a = _mha_grads(enc, monkeypatch, packed=True)
    b = _mha_grads(enc, monkeypatch, packed=False)
    c = _mha_grads(enc, monkeypatch, packed=True, threads=2)
    for x, y, z in zip(a, b, c):
        assert same(x, y) and same(x, z)


def test_mha_gradients_against_finite_differences():
    """The whole packed path (views, in-place RoPE, packed gradients, turned back in place)
    against central differences of the float64 twin of qkv_heads + attention."""
    rng = np.random.default_rng(7)
    B, T, d, H = 1, 5, 8, 2
    mha = MultiHeadAttention(d, H, encoding="rope", seed=2, bias=True)
    x = rng.standard_normal((B, T, d)).astype(np.float32)
    xt = Tensor(x, requires_grad=True)
    out = mha(xt)
    g = rng.standard_normal(out.shape)
    out.backward(g.astype(np.float32))
    Dh = d // H
    cos, sin, rd, layout = mha.encoding.rotation(T, 0, Dh)
    p = {n: np.asarray(t.data, np.float64) for n, t in mha.named_parameters()}

    def f(xx):
        q, k, v = R.qkv_heads(xx, p["q_proj.weight"], p["k_proj.weight"], p["v_proj.weight"], p["q_proj.bias"],
                              p["k_proj.bias"], p["v_proj.bias"], H, rope=(cos, sin, rd, layout))
        o = R.attention(q, k, v, causal=True)[0]
        m = o.transpose(0, 2, 1, 3).reshape(B, T, d)
        return float(((m @ p["out_proj.weight"].T + p["out_proj.bias"]) * g).sum())
    num = R.numgrad(f, x.astype(np.float64))
    np.testing.assert_allclose(xt.grad, num, rtol=2e-3, atol=2e-4)


def test_triples_are_forgotten_with_their_arrays(rng):
    gc.collect()  # what earlier tests left for the collector
    before = len(qkv_mod._TRIPLES)
    for _ in range(20):
        qkv_mod.qkv_views(np.zeros((2, 3, 3 * 4), np.float32), 2, 3, 2, 2)
    gc.collect()
    assert len(qkv_mod._TRIPLES) == before


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_a_nonfinite_value_anywhere_is_found(packed, portable, rng):
    """The scan that sends a call to the careful path (a NaN or inf operand must not
    meet a masked pair) finds one bad float wherever it sits: first, last, in a
    vector's tail, in any head. A NaN value on a padded key then leaves every row
    finite; a missed one would turn every row to NaN (0 * NaN in P V)."""
    B, H, T, D = 2, 3, 13, 5  # H*D = 15, T*D = 65: runs that end in a partial vector
    _C.force_portable(portable)
    try:
        for (b, t, h, d) in [(0, 0, 0, 0), (B - 1, T - 1, H - 1, D - 1), (1, 7, 2, 3), (0, 12, 1, 4)]:
            y, views, dense = thirds(rng, B, H, T, D)
            y[b, t, 2, h, d] = np.nan  # v of key t
            q, k, v = views if packed else tuple(np.ascontiguousarray(a) for a in views)
            mask = np.zeros((B, T), bool)
            mask[b, t] = True  # bidirectional: the other keys stay visible to every row
            out, lse = _C.attention_fwd(q, k, v, causal=False, key_padding_mask=mask, merged=True)
            assert np.isfinite(out).all(), (b, t, h, d)
            g = _C.attention_bwd(q, k, v, out, lse, np.ones_like(out), causal=False, key_padding_mask=mask,
                                 merged=True, **({"packed_grads": True} if packed else {}))
            grads = [g["qkv"]] if packed else [g["q"], g["k"]]
            assert all(np.isfinite(x).all() for x in grads), (b, t, h, d)
            # the same NaN on a visible key reaches the rows that see it, in channel d only
            out2, _ = _C.attention_fwd(q, k, v, causal=False, merged=True)
            assert np.isnan(out2[b, :, h, d]).all() and np.isfinite(np.delete(out2[b, :, h], d, axis=-1)).all()
    finally:
        _C.force_portable(False)


def test_broadcast_and_overlapping_views_are_copied_not_read_in_place(rng):
    """A stride-0 (broadcast) or self-overlapping view is not read where it is: its
    claimed size is not memory it holds. A broadcast of absurd length fails at
    once (MemoryError, as the copy it asks for), never loops over 2**40 keys."""
    row = rng.standard_normal((2, 1, 1, 16)).astype(np.float32)  # batch stride != 0, key stride 0
    q = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
    huge = np.broadcast_to(row, (2, 1, 2 ** 40, 16))
    with pytest.raises(MemoryError):
        _C.attention_fwd(q, huge, huge, causal=False)
    # a small broadcast gives the dense copy's answer
    kb = np.broadcast_to(row, (2, 1, 9, 16))
    out, lse = _C.attention_fwd(q, kb, kb, causal=False)
    out2, lse2 = _C.attention_fwd(q, np.ascontiguousarray(kb), np.ascontiguousarray(kb), causal=False)
    assert same(out, out2) and same(lse, lse2)
    # rows that overlap (each starts 4 floats after the last): copied, the same answer
    buf = rng.standard_normal(4 * 9 + 12).astype(np.float32)
    ko = np.lib.stride_tricks.as_strided(buf, shape=(1, 1, 9, 16), strides=(0, 0, 16, 4), writeable=False)
    q = q[:1]
    out, lse = _C.attention_fwd(q, ko, ko, causal=False)
    out2, lse2 = _C.attention_fwd(q, np.ascontiguousarray(ko), np.ascontiguousarray(ko), causal=False)
    assert same(out, out2) and same(lse, lse2)
