/* Gradient checkpointing (docs/architecture.md section 5): a region runs forward without recording and keeps
 * only its input; backward recomputes it with recording on and backpropagates through the fresh
 * nodes, then gives their memory back. Selective recompute also keeps what is cheap to store and
 * dear to recompute, and the replay computes only what backward reads. */
#include <stdlib.h>
#include <string.h>
#include "cformer/core.h"

/* one op of a selective region, as its forward ran */
typedef struct rc_entry {
    cf_op_kind op;
    int        n_in;
    cf_tensor *in[CF_NODE_MAX_IN], *out;   /* identities only once the region has ended */
    float     *data;               /* out's values and their size, read while the region runs */
    size_t     bytes;
    void      *saved;
    size_t     saved_bytes;
} rc_entry;

/* what the replay does with op i of a region (arena memory beside the region's output) */
typedef struct rc_item {
    cf_op_kind op;
    int        action;             /* CF_RC_COMPUTE, CF_RC_SKIPPED, CF_RC_KEPT */
    float     *data;               /* CF_RC_KEPT: the kept output */
    void      *saved;              /* CF_RC_KEPT: the kept state, or NULL */
} rc_item;

enum { RC_IDLE, RC_RECORD, RC_REPLAY };

/* The context's selective-recompute state: the entries of the region running forward (grown on
 * the first step and kept), or the plan being replayed. */
struct cf_rc {
    int       mode;
    rc_entry *e;
    int       n, cap;
    int      *need;                /* analysis scratch, cap entries */
    const rc_item *plan;
    int       n_plan, at;
    int64_t   counts[3];           /* replayed ops by action (cf_rc_counts) */
    struct keep *k;                /* a region's kept blocks and its plan, before they go to the arena */
    rc_item  *p;
    int       kcap;
};

typedef struct region {
    cf_region_fn fn;
    void        *closure;
    uint64_t     rng_calls;   /* dropout counter at the region's start, to replay its masks */
    const rc_item *plan;      /* selective: one item per op of the region; NULL: recompute all */
    int          n_plan;
} region;

/* ---- the calls of ops (core.h) ---------------------------------------------------------------- */

void cf_rc_note(cf_ctx *ctx, cf_op_kind op, cf_tensor *out, int n_in, cf_tensor **in) {
    struct cf_rc *rc = ctx->rc;
    if (rc->mode == RC_IDLE) return;
    if (rc->mode == RC_REPLAY) {
        CF_ASSERT(rc->at < rc->n_plan && rc->plan[rc->at].op == op,
                  "selective recompute: op %d of the replay is %s, the region's forward ran %s", rc->at,
                  cf_op_table[op].name, rc->at < rc->n_plan ? cf_op_table[rc->plan[rc->at].op].name : "nothing");
        rc->counts[rc->plan[rc->at].action]++;
        rc->at++;
        return;
    }
    if (rc->n == rc->cap) {
        rc->cap = rc->cap ? 2 * rc->cap : 256;
        rc->e = realloc(rc->e, (size_t)rc->cap * sizeof *rc->e);
        rc->need = realloc(rc->need, (size_t)rc->cap * sizeof *rc->need);
        CF_ASSERT(rc->e && rc->need, "selective recompute: cannot grow the region's op list to %d", rc->cap);
    }
    rc_entry *e = &rc->e[rc->n++];
    memset(e, 0, sizeof *e);
    e->op = op;
    e->n_in = n_in;
    for (int i = 0; i < n_in; i++) e->in[i] = in[i];
    e->out = out;
    e->data = out->data;
    e->bytes = (size_t)out->numel * sizeof(float);
}

void cf_rc_free(cf_ctx *ctx) {
    struct cf_rc *rc = ctx->rc;
    if (!rc) return;
    free(rc->e);
    free(rc->need);
    free(rc->k);
    free(rc->p);
    free(rc);
    ctx->rc = NULL;
}

int cf_rc_action(cf_ctx *ctx, float **data, void **saved) {
    struct cf_rc *rc = ctx->rc;
    if (!rc || rc->mode != RC_REPLAY || rc->at >= rc->n_plan) return CF_RC_COMPUTE;
    const rc_item *it = &rc->plan[rc->at];
    *data = it->data;
    *saved = it->saved;
    if (it->action != CF_RC_COMPUTE && ctx->prof) ctx->prof->idle_op = 1;
    return it->action;
}

void cf_rc_counts(const cf_ctx *ctx, int64_t counts[3]) {
    for (int i = 0; i < 3; i++) counts[i] = ctx->rc ? ctx->rc->counts[i] : 0;
}

