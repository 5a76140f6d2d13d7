/* SIMD kernels of the fused attention (attention_flash.c chooses them at run
 * time when rp_simd_enabled()). Compiled with -mavx2 -mfma; empty elsewhere.
 *
 *  rp_fused_gemm_avx2     C (M x N) [+]= A * B, A with any row/column stride
 *                         (so A^T costs nothing), B row-major: a 6 x 16 register
 *                         tile, broadcast A, two B vectors, 12 FMA accumulators.
 *  rp_fused_expsub_avx2   x = exp(x - m) and its sum, 8 lanes at a time
 *                         (rp_exp_avx2 of simd_math.h: the scalar bits).
 *  rp_fused_rowmax_avx2   max of a row (NaN if the row holds a NaN).
 *  rp_fused_pack_t_avx2   a tile transposed in 8 x 8 register blocks.
 *  rp_fused_gemm_avx512,  the same on 16 lanes (8 x 32 register tile), in
 *  rp_fused_expsub_avx512 functions compiled for AVX-512F by target attribute;
 *                         used when the GEMM area's kernel in use is AVX-512
 *                         (rp_gemm_kernel_name(): CPUs that have it, unless a
 *                         test or benchmark chose another). Every C element is
 *                         the same k-ordered FMA chain in both widths, and
 *                         rp_exp_avx512 gives rp_exp's bits.
 */
#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <math.h>

#define FZ_INLINE static inline __attribute__((always_inline))

/* MR rows (1..6) x NV vectors (1 or 2); the last vector masked when MASKED. */
FZ_INLINE void fz_ukr(const int MR, const int NV, const int MASKED, __m256i mk, int64_t K, const float *A, int64_t rsa,
                      int64_t csa, const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
    __m256 c0[6], c1[6];
    for (int r = 0; r < MR; r++) {
        c0[r] = _mm256_setzero_ps();
        c1[r] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *ap = A + k * csa;
        __m256 b0, b1 = _mm256_setzero_ps();
        if (NV == 1)
            b0 = MASKED ? _mm256_maskload_ps(b, mk) : _mm256_loadu_ps(b);
        else {
            b0 = _mm256_loadu_ps(b);
            b1 = MASKED ? _mm256_maskload_ps(b + 8, mk) : _mm256_loadu_ps(b + 8);
        }
        for (int r = 0; r < MR; r++) {
            __m256 ar = _mm256_broadcast_ss(ap + r * rsa);
            c0[r] = _mm256_fmadd_ps(ar, b0, c0[r]);
            if (NV == 2) c1[r] = _mm256_fmadd_ps(ar, b1, c1[r]);
        }
    }
    for (int r = 0; r < MR; r++) {
        float *cr = C + r * ldc;
        if (NV == 1) {
            if (MASKED) {
                __m256 x = c0[r];
                if (acc) x = _mm256_add_ps(x, _mm256_maskload_ps(cr, mk));
                _mm256_maskstore_ps(cr, mk, x);
            } else {
                __m256 x = c0[r];
                if (acc) x = _mm256_add_ps(x, _mm256_loadu_ps(cr));
                _mm256_storeu_ps(cr, x);
            }
        } else {
            __m256 x = c0[r], y = c1[r];
            if (acc) {
                x = _mm256_add_ps(x, _mm256_loadu_ps(cr));
                y = _mm256_add_ps(y, MASKED ? _mm256_maskload_ps(cr + 8, mk) : _mm256_loadu_ps(cr + 8));
            }
            _mm256_storeu_ps(cr, x);
            if (MASKED)
                _mm256_maskstore_ps(cr + 8, mk, y);
            else
                _mm256_storeu_ps(cr + 8, y);
        }
    }
}

