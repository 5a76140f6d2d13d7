/* Bridge for the gemm area: parse, validate, release the GIL, call the core. */
#include "bridge.h"
#include "core/gemm.h"

#include <stdio.h>

/* New uninitialised float32 array (the core writes every element). */
static PyArrayObject *new_empty(int ndim, const npy_intp *dims) { return rp_empty_f32(ndim, dims); }

/* out= if given (checked), else a new uninitialised array. */
static PyArrayObject *out_or_new(PyObject *out, const char *name, int ndim, const npy_intp *dims) {
    if (out == NULL || out == Py_None) return new_empty(ndim, dims);
    return rp_out_f32(out, name, ndim, dims);
}

/* ValueError if the output's bytes overlap an input's. */
static int check_no_overlap(PyArrayObject *out, PyArrayObject *in, const char *in_name) {
    if (!in || PyArray_NBYTES(out) == 0 || PyArray_NBYTES(in) == 0) return 0;
    const char *o0 = PyArray_BYTES(out), *o1 = o0 + PyArray_NBYTES(out);
    const char *i0 = PyArray_BYTES(in), *i1 = i0 + PyArray_NBYTES(in);
    if (o0 < i1 && i0 < o1) {
        PyErr_Format(PyExc_ValueError, "out must not share memory with %s", in_name);
        return -1;
    }
    return 0;
}

