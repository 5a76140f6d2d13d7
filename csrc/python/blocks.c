/* Bridge for the blocks area (fused layers of the training step): parse, validate, release the GIL, call the core. */
#include "bridge.h"

#include <string.h>

#include "core/ops.h"
#include "core/blocks.h"
#include "core/posenc.h"

/* Uninitialised float32 array (every element is written by the core). */
static PyArrayObject *empty_f32(int ndim, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_EMPTY(ndim, (npy_intp *)dims, NPY_FLOAT32, 0);
}

/* x (..., D) as (N, D) rows */
static int as_rows(PyArrayObject *a, const char *name, int64_t *N, int64_t *D) {
    int nd = PyArray_NDIM(a);
    if (nd < 1) {
        PyErr_Format(PyExc_ValueError, "%s must have shape (..., D) (at least 1-D); got a 0-d array", name);
        return -1;
    }
    *D = RP_DIM(a, nd - 1);
    *N = *D ? (int64_t)PyArray_SIZE(a) / *D : 0;
    if (*D == 0) {
        *N = 1;
        for (int i = 0; i < nd - 1; i++) *N *= RP_DIM(a, i);
    }
    return 0;
}

static int same_shape(PyArrayObject *a, const char *an, PyArrayObject *b, const char *bn) {
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        memcmp(PyArray_DIMS(a), PyArray_DIMS(b), (size_t)PyArray_NDIM(a) * sizeof(npy_intp)) == 0)
        return 0;
    char sa[96], sb[96];
    rp_shape_str(a, sa, sizeof sa);
    rp_shape_str(b, sb, sizeof sb);
    PyErr_Format(PyExc_ValueError, "%s must have the shape of %s %s; got %s", bn, an, sa, sb);
    return -1;
}

static int check_eps(double eps) {
    if (!(eps >= 0.0) || eps > 1e30) {
        rp_raise_float("eps must be a finite number >= 0", eps);
        return -1;
    }
    return 0;
}

static int gelu_kind(const char *approximate) {
    if (strcmp(approximate, "tanh") == 0) return RP_ACT_GELU_TANH;
    if (strcmp(approximate, "none") == 0) return RP_ACT_GELU_ERF;
    PyErr_Format(PyExc_ValueError, "approximate must be 'tanh' or 'none'; got '%s'", approximate);
    return -1;
}

static int rope_layout(const char *layout) {
    if (strcmp(layout, "interleaved") == 0) return RP_ROPE_INTERLEAVED;
    if (strcmp(layout, "half") == 0) return RP_ROPE_HALF;
    PyErr_Format(PyExc_ValueError, "layout must be 'interleaved' or 'half'; got '%s'", layout);
    return -1;
}

/* ---- residual add + LayerNorm --------------------------------------------- */

static int check_vec(PyArrayObject *v, const char *name, int64_t D) {
    npy_intp d[1] = {(npy_intp)D};
    return rp_check_shape(v, name, 1, d, "(D,)");
}

static PyObject *py_add_layer_norm_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyArrayObject *x = NULL, *y = NULL, *w = NULL, *b = NULL, *s = NULL, *h = NULL, *mean = NULL, *rstd = NULL;
    double eps = 1e-5;
    int64_t N, D;
    int rc;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_F32("y", &y, -1, NULL),
                     RP_ARG_F32("weight", &w, -1, NULL),
                     RP_ARG_F32("bias", &b, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_DOUBLE("eps", &eps),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "add_layer_norm_fwd", spec) < 0) return NULL;
    if (check_eps(eps) < 0 || as_rows(x, "x", &N, &D) < 0 || same_shape(x, "x", y, "y") < 0 ||
        check_vec(w, "weight", D) < 0 || check_vec(b, "bias", D) < 0)
        goto fail;
    npy_intp nd[1] = {(npy_intp)N};
    if (!(s = empty_f32(PyArray_NDIM(x), PyArray_DIMS(x))) || !(h = empty_f32(PyArray_NDIM(x), PyArray_DIMS(x))) ||
        !(mean = empty_f32(1, nd)) || !(rstd = empty_f32(1, nd)))
        goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_add_layernorm_fwd(RP_F32(x), RP_F32(y), RP_F32(w), RP_F32(b), RP_F32(s), RP_F32(h), RP_F32(mean),
                                         RP_F32(rstd), N, D, (float)eps);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "add_layer_norm_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NNNN", s, h, mean, rstd);
