/* reshape, permute, concat, slice_last, sum, mean: values against index arithmetic, round trips
 * (permute then inverse permute, concat then slice), gradient checks on several shapes, and
 * gradient accumulation (backward adds into a gradient that already holds something). */
#include "gradcheck.h"

typedef struct { int ndim, shape[CF_MAX_DIMS], perm[CF_MAX_DIMS]; } perm_arg;

static cf_tensor *f_reshape(cf_ctx *c, cf_tensor **in, void *arg) {
    const perm_arg *p = arg;
    /* times itself afterwards, so the gradient depends on x and a wrong layout would show */
    cf_tensor *y = cf_reshape(c, in[0], p->ndim, p->shape);
    return cf_mul(c, y, y);
}
static cf_tensor *f_permute(cf_ctx *c, cf_tensor **in, void *arg) {
    return cf_permute(c, in[0], ((perm_arg *)arg)->perm);
}
static cf_tensor *f_concat(cf_ctx *c, cf_tensor **in, void *arg) { return cf_concat(c, in[0], in[1], *(int *)arg); }
static cf_tensor *f_slice(cf_ctx *c, cf_tensor **in, void *arg) {
    const int *se = arg;
    return cf_slice_last(c, in[0], se[0], se[1]);
}
/* sum and mean of x * x: a non-constant gradient */
static cf_tensor *f_sum(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_sum(c, cf_mul(c, in[0], in[0])); }
static cf_tensor *f_mean(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_mean(c, cf_mul(c, in[0], in[0])); }

/* flat index of multi-index idx in a row-major shape */
static int64_t flat(const int *shape, int nd, const int *idx) {
    int64_t f = 0;
    for (int d = 0; d < nd; d++) f = f * shape[d] + idx[d];
    return f;
}
static void unflat(const int *shape, int nd, int64_t f, int *idx) {
    for (int d = nd - 1; d >= 0; d--) { idx[d] = (int)(f % shape[d]); f /= shape[d]; }
}

/* every permutation of nd dims, in lexicographic order; returns the count */
static int all_perms(int nd, int out[][CF_MAX_DIMS]) {
    int cnt = 0, p[CF_MAX_DIMS];
    for (int a = 0; a < 256; a++) {
        int used = 0, ok = 1, v = a;
        for (int d = 0; d < nd; d++) { p[d] = v % nd; v /= nd; }
        if (v) break;
        for (int d = 0; d < nd && ok; d++) { ok = !(used & (1 << p[d])); used |= 1 << p[d]; }
        if (ok) { memcpy(out[cnt], p, sizeof p); cnt++; }
    }
    return cnt;
}

static void check_permute(cf_ctx *ctx, int nd, const int *shape, const int *perm, int grad) {
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n *= shape[d];
    float *x = malloc((size_t)n * sizeof(float));
    t_fill_uniform(x, n, -1, 1, 21);
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, nd, shape, 1);
    cf_tensor *Y = cf_permute(ctx, X, perm);
    int inv[CF_MAX_DIMS];
    for (int d = 0; d < nd; d++) inv[perm[d]] = d;
    cf_tensor *Z = cf_permute(ctx, Y, inv);
    int ok_val = 1, idx[CF_MAX_DIMS], xi[CF_MAX_DIMS];
    for (int64_t f = 0; f < n; f++) {
        unflat(Y->shape, nd, f, idx);
        for (int d = 0; d < nd; d++) xi[perm[d]] = idx[d];
        ok_val &= Y->data[f] == x[flat(shape, nd, xi)];
    }
    char ps[32];
    int len = 0;
    for (int d = 0; d < nd; d++) len += snprintf(ps + len, sizeof ps - len, "%d", perm[d]);
    CHECK(ok_val, "permute %s by %s: wrong element placement", cf_shape_str(X), ps);
    CHECK(cf_same_shape(Z, X) && !memcmp(Z->data, x, (size_t)n * sizeof(float)),
          "permute %s by %s then its inverse is not the identity", cf_shape_str(X), ps);
    /* backward through both: the gradient of the identity is the seed itself */
    float *seed = malloc((size_t)n * sizeof(float));
    t_fill_uniform(seed, n, -1, 1, 22);
    cf_backward(ctx, Z, seed);
    int ok_grad = 1;
    for (int64_t f = 0; f < n; f++) ok_grad &= X->grad[f] == seed[f];
    CHECK(ok_grad, "permute %s by %s: round-trip gradient is not the seed", cf_shape_str(X), ps);
    if (grad) {
        perm_arg pa = {nd, {0}, {0}};
        memcpy(pa.perm, perm, (size_t)nd * sizeof(int));
        gc_input in = {x, nd, {0}, 1};
        memcpy(in.shape, shape, (size_t)nd * sizeof(int));
        char name[48];
        snprintf(name, sizeof name, "permute %dD by %s", nd, ps);
        gradcheck(name, f_permute, &pa, &in, 1, 1e-2f, 1e-2);
    }
    free(x); free(seed);
}

