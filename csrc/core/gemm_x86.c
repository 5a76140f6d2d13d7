/* gemm area: SIMD micro-kernels and FMA peak probes.
 *   - AVX2/FMA 6 x 16 register tile (this TU is compiled with -mavx2 -mfma);
 *   - AVX-512F 12 x 32 register tile, in functions compiled for AVX-512 through
 *     a target attribute and called only when the CPU and OS support it
 *     (rp_gemm_cpu_avx512), so the build still runs on any AVX2 machine.
 * Everything here is called only when rp_simd_enabled(). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime(CLOCK_THREAD_CPUTIME_ID) */
#include "gemm.h"
#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <math.h>
#include <time.h>

/* acc (6 x 16, 12 ymm registers) = Ap (kc x 6) · Bp (kc x 16), then the epilogue
 *   C = alpha*acc (+ beta*C, fused) (+ bias). Edge tiles go through a buffer
 * with the same arithmetic (fmaf for beta), so every element of C is computed
 * the same way wherever the tile boundaries fall. */
void rp_gemm_ukr_avx2(int64_t kc, const float *restrict Ap, const float *restrict Bp, float *restrict C, int64_t ldc,
                      int64_t mr, int64_t nr, float alpha, float beta, const float *bias) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *a = Ap, *b = Bp;
#define RP_STEP(a, b)                                                \
    do {                                                             \
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps((b) + 8); \
        __m256 ai = _mm256_broadcast_ss((a) + 0);                    \
        c00 = _mm256_fmadd_ps(ai, b0, c00);                          \
        c01 = _mm256_fmadd_ps(ai, b1, c01);                          \
        ai = _mm256_broadcast_ss((a) + 1);                           \
        c10 = _mm256_fmadd_ps(ai, b0, c10);                          \
        c11 = _mm256_fmadd_ps(ai, b1, c11);                          \
        ai = _mm256_broadcast_ss((a) + 2);                           \
        c20 = _mm256_fmadd_ps(ai, b0, c20);                          \
        c21 = _mm256_fmadd_ps(ai, b1, c21);                          \
        ai = _mm256_broadcast_ss((a) + 3);                           \
        c30 = _mm256_fmadd_ps(ai, b0, c30);                          \
        c31 = _mm256_fmadd_ps(ai, b1, c31);                          \
        ai = _mm256_broadcast_ss((a) + 4);                           \
        c40 = _mm256_fmadd_ps(ai, b0, c40);                          \
        c41 = _mm256_fmadd_ps(ai, b1, c41);                          \
        ai = _mm256_broadcast_ss((a) + 5);                           \
        c50 = _mm256_fmadd_ps(ai, b0, c50);                          \
        c51 = _mm256_fmadd_ps(ai, b1, c51);                          \
    } while (0)
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        RP_STEP(a, b);
        RP_STEP(a + 6, b + 16);
        RP_STEP(a + 12, b + 32);
        RP_STEP(a + 18, b + 48);
        a += 24;
        b += 64;
    }
    for (; p < kc; p++) {
        RP_STEP(a, b);
        a += 6;
        b += 16;
    }
#undef RP_STEP

    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (mr == RP_GEMM_AVX2_MR && nr == RP_GEMM_AVX2_NR) {
        __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
        if (bias) {
            bias0 = _mm256_loadu_ps(bias);
            bias1 = _mm256_loadu_ps(bias + 8);
        }
#define RP_ROW(i, x0, x1)                                              \
    do {                                                               \
        float *c = C + (i)*ldc;                                        \
        __m256 v0 = _mm256_mul_ps(va, x0), v1 = _mm256_mul_ps(va, x1); \
        if (beta != 0.0f) {                                            \
            v0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), v0);          \
            v1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), v1);      \
        }                                                              \
        if (bias) {                                                    \
            v0 = _mm256_add_ps(v0, bias0);                             \
            v1 = _mm256_add_ps(v1, bias1);                             \
        }                                                              \
        _mm256_storeu_ps(c, v0);                                       \
        _mm256_storeu_ps(c + 8, v1);                                   \
    } while (0)
        RP_ROW(0, c00, c01);
        RP_ROW(1, c10, c11);
        RP_ROW(2, c20, c21);
        RP_ROW(3, c30, c31);
        RP_ROW(4, c40, c41);
        RP_ROW(5, c50, c51);
