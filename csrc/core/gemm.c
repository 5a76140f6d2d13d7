/* gemm area: packed, cache-blocked SGEMM (GotoBLAS/BLIS loop structure),
 * the Linear forward with a fused bias epilogue, the column sum for the bias
 * gradient, and the FMA peak probe.
 *
 * One product, outer to inner:
 *   jc  NC columns of C:     op(B)[:, jc] for ALL of K is packed into KC-deep
 *                            blocks of NR-wide panels shared by the team; each
 *                            panel is packed on first use by whichever thread
 *                            needs it first (atomic flags, no barrier)
 *   task (ic, j-chunk)       MC rows x a run of NR panels, handed out through
 *                            an atomic counter (dynamic balance)
 *     pc  KC of K:           pack op(A)[ic, pc] (MR-wide panels, L2-resident)
 *       jr / ir              micro-kernel on an MR x NR tile (B panel in L1)
 * With few rows and a large B (jit_b) the pc loop moves outside the tasks instead:
 * each KC block of B is packed just before the tasks use it, a barrier between blocks.
 * A task owns its C tiles for every pc, and applies the pc blocks in order, so
 * each C element is summed in the same order whichever thread runs the task
 * and however many threads there are: results are bit-identical for any
 * thread count. Only the K split (KC) and the kernel fix the rounding.
 * Waits between threads yield the CPU (team_wait, ensure_panels): spinning
 * waiters starve their partner on a loaded machine.
 *
 * Other paths: tiny products (<= SMALL_MNK multiply-adds), few-row ones
 * (M <= DIRECT_M_MAX) and few-column ones (N <= DIRECT_N_MAX) skip packing
 * (gemm_direct_block); batches of moderate
 * products give each thread whole products (gemm_alone, private buffers).
 * Micro-kernels: AVX-512 12x32 and AVX2 6x16 (gemm_x86.c), portable 6x16 here.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime(CLOCK_THREAD_CPUTIME_ID) */
#include "gemm.h"

#include <sched.h>
#include <string.h>
#include <time.h>

/* Cache blocking (elements). The KC x NR B panel sits in L1, the MC x KC A
 * block in L2, the K x NC packed B in L3. MC is rounded to the kernel's MR. */
#ifndef RP_GEMM_KC /* compile-time overrides are for tuning experiments only */
#define RP_GEMM_KC 256
#endif
#ifndef RP_GEMM_MC
#define RP_GEMM_MC 144
#endif
#ifndef RP_GEMM_NC
#define RP_GEMM_NC 4096
#endif
#define KC ((int64_t)RP_GEMM_KC)
#define MC ((int64_t)RP_GEMM_MC)
#define NC ((int64_t)RP_GEMM_NC)

/* Problems with at most this many multiply-adds skip packing. */
#define SMALL_MNK (32 * 32 * 32)

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ---- portable micro-kernel (6 x 16) ------------------------------------ */

#define PMR 6
#define PNR 16

