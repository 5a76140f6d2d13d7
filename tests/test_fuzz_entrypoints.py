"""Fuzzing of every relpos._C entry point (issue 6).

For each entry point a spec in tests/fuzz_specs.py draws a valid call (shapes
include 0 and 1). Each example:
  1. runs the valid call: it must succeed, give the documented shapes, and leave
     every input unmodified (compared to copies);
  2. mutates ONE argument and runs again. Layout mutations of an input
     (non-contiguous, Fortran order, read-only, misaligned at byte offset 1 or 2
     of a uint8 buffer) must give the bit-identical result; the same mutations
     of an output / in-place array must be rejected (unless the mutated array is
     still C-contiguous, aligned and writeable). Dtype changes, NaN/Inf, absurd
     sizes (> 2**62 bytes through zero-stride views, or huge size arguments),
     mismatched shapes and wrong types (list, None, scalar, string) must give a
     result or a TypeError/ValueError/IndexError/MemoryError/OverflowError whose
     message names an argument; inputs stay unmodified either way.
A hang fails the run through faulthandler (a traceback after 300 s per entry point).

    python -m pytest tests/test_fuzz_entrypoints.py -q
RELPOS_FUZZ_EXAMPLES overrides the 200 examples per entry point.
"""
import copy
import faulthandler
import os

import numpy as np
import pytest
from fuzz_specs import ARRAY_KINDS, CONFIG_ENTRY_POINTS, SPECS, Arg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relpos._C as C

N_EXAMPLES = int(os.environ.get("RELPOS_FUZZ_EXAMPLES", "200"))
SANITIZED = os.environ.get("RELPOS_SANITIZED") == "1"
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
ALLOWED = (TypeError, ValueError, IndexError, MemoryError, OverflowError)
ENTRY_POINTS = sorted(n for n in dir(C) if not n.startswith("_") and callable(getattr(C, n)))

# examples run per entry point, reported by test_report_counts (docs/RELIABILITY.md)
COUNTS = {}


def test_every_entry_point_has_a_spec():
    missing = [n for n in ENTRY_POINTS if n not in SPECS and n not in CONFIG_ENTRY_POINTS]
    assert not missing, f"entry points without a fuzz spec: {missing}"
    assert len(ENTRY_POINTS) >= 61  # 69 before the ALiBi, T5, KERPLE and FIRE kernels left for relpos ops / pwl


# ---------------------------------------------------------------- helpers

def call(fn, args):
    pos = [a.value for a in args if a.pos]
    kw = {a.name: a.value for a in args if not a.pos}
    return fn(*pos, **kw)


def flat(result):
    """Result as a list of ndarrays / scalars (dicts by sorted key)."""
    if isinstance(result, dict):
        return [x for k in sorted(result) for x in flat(result[k])]
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in flat(r)]
    return [result]


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return a.tobytes() == b.tobytes() or np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return a == b


def all_same(xs, ys):
    return len(xs) == len(ys) and all(same(x, y) for x, y in zip(xs, ys))


def fresh(args):
    """Copies of the written arrays (out / io) so each call starts from the same state."""
    out = []
    for a in args:
        b = copy.copy(a)
        if a.kind in ("out", "io") and isinstance(a.value, np.ndarray):
            b.value = a.value.copy()
        out.append(b)
    return out


def buffers(value):
    """The memory an argument reads: the array and, for a view, its base."""
    if isinstance(value, np.ndarray):
        bs = [value]
        base = value.base
        while isinstance(base, np.ndarray):
            bs.append(base)
            base = base.base
        return bs
    if isinstance(value, (list, tuple)):
        return [b for v in value for b in buffers(v)]
    return []


def snapshot(args, written_too=False):
    snap = []
    for a in args:
        if a.kind in ("out", "io", "iolist") and not written_too:
            continue
        for b in buffers(a.value):
            if b.dtype != object and b.nbytes < 1 << 24:
                snap.append((a.name, b, b.tobytes()))
    return snap


def check_unmodified(snap, when):
    for name, b, data in snap:
        assert b.tobytes() == data, f"{name} was modified {when}"


def outputs(result, args):
    """What a call produced: its return value plus the state of in-place arrays."""
    return flat(result) + [a.value for a in args if a.kind == "io" and isinstance(a.value, np.ndarray)]


