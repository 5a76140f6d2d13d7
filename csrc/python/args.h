/* Argument helpers of the bridge (args.c). Included through bridge.h. */
#ifndef RELPOS_ARGS_H
#define RELPOS_ARGS_H

/* Inputs. Each returns a NEW reference to a C-contiguous, aligned array, or
 * NULL with TypeError/ValueError set naming `name`. */
PyArrayObject *rp_in_f32(PyObject *obj, const char *name);  /* float32 ndarray only */
PyArrayObject *rp_in_i64(PyObject *obj, const char *name);  /* any integer ndarray -> int64 */
PyArrayObject *rp_in_mask(PyObject *obj, const char *name); /* bool ndarray -> uint8 (npy_bool) */
/* Same, but None gives NULL with no error set (optional arguments). Check PyErr_Occurred(). */
PyArrayObject *rp_in_f32_opt(PyObject *obj, const char *name);

/* Shape checks. dims[i] < 0 means "any". desc is the expected shape in words,
 * e.g. "(B, H, T, D)". Return 0 or -1 with ValueError:
 *   "q must have shape (B, H, T, D); got (2, 8, 128)" */
int rp_check_ndim(PyArrayObject *a, const char *name, int ndim, const char *desc);
int rp_check_shape(PyArrayObject *a, const char *name, int ndim, const npy_intp *dims, const char *desc);

/* Outputs. obj NULL or None: allocate a new zero-filled float32 array of `dims`.
 * Otherwise obj must be a float32, C-contiguous, aligned, writeable ndarray of
 * exactly `dims`; a new reference to it is returned. */
PyArrayObject *rp_out_f32(PyObject *obj, const char *name, int ndim, const npy_intp *dims);
PyArrayObject *rp_new_f32(int ndim, const npy_intp *dims);   /* zero-filled */
PyArrayObject *rp_empty_f32(int ndim, const npy_intp *dims); /* uninitialised (the kernel writes it all) */

/* An optional result: a (the reference is stolen) or None. */
static inline PyObject *rp_none_or(PyArrayObject *a) {
    if (a) return (PyObject *)a;
    Py_RETURN_NONE;
}

/* Format "(2, 8, 128)" into buf. */
void rp_shape_str(PyArrayObject *a, char *buf, size_t n);

/* ValueError "<what>; got <repr of v>" (PyErr_Format has no %g); returns NULL. */
PyObject *rp_raise_float(const char *what, double v);

/* Map a negative core return code to a Python exception; returns NULL. */
PyObject *rp_raise_code(int code, const char *where);

/* Non-negative int64 sizes and flags from Python ints with a named error. */
int rp_check_nonneg(int64_t v, const char *name);

/* ---- argument specs: one table per wrapper --------------------------------
 * A wrapper lists its Python arguments in order, each with the variable it
 * lands in; one call parses them (positional or keyword, through
 * PyArg_ParseTupleAndKeywords, so its messages are CPython's), converts the
 * arrays (rp_in_f32 / rp_in_i64 / rp_in_mask) and checks their ndim; one call
 * drops the arrays again, on the success and the fail path alike:
 *
 *     PyArrayObject *x = NULL, *w = NULL, *out = NULL;
 *     double eps = 1e-5;
 *     rp_arg spec[] = {RP_ARG_F32("x", &x, 2, "(N, D)"), RP_ARG_F32_OPT("weight", &w, 1, "(D,)"),
 *                      RP_ARG_OPTIONAL, RP_ARG_DOUBLE("eps", &eps), RP_ARG_END};
 *     if (rp_args_parse(args, kw, "norm_fwd", spec) < 0) return NULL;
 *     ... checks across arguments, outputs, the core call ...
 *     rp_args_release(spec);
 *     return (PyObject *)out;
 * fail:
 *     rp_args_release(spec);
 *     Py_XDECREF(out);
 *     return NULL;
 *
 * Arrays: ndim >= 0 is checked ("x must have shape (N, D) (2 dimensions); got
 * (3,)"), -1 accepts any; the _OPT kinds take None (or an omitted argument) as
 * NULL. RP_ARG_OPTIONAL ('|') and RP_ARG_KWONLY ('$') start the optional and
 * the keyword-only arguments, as in a PyArg format. Scalars keep their default
 * when omitted. The destination pointers are type-checked at compile time. */