#undef RP_ROW
        return;
    }
    float tile[RP_GEMM_AVX2_MR][RP_GEMM_AVX2_NR] __attribute__((aligned(32)));
    _mm256_store_ps(tile[0], c00);
    _mm256_store_ps(tile[0] + 8, c01);
    _mm256_store_ps(tile[1], c10);
    _mm256_store_ps(tile[1] + 8, c11);
    _mm256_store_ps(tile[2], c20);
    _mm256_store_ps(tile[2] + 8, c21);
    _mm256_store_ps(tile[3], c30);
    _mm256_store_ps(tile[3] + 8, c31);
    _mm256_store_ps(tile[4], c40);
    _mm256_store_ps(tile[4] + 8, c41);
    _mm256_store_ps(tile[5], c50);
    _mm256_store_ps(tile[5] + 8, c51);
    for (int64_t i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        for (int64_t j = 0; j < nr; j++) {
            float v = alpha * tile[i][j];
            if (beta != 0.0f) v = fmaf(beta, c[j], v);
            if (bias) v = v + bias[j];
            c[j] = v;
        }
    }
}

/* ---- packing: R rows of a row-major matrix -> (kc x R) panel, by register
 * transposes (A panels with R = MR, panels of a transposed B with R = NR) ---- */

/* rows r[0..3], columns p..p+7 -> dst[(p+k)*MR + 0..3] */
static inline void tr4x8(const float *const *r, int64_t p, float *dst, int MR) {
    __m256 a0 = _mm256_loadu_ps(r[0] + p), a1 = _mm256_loadu_ps(r[1] + p);
    __m256 a2 = _mm256_loadu_ps(r[2] + p), a3 = _mm256_loadu_ps(r[3] + p);
    __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm_storeu_ps(dst + 0 * MR, _mm256_castps256_ps128(s0));
    _mm_storeu_ps(dst + 1 * MR, _mm256_castps256_ps128(s1));
    _mm_storeu_ps(dst + 2 * MR, _mm256_castps256_ps128(s2));
    _mm_storeu_ps(dst + 3 * MR, _mm256_castps256_ps128(s3));
    _mm_storeu_ps(dst + 4 * MR, _mm256_extractf128_ps(s0, 1));
    _mm_storeu_ps(dst + 5 * MR, _mm256_extractf128_ps(s1, 1));
    _mm_storeu_ps(dst + 6 * MR, _mm256_extractf128_ps(s2, 1));
    _mm_storeu_ps(dst + 7 * MR, _mm256_extractf128_ps(s3, 1));
}

/* rows r[0..1], columns p..p+7 -> dst[(p+k)*MR + 0..1] */
static inline void tr2x8(const float *const *r, int64_t p, float *dst, int MR) {
    __m256 a0 = _mm256_loadu_ps(r[0] + p), a1 = _mm256_loadu_ps(r[1] + p);
    __m256 lo = _mm256_unpacklo_ps(a0, a1), hi = _mm256_unpackhi_ps(a0, a1);
    __m128 l0 = _mm256_castps256_ps128(lo), l1 = _mm256_extractf128_ps(lo, 1);
    __m128 h0 = _mm256_castps256_ps128(hi), h1 = _mm256_extractf128_ps(hi, 1);
    _mm_storel_pi((__m64 *)(dst + 0 * MR), l0);
    _mm_storeh_pi((__m64 *)(dst + 1 * MR), l0);
    _mm_storel_pi((__m64 *)(dst + 2 * MR), h0);
    _mm_storeh_pi((__m64 *)(dst + 3 * MR), h0);
    _mm_storel_pi((__m64 *)(dst + 4 * MR), l1);
    _mm_storeh_pi((__m64 *)(dst + 5 * MR), l1);
    _mm_storel_pi((__m64 *)(dst + 6 * MR), h1);
    _mm_storeh_pi((__m64 *)(dst + 7 * MR), h1);
}

