"""fit(resume=...) trusts nothing in the checkpoint, and fit/evaluate say when
numbers stop being finite (issue 12, items 4, 10, 11 and 13).

* the generator a checkpoint names comes from an allow-list (PCG64,
  PCG64DXSM, Philox, SFC64, MT19937) and its state's structure is checked;
* the checkpoint's run settings must match the new run (resume_mismatch
  overrides);
* crafted bookkeeping (step, history, RNG JSON) is a CheckpointError and
  leaves the model untouched;
* fit raises when the last step leaves non-finite parameters; evaluate and
  evaluate_lengths warn on non-finite results.
"""
import json
import warnings

import numpy as np
import pytest

import relpos
from relpos.data import LMData, get_task
from relpos.models import TransformerLM
from relpos.train import CheckpointError, evaluate, evaluate_lengths, fit, load_checkpoint

TEXT = "a stitch in time saves nine; many hands make light work. " * 40
MODEL = dict(vocab_size=256, d_model=16, n_layers=1, n_heads=2, encoding="alibi", dropout=0.1)
FIT = dict(steps=6, batch_size=2, seq_len=12, lr=1e-2, seed=3, progress=False)


@pytest.fixture(scope="module")
def data():
    return LMData(TEXT)


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def edit_meta(path, edit):
    """Rewrite a checkpoint's meta JSON in place with edit(meta)."""
    state = relpos.load(path)
    meta = json.loads(state["meta"])
    edit(meta)
    state["meta"] = json.dumps(meta)
    relpos.save(state, path)


class Stop(Exception):
    pass


def stop_at(n):
    def cb(step, loss):
        if step == n:
            raise Stop
    return cb


@pytest.fixture
def midway(tmp_path, data):
    """A checkpoint at step 2 of a 6-step run (FIT's settings)."""
    path = tmp_path / "mid.relpos"
    with pytest.raises(Stop):
        fit(TransformerLM(**MODEL), data, checkpoint_every=2, checkpoint_path=path, callback=stop_at(2), **FIT)
    return path


@pytest.fixture
def ckpt(midway):
    return midway


# ------------------------------------------------------------------ item 4: the generator allow-list

@pytest.mark.parametrize("name", ["seed", "RandomState", "default_rng", "Generator", "get_state", "no_such", 5,
                                  None, "pcg64", "__class__"])
def test_generator_name_outside_the_allow_list(ckpt, data, name):
    def edit(meta):
        state = json.loads(meta["rng"])
        state["bit_generator"] = name
        meta["rng"] = json.dumps(state)

    edit_meta(ckpt, edit)
    global_before = np.random.get_state()[1].copy()
    model = TransformerLM(**MODEL)
    before = params(model)
    with pytest.raises(CheckpointError, match="is not one relpos restores .PCG64, PCG64DXSM, Philox, SFC64, "
                                              "MT19937"):
        fit(model, data, resume=ckpt, **FIT)
    # nothing was called: numpy's global state (np.random.seed would reseed it) and the model are untouched
    assert np.array_equal(np.random.get_state()[1], global_before)
    assert all(np.array_equal(v, before[k]) for k, v in params(model).items())


@pytest.mark.parametrize("state,match", [
    ({"state": {"state": 1}, "has_uint32": 0, "uinteger": 0}, r"\['state'\] must be a dict with keys"),
    ({"state": {"state": "1", "inc": 3}, "has_uint32": 0, "uinteger": 0}, r"\['state'\] must be an int"),
    ({"state": {"state": -1, "inc": 3}, "has_uint32": 0, "uinteger": 0}, r"\['state'\] must be an int in"),
    ({"state": {"state": 2**128, "inc": 3}, "has_uint32": 0, "uinteger": 0}, "must be an int in"),
    ({"state": {"state": 1, "inc": 3}, "has_uint32": 2, "uinteger": 0}, r"\['has_uint32'\] must be an int in \[0, 1\]"),
    ({"state": {"state": 1, "inc": 3}, "has_uint32": 0, "uinteger": 0, "extra": 1}, "must be a dict with keys"),
    ({"state": [1, 3], "has_uint32": 0, "uinteger": 0}, "must be a dict with keys"),
    ({"state": {"state": 1, "inc": True}, "has_uint32": 0, "uinteger": 0}, "must be an int"),
])
def test_generator_state_structure_is_checked(ckpt, data, state, match):
    def edit(meta):
        meta["rng"] = json.dumps(dict(state, bit_generator="PCG64"))

    edit_meta(ckpt, edit)
    with pytest.raises(CheckpointError, match=match):
        fit(TransformerLM(**MODEL), data, resume=ckpt, **FIT)


def test_generator_state_that_is_not_json(ckpt, data):
    for bad in ("{not json", "[1, 2]", "[" * 100000):
        edit_meta(ckpt, lambda meta: meta.__setitem__("rng", bad))
        with pytest.raises(CheckpointError, match="not a JSON object"):
            fit(TransformerLM(**MODEL), data, resume=ckpt, **FIT)


