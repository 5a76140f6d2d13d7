/* Bridge for attention: the materialised kernel (attention_mat_fwd/bwd) and the
 * fused one (attention_fwd/bwd). One parser turns the Python arguments into an
 * rp_attn, validating every shape against the others, so both paths accept
 * exactly the same calls and raise the same errors.
 *
 * Python signatures (both paths; the fused one has no return_weights):
 *
 *   fwd(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
 *       qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
 *       relv=None, relv_ix=None, bias_vec=None, bias_ix=None, bias_full=None,
 *       pwl_u=None, pwl_ix=None, pwl_w=None, pwl_bp=None, pwl_slope=None, pwl_icpt=None,
 *       return_weights=False)
 *     -> (out (B, H, Tq, Dv), lse (B, H, Tq)) or (out, lse, probs (B, H, Tq, Tk))
 *   The fused path takes merged=False instead of return_weights: merged=True
 *   lays out out (and the backward's out and dout) as (B, Tq, H, Dv).
 *
 *   bwd(q, k, v, out, lse, dout, *, <the same keywords but return_weights>,
 *       needs=None)
 *     -> dict {name: gradient} for name in needs (default: every tensor given),
 *        names from "q", "k", "v", "qr", "relk", "relq", "relv", "bias_vec",
 *        "bias_full", "pwl_u", "pwl_w", "pwl_slope", "pwl_icpt"; each gradient
 *        shaped like its input.
 *
 * Arguments: q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) float32;
 * key_padding_mask (B, Tk) bool, True = padding; q_offset >= 0; scale a finite
 * float (None: 1/sqrt(D)); qr (B, H, Tq, D); relk (1|H, R, D), relq (1|H, R, D),
 * relv (1|H, R, Dv), bias_vec (1|H, R), each with its index (sign, off),
 * sign +1 or -1 (see core/attention.h); bias_full (1|B, H, Tq, Tk); the
 * piecewise-linear channel, all six or none: pwl_u (R,) with pwl_ix (sign,
 * off), pwl_w (Tq,), pwl_bp (S-1,) ascending without NaN, pwl_slope and
 * pwl_icpt (1|H, S).
 */
#include "bridge.h"

#include <math.h>
#include <string.h>

#include "core/attention.h"

#define RP_MAX_POSITION (1LL << 60)

/* One call: the validated rp_attn, the references it holds, and the results. */
typedef struct {
    rp_attn a;
    /* owned references to the inputs (NULL when absent) */
    PyArrayObject *q, *k, *v, *qr, *relk, *relq, *relv, *bias_vec, *bias_full, *mask;
    PyArrayObject *pwl_u, *pwl_w, *pwl_bp, *pwl_slope, *pwl_icpt;
    /* forward: results (allocated by the parser); backward: inputs out, lse, dout */
    PyArrayObject *out, *lse, *probs, *dout;
    /* backward: gradients asked for (allocated by the parser, NULL = not wanted) */
    PyArrayObject *dq, *dk, *dv, *dqr, *drelk, *drelq, *drelv, *dbias_vec, *dbias_full;
    PyArrayObject *dpwl_u, *dpwl_w, *dpwl_slope, *dpwl_icpt;
    PyArrayObject *dqkv; /* packed_grads: dq, dk, dv in one (B, Tq, 3, H, D) block */
    rp_attn_grads g;     /* pointers into the arrays above */
    int return_weights;
} rp_attn_call;

/* Raw Python objects of one call, before validation. */
typedef struct {
    PyObject *q, *k, *v, *out, *lse, *dout;
    int causal;
    PyObject *mask;
    long long q_offset;
    PyObject *scale;
    PyObject *qr, *relk, *relk_ix, *relq, *relq_ix, *relv, *relv_ix, *bias_vec, *bias_ix, *bias_full;
    PyObject *pwl_u, *pwl_ix, *pwl_w, *pwl_bp, *pwl_slope, *pwl_icpt;
    int return_weights;
    int merged;       /* fused path: out / dout (B, Tq, H, Dv) */
    int packed_grads; /* fused backward: dq, dk, dv in one (B, Tq, 3, H, D) block */
    int strided;      /* fused path: q, k, v read where they are (rp_attn_rows), not copied */
    PyObject *needs;
} raw_args;

static void rp_attn_call_free(rp_attn_call *C) {
    PyArrayObject **refs[] = {&C->q,          &C->k,         &C->v,         &C->qr,        &C->relk,       &C->relq,
                              &C->relv,       &C->bias_vec,  &C->bias_full, &C->mask,      &C->out,        &C->lse,
                              &C->probs,      &C->dout,      &C->dq,        &C->dk,        &C->dv,         &C->dqr,
                              &C->drelk,      &C->drelq,     &C->drelv,     &C->dbias_vec, &C->dbias_full, &C->pwl_u,
                              &C->pwl_w,      &C->pwl_bp,    &C->pwl_slope, &C->pwl_icpt,  &C->dpwl_u,     &C->dpwl_w,
                              &C->dpwl_slope, &C->dpwl_icpt, &C->dqkv};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) Py_CLEAR(*refs[i]);
}

