/* Optimizers and gradient clipping: src/optim/. */
#ifndef CFORMER_OPTIM_H
#define CFORMER_OPTIM_H

#include "param.h"
#include "schema.h"

/* ---- src/optim/adamw.c ---- */
typedef struct cf_adamw {
    float  *m, *v;         /* (numel) first and second moments, same layout as the param slab */
    int64_t numel;
    int64_t t;             /* steps taken (bias correction) */
} cf_adamw;
void  cf_adamw_init(cf_adamw *o, const cf_params *p);
void  cf_adamw_free(cf_adamw *o);
/* One step, exactly as torch.optim.AdamW: decoupled weight decay on tensors of 2+ dims only. */
void  cf_adamw_step(cf_adamw *o, cf_params *p, float lr, const cf_train_config *t);

/* ---- src/optim/clip.c ---- */
/* Scale gradients so their global L2 norm is at most max_norm (as torch.nn.utils.clip_grad_norm_);
 * returns the norm before clipping. max_norm <= 0 only measures. */
float cf_clip_grad_norm(cf_params *p, float max_norm);

#endif
