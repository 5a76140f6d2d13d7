/* Shared argument parsing of the attention bridges (bridge_attn.c for the
 * materialised kernel, bridge_fused.c for the fused one). One parser turns the
 * Python arguments into an rp_attn, validating every shape against the
 * others, so both paths accept exactly the same calls and raise the same
 * errors.
 *
 * Python signatures (both paths; the fused one has no return_weights):
 *
 *   fwd(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None,
 *       qr=None, relk=None, relk_ix=None, relq=None, relq_ix=None,
 *       relv=None, relv_ix=None, bias_vec=None, bias_ix=None, bias_full=None,
 *       return_weights=False)
 *     -> (out (B, H, Tq, Dv), lse (B, H, Tq)) or (out, lse, probs (B, H, Tq, Tk))
 *
 *   bwd(q, k, v, out, lse, dout, *, <the same keywords but return_weights>,
 *       needs=None)
 *     -> dict {name: gradient} for name in needs (default: every tensor given),
 *        names from "q", "k", "v", "qr", "relk", "relq", "relv", "bias_vec",
 *        "bias_full"; each gradient shaped like its input.
 *
 * Arguments: q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) float32;
 * key_padding_mask (B, Tk) bool, True = padding; q_offset >= 0; scale a finite
 * float (None: 1/sqrt(D)); qr (B, H, Tq, D); relk (1|H, R, D), relq (1|H, R, D),
 * relv (1|H, R, Dv), bias_vec (1|H, R), each with its index (sign, off),
 * sign +1 or -1 (see attention.h); bias_full (1|B, H, Tq, Tk).
 *
 * Use (fused bridge):
 *     rp_attn_call C;
 *     if (rp_attn_parse_fwd(args, kw, "attention_fwd", 0, &C) < 0) return NULL;
 *     ... Py_BEGIN_ALLOW_THREADS rc = rp_attn_fused_fwd(&C.a, RP_F32(C.out), RP_F32(C.lse)); ...
 *     return rp_attn_finish_fwd(&C, rc, "attention_fwd");   (frees C)
 *   and for the backward rp_attn_parse_bwd / C.g / rp_attn_finish_bwd.
 */
#ifndef RELPOS_BRIDGE_ATTN_H
#define RELPOS_BRIDGE_ATTN_H

#include "bridge.h" /* Python.h first */
#include "attention.h"

typedef struct {
    rp_attn a;
    /* owned references to the inputs (NULL when absent) */
    PyArrayObject *q, *k, *v, *qr, *relk, *relq, *relv, *bias_vec, *bias_full, *mask;
    /* forward: results (allocated by the parser); backward: inputs out, lse, dout */
    PyArrayObject *out, *lse, *probs, *dout;
    /* backward: gradients asked for (allocated by the parser, NULL = not wanted) */
    PyArrayObject *dq, *dk, *dv, *dqr, *drelk, *drelq, *drelv, *dbias_vec, *dbias_full;
    rp_attn_grads g; /* pointers into the arrays above */
    int return_weights;
} rp_attn_call;

/* Parse and validate a forward call, allocate out, lse (and probs when
 * return_weights is given and allow_weights is set; with allow_weights 0 the
 * keyword is not accepted). 0 or -1 with a Python exception set (C freed). */
int rp_attn_parse_fwd(PyObject *args, PyObject *kw, const char *fname, int allow_weights, rp_attn_call *C);

/* Parse and validate a backward call and allocate the gradients asked for. */
int rp_attn_parse_bwd(PyObject *args, PyObject *kw, const char *fname, rp_attn_call *C);

/* After the core call: raise on rc < 0, else build the result
 * ((out, lse) / (out, lse, probs) or the gradient dict). Always frees C. */
PyObject *rp_attn_finish_fwd(rp_attn_call *C, int rc, const char *fname);
PyObject *rp_attn_finish_bwd(rp_attn_call *C, int rc, const char *fname);

/* Drop every reference held by C (safe to call twice). */
void rp_attn_call_free(rp_attn_call *C);

#endif
