/* The decoder-only language model: token embedding + positions, n blocks, final norm, output
 * projection (tied to the token embedding by default). Exactly GPT-2 with the default config;
 * ../shared/bench/torch_gpt.py is its PyTorch twin and tests/test_golden.c holds us to it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/encdec.h"
#include "cformer/attention.h"
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
        if (ends_with(t->name, ".bias")) continue;                       /* slabs start zeroed */
        if (t->ndim == 1) {                                              /* norm weights */
            for (int64_t j = 0; j < t->numel; j++) t->data[j] = 1.0f;
            continue;
        }
        float s = ends_with(t->name, "proj.weight") ? proj_std : std;
        for (int64_t j = 0; j < t->numel; j++) t->data[j] = s * cf_rng_normal(&r);
    }
}

int cf_model_init(cf_model *m, const cf_model_config *c, uint64_t seed) {
    memset(m, 0, sizeof *m);
    if (c->arch == CF_ARCH_ENCODER_DECODER) return cf_encdec_init(m, c, seed);
    int has_xl = 0;
    for (int i = 0; i < c->n_attn; i++) {
        /* xl is built here (the decoder runs its memory); infini is refused (not available yet);
         * the others checked for this shape */
        char path[64];
        if (c->n_attn > 1) snprintf(path, sizeof path, "model.attention[%d]", i);
        else snprintf(path, sizeof path, "model.attention");
        if (c->attn[i].type == CF_ATTN_XL) {
            if (c->d_model % 2) return cf_set_error("%s.type: xl needs an even model.d_model (got %d)", path, c->d_model);
            has_xl = 1;
            continue;
        }
        if (cf_attn_check(&c->attn[i], path, c->n_heads, c->d_model)) return -1;
    }
    m->cfg = *c;
    cf_params_init(&m->params);
    int D = c->d_model;
    m->tok_emb = cf_param_add(&m->params, "tok_emb.weight", 2, (int[]){c->vocab_size, D});
    m->has_xl = has_xl;
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
    cf_params_finalize(&m->params);
    init_weights(m, seed);
    if (has_xl) {
        m->mem = cf_xcalloc((size_t)c->n_layers, sizeof *m->mem);
        m->mem_used = cf_xcalloc((size_t)c->n_layers, sizeof *m->mem_used);
    } else if (c->position == CF_POS_SINUSOIDAL) {
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

void cf_model_set_checkpointing(cf_model *m, int k) {
    free(m->regions);
    m->regions = NULL;
    m->n_regions = 0;
    m->grad_checkpoint = k;
    if (k <= 0) return;
    m->n_regions = (m->n_blocks + k - 1) / k;
    m->regions = cf_xcalloc((size_t)m->n_regions, sizeof *m->regions);
    for (int r = 0; r < m->n_regions; r++) {
        m->regions[r].blocks = m->blocks + r * k;
        m->regions[r].n = r * k + k <= m->n_blocks ? k : m->n_blocks - r * k;
    }
}

void cf_model_free(cf_model *m) {
    cf_params_free(&m->params);
    free(m->blocks);
    free(m->pos_table);
    free(m->regions);
    cf_encdec_free(m->ed);
    if (m->mem)
        for (int i = 0; i < m->n_blocks; i++) free(m->mem[i]);
    free(m->mem);
    free(m->mem_used);
    memset(m, 0, sizeof *m);
}

static cf_tensor *run_region(cf_ctx *ctx, void *closure, cf_tensor *x) {
    const cf_region *r = closure;
    for (int i = 0; i < r->n; i++) x = cf_block_apply(ctx, &r->blocks[i], x);
    return x;
}

/* ---- Transformer-XL ------------------------------------------------------------------------------ */

void cf_model_reset_memory(cf_model *m) {
    if (!m->has_xl) return;
    for (int i = 0; i < m->n_blocks; i++) m->mem_used[i] = 0;
}

/* blocks [first, first + n) of an xl model, with what their xl layers read: a copy of each layer's
 * memory taken before this forward (constant [B, mlen_l, D], or NULL), and the relative sinusoids
 * (constant, after dropout) for the longest key sequence, of which a layer uses the last mlen_l + T
 * rows. update: write each xl layer's input into the model's memory (first run only: a
 * checkpointed region's recomputation must not). Lives in the arena below the region. */
typedef struct xl_region {
    cf_model   *m;
    int         first, n, update;
    cf_tensor **mem;                  /* [n_blocks] */
    cf_tensor  *pos;                  /* [klen_max, D] */
} xl_region;

/* new memory of layer l: the last mem_len rows of concat(old memory, x) per batch row */
static void xl_update(cf_model *m, int l, const cf_tensor *old, const cf_tensor *x) {
    int B = x->shape[0], T = x->shape[1], D = x->shape[2], M = cf_config_layer_attn(&m->cfg, l)->mem_len;
    int mlen = old ? old->shape[1] : 0, total = mlen + T, keep = total < M ? total : M;
    if (!keep) { m->mem_used[l] = 0; return; }
    if (!m->mem[l]) m->mem[l] = cf_xmalloc((size_t)m->mem_batch * M * D * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int r = 0; r < keep; r++) {
            int src = total - keep + r;                   /* row of concat(old, x) */
            const float *from = src < mlen ? old->data + ((int64_t)b * mlen + src) * D
                                           : x->data + ((int64_t)b * T + src - mlen) * D;
            memcpy(m->mem[l] + ((int64_t)b * M + r) * D, from, (size_t)D * sizeof(float));
        }
    m->mem_used[l] = keep;
}

/* one xl block (ALGORITHMS.md section 1.2): pre-norm x + drop(attn(LN(x), LN(concat(mem, x)))),
 * x + drop(mlp(LN(x))); post-norm LN(x + drop(attn(x, concat(mem, x)))), LN(x + drop(mlp(x))) */
static cf_tensor *xl_block(cf_ctx *ctx, const cf_model *m, const cf_block *b, cf_tensor *mem, cf_tensor *pos_all,
                           cf_tensor *x) {
    int T = x->shape[1], D = x->shape[2], klen = (mem ? mem->shape[1] : 0) + T, kmax = pos_all->shape[0];
    cf_tensor *pos = cf_tensor_view(ctx, pos_all->data + (int64_t)(kmax - klen) * D, 2, (int[]){klen, D});
    cf_tensor *c = mem ? cf_concat(ctx, mem, x, 1) : x;
    if (b->norm_position == CF_NORM_PRE) {
        cf_tensor *xq = cf_norm_apply(ctx, &b->ln1, x), *xc = mem ? cf_norm_apply(ctx, &b->ln1, c) : xq;
        cf_tensor *a = cf_attn_xl_apply(ctx, &b->attn, xq, xc, pos, m->r_w_bias, m->r_r_bias);
        x = cf_add(ctx, x, cf_dropout(ctx, a, b->dropout));
        return cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, cf_norm_apply(ctx, &b->ln2, x)), b->dropout));
    }
    cf_tensor *a = cf_attn_xl_apply(ctx, &b->attn, x, c, pos, m->r_w_bias, m->r_r_bias);
    x = cf_norm_apply(ctx, &b->ln1, cf_add(ctx, x, cf_dropout(ctx, a, b->dropout)));
    return cf_norm_apply(ctx, &b->ln2, cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, x), b->dropout)));
}

