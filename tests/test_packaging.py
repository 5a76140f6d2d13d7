"""pyproject.toml (issue 15): matplotlib is a run-time dependency (compare's PNG on a
plain install), the licence is an SPDX string that setuptools reads without a
deprecation warning, and the optional extras name dask and pandas.

    python -m pytest tests/test_packaging.py -q
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


@pytest.fixture(scope="module")
def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _names(reqs):
    return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs}


def test_matplotlib_is_a_dependency(pyproject):
    deps = _names(pyproject["project"]["dependencies"])
    assert {"numpy", "tqdm", "matplotlib"} <= deps
    assert "torch" not in deps                       # only ever a test oracle


def test_extras(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    assert extras["dask"] == ["dask[distributed]>=2023.1"]
    assert _names(extras["plot"]) == {"matplotlib"}  # kept as an alias
    assert {"pandas", "dask", "pytest", "hypothesis"} <= _names(extras["test"])


def test_license_is_spdx_and_setuptools_reads_it_without_warning(pyproject):
    assert pyproject["project"]["license"] == "MIT"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # the first to take SPDX strings
    import setuptools
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license strings")
    # what `pip install -e .` does first: read [project]; any warning is an error here
    code = ("import warnings; warnings.simplefilter('error'); "
            "from setuptools.config.pyprojecttoml import apply_configuration; "
            "from setuptools.dist import Distribution; "
            "d = apply_configuration(Distribution(), 'pyproject.toml'); "
            "print(d.metadata.license_expression or d.metadata.license)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "MIT"
