/* The avx512bf16 kernel (vdpbf16ps), and the AVX-512 packers it shares with the AMX kernel. Every
 * function here is compiled for AVX512-BF16 by its target attribute (CF_BF16_AVX512), whatever the
 * build's -march, and runs only where cf_cpu() found the extension (gemm_bf16.c chooses).
 *
 * Micro-kernel: a 14 x 32 tile of C in 28 zmm accumulators. Each pair of k loads two vectors of
 * the B panel (16 columns x 2 k each) and broadcasts 14 pairs of the A panel: 28 vdpbf16ps against
 * 16 loads, and the 31 live registers (28 + 2 + 1) fit the 32 zmm. Its speed depends on the core:
 * on AMD Zen 5 up to twice cf_gemm's fp32 speed (one vdpbf16ps does the work of two FMAs, at the
 * same rate); on a Xeon with AMX 0.55-0.8 of fp32 (vdpbf16ps issues at about a quarter of the
 * FMA rate there), where the AMX kernel, chosen first, runs at 2-5 times fp32.
 *
 * Packing rounds with vcvtne2ps2bf16, whose rounding cf_bf16_bits restates. Panels are built from
 * two kinds of 16-pair vectors: pairs along a row (32 consecutive floats) and pairs across two rows
 * (16 columns of rows p and p + 1); a 16 x 16 transpose of 32-bit pairs turns one into the other
 * where the layout wants the other kind. */
#include "gemm_bf16_internal.h"

#include <stddef.h>

#if defined(__x86_64__)

enum { MR = CF_BF16_VNNI_MR, NR = CF_BF16_VNNI_NR };

/* rows with 32 floats of k from p on: row u at x + u * ld, the first `rows` of 16 existing and
 * kc - p of their floats; into r, transposed: r[q] holds pair p / 2 + q of each row */
static inline CF_BF16_AVX512 void rows_to_pairs(const float *x, size_t ld, int rows, int n,
                                                 __m512i r[16]) {
    for (int u = 0; u < 16; u++)
        r[u] = u < rows ? cf_bf16_pairs_along(x + (size_t)u * ld, n) : _mm512_setzero_si512();
    cf_transpose16(r);
}

static inline int imin(int x, int y) { return x < y ? x : y; }

/* VNNI A panels of 14 rows: pair p2 of the panel is 14 consecutive 32-bit words */
static CF_BF16_AVX512 void pack_a(int trans, const float *a, int lda, int mc, int kc, int kcp,
                          uint16_t *out) {
    const __mmask16 panel = (1u << MR) - 1;
    for (int i = 0; i < mc; i += MR, out += (size_t)MR * kcp) {
        int mr = imin(MR, mc - i);
        if (trans) {           /* rows p and p + 1 of A hold pair p / 2 of every row of op(A) */
            for (int p = 0; p < kcp; p += 2) {
                const float *x = p < kc ? a + (size_t)p * lda + i : NULL;
                const float *y = p + 1 < kc ? x + lda : NULL;
                _mm512_mask_storeu_epi32(out + (size_t)p * MR, panel,
                                         cf_bf16_pairs_across(x, y, cf_bf16_lanes(mr)));
            }
        } else {               /* a row of op(A) is a row of A: 16 pairs at a time, transposed */
            for (int p = 0; p < kcp; p += 32) {
                __m512i r[16];
                rows_to_pairs(a + (size_t)i * lda + p, (size_t)lda, mr, kc - p, r);
                for (int q = 0; q < imin(16, (kcp - p) / 2); q++)
                    _mm512_mask_storeu_epi32(out + (size_t)(p + 2 * q) * MR, panel, r[q]);
            }
        }
    }
}

