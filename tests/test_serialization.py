"""relpos.save / relpos.load: round trips, atomic replacement (failure and
SIGKILL part-way), and a clear ValueError for every kind of bad file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import relpos
from relpos import nn, serialization


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
        self.register_buffer("ids", np.arange(4, dtype=np.int64))


def _nested(rng):
    return {
        "model": {"fc.weight": rng.standard_normal((3, 2)).astype(np.float32),
                  "fc.bias": np.zeros(3, np.float32)},
        "optimizer": {"state": [{"step": 3, "exp_avg": np.ones((2, 2), np.float32)}, {}],
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "step": 12,
        "rng": {"seed": 7, "state": [1, 2, 3], "name": "pcg64"},
        "misc": [None, True, 2.5, float("inf"), "text", np.float32(1.5), np.int64(4)],
        "arrays": [np.arange(5, dtype=np.int32), np.array([True, False]), np.zeros((0, 4), np.float64),
                   np.array(3.0), np.array([1 + 2j], np.complex64), np.arange(6, dtype=np.uint8).reshape(2, 3)[:, ::2]],
        "tensor": relpos.Tensor(np.ones(2)),
        "module": Tiny(),
        "empty": {},
    }


def _assert_same(a, b, where="root"):
    if isinstance(a, relpos.Tensor):
        a = a.data
    if isinstance(a, nn.Module):
        a = dict(a.state_dict())
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, np.generic):
        assert b == a.item() and type(b) is type(a.item()), where
    else:
        assert type(a) is type(b) and a == b, where


def test_round_trip_nested(tmp_path, rng):
    obj = _nested(rng)
    path = tmp_path / "ck.relpos"
    relpos.save(obj, path)
    back = relpos.load(path)
    _assert_same(obj, back)
    assert back["arrays"][5].flags.c_contiguous  # strided input saved as its values
    # the file is a plain uncompressed zip with a JSON header, no pickle
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        header = json.loads(zf.read("relpos.json"))
    assert header["format"] == "relpos" and header["version"] == 1
    keys = [m["key"] for m in header["arrays"]]
    assert "model/fc.weight" in keys and "optimizer/state/0/exp_avg" in keys and "module/w" in keys
    assert all(isinstance(m["crc32"], int) for m in header["arrays"])


def test_module_round_trip(tmp_path):
    m = Tiny()
    m.w.data[...] = 42.0
    relpos.save(m, str(tmp_path / "m.relpos"))
    sd = relpos.load(str(tmp_path / "m.relpos"))
    assert list(sd) == ["w", "ids"]
    fresh = Tiny()
    fresh.load_state_dict(sd)
    assert np.all(fresh.w.data == 42.0)


def test_save_rejects_unsavable(tmp_path):
    path = tmp_path / "x.relpos"
    with pytest.raises(TypeError, match="dict keys must be str"):
        relpos.save({1: np.zeros(2)}, path)
    with pytest.raises(TypeError, match=r"cannot save a/b: arrays must have a numeric or bool dtype"):
        relpos.save({"a": {"b": np.array([object()])}}, path)
    with pytest.raises(TypeError, match="cannot save x: a set"):
        relpos.save({"x": {1, 2}}, path)
    with pytest.raises(ValueError, match="reserved"):
        relpos.save({"__relpos_array__": 0}, path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        relpos.save({}, tmp_path / "no" / "dir" / "x.relpos")
    assert not path.exists()


def _leftovers(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.relpos"
    relpos.save({"v": np.full(3, 1.0, np.float32), "step": 1}, path)

    def boom(*a, **k):
        raise OSError("disk on fire")

    # fails just before the rename
    monkeypatch.setattr(serialization.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        relpos.save({"v": np.full(3, 2.0, np.float32), "step": 2}, path)
    monkeypatch.undo()
    assert relpos.load(path)["step"] == 1
    assert _leftovers(tmp_path) == []

    # fails half-way through writing the archive
    real = serialization._write_archive

    def half(f, tree, arrays):
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization, "_write_archive", half)
    with pytest.raises(KeyboardInterrupt):
        relpos.save({"v": np.full(3, 3.0, np.float32), "step": 3}, path)
    monkeypatch.setattr(serialization, "_write_archive", real)
    back = relpos.load(path)
    assert back["step"] == 1 and np.all(back["v"] == 1.0)
    assert _leftovers(tmp_path) == []


def _kill_mid_save(d, path):
    """Run a child that saves to `path` in a loop; SIGKILL it while a temporary
    file exists (a save is part-way). Returns True if a temporary file was left."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {repo!r})
        import relpos
        w = np.zeros(6_000_000, np.float32)   # 24 MB per save
        for step in range(1, 1000):
            w[:] = step
            print(step, flush=True)
            relpos.save({{"step": step, "w": w}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # save 1 is complete once save 2 has started
            assert proc.stdout.readline(), "the child died before saving"
        deadline = time.monotonic() + 20
        while not _leftovers(d) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return bool(_leftovers(d))


def test_sigkill_during_large_save_keeps_previous_file(tmp_path):
    path = tmp_path / "ck.relpos"
    relpos.save({"step": 0, "w": np.zeros(4, np.float32)}, path)
    mid_save = False
    for _ in range(3):  # under heavy load the kill may land between saves; retry
        mid_save = _kill_mid_save(tmp_path, path)
        back = relpos.load(path)
        step = back["step"]
        assert step >= 1
        assert back["w"].shape == (6_000_000,) and np.all(back["w"] == step)
        if mid_save:
            break
    assert mid_save, "never managed to kill the child part-way through a save"


def test_missing_file(tmp_path):
    p = tmp_path / "nope.relpos"
    with pytest.raises(FileNotFoundError, match="nope.relpos"):
        relpos.load(p)


def test_not_a_relpos_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello, I am text")
    with pytest.raises(ValueError, match="not a relpos file"):
        relpos.load(p)
    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(ValueError, match="not a relpos file.*no 'relpos.json'"):
        relpos.load(z)
    np.savez(tmp_path / "c.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a relpos file"):
        relpos.load(tmp_path / "c.npz")


def _rewrite(src, dst, edit_header=None, edit_entry=None):
    """Copy a relpos archive, editing the parsed header or an entry's bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "relpos.json" and edit_header:
                h = json.loads(data)
                edit_header(h)
                data = json.dumps(h).encode()
            elif edit_entry and info.filename in edit_entry:
                data = edit_entry[info.filename](data)
            zout.writestr(info.filename, data)


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.relpos"
    relpos.save({"model": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "step": 5}, p)
    return p


def test_unknown_version_and_format(good, tmp_path):
    bad = tmp_path / "v.relpos"
    _rewrite(good, bad, edit_header=lambda h: h.update(version=99))
    with pytest.raises(ValueError, match="unknown relpos format version 99"):
        relpos.load(bad)
    _rewrite(good, bad, edit_header=lambda h: h.update(format="other"))
    with pytest.raises(ValueError, match="not a relpos file.*'other'"):
        relpos.load(bad)


def test_header_array_mismatches_name_the_key(good, tmp_path):
    bad = tmp_path / "h.relpos"

    def set_(field, value):
        def f(h):
            h["arrays"][0][field] = value
        return f

    _rewrite(good, bad, edit_header=set_("crc32", 12345))
    with pytest.raises(ValueError, match="array 'model/w': checksum mismatch"):
        relpos.load(bad)
    _rewrite(good, bad, edit_header=set_("shape", [4, 3]))
    with pytest.raises(ValueError, match=r"array 'model/w': shape \(3, 4\) differs from the header's \(4, 3\)"):
        relpos.load(bad)
    _rewrite(good, bad, edit_header=set_("dtype", "<f8"))
    with pytest.raises(ValueError, match="array 'model/w': dtype <f4 differs"):
        relpos.load(bad)
    _rewrite(good, bad, edit_header=set_("entry", "arrays/9.npy"))
    with pytest.raises(ValueError, match="array 'model/w': entry 'arrays/9.npy' is missing"):
        relpos.load(bad)
    # data changed and the zip CRC recomputed: only relpos' own checksum notices
    def flip(data):
        b = bytearray(data)
        b[-1] ^= 0x01
        return bytes(b)
    _rewrite(good, bad, edit_entry={"arrays/0.npy": flip})
    with pytest.raises(ValueError, match="array 'model/w': checksum mismatch"):
        relpos.load(bad)
    _rewrite(good, bad, edit_entry={"relpos.json": lambda d: d[:-5]})
    with pytest.raises(ValueError, match="corrupted header"):
        relpos.load(bad)


def test_corrupted_bytes_in_place(good, tmp_path):
    raw = good.read_bytes()
    # flip a byte inside the array's stored data (the last 4 bytes of the 48-byte payload)
    payload = np.arange(12, dtype=np.float32).tobytes()
    pos = raw.index(payload) + 44
    bad = tmp_path / "c.relpos"
    bad.write_bytes(raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1:])
    with pytest.raises(ValueError, match="array 'model/w'"):
        relpos.load(bad)


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file(good, tmp_path, frac):
    raw = good.read_bytes()
    bad = tmp_path / "t.relpos"
    bad.write_bytes(raw[: int(len(raw) * frac)])
    with pytest.raises(ValueError, match="truncated|corrupted|not a relpos file"):
        relpos.load(bad)
