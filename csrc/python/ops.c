/* Bridge for the ops area: parse, validate, release the GIL, call the core.
 * Tensors are float32 with any leading axes; "rows" are the leading axes
 * flattened, the last axis is the row length. */
#include "bridge.h"
#include "core/ops.h"
#include "core/simd_math.h"

#include <math.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

/* N = product of the leading axes, D = the last axis (x must have ndim >= 1). */
static int as_rows(PyArrayObject *x, const char *name, int64_t *N, int64_t *D) {
    if (PyArray_NDIM(x) < 1) {
        PyErr_Format(PyExc_ValueError, "%s must have at least 1 dimension (..., D); got a 0-d array", name);
        return -1;
    }
    int nd = PyArray_NDIM(x);
    int64_t n = 1;
    for (int i = 0; i < nd - 1; i++) n *= (int64_t)PyArray_DIM(x, i);
    *N = n;
    *D = (int64_t)PyArray_DIM(x, nd - 1);
    return 0;
}

static int same_shape(PyArrayObject *a, PyArrayObject *b) {
    return PyArray_NDIM(a) == PyArray_NDIM(b) &&
           PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), PyArray_NDIM(a));
}

static int check_same_shape(PyArrayObject *a, const char *an, PyArrayObject *b, const char *bn) {
    if (same_shape(a, b)) return 0;
    char sa[256], sb[256];
    rp_shape_str(a, sa, sizeof sa);
    rp_shape_str(b, sb, sizeof sb);
    PyErr_Format(PyExc_ValueError, "%s must have the shape of %s %s; got %s", bn, an, sa, sb);
    return -1;
}

/* a weight-like vector of shape (D,) */
static int check_vec(PyArrayObject *v, const char *name, int64_t D) {
    npy_intp dims[1] = {(npy_intp)D};
    return rp_check_shape(v, name, 1, dims, "(D,)");
}

/* seed: any integer (int, numpy integer) in [0, 2**64); bools rejected. */
static int parse_seed(PyObject *obj, uint64_t *seed) {
    PyObject *i = PyBool_Check(obj) ? NULL : PyNumber_Index(obj);
    if (!i) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "seed must be an int in [0, 2**64); got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(i);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "seed must be an int in [0, 2**64); got %S", i);
        Py_DECREF(i);
        return -1;
    }
    Py_DECREF(i);
    *seed = (uint64_t)v;
    return 0;
}

static int check_p(double p) {
    if (!(p >= 0.0 && p < 1.0)) {
        rp_raise_float("p must be in [0, 1)", p);
        return -1;
    }
    return 0;
}

/* `out` may be exactly one of the inputs (in place) but must not partly
 * overlap one: the kernels read an element before writing the same element,
 * not others. */
static int check_overlap(PyArrayObject *out, PyArrayObject *in, const char *in_name, int exact_ok) {
    if (!out || !in) return 0;
    const char *o0 = PyArray_BYTES(out), *o1 = o0 + PyArray_NBYTES(out);
    const char *i0 = PyArray_BYTES(in), *i1 = i0 + PyArray_NBYTES(in);
    if (o0 >= i1 || i0 >= o1 || PyArray_NBYTES(out) == 0 || PyArray_NBYTES(in) == 0) return 0;
    if (exact_ok && o0 == i0 && o1 == i1) return 0;
    PyErr_Format(PyExc_ValueError,
                 exact_ok ? "out must be %s itself or not overlap it; got an overlapping array"
                          : "out must not overlap %s",
                 in_name);
    return -1;
}

/* Like rp_out_f32, but a new array is left uninitialised: for outputs the
 * kernel writes in full (saves a zero-filling pass). */
static PyArrayObject *out_f32(PyObject *obj, const char *name, int ndim, const npy_intp *dims) {
    if (obj == NULL || obj == Py_None) return rp_empty_f32(ndim, dims);
    return rp_out_f32(obj, name, ndim, dims);
}

static PyArrayObject *new_f32(int ndim, const npy_intp *dims) { return out_f32(NULL, NULL, ndim, dims); }

/* ---- elementwise binary ------------------------------------------------- */

static int parse_op(const char *s, int *op) {
    static const char *names[] = {"add", "sub", "mul", "div", "rsub", "rdiv"};
    for (int i = 0; i < 6; i++)
        if (strcmp(s, names[i]) == 0) {
            *op = i;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "op must be one of 'add', 'sub', 'mul', 'div', 'rsub', 'rdiv'; got '%s'", s);
    return -1;
}

/* nb for b broadcast against a: b has a's shape, one element, or the shape of
 * a's trailing axes (e.g. (D,) or (T, D) against (B, T, D)): then b repeats
 * over the leading rows of a. */
