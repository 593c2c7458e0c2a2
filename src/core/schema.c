/* The run configuration as data (schema.h): the names of the enum values, the defaults of every
 * key and the per-layer attention lookup. The JSON side is src/io/config.c. */
#include <stddef.h>
#include <string.h>
#include "cformer/core.h"
#include "cformer/schema.h"

/* ---- names (index = enum value) ---------------------------------------------------------- */
const char *const cf_arch_names[] = {"decoder", "encoder_decoder", NULL};
const char *const cf_norm_names[] = {"layernorm", "rmsnorm", NULL};
const char *const cf_norm_pos_names[] = {"pre", "post", NULL};
const char *const cf_act_names[] = {"gelu", "relu", "silu", NULL};
const char *const cf_pos_names[] = {"learned", "sinusoidal", "none", "rope", "alibi", NULL};
const char *const cf_attn_kind_names[] = {"full", "window", "sparse_strided", "sparse_fixed",
                                         "linear", "performer", "xl", "infini", NULL};
const char *const cf_sched_names[] = {"cosine", "linear", "constant", NULL};
const char *const cf_sample_names[] = {"random", "ordered", NULL};
const char *const cf_recompute_names[] = {"selective", "full", NULL};
_Static_assert(sizeof cf_recompute_names / sizeof *cf_recompute_names == CF_RECOMPUTE_COUNT + 1, "recompute_names");
const char *const cf_combine_names[] = {"alternate", "heads", "merged", NULL};
const char *const cf_favor_kernel_names[] = {"softmax", "relu", NULL};
const char *const cf_update_names[] = {"linear", "delta", "none", NULL};
const char *const cf_precision_names[] = {"fp32", "bf16", NULL};
const char *const cf_optim_names[] = {"adamw", "lion", NULL};
_Static_assert(sizeof cf_precision_names / sizeof *cf_precision_names == CF_PRECISION_COUNT + 1, "precision_names");
_Static_assert(sizeof cf_arch_names / sizeof *cf_arch_names == CF_ARCH_COUNT + 1, "arch_names");
_Static_assert(sizeof cf_attn_kind_names / sizeof *cf_attn_kind_names == CF_ATTN_KIND_COUNT + 1, "attn_names");
_Static_assert(sizeof cf_optim_names / sizeof *cf_optim_names == CF_OPTIM_KIND_COUNT + 1, "optim_names");

const char *cf_attn_kind_name(cf_attn_kind k) {
    return (unsigned)k < CF_ATTN_KIND_COUNT ? cf_attn_kind_names[k] : "unknown";
}

int cf_rope_dims(const cf_model_config *m) {
    int dh = m->d_model / m->n_heads;
    return 2 * (int)((double)m->rope_fraction * dh / 2 + 1e-6);
}

const char *cf_optim_name(cf_optim_kind k) {
    return (unsigned)k < CF_OPTIM_KIND_COUNT ? cf_optim_names[k] : "unknown";
}

/* ---- defaults ------------------------------------------------------------------------------------ */
void cf_attn_config_defaults(cf_attn_config *a) {
    memset(a, 0, sizeof *a);
    a->type = CF_ATTN_FULL;
    a->window = 128;
    a->stride = 0;
    a->c = 8;
    a->combine = CF_COMBINE_ALTERNATE;
    a->features = 128;
    a->kernel = CF_FAVOR_SOFTMAX;
    a->redraw_every = 1000;
    a->mem_len = 0;
    a->clamp_len = -1;
    a->segment_len = 128;
    a->update = CF_UPDATE_LINEAR;
}

void cf_config_defaults(cf_config *c) {
    memset(c, 0, sizeof *c);
    cf_model_config *m = &c->model;
    m->arch = CF_ARCH_DECODER;
    m->vocab_size = 256;
    m->d_model = 256;
    m->n_layers = 4;
    m->n_heads = 4;
    m->d_ff = 0;
    m->norm = CF_NORM_LAYERNORM;
    m->norm_position = CF_NORM_PRE;
    m->activation = CF_ACT_GELU;
    m->glu = 0;
    m->position = CF_POS_LEARNED;
    m->rope_theta = 10000.0f;
    m->rope_fraction = 1.0f;
    m->n_kv_heads = 0;   /* 0 = n_heads, resolved by parsing */
    m->qk_norm = 0;
    m->max_seq_len = 256;
    m->dropout = 0.0f;
    m->attn_dropout = -1.0f;
    m->emb_dropout = -1.0f;
    m->tie_embeddings = 1;
    m->bias = 1;
    m->norm_eps = 1e-5f;
    m->init_std = 0.02f;
    m->n_attn = 1;
    cf_attn_config_defaults(&m->attn[0]);
    m->enc_layers = 0;   /* 0 = n_layers, resolved by parsing */
    m->dec_layers = 0;
    m->label_smoothing = 0.0f;

    cf_train_config *t = &c->train;
    t->batch_size = 8;
    t->seq_len = 256;
    t->steps = 2000;
    t->lr = 3e-4f;
    t->warmup_steps = 100;
    t->schedule = CF_SCHED_COSINE;
    t->min_lr = 3e-5f;
    t->optimizer = CF_OPTIM_ADAMW;
    t->weight_decay = 0.1f;
    t->beta1 = 0.9f;
    t->beta2 = 0.95f;
    t->eps = 1e-8f;
    t->grad_clip = 1.0f;
    t->grad_accum = 1;
    t->seed = 1;
    t->grad_checkpoint = 0;
    t->recompute = CF_RECOMPUTE_SELECTIVE;
    t->log_every = 10;
    t->eval_every = 500;
    t->eval_tokens = 0;
    t->checkpoint_every = 500;
    t->keep_checkpoints = 3;
    t->sampling = CF_SAMPLE_RANDOM;
    t->threads = 0;
    t->precision = CF_PRECISION_FP32;
    t->bucket_pool = 1;

    c->eval.ctx = 0;
    c->eval.stride = 0;
    memcpy(c->name, "config", sizeof "config");   /* the rest of c is zero: memset above */
}

const cf_attn_config *cf_config_layer_attn(const cf_model_config *m, int layer) {
    CF_ASSERT(m->n_attn >= 1 && m->n_attn <= CF_MAX_LAYER_ATTN && layer >= 0,
              "cf_config_layer_attn: n_attn %d, layer %d", m->n_attn, layer);
    return &m->attn[layer % m->n_attn];
}

