"""benchmarks/bench_step_floor.py: one training step's relpos._C calls are
recorded with the inputs they had, replayed alone on copies (the model is left
as it was), and added up into the step's kernel floor. Small shapes and few
repetitions: this checks the bookkeeping, not the speed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_step_floor as bf  # noqa: E402
import bench_train  # noqa: E402

import relpos  # noqa: E402
from relpos import _C  # noqa: E402


@pytest.fixture(scope="module")
def recorded():
    relpos.set_num_threads(1)
    cfg = dict(bench_train.CONFIGS["small"], batch=2)
    x, y = bench_train.step_batch(cfg)
    model, step = bench_train.relpos_model("rope", cfg)
    step(x, y)
    before = {n: np.array(p.data, copy=True) for n, p in model.named_parameters()}
    opt_loss = []

    def step_keeping_loss(a, b):
        opt_loss.append(step(a, b))

    calls = bf.record_step(step_keeping_loss, x, y)
    after = {n: np.array(p.data, copy=True) for n, p in model.named_parameters()}
    return dict(model=model, calls=calls, loss=opt_loss[0], before=before, after=after)


def test_every_call_of_the_step_is_recorded_with_the_inputs_it_had(recorded):
    calls = recorded["calls"]
    names = [c[0] for c in calls]
    assert names[-1] == "adamw_multi" and "attention_fwd" in names and "attention_bwd" in names
    assert all(hasattr(_C, n) for n in names)
    # the loss node's inputs were copied when it ran: replaying it gives the step's loss, bit for bit
    (_, fn, a, k), = [c for c in calls if c[0] == "cross_entropy_fwd"]
    loss = fn(*a, **k)[0]
    assert np.float32(loss) == np.float32(recorded["loss"])
    # the gradient call writes over the logits it reads (out=logits): it was recorded before it ran,
    # so it holds the logits, and its out= is the same copy as its input
    (_, _, ab, kb), = [c for c in calls if c[0] == "cross_entropy_bwd"]
    assert np.array_equal(ab[0], a[0]) and kb["out"] is ab[0]


def test_replaying_alone_leaves_the_model_as_it_was(recorded):
    calls = recorded["calls"]
    model = recorded["model"]
    # the recorded step updated the weights (AdamW ran) ...
    assert any(not np.array_equal(recorded["before"][n], recorded["after"][n]) for n in recorded["before"])
    # ... and timing every call alone, AdamW included, works on copies: the weights stay where the step left them
    best = bf.time_alone(calls, reps=1)
    assert len(best) == len(calls) and all(t > 0 for t in best)
    for n, p in model.named_parameters():
        assert np.array_equal(p.data, recorded["after"][n]), n


def test_an_output_given_as_an_input_stays_that_input():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    memo = {}
    a, k = bf._copy((x, 1.0), memo), bf._copy(dict(out=x, cols=[x, None]), memo)
    assert a[0] is k["out"] and k["cols"][0] is a[0] and a[0] is not x
    a[0][0, 0] = 99.0
    assert x[0, 0] == 0.0


def test_gemm_flops_follow_the_transposes():
    a = np.zeros((5, 3), np.float32)   # (K, M) when trans_a
    b = np.zeros((7, 5), np.float32)   # (N, K) when trans_b
    assert bf._FLOPS["gemm"]((a, b), dict(trans_a=True, trans_b=True)) == 2 * 3 * 7 * 5
    assert bf._FLOPS["gemm"]((a.T, b.T), {}) == 2 * 3 * 7 * 5
    x, w = np.zeros((4, 8), np.float32), np.zeros((16, 8), np.float32)
    assert bf._FLOPS["linear_gelu_bwd"]((x, w), {}) == 2 * (2 * 4 * 16 * 8)
    assert bf._FLOPS["linear_gelu_bwd"]((x, w), dict(need_x=False)) == 2 * 4 * 16 * 8


def test_the_script_adds_the_calls_up(tmp_path):
    out = tmp_path / "floor.json"
    r = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_step_floor.py"), "--config", "small",
                        "--enc", "alibi", "--steps", "2", "--reps", "1", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["encoding"] == "alibi" and row["config"] == "small" and row["threads"] == 1
    assert sum(k["calls"] for k in row["kernels"]) == row["calls_per_step"]
    assert sum(k["ms"] for k in row["kernels"]) == pytest.approx(row["floor_ms"])
    assert sum(k["share"] for k in row["kernels"]) == pytest.approx(1.0)
    assert row["gap_ms"] == pytest.approx(row["step_median_ms"] - row["floor_ms"])
    # every function the step called was also timed inside the step
    assert all(k["ms_in_step"] > 0 for k in row["kernels"])
    gemm = {k["name"]: k for k in row["kernels"]}["gemm"]
    assert gemm["gflops"] > 0 and gemm["peak_fraction"] > 0
    assert "kernel floor" in r.stdout and row["cpu"] in r.stdout


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps must be >= 1"),
                                           (["--reps", "0"], "--reps must be >= 1"),
                                           (["--config", "huge"], "unknown configuration 'huge'"),
                                           (["--threads", "two"], "comma-separated integers"),
                                           (["--enc", "rope,bogus"], "unknown encoding 'bogus'")])
def test_bad_arguments_say_what_was_expected(args, message):
    r = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_step_floor.py"), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr
