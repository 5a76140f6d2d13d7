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

/* ---- multi-tensor forms: every parameter of a model in one call -----------
 * One parallel region over fixed chunks of all tensors (instead of a call and
 * a region per tensor); each element gets exactly the operations of the
 * one-tensor form, so the bits are the same as calling it tensor by tensor. */

/* One tensor's AdamW hyperparameters (those of its optimizer group) and its
 * 1-based step count. */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;
} rp_adamw_hyper;

/* For t < n_tensors: rp_optim_adamw_step on params[t], grads[t], ms[t], vs[t]
 * (sizes[t] elements) with hyper[t]. grad_scale != 1 first scales the gradient
 * in place, grads[t] *= grad_scale (float32, the same bits as rp_optim_scale:
 * gradient clipping), and updates with the scaled gradient. */
int rp_optim_adamw_multi(float *const *params, float *const *grads, float *const *ms, float *const *vs,
                         const int64_t *sizes, const rp_adamw_hyper *hyper, int64_t n_tensors, float grad_scale);

/* arrays[t] *= factor for t < n_arrays (sizes[t] elements each), in place. */
int rp_optim_scale_multi(float *const *arrays, const int64_t *sizes, int64_t n_arrays, float factor);

#ifdef __cplusplus
}
#endif

#endif /* RELPOS_OPTIM_H */
