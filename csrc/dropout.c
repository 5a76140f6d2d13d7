/* Dropout with a counter-based mask: element i of a call with seed s is kept
 * when u(s, i) >= p, u from a splitmix64-style hash of (s, i). No state, no
 * stored mask: the backward recomputes it from the seed. */
#include "ops.h"

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 53 random bits. The seed is hashed first so nearby
 * seeds give unrelated streams. */
static inline double uniform(uint64_t key, int64_t i) {
    uint64_t h = mix64(key ^ mix64((uint64_t)i + 0x9E3779B97F4A7C15ULL));
    return (double)(h >> 11) * 0x1.0p-53;
}

static inline uint64_t seed_key(uint64_t seed) { return mix64(seed * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL); }

int rp_ops_dropout_mask(uint8_t *mask, int64_t n, float p, uint64_t seed) {
    if (n < 0 || !(p >= 0.0f && p < 1.0f)) return RP_EINVAL;
    const uint64_t key = seed_key(seed);
    const double pd = (double)p;
    RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
    for (int64_t i = 0; i < n; i++) mask[i] = uniform(key, i) >= pd;
    return RP_OK;
}

int rp_ops_dropout_fwd(const float *x, float *y, int64_t n, float p, uint64_t seed) {
    if (n < 0 || !(p >= 0.0f && p < 1.0f)) return RP_EINVAL;
    const uint64_t key = seed_key(seed);
    const double pd = (double)p;
    const float scale = 1.0f / (1.0f - p);
    RP_OPS_PFOR(n >= 8192)
    for (int64_t i = 0; i < n; i++) y[i] = uniform(key, i) >= pd ? x[i] * scale : 0.0f;
    return RP_OK;
}

/* Same mask and scale as the forward: dx = grad * mask / (1 - p). */
int rp_ops_dropout_bwd(const float *grad, float *dx, int64_t n, float p, uint64_t seed) {
    return rp_ops_dropout_fwd(grad, dx, n, p, seed);
}
