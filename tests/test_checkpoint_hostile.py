"""Hostile checkpoint files and save's file handling (issue 12, items 3, 11, 12).

* zip bombs: compressed entries are refused before they are inflated; the peak
  memory and time of loading a bomb are measured in a child process;
* one exception class, relpos.CheckpointError (a ValueError), for every
  corrupt or crafted file, checked by hypothesis on mutated and truncated
  files and on crafted headers, relpos and safetensors, with the memory a
  load takes bounded by the file's size;
* save behaves like open(path, "w"): umask, symlinks, long names, read-only files.

    python -m pytest tests/test_checkpoint_hostile.py -q -s     # -s prints the fuzz counts

The bomb's inflated size is 256 MiB here; RELPOS_BOMB_BYTES=4294967296 gives
the 4 GiB figure of docs/RELIABILITY.md, and `python tests/test_checkpoint_hostile.py
BOMB_FILE [serialization.py]` measures loading any file with any version of the reader.
"""
import collections
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import warnings
import zipfile
import zlib

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relpos
from relpos import serialization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ helpers: crafting archives

def npy_bytes(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def fortran_npy(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asfortranarray(arr), allow_pickle=False)
    return buf.getvalue()


def base_arrays():
    return [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros(3, np.float64), np.array([1, 2], np.int64)]


def base_header(arrays):
    meta = [{"key": k, "entry": f"arrays/{i}.npy", "dtype": a.dtype.str, "shape": list(a.shape),
             "crc32": zlib.crc32(a.tobytes()) & 0xFFFFFFFF}
            for i, (k, a) in enumerate(zip(["model/w", "model/b", "ids"], arrays))]
    tree = {"model": {"w": {"__relpos_array__": 0}, "b": {"__relpos_array__": 1}}, "ids": {"__relpos_array__": 2},
            "step": 5, "names": ["a", None, 2.5]}
    return {"format": "relpos", "version": 1, "tree": tree, "arrays": meta}


def write_zip(path, entries):
    """entries: [(name, bytes, compress_type, flag_bits)] written in order (duplicates allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names, which we want
        with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
            for name, data, ctype, flags in entries:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = ctype
                info.flag_bits |= flags
                zf.writestr(info, data)


def deep(depth):
    """A placeholder for a list nested `depth` deep, expanded by header_json
    (json.dumps itself cannot write one past the recursion limit)."""
    return f"__deep_{depth}__"


def header_json(header):
    raw = json.dumps(header)
    for m in set(re.findall(r'"__deep_(\d+)__"', raw)):
        raw = raw.replace(f'"__deep_{m}__"', "[" * int(m) + "]" * int(m))
    return raw.encode()


def craft(path, header=None, arrays=None, header_bytes=None, extra=(), ctype=None):
    arrays = base_arrays() if arrays is None else arrays
    header = base_header(arrays) if header is None else header
    raw = header_json(header) if header_bytes is None else header_bytes
    ctype = ctype or {}
    entries = [(f"arrays/{i}.npy", npy_bytes(a), ctype.get(i, zipfile.ZIP_STORED), 0) for i, a in enumerate(arrays)]
    entries.append(("relpos.json", raw, ctype.get("header", zipfile.ZIP_STORED), 0))
    entries.extend(extra)
    write_zip(path, entries)
    return path


def _patch_u16(path, name, local_off, central_off, value):
    """Set a 2-byte field of entry `name` in its local header and its central
    directory record (for what zipfile will not write: unknown methods, encryption)."""
    raw = bytearray(open(path, "rb").read())
    nm = name.encode()
    for sig, off, name_off in ((b"PK\x03\x04", local_off, 30), (b"PK\x01\x02", central_off, 46)):
        start = 0
        while True:
            i = raw.find(sig, start)
            if i < 0:
                break
            if raw[i + name_off:i + name_off + len(nm)] == nm:
                raw[i + off:i + off + 2] = value.to_bytes(2, "little")
            start = i + 4
    open(path, "wb").write(bytes(raw))


def patch_method(path, name, method):
    _patch_u16(path, name, 8, 10, method)


def patch_encrypted(path, name):
    _patch_u16(path, name, 6, 8, 0x1)


def expect_checkpoint_error(path, match=None):
    with pytest.raises(relpos.CheckpointError, match=match) as e:
        relpos.load(path)
    assert str(e.value).startswith(repr(str(path))), "the message names the file"
    return e.value


def test_checkpoint_error_is_one_public_value_error():
    assert issubclass(relpos.CheckpointError, ValueError)
    assert relpos.CheckpointError is serialization.CheckpointError is relpos.train.CheckpointError
    assert "CheckpointError" in relpos.__all__


# ------------------------------------------------------------------ item 3: zip bombs

def make_bomb(path, inflated_bytes, chunk=1 << 24):
    """A relpos-looking file: a stored header, and one float32 array of
    `inflated_bytes` zeros whose entry is deflated (1000:1). Its header,
    dtype, shape and CRCs are all consistent: only the compression is wrong."""
    n = inflated_bytes // 4
    pre = io.BytesIO()
    np.lib.format.write_array_header_1_0(pre, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
    zeros = bytes(chunk)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9, allowZip64=True) as zf:
        with zf.open("arrays/0.npy", "w", force_zip64=True) as fh:
            fh.write(pre.getvalue())
            left = n * 4
            while left:
                k = min(chunk, left)
                fh.write(zeros[:k])
                left -= k
        crc = 0
        left = n * 4
        while left:
            k = min(chunk, left)
            crc = zlib.crc32(zeros[:k], crc)
            left -= k
        meta = [{"key": "w", "entry": "arrays/0.npy", "dtype": "<f4", "shape": [n], "crc32": crc & 0xFFFFFFFF}]
        header = {"format": "relpos", "version": 1, "tree": {"w": {"__relpos_array__": 0}}, "arrays": meta}
        zf.writestr("relpos.json", json.dumps(header), compress_type=zipfile.ZIP_STORED)
    return path


MEASURE = textwrap.dedent("""
    import importlib.util, json, resource, sys, time
    sys.path.insert(0, {root!r})
    import relpos
    load = relpos.load
    if {module!r}:  # another version of serialization.py, loaded as part of this relpos package
        spec = importlib.util.spec_from_file_location("relpos._measured_serialization", {module!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        load = mod.load
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        out = load({path!r})
        result = "loaded " + repr({{k: v.shape for k, v in out.items()}})
        error = None
    except Exception as e:
        result, error = str(e)[:300], type(e).__name__
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(seconds=dt, peak_rss_mib=r1 / 1024, rss_growth_mib=(r1 - r0) / 1024,
                          error=error, result=result)))
""")


def measure_load(path, module=""):
    """Load `path` in a fresh process; its time and peak RSS growth (ru_maxrss)."""
    code = MEASURE.format(root=ROOT, module=module, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    size = int(os.environ.get("RELPOS_BOMB_BYTES", 256 << 20))
    return make_bomb(tmp_path_factory.mktemp("bomb") / "bomb.relpos", size), size


def test_zip_bomb_is_refused_before_inflating(bomb):
    path, size = bomb
    file_size = os.path.getsize(path)
    assert file_size * 500 < size, "the bomb really is one"
    r = measure_load(path)
    print(f"\nbomb: {file_size / 2**20:.2f} MiB file inflating to {size / 2**30:.2f} GiB -> {r}")
    assert r["error"] == "CheckpointError", r
    assert "array 'w': the zip entry is compressed" in r["result"], r
    assert r["rss_growth_mib"] < 16, r     # the old reader grew by the inflated size
    assert r["seconds"] < 1.0, r


def test_compressed_entry_of_a_consistent_file_is_refused(tmp_path):
    """Deflated entries are refused even when everything else checks out
    (the old reader inflated and returned them)."""
    p = craft(tmp_path / "d.relpos", ctype={0: zipfile.ZIP_DEFLATED})
    expect_checkpoint_error(p, "array 'model/w': the zip entry is compressed")
    p = craft(tmp_path / "h.relpos", ctype={"header": zipfile.ZIP_DEFLATED})
    expect_checkpoint_error(p, "header entry 'relpos.json': the zip entry is compressed")


def test_entry_sizes_are_checked_against_the_header_before_reading(tmp_path, monkeypatch):
    arrays = base_arrays()
    h = base_header(arrays)
    h["arrays"][0]["shape"] = [2**28, 4]   # 4 GiB of float32, in an entry of 112 bytes
    p = craft(tmp_path / "s.relpos", header=h, arrays=arrays)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: (opened.append(getattr(name, "filename", name)),
                                                     real_open(self, name, *a, **k))[1])
    expect_checkpoint_error(p, r"array 'model/w': the zip directory gives its entry \d+ bytes, but dtype <f4 x "
                               r"shape \(268435456, 4\) needs 4294967296 bytes")
    assert opened == ["relpos.json"], "no array entry may be opened before every size is checked"


def test_entry_past_the_end_of_the_file(tmp_path):
    """The zip directory says an entry is larger than the file holds: refused from the directory alone."""
    p = craft(tmp_path / "e.relpos")
    raw = bytearray(p.read_bytes())
    i = raw.find(b"PK\x01\x02")   # first central directory record: arrays/0.npy
    for off in (20, 24):          # compressed and uncompressed sizes
        raw[i + off:i + off + 4] = (10**9).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    expect_checkpoint_error(p, "past the end of the")


# ------------------------------------------------------------------ item 11: one exception class

def test_old_exception_types_become_checkpoint_errors(tmp_path):
    """Each file made the old reader raise another type (in the comment)."""
    # NotImplementedError: an unknown compression method
    p = craft(tmp_path / "m.relpos")
    patch_method(p, "arrays/0.npy", 99)
    expect_checkpoint_error(p, "compressed")
    # RuntimeError: an encrypted entry ("password required")
    p = craft(tmp_path / "enc.relpos")
    patch_encrypted(p, "arrays/1.npy")
    expect_checkpoint_error(p, "array 'model/b': the zip entry is encrypted")
    # RecursionError: a tree nested 100,000 deep
    h = base_header(base_arrays())
    h["tree"] = deep(100000)
    expect_checkpoint_error(craft(tmp_path / "deep.relpos", header=h), "nested")
    # TypeError: an entry name that is a list (unhashable)
    h = base_header(base_arrays())
    h["arrays"][0]["entry"] = ["arrays/0.npy"]
    expect_checkpoint_error(craft(tmp_path / "t.relpos", header=h), "names the entry")
    # AttributeError / TypeError: a header that is a list, a number
    for i, raw in enumerate([b"[1, 2]", b"7", b"null", b'"relpos"']):
        expect_checkpoint_error(craft(tmp_path / f"r{i}.relpos", header_bytes=raw), "not a relpos file")


def test_duplicates_and_traversal_names(tmp_path):
    arrays = base_arrays()
    # the same zip name twice
    p = craft(tmp_path / "dup.relpos", extra=[("arrays/0.npy", b"x" * 10, zipfile.ZIP_STORED, 0)])
    expect_checkpoint_error(p, "appears twice")
    # two arrays reading the same entry (memory amplification)
    h = base_header(arrays)
    h["arrays"][1]["entry"] = "arrays/0.npy"
    expect_checkpoint_error(craft(tmp_path / "ref.relpos", header=h), "reuses the entry")
    # directory traversal and absolute names (never extracted, still refused)
    for i, name in enumerate(["../../etc/passwd", "/etc/passwd", "arrays/../relpos.json", "arrays/00.npy"]):
        h = base_header(arrays)
        h["arrays"][0]["entry"] = name
        expect_checkpoint_error(craft(tmp_path / f"tr{i}.relpos", header=h), "names the entry")
    # the tree uses an array twice, or not at all
    h = base_header(arrays)
    h["tree"]["ids"] = {"__relpos_array__": 0}
    expect_checkpoint_error(craft(tmp_path / "twice.relpos", header=h), "a second time")
    h = base_header(arrays)
    del h["tree"]["ids"]
    expect_checkpoint_error(craft(tmp_path / "unused.relpos", header=h), r"arrays \[2\] are listed but not")


@pytest.mark.parametrize("field,value,match", [
    ("shape", [-1, 4], "shape"), ("shape", [2**70], "shape"), ("shape", [1] * 65, "shape"),
    ("shape", "3x4", "shape"), ("shape", [3.0, 4], "shape"), ("shape", [True, 4], "shape"),
    ("dtype", "|O", "not a plain numeric dtype"), ("dtype", "<U5", "not a plain numeric dtype"),
    ("dtype", "V12", "not a plain numeric dtype"), ("dtype", "(2,)<f4", "not a plain numeric dtype"),
    ("dtype", "float32", "not a plain numeric dtype"), ("dtype", 5, "invalid dtype"),
    ("dtype", "<M8[s]", "not a plain numeric dtype"), ("dtype", "x" * 1000, "invalid dtype"),
    ("crc32", -1, "crc32"), ("crc32", 2**32, "crc32"), ("crc32", "abc", "crc32"), ("crc32", True, "crc32"),
])
def test_crafted_array_fields(tmp_path, field, value, match):
    h = base_header(base_arrays())
    h["arrays"][0][field] = value
    expect_checkpoint_error(craft(tmp_path / "f.relpos", header=h), match)


def test_crafted_npy_entries(tmp_path):
    w = base_arrays()[0]
    good = npy_bytes(w)
    cases = {
        "magic": b"\x93NUMPX" + good[6:],
        "version 3": good[:6] + b"\x03\x00" + good[8:],
        "object dtype": good.replace(b"'<f4'", b"'|O8'"),
        "fortran": fortran_npy(w),
        "trailing": good + b"\0" * 16,
        "short": good[:-4],
        "huge header length": good[:8] + b"\xff\xff" + good[10:],
    }
    for i, data in enumerate(cases.values()):
        arrays = base_arrays()
        p = tmp_path / f"n{i}.relpos"
        entries = [(f"arrays/{j}.npy", data if j == 0 else npy_bytes(a), zipfile.ZIP_STORED, 0)
                   for j, a in enumerate(arrays)]
        write_zip(p, entries + [("relpos.json", json.dumps(base_header(arrays)).encode(), zipfile.ZIP_STORED, 0)])
        expect_checkpoint_error(p, "array 'model/w'")


def test_header_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "MAX_HEADER_BYTES", 1000)
    h = base_header(base_arrays())
    h["tree"]["pad"] = "x" * 2000
    expect_checkpoint_error(craft(tmp_path / "big.relpos", header=h), "more than the 1000")
    monkeypatch.undo()
    monkeypatch.setattr(serialization, "MAX_HEADER_CONTAINERS", 100)
    h = base_header(base_arrays())
    h["tree"]["many"] = [[] for _ in range(200)]
    expect_checkpoint_error(craft(tmp_path / "many.relpos", header=h), "more than 100 lists and dicts")
    for raw, match in [(b"\xff\xfe", "not valid JSON"), (b'{"format": 1' + b"1" * 5000 + b"}", "not valid JSON")]:
        expect_checkpoint_error(craft(tmp_path / "j.relpos", header_bytes=raw), match)


def test_save_refuses_what_load_would_refuse(tmp_path):
    deep = []
    node = deep
    for _ in range(serialization.MAX_DEPTH + 5):
        node.append([])
        node = node[0]
    with pytest.raises(ValueError, match="nested deeper than"):
        relpos.save({"x": deep}, tmp_path / "deep.relpos")
    loop = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="contains itself"):
        relpos.save(loop, tmp_path / "loop.relpos")
    # the deepest structure save writes (an empty list at depth MAX_DEPTH; arrays one level up) loads
    ok = []
    node = ok
    for _ in range(serialization.MAX_DEPTH - 2):
        node.append([])
        node = node[0]
    node.append(np.arange(3))
    node.append([])
    relpos.save({"x": ok}, tmp_path / "ok.relpos")
    back = relpos.load(tmp_path / "ok.relpos")["x"]
    for _ in range(serialization.MAX_DEPTH - 2):
        back = back[0]
    assert np.array_equal(back[0], np.arange(3)) and back[1] == []
    with pytest.raises(ValueError, match="nested deeper than"):
        relpos.save([{"x": ok}], tmp_path / "no.relpos")  # one level more


def test_non_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so that an open() for reading would not block
    try:
        expect_checkpoint_error(fifo, "not a regular file")
        with pytest.raises(ValueError, match="not a regular file"):
            relpos.save({"a": 1}, fifo)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    finally:
        os.close(holder)
    if os.path.exists("/dev/zero"):
        expect_checkpoint_error("/dev/zero", "not a regular file")
    with pytest.raises(IsADirectoryError):
        relpos.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        relpos.load(tmp_path / "missing.relpos")


# ------------------------------------------------------------------ the fuzzer

COUNTS = collections.Counter()
WRAPPED = []  # messages of errors only the last-resort wrapper caught
PEAKS = {}  # kind -> (largest traced peak of one load, that file's size)
N = int(os.environ.get("RELPOS_FUZZ_EXAMPLES", 300))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _valid_relpos_bytes():
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    obj = {"model": {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": np.zeros(3, np.float16)},
           "optimizer": {"state": [{"step": 3, "exp_avg": np.ones((2, 2), np.float32)}], "lr": 1e-3},
           "ids": np.arange(5, dtype=np.int64), "flags": np.array([True, False]), "c": np.array([1 + 2j]),
           "misc": [None, "text", 2.5, {"deep": [1, [2, [3]]]}]}
    arrays = []
    tree = serialization._flatten(obj, "", arrays)
    serialization._write_archive(buf, tree, arrays)
    return buf.getvalue()


def _valid_safetensors_bytes():
    from safetensors.numpy import save
    rng = np.random.default_rng(1)
    return save({"w": rng.standard_normal((4, 3)).astype(np.float32), "ids": np.arange(5, dtype=np.int64),
                 "h": np.ones((2, 2), np.float16), "m": np.array([True, False])}, metadata={"format": "pt"})


VALID = {"relpos": _valid_relpos_bytes(), "safetensors": _valid_safetensors_bytes()}


def mutations(n):
    pos = st.integers(0, max(n - 1, 0))
    byte = st.integers(0, 255)
    return st.lists(st.one_of(
        st.tuples(st.just("set"), pos, byte),
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("truncate"), pos, st.just(0)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("repeat"), pos, st.integers(1, 64)),
    ), min_size=1, max_size=4)


def mutate(data, ops):
    b = bytearray(data)
    for op, p, arg in ops:
        p = min(p, max(len(b) - 1, 0))
        if op == "set" and b:
            b[p] = arg
        elif op == "flip" and b:
            b[p] ^= 1 << arg
        elif op == "truncate":
            del b[p:]
        elif op == "insert":
            b[p:p] = arg
        elif op == "delete":
            del b[p:p + arg]
        elif op == "repeat":
            b[p:p] = b[p:p + arg] * 8
    return bytes(b)


def load_bounded(path, kind):
    """Load `path`; only CheckpointError may come out, and the memory the load
    allocates (tracemalloc sees numpy's buffers too) stays within a bound of the
    file's size. Returns the outcome for the counts."""
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = None
        try:
            result = relpos.load(path)
            outcome = "loaded"
        except relpos.CheckpointError as e:
            assert str(e).startswith(repr(str(path))), e
            # the reader's own checks, or the last-resort wrapper of a library's error
            outcome = "wrapped" if "unreadable " in str(e) else "refused"
            if outcome == "wrapped":
                WRAPPED.append(str(e))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= 64 * size + (2 << 20), f"{kind}: a {size}-byte file took {peak} bytes to load"
    COUNTS[(kind, outcome)] += 1
    PEAKS[kind] = max(PEAKS.get(kind, (0, 0)), (peak, size))
    return outcome, result


def _arrays_in(tree):
    if isinstance(tree, np.ndarray):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _arrays_in(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _arrays_in(v)


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.mark.parametrize("kind", sorted(VALID))
def test_fuzz_mutated_files(kind, fuzz_dir):
    data = VALID[kind]
    suffix = ".safetensors" if kind == "safetensors" else ".relpos"
    path = os.path.join(fuzz_dir, "m" + suffix)

    @FUZZ
    @given(ops=mutations(len(data)))
    def run(ops):
        with open(path, "wb") as f:
            f.write(mutate(data, ops))
        load_bounded(path, f"{kind} bytes")

    run()


# crafted relpos headers: each edit breaks one field in one of the ways a crafted file could
HEADER_EDITS = {
    "deep tree": lambda h, d: h["tree"].__setitem__("deep", deep(d.draw(st.sampled_from([50, 98, 101, 3000,
                                                                                         100000])))),
    "shape": lambda h, d: _set_array_field(h, d, "shape", st.one_of(
        st.lists(st.integers(-2, 2**64), max_size=5), st.just([1] * 70), st.just(None), st.text(max_size=5),
        st.lists(st.floats(allow_nan=True), max_size=3))),
    "dtype": lambda h, d: _set_array_field(h, d, "dtype", st.sampled_from(
        ["|O", "<U5", "V12", "f4,f4", "(2,)<f4", "<M8[s]", 5, None, ["<f4"], "x" * 100, "float32", ">f4", "<f8",
         "|b1", "<c16", "<f16", "S3", "|u1"])),
    "crc32": lambda h, d: _set_array_field(h, d, "crc32", st.one_of(st.integers(-2**40, 2**40), st.just("1"),
                                                                    st.just(1.5), st.just(True))),
    "entry": lambda h, d: _set_array_field(h, d, "entry", st.sampled_from(
        ["../../etc/passwd", "/etc/passwd", "arrays/0.npy/../1.npy", "arrays/00.npy", ["a"], None, 7,
         "arrays/1.npy", "arrays/0.npy", "arrays/" + "9" * 20 + ".npy", "relpos.json", "arrays/5.npy"])),
    "key": lambda h, d: _set_array_field(h, d, "key", st.sampled_from([None, 5, ["x"], "k" * 100000, ""])),
    "drop field": lambda h, d: h["arrays"][d.draw(st.integers(0, 2))].pop(
        d.draw(st.sampled_from(["key", "entry", "dtype", "shape", "crc32"]))),
    "arrays": lambda h, d: h.__setitem__("arrays", d.draw(st.sampled_from([{}, "x", None, [1, 2], [[]], [None]]))),
    "tree ref": lambda h, d: h["tree"]["model"].__setitem__("w", {"__relpos_array__": d.draw(st.sampled_from(
        [5, -1, "0", 1.5, [0], True, None, 1, 2]))}),
    "tree tag": lambda h, d: h["tree"].__setitem__("x", {"__relpos_array__": 0, "other": 1}),
    "version": lambda h, d: h.__setitem__("version", d.draw(st.sampled_from([2, "1", True, None, 1.0, 0, [1]]))),
    "format": lambda h, d: h.__setitem__("format", d.draw(st.sampled_from(["RELPOS", None, 1, ["relpos"]]))),
    "drop tree": lambda h, d: h.pop("tree"),
}


def _set_array_field(h, d, field, values):
    h["arrays"][d.draw(st.integers(0, 2))][field] = d.draw(values)


ARCHIVE_EDITS = ["deflate array", "deflate header", "encrypt", "duplicate entry", "method 99", "drop entry",
                 "swap entries", "extra entry", "npy garbage"]


@FUZZ
@given(d=st.data())
def test_fuzz_crafted_relpos_headers(d, fuzz_dir):
    arrays = base_arrays()
    h = base_header(arrays)
    edits = d.draw(st.lists(st.sampled_from(sorted(HEADER_EDITS) + ARCHIVE_EDITS), min_size=1, max_size=3))
    entries = [[f"arrays/{i}.npy", npy_bytes(a), zipfile.ZIP_STORED, 0] for i, a in enumerate(arrays)]
    method99, encrypted = [], []
    for e in edits:
        if e in HEADER_EDITS:
            try:
                HEADER_EDITS[e](h, d)
            except (TypeError, KeyError, IndexError, AttributeError):
                pass  # an earlier edit removed what this one edits
            continue
        i = d.draw(st.integers(0, len(entries) - 1)) if entries else 0
        if e == "deflate array" and entries:
            entries[i][2] = zipfile.ZIP_DEFLATED
        elif e == "encrypt" and entries:
            encrypted.append(entries[i][0])
        elif e == "duplicate entry" and entries:
            entries.append(list(entries[i]))
        elif e == "method 99" and entries:
            method99.append(entries[i][0])
        elif e == "drop entry" and entries:
            entries.pop(i)
        elif e == "swap entries" and len(entries) > 1:
            entries[0][1], entries[-1][1] = entries[-1][1], entries[0][1]
        elif e == "extra entry":
            entries.append([d.draw(st.sampled_from(["../evil", "/abs", "arrays/9.npy", "x" * 200])), b"hi",
                            zipfile.ZIP_STORED, 0])
        elif e == "npy garbage" and entries:
            entries[i][1] = d.draw(st.binary(max_size=200))
    raw = header_json(h)
    all_entries = [tuple(x) for x in entries]
    all_entries.append(("relpos.json", raw, zipfile.ZIP_DEFLATED if "deflate header" in edits else zipfile.ZIP_STORED,
                        0))
    path = os.path.join(fuzz_dir, "c.relpos")
    write_zip(path, all_entries)
    for name in method99:
        patch_method(path, name, 99)
    for name in encrypted:
        patch_encrypted(path, name)
    out, result = load_bounded(path, "relpos header")
    if out == "loaded":
        # what survives the checks (an unused extra entry, a renamed key, a tree shallow enough...)
        # holds the original arrays, bit for bit
        originals = {(a.dtype.str, a.shape, a.tobytes()) for a in arrays}
        for a in _arrays_in(result):
            assert (a.dtype.str, a.shape, a.tobytes()) in originals, (edits, a)


SAFETENSORS_EDITS = {
    "dtype": lambda h, d: _st_field(h, d, "dtype", st.sampled_from(["X", "BF16", "F8_E4M3", "F8_E5M2", "I4", 5,
                                                                     None, "f32", "F32", "I64", "BOOL"])),
    "shape": lambda h, d: _st_field(h, d, "shape", st.one_of(st.lists(st.integers(-2, 2**64), max_size=4),
                                                             st.just("x"), st.just(None), st.just([1] * 70))),
    "offsets": lambda h, d: _st_field(h, d, "data_offsets", st.one_of(
        st.lists(st.integers(-5, 2**64), min_size=0, max_size=3), st.just("0,4"))),
    "extra key": lambda h, d: _st_field(h, d, "extra", st.just(1)),
    "metadata": lambda h, d: h.__setitem__("__metadata__", d.draw(st.sampled_from([{"a": 1}, "x", None, {"a": "b"},
                                                                                    [1]]))),
    "drop": lambda h, d: h.pop(d.draw(st.sampled_from(sorted(k for k in h if k != "__metadata__")))),
    "header type": lambda h, d: h.clear(),
}


def _st_field(h, d, field, values):
    name = d.draw(st.sampled_from(sorted(k for k in h if k != "__metadata__")))
    h[name][field] = d.draw(values)


@FUZZ
@given(d=st.data())
def test_fuzz_crafted_safetensors_headers(d, fuzz_dir):
    data = VALID["safetensors"]
    n = int.from_bytes(data[:8], "little")
    h = json.loads(data[8:8 + n])
    body = data[8 + n:]
    edits = d.draw(st.lists(st.sampled_from(sorted(SAFETENSORS_EDITS) + ["length", "pad"]), min_size=1,
                            max_size=3))
    length = None
    for e in edits:
        if e in SAFETENSORS_EDITS:
            try:
                SAFETENSORS_EDITS[e](h, d)
            except (TypeError, KeyError, IndexError, AttributeError, hypothesis.errors.InvalidArgument):
                pass  # an earlier edit removed what this one edits
        elif e == "length":
            length = d.draw(st.sampled_from([0, 1, 7, 2**63, 2**64 - 1, 10**8 + 1, len(data)]))
        elif e == "pad":
            body = body + bytes(d.draw(st.integers(1, 64)))
    raw = json.dumps(h).encode()
    path = os.path.join(fuzz_dir, "c.safetensors")
    with open(path, "wb") as f:
        f.write((len(raw) if length is None else length).to_bytes(8, "little") + raw + body)
    load_bounded(path, "safetensors header")


def test_fuzz_report():
    """Runs after the fuzz tests (file order): prints the counts of each outcome."""
    if not COUNTS:
        pytest.skip("the fuzz tests did not run in this session")
    kinds = sorted({k for k, _ in COUNTS})
    print("\ncheckpoint fuzz outcomes:")
    for k in kinds:
        row = {o: COUNTS[(k, o)] for o in ("loaded", "refused", "wrapped")}
        peak, size = PEAKS[k]
        print(f"  {k:20s} {sum(row.values()):5d} files: {row}; largest load peak {peak / 1024:.0f} KiB "
              f"(a {size / 1024:.1f} KiB file)")
    for msg in WRAPPED[:5]:
        print("  wrapped:", msg[:300])
    assert sum(COUNTS.values()) >= N


# ------------------------------------------------------------------ item 12: save behaves like open()

@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(m):
        os.umask(m)
    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o077, 0o022, 0o002])
def test_new_file_mode_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain", "w"):
        pass
    relpos.save({"a": np.zeros(2)}, tmp_path / "a.relpos")
    relpos.save({"a": np.zeros(2)}, tmp_path / "a.safetensors")
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "a.relpos").st_mode) == want
    assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == want


