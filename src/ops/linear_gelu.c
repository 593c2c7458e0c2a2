/* Linear + GELU fused: y = gelu(x W^T + b), the first half of a GELU feed-forward layer. Through
 * the GEMM's hooks (kernels.h: cf_gemm_epi) each block of the product starts from the bias and
 * gets its GELU as soon as it is final, while it is in cache, instead of in two more passes over
 * the [rows, out] product (and their two parallel regions).
 * The product h (bias included) is kept for backward, as the gelu op keeps its input; both halves
 * compute exactly what cf_linear then cf_gelu compute, so the results are the same bits. */
#include "cformer/ops.h"
#include "backward.h"
#include "gelu.h"

typedef struct gelu_job { const float *h; float *y; int ld; } gelu_job;

static void gelu_block(void *arg, int i0, int j0, int rows, int cols) {
    const gelu_job *g = arg;
    for (int r = 0; r < rows; r++) {
        const float *h = g->h + (size_t)(i0 + r) * g->ld + j0;
        float *y = g->y + (size_t)(i0 + r) * g->ld + j0;
        #pragma omp simd
        for (int j = 0; j < cols; j++) y[j] = cf_gelu_value(h[j]);
    }
}

cf_tensor *cf_linear_gelu(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b) {
    cf_tensor *h = cf_linear_output(ctx, x, w, b, "linear_gelu");   /* x W^T + b, kept for backward */
    cf_tensor *y = cf_tensor_new(ctx, h->ndim, h->shape);
    gelu_job job = {h->data, y->data, w->shape[0]};
    cf_linear_product(ctx, x, w, b, h->data, gelu_block, &job);
    cf_node *n = cf_record(ctx, CF_OP_LINEAR_GELU, y, b ? 3 : 2, (cf_tensor *[]){x, w, b});
    if (n) n->ptr = h;
    return y;
}

/* dh = dy gelu'(h) into h's gradient buffer (taken and given back as the unfused pair's gelu
 * would), then the linear layer's backward with dh as its output gradient. */
void cf_linear_gelu_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *h = (cf_tensor *)n->ptr;
    const float *dy = n->out->grad, *ph = h->data;
    int fresh;
    float *dh = cf_grad_nozero(ctx, h, &fresh);
    int64_t cnt = h->numel;
    /* 0 + v, not v: the unfused gelu adds into a zeroed buffer, which turns -0 into +0 */
    /* `parallel:`, so that a serial region stays vectorised (activation.c says why) */
    #pragma omp parallel for simd schedule(static) if (parallel: cnt > 32768)
    for (int64_t i = 0; i < cnt; i++) dh[i] = (fresh ? 0.0f : dh[i]) + dy[i] * cf_gelu_slope(ph[i]);
    cf_node lin = *n;
    lin.out = h;
    cf_linear_backward(ctx, &lin);
    cf_grad_release(ctx, h);
}
