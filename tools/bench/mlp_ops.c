/* The feed-forward's ops one at a time, forward and backward timed apart, at the enwik8-small
 * shape (rows = B T = 2048, d 256, d_ff 1024): linear + GELU fused, the same linear alone, GELU
 * alone, and layernorm on [rows, d]. The fused op's backward is the linear's backward plus one
 * elementwise pass (dh = dy gelu'(h)); comparing the three says which part a slow
 * `linear_gelu backward` in `cformer bench --profile` comes from. fp32 and bf16 in alternation;
 * medians of ROUNDS (argument 1, default 7); the rows may be given as argument 2.
 *
 *   BENCH mlp_op op=linear_gelu precision=fp32 threads=2 rows=2048 fwd_ms=... bwd_ms=... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cformer/cformer.h"
#include "bench.h"

enum { D = 256, DFF = 1024, MAX_ROUNDS = 31 };
enum { LINEAR_GELU, LINEAR, GELU, LAYERNORM, N_OPS };
static const char *const NAMES[N_OPS] = {"linear_gelu", "linear", "gelu", "layernorm"};

typedef struct inputs { float *x, *h, *w, *b, *g, *gb, *dy; } inputs;

/* one forward and backward of op; the times go to *fwd and *bwd */
static void step(cf_ctx *ctx, int op, int bf16, int rows, const inputs *in, double *fwd, double *bwd) {
    ctx->bf16 = bf16;
    cf_ctx_begin(ctx, 0);
    int wide = op == GELU;
    cf_tensor *x = cf_tensor_leaf(ctx, wide ? in->h : in->x, 2, (int[]){rows, wide ? DFF : D}, 1);
    cf_tensor *w = cf_tensor_leaf(ctx, in->w, 2, (int[]){DFF, D}, 1);
    cf_tensor *b = cf_tensor_leaf(ctx, in->b, 1, (int[]){DFF}, 1);
    cf_tensor *g = cf_tensor_leaf(ctx, in->g, 1, (int[]){D}, 1);
    cf_tensor *gb = cf_tensor_leaf(ctx, in->gb, 1, (int[]){D}, 1);
    double t0 = now_ms();
    cf_tensor *y = op == LINEAR_GELU ? cf_linear_gelu(ctx, x, w, b)
                 : op == LINEAR      ? cf_linear(ctx, x, w, b)
                 : op == GELU        ? cf_gelu(ctx, x)
                                     : cf_layernorm(ctx, x, g, gb, 1e-5f);
    double t1 = now_ms();
    cf_backward(ctx, y, in->dy);
    double t2 = now_ms();
    *fwd = t1 - t0;
    *bwd = t2 - t1;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 7, rows = argc > 2 ? atoi(argv[2]) : 2048;
    if (rounds < 1 || rounds > MAX_ROUNDS || rows < 1 || rows > (1 << 20)) {
        fprintf(stderr, "mlp_ops: usage: mlp_ops [ROUNDS 1..%d] [ROWS]\n", MAX_ROUNDS);
        return 2;
    }
    inputs in;
    size_t nx = (size_t)rows * D, nh = (size_t)rows * DFF;
    in.x = malloc(nx * sizeof(float));
    in.h = malloc(nh * sizeof(float));
    in.w = malloc((size_t)DFF * D * sizeof(float));
    in.b = malloc(DFF * sizeof(float));
    in.g = malloc(D * sizeof(float));
    in.gb = malloc(D * sizeof(float));
    in.dy = malloc(nh * sizeof(float));
    fill(in.x, nx, -1, 1, 1);
    fill(in.h, nh, -1, 1, 2);
    fill(in.w, (size_t)DFF * D, -1, 1, 3);
    fill(in.b, DFF, -1, 1, 4);
    fill(in.g, D, -1, 1, 5);
    fill(in.gb, D, -1, 1, 6);
    fill(in.dy, nh, -1, 1, 7);
    for (size_t i = 0; i < (size_t)DFF * D; i++) in.w[i] *= 0.06f;
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, ((size_t)64 << 20) + (nh + nx) * 24, 1 << 10)) {
        fprintf(stderr, "mlp_ops: %s\n", cf_error_msg());
        return 2;
    }
    static double fwd[N_OPS][2][MAX_ROUNDS], bwd[N_OPS][2][MAX_ROUNDS];
    double f, g;
    for (int op = 0; op < N_OPS; op++)
        for (int p = 0; p < 2; p++) step(&ctx, op, p, rows, &in, &f, &g);   /* warm-up */
    for (int r = 0; r < rounds; r++)
        for (int op = 0; op < N_OPS; op++)
            for (int p = 0; p < 2; p++) step(&ctx, op, p, rows, &in, &fwd[op][p][r], &bwd[op][p][r]);
    for (int op = 0; op < N_OPS; op++)
        for (int p = 0; p < 2; p++) {
            if (p && (op == GELU || op == LAYERNORM)) continue;   /* no products: bf16 changes nothing */
            qsort(fwd[op][p], (size_t)rounds, sizeof(double), cmp_double);
            qsort(bwd[op][p], (size_t)rounds, sizeof(double), cmp_double);
            printf("BENCH mlp_op op=%s precision=%s threads=%d rows=%d fwd_ms=%.3f bwd_ms=%.3f\n", NAMES[op],
                   p ? "bf16" : "fp32", cf_num_threads(), rows, fwd[op][p][rounds / 2], bwd[op][p][rounds / 2]);
        }
    cf_ctx_free(&ctx);
    free(in.x); free(in.h); free(in.w); free(in.b); free(in.g); free(in.gb); free(in.dy);
    return 0;
}
