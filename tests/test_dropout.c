/* dropout: the kept fraction, the exact values (kept = x / (1-p), dropped = 0) against a
 * single-threaded recomputation of the mask from (seed, step, call), the same mask for the same
 * key and a different one for another call or step, the same bits at 1 and 2 threads, identity
 * with p = 0 or outside training, backward regenerating the mask, a gradient check with the mask
 * fixed, and a checkpointed region replaying its masks exactly. */
#include "gradcheck.h"

/* y and dx = g * dy/dx at the current thread count, for the call-th dropout of (seed, step) */
static void run(cf_ctx *ctx, const float *x, const float *g, int n, float p, uint64_t step, int call,
                float *y, float *dx) {
    cf_ctx_begin(ctx, step);
    cf_tensor *X = cf_tensor_leaf(ctx, (float *)x, 1, &n, 1);
    cf_tensor *Y = NULL;
    for (int c = 0; c <= call; c++) Y = cf_dropout(ctx, X, p);
    CHECK(ctx->rng_calls == (uint64_t)call + 1, "dropout: %llu calls counted, want %d",
          (unsigned long long)ctx->rng_calls, call + 1);
    cf_backward(ctx, Y, g);
    memcpy(y, Y->data, (size_t)n * sizeof(float));
    memcpy(dx, X->grad, (size_t)n * sizeof(float));
}

/* the mask recomputed here, one element after another: y and dx must match it bit for bit */
static int matches_reference(const float *x, const float *g, const float *y, const float *dx, int n,
                             float p, uint64_t seed, uint64_t step, uint64_t call, int64_t *kept) {
    uint64_t key = cf_rng_key(seed, step, call);
    float scale = 1.0f / (1.0f - p);
    int ok = 1;
    *kept = 0;
    for (int i = 0; i < n; i++) {
        int keep = cf_rng_uniform(key, (uint64_t)i) >= p;
        *kept += keep;
        ok &= y[i] == (keep ? x[i] * scale : 0.0f) && dx[i] == (keep ? g[i] * scale : 0.0f);
    }
    return ok;
}

static cf_tensor *f_dropout(cf_ctx *c, cf_tensor **in, void *arg) {
    /* two calls, so the second mask differs from the first within one evaluation */
    float p = *(float *)arg;
    return cf_mul(c, cf_dropout(c, in[0], p), cf_dropout(c, in[0], p));
}

/* a region with two dropouts and a nonlinearity, for checkpointing */
static cf_tensor *region(cf_ctx *ctx, void *closure, cf_tensor *x) {
    float p = *(float *)closure;
    cf_tensor *h = cf_gelu(ctx, cf_dropout(ctx, x, p));
    return cf_dropout(ctx, cf_mul(ctx, h, x), p);
}

static void check_checkpoint_replay(cf_ctx *ctx, const float *x, const float *g, int n, float p,
                                    float *dx_plain, float *dx_ckpt) {
    for (int ck = 0; ck < 2; ck++) {
        cf_ctx_begin(ctx, 3);
        cf_tensor *X = cf_tensor_leaf(ctx, (float *)x, 1, &n, 1);
        cf_tensor *h = cf_dropout(ctx, X, p);                   /* a call before the region */
        cf_tensor *y = ck ? cf_checkpoint(ctx, region, &p, h) : region(ctx, &p, h);
        y = cf_dropout(ctx, y, p);                              /* and one after it */
        cf_backward(ctx, y, g);
        memcpy(ck ? dx_ckpt : dx_plain, X->grad, (size_t)n * sizeof(float));
    }
    CHECK(!memcmp(dx_plain, dx_ckpt, (size_t)n * sizeof(float)),
          "dropout in a checkpointed region: gradients differ from the plain run");
}

