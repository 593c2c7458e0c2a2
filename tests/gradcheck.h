/* Gradient checks by central finite differences.
 *
 * f builds a graph from leaf inputs and returns a tensor y. The check backpropagates a fixed
 * random cotangent R (so every output element matters), then compares each input's gradient
 * with (L(x + e) - L(x - e)) / 2e where L = sum(y * R) is summed in double. The forward is float32,
 * so the error measure is relative to the largest gradient of the input: a wrong sign or a
 * missing term gives O(1), rounding gives about 1e-4. */
#ifndef CF_GRADCHECK_H
#define CF_GRADCHECK_H

#include <string.h>
#include "test.h"

typedef cf_tensor *(*gc_fn)(cf_ctx *ctx, cf_tensor **in, void *arg);

typedef struct gc_input {
    float *data;      /* caller's memory, outside the arena */
    int    ndim, shape[CF_MAX_DIMS];
    int    check;     /* 0: a constant input (no gradient) */
} gc_input;

static double gc_eval(cf_ctx *ctx, gc_fn f, void *arg, gc_input *ins, int n, const float *R,
                      int64_t *out_numel) {
    cf_tensor *t[8];
    cf_ctx_begin(ctx, 0);
    for (int i = 0; i < n; i++) t[i] = cf_tensor_leaf(ctx, ins[i].data, ins[i].ndim, ins[i].shape, 0);
    int saved = ctx->grad_enabled;
    ctx->grad_enabled = 0;
    cf_tensor *y = f(ctx, t, arg);
    ctx->grad_enabled = saved;
    double s = 0;
    for (int64_t j = 0; j < y->numel; j++) s += (double)y->data[j] * R[j];
    if (out_numel) *out_numel = y->numel;
    return s;
}

/* returns the worst relative error over the checked inputs (also printed on failure) */
static double gradcheck(const char *name, gc_fn f, void *arg, gc_input *ins, int n, float eps, double tol) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 30, 1 << 14) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    /* analytic */
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t[8];
    for (int i = 0; i < n; i++) t[i] = cf_tensor_leaf(&ctx, ins[i].data, ins[i].ndim, ins[i].shape, ins[i].check);
    cf_tensor *y = f(&ctx, t, arg);
    float *R = malloc((size_t)y->numel * sizeof(float));
    t_fill_uniform(R, y->numel, -1, 1, 1234);
    cf_backward(&ctx, y, R);
    float *ga[8] = {0};
    for (int i = 0; i < n; i++) {
        if (!ins[i].check) continue;
        ga[i] = malloc((size_t)t[i]->numel * sizeof(float));
        if (t[i]->grad) memcpy(ga[i], t[i]->grad, (size_t)t[i]->numel * sizeof(float));
        else memset(ga[i], 0, (size_t)t[i]->numel * sizeof(float));
    }
    /* numeric */
    double worst = 0;
    for (int i = 0; i < n; i++) {
        if (!ins[i].check) continue;
        int64_t numel = 1;
        for (int d = 0; d < ins[i].ndim; d++) numel *= ins[i].shape[d];
        float *gn = malloc((size_t)numel * sizeof(float));
        for (int64_t j = 0; j < numel; j++) {
            float x0 = ins[i].data[j];
            float h = eps * (fabsf(x0) > 1 ? fabsf(x0) : 1);
            ins[i].data[j] = x0 + h;
            double fp = gc_eval(&ctx, f, arg, ins, n, R, NULL);
            ins[i].data[j] = x0 - h;
            double fm = gc_eval(&ctx, f, arg, ins, n, R, NULL);
            ins[i].data[j] = x0;
            gn[j] = (float)((fp - fm) / (2.0 * h));
        }
        double e = t_max_rel_err(ga[i], gn, numel, 1e-3);
        if (e > worst) worst = e;
        CHECK(e < tol, "gradcheck %s input %d: max rel err %.3g (tol %.1g)", name, i, e, tol);
        free(gn);
        free(ga[i]);
    }
    free(R);
    cf_ctx_free(&ctx);
    return worst;
}

#endif
