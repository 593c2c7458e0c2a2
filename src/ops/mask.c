/* Masked fill with -inf, causal or explicit: forward and backward side by side. Both record
 * CF_OP_MASK; iarg[0] says which (MASK_CAUSAL or MASK_EXPLICIT).
 *
 * x is [..., Tq, Tk], seen as a stack of Tq x Tk matrices. Causal: key j is masked for query i
 * when j > i + offset (iarg[1] = offset). Explicit: keep[i, j] nonzero keeps (i, j).
 *   batched == 0: keep is [Tq, Tk], shared by every matrix of x (x may have any ndim >= 2);
 *   batched != 0: x is [B0, ..., Tq, Tk] with ndim >= 3 and keep is [B0, Tq, Tk]; every matrix of
 *                 x's batch entry b (all the heads of [B0, H, Tq, Tk], say) uses keep[b].
 * The explicit mask is copied into the arena when a node is recorded (ptr points at the copy), so
 * the caller's buffer need not outlive the call. Masked entries get zero gradient; the others
 * pass their gradient through unchanged. */
#include <math.h>
#include <string.h>
#include "cformer/ops.h"
#include "backward.h"

#define PAR_MIN 32768

enum { MASK_CAUSAL = 0, MASK_EXPLICIT = 1 };

/* the keep mask of matrix m of x, or NULL for causal */
static const uint8_t *matrix_keep(const uint8_t *keep, int batched, int64_t m, int64_t per_batch,
                                  int64_t mat) {
    if (!keep) return NULL;
    return batched ? keep + (m / per_batch) * mat : keep;
}

/* Forward (g == NULL): y = x with masked entries -inf. Backward: dx += g at kept entries. One
 * walk so that the two can never disagree on which entries are masked. */
static void mask_walk(const cf_tensor *x, int kind, int offset, const uint8_t *keep, int batched,
                      float *y, const float *g, float *dx) {
    if (x->numel == 0) return;
    int tq = x->shape[x->ndim - 2], tk = x->shape[x->ndim - 1];
    int64_t mat = (int64_t)tq * tk, n_rows = x->numel / tk;
    int64_t n_mat = x->numel / mat, per_batch = batched ? n_mat / x->shape[0] : n_mat;
    #pragma omp parallel for schedule(static) if (x->numel > PAR_MIN)
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t m = r / tq;
        int i = (int)(r % tq);
        const float *px = x->data + r * tk;
        if (kind == MASK_CAUSAL) {
            /* columns [0, lim) are kept */
            int64_t lim = (int64_t)i + offset + 1;
            int kept = lim < 0 ? 0 : lim > tk ? tk : (int)lim;
            if (!g) {
                float *py = y + r * tk;
                memcpy(py, px, (size_t)kept * sizeof(float));
                for (int j = kept; j < tk; j++) py[j] = -INFINITY;
            } else {
                const float *pg = g + r * tk;
                float *pd = dx + r * tk;
                for (int j = 0; j < kept; j++) pd[j] += pg[j];
            }
        } else {
            const uint8_t *pk = matrix_keep(keep, batched, m, per_batch, mat) + (int64_t)i * tk;
            if (!g) {
                float *py = y + r * tk;
                for (int j = 0; j < tk; j++) py[j] = pk[j] ? px[j] : -INFINITY;
            } else {
                const float *pg = g + r * tk;
                float *pd = dx + r * tk;
                for (int j = 0; j < tk; j++) pd[j] += pk[j] ? pg[j] : 0.0f;
            }
        }
    }
}

cf_tensor *cf_mask_causal(cf_ctx *ctx, cf_tensor *x, int offset) {
    CF_ASSERT(x->ndim >= 2, "mask_causal: x %s needs [..., Tq, Tk]", cf_shape_str(x));
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    mask_walk(x, MASK_CAUSAL, offset, NULL, 0, y->data, NULL, NULL);
    cf_node *n = cf_record(ctx, CF_OP_MASK, y, 1, &x);
    if (n) {
        n->iarg[0] = MASK_CAUSAL;
        n->iarg[1] = offset;
    }
    return y;
}

cf_tensor *cf_mask_explicit(cf_ctx *ctx, cf_tensor *x, const uint8_t *keep, int batched) {
    CF_ASSERT(keep, "mask_explicit: keep is NULL for x %s", cf_shape_str(x));
    CF_ASSERT(batched ? x->ndim >= 3 : x->ndim >= 2,
              "mask_explicit: x %s needs [%s..., Tq, Tk]", cf_shape_str(x), batched ? "B0, " : "");
    int tq = x->shape[x->ndim - 2], tk = x->shape[x->ndim - 1];
    size_t keep_bytes = (size_t)tq * tk * (batched ? (size_t)x->shape[0] : 1);
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    mask_walk(x, MASK_EXPLICIT, 0, keep, batched, y->data, NULL, NULL);
    cf_node *n = cf_record(ctx, CF_OP_MASK, y, 1, &x);
    if (n) {
        uint8_t *copy = cf_scratch(ctx, keep_bytes);
        memcpy(copy, keep, keep_bytes);
        n->ptr = copy;
        n->iarg[0] = MASK_EXPLICIT;
        n->iarg[1] = batched != 0;
    }
    return y;
}

void cf_mask_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0];
    int kind = (int)n->iarg[0];
    float *dx = cf_grad(ctx, x);
    if (kind == MASK_CAUSAL) mask_walk(x, kind, (int)n->iarg[1], NULL, 0, NULL, n->out->grad, dx);
    else mask_walk(x, kind, 0, n->ptr, (int)n->iarg[1], NULL, n->out->grad, dx);
}
