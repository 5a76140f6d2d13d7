/* Argument helpers of the bridge (args.c). Included through bridge.h. */
#ifndef RELPOS_ARGS_H
#define RELPOS_ARGS_H

/* Inputs. Each returns a NEW reference to a C-contiguous, aligned array, or
 * NULL with TypeError/ValueError set naming `name`. */
PyArrayObject *rp_in_f32(PyObject *obj, const char *name);   /* float32 ndarray only */
PyArrayObject *rp_in_i64(PyObject *obj, const char *name);   /* any integer ndarray -> int64 */
PyArrayObject *rp_in_mask(PyObject *obj, const char *name);  /* bool ndarray -> uint8 (npy_bool) */
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
PyArrayObject *rp_new_f32(int ndim, const npy_intp *dims); /* zero-filled */
PyArrayObject *rp_empty_f32(int ndim, const npy_intp *dims); /* uninitialised (the kernel writes it all) */

/* Format "(2, 8, 128)" into buf. */
void rp_shape_str(PyArrayObject *a, char *buf, size_t n);

/* Map a negative core return code to a Python exception; returns NULL. */
PyObject *rp_raise_code(int code, const char *where);

/* Non-negative int64 sizes and flags from Python ints with a named error. */
int rp_check_nonneg(int64_t v, const char *name);

#endif /* RELPOS_ARGS_H */
