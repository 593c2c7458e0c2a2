/* Run configuration (DESIGN.md section 5): strict JSON with documented defaults.
 * Every key is listed in configs/README.md with its default. Unknown keys, wrong types and
 * impossible values are errors naming the key path ("model.n_heads: must divide model.d_model"). */
#ifndef CFORMER_CONFIG_H
#define CFORMER_CONFIG_H

#include <stdint.h>

typedef enum { CF_ARCH_DECODER, CF_ARCH_ENCODER_DECODER } cf_arch;
typedef enum { CF_NORM_LAYERNORM, CF_NORM_RMSNORM } cf_norm_kind;
typedef enum { CF_NORM_PRE, CF_NORM_POST } cf_norm_pos;
typedef enum { CF_ACT_GELU, CF_ACT_RELU } cf_act_kind;
typedef enum { CF_POS_LEARNED, CF_POS_SINUSOIDAL, CF_POS_NONE } cf_pos_kind;
typedef enum {
    CF_ATTN_FULL, CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED, CF_ATTN_SPARSE_FIXED,
    CF_ATTN_LINEAR, CF_ATTN_PERFORMER, CF_ATTN_XL, CF_ATTN_INFINI, CF_ATTN_KIND_COUNT
} cf_attn_kind;
typedef enum { CF_SCHED_COSINE, CF_SCHED_LINEAR, CF_SCHED_CONSTANT } cf_sched_kind;
typedef enum { CF_SAMPLE_RANDOM, CF_SAMPLE_ORDERED } cf_sample_kind;

/* model.attention (one object, or a list of them: one per layer, cycled if shorter) */
typedef struct cf_attn_config {
    cf_attn_kind type;          /* "full" */
    int   window;               /* window: 128 */
    int   stride;               /* sparse_*: 0 = round(sqrt(seq_len)) */
    int   c;                    /* sparse_fixed summary columns: 8 */
    char  combine[16];          /* sparse_*: "alternate" | "heads" | "merged" */
    int   features;             /* performer m: 128 */
    char  kernel[16];           /* performer: "softmax" | "relu" */
    int   redraw_every;         /* performer: 1000 */
    int   mem_len;              /* xl: 0 */
    int   clamp_len;            /* xl: -1 = none */
    int   segment_len;          /* infini: 128 */
    char  update[16];           /* infini: "linear" | "delta" | "none" (no memory) */
} cf_attn_config;

#define CF_MAX_LAYER_ATTN 64

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
    cf_pos_kind  position;      /* "learned" */
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
    float   weight_decay;       /* 0.1 */
    float   beta1, beta2, eps;  /* 0.9, 0.95, 1e-8 */
    float   grad_clip;          /* 1.0; 0 = off */
    int     grad_accum;         /* 1 */
    uint64_t seed;              /* 1 */
    int     grad_checkpoint;    /* "none" = 0, "blocks" = 1, integer k = region of k blocks */
    int     log_every;          /* 10 */
    int     eval_every;         /* 500; 0 = only at the end */
    int     eval_tokens;        /* 0 = the whole validation split during training */
    int     checkpoint_every;   /* 500; 0 = only at the end */
    int     keep_checkpoints;   /* 3 */
    cf_sample_kind sampling;    /* "random" windows or "ordered" streams per batch row */
    int     threads;            /* 0 = OMP_NUM_THREADS / all cores */
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
/* Parse JSON text over the defaults, then apply overrides ("model.n_layers=6"; the value is JSON,
 * or a bare string), then validate. 0 on success, else -1 with cf_error_msg() = one line that
 * names the key path. check_files: also require the data files to exist. */
int cf_config_parse(cf_config *c, const char *json_text, const char *const *overrides, int n_overrides,
                    int check_files);
int cf_config_load(cf_config *c, const char *path, const char *const *overrides, int n_overrides,
                   int check_files);
/* the resolved config (every key, defaults filled in) as pretty JSON; caller frees */
char *cf_config_to_json(const cf_config *c);
/* attention settings of layer i (cycling through the list) */
const cf_attn_config *cf_config_layer_attn(const cf_model_config *m, int layer);
const char *cf_attn_kind_name(cf_attn_kind k);

#endif
