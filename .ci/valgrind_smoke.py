"""Smoke script for .ci/valgrind: every relpos._C entry point called on small
shapes -- its valid call (from tests/fuzz_specs.py), the same call with a
non-contiguous copy of each array input, and a few error paths -- then a short
training step through the Python API. Prints how many calls ran."""
import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [root, os.path.join(root, "tests")]

import numpy as np  # noqa: E402
from fuzz_specs import SPECS, Arg, valid_call  # noqa: E402

import relpos._C as C  # noqa: E402


def call(fn, args):
    return fn(*[a.value for a in args if a.pos], **{a.name: a.value for a in args if not a.pos})


ok = err = 0
for name in sorted(SPECS):
    fn = getattr(C, name)
    for seed in (0, 1):
        args = valid_call(name, seed=seed).args
        call(fn, args)
        ok += 1
        for i, a in enumerate(args):
            if a.kind in ("f", "i", "b") and isinstance(a.value, np.ndarray) and a.value.ndim:
                big = np.zeros(a.value.shape[:-1] + (2 * a.value.shape[-1],), a.value.dtype)
                big[..., ::2] = a.value
                try:
                    call(fn, args[:i] + [Arg(a.name, big[..., ::2], a.kind, a.pos)] + args[i + 1:])
                    ok += 1
                except ValueError:
                    err += 1     # the optimizers' grad must be contiguous
                bad = np.zeros((3,) + a.value.shape, a.value.dtype)
                try:
                    call(fn, args[:i] + [Arg(a.name, bad, a.kind, a.pos)] + args[i + 1:])
                    ok += 1
                except (ValueError, TypeError, IndexError):
                    err += 1
C.set_num_threads(2)
C.config()
C.gemm_kernel()

from relpos.nn import TransformerLM  # noqa: E402
from relpos.optim import AdamW  # noqa: E402

for enc in ("rope", "alibi", "shaw", "cope"):
    model = TransformerLM(64, d_model=16, n_layers=1, n_heads=2, encoding=enc, max_len=16)
    opt = AdamW(model.parameters(), lr=1e-2)
    ids = np.random.default_rng(0).integers(0, 64, size=(2, 9))
    loss = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    opt.step()
    ok += 1
print(f"valgrind smoke: {ok} calls returned, {err} raised the expected errors, {len(SPECS)} entry points")

if os.environ.get("RELPOS_VALGRIND_SELFTEST") == "1":
    # the check must be able to fail: ids read from never-written memory make the
    # bridge's range check branch on uninitialised values inside _C
    try:
        C.embedding_fwd(np.empty(4096, np.int64), np.zeros((4, 2), np.float32))  # > NumPy's small-block cache
    except IndexError:
        pass
    print("valgrind smoke: self-test call on uninitialised ids made")
