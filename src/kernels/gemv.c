/* Matrix-vector product for incremental decoding (kernels.h: cf_gemv). One new row per step reads
 * every weight once and reuses none, so the product is bound by how fast the weights stream in,
 * not by arithmetic. Each output row is summed in 16 lanes (lane l takes the products at columns
 * l, l + 16, ...; a multiply, then an add: the build contracts no multiply-add in C, -std=c11),
 * the lanes added pairwise (lane_sum), then the columns past the last whole 16, then the bias: one
 * fixed order, which both kernels below keep, so they give the same bits.
 *
 * The AVX-512 kernel takes eight rows at a time, one zmm of lanes per row, so eight independent
 * streams of loads share each load of x, and sums the eight rows' lanes together in one ymm;
 * written in C the compiler keeps four rows' lanes in registers and sums each row alone. Measured
 * on the 2-core EPYC (Zen 5) over the 16 products of the enwik8-small decoder (12 MB of weights,
 * in L3), best of 5 runs at 1 thread: 94 GB/s against the C kernel's 75. */
#include <stddef.h>
#include <stdint.h>
#include "cformer/kernels.h"

#define LANES 16

/* the lanes' sum in the kernels' order: lanes l and l + 8, then l and l + 4, then neighbours twice */
static float lane_sum(float a[LANES]) {
    for (int l = 0; l < 8; l++) a[l] += a[l + 8];
    for (int l = 0; l < 4; l++) a[l] += a[l + 4];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* dot products of rows w0..w3 with x over k, into s[4] */
static void dot4(const float *w0, const float *w1, const float *w2, const float *w3, const float *x, int k,
                 float s[4]) {
    float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
    int i = 0;
    for (; i + LANES <= k; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float xv = x[i + l];
            a0[l] += w0[i + l] * xv;
            a1[l] += w1[i + l] * xv;
            a2[l] += w2[i + l] * xv;
            a3[l] += w3[i + l] * xv;
        }
    float t0 = lane_sum(a0), t1 = lane_sum(a1), t2 = lane_sum(a2), t3 = lane_sum(a3);
    for (; i < k; i++) { t0 += w0[i] * x[i]; t1 += w1[i] * x[i]; t2 += w2[i] * x[i]; t3 += w3[i] * x[i]; }
    s[0] = t0, s[1] = t1, s[2] = t2, s[3] = t3;
}

/* the row of w that output j reads */
static inline const float *row_of(const float *w, int ldw, const int32_t *idx, int j) {
    return w + (size_t)(idx ? idx[j] : j) * ldw;
}

/* outputs [j0, j0 + n) of y, n <= 4 */
static void rows4(int j0, int n, int k, const float *w, int ldw, const int32_t *idx, const float *x, const float *b,
                  float *y) {
    const float *r[4];
    for (int j = 0; j < 4; j++) r[j] = row_of(w, ldw, idx, j0 + (j < n ? j : 0));
    float s[4];
    dot4(r[0], r[1], r[2], r[3], x, k, s);
    for (int j = 0; j < n; j++) y[j0 + j] = s[j] + (b ? b[j0 + j] : 0.0f);
}

#if defined(__AVX512F__)
#include <immintrin.h>

#define ROWS 8

/* outputs [j0, j0 + 8) of y: dot4's arithmetic, eight rows at a time */
static void rows8(int j0, int k, const float *w, int ldw, const int32_t *idx, const float *x, const float *b,
                  float *y) {
    const float *r[ROWS];
    __m512 a[ROWS];
    for (int j = 0; j < ROWS; j++) {
        r[j] = row_of(w, ldw, idx, j0 + j);
        a[j] = _mm512_setzero_ps();
    }
    int i = 0;
    for (; i + LANES <= k; i += LANES) {
        __m512 xv = _mm512_loadu_ps(x + i);
        for (int j = 0; j < ROWS; j++) a[j] = _mm512_add_ps(a[j], _mm512_mul_ps(_mm512_loadu_ps(r[j] + i), xv));
    }
    /* lanes l and l + 8, then l and l + 4 (two rows to a vector), then neighbours twice */
    __m256 h[ROWS], u[ROWS / 2];
    for (int j = 0; j < ROWS; j++)
        h[j] = _mm256_add_ps(_mm512_castps512_ps256(a[j]), _mm512_extractf32x8_ps(a[j], 1));
    for (int j = 0; j < ROWS; j += 2)
        u[j / 2] = _mm256_add_ps(_mm256_permute2f128_ps(h[j], h[j + 1], 0x20), _mm256_permute2f128_ps(h[j], h[j + 1], 0x31));
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(u[0], u[1]), _mm256_hadd_ps(u[2], u[3]));
    t = _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));     /* rows 0..7 */
    if (i < k) {                                      /* the columns past the last whole 16 */
        float s[ROWS];
        _mm256_storeu_ps(s, t);
        for (int j = 0; j < ROWS; j++)
            for (int c = i; c < k; c++) s[j] += r[j][c] * x[c];
        t = _mm256_loadu_ps(s);
    }
    if (b) t = _mm256_add_ps(t, _mm256_loadu_ps(b + j0));
    _mm256_storeu_ps(y + j0, t);
}
#else
#define ROWS 4
#endif

/* block blk of ROWS outputs */
static void block(int blk, int m, int k, const float *w, int ldw, const int32_t *idx, const float *x, const float *b,
                  float *y) {
    int j0 = blk * ROWS, n = m - j0 < ROWS ? m - j0 : ROWS;
#if defined(__AVX512F__)
    if (n == ROWS) {
        rows8(j0, k, w, ldw, idx, x, b, y);
        return;
    }
#endif
    for (int j = 0; j < n; j += 4) rows4(j0 + j, n - j < 4 ? n - j : 4, k, w, ldw, idx, x, b, y);
}

void cf_gemv(int m, int k, const float *w, int ldw, const float *x, const float *b, float *y) {
    int blocks = (m + ROWS - 1) / ROWS;
    #pragma omp parallel for schedule(static) if ((size_t)m * k >= ((size_t)1 << 16))
    for (int blk = 0; blk < blocks; blk++) block(blk, m, k, w, ldw, NULL, x, b, y);
}

void cf_dot_rows(int n, int k, const float *w, int ldw, const int32_t *idx, const float *x, float *y) {
    for (int blk = 0; blk < (n + ROWS - 1) / ROWS; blk++) block(blk, n, k, w, ldw, idx, x, NULL, y);
}
