/* The small register-tiled product that the attention kernels are built from: the P V, P'^T dO,
 * dS^T Q and dS K products of the fused softmax kernels (src/ops/attention.c and
 * src/attention/masked.c) and the chunk products of the linear, Infini and Transformer-XL kernels.
 * Internal.
 *
 * C[r][0..n) = cs[r] C[r][0..n) + sum_{k < nk} A(r, k) B[k][0..n) for r < rows, where
 * A(r, k) = a[r*ars + k*acs]: swapping the strides reads A^T without a copy. cs == NULL means 1
 * (C keeps its exact old value); the online softmax passes its rescaling factors there, so the
 * output accumulator is not swept separately. Each C element gets its terms in ascending k, one
 * fused multiply-add each, so the result depends only on the operands, never on threads or on
 * where the tile edges fall. Rows go by 4 (by 1 for the last rows short of 4); the fused kernels
 * pad their blocks to a multiple of 4 rows, so they never take the 1-row tiles. */
#ifndef CF_KERNELS_BLOCK_GEMM_H
#define CF_KERNELS_BLOCK_GEMM_H

#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>

/* nr rows (4 or 1) by one chunk of at most 64 columns (nv vectors, the last masked by tail);
 * inlined with constants so that the nr x nv accumulators stay in registers */
static inline __attribute__((always_inline)) void cf_bg_tile(int nr, int nv, __mmask16 tail, const float *a,
                                                             int64_t ars, int64_t acs, int nk, const float *b,
                                                             int64_t ldb, float *c, int64_t ldc, const float *cs) {
    __m512 acc[4][4];
    __mmask16 mk[4];
    for (int v = 0; v < nv; v++) mk[v] = v == nv - 1 ? tail : 0xFFFF;
    for (int i = 0; i < nr; i++)
        for (int v = 0; v < nv; v++) {
            acc[i][v] = _mm512_maskz_loadu_ps(mk[v], c + i * ldc + 16 * v);
            if (cs) acc[i][v] = _mm512_mul_ps(acc[i][v], _mm512_set1_ps(cs[i]));
        }
    for (int k = 0; k < nk; k++) {
        __m512 bv[4];
        for (int v = 0; v < nv; v++) bv[v] = _mm512_maskz_loadu_ps(mk[v], b + k * ldb + 16 * v);
        for (int i = 0; i < nr; i++) {
            __m512 x = _mm512_set1_ps(a[i * ars + k * acs]);
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_fmadd_ps(x, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < nr; i++)
        for (int v = 0; v < nv; v++) _mm512_mask_storeu_ps(c + i * ldc + 16 * v, mk[v], acc[i][v]);
}
#endif

/* the product of the head comment, 4 x 64 tiles at a time */
static inline void cf_block_gemm(int rows, int n, const float *a, int64_t ars, int64_t acs, int nk, const float *b,
                                 int64_t ldb, float *c, int64_t ldc, const float *cs) {
#ifdef __AVX512F__
    for (int r = 0; r < rows;) {
        int nr = rows - r >= 4 ? 4 : 1;
        for (int c0 = 0; c0 < n; c0 += 64) {
            int w = n - c0 < 64 ? n - c0 : 64, nv = (w + 15) / 16;
            __mmask16 tail = (__mmask16)((1u << (w - 16 * (nv - 1))) - 1);
            const float *ar = a + r * ars, *bc = b + c0, *csr = cs ? cs + r : NULL;
            float *cr = c + r * ldc + c0;
            if (nr == 4) {
                switch (nv) {
                case 1: cf_bg_tile(4, 1, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                case 2: cf_bg_tile(4, 2, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                case 3: cf_bg_tile(4, 3, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                default: cf_bg_tile(4, 4, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                }
            } else {
                switch (nv) {
                case 1: cf_bg_tile(1, 1, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                case 2: cf_bg_tile(1, 2, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                case 3: cf_bg_tile(1, 3, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                default: cf_bg_tile(1, 4, tail, ar, ars, acs, nk, bc, ldb, cr, ldc, csr); break;
                }
            }
        }
        r += nr;
    }
#else
    for (int r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        if (cs)
            for (int j = 0; j < n; j++) cr[j] *= cs[r];
        for (int k = 0; k < nk; k++) {
            float x = a[r * ars + k * acs];
            const float *bk = b + k * ldb;
            for (int j = 0; j < n; j++) cr[j] += x * bk[j];
        }
    }
#endif
}

#endif
