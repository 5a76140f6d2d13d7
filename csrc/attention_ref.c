/* Materialised attention with all four channels (see attention.h for the
 * logit formula and the relative index rules).
 *
 * Forward: one task per query row (b, h, i): build the Tk logits, softmax with
 * lse, out_i = Σ_j p_ij (v_j + relv[idx]). Rows are independent, so the result
 * does not depend on the thread count.
 *
 * Backward, four passes, each parallel over independent work:
 *   1. rows (b, h, i): recompute P from lse, dP = dO·(V + relv)ᵀ, D = dO·O,
 *      dS = P∘(dP − D); store P and dS (B, H, Tq, Tk); write dq_i, dqr_i.
 *   2. columns (b, h, j): dk_j = scale Σ_i dS_ij (q_i + relq[idx]),
 *      dv_j = Σ_i p_ij dO_i (summed over i in order).
 *   3. (b, h, row chunk): partial sums of the shared tables (drelk, drelq,
 *      drelv, dbias_vec) into per-task buffers; the chunk count depends on
 *      the shapes only.
 *   4. table entries: sum the partials in a fixed order (b, h, chunk);
 *      dbias_full from dS (summed over b when it is shared by the batch).
 * No float atomics anywhere: bit-identical for any thread count.
 */
#include "attention.h"

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
    if (!a) return 0;
    if (a->B < 0 || a->H < 0 || a->Tq < 0 || a->Tk < 0 || a->D < 0 || a->Dv < 0 || a->q_offset < 0) return 0;
    if (!relidx_ok(a->relk, a->Hrk, a->relk_ix, a->H)) return 0;
    if (!relidx_ok(a->relq, a->Hrq, a->relq_ix, a->H)) return 0;
    if (!relidx_ok(a->relv, a->Hrv, a->relv_ix, a->H)) return 0;
    if (!relidx_ok(a->bias_vec, a->Hb, a->bias_ix, a->H)) return 0;
    if (a->bias_full && a->Bf != 1 && a->Bf != a->B) return 0;
    return 1;
}