static int broadcast_nb(PyArrayObject *a, PyArrayObject *b, int64_t *nb) {
    int64_t na = (int64_t)PyArray_SIZE(a), n_b = (int64_t)PyArray_SIZE(b);
    int nda = PyArray_NDIM(a), ndb = PyArray_NDIM(b);
    if (same_shape(a, b)) {
        *nb = na;
        return 0;
    }
    if (n_b == 1) {
        *nb = 1;
        return 0;
    }
    if (ndb >= 1 && ndb <= nda && PyArray_CompareLists(PyArray_DIMS(b), PyArray_DIMS(a) + (nda - ndb), ndb)) {
        *nb = n_b;
        return 0;
    }
    char sa[256], sb[256];
    rp_shape_str(a, sa, sizeof sa);
    rp_shape_str(b, sb, sizeof sb);
    PyErr_Format(PyExc_ValueError,
                 "b must have the shape of a %s, one element, or the shape of a's trailing axes; got %s", sa, sb);
    return -1;
}

static PyObject *py_binary_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    const char *ops = "add";
    PyArrayObject *a = NULL, *b = NULL, *out = NULL;
    int op, rc;
    int64_t nb;
    rp_arg spec[] = {RP_ARG_F32("a", &a, -1, NULL),
                     RP_ARG_F32("b", &b, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_STR("op", &ops),
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "binary_fwd", spec) < 0) return NULL;
    if (parse_op(ops, &op) < 0 || broadcast_nb(a, b, &nb) < 0) goto fail;
    if (!(out = out_f32(out_o, "out", PyArray_NDIM(a), PyArray_DIMS(a)))) goto fail;
    if (check_overlap(out, a, "a", 1) < 0 || check_overlap(out, b, "b", 1) < 0) goto fail;
    int64_t n = (int64_t)PyArray_SIZE(a);
    if (n == 0) nb = n;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_binary_fwd(op, RP_F32(a), RP_F32(b), RP_F32(out), n, nb);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "binary_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_binary_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    const char *ops = "add";
    int need_a = 1, need_b = 1, op, rc = RP_OK;
    PyArrayObject *a = NULL, *b = NULL, *g = NULL, *da = NULL, *db = NULL;
    int64_t nb;
    rp_arg spec[] = {RP_ARG_F32("a", &a, -1, NULL),
                     RP_ARG_F32("b", &b, -1, NULL),
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_STR("op", &ops),
                     RP_ARG_KWONLY,
                     RP_ARG_BOOL("need_a", &need_a),
                     RP_ARG_BOOL("need_b", &need_b),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "binary_bwd", spec) < 0) return NULL;
    if (parse_op(ops, &op) < 0 || broadcast_nb(a, b, &nb) < 0 || check_same_shape(a, "a", g, "grad") < 0) goto fail;
    if (need_a && !(da = new_f32(PyArray_NDIM(a), PyArray_DIMS(a)))) goto fail;
    if (need_b && !(db = rp_new_f32(PyArray_NDIM(b), PyArray_DIMS(b)))) goto fail; /* zeros: n == 0 */
    int64_t n = (int64_t)PyArray_SIZE(a);
    if (n > 0) {
        Py_BEGIN_ALLOW_THREADS
            rc = rp_ops_binary_bwd(op, RP_F32(a), RP_F32(b), RP_F32(g), da ? RP_F32(da) : NULL, db ? RP_F32(db) : NULL,
                                   n, nb);
        Py_END_ALLOW_THREADS
    }
    if (rc < 0) {
        rp_raise_code(rc, "binary_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NN", rp_none_or(da), rp_none_or(db));
fail:
    rp_args_release(spec);
    Py_XDECREF(da);
    Py_XDECREF(db);
    return NULL;
}

