/* Multi-head self-attention layer: fused qkv projection, a variant core, output projection.
 * The variant cores of the literature (window, sparse, linear, performer, xl, infini) plug in
 * here through cfg.type; the full softmax core is the fused tiled kernel of ops/attention.c. */
#include <stdio.h>
#include "cformer/nn.h"

void cf_attn_decl(cf_attn_layer *a, cf_params *p, const char *prefix, int d, int n_heads, int causal,
                  float dropout, const cf_attn_config *cfg, int bias) {
    char name[256];
    a->n_heads = n_heads;
    a->causal = causal;
    a->dropout = dropout;
    a->cfg = *cfg;
    snprintf(name, sizeof name, "%s.qkv", prefix);
    cf_linear_decl(&a->qkv, p, name, d, 3 * d, bias);
    snprintf(name, sizeof name, "%s.proj", prefix);
    cf_linear_decl(&a->proj, p, name, d, d, bias);
}

cf_tensor *cf_attn_apply(cf_ctx *ctx, const cf_attn_layer *a, cf_tensor *x) {
    cf_tensor *qkv = cf_linear_apply(ctx, &a->qkv, x);                  /* (B, T, 3D) */
    cf_attn_opts o = {.causal = a->causal, .dropout = a->dropout};
    CF_ASSERT(a->cfg.type == CF_ATTN_FULL, "attention type %s has no core yet", cf_attn_kind_name(a->cfg.type));
    cf_tensor *y = cf_attention_qkv(ctx, qkv, a->n_heads, &o);          /* (B, T, D) */
    return cf_linear_apply(ctx, &a->proj, y);
}
