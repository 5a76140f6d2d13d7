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

/* ---- LayerNorm rows, several at once ------------------------------------
 * rp_span_ln_fwd, as GCC vectorises it here for D % 8 == 0, is a chain of
 * dependent steps per row: eight-lane partial sums, then their lanes added one
 * by one, a divide, a square root. One row at a time leaves the core waiting on
 * that chain (the small model's 1024 x 64 took 64 us). These kernels run
 * LN_ROWS rows side by side, each row with exactly the span's operations in the
 * span's order, so the same bits:
 *   acc = 0 (8 lanes); acc += x[8c .. 8c+7] for c = 0, 1, ...;
 *   s = 0; s += acc[0]; ...; s += acc[7]; m = s / D;
 *   acc = 0; acc = fma(x - m, x - m, acc) per chunk; v = (lanes added as s) / D;
 *   rs = 1 / sqrtf(v + eps); y = fma((x - m) * rs, w, b).
 * tests/test_fused_ops.py checks the bits against that order written in NumPy. */
#define LN_ROWS 4

static inline __attribute__((always_inline)) float hsum8_in_order(__m256 a) {
    float l[8];
    _mm256_storeu_ps(l, a);
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += l[i];
    return s;
}

/* R rows of D (D % 8 == 0): s = x + y (y NULL: no add, the rows are x), h = LayerNorm(s) w + b. */
static inline __attribute__((always_inline)) void ln_fwd_rows(const int R, const float *x, const float *y, float *s,
                                                              const float *w, const float *b, float *h, int64_t D,
                                                              float eps, float *mean, float *rstd) {
    const float *src = y ? s : x;
    __m256 acc[LN_ROWS], mv[LN_ROWS], rv[LN_ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < D; j += 8)
        for (int r = 0; r < R; r++) {
            __m256 v = _mm256_loadu_ps(x + r * D + j);
            if (y) {
                v = _mm256_add_ps(v, _mm256_loadu_ps(y + r * D + j));
                _mm256_storeu_ps(s + r * D + j, v);
            }
            acc[r] = _mm256_add_ps(acc[r], v);
        }
    float m[LN_ROWS];
    for (int r = 0; r < R; r++) {
        m[r] = hsum8_in_order(acc[r]) / (float)D;
        mv[r] = _mm256_set1_ps(m[r]);
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < D; j += 8)
        for (int r = 0; r < R; r++) {
            const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(src + r * D + j), mv[r]);
            acc[r] = _mm256_fmadd_ps(d, d, acc[r]);
        }
    for (int r = 0; r < R; r++) {
        const float v = hsum8_in_order(acc[r]) / (float)D;
        const float rs = 1.0f / sqrtf(v + eps);
        rv[r] = _mm256_set1_ps(rs);
        mean[r] = m[r];
        rstd[r] = rs;
    }
    for (int64_t j = 0; j < D; j += 8) {
        const __m256 wj = _mm256_loadu_ps(w + j), bj = _mm256_loadu_ps(b + j);
        for (int r = 0; r < R; r++) {
            const __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(src + r * D + j), mv[r]), rv[r]);
            _mm256_storeu_ps(h + r * D + j, _mm256_fmadd_ps(t, wj, bj));
        }
    }
}

void rp_ops_avx2_add_ln_fwd_rows(const float *x, const float *y, float *s, const float *w, const float *b, float *h,
                                 int64_t n, int64_t D, float eps, float *mean, float *rstd) {
    int64_t r = 0;
    for (; r + LN_ROWS <= n; r += LN_ROWS)
        ln_fwd_rows(LN_ROWS, x + r * D, y ? y + r * D : NULL, y ? s + r * D : NULL, w, b, h + r * D, D, eps, mean + r,
                    rstd + r);
    for (; r < n; r++)
        ln_fwd_rows(1, x + r * D, y ? y + r * D : NULL, y ? s + r * D : NULL, w, b, h + r * D, D, eps, mean + r,
                    rstd + r);
}

