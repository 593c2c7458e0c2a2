/* Multi-head self-attention layer: fused qkv projection, a variant core, output projection; and
 * the variant interface of cformer/attention.h (cf_attn_core), which picks the core by cfg.type:
 * the fused full-softmax kernel (ops/attention.c), the masked flash kernel for window and sparse
 * patterns (attention/masked.c), or the prefix-sum kernel for linear and Performer attention
 * (attention/linear.c, attention/performer.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/nn.h"

/* the block index in a name like "blocks.3.attn" or "decoder.blocks.3.attn" (0 if there is none) */
static int layer_of(const char *prefix) {
    const char *at = NULL;
    for (const char *p = strstr(prefix, "blocks."); p; p = strstr(p + 1, "blocks.")) at = p;
    return at ? atoi(at + 7) : 0;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

void cf_attn_decl(cf_attn_layer *a, cf_params *p, const char *prefix, int d, int n_heads, int causal,
                  float dropout, const cf_attn_config *cfg, int bias) {
    char name[256];
    a->n_heads = n_heads;
    a->causal = causal;
    a->dropout = dropout;
    a->cfg = *cfg;
    a->layer = layer_of(prefix);
    a->layer_key = fnv1a(prefix);
    a->draw_seed = 0;
    a->draw_index = -1;
    snprintf(name, sizeof name, "%s.qkv", prefix);
    cf_linear_decl(&a->qkv, p, name, d, 3 * d, bias);
    snprintf(name, sizeof name, "%s.proj", prefix);
    cf_linear_decl(&a->proj, p, name, d, d, bias);
    a->r_net.w = a->r_net.b = NULL;
    a->gate = NULL;
    a->infini = NULL;
    if (cfg->type == CF_ATTN_XL) {
        snprintf(name, sizeof name, "%s.r_net", prefix);
        cf_linear_decl(&a->r_net, p, name, d, d, 0);
    }
    if (cfg->type == CF_ATTN_INFINI) {
        snprintf(name, sizeof name, "%s.gate", prefix);
        a->gate = cf_param_add(p, name, 1, (int[]){n_heads});
    }
}

cf_tensor *cf_attn_apply_keep(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x, const uint8_t *key_keep) {
    cf_tensor *qkv = cf_linear_apply(ctx, &a->qkv, x);                  /* (B, T, 3D) */
    cf_tensor *y = cf_attn_core(ctx, a, qkv, key_keep);                 /* (B, T, D) */
    return cf_linear_apply(ctx, &a->proj, y);
}

cf_tensor *cf_attn_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x) {
    return cf_attn_apply_keep(ctx, a, x, NULL);
}

/* rows [r0, r0 + n) of parameter w (2-D, or 1-D for a bias) as a tensor whose gradient lands in
 * the same rows of w's gradient slab */
static cf_tensor *param_rows(cf_ctx *ctx, cf_tensor *w, int r0, int n) {
    int cols = w->ndim == 2 ? w->shape[1] : 1;
    cf_tensor *t = w->ndim == 2 ? cf_tensor_view(ctx, w->data + (int64_t)r0 * cols, 2, (int[]){n, cols})
                                : cf_tensor_view(ctx, w->data + r0, 1, (int[]){n});
    t->grad = w->grad ? w->grad + (int64_t)r0 * cols : NULL;
    t->requires_grad = w->requires_grad;
    return t;
}

