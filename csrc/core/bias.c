/* Toeplitz bias vectors (ALiBi, T5 buckets, KERPLE, Sandwich) and their
 * backward into the encodings' parameters. See bias.h for the layout.
 *
 * Forwards are parallel over (head, distance); backwards reduce each head's
 * row in one fixed order (one thread per head), accumulating in double. */
#include "bias.h"

#include <math.h>
#include <stdlib.h>

static inline int64_t iabs64(int64_t x) { return x < 0 ? -x : x; }

/* ---- ALiBi ------------------------------------------------------------ */

/* f(d): the distance ALiBi multiplies by -m_h. */
static inline double alibi_f(int64_t d, int symmetric) {
    if (symmetric) return (double)iabs64(d);
    return d > 0 ? (double)d : 0.0;
}

/* slopes (H,) -> out (H, N) */
int rp_bias_alibi_fwd(const float *slopes, int64_t H, int64_t d0, int64_t N, int symmetric, float *out) {
    if (H < 0 || N < 0) return RP_EINVAL;
    int64_t total = H * N;
    RP_BIAS_PARALLEL_FOR(total)
    for (int64_t t = 0; t < total; t++) {
        int64_t h = t / N, n = t % N;
        out[t] = (float)(-(double)slopes[h] * alibi_f(d0 + n, symmetric) + 0.0); /* no -0 */
    }
    return RP_OK;
}

/* g (H, N) -> dslopes (H,) */
int rp_bias_alibi_bwd(const float *g, int64_t H, int64_t d0, int64_t N, int symmetric, float *dslopes) {
    if (H < 0 || N < 0) return RP_EINVAL;
    RP_BIAS_PARALLEL_FOR(H * N)
    for (int64_t h = 0; h < H; h++) {
        const float *gr = g + h * N;
        double acc = 0.0;
        for (int64_t n = 0; n < N; n++) acc -= (double)gr[n] * alibi_f(d0 + n, symmetric);
        dslopes[h] = (float)acc;
    }
    return RP_OK;
}

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

static int t5_args_ok(int64_t H, int64_t nb, int64_t max_distance, int bidirectional, int64_t N) {
    if (H < 0 || N < 0) return 0;
    int64_t half = bidirectional ? nb / 2 : nb;
    if (half < 2) return 0;                 /* max_exact would be 0 */
    if (max_distance <= half / 2) return 0; /* log(max_distance / max_exact) <= 0 */
    return 1;
}

/* table (H, nb) -> out (H, N) */
int rp_bias_t5_fwd(const float *table, int64_t H, int64_t nb, int64_t max_distance, int bidirectional, int64_t d0,
                   int64_t N, float *out) {
    if (!t5_args_ok(H, nb, max_distance, bidirectional, N)) return RP_EINVAL;
    int64_t *bucket = (int64_t *)rp_malloc((size_t)(N > 0 ? N : 1) * sizeof(int64_t));
    if (!bucket) return RP_ENOMEM;
    RP_BIAS_PARALLEL_FOR(N * 16)
    for (int64_t n = 0; n < N; n++) bucket[n] = rp_t5_bucket(-(d0 + n), bidirectional, nb, max_distance);
    int64_t total = H * N;
    RP_BIAS_PARALLEL_FOR(total)
    for (int64_t t = 0; t < total; t++) {
        int64_t h = t / N, n = t % N;
        out[t] = table[h * nb + bucket[n]];
    }
    rp_free(bucket);
    return RP_OK;
}

