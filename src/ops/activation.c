/* gelu (tanh approximation), relu, elu: forward and backward side by side. None keeps a buffer for
 * backward: each recomputes what it needs from its input (and elu from its output). */
#include <math.h>
#include "cformer/ops.h"
#include "backward.h"
#include "gelu.h"

#define PAR_MIN 32768   /* below this many elements a parallel region costs more than it saves */

cf_tensor *cf_gelu(cf_ctx *ctx, cf_tensor *x) {
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    const float *px = x->data;
    float *py = y->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        py[i] = cf_gelu_value(px[i]);
    }
    cf_record(ctx, CF_OP_GELU, y, 1, &x);
    return y;
}

void cf_gelu_backward(cf_ctx *ctx, cf_node *n) {
    const float *px = n->in[0]->data, *g = n->out->grad;
    float *dx = cf_grad(ctx, n->in[0]);
    int64_t cnt = n->out->numel;
    #pragma omp parallel for simd schedule(static) if (cnt > PAR_MIN)
    for (int64_t i = 0; i < cnt; i++) {
        dx[i] += g[i] * cf_gelu_slope(px[i]);
    }
}

cf_tensor *cf_relu(cf_ctx *ctx, cf_tensor *x) {
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    const float *px = x->data;
    float *py = y->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) py[i] = px[i] > 0.0f ? px[i] : 0.0f;
    cf_record(ctx, CF_OP_RELU, y, 1, &x);
    return y;
}

/* the gradient at 0 is taken as 0, as PyTorch does */
void cf_relu_backward(cf_ctx *ctx, cf_node *n) {
    const float *px = n->in[0]->data, *g = n->out->grad;
    float *dx = cf_grad(ctx, n->in[0]);
    int64_t cnt = n->out->numel;
    #pragma omp parallel for simd schedule(static) if (cnt > PAR_MIN)
    for (int64_t i = 0; i < cnt; i++) dx[i] += px[i] > 0.0f ? g[i] : 0.0f;
}

/* x for x > 0, alpha (e^x - 1) otherwise; expm1f keeps small negative x accurate */
cf_tensor *cf_elu(cf_ctx *ctx, cf_tensor *x, float alpha) {
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    const float *px = x->data;
    float *py = y->data;
    int64_t n = x->numel;
    #pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) py[i] = px[i] > 0.0f ? px[i] : alpha * expm1f(px[i]);
    cf_node *nd = cf_record(ctx, CF_OP_ELU, y, 1, &x);
    if (nd) nd->farg[0] = alpha;
    return y;
}

/* for x <= 0, d/dx alpha (e^x - 1) = alpha e^x = y + alpha: read from the output, no exp again */
void cf_elu_backward(cf_ctx *ctx, cf_node *n) {
    const float *px = n->in[0]->data, *py = n->out->data, *g = n->out->grad;
    float alpha = n->farg[0], *dx = cf_grad(ctx, n->in[0]);
    int64_t cnt = n->out->numel;
    #pragma omp parallel for simd schedule(static) if (cnt > PAR_MIN)
    for (int64_t i = 0; i < cnt; i++) dx[i] += px[i] > 0.0f ? g[i] : g[i] * (py[i] + alpha);
}
