/* Ops on the heads of a fused projection qkv [B, T, (H + 2 Hkv) Dh] (all H query heads, then the
 * Hkv key heads, then the Hkv value heads, each Dh columns) that run between the projection and
 * an attention core (docs/attention.md section 11): rotary positions on the query and key heads,
 * RMSNorm of each query and key head, and the repetition of shared key/value heads for
 * grouped-query attention; and the ALiBi slopes the softmax kernels add to their scores.
 *
 * Each op writes a new tensor (value heads copied where they pass through) and adds into its
 * input's gradient in backward. Rows are independent, so forward and input gradients are parallel
 * over rows; QK-norm's weight gradients are summed over fixed blocks of rows, then the blocks in
 * order, so every result is the same bits for any thread count. */
#include <math.h>
#include <string.h>
#include "cformer/ops.h"
#include "backward.h"

#define HEADS_PAR_MIN 16384   /* elements below which threads cost more than they save */
#define QKN_ROW_BLOCK 256     /* (row, head) pairs per partial sum of QK-norm's weight gradient */

/* ---- rotary positions (Su et al. 2021) --------------------------------------------------------
 * The first rot dimensions of a head (rot even) form rot/2 pairs (i, i + rot/2), the GPT-NeoX
 * layout; pair i at position p turns by the angle p theta^(-2i/rot):
 *   y_i = x_i cos - x_{i+rot/2} sin,   y_{i+rot/2} = x_i sin + x_{i+rot/2} cos.
 * The remaining Dh - rot dimensions pass through. The angles are formed in double, so the rotation
 * of a position is the same bits whether one row or a table of rows is computed. */

/* the pairs' frequencies theta^(-2i/rot), i < rot/2 */
static void rope_freqs(double *f, int rot, double theta) {
    for (int i = 0; i < rot / 2; i++) f[i] = pow(theta, -2.0 * i / rot);
}

static void rope_angles(int64_t pos, int rot, const double *f, float *c, float *s) {
    for (int i = 0; i < rot / 2; i++) {
        double a = (double)pos * f[i];
        c[i] = (float)cos(a);
        s[i] = (float)sin(a);
    }
}

/* turn heads [0, n) of one row (head h at x + h dh) by the angles (c, s) into y (y may be x);
 * sign -1 turns back; add: y += the turned row instead of y = */
static void rope_row(float *y, const float *x, int n, int dh, int rot, const float *c, const float *s, float sign,
                     int add) {
    int half = rot / 2;
    for (int h = 0; h < n; h++) {
        const float *xh = x + (int64_t)h * dh;
        float *yh = y + (int64_t)h * dh;
        for (int i = 0; i < half; i++) {
            float a = xh[i], b = xh[i + half], si = sign * s[i];
            float u = a * c[i] - b * si, w = a * si + b * c[i];
            yh[i] = add ? yh[i] + u : u;
            yh[i + half] = add ? yh[i + half] + w : w;
        }
        if (add) for (int d = rot; d < dh; d++) yh[d] += xh[d];
        else if (y != x) memcpy(yh + rot, xh + rot, sizeof(float) * (dh - rot));
    }
}

void cf_rope_rows(float *x, int T, int64_t stride, int n_heads, int dh, int rot, float theta, int64_t pos0) {
    CF_ASSERT(rot >= 2 && rot % 2 == 0 && rot <= dh, "rope: %d rotated of %d dimensions", rot, dh);
    float c[rot / 2], s[rot / 2];
    double f[rot / 2];
    rope_freqs(f, rot, theta);
    for (int t = 0; t < T; t++) {
        rope_angles(pos0 + t, rot, f, c, s);
        rope_row(x + t * stride, x + t * stride, n_heads, dh, rot, c, s, 1.0f, 0);
    }
}

/* the cos and sin tables of positions [pos0, pos0 + T): [T, rot/2] each, from the arena */
static float *rope_table(cf_ctx *ctx, int T, int rot, float theta, int64_t pos0) {
    int half = rot / 2;
    float *tab = cf_scratch(ctx, sizeof(float) * 2 * (size_t)T * half);
    double f[half];
    rope_freqs(f, rot, theta);
    #pragma omp parallel for schedule(static) if ((int64_t)T * half > HEADS_PAR_MIN / 8)
    for (int t = 0; t < T; t++) rope_angles(pos0 + t, rot, f, tab + (int64_t)t * 2 * half, tab + (int64_t)t * 2 * half + half);
    return tab;
}

