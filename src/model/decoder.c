/* The decoder-only language model: token embedding + positions, n blocks, final norm, output
 * projection (tied to the token embedding by default). Exactly GPT-2 with the default config;
 * tools/torch_gpt.py is its PyTorch twin and tests/test_golden.c holds us to it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/model.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void init_weights(cf_model *m, uint64_t seed) {
    cf_rng r;
    cf_rng_seed(&r, seed);
    float std = m->cfg.init_std, proj_std = std / sqrtf(2.0f * m->cfg.n_layers);
    for (int i = 0; i < m->params.n; i++) {
        cf_tensor *t = m->params.t[i];
        /* slabs start zeroed: biases, and infini's gates (sigmoid(0): half memory, half local) */
        if (ends_with(t->name, ".bias") || ends_with(t->name, ".gate")) continue;
        if (t->ndim == 1) {                                              /* norm weights */
            for (int64_t j = 0; j < t->numel; j++) t->data[j] = 1.0f;
            continue;
        }
        float s = ends_with(t->name, "proj.weight") ? proj_std : std;
        for (int64_t j = 0; j < t->numel; j++) t->data[j] = s * cf_rng_normal(&r);
    }
}

static int decoder_init(cf_model *m, const cf_model_config *c, uint64_t seed) {
    int has_xl = 0, has_infini = 0;
    for (int i = 0; i < c->n_attn; i++) {
        /* every variant runs in a decoder; the recurrent ones (xl, infini) with the state kept here */
        char path[64];
        if (c->n_attn > 1) snprintf(path, sizeof path, "model.attention[%d]", i);
        else snprintf(path, sizeof path, "model.attention");
        if (cf_attn_check(&c->attn[i], path, c->n_heads, c->d_model, 0)) return -1;
        if (cf_attn_check_heads(&c->attn[i], path, c)) return -1;
        has_xl |= c->attn[i].type == CF_ATTN_XL;
        has_infini |= c->attn[i].type == CF_ATTN_INFINI;
    }
    m->cfg = *c;
    cf_params_init(&m->params);
    int D = c->d_model;
    m->tok_emb = cf_param_add(&m->params, "tok_emb.weight", 2, (int[]){c->vocab_size, D});
    m->has_xl = has_xl;
    m->has_infini = has_infini;
    m->state = &m->rec;
    if (has_xl) {
        /* Transformer-XL: relative positions only (model.position is ignored), u and v shared */
        int hd[2] = {c->n_heads, D / c->n_heads};
        m->r_w_bias = cf_param_add(&m->params, "r_w_bias", 2, hd);
        m->r_r_bias = cf_param_add(&m->params, "r_r_bias", 2, hd);
    } else if (c->position == CF_POS_LEARNED)
        m->pos_emb = cf_param_add(&m->params, "pos_emb.weight", 2, (int[]){c->max_seq_len, D});
    m->n_blocks = c->n_layers;
    m->blocks = cf_xcalloc((size_t)c->n_layers, sizeof *m->blocks);
    for (int i = 0; i < c->n_layers; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "blocks.%d", i);
        cf_block_decl(&m->blocks[i], &m->params, prefix, c, cf_config_layer_attn(c, i), 1);
    }
    /* post-norm blocks already end in a norm; pre-norm needs a final one */
    if (c->norm_position == CF_NORM_PRE) cf_norm_decl(&m->ln_f, &m->params, "ln_f", D, c->norm, c->norm_eps);
    if (!c->tie_embeddings) m->lm_head = cf_param_add(&m->params, "lm_head.weight", 2, (int[]){c->vocab_size, D});
    if (cf_params_finalize(&m->params)) return -1;
    if (seed != CF_SEED_NONE) init_weights(m, seed);
    if (!has_xl && c->position == CF_POS_SINUSOIDAL) {
        /* Vaswani et al. 2017: PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(...) */
        m->pos_table = cf_xmalloc((size_t)c->max_seq_len * D * sizeof(float));
        for (int p = 0; p < c->max_seq_len; p++)
            for (int i = 0; i < D; i += 2) {
                double f = p / pow(10000.0, (double)i / D);
                m->pos_table[(size_t)p * D + i] = (float)sin(f);
                if (i + 1 < D) m->pos_table[(size_t)p * D + i + 1] = (float)cos(f);
            }
    }
    return 0;
}

void cf_model_set_recompute(cf_model *m, cf_recompute_kind kind) {
    m->full_recompute = kind == CF_RECOMPUTE_FULL;
}

void cf_model_set_checkpointing(cf_model *m, int k) {
    free(m->regions);
    m->regions = NULL;
    m->n_regions = 0;
    m->grad_checkpoint = k;
    if (k <= 0) return;
    m->n_regions = (m->n_blocks + k - 1) / k;
    if (!m->n_regions) return;   /* the encoder-decoder keeps its blocks elsewhere (encdec.c) */
    m->regions = cf_xcalloc((size_t)m->n_regions, sizeof *m->regions);
    for (int r = 0; r < m->n_regions; r++) {
        m->regions[r].blocks = m->blocks + r * k;
        m->regions[r].n = r * k + k <= m->n_blocks ? k : m->n_blocks - r * k;
    }
}

static void decoder_free(cf_model *m) {
    cf_rec_state_free(m, &m->rec);
    free(m->blocks);
    free(m->pos_table);
    free(m->regions);
}

static cf_tensor *run_region(cf_ctx *ctx, void *closure, cf_tensor *x) {
    const cf_region *r = closure;
    for (int i = 0; i < r->n; i++) x = cf_block_apply(ctx, &r->blocks[i], x);
    return x;
}

