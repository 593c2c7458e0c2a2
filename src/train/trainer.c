/* The training loop: sample a batch, forward, backward, clip, optimizer step; log, evaluate,
 * checkpoint, stop on NaN or on SIGINT/SIGTERM.
 *
 * Everything random is a function of (seed, batch index), so a run is bitwise repeatable at a fixed
 * thread count, and a run resumed from a checkpoint (weights, optimizer state and step, seed, next
 * batch index) continues exactly as if it had never stopped. A resume is checked completely
 * (checkpoint, model shape, step range) before anything is written, so bad input changes nothing
 * on disk.
 *
 * Under MPI (dist.h) every rank runs this loop on its rows of each global batch; the gradient is
 * summed across ranks during backward, so every rank takes the same optimizer step. Rank 0 alone
 * touches the run directory (config, log, checkpoints, resume) and prints progress; it broadcasts
 * what it loads on resume and gathers the recurrent state of every rank's streams when it saves.
 * Errors that every rank meets at the same point (set-up, a NaN loss) end every rank with one
 * message; an error of one rank in the loop stops the job at once (cf_dist_abort) so that no rank
 * waits for ever. Debugging aids (environment):
 *   CF_MPI_CHECK_EVERY=k    compare a parameter checksum across ranks every k steps (always at a
 *                           checkpoint); a mismatch stops the job naming the ranks
 *   CF_DIST_FAIL=r:s[:how]  fault injection for tests: rank r fails after step s, how = "error"
 *                           (an error in the loop, the default), "exit" (the process dies with
 *                           status 3, no message) or "perturb" (rank r's weights change, which the
 *                           next checksum comparison finds) */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "cformer/checkpoint.h"
#include "cformer/dist.h"
#include "cformer/train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int mkdir_p(const char *path) {
    char buf[1200];
    if ((size_t)snprintf(buf, sizeof buf, "%s", path) >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = 0; if (mkdir(buf, 0755) && errno != EEXIST) return -1; *p = '/'; }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

/* ---- signals: finish the step, checkpoint, stop --------------------------------------------------
 * The handler only records the signal; the loop looks at it after each step. It also puts the
 * default action back for both signals (sigaction is async-signal-safe), so a second SIGINT or
 * SIGTERM kills at once; the atomic saves keep the last checkpoint intact whatever it interrupts.
 * Both signals are blocked while the handler runs, so the second cannot slip in before the reset. */
static atomic_int stop_requested;    /* lock-free, so async-signal-safe */
static struct sigaction default_action;

static void on_stop_signal(int sig) {
    /* Each OpenMP thread may take one of the two signals before either handler has reset the
     * actions: whichever handler comes second dies by its own signal, as a second signal should. */
    if (atomic_exchange(&stop_requested, sig)) {
        sigaction(sig, &default_action, NULL);
        raise(sig);
        return;
    }
    sigaction(SIGINT, &default_action, NULL);
    sigaction(SIGTERM, &default_action, NULL);
}

typedef struct { struct sigaction old_int, old_term; } saved_handlers;

static void install_handlers(saved_handlers *h) {
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sa.sa_flags = SA_RESTART;   /* a checkpoint write in progress is not cut short by EINTR */
    stop_requested = 0;
    sigaction(SIGINT, &sa, &h->old_int);
    sigaction(SIGTERM, &sa, &h->old_term);
}

static void restore_handlers(const saved_handlers *h) {
    sigaction(SIGINT, &h->old_int, NULL);
    sigaction(SIGTERM, &h->old_term, NULL);
}

/* ---- the run ------------------------------------------------------------------------------------ */
typedef struct run {
    cf_config  cfg;            /* the effective config: the user's, with the checkpoint's seed on resume */
    const cf_config *c;        /* = &cfg */
    cf_model   model;
    cf_optim   opt;
    cf_ctx     ctx, eval_ctx;
    cf_dataset data;           /* byte files or pair files, as model.arch reads them */
    FILE      *log;
    char       dir[1024], ckpt_dir[1100];
    char       resume_path[1200], resume_dir[1024];   /* "" when not resuming */
    double     t_start;        /* now_s() at step 0, so elapsed_s continues across resumes */
    cf_train_state st;         /* step, tokens, RNG position, best validation bpb */
    int64_t    saved_step;     /* step of the last checkpoint written by this process, -1: none */
    int        rank, size;     /* this process in the MPI job (dist.h): rank 0 of 1 without MPI */
    int        rows;           /* batch rows this rank trains on: train.batch_size / size */
    cf_grad_sync *sync;        /* the gradient all-reduce; NULL on one rank */
    double     allreduce_s;    /* seconds the last step spent waiting for gradient reductions */
} run;

