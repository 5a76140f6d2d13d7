"""Fork safety (issue 6): relpos used in the parent with 2 OpenMP threads (so
libgomp's pool exists), then in os.fork() children, multiprocessing 'fork' and
'spawn' pools and a ProcessPoolExecutor (as relpos.experiments sweeps do) —
correct results, no hang. Every child runs under a timeout.

    python -m pytest tests/test_fork.py -q
"""
import concurrent.futures as cf
import multiprocessing as mp
import os
import pickle
import signal
import sys

import numpy as np
import pytest

import relpos
import relpos._C as C

TIMEOUT = 120


def work(seed):
    """Attention fwd+bwd, a GEMM and two training steps; returns arrays to compare."""
    import relpos
    from relpos.nn import TransformerLM
    from relpos.optim import AdamW
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((2, 2, 40, 8)).astype(np.float32) for _ in range(3))
    o, lse = C.attention_fwd(q, k, v)
    g = C.attention_bwd(q, k, v, o, lse, o)
    a = r.standard_normal((70, 50)).astype(np.float32)
    model = TransformerLM(64, d_model=16, n_layers=1, n_heads=2, encoding="rope", max_len=32, seed=seed)
    opt = AdamW(model.parameters(), lr=1e-2)
    ids = r.integers(0, 64, size=(2, 13))
    for _ in range(2):
        opt.zero_grad()
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        opt.step()
    return {"o": o, "dq": g["q"], "gemm": C.gemm(a, a, trans_b=True), "loss": np.float64(loss.item()),
            "w": model.state_dict()["tok_emb.weight"].copy(), "threads": relpos.get_num_threads(),
            "forked": relpos.config()["forked_child"]}


def same(a, b):
    return all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in ("o", "dq", "gemm", "loss", "w"))


@pytest.fixture
def parent_busy(threads):
    """The parent has run kernels on 2 threads (libgomp's thread pool is alive)."""
    prev = relpos.get_num_threads()
    relpos.set_num_threads(2)
    ref = work(0)
    yield ref
    relpos.set_num_threads(prev)


def test_os_fork_child_runs_kernels(parent_busy):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(rfd)
            signal.alarm(TIMEOUT)
            data = pickle.dumps(work(0))
            with os.fdopen(wfd, "wb") as f:
                f.write(data)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: status {status}"
    res = pickle.loads(data)
    assert same(res, parent_busy)
    assert res["forked"] is True
    # the parent still works, on its threads, after the fork
    assert same(work(0), parent_busy)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool(parent_busy, method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method} not available on {sys.platform}")
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        res = pool.map_async(work, [0, 1, 0]).get(timeout=TIMEOUT)
    assert same(res[0], parent_busy) and same(res[2], parent_busy)
    assert not same(res[1], parent_busy)
    if method == "spawn":
        assert res[0]["forked"] is False


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(parent_busy, method):
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
        futs = [ex.submit(work, s) for s in (0, 1)]
        res = [f.result(timeout=TIMEOUT) for f in futs]
    assert same(res[0], parent_busy)
    assert not same(res[1], parent_busy)


def test_nested_fork(parent_busy):
    """A forked worker that forks again (a pool inside a worker)."""
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
        res = ex.submit(_fork_again).result(timeout=TIMEOUT)
    assert same(res, parent_busy)


def _fork_again():
    work(0)
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
        return ex.submit(work, 0).result(timeout=TIMEOUT)
