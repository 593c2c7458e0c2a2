/* Fused attention: time and memory of one forward + backward, causal, batch 1, 4 heads of 64, on
 * the fused qkv layout the model uses, for growing n. peak_mb is the step's arena peak (qkv, its
 * gradient, the output and its gradient, L, the workspaces): it must grow linearly in n.
 *
 * For comparison, the same attention materialised the textbook way (S and P as T x T matrices per
 * head, products by cf_gemm, P kept for backward as an autograd framework keeps it) at small n:
 * its tt_mb column is the T x T memory the tiled kernel never allocates.
 *
 * The fused op runs in fp32 and, up to n 2048, in bf16 too (ctx->bf16: the products' operands
 * rounded to bfloat16), the two timed in alternation so that drift on a busy machine hits both.
 *
 *   BENCH attention type=full n=... d_head=64 heads=4 fwd_bwd_ms=... peak_mb=... fwd_ms=... threads=... precision=fp32|bf16
 *   BENCH attention type=naive n=... d_head=64 heads=4 fwd_bwd_ms=... peak_mb=... tt_mb=... threads=... */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cformer/cformer.h"
#include "bench.h"

enum { H = 4, DH = 64, C = H * DH };

/* one step of the fused op in fp32 or bf16; returns fwd+bwd ms and sets *fwd and *peak */
static double fused_step(cf_ctx *ctx, int bf16, int n, const float *src, const float *dout, double *fwd,
                         size_t *peak) {
    ctx->bf16 = bf16;
    cf_ctx_begin(ctx, 0);
    ctx->arena.peak = 0;
    cf_tensor *qkv = cf_tensor_3d(ctx, 1, n, 3 * C);
    memcpy(qkv->data, src, sizeof(float) * (size_t)n * 3 * C);
    qkv->requires_grad = 1;
    cf_attn_opts o = {.causal = 1};
    double t1 = now_ms();
    cf_tensor *y = cf_attention_qkv(ctx, qkv, H, &o);
    double t2 = now_ms();
    cf_backward(ctx, y, dout);
    double t3 = now_ms();
    *fwd = t2 - t1;
    *peak = ctx->arena.peak;
    return t3 - t1;
}

/* Materialised causal attention on the qkv layout: P [H, n, n] is kept from forward to backward. */
static double naive_step(cf_ctx *ctx, int n, const float *src, const float *dout, size_t *peak, size_t *tt) {
    cf_ctx_begin(ctx, 0);
    ctx->arena.peak = 0;
    size_t nn = (size_t)n * n;
    float *qkv = cf_scratch(ctx, sizeof(float) * (size_t)n * 3 * C);   /* in the arena, as for the fused op */
    memcpy(qkv, src, sizeof(float) * (size_t)n * 3 * C);
    float scale = 1.0f / sqrtf((float)DH);
    float *o = cf_scratch(ctx, sizeof(float) * (size_t)n * C);
    float *dq = cf_scratch(ctx, sizeof(float) * (size_t)n * 3 * C);
    double t0 = now_ms();
    float *P = cf_scratch(ctx, sizeof(float) * H * nn);
    for (int h = 0; h < H; h++) {
        float *p = P + h * nn;
        const float *q = qkv + h * DH, *k = qkv + C + h * DH, *v = qkv + 2 * C + h * DH;
        cf_gemm(0, 1, n, n, DH, scale, q, 3 * C, k, 3 * C, 0, p, n);
        for (int i = 0; i < n; i++) {
            float *r = p + (size_t)i * n, mx = -INFINITY, s = 0;
            for (int j = 0; j <= i; j++) mx = fmaxf(mx, r[j]);
            for (int j = 0; j <= i; j++) s += r[j] = expf(r[j] - mx);
            for (int j = 0; j <= i; j++) r[j] /= s;
            for (int j = i + 1; j < n; j++) r[j] = 0;
        }
        cf_gemm(0, 0, n, DH, n, 1, p, n, v, 3 * C, 0, o + h * DH, C);
    }
    float *dP = cf_scratch(ctx, sizeof(float) * nn);
    memset(dq, 0, sizeof(float) * (size_t)n * 3 * C);
    for (int h = 0; h < H; h++) {
        const float *p = P + h * nn, *go = dout + h * DH;
        const float *q = qkv + h * DH, *k = qkv + C + h * DH, *v = qkv + 2 * C + h * DH;
        cf_gemm(1, 0, n, DH, n, 1, p, n, go, C, 0, dq + 2 * C + h * DH, 3 * C);    /* dV = P^T dO */
        cf_gemm(0, 1, n, n, DH, 1, go, C, v, 3 * C, 0, dP, n);                     /* dP = dO V^T */
        for (int i = 0; i < n; i++) {
            float *g = dP + (size_t)i * n, d = 0;
            const float *r = p + (size_t)i * n;
            for (int j = 0; j <= i; j++) d += r[j] * g[j];
            for (int j = 0; j < n; j++) g[j] = r[j] * (g[j] - d) * scale;          /* dS, scaled */
        }
        cf_gemm(0, 0, n, DH, n, 1, dP, n, k, 3 * C, 0, dq + h * DH, 3 * C);         /* dQ = dS K */
        cf_gemm(1, 0, n, DH, n, 1, dP, n, q, 3 * C, 0, dq + C + h * DH, 3 * C);     /* dK = dS^T Q */
    }
    double t1 = now_ms();
    *peak = ctx->arena.peak;
    *tt = (H + 1) * nn * sizeof(float);
    return t1 - t0;
}

