/* layernorm and rmsnorm over the last dim: forward and backward side by side.
 *
 * Both keep, per row, what backward needs to rebuild x̂ from x (layernorm: mean and rstd; rmsnorm:
 * rstd), so no normalised copy of the activations is stored. Row statistics are summed in double
 * over 8 fixed lanes: the lanes let the compiler vectorise a reduction it may not reorder, and
 * their fixed combination order keeps every result bitwise repeatable.
 *
 * Threads: outputs and input gradients are parallel over rows (each row is independent); the
 * parameter gradients dw, db are parallel over blocks of columns, each column summed over all rows
 * in row order by one thread, so they are the same bits for any thread count.
 *
 * Residual add and norm fused (cf_add_norm): s = x + r and y = norm(s) in one pass over each row,
 * recorded as the add's node and the norm's node, as cf_add then the norm would record them (the
 * same bits, tape, replays and checkpoints). The norm's node, marked fused, runs the add's backward
 * too, row by row while the row is in cache: s's gradient (from its other consumers, which ran
 * first) gains the norm's, then goes into x's and r's, and is released, so that the tape walk
 * skips the add's node. The profiler charges the fused forward to add and the fused backward to
 * the norm. */
#include <math.h>
#include "cformer/ops.h"
#include "backward.h"

#define NORM_PAR_MIN 16384   /* elements below which threads cost more than they save */
#define NORM_COL_BLOCK 16    /* columns per task of the parameter-gradient reduction: one cache line
                              * of a row, and D / 16 tasks (16 at d_model 256) to share among threads */

static double lanes_sum(const double acc[8]) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static double row_sum(const float *x, int n) {
    double acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += x[i + k];
    for (; i < n; i++) acc[i & 7] += x[i];
    return lanes_sum(acc);
}

/* sum of (x - c)^2: the two-pass variance, which stays accurate when |mean| >> std */
static double row_sq_dev(const float *x, int n, double c) {
    double acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) { double d = x[i + k] - c; acc[k] += d * d; }
    for (; i < n; i++) { double d = x[i] - c; acc[i & 7] += d * d; }
    return lanes_sum(acc);
}

static void check_param(const char *op, const char *what, const cf_tensor *x, const cf_tensor *p) {
    CF_ASSERT(p->ndim == 1 && p->shape[0] == cf_cols(x), "%s: %s %s does not match the last dim of x %s",
              op, what, cf_shape_str(p), cf_shape_str(x));
}

/* dw[j] += Σ_r dy[r,j] x̂[r,j] and db[j] += Σ_r dy[r,j] (either may be NULL), x̂ = (x - mean) * rstd
 * with mean NULL meaning 0 (rmsnorm). */
static void norm_param_grads(const float *x, const float *dy, const float *mean, const float *rstd,
                             int64_t rows, int D, float *dw, float *db) {
    int nblk = (D + NORM_COL_BLOCK - 1) / NORM_COL_BLOCK;
    #pragma omp parallel for schedule(static) if (rows * D > NORM_PAR_MIN)
    for (int blk = 0; blk < nblk; blk++) {
        int j0 = blk * NORM_COL_BLOCK, nj = D - j0 < NORM_COL_BLOCK ? D - j0 : NORM_COL_BLOCK;
        double aw[NORM_COL_BLOCK] = {0}, ab[NORM_COL_BLOCK] = {0};
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * D + j0, *gr = dy + r * D + j0;
            float mu = mean ? mean[r] : 0.0f, rs = rstd[r];
            for (int j = 0; j < nj; j++) {
                aw[j] += (double)gr[j] * ((xr[j] - mu) * rs);
                ab[j] += gr[j];
            }
        }
        for (int j = 0; j < nj; j++) {
            if (dw) dw[j0 + j] += (float)aw[j];
            if (db) db[j0 + j] += (float)ab[j];
        }
    }
}

/* ---- the fused residual add's backward ---------------------------------------------------------
 * A norm node whose iarg[0] is 1 was recorded by cf_add_norm right after the node of the add that
 * made its input s = x + r (same shapes); n->ptr is that node. */

typedef struct fused_add {
    float *dx, *dr;                  /* gradients of x and r; NULL: not wanted (or not fused) */
    int fresh_x, fresh_r;            /* the buffer is fresh: written, not added to */
    int on;
} fused_add;

