/* The encoder-decoder Transformer (encdec.h): embeddings and positions per stack, encoder blocks
 * (bidirectional self-attention with key padding masks), decoder blocks (causal self-attention,
 * cross-attention over the encoder output, MLP), the output projection, and the loss over real
 * target tokens. Written in the style of decoder.c, and built on the same nn layers, so that the
 * two architectures share every kernel and op.
 *
 * Gradient checkpointing (train.grad_checkpoint = k): the encoder blocks and the decoder blocks are
 * cut into regions of k blocks each. A decoder region also reads the encoder output, which its
 * checkpoint node does not list as an input: the closure carries it. Backward then works because
 * the tape is ordered: every decoder region's node comes after every encoder node, so its
 * recomputation (which records the cross-attention kv projections with the encoder output as
 * input, and runs their backward at once) adds into mem->grad before the encoder's nodes are
 * reached. mem->grad must outlive the region's arena rewind, so it is allocated before the first
 * decoder region runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/attention.h"
#include "cformer/encdec.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void init_weights(cf_model *m, uint64_t seed) {
    const cf_model_config *c = &m->cfg;
    cf_rng r;
    cf_rng_seed(&r, seed);
    float std = c->init_std;
    float enc_proj = std / sqrtf(2.0f * c->enc_layers), dec_proj = std / sqrtf(3.0f * c->dec_layers);
    for (int i = 0; i < m->params.n; i++) {
        cf_tensor *t = m->params.t[i];
        if (ends_with(t->name, ".bias")) continue;                       /* slabs start zeroed */
        if (t->ndim == 1) {                                              /* norm weights */
            for (int64_t j = 0; j < t->numel; j++) t->data[j] = 1.0f;
            continue;
        }
        float s = std;
        if (ends_with(t->name, "proj.weight")) s = !strncmp(t->name, "encoder.", 8) ? enc_proj : dec_proj;
        for (int64_t j = 0; j < t->numel; j++) t->data[j] = s * cf_rng_normal(&r);
    }
}

static void dec_block_decl(cf_dec_block *b, cf_params *p, const char *prefix, const cf_model_config *c,
                           const cf_attn_config *attn) {
    char name[256];
    /* full causal attention whatever model.attention says: see the top of encdec.h */
    cf_attn_config full = *attn;
    full.type = CF_ATTN_FULL;
    cf_block_decl(&b->self, p, prefix, c, &full, 1);
    snprintf(name, sizeof name, "%s.ln_cross", prefix);
    cf_norm_decl(&b->ln_cross, p, name, c->d_model, c->norm, c->norm_eps);
    snprintf(name, sizeof name, "%s.cross", prefix);
    cf_cross_attn_decl(&b->cross, p, name, c->d_model, c->n_heads, c->attn_dropout >= 0 ? c->attn_dropout : c->dropout,
                       c->bias);
}