static PyObject *py_scale(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    float alpha;
    int rc;
    PyArrayObject *x = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_FLOAT("alpha", &alpha),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "scale", spec) < 0) return NULL;
    if (!(out = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x))) || check_overlap(out, x, "x", 1) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_scale(RP_F32(x), alpha, RP_F32(out), (int64_t)PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "scale");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_bias_add(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    PyArrayObject *x = NULL, *bias = NULL, *out = NULL;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_F32_OPT("bias", &bias, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "bias_add", spec) < 0) return NULL;
    if (as_rows(x, "x", &N, &D) < 0) goto fail;
    if (!bias) {
        PyErr_SetString(PyExc_TypeError, "bias must be a float32 ndarray of shape (D,); got None");
        goto fail;
    }
    if (check_vec(bias, "bias", D) < 0) goto fail;
    if (!(out = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    if (check_overlap(out, x, "x", 1) < 0 || check_overlap(out, bias, "bias", 0) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = (N * D == 0) ? RP_OK : rp_ops_binary_fwd(RP_OP_ADD, RP_F32(x), RP_F32(bias), RP_F32(out), N * D, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "bias_add");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_sum_rows(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyArrayObject *x = NULL, *out = NULL;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL), RP_ARG_END};
    if (rp_args_parse(args, kw, "sum_rows", spec) < 0) return NULL;
    if (as_rows(x, "x", &N, &D) < 0) goto fail;
    npy_intp dims[1] = {(npy_intp)D};
    if (!(out = new_f32(1, dims))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_sum_rows(RP_F32(x), RP_F32(out), N, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "sum_rows");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

/* ---- activations -------------------------------------------------------- */

/* out = act(x); x is the caller's (converted) array */
static PyObject *act_fwd(int kind, const char *fname, PyArrayObject *x, PyObject *out_o) {
    PyArrayObject *out = NULL;
    int rc;
    if (!(out = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x))) || check_overlap(out, x, "x", 1) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_act_fwd(kind, RP_F32(x), RP_F32(out), (int64_t)PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, fname);
        goto fail;
    }
    return (PyObject *)out;
fail:
    Py_XDECREF(out);
    return NULL;
}

/* out = act'(x) * g */
static PyObject *act_bwd(int kind, const char *fname, PyArrayObject *x, PyArrayObject *g, PyObject *out_o) {
    PyArrayObject *out = NULL;
    int rc;
    if (check_same_shape(x, "x", g, "grad") < 0) return NULL;
    if (!(out = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    if (check_overlap(out, x, "x", 1) < 0 || check_overlap(out, g, "grad", 1) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_act_bwd(kind, RP_F32(x), RP_F32(g), RP_F32(out), (int64_t)PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, fname);
        goto fail;
    }
    return (PyObject *)out;
fail:
    Py_XDECREF(out);
    return NULL;
}

static int gelu_kind(const char *approx, int *kind) {
    if (strcmp(approx, "tanh") == 0)
        *kind = RP_ACT_GELU_TANH;
    else if (strcmp(approx, "none") == 0)
        *kind = RP_ACT_GELU_ERF;
    else {
        PyErr_Format(PyExc_ValueError, "approximate must be 'tanh' or 'none'; got '%s'", approx);
        return -1;
    }
    return 0;
}

static PyObject *py_gelu_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL, *res = NULL;
    PyArrayObject *x = NULL;
    const char *approx = "tanh";
    int kind;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL), RP_ARG_OPTIONAL, RP_ARG_STR("approximate", &approx), RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),     RP_ARG_END};
    if (rp_args_parse(args, kw, "gelu_fwd", spec) < 0) return NULL;
    if (gelu_kind(approx, &kind) == 0) res = act_fwd(kind, "gelu_fwd", x, out_o);
    rp_args_release(spec);
    return res;
}

static PyObject *py_gelu_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL, *res = NULL;
    PyArrayObject *x = NULL, *g = NULL;
    const char *approx = "tanh";
    int kind;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_STR("approximate", &approx),
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "gelu_bwd", spec) < 0) return NULL;
    if (gelu_kind(approx, &kind) == 0) res = act_bwd(kind, "gelu_bwd", x, g, out_o);
    rp_args_release(spec);
    return res;
}

