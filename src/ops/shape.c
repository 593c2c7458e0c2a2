/* reshape, permute, concat, slice_last: forward and backward side by side. Only reshape shares
 * memory with its input; the others copy, and their backward scatters the gradient back, adding. */
#include <string.h>
#include "cformer/ops.h"
#include "backward.h"

#define PAR_MIN 32768

/* ---- reshape --------------------------------------------------------------------------------- */

cf_tensor *cf_reshape(cf_ctx *ctx, cf_tensor *x, int ndim, const int *shape) {
    CF_ASSERT(ndim >= 1 && ndim <= CF_MAX_DIMS, "reshape: %d dims (1..%d allowed) for %s",
              ndim, CF_MAX_DIMS, cf_shape_str(x));
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    cf_tensor *y = cf_tensor_view(ctx, x->data, ndim, shape);
    CF_ASSERT(numel == x->numel, "reshape: %s has %lld elements, target %s has %lld",
              cf_shape_str(x), (long long)x->numel, cf_shape_str(y), (long long)numel);
    cf_record(ctx, CF_OP_RESHAPE, y, 1, &x);
    return y;
}

/* the output shares x's data but has its own gradient buffer, hence the add */
void cf_reshape_backward(cf_ctx *ctx, cf_node *n) {
    const float *g = n->out->grad;
    float *dx = cf_grad(ctx, n->in[0]);
    int64_t cnt = n->out->numel;
    /* `parallel:`, so that a serial region stays vectorised (activation.c says why) */
    #pragma omp parallel for simd schedule(static) if (parallel: cnt > PAR_MIN)
    for (int64_t i = 0; i < cnt; i++) dx[i] += g[i];
}

/* ---- permute ----------------------------------------------------------------------------------
 * out[i0, .., i_{n-1}] = x[index with x's dim perm[k] = i_k]. Both directions walk the output's
 * index space in order: forward gathers from x, backward scatters into dx. Each x element is
 * reached from exactly one output element, so the threads' writes are disjoint either way. */

/* out shape and, for each out dim, the stride of x along it; padded in front to 4 dims */
static void permute_layout(const cf_tensor *x, const int *perm, int oshape[4], int64_t ostride_x[4]) {
    int64_t xs[CF_MAX_DIMS];
    int nd = x->ndim, pad = 4 - nd;
    xs[nd - 1] = 1;
    for (int d = nd - 2; d >= 0; d--) xs[d] = xs[d + 1] * x->shape[d + 1];
    for (int k = 0; k < pad; k++) { oshape[k] = 1; ostride_x[k] = 0; }
    for (int k = 0; k < nd; k++) {
        oshape[pad + k] = x->shape[perm[k]];
        ostride_x[pad + k] = xs[perm[k]];
    }
}

static void permute_walk(const cf_tensor *x, const int *perm, float *out, const float *xin,
                         float *dx, const float *g) {
    int os[4];
    int64_t st[4];
    permute_layout(x, perm, os, st);
    int64_t outer = (int64_t)os[0] * os[1] * os[2];
    int n3 = os[3];
    int64_t s3 = st[3];
    #pragma omp parallel for schedule(static) if (x->numel > PAR_MIN)
    for (int64_t r = 0; r < outer; r++) {
        int64_t i2 = r % os[2], i1 = (r / os[2]) % os[1], i0 = r / ((int64_t)os[2] * os[1]);
        int64_t base = i0 * st[0] + i1 * st[1] + i2 * st[2];
        if (out) {
            float *po = out + r * n3;
            const float *px = xin + base;
            if (s3 == 1) memcpy(po, px, (size_t)n3 * sizeof(float));
            else for (int j = 0; j < n3; j++) po[j] = px[j * s3];
        } else {
            const float *pg = g + r * n3;
            float *pd = dx + base;
            for (int j = 0; j < n3; j++) pd[j * s3] += pg[j];
        }
    }
}

cf_tensor *cf_permute(cf_ctx *ctx, cf_tensor *x, const int *perm) {
    int seen = 0, shape[CF_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++) {
        CF_ASSERT(perm[k] >= 0 && perm[k] < x->ndim && !(seen & (1 << perm[k])),
                  "permute: perm entry %d = %d is not a permutation of the %d dims of %s",
                  k, perm[k], x->ndim, cf_shape_str(x));
        seen |= 1 << perm[k];
        shape[k] = x->shape[perm[k]];
    }
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, shape);
    permute_walk(x, perm, y->data, x->data, NULL, NULL);
    cf_node *n = cf_record(ctx, CF_OP_PERMUTE, y, 1, &x);
    if (n) for (int k = 0; k < x->ndim; k++) n->iarg[k] = perm[k];
    return y;
}

