/* cformer bench: the training step's speed and memory on random tokens. Under mpirun (make MPI=1,
 * dist.h) every rank trains its batch_size / ranks rows of the global batch with the gradient
 * all-reduce of the trainer, and rank 0 prints the figures of the whole job. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "cformer/dist.h"
#include "cformer/kernels.h"
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
    int ranks = cf_dist_size();
    cf_dataset data;
    if (cf_dataset_open(&data, c, cf_dist_rank(), ranks, 0)) { cf_dataset_close(&data); return -1; }
    int B = data.rows, T = t->seq_len;                 /* this rank's rows */
    cf_model m;
    if (cf_model_init(&m, &c->model, t->seed)) { cf_dataset_close(&data); return -1; }
    cf_model_set_checkpointing(&m, t->grad_checkpoint);
    cf_optim opt;
    cf_optim_init(&opt, t->optimizer, &m.params);
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, cf_model_arena_bytes(&c->model, B, T), 1 << 20)) return -1;
    ctx.training = 1;
    ctx.seed = t->seed;
    ctx.bf16 = t->precision == CF_PRECISION_BF16;
    cf_batch batch;
    data.kind->synthetic(&data, &batch);
    cf_grad_sync *sync = ranks > 1 ? cf_grad_sync_new(&m.params, cf_grad_sync_default_bytes()) : NULL;
    float seed = 1.0f / (float)ranks;                  /* the sum over ranks is the global mean's gradient */
    double *ms = cf_xmalloc(sizeof(double) * (size_t)steps), wait_ms = 0;
    for (int s = -2; s < steps; s++) {                 /* two warm-up steps */
        double t0 = now_s();
        cf_ctx_begin(&ctx, (uint64_t)(s + 2));
        cf_params_zero_grad(&m.params);
        if (sync) cf_grad_sync_arm(sync, &ctx);
        cf_tensor *loss = cf_model_batch_loss(&m, &ctx, &batch);
        cf_backward(&ctx, loss, sync ? &seed : NULL);
        double w = sync ? cf_grad_sync_finish(sync, &ctx) : 0;
        cf_clip_grad_norm(&m.params, t->grad_clip);
        cf_optim_step(&opt, &m.params, t->lr, t);
        if (s >= 0) { ms[s] = (now_s() - t0) * 1e3; wait_ms += w * 1e3; }
    }
    qsort(ms, (size_t)steps, sizeof(double), cmp_d);
    /* the tokens of the whole job (both sides of a pair), as the trainer's tokens_per_s */
    double med = ms[steps / 2], tps = (double)batch.tokens / (med / 1e3);
    if (cf_dist_rank() == 0) {
        printf("BENCH train_step config=%s threads=%d B=%d T=%d precision=%s kernel=%s attention_kernel=%s step_ms=%.1f "
               "tokens_per_s=%.0f peak_rss_mb=%.0f arena_mb=%.0f\n", c->name, cf_num_threads(), B * ranks, T,
               cf_precision_names[t->precision], ctx.bf16 ? cf_gemm_bf16_kernel() : cf_gemm_isa(),
               ctx.bf16 ? cf_attn_bf16_kernel_name() : "fp32", med, tps, cf_peak_rss_mb(), ctx.arena.peak / 1048576.0);
        /* allreduce_ms: per step (mean), the time inside MPI for the gradient: the wait after backward
         * for the reductions still running plus the calls that start and progress them during
         * backward, i.e. the part of the all-reduce that computation did not hide. step_ms is rank
         * 0's median step. */
        if (cf_dist_mpi_built())
            printf("BENCH mpi config=%s ranks=%d threads=%d B=%d T=%d step_ms=%.1f tokens_per_s=%.0f allreduce_ms=%.2f "
                   "buckets=%d\n", c->name, ranks, cf_num_threads(), B * ranks, T, med, tps, wait_ms / steps,
                   sync ? cf_grad_sync_buckets(sync) : 0);
        fflush(stdout);
    }
    cf_grad_sync_free(sync);
    free(ms);
    cf_dataset_close(&data);
    cf_ctx_free(&ctx);
    cf_optim_free(&opt);
    cf_model_free(&m);
    return tps;
}
