/* cf_gemv (the product of incremental decoding) against a scalar reference in the order the
 * kernel documents (16 lanes, summed pairwise, then the columns past the last whole 16, then the
 * bias): bitwise, whichever kernel the build chose and at any thread count; and against a double
 * reference. Sizes cover whole and partial blocks of rows, k below, at and past multiples of 16,
 * padded rows and no bias. */
#include <omp.h>
#include "test.h"

/* y[i] in the documented order */
static float ref_row(const float *w, const float *x, int k, float b) {
    float a[16] = {0};
    int i = 0;
    for (; i + 16 <= k; i += 16)
        for (int l = 0; l < 16; l++) a[l] += w[i + l] * x[i + l];
    for (int l = 0; l < 8; l++) a[l] += a[l + 8];
    for (int l = 0; l < 4; l++) a[l] += a[l + 4];
    float t = (a[0] + a[1]) + (a[2] + a[3]);
    for (; i < k; i++) t += w[i] * x[i];
    return t + b;
}

int main(void) {
    static const int shapes[][3] = {   /* m, k, padding of w's rows */
        {1, 1, 0}, {3, 5, 2}, {4, 16, 0}, {7, 16, 1}, {8, 16, 0}, {9, 17, 0}, {8, 40, 3},
        {16, 33, 0}, {20, 64, 5}, {257, 256, 0}, {768, 256, 0}, {256, 1024, 0}};
    int nt0 = omp_get_max_threads();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int m = shapes[s][0], k = shapes[s][1], ldw = k + shapes[s][2];
        float *w = malloc(sizeof(float) * (size_t)m * ldw), *x = malloc(sizeof(float) * k);
        float *b = malloc(sizeof(float) * m), *y = malloc(sizeof(float) * (m + 1));
        t_fill_uniform(w, (int64_t)m * ldw, -1, 1, 10 + s);
        t_fill_uniform(x, k, -1, 1, 20 + s);
        t_fill_uniform(b, m, -1, 1, 30 + s);
        for (int bias = 0; bias < 2; bias++)
            for (int th = 1; th <= 2; th++) {
                omp_set_num_threads(th);
                y[m] = 12345.0f;
                cf_gemv(m, k, w, ldw, x, bias ? b : NULL, y);
                int same = y[m] == 12345.0f;
                double err = 0, scale = 1;
                for (int i = 0; i < m; i++) {
                    const float *wr = w + (size_t)i * ldw;
                    same &= y[i] == ref_row(wr, x, k, bias ? b[i] : 0.0f);
                    double d = bias ? b[i] : 0;
                    for (int c = 0; c < k; c++) d += (double)wr[c] * x[c];
                    err = fmax(err, fabs(y[i] - d));
                    scale = fmax(scale, fabs(d));
                }
                CHECK(same, "gemv m=%d k=%d ldw=%d bias=%d threads=%d: not bitwise the documented order", m, k,
                      ldw, bias, th);
                CHECK(err / scale < 1e-5, "gemv m=%d k=%d bias=%d threads=%d: error %.3g against double", m, k, bias,
                      th, err / scale);
            }
        free(w), free(x), free(b), free(y);
    }
    omp_set_num_threads(nt0);
    TEST_MAIN_END();
}