static void ukr_portable(int64_t kc, const float *restrict Ap, const float *restrict Bp, float *restrict C, int64_t ldc,
                         int64_t mr, int64_t nr, float alpha, float beta, const float *bias) {
    float acc[PMR][PNR];
    for (int i = 0; i < PMR; i++)
        for (int j = 0; j < PNR; j++) acc[i][j] = 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *a = Ap + p * PMR;
        const float *b = Bp + p * PNR;
        for (int i = 0; i < PMR; i++) {
            float ai = a[i];
            for (int j = 0; j < PNR; j++) acc[i][j] += ai * b[j];
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

/* ---- kernel choice --------------------------------------------------------- */

typedef void (*pack_panel_fn)(const float *A, int64_t lda, int64_t kc, int MR, float *dst);

typedef struct {
    int mr, nr;
    rp_gemm_ukr_fn fn;
    pack_panel_fn pack_rows; /* full panels of row-major A / transposed B; NULL: plain C */
    const char *name;
    rp_gemm_ukr_strided_fn fn_strided; /* the tile on operands read in place; NULL: packed panels only */
} kernel_t;

static const kernel_t k_portable = {PMR, PNR, ukr_portable, NULL, "portable", NULL};
#if RP_HAVE_X86_TU
static const kernel_t k_avx2 = {RP_GEMM_AVX2_MR,        RP_GEMM_AVX2_NR, rp_gemm_ukr_avx2,
                                rp_gemm_pack_rows_avx2, "avx2",          NULL};
static const kernel_t k_avx512 = {RP_GEMM_AVX512_MR,      RP_GEMM_AVX512_NR, rp_gemm_ukr_avx512,
                                  rp_gemm_pack_rows_avx2, "avx512",          rp_gemm_ukr_avx512_strided};
#endif

static int kernel_pref = 0; /* 0 auto, 1 avx512, 2 avx2, 3 portable */

static const kernel_t *pick_kernel(void) {
    int pref = __atomic_load_n(&kernel_pref, __ATOMIC_RELAXED);
#if RP_HAVE_X86_TU
    if (rp_simd_enabled() && pref != 3) {
        if ((pref == 0 || pref == 1) && rp_gemm_cpu_avx512()) return &k_avx512;
        return &k_avx2;
    }
#endif
    (void)pref;
    return &k_portable;
}

int rp_gemm_set_kernel(int which) {
    if (which < 0 || which > 3) return RP_EINVAL;
    if (which == 1 && !(rp_simd_enabled() && rp_gemm_cpu_avx512())) return RP_ENOSIMD;
    if (which == 2 && !rp_simd_enabled()) return RP_ENOSIMD;
    __atomic_store_n(&kernel_pref, which, __ATOMIC_RELAXED);
    return RP_OK;
}

const char *rp_gemm_kernel_name(void) { return pick_kernel()->name; }

/* ---- packing ---------------------------------------------------------------- */

/* Copy n (= MR, a compile-time constant at each call site) floats: inlined moves. */
#define COPY_ROW(d, s, n) memcpy((d), (s), (size_t)(n) * sizeof(float))

/* Rows fetched ahead when packing strided rows (a transposed A, a row-major B). */
#define PACK_AHEAD 4

/* op(A)[i0:i0+mc, p0:p0+kc] -> Ap as ceil(mc/MR) panels of (kc x MR), zero padded. */
static void pack_a(int ta, const float *A, int64_t lda, int64_t i0, int64_t p0, int64_t mc, int64_t kc,
                   const kernel_t *kn, float *restrict Ap) {
    const int MR = kn->mr;
    if (ta) {
        /* A is (K, M): panel by panel, the MR contiguous floats of each of
         * the kc rows, so each panel is written in order (dealing every row
         * out to all panels at once wrote mc/MR streams 4 KB apart and
         * stalled on them). The rows are lda apart: fetch a few ahead. */
        const int64_t full = mc / MR * MR;
        int64_t ir = 0;
        for (; ir < full; ir += MR) {
            const float *src = A + p0 * lda + i0 + ir;
            float *restrict dst = Ap + ir * kc;
            if (MR == 12) {
                for (int64_t p = 0; p < kc; p++) {
                    if (p + PACK_AHEAD < kc) __builtin_prefetch(src + (p + PACK_AHEAD) * lda, 0, 3);
                    COPY_ROW(dst + p * 12, src + p * lda, 12);
                }
            } else if (MR == 6) {
                for (int64_t p = 0; p < kc; p++) {
                    if (p + PACK_AHEAD < kc) __builtin_prefetch(src + (p + PACK_AHEAD) * lda, 0, 3);
                    COPY_ROW(dst + p * 6, src + p * lda, 6);
                }
            } else {
                for (int64_t p = 0; p < kc; p++) COPY_ROW(dst + p * MR, src + p * lda, MR);
            }
        }
        for (; ir < mc; ir += MR) {
            const int64_t mr = min64(MR, mc - ir);
            const float *src = A + p0 * lda + i0 + ir;
            float *restrict dst = Ap + ir * kc;
            for (int64_t p = 0; p < kc; p++) {
                for (int64_t i = 0; i < mr; i++) dst[p * MR + i] = src[p * lda + i];
                for (int64_t i = mr; i < MR; i++) dst[p * MR + i] = 0.0f;
            }
        }
        return;
    }
    for (int64_t ir = 0; ir < mc; ir += MR) {
        const int64_t mr = min64(MR, mc - ir);
        float *restrict dst = Ap + ir * kc;
        const float *src = A + (i0 + ir) * lda + p0;
        if (mr == MR && kn->pack_rows) {
            kn->pack_rows(src, lda, kc, MR, dst);
            continue;
        }
        for (int64_t i = 0; i < mr; i++)
            for (int64_t p = 0; p < kc; p++) dst[p * MR + i] = src[i * lda + p];
        for (int64_t i = mr; i < MR; i++)
            for (int64_t p = 0; p < kc; p++) dst[p * MR + i] = 0.0f;
    }
}

/* Panel of op(B)[p0:p0+kc, j:j+nr] -> dst (kc x NR), zero padded. */
static void pack_b_panel(int tb, const float *B, int64_t ldb, int64_t p0, int64_t kc, int64_t j, int64_t nr,
                         const kernel_t *kn, float *restrict dst) {
    const int NR = kn->nr;
    if (!tb) {
        const float *src = B + p0 * ldb + j;
        if (nr == NR && NR == 32) {
            /* rows ldb apart: fetched a few ahead (a 4 KB stride crosses a page every
             * row, where the hardware prefetcher stops) */
            for (int64_t p = 0; p < kc; p++) {
                if (p + PACK_AHEAD < kc) {
                    __builtin_prefetch(src + (p + PACK_AHEAD) * ldb, 0, 3);
                    __builtin_prefetch(src + (p + PACK_AHEAD) * ldb + 16, 0, 3);
                }
                COPY_ROW(dst + p * 32, src + p * ldb, 32);
            }
        } else if (nr == NR && NR == 16) {
            for (int64_t p = 0; p < kc; p++) COPY_ROW(dst + p * 16, src + p * ldb, 16);
        } else {
            for (int64_t p = 0; p < kc; p++) {
                for (int64_t jj = 0; jj < nr; jj++) dst[p * NR + jj] = src[p * ldb + jj];
                for (int64_t jj = nr; jj < NR; jj++) dst[p * NR + jj] = 0.0f;
            }
        }
    } else if (nr == NR && kn->pack_rows) {
        kn->pack_rows(B + j * ldb + p0, ldb, kc, NR, dst);
    } else {
        for (int64_t jj = 0; jj < nr; jj++) {
            const float *src = B + (j + jj) * ldb + p0;
            for (int64_t p = 0; p < kc; p++) dst[p * NR + jj] = src[p];
        }
        for (int64_t jj = nr; jj < NR; jj++)
            for (int64_t p = 0; p < kc; p++) dst[p * NR + jj] = 0.0f;
    }
}

/* ---- scratch -------------------------------------------------------------
 * The packed buffers (up to K x NC floats of B) are kept for the next call:
 * a fresh allocation of that size is mmap'ed and page-faulted on every call,
 * which costs 10-20% of a 1024^3 product. One buffer is cached (taken and
 * returned with atomic exchanges, so concurrent callers each get their own);
 * buffers larger than SCRATCH_KEEP_MAX are freed after use. */
#define SCRATCH_HDR 64
#define SCRATCH_KEEP_MAX ((size_t)64 << 20)
static char *scratch_slot = NULL; /* allocation base; its usable size is stored at the base */

static float *scratch_take(size_t nbytes) {
    char *p = __atomic_exchange_n(&scratch_slot, NULL, __ATOMIC_ACQ_REL);
    if (p && *(size_t *)p >= nbytes) return (float *)(p + SCRATCH_HDR);
    rp_free(p);
    if (nbytes > SIZE_MAX - SCRATCH_HDR) return NULL;
    p = rp_malloc(nbytes + SCRATCH_HDR);
    if (!p) return NULL;
    *(size_t *)p = nbytes;
    return (float *)(p + SCRATCH_HDR);
}

static void scratch_give(float *buf) {
    if (!buf) return;
    char *p = (char *)buf - SCRATCH_HDR;
    if (*(size_t *)p > SCRATCH_KEEP_MAX) {
        rp_free(p);
        return;
    }
    rp_free(__atomic_exchange_n(&scratch_slot, p, __ATOMIC_ACQ_REL));
}

/* ---- drivers ------------------------------------------------------------------ */

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

/* Direct (unpacked) product on the columns [j0, j0+nb) of C, nb <= DIRECT_NB,
 * rows [i0, i1), for tiny problems, few rows (M <= DIRECT_M_MAX: a GEMV-like Linear at
 * generation time), where packing B would cost as much as the product.
 * Each element's K order is fixed: in order for B (K, N); for B given as
 * (N, K), DIRECT_LANES interleaved partial sums over p added in a fixed tree. */
#define DIRECT_NB 64
#define DIRECT_LANES 8
#define DIRECT_M_MAX 4
#define DIRECT_N_MAX 4
#define DIRECT_ROWS 64 /* rows per work item when N <= DIRECT_N_MAX */
static void gemm_direct_block(const gemm_prob *g, int64_t i0, int64_t i1, int64_t j0, int64_t nb) {
    const int64_t K = g->K;
    for (int64_t i = i0; i < i1; i++) {
        float *c = g->C + i * g->ldc + j0;
        float acc[DIRECT_NB];
        if (!g->tb) {
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
            for (int64_t p = 0; p < K; p++) {
                const float a = op_a(g, i, p);
                const float *b = g->B + p * g->ldb + j0;
                for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j];
            }
        } else {
            const float *arow = g->ta ? NULL : g->A + i * g->lda;
            for (int64_t j = 0; j < nb; j++) {
                const float *b = g->B + (j0 + j) * g->ldb;
                float part[DIRECT_LANES] = {0.0f};
                int64_t p = 0;
                if (arow) {
                    for (; p + DIRECT_LANES <= K; p += DIRECT_LANES)
                        for (int l = 0; l < DIRECT_LANES; l++) part[l] += arow[p + l] * b[p + l];
                } else {
                    for (; p + DIRECT_LANES <= K; p += DIRECT_LANES)
                        for (int l = 0; l < DIRECT_LANES; l++) part[l] += op_a(g, i, p + l) * b[p + l];
                }
                for (int l = 0; p < K; p++, l++) part[l] += op_a(g, i, p) * b[p];
                acc[j] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
            }
        }
        for (int64_t j = 0; j < nb; j++) {
            float v = g->alpha * acc[j];
            if (g->beta != 0.0f) v = g->beta * c[j] + v;
            if (g->bias) v = v + g->bias[j0 + j];
            c[j] = v;
        }
    }
}

static void gemm_direct(const gemm_prob *g) {
    for (int64_t j0 = 0; j0 < g->N; j0 += DIRECT_NB) gemm_direct_block(g, 0, g->M, j0, min64(DIRECT_NB, g->N - j0));
}

/* The work split of one product: row blocks of mc (a multiple of MR), and
 * the NR panels of a column block cut into jchunks runs. Depends on the
 * thread count (for balance) but only moves tile ownership, never the K order. */
typedef struct {
    int64_t n_mp, n_ic, jchunks; /* MR-row micro-panels, row tasks, column chunks per row task */
    int mr;
} split_t;

static split_t make_split(int64_t M, int64_t n_jr, int nt, int MR, int NR) {
    split_t s;
    const int64_t mp_max = round_up(MC, MR) / MR; /* micro-panels per row task at most */
    int64_t want = nt > 1 ? 4 * (int64_t)nt : 1;  /* tasks wanted, for dynamic balance */
    s.mr = MR;
    s.n_mp = ceil_div(M, MR);
    s.n_ic = ceil_div(s.n_mp, mp_max);
    /* Too few row blocks: cut the rows finer when C is tall, else cut the
     * columns (every task streams the packed B of its columns, for all K:
     * with wide C that is the larger operand). */
    if (s.n_ic < want && M >= n_jr * NR) s.n_ic = min64(want, s.n_mp);
    s.jchunks = s.n_ic >= want ? 1 : min64(n_jr, ceil_div(want, s.n_ic));
    return s;
}

/* Rows [*i0, *i0 + *mc) of row task ic: the micro-panels are dealt out evenly
 * (rp_chunk), so that tasks differ by one micro-panel at most. (Cutting rows
 * into equal blocks of round_up(M / n_ic, MR) left a short last block: 256
 * rows in 8 tasks were 7 x 36 + 4, and 2 threads did 144 and 112 rows.) */
static void split_rows(const split_t *s, int64_t M, int64_t ic, int64_t *i0, int64_t *mc) {
    int64_t lo, hi;
    rp_chunk(s->n_mp, s->n_ic, ic, &lo, &hi);
    *i0 = lo * s->mr;
    *mc = min64(hi * s->mr, M) - *i0;
}

/* A row-major B's full NR-column panels are read in place (the ukr's B step is then
 * ldb) when a packed panel would serve few micro-tiles or B is small: M <= 256 or
 * K*N <= 64K floats. Interleaved runs: 2-14% faster there (the dW products of the
 * small model, 256^3: 7%), 1-7% slower for M >= 768 with a large B. Not when B's rows
 * are a multiple of 4 KB apart: a panel's KC rows then fall in a few cache sets (one
 * in L1, 64 of L2's 2048 for two lines a row) and evict each other. The large model's
 * fc2 dW (M = 256, N = 1024, K = 4096, 1 thread, best of 7, three alternating
 * processes) ran at 65-78 GFLOP/s read in place, 84-89 packed (NumPy 91-97). Kernels
 * with a strided tile only (AVX-512); the others read packed panels. */
static int b_in_place(const gemm_prob *g, const kernel_t *kn) {
    return kn->fn_strided && !g->tb && g->ldb % 1024 != 0 && (g->M <= 256 || g->K * g->N <= 65536);
}

/* Pack KC-deep blocks of op(B)[:, j0:j0+nc]: block kb at Bp + (kb - kb0)*KC*nc_pad,
 * its panel q at + q*NR*kc. Items [it0, it1) of n_kb * n_jr (kb-major). Full panels
 * that run_task reads in place (b_in_place) are left out. */
static void pack_b_items(const gemm_prob *g, const kernel_t *kn, int64_t j0, int64_t nc, int64_t it0, int64_t it1,
                         float *Bp, int64_t kb0) {
    const int NR = kn->nr;
    const int64_t n_jr = ceil_div(nc, NR), nc_pad = n_jr * NR;
    const int bip = b_in_place(g, kn);
    for (int64_t it = it0; it < it1; it++) {
        int64_t kb = it / n_jr, q = it % n_jr;
        int64_t p0 = kb * KC, kc = min64(KC, g->K - p0);
        if (bip && nc - q * NR >= NR) continue; /* read in place by run_kblock */
        pack_b_panel(g->tb, g->B, g->ldb, p0, kc, j0 + q * NR, min64(NR, nc - q * NR), kn,
                     Bp + (kb - kb0) * KC * nc_pad + q * NR * kc);
    }
}

static void ensure_panels(const gemm_prob *g, const kernel_t *kn, int64_t j0, int64_t nc, int64_t kb, int64_t q0,
                          int64_t q1, float *Bp, int64_t kb0, int *flags);

/* A row-major A's rows are read in place when C is narrow (N <= 192: a packed panel
 * would serve 6 column panels at most, and packing cost more than it saved: 2-14%
 * faster at N = 64..192; at N >= 256 in place was 1-3% slower), unless the rows are
 * a multiple of 4 KB apart: then the MR rows' lines fall in one L1 set and evict
 * each other. */
static int rows_in_place(const gemm_prob *g) { return g->N <= 192 && g->lda % 1024 != 0; }

/* The KC-block at p0 of a task: rows [i0, i0+mc) x panels [q0, q1) of the column
 * block at j0, B's packed block at bblk. The blocks of a task must run in p0 order. */
static void run_kblock(const gemm_prob *g, const kernel_t *kn, int64_t j0, int64_t nc, int64_t i0, int64_t mc,
                       int64_t q0, int64_t q1, int64_t p0, const float *bblk, float *Ap) {
    const int MR = kn->mr, NR = kn->nr;
    const int64_t kc = min64(KC, g->K - p0);
    /* With a kernel that has a strided tile (AVX-512), A's full MR-row panels are
     * read in place and only a last, partial panel is packed: always for a
     * transposed A (dW = dY^T X: the MR floats of each k are contiguous, lda
     * apart; 2-14% faster for the model's dW products, 1 and 2 threads), and for
     * a row-major A when rows_in_place says so. The AVX2 kernel (6 rows, half the
     * FMAs per A load) packs: read in place, a transposed A with N = 256 was 10%
     * slower there, and a generic-stride AVX2 tile ran packed products 5-10% slower. */
    const int64_t direct = kn->fn_strided && (g->ta || rows_in_place(g)) ? mc / MR * MR : 0;
    if (direct < mc) pack_a(g->ta, g->A, g->lda, i0 + direct, p0, mc - direct, kc, kn, Ap + direct * kc);
    const float *adir = g->ta ? g->A + p0 * g->lda + i0 : g->A + i0 * g->lda + p0;
    const int64_t ars = g->ta ? 1 : g->lda, aks = g->ta ? g->lda : 1; /* A in place */
    const float beta = p0 == 0 ? g->beta : 1.0f;
    const float *bias = (p0 == 0 && g->bias) ? g->bias + j0 : NULL;
    const int bip = b_in_place(g, kn);
    for (int64_t q = q0; q < q1; q++) {
        const int64_t jr = q * NR, nr = min64(NR, nc - jr);
        /* full panels of a row-major B in place (see pack_b_items) */
        const int inplace = bip && nr == NR;
        const float *bp = inplace ? g->B + p0 * g->ldb + j0 + jr : bblk + jr * kc;
        const int64_t bks = inplace ? g->ldb : NR;
        const float *bb = bias ? bias + jr : NULL;
        float *c = g->C + i0 * g->ldc + j0 + jr;
        for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = min64(MR, mc - ir);
            float *ct = c + ir * g->ldc;
            if (ir < direct)
                kn->fn_strided(kc, adir + ir * ars, ars, aks, bp, bks, ct, g->ldc, mr, nr, g->alpha, beta, bb);
            else if (inplace)
                kn->fn_strided(kc, Ap + ir * kc, 1, MR, bp, bks, ct, g->ldc, mr, nr, g->alpha, beta, bb);
            else
                kn->fn(kc, Ap + ir * kc, bp, ct, g->ldc, mr, nr, g->alpha, beta, bb);
        }
    }
}

