/* Fused (FlashAttention-2 style) attention with every position channel.
 *
 * Forward: query tiles x key tiles with an online softmax; saves out and
 * lse (one float per row). Backward: recomputes each tile's probabilities
 * from lse, D_i = rowsum(dO_i * O_i), dS = P * (dP - D).
 *
 * Work partition (the thread count never decides how a float sum is split):
 *  - forward: items (b, h, query block), each writes its own rows;
 *  - backward: items (b, h, chunk) (or (h) with every b inside when a
 *    batch-shared bias_full gradient is wanted). With B*H >= 8 there is one
 *    chunk per head; with fewer heads each head's key blocks are dealt to
 *    NC = ceil(8 / (B*H)) interleaved chunks (kb = c mod NC), a function of the
 *    shape, never of the thread count. An item walks its key blocks (outer) and
 *    the query blocks that see them (inner): it owns dK/dV of those blocks;
 *    dQ/dqr rows accumulate in key-block order, directly when NC = 1, else in a
 *    per-chunk partial. Gradients of tables shared between items (dbias_vec,
 *    drelk, drelq, drelv) go to one partial buffer per item; all partials are
 *    summed afterwards in item order. A destination fed by exactly one item is
 *    written directly.
 *
 * Kernels: tile products by a strided-A micro-kernel (portable C, AVX2/FMA, or
 * AVX-512F following the GEMM area's kernel choice); exp is simd_math.h's, the
 * same bits in every form and the same as the materialised path's.
 *
 * Extra memory: per thread O((BQ + BK) * (D + Dv) + Tq) scratch; forward: the
 * packed keys (like k); backward: per item O(R*D) for shared relative tables
 * (R = table length) and, when NC > 1, NC dq partials of (Tq, D) per head;
 * never O(Tq*Tk).
 *
 * Position channels inside a tile (rows ia0.., keys j0..): a relative table
 * touches at most BQ+BK-1 consecutive rows r0..r0+nr-1. c2p: QR = qr_tile *
 * rel[r0..]^T (BQ x nr) then gathered along the relative index; p2c the same
 * with the keys; relv: P is bucketed per relative index (BQ x nr) and
 * multiplied by rel[r0..]. Backward uses the same buckets for dS.
 */
#include "attention.h"
#include "gemm.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

#define FZ_BQ 64
#define FZ_BK 64
#define FZ_LDR (FZ_BQ + FZ_BK) /* row stride of relative-bucket buffers (nr <= BQ+BK-1) */
/* Backward: with fewer than this many (b, h) heads, key blocks are split into chunks. */
#define FZ_MIN_ITEMS 8

/* ------------------------------------------------------------------ kernels */

/* C (M x N, ldc) = [C +] A * B with A(i, k) = A[i*rsa + k*csa] and B (K x N, ldb)
 * row-major. */
typedef void (*fz_gemm_fn)(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                           int64_t ldb, float *C, int64_t ldc, int acc);
/* x[j] = exp(x[j] - m) for j < n; returns the sum of the new x. */
typedef float (*fz_expsub_fn)(float *x, int64_t n, float m);
/* max of x[0..n) (-INFINITY for n = 0). */
typedef float (*fz_rowmax_fn)(const float *x, int64_t n);
/* dst (cols x n, ld ldd) = src (n x cols, ld lds) transposed. */
typedef void (*fz_pack_fn)(const float *src, int64_t n, int64_t cols, int64_t lds, float *dst, int64_t ldd);
/* s[j] *= scale */
typedef void (*fz_scale_fn)(float *s, int64_t n, float scale);
/* p[j] = (sc * s[j]) * (p[j] - di) */
typedef void (*fz_ds_fn)(float *p, const float *s, int64_t n, float sc, float di);

#if RP_HAVE_X86_TU
int rp_fused_have_avx512(void);
float rp_fused_expsub_avx512(float *x, int64_t n, float m);
void rp_fused_gemm_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                          int64_t ldb, float *C, int64_t ldc, int acc);
void rp_fused_gemm_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                        int64_t ldb, float *C, int64_t ldc, int acc);
float rp_fused_expsub_avx2(float *x, int64_t n, float m);
float rp_fused_rowmax_avx2(const float *x, int64_t n);
int rp_fused_nonfinite_run_avx2(float *x, int64_t n, void *ctx);
void rp_fused_pack_t_avx2(const float *src, int64_t n, int64_t cols, int64_t lds, float *dst, int64_t ldd);
void rp_fused_scale_avx2(float *s, int64_t n, float scale);
void rp_fused_ds_avx2(float *p, const float *s, int64_t n, float sc, float di);
#endif

static void gemm_portable(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                          int64_t ldb, float *C, int64_t ldc, int acc) {
    for (int64_t i = 0; i < M; i++) {
        float *restrict c = C + i * ldc;
        if (!acc)
            for (int64_t j = 0; j < N; j++) c[j] = 0.0f;
        for (int64_t kk = 0; kk < K; kk++) {
            const float aik = A[i * rsa + kk * csa];
            const float *restrict b = B + kk * ldb;
            for (int64_t j = 0; j < N; j++) c[j] += aik * b[j];
        }
    }
}

static float expsub_portable(float *x, int64_t n, float m) {
    float s = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float e = rp_exp(x[j] - m);
        x[j] = e;
        s += e;
    }
    return s;
}

/* NaN sticks: a NaN logit must make the row NaN, never be skipped */
static float rowmax_portable(const float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = (x[j] > mx || x[j] != x[j]) ? x[j] : mx;
    return mx;
}

/* C (M x N, ldc) [+]= A * B over the pairs that take part: the term
 * A(i, k) B(k, :) is skipped where P(i, k) = P[i*rsp + k*csp] is 0. The
 * careful path for non-finite operands (a masked pair's 0 weight must not
 * meet a NaN); portable, and used only when some input is non-finite. */
static void gemm_present(int64_t M, int64_t N, int64_t K, const float *A, int64_t rsa, int64_t csa, const float *B,
                         int64_t ldb, float *C, int64_t ldc, int acc, const float *P, int64_t rsp, int64_t csp) {
    for (int64_t i = 0; i < M; i++) {
        float *restrict c = C + i * ldc;
        if (!acc)
            for (int64_t j = 0; j < N; j++) c[j] = 0.0f;
        for (int64_t kk = 0; kk < K; kk++) {
            if (P[i * rsp + kk * csp] == 0.0f) continue;
            const float aik = A[i * rsa + kk * csa];
            const float *restrict b = B + kk * ldb;
            for (int64_t j = 0; j < N; j++) c[j] += aik * b[j];
        }
    }
}

/* dst (cols x n, ld ldd) = src (n x cols, ld lds) transposed: pure data movement,
 * so every form (this loop, the AVX2 8 x 8 register blocks) gives the same values. */
static void pack_portable(const float *restrict src, int64_t n, int64_t cols, int64_t lds, float *restrict dst,
                          int64_t ldd) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

static void scale_portable(float *s, int64_t n, float scale) {
    for (int64_t j = 0; j < n; j++) s[j] *= scale;
}

static void ds_portable(float *p, const float *s, int64_t n, float sc, float di) {
    for (int64_t j = 0; j < n; j++) p[j] = sc * s[j] * (p[j] - di);
}

typedef struct {
    fz_gemm_fn gemm;
    fz_expsub_fn expsub;
    fz_rowmax_fn rowmax;
    fz_pack_fn pack;
    fz_scale_fn scale;
    fz_ds_fn ds;
} fz_kernels;

static fz_kernels fz_pick(void) {
    fz_kernels k = {gemm_portable, expsub_portable, rowmax_portable, pack_portable, scale_portable, ds_portable};
#if RP_HAVE_X86_TU
    if (rp_simd_enabled()) {
        /* the tile products follow the GEMM area's kernel choice (AVX-512 on
         * CPUs that have it, unless a test or benchmark picked another) */
        const char *gk = rp_gemm_kernel_name();
        k.gemm = rp_fused_gemm_avx2;
        k.expsub = rp_fused_expsub_avx2;
        k.rowmax = rp_fused_rowmax_avx2;
        k.pack = rp_fused_pack_t_avx2;
        k.scale = rp_fused_scale_avx2;
        k.ds = rp_fused_ds_avx2;
        if (strcmp(gk, "avx512") == 0 && rp_fused_have_avx512()) {
            k.gemm = rp_fused_gemm_avx512;
            k.expsub = rp_fused_expsub_avx512;
        }
        if (strcmp(gk, "portable") == 0) k.gemm = gemm_portable;
    }
#endif
    return k;
}

const char *rp_attn_fused_kernel_name(void) {
    fz_kernels k = fz_pick();
#if RP_HAVE_X86_TU
    if (k.gemm == rp_fused_gemm_avx512) return "avx512";
    if (k.expsub == rp_fused_expsub_avx2) return "avx2";
#endif
    (void)k;
    return "portable";
}

/* ------------------------------------------------------------ tile helpers */

/* Rows r0..r0+*nr-1 of a relative table touched by queries ia0..ia0+mq-1 and
 * keys j0..j0+nk-1. */
static void rel_range(rp_relidx ix, int64_t ia0, int64_t mq, int64_t j0, int64_t nk, int64_t *r0, int64_t *nr) {
    int64_t dmin = ia0 - (j0 + nk - 1), dmax = ia0 + mq - 1 - j0;
    int64_t u0 = ix.sign > 0 ? dmin + ix.off : -dmax + ix.off;
    int64_t u1 = ix.sign > 0 ? dmax + ix.off : -dmin + ix.off;
    u0 = u0 < 0 ? 0 : (u0 >= ix.R ? ix.R - 1 : u0);
    u1 = u1 < 0 ? 0 : (u1 >= ix.R ? ix.R - 1 : u1);
    *r0 = u0;
    *nr = u1 - u0 + 1;
}

/* Keys j (0..nk-1 of a tile starting at j0) of query ia: u(j) = u0 - sign*j is
 * inside [0, R) for j in [*jlo, *jhi); below jlo and from jhi on it is clamped
 * to the constant ends *ulo (j < jlo) and *uhi (j >= jhi). */