static cf_tensor *xl_run(cf_ctx *ctx, void *closure, cf_tensor *x) {
    xl_region *r = closure;
    cf_model *m = r->m;
    for (int l = r->first; l < r->first + r->n; l++) {
        const cf_block *b = &m->blocks[l];
        if (b->attn.cfg.type != CF_ATTN_XL) {
            x = cf_block_apply(ctx, b, x);
            continue;
        }
        if (r->update) xl_update(m, l, r->mem[l], x);
        x = xl_block(ctx, m, b, r->mem[l], r->pos, x);
    }
    return x;
}

/* the embeddings onwards for an xl model: h [B, T, D] (embedded) -> the last blocks' output */
static cf_tensor *xl_blocks(cf_model *m, cf_ctx *ctx, cf_tensor *h) {
    const cf_model_config *c = &m->cfg;
    int B = h->shape[0], T = h->shape[1], D = h->shape[2];
    int use = ctx->training;
    if (use && m->mem_batch != B) {                      /* new batch geometry: start afresh */
        for (int l = 0; l < m->n_blocks; l++) { free(m->mem[l]); m->mem[l] = NULL; m->mem_used[l] = 0; }
        m->mem_batch = B;
    }
    /* copies of the memories as this forward found them (the model's are rewritten below) */
    cf_tensor **mem = cf_scratch(ctx, (size_t)m->n_blocks * sizeof *mem);
    int kmax = T;
    for (int l = 0; l < m->n_blocks; l++) {
        int mlen = use ? m->mem_used[l] : 0, M = cf_config_layer_attn(c, l)->mem_len;
        mem[l] = NULL;
        if (!mlen) continue;
        mem[l] = cf_tensor_3d(ctx, B, mlen, D);
        for (int b = 0; b < B; b++)
            memcpy(mem[l]->data + (int64_t)b * mlen * D, m->mem[l] + (int64_t)b * M * D, (size_t)mlen * D * sizeof(float));
        if (mlen + T > kmax) kmax = mlen + T;
    }
    /* one table of relative sinusoids for the longest keys, with the ordinary dropout (as
     * mem_transformer.py's pos_emb = drop(pos_emb)); shorter layers read its last rows. The clamp
     * is the first xl layer's (one model.attention object gives every layer the same). */
    int clamp = -1;
    for (int l = 0; l < m->n_blocks && clamp < 0; l++)
        if (m->blocks[l].attn.cfg.type == CF_ATTN_XL) clamp = m->blocks[l].attn.cfg.clamp_len;
    cf_tensor *pos = cf_tensor_2d(ctx, kmax, D);
    cf_xl_sinusoids(pos->data, kmax, D, clamp);
    pos = cf_dropout(ctx, pos, c->dropout);
    int k = m->grad_checkpoint > 0 ? m->grad_checkpoint : m->n_blocks;
    for (int first = 0; first < m->n_blocks; first += k) {
        xl_region *r = cf_scratch(ctx, sizeof *r);
        *r = (xl_region){.m = m, .first = first, .n = first + k <= m->n_blocks ? k : m->n_blocks - first,
                         .update = use, .mem = mem, .pos = pos};
        h = m->grad_checkpoint > 0 ? cf_checkpoint(ctx, xl_run, r, h) : xl_run(ctx, r, h);
        r->update = 0;
    }
    return h;
}

