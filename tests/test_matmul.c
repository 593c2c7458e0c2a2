/* matmul and linear: forward against a naive triple loop (every transpose combination, batched,
 * 4-D, shared 2-D B, sizes on both of cf_gemm's paths), gradient checks for the same cases, and
 * bitwise equality of forward and backward at 1 and 2 threads. */
#include "gradcheck.h"

/* ---- naive references ------------------------------------------------------------------------ */

/* C [batch, M, N] = op(A_b) op(B_b), B shared when b_shared; double accumulation */
static void ref_matmul(const float *a, const float *b, float *c, int batch, int m, int n, int k,
                       int ta, int tb, int b_shared) {
    for (int q = 0; q < batch; q++) {
        const float *pa = a + (size_t)q * m * k, *pb = b + (b_shared ? 0 : (size_t)q * k * n);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int p = 0; p < k; p++)
                    s += (double)(ta ? pa[p * m + i] : pa[i * k + p]) * (tb ? pb[j * k + p] : pb[p * n + j]);
                c[((size_t)q * m + i) * n + j] = (float)s;
            }
    }
}

/* gradients of sum(C * G) for ref_matmul's product, in A's and B's stored layouts */
static void ref_matmul_grad(const float *a, const float *b, const float *g, float *da, float *db,
                            int batch, int m, int n, int k, int ta, int tb, int b_shared) {
    int nb = b_shared ? 1 : batch;
    double *sa = calloc((size_t)batch * m * k, sizeof(double)), *sb = calloc((size_t)nb * k * n, sizeof(double));
    for (int q = 0; q < batch; q++) {
        size_t oa = (size_t)q * m * k, ob = b_shared ? 0 : (size_t)q * k * n;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double gij = g[((size_t)q * m + i) * n + j];
                for (int p = 0; p < k; p++) {
                    size_t ia = oa + (ta ? (size_t)p * m + i : (size_t)i * k + p);
                    size_t ib = ob + (tb ? (size_t)j * k + p : (size_t)p * n + j);
                    sa[ia] += gij * b[ib];
                    sb[ib] += gij * a[ia];
                }
            }
    }
    for (size_t i = 0; i < (size_t)batch * m * k; i++) da[i] = (float)sa[i];
    for (size_t i = 0; i < (size_t)nb * k * n; i++) db[i] = (float)sb[i];
    free(sa); free(sb);
}

/* y [rows, out] = x W^T + b */
static void ref_linear(const float *x, const float *w, const float *b, float *y, int rows, int in, int out) {
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++) s += (double)x[r * in + i] * w[o * in + i];
            y[r * out + o] = (float)s;
        }
}

/* ---- one matmul case ------------------------------------------------------------------------- */

typedef struct mm_case {
    int lead_nd, lead[2];   /* leading (batch) dims of A: 0, 1 or 2 of them */
    int m, n, k, ta, tb, shared;
} mm_case;

static int mm_batch(const mm_case *c) {
    int b = 1;
    for (int i = 0; i < c->lead_nd; i++) b *= c->lead[i];
    return b;
}

/* stored shapes of A and B for a case */
static void mm_shapes(const mm_case *c, gc_input *ia, gc_input *ib) {
    ia->ndim = c->lead_nd + 2;
    for (int i = 0; i < c->lead_nd; i++) ia->shape[i] = c->lead[i];
    ia->shape[c->lead_nd] = c->ta ? c->k : c->m;
    ia->shape[c->lead_nd + 1] = c->ta ? c->m : c->k;
    int bl = c->shared ? 0 : c->lead_nd;
    ib->ndim = bl + 2;
    for (int i = 0; i < bl; i++) ib->shape[i] = c->lead[i];
    ib->shape[bl] = c->tb ? c->n : c->k;
    ib->shape[bl + 1] = c->tb ? c->k : c->n;
}

static cf_tensor *f_matmul(cf_ctx *ctx, cf_tensor **in, void *arg) {
    const mm_case *c = arg;
    return cf_matmul(ctx, in[0], in[1], c->ta, c->tb);
}

