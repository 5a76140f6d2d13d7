/* Materialised attention with all four channels (see attention.h for the
 * logit formula and the relative index rules).
 *
 * The content products are batched GEMMs over (b, h) (gemm.h, deterministic
 * for any thread count); the position channels, masks and softmax are row
 * passes around them.
 *
 * Forward:  S = scale·Q·Kᵀ (GEMM); rows (b, h, i): add the channel terms, mask,
 *           softmax with lse, P written over S; out = P·V (GEMM), then rows add
 *           Σ_j p_ij relv[idx].
 * Backward: P recomputed (GEMM + rows, from lse); dP = dO·Vᵀ (GEMM); rows:
 *           dP += dO·relv[idx], D = dO·O, dS = P∘(dP − D);
 *           dq = scale·dS·K (GEMM) + rows Σ_j scale·dS_ij relk[idx] (into dqr
 *           when qr is given); dk = scale·dSᵀ·Q (GEMM) + columns
 *           Σ_i scale·dS_ij relq[idx]; dv = Pᵀ·dO (GEMM);
 *           shared tables (drelk, drelq, drelv, dbias_vec): per-(b, h, row chunk)
 *           partial sums (chunk count from the shapes only), then summed in a
 *           fixed order (b, h, chunk); dbias_full from dS (summed over b in
 *           order when shared by the batch).
 * No float atomics anywhere: bit-identical for any thread count.
 */
#include "attention.h"
#include "gemm.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

/* ---- checks ------------------------------------------------------------ */

static int relidx_ok(const void *table, int64_t Ht, rp_relidx ix, int64_t H) {
    if (!table) return 1;
    if (ix.sign != 1 && ix.sign != -1) return 0;
    if (ix.R <= 0) return 0;
    return Ht == 1 || Ht == H;
}

static int attn_ok(const rp_attn *a) {
    if (!a || a->merged) return 0; /* out (B, H, Tq, Dv) only */
    /* dense q, k, v only */
    if (!rp_attn_rows_dense(a->q_rows, a->H, a->Tq, a->D) || !rp_attn_rows_dense(a->k_rows, a->H, a->Tk, a->D) ||
        !rp_attn_rows_dense(a->v_rows, a->H, a->Tk, a->Dv))
        return 0;
    if (a->B < 0 || a->H < 0 || a->Tq < 0 || a->Tk < 0 || a->D < 0 || a->Dv < 0 || a->q_offset < 0) return 0;
    if (!relidx_ok(a->relk, a->Hrk, a->relk_ix, a->H)) return 0;
    if (!relidx_ok(a->relq, a->Hrq, a->relq_ix, a->H)) return 0;
    if (!relidx_ok(a->relv, a->Hrv, a->relv_ix, a->H)) return 0;
    if (!relidx_ok(a->bias_vec, a->Hb, a->bias_ix, a->H)) return 0;
    if (a->bias_full && a->Bf != 1 && a->Bf != a->B) return 0;
    if (a->pwl_u && (!relidx_ok(a->pwl_u, 1, a->pwl_ix, a->H) || !a->pwl_w || !a->pwl_slope || !a->pwl_icpt ||
                     a->pwl_S < 1 || (a->pwl_S > 1 && !a->pwl_bp) || (a->Hp != 1 && a->Hp != a->H)))
        return 0;
    return 1;
}

/* Eight fixed lanes let the compiler vectorise the sum; the order depends on
 * n only, so the result is the same for any thread count. */
static inline float dotf(const float *x, const float *y, int64_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int l = 0; l < 8; l++) acc[l] += x[d + l] * y[d + l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; d < n; d++) s += x[d] * y[d];
    return s;
}

static inline void axpyf(float *y, float alpha, const float *x, int64_t n) {
    for (int64_t d = 0; d < n; d++) y[d] += alpha * x[d];
}

/* Σ s[j] in eight fixed lanes (order set by n only). */
static inline float sumf(const float *s, int64_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += s[j + l];
    float t = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; j < n; j++) t += s[j];
    return t;
}

