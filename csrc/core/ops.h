/* ops area: elementwise arithmetic, activations, norms, softmax, cross-entropy,
 * embedding, dropout. Shapes in the comments; (N, D) means N rows of D
 * contiguous floats (the leading axes of a tensor flattened into N).
 *
 * Every function returns RP_OK or a negative RP_E* code. Backward functions
 * write their outputs (they do not accumulate). Output pointers documented as
 * "may be NULL" are skipped. Results are bit-identical for any thread count:
 * reductions over rows go through RP_OPS_NCHUNK fixed chunks summed in order.
 */
#ifndef RELPOS_OPS_H
#define RELPOS_OPS_H

#include "relpos.h"

/* The span kernels below select with ?: on floats; GCC if-converts (and so
 * vectorises) those only without -ftrapping-math. relpos never reads the FP
 * exception flags, so every ops translation unit drops them. Must come before
 * any function definition of the including file. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound on the partial buffers of a row reduction (dweight, dbias, db). */
#define RP_OPS_NCHUNK 64

/* ---- elementwise binary: out[i] = op(a[i], b[i % nb]) -------------------
 * a, out: n floats; b: nb floats with nb == n (same shape), nb == 1 (scalar)
 * or n % nb == 0 (a vector over the last axis of a, broadcast over rows).
 * The reversed ops put the broadcast operand first: RSUB is b - a, RDIV b / a. */
enum { RP_OP_ADD = 0, RP_OP_SUB = 1, RP_OP_MUL = 2, RP_OP_DIV = 3, RP_OP_RSUB = 4, RP_OP_RDIV = 5 };
int rp_ops_binary_fwd(int op, const float *a, const float *b, float *out, int64_t n, int64_t nb);
/* da: n floats (may be NULL); db: nb floats, the gradient reduced over rows (may be NULL). */
int rp_ops_binary_bwd(int op, const float *a, const float *b, const float *grad, float *da, float *db, int64_t n,
                      int64_t nb);
/* out = alpha * x (n floats). */
int rp_ops_scale(const float *x, float alpha, float *out, int64_t n);
/* out (D) = sum over the N rows of g (N, D), in a fixed order. */
int rp_ops_sum_rows(const float *g, float *out, int64_t N, int64_t D);

/* ---- activations: y = f(x), dx = f'(x) * grad (n floats) ---------------- */
enum { RP_ACT_GELU_TANH = 0, RP_ACT_GELU_ERF = 1, RP_ACT_RELU = 2, RP_ACT_SILU = 3 };
int rp_ops_act_fwd(int kind, const float *x, float *y, int64_t n);
int rp_ops_act_bwd(int kind, const float *x, const float *grad, float *dx, int64_t n);
/* Test hook: one span of the activation by one form (RP_EXP_SCALAR = the portable
 * span, RP_EXP_AVX2, RP_EXP_AVX512 of simd_math.h), single-threaded; the forward
 * when grad is NULL, else dx = act'(x) * grad into y. RP_ENOSIMD for a form the
 * CPU or the build lacks. The AVX2 and AVX-512 forms give the same bits. */
int rp_ops_act_form(int form, int kind, const float *x, const float *grad, float *y, int64_t n);

/* ---- LayerNorm over the last axis ---------------------------------------
 * x, y: (N, D); weight, bias: (D) (either may be NULL: 1 and 0);
 * mean, rstd: (N) saved for the backward. */
int rp_ops_layernorm_fwd(const float *x, const float *weight, const float *bias, float *y, float *mean, float *rstd,
                         int64_t N, int64_t D, float eps);
/* dx: (N, D), dweight, dbias: (D); each may be NULL. */
int rp_ops_layernorm_bwd(const float *x, const float *weight, const float *mean, const float *rstd, const float *grad,
                         float *dx, float *dweight, float *dbias, int64_t N, int64_t D);

/* ---- RMSNorm over the last axis: y = x * rstd * weight ------------------
 * x, y: (N, D); weight: (D) or NULL; rstd: (N). */
