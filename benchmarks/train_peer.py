"""PyTorch's side of bench_train.py, in a process of its own.

bench_train.py starts one of these per (configuration, encoding, threads) and
drives it over stdin/stdout, one JSON line per message, so that the steps stay
interleaved (relpos step, torch step, compiled step, relpos step, ...) while
each library runs with its own OpenMP settings: torch is imported here before
relpos, so its libgomp starts with the user's wait policy (libgomp's default
spin unless set), not the spin relpos asks for in its own process, and
neither library's idle threads belong to the other's process.

    python benchmarks/train_peer.py '{"enc": "rope", "config": {...}, "threads": 1, "compile": true}'

Messages (stdin -> stdout):
  start-up           -> {"ready": true, "loss_torch", ["loss_compile", "compile_s" | "compile_error"],
                         "omp_env"} or {"torch_error": "..."}
  {"cmd": "warm"}    -> {"ok": true}            one untimed step of each peer
  {"cmd": "step", "peer": "torch"|"compile"} -> {"s": seconds} one timed step
  {"cmd": "quit"}    -> exits
"""
import json
import os
import sys
import time


def _reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv=None):
    spec = json.loads((argv or sys.argv[1:])[0])
    omp_env = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
               if k in os.environ}
    try:
        import torch  # first: its OpenMP runtime starts with this process's own environment
    except ImportError as e:
        _reply({"torch_error": f"torch not available: {e}"})
        return 0
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import bench_train as bt  # imports relpos: only to build the same initial weights and batch

    cfg, enc, threads = spec["config"], spec["enc"], int(spec["threads"])
    torch.set_num_threads(threads)
    tx, ty = (torch.from_numpy(a) for a in bt.step_batch(cfg))
    model, _ = bt.relpos_model(enc, cfg)
    peers = {"torch": bt.torch_model(model, enc, cfg)}
    ready = {"ready": True, "omp_env": omp_env or "unset (libgomp's defaults)",
             "torch_threads": torch.get_num_threads()}
    if spec.get("compile"):
        try:
            c_step = bt.torch_model(model, enc, cfg, compile=True)
            t0 = time.perf_counter()
            ready["loss_compile"] = c_step(tx, ty)  # compiles here (from the same initial weights)
            ready["compile_s"] = time.perf_counter() - t0
            peers["compile"] = c_step
        except Exception as e:  # any failure to compile: report it, keep the other figures
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            ready["compile_error"] = f"torch.compile skipped: {type(e).__name__}: {msg}"
    ready["loss_torch"] = peers["torch"](tx, ty)
    _reply(ready)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "warm":
            for f in peers.values():
                f(tx, ty)
            _reply({"ok": True})
        elif msg["cmd"] == "step":
            f = peers[msg["peer"]]
            t0 = time.perf_counter()
            f(tx, ty)
            _reply({"s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
