/* relpos._C: the CPython + NumPy bridge. module.c holds the module init, the
 * configuration functions and the argument helpers every bridge_*.c uses; the
 * bridge files only parse, validate, release the GIL and call the core. */
#define RP_BRIDGE_MAIN
#include "bridge.h"

#include <stdio.h>
#include <string.h>

void rp_shape_str(PyArrayObject *a, char *buf, size_t n) {
    size_t used = 0;
    int nd = PyArray_NDIM(a);
    used += (size_t)snprintf(buf + used, n - used, "(");
    for (int i = 0; i < nd && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)PyArray_DIM(a, i));
    if (used < n) snprintf(buf + used, n - used, nd == 1 ? ",)" : ")");
}

static int type_check_ndarray(PyObject *obj, const char *name, const char *what) {
    if (obj == NULL || !PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of %s; got %s", name, what,
                     obj ? Py_TYPE(obj)->tp_name : "NULL");
        return -1;
    }
    return 0;
}

/* PyArray_FROM_OTF copies non-contiguous, misaligned or broadcast (zero-stride)
 * inputs; a view whose nominal size is absurd fails there with NumPy's own
 * message, which does not say which argument it was: name it. */
static PyArrayObject *convert_named(PyObject *obj, int type, int flags, const char *name) {
    PyArrayObject *r = (PyArrayObject *)PyArray_FROM_OTF(obj, type, flags);
    if (r == NULL && (PyErr_ExceptionMatches(PyExc_MemoryError) || PyErr_ExceptionMatches(PyExc_ValueError))) {
        char got[256];
        rp_shape_str((PyArrayObject *)obj, got, sizeof got);
        PyErr_Clear();
        PyErr_Format(PyExc_MemoryError, "%s: cannot allocate a contiguous copy of an array of shape %s", name, got);
    }
    return r;
}

PyArrayObject *rp_in_f32(PyObject *obj, const char *name) {
    if (type_check_ndarray(obj, name, "float32") < 0) return NULL;
    if (PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype float32; got %s", name,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return NULL;
    }
    return convert_named(obj, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY, name);
}

PyArrayObject *rp_in_f32_opt(PyObject *obj, const char *name) {
    if (obj == NULL || obj == Py_None) return NULL;
    return rp_in_f32(obj, name);
}

PyArrayObject *rp_in_i64(PyObject *obj, const char *name) {
    if (type_check_ndarray(obj, name, "integers") < 0) return NULL;
    int t = PyArray_TYPE((PyArrayObject *)obj);
    if (!PyTypeNum_ISINTEGER(t) || t == NPY_BOOL) {
        PyErr_Format(PyExc_TypeError, "%s must have an integer dtype; got %s", name,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return NULL;
    }
    if (t == NPY_UINT64 || t == NPY_ULONGLONG || (t == NPY_ULONG && sizeof(unsigned long) == 8)) {
        /* uint64 values above INT64_MAX would wrap: reject them by value below */
    }
    return convert_named(obj, NPY_INT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST, name);
}

PyArrayObject *rp_in_mask(PyObject *obj, const char *name) {
    if (type_check_ndarray(obj, name, "bool") < 0) return NULL;
    if (PyArray_TYPE((PyArrayObject *)obj) != NPY_BOOL) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype bool; got %s", name,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return NULL;
    }
    return convert_named(obj, NPY_BOOL, NPY_ARRAY_IN_ARRAY, name);
}

