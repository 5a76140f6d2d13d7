"""Execute every notebook in examples/ (with RELPOS_NB_FAST=1: the same cells on
smaller settings) and fail on any error."""
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (in the [test] extra)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (in the [test] extra)")
pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (in the [test] extra)")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_there_are_five_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("RELPOS_NB_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel must import this checkout's relpos
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "examples")}})
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    print(f"{path.name}: {elapsed:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_shows_its_outputs(path):
    """The notebooks are committed executed (examples/execute.py, full settings), so a reader
    browsing the repository sees the tables and plots: every code cell ran, in order, without
    an error, and the notebooks that plot carry their pictures."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts), f"{path.name}: not executed; run python examples/execute.py"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: cells executed out of order or skipped"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    if any("plot" in "".join(c.source) for c in code):
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no plot in the outputs"
