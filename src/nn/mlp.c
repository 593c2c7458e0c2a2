/* Feed-forward layer: proj(act(fc(x))), or gated (Shazeer 2020) proj(act(fc(x)) * up(x)). */
#include <stdio.h>
#include "cformer/nn.h"

void cf_mlp_decl_glu(cf_mlp_layer *m, cf_params *p, const char *prefix, int d, int d_ff, cf_act_kind act, int bias,
                     int glu) {
    char name[256];
    m->act = act;
    snprintf(name, sizeof name, "%s.fc", prefix);
    cf_linear_decl(&m->fc, p, name, d, d_ff, bias);
    m->up.w = m->up.b = NULL;
    if (glu) {
        snprintf(name, sizeof name, "%s.up", prefix);
        cf_linear_decl(&m->up, p, name, d, d_ff, bias);
    }
    snprintf(name, sizeof name, "%s.proj", prefix);
    cf_linear_decl(&m->proj, p, name, d_ff, d, bias);
}

void cf_mlp_decl(cf_mlp_layer *m, cf_params *p, const char *prefix, int d, int d_ff, cf_act_kind act, int bias) {
    cf_mlp_decl_glu(m, p, prefix, d, d_ff, act, bias, 0);
}

cf_tensor *cf_mlp_apply(cf_ctx *ctx, const cf_mlp_layer *m, cf_tensor *x) {
    cf_tensor *h;
    if (m->up.w) h = cf_glu(ctx, cf_linear_apply(ctx, &m->fc, x), cf_linear_apply(ctx, &m->up, x), m->act);
    else if (m->act == CF_ACT_GELU) h = cf_linear_gelu(ctx, x, m->fc.w, m->fc.b);
    else if (m->act == CF_ACT_RELU) h = cf_relu(ctx, cf_linear_apply(ctx, &m->fc, x));
    else h = cf_silu(ctx, cf_linear_apply(ctx, &m->fc, x));
    return cf_linear_apply(ctx, &m->proj, h);
}