/* (sign, off) with sign +1 or -1 and off an int. */
static int parse_ix(PyObject *obj, const char *name, const char *table, rp_relidx *ix) {
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s is required when %s is given: a (sign, off) tuple", name, table);
        return -1;
    }
    if (!PyTuple_Check(obj) && !PyList_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a (sign, off) tuple of ints; got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *seq = PySequence_Fast(obj, name);
    if (!seq) return -1;
    int rc = -1;
    if (PySequence_Fast_GET_SIZE(seq) != 2) {
        PyErr_Format(PyExc_ValueError, "%s must be a (sign, off) tuple of 2 ints; got %zd items", name,
                     PySequence_Fast_GET_SIZE(seq));
        goto done;
    }
    PyObject *s = PySequence_Fast_GET_ITEM(seq, 0), *o = PySequence_Fast_GET_ITEM(seq, 1);
    if (!PyIndex_Check(s) || !PyIndex_Check(o) || PyBool_Check(s) || PyBool_Check(o) || PyFloat_Check(s) ||
        PyFloat_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a (sign, off) tuple of ints; got (%s, %s)", name, Py_TYPE(s)->tp_name,
                     Py_TYPE(o)->tp_name);
        goto done;
    }
    PyObject *si = PyNumber_Index(s), *oi = PyNumber_Index(o); /* ints and NumPy integers */
    long long sign = si ? PyLong_AsLongLong(si) : -1, off = oi ? PyLong_AsLongLong(oi) : -1;
    Py_XDECREF(si);
    Py_XDECREF(oi);
    if (PyErr_Occurred()) goto done;
    if (off < -RP_MAX_POSITION || off > RP_MAX_POSITION) {
        PyErr_Format(PyExc_ValueError, "%s offset must be in [-2**60, 2**60]; got %lld", name, off);
        goto done;
    }
    if (sign != 1 && sign != -1) {
        PyErr_Format(PyExc_ValueError, "%s sign must be +1 or -1; got %lld", name, sign);
        goto done;
    }
    ix->sign = (int)sign;
    ix->off = (int64_t)off;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

/* A per-head table (1|H, R, width) (width < 0: 2-D (1|H, R)). */
static PyArrayObject *parse_table(PyObject *obj, const char *name, const char *desc, int64_t H, int64_t width,
                                  const char *wname, int64_t *Ht, int64_t *R) {
    PyArrayObject *t = rp_in_f32(obj, name);
    if (!t) return NULL;
    int nd = width < 0 ? 2 : 3;
    npy_intp dims[3] = {-1, -1, width};
    char got[128];
    if (rp_check_shape(t, name, nd, dims, desc) < 0) goto fail;
    rp_shape_str(t, got, sizeof got);
    if (RP_DIM(t, 0) != 1 && RP_DIM(t, 0) != H) {
        PyErr_Format(PyExc_ValueError, "%s must have a head dim of 1 or H = %lld; got shape %s", name, (long long)H,
                     got);
        goto fail;
    }
    if (RP_DIM(t, 1) < 1) {
        PyErr_Format(PyExc_ValueError, "%s must have at least one relative position (R >= 1); got shape %s", name, got);
        goto fail;
    }
    (void)wname;
    *Ht = RP_DIM(t, 0);
    *R = RP_DIM(t, 1);
    return t;
fail:
    Py_DECREF(t);
    return NULL;
}

static int check_absent_ix(PyObject *ix, const char *name, const char *table) {
    if (ix != NULL && ix != Py_None) {
        PyErr_Format(PyExc_ValueError, "%s was given but %s is None", name, table);
        return -1;
    }
    return 0;
}