void rp_gemm_pack_rows_avx2(const float *X, int64_t ld, int64_t kc, int R, float *dst) {
    const float *r[32];
    for (int i = 0; i < R && i < 32; i++) r[i] = X + i * ld;
    int64_t p = 0;
    if (R == 12) {
        for (; p + 8 <= kc; p += 8) {
            rp_tr8x8_avx2(r, p, dst + p * 12, 12);
            tr4x8(r + 8, p, dst + p * 12 + 8, 12);
        }
    } else if (R == 6) {
        for (; p + 8 <= kc; p += 8) {
            tr4x8(r, p, dst + p * 6, 6);
            tr2x8(r + 4, p, dst + p * 6 + 4, 6);
        }
    } else if (R == 16 || R == 32) {
        for (; p + 8 <= kc; p += 8)
            for (int g = 0; g < R; g += 8) rp_tr8x8_avx2(r + g, p, dst + p * R + g, R);
    }
    for (; p < kc; p++)
        for (int i = 0; i < R; i++) dst[p * R + i] = r[i][p];
}

/* Column sums of rows [0, M) x columns [j0, j0 + nb) of X (row stride N), rows in
 * blocks of `rows_blk`: out[j] = sum over blocks (in order, from 0) of the block's
 * sum (its rows in order, from 0). The same additions, in the same order, as
 * rp_colsum's portable loop, with the partial sums of 64 columns in registers
 * (that loop kept them in memory, a store-to-load chain per row). */
void rp_colsum_strip_avx2(const float *X, int64_t M, int64_t N, int64_t j0, int64_t nb, int64_t rows_blk, float *out) {
    int64_t c = 0;
    for (; c + 64 <= nb; c += 64) {
        __m256 tot[8], part[8];
        for (int k = 0; k < 8; k++) tot[k] = _mm256_setzero_ps();
        for (int64_t m0 = 0; m0 < M; m0 += rows_blk) {
            const int64_t m1 = M < m0 + rows_blk ? M : m0 + rows_blk;
            for (int k = 0; k < 8; k++) part[k] = _mm256_setzero_ps();
            for (int64_t m = m0; m < m1; m++) {
                const float *x = X + m * N + j0 + c;
                for (int k = 0; k < 8; k++) part[k] = _mm256_add_ps(part[k], _mm256_loadu_ps(x + 8 * k));
            }
            for (int k = 0; k < 8; k++) tot[k] = _mm256_add_ps(tot[k], part[k]);
        }
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(out + j0 + c + 8 * k, tot[k]);
    }
    for (; c + 8 <= nb; c += 8) {
        __m256 tot = _mm256_setzero_ps();
        for (int64_t m0 = 0; m0 < M; m0 += rows_blk) {
            const int64_t m1 = M < m0 + rows_blk ? M : m0 + rows_blk;
            __m256 part = _mm256_setzero_ps();
            for (int64_t m = m0; m < m1; m++) part = _mm256_add_ps(part, _mm256_loadu_ps(X + m * N + j0 + c));
            tot = _mm256_add_ps(tot, part);
        }
        _mm256_storeu_ps(out + j0 + c, tot);
    }
    for (; c < nb; c++) {
        float tot = 0.0f;
        for (int64_t m0 = 0; m0 < M; m0 += rows_blk) {
            const int64_t m1 = M < m0 + rows_blk ? M : m0 + rows_blk;
            float part = 0.0f;
            for (int64_t m = m0; m < m1; m++) part += X[m * N + j0 + c];
            tot += part;
        }
        out[j0 + c] = tot;
    }
}

