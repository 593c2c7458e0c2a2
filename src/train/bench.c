/* cformer bench: the training step's speed and memory on random bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "cformer/encdec.h"
#include "cformer/train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cf_bench_train_step(const cf_config *c, int steps) {
    const cf_train_config *t = &c->train;
    int B = t->batch_size, T = t->seq_len, V = c->model.vocab_size;
    cf_model m;
    if (cf_model_init(&m, &c->model, t->seed)) return -1;
    cf_model_set_checkpointing(&m, t->grad_checkpoint);
    cf_adamw opt;
    cf_adamw_init(&opt, &m.params);
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, cf_model_arena_bytes(&c->model, B, T), 1 << 20)) return -1;
    ctx.training = 1;
    ctx.seed = t->seed;
    int32_t *x = cf_xmalloc(sizeof(int32_t) * (size_t)B * T), *y = cf_xmalloc(sizeof(int32_t) * (size_t)B * T);
    cf_rng r;
    cf_rng_seed(&r, 1);
    for (int i = 0; i < B * T; i++) { x[i] = (int32_t)(cf_rng_next(&r) % V); y[i] = (int32_t)(cf_rng_next(&r) % V); }
    /* an encoder-decoder trains on B pairs of seq_len tokens a side: random bytes, no padding */
    int s2s = c->model.arch == CF_ARCH_ENCODER_DECODER;
    cf_s2s_batch sb = {0};
    if (s2s) {
        cf_s2s_batch_alloc(&sb, B, T);
        sb.B = B;
        sb.S = sb.T = T;
        for (int i = 0; i < B * T; i++) {
            int last = i % T == T - 1;
            sb.src[i] = last ? CF_TOK_EOS : x[i] % 256;
            sb.tgt_in[i] = i % T == 0 ? CF_TOK_BOS : y[i - 1] % 256;
            sb.tgt_out[i] = last ? CF_TOK_EOS : y[i] % 256;
            sb.src_keep[i] = 1;
        }
        sb.src_tokens = sb.tgt_tokens = (int64_t)B * T;
    }
    double *ms = cf_xmalloc(sizeof(double) * (size_t)steps);
    for (int s = -2; s < steps; s++) {                 /* two warm-up steps */
        double t0 = now_s();
        cf_ctx_begin(&ctx, (uint64_t)(s + 2));
        cf_params_zero_grad(&m.params);
        cf_tensor *loss = s2s ? cf_encdec_loss(&m, &ctx, &sb, c->model.label_smoothing, NULL)
                              : cf_model_loss(&m, &ctx, x, y, B, T, NULL);
        cf_backward(&ctx, loss, NULL);
        cf_clip_grad_norm(&m.params, t->grad_clip);
        cf_adamw_step(&opt, &m.params, t->lr, t);
        if (s >= 0) ms[s] = (now_s() - t0) * 1e3;
    }
    qsort(ms, (size_t)steps, sizeof(double), cmp_d);
    /* tokens of both sides for an encoder-decoder, as the trainer's tokens_per_s */
    double med = ms[steps / 2], tps = (s2s ? 2.0 : 1.0) * B * T / (med / 1e3);
    printf("BENCH train_step config=%s threads=%d B=%d T=%d step_ms=%.1f tokens_per_s=%.0f peak_rss_mb=%.0f arena_mb=%.0f\n",
           c->name, cf_num_threads(), B, T, med, tps, cf_peak_rss_mb(), ctx.arena.peak / 1048576.0);
    free(ms); free(x); free(y);
    cf_s2s_batch_free(&sb);
    cf_ctx_free(&ctx);
    cf_adamw_free(&opt);
    cf_model_free(&m);
    return tps;
}
