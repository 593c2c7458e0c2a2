/* Building blocks with parameters: each declares its parameters under a name prefix and records
 * ops when applied. Names follow docs/architecture.md section 4 ("blocks.3.attn.qkv.weight"). */
#ifndef CFORMER_NN_H
#define CFORMER_NN_H

#include "attention.h"
#include "ops.h"
#include "param.h"
#include "schema.h"

typedef struct cf_linear_layer { cf_tensor *w, *b; } cf_linear_layer;        /* w [out, in], b [out] or NULL */
typedef struct cf_norm_layer { cf_tensor *w, *b; cf_norm_kind kind; float eps; } cf_norm_layer;
/* proj(act(fc x)), or with glu proj(act(fc x) * up x); up.w is NULL without glu */
typedef struct cf_mlp_layer { cf_linear_layer fc, up, proj; cf_act_kind act; } cf_mlp_layer;

/* What a self-attention layer does to its heads besides the core (docs/attention.md section 11):
 * grouped key/value heads, rotary positions or ALiBi biases, QK-norm. All zero: plain multi-head
 * attention with n_heads key/value heads. */
typedef struct cf_attn_heads {
    int   n_kv_heads;            /* 0 = n_heads; fewer share each key/value head among n_heads / n_kv_heads */
    int   rope_dims;             /* 0 = none; else the even count of each head's dims that rope turns */
    float rope_theta;            /* rope's frequency base */
    int   alibi;                 /* ALiBi biases on the scores (the core's kernels add them) */
    int   qk_norm;               /* RMSNorm of each query and key head */
    float qk_eps;
} cf_attn_heads;

/* the heads settings of a model config's self-attention layers */
cf_attn_heads cf_attn_heads_of(const cf_model_config *m);

/* Multi-head attention: fused q/k/v projection (self-attention) or q and fused k/v (cross),
 * a variant core (attention.h: the row of cfg.type in the variant table), an output projection. */
typedef struct cf_attn_layer {
    cf_linear_layer qkv, proj;      /* qkv [(H + 2 Hkv) Dh, D]: query rows, key rows, value rows */
    int   n_heads;
    cf_attn_heads heads;         /* n_kv_heads resolved (never 0) */
    cf_tensor *q_norm, *k_norm;  /* QK-norm weights [Dh], or NULL */
    int   causal;
    float dropout;               /* on the attention probabilities */
    cf_attn_config cfg;          /* the variant and its settings */
    /* Set by cf_attn_decl from the name prefix (docs/architecture.md section 4 puts the block index in it:
     * "blocks.3.attn", "encoder.blocks.3.attn"): */
    int      layer;              /* the block index: sparse "alternate" takes part 1 or 2 by its parity */
    uint64_t layer_key;          /* a hash of the whole prefix: keys the performer's random features */
    /* the variant's own parameters ("<prefix>.<name>" of its row's extra[]: xl r_net.weight [D, D],
     * infini gate [H]), NULL past its n_extra */
    cf_tensor *extra[CF_ATTN_MAX_EXTRA];
    /* the performer's draw record (owned by the cf_params the layer was declared in): the core
     * notes the draw it trains with there and reads it outside training (see cf_attn_set_step) */
    cf_attn_draw *draw;
} cf_attn_layer;

typedef struct cf_block {
    cf_norm_layer ln1, ln2;
    cf_attn_layer attn;
    cf_mlp_layer  mlp;
    cf_norm_pos   norm_position;
    float         dropout;       /* residual dropout */
} cf_block;

/* src/nn/linear.c */
void       cf_linear_decl(cf_linear_layer *l, cf_params *p, const char *prefix, int in, int out, int bias);
cf_tensor *cf_linear_apply(cf_ctx *ctx, const cf_linear_layer *l, cf_tensor *x);
/* src/nn/norm.c */
void       cf_norm_decl(cf_norm_layer *n, cf_params *p, const char *prefix, int d, cf_norm_kind kind, float eps);
cf_tensor *cf_norm_apply(cf_ctx *ctx, const cf_norm_layer *n, cf_tensor *x);
/* n(x + r), the sum x + r into *sum, in one pass (cf_add_norm) */
cf_tensor *cf_norm_add_apply(cf_ctx *ctx, const cf_norm_layer *n, cf_tensor *x, cf_tensor *r, cf_tensor **sum);
/* src/nn/mlp.c */
void       cf_mlp_decl(cf_mlp_layer *m, cf_params *p, const char *prefix, int d, int d_ff, cf_act_kind act, int bias);
/* the same, gated (glu): fc, up [d_ff, d] and proj [d, d_ff] */
void       cf_mlp_decl_glu(cf_mlp_layer *m, cf_params *p, const char *prefix, int d, int d_ff, cf_act_kind act, int bias,
                           int glu);
cf_tensor *cf_mlp_apply(cf_ctx *ctx, const cf_mlp_layer *m, cf_tensor *x);
/* src/nn/attention.c; x [B, T, D] -> [B, T, D] */
void       cf_attn_decl(cf_attn_layer *a, cf_params *p, const char *prefix, int d, int n_heads, int causal,
                        float dropout, const cf_attn_config *cfg, int bias);
/* the same with grouped heads, positions and QK-norm (NULL = none of them) */
void       cf_attn_decl_heads(cf_attn_layer *a, cf_params *p, const char *prefix, int d, int n_heads, int causal,
                              float dropout, const cf_attn_config *cfg, int bias, const cf_attn_heads *heads);
