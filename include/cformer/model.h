/* Models built from a config: the decoder-only language model (GPT-2 architecture by default,
 * docs/architecture.md section 7.1). */
#ifndef CFORMER_MODEL_H
#define CFORMER_MODEL_H

#include "nn.h"

typedef struct cf_region { cf_block *blocks; int n; } cf_region;   /* blocks checkpointed together */

/* The state recurrent attention layers carry between calls, one row per stream (batch row); a
 * constant to autograd (no gradient flows into the past). Layer l's arrays are the ones its
 * variant declares (attention.h: cf_attn_variant.state), in that order: xl its memory of the last
 * mem_len inputs [batch, mem_len, D], most recent last; infini its memory M [batch, H, Dh, Dh] and
 * normaliser z [batch, H, Dh]. src/model/recurrent.c. */
typedef struct cf_rec_state {
    int     batch;                            /* streams held; 0: none yet */
    float **arr[2];                           /* [n_blocks]: layer l's arrays (NULL: none) */
    int    *used;                             /* [n_blocks]: sub-rows of the first dimension in use
                                               * (the same for every stream); 0: no state yet */
} cf_rec_state;

typedef struct cf_model_family cf_model_family;

typedef struct cf_model {
    const cf_model_family *family;    /* what model.arch builds (below) */
    cf_model_config cfg;
    cf_params       params;
    cf_tensor      *tok_emb;          /* [V, D] */
    cf_tensor      *pos_emb;          /* [max_seq_len, D] when position is learned, else NULL */
    float          *pos_table;        /* [max_seq_len, D] sinusoids when position is sinusoidal */
    cf_tensor      *lm_head;          /* [V, D] when embeddings are untied, else NULL */
    cf_norm_layer   ln_f;
    cf_block       *blocks;
    int             n_blocks;
    int             grad_checkpoint;  /* 0: none; k: regions of k blocks recomputed in backward */
    int             full_recompute;   /* 1: a region keeps only its input (train.recompute "full") */
    cf_region      *regions;
    int             n_regions;
    /* model.arch "encoder_decoder": the model's layers (encdec.h); its parameters are in params and
     * the decoder-only fields above stay empty. NULL for the decoder-only model. */
    struct cf_encdec *ed;
    /* Recurrent attention (docs/attention.md sections 7 and 8): layers of type xl or infini carry
     * state from one call to the next, per batch row (stream). Transformer-XL has no absolute
     * positions (model.position is ignored), scales token embeddings by sqrt(D), projects relative
     * sinusoids through each xl layer's r_net, and shares u, v between the xl layers. */
    int             has_xl, has_infini;
    cf_tensor      *r_w_bias, *r_r_bias;  /* xl: u, v [H, Dh] */
    cf_rec_state    rec;              /* the training streams' state (saved in checkpoints) */
    cf_rec_state   *state;            /* the state calls read and write: &rec, or an evaluation's */
    int             stream;           /* 1: read and write *state outside training too (evaluation) */
} cf_model;

/* ---- the model interface (src/model/model.c) -------------------------------------------------------
 * What the trainer, evaluator, benchmark and checkpoint code ask of a model, whatever its family:
 * one row per model.arch, defined in the family's own file (decoder.c, encdec.c). A new family is
 * a new file with its row, one line in cf_model_families, and its data kind (data.h). */

/* One batch of either family. */
typedef struct cf_batch {
    int B, T;                          /* rows; tokens per row (an encoder-decoder's target side) */
    const int32_t *x, *y;              /* decoder-only: input bytes and the bytes that follow [B, T] */
    const struct cf_s2s_batch *pairs;  /* encoder-decoder: padded sources, decoder inputs, targets */
    int64_t tokens;                    /* the real tokens it trains on (both sides of a pair) */
} cf_batch;