/* the geometry of a fused qkv of H query and Hkv key/value heads: its head width */
static int head_dim(const cf_tensor *qkv, int H, int Hkv, const char *op) {
    CF_ASSERT(qkv->ndim == 3 && H > 0 && Hkv > 0 && H % Hkv == 0 && qkv->shape[2] % (H + 2 * Hkv) == 0,
              "%s: qkv %s is not [B, T, (H + 2 Hkv) Dh] with H = %d, Hkv = %d", op, cf_shape_str(qkv), H, Hkv);
    return qkv->shape[2] / (H + 2 * Hkv);
}

/* y = (or += with add) rows of x with the nqk query and key heads turned by sign, value heads
 * passed through */
static void rope_apply(float *y, const float *x, int64_t rows, int T, int C, int nqk, int dh, int rot,
                       const float *tab, float sign, int add) {
    #pragma omp parallel for schedule(static) if (rows * C > HEADS_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *c = tab + (r % T) * rot, *s = c + rot / 2;
        const float *xr = x + r * C;
        float *yr = y + r * C;
        rope_row(yr, xr, nqk, dh, rot, c, s, sign, add);
        if (add) for (int j = nqk * dh; j < C; j++) yr[j] += xr[j];
        else memcpy(yr + (int64_t)nqk * dh, xr + (int64_t)nqk * dh, sizeof(float) * (C - (int64_t)nqk * dh));
    }
}

cf_tensor *cf_rope(cf_ctx *ctx, cf_tensor *qkv, int n_heads, int n_kv_heads, int rot, float theta, int64_t pos0) {
    int dh = head_dim(qkv, n_heads, n_kv_heads, "rope");
    CF_ASSERT(rot >= 2 && rot % 2 == 0 && rot <= dh && theta > 0, "rope: %d rotated of %d dimensions, theta %g", rot,
              dh, theta);
    int B = qkv->shape[0], T = qkv->shape[1], C = qkv->shape[2];
    cf_tensor *y = cf_tensor_new(ctx, 3, qkv->shape);
    size_t mark = cf_arena_mark(&ctx->arena);
    int record = cf_needs_grad(ctx, 1, &qkv);
    float *tab = rope_table(ctx, T, rot, theta, pos0);
    rope_apply(y->data, qkv->data, (int64_t)B * T, T, C, n_heads + n_kv_heads, dh, rot, tab, 1.0f, 0);
    if (!record) cf_arena_rewind(&ctx->arena, mark);
    cf_node *n = cf_record(ctx, CF_OP_ROPE, y, 1, &qkv);
    if (n) {
        n->saved = tab;
        n->iarg[0] = n_heads;
        n->iarg[1] = n_kv_heads;
        n->iarg[2] = rot;
    }
    return y;
}

/* the rotation is orthogonal: dx = R^T dy, the turn by the opposite angle, written into a fresh
 * gradient buffer (no zeroing pass) and added into one that other consumers already filled */
void cf_rope_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0];
    int H = (int)n->iarg[0], Hkv = (int)n->iarg[1], rot = (int)n->iarg[2], dh = head_dim(x, H, Hkv, "rope");
    int fresh;
    float *dx = cf_grad_nozero(ctx, x, &fresh);
    rope_apply(dx, n->out->grad, (int64_t)x->shape[0] * x->shape[1], x->shape[1], x->shape[2], H + Hkv, dh, rot,
               n->saved, -1.0f, !fresh);
}

/* ---- QK-norm (Dehghani et al. 2023) -----------------------------------------------------------
 * Every query head becomes wq * x / sqrt(mean(x^2) + eps) and every key head the same with wk
 * (weights [Dh] shared by the heads), value heads pass through. Saves 1/sqrt(mean(x^2) + eps) per
 * row and query or key head. */

static float head_rstd(const float *x, int dh, float eps) {
    double ss = 0;
    for (int d = 0; d < dh; d++) ss += (double)x[d] * x[d];
    return (float)(1.0 / sqrt(ss / dh + eps));
}

/* heads [0, n) of one row (head h at x + h dh), weight w for heads below nq and wk above */
static void qk_norm_row(float *y, const float *x, int n, int nq, int dh, const float *wq, const float *wk, float eps,
                        float *rstd) {
    for (int h = 0; h < n; h++) {
        const float *xh = x + (int64_t)h * dh, *w = h < nq ? wq : wk;
        float *yh = y + (int64_t)h * dh, rs = head_rstd(xh, dh, eps);
        for (int d = 0; d < dh; d++) yh[d] = w[d] * (xh[d] * rs);
        if (rstd) rstd[h] = rs;
    }
}