static inline void rel_row(rp_relidx ix, int64_t ia, int64_t j0, int64_t nk, int64_t *u0, int64_t *jlo, int64_t *jhi,
                           int64_t *ulo, int64_t *uhi) {
    const int64_t u = ix.sign * (ia - j0) + ix.off;
    int64_t lo, hi;
    if (ix.sign > 0) {
        lo = u - (ix.R - 1);
        hi = u + 1;
        *ulo = ix.R - 1;
        *uhi = 0;
    } else {
        lo = -u;
        hi = ix.R - u;
        *ulo = 0;
        *uhi = ix.R - 1;
    }
    lo = lo < 0 ? 0 : (lo > nk ? nk : lo);
    hi = hi < lo ? lo : (hi > nk ? nk : hi);
    *u0 = u;
    *jlo = lo;
    *jhi = hi;
}

/* s[j] += t[(u(j) - r0) + j*tsj] for j < nk (tsj = 0: one row of t). */
static void rel_gather_add(rp_relidx ix, int64_t ia, int64_t j0, int64_t nk, int64_t r0, const float *t, int64_t tsj,
                           float *restrict s) {
    int64_t u0, jlo, jhi, ulo, uhi;
    rel_row(ix, ia, j0, nk, &u0, &jlo, &jhi, &ulo, &uhi);
    for (int64_t j = 0; j < jlo; j++) s[j] += t[ulo - r0 + j * tsj];
    if (jhi > jlo) {
        if (tsj == 0 && ix.sign > 0) {
            const float *restrict tr = t + (u0 - jlo - r0); /* u(j) - r0 = (u0 - jlo - r0) - (j - jlo) */
            for (int64_t j = jlo; j < jhi; j++) s[j] += tr[jlo - j];
        } else if (tsj == 0) {
            const float *restrict tr = t + (u0 + jlo - r0);
            for (int64_t j = jlo; j < jhi; j++) s[j] += tr[j - jlo];
        } else {
            const int64_t step = tsj - ix.sign;
            const float *tr = t + (u0 - r0 - ix.sign * jlo + jlo * tsj);
            for (int64_t j = jlo; j < jhi; j++, tr += step) s[j] += *tr;
        }
    }
    for (int64_t j = jhi; j < nk; j++) s[j] += t[uhi - r0 + j * tsj];
}

/* t[(u(j) - r0) + j*tsj] += s[j] for j < nk (tsj = 0: one row of t). */
static void rel_scatter_add(rp_relidx ix, int64_t ia, int64_t j0, int64_t nk, int64_t r0, float *t, int64_t tsj,
                            const float *restrict s) {
    int64_t u0, jlo, jhi, ulo, uhi;
    rel_row(ix, ia, j0, nk, &u0, &jlo, &jhi, &ulo, &uhi);
    if (tsj == 0) {
        float elo = 0.0f, ehi = 0.0f;
        for (int64_t j = 0; j < jlo; j++) elo += s[j];
        for (int64_t j = jhi; j < nk; j++) ehi += s[j];
        if (jlo > 0) t[ulo - r0] += elo;
        if (jhi < nk) t[uhi - r0] += ehi;
        if (jhi > jlo && ix.sign > 0) {
            float *restrict tr = t + (u0 - jlo - r0);
            for (int64_t j = jlo; j < jhi; j++) tr[jlo - j] += s[j];
        } else if (jhi > jlo) {
            float *restrict tr = t + (u0 + jlo - r0);
            for (int64_t j = jlo; j < jhi; j++) tr[j - jlo] += s[j];
        }
        return;
    }
    for (int64_t j = 0; j < jlo; j++) t[ulo - r0 + j * tsj] += s[j];
    if (jhi > jlo) {
        const int64_t step = tsj - ix.sign;
        float *tr = t + (u0 - r0 - ix.sign * jlo + jlo * tsj);
        for (int64_t j = jlo; j < jhi; j++, tr += step) *tr += s[j];
    }
    for (int64_t j = jhi; j < nk; j++) t[uhi - r0 + j * tsj] += s[j];
}

/* rp_any_nonfinite_rows, 8 floats a step where the SIMD kernels are in use (the same answer) */
static int fz_any_nonfinite(const float *x, rp_attn_rows r, int64_t B, int64_t H, int64_t T, int64_t D) {
    rp_attn_run_fn run = rp_nonfinite_run;
#if RP_HAVE_X86_TU
    if (rp_simd_enabled()) run = rp_fused_nonfinite_run_avx2;
#endif
    return x ? rp_attn_rows_runs((float *)x, r, B, H, T, D, run, NULL) : 0; /* runs that only read */
}

static int fz_any_nonfinite_dense(const float *x, int64_t n) {
    const rp_attn_rows dense = {0, 0, 0};
    return fz_any_nonfinite(x, dense, 1, 1, 1, n);
}

/* Per-call constants. */
typedef struct {
    const rp_attn *a;
    fz_kernels kr;
    int64_t D, Dv, nkb, nqb;
    int has_c2p, has_p2c, has_relv, has_bias, has_pwl;
    /* some operand of a product with pair weights is NaN or infinite: those
     * products skip masked pairs explicitly (gemm_present) */
    int careful;
    /* row layouts of q, k, v (attention.h), the dense ones filled in */
    rp_attn_rows qrw, krw, vrw;
    /* the piecewise-linear table (pwl_tab_row): x, g (Tq, Tk) and the terms
     * (Hp, Tq, Tk); NULL when the tiles form them */
    const float *pt_x, *pt_t;
    const int32_t *pt_g;
} fz_ctx;

/* Offset (floats) of row (b, h, i) in layout r. */
static inline int64_t fz_at(rp_attn_rows r, int64_t b, int64_t h, int64_t i) { return b * r.sb + h * r.sh + i * r.si; }

/* Per-thread scratch. */
typedef struct {
    float *Kt;    /* D x BK    packed keys (transposed) */
    float *Vt;    /* Dv x BK   packed values (transposed), backward */
    float *S;     /* BQ x BK   logits, then P */
    float *dP;    /* BQ x BK   dP, then dS */
    float *RT;    /* max(D,Dv) x LDR  packed relative rows (transposed) */
    float *QR;    /* BQ x LDR  qr . relk, later dO . relv */
    float *KR;    /* BK x LDR  k . relq */
    float *PR;    /* BQ x LDR  P bucketed per relv index */
    float *DQR;   /* BQ x LDR  dS bucketed per relk index */
    float *DKR;   /* BK x LDR  dS bucketed per relq index */
    float *O;     /* BQ x Dv   output accumulator */
    float *m, *l; /* BQ */
    float *X;     /* BQ x BK   pwl: x of each pair */
    int32_t *SG;  /* BQ x BK   pwl: segment of each pair */
    float *PRES;  /* BQ x BK   careful path: 1 where the pair takes part, else 0 */
    float *CNTQ;  /* BQ x LDR  careful path: pairs per (query, relative row) */
    float *CNTK;  /* BK x LDR  careful path: pairs per (key, relative row) */
    float *Dvec;  /* Tq */
} fz_scr;

static size_t fz_scr_floats(int64_t D, int64_t Dv, int64_t Tq) {
    int64_t DD = D > Dv ? D : Dv;
    return (size_t)(D * FZ_BK + Dv * FZ_BK + 5 * FZ_BQ * FZ_BK + DD * FZ_LDR + 4 * FZ_BQ * FZ_LDR + FZ_BK * FZ_LDR * 3 +
                    FZ_BQ * Dv + 2 * FZ_BQ + Tq + 20 * 16);
}

static fz_scr fz_scr_at(float *base, int64_t D, int64_t Dv) {
    int64_t DD = D > Dv ? D : Dv;
    fz_scr w;
    float *p = base;
#define FZ_TAKE(name, n)                                 \
    do {                                                 \
        w.name = p;                                      \
        p += (((int64_t)(n)) + 15) / 16 * 16; /* 64 B */ \
    } while (0)
    FZ_TAKE(Kt, D * FZ_BK);
    FZ_TAKE(Vt, Dv * FZ_BK);
    FZ_TAKE(S, FZ_BQ * FZ_BK);
    FZ_TAKE(dP, FZ_BQ * FZ_BK);
    FZ_TAKE(RT, DD * FZ_LDR);
    FZ_TAKE(QR, FZ_BQ * FZ_LDR);
    FZ_TAKE(KR, FZ_BK * FZ_LDR);
    FZ_TAKE(PR, FZ_BQ * FZ_LDR);
    FZ_TAKE(DQR, FZ_BQ * FZ_LDR);
    FZ_TAKE(DKR, FZ_BK * FZ_LDR);
    FZ_TAKE(O, FZ_BQ * Dv);
    FZ_TAKE(m, FZ_BQ);
    FZ_TAKE(l, FZ_BQ);
    FZ_TAKE(X, FZ_BQ * FZ_BK);
    w.SG = (int32_t *)(void *)p; /* int32 and float have the same size */
    p += FZ_BQ * FZ_BK;
    FZ_TAKE(PRES, FZ_BQ * FZ_BK);
    FZ_TAKE(CNTQ, FZ_BQ * FZ_LDR);
    FZ_TAKE(CNTK, FZ_BK * FZ_LDR);
    w.Dvec = p;
#undef FZ_TAKE
    return w;
}

/* x[j] = u[idx] * w[i] of query i (absolute ia) and keys j0..j0+nk-1, and
 * g[j] = its segment, #{bp <= x[j]}. The segments of a row whose x falls
 * (FIRE's) are one walk down the breakpoints; otherwise they are counted
 * breakpoint by breakpoint over the whole row (a vector compare per 8 keys)
 * rather than searched key by key. */
static void pwl_x_seg(const rp_attn *a, int64_t ia, int64_t i, int64_t j0, int64_t nk, float *restrict x,
                      int32_t *restrict g) {
    const rp_relidx ix = a->pwl_ix;
    const float wi = a->pwl_w[i];
    const float *u = a->pwl_u;
    const int64_t u0 = ix.sign * (ia - j0) + ix.off;
    for (int64_t j = 0; j < nk; j++) {
        int64_t n = u0 - ix.sign * j;
        n = n < 0 ? 0 : (n >= ix.R ? ix.R - 1 : n);
        x[j] = u[n] * wi;
    }
    const int64_t nbp = a->pwl_S - 1;
    /* FIRE's x falls along a row (psi grows with the distance): O(nk + nbp) */
    int falls = nk > 0;
    for (int64_t j = 1; j < nk; j++) falls &= x[j] <= x[j - 1];
    if (falls) {
        int64_t gg = rp_pwl_seg(a->pwl_bp, nbp, x[0]);
        for (int64_t j = 0; j < nk; j++) {
            while (gg > 0 && a->pwl_bp[gg - 1] > x[j]) gg--;
            g[j] = (int32_t)gg;
        }
    } else if (nbp <= 64) {
        for (int64_t j = 0; j < nk; j++) g[j] = 0;
        for (int64_t t = 0; t < nbp; t++) {
            const float b = a->pwl_bp[t];
            for (int64_t j = 0; j < nk; j++) g[j] += b <= x[j];
        }
    } else {
        for (int64_t j = 0; j < nk; j++) g[j] = (int32_t)rp_pwl_seg(a->pwl_bp, nbp, x[j]);
    }
}