static fused_add fused_add_of(cf_ctx *ctx, const cf_node *n) {
    fused_add fa = {NULL, NULL, 0, 0, 0};
    const cf_node *add = n->ptr;
    if (!n->iarg[0] || !add) return fa;
    fa.on = 1;
    /* a fresh buffer is not zeroed first: its rows are written below, each exactly once */
    if (add->in[0]->requires_grad) fa.dx = cf_grad_nozero(ctx, add->in[0], &fa.fresh_x);
    if (add->in[1]->requires_grad) fa.dr = cf_grad_nozero(ctx, add->in[1], &fa.fresh_r);
    return fa;
}

/* row r of s's gradient, complete now, into x's and r's: the add's backward, one row. A fresh
 * buffer gets 0 + g, the bits the unfused add's zeroed buffer gets (-0 becomes +0). */
static void fused_add_row(const fused_add *fa, const float *ds, int64_t r, int D) {
    if (!fa->on) return;
    const float *g = ds + r * D;
    float *d[2] = {fa->dx, fa->dr};
    int fresh[2] = {fa->fresh_x, fa->fresh_r};
    for (int k = 0; k < 2; k++) {
        if (!d[k]) continue;
        float *dk = d[k] + r * D;
        if (fresh[k]) for (int j = 0; j < D; j++) dk[j] = 0.0f + g[j];
        else          for (int j = 0; j < D; j++) dk[j] += g[j];
    }
}

/* s's gradient has gone on: release it, so that the tape walk skips the add's node */
static void fused_add_done(cf_ctx *ctx, const fused_add *fa, cf_tensor *s) {
    if (!fa->on) return;
    cf_grad_release(ctx, s);
    s->grad = NULL;
}

/* ---- layernorm: y = w * (x - mean) * rstd + b, rstd = 1/sqrt(var + eps), biased var ---------- */

/* one row of layernorm's forward; its mean and rstd into *m and *rs */
static void layernorm_row(const float *xr, float *yr, int D, const float *pw, const float *pb, float eps, float *m,
                          float *rs) {
    double mu = row_sum(xr, D) / D;
    double var = row_sq_dev(xr, D, mu) / D;
    float mf = (float)mu, r = (float)(1.0 / sqrt(var + eps));
    if (pb) for (int j = 0; j < D; j++) yr[j] = (xr[j] - mf) * r * pw[j] + pb[j];
    else    for (int j = 0; j < D; j++) yr[j] = (xr[j] - mf) * r * pw[j];
    *m = mf;
    *rs = r;
}

/* one row of layernorm's input gradient: dxr += rstd (g - mean(g) - x̂ mean(g x̂)), g = dy w */
static void layernorm_row_grad(const float *xr, const float *gr, float *dxr, int D, const float *pw, float mu,
                               float rs) {
    double sg[8] = {0}, sgx[8] = {0};
    int j = 0;
    for (; j + 8 <= D; j += 8)
        for (int k = 0; k < 8; k++) {
            float g = gr[j + k] * pw[j + k];
            sg[k] += g;
            sgx[k] += (double)g * ((xr[j + k] - mu) * rs);
        }
    for (; j < D; j++) {
        float g = gr[j] * pw[j];
        sg[j & 7] += g;
        sgx[j & 7] += (double)g * ((xr[j] - mu) * rs);
    }
    float mg = (float)(lanes_sum(sg) / D), mgx = (float)(lanes_sum(sgx) / D);
    for (j = 0; j < D; j++) {
        float xh = (xr[j] - mu) * rs;
        dxr[j] += rs * (gr[j] * pw[j] - mg - xh * mgx);
    }
}

