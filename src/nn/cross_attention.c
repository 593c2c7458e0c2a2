/* Cross-attention layer of the encoder-decoder: queries from the decoder stream, keys and values
 * from the encoder output through one fused projection (one GEMM over the memory instead of two),
 * padded memory positions masked, output projection. */
#include <stdio.h>
#include "cformer/nn.h"

void cf_cross_attn_decl(cf_cross_attn_layer *l, cf_params *p, const char *prefix, int d, int n_heads,
                        float dropout, int bias) {
    char name[256];
    l->n_heads = n_heads;
    l->dropout = dropout;
    snprintf(name, sizeof name, "%s.q", prefix);
    cf_linear_decl(&l->q, p, name, d, d, bias);
    snprintf(name, sizeof name, "%s.kv", prefix);
    cf_linear_decl(&l->kv, p, name, d, 2 * d, bias);
    snprintf(name, sizeof name, "%s.proj", prefix);
    cf_linear_decl(&l->proj, p, name, d, d, bias);
}

cf_tensor *cf_cross_attn_kv(cf_ctx *ctx, const cf_cross_attn_layer *l, cf_tensor *mem) {
    return cf_linear_apply(ctx, &l->kv, mem);                                /* (B, S, 2D) */
}

cf_tensor *cf_cross_attn_apply(cf_ctx *ctx, const cf_cross_attn_layer *l, cf_tensor *x, cf_tensor *mem,
                               const uint8_t *mem_keep) {
    CF_ASSERT(x->ndim == 3 && mem->ndim == 3 && x->shape[0] == mem->shape[0] && x->shape[2] == mem->shape[2],
              "cross attention: x %s and memory %s must be [B, T, D] and [B, S, D]", cf_shape_str(x),
              cf_shape_str(mem));
    int D = x->shape[2];
    cf_tensor *q = cf_linear_apply(ctx, &l->q, x);                           /* (B, T, D) */
    cf_tensor *kv = cf_cross_attn_kv(ctx, l, mem);                           /* (B, S, 2D) */
    /* the fused attention kernel reads k and v with the row stride of q, so they are split out;
     * the copies are O(S D) per row against the O(T S D) of the attention itself */
    cf_tensor *k = cf_slice_last(ctx, kv, 0, D), *v = cf_slice_last(ctx, kv, D, D);
    cf_attn_opts o = {.causal = 0, .dropout = l->dropout, .key_keep = mem_keep};
    cf_tensor *y = cf_attention(ctx, q, k, v, l->n_heads, &o);               /* (B, T, D) */
    return cf_linear_apply(ctx, &l->proj, y);
}