/* The piecewise-linear channel: all six arguments or none. */
static int parse_pwl(const raw_args *r, rp_attn_call *C, int64_t Tq, int64_t H) {
    rp_attn *a = &C->a;
    PyObject *objs[] = {r->pwl_u, r->pwl_ix, r->pwl_w, r->pwl_bp, r->pwl_slope, r->pwl_icpt};
    static const char *names[] = {"pwl_u", "pwl_ix", "pwl_w", "pwl_bp", "pwl_slope", "pwl_icpt"};
    int given = 0;
    for (int t = 0; t < 6; t++) given += objs[t] != NULL && objs[t] != Py_None;
    if (given == 0) return 0;
    if (!r->pwl_u || r->pwl_u == Py_None) {
        for (int t = 1; t < 6; t++)
            if (objs[t] && objs[t] != Py_None) {
                PyErr_Format(PyExc_ValueError, "%s was given but pwl_u is None", names[t]);
                return -1;
            }
    }
    for (int t = 1; t < 6; t++)
        if (!objs[t] || objs[t] == Py_None) {
            if (t == 1) return parse_ix(r->pwl_ix, "pwl_ix", "pwl_u", &a->pwl_ix); /* its own message */
            PyErr_Format(PyExc_ValueError,
                         "%s is required when pwl_u is given (pwl_u, pwl_ix, pwl_w, pwl_bp, pwl_slope, "
                         "pwl_icpt go together)",
                         names[t]);
            return -1;
        }
    char got[128];
    C->pwl_u = rp_in_f32(r->pwl_u, "pwl_u");
    if (!C->pwl_u || rp_check_ndim(C->pwl_u, "pwl_u", 1, "(R,)") < 0) return -1;
    if (RP_DIM(C->pwl_u, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "pwl_u must have at least one entry (R >= 1); got shape (0,)");
        return -1;
    }
    a->pwl_ix.R = RP_DIM(C->pwl_u, 0);
    if (parse_ix(r->pwl_ix, "pwl_ix", "pwl_u", &a->pwl_ix) < 0) return -1;
    C->pwl_w = rp_in_f32(r->pwl_w, "pwl_w");
    npy_intp dw[1] = {Tq};
    if (!C->pwl_w || rp_check_shape(C->pwl_w, "pwl_w", 1, dw, "(Tq,)") < 0) return -1;
    C->pwl_slope = rp_in_f32(r->pwl_slope, "pwl_slope");
    if (!C->pwl_slope || rp_check_ndim(C->pwl_slope, "pwl_slope", 2, "(1|H, S)") < 0) return -1;
    rp_shape_str(C->pwl_slope, got, sizeof got);
    const int64_t Hp = RP_DIM(C->pwl_slope, 0), S = RP_DIM(C->pwl_slope, 1);
    if ((Hp != 1 && Hp != H) || S < 1 || S > INT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "pwl_slope must have shape (1|H, S) with H = %lld and 1 <= S < 2**31 segments; got shape %s",
                     (long long)H, got);
        return -1;
    }
    C->pwl_icpt = rp_in_f32(r->pwl_icpt, "pwl_icpt");
    npy_intp di[2] = {Hp, S};
    if (!C->pwl_icpt || rp_check_shape(C->pwl_icpt, "pwl_icpt", 2, di, "(1|H, S) like pwl_slope") < 0) return -1;
    C->pwl_bp = rp_in_f32(r->pwl_bp, "pwl_bp");
    npy_intp db[1] = {S - 1};
    if (!C->pwl_bp || rp_check_shape(C->pwl_bp, "pwl_bp", 1, db, "(S - 1,) with S = pwl_slope.shape[1]") < 0) return -1;
    const float *bp = RP_F32(C->pwl_bp);
    for (int64_t t = 0; t < S - 1; t++)
        if (bp[t] != bp[t] || (t > 0 && !(bp[t - 1] <= bp[t]))) {
            char buf[96];
            snprintf(buf, sizeof buf, "pwl_bp[%lld] = %g after %g", (long long)t, (double)bp[t],
                     t > 0 ? (double)bp[t - 1] : -INFINITY);
            PyErr_Format(PyExc_ValueError, "pwl_bp must be ascending with no NaN (the segments' breakpoints); got %s",
                         buf);
            return -1;
        }
    a->pwl_u = RP_F32(C->pwl_u);
    a->pwl_w = RP_F32(C->pwl_w);
    a->pwl_bp = RP_F32(C->pwl_bp);
    a->pwl_slope = RP_F32(C->pwl_slope);
    a->pwl_icpt = RP_F32(C->pwl_icpt);
    a->pwl_S = S;
    a->Hp = Hp;
    return 0;
}

/* q, k or v for the fused path: a float32 (B, H, T, D) ndarray is read where it
 * is, *rows set to its layout, when its D floats are contiguous and its other
 * strides are whole floats that never make two elements share memory (a view of
 * a (B, T, 3, H, D) projection, say); anything else is copied into the dense
 * layout (rows left 0) by rp_in_f32. A broadcast (stride 0) or self-overlapping
 * view is copied: read in place, its claimed size would cost work its memory
 * does not hold (2**40 keys of one row), where the copy fails at once. */
