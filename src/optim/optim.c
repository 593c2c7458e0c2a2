/* The optimizer table and the state every optimizer shares (optim.h). */
#include <stdlib.h>
#include <string.h>
#include "steps.h"

static const cf_optim_info rows[] = {
    /* AdamW (Loshchilov and Hutter 2019): first and second moments */
    [CF_OPTIM_ADAMW] = {2, {{"m", 0}, {"v", 1}}, NULL, cf_optim_adamw_step},
    /* Lion (Chen et al. 2023): momentum */
    [CF_OPTIM_LION]  = {1, {{"m", 0}}, NULL, cf_optim_lion_step},
};
_Static_assert(sizeof rows / sizeof *rows == CF_OPTIM_KIND_COUNT, "one row per cf_optim_kind");

int cf_optim_state_shape(const cf_optim *o, int s, const cf_tensor *w, int64_t shape[CF_MAX_DIMS]) {
    if (o->info->state_shape) return o->info->state_shape(s, w, shape);
    for (int d = 0; d < w->ndim; d++) shape[d] = w->shape[d];
    return w->ndim;
}

void cf_optim_init(cf_optim *o, cf_optim_kind k, const cf_params *p) {
    CF_ASSERT((unsigned)k < CF_OPTIM_KIND_COUNT && rows[k].step, "cf_optim_init: optimizer kind %d has no row", (int)k);
    CF_ASSERT(p->finalized, "cf_optim_init: the parameters are not finalized");
    memset(o, 0, sizeof *o);
    o->kind = k;
    o->info = &rows[k];
    o->n_params = p->n;
    o->n_slabs = rows[k].n_slabs;
    for (int s = 0; s < o->n_slabs; s++) {
        cf_optim_slab *sl = &o->slab[s];
        sl->name = rows[k].slabs[s].name;
        sl->offset = cf_xmalloc(sizeof(int64_t) * (size_t)(p->n ? p->n : 1));
        /* state tensors one after another, each starting on 16 floats as in the parameter slab
         * (param.c): state shaped as the parameters lies exactly where they do */
        for (int i = 0; i < p->n; i++) {
            int64_t shape[CF_MAX_DIMS], n = 1;
            int nd = cf_optim_state_shape(o, s, p->t[i], shape);
            CF_ASSERT(nd >= 1 && nd <= CF_MAX_DIMS, "optimizer %s, slab %s: %d dims", cf_optim_name(k), sl->name, nd);
            for (int d = 0; d < nd; d++) n *= shape[d];
            sl->offset[i] = sl->numel;
            sl->numel += (n + 15) & ~(int64_t)15;
        }
        int as_params = sl->numel == p->numel &&
                        (!p->n || !memcmp(sl->offset, p->offset, sizeof(int64_t) * (size_t)p->n));
        CF_ASSERT(rows[k].state_shape || as_params, "optimizer %s: state and parameter slabs differ in layout",
                  cf_optim_name(k));
        size_t bytes = (size_t)(sl->numel ? sl->numel : 1) * sizeof(float);
        sl->data = cf_xmalloc(bytes);
        cf_zero_parallel(sl->data, bytes);   /* placed as the optimizer's pass over the slab reads it */
    }
}

void cf_optim_free(cf_optim *o) {
    for (int s = 0; s < o->n_slabs; s++) {
        free(o->slab[s].data);
        free(o->slab[s].offset);
    }
    memset(o, 0, sizeof *o);
}

void cf_optim_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t) {
    CF_ASSERT(o->info && p->n == o->n_params, "cf_optim_step: the optimizer was made for other parameters");
    o->t++;
    o->info->step(o, p, lr, t);
}