#define ACT_PAIR(name, KIND)                                                                                       \
    static PyObject *py_##name##_fwd(PyObject *self, PyObject *args, PyObject *kw) {                               \
        (void)self;                                                                                                \
        PyObject *out_o = NULL, *res;                                                                              \
        PyArrayObject *x = NULL;                                                                                   \
        rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL), RP_ARG_OPTIONAL, RP_ARG_KWONLY, RP_ARG_OBJ("out", &out_o), \
                         RP_ARG_END};                                                                              \
        if (rp_args_parse(args, kw, #name "_fwd", spec) < 0) return NULL;                                          \
        res = act_fwd(KIND, #name "_fwd", x, out_o);                                                               \
        rp_args_release(spec);                                                                                     \
        return res;                                                                                                \
    }                                                                                                              \
    static PyObject *py_##name##_bwd(PyObject *self, PyObject *args, PyObject *kw) {                               \
        (void)self;                                                                                                \
        PyObject *out_o = NULL, *res;                                                                              \
        PyArrayObject *x = NULL, *g = NULL;                                                                        \
        rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),                                                            \
                         RP_ARG_F32("grad", &g, -1, NULL),                                                         \
                         RP_ARG_OPTIONAL,                                                                          \
                         RP_ARG_KWONLY,                                                                            \
                         RP_ARG_OBJ("out", &out_o),                                                                \
                         RP_ARG_END};                                                                              \
        if (rp_args_parse(args, kw, #name "_bwd", spec) < 0) return NULL;                                          \
        res = act_bwd(KIND, #name "_bwd", x, g, out_o);                                                            \
        rp_args_release(spec);                                                                                     \
        return res;                                                                                                \
    }

ACT_PAIR(relu, RP_ACT_RELU)
ACT_PAIR(silu, RP_ACT_SILU)

/* ---- norms -------------------------------------------------------------- */

static int check_eps(double eps) {
    if (!(eps >= 0.0) || isinf(eps)) {
        rp_raise_float("eps must be a finite number >= 0", eps);
        return -1;
    }
    return 0;
}

/* Row statistics (mean, rstd) have x's leading shape. */
static PyArrayObject *new_stats(PyArrayObject *x) { return new_f32(PyArray_NDIM(x) - 1, PyArray_DIMS(x)); }

static int check_stats(PyArrayObject *s, const char *name, PyArrayObject *x) {
    int nd = PyArray_NDIM(x) - 1;
    if (PyArray_NDIM(s) == nd && PyArray_CompareLists(PyArray_DIMS(s), PyArray_DIMS(x), nd)) return 0;
    char ss[256], sx[256];
    rp_shape_str(s, ss, sizeof ss);
    rp_shape_str(x, sx, sizeof sx);
    PyErr_Format(PyExc_ValueError, "%s must have the leading shape of x %s (all but the last axis); got %s", name, sx,
                 ss);
    return -1;
}

static PyObject *py_layer_norm_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    double eps = 1e-5;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *y = NULL, *mean = NULL, *rstd = NULL;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_F32_OPT("weight", &w, -1, NULL),
                     RP_ARG_F32_OPT("bias", &b, -1, NULL),
                     RP_ARG_DOUBLE("eps", &eps),
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "layer_norm_fwd", spec) < 0) return NULL;
    if (check_eps(eps) < 0 || as_rows(x, "x", &N, &D) < 0 || (w && check_vec(w, "weight", D) < 0) ||
        (b && check_vec(b, "bias", D) < 0))
        goto fail;
    if (!(y = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    if (check_overlap(y, x, "x", 1) < 0 || check_overlap(y, w, "weight", 0) < 0 || check_overlap(y, b, "bias", 0) < 0)
        goto fail;
    if (!(mean = new_stats(x)) || !(rstd = new_stats(x))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_layernorm_fwd(RP_F32(x), w ? RP_F32(w) : NULL, b ? RP_F32(b) : NULL, RP_F32(y), RP_F32(mean),
                                  RP_F32(rstd), N, D, (float)eps);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "layer_norm_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NNN", y, mean, rstd);
fail:
    rp_args_release(spec);
    Py_XDECREF(y);
    Py_XDECREF(mean);
    Py_XDECREF(rstd);
    return NULL;
}

static PyObject *py_layer_norm_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    int need_x = 1, need_w = 1, need_b = 1, rc;
    PyArrayObject *x = NULL, *w = NULL, *mean = NULL, *rstd = NULL, *g = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    int64_t N, D;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_F32_OPT("weight", &w, -1, NULL),
                     RP_ARG_F32("mean", &mean, -1, NULL),
                     RP_ARG_F32("rstd", &rstd, -1, NULL),
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_BOOL("need_x", &need_x),
                     RP_ARG_BOOL("need_weight", &need_w),
                     RP_ARG_BOOL("need_bias", &need_b),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "layer_norm_bwd", spec) < 0) return NULL;
    if (as_rows(x, "x", &N, &D) < 0 || (w && check_vec(w, "weight", D) < 0) || check_stats(mean, "mean", x) < 0 ||
        check_stats(rstd, "rstd", x) < 0 || check_same_shape(x, "x", g, "grad") < 0)
        goto fail;
    npy_intp dd[1] = {(npy_intp)D};
    if (need_x && !(dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    if (need_w && !(dw = new_f32(1, dd))) goto fail;
    if (need_b && !(db = new_f32(1, dd))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_layernorm_bwd(RP_F32(x), w ? RP_F32(w) : NULL, RP_F32(mean), RP_F32(rstd), RP_F32(g),
                                  dx ? RP_F32(dx) : NULL, dw ? RP_F32(dw) : NULL, db ? RP_F32(db) : NULL, N, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "layer_norm_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NNN", rp_none_or(dx), rp_none_or(dw), rp_none_or(db));
fail:
    rp_args_release(spec);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return NULL;
}

static PyObject *py_rms_norm_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    double eps = 1e-6;
    PyArrayObject *x = NULL, *w = NULL, *y = NULL, *rstd = NULL;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_F32_OPT("weight", &w, -1, NULL),
                     RP_ARG_DOUBLE("eps", &eps),
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "rms_norm_fwd", spec) < 0) return NULL;
    if (check_eps(eps) < 0 || as_rows(x, "x", &N, &D) < 0 || (w && check_vec(w, "weight", D) < 0)) goto fail;
    if (!(y = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    if (check_overlap(y, x, "x", 1) < 0 || check_overlap(y, w, "weight", 0) < 0) goto fail;
    if (!(rstd = new_stats(x))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_rmsnorm_fwd(RP_F32(x), w ? RP_F32(w) : NULL, RP_F32(y), RP_F32(rstd), N, D, (float)eps);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "rms_norm_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NN", y, rstd);
fail:
    rp_args_release(spec);
    Py_XDECREF(y);
    Py_XDECREF(rstd);
    return NULL;
}

static PyObject *py_rms_norm_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    int need_x = 1, need_w = 1, rc;
    PyArrayObject *x = NULL, *w = NULL, *rstd = NULL, *g = NULL, *dx = NULL, *dw = NULL;
    int64_t N, D;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_F32_OPT("weight", &w, -1, NULL),
                     RP_ARG_F32("rstd", &rstd, -1, NULL),
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_BOOL("need_x", &need_x),
                     RP_ARG_BOOL("need_weight", &need_w),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "rms_norm_bwd", spec) < 0) return NULL;
    if (as_rows(x, "x", &N, &D) < 0 || (w && check_vec(w, "weight", D) < 0) || check_stats(rstd, "rstd", x) < 0 ||
        check_same_shape(x, "x", g, "grad") < 0)
        goto fail;
    npy_intp dd[1] = {(npy_intp)D};
    if (need_x && !(dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    if (need_w && !(dw = new_f32(1, dd))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_rmsnorm_bwd(RP_F32(x), w ? RP_F32(w) : NULL, RP_F32(rstd), RP_F32(g), dx ? RP_F32(dx) : NULL,
                                dw ? RP_F32(dw) : NULL, N, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "rms_norm_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NN", rp_none_or(dx), rp_none_or(dw));
fail:
    rp_args_release(spec);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    return NULL;
}

/* ---- softmax ------------------------------------------------------------ */

typedef int (*row_fwd_fn)(const float *, float *, int64_t, int64_t);
typedef int (*row_bwd_fn)(const float *, const float *, float *, int64_t, int64_t);

/* The softmax wrappers always parsed without a function name in CPython's
 * messages ("function missing required argument ..."); kept as they were. */
static PyObject *rows_fwd(row_fwd_fn fn, const char *fname, PyObject *args, PyObject *kw) {
    PyObject *out_o = NULL;
    PyArrayObject *x = NULL, *y = NULL;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL), RP_ARG_OPTIONAL, RP_ARG_KWONLY, RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, NULL, spec) < 0) return NULL;
    if (as_rows(x, "x", &N, &D) < 0) goto fail;
    if (!(y = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x))) || check_overlap(y, x, "x", 1) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = fn(RP_F32(x), RP_F32(y), N, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, fname);
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)y;
fail:
    rp_args_release(spec);
    Py_XDECREF(y);
    return NULL;
}

