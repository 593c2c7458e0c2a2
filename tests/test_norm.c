/* layernorm and rmsnorm: gradient checks (x, w, b), forward and backward against naive double
 * references (including inputs whose mean dwarfs their spread), and bitwise equality of outputs
 * and every gradient at 1 and 2 threads. The residual add fused with a norm (cf_add_norm):
 * gradient checks, with the sum read by another op too and by the norm alone, and bitwise equality
 * of outputs and every gradient with cf_add followed by the norm. */
#include "gradcheck.h"

static cf_tensor *f_ln(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_layernorm(c, in[0], in[1], in[2], 1e-5f); }
static cf_tensor *f_ln_nob(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_layernorm(c, in[0], in[1], NULL, 1e-5f); }
static cf_tensor *f_rms(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_rmsnorm(c, in[0], in[1], 1e-5f); }
/* x and w reach the output through both norms: their gradients must accumulate */
static cf_tensor *f_both(cf_ctx *c, cf_tensor **in, void *arg) {
    (void)arg;
    return cf_add(c, cf_layernorm(c, in[0], in[1], in[2], 1e-5f), cf_rmsnorm(c, in[0], in[1], 1e-5f));
}

/* the fused add and norm; arg points to rms (0 or 1). The pre-norm block's use: the sum goes on
 * down the residual stream too, so its gradient has two sources. */
static cf_tensor *f_add_norm(cf_ctx *c, cf_tensor **in, void *arg) {
    cf_tensor *s, *y = cf_add_norm(c, in[0], in[1], in[2], *(int *)arg ? NULL : in[3], *(int *)arg, 1e-5f, &s);
    return cf_add(c, cf_mul(c, y, y), s);
}
/* the post-norm block's use: only the norm reads the sum */
static cf_tensor *f_add_norm_only(cf_ctx *c, cf_tensor **in, void *arg) {
    cf_tensor *s;
    return cf_add_norm(c, in[0], in[1], in[2], *(int *)arg ? NULL : in[3], *(int *)arg, 1e-5f, &s);
}
/* the same graph as f_add_norm from the unfused ops */
static cf_tensor *f_add_then_norm(cf_ctx *c, cf_tensor **in, void *arg) {
    cf_tensor *s = cf_add(c, in[0], in[1]);
    cf_tensor *y = *(int *)arg ? cf_rmsnorm(c, s, in[2], 1e-5f) : cf_layernorm(c, s, in[2], in[3], 1e-5f);
    return cf_add(c, cf_mul(c, y, y), s);
}

/* outputs and the gradients of x, r, w, b of f, 300 x 200 at 2 threads (every loop threaded) */
static void run_graph(gc_fn f, int rms, float **xs, float *R, float *got[5]) {
    enum { ROWS = 300, D = 200 };
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 64) == 0, "%s", cf_error_msg());
    int saved = cf_num_threads();
    cf_set_num_threads(2);
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = i < 2 ? cf_tensor_leaf(&ctx, xs[i], 2, (int[]){ROWS, D}, 1) : cf_tensor_leaf(&ctx, xs[i], 1, (int[]){D}, 1);
    cf_tensor *y = f(&ctx, t, &rms);
    cf_backward(&ctx, y, R);
    got[0] = malloc(sizeof(float) * ROWS * D);
    memcpy(got[0], y->data, sizeof(float) * ROWS * D);
    for (int i = 0; i < 4; i++) {
        got[i + 1] = calloc((size_t)t[i]->numel, sizeof(float));
        if (t[i]->grad) memcpy(got[i + 1], t[i]->grad, sizeof(float) * t[i]->numel);
    }
    cf_set_num_threads(saved);
    cf_ctx_free(&ctx);
}