static PyArrayObject *in_f32_rows(PyObject *obj, const char *name, int strided, rp_attn_rows *rows) {
    memset(rows, 0, sizeof *rows);
    if (strided && PyArray_Check(obj)) {
        PyArrayObject *x = (PyArrayObject *)obj;
        if (PyArray_TYPE(x) == NPY_FLOAT32 && PyArray_NDIM(x) == 4 && PyArray_ISALIGNED(x) && PyArray_ISNOTSWAPPED(x) &&
            !PyArray_IS_C_CONTIGUOUS(x)) {
            const npy_intp *st = PyArray_STRIDES(x), *dm = PyArray_DIMS(x);
            int64_t e[4];
            int ok = 1;
            for (int d = 0; d < 4; d++) {
                /* a dimension of size 0 or 1 is never stepped along: its stride does not matter */
                if (dm[d] <= 1) {
                    e[d] = 0;
                    continue;
                }
                if (st[d] < 0 || st[d] % (npy_intp)sizeof(float)) ok = 0;
                e[d] = (int64_t)(st[d] / (npy_intp)sizeof(float));
            }
            if (dm[3] > 1 && e[3] != 1) ok = 0;
            /* no overlap: taken by stride, each dimension of size > 1 starts beyond
             * the extent of the smaller-stride ones (and no stride 0) */
            int order[4] = {0, 1, 2, 3}, n = 0;
            for (int d = 0; d < 4; d++)
                if (dm[d] > 1) order[n++] = d;
            for (int i = 1; i < n; i++) /* insertion sort of <= 4 dims by stride */
                for (int j = i; j > 0 && e[order[j]] < e[order[j - 1]]; j--) {
                    const int t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
            int64_t extent = 1; /* floats spanned by the dims taken so far */
            for (int i = 0; i < n && ok; i++) {
                const int d = order[i];
                if (e[d] < extent || (int64_t)(dm[d] - 1) > (INT64_MAX - extent) / e[d])
                    ok = 0;
                else
                    extent = e[d] * (int64_t)(dm[d] - 1) + extent;
            }
            /* all 0 would read as the dense layout (rp_attn_rows): such an array is copied */
            if (ok && (e[0] || e[1] || e[2])) {
                rows->sb = e[0];
                rows->sh = e[1];
                rows->si = e[2];
                Py_INCREF(obj);
                return x;
            }
        }
    }
    return rp_in_f32(obj, name);
}

/* Validate everything and fill C->a. */
static int build_call(const raw_args *r, rp_attn_call *C) {
    rp_attn *a = &C->a;
    memset(C, 0, sizeof *C);
    C->q = in_f32_rows(r->q, "q", r->strided, &a->q_rows);
    if (!C->q || rp_check_ndim(C->q, "q", 4, "(B, H, Tq, D)") < 0) return -1;
    const int64_t B = RP_DIM(C->q, 0), H = RP_DIM(C->q, 1), Tq = RP_DIM(C->q, 2), D = RP_DIM(C->q, 3);
    C->k = in_f32_rows(r->k, "k", r->strided, &a->k_rows);
    if (!C->k) return -1;
    {
        npy_intp dk[4] = {B, H, -1, D};
        if (rp_check_shape(C->k, "k", 4, dk, "(B, H, Tk, D)") < 0) return -1;
    }
    const int64_t Tk = RP_DIM(C->k, 2);
    C->v = in_f32_rows(r->v, "v", r->strided, &a->v_rows);
    if (!C->v) return -1;
    {
        npy_intp dv[4] = {B, H, Tk, -1};
        if (rp_check_shape(C->v, "v", 4, dv, "(B, H, Tk, Dv)") < 0) return -1;
    }
    const int64_t Dv = RP_DIM(C->v, 3);
    a->B = B;
    a->H = H;
    a->Tq = Tq;
    a->Tk = Tk;
    a->D = D;
    a->Dv = Dv;
    a->q = RP_F32(C->q);
    a->k = RP_F32(C->k);
    a->v = RP_F32(C->v);
    a->causal = r->causal;

    /* absolute positions q_offset + i and relative indices sign * (ia - j) + off are int64:
     * bound both far from overflow (a wrapped position crashed the materialised path) */
    if (r->q_offset < 0 || r->q_offset > RP_MAX_POSITION) {
        PyErr_Format(PyExc_ValueError, "q_offset must be in [0, 2**60]; got %lld", r->q_offset);
        return -1;
    }
    a->q_offset = (int64_t)r->q_offset;

    if (r->scale == NULL || r->scale == Py_None) {
        a->scale = D > 0 ? (float)(1.0 / sqrt((double)D)) : 1.0f;
    } else {
        if (!PyFloat_Check(r->scale) && !PyLong_Check(r->scale)) {
            PyErr_Format(PyExc_TypeError, "scale must be a float or None; got %s", Py_TYPE(r->scale)->tp_name);
            return -1;
        }
        double s = PyFloat_AsDouble(r->scale);
        if (s == -1.0 && PyErr_Occurred()) return -1;
        if (!isfinite(s) || !isfinite((float)s)) {
            PyErr_Format(PyExc_ValueError, "scale must be finite; got %R", r->scale);
            return -1;
        }
        a->scale = (float)s;
    }

    if (r->mask && r->mask != Py_None) {
        C->mask = rp_in_mask(r->mask, "key_padding_mask");
        if (!C->mask) return -1;
        npy_intp dm[2] = {B, Tk};
        if (rp_check_shape(C->mask, "key_padding_mask", 2, dm, "(B, Tk)") < 0) return -1;
        a->key_padding_mask = RP_U8(C->mask);
    }

    if (r->qr && r->qr != Py_None) {
        C->qr = rp_in_f32(r->qr, "qr");
        if (!C->qr) return -1;
        npy_intp d4[4] = {B, H, Tq, D};
        if (rp_check_shape(C->qr, "qr", 4, d4, "(B, H, Tq, D) like q") < 0) return -1;
        if (!r->relk || r->relk == Py_None) {
            PyErr_SetString(PyExc_ValueError, "qr was given but relk is None (qr is the query of the relk term)");
            return -1;
        }
        a->qr = RP_F32(C->qr);
    }

    if (r->relk && r->relk != Py_None) {
        C->relk = parse_table(r->relk, "relk", "(1|H, R, D)", H, D, "D", &a->Hrk, &a->relk_ix.R);
        if (!C->relk || parse_ix(r->relk_ix, "relk_ix", "relk", &a->relk_ix) < 0) return -1;
        a->relk = RP_F32(C->relk);
    } else if (check_absent_ix(r->relk_ix, "relk_ix", "relk") < 0) {
        return -1;
    }
    if (r->relq && r->relq != Py_None) {
        C->relq = parse_table(r->relq, "relq", "(1|H, R, D)", H, D, "D", &a->Hrq, &a->relq_ix.R);
        if (!C->relq || parse_ix(r->relq_ix, "relq_ix", "relq", &a->relq_ix) < 0) return -1;
        a->relq = RP_F32(C->relq);
    } else if (check_absent_ix(r->relq_ix, "relq_ix", "relq") < 0) {
        return -1;
    }
    if (r->relv && r->relv != Py_None) {
        C->relv = parse_table(r->relv, "relv", "(1|H, R, Dv)", H, Dv, "Dv", &a->Hrv, &a->relv_ix.R);
        if (!C->relv || parse_ix(r->relv_ix, "relv_ix", "relv", &a->relv_ix) < 0) return -1;
        a->relv = RP_F32(C->relv);
    } else if (check_absent_ix(r->relv_ix, "relv_ix", "relv") < 0) {
        return -1;
    }
    if (r->bias_vec && r->bias_vec != Py_None) {
        C->bias_vec = parse_table(r->bias_vec, "bias_vec", "(1|H, R)", H, -1, "", &a->Hb, &a->bias_ix.R);
        if (!C->bias_vec || parse_ix(r->bias_ix, "bias_ix", "bias_vec", &a->bias_ix) < 0) return -1;
        a->bias_vec = RP_F32(C->bias_vec);
    } else if (check_absent_ix(r->bias_ix, "bias_ix", "bias_vec") < 0) {
        return -1;
    }
    if (r->bias_full && r->bias_full != Py_None) {
        C->bias_full = rp_in_f32(r->bias_full, "bias_full");
        if (!C->bias_full) return -1;
        npy_intp d4[4] = {-1, H, Tq, Tk};
        if (rp_check_shape(C->bias_full, "bias_full", 4, d4, "(1|B, H, Tq, Tk)") < 0) return -1;
        if (RP_DIM(C->bias_full, 0) != 1 && RP_DIM(C->bias_full, 0) != B) {
            char got[128];
            rp_shape_str(C->bias_full, got, sizeof got);
            PyErr_Format(PyExc_ValueError, "bias_full must have a batch dim of 1 or B = %lld; got shape %s",
                         (long long)B, got);
            return -1;
        }
        a->Bf = RP_DIM(C->bias_full, 0);
        a->bias_full = RP_F32(C->bias_full);
    }
    return parse_pwl(r, C, Tq, H);
}

#define KW_COMMON                                                                                                     \
    "causal", "key_padding_mask", "q_offset", "scale", "qr", "relk", "relk_ix", "relq", "relq_ix", "relv", "relv_ix", \
        "bias_vec", "bias_ix", "bias_full", "pwl_u", "pwl_ix", "pwl_w", "pwl_bp", "pwl_slope", "pwl_icpt"
#define FMT_COMMON "pOLOOOOOOOOOOOOOOOOO"
#define PTR_COMMON(r)                                                                                              \
    &(r).causal, &(r).mask, &(r).q_offset, &(r).scale, &(r).qr, &(r).relk, &(r).relk_ix, &(r).relq, &(r).relq_ix,  \
        &(r).relv, &(r).relv_ix, &(r).bias_vec, &(r).bias_ix, &(r).bias_full, &(r).pwl_u, &(r).pwl_ix, &(r).pwl_w, \
        &(r).pwl_bp, &(r).pwl_slope, &(r).pwl_icpt

static void raw_defaults(raw_args *r) {
    memset(r, 0, sizeof *r);
    r->causal = 1;
}

static int rp_attn_parse_fwd(PyObject *args, PyObject *kw, const char *fname, int allow_weights, rp_attn_call *C) {
    raw_args r;
    raw_defaults(&r);
    memset(C, 0, sizeof *C);
    static char *kw_w[] = {"q", "k", "v", KW_COMMON, "return_weights", NULL};
    /* the fused path takes merged instead: out (B, Tq, H, Dv) */
    static char *kw_m[] = {"q", "k", "v", KW_COMMON, "merged", NULL};
    char fmt[64];
    snprintf(fmt, sizeof fmt, "OOO|$" FMT_COMMON "p:%s", fname);
    int ok = allow_weights
                 ? PyArg_ParseTupleAndKeywords(args, kw, fmt, kw_w, &r.q, &r.k, &r.v, PTR_COMMON(r), &r.return_weights)
                 : PyArg_ParseTupleAndKeywords(args, kw, fmt, kw_m, &r.q, &r.k, &r.v, PTR_COMMON(r), &r.merged);
    if (!ok) return -1;
    r.strided = !allow_weights; /* the fused path reads strided q, k, v in place */
    if (build_call(&r, C) < 0) goto fail;
    C->a.merged = r.merged;
    {
        const rp_attn *a = &C->a;
        npy_intp dout[4] = {a->B, a->H, a->Tq, a->Dv}, dl[3] = {a->B, a->H, a->Tq};
        if (a->merged) {
            dout[1] = a->Tq;
            dout[2] = a->H;
        }
        C->out = rp_new_f32(4, dout);
        C->lse = rp_new_f32(3, dl);
        if (!C->out || !C->lse) goto fail;
        C->return_weights = r.return_weights;
        if (r.return_weights) {
            npy_intp dp[4] = {a->B, a->H, a->Tq, a->Tk};
            C->probs = rp_new_f32(4, dp);
            if (!C->probs) goto fail;
        }
    }
    return 0;
fail:
    rp_attn_call_free(C);
    return -1;
}

static const char *GRAD_NAMES[] = {"q",        "k",         "v",     "qr",    "relk",      "relq",    "relv",
                                   "bias_vec", "bias_full", "pwl_u", "pwl_w", "pwl_slope", "pwl_icpt"};
#define N_GRADS 13

static PyArrayObject **grad_slot(rp_attn_call *C, int i) {
    PyArrayObject **s[N_GRADS] = {&C->dq,     &C->dk,         &C->dv,        &C->dqr,        &C->drelk,
                                  &C->drelq,  &C->drelv,      &C->dbias_vec, &C->dbias_full, &C->dpwl_u,
                                  &C->dpwl_w, &C->dpwl_slope, &C->dpwl_icpt};
    return s[i];
}

static PyArrayObject *grad_input(rp_attn_call *C, int i) {
    PyArrayObject *s[N_GRADS] = {C->q,        C->k,         C->v,     C->qr,    C->relk,      C->relq,    C->relv,
                                 C->bias_vec, C->bias_full, C->pwl_u, C->pwl_w, C->pwl_slope, C->pwl_icpt};
    return s[i];
}

/* allow_merged: the fused path's merged keyword (out and dout (B, Tq, H, Dv)). */
static int rp_attn_parse_bwd(PyObject *args, PyObject *kw, const char *fname, int allow_merged, rp_attn_call *C) {
    raw_args r;
    raw_defaults(&r);
    memset(C, 0, sizeof *C);
    static char *kwl[] = {"q", "k", "v", "out", "lse", "dout", KW_COMMON, "needs", NULL};
    static char *kwl_m[] = {"q", "k", "v", "out", "lse", "dout", KW_COMMON, "needs", "merged", "packed_grads", NULL};
    char fmt[64];
    snprintf(fmt, sizeof fmt, "OOOOOO|$" FMT_COMMON "O%s:%s", allow_merged ? "pp" : "", fname);
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, allow_merged ? kwl_m : kwl, &r.q, &r.k, &r.v, &r.out, &r.lse,
                                     &r.dout, PTR_COMMON(r), &r.needs, &r.merged, &r.packed_grads))
        return -1;
    r.strided = allow_merged; /* the fused path */
    if (build_call(&r, C) < 0) goto fail;
    C->a.merged = r.merged;
    const rp_attn *a = &C->a;
    {
        npy_intp d4[4] = {a->B, a->H, a->Tq, a->Dv}, d3[3] = {a->B, a->H, a->Tq};
        const char *o_desc = "(B, H, Tq, Dv)";
        if (a->merged) {
            d4[1] = a->Tq;
            d4[2] = a->H;
            o_desc = "(B, Tq, H, Dv) (merged=True)";
        }
        C->out = rp_in_f32(r.out, "out");
        if (!C->out || rp_check_shape(C->out, "out", 4, d4, o_desc) < 0) goto fail;
        C->lse = rp_in_f32(r.lse, "lse");
        if (!C->lse || rp_check_shape(C->lse, "lse", 3, d3, "(B, H, Tq)") < 0) goto fail;
        C->dout = rp_in_f32(r.dout, "dout");
        if (!C->dout || rp_check_shape(C->dout, "dout", 4, d4, o_desc) < 0) goto fail;
    }
    int want[N_GRADS] = {0};
    if (r.needs == NULL || r.needs == Py_None) {
        for (int i = 0; i < N_GRADS; i++) want[i] = grad_input(C, i) != NULL;
    } else {
        if (PyUnicode_Check(r.needs)) {
            PyErr_Format(PyExc_TypeError, "needs must be a sequence of names like (\"q\", \"k\"); got a str %R",
                         r.needs);
            goto fail;
        }
        PyObject *seq = PySequence_Fast(r.needs, "needs must be a sequence of names (str)");
        if (!seq) goto fail;
        for (Py_ssize_t n = 0; n < PySequence_Fast_GET_SIZE(seq); n++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, n);
            const char *s = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
            if (!s) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_TypeError, "needs items must be str; got %s", Py_TYPE(item)->tp_name);
                Py_DECREF(seq);
                goto fail;
            }
            int found = -1;
            for (int i = 0; i < N_GRADS; i++)
                if (strcmp(s, GRAD_NAMES[i]) == 0) found = i;
            if (found < 0) {
                PyErr_Format(PyExc_ValueError,
                             "needs: unknown name %R; expected some of q, k, v, qr, relk, relq, "
                             "relv, bias_vec, bias_full, pwl_u, pwl_w, pwl_slope, pwl_icpt",
                             item);
                Py_DECREF(seq);
                goto fail;
            }
            if (!grad_input(C, found)) {
                PyErr_Format(PyExc_ValueError, "needs asks for the gradient of %s but %s is None", s, s);
                Py_DECREF(seq);
                goto fail;
            }
            want[found] = 1;
        }
        Py_DECREF(seq);
    }
    if (r.packed_grads) {
        /* dq, dk, dv written into the thirds of one (B, Tq, 3, H, D) block */
        if (!want[0] || !want[1] || !want[2]) {
            PyErr_SetString(PyExc_ValueError, "packed_grads=True needs the gradients of q, k and v (all three)");
            goto fail;
        }
        if (a->Tk != a->Tq || a->Dv != a->D) {
            PyErr_Format(PyExc_ValueError,
                         "packed_grads=True needs k and v shaped like q (Tk = Tq, Dv = D); got Tq %lld, Tk %lld, "
                         "D %lld, Dv %lld",
                         (long long)a->Tq, (long long)a->Tk, (long long)a->D, (long long)a->Dv);
            goto fail;
        }
        npy_intp d5[5] = {a->B, a->Tq, 3, a->H, a->D};
        C->dqkv = rp_empty_f32(5, d5); /* every row is written (zeroed first by the kernel) */
        if (!C->dqkv) goto fail;
        want[0] = want[1] = want[2] = 0;
        const rp_attn_rows rw = {a->Tq * 3 * a->H * a->D, a->D, 3 * a->H * a->D};
        C->g.dq_rows = C->g.dk_rows = C->g.dv_rows = rw;
    }
    for (int i = 0; i < N_GRADS; i++) {
        if (!want[i]) continue;
        PyArrayObject *in = grad_input(C, i);
        PyArrayObject *gr = rp_new_f32(PyArray_NDIM(in), PyArray_DIMS(in));
        if (!gr) goto fail;
        *grad_slot(C, i) = gr;
    }
    if (C->dqkv) {
        float *base = RP_F32(C->dqkv);
        C->g.dq = base;
        C->g.dk = base + a->H * a->D;
        C->g.dv = base + 2 * a->H * a->D;
    } else {
        C->g.dq = C->dq ? RP_F32(C->dq) : NULL;
        C->g.dk = C->dk ? RP_F32(C->dk) : NULL;
        C->g.dv = C->dv ? RP_F32(C->dv) : NULL;
    }
    C->g.dqr = C->dqr ? RP_F32(C->dqr) : NULL;
    C->g.drelk = C->drelk ? RP_F32(C->drelk) : NULL;
    C->g.drelq = C->drelq ? RP_F32(C->drelq) : NULL;
    C->g.drelv = C->drelv ? RP_F32(C->drelv) : NULL;
    C->g.dbias_vec = C->dbias_vec ? RP_F32(C->dbias_vec) : NULL;
    C->g.dbias_full = C->dbias_full ? RP_F32(C->dbias_full) : NULL;
    C->g.dpwl_u = C->dpwl_u ? RP_F32(C->dpwl_u) : NULL;
    C->g.dpwl_w = C->dpwl_w ? RP_F32(C->dpwl_w) : NULL;
    C->g.dpwl_slope = C->dpwl_slope ? RP_F32(C->dpwl_slope) : NULL;
    C->g.dpwl_icpt = C->dpwl_icpt ? RP_F32(C->dpwl_icpt) : NULL;
    return 0;
