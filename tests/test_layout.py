"""The C tree's layers (docs/INTERNALS.md "Files by area"): csrc/core/ is plain
C that knows nothing of Python; csrc/python/ is the bridge and may include core
headers; SIMD intrinsics live only in the *_x86.c translation units, the only
files setup.py compiles with -mavx2 -mfma."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ROOT / "csrc" / "core"
BRIDGE = ROOT / "csrc" / "python"
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)

# what a core file may include besides its sibling headers: libc, libm,
# threads, OpenMP and the x86 intrinsics (the last only in *_x86.c, below)
CORE_SYSTEM = {"stddef.h", "stdint.h", "stdlib.h", "string.h", "math.h", "float.h", "limits.h",
               "pthread.h", "sched.h", "time.h", "omp.h", "immintrin.h", "stdio.h"}


def _c_files(d):
    return sorted(p for p in d.iterdir() if p.suffix in (".c", ".h"))


def _includes(path):
    return [(kind, name) for kind, name in INCLUDE.findall(path.read_text())]


def test_both_layers_exist_and_nothing_is_left_flat():
    assert _c_files(CORE) and _c_files(BRIDGE)
    flat = [p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".c", ".h")]
    assert flat == [], f"C files outside csrc/core and csrc/python: {flat}"


def test_core_includes_only_core_headers_and_the_c_library():
    siblings = {p.name for p in CORE.glob("*.h")}
    bad = []
    for path in _c_files(CORE):
        for kind, name in _includes(path):
            ok = name in siblings if kind == '"' else name in CORE_SYSTEM
            if not ok:
                bad.append(f"{path.relative_to(ROOT)}: #include {kind}{name}{'>' if kind == '<' else kind}")
    assert bad == [], "the core must not include Python, NumPy or the bridge:\n" + "\n".join(bad)


def test_core_mentions_no_python_api():
    # an include is not the only way in: no Py*/NPY symbol may appear in the core
    bad = []
    for path in _c_files(CORE):
        text = re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.S)
        for m in re.finditer(r"\b(Py[A-Z_]\w*|PyArray\w*|NPY_\w+|npy_\w+)\b", text):
            bad.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert bad == [], "\n".join(bad)


def test_bridge_includes_core_headers_by_their_layer_path():
    core_headers = {p.name for p in CORE.glob("*.h")}
    bridge_headers = {p.name for p in BRIDGE.glob("*.h")}
    bad = []
    for path in _c_files(BRIDGE):
        incs = _includes(path)
        if path.suffix == ".c" and (not incs or incs[0] != ('"', "bridge.h")):
            bad.append(f"{path.name}: bridge.h (Python.h) must be the first include")
        for kind, name in incs:
            if kind != '"':
                continue
            if name.startswith("core/"):
                if name[5:] not in core_headers:
                    bad.append(f"{path.name}: {name} does not exist")
            elif name not in bridge_headers:
                bad.append(f"{path.name}: #include \"{name}\" (core headers are included as \"core/<name>.h\")")
    assert bad == [], "\n".join(bad)


def test_simd_intrinsics_only_in_x86_translation_units():
    setup = (ROOT / "setup.py").read_text()
    assert 'SIMD_SUFFIX = "_x86.c"' in setup
    bad = []
    for path in _c_files(CORE) + _c_files(BRIDGE):
        text = path.read_text()
        uses = "immintrin.h" in text or re.search(r"\b_mm(256|512)?_\w+\(", text)
        if path.suffix == ".c" and uses and not path.name.endswith("_x86.c"):
            bad.append(path.name)
    assert bad == [], f"intrinsics outside *_x86.c (compiled without -mavx2 -mfma): {bad}"