static int check_bool_kw(PyObject *v, const char *name, int *dst) {
    if (v == NULL) return 0;
    if (!PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a bool; got %s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    *dst = v == Py_True;
    return 0;
}

/* Shared by gemm and gemm_batched: batched = 1 means 3-D operands (Bt, ., .). */
static PyObject *gemm_common(PyObject *args, PyObject *kwargs, int batched) {
    const char *fname = batched ? "gemm_batched" : "gemm";
    PyObject *out_obj = Py_None, *ta_obj = NULL, *tb_obj = NULL;
    double alpha = 1.0, beta = 0.0;
    PyArrayObject *a = NULL, *b = NULL, *out = NULL;
    int ta = 0, tb = 0;
    rp_arg spec[] = {RP_ARG_F32("a", &a, -1, NULL),
                     RP_ARG_F32("b", &b, -1, NULL),
                     RP_ARG_OPTIONAL,
                     RP_ARG_OBJ("out", &out_obj),
                     RP_ARG_KWONLY,
                     RP_ARG_OBJ("trans_a", &ta_obj),
                     RP_ARG_OBJ("trans_b", &tb_obj),
                     RP_ARG_DOUBLE("alpha", &alpha),
                     RP_ARG_DOUBLE("beta", &beta),
                     RP_ARG_END};
    if (rp_args_parse(args, kwargs, fname, spec) < 0) return NULL;
    if (check_bool_kw(ta_obj, "trans_a", &ta) < 0 || check_bool_kw(tb_obj, "trans_b", &tb) < 0) goto fail;
    const int nd = batched ? 3 : 2;
    if (rp_check_ndim(a, "a", nd, batched ? (ta ? "(Bt, K, M)" : "(Bt, M, K)") : (ta ? "(K, M)" : "(M, K)")) < 0)
        goto fail;
    if (rp_check_ndim(b, "b", nd, batched ? (tb ? "(Bt, N, K)" : "(Bt, K, N)") : (tb ? "(N, K)" : "(K, N)")) < 0)
        goto fail;
    const int o = batched;
    int64_t bt = batched ? RP_DIM(a, 0) : 1;
    int64_t M = ta ? RP_DIM(a, o + 1) : RP_DIM(a, o);
    int64_t Ka = ta ? RP_DIM(a, o) : RP_DIM(a, o + 1);
    int64_t Kb = tb ? RP_DIM(b, o + 1) : RP_DIM(b, o);
    int64_t N = tb ? RP_DIM(b, o) : RP_DIM(b, o + 1);
    if (batched && RP_DIM(b, 0) != bt) {
        char sa[128], sb[128];
        rp_shape_str(a, sa, sizeof sa);
        rp_shape_str(b, sb, sizeof sb);
        PyErr_Format(PyExc_ValueError, "%s: a and b must have the same batch size; got a %s and b %s", fname, sa, sb);
        goto fail;
    }
    if (Ka != Kb) {
        char sa[128], sb[128];
        rp_shape_str(a, sa, sizeof sa);
        rp_shape_str(b, sb, sizeof sb);
        PyErr_Format(PyExc_ValueError,
                     "%s: inner dimensions differ: op(a) has K=%lld (a %s, trans_a=%s), op(b) has K=%lld "
                     "(b %s, trans_b=%s)",
                     fname, (long long)Ka, sa, ta ? "True" : "False", (long long)Kb, sb, tb ? "True" : "False");
        goto fail;
    }
    if (beta != 0.0 && (out_obj == NULL || out_obj == Py_None)) {
        char *r = PyOS_double_to_string(beta, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        PyErr_Format(PyExc_ValueError, "%s: beta=%s (non-zero) needs out= (the C to accumulate into)", fname,
                     r ? r : "?");
        PyMem_Free(r);
        goto fail;
    }
    npy_intp dims[3];
    if (batched) {
        dims[0] = bt, dims[1] = M, dims[2] = N;
    } else {
        dims[0] = M, dims[1] = N;
    }
    out = out_or_new(out_obj, "out", nd, dims);
    if (!out) goto fail;
    if (check_no_overlap(out, a, "a") < 0 || check_no_overlap(out, b, "b") < 0) goto fail;
    int64_t lda = RP_DIM(a, o + 1), ldb = RP_DIM(b, o + 1);
    int rc;
    const float *pa = RP_F32(a), *pb = RP_F32(b);
    float *pc = RP_F32(out);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_gemm_batched(ta, tb, M, N, Ka, (float)alpha, pa, lda, pb, ldb, (float)beta, pc, N, bt, M * Ka, Ka * N,
                             M * N);
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

static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return gemm_common(args, kwargs, 0);
}

static PyObject *py_gemm_batched(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return gemm_common(args, kwargs, 1);
}

static PyObject *py_linear_fwd(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    PyObject *out_obj = Py_None;
    PyArrayObject *x = NULL, *w = NULL, *bias = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("x", &x, 2, "(M, K)"),     RP_ARG_F32("w", &w, 2, "(N, K)"), RP_ARG_OPTIONAL,
                     RP_ARG_F32_OPT("b", &bias, -1, NULL), RP_ARG_OBJ("out", &out_obj),      RP_ARG_END};
    if (rp_args_parse(args, kwargs, "linear_fwd", spec) < 0) return NULL;
    int64_t M = RP_DIM(x, 0), K = RP_DIM(x, 1), N = RP_DIM(w, 0);
    if (RP_DIM(w, 1) != K) {
        char sx[128], sw[128];
        rp_shape_str(x, sx, sizeof sx);
        rp_shape_str(w, sw, sizeof sw);
        PyErr_Format(PyExc_ValueError,
                     "linear_fwd: w must have shape (N, K) with K = x.shape[1] = %lld; got x %s, w %s", (long long)K,
                     sx, sw);
        goto fail;
    }
    if (bias) {
        npy_intp bd[1] = {(npy_intp)N};
        if (rp_check_shape(bias, "b", 1, bd, "(N,)") < 0) goto fail;
    }
    npy_intp dims[2] = {(npy_intp)M, (npy_intp)N};
    out = out_or_new(out_obj, "out", 2, dims);
    if (!out) goto fail;
    if (check_no_overlap(out, x, "x") < 0 || check_no_overlap(out, w, "w") < 0 || check_no_overlap(out, bias, "b") < 0)
        goto fail;
    int rc;
    const float *px = RP_F32(x), *pw = RP_F32(w), *pb = bias ? RP_F32(bias) : NULL;
    float *py = RP_F32(out);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_gemm_linear_fwd(M, N, K, px, pw, pb, py);
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "linear_fwd");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_colsum(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    PyObject *out_obj = Py_None;
    PyArrayObject *x = NULL, *out = NULL;
    rp_arg spec[] = {RP_ARG_F32("x", &x, 2, "(M, N)"), RP_ARG_OPTIONAL, RP_ARG_OBJ("out", &out_obj), RP_ARG_END};
    if (rp_args_parse(args, kwargs, "colsum", spec) < 0) return NULL;
    int64_t M = RP_DIM(x, 0), N = RP_DIM(x, 1);
    npy_intp dims[1] = {(npy_intp)N};
    out = out_or_new(out_obj, "out", 1, dims);
    if (!out) goto fail;
    if (check_no_overlap(out, x, "x") < 0) goto fail;
    int rc;
    const float *px = RP_F32(x);
    float *po = RP_F32(out);
    Py_BEGIN_ALLOW_THREADS
        rc = rp_colsum(px, M, N, po);
    Py_END_ALLOW_THREADS
    if (rc) {
        rp_raise_code(rc, "colsum");
        goto fail;
    }
    rp_args_release(spec);
    return (PyObject *)out;
fail:
    rp_args_release(spec);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_fma_peak_gflops(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"threads", "seconds", NULL};
    int threads = 0;
    double seconds = 0.2;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|id:fma_peak_gflops", kwlist, &threads, &seconds)) return NULL;
    if (threads < 0)
        return PyErr_Format(PyExc_ValueError, "threads must be >= 1 (or 0 for relpos' count); got %d", threads);
    if (!(seconds > 0.0) || seconds > 60.0) return rp_raise_float("seconds must be in (0, 60]", seconds);
    double g;
    Py_BEGIN_ALLOW_THREADS
        g = rp_fma_peak_gflops(threads, seconds);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(g);
}

static PyObject *py_gemm_kernel(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"name", NULL};
    PyObject *name = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:gemm_kernel", kwlist, &name)) return NULL;
    if (name != Py_None) {
        static const char *names[] = {"auto", "avx512", "avx2", "portable"};
        if (!PyUnicode_Check(name))
            return PyErr_Format(PyExc_TypeError, "name must be a str or None; got %s", Py_TYPE(name)->tp_name);
        int which = -1;
        for (int i = 0; i < 4; i++)
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0) which = i;
        if (which < 0)
            return PyErr_Format(PyExc_ValueError, "name must be one of 'auto', 'avx512', 'avx2', 'portable'; got %R",
                                name);
        int rc = rp_gemm_set_kernel(which);
        if (rc == RP_ENOSIMD)
            return PyErr_Format(PyExc_ValueError, "gemm kernel %R is not available on this CPU/build", name);
        if (rc) return rp_raise_code(rc, "gemm_kernel");
    }
    return PyUnicode_FromString(rp_gemm_kernel_name());
}