/* The piecewise-linear term of query i and keys j0..j0+nk-1 of head h:
 * x and g as pwl_x_seg forms them (kept for the backward), then
 * s[j] += slope[g] x + icpt[g]. */
static void pwl_row(const rp_attn *a, int64_t h, int64_t ia, int64_t i, int64_t j0, int64_t nk, float *restrict x,
                    int32_t *restrict g, float *restrict s) {
    const float *sl = a->pwl_slope + (a->Hp == 1 ? 0 : h) * a->pwl_S;
    const float *ic = a->pwl_icpt + (a->Hp == 1 ? 0 : h) * a->pwl_S;
    pwl_x_seg(a, ia, i, j0, nk, x, g);
    for (int64_t j = 0; j < nk; j++) s[j] += sl[g[j]] * x[j] + ic[g[j]];
}

/* ---- the piecewise-linear channel's table --------------------------------
 * x, its segment and each head's term slope[g] x + icpt[g] depend on the
 * pair (i, j) and the head, never on the batch index, and x and g not on the
 * head either: pwl_row would form them again for every (b, h). When B * H >= 2
 * and (2 + Hp) Tq Tk floats fit in FZ_PWL_TAB_BYTES, a call forms them once,
 * row by row in parallel, before its items: x (Tq, Tk), g (Tq, Tk) and the
 * terms (Hp, Tq, Tk). A tile then adds its head's row of terms, and the
 * backward reads x and g from there. The same expressions in the same order,
 * so the same bits as pwl_row (this file is built without FMA contraction).
 * Above the bound (long sequences) nothing of size (Tq, Tk) is ever made. */
#define FZ_PWL_TAB_BYTES ((int64_t)16 << 20)

/* Floats of the table for this call, or 0 when the tiles form the terms themselves. */
static int64_t pwl_tab_floats(const rp_attn *a) {
    if (!a->pwl_u || a->B * a->H < 2 || a->Tq <= 0 || a->Tk <= 0) return 0;
    const int64_t per_pair = 2 + a->Hp;
    if (a->Tq > FZ_PWL_TAB_BYTES / (int64_t)sizeof(float) / per_pair / a->Tk) return 0;
    return per_pair * a->Tq * a->Tk;
}

/* Row i of the three parts of the table at tab (pwl_tab_floats(a) floats). */
static void pwl_tab_row(const rp_attn *a, float *tab, int64_t i) {
    const int64_t Tq = a->Tq, Tk = a->Tk;
    float *x = tab + i * Tk;
    int32_t *g = (int32_t *)(void *)(tab + Tq * Tk) + i * Tk; /* int32 and float have the same size */
    pwl_x_seg(a, a->q_offset + i, i, 0, Tk, x, g);
    for (int64_t hp = 0; hp < a->Hp; hp++) {
        const float *sl = a->pwl_slope + hp * a->pwl_S, *ic = a->pwl_icpt + hp * a->pwl_S;
        float *restrict t = tab + (2 + hp) * Tq * Tk + i * Tk;
        for (int64_t j = 0; j < Tk; j++) t[j] = sl[g[j]] * x[j] + ic[g[j]];
    }
}

/* First key (0..nk) of a tile starting at j0 that query ia may not see
 * causally: keys from there on are masked. */
static inline int64_t fz_causal_end(const rp_attn *a, int64_t ia, int64_t j0, int64_t nk) {
    if (!a->causal) return nk;
    int64_t e = ia - j0 + 1;
    return e < 0 ? 0 : (e > nk ? nk : e);
}

/* ---- causal tiles: products over the visible pairs only ----------------
 * In a tile the causal mask cuts (a diagonal tile), the query rows are taken
 * FZ_RB at a time, and block rows ia..ia_last see the keys j < e(ia_last).
 * - Products whose columns are keys (the logits S = Q K^T, dP = dO V^T)
 *   compute only those columns and set the rest to 0: every later use masks
 *   them (-inf logits, dS = 0).
 * - Products that sum over keys (O += P V, dQ += dS K) or over queries
 *   (dV += P^T dO, dK += dS^T Q) leave out the masked pairs, whose P and dS
 *   are exactly 0: adding a 0 term to an FMA chain that starts at +0 leaves
 *   it as it was, so the sums keep their bits.
 * About 3/8 of a 64 x 64 diagonal tile's work is saved. The careful path
 * (non-finite operands) keeps its whole-tile products (gemm_present). */
#define FZ_RB 16

/* How many of a row's logits the row max and the exp span read: the visible
 * keys rounded up to 16 (the exp spans' block: lanes and partial sums are
 * those of the whole row, whose further entries are -inf and add exactly 0) */
static inline int64_t fz_row_cols(const rp_attn *a, int64_t ia, int64_t j0, int64_t nk) {
    const int64_t e = (fz_causal_end(a, ia, j0, nk) + 15) & ~(int64_t)15;
    return e < nk ? e : nk;
}

/* Query rows in blocks of FZ_RB (one block when the tile is not cut), block r
 * seeing the keys j < e(its last row):
 *   sum_keys 0: C (mq x nk) = A (mq x n) B (n x nk) on columns j < e, 0 beyond;
 *   sum_keys 1: C (mq x n) += A (mq x nk, the pairs' weights) B (nk x n) over keys j < e. */
static void gemm_query_blocks(const fz_ctx *c, int sum_keys, int64_t ia0, int64_t mq, int64_t j0, int64_t nk, int64_t n,
                              const float *A, int64_t rsa, int64_t csa, const float *B, int64_t ldb, float *C,
                              int64_t ldc) {
    const int cut = fz_causal_end(c->a, ia0, j0, nk) < nk; /* the first row does not see the whole tile */
    const int64_t step = cut ? FZ_RB : mq;
    for (int64_t r = 0; r < mq; r += step) {
        const int64_t rb = mq - r < step ? mq - r : step;
        const int64_t e = cut ? fz_causal_end(c->a, ia0 + r + rb - 1, j0, nk) : nk;
        const float *Ar = A + r * rsa;
        float *Cr = C + r * ldc;
        if (sum_keys) {
            if (e > 0) c->kr.gemm(rb, n, e, Ar, rsa, csa, B, ldb, Cr, ldc, 1);
            continue;
        }
        if (e > 0) c->kr.gemm(rb, e, n, Ar, rsa, csa, B, ldb, Cr, ldc, 0);
        if (e < nk)
            for (int64_t i = 0; i < rb; i++) memset(Cr + i * ldc + e, 0, sizeof(float) * (size_t)(nk - e));
    }
}

/* C (nk x N) += A (nk x mq, the pairs' weights transposed) B (mq x N): each block of keys
 * over the queries that see it (from the first query that sees the block's first key) */
static void gemm_sum_queries(const fz_ctx *c, int64_t ia0, int64_t mq, int64_t j0, int64_t nk, int64_t N,
                             const float *A, int64_t rsa, int64_t csa, const float *B, int64_t ldb, float *C,
                             int64_t ldc) {
    const int cut = fz_causal_end(c->a, ia0, j0, nk) < nk;
    const int64_t step = cut ? FZ_RB : nk; /* one block when not cut */
    for (int64_t cb = 0; cb < nk; cb += step) {
        const int64_t kb = nk - cb < step ? nk - cb : step;
        int64_t lo = cut ? j0 + cb - ia0 : 0; /* query row of the first pair of key j0 + cb */
        lo = lo < 0 ? 0 : lo;
        if (lo >= mq) break; /* this block and the next ones: seen by none of these queries */
        c->kr.gemm(kb, N, mq - lo, A + cb * rsa + lo * csa, rsa, csa, B + lo * ldb, ldb, C + cb * ldc, ldc, 1);
    }
}

/* S (mq x nk, ld BK) = logits of queries i0.. (absolute ia0..) and keys j0..
 * of head (b, h), masked entries -INFINITY. Kt: the keys packed (D x BK). */
