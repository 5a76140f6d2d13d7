/* ops area: elementwise arithmetic, activations, norms, softmax, cross-entropy,
 * embedding, dropout. Shapes in the comments; (N, D) means N rows of D
 * contiguous floats (the leading axes of a tensor flattened into N).
 *
 * Every function returns RP_OK or a negative RP_E* code. Backward functions
 * write their outputs (they do not accumulate). Output pointers documented as
 * "may be NULL" are skipped. Results are bit-identical for any thread count:
 * reductions over rows go through RP_OPS_NCHUNK fixed chunks summed in order.
 */
#ifndef RELPOS_OPS_H
#define RELPOS_OPS_H

#include "relpos.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound on the partial buffers of a row reduction (dweight, dbias, db). */
#define RP_OPS_NCHUNK 64

/* ---- elementwise binary: out[i] = op(a[i], b[i % nb]) -------------------
 * a, out: n floats; b: nb floats with nb == n (same shape), nb == 1 (scalar)
 * or n % nb == 0 (a vector over the last axis of a, broadcast over rows).
 * The reversed ops put the broadcast operand first: RSUB is b - a, RDIV b / a. */
enum { RP_OP_ADD = 0, RP_OP_SUB = 1, RP_OP_MUL = 2, RP_OP_DIV = 3, RP_OP_RSUB = 4, RP_OP_RDIV = 5 };
int rp_ops_binary_fwd(int op, const float *a, const float *b, float *out, int64_t n, int64_t nb);
/* da: n floats (may be NULL); db: nb floats, the gradient reduced over rows (may be NULL). */
int rp_ops_binary_bwd(int op, const float *a, const float *b, const float *grad, float *da, float *db,
                      int64_t n, int64_t nb);
/* out = alpha * x (n floats). */
int rp_ops_scale(const float *x, float alpha, float *out, int64_t n);
/* out (D) = sum over the N rows of g (N, D), in a fixed order. */
int rp_ops_sum_rows(const float *g, float *out, int64_t N, int64_t D);

/* ---- activations: y = f(x), dx = f'(x) * grad (n floats) ---------------- */
enum { RP_ACT_GELU_TANH = 0, RP_ACT_GELU_ERF = 1, RP_ACT_RELU = 2, RP_ACT_SILU = 3 };
int rp_ops_act_fwd(int kind, const float *x, float *y, int64_t n);
int rp_ops_act_bwd(int kind, const float *x, const float *grad, float *dx, int64_t n);

/* ---- LayerNorm over the last axis ---------------------------------------
 * x, y: (N, D); weight, bias: (D) (either may be NULL: 1 and 0);
 * mean, rstd: (N) saved for the backward. */
int rp_ops_layernorm_fwd(const float *x, const float *weight, const float *bias, float *y, float *mean,
                         float *rstd, int64_t N, int64_t D, float eps);
/* dx: (N, D), dweight, dbias: (D); each may be NULL. */
int rp_ops_layernorm_bwd(const float *x, const float *weight, const float *mean, const float *rstd,
                         const float *grad, float *dx, float *dweight, float *dbias, int64_t N, int64_t D);

/* ---- RMSNorm over the last axis: y = x * rstd * weight ------------------
 * x, y: (N, D); weight: (D) or NULL; rstd: (N). */
int rp_ops_rmsnorm_fwd(const float *x, const float *weight, float *y, float *rstd, int64_t N, int64_t D,
                       float eps);
int rp_ops_rmsnorm_bwd(const float *x, const float *weight, const float *rstd, const float *grad, float *dx,
                       float *dweight, int64_t N, int64_t D);

/* ---- softmax / log-softmax over the last axis of (N, D) ----------------- */
int rp_ops_softmax_fwd(const float *x, float *y, int64_t N, int64_t D);
/* dx = y * (grad - sum(grad * y)), from the saved output y. */
int rp_ops_softmax_bwd(const float *y, const float *grad, float *dx, int64_t N, int64_t D);
int rp_ops_log_softmax_fwd(const float *x, float *y, int64_t N, int64_t D);
/* dx = grad - exp(y) * sum(grad), from the saved output y. */
int rp_ops_log_softmax_bwd(const float *y, const float *grad, float *dx, int64_t N, int64_t D);

/* ---- fused log-softmax cross-entropy ------------------------------------
 * logits: (N, V); targets: (N) int64; rows whose target == ignore_index count
 * for nothing. lse: (N) saved (0 for ignored rows). *loss = mean over the
 * *count counted rows (0 when none). Targets must be in [0, V) or ignored:
 * RP_EINDEX otherwise (*bad gets the first bad row; may be NULL). */
int rp_ops_xent_fwd(const float *logits, const int64_t *targets, float *lse, float *loss, int64_t *count,
                    int64_t N, int64_t V, int64_t ignore_index, int64_t *bad);
/* dlogits: (N, V) = (softmax - onehot) * dloss / count; zero rows for ignored targets. */
int rp_ops_xent_bwd(const float *logits, const int64_t *targets, const float *lse, float dloss, int64_t count,
                    float *dlogits, int64_t N, int64_t V, int64_t ignore_index);

/* ---- embedding ---------------------------------------------------------
 * ids: (n) int64 in [0, V); weight: (V, D); out: (n, D). */
/* Index of the first id outside [0, V), or -1 when all are in range. */
int64_t rp_ops_first_bad_id(const int64_t *ids, int64_t n, int64_t V);
int rp_ops_embedding_fwd(const int64_t *ids, const float *weight, float *out, int64_t n, int64_t V, int64_t D);
/* dweight: (V, D) written: dweight[v] = sum of grad rows whose id is v, summed
 * in token order (parallel over column blocks of D). */
int rp_ops_embedding_bwd(const int64_t *ids, const float *grad, float *dweight, int64_t n, int64_t V, int64_t D);

/* ---- dropout -----------------------------------------------------------
 * Element i (flat index) is kept when u(seed, i) >= p, u a uniform [0, 1)
 * number from a counter-based hash of (seed, i): the mask depends on nothing
 * else (not the thread count, not the call order). Kept elements are scaled
 * by 1 / (1 - p). 0 <= p < 1. The backward regenerates the mask. */
int rp_ops_dropout_fwd(const float *x, float *y, int64_t n, float p, uint64_t seed);
int rp_ops_dropout_bwd(const float *grad, float *dx, int64_t n, float p, uint64_t seed);
/* mask[i] = 1 if element i is kept (n bytes). */
int rp_ops_dropout_mask(uint8_t *mask, int64_t n, float p, uint64_t seed);

#ifdef __cplusplus
}
#endif

/* Parallel loop that stays serial when the work is small. */
#if RP_HAVE_OPENMP
#define RP_OPS_PFOR(cond) RP_PRAGMA(omp parallel for schedule(static) num_threads(rp_get_num_threads()) if (cond))
#define RP_OPS_SIMD_SUM(v) RP_PRAGMA(omp simd reduction(+ : v))
#else
#define RP_OPS_PFOR(cond)
#define RP_OPS_SIMD_SUM(v)
#endif

/* Work below this many floats runs on one thread. */
#define RP_OPS_PAR_MIN 32768

#endif /* RELPOS_OPS_H */
