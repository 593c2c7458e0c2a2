/* Generation: sampling from a decoder-only model, and greedy and beam decoding of an
 * encoder-decoder with cached keys and values. */
#ifndef CFORMER_DECODE_H
#define CFORMER_DECODE_H

#include <stdint.h>
#include "encdec.h"
#include "model.h"

/* ---- src/decode/sample.c ---- */
/* Append n_new bytes to out (which starts with the prompt of n_prompt bytes, capacity
 * n_prompt + n_new), sampling with temperature (0 = greedy) and top-k (0 = all) from a seeded RNG. */
int cf_sample(cf_model *m, cf_ctx *ctx, uint8_t *out, int n_prompt, int n_new, float temperature, int top_k,
              uint64_t seed);

/* ---- src/decode/translate.c: decoding with cached keys and values -------------------------------- */
/* The incremental decoder: the encoder runs once, each decoder layer's cross-attention keys and
 * values are projected once, and each step feeds one token per row, appending its self-attention
 * keys and values to per-layer caches. No gradient; memory from ctx's arena (reset by
 * cf_dec_cache_init, which keeps everything it allocates until the next cf_ctx_begin). */
typedef struct cf_dec_cache {
    cf_model *m;
    cf_ctx   *ctx;
    int       rows, S, max_T, t;  /* decoder rows, source tokens, step capacity, tokens fed so far */
    float   **self_k, **self_v;   /* per layer [rows, max_T, D] */
    float   **cross_k, **cross_v; /* per layer [rows, S, D] */
    uint8_t  *keep;               /* [rows, S] */
    float    *logits;             /* [rows, V]: the last step's */
    size_t    mark;               /* arena position after the cache: each step rewinds to it */
} cf_dec_cache;

/* Encode n_src sources (src [n_src, S], keep [n_src, S]) and set up rows = n_src * per_src decoder
 * rows (row r decodes source r / per_src: beams share their source's encoder pass) for up to max_T
 * steps. -1 with cf_error_msg() when S or max_T exceed what the model's positions allow. */
int cf_dec_cache_init(cf_dec_cache *c, cf_model *m, cf_ctx *ctx, const int32_t *src, const uint8_t *keep, int n_src,
                      int S, int per_src, int max_T);
/* feed tok[rows] at position c->t; returns the logits [rows, V] of the next token */
const float *cf_dec_cache_step(cf_dec_cache *c, const int32_t *tok);
/* beams: row r continues row parent[r] (its cached keys and values are copied) */
void cf_dec_cache_reorder(cf_dec_cache *c, const int *parent);

/* Greedy decoding of n sources (bytes src[i], src_len[i] each, cut to max_src bytes as training
 * cuts them: max_src = train.seq_len - 1): out[i] (capacity max_len) receives the bytes before EOS,
 * out_len[i] their count; a row that reaches max_len tokens without EOS keeps max_len bytes. Only
 * bytes and EOS are ever chosen (ties: the lower id). -1 with cf_error_msg() when the lengths exceed
 * what the model's positions allow. */
int cf_translate_greedy(cf_model *m, cf_ctx *ctx, const uint8_t *const *src, const int *src_len, int n, int max_src,
                        int max_len, uint8_t **out, int *out_len);
/* Beam search with beam width K over one source: the K best continuations are kept at each step
 * by total log probability; a hypothesis that emits EOS is finished and the beam narrows by one;
 * the result is the finished hypothesis (or, if none finished in max_len steps, any) with the best
 * length-normalised log probability (total / tokens, EOS counted). K = 1 is greedy decoding.
 * score (optional) receives that normalised log probability in nats. */
int cf_translate_beam(cf_model *m, cf_ctx *ctx, const uint8_t *src, int src_len, int max_src, int K, int max_len,
                      uint8_t *out, int *out_len, float *score);

#endif