static void tile_logits(const fz_ctx *c, fz_scr *w, const float *Kt, int64_t b, int64_t h, int64_t i0, int64_t mq,
                        int64_t j0, int64_t nk) {
    const rp_attn *a = c->a;
    const int64_t D = c->D, H = a->H, bh = b * H + h;
    const int64_t ia0 = a->q_offset + i0;
    const float *qt = a->q + fz_at(c->qrw, b, h, i0);
    float *S = w->S;
    gemm_query_blocks(c, 0, ia0, mq, j0, nk, D, qt, c->qrw.si, 1, Kt, FZ_BK, S, FZ_BK);

    if (c->has_c2p) { /* + qr_i . relk[idx(ia, j)] */
        rp_relidx ix = a->relk_ix;
        int64_t r0, nr;
        rel_range(ix, ia0, mq, j0, nk, &r0, &nr);
        const float *tab = a->relk + ((a->Hrk == 1 ? 0 : h) * ix.R + r0) * D;
        const float *qq = a->qr ? a->qr + (bh * a->Tq + i0) * D : qt;
        c->kr.pack(tab, nr, D, D, w->RT, FZ_LDR);
        c->kr.gemm(mq, nr, D, qq, a->qr ? D : c->qrw.si, 1, w->RT, FZ_LDR, w->QR, FZ_LDR, 0);
        for (int64_t i = 0; i < mq; i++) rel_gather_add(ix, ia0 + i, j0, nk, r0, w->QR + i * FZ_LDR, 0, S + i * FZ_BK);
    }
    if (c->has_p2c) { /* + k_j . relq[idx(ia, j)] */
        rp_relidx ix = a->relq_ix;
        int64_t r0, nr;
        rel_range(ix, ia0, mq, j0, nk, &r0, &nr);
        const float *tab = a->relq + ((a->Hrq == 1 ? 0 : h) * ix.R + r0) * D;
        c->kr.pack(tab, nr, D, D, w->RT, FZ_LDR);
        c->kr.gemm(nk, nr, D, a->k + fz_at(c->krw, b, h, j0), c->krw.si, 1, w->RT, FZ_LDR, w->KR, FZ_LDR, 0);
        for (int64_t i = 0; i < mq; i++) rel_gather_add(ix, ia0 + i, j0, nk, r0, w->KR, FZ_LDR, S + i * FZ_BK);
    }

    const float scale = a->scale;
    const float *bv = a->bias_vec ? a->bias_vec + (a->Hb == 1 ? 0 : h) * a->bias_ix.R : NULL;
    const float *bf = a->bias_full ? a->bias_full + (((a->Bf == 1 ? 0 : b) * H + h) * a->Tq + i0) * a->Tk + j0 : NULL;
    const uint8_t *kpm = a->key_padding_mask ? a->key_padding_mask + b * a->Tk + j0 : NULL;
    for (int64_t i = 0; i < mq; i++) {
        float *restrict s = S + i * FZ_BK;
        const int64_t ia = ia0 + i;
        /* every reader of the row (row max, exp spans) stops at fz_row_cols, and
         * the causal product left 0 beyond the visible keys (the row's end is
         * zeroed again after its exp): so the logits are finished, and the
         * masked ones set to -inf, up to ncol only */
        const int64_t ncol = fz_row_cols(a, ia, j0, nk);
        if (bv) {
            rp_relidx ix = a->bias_ix;
            /* u(j) = u0 - sign*j is unclamped for j in [jlo, jhi); constant outside */
            const int64_t u0 = ix.sign * (ia - j0) + ix.off;
            int64_t jlo, jhi;
            if (ix.sign > 0) {
                jlo = u0 - (ix.R - 1);
                jhi = u0 + 1;
            } else {
                jlo = -u0;
                jhi = ix.R - u0;
            }
            jlo = jlo < 0 ? 0 : (jlo > ncol ? ncol : jlo);
            jhi = jhi < jlo ? jlo : (jhi > ncol ? ncol : jhi);
            const float blo = bv[ix.sign > 0 ? ix.R - 1 : 0], bhi = bv[ix.sign > 0 ? 0 : ix.R - 1];
            for (int64_t j = 0; j < jlo; j++) s[j] = s[j] * scale + blo;
            if (jhi > jlo && ix.sign > 0) {
                const float *restrict br = bv + (u0 - jlo); /* bias at j is br[jlo - j] */
                for (int64_t j = jlo; j < jhi; j++) s[j] = s[j] * scale + br[jlo - j];
            } else if (jhi > jlo) {
                const float *restrict br = bv + (u0 + jlo);
                for (int64_t j = jlo; j < jhi; j++) s[j] = s[j] * scale + br[j - jlo];
            }
            for (int64_t j = jhi; j < ncol; j++) s[j] = s[j] * scale + bhi;
        } else {
            c->kr.scale(s, ncol, scale);
        }
        if (bf) {
            const float *restrict f = bf + i * a->Tk;
            for (int64_t j = 0; j < ncol; j++) s[j] += f[j];
        }
        if (c->pt_t) {
            const float *restrict t = c->pt_t + ((a->Hp == 1 ? 0 : h) * a->Tq + i0 + i) * a->Tk + j0;
            for (int64_t j = 0; j < ncol; j++) s[j] += t[j];
        } else if (c->has_pwl) {
            pwl_row(a, h, ia, i0 + i, j0, ncol, w->X + i * FZ_BK, w->SG + i * FZ_BK, s);
        }
        if (a->causal && j0 + ncol - 1 > ia) {
            int64_t jstart = ia - j0 + 1;
            if (jstart < 0) jstart = 0;
            for (int64_t j = jstart; j < ncol; j++) s[j] = -INFINITY;
        }
        if (kpm)
            for (int64_t j = 0; j < ncol; j++)
                if (kpm[j]) s[j] = -INFINITY;
    }
}

/* Number of key blocks a query block with last absolute position ia_last can see. */
static int64_t fz_kb_end(const fz_ctx *c, int64_t ia_last) {
    if (!c->a->causal) return c->nkb;
    if (ia_last < 0) return 0;
    int64_t e = ia_last / FZ_BK + 1;
    return e < c->nkb ? e : c->nkb;
}

/* 1 if every key j0..j0+nk-1 of batch b is padding. */
static int fz_all_padded(const rp_attn *a, int64_t b, int64_t j0, int64_t nk) {
    if (!a->key_padding_mask) return 0;
    const uint8_t *m = a->key_padding_mask + b * a->Tk + j0;
    for (int64_t j = 0; j < nk; j++)
        if (!m[j]) return 0;
    return 1;
}

/* row[j] = 0 for the keys j0..j0+nk-1 that query ia may not see (causal,
 * padding): a NaN row's recomputed weights and every dS must be exactly 0
 * there, whatever the logits held. */
static void row_zero_masked(const rp_attn *a, int64_t b, int64_t ia, int64_t j0, int64_t nk, float *row) {
    const int64_t e = fz_causal_end(a, ia, j0, nk);
    for (int64_t j = e; j < nk; j++) row[j] = 0.0f;
    if (a->key_padding_mask) {
        const uint8_t *m = a->key_padding_mask + b * a->Tk + j0;
        for (int64_t j = 0; j < e; j++)
            if (m[j]) row[j] = 0.0f;
    }
}

/* w->PRES (mq x nk, ld BK) = 1 where (query ia0 + i, key j0 + j) of batch b
 * takes part, 0 where masked or (Lrow given) where the row is empty
 * (Lrow[i] = -inf: no gradient). */
static void tile_present(const rp_attn *a, fz_scr *w, int64_t b, int64_t ia0, int64_t mq, int64_t j0, int64_t nk,
                         const float *Lrow) {
    for (int64_t i = 0; i < mq; i++) {
        float *restrict pr = w->PRES + i * FZ_BK;
        if (Lrow && Lrow[i] == -INFINITY) {
            for (int64_t j = 0; j < nk; j++) pr[j] = 0.0f;
            continue;
        }
        for (int64_t j = 0; j < nk; j++) pr[j] = 1.0f;
        row_zero_masked(a, b, ia0 + i, j0, nk, pr);
    }
}

/* Pairs per (query row, relative row r0..r0+nr-1) of table index ix:
 * cnt (mq x nr, ld LDR); a product with a bucket nobody feeds is skipped. */
static void bucket_count_q(rp_relidx ix, const fz_scr *w, int64_t ia0, int64_t mq, int64_t j0, int64_t nk, int64_t r0,
                           int64_t nr, float *cnt) {
    for (int64_t i = 0; i < mq; i++) {
        memset(cnt + i * FZ_LDR, 0, sizeof(float) * (size_t)nr);
        rel_scatter_add(ix, ia0 + i, j0, nk, r0, cnt + i * FZ_LDR, 0, w->PRES + i * FZ_BK);
    }
}

/* The same per (key, relative row): cnt (nk x nr, ld LDR). */
static void bucket_count_k(rp_relidx ix, const fz_scr *w, int64_t ia0, int64_t mq, int64_t j0, int64_t nk, int64_t r0,
                           int64_t nr, float *cnt) {
    for (int64_t j = 0; j < nk; j++) memset(cnt + j * FZ_LDR, 0, sizeof(float) * (size_t)nr);
    for (int64_t i = 0; i < mq; i++) rel_scatter_add(ix, ia0 + i, j0, nk, r0, cnt, FZ_LDR, w->PRES + i * FZ_BK);
}

/* -------------------------------------------------------------------- forward */