cf_tensor *cf_model_logits(cf_model *m, cf_ctx *ctx, const int32_t *ids, int B, int T) {
    const cf_model_config *c = &m->cfg;
    CF_ASSERT(m->family == &cf_decoder_family, "cf_model_logits: a %s model", m->family->name);
    if (m->has_xl) {
        /* word_emb(x) sqrt(D) (AdaptiveEmbedding.emb_scale), dropout, the blocks; no final norm
         * for post-norm, ln_f for pre-norm as in the other decoders */
        cf_tensor *h = cf_embedding(ctx, m->tok_emb, ids, 2, (int[]){B, T});
        h = cf_scale(ctx, h, sqrtf((float)c->d_model));
        h = cf_dropout(ctx, h, c->emb_dropout >= 0 ? c->emb_dropout : c->dropout);
        h = cf_model_rec_blocks(m, ctx, h);
        if (c->norm_position == CF_NORM_PRE) h = cf_norm_apply(ctx, &m->ln_f, h);
        return cf_linear(ctx, h, m->lm_head ? m->lm_head : m->tok_emb, NULL);
    }
    /* a position table caps the context; rope and alibi position inside attention, at any length */
    CF_ASSERT(!cf_pos_has_table(c->position) || T <= c->max_seq_len,
              "model: %d tokens exceed max_seq_len %d", T, c->max_seq_len);
    int D = c->d_model;
    cf_tensor *h = cf_embedding(ctx, m->tok_emb, ids, 2, (int[]){B, T});            /* (B, T, D) */
    if (c->position == CF_POS_LEARNED) {
        /* the first T rows of the position table; its gradient lands in the slab directly */
        cf_tensor *pos = cf_tensor_view(ctx, m->pos_emb->data, 2, (int[]){T, D});
        pos->grad = m->pos_emb->grad;
        pos->requires_grad = 1;
        h = cf_add(ctx, h, pos);
    } else if (c->position == CF_POS_SINUSOIDAL) {
        h = cf_add(ctx, cf_scale(ctx, h, sqrtf((float)D)), cf_tensor_view(ctx, m->pos_table, 2, (int[]){T, D}));
    }
    h = cf_dropout(ctx, h, c->emb_dropout >= 0 ? c->emb_dropout : c->dropout);
    if (m->has_infini) {
        h = cf_model_rec_blocks(m, ctx, h);
    } else if (m->grad_checkpoint > 0) {
        cf_tensor *(*region)(cf_ctx *, cf_region_fn, void *, cf_tensor *) =
            m->full_recompute ? cf_checkpoint : cf_checkpoint_selective;
        for (int r = 0; r < m->n_regions; r++) h = region(ctx, run_region, &m->regions[r], h);
    } else {
        for (int i = 0; i < m->n_blocks; i++) h = cf_block_apply(ctx, &m->blocks[i], h);
    }
    if (c->norm_position == CF_NORM_PRE) h = cf_norm_apply(ctx, &m->ln_f, h);
    return cf_linear(ctx, h, m->lm_head ? m->lm_head : m->tok_emb, NULL);          /* (B, T, V) */
}

cf_tensor *cf_model_loss(cf_model *m, cf_ctx *ctx, const int32_t *ids, const int32_t *targets, int B, int T,
                         cf_tensor **logits_out) {
    cf_tensor *logits = cf_model_logits(m, ctx, ids, B, T);
    if (logits_out) *logits_out = logits;
    return cf_cross_entropy(ctx, logits, targets, -1, 0.0f, NULL);
}

static cf_tensor *decoder_loss(cf_model *m, cf_ctx *ctx, const cf_batch *b) {
    return cf_model_loss(m, ctx, b->x, b->y, b->B, b->T, NULL);
}

static int decoder_attn_layers(cf_model *m, cf_attn_layer **out) {
    for (int i = 0; out && i < m->n_blocks; i++) out[i] = &m->blocks[i].attn;
    return m->n_blocks;
}

static size_t decoder_arena_bytes(const cf_model_config *c, int B, int T) {
    /* xl: keys and values (and the pre-norm of the memory) over mem_len + T rows */
    int mem = 0;
    for (int i = 0; i < c->n_attn; i++)
        if (c->attn[i].type == CF_ATTN_XL && c->attn[i].mem_len > mem) mem = c->attn[i].mem_len;
    if (mem) T += mem;
    /* per block: about 16 D-wide and 3 F-wide activations and their gradients per token, plus
     * attention's log-sum-exp; then logits and their gradient */
    double tok = (double)B * T;
    double per_block = tok * (16.0 * c->d_model + 3.0 * c->d_ff + 4.0 * c->n_heads) * 2;
    /* the head ops' copies of qkv (QK-norm, rope, shared heads repeated) and glu's second branch */
    per_block += tok * ((c->qk_norm + (c->position == CF_POS_ROPE) + 1) * 3.0 * c->d_model + c->glu * 2.0 * c->d_ff) * 2;
    double total = per_block * c->n_layers + tok * (3.0 * c->vocab_size + 8.0 * c->d_model) * 2;
    /* infini: each layer keeps its memory before every segment (and the states' gradients) */
    for (int l = 0; l < c->n_layers; l++) {
        const cf_attn_config *a = cf_config_layer_attn(c, l);
        if (a->type != CF_ATTN_INFINI) continue;
        double d = (double)c->d_model / c->n_heads, segs = (double)T / a->segment_len + 2;
        total += 4.0 * B * c->n_heads * d * (d + 1) * segs;
    }
    return (size_t)(total * sizeof(float) * 2) + ((size_t)256 << 20);
}

const cf_model_family cf_decoder_family = {
    .name = "decoder",
    .title = "decoder-only",
    .generator = "sample",
    .init = decoder_init,
    .free = decoder_free,
    .arena_bytes = decoder_arena_bytes,
    .loss = decoder_loss,
    .attn_layers = decoder_attn_layers,
};