/* Table row of a per-head table (Ht, R, width). */
static inline const float *tab_row(const float *t, int64_t Ht, rp_relidx ix, int64_t width, int64_t h, int64_t ia,
                                   int64_t j) {
    int64_t hr = Ht == 1 ? 0 : h;
    return t + (hr * ix.R + rp_relidx_at(ix, ia, j)) * width;
}

/* The piecewise-linear channel at pair (i, j) of head h: x, its segment, and
 * slope * x + icpt (attention.h). */
static inline float pwl_term(const rp_attn *a, int64_t h, int64_t i, int64_t ia, int64_t j, float *x, int64_t *seg) {
    const int64_t hp = a->Hp == 1 ? 0 : h;
    *x = a->pwl_u[rp_relidx_at(a->pwl_ix, ia, j)] * a->pwl_w[i];
    *seg = rp_pwl_seg(a->pwl_bp, a->pwl_S - 1, *x);
    return a->pwl_slope[hp * a->pwl_S + *seg] * *x + a->pwl_icpt[hp * a->pwl_S + *seg];
}

/* 1 if key j takes part in row i: not after the causal end n, not padding. */
static inline int pair_present(const uint8_t *pad, int64_t n, int64_t j) { return j < n && !(pad && pad[j]); }

/* Finish the logits of row (b, h, i) in s[0..Tk), which holds scale·q_i·k_j:
 * add the channel terms, set masked entries to -INFINITY. Keys from *jend on
 * are causally masked. Returns the row maximum (-INFINITY when every key is
 * masked). */
static float row_logits(const rp_attn *a, int64_t b, int64_t h, int64_t i, float *s, int64_t *jend) {
    const int64_t H = a->H, Tq = a->Tq, Tk = a->Tk, D = a->D;
    const int64_t bh = b * H + h, ia = a->q_offset + i;
    const float *qri = (a->qr ? a->qr : a->q) + (bh * Tq + i) * D;
    const float *kb = a->k + bh * Tk * D;
    const float *bf = NULL;
    if (a->bias_full) bf = a->bias_full + (((a->Bf == 1 ? 0 : b) * H + h) * Tq + i) * Tk;
    const float *bv = a->bias_vec ? a->bias_vec + (a->Hb == 1 ? 0 : h) * a->bias_ix.R : NULL;
    const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + b * Tk : NULL;
    const int64_t n = a->causal ? (ia + 1 < Tk ? ia + 1 : Tk) : Tk;
    *jend = n;
    for (int64_t j = n; j < Tk; j++) s[j] = -INFINITY;
    if (a->relk || a->relq || bv || bf || a->pwl_u) {
        for (int64_t j = 0; j < n; j++) {
            float x = s[j];
            if (a->relk || a->relq) {
                float rel = 0.0f;
                if (a->relk) rel += dotf(qri, tab_row(a->relk, a->Hrk, a->relk_ix, D, h, ia, j), D);
                if (a->relq) rel += dotf(kb + j * D, tab_row(a->relq, a->Hrq, a->relq_ix, D, h, ia, j), D);
                x += a->scale * rel;
            }
            if (bv) x += bv[rp_relidx_at(a->bias_ix, ia, j)];
            if (bf) x += bf[j];
            if (a->pwl_u) {
                float px;
                int64_t seg;
                x += pwl_term(a, h, i, ia, j, &px, &seg);
            }
            s[j] = x;
        }
    }
    if (pad)
        for (int64_t j = 0; j < n; j++)
            if (pad[j]) s[j] = -INFINITY;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; j++) m = (s[j] > m || s[j] != s[j]) ? s[j] : m; /* NaN sticks: never hidden */
    return m;
}

/* S (BH, Tq, Tk) = scale · Q · Kᵀ per (b, h). */
static int content_logits(const rp_attn *a, float *S) {
    const int64_t Tq = a->Tq, Tk = a->Tk, D = a->D;
    return rp_gemm_batched(0, 1, Tq, Tk, D, a->scale, a->q, D, a->k, D, 0.0f, S, Tk, a->B * a->H, Tq * D, Tk * D,
                           Tq * Tk);
}