int rp_ops_rmsnorm_fwd(const float *x, const float *weight, float *y, float *rstd, int64_t N, int64_t D, float eps);
int rp_ops_rmsnorm_bwd(const float *x, const float *weight, const float *rstd, const float *grad, float *dx,
                       float *dweight, int64_t N, int64_t D);

/* ---- softmax / log-softmax over the last axis of (N, D) ----------------- */
int rp_ops_softmax_fwd(const float *x, float *y, int64_t N, int64_t D);
/* dx = y * (grad - sum(grad * y)), from the saved output y. */
int rp_ops_softmax_bwd(const float *y, const float *grad, float *dx, int64_t N, int64_t D);
int rp_ops_log_softmax_fwd(const float *x, float *y, int64_t N, int64_t D);
/* dx = grad - exp(y) * sum(grad), from the saved output y. */
int rp_ops_log_softmax_bwd(const float *y, const float *grad, float *dx, int64_t N, int64_t D);

/* ---- fused log-softmax cross-entropy ------------------------------------
 * logits: (N, V); targets: (N) int64; rows whose target == ignore_index count
 * for nothing. lse: (N) saved (0 for ignored rows). *loss = mean over the
 * *count counted rows (0 when none). Targets must be in [0, V) or ignored:
 * RP_EINDEX otherwise (*bad gets the first bad row; may be NULL). */
int rp_ops_xent_fwd(const float *logits, const int64_t *targets, float *lse, float *loss, int64_t *count, int64_t N,
                    int64_t V, int64_t ignore_index, int64_t *bad);
/* dlogits: (N, V) = (softmax - onehot) * dloss / count; zero rows for ignored targets. */
int rp_ops_xent_bwd(const float *logits, const int64_t *targets, const float *lse, float dloss, int64_t count,
                    float *dlogits, int64_t N, int64_t V, int64_t ignore_index);

/* ---- embedding ---------------------------------------------------------
 * ids: (n) int64 in [0, V); weight: (V, D); out: (n, D). */
/* Index of the first id outside [0, V), or -1 when all are in range. */
int64_t rp_ops_first_bad_id(const int64_t *ids, int64_t n, int64_t V);
int rp_ops_embedding_fwd(const int64_t *ids, const float *weight, float *out, int64_t n, int64_t V, int64_t D);
/* dweight: (V, D) written: dweight[v] = sum of grad rows whose id is v, summed
 * in token order (parallel over column blocks of D). */
int rp_ops_embedding_bwd(const int64_t *ids, const float *grad, float *dweight, int64_t n, int64_t V, int64_t D);

/* ---- dropout -----------------------------------------------------------
 * Element i (flat index) is kept when u(seed, i) >= p, u a uniform [0, 1)
 * number with 32 bits from a counter-based generator (SplitMix64 output
 * i / 2 of the stream keyed by the seed): the mask depends on nothing else
 * (not the thread count, not the call order). Kept elements are scaled by
 * 1 / (1 - p); y = x * (keep ? 1 / (1 - p) : 0), a product, so a dropped NaN or
 * inf gives NaN (as torch). 0 <= p < 1. The backward regenerates the mask. */
int rp_ops_dropout_fwd(const float *x, float *y, int64_t n, float p, uint64_t seed);
int rp_ops_dropout_bwd(const float *grad, float *dx, int64_t n, float p, uint64_t seed);
/* mask[i] = 1 if element i is kept (n bytes). */
int rp_ops_dropout_mask(uint8_t *mask, int64_t n, float p, uint64_t seed);

#ifdef __cplusplus
}
#endif

/* Rows per parallel work item of the LayerNorm forwards (a multiple of the SIMD
 * kernel's rows side by side). */
#define RP_OPS_LN_BLOCK 16

