/* AVX2/FMA instantiation of the ops span kernels (ops.h): the same C source
 * as the portable path, compiled here with -mavx2 -mfma so the loops run 8
 * floats wide. Called only when rp_simd_enabled(). */
/* Let a * b + c become one FMA here (the portable files keep ISO C's
 * no-contraction): part of what makes this path faster. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include "ops.h"

#if defined(__AVX2__) && defined(__FMA__)

void rp_ops_avx2_act_fwd(int kind, const float *x, float *y, int64_t n) { rp_span_act_fwd(kind, x, y, n); }

void rp_ops_avx2_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n) {
    rp_span_act_bwd(kind, x, g, dx, n);
}

float rp_ops_avx2_exp_sum(const float *x, float m, float *y, int64_t n) { return rp_span_exp_sum(x, m, y, n); }

void rp_ops_avx2_exp_scale(const float *x, float c, float scale, const float *z, float add, float *y, int64_t n) {
    rp_span_exp_scale(x, c, scale, z, add, y, n);
}

#else
/* Not an x86-64 AVX2 build: keep the translation unit non-empty (ISO C). */
typedef int rp_ops_avx2_unused;
#endif
