/* Bridge for the bias area: parse, validate, release the GIL, call the core.
 *
 * Toeplitz kernels take (d0, n): they evaluate distances d = d0 .. d0+n-1
 * (d = query position - key position). For an attention window use
 * d0 = q_offset - (Tk - 1), n = Tq + Tk - 1. */
#include "bridge.h"

#include "core/bias.h"

#include <stdio.h>
#include <string.h>

/* ---- small helpers ---------------------------------------------------- */

static int need_1d(PyArrayObject *a, const char *name, npy_intp n, const char *desc) {
    npy_intp dims[1] = {n};
    return rp_check_shape(a, name, 1, dims, desc);
}

static int need_vec_len(long long n) {
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n (number of distances) must be >= 0; got %lld", n);
        return -1;
    }
    return 0;
}

/* Distances d0 .. d0+n-1 are formed (and negated) in int64: keep them far from overflow. */
#define RP_MAX_DIST (1LL << 62)
static int need_window(long long d0, long long n) {
    if (need_vec_len(n) < 0) return -1;
    if (d0 < -RP_MAX_DIST || d0 > RP_MAX_DIST || n > RP_MAX_DIST) {
        PyErr_Format(PyExc_ValueError, "d0 and n must lie in [-2**62, 2**62] (distances d0 .. d0+n-1); got d0=%lld, n=%lld",
                     d0, n);
        return -1;
    }
    return 0;
}

static int need_grad_hn(PyArrayObject *g, int64_t H, int64_t n) {
    npy_intp dims[2] = {(npy_intp)H, (npy_intp)n};
    return rp_check_shape(g, "grad", 2, dims, "(H, n)");
}

/* ---- ALiBi ------------------------------------------------------------ */