PyMethodDef rp_methods_gemm[] = {
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> out (M, N)\n"
     "out = alpha * op(a) @ op(b) + beta * out; a (M, K) or (K, M) if trans_a, b (K, N) or (N, K) if trans_b.\n"
     "float32 only; beta != 0 needs out=."},
    {"gemm_batched", (PyCFunction)(void (*)(void))py_gemm_batched, METH_VARARGS | METH_KEYWORDS,
     "gemm_batched(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> out (Bt, M, N)\n"
     "gemm on each of Bt pairs: a (Bt, M, K) (or (Bt, K, M)), b (Bt, K, N) (or (Bt, N, K))."},
    {"linear_fwd", (PyCFunction)(void (*)(void))py_linear_fwd, METH_VARARGS | METH_KEYWORDS,
     "linear_fwd(x, w, b=None, out=None) -> y (M, N) = x (M, K) @ w (N, K).T + b (N,)"},
    {"colsum", (PyCFunction)(void (*)(void))py_colsum, METH_VARARGS | METH_KEYWORDS,
     "colsum(x, out=None) -> (N,): sums of the columns of x (M, N), deterministic order."},
    {"fma_peak_gflops", (PyCFunction)(void (*)(void))py_fma_peak_gflops, METH_VARARGS | METH_KEYWORDS,
     "fma_peak_gflops(threads=0, seconds=0.2) -> float: measured float32 FMA GFLOP/s on the instruction set of\n"
     "the GEMM kernel in use (see gemm_kernel()); threads=0 uses relpos' thread count."},
    {"gemm_kernel", (PyCFunction)(void (*)(void))py_gemm_kernel, METH_VARARGS | METH_KEYWORDS,
     "gemm_kernel(name=None) -> str: the GEMM micro-kernel in use ('avx512', 'avx2', 'portable');\n"
     "name='auto'|'avx512'|'avx2'|'portable' chooses one first (tests, benchmarks). force_portable(True) wins."},
    {NULL, NULL, 0, NULL},
};
