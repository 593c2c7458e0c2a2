/* A minimal test harness: CHECK records a pass or a failure, main ends with a RESULT line that
 * tests/run.sh sums. A failing CHECK prints "FAIL file:line message" and the test goes on. */
#ifndef CF_TEST_H
#define CF_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "cformer/cformer.h"

static int t_passed, t_failed;

#define CHECK(cond, ...) do {                                                   \
        if (cond) t_passed++;                                                   \
        else { t_failed++; printf("FAIL %s:%d ", __FILE__, __LINE__);           \
               printf(__VA_ARGS__); printf("\n"); fflush(stdout); }             \
    } while (0)

#define TEST_MAIN_END() do {                                                    \
        printf("RESULT passed=%d failed=%d\n", t_passed, t_failed);             \
        return t_failed ? 1 : 0;                                                \
    } while (0)

/* deterministic test data */
static inline void t_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t seed) {
    cf_rng r; cf_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * cf_rng_float(&r);
}

/* max |a - b| / max(max |b|, floor) */
static inline double t_max_rel_err(const float *a, const float *b, int64_t n, double floor) {
    double num = 0, den = floor;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > num || d != d) num = d != d ? INFINITY : d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}

#endif
