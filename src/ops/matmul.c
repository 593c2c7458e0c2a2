/* matmul and linear: forward and backward side by side, all products through cf_gemm with its
 * transpose flags, so no transpose is ever materialised. Gradients accumulate with beta = 1
 * straight into the cf_grad buffers. With ctx->bf16 every product goes through cf_gemm_bf16
 * instead: operands rounded to bfloat16 where they are packed, sums in fp32.
 *
 * matmul: C = op(A) op(B). A [..., M, K] (trans_a: [..., K, M]); B [..., K, N] (trans_b:
 * [..., N, K]) with the same leading dims as A, or 2-D and shared by every batch; C [..., M, N].
 * The node keeps trans_a, trans_b in iarg[0..1]. */
#include <limits.h>
#include <string.h>
#include "cformer/ops.h"
#include "cformer/kernels.h"
#include "backward.h"

typedef void gemm_fn(int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
static gemm_fn *gemm_of(const cf_ctx *ctx) { return ctx->bf16 ? cf_gemm_bf16 : cf_gemm; }

/* the 2-D problem of a matmul node: op(A) is M x K, op(B) is K x N, `batch` of them */
typedef struct mm_dims {
    int     m, n, k, lda, ldb, shared;
    int64_t batch, sa, sb, sc;   /* element strides between consecutive batch matrices */
} mm_dims;

static mm_dims mm_shape(const cf_tensor *a, const cf_tensor *b, int ta, int tb) {
    CF_ASSERT(a->ndim >= 2 && b->ndim >= 2, "matmul: A %s and B %s need at least 2 dims",
              cf_shape_str(a), cf_shape_str(b));
    int shared = b->ndim == 2 && a->ndim > 2;
    int ok = shared || b->ndim == a->ndim;
    for (int d = 0; ok && !shared && d < a->ndim - 2; d++) ok = a->shape[d] == b->shape[d];
    CF_ASSERT(ok, "matmul: batch dims of A %s and B %s differ (B must match them or be 2-D)",
              cf_shape_str(a), cf_shape_str(b));
    int ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    mm_dims d;
    d.m = ta ? ac : ar;
    d.k = ta ? ar : ac;
    d.n = tb ? br : bc;
    int kb = tb ? bc : br;
    CF_ASSERT(d.k == kb, "matmul: inner dims differ: A %s%s, B %s%s", cf_shape_str(a), ta ? "^T" : "",
              cf_shape_str(b), tb ? "^T" : "");
    d.lda = ac;
    d.ldb = bc;
    d.shared = shared;
    d.sa = (int64_t)ar * ac;
    d.sb = shared ? 0 : (int64_t)br * bc;
    d.sc = (int64_t)d.m * d.n;
    d.batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) d.batch *= a->shape[i];
    return d;
}

/* `count` products C_i = op(A_i) op(B_i) + beta C_i. A stride of 0 reuses one matrix; a C stride
 * of 0 accumulates into one C in batch order (deterministic), so those run one after another.
 * Otherwise the C_i are disjoint: small products (attention heads, say), which cf_gemm would run
 * on one thread each, are spread over the threads one product per thread, while large ones run
 * in turn with cf_gemm's own threading. cf_gemm is safe to call from several threads at once
 * (per-thread packing buffers) and its result does not depend on its thread count, so the two
 * schedules give the same bits. */
#define SMALL_GEMM (1 << 20)   /* multiply-adds below which cf_gemm stays on the calling thread */
#define SPREAD_MIN (1 << 16)   /* total multiply-adds below which a fork/join costs more than it saves */
static void gemm_batched(gemm_fn *gemm, int64_t count, int ta, int tb, int m, int n, int k,
                         const float *a, int lda, int64_t sa, const float *b, int ldb, int64_t sb,
                         float beta, float *c, int ldc, int64_t sc) {
    double work = (double)m * n * k;
    if (sc && count > 1 && work < SMALL_GEMM && work * count >= SPREAD_MIN) {
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < count; i++)
            gemm(ta, tb, m, n, k, 1.0f, a + i * sa, lda, b + i * sb, ldb, beta, c + i * sc, ldc);
    } else {
        for (int64_t i = 0; i < count; i++)
            gemm(ta, tb, m, n, k, 1.0f, a + i * sa, lda, b + i * sb, ldb, i && !sc ? 1.0f : beta,
                 c + i * sc, ldc);
    }
}