/* Parallel loop that stays serial when the work is small. */
#if RP_HAVE_OPENMP
#define RP_OPS_PFOR(cond) RP_PRAGMA(omp parallel for schedule(static) num_threads(rp_par_threads()) if (cond))
#define RP_OPS_SIMD_SUM(v) RP_PRAGMA(omp simd reduction(+ : v))
#define RP_OPS_SIMD_MAX(v) RP_PRAGMA(omp simd reduction(max : v))
#else
#define RP_OPS_SIMD_MAX(v)
#define RP_OPS_PFOR(cond)
#define RP_OPS_SIMD_SUM(v)
#endif

/* Work below these sizes runs on one thread: a parallel region costs a few
 * microseconds on an idle machine and far more on a busy one, so only work
 * that takes clearly longer is split. Memory-bound loops (add, copy, scale):
 * RP_OPS_PAR_MIN floats; loops with an exp or a row reduction per element
 * (activations, norms, softmax, cross-entropy, dropout): RP_OPS_PAR_MIN_COMPUTE. */
#define RP_OPS_PAR_MIN 65536
#define RP_OPS_PAR_MIN_COMPUTE 16384

/* ======================================================================
 * Span kernels: branch-free loops over contiguous floats, written so the
 * compiler vectorises them. They are static inline so each translation unit
 * instantiates them with its own flags: the portable files (SSE2 on x86-64)
 * and ops_x86.c (-mavx2 -mfma, 8 lanes). Both paths use the same formulas;
 * they may differ in the last bits (vector width changes a sum's order, and
 * ops_x86.c contracts a * b + c), never with the thread count. Every exp is
 * rp_exp (simd_math.h), the same bits in both; in the portable files its fused
 * multiply-adds are libm fmaf calls, so there the exp loops stay scalar: the
 * portable path is the fallback, the AVX2 one is what runs on x86-64.
 * ====================================================================== */

#include <math.h>
#include <string.h>

#include "simd_math.h" /* rp_exp: the one exp of every path */

/* The activation spans are written so that the compiler's contraction setting
 * cannot change a bit (as rp_exp): every multiply-add is an explicit fmaf and no
 * other product feeds a sum. ops_x86.c compiles them twice, for AVX2 and for
 * AVX-512F, and lets the compiler contract (fp-contract=fast); with a product
 * left to feed a sum, one instantiation fused it and the other did not (the
 * AVX-512 loop's if-converted SiLU gradient), and the two gave different last
 * bits. With explicit fmaf they are one sequence of IEEE operations, lane for
 * lane and in the scalar tails alike (tests/test_simd_math.py). */

/* erfc(a) for a >= 0 (Numerical Recipes' Chebyshev fit, fractional error
 * below 1.2e-7 in exact arithmetic). */
static inline float rp_erfcf_pos(float a) {
    float t = 1.0f / fmaf(0.5f, a, 1.0f);
    float q = 0.17087277f;
    q = fmaf(q, t, -0.82215223f);
    q = fmaf(q, t, 1.48851587f);
    q = fmaf(q, t, -1.13520398f);
    q = fmaf(q, t, 0.27886807f);
    q = fmaf(q, t, -0.18628806f);
    q = fmaf(q, t, 0.09678418f);
    q = fmaf(q, t, 0.37409196f);
    q = fmaf(q, t, 1.00002368f);
    q = fmaf(q, t, -1.26551223f);
    return t * rp_exp(fmaf(-a, a, q));
}

/* Phi(x) = 0.5 (1 + erf(x / sqrt 2)), accurate in relative terms in both tails. */
static inline float rp_normcdf(float x) {
    float e = rp_erfcf_pos((x < 0.0f ? -x : x) * 0.70710678118654752f);
    return x < 0.0f ? 0.5f * e : fmaf(-0.5f, e, 1.0f);
}

static inline float rp_sigmoidf(float x) { return 1.0f / (1.0f + rp_exp(-x)); }

#define RP_GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define RP_GELU_C 0.044715f
#define RP_INV_SQRT_2PI 0.3989422804014327f

