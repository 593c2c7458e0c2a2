/* Inverted dropout: forward and backward side by side.
 * Element i is kept when cf_rng_uniform(key, i) >= p, with key = cf_rng_key(seed, step, call):
 * the mask is a pure function of (seed, step, call, i), so it does not depend on the thread count,
 * and backward (or a checkpointed region's recomputation) regenerates it from the key alone. The
 * node keeps only the key (iarg[0]) and p (farg[0]), no mask buffer. */
#include "cformer/ops.h"
#include "backward.h"

#define PAR_MIN 16384   /* the RNG makes each element dearer than a plain copy */

cf_tensor *cf_dropout(cf_ctx *ctx, cf_tensor *x, float p) {
    CF_ASSERT(p >= 0.0f && p < 1.0f, "dropout: p = %g outside [0, 1) for %s", (double)p, cf_shape_str(x));
    if (p == 0.0f || !ctx->training) return x;
    /* the counter advances whether or not a node is recorded: a checkpointed region's forward
     * (not recorded) and its recomputation (recorded) must draw the same masks */
    uint64_t key = cf_rng_key(ctx->seed, ctx->step, ctx->rng_calls++);
    float scale = 1.0f / (1.0f - p);
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    const float *px = x->data;
    float *py = y->data;
    int64_t n = x->numel;
    #pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) py[i] = cf_rng_uniform(key, (uint64_t)i) >= p ? px[i] * scale : 0.0f;
    cf_node *nd = cf_record(ctx, CF_OP_DROPOUT, y, 1, &x);
    if (nd) {
        nd->iarg[0] = (int64_t)key;
        nd->farg[0] = p;
    }
    return y;
}

void cf_dropout_backward(cf_ctx *ctx, cf_node *n) {
    uint64_t key = (uint64_t)n->iarg[0];
    float p = n->farg[0], scale = 1.0f / (1.0f - p);
    const float *g = n->out->grad;
    float *dx = cf_grad(ctx, n->in[0]);
    int64_t cnt = n->out->numel;
    #pragma omp parallel for schedule(static) if (cnt > PAR_MIN)
    for (int64_t i = 0; i < cnt; i++) dx[i] += cf_rng_uniform(key, (uint64_t)i) >= p ? g[i] * scale : 0.0f;
}
