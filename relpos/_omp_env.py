"""How relpos' OpenMP threads wait, chosen before libgomp loads.

libgomp's idle threads spin (by default for 300,000 iterations, about 7.5 ms
on the 2-vCPU AMD EPYC VM where this was measured, a PAUSE taking 25 ns) before
they sleep, at the end of every parallel region. A training step opens ~60
regions, often microseconds to a millisecond apart: on a machine where other
processes compete for the cores, the spinning thread takes the CPU its partner
needs, and a 2-thread step of the small model took 10x its 1-thread time (median
230-290 ms against 23 ms, measured with the other helpers' jobs running). A
thread that sleeps, though, is late for the next region: with a spin of 1000
(25 us) 256^3 products ran at one thread's speed in half the calls (median
380 us against 190 us with a spin of 30000), and the small step took
11-14.5 ms against 9-11 ms. relpos asks
for GOMP_SPINCOUNT=30000 (about 0.75 ms there): awake between the regions of a
step, asleep soon after it. Under load the threads are not left spinning
against the other process: the GEMM's stall detector makes every kernel run
on one thread for a second (see csrc/core/gemm.c, rp_back_off), and the small
step with a core kept busy took 15.7-17.3 ms on 2 threads against 16 ms on one
(27 ms before every kernel backed off, 64 ms with this spin and only the GEMM
backing off).

libgomp reads its variables once, when it is loaded, which is when relpos._C
is imported; so relpos sets the variable just for that import and removes it
again (child processes start from the user's environment). A user's own
OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins, and a libgomp that another
library loaded first keeps the settings it started with.
"""
import os

#: the spin count relpos asks libgomp for when the user set none
SPINCOUNT = "30000"
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
        policy = f"relpos default (GOMP_SPINCOUNT={SPINCOUNT}: a spin of ~1 ms, then sleep)"
    return policy


def after_import() -> None:
    """Remove the variable that before_import set (libgomp has read it)."""
    if policy.startswith("relpos default") and os.environ.get("GOMP_SPINCOUNT") == SPINCOUNT:
        del os.environ["GOMP_SPINCOUNT"]