fail:
    rp_args_release(spec);
    Py_XDECREF(s);
    Py_XDECREF(h);
    Py_XDECREF(mean);
    Py_XDECREF(rstd);
    return NULL;
}

static int check_stats(PyArrayObject *a, const char *name, int64_t N) {
    npy_intp d[1] = {(npy_intp)N};
    return rp_check_shape(a, name, 1, d, "(N,) (one per row of s)");
}

static PyObject *py_add_layer_norm_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyArrayObject *s = NULL, *w = NULL, *mean = NULL, *rstd = NULL, *dh = NULL, *ds = NULL;
    PyArrayObject *dx = NULL, *dw = NULL, *db = NULL;
    int need_x = 1, need_w = 1, need_b = 1, rc;
    int64_t N, D;
    rp_arg spec[] = {RP_ARG_F32("s", &s, -1, NULL),       RP_ARG_F32("weight", &w, -1, NULL),
                     RP_ARG_F32("mean", &mean, -1, NULL), RP_ARG_F32("rstd", &rstd, -1, NULL),
                     RP_ARG_F32("dh", &dh, -1, NULL),     RP_ARG_OPTIONAL,
                     RP_ARG_F32_OPT("ds", &ds, -1, NULL), RP_ARG_KWONLY,
                     RP_ARG_BOOL("need_x", &need_x),      RP_ARG_BOOL("need_weight", &need_w),
                     RP_ARG_BOOL("need_bias", &need_b),   RP_ARG_END};
    if (rp_args_parse(args, kw, "add_layer_norm_bwd", spec) < 0) return NULL;
    if (as_rows(s, "s", &N, &D) < 0 || check_vec(w, "weight", D) < 0 || check_stats(mean, "mean", N) < 0 ||
        check_stats(rstd, "rstd", N) < 0 || same_shape(s, "s", dh, "dh") < 0 ||
        (ds && same_shape(s, "s", ds, "ds") < 0))
        goto fail;
    npy_intp dd[1] = {(npy_intp)D};
    if (need_x && !(dx = empty_f32(PyArray_NDIM(s), PyArray_DIMS(s)))) goto fail;
    if (need_w && !(dw = empty_f32(1, dd))) goto fail;
    if (need_b && !(db = empty_f32(1, dd))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_add_layernorm_bwd(RP_F32(s), RP_F32(w), RP_F32(mean), RP_F32(rstd), RP_F32(dh),
                                         ds ? RP_F32(ds) : NULL, dx ? RP_F32(dx) : NULL, dw ? RP_F32(dw) : NULL,
                                         db ? RP_F32(db) : NULL, N, D);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "add_layer_norm_bwd");
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

/* ---- Linear + GELU ---------------------------------------------------------- */

/* x (M, K), weight (N, K) */
static int linear_shapes(PyArrayObject *x, PyArrayObject *w, int64_t *M, int64_t *N, int64_t *K) {
    if (rp_check_ndim(x, "x", 2, "(M, in_features)") < 0 ||
        rp_check_ndim(w, "weight", 2, "(out_features, in_features)") < 0)
        return -1;
    *M = RP_DIM(x, 0);
    *K = RP_DIM(x, 1);
    *N = RP_DIM(w, 0);
    if (RP_DIM(w, 1) != *K) {
        PyErr_Format(PyExc_ValueError,
                     "weight must have shape (out_features, in_features=%lld) to match x (%lld, %lld); "
                     "got (%lld, %lld)",
                     (long long)*K, (long long)*M, (long long)*K, (long long)RP_DIM(w, 0), (long long)RP_DIM(w, 1));
        return -1;
    }
    return 0;
}

