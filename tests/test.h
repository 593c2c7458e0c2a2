/* A minimal test harness: CHECK records a pass or a failure, main ends with a RESULT line that
 * tests/run.sh sums. A failing CHECK prints "FAIL file:line message" and the test goes on. */
#ifndef CF_TEST_H
#define CF_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
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

/* a whole text file, NUL-terminated ("" when it cannot be read); the caller frees */
static inline char *t_read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = calloc((size_t)n + 1, 1);
    size_t got = fread(b, 1, (size_t)n, f);
    b[got] = 0;
    fclose(f);
    return b;
}

/* A checkpoint edited through HDF5 (a test making a file that is damaged in a precise way) gets
 * checksums that match its new contents, so that the check under test, not the integrity check,
 * is what refuses it. 0, or -1 when the file cannot be read or written. */
static inline int t_reseal(const char *path) {
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    uint8_t *b = n > CF_CKPT_USERBLOCK ? malloc((size_t)n) : NULL;
    int rc = b && fseek(f, 0, SEEK_SET) == 0 && fread(b, 1, (size_t)n, f) == (size_t)n ? 0 : -1;
    if (!rc) {
        cf_ckpt_seal(b, b + CF_CKPT_USERBLOCK, (size_t)n - CF_CKPT_USERBLOCK);
        rc = fseek(f, 0, SEEK_SET) == 0 && fwrite(b, 1, CF_CKPT_USERBLOCK, f) == CF_CKPT_USERBLOCK ? 0 : -1;
    }
    free(b);
    return fclose(f) || rc ? -1 : 0;
}

/* cf_train with its progress and evaluation lines on stderr sent to /dev/null (they are not test
 * output); its return value */
static inline int t_train_quietly(const cf_config *c, const cf_train_opts *o) {
    fflush(stdout);
    fflush(stderr);
    int saved = dup(2);
    FILE *null = freopen("/dev/null", "w", stderr);
    int rc = cf_train(c, o);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    (void)null;
    return rc;
}

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
