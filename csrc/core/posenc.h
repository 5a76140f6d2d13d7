/* Position encodings of channels A (absolute) and R (rotary): the core.
 *
 * rotary.c:   RoPE cos/sin tables (angles in float64), xPos scales (in logs,
 *             around a centre), the rotary transform of q/k and its backward.
 * absolute.c: the sinusoidal table, the complex word-order embedding
 *             (Wang et al. 2020) and its backward into r, omega, theta.
 */
#ifndef RELPOS_POSENC_H
#define RELPOS_POSENC_H

#include <string.h>

#include "relpos.h"

/* Which channels a rotary transform turns together (the one layout enum of the
 * core: the rotary kernels here and the fused head split/merge of blocks.c). */
typedef enum {
    RP_ROPE_INTERLEAVED = 0, /* pairs (x_2k, x_2k+1): GPT-J, Meta LLaMA, ggml mode 0 */
    RP_ROPE_HALF = 1         /* pairs (x_k, x_k+P):   GPT-NeoX, HF LLaMA, ggml NEOX */
} rp_rope_layout;

#define RP_SIN_INTERLEAVED 0 /* PE(i,2k)=sin, PE(i,2k+1)=cos (Vaswani et al.) */
#define RP_SIN_CONCAT 1      /* [sin_0..sin_{P-1}, cos_0..cos_{P-1}] */

/* Kernels below this much work run on one thread: a parallel region costs
 * more than rotating 16k numbers or evaluating 2k sines (and far more when
 * the machine is oversubscribed). Work is split by static schedule either way,
 * so the result does not depend on the thread count. */
#define RP_POSENC_MIN_PARALLEL 16384
#define RP_POSENC_MIN_PARALLEL_TRIG 2048

static inline int rp_posenc_threads(int64_t work, int64_t min_work) { return work < min_work ? 1 : rp_par_threads(); }

/* The pair loop, once; A(k), B(k) index the pair's two channels. Written out
 * per layout (and with / without sc) so the strides are constants and the
 * compiler vectorises it: each pair gets the same operations in any case. */
#define RP_ROTARY_PAIRS(A, B, SCALED)               \
    for (int64_t k = 0; k < P; k++) {               \
        const float xa = src[A(k)], xb = src[B(k)]; \
        const float ck = c[k], sk = dir * s[k];     \
        float ya = ck * xa - sk * xb;               \
        float yb = sk * xa + ck * xb;               \
        if (SCALED) {                               \
            ya *= sc[k];                            \
            yb *= sc[k];                            \
        }                                           \
        dst[A(k)] = ya;                             \
        dst[B(k)] = yb;                             \
    }
#define RP_ROT_IL_A(k) (2 * (k))
#define RP_ROT_IL_B(k) (2 * (k) + 1)
#define RP_ROT_HALF_A(k) (k)
#define RP_ROT_HALF_B(k) ((k) + P)

/* The rotation of one row, the only one in the core (rotary.c, blocks.c):
 * dst = sc * R(dir * angle) src on the first 2P of D channels, pairs (a, b) by
 * layout, angle k given by c[k] = cos, s[k] = sin, dir = +1 (forward) or -1
 * (the transpose: backward, head merge); sc (P) may be NULL (1). The other
 * channels are copied. dst may be src (each pair is read before it is written). */
static inline void rp_rotary_row(const float *src, float *dst, const float *c, const float *s, const float *sc,
                                 int64_t D, int64_t P, int layout, float dir) {
    if (layout == RP_ROPE_INTERLEAVED) {
        if (sc) {
            RP_ROTARY_PAIRS(RP_ROT_IL_A, RP_ROT_IL_B, 1)
        } else {
            RP_ROTARY_PAIRS(RP_ROT_IL_A, RP_ROT_IL_B, 0)
        }
    } else {
        if (sc) {
            RP_ROTARY_PAIRS(RP_ROT_HALF_A, RP_ROT_HALF_B, 1)
        } else {
            RP_ROTARY_PAIRS(RP_ROT_HALF_A, RP_ROT_HALF_B, 0)
        }
    }
    if (dst != src && D > 2 * P) memcpy(dst + 2 * P, src + 2 * P, (size_t)(D - 2 * P) * sizeof(float));
}
#undef RP_ROTARY_PAIRS
#undef RP_ROT_IL_A
#undef RP_ROT_IL_B
#undef RP_ROT_HALF_A
#undef RP_ROT_HALF_B

/* n heads of Dh floats side by side at x (one q or k projection row), each turned in
 * place by the angles c, s (P = rd / 2 each) of the row's position on its first rd
 * channels (dir +1; -1 the inverse). The portable form (blocks.c) and the AVX2 one
 * (posenc_x86.c, when rp_simd_enabled()) give the same bits. */
#define RP_ROTATE_HEADS_TMP 256 /* rotary dims up to this are turned through a stack copy */
static inline void rp_rotate_heads_portable(float *x, int64_t n, int64_t Dh, const float *c, const float *s, int64_t rd,
                                            int layout, float dir) {
    const int64_t P = rd / 2;
    float tmp[RP_ROTATE_HEADS_TMP];
    for (int64_t h = 0; h < n; h++) {
        float *xr = x + h * Dh;
        if (rd <= RP_ROTATE_HEADS_TMP) {
            for (int64_t d = 0; d < rd; d++) tmp[d] = xr[d];
            rp_rotary_row(tmp, xr, c, s, NULL, rd, P, layout, dir);
        } else {
            rp_rotary_row(xr, xr, c, s, NULL, Dh, P, layout, dir);
        }
    }
}
#if RP_HAVE_X86_TU
void rp_posenc_avx2_rotate_heads(float *x, int64_t n, int64_t Dh, const float *c, const float *s, int64_t rd,
                                 int layout, float dir);
