/* AVX2 form of the rotation of whole q/k projection rows in place (posenc.h,
 * rp_rotate_heads; blocks.c, heads_rotate): the n heads of a row share one
 * position, so its angles are loaded once and each head is a few vector
 * operations. Pair (a, b) by angle (c, s) and direction dir becomes
 *   a' = c a + (-(dir s)) b,   b' = c b + (dir s) a
 * which are rp_rotary_row's c a - (dir s) b and (dir s) a + c b, operation for
 * operation (x - y = x + (-y), and the sum commutes), each product and sum
 * rounded on its own: no contraction here (ISO C's -std=c11 default, no
 * fp-contract pragma), so the same bits as the portable form. Other rotary dims
 * go through the generic row rotation compiled here (8 pairs wide). Called only
 * when rp_simd_enabled(). */
#include "posenc.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

void rp_posenc_avx2_rotate_heads(float *x, int64_t n, int64_t Dh, const float *c, const float *s, int64_t rd,
                                 int layout, float dir) {
    const int64_t P = rd / 2;
    if (layout == RP_ROPE_HALF && P % 8 == 0) {
        /* pairs (k, k + P): 8 pairs per step, a from the first half, b from the second */
        const __m256 dv = _mm256_set1_ps(dir), neg = _mm256_set1_ps(-0.0f);
        for (int64_t k = 0; k < P; k += 8) {
            const __m256 ck = _mm256_loadu_ps(c + k);
            const __m256 sk = _mm256_mul_ps(dv, _mm256_loadu_ps(s + k));
            const __m256 nsk = _mm256_xor_ps(sk, neg);
            for (int64_t h = 0; h < n; h++) {
                float *xa = x + h * Dh + k, *xb = xa + P;
                const __m256 a = _mm256_loadu_ps(xa), b = _mm256_loadu_ps(xb);
                _mm256_storeu_ps(xa, _mm256_add_ps(_mm256_mul_ps(ck, a), _mm256_mul_ps(nsk, b)));
                _mm256_storeu_ps(xb, _mm256_add_ps(_mm256_mul_ps(ck, b), _mm256_mul_ps(sk, a)));
            }
        }
        return;
    }
    if (layout == RP_ROPE_INTERLEAVED && P % 4 == 0) {
        /* pairs (2k, 2k + 1): 4 pairs per vector; the angles spread to both lanes of a pair,
         * (c, c) and (-(dir s), dir s), the partner from swapping neighbours */
        for (int64_t k = 0; k < P; k += 4) {
            const __m128 c4 = _mm_loadu_ps(c + k);
            const __m128 s4 = _mm_mul_ps(_mm_set1_ps(dir), _mm_loadu_ps(s + k));
            const __m256 cc = _mm256_set_m128(_mm_unpackhi_ps(c4, c4), _mm_unpacklo_ps(c4, c4));
            const __m128 ns4 = _mm_xor_ps(s4, _mm_set1_ps(-0.0f));
            const __m256 ss = _mm256_set_m128(_mm_unpackhi_ps(ns4, s4), _mm_unpacklo_ps(ns4, s4));
            for (int64_t h = 0; h < n; h++) {
                float *xp = x + h * Dh + 2 * k;
                const __m256 v = _mm256_loadu_ps(xp);
                const __m256 w = _mm256_permute_ps(v, 0xB1); /* (b, a) of each pair */
                _mm256_storeu_ps(xp, _mm256_add_ps(_mm256_mul_ps(cc, v), _mm256_mul_ps(ss, w)));
            }
        }
        return;
    }
    rp_rotate_heads_portable(x, n, Dh, c, s, rd, layout, dir);
}

#endif
