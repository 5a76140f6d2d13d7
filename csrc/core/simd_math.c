/* The exp spans of simd_math.h: the scalar form and the dispatch to the
 * vector forms (simd_math_x86.c). */
#include "simd_math.h"

int rp_exp_form_available(int form) {
    switch (form) {
    case RP_EXP_SCALAR: return 1;
#if RP_HAVE_X86_TU
    case RP_EXP_AVX2: return rp_cpu_has_avx2_fma();
    case RP_EXP_AVX512: return rp_cpu_has_avx2_fma() && rp_exp_have_avx512();
#endif
    default: return 0;
    }
}

int rp_exp_form(void) {
    if (!rp_simd_enabled()) return RP_EXP_SCALAR;
    return rp_exp_form_available(RP_EXP_AVX512) ? RP_EXP_AVX512 : RP_EXP_AVX2;
}

int rp_exp_span(int form, const float *x, float m, float *y, int64_t n) {
    if (n < 0) return RP_EINVAL;
    if (form != RP_EXP_SCALAR && form != RP_EXP_AVX2 && form != RP_EXP_AVX512) return RP_EINVAL;
    if (!rp_exp_form_available(form)) return RP_ENOSIMD;
#if RP_HAVE_X86_TU
    if (form == RP_EXP_AVX2) {
        rp_exp_span_avx2(x, m, y, n);
        return RP_OK;
    }
    if (form == RP_EXP_AVX512) {
        rp_exp_span_avx512(x, m, y, n);
        return RP_OK;
    }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = rp_exp(x[i] - m);
    return RP_OK;
}
