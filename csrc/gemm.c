/* gemm area: packed, cache-blocked SGEMM (GotoBLAS/BLIS loop structure),
 * the Linear forward with a fused bias epilogue, the column sum for the bias
 * gradient, and the FMA peak probe.
 *
 * Loops, outer to inner:   jc (NC columns of C)
 *                            pc (KC of the K dimension)   -> pack op(B) block, shared by all threads
 *                              ic (MC rows of C)           -> pack op(A) block, one per thread
 *                                jr (NR) / ir (MR)          -> micro-kernel
 * The K split (pc) depends on K only; each thread owns whole MR x NR tiles of
 * C for a given pc, and the pc blocks are applied in order (barrier between),
 * so every C element is summed in the same order for any thread count.
 */
#include "gemm.h"

#include <string.h>
#include <time.h>

#define MR RP_GEMM_MR
#define NR RP_GEMM_NR

/* Cache blocking. KC x NR B panel (16 KiB) sits in L1, the MC x KC A block
 * (144 KiB) in L2, the KC x NC B block (3 MiB) in L3. */
#define KC 256
#define MC 144
#define NC 3072

/* Problems with at most this many multiply-adds skip packing. */
#define SMALL_MNK (32 * 32 * 32)

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ---- portable micro-kernel ------------------------------------------- */

static void ukr_portable(int64_t kc, const float *restrict Ap, const float *restrict Bp, float *restrict C,
                         int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta, const float *bias) {
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *a = Ap + p * MR;
        const float *b = Bp + p * NR;
        for (int i = 0; i < MR; i++) {
            float ai = a[i];
            for (int j = 0; j < NR; j++) acc[i][j] += ai * b[j];
        }
    }
    for (int64_t i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        for (int64_t j = 0; j < nr; j++) {
            float v = alpha * acc[i][j];
            if (beta != 0.0f) v = beta * c[j] + v;
            if (bias) v = v + bias[j];
            c[j] = v;
        }
    }
}

/* ---- packing --------------------------------------------------------- */

/* op(A)[i0:i0+mc, p0:p0+kc] -> Ap as ceil(mc/MR) panels of (kc x MR), zero padded. */
static void pack_a(int ta, const float *A, int64_t lda, int64_t i0, int64_t p0, int64_t mc, int64_t kc,
                   float *restrict Ap) {
    for (int64_t ir = 0; ir < mc; ir += MR) {
        int64_t mr = min64(MR, mc - ir);
        float *dst = Ap + ir * kc;
        if (!ta) {
            for (int64_t i = 0; i < mr; i++) {
                const float *src = A + (i0 + ir + i) * lda + p0;
                for (int64_t p = 0; p < kc; p++) dst[p * MR + i] = src[p];
            }
            for (int64_t i = mr; i < MR; i++)
                for (int64_t p = 0; p < kc; p++) dst[p * MR + i] = 0.0f;
        } else {
            for (int64_t p = 0; p < kc; p++) {
                const float *src = A + (p0 + p) * lda + i0 + ir;
                float *d = dst + p * MR;
                for (int64_t i = 0; i < mr; i++) d[i] = src[i];
                for (int64_t i = mr; i < MR; i++) d[i] = 0.0f;
            }
        }
    }
}

/* op(B)[p0:p0+kc, j0+jr0*NR : ...] panels jr0..jr1 -> Bp panels (kc x NR), zero padded. */
static void pack_b(int tb, const float *B, int64_t ldb, int64_t p0, int64_t j0, int64_t nc, int64_t kc,
                   int64_t jr0, int64_t jr1, float *restrict Bp) {
    for (int64_t q = jr0; q < jr1; q++) {
        int64_t jr = q * NR;
        int64_t nr = min64(NR, nc - jr);
        float *dst = Bp + jr * kc;
        if (!tb) {
            for (int64_t p = 0; p < kc; p++) {
                const float *src = B + (p0 + p) * ldb + j0 + jr;
                float *d = dst + p * NR;
                if (nr == NR) {
                    memcpy(d, src, NR * sizeof(float));
                } else {
                    for (int64_t j = 0; j < nr; j++) d[j] = src[j];
                    for (int64_t j = nr; j < NR; j++) d[j] = 0.0f;
                }
            }
        } else {
            for (int64_t j = 0; j < nr; j++) {
                const float *src = B + (j0 + jr + j) * ldb + p0;
                for (int64_t p = 0; p < kc; p++) dst[p * NR + j] = src[p];
            }
            for (int64_t j = nr; j < NR; j++)
                for (int64_t p = 0; p < kc; p++) dst[p * NR + j] = 0.0f;
        }
    }
}

