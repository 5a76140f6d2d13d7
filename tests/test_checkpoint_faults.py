"""Checkpoint faults through relpos.train.fit (issue 6; tests/test_serialization.py
covers relpos.save/load themselves: atomic writes, SIGKILL mid-save, corrupted
and truncated files).

A training subprocess that checkpoints every step is killed with SIGKILL at
varied moments (some land inside a save); the last checkpoint must load, and
`fit(resume=...)` from it must reproduce the uninterrupted run bit for bit.
A checkpoint of another model must fail with an error naming the problem.

    python -m pytest tests/test_checkpoint_faults.py -q
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from relpos.data import LMData
from relpos.nn import TransformerLM
from relpos.train import CheckpointError, fit, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "a stitch in time saves nine; many hands make light work. " * 60
STEPS = 24
MODEL = dict(vocab_size=256, d_model=16, n_layers=1, n_heads=2, encoding="alibi", max_len=32, dropout=0.1)
FIT = dict(steps=STEPS, batch_size=2, seq_len=16, lr=1e-2, seed=5, progress=False)

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from relpos.data import LMData
    from relpos.nn import TransformerLM
    from relpos.train import fit
    def cb(step, loss):
        print(step, flush=True)
        time.sleep(0.003)   # every step lasts >= 3 ms, so the kill lands before the run ends on a fast machine
    fit(TransformerLM(**{model!r}), LMData({text!r}), checkpoint_every=1, checkpoint_path={path!r},
        callback=cb, **{fit!r})
    print("done", flush=True)
""")


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (its own checkpoints every 6 steps, which must not change anything)."""
    path = tmp_path_factory.mktemp("ref") / "ck.rpz"
    model = TransformerLM(**MODEL)
    hist = fit(model, LMData(TEXT), checkpoint_every=6, checkpoint_path=path, **FIT)
    plain = TransformerLM(**MODEL)
    fit(plain, LMData(TEXT), **FIT)
    ref = params(model)
    assert all(ref[k].tobytes() == v.tobytes() for k, v in params(plain).items()), "checkpointing changed the run"
    return ref, hist.losses


@pytest.mark.parametrize("kill_after_step,delay_ms", [(3, 0), (8, 1), (12, 5), (16, 11)])
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, reference, kill_after_step, delay_ms):
    ref, ref_losses = reference
    path = str(tmp_path / "run.rpz")
    code = CHILD.format(root=ROOT, model=MODEL, text=TEXT, path=path, fit=FIT)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            line = proc.stdout.readline()
            assert line, f"child ended early: {proc.stderr.read()}"
            if line.strip() == str(kill_after_step):
                break
            assert time.monotonic() < deadline, "child too slow"
        time.sleep(delay_ms / 1000)   # lands anywhere in the next step, often inside its save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # no temporary files are mistaken for the checkpoint; the checkpoint loads
    model = TransformerLM(**MODEL)
    _, meta = load_checkpoint(path, model)
    assert kill_after_step <= meta["step"] < STEPS
    # resuming reproduces the uninterrupted run bit for bit (parameters and the losses after the resume point)
    hist = fit(model, LMData(TEXT), resume=path, **FIT)
    got = params(model)
    for k in ref:
        assert got[k].tobytes() == ref[k].tobytes(), f"{k} differs after resume from step {meta['step']}"
    assert hist.losses == ref_losses


def test_checkpoint_of_another_model_is_rejected_with_the_reason(tmp_path):
    path = tmp_path / "ck.rpz"
    fit(TransformerLM(**MODEL), LMData(TEXT), checkpoint_every=2, checkpoint_path=path, **dict(FIT, steps=2))
    wider = TransformerLM(**dict(MODEL, d_model=32))
    with pytest.raises(CheckpointError, match=r"different model: .* has shape \(.*\) there"):
        fit(wider, LMData(TEXT), resume=path, **FIT)
    other_enc = TransformerLM(**dict(MODEL, encoding="t5"))
    with pytest.raises(CheckpointError, match="different model: missing keys"):
        fit(other_enc, LMData(TEXT), resume=path, **FIT)
    deeper = TransformerLM(**dict(MODEL, n_layers=2))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path, deeper)


def test_truncated_or_foreign_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "ck.rpz"
    fit(TransformerLM(**MODEL), LMData(TEXT), checkpoint_every=2, checkpoint_path=path, **dict(FIT, steps=2))
    data = path.read_bytes()
    bad = tmp_path / "bad.rpz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read"):
        fit(TransformerLM(**MODEL), LMData(TEXT), resume=bad, **FIT)
    import relpos
    relpos.save({"weights": np.zeros(3, np.float32)}, tmp_path / "foreign.rpz")
    with pytest.raises(CheckpointError, match="not a relpos.train checkpoint"):
        fit(TransformerLM(**MODEL), LMData(TEXT), resume=tmp_path / "foreign.rpz", **FIT)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(TransformerLM(**MODEL), LMData(TEXT), resume=tmp_path / "missing.rpz", **FIT)
    past = tmp_path / "past.rpz"
    fit(TransformerLM(**MODEL), LMData(TEXT), checkpoint_every=3, checkpoint_path=past, **dict(FIT, steps=3))
    with pytest.raises(CheckpointError, match="past steps=2"):
        fit(TransformerLM(**MODEL), LMData(TEXT), resume=past, **dict(FIT, steps=2))
