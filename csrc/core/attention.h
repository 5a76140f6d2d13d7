/* The attention call shared by the materialised kernel (attention_materialized.c) and
 * the fused kernel (attention_flash.c). The kernels know the four channels,
 * not the encodings (DESIGN.md §4); an encoding fills channels.
 *
 * Positions: query i (0..Tq-1) sits at absolute position ia = q_offset + i;
 * key j (0..Tk-1) at absolute position j.
 *
 * Logit:  s_ij = scale * ( q_i·k_j
 *                        + qr_i·relk[hr, idx(relk_ix, ia, j)]      (channel C, c2p / Shaw keys / XL)
 *                        + k_j·relq[hr, idx(relq_ix, ia, j)] )     (channel C, p2c)
 *              + bias_vec[hb, idx(bias_ix, ia, j)]                 (channel B, Toeplitz)
 *              + bias_full[bb, h, i, j]                            (channel B, any b(i,j))
 *              + slope[hp, g(x)] * x + icpt[hp, g(x)]              (channel B, piecewise linear)
 *                with x = pwl_u[idx(pwl_ix, ia, j)] * pwl_w[i], g(x) = #{pwl_bp <= x}
 * masked where causal && j > ia, or key_padding_mask[b, j] != 0.
 * p_ij = softmax_j(s_ij); out_i = Σ_j p_ij (v_j + relv[hr, idx(relv_ix, ia, j)]).
 * lse_i = log Σ_j exp(s_ij).
 *
 * The piecewise-linear channel carries any bias f_h(x_ij) that is piecewise
 * linear in a scalar x = u(distance) * w(query) with breakpoints shared by the
 * heads: FIRE's MLP with one input (encodings/bias.py) in O(R + Tq + H*S)
 * inputs. S = number of segments (pwl_bp has S - 1 ascending breakpoints).
 * The fused kernel forms each pair's terms once per call, in a scratch table
 * of (2 + Hp) Tq Tk floats, when that is at most 16 MB and B * H >= 2 (they do
 * not depend on b); above that it forms them tile by tile, and nothing of
 * size (Tq, Tk) is made. The same bits either way.
 *
 * Non-finite values (every path gives the same answer, that of torch's
 * softmax; tests/reference.py attention):
 *  - a masked key takes no part at all: its logit, value and table rows are
 *    never read into the row's result or gradients;
 *  - a NaN or +inf logit on an unmasked key makes the row NaN: out (all of
 *    it), lse, and every gradient the row feeds;
 *  - a -inf logit has weight 0; the value of an unmasked key is multiplied by
 *    its weight even when that weight is 0, so a NaN (or inf) value gives NaN;
 *  - a row with no unmasked key, or whose unmasked logits are all -inf, has
 *    out = 0, lse = -INFINITY and contributes zero gradients (torch's SDPA
 *    gives the same zeros for a fully masked row; its plain softmax gives NaN).
 *  So lse is finite, NaN (a NaN row) or -INFINITY (an empty row).
 *
 * Relative index: idx(ix, ia, j) = clamp(ix.sign * (ia - j) + ix.off, 0, ix.R - 1).
 *   Shaw (a_ij = w[clip(j-i,-k,k)]):     sign -1, off k,  R 2k+1
 *   DeBERTa c2p δ(i,j) = clip(i-j)[-k,k): sign +1, off k,  R 2k
 *   DeBERTa p2c δ(j,i):                   sign -1, off k,  R 2k
 *   full Toeplitz vector over i-j:        sign +1, off Tk-1-q_offset, R Tq+Tk-1
 * Per-head tables have a leading dim Hr (or Hb) of 1 (shared) or H.
 */
#ifndef RELPOS_ATTENTION_H
#define RELPOS_ATTENTION_H

#include "relpos.h"

#include <string.h>

typedef struct {
    int sign; /* +1 or -1 */
    int64_t off;
    int64_t R; /* table length; 0 = channel absent */
} rp_relidx;

static inline int64_t rp_relidx_at(rp_relidx ix, int64_t ia, int64_t j) {
    int64_t n = (int64_t)ix.sign * (ia - j) + ix.off;
    return n < 0 ? 0 : (n >= ix.R ? ix.R - 1 : n);
}