/* ---- drivers ----------------------------------------------------------- */

typedef struct {
    int ta, tb;
    int64_t M, N, K;
    float alpha, beta;
    const float *A, *B, *bias;
    int64_t lda, ldb, ldc;
    float *C;
} gemm_prob;

static inline float op_a(const gemm_prob *g, int64_t i, int64_t p) {
    return g->ta ? g->A[p * g->lda + i] : g->A[i * g->lda + p];
}

/* C = beta*C (+ bias) when there is nothing to multiply (K == 0 or alpha == 0). */
static void scale_only(const gemm_prob *g) {
    for (int64_t i = 0; i < g->M; i++) {
        float *c = g->C + i * g->ldc;
        for (int64_t j = 0; j < g->N; j++) {
            float v = g->beta != 0.0f ? g->beta * c[j] : 0.0f;
            if (g->bias) v = v + g->bias[j];
            c[j] = v;
        }
    }
}

/* Tiny problems: no packing, one pass per output row, K summed in order. */
#define SMALL_NB 64
static void gemm_small(const gemm_prob *g) {
    for (int64_t i = 0; i < g->M; i++) {
        float *c = g->C + i * g->ldc;
        for (int64_t j0 = 0; j0 < g->N; j0 += SMALL_NB) {
            int64_t nb = min64(SMALL_NB, g->N - j0);
            float acc[SMALL_NB];
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
            if (!g->tb) {
                for (int64_t p = 0; p < g->K; p++) {
                    float a = op_a(g, i, p);
                    const float *b = g->B + p * g->ldb + j0;
                    for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j];
                }
            } else {
                for (int64_t j = 0; j < nb; j++) {
                    const float *b = g->B + (j0 + j) * g->ldb;
                    float s = 0.0f;
                    for (int64_t p = 0; p < g->K; p++) s += op_a(g, i, p) * b[p];
                    acc[j] = s;
                }
            }
            for (int64_t j = 0; j < nb; j++) {
                float v = g->alpha * acc[j];
                if (g->beta != 0.0f) v = g->beta * c[j0 + j] + v;
                if (g->bias) v = v + g->bias[j0 + j];
                c[j0 + j] = v;
            }
        }
    }
}

static int use_small(const gemm_prob *g) { return g->M * g->N * g->K <= SMALL_MNK; }

/* Row-block size for M rows shared by nt threads: a multiple of MR, at most
 * MC, and giving a number of blocks that is a multiple of nt when possible.
 * It only moves tile boundaries along M, never the K order. */
static int64_t pick_mc(int64_t M, int nt) {
    int64_t nblk = round_up(ceil_div(M, MC), nt);
    int64_t mc = round_up(ceil_div(M, nblk), MR);
    return mc < MR ? MR : mc;
}

/* The blocked product, run by thread `tid` of a team of `nt` (nt == 1: alone,
 * no barriers). Ap: this thread's MC x KC buffer; Bp: the team's KC x NC buffer. */
static void gemm_blocked(const gemm_prob *g, int tid, int nt, float *Ap, float *Bp, rp_gemm_ukr_fn ukr) {
    const int64_t M = g->M, N = g->N, K = g->K;
    const int64_t mc_blk = pick_mc(M, nt);
    const int64_t n_ic = ceil_div(M, mc_blk);
    for (int64_t j0 = 0; j0 < N; j0 += NC) {
        const int64_t nc = min64(NC, N - j0);
        const int64_t n_jr = ceil_div(nc, NR);
        /* few row blocks: split the column panels as well (A block packed twice) */
        const int64_t jchunks = n_ic >= nt ? 1 : min64(nt, n_jr);
        const int64_t ntask = n_ic * jchunks;
        for (int64_t p0 = 0; p0 < K; p0 += KC) {
            const int64_t kc = min64(KC, K - p0);
            int64_t lo, hi;
            rp_chunk(n_jr, nt, tid, &lo, &hi);
            pack_b(g->tb, g->B, g->ldb, p0, j0, nc, kc, lo, hi, Bp);
#if RP_HAVE_OPENMP
            if (nt > 1) {
#pragma omp barrier
            }
#endif
            const float beta = p0 == 0 ? g->beta : 1.0f;
            const float *bias = (p0 == 0 && g->bias) ? g->bias + j0 : NULL;
            int64_t t0, t1, packed_ic = -1;
            rp_chunk(ntask, nt, tid, &t0, &t1);
            for (int64_t t = t0; t < t1; t++) {
                int64_t ic = t / jchunks, jc = t % jchunks;
                int64_t i0 = ic * mc_blk;
                int64_t mc = min64(mc_blk, M - i0);
                if (i0 >= M) continue;
                if (packed_ic != ic) {
                    pack_a(g->ta, g->A, g->lda, i0, p0, mc, kc, Ap);
                    packed_ic = ic;
                }
                int64_t q0, q1;
                rp_chunk(n_jr, jchunks, jc, &q0, &q1);
                for (int64_t q = q0; q < q1; q++) {
                    int64_t jr = q * NR;
                    int64_t nr = min64(NR, nc - jr);
                    const float *bp = Bp + jr * kc;
                    const float *bb = bias ? bias + jr : NULL;
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        int64_t mr = min64(MR, mc - ir);
                        float *c = g->C + (i0 + ir) * g->ldc + j0 + jr;
                        ukr(kc, Ap + ir * kc, bp, c, g->ldc, mr, nr, g->alpha, beta, bb);
                    }
                }
            }
#if RP_HAVE_OPENMP
            if (nt > 1) {
#pragma omp barrier
            }
#endif
        }
    }
}

