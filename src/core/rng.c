/* xoshiro256** (Blackman and Vigna), seeded through splitmix64: the stateful generator for
 * set-up work. Training-time randomness uses the counter-based cf_rng_uniform instead. */
#include <math.h>
#include "cformer/core.h"

void cf_rng_seed(cf_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = seed = cf_mix64(seed + (uint64_t)i);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cf_rng_next(cf_rng *r) {
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

float cf_rng_float(cf_rng *r) { return (float)(cf_rng_next(r) >> 40) * (1.0f / 16777216.0f); }

float cf_rng_normal(cf_rng *r) {
    double u1 = ((double)(cf_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (double)(cf_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}