/* Where the rows of a (B, H, T, D)-shaped tensor sit: row (b, h, i) starts
 * b*sb + h*sh + i*si floats from the base, its D floats contiguous. All three
 * 0 (a zeroed struct) means the dense layout, sb = H*T*D, sh = T*D, si = D.
 * Anything else lets q, k and v be views of one (B, T, 3, H, D) projection
 * (si = 3*H*D, sh = D): the fused kernel reads them there, without a copy into
 * the head layout, and can write dq, dk, dv back into such a block. */
typedef struct {
    int64_t sb, sh, si;
} rp_attn_rows;

/* r with the dense layout of (B, H, T, D) filled in when r is all 0. */
static inline rp_attn_rows rp_attn_rows_or_dense(rp_attn_rows r, int64_t H, int64_t T, int64_t D) {
    if (r.sb == 0 && r.sh == 0 && r.si == 0) {
        r.si = D;
        r.sh = T * D;
        r.sb = H * T * D;
    }
    return r;
}

static inline int rp_attn_rows_dense(rp_attn_rows r, int64_t H, int64_t T, int64_t D) {
    return (r.sb == 0 && r.sh == 0 && r.si == 0) || (r.si == D && r.sh == T * D && r.sb == H * T * D);
}

typedef struct {
    int64_t B, H, Tq, Tk, D, Dv;
    int64_t q_offset;
    float scale;
    int causal;
    const uint8_t *key_padding_mask; /* (B, Tk), nonzero = padding (ignored); or NULL */

    const float *q; /* (B, H, Tq, D)  */
    const float *k; /* (B, H, Tk, D)  */
    const float *v; /* (B, H, Tk, Dv) */

    /* channel C */
    const float *qr;   /* (B, H, Tq, D) query for relk; NULL = use q */
    const float *relk; /* (Hrk, relk_ix.R, D) or NULL */
    int64_t Hrk;
    rp_relidx relk_ix;
    const float *relq; /* (Hrq, relq_ix.R, D) or NULL */
    int64_t Hrq;
    rp_relidx relq_ix;
    const float *relv; /* (Hrv, relv_ix.R, Dv) or NULL */
    int64_t Hrv;
    rp_relidx relv_ix;

    /* channel B */
    const float *bias_vec; /* (Hb, bias_ix.R) or NULL */
    int64_t Hb;
    rp_relidx bias_ix;
    const float *bias_full; /* (Bf, H, Tq, Tk) or NULL */
    int64_t Bf;
    /* channel B, piecewise linear: all NULL or all given */
    const float *pwl_u;                /* (pwl_ix.R,) */
    rp_relidx pwl_ix;                  /* indexes pwl_u */
    const float *pwl_w;                /* (Tq,) */
    const float *pwl_bp;               /* (pwl_S - 1,) ascending, no NaN */
    const float *pwl_slope, *pwl_icpt; /* (Hp, pwl_S) */
    int64_t pwl_S, Hp;

    /* Layout of out (and, in the backward, of out and dout): 0 = (B, H, Tq, Dv);
     * 1 = (B, Tq, H, Dv), the heads merged as an output projection reads them
     * (fused kernel only; the materialised one returns RP_EINVAL). lse stays
     * (B, H, Tq) either way. */
    int merged;

    /* Row layouts of q, k, v (zeroed: dense; fused kernel only, the
     * materialised one returns RP_EINVAL for any other). */
    rp_attn_rows q_rows, k_rows, v_rows;
} rp_attn;

/* Offset of row (b, h, i) of out / dout in the layout a->merged picks; rows
 * are Dv floats, rp_attn_out_ld apart. */
static inline int64_t rp_attn_out_row(const rp_attn *a, int64_t b, int64_t h, int64_t i) {
    return a->merged ? ((b * a->Tq + i) * a->H + h) * a->Dv : ((b * a->H + h) * a->Tq + i) * a->Dv;
}

static inline int64_t rp_attn_out_ld(const rp_attn *a) { return a->merged ? a->H * a->Dv : a->Dv; }

/* Gradients (any pointer may be NULL = not wanted). They are written, not
 * accumulated, shaped like their inputs. */
