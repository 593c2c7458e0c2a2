/* GELU (tanh approximation) of one element and its derivative, shared by the gelu op
 * (activation.c) and linear + GELU (linear_gelu.c), which therefore give the same bits.
 * Internal to src/ops/. */
#ifndef CFORMER_OPS_GELU_H
#define CFORMER_OPS_GELU_H

#include <math.h>

/* tanh as a rational function (the minimax fit Eigen uses for float), branch-free so that the
 * loops below vectorise, which tanhf from libm does not. Measured over every float in [0, 12]
 * against tanh in double: max relative error 4.1e-7 (tanhf: 1.7e-7). Beyond |x| = 7.905 the fit
 * is exactly +-1, as tanhf is in float; below 4e-4 the fit would underflow for denormals, and
 * tanh(x) = x to within x^2/3 < 6e-8 relative there. */
static inline float fast_tanhf(float x) {
    const float clamp = 7.90531110763549805f;
    float xc = x > clamp ? clamp : (x < -clamp ? -clamp : x);
    float x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * xc;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return fabsf(x) < 0.0004f ? x : p / q;
}

/* PyTorch gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
#define GELU_C 0.7978845608028654f   /* sqrt(2/pi) */
#define GELU_A 0.044715f

static inline float cf_gelu_value(float v) {
    float t = fast_tanhf(GELU_C * (v + GELU_A * v * v * v));
    return 0.5f * v * (1.0f + t);
}

/* d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t recomputed from x */
static inline float cf_gelu_slope(float v) {
    float t = fast_tanhf(GELU_C * (v + GELU_A * v * v * v));
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * v * v);
}

#endif
