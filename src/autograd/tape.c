/* The tape: nodes in execution order. Recording is one append; backward is one reverse walk. */
#include <stdlib.h>
#include <string.h>
#include "cformer/core.h"

int cf_ctx_init(cf_ctx *ctx, size_t arena_bytes, int max_nodes) {
    memset(ctx, 0, sizeof *ctx);
    if (cf_arena_init(&ctx->arena, arena_bytes)) return -1;
    ctx->cap_nodes = max_nodes > 0 ? max_nodes : 1 << 16;
    ctx->tape = malloc((size_t)ctx->cap_nodes * sizeof *ctx->tape);
    if (!ctx->tape) {
        cf_arena_free(&ctx->arena);
        return cf_set_error("cannot allocate a tape of %d nodes", ctx->cap_nodes);
    }
    ctx->cap_free = 4096;
    ctx->free_grad = malloc((size_t)ctx->cap_free * sizeof *ctx->free_grad);
    ctx->free_numel = malloc((size_t)ctx->cap_free * sizeof *ctx->free_numel);
    if (!ctx->free_grad || !ctx->free_numel) {
        cf_ctx_free(ctx);
        return cf_set_error("cannot allocate the gradient free list");
    }
    ctx->grad_enabled = 1;
    return 0;
}

void cf_ctx_free(cf_ctx *ctx) {
    cf_rc_free(ctx);
    cf_arena_free(&ctx->arena);
    free(ctx->tape);
    free(ctx->free_grad);
    free(ctx->free_numel);
    memset(ctx, 0, sizeof *ctx);
}

void cf_ctx_begin(cf_ctx *ctx, uint64_t step) {
    cf_arena_reset(&ctx->arena);
    ctx->n_nodes = 0;
    ctx->n_free = 0;
    ctx->step = step;
    ctx->rng_calls = 0;
}

int cf_needs_grad(const cf_ctx *ctx, int n_in, cf_tensor **in) {
    if (!ctx->grad_enabled) return 0;
    for (int i = 0; i < n_in; i++)
        if (in[i] && in[i]->requires_grad) return 1;
    return 0;
}

cf_node *cf_record(cf_ctx *ctx, cf_op_kind op, cf_tensor *out, int n_in, cf_tensor **in) {
    CF_ASSERT(n_in <= CF_NODE_MAX_IN, "%s: %d inputs (max %d)", cf_op_table[op].name, n_in, CF_NODE_MAX_IN);
    /* recorded or not, the node (or the checkpointed region that runs this op) takes index n_nodes */
    if (ctx->hook) ctx->hook->read(ctx->hook, ctx->n_nodes, n_in, in);
    if (ctx->rc) cf_rc_note(ctx, op, out, n_in, in);
    if (!cf_needs_grad(ctx, n_in, in)) {
        if (ctx->prof) cf_prof_forward(ctx->prof, op, out, n_in, in, NULL);
        return NULL;
    }
    CF_ASSERT(ctx->n_nodes < ctx->cap_nodes, "tape full at %d nodes", ctx->cap_nodes);
    cf_node *n = &ctx->tape[ctx->n_nodes++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++) n->in[i] = in[i];
    n->out = out;
    out->requires_grad = 1;
    if (ctx->prof) cf_prof_forward(ctx->prof, op, out, n_in, in, n);
    return n;
}

void cf_backward_range(cf_ctx *ctx, int from, int to) {
    for (int i = to - 1; i >= from; i--) {
        cf_node *n = &ctx->tape[i];
        if (!n->out->grad) continue;          /* nothing downstream used this output */
        if (ctx->hook) ctx->hook->node(ctx->hook, n, i, 0);
        if (ctx->prof) {
            cf_prof *p = ctx->prof;
            cf_prof_mark m;
            cf_prof_begin(p, &m);
            p->dir = CF_PROF_BACKWARD;
            cf_op_table[n->op].backward(ctx, n);
            cf_prof_backward(p, n, &m);
        } else {
            cf_op_table[n->op].backward(ctx, n);
        }
        cf_grad_release(ctx, n->out);         /* every consumer of out ran before its producer */
        if (ctx->hook) ctx->hook->node(ctx->hook, n, i, 1);
    }
}

void cf_backward(cf_ctx *ctx, cf_tensor *out, const float *seed) {
    CF_ASSERT(out->requires_grad, "backward: the output does not depend on anything that needs a gradient");
    float *g = cf_grad(ctx, out);
    for (int64_t i = 0; i < out->numel; i++) g[i] += seed ? seed[i] : 1.0f;
    cf_backward_range(ctx, 0, ctx->n_nodes);
}
