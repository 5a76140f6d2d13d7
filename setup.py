"""Build the relpos._C extension from csrc/core/ (plain C) and csrc/python/ (the bridge).

Environment switches:
  RELPOS_REQUIRE_OPENMP=1   fail the build if OpenMP cannot be compiled, linked and run
  RELPOS_WERROR=1           turn compiler warnings into errors (CI)
  RELPOS_SANITIZE=address,undefined   build with sanitizers (see .ci/sanitize)
  RELPOS_DEBUG=1            -O0 -g
"""
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
OMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0 ? omp_get_max_threads() : 0);
    return n > 0 ? 0 : 1;
}
"""


def _env_on(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


class BuildExt(build_ext):
    def _probe_openmp(self):
        """Compile, link and run a tiny OpenMP program; True if all three work."""
        tmp = tempfile.mkdtemp(prefix="relpos-omp-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(OMP_PROBE)
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            exe = os.path.join(tmp, "probe")
            self.compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=["-fopenmp"])
            out = subprocess.run([exe], capture_output=True, timeout=60)
            return out.returncode == 0
        except Exception as exc:  # any failure means: no usable OpenMP
            print(f"relpos: OpenMP probe failed: {exc}", file=sys.stderr)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extension(self, ext):
        cc = self.compiler.compiler_so[0] if hasattr(self.compiler, "compiler_so") else "cc"
        try:
            cc_version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except Exception:
            cc_version = cc

        cflags = ["-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden", "-fno-math-errno"]
        ldflags = []
        if _env_on("RELPOS_DEBUG"):
            cflags += ["-O0", "-g"]
        else:
            cflags += ["-O3"]
        if _env_on("RELPOS_WERROR"):
            cflags += ["-Werror"]
        sanitize = os.environ.get("RELPOS_SANITIZE", "").strip()
        if sanitize:
            cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-fno-sanitize-recover=all"]
            ldflags += [f"-fsanitize={sanitize}"]

        have_omp = self._probe_openmp()
        if have_omp:
            cflags.append("-fopenmp")
            ldflags.append("-fopenmp")  # links libgomp dynamically, visible to threadpoolctl
        elif _env_on("RELPOS_REQUIRE_OPENMP"):
            raise RuntimeError("relpos: RELPOS_REQUIRE_OPENMP=1 but OpenMP could not be compiled, linked and run")
        else:
            print("relpos: WARNING: OpenMP not available; building a serial extension", file=sys.stderr)

        # x86 SIMD kernels (AVX2/FMA, and AVX-512F through target attributes)
        # live in *_x86.c and only there get -mavx2 -mfma; they are selected at
        # run time, so the same build runs on any x86-64.
        avx_sources = [s for s in ext.sources if s.endswith(SIMD_SUFFIX)]
        ext.sources = [s for s in ext.sources if s not in avx_sources]
        simd_flags = ["-mavx2", "-mfma"] if _is_x86_64() else []
        ext.define_macros = list(ext.define_macros) + [
            ("RP_HAVE_OPENMP", "1" if have_omp else "0"),
            ("RP_COMPILER", '"%s"' % cc_version.replace('"', "'")),
            ("RP_CFLAGS", '"%s"' % " ".join(cflags)),
            ("RP_SIMD_CFLAGS", '"%s"' % " ".join(simd_flags)),
            ("RP_HAVE_X86_TU", "1" if (_is_x86_64() and avx_sources) else "0"),
        ]
        if avx_sources:
            objs = self.compiler.compile(
                avx_sources,
                output_dir=self.build_temp,
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                extra_postargs=cflags + simd_flags,
                depends=ext.depends,
            )
            ext.extra_objects = list(ext.extra_objects or []) + objs
            # setuptools relinks only when ext.sources or ext.depends are newer than the
            # module: list the SIMD sources there too, or an edit of a *_x86.c file alone
            # is compiled but never linked in
            ext.depends = list(ext.depends or []) + avx_sources
        ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
        ext.extra_link_args = list(ext.extra_link_args or []) + ldflags
        super().build_extension(ext)


SIMD_SUFFIX = "_x86.c"
# csrc/core/: pure C; csrc/python/: the bridge, which includes core headers as
# "core/<name>.h" (the only include directory besides NumPy's is csrc/).
sources = sorted(glob.glob("csrc/core/*.c")) + sorted(glob.glob("csrc/python/*.c"))
headers = sorted(glob.glob("csrc/core/*.h")) + sorted(glob.glob("csrc/python/*.h"))

setup(
    ext_modules=[
        Extension(
            "relpos._C",
            sources=sources,
            depends=headers,
            include_dirs=[np.get_include(), "csrc"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