#define RP_ARGS_MAX 24 /* format units per wrapper */

typedef struct {
    const char *name;  /* keyword, and the argument's name in error messages */
    char unit;         /* PyArg format unit: 'O' array or object, 'd', 'f', 'p', 'i', 'n', 'L', 's';
                          '|' and '$' markers; 0 ends the table */
    char conv;         /* arrays: 'f' float32, 'i' int64, 'b' bool mask; 0: a raw object */
    char opt;          /* arrays: None gives NULL */
    int ndim;          /* arrays: expected ndim, or -1 */
    const char *shape; /* arrays: the expected shape in words, e.g. "(B, H, T, D)" */
    void *dst;
    PyObject *raw; /* arrays: the object before conversion (borrowed) */
} rp_arg;

static inline void *rp_argp_array(PyArrayObject **p) { return p; }
static inline void *rp_argp_object(PyObject **p) { return p; }
static inline void *rp_argp_double(double *p) { return p; }
static inline void *rp_argp_float(float *p) { return p; }
static inline void *rp_argp_int(int *p) { return p; }
static inline void *rp_argp_ssize(Py_ssize_t *p) { return p; }
static inline void *rp_argp_llong(long long *p) { return p; }
static inline void *rp_argp_str(const char **p) { return p; }

#define RP_ARG_ARRAY_(nm, c, o, d, nd, shp) \
    { .name = (nm), .unit = 'O', .conv = (c), .opt = (o), .ndim = (nd), .shape = (shp), .dst = rp_argp_array(d) }
#define RP_ARG_F32(nm, d, nd, shp) RP_ARG_ARRAY_(nm, 'f', 0, d, nd, shp)
#define RP_ARG_F32_OPT(nm, d, nd, shp) RP_ARG_ARRAY_(nm, 'f', 1, d, nd, shp)
#define RP_ARG_I64(nm, d, nd, shp) RP_ARG_ARRAY_(nm, 'i', 0, d, nd, shp)
#define RP_ARG_I64_OPT(nm, d, nd, shp) RP_ARG_ARRAY_(nm, 'i', 1, d, nd, shp)
#define RP_ARG_MASK(nm, d, nd, shp) RP_ARG_ARRAY_(nm, 'b', 0, d, nd, shp)
#define RP_ARG_MASK_OPT(nm, d, nd, shp) RP_ARG_ARRAY_(nm, 'b', 1, d, nd, shp)
#define RP_ARG_OBJ(nm, d) \
    { .name = (nm), .unit = 'O', .dst = rp_argp_object(d) }
#define RP_ARG_DOUBLE(nm, d) \
    { .name = (nm), .unit = 'd', .dst = rp_argp_double(d) }
#define RP_ARG_FLOAT(nm, d) \
    { .name = (nm), .unit = 'f', .dst = rp_argp_float(d) }
#define RP_ARG_BOOL(nm, d) \
    { .name = (nm), .unit = 'p', .dst = rp_argp_int(d) }
#define RP_ARG_INT(nm, d) \
    { .name = (nm), .unit = 'i', .dst = rp_argp_int(d) }
#define RP_ARG_SSIZE(nm, d) \
    { .name = (nm), .unit = 'n', .dst = rp_argp_ssize(d) }
#define RP_ARG_LLONG(nm, d) \
    { .name = (nm), .unit = 'L', .dst = rp_argp_llong(d) }
#define RP_ARG_STR(nm, d) \
    { .name = (nm), .unit = 's', .dst = rp_argp_str(d) }
#define RP_ARG_OPTIONAL \
    { .unit = '|' }
#define RP_ARG_KWONLY \
    { .unit = '$' }
#define RP_ARG_END \
    { .unit = 0 }

/* Parse, convert and check as the table says; fname names the function in
 * CPython's messages. 0, or -1 with the exception set and every array of the
 * table released (NULL). */
int rp_args_parse(PyObject *args, PyObject *kw, const char *fname, rp_arg *spec);
/* Drop the arrays of the table (their variables become NULL); safe to repeat. */
void rp_args_release(rp_arg *spec);

#endif /* RELPOS_ARGS_H */