static rp_gemm_ukr_fn pick_ukr(void) {
#if RP_HAVE_AVX2_TU
    if (rp_simd_enabled()) return rp_gemm_ukr_avx2;
#endif
    return ukr_portable;
}

static int check_args(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, int ta, int tb) {
    if (M < 0 || N < 0 || K < 0) return RP_EINVAL;
    if (lda < (ta ? M : K) || ldb < (tb ? K : N) || ldc < N) return RP_EINVAL;
    return RP_OK;
}

/* The general entry: batch products with strides, optional bias row vector. */
static int gemm_run(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc, const float *bias,
                    int64_t batch, int64_t sA, int64_t sB, int64_t sC) {
    int rc = check_args(M, N, K, lda, ldb, ldc, ta, tb);
    if (rc) return rc;
    if (batch < 0) return RP_EINVAL;
    if (M == 0 || N == 0 || batch == 0) return RP_OK;
    gemm_prob g0 = {ta, tb, M, N, K, alpha, beta, A, B, bias, lda, ldb, ldc, C};
    const int nothing = (K == 0 || alpha == 0.0f);
    const int small = use_small(&g0);
    int nt = rp_get_num_threads();
    if (nt < 1) nt = 1;
    const int64_t mnk = M * N * K;

    if (nothing || small) {
        /* cheap per product: spread the batch over threads if it pays */
        int par = RP_HAVE_OPENMP && nt > 1 && batch > 1 && (M * N * (K + 1)) * batch > 65536;
        (void)par;
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (par)
#endif
        for (int64_t b = 0; b < batch; b++) {
            gemm_prob g = g0;
            g.A = A + b * sA;
            g.B = B + b * sB;
            g.C = C + b * sC;
            if (nothing)
                scale_only(&g);
            else
                gemm_small(&g);
        }
        return RP_OK;
    }

    rp_gemm_ukr_fn ukr = pick_ukr();
    const int64_t kc_max = min64(K, KC);
    /* sizes rounded to 64 bytes so every buffer (and every NR panel) stays aligned */
    const int64_t a_elems = round_up(round_up(min64(M, MC), MR) * kc_max, 16);
    const int64_t b_elems = round_up(round_up(min64(N, NC), NR) * kc_max, 16);

    /* many moderate products: one product per thread at a time, private buffers */
    const int per_batch = nt > 1 && batch >= nt && (mnk <= (int64_t)256 * 256 * 256 || batch >= 4 * nt);
    if (nt == 1 || per_batch || !RP_HAVE_OPENMP) {
        int teams = per_batch ? nt : 1;
        float *Ap = rp_malloc((size_t)(a_elems + b_elems) * sizeof(float) * (size_t)teams);
        if (!Ap) return RP_ENOMEM;
        (void)teams;
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(teams) if (teams > 1)
#endif
        {
            int tid = 0;
#if RP_HAVE_OPENMP
            tid = omp_get_thread_num();
#endif
            float *ap = Ap + (size_t)tid * (size_t)(a_elems + b_elems);
            float *bp = ap + a_elems;
#if RP_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t b = 0; b < batch; b++) {
                gemm_prob g = g0;
                g.A = A + b * sA;
                g.B = B + b * sB;
                g.C = C + b * sC;
                gemm_blocked(&g, 0, 1, ap, bp, ukr);
            }
        }
        rp_free(Ap);
        return RP_OK;
    }

    /* one product at a time, the whole team on it */
    float *buf = rp_malloc((size_t)(a_elems * nt + b_elems) * sizeof(float));
    if (!buf) return RP_ENOMEM;
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num();
        int team = omp_get_num_threads();
        float *ap = buf + b_elems + (size_t)tid * (size_t)a_elems;
        for (int64_t b = 0; b < batch; b++) {
            gemm_prob g = g0;
            g.A = A + b * sA;
            g.B = B + b * sB;
            g.C = C + b * sC;
            gemm_blocked(&g, tid, team, ap, buf, ukr);
        }
    }