/* ---- forward ------------------------------------------------------------ */

/* q, qr (B, H, Tq, D); k (B, H, Tk, D); v (B, H, Tk, Dv)
 * out (B, H, Tq, Dv), lse (B, H, Tq), probs (B, H, Tq, Tk) or NULL. */
int rp_attn_mat_fwd(const rp_attn *a, float *out, float *lse, float *probs) {
    if (!attn_ok(a) || !out || !lse) return RP_EINVAL;
    const int64_t H = a->H, Tq = a->Tq, Tk = a->Tk, Dv = a->Dv, BH = a->B * a->H;
    const int64_t nrows = BH * Tq;
    if (nrows == 0) return RP_OK;
    int nt = rp_par_threads();
    if (nt < 1) nt = 1;
    float *S = probs;
    if (!S) {
        S = rp_malloc((size_t)nrows * (size_t)(Tk > 0 ? Tk : 1) * sizeof(float));
        if (!S) return RP_ENOMEM;
    }
    int rc = content_logits(a, S);
    if (rc < 0) goto done;
    const int ef = rp_exp_form(); /* every form gives the same bits */
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t i = r % Tq, bh = r / Tq, h = bh % H, b = bh / H;
        float *s = S + r * Tk;
        int64_t n;
        const float m = row_logits(a, b, h, i, s, &n);
        if (m == -INFINITY) { /* every key masked: p = 0, out = 0 */
            for (int64_t j = 0; j < Tk; j++) s[j] = 0.0f;
            lse[r] = -INFINITY;
            continue;
        }
        for (int64_t j = n; j < Tk; j++) s[j] = 0.0f;
        if (m != m || m == INFINITY) { /* a NaN or +inf logit: the row is NaN on its unmasked keys */
            const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + b * Tk : NULL;
            for (int64_t j = 0; j < n; j++) s[j] = pair_present(pad, n, j) ? NAN : 0.0f;
            lse[r] = NAN;
            continue;
        }
        rp_exp_span(ef, s, m, s, n); /* masked keys (-inf) give 0 */
        const float z = sumf(s, n);  /* >= 1: the maximum contributes exp(0) */
        const float inv = 1.0f / z;
        for (int64_t j = 0; j < n; j++) s[j] *= inv;
        lse[r] = m + logf(z);
    }
    /* non-finite values: a masked key's 0 weight must not meet them (0 * NaN) */
    const int careful =
        rp_any_nonfinite(a->v, BH * Tk * Dv) || (a->relv && rp_any_nonfinite(a->relv, a->Hrv * a->relv_ix.R * Dv));
    if (!careful) {
        rc = rp_gemm_batched(0, 0, Tq, Dv, Tk, 1.0f, S, Tk, a->v, Dv, 0.0f, out, Dv, BH, Tq * Tk, Tk * Dv, Tq * Dv);
        if (rc < 0) goto done;
    }
    if (a->relv || careful) {
        RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
        for (int64_t r = 0; r < nrows; r++) {
            const int64_t i = r % Tq, bh = r / Tq, h = bh % H, ia = a->q_offset + i;
            const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + (bh / H) * Tk : NULL;
            const int64_t n = a->causal ? (ia + 1 < Tk ? ia + 1 : Tk) : Tk;
            const float *p = S + r * Tk;
            float *o = out + r * Dv;
            if (careful) memset(o, 0, sizeof(float) * (size_t)Dv);
            if (lse[r] == -INFINITY) continue; /* the empty row: out = 0 */
            for (int64_t j = 0; j < n; j++) {
                if (!pair_present(pad, n, j)) continue;
                if (careful) axpyf(o, p[j], a->v + (bh * Tk + j) * Dv, Dv);
                if (a->relv) axpyf(o, p[j], tab_row(a->relv, a->Hrv, a->relv_ix, Dv, h, ia, j), Dv);
            }
        }
    }
done:
    if (S != probs) rp_free(S);
    return rc < 0 ? rc : RP_OK;
}

/* ---- backward ----------------------------------------------------------- */

