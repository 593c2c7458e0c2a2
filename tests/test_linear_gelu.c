/* linear + GELU fused (src/ops/linear_gelu.c) and the GEMM epilogue under it:
 *   - finite differences for x, W and b, with and without the bias;
 *   - the output and every gradient bitwise those of cf_linear then cf_gelu, over shapes that take
 *     each path of the GEMM (a single row: gemv; k over one block, over two, and over two B
 *     super-blocks; columns over several tasks), at the thread count of the run;
 *   - cf_gemm_epi: each hook visits every element of C exactly once, before: first, after: on its
 *     final value; C as cf_gemm on what before wrote;
 *   - the same in bf16 (ctx->bf16, cf_gemm_bf16_epi), with the kernel this machine picks. */
#include "gradcheck.h"
#include "cformer/kernels.h"

static cf_tensor *f_fused(cf_ctx *ctx, cf_tensor **in, void *arg) {
    return cf_linear_gelu(ctx, in[0], in[1], arg ? in[2] : NULL);
}

static void test_gradcheck(void) {
    enum { R = 5, IN = 7, OUT = 6 };
    float x[R * IN], w[OUT * IN], b[OUT];
    t_fill_uniform(x, R * IN, -2, 2, 1);
    t_fill_uniform(w, OUT * IN, -1, 1, 2);
    t_fill_uniform(b, OUT, -1, 1, 3);
    gc_input ins[3] = {{x, 2, {R, IN}, 1}, {w, 2, {OUT, IN}, 1}, {b, 1, {OUT}, 1}};
    gradcheck("linear_gelu", f_fused, (void *)1, ins, 3, 1e-2f, 1e-2);
    gradcheck("linear_gelu, no bias", f_fused, NULL, ins, 2, 1e-2f, 1e-2);
    gc_input x3[3] = {{x, 3, {1, R, IN}, 1}, {w, 2, {OUT, IN}, 1}, {b, 1, {OUT}, 1}};
    gradcheck("linear_gelu [1, R, IN]", f_fused, (void *)1, x3, 3, 1e-2f, 1e-2);
}

typedef struct run { float *y, *gx, *gw, *gb; } run;

static int bf16;   /* the precision of the runs below */

static run forward_backward(int rows, int in, int out, int bias, int fused, const float *x, const float *w,
                            const float *b, const float *R) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 64) == 0, "%s", cf_error_msg());
    ctx.bf16 = bf16;
    cf_ctx_begin(&ctx, 0);
    cf_tensor *tx = cf_tensor_leaf(&ctx, (float *)x, 2, (int[]){rows, in}, 1);
    cf_tensor *tw = cf_tensor_leaf(&ctx, (float *)w, 2, (int[]){out, in}, 1);
    cf_tensor *tb = bias ? cf_tensor_leaf(&ctx, (float *)b, 1, (int[]){out}, 1) : NULL;
    cf_tensor *y = fused ? cf_linear_gelu(&ctx, tx, tw, tb) : cf_gelu(&ctx, cf_linear(&ctx, tx, tw, tb));
    cf_backward(&ctx, y, R);
    size_t ny = (size_t)rows * out * sizeof(float), nx = (size_t)rows * in * sizeof(float);
    size_t nw = (size_t)out * in * sizeof(float), nb = (size_t)out * sizeof(float);
    run r = {malloc(ny), malloc(nx), malloc(nw), malloc(nb)};
    memcpy(r.y, y->data, ny);
    memcpy(r.gx, tx->grad, nx);
    memcpy(r.gw, tw->grad, nw);
    if (bias) memcpy(r.gb, tb->grad, nb);
    cf_ctx_free(&ctx);
    return r;
}