void CF_BF16_AVX512 cf_bf16_pack_b_vnni32(int trans, const float *b, int ldb, int kc, int kcp,
                                          int nc, uint16_t *out) {
    for (int j = 0; j < nc; j += 32, out += (size_t)32 * kcp) {
        int nr = imin(32, nc - j);
        if (!trans) {          /* rows p and p + 1 of B are pair p / 2 of the panel's columns */
            for (int p = 0; p < kcp; p += 2) {
                const float *x = p < kc ? b + (size_t)p * ldb + j : NULL;
                const float *y = p + 1 < kc ? x + ldb : NULL;
                uint16_t *o = out + (size_t)p * 32;
                _mm512_store_si512(o, cf_bf16_pairs_across(x, y, cf_bf16_lanes(nr)));
                _mm512_store_si512(o + 32, cf_bf16_pairs_across(x ? x + 16 : NULL, y ? y + 16 : NULL,
                                                        cf_bf16_lanes(nr - 16)));
            }
        } else {               /* a column of op(B) is a row of B: transposed, 16 columns at once */
            for (int p = 0; p < kcp; p += 32)
                for (int h = 0; h < 2; h++) {
                    __m512i r[16];
                    rows_to_pairs(b + (size_t)(j + 16 * h) * ldb + p, (size_t)ldb, nr - 16 * h,
                                  kc - p, r);
                    for (int q = 0; q < imin(16, (kcp - p) / 2); q++)
                        _mm512_store_si512(out + (size_t)(p + 2 * q) * 32 + 32 * h, r[q]);
                }
        }
    }
}

/* AMX A panels of 32 rows: for each 32 k, 32 tile rows of 64 bytes */
void CF_BF16_AVX512 cf_bf16_pack_a_amx(int trans, const float *a, int lda, int mc, int kc, int kcp,
                                       uint16_t *out) {
    for (int i = 0; i < mc; i += 32, out += (size_t)32 * kcp)
        for (int p = 0; p < kcp; p += 32) {
            int mr = imin(32, mc - i);
            uint16_t *tile = out + (size_t)p * 32;
            if (!trans) {      /* a row of op(A) is a row of A: 32 k of it make a tile row */
                for (int r = 0; r < 32; r++) {
                    const float *row = a + (size_t)(i + r) * lda + p;
                    __m512i v = r < mr ? cf_bf16_pairs_along(row, kc - p) : _mm512_setzero_si512();
                    _mm512_store_si512(tile + 32 * r, v);
                }
                continue;
            }
            for (int h = 0; h < 2; h++) {   /* 16 rows at a time: pairs across, transposed */
                __m512i v[16];
                for (int q = 0; q < 16; q++) {
                    int pk = p + 2 * q;
                    const float *x = pk < kc ? a + (size_t)pk * lda + i + 16 * h : NULL;
                    const float *y = pk + 1 < kc ? x + lda : NULL;
                    v[q] = cf_bf16_pairs_across(x, y, cf_bf16_lanes(mr - 16 * h));
                }
                cf_transpose16(v);
                for (int r = 0; r < 16; r++) _mm512_store_si512(tile + 32 * (16 * h + r), v[r]);
            }
        }
}

static CF_BF16_AVX512 void micro(int kcp, const uint16_t *restrict a, const uint16_t *restrict b,
                         float *restrict c, int ldc, float alpha, float beta, int mr, int nr) {
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int p2 = 0; p2 < kcp / 2; p2++, a += 2 * MR, b += 2 * NR) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 32);
#pragma GCC unroll 14
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, a + 2 * r, sizeof pair);
            __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
    for (int r = 0; r < MR && r < mr; r++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
            cf_bf16_store16(c + (size_t)r * ldc + 16 * h, acc[r][h], va, beta, vb,
                            cf_bf16_lanes(nr - 16 * h));
}

const cf_bf16_kernel cf_bf16_avx512bf16 = {
    .name = "avx512bf16", .mr = MR, .nr = NR, .kc = CF_BF16_VNNI_KC, .kstep = 2,
    .pack_a = pack_a, .pack_b = cf_bf16_pack_b_vnni32, .micro = micro,
};
#else
/* not x86-64: cf_cpu() finds no AVX512-BF16, so the driver never picks this */
const cf_bf16_kernel cf_bf16_avx512bf16 = {.name = "avx512bf16"};
#endif
