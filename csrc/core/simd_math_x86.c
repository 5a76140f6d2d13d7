/* The vector exp spans of simd_math.h: AVX2 (8 lanes) and AVX-512F (16 lanes,
 * by target attribute). A tail is one masked vector, so every element goes
 * through the same vector form. */
#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__)

void rp_exp_span_avx2(const float *x, float m, float *y, int64_t n) {
    const __m256 mv = _mm256_set1_ps(m);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, rp_exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv)));
    if (i < n) {
        const __m256i mk = rp_mask8(n - i);
        _mm256_maskstore_ps(y + i, mk, rp_exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, mk), mv)));
    }
}

#if RP_HAVE_AVX512_FORM
RP_TARGET_AVX512 void rp_exp_span_avx512(const float *x, float m, float *y, int64_t n) {
    const __m512 mv = _mm512_set1_ps(m);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 mk = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, mk, rp_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), mv)));
    }
}

int rp_exp_have_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return cached;
}
#else
void rp_exp_span_avx512(const float *x, float m, float *y, int64_t n) { rp_exp_span_avx2(x, m, y, n); }
int rp_exp_have_avx512(void) { return 0; }
#endif

#else
/* Not an x86-64 AVX2 build: keep the translation unit non-empty (ISO C). */
typedef int rp_simd_math_x86_unused;
#endif
