"""Save and load checkpoints: a Module's state_dict or a nested dict of arrays and plain values.

    >>> relpos.save({"model": model, "optimizer": opt.state_dict(), "step": 12}, "ckpt.relpos")
    >>> ckpt = relpos.load("ckpt.relpos")
    >>> model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])

Format (version 1): an uncompressed zip archive, no pickle anywhere.

* ``relpos.json`` — the header: ``{"format": "relpos", "version": 1, "tree": ...,
  "arrays": [{"key", "entry", "dtype", "shape", "crc32"}, ...]}``. ``tree`` is
  the saved structure as JSON with each array replaced by
  ``{"__relpos_array__": i}``; ``key`` is the array's path in the structure
  (``"model/fc1.weight"``), ``crc32`` the checksum of its C-order bytes.
* ``arrays/<i>.npy`` — each array as a ``.npy`` entry (read with
  ``allow_pickle=False``).

Writes are atomic: the archive goes to a temporary file in the target's
directory, is flushed and fsync'ed, then ``os.replace``'d over the target and the
directory fsync'ed. A save that fails or is killed part-way leaves the previous
file untouched.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from numbers import Integral, Real

import numpy as np

from .nn.module import Module
from .tensor import Tensor

__all__ = ["save", "load", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "relpos"
FORMAT_VERSION = 1
HEADER_ENTRY = "relpos.json"
_ARRAY_TAG = "__relpos_array__"


def _crc32(arr: np.ndarray) -> int:
    a = np.asarray(arr, order="C")
    return zlib.crc32(memoryview(a).cast("B")) & 0xFFFFFFFF if a.size else 0


def _flatten(obj, path, arrays):
    """JSON-able tree for obj; arrays are appended to `arrays` as (key, ndarray)."""

    where = path or "<root>"
    if isinstance(obj, Module):
        obj = obj.state_dict()
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"cannot save {where}: arrays must have a numeric or bool dtype; got {obj.dtype}")
        arrays.append((path or "<root>", obj))
        return {_ARRAY_TAG: len(arrays) - 1}
    if isinstance(obj, dict):
        out = OrderedDict()
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot save {where}: dict keys must be str; got {type(k).__name__} {k!r}")
            if k == _ARRAY_TAG:
                raise ValueError(f"cannot save {where}: the key {_ARRAY_TAG!r} is reserved")
            out[k] = _flatten(v, f"{path}/{k}" if path else k, arrays)
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot save {where}: numpy scalar of dtype {obj.dtype}")
        return obj.item()
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, Real):
        return float(obj)
    raise TypeError(f"cannot save {where}: a {type(obj).__name__} (allowed: Module, dict with str keys, list, "
                    f"tuple, ndarray, Tensor, int, float, bool, str, None)")


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def _write_archive(f, tree, arrays):
    """Write the zip archive (arrays, then the header) to the open binary file f."""
    meta = []
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for i, (key, arr) in enumerate(arrays):
            entry = f"arrays/{i}.npy"
            arr = np.asarray(arr, order="C")
            with zf.open(entry, "w", force_zip64=arr.nbytes > 2**30) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
            meta.append({"key": key, "entry": entry, "dtype": arr.dtype.str, "shape": list(arr.shape),
                         "crc32": _crc32(arr)})
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tree": tree, "arrays": meta}
        zf.writestr(HEADER_ENTRY, json.dumps(header, allow_nan=True))


def save(obj, path) -> None:
    """Write ``obj`` to ``path`` atomically.

    Args:
        obj: a Module (its ``state_dict()`` is saved), or a nested structure of
            dicts with str keys, lists/tuples (loaded back as lists), ndarrays
            and Tensors (loaded back as ndarrays), Modules, and JSON-able
            scalars (int, float, bool, str, None).
        path: file path (str or os.PathLike). Its directory must exist.

    Raises:
        TypeError: something in ``obj`` cannot be saved (the message names where).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError("path must name a file; got an empty path")
    if os.path.isdir(path):
        # os.replace over a directory fails with a message naming only the temporary file
        raise IsADirectoryError(f"path must name a file; got {path!r}, which is a directory")
    arrays: list = []
    tree = _flatten(obj, "", arrays)
    target = os.path.abspath(path)
    d = os.path.dirname(target)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"cannot save to {path!r}: directory {d!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_archive(f, tree, arrays)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(target).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def _bad(path, msg):
    return ValueError(f"{path!r}: {msg}")