#endif
static inline void rp_rotate_heads(int simd, float *x, int64_t n, int64_t Dh, const float *c, const float *s,
                                   int64_t rd, int layout, float dir) {
#if RP_HAVE_X86_TU
    if (simd) {
        rp_posenc_avx2_rotate_heads(x, n, Dh, c, s, rd, layout, dir);
        return;
    }
#else
    (void)simd;
#endif
    rp_rotate_heads_portable(x, n, Dh, c, s, rd, layout, dir);
}

/* Largest |log scale| an xPos factor may take: e^80 is finite in float32 and
 * a causal product of a q and a k factor stays <= 1 (see rp_xpos_scale). */
#define RP_XPOS_MAX_LOG 80.0

/* RoPE tables.
 * inv_freq (P,) float64; cos, sin (T, P) float32 out.
 * angle[t, k] = (offset + t) * pos_scale * inv_freq[k], computed in float64
 * (float32 loses whole radians at positions ~1e6), then cos/sin in float64. */
int rp_posenc_rope_tables(const double *inv_freq, int64_t P, int64_t T, int64_t offset, double pos_scale,
                          float *cos_out, float *sin_out);

/* xPos scales (Sun et al. 2022). scale (T, P) float32 out.
 * zeta_k = (2k/(2P) + gamma) / (1 + gamma); for row t at position p = offset + t:
 *   scale[t, k] = zeta_k ^ (sign * (p - center) / scale_base),   sign = +1 (q) or -1 (k),
 * evaluated as exp(sign * (p - center) / scale_base * log zeta_k) in float64, with
 * the exponent clamped to [-RP_XPOS_MAX_LOG, RP_XPOS_MAX_LOG] so it never
 * overflows. Exact while |p - center| * |log zeta_k| / scale_base <= 80. */
int rp_posenc_xpos_scale(int64_t P, int64_t T, int64_t offset, double center, double scale_base, double gamma, int sign,
                         float *scale);

/* Rotary transform, forward.
 * x, y (N, T, D) with N = B*H; cos, sin, scale (T, P) with P = rotary_dim/2;
 * scale may be NULL (1). The first rotary_dim channels rotate pairwise:
 *   (y_a, y_b) = s * (c x_a - s' x_b, s' x_a + c x_b)
 * with (a, b) = (2k, 2k+1) (interleaved) or (k, k+P) (half); the other channels
 * are copied. y may equal x (in place). */
int rp_posenc_rotary_fwd(const float *x, const float *cos_t, const float *sin_t, const float *scale, float *y,
                         int64_t N, int64_t T, int64_t D, int64_t rotary_dim, int layout);

/* Rotary transform, backward: dx = s * R(-angle) dy on the rotated channels,
 * dx = dy on the rest. Shapes as in the forward; dx may equal dy. */
int rp_posenc_rotary_bwd(const float *dy, const float *cos_t, const float *sin_t, const float *scale, float *dx,
                         int64_t N, int64_t T, int64_t D, int64_t rotary_dim, int layout);

/* Sinusoidal table (Vaswani et al. 2017).
 * out (T, d_model) float32, d_model even; positions (T,) int64 or NULL
 * (then position of row t is offset + t). freq_k = base^(-2k/d_model),
 * angle = position * freq_k in float64. layout RP_SIN_INTERLEAVED or RP_SIN_CONCAT. */
int rp_posenc_sinusoidal_table(const int64_t *positions, int64_t T, int64_t offset, int64_t d_model, double base,
                               int layout, float *out);

/* Complex word-order embedding (Wang et al., ICLR 2020), forward.
 * ids (N,) int64 for N = B*T tokens, token n at position positions[n % T];
 * r, omega, theta (V, d) float32; out (N, 2d) = [real | imag] with
 *   phase = omega[w]*pos + theta[w] (float64), real = r[w] cos(phase), imag = r[w] sin(phase).
 * Returns RP_EINDEX if an id is outside [0, V) (check before calling to name it). */
int rp_posenc_complex_fwd(const int64_t *ids, const int64_t *positions, int64_t N, int64_t T, const float *r,
                          const float *omega, const float *theta, int64_t V, int64_t d, float *out);

/* Complex word-order embedding, backward. g (N, 2d) = [d real | d imag];
 * writes dr, domega, dtheta (V, d) (zeroed first; rows of unused tokens stay 0).
 * Parallel over column blocks, each summing tokens in order n = 0..N-1:
 * bit-identical for any thread count. */
int rp_posenc_complex_bwd(const int64_t *ids, const int64_t *positions, int64_t N, int64_t T, const float *r,
                          const float *omega, const float *theta, int64_t V, int64_t d, const float *g, float *dr,
                          float *domega, float *dtheta);

#endif /* RELPOS_POSENC_H */