static int encdec_init(cf_model *m, const cf_model_config *c, uint64_t seed) {
    if (c->vocab_size < CF_ENCDEC_MIN_VOCAB)
        return cf_set_error("model.vocab_size: must be at least %d for encoder_decoder (256 bytes + BOS, EOS, PAD), "
                            "got %d", CF_ENCDEC_MIN_VOCAB, c->vocab_size);
    for (int i = 0; i < c->n_attn; i++) {
        /* the encoder's variants, in their bidirectional form with key padding masks */
        char path[64];
        if (c->n_attn > 1) snprintf(path, sizeof path, "model.attention[%d]", i);
        else snprintf(path, sizeof path, "model.attention");
        if (cf_attn_check(&c->attn[i], path, c->n_heads, c->d_model, 1)) return -1;
    }
    /* the decoding caches of src/decode/translate.c hold plain multi-head keys and values */
    if (c->position == CF_POS_ROPE || c->position == CF_POS_ALIBI)
        return cf_set_error("model.position: \"%s\" is available in decoder-only models (model.arch \"decoder\") only",
                            cf_pos_names[c->position]);
    if (c->n_kv_heads && c->n_kv_heads != c->n_heads)
        return cf_set_error("model.n_kv_heads: grouped-query attention is available in decoder-only models "
                            "(model.arch \"decoder\") only");
    if (c->qk_norm)
        return cf_set_error("model.qk_norm: available in decoder-only models (model.arch \"decoder\") only");
    m->cfg = *c;
    cf_params_init(&m->params);
    cf_encdec *ed = cf_xcalloc(1, sizeof *ed);
    m->ed = ed;
    int D = c->d_model, V = c->vocab_size;
    if (c->tie_embeddings) {
        ed->src_emb = ed->tgt_emb = ed->out_emb = cf_param_add(&m->params, "emb.weight", 2, (int[]){V, D});
    } else {
        ed->src_emb = cf_param_add(&m->params, "src_emb.weight", 2, (int[]){V, D});
        ed->tgt_emb = cf_param_add(&m->params, "tgt_emb.weight", 2, (int[]){V, D});
        ed->out_emb = cf_param_add(&m->params, "lm_head.weight", 2, (int[]){V, D});
    }
    if (c->position == CF_POS_LEARNED) {
        ed->enc_pos = cf_param_add(&m->params, "encoder.pos_emb.weight", 2, (int[]){c->max_seq_len, D});
        ed->dec_pos = cf_param_add(&m->params, "decoder.pos_emb.weight", 2, (int[]){c->max_seq_len, D});
    }
    ed->n_enc = c->enc_layers;
    ed->n_dec = c->dec_layers;
    ed->enc = cf_xcalloc((size_t)ed->n_enc, sizeof *ed->enc);
    ed->dec = cf_xcalloc((size_t)ed->n_dec, sizeof *ed->dec);
    char prefix[64];
    for (int i = 0; i < ed->n_enc; i++) {
        snprintf(prefix, sizeof prefix, "encoder.blocks.%d", i);
        cf_block_decl(&ed->enc[i], &m->params, prefix, c, cf_config_layer_attn(c, i), 0);
    }
    if (c->norm_position == CF_NORM_PRE) cf_norm_decl(&ed->enc_ln_f, &m->params, "encoder.ln_f", D, c->norm, c->norm_eps);
    for (int i = 0; i < ed->n_dec; i++) {
        snprintf(prefix, sizeof prefix, "decoder.blocks.%d", i);
        dec_block_decl(&ed->dec[i], &m->params, prefix, c, cf_config_layer_attn(c, i));
    }
    if (c->norm_position == CF_NORM_PRE) cf_norm_decl(&ed->dec_ln_f, &m->params, "decoder.ln_f", D, c->norm, c->norm_eps);
    if (cf_params_finalize(&m->params)) return -1;
    if (seed != CF_SEED_NONE) init_weights(m, seed);
    if (c->position == CF_POS_SINUSOIDAL) {
        /* Vaswani et al. 2017: PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(...), as decoder.c */
        ed->pos_table = cf_xmalloc((size_t)c->max_seq_len * D * sizeof(float));
        for (int p = 0; p < c->max_seq_len; p++)
            for (int i = 0; i < D; i += 2) {
                double f = p / pow(10000.0, (double)i / D);
                ed->pos_table[(size_t)p * D + i] = (float)sin(f);
                if (i + 1 < D) ed->pos_table[(size_t)p * D + i + 1] = (float)cos(f);
            }
    }
    return 0;
}

static void encdec_free(cf_model *m) {
    cf_encdec *ed = m->ed;
    if (!ed) return;
    free(ed->enc);
    free(ed->dec);
    free(ed->pos_table);
    free(ed);
}

size_t cf_encdec_arena_bytes(const cf_model_config *c, int B, int S, int T) {
    /* per encoder block and source token, as cf_model_arena_bytes: about 16 D-wide and 3 F-wide
     * activations with their gradients; a decoder block adds the cross-attention (q, kv, its split
     * copies, output: about 8 D-wide more per target token and 4 D-wide per source token); then
     * logits and their gradient, and the decoding caches (4 D-wide per token and layer) */
    double src = (double)B * S, tgt = (double)B * T, D = c->d_model, F = c->d_ff, H = c->n_heads;
    F += c->glu * 2.0 * F / 3.0;   /* glu: the up branch and the gated product besides fc */
    double enc = src * (16.0 * D + 3.0 * F + 4.0 * H) * 2 * c->enc_layers;
    double dec = (tgt * (24.0 * D + 3.0 * F + 8.0 * H) + src * 4.0 * D) * 2 * c->dec_layers;
    double rest = (tgt * (3.0 * c->vocab_size + 8.0 * D) + src * 8.0 * D) * 2 + (src + tgt) * 4.0 * D * c->dec_layers;
    return (size_t)((enc + dec + rest) * sizeof(float) * 2) + ((size_t)256 << 20);
}

/* ---- batches ------------------------------------------------------------------------------------ */
void cf_s2s_batch_alloc(cf_s2s_batch *b, int max_B, int max_len) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)max_B * max_len;
    b->src = cf_xmalloc(n * sizeof *b->src);
    b->src_keep = cf_xmalloc(n);
    b->tgt_in = cf_xmalloc(n * sizeof *b->tgt_in);
    b->tgt_out = cf_xmalloc(n * sizeof *b->tgt_out);
    b->rows = cf_xmalloc((size_t)max_B * sizeof *b->rows);
    b->cap_B = max_B;
    b->cap_len = max_len;
}

