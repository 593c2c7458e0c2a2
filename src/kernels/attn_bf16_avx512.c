/* The avx512bf16 attention kernel (attn_bf16.h): 4 x 64 tiles of C in 16 zmm accumulators, each
 * pair of A broadcast against up to four 16-column vectors of B, one vdpbf16ps each. Compiled for
 * AVX512-BF16 by target attributes, whatever the build's -march; run only where cf_cpu() finds it. */
#include "attn_bf16.h"

#include "gemm_bf16_internal.h"

#if defined(__x86_64__)

/* nr rows (4 or 1) by one chunk of at most 64 columns (nv vectors, the last masked by tail);
 * inlined with constants so that the accumulators stay in registers */
static inline __attribute__((always_inline)) CF_BF16_AVX512 void tile(int nr, int nv, __mmask16 tail,
        const uint32_t *a, int64_t ars, int64_t acs, int np, const uint32_t *b, int64_t ldb, float *c,
        int64_t ldc, const float *cs, float scale) {
    __m512 acc[4][4];
    __mmask16 mk[4];
    for (int v = 0; v < nv; v++) mk[v] = v == nv - 1 ? tail : 0xFFFF;
    for (int i = 0; i < nr; i++)
        for (int v = 0; v < nv; v++) {
            if (scale != 0) {
                acc[i][v] = _mm512_setzero_ps();
                continue;
            }
            acc[i][v] = _mm512_maskz_loadu_ps(mk[v], c + i * ldc + 16 * v);
            if (cs) acc[i][v] = _mm512_mul_ps(acc[i][v], _mm512_set1_ps(cs[i]));
        }
    for (int p = 0; p < np; p++) {
        __m512bh bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = (__m512bh)_mm512_maskz_loadu_epi32(mk[v], b + p * ldb + 16 * v);
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[i * ars + p * acs]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], x, bv[v]);
        }
    }
    __m512 s = _mm512_set1_ps(scale);
    for (int i = 0; i < nr; i++)
        for (int v = 0; v < nv; v++)
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, mk[v], scale != 0 ? _mm512_mul_ps(acc[i][v], s) : acc[i][v]);
}

#define TILE_CASES(nr)                                                                   \
    switch (nv) {                                                                        \
    case 1: tile(nr, 1, tail, ar, ars, acs, np, bc, ldb, cr, ldc, csr, scale); break;    \
    case 2: tile(nr, 2, tail, ar, ars, acs, np, bc, ldb, cr, ldc, csr, scale); break;    \
    case 3: tile(nr, 3, tail, ar, ars, acs, np, bc, ldb, cr, ldc, csr, scale); break;    \
    default: tile(nr, 4, tail, ar, ars, acs, np, bc, ldb, cr, ldc, csr, scale); break;   \
    }

static CF_BF16_AVX512 void gemm(int rows, int n, const uint32_t *a, int64_t ars, int64_t acs, int np,
                                const uint32_t *b, int64_t ldb, float *c, int64_t ldc, const float *cs, float scale) {
    for (int r = 0; r < rows;) {
        int nr = rows - r >= 4 ? 4 : 1;
        for (int c0 = 0; c0 < n; c0 += 64) {
            int w = n - c0 < 64 ? n - c0 : 64, nv = (w + 15) / 16;
            __mmask16 tail = cf_bf16_lanes(w - 16 * (nv - 1));
            const uint32_t *ar = a + r * ars, *bc = b + c0;
            const float *csr = cs ? cs + r : NULL;
            float *cr = c + r * ldc + c0;
            if (nr == 4) TILE_CASES(4) else TILE_CASES(1)
        }
        r += nr;
    }
}

CF_BF16_AVX512 void cf_attn_bf16_rows_avx512(const float *x, int64_t ldx, int rows, int n, uint32_t *out, int64_t ldo) {
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < n; k += 32)
            _mm512_mask_storeu_epi32(out + r * ldo + k / 2, cf_bf16_lanes((n - k) / 2),
                                     cf_bf16_pairs_along(x + r * ldx + k, n - k));
}

CF_BF16_AVX512 void cf_attn_bf16_pairs_avx512(const float *x, int64_t ldx, int rows, int have, int n, uint32_t *out,
                                 int64_t ldo) {
    for (int r = 0; r < rows; r += 2) {
        const float *x0 = r < have ? x + r * ldx : NULL, *x1 = r + 1 < have ? x + (r + 1) * ldx : NULL;
        for (int k = 0; k < n; k += 16) {
            __mmask16 m = cf_bf16_lanes(n - k);
            _mm512_mask_storeu_epi32(out + (r / 2) * ldo + k, m,
                                     cf_bf16_pairs_across(x0 ? x0 + k : NULL, x1 ? x1 + k : NULL, m));
        }
    }
}

const cf_attn_bf16_kernel cf_attn_bf16_avx512 = {"avx512bf16", gemm, cf_attn_bf16_rows_avx512, cf_attn_bf16_pairs_avx512, NULL, NULL};

#endif
