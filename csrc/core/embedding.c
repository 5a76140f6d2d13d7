/* Embedding lookup and its deterministic scatter-add backward. */
#include "ops.h"

#include <string.h>

int64_t rp_ops_first_bad_id(const int64_t *ids, int64_t n, int64_t V) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return i;
    return -1;
}

/* ids: (n); weight: (V, D); out: (n, D). */
int rp_ops_embedding_fwd(const int64_t *ids, const float *weight, float *out, int64_t n, int64_t V, int64_t D) {
    if (n < 0 || V < 0 || D < 0) return RP_EINVAL;
    if (rp_ops_first_bad_id(ids, n, V) >= 0) return RP_EINDEX;
    RP_OPS_PFOR(n * D >= RP_OPS_PAR_MIN)
    for (int64_t i = 0; i < n; i++) memcpy(out + i * D, weight + ids[i] * D, (size_t)D * sizeof(float));
    return RP_OK;
}

/* Columns of D per unit of parallel work in the backward. */
#define EMB_COLS 32

/* dweight: (V, D) = 0, then dweight[ids[i]] += grad[i] for i in token order.
 * Threads own disjoint column blocks, so every element of dweight is summed
 * in token order whatever the thread count. */
int rp_ops_embedding_bwd(const int64_t *ids, const float *grad, float *dweight, int64_t n, int64_t V, int64_t D) {
    if (n < 0 || V < 0 || D < 0) return RP_EINVAL;
    if (rp_ops_first_bad_id(ids, n, V) >= 0) return RP_EINDEX;
    memset(dweight, 0, (size_t)(V * D) * sizeof(float));
    const int64_t nblk = (D + EMB_COLS - 1) / EMB_COLS;
    RP_OPS_PFOR(n * D >= RP_OPS_PAR_MIN_COMPUTE)
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t c0 = b * EMB_COLS, c1 = c0 + EMB_COLS < D ? c0 + EMB_COLS : D;
        for (int64_t i = 0; i < n; i++) {
            float *dst = dweight + ids[i] * D;
            const float *src = grad + i * D;
            for (int64_t j = c0; j < c1; j++) dst[j] += src[j];
        }
    }
    return RP_OK;
}
