/* Register-tiled pieces shared by the fused attention kernels (src/ops/attention.c, and the
 * masked variants of src/attention/masked.c): the score block Q K^T of 64 keys and a 16-lane 2^x.
 * Internal; the including file defines BK (64) before including this. */
#ifndef CF_KERNELS_ATTN_TILES_H
#define CF_KERNELS_ATTN_TILES_H

#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* S[r][0..BK) = sum_d A[r*lda + d] Bt[d][0..BK) for r < rows (a multiple of 4). Bt is a packed
 * transposed block, so a score row is built from broadcasts of A and vector loads of Bt: the
 * 4 x 64 tile stays in 16 registers for the whole d loop. */
static inline void nt_block(int rows, int dh, const float *a, int lda, const float *bt, float *s) {
#ifdef __AVX512F__
    for (int r = 0; r < rows; r += 4) {
        const float *a0 = a + (int64_t)r * lda;
        __m512 c[4][4];
        for (int i = 0; i < 4; i++)
            for (int v = 0; v < 4; v++) c[i][v] = _mm512_setzero_ps();
        for (int d = 0; d < dh; d++) {
            const float *b = bt + (int64_t)d * BK;
            __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
            __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
            for (int i = 0; i < 4; i++) {
                __m512 x = _mm512_set1_ps(a0[(int64_t)i * lda + d]);
                c[i][0] = _mm512_fmadd_ps(x, b0, c[i][0]);
                c[i][1] = _mm512_fmadd_ps(x, b1, c[i][1]);
                c[i][2] = _mm512_fmadd_ps(x, b2, c[i][2]);
                c[i][3] = _mm512_fmadd_ps(x, b3, c[i][3]);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int v = 0; v < 4; v++) _mm512_store_ps(s + (int64_t)(r + i) * BK + 16 * v, c[i][v]);
    }
#else
    for (int r = 0; r < rows; r++) {
        float *sr = s + (int64_t)r * BK;
        for (int j = 0; j < BK; j++) sr[j] = 0;
        for (int d = 0; d < dh; d++) {
            float x = a[(int64_t)r * lda + d];
            const float *b = bt + (int64_t)d * BK;
            for (int j = 0; j < BK; j++) sr[j] += x * b[j];
        }
    }
#endif
}

#ifdef __AVX512F__
/* 2^t on 16 lanes: t = n + f with n = round(t) and |f| <= 1/2, 2^f by a degree-6 polynomial fitted
 * for relative error on [-1/2, 1/2] (about 1e-7 in float), times 2^n by vscalefps, which goes
 * smoothly to 0 far below -126. t must not be infinite: callers mask or clamp. */
static inline __m512 exp2_16(__m512 t) {
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_set1_ps(1.5370706387e-4f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.3399848249e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.6183735877e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5503290147e-2f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022647738e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314718246e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}
#endif


/* One row of the attention backward over a 64-key block: P = 2^(S - L) on visible keys (bit j of
 * vis), then dS = P (dP - D), with the dropout mask z (NULL: none) applied as P' = P z and
 * dP = dP' z. On return s holds P' (for dV) and dp holds dS. */
static inline void ds_row(float *s, float *dp, uint64_t vis, float lse, float dd, const float *z) {
#ifdef __AVX512F__
    __m512 lv = _mm512_set1_ps(lse), dv = _mm512_set1_ps(dd);
    for (int v = 0; v < 4; v++) {
        __m512 pv = _mm512_maskz_mov_ps((__mmask16)(vis >> (16 * v)),
                                        exp2_16(_mm512_sub_ps(_mm512_load_ps(s + 16 * v), lv)));
        __m512 gv = _mm512_load_ps(dp + 16 * v), pd = pv;
        if (z) {
            __m512 zv = _mm512_load_ps(z + 16 * v);
            pd = _mm512_mul_ps(pv, zv);
            gv = _mm512_mul_ps(gv, zv);
        }
        _mm512_store_ps(s + 16 * v, pd);
        _mm512_store_ps(dp + 16 * v, _mm512_mul_ps(pv, _mm512_sub_ps(gv, dv)));
    }
#else
    for (int j = 0; j < BK; j++) {
        float pj = (vis >> j) & 1 ? exp2f(s[j] - lse) : 0.0f, gj = dp[j], pd = pj;
        if (z) { pd = pj * z[j]; gj *= z[j]; }
        s[j] = pd;
        dp[j] = pj * (gj - dd);
    }
#endif
}

#endif
