/* Bridge for the optim area: parse, validate, release the GIL, call the core. */
#include "bridge.h"
#include "core/optim.h"

#include <limits.h>
#include <stdlib.h>
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

/* ---- multi-tensor forms ---------------------------------------------------- */

/* items of a list/tuple `obj` named `name`: a new fast sequence of length n, or NULL */
static PyObject *seq_of(PyObject *obj, const char *name, Py_ssize_t n) {
    if (!PyList_Check(obj) && !PyTuple_Check(obj))
        return PyErr_Format(PyExc_TypeError, "%s must be a list or tuple of float32 ndarrays; got %s", name,
                            Py_TYPE(obj)->tp_name);
    /* a tuple snapshot, which holds its own reference to every array: the kernels write
     * into them with the GIL released, and another thread may edit a list meanwhile */
    PyObject *seq = PySequence_Tuple(obj);
    if (seq && n >= 0 && PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "%s must have one array per parameter (%zd); got %zd", name, n,
                     PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return NULL;
    }
    return seq;
}

/* obj (a float64 ndarray of shape (n, cols)) as a C-contiguous array (a new
 * reference), or NULL with the error naming `name` */
static PyArrayObject *rp_in_f64_rows(PyObject *obj, const char *name, Py_ssize_t n, int cols) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a float64 ndarray of shape (n_params, %d); got %s", name, cols,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *in = (PyArrayObject *)obj;
    if (PyArray_TYPE(in) != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype float64; got %s", name, PyArray_DESCR(in)->typeobj->tp_name);
        return NULL;
    }
    if (PyArray_NDIM(in) != 2 || PyArray_DIM(in, 0) != n || PyArray_DIM(in, 1) != cols) {
        char got[96];
        rp_shape_str(in, got, sizeof got);
        PyErr_Format(PyExc_ValueError, "%s must have shape (n_params, %d) = (%zd, %d); got %s", name, cols, n, cols,
                     got);
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY);
}

/* Byte ranges of every array the update touches, to refuse any overlap
 * between two of them (two tensors' updates would race, or one would read
 * what another wrote). */
typedef struct {
    char *lo, *hi;
    int list;
    Py_ssize_t idx;
} span_t;

static int span_cmp(const void *a, const void *b) {
    const span_t *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int all_disjoint(span_t *sp, Py_ssize_t n, const char *const *lists) {
    qsort(sp, (size_t)n, sizeof(span_t), span_cmp);
    Py_ssize_t far = -1; /* the span reaching furthest so far */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sp[i].lo == sp[i].hi) continue;
        if (far >= 0 && sp[i].lo < sp[far].hi) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] and %s[%zd] must not share memory", lists[sp[far].list],
                         sp[far].idx, lists[sp[i].list], sp[i].idx);
            return -1;
        }
        if (far < 0 || sp[i].hi > sp[far].hi) far = i;
    }
    return 0;
}

PyDoc_STRVAR(adamw_multi_doc,
             "adamw_multi(params, grads, ms, vs, hyper, *, grad_scale=1.0)\n"
             "--\n\n"
             "AdamW on many tensors in one call (one parallel region): for each t, the update of\n"
             "adamw_step(params[t], grads[t], ms[t], vs[t], lr=hyper[t, 0], beta1=hyper[t, 1],\n"
             "beta2=hyper[t, 2], eps=hyper[t, 3], weight_decay=hyper[t, 4], step=hyper[t, 5]), the same bits.\n"
             "params, grads, ms, vs: lists of float32 C-contiguous arrays (params[t], ms[t], vs[t] written),\n"
             "grads[t] the shape of params[t]; no two arrays may share memory. hyper: float64 (n, 6).\n"
             "grad_scale != 1 first scales every gradient in place (grads[t] *= grad_scale, as scale_),\n"
             "then updates with the scaled gradient: clip_grad_norm's scaling in the same pass.");

