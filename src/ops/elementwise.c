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

/* y[r nb + i] = a[r nb + i] op b[i] for every row r of n / nb: parallel over pieces of a row, so
 * that a few long rows (b of a's own shape is one row) divide among the threads as well as many
 * short ones. Each element is one operation, so the split changes no result. */
enum { BC_ADD, BC_MUL, BC_MUL_ACC };   /* y = a + b, y = a b, y += a b */
#define BC_PIECE 4096

static void broadcast_rows(int op, const float *a, const float *b, float *y, int64_t n, int64_t nb) {
    int64_t rows = n / nb, pieces = (nb + BC_PIECE - 1) / BC_PIECE;
    #pragma omp parallel for collapse(2) schedule(static) if (n > 32768)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t p = 0; p < pieces; p++) {
            int64_t i0 = p * BC_PIECE, i1 = i0 + BC_PIECE < nb ? i0 + BC_PIECE : nb;
            const float *pa = a + r * nb;
            float *py = y + r * nb;
            if (op == BC_ADD)
                for (int64_t i = i0; i < i1; i++) py[i] = pa[i] + b[i];
            else if (op == BC_MUL)
                for (int64_t i = i0; i < i1; i++) py[i] = pa[i] * b[i];
            else
                for (int64_t i = i0; i < i1; i++) py[i] += pa[i] * b[i];
        }
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
    broadcast_rows(BC_ADD, a->data, b->data, y->data, n, nb);
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
    broadcast_rows(BC_MUL, a->data, b->data, y->data, n, nb);
    cf_record(ctx, CF_OP_MUL, y, 2, (cf_tensor *[]){a, b});
    return y;
}

void cf_mul_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *a = n->in[0], *b = n->in[1];
    const float *g = n->out->grad;
    int64_t nb = b->numel, rows = a->numel / nb;
    if (a->requires_grad) {
        broadcast_rows(BC_MUL_ACC, g, b->data, cf_grad(ctx, a), rows * nb, nb);
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