/* The backward, rp_span_ln_bwd's operations in its order (GCC, AVX2, D % 8 == 0):
 *   h = (x - m) * rs; pw = fma(h, g, pw); pb = pb + g (rows in order);
 *   acc1 = fma(g, w, acc1); acc2 = fma(h, g * w, acc2); s1, s2 = lanes added in order;
 *   a1 = s1 / D, a2 = s2 / D; dx = fnmadd(h, a2, fmsub(w, g, a1)) * rs;
 * then dx = ds + dx when ds is given (the fused residual). pw / pb stay in a register
 * across the R rows of a chunk of 8 columns. */
static inline __attribute__((always_inline)) void ln_bwd_rows(const int R, const float *x, const float *w,
                                                              const float *mean, const float *rstd, const float *g,
                                                              const float *ds, float *dx, float *pw, float *pb,
                                                              int64_t D) {
    __m256 acc1[LN_ROWS], acc2[LN_ROWS], mv[LN_ROWS], rv[LN_ROWS];
    for (int r = 0; r < R; r++) {
        mv[r] = _mm256_set1_ps(mean[r]);
        rv[r] = _mm256_set1_ps(rstd[r]);
        acc1[r] = acc2[r] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < D; j += 8) {
        const __m256 wj = _mm256_loadu_ps(w + j);
        __m256 pwv = pw ? _mm256_loadu_ps(pw + j) : wj, pbv = pb ? _mm256_loadu_ps(pb + j) : wj;
        for (int r = 0; r < R; r++) {
            const __m256 gr = _mm256_loadu_ps(g + r * D + j);
            const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + r * D + j), mv[r]), rv[r]);
            if (pw) pwv = _mm256_fmadd_ps(h, gr, pwv);
            if (pb) pbv = _mm256_add_ps(pbv, gr);
            if (dx) {
                acc1[r] = _mm256_fmadd_ps(gr, wj, acc1[r]);
                acc2[r] = _mm256_fmadd_ps(h, _mm256_mul_ps(gr, wj), acc2[r]);
            }
        }
        if (pw) _mm256_storeu_ps(pw + j, pwv);
        if (pb) _mm256_storeu_ps(pb + j, pbv);
    }
    if (!dx) return;
    __m256 a1[LN_ROWS], a2[LN_ROWS];
    for (int r = 0; r < R; r++) {
        a1[r] = _mm256_set1_ps(hsum8_in_order(acc1[r]) / (float)D);
        a2[r] = _mm256_set1_ps(hsum8_in_order(acc2[r]) / (float)D);
    }
    for (int64_t j = 0; j < D; j += 8) {
        const __m256 wj = _mm256_loadu_ps(w + j);
        for (int r = 0; r < R; r++) {
            const __m256 gr = _mm256_loadu_ps(g + r * D + j);
            const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + r * D + j), mv[r]), rv[r]);
            __m256 d = _mm256_mul_ps(_mm256_fnmadd_ps(h, a2[r], _mm256_fmsub_ps(wj, gr, a1[r])), rv[r]);
            if (ds) {
                /* the product rounded first, as rp_span_ln_bwd stores it before the add:
                 * fp-contract=fast (top of file) would otherwise fuse the two */
                __asm__("" : "+x"(d));
                d = _mm256_add_ps(_mm256_loadu_ps(ds + r * D + j), d);
            }
            _mm256_storeu_ps(dx + r * D + j, d);
        }
    }
}

void rp_ops_avx2_add_ln_bwd_rows(const float *x, const float *w, const float *mean, const float *rstd, const float *g,
                                 const float *ds, float *dx, float *pw, float *pb, int64_t n, int64_t D) {
    int64_t r = 0;
    for (; r + LN_ROWS <= n; r += LN_ROWS)
        ln_bwd_rows(LN_ROWS, x + r * D, w, mean + r, rstd + r, g + r * D, ds ? ds + r * D : NULL,
                    dx ? dx + r * D : NULL, pw, pb, D);
    for (; r < n; r++)
        ln_bwd_rows(1, x + r * D, w, mean + r, rstd + r, g + r * D, ds ? ds + r * D : NULL, dx ? dx + r * D : NULL, pw,
                    pb, D);
}

