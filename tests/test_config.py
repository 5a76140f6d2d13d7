import pytest

import relpos


def test_show_config_prints_facts(capsys):
    relpos.show_config()
    out = capsys.readouterr().out
    for word in ("relpos", "OpenMP", "threads", "SIMD path", "compiler", "CFLAGS"):
        assert word in out


def test_set_get_num_threads_roundtrip(threads):
    assert threads(1, relpos.get_num_threads) == 1
    assert threads(2, relpos.get_num_threads) == 2


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad(bad, exc):
    with pytest.raises(exc, match="n must"):
        relpos.set_num_threads(bad)


@pytest.mark.skipif(__import__("os").environ.get("RELPOS_REQUIRE_OPENMP") != "1",
                    reason="only meaningful where the build was required to have OpenMP (CI)")
def test_openmp_required_in_ci():
    assert relpos.config()["openmp"] is True


def _in_fresh_process(code, **env):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    full_env.update(env, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                       cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("omp", [None, "3"])
def test_zero_restores_the_default_after_an_explicit_count(omp):
    """set_num_threads(7) used to call omp_set_num_threads(7) as well, which moved OpenMP's own
    default, so set_num_threads(0) came back to 7, not to OMP_NUM_THREADS or the core count."""
    if not relpos.config()["openmp"]:
        pytest.skip("a serial build always runs one thread")
    code = ("import relpos; d = relpos.get_num_threads(); relpos.set_num_threads(7); s = relpos.get_num_threads(); "
            "relpos.set_num_threads(0); print(d, s, relpos.get_num_threads())")
    env = {} if omp is None else {"OMP_NUM_THREADS": omp}
    default, seven, back = map(int, _in_fresh_process(code, **env))
    import os
    assert default == (int(omp) if omp else os.cpu_count())
    assert seven == 7 and back == default


def test_thread_count_cap():
    import os
    cap = 4 * (os.cpu_count() or 1)
    assert relpos.max_threads() == cap
    for bad in (cap + 1, 10 ** 6, 2 ** 40):
        with pytest.raises(ValueError, match=rf"n must be at most {cap} \(4 x the {cap // 4} CPUs here\); got {bad}"):
            relpos.set_num_threads(bad)
    prev = relpos.get_num_threads()
    try:
        relpos.set_num_threads(cap)           # the cap itself is allowed
        assert relpos.get_num_threads() == (cap if relpos.config()["openmp"] else 1)
        import numpy as np
        relpos.set_num_threads(np.int64(2))   # any integer type
        assert relpos.get_num_threads() == (2 if relpos.config()["openmp"] else 1)
    finally:
        relpos.set_num_threads(prev)