/* One task: rows [i0, i0+mc) x panels [q0, q1) of the column block at j0, all
 * of K. flags == NULL: Bp is already packed; else the panels are packed on
 * first use by whichever thread gets there first (see ensure_panels). */
static void run_task(const gemm_prob *g, const kernel_t *kn, int64_t j0, int64_t nc, int64_t i0, int64_t mc, int64_t q0,
                     int64_t q1, float *Bp, float *Ap, int *flags) {
    const int64_t nc_pad = ceil_div(nc, kn->nr) * kn->nr;
    for (int64_t p0 = 0; p0 < g->K; p0 += KC) {
        if (flags) ensure_panels(g, kn, j0, nc, p0 / KC, q0, q1, Bp, 0, flags);
        run_kblock(g, kn, j0, nc, i0, mc, q0, q1, p0, Bp + (p0 / KC) * KC * nc_pad, Ap);
    }
}

/* B is packed one KC-block at a time, just before the row tasks use it, when the
 * whole packed B would be large (> JIT_B_BYTES) and the rows few (M <= JIT_M_MAX):
 * the block then stays in cache between its packing and its few uses, where packing
 * all of K first wrote it out to memory and read it back once per row task. The
 * k-blocks are then the outer loop and the row tasks the inner one; each C element
 * still sums its k-blocks in order, so the bits do not change. 1 thread, best of 7,
 * three alternating processes: fc2's dW (256 x 1024, K = 4096) 75-86 -> 86-95
 * GFLOP/s, fc1's (1024 x 256) 97-103 -> 104-107, 1024^3 96-101 -> 98-103.
 * A team waits at a barrier between blocks, which costs more than it saves unless the
 * rows are very few (M <= JIT_M_MAX_TEAM): 2 threads, fc2's dW 174-178 -> 183-189,
 * but qkv's (768 x 256) and the output projection's (256 x 256) 2-12% slower. Not for
 * a B read in place (b_in_place): nothing to pack. */