def check_error(exc, names, must_name=None, fname=""):
    msg = str(exc)
    if isinstance(exc, MemoryError) and ("result of shape" in msg or f"{fname}: could not allocate" in msg):
        # an absurd size argument: the message shows the shape asked for, or the
        # kernel that could not get its scratch memory
        return
    if must_name is not None:
        assert must_name in msg, f"{type(exc).__name__} does not name {must_name!r}: {msg}"
    else:
        assert any(n in msg for n in names), f"{type(exc).__name__} names no argument of {sorted(names)}: {msg}"


# ---------------------------------------------------------------- mutations

def noncontig(x):
    if x.ndim == 0:
        return None
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
    v = big[..., 1::2]
    v[...] = x
    return v


def fortran(x):
    return np.asfortranarray(x) if x.ndim >= 2 else None


def readonly(x):
    y = x.copy()
    y.flags.writeable = False
    return y


def misaligned(x, off):
    if x.dtype == object:
        return None
    buf = np.zeros(x.nbytes + 16, np.uint8)
    v = buf[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
    v[...] = x
    return v


def huge(x):
    """A zero-stride view of x's ndim whose nominal size is > 2**62 bytes."""
    nd = max(x.ndim, 1)
    total = 62 - int(np.log2(x.dtype.itemsize))   # log2 of the element count
    shape = [1] * nd
    for i in range(nd):
        shape[i] = 2 ** (total // nd + (1 if i < total % nd else 0))
    return np.lib.stride_tricks.as_strided(np.zeros(1, x.dtype), shape=tuple(shape), strides=(0,) * nd)


def other_shape(draw, x):
    how = draw(st.sampled_from(["grow", "shrink", "add_dim", "drop_dim"]))
    shape = list(x.shape)
    if how == "add_dim" or not shape:
        shape = [2] + shape
    elif how == "drop_dim":
        shape = shape[1:]
    else:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = shape[i] + 1 if how == "grow" or shape[i] == 0 else shape[i] - 1
    return np.ones(shape, x.dtype)


LAYOUT = ("noncontig", "fortran", "readonly", "misaligned1", "misaligned2")
INPUT_KINDS = ("f", "i", "b", "d")


def mutations_for(a):
    if a.kind in INPUT_KINDS:
        m = list(LAYOUT) + ["dtype", "huge", "shape", "list", "scalar", "string"]
        if a.kind in ("f", "d"):
            m.append("nonfinite")
        if not a.opt:
            m.append("none")
        return m
    if a.kind in ("out", "io"):
        m = list(LAYOUT) + ["dtype", "shape", "list", "scalar", "string"]
        if a.kind == "io" and not a.opt:
            m.append("none")
        return m
    if a.kind == "n":
        return ["absurd", "negative"]
    if a.kind == "ix":
        return ["absurd_off", "bad_sign", "string"]
    if a.kind in ("list", "iolist"):
        return ["elem_dtype", "elem_noncontig", "elem_huge", "elem_string", "string"]
    return []


def apply(draw, a, how):
    """The mutated value, or None when the mutation does not apply to this value."""
    x = a.value
    if how in LAYOUT:
        if how == "noncontig":
            return noncontig(x)
        if how == "fortran":
            return fortran(x)
        if how == "readonly":
            return readonly(x)
        return misaligned(x, int(how[-1]))
    if how == "dtype":
        choices = {"f": [np.float64, np.int32, np.int64, np.bool_, object, np.float16],
                   "d": [np.float32, np.int64, object],
                   "i": [np.float32, np.float64, np.bool_, object, np.int32, np.uint8],
                   "b": [np.int64, np.float32, object, np.uint8]}.get(a.kind, [np.float64, np.int32, object])
        return x.astype(draw(st.sampled_from(choices)))
    if how == "nonfinite":
        if x.size == 0:
            return None
        y = x.copy()
        y.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return y
    if how == "huge":
        return huge(x)
    if how == "shape":
        return other_shape(draw, x)
    if how == "list":
        return x.tolist()
    if how == "scalar":
        return draw(st.sampled_from([1.0, 3, True]))
    if how == "string":
        return "x"
    if how == "none":
        return None
    if how == "absurd":
        return draw(st.sampled_from([2**62, 2**61 + 3, 2**60, 2**59, 2**40 + 1, 2**40, 2**63 - 1]))
    if how == "negative":
        return draw(st.sampled_from([-1, -(2**62)]))
    if how == "absurd_off":
        return (x[0], draw(st.sampled_from([2**62, -(2**62), 2**63 - 1, -(2**63)])))
    if how == "bad_sign":
        return (draw(st.sampled_from([0, 2, -2])), x[1])
    if how.startswith("elem_"):
        if not x:
            return None
        i = draw(st.integers(0, len(x) - 1))
        y = list(x)
        y[i] = {"elem_dtype": lambda v: v.astype(np.float64), "elem_noncontig": noncontig,
                "elem_huge": huge, "elem_string": lambda v: "x"}[how](x[i])
        return None if y[i] is None else y
    raise AssertionError(how)


def still_valid_output(v):
    return (isinstance(v, np.ndarray) and v.dtype == np.float32 and v.flags.c_contiguous and v.flags.aligned
            and v.flags.writeable)


# ---------------------------------------------------------------- the fuzz test

def fuzz_one(name, data):
    fn = getattr(C, name)
    callspec = SPECS[name](data.draw)
    names = {a.name for a in callspec.args}

    # 1. the valid call
    args = fresh(callspec.args)
    snap = snapshot(args)
    base = call(fn, args)
    check_unmodified(snap, f"by a valid call of {name}")
    base_out = outputs(base, args)
    if callspec.shapes is not None:
        got = [np.shape(r) for r in flat(base)]
        assert got == [tuple(s) for s in callspec.shapes], f"{name}: result shapes {got}, expected {callspec.shapes}"
    for out_arg in (a for a in args if a.kind == "out"):
        assert any(r is out_arg.value for r in flat(base)), f"{name}: out= array was not returned"

    # 2. one mutation
    candidates = [(i, how) for i, a in enumerate(callspec.args) for how in mutations_for(a)]
    if not candidates:
        return
    # the kind of mutation first, then the argument: rare kinds (absurd sizes of the one size
    # argument) are drawn as often as the layouts of the many array arguments
    kinds = sorted({how for _, how in candidates})
    how = data.draw(st.sampled_from(kinds), label="mutation")
    i = data.draw(st.sampled_from([j for j, h in candidates if h == how]), label="argument")
    a = callspec.args[i]
    mutated = apply(data.draw, a, how)
    if mutated is None and how != "none":
        return
    args = fresh(callspec.args)
    args[i] = Arg(a.name, mutated, a.kind, a.pos, a.opt, a.flex, a.strict)
    snap = snapshot(args, written_too=False)
    snap_w = snapshot([x for x in args if x.kind in ("out", "io", "iolist")], written_too=True)
    COUNTS[name] = COUNTS.get(name, 0) + 1
    try:
        res = call(fn, args)
    except ALLOWED as exc:
        check_unmodified(snap, f"by {name} raising after mutation {how} of {a.name}")
        check_unmodified(snap_w, f"(a written array) by {name} raising after mutation {how} of {a.name}")
        if how in LAYOUT and a.kind in INPUT_KINDS and not (a.strict and how != "readonly"):
            raise AssertionError(f"{name}: {how} {a.name} must be accepted; raised {exc!r}") from exc
        if how in LAYOUT and still_valid_output(mutated):
            raise AssertionError(f"{name}: {how} {a.name} is still a valid output; raised {exc!r}") from exc
        must = a.name if how in ("dtype", "list", "scalar", "string", "none") else None
        if a.kind in ("list", "iolist"):
            must = None
        check_error(exc, names | {"arrays"}, must, name)
        return
    check_unmodified(snap, f"by {name} after mutation {how} of {a.name}")
    if how in LAYOUT:
        if a.kind in INPUT_KINDS:
            assert all_same(outputs(res, args), base_out), f"{name}: {how} {a.name} changed the result"
        else:
            assert still_valid_output(mutated), f"{name}: {how} {a.name} (written) was accepted"
            assert all_same(outputs(res, args), base_out), f"{name}: {how} {a.name} changed the result"
        return
    if how == "dtype" and a.kind in INPUT_KINDS and mutated.dtype != object:
        # accepted with a conversion: when the conversion is exact, the result is the original one
        with np.errstate(all="ignore"):
            exact = np.array_equal(mutated.astype(a.value.dtype), a.value)
        if exact:
            assert all_same(outputs(res, args), base_out), f"{name}: {a.name} as {mutated.dtype} changed the result"
    if how in ("shape",) and not a.flex and a.kind != "io":
        # a shape that is not the spec's may be legal only where the spec says so
        if a.kind == "out":
            raise AssertionError(f"{name}: out of shape {np.shape(mutated)} accepted")
    if how in ("list", "scalar", "string") and a.kind in ARRAY_KINDS:
        raise AssertionError(f"{name}: {how} for {a.name} accepted")
    if how == "huge":
        raise AssertionError(f"{name}: a view of > 2**62 bytes for {a.name} accepted")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fuzz(name):
    @FUZZ
    @given(data=st.data())
    def run(data):
        fuzz_one(name, data)
    # a hang (e.g. a loop over an absurd size) fails the run with a traceback instead of blocking CI
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        run()
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_config_entry_points_reject_bad_types():
    n = C.get_num_threads()
    try:
        for bad in (None, "x", [1], 1.5):
            with pytest.raises(TypeError):
                C.set_num_threads(bad)
        with pytest.raises(ValueError, match="n must be"):
            C.set_num_threads(-1)
        with pytest.raises(OverflowError):
            C.set_num_threads(2**40)
    finally:
        C.set_num_threads(n)
    assert C.get_num_threads() == n
    assert isinstance(C.config(), dict)
    with pytest.raises(TypeError):
        C.config(1)
    with pytest.raises(TypeError):
        C.force_portable("x", 1)
    kernel = C.gemm_kernel()
    with pytest.raises(ValueError, match="name"):
        C.gemm_kernel("nope")
    with pytest.raises(TypeError):
        C.gemm_kernel(3.5)
    assert C.gemm_kernel() == kernel
    with pytest.raises(ValueError, match="seconds"):
        C.fma_peak_gflops(seconds=1e9)
    with pytest.raises(ValueError, match="threads"):
        C.fma_peak_gflops(threads=-1)
    assert C.fma_peak_gflops(threads=1, seconds=0.01) > 0
    for bad in ("x", None):
        with pytest.raises(TypeError):
            C.back_off(bad)
    with pytest.raises(ValueError, match="seconds"):
        C.back_off(float("inf"))
    C.back_off(0.0)
    assert C.config()["backing_off"] is False


def test_report_counts():
    """Runs last (file order): every spec'd entry point got its examples (when the whole file ran)."""
    if len(COUNTS) < len(SPECS):
        pytest.skip("only part of the file ran; counts are checked on a full run")
    low = {k: v for k, v in COUNTS.items() if v < N_EXAMPLES // 2}
    print("\nfuzz mutated calls per entry point:", dict(sorted(COUNTS.items())))
    assert not low, f"entry points with few mutated calls (mutation did not apply): {low}"


# ---------------------------------------------------------------- regressions found by the fuzzer

def test_fused_attention_empty_batch_with_bias_full():
    """bias_full of batch dim B = 0 (with B = 0) was rejected by the fused core with a bare 'core code -1'."""
    q = np.zeros((0, 1, 2, 3), np.float32)
    bf = np.zeros((0, 1, 2, 2), np.float32)
    for fwd in (C.attention_fwd, C.attention_mat_fwd):
        out, lse = fwd(q, q, q, bias_full=bf)
        assert out.shape == (0, 1, 2, 3) and lse.shape == (0, 1, 2)


def test_sandwich_huge_dim_is_a_memory_error_not_a_crash():
    """dim near 2**62 made dim/2 * sizeof(double) wrap to a tiny buffer (segfault)."""
    s = np.ones(2, np.float32)
    with pytest.raises(MemoryError, match="bias_sandwich_fwd"):
        C.bias_sandwich_fwd(s, np.arange(3), dim=2**62)


def test_sandwich_extreme_distances_are_finite():
    """Sandwich once took (d0, n) and formed d0 + n in int64 (signed overflow for d0 near 2**63); it now
    takes the distances themselves and only converts each to double."""
    s = np.ones(2, np.float32)
    d = np.array([2**63 - 1, -(2**63), 0, 2**62], np.int64)
    out = C.bias_sandwich_fwd(s, d, dim=8)
    assert out.shape == (2, 4) and np.isfinite(out).all()
    assert out[0, 2] == 4.0  # d = 0: dim/2 cosines of 0


def test_absurd_view_memory_error_names_the_argument():
    """NumPy's own MemoryError for an absurd zero-stride view did not say which argument it was."""
    x = huge(np.zeros((2, 2), np.float32))
    with pytest.raises(MemoryError, match="^x: "):
        C.relu_fwd(x)
    with pytest.raises(MemoryError, match="inv_freq"):
        C.rope_tables(huge(np.zeros(2)), 3)
    with pytest.raises(MemoryError, match="result of shape"):
        C.sinusoidal_table(2**62, 2)


# ---------------------------------------------------------------- public ops (relpos.functional + autograd)

import relpos.functional as F  # noqa: E402
from relpos import Tensor  # noqa: E402

PUBLIC_EXAMPLES = max(N_EXAMPLES // 2, 10)


def _pub_attention(enc):
    def build(draw, r):
        B, H, Tq, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)), 2 * draw(
            st.integers(1, 2))
        Tk = Tq
        arrs = {n: r.standard_normal((B, H, T, D)).astype(np.float32) for n, T in (("q", Tq), ("k", Tk), ("v", Tk))}
        impl = draw(st.sampled_from(["fused", "materialized"]))
        return arrs, lambda q, k, v: F.attention(q, k, v, encoding=enc, causal=True, impl=impl,
                                                 **({} if enc in ("none", "rope") else {"seed": 0}))
    return build


def _pub_rows(fn, with_wb=0):
    def build(draw, r):
        shape = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 3))))
        arrs = {"x": r.standard_normal(shape).astype(np.float32)}
        if with_wb >= 1:
            arrs["weight"] = r.standard_normal(shape[-1:]).astype(np.float32)
        if with_wb >= 2:
            arrs["bias"] = r.standard_normal(shape[-1:]).astype(np.float32)
        return arrs, fn
    return build