void cf_s2s_batch_free(cf_s2s_batch *b) {
    free(b->src); free(b->src_keep); free(b->tgt_in); free(b->tgt_out); free(b->rows);
    memset(b, 0, sizeof *b);
}

/* ---- forward -------------------------------------------------------------------------------------- */
static cf_tensor *enc_block(cf_ctx *ctx, const cf_block *b, cf_tensor *x, const uint8_t *keep) {
    if (b->norm_position == CF_NORM_PRE) {
        x = cf_add(ctx, x, cf_dropout(ctx, cf_attn_apply_keep(ctx, &b->attn, cf_norm_apply(ctx, &b->ln1, x), keep),
                                      b->dropout));
        return cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, cf_norm_apply(ctx, &b->ln2, x)), b->dropout));
    }
    x = cf_norm_apply(ctx, &b->ln1, cf_add(ctx, x, cf_dropout(ctx, cf_attn_apply_keep(ctx, &b->attn, x, keep), b->dropout)));
    return cf_norm_apply(ctx, &b->ln2, cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, x), b->dropout)));
}

/* Decoder targets are padded only at the end of a row, after every real token, so the causal mask
 * already hides padding from every real query: the self-attention needs no key mask. */
static cf_tensor *dec_block(cf_ctx *ctx, const cf_dec_block *d, cf_tensor *x, cf_tensor *mem, const uint8_t *keep) {
    const cf_block *b = &d->self;
    float p = b->dropout;
    if (b->norm_position == CF_NORM_PRE) {
        x = cf_add(ctx, x, cf_dropout(ctx, cf_attn_apply(ctx, &b->attn, cf_norm_apply(ctx, &b->ln1, x)), p));
        x = cf_add(ctx, x, cf_dropout(ctx, cf_cross_attn_apply(ctx, &d->cross, cf_norm_apply(ctx, &d->ln_cross, x),
                                                               mem, keep), p));
        return cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, cf_norm_apply(ctx, &b->ln2, x)), p));
    }
    x = cf_norm_apply(ctx, &b->ln1, cf_add(ctx, x, cf_dropout(ctx, cf_attn_apply(ctx, &b->attn, x), p)));
    x = cf_norm_apply(ctx, &d->ln_cross, cf_add(ctx, x, cf_dropout(ctx, cf_cross_attn_apply(ctx, &d->cross, x, mem, keep), p)));
    return cf_norm_apply(ctx, &b->ln2, cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, x), p)));
}

/* checkpoint regions: closures live in the step's arena, below every region's mark */
typedef struct enc_region { const cf_block *blocks; int n; const uint8_t *keep; } enc_region;
typedef struct dec_region { const cf_dec_block *blocks; int n; cf_tensor *mem; const uint8_t *keep; } dec_region;

static cf_tensor *run_enc_region(cf_ctx *ctx, void *closure, cf_tensor *x) {
    const enc_region *r = closure;
    for (int i = 0; i < r->n; i++) x = enc_block(ctx, &r->blocks[i], x, r->keep);
    return x;
}

static cf_tensor *run_dec_region(cf_ctx *ctx, void *closure, cf_tensor *x) {
    const dec_region *r = closure;
    for (int i = 0; i < r->n; i++) x = dec_block(ctx, &r->blocks[i], x, r->mem, r->keep);
    return x;
}

cf_tensor *cf_encdec_embed(cf_model *m, cf_ctx *ctx, int decoder, const int32_t *ids, int B, int T, int pos0) {
    const cf_model_config *c = &m->cfg;
    const cf_encdec *ed = m->ed;
    CF_ASSERT(c->position == CF_POS_NONE || (pos0 >= 0 && pos0 + T <= c->max_seq_len),
              "encdec: positions %d..%d exceed max_seq_len %d", pos0, pos0 + T - 1, c->max_seq_len);
    int D = c->d_model;
    cf_tensor *h = cf_embedding(ctx, decoder ? ed->tgt_emb : ed->src_emb, ids, 2, (int[]){B, T});   /* (B, T, D) */
    if (c->position == CF_POS_LEARNED) {
        /* rows [pos0, pos0 + T) of the table; its gradient lands in the slab directly (as decoder.c) */
        cf_tensor *pos = decoder ? ed->dec_pos : ed->enc_pos;
        cf_tensor *p = cf_tensor_view(ctx, pos->data + (size_t)pos0 * D, 2, (int[]){T, D});
        p->grad = pos->grad + (size_t)pos0 * D;
        p->requires_grad = 1;
        h = cf_add(ctx, h, p);
    } else if (c->position == CF_POS_SINUSOIDAL) {
        h = cf_add(ctx, cf_scale(ctx, h, sqrtf((float)D)),
                   cf_tensor_view(ctx, ed->pos_table + (size_t)pos0 * D, 2, (int[]){T, D}));
    }
    return cf_dropout(ctx, h, c->emb_dropout >= 0 ? c->emb_dropout : c->dropout);
}

