/* Bridge for the fused area: parse (shared parser of bridge_attn.h, so the
 * fused and materialised calls accept exactly the same arguments), release the
 * GIL, call the core. */
#include "bridge_attn.h"

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
    if (rp_attn_parse_bwd(args, kw, "attention_bwd", &C) < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rp_attn_fused_bwd(&C.a, RP_F32(C.out), RP_F32(C.lse), RP_F32(C.dout), &C.g);
    Py_END_ALLOW_THREADS
    return rp_attn_finish_bwd(&C, rc, "attention_bwd");
}

PyMethodDef rp_methods_fused[] = {
    {"attention_fwd", (PyCFunction)(void (*)(void))py_attention_fwd, METH_VARARGS | METH_KEYWORDS,
     "attention_fwd(q, k, v, *, causal=True, key_padding_mask=None, q_offset=0, scale=None, qr=None,\n"
     "    relk=None, relk_ix=None, relq=None, relq_ix=None, relv=None, relv_ix=None, bias_vec=None,\n"
     "    bias_ix=None, bias_full=None) -> (out, lse)\n\n"
     "Fused (FlashAttention-2 style) attention with all four channels (see csrc/attention.h);\n"
     "extra memory O(T*D), never O(Tq*Tk). q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv)\n"
     "float32; out (B, H, Tq, Dv), lse (B, H, Tq) (-inf on fully masked rows, whose out is 0)."},
    {"attention_bwd", (PyCFunction)(void (*)(void))py_attention_bwd, METH_VARARGS | METH_KEYWORDS,
     "attention_bwd(q, k, v, out, lse, dout, *, <keywords of attention_fwd>, needs=None) -> dict\n\n"
     "Gradients of the fused attention from out and lse of attention_fwd, keyed by input name\n"
     "(q, k, v, qr, relk, relq, relv, bias_vec, bias_full); needs lists the names wanted\n"
     "(None: every tensor given). Bit-identical for any thread count."},
    {NULL, NULL, 0, NULL},
};
