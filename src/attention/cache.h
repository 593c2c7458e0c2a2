/* The pieces of incremental decoding the softmax variants share (src/attention/cache.c): storing
 * a new row's keys and values in a layer's cache and attending one query over a list of cached
 * rows. Internal to src/attention/. */
#ifndef CFORMER_ATTENTION_CACHE_H
#define CFORMER_ATTENTION_CACHE_H

#include <stdint.h>
#include "cformer/attention.h"

/* A step's heads run in parallel when its work (about the multiply-adds of all heads) reaches
 * this: a cached step is short, and between the model's parallel products the other threads
 * would otherwise wait through the attention of every layer. */
#ifndef CF_CACHE_PAR_MIN
#define CF_CACHE_PAR_MIN (1 << 12)
#endif

/* the ring row of position p */
static inline int cf_cache_row(const cf_attn_cache *c, int64_t p) { return (int)(p % c->rows); }

/* keys and values of one new row (k, v: [Hkv*Dh], head h at h*Dh) into the ring row of position p */
void cf_cache_put(cf_attn_cache *c, int64_t p, const float *k, const float *v);

/* out [Dh] = sum_j softmax(s)_j V[rows[j]] over n scores s (rows NULL: row j), rows of V ldv
 * apart; s is overwritten. The softmax and weighted sum of every cached step. */
void cf_cache_mix(float *s, int n, const float *V, int ldv, const int32_t *rows, int Dh, float *out);

/* Which cached positions query position p of head h sees, as ring rows into rows_out (at most
 * c->rows of them, ascending positions); returns how many. */
typedef int (*cf_cache_keys_fn)(const cf_attn_call *call, const cf_attn_cache *c, int h, int64_t p, int32_t *rows_out);

/* The step of a softmax variant: for each new row in turn, store its keys and values, then for
 * each head attend its query (scale 1/sqrt(Dh)) over the rows keys() lists. Heads run in
 * parallel when the work is large; each output is summed by one thread in a fixed order. */
void cf_cache_softmax_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                           int ld, int n, float *out, cf_cache_keys_fn keys);

#endif
