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

/* The tanh GELU by hand on 16 lanes: the same IEEE operations, in the same order,
 * as rp_span_act_fwd / rp_span_act_bwd (ops.h), so the same bits as every other
 * form. Compiled from the scalar source, the exp's clamps and the s == 0 select
 * became compare-and-blend chains: 262144 floats (the small model's MLP), 1 thread,
 * forward 146 -> 94 us, backward 212 -> 147 us (AMD EPYC, Zen 4). */
static inline __attribute__((always_inline)) RP_TARGET_AVX512 __m512 gelu_tanh_exp512(__m512 v) {
    const __m512 c3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(RP_GELU_C), v), v);
    return rp_exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.0f * RP_GELU_K), _mm512_fmadd_ps(c3, v, v)));
}

static inline __attribute__((always_inline)) RP_TARGET_AVX512 __m512 gelu_tanh_fwd512(__m512 v) {
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), gelu_tanh_exp512(v)));
}

static inline __attribute__((always_inline)) RP_TARGET_AVX512 __m512 gelu_tanh_bwd512(__m512 v, __m512 g) {
    const __m512 e = gelu_tanh_exp512(v);
    const __m512 s = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    /* s == 0 ? 0 : (e s) s; a NaN s is not 0 (unordered compare) */
    const __m512 ss = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_UQ),
                                          _mm512_mul_ps(_mm512_mul_ps(e, s), s));
    /* v2 < 1e30 ? v2 : 1e30 is minps(v2, 1e30), a NaN v2 included */
    const __m512 v2 = _mm512_min_ps(_mm512_mul_ps(v, v), _mm512_set1_ps(1e30f));
    const __m512 du = _mm512_mul_ps(_mm512_set1_ps(RP_GELU_K),
                                    _mm512_fmadd_ps(_mm512_set1_ps(3.0f * RP_GELU_C), v2, _mm512_set1_ps(1.0f)));
    const __m512 t = _mm512_mul_ps(v, _mm512_mul_ps(_mm512_set1_ps(2.0f), ss));
    return _mm512_mul_ps(g, _mm512_fmadd_ps(t, du, s));
}

RP_TARGET_AVX512_WIDE void rp_ops_avx512_act_fwd(int kind, const float *x, float *y, int64_t n) {
    if (kind != RP_ACT_GELU_TANH) {
        rp_span_act_fwd(kind, x, y, n);
        return;
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu_tanh_fwd512(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, gelu_tanh_fwd512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

RP_TARGET_AVX512_WIDE void rp_ops_avx512_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n) {
    if (kind != RP_ACT_GELU_TANH) {
        rp_span_act_bwd(kind, x, g, dx, n);
        return;
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dx + i, gelu_tanh_bwd512(_mm512_loadu_ps(x + i), _mm512_loadu_ps(g + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dx + i, m,
                              gelu_tanh_bwd512(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, g + i)));
    }
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
