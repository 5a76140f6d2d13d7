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
 * masked (-inf) where causal && j > ia, or key_padding_mask[b, j] != 0.
 * p_ij = softmax_j(s_ij); out_i = Σ_j p_ij (v_j + relv[hr, idx(relv_ix, ia, j)]).
 * lse_i = log Σ_j exp(s_ij); a fully masked row has out = 0, lse = -INFINITY
 * and contributes zero gradients.
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

typedef struct {
    int sign; /* +1 or -1 */
    int64_t off;
    int64_t R; /* table length; 0 = channel absent */
} rp_relidx;

static inline int64_t rp_relidx_at(rp_relidx ix, int64_t ia, int64_t j) {
    int64_t n = (int64_t)ix.sign * (ia - j) + ix.off;
    return n < 0 ? 0 : (n >= ix.R ? ix.R - 1 : n);
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
} rp_attn;

/* Gradients (any pointer may be NULL = not wanted). They are written, not
 * accumulated, shaped like their inputs. */
typedef struct {
    float *dq, *dk, *dv;
    float *dqr, *drelk, *drelq, *drelv;
    float *dbias_vec, *dbias_full;
} rp_attn_grads;

/* Materialised path (attention_materialized.c): probs (B, H, Tq, Tk) may be NULL. */
int rp_attn_mat_fwd(const rp_attn *a, float *out, float *lse, float *probs);
int rp_attn_mat_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout, rp_attn_grads *g);

/* Fused path (attention_flash.c): O(T·D) extra memory. */
int rp_attn_fused_fwd(const rp_attn *a, float *out, float *lse);
int rp_attn_fused_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout, rp_attn_grads *g);

#endif
