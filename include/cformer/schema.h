/* The run configuration as data: the types, enums and defaults of every config key, and the
 * per-layer attention lookup. No JSON here: config.h reads and writes these structs as JSON at the
 * top of the stack, while nn/, model/ and attention/ use this header alone. Every key is listed in
 * configs/README.md with its default. */
#ifndef CFORMER_SCHEMA_H
#define CFORMER_SCHEMA_H

#include <stdint.h>

typedef enum { CF_ARCH_DECODER, CF_ARCH_ENCODER_DECODER, CF_ARCH_COUNT } cf_arch;
typedef enum { CF_NORM_LAYERNORM, CF_NORM_RMSNORM } cf_norm_kind;
typedef enum { CF_NORM_PRE, CF_NORM_POST } cf_norm_pos;
typedef enum { CF_ACT_GELU, CF_ACT_RELU, CF_ACT_SILU } cf_act_kind;
/* learned and sinusoidal add a table to the embeddings (capped at max_seq_len); none, rope and alibi
 * add nothing there: rope rotates queries and keys, alibi biases the scores (docs/attention.md section 11) */
typedef enum { CF_POS_LEARNED, CF_POS_SINUSOIDAL, CF_POS_NONE, CF_POS_ROPE, CF_POS_ALIBI } cf_pos_kind;
/* does position p add a table, which caps a sequence at max_seq_len? */
static inline int cf_pos_has_table(cf_pos_kind p) { return p == CF_POS_LEARNED || p == CF_POS_SINUSOIDAL; }
typedef enum {
    CF_ATTN_FULL, CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED, CF_ATTN_SPARSE_FIXED,
    CF_ATTN_LINEAR, CF_ATTN_PERFORMER, CF_ATTN_XL, CF_ATTN_INFINI, CF_ATTN_KIND_COUNT
} cf_attn_kind;
typedef enum { CF_COMBINE_ALTERNATE, CF_COMBINE_HEADS, CF_COMBINE_MERGED } cf_combine_kind;
typedef enum { CF_FAVOR_SOFTMAX, CF_FAVOR_RELU } cf_favor_kernel;
typedef enum { CF_UPDATE_LINEAR, CF_UPDATE_DELTA, CF_UPDATE_NONE } cf_update_kind;
typedef enum { CF_PRECISION_FP32, CF_PRECISION_BF16, CF_PRECISION_COUNT } cf_precision;
typedef enum { CF_SCHED_COSINE, CF_SCHED_LINEAR, CF_SCHED_CONSTANT } cf_sched_kind;
typedef enum { CF_SAMPLE_RANDOM, CF_SAMPLE_ORDERED } cf_sample_kind;
typedef enum { CF_RECOMPUTE_SELECTIVE, CF_RECOMPUTE_FULL, CF_RECOMPUTE_COUNT } cf_recompute_kind;
/* train.optimizer; each kind is a row of the optimizer table (optim.h, src/optim/optim.c) */
typedef enum { CF_OPTIM_ADAMW, CF_OPTIM_LION, CF_OPTIM_KIND_COUNT } cf_optim_kind;

/* model.attention (one object, or a list of them: one per layer, cycled if shorter) */
typedef struct cf_attn_config {
    cf_attn_kind type;          /* "full" */
    int   window;               /* window: 128 */
    int   stride;               /* sparse_*: 0 = round(sqrt(seq_len)) */
    int   c;                    /* sparse_fixed summary columns: 8 */
    cf_combine_kind combine;    /* sparse_*: "alternate" | "heads" | "merged" */
    int   features;             /* performer m: 128 */
    cf_favor_kernel kernel;     /* performer: "softmax" | "relu" */
    int   redraw_every;         /* performer: 1000 */
    int   mem_len;              /* xl: 0 */
    int   clamp_len;            /* xl: -1 = none */
    int   segment_len;          /* infini: 128 */
    cf_update_kind  update;     /* infini: "linear" | "delta" | "none" (no memory) */
} cf_attn_config;

#define CF_MAX_LAYER_ATTN 64
#define CF_MAX_THREADS 1024     /* train.threads and --threads */

