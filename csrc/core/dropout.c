/* Dropout with a counter-based mask. Element i of a call with seed s is kept
 * when u(s, i) >= p, where u(s, i) is 32 bits of SplitMix64's output number
 * i / 2 in the stream keyed by s (low half for even i, high half for odd i),
 * read as a number in [0, 1). The mask is a pure function of (s, i): it does
 * not depend on the thread count or the call order, nothing is stored, and
 * the backward regenerates it from the seed. */
#include "ops.h"

#include <math.h>

#define GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The stream key: the seed hashed, so nearby seeds give unrelated streams. */
static inline uint64_t seed_key(uint64_t seed) { return mix64(seed ^ 0x6A09E667F3BCC909ULL); }

/* 64 random bits for elements 2k and 2k + 1. */
static inline uint64_t pair_bits(uint64_t key, int64_t k) { return mix64(key + ((uint64_t)k + 1) * GOLDEN); }

/* keep iff u32 >= thr, thr = ceil(p * 2^32): P(keep) = 1 - p to within 2^-32. */
static inline uint64_t threshold(float p) { return (uint64_t)ceil((double)p * 4294967296.0); }

/* Elements per unit of parallel work (even, so pairs never straddle units). */
#define DROP_BLOCK 8192

/* One kernel for the three uses: x != NULL: y = x * (keep * scale); x == NULL:
 * mask[i] = keep. */
static int dropout_run(const float *x, float *y, uint8_t *mask, int64_t n, float p, uint64_t seed) {
    if (n < 0 || !(p >= 0.0f && p < 1.0f)) return RP_EINVAL;
    const uint64_t key = seed_key(seed), thr = threshold(p);
    const float scale = 1.0f / (1.0f - p);
    const int64_t nblk = (n + DROP_BLOCK - 1) / DROP_BLOCK;
    RP_OPS_PFOR(n >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t lo = b * DROP_BLOCK, hi = lo + DROP_BLOCK < n ? lo + DROP_BLOCK : n;
        const int64_t k0 = lo >> 1, k1 = hi >> 1; /* full pairs [2 k0, 2 k1) */
        if (x) {
            /* x times (0 or scale), a product and not a select: a dropped NaN or inf gives
             * NaN, as torch's x * mask. The factor comes from a table: no branch to mispredict. */
            const float factor[2] = {0.0f, scale};
            for (int64_t k = k0; k < k1; k++) {
                const uint64_t h = pair_bits(key, k);
                y[2 * k] = x[2 * k] * factor[(h & 0xFFFFFFFFULL) >= thr];
                y[2 * k + 1] = x[2 * k + 1] * factor[(h >> 32) >= thr];
            }
            if (hi & 1) y[hi - 1] = x[hi - 1] * factor[(pair_bits(key, k1) & 0xFFFFFFFFULL) >= thr];
        } else {
            for (int64_t k = k0; k < k1; k++) {
                const uint64_t h = pair_bits(key, k);
                mask[2 * k] = (h & 0xFFFFFFFFULL) >= thr;
                mask[2 * k + 1] = (h >> 32) >= thr;
            }
            if (hi & 1) mask[hi - 1] = (pair_bits(key, k1) & 0xFFFFFFFFULL) >= thr;
        }
    }
    return RP_OK;
}

/* mask: (n) bytes, 1 = kept. */
int rp_ops_dropout_mask(uint8_t *mask, int64_t n, float p, uint64_t seed) {
    return dropout_run(NULL, NULL, mask, n, p, seed);
}

/* x, y: (n). */
int rp_ops_dropout_fwd(const float *x, float *y, int64_t n, float p, uint64_t seed) {
    if (n > 0 && !x) return RP_EINVAL;
    return dropout_run(x, y, NULL, n, p, seed);
}

/* Same mask and scale as the forward: dx = grad * mask / (1 - p). */
int rp_ops_dropout_bwd(const float *grad, float *dx, int64_t n, float p, uint64_t seed) {
    return rp_ops_dropout_fwd(grad, dx, n, p, seed);
}