static void run_free(run *r) {
    cf_model_free(&r->model);
    cf_optim_free(&r->opt);
    cf_ctx_free(&r->ctx);
    cf_ctx_free(&r->eval_ctx);
    cf_dataset_close(&r->data);
    cf_grad_sync_free(r->sync);
    if (r->log) fclose(r->log);
}

/* ---- the recurrent state of the training streams across ranks ------------------------------------
 * m->rec holds one row per stream this rank trains (model.h); checkpoints hold the rows of all
 * train.batch_size streams in global order, so that a run resumes with any number of ranks. */

/* Collective: rank 0's m->rec (the whole batch, as loaded) to every rank, which keeps its rows. */
static void rec_scatter_from_root(run *r) {
    cf_model *m = &r->model;
    if (r->size == 1 || !cf_model_is_recurrent(m)) return;
    int batch = r->rank == 0 ? m->rec.batch : 0;
    cf_dist_bcast(&batch, sizeof batch);
    if (batch != r->c->train.batch_size) {           /* no state (or another geometry): start afresh */
        if (m->rec.batch) cf_rec_state_free(m, &m->rec);
        return;
    }
    if (r->rank != 0) cf_rec_state_alloc(m, &m->rec, batch);
    for (int l = 0; l < m->n_blocks; l++) {
        cf_state_array a[CF_STATE_MAX_ARRAYS];
        int present, n = cf_rec_state_arrays(m, &m->rec, l, a, &present);
        int used = present ? a[0].used : 0;
        cf_dist_bcast(&used, sizeof used);
        for (int k = 0; k < n; k++) cf_dist_bcast(a[k].data, (size_t)(batch * a[k].row) * sizeof(float));
        if (n) cf_rec_state_set_used(m, &m->rec, l, used);
    }
    cf_rec_state mine = {0};
    cf_rec_state_alloc(m, &mine, r->rows);
    cf_rec_state_copy_rows(m, &mine, &m->rec, r->rank * r->rows);
    cf_rec_state_free(m, &m->rec);
    m->rec = mine;
}

/* Collective: every rank's rows of m->rec, in global order, into *all on rank 0 (all->batch = 0
 * when there is nothing to gather). */
static void rec_gather_to_root(run *r, cf_rec_state *all) {
    cf_model *m = &r->model;
    memset(all, 0, sizeof *all);
    if (r->size == 1 || !cf_model_is_recurrent(m) || m->rec.batch != r->rows) return;
    if (r->rank == 0) cf_rec_state_alloc(m, all, r->c->train.batch_size);
    for (int l = 0; l < m->n_blocks; l++) {
        cf_state_array mine[CF_STATE_MAX_ARRAYS], dst[CF_STATE_MAX_ARRAYS];
        int present, n = cf_rec_state_arrays(m, &m->rec, l, mine, &present);
        if (r->rank == 0) cf_rec_state_arrays(m, all, l, dst, NULL);
        for (int k = 0; k < n; k++)
            cf_dist_gather_f32(mine[k].data, r->rank == 0 ? dst[k].data : NULL, (int64_t)r->rows * mine[k].row);
        if (n && r->rank == 0) cf_rec_state_set_used(m, all, l, present ? mine[0].used : 0);
    }
}

/* Model keys that may change on resume: regularisation, which leaves the weights' meaning alone. */
static const char *const free_model_keys[] = {"model.dropout", "model.attn_dropout", "model.emb_dropout",
                                              "model.label_smoothing", NULL};