static inline int key_allowed(const rp_attn *a, int64_t b, int64_t ia, int64_t j) {
    if (a->causal && j > ia) return 0;
    if (a->key_padding_mask && a->key_padding_mask[b * a->Tk + j]) return 0;
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

/* Table row of a per-head table (Ht, R, width). */
static inline const float *tab_row(const float *t, int64_t Ht, rp_relidx ix, int64_t width, int64_t h,
                                   int64_t ia, int64_t j) {
    int64_t hr = Ht == 1 ? 0 : h;
    return t + (hr * ix.R + rp_relidx_at(ix, ia, j)) * width;
}

/* Logits of row (b, h, i) into s[0..Tk); masked entries -INFINITY.
 * Returns the row maximum (-INFINITY when every key is masked). */
static float row_logits(const rp_attn *a, int64_t b, int64_t h, int64_t i, float *s) {
    const int64_t H = a->H, Tq = a->Tq, Tk = a->Tk, D = a->D;
    const int64_t bh = b * H + h, ia = a->q_offset + i;
    const float *qi = a->q + (bh * Tq + i) * D;
    const float *qri = a->qr ? a->qr + (bh * Tq + i) * D : qi;
    const float *kb = a->k + bh * Tk * D;
    const float *bf = NULL;
    if (a->bias_full) bf = a->bias_full + (((a->Bf == 1 ? 0 : b) * H + h) * Tq + i) * Tk;
    float m = -INFINITY;
    for (int64_t j = 0; j < Tk; j++) {
        if (!key_allowed(a, b, ia, j)) {
            s[j] = -INFINITY;
            continue;
        }
        const float *kj = kb + j * D;
        float dot = dotf(qi, kj, D);
        if (a->relk) dot += dotf(qri, tab_row(a->relk, a->Hrk, a->relk_ix, D, h, ia, j), D);
        if (a->relq) dot += dotf(kj, tab_row(a->relq, a->Hrq, a->relq_ix, D, h, ia, j), D);
        float x = a->scale * dot;
        if (a->bias_vec) x += a->bias_vec[(a->Hb == 1 ? 0 : h) * a->bias_ix.R + rp_relidx_at(a->bias_ix, ia, j)];
        if (bf) x += bf[j];
        s[j] = x;
        if (x > m) m = x;
    }
    return m;
}

/* ---- forward ------------------------------------------------------------ */

/* q, qr (B, H, Tq, D); k (B, H, Tk, D); v (B, H, Tk, Dv)
 * out (B, H, Tq, Dv), lse (B, H, Tq), probs (B, H, Tq, Tk) or NULL. */
int rp_attn_mat_fwd(const rp_attn *a, float *out, float *lse, float *probs) {
    if (!attn_ok(a) || !out || !lse) return RP_EINVAL;
    const int64_t H = a->H, Tq = a->Tq, Tk = a->Tk, Dv = a->Dv;
    const int64_t nrows = a->B * H * Tq;
    if (nrows == 0) return RP_OK;
    int nt = rp_get_num_threads();
    if (nt < 1) nt = 1;
    float *scratch = NULL;
    if (!probs) {
        scratch = rp_malloc((size_t)nt * (size_t)(Tk > 0 ? Tk : 1) * sizeof(float));
        if (!scratch) return RP_ENOMEM;
    }
    RP_PRAGMA(omp parallel num_threads(nt))
    {
        int tid = 0;
#if RP_HAVE_OPENMP
        tid = omp_get_thread_num();
#endif
        RP_PRAGMA(omp for schedule(static))
        for (int64_t r = 0; r < nrows; r++) {
            const int64_t i = r % Tq, bh = r / Tq, h = bh % H, b = bh / H;
            const int64_t ia = a->q_offset + i;
            float *s = probs ? probs + r * Tk : scratch + (int64_t)tid * Tk;
            float *o = out + r * Dv;
            float m = row_logits(a, b, h, i, s);
            for (int64_t d = 0; d < Dv; d++) o[d] = 0.0f;
            if (m == -INFINITY) { /* every key masked */
                for (int64_t j = 0; j < Tk; j++) s[j] = 0.0f;
                lse[r] = -INFINITY;
                continue;
            }
            double z = 0.0;
            for (int64_t j = 0; j < Tk; j++) {
                float e = s[j] == -INFINITY ? 0.0f : expf(s[j] - m);
                s[j] = e;
                z += e;
            }
            const float inv = (float)(1.0 / z);
            const float *vb = a->v + bh * Tk * Dv;
            for (int64_t j = 0; j < Tk; j++) {
                float p = s[j] * inv;
                s[j] = p;
                if (p == 0.0f) continue;
                axpyf(o, p, vb + j * Dv, Dv);
                if (a->relv) axpyf(o, p, tab_row(a->relv, a->Hrv, a->relv_ix, Dv, h, ia, j), Dv);
            }
            lse[r] = m + (float)log(z);
        }
    }
    rp_free(scratch);
    return RP_OK;
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
static void reduce_table(float *g, const float *part, int64_t stride, int64_t Ht, int64_t R, int64_t width,
                         int64_t B, int64_t H, int64_t nc, int nt) {
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

int rp_attn_mat_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout,
                    rp_attn_grads *g) {
    if (!attn_ok(a) || !out || !lse || !dout || !g) return RP_EINVAL;
    const int64_t B = a->B, H = a->H, Tq = a->Tq, Tk = a->Tk, D = a->D, Dv = a->Dv;
    const int64_t BH = B * H;
    const float scale = a->scale;
    float *dqr = a->qr ? g->dqr : NULL;
    float *drelk = a->relk ? g->drelk : NULL;
    float *drelq = a->relq ? g->drelq : NULL;
    float *drelv = a->relv ? g->drelv : NULL;
    float *dbv = a->bias_vec ? g->dbias_vec : NULL;
    float *dbf = a->bias_full ? g->dbias_full : NULL;

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
        return RP_OK;
    }
    int nt = rp_get_num_threads();
    if (nt < 1) nt = 1;
    const int64_t nmat = BH * Tq * Tk;
    const int need_ds = g->dq || dqr || g->dk || drelk || drelq || dbv || dbf;
    const int64_t nc = table_chunks(BH, Tq);
    const int64_t szk = drelk ? a->relk_ix.R * D : 0;
    const int64_t szq = drelq ? a->relq_ix.R * D : 0;
    const int64_t szv = drelv ? a->relv_ix.R * Dv : 0;
    const int64_t szb = dbv ? a->bias_ix.R : 0;
    const int64_t per_task = szk + szq + szv + szb;
    float *P = rp_malloc((size_t)nmat * sizeof(float));
    float *dS = (float *)rp_malloc((size_t)nmat * sizeof(float));
    float *part = per_task ? rp_malloc((size_t)(BH * nc) * (size_t)per_task * sizeof(float)) : NULL;
    if (!P || !dS || (per_task && !part)) {
        rp_free(P);
        rp_free(dS);
        rp_free(part);
        return RP_ENOMEM;
    }

    /* 1. rows: P, dS, dq, dqr */
    RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
    for (int64_t r = 0; r < BH * Tq; r++) {
        const int64_t i = r % Tq, bh = r / Tq, h = bh % H, b = bh / H;
        const int64_t ia = a->q_offset + i;
        float *p = P + r * Tk, *ds = dS + r * Tk;
        float *dqi = g->dq ? g->dq + r * D : NULL;
        float *dqri = dqr ? dqr + r * D : NULL;
        if (dqi) for (int64_t d = 0; d < D; d++) dqi[d] = 0.0f;
        if (dqri) for (int64_t d = 0; d < D; d++) dqri[d] = 0.0f;
        const float l = lse[r];
        if (l == -INFINITY) { /* fully masked row: no gradient */
            for (int64_t j = 0; j < Tk; j++) p[j] = ds[j] = 0.0f;
            continue;
        }
        row_logits(a, b, h, i, p);
        for (int64_t j = 0; j < Tk; j++) p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - l);
        const float *doi = dout + r * Dv;
        const float Di = dotf(doi, out + r * Dv, Dv);
        const float *vb = a->v + bh * Tk * Dv;
        const float *kb = a->k + bh * Tk * D;
        for (int64_t j = 0; j < Tk; j++) {
            if (p[j] == 0.0f) {
                ds[j] = 0.0f;
                continue;
            }
            float dp = dotf(doi, vb + j * Dv, Dv);
            if (a->relv) dp += dotf(doi, tab_row(a->relv, a->Hrv, a->relv_ix, Dv, h, ia, j), Dv);
            const float dsj = p[j] * (dp - Di);
            ds[j] = dsj;
            if (!need_ds) continue;
            const float c = scale * dsj;
            if (dqi) axpyf(dqi, c, kb + j * D, D);
            if (a->relk) {
                const float *rk = tab_row(a->relk, a->Hrk, a->relk_ix, D, h, ia, j);
                if (a->qr) {
                    if (dqri) axpyf(dqri, c, rk, D);
                } else if (dqi) {
                    axpyf(dqi, c, rk, D);
                }
            }
        }
    }

    /* 2. columns: dk, dv */
    if (g->dk || g->dv) {
        RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
        for (int64_t cidx = 0; cidx < BH * Tk; cidx++) {
            const int64_t j = cidx % Tk, bh = cidx / Tk, h = bh % H;
            float *dkj = g->dk ? g->dk + cidx * D : NULL;
            float *dvj = g->dv ? g->dv + cidx * Dv : NULL;
            if (dkj) for (int64_t d = 0; d < D; d++) dkj[d] = 0.0f;
            if (dvj) for (int64_t d = 0; d < Dv; d++) dvj[d] = 0.0f;
            const float *qb = a->q + bh * Tq * D;
            for (int64_t i = 0; i < Tq; i++) {
                const int64_t e = (bh * Tq + i) * Tk + j;
                const float p = P[e];
                if (p == 0.0f) continue;
                if (dkj) {
                    const float c = scale * dS[e];
                    axpyf(dkj, c, qb + i * D, D);
                    if (a->relq) axpyf(dkj, c, tab_row(a->relq, a->Hrq, a->relq_ix, D, h, a->q_offset + i, j), D);
                }
                if (dvj) axpyf(dvj, p, dout + (bh * Tq + i) * Dv, Dv);
            }
        }
    }

    /* 3. per-(b, h, chunk) partial sums of the relative tables */
    if (per_task) {
        RP_PRAGMA(omp parallel for schedule(static) num_threads(nt))
        for (int64_t t = 0; t < BH * nc; t++) {
            const int64_t bh = t / nc, c = t % nc;
            float *pk = part + t * per_task, *pq = pk + szk, *pv = pq + szq, *pb = pv + szv;
            memset(pk, 0, (size_t)per_task * sizeof(float));
            int64_t lo, hi;
            rp_chunk(Tq, nc, c, &lo, &hi);
            const float *qb = a->q + bh * Tq * D;
            const float *qrb = a->qr ? a->qr + bh * Tq * D : qb;
            const float *kb = a->k + bh * Tk * D;
            for (int64_t i = lo; i < hi; i++) {
                const int64_t ia = a->q_offset + i, row = bh * Tq + i;
                for (int64_t j = 0; j < Tk; j++) {
                    const float p = P[row * Tk + j];
                    if (p == 0.0f) continue;
                    const float ds = dS[row * Tk + j];
                    if (drelk) axpyf(pk + rp_relidx_at(a->relk_ix, ia, j) * D, scale * ds, qrb + i * D, D);
                    if (drelq) axpyf(pq + rp_relidx_at(a->relq_ix, ia, j) * D, scale * ds, kb + j * D, D);
                    if (drelv) axpyf(pv + rp_relidx_at(a->relv_ix, ia, j) * Dv, p, dout + row * Dv, Dv);
                    if (dbv) pb[rp_relidx_at(a->bias_ix, ia, j)] += ds;
                }
            }
        }
        /* 4. fixed-order reductions into the tables */
        if (drelk) reduce_table(drelk, part, per_task, a->Hrk, a->relk_ix.R, D, B, H, nc, nt);
        if (drelq) reduce_table(drelq, part + szk, per_task, a->Hrq, a->relq_ix.R, D, B, H, nc, nt);
        if (drelv) reduce_table(drelv, part + szk + szq, per_task, a->Hrv, a->relv_ix.R, Dv, B, H, nc, nt);
        if (dbv) reduce_table(dbv, part + szk + szq + szv, per_task, a->Hb, a->bias_ix.R, 1, B, H, nc, nt);
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
    rp_free(P);
    rp_free(dS);
    rp_free(part);
    return RP_OK;
}