int cf_rc_keeping(const cf_ctx *ctx) {
    return ctx->rc && ctx->rc->mode == RC_RECORD;
}

void cf_rc_keep_saved(cf_ctx *ctx, void *saved, size_t bytes) {
    struct cf_rc *rc = ctx->rc;
    if (!rc || rc->mode != RC_RECORD || !rc->n) return;
    rc->e[rc->n - 1].saved = saved;
    rc->e[rc->n - 1].saved_bytes = bytes;
}

/* ---- regions ------------------------------------------------------------------------------------ */

static unsigned reads_of(cf_op_kind op) {
    unsigned f = cf_op_table[op].recompute;
    return f & CF_RC_SET ? f & (CF_RC_IN | CF_RC_OUT) : CF_RC_IN | CF_RC_OUT;
}

/* Which ops the replay must compute, walking the region backwards from its output, whose values
 * nobody reads (its gradient comes from outside). An output is needed when a later op that runs
 * reads it, or when its own backward or a consumer's backward reads it. A needed output of a
 * CF_RC_KEEP op is kept; one nobody needs is skipped when its op keeps no state (CF_RC_SKIP). Any
 * other op runs, and needs its inputs when its output is needed or when its backward reads them
 * (a run on garbage inputs is harmless when neither holds). */
static void plan_region(struct cf_rc *rc, rc_item *plan) {
    memset(rc->need, 0, (size_t)rc->n * sizeof *rc->need);
    for (int j = rc->n - 1; j >= 0; j--) {
        const rc_entry *e = &rc->e[j];
        unsigned f = cf_op_table[e->op].recompute, reads = reads_of(e->op);
        int needed = rc->need[j] || (reads & CF_RC_OUT);
        int action = needed && (f & CF_RC_KEEP) ? CF_RC_KEPT : !needed && (f & CF_RC_SKIP) ? CF_RC_SKIPPED : CF_RC_COMPUTE;
        plan[j] = (rc_item){e->op, action, NULL, NULL};
        int inputs = (action == CF_RC_COMPUTE && needed) || (reads & CF_RC_IN);
        if (!inputs) continue;
        for (int i = 0; i < e->n_in; i++) {
            if (!e->in[i]) continue;
            for (int k = j - 1; k >= 0; k--)
                if (rc->e[k].out == e->in[i]) { rc->need[k] = 1; break; }
        }
    }
}

/* a block of arena bytes that must survive the rewind to the region's mark */
typedef struct keep { char *src; size_t bytes; char *dst; int outside; } keep;

/* blocks made in the region first, by address; then blocks from outside it (x itself, say) */
static int cmp_keep(const void *a, const void *b) {
    const keep *x = a, *y = b;
    if (x->outside != y->outside) return x->outside - y->outside;
    return (x->src > y->src) - (x->src < y->src);
}

static keep *find(keep *k, int n, const void *src) {
    for (int i = 0; i < n; i++)
        if (k[i].src == src) return &k[i];
    return NULL;
}

static void grow(struct cf_rc *rc, int n) {
    if (n <= rc->kcap) return;
    rc->kcap = n + n / 2 + 16;
    rc->k = realloc(rc->k, (size_t)rc->kcap * sizeof *rc->k);
    rc->p = realloc(rc->p, (size_t)rc->kcap * sizeof *rc->p);
    CF_ASSERT(rc->k && rc->p, "checkpoint: cannot grow the list of kept blocks to %d", rc->kcap);
}