/* Load the checkpoint into the run and check that it can continue under the new config. */
static int resume_load(run *r, const cf_config *user, int last) {
    cf_config saved;
    if (cf_ckpt_read_config(r->resume_path, &saved)) return -1;
    if (cf_ckpt_load(r->resume_path, &r->model, &r->opt, &r->st)) return -1;
    char *model_diff = cf_ckpt_config_diff(&saved, user, "model.", free_model_keys);
    if (model_diff) {
        cf_set_error("%s: the model differs from the checkpoint's (%s); only dropout and label smoothing may change "
                     "on resume", r->resume_path, model_diff);
        free(model_diff);
        return -1;
    }
    if (r->st.step >= last)
        return cf_set_error("%s: the checkpoint is at step %lld, the run stops at step %d: nothing to train (raise "
                            "train.steps or --until)", r->resume_path, (long long)r->st.step, last);
    char *diff = cf_ckpt_config_diff(&saved, user, NULL, NULL);
    if (r->rank == 0)
        fprintf(stderr, "cformer: resuming from %s at step %lld%s%s\n", r->resume_path, (long long)r->st.step,
                diff ? "; changed keys: " : " (no config keys changed)", diff ? diff : "");
    if (r->st.seed != user->train.seed && r->rank == 0)
        fprintf(stderr, "cformer: train.seed stays %llu: batches and dropout continue the checkpoint's random "
                        "streams\n", (unsigned long long)r->st.seed);
    free(diff);
    return 0;
}

/* --out DIR may name a new or empty directory, or the run being resumed: a run directory is never
 * taken over by another run, which would replace its checkpoints and append to its log. */
static int check_out_dir(const run *r, const char *out) {
    char probe[1300], mine[PATH_MAX], theirs[PATH_MAX];
    const char *marks[3] = {"ckpt/latest.h5", "config.json", "log.jsonl"}, *found = NULL;
    for (int i = 0; i < 3 && !found; i++) {
        snprintf(probe, sizeof probe, "%s/%s", out, marks[i]);
        if (access(probe, F_OK) == 0) found = marks[i];
    }
    if (!found) return 0;
    if (r->resume_path[0] && realpath(out, mine)) {
        /* the run resumed from: its directory, or the run whose ckpt/ holds the checkpoint */
        snprintf(probe, sizeof probe, "%s", r->resume_dir[0] ? r->resume_dir : r->resume_path);
        for (int up = r->resume_dir[0] ? 0 : 2; up > 0; up--) {   /* RUN/ckpt/step_N.h5 -> RUN */
            char *slash = strrchr(probe, '/');
            if (slash) *slash = 0;
            else snprintf(probe, sizeof probe, ".");
        }
        if (realpath(probe, theirs) && !strcmp(mine, theirs)) return 0;
    }
    return cf_set_error("--out: \"%s\" holds another run (%s); continue it with --resume %s, or choose a new directory",
                        out, found, out);
}

/* Everything in memory, nothing on disk: data, model, optimizer, and the checkpoint when resuming
 * (read by rank 0 alone; run_share_resume gives it to the others). */
static int run_prepare(run *r, const cf_config *c, const cf_train_opts *o, int last) {
    memset(r, 0, sizeof *r);
    r->cfg = *c;
    r->c = &r->cfg;
    r->saved_step = -1;
    r->rank = cf_dist_rank();
    r->size = cf_dist_size();
    cf_train_state_init(&r->st, c);
    int B = c->train.batch_size, T = c->train.seq_len;
    if (cf_dataset_open(&r->data, r->c, r->rank, r->size, 0)) return -1;
    r->rows = r->data.rows;
    if (o->resume && r->rank == 0 &&
        cf_ckpt_resolve(o->resume, r->resume_path, sizeof r->resume_path, r->resume_dir, sizeof r->resume_dir))
        return -1;
    if (o->out_dir && r->rank == 0 && check_out_dir(r, o->out_dir)) return -1;
    if (r->data.kind->open(&r->data)) return -1;
    if (cf_model_init(&r->model, &c->model, c->train.seed)) return -1;
    cf_model_set_checkpointing(&r->model, c->train.grad_checkpoint);
    cf_model_set_recompute(&r->model, c->train.recompute);
    cf_optim_init(&r->opt, c->train.optimizer, &r->model.params);
    if (r->resume_path[0]) {
        if (resume_load(r, c, last)) return -1;
        r->cfg.train.seed = r->st.seed;
        /* the geometry is the new config's; with it unchanged, next_batch is the exact stream position */
        r->st.sampling = c->train.sampling;
        r->st.batch_size = B;
        r->st.seq_len = T;
    }
    if (r->data.kind->start(&r->data, r->cfg.train.seed)) return -1;
    if (r->size > 1) r->sync = cf_grad_sync_new(&r->model.params, cf_grad_sync_default_bytes());
    if (cf_ctx_init(&r->ctx, cf_model_arena_bytes(&c->model, r->rows, T), 1 << 20)) return -1;
    r->ctx.seed = r->cfg.train.seed;
    r->ctx.training = 1;
    r->ctx.bf16 = c->train.precision == CF_PRECISION_BF16;
    int eval_T = c->eval.ctx > T ? c->eval.ctx : T;   /* windows of eval.ctx bytes, or pairs of seq_len tokens */
    if (cf_ctx_init(&r->eval_ctx, cf_model_arena_bytes(&c->model, B, eval_T), 1 << 20)) return -1;
    r->eval_ctx.grad_enabled = 0;
    r->eval_ctx.bf16 = r->ctx.bf16;
    return 0;
}

