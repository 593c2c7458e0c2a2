/* Linear layer: y = x W^T + b, weights [out, in] as in PyTorch. */
#include <stdio.h>
#include "cformer/nn.h"

void cf_linear_decl(cf_linear_layer *l, cf_params *p, const char *prefix, int in, int out, int bias) {
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    l->w = cf_param_add(p, name, 2, (int[]){out, in});
    l->b = NULL;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        l->b = cf_param_add(p, name, 1, (int[]){out});
    }
}

cf_tensor *cf_linear_apply(cf_ctx *ctx, const cf_linear_layer *l, cf_tensor *x) {
    return cf_linear(ctx, x, l->w, l->b);
}
