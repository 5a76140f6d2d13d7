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


def _glibc():
    import platform
    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the malloc thresholds are a glibc setting")
def test_step_sized_outputs_reuse_pages():
    """Outputs of a few MB freed and allocated again (what every training step
    does) come back from the heap, not as fresh zeroed pages (rp_init's mallopt)."""
    import os
    import resource
    import subprocess
    import sys
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_") \
            or os.environ.get("RELPOS_MALLOC_TUNE") == "0":
        pytest.skip("the environment sets its own malloc policy")
    if os.environ.get("RELPOS_SANITIZED") == "1":
        pytest.skip("under ASan, malloc is the sanitizer's allocator, which mallopt does not tune")
    assert relpos.config()["malloc_tuned"] is True
    import numpy as np
    x = np.ones((1024, 64), np.float32)
    w = np.ones((256, 64), np.float32)
    for _ in range(3):
        relpos._C.linear_gelu_fwd(x, w, None)  # two 1 MB outputs, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        relpos._C.linear_gelu_fwd(x, w, None)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # untuned glibc: ~500 faults per call (2 MB of fresh pages); tuned: none in steady state
    assert faults < 200, faults
    # and RELPOS_MALLOC_TUNE=0 leaves glibc's policy alone
    code = "import relpos; print(relpos.config()['malloc_tuned'])"
    env = dict(os.environ, RELPOS_MALLOC_TUNE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _run_py(code, **env_over):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_over)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return out.stdout.strip()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps") or not relpos.config()["openmp"],
                    reason="the wait policy is chosen for libgomp on Linux")
def test_openmp_wait_policy_set_for_relpos_import_only():
    """relpos asks libgomp for a spin of 300,000 iterations (libgomp's own
    default, set explicitly; 30,000 let the partner thread fall asleep within
    a step that followed a pause, see relpos/_omp_env.py), only for its own
    import: child processes see the user's environment, and a user's setting or
    an earlier libgomp wins."""
    code = "import os, relpos; print(relpos.config()['omp_wait']); print('GOMP_SPINCOUNT' in os.environ)"
    policy, leaked = _run_py(code).splitlines()
    assert policy.startswith("relpos default (GOMP_SPINCOUNT=300000:") and leaked == "False"
    assert _run_py("import relpos; print(relpos.config()['omp_wait'])", OMP_WAIT_POLICY="active") \
        == "as set by the user (OMP_WAIT_POLICY=active)"
    code = "import ctypes; ctypes.CDLL('libgomp.so.1'); import relpos; print(relpos.config()['omp_wait'])"
    assert _run_py(code) == "libgomp's own (it was loaded before relpos)"


def test_config_names_the_simd_path_of_every_area(capsys):
    """show_config() used to say "avx2+fma" on an AVX-512 machine whose GEMM and attention ran
    AVX-512 kernels: each area now reports the kernel it uses, and force_portable moves them all."""
    from relpos import _C
    paths = relpos.config()["simd_paths"]
    assert set(paths) == {"gemm", "attention", "elementwise", "exp"}
    assert paths["gemm"] == _C.gemm_kernel()
    if relpos.config()["cpu_avx2_fma"]:
        assert paths["gemm"] in ("avx2", "avx512") and paths["attention"] == paths["gemm"]
        assert paths["elementwise"] == "avx2+fma" and paths["exp"] in ("avx2", "avx512")
    _C.force_portable(True)
    try:
        assert relpos.config()["simd_paths"] == {"gemm": "portable", "attention": "portable",
                                                 "elementwise": "portable", "exp": "scalar"}
    finally:
        _C.force_portable(False)
    relpos.show_config()
    assert f"gemm {paths['gemm']}, attention {paths['attention']}" in capsys.readouterr().out