def _with_generators(model, kind):
    for i, m in enumerate(model.modules()):
        if isinstance(m, relpos.nn.Dropout):
            m._rng = np.random.Generator(getattr(np.random, kind)(100 + i))
    return model


@pytest.mark.parametrize("kind", ["PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"])
def test_every_allowed_generator_resumes_bit_for_bit(tmp_path, data, kind):
    """Module generators of each allowed kind survive a checkpoint (the old JSON
    could not hold the arrays of Philox, SFC64 and MT19937 states)."""
    full = _with_generators(TransformerLM(**MODEL), kind)
    h_full = fit(full, data, **FIT)

    path = tmp_path / "ck.relpos"
    with pytest.raises(Stop):
        fit(_with_generators(TransformerLM(**MODEL), kind), data, checkpoint_every=3, checkpoint_path=path,
            callback=stop_at(4), **FIT)
    resumed = _with_generators(TransformerLM(**dict(MODEL, seed=7)), kind)
    h_res = fit(resumed, data, resume=path, **FIT)
    assert h_res.losses == h_full.losses
    a, b = params(full), params(resumed)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_module_generator_of_another_kind(tmp_path, data):
    path = tmp_path / "ck.relpos"
    with pytest.raises(Stop):
        fit(_with_generators(TransformerLM(**MODEL), "Philox"), data, checkpoint_every=2, checkpoint_path=path,
            callback=stop_at(2), **FIT)
    with pytest.raises(CheckpointError, match="generator .*:_rng is Philox there, PCG64 in this model"):
        fit(TransformerLM(**MODEL), data, resume=path, **FIT)


# ------------------------------------------------------------------ item 11: crafted bookkeeping

@pytest.mark.parametrize("field,value,match", [
    ("step", "3", "'step' must be an int >= 0"),
    ("step", -1, "'step' must be an int >= 0"),
    ("step", True, "'step' must be an int >= 0"),
    ("history", {"losses": "x"}, "history field 'losses' must be a list of numbers"),
    ("history", {"tokens": -5}, "'tokens' must be an int >= 0"),
    ("history", [1, 2], "history must be a dict"),
    ("run", [1], "'run' must be a dict"),
    ("module_rngs", {"x": 5}, "'module_rngs' must map names"),
    ("rng", None, "'rng'"),
])
def test_crafted_meta_fields(ckpt, data, field, value, match):
    edit_meta(ckpt, lambda meta: meta.__setitem__(field, value))
    model = TransformerLM(**MODEL)
    before = params(model)
    with pytest.raises(CheckpointError, match=match):
        fit(model, data, resume=ckpt, **FIT)
    assert all(np.array_equal(v, before[k]) for k, v in params(model).items())


def test_history_cannot_set_arbitrary_attributes(ckpt, data):
    """The old History.from_dict did setattr for every key in the file."""
    edit_meta(ckpt, lambda meta: meta["history"].update(final_loss=1.0, __class__=[], extra=3))
    hist = fit(TransformerLM(**MODEL), data, resume=ckpt, **FIT)
    assert type(hist) is relpos.train.History and len(hist.losses) == FIT["steps"]
    assert not hasattr(hist, "extra")


def test_crafted_optimizer_and_meta_types(ckpt, data):
    state = relpos.load(ckpt)
    state["meta"] = 5
    relpos.save(state, ckpt)
    with pytest.raises(CheckpointError, match="'meta' entry is not a JSON object"):
        load_checkpoint(ckpt, TransformerLM(**MODEL))
    rng = json.dumps(np.random.default_rng(0).bit_generator.state)
    state["meta"] = json.dumps({"step": 1, "rng": rng, "history": {}})
    state["optimizer"] = {"state": [], "param_groups": []}
    relpos.save(state, ckpt)
    with pytest.raises(CheckpointError, match="optimizer or schedule state does not fit"):
        fit(TransformerLM(**MODEL), data, resume=ckpt, **dict(FIT, resume_mismatch="allow"))


# ------------------------------------------------------------------ item 13: the run's settings

@pytest.mark.parametrize("change,match", [
    (dict(batch_size=4), "batch_size: 2 in the checkpoint, 4 now"),
    (dict(seq_len=10), "seq_len: 12 in the checkpoint, 10 now"),
    (dict(lr=2e-2), "lr: 0.01 in the checkpoint, 0.02 now"),
    (dict(seed=4), "seed: 3 in the checkpoint, 4 now"),
    (dict(steps=8), "steps: 6 in the checkpoint, 8 now"),
    (dict(clip=None), "clip: 1.0 in the checkpoint, None now"),
    (dict(betas=(0.9, 0.99)), r"betas: \[0.9, 0.95\] in the checkpoint, \[0.9, 0.99\] now"),
    (dict(weight_decay=0.0), "weight_decay: 0.1 in the checkpoint, 0.0 now"),
    (dict(warmup=3), "warmup: 1 in the checkpoint, 3 now"),
])
def test_resume_with_other_settings_says_what_differs(midway, data, change, match):
    model = TransformerLM(**MODEL)
    with pytest.raises(CheckpointError, match=match):
        fit(model, data, resume=midway, **dict(FIT, **change))
    # the explicit override resumes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(TransformerLM(**MODEL), data, resume=midway, resume_mismatch="allow", **dict(FIT, **change))
    with pytest.warns(RuntimeWarning, match=match):
        fit(TransformerLM(**MODEL), data, resume=midway, resume_mismatch="warn", **dict(FIT, **change))


