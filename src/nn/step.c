/* Incremental decoding of a block on rows of plain floats: the inference-only twin of
 * cf_block_apply (block.c) for n new rows of one stream, with the attention layer's cache. The
 * norms and activations are the tensor ops themselves (recording nothing: the decoder runs with
 * gradients off), so they give the same values as the full forward; the linear layers go through
 * cf_gemv, which reads each weight once per row instead of packing it. */
#include <string.h>
#include "cformer/kernels.h"
#include "cformer/nn.h"

void cf_linear_rows(const cf_linear_layer *l, const float *x, int n, float *y) {
    int out = l->w->shape[0], in = l->w->shape[1];
    const float *b = l->b ? l->b->data : NULL;
    if (n == 1) {
        cf_gemv(out, in, l->w->data, in, x, b, y);
        return;
    }
    cf_gemm(0, 1, n, out, in, 1.0f, x, in, l->w->data, in, 0.0f, y, out);
    if (b)
        for (int r = 0; r < n; r++)
            for (int j = 0; j < out; j++) y[(size_t)r * out + j] += b[j];
}

static float *norm_rows(cf_ctx *ctx, const cf_norm_layer *nl, float *x, int n, int D) {
    return cf_norm_apply(ctx, nl, cf_tensor_view(ctx, x, 2, (int[]){n, D}))->data;
}

/* out [n, D] = mlp(x [n, D]) */
static void mlp_rows(cf_ctx *ctx, const cf_mlp_layer *m, const float *x, int n, float *out) {
    int F = m->fc.w->shape[0];
    float *h = cf_scratch(ctx, sizeof(float) * (size_t)n * F);
    cf_linear_rows(&m->fc, x, n, h);
    cf_tensor *ht = cf_tensor_view(ctx, h, 2, (int[]){n, F});
    if (m->up.w) {                                                  /* gated: act(fc x) * up x */
        float *u = cf_scratch(ctx, sizeof(float) * (size_t)n * F);
        cf_linear_rows(&m->up, x, n, u);
        ht = cf_glu(ctx, ht, cf_tensor_view(ctx, u, 2, (int[]){n, F}), m->act);
    } else {
        ht = m->act == CF_ACT_GELU ? cf_gelu(ctx, ht) : m->act == CF_ACT_RELU ? cf_relu(ctx, ht) : cf_silu(ctx, ht);
    }
    cf_linear_rows(&m->proj, ht->data, n, out);
}

void cf_block_step(cf_ctx *ctx, const cf_block *b, const cf_attn_state *state, cf_attn_cache *c, float *x, int n) {
    int D = b->attn.proj.w->shape[0];
    size_t mark = cf_arena_mark(&ctx->arena), nd = (size_t)n * D;
    float *a = cf_scratch(ctx, sizeof(float) * nd);
    if (b->norm_position == CF_NORM_PRE) {
        cf_attn_step(ctx, &b->attn, state, c, norm_rows(ctx, &b->ln1, x, n, D), n, a);
        for (size_t i = 0; i < nd; i++) x[i] += a[i];
        mlp_rows(ctx, &b->mlp, norm_rows(ctx, &b->ln2, x, n, D), n, a);
        for (size_t i = 0; i < nd; i++) x[i] += a[i];
    } else {
        cf_attn_step(ctx, &b->attn, state, c, x, n, a);
        for (size_t i = 0; i < nd; i++) x[i] += a[i];
        memcpy(x, norm_rows(ctx, &b->ln1, x, n, D), sizeof(float) * nd);
        mlp_rows(ctx, &b->mlp, x, n, a);
        for (size_t i = 0; i < nd; i++) x[i] += a[i];
        memcpy(x, norm_rows(ctx, &b->ln2, x, n, D), sizeof(float) * nd);
    }
    cf_arena_rewind(&ctx->arena, mark);
}
