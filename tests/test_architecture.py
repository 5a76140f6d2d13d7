"""The package's layers (DESIGN.md §1, pyproject.toml [tool.importlinter]) and the C tree's.

- import-linter's layers contract holds (tensor -> functional -> nn -> encodings
  -> models -> data/train -> experiments/probe -> cli);
- submodules take only the extension (``_C``) from the package root, so the
  contract's one blanket exception ("relpos.** -> relpos") hides nothing else;
- every import of relpos's own modules is at module top (a deferred import is
  still an import), and the only deferred imports are of the optional, heavy
  libraries (matplotlib, torch, dask, pandas, ...).
"""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "relpos")

# libraries a module may import inside a function: optional extras, or heavy to import
LAZY_OK = {"matplotlib", "torch", "dask", "distributed", "pandas", "safetensors", "IPython"}


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def _package_of(mod, path):
    return mod if path.endswith("__init__.py") else mod.rpartition(".")[0]


def _absolute(node, mod, path):
    """The absolute module an ImportFrom names."""
    if not node.level:
        return node.module or ""
    parts = _package_of(mod, path).split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def test_import_linter_layers_contract():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]' installs it)")
    res = subprocess.run([exe, "--config", os.path.join(ROOT, "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout, res.stdout


def test_submodules_take_only_the_extension_from_the_package_root():
    bad = []
    known = {m for m, _ in _modules()}
    for mod, path in _modules():
        if mod == "relpos":
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _absolute(node, mod, path) == "relpos":
                # `from relpos import nn` imports the submodule relpos.nn, not a name of the root
                names = [a.name for a in node.names if f"relpos.{a.name}" not in known and a.name != "_C"]
                if names:
                    bad.append(f"{mod}:{node.lineno} imports {names} from the package root")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "relpos":
                        bad.append(f"{mod}:{node.lineno} imports the package root")
    assert not bad, "\n".join(bad)


def test_imports_are_at_module_top():
    deferred = []
    for mod, path in _modules():
        tree = ast.parse(open(path, encoding="utf-8").read())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [_absolute(node, mod, path)] if node.level else [node.module or ""]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] not in LAZY_OK and not (name == "relpos" and isinstance(node, ast.ImportFrom)
                                                                  and [a.name for a in node.names] == ["_C"]):
                        deferred.append(f"{mod}:{node.lineno} imports {name} inside {fn.name}()")
    assert not deferred, "\n".join(deferred)


def test_the_contract_catches_an_upward_import(tmp_path):
    """The check itself can fail: a copy of the package where nn imports models breaks the contract."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]' installs it)")
    work = tmp_path / "copy"
    shutil.copytree(PKG, work / "relpos", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), work / "pyproject.toml")
    layers = work / "relpos" / "nn" / "layers.py"
    layers.write_text(layers.read_text() + "\nfrom .. import models  # an upward import\n")
    env = dict(os.environ, PYTHONPATH=str(work))
    res = subprocess.run([exe, "--config", str(work / "pyproject.toml")], cwd=work, capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode != 0, res.stdout
    assert "relpos.nn.layers -> relpos.models" in res.stdout, res.stdout


def test_python_package_imports_cleanly_in_a_fresh_interpreter():
    """Each layer imports on its own, bottom first (no hidden dependence on import order)."""
    for mod in ("relpos.tensor", "relpos.functional", "relpos.nn", "relpos.encodings", "relpos.models",
                "relpos.train", "relpos.experiments", "relpos.probe", "relpos.cli"):
        res = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, f"import {mod}: {res.stderr}"
