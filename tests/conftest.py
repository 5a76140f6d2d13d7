import os

import numpy as np
import pytest

import relpos


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def threads():
    """Run a callable at a given thread count, restoring the previous one."""
    prev = relpos.get_num_threads()

    def run(n, fn, *args, **kwargs):
        relpos.set_num_threads(n)
        try:
            return fn(*args, **kwargs)
        finally:
            relpos.set_num_threads(prev)

    yield run
    relpos.set_num_threads(prev)


def pytest_report_header(config):
    c = relpos.config()
    return (f"relpos {c['version']}: openmp={c['openmp']} threads={c['num_threads']} "
            f"simd={c['simd']} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
