/* The portable bf16 kernel: plain C that computes bitwise what the avx512bf16 kernel computes, on
 * any x86-64 (or any machine). Built with -ffp-contract=off (Makefile): a contracted multiply-add
 * would round once where the emulated instruction rounds twice, or the other way round.
 *
 * vdpbf16ps, lane by lane, is two fused multiply-adds into the fp32 accumulator, the odd element
 * of the pair first:
 *     acc = acc + a[2i+1] * b[2i+1];   acc = acc + a[2i] * b[2i]
 * each rounded to nearest even, with subnormal inputs read as zero and a result that is tiny
 * after rounding (below 2^-126 once rounded to 24 bits with an unbounded exponent) flushed to a
 * zero of its sign; MXCSR plays no part. cf_bf16_dp_step (gemm_bf16_internal.h) reproduces one such
 * step. The product of two
 * bf16 values (8-bit significands) is exact in double, and the sum of two numbers of 24 bits,
 * rounded to double's 53 and then to float's 24, is the sum rounded once to 24 (53 >= 2 * 24 + 2,
 * so the double rounding is innocuous): (float)((double)acc + x * y) is the fused result
 * wherever it is not tiny. Packing flushes subnormal bf16 to zero, and acc starts at zero and
 * is flushed at every step, so no input is ever subnormal. */
#include "gemm_bf16_internal.h"

#include <stddef.h>

enum { MR = CF_BF16_VNNI_MR, NR = CF_BF16_VNNI_NR };

/* Panels of w units (rows of op(A) or columns of op(B)) from count units of the operand X, whose
 * element (u, p) is x[u * su + p * sp], in the VNNI layout of gemm_bf16_internal.h. */
static void pack_vnni(const float *x, size_t su, size_t sp, int count, int kc, int kcp, int w,
                      uint16_t *restrict out) {
    for (int u0 = 0; u0 < count; u0 += w, out += (size_t)w * kcp) {
        int uw = count - u0 < w ? count - u0 : w;
        for (int u = 0; u < w; u++)
            for (int p = 0; p < kcp; p++) {
                float v = u < uw && p < kc ? x[(size_t)(u0 + u) * su + (size_t)p * sp] : 0.0f;
                out[((size_t)(p / 2) * w + u) * 2 + p % 2] = cf_bf16_bits(v);
            }
    }
}

static void pack_a(int trans, const float *a, int lda, int mc, int kc, int kcp, uint16_t *out) {
    pack_vnni(a, trans ? 1 : (size_t)lda, trans ? (size_t)lda : 1, mc, kc, kcp, MR, out);
}

static void pack_b(int trans, const float *b, int ldb, int kc, int kcp, int nc, uint16_t *out) {
    pack_vnni(b, trans ? (size_t)ldb : 1, trans ? 1 : (size_t)ldb, nc, kc, kcp, NR, out);
}

static void micro(int kcp, const uint16_t *restrict a, const uint16_t *restrict b,
                  float *restrict c, int ldc, float alpha, float beta, int mr, int nr) {
    /* whole rows of NR columns (the padding is zeros), so the inner loop has a fixed length */
    float acc[MR][NR] = {{0}};
    for (int p2 = 0; p2 < kcp / 2; p2++, a += 2 * MR, b += 2 * NR) {
        float b0[NR], b1[NR];
        for (int j = 0; j < NR; j++) {
            b0[j] = cf_bf16_float(b[2 * j]);
            b1[j] = cf_bf16_float(b[2 * j + 1]);
        }
        for (int r = 0; r < mr; r++) {
            float a0 = cf_bf16_float(a[2 * r]), a1 = cf_bf16_float(a[2 * r + 1]);
            for (int j = 0; j < NR; j++)
                acc[r][j] = cf_bf16_dp_step(cf_bf16_dp_step(acc[r][j], a1, b1[j]), a0, b0[j]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int j = 0; j < nr; j++) {
            float x = acc[r][j] * alpha;
            if (beta != 0.0f) x = x + beta * cr[j];
            cr[j] = x;
        }
    }
}

const cf_bf16_kernel cf_bf16_portable = {
    .name = "portable", .mr = MR, .nr = NR, .kc = CF_BF16_VNNI_KC, .kstep = 2,
    .pack_a = pack_a, .pack_b = pack_b, .micro = micro,
};