/* Kp: every key block packed, (B*H, nkb, D, BK). */
static void fwd_item(const fz_ctx *c, fz_scr *w, const float *Kp, int64_t b, int64_t h, int64_t qb, float *out,
                     float *lse) {
    const rp_attn *a = c->a;
    const int64_t D = c->D, Dv = c->Dv, bh = b * a->H + h;
    const int64_t i0 = qb * FZ_BQ, mq = (a->Tq - i0) < FZ_BQ ? (a->Tq - i0) : FZ_BQ;
    const int64_t ia0 = a->q_offset + i0;
    float *O = w->O, *m = w->m, *l = w->l;
    memset(O, 0, sizeof(float) * (size_t)(mq * Dv));
    for (int64_t i = 0; i < mq; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    const int64_t kb_end = fz_kb_end(c, ia0 + mq - 1);
    for (int64_t kb = 0; kb < kb_end; kb++) {
        const int64_t j0 = kb * FZ_BK, nk = (a->Tk - j0) < FZ_BK ? (a->Tk - j0) : FZ_BK;
        if (fz_all_padded(a, b, j0, nk)) continue;
        tile_logits(c, w, Kp + (bh * c->nkb + kb) * D * FZ_BK, b, h, i0, mq, j0, nk);
        float *S = w->S;
        /* the rescale factors alpha_i = exp(m_old - m_new) of the whole tile in one vector
         * span (the same bits as one rp_exp per row; exp(0) = 1 leaves a row as it was) */
        float darg[FZ_BQ], alpha[FZ_BQ], rsum[FZ_BQ];
        for (int64_t i = 0; i < mq; i++) {
            float *s = S + i * FZ_BK;
            const int64_t n = fz_row_cols(a, ia0 + i, j0, nk); /* s[n..nk) are masked: -inf */
            float mx = c->kr.rowmax(s, n);
            float mnew = (mx > m[i] || mx != mx) ? mx : m[i]; /* a NaN maximum sticks */
            darg[i] = 0.0f;
            rsum[i] = 0.0f;
            if (mnew == -INFINITY) { /* nothing visible yet in this row */
                memset(s, 0, sizeof(float) * (size_t)nk);
                continue;
            }
            rsum[i] = c->kr.expsub(s, n, mnew);
            if (n < nk) memset(s + n, 0, sizeof(float) * (size_t)(nk - n));
            if (mnew != m[i]) {
                darg[i] = m[i] - mnew; /* -inf when m[i] = -inf: alpha 0 */
                m[i] = mnew;
            }
        }
        rp_exp_span(rp_exp_form(), darg, 0.0f, alpha, mq);
        for (int64_t i = 0; i < mq; i++) {
            if (alpha[i] != 1.0f) {
                float *o = O + i * Dv;
                for (int64_t d = 0; d < Dv; d++) o[d] *= alpha[i];
                l[i] *= alpha[i];
            }
            l[i] += rsum[i];
        }
        const float *vt = a->v + fz_at(c->vrw, b, h, j0);
        const int64_t vld = c->vrw.si;
        if (c->careful) {
            tile_present(a, w, b, ia0, mq, j0, nk, NULL);
            gemm_present(mq, Dv, nk, S, FZ_BK, 1, vt, vld, O, Dv, 1, w->PRES, FZ_BK, 1);
        } else {
            gemm_query_blocks(c, 1, ia0, mq, j0, nk, Dv, S, FZ_BK, 1, vt, vld, O, Dv);
        }
        if (c->has_relv) {
            rp_relidx ix = a->relv_ix;
            int64_t r0, nr;
            rel_range(ix, ia0, mq, j0, nk, &r0, &nr);
            float *PR = w->PR;
            for (int64_t i = 0; i < mq; i++) {
                memset(PR + i * FZ_LDR, 0, sizeof(float) * (size_t)nr);
                rel_scatter_add(ix, ia0 + i, j0, nk, r0, PR + i * FZ_LDR, 0, S + i * FZ_BK);
            }
            const float *tab = a->relv + ((a->Hrv == 1 ? 0 : h) * ix.R + r0) * Dv;
            if (c->careful) {
                bucket_count_q(ix, w, ia0, mq, j0, nk, r0, nr, w->CNTQ);
                gemm_present(mq, Dv, nr, PR, FZ_LDR, 1, tab, Dv, O, Dv, 1, w->CNTQ, FZ_LDR, 1);
            } else {
                c->kr.gemm(mq, Dv, nr, PR, FZ_LDR, 1, tab, Dv, O, Dv, 1);
            }
        }
    }
    const int64_t ldo = rp_attn_out_ld(a);
    float *o_out = out + rp_attn_out_row(a, b, h, i0);
    float *lse_out = lse + bh * a->Tq + i0;
    for (int64_t i = 0; i < mq; i++) {
        float *o = o_out + i * ldo;
        if (l[i] > 0.0f) {
            const float inv = 1.0f / l[i];
            for (int64_t d = 0; d < Dv; d++) o[d] = O[i * Dv + d] * inv;
            lse_out[i] = m[i] + logf(l[i]);
        } else if (l[i] != l[i]) { /* a NaN or +inf logit: the whole row is NaN */
            for (int64_t d = 0; d < Dv; d++) o[d] = NAN;
            lse_out[i] = NAN;
        } else { /* nothing visible, or only -inf logits: the empty row */
            memset(o, 0, sizeof(float) * (size_t)Dv);
            lse_out[i] = -INFINITY;
        }
    }
}

static int fz_check(const rp_attn *a) {
    if (!a) return RP_EINVAL;
    if (a->B < 0 || a->H < 0 || a->Tq < 0 || a->Tk < 0 || a->D < 0 || a->Dv < 0) return RP_EINVAL;
    if (a->relk && (a->relk_ix.R <= 0 || a->Hrk < 1)) return RP_EINVAL;
    if (a->relq && (a->relq_ix.R <= 0 || a->Hrq < 1)) return RP_EINVAL;
    if (a->relv && (a->relv_ix.R <= 0 || a->Hrv < 1)) return RP_EINVAL;
    if (a->bias_vec && (a->bias_ix.R <= 0 || a->Hb < 1)) return RP_EINVAL;
    if (a->bias_full && a->Bf != 1 && a->Bf != a->B) return RP_EINVAL; /* Bf = B = 0: empty batch */
    if (a->pwl_u && (a->pwl_ix.R <= 0 || !a->pwl_w || !a->pwl_slope || !a->pwl_icpt || a->pwl_S < 1 ||
                     (a->pwl_S > 1 && !a->pwl_bp) || (a->Hp != 1 && a->Hp != a->H) || a->pwl_S > INT32_MAX))
        return RP_EINVAL;
    return RP_OK;
}

static fz_ctx fz_make_ctx(const rp_attn *a) {
    fz_ctx c;
    c.a = a;
    c.kr = fz_pick();
    c.D = a->D;
    c.Dv = a->Dv;
    c.nkb = (a->Tk + FZ_BK - 1) / FZ_BK;
    c.nqb = (a->Tq + FZ_BQ - 1) / FZ_BQ;
    c.has_c2p = a->relk != NULL;
    c.has_p2c = a->relq != NULL;
    c.has_relv = a->relv != NULL;
    c.has_bias = a->bias_vec != NULL || a->bias_full != NULL || a->pwl_u != NULL;
    c.has_pwl = a->pwl_u != NULL;
    c.careful = 0;
    c.qrw = rp_attn_rows_or_dense(a->q_rows, a->H, a->Tq, a->D);
    c.krw = rp_attn_rows_or_dense(a->k_rows, a->H, a->Tk, a->D);
    c.vrw = rp_attn_rows_or_dense(a->v_rows, a->H, a->Tk, a->Dv);
    c.pt_x = c.pt_t = NULL;
    c.pt_g = NULL;
    return c;
}

/* The piecewise-linear table of this call (pwl_tab_floats), c pointed at its
 * parts; NULL, c left without one, when the call needs none or there is no
 * memory for it (an optimisation: the tiles then form the terms). The caller
 * fills it with fz_pwl_tab_fill and frees it. */
static float *fz_pwl_tab_new(fz_ctx *c) {
    const int64_t n = pwl_tab_floats(c->a);
    float *tab = n ? rp_malloc(sizeof(float) * (size_t)n) : NULL;
    if (!tab) return NULL;
    const int64_t pairs = c->a->Tq * c->a->Tk;
    c->pt_x = tab;
    c->pt_g = (const int32_t *)(const void *)(tab + pairs);
    c->pt_t = tab + 2 * pairs;
    return tab;
}

/* Fill the table, rows dealt to the threads of the calling team (every member
 * calls this; the worksharing loop ends with the team's barrier). */
static void fz_pwl_tab_fill(const rp_attn *a, float *tab) {
    if (!tab) return;
#if RP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t i = 0; i < a->Tq; i++) pwl_tab_row(a, tab, i);
}

/* q (B,H,Tq,D), k (B,H,Tk,D), v (B,H,Tk,Dv) + channels -> out (B,H,Tq,Dv), lse (B,H,Tq). */
int rp_attn_fused_fwd(const rp_attn *a, float *out, float *lse) {
    int rc = fz_check(a);
    if (rc) return rc;
    const int64_t BH = a->B * a->H;
    if (BH == 0 || a->Tq == 0) return RP_OK;
    if (a->Tk == 0 || a->D == 0) {
        /* no keys: every row fully masked; D = 0 still gives uniform weights */
        if (a->Tk == 0) {
            memset(out, 0, sizeof(float) * (size_t)(BH * a->Tq * a->Dv));
            for (int64_t i = 0; i < BH * a->Tq; i++) lse[i] = -INFINITY;
            return RP_OK;
        }
    }
    fz_ctx c = fz_make_ctx(a);
    /* the forward multiplies pair weights by values and relv rows */
    c.careful = fz_any_nonfinite(a->v, a->v_rows, a->B, a->H, a->Tk, a->Dv) ||
                (a->relv && fz_any_nonfinite_dense(a->relv, a->Hrv * a->relv_ix.R * a->Dv));
    const int64_t nitems = BH * c.nqb;
    int nt = rp_par_threads();
    if (nt < 1) nt = 1;
    if (nitems < nt) nt = (int)nitems;
    const size_t per = fz_scr_floats(c.D, c.Dv, 0);
    float *scr = rp_malloc(sizeof(float) * per * (size_t)nt);
    float *Kp = rp_malloc(sizeof(float) * (size_t)(BH * c.nkb * c.D * FZ_BK));
    if (!scr || !Kp) {
        rp_free(scr);
        rp_free(Kp);
        return RP_ENOMEM;
    }
    float *ptab = fz_pwl_tab_new(&c);
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#if RP_HAVE_OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        fz_scr w = fz_scr_at(scr + per * (size_t)tid, c.D, c.Dv);
        fz_pwl_tab_fill(a, ptab);
#if RP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t it = 0; it < BH * c.nkb; it++) {
            const int64_t bh = it / c.nkb, j0 = (it % c.nkb) * FZ_BK;
            const int64_t nk = (a->Tk - j0) < FZ_BK ? (a->Tk - j0) : FZ_BK;
            c.kr.pack(a->k + fz_at(c.krw, bh / a->H, bh % a->H, j0), nk, c.D, c.krw.si, Kp + it * c.D * FZ_BK, FZ_BK);
        }
#if RP_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t it = 0; it < nitems; it++) {
            /* longest (last) query blocks first: causal work grows with qb */
            int64_t qb = c.nqb - 1 - it % c.nqb, bh = it / c.nqb;
            fwd_item(&c, &w, Kp, bh / a->H, bh % a->H, qb, out, lse);
        }
    }
    rp_free(scr);
    rp_free(Kp);
    rp_free(ptab);
    return RP_OK;
}

/* ------------------------------------------------------------------- backward */

/* Destinations of one backward item's gradients that are not its own rows. */
typedef struct {
    float *dbias_vec; /* (R) of head hb */
    float *drelk, *drelq, *drelv;
    float *dbias_full;     /* (Tq, Tk) of (bb, h) */
    float *dq, *dqr;       /* (Tq, D): the rows of (b, h), or this chunk's partial */
    int64_t dq_ld;         /* dq's rows are dq_ld apart (dqr's D) */
    float *dpwl_u;         /* (R) */
    float *dpwl_w;         /* (Tq) */
    float *dpwl_slope;     /* (S) of head hp */
    float *dpwl_icpt;      /* (S) of head hp */
    int64_t chunk, nchunk; /* this item takes key blocks kb = chunk (mod nchunk) */
} fz_dst;

/* Gradients of the piecewise-linear channel from the tile's dS (unscaled,
 * masked pairs 0) and the x / segments tile_logits kept; the pairs that take
 * part only, so a masked pair's x (any value) is never read. */