/* exp(-2 u) of the tanh GELU, u = K (v + C v^3) */
static inline float rp_gelu_tanh_exp(float v) { return rp_exp((-2.0f * RP_GELU_K) * fmaf((RP_GELU_C * v) * v, v, v)); }

/* y = act(x) over n floats */
static inline void rp_span_act_fwd(int kind, const float *x, float *y, int64_t n) {
    switch (kind) {
    case RP_ACT_GELU_TANH:
        /* 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation in the negative tail */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            y[i] = v / (1.0f + rp_gelu_tanh_exp(v));
        }
        break;
    case RP_ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * rp_normcdf(x[i]);
        break;
    case RP_ACT_RELU:
        /* x < 0, not !(x > 0): relu(NaN) = NaN (as torch) */
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i];
        break;
    default:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * rp_sigmoidf(x[i]);
        break;
    }
}

/* dx = act'(x) * grad over n floats */
static inline void rp_span_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n) {
    switch (kind) {
    case RP_ACT_GELU_TANH:
        /* with e = exp(-2u), s = 1 / (1 + e) = 0.5 (1 + tanh u) and
         * s (1 - s) = e s^2 (no cancellation near s = 1; 0 when e = inf):
         * d/dx = s + 2 x s (1 - s) du/dx. x^2 in du/dx is capped at 1e30:
         * it matters only where s (1 - s) > 0 (|x| < ~10), and for |x| > 1.8e19
         * it overflowed, making the term 0 * inf = NaN. It stays NaN for
         * x = +-inf (inf * 0), as torch. */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            float e = rp_gelu_tanh_exp(v);
            float s = 1.0f / (1.0f + e);
            float ss = s == 0.0f ? 0.0f : (e * s) * s;
            float v2 = v * v;
            v2 = v2 < 1e30f ? v2 : 1e30f;
            float du = RP_GELU_K * fmaf(3.0f * RP_GELU_C, v2, 1.0f);
            dx[i] = g[i] * fmaf(v * (2.0f * ss), du, s); /* not (2 v): it overflows for |v| > 1.7e38 */
        }
        break;
    case RP_ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            float pdf = RP_INV_SQRT_2PI * rp_exp((-0.5f * v) * v);
            dx[i] = g[i] * fmaf(v, pdf, rp_normcdf(v));
        }
        break;
    case RP_ACT_RELU:
        /* zero where x <= 0 only: a NaN x passes the gradient (torch's threshold_backward) */
        for (int64_t i = 0; i < n; i++) dx[i] = x[i] <= 0.0f ? 0.0f : g[i];
        break;
    default:
        /* 1 - s = e s with e = exp(-x): exact near s = 1 (1 when e = inf) */
        for (int64_t i = 0; i < n; i++) {
            float e = rp_exp(-x[i]);
            float s = 1.0f / (1.0f + e);
            float one_minus = s == 0.0f ? 1.0f : e * s;
            dx[i] = (g[i] * s) * fmaf(x[i], one_minus, 1.0f);
        }
        break;
    }
}

static inline float rp_span_max(const float *x, int64_t n) {
    float m = -INFINITY;
    RP_OPS_SIMD_MAX(m)
    for (int64_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* y[j] = exp(x[j] - m); returns the sum of y (y may be NULL: sum only). */
static inline float rp_span_exp_sum(const float *x, float m, float *y, int64_t n) {
    float s = 0.0f;
    if (y) {
        for (int64_t j = 0; j < n; j++) y[j] = rp_exp(x[j] - m);
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < n; j++) s += y[j];
    } else {
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < n; j++) s += rp_exp(x[j] - m);
    }
    return s;
}

/* y[j] = exp(x[j] - c) * scale + add * z[j] (z may be NULL: add ignored).
 * Elementwise, so y may be x or z (in place); the spans carry no `restrict`:
 * GCC checks overlap at run time and still vectorises. */