/* CPU time of the calling thread: the probe measures what the core does while
 * it runs, unaffected by other processes competing for it (shared machines). */
static double now_seconds(void) {
    struct timespec ts;
#if defined(CLOCK_THREAD_CPUTIME_ID)
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Each thread runs 12 independent 8-lane FMA chains (enough to cover the
 * latency x throughput of current x86 cores) for `seconds`. */
double rp_fma_peak_gflops_avx2(int threads, double seconds) {
    double total = 0.0;
    (void)threads;
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
    {
        __m256 r0 = _mm256_set1_ps(0.0f), r1 = _mm256_set1_ps(0.1f), r2 = _mm256_set1_ps(0.2f);
        __m256 r3 = _mm256_set1_ps(0.3f), r4 = _mm256_set1_ps(0.4f), r5 = _mm256_set1_ps(0.5f);
        __m256 r6 = _mm256_set1_ps(0.6f), r7 = _mm256_set1_ps(0.7f), r8 = _mm256_set1_ps(0.8f);
        __m256 r9 = _mm256_set1_ps(0.9f), r10 = _mm256_set1_ps(1.0f), r11 = _mm256_set1_ps(1.1f);
        const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
        const int64_t chunk = 1 << 14;
        int64_t iters = 0;
        double t0 = now_seconds(), t;
        do {
            for (int64_t k = 0; k < chunk; k++) {
                r0 = _mm256_fmadd_ps(r0, x, y);
                r1 = _mm256_fmadd_ps(r1, x, y);
                r2 = _mm256_fmadd_ps(r2, x, y);
                r3 = _mm256_fmadd_ps(r3, x, y);
                r4 = _mm256_fmadd_ps(r4, x, y);
                r5 = _mm256_fmadd_ps(r5, x, y);
                r6 = _mm256_fmadd_ps(r6, x, y);
                r7 = _mm256_fmadd_ps(r7, x, y);
                r8 = _mm256_fmadd_ps(r8, x, y);
                r9 = _mm256_fmadd_ps(r9, x, y);
                r10 = _mm256_fmadd_ps(r10, x, y);
                r11 = _mm256_fmadd_ps(r11, x, y);
                /* opaque to the compiler: every chain must really run */
                __asm__ volatile(""
                                 : "+x"(r0), "+x"(r1), "+x"(r2), "+x"(r3), "+x"(r4), "+x"(r5), "+x"(r6), "+x"(r7),
                                   "+x"(r8), "+x"(r9), "+x"(r10), "+x"(r11));
            }
            iters += chunk;
            t = now_seconds() - t0;
        } while (t < seconds);
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(r0, r1), _mm256_add_ps(r2, r3)),
                                 _mm256_add_ps(_mm256_add_ps(r4, r5), _mm256_add_ps(r6, r7)));
        s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(r8, r9), _mm256_add_ps(r10, r11)));
        volatile float sink = _mm256_cvtss_f32(s);
        (void)sink;
        total += 12.0 * 8.0 * 2.0 * (double)iters / t * 1e-9;
    }
    return total;
}

/* ---- AVX-512F ---------------------------------------------------------- */
#if defined(__GNUC__) && !defined(RP_NO_AVX512)
#define RP_T512 __attribute__((target("avx512f")))

int rp_gemm_cpu_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return cached;
}

/* acc (12 x 32, 24 zmm registers) = Ap (kc x 12) · Bp (kc x 32), then the same
 * epilogue as the AVX2 kernel. The body of both AVX-512 entries: element (r, p) of
 * the A panel at Ap[r*ars + p*aks] (packed: ars 1, aks 12; a transposed A in place:
 * ars 1, aks lda; a row-major A in place: ars lda, aks 1), B's 32 floats of step p at
 * Bp + p*bks. Inlined into each entry, so the packed kernel keeps its constant
 * offsets. */
