import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from relpos.data import default_corpus
from relpos.experiments import CompareResult, compare, run_config, sweep

TEXT = default_corpus()[:12000]
TINY = dict(train_len=16, steps=3, d_model=16, n_layers=1, n_heads=2, batch_size=4, eval_tokens=256,
            text=TEXT)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    res = compare(["rope", "learned"], eval_lens=[16, 32], seeds=(0, 1), out=out, progress=False, **TINY)
    return res, out


def test_compare_tiny(tiny_result):
    res, out = tiny_result
    assert res.encodings == ["rope", "learned"] and res.eval_lens == [16, 32]
    assert res.metric == "perplexity" and res.train_len == 16
    assert len(res.runs) == 4 and [r["encoding"] for r in res.runs] == ["rope", "rope", "learned", "learned"]
    summ = res.summary()
    assert summ["learned"][32] is None  # learned absolute cannot reach 2x
    for enc in ("rope", "learned"):
        mean, std, n = summ[enc][16]
        assert n == 2 and 1 < mean < 1000 and std >= 0
    # two seeds give two different models
    assert res.values("rope", 16)[0] != res.values("rope", 16)[1]
    table = res.table()
    lines = table.splitlines()
    assert "perplexity" in lines[0]
    assert lines[1].split()[:2] == ["encoding", "16"] and "32" in lines[1]
    assert lines[3].startswith("rope") and "±" in lines[3]
    assert lines[4].startswith("learned") and lines[4].rstrip().endswith("n/a")
    md = res.to_markdown()
    assert md.splitlines()[0].startswith("| encoding | 16 (train) | 32 |") and "| learned |" in md
    assert "<table>" in res._repr_html_() and "learned" in res._repr_html_()
    assert (out / "results.json").exists()


def test_json_round_trip(tiny_result, tmp_path):
    res, out = tiny_result
    path = tmp_path / "r.json"
    res.save(path)
    back = CompareResult.load(path)
    assert back.to_dict() == res.to_dict()
    assert back.table() == res.table()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"]["learned"]["32"] == [None, None]
    assert on_disk["rows"]["rope"]["16"] == res.values("rope", 16)
    with pytest.raises(ValueError, match="not a relpos compare result"):
        CompareResult.from_dict({"format": "other"})