/* concat a [.., na, ..] and b [.., nb, ..] along dim, then recover both parts: by slicing (last
 * dim) or by comparing against index arithmetic (any dim) */
static void check_concat(cf_ctx *ctx, int nd, const int *shape, int dim, int nb, int grad) {
    int sa[CF_MAX_DIMS] = {0}, sb[CF_MAX_DIMS] = {0};
    memcpy(sa, shape, (size_t)nd * sizeof(int));
    memcpy(sb, shape, (size_t)nd * sizeof(int));
    sb[dim] = nb;
    int64_t na_el = 1, nb_el = 1;
    for (int d = 0; d < nd; d++) { na_el *= sa[d]; nb_el *= sb[d]; }
    float *a = malloc((size_t)na_el * sizeof(float)), *b = malloc((size_t)nb_el * sizeof(float));
    t_fill_uniform(a, na_el, -1, 1, 31);
    t_fill_uniform(b, nb_el, -1, 1, 32);
    cf_ctx_begin(ctx, 0);
    cf_tensor *A = cf_tensor_leaf(ctx, a, nd, sa, 1), *B = cf_tensor_leaf(ctx, b, nd, sb, 1);
    cf_tensor *Y = cf_concat(ctx, A, B, dim);
    int ok = Y->shape[dim] == sa[dim] + nb, idx[CF_MAX_DIMS];
    for (int64_t f = 0; ok && f < Y->numel; f++) {
        unflat(Y->shape, nd, f, idx);
        if (idx[dim] < sa[dim]) ok &= Y->data[f] == a[flat(sa, nd, idx)];
        else { idx[dim] -= sa[dim]; ok &= Y->data[f] == b[flat(sb, nd, idx)]; }
    }
    CHECK(ok, "concat %s and %s along %d: wrong layout", cf_shape_str(A), cf_shape_str(B), dim);
    if (dim == nd - 1) {
        cf_tensor *pa = cf_slice_last(ctx, Y, 0, sa[dim]), *pb = cf_slice_last(ctx, Y, sa[dim], nb);
        CHECK(cf_same_shape(pa, A) && cf_same_shape(pb, B) &&
              !memcmp(pa->data, a, (size_t)na_el * sizeof(float)) && !memcmp(pb->data, b, (size_t)nb_el * sizeof(float)),
              "concat %s and %s then slice_last does not give them back", cf_shape_str(A), cf_shape_str(B));
        /* backward through concat then slices: each part's gradient is its own seed */
        cf_tensor *s = cf_add(ctx, cf_sum(ctx, pa), cf_sum(ctx, cf_scale(ctx, pb, 2.0f)));
        cf_backward(ctx, s, NULL);
        int ga = 1, gb = 1;
        for (int64_t i = 0; i < na_el; i++) ga &= A->grad[i] == 1.0f;
        for (int64_t i = 0; i < nb_el; i++) gb &= B->grad[i] == 2.0f;
        CHECK(ga && gb, "concat then slice_last: gradients do not reach their parts");
    }
    if (grad) {
        gc_input ins[2] = {{a, nd, {0}, 1}, {b, nd, {0}, 1}};
        memcpy(ins[0].shape, sa, sizeof sa);
        memcpy(ins[1].shape, sb, sizeof sb);
        char name[48];
        snprintf(name, sizeof name, "concat %dD along %d", nd, dim);
        gradcheck(name, f_concat, &dim, ins, 2, 1e-2f, 1e-2);
        /* a negative dim counts from the end */
        int neg = dim - nd;
        snprintf(name, sizeof name, "concat %dD along %d", nd, neg);
        gradcheck(name, f_concat, &neg, ins, 2, 1e-2f, 1e-2);
    }
    free(a); free(b);
}