void cf_qk_norm_rows(float *x, int T, int64_t stride, int n_q, int n_k, int dh, const float *wq, const float *wk,
                     float eps) {
    for (int t = 0; t < T; t++) qk_norm_row(x + t * stride, x + t * stride, n_q + n_k, n_q, dh, wq, wk, eps, NULL);
}

cf_tensor *cf_qk_norm(cf_ctx *ctx, cf_tensor *qkv, cf_tensor *wq, cf_tensor *wk, int n_heads, int n_kv_heads, float eps) {
    int dh = head_dim(qkv, n_heads, n_kv_heads, "qk_norm");
    CF_ASSERT(wq->ndim == 1 && wq->shape[0] == dh && wk->ndim == 1 && wk->shape[0] == dh,
              "qk_norm: weights %s, %s for heads of %d", cf_shape_str(wq), cf_shape_str(wk), dh);
    int64_t rows = (int64_t)qkv->shape[0] * qkv->shape[1];
    int C = qkv->shape[2], nqk = n_heads + n_kv_heads;
    cf_tensor *y = cf_tensor_new(ctx, 3, qkv->shape);
    cf_tensor *in[3] = {qkv, wq, wk};
    int record = cf_needs_grad(ctx, 3, in);
    size_t mark = cf_arena_mark(&ctx->arena);
    float *rstd = cf_scratch(ctx, sizeof(float) * (size_t)rows * nqk);
    #pragma omp parallel for schedule(static) if (rows * C > HEADS_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = qkv->data + r * C;
        float *yr = y->data + r * C;
        qk_norm_row(yr, xr, nqk, n_heads, dh, wq->data, wk->data, eps, rstd + r * nqk);
        memcpy(yr + (int64_t)nqk * dh, xr + (int64_t)nqk * dh, sizeof(float) * (C - (int64_t)nqk * dh));
    }
    if (!record) cf_arena_rewind(&ctx->arena, mark);
    cf_node *n = cf_record(ctx, CF_OP_QK_NORM, y, 3, in);
    if (n) {
        n->saved = rstd;
        n->iarg[0] = n_heads;
        n->iarg[1] = n_kv_heads;
    }
    return y;
}

/* With u = x r (r the saved rstd) and g = w dy: dx = r (g - u mean(g u)), dw += sum dy u over the
 * rows and heads that share w. */
void cf_qk_norm_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0], *wq = n->in[1], *wk = n->in[2];
    int H = (int)n->iarg[0], Hkv = (int)n->iarg[1], dh = head_dim(x, H, Hkv, "qk_norm"), nqk = H + Hkv;
    int64_t rows = (int64_t)x->shape[0] * x->shape[1];
    int C = x->shape[2];
    const float *dy = n->out->grad, *rstd = n->saved;
    if (x->requires_grad) {
        float *dx = cf_grad(ctx, x);
        #pragma omp parallel for schedule(static) if (rows * C > HEADS_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x->data + r * C, *gr = dy + r * C;
            float *dr = dx + r * C;
            for (int h = 0; h < nqk; h++) {
                const float *xh = xr + (int64_t)h * dh, *gh = gr + (int64_t)h * dh, *w = h < H ? wq->data : wk->data;
                float *dh_ = dr + (int64_t)h * dh, rs = rstd[r * nqk + h];
                double dot = 0;
                for (int d = 0; d < dh; d++) dot += (double)w[d] * gh[d] * xh[d] * rs;
                float m = (float)(dot / dh);
                for (int d = 0; d < dh; d++) dh_[d] += rs * (w[d] * gh[d] - xh[d] * rs * m);
            }
            for (int j = nqk * dh; j < C; j++) dr[j] += gr[j];
        }
    }
    if (!wq->requires_grad && !wk->requires_grad) return;
    /* per block of QKN_ROW_BLOCK rows, the sums of query heads and of key heads; then the blocks
     * in order */
    int64_t nblk = (rows + QKN_ROW_BLOCK - 1) / QKN_ROW_BLOCK;
    size_t mark = cf_arena_mark(&ctx->arena);
    double *part = cf_scratch(ctx, sizeof(double) * (size_t)nblk * 2 * dh);
    #pragma omp parallel for schedule(static) if (rows * C > HEADS_PAR_MIN)
    for (int64_t b = 0; b < nblk; b++) {
        double *pq = part + b * 2 * dh, *pk = pq + dh;
        memset(pq, 0, sizeof(double) * 2 * dh);
        int64_t r1 = (b + 1) * QKN_ROW_BLOCK < rows ? (b + 1) * QKN_ROW_BLOCK : rows;
        for (int64_t r = b * QKN_ROW_BLOCK; r < r1; r++)
            for (int h = 0; h < nqk; h++) {
                const float *xh = x->data + r * C + (int64_t)h * dh, *gh = dy + r * C + (int64_t)h * dh;
                float rs = rstd[r * nqk + h];
                double *p = h < H ? pq : pk;
                for (int d = 0; d < dh; d++) p[d] += (double)gh[d] * (xh[d] * rs);
            }
    }
    float *dwq = wq->requires_grad ? cf_grad(ctx, wq) : NULL, *dwk = wk->requires_grad ? cf_grad(ctx, wk) : NULL;
    for (int d = 0; d < dh; d++) {
        double sq = 0, sk = 0;
        for (int64_t b = 0; b < nblk; b++) {
            sq += part[b * 2 * dh + d];
            sk += part[b * 2 * dh + dh + d];
        }
        if (dwq) dwq[d] += (float)sq;
        if (dwk) dwk[d] += (float)sk;
    }
    cf_arena_rewind(&ctx->arena, mark);
}

