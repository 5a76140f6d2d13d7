"""How relpos' OpenMP threads wait, chosen before libgomp loads.

libgomp's idle threads spin (by default for about 300,000 iterations) before
they sleep, at the end of every parallel region. A training step opens ~60
regions, often milliseconds apart: on a machine where other processes compete
for the cores, the spinning thread takes the CPU its partner needs, and a
2-thread step of the small model took 10x its 1-thread time (median 230-290 ms
against 23 ms, measured with the other helpers' jobs running). A short spin
(GOMP_SPINCOUNT=1000, a few microseconds) keeps back-to-back regions fast and
hands the CPU back soon after.

libgomp reads its variables once, when it is loaded, which is when relpos._C
is imported; so relpos sets the variable just for that import and removes it
again (child processes start from the user's environment). A user's own
OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins, and a libgomp that another
library loaded first keeps the settings it started with.
"""
import os

#: the spin count relpos asks libgomp for when the user set none
SPINCOUNT = "1000"
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
        policy = f"relpos default (GOMP_SPINCOUNT={SPINCOUNT}: a short spin, then sleep)"
    return policy


def after_import() -> None:
    """Remove the variable that before_import set (libgomp has read it)."""
    if policy.startswith("relpos default") and os.environ.get("GOMP_SPINCOUNT") == SPINCOUNT:
        del os.environ["GOMP_SPINCOUNT"]
