/* Full softmax attention: every query sees every key (j <= i when causal), through the fused
 * tiled kernel on the qkv projection (cf_attention_qkv, src/ops/attention.c). */
#include "cformer/attention.h"

static cf_tensor *full_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv) {
    cf_attn_opts o = cf_attn_call_opts(c);
    return cf_attention_qkv(ctx, qkv, c->n_heads, &o);
}

const cf_attn_variant cf_attn_full = {.name = "full", 
                                      .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_ALIBI | CF_ATTN_QK_NORM,
                                       .core = full_core};
