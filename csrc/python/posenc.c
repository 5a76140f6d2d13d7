/* Bridge for the posenc area (channels A and R): parse, validate, release the
 * GIL, call the core in rotary.c / absolute.c. */
#include "bridge.h"
#include "core/posenc.h"

#include <math.h>
#include <string.h>

/* float64 ndarray (any real float dtype converted) or NULL with TypeError naming it */
static PyArrayObject *in_f64(PyObject *obj, const char *name) {
    if (obj == NULL || !PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of floats; got %s", name,
                     obj ? Py_TYPE(obj)->tp_name : "NULL");
        return NULL;
    }
    if (!PyTypeNum_ISFLOAT(PyArray_TYPE((PyArrayObject *)obj))) {
        PyErr_Format(PyExc_TypeError, "%s must have a float dtype (float64 preferred); got %s", name,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return NULL;
    }
    PyArrayObject *r = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (r == NULL && (PyErr_ExceptionMatches(PyExc_MemoryError) || PyErr_ExceptionMatches(PyExc_ValueError))) {
        char got[256];
        rp_shape_str((PyArrayObject *)obj, got, sizeof got);
        PyErr_Clear();
        PyErr_Format(PyExc_MemoryError, "%s: cannot allocate a contiguous copy of an array of shape %s", name, got);
    }
    return r;
}

/* Positions offset + t are int64: keep them far from overflow. */
static int check_offset(long long offset) {
    if (offset < -(1LL << 60) || offset > (1LL << 60)) {
        PyErr_Format(PyExc_ValueError, "offset must be in [-2**60, 2**60]; got %lld", offset);
        return -1;
    }
    return 0;
}

static int parse_rope_layout(const char *s, int *layout) {
    if (strcmp(s, "interleaved") == 0)
        *layout = RP_ROPE_INTERLEAVED;
    else if (strcmp(s, "half") == 0)
        *layout = RP_ROPE_HALF;
    else {
        PyErr_Format(PyExc_ValueError, "layout must be 'interleaved' or 'half'; got '%s'", s);
        return -1;
    }
    return 0;
}

static int parse_sin_layout(const char *s, int *layout) {
    if (strcmp(s, "interleaved") == 0)
        *layout = RP_SIN_INTERLEAVED;
    else if (strcmp(s, "concat") == 0)
        *layout = RP_SIN_CONCAT;
    else {
        PyErr_Format(PyExc_ValueError, "layout must be 'interleaved' or 'concat'; got '%s'", s);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- RoPE tables */

static PyObject *py_rope_tables(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"inv_freq", "T", "offset", "pos_scale", NULL};
    PyObject *inv_obj;
    long long T, offset = 0;
    double pos_scale = 1.0;
    PyArrayObject *inv = NULL, *c = NULL, *s = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|$Ld:rope_tables", kwlist, &inv_obj, &T, &offset, &pos_scale))
        return NULL;
    if (check_offset(offset) < 0) return NULL;
    if (rp_check_nonneg(T, "T") < 0) return NULL;
    if (!isfinite(pos_scale) || pos_scale <= 0.0) {
        rp_raise_float("pos_scale must be a finite number > 0", pos_scale);
        return NULL;
    }
    if (!(inv = in_f64(inv_obj, "inv_freq"))) goto fail;
    if (rp_check_ndim(inv, "inv_freq", 1, "(P,)") < 0) goto fail;
    int64_t P = RP_DIM(inv, 0);
    npy_intp dims[2] = {(npy_intp)T, (npy_intp)P};
    if (!(c = rp_new_f32(2, dims)) || !(s = rp_new_f32(2, dims))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_posenc_rope_tables((const double *)PyArray_DATA(inv), P, T, offset, pos_scale, RP_F32(c), RP_F32(s));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "rope_tables");
        goto fail;
    }
    Py_DECREF(inv);
    return Py_BuildValue("NN", c, s);
fail:
    Py_XDECREF(inv);
    Py_XDECREF(c);
    Py_XDECREF(s);
    return NULL;
}

