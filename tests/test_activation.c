/* gelu, relu, elu: forward against the formulas in double (gelu over a dense sweep, which also
 * bounds the error of the rational tanh), gradient checks on inputs kept away from the kinks,
 * and the backward at large sizes (vectorised, threaded) against the derivative in double. */
#include "gradcheck.h"

static double gelu_ref(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
static double gelu_grad_ref(double x) {
    double c = sqrt(2.0 / M_PI), t = tanh(c * (x + 0.044715 * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
}

static cf_tensor *f_gelu(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_gelu(c, in[0]); }
static cf_tensor *f_relu(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_relu(c, in[0]); }
static cf_tensor *f_elu(cf_ctx *c, cf_tensor **in, void *arg) { return cf_elu(c, in[0], *(float *)arg); }

/* values in [-3, 3] at least 0.1 away from 0, where relu and elu have kinks */
static void fill_off_kink(float *x, int n, uint64_t seed) {
    t_fill_uniform(x, n, -3, 3, seed);
    for (int i = 0; i < n; i++) x[i] = x[i] < 0 ? x[i] - 0.1f : x[i] + 0.1f;
}

/* one op's output and input gradients (dy = 1 + i / n) on the n values of x (and b for glu) */
static void run_op(cf_ctx *ctx, int op, const float *x, const float *b, int n, float *y, float *dx, float *db) {
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, (float *)x, 1, (int[]){n}, 1);
    cf_tensor *Bt = cf_tensor_leaf(ctx, (float *)b, 1, (int[]){n}, 1);
    cf_tensor *Y = op == 0 ? cf_gelu(ctx, X) : op == 1 ? cf_relu(ctx, X) : op == 2 ? cf_elu(ctx, X, 1.0f)
                 : op == 3 ? cf_silu(ctx, X) : cf_glu(ctx, X, Bt, (cf_act_kind)(op - 4));
    float *seed = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) seed[i] = 1.0f + (float)(i % 97) / 97.0f;
    X->grad = NULL;
    Bt->grad = NULL;
    cf_backward(ctx, Y, seed);
    memcpy(y, Y->data, (size_t)n * sizeof(float));
    memcpy(dx, X->grad, (size_t)n * sizeof(float));
    if (op >= 4) memcpy(db, Bt->grad, (size_t)n * sizeof(float));
    free(seed);
}

/* Below the parallel threshold the loops run in a serial region: they must stay vectorised
 * (`if (parallel: ...)`) and give the bits of the threaded path on the same values. */
static void check_serial_path(cf_ctx *ctx) {
    int big = 1 << 17, small = 1000;
    float *x = malloc((size_t)big * sizeof(float)), *b = malloc((size_t)big * sizeof(float));
    float *y1 = malloc((size_t)big * 3 * sizeof(float)), *y2 = malloc((size_t)small * 3 * sizeof(float));
    fill_off_kink(x, big, 41);
    t_fill_uniform(b, big, -2, 2, 43);
    for (int i = 0; i < small; i++) x[i] = (float)(i - 500) / 40.0f;   /* both sides of every branch */
    const char *names[] = {"gelu", "relu", "elu", "silu", "glu-gelu", "glu-relu", "glu-silu"};
    for (int op = 0; op < 7; op++) {
        run_op(ctx, op, x, b, big, y1, y1 + big, y1 + 2 * big);
        run_op(ctx, op, x, b, small, y2, y2 + small, y2 + 2 * small);
        int same = 1;
        for (int k = 0; k < (op >= 4 ? 3 : 2); k++)
            same &= !memcmp(y1 + (size_t)k * big, y2 + (size_t)k * small, (size_t)small * sizeof(float));
        CHECK(same, "%s: the serial region's values or gradients differ from the threaded path's", names[op]);
    }
    free(x); free(b); free(y1); free(y2);
}

int main(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 10) == 0, "%s", cf_error_msg());

    /* gelu forward over a dense sweep of [-12, 12], which spans the rational tanh's clamp at 7.9
     * and its small-argument branch: absolute error everywhere, relative error for |x| < 1 where
     * the output is small */
    {
        int n = 1 << 20;
        float *x = malloc((size_t)n * sizeof(float));
        for (int i = 0; i < n; i++) x[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
        cf_ctx_begin(&ctx, 0);
        cf_tensor *X = cf_tensor_leaf(&ctx, x, 1, (int[]){n}, 0);
        cf_tensor *Y = cf_gelu(&ctx, X);
        double worst_abs = 0, worst_rel = 0;
        for (int i = 0; i < n; i++) {
            double r = gelu_ref(x[i]), e = fabs(Y->data[i] - r);
            if (e > worst_abs) worst_abs = e;
            if (fabs(x[i]) < 1 && fabs(r) > 1e-30 && e / fabs(r) > worst_rel) worst_rel = e / fabs(r);
        }
        CHECK(worst_abs < 2e-6, "gelu forward sweep: max abs err %.3g", worst_abs);
        CHECK(worst_rel < 2e-6, "gelu forward near 0: max rel err %.3g", worst_rel);
        free(x);
    }

    /* tiny and denormal inputs: tanh's small-argument branch must give x, not 0 */
    {
        float x[4] = {1e-5f, -3e-4f, 1e-40f, -1e-38f};
        cf_ctx_begin(&ctx, 0);
        cf_tensor *Y = cf_gelu(&ctx, cf_tensor_leaf(&ctx, x, 1, (int[]){4}, 0));
        int ok = 1;
        for (int i = 0; i < 4; i++) ok &= fabs(Y->data[i] - gelu_ref(x[i])) <= 1e-6 * fabs(gelu_ref(x[i])) + 1e-45;
        CHECK(ok, "gelu on tiny inputs: %g %g %g %g", Y->data[0], Y->data[1], Y->data[2], Y->data[3]);
    }

    /* backward at a size that takes the threaded path, against the derivative in double */
    {
        int n = 100000;
        float *x = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float));
        t_fill_uniform(x, n, -6, 6, 7);
        t_fill_uniform(g, n, -1, 1, 8);
        cf_ctx_begin(&ctx, 0);
        cf_tensor *X = cf_tensor_leaf(&ctx, x, 2, (int[]){100, 1000}, 1);
        cf_tensor *Y = cf_gelu(&ctx, X);
        cf_backward(&ctx, Y, g);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            double e = fabs(X->grad[i] - g[i] * gelu_grad_ref(x[i]));
            if (e > worst) worst = e;
        }
        CHECK(worst < 1e-5, "gelu backward vs formula: max abs err %.3g", worst);

        float alpha = 0.7f;
        cf_ctx_begin(&ctx, 0);
        X = cf_tensor_leaf(&ctx, x, 2, (int[]){100, 1000}, 1);
        Y = cf_elu(&ctx, X, alpha);
        cf_backward(&ctx, Y, g);
        double wf = 0, wb = 0;
        for (int i = 0; i < n; i++) {
            double xi = x[i], y = xi > 0 ? xi : alpha * expm1(xi), d = xi > 0 ? 1 : alpha * exp(xi);
            if (fabs(Y->data[i] - y) > wf) wf = fabs(Y->data[i] - y);
            if (fabs(X->grad[i] - g[i] * d) > wb) wb = fabs(X->grad[i] - g[i] * d);
        }
        CHECK(wf < 1e-6 && wb < 1e-6, "elu vs formula: forward %.3g, backward %.3g", wf, wb);

        cf_ctx_begin(&ctx, 0);
        X = cf_tensor_leaf(&ctx, x, 2, (int[]){100, 1000}, 1);
        Y = cf_relu(&ctx, X);
        cf_backward(&ctx, Y, g);
        int ok = 1;
        for (int i = 0; i < n; i++)
            ok &= Y->data[i] == (x[i] > 0 ? x[i] : 0.0f) && X->grad[i] == (x[i] > 0 ? g[i] : 0.0f);
        CHECK(ok, "relu forward/backward differ from max(x, 0) and its step");
        free(x); free(g);
    }

    /* finite differences, 1-D to 4-D */
    float x[2 * 3 * 4 * 5];
    fill_off_kink(x, 120, 3);
    gc_input shapes[4] = {{x, 1, {7}, 1}, {x, 2, {3, 5}, 1}, {x, 3, {2, 3, 4}, 1}, {x, 4, {2, 3, 4, 5}, 1}};
    float alpha1 = 1.0f, alpha2 = 0.7f;
    for (int s = 0; s < 4; s++) {
        gradcheck("gelu", f_gelu, NULL, &shapes[s], 1, 1e-2f, 1e-2);
        gradcheck("relu", f_relu, NULL, &shapes[s], 1, 1e-2f, 1e-2);
        gradcheck("elu alpha=1", f_elu, &alpha1, &shapes[s], 1, 1e-2f, 1e-2);
        gradcheck("elu alpha=0.7", f_elu, &alpha2, &shapes[s], 1, 1e-2f, 1e-2);
    }

    check_serial_path(&ctx);
    cf_ctx_free(&ctx);
    TEST_MAIN_END();
}
