/* Generation: sampling from a decoder-only model, and greedy and beam decoding of an
 * encoder-decoder with cached keys and values. */
#ifndef CFORMER_DECODE_H
#define CFORMER_DECODE_H

#include <stdint.h>
#include "encdec.h"
#include "model.h"

/* ---- src/decode/sample.c: sampling bytes from a decoder-only model ------------------------------- */
typedef struct cf_sample_opts {
    float       temperature;   /* 0: greedy (ties: the lower byte) */
    int         top_k;         /* keep the k most likely bytes; 0: all */
    float       top_p;         /* keep the fewest most likely bytes whose probability reaches p; 1: all */
    uint64_t    seed;
    /* A recurrent model's call length (its streamed evaluation's, normally eval.ctx); for other
     * models the context (0: model.max_seq_len with absolute positions, else the whole text). */
    int         span;
    /* When a bounded context (absolute positions: cf_gen_room) of span bytes is full, the oldest
     * `slide` of them are dropped and the rest re-encoded from position 0 with the new byte;
     * 0: half the context. 1 re-encodes for every byte, as the uncached sampler does (the same
     * bytes). */
    int         slide;
    const char *stop;          /* stop once these bytes are produced (not counted, not emitted); NULL: none */
    int         uncached;      /* re-run the full forward on the window for every byte (the reference) */
    /* each new byte as soon as it is known not to start the stop string; NULL: none */
    void      (*emit)(void *arg, const uint8_t *bytes, int n);
    void       *emit_arg;
    /* out: how many times the context was re-encoded after filling up; bytes of the caches */
    int64_t     reencodes;
    size_t      cache_bytes;
} cf_sample_opts;
/* temperature 1, everything else off */
cf_sample_opts cf_sample_defaults(void);
/* Append up to n_new bytes to out (which starts with the prompt of n_prompt bytes, capacity
 * n_prompt + n_new) through the model's cached incremental decoding (model.h: cf_gen). An empty
 * prompt starts from a newline, counted among the new bytes. Returns the number of new bytes
 * (fewer than n_new after a stop string, which is not among them), or -1 with cf_error_msg(). */
int cf_sample(cf_model *m, cf_ctx *ctx, uint8_t *out, int n_prompt, int n_new, cf_sample_opts *o);

/* ---- src/decode/translate.c: decoding with cached keys and values -------------------------------- */
/* The incremental decoder: the encoder runs once, each decoder layer's cross-attention keys and
 * values are projected once, and each step feeds one token per row. The caches are the attention
 * variants' (attention.h: cf_attn_cache, docs/architecture.md section 20): each row of each
 * layer's self-attention is a stream that the variant's step appends to, and the encoder output's
 * keys and values sit in caches of S rows that cf_attn_cache_attend reads. No gradient; memory
 * from ctx's arena (reset by cf_dec_cache_init, which keeps everything it allocates until the
 * next cf_ctx_begin). */
typedef struct cf_dec_cache {
    cf_model      *m;
    cf_ctx        *ctx;
    int            rows, S, max_T, t;  /* decoder rows, source tokens, step capacity, tokens fed so far */
    cf_attn_cache *self;               /* [L * rows]: layer l, row r at l * rows + r */
    cf_attn_cache *cross;              /* [L * rows]: the projected encoder output of row r's source */
    int32_t       *visible;            /* [rows, S]: the unpadded source positions of each row */
    int           *n_visible;          /* [rows] */
    float         *logits;             /* [rows, V]: the last step's */
    size_t         mark;               /* arena position after the cache: each step rewinds to it */
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