/* Collective, after every rank has prepared: what rank 0 resumed from (weights, optimizer state
 * and step, training state, the streams' recurrent state) to every rank. */
static void run_share_resume(run *r) {
    if (r->size == 1) return;
    int resumed = r->resume_path[0] != 0;
    cf_dist_bcast(&resumed, sizeof resumed);
    if (!resumed) return;
    cf_params *p = &r->model.params;
    cf_dist_bcast(&r->st, sizeof r->st);
    cf_dist_bcast(p->values, (size_t)p->numel * sizeof(float));
    for (int k = 0; k < r->opt.n_slabs; k++)
        cf_dist_bcast(r->opt.slab[k].data, (size_t)r->opt.slab[k].numel * sizeof(float));
    cf_dist_bcast(&r->opt.t, sizeof r->opt.t);
    r->cfg.train.seed = r->st.seed;
    r->data.kind->start(&r->data, r->st.seed);   /* the checkpoint's streams: they opened under the config's */
    r->ctx.seed = r->st.seed;
    rec_scatter_from_root(r);
}

/* write path through a temporary name and a rename, so a crash leaves the old or the new file */
static int write_file_atomic(const char *path, const char *text) {
    char tmp[1300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return cf_set_error("%s: cannot write: %s", path, strerror(errno));
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return cf_set_error("%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

/* Drop log lines of steps after the checkpoint: a run killed after logging step k > checkpoint
 * step will log those steps again, and log.jsonl keeps one line per step. */
static int trim_log(const char *path, int64_t step) {
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    char tmp[1300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) { fclose(in); return cf_set_error("%s: cannot rewrite: %s", path, strerror(errno)); }
    char *line = NULL;
    size_t cap = 0;
    int dropped = 0, bad = 0;
    while (getline(&line, &cap, in) > 0) {
        long long s;
        if (sscanf(line, "{\"step\": %lld", &s) == 1 && s > step) { dropped++; continue; }
        bad |= fputs(line, out) < 0;
    }
    free(line);
    fclose(in);
    bad |= fclose(out) != 0;
    if (bad || !dropped) {
        unlink(tmp);
        return bad ? cf_set_error("%s: cannot rewrite", path) : 0;
    }
    if (rename(tmp, path)) { unlink(tmp); return cf_set_error("%s: cannot rewrite: %s", path, strerror(errno)); }
    fprintf(stderr, "cformer: %s: dropped %d lines after step %lld (they will be logged again)\n", path, dropped,
            (long long)step);
    return 0;
}

/* The run directory: created (or reused on resume) only once everything else has been checked. */
static int run_create_dir(run *r, const cf_train_opts *o) {
    const cf_config *c = r->c;
    if (o->out_dir) snprintf(r->dir, sizeof r->dir, "%s", o->out_dir);
    else if (r->resume_dir[0]) snprintf(r->dir, sizeof r->dir, "%s", r->resume_dir);
    else {
        char stamp[32];
        time_t t = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&t));
        snprintf(r->dir, sizeof r->dir, "runs/%s-%s", c->name[0] ? c->name : "run", stamp);
    }
    snprintf(r->ckpt_dir, sizeof r->ckpt_dir, "%s/ckpt", r->dir);
    if (mkdir_p(r->ckpt_dir) || access(r->ckpt_dir, W_OK))
        return cf_set_error("--out: cannot create or write the run directory \"%s\": %s", r->dir, strerror(errno));
    int stale = cf_ckpt_remove_temps(r->ckpt_dir);
    if (stale) fprintf(stderr, "cformer: %s: removed %d unfinished checkpoint file(s) of an interrupted save\n",
                       r->ckpt_dir, stale);
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", r->dir);
    char *json = cf_config_to_json(c);
    int rc = write_file_atomic(path, json);
    free(json);
    if (rc) return -1;
    snprintf(path, sizeof path, "%s/log.jsonl", r->dir);
    if (r->st.step > 0 && trim_log(path, r->st.step)) return -1;
    r->log = fopen(path, "a");
    if (!r->log) return cf_set_error("%s: cannot write: %s", path, strerror(errno));
    return 0;
}

/* RUN/ckpt/step_<N>.h5, then latest.h5, then the oldest step files beyond train.keep_checkpoints:
 * nothing is deleted before the new checkpoint is complete under both names. */
static int save_files(run *r) {
    char path[1300], latest[1300];
    int64_t step = r->st.step;
    snprintf(path, sizeof path, "%s/step_%lld.h5", r->ckpt_dir, (long long)step);
    snprintf(latest, sizeof latest, "%s/latest.h5", r->ckpt_dir);
    r->st.elapsed_s = now_s() - r->t_start;
    if (cf_ckpt_save(path, r->c, &r->model, &r->opt, &r->st)) return -1;
    if (cf_ckpt_publish(path, latest)) return -1;
    r->saved_step = step;
    if (cf_ckpt_rotate(r->ckpt_dir, step, r->c->train.keep_checkpoints))
        fprintf(stderr, "cformer: warning: %s\n", cf_error_msg());   /* an old file left behind harms nothing */
    return 0;
}

/* Collective under MPI: the ranks must agree on the weights, and rank 0 writes the checkpoint with
 * the recurrent state of every rank's streams. */
static int save_checkpoint(run *r) {
    if (r->size == 1) return save_files(r);
    cf_dist_check_params(&r->model.params, r->st.step);
    cf_rec_state all, mine;
    rec_gather_to_root(r, &all);
    if (r->rank != 0) {
        r->saved_step = r->st.step;
        return 0;
    }
    if (all.batch) { mine = r->model.rec; r->model.rec = all; }
    int rc = save_files(r);
    if (all.batch) { r->model.rec = mine; cf_rec_state_free(&r->model, &all); }
    return rc;
}

static int has_split(const run *r, int test) { return cf_dataset_has(&r->data, test ? CF_SPLIT_TEST : CF_SPLIT_VALID); }

/* validation during training reads at most train.eval_tokens bytes (0 = the whole split); an
 * encoder-decoder scores pairs up to that many target tokens and decodes them greedily */
static int evaluate(run *r, int test, size_t limit, cf_eval_result *res) {
    return cf_eval_dataset(&r->model, &r->eval_ctx, &r->data, test ? CF_SPLIT_TEST : CF_SPLIT_VALID, limit, res);
}

static void print_bench(const run *r, const char *split, const cf_eval_result *e) {
    if (r->rank == 0) cf_eval_print_bench(&r->model, &r->data, split, e);
}

static void log_eval(run *r, int64_t step, const char *split, const cf_eval_result *e) {
    char extra[96] = "";
    if (r->rank != 0) return;
    if (e->pairs) snprintf(extra, sizeof extra, "\"exact_match\": %.6f, \"pairs\": %lld, ", e->exact, (long long)e->pairs);
    fprintf(r->log, "{\"step\": %lld, \"split\": \"%s\", \"eval_bpb\": %.6f, \"bytes\": %lld, %s\"elapsed_s\": %.3f}\n",
            (long long)step, split, e->bpb, (long long)e->bytes, extra, now_s() - r->t_start);
    fflush(r->log);
    if (e->pairs) snprintf(extra, sizeof extra, ", exact match %.4f of %lld pairs", e->exact, (long long)e->pairs);
    fprintf(stderr, "%sstep %lld  %s bpb %.4f  (%lld %s%s, %.1fs)\n", isatty(2) ? "\r\033[K" : "", (long long)step,
            split, e->bpb, (long long)e->bytes, e->pairs ? "target tokens" : "bytes", extra, e->seconds);
}

/* One optimiser step on micro-batches first_batch, first_batch + 1, ...; returns the mean loss and
 * adds the tokens it trained on to *tokens (an encoder-decoder's: its real source and target tokens).
 * Under MPI: this rank's rows and their mean loss; the gradient is summed across ranks while the last
 * micro-batch runs backward (its loss seeded with 1 / (grad_accum * ranks), so the sum is the
 * gradient of the global mean), and *tokens counts the global batch. */
static float train_step(run *r, uint64_t first_batch, float lr, float *grad_norm, int64_t *tokens) {
    const cf_train_config *t = &r->c->train;
    cf_params_zero_grad(&r->model.params);
    float seed = 1.0f / (float)(t->grad_accum * r->size), total = 0;
    for (int a = 0; a < t->grad_accum; a++) {
        uint64_t index = first_batch + (uint64_t)a;
        if (r->sync && a == t->grad_accum - 1) cf_grad_sync_arm(r->sync, &r->ctx);
        cf_batch b;
        r->data.kind->batch(&r->data, index, &b);
        cf_ctx_begin(&r->ctx, index);
        /* dropout masks are keyed by the call counter and the element of this rank's rows: give
         * each rank its own range of calls, or every rank would draw rank 0's masks */
        r->ctx.rng_calls = (uint64_t)r->rank << 32;
        cf_tensor *loss = cf_model_batch_loss(&r->model, &r->ctx, &b);
        *tokens += b.tokens;
        total += loss->data[0];
        /* on several ranks the step goes on: the reduction needs every rank, and a NaN reaches
         * every rank's gradient norm through it */
        if (!isfinite(loss->data[0]) && !r->sync) return loss->data[0];
        cf_backward(&r->ctx, loss, &seed);
    }
    if (r->sync) r->allreduce_s = cf_grad_sync_finish(r->sync, &r->ctx);
    *grad_norm = cf_clip_grad_norm(&r->model.params, t->grad_clip);
    if (!isfinite(*grad_norm)) return total / (float)t->grad_accum;   /* no step: the caller stops */
    cf_optim_step(&r->opt, &r->model.params, lr, t);
    return total / (float)t->grad_accum;
}

static const char *signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"; }

/* ---- several ranks ----------------------------------------------------------------------------- */

/* An error of this rank alone inside the loop: under MPI the other ranks are on their way to the
 * next collective, so the job stops here, naming the rank (dist.h). */
static int local_error(const run *r, int rc) {
    if (rc && r->size > 1) cf_dist_abort("%s", cf_error_msg());
    return rc;
}

/* After each step, collectively: the global mean loss (every rank trains the same number of rows)
 * and the stop signal any rank has received, so that every rank stops after the same step. */
static int agree_step(const run *r, float *loss) {
    double v[3] = {*loss, stop_requested == SIGINT, stop_requested == SIGTERM};
    cf_dist_sum_f64(v, 3);
    *loss = (float)(v[0] / r->size);
    return v[1] > 0 ? SIGINT : v[2] > 0 ? SIGTERM : 0;
}

/* CF_DIST_FAIL=rank:step[:how] (see the top of this file) */
typedef struct fault { int rank, step; char how[16]; const char *spec; } fault;

static void fault_parse(fault *f) {
    memset(f, 0, sizeof *f);
    f->rank = -1;
    f->spec = getenv("CF_DIST_FAIL");
    if (f->spec && sscanf(f->spec, "%d:%d:%15s", &f->rank, &f->step, f->how) < 2) f->rank = -1;
}

static int env_int(const char *name) {
    const char *e = getenv(name);
    return e && *e ? atoi(e) : 0;
}

/* the line that opens a run: what trains, how big, where */
static void announce(const run *r, int last) {
    const cf_config *c = r->c;
    int64_t n_params = 0;
    for (int i = 0; i < r->model.params.n; i++) n_params += r->model.params.t[i]->numel;   /* the slab pads */
    char per_step[64], threads[160];
    r->data.kind->describe_step(&r->data, per_step, sizeof per_step);
    snprintf(threads, sizeof threads, "%d threads", cf_num_threads());
    if (r->size > 1) {
        double th[2] = {cf_num_threads(), -cf_num_threads()};
        cf_dist_max_f64(th, 2);
        if (th[0] == -th[1]) snprintf(threads, sizeof threads, "%d MPI ranks x %d threads", r->size, (int)th[0]);
        else snprintf(threads, sizeof threads, "%d MPI ranks x %d..%d threads", r->size, (int)-th[1], (int)th[0]);
        snprintf(threads + strlen(threads), sizeof threads - strlen(threads), " (%d rows each, gradients in %d buckets)",
                 r->rows, cf_grad_sync_buckets(r->sync));
    }
    if (r->rank == 0)
        fprintf(stderr, "cformer: training %s: %lld parameters, steps %lld..%d of %d, %s per step, %s, run %s\n",
                c->name, (long long)n_params, (long long)r->st.step + 1, last, c->train.steps, per_step, threads, r->dir);
}

/* progress since the last log line */
typedef struct progress { double t0; int steps; int64_t tokens; int tty, quiet; } progress;

static void log_step(run *r, progress *p, int step, int last, float loss, float lr, float gnorm) {
    double now = now_s(), tps = p->tokens / (now - p->t0);
    fprintf(r->log, "{\"step\": %d, \"loss\": %.6f, \"bpb\": %.6f, \"lr\": %.6g, \"grad_norm\": %.4f, "
                    "\"tokens_per_s\": %.0f, \"elapsed_s\": %.3f}\n",
            step, loss, loss / M_LN2, lr, gnorm, tps, now - r->t_start);
    fflush(r->log);
    double left = (last - step) * (now - p->t0) / p->steps;
    if (!p->quiet)
        fprintf(stderr, "%sstep %d/%d  loss %.4f  bpb %.4f  lr %.2e  %.0f tok/s  %.0fs left%s", p->tty ? "\r\033[K" : "",
                step, last, loss, loss / M_LN2, lr, tps, left, p->tty ? "" : "\n");
    *p = (progress){.t0 = now, .tty = p->tty, .quiet = p->quiet};
}

/* which checkpoint stays the run's last good one, for a message about a run that stops */
static void kept_text(const run *r, char *kept, size_t n) {
    snprintf(kept, n, "no checkpoint was written");
    if (r->saved_step >= 0)
        snprintf(kept, n, "the last checkpoint (%s/step_%lld.h5) is kept", r->ckpt_dir, (long long)r->saved_step);
    else if (r->resume_path[0])
        snprintf(kept, n, "the checkpoint resumed from (%s) is kept", r->resume_path);
}

/* the error of a step whose loss or gradient is not finite */
static int non_finite_error(const run *r, int step, float loss, float gnorm) {
    char kept[1400];
    kept_text(r, kept, sizeof kept);
    if (r->rank != 0) cf_dist_set_quiet();   /* rank 0 says it */
    if (!isfinite(loss))
        return cf_set_error("step %d: loss is %s (gradient norm %g); stopping, %s", step, isnan(loss) ? "NaN" : "infinite",
                            gnorm, kept);
    return cf_set_error("step %d: the gradient norm is %s (loss %g); stopping, %s", step,
                        isnan(gnorm) ? "NaN" : "infinite", loss, kept);
}

/* a validation whose result is not finite stops the run: the weights have gone wrong */
static int validate(run *r, int64_t step, size_t limit, cf_eval_result *e) {
    if (local_error(r, evaluate(r, 0, limit, e))) return -1;
    if (!isfinite(e->bpb)) {
        char kept[1400];
        kept_text(r, kept, sizeof kept);
        if (r->rank != 0) cf_dist_set_quiet();
        return cf_set_error("step %lld: validation bits per byte is %s; stopping, %s", (long long)step,
                            isnan(e->bpb) ? "NaN" : "infinite", kept);
    }
    if (e->bpb < r->st.best_valid_bpb) r->st.best_valid_bpb = e->bpb;
    log_eval(r, step, "valid", e);
    return 0;
}

/* After the loop: the final validation, the last checkpoint, the test split when the run reached
 * train.steps. Returns rc; *stop receives a signal that arrived meanwhile. */
static int finish(run *r, int last, int *stop) {
    const cf_config *c = r->c;
    int rc = 0;
    cf_eval_result e;
    if (!*stop && has_split(r, 0)) {
        if (!(rc = validate(r, r->st.step, (size_t)c->eval.bytes, &e))) print_bench(r, "valid", &e);
    }
    if (!rc && r->saved_step != r->st.step) rc = local_error(r, save_checkpoint(r));
    if (!rc && !*stop) {   /* a signal during the final evaluation or save */
        float none = 0;
        *stop = r->size > 1 ? agree_step(r, &none) : stop_requested;
    }
    if (!rc && !*stop && last == c->train.steps && has_split(r, 1)) {
        if (!(rc = local_error(r, evaluate(r, 1, (size_t)c->eval.bytes, &e)))) {
            log_eval(r, last, "test", &e);
            print_bench(r, "test", &e);
        }
    }
    return rc;
}

int cf_train(const cf_config *c, const cf_train_opts *o) {
    if (o->stop_signal) *o->stop_signal = 0;
    const cf_train_config *t = &c->train;
    int last = o->until > 0 && o->until < t->steps ? o->until : t->steps;
    run r;
    /* set-up: every rank prepares, then (all being well) rank 0 creates the run directory */
    int bad = run_prepare(&r, c, o, last) != 0;
    if (r.size > 1) bad = cf_dist_agree_error(bad) != 0;
    if (!bad && r.rank == 0) bad = run_create_dir(&r, o) != 0;
    if (r.size > 1) bad = cf_dist_agree_error(bad) != 0;
    if (bad) { run_free(&r); return -1; }
    run_share_resume(&r);
    if (r.rank == 0) r.data.kind->note(&r.data);
    announce(&r, last);
    int lead = r.rank == 0, rc = 0, stop = 0;
    fault fail;
    fault_parse(&fail);
    int check_every = r.size > 1 ? env_int("CF_MPI_CHECK_EVERY") : 0;
    saved_handlers handlers;
    install_handlers(&handlers);
    r.t_start = now_s() - r.st.elapsed_s;
    progress prog = {.t0 = now_s(), .tty = isatty(2) && !o->quiet && lead, .quiet = o->quiet};
    for (int s = (int)r.st.step; s < last; s++) {
        float lr = cf_lr_at(t, s), gnorm = 0;
        int64_t step_tokens = 0;
        float loss = train_step(&r, r.st.next_batch, lr, &gnorm, &step_tokens);
        int sig = r.size > 1 ? agree_step(&r, &loss) : 0;
        if (!isfinite(loss) || !isfinite(gnorm)) {   /* under MPI every rank sees the same: all stop here */
            rc = non_finite_error(&r, s + 1, loss, gnorm);
            break;
        }
        int step = s + 1;
        r.st.step = step;
        r.st.tokens_seen += step_tokens;
        r.st.next_batch += (uint64_t)t->grad_accum;
        prog.steps++;
        prog.tokens += step_tokens;
        if (fail.rank == r.rank && fail.step == step) {
            if (!strcmp(fail.how, "exit")) _exit(3);
            if (!strcmp(fail.how, "perturb")) r.model.params.values[0] += 1.0f;
            else { rc = local_error(&r, cf_set_error("injected failure after step %d (CF_DIST_FAIL=%s)", step, fail.spec)); break; }
        }
        if (check_every > 0 && step % check_every == 0) cf_dist_check_params(&r.model.params, step);
        if (lead && (step % t->log_every == 0 || step == last)) log_step(&r, &prog, step, last, loss, lr, gnorm);
        int stopping = r.size > 1 ? sig : stop_requested;
        cf_eval_result e;
        if (has_split(&r, 0) && t->eval_every > 0 && step % t->eval_every == 0 && step != last && !stopping &&
            (rc = validate(&r, step, (size_t)t->eval_tokens, &e)))
            break;
        if (t->checkpoint_every > 0 && step % t->checkpoint_every == 0 && step != last &&
            (rc = local_error(&r, save_checkpoint(&r))))
            break;
        if ((stop = r.size > 1 ? sig : stop_requested)) break;
    }
    if (prog.tty) fputc('\n', stderr);
    if (!rc) rc = finish(&r, last, &stop);
    if (!rc && stop) {
        if (lead)
            fprintf(stderr, "cformer: %s: stopped after step %lld; checkpoint %s/step_%lld.h5 (continue with --resume %s)\n",
                    signal_name(stop), (long long)r.st.step, r.ckpt_dir, (long long)r.st.step, r.dir);
        if (o->stop_signal) *o->stop_signal = stop;
        rc = 1;
    }
    restore_handlers(&handlers);
    run_free(&r);
    return rc;
}
