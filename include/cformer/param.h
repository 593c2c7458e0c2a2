/* Parameters: named tensors whose values and gradients live in two slabs allocated once, so the
 * optimiser is one loop over numel and a checkpoint writes one dataset per name. */
#ifndef CFORMER_PARAM_H
#define CFORMER_PARAM_H

#include "core.h"

typedef struct cf_params {
    int         n, cap;
    cf_tensor **t;          /* t[i]->data/grad point into the slabs after finalize */
    int64_t    *offset;     /* element offset of t[i] in the slabs */
    float      *values;     /* (numel) */
    float      *grads;      /* (numel) */
    int64_t     numel;
    int         finalized;
    void      **notes;      /* cf_params_note's blocks */
    int         n_notes;
    int        *index;      /* open-addressing hash of the names: slot -> i + 1 (0 = empty) */
    int         index_cap;  /* slots, a power of two at least twice n */
} cf_params;

void       cf_params_init(cf_params *p);
/* declare a parameter; its memory exists after cf_params_finalize */
cf_tensor *cf_param_add(cf_params *p, const char *name, int ndim, const int *shape);
/* Allocate the slabs (zeroed). -1 with cf_error_msg() giving the size when values and gradients
 * would not fit in the machine's memory, or the allocation fails. */
int        cf_params_finalize(cf_params *p);
void       cf_params_zero_grad(cf_params *p);
cf_tensor *cf_params_find(const cf_params *p, const char *name);   /* by hash: O(1) */
/* zeroed memory that lives as long as the parameters but is not one (no gradient, not in the
 * slabs, not saved): what a layer notes about how it last ran (the performer's draw) */
void      *cf_params_note(cf_params *p, size_t bytes);
void       cf_params_free(cf_params *p);

#endif
