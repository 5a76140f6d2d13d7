/* gemm area: packed, cache-blocked single-precision matrix products.
 *
 * All matrices are row-major. op(X) is X or its transpose (trans_x != 0).
 * Determinism: the split of the K dimension (and so the order in which each
 * output element is summed) depends on M, N, K only, never on the thread
 * count, so results are bit-identical for any number of threads.
 */
#ifndef RELPOS_GEMM_H
#define RELPOS_GEMM_H

#include "relpos.h"

#ifdef __cplusplus
extern "C" {
#endif

/* C (M, N) = alpha * op(A) * op(B) + beta * C
 *   op(A) is (M, K): A is (M, K) with row stride lda, or (K, M) if trans_a
 *   op(B) is (K, N): B is (K, N) with row stride ldb, or (N, K) if trans_b
 * beta == 0 never reads C (NaN/Inf there do not leak). */
int rp_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
            const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* `batch` independent products; matrix b of A starts at A + b*strideA (same for B, C). */
int rp_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc, int64_t batch, int64_t strideA,
                    int64_t strideB, int64_t strideC);

/* Linear layer forward with a fused bias epilogue (torch layout):
 *   Y (M, N) = X (M, K) · W (N, K)ᵀ + bias (N,)     (bias may be NULL) */
int rp_gemm_linear_fwd(int64_t M, int64_t N, int64_t K, const float *X, const float *W, const float *bias, float *Y);

/* out (N,) = Σ_m X (M, N)[m, :]  (Linear bias gradient). Rows are summed in
 * fixed blocks, then the block sums in order: same bits for any thread count. */
int rp_colsum(const float *X, int64_t M, int64_t N, float *out);

/* Measured single-precision FMA throughput (GFLOP/s, 2 flops per FMA lane)
 * of `threads` threads (<= 0: relpos' thread count) running independent FMA
 * chains for about `seconds` of each thread's CPU time (so other processes on a
 * shared machine do not lower it), on the instruction set of the GEMM kernel in
 * use (AVX-512, AVX2/FMA, or a portable multiply-add loop). */
double rp_fma_peak_gflops(int threads, double seconds);

/* Micro-kernel choice (tests and benchmarks): 0 auto (widest the CPU has),
 * 1 AVX-512, 2 AVX2, 3 portable. Returns RP_ENOSIMD if the CPU or build
 * lacks it. rp_force_portable(1) overrides any choice. */
int rp_gemm_set_kernel(int which);
/* Name of the micro-kernel rp_gemm uses now: "avx512", "avx2" or "portable". */
const char *rp_gemm_kernel_name(void);

/* ---- internal: micro-kernels shared by gemm.c and gemm_x86.c ---------- */

/* One mr_max x nr_max tile: acc = Ap (kc x MR panel) · Bp (kc x NR panel), then
 *   C[i, j] = alpha*acc + beta*C[i, j] (beta == 0: C not read) + bias[j] (bias may be NULL)
 * for i < mr, j < nr (edge tiles have mr < MR or nr < NR). Bp is 64-byte aligned. */
typedef void (*rp_gemm_ukr_fn)(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr,
                               int64_t nr, float alpha, float beta, const float *bias);
/* The same tile on operands read in place instead of packed: A's element (r, p) at
 * A[r*ars + p*aks] (a transposed A: ars 1, aks lda; a row-major A: ars lda, aks 1; a
 * packed panel: ars 1, aks MR), B's NR floats of step p at B + p*bks (ldb in place,
 * NR packed; need not be aligned). The same FMA chain per element, so the same bits. */
typedef void (*rp_gemm_ukr_strided_fn)(int64_t kc, const float *A, int64_t ars, int64_t aks, const float *B,
                                       int64_t bks, float *C, int64_t ldc, int64_t mr, int64_t nr, float alpha,
                                       float beta, const float *bias);

#define RP_GEMM_AVX2_MR 6
#define RP_GEMM_AVX2_NR 16
#define RP_GEMM_AVX512_MR 12
#define RP_GEMM_AVX512_NR 32

void rp_gemm_ukr_avx2(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr, int64_t nr,
                      float alpha, float beta, const float *bias);
void rp_gemm_ukr_avx512(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr, int64_t nr,
                        float alpha, float beta, const float *bias);
void rp_gemm_ukr_avx512_strided(int64_t kc, const float *A, int64_t ars, int64_t aks, const float *B, int64_t bks,
                                float *C, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta,
                                const float *bias);
int rp_gemm_cpu_avx512(void); /* AVX-512F usable (CPU and OS) and compiled in */
/* Pack R rows of a row-major matrix (rows X, X+ld, ...; kc columns) into dst
 * (kc x R), dst[p*R + i] = X[i*ld + p], with 8x8 / 4x8 / 2x8 register
 * transposes; R is 6, 12, 16 or 32 (full A panels, full panels of a transposed B). */
void rp_gemm_pack_rows_avx2(const float *X, int64_t ld, int64_t kc, int R, float *dst);
/* Column sums of X's columns [j0, j0 + nb) (row stride N) into out[j0..], rows in
 * blocks of rows_blk: rp_colsum's order, 64 columns' partial sums in registers. */
void rp_colsum_strip_avx2(const float *X, int64_t M, int64_t N, int64_t j0, int64_t nb, int64_t rows_blk, float *out);
double rp_fma_peak_gflops_avx2(int threads, double seconds);
double rp_fma_peak_gflops_avx512(int threads, double seconds);

#ifdef __cplusplus
}
#endif

#endif /* RELPOS_GEMM_H */
