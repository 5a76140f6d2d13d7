/* Optimizer updates (SGD, AdamW), global gradient norm, in-place scaling. */
#include "optim.h"

#include <math.h>

/* Below this many elements a parallel region costs more than it saves. The
 * threshold changes only how work is split, never what each element computes. */
#define RP_OPTIM_PAR_MIN 32768
/* Fixed chunk length of the multi-tensor kernels (sum of squares, AdamW, scale): work units
 * of the concatenated tensors, so the split never depends on the thread count. */
#define RP_OPTIM_CHUNK 8192

int rp_optim_sgd_step(float *param, const float *grad, float *buf, int64_t n, double lr, double momentum,
                      double dampening, double weight_decay, int nesterov, int init_buf) {
    if (n < 0 || !(lr >= 0.0) || !(momentum >= 0.0) || !(weight_decay >= 0.0)) return RP_EINVAL;
    if (n == 0) return RP_OK;
    if (!param || !grad || (momentum > 0.0 && !buf)) return RP_EINVAL;
    const float flr = (float)lr, fmom = (float)momentum, fwd = (float)weight_decay;
    const float fdamp = (float)(1.0 - dampening);
    if (momentum == 0.0) {
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (n >= RP_OPTIM_PAR_MIN)
#endif
        for (int64_t i = 0; i < n; i++) {
            float g = grad[i] + fwd * param[i];
            param[i] -= flr * g;
        }
        return RP_OK;
    }
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (n >= RP_OPTIM_PAR_MIN)
#endif
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] + fwd * param[i];
        float b = init_buf ? g : fmom * buf[i] + fdamp * g;
        buf[i] = b;
        float d = nesterov ? g + fmom * b : b;
        param[i] -= flr * d;
    }
    return RP_OK;
}

/* AdamW's per-tensor constants: scalars in float64, elements in float32 (as torch does). */
typedef struct {
    float decay, step_size, inv_sqrt_bc2, b1, b2, omb1, omb2, eps;
} adamw_consts;

static int adamw_hyper_ok(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
    return step >= 1 && lr >= 0.0 && beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0 && eps >= 0.0 &&
           weight_decay >= 0.0;
}

static adamw_consts adamw_prepare(double lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t step) {
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    adamw_consts c;
    c.decay = (float)(1.0 - lr * weight_decay);
    c.step_size = (float)(lr / bc1);
    c.inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    c.b1 = (float)beta1, c.b2 = (float)beta2;
    c.omb1 = (float)(1.0 - beta1), c.omb2 = (float)(1.0 - beta2);
    c.eps = (float)eps;
    return c;
}

/* Elements [0, n) of one tensor; scale != 1: grad *= scale first (in place).
 * The one place the AdamW element update is written: both entry points use it. */
static void adamw_span(const adamw_consts *c, float *restrict param, float *restrict grad, float *restrict m,
                       float *restrict v, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (scale != 1.0f) {
            g = g * scale;
            grad[i] = g;
        }
        float p = param[i] * c->decay;
        float mi = c->b1 * m[i] + c->omb1 * g;
        float vi = c->b2 * v[i] + c->omb2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * c->inv_sqrt_bc2 + c->eps;
        param[i] = p - c->step_size * (mi / denom);
    }
}

int rp_optim_adamw_step(float *param, const float *grad, float *m, float *v, int64_t n, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step) {
    if (n < 0 || !adamw_hyper_ok(lr, beta1, beta2, eps, weight_decay, step)) return RP_EINVAL;
    if (n == 0) return RP_OK;
    if (!param || !grad || !m || !v) return RP_EINVAL;
    const adamw_consts c = adamw_prepare(lr, beta1, beta2, eps, weight_decay, step);
    /* grad is only read (scale 1): the cast drops a const the span never uses */
    float *g = (float *)grad;
#if RP_HAVE_OPENMP
    const int64_t nch = (n + RP_OPTIM_CHUNK - 1) / RP_OPTIM_CHUNK;
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (n >= RP_OPTIM_PAR_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        const int64_t i0 = ch * RP_OPTIM_CHUNK, len = n - i0 < RP_OPTIM_CHUNK ? n - i0 : RP_OPTIM_CHUNK;
        adamw_span(&c, param + i0, g + i0, m + i0, v + i0, len, 1.0f);
    }
#else
    adamw_span(&c, param, g, m, v, n, 1.0f);
#endif
    return RP_OK;
}

/* Chunk c of the concatenated tensors: tensor *t, elements [*i0, *i0 + *len).
 * first[t] is the index of tensor t's first chunk (first[n] = total). */
static void multi_locate(const int64_t *first, const int64_t *sizes, int64_t n, int64_t c, int64_t *t, int64_t *i0,
                         int64_t *len) {
    /* the last tensor whose first chunk is <= c holds c (empty tensors own no chunk) */
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (first[mid] <= c)
            lo = mid;
        else
            hi = mid - 1;
    }
    *t = lo;
    *i0 = (c - first[lo]) * RP_OPTIM_CHUNK;
    *len = sizes[lo] - *i0 < RP_OPTIM_CHUNK ? sizes[lo] - *i0 : RP_OPTIM_CHUNK;
}

/* first[t] (n + 1 entries, rp_malloc'ed) for tensors of sizes[t]; NULL on a bad size or no memory. */
static int64_t *multi_chunks(const int64_t *sizes, int64_t n, int *rc) {
    int64_t *first = rp_malloc((size_t)(n + 1) * sizeof(int64_t));
    if (!first) {
        *rc = RP_ENOMEM;
        return NULL;
    }
    int64_t total = 0;
    for (int64_t t = 0; t < n; t++) {
        if (sizes[t] < 0) {
            rp_free(first);
            *rc = RP_EINVAL;
            return NULL;
        }
        first[t] = total;
        total += (sizes[t] + RP_OPTIM_CHUNK - 1) / RP_OPTIM_CHUNK;
    }
    first[n] = total;
    *rc = RP_OK;
    return first;
}

