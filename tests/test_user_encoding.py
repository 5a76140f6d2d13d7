"""The open door: a researcher's own encoding, written in Python, at fused speed.

A DistanceBias subclass defined here (not in the package) must give the same
attention output and gradients on the fused and the materialised kernels, its
parameter gradients must match central finite differences of a float64 twin,
and it must train in experiments.compare, by name, by class and by instance,
and through ``python -m relpos compare --encodings module:Class``.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference as ref

import relpos
from relpos import encodings, nn
from relpos import functional as F

f32 = np.float32


class LogDecay(encodings.DistanceBias):
    """b_h(d) = -w_h log(1 + |d|) + c_h [d > 0]: a learnable log-distance decay and a
    learnable bonus for past keys (asymmetric, so the test sees the sign of d)."""

    name = "test_log_decay"

    def __init__(self, init=1.0, **context):
        super().__init__(**context)
        rng = np.random.default_rng(self.seed)
        self.w = nn.Parameter(np.full((self.n_heads, 1), init, f32) + rng.uniform(0, 0.5, (self.n_heads, 1)))
        self.c = nn.Parameter(rng.normal(0.0, 0.5, (self.n_heads, 1)).astype(f32))

    def bias(self, d):
        return -self.w * np.log1p(np.abs(d)).astype(f32) + self.c * (d > 0).astype(f32)


def twin_bias(w, c, d):
    """float64 twin of LogDecay.bias: (H, len(d))."""
    return -np.asarray(w, np.float64) * np.log1p(np.abs(d)) + np.asarray(c, np.float64) * (d > 0)


def twin_loss(q, k, v, w, c, g, Tq, Tk, q_offset, causal):
    """float64 sum(out * g) of attention with the twin bias."""
    d = encodings.distance_window(Tq, Tk, q_offset)
    vec = twin_bias(w, c, d)
    out = ref.attention(q, k, v, causal=causal, q_offset=q_offset, bias_vec=vec, bias_ix=(1, Tk - 1 - q_offset))
    out = out[0] if isinstance(out, tuple) else out
    return float(np.sum(out * g))


def _inputs(rng, B=2, H=3, Tq=5, Tk=9, D=8):
    q = rng.standard_normal((B, H, Tq, D)).astype(f32)
    k = rng.standard_normal((B, H, Tk, D)).astype(f32)
    v = rng.standard_normal((B, H, Tk, D)).astype(f32)
    return q, k, v


@pytest.mark.parametrize("causal,q_offset", [(True, 0), (True, 4), (False, 0), (False, 3)])
def test_fused_and_materialised_agree(rng, causal, q_offset):
    Tq, Tk = 5, 9 if causal else 9
    q, k, v = _inputs(rng, Tq=Tq, Tk=Tk)
    g = rng.standard_normal((2, 3, Tq, 8)).astype(f32)
    results = {}
    for impl in ("fused", "materialized"):
        enc = LogDecay(n_heads=3, seed=1)
        qt, kt, vt = (relpos.tensor(a, requires_grad=True) for a in (q, k, v))
        out = F.attention(qt, kt, vt, encoding=enc, causal=causal, q_offset=q_offset, impl=impl)
        out.backward(g)
        results[impl] = (out.data, qt.grad, kt.grad, vt.grad, enc.w.grad, enc.c.grad)
    for a, b in zip(results["fused"], results["materialized"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # and both against the float64 twin
    enc = LogDecay(n_heads=3, seed=1)
    d = encodings.distance_window(Tq, Tk, q_offset)
    want = ref.attention(q, k, v, causal=causal, q_offset=q_offset, bias_ix=(1, Tk - 1 - q_offset),
                         bias_vec=twin_bias(enc.w.data, enc.c.data, d))
    want = want[0] if isinstance(want, tuple) else want
    np.testing.assert_allclose(results["fused"][0], want, rtol=1e-5, atol=1e-5)


def test_parameter_gradients_match_finite_differences_of_the_twin(rng):
    Tq, Tk, qo, causal = 4, 7, 3, True
    q, k, v = _inputs(rng, Tq=Tq, Tk=Tk)
    g = rng.standard_normal((2, 3, Tq, 8))
    enc = LogDecay(n_heads=3, seed=2)
    out = F.attention(q, k, v, encoding=enc, causal=causal, q_offset=qo)
    out.backward(g.astype(f32))
    w0, c0 = enc.w.data.astype(np.float64), enc.c.data.astype(np.float64)
    num_w = ref.numgrad(lambda w: twin_loss(q, k, v, w, c0, g, Tq, Tk, qo, causal), w0.copy())
    num_c = ref.numgrad(lambda c: twin_loss(q, k, v, w0, c, g, Tq, Tk, qo, causal), c0.copy())
    np.testing.assert_allclose(enc.w.grad, num_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(enc.c.grad, num_c, rtol=1e-4, atol=1e-5)
    assert np.abs(enc.c.grad).max() > 1e-3  # the check is not vacuous


def test_bias_matrix_and_the_window(rng):
    enc = LogDecay(n_heads=2, seed=0)
    m = encodings.bias_matrix(enc, 3, 5, q_offset=2)
    i = 2 + np.arange(3)[:, None]
    j = np.arange(5)[None, :]
    np.testing.assert_allclose(m, twin_bias(enc.w.data, enc.c.data, (i - j).ravel()).reshape(2, 3, 5), rtol=1e-6)
    np.testing.assert_array_equal(encodings.distance_window(3, 5, 2), np.arange(-2, 5))


def test_a_wrong_shape_names_the_class_and_the_shapes():
    class Bad(encodings.DistanceBias):
        name = "test_bad_shape"

        def bias(self, d):
            return relpos.tensor(np.zeros(len(d)))

    q = np.zeros((1, 2, 3, 4), f32)
    with pytest.raises(ValueError, match=r"Bad\.bias\(d\) must return shape \(n_heads, len\(d\)\) = \(2, 5\)"):
        F.attention(q, q, q, encoding=Bad(n_heads=2))


def test_register_makes_the_name_known_everywhere():
    @encodings.register
    class Registered(LogDecay):
        name = "test_registered_decay"

    try:
        assert "test_registered_decay" in [r["name"] for r in encodings.available()]
        enc = encodings.get("test_registered_decay", n_heads=2, init=0.5)
        assert isinstance(enc, Registered) and enc.w.shape == (2, 1)
        q = np.random.default_rng(0).standard_normal((1, 2, 4, 8)).astype(f32)
        a = F.attention(q, q, q, encoding="test_registered_decay", options={"init": 0.5}).data
        b = nn.MultiHeadAttention(16, 2, encoding="test_registered_decay", seed=0)
        assert b.encoding.name == "test_registered_decay"
        assert a.shape == (1, 2, 4, 8)
        with pytest.raises(ValueError, match="taken by"):
            @encodings.register
            class Other(LogDecay):
                name = "test_registered_decay"
        with pytest.raises(ValueError, match="unknown option"):
            encodings.get("test_registered_decay", n_heads=2, nope=1)
    finally:
        encodings.registry._REGISTRY.pop("test_registered_decay", None)


def test_a_class_or_an_instance_works_where_a_name_does():
    q = np.random.default_rng(1).standard_normal((1, 2, 4, 8)).astype(f32)
    by_class = F.attention(q, q, q, encoding=LogDecay, options={"init": 0.7})
    assert by_class.shape == (1, 2, 4, 8)
    lm = nn.TransformerLM(vocab_size=11, d_model=16, n_layers=2, n_heads=2, encoding=LogDecay, seed=0)
    layer_encs = [blk.attn.encoding for blk in lm.blocks]
    assert all(isinstance(e, LogDecay) for e in layer_encs) and layer_encs[0] is not layer_encs[1]
    names = {n for n, _ in lm.named_parameters()}
    assert "blocks.0.attn.encoding.w" in names and "blocks.1.attn.encoding.c" in names


def test_it_trains_in_compare():
    res = relpos.experiments.compare(
        encodings=[LogDecay, "alibi", LogDecay(n_heads=2, seed=3)], steps=4, train_len=8, eval_lens=(8, 16),
        d_model=16, n_layers=1, n_heads=2, batch_size=4, eval_tokens=128, text="abcdefgh " * 200, progress=False)
    assert res.encodings == ["test_log_decay", "alibi", "test_log_decay#2"]
    for run in res.runs:
        assert all(np.isfinite(v) for v in run["metrics"].values())
        assert run["losses"][-1] < run["losses"][0]


def test_cli_imports_module_class_from_the_working_directory(tmp_path):
    (tmp_path / "mybias.py").write_text(textwrap.dedent('''
        import numpy as np
        import relpos
        from relpos import nn

        class LogDecay(relpos.encodings.DistanceBias):
            name = "cli_log_decay"

            def __init__(self, **context):
                super().__init__(**context)
                self.w = nn.Parameter(np.ones((self.n_heads, 1), np.float32))

            def bias(self, d):
                return -self.w * np.log1p(np.abs(d)).astype(np.float32)
    '''))
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 100)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "relpos", "compare", "--encodings", "mybias:LogDecay,alibi", "--steps", "3",
           "--train-len", "8", "--eval-lens", "8,16", "--d-model", "16", "--layers", "1", "--heads", "2",
           "--batch-size", "4", "--jobs", "1", "--text", "corpus.txt", "--out", "out", "--no-progress"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["encodings"] == ["cli_log_decay", "alibi"]
    assert {r["encoding"] for r in data["runs"]} == {"cli_log_decay", "alibi"}
