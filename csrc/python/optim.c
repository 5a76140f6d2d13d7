/* Bridge for the optim area: parse, validate, release the GIL, call the core. */
#include "bridge.h"
#include "core/optim.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* A float32, C-contiguous, aligned ndarray used in place (no copies: the
 * update must land in the caller's array). Borrowed reference or NULL. */
static PyArrayObject *inplace_f32(PyObject *obj, const char *name, int writeable) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32; got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype float32; got %s", name, PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be C-contiguous and aligned (it is updated in place); "
                     "got a strided or unaligned array",
                     name);
        return NULL;
    }
    if (writeable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be writeable (it is updated in place); got a read-only array", name);
        return NULL;
    }
    return a;
}

static int same_shape(PyArrayObject *ref, const char *refname, PyArrayObject *a, const char *name) {
    int nd = PyArray_NDIM(ref);
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++) ok = PyArray_DIM(a, i) == PyArray_DIM(ref, i);
    if (ok) return 0;
    char s1[256], s2[256];
    rp_shape_str(ref, s1, sizeof s1);
    rp_shape_str(a, s2, sizeof s2);
    PyErr_Format(PyExc_ValueError, "%s must have the shape of %s %s; got %s", name, refname, s1, s2);
    return -1;
}

/* Two arrays updated in place (or one read while another is written) must not
 * share memory, or the element-wise update reads what it already wrote. */
static int disjoint(PyArrayObject *a, const char *an, PyArrayObject *b, const char *bn) {
    if (PyArray_SIZE(a) == 0 || PyArray_SIZE(b) == 0) return 0;
    char *a0 = PyArray_BYTES(a), *a1 = a0 + PyArray_NBYTES(a);
    char *b0 = PyArray_BYTES(b), *b1 = b0 + PyArray_NBYTES(b);
    if (a0 < b1 && b0 < a1) {
        PyErr_Format(PyExc_ValueError, "%s and %s must not share memory", an, bn);
        return -1;
    }
    return 0;
}

static void fmt_double(double x, char *buf, size_t n) { snprintf(buf, n, "%.17g", x); }

static int check_range(double x, const char *name, double lo, double hi, int hi_open, const char *expect) {
    if (isfinite(x) && x >= lo && (hi_open ? x < hi : x <= hi)) return 0;
    char got[64];
    fmt_double(x, got, sizeof got);
    PyErr_Format(PyExc_ValueError, "%s must be %s; got %s", name, expect, got);
    return -1;
}

