/* Linear + GELU fused: y = gelu(x W^T + b), the first half of a GELU feed-forward layer. Through
 * the GEMM's hooks (kernels.h: cf_gemm_epi) each block of the product starts from the bias and
 * gets its GELU as soon as it is final, while it is in cache, instead of in two more passes over
 * the [rows, out] product (and their two parallel regions).
 * The product h (bias included) is kept for backward, as the gelu op keeps its input; both halves
 * compute exactly what cf_linear then cf_gelu compute, so the results are the same bits. */
#include <limits.h>
#include <string.h>
#include "cformer/kernels.h"
#include "cformer/ops.h"
#include "backward.h"
#include "gelu.h"

typedef struct gelu_job { float *h; float *y; const float *bias; int ld; } gelu_job;

static void bias_block(void *arg, int i0, int j0, int rows, int cols) {
    const gelu_job *g = arg;
    for (int r = 0; r < rows; r++) memcpy(g->h + (size_t)(i0 + r) * g->ld + j0, g->bias + j0, (size_t)cols * sizeof(float));
}

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
    int in = cf_cols(x);
    CF_ASSERT(w->ndim == 2 && w->shape[1] == in, "linear_gelu: x %s and W %s (want [out, %d])",
              cf_shape_str(x), cf_shape_str(w), in);
    int out = w->shape[0];
    CF_ASSERT(!b || (b->ndim == 1 && b->shape[0] == out), "linear_gelu: bias %s for W %s (want [%d])",
              b ? cf_shape_str(b) : "", cf_shape_str(w), out);
    int64_t rows = cf_rows(x);
    CF_ASSERT(rows <= INT_MAX, "linear_gelu: x %s has too many rows for one GEMM", cf_shape_str(x));
    int shape[CF_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    cf_tensor *h = cf_tensor_new(ctx, x->ndim, shape);   /* x W^T + b, kept for backward */
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, shape);
    /* as cf_linear: every row starts from the bias and the GEMM adds x W^T onto it */
    gelu_job job = {h->data, y->data, b ? b->data : NULL, out};
    cf_gemm_hooks hooks = {b ? bias_block : NULL, gelu_block, &job};
    (ctx->bf16 ? cf_gemm_bf16_epi : cf_gemm_epi)(0, 1, (int)rows, out, in, 1.0f, x->data, in, w->data, in,
                                                 b ? 1.0f : 0.0f, h->data, out, &hooks);
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
    #pragma omp parallel for simd schedule(static) if (cnt > 32768)
    for (int64_t i = 0; i < cnt; i++) dh[i] = (fresh ? 0.0f : dh[i]) + dy[i] * cf_gelu_slope(ph[i]);
    cf_node lin = *n;
    lin.out = h;
    cf_linear_backward(ctx, &lin);
    cf_grad_release(ctx, h);
}