#endif
    rp_free(buf);
    return RP_OK;
}

int rp_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
            int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    return gemm_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, 1, 0, 0, 0);
}

int rp_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                    int64_t ldc, int64_t batch, int64_t strideA, int64_t strideB, int64_t strideC) {
    return gemm_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, batch, strideA,
                    strideB, strideC);
}

/* Y (M, N) = X (M, K) · W (N, K)ᵀ + bias (N,) */
int rp_gemm_linear_fwd(int64_t M, int64_t N, int64_t K, const float *X, const float *W, const float *bias,
                       float *Y) {
    return gemm_run(0, 1, M, N, K, 1.0f, X, K, W, K, 0.0f, Y, N, bias, 1, 0, 0, 0);
}

/* ---- column sum --------------------------------------------------------- */

#define COLSUM_ROWS 128 /* rows per partial sum */
#define COLSUM_COLS 512 /* columns per work item */

/* out (N,) = Σ_m X (M, N)[m, :]. Work items are column strips (any thread
 * sums a whole strip), rows are summed in fixed blocks of COLSUM_ROWS whose
 * partial sums are added in order. */
int rp_colsum(const float *X, int64_t M, int64_t N, float *out) {
    if (M < 0 || N < 0) return RP_EINVAL;
    if (N == 0) return RP_OK;
    const int64_t nstrip = ceil_div(N, COLSUM_COLS);
    int nt = rp_get_num_threads();
    (void)nt;
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && M * N > 32768 && nstrip > 1)
#endif
    for (int64_t s = 0; s < nstrip; s++) {
        const int64_t j0 = s * COLSUM_COLS;
        const int64_t nb = min64(COLSUM_COLS, N - j0);
        float total[COLSUM_COLS], part[COLSUM_COLS];
        for (int64_t j = 0; j < nb; j++) total[j] = 0.0f;
        for (int64_t m0 = 0; m0 < M; m0 += COLSUM_ROWS) {
            const int64_t m1 = min64(M, m0 + COLSUM_ROWS);
            for (int64_t j = 0; j < nb; j++) part[j] = 0.0f;
            for (int64_t m = m0; m < m1; m++) {
                const float *x = X + m * N + j0;
                for (int64_t j = 0; j < nb; j++) part[j] += x[j];
            }
            for (int64_t j = 0; j < nb; j++) total[j] += part[j];
        }
        for (int64_t j = 0; j < nb; j++) out[j0 + j] = total[j];
    }
    return RP_OK;
}

/* ---- FMA peak ------------------------------------------------------------ */

static double now_seconds(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Portable: 64 independent multiply-add chains the compiler can vectorise. */
static double peak_portable(int threads, double seconds) {
    double total = 0.0;
#if RP_HAVE_OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
    {
        float acc[64];
        volatile float sink = 0.0f;
        for (int i = 0; i < 64; i++) acc[i] = (float)i * 1e-3f;
        const float x = 0.999999f, y = 1e-7f;
        const int64_t chunk = 1 << 16;
        int64_t iters = 0;
        double t0 = now_seconds(), t;
        do {
            for (int64_t r = 0; r < chunk; r++)
                for (int i = 0; i < 64; i++) acc[i] = acc[i] * x + y;
            iters += chunk;
            t = now_seconds() - t0;
        } while (t < seconds);
        for (int i = 0; i < 64; i++) sink += acc[i];
        (void)sink;
        total += 2.0 * 64.0 * (double)iters / t * 1e-9;
    }
    return total;
}

double rp_fma_peak_gflops(int threads, double seconds) {
    if (threads <= 0) threads = rp_get_num_threads();
    if (!(seconds > 0.0)) seconds = 0.2;
#if !RP_HAVE_OPENMP
    threads = 1;
#endif
#if RP_HAVE_AVX2_TU
    if (rp_simd_enabled()) return rp_fma_peak_gflops_avx2(threads, seconds);
#endif
    return peak_portable(threads, seconds);
}
