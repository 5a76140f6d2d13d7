/* Fused kernels of the training step: residual add + LayerNorm, Linear + GELU,
 * head split/merge with the rotary transform. The per-row math is the ops
 * area's span kernels (ops.h, AVX2 instantiation when enabled), so a fused
 * pass gives the same bits as the unfused ops it replaces. */
#include "ops.h"

#include <string.h>

#include "gemm.h"
#include "blocks.h"
#include "posenc.h"

/* ---- residual add + LayerNorm -------------------------------------------- */

/* s (N, D) = x + y, h = LayerNorm(s) * w + b; mean, rstd (N) */
int rp_blocks_add_layernorm_fwd(const float *x, const float *y, const float *w, const float *b, float *s, float *h,
                                float *mean, float *rstd, int64_t N, int64_t D, float eps) {
    if (N < 0 || D < 0 || !(eps >= 0.0f)) return RP_EINVAL;
    if (N == 0) return RP_OK;
    const int simd = rp_simd_enabled();
    /* blocks of rows: the SIMD kernel runs several rows side by side (same bits, any split) */
    const int64_t nb = (N + RP_OPS_LN_BLOCK - 1) / RP_OPS_LN_BLOCK;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN)
    for (int64_t k = 0; k < nb; k++) {
        const int64_t r = k * RP_OPS_LN_BLOCK, n = N - r < RP_OPS_LN_BLOCK ? N - r : RP_OPS_LN_BLOCK;
        rp_ops_add_ln_fwd_rows(simd, x + r * D, y + r * D, s + r * D, w, b, h + r * D, n, D, eps, mean + r, rstd + r);
    }
    return RP_OK;
}

/* dx (N, D) = ds + LayerNorm_bwd(dh); dw, db (D) over fixed row chunks */
int rp_blocks_add_layernorm_bwd(const float *s, const float *w, const float *mean, const float *rstd, const float *dh,
                                const float *ds, float *dx, float *dw, float *db, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (dw) memset(dw, 0, (size_t)D * sizeof(float));
    if (db) memset(db, 0, (size_t)D * sizeof(float));
    if (N == 0 || D == 0) return RP_OK;
    const int64_t nch = N < RP_OPS_NCHUNK ? N : RP_OPS_NCHUNK;
    float *part = (dw || db) ? (float *)rp_calloc((size_t)(2 * nch * D), sizeof(float)) : NULL;
    if ((dw || db) && !part) return RP_ENOMEM;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * D >= 4096)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(N, nch, c, &lo, &hi);
        float *pw = dw ? part + c * D : NULL, *pb = db ? part + (nch + c) * D : NULL;
        rp_ops_add_ln_bwd_rows(simd, s + lo * D, w, mean + lo, rstd + lo, dh + lo * D, ds ? ds + lo * D : NULL,
                               dx ? dx + lo * D : NULL, pw, pb, hi - lo, D);
    }
    for (int64_t c = 0; c < nch; c++)
        for (int64_t j = 0; j < D; j++) {
            if (dw) dw[j] += part[c * D + j];
            if (db) db[j] += part[(nch + c) * D + j];
        }
    rp_free(part);
    return RP_OK;
}

/* ---- Linear + GELU --------------------------------------------------------- */

static int gelu_kind_ok(int kind) { return kind == RP_ACT_GELU_TANH || kind == RP_ACT_GELU_ERF; }

/* h (M, N) = x (M, K) · w (N, K)ᵀ + b; a = gelu(h) */
int rp_blocks_linear_gelu_fwd(int kind, const float *x, const float *w, const float *b, float *h, float *a, int64_t M,
                              int64_t N, int64_t K) {
    if (M < 0 || N < 0 || K < 0 || !gelu_kind_ok(kind)) return RP_EINVAL;
    if (M == 0 || N == 0) return RP_OK;
    int rc = rp_gemm_linear_fwd(M, N, K, x, w, b, h);
    if (rc) return rc;
    const int simd = rp_simd_enabled();
    /* rows in blocks of ~16K floats: each block is one span call */
    const int64_t rows = N >= 16384 ? 1 : 16384 / N;
    const int64_t nblk = (M + rows - 1) / rows;
    RP_OPS_PFOR(M * N >= RP_OPS_PAR_MIN)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t r0 = blk * rows, r1 = r0 + rows < M ? r0 + rows : M;
        rp_ops_act_fwd_span(simd, kind, h + r0 * N, a + r0 * N, (r1 - r0) * N);
    }
    return RP_OK;
}