static inline void rp_span_exp_scale(const float *x, float c, float scale, const float *z, float add, float *y,
                                     int64_t n) {
    if (z) {
        for (int64_t j = 0; j < n; j++) y[j] = rp_exp(x[j] - c) * scale + add * z[j];
    } else {
        for (int64_t j = 0; j < n; j++) y[j] = rp_exp(x[j] - c) * scale;
    }
}

/* ---- row spans of the norms (weight/bias never NULL here: the callers
 * substitute ones/zeros). Statistics in float, two passes (mean, then the
 * centred sum of squares), so a large common offset costs no accuracy. */

/* one LayerNorm row of D: y = (x - mean) * rstd * w + b */
static inline void rp_span_ln_fwd(const float *x, const float *w, const float *b, float *y, int64_t D, float eps,
                                  float *mean, float *rstd) {
    float s = 0.0f;
    RP_OPS_SIMD_SUM(s)
    for (int64_t j = 0; j < D; j++) s += x[j];
    const float m = D > 0 ? s / (float)D : 0.0f;
    float v = 0.0f;
    RP_OPS_SIMD_SUM(v)
    for (int64_t j = 0; j < D; j++) v += (x[j] - m) * (x[j] - m);
    v = D > 0 ? v / (float)D : 0.0f;
    const float rs = 1.0f / sqrtf(v + eps);
    for (int64_t j = 0; j < D; j++) y[j] = (x[j] - m) * rs * w[j] + b[j];
    *mean = m;
    *rstd = rs;
}

/* one LayerNorm row backward: pw += g * h, pb += g (either may be NULL);
 * dx = rs * (g w - mean(g w) - h mean(g w h)) (dx may be NULL). */
static inline void rp_span_ln_bwd(const float *x, const float *w, float m, float rs, const float *g, float *dx,
                                  float *pw, float *pb, int64_t D) {
    if (pw)
        for (int64_t j = 0; j < D; j++) pw[j] += g[j] * ((x[j] - m) * rs);
    if (pb)
        for (int64_t j = 0; j < D; j++) pb[j] += g[j];
    if (!dx) return;
    float s1 = 0.0f, s2 = 0.0f;
    RP_OPS_SIMD_SUM(s1)
    for (int64_t j = 0; j < D; j++) s1 += g[j] * w[j];
    RP_OPS_SIMD_SUM(s2)
    for (int64_t j = 0; j < D; j++) s2 += g[j] * w[j] * ((x[j] - m) * rs);
    const float a1 = s1 / (float)D, a2 = s2 / (float)D;
    for (int64_t j = 0; j < D; j++) dx[j] = rs * (g[j] * w[j] - a1 - ((x[j] - m) * rs) * a2);
}

/* one RMSNorm row: y = x * rstd * w */
static inline void rp_span_rms_fwd(const float *x, const float *w, float *y, int64_t D, float eps, float *rstd) {
    float s = 0.0f;
    RP_OPS_SIMD_SUM(s)
    for (int64_t j = 0; j < D; j++) s += x[j] * x[j];
    const float rs = 1.0f / sqrtf((D > 0 ? s / (float)D : 0.0f) + eps);
    for (int64_t j = 0; j < D; j++) y[j] = x[j] * rs * w[j];
    *rstd = rs;
}

/* one RMSNorm row backward: pw += g * h (may be NULL); dx = rs (g w - h mean(g w h)). */
static inline void rp_span_rms_bwd(const float *x, const float *w, float rs, const float *g, float *dx, float *pw,
                                   int64_t D) {
    if (pw)
        for (int64_t j = 0; j < D; j++) pw[j] += g[j] * (x[j] * rs);
    if (!dx) return;
    float s = 0.0f;
    RP_OPS_SIMD_SUM(s)
    for (int64_t j = 0; j < D; j++) s += g[j] * w[j] * (x[j] * rs);
    const float a = s / (float)D;
    for (int64_t j = 0; j < D; j++) dx[j] = rs * (g[j] * w[j] - (x[j] * rs) * a);
}