static PyObject *py_linear_gelu_fwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *h = NULL, *a = NULL;
    const char *approx = "tanh";
    int64_t M, N, K;
    int rc, kind;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),        RP_ARG_F32("weight", &w, -1, NULL), RP_ARG_OPTIONAL,
                     RP_ARG_F32_OPT("bias", &b, -1, NULL), RP_ARG_STR("approximate", &approx), RP_ARG_END};
    if (rp_args_parse(args, kw, "linear_gelu_fwd", spec) < 0) return NULL;
    if ((kind = gelu_kind(approx)) < 0 || linear_shapes(x, w, &M, &N, &K) < 0 || (b && check_vec(b, "bias", N) < 0))
        goto fail;
    npy_intp od[2] = {(npy_intp)M, (npy_intp)N};
    if (!(h = empty_f32(2, od)) || !(a = empty_f32(2, od))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_linear_gelu_fwd(kind, RP_F32(x), RP_F32(w), b ? RP_F32(b) : NULL, RP_F32(h), RP_F32(a), M, N, K);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "linear_gelu_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return Py_BuildValue("NN", h, a);
fail:
    rp_args_release(spec);
    Py_XDECREF(h);
    Py_XDECREF(a);
    return NULL;
}

static PyObject *py_linear_gelu_bwd(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyArrayObject *x = NULL, *w = NULL, *h = NULL, *da = NULL, *dh = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    const char *approx = "tanh";
    int need_x = 1, need_w = 1, need_b = 1, rc, kind;
    int64_t M, N, K;
    rp_arg spec[] = {RP_ARG_F32("x", &x, -1, NULL),
                     RP_ARG_F32("weight", &w, -1, NULL),
                     RP_ARG_F32("h", &h, -1, NULL),
                     RP_ARG_F32("da", &da, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_STR("approximate", &approx),
                     RP_ARG_KWONLY,
                     RP_ARG_BOOL("need_x", &need_x),
                     RP_ARG_BOOL("need_weight", &need_w),
                     RP_ARG_BOOL("need_bias", &need_b),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "linear_gelu_bwd", spec) < 0) return NULL;
    if ((kind = gelu_kind(approx)) < 0 || linear_shapes(x, w, &M, &N, &K) < 0) goto fail;
    npy_intp od[2] = {(npy_intp)M, (npy_intp)N};
    if (rp_check_shape(h, "h", 2, od, "(M, out_features)") < 0 ||
        rp_check_shape(da, "da", 2, od, "(M, out_features)") < 0)
        goto fail;
    npy_intp xd[2] = {(npy_intp)M, (npy_intp)K}, wd[2] = {(npy_intp)N, (npy_intp)K}, bd[1] = {(npy_intp)N};
    if (!(dh = empty_f32(2, od))) goto fail;
    if (need_x && !(dx = empty_f32(2, xd))) goto fail;
    if (need_w && !(dw = empty_f32(2, wd))) goto fail;
    if (need_b && !(db = empty_f32(1, bd))) goto fail;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_linear_gelu_bwd(kind, RP_F32(x), RP_F32(w), RP_F32(h), RP_F32(da), RP_F32(dh),
                                       dx ? RP_F32(dx) : NULL, dw ? RP_F32(dw) : NULL, db ? RP_F32(db) : NULL, M, N, K);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "linear_gelu_bwd");
        goto fail;
    }
    rp_args_release(spec);
    Py_DECREF(dh);
    return Py_BuildValue("NNN", rp_none_or(dx), rp_none_or(dw), rp_none_or(db));
fail:
    rp_args_release(spec);
    Py_XDECREF(dh);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return NULL;
}

/* ---- head split / merge ------------------------------------------------------ */