/* dh = gelu'(h) * da, db = Σ_rows dh (fixed chunks), dx = dh · w, dw = dhᵀ · x */
int rp_blocks_linear_gelu_bwd(int kind, const float *x, const float *w, const float *h, const float *da, float *dh,
                              float *dx, float *dw, float *db, int64_t M, int64_t N, int64_t K) {
    if (M < 0 || N < 0 || K < 0 || !gelu_kind_ok(kind)) return RP_EINVAL;
    if (db) memset(db, 0, (size_t)N * sizeof(float));
    if (M == 0 || N == 0) {
        if (dx) memset(dx, 0, (size_t)(M * K) * sizeof(float));
        if (dw) memset(dw, 0, (size_t)(N * K) * sizeof(float));
        return RP_OK;
    }
    const int64_t nch = M < RP_OPS_NCHUNK ? M : RP_OPS_NCHUNK;
    float *part = db ? (float *)rp_calloc((size_t)(nch * N), sizeof(float)) : NULL;
    if (db && !part) return RP_ENOMEM;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(M * N >= RP_OPS_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(M, nch, c, &lo, &hi);
        rp_ops_act_bwd_span(simd, kind, h + lo * N, da + lo * N, dh + lo * N, (hi - lo) * N);
        if (part) {
            float *p = part + c * N;
            if (simd) {
                /* the chunk's rows summed in order from +0, partial sums in registers (same bits) */
                rp_colsum_strip_avx2(dh + lo * N, hi - lo, N, 0, N, hi - lo, p);
            } else {
                for (int64_t r = lo; r < hi; r++) {
                    const float *g = dh + r * N;
                    for (int64_t j = 0; j < N; j++) p[j] += g[j];
                }
            }
        }
    }
    if (db) {
        for (int64_t c = 0; c < nch; c++)
            for (int64_t j = 0; j < N; j++) db[j] += part[c * N + j];
        rp_free(part);
    }
    int rc = RP_OK;
    if (dx) rc = rp_gemm(0, 0, M, K, N, 1.0f, dh, N, w, K, 0.0f, dx, K);
    if (!rc && dw) rc = rp_gemm(1, 0, N, K, M, 1.0f, dh, N, x, K, 0.0f, dw, K);
    return rc;
}

/* ---- head split / merge ----------------------------------------------------- */

static int heads_args_ok(int64_t G, int64_t rotate, const float *cos, const float *sin, int64_t rd, int layout,
                         int64_t B, int64_t T, int64_t H, int64_t Dh) {
    if (B < 0 || T < 0 || H < 0 || Dh < 0 || G < 1 || rotate < 0 || rotate > G) return 0;
    if (layout != RP_ROPE_INTERLEAVED && layout != RP_ROPE_HALF) return 0;
    if (rotate > 0 && (!cos || !sin || rd <= 0 || rd % 2 || rd > Dh)) return 0;
    return 1;
}

/* outs[g] (B, H, T, Dh) <- rot(y (B, T, G*H*Dh) group g) */
int rp_blocks_heads_split(const float *y, int64_t G, int64_t rotate, const float *cos, const float *sin, int64_t rd,
                          int layout, float *const *outs, int64_t B, int64_t T, int64_t H, int64_t Dh) {
    if (!heads_args_ok(G, rotate, cos, sin, rd, layout, B, T, H, Dh)) return RP_EINVAL;
    const int64_t rows = B * T, HD = H * Dh;
    if (rows == 0 || HD == 0) return RP_OK;
    const int64_t P = rd / 2;
    RP_OPS_PFOR(rows * G * HD >= RP_OPS_PAR_MIN)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t bi = row / T, t = row % T;
        for (int64_t g = 0; g < G; g++) {
            const float *yr = y + (row * G + g) * HD;
            for (int64_t h = 0; h < H; h++) {
                float *o = outs[g] + ((bi * H + h) * T + t) * Dh;
                if (g < rotate)
                    rp_rotary_row(yr + h * Dh, o, cos + t * P, sin + t * P, NULL, Dh, P, layout, 1.0f);
                else
                    memcpy(o, yr + h * Dh, (size_t)Dh * sizeof(float));
            }
        }
    }
    return RP_OK;
}

/* y (B, T, G*H*Dh): groups g < rotate turned in place by rot_t (inverse: rot_tᵀ) */
int rp_blocks_heads_rotate(float *y, int64_t G, int64_t rotate, const float *cos, const float *sin, int64_t rd,
                           int layout, int inverse, int64_t B, int64_t T, int64_t H, int64_t Dh) {
    if (!heads_args_ok(G, rotate, cos, sin, rd, layout, B, T, H, Dh)) return RP_EINVAL;
    const int64_t rows = B * T, HD = H * Dh;
    if (rows == 0 || HD == 0 || rotate == 0) return RP_OK;
    const int64_t P = rd / 2;
    const float dir = inverse ? -1.0f : 1.0f;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(rows * rotate * HD >= RP_OPS_PAR_MIN)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t t = row % T;
        for (int64_t g = 0; g < rotate; g++)
            rp_rotate_heads(simd, y + (row * G + g) * HD, H, Dh, cos + t * P, sin + t * P, rd, layout, dir);
    }
    return RP_OK;
}

/* y (B, T, G*H*Dh) <- rotᵀ(srcs[g] (B, H, T, Dh)), zeros where srcs[g] is NULL */
int rp_blocks_heads_merge(const float *const *srcs, int64_t G, int64_t rotate, const float *cos, const float *sin,
                          int64_t rd, int layout, float *y, int64_t B, int64_t T, int64_t H, int64_t Dh) {
    if (!heads_args_ok(G, rotate, cos, sin, rd, layout, B, T, H, Dh)) return RP_EINVAL;
    const int64_t rows = B * T, HD = H * Dh;
    if (rows == 0 || HD == 0) return RP_OK;
    const int64_t P = rd / 2;
    RP_OPS_PFOR(rows * G * HD >= RP_OPS_PAR_MIN)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t bi = row / T, t = row % T;
        for (int64_t g = 0; g < G; g++) {
            float *yr = y + (row * G + g) * HD;
            if (!srcs[g]) {
                memset(yr, 0, (size_t)HD * sizeof(float));
                continue;
            }
            for (int64_t h = 0; h < H; h++) {
                const float *s = srcs[g] + ((bi * H + h) * T + t) * Dh;
                if (g < rotate)
                    rp_rotary_row(s, yr + h * Dh, cos + t * P, sin + t * P, NULL, Dh, P, layout, -1.0f);
                else
                    memcpy(yr + h * Dh, s, (size_t)Dh * sizeof(float));
            }
        }
    }
    return RP_OK;
}