static void pwl_tile_grads(const fz_ctx *c, const fz_scr *w, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t j0,
                           int64_t nk, const float *L, const fz_dst *t) {
    const rp_attn *a = c->a;
    const rp_relidx ix = a->pwl_ix;
    const float *sl = a->pwl_slope + (a->Hp == 1 ? 0 : h) * a->pwl_S;
    const uint8_t *kpm = a->key_padding_mask ? a->key_padding_mask + b * a->Tk + j0 : NULL;
    const int fast = !kpm && t->dpwl_u && t->dpwl_w && t->dpwl_slope && t->dpwl_icpt;
    for (int64_t i = 0; i < mq; i++) {
        if (L[i0 + i] == -INFINITY) continue;
        const int64_t ia = a->q_offset + i0 + i;
        const int64_t e = fz_causal_end(a, ia, j0, nk);
        const float *ds = w->dP + i * FZ_BK;
        const float *x = c->pt_x ? c->pt_x + (i0 + i) * a->Tk + j0 : w->X + i * FZ_BK;
        const int32_t *sg = c->pt_g ? c->pt_g + (i0 + i) * a->Tk + j0 : w->SG + i * FZ_BK;
        const float wi = a->pwl_w[i0 + i];
        const int64_t u0 = ix.sign * (ia - j0) + ix.off;
        float dw = 0.0f;
        if (fast && e > 0 && u0 >= 0 && u0 < ix.R && u0 - ix.sign * (e - 1) >= 0 && u0 - ix.sign * (e - 1) < ix.R) {
            /* the loop below for the common case (no padding mask, every gradient
             * wanted, no index clamped), run by run of one segment: the same
             * operations in the same order, without its per-key tests */
            float *restrict du = t->dpwl_u;
            const float *u = a->pwl_u;
            const int64_t sgn = ix.sign;
            int64_t j = 0;
            while (j < e) {
                const int32_t g = sg[j];
                int64_t jend = j + 1;
                while (jend < e && sg[jend] == g) jend++;
                const float slg = sl[g];
                float rs = 0.0f, ri = 0.0f;
                for (; j < jend; j++) {
                    const int64_t n = u0 - sgn * j;
                    const float dx = ds[j] * slg;
                    rs += ds[j] * x[j];
                    ri += ds[j];
                    du[n] += dx * wi;
                    dw += dx * u[n];
                }
                t->dpwl_slope[g] += rs;
                t->dpwl_icpt[g] += ri;
            }
            t->dpwl_w[i0 + i] += dw;
            continue;
        }
        /* neighbouring keys mostly share a segment (FIRE's x is monotone along a
         * row): the segment sums run in registers and are stored when it changes */
        int32_t cur = -1;
        float run_s = 0.0f, run_i = 0.0f;
        for (int64_t j = 0; j < e; j++) {
            if (kpm && kpm[j]) continue;
            int64_t n = u0 - ix.sign * j;
            n = n < 0 ? 0 : (n >= ix.R ? ix.R - 1 : n);
            if (sg[j] != cur) {
                if (cur >= 0) {
                    if (t->dpwl_slope) t->dpwl_slope[cur] += run_s;
                    if (t->dpwl_icpt) t->dpwl_icpt[cur] += run_i;
                }
                cur = sg[j];
                run_s = run_i = 0.0f;
            }
            const float dx = ds[j] * sl[cur];
            run_s += ds[j] * x[j];
            run_i += ds[j];
            if (t->dpwl_u) t->dpwl_u[n] += dx * wi;
            dw += dx * a->pwl_u[n];
        }
        if (cur >= 0) {
            if (t->dpwl_slope) t->dpwl_slope[cur] += run_s;
            if (t->dpwl_icpt) t->dpwl_icpt[cur] += run_i;
        }
        if (t->dpwl_w) t->dpwl_w[i0 + i] += dw;
    }
}

/* One (b, h) and one chunk of its key blocks: dk/dv rows of those blocks
 * (written), dq/dqr and table gradients added into t's destinations. */
