/* The base-2 exponential of the fused attention kernels' softmax (src/kernels/attn_tiles.h):
 * exp2_16 (AVX-512 builds) and exp2_flush (the scalar one) against exp2 in double, every 1/64 from
 * -200 to 64 and around the flush point: within 2e-7 relative where 2^t is at least 2^-125, zero
 * below 2^-125.5 (ALiBi and far keys land there), and never subnormal, whose handling by
 * microcode assists on Intel cores slows the products the weights feed. */
#include <float.h>
#include "test.h"
#include "../src/kernels/attn_tiles.h"

static int check(float t, float got, double *worst) {
    if (got != 0.0f && fabsf(got) < FLT_MIN) return 0;            /* subnormal */
    if (t < -125.5f) return got == 0.0f;
    if (t < -125.0f) return got == 0.0f || fabs(got - exp2((double)t)) <= 2e-7 * exp2((double)t);
    double e = fabs(got - exp2((double)t)) / exp2((double)t);
    if (e > *worst) *worst = e;
    return e <= 2e-7;
}

int main(void) {
    int bad_scalar = 0, n = 0;
    double worst = 0;
    for (int i = -200 * 64; i <= 64 * 64; i++, n++) bad_scalar += !check(i / 64.0f, exp2_flush(i / 64.0f), &worst);
    for (float t = -126.1f; t < -124.9f; t = nextafterf(t, 0), n++) bad_scalar += !check(t, exp2_flush(t), &worst);
    CHECK(bad_scalar == 0, "exp2_flush: %d of %d wrong or subnormal", bad_scalar, n);
#ifdef __AVX512F__
    int bad = 0, m = 0;
    float in[16], lanes[16];
    for (int i = -200 * 64; i <= 64 * 64; i += 16) {
        for (int j = 0; j < 16; j++) in[j] = (i + j) / 64.0f;
        _mm512_storeu_ps(lanes, exp2_16(_mm512_loadu_ps(in)));
        for (int j = 0; j < 16; j++, m++) bad += !check(in[j], lanes[j], &worst);
    }
    for (float t = -126.1f; t < -124.9f; t = nextafterf(t, 0), m++) {
        _mm512_storeu_ps(lanes, exp2_16(_mm512_set1_ps(t)));
        bad += !check(t, lanes[0], &worst);
    }
    CHECK(bad == 0, "exp2_16: %d of %d wrong or subnormal", bad, m);
#endif
    printf("exp2: worst relative error %.3g\n", worst);
    TEST_MAIN_END();
}
