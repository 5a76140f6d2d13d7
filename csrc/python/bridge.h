/* The CPython/NumPy bridge's common header: every file of csrc/python/
 * includes it first (Python.h must come before any system header). The core
 * (csrc/core/) never includes anything from here. */
#ifndef RELPOS_BRIDGE_H
#define RELPOS_BRIDGE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL relpos_ARRAY_API
#ifndef RP_BRIDGE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "core/relpos.h"

#include "args.h"

/* Method tables, one per area (csrc/python/<area>.c); module.c adds them all. */
extern PyMethodDef rp_methods_gemm[];
extern PyMethodDef rp_methods_ops[];
extern PyMethodDef rp_methods_optim[];
extern PyMethodDef rp_methods_posenc[];
extern PyMethodDef rp_methods_bias[];
extern PyMethodDef rp_methods_blocks[];
extern PyMethodDef rp_methods_attn[];

#define RP_F32(a) ((float *)PyArray_DATA(a))
#define RP_I64(a) ((int64_t *)PyArray_DATA(a))
#define RP_U8(a) ((uint8_t *)PyArray_DATA(a))
#define RP_DIM(a, i) ((int64_t)PyArray_DIM((a), (i)))

#endif
