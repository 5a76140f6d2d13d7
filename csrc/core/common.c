/* Memory, threads, SIMD dispatch and build facts. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "relpos.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef RP_COMPILER
#define RP_COMPILER "unknown"
#endif
#ifndef RP_CFLAGS
#define RP_CFLAGS ""
#endif
#ifndef RP_SIMD_CFLAGS
#define RP_SIMD_CFLAGS ""
#endif

void *rp_malloc(size_t nbytes) {
    if (nbytes == 0) nbytes = RP_ALIGN;
    size_t rounded = (nbytes + RP_ALIGN - 1) / RP_ALIGN * RP_ALIGN;
    if (rounded < nbytes) return NULL; /* overflow */
    return aligned_alloc(RP_ALIGN, rounded);
}

void *rp_calloc(size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    void *p = rp_malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

void rp_free(void *p) { free(p); }

/* 0 = not set by relpos: follow OpenMP's own default (OMP_NUM_THREADS, or a
 * limit set through omp_set_num_threads, e.g. by threadpoolctl). relpos's own
 * count lives only here: every parallel region passes num_threads(rp_get_num_threads()),
 * and never calling omp_set_num_threads keeps that default intact, so 0 restores it. */
static int rp_threads = 0;

/* libgomp's thread pool does not survive fork(): a child that opens a parallel
 * region with more than one thread hangs for ever. A forked child therefore
 * runs every kernel on one thread (spawned processes are unaffected). */
static int rp_forked_child = 0;

static void rp_atfork_child(void) { rp_forked_child = 1; }

void rp_init(void) {
    static int done = 0;
    if (!done) {
        done = 1;
        pthread_atfork(NULL, NULL, rp_atfork_child);
    }
}

int rp_in_forked_child(void) { return rp_forked_child; }

void rp_set_num_threads(int n) {
    if (n < 0) n = 0;
    __atomic_store_n(&rp_threads, n, __ATOMIC_RELAXED);
}

int rp_get_num_threads(void) {
    if (rp_forked_child) return 1;
    int n = __atomic_load_n(&rp_threads, __ATOMIC_RELAXED);
    if (n > 0) return n;
#if RP_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int rp_have_openmp(void) { return RP_HAVE_OPENMP; }

int64_t rp_now_ns(void) {
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0) return 0;
    return (int64_t)t.tv_sec * 1000000000 + (int64_t)t.tv_nsec;
}

/* CLOCK_MONOTONIC ns before which parallel regions run on one thread; 0 when
 * not backing off (so the common case reads no clock). A relaxed atomic
 * shared by every caller: a heuristic, never a correctness matter. */
static int64_t rp_solo_until = 0;

void rp_back_off(int64_t until_ns) { __atomic_store_n(&rp_solo_until, until_ns, __ATOMIC_RELAXED); }

int rp_backing_off(void) {
    const int64_t until = __atomic_load_n(&rp_solo_until, __ATOMIC_RELAXED);
    if (until == 0) return 0;
    if (rp_now_ns() < until) return 1;
    /* expired: clear it, unless another thread set a new one meanwhile */
    int64_t expect = until;
    __atomic_compare_exchange_n(&rp_solo_until, &expect, 0, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return 0;
}

int rp_par_threads(void) {
    const int n = rp_get_num_threads();
    return n > 1 && rp_backing_off() ? 1 : n;
}

int rp_cpu_has_avx2_fma(void) {
#if RP_HAVE_X86_TU && (defined(__x86_64__) || defined(_M_X64))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int rp_portable_forced = 0;

void rp_force_portable(int on) { __atomic_store_n(&rp_portable_forced, on ? 1 : 0, __ATOMIC_RELAXED); }

int rp_simd_enabled(void) {
    static int cached = -1;
    if (__atomic_load_n(&rp_portable_forced, __ATOMIC_RELAXED)) return 0;
    if (cached < 0) cached = rp_cpu_has_avx2_fma();
    return cached;
}

const char *rp_simd_name(void) { return rp_simd_enabled() ? "avx2+fma" : "portable"; }
const char *rp_compiler(void) { return RP_COMPILER; }
const char *rp_cflags(void) { return RP_CFLAGS; }
const char *rp_simd_cflags(void) { return RP_SIMD_CFLAGS; }
