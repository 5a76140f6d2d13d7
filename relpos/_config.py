"""Threads and build facts: set_num_threads, get_num_threads, config, show_config.

The bottom of the package (it only talks to the extension), so every layer may
use it; ``relpos`` re-exports these names.
"""
import numbers
import os

from . import _C, _omp_env

__version__ = "0.1.0"

__all__ = ["set_num_threads", "get_num_threads", "max_threads", "config", "show_config", "__version__"]


def max_threads() -> int:
    """The largest count :func:`set_num_threads` accepts: 4 x the CPUs of this machine
    (beyond that, threads only contend, and per-thread scratch memory grows)."""
    return 4 * (os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Threads every relpos kernel uses: ``1 <= n <= max_threads()`` (4 x the
    CPU count); 0 restores the default, which follows ``OMP_NUM_THREADS``, a
    threadpoolctl limit, or the number of cores. Results do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int; got {type(n).__name__}")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 1 (or 0 for the default); got {n}")
    cap = max_threads()
    if n > cap:
        raise ValueError(f"n must be at most {cap} (4 x the {cap // 4} CPUs here); got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Threads relpos kernels use now."""
    return _C.get_num_threads()


def config() -> dict:
    """Build and run-time facts as a dict (version, OpenMP, threads, SIMD path, compiler, flags).

    ``backing_off`` is True while relpos runs its parallel regions on one thread
    because it saw its threads stall (another process had their cores; it
    tries threads again after a second; results are the same either way)."""
    c = dict(_C.config())
    c["version"] = __version__
    c["omp_wait"] = _omp_env.policy
    return c


def show_config() -> None:
    """Print the version, OpenMP and threads, the SIMD path of each area (GEMM, attention,
    elementwise, exp) as the kernels choose it now, compiler and flags."""
    c = config()
    print(f"relpos {c['version']}")
    print(f"  OpenMP        : {'on' if c['openmp'] else 'off (serial build)'}")
    print(f"  threads       : {c['num_threads']}"
          + ("  (a forked child: serial, since OpenMP's pool does not survive fork)" if c["forked_child"] else "")
          + ("  (backing off to 1 for now: its threads were kept off their cores)" if c["backing_off"] else ""))
    print(f"  OpenMP wait   : {c['omp_wait']}")
    paths = c.get("simd_paths", {})
    print("  SIMD paths    : " + ", ".join(f"{k} {v}" for k, v in paths.items())
          + f" (CPU has AVX2+FMA: {c['cpu_avx2_fma']})")
    print(f"  compiler      : {c['compiler']}")
    print(f"  CFLAGS        : {c['cflags']}")
    print(f"  SIMD CFLAGS   : {c['simd_cflags']} (AVX2 translation unit only)")