#define JIT_B_BYTES ((int64_t)2 << 20)
#define JIT_M_MAX 1024
#define JIT_M_MAX_TEAM 256
static int jit_b(const gemm_prob *g, const kernel_t *kn, int64_t n_jr, int64_t m_max) {
    return g->K > KC && g->M <= m_max && !b_in_place(g, kn) &&
           g->K * n_jr * kn->nr * (int64_t)sizeof(float) > JIT_B_BYTES;
}

/* Whole product by one thread with its own buffers. */
static void gemm_alone(const gemm_prob *g, const kernel_t *kn, float *Ap, float *Bp) {
    const int64_t n_kb = ceil_div(g->K, KC);
    for (int64_t j0 = 0; j0 < g->N; j0 += NC) {
        const int64_t nc = min64(NC, g->N - j0);
        const int64_t n_jr = ceil_div(nc, kn->nr);
        split_t s = make_split(g->M, n_jr, 1, kn->mr, kn->nr);
        if (jit_b(g, kn, n_jr, JIT_M_MAX)) {
            /* k-blocks outer, row tasks inner: each C element still sums its k-blocks in order */
            for (int64_t kb = 0; kb < n_kb; kb++) {
                pack_b_items(g, kn, j0, nc, kb * n_jr, (kb + 1) * n_jr, Bp, kb);
                for (int64_t ic = 0; ic < s.n_ic; ic++) {
                    int64_t i0, mc;
                    split_rows(&s, g->M, ic, &i0, &mc);
                    run_kblock(g, kn, j0, nc, i0, mc, 0, n_jr, kb * KC, Bp, Ap);
                }
            }
            continue;
        }
        pack_b_items(g, kn, j0, nc, 0, n_kb * n_jr, Bp, 0);
        for (int64_t ic = 0; ic < s.n_ic; ic++) {
            int64_t i0, mc;
            split_rows(&s, g->M, ic, &i0, &mc);
            run_task(g, kn, j0, nc, i0, mc, 0, n_jr, Bp, Ap, NULL);
        }
    }
}

