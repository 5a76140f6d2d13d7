/* Bias kernels that are not plain relpos ops: the T5 bucket index and the
 * Sandwich table (no parameters, a sum of dim/2 cosines per distance). See
 * bias.h. ALiBi, T5, KERPLE and the learned bias are relpos ops over a
 * window of distances (encodings/bias.py); FIRE is the attention kernels'
 * piecewise-linear channel (attention.h). */
#include "bias.h"

#include <math.h>
#include <stdlib.h>

static inline int64_t iabs64(int64_t x) { return x < 0 ? -x : x; }

/* ---- T5 buckets --------------------------------------------------------- */

int64_t rp_t5_bucket(int64_t rel, int bidirectional, int64_t num_buckets, int64_t max_distance) {
    int64_t nb = num_buckets, ret = 0, n;
    if (bidirectional) {
        nb /= 2;
        if (rel > 0) ret += nb;
        n = iabs64(rel);
    } else {
        n = rel < 0 ? -rel : 0;
    }
    int64_t max_exact = nb / 2;
    if (n < max_exact) return ret + n;
    /* log-spaced buckets up to max_distance, then the last bucket */
    double v =
        log((double)n / (double)max_exact) / log((double)max_distance / (double)max_exact) * (double)(nb - max_exact);
    double cap = (double)(nb - 1 - max_exact);
    int64_t extra = v >= cap ? nb - 1 - max_exact : (int64_t)v;
    return ret + max_exact + extra;
}

/* ---- Sandwich ------------------------------------------------------------- */

/* scales (H,), d (N,) -> out (H, N): out[h, n] = scales[h] sum_{k=first}^{first+dim/2-1} cos(d[n] 10000^(-2k/dim)).
 * first = 0 is the paper's sum, first = 1 NeMo's (the highest frequency, k = 0, left out). */
int rp_bias_sandwich_fwd(const float *scales, int64_t H, int64_t dim, int64_t first, const int64_t *d, int64_t N,
                         float *out) {
    if (H < 0 || N < 0 || dim < 2 || dim % 2 || (first != 0 && first != 1)) return RP_EINVAL;
    int64_t half = dim / 2;
    /* half * sizeof(double) must not wrap around size_t (dim near 2**62 would make a tiny buffer) */
    if ((uint64_t)half > SIZE_MAX / sizeof(double)) return RP_ENOMEM;
    double *prof = (double *)rp_malloc((size_t)(N > 0 ? N : 1) * sizeof(double));
    double *omega = (double *)rp_malloc((size_t)half * sizeof(double));
    if (!prof || !omega) {
        rp_free(prof);
        rp_free(omega);
        return RP_ENOMEM;
    }
    for (int64_t k = 0; k < half; k++) omega[k] = pow(10000.0, -2.0 * (double)(k + first) / (double)dim);
    RP_BIAS_PARALLEL_FOR(N * half)
    for (int64_t n = 0; n < N; n++) {
        double x = (double)d[n], s = 0.0;
        for (int64_t k = 0; k < half; k++) s += cos(x * omega[k]);
        prof[n] = s;
    }
    int64_t total = H * N;
    RP_BIAS_PARALLEL_FOR(total)
    for (int64_t t = 0; t < total; t++) out[t] = (float)((double)scales[t / N] * prof[t % N]);
    rp_free(prof);
    rp_free(omega);
    return RP_OK;
}
