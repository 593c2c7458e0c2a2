/* Transformer-XL relative-position attention (ALGORITHMS.md sections 1.2 and 1.3), forward and
 * backward side by side.
 *
 * Per head h (columns [h*Dh, (h+1)*Dh) of every row), query i of the segment (absolute position
 * mlen + i, mlen = Tk - Tq) and key j of concat(memory, segment):
 *   s_ij = ((q_i + u) . k_j + (q_i + v) . rk_{j + Tq - 1 - i}) * scale,   scale = 1/sqrt(Dh),
 * visible iff j <= mlen + i; P = softmax_j(s); P' = P Z/(1-p) (attention dropout); O = P' V.
 * rk row j' holds the projected sinusoid for distance Tk - 1 - j', so the row read for (i, j) is
 * the one for distance mlen + i - j: the rel_shift of the reference code, read by index instead
 * of by the pad-and-reshape trick (no Tq x Tk matrix is built).
 *
 * Memory: only the output and a log-sum-exp per (batch, head, query) [B, H, Tq] are kept; backward
 * recomputes each score row, so no Tq x Tk matrix is ever stored. Per thread a workspace of two
 * rows of Tk floats and a few Dh vectors.
 *
 * Backward, per row with G_ij = scale P_ij (dP_ij - D_i), D_i = dO_i . O_i, dP_ij = Z_ij (dO_i . v_j):
 *   d(q_i+u) = sum_j G_ij k_j,      dk_j += G_ij (q_i+u),     dv_j += P'_ij dO_i,
 *   d(q_i+v) = sum_j G_ij rk_j',    drk_j' += G_ij (q_i+v)    (j' = j + Tq - 1 - i),
 *   dq_i = d(q_i+u) + d(q_i+v),     du = sum_{b,i} d(q_i+u),  dv_bias = sum_{b,i} d(q_i+v).
 *
 * Parallel over (batch, head) items; each item runs serially in a fixed order and writes its own
 * columns of dq, dk, dv. rk, u and v are shared by the batch, so each item writes its contribution
 * to a slot of its own (arena, [B, H, Tk+2, Dh]) and the slots are summed over the batch in
 * ascending order afterwards: results are bitwise independent of the thread count, with no atomics.
 *
 * Attention dropout is counter-based as in src/ops/attention.c: element (b, h, i, j) is kept when
 * cf_rng_uniform(key, ((b H + h) Tq + i) Tk + j) >= p, key drawn once per call from
 * (ctx->seed, ctx->step, ctx->rng_calls).
 *
 * The tape has at most 4 inputs per node, so u and v (each [H, Dh]) travel as the last two rows of
 * the op's fourth input, concat(rk, u, v) [Tk + 2, H*Dh]: two concat nodes route their gradients
 * back to rk, u and v. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "cformer/attention.h"
#include "../ops/backward.h"

typedef struct xgeom {
    int B, H, Tq, Tk, Dh, C, mlen;
    const float *q, *k, *v, *rk, *u, *vb;   /* rk [Tk, C]; u, vb [C] */
    float scale;
    int dropout;
    float p, inv_keep;
    uint64_t key;
} xgeom;

static xgeom xgeom_of(cf_tensor **in, int n_heads, float p, int dropout, uint64_t key) {
    xgeom g;
    memset(&g, 0, sizeof g);
    g.B = in[0]->shape[0];
    g.Tq = in[0]->shape[1];
    g.C = in[0]->shape[2];
    g.Tk = in[1]->shape[1];
    g.H = n_heads;
    g.Dh = g.C / n_heads;
    g.mlen = g.Tk - g.Tq;
    g.q = in[0]->data;
    g.k = in[1]->data;
    g.v = in[2]->data;
    g.rk = in[3]->data;
    g.u = in[3]->data + (int64_t)g.Tk * g.C;
    g.vb = in[3]->data + (int64_t)(g.Tk + 1) * g.C;
    g.scale = 1.0f / sqrtf((float)g.Dh);
    g.dropout = dropout;
    g.p = p;
    g.inv_keep = dropout ? 1.0f / (1.0f - p) : 1.0f;
    g.key = key;
    return g;
}

