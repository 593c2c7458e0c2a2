/* Transformer block. Pre-norm (GPT-2): x + drop(attn(ln1(x))), then + drop(mlp(ln2(.))).
 * Post-norm (Vaswani 2017): ln1(x + drop(attn(x))), then ln2(. + drop(mlp(.))). */
#include <stdio.h>
#include "cformer/nn.h"

void cf_block_decl(cf_block *b, cf_params *p, const char *prefix, const cf_model_config *m,
                   const cf_attn_config *attn, int causal) {
    char name[256];
    float attn_drop = m->attn_dropout >= 0 ? m->attn_dropout : m->dropout;
    snprintf(name, sizeof name, "%s.ln1", prefix);
    cf_norm_decl(&b->ln1, p, name, m->d_model, m->norm, m->norm_eps);
    snprintf(name, sizeof name, "%s.attn", prefix);
    cf_attn_heads heads = cf_attn_heads_of(m);
    cf_attn_decl_heads(&b->attn, p, name, m->d_model, m->n_heads, causal, attn_drop, attn, m->bias, &heads);
    snprintf(name, sizeof name, "%s.ln2", prefix);
    cf_norm_decl(&b->ln2, p, name, m->d_model, m->norm, m->norm_eps);
    snprintf(name, sizeof name, "%s.mlp", prefix);
    cf_mlp_decl_glu(&b->mlp, p, name, m->d_model, m->d_ff, m->activation, m->bias, m->glu);
    b->norm_position = m->norm_position;
    b->dropout = m->dropout;
}

cf_tensor *cf_block_apply(cf_ctx *ctx, const cf_block *b, cf_tensor *x) {
    return cf_block_apply_state(ctx, b, x, NULL);
}

cf_tensor *cf_block_apply_state(cf_ctx *ctx, const cf_block *b, cf_tensor *x, const cf_attn_state *state) {
    /* each residual add that a norm reads runs fused with it (cf_norm_add_apply) */
    cf_tensor *s;
    if (b->norm_position == CF_NORM_PRE) {
        cf_tensor *a = cf_attn_apply_state(ctx, &b->attn, cf_norm_apply(ctx, &b->ln1, x), NULL, state);
        cf_tensor *h = cf_norm_add_apply(ctx, &b->ln2, x, cf_dropout(ctx, a, b->dropout), &s);
        return cf_add(ctx, s, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, h), b->dropout));
    }
    cf_tensor *a = cf_attn_apply_state(ctx, &b->attn, x, NULL, state);
    x = cf_norm_add_apply(ctx, &b->ln1, x, cf_dropout(ctx, a, b->dropout), &s);
    return cf_norm_add_apply(ctx, &b->ln2, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, x), b->dropout), &s);
}
