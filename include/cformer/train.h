/* Training: the trainer loop, the learning-rate schedule, evaluation in bits per byte and the
 * benchmark of the training step. */
#ifndef CFORMER_TRAIN_H
#define CFORMER_TRAIN_H

#include "config.h"
#include "dataset.h"
#include "model.h"
#include "optim.h"

/* ---- src/train/schedule.c ---- */
/* learning rate at step s (0-based): linear warmup, then cosine (or linear) decay to min_lr */
float cf_lr_at(const cf_train_config *t, int s);

/* ---- src/train/eval.c ---- */
typedef struct cf_eval_result {
    double bits, bpb, seconds;
    int64_t bytes;
    /* encoder-decoder (pairs.h: cf_s2s_eval): bytes counts the scored target tokens (bytes and EOS),
     * pairs the pairs decoded, exact the fraction whose greedy decoding equals the target; 0 otherwise */
    int64_t pairs;
    double exact;
} cf_eval_result;
/* Bits per byte over bytes [0, n) of data: every byte after the first is predicted exactly once
 * (the first has no context); windows of ctx bytes advance by stride and each scores only its
 * last stride positions (the first window scores all), so every prediction after the first
 * window sees at least ctx - stride bytes of context. batch windows run at once. A model with
 * recurrent layers (xl, infini) instead reads `batch` contiguous columns in order, ctx bytes at a
 * time, carrying its state (stride is unused): each byte sees everything before it in its column
 * that the memory holds. */
int cf_eval_bpb(cf_model *m, cf_ctx *ctx, const uint8_t *data, size_t n, int ctx_len, int stride,
                int batch, cf_eval_result *r);

/* Bits per byte over bytes [0, n) of data through incremental decoding (model.h: cf_gen): one
 * stream, every byte after the first scored once, the caches carried along it. span as for
 * cf_gen_init (a recurrent model's call length: with ctx_len as span this scores what
 * cf_eval_bpb's streams do with one column); reset_every_call: start afresh after every span
 * bytes, so that no memory crosses a call (the ablation of a recurrent model's memory). */
int cf_eval_cached(cf_model *m, cf_ctx *ctx, const uint8_t *data, size_t n, int span, int reset_every_call,
                   cf_eval_result *r);

/* Validation of an encoder-decoder on pairs, in file order, batch pairs at a time, each cut to
 * seq_len tokens a side as in training: r->bpb = bits per scored target token (each target byte and
 * the closing EOS; label smoothing does not apply), r->exact = the fraction of pairs whose greedy
 * decoding (at most seq_len tokens) equals the whole target. max_tokens > 0 stops after the batch
 * in which the scored target tokens reach it (train.eval_tokens); 0 = every pair. */
int cf_s2s_eval(cf_model *m, cf_ctx *ctx, const cf_pairs *p, int64_t max_tokens, int batch, int seq_len,
                cf_eval_result *r);

/* Split s of a run's data, as its kind evaluates it: bits per byte (windows, or streams with the
 * state for recurrent models) of byte files, or bits per target token and exact match of pair
 * files. limit > 0 reads at most that many bytes (pairs: scored target tokens). Under MPI a byte
 * split is shared among the ranks (collective) and the figures are the whole split's. */
int  cf_eval_dataset(cf_model *m, cf_ctx *ctx, const cf_dataset *d, cf_split s, size_t limit, cf_eval_result *r);
/* the BENCH eval line of a final evaluation of split `split` */
void cf_eval_print_bench(const cf_model *m, const cf_dataset *d, const char *split, const cf_eval_result *e);

/* ---- src/train/trainer.c ---- */
typedef struct cf_train_opts {
    const char *out_dir;     /* NULL: runs/<config name>-<timestamp> */
    const char *resume;      /* checkpoint or run directory to continue from, or NULL */
    int         until;       /* stop after this step (the schedule still follows train.steps); 0 = steps */
    int         quiet;       /* no progress line */
    int        *stop_signal; /* out (optional): SIGINT or SIGTERM when one stopped the run, else 0 */
} cf_train_opts;
/* Train as the config says, writing RUN/ckpt/step_<N>.h5 and latest.h5 (checkpoint.h) every
 * train.checkpoint_every steps and at the end. 0 on success; -1 with cf_error_msg() (bad data or
 * checkpoint, NaN loss, I/O), when nothing of a failed resume was written and no checkpoint was
 * replaced; 1 when SIGINT or SIGTERM stopped the run after the current step and a checkpoint
 * (a second signal kills at once: the last complete checkpoint stays intact). */
int cf_train(const cf_config *c, const cf_train_opts *o);

/* ---- src/train/bench.c ---- */
/* Time the training step (forward, backward, train.optimizer's step) on random bytes after
 * warm-up; prints BENCH train_step ... and returns the median tokens/s. profile: also print the
 * profile of the timed steps (core.h: cf_prof) as a table and BENCH profile lines: per op kind and
 * direction, the optimizer, the rest of the step, the batch and an evaluation forward. */
double cf_bench_train_step(const cf_config *c, int steps, int profile);

#endif
