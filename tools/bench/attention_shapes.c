/* Fused causal attention at the shapes of the issue-17 training steps, forward and backward timed
 * apart, in fp32 and bf16 timed in alternation (so that drift on a busy machine hits both):
 *   small:  B 8, T 256, 4 heads of 64 (enwik8-small)
 *   medium: B 4, T 512, 8 heads of 64 (6L d512)
 * GFLOP/s counts what the profiler counts (src/ops/op_table.c): 4 B pairs C forward and 10 B pairs
 * C backward, pairs the visible (query, key) pairs. Medians of ROUNDS (argument 1, default 7); a
 * second argument, fp32 or bf16, times that precision alone.
 *
 *   BENCH attention_shape shape=small B=8 T=256 heads=4 precision=fp32 threads=2 fwd_ms=... bwd_ms=...
 *         fwd_gflops=... bwd_gflops=... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cformer/cformer.h"
#include "bench.h"

enum { DH = 64, MAX_ROUNDS = 31 };

/* one forward and backward; the times go to *fwd and *bwd */
static void step(cf_ctx *ctx, int bf16, int B, int T, int H, const float *src, const float *dout, double *fwd,
                 double *bwd) {
    int c = H * DH;
    ctx->bf16 = bf16;
    cf_ctx_begin(ctx, 0);
    cf_tensor *qkv = cf_tensor_3d(ctx, B, T, 3 * c);
    memcpy(qkv->data, src, sizeof(float) * (size_t)B * T * 3 * c);
    qkv->requires_grad = 1;
    cf_attn_opts o = {.causal = 1};
    double t0 = now_ms();
    cf_tensor *y = cf_attention_qkv(ctx, qkv, H, &o);
    double t1 = now_ms();
    cf_backward(ctx, y, dout);
    double t2 = now_ms();
    *fwd = t1 - t0;
    *bwd = t2 - t1;
}

int main(int argc, char **argv) {
    static const struct { const char *name; int B, T, H; } shapes[] = {{"small", 8, 256, 4}, {"medium", 4, 512, 8}};
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    if (rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "attention_shapes: rounds %s outside [1, %d]\n", argv[1], MAX_ROUNDS);
        return 2;
    }
    int p0 = 0, p1 = 2;
    if (argc > 2 && !strcmp(argv[2], "fp32")) p1 = 1;
    else if (argc > 2 && !strcmp(argv[2], "bf16")) p0 = 1;
    else if (argc > 2) {
        fprintf(stderr, "attention_shapes: precision %s is not fp32 or bf16\n", argv[2]);
        return 2;
    }
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, (size_t)1 << 30, 64)) {
        fprintf(stderr, "%s\n", cf_error_msg());
        return 1;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int B = shapes[s].B, T = shapes[s].T, H = shapes[s].H, c = H * DH;
        size_t n = (size_t)B * T;
        float *src = malloc(sizeof(float) * n * 3 * c), *dout = malloc(sizeof(float) * n * c);
        fill(src, n * 3 * c, -1, 1, 1);
        fill(dout, n * c, -1, 1, 2);
        double fwd[2][MAX_ROUNDS], bwd[2][MAX_ROUNDS], w0, w1;
        for (int p = p0; p < p1; p++) step(&ctx, p, B, T, H, src, dout, &w0, &w1);   /* warm-up */
        for (int r = 0; r < rounds; r++)
            for (int p = p0; p < p1; p++) step(&ctx, p, B, T, H, src, dout, &fwd[p][r], &bwd[p][r]);
        double pairs = (double)T * (T + 1) / 2;
        for (int p = p0; p < p1; p++) {
            qsort(fwd[p], rounds, sizeof(double), cmp_double);
            qsort(bwd[p], rounds, sizeof(double), cmp_double);
            double f = fwd[p][rounds / 2], b = bwd[p][rounds / 2];
            printf("BENCH attention_shape shape=%s B=%d T=%d heads=%d precision=%s threads=%d fwd_ms=%.3f bwd_ms=%.3f "
                   "fwd_gflops=%.1f bwd_gflops=%.1f\n",
                   shapes[s].name, B, T, H, p ? "bf16" : "fp32", cf_num_threads(), f, b,
                   4.0 * B * pairs * c / f * 1e-6, 10.0 * B * pairs * c / b * 1e-6);
        }
        fflush(stdout);
        free(src);
        free(dout);
    }
    cf_ctx_free(&ctx);
    return 0;
}