/* Rows of A stacked over the batch form one [batch*M, K] matrix when A is not transposed: with a
 * shared B the whole batch is then a single GEMM with a taller M, which parallelises better than
 * `batch` small ones. */
static int mm_foldable(const mm_dims *d, int ta) {
    return d->shared && !ta && d->batch * d->m <= INT_MAX;
}

cf_tensor *cf_matmul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, int trans_a, int trans_b) {
    int ta = trans_a != 0, tb = trans_b != 0;
    mm_dims d = mm_shape(a, b, ta, tb);
    int shape[CF_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[a->ndim - 2] = d.m;
    shape[a->ndim - 1] = d.n;
    cf_tensor *c = cf_tensor_new(ctx, a->ndim, shape);
    if (mm_foldable(&d, ta))
        gemm_of(ctx)(0, tb, (int)(d.batch * d.m), d.n, d.k, 1.0f, a->data, d.lda, b->data, d.ldb, 0.0f, c->data, d.n);
    else
        gemm_batched(gemm_of(ctx), d.batch, ta, tb, d.m, d.n, d.k, a->data, d.lda, d.sa, b->data, d.ldb, d.sb,
                     0.0f, c->data, d.n, d.sc);
    cf_node *n = cf_record(ctx, CF_OP_MATMUL, c, 2, (cf_tensor *[]){a, b});
    if (n) {
        n->iarg[0] = ta;
        n->iarg[1] = tb;
    }
    return c;
}

/* With G = dC (M x N) per batch:
 *            dA (stored as A)            dB (stored as B)
 *   A B      G B^T      [M, K]           A^T G      [K, N]
 *   A B^T    G B        [M, K]           G^T A      [N, K]
 *   A^T B    B G^T      [K, M]           A G        [K, N]
 *   A^T B^T  B^T G^T    [K, M]           G^T A^T    [N, K]
 * A shared B's gradient is the sum of the per-batch terms: folded into the GEMM's own reduction
 * (over batch*M) when A is not transposed, otherwise accumulated batch by batch in order. */
void cf_matmul_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *a = n->in[0], *b = n->in[1];
    int ta = (int)n->iarg[0], tb = (int)n->iarg[1];
    mm_dims d = mm_shape(a, b, ta, tb);
    const float *g = n->out->grad;
    int fold = mm_foldable(&d, ta);
    int64_t rows = fold ? d.batch : 1, count = fold ? 1 : d.batch;
    int m = (int)(d.m * rows);   /* M, or batch*M when folded */

    if (a->requires_grad) {
        float *da = cf_grad(ctx, a);
        if (!ta)   /* dA [M, K] = G op'(B): B^T for plain B, B itself for stored-transposed B */
            gemm_batched(gemm_of(ctx), count, 0, !tb, m, d.k, d.n, g, d.n, d.sc, b->data, d.ldb, d.sb,
                         1.0f, da, d.k, d.sa);
        else       /* dA [K, M] = op'(B) G^T: B for plain B, B^T for stored-transposed B */
            gemm_batched(gemm_of(ctx), count, tb, 1, d.k, d.m, d.n, b->data, d.ldb, d.sb, g, d.n, d.sc,
                         1.0f, da, d.m, d.sa);
    }
    if (b->requires_grad) {
        float *db = cf_grad(ctx, b);
        int64_t sdb = d.shared ? 0 : d.sb;
        if (!tb)   /* dB [K, N] = op(A)^T G */
            gemm_batched(gemm_of(ctx), count, !ta, 0, d.k, d.n, m, a->data, d.lda, d.sa, g, d.n, d.sc,
                         1.0f, db, d.n, sdb);
        else       /* dB [N, K] = G^T op(A) */
            gemm_batched(gemm_of(ctx), count, 1, ta, d.n, d.k, m, g, d.n, d.sc, a->data, d.lda, d.sa,
                         1.0f, db, d.k, sdb);
    }
}

/* ---- linear -----------------------------------------------------------------------------------
 * y = x W^T + b. x [..., in] seen as [rows, in]; W [out, in]; b [out] or NULL; y [..., out]. */

typedef struct linear_job {
    float *y;
    const float *bias;
    int ld;
    void (*after)(void *arg, int i0, int j0, int rows, int cols);
    void *arg;
} linear_job;

static void bias_block(void *arg, int i0, int j0, int rows, int cols) {
    const linear_job *j = arg;
    for (int r = 0; r < rows; r++) memcpy(j->y + (size_t)(i0 + r) * j->ld + j0, j->bias + j0, (size_t)cols * sizeof(float));
}