int main(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 10) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 1234;

    int n = 1 << 20;
    float *x = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float));
    float *y1 = malloc((size_t)n * sizeof(float)), *d1 = malloc((size_t)n * sizeof(float));
    float *y2 = malloc((size_t)n * sizeof(float)), *d2 = malloc((size_t)n * sizeof(float));
    t_fill_uniform(x, n, -1, 1, 1);
    t_fill_uniform(g, n, -1, 1, 2);
    int saved = cf_num_threads();

    float ps[3] = {0.1f, 0.5f, 0.9f};
    for (int k = 0; k < 3; k++) {
        float p = ps[k];
        int64_t kept;
        cf_set_num_threads(1);
        run(&ctx, x, g, n, p, 7, 0, y1, d1);
        CHECK(matches_reference(x, g, y1, d1, n, p, ctx.seed, 7, 0, &kept),
              "dropout p=%g, 1 thread: output or gradient differs from the recomputed mask", p);
        double frac = (double)kept / n;
        /* binomial: the standard deviation of the fraction is below 5e-4 here */
        CHECK(fabs(frac - (1 - p)) < 3e-3, "dropout p=%g: kept fraction %.4f", p, frac);
        cf_set_num_threads(2);
        run(&ctx, x, g, n, p, 7, 0, y2, d2);
        CHECK(!memcmp(y1, y2, (size_t)n * sizeof(float)) && !memcmp(d1, d2, (size_t)n * sizeof(float)),
              "dropout p=%g: 1 and 2 threads differ", p);
        cf_set_num_threads(saved);
    }

    /* the same key gives the same mask; another call or another step gives another mask */
    {
        float p = 0.5f;
        int64_t kept;
        run(&ctx, x, g, n, p, 7, 0, y1, d1);
        run(&ctx, x, g, n, p, 7, 0, y2, d2);
        CHECK(!memcmp(y1, y2, (size_t)n * sizeof(float)), "dropout: same (seed, step, call) gave another mask");
        run(&ctx, x, g, n, p, 7, 1, y2, d2);
        CHECK(matches_reference(x, g, y2, d2, n, p, ctx.seed, 7, 1, &kept),
              "dropout: second call does not use call counter 1");
        int64_t same = 0;
        for (int i = 0; i < n; i++) same += (y1[i] == 0) == (y2[i] == 0);
        CHECK(same < n * 0.55, "dropout: masks of calls 0 and 1 agree on %lld of %d", (long long)same, n);
        run(&ctx, x, g, n, p, 8, 0, y2, d2);
        same = 0;
        for (int i = 0; i < n; i++) same += (y1[i] == 0) == (y2[i] == 0);
        CHECK(same < n * 0.55, "dropout: masks of steps 7 and 8 agree on %lld of %d", (long long)same, n);
        uint64_t s0 = ctx.seed;
        ctx.seed = s0 + 1;
        run(&ctx, x, g, n, p, 7, 0, y2, d2);
        ctx.seed = s0;
        same = 0;
        for (int i = 0; i < n; i++) same += (y1[i] == 0) == (y2[i] == 0);
        CHECK(same < n * 0.55, "dropout: masks of two seeds agree on %lld of %d", (long long)same, n);
    }

    /* identity: the input itself, no node, no call counted */
    {
        cf_ctx_begin(&ctx, 0);
        cf_tensor *X = cf_tensor_leaf(&ctx, x, 1, &n, 1);
        cf_tensor *Y = cf_dropout(&ctx, X, 0.0f);
        CHECK(Y == X && ctx.n_nodes == 0 && ctx.rng_calls == 0, "dropout p=0 must return x itself");
        ctx.training = 0;
        Y = cf_dropout(&ctx, X, 0.3f);
        CHECK(Y == X && ctx.n_nodes == 0 && ctx.rng_calls == 0, "dropout outside training must return x itself");
        ctx.training = 1;
        /* no gradient needed: no node, but the call still counts (a checkpointed forward) */
        cf_tensor *C = cf_tensor_leaf(&ctx, x, 1, &n, 0);
        Y = cf_dropout(&ctx, C, 0.3f);
        CHECK(Y != C && ctx.n_nodes == 0 && ctx.rng_calls == 1, "dropout without gradient: no node, one call");
    }

    check_checkpoint_replay(&ctx, x, g, 4096, 0.3f, y1, y2);

    /* finite differences with the mask fixed (each evaluation restarts at call 0 of step 0) */
    {
        float p = 0.3f;
        gc_input in[2] = {{x, 2, {6, 7}, 1}, {x, 3, {2, 3, 4}, 1}};
        for (int i = 0; i < 2; i++) gradcheck("dropout", f_dropout, &p, &in[i], 1, 1e-2f, 1e-2);
    }

    free(x); free(g); free(y1); free(d1); free(y2); free(d2);
    cf_ctx_free(&ctx);
    TEST_MAIN_END();
}
