/* Optimizers and gradient clipping: src/optim/. */
#ifndef CFORMER_OPTIM_H
#define CFORMER_OPTIM_H

#include "param.h"
#include "schema.h"

/* ---- the optimizer interface: src/optim/optim.c ----
 * Every optimizer is one row of a table indexed by cf_optim_kind (schema.h; its config name is
 * cf_optim_names[kind]), and its step lives in its own file (src/optim/<name>.c). Its state is the
 * step count t and a few named float slabs ("m", "v"), each holding one state tensor per parameter.
 * A state tensor has its parameter's shape unless the row says otherwise (state_shape, for state
 * such as factored moments); with the parameters' shapes a slab has exactly the layout of the
 * parameter slab (same offsets, same numel), so a step indexes state, weights and gradients alike.
 * Checkpoints store slab s of parameter i as /optimizer/<slab name>/<parameter name>. */
#define CF_OPTIM_MAX_SLABS 4

typedef struct cf_optim cf_optim;

typedef struct cf_optim_slab_info {
    const char *name;       /* "m", "v": a checkpoint group name (not "t" or "name", which /optimizer holds) */
    int         nonneg;     /* every element is >= 0: loading a checkpoint refuses a negative one */
} cf_optim_slab_info;

/* a row of the table */
typedef struct cf_optim_info {
    int                n_slabs;
    cf_optim_slab_info slabs[CF_OPTIM_MAX_SLABS];
    /* the shape of slab s's state for parameter w into shape[], returning its ndim (1..CF_MAX_DIMS);
     * NULL: every state tensor has its parameter's shape */
    int  (*state_shape)(int s, const cf_tensor *w, int64_t shape[CF_MAX_DIMS]);
    /* one step with o->t already counted; the gradients are in p (after clipping) */
    void (*step)(cf_optim *o, cf_params *p, float lr, const cf_train_config *t);
} cf_optim_info;

typedef struct cf_optim_slab {
    const char *name;       /* the row's slab name */
    float      *data;       /* numel floats, zeroed by cf_optim_init */
    int64_t     numel;
    int64_t    *offset;     /* (one per parameter) where each parameter's state starts in data */
} cf_optim_slab;

struct cf_optim {
    cf_optim_kind kind;
    const cf_optim_info *info;   /* its row */
    int64_t       t;             /* steps taken (AdamW's bias correction) */
    int           n_params;
    int           n_slabs;
    cf_optim_slab slab[CF_OPTIM_MAX_SLABS];
};

/* an optimizer of kind k for the parameters p (finalized), with zero state and t = 0 */
void  cf_optim_init(cf_optim *o, cf_optim_kind k, const cf_params *p);
void  cf_optim_free(cf_optim *o);
/* one step at learning rate lr with train.beta1, beta2, eps, weight_decay of t; p must be the
 * parameters the optimizer was made for */
void  cf_optim_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t);
/* the shape of slab s's state for parameter w (of the optimizer's parameters) into shape[]; returns ndim */
int   cf_optim_state_shape(const cf_optim *o, int s, const cf_tensor *w, int64_t shape[CF_MAX_DIMS]);
/* slab s's state for parameter i */
static inline float *cf_optim_state(const cf_optim *o, int s, int i) { return o->slab[s].data + o->slab[s].offset[i]; }

/* ---- src/optim/clip.c ---- */
/* Scale gradients so their global L2 norm is at most max_norm (as torch.nn.utils.clip_grad_norm_);
 * returns the norm before clipping. max_norm <= 0 only measures. */
float cf_clip_grad_norm(cf_params *p, float max_norm);

#endif
