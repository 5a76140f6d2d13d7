/* relpos._C: the CPython + NumPy bridge. module.c holds the module init and
 * the configuration functions; args.c the argument helpers every bridge file
 * uses; the other files (one per area) only parse, validate, release the GIL
 * and call the core. */
#define RP_BRIDGE_MAIN
#include "bridge.h"

#include <stdio.h>
#include <string.h>

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

static PyObject *py_config(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:O,s:i,s:O,s:s,s:O,s:s,s:s,s:s,s:O}", "openmp", rp_have_openmp() ? Py_True : Py_False,
                         "num_threads", rp_get_num_threads(), "forked_child", rp_in_forked_child() ? Py_True : Py_False,
                         "simd", rp_simd_name(), "cpu_avx2_fma", rp_cpu_has_avx2_fma() ? Py_True : Py_False, "compiler",
                         rp_compiler(), "cflags", rp_cflags(), "simd_cflags", rp_simd_cflags(), "malloc_tuned",
                         rp_malloc_is_tuned() ? Py_True : Py_False);
}

static PyMethodDef rp_methods_config[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS,
     "set_num_threads(n): threads for every kernel (0 = default)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"force_portable", py_force_portable, METH_VARARGS, "force_portable(on): use the portable C kernels only (tests)."},
    {"config", py_config, METH_NOARGS, "config() -> dict of build and run-time facts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rp_module = {
    PyModuleDef_HEAD_INIT, "relpos._C", "relpos C core bridge.", -1, rp_methods_config, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    rp_init();
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