static PyObject *py_alibi_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"slopes", "d0", "n", "symmetric", NULL};
    PyObject *o_s;
    long long d0, n;
    int sym = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|p:bias_alibi_fwd", kwlist, &o_s, &d0, &n, &sym)) return NULL;
    PyArrayObject *s = NULL, *out = NULL;
    if (need_window(d0, n) < 0) goto fail;
    if (!(s = rp_in_f32(o_s, "slopes"))) goto fail;
    if (rp_check_ndim(s, "slopes", 1, "(H,)") < 0) goto fail;
    int64_t H = RP_DIM(s, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_alibi_fwd(RP_F32(s), H, d0, n, sym, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_alibi_fwd"); goto fail; }
    Py_DECREF(s);
    return (PyObject *)out;
fail:
    Py_XDECREF(s);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_alibi_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"grad", "d0", "symmetric", NULL};
    PyObject *o_g;
    long long d0;
    int sym = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|p:bias_alibi_bwd", kwlist, &o_g, &d0, &sym)) return NULL;
    if (need_window(d0, 0) < 0) return NULL;
    PyArrayObject *g = NULL, *out = NULL;
    if (!(g = rp_in_f32(o_g, "grad"))) goto fail;
    if (rp_check_ndim(g, "grad", 2, "(H, n)") < 0) goto fail;
    int64_t H = RP_DIM(g, 0), n = RP_DIM(g, 1);
    npy_intp od[1] = {(npy_intp)H};
    if (!(out = rp_new_f32(1, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_alibi_bwd(RP_F32(g), H, d0, n, sym, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_alibi_bwd"); goto fail; }
    Py_DECREF(g);
    return (PyObject *)out;
fail:
    Py_XDECREF(g);
    Py_XDECREF(out);
    return NULL;
}

/* ---- T5 ------------------------------------------------------------------ */

static int t5_check(long long nb, long long max_distance, int bidirectional) {
    long long half = bidirectional ? nb / 2 : nb;
    if (half < 2) {
        PyErr_Format(PyExc_ValueError, "num_buckets must be >= %d for %s T5 buckets; got %lld",
                     bidirectional ? 4 : 2, bidirectional ? "bidirectional" : "unidirectional", nb);
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
    static char *kwlist[] = {"relative_position", "num_buckets", "max_distance", "bidirectional", NULL};
    PyObject *o_r;
    long long nb = 32, md = 128;
    int bidir = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|LLp:t5_bucket", kwlist, &o_r, &nb, &md, &bidir)) return NULL;
    if (t5_check(nb, md, bidir) < 0) return NULL;
    PyArrayObject *r = NULL, *out = NULL;
    if (!(r = rp_in_i64(o_r, "relative_position"))) goto fail;
    out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(r), PyArray_DIMS(r), NPY_INT64);
    if (!out) goto fail;
    {
        const int64_t *src = RP_I64(r);
        int64_t *dst = RP_I64(out);
        npy_intp total = PyArray_SIZE(r);
        Py_BEGIN_ALLOW_THREADS
        for (npy_intp t = 0; t < total; t++) dst[t] = rp_t5_bucket(src[t], bidir, nb, md);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(r);
    return (PyObject *)out;
fail:
    Py_XDECREF(r);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_t5_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"table", "d0", "n", "max_distance", "bidirectional", NULL};
    PyObject *o_t;
    long long d0, n, md;
    int bidir;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLLp:bias_t5_fwd", kwlist, &o_t, &d0, &n, &md, &bidir)) return NULL;
    PyArrayObject *t = NULL, *out = NULL;
    if (need_window(d0, n) < 0) goto fail;
    if (!(t = rp_in_f32(o_t, "table"))) goto fail;
    if (rp_check_ndim(t, "table", 2, "(H, num_buckets)") < 0) goto fail;
    int64_t H = RP_DIM(t, 0), nb = RP_DIM(t, 1);
    if (t5_check(nb, md, bidir) < 0) goto fail;
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_t5_fwd(RP_F32(t), H, nb, md, bidir, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_t5_fwd"); goto fail; }
    Py_DECREF(t);
    return (PyObject *)out;
fail:
    Py_XDECREF(t);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_t5_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"grad", "d0", "num_buckets", "max_distance", "bidirectional", NULL};
    PyObject *o_g;
    long long d0, nb, md;
    int bidir;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLLp:bias_t5_bwd", kwlist, &o_g, &d0, &nb, &md, &bidir)) return NULL;
    if (need_window(d0, 0) < 0) return NULL;
    if (t5_check(nb, md, bidir) < 0) return NULL;
    PyArrayObject *g = NULL, *out = NULL;
    if (!(g = rp_in_f32(o_g, "grad"))) goto fail;
    if (rp_check_ndim(g, "grad", 2, "(H, n)") < 0) goto fail;
    int64_t H = RP_DIM(g, 0), n = RP_DIM(g, 1);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)nb};
    if (!(out = rp_new_f32(2, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_t5_bwd(RP_F32(g), H, nb, md, bidir, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_t5_bwd"); goto fail; }
    Py_DECREF(g);
    return (PyObject *)out;
fail:
    Py_XDECREF(g);
    Py_XDECREF(out);
    return NULL;
}

/* ---- KERPLE ---------------------------------------------------------------- */

static int kerple_variant(const char *v) {
    if (strcmp(v, "log") == 0) return 0;
    if (strcmp(v, "power") == 0) return 1;
    PyErr_Format(PyExc_ValueError, "variant must be 'log' or 'power'; got '%s'", v);
    return -1;
}

static int kerple_params(PyObject *o1, PyObject *o2, PyArrayObject **r1, PyArrayObject **r2) {
    if (!(*r1 = rp_in_f32(o1, "r1"))) return -1;
    if (rp_check_ndim(*r1, "r1", 1, "(H,)") < 0) return -1;
    if (!(*r2 = rp_in_f32(o2, "r2"))) return -1;
    if (need_1d(*r2, "r2", PyArray_DIM(*r1, 0), "(H,) like r1") < 0) return -1;
    const float *v = RP_F32(*r2);
    for (npy_intp h = 0; h < PyArray_DIM(*r2, 0); h++)
        if (!(v[h] > 0.0f)) { /* also catches NaN */
            char buf[64];
            snprintf(buf, sizeof buf, "%g", (double)v[h]);
            PyErr_Format(PyExc_ValueError, "r2 must be > 0 for every head (KERPLE's domain); got r2[%lld] = %s",
                         (long long)h, buf);
            return -1;
        }
    return 0;
}

static PyObject *py_kerple_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"r1", "r2", "d0", "n", "variant", NULL};
    PyObject *o1, *o2;
    long long d0, n;
    const char *vs = "log";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLL|s:bias_kerple_fwd", kwlist, &o1, &o2, &d0, &n, &vs)) return NULL;
    int variant = kerple_variant(vs);
    if (variant < 0) return NULL;
    PyArrayObject *r1 = NULL, *r2 = NULL, *out = NULL;
    if (need_window(d0, n) < 0) goto fail;
    if (kerple_params(o1, o2, &r1, &r2) < 0) goto fail;
    int64_t H = RP_DIM(r1, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_kerple_fwd(RP_F32(r1), RP_F32(r2), H, variant, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_kerple_fwd"); goto fail; }
    Py_DECREF(r1);
    Py_DECREF(r2);
    return (PyObject *)out;
fail:
    Py_XDECREF(r1);
    Py_XDECREF(r2);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_kerple_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"r1", "r2", "grad", "d0", "variant", NULL};
    PyObject *o1, *o2, *o_g;
    long long d0;
    const char *vs = "log";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOL|s:bias_kerple_bwd", kwlist, &o1, &o2, &o_g, &d0, &vs))
        return NULL;
    if (need_window(d0, 0) < 0) return NULL;
    int variant = kerple_variant(vs);
    if (variant < 0) return NULL;
    PyArrayObject *r1 = NULL, *r2 = NULL, *g = NULL, *d1 = NULL, *d2 = NULL;
    if (kerple_params(o1, o2, &r1, &r2) < 0) goto fail;
    int64_t H = RP_DIM(r1, 0);
    if (!(g = rp_in_f32(o_g, "grad"))) goto fail;
    if (rp_check_ndim(g, "grad", 2, "(H, n)") < 0) goto fail;
    int64_t n = RP_DIM(g, 1);
    if (need_grad_hn(g, H, n) < 0) goto fail;
    npy_intp od[1] = {(npy_intp)H};
    if (!(d1 = rp_new_f32(1, od)) || !(d2 = rp_new_f32(1, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_kerple_bwd(RP_F32(r1), RP_F32(r2), RP_F32(g), H, variant, d0, n, RP_F32(d1), RP_F32(d2));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_kerple_bwd"); goto fail; }
    Py_DECREF(r1);
    Py_DECREF(r2);
    Py_DECREF(g);
    return Py_BuildValue("(NN)", d1, d2);
fail:
    Py_XDECREF(r1);
    Py_XDECREF(r2);
    Py_XDECREF(g);
    Py_XDECREF(d1);
    Py_XDECREF(d2);
    return NULL;
}

/* ---- Sandwich ---------------------------------------------------------------- */

static PyObject *py_sandwich_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"scales", "d0", "n", "dim", NULL};
    PyObject *o_s;
    long long d0, n, dim = 128;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|L:bias_sandwich_fwd", kwlist, &o_s, &d0, &n, &dim)) return NULL;
    if (dim < 2 || dim % 2) return PyErr_Format(PyExc_ValueError, "dim must be an even int >= 2; got %lld", dim);
    PyArrayObject *s = NULL, *out = NULL;
    if (need_window(d0, n) < 0) goto fail;
    if (!(s = rp_in_f32(o_s, "scales"))) goto fail;
    if (rp_check_ndim(s, "scales", 1, "(H,)") < 0) goto fail;
    int64_t H = RP_DIM(s, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_bias_sandwich_fwd(RP_F32(s), H, dim, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "bias_sandwich_fwd"); goto fail; }
    Py_DECREF(s);
    return (PyObject *)out;
fail:
    Py_XDECREF(s);
    Py_XDECREF(out);
    return NULL;
}

/* ---- FIRE ------------------------------------------------------------------- */

typedef struct {
    PyArrayObject *W1, *b1, *W2, *b2, *c, *L;
} fire_arrays;

static void fire_release(fire_arrays *a) {
    Py_XDECREF(a->W1);
    Py_XDECREF(a->b1);
    Py_XDECREF(a->W2);
    Py_XDECREF(a->b2);
    Py_XDECREF(a->c);
    Py_XDECREF(a->L);
}

static int fire_load(PyObject *oW1, PyObject *ob1, PyObject *oW2, PyObject *ob2, PyObject *oc, PyObject *oL,
                     double eps, fire_arrays *a, rp_fire *f) {
    if (!(a->W1 = rp_in_f32(oW1, "W1"))) return -1;
    if (rp_check_ndim(a->W1, "W1", 1, "(W,)") < 0) return -1;
    npy_intp W = PyArray_DIM(a->W1, 0);
    if (!(a->b1 = rp_in_f32(ob1, "b1"))) return -1;
    if (need_1d(a->b1, "b1", W, "(W,) like W1") < 0) return -1;
    if (!(a->W2 = rp_in_f32(oW2, "W2"))) return -1;
    npy_intp d2[2] = {-1, W};
    if (rp_check_shape(a->W2, "W2", 2, d2, "(H, W) with W = len(W1)") < 0) return -1;
    npy_intp H = PyArray_DIM(a->W2, 0);
    if (!(a->b2 = rp_in_f32(ob2, "b2"))) return -1;
    if (need_1d(a->b2, "b2", H, "(H,) with H = W2.shape[0]") < 0) return -1;
    if (!(a->c = rp_in_f32(oc, "c"))) return -1;
    if (PyArray_SIZE(a->c) != 1) {
        PyErr_Format(PyExc_ValueError, "c must hold one value; got %lld values", (long long)PyArray_SIZE(a->c));
        return -1;
    }
    if (!(a->L = rp_in_f32(oL, "L"))) return -1;
    if (PyArray_SIZE(a->L) != 1) {
        PyErr_Format(PyExc_ValueError, "L must hold one value; got %lld values", (long long)PyArray_SIZE(a->L));
        return -1;
    }
    if (!(eps >= 0.0)) {
        char buf[64];
        snprintf(buf, sizeof buf, "%g", eps);
        PyErr_Format(PyExc_ValueError, "eps must be >= 0; got %s", buf);
        return -1;
    }
    f->W1 = RP_F32(a->W1);
    f->b1 = RP_F32(a->b1);
    f->W2 = RP_F32(a->W2);
    f->b2 = RP_F32(a->b2);
    f->c = RP_F32(a->c)[0];
    f->L = RP_F32(a->L)[0];
    f->eps = (float)eps;
    f->W = W;
    f->H = H;
    if (eps == 0.0 && (f->c == 0.0f || f->L == 0.0f)) {
        /* psi(max(|L|, i)) + eps would be 0 (c = 0, or L = 0 at i = 0): x = 0/0 */
        char buf[96];
        snprintf(buf, sizeof buf, "c=%g, L=%g", (double)f->c, (double)f->L);
        PyErr_Format(PyExc_ValueError, "eps must be > 0 when c or L is 0 (the FIRE normaliser would be 0); "
                     "got eps=0, %s", buf);
        return -1;
    }
    return 0;
}

/* Query positions q_offset + i are int64: keep them far from overflow. */
static int need_qoffset(long long q_offset) {
    if (q_offset < 0 || q_offset > (1LL << 60)) {
        PyErr_Format(PyExc_ValueError, "q_offset must be in [0, 2**60]; got %lld", q_offset);
        return -1;
    }
    return 0;
}

static int window_args(long long Tq, long long Tk, long long q_offset) {
    if (rp_check_nonneg(Tq, "Tq") < 0 || rp_check_nonneg(Tk, "Tk") < 0 || need_qoffset(q_offset) < 0)
        return -1;
    return 0;
}

static PyObject *py_fire_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"W1", "b1", "W2", "b2", "c", "L", "Tq", "Tk", "q_offset", "eps", NULL};
    PyObject *oW1, *ob1, *oW2, *ob2, *oc, *oL;
    long long Tq, Tk, qo = 0;
    double eps = 1e-6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOLL|Ld:fire_fwd", kwlist, &oW1, &ob1, &oW2, &ob2, &oc, &oL, &Tq,
                                     &Tk, &qo, &eps))
        return NULL;
    if (window_args(Tq, Tk, qo) < 0) return NULL;
    fire_arrays a = {0};
    rp_fire f;
    PyArrayObject *out = NULL;
    if (fire_load(oW1, ob1, oW2, ob2, oc, oL, eps, &a, &f) < 0) goto fail;
    npy_intp od[4] = {1, (npy_intp)f.H, (npy_intp)Tq, (npy_intp)Tk};
    if (!(out = rp_new_f32(4, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_fire_fwd(&f, Tq, Tk, qo, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "fire_fwd"); goto fail; }
    fire_release(&a);
    return (PyObject *)out;
fail:
    fire_release(&a);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_fire_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"W1", "b1", "W2", "b2", "c", "L", "grad", "q_offset", "eps", NULL};
    PyObject *oW1, *ob1, *oW2, *ob2, *oc, *oL, *og;
    long long qo = 0;
    double eps = 1e-6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOO|Ld:fire_bwd", kwlist, &oW1, &ob1, &oW2, &ob2, &oc, &oL, &og,
                                     &qo, &eps))
        return NULL;
    if (need_qoffset(qo) < 0) return NULL;
    fire_arrays a = {0};
    rp_fire f;
    PyArrayObject *g = NULL, *dW1 = NULL, *db1 = NULL, *dW2 = NULL, *db2 = NULL, *dc = NULL, *dL = NULL;
    if (fire_load(oW1, ob1, oW2, ob2, oc, oL, eps, &a, &f) < 0) goto fail;
    if (!(g = rp_in_f32(og, "grad"))) goto fail;
    npy_intp gd[4] = {1, (npy_intp)f.H, -1, -1};
    if (rp_check_shape(g, "grad", 4, gd, "(1, H, Tq, Tk)") < 0) goto fail;
    int64_t Tq = RP_DIM(g, 2), Tk = RP_DIM(g, 3);
    npy_intp dw[1] = {(npy_intp)f.W}, dh[1] = {(npy_intp)f.H}, dhw[2] = {(npy_intp)f.H, (npy_intp)f.W};
    if (!(dW1 = rp_new_f32(1, dw)) || !(db1 = rp_new_f32(1, dw)) || !(dW2 = rp_new_f32(2, dhw)) ||
        !(db2 = rp_new_f32(1, dh)))
        goto fail;
    if (!(dc = rp_new_f32(PyArray_NDIM(a.c), PyArray_DIMS(a.c))) || !(dL = rp_new_f32(PyArray_NDIM(a.L), PyArray_DIMS(a.L))))
        goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_fire_bwd(&f, Tq, Tk, qo, RP_F32(g), RP_F32(dW1), RP_F32(db1), RP_F32(dW2), RP_F32(db2), RP_F32(dc),
                     RP_F32(dL));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "fire_bwd"); goto fail; }
    fire_release(&a);
    Py_DECREF(g);
    return Py_BuildValue("(NNNNNN)", dW1, db1, dW2, db2, dc, dL);