#define FZ_ROWS(NV, MASKED)                                                                \
    for (int64_t i = 0; i < M; i += 6) {                                                   \
        const float *Ai = A + i * rsa;                                                     \
        float *Ci = C + i * ldc + j;                                                       \
        switch (M - i >= 6 ? 6 : M - i) {                                                  \
        case 6: fz_ukr(6, NV, MASKED, mk, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 5: fz_ukr(5, NV, MASKED, mk, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 4: fz_ukr(4, NV, MASKED, mk, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 3: fz_ukr(3, NV, MASKED, mk, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 2: fz_ukr(2, NV, MASKED, mk, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        default: fz_ukr(1, NV, MASKED, mk, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break; \
        }                                                                                  \
    }

void rp_fused_gemm_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                        int64_t ldb, float *C, int64_t ldc, int acc) {
    if (M <= 0 || N <= 0) return;
    int64_t j = 0;
    __m256i mk = rp_mask8(8);
    for (; j + 16 <= N; j += 16) {
        const float *Bj = B + j;
        FZ_ROWS(2, 0)
    }
    int64_t rem = N - j;
    if (rem > 8) {
        mk = rp_mask8(rem - 8);
        const float *Bj = B + j;
        FZ_ROWS(2, 1)
    } else if (rem == 8) {
        const float *Bj = B + j;
        FZ_ROWS(1, 0)
    } else if (rem > 0) {
        mk = rp_mask8(rem);
        const float *Bj = B + j;
        FZ_ROWS(1, 1)
    }
}

float rp_fused_expsub_avx2(float *x, int64_t n, float m);

/* ---- AVX-512F variant of the same product (chosen when the GEMM area's
 * kernel in use is AVX-512: rp_gemm_kernel_name()). 8 rows x 32 columns, 16
 * zmm accumulators; each C element is the same k-ordered FMA chain as above. */
#if RP_HAVE_AVX512_FORM
#define FZ_T512 RP_TARGET_AVX512

static inline __attribute__((always_inline)) FZ_T512 void fz_ukr512(const int MR, const int NV, __mmask16 m0,
                                                                    __mmask16 m1, int64_t K, const float *A,
                                                                    int64_t rsa, int64_t csa, const float *B,
                                                                    int64_t ldb, float *C, int64_t ldc, int acc) {
    __m512 c0[8], c1[8];
    for (int r = 0; r < MR; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *ap = A + k * csa;
        __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
        __m512 b1 = NV == 2 ? _mm512_maskz_loadu_ps(m1, b + 16) : _mm512_setzero_ps();
        for (int r = 0; r < MR; r++) {
            __m512 ar = _mm512_set1_ps(ap[r * rsa]);
            c0[r] = _mm512_fmadd_ps(ar, b0, c0[r]);
            if (NV == 2) c1[r] = _mm512_fmadd_ps(ar, b1, c1[r]);
        }
    }
    for (int r = 0; r < MR; r++) {
        float *cr = C + r * ldc;
        __m512 x = c0[r];
        if (acc) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m0, cr));
        _mm512_mask_storeu_ps(cr, m0, x);
        if (NV == 2) {
            __m512 y = c1[r];
            if (acc) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m1, cr + 16));
            _mm512_mask_storeu_ps(cr + 16, m1, y);
        }
    }
}

#define FZ_ROWS512(NV)                                                                    \
    for (int64_t i = 0; i < M; i += 8) {                                                  \
        const float *Ai = A + i * rsa;                                                    \
        float *Ci = C + i * ldc + j;                                                      \
        switch (M - i >= 8 ? 8 : M - i) {                                                 \
        case 8: fz_ukr512(8, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 7: fz_ukr512(7, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 6: fz_ukr512(6, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 5: fz_ukr512(5, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 4: fz_ukr512(4, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 3: fz_ukr512(3, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        case 2: fz_ukr512(2, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break;  \
        default: fz_ukr512(1, NV, m0, m1, K, Ai, rsa, csa, Bj, ldb, Ci, ldc, acc); break; \
        }                                                                                 \
    }

FZ_T512 void rp_fused_gemm_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa,
                                  const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
    if (M <= 0 || N <= 0) return;
    for (int64_t j = 0; j < N; j += 32) {
        const int64_t rem = N - j;
        const float *Bj = B + j;
        const __mmask16 m0 = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1u);
        if (rem > 16) {
            const __mmask16 m1 = rem >= 32 ? (__mmask16)0xFFFF : (__mmask16)((1u << (rem - 16)) - 1u);
            FZ_ROWS512(2)
        } else {
            const __mmask16 m1 = 0;
            FZ_ROWS512(1)
        }
    }
}

FZ_T512 float rp_fused_expsub_avx512(float *x, int64_t n, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 s0 = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1u);
        __m512 e = rp_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), mv));
        e = _mm512_maskz_mov_ps(mk, e);
        _mm512_mask_storeu_ps(x + j, mk, e);
        s0 = _mm512_add_ps(s0, e);
    }
    return _mm512_reduce_add_ps(s0);
}

int rp_fused_have_avx512(void) { return 1; }
#else
float rp_fused_expsub_avx512(float *x, int64_t n, float m) { return rp_fused_expsub_avx2(x, n, m); }
int rp_fused_have_avx512(void) { return 0; }
void rp_fused_gemm_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                          int64_t ldb, float *C, int64_t ldc, int acc) {
    rp_fused_gemm_avx2(M, N, K, A, rsa, csa, B, ldb, C, ldc, acc);
}
#endif