def test_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    p = tmp_path / "a.relpos"
    relpos.save({"a": 1}, p)
    os.chmod(p, 0o664)
    relpos.save({"a": 2}, p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o664 and relpos.load(p)["a"] == 2


def test_save_writes_through_symlinks(tmp_path):
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target = real_dir / "ck.relpos"
    relpos.save({"v": 1}, target)
    link = link_dir / "latest.relpos"
    link.symlink_to(target)
    relpos.save({"v": 2}, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert relpos.load(target)["v"] == 2
    # a relative link, and a link to a link
    rel = real_dir / "rel.relpos"
    rel.symlink_to("ck.relpos")
    chain = link_dir / "chain.relpos"
    chain.symlink_to(rel)
    relpos.save({"v": 3}, chain)
    assert chain.is_symlink() and rel.is_symlink() and relpos.load(target)["v"] == 3
    # a dangling link: its target is created, as open(link, "w") would
    dangling = link_dir / "new.safetensors"
    dangling.symlink_to(real_dir / "new.safetensors")
    relpos.save({"w": np.ones(2, np.float32)}, dangling)
    assert dangling.is_symlink() and (real_dir / "new.safetensors").is_file()
    # the temporary file lives beside the target, and is gone
    assert sorted(p.name for p in real_dir.iterdir()) == ["ck.relpos", "new.safetensors", "rel.relpos"]
    assert sorted(p.name for p in link_dir.iterdir()) == ["chain.relpos", "latest.relpos", "new.safetensors"]


@pytest.mark.parametrize("length", [252, 255])
def test_long_legal_file_names(tmp_path, length):
    for suffix in (".relpos", ".safetensors"):
        name = "c" * (length - len(suffix)) + suffix
        relpos.save({"a": np.arange(3)}, tmp_path / name)
        assert np.array_equal(relpos.load(tmp_path / name)["a"], np.arange(3))
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _unprivileged(fn):
    """Run fn() as an unprivileged user (a forked child that drops to nobody when
    we are root, as CI is: root may write any file, so open() refuses nothing).
    fn returns an int exit code; 0 = pass."""
    if os.geteuid() != 0:
        return fn()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = fn()
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_read_only_target_is_refused_like_open(tmp_path):
    d = tempfile.mkdtemp()  # not under tmp_path: its parents are private to root
    try:
        os.chmod(d, 0o777)  # the directory is writable: only the file's own mode forbids the write
        target = os.path.join(d, "ro.relpos")
        relpos.save({"v": 1}, target)
        os.chmod(target, 0o444)
        st_target = os.path.join(d, "ro.safetensors")
        relpos.save({"w": np.zeros(2, np.float32)}, st_target)
        os.chmod(st_target, 0o444)

        def check():
            for path, obj in ((target, {"v": 2}), (st_target, {"w": np.ones(2, np.float32)})):
                try:
                    open(path, "a").close()
                    return 3  # open() did not refuse: the comparison would mean nothing
                except PermissionError:
                    pass
                try:
                    relpos.save(obj, path)
                    return 2
                except PermissionError:
                    pass
            return 0

        assert _unprivileged(check) == 0

        # a writable file in a folder we may not write: the atomic rename needs the folder,
        # so save refuses (where open() could write in place), and says why
        sub = os.path.join(d, "ro_dir")
        os.mkdir(sub)
        inner = os.path.join(sub, "w.relpos")
        relpos.save({"v": 1}, inner)
        os.chmod(inner, 0o666)
        os.chmod(sub, 0o555)

        def check_dir():
            try:
                relpos.save({"v": 2}, inner)
                return 2
            except PermissionError as e:
                return 0 if "no permission to create a file in" in str(e) else 4

        try:
            assert _unprivileged(check_dir) == 0
        finally:
            os.chmod(sub, 0o755)
        assert relpos.load(inner)["v"] == 1
        os.unlink(inner)
        os.rmdir(sub)
        assert relpos.load(target)["v"] == 1
        assert np.all(relpos.load(st_target)["w"] == 0)
        assert sorted(os.listdir(d)) == ["ro.relpos", "ro.safetensors"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":  # measure loading a file: python tests/test_checkpoint_hostile.py FILE [serialization.py]
    print(measure_load(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
