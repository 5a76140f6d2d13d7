/* LayerNorm, RMSNorm, softmax and log-softmax over the last axis. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* weight (D) or, when NULL, a scratch vector of `fill` (so the row spans
 * have no NULL cases). *tmp gets the scratch to free. */
static const float *vec_or_fill(const float *v, float fill, int64_t D, float **tmp) {
    *tmp = NULL;
    if (v) return v;
    float *f = (float *)rp_malloc((size_t)(D > 0 ? D : 1) * sizeof(float));
    if (!f) return NULL;
    for (int64_t j = 0; j < D; j++) f[j] = fill;
    *tmp = f;
    return f;
}

/* ---- LayerNorm ----------------------------------------------------------
 * x, y: (N, D); weight, bias: (D) or NULL (1 and 0); mean, rstd: (N). */
int rp_ops_layernorm_fwd(const float *x, const float *weight, const float *bias, float *y, float *mean, float *rstd,
                         int64_t N, int64_t D, float eps) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (N == 0) return RP_OK;
    float *tw, *tb;
    const float *w = vec_or_fill(weight, 1.0f, D, &tw), *b = vec_or_fill(bias, 0.0f, D, &tb);
    if (!w || !b) {
        rp_free(tw);
        rp_free(tb);
        return RP_ENOMEM;
    }
    const int simd = rp_simd_enabled();
    const int64_t nb = (N + RP_OPS_LN_BLOCK - 1) / RP_OPS_LN_BLOCK;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t k = 0; k < nb; k++) {
        const int64_t r = k * RP_OPS_LN_BLOCK, n = N - r < RP_OPS_LN_BLOCK ? N - r : RP_OPS_LN_BLOCK;
        rp_ops_add_ln_fwd_rows(simd, x + r * D, NULL, NULL, w, b, y + r * D, n, D, eps, mean + r, rstd + r);
    }
    rp_free(tw);
    rp_free(tb);
    return RP_OK;
}

/* dx (N, D) = rstd * (dh - mean(dh) - h * mean(dh * h)), dh = grad * weight,
 * h = (x - mean) * rstd. dweight = sum_rows grad * h, dbias = sum_rows grad:
 * per-chunk partials over min(N, RP_OPS_NCHUNK) fixed row chunks (never the
 * thread count), added in chunk order. */
int rp_ops_layernorm_bwd(const float *x, const float *weight, const float *mean, const float *rstd, const float *grad,
                         float *dx, float *dweight, float *dbias, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (dweight) memset(dweight, 0, (size_t)D * sizeof(float));
    if (dbias) memset(dbias, 0, (size_t)D * sizeof(float));
    if (N == 0 || D == 0) return RP_OK;
    const int64_t nch = N < RP_OPS_NCHUNK ? N : RP_OPS_NCHUNK;
    float *tw;
    const float *w = vec_or_fill(weight, 1.0f, D, &tw);
    float *part = (dweight || dbias) ? (float *)rp_calloc((size_t)(2 * nch * D), sizeof(float)) : NULL;
    if (!w || ((dweight || dbias) && !part)) {
        rp_free(tw);
        rp_free(part);
        return RP_ENOMEM;
    }
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(N, nch, c, &lo, &hi);
        float *pw = dweight ? part + c * D : NULL, *pb = dbias ? part + (nch + c) * D : NULL;
        rp_ops_add_ln_bwd_rows(simd, x + lo * D, w, mean + lo, rstd + lo, grad + lo * D, NULL, dx ? dx + lo * D : NULL,
                               pw, pb, hi - lo, D);
    }
    for (int64_t c = 0; c < nch; c++)
        for (int64_t j = 0; j < D; j++) {
            if (dweight) dweight[j] += part[c * D + j];
            if (dbias) dbias[j] += part[(nch + c) * D + j];
        }
    rp_free(part);
    rp_free(tw);
    return RP_OK;
}

/* ---- RMSNorm: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) ----
 * x, y: (N, D); weight: (D) or NULL; rstd: (N). */
