"""``python -m relpos compare --dask`` (issue 15): runs on a Dask cluster give the
numbers of a serial run.

    python -m pytest tests/test_cli_dask.py -q
"""
import json
import os
import subprocess
import sys

import pytest

from relpos.data import default_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--encodings", "alibi,rope", "--seeds", "0,1", "--steps", "3", "--train-len", "16", "--eval-lens", "16,32",
        "--d-model", "16", "--layers", "1", "--heads", "2", "--batch-size", "4", "--no-progress"]


def run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "relpos", "compare", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def numbers(path):
    res = json.loads(path.read_text())
    return res["rows"], [(r["encoding"], r["seed"], r["metrics"], r["losses"], r["final_loss"]) for r in res["runs"]]


def test_dask_local_cluster_equals_a_serial_run(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is the optional 'dask' extra")
    text = tmp_path / "t.txt"
    text.write_text(default_corpus()[:12000], encoding="utf-8")
    serial = run(*TINY, "--text", str(text), "--out", str(tmp_path / "serial"), "--jobs", "1")
    assert serial.returncode == 0, serial.stderr
    # a LocalCluster of 2 worker processes
    dask = run(*TINY, "--text", str(text), "--out", str(tmp_path / "dask"), "--dask", "local", "--jobs", "2")
    assert dask.returncode == 0, dask.stderr
    assert numbers(tmp_path / "dask" / "results.json") == numbers(tmp_path / "serial" / "results.json")
    assert (tmp_path / "dask" / "results.csv").read_text() == (tmp_path / "serial" / "results.csv").read_text()
    assert "Traceback" not in dask.stderr


def test_dask_unreachable_scheduler_is_one_line(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is the optional 'dask' extra")
    # port 9 on loopback: nothing listens there
    r = run(*TINY, "--dask", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not connect to the Dask scheduler at 'tcp://127.0.0.1:9'" in lines[0]
    assert not (tmp_path / "o").exists()


def test_dask_missing_says_what_to_install(tmp_path):
    """Without dask.distributed, --dask names the extra to install (simulated by hiding it)."""
    code = ("import sys; sys.modules['distributed'] = None; from relpos.cli import main; "
            f"sys.exit(main(['compare', '--dask', 'local', '--out', {str(tmp_path / 'o')!r}, '--no-progress']))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2
    assert "--dask needs dask.distributed: pip install 'relpos[dask]'" in r.stderr
