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
#include "cformer/pairs.h"
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
    cf_bytes   train, valid, test;
    cf_sampler sampler;
    /* model.arch "encoder_decoder": pair files in place of the byte files and sampler (pairs.h) */
    int        s2s;
    cf_pairs   ptrain, pvalid, ptest;
    cf_s2s_batch batch;
    int       *pool;           /* train.bucket_pool x batch_size scratch of cf_pairs_sample */
    int32_t   *x, *y;
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
    cf_bytes_close(&r->train);
    cf_bytes_close(&r->valid);
    cf_bytes_close(&r->test);
    cf_pairs_free(&r->ptrain);
    cf_pairs_free(&r->pvalid);
    cf_pairs_free(&r->ptest);
    cf_s2s_batch_free(&r->batch);
    free(r->pool);
    free(r->x); free(r->y);
    cf_grad_sync_free(r->sync);
    if (r->log) fclose(r->log);
}

/* ---- the recurrent state of the training streams across ranks ------------------------------------
 * m->rec holds one row per stream this rank trains (model.h); checkpoints hold the rows of all
 * train.batch_size streams in global order, so that a run resumes with any number of ranks. */

/* floats per stream of layer l's arrays: xl memory, infini M and z (src/model/recurrent.c layout) */
static void rec_row_sizes(const cf_model *m, const cf_rec_state *st, int l, int64_t sz[3]) {
    int64_t D = m->cfg.d_model, H = m->cfg.n_heads, d = D / H;
    sz[0] = st->mem[l] ? (int64_t)st->mem_cap[l] * D : 0;
    sz[1] = st->M[l] ? H * d * d : 0;
    sz[2] = st->z[l] ? H * d : 0;
}

static float **rec_array(cf_rec_state *st, int k) { return k == 0 ? st->mem : k == 1 ? st->M : st->z; }

/* rows [row0, row0 + dst->batch) of src into dst (both allocated for the model), with the counters */
static void rec_copy_rows(const cf_model *m, cf_rec_state *dst, cf_rec_state *src, int row0) {
    for (int l = 0; l < m->n_blocks; l++) {
        int64_t sz[3];
        rec_row_sizes(m, src, l, sz);
        for (int k = 0; k < 3; k++)
            if (sz[k]) memcpy(rec_array(dst, k)[l], rec_array(src, k)[l] + (int64_t)row0 * sz[k],
                              (size_t)(dst->batch * sz[k]) * sizeof(float));
        dst->mem_used[l] = src->mem_used[l];
        dst->has[l] = src->has[l];
    }
}

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
    cf_rec_state *st = &m->rec;
    cf_dist_bcast(st->mem_used, sizeof(int) * (size_t)m->n_blocks);
    cf_dist_bcast(st->has, sizeof(int) * (size_t)m->n_blocks);
    for (int l = 0; l < m->n_blocks; l++) {
        int64_t sz[3];
        rec_row_sizes(m, st, l, sz);
        for (int k = 0; k < 3; k++)
            if (sz[k]) cf_dist_bcast(rec_array(st, k)[l], (size_t)(batch * sz[k]) * sizeof(float));
    }
    cf_rec_state mine = {0};
    cf_rec_state_alloc(m, &mine, r->rows);
    rec_copy_rows(m, &mine, st, r->rank * r->rows);
    cf_rec_state_free(m, st);
    *st = mine;
}

/* Collective: every rank's rows of m->rec, in global order, into *all on rank 0 (all->batch = 0
 * when there is nothing to gather). */