int rp_ops_rmsnorm_fwd(const float *x, const float *weight, float *y, float *rstd, int64_t N, int64_t D, float eps) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (N == 0) return RP_OK;
    float *tw;
    const float *w = vec_or_fill(weight, 1.0f, D, &tw);
    if (!w) return RP_ENOMEM;
    const int simd = rp_simd_enabled();
    const int64_t nb = (N + RP_OPS_LN_BLOCK - 1) / RP_OPS_LN_BLOCK;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t k = 0; k < nb; k++) {
        const int64_t r = k * RP_OPS_LN_BLOCK, n = N - r < RP_OPS_LN_BLOCK ? N - r : RP_OPS_LN_BLOCK;
        rp_ops_rms_fwd_rows(simd, x + r * D, w, y + r * D, n, D, eps, rstd + r);
    }
    rp_free(tw);
    return RP_OK;
}

/* dx = rstd * (dh - h * mean(dh * h)), dh = grad * weight, h = x * rstd;
 * dweight = sum_rows grad * h (fixed chunks, added in order). */
int rp_ops_rmsnorm_bwd(const float *x, const float *weight, const float *rstd, const float *grad, float *dx,
                       float *dweight, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (dweight) memset(dweight, 0, (size_t)D * sizeof(float));
    if (N == 0 || D == 0) return RP_OK;
    const int64_t nch = N < RP_OPS_NCHUNK ? N : RP_OPS_NCHUNK;
    float *tw;
    const float *w = vec_or_fill(weight, 1.0f, D, &tw);
    float *part = dweight ? (float *)rp_calloc((size_t)(nch * D), sizeof(float)) : NULL;
    if (!w || (dweight && !part)) {
        rp_free(tw);
        rp_free(part);
        return RP_ENOMEM;
    }
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(N, nch, c, &lo, &hi);
        float *pw = part ? part + c * D : NULL;
        rp_ops_rms_bwd_rows(simd, x + lo * D, w, rstd + lo, grad + lo * D, dx ? dx + lo * D : NULL, pw, hi - lo, D);
    }
    if (part) {
        for (int64_t c = 0; c < nch; c++)
            for (int64_t j = 0; j < D; j++) dweight[j] += part[c * D + j];
    }
    rp_free(part);
    rp_free(tw);
    return RP_OK;
}

/* ---- softmax ------------------------------------------------------------ */

/* x, y: (N, D). A row of all -inf gives NaN (as in NumPy and torch). */
int rp_ops_softmax_fwd(const float *x, float *y, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        const float m = rp_span_max(xr, D);
        const float inv = 1.0f / rp_ops_exp_sum(simd, xr, m, yr, D);
        for (int64_t j = 0; j < D; j++) yr[j] *= inv;
    }
    return RP_OK;
}

int rp_ops_softmax_bwd(const float *y, const float *grad, float *dx, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t r = 0; r < N; r++) {
        const float *yr = y + r * D, *gr = grad + r * D;
        float *dxr = dx + r * D;
        float s = 0.0f;
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < D; j++) s += gr[j] * yr[j];
        for (int64_t j = 0; j < D; j++) dxr[j] = yr[j] * (gr[j] - s);
    }
    return RP_OK;
}

int rp_ops_log_softmax_fwd(const float *x, float *y, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        const float m = rp_span_max(xr, D);
        /* (x - m) - log(s), not x - (m + log(s)): the latter rounds log(s)
         * to the spacing of m, costly when |m| is large */
        const float ls = logf(rp_ops_exp_sum(simd, xr, m, NULL, D));
        for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - m) - ls;
    }
    return RP_OK;
}

int rp_ops_log_softmax_bwd(const float *y, const float *grad, float *dx, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t r = 0; r < N; r++) {
        const float *yr = y + r * D, *gr = grad + r * D;
        float *dxr = dx + r * D;
        float s = 0.0f;
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < D; j++) s += gr[j];
        /* dx = grad - exp(y) * s in one elementwise pass (dx may be y or grad) */
        rp_ops_exp_scale(simd, yr, 0.0f, -s, gr, 1.0f, dxr, D);
    }
    return RP_OK;
}