static void bwd_head(const fz_ctx *c, fz_scr *w, int64_t b, int64_t h, const float *out, const float *lse,
                     const float *dout, const rp_attn_grads *g, const fz_dst *t, int need_ds) {
    const rp_attn *a = c->a;
    const int64_t D = c->D, Dv = c->Dv, Tq = a->Tq, Tk = a->Tk, bh = b * a->H + h;
    const float scale = a->scale;
    /* q, k, v and dk, dv: rows qld, kld, vld, dkld, dvld apart (rp_attn_rows) */
    const float *Q = a->q + fz_at(c->qrw, b, h, 0), *K = a->k + fz_at(c->krw, b, h, 0);
    const float *V = a->v + fz_at(c->vrw, b, h, 0);
    const int64_t qld = c->qrw.si, kld = c->krw.si, vld = c->vrw.si;
    const float *QQ = a->qr ? a->qr + bh * Tq * D : Q;
    const int64_t qqld = a->qr ? D : qld;
    /* dO and O: rows of Dv floats, ldo apart (a->merged picks the layout) */
    const int64_t ldo = rp_attn_out_ld(a);
    const float *dO = dout + rp_attn_out_row(a, b, h, 0), *L = lse + bh * Tq;
    float *dq = t->dq;
    const int64_t dqld = t->dq_ld;
    const rp_attn_rows dkrw = rp_attn_rows_or_dense(g->dk_rows, a->H, Tk, D);
    const rp_attn_rows dvrw = rp_attn_rows_or_dense(g->dv_rows, a->H, Tk, Dv);
    float *dk = g->dk ? g->dk + fz_at(dkrw, b, h, 0) : NULL;
    float *dv = g->dv ? g->dv + fz_at(dvrw, b, h, 0) : NULL;
    const int64_t dkld = dkrw.si, dvld = dvrw.si;
    /* where the c2p gradient of the query side goes: dqr, or dq when qr is q */
    float *dqq = a->qr ? t->dqr : dq;
    const int64_t dqqld = a->qr ? D : dqld;
    const int careful = c->careful;
    /* every destination was zeroed by the caller */

    /* D_i = dO_i . O_i, each row's sum in d order from +0; four rows side by side, so
     * that four independent chains hide the add latency (one row's chain alone
     * waited on every add: 10% of the small model's attention backward) */
    const float *O = out + rp_attn_out_row(a, b, h, 0);
    int64_t i0 = 0;
    for (; i0 + 4 <= Tq; i0 += 4) {
        const float *p0 = dO + i0 * ldo, *p1 = p0 + ldo, *p2 = p1 + ldo, *p3 = p2 + ldo;
        const float *o0 = O + i0 * ldo, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (int64_t d = 0; d < Dv; d++) {
            s0 += p0[d] * o0[d];
            s1 += p1[d] * o1[d];
            s2 += p2[d] * o2[d];
            s3 += p3[d] * o3[d];
        }
        w->Dvec[i0] = s0;
        w->Dvec[i0 + 1] = s1;
        w->Dvec[i0 + 2] = s2;
        w->Dvec[i0 + 3] = s3;
    }
    for (; i0 < Tq; i0++) {
        float s = 0.0f;
        for (int64_t d = 0; d < Dv; d++) s += dO[i0 * ldo + d] * O[i0 * ldo + d];
        w->Dvec[i0] = s;
    }
    const int need_p = dv != NULL || (c->has_relv && t->drelv != NULL);
    if (!need_ds && !need_p) return;
    const int64_t R_b = a->bias_vec ? a->bias_ix.R : 0;
    const int pwl_grad = c->has_pwl && (t->dpwl_u || t->dpwl_w || t->dpwl_slope || t->dpwl_icpt);

    for (int64_t kb = t->chunk; kb < c->nkb; kb += t->nchunk) {
        const int64_t j0 = kb * FZ_BK, nk = (Tk - j0) < FZ_BK ? (Tk - j0) : FZ_BK;
        if (fz_all_padded(a, b, j0, nk)) continue;
        c->kr.pack(K + j0 * kld, nk, D, kld, w->Kt, FZ_BK);
        if (need_ds) c->kr.pack(V + j0 * vld, nk, Dv, vld, w->Vt, FZ_BK);
        /* first query block that sees key j0 */
        int64_t qb0 = 0;
        if (a->causal) {
            int64_t i_first = j0 - a->q_offset; /* ia >= j0 */
            qb0 = i_first <= 0 ? 0 : i_first / FZ_BQ;
        }
        for (int64_t qb = qb0; qb < c->nqb; qb++) {
            const int64_t i0 = qb * FZ_BQ, mq = (Tq - i0) < FZ_BQ ? (Tq - i0) : FZ_BQ;
            const int64_t ia0 = a->q_offset + i0;
            if (a->causal && ia0 + mq - 1 < j0) continue;
            tile_logits(c, w, w->Kt, b, h, i0, mq, j0, nk);
            float *S = w->S, *dP = w->dP;
            for (int64_t i = 0; i < mq; i++) {
                float *s = S + i * FZ_BK;
                const float Li = L[i0 + i];
                if (Li == -INFINITY) {
                    memset(s, 0, sizeof(float) * (size_t)nk);
                } else {
                    const int64_t n = fz_row_cols(a, ia0 + i, j0, nk); /* s[n..nk) are masked */
                    c->kr.expsub(s, n, Li);
                    if (n < nk) memset(s + n, 0, sizeof(float) * (size_t)(nk - n));
                    /* a NaN row: exp(s - NaN) is NaN on masked keys too */
                    if (Li != Li) row_zero_masked(a, b, ia0 + i, j0, nk, s);
                }
            }
            if (careful) tile_present(a, w, b, ia0, mq, j0, nk, L + i0);
            /* P now in S. dV += P^T dO */
            const float *dOt = dO + i0 * ldo;
            if (dv) {
                if (careful)
                    gemm_present(nk, Dv, mq, S, 1, FZ_BK, dOt, ldo, dv + j0 * dvld, dvld, 1, w->PRES, 1, FZ_BK);
                else
                    gemm_sum_queries(c, ia0, mq, j0, nk, Dv, S, 1, FZ_BK, dOt, ldo, dv + j0 * dvld, dvld);
            }
            int64_t rv0 = 0, nrv = 0;
            if (c->has_relv && (t->drelv || need_ds)) { rel_range(a->relv_ix, ia0, mq, j0, nk, &rv0, &nrv); }
            if (c->has_relv && t->drelv) {
                /* drelv[r] += sum_{idx(i,j)=r} p_ij dO_i: buckets PR (mq x nr) */
                float *PR = w->PR;
                for (int64_t i = 0; i < mq; i++) {
                    memset(PR + i * FZ_LDR, 0, sizeof(float) * (size_t)nrv);
                    rel_scatter_add(a->relv_ix, ia0 + i, j0, nk, rv0, PR + i * FZ_LDR, 0, S + i * FZ_BK);
                }
                if (careful) {
                    bucket_count_q(a->relv_ix, w, ia0, mq, j0, nk, rv0, nrv, w->CNTQ);
                    gemm_present(nrv, Dv, mq, PR, 1, FZ_LDR, dOt, ldo, t->drelv + rv0 * Dv, Dv, 1, w->CNTQ, 1, FZ_LDR);
                } else {
                    c->kr.gemm(nrv, Dv, mq, PR, 1, FZ_LDR, dOt, ldo, t->drelv + rv0 * Dv, Dv, 1);
                }
            }
            if (!need_ds) continue;
            /* dP = dO V^T (+ dO . relv[idx]) */
            gemm_query_blocks(c, 0, ia0, mq, j0, nk, Dv, dOt, ldo, 1, w->Vt, FZ_BK, dP, FZ_BK);
            if (c->has_relv) {
                const float *tab = a->relv + ((a->Hrv == 1 ? 0 : h) * a->relv_ix.R + rv0) * Dv;
                c->kr.pack(tab, nrv, Dv, Dv, w->RT, FZ_LDR);
                c->kr.gemm(mq, nrv, Dv, dOt, ldo, 1, w->RT, FZ_LDR, w->QR, FZ_LDR, 0);
                for (int64_t i = 0; i < mq; i++)
                    rel_gather_add(a->relv_ix, ia0 + i, j0, nk, rv0, w->QR + i * FZ_LDR, 0, dP + i * FZ_BK);
            }
            /* dS = P (dP - D); the content terms below take scale * dS. A
             * masked pair and an empty row have dS = 0 exactly, even where
             * dP or D is NaN. */
            const int bias_grad = t->dbias_vec || t->dbias_full || pwl_grad;
            const float sc = bias_grad ? 1.0f : scale;
            for (int64_t i = 0; i < mq; i++) {
                float *restrict p = dP + i * FZ_BK;
                if (L[i0 + i] == -INFINITY) {
                    memset(p, 0, sizeof(float) * (size_t)nk);
                    continue;
                }
                const float *restrict s = S + i * FZ_BK;
                const float di = w->Dvec[i0 + i];
                c->kr.ds(p, s, nk, sc, di);
                row_zero_masked(a, b, ia0 + i, j0, nk, p);
            }
            if (t->dbias_vec) {
                rp_relidx ix = a->bias_ix;
                float *restrict db = t->dbias_vec;
                for (int64_t i = 0; i < mq; i++) {
                    const float *restrict p = dP + i * FZ_BK;
                    const int64_t u0 = ix.sign * (ia0 + i - j0) + ix.off;
                    int64_t jlo, jhi;
                    if (ix.sign > 0) {
                        jlo = u0 - (R_b - 1);
                        jhi = u0 + 1;
                    } else {
                        jlo = -u0;
                        jhi = R_b - u0;
                    }
                    jlo = jlo < 0 ? 0 : (jlo > nk ? nk : jlo);
                    jhi = jhi < jlo ? jlo : (jhi > nk ? nk : jhi);
                    float elo = 0.0f, ehi = 0.0f;
                    for (int64_t j = 0; j < jlo; j++) elo += p[j];
                    for (int64_t j = jhi; j < nk; j++) ehi += p[j];
                    if (jlo > 0) db[ix.sign > 0 ? R_b - 1 : 0] += elo;
                    if (jhi < nk) db[ix.sign > 0 ? 0 : R_b - 1] += ehi;
                    if (jhi > jlo && ix.sign > 0) {
                        float *restrict dr = db + (u0 - jlo);
                        for (int64_t j = jlo; j < jhi; j++) dr[jlo - j] += p[j];
                    } else if (jhi > jlo) {
                        float *restrict dr = db + (u0 + jlo);
                        for (int64_t j = jlo; j < jhi; j++) dr[j - jlo] += p[j];
                    }
                }
            }
            if (t->dbias_full) {
                for (int64_t i = 0; i < mq; i++) {
                    float *restrict f = t->dbias_full + (i0 + i) * Tk + j0;
                    const float *restrict p = dP + i * FZ_BK;
                    for (int64_t j = 0; j < nk; j++) f[j] += p[j];
                }
            }
            if (pwl_grad) pwl_tile_grads(c, w, b, h, i0, mq, j0, nk, L, t);
            if (bias_grad) {
                for (int64_t i = 0; i < mq; i++) {
                    float *restrict p = dP + i * FZ_BK;
                    for (int64_t j = 0; j < nk; j++) p[j] *= scale;
                }
            }
            if (careful) {
                if (dk)
                    gemm_present(nk, D, mq, dP, 1, FZ_BK, Q + i0 * qld, qld, dk + j0 * dkld, dkld, 1, w->PRES, 1,
                                 FZ_BK);
                if (dq)
                    gemm_present(mq, D, nk, dP, FZ_BK, 1, K + j0 * kld, kld, dq + i0 * dqld, dqld, 1, w->PRES, FZ_BK,
                                 1);
            } else {
                if (dk) gemm_sum_queries(c, ia0, mq, j0, nk, D, dP, 1, FZ_BK, Q + i0 * qld, qld, dk + j0 * dkld, dkld);
                if (dq)
                    gemm_query_blocks(c, 1, ia0, mq, j0, nk, D, dP, FZ_BK, 1, K + j0 * kld, kld, dq + i0 * dqld, dqld);
            }
            if (c->has_c2p && (dqq || t->drelk)) {
                rp_relidx ix = a->relk_ix;
                int64_t r0, nr;
                rel_range(ix, ia0, mq, j0, nk, &r0, &nr);
                float *B = w->DQR;
                for (int64_t i = 0; i < mq; i++) {
                    memset(B + i * FZ_LDR, 0, sizeof(float) * (size_t)nr);
                    rel_scatter_add(ix, ia0 + i, j0, nk, r0, B + i * FZ_LDR, 0, dP + i * FZ_BK);
                }
                const float *tab = a->relk + ((a->Hrk == 1 ? 0 : h) * ix.R + r0) * D;
                if (careful) {
                    bucket_count_q(ix, w, ia0, mq, j0, nk, r0, nr, w->CNTQ);
                    if (dqq)
                        gemm_present(mq, D, nr, B, FZ_LDR, 1, tab, D, dqq + i0 * dqqld, dqqld, 1, w->CNTQ, FZ_LDR, 1);
                    if (t->drelk)
                        gemm_present(nr, D, mq, B, 1, FZ_LDR, QQ + i0 * qqld, qqld, t->drelk + r0 * D, D, 1, w->CNTQ, 1,
                                     FZ_LDR);
                } else {
                    if (dqq) c->kr.gemm(mq, D, nr, B, FZ_LDR, 1, tab, D, dqq + i0 * dqqld, dqqld, 1);
                    if (t->drelk) c->kr.gemm(nr, D, mq, B, 1, FZ_LDR, QQ + i0 * qqld, qqld, t->drelk + r0 * D, D, 1);
                }
            }
            if (c->has_p2c && (dk || t->drelq)) {
                rp_relidx ix = a->relq_ix;
                int64_t r0, nr;
                rel_range(ix, ia0, mq, j0, nk, &r0, &nr);
                float *B = w->DKR;
                for (int64_t j = 0; j < nk; j++) memset(B + j * FZ_LDR, 0, sizeof(float) * (size_t)nr);
                for (int64_t i = 0; i < mq; i++) rel_scatter_add(ix, ia0 + i, j0, nk, r0, B, FZ_LDR, dP + i * FZ_BK);
                const float *tab = a->relq + ((a->Hrq == 1 ? 0 : h) * ix.R + r0) * D;
                if (careful) {
                    bucket_count_k(ix, w, ia0, mq, j0, nk, r0, nr, w->CNTK);
                    if (dk) gemm_present(nk, D, nr, B, FZ_LDR, 1, tab, D, dk + j0 * dkld, dkld, 1, w->CNTK, FZ_LDR, 1);
                    if (t->drelq)
                        gemm_present(nr, D, nk, B, 1, FZ_LDR, K + j0 * kld, kld, t->drelq + r0 * D, D, 1, w->CNTK, 1,
                                     FZ_LDR);
                } else {
                    if (dk) c->kr.gemm(nk, D, nr, B, FZ_LDR, 1, tab, D, dk + j0 * dkld, dkld, 1);
                    if (t->drelq) c->kr.gemm(nr, D, nk, B, 1, FZ_LDR, K + j0 * kld, kld, t->drelq + r0 * D, D, 1);
                }
            }
        }
    }
}

/* dst[e] = sum over groups g < ng and members m < nm, in that order, of
 * src[g*gstride + m*n + e] (partial buffers of n floats). */
static void fz_reduce(float *dst, const float *src, int64_t ng, int64_t nm, int64_t gstride, int64_t n) {
    RP_OMP_PARALLEL_FOR
    for (int64_t e = 0; e < n; e++) {
        float s = 0.0f;
        for (int64_t gi = 0; gi < ng; gi++)
            for (int64_t m = 0; m < nm; m++) s += src[gi * gstride + m * n + e];
        dst[e] = s;
    }
}

/* A shared table gradient: (Ht, R, W) floats fed by items (bi, h). */
typedef struct {
    float *dst;         /* the gradient in g, or NULL */
    int64_t Ht, per;    /* heads of the table, floats per table head */
    int direct;         /* each table head fed by exactly one item */
    float *part;        /* nitems x per partials when !direct */
    int64_t nb, nh, nc; /* items it = (bi*nh + h)*nc + c feed table head (Ht == 1 ? 0 : h) */
} fz_shared;

static void fz_shared_init(fz_shared *s, float *dst, int64_t Ht, int64_t per, int64_t nitem_b, int64_t H, int64_t NC) {
    s->dst = dst;
    s->Ht = Ht;
    s->per = per;
    s->part = NULL;
    s->direct = dst ? (nitem_b * (Ht == 1 ? H : 1) * NC == 1) : 1;
    s->nb = nitem_b;
    s->nh = H;
    s->nc = NC;
}

static float *fz_shared_at(const fz_shared *s, int64_t item, int64_t h) {
    if (!s->dst) return NULL;
    if (s->direct) return s->dst + (s->Ht == 1 ? 0 : h) * s->per;
    return s->part + item * s->per;
}

/* Reduce the partials of table s (items it = (bi*H + h)*NC + c) into s->dst,
 * in item order. */
static void fz_shared_finish(const fz_shared *s) {
    if (!s->dst || s->direct) return;
    const int64_t per = s->per, nitem_b = s->nb, H = s->nh, NC = s->nc;
    if (s->Ht == 1) {
        fz_reduce(s->dst, s->part, nitem_b * H * NC, 1, per, per);
    } else {
        for (int64_t h = 0; h < H; h++)
            fz_reduce(s->dst + h * per, s->part + h * NC * per, nitem_b, NC, H * NC * per, per);
    }
}

static int fz_zero_run(float *x, int64_t n, void *ctx) {
    (void)ctx;
    memset(x, 0, sizeof(float) * (size_t)n);
    return 0;
}