static PyObject *rows_bwd(row_bwd_fn fn, const char *fname, PyObject *args, PyObject *kw) {
    PyObject *out_o = NULL;
    PyArrayObject *y = NULL, *g = NULL, *dx = NULL;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("y", &y, -1, NULL),
                     RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, NULL, spec) < 0) return NULL;
    if (as_rows(y, "y", &N, &D) < 0 || check_same_shape(y, "y", g, "grad") < 0) goto fail;
    if (!(dx = out_f32(out_o, "out", PyArray_NDIM(y), PyArray_DIMS(y)))) goto fail;
    if (check_overlap(dx, y, "y", 1) < 0 || check_overlap(dx, g, "grad", 1) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = fn(RP_F32(y), RP_F32(g), RP_F32(dx), N, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, fname);
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)dx;
fail:
    rp_args_release(spec);
    Py_XDECREF(dx);
    return NULL;
}

static PyObject *py_softmax_fwd(PyObject *s, PyObject *a, PyObject *k) {
    (void)s;
    return rows_fwd(rp_ops_softmax_fwd, "softmax_fwd", a, k);
}
static PyObject *py_softmax_bwd(PyObject *s, PyObject *a, PyObject *k) {
    (void)s;
    return rows_bwd(rp_ops_softmax_bwd, "softmax_bwd", a, k);
}
static PyObject *py_log_softmax_fwd(PyObject *s, PyObject *a, PyObject *k) {
    (void)s;
    return rows_fwd(rp_ops_log_softmax_fwd, "log_softmax_fwd", a, k);
}
static PyObject *py_log_softmax_bwd(PyObject *s, PyObject *a, PyObject *k) {
    (void)s;
    return rows_bwd(rp_ops_log_softmax_bwd, "log_softmax_bwd", a, k);
}

/* ---- cross-entropy ------------------------------------------------------ */

