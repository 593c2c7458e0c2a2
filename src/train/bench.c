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

/* one row of the profile: a table line and a BENCH line. par: the parallel regions in its time
 * (NULL: not counted), for the serial time (outside regions or in solo ones), the regions per step
 * and the share of the regions' thread time their threads spent working */
static void prof_row(const cf_config *c, const char *part, const char *dir, double ms, double step_ms, double calls,
                     double gflops, const cf_prof_par *par, int steps) {
    char cl[32] = "", gf[32] = "", se[32] = "", rg[32] = "", bu[32] = "";
    if (calls >= 0) snprintf(cl, sizeof cl, "%.0f", calls);
    if (gflops >= 0) snprintf(gf, sizeof gf, "%.1f", gflops);
    if (par) {
        snprintf(se, sizeof se, "%.2f", ms - par->wall * 1e3 / steps);
        snprintf(rg, sizeof rg, "%.0f", (par->regions + par->solo_regions) / steps);
        if (par->team > 0) snprintf(bu, sizeof bu, "%.0f", 100 * par->busy / par->team);
    }
    printf("  %-18s %-10s %9.2f %6.1f%% %8s %9s %9s %8s %6s\n", part, dir, ms, 100 * ms / step_ms, cl, gf, se, rg, bu);
    printf("BENCH profile config=%s threads=%d part=%s dir=%s ms=%.3f share=%.4f calls=%s gflops=%s serial_ms=%s "
           "regions=%s busy=%s\n", c->name, cf_num_threads(), part, dir[0] ? dir : "-", ms, ms / step_ms,
           cl[0] ? cl : "-", gf[0] ? gf : "-", se[0] ? se : "-", rg[0] ? rg : "-", bu[0] ? bu : "-");
}

typedef struct prof_line { int op, dir; double sec; } prof_line;

static int cmp_line(const void *a, const void *b) {
    double x = ((const prof_line *)a)->sec, y = ((const prof_line *)b)->sec;
    return (x < y) - (x > y);
}

/* The step's serial part: time outside parallel regions and in regions run by one thread. At one
 * thread the kernels take their one-thread paths without a region, so this is read at two threads
 * or more, where the one-thread step is about the serial part plus the threads' work in regions,
 * and Amdahl's law bounds the speed-up at 16 threads by the serial part's share of that. */
static void prof_serial(const cf_config *c, const cf_prof_par *par, int steps, double step_ms) {
    double outside = step_ms - (par->wall + par->solo) * 1e3 / steps, solo = par->solo * 1e3 / steps;
    double serial = outside + solo, regions = (par->regions + par->solo_regions) / steps;
    double busy = par->team > 0 ? par->busy / par->team : 0, work = serial + par->busy * 1e3 / steps;
    double s1 = work > 0 ? serial / work : 0, amdahl = 1 / (s1 + (1 - s1) / 16);
    printf("serial: %.2f ms/step (%.1f%%): %.2f outside parallel regions, %.2f in %.0f solo regions; "
           "%.0f regions/step of %.1f us on average, threads busy %.0f%% of their time in them\n", serial,
           100 * serial / step_ms, outside, solo, par->solo_regions / steps, regions,
           par->regions > 0 ? par->wall * 1e6 / par->regions : 0, 100 * busy);
    if (cf_num_threads() > 1)
        printf("  serial + the threads' work = %.2f ms (about the 1-thread step): serial %.2f%% of it, so at most "
               "%.1fx at 16 threads\n", work, 100 * s1, amdahl);
    else
        printf("  (at 1 thread the kernels run without regions: read the serial part at 2 threads or more)\n");
    printf("BENCH serial config=%s threads=%d step_ms=%.3f serial_ms=%.3f outside_ms=%.3f solo_ms=%.3f regions=%.0f "
           "solo_regions=%.0f region_us=%.2f busy=%.4f work_ms=%.3f serial_of_work=%.4f amdahl16=%.2f\n", c->name,
           cf_num_threads(), step_ms, serial, outside, solo, regions, par->solo_regions / steps,
           par->regions > 0 ? par->wall * 1e6 / par->regions : 0, busy, work, s1, amdahl);
}

/* The profile of `steps` timed steps, per step: every op kind and direction that ran, the
 * optimizer (clipping and the step), the rest of the step, then the synthetic batch and an
 * evaluation forward of the same batch, which are not part of the step; then the serial part.
 * step_par, opt_par: the parallel regions of the steps and of their optimizer parts. */