fail:
    rp_attn_call_free(C);
    return -1;
}

static PyObject *rp_attn_finish_fwd(rp_attn_call *C, int rc, const char *fname) {
    PyObject *res = NULL;
    if (rc < 0) {
        rp_raise_code(rc, fname);
    } else if (C->probs) {
        res = PyTuple_Pack(3, (PyObject *)C->out, (PyObject *)C->lse, (PyObject *)C->probs);
    } else {
        res = PyTuple_Pack(2, (PyObject *)C->out, (PyObject *)C->lse);
    }
    rp_attn_call_free(C);
    return res;
}

static PyObject *rp_attn_finish_bwd(rp_attn_call *C, int rc, const char *fname) {
    PyObject *res = NULL;
    if (rc < 0) {
        rp_raise_code(rc, fname);
        goto done;
    }
    res = PyDict_New();
    if (!res) goto done;
    for (int i = 0; i < N_GRADS; i++) {
        PyArrayObject *gr = *grad_slot(C, i);
        if (gr && PyDict_SetItemString(res, GRAD_NAMES[i], (PyObject *)gr) < 0) {
            Py_CLEAR(res);
            goto done;
        }
    }
    if (C->dqkv && PyDict_SetItemString(res, "qkv", (PyObject *)C->dqkv) < 0) Py_CLEAR(res);
done:
    rp_attn_call_free(C);
    return res;
}