/* B panels of KC-block kb, [q0, q1), packed before use: claim each unpacked
 * panel (0 -> 1) and pack it, then wait (yielding) for panels another thread
 * is packing (1 -> 2). No barrier: a thread that starts late, or is held up,
 * never stalls the others, who pack what they need themselves. */
static void ensure_panels(const gemm_prob *g, const kernel_t *kn, int64_t j0, int64_t nc, int64_t kb, int64_t q0,
                          int64_t q1, float *Bp, int64_t kb0, int *flags) {
    const int64_t n_jr = ceil_div(nc, kn->nr);
    int *f = flags + kb * n_jr;
    for (int64_t q = q0; q < q1; q++) {
        int expect = 0;
        if (__atomic_load_n(&f[q], __ATOMIC_ACQUIRE) == 0 &&
            __atomic_compare_exchange_n(&f[q], &expect, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            pack_b_items(g, kn, j0, nc, kb * n_jr + q, kb * n_jr + q + 1, Bp, kb0);
            __atomic_store_n(&f[q], 2, __ATOMIC_RELEASE);
        }
    }
    for (int64_t q = q0; q < q1; q++)
        while (__atomic_load_n(&f[q], __ATOMIC_ACQUIRE) != 2) sched_yield();
}

#if RP_HAVE_OPENMP
/* Team synchronisation that yields the CPU while it waits. libgomp's own
 * barriers spin (OMP_WAIT_POLICY unset), and on a loaded machine a spinning
 * thread takes the CPU share its partner needs to finish: a 2-thread product
 * then ran 5-20x slower than with OMP_WAIT_POLICY=passive. Work is handed
 * out through atomic counters that the last thread into a barrier resets. */
typedef struct {
    int arrived, gen;
    int64_t next_pack, next_task; /* work counters of the current phase */
} team_sync;

static void team_wait(team_sync *ts, int nt) {
    const int gen = __atomic_load_n(&ts->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&ts->arrived, 1, __ATOMIC_ACQ_REL) == nt) {
        __atomic_store_n(&ts->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&ts->next_pack, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&ts->next_task, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&ts->gen, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&ts->gen, __ATOMIC_ACQUIRE) == gen) sched_yield();
}