cf_tensor *cf_attn_xl_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *xq, cf_tensor *xc, cf_tensor *pos,
                            cf_tensor *u, cf_tensor *v_bias) {
    CF_ASSERT(a->cfg.type == CF_ATTN_XL && a->r_net.w, "xl attention: the layer is not of type xl");
    int D = a->qkv.w->shape[1];
    CF_ASSERT(xq->ndim == 3 && xc->ndim == 3 && xq->shape[2] == D && xc->shape[2] == D && pos->ndim == 2 &&
              pos->shape[0] == xc->shape[1] && pos->shape[1] == D,
              "xl attention: xq %s, xc %s, pos %s do not match d_model %d", cf_shape_str(xq), cf_shape_str(xc),
              cf_shape_str(pos), D);
    cf_tensor *bq = a->qkv.b ? param_rows(ctx, a->qkv.b, 0, D) : NULL;
    cf_tensor *bkv = a->qkv.b ? param_rows(ctx, a->qkv.b, D, 2 * D) : NULL;
    cf_tensor *q = cf_linear(ctx, xq, param_rows(ctx, a->qkv.w, 0, D), bq);              /* (B, Tq, D) */
    cf_tensor *kv = cf_linear(ctx, xc, param_rows(ctx, a->qkv.w, D, 2 * D), bkv);         /* (B, Tk, 2D) */
    cf_tensor *k = cf_slice_last(ctx, kv, 0, D), *v = cf_slice_last(ctx, kv, D, D);
    cf_tensor *rk = cf_linear(ctx, pos, a->r_net.w, NULL);                                /* (Tk, D) */
    cf_tensor *y = cf_xl_attention(ctx, q, k, v, rk, u, v_bias, a->n_heads, a->dropout);
    return cf_linear_apply(ctx, &a->proj, y);
}

/* ---- the variant interface ------------------------------------------------------------------------ */

cf_attn_pattern cf_attn_pattern_of(const cf_attn_config *c, int layer) {
    cf_attn_pattern p = {.type = c->type, .window = c->window, .stride = c->stride, .c = c->c};
    if (c->combine == CF_COMBINE_HEADS) p.split_heads = 1;
    else if (c->combine == CF_COMBINE_MERGED) p.parts = 3;
    else p.parts = layer % 2 ? 2 : 1;                                     /* "alternate" */
    return p;
}

int cf_attn_check(const cf_attn_config *c, const char *path, int n_heads, int d_model) {
    switch (c->type) {
    case CF_ATTN_FULL:
    case CF_ATTN_WINDOW:
    case CF_ATTN_LINEAR:
        return 0;
    case CF_ATTN_SPARSE_STRIDED:
    case CF_ATTN_SPARSE_FIXED:
        if (c->stride < 1) return cf_set_error("%s.stride: must be >= 1 (got %d)", path, c->stride);
        if (c->type == CF_ATTN_SPARSE_FIXED && (c->c < 1 || c->c > c->stride))
            return cf_set_error("%s.c: must be in [1, stride %d] (got %d)", path, c->stride, c->c);
        if (c->combine == CF_COMBINE_HEADS && n_heads < 2)
            return cf_set_error("%s.combine: \"heads\" splits the two parts between heads and needs at least 2 "
                                "heads (model.n_heads is %d)", path, n_heads);
        return 0;
    case CF_ATTN_INFINI:
        /* segments of local attention are blocks of the sparse_fixed "own block" pattern */
        if (c->segment_len < 1) return cf_set_error("%s.segment_len: must be >= 1 (got %d)", path, c->segment_len);
        return 0;
    case CF_ATTN_PERFORMER:
        if (c->features < 1) return cf_set_error("%s.features: must be >= 1 (got %d)", path, c->features);
        if (c->redraw_every < 1) return cf_set_error("%s.redraw_every: must be >= 1 (got %d)", path, c->redraw_every);
        (void)d_model;
        return 0;
    default:
        return cf_set_error("%s.type: \"%s\" is available in decoder-only models (model.arch \"decoder\") only",
                            path, cf_attn_kind_name(c->type));
    }
}

void cf_attn_set_step(cf_attn_layer *a, uint64_t seed, uint64_t step) {
    a->draw_seed = seed;
    a->draw_index = a->cfg.redraw_every > 0 ? (int64_t)(step / (uint64_t)a->cfg.redraw_every) : 0;
}

/* The performer's random features for this call: in training a pure function of (train.seed,
 * layer, ctx->step / redraw_every), remembered in the layer; outside training the remembered draw,
 * so evaluation and sampling use the features the weights were last trained with. */