/* dropout multiplier of element (bh, i, j) */
static inline float xl_z(const xgeom *g, int64_t bh, int i, int j) {
    if (!g->dropout) return 1.0f;
    uint64_t idx = (uint64_t)((bh * g->Tq + i) * g->Tk + j);
    return cf_rng_uniform(g->key, idx) >= g->p ? g->inv_keep : 0.0f;
}

/* a vectorised dot product: lanes summed in a fixed order, so results do not depend on threads */
static inline float dot(const float *restrict a, const float *restrict b, int n) {
    float s = 0;
    #pragma omp simd reduction(+:s)
    for (int d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* Scores of query i of head (b, h) into s[0 .. mlen + i]; qu, qv receive q_i + u and q_i + v.
 * Returns the number of visible keys. */
static int score_row(const xgeom *g, int b, int h, int i, float *s, float *qu, float *qv) {
    int dh = g->Dh, C = g->C, n = g->mlen + i + 1;
    const float *qi = g->q + ((int64_t)b * g->Tq + i) * C + (int64_t)h * dh;
    for (int d = 0; d < dh; d++) {
        qu[d] = qi[d] + g->u[h * dh + d];
        qv[d] = qi[d] + g->vb[h * dh + d];
    }
    int shift = g->Tq - 1 - i;
    for (int j = 0; j < n; j++) {
        const float *kj = g->k + ((int64_t)b * g->Tk + j) * C + (int64_t)h * dh;
        const float *rj = g->rk + (int64_t)(j + shift) * C + (int64_t)h * dh;
        s[j] = (dot(qu, kj, dh) + dot(qv, rj, dh)) * g->scale;
    }
    return n;
}

static void forward_item(const xgeom *g, int64_t bh, float *ws, float *out, float *lse) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), dh = g->Dh, C = g->C;
    float *s = ws, *qu = ws + g->Tk, *qv = qu + dh;
    for (int i = 0; i < g->Tq; i++) {
        int n = score_row(g, b, h, i, s, qu, qv);
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
        float sum = 0;
        for (int j = 0; j < n; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
        float inv = 1.0f / sum;
        float *o = out + ((int64_t)b * g->Tq + i) * C + (int64_t)h * dh;
        memset(o, 0, (size_t)dh * sizeof(float));
        for (int j = 0; j < n; j++) {
            float pj = s[j] * inv * xl_z(g, bh, i, j);
            if (pj == 0) continue;
            const float *vj = g->v + ((int64_t)b * g->Tk + j) * C + (int64_t)h * dh;
            for (int d = 0; d < dh; d++) o[d] += pj * vj[d];
        }
        lse[bh * g->Tq + i] = mx + logf(sum);
    }
}

/* Below this much work (multiply-adds of one product) the op stays on the calling thread. */
#define XL_PAR_MIN (1 << 16)

static int xl_team(const xgeom *g) {
    double work = (double)g->B * g->H * g->Tq * g->Tk * g->Dh;
    return work < XL_PAR_MIN ? 1 : cf_num_threads();
}

cf_tensor *cf_xl_attention(cf_ctx *ctx, cf_tensor *q, cf_tensor *k, cf_tensor *v, cf_tensor *rk, cf_tensor *u,
                           cf_tensor *v_bias, int n_heads, float dropout) {
    CF_ASSERT(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && rk->ndim == 2,
              "xl_attention: q %s, k %s, v %s must be [B, T, H*Dh] and rk %s [Tk, H*Dh]", cf_shape_str(q),
              cf_shape_str(k), cf_shape_str(v), cf_shape_str(rk));
    int B = q->shape[0], Tq = q->shape[1], C = q->shape[2], Tk = k->shape[1];
    CF_ASSERT(k->shape[0] == B && v->shape[0] == B && k->shape[2] == C && v->shape[2] == C && v->shape[1] == Tk &&
              rk->shape[0] == Tk && rk->shape[1] == C && Tk >= Tq && Tq > 0,
              "xl_attention: q %s, k %s, v %s, rk %s do not match (Tk = mlen + Tq rows)", cf_shape_str(q),
              cf_shape_str(k), cf_shape_str(v), cf_shape_str(rk));
    CF_ASSERT(n_heads > 0 && C % n_heads == 0, "xl_attention: %d heads do not divide q %s", n_heads, cf_shape_str(q));
    CF_ASSERT(u->numel == C && v_bias->numel == C, "xl_attention: u %s and v_bias %s must be [H, Dh] = %d values",
              cf_shape_str(u), cf_shape_str(v_bias), C);
    CF_ASSERT(dropout >= 0 && dropout < 1, "xl_attention: dropout %g outside [0, 1)", dropout);
    /* pack u and v_bias under rk (see the head comment) */
    int row[2] = {1, C};
    cf_tensor *uv = cf_concat(ctx, cf_reshape(ctx, u, 2, row), cf_reshape(ctx, v_bias, 2, row), 0);
    cf_tensor *rkuv = cf_concat(ctx, rk, uv, 0);
    cf_tensor *in[4] = {q, k, v, rkuv};

    int drop = ctx->training && dropout > 0;
    uint64_t key = drop ? cf_rng_key(ctx->seed, ctx->step, ctx->rng_calls++) : 0;
    xgeom g = xgeom_of(in, n_heads, dropout, drop, key);
    cf_tensor *out = cf_tensor_3d(ctx, B, Tq, C);
    int record = cf_needs_grad(ctx, 4, in);
    size_t lse_bytes = (size_t)B * n_heads * Tq * sizeof(float);
    float *lse = record ? cf_scratch(ctx, lse_bytes) : NULL;
    size_t mark = cf_arena_mark(&ctx->arena);
    if (!record) lse = cf_scratch(ctx, lse_bytes);
    int nt = xl_team(&g);
    size_t per = ((size_t)Tk + 2 * g.Dh + 15) & ~(size_t)15;
    float *base = cf_scratch(ctx, (size_t)nt * per * sizeof(float));
    int64_t items = (int64_t)B * n_heads;
    #pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t i = 0; i < items; i++) forward_item(&g, i, base + (size_t)omp_get_thread_num() * per, out->data, lse);
    cf_arena_rewind(&ctx->arena, mark);
    cf_node *n = cf_record(ctx, CF_OP_XL_ATTENTION, out, 4, in);
    if (n) {
        n->saved = lse;
        n->iarg[0] = n_heads;
        n->iarg[1] = drop;
        n->iarg[2] = (int64_t)key;
        n->farg[0] = dropout;
    }
    return out;
}

/* One (batch, head) item of backward. dq, dk, dv: the gradient buffers (NULL: not wanted);
 * slot [Tk + 2, Dh]: this item's drk rows, then du and dv_bias (NULL: not wanted). */
static void backward_item(const xgeom *g, int64_t bh, const float *o, const float *dout, const float *lse, float *ws,
                          float *dq, float *dk, float *dv, float *slot) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), dh = g->Dh, C = g->C;
    float *s = ws, *qu = ws + g->Tk, *qv = qu + dh, *gu = qv + dh, *gv = gu + dh;
    int64_t hc = (int64_t)h * dh;
    for (int i = 0; i < g->Tq; i++) {
        int n = score_row(g, b, h, i, s, qu, qv), shift = g->Tq - 1 - i;
        int64_t qrow = ((int64_t)b * g->Tq + i) * C + hc;
        const float *doi = dout + qrow, *oi = o + qrow;
        float L = lse[bh * g->Tq + i], D = dot(doi, oi, dh);
        memset(gu, 0, 2 * (size_t)dh * sizeof(float));
        for (int j = 0; j < n; j++) {
            int64_t krow = ((int64_t)b * g->Tk + j) * C + hc;
            const float *kj = g->k + krow, *vj = g->v + krow, *rj = g->rk + (int64_t)(j + shift) * C + hc;
            float pj = expf(s[j] - L), z = xl_z(g, bh, i, j);
            if (dv && pj * z != 0) {
                float pz = pj * z;
                float *dvj = dv + krow;
                for (int d = 0; d < dh; d++) dvj[d] += pz * doi[d];
            }
            float G = g->scale * pj * (z * dot(doi, vj, dh) - D);
            if (G == 0) continue;
            for (int d = 0; d < dh; d++) { gu[d] += G * kj[d]; gv[d] += G * rj[d]; }
            if (dk) {
                float *dkj = dk + krow;
                for (int d = 0; d < dh; d++) dkj[d] += G * qu[d];
            }
            if (slot) {
                float *dr = slot + (int64_t)(j + shift) * dh;
                for (int d = 0; d < dh; d++) dr[d] += G * qv[d];
            }
        }
        if (dq)
            for (int d = 0; d < dh; d++) dq[qrow + d] += gu[d] + gv[d];
        if (slot) {
            float *su = slot + (int64_t)g->Tk * dh, *sv = su + dh;
            for (int d = 0; d < dh; d++) { su[d] += gu[d]; sv[d] += gv[d]; }
        }
    }
}