static int check_targets(PyArrayObject *t, int64_t N, int64_t V, int64_t ignore_index) {
    npy_intp dims[1] = {(npy_intp)N};
    if (rp_check_shape(t, "targets", 1, dims, "(N,)") < 0) return -1;
    const int64_t *tp = RP_I64(t);
    for (int64_t r = 0; r < N; r++) {
        if (tp[r] != ignore_index && (tp[r] < 0 || tp[r] >= V)) {
            PyErr_Format(PyExc_IndexError,
                         "targets[%lld] = %lld is out of range for V = %lld classes (valid: 0..V-1 or "
                         "ignore_index = %lld)",
                         (long long)r, (long long)tp[r], (long long)V, (long long)ignore_index);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_cross_entropy_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long ignore = -100;
    PyArrayObject *x = NULL, *t = NULL, *lse = NULL;
    int64_t N, V, count = 0, bad = -1;
    float loss = 0.0f;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("logits", &x, 2, "(N, V)"), RP_ARG_I64("targets", &t, -1, NULL), RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("ignore_index", &ignore), RP_ARG_END};
    if (rp_args_parse(args, kw, "cross_entropy_fwd", spec) < 0) return NULL;
    N = RP_DIM(x, 0);
    V = RP_DIM(x, 1);
    if (check_targets(t, N, V, (int64_t)ignore) < 0) goto fail;
    npy_intp dn[1] = {(npy_intp)N};
    if (!(lse = new_f32(1, dn))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_xent_fwd(RP_F32(x), RP_I64(t), RP_F32(lse), &loss, &count, N, V, (int64_t)ignore, &bad);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "cross_entropy_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("dNL", (double)loss, lse, (long long)count);
fail:
    rp_args_release(spec);
    Py_XDECREF(lse);
    return NULL;
}

static PyObject *py_cross_entropy_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    double dloss;
    long long count, ignore = -100;
    PyArrayObject *x = NULL, *t = NULL, *lse = NULL, *dx = NULL;
    int64_t N, V;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("logits", &x, 2, "(N, V)"),
                     RP_ARG_I64("targets", &t, -1, NULL),
                     RP_ARG_F32("lse", &lse, -1, NULL),
                     RP_ARG_DOUBLE("dloss", &dloss),
                     RP_ARG_LLONG("count", &count),
                     RP_ARG_OPTIONAL,
                     RP_ARG_LLONG("ignore_index", &ignore),
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "cross_entropy_bwd", spec) < 0) return NULL;
    if (count < 0) {
        PyErr_Format(PyExc_ValueError, "count must be >= 0; got %lld", count);
        goto fail;
    }
    N = RP_DIM(x, 0);
    V = RP_DIM(x, 1);
    npy_intp dn[1] = {(npy_intp)N};
    if (check_targets(t, N, V, (int64_t)ignore) < 0 || rp_check_shape(lse, "lse", 1, dn, "(N,)") < 0) goto fail;
    if (!(dx = out_f32(out_o, "out", 2, PyArray_DIMS(x)))) goto fail;
    if (check_overlap(dx, x, "logits", 1) < 0 || check_overlap(dx, lse, "lse", 0) < 0 ||
        check_overlap(dx, t, "targets", 0) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_xent_bwd(RP_F32(x), RP_I64(t), RP_F32(lse), (float)dloss, (int64_t)count, RP_F32(dx), N, V,
                             (int64_t)ignore);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "cross_entropy_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)dx;
fail:
    rp_args_release(spec);
    Py_XDECREF(dx);
    return NULL;
}

/* ---- embedding ---------------------------------------------------------- */

static int check_ids(PyArrayObject *ids, int64_t V) {
    int64_t n = (int64_t)PyArray_SIZE(ids);
    int64_t bad = rp_ops_first_bad_id(RP_I64(ids), n, V);
    if (bad < 0) return 0;
    PyErr_Format(PyExc_IndexError,
                 "ids contains %lld (at flat position %lld), out of range for an embedding of "
                 "V = %lld rows (valid: 0..V-1)",
                 (long long)RP_I64(ids)[bad], (long long)bad, (long long)V);
    return -1;
}