static float *performer_w(cf_ctx *ctx, const cf_attn_layer *a, int m, int d) {
    uint64_t seed;
    int64_t index;
    if (ctx->training) {
        seed = ctx->seed;
        index = (int64_t)(ctx->step / (uint64_t)a->cfg.redraw_every);
        /* the layer is const to its callers because its parameters do not change here; the draw
         * record is a note of the training step, not a parameter (the object is never const) */
        cf_attn_layer *rec = (cf_attn_layer *)a;
        rec->draw_seed = seed;
        rec->draw_index = index;
    } else if (a->draw_index >= 0) {
        seed = a->draw_seed;
        index = a->draw_index;
    } else {
        seed = ctx->seed;
        index = 0;
    }
    float *w = cf_scratch(ctx, (size_t)m * d * sizeof(float));
    cf_performer_draw(ctx, w, m, d, seed, a->layer_key, (uint64_t)index);
    return w;
}

cf_tensor *cf_attn_core(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *qkv, const uint8_t *key_keep) {
    CF_ASSERT(qkv->ndim == 3 && qkv->shape[2] % (3 * a->n_heads) == 0,
              "attention core: qkv %s is not [B, T, 3D] with %d heads", cf_shape_str(qkv), a->n_heads);
    cf_attn_opts o = {.causal = a->causal, .dropout = a->dropout, .key_keep = key_keep};
    switch (a->cfg.type) {
    case CF_ATTN_FULL:
        return cf_attention_qkv(ctx, qkv, a->n_heads, &o);
    case CF_ATTN_WINDOW:
    case CF_ATTN_SPARSE_STRIDED:
    case CF_ATTN_SPARSE_FIXED: {
        cf_attn_pattern p = cf_attn_pattern_of(&a->cfg, a->layer);
        return cf_masked_attention_qkv(ctx, qkv, a->n_heads, &p, &o);
    }
    case CF_ATTN_LINEAR:
        return cf_linear_attention_qkv(ctx, qkv, a->n_heads, a->causal, key_keep);
    case CF_ATTN_PERFORMER: {
        int m = a->cfg.features, d = qkv->shape[2] / 3 / a->n_heads, relu = a->cfg.kernel == CF_FAVOR_RELU;
        float *w = performer_w(ctx, a, m, d);
        cf_tensor *fq = cf_favor_features(ctx, qkv, 0, a->n_heads, w, m, relu, NULL);
        cf_tensor *fk = cf_favor_features(ctx, qkv, 1, a->n_heads, w, m, relu, key_keep);
        /* no eps: the features are positive (their own eps terms), so the denominator is too */
        return cf_kernel_attention(ctx, fq, fk, qkv, a->n_heads, a->causal, 0.0f, key_keep);
    }
    case CF_ATTN_INFINI: {
        /* local attention inside each segment (causal, block-diagonal), then the memory and gate */
        CF_ASSERT(a->causal && !key_keep, "attention type infini is causal and takes no key padding");
        cf_attn_pattern p = {.type = CF_ATTN_SPARSE_FIXED, .stride = a->cfg.segment_len, .c = 1, .parts = 1};
        cf_tensor *a_dot = cf_masked_attention_qkv(ctx, qkv, a->n_heads, &p, &o);
        if (a->cfg.update == CF_UPDATE_NONE) return a_dot;         /* the ablation: no memory at all */
        const cf_infini_io *io = a->infini;
        return cf_infini_attention(ctx, qkv, a_dot, a->gate, a->n_heads, a->cfg.segment_len,
                                   a->cfg.update == CF_UPDATE_DELTA, io ? io->M0 : NULL, io ? io->z0 : NULL,
                                   io ? io->M_out : NULL, io ? io->z_out : NULL);
    }
    case CF_ATTN_XL:
        CF_ASSERT(0, "attention type xl needs its memory and relative positions: cf_attn_xl_apply (the decoder "
                     "model runs it)");
        break;
    default:
        CF_ASSERT(0, "attention type %s has no core yet", cf_attn_kind_name(a->cfg.type));
    }
    return NULL;
}
