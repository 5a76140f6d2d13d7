/* blocks area: fused layers of the training step (blocks.c).
 *
 * Each pass here replaces two or more passes over the activations (or a NumPy
 * copy in the Python layer) of the unfused path, with the same formulas as the
 * ops/posenc kernels it replaces (the results are the same bits). Shapes in
 * the comments; (N, D) is N rows of D contiguous floats. Backward functions
 * write their outputs. Results are bit-identical for any thread count: row
 * reductions go through min(N, RP_OPS_NCHUNK) fixed chunks summed in order.
 */
#ifndef RELPOS_BLOCKS_H
#define RELPOS_BLOCKS_H

#include "relpos.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- residual add + LayerNorm --------------------------------------------
 * s (N, D) = x + y; h (N, D) = (s - mean) * rstd * w + b; mean, rstd (N).
 * w, b (D) are required. */
int rp_blocks_add_layernorm_fwd(const float *x, const float *y, const float *w, const float *b, float *s, float *h,
                                float *mean, float *rstd, int64_t N, int64_t D, float eps);
/* dx (N, D) = ds + LayerNorm_bwd(dh) (ds may be NULL: 0), the gradient of
 * both x and y; dw, db (D) = sums over rows of dh * hhat and dh. dx, dw and db
 * may each be NULL (not computed). */
int rp_blocks_add_layernorm_bwd(const float *s, const float *w, const float *mean, const float *rstd, const float *dh,
                                const float *ds, float *dx, float *dw, float *db, int64_t N, int64_t D);

/* ---- Linear + GELU ---------------------------------------------------------
 * h (M, N) = x (M, K) · w (N, K)ᵀ + b (N) (b may be NULL); a (M, N) = gelu(h),
 * kind RP_ACT_GELU_TANH or RP_ACT_GELU_ERF (ops.h). */
int rp_blocks_linear_gelu_fwd(int kind, const float *x, const float *w, const float *b, float *h, float *a, int64_t M,
                              int64_t N, int64_t K);
/* dh (M, N) = gelu'(h) * da (scratch the caller gives; written); then
 * db (N) = Σ_rows dh, dx (M, K) = dh · w, dw (N, K) = dhᵀ · x. dx, dw, db may
 * be NULL (not computed). */
int rp_blocks_linear_gelu_bwd(int kind, const float *x, const float *w, const float *h, const float *da, float *dh,
                              float *dx, float *dw, float *db, int64_t M, int64_t N, int64_t K);

/* ---- head split / merge with an optional rotary transform -----------------
 * Split: y (B, T, G*H*Dh) holds G groups of H heads per row (e.g. q, k, v);
 * outs[g][b, h, t, :] = rot_t(y[b, t, (g*H + h)*Dh .. + Dh]) for g < G, where
 * groups g < rotate are turned by rot_t: channel pairs of the first rd
 * channels by the angles of row t (cos, sin: (T, rd/2)) with the rotation
 * of posenc.h (rp_rotary_row), layout RP_ROPE_INTERLEAVED (pairs 2k, 2k+1) or
 * RP_ROPE_HALF (pairs k, k + rd/2); the other groups are copied.
 * outs[g]: (B, H, T, Dh). One pass (one parallel region) over the rows of y. */
int rp_blocks_heads_split(const float *y, int64_t G, int64_t rotate, const float *cos, const float *sin, int64_t rd,
                          int layout, float *const *outs, int64_t B, int64_t T, int64_t H, int64_t Dh);
/* Merge, the adjoint of split: y[b, t, (g*H + h)*Dh ..] = rot_tᵀ(srcs[g][b, h, t, :])
 * (rotation by minus the angle for g < rotate); srcs[g] == NULL writes zeros. */
int rp_blocks_heads_merge(const float *const *srcs, int64_t G, int64_t rotate, const float *cos, const float *sin,
                          int64_t rd, int layout, float *y, int64_t B, int64_t T, int64_t H, int64_t Dh);
/* In place: the groups g < rotate of y (B, T, G*H*Dh) turned by rot_t (inverse != 0:
 * by rot_tᵀ), the others left as they are. The same bits as heads_split /
 * heads_merge give those groups; the q and k thirds of a fused projection made
 * ready for attention without copying them into the head layout. */
int rp_blocks_heads_rotate(float *y, int64_t G, int64_t rotate, const float *cos, const float *sin, int64_t rd,
                           int layout, int inverse, int64_t B, int64_t T, int64_t H, int64_t Dh);

#ifdef __cplusplus
}
#endif

#endif /* RELPOS_BLOCKS_H */