struct cf_model_family {
    const char *name;                                                  /* == cf_arch_names[arch] */
    const char *title;                        /* for messages: "decoder-only", "encoder-decoder" */
    const char *generator;                    /* the command that generates with it: "sample", "translate" */
    /* declare the parameters and initialise them; -1 with cf_error_msg() naming the key for a
     * configuration the family cannot build */
    int    (*init)(cf_model *m, const cf_model_config *c, uint64_t seed);
    void   (*free)(cf_model *m);                                       /* what init allocated besides params */
    size_t (*arena_bytes)(const cf_model_config *c, int B, int T);     /* a bound for one step of B x T */
    cf_tensor *(*loss)(cf_model *m, cf_ctx *ctx, const cf_batch *b);   /* mean cross-entropy in nats */
    /* the self-attention layers, in declaration order, into out (NULL: only count them) */
    int    (*attn_layers)(cf_model *m, cf_attn_layer **out);
};
extern const cf_model_family cf_decoder_family, cf_encdec_family;
extern const cf_model_family *const cf_model_families[CF_ARCH_COUNT];

/* Build the model of config c: every parameter declared and initialised (normal(0, init_std),
 * residual output projections scaled by 1/sqrt(2 n_layers), zero biases, unit norm weights).
 * Seed CF_SEED_NONE declares them and leaves them zero, for a checkpoint to fill (drawing a
 * few million normals is most of the start of `cformer sample` and `eval`).
 * -1 with cf_error_msg() for a configuration the model cannot build. */
#define CF_SEED_NONE UINT64_MAX
int  cf_model_init(cf_model *m, const cf_model_config *c, uint64_t seed);
void cf_model_free(cf_model *m);
/* the loss of a batch of the model's own kind */
cf_tensor *cf_model_batch_loss(cf_model *m, cf_ctx *ctx, const cf_batch *b);
/* Outside training the performer uses the random features of the step it last trained at: a
 * model fresh from a checkpoint saved after training batch `step` under `seed` is told so here. */
void cf_model_set_step(cf_model *m, uint64_t seed, uint64_t step);
void cf_model_set_checkpointing(cf_model *m, int k);
/* train.recompute: what a checkpointed region keeps (core.h: cf_checkpoint_selective); the regions
 * of a model with xl or infini layers recompute in full whatever it says */
void cf_model_set_recompute(cf_model *m, cf_recompute_kind kind);
/* Forget the recurrent state (*m->state): the next call starts every stream afresh. A no-op for
 * models without xl or infini layers. */
void cf_model_reset_memory(cf_model *m);
int  cf_model_is_recurrent(const cf_model *m);
/* Allocate st for `batch` streams (freeing what it held), every stream empty. */
void cf_rec_state_alloc(const cf_model *m, cf_rec_state *st, int batch);
void cf_rec_state_free(const cf_model *m, cf_rec_state *st);

/* The state of one layer as named arrays of one row per stream, for the code that saves, loads,
 * scatters and gathers it without knowing the variant (checkpoints, MPI). A stream's part of an
 * array has `shape` (ndim dims); when `used` < shape[0] only the first `used` sub-rows hold data
 * (Transformer-XL's memory before it has seen mem_len rows). */
#define CF_STATE_MAX_ARRAYS CF_ATTN_MAX_STATE
typedef struct cf_state_array {
    const char *name;          /* its dataset name in checkpoints: "xl_mem", "infini_M", "infini_z" */
    float  *data;              /* [batch, shape...]; NULL when described without a state */
    int     ndim;
    int64_t shape[3];          /* one stream's part; shape[0] is the capacity in sub-rows */
    int64_t row;               /* floats per stream: the product of shape */
    int     used;              /* sub-rows of shape[0] in use */
    int     nonneg;            /* every value is >= 0 (a normaliser: a sum of positive features) */
} cf_state_array;
/* the arrays of layer l (0 for a stateless layer) with st's data and counters, or only their
 * names and shapes when st is NULL; returns how many, and whether the layer holds state now in
 * *present (NULL: not asked) */
int  cf_rec_state_arrays(const cf_model *m, const cf_rec_state *st, int l, cf_state_array *out, int *present);
/* record that layer l holds state, its variable arrays `used` sub-rows (0: holds none) */
void cf_rec_state_set_used(const cf_model *m, cf_rec_state *st, int l, int used);
/* streams [row0, row0 + dst->batch) of src into dst (both allocated for m), with the counters */
void cf_rec_state_copy_rows(const cf_model *m, cf_rec_state *dst, const cf_rec_state *src, int row0);
/* Transformer-XL's memory length at evaluation (cformer eval --mem-len): every xl layer keeps n
 * rows from now on; the state is reset. */
