/* FIRE (Li et al., ICLR 2024): a bias b_h(i, j) = f_theta(psi(i - j) / psi(max(L, i)))
 * from a small MLP, with its backward into the MLP weights, c and L.
 *
 * As in the authors' code, psi(t) = log(|c| t + 1), the threshold is |L|, and
 * eps is added to the normaliser. Work is split into a fixed number of row
 * parts (independent of the thread count); the backward keeps one partial
 * gradient per part and sums the parts in order, so results are bit-identical
 * for any thread count. */
#include "bias.h"

#include <math.h>
#include <string.h>

#define FIRE_MAX_PARTS 64

#if RP_HAVE_OPENMP
#define FIRE_PARALLEL_PARTS RP_PRAGMA(omp parallel for schedule(dynamic, 1) num_threads(rp_get_num_threads()))
#else
#define FIRE_PARALLEL_PARTS
#endif

static inline double sgn(double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }

static int fire_ok(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset) {
    return f && f->W >= 0 && f->H >= 0 && Tq >= 0 && Tk >= 0 && q_offset >= 0;
}

/* out (H, Tq, Tk) */
int rp_fire_fwd(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset, float *out) {
    if (!fire_ok(f, Tq, Tk, q_offset)) return RP_EINVAL;
    const int64_t W = f->W, H = f->H, TT = Tq * Tk;
    const double cabs = fabs((double)f->c), Labs = fabs((double)f->L);
    if (Tq == 0 || Tk == 0 || H == 0) return RP_OK;
    int64_t parts = Tq < FIRE_MAX_PARTS ? Tq : FIRE_MAX_PARTS;
    double *scratch = (double *)rp_malloc((size_t)parts * (size_t)(W > 0 ? W : 1) * sizeof(double));
    if (!scratch) return RP_ENOMEM;
    FIRE_PARALLEL_PARTS
    for (int64_t p = 0; p < parts; p++) {
        int64_t lo, hi;
        rp_chunk(Tq, parts, p, &lo, &hi);
        double *hid = scratch + p * (W > 0 ? W : 1);
        for (int64_t i = lo; i < hi; i++) {
            int64_t ia = q_offset + i;
            double m = (double)ia > Labs ? (double)ia : Labs;
            double pn = log1p(cabs * m) + (double)f->eps;
            for (int64_t j = 0; j < Tk; j++) {
                if (j > ia) {
                    for (int64_t h = 0; h < H; h++) out[h * TT + i * Tk + j] = 0.0f;
                    continue;
                }
                double x = log1p(cabs * (double)(ia - j)) / pn;
                for (int64_t k = 0; k < W; k++) {
                    double pre = (double)f->W1[k] * x + (double)f->b1[k];
                    hid[k] = pre > 0.0 ? pre : 0.0;
                }
                for (int64_t h = 0; h < H; h++) {
                    const float *w2 = f->W2 + h * W;
                    double s = f->b2[h];
                    for (int64_t k = 0; k < W; k++) s += (double)w2[k] * hid[k];
                    out[h * TT + i * Tk + j] = (float)s;
                }
            }
        }
    }
    rp_free(scratch);
    return RP_OK;
}