void cf_xl_attention_backward(cf_ctx *ctx, cf_node *n) {
    xgeom g = xgeom_of(n->in, (int)n->iarg[0], n->farg[0], (int)n->iarg[1], (uint64_t)n->iarg[2]);
    float *dq = n->in[0]->requires_grad ? cf_grad(ctx, n->in[0]) : NULL;
    float *dk = n->in[1]->requires_grad ? cf_grad(ctx, n->in[1]) : NULL;
    float *dv = n->in[2]->requires_grad ? cf_grad(ctx, n->in[2]) : NULL;
    float *drk = n->in[3]->requires_grad ? cf_grad(ctx, n->in[3]) : NULL;
    int nt = xl_team(&g);
    int64_t items = (int64_t)g.B * g.H, rows = g.Tk + 2;
    size_t mark = cf_arena_mark(&ctx->arena);
    size_t per = ((size_t)g.Tk + 4 * g.Dh + 15) & ~(size_t)15, slot_n = (size_t)rows * g.Dh;
    float *base = cf_scratch(ctx, (size_t)nt * per * sizeof(float));
    float *slots = NULL;
    if (drk) {
        slots = cf_scratch(ctx, (size_t)items * slot_n * sizeof(float));
        memset(slots, 0, (size_t)items * slot_n * sizeof(float));
    }
    const float *o = n->out->data, *dout = n->out->grad, *lse = n->saved;
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float *ws = base + (size_t)omp_get_thread_num() * per;
        #pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < items; i++)
            backward_item(&g, i, o, dout, lse, ws, dq, dk, dv, slots ? slots + (size_t)i * slot_n : NULL);
        if (drk) {
            /* rows of rk, u, v_bias (all [*, C]): sum the items' slots over the batch, b ascending */
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++)
                for (int h = 0; h < g.H; h++) {
                    float *dst = drk + r * g.C + (int64_t)h * g.Dh;
                    for (int b = 0; b < g.B; b++) {
                        const float *src = slots + ((size_t)b * g.H + h) * slot_n + (size_t)r * g.Dh;
                        for (int d = 0; d < g.Dh; d++) dst[d] += src[d];
                    }
                }
        }
    }
    cf_arena_rewind(&ctx->arena, mark);
}

void cf_xl_sinusoids(float *R, int klen, int d, int clamp_len) {
    CF_ASSERT(d % 2 == 0 && d > 0, "xl sinusoids: d_model %d must be even", d);
    int half = d / 2;
    for (int j = 0; j < klen; j++) {
        int p = klen - 1 - j;
        if (clamp_len > 0 && p > clamp_len) p = clamp_len;
        float *r = R + (int64_t)j * d;
        for (int i = 0; i < half; i++) {
            double f = 1.0 / pow(10000.0, (2.0 * i) / d);
            r[i] = (float)sin(p * f);
            r[half + i] = (float)cos(p * f);
        }
    }
}