/* cos/sin tables (T, rd/2) and the rotary dim; both None = no rotation */
static int rope_tables(PyObject *co, PyObject *so, Py_ssize_t rd_in, int64_t T, int64_t Dh, PyArrayObject **cos,
                       PyArrayObject **sin, int64_t *rd) {
    *cos = *sin = NULL;
    *rd = 0;
    if (co == Py_None && so == Py_None) return 0;
    if (co == Py_None || so == Py_None) {
        PyErr_SetString(PyExc_ValueError, "cos and sin must be given together (or both None)");
        return -1;
    }
    if (rd_in < -1) {
        PyErr_Format(PyExc_ValueError, "rotary_dim must be a positive even int <= head_dim (or -1: head_dim); got %zd",
                     rd_in);
        return -1;
    }
    *rd = rd_in < 0 ? Dh : (int64_t)rd_in;
    if (*rd <= 0 || *rd % 2 || *rd > Dh) {
        PyErr_Format(PyExc_ValueError, "rotary_dim must be a positive even int <= head_dim (%lld); got %lld",
                     (long long)Dh, (long long)*rd);
        return -1;
    }
    npy_intp td[2] = {(npy_intp)T, (npy_intp)(*rd / 2)};
    if (!(*cos = rp_in_f32(co, "cos")) || rp_check_shape(*cos, "cos", 2, td, "(T, rotary_dim/2)") < 0) return -1;
    if (!(*sin = rp_in_f32(so, "sin")) || rp_check_shape(*sin, "sin", 2, td, "(T, rotary_dim/2)") < 0) return -1;
    return 0;
}

static int check_groups(int groups, int rotate) {
    if (groups < 1 || groups > 16) {
        PyErr_Format(PyExc_ValueError, "groups must be an int in [1, 16]; got %d", groups);
        return -1;
    }
    if (rotate < 0 || rotate > groups) {
        PyErr_Format(PyExc_ValueError, "rotate must be an int in [0, groups=%d]; got %d", groups, rotate);
        return -1;
    }
    return 0;
}

/* The checks heads_split and heads_rotate share on y (B, T, groups*n_heads*head_dim):
 * groups and rotate, the layout name, n_heads dividing the last dim, and the RoPE
 * tables when rotate > 0 (*cos, *sin, *rd set; the caller releases the tables).
 * The layout (rp_rope_layout), or -1 with the exception set. */
static int heads_layout_checks(PyArrayObject *y, Py_ssize_t n_heads, int groups, int rotate, const char *lay,
                               PyObject *co, PyObject *so, Py_ssize_t rd_in, PyArrayObject **cos, PyArrayObject **sin,
                               int64_t *rd) {
    int layout;
    if (check_groups(groups, rotate) < 0 || (layout = rope_layout(lay)) < 0) return -1;
    if (n_heads < 1) {
        PyErr_Format(PyExc_ValueError, "n_heads must be >= 1; got %zd", n_heads);
        return -1;
    }
    const int64_t T = RP_DIM(y, 1), C = RP_DIM(y, 2), H = (int64_t)n_heads;
    if (C == 0 ? H > 1 : (H > C || C % (groups * H))) {
        PyErr_Format(PyExc_ValueError,
                     "y must have shape (B, T, groups*n_heads*head_dim) with groups=%d, n_heads=%lld; "
                     "got last dim %lld",
                     groups, (long long)H, (long long)C);
        return -1;
    }
    if (rope_tables(co, so, rd_in, T, C / (groups * H), cos, sin, rd) < 0) return -1;
    if (rotate > 0 && !*cos) {
        PyErr_Format(PyExc_ValueError, "rotate=%d needs the RoPE tables cos and sin; got None", rotate);
        return -1;
    }
    return layout;
}