void cf_model_set_mem_len(cf_model *m, int n);
/* logits [B, T, V] for ids [B, T]. Recurrent layers read *m->state and replace it with this
 * call's (in training, or when m->stream is set): each batch row continues the stream of the same
 * row of the previous call; a call with a different B starts every stream afresh. Outside
 * training without m->stream the state is neither read nor written. */
cf_tensor *cf_model_logits(cf_model *m, cf_ctx *ctx, const int32_t *ids, int B, int T);
/* the blocks of a model with recurrent layers, embedded h [B, T, D] -> the last block's output,
 * reading and writing the state as cf_model_logits says (src/model/recurrent.c) */
cf_tensor *cf_model_rec_blocks(cf_model *m, cf_ctx *ctx, cf_tensor *h);
/* mean cross-entropy in nats of targets [B, T]; logits_out (optional) receives the logits */
cf_tensor *cf_model_loss(cf_model *m, cf_ctx *ctx, const int32_t *ids, const int32_t *targets, int B, int T,
                         cf_tensor **logits_out);
/* ---- incremental decoding (src/model/generate.c; docs/architecture.md section 20) --------------------
 * A decoder-only model fed one stream of bytes a few at a time, each layer keeping its variant's
 * cache (attention.h: cf_attn_cache), so that a new byte costs one row through the blocks. No
 * autograd; the caches are allocated once, by cf_gen_init. The logits of every fed row equal
 * those of the full forward on the same prefix (cf_model_logits), within float rounding:
 *   - a model without recurrent layers: the forward on the whole prefix. Learned or sinusoidal
 *     positions, and layers that keep every position (full, sparse), bound the context to span
 *     positions (cf_gen_room); past it the caller starts again on a shorter text (cf_gen_reset).
 *   - a model with xl or infini layers: streamed evaluation's forward, calls of span positions
 *     each continuing the state of the one before (m->stream); positions restart at every call,
 *     other layers see their call only, and the memory carries. No bound. */
typedef struct cf_gen {
    cf_model      *m;
    cf_ctx        *ctx;               /* scratch only (its arena); gradients off while feeding */
    int            span;              /* positions of one call (recurrent), else of the context */
    int            recurrent;         /* the model has xl or infini layers */
    int            bounded;           /* a model without them that cannot go past span positions */
    int            max_rows;          /* rows fed at once (longer feeds are cut) */
    int64_t        pos;               /* positions fed since init or reset */
    cf_attn_cache *cache;             /* [n_blocks] */
    cf_attn_state  state;             /* what xl layers read: u, v */
    float         *slab;              /* every cache's floats */
    size_t         slab_floats;
    float         *x, *logits;        /* [max_rows, D], [max_rows, V] */
} cf_gen;

/* Ready to decode one stream with m (which must be decoder-only): span as above (a recurrent
 * model's call length, normally eval.ctx; otherwise at most max_seq_len with absolute positions),
 * rows fed at once at most max_rows. -1 with cf_error_msg() for an encoder-decoder or a span the
 * model cannot take. */
int  cf_gen_init(cf_gen *g, cf_model *m, cf_ctx *ctx, int span, int max_rows);
void cf_gen_free(cf_gen *g);
/* forget the stream: the next byte fed is position 0 with empty caches */
void cf_gen_reset(cf_gen *g);
/* positions that may still be fed (INT64_MAX when nothing bounds the stream) */
int64_t cf_gen_room(const cf_gen *g);
/* Feed n bytes (ids [n], n <= cf_gen_room) and return the logits [n, V] of the byte after each,
 * valid until the next feed. */
const float *cf_gen_feed(cf_gen *g, const int32_t *ids, int n);
/* bytes of memory the caches hold */
size_t cf_gen_bytes(const cf_gen *g);

/* a generous bound on the arena bytes one training step of B x T needs (B pairs of at most T
 * tokens a side for an encoder-decoder) */
size_t cf_model_arena_bytes(const cf_model_config *c, int B, int T);

#endif