/* ---- shared key/value heads (grouped-query attention, Ainslie et al. 2023) ---------------------
 * [B, T, (H + 2 Hkv) Dh] -> [B, T, 3 H Dh]: query heads as they are, key and value head h taken
 * from shared head h / (H / Hkv), the layout every core reads. Backward sums each group's
 * gradients into its shared head, the heads of a group in order. */

cf_tensor *cf_kv_repeat(cf_ctx *ctx, cf_tensor *qkv, int n_heads, int n_kv_heads) {
    int dh = head_dim(qkv, n_heads, n_kv_heads, "kv_repeat"), H = n_heads, g = n_heads / n_kv_heads;
    int B = qkv->shape[0], T = qkv->shape[1], C = qkv->shape[2], D = H * dh;
    int64_t rows = (int64_t)B * T;
    cf_tensor *y = cf_tensor_3d(ctx, B, T, 3 * D);
    #pragma omp parallel for schedule(static) if (rows * 3 * D > HEADS_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = qkv->data + r * C;
        float *yr = y->data + r * 3 * D;
        memcpy(yr, xr, sizeof(float) * D);
        for (int part = 1; part <= 2; part++)
            for (int h = 0; h < H; h++)
                memcpy(yr + (int64_t)part * D + (int64_t)h * dh,
                       xr + D + (int64_t)(part - 1) * n_kv_heads * dh + (int64_t)(h / g) * dh, sizeof(float) * dh);
    }
    cf_node *n = cf_record(ctx, CF_OP_KV_REPEAT, y, 1, &qkv);
    if (n) {
        n->iarg[0] = n_heads;
        n->iarg[1] = n_kv_heads;
    }
    return y;
}

void cf_kv_repeat_backward(cf_ctx *ctx, cf_node *n) {
    cf_tensor *x = n->in[0];
    int H = (int)n->iarg[0], Hkv = (int)n->iarg[1], dh = head_dim(x, H, Hkv, "kv_repeat"), g = H / Hkv;
    int64_t rows = (int64_t)x->shape[0] * x->shape[1];
    int C = x->shape[2], D = H * dh;
    const float *dy = n->out->grad;
    float *dx = cf_grad(ctx, x);
    #pragma omp parallel for schedule(static) if (rows * 3 * D > HEADS_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *gr = dy + r * 3 * D;
        float *dr = dx + r * C;
        for (int j = 0; j < D; j++) dr[j] += gr[j];
        for (int part = 1; part <= 2; part++)
            for (int k = 0; k < Hkv; k++) {
                float *dk = dr + D + (int64_t)(part - 1) * Hkv * dh + (int64_t)k * dh;
                for (int m = 0; m < g; m++) {
                    const float *gh = gr + (int64_t)part * D + (int64_t)(k * g + m) * dh;
                    for (int d = 0; d < dh; d++) dk[d] += gh[d];
                }
            }
    }
}

/* ---- ALiBi slopes (Press et al. 2022) -------------------------------------------------------------
 * For H a power of two, head h's slope is 2^(-8 (h + 1) / H). Otherwise the heads below the
 * largest power of two n <= H take the slopes of n heads, and the other H - n heads the slopes of
 * 2n heads at odd positions 1, 3, 5, ... (the reference implementation's interleaving). */
float cf_alibi_slope(int h, int H) {
    CF_ASSERT(H > 0 && h >= 0 && h < H, "alibi: head %d of %d", h, H);
    int n = 1;
    while (n * 2 <= H) n *= 2;
    if (h < n) return (float)pow(2.0, -8.0 * (h + 1) / n);
    return (float)pow(2.0, -8.0 * (2 * (h - n) + 1) / (2 * n));
}
