/* embedding: a gather of table rows by id, forward and backward side by side.
 *
 * The node borrows the ids (node->ptr) instead of copying them: the caller keeps the ids array
 * alive and unchanged until backward has run (for a checkpointed region, until its recompute).
 *
 * Backward is a scatter-add, where several positions may carry the same id. Rather than atomics it
 * splits the table's columns into blocks, one task each: every gradient element is then summed by
 * one thread, over positions in their order, which gives the same bits for any thread count. */
#include <string.h>
#include "cformer/ops.h"
#include "backward.h"

#define EMB_PAR_MIN 32768    /* elements below which threads cost more than they save */
#define EMB_COL_BLOCK 16     /* a 64-byte line of floats: tasks never share a cache line */

cf_tensor *cf_embedding(cf_ctx *ctx, cf_tensor *table, const int32_t *ids, int ndim, const int *ids_shape) {
    CF_ASSERT(table->ndim == 2, "embedding: the table must be [V, D], got %s", cf_shape_str(table));
    CF_ASSERT(ndim >= 1 && ndim <= CF_MAX_DIMS - 1, "embedding: ids have %d dims (1..%d allowed)", ndim, CF_MAX_DIMS - 1);
    int V = table->shape[0], D = table->shape[1];
    int shape[CF_MAX_DIMS];
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        CF_ASSERT(ids_shape[i] >= 0, "embedding: negative ids dimension %d", ids_shape[i]);
        shape[i] = ids_shape[i];
        count *= ids_shape[i];
    }
    shape[ndim] = D;
    CF_ASSERT(ids || count == 0, "embedding: ids is NULL");
    /* checked before any thread starts, so the first bad position is the one reported */
    for (int64_t p = 0; p < count; p++)
        CF_ASSERT(ids[p] >= 0 && ids[p] < V, "embedding: id %d at position %lld is outside [0, %d) (table %s)",
                  (int)ids[p], (long long)p, V, cf_shape_str(table));
    cf_tensor *y = cf_tensor_new(ctx, ndim + 1, shape);
    #pragma omp parallel for schedule(static) if (count * D > EMB_PAR_MIN)
    for (int64_t p = 0; p < count; p++)
        memcpy(y->data + p * D, table->data + (int64_t)ids[p] * D, (size_t)D * sizeof(float));
    cf_node *n = cf_record(ctx, CF_OP_EMBEDDING, y, 1, &table);
    if (n) { n->ptr = ids; n->iarg[0] = count; }
    return y;
}

/* dtable[ids[p], :] += dy[p, :] for every position p, in position order */
void cf_embedding_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *table = n->in[0];
    const int32_t *ids = n->ptr;
    const float *dy = n->out->grad;
    int64_t count = n->iarg[0];
    int D = table->shape[1], nblk = (D + EMB_COL_BLOCK - 1) / EMB_COL_BLOCK;
    float *dt = cf_grad(ctx, table);
    #pragma omp parallel for schedule(static) if (count * D > EMB_PAR_MIN)
    for (int blk = 0; blk < nblk; blk++) {
        int j0 = blk * EMB_COL_BLOCK, nj = D - j0 < EMB_COL_BLOCK ? D - j0 : EMB_COL_BLOCK;
        for (int64_t p = 0; p < count; p++) {
            float *row = dt + (int64_t)ids[p] * D + j0;
            const float *g = dy + p * D + j0;
            for (int j = 0; j < nj; j++) row[j] += g[j];
        }
    }
}
