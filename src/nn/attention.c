/* Multi-head self-attention layer: fused qkv projection, the head ops (QK-norm, rope, shared
 * key/value heads), a variant core, output projection. The
 * core, the variant's extra parameters and its checks come from the variant table (attention.h):
 * this file turns a layer into the call its row's core receives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/kernels.h"
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

cf_attn_heads cf_attn_heads_of(const cf_model_config *m) {
    cf_attn_heads h = {.n_kv_heads = m->n_kv_heads, .rope_theta = m->rope_theta, .qk_eps = m->norm_eps};
    if (m->position == CF_POS_ROPE) h.rope_dims = cf_rope_dims(m);
    h.alibi = m->position == CF_POS_ALIBI;
    h.qk_norm = m->qk_norm;
    return h;
}

void cf_attn_decl_heads(cf_attn_layer *a, cf_params *p, const char *prefix, int d, int n_heads, int causal,
                        float dropout, const cf_attn_config *cfg, int bias, const cf_attn_heads *heads) {
    const cf_attn_variant *v = cf_attn_variant_of(cfg->type);
    char name[256];
    int dh = d / n_heads;
    a->n_heads = n_heads;
    a->heads = heads ? *heads : (cf_attn_heads){0};
    if (a->heads.n_kv_heads <= 0) a->heads.n_kv_heads = n_heads;
    CF_ASSERT(n_heads % a->heads.n_kv_heads == 0, "attention: %d key/value heads for %d heads", a->heads.n_kv_heads,
              n_heads);
    a->causal = causal;
    a->dropout = dropout;
    a->cfg = *cfg;
    a->layer = layer_of(prefix);
    a->layer_key = fnv1a(prefix);
    a->draw = cf_params_note(p, sizeof *a->draw);
    a->draw->index = -1;
    snprintf(name, sizeof name, "%s.qkv", prefix);
    cf_linear_decl(&a->qkv, p, name, d, (n_heads + 2 * a->heads.n_kv_heads) * dh, bias);
    a->q_norm = a->k_norm = NULL;
    if (a->heads.qk_norm) {
        snprintf(name, sizeof name, "%s.q_norm.weight", prefix);
        a->q_norm = cf_param_add(p, name, 1, &dh);
        snprintf(name, sizeof name, "%s.k_norm.weight", prefix);
        a->k_norm = cf_param_add(p, name, 1, &dh);
    }
    snprintf(name, sizeof name, "%s.proj", prefix);
    cf_linear_decl(&a->proj, p, name, d, d, bias);
    for (int i = 0; i < CF_ATTN_MAX_EXTRA; i++) {
        a->extra[i] = NULL;
        if (i >= v->n_extra) continue;
        const cf_attn_param *e = &v->extra[i];
        int shape[2];
        for (int j = 0; j < e->ndim; j++) shape[j] = (int)cf_attn_dim_size(e->shape[j], cfg, d, n_heads);
        snprintf(name, sizeof name, "%s.%s", prefix, e->name);
        a->extra[i] = cf_param_add(p, name, e->ndim, shape);
    }
}

void cf_attn_decl(cf_attn_layer *a, cf_params *p, const char *prefix, int d, int n_heads, int causal,
                  float dropout, const cf_attn_config *cfg, int bias) {
    cf_attn_decl_heads(a, p, prefix, d, n_heads, causal, dropout, cfg, bias, NULL);
}

cf_tensor *cf_attn_heads_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *qkv, int64_t pos0) {
    const cf_attn_heads *h = &a->heads;
    /* normalised before the rotation, which keeps each pair's length and so the norm */
    if (h->qk_norm) qkv = cf_qk_norm(ctx, qkv, a->q_norm, a->k_norm, a->n_heads, h->n_kv_heads, h->qk_eps);
    if (h->rope_dims) qkv = cf_rope(ctx, qkv, a->n_heads, h->n_kv_heads, h->rope_dims, h->rope_theta, pos0);
    if (h->n_kv_heads != a->n_heads) qkv = cf_kv_repeat(ctx, qkv, a->n_heads, h->n_kv_heads);
    return qkv;
}

static cf_attn_call call_of(const cf_attn_layer *a, const uint8_t *key_keep, const cf_attn_state *state) {
    return (cf_attn_call){.cfg = &a->cfg, .n_heads = a->n_heads, .causal = a->causal, .dropout = a->dropout,
                          .layer = a->layer, .layer_key = a->layer_key, .qkv_w = a->qkv.w, .qkv_b = a->qkv.b,
                          .extra = a->extra, .draw = a->draw, .key_keep = key_keep, .state = state,
                          .alibi = a->heads.alibi};
}

cf_tensor *cf_attn_apply_state(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x, const uint8_t *key_keep,
                               const cf_attn_state *state) {
    cf_attn_call c = call_of(a, key_keep, state);
    int own_qkv = cf_attn_variant_of(a->cfg.type)->flags & CF_ATTN_OWN_QKV;
    /* (B, T, 3D) after the head ops, or x itself */
    cf_tensor *in = own_qkv ? x : cf_attn_heads_apply(ctx, a, cf_linear_apply(ctx, &a->qkv, x), 0);
    cf_tensor *y = cf_attn_forward(ctx, &c, in);                       /* (B, T, D) */
    return cf_linear_apply(ctx, &a->proj, y);
}

cf_tensor *cf_attn_apply_keep(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x, const uint8_t *key_keep) {
    return cf_attn_apply_state(ctx, a, x, key_keep, NULL);
}

cf_tensor *cf_attn_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x) {
    return cf_attn_apply_state(ctx, a, x, NULL, NULL);
}

