/* The step of each optimizer, one file each, for the table of src/optim/optim.c. A step reads its
 * state as cf_optim_state(o, s, i), s being the slab's index in the optimizer's row. */
#ifndef CF_OPTIM_STEPS_H
#define CF_OPTIM_STEPS_H

#include "cformer/optim.h"

void cf_optim_adamw_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t);   /* adamw.c */
void cf_optim_lion_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t);    /* lion.c */

#endif
