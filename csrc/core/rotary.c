/* Channel R: RoPE tables, xPos scales and the rotary transform of q/k. */
#include <math.h>
#include <string.h>

#include "posenc.h"

/* cos, sin (T, P) <- inv_freq (P,), positions offset..offset+T-1 scaled by pos_scale */
int rp_posenc_rope_tables(const double *inv_freq, int64_t P, int64_t T, int64_t offset, double pos_scale,
                          float *cos_out, float *sin_out) {
    if (P < 0 || T < 0 || !(pos_scale == pos_scale)) return RP_EINVAL;
    if (P == 0 || T == 0) return RP_OK;
    const int nt = rp_posenc_threads(T * P, RP_POSENC_MIN_PARALLEL_TRIG);
    (void)nt;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t t = 0; t < T; t++) {
        /* the position and the product in float64: libm's cos/sin then reduce
         * the angle exactly, so position 1e6 keeps ~1e-10 rad of accuracy */
        double pos = (double)(offset + t) * pos_scale;
        for (int64_t k = 0; k < P; k++) {
            double a = pos * inv_freq[k];
            cos_out[t * P + k] = (float)cos(a);
            sin_out[t * P + k] = (float)sin(a);
        }
    }
    return RP_OK;
}

/* scale (T, P) <- zeta_k^(sign (offset + t - center) / scale_base), clamped in logs */
int rp_posenc_xpos_scale(int64_t P, int64_t T, int64_t offset, double center, double scale_base, double gamma, int sign,
                         float *scale) {
    if (P < 0 || T < 0 || !(scale_base > 0.0) || !(gamma > -1.0) || (sign != 1 && sign != -1)) return RP_EINVAL;
    if (P == 0 || T == 0) return RP_OK;
    const double d_rot = 2.0 * (double)P;
    const int nt = rp_posenc_threads(T * P, RP_POSENC_MIN_PARALLEL_TRIG);
    (void)nt;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t t = 0; t < T; t++) {
        double rel = (double)sign * ((double)(offset + t) - center) / scale_base;
        for (int64_t k = 0; k < P; k++) {
            double log_zeta = log((2.0 * (double)k / d_rot + gamma) / (1.0 + gamma));
            double e = rel * log_zeta;
            if (e > RP_XPOS_MAX_LOG) e = RP_XPOS_MAX_LOG;
            if (e < -RP_XPOS_MAX_LOG) e = -RP_XPOS_MAX_LOG;
            scale[t * P + k] = (float)exp(e);
        }
    }
    return RP_OK;
}

static int rotary_apply(const float *x, const float *cos_t, const float *sin_t, const float *scale, float *y, int64_t N,
                        int64_t T, int64_t D, int64_t rotary_dim, int layout, float dir) {
    if (N < 0 || T < 0 || D < 0 || rotary_dim < 0 || rotary_dim % 2 || rotary_dim > D) return RP_EINVAL;
    if (layout != RP_ROPE_INTERLEAVED && layout != RP_ROPE_HALF) return RP_EINVAL;
    const int64_t P = rotary_dim / 2;
    const int64_t rows = N * T;
    if (rows == 0 || D == 0) return RP_OK;
    /* a parallel region costs more than rotating a few thousand numbers */
    const int nt = rp_posenc_threads(rows * D, RP_POSENC_MIN_PARALLEL);
    (void)nt;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t row = 0; row < rows; row++) {
        int64_t t = row % T;
        rp_rotary_row(x + row * D, y + row * D, cos_t + t * P, sin_t + t * P, scale ? scale + t * P : NULL, D, P,
                      layout, dir);
    }
    return RP_OK;
}

/* y (N, T, D) <- rotary(x (N, T, D)); cos, sin, scale (T, rotary_dim/2) */
int rp_posenc_rotary_fwd(const float *x, const float *cos_t, const float *sin_t, const float *scale, float *y,
                         int64_t N, int64_t T, int64_t D, int64_t rotary_dim, int layout) {
    return rotary_apply(x, cos_t, sin_t, scale, y, N, T, D, rotary_dim, layout, 1.0f);
}

/* dx (N, T, D) <- scale * R(-angle) dy (N, T, D): the transpose of the forward */
int rp_posenc_rotary_bwd(const float *dy, const float *cos_t, const float *sin_t, const float *scale, float *dx,
                         int64_t N, int64_t T, int64_t D, int64_t rotary_dim, int layout) {
    return rotary_apply(dy, cos_t, sin_t, scale, dx, N, T, D, rotary_dim, layout, -1.0f);
}
