import math
import os

import numpy as np
import pytest

import relpos
from relpos.data import LMData, default_corpus, get_task
from relpos.models import TransformerLM
from relpos.train import CheckpointError, History, evaluate_lengths, fit


def tiny_lm(vocab, encoding="rope", seed=0, **kw):
    opts = dict(d_model=32, n_layers=1, n_heads=2)
    opts.update(kw)
    return TransformerLM(vocab, encoding=encoding, seed=seed, **opts)


@pytest.fixture(scope="module")
def text_data():
    return LMData(default_corpus()[:20000])


def test_loss_decreases_on_copy_task():
    task = get_task("copy", train_lengths=(2, 4), n_symbols=4)
    model = tiny_lm(task.vocab_size, "alibi", n_layers=2)
    hist = fit(model, task, steps=120, batch_size=16, lr=1e-2, progress=False)
    assert isinstance(hist, History) and len(hist.losses) == 120
    first, last = np.mean(hist.losses[:5]), np.mean(hist.losses[-10:])
    assert first > 1.5  # about log(7) at the start
    assert last < 0.65 * first, (first, last)
    assert hist.steps == list(range(1, 121))
    assert 120 * 16 * task.seq_len(2) <= hist.tokens <= 120 * 16 * task.seq_len(4)
    assert all(math.isfinite(g) for g in hist.grad_norms)


def test_loss_decreases_on_text(text_data):
    model = tiny_lm(256, "rope")
    hist = fit(model, text_data, steps=40, batch_size=8, seq_len=32, lr=1e-2, eval_every=20,
               eval_batches=2, progress=False)
    assert np.mean(hist.losses[-5:]) < np.mean(hist.losses[:3]) - 1.0
    assert hist.eval_steps == [20, 40]
    assert hist.eval_losses[1] < hist.eval_losses[0] + 0.5
    # warmup then cosine: lr rises, then falls to min_lr_ratio * lr at the end
    assert hist.lrs[0] < hist.lrs[2] and hist.lrs[-1] < hist.lrs[10]


def test_non_finite_loss_names_the_step(text_data):
    model = tiny_lm(256, "rope")

    def poison(step, loss):
        if step == 2:
            p = next(iter(model.parameters()))
            p.data[...] = np.nan

    with pytest.raises(FloatingPointError, match="step 3"):
        fit(model, text_data, steps=5, batch_size=2, seq_len=8, progress=False, callback=poison)


class Stop(Exception):
    pass


