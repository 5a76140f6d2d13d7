/* Fused log-softmax cross-entropy with ignore_index. */
#include "ops.h"

#include <math.h>
#include <string.h>

/* logits: (N, V); targets: (N); lse: (N). The mean is over counted rows; the
 * per-row losses are summed serially in double (row order), so the result
 * does not depend on the thread count. */
int rp_ops_xent_fwd(const float *logits, const int64_t *targets, float *lse, float *loss, int64_t *count,
                    int64_t N, int64_t V, int64_t ignore_index, int64_t *bad) {
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
    RP_OPS_PFOR(N * V >= 4096)
    for (int64_t r = 0; r < N; r++) {
        const int64_t t = targets[r];
        if (t == ignore_index) {
            lse[r] = 0.0f;
            row_loss[r] = 0.0f;
            continue;
        }
        const float *xr = logits + r * V;
        float m = -INFINITY;
        for (int64_t j = 0; j < V; j++) m = xr[j] > m ? xr[j] : m;
        float s = 0.0f;
        RP_OPS_SIMD_SUM(s)
        for (int64_t j = 0; j < V; j++) s += expf(xr[j] - m);
        const float ls = logf(s);
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
    RP_OPS_PFOR(N * V >= 4096)
    for (int64_t r = 0; r < N; r++) {
        const int64_t t = targets[r];
        float *dr = dlogits + r * V;
        if (t == ignore_index || count == 0) {
            memset(dr, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float *xr = logits + r * V;
        const float l = lse[r];
        for (int64_t j = 0; j < V; j++) dr[j] = expf(xr[j] - l) * scale;
        if (t >= 0 && t < V) dr[t] -= scale;
    }
    return RP_OK;
}