static PyObject *py_heads_split(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *co = Py_None, *so = Py_None;
    Py_ssize_t n_heads, rd_in = -1;
    int groups = 1, rotate = 0, rc = 0, layout;
    const char *lay = "interleaved";
    PyArrayObject *y = NULL, *cos = NULL, *sin = NULL, *outs[16] = {NULL};
    int64_t rd = 0;
    rp_arg spec[] = {RP_ARG_F32("y", &y, 3, "(B, T, groups*n_heads*head_dim)"),
                     RP_ARG_SSIZE("n_heads", &n_heads),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_INT("groups", &groups),
                     RP_ARG_INT("rotate", &rotate),
                     RP_ARG_OBJ("cos", &co),
                     RP_ARG_OBJ("sin", &so),
                     RP_ARG_SSIZE("rotary_dim", &rd_in),
                     RP_ARG_STR("layout", &lay),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "heads_split", spec) < 0) return NULL;
    if ((layout = heads_layout_checks(y, n_heads, groups, rotate, lay, co, so, rd_in, &cos, &sin, &rd)) < 0) goto fail;
    const int64_t B = RP_DIM(y, 0), T = RP_DIM(y, 1), H = (int64_t)n_heads, Dh = RP_DIM(y, 2) / (groups * H);
    npy_intp od[4] = {(npy_intp)B, (npy_intp)H, (npy_intp)T, (npy_intp)Dh};
    for (int g = 0; g < groups; g++)
        if (!(outs[g] = empty_f32(4, od))) goto fail;
    float *optr[16];
    for (int g = 0; g < groups; g++) optr[g] = RP_F32(outs[g]);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_heads_split(RP_F32(y), groups, rotate, cos ? RP_F32(cos) : NULL, sin ? RP_F32(sin) : NULL, rd,
                                   layout, optr, B, T, H, Dh);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "heads_split");
        goto fail;
    }
    PyObject *res = PyTuple_New(groups);
    if (!res) goto fail;
    for (int g = 0; g < groups; g++) PyTuple_SET_ITEM(res, g, (PyObject *)outs[g]);
    rp_args_release(spec);
    Py_XDECREF(cos);
    Py_XDECREF(sin);
    return res;
fail:
    rp_args_release(spec);
    Py_XDECREF(cos);
    Py_XDECREF(sin);
    for (int g = 0; g < 16; g++) Py_XDECREF(outs[g]);
    return NULL;
}

static PyObject *py_heads_merge(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *xso, *co = Py_None, *so = Py_None, *seq = NULL;
    Py_ssize_t rd_in = -1;
    int rotate = 0, rc = 0, layout, groups;
    const char *lay = "interleaved";
    PyArrayObject *cos = NULL, *sin = NULL, *xs[16] = {NULL}, *y = NULL;
    int64_t rd = 0, B = -1, H = 0, T = 0, Dh = 0;
    char name[32];
    rp_arg spec[] = {RP_ARG_OBJ("xs", &xso),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_INT("rotate", &rotate),
                     RP_ARG_OBJ("cos", &co),
                     RP_ARG_OBJ("sin", &so),
                     RP_ARG_SSIZE("rotary_dim", &rd_in),
                     RP_ARG_STR("layout", &lay),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "heads_merge", spec) < 0) return NULL;
    if ((layout = rope_layout(lay)) < 0) return NULL;
    if (!(seq = PySequence_Fast(xso, "xs must be a sequence of (B, H, T, head_dim) float32 arrays or None")))
        return NULL;
    groups = (int)(PySequence_Fast_GET_SIZE(seq) > 16 ? 17 : PySequence_Fast_GET_SIZE(seq));
    if (check_groups(groups, rotate) < 0) goto fail;
    for (int g = 0; g < groups; g++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, g);
        if (o == Py_None) continue;
        snprintf(name, sizeof name, "xs[%d]", g);
        if (!(xs[g] = rp_in_f32(o, name)) || rp_check_ndim(xs[g], name, 4, "(B, H, T, head_dim)") < 0) goto fail;
        if (B < 0) {
            B = RP_DIM(xs[g], 0);
            H = RP_DIM(xs[g], 1);
            T = RP_DIM(xs[g], 2);
            Dh = RP_DIM(xs[g], 3);
        } else {
            npy_intp d[4] = {(npy_intp)B, (npy_intp)H, (npy_intp)T, (npy_intp)Dh};
            if (rp_check_shape(xs[g], name, 4, d, "(B, H, T, head_dim) like the first array of xs") < 0) goto fail;
        }
    }
    if (B < 0) {
        PyErr_SetString(PyExc_ValueError, "xs must hold at least one array (not only None)");
        goto fail;
    }
    if (rope_tables(co, so, rd_in, T, Dh, &cos, &sin, &rd) < 0) goto fail;
    if (rotate > 0 && !cos) {
        PyErr_Format(PyExc_ValueError, "rotate=%d needs the RoPE tables cos and sin; got None", rotate);
        goto fail;
    }
    npy_intp yd[3] = {(npy_intp)B, (npy_intp)T, (npy_intp)(groups * H * Dh)};
    if (!(y = empty_f32(3, yd))) goto fail;
    const float *sptr[16];
    for (int g = 0; g < groups; g++) sptr[g] = xs[g] ? RP_F32(xs[g]) : NULL;
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_heads_merge(sptr, groups, rotate, cos ? RP_F32(cos) : NULL, sin ? RP_F32(sin) : NULL, rd, layout,
                                   RP_F32(y), B, T, H, Dh);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "heads_merge");
        goto fail;
    }
    Py_DECREF(seq);
    Py_XDECREF(cos);
    Py_XDECREF(sin);
    for (int g = 0; g < 16; g++) Py_XDECREF(xs[g]);
    return (PyObject *)y;