/* ---- AVX2 entry points (ops_x86.c), used when rp_simd_enabled() ------- */
#ifdef __cplusplus
extern "C" {
#endif
void rp_ops_avx2_act_fwd(int kind, const float *x, float *y, int64_t n);
void rp_ops_avx2_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n);
/* the same span source compiled for AVX-512F, 16 lanes (ops_x86.c; the AVX2 spans where the
 * build has no AVX-512 form): the same IEEE operations lane for lane, so the same bits */
void rp_ops_avx512_act_fwd(int kind, const float *x, float *y, int64_t n);
void rp_ops_avx512_act_bwd(int kind, const float *x, const float *g, float *dx, int64_t n);
float rp_ops_avx2_exp_sum(const float *x, float m, float *y, int64_t n);
void rp_ops_avx2_exp_scale(const float *x, float c, float scale, const float *z, float add, float *y, int64_t n);
void rp_ops_avx2_ln_fwd(const float *x, const float *w, const float *b, float *y, int64_t D, float eps, float *mean,
                        float *rstd);
void rp_ops_avx2_ln_bwd(const float *x, const float *w, float m, float rs, const float *g, float *dx, float *pw,
                        float *pb, int64_t D);
/* n rows of D, D % 8 == 0: s = x + y (y NULL: no add), h = LayerNorm(s) w + b, several rows at
 * once with the bits of rp_ops_avx2_ln_fwd row by row */
void rp_ops_avx2_add_ln_fwd_rows(const float *x, const float *y, float *s, const float *w, const float *b, float *h,
                                 int64_t n, int64_t D, float eps, float *mean, float *rstd);
/* n rows backward, D % 8 == 0: pw += g h, pb += g (rows in order; either may be NULL), dx =
 * LayerNorm_bwd (+ ds when given; dx NULL: none), with the bits of rp_ops_avx2_ln_bwd row by row */
void rp_ops_avx2_add_ln_bwd_rows(const float *x, const float *w, const float *mean, const float *rstd, const float *g,
                                 const float *ds, float *dx, float *pw, float *pb, int64_t n, int64_t D);
void rp_ops_avx2_rms_fwd(const float *x, const float *w, float *y, int64_t D, float eps, float *rstd);
/* n rows of D, D % 8 == 0, several at once, with the bits of rp_ops_avx2_rms_fwd / _bwd row by row
 * (pw += g h in row order; pw or dx may be NULL) */
void rp_ops_avx2_rms_fwd_rows(const float *x, const float *w, float *y, int64_t n, int64_t D, float eps, float *rstd);
void rp_ops_avx2_rms_bwd_rows(const float *x, const float *w, const float *rstd, const float *g, float *dx, float *pw,
                              int64_t n, int64_t D);
void rp_ops_avx2_rms_bwd(const float *x, const float *w, float rs, const float *g, float *dx, float *pw, int64_t D);
#ifdef __cplusplus
}
#endif

/* Dispatch: the AVX2 instantiation when compiled in and `simd` (evaluate
 * rp_simd_enabled() once per call, outside the loops). */
/* y = act(x) (g NULL) or dx = act'(x) * g over n floats, with the activation
 * spans compiled for exp form `form` (RP_EXP_*; the caller checked that the CPU
 * has it). Every form gives the same bits. */
static inline void rp_ops_act_span_form(int form, int kind, const float *x, const float *g, float *y, int64_t n) {
#if RP_HAVE_X86_TU
    if (form == RP_EXP_AVX512) {
        if (g)
            rp_ops_avx512_act_bwd(kind, x, g, y, n);
        else
            rp_ops_avx512_act_fwd(kind, x, y, n);
        return;
    }
    if (form == RP_EXP_AVX2) {
        if (g)
            rp_ops_avx2_act_bwd(kind, x, g, y, n);
        else
            rp_ops_avx2_act_fwd(kind, x, y, n);
        return;
    }
#endif
    (void)form;
    if (g)
        rp_span_act_bwd(kind, x, g, y, n);
    else
        rp_span_act_fwd(kind, x, y, n);
}