/* regions of k blocks: [first, first + n) of n_total */
static int region_len(int first, int k, int n_total) { return first + k <= n_total ? k : n_total - first; }

cf_tensor *cf_encdec_encode(cf_model *m, cf_ctx *ctx, const int32_t *src, const uint8_t *src_keep, int B, int S) {
    const cf_encdec *ed = m->ed;
    CF_ASSERT(ed, "cf_encdec_encode: not an encoder-decoder model");
    cf_tensor *h = cf_encdec_embed(m, ctx, 0, src, B, S, 0);
    int k = m->grad_checkpoint;
    if (k > 0) {
        for (int i = 0; i < ed->n_enc; i += k) {
            enc_region *r = cf_scratch(ctx, sizeof *r);
            *r = (enc_region){ed->enc + i, region_len(i, k, ed->n_enc), src_keep};
            h = (m->full_recompute ? cf_checkpoint : cf_checkpoint_selective)(ctx, run_enc_region, r, h);
        }
    } else {
        for (int i = 0; i < ed->n_enc; i++) h = enc_block(ctx, &ed->enc[i], h, src_keep);
    }
    if (m->cfg.norm_position == CF_NORM_PRE) h = cf_norm_apply(ctx, &ed->enc_ln_f, h);
    return h;
}

cf_tensor *cf_encdec_decode(cf_model *m, cf_ctx *ctx, cf_tensor *mem, const uint8_t *src_keep, const int32_t *tgt_in,
                            int T) {
    const cf_encdec *ed = m->ed;
    CF_ASSERT(ed && mem->ndim == 3, "cf_encdec_decode: not an encoder-decoder model, or memory %s is not [B, S, D]",
              cf_shape_str(mem));
    int B = mem->shape[0];
    cf_tensor *h = cf_encdec_embed(m, ctx, 1, tgt_in, B, T, 0);
    int k = m->grad_checkpoint;
    if (k > 0) {
        /* see the top of the file: mem's gradient must exist below every region's arena mark */
        if (cf_needs_grad(ctx, 1, &mem)) cf_grad(ctx, mem);
        for (int i = 0; i < ed->n_dec; i += k) {
            dec_region *r = cf_scratch(ctx, sizeof *r);
            *r = (dec_region){ed->dec + i, region_len(i, k, ed->n_dec), mem, src_keep};
            h = (m->full_recompute ? cf_checkpoint : cf_checkpoint_selective)(ctx, run_dec_region, r, h);
        }
    } else {
        for (int i = 0; i < ed->n_dec; i++) h = dec_block(ctx, &ed->dec[i], h, mem, src_keep);
    }
    if (m->cfg.norm_position == CF_NORM_PRE) h = cf_norm_apply(ctx, &ed->dec_ln_f, h);
    return cf_linear(ctx, h, ed->out_emb, NULL);                             /* (B, T, V) */
}

cf_tensor *cf_encdec_logits(cf_model *m, cf_ctx *ctx, const cf_s2s_batch *b) {
    cf_tensor *mem = cf_encdec_encode(m, ctx, b->src, b->src_keep, b->B, b->S);
    return cf_encdec_decode(m, ctx, mem, b->src_keep, b->tgt_in, b->T);
}

cf_tensor *cf_encdec_loss(cf_model *m, cf_ctx *ctx, const cf_s2s_batch *b, float smoothing, cf_tensor **logits_out) {
    cf_tensor *logits = cf_encdec_logits(m, ctx, b);
    if (logits_out) *logits_out = logits;
    return cf_cross_entropy(ctx, logits, b->tgt_out, CF_TOK_PAD, smoothing, NULL);
}

static cf_tensor *encdec_batch_loss(cf_model *m, cf_ctx *ctx, const cf_batch *b) {
    return cf_encdec_loss(m, ctx, b->pairs, m->cfg.label_smoothing, NULL);
}

/* the encoder's self-attention layers: the variants of model.attention run there (the decoder's
 * self-attention is always full) */
static int encdec_attn_layers(cf_model *m, cf_attn_layer **out) {
    for (int i = 0; out && i < m->ed->n_enc; i++) out[i] = &m->ed->enc[i].attn;
    return m->ed->n_enc;
}

static size_t encdec_arena_bytes_sq(const cf_model_config *c, int B, int T) { return cf_encdec_arena_bytes(c, B, T, T); }

const cf_model_family cf_encdec_family = {
    .name = "encoder_decoder",
    .title = "encoder-decoder",
    .generator = "translate",
    .init = encdec_init,
    .free = encdec_free,
    .arena_bytes = encdec_arena_bytes_sq,
    .loss = encdec_batch_loss,
    .attn_layers = encdec_attn_layers,
};
