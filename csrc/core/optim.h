/* Optimizer updates and gradient-norm reductions (area: optim).
 * Every update works in place on float32 buffers of n elements; element i
 * depends only on element i, so any thread count gives the same bits. */
#ifndef RELPOS_OPTIM_H
#define RELPOS_OPTIM_H

#include "relpos.h"

#ifdef __cplusplus
extern "C" {
#endif

/* SGD with momentum, in place (torch.optim.SGD semantics).
 *   g = grad + weight_decay * param
 *   momentum > 0:  buf = init_buf ? g : momentum * buf + (1 - dampening) * g
 *                  g   = nesterov ? g + momentum * buf : buf
 *   param -= lr * g
 * param, buf: (n,) updated; grad: (n,) read. buf may be NULL when momentum == 0. */
int rp_optim_sgd_step(float *param, const float *grad, float *buf, int64_t n, double lr, double momentum,
                      double dampening, double weight_decay, int nesterov, int init_buf);

/* AdamW, in place (decoupled weight decay, Loshchilov & Hutter 2019;
 * torch.optim.AdamW semantics). step >= 1 is the 1-based step count used for
 * the bias corrections 1 - beta^step.
 *   param *= 1 - lr * weight_decay
 *   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
 *   param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 * param, m, v: (n,) updated; grad: (n,) read. */
int rp_optim_adamw_step(float *param, const float *grad, float *m, float *v, int64_t n, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step);

/* Sum of squares of every element of n_arrays float32 buffers (sizes[i]
 * elements each), accumulated in float64 over chunks of a fixed length that
 * do not depend on the thread count and added in a fixed order. *out = sum. */
int rp_optim_sumsq(const float *const *arrays, const int64_t *sizes, int64_t n_arrays, double *out);

/* x *= factor, in place; x: (n,). */
int rp_optim_scale(float *x, int64_t n, float factor);

#ifdef __cplusplus
}
#endif

#endif /* RELPOS_OPTIM_H */