static void test_bitwise(int rows, int in, int out, int bias) {
    float *x = malloc(sizeof(float) * (size_t)rows * in), *w = malloc(sizeof(float) * (size_t)out * in);
    float *b = malloc(sizeof(float) * (size_t)out), *R = malloc(sizeof(float) * (size_t)rows * out);
    t_fill_uniform(x, (int64_t)rows * in, -1, 1, 10);
    t_fill_uniform(w, (int64_t)out * in, -0.2f, 0.2f, 11);
    t_fill_uniform(b, out, -1, 1, 12);
    t_fill_uniform(R, (int64_t)rows * out, -1, 1, 13);
    run f = forward_backward(rows, in, out, bias, 1, x, w, b, R), u = forward_backward(rows, in, out, bias, 0, x, w, b, R);
    size_t ny = (size_t)rows * out, nx = (size_t)rows * in, nw = (size_t)out * in;
    CHECK(!memcmp(f.y, u.y, ny * sizeof(float)), "%d x %d -> %d bias=%d bf16=%d: output differs from linear then gelu",
          rows, in, out, bias, bf16);
    CHECK(!memcmp(f.gx, u.gx, nx * sizeof(float)) && !memcmp(f.gw, u.gw, nw * sizeof(float)) &&
          (!bias || !memcmp(f.gb, u.gb, (size_t)out * sizeof(float))),
          "%d x %d -> %d bias=%d bf16=%d: gradients differ from linear then gelu", rows, in, out, bias, bf16);
    free(f.y); free(f.gx); free(f.gw); free(f.gb);
    free(u.y); free(u.gx); free(u.gw); free(u.gb);
    free(x); free(w); free(b); free(R);
}

/* the hooks of cf_gemm_epi: before fills C with a pattern (counting its visits), after counts its
 * visits and checks that C is final then; C must be cf_gemm's on the pattern with beta 1 */
typedef struct visit { int *before, *after; float *c; const float *want, *fill; int ldc, early; } visit;

static void fill_block(void *arg, int i0, int j0, int rows, int cols) {
    visit *v = arg;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            size_t e = (size_t)(i0 + r) * v->ldc + j0 + j;
            __atomic_fetch_add(&v->before[e], 1, __ATOMIC_RELAXED);
            v->c[e] = v->fill[e];
        }
}

static void count_block(void *arg, int i0, int j0, int rows, int cols) {
    visit *v = arg;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            size_t e = (size_t)(i0 + r) * v->ldc + j0 + j;
            __atomic_fetch_add(&v->after[e], 1, __ATOMIC_RELAXED);
            if (v->c[e] != v->want[e]) __atomic_store_n(&v->early, 1, __ATOMIC_RELAXED);
        }
}

static void test_hooks(int m, int n, int k) {
    size_t mn = (size_t)m * n;
    float *a = malloc(sizeof(float) * (size_t)m * k), *b = malloc(sizeof(float) * (size_t)k * n);
    float *c = malloc(sizeof(float) * mn), *want = malloc(sizeof(float) * mn), *fill = malloc(sizeof(float) * mn);
    t_fill_uniform(a, (int64_t)m * k, -1, 1, 20);
    t_fill_uniform(b, (int64_t)k * n, -1, 1, 21);
    t_fill_uniform(fill, (int64_t)mn, -1, 1, 22);
    memcpy(want, fill, sizeof(float) * mn);
    (bf16 ? cf_gemm_bf16 : cf_gemm)(0, 0, m, n, k, 1.0f, a, k, b, n, 1.0f, want, n);
    visit v = {calloc(mn, sizeof(int)), calloc(mn, sizeof(int)), c, want, fill, n, 0};
    for (size_t e = 0; e < mn; e++) c[e] = NAN;   /* what before does not write shows */
    cf_gemm_hooks hooks = {fill_block, count_block, &v};
    (bf16 ? cf_gemm_bf16_epi : cf_gemm_epi)(0, 0, m, n, k, 1.0f, a, k, b, n, 1.0f, c, n, &hooks);
    int once = 1;
    for (size_t e = 0; e < mn; e++) once &= v.before[e] == 1 && v.after[e] == 1;
    CHECK(once && !v.early && !memcmp(c, want, sizeof(float) * mn),
          "%s %d x %d x %d: each hook once on every element (%d), after on final values (%d), C as without hooks",
          bf16 ? "cf_gemm_bf16_epi" : "cf_gemm_epi", m, n, k, once, !v.early);
    free(v.before); free(v.after); free(a); free(b); free(c); free(want); free(fill);
}

int main(void) {
    test_gradcheck();
    int shapes[][3] = {{1, 64, 96}, {37, 256, 1024}, {64, 512, 200}, {9, 4000, 130}, {300, 40, 2000}};
    for (bf16 = 0; bf16 <= 1; bf16++) {
        for (int s = 0; s < 5; s++)
            for (int bias = 0; bias <= 1; bias++) test_bitwise(shapes[s][0], shapes[s][1], shapes[s][2], bias);
        for (int s = 0; s < 5; s++) test_hooks(shapes[s][0], shapes[s][2], shapes[s][1]);
        test_hooks(50, 1, 70);
        test_hooks(3, 9, 0);
    }
    TEST_MAIN_END();
}