static PyObject *py_embedding_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *out_o = NULL;
    PyArrayObject *ids = NULL, *w = NULL, *out = NULL;
    int rc;
    rp_arg spec[] = {RP_ARG_I64("ids", &ids, -1, NULL),
                     RP_ARG_F32("weight", &w, 2, "(V, D)"),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "embedding_fwd", spec) < 0) return NULL;
    int64_t V = RP_DIM(w, 0), D = RP_DIM(w, 1);
    if (PyArray_NDIM(ids) >= NPY_MAXDIMS) {
        PyErr_Format(PyExc_ValueError, "ids must have fewer than %d dimensions", NPY_MAXDIMS);
        goto fail;
    }
    if (check_ids(ids, V) < 0) goto fail;
    npy_intp dims[NPY_MAXDIMS];
    int nd = PyArray_NDIM(ids);
    for (int i = 0; i < nd; i++) dims[i] = PyArray_DIM(ids, i);
    dims[nd] = (npy_intp)D;
    if (!(out = out_f32(out_o, "out", nd + 1, dims))) goto fail;
    if (check_overlap(out, w, "weight", 0) < 0 || check_overlap(out, ids, "ids", 0) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_embedding_fwd(RP_I64(ids), RP_F32(w), RP_F32(out), (int64_t)PyArray_SIZE(ids), V, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "embedding_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_embedding_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    long long V;
    PyArrayObject *ids = NULL, *g = NULL, *dw = NULL;
    int rc;
    rp_arg spec[] = {RP_ARG_I64("ids", &ids, -1, NULL), RP_ARG_F32("grad", &g, -1, NULL),
                     RP_ARG_LLONG("num_embeddings", &V), RP_ARG_END};
    if (rp_args_parse(args, kw, "embedding_bwd", spec) < 0) return NULL;
    if (V < 0) {
        PyErr_Format(PyExc_ValueError, "num_embeddings must be >= 0; got %lld", V);
        goto fail;
    }
    int nd = PyArray_NDIM(ids);
    if (PyArray_NDIM(g) != nd + 1 || !PyArray_CompareLists(PyArray_DIMS(g), PyArray_DIMS(ids), nd)) {
        char si[256], sg[256];
        rp_shape_str(ids, si, sizeof si);
        rp_shape_str(g, sg, sizeof sg);
        PyErr_Format(PyExc_ValueError, "grad must have shape ids.shape + (D,) with ids.shape = %s; got %s", si, sg);
        goto fail;
    }
    if (check_ids(ids, (int64_t)V) < 0) goto fail;
    int64_t D = RP_DIM(g, nd);
    npy_intp dims[2] = {(npy_intp)V, (npy_intp)D};
    if (!(dw = new_f32(2, dims))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_embedding_bwd(RP_I64(ids), RP_F32(g), RP_F32(dw), (int64_t)PyArray_SIZE(ids), (int64_t)V, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "embedding_bwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)dw;
fail:
    rp_args_release(spec);
    Py_XDECREF(dw);
    return NULL;
}

/* ---- dropout ------------------------------------------------------------ */

static PyObject *dropout_common(int bwd, PyObject *args, PyObject *kw) {
    const char *xname = bwd ? "grad" : "x", *fname = bwd ? "dropout_bwd" : "dropout_fwd";
    PyObject *so, *out_o = NULL;
    double p;
    uint64_t seed;
    PyArrayObject *x = NULL, *y = NULL;
    int rc;
    rp_arg spec[] = {RP_ARG_F32(xname, &x, -1, NULL),
                     RP_ARG_DOUBLE("p", &p),
                     RP_ARG_OBJ("seed", &so),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("out", &out_o),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, fname, spec) < 0) return NULL;
    if (check_p(p) < 0 || parse_seed(so, &seed) < 0) goto fail;
    if (!(y = out_f32(out_o, "out", PyArray_NDIM(x), PyArray_DIMS(x))) || check_overlap(y, x, xname, 1) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = bwd ? rp_ops_dropout_bwd(RP_F32(x), RP_F32(y), (int64_t)PyArray_SIZE(x), (float)p, seed)
                 : rp_ops_dropout_fwd(RP_F32(x), RP_F32(y), (int64_t)PyArray_SIZE(x), (float)p, seed);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, fname);
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)y;
fail:
    rp_args_release(spec);
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py_dropout_fwd(PyObject *s, PyObject *a, PyObject *k) {
    (void)s;
    return dropout_common(0, a, k);
}
static PyObject *py_dropout_bwd(PyObject *s, PyObject *a, PyObject *k) {
    (void)s;
    return dropout_common(1, a, k);
}

static PyObject *py_dropout_mask(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"n", "p", "seed", NULL};
    long long n;
    double p;
    PyObject *so;
    uint64_t seed;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LdO:dropout_mask", kwlist, &n, &p, &so)) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "n must be >= 0; got %lld", n);
    if (check_p(p) < 0 || parse_seed(so, &seed) < 0) return NULL;
    npy_intp dims[1] = {(npy_intp)n};
    PyArrayObject *m = (PyArrayObject *)PyArray_ZEROS(1, dims, NPY_BOOL, 0);
    if (!m) return NULL;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_dropout_mask(RP_U8(m), (int64_t)n, (float)p, seed);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(m);
        return rp_raise_code(rc, "dropout_mask");
    }
    return (PyObject *)m;
}

#define KW (METH_VARARGS | METH_KEYWORDS)
#define M(name, doc) \
    { #name, (PyCFunction)(void (*)(void))py_##name, KW, doc }

/* ---- test hooks: the exp forms of simd_math.h, the activation spans by form ---- */

/* form name -> RP_EXP_SCALAR, RP_EXP_AVX2 or RP_EXP_AVX512 (the forms of both hooks) */
static int exp_form(const char *fs, int *form) {
    const char *names[] = {"scalar", "avx2", "avx512"};
    for (int i = 0; i < 3; i++)
        if (strcmp(fs, names[i]) == 0) {
            *form = i;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "form must be 'scalar', 'avx2' or 'avx512'; got '%s'", fs);
    return -1;
}

static PyObject *py__exp_check(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    const char *fs = "scalar";
    PyArrayObject *x = NULL, *y = NULL;
    int form = -1, rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL), RP_ARG_OPTIONAL, RP_ARG_STR("form", &fs), RP_ARG_END};
    if (rp_args_parse(args, kw, "_exp_check", spec) < 0) return NULL;
    if (exp_form(fs, &form) < 0) goto fail;
    if (!(y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_exp_span(form, RP_F32(x), 0.0f, RP_F32(y), (int64_t)PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "_exp_check");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)y;
fail:
    rp_args_release(spec);
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py__act_check(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    const char *fs = "scalar", *as = "gelu_tanh";
    PyArrayObject *x = NULL, *g = NULL, *y = NULL;
    int form = -1, kind = -1, rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL), RP_ARG_OPTIONAL,         RP_ARG_F32_OPT("grad", &g, -1, NULL),
                     RP_ARG_STR("act", &as),        RP_ARG_STR("form", &fs), RP_ARG_END};
    if (rp_args_parse(args, kw, "_act_check", spec) < 0) return NULL;
    const char *acts[] = {"gelu_tanh", "gelu_erf", "relu", "silu"}; /* RP_ACT_* order */
    for (int i = 0; i < 4; i++)
        if (strcmp(as, acts[i]) == 0) kind = i;
    if (exp_form(fs, &form) < 0) goto fail;
    if (kind < 0) {
        PyErr_Format(PyExc_ValueError, "act must be 'gelu_tanh', 'gelu_erf', 'relu' or 'silu'; got '%s'", as);
        goto fail;
    }
    if (g && PyArray_SIZE(g) != PyArray_SIZE(x)) {
        PyErr_Format(PyExc_ValueError, "grad must have x's %zd elements; got %zd", (Py_ssize_t)PyArray_SIZE(x),
                     (Py_ssize_t)PyArray_SIZE(g));
        goto fail;
    }
    if (!(y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x)))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_ops_act_form(form, kind, RP_F32(x), g ? RP_F32(g) : NULL, RP_F32(y), (int64_t)PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "_act_check");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)y;
