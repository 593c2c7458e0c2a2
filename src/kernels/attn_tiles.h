/* Register-tiled pieces shared by the fused attention kernels (src/ops/attention.c, and the
 * masked variants of src/attention/masked.c): the score block Q K^T of 64 keys, a 16-lane 2^x (also
 * the Performer's features), the online-softmax steps of a 64-key block. Internal. */
#ifndef CF_KERNELS_ATTN_TILES_H
#define CF_KERNELS_ATTN_TILES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef BK
#define BK 64          /* keys per block */
#endif
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


/* The online softmax over 64-key blocks (both fused kernels): the largest visible score of a row
 * (bit j of vis; -inf when no key is visible; s 64-byte aligned) ... */
static inline float masked_row_max(const float *s, uint64_t vis) {
    float mx = -INFINITY;
#ifdef __AVX512F__
    if (vis) {
        __m512 m4 = _mm512_set1_ps(-INFINITY);
        for (int v = 0; v < 4; v++)
            m4 = _mm512_mask_max_ps(m4, (__mmask16)(vis >> (16 * v)), m4, _mm512_load_ps(s + 16 * v));
        mx = _mm512_reduce_max_ps(m4);
    }
#else
    for (int j = 0; j < 64; j++)
        if ((vis >> j) & 1 && s[j] > mx) mx = s[j];
#endif
    return mx;
}

/* ... and the factor alpha[i] = 2^(m[i] - mnew[i]) by which row i's running sum and output shrink
 * when its maximum grows, for i < nq: 1 while no key is visible yet (mnew = -inf: the accumulator
 * is still zero anyway) */
static inline void online_alpha(const float *m, const float *mnew, float *alpha, int nq) {
#ifdef __AVX512F__
    for (int i = 0; i < nq; i += 16) {
        __mmask16 live = (__mmask16)(nq - i >= 16 ? 0xFFFF : (1u << (nq - i)) - 1);
        __m512 mo = _mm512_maskz_loadu_ps(live, m + i), mn = _mm512_maskz_loadu_ps(live, mnew + i);
        __mmask16 empty = _mm512_cmp_ps_mask(mn, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
        __m512 t = _mm512_max_ps(_mm512_maskz_sub_ps((__mmask16)~empty, mo, mn), _mm512_set1_ps(-200.0f));
        _mm512_mask_storeu_ps(alpha + i, live, exp2_16(t));
    }
#else
    for (int i = 0; i < nq; i++) alpha[i] = mnew[i] == -INFINITY ? 1.0f : exp2f(m[i] - mnew[i]);
#endif
}

/* ... then the probabilities of a row: s[j] = 2^(s[j] - m) on visible keys, 0 elsewhere, times the
 * dropout multipliers z[j] when z is not NULL; returns the sum before dropout (the softmax
 * denominator's share of this block) */
static inline float prob_row(float *s, uint64_t vis, float m, const float *z) {
#ifdef __AVX512F__
    __m512 mv = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    for (int v = 0; v < 4; v++) {
        __m512 pv = _mm512_maskz_mov_ps((__mmask16)(vis >> (16 * v)), exp2_16(_mm512_sub_ps(_mm512_load_ps(s + 16 * v), mv)));
        sum = _mm512_add_ps(sum, pv);
        if (z) pv = _mm512_mul_ps(pv, _mm512_load_ps(z + 16 * v));
        _mm512_store_ps(s + 16 * v, pv);
    }
    return _mm512_reduce_add_ps(sum);
#else
    float rowsum = 0;
    for (int j = 0; j < 64; j++) {
        float pj = (vis >> j) & 1 ? exp2f(s[j] - m) : 0.0f;
        rowsum += pj;
        s[j] = z ? pj * z[j] : pj;
    }
    return rowsum;
#endif
}

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
