/* The attention tests' configurations and inputs (tests/test_attention.c, tests/test_attn_bf16.c):
 * a shape with masking and dropout, the key padding pattern, and random q, k, v and dO. */
#ifndef CF_TEST_ATTN_FIXTURE_H
#define CF_TEST_ATTN_FIXTURE_H

#include "test.h"

typedef struct cfg {
    int B, H, Tq, Tk, Dh, causal, keep;   /* keep: use the key padding pattern below */
    float p;                              /* attention dropout (training) */
} cfg;

/* Padding per batch row: row 0 drops scattered keys, row 1 its first 3 keys (with causal, the
 * first queries then see no key at all), row 2 the last third (the usual right padding); further
 * rows keep everything. */
static inline void make_keep(const cfg *c, uint8_t *keep) {
    cf_rng r;
    cf_rng_seed(&r, 99);
    for (int b = 0; b < c->B; b++)
        for (int j = 0; j < c->Tk; j++) {
            int k = 1;
            if (b == 0) k = cf_rng_float(&r) > 0.25f || j == 0;
            if (b == 1) k = j >= 3;
            if (b == 2) k = j < c->Tk - c->Tk / 3;
            keep[b * c->Tk + j] = (uint8_t)k;
        }
}

typedef struct data { float *q, *k, *v, *dO; uint8_t *keep; } data;

static inline data make_data(const cfg *c, uint64_t seed) {
    int C = c->H * c->Dh;
    int64_t nq = (int64_t)c->B * c->Tq * C, nk = (int64_t)c->B * c->Tk * C;
    data d = {malloc(sizeof(float) * nq), malloc(sizeof(float) * nk), malloc(sizeof(float) * nk),
              malloc(sizeof(float) * nq), malloc((size_t)c->B * c->Tk)};
    /* a spread of 2.5 gives peaked rows (scores up to ~|6|) as well as flat ones */
    t_fill_uniform(d.q, nq, -2.5f, 2.5f, seed);
    t_fill_uniform(d.k, nk, -2.5f, 2.5f, seed + 1);
    t_fill_uniform(d.v, nk, -1, 1, seed + 2);
    t_fill_uniform(d.dO, nq, -1, 1, seed + 3);
    make_keep(c, d.keep);
    return d;
}

static inline void data_free(data *d) { free(d->q); free(d->k); free(d->v); free(d->dO); free(d->keep); }

#endif
