/* Optimizer updates (SGD, AdamW), global gradient norm, in-place scaling. */
#include "optim.h"

#include <math.h>

/* Below this many elements a parallel region costs more than it saves. The
 * threshold changes only how work is split, never what each element computes. */
#define RP_OPTIM_PAR_MIN 32768
/* Fixed chunk length of the sum-of-squares reduction. */
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
#pragma omp parallel for schedule(static) num_threads(rp_get_num_threads()) if (n >= RP_OPTIM_PAR_MIN)
#endif
        for (int64_t i = 0; i < n; i++) {
            float g = grad[i] + fwd * param[i];
            param[i] -= flr * g;
        }
        return RP_OK;
    }
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_get_num_threads()) if (n >= RP_OPTIM_PAR_MIN)
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

int rp_optim_adamw_step(float *param, const float *grad, float *m, float *v, int64_t n, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step) {
    if (n < 0 || step < 1 || !(lr >= 0.0) || !(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) ||
        !(eps >= 0.0) || !(weight_decay >= 0.0))
        return RP_EINVAL;
    if (n == 0) return RP_OK;
    if (!param || !grad || !m || !v) return RP_EINVAL;
    /* scalars in float64, elements in float32 (as torch does) */
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float decay = (float)(1.0 - lr * weight_decay);
    const float step_size = (float)(lr / bc1);
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    const float b1 = (float)beta1, b2 = (float)beta2;
    const float omb1 = (float)(1.0 - beta1), omb2 = (float)(1.0 - beta2);
    const float feps = (float)eps;
#if RP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(rp_get_num_threads()) if (n >= RP_OPTIM_PAR_MIN)
#endif
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * decay;
        float mi = b1 * m[i] + omb1 * g;
        float vi = b2 * v[i] + omb2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_sqrt_bc2 + feps;
        param[i] = p - step_size * (mi / denom);
    }
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
    /* chunk c of the whole list is chunk (c - first[a]) of array a */
    int64_t *first = rp_malloc((size_t)(n_arrays + 1) * sizeof(int64_t));
    if (!first) return RP_ENOMEM;
    int64_t total = 0;
    for (int64_t a = 0; a < n_arrays; a++) {
        if (sizes[a] < 0 || (sizes[a] > 0 && !arrays[a])) {
            rp_free(first);
            return RP_EINVAL;
        }
        first[a] = total;
        total += (sizes[a] + RP_OPTIM_CHUNK - 1) / RP_OPTIM_CHUNK;
    }
    first[n_arrays] = total;
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
#pragma omp parallel for schedule(static) num_threads(rp_get_num_threads()) if (total >= 4)
#endif
    for (int64_t c = 0; c < total; c++) {
        /* the last array whose first chunk is <= c holds c (empty arrays own no chunk) */
        int64_t lo = 0, hi = n_arrays - 1;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo + 1) / 2;
            if (first[mid] <= c)
                lo = mid;
            else
                hi = mid - 1;
        }
        int64_t start = (c - first[lo]) * RP_OPTIM_CHUNK;
        int64_t len = sizes[lo] - start;
        if (len > RP_OPTIM_CHUNK) len = RP_OPTIM_CHUNK;
        partial[c] = sumsq_chunk(arrays[lo] + start, len);
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
#pragma omp parallel for schedule(static) num_threads(rp_get_num_threads()) if (n >= RP_OPTIM_PAR_MIN)
#endif
    for (int64_t i = 0; i < n; i++) x[i] *= factor;
    return RP_OK;
}