static inline __attribute__((always_inline)) RP_T512 void
ukr512_body(int64_t kc, const float *restrict Ap, int64_t ars, int64_t aks, const float *restrict Bp, int64_t bks,
            float *restrict C, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta, const float *bias) {
#define RP_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps()
    RP_DECL(0);
    RP_DECL(1);
    RP_DECL(2);
    RP_DECL(3);
    RP_DECL(4);
    RP_DECL(5);
    RP_DECL(6);
    RP_DECL(7);
    RP_DECL(8);
    RP_DECL(9);
    RP_DECL(a);
    RP_DECL(b);
#undef RP_DECL
    for (int64_t i = 0; i < mr; i++) _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
    const float *a = Ap, *b = Bp;
#define RP_FMA(i, k)                                \
    do {                                            \
        __m512 ai = _mm512_set1_ps((a)[(k)*ars]);   \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0); \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1); \
    } while (0)
#define RP_STEP()                                                     \
    do {                                                              \
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16); \
        RP_FMA(0, 0);                                                 \
        RP_FMA(1, 1);                                                 \
        RP_FMA(2, 2);                                                 \
        RP_FMA(3, 3);                                                 \
        RP_FMA(4, 4);                                                 \
        RP_FMA(5, 5);                                                 \
        RP_FMA(6, 6);                                                 \
        RP_FMA(7, 7);                                                 \
        RP_FMA(8, 8);                                                 \
        RP_FMA(9, 9);                                                 \
        RP_FMA(a, 10);                                                \
        RP_FMA(b, 11);                                                \
        a += aks;                                                     \
        b += bks;                                                     \
    } while (0)
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        _mm_prefetch((const char *)(b + 8 * bks), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 8 * bks + 16), _MM_HINT_T0);
        RP_STEP();
        RP_STEP();
        _mm_prefetch((const char *)(b + 8 * bks), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 8 * bks + 16), _MM_HINT_T0);
        RP_STEP();
        RP_STEP();
    }
    for (; p < kc; p++) RP_STEP();
#undef RP_STEP
#undef RP_FMA

    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    if (mr == RP_GEMM_AVX512_MR && nr == RP_GEMM_AVX512_NR) {
        __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
        if (bias) {
            bias0 = _mm512_loadu_ps(bias);
            bias1 = _mm512_loadu_ps(bias + 16);
        }
#define RP_ROW(i, x0, x1)                                              \
    do {                                                               \
        float *c = C + (i)*ldc;                                        \
        __m512 v0 = _mm512_mul_ps(va, x0), v1 = _mm512_mul_ps(va, x1); \
        if (beta != 0.0f) {                                            \
            v0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c), v0);          \
            v1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + 16), v1);     \
        }                                                              \
        if (bias) {                                                    \
            v0 = _mm512_add_ps(v0, bias0);                             \
            v1 = _mm512_add_ps(v1, bias1);                             \
        }                                                              \
        _mm512_storeu_ps(c, v0);                                       \
        _mm512_storeu_ps(c + 16, v1);                                  \
    } while (0)
        RP_ROW(0, c00, c01);
        RP_ROW(1, c10, c11);
        RP_ROW(2, c20, c21);
        RP_ROW(3, c30, c31);
        RP_ROW(4, c40, c41);
        RP_ROW(5, c50, c51);
        RP_ROW(6, c60, c61);
        RP_ROW(7, c70, c71);
        RP_ROW(8, c80, c81);
        RP_ROW(9, c90, c91);
        RP_ROW(10, ca0, ca1);
        RP_ROW(11, cb0, cb1);
#undef RP_ROW
        return;
    }
    float tile[RP_GEMM_AVX512_MR][RP_GEMM_AVX512_NR] __attribute__((aligned(64)));
