/* Bias kernels: the T5 bucket index, the Sandwich table, and CoPE.
 *
 * The Toeplitz encodings (ALiBi, T5, KERPLE, learned) are written with relpos
 * ops over the window of distances d = ia - j that attention needs
 * (encodings/base.py DistanceBias); only Sandwich, which has no parameters,
 * tabulates through C. FIRE is evaluated inside the attention kernels (the
 * piecewise-linear channel of attention.h). A new built-in bias with a C fast
 * path: its kernel here (and bias.c), its wrapper in python/bias.c, its
 * encoding in encodings/bias.py.
 *
 * Every result is independent of the thread count.
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
    RP_PRAGMA(omp parallel for schedule(static) num_threads(rp_par_threads()) if ((work) >= RP_BIAS_MIN_PARALLEL))
#define RP_BIAS_PARALLEL_PARTS(work) \
    RP_PRAGMA(omp parallel for schedule(dynamic, 1) num_threads(rp_par_threads()) if ((work) >= RP_BIAS_MIN_PARALLEL))
#else
#define RP_BIAS_PARALLEL_FOR(work)
#define RP_BIAS_PARALLEL_PARTS(work)
#endif

/* T5 bucket of relative position rel = j - i (Raffel et al. 2020), computed in
 * double precision. num_buckets >= 2 (even when bidirectional), max_distance
 * > num_buckets/2 (or /4 when bidirectional). */
int64_t rp_t5_bucket(int64_t rel, int bidirectional, int64_t num_buckets, int64_t max_distance);

/* Sandwich (Chi et al. 2023): out[h, n] = scales[h] * sum_{k=first}^{first+dim/2-1} cos(d[n] * w_k),
 * w_k = 10000^(-2k/dim); first 0 the paper's frequencies, 1 NeMo's. scales (H,), d (N,)
 * any distances; no backward (no parameters). */
int rp_bias_sandwich_fwd(const float *scales, int64_t H, int64_t dim, int64_t first, const int64_t *d, int64_t N,
                         float *out);

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
