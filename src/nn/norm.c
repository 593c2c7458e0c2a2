/* Normalisation layer: LayerNorm (weight, bias) or RMSNorm (weight). */
#include <stdio.h>
#include "cformer/nn.h"

void cf_norm_decl(cf_norm_layer *n, cf_params *p, const char *prefix, int d, cf_norm_kind kind, float eps) {
    char name[256];
    n->kind = kind;
    n->eps = eps;
    snprintf(name, sizeof name, "%s.weight", prefix);
    n->w = cf_param_add(p, name, 1, (int[]){d});
    n->b = NULL;
    if (kind == CF_NORM_LAYERNORM) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        n->b = cf_param_add(p, name, 1, (int[]){d});
    }
}

cf_tensor *cf_norm_apply(cf_ctx *ctx, const cf_norm_layer *n, cf_tensor *x) {
    return n->kind == CF_NORM_LAYERNORM ? cf_layernorm(ctx, x, n->w, n->b, n->eps)
                                        : cf_rmsnorm(ctx, x, n->w, n->eps);
}

cf_tensor *cf_norm_add_apply(cf_ctx *ctx, const cf_norm_layer *n, cf_tensor *x, cf_tensor *r, cf_tensor **sum) {
    return cf_add_norm(ctx, x, r, n->w, n->b, n->kind != CF_NORM_LAYERNORM, n->eps, sum);
}
