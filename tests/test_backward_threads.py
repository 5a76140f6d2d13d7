"""Concurrent backward into shared parameters (issue 12, item 6).

Several Python threads run forward + backward of one model at once (one batch
per thread, as a user's data-parallel loop would); every contribution must
reach ``.grad``. The inputs hold small integers so that every partial sum is
exact in float32: the result must then equal the serial sum bit for bit,
whatever order the threads add in. (Arrays are large enough that NumPy drops
the GIL inside ``+=``, where an unlocked accumulation loses updates.)

    python -m pytest tests/test_backward_threads.py -q
"""
import sys
import threading

import numpy as np

import relpos
import relpos.nn as nn

N_THREADS, N_PASSES = 4, 60


def run_together(fns):
    """Run every fn in its own thread, started at once; the GIL is handed over often, so that
    an unguarded read-modify-write of .grad would show its race in every run."""
    errors = []
    barrier = threading.Barrier(len(fns))
    prev = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def work(fn):
        try:
            barrier.wait()
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(fn,)) for fn in fns]
    for t in ts:
        t.start()
    try:
        for t in ts:
            t.join(timeout=300)
            assert not t.is_alive(), "a thread hung"
    finally:
        sys.setswitchinterval(prev)
    if errors:
        raise errors[0]


def test_concurrent_backward_into_one_leaf_loses_nothing():
    rng = np.random.default_rng(0)
    n = 1 << 20
    w = relpos.tensor(np.zeros(n), requires_grad=True)
    xs = [relpos.tensor(rng.integers(-3, 4, n)) for _ in range(N_THREADS)]

    def job(x):
        def run():
            for _ in range(N_PASSES):
                (w * x).sum().backward()     # d/dw = x, added into w.grad
        return run

    run_together([job(x) for x in xs])
    expect = sum(x.numpy().astype(np.float64) for x in xs) * N_PASSES
    assert w.grad is not None and w.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad, expect.astype(np.float32))


def test_concurrent_backward_into_a_shared_layer_equals_the_serial_sum():
    rng = np.random.default_rng(1)
    lin = nn.Linear(512, 512, seed=0)
    batches = [(relpos.tensor(rng.integers(-2, 3, (32, 512))), rng.integers(-2, 3, (32, 512)).astype(np.float32))
               for _ in range(N_THREADS)]

    def passes(x, g):
        for _ in range(N_PASSES):
            lin(x).backward(g)               # dW = g^T x, db = sum(g): small integers, exact

    for x, g in batches:
        passes(x, g)
    serial = (lin.weight.grad.copy(), lin.bias.grad.copy())
    lin.zero_grad()

    run_together([lambda x=x, g=g: passes(x, g) for x, g in batches])
    np.testing.assert_array_equal(lin.weight.grad, serial[0])
    np.testing.assert_array_equal(lin.bias.grad, serial[1])
    # and the serial sum is the right one
    want = sum(g.T.astype(np.float64) @ x.numpy() for x, g in batches) * N_PASSES
    np.testing.assert_array_equal(serial[0], want.astype(np.float32))


def test_threads_may_share_part_of_a_graph():
    """Per-call gradient buffers: two threads backpropagating through one common node
    (here h) at the same time each deliver their own contribution."""
    rng = np.random.default_rng(2)
    w = relpos.tensor(np.zeros(1 << 18), requires_grad=True)
    x = relpos.tensor(rng.integers(-3, 4, 1 << 18))
    h = w * x                                # shared by every thread's graph
    heads = [relpos.tensor(rng.integers(-2, 3, 1 << 18)) for _ in range(N_THREADS)]
    losses = [(h * c).sum() for c in heads]

    def job(loss):
        def run():
            for _ in range(N_PASSES):
                loss.backward()
        return run

    run_together([job(loss) for loss in losses])
    expect = sum(c.numpy().astype(np.float64) for c in heads) * x.numpy() * N_PASSES
    np.testing.assert_array_equal(w.grad, expect.astype(np.float32))