static void check_matmul_forward(cf_ctx *ctx, const mm_case *c, const char *what) {
    gc_input ia = {0}, ib = {0};
    mm_shapes(c, &ia, &ib);
    int batch = mm_batch(c);
    size_t na = (size_t)batch * c->m * c->k, nb = (size_t)(c->shared ? 1 : batch) * c->k * c->n;
    size_t nc = (size_t)batch * c->m * c->n;
    float *a = malloc(na * sizeof(float)), *b = malloc(nb * sizeof(float)), *r = malloc(nc * sizeof(float));
    t_fill_uniform(a, (int64_t)na, -1, 1, 11);
    t_fill_uniform(b, (int64_t)nb, -1, 1, 12);
    ref_matmul(a, b, r, batch, c->m, c->n, c->k, c->ta, c->tb, c->shared);
    cf_ctx_begin(ctx, 0);
    cf_tensor *A = cf_tensor_leaf(ctx, a, ia.ndim, ia.shape, 0), *B = cf_tensor_leaf(ctx, b, ib.ndim, ib.shape, 0);
    cf_tensor *C = cf_matmul(ctx, A, B, c->ta, c->tb);
    CHECK(C->ndim == ia.ndim && C->shape[C->ndim - 2] == c->m && C->shape[C->ndim - 1] == c->n &&
          C->numel == (int64_t)nc, "matmul %s: output shape %s", what, cf_shape_str(C));
    double e = t_max_rel_err(C->data, r, (int64_t)nc, 1e-3);
    CHECK(e < 1e-5, "matmul %s vs naive: max rel err %.3g", what, e);
    free(a); free(b); free(r);
}

static void check_matmul_grad(const mm_case *c, const char *what) {
    gc_input ins[2] = {{0}, {0}};
    mm_shapes(c, &ins[0], &ins[1]);
    int batch = mm_batch(c);
    size_t na = (size_t)batch * c->m * c->k, nb = (size_t)(c->shared ? 1 : batch) * c->k * c->n;
    float *a = malloc(na * sizeof(float)), *b = malloc(nb * sizeof(float));
    t_fill_uniform(a, (int64_t)na, -1, 1, 21);
    t_fill_uniform(b, (int64_t)nb, -1, 1, 22);
    ins[0].data = a; ins[0].check = 1;
    ins[1].data = b; ins[1].check = 1;
    gradcheck(what, f_matmul, (void *)c, ins, 2, 1e-2f, 1e-2);
    free(a); free(b);
}

/* forward output and both input gradients at the current thread count, into out (caller's) */
static void matmul_run(cf_ctx *ctx, const mm_case *c, float *a, float *b, float *out, size_t nc,
                       float *ga, size_t na, float *gb, size_t nb) {
    gc_input ia = {0}, ib = {0};
    mm_shapes(c, &ia, &ib);
    cf_ctx_begin(ctx, 0);
    cf_tensor *A = cf_tensor_leaf(ctx, a, ia.ndim, ia.shape, 1), *B = cf_tensor_leaf(ctx, b, ib.ndim, ib.shape, 1);
    cf_tensor *C = cf_matmul(ctx, A, B, c->ta, c->tb);
    float *seed = malloc(nc * sizeof(float));
    t_fill_uniform(seed, (int64_t)nc, -1, 1, 5);
    cf_backward(ctx, C, seed);
    memcpy(out, C->data, nc * sizeof(float));
    memcpy(ga, A->grad, na * sizeof(float));
    memcpy(gb, B->grad, nb * sizeof(float));
    free(seed);
}

