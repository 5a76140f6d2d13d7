"""Ctrl-C during compare/sweep (issue 12, item 5).

SIGINT to the main process of ``compare(jobs=2)`` (what Jupyter's "interrupt
kernel" sends) used to wait for the runs in progress (``shutdown(wait=True)``).
Now the workers are terminated and the process returns within 2 s, keeping
the encodings that had finished in results.json / results.csv.

    python -m pytest tests/test_interrupt.py -q
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from relpos.data import default_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENCY_LIMIT = 2.0


def _children(pid):
    """Direct child pids of pid (Linux /proc)."""
    kids = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
    except FileNotFoundError:
        pass
    return kids


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads child processes from /proc")
def test_sigint_to_compare_with_two_jobs_returns_fast_and_keeps_finished_runs(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(default_corpus()[:20000], encoding="utf-8")
    out = tmp_path / "out"
    # two encodings x two seeds on two workers: alibi's seeds finish together, then rope's
    # two runs start; SIGINT lands while they train (each run takes several seconds)
    args = [sys.executable, "-m", "relpos", "compare", "--encodings", "alibi,rope", "--seeds", "0,1",
            "--jobs", "2", "--steps", "1500", "--train-len", "32", "--eval-lens", "32", "--d-model", "32",
            "--layers", "1", "--heads", "2", "--batch-size", "8", "--text", str(text), "--out", str(out),
            "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 400
        results = out / "results.json"
        while not results.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "alibi never finished"
            time.sleep(0.05)
        workers = {p for p in _children(proc.pid) if _running(p)}
        assert len(workers) >= 2                     # the pool's processes (rope's runs)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        latency = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"\nSIGINT -> exit latency of compare(jobs=2): {latency:.2f} s")
    assert proc.returncode == 130, (stdout, stderr)
    assert latency < LATENCY_LIMIT, f"compare took {latency:.2f} s to stop after SIGINT"
    # one line says where the finished encodings are; no traceback, no leaked-semaphore warning
    assert stderr.strip().splitlines() == [f"relpos compare: interrupted; finished encodings (alibi) are in "
                                           f"{results} and results.csv"], stderr
    kept = json.loads(results.read_text())
    assert [(r["encoding"], r["seed"]) for r in kept["runs"]] == [("alibi", 0), ("alibi", 1)]
    assert (out / "results.csv").read_text().splitlines()[0] == "encoding,seed,length,perplexity"
    # the workers were terminated, not left training
    time.sleep(0.5)
    assert not [p for p in workers if _running(p)]


def test_interrupted_compare_carries_the_finished_encodings(tmp_path, monkeypatch):
    """In a notebook without `out`, the KeyboardInterrupt holds what finished."""
    import relpos.experiments as ex
    real = ex.run_config

    def spy(cfg):
        if cfg["encoding"] == "rope" and cfg["seed"] == 1:
            raise KeyboardInterrupt
        return real(cfg)

    monkeypatch.setattr(ex, "run_config", spy)
    with pytest.raises(KeyboardInterrupt) as info:
        ex.compare(["alibi", "rope"], seeds=(0, 1), train_len=16, eval_lens=[16], steps=2, d_model=16,
                   n_layers=1, n_heads=2, batch_size=4, eval_tokens=128, text=default_corpus()[:8000],
                   progress=False)
    res = info.value.result
    # rope had finished seed 0 only: an unfinished encoding is left out, as in results.json
    assert [(r["encoding"], r["seed"]) for r in res.runs] == [("alibi", 0), ("alibi", 1)]
    assert "(not run)" in res.table()


def test_interrupt_between_the_two_result_files_leaves_both(tmp_path, monkeypatch):
    """An interrupt that lands after results.csv was written and before results.json
    (the CLI's SIGINT can come at any line): compare writes both again before it
    re-raises, so each holds the finished encodings."""
    import relpos.experiments as ex
    real_save = ex.CompareResult.save
    calls = []

    def save(self, path):
        calls.append(path)
        if len(calls) == 1:  # the first encoding's results.json: interrupted before it is written
            raise KeyboardInterrupt
        return real_save(self, path)

    monkeypatch.setattr(ex.CompareResult, "save", save)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ex.compare(["alibi", "rope"], seeds=(0,), train_len=16, eval_lens=[16], steps=2, d_model=16,
                   n_layers=1, n_heads=2, batch_size=4, eval_tokens=128, text=default_corpus()[:8000],
                   progress=False, out=str(out))
    kept = json.loads((out / "results.json").read_text())
    assert [(r["encoding"], r["seed"]) for r in kept["runs"]] == [("alibi", 0)]
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "encoding,seed,length,perplexity" and {r.split(",")[0] for r in rows[1:]} == {"alibi"}


def test_sweep_stops_its_pool_at_once():
    """sweep's own process pool: an interrupt while runs train terminates them."""
    import threading

    import relpos.experiments as ex
    configs = [dict(encoding="alibi", steps=100000, train_len=16, d_model=16, n_layers=1, n_heads=2,
                    batch_size=4, eval_lens=[16], text=default_corpus()[:8000], seed=s) for s in (0, 1)]
    seen = {}
    real_stop = ex._stop_pool

    def stop_pool(executor, grace=0.5):
        seen["procs"] = list(executor._processes.values())
        return real_stop(executor, grace)

    def interrupt_soon():
        time.sleep(3.0)   # the workers are up and training by then
        os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes the main thread's wait

    ex_stop = pytest.MonkeyPatch()
    ex_stop.setattr(ex, "_stop_pool", stop_pool)
    threading.Thread(target=interrupt_soon, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.sweep(configs, max_workers=2, progress=False)
    finally:
        ex_stop.undo()
    took = time.monotonic() - t0
    assert took < 3.0 + LATENCY_LIMIT + 1.0
    assert len(seen["procs"]) == 2
    # the pool's manager thread may reap a killed worker while we poll it: multiprocessing's
    # poll() then sees ECHILD and reports "alive" until the reaper stores the exit code, so
    # allow that moment (a worker still training 100000 steps stays alive far longer)
    deadline = time.monotonic() + 2.0
    while any(p.is_alive() for p in seen["procs"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in seen["procs"])
