/* Parameter slabs (param.h). */
#include <stdlib.h>
#include <string.h>
#include "cformer/param.h"

void cf_params_init(cf_params *p) { memset(p, 0, sizeof *p); }

static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;                     /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void index_put(int *index, int cap, const char *name, int i) {
    size_t s = (size_t)name_hash(name) & (size_t)(cap - 1);
    while (index[s]) s = (s + 1) & (size_t)(cap - 1);
    index[s] = i + 1;
}

/* grow the table to keep it at most half full: lookups stay O(1) for any number of parameters */
static void index_grow(cf_params *p) {
    int cap = p->index_cap ? 2 * p->index_cap : 256;
    int *index = cf_xcalloc((size_t)cap, sizeof *index);
    for (int i = 0; i < p->n; i++) index_put(index, cap, p->t[i]->name, i);
    free(p->index);
    p->index = index;
    p->index_cap = cap;
}

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
    CF_ASSERT(t->name, "out of memory declaring parameters");
    if (2 * (p->n + 1) > p->index_cap) index_grow(p);
    index_put(p->index, p->index_cap, name, p->n);
    /* 16-float alignment keeps every tensor's start on a 64-byte line for the SIMD kernels */
    p->offset[p->n] = p->numel;
    p->numel += (t->numel + 15) & ~(int64_t)15;
    p->t[p->n++] = t;
    return t;
}

int cf_params_finalize(cf_params *p) {
    size_t bytes = (size_t)(p->numel ? p->numel : 16) * sizeof(float);
    uint64_t phys = cf_phys_mem_bytes();
    if (phys && 2 * (uint64_t)bytes > phys)
        return cf_set_error("%lld parameters need %llu MB for their values and gradients, more than the machine's "
                            "%llu MB of memory", (long long)p->numel, (unsigned long long)(2 * (uint64_t)bytes >> 20),
                            (unsigned long long)(phys >> 20));
    p->values = aligned_alloc(64, bytes);
    p->grads = aligned_alloc(64, bytes);
    if (!p->values || !p->grads) {
        free(p->values); free(p->grads);
        p->values = p->grads = NULL;
        return cf_set_error("cannot allocate %zu MB for %lld parameters and their gradients", 2 * bytes >> 20,
                            (long long)p->numel);
    }
    cf_zero_parallel(p->values, bytes);
    cf_zero_parallel(p->grads, bytes);
    for (int i = 0; i < p->n; i++) {
        p->t[i]->data = p->values + p->offset[i];
        p->t[i]->grad = p->grads + p->offset[i];
    }
    p->finalized = 1;
    return 0;
}

void cf_params_zero_grad(cf_params *p) { cf_zero_parallel(p->grads, (size_t)p->numel * sizeof(float)); }

cf_tensor *cf_params_find(const cf_params *p, const char *name) {
    if (!p->index_cap) return NULL;
    for (size_t s = (size_t)name_hash(name) & (size_t)(p->index_cap - 1); p->index[s];
         s = (s + 1) & (size_t)(p->index_cap - 1))
        if (!strcmp(p->t[p->index[s] - 1]->name, name)) return p->t[p->index[s] - 1];
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
    free(p->t); free(p->offset); free(p->values); free(p->grads); free(p->index);
    memset(p, 0, sizeof *p);
}