def _pub_linear(draw, r):
    M, K, N = (draw(st.integers(1, 4)) for _ in range(3))
    return {"x": r.standard_normal((M, K)).astype(np.float32), "weight": r.standard_normal((N, K)).astype(np.float32),
            "bias": r.standard_normal(N).astype(np.float32)}, F.linear


def _pub_matmul(draw, r):
    Bt, M, K, N = (draw(st.integers(1, 3)) for _ in range(4))
    return {"a": r.standard_normal((Bt, M, K)).astype(np.float32),
            "b": r.standard_normal((Bt, K, N)).astype(np.float32)}, F.matmul


def _pub_xent(draw, r):
    N, V = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    t = r.integers(0, V, size=N)
    return {"logits": r.standard_normal((N, V)).astype(np.float32)}, lambda x: F.cross_entropy(x, t)


PUBLIC = {
    "softmax": _pub_rows(F.softmax), "log_softmax": _pub_rows(F.log_softmax), "gelu": _pub_rows(F.gelu),
    "silu": _pub_rows(F.silu), "layer_norm": _pub_rows(F.layer_norm, 2), "rms_norm": _pub_rows(F.rms_norm, 1),
    "linear": _pub_linear, "matmul": _pub_matmul, "cross_entropy": _pub_xent,
    "attention_none": _pub_attention("none"), "attention_rope": _pub_attention("rope"),
    "attention_alibi": _pub_attention("alibi"), "attention_t5": _pub_attention("t5"),
    "attention_shaw": _pub_attention("shaw"),
}