#define RP_PUT(i, x0, x1)                  \
    do {                                   \
        _mm512_store_ps(tile[i], x0);      \
        _mm512_store_ps(tile[i] + 16, x1); \
    } while (0)
    RP_PUT(0, c00, c01);
    RP_PUT(1, c10, c11);
    RP_PUT(2, c20, c21);
    RP_PUT(3, c30, c31);
    RP_PUT(4, c40, c41);
    RP_PUT(5, c50, c51);
    RP_PUT(6, c60, c61);
    RP_PUT(7, c70, c71);
    RP_PUT(8, c80, c81);
    RP_PUT(9, c90, c91);
    RP_PUT(10, ca0, ca1);
    RP_PUT(11, cb0, cb1);
#undef RP_PUT
    for (int64_t i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        for (int64_t j = 0; j < nr; j++) {
            float v = alpha * tile[i][j];
            if (beta != 0.0f) v = fmaf(beta, c[j], v);
            if (bias) v = v + bias[j];
            c[j] = v;
        }
    }
}

RP_T512 void rp_gemm_ukr_avx512(int64_t kc, const float *restrict Ap, const float *restrict Bp, float *restrict C,
                                int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta, const float *bias) {
    ukr512_body(kc, Ap, 1, RP_GEMM_AVX512_MR, Bp, RP_GEMM_AVX512_NR, C, ldc, mr, nr, alpha, beta, bias);
}

/* The same tile on operands read in place (rp_gemm_ukr_strided_fn). A transposed
 * A (ars = 1) keeps constant offsets between its 12 rows. */
RP_T512 void rp_gemm_ukr_avx512_strided(int64_t kc, const float *restrict A, int64_t ars, int64_t aks,
                                        const float *restrict B, int64_t bks, float *restrict C, int64_t ldc,
                                        int64_t mr, int64_t nr, float alpha, float beta, const float *bias) {
    if (ars == 1)
        ukr512_body(kc, A, 1, aks, B, bks, C, ldc, mr, nr, alpha, beta, bias);
    else
        ukr512_body(kc, A, ars, aks, B, bks, C, ldc, mr, nr, alpha, beta, bias);
}