cf_tensor *cf_attn_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x);
/* the same with a key padding mask [B, T] (nonzero = real token; NULL = none) for the variants that
 * take one, borrowed until backward has run (an encoder's padded source) */
cf_tensor *cf_attn_apply_keep(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x, const uint8_t *key_keep);
/* the same with the recurrent state of this call (attention.h: cf_attn_state; NULL = none): infini
 * reads and writes its memory there; xl takes its queries from x and its keys, values and relative
 * positions from state->xl, and needs it */
cf_tensor *cf_attn_apply_state(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x, const uint8_t *key_keep,
                               const cf_attn_state *state);
/* The layer's head ops on its projection qkv [B, T, (H + 2 Hkv) Dh] at absolute positions pos0...:
 * QK-norm, rope, and the repetition of shared key/value heads -> [B, T, 3D], the cores' input */
cf_tensor *cf_attn_heads_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *qkv, int64_t pos0);
/* The core of layer a on qkv [B, T, (H + 2 Hkv) Dh] -> [B, T, D] (the head ops first), without state, for the variants that run on
 * the fused projection (all but xl). key_keep [B, T] (nonzero = real token) or NULL masks padded
 * keys; borrowed until backward has run. Attention dropout (a->dropout, training only) applies to
 * the softmax variants (full, window, sparse); linear and performer have no probabilities to drop. */
cf_tensor *cf_attn_core(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *qkv, const uint8_t *key_keep);

/* Outside training the performer uses the random features of the step it last trained at (so that
 * evaluation sees the features the weights were fitted to). A layer fresh from a checkpoint has
 * not trained yet: this tells it the step (and train.seed) it was saved at. */
void cf_attn_set_step(cf_attn_layer *a, uint64_t seed, uint64_t step);

/* ---- incremental decoding, inference only: no tape, rows of plain floats (src/nn/step.c and the
 * end of src/nn/attention.c; docs/architecture.md section 20) ---------------------------------------- */
/* y [n, out] = x [n, in] W^T + b: cf_gemv for one row, cf_gemm for more */
void cf_linear_rows(const cf_linear_layer *l, const float *x, int n, float *y);
/* fill a layer's cache (sized and zeroed by the model) with what its variant computes once
 * (cf_attn_variant.cache_start); state as for cf_attn_apply_state (xl: u and v) */
void cf_attn_cache_start(cf_ctx *ctx, const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *c);
/* q, k, v of n new rows x [n, D] at positions pos [n] into qkv [n, (H + 2 Hkv) Dh] (the query
 * heads, the key heads, the value heads): the one place they are made, with the layer's head
 * options */
void cf_attn_step_qkv(const cf_attn_layer *a, const int64_t *pos, const float *x, int n, float *qkv);
/* the attention layer on n new rows x [n, D] -> out [n, D], appending them to the cache */
void cf_attn_step(cf_ctx *ctx, const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *c, const float *x,
                  int n, float *out);
/* n streams of one new row each, x [n, D] -> out [n, D]: row r appends to caches[r] (beams, a batch
 * of sources) */
void cf_attn_step_streams(cf_ctx *ctx, const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *caches,
                          const float *x, int n, float *out);
/* a recurrent variant's call boundary (cf_attn_variant.boundary) */
void cf_attn_boundary(const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *c);
/* the block on n new rows x [n, D], in place; scratch from ctx's arena (rewound before return) */
void cf_block_step(cf_ctx *ctx, const cf_block *b, const cf_attn_state *state, cf_attn_cache *c, float *x, int n);

/* src/nn/block.c; one transformer block, pre- or post-norm */
void       cf_block_decl(cf_block *b, cf_params *p, const char *prefix, const cf_model_config *m,
                         const cf_attn_config *attn, int causal);
cf_tensor *cf_block_apply(cf_ctx *ctx, const cf_block *b, cf_tensor *x);
/* the same with the recurrent state of the block's attention call (cf_attn_apply_state) */
cf_tensor *cf_block_apply_state(cf_ctx *ctx, const cf_block *b, cf_tensor *x, const cf_attn_state *state);

/* ---- src/nn/cross_attention.c ------------------------------------------------------------------ */
/* Multi-head attention of queries x [B, T, D] over a memory [B, S, D] (the encoder output). */
typedef struct cf_cross_attn_layer {
    cf_linear_layer q, kv, proj;      /* q [D, D], fused kv [2D, D], proj [D, D] */
    int   n_heads;
    float dropout;                    /* on the attention probabilities */
} cf_cross_attn_layer;

void cf_cross_attn_decl(cf_cross_attn_layer *l, cf_params *p, const char *prefix, int d, int n_heads,
                        float dropout, int bias);
/* the fused projection of the memory: [B, S, 2D], columns [0, D) keys, [D, 2D) values */
cf_tensor *cf_cross_attn_kv(cf_ctx *ctx, const cf_cross_attn_layer *l, cf_tensor *mem);
/* x [B, T, D] attending to mem [B, S, D]; mem_keep [B, S] nonzero = real token (NULL = all), borrowed
 * until backward has run -> [B, T, D] */
cf_tensor *cf_cross_attn_apply(cf_ctx *ctx, const cf_cross_attn_layer *l, cf_tensor *x, cf_tensor *mem,
                               const uint8_t *mem_keep);

#endif