/* Number of row chunks per (b, h) for the table partial sums: a function of
 * the shapes only, never of the thread count. */
static int64_t table_chunks(int64_t BH, int64_t Tq) {
    int64_t nc = BH >= 8 ? 1 : (8 + BH - 1) / BH;
    if (nc > Tq) nc = Tq;
    return nc < 1 ? 1 : nc;
}

/* Sum partial tables (task t = (b * H + h) * nc + c at part + t * stride,
 * each (R, width)) into g (Ht, R, width): g[hr] = Σ_b Σ_{h -> hr} Σ_c, in that order. */
static void reduce_table(float *g, const float *part, int64_t stride, int64_t Ht, int64_t R, int64_t width, int64_t B,
                         int64_t H, int64_t nc, int nt) {
    const int64_t rows = Ht * R, per = stride;
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t t = 0; t < rows; t++) {
        const int64_t hr = t / R, r = t % R;
        float *gr = g + t * width;
        for (int64_t d = 0; d < width; d++) gr[d] = 0.0f;
        const int64_t h0 = Ht == 1 ? 0 : hr, h1 = Ht == 1 ? H : hr + 1;
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = h0; h < h1; h++)
                for (int64_t c = 0; c < nc; c++) {
                    const float *p = part + ((b * H + h) * nc + c) * per + r * width;
                    for (int64_t d = 0; d < width; d++) gr[d] += p[d];
                }
    }
}

static void zero_f(float *p, int64_t n) {
    if (p && n > 0) memset(p, 0, (size_t)n * sizeof(float));
}

