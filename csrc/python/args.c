/* Argument helpers of the bridge (declared in args.h): NumPy inputs and
 * outputs with named errors, shape checks, core error codes to exceptions. */
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

PyObject *rp_raise_float(const char *what, double v) {
    char *r = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    PyErr_Format(PyExc_ValueError, "%s; got %s", what, r ? r : "?");
    PyMem_Free(r);
    return NULL;
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

/* ---- argument specs ------------------------------------------------------ */

void rp_args_release(rp_arg *spec) {
    for (rp_arg *a = spec; a->unit; a++)
        if (a->unit == 'O' && a->conv) Py_CLEAR(*(PyArrayObject **)a->dst);
}

static PyArrayObject *convert_arg(const rp_arg *a) {
    switch (a->conv) {
    case 'i': return rp_in_i64(a->raw, a->name);
    case 'b': return rp_in_mask(a->raw, a->name);
    default: return rp_in_f32(a->raw, a->name);
    }
}

int rp_args_parse(PyObject *args, PyObject *kw, const char *fname, rp_arg *spec) {
    char fmt[RP_ARGS_MAX + 8 + 128];
    char *kwlist[RP_ARGS_MAX + 1];
    void *p[RP_ARGS_MAX];
    size_t f = 0;
    int n = 0;
    for (rp_arg *a = spec; a->unit; a++) {
        if (a->unit == '|' || a->unit == '$') {
            fmt[f++] = a->unit;
            continue;
        }
        if (n == RP_ARGS_MAX) {
            PyErr_Format(PyExc_SystemError, "%s: more than %d arguments in its spec", fname, RP_ARGS_MAX);
            return -1;
        }
        if (a->unit == 'O' && a->conv) {
            *(PyArrayObject **)a->dst = NULL;
            a->raw = NULL;
        }
        kwlist[n] = (char *)a->name;
        /* arrays land in raw first; everything else directly in its variable */
        p[n++] = (a->unit == 'O' && a->conv) ? (void *)&a->raw : a->dst;
        fmt[f++] = a->unit;
    }
    /* fname NULL: no ":name" (the messages then say "function", as some wrappers always did) */
    snprintf(fmt + f, sizeof fmt - f, fname ? ":%s" : "", fname ? fname : "");
    kwlist[n] = NULL;
    for (int i = n; i < RP_ARGS_MAX; i++) p[i] = NULL;
    /* Unused trailing pointers are never read: PyArg reads one per format unit.
     * Each is passed as void *, which has the representation of every object
     * pointer the units expect. */
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9],
                                     p[10], p[11], p[12], p[13], p[14], p[15], p[16], p[17], p[18], p[19], p[20], p[21],
                                     p[22], p[23]))
        return -1;
    for (rp_arg *a = spec; a->unit; a++) {
        if (a->unit != 'O' || !a->conv) continue;
        if (a->raw == NULL || (a->opt && a->raw == Py_None)) continue; /* omitted, or None where allowed */
        PyArrayObject *arr = convert_arg(a);
        *(PyArrayObject **)a->dst = arr;
        if (!arr || (a->ndim >= 0 && rp_check_ndim(arr, a->name, a->ndim, a->shape ? a->shape : "") < 0)) {
            rp_args_release(spec);
            return -1;
        }
    }
    return 0;
}
