"""compare's tables outside relpos (issue 15): results.csv beside results.json,
CompareResult.rows() and to_pandas().

    python -m pytest tests/test_compare_outputs.py -q
"""
import csv
import json
import math
import sys

import pytest

from relpos.data import default_corpus
from relpos.experiments import CompareResult, compare

TINY = dict(train_len=16, steps=2, d_model=16, n_layers=1, n_heads=2, batch_size=4, eval_tokens=256,
            text=default_corpus()[:12000], progress=False)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    res = compare(["alibi", "learned"], eval_lens=[16, 32], seeds=(0, 1), out=out, **TINY)
    return res, out


def test_results_csv_is_tidy_and_matches_the_json(written):
    res, out = written
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["encoding", "seed", "length", "perplexity"]
    body = rows[1:]
    # one row per (encoding, seed, length), in table order
    assert [tuple(r[:3]) for r in body] == [(e, str(s), str(L)) for e in ("alibi", "learned")
                                           for s in (0, 1) for L in (16, 32)]
    on_disk = json.loads((out / "results.json").read_text())
    for enc, seed, length, value in body:
        want = on_disk["rows"][enc][length][int(seed)]
        if want is None:
            assert value == ""                # learned absolute past max_len: not applicable
        else:
            assert float(value) == want       # repr() round-trips the float exactly
    assert sum(v == "" for *_, v in body) == 2


def test_rows_and_to_pandas(written):
    pytest.importorskip("pandas", reason="pandas is in the test extra; to_pandas is optional")
    res, _ = written
    rows = res.rows()
    assert len(rows) == 8 and set(rows[0]) == {"encoding", "seed", "length", "perplexity"}
    df = res.to_pandas()
    assert list(df.columns) == ["encoding", "seed", "length", "perplexity"]
    assert len(df) == 8 and str(df["seed"].dtype) == "int64" and str(df["length"].dtype) == "int64"
    assert df["perplexity"].dtype == "float64"
    assert df["perplexity"].isna().sum() == 2
    table = df.pivot_table(index="encoding", columns="length", values="perplexity", aggfunc="mean")
    summ = res.summary()
    assert math.isclose(table.loc["alibi", 32], summ["alibi"][32][0], rel_tol=1e-12)
    assert math.isclose(table.loc["learned", 16], summ["learned"][16][0], rel_tol=1e-12)


def test_to_pandas_without_pandas_says_what_to_do(written, monkeypatch):
    res, _ = written
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas -> ImportError
    with pytest.raises(ImportError, match=r"to_pandas needs pandas: pip install pandas .*results\.csv"):
        res.to_pandas()
    assert len(res.rows()) == 8                        # rows() needs nothing


def test_accuracy_tables_name_their_metric(tmp_path):
    res = compare(["alibi"], task="copy", train_len=3, eval_lens=[3, 6], steps=2, d_model=16, n_layers=1,
                  n_heads=2, batch_size=4, n_eval=8, progress=False, out=tmp_path)
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "encoding,seed,length,accuracy"
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in res.rows())
    back = CompareResult.load(tmp_path / "results.json")
    assert back.rows() == res.rows()
