/* Models built from a config: the decoder-only language model (GPT-2 architecture by default,
 * DESIGN.md section 5). */
#ifndef CFORMER_MODEL_H
#define CFORMER_MODEL_H

#include "nn.h"

typedef struct cf_region { cf_block *blocks; int n; } cf_region;   /* blocks checkpointed together */

typedef struct cf_model {
    cf_model_config cfg;
    cf_params       params;
    cf_tensor      *tok_emb;          /* [V, D] */
    cf_tensor      *pos_emb;          /* [max_seq_len, D] when position is learned, else NULL */
    float          *pos_table;        /* [max_seq_len, D] sinusoids when position is sinusoidal */
    cf_tensor      *lm_head;          /* [V, D] when embeddings are untied, else NULL */
    cf_norm_layer   ln_f;
    cf_block       *blocks;
    int             n_blocks;
    int             grad_checkpoint;  /* 0: none; k: regions of k blocks recomputed in backward */
    cf_region      *regions;
    int             n_regions;
    /* model.arch "encoder_decoder": the model's layers (encdec.h); its parameters are in params and
     * the decoder-only fields above stay empty. NULL for the decoder-only model. */
    struct cf_encdec *ed;
    /* Transformer-XL (some layer of type xl; ALGORITHMS.md section 1): no absolute positions
     * (model.position is ignored), token embeddings scaled by sqrt(D), relative sinusoids through
     * each xl layer's r_net, and u, v shared by the xl layers. mem[l] [mem_batch, mem_len_l, D]
     * holds the last mem_used[l] inputs of xl layer l from the previous segments of each batch row
     * (most recent last), a constant: no gradient flows into it. NULLs when no layer is xl. */
    int             has_xl;
    cf_tensor      *r_w_bias, *r_r_bias;  /* u, v [H, Dh] */
    float         **mem;              /* [n_blocks]: NULL for layers that are not xl */
    int            *mem_used;         /* [n_blocks] */
    int             mem_batch;        /* batch rows the memory holds (0: none yet) */
} cf_model;

/* declare every parameter and initialise them: normal(0, init_std), residual output projections
 * (attn.proj, mlp.proj) scaled by 1/sqrt(2 n_layers), zero biases, unit norm weights. model.arch
 * "encoder_decoder" is built by cf_encdec_init (encdec.h).
 * -1 with cf_error_msg() for a configuration the model cannot build. */
int  cf_model_init(cf_model *m, const cf_model_config *c, uint64_t seed);
void cf_model_free(cf_model *m);
void cf_model_set_checkpointing(cf_model *m, int k);
/* Forget every xl layer's memory (the next segment starts without one). A no-op without xl. */
void cf_model_reset_memory(cf_model *m);
/* logits [B, T, V] for ids [B, T]. With xl layers: in training (ctx->training) the segment attends
 * to the memory of the previous call with the same B (a different B resets it) and then becomes
 * the memory of the next; outside training no memory is read or written. */
cf_tensor *cf_model_logits(cf_model *m, cf_ctx *ctx, const int32_t *ids, int B, int T);
/* mean cross-entropy in nats of targets [B, T]; logits_out (optional) receives the logits */
cf_tensor *cf_model_loss(cf_model *m, cf_ctx *ctx, const int32_t *ids, const int32_t *targets, int B, int T,
                         cf_tensor **logits_out);
/* a generous bound on the arena bytes one training step of B x T needs */
size_t cf_model_arena_bytes(const cf_model_config *c, int B, int T);

#endif