fail:
    fire_release(&a);
    Py_XDECREF(g);
    Py_XDECREF(dW1);
    Py_XDECREF(db1);
    Py_XDECREF(dW2);
    Py_XDECREF(db2);
    Py_XDECREF(dc);
    Py_XDECREF(dL);
    return NULL;
}

/* ---- CoPE ------------------------------------------------------------------- */

static int cope_load(PyObject *oq, PyObject *ok, PyObject *oe, PyArrayObject **q, PyArrayObject **k,
                     PyArrayObject **e) {
    if (!(*q = rp_in_f32(oq, "q"))) return -1;
    if (rp_check_ndim(*q, "q", 4, "(B, H, Tq, D)") < 0) return -1;
    if (!(*k = rp_in_f32(ok, "k"))) return -1;
    npy_intp kd[4] = {PyArray_DIM(*q, 0), PyArray_DIM(*q, 1), -1, PyArray_DIM(*q, 3)};
    if (rp_check_shape(*k, "k", 4, kd, "(B, H, Tk, D) matching q") < 0) return -1;
    if (!(*e = rp_in_f32(oe, "e"))) return -1;
    npy_intp ed[2] = {-1, PyArray_DIM(*q, 3)};
    if (rp_check_shape(*e, "e", 2, ed, "(npos, D) with D = q.shape[3]") < 0) return -1;
    if (PyArray_DIM(*e, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "e must have at least one position row (npos >= 1); got 0");
        return -1;
    }
    return 0;
}

