/* FIRE (Li et al., ICLR 2024): a bias b_h(i, j) = f_theta(psi(i - j) / psi(max(L, i)))
 * from a small MLP, with its backward into the MLP weights, c and L.
 *
 * As in the authors' code, psi(t) = log(|c| t + 1), the threshold is |L|, and
 * eps is added to the normaliser.
 *
 * The MLP 1 -> W -> H with ReLU is a piecewise-linear function of its scalar
 * input x, with at most W kinks at x_k = -b1[k]/W1[k]. We precompute, per
 * segment between kinks, the slope and intercept of every head (and which
 * hidden units are on), so each (i, j) costs O(H) instead of O(W H); the
 * backward sums the upstream gradient per segment (sum G, sum G x) and turns
 * those sums into gradients of W1, b1, W2, b2 at the end.
 *
 * Work is split into a fixed number of row parts (independent of the thread
 * count); the backward keeps one partial per part and sums the parts in
 * order, so results are bit-identical for any thread count. */
#include "bias.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIRE_MAX_PARTS 64

static inline double sgn(double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }

static int fire_ok(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset) {
    return f && f->W >= 0 && f->H >= 0 && Tq >= 0 && Tk >= 0 && q_offset >= 0;
}

/* The MLP as a piecewise-linear function of x. */
typedef struct {
    int64_t nbp, nseg;
    double *bp;    /* sorted kinks (nbp) */
    double *slope; /* (nseg, H) */
    double *icpt;  /* (nseg, H) */
    uint8_t *on;   /* (nseg, W): hidden unit k is active on segment s */
    void *mem;
} fire_pl;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fire_pl_build(const rp_fire *f, fire_pl *pl) {
    const int64_t W = f->W, H = f->H;
    const int64_t nseg_max = W + 1;
    size_t bytes = (size_t)(W + 2 * nseg_max * H + 1) * sizeof(double) + (size_t)(nseg_max * W + 1);
    pl->mem = rp_malloc(bytes);
    if (!pl->mem) return RP_ENOMEM;
    pl->bp = (double *)pl->mem;
    pl->slope = pl->bp + W;
    pl->icpt = pl->slope + nseg_max * H;
    pl->on = (uint8_t *)(pl->icpt + nseg_max * H + 1);
    int64_t nbp = 0;
    for (int64_t k = 0; k < W; k++)
        if (f->W1[k] != 0.0f) pl->bp[nbp++] = -(double)f->b1[k] / (double)f->W1[k];
    qsort(pl->bp, (size_t)nbp, sizeof(double), cmp_double);
    pl->nbp = nbp;
    pl->nseg = nbp + 1;
    for (int64_t s = 0; s < pl->nseg; s++) {
        double xr; /* a point inside segment s */
        if (nbp == 0)
            xr = 0.0;
        else if (s == 0)
            xr = pl->bp[0] - fmax(1.0, fabs(pl->bp[0]));
        else if (s == nbp)
            xr = pl->bp[nbp - 1] + fmax(1.0, fabs(pl->bp[nbp - 1]));
        else
            xr = 0.5 * (pl->bp[s - 1] + pl->bp[s]);
        uint8_t *on = pl->on + s * W;
        for (int64_t k = 0; k < W; k++) on[k] = (double)f->W1[k] * xr + (double)f->b1[k] > 0.0;
        for (int64_t h = 0; h < H; h++) {
            const float *w2 = f->W2 + h * W;
            double a = 0.0, b = f->b2[h];
            for (int64_t k = 0; k < W; k++)
                if (on[k]) {
                    a += (double)w2[k] * (double)f->W1[k];
                    b += (double)w2[k] * (double)f->b1[k];
                }
            pl->slope[s * H + h] = a;
            pl->icpt[s * H + h] = b;
        }
    }
    return RP_OK;
}

