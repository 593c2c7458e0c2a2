/* What the benchmark programs of tools/bench share: a monotonic clock, uniform test data from
 * cformer's RNG, and the median of a run's times. */
#ifndef CF_BENCH_H
#define CF_BENCH_H

#include <stdlib.h>
#include <time.h>
#include "cformer/cformer.h"

static inline double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* x[0..n) uniform in [lo, hi), the same values for the same seed */
static inline void fill(float *x, size_t n, float lo, float hi, uint64_t seed) {
    cf_rng r;
    cf_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * cf_rng_float(&r);
}

static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the median of v[0..n), which it sorts */
static inline double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