static PyObject *py_cope_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "e", "q_offset", "scale", NULL};
    PyObject *oq, *ok, *oe;
    long long qo = 0;
    double scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|Ld:cope_fwd", kwlist, &oq, &ok, &oe, &qo, &scale)) return NULL;
    if (need_qoffset(qo) < 0) return NULL;
    PyArrayObject *q = NULL, *k = NULL, *e = NULL, *out = NULL;
    if (cope_load(oq, ok, oe, &q, &k, &e) < 0) goto fail;
    int64_t B = RP_DIM(q, 0), H = RP_DIM(q, 1), Tq = RP_DIM(q, 2), D = RP_DIM(q, 3), Tk = RP_DIM(k, 2),
            P = RP_DIM(e, 0);
    npy_intp od[4] = {(npy_intp)B, (npy_intp)H, (npy_intp)Tq, (npy_intp)Tk};
    if (!(out = rp_new_f32(4, od))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_cope_fwd(RP_F32(q), RP_F32(k), RP_F32(e), B, H, Tq, Tk, D, P, qo, (float)scale, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "cope_fwd"); goto fail; }
    Py_DECREF(q);
    Py_DECREF(k);
    Py_DECREF(e);
    return (PyObject *)out;
fail:
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(e);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_cope_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q", "k", "e", "grad", "q_offset", "scale", NULL};
    PyObject *oq, *ok, *oe, *og;
    long long qo = 0;
    double scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|Ld:cope_bwd", kwlist, &oq, &ok, &oe, &og, &qo, &scale))
        return NULL;
    if (need_qoffset(qo) < 0) return NULL;
    PyArrayObject *q = NULL, *k = NULL, *e = NULL, *g = NULL, *dq = NULL, *dk = NULL, *de = NULL;
    if (cope_load(oq, ok, oe, &q, &k, &e) < 0) goto fail;
    int64_t B = RP_DIM(q, 0), H = RP_DIM(q, 1), Tq = RP_DIM(q, 2), D = RP_DIM(q, 3), Tk = RP_DIM(k, 2),
            P = RP_DIM(e, 0);
    if (!(g = rp_in_f32(og, "grad"))) goto fail;
    npy_intp gd[4] = {(npy_intp)B, (npy_intp)H, (npy_intp)Tq, (npy_intp)Tk};
    if (rp_check_shape(g, "grad", 4, gd, "(B, H, Tq, Tk)") < 0) goto fail;
    if (!(dq = rp_new_f32(4, PyArray_DIMS(q))) || !(dk = rp_new_f32(4, PyArray_DIMS(k))) ||
        !(de = rp_new_f32(2, PyArray_DIMS(e))))
        goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_cope_bwd(RP_F32(q), RP_F32(k), RP_F32(e), RP_F32(g), B, H, Tq, Tk, D, P, qo, (float)scale, RP_F32(dq),
                     RP_F32(dk), RP_F32(de));
    Py_END_ALLOW_THREADS
    if (rc) { rp_raise_code(rc, "cope_bwd"); goto fail; }
    Py_DECREF(q);
    Py_DECREF(k);
    Py_DECREF(e);
    Py_DECREF(g);
    return Py_BuildValue("(NNN)", dq, dk, de);