cf_tensor *cf_model_logits(cf_model *m, cf_ctx *ctx, const int32_t *ids, int B, int T) {
    const cf_model_config *c = &m->cfg;
    CF_ASSERT(!m->ed, "cf_model_logits: an encoder-decoder model (encdec.h: cf_encdec_logits)");
    if (m->has_xl) {
        /* word_emb(x) sqrt(D) (AdaptiveEmbedding.emb_scale), dropout, the blocks; no final norm
         * for post-norm, ln_f for pre-norm as in the other decoders */
        cf_tensor *h = cf_embedding(ctx, m->tok_emb, ids, 2, (int[]){B, T});
        h = cf_scale(ctx, h, sqrtf((float)c->d_model));
        h = cf_dropout(ctx, h, c->emb_dropout >= 0 ? c->emb_dropout : c->dropout);
        h = xl_blocks(m, ctx, h);
        if (c->norm_position == CF_NORM_PRE) h = cf_norm_apply(ctx, &m->ln_f, h);
        return cf_linear(ctx, h, m->lm_head ? m->lm_head : m->tok_emb, NULL);
    }
    CF_ASSERT(c->position == CF_POS_NONE || T <= c->max_seq_len, "model: %d tokens exceed max_seq_len %d", T, c->max_seq_len);
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
    if (m->grad_checkpoint > 0) {
        for (int r = 0; r < m->n_regions; r++) h = cf_checkpoint(ctx, run_region, &m->regions[r], h);
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

size_t cf_model_arena_bytes(const cf_model_config *c, int B, int T) {
    if (c->arch == CF_ARCH_ENCODER_DECODER) return cf_encdec_arena_bytes(c, B, T, T);
    /* xl: keys and values (and the pre-norm of the memory) over mem_len + T rows */
    int mem = 0;
    for (int i = 0; i < c->n_attn; i++)
        if (c->attn[i].type == CF_ATTN_XL && c->attn[i].mem_len > mem) mem = c->attn[i].mem_len;
    if (mem) T += mem;
    /* per block: about 16 D-wide and 3 F-wide activations and their gradients per token, plus
     * attention's log-sum-exp; then logits and their gradient */
    double tok = (double)B * T;
    double per_block = tok * (16.0 * c->d_model + 3.0 * c->d_ff + 4.0 * c->n_heads) * 2;
    double total = per_block * c->n_layers + tok * (3.0 * c->vocab_size + 8.0 * c->d_model) * 2;
    return (size_t)(total * sizeof(float) * 2) + ((size_t)256 << 20);
}