static void check_add_norm_bits(int rms) {
    enum { ROWS = 300, D = 200 };
    static const char *what[5] = {"y", "dx", "dr", "dw", "db"};
    float *xs[4], *R = malloc(sizeof(float) * ROWS * D), *a[5], *b[5];
    for (int i = 0; i < 4; i++) {
        int64_t n = i < 2 ? ROWS * D : D;
        xs[i] = malloc(sizeof(float) * n);
        t_fill_uniform(xs[i], n, i == 2 ? 0.5f : -1, i == 2 ? 1.5f : 1, 40 + i);
    }
    t_fill_uniform(R, ROWS * D, -1, 1, 45);
    run_graph(f_add_norm, rms, xs, R, a);
    run_graph(f_add_then_norm, rms, xs, R, b);
    for (int i = 0; i < 5; i++) {
        int64_t n = i < 3 ? ROWS * D : D;
        if (!(rms && i == 4))
            CHECK(memcmp(a[i], b[i], sizeof(float) * n) == 0, "add_norm %s: %s differs from add then norm",
                  rms ? "rmsnorm" : "layernorm", what[i]);
        free(a[i]);
        free(b[i]);
    }
    for (int i = 0; i < 4; i++) free(xs[i]);
    free(R);
}

/* naive double references; rms != 0 selects rmsnorm (b ignored) */
static void ref_norm(int rms, const float *x, const float *w, const float *b, int64_t rows, int D, double eps,
                     double *y) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        double mu = 0, var = 0;
        if (!rms) { for (int j = 0; j < D; j++) mu += xr[j]; mu /= D; }
        for (int j = 0; j < D; j++) var += (xr[j] - mu) * (xr[j] - mu);
        double rs = 1 / sqrt(var / D + eps);
        for (int j = 0; j < D; j++) y[r * D + j] = (xr[j] - mu) * rs * w[j] + (b && !rms ? b[j] : 0);
    }
}

/* gradients of sum(y * R) in double, from the closed forms differentiated by hand per element */
static void ref_norm_grads(int rms, const float *x, const float *w, const float *R, int64_t rows, int D, double eps,
                           double *dx, double *dw, double *db) {
    for (int j = 0; j < D; j++) dw[j] = db[j] = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        const float *gr = R + r * D;
        double mu = 0, var = 0, sg = 0, sgx = 0;
        if (!rms) { for (int j = 0; j < D; j++) mu += xr[j]; mu /= D; }
        for (int j = 0; j < D; j++) var += (xr[j] - mu) * (xr[j] - mu);
        double rs = 1 / sqrt(var / D + eps);
        for (int j = 0; j < D; j++) {
            double xh = (xr[j] - mu) * rs, g = (double)gr[j] * w[j];
            sg += g; sgx += g * xh;
            dw[j] += gr[j] * xh; db[j] += gr[j];
        }
        for (int j = 0; j < D; j++) {
            double xh = (xr[j] - mu) * rs, g = (double)gr[j] * w[j];
            dx[r * D + j] = rs * (g - (rms ? 0 : sg / D) - xh * sgx / D);
        }
    }
}

static double max_rel_err_d(const float *a, const double *b, int64_t n) {
    double num = 0, den = 1e-6;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d > num || d != d) num = d != d ? INFINITY : d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}

typedef struct run_out { float *y, *dx, *dw, *db; } run_out;

/* forward + backward with seed R; copies out y and the gradients (caller frees) */
static run_out run_norm(int rms, float *x, float *w, float *b, int64_t rows, int D, const float *R) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)256 << 20, 64) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    int64_t n = rows * D;
    cf_tensor *tx = cf_tensor_leaf(&ctx, x, 2, (int[]){(int)rows, D}, 1);
    cf_tensor *tw = cf_tensor_leaf(&ctx, w, 1, (int[]){D}, 1);
    cf_tensor *tb = cf_tensor_leaf(&ctx, b, 1, (int[]){D}, 1);
    cf_tensor *y = rms ? cf_rmsnorm(&ctx, tx, tw, 1e-5f) : cf_layernorm(&ctx, tx, tw, tb, 1e-5f);
    cf_backward(&ctx, y, R);
    run_out o = {malloc(n * sizeof(float)), malloc(n * sizeof(float)), malloc(D * sizeof(float)),
                 malloc(D * sizeof(float))};
    memcpy(o.y, y->data, n * sizeof(float));
    memcpy(o.dx, tx->grad, n * sizeof(float));
    memcpy(o.dw, tw->grad, D * sizeof(float));
    if (tb->grad) memcpy(o.db, tb->grad, D * sizeof(float));
    else memset(o.db, 0, D * sizeof(float));
    cf_ctx_free(&ctx);
    return o;
}

static void free_out(run_out *o) { free(o->y); free(o->dx); free(o->dw); free(o->db); }