/* ---- materialised kernel ------------------------------------------------ */

static PyObject *py_attention_mat_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    rp_attn_call C;
    if (rp_attn_parse_fwd(args, kw, "attention_mat_fwd", 1, &C) < 0) return NULL;
    int rc;
    float *probs = C.probs ? RP_F32(C.probs) : NULL;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_attn_mat_fwd(&C.a, RP_F32(C.out), RP_F32(C.lse), probs);
    Py_END_ALLOW_THREADS
    return rp_attn_finish_fwd(&C, rc, "attention_mat_fwd");
}

static PyObject *py_attention_mat_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    rp_attn_call C;
    if (rp_attn_parse_bwd(args, kw, "attention_mat_bwd", 0, &C) < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_attn_mat_bwd(&C.a, RP_F32(C.out), RP_F32(C.lse), RP_F32(C.dout), &C.g);
    Py_END_ALLOW_THREADS
    return rp_attn_finish_bwd(&C, rc, "attention_mat_bwd");
}

/* ---- fused kernel -------------------------------------------------------- */

static PyObject *py_attention_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    rp_attn_call C;
    if (rp_attn_parse_fwd(args, kw, "attention_fwd", 0, &C) < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_attn_fused_fwd(&C.a, RP_F32(C.out), RP_F32(C.lse));
    Py_END_ALLOW_THREADS
    return rp_attn_finish_fwd(&C, rc, "attention_fwd");
}

