/* The portable bf16 attention kernel and the choice of kernel (attn_bf16.h). Built with -ffp-contract=off (Makefile), since the portable kernel must round as
 * vdpbf16ps does, step by step. */
#include "attn_bf16.h"

#include <string.h>
#include "cformer/kernels.h"
#include "cpu.h"
#include "gemm_bf16_internal.h"

static inline float lo_of(uint32_t w) { return cf_bf16_float((uint16_t)w); }
static inline float hi_of(uint32_t w) { return cf_bf16_float((uint16_t)(w >> 16)); }

static inline uint32_t pair_bits(float even, float odd) {
    return (uint32_t)cf_bf16_bits(even) | (uint32_t)cf_bf16_bits(odd) << 16;
}

/* A subnormal accumulator reads as zero, as in vdpbf16ps (DAZ on every source). */
static inline float daz(float x) {
    uint32_t u = cf_bf16_f32_bits(x);
    return (u & 0x7f800000u) ? x : 0.0f * x;
}

static void gemm_portable(int rows, int n, const uint32_t *a, int64_t ars, int64_t acs, int np, const uint32_t *b,
                          int64_t ldb, float *c, int64_t ldc, const float *cs, float scale) {
    enum { W = 64 };
    for (int r = 0; r < rows; r++)
        for (int c0 = 0; c0 < n; c0 += W) {
            int w = n - c0 < W ? n - c0 : W;
            float acc[W], *cr = c + r * ldc + c0;
            for (int j = 0; j < w; j++) acc[j] = scale != 0 ? 0.0f : daz(cs ? cs[r] * cr[j] : cr[j]);
            for (int p = 0; p < np; p++) {
                uint32_t x = a[r * ars + p * acs];
                float x0 = lo_of(x), x1 = hi_of(x);
                const uint32_t *bp = b + p * ldb + c0;
                for (int j = 0; j < w; j++)
                    acc[j] = cf_bf16_dp_step(cf_bf16_dp_step(acc[j], x1, hi_of(bp[j])), x0, lo_of(bp[j]));
            }
            for (int j = 0; j < w; j++) cr[j] = scale != 0 ? scale * acc[j] : acc[j];
        }
}

static void rows_portable(const float *x, int64_t ldx, int rows, int n, uint32_t *out, int64_t ldo) {
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < n; k += 2) out[r * ldo + k / 2] = pair_bits(x[r * ldx + k], x[r * ldx + k + 1]);
}

static void pairs_portable(const float *x, int64_t ldx, int rows, int have, int n, uint32_t *out, int64_t ldo) {
    for (int r = 0; r < rows; r += 2)
        for (int k = 0; k < n; k++)
            out[(r / 2) * ldo + k] = pair_bits(r < have ? x[r * ldx + k] : 0.0f, r + 1 < have ? x[(r + 1) * ldx + k] : 0.0f);
}

static const cf_attn_bf16_kernel portable = {"portable", gemm_portable, rows_portable, pairs_portable, NULL, NULL};
extern const cf_attn_bf16_kernel cf_attn_bf16_avx512, cf_attn_bf16_amx;

const cf_attn_bf16_kernel *cf_attn_bf16(void) {
    const char *gemm = cf_gemm_bf16_kernel();
#if defined(__x86_64__)
    if (!strcmp(gemm, "amx")) return &cf_attn_bf16_amx;
    if (cf_cpu()->avx512bf16 && strcmp(gemm, "portable") != 0) return &cf_attn_bf16_avx512;
#endif
    return &portable;
}

const char *cf_attn_bf16_kernel_name(void) {
    const cf_attn_bf16_kernel *k = cf_attn_bf16();
    return k ? k->name : "fp32";
}
