/* Tensor headers and their memory, all from the context's arena. */
#include <stdio.h>
#include <string.h>
#include "cformer/core.h"

static cf_tensor *header(cf_ctx *ctx, int ndim, const int *shape) {
    CF_ASSERT(ndim >= 1 && ndim <= CF_MAX_DIMS, "tensor: %d dims (1..%d allowed)", ndim, CF_MAX_DIMS);
    cf_tensor *t = cf_arena_alloc(&ctx->arena, sizeof *t);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        CF_ASSERT(shape[i] >= 0, "tensor: negative dimension %d", shape[i]);
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
    return t;
}

cf_tensor *cf_tensor_new(cf_ctx *ctx, int ndim, const int *shape) {
    cf_tensor *t = header(ctx, ndim, shape);
    t->data = cf_arena_alloc(&ctx->arena, (size_t)t->numel * sizeof(float));
    return t;
}

cf_tensor *cf_tensor_1d(cf_ctx *ctx, int a) { return cf_tensor_new(ctx, 1, (int[]){a}); }
cf_tensor *cf_tensor_2d(cf_ctx *ctx, int a, int b) { return cf_tensor_new(ctx, 2, (int[]){a, b}); }
cf_tensor *cf_tensor_3d(cf_ctx *ctx, int a, int b, int c) { return cf_tensor_new(ctx, 3, (int[]){a, b, c}); }

cf_tensor *cf_tensor_view(cf_ctx *ctx, float *data, int ndim, const int *shape) {
    cf_tensor *t = header(ctx, ndim, shape);
    t->data = data;
    return t;
}

cf_tensor *cf_tensor_leaf(cf_ctx *ctx, float *data, int ndim, const int *shape, int requires_grad) {
    cf_tensor *t = cf_tensor_view(ctx, data, ndim, shape);
    t->requires_grad = requires_grad != 0;
    return t;
}

void *cf_scratch(cf_ctx *ctx, size_t n) { return cf_arena_alloc(&ctx->arena, n); }

float *cf_grad_nozero(cf_ctx *ctx, cf_tensor *t, int *fresh) {
    *fresh = 0;
    if (!t->grad) {
        /* the most recently freed buffer of this size, else fresh arena memory */
        int i = ctx->n_free - 1;
        while (i >= 0 && ctx->free_numel[i] != t->numel) i--;
        if (i >= 0) {
            t->grad = ctx->free_grad[i];
            ctx->n_free--;
            memmove(ctx->free_grad + i, ctx->free_grad + i + 1, (size_t)(ctx->n_free - i) * sizeof(float *));
            memmove(ctx->free_numel + i, ctx->free_numel + i + 1, (size_t)(ctx->n_free - i) * sizeof(int64_t));
        } else {
            t->grad = cf_arena_alloc(&ctx->arena, (size_t)t->numel * sizeof(float));
        }
        t->grad_owned = 1;
        *fresh = 1;
    }
    return t->grad;
}

float *cf_grad(cf_ctx *ctx, cf_tensor *t) {
    int fresh;
    float *g = cf_grad_nozero(ctx, t, &fresh);
    if (fresh) cf_zero_parallel(g, (size_t)t->numel * sizeof(float));
    return g;
}

void cf_grad_release(cf_ctx *ctx, cf_tensor *t) {
    if (!t->grad_owned || !t->grad || t->is_param || ctx->n_free == ctx->cap_free) return;
    ctx->free_grad[ctx->n_free] = t->grad;
    ctx->free_numel[ctx->n_free++] = t->numel;
    t->grad = NULL;
    t->grad_owned = 0;
}

void cf_grad_forget_above(cf_ctx *ctx, size_t mark) {
    int k = 0;
    for (int i = 0; i < ctx->n_free; i++)
        if ((char *)ctx->free_grad[i] < ctx->arena.base + mark) {
            ctx->free_grad[k] = ctx->free_grad[i];
            ctx->free_numel[k++] = ctx->free_numel[i];
        }
    ctx->n_free = k;
}

const char *cf_shape_str(const cf_tensor *t) {
    static _Thread_local char buf[4][64];
    static _Thread_local int slot;
    char *s = buf[slot++ & 3];
    int n = snprintf(s, 64, "(");
    for (int i = 0; i < t->ndim; i++) n += snprintf(s + n, 64 - n, i ? ", %d" : "%d", t->shape[i]);
    snprintf(s + n, 64 - n, ")");
    return s;
}

int cf_same_shape(const cf_tensor *a, const cf_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}