/* g (H, N) -> dtable (H, nb) */
int rp_bias_t5_bwd(const float *g, int64_t H, int64_t nb, int64_t max_distance, int bidirectional, int64_t d0,
                   int64_t N, float *dtable) {
    if (!t5_args_ok(H, nb, max_distance, bidirectional, N)) return RP_EINVAL;
    int64_t *bucket = (int64_t *)rp_malloc((size_t)(N > 0 ? N : 1) * sizeof(int64_t));
    double *acc = (double *)rp_calloc((size_t)(H > 0 ? H : 1) * (size_t)nb, sizeof(double));
    if (!bucket || !acc) {
        rp_free(bucket);
        rp_free(acc);
        return RP_ENOMEM;
    }
    RP_BIAS_PARALLEL_FOR(N * 16)
    for (int64_t n = 0; n < N; n++) bucket[n] = rp_t5_bucket(-(d0 + n), bidirectional, nb, max_distance);
    RP_BIAS_PARALLEL_FOR(H * N)
    for (int64_t h = 0; h < H; h++) {
        double *a = acc + h * nb;
        const float *gr = g + h * N;
        for (int64_t n = 0; n < N; n++) a[bucket[n]] += (double)gr[n];
        for (int64_t b = 0; b < nb; b++) dtable[h * nb + b] = (float)a[b];
    }
    rp_free(bucket);
    rp_free(acc);
    return RP_OK;
}

/* ---- KERPLE -------------------------------------------------------------- */

/* r1, r2 (H,) -> out (H, N) */
int rp_bias_kerple_fwd(const float *r1, const float *r2, int64_t H, int variant, int64_t d0, int64_t N, float *out) {
    if (H < 0 || N < 0 || (variant != 0 && variant != 1)) return RP_EINVAL;
    int64_t total = H * N;
    RP_BIAS_PARALLEL_FOR(total)
    for (int64_t t = 0; t < total; t++) {
        int64_t h = t / N, n = t % N;
        double a = (double)iabs64(d0 + n), p = r1[h], s = r2[h];
        double v = variant == 0 ? -p * log1p(s * a) : (a == 0.0 ? 0.0 : -p * pow(a, s));
        out[t] = (float)(v + 0.0);
    }
    return RP_OK;
}

/* g (H, N) -> dr1, dr2 (H,) */
int rp_bias_kerple_bwd(const float *r1, const float *r2, const float *g, int64_t H, int variant, int64_t d0, int64_t N,
                       float *dr1, float *dr2) {
    if (H < 0 || N < 0 || (variant != 0 && variant != 1)) return RP_EINVAL;
    RP_BIAS_PARALLEL_FOR(H * N)
    for (int64_t h = 0; h < H; h++) {
        const float *gr = g + h * N;
        double p = r1[h], s = r2[h], a1 = 0.0, a2 = 0.0;
        for (int64_t n = 0; n < N; n++) {
            double a = (double)iabs64(d0 + n), gv = gr[n];
            if (variant == 0) {
                a1 -= gv * log1p(s * a);
                a2 -= gv * p * a / (1.0 + s * a);
            } else if (a > 0.0) { /* at d = 0 both terms vanish (0^s = 0, log 0 term taken as 0) */
                double pw = pow(a, s);
                a1 -= gv * pw;
                a2 -= gv * p * pw * log(a);
            }
        }
        if (dr1) dr1[h] = (float)a1;
        if (dr2) dr2[h] = (float)a2;
    }
    return RP_OK;
}

/* ---- Sandwich ------------------------------------------------------------- */

/* scales (H,) -> out (H, N) */
int rp_bias_sandwich_fwd(const float *scales, int64_t H, int64_t dim, int64_t d0, int64_t N, float *out) {
    if (H < 0 || N < 0 || dim < 2 || dim % 2) return RP_EINVAL;
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
    for (int64_t k = 0; k < half; k++) omega[k] = pow(10000.0, -2.0 * (double)k / (double)dim);
    RP_BIAS_PARALLEL_FOR(N * half)
    for (int64_t n = 0; n < N; n++) {
        double d = (double)(d0 + n), s = 0.0;
        for (int64_t k = 0; k < half; k++) s += cos(d * omega[k]);
        prof[n] = s;
    }
    int64_t total = H * N;
    RP_BIAS_PARALLEL_FOR(total)
    for (int64_t t = 0; t < total; t++) out[t] = (float)((double)scales[t / N] * prof[t % N]);
    rp_free(prof);
    rp_free(omega);
    return RP_OK;
}
