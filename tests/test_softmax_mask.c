/* softmax and the masks: softmax against a double reference, rows summing to 1, a fully masked
 * row giving zeros forward and backward; causal and explicit (shared and batched) masks setting
 * exactly the right entries to -inf and passing gradient only through the kept ones; gradient
 * checks of softmax alone and of mask -> softmax (the masked outputs are -inf, so the mask is
 * checked through the softmax that always follows it). */
#include "gradcheck.h"

static cf_tensor *f_softmax(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_softmax(c, in[0]); }
static cf_tensor *f_causal_softmax(cf_ctx *c, cf_tensor **in, void *arg) {
    return cf_softmax(c, cf_mask_causal(c, in[0], *(int *)arg));
}
typedef struct { const uint8_t *keep; int batched; } explicit_arg;
static cf_tensor *f_explicit_softmax(cf_ctx *c, cf_tensor **in, void *arg) {
    const explicit_arg *e = arg;
    return cf_softmax(c, cf_mask_explicit(c, in[0], e->keep, e->batched));
}

/* x [.., tq, tk] entry at flat index idx: is it kept by the causal mask with this offset? */
static int causal_keeps(int64_t idx, int tq, int tk, int offset) {
    int j = (int)(idx % tk), i = (int)((idx / tk) % tq);
    return j <= i + offset;
}

static void check_softmax_values(cf_ctx *ctx, int rows, int cols) {
    int64_t n = (int64_t)rows * cols;
    float *x = malloc((size_t)n * sizeof(float));
    t_fill_uniform(x, n, -20, 20, 9);
    cf_ctx_begin(ctx, 0);
    cf_tensor *Y = cf_softmax(ctx, cf_tensor_leaf(ctx, x, 2, (int[]){rows, cols}, 0));
    double worst = 0, worst_sum = 0;
    for (int r = 0; r < rows; r++) {
        double mx = -INFINITY, s = 0, ys = 0;
        for (int j = 0; j < cols; j++) mx = fmax(mx, x[r * cols + j]);
        for (int j = 0; j < cols; j++) s += exp((double)x[r * cols + j] - mx);
        for (int j = 0; j < cols; j++) {
            double ref = exp((double)x[r * cols + j] - mx) / s, e = fabs(Y->data[r * cols + j] - ref);
            if (e > worst) worst = e;
            ys += Y->data[r * cols + j];
        }
        if (fabs(ys - 1) > worst_sum) worst_sum = fabs(ys - 1);
    }
    CHECK(worst < 1e-6, "softmax [%d, %d] vs double: max abs err %.3g", rows, cols, worst);
    CHECK(worst_sum < 1e-5, "softmax [%d, %d]: rows sum to 1 within %.3g", rows, cols, worst_sum);
    free(x);
}

/* a row of -inf: zeros out, zero gradient in, and the other rows untouched */
static void check_all_masked_row(cf_ctx *ctx) {
    float x[3 * 4], g[3 * 4];
    t_fill_uniform(x, 12, -1, 1, 4);
    t_fill_uniform(g, 12, -1, 1, 5);
    for (int j = 0; j < 4; j++) x[4 + j] = -INFINITY;
    x[8] = -INFINITY;   /* a partly masked row stays a distribution */
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 2, (int[]){3, 4}, 1);
    cf_tensor *Y = cf_softmax(ctx, X);
    cf_backward(ctx, Y, g);
    int zero = 1, finite = 1;
    for (int j = 0; j < 4; j++) zero &= Y->data[4 + j] == 0.0f && X->grad[4 + j] == 0.0f;
    for (int i = 0; i < 12; i++) finite &= isfinite(Y->data[i]) && isfinite(X->grad[i]);
    CHECK(zero, "softmax: an all -inf row must give zeros and zero gradient");
    CHECK(finite, "softmax: NaN or inf in output or gradient with -inf inputs");
    CHECK(Y->data[8] == 0.0f && fabsf(Y->data[9] + Y->data[10] + Y->data[11] - 1.0f) < 1e-6f,
          "softmax: a partly masked row must put 0 on -inf and sum to 1");
}

/* causal mask on [2, 3, tq, tk] with an offset: values and gradients entry by entry */
static void check_causal(cf_ctx *ctx, int tq, int tk, int offset) {
    int shape[4] = {2, 3, tq, tk};
    int64_t n = 6 * (int64_t)tq * tk;
    float *x = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float));
    t_fill_uniform(x, n, -1, 1, 6);
    t_fill_uniform(g, n, -1, 1, 7);
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 4, shape, 1);
    cf_tensor *Y = cf_mask_causal(ctx, X, offset);
    cf_backward(ctx, Y, g);
    int ok_y = 1, ok_g = 1;
    for (int64_t i = 0; i < n; i++) {
        int keep = causal_keeps(i, tq, tk, offset);
        ok_y &= keep ? Y->data[i] == x[i] : Y->data[i] == -INFINITY;
        ok_g &= X->grad[i] == (keep ? g[i] : 0.0f);
    }
    CHECK(ok_y, "mask_causal tq=%d tk=%d offset=%d: wrong entries set to -inf", tq, tk, offset);
    CHECK(ok_g, "mask_causal tq=%d tk=%d offset=%d: gradient must pass kept entries only", tq, tk, offset);
    free(x); free(g);
}

