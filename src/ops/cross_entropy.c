/* cross_entropy: fused log-softmax + negative log-likelihood, forward and backward side by side.
 *
 * Per counted row, with lse = logsumexp(z) and s the smoothing (PyTorch's label_smoothing):
 *   loss_row = (1 - s) (lse - z[y]) + s (lse - mean_v z[v])
 * i.e. the cross-entropy against the target distribution q = (1 - s) onehot(y) + s / V, and
 *   dz = (softmax(z) - q) * dloss / n_counted.
 * The result is the mean over counted rows (rows whose target is ignore_index count for nothing);
 * with no counted row the loss and every gradient are 0.
 *
 * Forward keeps only the per-row lse (V times less memory than the softmax): backward recomputes
 * softmax(z) = exp(z - lse) from the logits. The node borrows the targets (node->ptr): the caller
 * keeps them alive and unchanged until backward has run.
 *
 * Threads: parallel over rows; each row's loss goes to its own slot and the slots are summed in
 * double in row order, so the loss is the same bits for any thread count. */
#include <math.h>
#include "cformer/ops.h"
#include "backward.h"

#define CE_PAR_MIN 16384     /* elements below which threads cost more than they save */

static int row_counted(const int32_t *targets, int64_t r, int ignore_index) {
    return targets[r] != ignore_index;
}

cf_tensor *cf_cross_entropy(cf_ctx *ctx, cf_tensor *logits, const int32_t *targets,
                            int ignore_index, float smoothing, int64_t *n_counted) {
    int V = cf_cols(logits);
    int64_t rows = cf_rows(logits);
    CF_ASSERT(V > 0, "cross_entropy: logits %s have an empty last dim", cf_shape_str(logits));
    CF_ASSERT(targets || rows == 0, "cross_entropy: targets is NULL (logits %s)", cf_shape_str(logits));
    CF_ASSERT(smoothing >= 0 && smoothing <= 1, "cross_entropy: smoothing %g is outside [0, 1]", smoothing);
    /* checked before any thread starts, so the first bad row is the one reported */
    int64_t counted = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (!row_counted(targets, r, ignore_index)) continue;
        CF_ASSERT(targets[r] >= 0 && targets[r] < V,
                  "cross_entropy: target %d at row %lld is outside [0, %d) and is not ignore_index %d (logits %s)",
                  (int)targets[r], (long long)r, V, ignore_index, cf_shape_str(logits));
        counted++;
    }
    if (n_counted) *n_counted = counted;

    cf_tensor *y = cf_tensor_1d(ctx, 1);
    /* double: near logits of 100 a float lse would be off by half an ulp of 100, which is a
     * relative error of 4e-6 in every probability backward rebuilds from it */
    double *lse = cf_needs_grad(ctx, 1, &logits) ? cf_scratch(ctx, (size_t)rows * sizeof(double)) : NULL;   /* (rows) */
    double *row_loss = cf_scratch(ctx, (size_t)rows * sizeof(double));   /* (rows) */
    const double s = smoothing;
    #pragma omp parallel for schedule(static) if (logits->numel > CE_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (!row_counted(targets, r, ignore_index)) {
            row_loss[r] = 0;
            if (lse) lse[r] = 0;
            continue;
        }
        const float *z = logits->data + r * V;
        float m = z[0];
        for (int v = 1; v < V; v++) m = z[v] > m ? z[v] : m;
        double se = 0, sz = 0;
        for (int v = 0; v < V; v++) se += expf(z[v] - m);
        double l = m + log(se);
        double loss = l - z[targets[r]];
        if (s > 0) {
            for (int v = 0; v < V; v++) sz += z[v];
            loss = (1 - s) * loss + s * (l - sz / V);
        }
        row_loss[r] = loss;
        if (lse) lse[r] = l;
    }
    double total = 0;
    for (int64_t r = 0; r < rows; r++) total += row_loss[r];
    y->data[0] = counted ? (float)(total / (double)counted) : 0.0f;

    cf_node *n = cf_record(ctx, CF_OP_CROSS_ENTROPY, y, 1, &logits);
    if (n) {
        n->saved = lse;
        n->ptr = targets;
        n->iarg[0] = ignore_index;
        n->iarg[1] = counted;
        n->farg[0] = smoothing;
    }
    return y;
}

void cf_cross_entropy_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *logits = n->in[0];
    const int32_t *targets = n->ptr;
    const double *lse = n->saved;
    int ignore_index = (int)n->iarg[0];
    int64_t counted = n->iarg[1], rows = cf_rows(logits);
    int V = cf_cols(logits);
    float *dz = cf_grad(ctx, logits);
    if (counted == 0) return;
    float scale = (float)((double)n->out->grad[0] / (double)counted);
    float s = n->farg[0], q_off = s / V, q_on = (1 - s) + s / V;   /* target distribution q */
    #pragma omp parallel for schedule(static) if (logits->numel > CE_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (!row_counted(targets, r, ignore_index)) continue;
        const float *z = logits->data + r * V;
        float *d = dz + r * V;
        double l = lse[r];
        int t = targets[r];
        for (int v = 0; v < V; v++) d[v] += (expf((float)(z[v] - l)) - (v == t ? q_on : q_off)) * scale;
    }
}