/* one stack of blocks; a decoder model has one, an encoder-decoder two (encoder, decoder) */
typedef struct cf_model_config {
    cf_arch      arch;          /* "decoder" */
    int          vocab_size;    /* 256 */
    int          d_model;       /* 256 */
    int          n_layers;      /* 4 */
    int          n_heads;       /* 4 */
    int          d_ff;          /* 0 = 4 * d_model */
    cf_norm_kind norm;          /* "layernorm" */
    cf_norm_pos  norm_position; /* "pre" */
    cf_act_kind  activation;    /* "gelu" (tanh approximation) */
    int          glu;           /* false; true: feed-forward W2 (act(W1 x) * W3 x) (GEGLU, SwiGLU) */
    cf_pos_kind  position;      /* "learned" */
    float        rope_theta;    /* 10000: rope's base of the rotation frequencies */
    float        rope_fraction; /* 1.0: share of each head's dimensions that rope rotates */
    int          n_kv_heads;    /* 0 = n_heads; fewer: grouped-query attention (1: multi-query) */
    int          qk_norm;       /* false; true: RMSNorm of each head's query and key before the scores */
    int          max_seq_len;   /* 256 */
    float        dropout;       /* 0: residual dropout */
    float        attn_dropout;  /* -1 = same as dropout */
    float        emb_dropout;   /* -1 = same as dropout */
    int          tie_embeddings;/* true */
    int          bias;          /* true: biases on every linear layer */
    float        norm_eps;      /* 1e-5 */
    float        init_std;      /* 0.02 */
    int          n_attn;        /* entries in attn[] (1 when a single object was given) */
    cf_attn_config attn[CF_MAX_LAYER_ATTN];
    /* encoder-decoder only: sizes of the two stacks (the other keys are shared) */
    int          enc_layers, dec_layers;
    float        label_smoothing; /* 0 */
} cf_model_config;

typedef struct cf_train_config {
    int     batch_size;         /* 8 */
    int     seq_len;            /* 256 */
    int     steps;              /* 2000 */
    float   lr;                 /* 3e-4 */
    int     warmup_steps;       /* 100 */
    cf_sched_kind schedule;     /* "cosine" */
    float   min_lr;             /* 3e-5 */
    cf_optim_kind optimizer;    /* "adamw" */
    float   weight_decay;       /* 0.1 */
    float   beta1, beta2, eps;  /* 0.9, 0.95, 1e-8 */
    float   grad_clip;          /* 1.0; 0 = off */
    int     grad_accum;         /* 1 */
    uint64_t seed;              /* 1 */
    int     grad_checkpoint;    /* "none" = 0, "blocks" = 1, integer k = region of k blocks */
    cf_recompute_kind recompute; /* "selective": regions keep attention outputs and residuals; "full" */
    int     log_every;          /* 10 */
    int     eval_every;         /* 500; 0 = only at the end */
    int     eval_tokens;        /* 0 = the whole validation split during training */
    int     checkpoint_every;   /* 500; 0 = only at the end */
    int     keep_checkpoints;   /* 3 */
    cf_sample_kind sampling;    /* "random" windows or "ordered" streams per batch row */
    int     threads;            /* 0 = OMP_NUM_THREADS / all cores */
    cf_precision precision;     /* "fp32"; "bf16": matrix products on bfloat16 operands, fp32 sums */
    int     bucket_pool;        /* 1; encoder-decoder: batches from pools of bucket_pool x batch_size pairs
                                 * sorted by length (pairs.h: cf_pairs_sample) */
} cf_train_config;

typedef struct cf_data_config {
    char train[1024], valid[1024], test[1024];  /* byte files; "" = none */
} cf_data_config;

typedef struct cf_eval_config {
    int ctx;                    /* 0 = train.seq_len */
    int stride;                 /* 0 = ctx / 2 */
    int bytes;                  /* final evaluations score the first `bytes` of each split; 0 = all */
} cf_eval_config;

typedef struct cf_config {
    cf_model_config model;
    cf_train_config train;
    cf_data_config  data;
    cf_eval_config  eval;
    char name[256];             /* the config file's base name without .json (run directory names) */
} cf_config;

/* defaults for every key */
void cf_config_defaults(cf_config *c);
/* default settings of one model.attention entry */
void cf_attn_config_defaults(cf_attn_config *a);
/* attention settings of layer i (cycling through the list) */
const cf_attn_config *cf_config_layer_attn(const cf_model_config *m, int layer);

/* The config's names of each enum's values, indexed by the value and NULL-terminated. */
extern const char *const cf_arch_names[], *const cf_norm_names[], *const cf_norm_pos_names[],
    *const cf_act_names[], *const cf_pos_names[], *const cf_attn_kind_names[], *const cf_sched_names[],
    *const cf_sample_names[], *const cf_combine_names[], *const cf_favor_kernel_names[],
    *const cf_update_names[], *const cf_optim_names[], *const cf_precision_names[], *const cf_recompute_names[];
const char *cf_attn_kind_name(cf_attn_kind k);
/* the dimensions of a head that rope rotates: rope_fraction of d_model / n_heads, rounded down to
 * an even count (the rotated pairs) */
int cf_rope_dims(const cf_model_config *m);
const char *cf_optim_name(cf_optim_kind k);

#endif