/* 12 independent 16-lane FMA chains per thread. */
RP_T512 double rp_fma_peak_gflops_avx512(int threads, double seconds) {
    double total = 0.0;
    (void)threads;
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
    {
        __m512 r0 = _mm512_set1_ps(0.0f), r1 = _mm512_set1_ps(0.1f), r2 = _mm512_set1_ps(0.2f);
        __m512 r3 = _mm512_set1_ps(0.3f), r4 = _mm512_set1_ps(0.4f), r5 = _mm512_set1_ps(0.5f);
        __m512 r6 = _mm512_set1_ps(0.6f), r7 = _mm512_set1_ps(0.7f), r8 = _mm512_set1_ps(0.8f);
        __m512 r9 = _mm512_set1_ps(0.9f), r10 = _mm512_set1_ps(1.0f), r11 = _mm512_set1_ps(1.1f);
        const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
        const int64_t chunk = 1 << 14;
        int64_t iters = 0;
        double t0 = now_seconds(), t;
        do {
            for (int64_t k = 0; k < chunk; k++) {
                r0 = _mm512_fmadd_ps(r0, x, y);
                r1 = _mm512_fmadd_ps(r1, x, y);
                r2 = _mm512_fmadd_ps(r2, x, y);
                r3 = _mm512_fmadd_ps(r3, x, y);
                r4 = _mm512_fmadd_ps(r4, x, y);
                r5 = _mm512_fmadd_ps(r5, x, y);
                r6 = _mm512_fmadd_ps(r6, x, y);
                r7 = _mm512_fmadd_ps(r7, x, y);
                r8 = _mm512_fmadd_ps(r8, x, y);
                r9 = _mm512_fmadd_ps(r9, x, y);
                r10 = _mm512_fmadd_ps(r10, x, y);
                r11 = _mm512_fmadd_ps(r11, x, y);
                __asm__ volatile(""
                                 : "+v"(r0), "+v"(r1), "+v"(r2), "+v"(r3), "+v"(r4), "+v"(r5), "+v"(r6), "+v"(r7),
                                   "+v"(r8), "+v"(r9), "+v"(r10), "+v"(r11));
            }
            iters += chunk;
            t = now_seconds() - t0;
        } while (t < seconds);
        __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(r0, r1), _mm512_add_ps(r2, r3)),
                                 _mm512_add_ps(_mm512_add_ps(r4, r5), _mm512_add_ps(r6, r7)));
        s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(r8, r9), _mm512_add_ps(r10, r11)));
        volatile float sink = _mm512_reduce_add_ps(s);
        (void)sink;
        total += 12.0 * 16.0 * 2.0 * (double)iters / t * 1e-9;
    }
    return total;
}
#else
int rp_gemm_cpu_avx512(void) { return 0; }
void rp_gemm_ukr_avx512(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr, int64_t nr,
                        float alpha, float beta, const float *bias) {
    rp_gemm_ukr_avx2(kc, Ap, Bp, C, ldc, mr, nr, alpha, beta, bias); /* never called */
}
void rp_gemm_ukr_avx512_strided(int64_t kc, const float *A, int64_t ars, int64_t aks, const float *B, int64_t bks,
                                float *C, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta,
                                const float *bias) {
    (void)kc, (void)A, (void)ars, (void)aks, (void)B, (void)bks, (void)C, (void)ldc, (void)mr, (void)nr, (void)alpha,
        (void)beta, (void)bias; /* never called: without the AVX-512 form the kernel is never picked */
}
double rp_fma_peak_gflops_avx512(int threads, double seconds) { return rp_fma_peak_gflops_avx2(threads, seconds); }
#endif

#else
/* Not compiled for AVX2/FMA: never called (rp_simd_enabled() is 0). */
void rp_gemm_ukr_avx2(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr, int64_t nr,
                      float alpha, float beta, const float *bias) {
    (void)kc, (void)Ap, (void)Bp, (void)C, (void)ldc, (void)mr, (void)nr, (void)alpha, (void)beta, (void)bias;
}
double rp_fma_peak_gflops_avx2(int threads, double seconds) {
    (void)threads, (void)seconds;
    return 0.0;
}
int rp_gemm_cpu_avx512(void) { return 0; }
void rp_gemm_pack_rows_avx2(const float *X, int64_t ld, int64_t kc, int R, float *dst) {
    (void)X, (void)ld, (void)kc, (void)R, (void)dst;
}
void rp_colsum_strip_avx2(const float *X, int64_t M, int64_t N, int64_t j0, int64_t nb, int64_t rows_blk, float *out) {
    (void)X, (void)M, (void)N, (void)j0, (void)nb, (void)rows_blk, (void)out;
}
void rp_gemm_ukr_avx512(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr, int64_t nr,
                        float alpha, float beta, const float *bias) {
    (void)kc, (void)Ap, (void)Bp, (void)C, (void)ldc, (void)mr, (void)nr, (void)alpha, (void)beta, (void)bias;
}
void rp_gemm_ukr_avx512_strided(int64_t kc, const float *A, int64_t ars, int64_t aks, const float *B, int64_t bks,
                                float *C, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta,
                                const float *bias) {
    (void)kc, (void)A, (void)ars, (void)aks, (void)B, (void)bks, (void)C, (void)ldc, (void)mr, (void)nr, (void)alpha,
        (void)beta, (void)bias; /* never called: without the AVX-512 form the kernel is never picked */
}
double rp_fma_peak_gflops_avx512(int threads, double seconds) {
    (void)threads, (void)seconds;
    return 0.0;
}
#endif