fail:
    Py_XDECREF(seq);
    Py_XDECREF(cos);
    Py_XDECREF(sin);
    Py_XDECREF(y);
    for (int g = 0; g < 16; g++) Py_XDECREF(xs[g]);
    return NULL;
}

static PyObject *py_heads_rotate(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *yo, *co = Py_None, *so = Py_None;
    Py_ssize_t n_heads, rd_in = -1;
    int groups = 1, rotate = 0, inverse = 0, rc = 0, layout;
    const char *lay = "interleaved";
    PyArrayObject *cos = NULL, *sin = NULL;
    int64_t rd = 0;
    rp_arg spec[] = {RP_ARG_OBJ("y", &yo),
                     RP_ARG_SSIZE("n_heads", &n_heads),
                     RP_ARG_OPTIONAL,
                     RP_ARG_KWONLY,
                     RP_ARG_INT("groups", &groups),
                     RP_ARG_INT("rotate", &rotate),
                     RP_ARG_OBJ("cos", &co),
                     RP_ARG_OBJ("sin", &so),
                     RP_ARG_SSIZE("rotary_dim", &rd_in),
                     RP_ARG_STR("layout", &lay),
                     RP_ARG_BOOL("inverse", &inverse),
                     RP_ARG_END};
    if (rp_args_parse(args, kw, "heads_rotate", spec) < 0) return NULL;
    /* in place: y itself, never a converted copy */
    if (!PyArray_Check(yo)) {
        PyErr_Format(PyExc_TypeError, "y must be a numpy.ndarray of float32; got %s", Py_TYPE(yo)->tp_name);
        goto fail;
    }
    PyArrayObject *y = (PyArrayObject *)yo;
    if (PyArray_TYPE(y) != NPY_FLOAT32 || PyArray_NDIM(y) != 3 || !PyArray_IS_C_CONTIGUOUS(y) ||
        !PyArray_ISALIGNED(y) || !PyArray_ISNOTSWAPPED(y) || !PyArray_ISWRITEABLE(y)) {
        char shp[96];
        rp_shape_str(y, shp, sizeof shp);
        PyErr_Format(PyExc_ValueError,
                     "heads_rotate turns y in place: y must be a writeable, C-contiguous float32 array "
                     "(B, T, groups*n_heads*head_dim); got dtype %s, shape %s%s%s",
                     PyArray_DESCR(y)->typeobj->tp_name, shp, PyArray_IS_C_CONTIGUOUS(y) ? "" : ", not C-contiguous",
                     PyArray_ISWRITEABLE(y) ? "" : ", read-only");
        goto fail;
    }
    if ((layout = heads_layout_checks(y, n_heads, groups, rotate, lay, co, so, rd_in, &cos, &sin, &rd)) < 0) goto fail;
    const int64_t B = RP_DIM(y, 0), T = RP_DIM(y, 1), H = (int64_t)n_heads, Dh = RP_DIM(y, 2) / (groups * H);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_blocks_heads_rotate(RP_F32(y), groups, rotate, cos ? RP_F32(cos) : NULL, sin ? RP_F32(sin) : NULL, rd,
                                    layout, inverse, B, T, H, Dh);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        rp_raise_code(rc, "heads_rotate");
        goto fail;
    }
    rp_args_release(spec);
    Py_XDECREF(cos);
    Py_XDECREF(sin);
    Py_RETURN_NONE;
