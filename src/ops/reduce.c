/* sum and mean of every element -> [1]: forward and backward side by side. */
#include "cformer/ops.h"
#include "backward.h"

#define N_BLOCKS 64   /* fixed, so the order of summation does not depend on the thread count */

/* Sum in double over N_BLOCKS contiguous blocks whose bounds depend only on n; the block sums
 * are added in block order. */
static double sum_fixed_order(const float *x, int64_t n) {
    double part[N_BLOCKS];
    int64_t bs = (n + N_BLOCKS - 1) / N_BLOCKS;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int b = 0; b < N_BLOCKS; b++) {
        int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        double s = 0;
        for (int64_t i = lo; i < hi; i++) s += x[i];
        part[b] = s;
    }
    double s = 0;
    for (int b = 0; b < N_BLOCKS; b++) s += part[b];
    return s;
}

cf_tensor *cf_sum(cf_ctx *ctx, cf_tensor *x) {
    cf_tensor *y = cf_tensor_1d(ctx, 1);
    y->data[0] = (float)sum_fixed_order(x->data, x->numel);
    cf_record(ctx, CF_OP_SUM, y, 1, &x);
    return y;
}

static void add_constant(float *dx, int64_t n, float v) {
    /* `parallel:`, so that a serial region stays vectorised (activation.c says why) */
    #pragma omp parallel for simd schedule(static) if (parallel: n > 32768)
    for (int64_t i = 0; i < n; i++) dx[i] += v;
}

void cf_sum_backward(cf_ctx *ctx, cf_node *n) {
    add_constant(cf_grad(ctx, n->in[0]), n->in[0]->numel, n->out->grad[0]);
}

cf_tensor *cf_mean(cf_ctx *ctx, cf_tensor *x) {
    CF_ASSERT(x->numel > 0, "mean: empty tensor %s", cf_shape_str(x));
    cf_tensor *y = cf_tensor_1d(ctx, 1);
    y->data[0] = (float)(sum_fixed_order(x->data, x->numel) / (double)x->numel);
    cf_record(ctx, CF_OP_MEAN, y, 1, &x);
    return y;
}

void cf_mean_backward(cf_ctx *ctx, cf_node *n) {
    add_constant(cf_grad(ctx, n->in[0]), n->in[0]->numel, n->out->grad[0] / (float)n->in[0]->numel);
}