PyDoc_STRVAR(
    sgd_doc,
    "sgd_step(param, grad, buf, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, init_buf=False)\n"
    "--\n\n"
    "SGD update in place (torch.optim.SGD semantics). param, grad, buf: float32\n"
    "C-contiguous arrays of one shape; param and buf are written. buf may be None\n"
    "when momentum == 0. init_buf=True on the first step sets buf = g instead of\n"
    "momentum * buf + (1 - dampening) * g.");

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"param",     "grad",         "buf",      "lr",       "momentum",
                             "dampening", "weight_decay", "nesterov", "init_buf", NULL};
    PyObject *po, *go, *bo;
    double lr = NAN, momentum = 0.0, dampening = 0.0, wd = 0.0;
    int nesterov = 0, init_buf = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$ddddpp:sgd_step", kwlist, &po, &go, &bo, &lr, &momentum,
                                     &dampening, &wd, &nesterov, &init_buf))
        return NULL;
    if (isnan(lr))
        return PyErr_Format(PyExc_TypeError, "sgd_step: the keyword argument lr is required (a number >= 0)");
    if (check_range(lr, "lr", 0.0, INFINITY, 1, "a finite number >= 0") < 0 ||
        check_range(momentum, "momentum", 0.0, INFINITY, 1, "a finite number >= 0") < 0 ||
        check_range(dampening, "dampening", 0.0, 1.0, 0, "in [0, 1]") < 0 ||
        check_range(wd, "weight_decay", 0.0, INFINITY, 1, "a finite number >= 0") < 0)
        return NULL;
    if (nesterov && (momentum <= 0.0 || dampening != 0.0)) {
        char m1[64], d1[64];
        fmt_double(momentum, m1, sizeof m1);
        fmt_double(dampening, d1, sizeof d1);
        return PyErr_Format(PyExc_ValueError,
                            "nesterov=True needs momentum > 0 and dampening == 0; "
                            "got momentum=%s, dampening=%s",
                            m1, d1);
    }
    PyArrayObject *p = inplace_f32(po, "param", 1);
    if (!p) return NULL;
    PyArrayObject *g = inplace_f32(go, "grad", 0);
    if (!g) return NULL;
    if (same_shape(p, "param", g, "grad") < 0 || disjoint(p, "param", g, "grad") < 0) return NULL;
    PyArrayObject *b = NULL;
    if (bo != Py_None) {
        b = inplace_f32(bo, "buf", 1);
        if (!b) return NULL;
        if (same_shape(p, "param", b, "buf") < 0 || disjoint(p, "param", b, "buf") < 0 ||
            disjoint(g, "grad", b, "buf") < 0)
            return NULL;
    } else if (momentum != 0.0) {
        return PyErr_Format(PyExc_ValueError,
                            "buf must be a float32 array of param's shape when momentum > 0; got None");
    }
    int rc;
    int64_t n = (int64_t)PyArray_SIZE(p);
    float *bp = b ? RP_F32(b) : NULL;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_optim_sgd_step(RP_F32(p), RP_F32(g), bp, n, lr, momentum, dampening, wd, nesterov, init_buf);
    Py_END_ALLOW_THREADS
    if (rc < 0) return rp_raise_code(rc, "sgd_step");
    Py_RETURN_NONE;
}

PyDoc_STRVAR(adamw_doc,
             "adamw_step(param, grad, m, v, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step)\n"
             "--\n\n"
             "AdamW update in place (torch.optim.AdamW semantics, decoupled weight decay).\n"
             "param, grad, m, v: float32 C-contiguous arrays of one shape; param, m, v are\n"
             "written. step >= 1 is the 1-based step count for the bias corrections.");

static PyObject *py_adamw_step(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"param", "grad", "m", "v", "lr", "beta1", "beta2", "eps", "weight_decay", "step", NULL};
    PyObject *po, *go, *mo, *vo;
    double lr = NAN, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    long long step = LLONG_MIN;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|$dddddL:adamw_step", kwlist, &po, &go, &mo, &vo, &lr, &b1, &b2,
                                     &eps, &wd, &step))
        return NULL;
    if (isnan(lr))
        return PyErr_Format(PyExc_TypeError, "adamw_step: the keyword argument lr is required (a number >= 0)");
    if (step == LLONG_MIN)
        return PyErr_Format(PyExc_TypeError, "adamw_step: the keyword argument step is required (an int >= 1)");
    if (step < 1)
        return PyErr_Format(PyExc_ValueError, "step must be an int >= 1 (the 1-based step count); got %lld", step);
    if (check_range(lr, "lr", 0.0, INFINITY, 1, "a finite number >= 0") < 0 ||
        check_range(b1, "beta1", 0.0, 1.0, 1, "in [0, 1)") < 0 ||
        check_range(b2, "beta2", 0.0, 1.0, 1, "in [0, 1)") < 0 ||
        check_range(eps, "eps", 0.0, INFINITY, 1, "a finite number >= 0") < 0 ||
        check_range(wd, "weight_decay", 0.0, INFINITY, 1, "a finite number >= 0") < 0)
        return NULL;
    PyArrayObject *p = inplace_f32(po, "param", 1);
    if (!p) return NULL;
    PyArrayObject *g = inplace_f32(go, "grad", 0);
    if (!g) return NULL;
    PyArrayObject *m = inplace_f32(mo, "m", 1);
    if (!m) return NULL;
    PyArrayObject *v = inplace_f32(vo, "v", 1);
    if (!v) return NULL;
    if (same_shape(p, "param", g, "grad") < 0 || same_shape(p, "param", m, "m") < 0 ||
        same_shape(p, "param", v, "v") < 0)
        return NULL;
    if (disjoint(p, "param", g, "grad") < 0 || disjoint(p, "param", m, "m") < 0 || disjoint(p, "param", v, "v") < 0 ||
        disjoint(m, "m", v, "v") < 0 || disjoint(g, "grad", m, "m") < 0 || disjoint(g, "grad", v, "v") < 0)
        return NULL;
    int rc;
    int64_t n = (int64_t)PyArray_SIZE(p);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_optim_adamw_step(RP_F32(p), RP_F32(g), RP_F32(m), RP_F32(v), n, lr, b1, b2, eps, wd, (int64_t)step);
    Py_END_ALLOW_THREADS
    if (rc < 0) return rp_raise_code(rc, "adamw_step");
    Py_RETURN_NONE;
}

