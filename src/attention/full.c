/* Full softmax attention: every query sees every key (j <= i when causal), through the fused
 * tiled kernel on the qkv projection (cf_attention_qkv, src/ops/attention.c). */
#include "cformer/attention.h"
#include "cache.h"

static cf_tensor *full_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv) {
    cf_attn_opts o = cf_attn_call_opts(c);
    return cf_attention_qkv(ctx, qkv, c->n_heads, &o);
}

/* ---- incremental decoding: every cached position up to the query's ------------------------------ */

static int full_rows(const cf_attn_config *c, int span) { (void)c; return span; }
static size_t no_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    (void)c, (void)n_heads, (void)d_head, (void)span;
    return 0;
}

static int full_keys(const cf_attn_call *call, const cf_attn_cache *c, int h, int64_t p, int32_t *rows) {
    (void)call, (void)h;
    CF_ASSERT(p < c->rows, "full attention: position %lld past the cache's %d rows", (long long)p, c->rows);
    for (int j = 0; j <= p; j++) rows[j] = j;
    return (int)p + 1;
}

static void full_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                      int ld, int n, float *out) {
    cf_cache_softmax_step(call, c, q, k, v, ld, n, out, full_keys);
}

const cf_attn_variant cf_attn_full = {
    .name = "full", .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_ALIBI | CF_ATTN_QK_NORM,
    .core = full_core, .cache_rows = full_rows, .cache_aux = no_aux, .step = full_step};
