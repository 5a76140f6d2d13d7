/* Elementwise arithmetic with last-axis/scalar broadcast, and activations. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* One row: out[j] = op(a[j], b[j]) for j < m. The op switch sits outside the
 * loop so each branch vectorises. */
static void binary_row(int op, const float *a, const float *b, float *out, int64_t m) {
    switch (op) {
    case RP_OP_ADD:
        for (int64_t j = 0; j < m; j++) out[j] = a[j] + b[j];
        break;
    case RP_OP_SUB:
        for (int64_t j = 0; j < m; j++) out[j] = a[j] - b[j];
        break;
    case RP_OP_MUL:
        for (int64_t j = 0; j < m; j++) out[j] = a[j] * b[j];
        break;
    case RP_OP_DIV:
        for (int64_t j = 0; j < m; j++) out[j] = a[j] / b[j];
        break;
    case RP_OP_RSUB:
        for (int64_t j = 0; j < m; j++) out[j] = b[j] - a[j];
        break;
    default:
        for (int64_t j = 0; j < m; j++) out[j] = b[j] / a[j];
        break;
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
            case RP_OP_ADD:
                for (int64_t i = lo; i < hi; i++) out[i] = a[i] + s;
                break;
            case RP_OP_SUB:
                for (int64_t i = lo; i < hi; i++) out[i] = a[i] - s;
                break;
            case RP_OP_MUL:
                for (int64_t i = lo; i < hi; i++) out[i] = a[i] * s;
                break;
            case RP_OP_DIV:
                for (int64_t i = lo; i < hi; i++) out[i] = a[i] / s;
                break;
            case RP_OP_RSUB:
                for (int64_t i = lo; i < hi; i++) out[i] = s - a[i];
                break;
            default:
                for (int64_t i = lo; i < hi; i++) out[i] = s / a[i];
                break;
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

/* The two partial derivatives of out = op(a, b) times g, as expressions in
 * av, bv, gv; each loop below switches on op outside the loop so every case
 * is a plain loop the compiler vectorises. */
#define GA_ADD gv
#define GB_ADD gv
#define GA_SUB gv
#define GB_SUB (-gv)
#define GA_MUL (gv * bv)
#define GB_MUL (gv * av)
#define GA_DIV (gv / bv)
/* torch's order, (a / b) / b: b * b underflows for |b| < 1e-19 (and
 * g * a overflows) where the result is still a float */
#define GB_DIV (-gv * ((av / bv) / bv))
#define GA_RSUB (-gv)
#define GB_RSUB gv
#define GA_RDIV (-gv * ((bv / av) / av)) /* out = b / a */
#define GB_RDIV (gv / av)

#define OP_CASES(BODY)                 \
    switch (op) {                      \
    case RP_OP_ADD: BODY(ADD) break;   \
    case RP_OP_SUB: BODY(SUB) break;   \
    case RP_OP_MUL: BODY(MUL) break;   \
    case RP_OP_DIV: BODY(DIV) break;   \
    case RP_OP_RSUB: BODY(RSUB) break; \
    default: BODY(RDIV) break;         \
    }

/* da[j] = dOut/da * g over m elements; b is b[j] (bstep 1) or b[0] (bstep 0). */
static void grad_a_span(int op, const float *a, const float *b, int64_t bstep, const float *g, float *da, int64_t m) {
#define BODY(OP)                                             \
    for (int64_t j = 0; j < m; j++) {                        \
        const float av = a[j], bv = b[j * bstep], gv = g[j]; \
        (void)av;                                            \
        (void)bv;                                            \
        da[j] = GA_##OP;                                     \
    }
    OP_CASES(BODY)
#undef BODY
}

/* acc[j] += dOut/db * g (one row of a vector b, in double). */
static void grad_b_row(int op, const float *a, const float *b, const float *g, double *acc, int64_t m) {
#define BODY(OP)                                     \
    for (int64_t j = 0; j < m; j++) {                \
        const float av = a[j], bv = b[j], gv = g[j]; \
        (void)av;                                    \
        (void)bv;                                    \
        acc[j] += (double)(GB_##OP);                 \
    }
    OP_CASES(BODY)
#undef BODY
}

/* sum over m elements of dOut/db * g for a scalar b, in double. */
static double grad_b_scalar(int op, const float *a, float b, const float *g, int64_t m) {
    double acc = 0.0;
    const float bv = b;
    (void)bv;
#define BODY(OP)                          \
    RP_OPS_SIMD_SUM(acc)                  \
    for (int64_t j = 0; j < m; j++) {     \
        const float av = a[j], gv = g[j]; \
        (void)av;                         \
        acc += (double)(GB_##OP);         \
    }
    OP_CASES(BODY)
#undef BODY
    return acc;
}

/* da: (n) = dOut/da * grad; db: (nb) = dOut/db * grad summed over the rows
 * b was broadcast over. Sums go through min(rows, RP_OPS_NCHUNK) fixed chunks
 * (never the thread count), each in double, then added in chunk order. */
int rp_ops_binary_bwd(int op, const float *a, const float *b, const float *grad, float *da, float *db, int64_t n,
                      int64_t nb) {
    if (op < RP_OP_ADD || op > RP_OP_RDIV || n < 0 || nb < 0) return RP_EINVAL;
    if (n == 0) {
        if (db) memset(db, 0, (size_t)nb * sizeof(float));
        return RP_OK;
    }
    if (nb <= 0 || n % nb != 0) return RP_EINVAL;
    if (nb == n) {
        /* same shape: elementwise, no reduction (db is "a" of the reversed op) */
        static const int swapped[] = {RP_OP_ADD, RP_OP_RSUB, RP_OP_MUL, RP_OP_RDIV, RP_OP_SUB, RP_OP_DIV};
        const int64_t nblk = (n + FLAT_BLOCK - 1) / FLAT_BLOCK;
        RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
        for (int64_t k = 0; k < nblk; k++) {
            int64_t lo = k * FLAT_BLOCK, len = n - lo < FLAT_BLOCK ? n - lo : FLAT_BLOCK;
            if (da) grad_a_span(op, a + lo, b + lo, 1, grad + lo, da + lo, len);
            if (db) grad_a_span(swapped[op], b + lo, a + lo, 1, grad + lo, db + lo, len);
        }
        return RP_OK;
    }
    if (nb == 1) {
        const int64_t nch = n < RP_OPS_NCHUNK ? n : RP_OPS_NCHUNK;
        double part[RP_OPS_NCHUNK];
        RP_OPS_PFOR(n >= RP_OPS_PAR_MIN)
        for (int64_t c = 0; c < nch; c++) {
            int64_t lo, hi;
            rp_chunk(n, nch, c, &lo, &hi);
            if (da) grad_a_span(op, a + lo, b, 0, grad + lo, da + lo, hi - lo);
            if (db) part[c] = grad_b_scalar(op, a + lo, b[0], grad + lo, hi - lo);
        }
        if (db) {
            double s = 0.0;
            for (int64_t c = 0; c < nch; c++) s += part[c];
            db[0] = (float)s;
        }
        return RP_OK;
    }
    /* b a vector over the last axis: rows of nb */
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
        for (int64_t r = lo; r < hi; r++) {
            if (da) grad_a_span(op, a + r * nb, b, 1, grad + r * nb, da + r * nb, nb);
            if (db) grad_b_row(op, a + r * nb, b, grad + r * nb, part + c * nb, nb);
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
    RP_OPS_PFOR(n >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t k = 0; k < nblk; k++) {
        int64_t lo = k * FLAT_BLOCK, len = n - lo < FLAT_BLOCK ? n - lo : FLAT_BLOCK;
        rp_ops_act_fwd_span(simd, kind, x + lo, y + lo, len);
    }
    return RP_OK;
}

int rp_ops_act_form(int form, int kind, const float *x, const float *grad, float *y, int64_t n) {
    if (n < 0 || kind < RP_ACT_GELU_TANH || kind > RP_ACT_SILU) return RP_EINVAL;
    if (!rp_exp_form_available(form)) return RP_ENOSIMD;
    rp_ops_act_span_form(form, kind, x, grad, y, n);
    return RP_OK;
}

int rp_ops_act_bwd(int kind, const float *x, const float *grad, float *dx, int64_t n) {
    if (n < 0 || kind < RP_ACT_GELU_TANH || kind > RP_ACT_SILU) return RP_EINVAL;
    const int simd = rp_simd_enabled();
    const int64_t nblk = (n + FLAT_BLOCK - 1) / FLAT_BLOCK;
    RP_OPS_PFOR(n >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t k = 0; k < nblk; k++) {
        int64_t lo = k * FLAT_BLOCK, len = n - lo < FLAT_BLOCK ? n - lo : FLAT_BLOCK;
        rp_ops_act_bwd_span(simd, kind, x + lo, grad + lo, dx + lo, len);
    }
    return RP_OK;
}
