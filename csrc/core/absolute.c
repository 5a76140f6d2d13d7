/* Channel A: the sinusoidal table and the complex word-order embedding. */
#include <math.h>
#include <string.h>

#include "posenc.h"

/* out (T, d_model) <- sin/cos of position * base^(-2k/d_model) */
int rp_posenc_sinusoidal_table(const int64_t *positions, int64_t T, int64_t offset, int64_t d_model, double base,
                               int layout, float *out) {
    if (T < 0 || d_model < 0 || d_model % 2 || !(base > 0.0)) return RP_EINVAL;
    if (layout != RP_SIN_INTERLEAVED && layout != RP_SIN_CONCAT) return RP_EINVAL;
    const int64_t P = d_model / 2;
    if (T == 0 || P == 0) return RP_OK;
    const double log_base = log(base);
    const int nt = rp_posenc_threads(T * P, RP_POSENC_MIN_PARALLEL_TRIG);
    (void)nt;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t t = 0; t < T; t++) {
        double pos = positions ? (double)positions[t] : (double)(offset + t);
        float *row = out + t * d_model;
        for (int64_t k = 0; k < P; k++) {
            double a = pos * exp(-log_base * (double)(2 * k) / (double)d_model);
            float s = (float)sin(a), c = (float)cos(a);
            if (layout == RP_SIN_INTERLEAVED) {
                row[2 * k] = s;
                row[2 * k + 1] = c;
            } else {
                row[k] = s;
                row[P + k] = c;
            }
        }
    }
    return RP_OK;
}

/* out (N, 2d) <- [r cos(omega pos + theta) | r sin(omega pos + theta)] for token ids (N,) */
int rp_posenc_complex_fwd(const int64_t *ids, const int64_t *positions, int64_t N, int64_t T, const float *r,
                          const float *omega, const float *theta, int64_t V, int64_t d, float *out) {
    if (N < 0 || T < 0 || V < 0 || d < 0 || (N > 0 && T == 0) || (T > 0 && N % T)) return RP_EINVAL;
    for (int64_t n = 0; n < N; n++)
        if (ids[n] < 0 || ids[n] >= V) return RP_EINDEX;
    if (N == 0 || d == 0) return RP_OK;
    const int nt = rp_posenc_threads(N * d, RP_POSENC_MIN_PARALLEL_TRIG);
    (void)nt;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t n = 0; n < N; n++) {
        const int64_t w = ids[n];
        const double pos = (double)positions[n % T];
        const float *rw = r + w * d, *ow = omega + w * d, *tw = theta + w * d;
        float *re = out + n * 2 * d, *im = re + d;
        for (int64_t j = 0; j < d; j++) {
            double ph = (double)ow[j] * pos + (double)tw[j];
            re[j] = (float)((double)rw[j] * cos(ph));
            im[j] = (float)((double)rw[j] * sin(ph));
        }
    }
    return RP_OK;
}

/* Column block of the complex backward; every thread owns whole columns so
 * each (token, column) sum runs over n in order, whatever the thread count. */
#define RP_COMPLEX_COLS 16

/* dr, domega, dtheta (V, d) <- scatter of g (N, 2d) over ids (N,):
 *   d phase = -g_re r sin + g_im r cos;  dr = g_re cos + g_im sin;
 *   dtheta = d phase;  domega = d phase * pos */
int rp_posenc_complex_bwd(const int64_t *ids, const int64_t *positions, int64_t N, int64_t T, const float *r,
                          const float *omega, const float *theta, int64_t V, int64_t d, const float *g, float *dr,
                          float *domega, float *dtheta) {
    if (N < 0 || T < 0 || V < 0 || d < 0 || (N > 0 && T == 0) || (T > 0 && N % T)) return RP_EINVAL;
    for (int64_t n = 0; n < N; n++)
        if (ids[n] < 0 || ids[n] >= V) return RP_EINDEX;
    if (V * d > 0) {
        memset(dr, 0, (size_t)(V * d) * sizeof(float));
        memset(domega, 0, (size_t)(V * d) * sizeof(float));
        memset(dtheta, 0, (size_t)(V * d) * sizeof(float));
    }
    if (N == 0 || d == 0) return RP_OK;
    const int64_t nblocks = (d + RP_COMPLEX_COLS - 1) / RP_COMPLEX_COLS;
    const int nt = rp_posenc_threads(N * d, RP_POSENC_MIN_PARALLEL_TRIG);
    (void)nt;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t j0 = blk * RP_COMPLEX_COLS;
        const int64_t j1 = j0 + RP_COMPLEX_COLS < d ? j0 + RP_COMPLEX_COLS : d;
        for (int64_t n = 0; n < N; n++) {
            const int64_t w = ids[n];
            const double pos = (double)positions[n % T];
            const float *gre = g + n * 2 * d, *gim = gre + d;
            for (int64_t j = j0; j < j1; j++) {
                const int64_t wj = w * d + j;
                double ph = (double)omega[wj] * pos + (double)theta[wj];
                double c = cos(ph), s = sin(ph);
                double dph = (double)r[wj] * ((double)gim[j] * c - (double)gre[j] * s);
                dr[wj] += (float)((double)gre[j] * c + (double)gim[j] * s);
                dtheta[wj] += (float)dph;
                domega[wj] += (float)(dph * pos);
            }
        }
    }
    return RP_OK;
}
