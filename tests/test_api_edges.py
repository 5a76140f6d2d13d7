"""Small API problems a hostile user found (issue 12, item 14), each fixed in the one place that
applies an encoding (relpos/_fn/encoded.py) or in the encoding's own checks."""
import numpy as np
import pytest

import relpos
from relpos import encodings, nn
from relpos import functional as F

f32 = np.float32


def _qkv(rng, B=1, H=2, T=5, D=8):
    return tuple(rng.standard_normal((B, H, T, D)).astype(f32) for _ in range(3))


def test_an_option_named_like_an_argument_goes_through_options(rng):
    """Shaw's clipping distance is called k, like attention's keys: options= carries it."""
    q, k, v = _qkv(rng)
    enc = encodings.get("shaw", k=2, n_heads=2, head_dim=8, seed=0)
    want = F.attention(q, k, v, encoding=enc).data
    got = F.attention(q, k, v, encoding="shaw", options={"k": 2, "seed": 0}).data
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="both in options= and as keywords"):
        F.attention(q, k, v, encoding="shaw", options={"seed": 0}, seed=1)


@pytest.mark.parametrize("bad", [5, 2.5, object(), ["alibi"]])
def test_an_encoding_of_the_wrong_type_is_a_type_error(rng, bad):
    q, k, v = _qkv(rng)
    with pytest.raises(TypeError, match="encoding must be a name, 'module:Class', an Encoding"):
        F.attention(q, k, v, encoding=bad)
    with pytest.raises(TypeError, match="encoding must be a name"):
        nn.MultiHeadAttention(16, 2, encoding=bad)


@pytest.mark.parametrize("name,option", [("t5", "bidirectional"), ("alibi", "symmetric"), ("alibi", "learnable")])
@pytest.mark.parametrize("value", ["no", 2, "False"])
def test_flag_options_must_be_bools(name, option, value):
    with pytest.raises(TypeError, match=rf"{option}'?( of encoding '\w+')? must be a bool"):
        encodings.get(name, n_heads=2, **{option: value})


def test_a_failed_call_leaves_the_cache_as_it_was(rng):
    m = nn.MultiHeadAttention(16, 2, encoding="rope", seed=0)
    cache = nn.KVCache()
    x = relpos.tensor(rng.standard_normal((1, 3, 16)))
    with relpos.no_grad():
        m(x, cache=cache)
        assert cache.length == 3
        with pytest.raises(ValueError, match="key_padding_mask must have shape"):
            m(x, cache=cache, key_padding_mask=np.zeros((1, 5), bool))  # should cover 3 + 3 keys
        assert cache.length == 3
        with pytest.raises(ValueError, match="x must have shape"):
            m(relpos.tensor(np.zeros((1, 2, 8))), cache=cache)
        assert cache.length == 3
        # and a good call afterwards still equals the full pass
        out = m(x, cache=cache, key_padding_mask=np.zeros((1, 6), bool)).data
    with relpos.no_grad():
        full = m(relpos.tensor(np.concatenate([x.data, x.data], axis=1))).data
    np.testing.assert_allclose(out, full[:, 3:], rtol=1e-5, atol=1e-6)


def test_q_offset_must_match_the_cache(rng):
    q, k, v = _qkv(rng)
    cache = nn.KVCache()
    F.attention(q, k, v, encoding="rope", cache=cache)
    with pytest.raises(ValueError, match=r"q_offset \(2\) must equal the cache length \(5\)"):
        F.attention(q, k, v, encoding="rope", cache=cache, q_offset=2)
    assert cache.length == 5


def test_functional_and_layer_place_keys_alike(rng):
    """F.attention with q_offset and MultiHeadAttention with a cache used to rotate keys differently
    (rotate_k(k, 0) vs rotate_k(k, q_offset)); both now go through one function."""
    q, k, v = _qkv(rng, T=6)
    cache = nn.KVCache()
    F.attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], encoding="rope", cache=cache)
    step = F.attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], encoding="rope", cache=cache).data
    full = F.attention(q[:, :, 4:], k, v, encoding="rope", q_offset=4).data
    np.testing.assert_allclose(step, full, rtol=1e-5, atol=1e-6)


def test_an_explicit_scale_wins_over_the_encodings(rng):
    """YaRN and DeBERTa set their own logit scale; a scale given by the caller wins, in
    F.attention and in MultiHeadAttention alike."""
    q, k, v = _qkv(rng)
    opts = dict(scaling="yarn", scaling_factor=4.0, original_max_len=8)
    mine = F.attention(q, k, v, encoding="rope", options=opts, scale=0.1).data
    plain = F.attention(q, k, v, encoding="rope", scale=0.1).data
    np.testing.assert_allclose(mine, F.attention(
        q, k, v, encoding=encodings.get("rope", n_heads=2, head_dim=8, **opts), scale=0.1).data)
    assert not np.allclose(mine, F.attention(q, k, v, encoding="rope", options=opts).data)
    assert mine.shape == plain.shape
