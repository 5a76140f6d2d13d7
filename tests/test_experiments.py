import json
import multiprocessing
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


def test_sweep_dask(serial):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        _same(sweep(SWEEP, executor=client.get_executor(), progress=False), serial)


def test_sweep_bad_config():
    with pytest.raises(ValueError, match="unknown option.*'stepz'"):
        sweep([dict(encoding="rope", stepz=3)], progress=False)