PyDoc_STRVAR(grad_norm_doc, "grad_norm(arrays) -> float\n"
                            "--\n\n"
                            "Euclidean norm of all elements of a list/tuple of float32 arrays taken as one\n"
                            "vector; float64 accumulation in fixed chunks summed in a fixed order, so the\n"
                            "result is bit-identical for any thread count. An empty list gives 0.0.");

static PyObject *py_grad_norm(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyList_Check(arg) && !PyTuple_Check(arg))
        return PyErr_Format(PyExc_TypeError, "arrays must be a list or tuple of float32 ndarrays; got %s",
                            Py_TYPE(arg)->tp_name);
    PyObject *seq = PySequence_Fast(arg, "arrays must be a list or tuple");
    if (!seq) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    PyArrayObject **arrs = PyMem_Calloc((size_t)(k ? k : 1), sizeof(PyArrayObject *));
    const float **ptrs = PyMem_Calloc((size_t)(k ? k : 1), sizeof(float *));
    int64_t *sizes = PyMem_Calloc((size_t)(k ? k : 1), sizeof(int64_t));
    PyObject *result = NULL;
    if (!arrs || !ptrs || !sizes) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        char name[64];
        snprintf(name, sizeof name, "arrays[%zd]", i);
        arrs[i] = rp_in_f32(PySequence_Fast_GET_ITEM(seq, i), name);
        if (!arrs[i]) goto fail;
        ptrs[i] = RP_F32(arrs[i]);
        sizes[i] = (int64_t)PyArray_SIZE(arrs[i]);
    }
    double s = 0.0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_optim_sumsq(ptrs, sizes, (int64_t)k, &s);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "grad_norm");
        goto fail;
    }
    result = PyFloat_FromDouble(sqrt(s));
fail:
    if (arrs)
        for (Py_ssize_t i = 0; i < k; i++) Py_XDECREF(arrs[i]);
    PyMem_Free(arrs);
    PyMem_Free(ptrs);
    PyMem_Free(sizes);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(scale_doc, "scale_(array, factor)\n"
                        "--\n\n"
                        "array *= factor in place; array: float32, C-contiguous, writeable.");

static PyObject *py_scale_(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao;
    double factor;
    if (!PyArg_ParseTuple(args, "Od:scale_", &ao, &factor)) return NULL;
    if (check_range(factor, "factor", -INFINITY, INFINITY, 1, "a finite number") < 0) return NULL;
    PyArrayObject *a = inplace_f32(ao, "array", 1);
    if (!a) return NULL;
    int rc;
    int64_t n = (int64_t)PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_optim_scale(RP_F32(a), n, (float)factor);
    Py_END_ALLOW_THREADS
    if (rc < 0) return rp_raise_code(rc, "scale_");
    Py_RETURN_NONE;
}

PyMethodDef rp_methods_optim[] = {
    {"sgd_step", (PyCFunction)(void (*)(void))py_sgd_step, METH_VARARGS | METH_KEYWORDS, sgd_doc},
    {"adamw_step", (PyCFunction)(void (*)(void))py_adamw_step, METH_VARARGS | METH_KEYWORDS, adamw_doc},
    {"grad_norm", py_grad_norm, METH_O, grad_norm_doc},
    {"scale_", py_scale_, METH_VARARGS, scale_doc},
    {NULL, NULL, 0, NULL},
};
