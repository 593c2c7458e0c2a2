/* Feed-forward layer: proj(act(fc(x))). */
#include <stdio.h>
#include "cformer/nn.h"

void cf_mlp_decl(cf_mlp_layer *m, cf_params *p, const char *prefix, int d, int d_ff, cf_act_kind act, int bias) {
    char name[256];
    m->act = act;
    snprintf(name, sizeof name, "%s.fc", prefix);
    cf_linear_decl(&m->fc, p, name, d, d_ff, bias);
    snprintf(name, sizeof name, "%s.proj", prefix);
    cf_linear_decl(&m->proj, p, name, d_ff, d, bias);
}

cf_tensor *cf_mlp_apply(cf_ctx *ctx, const cf_mlp_layer *m, cf_tensor *x) {
    cf_tensor *h = m->act == CF_ACT_GELU ? cf_linear_gelu(ctx, x, m->fc.w, m->fc.b)
                                         : cf_relu(ctx, cf_linear_apply(ctx, &m->fc, x));
    return cf_linear_apply(ctx, &m->proj, h);
}
