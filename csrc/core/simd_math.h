/* Shared math of the core: ONE exp for every path (elementwise ops, softmax,
 * GELU, sigmoid, cross-entropy, the materialised and the flash attention), in
 * three forms that give the same bits lane for lane:
 *
 *   rp_exp(x)             scalar, any translation unit;
 *   rp_exp_avx2(x)        8 lanes, only where __AVX2__ and __FMA__ are defined
 *                         (the *_x86.c files, compiled with -mavx2 -mfma);
 *   rp_exp_avx512(x)      16 lanes, only inside functions compiled for
 *                         AVX-512F (RP_TARGET_AVX512) of a *_x86.c file.
 *
 * The three are one sequence of IEEE operations, written once (RP_EXP_STEPS)
 * and instantiated with each form's operations. Every multiply-add is an
 * explicit fused multiply-add (fmaf in the scalar form: a vfmadd where the
 * translation unit has FMA, a correctly rounded libm call elsewhere), and no
 * other product feeds a sum, so the compiler's contraction setting cannot
 * change a bit.
 *
 * Algorithm (Cody-Waite reduction, Cephes polynomial):
 *   x is clamped to [-104, 89] (NaN passes: min/max return their second
 *   operand, which is x); n = round(x log2 e) by the 1.5 * 2^23 shifter;
 *   r = x - n ln2 in two steps (ln2 = C1 + C2, C1 with 9 significant bits);
 *   e^r = 1 + (r + r^2 P(r)), P of degree 5; e^r 2^n is rounded once, so
 *   results that overflow become +inf and results below FLT_MIN underflow
 *   gradually to 0 (two exact halves of 2^n in the scalar and AVX2 forms,
 *   vscalefps in the AVX-512 form: RP_EXP_SCALE2N_HALVES).
 * Accuracy: within 1 ulp of float64 exp over the normal range (measured in
 * tests/test_simd_math.py); exp(NaN) = NaN, exp(-inf) = 0, exp(+inf) = +inf,
 * exp(+-0) = 1.
 */
#ifndef RELPOS_SIMD_MATH_H
#define RELPOS_SIMD_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "relpos.h"

/* ---- spans (simd_math.c, simd_math_x86.c) -------------------------------
 * y[i] = exp(x[i] - m) for i < n (y may be x), in the given form. Every form
 * gives the same bits, so which one runs never changes a result: callers take
 * rp_exp_form(), the widest the CPU has (RP_EXP_SCALAR under
 * rp_force_portable). RP_ENOSIMD for a form the CPU or the build lacks. */
enum { RP_EXP_SCALAR = 0, RP_EXP_AVX2 = 1, RP_EXP_AVX512 = 2 };
int rp_exp_form(void);
int rp_exp_form_available(int form);
int rp_exp_span(int form, const float *x, float m, float *y, int64_t n);
/* the vector spans behind rp_exp_span (simd_math_x86.c) */
void rp_exp_span_avx2(const float *x, float m, float *y, int64_t n);
void rp_exp_span_avx512(const float *x, float m, float *y, int64_t n);
int rp_exp_have_avx512(void); /* AVX-512F form compiled in and usable on this CPU */

#define RP_EXP_HI 89.0f   /* exp(89) > FLT_MAX: +inf; keeps n <= 129 */
#define RP_EXP_LO -104.0f /* exp(-104) < 2^-150 rounds to 0; keeps n >= -151 */
#define RP_EXP_LOG2E 1.44269504088896341f
#define RP_EXP_SHIFT 12582912.0f     /* 1.5 * 2^23: t = x log2e + shift has n in its low bits */
#define RP_EXP_SHIFT_BITS 0x4B400000 /* the bits of RP_EXP_SHIFT */
#define RP_EXP_C1 0.693359375f       /* ln 2 = C1 + C2; n * C1 is exact */
#define RP_EXP_C2 -2.12194440e-4f
#define RP_EXP_P0 1.9875691500e-4f
#define RP_EXP_P1 1.3981999507e-3f
#define RP_EXP_P2 8.3334519073e-3f
#define RP_EXP_P3 4.1665795894e-2f
#define RP_EXP_P4 1.6666665459e-1f
#define RP_EXP_P5 5.0000001201e-1f

/* The algorithm, once. V is a form's prefix: V##f / V##i its float / int32
 * vector types and V##fma, V##fnma (-(a b) + c), V##add, V##sub, V##mul,
 * V##min, V##max (the minps/maxps semantics: a < b ? a : b, the second operand
 * when unordered), V##set1 and V##scale2n (below); the forms that apply 2^n in
 * halves also V##bits / V##from_bits (reinterpret), V##isub and V##isubc /
 * V##iaddc (a constant operand; wrapping), V##isra1 (arithmetic shift right by
 * 1), V##isll23. */