/* g (H, Tq, Tk) -> dW1, db1 (W,), dW2 (H, W), db2 (H,), dc, dL (1,). Any output may be NULL. */
int rp_fire_bwd(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset, const float *g,
                float *dW1, float *db1, float *dW2, float *db2, float *dc, float *dL) {
    if (!fire_ok(f, Tq, Tk, q_offset)) return RP_EINVAL;
    const int64_t W = f->W, H = f->H, TT = Tq * Tk;
    const double cabs = fabs((double)f->c), Labs = fabs((double)f->L);
    const double sc = sgn((double)f->c), sL = sgn((double)f->L);
    /* partial layout: gW1[W] gb1[W] gW2[H*W] gb2[H] gc gL */
    const int64_t np = 2 * W + H * W + H + 2;
    const int64_t ns = 2 * W + H; /* scratch: pre[W], dpre[W], gout[H] */
    int64_t parts = Tq < FIRE_MAX_PARTS ? Tq : FIRE_MAX_PARTS;
    if (parts < 1) parts = 1;
    double *part = (double *)rp_calloc((size_t)parts * (size_t)np, sizeof(double));
    double *scratch = (double *)rp_malloc((size_t)parts * (size_t)(ns > 0 ? ns : 1) * sizeof(double));
    if (!part || !scratch) {
        rp_free(part);
        rp_free(scratch);
        return RP_ENOMEM;
    }
    FIRE_PARALLEL_PARTS
    for (int64_t p = 0; p < parts; p++) {
        int64_t lo, hi;
        rp_chunk(Tq, parts, p, &lo, &hi);
        double *acc = part + p * np;
        double *gW1 = acc, *gb1 = acc + W, *gW2 = acc + 2 * W, *gb2 = gW2 + H * W, *gc = gb2 + H, *gL = gc + 1;
        double *pre = scratch + p * (ns > 0 ? ns : 1), *dpre = pre + W, *gout = dpre + W;
        for (int64_t i = lo; i < hi; i++) {
            int64_t ia = q_offset + i;
            int L_active = Labs > (double)ia;
            double m = L_active ? Labs : (double)ia;
            double pn = log1p(cabs * m) + (double)f->eps;
            double dpn_dc = sc * m / (1.0 + cabs * m);
            double dpn_dL = L_active ? sL * cabs / (1.0 + cabs * Labs) : 0.0;
            int64_t jmax = ia < Tk - 1 ? ia : Tk - 1;
            for (int64_t j = 0; j <= jmax; j++) {
                double dd = (double)(ia - j);
                double a = log1p(cabs * dd), x = a / pn;
                int any = 0;
                for (int64_t h = 0; h < H; h++) {
                    gout[h] = g[h * TT + i * Tk + j];
                    any |= gout[h] != 0.0;
                }
                if (!any) continue;
                for (int64_t k = 0; k < W; k++) pre[k] = (double)f->W1[k] * x + (double)f->b1[k];
                for (int64_t h = 0; h < H; h++) {
                    gb2[h] += gout[h];
                    double *gw = gW2 + h * W;
                    for (int64_t k = 0; k < W; k++)
                        if (pre[k] > 0.0) gw[k] += gout[h] * pre[k];
                }
                for (int64_t k = 0; k < W; k++) dpre[k] = 0.0;
                for (int64_t h = 0; h < H; h++) {
                    const float *w2 = f->W2 + h * W;
                    for (int64_t k = 0; k < W; k++) dpre[k] += (double)w2[k] * gout[h];
                }
                double dx = 0.0;
                for (int64_t k = 0; k < W; k++) {
                    if (pre[k] <= 0.0) continue;
                    gW1[k] += dpre[k] * x;
                    gb1[k] += dpre[k];
                    dx += (double)f->W1[k] * dpre[k];
                }
                double da_dc = sc * dd / (1.0 + cabs * dd);
                *gc += dx * (da_dc / pn - a * dpn_dc / (pn * pn));
                *gL += dx * (-a * dpn_dL / (pn * pn));
            }
        }
    }
    /* sum the parts in order */
    for (int64_t t = 1; t < parts; t++)
        for (int64_t u = 0; u < np; u++) part[u] += part[t * np + u];
    for (int64_t k = 0; k < W; k++) {
        if (dW1) dW1[k] = (float)part[k];
        if (db1) db1[k] = (float)part[W + k];
    }
    for (int64_t u = 0; u < H * W; u++)
        if (dW2) dW2[u] = (float)part[2 * W + u];
    for (int64_t h = 0; h < H; h++)
        if (db2) db2[h] = (float)part[2 * W + H * W + h];
    if (dc) *dc = (float)part[np - 2];
    if (dL) *dL = (float)part[np - 1];
    rp_free(part);
    rp_free(scratch);
    return RP_OK;
}