static PyObject *py_xpos_scale(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"n_pairs", "T", "offset", "center", "scale_base", "gamma", "inverse", NULL};
    long long P, T, offset = 0;
    double center = 0.0, scale_base = 512.0, gamma = 0.4;
    int inverse = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL|$Ldddp:xpos_scale", kwlist, &P, &T, &offset, &center, &scale_base,
                                     &gamma, &inverse))
        return NULL;
    if (check_offset(offset) < 0) return NULL;
    if (rp_check_nonneg(P, "n_pairs") < 0 || rp_check_nonneg(T, "T") < 0) return NULL;
    if (!isfinite(scale_base) || scale_base <= 0.0) {
        rp_raise_float("scale_base must be a finite number > 0", scale_base);
        return NULL;
    }
    if (!isfinite(gamma) || gamma <= 0.0) {
        rp_raise_float("gamma must be a finite number > 0", gamma);
        return NULL;
    }
    if (!isfinite(center)) {
        rp_raise_float("center must be finite", center);
        return NULL;
    }
    npy_intp dims[2] = {(npy_intp)T, (npy_intp)P};
    PyArrayObject *out = rp_new_f32(2, dims);
    if (!out) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_posenc_xpos_scale(P, T, offset, center, scale_base, gamma, inverse ? -1 : 1, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        Py_DECREF(out);
        return rp_raise_code(rc, "xpos_scale");
    }
    return (PyObject *)out;
}

/* ---------------------------------------------------------- rotary transform */

static PyObject *rotary_common(PyObject *args, PyObject *kw, int backward) {
    const char *fname = backward ? "rotary_bwd" : "rotary_fwd";
    const char *xname = backward ? "grad" : "x";
    PyObject *rd_obj = Py_None, *out_obj = Py_None;
    const char *layout_s = "interleaved";
    PyArrayObject *x = NULL, *c = NULL, *s = NULL, *sc = NULL, *out = NULL;
    int layout;
    char got[256];
    rp_arg spec[] = {RP_ARG_F32(xname, &x, -1, NULL),
                     RP_ARG_F32("cos", &c, -1, NULL),
                     RP_ARG_F32("sin", &s, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("rotary_dim", &rd_obj),
                     RP_ARG_STR("layout", &layout_s),
                     RP_ARG_F32_OPT("scale", &sc, -1, NULL),
                     RP_ARG_OBJ("out", &out_obj),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, fname, spec) < 0) return NULL;
    if (parse_rope_layout(layout_s, &layout) < 0) goto fail;
    if (PyArray_NDIM(x) < 2) {
        rp_shape_str(x, got, sizeof got);
        PyErr_Format(PyExc_ValueError, "%s must have shape (..., T, D), e.g. (B, H, T, D); got %s", xname, got);
        goto fail;
    }
    int nd = PyArray_NDIM(x);
    int64_t T = RP_DIM(x, nd - 2), D = RP_DIM(x, nd - 1);
    int64_t N = 1;
    for (int i = 0; i < nd - 2; i++) N *= RP_DIM(x, i);
    if (rp_check_ndim(c, "cos", 2, "(T, rotary_dim/2)") < 0) goto fail;
    int64_t P = RP_DIM(c, 1);
    int64_t rotary_dim = 2 * P;
    if (rd_obj != Py_None) {
        if (!PyLong_Check(rd_obj) || PyBool_Check(rd_obj)) {
            PyErr_Format(PyExc_TypeError, "rotary_dim must be an int or None; got %s", Py_TYPE(rd_obj)->tp_name);
            goto fail;
        }
        long long rd = PyLong_AsLongLong(rd_obj);
        if (rd == -1 && PyErr_Occurred()) goto fail;
        if (rd < 0 || rd % 2) {
            PyErr_Format(PyExc_ValueError, "rotary_dim must be even and >= 0 (channels rotate in pairs); got %lld", rd);
            goto fail;
        }
        if (rd != rotary_dim) {
            rp_shape_str(c, got, sizeof got);
            PyErr_Format(PyExc_ValueError, "cos must have shape (T, rotary_dim/2) = (%lld, %lld); got %s", (long long)T,
                         rd / 2, got);
            goto fail;
        }
    }
    if (rotary_dim > D) {
        PyErr_Format(PyExc_ValueError, "rotary_dim (%lld) must be <= the head dim D of %s (%lld)",
                     (long long)rotary_dim, xname, (long long)D);
        goto fail;
    }
    npy_intp tdims[2] = {(npy_intp)T, (npy_intp)P};
    if (rp_check_shape(c, "cos", 2, tdims, "(T, rotary_dim/2) with T the rows of x") < 0) goto fail;
    if (rp_check_shape(s, "sin", 2, tdims, "(T, rotary_dim/2), the shape of cos") < 0) goto fail;
    if (sc && rp_check_shape(sc, "scale", 2, tdims, "(T, rotary_dim/2), the shape of cos") < 0) goto fail;
    if (!(out = rp_out_f32(out_obj, "out", nd, PyArray_DIMS(x)))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        if (backward)
            rc = rp_posenc_rotary_bwd(RP_F32(x), RP_F32(c), RP_F32(s), sc ? RP_F32(sc) : NULL, RP_F32(out), N, T, D,
                                      rotary_dim, layout);
        else
            rc = rp_posenc_rotary_fwd(RP_F32(x), RP_F32(c), RP_F32(s), sc ? RP_F32(sc) : NULL, RP_F32(out), N, T, D,
                                      rotary_dim, layout);
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, fname);
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_rotary_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return rotary_common(args, kw, 0);
}