#define RP_EXP_STEPS(V, x, result)                                                    \
    do {                                                                              \
        const V##f xc_ = V##max(V##set1(RP_EXP_LO), V##min(V##set1(RP_EXP_HI), (x))); \
        const V##f t_ = V##fma(xc_, V##set1(RP_EXP_LOG2E), V##set1(RP_EXP_SHIFT));    \
        const V##f n_ = V##sub(t_, V##set1(RP_EXP_SHIFT));                            \
        V##f r_ = V##fnma(n_, V##set1(RP_EXP_C1), xc_);                               \
        r_ = V##fnma(n_, V##set1(RP_EXP_C2), r_);                                     \
        const V##f z_ = V##mul(r_, r_);                                               \
        V##f p_ = V##fma(V##set1(RP_EXP_P0), r_, V##set1(RP_EXP_P1));                 \
        p_ = V##fma(p_, r_, V##set1(RP_EXP_P2));                                      \
        p_ = V##fma(p_, r_, V##set1(RP_EXP_P3));                                      \
        p_ = V##fma(p_, r_, V##set1(RP_EXP_P4));                                      \
        p_ = V##fma(p_, r_, V##set1(RP_EXP_P5));                                      \
        p_ = V##add(V##fma(p_, z_, r_), V##set1(1.0f));                               \
        (result) = V##scale2n(p_, n_, t_);                                            \
    } while (0)

/* p 2^n rounded once (n an integer-valued float in [-151, 129], t the shifter's
 * sum that holds n in its low bits), the step every form must give the same bits
 * for. The scalar and AVX2 forms apply 2^n in two halves, 2^(n - n/2) 2^(n/2),
 * each a normal float: the first product is exact, the second rounds once (to
 * +inf above FLT_MAX, gradually to 0 below FLT_MIN). The AVX-512 form is one
 * vscalefps, which computes the same correctly rounded p 2^n. */
#define RP_EXP_SCALE2N_HALVES(V, p, t, result)                        \
    do {                                                              \
        const V##i ni_ = V##isubc(V##bits(t), RP_EXP_SHIFT_BITS);     \
        const V##i n1_ = V##isra1(ni_);                               \
        const V##i n2_ = V##isub(ni_, n1_);                           \
        const V##f s1_ = V##from_bits(V##isll23(V##iaddc(n1_, 127))); \
        const V##f s2_ = V##from_bits(V##isll23(V##iaddc(n2_, 127))); \
        (result) = V##mul(V##mul((p), s1_), s2_);                     \
    } while (0)

/* ---- scalar form ------------------------------------------------------- */

typedef float rp_sx_f;
typedef int32_t rp_sx_i;
static inline float rp_sx_set1(float c) { return c; }
static inline float rp_sx_fma(float a, float b, float c) { return fmaf(a, b, c); }
/* -(a b) + c, negating the constant b: vfnmadd passes a NaN a through with its
 * sign, and so must the scalar form (fmaf(-a, b, c) would flip it) */
static inline float rp_sx_fnma(float a, float b, float c) { return fmaf(a, -b, c); }
static inline float rp_sx_add(float a, float b) { return a + b; }
static inline float rp_sx_sub(float a, float b) { return a - b; }
static inline float rp_sx_mul(float a, float b) { return a * b; }
static inline float rp_sx_min(float a, float b) { return a < b ? a : b; }
static inline float rp_sx_max(float a, float b) { return a > b ? a : b; }
static inline int32_t rp_sx_bits(float a) {
    int32_t i;
    memcpy(&i, &a, sizeof i);
    return i;
}
static inline float rp_sx_from_bits(int32_t i) {
    float a;
    memcpy(&a, &i, sizeof a);
    return a;
}
/* wrapping int32 arithmetic through uint32 (a NaN's garbage bits must not be UB) */
static inline int32_t rp_sx_isub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }
static inline int32_t rp_sx_isubc(int32_t a, int32_t c) { return rp_sx_isub(a, c); }
static inline int32_t rp_sx_iaddc(int32_t a, int32_t c) { return (int32_t)((uint32_t)a + (uint32_t)c); }
static inline int32_t rp_sx_isra1(int32_t a) { return a >> 1; } /* GCC and Clang: arithmetic shift */
static inline int32_t rp_sx_isll23(int32_t a) { return (int32_t)((uint32_t)a << 23); }

static inline float rp_sx_scale2n(float p, float n, float t) {
    float y;
    (void)n;
    RP_EXP_SCALE2N_HALVES(rp_sx_, p, t, y);
    return y;
}

static inline float rp_exp(float x) {
    float y;
    RP_EXP_STEPS(rp_sx_, x, y);
    return y;
}

/* ---- AVX2 form (8 lanes) ----------------------------------------------- */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define RP_SIMD_INLINE static inline __attribute__((always_inline))