/* RMSNorm rows, the same way (rp_span_rms_fwd / _bwd as GCC vectorises them, D % 8 == 0):
 *   forward: acc = fma(x, x, acc); s = lanes added in order; rs = 1 / sqrtf(s / D + eps);
 *            y = (x * rs) * w;
 *   backward: h = x * rs; pw = fma(h, g, pw) (rows in order); acc = fma(g * w, h, acc);
 *            a = (lanes added in order) / D; dx = fmsub(w, g, h * a) * rs. */
static inline __attribute__((always_inline)) void rms_fwd_rows(const int R, const float *x, const float *w, float *y,
                                                               int64_t D, float eps, float *rstd) {
    __m256 acc[LN_ROWS], rv[LN_ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < D; j += 8)
        for (int r = 0; r < R; r++) {
            const __m256 v = _mm256_loadu_ps(x + r * D + j);
            acc[r] = _mm256_fmadd_ps(v, v, acc[r]);
        }
    for (int r = 0; r < R; r++) {
        const float rs = 1.0f / sqrtf(hsum8_in_order(acc[r]) / (float)D + eps);
        rv[r] = _mm256_set1_ps(rs);
        rstd[r] = rs;
    }
    for (int64_t j = 0; j < D; j += 8) {
        const __m256 wj = _mm256_loadu_ps(w + j);
        for (int r = 0; r < R; r++)
            _mm256_storeu_ps(y + r * D + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + r * D + j), rv[r]), wj));
    }
}

static inline __attribute__((always_inline)) void rms_bwd_rows(const int R, const float *x, const float *w,
                                                               const float *rstd, const float *g, float *dx, float *pw,
                                                               int64_t D) {
    __m256 acc[LN_ROWS], rv[LN_ROWS];
    for (int r = 0; r < R; r++) {
        rv[r] = _mm256_set1_ps(rstd[r]);
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < D; j += 8) {
        const __m256 wj = _mm256_loadu_ps(w + j);
        __m256 pwv = pw ? _mm256_loadu_ps(pw + j) : wj;
        for (int r = 0; r < R; r++) {
            const __m256 gr = _mm256_loadu_ps(g + r * D + j);
            const __m256 h = _mm256_mul_ps(_mm256_loadu_ps(x + r * D + j), rv[r]);
            if (pw) pwv = _mm256_fmadd_ps(h, gr, pwv);
            if (dx) acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(gr, wj), h, acc[r]);
        }
        if (pw) _mm256_storeu_ps(pw + j, pwv);
    }
    if (!dx) return;
    __m256 av[LN_ROWS];
    for (int r = 0; r < R; r++) av[r] = _mm256_set1_ps(hsum8_in_order(acc[r]) / (float)D);
    for (int64_t j = 0; j < D; j += 8) {
        const __m256 wj = _mm256_loadu_ps(w + j);
        for (int r = 0; r < R; r++) {
            const __m256 gr = _mm256_loadu_ps(g + r * D + j);
            const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + r * D + j), rv[r]), av[r]);
            _mm256_storeu_ps(dx + r * D + j, _mm256_mul_ps(_mm256_fmsub_ps(wj, gr, t), rv[r]));
        }
    }
}

void rp_ops_avx2_rms_fwd_rows(const float *x, const float *w, float *y, int64_t n, int64_t D, float eps, float *rstd) {
    int64_t r = 0;
    for (; r + LN_ROWS <= n; r += LN_ROWS) rms_fwd_rows(LN_ROWS, x + r * D, w, y + r * D, D, eps, rstd + r);
    for (; r < n; r++) rms_fwd_rows(1, x + r * D, w, y + r * D, D, eps, rstd + r);
}

void rp_ops_avx2_rms_bwd_rows(const float *x, const float *w, const float *rstd, const float *g, float *dx, float *pw,
                              int64_t n, int64_t D) {
    int64_t r = 0;
    for (; r + LN_ROWS <= n; r += LN_ROWS)
        rms_bwd_rows(LN_ROWS, x + r * D, w, rstd + r, g + r * D, dx ? dx + r * D : NULL, pw, D);
    for (; r < n; r++) rms_bwd_rows(1, x + r * D, w, rstd + r, g + r * D, dx ? dx + r * D : NULL, pw, D);
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