static void rec_gather_to_root(run *r, cf_rec_state *all) {
    cf_model *m = &r->model;
    memset(all, 0, sizeof *all);
    if (r->size == 1 || !cf_model_is_recurrent(m) || m->rec.batch != r->rows) return;
    cf_rec_state *st = &m->rec;
    if (r->rank == 0) cf_rec_state_alloc(m, all, r->c->train.batch_size);
    for (int l = 0; l < m->n_blocks; l++) {
        int64_t sz[3];
        rec_row_sizes(m, st, l, sz);
        for (int k = 0; k < 3; k++)
            if (sz[k]) cf_dist_gather_f32(rec_array(st, k)[l], r->rank == 0 ? rec_array(all, k)[l] : NULL,
                                          (int64_t)r->rows * sz[k]);
        if (r->rank == 0) { all->mem_used[l] = st->mem_used[l]; all->has[l] = st->has[l]; }
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

/* ---- encoder-decoder data: pair files (pairs.h), cut to train.seq_len tokens a side -------------- */
static int s2s_load(cf_pairs *p, const char *key, const char *path, int T) {
    if (cf_pairs_load(p, path, T)) {
        char msg[1200];
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        return cf_set_error("%s: %s", key, msg);
    }
    return 0;
}

/* said once the run is set up (so that a failed set-up prints its one error line alone) */
static void s2s_note_cuts(const run *r) {
    const char *keys[3] = {"data.train", "data.valid", "data.test"};
    const cf_pairs *ps[3] = {&r->ptrain, &r->pvalid, &r->ptest};
    for (int i = 0; i < 3; i++) {
        const cf_pairs *p = ps[i];
        if (p->n && (p->n_cut_src || p->n_cut_tgt))
            fprintf(stderr, "cformer: %s: %s: %d pairs; %d sources (longest %d bytes) and %d targets (longest %d bytes) "
                            "are cut to train.seq_len %d tokens\n", keys[i], p->path, p->n, p->n_cut_src,
                    p->max_src_len, p->n_cut_tgt, p->max_tgt_len, p->max_tokens);
    }
}

static int s2s_open(run *r, const cf_config *c) {
    int T = c->train.seq_len;
    if (c->train.sampling == CF_SAMPLE_ORDERED)
        return cf_set_error("train.sampling: \"ordered\" reads byte streams; encoder_decoder samples pairs at random");
    if (T < 2) return cf_set_error("train.seq_len: encoder_decoder needs at least 2 tokens a side (a byte and EOS)");
    if ((int64_t)c->train.batch_size * c->train.bucket_pool > (1 << 24))
        return cf_set_error("train.bucket_pool: batch_size x bucket_pool must be at most %d (got %d x %d)", 1 << 24,
                            c->train.batch_size, c->train.bucket_pool);
    if (s2s_load(&r->ptrain, "data.train", c->data.train, T)) return -1;
    if (c->data.valid[0] && s2s_load(&r->pvalid, "data.valid", c->data.valid, T)) return -1;
    if (c->data.test[0] && s2s_load(&r->ptest, "data.test", c->data.test, T)) return -1;
    cf_s2s_batch_alloc(&r->batch, c->train.batch_size, T);
    r->pool = cf_xmalloc(sizeof(int) * (size_t)c->train.batch_size * c->train.bucket_pool);
    return 0;
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
    r->s2s = c->model.arch == CF_ARCH_ENCODER_DECODER;
    if (B % r->size)
        return cf_set_error("train.batch_size: %d does not split over %d MPI ranks (each rank trains on batch_size / "
                            "ranks rows of every batch; use a multiple of %d)", B, r->size, r->size);
    if (r->s2s && r->size > 1)
        return cf_set_error("model.arch: \"encoder_decoder\" does not train data-parallel yet (%d MPI ranks); run "
                            "it as one process", r->size);
    r->rows = B / r->size;
    if (o->resume && r->rank == 0 &&
        cf_ckpt_resolve(o->resume, r->resume_path, sizeof r->resume_path, r->resume_dir, sizeof r->resume_dir))
        return -1;
    if (r->s2s) {
        if (s2s_open(r, c)) return -1;
    } else {
        if (cf_bytes_open(&r->train, c->data.train)) return -1;
        if (c->data.valid[0] && cf_bytes_open(&r->valid, c->data.valid)) return -1;
        if (c->data.test[0] && cf_bytes_open(&r->test, c->data.test)) return -1;
    }
    if (cf_model_init(&r->model, &c->model, c->train.seed)) return -1;
    cf_model_set_checkpointing(&r->model, c->train.grad_checkpoint);
    cf_optim_init(&r->opt, c->train.optimizer, &r->model.params);
    if (r->resume_path[0]) {
        if (resume_load(r, c, last)) return -1;
        r->cfg.train.seed = r->st.seed;
        /* the geometry is the new config's; with it unchanged, next_batch is the exact stream position */
        r->st.sampling = c->train.sampling;
        r->st.batch_size = B;
        r->st.seq_len = T;
    }
    if (!r->s2s &&
        cf_sampler_init(&r->sampler, &r->train, B, T, c->train.sampling == CF_SAMPLE_ORDERED, r->cfg.train.seed))
        return -1;
    if (!r->s2s) cf_sampler_shard(&r->sampler, r->rank, r->size);
    if (r->size > 1) r->sync = cf_grad_sync_new(&r->model.params, cf_grad_sync_default_bytes());
    if (cf_ctx_init(&r->ctx, cf_model_arena_bytes(&c->model, r->rows, T), 1 << 20)) return -1;
    r->ctx.seed = r->cfg.train.seed;
    r->ctx.training = 1;
    if (cf_ctx_init(&r->eval_ctx, cf_model_arena_bytes(&c->model, B, r->s2s ? T : c->eval.ctx), 1 << 20)) return -1;
    r->eval_ctx.grad_enabled = 0;
    r->x = cf_xmalloc(sizeof(int32_t) * (size_t)r->rows * T);
    r->y = cf_xmalloc(sizeof(int32_t) * (size_t)r->rows * T);
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
    r->sampler.seed = r->st.seed;
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

static int has_split(const run *r, int test) {
    return test ? r->test.n || r->ptest.n : r->valid.n || r->pvalid.n;
}

/* Evaluation split across ranks (collective): each rank scores a contiguous share of what one
 * process scores, and the bits and bytes are summed.
 *
 * Windowed models (eval.c: cf_eval_bpb): window k ends at e_k = min(L + k stride, n - 1) (L = the
 * context, or n - 1 when shorter) and scores the targets (e_{k-1}, e_k]. Rank r takes windows
 * [k0, k1) of the K and calls cf_eval_bpb on bytes [e_k0 - L, e_{k1-1}]: its first window is exactly
 * window k0 of one process, and the following ones are windows k0 + 1 ... k1 - 1. Being a first
 * window, it scores all of its L targets, and the X = L - (e_k0 - e_{k0-1}) targets before
 * e_{k0-1} + 1 belong to the previous rank: a second call on bytes [e_k0 - L, e_k0 - L + X] scores
 * exactly those (with the same context: the model is causal), and is subtracted. Every byte is
 * scored once, with one process's context, so the result equals one process's up to float
 * rounding (summation order, and GEMMs over other row counts).
 * Recurrent models (xl, infini: cf_eval_bpb walks `batch` columns in order with their state): rank r
 * takes columns [c0, c1) of the batch and calls cf_eval_bpb on their bytes with c1 - c0 columns;
 * the columns' bounds can differ from one process's by a byte, and so can the result, slightly. */
static int evaluate_split(run *r, const uint8_t *data, size_t n, cf_eval_result *res) {
    const cf_config *c = r->c;
    int B = c->train.batch_size, ctx_len = c->eval.ctx, stride = c->eval.stride, N = r->size, rc = 0;
    memset(res, 0, sizeof *res);
    double t0 = now_s(), bits = 0, bytes = 0;
    cf_eval_result part;
    if (n < 2 || stride <= 0 || stride > ctx_len) {
        /* an error for every rank alike: let one process's function say it */
        return cf_eval_bpb(&r->model, &r->eval_ctx, data, n, ctx_len, stride, B, res);
    }
    if (cf_model_is_recurrent(&r->model)) {
        size_t tot = n - 1;
        int cols = B;
        if ((size_t)cols * (size_t)ctx_len > tot) cols = tot / (size_t)ctx_len > 0 ? (int)(tot / (size_t)ctx_len) : 1;
        int c0 = (int)((int64_t)cols * r->rank / N), c1 = (int)((int64_t)cols * (r->rank + 1) / N);
        if (c1 > c0) {
            size_t s0 = 1 + (size_t)c0 * tot / (size_t)cols, s1 = 1 + (size_t)c1 * tot / (size_t)cols;
            rc = cf_eval_bpb(&r->model, &r->eval_ctx, data + s0 - 1, s1 - s0 + 1, ctx_len, stride, c1 - c0, &part);
            bits = part.bits;
            bytes = (double)part.bytes;
        }
    } else {
        size_t L = n - 1 < (size_t)ctx_len ? n - 1 : (size_t)ctx_len, S = (size_t)stride;
        size_t K = 1 + (n - 1 - L + S - 1) / S;
#define WIN_END(k) (L + (size_t)(k) * S < n - 1 ? L + (size_t)(k) * S : n - 1)
        size_t k0 = K * (size_t)r->rank / (size_t)N, k1 = K * (size_t)(r->rank + 1) / (size_t)N;
        if (k1 > k0) {
            size_t off = WIN_END(k0) - L, end = WIN_END(k1 - 1);
            rc = cf_eval_bpb(&r->model, &r->eval_ctx, data + off, end + 1 - off, ctx_len, stride, B, &part);
            bits = part.bits;
            bytes = (double)part.bytes;
            size_t X = k0 ? L - (WIN_END(k0) - WIN_END(k0 - 1)) : 0;
            if (!rc && X > 0) {
                rc = cf_eval_bpb(&r->model, &r->eval_ctx, data + off, X + 1, ctx_len, stride, B, &part);
                bits -= part.bits;
                bytes -= (double)part.bytes;
            }
        }
#undef WIN_END
    }
    if (rc) return -1;
    double v[2] = {bits, bytes}, secs = now_s() - t0;
    cf_dist_sum_f64(v, 2);
    cf_dist_max_f64(&secs, 1);
    res->bits = v[0];
    res->bytes = (int64_t)(v[1] + 0.5);
    res->bpb = res->bits / v[1];
    res->seconds = secs;
    return 0;
}

/* validation during training reads at most train.eval_tokens bytes (0 = the whole split); an
 * encoder-decoder scores pairs up to that many target tokens and decodes them greedily */
static int evaluate(run *r, int test, size_t limit, cf_eval_result *res) {
    const cf_config *c = r->c;
    if (r->s2s)
        return cf_s2s_eval(&r->model, &r->eval_ctx, test ? &r->ptest : &r->pvalid, (int64_t)limit, c->train.batch_size,
                           c->train.seq_len, res);
    const cf_bytes *b = test ? &r->test : &r->valid;
    size_t n = limit && limit < b->n ? limit : b->n;
    if (r->size > 1) return evaluate_split(r, b->data, n, res);
    return cf_eval_bpb(&r->model, &r->eval_ctx, b->data, n, c->eval.ctx, c->eval.stride, c->train.batch_size, res);
}

/* the BENCH line of a final evaluation (DESIGN.md section 9) */
static void print_bench(const run *r, const char *split, const cf_eval_result *e) {
    const cf_config *c = r->c;
    if (r->rank != 0) return;
    if (r->s2s)
        printf("BENCH eval split=%s bpb=%.4f exact_match=%.4f pairs=%lld tokens=%lld seconds=%.1f\n", split, e->bpb,
               e->exact, (long long)e->pairs, (long long)e->bytes, e->seconds);
    else if (cf_model_is_recurrent(&r->model))   /* streamed in order with the state: no stride */
        printf("BENCH eval split=%s bpb=%.4f bytes=%lld ctx=%d columns=%d tokens_per_s=%.0f\n", split, e->bpb,
               (long long)e->bytes, c->eval.ctx, c->train.batch_size, e->bytes / e->seconds);
    else
        printf("BENCH eval split=%s bpb=%.4f bytes=%lld ctx=%d stride=%d tokens_per_s=%.0f\n", split, e->bpb,
               (long long)e->bytes, c->eval.ctx, c->eval.stride, e->bytes / e->seconds);
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
    int B = r->rows, T = t->seq_len;
    cf_params_zero_grad(&r->model.params);
    float seed = 1.0f / (float)(t->grad_accum * r->size), total = 0;
    for (int a = 0; a < t->grad_accum; a++) {
        uint64_t index = first_batch + (uint64_t)a;
        cf_tensor *loss;
        if (r->sync && a == t->grad_accum - 1) cf_grad_sync_arm(r->sync, &r->ctx);
        if (r->s2s) {
            cf_pairs_sample(&r->ptrain, r->cfg.train.seed, index, B, T, t->bucket_pool, r->pool, &r->batch);
            cf_ctx_begin(&r->ctx, index);
            loss = cf_encdec_loss(&r->model, &r->ctx, &r->batch, r->c->model.label_smoothing, NULL);
            *tokens += r->batch.src_tokens + r->batch.tgt_tokens;
        } else {
            cf_sampler_batch(&r->sampler, index, r->x, r->y);
            cf_ctx_begin(&r->ctx, index);
            /* dropout masks are keyed by the call counter and the element of this rank's rows: give
             * each rank its own range of calls, or every rank would draw rank 0's masks */
            r->ctx.rng_calls = (uint64_t)r->rank << 32;
            loss = cf_model_loss(&r->model, &r->ctx, r->x, r->y, B, T, NULL);
            *tokens += (int64_t)B * r->size * T;
        }
        total += loss->data[0];
        /* on several ranks the step goes on: the reduction needs every rank, and a NaN reaches
         * every rank's gradient norm through it */
        if (!isfinite(loss->data[0]) && !r->sync) return loss->data[0];
        cf_backward(&r->ctx, loss, &seed);
    }
    if (r->sync) r->allreduce_s = cf_grad_sync_finish(r->sync, &r->ctx);
    *grad_norm = cf_clip_grad_norm(&r->model.params, t->grad_clip);
    if (!isfinite(*grad_norm)) return *grad_norm;
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
    if (r.s2s) s2s_note_cuts(&r);
    int lead = r.rank == 0;
    int tty = isatty(2) && !o->quiet && lead, rc = 0, stop = 0;
    int64_t tokens_per_step = (int64_t)t->batch_size * t->seq_len * t->grad_accum, n_params = 0;
    for (int i = 0; i < r.model.params.n; i++) n_params += r.model.params.t[i]->numel;   /* the slab pads */
    char per_step[64], threads[160];
    if (r.s2s) snprintf(per_step, sizeof per_step, "%d pairs", t->batch_size * t->grad_accum);
    else snprintf(per_step, sizeof per_step, "%lld tokens", (long long)tokens_per_step);
    snprintf(threads, sizeof threads, "%d threads", cf_num_threads());
    if (r.size > 1) {
        double th[2] = {cf_num_threads(), -cf_num_threads()};
        cf_dist_max_f64(th, 2);
        if (th[0] == -th[1]) snprintf(threads, sizeof threads, "%d MPI ranks x %d threads", r.size, (int)th[0]);
        else snprintf(threads, sizeof threads, "%d MPI ranks x %d..%d threads", r.size, (int)-th[1], (int)th[0]);
        snprintf(threads + strlen(threads), sizeof threads - strlen(threads), " (%d rows each, gradients in %d buckets)",
                 r.rows, cf_grad_sync_buckets(r.sync));
    }
    if (lead)
        fprintf(stderr, "cformer: training %s: %lld parameters, steps %lld..%d of %d, %s per step, %s, run %s\n", c->name,
                (long long)n_params, (long long)r.st.step + 1, last, t->steps, per_step, threads, r.dir);
    fault fail;
    fault_parse(&fail);
    int check_every = r.size > 1 ? env_int("CF_MPI_CHECK_EVERY") : 0;
    saved_handlers handlers;
    install_handlers(&handlers);
    r.t_start = now_s() - r.st.elapsed_s;
    double t_window = now_s();
    int window_steps = 0;
    int64_t window_tokens = 0;
    for (int s = (int)r.st.step; s < last; s++) {
        float lr = cf_lr_at(t, s), gnorm = 0;
        int64_t step_tokens = 0;
        float loss = train_step(&r, r.st.next_batch, lr, &gnorm, &step_tokens);
        int sig = r.size > 1 ? agree_step(&r, &loss) : 0;
        if (!isfinite(loss)) {   /* under MPI every rank sees the same loss and norm: all stop here */
            char kept[1400] = "no checkpoint was written";
            if (r.saved_step >= 0) snprintf(kept, sizeof kept, "the last checkpoint (%s/step_%lld.h5) is kept", r.ckpt_dir, (long long)r.saved_step);
            else if (r.resume_path[0]) snprintf(kept, sizeof kept, "the checkpoint resumed from (%s) is kept", r.resume_path);
            rc = cf_set_error("step %d: loss is %s (gradient norm %g); stopping, %s", s + 1,
                              isnan(loss) ? "NaN" : "infinite", gnorm, kept);
            if (!lead) cf_dist_set_quiet();   /* rank 0 says it */
            break;
        }
        r.st.step = s + 1;
        r.st.tokens_seen += step_tokens;
        r.st.next_batch += (uint64_t)t->grad_accum;
        window_steps++;
        window_tokens += step_tokens;
        int step = s + 1;
        if (fail.rank == r.rank && fail.step == step) {
            if (!strcmp(fail.how, "exit")) _exit(3);
            if (!strcmp(fail.how, "perturb")) r.model.params.values[0] += 1.0f;
            else { rc = local_error(&r, cf_set_error("injected failure after step %d (CF_DIST_FAIL=%s)", step, fail.spec)); break; }
        }
        if (check_every > 0 && step % check_every == 0) cf_dist_check_params(&r.model.params, step);
        if (lead && (step % t->log_every == 0 || step == last)) {
            double now = now_s(), tps = window_tokens / (now - t_window);
            fprintf(r.log, "{\"step\": %d, \"loss\": %.6f, \"bpb\": %.6f, \"lr\": %.6g, \"grad_norm\": %.4f, "
                           "\"tokens_per_s\": %.0f, \"elapsed_s\": %.3f}\n",
                    step, loss, loss / M_LN2, lr, gnorm, tps, now - r.t_start);
            fflush(r.log);
            double left = (last - step) * (now - t_window) / window_steps;
            if (!o->quiet)
                fprintf(stderr, "%sstep %d/%d  loss %.4f  bpb %.4f  lr %.2e  %.0f tok/s  %.0fs left%s",
                        tty ? "\r\033[K" : "", step, last, loss, loss / M_LN2, lr, tps, left, tty ? "" : "\n");
            t_window = now;
            window_steps = 0;
            window_tokens = 0;
        }
        int stopping = r.size > 1 ? sig : stop_requested;
        if (has_split(&r, 0) && t->eval_every > 0 && step % t->eval_every == 0 && step != last && !stopping) {
            cf_eval_result e;
            if ((rc = local_error(&r, evaluate(&r, 0, (size_t)t->eval_tokens, &e)))) break;
            if (e.bpb < r.st.best_valid_bpb) r.st.best_valid_bpb = e.bpb;
            log_eval(&r, step, "valid", &e);
        }
        if (t->checkpoint_every > 0 && step % t->checkpoint_every == 0 && step != last &&
            (rc = local_error(&r, save_checkpoint(&r))))
            break;
        if ((stop = r.size > 1 ? sig : stop_requested)) break;
    }
    if (tty) fputc('\n', stderr);
    if (!rc && !stop) {
        cf_eval_result e;
        if (has_split(&r, 0) && !(rc = local_error(&r, evaluate(&r, 0, (size_t)c->eval.bytes, &e)))) {
            if (e.bpb < r.st.best_valid_bpb) r.st.best_valid_bpb = e.bpb;
            log_eval(&r, r.st.step, "valid", &e);
            print_bench(&r, "valid", &e);
        }
    }
    if (!rc && r.saved_step != r.st.step) rc = local_error(&r, save_checkpoint(&r));
    if (!rc && !stop) {   /* a signal during the final evaluation or save */
        float none = 0;
        stop = r.size > 1 ? agree_step(&r, &none) : stop_requested;
    }
    if (!rc && !stop && last == t->steps && has_split(&r, 1)) {
        cf_eval_result e;
        if (!(rc = local_error(&r, evaluate(&r, 1, (size_t)c->eval.bytes, &e)))) {
            log_eval(&r, last, "test", &e);
            print_bench(&r, "test", &e);
        }
    }
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