static PyObject *py_adamw_multi(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"params", "grads", "ms", "vs", "hyper", "grad_scale", NULL};
    static const char *const names[] = {"params", "grads", "ms", "vs"};
    PyObject *lo[4], *ho, *seqs[4] = {NULL, NULL, NULL, NULL};
    PyArrayObject *hyper = NULL;
    double grad_scale = 1.0;
    float **ptrs = NULL;
    int64_t *sizes = NULL;
    rp_adamw_hyper *hp = NULL;
    span_t *spans = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|$d:adamw_multi", kwlist, &lo[0], &lo[1], &lo[2], &lo[3], &ho,
                                     &grad_scale))
        return NULL;
    if (check_range(grad_scale, "grad_scale", -INFINITY, INFINITY, 1, "a finite number") < 0) return NULL;
    if (!(seqs[0] = seq_of(lo[0], "params", -1))) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seqs[0]);
    for (int l = 1; l < 4; l++)
        if (!(seqs[l] = seq_of(lo[l], names[l], n))) goto fail;
    hyper = rp_in_f64_rows(ho, "hyper", n, 6);
    if (!hyper) goto fail;
    ptrs = PyMem_Calloc((size_t)(4 * n + 1), sizeof(float *));
    sizes = PyMem_Calloc((size_t)(n + 1), sizeof(int64_t));
    hp = PyMem_Calloc((size_t)(n + 1), sizeof(rp_adamw_hyper));
    spans = PyMem_Calloc((size_t)(4 * n + 1), sizeof(span_t));
    if (!ptrs || !sizes || !hp || !spans) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t t = 0; t < n; t++) {
        PyArrayObject *a[4];
        for (int l = 0; l < 4; l++) {
            char name[64];
            snprintf(name, sizeof name, "%s[%zd]", names[l], t);
            a[l] = inplace_f32(PySequence_Fast_GET_ITEM(seqs[l], t), name, l != 1 || grad_scale != 1.0);
            if (!a[l]) goto fail;
            if (l > 0) {
                char pname[64];
                snprintf(pname, sizeof pname, "params[%zd]", t);
                if (same_shape(a[0], pname, a[l], name) < 0) goto fail;
            }
            ptrs[l * n + t] = RP_F32(a[l]);
            spans[l * n + t] = (span_t){PyArray_BYTES(a[l]), PyArray_BYTES(a[l]) + PyArray_NBYTES(a[l]), l, t};
        }
        sizes[t] = (int64_t)PyArray_SIZE(a[0]);
        const double *h = (const double *)PyArray_DATA(hyper) + 6 * t;
        char row[64];
        snprintf(row, sizeof row, "hyper[%zd, 5] (step)", t);
        if (!(h[5] >= 1.0 && h[5] <= 9007199254740992.0 && h[5] == floor(h[5]))) {
            char got[64];
            fmt_double(h[5], got, sizeof got);
            PyErr_Format(PyExc_ValueError, "%s must be an integer >= 1 (the 1-based step count); got %s", row, got);
            goto fail;
        }
        char n0[64], n1[64], n2[64], n3[64], n4[64];
        snprintf(n0, sizeof n0, "hyper[%zd, 0] (lr)", t);
        snprintf(n1, sizeof n1, "hyper[%zd, 1] (beta1)", t);
        snprintf(n2, sizeof n2, "hyper[%zd, 2] (beta2)", t);
        snprintf(n3, sizeof n3, "hyper[%zd, 3] (eps)", t);
        snprintf(n4, sizeof n4, "hyper[%zd, 4] (weight_decay)", t);
        if (check_range(h[0], n0, 0.0, INFINITY, 1, "a finite number >= 0") < 0 ||
            check_range(h[1], n1, 0.0, 1.0, 1, "in [0, 1)") < 0 ||
            check_range(h[2], n2, 0.0, 1.0, 1, "in [0, 1)") < 0 ||
            check_range(h[3], n3, 0.0, INFINITY, 1, "a finite number >= 0") < 0 ||
            check_range(h[4], n4, 0.0, INFINITY, 1, "a finite number >= 0") < 0)
            goto fail;
        hp[t] = (rp_adamw_hyper){h[0], h[1], h[2], h[3], h[4], (int64_t)h[5]};
    }
    if (all_disjoint(spans, 4 * n, names) < 0) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_optim_adamw_multi(ptrs, ptrs + n, ptrs + 2 * n, ptrs + 3 * n, sizes, hp, (int64_t)n, (float)grad_scale);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "adamw_multi");
        goto fail;
    }
    Py_INCREF(Py_None);
    result = Py_None;
