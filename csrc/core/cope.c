/* CoPE, contextual position encoding (Golovneva et al. 2024), causal.
 *
 * Per query row: gates g_t = sigmoid(scale q.k_t) for keys t <= ia, positions
 * p_j = sum_{t=j..ia} g_t (a suffix sum), clamped to P - 1, and the extra logit
 * interpolated between z[floor p] and z[ceil p], z[p] = q.e[p].
 *
 * Forward is parallel over rows (b, h, i). Backward is parallel over (b, h)
 * pairs: one pair owns its dq and dk rows; de is summed from per-part partials
 * in a fixed order. Bit-identical for any thread count. */
#include "bias.h"

#include <math.h>
#include <string.h>

#include "simd_math.h"

#define COPE_MAX_PARTS 64

/* Dot product with eight interleaved float partial sums, added up in double in
 * a fixed order: the same for any thread count, and the compiler can keep the
 * partial sums in vector registers. */
static inline double dot_d(const float *a, const float *b, int64_t D) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[d + u] * b[d + u];
    double s = (((double)acc[0] + acc[1]) + ((double)acc[2] + acc[3])) +
               (((double)acc[4] + acc[5]) + ((double)acc[6] + acc[7]));
    for (; d < D; d++) s += (double)a[d] * (double)b[d];
    return s;
}

/* float exp (simd_math.h's) is enough for a gate; 1/(1+inf) = 0 and 1/(1+0) = 1 at the extremes. */
static inline double sigmoid(double x) { return 1.0f / (1.0f + rp_exp(-(float)x)); }

/* 1 if the D floats of x are all finite: x * 0 is NaN exactly for inf and NaN. */
static inline int row_finite(const float *x, int64_t D) {
    float s = 0.0f;
    for (int64_t d = 0; d < D; d++) s += x[d] * 0.0f;
    return s == 0.0f;
}

/* floor of a clamped position pc >= 0; 0 for a NaN one (a NaN gate), whose
 * weight pc - 0 stays NaN: (int64_t)NaN would be undefined (a garbage index) */
static inline int64_t pos_floor(double pc) { return pc >= 0.0 ? (int64_t)pc : 0; }

static int cope_ok(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t P, int64_t q_offset) {
    return B >= 0 && H >= 0 && Tq >= 0 && Tk >= 0 && D >= 0 && P >= 1 && q_offset >= 0;
}

/* One row: gates (jmax+1), suffix positions pos (jmax+1, clamped), z (P). */
static void cope_row(const float *qi, const float *kb, const float *e, int64_t jmax, int64_t D, int64_t P, float scale,
                     double *gate, double *pos, double *z) {
    for (int64_t t = 0; t <= jmax; t++) gate[t] = sigmoid((double)scale * dot_d(qi, kb + t * D, D));
    double s = 0.0;
    for (int64_t t = jmax; t >= 0; t--) {
        s += gate[t];
        pos[t] = s;
    }
    for (int64_t p = 0; p < P; p++) z[p] = dot_d(qi, e + p * D, D);
}

/* q (B,H,Tq,D), k (B,H,Tk,D), e (P,D) -> out (B,H,Tq,Tk) */
int rp_cope_fwd(const float *q, const float *k, const float *e, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                int64_t P, int64_t q_offset, float scale, float *out) {
    if (!cope_ok(B, H, Tq, Tk, D, P, q_offset)) return RP_EINVAL;
    const int64_t rows = B * H * Tq;
    if (rows == 0 || Tk == 0) return RP_OK;
    int64_t parts = rows < COPE_MAX_PARTS ? rows : COPE_MAX_PARTS;
    const int64_t ns = 2 * Tk + P;
    double *scratch = (double *)rp_malloc((size_t)parts * (size_t)ns * sizeof(double));
    if (!scratch) return RP_ENOMEM;
    const double top = (double)(P - 1);
    RP_BIAS_PARALLEL_PARTS(rows * Tk * D)
    for (int64_t part = 0; part < parts; part++) {
        int64_t lo, hi;
        rp_chunk(rows, parts, part, &lo, &hi);
        double *gate = scratch + part * ns, *pos = gate + Tk, *z = pos + Tk;
        for (int64_t r = lo; r < hi; r++) {
            int64_t bh = r / Tq, i = r % Tq, ia = q_offset + i;
            const float *qi = q + r * D, *kb = k + bh * Tk * D;
            float *o = out + r * Tk;
            int64_t jmax = ia < Tk - 1 ? ia : Tk - 1;
            cope_row(qi, kb, e, jmax, D, P, scale, gate, pos, z);
            for (int64_t j = 0; j <= jmax; j++) {
                double pc = pos[j] > top ? top : pos[j];
                int64_t f = pos_floor(pc);
                double w = pc - (double)f;
                int64_t c = f + (w > 0.0);
                o[j] = (float)(z[f] * (1.0 - w) + z[c] * w);
            }
            for (int64_t j = jmax + 1; j < Tk; j++) o[j] = 0.0f;
        }
    }
    rp_free(scratch);
    return RP_OK;
}

/* g (B,H,Tq,Tk) -> dq (B,H,Tq,D), dk (B,H,Tk,D), de (P,D); any output may be NULL.
 * The sums are those an autograd framework forms (dq = ds k + dz e over every
 * key of the causal window and every row of e, dk = ds q, de = dz q): a term
 * whose coefficient is 0 is skipped only when its vector is finite, so that
 * 0 * inf = NaN still reaches the gradient. */