/* ---- threads for mid-size products --------------------------------------
 * Below BAND_LO multiply-adds in all a product runs on one thread. From BAND_LO
 * to BAND_HI (the products of a small model's step) a second thread gains
 * 1.2-1.6x on a quiet machine but loses 1.6-2x when another process competes
 * for a core: a descheduled member stalls the whole team (256^3 once ran 25x
 * slower on 2 threads under load). So in this band the calling thread times
 * how long it waits for the others once it has run out of work: work is
 * handed out through an atomic counter, so on a quiet machine that wait is at
 * most one item. A wait over BAND_WAIT_NS and half the call is a stall (another
 * thread was off its core); two stalls within BAND_REPEAT_NS (one can be a
 * hiccup of a quiet VM) make the whole library back off for BAND_BACKOFF_NS
 * (rp_back_off): the band's products and every other kernel's parallel region
 * (rp_par_threads) run on one thread, after which teams are tried again. The
 * other kernels split their work statically, so a stalled member holds up
 * their join just as much: measured on the small model's step (2 vCPUs, one
 * core kept busy by another process), 2 threads took 27 ms when only the GEMM
 * band backed off, against 16 ms on one thread. Products above BAND_HI keep
 * their team (their work is claimed dynamically and a stall costs them little
 * in proportion). Results do not depend on the thread count (see the top of
 * this file), so this changes only speed. */
#define BAND_LO ((int64_t)96 * 96 * 96)
#define BAND_HI ((int64_t)384 * 384 * 384)
#define BAND_WAIT_NS ((int64_t)100000)
#define BAND_BACKOFF_NS ((int64_t)1000000000)
#define BAND_REPEAT_NS ((int64_t)100000000)
/* CLOCK_MONOTONIC ns of the last team call that waited too long */
static int64_t band_last_stall;

/* A team call that starts more than BAND_IDLE_NS after the previous band call
 * ended may find its partner asleep (with a user's short GOMP_SPINCOUNT; the
 * ~7.5 ms spin relpos asks for, relpos/_omp_env.py, outlasts most pauses in a
 * step), and waking it is slow on a VM: its late arrival is not a stall.
 * Without this, a training loop that paused between steps (a data loader, a
 * benchmark's idle gap) backed off at every step's first product. */
#define BAND_IDLE_NS ((int64_t)300000)
static int64_t band_last_end; /* CLOCK_MONOTONIC ns when the last band call ended */

/* team_wait at the end of a region; thread 0 adds its wait to *wait_ns (if given) */
static void leave_team(team_sync *ts, int team, int tid, int64_t *wait_ns) {
    if (tid != 0 || !wait_ns) {
        team_wait(ts, team);
        return;
    }
    const int64_t t = rp_now_ns();
    team_wait(ts, team);
    *wait_ns += rp_now_ns() - t;
}

/* Whole product by the calling team (call from inside a parallel region,
 * every thread with its own Ap, the team sharing Bp and ts). `flags` holds
 * n_kb * n_jr zeroed ints and `next` one zeroed counter per column block of
 * this product. Between column blocks (Bp reused) the team waits. */
static void gemm_team(const gemm_prob *g, const kernel_t *kn, float *Ap, float *Bp, int nt, team_sync *ts, int *flags,
                      int64_t *next, int64_t flags_per_block) {
    int64_t u = 0;
    for (int64_t j0 = 0; j0 < g->N; j0 += NC, u++) {
        const int64_t nc = min64(NC, g->N - j0);
        const int64_t n_jr = ceil_div(nc, kn->nr);
        int *fl = flags + u * flags_per_block;
        if (j0 > 0) team_wait(ts, nt); /* everyone is done with Bp of the previous block */
        split_t s = make_split(g->M, n_jr, nt, kn->mr, kn->nr);
        const int64_t ntask = s.n_ic * s.jchunks;
        /* jit: one KC-block at a time (see jit_b), packed into the buffer's first block on
         * first use, with a barrier between blocks (it resets ts->next_task), so that a
         * task's C tiles take their k-blocks in order whichever thread runs them; else
         * one pass in which each task runs all of K (run_task) */
        const int jit = jit_b(g, kn, n_jr, JIT_M_MAX_TEAM);
        const int64_t passes = jit ? ceil_div(g->K, KC) : 1;
        for (int64_t kb = 0; kb < passes; kb++) {
            if (kb > 0) team_wait(ts, nt);
            int64_t *counter = jit ? &ts->next_task : &next[u];
            for (;;) {
                const int64_t t = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
                if (t >= ntask) break;
                int64_t i0, mc, q0, q1;
                split_rows(&s, g->M, t / s.jchunks, &i0, &mc);
                rp_chunk(n_jr, s.jchunks, t % s.jchunks, &q0, &q1);
                if (mc <= 0 || q0 >= q1) continue;
                if (!jit) {
                    run_task(g, kn, j0, nc, i0, mc, q0, q1, Bp, Ap, fl);
                    continue;
                }
                ensure_panels(g, kn, j0, nc, kb, q0, q1, Bp, kb, fl);
                run_kblock(g, kn, j0, nc, i0, mc, q0, q1, kb * KC, Bp, Ap);
            }
        }
    }
}
#endif

