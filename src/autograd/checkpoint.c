/* Gradient checkpointing (docs/architecture.md section 5): a region runs forward without recording and keeps
 * only its input; backward recomputes it with recording on and backpropagates through the fresh
 * nodes, then gives their memory back. */
#include <string.h>
#include "cformer/core.h"

typedef struct region {
    cf_region_fn fn;
    void        *closure;
    uint64_t     rng_calls;   /* dropout counter at the region's start, to replay its masks */
} region;

cf_tensor *cf_checkpoint(cf_ctx *ctx, cf_region_fn fn, void *closure, cf_tensor *x) {
    if (!cf_needs_grad(ctx, 1, &x)) return fn(ctx, closure, x);
    /* the record sits below the mark so that it survives the rewind */
    region *r = cf_arena_alloc(&ctx->arena, sizeof *r);
    r->rng_calls = ctx->rng_calls;
    size_t mark = cf_arena_mark(&ctx->arena);
    ctx->grad_enabled = 0;
    cf_tensor *y = fn(ctx, closure, x);
    ctx->grad_enabled = 1;
    /* Keep only y: move it down to the mark over the region's intermediates. Allocation order
     * (header, then data) puts the new data at or below y's when y was made in the region, so
     * memmove is safe; a y outside the region (x itself, say) does not overlap at all. */
    int ndim = y->ndim, shape[CF_MAX_DIMS];
    memcpy(shape, y->shape, sizeof shape);
    float *src = y->data;
    cf_arena_rewind(&ctx->arena, mark);
    cf_tensor *out = cf_tensor_new(ctx, ndim, shape);
    int inside = (char *)src >= ctx->arena.base + mark && (char *)src < ctx->arena.base + ctx->arena.cap;
    CF_ASSERT(!inside || (char *)out->data <= (char *)src, "checkpoint: region output below its own start");
    memmove(out->data, src, (size_t)out->numel * sizeof(float));
    r->fn = fn;
    r->closure = closure;
    cf_node *n = cf_record(ctx, CF_OP_CHECKPOINT, out, 1, &x);
    n->ptr = r;
    return out;
}

void cf_checkpoint_backward(cf_ctx *ctx, cf_node *n) {
    const region *r = n->ptr;
    cf_tensor *x = n->in[0];
    cf_grad(ctx, x);                        /* x's gradient must outlive the rewind below */
    uint64_t calls = ctx->rng_calls;
    size_t mark = cf_arena_mark(&ctx->arena);
    int first = ctx->n_nodes;
    ctx->rng_calls = r->rng_calls;
    if (ctx->prof) {
        ctx->prof->dir = CF_PROF_RECOMPUTE;
        ctx->prof->last = cf_prof_now();
    }
    cf_tensor *y = r->fn(ctx, r->closure, x);
    if (ctx->prof) ctx->prof->dir = CF_PROF_BACKWARD;
    CF_ASSERT(cf_same_shape(y, n->out), "checkpoint: recomputed output %s differs from %s",
              cf_shape_str(y), cf_shape_str(n->out));
    y->grad = n->out->grad;
    cf_backward_range(ctx, first, ctx->n_nodes);
    ctx->n_nodes = first;
    cf_grad_forget_above(ctx, mark);
    cf_arena_rewind(&ctx->arena, mark);
    ctx->rng_calls = calls;
}