static PyObject *py_rotary_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return rotary_common(args, kw, 1);
}

/* ------------------------------------------------------------ sinusoidal */

static PyObject *py_sinusoidal_table(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"T", "d_model", "offset", "layout", "base", "positions", NULL};
    long long T, d_model, offset = 0;
    const char *layout_s = "interleaved";
    double base = 10000.0;
    PyObject *pos_obj = Py_None;
    PyArrayObject *pos = NULL, *out = NULL;
    int layout;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL|$LsdO:sinusoidal_table", kwlist, &T, &d_model, &offset, &layout_s,
                                     &base, &pos_obj))
        return NULL;
    if (check_offset(offset) < 0) return NULL;
    if (rp_check_nonneg(T, "T") < 0 || rp_check_nonneg(d_model, "d_model") < 0) return NULL;
    if (d_model % 2) {
        PyErr_Format(PyExc_ValueError, "d_model must be even (sin/cos pairs); got %lld", d_model);
        return NULL;
    }
    if (!isfinite(base) || base <= 0.0) {
        rp_raise_float("base must be a finite number > 0", base);
        return NULL;
    }
    if (parse_sin_layout(layout_s, &layout) < 0) return NULL;
    if (pos_obj != Py_None) {
        if (!(pos = rp_in_i64(pos_obj, "positions"))) goto fail;
        npy_intp pd[1] = {(npy_intp)T};
        if (rp_check_shape(pos, "positions", 1, pd, "(T,)") < 0) goto fail;
    }
    npy_intp dims[2] = {(npy_intp)T, (npy_intp)d_model};
    if (!(out = rp_new_f32(2, dims))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_posenc_sinusoidal_table(pos ? RP_I64(pos) : NULL, T, offset, d_model, base, layout, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "sinusoidal_table");
        goto fail;
    }
    Py_XDECREF(pos);
    return (PyObject *)out;
fail:
    Py_XDECREF(pos);
    Py_XDECREF(out);
    return NULL;
}

/* ------------------------------------------------------ complex word order */

/* Shared checks of the converted inputs: ids (..., T), positions (T,), r, omega,
 * theta (V, d) of one shape; every id in [0, V). Fills the sizes. */
