"""benchmarks/bench_train.py: PyTorch runs in a process of its own
(benchmarks/train_peer.py, with its own OpenMP settings), driven step by step
over a pipe; the first losses of both agree and every figure is there. Tiny
shapes: this checks the plumbing, not the speed (that is the benchmark's job)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--quick", "--config", "small", "--threads", "1", "--enc", "rope,alibi", "--repeat", "2", "--no-compile"]


def _bench(tmp_path, env=None):
    out = tmp_path / "train.json"
    r = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_train.py"), *QUICK, "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return [row for row in json.loads(out.read_text())["rows"] if row["benchmark"] == "train_step"]


def test_torch_peer_in_its_own_process(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is the peer measured here")
    rows = _bench(tmp_path)
    assert [r["encoding"] for r in rows] == ["rope", "alibi"]
    for row in rows:
        # the same network from the same weights: the first losses agree
        assert row["loss_rel_diff"] < 1e-4, row
        assert row["torch_s"] > 0 and row["relpos_s"] > 0 and row["ratio"] > 0
        # the peer's spread, as relpos' (median / best - 1), from the same steps as its figures
        assert row["torch_spread"] == pytest.approx(row["torch_best_tok_s"] / row["torch_tok_s"] - 1.0)
        assert row["torch_spread"] >= 0
        assert row["compile_error"].startswith("torch.compile skipped: not asked for")
        peer = row["peer_process"]
        assert peer["torch_threads"] == 1
        if not any(k in os.environ for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")):
            # relpos' spin count is for relpos' process only, not the peer's
            assert peer["omp_env"] == "unset (libgomp's defaults)" or "GOMP_SPINCOUNT" not in peer["omp_env"]


def test_without_torch_the_relpos_figures_still_come(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "torch.py").write_text("raise ImportError('torch hidden for this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), ROOT, os.environ.get("PYTHONPATH", "")]))
    rows = _bench(tmp_path, env)
    for row in rows:
        assert "torch hidden for this test" in row["torch_error"]
        assert row["relpos_s"] > 0 and row["mfu"] > 0
        assert "torch_s" not in row and "ratio" not in row


def test_bad_repeat_says_what_was_expected():
    r = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_train.py"), "--repeat", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--repeat must be >= 1 timed steps; got 0" in r.stderr


def test_the_n_thread_peak_is_never_below_n_cores():
    """A 2-thread FMA peak measured while the host held a vCPU (one core's speed)
    would put MFU above 100%: the peak used is at least n x the 1-thread peak."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_train
    finally:
        sys.path.pop(0)
    speeds = {1: [110.0, 113.0], 2: [118.0, 120.0]}  # the second core busy during the 2-thread runs
    used, measured = bench_train.fma_peaks((1, 2), measure=lambda n: speeds[n].pop())
    assert measured == {1: 113.0, 2: 120.0}
    assert used == {1: 113.0, 2: 226.0}
    speeds = {1: [100.0, 100.0], 2: [210.0, 205.0]}  # a quiet host: the measurement stands
    used, _ = bench_train.fma_peaks((2,), measure=lambda n: speeds[n].pop())
    assert used == {2: 210.0}