/* explicit mask: x [2, 3, 4, 5]; keep [4, 5] shared or [2, 4, 5] batched (shared over dim 1) */
static void check_explicit(cf_ctx *ctx, int batched) {
    int shape[4] = {2, 3, 4, 5};
    float x[120], g[120];
    uint8_t keep[2 * 20];
    t_fill_uniform(x, 120, -1, 1, 8);
    t_fill_uniform(g, 120, -1, 1, 9);
    cf_rng r;
    cf_rng_seed(&r, 10);
    for (int i = 0; i < 40; i++) keep[i] = cf_rng_float(&r) < 0.6f ? (uint8_t)(1 + i % 3) : 0;
    uint8_t keep_copy[40];
    memcpy(keep_copy, keep, sizeof keep);
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 4, shape, 1);
    cf_tensor *Y = cf_mask_explicit(ctx, X, keep, batched);
    memset(keep, 0xff, sizeof keep);   /* the op must have kept its own copy for backward */
    cf_backward(ctx, Y, g);
    int ok_y = 1, ok_g = 1;
    for (int i = 0; i < 120; i++) {
        int b = i / 60, ij = i % 20;
        int k = keep_copy[(batched ? b * 20 : 0) + ij] != 0;
        ok_y &= k ? Y->data[i] == x[i] : Y->data[i] == -INFINITY;
        ok_g &= X->grad[i] == (k ? g[i] : 0.0f);
    }
    CHECK(ok_y, "mask_explicit batched=%d: wrong entries set to -inf", batched);
    CHECK(ok_g, "mask_explicit batched=%d: gradient must pass kept entries only", batched);
}

/* mask -> softmax with whole rows masked: zeros out and zero gradient, no NaN */
static void check_masked_softmax_rows(cf_ctx *ctx) {
    float x[2 * 3 * 5], g[2 * 3 * 5];
    t_fill_uniform(x, 30, -1, 1, 11);
    t_fill_uniform(g, 30, -1, 1, 12);
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 3, (int[]){2, 3, 5}, 1);
    /* offset -2: query 0 and 1 see no key at all */
    cf_tensor *Y = cf_softmax(ctx, cf_mask_causal(ctx, X, -2));
    cf_backward(ctx, Y, g);
    int ok = 1;
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++) {
                int idx = (b * 3 + i) * 5 + j;
                if (j > i - 2) ok &= Y->data[idx] == 0.0f && X->grad[idx] == 0.0f;
                ok &= isfinite(X->grad[idx]);
            }
    CHECK(ok, "causal mask -> softmax: masked entries must be 0 with zero gradient, no NaN");
}

int main(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 10) == 0, "%s", cf_error_msg());

    check_softmax_values(&ctx, 7, 13);
    check_softmax_values(&ctx, 300, 257);   /* threaded path */
    check_all_masked_row(&ctx);

    for (int off = -2; off <= 3; off++) check_causal(&ctx, 4, 6, off);
    check_causal(&ctx, 5, 5, 0);
    check_causal(&ctx, 64, 128, 64);        /* threaded path, queries at the end of a memory */
    check_explicit(&ctx, 0);
    check_explicit(&ctx, 1);
    check_masked_softmax_rows(&ctx);

    float x[2 * 3 * 4 * 6];
    t_fill_uniform(x, 144, -2, 2, 13);
    gc_input s1[1] = {{x, 1, {6}, 1}}, s2[1] = {{x, 2, {4, 6}, 1}}, s3[1] = {{x, 3, {2, 4, 6}, 1}};
    gc_input s4[1] = {{x, 4, {2, 3, 4, 6}, 1}};
    gradcheck("softmax 1-D", f_softmax, NULL, s1, 1, 1e-2f, 1e-2);
    gradcheck("softmax 2-D", f_softmax, NULL, s2, 1, 1e-2f, 1e-2);
    gradcheck("softmax 3-D", f_softmax, NULL, s3, 1, 1e-2f, 1e-2);
    gradcheck("softmax 4-D", f_softmax, NULL, s4, 1, 1e-2f, 1e-2);
    int offs[3] = {0, 2, -1};
    for (int i = 0; i < 3; i++) {
        char name[48];
        snprintf(name, sizeof name, "causal mask offset %d -> softmax", offs[i]);
        gradcheck(name, f_causal_softmax, &offs[i], s3, 1, 1e-2f, 1e-2);
    }
    uint8_t keep[2 * 4 * 6];
    cf_rng r;
    cf_rng_seed(&r, 14);
    for (int i = 0; i < 48; i++) keep[i] = cf_rng_float(&r) < 0.7f;
    explicit_arg shared = {keep, 0}, batched = {keep, 1};
    gradcheck("explicit mask shared -> softmax", f_explicit_softmax, &shared, s4, 1, 1e-2f, 1e-2);
    gradcheck("explicit mask batched -> softmax", f_explicit_softmax, &batched, s4, 1, 1e-2f, 1e-2);
    gradcheck("explicit mask batched 3-D -> softmax", f_explicit_softmax, &batched, s3, 1, 1e-2f, 1e-2);

    cf_ctx_free(&ctx);
    TEST_MAIN_END();
}