/* forward and gradients against the double reference; offset shifts every x (two-pass variance) */
static void check_vs_ref(int rms, int64_t rows, int D, float offset, double tol) {
    const char *name = rms ? "rmsnorm" : "layernorm";
    int64_t n = rows * D;
    float *x = malloc(n * sizeof(float)), *w = malloc(D * sizeof(float)), *b = malloc(D * sizeof(float));
    float *R = malloc(n * sizeof(float));
    double *yr = malloc(n * sizeof(double)), *dxr = malloc(n * sizeof(double));
    double *dwr = malloc(D * sizeof(double)), *dbr = malloc(D * sizeof(double));
    t_fill_uniform(x, n, -2, 2, 11);
    for (int64_t i = 0; i < n; i++) x[i] += offset;
    t_fill_uniform(w, D, 0.5f, 1.5f, 12);
    t_fill_uniform(b, D, -0.5f, 0.5f, 13);
    t_fill_uniform(R, n, -1, 1, 14);
    run_out o = run_norm(rms, x, w, b, rows, D, R);
    ref_norm(rms, x, w, b, rows, D, 1e-5, yr);
    ref_norm_grads(rms, x, w, R, rows, D, 1e-5, dxr, dwr, dbr);
    double e;
    CHECK((e = max_rel_err_d(o.y, yr, n)) < tol, "%s vs double ref (offset %g): y rel err %.3g", name, offset, e);
    CHECK((e = max_rel_err_d(o.dx, dxr, n)) < tol, "%s vs double ref (offset %g): dx rel err %.3g", name, offset, e);
    CHECK((e = max_rel_err_d(o.dw, dwr, D)) < tol, "%s vs double ref (offset %g): dw rel err %.3g", name, offset, e);
    if (!rms)
        CHECK((e = max_rel_err_d(o.db, dbr, D)) < tol, "%s vs double ref (offset %g): db rel err %.3g", name, offset, e);
    free_out(&o);
    free(x); free(w); free(b); free(R); free(yr); free(dxr); free(dwr); free(dbr);
}

/* with w = 1, b = 0 every output row has mean 0 and (biased) variance 1 - eps-sized */
static void check_standardised(void) {
    enum { ROWS = 6, D = 40 };
    float x[ROWS * D], w[D], b[D];
    t_fill_uniform(x, ROWS * D, -3, 5, 21);
    for (int j = 0; j < D; j++) { w[j] = 1; b[j] = 0; }
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, 1 << 20, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *tx = cf_tensor_leaf(&ctx, x, 2, (int[]){ROWS, D}, 0);
    cf_tensor *tw = cf_tensor_leaf(&ctx, w, 1, (int[]){D}, 0);
    cf_tensor *tb = cf_tensor_leaf(&ctx, b, 1, (int[]){D}, 0);
    cf_tensor *y = cf_layernorm(&ctx, tx, tw, tb, 1e-5f);
    CHECK(ctx.n_nodes == 0, "layernorm recorded a node although nothing needs a gradient");
    for (int r = 0; r < ROWS; r++) {
        double mu = 0, var = 0;
        for (int j = 0; j < D; j++) mu += y->data[r * D + j];
        mu /= D;
        for (int j = 0; j < D; j++) var += (y->data[r * D + j] - mu) * (y->data[r * D + j] - mu);
        var /= D;
        CHECK(fabs(mu) < 1e-6 && fabs(var - 1) < 1e-4, "layernorm row %d: mean %.3g var %.6f", r, mu, var);
    }
    /* the mean of y^2 of an rmsnorm row is 1 */
    y = cf_rmsnorm(&ctx, tx, tw, 1e-5f);
    for (int r = 0; r < ROWS; r++) {
        double ms = 0;
        for (int j = 0; j < D; j++) ms += (double)y->data[r * D + j] * y->data[r * D + j];
        CHECK(fabs(ms / D - 1) < 1e-4, "rmsnorm row %d: mean square %.6f", r, ms / D);
    }
    cf_ctx_free(&ctx);
}