static void prof_print(const cf_config *c, const cf_prof *p, int steps, int B, int T, double step_s, double opt_s,
                       double data_s, double eval_ms, const cf_prof_par *step_par, const cf_prof_par *opt_par) {
    double step_ms = step_s * 1e3 / steps, ops_s = 0;
    prof_line lines[CF_OP_COUNT * CF_PROF_DIRS];
    cf_prof_par other = *step_par;
    cf_prof_par_sub(&other, opt_par);
    int nl = 0;
    for (int op = 0; op < CF_OP_COUNT; op++)
        for (int d = 0; d < CF_PROF_DIRS; d++)
            if (p->cell[op][d].calls) {
                lines[nl++] = (prof_line){op, d, p->cell[op][d].sec};
                ops_s += p->cell[op][d].sec;
                cf_prof_par_sub(&other, &p->cell[op][d].par);
            }
    qsort(lines, (size_t)nl, sizeof *lines, cmp_line);
    printf("profile config=%s threads=%d B=%d T=%d steps=%d step_ms=%.2f (mean; shares are of it)\n", c->name,
           cf_num_threads(), B, T, steps, step_ms);
    printf("  %-18s %-10s %9s %7s %8s %9s %9s %8s %6s\n", "part", "dir", "ms/step", "share", "calls", "GFLOP/s",
           "serial_ms", "regions", "busy%");
    for (int i = 0; i < nl; i++) {
        const cf_prof_cell *e = &p->cell[lines[i].op][lines[i].dir];
        double gf = e->flop_sec > 0 ? e->flops / e->flop_sec / 1e9 : -1;
        prof_row(c, cf_op_table[lines[i].op].name, cf_prof_dir_names[lines[i].dir], e->sec * 1e3 / steps, step_ms,
                 (double)e->calls / steps, gf, &e->par, steps);
    }
    prof_row(c, "optimizer", "", opt_s * 1e3 / steps, step_ms, -1, -1, opt_par, steps);
    prof_row(c, "other", "", (step_s - ops_s - opt_s) * 1e3 / steps, step_ms, -1, -1, &other, steps);
    prof_row(c, "data", "", data_s * 1e3 / steps, step_ms, -1, -1, NULL, steps);
    prof_row(c, "eval", "", eval_ms, step_ms, -1, -1, NULL, steps);
    prof_serial(c, step_par, steps, step_ms);
    fflush(stdout);
}

/* The median time of a forward pass of the batch without gradients, as evaluation runs it. */
static double eval_forward_ms(cf_model *m, cf_ctx *ctx, const cf_batch *batch) {
    double ms[3];
    int grad = ctx->grad_enabled, training = ctx->training;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now_s();
        cf_ctx_begin(ctx, 0);
        cf_model_batch_loss(m, ctx, batch);
        ms[r] = (now_s() - t0) * 1e3;
    }
    ctx->grad_enabled = grad;
    ctx->training = training;
    qsort(ms, 3, sizeof(double), cmp_d);
    return ms[1];
}

double cf_bench_train_step(const cf_config *c, int steps, int profile) {
    const cf_train_config *t = &c->train;
    int ranks = cf_dist_size();
    cf_dataset data;
    if (cf_dataset_open(&data, c, cf_dist_rank(), ranks, 0)) { cf_dataset_close(&data); return -1; }
    int B = data.rows, T = t->seq_len;                 /* this rank's rows */
    cf_model m;
    if (cf_model_init(&m, &c->model, t->seed)) { cf_dataset_close(&data); return -1; }
    cf_model_set_checkpointing(&m, t->grad_checkpoint);
    cf_model_set_recompute(&m, t->recompute);
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
    cf_prof *prof = profile ? cf_xcalloc(1, sizeof *prof) : NULL;
    double step_s = 0, opt_s = 0, data_s = 0;
    cf_prof_par step_par = {0}, opt_par = {0}, par0, par1, par2;
    for (int s = -2; s < steps; s++) {                 /* two warm-up steps */
        if (prof && s >= 0) {
            double d0 = now_s();
            data.kind->synthetic(&data, &batch);
            data_s += now_s() - d0;
            ctx.prof = prof;
        }
        cf_prof_par_count(prof && s >= 0);
        cf_prof_par_read(&par0);
        double t0 = now_s();
        cf_ctx_begin(&ctx, (uint64_t)(s + 2));
        cf_params_zero_grad(&m.params);
        if (sync) cf_grad_sync_arm(sync, &ctx);
        if (ctx.prof) cf_prof_start(prof);
        cf_tensor *loss = cf_model_batch_loss(&m, &ctx, &batch);
        cf_backward(&ctx, loss, sync ? &seed : NULL);
        double w = sync ? cf_grad_sync_finish(sync, &ctx) : 0;
        double o0 = now_s();
        cf_prof_par_read(&par1);
        cf_clip_grad_norm(&m.params, t->grad_clip);
        cf_optim_step(&opt, &m.params, t->lr, t);
        double t1 = now_s();
        cf_prof_par_read(&par2);
        cf_prof_par_sub(&par2, &par1);
        cf_prof_par_add(&opt_par, &par2);
        cf_prof_par_read(&par1);
        cf_prof_par_sub(&par1, &par0);
        cf_prof_par_add(&step_par, &par1);
        if (s >= 0) {
            ms[s] = (t1 - t0) * 1e3;
            wait_ms += w * 1e3;
            step_s += t1 - t0;
            opt_s += t1 - o0;
        }
    }
    ctx.prof = NULL;
    cf_prof_par_count(0);
    if (prof) cf_prof_flush(prof);
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
        /* after the figures above: evaluation's arena and RSS are not the training step's */
        if (prof) prof_print(c, prof, steps, B * ranks, T, step_s, opt_s, data_s, eval_forward_ms(&m, &ctx, &batch),
                              &step_par, &opt_par);
    }
    free(prof);
    cf_grad_sync_free(sync);
    free(ms);
    cf_dataset_close(&data);
    cf_ctx_free(&ctx);
    cf_optim_free(&opt);
    cf_model_free(&m);
    return tps;
}
