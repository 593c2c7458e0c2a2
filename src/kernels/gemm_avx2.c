/* AVX2 + FMA micro-kernel: 6 x 16 tile of C in 12 ymm accumulators; with 2 B vectors and one
 * broadcast that is 15 of the 16 ymm registers, and 12 FMAs per k step against 8 loads. */
#include "gemm_internal.h"

#include <stddef.h>

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* lane i of the result is all-ones when i < n: the mask for maskload/maskstore */
static inline __m256i lane_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void cf_gemm_micro(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                   int ldc, float alpha, float beta, int mr, int nr) {
    enum { MR = CF_GEMM_MR, NR = CF_GEMM_NR };
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int r = 0; r < mr; r++) {
        _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)r * ldc + 8), _MM_HINT_T0);
    }
    for (int p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 ar = _mm256_broadcast_ss(a + r);
            acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
        }
        a += MR;
        b += NR;
    }
    /* unrolled, so acc is indexed by constants: a loop that indexed it at run time would keep
     * acc in memory, stores in the k loop included */
    __m256i k0 = lane_mask(nr), k1 = lane_mask(nr - 8);
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        if (r >= mr) break;
        float *cr = c + (size_t)r * ldc;
        __m256 v0 = _mm256_mul_ps(acc[r][0], va), v1 = _mm256_mul_ps(acc[r][1], va);
        if (beta != 0.0f) {
            v0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr, k0), v0);
            v1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8, k1), v1);
        }
        _mm256_maskstore_ps(cr, k0, v0);
        _mm256_maskstore_ps(cr + 8, k1, v1);
    }
}
#else
/* this instruction set is not the build's target: gemm_avx512.c or gemm.c defines the kernel */
typedef int cf_gemm_avx2_unused;
#endif