static void check_matmul_threads(cf_ctx *ctx, const mm_case *c, const char *what) {
    int batch = mm_batch(c);
    size_t na = (size_t)batch * c->m * c->k, nb = (size_t)(c->shared ? 1 : batch) * c->k * c->n;
    size_t nc = (size_t)batch * c->m * c->n;
    float *a = malloc(na * sizeof(float)), *b = malloc(nb * sizeof(float));
    float *o1 = malloc(nc * sizeof(float)), *o2 = malloc(nc * sizeof(float));
    float *ga1 = malloc(na * sizeof(float)), *ga2 = malloc(na * sizeof(float));
    float *gb1 = malloc(nb * sizeof(float)), *gb2 = malloc(nb * sizeof(float));
    t_fill_uniform(a, (int64_t)na, -1, 1, 31);
    t_fill_uniform(b, (int64_t)nb, -1, 1, 32);
    int saved = cf_num_threads();
    cf_set_num_threads(1);
    matmul_run(ctx, c, a, b, o1, nc, ga1, na, gb1, nb);
    cf_set_num_threads(2);
    matmul_run(ctx, c, a, b, o2, nc, ga2, na, gb2, nb);
    cf_set_num_threads(saved);
    CHECK(!memcmp(o1, o2, nc * sizeof(float)) && !memcmp(ga1, ga2, na * sizeof(float)) &&
          !memcmp(gb1, gb2, nb * sizeof(float)), "matmul %s: results differ between 1 and 2 threads", what);
    /* on these sizes the gradients are checked against the naive formula rather than by
     * finite differences (too many elements) */
    float *seed = malloc(nc * sizeof(float)), *ra = malloc(na * sizeof(float)), *rb = malloc(nb * sizeof(float));
    t_fill_uniform(seed, (int64_t)nc, -1, 1, 5);
    ref_matmul_grad(a, b, seed, ra, rb, batch, c->m, c->n, c->k, c->ta, c->tb, c->shared);
    double ea = t_max_rel_err(ga1, ra, (int64_t)na, 1e-3), eb = t_max_rel_err(gb1, rb, (int64_t)nb, 1e-3);
    CHECK(ea < 1e-5 && eb < 1e-5, "matmul %s grads vs naive: dA %.3g, dB %.3g", what, ea, eb);
    free(seed); free(ra); free(rb);
    free(a); free(b); free(o1); free(o2); free(ga1); free(ga2); free(gb1); free(gb2);
}

/* ---- linear ------------------------------------------------------------------------------------ */

static cf_tensor *f_linear(cf_ctx *ctx, cf_tensor **in, void *arg) {
    return cf_linear(ctx, in[0], in[1], arg ? in[2] : NULL);
}

static void check_linear(cf_ctx *ctx, int bsz, int t, int in, int out, int bias, int grad) {
    int rows = bsz * t;
    float *x = malloc((size_t)rows * in * sizeof(float)), *w = malloc((size_t)out * in * sizeof(float));
    float *b = malloc((size_t)out * sizeof(float)), *r = malloc((size_t)rows * out * sizeof(float));
    t_fill_uniform(x, (int64_t)rows * in, -1, 1, 41);
    t_fill_uniform(w, (int64_t)out * in, -1, 1, 42);
    t_fill_uniform(b, out, -1, 1, 43);
    ref_linear(x, w, bias ? b : NULL, r, rows, in, out);
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 3, (int[]){bsz, t, in}, 0);
    cf_tensor *W = cf_tensor_leaf(ctx, w, 2, (int[]){out, in}, 0);
    cf_tensor *B = cf_tensor_leaf(ctx, b, 1, (int[]){out}, 0);
    cf_tensor *Y = cf_linear(ctx, X, W, bias ? B : NULL);
    CHECK(Y->ndim == 3 && Y->shape[0] == bsz && Y->shape[1] == t && Y->shape[2] == out,
          "linear: output shape %s", cf_shape_str(Y));
    double e = t_max_rel_err(Y->data, r, (int64_t)rows * out, 1e-3);
    CHECK(e < 1e-5, "linear [%d,%d,%d]x[%d,%d] bias=%d vs naive: max rel err %.3g", bsz, t, in, out, in, bias, e);
    if (grad) {
        gc_input ins[3] = {{x, 3, {bsz, t, in}, 1}, {w, 2, {out, in}, 1}, {b, 1, {out}, 1}};
        gradcheck(bias ? "linear bias" : "linear no bias", f_linear, bias ? (void *)1 : NULL, ins,
                  bias ? 3 : 2, 1e-2f, 1e-2);
    }
    free(x); free(w); free(b); free(r);
}