fail:
    for (int l = 0; l < 4; l++) Py_XDECREF(seqs[l]);
    Py_XDECREF(hyper);
    PyMem_Free(ptrs);
    PyMem_Free(sizes);
    PyMem_Free(hp);
    PyMem_Free(spans);
    return result;
}

PyDoc_STRVAR(scale_multi_doc, "scale_multi(arrays, factor)\n"
                              "--\n\n"
                              "arrays[t] *= factor in place for every array of a list/tuple (float32,\n"
                              "C-contiguous, writeable, no two sharing memory): scale_ on each, one call.");

static PyObject *py_scale_multi(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lo, *seq = NULL, *result = NULL;
    double factor;
    float **ptrs = NULL;
    int64_t *sizes = NULL;
    span_t *spans = NULL;
    static const char *const names[] = {"arrays"};
    if (!PyArg_ParseTuple(args, "Od:scale_multi", &lo, &factor)) return NULL;
    if (check_range(factor, "factor", -INFINITY, INFINITY, 1, "a finite number") < 0) return NULL;
    if (!(seq = seq_of(lo, "arrays", -1))) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    ptrs = PyMem_Calloc((size_t)(n + 1), sizeof(float *));
    sizes = PyMem_Calloc((size_t)(n + 1), sizeof(int64_t));
    spans = PyMem_Calloc((size_t)(n + 1), sizeof(span_t));
    if (!ptrs || !sizes || !spans) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t t = 0; t < n; t++) {
        char name[64];
        snprintf(name, sizeof name, "arrays[%zd]", t);
        PyArrayObject *a = inplace_f32(PySequence_Fast_GET_ITEM(seq, t), name, 1);
        if (!a) goto fail;
        ptrs[t] = RP_F32(a);
        sizes[t] = (int64_t)PyArray_SIZE(a);
        spans[t] = (span_t){PyArray_BYTES(a), PyArray_BYTES(a) + PyArray_NBYTES(a), 0, t};
    }
    if (all_disjoint(spans, n, names) < 0) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_optim_scale_multi(ptrs, sizes, (int64_t)n, (float)factor);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "scale_multi");
        goto fail;
    }
    Py_INCREF(Py_None);
    result = Py_None;
fail:
    Py_XDECREF(seq);
    PyMem_Free(ptrs);
    PyMem_Free(sizes);
    PyMem_Free(spans);
    return result;
}

PyMethodDef rp_methods_optim[] = {
    {"sgd_step", (PyCFunction)(void (*)(void))py_sgd_step, METH_VARARGS | METH_KEYWORDS, sgd_doc},
    {"adamw_step", (PyCFunction)(void (*)(void))py_adamw_step, METH_VARARGS | METH_KEYWORDS, adamw_doc},
    {"adamw_multi", (PyCFunction)(void (*)(void))py_adamw_multi, METH_VARARGS | METH_KEYWORDS, adamw_multi_doc},
    {"grad_norm", py_grad_norm, METH_O, grad_norm_doc},
    {"scale_", py_scale_, METH_VARARGS, scale_doc},
    {"scale_multi", py_scale_multi, METH_VARARGS, scale_multi_doc},
    {NULL, NULL, 0, NULL},
};