def test_resume_lists_every_difference(midway, data):
    with pytest.raises(CheckpointError, match="batch_size: 2 in the checkpoint, 3 now; lr: 0.01 in the "
                                              "checkpoint, 0.5 now.*resume_mismatch='warn' or 'allow'"):
        fit(TransformerLM(**MODEL), data, resume=midway, **dict(FIT, batch_size=3, lr=0.5))


def test_resume_into_another_encoding_with_the_same_parameters(midway, data):
    """alibi and rope have the same parameter names and shapes: only run_info tells them apart."""
    rope = TransformerLM(**dict(MODEL, encoding="rope"))
    with pytest.raises(CheckpointError, match="encoding: 'alibi' in the checkpoint, 'rope' now"):
        fit(rope, data, resume=midway, **FIT)


def test_resume_on_other_data(midway):
    other = LMData(TEXT.upper())
    with pytest.raises(CheckpointError, match=r"train_crc32: \d+ in the checkpoint, \d+ now"):
        fit(TransformerLM(**MODEL), other, resume=midway, **FIT)


def test_same_settings_resume_and_old_checkpoints(midway, data):
    full = TransformerLM(**MODEL)
    h_full = fit(full, data, **FIT)
    h = fit(TransformerLM(**MODEL), data, resume=midway, **FIT)
    assert h.losses == h_full.losses
    # a checkpoint from before run_info held these settings: only what it records is compared
    edit_meta(midway, lambda meta: meta.__setitem__("run", {"steps": 6, "batch_size": 2, "kind": "lm"}))
    assert fit(TransformerLM(**MODEL), data, resume=midway, **FIT).losses == h_full.losses
    with pytest.raises(CheckpointError, match="batch_size"):
        fit(TransformerLM(**MODEL), data, resume=midway, **dict(FIT, batch_size=4))


def test_resume_mismatch_value_is_checked(data):
    with pytest.raises(ValueError, match="resume_mismatch must be 'error', 'warn' or 'allow'; got 'yes'"):
        fit(TransformerLM(**MODEL), data, resume_mismatch="yes", **FIT)


# ------------------------------------------------------------------ item 10: non-finite numbers

def test_fit_refuses_to_return_infinite_parameters(tmp_path, data):
    path = tmp_path / "ck.relpos"
    model = TransformerLM(**MODEL)
    with pytest.raises(FloatingPointError, match=r"parameters are not finite after the last step \(1 of 1\): "
                                                 r"tok_emb.weight.*try a lower lr \(now 3e\+38\)"):
        fit(model, data, **dict(FIT, steps=1, lr=3e38), checkpoint_every=1, checkpoint_path=path)
    assert not path.exists(), "no checkpoint of a diverged model"


def test_evaluate_warns_on_non_finite_loss(data):
    model = TransformerLM(**MODEL)
    assert np.isfinite(evaluate(model, data, batches=1, batch_size=2, seq_len=8))
    model.blocks[0].fc1.weight.data[0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="evaluate: the validation loss is nan"):
        loss = evaluate(model, data, batches=1, batch_size=2, seq_len=8)
    assert np.isnan(loss)


def test_evaluate_lengths_warns_naming_the_length(data):
    model = TransformerLM(**MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = evaluate_lengths(model, data, [8, 16], max_tokens=64)
    assert all(np.isfinite(v) for v in good.values())
    model.norm_f.weight.data[:] = np.inf
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = evaluate_lengths(model, data, [8, 16], max_tokens=64)
    msgs = [str(w.message) for w in rec if w.category is RuntimeWarning]
    assert [m.split(";")[0] for m in msgs] == ["evaluate_lengths: the perplexity at length 8 is nan",
                                               "evaluate_lengths: the perplexity at length 16 is nan"], msgs
    assert all(np.isnan(v) for v in out.values())


def test_evaluate_lengths_warns_for_a_task():
    task = get_task("copy", train_lengths=(2, 3), n_symbols=4)
    model = TransformerLM(task.vocab_size, d_model=16, n_layers=1, n_heads=2, encoding="alibi")
    model.norm_f.weight.data[...] = np.nan
    with pytest.warns(RuntimeWarning, match="accuracy at length 3 .* non-finite logits"):
        evaluate_lengths(model, task, [3], n_samples=8)