/* The form the kernels use: the widest the CPU has when SIMD is on. */
static inline int rp_ops_act_form_in_use(int simd) {
#if RP_HAVE_X86_TU
    if (simd) return rp_exp_have_avx512() ? RP_EXP_AVX512 : RP_EXP_AVX2;
#endif
    (void)simd;
    return RP_EXP_SCALAR;
}

static inline void rp_ops_act_fwd_span(int simd, int kind, const float *x, float *y, int64_t n) {
    rp_ops_act_span_form(rp_ops_act_form_in_use(simd), kind, x, NULL, y, n);
}

static inline void rp_ops_act_bwd_span(int simd, int kind, const float *x, const float *g, float *dx, int64_t n) {
    rp_ops_act_span_form(rp_ops_act_form_in_use(simd), kind, x, g, dx, n);
}

static inline float rp_ops_exp_sum(int simd, const float *x, float m, float *y, int64_t n) {
#if RP_HAVE_X86_TU
    if (simd) return rp_ops_avx2_exp_sum(x, m, y, n);
#endif
    (void)simd;
    return rp_span_exp_sum(x, m, y, n);
}

static inline void rp_ops_exp_scale(int simd, const float *x, float c, float scale, const float *z, float add, float *y,
                                    int64_t n) {
#if RP_HAVE_X86_TU
    if (simd && !z && rp_exp_have_avx512()) {
        /* exp(x - c) by the hand-written 16-lane exp, then the product: the span's two
         * roundings (its AVX2 build makes the exp's clamps compare-and-blend chains) */
        rp_exp_span_avx512(x, c, y, n);
        for (int64_t j = 0; j < n; j++) y[j] *= scale;
        return;
    }
    if (simd) {
        rp_ops_avx2_exp_scale(x, c, scale, z, add, y, n);
        return;
    }
#endif
    (void)simd;
    rp_span_exp_scale(x, c, scale, z, add, y, n);
}

static inline void rp_ops_ln_fwd(int simd, const float *x, const float *w, const float *b, float *y, int64_t D,
                                 float eps, float *mean, float *rstd) {
#if RP_HAVE_X86_TU
    if (simd) {
        rp_ops_avx2_ln_fwd(x, w, b, y, D, eps, mean, rstd);
        return;
    }
#endif
    (void)simd;
    rp_span_ln_fwd(x, w, b, y, D, eps, mean, rstd);
}

/* The norms' row kernels (ops_x86.c) copy GCC's order for whole 8-float chunks only:
 * other widths, and the portable path, run the spans one row at a time. */
static inline int rp_ops_norm_rows_simd(int simd, int64_t D) { return simd && D >= 8 && D % 8 == 0; }

/* n rows of D: s = x + y (y NULL: no add, s unused), h = LayerNorm(s) * w + b; the same bits
 * as rp_ops_ln_fwd row by row (after the add). */
static inline void rp_ops_add_ln_fwd_rows(int simd, const float *x, const float *y, float *s, const float *w,
                                          const float *b, float *h, int64_t n, int64_t D, float eps, float *mean,
                                          float *rstd) {
#if RP_HAVE_X86_TU
    if (rp_ops_norm_rows_simd(simd, D)) {
        rp_ops_avx2_add_ln_fwd_rows(x, y, s, w, b, h, n, D, eps, mean, rstd);
        return;
    }
#endif
    for (int64_t r = 0; r < n; r++) {
        const float *src = x + r * D;
        if (y) {
            float *sr = s + r * D;
            const float *yr = y + r * D;
            for (int64_t j = 0; j < D; j++) sr[j] = src[j] + yr[j];
            src = sr;
        }
        rp_ops_ln_fwd(simd, src, w, b, h + r * D, D, eps, mean + r, rstd + r);
    }
}

