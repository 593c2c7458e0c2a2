/* Sliding-window attention (docs/attention.md section 3): query i sees i - window <= j <= i (causal,
 * window + 1 keys, the x-transformers max_attend_past convention), or |i - j| <= window
 * (bidirectional, for encoders). One segment, every query against every key, a band rule: the
 * engine (masked.c) visits only the ceil(window / 64) + 2 key blocks a query block's band touches,
 * so the cost is O(T window). */
#include "masked.h"

void cf_window_plan(cf_ctx *ctx, plan *p, const cf_attn_pattern *pat, int causal) {
    p->n_classes = 1;
    p->n_stages[0] = 1;
    seg *s = cf_plan_add(ctx, p, 0, 0, 1);
    s->q = s->k = cf_plist_ident(p->T);
    s->r = (rule){.kind = R_BAND, .back = pat->window, .fwd = causal ? 0 : pat->window, .causal = causal};
}

const cf_attn_variant cf_attn_window = {.name = "window", 
                                        .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_ALIBI | CF_ATTN_QK_NORM,
                                         .core = cf_masked_core};
