/* add, mul, scale: forward and backward side by side.
 * b may have a's shape or a trailing part of it ([T, D] against [B, T, D]); it is then broadcast
 * over a's leading dims, and its gradient sums over them. */
#include <string.h>
#include "cformer/ops.h"
#include "backward.h"

/* number of elements of b, checking that b's shape is a suffix of a's */
static int64_t broadcast_inner(const char *op, const cf_tensor *a, const cf_tensor *b) {
    int ok = b->ndim <= a->ndim;
    for (int i = 0; ok && i < b->ndim; i++) ok = b->shape[b->ndim - 1 - i] == a->shape[a->ndim - 1 - i];
    CF_ASSERT(ok && b->numel > 0, "%s: shape %s does not broadcast to %s", op, cf_shape_str(b), cf_shape_str(a));
    return b->numel;
}

cf_tensor *cf_add(cf_ctx *ctx, cf_tensor *a, cf_tensor *b) {
    int64_t nb = broadcast_inner("add", a, b), n = a->numel;
    float *kept;
    void *unused;
    if (cf_rc_action(ctx, &kept, &unused) == CF_RC_KEPT) {   /* a selective replay kept the sum */
        cf_tensor *y = cf_tensor_view(ctx, kept, a->ndim, a->shape);
        cf_record(ctx, CF_OP_ADD, y, 2, (cf_tensor *[]){a, b});
        return y;
    }
    cf_tensor *y = cf_tensor_new(ctx, a->ndim, a->shape);
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t r = 0; r < n / nb; r++) {
        const float *pa = a->data + r * nb;
        float *py = y->data + r * nb;
        for (int64_t i = 0; i < nb; i++) py[i] = pa[i] + b->data[i];
    }
    cf_record(ctx, CF_OP_ADD, y, 2, (cf_tensor *[]){a, b});
    return y;
}

/* db[i] += sum over broadcast rows r of g[r*nb + i], rows summed in a fixed order */
static void reduce_rows_into(float *db, const float *g, int64_t rows, int64_t nb) {
    #pragma omp parallel for schedule(static) if (rows * nb > 32768)
    for (int64_t i = 0; i < nb; i++) {
        float s = 0;
        for (int64_t r = 0; r < rows; r++) s += g[r * nb + i];
        db[i] += s;
    }
}

void cf_add_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *a = n->in[0], *b = n->in[1], *y = n->out;
    const float *g = y->grad;
    if (a->requires_grad) {
        float *da = cf_grad(ctx, a);
        #pragma omp parallel for schedule(static) if (a->numel > 32768)
        for (int64_t i = 0; i < a->numel; i++) da[i] += g[i];
    }
    if (b->requires_grad) reduce_rows_into(cf_grad(ctx, b), g, a->numel / b->numel, b->numel);
}

cf_tensor *cf_mul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b) {
    int64_t nb = broadcast_inner("mul", a, b), n = a->numel;
    cf_tensor *y = cf_tensor_new(ctx, a->ndim, a->shape);
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t r = 0; r < n / nb; r++) {
        const float *pa = a->data + r * nb;
        float *py = y->data + r * nb;
        for (int64_t i = 0; i < nb; i++) py[i] = pa[i] * b->data[i];
    }
    cf_record(ctx, CF_OP_MUL, y, 2, (cf_tensor *[]){a, b});
    return y;
}

void cf_mul_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *a = n->in[0], *b = n->in[1];
    const float *g = n->out->grad;
    int64_t nb = b->numel, rows = a->numel / nb;
    if (a->requires_grad) {
        float *da = cf_grad(ctx, a);
        #pragma omp parallel for schedule(static) if (a->numel > 32768)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < nb; i++) da[r * nb + i] += g[r * nb + i] * b->data[i];
    }
    if (b->requires_grad) {
        float *db = cf_grad(ctx, b);
        #pragma omp parallel for schedule(static) if (a->numel > 32768)
        for (int64_t i = 0; i < nb; i++) {
            float s = 0;
            for (int64_t r = 0; r < rows; r++) s += g[r * nb + i] * a->data[r * nb + i];
            db[i] += s;
        }
    }
}

cf_tensor *cf_scale(cf_ctx *ctx, cf_tensor *x, float s) {
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    #pragma omp parallel for schedule(static) if (x->numel > 32768)
    for (int64_t i = 0; i < x->numel; i++) y->data[i] = x->data[i] * s;
    cf_node *n = cf_record(ctx, CF_OP_SCALE, y, 1, &x);
    if (n) n->farg[0] = s;
    return y;
}

void cf_scale_backward(cf_ctx *ctx, cf_node *n) {
    float s = n->farg[0], *dx = cf_grad(ctx, n->in[0]);
    const float *g = n->out->grad;
    #pragma omp parallel for schedule(static) if (n->out->numel > 32768)
    for (int64_t i = 0; i < n->out->numel; i++) dx[i] += g[i] * s;
}
