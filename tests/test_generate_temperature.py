"""generate()'s temperature (issue 12, item 14): any real scalar, and the greedy
limit for temperatures too small for logits / temperature to stay finite.

    python -m pytest tests/test_generate_temperature.py -q
"""
import numpy as np
import pytest

from relpos.models import TransformerLM


@pytest.fixture(scope="module")
def lm():
    m = TransformerLM(40, d_model=16, n_layers=1, n_heads=2, encoding="alibi", seed=3)
    m.tok_emb.weight.data[...] *= 10  # clear winners, so greedy choices are not near-ties
    return m


PROMPT = np.array([[5, 9, 1], [30, 2, 17]])


@pytest.mark.parametrize("t", [np.float32(0.5), np.float64(0.5), np.float16(0.5)])
def test_numpy_scalars_are_temperatures(lm, t):
    want = lm.generate(PROMPT, 6, temperature=0.5, seed=11)
    np.testing.assert_array_equal(lm.generate(PROMPT, 6, temperature=t, seed=11), want)
    np.testing.assert_array_equal(lm.generate(PROMPT, 6, temperature=np.int64(0)),
                                  lm.generate(PROMPT, 6, temperature=0))


@pytest.mark.parametrize("t", [1e-310, 5e-324, 1e-30])
def test_tiny_temperature_is_greedy(lm, t):
    """Old: logits / 1e-310 overflowed to +-inf, exp(inf - inf) = nan, and every draw gave token 0."""
    greedy = lm.generate(PROMPT, 8, temperature=0)
    assert (greedy[:, 3:] != 0).any()        # so "always token 0" cannot pass
    for seed in range(3):
        np.testing.assert_array_equal(lm.generate(PROMPT, 8, temperature=t, seed=seed), greedy)
        np.testing.assert_array_equal(lm.generate(PROMPT, 8, temperature=t, top_k=5, seed=seed), greedy)


def test_sampling_matches_the_softmax_at_a_moderate_temperature(lm):
    """The rewritten sampler still draws from softmax(logits / T): frequencies over many
    seeds against the float64 probabilities of the first new token."""
    from relpos import no_grad
    with no_grad():
        logits = lm(PROMPT[:1]).numpy()[0, -1].astype(np.float64)
    z = logits / 2.0
    p = np.exp(z - z.max())
    p /= p.sum()
    draws = np.array([lm.generate(PROMPT[:1], 1, temperature=2.0, seed=s)[0, -1] for s in range(3000)])
    freq = np.bincount(draws, minlength=40) / len(draws)
    top = np.argsort(p)[-3:]
    # 3 standard errors of a frequency from 3000 draws (p about 0.05-0.07): T = 1.5 or 4 would fail
    np.testing.assert_allclose(freq[top], p[top], atol=0.015)


@pytest.mark.parametrize("bad,exc,msg", [
    (-1, ValueError, "finite number >= 0"), (float("nan"), ValueError, "finite number >= 0"),
    (float("inf"), ValueError, "finite number >= 0"), (np.float32(-0.5), ValueError, "got -0.5"),
    ("hot", TypeError, "real number; got str"), (True, TypeError, "got bool"),
    (np.array([0.5, 1.0]), TypeError, "got ndarray"),
])
def test_bad_temperatures(lm, bad, exc, msg):
    with pytest.raises(exc, match=rf"temperature must be a .*{msg}"):
        lm.generate(PROMPT, 2, temperature=bad)