static void check_reduce(cf_ctx *ctx) {
    int n = 1000003;   /* odd, so the last fixed block is short */
    float *x = malloc((size_t)n * sizeof(float));
    t_fill_uniform(x, n, -1, 2, 41);
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    cf_ctx_begin(ctx, 0);
    cf_tensor *X = cf_tensor_leaf(ctx, x, 2, (int[]){1, n}, 1);
    cf_tensor *S = cf_sum(ctx, X), *M = cf_mean(ctx, X);
    CHECK(S->ndim == 1 && S->shape[0] == 1 && M->ndim == 1 && M->shape[0] == 1, "sum/mean must be [1]");
    CHECK(fabs(S->data[0] - s) <= 1e-6 * fabs(s), "sum: %.9g, double reference %.9g", S->data[0], s);
    CHECK(fabs(M->data[0] - s / n) <= 1e-6 * fabs(s / n), "mean: %.9g, double reference %.9g", M->data[0], s / n);
    cf_backward(ctx, cf_add(ctx, S, M), NULL);
    int ok = 1;
    float want = 1.0f + 1.0f / (float)n;
    for (int i = 0; i < n; i++) ok &= fabsf(X->grad[i] - want) <= 1e-7f;
    CHECK(ok, "sum + mean: gradient must be 1 + 1/n everywhere");
    /* the same bits at 1 and 2 threads */
    int saved = cf_num_threads();
    cf_set_num_threads(1);
    cf_ctx_begin(ctx, 0);
    float s1 = cf_sum(ctx, cf_tensor_leaf(ctx, x, 1, (int[]){n}, 0))->data[0];
    cf_set_num_threads(2);
    cf_ctx_begin(ctx, 0);
    float s2 = cf_sum(ctx, cf_tensor_leaf(ctx, x, 1, (int[]){n}, 0))->data[0];
    cf_set_num_threads(saved);
    CHECK(s1 == s2, "sum differs between 1 and 2 threads: %.9g %.9g", s1, s2);
    free(x);
}

int main(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 10) == 0, "%s", cf_error_msg());

    /* reshape shares data and routes the gradient back */
    float x[120];
    t_fill_uniform(x, 120, -1, 1, 1);
    {
        cf_ctx_begin(&ctx, 0);
        cf_tensor *X = cf_tensor_leaf(&ctx, x, 3, (int[]){2, 3, 20}, 1);
        cf_tensor *Y = cf_reshape(&ctx, X, 2, (int[]){6, 20});
        CHECK(Y->data == X->data && Y->ndim == 2 && Y->shape[0] == 6 && Y->numel == 120, "reshape must view x's data");
        perm_arg shapes[3] = {{2, {6, 20}, {0}}, {4, {2, 3, 4, 5}, {0}}, {1, {120}, {0}}};
        gc_input in = {x, 3, {2, 3, 20}, 1};
        for (int i = 0; i < 3; i++) gradcheck("reshape", f_reshape, &shapes[i], &in, 1, 1e-2f, 1e-2);
    }

    /* permute: every permutation of 2, 3 and 4 dims (gradchecks on a few), and a larger one on
     * the threaded path */
    int perms[24][CF_MAX_DIMS];
    int s2[2] = {3, 5}, s3[3] = {2, 3, 4}, s4[4] = {2, 3, 4, 5};
    int np = all_perms(2, perms);
    for (int i = 0; i < np; i++) check_permute(&ctx, 2, s2, perms[i], 1);
    np = all_perms(3, perms);
    for (int i = 0; i < np; i++) check_permute(&ctx, 3, s3, perms[i], 1);
    np = all_perms(4, perms);
    CHECK(np == 24, "24 permutations of 4 dims, got %d", np);
    for (int i = 0; i < np; i++) check_permute(&ctx, 4, s4, perms[i], i % 5 == 0);
    check_permute(&ctx, 4, (int[]){4, 64, 8, 32}, (int[]){0, 2, 1, 3}, 0);   /* [B,T,H,Dh] -> [B,H,T,Dh] */
    check_permute(&ctx, 3, (int[]){96, 40, 17}, (int[]){2, 0, 1}, 0);

    /* concat along every dim, including the sequence dim of [B, T, D] (memory + segment) */
    for (int d = 0; d < 3; d++) check_concat(&ctx, 3, (int[]){2, 3, 4}, d, 2, 1);
    for (int d = 0; d < 4; d++) check_concat(&ctx, 4, (int[]){2, 2, 3, 2}, d, 1, 1);
    check_concat(&ctx, 1, (int[]){5}, 0, 3, 1);
    check_concat(&ctx, 3, (int[]){4, 96, 64}, 1, 80, 0);    /* threaded path */
    check_concat(&ctx, 2, (int[]){300, 64}, 1, 128, 0);

    /* slice_last on its own */
    {
        int se[3][2] = {{0, 2}, {1, 3}, {3, 2}};
        gc_input in = {x, 3, {4, 6, 5}, 1};
        for (int i = 0; i < 3; i++) gradcheck("slice_last", f_slice, se[i], &in, 1, 1e-2f, 1e-2);
        gc_input in1 = {x, 1, {7}, 1};
        gradcheck("slice_last 1-D", f_slice, se[1], &in1, 1, 1e-2f, 1e-2);
    }

    /* sum and mean */
    {
        gc_input ins[2] = {{x, 1, {7}, 1}, {x, 3, {2, 3, 5}, 1}};
        for (int i = 0; i < 2; i++) {
            gradcheck("sum", f_sum, NULL, &ins[i], 1, 1e-2f, 1e-2);
            gradcheck("mean", f_mean, NULL, &ins[i], 1, 1e-2f, 1e-2);
        }
        check_reduce(&ctx);
    }

    cf_ctx_free(&ctx);
    TEST_MAIN_END();
}