typedef struct {
    float *dq, *dk, *dv;
    float *dqr, *drelk, *drelq, *drelv;
    float *dbias_vec, *dbias_full;
    float *dpwl_u, *dpwl_w, *dpwl_slope, *dpwl_icpt;
    /* Row layouts of dq, dk, dv (zeroed: dense; fused kernel only). Only their
     * rows are written: with q, k, v's gradients in one (B, T, 3, H, D) block,
     * each fills its third. */
    rp_attn_rows dq_rows, dk_rows, dv_rows;
} rp_attn_grads;

/* Segment of x among nbp ascending breakpoints: the number of them <= x
 * (0 for NaN x). A count, not a search, for the usual few breakpoints: it
 * vectorises and has no branch to mispredict. */
static inline int64_t rp_pwl_seg(const float *bp, int64_t nbp, float x) {
    if (nbp <= 64) {
        int64_t n = 0;
        for (int64_t t = 0; t < nbp; t++) n += bp[t] <= x;
        return n;
    }
    int64_t lo = 0, hi = nbp;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (bp[mid] <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* 1 if any of x[0..n) is NaN or infinite. Integer test of the exponent bits:
 * a reduction the compiler can vectorise (no float reassociation). */
static inline int rp_any_nonfinite(const float *x, int64_t n) {
    if (!x) return 0;
    uint32_t bad = 0;
    for (int64_t t = 0; t < n; t++) {
        uint32_t b;
        memcpy(&b, x + t, sizeof b);
        bad |= (uint32_t)((b & 0x7f800000u) == 0x7f800000u);
    }
    return bad != 0;
}

/* The (B, H, T, D) rows laid out as r (see rp_attn_rows) walked as contiguous runs:
 * one run for the dense layout; one of H*D floats per row (b, i) when the heads sit
 * side by side (sh == D: a q/k/v projection block); else one of D per row (b, h, i).
 * run(start, n, ctx) is called on each in order; the walk stops at, and returns, the
 * first nonzero result (0 when every run returned 0). A run that only reads takes
 * x as given (the const is the caller's). */
typedef int (*rp_attn_run_fn)(float *x, int64_t n, void *ctx);
static inline int rp_attn_rows_runs(float *x, rp_attn_rows r, int64_t B, int64_t H, int64_t T, int64_t D,
                                    rp_attn_run_fn run, void *ctx) {
    int rc = 0;
    r = rp_attn_rows_or_dense(r, H, T, D);
    if (r.si == D && r.sh == T * D && r.sb == H * T * D) return run(x, B * H * T * D, ctx);
    if (r.sh == D) {
        for (int64_t b = 0; b < B && !rc; b++)
            for (int64_t i = 0; i < T && !rc; i++) rc = run(x + b * r.sb + i * r.si, H * D, ctx);
        return rc;
    }
    for (int64_t b = 0; b < B && !rc; b++)
        for (int64_t h = 0; h < H && !rc; h++)
            for (int64_t i = 0; i < T && !rc; i++) rc = run(x + b * r.sb + h * r.sh + i * r.si, D, ctx);
    return rc;
}

static inline int rp_nonfinite_run(float *x, int64_t n, void *ctx) {
    (void)ctx;
    return rp_any_nonfinite(x, n);
}

/* 1 if any float of the (B, H, T, D) rows laid out as r is NaN or infinite. */
static inline int rp_any_nonfinite_rows(const float *x, rp_attn_rows r, int64_t B, int64_t H, int64_t T, int64_t D) {
    return x ? rp_attn_rows_runs((float *)x, r, B, H, T, D, rp_nonfinite_run, NULL) : 0;
}

/* Materialised path (attention_materialized.c): probs (B, H, Tq, Tk) may be NULL. */
int rp_attn_mat_fwd(const rp_attn *a, float *out, float *lse, float *probs);
int rp_attn_mat_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout, rp_attn_grads *g);

/* Fused path (attention_flash.c): O(T·D) extra memory. */
int rp_attn_fused_fwd(const rp_attn *a, float *out, float *lse);
/* Name of the tile kernels the fused path uses now: "avx512", "avx2" or "portable". */
const char *rp_attn_fused_kernel_name(void);
int rp_attn_fused_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout, rp_attn_grads *g);

#endif
