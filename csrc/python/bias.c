/* Bridge for the bias area: parse, validate, release the GIL, call the core.
 * T5 bucket indices (the notebook helper t5_bucket), the Sandwich table over
 * any int64 distances d = query position - key position, and CoPE. */
#include "bridge.h"

#include "core/bias.h"

#include <stdio.h>
#include <string.h>

/* ---- T5 ------------------------------------------------------------------ */

static int t5_check(long long nb, long long max_distance, int bidirectional) {
    long long half = bidirectional ? nb / 2 : nb;
    if (half < 2) {
        PyErr_Format(PyExc_ValueError, "num_buckets must be >= %d for %s T5 buckets; got %lld", bidirectional ? 4 : 2,
                     bidirectional ? "bidirectional" : "unidirectional", nb);
        return -1;
    }
    if (max_distance <= half / 2) {
        PyErr_Format(PyExc_ValueError,
                     "max_distance must be > %lld (the exact buckets, num_buckets/%d) for num_buckets=%lld; got %lld",
                     half / 2, bidirectional ? 4 : 2, nb, max_distance);
        return -1;
    }
    return 0;
}

static PyObject *py_t5_bucket(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long nb = 32, md = 128;
    int bidir = 1;
    PyArrayObject *r = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_I64("relative_position", &r, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("num_buckets", &nb),
                     RP_ARG_LLONG("max_distance", &md),
                     RP_ARG_BOOL("bidirectional", &bidir),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "t5_bucket", spec) < 0) return NULL;
    if (t5_check(nb, md, bidir) < 0) goto fail;
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(r), PyArray_DIMS(r), NPY_INT64))) goto fail;
    {
        const int64_t *src = RP_I64(r);
        int64_t *dst = RP_I64(out);
        npy_intp total = PyArray_SIZE(r);
        Py_BEGIN_ALLOW_THREADS
            for (npy_intp t = 0; t < total; t++) dst[t] = rp_t5_bucket(src[t], bidir, nb, md);
        Py_END_ALLOW_THREADS
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

/* ---- Sandwich ---------------------------------------------------------------- */

static PyObject *py_sandwich_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long dim = 128, first = 0;
    int rc;
    PyArrayObject *s = NULL, *d = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("scales", &s, 1, "(H,)"), RP_ARG_I64("d", &d, 1, "(n,)"), RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("dim", &dim),           RP_ARG_LLONG("first", &first),  RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_sandwich_fwd", spec) < 0) return NULL;
    if (dim < 2 || dim % 2) {
        PyErr_Format(PyExc_ValueError, "dim must be an even int >= 2; got %lld", dim);
        goto fail;
    }
    if (first != 0 && first != 1) {
        PyErr_Format(PyExc_ValueError, "first must be 0 (the paper's frequencies) or 1 (NeMo's); got %lld", first);
        goto fail;
    }
    int64_t H = RP_DIM(s, 0), n = RP_DIM(d, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_sandwich_fwd(RP_F32(s), H, dim, first, RP_I64(d), n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_sandwich_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

/* Query positions q_offset + i are int64: keep them far from overflow. */
static int need_qoffset(long long q_offset) {
    if (q_offset < 0 || q_offset > (1LL << 60)) {
        PyErr_Format(PyExc_ValueError, "q_offset must be in [0, 2**60]; got %lld", q_offset);
        return -1;
    }
    return 0;
}

/* ---- CoPE ------------------------------------------------------------------- */

/* k (B, H, Tk, D) and e (npos >= 1, D) against q (B, H, Tq, D) (4-D checked by the spec) */
static int cope_load(PyArrayObject *q, PyArrayObject *k, PyArrayObject *e) {
    npy_intp kd[4] = {PyArray_DIM(q, 0), PyArray_DIM(q, 1), -1, PyArray_DIM(q, 3)};
    if (rp_check_shape(k, "k", 4, kd, "(B, H, Tk, D) matching q") < 0) return -1;
    npy_intp ed[2] = {-1, PyArray_DIM(q, 3)};
    if (rp_check_shape(e, "e", 2, ed, "(npos, D) with D = q.shape[3]") < 0) return -1;
    if (PyArray_DIM(e, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "e must have at least one position row (npos >= 1); got 0");
        return -1;
    }
    return 0;
}

#define COPE_SPEC RP_ARG_F32("q", &q, 4, "(B, H, Tq, D)"), RP_ARG_F32("k", &k, -1, NULL), RP_ARG_F32("e", &e, -1, NULL)

static PyObject *py_cope_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long qo = 0;
    double scale = 1.0;
    int rc;
    PyArrayObject *q = NULL, *k = NULL, *e = NULL, *out = NULL;
    rp_arg spec[] = {COPE_SPEC, RP_ARG_OPTIONAL, RP_ARG_LLONG("q_offset", &qo), RP_ARG_DOUBLE("scale", &scale),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "cope_fwd", spec) < 0) return NULL;
    if (need_qoffset(qo) < 0 || cope_load(q, k, e) < 0) goto fail;
    int64_t B = RP_DIM(q, 0), H = RP_DIM(q, 1), Tq = RP_DIM(q, 2), D = RP_DIM(q, 3), Tk = RP_DIM(k, 2),
            P = RP_DIM(e, 0);
    npy_intp od[4] = {(npy_intp)B, (npy_intp)H, (npy_intp)Tq, (npy_intp)Tk};
    if (!(out = rp_new_f32(4, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_cope_fwd(RP_F32(q), RP_F32(k), RP_F32(e), B, H, Tq, Tk, D, P, qo, (float)scale, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "cope_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_cope_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long qo = 0;
    double scale = 1.0;
    int rc;
    PyArrayObject *q = NULL, *k = NULL, *e = NULL, *g = NULL, *dq = NULL, *dk = NULL, *de = NULL;
    rp_arg spec[] = {COPE_SPEC,
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("q_offset", &qo),
                     RP_ARG_DOUBLE("scale", &scale),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "cope_bwd", spec) < 0) return NULL;
    if (need_qoffset(qo) < 0 || cope_load(q, k, e) < 0) goto fail;
    int64_t B = RP_DIM(q, 0), H = RP_DIM(q, 1), Tq = RP_DIM(q, 2), D = RP_DIM(q, 3), Tk = RP_DIM(k, 2),
            P = RP_DIM(e, 0);
    npy_intp gd[4] = {(npy_intp)B, (npy_intp)H, (npy_intp)Tq, (npy_intp)Tk};
    if (rp_check_shape(g, "grad", 4, gd, "(B, H, Tq, Tk)") < 0) goto fail;
    if (!(dq = rp_new_f32(4, PyArray_DIMS(q))) || !(dk = rp_new_f32(4, PyArray_DIMS(k))) ||
        !(de = rp_new_f32(2, PyArray_DIMS(e))))
        goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_cope_bwd(RP_F32(q), RP_F32(k), RP_F32(e), RP_F32(g), B, H, Tq, Tk, D, P, qo, (float)scale, RP_F32(dq),
                         RP_F32(dk), RP_F32(de));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "cope_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("(NNN)", dq, dk, de);
fail:
    rp_args_release(spec);
    Py_XDECREF(dq);
    Py_XDECREF(dk);
    Py_XDECREF(de);
    return NULL;
}

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

PyMethodDef rp_methods_bias[] = {
    {"t5_bucket", FN(py_t5_bucket), KW,
     "t5_bucket(relative_position (int array, j - i), num_buckets=32, max_distance=128, bidirectional=True) -> int64"},
    {"bias_sandwich_fwd", FN(py_sandwich_fwd), KW,
     "bias_sandwich_fwd(scales (H,), d (n,) int64 distances i - j, dim=128, first=0) -> (H, n): "
     "scales[h] * sum_{k=first}^{first+dim/2-1} cos(d * 10000^(-2k/dim)); first 0 the paper's, 1 NeMo's"},
    {"cope_fwd", FN(py_cope_fwd), KW,
     "cope_fwd(q (B,H,Tq,D), k (B,H,Tk,D), e (npos, D), q_offset=0, scale=1.0) -> (B, H, Tq, Tk)"},
    {"cope_bwd", FN(py_cope_bwd), KW, "cope_bwd(q, k, e, grad (B,H,Tq,Tk), q_offset=0, scale=1.0) -> (dq, dk, de)"},
    {NULL, NULL, 0, NULL},
};