static int shape_matches(PyArrayObject *a, int ndim, const npy_intp *dims) {
    if (PyArray_NDIM(a) != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (dims && dims[i] >= 0 && PyArray_DIM(a, i) != dims[i]) return 0;
    return 1;
}

int rp_check_ndim(PyArrayObject *a, const char *name, int ndim, const char *desc) {
    return rp_check_shape(a, name, ndim, NULL, desc);
}

int rp_check_shape(PyArrayObject *a, const char *name, int ndim, const npy_intp *dims, const char *desc) {
    if (shape_matches(a, ndim, dims)) return 0;
    char got[256];
    rp_shape_str(a, got, sizeof got);
    if (dims) {
        char want[256];
        size_t used = (size_t)snprintf(want, sizeof want, "(");
        for (int i = 0; i < ndim && used < sizeof want; i++) {
            if (dims[i] >= 0)
                used += (size_t)snprintf(want + used, sizeof want - used, i ? ", %lld" : "%lld", (long long)dims[i]);
            else
                used += (size_t)snprintf(want + used, sizeof want - used, i ? ", *" : "*");
        }
        if (used < sizeof want) snprintf(want + used, sizeof want - used, ndim == 1 ? ",)" : ")");
        PyErr_Format(PyExc_ValueError, "%s must have shape %s = %s; got %s", name, desc, want, got);
    } else {
        PyErr_Format(PyExc_ValueError, "%s must have shape %s (%d dimensions); got %s", name, desc, ndim, got);
    }
    return -1;
}

static PyArrayObject *new_f32_named(int ndim, const npy_intp *dims, int zero) {
    PyArrayObject *r = zero ? (PyArrayObject *)PyArray_ZEROS(ndim, (npy_intp *)dims, NPY_FLOAT32, 0)
                            : (PyArrayObject *)PyArray_EMPTY(ndim, (npy_intp *)dims, NPY_FLOAT32, 0);
    if (r == NULL && (PyErr_ExceptionMatches(PyExc_MemoryError) || PyErr_ExceptionMatches(PyExc_ValueError))) {
        /* NumPy says "array is too big" without the shape: the shape shows which size argument was absurd */
        char got[256];
        size_t used = (size_t)snprintf(got, sizeof got, "(");
        for (int i = 0; i < ndim && used < sizeof got; i++)
            used += (size_t)snprintf(got + used, sizeof got - used, i ? ", %lld" : "%lld", (long long)dims[i]);
        if (used < sizeof got) snprintf(got + used, sizeof got - used, ndim == 1 ? ",)" : ")");
        PyErr_Clear();
        PyErr_Format(PyExc_MemoryError, "cannot allocate a float32 result of shape %s", got);
    }
    return r;
}

PyArrayObject *rp_new_f32(int ndim, const npy_intp *dims) { return new_f32_named(ndim, dims, 1); }

PyArrayObject *rp_empty_f32(int ndim, const npy_intp *dims) { return new_f32_named(ndim, dims, 0); }

PyArrayObject *rp_out_f32(PyObject *obj, const char *name, int ndim, const npy_intp *dims) {
    if (obj == NULL || obj == Py_None) return rp_new_f32(ndim, dims);
    if (type_check_ndarray(obj, name, "float32") < 0) return NULL;
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s (output) must have dtype float32; got %s", name,
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s (output) must be C-contiguous and aligned", name);
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s (output) must be writeable; got a read-only array", name);
        return NULL;
    }
    if (rp_check_shape(a, name, ndim, dims, "of the result") < 0) return NULL;
    Py_INCREF(a);
    return a;
}

int rp_check_nonneg(int64_t v, const char *name) {
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0; got %lld", name, (long long)v);
        return -1;
    }
    return 0;
}

PyObject *rp_raise_code(int code, const char *where) {
    switch (code) {
    case RP_ENOMEM: PyErr_Format(PyExc_MemoryError, "%s: could not allocate scratch memory", where); break;
    case RP_EINDEX: PyErr_Format(PyExc_IndexError, "%s: an index is out of range", where); break;
    case RP_ENOSIMD: PyErr_Format(PyExc_RuntimeError, "%s: this CPU lacks the SIMD kernel asked for", where); break;
    case RP_EINVAL:
    default: PyErr_Format(PyExc_ValueError, "%s: invalid argument (core code %d)", where, code); break;
    }
    return NULL;
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
    (void)self; (void)noargs;
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
    (void)self; (void)noargs;
    return Py_BuildValue("{s:O,s:i,s:O,s:s,s:O,s:s,s:s,s:s}",
                         "openmp", rp_have_openmp() ? Py_True : Py_False,
                         "num_threads", rp_get_num_threads(),
                         "forked_child", rp_in_forked_child() ? Py_True : Py_False,
                         "simd", rp_simd_name(),
                         "cpu_avx2_fma", rp_cpu_has_avx2_fma() ? Py_True : Py_False,
                         "compiler", rp_compiler(),
                         "cflags", rp_cflags(),
                         "simd_cflags", rp_simd_cflags());
}

static PyMethodDef rp_methods_config[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n): threads for every kernel (0 = default)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"force_portable", py_force_portable, METH_VARARGS, "force_portable(on): use the portable C kernels only (tests)."},
    {"config", py_config, METH_NOARGS, "config() -> dict of build and run-time facts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rp_module = {
    PyModuleDef_HEAD_INIT, "relpos._C", "relpos C core bridge.", -1, rp_methods_config,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    rp_init();
    PyObject *m = PyModule_Create(&rp_module);
    if (!m) return NULL;
    PyMethodDef *tables[] = {rp_methods_gemm, rp_methods_ops, rp_methods_optim,
                             rp_methods_posenc, rp_methods_bias, rp_methods_attn, rp_methods_fused, rp_methods_perf};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        if (PyModule_AddFunctions(m, tables[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