def test_plot_png_not_blank(tiny_result, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res, _ = tiny_result
    fig, ax = plt.subplots()
    got = res.plot(ax=ax)
    assert got is ax
    assert len([ln for ln in ax.get_lines() if ln.get_label() in ("rope", "learned")]) == 2
    assert ax.get_yscale() == "log"
    png = tmp_path / "p.png"
    fig.savefig(png)
    plt.close(fig)
    img = plt.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not a blank canvas
    assert (np.abs(rgb - rgb[0, 0]).sum(axis=-1) > 0.1).mean() > 0.01


def test_results_written_as_each_encoding_finishes(tmp_path, monkeypatch):
    import relpos.experiments as ex
    real = ex.run_config
    seen = []

    def spy(cfg):
        if seen:  # the second encoding starts: the first must already be on disk
            on_disk = json.loads((tmp_path / "results.json").read_text())
            assert [r["encoding"] for r in on_disk["runs"]] == ["alibi"]
        seen.append(cfg["encoding"])
        if cfg["encoding"] == "t5":
            raise KeyboardInterrupt
        return real(cfg)

    monkeypatch.setattr(ex, "run_config", spy)
    with pytest.raises(KeyboardInterrupt):
        compare(["alibi", "t5"], eval_lens=[16], seeds=(0,), out=tmp_path, progress=False, **TINY)
    kept = CompareResult.load(tmp_path / "results.json")
    assert [r["encoding"] for r in kept.runs] == ["alibi"]
    assert "(not run)" in kept.table()


def test_compare_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown encoding.*'ropee'.*available:.*alibi"):
        compare(["ropee"], progress=False, **TINY)
    with pytest.raises(ValueError, match="unknown task 'copyy'"):
        compare(["rope"], task="copyy", progress=False, **TINY)
    with pytest.raises(ValueError, match=r"seq_len 20000 .*tokens"):
        compare(["rope"], **dict(TINY, train_len=20000), progress=False)
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        compare(["rope"], **dict(TINY, text=None), text_file=empty, progress=False)


def test_compare_task_accuracy():
    res = compare(["alibi"], task="copy", train_len=3, eval_lens=[3, 6], steps=2, d_model=16, n_layers=1,
                  n_heads=2, batch_size=4, n_eval=16, progress=False)
    assert res.metric == "accuracy"
    for L in (3, 6):
        assert 0.0 <= res.summary()["alibi"][L][0] <= 1.0


SWEEP = [dict(TINY, encoding="alibi", eval_lens=[16, 32], seed=0),
         dict(TINY, encoding="rope", eval_lens=[16, 32], seed=1)]


@pytest.fixture(scope="module")
def serial():
    return [run_config(c) for c in SWEEP]


def _same(a, b):
    assert [r["metrics"] for r in a] == [r["metrics"] for r in b]
    assert [r["losses"] for r in a] == [r["losses"] for r in b]


def test_sweep_threads(serial):
    with ThreadPoolExecutor(2) as ex:
        _same(sweep(SWEEP, executor=ex, progress=False), serial)


def test_sweep_processes(serial, capsys):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        _same(sweep(SWEEP, executor=ex, progress=False), serial)
    # the default executor, with its step-level progress bar fed by the workers
    _same(sweep(SWEEP, progress=True), serial)
    err = capsys.readouterr().err
    assert "training" in err and "6/6" in err


def test_sweep_idle_workers_cores_go_to_the_runs_left():
    """Two workers, three runs: once two have finished, the last one takes the
    idle worker's threads between two steps, and its numbers stay those of a
    serial run (they do not depend on the thread count)."""
    configs = [dict(TINY, encoding="alibi", steps=2, seed=0), dict(TINY, encoding="alibi", steps=2, seed=1),
               dict(TINY, encoding="rope", steps=120, seed=2)]
    res = sweep(configs, max_workers=2, progress=False)
    base = max(1, (os.cpu_count() or 1) // 2)
    assert res[0]["threads"][0] == base and res[1]["threads"][0] == base
    assert res[2]["threads"][-1] == 2 * base, res[2]["threads"]
    alone = run_config(dict(configs[2], threads=base))
    assert alone["threads"] == [base]
    _same([res[2]], [alone])


def test_spare_threads_share_idle_cores_and_never_exceed_them():
    from relpos.experiments import _spare_threads
    assert _spare_threads(2, 1, 5, 2) == 0      # every worker busy
    assert _spare_threads(2, 1, 1, 2) == 1      # one run left: it takes the other core
    assert _spare_threads(2, 2, 1, 4) == 2
    assert _spare_threads(3, 2, 2, 6) == 1      # one idle worker's 2 threads, shared by two runs
    assert _spare_threads(4, 1, 3, 4) == 0      # 1 idle thread cannot be split among 3 runs
    assert _spare_threads(8, 1, 1, 2) == 1      # 8 workers asked for on 2 cores: 2 threads, not 8
    assert _spare_threads(8, 1, 3, 2) == 0
    assert _spare_threads(2, 1, 0, 2) == 0      # nothing left


def test_sweep_dask(serial):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        _same(sweep(SWEEP, executor=client.get_executor(), progress=False), serial)


def test_sweep_bad_config():
    with pytest.raises(ValueError, match="unknown option.*'stepz'"):
        sweep([dict(encoding="rope", stepz=3)], progress=False)


# ---------------------------------------------------------------- intervals, rankings

def test_t_quantiles_published_values():
    from relpos.experiments import t_quantile
    # two-sided 95% Student t, from any printed table
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(df) == pytest.approx(t, abs=5e-4)
    assert t_quantile(10 ** 6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError, match="df must be an int >= 1"):
        t_quantile(0)


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    from relpos.experiments import t_quantile
    for df in list(range(1, 31)) + [31, 40, 60, 120, 1000]:
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)


def _result(cells, metric="perplexity"):
    """A CompareResult from {encoding: {length: [value per seed]}}."""
    encs = list(cells)
    lens = sorted({L for row in cells.values() for L in row})
    runs = []
    for e, row in cells.items():
        n = len(next(iter(row.values())))
        for s in range(n):
            runs.append({"encoding": e, "seed": s, "metrics": {str(L): row[L][s] for L in row}})
    return CompareResult(encs, lens, lens[0], metric, {"seeds": list(range(3)), "steps": 1, "task": "lm"}, runs)


def test_interval_is_the_t_interval():
    res = _result({"a": {8: [10.0, 12.0, 14.0]}})
    mean, lo, hi, n = res.interval("a", 8)
    # s = 2, n = 3: half-width 4.303 * 2 / sqrt(3) = 4.969
    assert (mean, n) == (12.0, 3) and hi - mean == pytest.approx(4.303 * 2 / 3 ** 0.5, rel=1e-4)
    assert mean - lo == pytest.approx(hi - mean)
    assert res.summary()["a"][8] == (12.0, 2.0, 3)
    assert "12.00 ± 4.97" in res.table()


def test_ranking_groups_overlapping_intervals():
    res = _result({"a": {8: [10.0, 10.1, 10.2]}, "b": {8: [10.1, 10.2, 10.3]},
                   "c": {8: [20.0, 20.1, 20.2]}, "d": {8: [None, None, None]}})
    assert res.ranking(8) == [["a", "b"], ["c"]]
    assert res.indistinguishable(8) == [("a", "b")]
    text = res.rankings_text()
    assert "a ≈ b < c" in text and "not distinguishable at this budget" in text
    # one wide interval does not chain two separated ones (the case of copy at 1.25x: kerple)
    wide = _result({"alibi": {8: [0.94, 0.93, 0.98]}, "kerple": {8: [0.84, 0.80, 0.06]},
                    "rope": {8: [0.0, 0.0, 0.0]}}, metric="accuracy")
    assert wide.ranking(8) == [["alibi", "kerple"], ["rope"]]
    assert ("kerple", "rope") in wide.indistinguishable(8) and ("alibi", "rope") not in wide.indistinguishable(8)
    acc = _result({"a": {8: [0.5, 0.52, 0.54]}, "b": {8: [0.9, 0.91, 0.92]}}, metric="accuracy")
    assert acc.ranking(8) == [["b"], ["a"]] and "b > a" in acc.rankings_text()
    assert _result({"a": {8: [1.0]}, "b": {8: [2.0]}}).rankings_text() == ""  # one seed: nothing to say
    d = res.to_dict()
    assert d["intervals"]["d"]["8"] is None and d["rankings"]["8"] == [["a", "b"], ["c"]]


def test_plot_bands(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    res = _result({"rope": {8: [10.0, 11.0, 12.0], 16: [30.0, 50.0, 70.0]},
                   "rope+yarn": {8: [10.0, 11.0, 12.0], 16: [12.0, 13.0, 14.0]},
                   "rope+yarn+ft": {8: [10.0, 11.0, 12.0], 16: [11.0, 12.0, 13.0]}})
    ax = res.plot()
    lines = ax.get_lines()[:3]
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", ":"]
    assert lines[1].get_color() == lines[2].get_color() != lines[0].get_color()
    assert len(ax.collections) == 3  # one band per row


# ---------------------------------------------------------------- context extension

def test_compare_extend_rows():
    res = compare(["rope", "alibi"], eval_lens=[16, 32], seeds=(0,), extend="pi,yarn,dynamic", extend_steps=2,
                  progress=False, **TINY)
    assert res.encodings == ["rope", "rope+pi", "rope+yarn", "rope+dynamic", "rope+ft", "rope+pi+ft",
                             "rope+yarn+ft", "rope+dynamic+ft", "alibi"]
    # at the training length every factor is 1: the same model, the same numbers
    for row in ("rope+pi", "rope+yarn", "rope+dynamic"):
        assert res.values(row, 16) == res.values("rope", 16)
    # at 2x each scaling changes the numbers (and fine-tuning changes the model)
    assert len({res.values(r, 32)[0] for r in ("rope", "rope+pi", "rope+yarn", "rope+dynamic")}) == 4
    assert res.values("rope+ft", 16) != res.values("rope", 16)
    ext = next(r for r in res.runs if r["encoding"] == "rope+pi")
    assert ext["extension_of"] == "rope" and ext["extend"]["factors"] == {"16": 1.0, "32": 2.0}
    ft = next(r for r in res.runs if r["encoding"] == "rope+yarn+ft")
    assert ft["extend"]["fine_tune_steps"] == 2 and ft["extend"]["fine_tune_len"] == 32
    assert ft["extend"]["scaling_factor"] == 2.0
    assert not any("extensions" in r for r in res.runs)
    back = CompareResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.to_dict() == res.to_dict() and back.table() == res.table()


def test_extension_equals_a_model_built_with_the_scaling():
    # rope+pi at 2x is the trained model evaluated with PI at factor 2, nothing else
    import relpos
    from relpos.data import LMData
    from relpos.train import evaluate_lengths
    cfg = dict(TINY, encoding="rope", eval_lens=[16, 32], extend=("pi",))
    run = run_config(cfg)
    data = LMData(TEXT)
    model = relpos.nn.TransformerLM(data.vocab_size, d_model=16, n_layers=1, n_heads=2, encoding="rope", max_len=16,
                                    seed=0)
    relpos.train.fit(model, data, 3, batch_size=4, seq_len=16, progress=False)
    with relpos.encodings.rotary.rope_scaling(model, "pi", 2.0):
        want = evaluate_lengths(model, data, [32], max_tokens=256)[32]
    assert run["extensions"][0]["metrics"]["32"] == want


def test_compare_extend_bad_inputs():
    with pytest.raises(ValueError, match="LongRoPE's search"):
        compare(["rope"], extend="longrope", progress=False, **TINY)
    with pytest.raises(ValueError, match="unknown extend method 'magic'"):
        compare(["rope"], extend=["pi", "magic"], progress=False, **TINY)
    with pytest.raises(ValueError, match="needs a RoPE encoding"):
        compare(["alibi", "xpos"], extend="pi", progress=False, **TINY)
    with pytest.raises(ValueError, match="extend_steps needs extend"):
        compare(["rope"], extend_steps=3, progress=False, **TINY)
    with pytest.raises(ValueError, match="for language modelling"):
        compare(["rope"], task="copy", train_len=3, extend="pi", extend_steps=3, progress=False, steps=1)
    with pytest.raises(ValueError, match="extend_steps must be an int >= 0"):
        compare(["rope"], extend="pi", extend_steps=-1, progress=False, **TINY)


def test_compare_extend_on_a_task():
    res = compare(["rope"], task="copy", train_len=3, eval_lens=[3, 6], seeds=(0,), steps=2, d_model=16,
                  n_layers=1, n_heads=2, batch_size=4, n_eval=16, extend="yarn", progress=False)
    ext = next(r for r in res.runs if r["encoding"] == "rope+yarn")
    # factors are ratios of sequence lengths: copy of size n is <bos>, n symbols, <sep>, n symbols: 2n + 2
    assert ext["extend"]["factors"] == {"3": 1.0, "6": 14 / 8}


def test_task_defaults():
    from relpos.experiments import _resolve
    cfg = _resolve(dict(encoding="rope", task="copy"))
    assert (cfg["train_len"], cfg["steps"], cfg["n_layers"], cfg["eval_lens"]) == (8, 3000, 3, [8, 10, 12, 16])
    assert cfg["task_options"] == {"bos": True}
    assert cfg["lr"] == 1e-3  # tasks: 3e-3 stalled learned positions on copy
    assert _resolve(dict(encoding="rope", task="copy", lr=5e-4))["lr"] == 5e-4
    rev = _resolve(dict(encoding="rope", task="reverse"))
    assert (rev["n_layers"], rev["steps"], rev["lr"]) == (4, 4000, 1e-3)
    assert _resolve(dict(encoding="rope", task="reverse", n_layers=2))["n_layers"] == 2
    assert _resolve(dict(encoding="rope", task="parity"))["n_layers"] == 3
    add = _resolve(dict(encoding="rope", task="addition"))
    assert (add["train_len"], add["n_layers"], add["steps"], add["lr"], add["eval_lens"]) == (4, 4, 6000, 3e-3,
                                                                                          [4, 5, 6, 8])
    cfg = _resolve(dict(encoding="rope", task="copy", task_options={"bos": False, "length_sampling": "linear"}))
    assert cfg["task_options"] == {"bos": False, "length_sampling": "linear"}
    cfg = _resolve(dict(encoding="rope"))
    assert (cfg["train_len"], cfg["steps"], cfg["n_layers"], cfg["eval_lens"]) == (64, 600, 2, [64, 128, 256, 512])
    assert cfg["task_options"] is None
    assert cfg["lr"] == 3e-3