static void after_block(void *arg, int i0, int j0, int rows, int cols) {
    const linear_job *j = arg;
    j->after(j->arg, i0, j0, rows, cols);
}

cf_tensor *cf_linear_output(cf_ctx *ctx, const cf_tensor *x, const cf_tensor *w, const cf_tensor *b, const char *op) {
    int in = cf_cols(x);
    CF_ASSERT(w->ndim == 2 && w->shape[1] == in, "%s: x %s and W %s (want [out, %d])", op, cf_shape_str(x),
              cf_shape_str(w), in);
    int out = w->shape[0];
    CF_ASSERT(!b || (b->ndim == 1 && b->shape[0] == out), "%s: bias %s for W %s (want [%d])", op,
              b ? cf_shape_str(b) : "", cf_shape_str(w), out);
    CF_ASSERT(cf_rows(x) <= INT_MAX, "%s: x %s has too many rows for one GEMM", op, cf_shape_str(x));
    int shape[CF_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    return cf_tensor_new(ctx, x->ndim, shape);
}

void cf_linear_product(cf_ctx *ctx, const cf_tensor *x, const cf_tensor *w, const cf_tensor *b, float *y,
                       void (*after)(void *arg, int i0, int j0, int rows, int cols), void *arg) {
    int in = cf_cols(x), out = w->shape[0];
    /* every row starts from the bias and the GEMM adds x W^T onto it, block by block as the GEMM's
     * tasks reach them: no pass and no parallel region of its own */
    linear_job job = {y, b ? b->data : NULL, out, after, arg};
    cf_gemm_hooks hooks = {b ? bias_block : NULL, after ? after_block : NULL, &job};
    (ctx->bf16 ? cf_gemm_bf16_epi : cf_gemm_epi)(0, 1, (int)cf_rows(x), out, in, 1.0f, x->data, in, w->data, in,
                                                 b ? 1.0f : 0.0f, y, out, b || after ? &hooks : NULL);
}

cf_tensor *cf_linear(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b) {
    cf_tensor *y = cf_linear_output(ctx, x, w, b, "linear");
    float *unused;
    void *none;
    if (cf_rc_action(ctx, &unused, &none) != CF_RC_SKIPPED)   /* a selective replay: nothing reads y */
        cf_linear_product(ctx, x, w, b, y->data, NULL, NULL);
    cf_record(ctx, CF_OP_LINEAR, y, b ? 3 : 2, (cf_tensor *[]){x, w, b});
    return y;
}

/* db[j] += sum over rows of g[r, j]: threads own blocks of columns and each column is summed in
 * row order, so the result does not depend on the thread count; a block of columns at a time
 * keeps the walk over g row-contiguous. */
#define COL_BLOCK 64
static void col_sums_into(float *db, const float *g, int64_t rows, int cols) {
    int nblk = (cols + COL_BLOCK - 1) / COL_BLOCK;
    #pragma omp parallel for schedule(static) if (rows * cols > 32768)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * COL_BLOCK, w = cols - c0 < COL_BLOCK ? cols - c0 : COL_BLOCK;
        /* float lanes, rows in order: vectorises, and thousands of rows lose nothing that matters */
        float acc[COL_BLOCK] = {0};
        for (int64_t r = 0; r < rows; r++) {
            const float *pg = g + r * cols + c0;
            for (int j = 0; j < w; j++) acc[j] += pg[j];
        }
        for (int j = 0; j < w; j++) db[c0 + j] += acc[j];
    }
}

void cf_linear_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    const float *g = n->out->grad;
    int in = cf_cols(x), out = w->shape[0], rows = (int)cf_rows(x);
    if (x->requires_grad) { /* dX [rows, in] += dY W; a fresh buffer is written, not zeroed and added to */
        int fresh;
        float *dx = cf_grad_nozero(ctx, x, &fresh);
        gemm_of(ctx)(0, 0, rows, in, out, 1.0f, g, out, w->data, in, fresh ? 0.0f : 1.0f, dx, in);
    }
    if (w->requires_grad)   /* dW [out, in] += dY^T X */
        gemm_of(ctx)(1, 0, out, in, rows, 1.0f, g, out, x->data, in, 1.0f, cf_grad(ctx, w), in);
    if (b && b->requires_grad) col_sums_into(cf_grad(ctx, b), g, rows, out);
}
