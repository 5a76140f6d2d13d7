/* Fused log-softmax cross-entropy with ignore_index. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* logits: (N, V); targets: (N); lse: (N). The mean is over counted rows; the
 * per-row losses are summed serially in double (row order), so the result
 * does not depend on the thread count. */
int rp_ops_xent_fwd(const float *logits, const int64_t *targets, float *lse, float *loss, int64_t *count, int64_t N,
                    int64_t V, int64_t ignore_index, int64_t *bad) {
    if (N < 0 || V < 0) return RP_EINVAL;
    for (int64_t r = 0; r < N; r++) {
        int64_t t = targets[r];
        if (t != ignore_index && (t < 0 || t >= V)) {
            if (bad) *bad = r;
            return RP_EINDEX;
        }
    }
    float *row_loss = (float *)rp_malloc((size_t)(N > 0 ? N : 1) * sizeof(float));
    if (!row_loss) return RP_ENOMEM;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * V >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t r = 0; r < N; r++) {
        const int64_t t = targets[r];
        if (t == ignore_index) {
            lse[r] = 0.0f;
            row_loss[r] = 0.0f;
            continue;
        }
        const float *xr = logits + r * V;
        const float m = rp_span_max(xr, V);
        const float ls = logf(rp_ops_exp_sum(simd, xr, m, NULL, V));
        lse[r] = m + ls;
        row_loss[r] = (m - xr[t]) + ls; /* exact when the target holds the max */
    }
    double total = 0.0;
    int64_t cnt = 0;
    for (int64_t r = 0; r < N; r++) {
        if (targets[r] == ignore_index) continue;
        total += (double)row_loss[r];
        cnt++;
    }
    rp_free(row_loss);
    *loss = cnt > 0 ? (float)(total / (double)cnt) : 0.0f;
    *count = cnt;
    return RP_OK;
}

/* dlogits: (N, V) = (exp(logits - lse) - onehot(target)) * dloss / count. */
int rp_ops_xent_bwd(const float *logits, const int64_t *targets, const float *lse, float dloss, int64_t count,
                    float *dlogits, int64_t N, int64_t V, int64_t ignore_index) {
    if (N < 0 || V < 0 || count < 0) return RP_EINVAL;
    const float scale = count > 0 ? dloss / (float)count : 0.0f;
    const int simd = rp_simd_enabled();
    RP_OPS_PFOR(N * V >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t r = 0; r < N; r++) {
        const int64_t t = targets[r];
        float *dr = dlogits + r * V;
        if (t == ignore_index || count == 0) {
            memset(dr, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float *xr = logits + r * V;
        const float l = lse[r];
        if (fabsf(l) < 64.0f) {
            /* lse is exact to 4e-6 here: p = exp(x - lse) */
            rp_ops_exp_scale(simd, xr, l, scale, NULL, 0.0f, dr, V);
        } else {
            /* large logits: lse holds few bits below the point, so recompute
             * the row's max m and log-sum ls and use exp(x - m) * exp(-ls) */
            const float m = rp_span_max(xr, V);
            const float ls = logf(rp_ops_exp_sum(simd, xr, m, NULL, V));
            rp_ops_exp_scale(simd, xr, m, scale * rp_exp(-ls), NULL, 0.0f, dr, V);
        }
        if (t >= 0 && t < V) dr[t] -= scale;
    }
    return RP_OK;
}
