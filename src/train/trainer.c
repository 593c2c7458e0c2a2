/* The training loop: sample a batch, forward, backward, clip, AdamW; log, evaluate, stop on NaN.
 * Everything random is a function of (seed, step), so a run is bitwise repeatable at a fixed
 * thread count. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "cformer/train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = 0; if (mkdir(buf, 0755) && errno != EEXIST) return -1; *p = '/'; }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

typedef struct run {
    const cf_config *c;
    cf_model   model;
    cf_adamw   opt;
    cf_ctx     ctx, eval_ctx;
    cf_bytes   train, valid, test;
    cf_sampler sampler;
    int32_t   *x, *y;
    FILE      *log;
    char       dir[1024];
    double     t_start;
    int64_t    tokens_seen;
    double     best_valid;
} run;

static void run_free(run *r) {
    cf_model_free(&r->model);
    cf_adamw_free(&r->opt);
    cf_ctx_free(&r->ctx);
    cf_ctx_free(&r->eval_ctx);
    cf_bytes_close(&r->train);
    cf_bytes_close(&r->valid);
    cf_bytes_close(&r->test);
    free(r->x); free(r->y);
    if (r->log) fclose(r->log);
}

static int run_open(run *r, const cf_config *c, const cf_train_opts *o) {
    memset(r, 0, sizeof *r);
    r->c = c;
    r->best_valid = INFINITY;
    if (cf_bytes_open(&r->train, c->data.train)) return -1;
    if (c->data.valid[0] && cf_bytes_open(&r->valid, c->data.valid)) return -1;
    if (c->data.test[0] && cf_bytes_open(&r->test, c->data.test)) return -1;
    int B = c->train.batch_size, T = c->train.seq_len;
    if (cf_sampler_init(&r->sampler, &r->train, B, T, c->train.sampling == CF_SAMPLE_ORDERED, c->train.seed)) return -1;
    if (cf_model_init(&r->model, &c->model, c->train.seed)) return -1;
    cf_model_set_checkpointing(&r->model, c->train.grad_checkpoint);
    cf_adamw_init(&r->opt, &r->model.params);
    if (cf_ctx_init(&r->ctx, cf_model_arena_bytes(&c->model, B, T), 1 << 20)) return -1;
    r->ctx.seed = c->train.seed;
    r->ctx.training = 1;
    if (cf_ctx_init(&r->eval_ctx, cf_model_arena_bytes(&c->model, B, c->eval.ctx), 1 << 20)) return -1;
    r->eval_ctx.grad_enabled = 0;
    r->x = cf_xmalloc(sizeof(int32_t) * (size_t)B * T);
    r->y = cf_xmalloc(sizeof(int32_t) * (size_t)B * T);

    if (o->out_dir) snprintf(r->dir, sizeof r->dir, "%s", o->out_dir);
    else {
        char stamp[32];
        time_t t = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&t));
        snprintf(r->dir, sizeof r->dir, "runs/%s-%s", c->name[0] ? c->name : "run", stamp);
    }
    if (mkdir_p(r->dir) || access(r->dir, W_OK))
        return cf_set_error("--out: cannot create or write the run directory \"%s\": %s", r->dir, strerror(errno));
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", r->dir);
    char *json = cf_config_to_json(c);
    FILE *f = fopen(path, "w");
    if (!f || fputs(json, f) < 0 || fclose(f)) { free(json); return cf_set_error("%s: cannot write: %s", path, strerror(errno)); }
    free(json);
    snprintf(path, sizeof path, "%s/log.jsonl", r->dir);
    r->log = fopen(path, "a");
    if (!r->log) return cf_set_error("%s: cannot write: %s", path, strerror(errno));
    return 0;
}

/* validation during training reads at most train.eval_tokens bytes (0 = the whole split) */
static int evaluate(run *r, const cf_bytes *b, size_t limit, cf_eval_result *res) {
    const cf_config *c = r->c;
    size_t n = limit && limit < b->n ? limit : b->n;
    return cf_eval_bpb(&r->model, &r->eval_ctx, b->data, n, c->eval.ctx, c->eval.stride, c->train.batch_size, res);
}

static void log_eval(run *r, int step, const char *split, const cf_eval_result *e) {
    fprintf(r->log, "{\"step\": %d, \"split\": \"%s\", \"eval_bpb\": %.6f, \"bytes\": %lld, \"elapsed_s\": %.3f}\n",
            step, split, e->bpb, (long long)e->bytes, now_s() - r->t_start);
    fflush(r->log);
    fprintf(stderr, "%sstep %d  %s bpb %.4f  (%lld bytes, %.1fs)\n", isatty(2) ? "\r\033[K" : "", step, split, e->bpb,
            (long long)e->bytes, e->seconds);
}