int rp_optim_adamw_multi(float *const *params, float *const *grads, float *const *ms, float *const *vs,
                         const int64_t *sizes, const rp_adamw_hyper *hyper, int64_t n_tensors, float grad_scale) {
    if (n_tensors < 0 || !isfinite(grad_scale)) return RP_EINVAL;
    if (n_tensors == 0) return RP_OK;
    if (!params || !grads || !ms || !vs || !sizes || !hyper) return RP_EINVAL;
    int64_t elems = 0;
    for (int64_t t = 0; t < n_tensors; t++) {
        const rp_adamw_hyper *h = hyper + t;
        if (!adamw_hyper_ok(h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, h->step)) return RP_EINVAL;
        if (sizes[t] > 0 && (!params[t] || !grads[t] || !ms[t] || !vs[t])) return RP_EINVAL;
        elems += sizes[t] > 0 ? sizes[t] : 0;
    }
    int rc;
    int64_t *first = multi_chunks(sizes, n_tensors, &rc);
    if (!first) return rc;
    adamw_consts *cs = rp_malloc((size_t)n_tensors * sizeof(adamw_consts));
    if (!cs) {
        rp_free(first);
        return RP_ENOMEM;
    }
    for (int64_t t = 0; t < n_tensors; t++) {
        const rp_adamw_hyper *h = hyper + t;
        cs[t] = adamw_prepare(h->lr, h->beta1, h->beta2, h->eps, h->weight_decay, h->step);
    }
    const int64_t total = first[n_tensors];
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (elems >= RP_OPTIM_PAR_MIN)
#endif
    for (int64_t c = 0; c < total; c++) {
        int64_t t, i0, len;
        multi_locate(first, sizes, n_tensors, c, &t, &i0, &len);
        adamw_span(cs + t, params[t] + i0, grads[t] + i0, ms[t] + i0, vs[t] + i0, len, grad_scale);
    }
    rp_free(cs);
    rp_free(first);
    return RP_OK;
}

int rp_optim_scale_multi(float *const *arrays, const int64_t *sizes, int64_t n_arrays, float factor) {
    if (n_arrays < 0) return RP_EINVAL;
    if (n_arrays == 0) return RP_OK;
    if (!arrays || !sizes) return RP_EINVAL;
    int64_t elems = 0;
    for (int64_t t = 0; t < n_arrays; t++) {
        if (sizes[t] > 0 && !arrays[t]) return RP_EINVAL;
        elems += sizes[t] > 0 ? sizes[t] : 0;
    }
    int rc;
    int64_t *first = multi_chunks(sizes, n_arrays, &rc);
    if (!first) return rc;
    const int64_t total = first[n_arrays];
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (elems >= RP_OPTIM_PAR_MIN)
#endif
    for (int64_t c = 0; c < total; c++) {
        int64_t t, i0, len;
        multi_locate(first, sizes, n_arrays, c, &t, &i0, &len);
        float *x = arrays[t] + i0;
        for (int64_t i = 0; i < len; i++) x[i] *= factor;
    }
    rp_free(first);
    return RP_OK;
}

/* Sum of squares of x[0:n) in float64, four interleaved accumulators added
 * in a fixed order (the order is a property of the code, not of the threads). */
static double sumsq_chunk(const float *x, int64_t n) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
        a0 += x0 * x0;
        a1 += x1 * x1;
        a2 += x2 * x2;
        a3 += x3 * x3;
    }
    for (; i < n; i++) {
        double xi = x[i];
        a0 += xi * xi;
    }
    return (a0 + a1) + (a2 + a3);
}

int rp_optim_sumsq(const float *const *arrays, const int64_t *sizes, int64_t n_arrays, double *out) {
    if (!out || n_arrays < 0) return RP_EINVAL;
    *out = 0.0;
    if (n_arrays == 0) return RP_OK;
    if (!arrays || !sizes) return RP_EINVAL;
    for (int64_t a = 0; a < n_arrays; a++)
        if (sizes[a] > 0 && !arrays[a]) return RP_EINVAL;
    /* chunk c of the whole list is chunk (c - first[a]) of array a */
    int rc;
    int64_t *first = multi_chunks(sizes, n_arrays, &rc);
    if (!first) return rc;
    const int64_t total = first[n_arrays];
    if (total == 0) {
        rp_free(first);
        return RP_OK;
    }
    double *partial = rp_malloc((size_t)total * sizeof(double));
    if (!partial) {
        rp_free(first);
        return RP_ENOMEM;
    }
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (total >= 4)
#endif
    for (int64_t c = 0; c < total; c++) {
        int64_t a, start, len;
        multi_locate(first, sizes, n_arrays, c, &a, &start, &len);
        partial[c] = sumsq_chunk(arrays[a] + start, len);
    }
    double s = 0.0;
    for (int64_t c = 0; c < total; c++) s += partial[c];
    *out = s;
    rp_free(partial);
    rp_free(first);
    return RP_OK;
}

int rp_optim_scale(float *x, int64_t n, float factor) {
    if (n < 0) return RP_EINVAL;
    if (n == 0) return RP_OK;
    if (!x) return RP_EINVAL;
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_par_threads()) if (n >= RP_OPTIM_PAR_MIN)
#endif
    for (int64_t i = 0; i < n; i++) x[i] *= factor;
    return RP_OK;
}