int rp_cope_bwd(const float *q, const float *k, const float *e, const float *g, int64_t B, int64_t H, int64_t Tq,
                int64_t Tk, int64_t D, int64_t P, int64_t q_offset, float scale, float *dq, float *dk, float *de) {
    if (!cope_ok(B, H, Tq, Tk, D, P, q_offset)) return RP_EINVAL;
    const int64_t BH = B * H;
    if (dq) memset(dq, 0, (size_t)(BH * Tq * D) * sizeof(float));
    if (dk) memset(dk, 0, (size_t)(BH * Tk * D) * sizeof(float));
    if (de) memset(de, 0, (size_t)(P * D) * sizeof(float));
    if (BH == 0 || Tq == 0 || Tk == 0) return RP_OK;
    int64_t parts = BH < COPE_MAX_PARTS ? BH : COPE_MAX_PARTS;
    /* per part: de partial (P*D), dk accumulator (Tk*D), gate, pos, dp (Tk each), z, dz (P), dq row (D) */
    const int64_t ns = P * D + Tk * D + 3 * Tk + 2 * P + D;
    double *scratch = (double *)rp_calloc((size_t)parts * (size_t)ns, sizeof(double));
    /* finiteness flags: e's rows (P), then each part's rows of k (Tk) */
    unsigned char *fin = (unsigned char *)rp_malloc((size_t)(P + parts * Tk));
    if (!scratch || !fin) {
        rp_free(scratch);
        rp_free(fin);
        return RP_ENOMEM;
    }
    unsigned char *efin = fin;
    for (int64_t p = 0; p < P; p++) efin[p] = (unsigned char)row_finite(e + p * D, D);
    const double top = (double)(P - 1);
    RP_BIAS_PARALLEL_PARTS(BH * Tq * Tk * D)
    for (int64_t part = 0; part < parts; part++) {
        int64_t lo, hi;
        rp_chunk(BH, parts, part, &lo, &hi);
        double *dep = scratch + part * ns, *dka = dep + P * D, *gate = dka + Tk * D, *pos = gate + Tk, *dp = pos + Tk,
               *z = dp + Tk, *dz = z + P, *dqr = dz + P;
        unsigned char *kfin = fin + P + part * Tk;
        for (int64_t bh = lo; bh < hi; bh++) {
            const float *kb = k + bh * Tk * D;
            memset(dka, 0, (size_t)(Tk * D) * sizeof(double));
            for (int64_t t = 0; t < Tk; t++) kfin[t] = (unsigned char)row_finite(kb + t * D, D);
            for (int64_t i = 0; i < Tq; i++) {
                int64_t ia = q_offset + i, r = bh * Tq + i;
                int64_t jmax = ia < Tk - 1 ? ia : Tk - 1;
                const float *qi = q + r * D, *gi = g + r * Tk;
                const int qfin = row_finite(qi, D);
                cope_row(qi, kb, e, jmax, D, P, scale, gate, pos, z);
                for (int64_t p = 0; p < P; p++) dz[p] = 0.0;
                for (int64_t j = 0; j <= jmax; j++) {
                    double G = gi[j];
                    double pc = pos[j] > top ? top : pos[j];
                    int64_t f = pos_floor(pc);
                    double w = pc - (double)f;
                    int64_t c = f + (w > 0.0);
                    dz[f] += G * (1.0 - w);
                    dz[c] += G * w;
                    /* a NaN position: its derivative is NaN too (w is) */
                    dp[j] = pos[j] > top ? 0.0 : (w == w ? G * (z[c] - z[f]) : w);
                }
                /* dg_t = sum_{j <= t} dp_j; ds_t = dg_t g_t (1 - g_t) scale */
                for (int64_t d = 0; d < D; d++) dqr[d] = 0.0;
                double run = 0.0;
                for (int64_t t = 0; t <= jmax; t++) {
                    run += dp[t];
                    double ds = run * gate[t] * (1.0 - gate[t]) * (double)scale;
                    if (ds == 0.0 && qfin && kfin[t]) continue;
                    const float *kt = kb + t * D;
                    double *dkt = dka + t * D;
                    for (int64_t d = 0; d < D; d++) {
                        dqr[d] += ds * (double)kt[d];
                        dkt[d] += ds * (double)qi[d];
                    }
                }
                for (int64_t p = 0; p < P; p++) {
                    if (dz[p] == 0.0 && qfin && efin[p]) continue;
                    const float *ep = e + p * D;
                    double *dpp = dep + p * D;
                    for (int64_t d = 0; d < D; d++) {
                        dqr[d] += dz[p] * (double)ep[d];
                        dpp[d] += dz[p] * (double)qi[d];
                    }
                }
                if (dq)
                    for (int64_t d = 0; d < D; d++) dq[r * D + d] = (float)dqr[d];
            }
            if (dk)
                for (int64_t u = 0; u < Tk * D; u++) dk[bh * Tk * D + u] = (float)dka[u];
        }
    }
    if (de) {
        for (int64_t u = 0; u < P * D; u++) {
            double s = 0.0;
            for (int64_t part = 0; part < parts; part++) s += scratch[part * ns + u];
            de[u] = (float)s;
        }
    }
    rp_free(scratch);
    rp_free(fin);
    return RP_OK;
}