def _rebuild(node, arrays, path, where="<root>"):
    if isinstance(node, dict):
        if set(node) == {_ARRAY_TAG}:
            i = node[_ARRAY_TAG]
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(arrays):
                raise _bad(path, f"corrupted header: {where} refers to array {i!r}, which is not listed")
            return arrays[i]
        return {k: _rebuild(v, arrays, path, f"{where}/{k}" if where != "<root>" else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebuild(v, arrays, path, f"{where}/{i}" if where != "<root>" else str(i))
                for i, v in enumerate(node)]
    return node


def load(path):
    """Read a file written by :func:`save`.

    Returns:
        The saved structure with ndarrays for arrays and Tensors, dicts for
        Modules and dicts, lists for lists and tuples.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a relpos file, truncated or corrupted, an unknown format
            version, or an array whose dtype, shape or checksum differs from the
            header — the message names the problem and the array's key.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a relpos checkpoint file")
    try:
        zf = zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile as e:
        size = os.path.getsize(path)
        raise _bad(path, f"not a relpos file, or a truncated/corrupted one (not a readable zip archive "
                         f"of {size} bytes: {e})") from None
    with zf:
        names = set(zf.namelist())
        if HEADER_ENTRY not in names:
            raise _bad(path, f"not a relpos file (the zip archive has no {HEADER_ENTRY!r} header)")
        try:
            raw = zf.read(HEADER_ENTRY)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise _bad(path, f"corrupted header entry {HEADER_ENTRY!r}: {e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _bad(path, f"corrupted header (not valid JSON: {e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            got = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise _bad(path, f"not a relpos file (header format is {got!r}, expected {FORMAT_NAME!r})")
        version = header.get("version")
        if version != FORMAT_VERSION:
            raise _bad(path, f"unknown relpos format version {version!r}; this relpos reads version {FORMAT_VERSION}")
        meta = header.get("arrays")
        if not isinstance(meta, list) or "tree" not in header:
            raise _bad(path, "corrupted header (no 'arrays' list or no 'tree')")
        arrays = []
        for i, m in enumerate(meta):
            if not isinstance(m, dict) or not {"key", "entry", "dtype", "shape", "crc32"} <= set(m):
                raise _bad(path, f"corrupted header: array entry {i} lacks key/entry/dtype/shape/crc32")
            key = m["key"]
            if not isinstance(m["crc32"], int) or not isinstance(m["shape"], list):
                raise _bad(path, f"corrupted header: array {key!r} has a malformed shape or crc32")
            if m["entry"] not in names:
                raise _bad(path, f"array {key!r}: entry {m['entry']!r} is missing from the archive")
            try:
                with zf.open(m["entry"]) as fh:
                    data = fh.read()
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise _bad(path, f"array {key!r}: truncated or corrupted data ({e})") from None
            try:
                arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            except Exception as e:  # numpy raises ValueError/OSError/EOFError on bad .npy bytes
                raise _bad(path, f"array {key!r}: not a readable .npy entry ({e})") from None
            try:
                want_dtype = np.dtype(m["dtype"])
            except TypeError:
                raise _bad(path, f"array {key!r}: the header has an unknown dtype {m['dtype']!r}") from None
            if arr.dtype != want_dtype:
                raise _bad(path, f"array {key!r}: dtype {arr.dtype.str} differs from the header's {want_dtype.str}")
            if list(arr.shape) != list(m["shape"]):
                raise _bad(path, f"array {key!r}: shape {tuple(arr.shape)} differs from the header's "
                                 f"{tuple(m['shape'])}")
            crc = _crc32(arr)
            if crc != m["crc32"]:
                raise _bad(path, f"array {key!r}: checksum mismatch (crc32 {crc:#010x}, header says "
                                 f"{m['crc32']:#010x}); the file is corrupted")
            arrays.append(arr)
        return _rebuild(header["tree"], arrays, path)
