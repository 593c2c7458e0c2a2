/* Attention variants: time and memory of one forward + backward of the attention core (cf_attn_core)
 * for every variant, causal, batch 1, 4 heads of 64, on the fused qkv layout the model uses, for
 * n = 512 ... 16384. peak_mb is the arena peak of the step (qkv, its gradient, the output and its
 * gradient, whatever the variant keeps and its scratch): it must grow linearly in n for all of them.
 * Time must grow as the papers promise: linearly for window (w = 128), linear and performer
 * (m = 128), as n sqrt(n) for the sparse patterns (stride round(sqrt(n)), the config default; both
 * parts merged, the most work of the three combine modes; fixed with c = 8).
 *
 *   BENCH attention type=... n=... d_head=64 heads=4 fwd_bwd_ms=... peak_mb=... fwd_ms=... threads=... [settings]
 *
 * then one line per variant with the growth of the last doubling:
 *   BENCH attention_scaling type=... n=16384 time_ratio=... mem_ratio=...
 * fwd_bwd_ms is the fastest of a few repetitions (after a warm-up that pages the arena in): on a
 * shared machine the minimum is the figure least disturbed by other work. Full attention is
 * quadratic: its n = 16384 runs only when n = 8192 took under 4 s, so that the whole program stays
 * within about three minutes on two cores. Arguments, if any, name the variants to run
 * (attention_variants window linear). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cformer/cformer.h"
#include "bench.h"
#include "cformer/attention.h"

enum { H = 4, DH = 64, C = H * DH, NMAX = 16384 };

/* one forward + backward of layer a's core; returns its ms and sets *fwd and *peak */
static double step(cf_ctx *ctx, const cf_attn_layer *a, int n, const float *src, const float *dout, double *fwd,
                   size_t *peak) {
    cf_ctx_begin(ctx, 0);
    ctx->arena.peak = 0;
    cf_tensor *qkv = cf_tensor_3d(ctx, 1, n, 3 * C);
    memcpy(qkv->data, src, sizeof(float) * (size_t)n * 3 * C);
    qkv->requires_grad = 1;
    double t1 = now_ms();
    cf_tensor *y = cf_attn_core(ctx, a, qkv, NULL);
    double t2 = now_ms();
    cf_backward(ctx, y, dout);
    double t3 = now_ms();
    *fwd = t2 - t1;
    *peak = ctx->arena.peak;
    return t3 - t1;
}

static const char *settings(const cf_attn_config *c, char *buf, size_t n) {
    switch (c->type) {
    case CF_ATTN_WINDOW: snprintf(buf, n, " window=%d", c->window); break;
    case CF_ATTN_SPARSE_STRIDED: snprintf(buf, n, " stride=%d combine=%s", c->stride, cf_combine_names[c->combine]); break;
    case CF_ATTN_SPARSE_FIXED: snprintf(buf, n, " stride=%d c=%d combine=%s", c->stride, c->c, cf_combine_names[c->combine]); break;
    case CF_ATTN_PERFORMER: snprintf(buf, n, " features=%d kernel=%s", c->features, cf_favor_kernel_names[c->kernel]); break;
    default: buf[0] = 0;
    }
    return buf;
}

int main(int argc, char **argv) {
    static const int ns[] = {512, 1024, 2048, 4096, 8192, 16384};
    static const cf_attn_kind kinds[] = {CF_ATTN_FULL, CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED, CF_ATTN_SPARSE_FIXED,
                                         CF_ATTN_LINEAR, CF_ATTN_PERFORMER};
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, (size_t)8 << 30, 64)) {
        fprintf(stderr, "%s\n", cf_error_msg());
        return 1;
    }
    float *src = malloc(sizeof(float) * (size_t)NMAX * 3 * C), *dout = malloc(sizeof(float) * (size_t)NMAX * C);
    fill(src, (size_t)NMAX * 3 * C, -1, 1, 1);
    fill(dout, (size_t)NMAX * C, -1, 1, 2);
    int threads = cf_num_threads();
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        /* arguments, if any, name the variants to run */
        int wanted = argc < 2;
        for (int i = 1; i < argc; i++) wanted |= !strcmp(argv[i], cf_attn_kind_name(kinds[k]));
        if (!wanted) continue;
        double ms_prev = 0, mb_prev = 0, ms_last = 0, mb_last = 0;
        int n_last = 0;
        for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
            int n = ns[t];
            if (kinds[k] == CF_ATTN_FULL && n == 16384 && ms_last > 4000) {
                printf("# full attention: n=16384 skipped (n=8192 took %.0f ms; 16384 would take about 4x)\n", ms_last);
                break;
            }
            cf_attn_config c = {.type = kinds[k], .window = 128, .stride = (int)lround(sqrt((double)n)), .c = 8,
                                .features = 128, .redraw_every = 1000};
            c.combine = CF_COMBINE_MERGED;
            c.kernel = CF_FAVOR_SOFTMAX;
            /* only the core runs: the layer's projections are declared but never allocated */
            cf_params params;
            cf_params_init(&params);
            cf_attn_layer a;
            cf_attn_decl(&a, &params, "blocks.0.attn", C, H, 1, 0.0f, &c, 1);
            /* the sub-quadratic variants take well under a second at any n here: enough repetitions
             * that the minimum is a clean figure; full attention gets fewer at large n */
            int reps = n <= 2048 ? 9 : 7;
            if (kinds[k] == CF_ATTN_FULL && n >= 4096) reps = n == 4096 ? 3 : n == 8192 ? 2 : 1;
            double best = INFINITY, fbest = INFINITY, w;
            size_t peak = 0;
            step(&ctx, &a, n, src, dout, &w, &peak);      /* warm-up: page the arena in */
            for (int r = 0; r < reps; r++) {
                double f, ms = step(&ctx, &a, n, src, dout, &f, &peak);
                if (ms < best) best = ms;
                if (f < fbest) fbest = f;
            }
            char buf[96];
            printf("BENCH attention type=%s n=%d d_head=%d heads=%d fwd_bwd_ms=%.2f peak_mb=%.2f fwd_ms=%.2f threads=%d%s\n",
                   cf_attn_kind_name(kinds[k]), n, DH, H, best, peak / 1048576.0, fbest, threads,
                   settings(&c, buf, sizeof buf));
            fflush(stdout);
            cf_params_free(&params);
            ms_prev = ms_last;
            mb_prev = mb_last;
            ms_last = best;
            mb_last = peak / 1048576.0;
            n_last = n;
        }
        printf("BENCH attention_scaling type=%s n=%d time_ratio=%.2f mem_ratio=%.2f\n", cf_attn_kind_name(kinds[k]),
               n_last, ms_last / ms_prev, mb_last / mb_prev);
        fflush(stdout);
    }
    free(src);
    free(dout);
    cf_ctx_free(&ctx);
    return 0;
}