static int same_bits(const float *a, const float *b, int64_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* large enough that every parallel loop runs threaded */
static void check_threads(int rms) {
    const char *name = rms ? "rmsnorm" : "layernorm";
    const int64_t rows = 300;
    const int D = 200;
    int64_t n = rows * D;
    float *x = malloc(n * sizeof(float)), *w = malloc(D * sizeof(float)), *b = malloc(D * sizeof(float));
    float *R = malloc(n * sizeof(float));
    t_fill_uniform(x, n, -2, 2, 31);
    t_fill_uniform(w, D, 0.5f, 1.5f, 32);
    t_fill_uniform(b, D, -0.5f, 0.5f, 33);
    t_fill_uniform(R, n, -1, 1, 34);
    int saved = cf_num_threads();
    cf_set_num_threads(1);
    run_out o1 = run_norm(rms, x, w, b, rows, D, R);
    cf_set_num_threads(2);
    run_out o2 = run_norm(rms, x, w, b, rows, D, R);
    cf_set_num_threads(saved);
    CHECK(same_bits(o1.y, o2.y, n), "%s: y differs between 1 and 2 threads", name);
    CHECK(same_bits(o1.dx, o2.dx, n), "%s: dx differs between 1 and 2 threads", name);
    CHECK(same_bits(o1.dw, o2.dw, D), "%s: dw differs between 1 and 2 threads", name);
    CHECK(same_bits(o1.db, o2.db, D), "%s: db differs between 1 and 2 threads", name);
    free_out(&o1); free_out(&o2);
    free(x); free(w); free(b); free(R);
}

int main(void) {
    /* D = 13 leaves a remainder after the 8-wide lanes */
    float x[3 * 2 * 13], w[13], b[13];
    t_fill_uniform(x, 78, -2, 2, 1);
    t_fill_uniform(w, 13, 0.5f, 1.5f, 2);
    t_fill_uniform(b, 13, -0.5f, 0.5f, 3);
    gc_input ln[3] = {{x, 3, {3, 2, 13}, 1}, {w, 1, {13}, 1}, {b, 1, {13}, 1}};
    gradcheck("layernorm", f_ln, NULL, ln, 3, 1e-2f, 1e-3);
    gradcheck("layernorm no bias", f_ln_nob, NULL, ln, 2, 1e-2f, 1e-3);
    gradcheck("rmsnorm", f_rms, NULL, ln, 2, 1e-2f, 1e-3);
    gradcheck("layernorm + rmsnorm fan-out", f_both, NULL, ln, 3, 1e-2f, 1e-3);
    /* gradients of the parameters alone, x constant, and of x alone */
    gc_input ln_params[3] = {{x, 3, {3, 2, 13}, 0}, {w, 1, {13}, 1}, {b, 1, {13}, 1}};
    gc_input ln_x[3] = {{x, 3, {3, 2, 13}, 1}, {w, 1, {13}, 0}, {b, 1, {13}, 0}};
    gradcheck("layernorm params only", f_ln, NULL, ln_params, 3, 1e-2f, 1e-3);
    gradcheck("layernorm x only", f_ln, NULL, ln_x, 3, 1e-2f, 1e-3);
    gradcheck("rmsnorm x only", f_rms, NULL, ln_x, 2, 1e-2f, 1e-3);

    float r[78];
    t_fill_uniform(r, 78, -2, 2, 4);
    gc_input an[4] = {{x, 3, {3, 2, 13}, 1}, {r, 3, {3, 2, 13}, 1}, {w, 1, {13}, 1}, {b, 1, {13}, 1}};
    for (int rms = 0; rms <= 1; rms++) {
        gradcheck(rms ? "add + rmsnorm, sum read twice" : "add + layernorm, sum read twice", f_add_norm, &rms, an,
                  rms ? 3 : 4, 1e-2f, 1e-3);
        gradcheck(rms ? "add + rmsnorm" : "add + layernorm", f_add_norm_only, &rms, an, rms ? 3 : 4, 1e-2f, 1e-3);
        check_add_norm_bits(rms);
    }

    check_standardised();
    for (int rms = 0; rms <= 1; rms++) {
        check_vs_ref(rms, 17, 64, 0, 1e-5);
        check_vs_ref(rms, 5, 37, 0, 1e-5);
        check_threads(rms);
    }
    /* a mean 1000 times the spread: a one-pass E[x^2] - E[x]^2 would lose most digits here */
    check_vs_ref(0, 9, 48, 1000, 1e-4);
    TEST_MAIN_END();
}