cf_tensor *cf_layernorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b, float eps) {
    CF_ASSERT(w, "layernorm: the weight is required (x %s)", cf_shape_str(x));
    check_param("layernorm", "weight", x, w);
    if (b) check_param("layernorm", "bias", x, b);
    CF_ASSERT(eps >= 0, "layernorm: eps %g is negative", eps);
    int D = cf_cols(x);
    int64_t rows = cf_rows(x);
    cf_tensor *in[3] = {x, w, b};
    int n_in = b ? 3 : 2;
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    float *stats = cf_needs_grad(ctx, n_in, in) ? cf_scratch(ctx, 2 * (size_t)rows * sizeof(float)) : NULL;
    const float *pw = w->data, *pb = b ? b->data : NULL;
    #pragma omp parallel for schedule(static) if (x->numel > NORM_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float m, rs;
        layernorm_row(x->data + r * D, y->data + r * D, D, pw, pb, eps, &m, &rs);
        if (stats) { stats[r] = m; stats[rows + r] = rs; }
    }
    cf_node *n = cf_record(ctx, CF_OP_LAYERNORM, y, n_in, in);
    if (n) { n->saved = stats; n->farg[0] = eps; }
    return y;
}

/* dx = rstd (g - mean(g) - x̂ mean(g x̂)) with g = dy w; dw = Σ dy x̂; db = Σ dy */
void cf_layernorm_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    int D = cf_cols(x);
    int64_t rows = cf_rows(x);
    const float *dy = n->out->grad, *mean = n->saved, *rstd = mean + rows, *pw = w->data;
    if (x->requires_grad) {
        float *dx = cf_grad(ctx, x);
        fused_add fa = fused_add_of(ctx, n);
        #pragma omp parallel for schedule(static) if (x->numel > NORM_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            layernorm_row_grad(x->data + r * D, dy + r * D, dx + r * D, D, pw, mean[r], rstd[r]);
            fused_add_row(&fa, dx, r, D);
        }
        fused_add_done(ctx, &fa, x);
    }
    float *dw = w->requires_grad ? cf_grad(ctx, w) : NULL;
    float *db = b && b->requires_grad ? cf_grad(ctx, b) : NULL;
    if (dw || db) norm_param_grads(x->data, dy, mean, rstd, rows, D, dw, db);
}

/* ---- rmsnorm: y = w * x * rstd, rstd = 1/sqrt(mean(x^2) + eps) ----------------------------- */

/* one row of rmsnorm's forward; returns its rstd */
static float rmsnorm_row(const float *xr, float *yr, int D, const float *pw, float eps) {
    float rs = (float)(1.0 / sqrt(row_sq_dev(xr, D, 0.0) / D + eps));
    for (int j = 0; j < D; j++) yr[j] = xr[j] * rs * pw[j];
    return rs;
}

cf_tensor *cf_rmsnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, float eps) {
    CF_ASSERT(w, "rmsnorm: the weight is required (x %s)", cf_shape_str(x));
    check_param("rmsnorm", "weight", x, w);
    CF_ASSERT(eps >= 0, "rmsnorm: eps %g is negative", eps);
    int D = cf_cols(x);
    int64_t rows = cf_rows(x);
    cf_tensor *in[2] = {x, w};
    cf_tensor *y = cf_tensor_new(ctx, x->ndim, x->shape);
    float *rstd = cf_needs_grad(ctx, 2, in) ? cf_scratch(ctx, (size_t)rows * sizeof(float)) : NULL;
    const float *pw = w->data;
    #pragma omp parallel for schedule(static) if (x->numel > NORM_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float rs = rmsnorm_row(x->data + r * D, y->data + r * D, D, pw, eps);
        if (rstd) rstd[r] = rs;
    }
    cf_node *n = cf_record(ctx, CF_OP_RMSNORM, y, 2, in);
    if (n) { n->saved = rstd; n->farg[0] = eps; }
    return y;
}

/* with x̂ = x rstd and g = dy w: dx = rstd (g - x̂ mean(g x̂)) (the layernorm formula without the
 * mean terms, since no mean was subtracted); dw = Σ dy x̂ */