fail:
    rp_args_release(spec);
    Py_XDECREF(cos);
    Py_XDECREF(sin);
    return NULL;
}

PyMethodDef rp_methods_blocks[] = {
    {"add_layer_norm_fwd", (PyCFunction)(void (*)(void))py_add_layer_norm_fwd, METH_VARARGS | METH_KEYWORDS,
     "add_layer_norm_fwd(x, y, weight, bias, eps=1e-5) -> (s, h, mean, rstd)\n"
     "s = x + y (..., D); h = layer_norm(s) * weight + bias; mean, rstd (N,) per row."},
    {"add_layer_norm_bwd", (PyCFunction)(void (*)(void))py_add_layer_norm_bwd, METH_VARARGS | METH_KEYWORDS,
     "add_layer_norm_bwd(s, weight, mean, rstd, dh, ds=None, *, need_x=True, need_weight=True, need_bias=True)\n"
     "-> (dx, dweight, dbias): dx = ds + layer_norm backward of dh (the gradient of both x and y)."},
    {"linear_gelu_fwd", (PyCFunction)(void (*)(void))py_linear_gelu_fwd, METH_VARARGS | METH_KEYWORDS,
     "linear_gelu_fwd(x, weight, bias=None, approximate='tanh') -> (h, a)\n"
     "h (M, N) = x (M, K) @ weight (N, K).T + bias; a = gelu(h)."},
    {"linear_gelu_bwd", (PyCFunction)(void (*)(void))py_linear_gelu_bwd, METH_VARARGS | METH_KEYWORDS,
     "linear_gelu_bwd(x, weight, h, da, approximate='tanh', *, need_x=True, need_weight=True, need_bias=True)\n"
     "-> (dx, dweight, dbias) of a = gelu(x @ weight.T + bias) given da."},
    {"heads_split", (PyCFunction)(void (*)(void))py_heads_split, METH_VARARGS | METH_KEYWORDS,
     "heads_split(y, n_heads, *, groups=1, rotate=0, cos=None, sin=None, rotary_dim=-1, layout='interleaved')\n"
     "-> tuple of `groups` arrays (B, H, T, Dh) from y (B, T, groups*H*Dh); the first `rotate` are rotated by\n"
     "the RoPE tables cos, sin (T, rotary_dim/2)."},
    {"heads_merge", (PyCFunction)(void (*)(void))py_heads_merge, METH_VARARGS | METH_KEYWORDS,
     "heads_merge(xs, *, rotate=0, cos=None, sin=None, rotary_dim=-1, layout='interleaved') -> y (B, T, G*H*Dh)\n"
     "the adjoint of heads_split: xs G arrays (B, H, T, Dh) or None (zeros); the first `rotate` rotated back."},
    {"heads_rotate", (PyCFunction)(void (*)(void))py_heads_rotate, METH_VARARGS | METH_KEYWORDS,
     "heads_rotate(y, n_heads, *, groups=1, rotate=0, cos=None, sin=None, rotary_dim=-1, layout='interleaved',\n"
     "    inverse=False) -> None\n"
     "In place: the first `rotate` groups of y (B, T, groups*H*Dh) turned as heads_split turns them\n"
     "(inverse=True: turned back, as heads_merge does); y must be a writeable C-contiguous float32 array."},
    {NULL, NULL, 0, NULL},
};