/* segment of x: the number of kinks <= x */
static inline int64_t fire_seg(const fire_pl *pl, double x) {
    int64_t lo = 0, hi = pl->nbp;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (pl->bp[mid] <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* a[dd] = log(|c| dd + 1) and its derivative in c, for dd = 0 .. dmax */
static double *fire_psi_table(double cabs, double sc, int64_t dmax) {
    /* dmax grows with q_offset: 2 (dmax + 1) doubles must not wrap around size_t */
    if (dmax < 0 || (uint64_t)dmax >= SIZE_MAX / (2 * sizeof(double))) return NULL;
    double *t = (double *)rp_malloc((size_t)(2 * (dmax + 1)) * sizeof(double));
    if (!t) return NULL;
    for (int64_t dd = 0; dd <= dmax; dd++) {
        t[dd] = log1p(cabs * (double)dd);
        t[dmax + 1 + dd] = sc * (double)dd / (1.0 + cabs * (double)dd);
    }
    return t;
}

/* out (H, Tq, Tk) */
int rp_fire_fwd(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset, float *out) {
    if (!fire_ok(f, Tq, Tk, q_offset)) return RP_EINVAL;
    const int64_t H = f->H, TT = Tq * Tk;
    const double cabs = fabs((double)f->c), Labs = fabs((double)f->L);
    if (Tq == 0 || Tk == 0 || H == 0) return RP_OK;
    fire_pl pl;
    int rc = fire_pl_build(f, &pl);
    if (rc) return rc;
    const int64_t dmax = q_offset + Tq - 1;
    double *psi = fire_psi_table(cabs, sgn((double)f->c), dmax);
    if (!psi) {
        rp_free(pl.mem);
        return RP_ENOMEM;
    }
    int64_t parts = Tq < FIRE_MAX_PARTS ? Tq : FIRE_MAX_PARTS;
    RP_BIAS_PARALLEL_PARTS(TT * H)
    for (int64_t p = 0; p < parts; p++) {
        int64_t lo, hi;
        rp_chunk(Tq, parts, p, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) {
            int64_t ia = q_offset + i;
            double m = (double)ia > Labs ? (double)ia : Labs;
            double pn = log1p(cabs * m) + (double)f->eps;
            for (int64_t j = 0; j < Tk; j++) {
                if (j > ia) {
                    for (int64_t h = 0; h < H; h++) out[h * TT + i * Tk + j] = 0.0f;
                    continue;
                }
                double x = psi[ia - j] / pn;
                int64_t s = fire_seg(&pl, x);
                const double *a = pl.slope + s * H, *b = pl.icpt + s * H;
                for (int64_t h = 0; h < H; h++) out[h * TT + i * Tk + j] = (float)(b[h] + a[h] * x);
            }
        }
    }
    rp_free(psi);
    rp_free(pl.mem);
    return RP_OK;
}

/* g (H, Tq, Tk) -> dW1, db1 (W,), dW2 (H, W), db2 (H,), dc, dL (1,). Any output may be NULL. */
int rp_fire_bwd(const rp_fire *f, int64_t Tq, int64_t Tk, int64_t q_offset, const float *g, float *dW1, float *db1,
                float *dW2, float *db2, float *dc, float *dL) {
    if (!fire_ok(f, Tq, Tk, q_offset)) return RP_EINVAL;
    const int64_t W = f->W, H = f->H, TT = Tq * Tk;
    const double cabs = fabs((double)f->c), Labs = fabs((double)f->L);
    const double sc = sgn((double)f->c), sL = sgn((double)f->L);
    fire_pl pl;
    int rc = fire_pl_build(f, &pl);
    if (rc) return rc;
    const int64_t nseg = pl.nseg;
    /* partial layout: S0 (nseg, H) = sum G, S1 (nseg, H) = sum G x, gc, gL */
    const int64_t np = 2 * nseg * H + 2;
    int64_t parts = Tq < FIRE_MAX_PARTS ? Tq : FIRE_MAX_PARTS;
    if (parts < 1) parts = 1;
    const int64_t dmax = q_offset + (Tq > 0 ? Tq - 1 : 0);
    double *part = (double *)rp_calloc((size_t)parts * (size_t)np, sizeof(double));
    double *psi = fire_psi_table(cabs, sc, dmax);
    if (!part || !psi) {
        rp_free(part);
        rp_free(psi);
        rp_free(pl.mem);
        return RP_ENOMEM;
    }
    const double *dpsi = psi + dmax + 1;
    RP_BIAS_PARALLEL_PARTS(TT * H)
    for (int64_t p = 0; p < parts; p++) {
        int64_t lo, hi;
        rp_chunk(Tq, parts, p, &lo, &hi);
        double *S0 = part + p * np, *S1 = S0 + nseg * H, *gc = S1 + nseg * H, *gL = gc + 1;
        for (int64_t i = lo; i < hi; i++) {
            int64_t ia = q_offset + i;
            int L_active = Labs > (double)ia;
            double m = L_active ? Labs : (double)ia;
            double pn = log1p(cabs * m) + (double)f->eps;
            double dpn_dc = sc * m / (1.0 + cabs * m);
            double dpn_dL = L_active ? sL * cabs / (1.0 + cabs * Labs) : 0.0;
            int64_t jmax = ia < Tk - 1 ? ia : Tk - 1;
            for (int64_t j = 0; j <= jmax; j++) {
                int64_t dd = ia - j;
                double a = psi[dd], x = a / pn;
                int64_t s = fire_seg(&pl, x);
                const double *sl = pl.slope + s * H;
                double *s0 = S0 + s * H, *s1 = S1 + s * H;
                double dx = 0.0;
                for (int64_t h = 0; h < H; h++) {
                    double G = g[h * TT + i * Tk + j];
                    s0[h] += G;
                    s1[h] += G * x;
                    dx += G * sl[h];
                }
                *gc += dx * (dpsi[dd] / pn - a * dpn_dc / (pn * pn));
                *gL += dx * (-a * dpn_dL / (pn * pn));
            }
        }
    }
    /* sum the parts in order */
    for (int64_t t = 1; t < parts; t++)
        for (int64_t u = 0; u < np; u++) part[u] += part[t * np + u];
    const double *S0 = part, *S1 = part + nseg * H;
    for (int64_t h = 0; h < H; h++) {
        double acc = 0.0;
        for (int64_t s = 0; s < nseg; s++) acc += S0[s * H + h];
        if (db2) db2[h] = (float)acc;
    }
    for (int64_t k = 0; k < W; k++) {
        double w1 = 0.0, b1 = 0.0;
        for (int64_t h = 0; h < H; h++) {
            double s0 = 0.0, s1 = 0.0;
            for (int64_t s = 0; s < nseg; s++)
                if (pl.on[s * W + k]) {
                    s0 += S0[s * H + h];
                    s1 += S1[s * H + h];
                }
            double w2 = f->W2[h * W + k];
            w1 += w2 * s1;
            b1 += w2 * s0;
            if (dW2) dW2[h * W + k] = (float)((double)f->W1[k] * s1 + (double)f->b1[k] * s0);
        }
        if (dW1) dW1[k] = (float)w1;
        if (db1) db1[k] = (float)b1;
    }
    if (dc) *dc = (float)part[np - 2];
    if (dL) *dL = (float)part[np - 1];
    rp_free(part);
    rp_free(psi);
    rp_free(pl.mem);
    return RP_OK;
}
