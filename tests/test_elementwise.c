/* add, mul, scale: gradient checks, including broadcasting of the second operand; and, at shapes
 * large enough to run threaded (one long row, a few long rows, many short ones), add and mul and
 * their gradients against a plain loop, bit for bit at 1 and 3 threads. */
#include <stdlib.h>
#include <string.h>
#include "gradcheck.h"

static cf_tensor *f_add(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_add(c, in[0], in[1]); }
static cf_tensor *f_mul(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_mul(c, in[0], in[1]); }
static cf_tensor *f_scale(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_scale(c, in[0], -1.7f); }
/* fan-out: x used twice must accumulate both contributions */
static cf_tensor *f_fan(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_mul(c, cf_add(c, in[0], in[0]), in[0]); }

/* y = a op b (b broadcast over rows of a), then backward with output gradient g: y, da, db against
 * the plain loops (db summed over rows in ascending order, as the op does) */
static void check_large(int mul, int rows, int nb, int threads) {
    int64_t n = (int64_t)rows * nb;
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * nb), *g = malloc(sizeof(float) * n);
    t_fill_uniform(a, n, -1, 1, 11);
    t_fill_uniform(b, nb, -1, 1, 12);
    t_fill_uniform(g, n, -1, 1, 13);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)64 << 20, 16) == 0, "%s", cf_error_msg());
    int saved = cf_num_threads();
    cf_set_num_threads(threads);
    cf_ctx_begin(&ctx, 0);
    cf_tensor *ta = cf_tensor_leaf(&ctx, a, 2, (int[]){rows, nb}, 1), *tb = cf_tensor_leaf(&ctx, b, 1, (int[]){nb}, 1);
    cf_tensor *y = mul ? cf_mul(&ctx, ta, tb) : cf_add(&ctx, ta, tb);
    cf_backward(&ctx, y, g);
    int64_t bad_y = 0, bad_da = 0, bad_db = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < nb; i++) {
            int64_t e = r * nb + i;
            float want = mul ? a[e] * b[i] : a[e] + b[i], dwant = mul ? g[e] * b[i] : g[e];
            bad_y += memcmp(&y->data[e], &want, sizeof want) != 0;
            bad_da += memcmp(&ta->grad[e], &dwant, sizeof dwant) != 0;
        }
    for (int64_t i = 0; i < nb; i++) {
        float s = 0;
        for (int64_t r = 0; r < rows; r++) s += mul ? g[r * nb + i] * a[r * nb + i] : g[r * nb + i];
        bad_db += memcmp(&tb->grad[i], &s, sizeof s) != 0;
    }
    CHECK(bad_y == 0 && bad_da == 0 && bad_db == 0, "%s of [%d, %d] and [%d] at %d threads: %lld, %lld, %lld of y, da, db differ",
          mul ? "mul" : "add", rows, nb, nb, threads, (long long)bad_y, (long long)bad_da, (long long)bad_db);
    cf_set_num_threads(saved);
    cf_ctx_free(&ctx);
    free(a);
    free(b);
    free(g);
}

int main(void) {
    float a[2 * 3 * 4], b[3 * 4], b2[2 * 3 * 4];
    t_fill_uniform(a, 24, -1, 1, 1);
    t_fill_uniform(b, 12, -1, 1, 2);
    t_fill_uniform(b2, 24, -1, 1, 3);
    gc_input same[2] = {{a, 3, {2, 3, 4}, 1}, {b2, 3, {2, 3, 4}, 1}};
    gc_input bcast[2] = {{a, 3, {2, 3, 4}, 1}, {b, 2, {3, 4}, 1}};
    gradcheck("add", f_add, NULL, same, 2, 1e-2f, 1e-2);
    gradcheck("add broadcast", f_add, NULL, bcast, 2, 1e-2f, 1e-2);
    gradcheck("mul", f_mul, NULL, same, 2, 1e-2f, 1e-2);
    gradcheck("mul broadcast", f_mul, NULL, bcast, 2, 1e-2f, 1e-2);
    gradcheck("scale", f_scale, NULL, same, 1, 1e-2f, 1e-2);
    gradcheck("fan-out", f_fan, NULL, same, 1, 1e-2f, 1e-2);
    static const int shapes[][2] = {{1, 150000}, {5, 27000}, {3000, 48}};
    for (int m = 0; m < 2; m++)
        for (int k = 0; k < 3; k++)
            for (int t = 1; t <= 3; t += 2) check_large(m, shapes[k][0], shapes[k][1], t);
    TEST_MAIN_END();
}