static int check_args(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, int ta, int tb) {
    if (M < 0 || N < 0 || K < 0) return RP_EINVAL;
    if (lda < (ta ? M : K) || ldb < (tb ? K : N) || ldc < N) return RP_EINVAL;
    return RP_OK;
}

/* Work items of the paths that split whole products or fixed chunks of them. */
enum { ITEM_SCALE, ITEM_DIRECT, ITEM_DIRECT_COLS, ITEM_DIRECT_ROWS, ITEM_PRODUCT };

typedef struct {
    int mode;
    gemm_prob g0;
    int64_t sA, sB, sC, nchunk;
    const kernel_t *kn;
    float *buf;         /* ITEM_PRODUCT: per-thread (A, B) buffers */
    int64_t per_thread; /* floats per thread in buf */
    int64_t a_elems;
} items_ctx;

static void run_item(const items_ctx *c, int64_t w, int tid) {
    const int64_t b = (c->mode == ITEM_DIRECT_COLS || c->mode == ITEM_DIRECT_ROWS) ? w / c->nchunk : w;
    const int64_t k = (c->mode == ITEM_DIRECT_COLS || c->mode == ITEM_DIRECT_ROWS) ? w % c->nchunk : 0;
    gemm_prob g = c->g0;
    g.A += b * c->sA;
    g.B += b * c->sB;
    g.C += b * c->sC;
    switch (c->mode) {
    case ITEM_SCALE: scale_only(&g); break;
    case ITEM_DIRECT: gemm_direct(&g); break;
    case ITEM_DIRECT_COLS: gemm_direct_block(&g, 0, g.M, k * DIRECT_NB, min64(DIRECT_NB, g.N - k * DIRECT_NB)); break;
    case ITEM_DIRECT_ROWS: gemm_direct_block(&g, k * DIRECT_ROWS, min64(g.M, (k + 1) * DIRECT_ROWS), 0, g.N); break;
    default: {
        float *ap = c->buf + (size_t)tid * (size_t)c->per_thread;
        gemm_alone(&g, c->kn, ap, ap + c->a_elems);
    }
    }
}

/* Items [0, n) over up to nt threads, handed out `chunk` at a time through an
 * atomic counter; waits yield (see team_sync). Each item's result does not
 * depend on which thread runs it. */
static void run_items(const items_ctx *c, int64_t n, int64_t chunk, int nt, int64_t *wait_ns) {
#if RP_HAVE_OPENMP
    if (nt > 1 && n > 1) {
        team_sync ts = {0, 0, 0, 0};
#pragma omp parallel num_threads(nt) shared(ts)
        {
            const int tid = omp_get_thread_num(), team = omp_get_num_threads();
            for (;;) {
                const int64_t i0 = __atomic_fetch_add(&ts.next_task, chunk, __ATOMIC_RELAXED);
                if (i0 >= n) break;
                for (int64_t i = i0; i < min64(n, i0 + chunk); i++) run_item(c, i, tid);
            }
            leave_team(&ts, team, tid, wait_ns); /* leave together: no thread spins in the join */
        }
        return;
    }
#endif
    (void)chunk, (void)nt, (void)wait_ns;
    for (int64_t i = 0; i < n; i++) run_item(c, i, 0);
}

static int gemm_exec(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float beta, float *C, int64_t ldc, const float *bias, int64_t batch,
                     int64_t sA, int64_t sB, int64_t sC, int nt, int64_t *wait_ns);

/* The general entry: batch products with strides, optional bias row vector. */
static int gemm_run(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc, const float *bias, int64_t batch,
                    int64_t sA, int64_t sB, int64_t sC) {
    int rc = check_args(M, N, K, lda, ldb, ldc, ta, tb);
    if (rc) return rc;
    if (batch < 0) return RP_EINVAL;
    if (M == 0 || N == 0 || batch == 0) return RP_OK;
    const int64_t mnk = M * N * K;
    const int64_t work = mnk <= INT64_MAX / batch ? mnk * batch : INT64_MAX;
    /* the band follows the library's back-off; larger products keep their team */
    int nt = work < BAND_LO ? 1 : work < BAND_HI ? rp_par_threads() : rp_get_num_threads();
    if (nt < 1) nt = 1;
    const int band = nt > 1 && work < BAND_HI; /* a team in the band: its wait is timed */
    int64_t wait = 0;
    const int64_t t0 = band ? rp_now_ns() : 0;
    rc = gemm_exec(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias, batch, sA, sB, sC, nt,
                   band ? &wait : NULL);
    if (band) {
        const int64_t t1 = rp_now_ns();
        const int64_t prev_end = __atomic_exchange_n(&band_last_end, t1, __ATOMIC_RELAXED);
        if (wait > BAND_WAIT_NS && 2 * wait > t1 - t0 && t0 - prev_end < BAND_IDLE_NS) {
            /* one stall can be a hiccup of a quiet machine; two within BAND_REPEAT_NS are contention */
            const int64_t last = __atomic_exchange_n(&band_last_stall, t1, __ATOMIC_RELAXED);
            if (t1 - last < BAND_REPEAT_NS) rp_back_off(t1 + BAND_BACKOFF_NS);
        }
    }
    return rc;
}