static int complex_inputs(PyArrayObject *ids, PyArrayObject *r, PyArrayObject *om, PyArrayObject *th,
                          PyArrayObject *pos, int64_t *N, int64_t *T, int64_t *V, int64_t *d) {
    char got[256];
    if (PyArray_NDIM(ids) < 1) {
        PyErr_SetString(PyExc_ValueError, "ids must have shape (B, T) or (T,); got a 0-d array");
        return -1;
    }
    npy_intp vd[2] = {PyArray_DIM(r, 0), PyArray_DIM(r, 1)};
    if (rp_check_shape(om, "omega", 2, vd, "(vocab_size, d), the shape of r") < 0) return -1;
    if (rp_check_shape(th, "theta", 2, vd, "(vocab_size, d), the shape of r") < 0) return -1;
    int nd = PyArray_NDIM(ids);
    *T = RP_DIM(ids, nd - 1);
    *N = (int64_t)PyArray_SIZE(ids);
    *V = vd[0];
    *d = vd[1];
    if (PyArray_NDIM(pos) != 1 || RP_DIM(pos, 0) != *T) {
        rp_shape_str(pos, got, sizeof got);
        PyErr_Format(PyExc_ValueError, "positions must have shape (T,) = (%lld,) with T the last dim of ids; got %s",
                     (long long)*T, got);
        return -1;
    }
    const int64_t *id = RP_I64(ids);
    for (int64_t n = 0; n < *N; n++) {
        if (id[n] < 0 || id[n] >= *V) {
            PyErr_Format(PyExc_IndexError,
                         "ids contains %lld at flat index %lld; token ids must be in [0, vocab_size) "
                         "with vocab_size = %lld (the rows of r)",
                         (long long)id[n], (long long)n, (long long)*V);
            return -1;
        }
    }
    return 0;
}

#define COMPLEX_SPEC                                                                                                  \
    RP_ARG_I64("ids", &ids, -1, NULL), RP_ARG_F32("r", &r, 2, "(vocab_size, d)"), RP_ARG_F32("omega", &om, -1, NULL), \
        RP_ARG_F32("theta", &th, -1, NULL), RP_ARG_I64("positions", &pos, -1, NULL)