/* one optimiser step; returns the mean loss over the micro-batches */
static float train_step(run *r, int s, float lr, float *grad_norm) {
    const cf_train_config *t = &r->c->train;
    int B = t->batch_size, T = t->seq_len;
    cf_params_zero_grad(&r->model.params);
    float seed = 1.0f / (float)t->grad_accum, total = 0;
    for (int a = 0; a < t->grad_accum; a++) {
        uint64_t index = (uint64_t)s * t->grad_accum + a;
        cf_sampler_batch(&r->sampler, index, r->x, r->y);
        cf_ctx_begin(&r->ctx, index);
        cf_tensor *loss = cf_model_loss(&r->model, &r->ctx, r->x, r->y, B, T, NULL);
        total += loss->data[0];
        if (!isfinite(loss->data[0])) return loss->data[0];
        cf_backward(&r->ctx, loss, &seed);
    }
    *grad_norm = cf_clip_grad_norm(&r->model.params, t->grad_clip);
    if (!isfinite(*grad_norm)) return *grad_norm;
    cf_adamw_step(&r->opt, &r->model.params, lr, t);
    return total / (float)t->grad_accum;
}

int cf_train(const cf_config *c, const cf_train_opts *o) {
    run r;
    if (run_open(&r, c, o)) { run_free(&r); return -1; }
    const cf_train_config *t = &c->train;
    int last = o->until > 0 && o->until < t->steps ? o->until : t->steps;
    int tty = isatty(2) && !o->quiet, rc = 0;
    int64_t tokens_per_step = (int64_t)t->batch_size * t->seq_len * t->grad_accum;
    fprintf(stderr, "cformer: training %s: %lld parameters, %d steps of %lld tokens, %d threads, run %s\n",
            c->name, (long long)r.model.params.numel, t->steps, (long long)tokens_per_step, cf_num_threads(), r.dir);
    r.t_start = now_s();
    double t_window = r.t_start;
    int window_steps = 0;
    for (int s = 0; s < last; s++) {
        float lr = cf_lr_at(t, s), gnorm = 0;
        float loss = train_step(&r, s, lr, &gnorm);
        if (!isfinite(loss)) {
            rc = cf_set_error("step %d: loss is %s (gradient norm %g); stopping, the last checkpoint is kept", s + 1,
                              isnan(loss) ? "NaN" : "infinite", gnorm);
            break;
        }
        r.tokens_seen += tokens_per_step;
        window_steps++;
        int step = s + 1;
        if (step % t->log_every == 0 || step == last) {
            double now = now_s(), tps = window_steps * tokens_per_step / (now - t_window);
            fprintf(r.log, "{\"step\": %d, \"loss\": %.6f, \"bpb\": %.6f, \"lr\": %.6g, \"grad_norm\": %.4f, "
                           "\"tokens_per_s\": %.0f, \"elapsed_s\": %.3f}\n",
                    step, loss, loss / M_LN2, lr, gnorm, tps, now - r.t_start);
            fflush(r.log);
            double left = (last - step) * tokens_per_step / tps;
            fprintf(stderr, "%sstep %d/%d  loss %.4f  bpb %.4f  lr %.2e  %.0f tok/s  %.0fs left%s",
                    tty ? "\r\033[K" : "", step, last, loss, loss / M_LN2, lr, tps, left, tty ? "" : "\n");
            t_window = now;
            window_steps = 0;
        }
        if (r.valid.n && t->eval_every > 0 && step % t->eval_every == 0 && step != last) {
            cf_eval_result e;
            if ((rc = evaluate(&r, &r.valid, (size_t)t->eval_tokens, &e))) break;
            if (e.bpb < r.best_valid) r.best_valid = e.bpb;
            log_eval(&r, step, "valid", &e);
        }
    }
    if (!rc) {
        if (tty) fputc('\n', stderr);
        cf_eval_result e;
        if (r.valid.n && !(rc = evaluate(&r, &r.valid, 0, &e))) {
            log_eval(&r, last, "valid", &e);
            printf("BENCH eval split=valid bpb=%.4f bytes=%lld ctx=%d stride=%d tokens_per_s=%.0f\n", e.bpb,
                   (long long)e.bytes, c->eval.ctx, c->eval.stride, e.bytes / e.seconds);
        }
        if (!rc && last == t->steps && r.test.n && !(rc = evaluate(&r, &r.test, 0, &e))) {
            log_eval(&r, last, "test", &e);
            printf("BENCH eval split=test bpb=%.4f bytes=%lld ctx=%d stride=%d tokens_per_s=%.0f\n", e.bpb,
                   (long long)e.bytes, c->eval.ctx, c->eval.stride, e.bytes / e.seconds);
        }
    }
    run_free(&r);
    return rc;
}