def _state(model):
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["lm", "task"])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, text_data, kind):
    data = text_data if kind == "lm" else get_task("reverse", train_lengths=(1, 5))
    vocab = data.vocab_size
    opts = dict(steps=9, batch_size=4, seq_len=16, lr=5e-3, seed=3, progress=False)

    full = tiny_lm(vocab, "alibi", seed=1)
    h_full = fit(full, data, **opts)

    ck = tmp_path / "ck" / "run.ckpt"
    killed = tiny_lm(vocab, "alibi", seed=1)

    def kill(step, loss):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        fit(killed, data, checkpoint_every=4, checkpoint_path=ck, callback=kill, **opts)
    assert ck.exists()
    assert [f for f in os.listdir(ck.parent) if f != "run.ckpt"] == []  # no temp files left

    resumed = tiny_lm(vocab, "alibi", seed=99)  # different init: everything comes from the checkpoint
    h_res = fit(resumed, data, resume=ck, **opts)
    assert h_res.losses == h_full.losses  # steps 1-4 from the checkpoint, 5-9 recomputed
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_checkpoint_from_another_model(tmp_path, text_data):
    ck = tmp_path / "a.ckpt"
    fit(tiny_lm(256, "rope"), text_data, steps=2, batch_size=2, seq_len=8, checkpoint_every=1,
        checkpoint_path=ck, progress=False)
    with pytest.raises(CheckpointError, match="different model.*shape"):
        fit(tiny_lm(256, "rope", d_model=16), text_data, steps=4, batch_size=2, seq_len=8, resume=ck,
            progress=False)
    with pytest.raises(CheckpointError, match="different model.*keys"):
        fit(tiny_lm(256, "t5"), text_data, steps=4, batch_size=2, seq_len=8, resume=ck, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(tiny_lm(256, "rope"), text_data, steps=4, batch_size=2, seq_len=8, resume=tmp_path / "nope",
            progress=False)


def test_fit_bad_inputs(text_data):
    model = tiny_lm(256, "rope")
    with pytest.raises(ValueError, match=r"seq_len 100000 .*tokens"):
        fit(model, text_data, steps=1, seq_len=100000, progress=False)
    with pytest.raises(TypeError, match="LMData"):
        fit(model, np.arange(10), steps=1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_path"):
        fit(model, text_data, steps=1, seq_len=8, checkpoint_every=1, progress=False)
    learned = tiny_lm(256, "learned", max_len=16)
    with pytest.raises(ValueError, match="max_len 16"):
        fit(learned, text_data, steps=1, seq_len=32, progress=False)


def test_evaluate_lengths_lm(text_data):
    model = tiny_lm(256, "learned", max_len=16)
    res = evaluate_lengths(model, text_data, [8, 16, 32], max_tokens=256)
    assert list(res) == [8, 16, 32]
    assert res[32] is None  # past max_len: not applicable, not a crash
    # an untrained model is close to uniform over 256 bytes
    for L in (8, 16):
        assert 100 < res[L] < 600, res
    # perplexity matches exp(mean cross-entropy) of the model's own loss on the same windows
    x, y = text_data.eval_windows(16, max_tokens=256)
    with relpos.no_grad():
        ce = model.loss(x, y).item()
    assert res[16] == pytest.approx(math.exp(ce), rel=1e-4)
    rope = tiny_lm(256, "rope")
    r2 = evaluate_lengths(rope, text_data, [8, 64], max_tokens=256, sliding=True)
    assert all(v is not None and v > 1 for v in r2.values())


def test_evaluate_lengths_task():
    task = get_task("copy", train_lengths=(1, 3))
    model = tiny_lm(task.vocab_size, "learned", max_len=task.seq_len(3))
    res = evaluate_lengths(model, task, [1, 3, 6], n_samples=32)
    assert res[6] is None
    assert 0.0 <= res[1] <= 1.0 and 0.0 <= res[3] <= 1.0


KILLED_RUN = r"""
import os, signal, sys
from relpos.data import LMData, default_corpus
from relpos.models import TransformerLM
from relpos.train import fit
data = LMData(default_corpus()[:20000])
model = TransformerLM(256, d_model=32, n_layers=1, n_heads=2, encoding="rope", seed=1)

def die(step, loss):
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks

fit(model, data, steps=9, batch_size=4, seq_len=16, lr=5e-3, seed=3, progress=False,
    checkpoint_every=3, checkpoint_path=sys.argv[1], callback=die)
"""


def test_killed_process_resumes_exactly(tmp_path, text_data):
    import signal
    import subprocess
    import sys
    ck = tmp_path / "run.ckpt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", KILLED_RUN, str(ck)], env=env, capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert ck.exists()
    opts = dict(steps=9, batch_size=4, seq_len=16, lr=5e-3, seed=3, progress=False)
    full = tiny_lm(256, "rope", seed=1)
    h_full = fit(full, text_data, **opts)
    resumed = tiny_lm(256, "rope", seed=1)
    h_res = fit(resumed, text_data, resume=ck, **opts)
    assert h_res.losses == h_full.losses
    a, b = _state(full), _state(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_with_dropout_continues_the_dropout_streams(tmp_path, text_data):
    opts = dict(steps=6, batch_size=4, seq_len=16, lr=5e-3, seed=0, progress=False)
    full = tiny_lm(256, "alibi", seed=2, dropout=0.2)
    h_full = fit(full, text_data, **opts)
    ck = tmp_path / "d.ckpt"
    part = tiny_lm(256, "alibi", seed=2, dropout=0.2)

    def kill(step, loss):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        fit(part, text_data, checkpoint_every=3, checkpoint_path=ck, callback=kill, **opts)
    resumed = tiny_lm(256, "alibi", seed=2, dropout=0.2)
    h_res = fit(resumed, text_data, resume=ck, **opts)
    assert h_res.losses == h_full.losses
    a, b = _state(full), _state(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