static inline void rp_ops_ln_bwd(int simd, const float *x, const float *w, float m, float rs, const float *g, float *dx,
                                 float *pw, float *pb, int64_t D) {
#if RP_HAVE_X86_TU
    if (simd) {
        rp_ops_avx2_ln_bwd(x, w, m, rs, g, dx, pw, pb, D);
        return;
    }
#endif
    (void)simd;
    rp_span_ln_bwd(x, w, m, rs, g, dx, pw, pb, D);
}

/* n rows: pw += g h, pb += g (row order; either may be NULL), dx = LayerNorm_bwd(g) + ds
 * (ds NULL: no add; dx NULL: no dx); the bits of rp_ops_ln_bwd row by row, then the add. */
static inline void rp_ops_add_ln_bwd_rows(int simd, const float *x, const float *w, const float *mean,
                                          const float *rstd, const float *g, const float *ds, float *dx, float *pw,
                                          float *pb, int64_t n, int64_t D) {
#if RP_HAVE_X86_TU
    if (rp_ops_norm_rows_simd(simd, D)) {
        rp_ops_avx2_add_ln_bwd_rows(x, w, mean, rstd, g, ds, dx, pw, pb, n, D);
        return;
    }
#endif
    for (int64_t r = 0; r < n; r++) {
        float *dxr = dx ? dx + r * D : NULL;
        rp_ops_ln_bwd(simd, x + r * D, w, mean[r], rstd[r], g + r * D, dxr, pw, pb, D);
        if (ds && dxr) {
            const float *dsr = ds + r * D;
            for (int64_t j = 0; j < D; j++) dxr[j] = dsr[j] + dxr[j];
        }
    }
}

static inline void rp_ops_rms_fwd(int simd, const float *x, const float *w, float *y, int64_t D, float eps,
                                  float *rstd) {
#if RP_HAVE_X86_TU
    if (simd) {
        rp_ops_avx2_rms_fwd(x, w, y, D, eps, rstd);
        return;
    }
#endif
    (void)simd;
    rp_span_rms_fwd(x, w, y, D, eps, rstd);
}

static inline void rp_ops_rms_bwd(int simd, const float *x, const float *w, float rs, const float *g, float *dx,
                                  float *pw, int64_t D) {
#if RP_HAVE_X86_TU
    if (simd) {
        rp_ops_avx2_rms_bwd(x, w, rs, g, dx, pw, D);
        return;
    }
#endif
    (void)simd;
    rp_span_rms_bwd(x, w, rs, g, dx, pw, D);
}

/* n rows: y = RMSNorm(x) * w; the bits of rp_ops_rms_fwd row by row. */
static inline void rp_ops_rms_fwd_rows(int simd, const float *x, const float *w, float *y, int64_t n, int64_t D,
                                       float eps, float *rstd) {
#if RP_HAVE_X86_TU
    if (rp_ops_norm_rows_simd(simd, D)) {
        rp_ops_avx2_rms_fwd_rows(x, w, y, n, D, eps, rstd);
        return;
    }
#endif
    for (int64_t r = 0; r < n; r++) rp_ops_rms_fwd(simd, x + r * D, w, y + r * D, D, eps, rstd + r);
}

/* n rows backward: pw += g h (row order; may be NULL), dx (may be NULL); the bits of rp_ops_rms_bwd row by row. */
static inline void rp_ops_rms_bwd_rows(int simd, const float *x, const float *w, const float *rstd, const float *g,
                                       float *dx, float *pw, int64_t n, int64_t D) {
#if RP_HAVE_X86_TU
    if (rp_ops_norm_rows_simd(simd, D)) {
        rp_ops_avx2_rms_bwd_rows(x, w, rstd, g, dx, pw, n, D);
        return;
    }
#endif
    for (int64_t r = 0; r < n; r++)
        rp_ops_rms_bwd(simd, x + r * D, w, rstd[r], g + r * D, dx ? dx + r * D : NULL, pw, D);
}

#endif /* RELPOS_OPS_H */