void cf_rmsnorm_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0], *w = n->in[1];
    int D = cf_cols(x);
    int64_t rows = cf_rows(x);
    const float *dy = n->out->grad, *rstd = n->saved, *pw = w->data;
    if (x->requires_grad) {
        float *dx = cf_grad(ctx, x);
        fused_add fa = fused_add_of(ctx, n);
        #pragma omp parallel for schedule(static) if (x->numel > NORM_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x->data + r * D, *gr = dy + r * D;
            float *dxr = dx + r * D, rs = rstd[r];
            double sgx[8] = {0};
            int j = 0;
            for (; j + 8 <= D; j += 8)
                for (int k = 0; k < 8; k++) sgx[k] += (double)(gr[j + k] * pw[j + k]) * (xr[j + k] * rs);
            for (; j < D; j++) sgx[j & 7] += (double)(gr[j] * pw[j]) * (xr[j] * rs);
            float mgx = (float)(lanes_sum(sgx) / D);
            for (j = 0; j < D; j++) dxr[j] += rs * (gr[j] * pw[j] - xr[j] * rs * mgx);
            fused_add_row(&fa, dx, r, D);
        }
        fused_add_done(ctx, &fa, x);
    }
    if (w->requires_grad) norm_param_grads(x->data, dy, NULL, rstd, rows, D, cf_grad(ctx, w), NULL);
}

/* ---- residual add and norm in one pass --------------------------------------------------------- */

cf_tensor *cf_add_norm(cf_ctx *ctx, cf_tensor *x, cf_tensor *r, cf_tensor *w, cf_tensor *b, int rms, float eps,
                       cf_tensor **sum) {
    CF_ASSERT(x->ndim == r->ndim && x->numel == r->numel, "add_norm: x %s and r %s differ", cf_shape_str(x),
              cf_shape_str(r));
    for (int i = 0; i < x->ndim; i++)
        CF_ASSERT(x->shape[i] == r->shape[i], "add_norm: x %s and r %s differ", cf_shape_str(x), cf_shape_str(r));
    CF_ASSERT(w, "add_norm: the weight is required (x %s)", cf_shape_str(x));
    check_param("add_norm", "weight", x, w);
    if (b) check_param("add_norm", "bias", x, b);
    CF_ASSERT(eps >= 0, "add_norm: eps %g is negative", eps);
    float *kept;
    void *unused;
    if (cf_rc_action(ctx, &kept, &unused) == CF_RC_KEPT) {
        /* a selective replay kept the sum: only the norm is computed */
        *sum = cf_tensor_view(ctx, kept, x->ndim, x->shape);
        cf_record(ctx, CF_OP_ADD, *sum, 2, (cf_tensor *[]){x, r});
        return rms ? cf_rmsnorm(ctx, *sum, w, eps) : cf_layernorm(ctx, *sum, w, b, eps);
    }
    int D = cf_cols(x);
    int64_t rows = cf_rows(x);
    cf_tensor *s = cf_tensor_new(ctx, x->ndim, x->shape), *y = cf_tensor_new(ctx, x->ndim, x->shape);
    cf_tensor *in[3] = {s, w, b};
    int n_in = rms ? 2 : b ? 3 : 2;
    int grad = cf_needs_grad(ctx, 2, (cf_tensor *[]){x, r}) || cf_needs_grad(ctx, n_in, (cf_tensor *[]){w, b});
    float *stats = grad ? cf_scratch(ctx, (rms ? 1 : 2) * (size_t)rows * sizeof(float)) : NULL;
    const float *pw = w->data, *pb = b && !rms ? b->data : NULL;
    #pragma omp parallel for schedule(static) if (x->numel > NORM_PAR_MIN)
    for (int64_t i = 0; i < rows; i++) {
        const float *xr = x->data + i * D, *rr = r->data + i * D;
        float *sr = s->data + i * D, *yr = y->data + i * D;
        for (int j = 0; j < D; j++) sr[j] = xr[j] + rr[j];
        if (rms) {
            float rs = rmsnorm_row(sr, yr, D, pw, eps);
            if (stats) stats[i] = rs;
        } else {
            float m, rs;
            layernorm_row(sr, yr, D, pw, pb, eps, &m, &rs);
            if (stats) { stats[i] = m; stats[rows + i] = rs; }
        }
    }
    cf_node *add = cf_record(ctx, CF_OP_ADD, s, 2, (cf_tensor *[]){x, r});
    cf_node *n = cf_record(ctx, rms ? CF_OP_RMSNORM : CF_OP_LAYERNORM, y, n_in, in);
    if (n) {
        n->saved = stats;
        n->farg[0] = eps;
        n->iarg[0] = add != NULL;
        n->ptr = add;
    }
    *sum = s;
    return y;
}
