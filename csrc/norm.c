/* LayerNorm, RMSNorm, softmax and log-softmax over the last axis. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* ---- LayerNorm ----------------------------------------------------------
 * x, y: (N, D); weight, bias: (D) or NULL; mean, rstd: (N). Statistics in
 * double (two passes), so a large common offset costs no accuracy. */
int rp_ops_layernorm_fwd(const float *x, const float *weight, const float *bias, float *y, float *mean,
                         float *rstd, int64_t N, int64_t D, float eps) {
    if (N < 0 || D < 0) return RP_EINVAL;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double s = 0.0;
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < D; j++) s += (double)xr[j];
        double m = D > 0 ? s / (double)D : 0.0;
        double v = 0.0;
        RP_OPS_SIMD_SUM(v)
        for (int64_t j = 0; j < D; j++) {
            double d = (double)xr[j] - m;
            v += d * d;
        }
        v = D > 0 ? v / (double)D : 0.0;
        float rs = (float)(1.0 / sqrt(v + (double)eps));
        float mf = (float)m;
        for (int64_t j = 0; j < D; j++) {
            float h = (xr[j] - mf) * rs;
            float w = weight ? weight[j] : 1.0f;
            float b = bias ? bias[j] : 0.0f;
            yr[j] = h * w + b;
        }
        mean[r] = mf;
        rstd[r] = rs;
    }
    return RP_OK;
}

/* dx (N, D) = rstd * (dh - mean(dh) - h * mean(dh * h)), dh = grad * weight,
 * h = (x - mean) * rstd. dweight = sum_rows grad * h, dbias = sum_rows grad:
 * per-chunk partials over RP_OPS_NCHUNK fixed row chunks, added in order. */
int rp_ops_layernorm_bwd(const float *x, const float *weight, const float *mean, const float *rstd,
                         const float *grad, float *dx, float *dweight, float *dbias, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (dweight) memset(dweight, 0, (size_t)D * sizeof(float));
    if (dbias) memset(dbias, 0, (size_t)D * sizeof(float));
    if (N == 0 || D == 0) return RP_OK;
    const int64_t nch = N < RP_OPS_NCHUNK ? N : RP_OPS_NCHUNK;
    float *pw = NULL, *pb = NULL;
    if (dweight || dbias) {
        pw = (float *)rp_calloc((size_t)(2 * nch * D), sizeof(float));
        if (!pw) return RP_ENOMEM;
        pb = pw + nch * D;
    }
    RP_OPS_PFOR(N * D >= 4096)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(N, nch, c, &lo, &hi);
        float *pwc = pw ? pw + c * D : NULL, *pbc = pb ? pb + c * D : NULL;
        for (int64_t r = lo; r < hi; r++) {
            const float *xr = x + r * D, *gr = grad + r * D;
            const float m = mean[r], rs = rstd[r];
            if (pwc) {
                for (int64_t j = 0; j < D; j++) {
                    pwc[j] += gr[j] * ((xr[j] - m) * rs);
                    pbc[j] += gr[j];
                }
            }
            if (!dx) continue;
            float s1 = 0.0f, s2 = 0.0f;
            RP_OPS_SIMD_SUM(s1)
            for (int64_t j = 0; j < D; j++) s1 += gr[j] * (weight ? weight[j] : 1.0f);
            RP_OPS_SIMD_SUM(s2)
            for (int64_t j = 0; j < D; j++) s2 += gr[j] * (weight ? weight[j] : 1.0f) * ((xr[j] - m) * rs);
            const float a1 = s1 / (float)D, a2 = s2 / (float)D;
            float *dxr = dx + r * D;
            for (int64_t j = 0; j < D; j++) {
                float h = (xr[j] - m) * rs;
                float dh = gr[j] * (weight ? weight[j] : 1.0f);
                dxr[j] = rs * (dh - a1 - h * a2);
            }
        }
    }
    if (pw) {
        for (int64_t c = 0; c < nch; c++)
            for (int64_t j = 0; j < D; j++) {
                if (dweight) dweight[j] += pw[c * D + j];
                if (dbias) dbias[j] += pb[c * D + j];
            }
        rp_free(pw);
    }
    return RP_OK;
}

/* ---- RMSNorm: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) ---- */
int rp_ops_rmsnorm_fwd(const float *x, const float *weight, float *y, float *rstd, int64_t N, int64_t D,
                       float eps) {
    if (N < 0 || D < 0) return RP_EINVAL;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double s = 0.0;
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < D; j++) s += (double)xr[j] * (double)xr[j];
        double ms = D > 0 ? s / (double)D : 0.0;
        float rs = (float)(1.0 / sqrt(ms + (double)eps));
        for (int64_t j = 0; j < D; j++) yr[j] = xr[j] * rs * (weight ? weight[j] : 1.0f);
        rstd[r] = rs;
    }
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
    float *pw = NULL;
    if (dweight) {
        pw = (float *)rp_calloc((size_t)(nch * D), sizeof(float));
        if (!pw) return RP_ENOMEM;
    }
    RP_OPS_PFOR(N * D >= 4096)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(N, nch, c, &lo, &hi);
        float *pwc = pw ? pw + c * D : NULL;
        for (int64_t r = lo; r < hi; r++) {
            const float *xr = x + r * D, *gr = grad + r * D;
            const float rs = rstd[r];
            if (pwc)
                for (int64_t j = 0; j < D; j++) pwc[j] += gr[j] * (xr[j] * rs);
            if (!dx) continue;
            float s = 0.0f;
            RP_OPS_SIMD_SUM(s)
            for (int64_t j = 0; j < D; j++) s += gr[j] * (weight ? weight[j] : 1.0f) * (xr[j] * rs);
            const float a = s / (float)D;
            float *dxr = dx + r * D;
            for (int64_t j = 0; j < D; j++) {
                float dh = gr[j] * (weight ? weight[j] : 1.0f);
                dxr[j] = rs * (dh - (xr[j] * rs) * a);
            }
        }
    }
    if (pw) {
        for (int64_t c = 0; c < nch; c++)
            for (int64_t j = 0; j < D; j++) dweight[j] += pw[c * D + j];
        rp_free(pw);
    }
    return RP_OK;
}

/* ---- softmax ------------------------------------------------------------ */

/* x, y: (N, D). A row of all -inf gives NaN (as in NumPy and torch). */
int rp_ops_softmax_fwd(const float *x, float *y, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= 4096)
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
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN)
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
    RP_OPS_PFOR(N * D >= 4096)
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
    RP_OPS_PFOR(N * D >= 4096)
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
