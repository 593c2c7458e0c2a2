/* Matrix-vector product for incremental decoding (kernels.h: cf_gemv). One new row per step reads
 * every weight once and reuses none, so the product is bound by memory bandwidth, not arithmetic:
 * four output rows at a time share each load of x, with 16 independent partial sums per row (two
 * vectors of AVX-512 or four of AVX2 after vectorisation) so the loads, not the FMA latency, set
 * the pace. The partial sums are combined in a fixed order. */
#include <stddef.h>
#include "cformer/kernels.h"

#define LANES 16

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
    float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (int l = 0; l < LANES; l++) { t0 += a0[l]; t1 += a1[l]; t2 += a2[l]; t3 += a3[l]; }
    for (; i < k; i++) { t0 += w0[i] * x[i]; t1 += w1[i] * x[i]; t2 += w2[i] * x[i]; t3 += w3[i] * x[i]; }
    s[0] = t0, s[1] = t1, s[2] = t2, s[3] = t3;
}

void cf_gemv(int m, int k, const float *w, int ldw, const float *x, const float *b, float *y) {
    int blocks = (m + 3) / 4;
    #pragma omp parallel for schedule(static) if ((size_t)m * k >= ((size_t)1 << 16))
    for (int blk = 0; blk < blocks; blk++) {
        int i0 = blk * 4, n = m - i0 < 4 ? m - i0 : 4;
        const float *r[4];
        for (int j = 0; j < 4; j++) r[j] = w + (size_t)(i0 + (j < n ? j : 0)) * ldw;
        float s[4];
        dot4(r[0], r[1], r[2], r[3], x, k, s);
        for (int j = 0; j < n; j++) y[i0 + j] = s[j] + (b ? b[i0 + j] : 0.0f);
    }
}