int main(void) {
    static const int ns[] = {512, 1024, 2048, 4096, 8192};
    int nmax = 8192;
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, (size_t)4 << 30, 64)) {
        fprintf(stderr, "%s\n", cf_error_msg());
        return 1;
    }
    float *src = malloc(sizeof(float) * (size_t)nmax * 3 * C), *dout = malloc(sizeof(float) * (size_t)nmax * C);
    fill(src, (size_t)nmax * 3 * C, -1, 1, 1);
    fill(dout, (size_t)nmax * C, -1, 1, 2);
    int threads = cf_num_threads();
    double last = 0;
    for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
        int n = ns[t];
        /* 8192 costs about 4x 4096: only when that keeps this program within its time budget */
        if (n == 8192 && last > 1000) break;
        int reps = n <= 1024 ? 7 : n <= 2048 ? 5 : n <= 4096 ? 3 : 2, precisions = n <= 2048 ? 2 : 1;
        double ms[2][7], fwd[2][7], w;
        size_t peak[2] = {0, 0};
        for (int b = 0; b < precisions; b++) fused_step(&ctx, b, n, src, dout, &w, &peak[b]);   /* warm-up */
        for (int r = 0; r < reps; r++)
            for (int b = 0; b < precisions; b++) ms[b][r] = fused_step(&ctx, b, n, src, dout, &fwd[b][r], &peak[b]);
        for (int b = 0; b < precisions; b++) {
            qsort(ms[b], reps, sizeof *ms[b], cmp_double);
            qsort(fwd[b], reps, sizeof *fwd[b], cmp_double);
            printf("BENCH attention type=full n=%d d_head=%d heads=%d fwd_bwd_ms=%.2f peak_mb=%.2f fwd_ms=%.2f "
                   "threads=%d precision=%s\n",
                   n, DH, H, ms[b][reps / 2], peak[b] / 1048576.0, fwd[b][reps / 2], threads, b ? "bf16" : "fp32");
        }
        last = ms[0][reps / 2];
        fflush(stdout);
    }
    for (int n = 512; n <= 1024; n *= 2) {
        double ms[5];
        size_t peak = 0, tt = 0;
        naive_step(&ctx, n, src, dout, &peak, &tt);
        for (int r = 0; r < 5; r++) ms[r] = naive_step(&ctx, n, src, dout, &peak, &tt);
        qsort(ms, 5, sizeof *ms, cmp_double);
        printf("BENCH attention type=naive n=%d d_head=%d heads=%d fwd_bwd_ms=%.2f peak_mb=%.2f tt_mb=%.2f threads=%d\n",
               n, DH, H, ms[2], peak / 1048576.0, tt / 1048576.0, threads);
    }
    free(src);
    free(dout);
    cf_ctx_free(&ctx);
    return 0;
}
