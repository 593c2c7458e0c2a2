/* Parameter slabs (param.h). */
#include <stdlib.h>
#include <string.h>
#include "cformer/param.h"

void cf_params_init(cf_params *p) { memset(p, 0, sizeof *p); }

cf_tensor *cf_param_add(cf_params *p, const char *name, int ndim, const int *shape) {
    CF_ASSERT(!p->finalized, "param %s: added after finalize", name);
    CF_ASSERT(ndim >= 1 && ndim <= CF_MAX_DIMS, "param %s: %d dims", name, ndim);
    CF_ASSERT(!cf_params_find(p, name), "param %s: declared twice", name);
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->t = realloc(p->t, (size_t)p->cap * sizeof *p->t);
        p->offset = realloc(p->offset, (size_t)p->cap * sizeof *p->offset);
        CF_ASSERT(p->t && p->offset, "out of memory declaring parameters");
    }
    cf_tensor *t = cf_xcalloc(1, sizeof *t);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; t->numel *= shape[i]; }
    t->requires_grad = 1;
    t->is_param = 1;
    t->name = strdup(name);
    /* 16-float alignment keeps every tensor's start on a 64-byte line for the SIMD kernels */
    p->offset[p->n] = p->numel;
    p->numel += (t->numel + 15) & ~(int64_t)15;
    p->t[p->n++] = t;
    return t;
}

void cf_params_finalize(cf_params *p) {
    size_t bytes = (size_t)(p->numel ? p->numel : 16) * sizeof(float);
    p->values = aligned_alloc(64, bytes);
    p->grads = aligned_alloc(64, bytes);
    CF_ASSERT(p->values && p->grads, "out of memory: %zu MB of parameters", bytes >> 20);
    memset(p->values, 0, bytes);
    memset(p->grads, 0, bytes);
    for (int i = 0; i < p->n; i++) {
        p->t[i]->data = p->values + p->offset[i];
        p->t[i]->grad = p->grads + p->offset[i];
    }
    p->finalized = 1;
}

void cf_params_zero_grad(cf_params *p) { memset(p->grads, 0, (size_t)p->numel * sizeof(float)); }

cf_tensor *cf_params_find(const cf_params *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->t[i]->name, name)) return p->t[i];
    return NULL;
}

void *cf_params_note(cf_params *p, size_t bytes) {
    p->notes = realloc(p->notes, (size_t)(p->n_notes + 1) * sizeof *p->notes);
    CF_ASSERT(p->notes, "out of memory noting layer state");
    return p->notes[p->n_notes++] = cf_xcalloc(1, bytes);
}

void cf_params_free(cf_params *p) {
    for (int i = 0; i < p->n_notes; i++) free(p->notes[i]);
    free(p->notes);
    for (int i = 0; i < p->n; i++) { free((void *)p->t[i]->name); free(p->t[i]); }
    free(p->t); free(p->offset); free(p->values); free(p->grads);
    memset(p, 0, sizeof *p);
}
