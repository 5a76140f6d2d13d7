import json
import os
import subprocess
import sys

import pytest

from relpos.data import default_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "relpos", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    p = tmp_path_factory.mktemp("txt") / "small.txt"
    p.write_text(default_corpus()[:6000], encoding="utf-8")
    return p


TINY = ["--steps", "3", "--train-len", "16", "--d-model", "16", "--layers", "1", "--heads", "2",
        "--batch-size", "4", "--no-progress"]
SERIAL = ["--jobs", "1"]


def test_compare_end_to_end(tmp_path, small_text):
    # matplotlib is a dependency: the default compare always writes the picture (issue 15)
    out = tmp_path / "out"
    # default --jobs: one process per core (2 runs at once here)
    r = run("compare", "--encodings", "rope,learned", "--eval-lens", "1x,2x", "--text", str(small_text),
            "--out", str(out), "--jobs", "2", *TINY)
    assert r.returncode == 0, r.stderr
    assert "rope" in r.stdout and "learned" in r.stdout and "n/a" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["eval_lens"] == [16, 32] and res["encodings"] == ["rope", "learned"]
    assert res["rows"]["learned"]["32"] == [None, None, None]  # three seeds by default
    assert res["config"]["seeds"] == [0, 1, 2] and res["rows"]["rope"]["32"][0] > 1
    assert "±" in r.stdout and "not distinguishable at this budget" in r.stdout
    png = (out / "extrapolation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "no plot written" not in r.stderr and f"plot: {out / 'extrapolation.png'}" in r.stdout
    assert (out / "results.csv").read_text().startswith("encoding,seed,length,perplexity\n")


def test_compare_task_and_seeds(tmp_path):
    out = tmp_path / "t"
    r = run("compare", "--encodings", "alibi", "--task", "parity", "--train-len", "3", "--eval-lens", "3,6",
            "--steps", "2", "--seeds", "0,1", "--d-model", "16", "--layers", "1", "--heads", "2",
            "--batch-size", "4", "--out", str(out), "--no-progress", *SERIAL)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "accuracy" and len(res["rows"]["alibi"]["6"]) == 2
    assert "accuracy" in r.stdout and "±" in r.stdout


def test_compare_extend(tmp_path, small_text):
    out = tmp_path / "x"
    r = run("compare", "--encodings", "rope,alibi", "--eval-lens", "1x,2x", "--text", str(small_text), "--out",
            str(out), "--seeds", "0", "--extend", "pi,yarn", "--extend-steps", "2", *TINY, *SERIAL)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    rows = ["rope", "rope+pi", "rope+yarn", "rope+ft", "rope+pi+ft", "rope+yarn+ft", "alibi"]
    assert res["encodings"] == rows and set(res["rows"]) == set(rows)
    assert res["config"]["extend"] == ["pi", "yarn"] and res["config"]["extend_steps"] == 2
    for row in rows:
        assert row in r.stdout
    # at the training length a factor of 1 changes nothing
    assert res["rows"]["rope+yarn"]["16"] == res["rows"]["rope"]["16"]


@pytest.mark.parametrize("args,message", [
    (["--extend", "longrope"], "LongRoPE's search"),
    (["--extend", "pi,magic"], "unknown --extend method 'magic'"),
    (["--encodings", "alibi", "--extend", "pi"], "needs a RoPE encoding"),
    (["--extend-steps", "5"], "--extend-steps needs --extend"),
    (["--task", "copy", "--extend", "pi", "--extend-steps", "2"], "with --task copy it would train on the test"),
    (["--heads", "3"], "--d-model (64) must be divisible by --heads (3)"),
    (["--dask", "tcp://127.0.0.1:9", "--jobs", "2"], "a Dask cluster (tcp://127.0.0.1:9) runs as many"),
    (["--text", "/no/such/file.txt"], "does not exist"),
    (["--encodings", "rope,nosuch"], "unknown encoding"),
    (["--task", "nosuch"], "unknown task 'nosuch'"),
    (["--train-len", "10000"], "longer than the data"),  # within the cap (16,384), past the 6,000-byte text
    (["--eval-lens", "a,b"], "--eval-lens"),
])
def test_bad_input_exits_2(tmp_path, small_text, args, message):
    base = ["--text", str(small_text)] if "--text" not in args else []
    if "--encodings" not in args:
        base += ["--encodings", "rope"]
    r = run("compare", *base, *args, "--out", str(tmp_path / "o"), *TINY[:2], *SERIAL)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_empty_and_bad_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = run("compare", "--text", str(empty), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc")
    r = run("compare", "--text", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_help_and_info():
    r = run("--help")
    assert r.returncode == 0 and "compare" in r.stdout and "info" in r.stdout
    r = run("compare", "--help")
    assert r.returncode == 0
    for opt in ("--encodings", "--task", "--train-len", "--eval-lens", "--steps", "--seeds", "--text",
                "--out", "--threads", "--no-progress"):
        assert opt in r.stdout
    # per-task defaults come from the presets compare uses (they had drifted: addition's were missing)
    from relpos.experiments import KIND_DEFAULTS, TASK_PRESETS
    flat = " ".join(r.stdout.split())
    assert "0.001 for tasks" in flat and "600 for lm" in flat
    for name, preset in TASK_PRESETS.items():
        for key, value in preset.items():
            if value != KIND_DEFAULTS["task"][key]:
                assert f"{value:g} for {name}" in flat, (name, key)
    r = run("info")
    assert r.returncode == 0 and r.stdout.startswith("relpos ") and "OpenMP" in r.stdout
    r = run()
    assert r.returncode == 2 and "COMMAND" in r.stdout


def _as_limit(limit):
    def set_limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return set_limit


@pytest.mark.parametrize("args,message", [
    (["--seeds=-1"], "seeds must be integers from 0 to 4,294,967,295; got -1"),
    (["--seeds", "0,99999999999"], "from 0 to 4,294,967,295; got 99999999999"),
    (["--eval-lens", "nanx"], "must be finite and positive; got 'nanx'"),
    (["--eval-lens", "infx"], "must be finite and positive; got 'infx'"),
    (["--eval-lens", "0,16"], "from 1 to 131,072; got 0"),
    (["--eval-lens", "999999999"], "from 1 to 131,072; got 999,999,999"),
    (["--eval-lens", "0.001x"], "--eval-lens must give lengths from 1 to 131,072"),
    (["--threads", "99999999999"], "--threads: expected an integer from 1 to {threads} (4 x the {cpus} CPUs here)"),
    (["--jobs", "100000"], "--jobs: expected an integer from 1 to {threads} (4 x the {cpus} CPUs here)"),
    (["--batch-size", "1e11"], "--batch-size: expected an integer from 1 to 4,096; got '1e11'"),
    (["--batch-size", "100000000000"], "--batch-size: expected an integer from 1 to 4,096; got 100,000,000,000"),
    (["--d-model", "1e8"], "--d-model: expected an integer from 1 to 4,096; got '1e8'"),
    (["--d-model", "100000000"], "--d-model: expected an integer from 1 to 4,096"),
    (["--d-model", "4096", "--layers", "64"], "parameters; the cap is 500,000,000"),
    (["--layers", "100000"], "--layers: expected an integer from 1 to 64"),
    (["--heads", "0"], "--heads: expected an integer from 1 to 64; got 0"),
    (["--train-len", "10000000"], "--train-len: expected an integer from 1 to 16,384"),
    (["--steps", "10000000000"], "--steps: expected an integer from 1 to 10,000,000"),
    (["--lr", "nan"], "--lr: expected a finite positive number; got 'nan'"),
    (["--text", "/dev/zero"], "'/dev/zero' is larger than the limit of 256 MiB; stopped reading there"),
])
def test_hostile_inputs_one_line_exit_2(tmp_path, small_text, args, message):
    """Issue 12, item 9: each printed a traceback and exited 1 (or read /dev/zero without
    bound); now one line naming the flag and its cap, exit 2, before anything is allocated."""
    cpus = os.cpu_count() or 1
    message = message.format(threads=f"{4 * cpus:,}", cpus=cpus)
    base = [] if "--text" in args else ["--text", str(small_text)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # an address-space limit, so that an unbounded read fails fast instead of filling the machine
    r = subprocess.run([sys.executable, "-m", "relpos", "compare", "--encodings", "rope", *base, *args,
                        "--out", str(tmp_path / "o"), *TINY[:2], "--no-progress", *SERIAL],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                       preexec_fn=_as_limit(3 * 2 ** 30))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relpos compare: error: "), r.stderr
    assert message in lines[0]
    assert not (tmp_path / "o").exists()       # nothing was trained or written


def test_every_size_flag_is_capped():
    """Every integer flag of compare goes through a capped parser (a new flag must too)."""
    from relpos.cli import build_parser
    compare = build_parser()._subparsers._group_actions[0].choices["compare"]
    int_flags = [a for a in compare._actions if a.metavar == "N"]
    assert {a.option_strings[0] for a in int_flags} >= {"--train-len", "--steps", "--jobs", "--threads",
                                                       "--d-model", "--layers", "--heads", "--batch-size"}
    for a in int_flags:
        lo = 0 if a.option_strings[0] == "--extend-steps" else 1  # 0 = no fine-tune
        with pytest.raises(Exception, match=f"expected an integer from {lo} to"):
            a.type(str(10 ** 12))