cf_tensor *cf_attn_core(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *qkv, const uint8_t *key_keep) {
    CF_ASSERT(!(cf_attn_variant_of(a->cfg.type)->flags & CF_ATTN_OWN_QKV),
              "attention type %s projects its own input and needs its state: cf_attn_apply_state",
              cf_attn_kind_name(a->cfg.type));
    cf_attn_call c = call_of(a, key_keep, NULL);
    return cf_attn_forward(ctx, &c, cf_attn_heads_apply(ctx, a, qkv, 0));
}

void cf_attn_set_step(cf_attn_layer *a, uint64_t seed, uint64_t step) {
    a->draw->seed = seed;
    a->draw->index = a->cfg.redraw_every > 0 ? (int64_t)(step / (uint64_t)a->cfg.redraw_every) : 0;
}

/* ---- incremental decoding (docs/architecture.md section 20) ----------------------------------------- */

void cf_attn_cache_start(cf_ctx *ctx, const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *c) {
    const cf_attn_variant *v = cf_attn_variant_of(a->cfg.type);
    cf_attn_call call = call_of(a, NULL, state);
    if (v->cache_start) v->cache_start(ctx, &call, c);
}

/* The one place where the new rows' queries, keys and values are made, as cf_attn_heads_apply
 * makes them for the full forward: the projection, QK-norm and the rotation of queries and keys by
 * the rows' positions pos. The layout is the projection's, [n, (H + 2 Hkv) Dh]: the query heads,
 * then the key heads, then the value heads; a cache keeps the Hkv key and value heads once, and
 * the H / Hkv query heads of a group read the same one. */
void cf_attn_step_qkv(const cf_attn_layer *a, const int64_t *pos, const float *x, int n, float *qkv) {
    const cf_attn_heads *h = &a->heads;
    int H = a->n_heads, Hkv = h->n_kv_heads, D = a->proj.w->shape[0], dh = D / H, W = (H + 2 * Hkv) * dh;
    cf_linear_rows(&a->qkv, x, n, qkv);
    if (h->qk_norm) cf_qk_norm_rows(qkv, n, W, H, Hkv, dh, a->q_norm->data, a->k_norm->data, h->qk_eps);
    for (int r = 0; h->rope_dims && r < n; r++)   /* the key heads follow the query heads */
        cf_rope_rows(qkv + (size_t)r * W, 1, W, H + Hkv, dh, h->rope_dims, h->rope_theta, pos[r]);
}

/* the width of a step's qkv rows, and where its keys and values start in a row */
static int step_width(const cf_attn_layer *a, int *k_at, int *v_at) {
    int H = a->n_heads, Hkv = a->heads.n_kv_heads, dh = a->proj.w->shape[0] / H;
    *k_at = H * dh;
    *v_at = (H + Hkv) * dh;
    return (H + 2 * Hkv) * dh;
}

void cf_attn_step(cf_ctx *ctx, const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *c, const float *x,
                  int n, float *out) {
    const cf_attn_variant *v = cf_attn_variant_of(a->cfg.type);
    int D = a->proj.w->shape[0], ka, va, W = step_width(a, &ka, &va);
    size_t mark = cf_arena_mark(&ctx->arena);
    float *qkv = cf_scratch(ctx, sizeof(float) * (size_t)n * W), *y = cf_scratch(ctx, sizeof(float) * (size_t)n * D);
    int64_t *pos = cf_scratch(ctx, sizeof(int64_t) * (size_t)n);
    /* positions within the current call, as the full forward numbers a call's rows from 0 (for
     * every variant but the recurrent ones the stream is one call) */
    for (int r = 0; r < n; r++) pos[r] = c->pos - c->call0 + r;
    cf_attn_step_qkv(a, pos, x, n, qkv);                            /* (n, W) */
    cf_attn_call call = call_of(a, NULL, state);
    v->step(&call, c, qkv, qkv + ka, qkv + va, W, n, y);                 /* (n, D) */
    cf_linear_rows(&a->proj, y, n, out);
    cf_arena_rewind(&ctx->arena, mark);
}

void cf_attn_step_streams(cf_ctx *ctx, const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *caches,
                          const float *x, int n, float *out) {
    const cf_attn_variant *v = cf_attn_variant_of(a->cfg.type);
    int D = a->proj.w->shape[0], ka, va, W = step_width(a, &ka, &va);
    size_t mark = cf_arena_mark(&ctx->arena);
    float *qkv = cf_scratch(ctx, sizeof(float) * (size_t)n * W), *y = cf_scratch(ctx, sizeof(float) * (size_t)n * D);
    int64_t *pos = cf_scratch(ctx, sizeof(int64_t) * (size_t)n);
    for (int r = 0; r < n; r++) pos[r] = caches[r].pos;
    cf_attn_step_qkv(a, pos, x, n, qkv);                            /* (n, W) */
    cf_attn_call call = call_of(a, NULL, state);
    /* each stream's step writes only its own cache (and its own workspace, which a step in a
     * nested, inactive parallel region reads as thread 0's) and its own output row */
    #pragma omp parallel for schedule(static) if (n > 1 && (int64_t)n * caches[0].pos * D >= (1 << 16))
    for (int r = 0; r < n; r++) {
        const float *row = qkv + (size_t)r * W;
        v->step(&call, &caches[r], row, row + ka, row + va, W, 1, y + (size_t)r * D);
    }
    cf_linear_rows(&a->proj, y, n, out);
    cf_arena_rewind(&ctx->arena, mark);
}

void cf_attn_boundary(const cf_attn_layer *a, const cf_attn_state *state, cf_attn_cache *c) {
    const cf_attn_variant *v = cf_attn_variant_of(a->cfg.type);
    cf_attn_call call = call_of(a, NULL, state);
    CF_ASSERT(v->boundary, "attention type %s carries nothing across calls", v->name);
    v->boundary(&call, c);
}