def run_public(fn, arrs, wrap):
    """Forward, then backward of sum(out**2); returns (out, grads) as ndarrays."""
    ts = {n: Tensor(a, requires_grad=True) if wrap else a for n, a in arrs.items()}
    out = fn(*ts.values())
    if not wrap:
        return out.numpy().copy(), {}
    (out * out).sum().backward()
    return out.numpy().copy(), {n: t.grad.copy() for n, t in ts.items()}


@pytest.mark.parametrize("op", sorted(PUBLIC))
def test_fuzz_public_ops(op):
    @settings(max_examples=PUBLIC_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        r = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        arrs, fn = PUBLIC[op](data.draw, r)
        copies = {n: a.copy() for n, a in arrs.items()}
        base_out, base_grads = run_public(fn, arrs, True)
        name = data.draw(st.sampled_from(sorted(arrs)))
        how = data.draw(st.sampled_from(list(LAYOUT) + ["float64", "nonfinite", "string", "object", "array"]))
        x = arrs[name]
        if how in LAYOUT:
            m = apply(data.draw, Arg(name, x, "f"), how)
            if m is None:
                return
        elif how == "float64":
            m = x.astype(np.float64)
        elif how == "nonfinite":
            m = x.copy()
            m.flat[0] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif how == "string":
            m = "x"
        elif how == "object":
            m = x.astype(object)
        else:
            m = x   # a plain ndarray instead of a Tensor: forward only
        mut = dict(arrs, **{name: m})
        snap = [(n, a, a.tobytes()) for n, a in mut.items() if isinstance(a, np.ndarray) and a.dtype != object]
        try:
            out, grads = run_public(fn, mut, how != "array")
        except (TypeError, ValueError) as exc:
            assert how in ("string", "object"), f"{op}: {how} {name} raised {exc!r}"
            return
        finally:
            for n, a, b in snap:
                assert a.tobytes() == b, f"{op}: input {n} modified ({how})"
        assert how not in ("string",), f"{op}: a string for {name} was accepted"
        if how in LAYOUT or how in ("float64", "array"):
            assert out.tobytes() == base_out.tobytes(), f"{op}: {how} {name} changed the output"
            for n in grads:
                assert grads[n].tobytes() == base_grads[n].tobytes(), f"{op}: {how} {name} changed grad of {n}"
        for n, a in copies.items():
            assert a.tobytes() == arrs[n].tobytes()
    run()


@pytest.mark.parametrize("fn", ["attention_fwd", "attention_mat_fwd", "attention_bwd", "attention_mat_bwd"])
def test_attention_position_overflow_rejected(fn):
    """q_offset = 2**63 - 1 wrapped the query positions: the materialised path segfaulted, the fused one
    returned fully masked rows; relative-index offsets of 2**63 - 1 could overflow the same way."""
    q = np.ones((1, 1, 3, 2), np.float32)
    b = np.ones((1, 5), np.float32)
    args = (q, q, q) if fn.endswith("fwd") else (q, q, q, q, np.zeros((1, 1, 3), np.float32), q)
    f = getattr(C, fn)
    for kw in (dict(q_offset=2**63 - 1), dict(q_offset=2**60 + 1), dict(bias_vec=b, bias_ix=(1, 2**63 - 1)),
               dict(bias_vec=b, bias_ix=(-1, -(2**63)))):
        with pytest.raises(ValueError, match="q_offset|bias_ix"):
            f(*args, **kw)
    out = f(*args, q_offset=2**60, bias_vec=b, bias_ix=(1, -(2**60)))
    assert all(np.isfinite(a).all() for a in flat(out))


def test_cope_fire_position_overflow_rejected():
    """cope / fire with q_offset near 2**63 wrapped positions and returned masked garbage; fire with
    q_offset = 2**60 sized its psi table as 2 (q_offset + Tq) doubles, which wrapped: segfault. FIRE now
    runs inside the attention kernels from O(Tq + Tk) numbers (the pwl channel): q_offset = 2**60 works."""
    q = np.ones((1, 1, 3, 2), np.float32)
    one = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="q_offset"):
        C.cope_fwd(q, q, np.ones((2, 2), np.float32), q_offset=2**63 - 1)
    with pytest.raises(ValueError, match="q_offset"):
        C.cope_bwd(q, q, np.ones((2, 2), np.float32), np.ones((1, 1, 3, 3), np.float32), q_offset=2**63 - 1)
    del one
    import relpos
    enc = relpos.encodings.get("fire", n_heads=1, seed=0)
    for impl in ("fused", "materialized"):
        with pytest.raises(ValueError, match="q_offset"):
            F.attention(q, q, q, encoding=enc, q_offset=2**63 - 1, impl=impl)
        out = F.attention(q, q, q, encoding=enc, q_offset=2**60, impl=impl)
        assert np.isfinite(out.numpy()).all()


def test_posenc_offset_overflow_rejected():
    """offset + t overflowed int64 for offset near 2**63 (UBSan: signed integer overflow in rotary.c)."""
    inv = np.ones(2)
    for call_ in (lambda o: C.rope_tables(inv, 3, offset=o), lambda o: C.xpos_scale(2, 3, offset=o),
                  lambda o: C.sinusoidal_table(3, 4, offset=o)):
        for o in (2**63 - 1, -(2**63)):
            with pytest.raises(ValueError, match="offset"):
                call_(o)
        call_(2**60)   # large but legal: runs


def test_exp_of_nan_logits_is_nan_not_ub():
    """rp_expf cast NaN to int32 and shifted the negative result (UBSan: left shift of negative value)."""
    x = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]], np.float32)
    loss, lse, count = C.cross_entropy_fwd(x, np.array([0, 1]))
    assert np.isnan(lse[0]) and np.isfinite(lse[1]) and np.isnan(loss)
    y = C.softmax_fwd(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