static PyObject *py_attention_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    rp_attn_call C;
    if (rp_attn_parse_bwd(args, kw, "attention_bwd", 1, &C) < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_attn_fused_bwd(&C.a, RP_F32(C.out), RP_F32(C.lse), RP_F32(C.dout), &C.g);
    Py_END_ALLOW_THREADS
    return rp_attn_finish_bwd(&C, rc, "attention_bwd");
}

PyMethodDef rp_methods_attn[] = {
    {"attention_mat_fwd", (PyCFunction)(void (*)(void))py_attention_mat_fwd, METH_VARARGS | METH_KEYWORDS,
     "attention_mat_fwd(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None, qr=None,\n"
     "    relk=None, relk_ix=None, relq=None, relq_ix=None, relv=None, relv_ix=None, bias_vec=None,\n"
     "    bias_ix=None, bias_full=None, pwl_u=None, pwl_ix=None, pwl_w=None, pwl_bp=None, pwl_slope=None,\n"
     "    pwl_icpt=None, return_weights=False) -> (out, lse) or (out, lse, probs)\n\n"
     "Materialised attention with all four channels (see csrc/core/attention.h).\n"
     "q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) float32; out (B, H, Tq, Dv), lse (B, H, Tq),\n"
     "probs (B, H, Tq, Tk)."},
    {"attention_mat_bwd", (PyCFunction)(void (*)(void))py_attention_mat_bwd, METH_VARARGS | METH_KEYWORDS,
     "attention_mat_bwd(q, k, v, out, lse, dout, *, <keywords of attention_mat_fwd but return_weights>,\n"
     "    needs=None) -> dict\n\n"
     "Gradients of the materialised attention, keyed by input name (q, k, v, qr, relk, relq, relv,\n"
     "bias_vec, bias_full, pwl_u, pwl_w, pwl_slope, pwl_icpt); needs lists the names wanted (None: every\n"
     "tensor given)."},
    {"attention_fwd", (PyCFunction)(void (*)(void))py_attention_fwd, METH_VARARGS | METH_KEYWORDS,
     "attention_fwd(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None, qr=None,\n"
     "    relk=None, relk_ix=None, relq=None, relq_ix=None, relv=None, relv_ix=None, bias_vec=None,\n"
     "    bias_ix=None, bias_full=None, pwl_u=None, pwl_ix=None, pwl_w=None, pwl_bp=None, pwl_slope=None,\n"
     "    pwl_icpt=None, merged=False) -> (out, lse)\n\n"
     "Fused (FlashAttention-2 style) attention with all four channels (see csrc/core/attention.h);\n"
     "extra memory O(T*D), never O(Tq*Tk). q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv)\n"
     "float32; out (B, H, Tq, Dv), or (B, Tq, H, Dv) with merged=True (the heads merged, as an output\n"
     "projection reads them; the same values); lse (B, H, Tq) (-inf on fully masked rows, whose out is 0).\n"
     "q, k, v may be strided views (D floats contiguous, strides >= 0), e.g. of one (B, T, 3, H, D)\n"
     "projection: they are read in place, not copied."},
    {"attention_bwd", (PyCFunction)(void (*)(void))py_attention_bwd, METH_VARARGS | METH_KEYWORDS,
     "attention_bwd(q, k, v, out, lse, dout, *, <keywords of attention_fwd>, needs=None) -> dict\n\n"
     "Gradients of the fused attention from out and lse of attention_fwd, keyed by input name\n"
     "(q, k, v, qr, relk, relq, relv, bias_vec, bias_full, pwl_u, pwl_w, pwl_slope, pwl_icpt); needs\n"
     "lists the names wanted (None: every tensor given). merged=True: out and dout are (B, Tq, H, Dv),\n"
     "as attention_fwd(merged=True) gave out. packed_grads=True (q, k, v all needed, Tk = Tq, Dv = D):\n"
     "their gradients come in one array \"qkv\" (B, Tq, 3, H, D), the layout of a fused q/k/v projection,\n"
     "instead of \"q\", \"k\", \"v\" (the same values). Bit-identical for any thread count."},
    {NULL, NULL, 0, NULL},
};
