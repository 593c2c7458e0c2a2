/* The 16 x 16 transpose of 32-bit elements in AVX-512 registers, which the bf16 GEMM, the bf16
 * attention kernels and the packing of the fused attention's K^T and V^T blocks share. Compiled
 * for AVX-512F by a target attribute, so that it inlines into kernels built for any superset of
 * it (avx512bf16, AMX) whatever the build's -march. Internal. */
#ifndef CF_KERNELS_TRANSPOSE16_H
#define CF_KERNELS_TRANSPOSE16_H

#if defined(__x86_64__)
#include <immintrin.h>

/* r[i] holds row i of a 16 x 16 matrix of 32-bit elements; afterwards r[i] holds column i. Four
 * butterfly stages: stage b exchanges bit b of the row and of the column index, between rows i
 * and i + b, with two two-source permutes per pair of rows. */
static inline __attribute__((target("avx512f"), always_inline)) void cf_transpose16(__m512i r[16]) {
    const __m512i j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 4
    for (int b = 8; b >= 1; b /= 2) {
        __mmask16 upper = _mm512_test_epi32_mask(j, _mm512_set1_epi32(b));
        /* row i keeps its lanes without bit b and takes the others from row i + b, shifted
         * down by b; row i + b gives the lanes without bit b, shifted up, and keeps the rest */
        __m512i lo = _mm512_mask_add_epi32(j, upper, j, _mm512_set1_epi32(16 - b));
        __m512i hi = _mm512_add_epi32(
            j, _mm512_mask_blend_epi32(upper, _mm512_set1_epi32(b), _mm512_set1_epi32(16)));
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            if (!(i & b)) {
                __m512i x = r[i], y = r[i + b];
                r[i] = _mm512_permutex2var_epi32(x, lo, y);
                r[i + b] = _mm512_permutex2var_epi32(x, hi, y);
            }
    }
}
#endif

#endif
