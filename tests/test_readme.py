"""README.md's ```python blocks run, in order, in a fresh namespace and a temporary
working directory, so the tour can never rot."""
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

import relpos

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text):
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def test_readme_has_a_python_tour():
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python block"
    assert any("F.attention" in b for b in blocks)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prev = relpos.get_num_threads()
    ns = {"__name__": "__readme__"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for i, block in enumerate(python_blocks(README.read_text())):
                try:
                    exec(compile(block, f"README.md python block {i}", "exec"), ns)
                except Exception as e:  # pragma: no cover - the failure message is the point
                    pytest.fail(f"README.md python block {i} raised {type(e).__name__}: {e}\n---\n{block}")
    finally:
        relpos.set_num_threads(prev)
        relpos.encodings.registry._REGISTRY.pop("log_decay", None)  # the README registers one of its own
    # what the tour's comments promise
    assert "relpos " + relpos.__version__ in out.getvalue()          # show_config() printed
    assert ns["x"].grad is not None and ns["x"].grad.shape == ns["x"].shape
    assert ns["lin"].weight.grad is not None
    assert tuple(ns["out"].shape) == (1, 8, 32, 16)
    assert ns["w"].shape == (1, 8, 32, 32)
    np.testing.assert_allclose(ns["w"].sum(axis=-1), 1.0, atol=1e-5)
    saved = tmp_path / "lin.relpos"
    assert saved.exists()
    state = relpos.load(saved)
    np.testing.assert_array_equal(state["weight"], ns["lin"].weight.data)
    assert ns["maps"].shape == (1, 2, 16, 16)
    assert [r for r in ns["result"].encodings] == ["rope", "alibi"]
    assert "alibi" in out.getvalue() and "32" in out.getvalue()
    # your own encoding: registered, gradient-checked, compared
    assert "gradcheck of 'log_decay'" in out.getvalue() and ": ok" in out.getvalue()
    assert ns["mine"].encodings == ["log_decay", "alibi"]


def test_readme_names_the_cli_output_folder():
    """The Quickstart says where `python -m relpos compare` writes: the CLI's --out default."""
    from relpos import cli
    sub = [a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    default = sub.choices["compare"].get_default("out")
    assert f"./{default}/" in README.read_text()


def test_readme_files_exist():
    """Every benchmarks/… script and folder the README names is there."""
    text = README.read_text()
    scripts = re.findall(r"python (benchmarks/\S+\.py)", text)
    assert scripts
    for rel in scripts + ["examples", "docs/INTERNALS.md", "tests/reference.py"]:
        assert (ROOT / rel).exists(), rel