/* Zero the (B, H, T, D) rows of x laid out as r. */
static void fz_zero_rows(float *x, rp_attn_rows r, int64_t B, int64_t H, int64_t T, int64_t D) {
    if (x) rp_attn_rows_runs(x, r, B, H, T, D, fz_zero_run, NULL);
}

/* dq (rows laid out as r) from the NC chunk partials of each (b, h), (Tq, D)
 * each at part + (bh*NC + chunk)*Tq*D: the sum over the chunks in order, from
 * +0 (fz_shared_finish's order, so either layout gets the same bits). */
static void fz_dq_finish(float *dq, rp_attn_rows r, const float *part, int64_t B, int64_t H, int64_t Tq, int64_t D,
                         int64_t NC) {
    const int64_t per = Tq * D;
    RP_OMP_PARALLEL_FOR
    for (int64_t row = 0; row < B * H * Tq; row++) {
        const int64_t bh = row / Tq, i = row % Tq;
        float *dst = dq + fz_at(r, bh / H, bh % H, i);
        const float *src = part + bh * NC * per + i * D;
        for (int64_t e = 0; e < D; e++) {
            float s = 0.0f;
            for (int64_t m = 0; m < NC; m++) s += src[m * per + e];
            dst[e] = s;
        }
    }
}

/* Gradients of rp_attn_fused_fwd given out, lse and dout (B,H,Tq,Dv); see
 * rp_attn_grads (written, not accumulated; NULL = not wanted). */
int rp_attn_fused_bwd(const rp_attn *a, const float *out, const float *lse, const float *dout, rp_attn_grads *g) {
    int rc = fz_check(a);
    if (rc) return rc;
    fz_ctx c = fz_make_ctx(a);
    const int64_t B = a->B, H = a->H, Tq = a->Tq, Tk = a->Tk, D = c.D, Dv = c.Dv;
    /* gradients of absent channels are not computed */
    float *dqr = a->qr ? g->dqr : NULL;
    float *drelk = a->relk ? g->drelk : NULL, *drelq = a->relq ? g->drelq : NULL;
    float *drelv = a->relv ? g->drelv : NULL, *dbv = a->bias_vec ? g->dbias_vec : NULL;
    float *dbf = a->bias_full ? g->dbias_full : NULL;
    float *dpu = a->pwl_u ? g->dpwl_u : NULL, *dpw = a->pwl_u ? g->dpwl_w : NULL;
    float *dps = a->pwl_u ? g->dpwl_slope : NULL, *dpi = a->pwl_u ? g->dpwl_icpt : NULL;
    /* zero everything first: skipped tiles and empty shapes leave zeros */
    const rp_attn_rows dqrw = rp_attn_rows_or_dense(g->dq_rows, H, Tq, D);
    fz_zero_rows(g->dq, dqrw, B, H, Tq, D);
    fz_zero_rows(g->dk, g->dk_rows, B, H, Tk, D);
    fz_zero_rows(g->dv, g->dv_rows, B, H, Tk, Dv);
    if (dqr) memset(dqr, 0, sizeof(float) * (size_t)(B * H * Tq * D));
    if (drelk) memset(drelk, 0, sizeof(float) * (size_t)(a->Hrk * a->relk_ix.R * D));
    if (drelq) memset(drelq, 0, sizeof(float) * (size_t)(a->Hrq * a->relq_ix.R * D));
    if (drelv) memset(drelv, 0, sizeof(float) * (size_t)(a->Hrv * a->relv_ix.R * Dv));
    if (dbv) memset(dbv, 0, sizeof(float) * (size_t)(a->Hb * a->bias_ix.R));
    if (dbf) memset(dbf, 0, sizeof(float) * (size_t)(a->Bf * H * Tq * Tk));
    if (dpu) memset(dpu, 0, sizeof(float) * (size_t)a->pwl_ix.R);
    if (dpw) memset(dpw, 0, sizeof(float) * (size_t)Tq);
    if (dps) memset(dps, 0, sizeof(float) * (size_t)(a->Hp * a->pwl_S));
    if (dpi) memset(dpi, 0, sizeof(float) * (size_t)(a->Hp * a->pwl_S));
    if (B * H == 0 || Tq == 0 || Tk == 0) return RP_OK;
    /* the backward multiplies pair weights (P, dS) by dout, q, k and the
     * relative key/query tables: a NaN or inf there must not meet a masked pair */
    c.careful = fz_any_nonfinite_dense(dout, B * H * Tq * Dv) || fz_any_nonfinite(a->q, a->q_rows, B, H, Tq, D) ||
                fz_any_nonfinite(a->k, a->k_rows, B, H, Tk, D) ||
                (a->qr && fz_any_nonfinite_dense(a->qr, B * H * Tq * D)) ||
                (a->relk && fz_any_nonfinite_dense(a->relk, a->Hrk * a->relk_ix.R * D)) ||
                (a->relq && fz_any_nonfinite_dense(a->relq, a->Hrq * a->relq_ix.R * D));

    /* items (bi, h); with a batch-shared bias_full gradient, one item per head
     * walks every b so that the (Tq, Tk) gradient needs no partials */
    const int hmode = dbf && a->Bf == 1 && B > 1;
    const int64_t nitem_b = hmode ? 1 : B;
    /* Few heads: each head's key blocks are dealt to NC interleaved chunks
     * (a function of the shape only, never of the thread count), each with its
     * own dq/dqr partial. */
    int64_t NC = 1;
    if (!hmode && B * H < FZ_MIN_ITEMS) {
        NC = (FZ_MIN_ITEMS + B * H - 1) / (B * H);
        if (NC > c.nkb) NC = c.nkb;
        if (NC < 1) NC = 1;
    }
    const int64_t nitems = nitem_b * H * NC;
    fz_shared sb, sk, sq, sv, sdq, sdqr, spu, spw, sps, spi;
    fz_shared_init(&sb, dbv, a->Hb, a->bias_vec ? a->bias_ix.R : 0, nitem_b, H, NC);
    fz_shared_init(&sk, drelk, a->Hrk, a->relk ? a->relk_ix.R * D : 0, nitem_b, H, NC);
    fz_shared_init(&sq, drelq, a->Hrq, a->relq ? a->relq_ix.R * D : 0, nitem_b, H, NC);
    fz_shared_init(&sv, drelv, a->Hrv, a->relv ? a->relv_ix.R * Dv : 0, nitem_b, H, NC);
    /* dq and dqr of (b, h) as tables with B*H heads fed by the NC chunks */
    fz_shared_init(&sdq, g->dq, B * H, Tq * D, 1, B * H, NC);
    fz_shared_init(&sdqr, a->qr ? dqr : NULL, B * H, Tq * D, 1, B * H, NC);
    fz_shared_init(&spu, dpu, 1, a->pwl_u ? a->pwl_ix.R : 0, nitem_b, H, NC);
    fz_shared_init(&spw, dpw, 1, Tq, nitem_b, H, NC);
    fz_shared_init(&sps, dps, a->Hp, a->pwl_S, nitem_b, H, NC);
    fz_shared_init(&spi, dpi, a->Hp, a->pwl_S, nitem_b, H, NC);
    enum { NSH = 10 };
    fz_shared *sh[NSH] = {&sb, &sk, &sq, &sv, &sdq, &sdqr, &spu, &spw, &sps, &spi};
    int fail = 0;
    for (int s = 0; s < NSH; s++) {
        if (sh[s]->dst && !sh[s]->direct) {
            sh[s]->part = rp_calloc((size_t)(nitems * sh[s]->per), sizeof(float));
            if (!sh[s]->part) fail = 1;
        }
    }
    int nt = rp_par_threads();
    if (nt < 1) nt = 1;
    if (nitems < nt) nt = (int)nitems;
    const size_t per = fz_scr_floats(D, Dv, Tq);
    float *scr = fail ? NULL : rp_malloc(sizeof(float) * per * (size_t)nt);
    if (!scr) {
        for (int s = 0; s < NSH; s++) rp_free(sh[s]->part);
        return RP_ENOMEM;
    }
    const int need_ds = g->dq || g->dk || dqr || drelk || drelq || dbv || dbf || dpu || dpw || dps || dpi;
    rp_attn_grads gg = *g;
    gg.dqr = dqr;
    float *ptab = fz_pwl_tab_new(&c); /* the tiles' logits are formed again: the forward's table */
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#if RP_HAVE_OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        fz_scr w = fz_scr_at(scr + per * (size_t)tid, D, Dv);
        fz_pwl_tab_fill(a, ptab);
#if RP_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t it = 0; it < nitems; it++) {
            const int64_t bi = it / (H * NC), h = (it / NC) % H;
            fz_dst t;
            t.chunk = it % NC;
            t.nchunk = NC;
            t.dbias_vec = fz_shared_at(&sb, it, h);
            t.drelk = fz_shared_at(&sk, it, h);
            t.drelq = fz_shared_at(&sq, it, h);
            t.drelv = fz_shared_at(&sv, it, h);
            t.dpwl_u = fz_shared_at(&spu, it, h);
            t.dpwl_w = fz_shared_at(&spw, it, h);
            t.dpwl_slope = fz_shared_at(&sps, it, h);
            t.dpwl_icpt = fz_shared_at(&spi, it, h);
            for (int64_t b = hmode ? 0 : bi; b < (hmode ? B : bi + 1); b++) {
                t.dbias_full = dbf ? dbf + ((a->Bf == 1 ? 0 : b) * H + h) * Tq * Tk : NULL;
                /* NC > 1 only without hmode, so b == bi here and the item index is that of (b, h) */
                /* dq: its own rows when one item feeds them, else the chunk's dense partial */
                t.dq = !g->dq ? NULL : sdq.direct ? g->dq + fz_at(dqrw, b, h, 0) : fz_shared_at(&sdq, it, b * H + h);
                t.dq_ld = sdq.direct ? dqrw.si : D;
                t.dqr = fz_shared_at(&sdqr, it, b * H + h);
                bwd_head(&c, &w, b, h, out, lse, dout, &gg, &t, need_ds);
            }
        }
    }
    rp_free(scr);
    rp_free(ptab);
    if (g->dq && !sdq.direct) {
        fz_dq_finish(g->dq, dqrw, sdq.part, B, H, Tq, D, NC);
        sdq.dst = NULL; /* finished */
    }
    for (int s = 0; s < NSH; s++) {
        fz_shared_finish(sh[s]);
        rp_free(sh[s]->part);
    }
    return RP_OK;
}
