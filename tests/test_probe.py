"""relpos.probe: numbers on cases with known answers, and plots that draw something."""
import numpy as np
import pytest

import relpos
from relpos import probe
from relpos.encodings import alibi_slopes

mpl = pytest.importorskip("matplotlib", reason="plot helpers need matplotlib (the [test] extra installs it)")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _not_blank(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    img = plt.imread(path)
    plt.close(fig)
    assert img.std() > 0.02, f"{name}.png looks blank (pixel std {img.std():.4f})"


@pytest.mark.parametrize("symmetric", [False, True])
def test_alibi_bias_is_exactly_minus_slope_times_distance(symmetric):
    H, maxd = 8, 20
    enc = relpos.encodings.get("alibi", n_heads=H, symmetric=symmetric)
    dist, bias = probe.bias_vs_distance(enc, maxd)
    m = alibi_slopes(H)
    expected = -m[:, None] * dist[None, :]
    np.testing.assert_allclose(bias[:, 0, :], expected, rtol=1e-6, atol=1e-6)


def test_bias_vs_distance_marks_keys_before_the_start_as_nan():
    enc = relpos.encodings.get("alibi", n_heads=2)
    dist, bias = probe.bias_vs_distance(enc, 6, query_positions=[3, 6])
    assert np.isnan(bias[:, 0, 4:]).all() and np.isfinite(bias[:, 0, :4]).all()
    assert np.isfinite(bias[:, 1]).all()


def test_fire_bias_depends_on_the_query_position():
    enc = relpos.encodings.get("fire", n_heads=2, seed=0)
    L = float(enc.L.data.reshape(-1)[0])
    # below the threshold L the normaliser is psi(L) for every query: same curve
    _, below = probe.bias_vs_distance(enc, 8, query_positions=[8, 40])
    np.testing.assert_allclose(below[:, 0], below[:, 1], rtol=1e-6)
    # past it, psi(i) grows with i and the same distance gets a different bias
    far = [int(2 * L), int(8 * L)]
    _, above = probe.bias_vs_distance(enc, 8, query_positions=far)
    assert not np.allclose(above[:, 0], above[:, 1], rtol=1e-3, atol=1e-6)


def test_rope_decay_is_largest_at_distance_zero_and_decays():
    d, y = probe.rope_decay(rotary_dim=64, base=10000.0, max_distance=2000)
    assert y[0] == pytest.approx(1.0) and y.max() == pytest.approx(y[0])
    # RoFormer: the bound decays with distance (on average over long ranges)
    assert y[1000:].mean() < 0.5 * y[:10].mean()


def test_rope_decay_with_linear_scaling_is_the_unscaled_curve_stretched():
    _, plain = probe.rope_decay(rotary_dim=32, max_distance=100)
    _, pi = probe.rope_decay(rotary_dim=32, max_distance=400, scaling="linear", scaling_factor=4.0)
    # position interpolation divides positions by s: distance 4Δ scaled equals Δ unscaled
    np.testing.assert_allclose(pi[::4], plain, rtol=1e-9, atol=1e-12)


def _previous_token_model():
    """A one-layer LM whose only attention signal is a learned bias that allows
    distance 1 and forbids everything else: every query must look at i - 1."""
    model = relpos.models.TransformerLM(16, 16, 1, 2, encoding="learned_bias", max_distance=4, seed=0)
    attn = model.blocks[0].attn
    attn.q_proj.weight.data[:] = 0.0   # no content term: logits are the bias alone
    attn.q_proj.bias.data[:] = 0.0
    table = attn.encoding.table.data
    table[:] = -1e4
    table[:, 4 + 1] = 0.0              # index (i - j) + max_distance; i - j = 1
    return model


def test_attention_maps_show_a_previous_token_head():
    model = _previous_token_model()
    ids = np.arange(7) % 16
    maps = probe.attention_maps(model, ids)
    assert maps.shape == (1, 2, 7, 7)
    expected = np.eye(7, k=-1)
    expected[0, 0] = 1.0               # query 0 has only itself to look at
    np.testing.assert_allclose(maps[0, 0], expected, atol=1e-5)
    np.testing.assert_allclose(maps[0, 1], expected, atol=1e-5)
    assert model.training              # restored


def test_attention_stats_known_maps():
    T = 6
    eye = np.eye(T)[None, None]
    uniform = np.tril(np.ones((T, T)))
    uniform /= uniform.sum(-1, keepdims=True)
    maps = np.concatenate([eye, uniform[None, None]], axis=1)  # (1, 2, T, T)
    st = probe.attention_stats(maps)
    np.testing.assert_allclose(st["entropy"][0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(st["mean_distance"][0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(st["entropy"][0, 1], np.log(np.arange(1, T + 1)), rtol=1e-12)
    np.testing.assert_allclose(st["mean_distance"][0, 1], np.arange(T) / 2.0, rtol=1e-12)
    assert len(st["table"]) == 2


def test_attention_stats_from_a_model_previous_token_distance_is_one():
    model = _previous_token_model()
    st = probe.attention_stats(model, np.arange(8))
    np.testing.assert_allclose(st["mean_distance"][0, :, 1:], 1.0, atol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="max_distance"):
        probe.bias_vs_distance("alibi", -1, n_heads=2)
    with pytest.raises(ValueError, match="maps must have shape"):
        probe.attention_stats(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="ids must have shape"):
        probe.attention_maps(_previous_token_model(), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="no MultiHeadAttention"):
        probe.attention_maps(relpos.nn.Linear(2, 2), np.arange(3))
    with pytest.raises(ValueError, match="head 5 out of range"):
        probe.plot_attention(np.zeros((2, 3, 3)), heads=[5])


def test_plots_draw_on_given_axes(tmp_path):
    model = _previous_token_model()
    maps = probe.attention_maps(model, np.arange(8))
    cases = {
        "attention": lambda ax: probe.plot_attention(maps, layer=0, ax=ax),
        "bias_alibi": lambda ax: probe.plot_bias("alibi", 32, n_heads=4, ax=ax),
        "bias_t5": lambda ax: probe.plot_bias("t5", 64, n_heads=2, ax=ax),
        "bias_fire": lambda ax: probe.plot_bias("fire", 32, n_heads=2, query_positions=[600, 4000], ax=ax),
        "rope_decay": lambda ax: probe.plot_rope_decay(max_distance=256, ax=ax),
        "stats": lambda ax: probe.plot_attention_stats(probe.attention_stats(maps), ax=ax),
        "extrapolation": lambda ax: probe.plot_extrapolation(
            {"metric": "perplexity", "train_len": 16, "eval_lens": [16, 32, 64],
             "rows": {"rope": {"16": [5.0, 5.2], "32": [7.0, 7.5], "64": [12.0, 13.0]},
                      "alibi": {"16": [5.1, 5.1], "32": [5.0, 5.2], "64": [None, None]}}}, ax=ax),
    }
    for name, draw in cases.items():
        fig, ax = plt.subplots()
        assert draw(ax) is ax
        _not_blank(fig, tmp_path, name)


def test_plot_helpers_make_their_own_axes(tmp_path):
    ax = probe.plot_bias("kerple", 16, n_heads=2)
    assert ax is not None
    _not_blank(ax.figure, tmp_path, "own_axes")
