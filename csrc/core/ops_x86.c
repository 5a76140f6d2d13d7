/* AVX2/FMA instantiation of the ops span kernels (ops.h): the same C source
 * as the portable path, compiled here with -mavx2 -mfma so the loops run 8
 * floats wide. Called only when rp_simd_enabled(). */
/* Let a * b + c become one FMA here (the portable files keep ISO C's
 * no-contraction): part of what makes this path faster. rp_exp is immune: its
 * multiply-adds are explicit fmaf and no other product of it feeds a sum. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include "ops.h"

#if defined(__AVX2__) && defined(__FMA__)

void rp_ops_avx2_act_fwd(int kind, const float *x, float *y, int64_t n) { rp_span_act_fwd(kind, x, y, n); }

void rp_ops_avx2_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n) {
    rp_span_act_bwd(kind, x, g, dx, n);
}

#if RP_HAVE_AVX512_FORM
#define RP_TARGET_AVX512_WIDE __attribute__((target("avx512f,prefer-vector-width=512")))
RP_TARGET_AVX512_WIDE void rp_ops_avx512_act_fwd(int kind, const float *x, float *y, int64_t n) {
    rp_span_act_fwd(kind, x, y, n);
}
RP_TARGET_AVX512_WIDE void rp_ops_avx512_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n) {
    rp_span_act_bwd(kind, x, g, dx, n);
}
#else
void rp_ops_avx512_act_fwd(int kind, const float *x, float *y, int64_t n) { rp_span_act_fwd(kind, x, y, n); }
void rp_ops_avx512_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n) {
    rp_span_act_bwd(kind, x, g, dx, n);
}
#endif

float rp_ops_avx2_exp_sum(const float *x, float m, float *y, int64_t n) { return rp_span_exp_sum(x, m, y, n); }

void rp_ops_avx2_exp_scale(const float *x, float c, float scale, const float *z, float add, float *y, int64_t n) {
    rp_span_exp_scale(x, c, scale, z, add, y, n);
}

void rp_ops_avx2_ln_fwd(const float *x, const float *w, const float *b, float *y, int64_t D, float eps, float *mean,
                        float *rstd) {
    rp_span_ln_fwd(x, w, b, y, D, eps, mean, rstd);
}

void rp_ops_avx2_ln_bwd(const float *x, const float *w, float m, float rs, const float *g, float *dx, float *pw,
                        float *pb, int64_t D) {
    rp_span_ln_bwd(x, w, m, rs, g, dx, pw, pb, D);
}

void rp_ops_avx2_rms_fwd(const float *x, const float *w, float *y, int64_t D, float eps, float *rstd) {
    rp_span_rms_fwd(x, w, y, D, eps, rstd);
}

void rp_ops_avx2_rms_bwd(const float *x, const float *w, float rs, const float *g, float *dx, float *pw, int64_t D) {
    rp_span_rms_bwd(x, w, rs, g, dx, pw, D);
}

#else
/* Not an x86-64 AVX2 build: keep the translation unit non-empty (ISO C). */
typedef int rp_ops_avx2_unused;
#endif
