/* softmax over the last dim: forward and backward side by side. Backward needs only the output. */
#include <math.h>
#include <string.h>
#include "cformer/ops.h"
#include "backward.h"

#define PAR_MIN 32768

cf_tensor *cf_softmax(cf_ctx *ctx, cf_tensor *x) {
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    int64_t rows = cf_rows(x);
    int cols = cf_cols(x);
    #pragma omp parallel for schedule(static) if (x->numel > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *px = x->data + r * cols;
        float *py = y->data + r * cols;
        float mx = -INFINITY;
        for (int j = 0; j < cols; j++) mx = px[j] > mx ? px[j] : mx;
        /* a fully masked row: -inf - -inf would be NaN; nothing is attended, so the row is 0 */
        if (mx == -INFINITY) {
            memset(py, 0, (size_t)cols * sizeof(float));
            continue;
        }
        float s = 0;
        for (int j = 0; j < cols; j++) {
            py[j] = expf(px[j] - mx);
            s += py[j];
        }
        float inv = 1.0f / s;
        for (int j = 0; j < cols; j++) py[j] *= inv;
    }
    cf_record(ctx, CF_OP_SOFTMAX, y, 1, &x);
    return y;
}

/* dx = y (g - sum_j g_j y_j); a zero row of y (fully masked) gives zero, as it should */
void cf_softmax_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *y = n->out;
    float *dx = cf_grad(ctx, n->in[0]);
    int64_t rows = cf_rows(y);
    int cols = cf_cols(y);
    #pragma omp parallel for schedule(static) if (y->numel > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *py = y->data + r * cols, *g = y->grad + r * cols;
        float *d = dx + r * cols;
        float dot = 0;
        for (int j = 0; j < cols; j++) dot += g[j] * py[j];
        for (int j = 0; j < cols; j++) d[j] += py[j] * (g[j] - dot);
    }
}
