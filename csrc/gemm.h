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

/* Register tile of the micro-kernels (both the AVX2 and the portable one):
 * packed A panels are RP_GEMM_MR rows wide, packed B panels RP_GEMM_NR columns. */
#define RP_GEMM_MR 6
#define RP_GEMM_NR 16

/* C (M, N) = alpha * op(A) * op(B) + beta * C
 *   op(A) is (M, K): A is (M, K) with row stride lda, or (K, M) if trans_a
 *   op(B) is (K, N): B is (K, N) with row stride ldb, or (N, K) if trans_b
 * beta == 0 never reads C (NaN/Inf there do not leak). */
int rp_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
            int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* `batch` independent products; matrix b of A starts at A + b*strideA (same for B, C). */
int rp_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                    int64_t ldc, int64_t batch, int64_t strideA, int64_t strideB, int64_t strideC);

/* Linear layer forward with a fused bias epilogue (torch layout):
 *   Y (M, N) = X (M, K) · W (N, K)ᵀ + bias (N,)     (bias may be NULL) */
int rp_gemm_linear_fwd(int64_t M, int64_t N, int64_t K, const float *X, const float *W,
                       const float *bias, float *Y);

/* out (N,) = Σ_m X (M, N)[m, :]  (Linear bias gradient). Rows are summed in
 * fixed blocks, then the block sums in order: same bits for any thread count. */
int rp_colsum(const float *X, int64_t M, int64_t N, float *out);

/* Measured single-precision FMA throughput (GFLOP/s, 2 flops per FMA lane)
 * of `threads` threads (<= 0: relpos' thread count) running independent FMA
 * chains for about `seconds`. AVX2/FMA when enabled, else a portable loop. */
double rp_fma_peak_gflops(int threads, double seconds);

/* ---- internal: micro-kernels shared by gemm.c and gemm_avx2.c ---------- */

/* One MR x NR tile: acc = Ap (kc x MR panel) · Bp (kc x NR panel), then
 *   C[i, j] = alpha*acc + beta*C[i, j] (beta == 0: C not read) + bias[j] (bias may be NULL)
 * for i < mr, j < nr (edge tiles have mr < MR or nr < NR). */
typedef void (*rp_gemm_ukr_fn)(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc,
                               int64_t mr, int64_t nr, float alpha, float beta, const float *bias);

void rp_gemm_ukr_avx2(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int64_t mr,
                      int64_t nr, float alpha, float beta, const float *bias);
double rp_fma_peak_gflops_avx2(int threads, double seconds);

#ifdef __cplusplus
}
#endif

#endif /* RELPOS_GEMM_H */