static cf_tensor *checkpoint(cf_ctx *ctx, cf_region_fn fn, void *closure, cf_tensor *x, int selective) {
    if (!cf_needs_grad(ctx, 1, &x)) return fn(ctx, closure, x);
    /* the record sits below the mark so that it survives the rewind */
    region *r = cf_arena_alloc(&ctx->arena, sizeof *r);
    memset(r, 0, sizeof *r);
    r->rng_calls = ctx->rng_calls;
    if (!ctx->rc) ctx->rc = cf_xcalloc(1, sizeof *ctx->rc);
    struct cf_rc *rc = ctx->rc;
    CF_ASSERT(rc->mode == RC_IDLE, "checkpoint: regions do not nest");
    rc->n = 0;
    if (selective) rc->mode = RC_RECORD;
    size_t mark = cf_arena_mark(&ctx->arena);
    ctx->grad_enabled = 0;
    cf_tensor *y = fn(ctx, closure, x);
    ctx->grad_enabled = 1;
    rc->mode = RC_IDLE;
    int n_ops = rc->n, n_keep = 0;
    grow(rc, 1 + 2 * n_ops);
    rc_item *plan = rc->p;
    keep *k = rc->k;
    const char *lo = ctx->arena.base + mark, *hi = ctx->arena.base + ctx->arena.cap;
#define KEEP_BLOCK(ptr, nbytes) do {                                                              \
        char *s_ = (char *)(ptr);                                                                 \
        if (!find(k, n_keep, s_)) k[n_keep++] = (keep){s_, (nbytes), NULL, !(s_ >= lo && s_ < hi)}; \
    } while (0)
    /* the region's tensor headers are overwritten by the moves below: what is needed of y first */
    float *ydata = y->data;
    int ndim = y->ndim, shape[CF_MAX_DIMS];
    memcpy(shape, y->shape, sizeof shape);
    KEEP_BLOCK(ydata, (size_t)y->numel * sizeof(float));
    if (n_ops) {
        plan_region(rc, plan);
        for (int j = 0; j < n_ops; j++) {
            if (plan[j].action != CF_RC_KEPT) continue;
            const rc_entry *e = &rc->e[j];
            KEEP_BLOCK(e->data, e->bytes);
            if (e->saved) KEEP_BLOCK(e->saved, e->saved_bytes);
        }
    }
#undef KEEP_BLOCK
    /* Keep only those: move the region's blocks down to the mark over its intermediates, in
     * address order, so that each lands at or below where it was and never on a block not yet
     * moved (allocation order guarantees it); then copy the blocks from outside the region. */
    qsort(k, (size_t)n_keep, sizeof *k, cmp_keep);
    cf_arena_rewind(&ctx->arena, mark);
    for (int i = 0; i < n_keep; i++) {
        k[i].dst = cf_arena_alloc(&ctx->arena, k[i].bytes ? k[i].bytes : 1);
        CF_ASSERT(k[i].outside || k[i].dst <= k[i].src, "checkpoint: a kept block moved above its own start");
        memmove(k[i].dst, k[i].src, k[i].bytes);
    }
    if (n_ops) {
        for (int j = 0; j < n_ops; j++)
            if (plan[j].action == CF_RC_KEPT) {
                plan[j].data = (float *)find(k, n_keep, rc->e[j].data)->dst;
                plan[j].saved = rc->e[j].saved ? find(k, n_keep, rc->e[j].saved)->dst : NULL;
            }
        rc_item *p = cf_arena_alloc(&ctx->arena, (size_t)n_ops * sizeof *p);
        memcpy(p, plan, (size_t)n_ops * sizeof *p);
        r->plan = p;
        r->n_plan = n_ops;
    }
    cf_tensor *out = cf_tensor_view(ctx, (float *)find(k, n_keep, ydata)->dst, ndim, shape);
    r->fn = fn;
    r->closure = closure;
    cf_node *n = cf_record(ctx, CF_OP_CHECKPOINT, out, 1, &x);
    n->ptr = r;
    return out;
}

cf_tensor *cf_checkpoint(cf_ctx *ctx, cf_region_fn fn, void *closure, cf_tensor *x) {
    return checkpoint(ctx, fn, closure, x, 0);
}

cf_tensor *cf_checkpoint_selective(cf_ctx *ctx, cf_region_fn fn, void *closure, cf_tensor *x) {
    return checkpoint(ctx, fn, closure, x, 1);
}

void cf_checkpoint_backward(cf_ctx *ctx, cf_node *n) {
    const region *r = n->ptr;
    cf_tensor *x = n->in[0];
    cf_grad(ctx, x);                        /* x's gradient must outlive the rewind below */
    uint64_t calls = ctx->rng_calls;
    size_t mark = cf_arena_mark(&ctx->arena);
    int first = ctx->n_nodes;
    ctx->rng_calls = r->rng_calls;
    if (ctx->prof) cf_prof_resume(ctx->prof, CF_PROF_RECOMPUTE);
    struct cf_rc *rc = r->plan ? ctx->rc : NULL;
    if (rc) {
        rc->mode = RC_REPLAY;
        rc->plan = r->plan;
        rc->n_plan = r->n_plan;
        rc->at = 0;
    }
    cf_tensor *y = r->fn(ctx, r->closure, x);
    if (rc) {
        CF_ASSERT(rc->at == rc->n_plan, "selective recompute: the replay ran %d ops, the region's forward %d",
                  rc->at, rc->n_plan);
        rc->mode = RC_IDLE;
    }
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
