"""How relpos' OpenMP threads wait, chosen before libgomp loads.

libgomp's idle threads spin (by default for 300,000 iterations, about 7.5 ms
on the 2-vCPU AMD EPYC VM where this was measured, a PAUSE taking 25 ns) before
they sleep, at the end of every parallel region. A training step opens ~60
regions, microseconds to a millisecond or two apart.

- Too short a spin and the partner thread is asleep when the next region
  opens; waking it is slow on a VM. With 1000 (25 us) 256^3 products ran at
  one thread's speed in half the calls (380 us against 190 us with 30,000).
  With 30,000 (0.75 ms), which relpos asked for until 2026-12-02, the small
  model's 2-thread step was slow when it came after a longer pause: steps
  started 45 ms after the previous process's step took 13.7-19.9 ms (median,
  three rounds, a torch process stepping in between as in bench_train.py)
  against 10.7-13.1 ms 20 ms after it; with 300,000, 10.4-11.6 ms either
  way. Back to back the longer spin was also faster in three of three rounds
  (14.0-19.1 ms against 16.0-24.8 ms, a busy hour).
- Too long a spin and, where other processes compete for the cores, the
  spinning thread takes the CPU its partner needs: before relpos could back
  off, a 2-thread step of the small model took 10x its 1-thread time with
  libgomp's 300,000. It no longer does: the GEMM's stall detector makes every
  kernel run on one thread for a second (csrc/core/gemm.c, rp_back_off). With
  a core kept busy by a spinning process the 2-thread step took 12.3-13.3 ms
  with 300,000 against 12.9-16.8 ms with 30,000 (1 thread: 11.8-15.8); with
  a second relpos process training on 2 threads beside it, 17.2-17.4 ms
  against 16.2-22.7 ms.

So relpos asks for libgomp's own default, GOMP_SPINCOUNT=300000, explicitly:
``relpos.config()["omp_wait"]`` can then say what is in force, whichever
default a libgomp build has.

libgomp reads its variables once, when it is loaded, which is when relpos._C
is imported; so relpos sets the variable just for that import and removes it
again (child processes start from the user's environment). A user's own
OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins, and a libgomp that another
library loaded first keeps the settings it started with.
"""
import os

#: the spin count relpos asks libgomp for when the user set none
SPINCOUNT = "300000"
#: the policy in force, in words (set by before_import; relpos.config()["omp_wait"])
policy = "unknown"
_USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _libgomp_loaded() -> bool:
    """True if the libgomp relpos links (soname libgomp.so.1) is already mapped (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return any("/libgomp.so" in line for line in f)
    except OSError:
        return False


def before_import() -> str:
    """Set GOMP_SPINCOUNT for the coming import of relpos._C; returns (and
    keeps in ``policy``) the policy in words."""
    global policy
    user = [k for k in _USER_VARS if k in os.environ]
    if user:
        policy = "as set by the user (" + ", ".join(f"{k}={os.environ[k]}" for k in user) + ")"
    elif _libgomp_loaded():
        policy = "libgomp's own (it was loaded before relpos)"
    else:
        os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
        policy = (f"relpos default (GOMP_SPINCOUNT={SPINCOUNT}: {int(SPINCOUNT):,} PAUSEs, "
                  "~7.5 ms on an AMD EPYC, then sleep)")
    return policy


def after_import() -> None:
    """Remove the variable that before_import set (libgomp has read it)."""
    if policy.startswith("relpos default") and os.environ.get("GOMP_SPINCOUNT") == SPINCOUNT:
        del os.environ["GOMP_SPINCOUNT"]