fail:
    rp_args_release(spec);
    Py_XDECREF(y);
    return NULL;
}

PyMethodDef rp_methods_ops[] = {
    M(binary_fwd,
      "binary_fwd(a, b, op='add', *, out=None): op(a, b), b of a's shape, one element, or the shape of a's trailing "
      "axes (repeated over the leading ones); op in add, sub, mul, div, rsub (b - a), rdiv (b / a)."),
    M(binary_bwd,
      "binary_bwd(a, b, grad, op='add', *, need_a=True, need_b=True) -> (da, db); db summed over the broadcast rows."),
    M(scale, "scale(x, alpha, *, out=None) -> alpha * x"),
    M(bias_add, "bias_add(x, bias, *, out=None): x (..., D) + bias (D,)"),
    M(sum_rows, "sum_rows(x) -> (D,): x (..., D) summed over the leading axes in a fixed order (bias gradient)."),
    M(gelu_fwd, "gelu_fwd(x, approximate='tanh'|'none', *, out=None)"),
    M(gelu_bwd, "gelu_bwd(x, grad, approximate='tanh'|'none', *, out=None) -> dx"),
    M(relu_fwd, "relu_fwd(x, *, out=None)"),
    M(relu_bwd, "relu_bwd(x, grad, *, out=None) -> dx"),
    M(silu_fwd, "silu_fwd(x, *, out=None)"),
    M(silu_bwd, "silu_bwd(x, grad, *, out=None) -> dx"),
    M(layer_norm_fwd, "layer_norm_fwd(x, weight=None, bias=None, eps=1e-5, *, out=None) -> (y, mean, rstd); x (..., "
                      "D), mean/rstd (...)"),
    M(layer_norm_bwd,
      "layer_norm_bwd(x, weight, mean, rstd, grad, *, need_x, need_weight, need_bias) -> (dx, dweight, dbias)"),
    M(rms_norm_fwd, "rms_norm_fwd(x, weight=None, eps=1e-6, *, out=None) -> (y, rstd)"),
    M(rms_norm_bwd, "rms_norm_bwd(x, weight, rstd, grad, *, need_x, need_weight) -> (dx, dweight)"),
    M(softmax_fwd, "softmax_fwd(x, *, out=None): softmax over the last axis"),
    M(softmax_bwd, "softmax_bwd(y, grad, *, out=None) -> dx, from the saved output y"),
    M(log_softmax_fwd, "log_softmax_fwd(x, *, out=None): log-softmax over the last axis"),
    M(log_softmax_bwd, "log_softmax_bwd(y, grad, *, out=None) -> dx, from the saved output y"),
    M(cross_entropy_fwd,
      "cross_entropy_fwd(logits (N, V), targets (N,) int, ignore_index=-100) -> (loss, lse (N,), count)"),
    M(cross_entropy_bwd,
      "cross_entropy_bwd(logits, targets, lse, dloss, count, ignore_index=-100, *, out=None) -> dlogits (N, V)"),
    M(embedding_fwd, "embedding_fwd(ids (...) int, weight (V, D), *, out=None) -> (..., D)"),
    M(embedding_bwd, "embedding_bwd(ids (...), grad (..., D), num_embeddings) -> dweight (V, D)"),
    M(dropout_fwd, "dropout_fwd(x, p, seed, *, out=None): keep element i when u(seed, i) >= p, scale 1/(1-p)"),
    M(dropout_bwd, "dropout_bwd(grad, p, seed, *, out=None): the forward's mask regenerated from seed"),
    M(dropout_mask, "dropout_mask(n, p, seed) -> bool (n,): the keep mask of flat elements 0..n-1"),
    M(_exp_check,
      "_exp_check(x, form='scalar') -> exp(x) by one form of the core's exp ('scalar', 'avx2' or\n"
      "'avx512'; RuntimeError where the CPU or build lacks it). A test hook: every form gives the same bits."),
    M(_act_check,
      "_act_check(x, grad=None, act='gelu_tanh', form='scalar') -> act(x), or act'(x) * grad, by one form of the\n"
      "activation spans ('scalar' = portable, 'avx2', 'avx512'; RuntimeError where the CPU or build lacks it). A\n"
      "test hook: the avx2 and avx512 forms give the same bits."),
    {NULL, NULL, 0, NULL},
};
