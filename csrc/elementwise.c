/* Elementwise arithmetic with last-axis/scalar broadcast, and activations. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* One row: out[j] = op(a[j], b[j]) for j < m. The op switch sits outside the
 * loop so each branch vectorises. */
static void binary_row(int op, const float *a, const float *b, float *out, int64_t m) {
    switch (op) {
    case RP_OP_ADD: for (int64_t j = 0; j < m; j++) out[j] = a[j] + b[j]; break;
    case RP_OP_SUB: for (int64_t j = 0; j < m; j++) out[j] = a[j] - b[j]; break;
    case RP_OP_MUL: for (int64_t j = 0; j < m; j++) out[j] = a[j] * b[j]; break;
    case RP_OP_DIV: for (int64_t j = 0; j < m; j++) out[j] = a[j] / b[j]; break;
    case RP_OP_RSUB: for (int64_t j = 0; j < m; j++) out[j] = b[j] - a[j]; break;
    default: for (int64_t j = 0; j < m; j++) out[j] = b[j] / a[j]; break;
    }
}

/* Blocks of this many floats are the unit of parallel work for flat loops. */
#define FLAT_BLOCK 4096

/* a, out: (n); b: (nb), nb == n, nb == 1 or a divisor of n (rows of nb). */
int rp_ops_binary_fwd(int op, const float *a, const float *b, float *out, int64_t n, int64_t nb) {
    if (op < RP_OP_ADD || op > RP_OP_RDIV || n < 0 || nb < 0) return RP_EINVAL;
    if (n == 0) return RP_OK;
    if (nb <= 0 || n % nb != 0) return RP_EINVAL;
    if (nb == 1) {
        const float s = b[0];
        int64_t nblk = (n + FLAT_BLOCK - 1) / FLAT_BLOCK;
        RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
        for (int64_t k = 0; k < nblk; k++) {
            int64_t lo = k * FLAT_BLOCK, hi = lo + FLAT_BLOCK < n ? lo + FLAT_BLOCK : n;
            switch (op) {
            case RP_OP_ADD: for (int64_t i = lo; i < hi; i++) out[i] = a[i] + s; break;
            case RP_OP_SUB: for (int64_t i = lo; i < hi; i++) out[i] = a[i] - s; break;
            case RP_OP_MUL: for (int64_t i = lo; i < hi; i++) out[i] = a[i] * s; break;
            case RP_OP_DIV: for (int64_t i = lo; i < hi; i++) out[i] = a[i] / s; break;
            case RP_OP_RSUB: for (int64_t i = lo; i < hi; i++) out[i] = s - a[i]; break;
            default: for (int64_t i = lo; i < hi; i++) out[i] = s / a[i]; break;
            }
        }
    } else if (nb == n) {
        int64_t nblk = (n + FLAT_BLOCK - 1) / FLAT_BLOCK;
        RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
        for (int64_t k = 0; k < nblk; k++) {
            int64_t lo = k * FLAT_BLOCK, hi = lo + FLAT_BLOCK < n ? lo + FLAT_BLOCK : n;
            binary_row(op, a + lo, b + lo, out + lo, hi - lo);
        }
    } else {
        int64_t rows = n / nb;
        RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) binary_row(op, a + r * nb, b, out + r * nb, nb);
    }
    return RP_OK;
}

/* Partial derivatives of out = op(a, b) at one element. */
static inline void binop_grad(int op, float a, float b, float g, float *ga, float *gb) {
    switch (op) {
    case RP_OP_ADD: *ga = g; *gb = g; break;
    case RP_OP_SUB: *ga = g; *gb = -g; break;
    case RP_OP_MUL: *ga = g * b; *gb = g * a; break;
    case RP_OP_DIV: *ga = g / b; *gb = -g * a / (b * b); break;
    case RP_OP_RSUB: *ga = -g; *gb = g; break;
    default: *ga = -g * b / (a * a); *gb = g / a; break; /* out = b / a */
    }
}

