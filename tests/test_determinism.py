"""Determinism (issue 6): training is bit-identical for 1 and 2 threads, equal
for one seed, different for different seeds — for several position encodings.

    python -m pytest tests/test_determinism.py -q
"""
import numpy as np
import pytest

import relpos
from relpos.data import LMData
from relpos.nn import TransformerLM
from relpos.train import fit

STEPS = 50
TEXT = ("the quick brown fox jumps over the lazy dog; " * 40 +
        "pack my box with five dozen liquor jugs. " * 40)


@pytest.fixture(scope="module")
def data():
    return LMData(TEXT)


def train(data, threads, encoding="rope", seed=0, data_seed=0, steps=STEPS, dropout=0.0):
    prev = relpos.get_num_threads()
    relpos.set_num_threads(threads)
    try:
        model = TransformerLM(256, d_model=16, n_layers=2, n_heads=2, encoding=encoding, max_len=32,
                              dropout=dropout, seed=seed)
        hist = fit(model, data, steps=steps, batch_size=2, seq_len=16, lr=1e-2, seed=data_seed, progress=False)
    finally:
        relpos.set_num_threads(prev)
    return {k: v.copy() for k, v in model.state_dict().items()}, hist.losses


def assert_bit_identical(a, b):
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert a[0][k].tobytes() == b[0][k].tobytes(), f"parameter {k} differs"
    assert a[1] == b[1], "losses differ"


@pytest.mark.parametrize("encoding,steps", [("rope", STEPS), ("alibi", 20), ("t5", 20), ("shaw", 20)])
def test_one_and_two_threads_bit_identical(data, encoding, steps):
    one = train(data, 1, encoding, steps=steps)
    two = train(data, 2, encoding, steps=steps)
    assert_bit_identical(one, two)
    assert len(one[1]) == steps
    # the run did train: parameters moved and the loss fell
    fresh = TransformerLM(256, d_model=16, n_layers=2, n_heads=2, encoding=encoding, max_len=32).state_dict()
    assert all(not np.array_equal(fresh[k], one[0][k]) for k in fresh if k.endswith("weight"))
    assert np.mean(one[1][-5:]) < np.mean(one[1][:5])


def test_dropout_run_bit_identical_across_threads(data):
    assert_bit_identical(train(data, 1, "rope", dropout=0.1, steps=20),
                         train(data, 2, "rope", dropout=0.1, steps=20))


def test_same_seed_same_run(data):
    assert_bit_identical(train(data, 2, "alibi", seed=3, data_seed=4, steps=STEPS),
                         train(data, 2, "alibi", seed=3, data_seed=4, steps=STEPS))


@pytest.mark.parametrize("which", ["model", "data"])
def test_different_seeds_differ(data, which):
    a = train(data, 2, "rope", steps=10)
    b = train(data, 2, "rope", steps=10, **({"seed": 1} if which == "model" else {"data_seed": 1}))
    assert a[1] != b[1]
    assert any(not np.array_equal(a[0][k], b[0][k]) for k in a[0])


def test_back_off_changes_speed_not_results(data, capsys):
    """While relpos backs off after its threads stalled (every parallel region on
    one thread for a while), a 2-thread run is the same, bit for bit; the back-off
    shows in config() and show_config(), and ends by itself."""
    from relpos import _C
    normal = train(data, 2, "rope", steps=10)
    _C.back_off(600.0)
    try:
        assert relpos.config()["backing_off"] is True
        relpos.show_config()
        assert "backing off to 1" in capsys.readouterr().out
        backed = train(data, 2, "rope", steps=10)
    finally:
        _C.back_off(0.0)
    assert relpos.config()["backing_off"] is False
    assert_bit_identical(normal, backed)
    _C.back_off(0.01)
    import time
    time.sleep(0.05)
    assert relpos.config()["backing_off"] is False
    for bad in (-1.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="seconds must be in"):
            _C.back_off(bad)