static PyObject *py_complex_embed_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_obj = Py_None;
    PyArrayObject *ids = NULL, *r = NULL, *om = NULL, *th = NULL, *pos = NULL, *out = NULL;
    int64_t N, T, V, d;
    rp_arg spec[] = {COMPLEX_SPEC, RP_ARG_OPTIONAL, RP_ARG_KWONLY, RP_ARG_OBJ("out", &out_obj), RP_ARG_END};
    if (rp_args_parse(args, kw, "complex_embed_fwd", spec) < 0) return NULL;
    if (complex_inputs(ids, r, om, th, pos, &N, &T, &V, &d) < 0) goto fail;
    int nd = PyArray_NDIM(ids);
    npy_intp dims[NPY_MAXDIMS];
    for (int i = 0; i < nd; i++) dims[i] = PyArray_DIM(ids, i);
    dims[nd] = (npy_intp)(2 * d);
    if (!(out = rp_out_f32(out_obj, "out", nd + 1, dims))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc =
            rp_posenc_complex_fwd(RP_I64(ids), RP_I64(pos), N, T, RP_F32(r), RP_F32(om), RP_F32(th), V, d, RP_F32(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "complex_embed_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_complex_embed_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyArrayObject *ids = NULL, *r = NULL, *om = NULL, *th = NULL, *pos = NULL, *g = NULL;
    PyArrayObject *dr = NULL, *dom = NULL, *dth = NULL;
    int64_t N, T, V, d;
    rp_arg spec[] = {COMPLEX_SPEC, RP_ARG_F32("grad", &g, -1, NULL), RP_ARG_END};
    if (rp_args_parse(args, kw, "complex_embed_bwd", spec) < 0) return NULL;
    if (complex_inputs(ids, r, om, th, pos, &N, &T, &V, &d) < 0) goto fail;
    int nd = PyArray_NDIM(ids);
    npy_intp dims[NPY_MAXDIMS];
    for (int i = 0; i < nd; i++) dims[i] = PyArray_DIM(ids, i);
    dims[nd] = (npy_intp)(2 * d);
    if (rp_check_shape(g, "grad", nd + 1, dims, "ids.shape + (2*d,)") < 0) goto fail;
    npy_intp vd[2] = {(npy_intp)V, (npy_intp)d};
    if (!(dr = rp_new_f32(2, vd)) || !(dom = rp_new_f32(2, vd)) || !(dth = rp_new_f32(2, vd))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_posenc_complex_bwd(RP_I64(ids), RP_I64(pos), N, T, RP_F32(r), RP_F32(om), RP_F32(th), V, d, RP_F32(g),
                                   RP_F32(dr), RP_F32(dom), RP_F32(dth));
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "complex_embed_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NNN", dr, dom, dth);
fail:
    rp_args_release(spec);
    Py_XDECREF(dr);
    Py_XDECREF(dom);
    Py_XDECREF(dth);
    return NULL;
}

PyMethodDef rp_methods_posenc[] = {
    {"rope_tables", (PyCFunction)(void (*)(void))py_rope_tables, METH_VARARGS | METH_KEYWORDS,
     "rope_tables(inv_freq, T, *, offset=0, pos_scale=1.0) -> (cos, sin)\n\n"
     "inv_freq (P,) float64; cos, sin (T, P) float32 of the angle (offset + t) * pos_scale * inv_freq[k],\n"
     "computed in float64."},
    {"xpos_scale", (PyCFunction)(void (*)(void))py_xpos_scale, METH_VARARGS | METH_KEYWORDS,
     "xpos_scale(n_pairs, T, *, offset=0, center=0.0, scale_base=512.0, gamma=0.4, inverse=False) -> (T, n_pairs)\n\n"
     "zeta_k^((offset + t - center) / scale_base) (inverse: the reciprocal), zeta_k = (2k/(2 n_pairs) + gamma)/(1 + "
     "gamma);\n"
     "the log is clamped to [-80, 80] so the result is always finite."},
    {"rotary_fwd", (PyCFunction)(void (*)(void))py_rotary_fwd, METH_VARARGS | METH_KEYWORDS,
     "rotary_fwd(x, cos, sin, *, rotary_dim=None, layout='interleaved', scale=None, out=None) -> y\n\n"
     "x (..., T, D) float32; cos, sin, scale (T, rotary_dim/2). Rotates the first rotary_dim channels in pairs\n"
     "(interleaved: (2k, 2k+1); half: (k, k + rotary_dim/2)), times scale; the rest pass through. out may be x."},
    {"rotary_bwd", (PyCFunction)(void (*)(void))py_rotary_bwd, METH_VARARGS | METH_KEYWORDS,
     "rotary_bwd(grad, cos, sin, *, rotary_dim=None, layout='interleaved', scale=None, out=None) -> dx\n\n"
     "The transpose of rotary_fwd: rotation by -angle, times scale."},
    {"sinusoidal_table", (PyCFunction)(void (*)(void))py_sinusoidal_table, METH_VARARGS | METH_KEYWORDS,
     "sinusoidal_table(T, d_model, *, offset=0, layout='interleaved', base=10000.0, positions=None) -> (T, d_model)\n\n"
     "Vaswani et al.: sin/cos of position * base^(-2k/d_model); layout 'interleaved' or 'concat'."},
    {"complex_embed_fwd", (PyCFunction)(void (*)(void))py_complex_embed_fwd, METH_VARARGS | METH_KEYWORDS,
     "complex_embed_fwd(ids, r, omega, theta, positions, *, out=None) -> ids.shape + (2d,)\n\n"
     "Wang et al. 2020: [r cos(omega pos + theta) | r sin(omega pos + theta)] per token; ids (..., T) ints,\n"
     "r, omega, theta (vocab_size, d) float32, positions (T,) ints."},
    {"complex_embed_bwd", (PyCFunction)(void (*)(void))py_complex_embed_bwd, METH_VARARGS | METH_KEYWORDS,
     "complex_embed_bwd(ids, r, omega, theta, positions, grad) -> (dr, domega, dtheta)\n\n"
     "grad ids.shape + (2d,); gradients (vocab_size, d), deterministic for any thread count."},
    {NULL, NULL, 0, NULL},
};
