"""Save and load checkpoints: a Module's state_dict or a nested dict of arrays and plain values.

    >>> relpos.save({"model": model, "optimizer": opt.state_dict(), "step": 12}, "ckpt.relpos")
    >>> ckpt = relpos.load("ckpt.relpos")
    >>> model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])

    >>> relpos.save(model, "weights.safetensors")           # flat name -> array, readable by torch
    >>> model.load_state_dict(relpos.load("weights.safetensors"))

Two formats, chosen by the file name's suffix when saving and by the content
when loading:

* ``.safetensors`` — the ecosystem's format for weights (the ``safetensors``
  package): a flat mapping name -> array, no pickle, readable with
  ``safetensors.torch.load_file`` or ``safetensors.numpy.load_file``. Holds
  arrays only, so full training state (optimizer, step, RNGs) goes to the
  relpos format. ``TransformerLM.torch_state_dict()`` gives the names of a plain
  torch module (see :mod:`relpos.models`).
* anything else — the relpos format (version 1), for any nested structure: an
  uncompressed zip archive, no pickle anywhere.

  - ``relpos.json`` — the header: ``{"format": "relpos", "version": 1, "tree": ...,
    "arrays": [{"key", "entry", "dtype", "shape", "crc32"}, ...]}``. ``tree`` is
    the saved structure as JSON with each array replaced by
    ``{"__relpos_array__": i}``; ``key`` is the array's path in the structure
    (``"model/fc1.weight"``), ``crc32`` the checksum of its C-order bytes.
  - ``arrays/<i>.npy`` — array ``i`` as a ``.npy`` entry.

Loading trusts nothing in the file. Every corrupt, truncated or crafted file
raises :class:`CheckpointError` (a ValueError) naming the problem; only a
missing file, a directory or a permission problem raise their OSError
(FileNotFoundError, IsADirectoryError, PermissionError). Memory stays bounded by
the file's size: the relpos reader accepts stored (uncompressed) entries only,
checks each entry's size in the zip directory against the header's dtype x
shape before reading it, reads at most that many bytes, and refuses entries
whose sizes add up to more than the file, so arrays take at most the file's
size; the JSON header is capped (``MAX_HEADER_BYTES``, ``MAX_HEADER_CONTAINERS``),
and its Python objects take a few times its size (6.5x for a header of 13M
floats). The safetensors package validates its header and offsets the same
way and memory-maps the file.

Writes are atomic and behave like ``open(path, "w")`` for everything a user can
see: the data goes to a temporary file with a short name in the target's
directory, is flushed and fsync'ed, then ``os.replace``'d over the target and
the directory fsync'ed, so a save that fails or is killed part-way leaves the
previous file untouched. A new file gets the mode ``open()`` would give it
(0o666 less the umask), an existing file keeps its mode, a symlink is written
through (its target is replaced, the link stays), and a target ``open()``
could not write raises PermissionError.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import secrets
import stat
import zipfile
import zlib
from collections import OrderedDict
from numbers import Integral, Real

import numpy as np

from .nn.module import Module, _as_numpy
from .tensor import Tensor

__all__ = ["save", "load", "CheckpointError", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "relpos"
FORMAT_VERSION = 1
HEADER_ENTRY = "relpos.json"
_ARRAY_TAG = "__relpos_array__"
_ENTRY_NAME = re.compile(r"arrays/(0|[1-9][0-9]{0,9})\.npy")

#: Largest ``relpos.json`` header read (it holds the structure and one line per array, never array data).
MAX_HEADER_BYTES = 64 << 20
#: Most JSON lists and dicts (counted as '[' and '{' bytes) in a header.
MAX_HEADER_CONTAINERS = 1 << 20
#: Deepest nesting of dicts and lists that save writes and load reads.
MAX_DEPTH = 100
#: Largest ``.npy`` preamble (magic + header dict) accepted before an array's bytes; numpy writes 64-128.
_MAX_NPY_PREAMBLE = 1 << 16
_MAX_NDIM = 64          # numpy's own limit
_READ_CHUNK = 1 << 24   # arrays are read in 16 MiB pieces straight into their final buffer

# safetensors dtypes NumPy holds as they are; BF16 is widened to float32 (exactly)
_ST_NUMPY = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64"}


class CheckpointError(ValueError):
    """A file ``relpos.load`` (or ``fit(resume=...)``) cannot use: not a relpos or
    safetensors file, truncated, corrupted or crafted, or (for ``fit``) a
    checkpoint of another model or run. The message names the file and the problem."""


def _short(x, n=80):
    """repr of x, cut to n characters: messages must stay readable even when a crafted file holds a huge string."""
    r = repr(x)
    return r if len(r) <= n else r[:n - 3] + "..."


def _crc32(arr: np.ndarray) -> int:
    a = np.asarray(arr, order="C")
    return zlib.crc32(memoryview(a).cast("B")) & 0xFFFFFFFF if a.size else 0


def _check_path(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        raise TypeError("path must be a str or os.PathLike of str; got bytes")
    if not path:
        raise ValueError("path must name a file; got an empty path")
    return path


def _is_safetensors_name(path: str) -> bool:
    return path.lower().endswith(".safetensors")


# ------------------------------------------------------------------ save

def _flatten(obj, path, arrays, depth=0):
    """JSON-able tree for obj; arrays are appended to `arrays` as (key, ndarray)."""

    where = path or "<root>"
    if depth > MAX_DEPTH:
        raise ValueError(f"cannot save {where}: nested deeper than {MAX_DEPTH} levels (a structure that "
                         f"contains itself?)")
    if isinstance(obj, Module):
        obj = obj.state_dict()
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc" or obj.dtype.fields is not None:
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
            out[k] = _flatten(v, f"{path}/{k}" if path else k, arrays, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}/{i}" if path else str(i), arrays, depth + 1) for i, v in enumerate(obj)]
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


def _safetensors_arrays(obj) -> "OrderedDict[str, np.ndarray]":
    """The flat name -> little-endian C-contiguous array mapping a .safetensors file holds."""
    if isinstance(obj, Module):
        obj = obj.state_dict()
    if not hasattr(obj, "items"):
        raise TypeError(f"a .safetensors file holds a flat mapping name -> array (or a Module's state_dict); "
                        f"got {type(obj).__name__}")
    out = OrderedDict()
    for k, v in obj.items():
        if not isinstance(k, str):
            raise TypeError(f"cannot save to .safetensors: names must be str; got {type(k).__name__} {k!r}")
        if k == "__metadata__":
            raise ValueError("cannot save to .safetensors: the name '__metadata__' is reserved by the format")
        arr = _as_numpy(v)
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"cannot save {k} to .safetensors: it holds arrays only, got a {type(v).__name__} "
                            f"(save full training state to a .relpos file)")
        if arr.dtype.kind not in "biuf" or arr.dtype.fields is not None or arr.dtype.itemsize > 8:
            raise TypeError(f"cannot save {k} to .safetensors: dtype {arr.dtype} has no safetensors equivalent "
                            f"(bool, int8-64, uint8-64, float16/32/64)")
        # the safetensors writer takes a raw pointer and a byte count: the array must be dense, little-endian
        out[k] = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")  # (keeps 0-d arrays 0-d)
    return out


def _write_safetensors(f, tensors):
    # serialised in memory and written to our own temporary file: the package's
    # save_file replaces the file by path, which would lose the mode chosen here
    from safetensors.numpy import save as to_bytes
    f.write(to_bytes(dict(tensors)))


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


def _resolve_target(path: str):
    """(real path, its stat or None) for writing `path` the way open(path, "w") would.

    Symlinks are followed (the link's target is replaced, the link stays; a
    dangling link's target is created). An existing target must be a regular
    file that this process may open for writing, checked with the same
    open() call (without truncating), so a read-only file raises the
    PermissionError open() raises."""
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    d = os.path.dirname(target)
    if st is None:
        if not os.path.isdir(d):
            raise FileNotFoundError(errno.ENOENT, f"cannot save to {path!r}: directory {d!r} does not exist")
        return target, None
    if stat.S_ISDIR(st.st_mode):
        # os.replace over a directory fails with a message naming only the temporary file
        raise IsADirectoryError(errno.EISDIR, f"path must name a file; got {path!r}, which is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot save to {path!r}: {target!r} exists and is not a regular file "
                         f"(a device, FIFO or socket would be replaced by the saved file)")
    fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    os.close(fd)
    return target, st


def _atomic_write(path: str, write) -> None:
    """Write a file through ``write(f)`` (f: the open temporary file next to the
    target), fsync, rename over the target, fsync the directory."""
    target, st = _resolve_target(path)
    d = os.path.dirname(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    # a new file: 0o666 filtered by the umask, exactly as open(path, "w") creates it;
    # an existing one keeps its mode (open(path, "w") truncates in place)
    create_mode = 0o666 if st is None else 0o600
    for _ in range(100):
        # short and fixed-length, so any legal target name works (NAME_MAX is 255)
        tmp = os.path.join(d, f".relpos-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, create_mode)
            break
        except FileExistsError:
            continue
        except PermissionError as e:
            raise PermissionError(e.errno, f"cannot save to {path!r}: no permission to create a file in {d!r} "
                                           f"(save writes a temporary file there, then renames it over the "
                                           f"target)") from None
    else:  # pragma: no cover - 100 collisions of 32 random bits
        raise FileExistsError(errno.EEXIST, f"cannot create a temporary file in {d!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            if st is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) & 0o777)
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    try:  # keep the owner, as writing in place would (only possible with privileges)
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
                    except OSError:
                        pass
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def save(obj, path) -> None:
    """Write ``obj`` to ``path`` atomically.

    Args:
        obj: for a ``.safetensors`` path, a Module (its ``state_dict()``) or a
            flat mapping name -> array (ndarray, Tensor or torch tensor) of
            dtype bool, int, uint or float16/32/64. Otherwise (the relpos
            format) a Module, or a nested structure of dicts with str keys,
            lists/tuples (loaded back as lists), ndarrays and Tensors (loaded
            back as ndarrays), Modules, and JSON-able scalars (int, float,
            bool, str, None), nested at most ``MAX_DEPTH`` deep.
        path: file path (str or os.PathLike). Its directory must exist. A
            symlink is written through; the file gets the mode ``open(path,
            "w")`` would give it.

    Raises:
        TypeError, ValueError: something in ``obj`` cannot be saved (the message names where).
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open(path, "w")`` would.
    """
    path = _check_path(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"path must name a file; got {path!r}, which is a directory")
    if _is_safetensors_name(path):
        tensors = _safetensors_arrays(obj)

        def write(f):
            _write_safetensors(f, tensors)
    else:
        arrays: list = []
        tree = _flatten(obj, "", arrays)

        def write(f):
            _write_archive(f, tree, arrays)
    _atomic_write(path, write)


# ------------------------------------------------------------------ load

def _bad(path, msg):
    return CheckpointError(f"{path!r}: {msg}")


def load(path):
    """Read a relpos file (written by :func:`save`) or a safetensors file (from
    relpos, ``safetensors.torch.save_file``, ``safetensors.numpy.save_file``, ...).

    Returns:
        relpos format: the saved structure with ndarrays for arrays and
        Tensors, dicts for Modules and dicts, lists for lists and tuples.
        safetensors: a dict name -> ndarray of the stored dtype (bfloat16
        widened to float32, exactly); the file's metadata is not returned.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be opened.
        CheckpointError (a ValueError): anything wrong with the content — not a
            relpos or safetensors file, truncated or corrupted, an unknown format
            version, compressed or oversized entries, an array whose dtype, shape
            or checksum differs from the header. The message names the problem
            and the array's key.
    """
    path = _check_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no such checkpoint file: {path!r}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{path!r} is a directory, not a relpos checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        # a FIFO would block and /dev/zero never ends: only regular files have a size to trust
        raise _bad(path, "not a regular file (a device, FIFO or socket), so not a checkpoint")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        if head[:2] == b"PK":
            f.seek(0)
            return _guard(path, "relpos", lambda: _load_relpos(f, path, size))
        if _looks_like_safetensors(head, size):
            return _guard(path, "safetensors", lambda: _load_safetensors(f, path, size))
    what = "a safetensors" if _is_safetensors_name(path) else "a relpos"
    if size == 0:
        raise _bad(path, f"not {what} file, or a truncated one: the file is empty")
    raise _bad(path, f"not a relpos file, nor a safetensors file ({size} bytes starting with {head[:8]!r}); "
                     f"if it was {what} file, it is truncated or corrupted")


def _guard(path, kind, fn):
    """Run a reader; any error but our own and MemoryError means the bytes are not what they claim."""
    try:
        return fn()
    except CheckpointError:
        raise
    except (MemoryError, ImportError):  # not the file's fault
        raise
    except RecursionError:
        raise _bad(path, f"corrupted {kind} file: nested too deeply") from None
    except Exception as e:  # zipfile, json, numpy and safetensors raise many types on crafted bytes
        raise _bad(path, f"unreadable {kind} file, truncated or corrupted ({type(e).__name__}: "
                         f"{_short(str(e), 200)})") from None


def _looks_like_safetensors(head, size):
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


# ---- relpos format

def _check_entry(info, path, size, what):
    """A zip entry relpos may read: stored, unencrypted, its bytes inside the file."""
    if info.flag_bits & 0x1:
        raise _bad(path, f"{what}: the zip entry is encrypted; relpos files are never encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        raise _bad(path, f"{what}: the zip entry is compressed (method {info.compress_type}); relpos files "
                         f"store entries uncompressed, so a compressed entry is refused before it is inflated")
    if info.compress_size != info.file_size:
        raise _bad(path, f"{what}: the zip directory gives a stored size of {info.compress_size} bytes but "
                         f"a size of {info.file_size}")
    if info.header_offset < 0 or info.header_offset + 30 + info.compress_size > size:
        raise _bad(path, f"{what}: the zip directory puts {info.file_size} bytes at offset "
                         f"{info.header_offset}, past the end of the {size}-byte file (truncated?)")


def _read_exact(fh, n, path, what):
    """Read exactly n bytes, or fail: never more, whatever the entry holds."""
    data = fh.read(n)
    if len(data) != n:
        raise _bad(path, f"{what}: truncated data ({len(data)} of {n} bytes)")
    return data


def _header_dtype(m, path, key):
    s = m["dtype"]
    if not isinstance(s, str) or len(s) > 16:
        raise _bad(path, f"array {key}: the header has an invalid dtype {_short(s)}")
    try:
        dt = np.dtype(s)
    except Exception:  # numpy raises TypeError, ValueError or SyntaxError on strings it cannot parse
        raise _bad(path, f"array {key}: the header has an unknown dtype {_short(s)}") from None
    # only what save writes: plain numeric dtypes in their canonical spelling
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None or dt.str != s:
        raise _bad(path, f"array {key}: the header's dtype {_short(s)} is not a plain numeric dtype")
    return dt


def _header_shape(m, path, key):
    shape = m["shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 2**62 for n in shape):
        raise _bad(path, f"array {key}: the header's shape {_short(shape)} is not a list of at most "
                         f"{_MAX_NDIM} sizes >= 0")
    return tuple(shape)


def _read_npy(zf, info, dtype, shape, nbytes, path, key):
    """Read one .npy entry into a new array: its preamble must describe exactly
    (dtype, shape), C order, and be followed by exactly nbytes."""
    what = f"array {key}"
    try:
        return _read_npy_entry(zf, info, dtype, shape, nbytes, path, what)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:  # the zip layer: bad CRC, local header
        raise _bad(path, f"{what}: truncated or corrupted data ({_short(str(e), 200)})") from None


def _read_npy_entry(zf, info, dtype, shape, nbytes, path, what):
    fmt = np.lib.format
    with zf.open(info) as fh:
        magic = _read_exact(fh, 8, path, what)
        if magic[:6] != b"\x93NUMPY" or (magic[6], magic[7]) not in ((1, 0), (2, 0)):
            raise _bad(path, f"{what}: not a .npy entry of version 1.0 or 2.0 (starts with {magic!r})")
        hlen_size = 2 if magic[6] == 1 else 4
        hlen_bytes = _read_exact(fh, hlen_size, path, what)
        hlen = int.from_bytes(hlen_bytes, "little")
        pre = 8 + hlen_size + hlen
        if pre > min(_MAX_NPY_PREAMBLE, info.file_size):
            raise _bad(path, f"{what}: a .npy preamble of {pre} bytes in an entry of {info.file_size}")
        # numpy's own parser (ast.literal_eval of a dict literal: no code runs)
        stream = io.BytesIO(magic + hlen_bytes + _read_exact(fh, hlen, path, what))
        fmt.read_magic(stream)
        reader = fmt.read_array_header_1_0 if magic[6] == 1 else fmt.read_array_header_2_0
        try:
            got_shape, fortran, got_dtype = reader(stream, max_header_size=_MAX_NPY_PREAMBLE)
        except TypeError:  # pragma: no cover - numpy < 1.24 has no max_header_size (the size is checked above)
            stream.seek(8)
            got_shape, fortran, got_dtype = reader(stream)
        if got_dtype != dtype:
            raise _bad(path, f"{what}: dtype {str(getattr(got_dtype, 'str', got_dtype))[:40]} differs "
                             f"from the header's {dtype.str}")
        if tuple(got_shape) != shape:
            raise _bad(path, f"{what}: shape {str(tuple(got_shape))[:80]} differs from the header's {shape}")
        if fortran and len(shape) > 1:
            raise _bad(path, f"{what}: stored in Fortran order; relpos writes C order")
        if pre + nbytes != info.file_size:
            raise _bad(path, f"{what}: the entry holds {info.file_size} bytes, which is not its {pre}-byte "
                             f".npy preamble plus the {nbytes} bytes of dtype {dtype.str} x shape {shape}")
        arr = np.empty(shape, dtype)
        buf = memoryview(arr.reshape(-1).view(np.uint8))
        pos = 0
        while pos < nbytes:
            chunk = fh.read(min(_READ_CHUNK, nbytes - pos))
            if not chunk:
                raise _bad(path, f"{what}: truncated data ({pos} of {nbytes} bytes)")
            buf[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        if fh.read(1):
            raise _bad(path, f"{what}: more data than dtype x shape")
    return arr


def _load_relpos(f, path, size):
    try:
        zf = zipfile.ZipFile(f, "r")
    except zipfile.BadZipFile as e:
        raise _bad(path, f"not a relpos file, or a truncated/corrupted one (not a readable zip archive "
                         f"of {size} bytes: {e})") from None
    with zf:
        infos = zf.infolist()
        by_name = {}
        for info in infos:
            if info.filename in by_name:
                raise _bad(path, f"corrupted archive: the entry {_short(info.filename)} appears twice")
            by_name[info.filename] = info
        hinfo = by_name.get(HEADER_ENTRY)
        if hinfo is None:
            raise _bad(path, f"not a relpos file (the zip archive has no {HEADER_ENTRY!r} header)")
        _check_entry(hinfo, path, size, f"header entry {HEADER_ENTRY!r}")
        if hinfo.file_size > MAX_HEADER_BYTES:
            raise _bad(path, f"corrupted header: {hinfo.file_size} bytes, more than the "
                             f"{MAX_HEADER_BYTES} a relpos header can have")
        try:
            with zf.open(hinfo) as fh:
                raw = _read_exact(fh, hinfo.file_size, path, f"header entry {HEADER_ENTRY!r}")
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise _bad(path, f"corrupted header entry {HEADER_ENTRY!r}: {_short(str(e), 200)}") from None
        if raw.count(b"[") + raw.count(b"{") > MAX_HEADER_CONTAINERS:
            # each JSON list or dict costs ~60 bytes of Python objects per 2 bytes of file
            raise _bad(path, f"corrupted header: more than {MAX_HEADER_CONTAINERS} lists and dicts")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise _bad(path, f"corrupted header (not valid JSON: {_short(str(e), 200)})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            got = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise _bad(path, f"not a relpos file (header format is {_short(got)}, expected {FORMAT_NAME!r})")
        version = header.get("version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise _bad(path, f"unknown relpos format version {_short(version)}; this relpos reads version "
                             f"{FORMAT_VERSION}")
        meta = header.get("arrays")
        if not isinstance(meta, list) or "tree" not in header:
            raise _bad(path, "corrupted header (no 'arrays' list or no 'tree')")
        # every byte an array needs must be in the file once: entries that overlap or
        # repeat could otherwise make a small file expand into many copies of itself
        total = hinfo.file_size
        plan, entries = [], set()
        for i, m in enumerate(meta):
            if not isinstance(m, dict) or not {"key", "entry", "dtype", "shape", "crc32"} <= set(m):
                raise _bad(path, f"corrupted header: array entry {i} lacks key/entry/dtype/shape/crc32")
            key = _short(m["key"]) if isinstance(m["key"], str) else f"#{i}"
            crc = m["crc32"]
            if not isinstance(crc, int) or isinstance(crc, bool) or not 0 <= crc < 2**32:
                raise _bad(path, f"corrupted header: array {key} has a malformed crc32 {_short(crc)}")
            entry = m["entry"]
            if not isinstance(entry, str) or not _ENTRY_NAME.fullmatch(entry):
                raise _bad(path, f"corrupted header: array {key} names the entry {_short(entry)}; relpos "
                                 f"stores arrays as 'arrays/<i>.npy'")
            if entry in entries:
                raise _bad(path, f"corrupted header: array {key} reuses the entry {entry!r} of another array")
            entries.add(entry)
            dtype = _header_dtype(m, path, key)
            shape = _header_shape(m, path, key)
            info = by_name.get(m["entry"])
            if info is None:
                raise _bad(path, f"array {key}: entry {m['entry']!r} is missing from the archive")
            _check_entry(info, path, size, f"array {key}")
            nbytes = math.prod(shape) * dtype.itemsize
            if not nbytes <= info.file_size <= nbytes + _MAX_NPY_PREAMBLE:
                raise _bad(path, f"array {key}: the zip directory gives its entry {info.file_size} bytes, but "
                                 f"dtype {dtype.str} x shape {shape} needs {nbytes} bytes of data")
            total += info.file_size
            if total > size:
                raise _bad(path, f"corrupted archive: its entries add up to more than the file's {size} bytes")
            plan.append((key, info, dtype, shape, nbytes, crc))
        arrays = []
        for key, info, dtype, shape, nbytes, crc in plan:
            arr = _read_npy(zf, info, dtype, shape, nbytes, path, key)
            got = _crc32(arr)
            if got != crc:
                raise _bad(path, f"array {key}: checksum mismatch (crc32 {got:#010x}, header says "
                                 f"{crc:#010x}); the file is corrupted")
            arrays.append(arr)
        return _place_arrays(header["tree"], arrays, path)


def _place_arrays(tree, arrays, path):
    """Replace each {"__relpos_array__": i} of the parsed header tree by
    arrays[i], in place and without recursion (the tree can be as large as the
    header allows); every array must be used exactly once."""
    used = set()

    def where(keys):
        return "/".join(str(k) for k in keys) or "<root>"

    def take(ref, keys):
        i = ref[_ARRAY_TAG]
        if len(ref) != 1 or not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(arrays):
            raise _bad(path, f"corrupted header: {_short(where(keys), 200)} refers to array {_short(i)}, "
                             f"which is not listed")
        if i in used:
            raise _bad(path, f"corrupted header: {_short(where(keys), 200)} refers to array {i} a second time")
        used.add(i)
        return arrays[i]

    if isinstance(tree, dict) and _ARRAY_TAG in tree:
        tree = take(tree, ())
    stack = [(tree, 0, ())] if isinstance(tree, (dict, list)) else []
    while stack:
        node, depth, keys = stack.pop()
        if depth > MAX_DEPTH:  # as _flatten counts: the root is 0
            raise _bad(path, f"corrupted header: {_short(where(keys), 200)} is nested deeper than {MAX_DEPTH} "
                             f"levels")
        for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(v, dict) and _ARRAY_TAG in v:
                node[k] = take(v, keys + (k,))
            elif isinstance(v, (dict, list)):
                stack.append((v, depth + 1, keys + (k,)))
    if len(used) != len(arrays):
        missing = sorted(set(range(len(arrays))) - used)[:5]
        raise _bad(path, f"corrupted header: arrays {missing} are listed but not in the tree")
    return tree


# ---- safetensors

def _load_safetensors(f, path, size):
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("reading .safetensors files needs the safetensors package "
                          "(pip install safetensors)") from None
    out = {}
    header = None  # (length, parsed raw header): read once, for the bfloat16 tensors (safetensors gives no offsets)
    try:
        with safe_open(path, framework="np") as st:
            names = list(st.offset_keys()) if hasattr(st, "offset_keys") else list(st.keys())
            for name in names:
                sl = st.get_slice(name)
                dt, ndim = sl.get_dtype(), len(sl.get_shape())
                if ndim > _MAX_NDIM:
                    raise _bad(path, f"tensor {_short(name)}: {ndim} dimensions, more than NumPy's {_MAX_NDIM}")
                if dt in _ST_NUMPY:
                    out[name] = st.get_tensor(name)
                elif dt == "BF16":
                    if header is None:
                        header = _st_header(f)
                    out[name] = _bf16_tensor(f, path, size, name, *header)
                else:
                    raise _bad(path, f"tensor {_short(name)}: dtype {_short(dt)} has no NumPy equivalent")
    except SafetensorError as e:
        raise _bad(path, f"not a safetensors file, or a truncated/corrupted one ({_short(str(e), 200)})") from None
    return out


def _st_header(f):
    """(header length n, parsed header) of a safetensors file that safetensors
    has already opened and validated."""
    f.seek(0)
    n = int.from_bytes(f.read(8), "little")
    return n, json.loads(f.read(n))


def _bf16_tensor(f, path, size, name, n, header):
    """A bfloat16 tensor widened to float32 (bfloat16 is the top half of a float32).
    The header was already validated by safetensors; its offsets are re-checked here."""
    entry = header[name]
    shape = tuple(int(s) for s in entry["shape"])
    begin, end = (int(o) for o in entry["data_offsets"])
    count = math.prod(shape)
    if not 0 <= begin <= end or end - begin != 2 * count or 8 + n + end > size:
        raise _bad(path, f"tensor {_short(name)}: offsets {begin}..{end} do not hold bfloat16 x {shape}")
    f.seek(8 + n + begin)
    raw = np.frombuffer(_read_exact(f, end - begin, path, f"tensor {_short(name)}"), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