fail:
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(e);
    Py_XDECREF(g);
    Py_XDECREF(dq);
    Py_XDECREF(dk);
    Py_XDECREF(de);
    return NULL;
}

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

PyMethodDef rp_methods_bias[] = {
    {"bias_alibi_fwd", FN(py_alibi_fwd), KW,
     "bias_alibi_fwd(slopes (H,), d0, n, symmetric=False) -> (H, n): -m_h * f(d0 + t)"},
    {"bias_alibi_bwd", FN(py_alibi_bwd), KW, "bias_alibi_bwd(grad (H, n), d0, symmetric=False) -> dslopes (H,)"},
    {"t5_bucket", FN(py_t5_bucket), KW,
     "t5_bucket(relative_position (int array, j - i), num_buckets=32, max_distance=128, bidirectional=True) -> int64"},
    {"bias_t5_fwd", FN(py_t5_fwd), KW,
     "bias_t5_fwd(table (H, nb), d0, n, max_distance, bidirectional) -> (H, n)"},
    {"bias_t5_bwd", FN(py_t5_bwd), KW,
     "bias_t5_bwd(grad (H, n), d0, num_buckets, max_distance, bidirectional) -> dtable (H, nb)"},
    {"bias_kerple_fwd", FN(py_kerple_fwd), KW, "bias_kerple_fwd(r1 (H,), r2 (H,), d0, n, variant='log') -> (H, n)"},
    {"bias_kerple_bwd", FN(py_kerple_bwd), KW,
     "bias_kerple_bwd(r1, r2, grad (H, n), d0, variant='log') -> (dr1, dr2)"},
    {"bias_sandwich_fwd", FN(py_sandwich_fwd), KW, "bias_sandwich_fwd(scales (H,), d0, n, dim=128) -> (H, n)"},
    {"fire_fwd", FN(py_fire_fwd), KW,
     "fire_fwd(W1 (W,), b1 (W,), W2 (H, W), b2 (H,), c (1,), L (1,), Tq, Tk, q_offset=0, eps=1e-6) -> (1, H, Tq, Tk)"},
    {"fire_bwd", FN(py_fire_bwd), KW,
     "fire_bwd(W1, b1, W2, b2, c, L, grad (1, H, Tq, Tk), q_offset=0, eps=1e-6) -> (dW1, db1, dW2, db2, dc, dL)"},
    {"cope_fwd", FN(py_cope_fwd), KW,
     "cope_fwd(q (B,H,Tq,D), k (B,H,Tk,D), e (npos, D), q_offset=0, scale=1.0) -> (B, H, Tq, Tk)"},
    {"cope_bwd", FN(py_cope_bwd), KW,
     "cope_bwd(q, k, e, grad (B,H,Tq,Tk), q_offset=0, scale=1.0) -> (dq, dk, de)"},
    {NULL, NULL, 0, NULL},
};