/* the bias gradient is a column sum: compare it exactly-ish with a double sum, on enough columns
 * for several column blocks and enough rows for the parallel path */
static void check_linear_bias_grad(cf_ctx *ctx) {
    int rows = 300, in = 8, out = 150;
    float *x = malloc((size_t)rows * in * sizeof(float)), *w = malloc((size_t)out * in * sizeof(float));
    float *b = malloc((size_t)out * sizeof(float)), *g = malloc((size_t)rows * out * sizeof(float));
    t_fill_uniform(x, (int64_t)rows * in, -1, 1, 51);
    t_fill_uniform(w, (int64_t)out * in, -1, 1, 52);
    t_fill_uniform(b, out, -1, 1, 53);
    t_fill_uniform(g, (int64_t)rows * out, -1, 1, 54);
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 2, (int[]){rows, in}, 0);
    cf_tensor *W = cf_tensor_leaf(ctx, w, 2, (int[]){out, in}, 0);
    cf_tensor *B = cf_tensor_leaf(ctx, b, 1, (int[]){out}, 1);
    cf_backward(ctx, cf_linear(ctx, X, W, B), g);
    double worst = 0;
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int r = 0; r < rows; r++) s += g[r * out + o];
        double e = fabs(B->grad[o] - s);
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-4, "linear bias grad vs column sums: max abs err %.3g", worst);
    CHECK(X->grad == NULL && W->grad == NULL, "linear: gradient buffers made for inputs that need none");
    free(x); free(w); free(b); free(g);
}

int main(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 10) == 0, "%s", cf_error_msg());
    char name[96];

    /* every transpose combination, on 2-D, batched 3-D, batched 4-D and shared-B shapes */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            mm_case cases[4] = {
                {0, {0, 0}, 3, 4, 5, ta, tb, 0},
                {1, {2, 0}, 3, 5, 4, ta, tb, 0},
                {2, {2, 2}, 2, 3, 4, ta, tb, 0},
                {1, {3, 0}, 4, 3, 5, ta, tb, 1},
            };
            const char *kind[4] = {"2-D", "batched", "4-D", "shared B"};
            for (int i = 0; i < 4; i++) {
                snprintf(name, sizeof name, "%s ta=%d tb=%d", kind[i], ta, tb);
                check_matmul_forward(&ctx, &cases[i], name);
                check_matmul_grad(&cases[i], name);
            }
            /* 4-D with a shared B; then sizes that take each schedule of matmul.c: a shared B
             * folded into one tall threaded GEMM (or, transposed, one product per thread), many
             * small products one per thread, and large products in turn with cf_gemm's threads */
            mm_case big[4] = {
                {2, {2, 3}, 5, 6, 7, ta, tb, 1},
                {1, {3, 0}, 70, 90, 110, ta, tb, 1},
                {2, {4, 6}, 17, 19, 13, ta, tb, 0},
                {1, {2, 0}, 100, 100, 110, ta, tb, 0},
            };
            const char *big_kind[4] = {"", "large shared", "many small", "large batched"};
            snprintf(name, sizeof name, "4-D shared B ta=%d tb=%d", ta, tb);
            check_matmul_forward(&ctx, &big[0], name);
            check_matmul_grad(&big[0], name);
            for (int i = 1; i < 4; i++) {
                snprintf(name, sizeof name, "%s ta=%d tb=%d", big_kind[i], ta, tb);
                check_matmul_forward(&ctx, &big[i], name);
                check_matmul_threads(&ctx, &big[i], name);
            }
        }

    check_linear(&ctx, 2, 3, 5, 4, 1, 1);
    check_linear(&ctx, 2, 3, 5, 4, 0, 1);
    check_linear(&ctx, 4, 33, 70, 90, 1, 0);
    check_linear(&ctx, 4, 33, 70, 90, 0, 0);
    check_linear_bias_grad(&ctx);

    cf_ctx_free(&ctx);
    TEST_MAIN_END();
}