typedef __m256 rp_v8_f;
typedef __m256i rp_v8_i;
#define rp_v8_set1(c) _mm256_set1_ps(c)
#define rp_v8_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define rp_v8_fnma(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define rp_v8_add(a, b) _mm256_add_ps(a, b)
#define rp_v8_sub(a, b) _mm256_sub_ps(a, b)
#define rp_v8_mul(a, b) _mm256_mul_ps(a, b)
#define rp_v8_min(a, b) _mm256_min_ps(a, b)
#define rp_v8_max(a, b) _mm256_max_ps(a, b)
#define rp_v8_bits(a) _mm256_castps_si256(a)
#define rp_v8_from_bits(i) _mm256_castsi256_ps(i)
#define rp_v8_isub(a, b) _mm256_sub_epi32(a, b)
#define rp_v8_isubc(a, c) _mm256_sub_epi32(a, _mm256_set1_epi32(c))
#define rp_v8_iaddc(a, c) _mm256_add_epi32(a, _mm256_set1_epi32(c))
#define rp_v8_isra1(a) _mm256_srai_epi32(a, 1)
#define rp_v8_isll23(a) _mm256_slli_epi32(a, 23)

RP_SIMD_INLINE __m256 rp_v8_scale2n(__m256 p, __m256 n, __m256 t) {
    __m256 y;
    (void)n;
    RP_EXP_SCALE2N_HALVES(rp_v8_, p, t, y);
    return y;
}

RP_SIMD_INLINE __m256 rp_exp_avx2(__m256 x) {
    __m256 y;
    RP_EXP_STEPS(rp_v8_, x, y);
    return y;
}

/* lane mask with the first n (0..8) lanes set, for the tails of a span */
RP_SIMD_INLINE __m256i rp_mask8(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- AVX-512F form (16 lanes), in functions compiled for it ------------- */
/* An 8 x 8 transpose in registers (unpack, shuffle, lane permute), shared by the
 * GEMM's panel packing and the flash attention's K/V tiles: rows r[0..7],
 * columns p..p+7 -> dst[k * ldd + 0..7] holds column p + k. */
static inline void rp_tr8x8_avx2(const float *const *r, int64_t p, float *dst, int64_t ldd) {
    __m256 t0 = _mm256_unpacklo_ps(_mm256_loadu_ps(r[0] + p), _mm256_loadu_ps(r[1] + p));
    __m256 t1 = _mm256_unpackhi_ps(_mm256_loadu_ps(r[0] + p), _mm256_loadu_ps(r[1] + p));
    __m256 t2 = _mm256_unpacklo_ps(_mm256_loadu_ps(r[2] + p), _mm256_loadu_ps(r[3] + p));
    __m256 t3 = _mm256_unpackhi_ps(_mm256_loadu_ps(r[2] + p), _mm256_loadu_ps(r[3] + p));
    __m256 t4 = _mm256_unpacklo_ps(_mm256_loadu_ps(r[4] + p), _mm256_loadu_ps(r[5] + p));
    __m256 t5 = _mm256_unpackhi_ps(_mm256_loadu_ps(r[4] + p), _mm256_loadu_ps(r[5] + p));
    __m256 t6 = _mm256_unpacklo_ps(_mm256_loadu_ps(r[6] + p), _mm256_loadu_ps(r[7] + p));
    __m256 t7 = _mm256_unpackhi_ps(_mm256_loadu_ps(r[6] + p), _mm256_loadu_ps(r[7] + p));
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}

#if defined(__GNUC__) && !defined(RP_NO_AVX512)
#define RP_HAVE_AVX512_FORM 1
#define RP_TARGET_AVX512 __attribute__((target("avx512f")))

typedef __m512 rp_v16_f;
typedef __m512i rp_v16_i;
#define rp_v16_set1(c) _mm512_set1_ps(c)
#define rp_v16_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define rp_v16_fnma(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define rp_v16_add(a, b) _mm512_add_ps(a, b)
#define rp_v16_sub(a, b) _mm512_sub_ps(a, b)
#define rp_v16_mul(a, b) _mm512_mul_ps(a, b)
#define rp_v16_min(a, b) _mm512_min_ps(a, b)
#define rp_v16_max(a, b) _mm512_max_ps(a, b)
#define rp_v16_bits(a) _mm512_castps_si512(a)
#define rp_v16_from_bits(i) _mm512_castsi512_ps(i)
#define rp_v16_isub(a, b) _mm512_sub_epi32(a, b)
#define rp_v16_isubc(a, c) _mm512_sub_epi32(a, _mm512_set1_epi32(c))
#define rp_v16_iaddc(a, c) _mm512_add_epi32(a, _mm512_set1_epi32(c))
#define rp_v16_isra1(a) _mm512_srai_epi32(a, 1)
#define rp_v16_isll23(a) _mm512_slli_epi32(a, 23)
/* vscalefps: p 2^floor(n), rounded once under the default MXCSR (round to nearest,
 * no flush to zero), the halves' bits at a fraction of their cost */
#define rp_v16_scale2n(p, n, t) _mm512_scalef_ps((p), (n))

RP_SIMD_INLINE RP_TARGET_AVX512 __m512 rp_exp_avx512(__m512 x) {
    __m512 y;
    RP_EXP_STEPS(rp_v16_, x, y);
    return y;
}
#endif /* AVX-512 form */
#endif /* AVX2 form */

#endif /* RELPOS_SIMD_MATH_H */
