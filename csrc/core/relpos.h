/* relpos core: common definitions shared by every C file of the core.
 *
 * Rules (see docs/INTERNALS.md):
 *  - no Python in the core (csrc/core/): only the bridge (csrc/python/) includes
 *    Python.h, and the core never includes the bridge (tests/test_layout.py);
 *  - every core function is rp_<area>_<op>[_fwd|_bwd], takes raw pointers and
 *    int64_t sizes, returns 0 or a negative RP_E* code, never prints;
 *  - the same inputs give bit-identical outputs for any thread count.
 */
#ifndef RELPOS_H
#define RELPOS_H

#include <stddef.h>
#include <stdint.h>

#define RP_OK 0
#define RP_EINVAL (-1)  /* an argument is out of its domain */
#define RP_ENOMEM (-2)  /* a scratch allocation failed */
#define RP_EINDEX (-3)  /* an integer id is out of range */
#define RP_ENOSIMD (-4) /* a SIMD kernel was asked for on a CPU without it */

#define RP_ALIGN 64

#ifdef __cplusplus
extern "C" {
#endif

/* 64-byte aligned scratch; NULL on failure or overflow. rp_free(NULL) is fine. */
void *rp_malloc(size_t nbytes);
void *rp_calloc(size_t n, size_t size);
void rp_free(void *p);

/* Called once at import: installs the fork handler (a forked child runs serially). */
void rp_init(void);
int rp_in_forked_child(void);

/* Threads: n <= 0 resets to the OpenMP default (OMP_NUM_THREADS or the cores). */
void rp_set_num_threads(int n);
int rp_get_num_threads(void);
int rp_have_openmp(void);

/* The thread count a kernel's parallel region takes: rp_get_num_threads(),
 * or 1 while the library backs off after it saw its threads kept off their
 * cores (rp_back_off; set by gemm.c's stall detector). Read it once per
 * kernel and size per-thread buffers with that value. Results never depend
 * on it (every split is fixed), only speed does. */
int rp_par_threads(void);
/* Monotonic clock in nanoseconds (0 if unavailable). */
int64_t rp_now_ns(void);
/* Run parallel regions on one thread until rp_now_ns() reaches until_ns. */
void rp_back_off(int64_t until_ns);
/* 1 while backing off. */
int rp_backing_off(void);

/* SIMD path: 1 if the AVX2/FMA translation unit is compiled in and the CPU has
 * both; rp_force_portable(1) makes every kernel take the portable path (tests). */
int rp_cpu_has_avx2_fma(void);
int rp_simd_enabled(void);
void rp_force_portable(int on);
const char *rp_simd_name(void);

/* Build facts for show_config(). */
const char *rp_compiler(void);
const char *rp_cflags(void);
const char *rp_simd_cflags(void);

/* Split [0, n) into `parts` contiguous chunks independent of the thread count;
 * chunk p is [*lo, *hi). Use it for partial sums that must be reduced in a
 * fixed order. */
static inline void rp_chunk(int64_t n, int64_t parts, int64_t p, int64_t *lo, int64_t *hi) {
    int64_t base = n / parts, rem = n % parts;
    *lo = p * base + (p < rem ? p : rem);
    *hi = *lo + base + (p < rem ? 1 : 0);
}

#ifdef __cplusplus
}
#endif

#if RP_HAVE_OPENMP
#include <omp.h>
#define RP_PRAGMA(x) _Pragma(#x)
/* Open a parallel region with relpos' thread count. */
#define RP_OMP_PARALLEL_FOR RP_PRAGMA(omp parallel for schedule(static) num_threads(rp_par_threads()))
#else
#define RP_PRAGMA(x)
#define RP_OMP_PARALLEL_FOR
#endif

#endif /* RELPOS_H */