/* dst (cols x n, ld ldd) = src (n x cols, ld lds) transposed, 8 x 8 blocks in
 * registers (rp_tr8x8_avx2), the ragged edges element by element:
 * the same values as the portable loop, moved in whole rows of 8. */
/* s[j] *= scale over n floats, 8 at a time (the logits' scale) */
void rp_fused_scale_avx2(float *s, int64_t n, float scale) {
    const __m256 sc = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), sc));
    for (; j < n; j++) s[j] *= scale;
}

/* p[j] = (sc * s[j]) * (p[j] - di) over n floats, 8 at a time: dS = P (dP - D), the
 * portable loop's operations in its order (no contraction in this file) */
void rp_fused_ds_avx2(float *p, const float *s, int64_t n, float sc, float di) {
    const __m256 scv = _mm256_set1_ps(sc), dv = _mm256_set1_ps(di);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_mul_ps(scv, _mm256_loadu_ps(s + j)),
                                              _mm256_sub_ps(_mm256_loadu_ps(p + j), dv)));
    for (; j < n; j++) p[j] = sc * s[j] * (p[j] - di);
}

/* 1 if any of x[0..n) is NaN or infinite: the exponent bits all set, 8 floats a
 * step (the integer test of rp_any_nonfinite, attention.h; the same answer). A run
 * function of rp_attn_rows_runs (x is only read; ctx unused). */
int rp_fused_nonfinite_run_avx2(float *x, int64_t n, void *ctx) {
    (void)ctx;
    const __m256i ex = _mm256_set1_epi32(0x7f800000);
    __m256i bad = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + i)), ex);
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(v, ex));
    }
    if (i < n) {
        const __m256i v = _mm256_and_si256(_mm256_castps_si256(_mm256_maskload_ps(x + i, rp_mask8(n - i))), ex);
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(v, ex));
    }
    return !_mm256_testz_si256(bad, bad);
}

void rp_fused_pack_t_avx2(const float *src, int64_t n, int64_t cols, int64_t lds, float *dst, int64_t ldd) {
    const int64_t n8 = n & ~(int64_t)7, c8 = cols & ~(int64_t)7;
    for (int64_t r = 0; r < n8; r += 8) {
        for (int64_t c = 0; c < c8; c += 8) {
            const float *s = src + r * lds + c;
            const float *rows[8] = {s,           s + lds,     s + 2 * lds, s + 3 * lds,
                                    s + 4 * lds, s + 5 * lds, s + 6 * lds, s + 7 * lds};
            rp_tr8x8_avx2(rows, 0, dst + c * ldd + r, ldd);
        }
        for (int64_t rr = r; rr < r + 8; rr++)
            for (int64_t c = c8; c < cols; c++) dst[c * ldd + rr] = src[rr * lds + c];
    }
    for (int64_t r = n8; r < n; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

float rp_fused_expsub_avx2(float *x, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 e0 = rp_exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        __m256 e1 = rp_exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mv));
        _mm256_storeu_ps(x + j, e0);
        _mm256_storeu_ps(x + j + 8, e1);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; j < n; j += 8) {
        __m256i mk = rp_mask8(n - j < 8 ? n - j : 8);
        __m256 e = rp_exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + j, mk), mv));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(mk));
        _mm256_maskstore_ps(x + j, mk, e);
        s0 = _mm256_add_ps(s0, e);
    }
    s0 = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

/* maxps drops a NaN operand half of the time: NaNs are tracked apart and
 * returned, so that a NaN logit makes the row NaN (as rowmax_portable) */
float rp_fused_rowmax_avx2(const float *x, int64_t n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, nan = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + 8);
        m0 = _mm256_max_ps(m0, a);
        m1 = _mm256_max_ps(m1, b);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    }
    m0 = _mm256_max_ps(m0, m1);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float mx = _mm_cvtss_f32(h);
    if (_mm256_movemask_ps(nan)) return NAN;
    for (; j < n; j++) mx = (x[j] > mx || x[j] != x[j]) ? x[j] : mx;
    return mx;
}

#else
/* keep the translation unit non-empty for -Wpedantic */
typedef int rp_fused_avx2_unused;
#endif
