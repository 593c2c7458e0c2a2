/* Sliding-window attention (docs/attention.md section 3): query i sees i - window <= j <= i (causal,
 * window + 1 keys, the x-transformers max_attend_past convention), or |i - j| <= window
 * (bidirectional, for encoders). One segment, every query against every key, a band rule: the
 * engine (masked.c) visits only the ceil(window / 64) + 2 key blocks a query block's band touches,
 * so the cost is O(T window). */
#include "masked.h"
#include "cache.h"

void cf_window_plan(cf_ctx *ctx, plan *p, const cf_attn_pattern *pat, int causal) {
    p->n_classes = 1;
    p->n_stages[0] = 1;
    seg *s = cf_plan_add(ctx, p, 0, 0, 1);
    s->q = s->k = cf_plist_ident(p->T);
    s->r = (rule){.kind = R_BAND, .back = pat->window, .fwd = causal ? 0 : pat->window, .causal = causal};
}

/* ---- incremental decoding: a ring of window + 1 positions, constant memory and cost per byte ------ */

static int window_rows(const cf_attn_config *c, int span) { return c->window + 1 < span ? c->window + 1 : span; }
static size_t window_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    (void)c, (void)n_heads, (void)d_head, (void)span;
    return 0;
}

static int window_keys(const cf_attn_call *call, const cf_attn_cache *c, int h, int64_t p, int32_t *rows) {
    (void)h;
    int64_t j0 = p - call->cfg->window > 0 ? p - call->cfg->window : 0;
    int n = 0;
    for (int64_t j = j0; j <= p; j++) rows[n++] = cf_cache_row(c, j);
    return n;
}

static void window_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                        int ld, int n, float *out) {
    cf_cache_softmax_step(call, c, q, k, v, ld, n, out, window_keys);
}

const cf_attn_variant cf_attn_window = {
    .name = "window", .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_ALIBI | CF_ATTN_QK_NORM,
    .core = cf_masked_core, .cache_rows = window_rows, .cache_aux = window_aux, .step = window_step};