int rp_ops_binary_bwd(int op, const float *a, const float *b, const float *grad, float *da, float *db,
                      int64_t n, int64_t nb) {
    if (op < RP_OP_ADD || op > RP_OP_RDIV || n < 0 || nb < 0) return RP_EINVAL;
    if (n == 0) {
        if (db) memset(db, 0, (size_t)nb * sizeof(float));
        return RP_OK;
    }
    if (nb <= 0 || n % nb != 0) return RP_EINVAL;
    if (nb == n) {
        /* same shape: no reduction */
        RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            float ga, gb;
            binop_grad(op, a[i], b[i], grad[i], &ga, &gb);
            if (da) da[i] = ga;
            if (db) db[i] = gb;
        }
        return RP_OK;
    }
    /* b broadcast over rows (nb == 1 is a row of one element): db is a sum over
     * rows, done in RP_OPS_NCHUNK fixed chunks of rows, each summed in double,
     * then the chunks are added in order. */
    const int64_t rows = n / nb;
    const int64_t nch = rows < RP_OPS_NCHUNK ? rows : RP_OPS_NCHUNK;
    double *part = NULL;
    if (db) {
        part = (double *)rp_calloc((size_t)(nch * nb), sizeof(double));
        if (!part) return RP_ENOMEM;
    }
    RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(rows, nch, c, &lo, &hi);
        double *pc = part ? part + c * nb : NULL;
        for (int64_t r = lo; r < hi; r++) {
            const float *ar = a + r * nb, *gr = grad + r * nb;
            float *dar = da ? da + r * nb : NULL;
            for (int64_t j = 0; j < nb; j++) {
                float ga, gb;
                binop_grad(op, ar[j], b[j], gr[j], &ga, &gb);
                if (dar) dar[j] = ga;
                if (pc) pc[j] += (double)gb;
            }
        }
    }
    if (db) {
        for (int64_t j = 0; j < nb; j++) {
            double s = 0.0;
            for (int64_t c = 0; c < nch; c++) s += part[c * nb + j];
            db[j] = (float)s;
        }
        rp_free(part);
    }
    return RP_OK;
}

int rp_ops_scale(const float *x, float alpha, float *out, int64_t n) {
    if (n < 0) return RP_EINVAL;
    RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = alpha * x[i];
    return RP_OK;
}

/* out (D) = column sums of g (N, D): fixed chunks of rows, summed in order. */
int rp_ops_sum_rows(const float *g, float *out, int64_t N, int64_t D) {
    if (N < 0 || D < 0) return RP_EINVAL;
    if (D == 0) return RP_OK;
    memset(out, 0, (size_t)D * sizeof(float));
    if (N == 0) return RP_OK;
    const int64_t nch = N < RP_OPS_NCHUNK ? N : RP_OPS_NCHUNK;
    float *part = (float *)rp_calloc((size_t)(nch * D), sizeof(float));
    if (!part) return RP_ENOMEM;
    RP_OPS_PFOR(N * D >= RP_OPS_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        int64_t lo, hi;
        rp_chunk(N, nch, c, &lo, &hi);
        float *pc = part + c * D;
        for (int64_t r = lo; r < hi; r++)
            for (int64_t j = 0; j < D; j++) pc[j] += g[r * D + j];
    }
    for (int64_t c = 0; c < nch; c++)
        for (int64_t j = 0; j < D; j++) out[j] += part[c * D + j];
    rp_free(part);
    return RP_OK;
}

/* ---- activations ------------------------------------------------------
 * Parallel over fixed blocks of elements; each block is one span call. */

int rp_ops_act_fwd(int kind, const float *x, float *y, int64_t n) {
    if (n < 0 || kind < RP_ACT_GELU_TANH || kind > RP_ACT_SILU) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    const int64_t nblk = (n + FLAT_BLOCK - 1) / FLAT_BLOCK;
    RP_OPS_PFOR(n >= 2 * FLAT_BLOCK)
    for (int64_t k = 0; k < nblk; k++) {
        int64_t lo = k * FLAT_BLOCK, len = n - lo < FLAT_BLOCK ? n - lo : FLAT_BLOCK;
        rp_ops_act_fwd_span(simd, kind, x + lo, y + lo, len);
    }
    return RP_OK;
}

int rp_ops_act_bwd(int kind, const float *x, const float *grad, float *dx, int64_t n) {
    if (n < 0 || kind < RP_ACT_GELU_TANH || kind > RP_ACT_SILU) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    const int64_t nblk = (n + FLAT_BLOCK - 1) / FLAT_BLOCK;
    RP_OPS_PFOR(n >= 2 * FLAT_BLOCK)
    for (int64_t k = 0; k < nblk; k++) {
        int64_t lo = k * FLAT_BLOCK, len = n - lo < FLAT_BLOCK ? n - lo : FLAT_BLOCK;
        rp_ops_act_bwd_span(simd, kind, x + lo, grad + lo, dx + lo, len);
    }
    return RP_OK;
}