void cf_permute_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0];
    int perm[CF_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++) perm[k] = (int)n->iarg[k];
    permute_walk(x, perm, NULL, NULL, cf_grad(ctx, x), n->out->grad);
}

/* ---- concat -----------------------------------------------------------------------------------
 * Seen as [outer, a's (or b's) extent of dim times the inner dims], the output's rows are a's row
 * followed by b's. */

/* outer = product of the dims before `dim`, inner = product of the dims after it */
static void split_at(const cf_tensor *t, int dim, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= t->shape[d];
    for (int d = dim + 1; d < t->ndim; d++) *inner *= t->shape[d];
}

cf_tensor *cf_concat(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, int dim) {
    int d = dim < 0 ? dim + a->ndim : dim;
    int ok = a->ndim == b->ndim && d >= 0 && d < a->ndim;
    for (int i = 0; ok && i < a->ndim; i++) ok = i == d || a->shape[i] == b->shape[i];
    CF_ASSERT(ok, "concat: %s and %s do not match outside dim %d", cf_shape_str(a), cf_shape_str(b), dim);
    int shape[CF_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = a->shape[d] + b->shape[d];
    cf_tensor *y = cf_tensor_new(ctx, a->ndim, shape);
    int64_t outer, inner;
    split_at(a, d, &outer, &inner);
    int64_t ca = a->shape[d] * inner, cb = b->shape[d] * inner;
    #pragma omp parallel for schedule(static) if (y->numel > PAR_MIN)
    for (int64_t o = 0; o < outer; o++) {
        float *py = y->data + o * (ca + cb);
        memcpy(py, a->data + o * ca, (size_t)ca * sizeof(float));
        memcpy(py + ca, b->data + o * cb, (size_t)cb * sizeof(float));
    }
    cf_node *n = cf_record(ctx, CF_OP_CONCAT, y, 2, (cf_tensor *[]){a, b});
    if (n) n->iarg[0] = d;
    return y;
}

/* dst[o, :] += src[o, off : off + c] for each outer row o of a [outer, width] source */
static void scatter_rows(float *dst, const float *src, int64_t outer, int64_t width, int64_t off, int64_t c) {
    #pragma omp parallel for schedule(static) if (outer * c > PAR_MIN)
    for (int64_t o = 0; o < outer; o++) {
        const float *ps = src + o * width + off;
        float *pd = dst + o * c;
        for (int64_t i = 0; i < c; i++) pd[i] += ps[i];
    }
}

void cf_concat_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *a = n->in[0], *b = n->in[1];
    int d = (int)n->iarg[0];
    int64_t outer, inner;
    split_at(a, d, &outer, &inner);
    int64_t ca = a->shape[d] * inner, cb = b->shape[d] * inner;
    if (a->requires_grad) scatter_rows(cf_grad(ctx, a), n->out->grad, outer, ca + cb, 0, ca);
    if (b->requires_grad) scatter_rows(cf_grad(ctx, b), n->out->grad, outer, ca + cb, ca, cb);
}

/* ---- slice_last ------------------------------------------------------------------------------ */

cf_tensor *cf_slice_last(cf_ctx *ctx, cf_tensor *x, int start, int len) {
    int cols = cf_cols(x);
    CF_ASSERT(start >= 0 && len > 0 && start + len <= cols,
              "slice_last: columns [%d, %d) outside the last dim of %s", start, start + len, cf_shape_str(x));
    int shape[CF_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = len;
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, shape);
    int64_t rows = cf_rows(x);
    #pragma omp parallel for schedule(static) if (y->numel > PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        memcpy(y->data + r * len, x->data + r * cols + start, (size_t)len * sizeof(float));
    cf_node *n = cf_record(ctx, CF_OP_SLICE, y, 1, &x);
    if (n) n->iarg[0] = start;
    return y;
}

void cf_slice_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0];
    int cols = cf_cols(x), len = cf_cols(n->out), start = (int)n->iarg[0];
    int64_t rows = cf_rows(x);
    float *dx = cf_grad(ctx, x);
    const float *g = n->out->grad;
    #pragma omp parallel for schedule(static) if (n->out->numel > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *pd = dx + r * cols + start;
        const float *pg = g + r * len;
        for (int j = 0; j < len; j++) pd[j] += pg[j];
    }
}