int rp_attn_mat_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout, rp_attn_grads *g) {
    if (!attn_ok(a) || !out || !lse || !dout || !g) return RP_EINVAL;
    if (!rp_attn_rows_dense(g->dq_rows, a->H, a->Tq, a->D) || !rp_attn_rows_dense(g->dk_rows, a->H, a->Tk, a->D) ||
        !rp_attn_rows_dense(g->dv_rows, a->H, a->Tk, a->Dv))
        return RP_EINVAL;
    const int64_t B = a->B, H = a->H, Tq = a->Tq, Tk = a->Tk, D = a->D, Dv = a->Dv;
    const int64_t BH = B * H;
    const float scale = a->scale;
    float *dqr = a->qr ? g->dqr : NULL;
    float *drelk = a->relk ? g->drelk : NULL;
    float *drelq = a->relq ? g->drelq : NULL;
    float *drelv = a->relv ? g->drelv : NULL;
    float *dbv = a->bias_vec ? g->dbias_vec : NULL;
    float *dbf = a->bias_full ? g->dbias_full : NULL;
    float *dpu = a->pwl_u ? g->dpwl_u : NULL, *dpw = a->pwl_u ? g->dpwl_w : NULL;
    float *dps = a->pwl_u ? g->dpwl_slope : NULL, *dpi = a->pwl_u ? g->dpwl_icpt : NULL;

    if (BH * Tq * Tk == 0) { /* nothing attends: every gradient is zero */
        zero_f(g->dq, BH * Tq * D);
        zero_f(g->dk, BH * Tk * D);
        zero_f(g->dv, BH * Tk * Dv);
        zero_f(dqr, BH * Tq * D);
        zero_f(drelk, a->Hrk * a->relk_ix.R * D);
        zero_f(drelq, a->Hrq * a->relq_ix.R * D);
        zero_f(drelv, a->Hrv * a->relv_ix.R * Dv);
        zero_f(dbv, a->Hb * a->bias_ix.R);
        zero_f(dbf, a->Bf * H * Tq * Tk);
        zero_f(dpu, a->pwl_ix.R);
        zero_f(dpw, Tq);
        zero_f(dps, a->Hp * a->pwl_S);
        zero_f(dpi, a->Hp * a->pwl_S);
        return RP_OK;
    }
    int nt = rp_par_threads();
    if (nt < 1) nt = 1;
    const int64_t nmat = BH * Tq * Tk;
    const int64_t nc = table_chunks(BH, Tq);
    const int64_t szk = drelk ? a->relk_ix.R * D : 0;
    const int64_t szq = drelq ? a->relq_ix.R * D : 0;
    const int64_t szv = drelv ? a->relv_ix.R * Dv : 0;
    const int64_t szb = dbv ? a->bias_ix.R : 0;
    const int64_t szpu = dpu ? a->pwl_ix.R : 0, szpw = dpw ? Tq : 0;
    const int64_t szps = dps ? a->pwl_S : 0, szpi = dpi ? a->pwl_S : 0;
    const int64_t per_task = szk + szq + szv + szb + szpu + szpw + szps + szpi;
    /* dS, q, k, dout and the relative key/query tables meet in products with
     * pair weights: a NaN or inf there must not meet a masked pair's 0 */
    const int careful = rp_any_nonfinite(dout, BH * Tq * Dv) || rp_any_nonfinite(a->q, BH * Tq * D) ||
                        rp_any_nonfinite(a->k, BH * Tk * D) || (a->qr && rp_any_nonfinite(a->qr, BH * Tq * D)) ||
                        (a->relk && rp_any_nonfinite(a->relk, a->Hrk * a->relk_ix.R * D)) ||
                        (a->relq && rp_any_nonfinite(a->relq, a->Hrq * a->relq_ix.R * D));
    float *P = rp_malloc((size_t)nmat * sizeof(float));
    float *dS = rp_malloc((size_t)nmat * sizeof(float));
    float *part = per_task ? rp_malloc((size_t)(BH * nc) * (size_t)per_task * sizeof(float)) : NULL;
    int rc = RP_ENOMEM;
    if (!P || !dS || (per_task && !part)) goto done;

    /* P from lse; dS = P∘(dO·(V + relv)ᵀ − D); masked pairs and empty rows
     * (lse = -inf) have P = dS = 0 exactly, whatever dP holds there */
    if ((rc = content_logits(a, P)) < 0) goto done;
    rc = rp_gemm_batched(0, 1, Tq, Tk, Dv, 1.0f, dout, Dv, a->v, Dv, 0.0f, dS, Tk, BH, Tq * Dv, Tk * Dv, Tq * Tk);
    if (rc < 0) goto done;
    const int ef = rp_exp_form();
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t r = 0; r < BH * Tq; r++) {
        const int64_t i = r % Tq, bh = r / Tq, h = bh % H, b = bh / H;
        const int64_t ia = a->q_offset + i;
        float *p = P + r * Tk, *ds = dS + r * Tk;
        const float l = lse[r];
        if (l == -INFINITY) { /* the empty row: no gradient */
            for (int64_t j = 0; j < Tk; j++) p[j] = ds[j] = 0.0f;
            continue;
        }
        const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + b * Tk : NULL;
        int64_t n;
        row_logits(a, b, h, i, p, &n);
        for (int64_t j = n; j < Tk; j++) p[j] = ds[j] = 0.0f;
        const float *doi = dout + r * Dv;
        const float Di = dotf(doi, out + r * Dv, Dv);
        rp_exp_span(ef, p, l, p, n); /* a NaN row (l = NaN): NaN everywhere, masked keys reset below */
        for (int64_t j = 0; j < n; j++) {
            if (!pair_present(pad, n, j)) {
                p[j] = ds[j] = 0.0f;
                continue;
            }
            float dp = ds[j];
            if (a->relv) dp += dotf(doi, tab_row(a->relv, a->Hrv, a->relv_ix, Dv, h, ia, j), Dv);
            ds[j] = p[j] * (dp - Di);
        }
    }

    /* dq = scale·dS·K (+ the relk term, or dqr) */
    if (g->dq && !careful) {
        rc = rp_gemm_batched(0, 0, Tq, D, Tk, scale, dS, Tk, a->k, D, 0.0f, g->dq, D, BH, Tq * Tk, Tk * D, Tq * D);
        if (rc < 0) goto done;
    }
    float *dqrel = a->relk ? (a->qr ? dqr : g->dq) : NULL;
    if ((g->dq && careful) || dqrel) {
        RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
        for (int64_t r = 0; r < BH * Tq; r++) {
            const int64_t i = r % Tq, bh = r / Tq, h = bh % H, ia = a->q_offset + i;
            const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + (bh / H) * Tk : NULL;
            const int64_t n = lse[r] == -INFINITY ? 0 : (a->causal ? (ia + 1 < Tk ? ia + 1 : Tk) : Tk);
            const float *ds = dS + r * Tk;
            if (g->dq && careful) {
                float *t = g->dq + r * D;
                for (int64_t d = 0; d < D; d++) t[d] = 0.0f;
                for (int64_t j = 0; j < n; j++)
                    if (pair_present(pad, n, j)) axpyf(t, scale * ds[j], a->k + (bh * Tk + j) * D, D);
            }
            if (dqrel) {
                float *t = dqrel + r * D;
                if (a->qr)
                    for (int64_t d = 0; d < D; d++) t[d] = 0.0f;
                for (int64_t j = 0; j < n; j++)
                    if (pair_present(pad, n, j))
                        axpyf(t, scale * ds[j], tab_row(a->relk, a->Hrk, a->relk_ix, D, h, ia, j), D);
            }
        }
    } else if (dqr) {
        zero_f(dqr, BH * Tq * D); /* qr given without relk cannot happen (bridge), but stay defined */
    }

    /* dk = scale·dSᵀ·Q (+ the relq term) */
    if (g->dk) {
        if (!careful) {
            rc = rp_gemm_batched(1, 0, Tk, D, Tq, scale, dS, Tk, a->q, D, 0.0f, g->dk, D, BH, Tq * Tk, Tq * D, Tk * D);
            if (rc < 0) goto done;
        }
        if (a->relq || careful) {
            RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
            for (int64_t c = 0; c < BH * Tk; c++) {
                const int64_t j = c % Tk, bh = c / Tk, h = bh % H;
                const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + (bh / H) * Tk : NULL;
                float *dkj = g->dk + c * D;
                if (careful)
                    for (int64_t d = 0; d < D; d++) dkj[d] = 0.0f;
                if (pad && pad[j]) continue;
                for (int64_t i = 0; i < Tq; i++) {
                    const int64_t ia = a->q_offset + i, e = (bh * Tq + i) * Tk + j;
                    if ((a->causal && j > ia) || lse[bh * Tq + i] == -INFINITY) continue;
                    if (careful) axpyf(dkj, scale * dS[e], a->q + (bh * Tq + i) * D, D);
                    if (a->relq) axpyf(dkj, scale * dS[e], tab_row(a->relq, a->Hrq, a->relq_ix, D, h, ia, j), D);
                }
            }
        }
    }

    /* dv = Pᵀ·dO */
    if (g->dv) {
        if (!careful) {
            rc = rp_gemm_batched(1, 0, Tk, Dv, Tq, 1.0f, P, Tk, dout, Dv, 0.0f, g->dv, Dv, BH, Tq * Tk, Tq * Dv,
                                 Tk * Dv);
            if (rc < 0) goto done;
        } else {
            RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
            for (int64_t c = 0; c < BH * Tk; c++) {
                const int64_t j = c % Tk, bh = c / Tk;
                const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + (bh / H) * Tk : NULL;
                float *dvj = g->dv + c * Dv;
                for (int64_t d = 0; d < Dv; d++) dvj[d] = 0.0f;
                if (pad && pad[j]) continue;
                for (int64_t i = 0; i < Tq; i++) {
                    if ((a->causal && j > a->q_offset + i) || lse[bh * Tq + i] == -INFINITY) continue;
                    axpyf(dvj, P[(bh * Tq + i) * Tk + j], dout + (bh * Tq + i) * Dv, Dv);
                }
            }
        }
    }

    /* per-(b, h, chunk) partial sums of the shared tables, then fixed-order reductions */
    if (per_task) {
        RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
        for (int64_t t = 0; t < BH * nc; t++) {
            const int64_t bh = t / nc, c = t % nc, h = bh % H;
            float *pk = part + t * per_task, *pq = pk + szk, *pv = pq + szq, *pb = pv + szv;
            float *ppu = pb + szb, *ppw = ppu + szpu, *pps = ppw + szpw, *ppi = pps + szps;
            memset(pk, 0, (size_t)per_task * sizeof(float));
            int64_t lo, hi;
            rp_chunk(Tq, nc, c, &lo, &hi);
            const float *qrb = (a->qr ? a->qr : a->q) + bh * Tq * D;
            const float *kb = a->k + bh * Tk * D;
            const uint8_t *pad = a->key_padding_mask ? a->key_padding_mask + (bh / H) * Tk : NULL;
            const float *sl = a->pwl_u ? a->pwl_slope + (a->Hp == 1 ? 0 : h) * a->pwl_S : NULL;
            for (int64_t i = lo; i < hi; i++) {
                const int64_t ia = a->q_offset + i, row = bh * Tq + i;
                if (lse[row] == -INFINITY) continue;
                const int64_t n = a->causal ? (ia + 1 < Tk ? ia + 1 : Tk) : Tk;
                for (int64_t j = 0; j < n; j++) {
                    if (!pair_present(pad, n, j)) continue;
                    const float p = P[row * Tk + j];
                    const float ds = dS[row * Tk + j];
                    if (drelk) axpyf(pk + rp_relidx_at(a->relk_ix, ia, j) * D, scale * ds, qrb + i * D, D);
                    if (drelq) axpyf(pq + rp_relidx_at(a->relq_ix, ia, j) * D, scale * ds, kb + j * D, D);
                    if (drelv) axpyf(pv + rp_relidx_at(a->relv_ix, ia, j) * Dv, p, dout + row * Dv, Dv);
                    if (dbv) pb[rp_relidx_at(a->bias_ix, ia, j)] += ds;
                    if (szpu + szpw + szps + szpi) {
                        float x;
                        int64_t seg;
                        (void)pwl_term(a, h, i, ia, j, &x, &seg);
                        const int64_t u = rp_relidx_at(a->pwl_ix, ia, j);
                        const float dx = ds * sl[seg];
                        if (dps) pps[seg] += ds * x;
                        if (dpi) ppi[seg] += ds;
                        if (dpu) ppu[u] += dx * a->pwl_w[i];
                        if (dpw) ppw[i] += dx * a->pwl_u[u];
                    }
                }
            }
        }
        if (drelk) reduce_table(drelk, part, per_task, a->Hrk, a->relk_ix.R, D, B, H, nc, nt);
        if (drelq) reduce_table(drelq, part + szk, per_task, a->Hrq, a->relq_ix.R, D, B, H, nc, nt);
        if (drelv) reduce_table(drelv, part + szk + szq, per_task, a->Hrv, a->relv_ix.R, Dv, B, H, nc, nt);
        const int64_t o = szk + szq + szv;
        if (dbv) reduce_table(dbv, part + o, per_task, a->Hb, a->bias_ix.R, 1, B, H, nc, nt);
        if (dpu) reduce_table(dpu, part + o + szb, per_task, 1, a->pwl_ix.R, 1, B, H, nc, nt);
        if (dpw) reduce_table(dpw, part + o + szb + szpu, per_task, 1, Tq, 1, B, H, nc, nt);
        if (dps) reduce_table(dps, part + o + szb + szpu + szpw, per_task, a->Hp, a->pwl_S, 1, B, H, nc, nt);
        if (dpi) reduce_table(dpi, part + o + szb + szpu + szpw + szps, per_task, a->Hp, a->pwl_S, 1, B, H, nc, nt);
    }

    if (dbf) {
        if (a->Bf == B) {
            memcpy(dbf, dS, (size_t)nmat * sizeof(float));
        } else { /* shared by the batch: Σ_b dS[b] in order */
            const int64_t n = H * Tq * Tk;
            RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
            for (int64_t e = 0; e < n; e++) {
                float s = 0.0f;
                for (int64_t b = 0; b < B; b++) s += dS[b * n + e];
                dbf[e] = s;
            }
        }
    }
    rc = RP_OK;
done:
    rp_free(P);
    rp_free(dS);
    rp_free(part);
    return rc;
}
