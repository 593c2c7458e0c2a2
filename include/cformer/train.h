/* Training: AdamW, learning-rate schedule, gradient clipping, the trainer loop, evaluation in
 * bits per byte and sampling. */
#ifndef CFORMER_TRAIN_H
#define CFORMER_TRAIN_H

#include "config.h"
#include "data.h"
#include "model.h"

/* ---- src/train/optim.c ---- */
typedef struct cf_adamw {
    float  *m, *v;         /* (numel) first and second moments, same layout as the param slab */
    int64_t numel;
    int64_t t;             /* steps taken (bias correction) */
} cf_adamw;
void  cf_adamw_init(cf_adamw *o, const cf_params *p);
void  cf_adamw_free(cf_adamw *o);
/* One step, exactly as torch.optim.AdamW: decoupled weight decay on tensors of 2+ dims only. */
void  cf_adamw_step(cf_adamw *o, cf_params *p, float lr, const cf_train_config *t);
/* Scale gradients so their global L2 norm is at most max_norm (as torch.nn.utils.clip_grad_norm_);
 * returns the norm before clipping. max_norm <= 0 only measures. */
float cf_clip_grad_norm(cf_params *p, float max_norm);
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

/* ---- src/train/sample.c ---- */
/* Append n_new bytes to out (which starts with the prompt of n_prompt bytes, capacity
 * n_prompt + n_new), sampling with temperature (0 = greedy) and top-k (0 = all) from a seeded RNG. */
int cf_sample(cf_model *m, cf_ctx *ctx, uint8_t *out, int n_prompt, int n_new, float temperature, int top_k,
              uint64_t seed);

#endif

#ifndef CFORMER_TRAINER_DECL
#define CFORMER_TRAINER_DECL
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
/* Time the training step (forward, backward, AdamW) on random bytes after warm-up; prints
 * BENCH train_step ... and returns the median tokens/s. */
double cf_bench_train_step(const cf_config *c, int steps);
#endif
