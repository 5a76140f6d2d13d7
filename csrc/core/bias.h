/* Channel B (bias) and CoPE kernels: forward and backward into each
 * encoding's own parameters.
 *
 * Toeplitz vectors. For a window of Tq queries at absolute positions
 * q_offset..q_offset+Tq-1 and Tk keys at 0..Tk-1, the distance d = ia - j runs
 * over d0 .. d0+N-1 with d0 = q_offset - (Tk-1) and N = Tq + Tk - 1. Every
 * vector kernel writes out[h, n] = b_h(d0 + n), which attention reads with
 * bias_ix = (+1, Tk-1-q_offset, N) (attention.h). The kernels take d0 and N
 * directly so that a caller can evaluate any distance range.
 *
 * Backward functions write (not accumulate) their outputs. Every reduction
 * is summed in a fixed order whatever the thread count.
 */
#ifndef RELPOS_BIAS_H
#define RELPOS_BIAS_H

#include "relpos.h"

/* Parallel loops only when there is enough work: a parallel region costs
 * microseconds (much more on a loaded machine), and these kernels are often
 * tiny. Every result is independent of the thread count either way. */
#define RP_BIAS_MIN_PARALLEL 32768
#if RP_HAVE_OPENMP
#define RP_BIAS_PARALLEL_FOR(work) \
    RP_PRAGMA(omp parallel for schedule(static) num_threads(rp_get_num_threads()) if ((work) >= RP_BIAS_MIN_PARALLEL))
#define RP_BIAS_PARALLEL_PARTS(work) \
    RP_PRAGMA(omp parallel for schedule(dynamic, 1) num_threads(rp_get_num_threads()) if ((work) >= RP_BIAS_MIN_PARALLEL))
#else
#define RP_BIAS_PARALLEL_FOR(work)
#define RP_BIAS_PARALLEL_PARTS(work)
#endif

/* ALiBi (Press et al. 2022).
 * slopes (H,), out (H, N).
 * symmetric = 0 (causal): out = -m_h * max(d, 0)   (d < 0 is masked anyway)
 * symmetric = 1         : out = -m_h * |d|
 * bwd: dslopes[h] = sum_n g[h, n] * (-f(d0 + n)). */
int rp_bias_alibi_fwd(const float *slopes, int64_t H, int64_t d0, int64_t N, int symmetric, float *out);
int rp_bias_alibi_bwd(const float *g, int64_t H, int64_t d0, int64_t N, int symmetric, float *dslopes);

/* T5 bucket of relative position rel = j - i (Raffel et al. 2020), computed in
 * double precision. num_buckets >= 2 (even when bidirectional), max_distance
 * > num_buckets/2 (or /4 when bidirectional). */
int64_t rp_t5_bucket(int64_t rel, int bidirectional, int64_t num_buckets, int64_t max_distance);

/* T5 bias: table (H, nb), out (H, N) = table[h, bucket(-(d0 + n))].
 * bwd: dtable (H, nb) = scatter-add of g (H, N) over buckets. */
int rp_bias_t5_fwd(const float *table, int64_t H, int64_t nb, int64_t max_distance, int bidirectional, int64_t d0,
                   int64_t N, float *out);
int rp_bias_t5_bwd(const float *g, int64_t H, int64_t nb, int64_t max_distance, int bidirectional, int64_t d0,
                   int64_t N, float *dtable);

/* KERPLE (Chi et al. 2022). r1, r2 (H,); out (H, N).
 * variant 0 (log):   out = -r1 * log(1 + r2 |d|)
 * variant 1 (power): out = -r1 * |d|^r2          (d/dr2 is 0 at d = 0)
 * r1, r2 are used as given (the caller clamps them, see bias.py).
 * bwd: dr1, dr2 (H,). */
int rp_bias_kerple_fwd(const float *r1, const float *r2, int64_t H, int variant, int64_t d0, int64_t N, float *out);
int rp_bias_kerple_bwd(const float *r1, const float *r2, const float *g, int64_t H, int variant, int64_t d0, int64_t N,
                       float *dr1, float *dr2);

/* Sandwich (Chi et al. 2023): out[h, n] = scales[h] * sum_{k < dim/2} cos(d * w_k),
 * w_k = 10000^(-2k/dim). scales (H,); no backward (no parameters). */
int rp_bias_sandwich_fwd(const float *scales, int64_t H, int64_t dim, int64_t d0, int64_t N, float *out);

/* FIRE (Li et al. 2024), causal. MLP 1 -> W -> H with ReLU:
 *   x(i, j) = psi(ia - j) / (psi(max(|L|, ia)) + eps), psi(t) = log(|c| t + 1)
 *   out[h, i, j] = b2[h] + sum_k W2[h, k] relu(W1[k] x + b1[k])   for j <= ia, else 0.
 * W1, b1 (W,), W2 (H, W), b2 (H,), c, L scalars. out (H, Tq, Tk).
 * bwd: g (H, Tq, Tk) -> dW1, db1 (W,), dW2 (H, W), db2 (H,), dc, dL (1,). */
typedef struct {
    const float *W1, *b1, *W2, *b2;
    float c, L, eps;
    int64_t W, H;
} rp_fire;

int rp_fire_fwd(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset, float *out);
int rp_fire_bwd(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset, const float *g, float *dW1, float *db1,
                float *dW2, float *db2, float *dc, float *dL);

/* CoPE (Golovneva et al. 2024), causal. q (B, H, Tq, D), k (B, H, Tk, D),
 * e (P, D) position embeddings shared by the heads. For j <= ia:
 *   g_it = sigmoid(scale * q_i.k_t), p_ij = min(sum_{t=j..ia} g_it, P - 1),
 *   z_i[p] = q_i.e[p], out[b, h, i, j] = (1 - w) z_i[floor p] + w z_i[ceil p], w = p - floor p;
 * out = 0 for j > ia. bwd: g (B, H, Tq, Tk) -> dq, dk (like q, k), de (P, D). */
int rp_cope_fwd(const float *q, const float *k, const float *e, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                int64_t P, int64_t q_offset, float scale, float *out);
int rp_cope_bwd(const float *q, const float *k, const float *e, const float *g, int64_t B, int64_t H, int64_t Tq,
                int64_t Tk, int64_t D, int64_t P, int64_t q_offset, float scale, float *dq, float *dk, float *de);

#endif
