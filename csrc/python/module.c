/* relpos._C: the CPython + NumPy bridge. module.c holds the module init and
 * the configuration functions; args.c the argument helpers every bridge file
 * uses; the other files (one per area) only parse, validate, release the GIL
 * and call the core. */
#define RP_BRIDGE_MAIN
#include "bridge.h"

#include "core/attention.h"
#include "core/gemm.h"
#include "core/simd_math.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* ---- memory ----------------------------------------------------------- */

/* A training step allocates and frees the same few-megabyte arrays (outputs
 * and gradients, allocated by NumPy) every step. glibc returns a free heap top
 * above M_TRIM_THRESHOLD to the kernel and serves blocks above its mmap
 * threshold with fresh mappings, so each step page-faulted (and the kernel
 * zeroed) ~2.5 MB again: ~600 faults, 10% of the small model's step. Keeping
 * blocks below 32 MB on the heap and trimming only above 128 MB of free top
 * lets the next step reuse the pages. RELPOS_MALLOC_TUNE=0 leaves malloc alone.
 * Process policy, not math: it lives here, set when the module loads. */
#define RP_MMAP_THRESHOLD (32 << 20)
#define RP_TRIM_THRESHOLD (128 << 20)
static int rp_malloc_tuned = 0;

static void rp_tune_malloc(void) {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    const char *env = getenv("RELPOS_MALLOC_TUNE");
    if (env && (strcmp(env, "0") == 0 || strcmp(env, "no") == 0 || strcmp(env, "false") == 0)) return;
    /* a process that tuned malloc itself (MALLOC_*_ env tunables) keeps its choice */
    if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_")) return;
    rp_malloc_tuned =
        mallopt(M_MMAP_THRESHOLD, RP_MMAP_THRESHOLD) == 1 && mallopt(M_TRIM_THRESHOLD, RP_TRIM_THRESHOLD) == 1;
#endif
}

/* ---- configuration ---------------------------------------------------- */

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "n must be >= 1 (or 0 for the default); got %d", n);
    rp_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(rp_get_num_threads());
}

static PyObject *py_force_portable(PyObject *self, PyObject *args) {
    (void)self;
    int on;
    if (!PyArg_ParseTuple(args, "p:force_portable", &on)) return NULL;
    rp_force_portable(on);
    Py_RETURN_NONE;
}

static PyObject *py_back_off(PyObject *self, PyObject *args) {
    (void)self;
    double seconds;
    if (!PyArg_ParseTuple(args, "d:back_off", &seconds)) return NULL;
    if (!(seconds >= 0.0 && seconds <= 3600.0)) return rp_raise_float("seconds must be in [0, 3600]", seconds);
    rp_back_off(seconds > 0.0 ? rp_now_ns() + (int64_t)(seconds * 1e9) : 0);
    Py_RETURN_NONE;
}

/* The SIMD path of each area, as the kernels choose it now (force_portable and gemm_kernel move them). */
static PyObject *simd_paths(void) {
    static const char *exp_names[] = {"scalar", "avx2", "avx512"};
    int form = rp_exp_form();
    return Py_BuildValue("{s:s,s:s,s:s,s:s}", "gemm", rp_gemm_kernel_name(), "attention", rp_attn_fused_kernel_name(),
                         "elementwise", rp_simd_enabled() ? "avx2+fma" : "portable", "exp",
                         (form >= 0 && form <= 2) ? exp_names[form] : "scalar");
}

static PyObject *py_config(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *paths = simd_paths();
    if (!paths) return NULL;
    return Py_BuildValue(
        "{s:O,s:i,s:O,s:O,s:s,s:O,s:s,s:s,s:s,s:O,s:N}", "openmp", rp_have_openmp() ? Py_True : Py_False, "num_threads",
        rp_get_num_threads(), "backing_off", rp_backing_off() ? Py_True : Py_False, "forked_child",
        rp_in_forked_child() ? Py_True : Py_False, "simd", rp_simd_name(), "cpu_avx2_fma",
        rp_cpu_has_avx2_fma() ? Py_True : Py_False, "compiler", rp_compiler(), "cflags", rp_cflags(), "simd_cflags",
        rp_simd_cflags(), "malloc_tuned", rp_malloc_tuned ? Py_True : Py_False, "simd_paths", paths);
}

static PyMethodDef rp_methods_config[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS,
     "set_num_threads(n): threads for every kernel (0 = default)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"force_portable", py_force_portable, METH_VARARGS, "force_portable(on): use the portable C kernels only (tests)."},
    {"back_off", py_back_off, METH_VARARGS,
     "back_off(seconds): run every parallel region on one thread for that long, as after a stall (0 ends it; tests)."},
    {"config", py_config, METH_NOARGS, "config() -> dict of build and run-time facts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rp_module = {
    PyModuleDef_HEAD_INIT, "relpos._C", "relpos C core bridge.", -1, rp_methods_config, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    rp_init();
    rp_tune_malloc();
    PyObject *m = PyModule_Create(&rp_module);
    if (!m) return NULL;
    PyMethodDef *tables[] = {rp_methods_gemm, rp_methods_ops,  rp_methods_optim, rp_methods_posenc,
                             rp_methods_bias, rp_methods_attn, rp_methods_blocks};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        if (PyModule_AddFunctions(m, tables[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