static int gemm_exec(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float beta, float *C, int64_t ldc, const float *bias, int64_t batch,
                     int64_t sA, int64_t sB, int64_t sC, int nt, int64_t *wait_ns) {
    const int64_t mnk = M * N * K;
    items_ctx c = {0};
    c.g0 = (gemm_prob){ta, tb, M, N, K, alpha, beta, A, B, bias, lda, ldb, ldc, C};
    c.sA = sA, c.sB = sB, c.sC = sC;

    if (K == 0 || alpha == 0.0f || mnk <= SMALL_MNK) {
        /* cheap per product: spread the batch over threads if it pays */
        c.mode = (K == 0 || alpha == 0.0f) ? ITEM_SCALE : ITEM_DIRECT;
        const int par = batch > 1 && (M * N * (K + 1)) * batch > 65536;
        run_items(&c, batch, 1, par ? nt : 1, wait_ns);
        return RP_OK;
    }
    if (M <= DIRECT_M_MAX) {
        /* few rows: no packing; threads take fixed column chunks of each product */
        c.mode = ITEM_DIRECT_COLS;
        c.nchunk = ceil_div(N, DIRECT_NB);
        run_items(&c, batch * c.nchunk, 4, nt, wait_ns);
        return RP_OK;
    }
    if (N <= DIRECT_N_MAX) {
        /* few columns (e.g. a Linear with 1 output): packing NR-wide panels would
         * mostly compute padding; threads take fixed row chunks instead */
        c.mode = ITEM_DIRECT_ROWS;
        c.nchunk = ceil_div(M, DIRECT_ROWS);
        run_items(&c, batch * c.nchunk, 4, nt, wait_ns);
        return RP_OK;
    }

    const kernel_t *kn = pick_kernel();
    /* buffer sizes in floats, rounded to 64 bytes so every buffer and panel stays aligned */
    const int64_t a_elems = round_up(round_up(min64(M, MC), kn->mr) * min64(K, KC), 16);
    const int64_t b_elems = round_up(ceil_div(K, KC) * KC * round_up(min64(N, NC), kn->nr), 16);

    /* many moderate products (or one thread): whole products per thread, private buffers */
    const int per_batch = nt > 1 && batch >= nt && (mnk <= (int64_t)192 * 192 * 192 || batch >= 4 * nt);
    if (nt == 1 || per_batch || !RP_HAVE_OPENMP) {
        const int teams = per_batch ? nt : 1;
        c.mode = ITEM_PRODUCT;
        c.kn = kn;
        c.a_elems = a_elems;
        c.per_thread = a_elems + b_elems;
        c.buf = scratch_take((size_t)c.per_thread * sizeof(float) * (size_t)teams);
        if (!c.buf) return RP_ENOMEM;
        run_items(&c, batch, 1, teams, wait_ns);
        scratch_give(c.buf);
        return RP_OK;
    }

#if RP_HAVE_OPENMP
    /* one product at a time, the whole team on it */
    const int64_t n_jc = ceil_div(N, NC), units = batch * n_jc;
    const int64_t per_block = ceil_div(K, KC) * ceil_div(min64(N, NC), kn->nr); /* panel flags per column block */
    const size_t sync_bytes =
        (size_t)round_up(units * (int64_t)sizeof(int64_t) + units * per_block * (int64_t)sizeof(int), 64);
    float *buf = scratch_take((size_t)(a_elems * nt + b_elems) * sizeof(float) + sync_bytes);
    if (!buf) return RP_ENOMEM;
    int64_t *next = (int64_t *)(buf + a_elems * nt + b_elems);
    int *flags = (int *)(next + units);
    memset(next, 0, sync_bytes);
    team_sync ts = {0, 0, 0, 0};
#pragma omp parallel num_threads(nt) shared(ts)
    {
        const int tid = omp_get_thread_num(), team = omp_get_num_threads();
        float *ap = buf + b_elems + (size_t)tid * (size_t)a_elems;
        for (int64_t b = 0; b < batch; b++) {
            gemm_prob g = c.g0;
            g.A = A + b * sA;
            g.B = B + b * sB;
            g.C = C + b * sC;
            if (b > 0) team_wait(&ts, team); /* Bp is reused by the next product */
            gemm_team(&g, kn, ap, buf, team, &ts, flags + b * n_jc * per_block, next + b * n_jc, per_block);
        }
        leave_team(&ts, team, tid, wait_ns); /* leave together: no thread spins in the join */
    }
    scratch_give(buf);
#endif
    return RP_OK;
}

int rp_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
            const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    return gemm_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, 1, 0, 0, 0);
}

int rp_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc, int64_t batch, int64_t strideA,
                    int64_t strideB, int64_t strideC) {
    return gemm_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, batch, strideA, strideB,
                    strideC);
}

/* Y (M, N) = X (M, K) · W (N, K)ᵀ + bias (N,) */
int rp_gemm_linear_fwd(int64_t M, int64_t N, int64_t K, const float *X, const float *W, const float *bias, float *Y) {
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
    int nt = rp_par_threads();
    (void)nt;
    const int simd = rp_simd_enabled();
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && M * N > 32768 && nstrip > 1)
#endif
    for (int64_t s = 0; s < nstrip; s++) {
        const int64_t j0 = s * COLSUM_COLS;
        const int64_t nb = min64(COLSUM_COLS, N - j0);
        if (simd) {
            rp_colsum_strip_avx2(X, M, N, j0, nb, COLSUM_ROWS, out);
            continue;
        }
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

/* CPU time of the calling thread: the probe measures what the core does while
 * it runs, unaffected by other processes competing for it (shared machines). */
static double now_seconds(void) {
    struct timespec ts;
#if defined(CLOCK_THREAD_CPUTIME_ID)
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Portable: 64 independent multiply-add chains the compiler can vectorise. */
static double peak_portable(int threads, double seconds) {
    double total = 0.0;
    (void)threads;
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
#if RP_HAVE_X86_TU
    const kernel_t *kn = pick_kernel();
    if (kn == &k_avx512) return rp_fma_peak_gflops_avx512(threads, seconds);
    if (kn == &k_avx2) return rp_fma_peak_gflops_avx2(threads, seconds);
#endif
    return peak_portable(threads, seconds);
}
