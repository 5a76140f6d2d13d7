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
        PyErr_Format(PyExc_ValueError,
                     "d0 and n must lie in [-2**62, 2**62] (distances d0 .. d0+n-1); got d0=%lld, n=%lld", d0, n);
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
    long long d0, n;
    int sym = 0, rc;
    PyArrayObject *s = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("slopes", &s, 1, "(H,)"),
                     RP_ARG_LLONG("d0", &d0),
                     RP_ARG_LLONG("n", &n),
                     RP_ARG_OPTIONAL,
                     RP_ARG_BOOL("symmetric", &sym),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_alibi_fwd", spec) < 0) return NULL;
    if (need_window(d0, n) < 0) goto fail;
    int64_t H = RP_DIM(s, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_alibi_fwd(RP_F32(s), H, d0, n, sym, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_alibi_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_alibi_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long d0;
    int sym = 0, rc;
    PyArrayObject *g = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("grad", &g, 2, "(H, n)"), RP_ARG_LLONG("d0", &d0), RP_ARG_OPTIONAL,
                     RP_ARG_BOOL("symmetric", &sym), RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_alibi_bwd", spec) < 0) return NULL;
    if (need_window(d0, 0) < 0) goto fail;
    int64_t H = RP_DIM(g, 0), n = RP_DIM(g, 1);
    npy_intp od[1] = {(npy_intp)H};
    if (!(out = rp_new_f32(1, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_alibi_bwd(RP_F32(g), H, d0, n, sym, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_alibi_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

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

static PyObject *py_t5_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long d0, n, md;
    int bidir, rc;
    PyArrayObject *t = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("table", &t, 2, "(H, num_buckets)"),
                     RP_ARG_LLONG("d0", &d0),
                     RP_ARG_LLONG("n", &n),
                     RP_ARG_LLONG("max_distance", &md),
                     RP_ARG_BOOL("bidirectional", &bidir),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_t5_fwd", spec) < 0) return NULL;
    if (need_window(d0, n) < 0) goto fail;
    int64_t H = RP_DIM(t, 0), nb = RP_DIM(t, 1);
    if (t5_check(nb, md, bidir) < 0) goto fail;
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_t5_fwd(RP_F32(t), H, nb, md, bidir, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_t5_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_t5_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long d0, nb, md;
    int bidir, rc;
    PyArrayObject *g = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("grad", &g, 2, "(H, n)"),  RP_ARG_LLONG("d0", &d0),
                     RP_ARG_LLONG("num_buckets", &nb),     RP_ARG_LLONG("max_distance", &md),
                     RP_ARG_BOOL("bidirectional", &bidir), RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_t5_bwd", spec) < 0) return NULL;
    if (need_window(d0, 0) < 0 || t5_check(nb, md, bidir) < 0) goto fail;
    int64_t H = RP_DIM(g, 0), n = RP_DIM(g, 1);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)nb};
    if (!(out = rp_new_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_t5_bwd(RP_F32(g), H, nb, md, bidir, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_t5_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
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

/* r1, r2 (H,), r2 > 0 (converted already; r1 checked 1-D by the spec) */
static int kerple_params(PyArrayObject *r1, PyArrayObject *r2) {
    if (need_1d(r2, "r2", PyArray_DIM(r1, 0), "(H,) like r1") < 0) return -1;
    const float *v = RP_F32(r2);
    for (npy_intp h = 0; h < PyArray_DIM(r2, 0); h++)
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
    long long d0, n;
    const char *vs = "log";
    int variant, rc;
    PyArrayObject *r1 = NULL, *r2 = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("r1", &r1, 1, "(H,)"),
                     RP_ARG_F32("r2", &r2, -1, NULL),
                     RP_ARG_LLONG("d0", &d0),
                     RP_ARG_LLONG("n", &n),
                     RP_ARG_OPTIONAL,
                     RP_ARG_STR("variant", &vs),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_kerple_fwd", spec) < 0) return NULL;
    if ((variant = kerple_variant(vs)) < 0 || need_window(d0, n) < 0 || kerple_params(r1, r2) < 0) goto fail;
    int64_t H = RP_DIM(r1, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_kerple_fwd(RP_F32(r1), RP_F32(r2), H, variant, d0, n, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_kerple_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_kerple_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long d0;
    const char *vs = "log";
    int variant, rc;
    PyArrayObject *r1 = NULL, *r2 = NULL, *g = NULL, *d1 = NULL, *d2 = NULL;
    rp_arg spec[] = {RP_ARG_F32("r1", &r1, 1, "(H,)"),
                     RP_ARG_F32("r2", &r2, -1, NULL),
                     RP_ARG_F32("grad", &g, 2, "(H, n)"),
                     RP_ARG_LLONG("d0", &d0),
                     RP_ARG_OPTIONAL,
                     RP_ARG_STR("variant", &vs),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_kerple_bwd", spec) < 0) return NULL;
    if (need_window(d0, 0) < 0 || (variant = kerple_variant(vs)) < 0 || kerple_params(r1, r2) < 0) goto fail;
    int64_t H = RP_DIM(r1, 0), n = RP_DIM(g, 1);
    if (need_grad_hn(g, H, n) < 0) goto fail;
    npy_intp od[1] = {(npy_intp)H};
    if (!(d1 = rp_new_f32(1, od)) || !(d2 = rp_new_f32(1, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_kerple_bwd(RP_F32(r1), RP_F32(r2), RP_F32(g), H, variant, d0, n, RP_F32(d1), RP_F32(d2));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "bias_kerple_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("(NN)", d1, d2);
fail:
    rp_args_release(spec);
    Py_XDECREF(d1);
    Py_XDECREF(d2);
    return NULL;
}

/* ---- Sandwich ---------------------------------------------------------------- */

static PyObject *py_sandwich_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long d0, n, dim = 128;
    int rc;
    PyArrayObject *s = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("scales", &s, 1, "(H,)"),
                     RP_ARG_LLONG("d0", &d0),
                     RP_ARG_LLONG("n", &n),
                     RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("dim", &dim),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_sandwich_fwd", spec) < 0) return NULL;
    if (dim < 2 || dim % 2) {
        PyErr_Format(PyExc_ValueError, "dim must be an even int >= 2; got %lld", dim);
        goto fail;
    }
    if (need_window(d0, n) < 0) goto fail;
    int64_t H = RP_DIM(s, 0);
    npy_intp od[2] = {(npy_intp)H, (npy_intp)n};
    if (!(out = rp_new_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_bias_sandwich_fwd(RP_F32(s), H, dim, d0, n, RP_F32(out));
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

/* ---- FIRE ------------------------------------------------------------------- */

/* FIRE's parameters as the spec converted them: W1 (W,) (1-D checked by the
 * spec), b1 (W,), W2 (H, W), b2 (H,), c and L one value each. */
static int fire_load(PyArrayObject *W1, PyArrayObject *b1, PyArrayObject *W2, PyArrayObject *b2, PyArrayObject *c,
                     PyArrayObject *L, double eps, rp_fire *f) {
    npy_intp W = PyArray_DIM(W1, 0);
    if (need_1d(b1, "b1", W, "(W,) like W1") < 0) return -1;
    npy_intp d2[2] = {-1, W};
    if (rp_check_shape(W2, "W2", 2, d2, "(H, W) with W = len(W1)") < 0) return -1;
    npy_intp H = PyArray_DIM(W2, 0);
    if (need_1d(b2, "b2", H, "(H,) with H = W2.shape[0]") < 0) return -1;
    if (PyArray_SIZE(c) != 1) {
        PyErr_Format(PyExc_ValueError, "c must hold one value; got %lld values", (long long)PyArray_SIZE(c));
        return -1;
    }
    if (PyArray_SIZE(L) != 1) {
        PyErr_Format(PyExc_ValueError, "L must hold one value; got %lld values", (long long)PyArray_SIZE(L));
        return -1;
    }
    if (!(eps >= 0.0)) {
        char buf[64];
        snprintf(buf, sizeof buf, "%g", eps);
        PyErr_Format(PyExc_ValueError, "eps must be >= 0; got %s", buf);
        return -1;
    }
    f->W1 = RP_F32(W1);
    f->b1 = RP_F32(b1);
    f->W2 = RP_F32(W2);
    f->b2 = RP_F32(b2);
    f->c = RP_F32(c)[0];
    f->L = RP_F32(L)[0];
    f->eps = (float)eps;
    f->W = W;
    f->H = H;
    if (eps == 0.0 && (f->c == 0.0f || f->L == 0.0f)) {
        /* psi(max(|L|, i)) + eps would be 0 (c = 0, or L = 0 at i = 0): x = 0/0 */
        char buf[96];
        snprintf(buf, sizeof buf, "c=%g, L=%g", (double)f->c, (double)f->L);
        PyErr_Format(PyExc_ValueError,
                     "eps must be > 0 when c or L is 0 (the FIRE normaliser would be 0); "
                     "got eps=0, %s",
                     buf);
        return -1;
    }
    return 0;
}

#define FIRE_SPEC                                                                                       \
    RP_ARG_F32("W1", &W1, 1, "(W,)"), RP_ARG_F32("b1", &b1, -1, NULL), RP_ARG_F32("W2", &W2, -1, NULL), \
        RP_ARG_F32("b2", &b2, -1, NULL), RP_ARG_F32("c", &c, -1, NULL), RP_ARG_F32("L", &L, -1, NULL)

/* Query positions q_offset + i are int64: keep them far from overflow. */
static int need_qoffset(long long q_offset) {
    if (q_offset < 0 || q_offset > (1LL << 60)) {
        PyErr_Format(PyExc_ValueError, "q_offset must be in [0, 2**60]; got %lld", q_offset);
        return -1;
    }
    return 0;
}

static int window_args(long long Tq, long long Tk, long long q_offset) {
    if (rp_check_nonneg(Tq, "Tq") < 0 || rp_check_nonneg(Tk, "Tk") < 0 || need_qoffset(q_offset) < 0) return -1;
    return 0;
}

static PyObject *py_fire_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long Tq, Tk, qo = 0;
    double eps = 1e-6;
    int rc;
    rp_fire f;
    PyArrayObject *W1 = NULL, *b1 = NULL, *W2 = NULL, *b2 = NULL, *c = NULL, *L = NULL, *out = NULL;
    rp_arg spec[] = {FIRE_SPEC,       RP_ARG_LLONG("Tq", &Tq),       RP_ARG_LLONG("Tk", &Tk),
                     RP_ARG_OPTIONAL, RP_ARG_LLONG("q_offset", &qo), RP_ARG_DOUBLE("eps", &eps),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "fire_fwd", spec) < 0) return NULL;
    if (window_args(Tq, Tk, qo) < 0 || fire_load(W1, b1, W2, b2, c, L, eps, &f) < 0) goto fail;
    npy_intp od[4] = {1, (npy_intp)f.H, (npy_intp)Tq, (npy_intp)Tk};
    if (!(out = rp_new_f32(4, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_fire_fwd(&f, Tq, Tk, qo, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "fire_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_fire_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long qo = 0;
    double eps = 1e-6;
    int rc;
    rp_fire f;
    PyArrayObject *W1 = NULL, *b1 = NULL, *W2 = NULL, *b2 = NULL, *c = NULL, *L = NULL, *g = NULL;
    PyArrayObject *dW1 = NULL, *db1 = NULL, *dW2 = NULL, *db2 = NULL, *dc = NULL, *dL = NULL;
    rp_arg spec[] = {FIRE_SPEC,
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("q_offset", &qo),
                     RP_ARG_DOUBLE("eps", &eps),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "fire_bwd", spec) < 0) return NULL;
    if (need_qoffset(qo) < 0 || fire_load(W1, b1, W2, b2, c, L, eps, &f) < 0) goto fail;
    npy_intp gd[4] = {1, (npy_intp)f.H, -1, -1};
    if (rp_check_shape(g, "grad", 4, gd, "(1, H, Tq, Tk)") < 0) goto fail;
    int64_t Tq = RP_DIM(g, 2), Tk = RP_DIM(g, 3);
    npy_intp dw[1] = {(npy_intp)f.W}, dh[1] = {(npy_intp)f.H}, dhw[2] = {(npy_intp)f.H, (npy_intp)f.W};
    if (!(dW1 = rp_new_f32(1, dw)) || !(db1 = rp_new_f32(1, dw)) || !(dW2 = rp_new_f32(2, dhw)) ||
        !(db2 = rp_new_f32(1, dh)))
        goto fail;
    if (!(dc = rp_new_f32(PyArray_NDIM(c), PyArray_DIMS(c))) || !(dL = rp_new_f32(PyArray_NDIM(L), PyArray_DIMS(L))))
        goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_fire_bwd(&f, Tq, Tk, qo, RP_F32(g), RP_F32(dW1), RP_F32(db1), RP_F32(dW2), RP_F32(db2), RP_F32(dc),
                         RP_F32(dL));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "fire_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("(NNNNNN)", dW1, db1, dW2, db2, dc, dL);
fail:
    rp_args_release(spec);
    Py_XDECREF(dW1);
    Py_XDECREF(db1);
    Py_XDECREF(dW2);
    Py_XDECREF(db2);
    Py_XDECREF(dc);
    Py_XDECREF(dL);
    return NULL;
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
    {"bias_alibi_fwd", FN(py_alibi_fwd), KW,
     "bias_alibi_fwd(slopes (H,), d0, n, symmetric=False) -> (H, n): -m_h * f(d0 + t)"},
    {"bias_alibi_bwd", FN(py_alibi_bwd), KW, "bias_alibi_bwd(grad (H, n), d0, symmetric=False) -> dslopes (H,)"},
    {"t5_bucket", FN(py_t5_bucket), KW,
     "t5_bucket(relative_position (int array, j - i), num_buckets=32, max_distance=128, bidirectional=True) -> int64"},
    {"bias_t5_fwd", FN(py_t5_fwd), KW, "bias_t5_fwd(table (H, nb), d0, n, max_distance, bidirectional) -> (H, n)"},
    {"bias_t5_bwd", FN(py_t5_bwd), KW,
     "bias_t5_bwd(grad (H, n), d0, num_buckets, max_distance, bidirectional) -> dtable (H, nb)"},
    {"bias_kerple_fwd", FN(py_kerple_fwd), KW, "bias_kerple_fwd(r1 (H,), r2 (H,), d0, n, variant='log') -> (H, n)"},
    {"bias_kerple_bwd", FN(py_kerple_bwd), KW, "bias_kerple_bwd(r1, r2, grad (H, n), d0, variant='log') -> (dr1, dr2)"},
    {"bias_sandwich_fwd", FN(py_sandwich_fwd), KW, "bias_sandwich_fwd(scales (H,), d0, n, dim=128) -> (H, n)"},
    {"fire_fwd", FN(py_fire_fwd), KW,
     "fire_fwd(W1 (W,), b1 (W,), W2 (H, W), b2 (H,), c (1,), L (1,), Tq, Tk, q_offset=0, eps=1e-6) -> (1, H, Tq, Tk)"},
    {"fire_bwd", FN(py_fire_bwd), KW,
     "fire_bwd(W1, b1, W2, b2, c, L, grad (1, H, Tq, Tk), q_offset=0, eps=1e-6) -> (dW1, db1, dW2, db2, dc, dL)"},
    {"cope_fwd", FN(py_cope_fwd), KW,
     "cope_fwd(q (B,H,Tq,D), k (B,H,Tk,D), e (npos, D), q_offset=0, scale=1.0) -> (B, H, Tq, Tk)"},
    {"cope_bwd", FN(py_cope_bwd), KW, "cope_bwd(q, k, e, grad (B,H,Tq,Tk), q_offset=0, scale=1.0) -> (dq, dk, de)"},
    {NULL, NULL, 0, NULL},
};
