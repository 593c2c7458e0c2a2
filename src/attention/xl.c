/* Transformer-XL relative-position attention (docs/attention.md sections 7.2-7.5), forward and
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
#include "cformer/kernels.h"
#include "cache.h"
#include "../ops/backward.h"
#include "../kernels/attn_geom.h"
#include "../kernels/attn_tiles.h"
#include "../kernels/block_gemm.h"

typedef struct xgeom {
    int B, H, Tq, Tk, Dh, C, mlen;
    const float *q, *k, *v, *rk, *u, *vb;   /* rk [Tk, C]; u, vb [C] */
    float scale, scale2;   /* 1/sqrt(Dh); and times log2 e, for scores in base 2 */
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
    g.scale2 = g.scale * LOG2E;
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

/* ---- rows of scores ---------------------------------------------------------------------------------
 * Scores are kept in base-2 units (scaled by log2 e), so a probability is 2^(s - max) and the
 * log-sum-exp saved for backward is base 2; exp2_16 does 16 lanes at once and, like the fused
 * kernels, gives 0 rather than a subnormal below 2^-125.5 (docs/attention.md section 2.5.1). */
#ifdef __AVX512F__
static inline __mmask16 lanes(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }
#endif

/* the largest of s[0, n), n >= 1 */
static float row_max(const float *s, int n) {
#ifdef __AVX512F__
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = lanes(n - j);
        m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, s + j));
    }
    return _mm512_reduce_max_ps(m);
#else
    float m = -INFINITY;
    for (int j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
    return m;
#endif
}

/* p[j] = 2^(s[j] - m) for j < n (p may be s); returns their sum */
static float row_exp2(const float *s, float *p, int n, float m) {
#ifdef __AVX512F__
    __m512 mv = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = lanes(n - j);
        __m512 e = _mm512_maskz_mov_ps(k, exp2_16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), mv)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(p + j, k, e);
    }
    return _mm512_reduce_add_ps(sum);
#else
    float sum = 0;
    for (int j = 0; j < n; j++) { p[j] = exp2_flush(s[j] - m); sum += p[j]; }
    return sum;
#endif
}

/* ---- per (batch, head) item, blocks of XB queries --------------------------------------------------
 * A block of queries I = [i0, i1) sees keys j <= mlen + i, and reads rk rows r = j + Tq - 1 - i in
 * [Tq - i1, Tk): with rbase = Tq - i1 the content scores AC = (Q_I + u) K^T and the position
 * scores BD = (Q_I + v) R[rbase:]^T are two small products, and s_ij = (AC_ij + BD_i,r) scale with
 * r - rbase = j + i1 - 1 - i: the rel_shift, read by index. Keys, values and rk rows of the head are
 * first packed contiguous (and transposed where a product needs them so). */
#define XB 32

typedef struct xpack {
    float *kt, *kc, *vt, *vc, *rt, *rc;   /* [Dh, Tk] transposed and [Tk, Dh] contiguous */
} xpack;

static void pack_item(const xgeom *g, int b, int h, xpack *p, int want_t_v) {
    int dh = g->Dh, Tk = g->Tk, C = g->C;
    for (int j = 0; j < Tk; j++) {
        const float *kj = g->k + ((int64_t)b * Tk + j) * C + (int64_t)h * dh;
        const float *vj = g->v + ((int64_t)b * Tk + j) * C + (int64_t)h * dh;
        const float *rj = g->rk + (int64_t)j * C + (int64_t)h * dh;
        memcpy(p->kc + (int64_t)j * dh, kj, (size_t)dh * sizeof(float));
        memcpy(p->vc + (int64_t)j * dh, vj, (size_t)dh * sizeof(float));
        memcpy(p->rc + (int64_t)j * dh, rj, (size_t)dh * sizeof(float));
        for (int d = 0; d < dh; d++) {
            p->kt[(int64_t)d * Tk + j] = kj[d];
            p->rt[(int64_t)d * Tk + j] = rj[d];
            if (want_t_v) p->vt[(int64_t)d * Tk + j] = vj[d];
        }
    }
}

/* scores of block [i0, i1) into s [XB, n] (n = mlen + i1 keys; invisible ones -inf), with
 * qu, qv [XB, Dh] = q + u, q + v and bd [XB, mlen + i1] scratch */
static void block_scores(const xgeom *g, int b, int h, int i0, int i1, const xpack *p, float *s, float *bd,
                         float *qu, float *qv) {
    int dh = g->Dh, C = g->C, rows = i1 - i0, n = g->mlen + i1, rbase = g->Tq - i1;
    for (int r = 0; r < rows; r++) {
        const float *qi = g->q + ((int64_t)b * g->Tq + i0 + r) * C + (int64_t)h * dh;
        for (int d = 0; d < dh; d++) {
            qu[r * dh + d] = qi[d] + g->u[h * dh + d];
            qv[r * dh + d] = qi[d] + g->vb[h * dh + d];
        }
    }
    memset(s, 0, (size_t)rows * n * sizeof(float));
    memset(bd, 0, (size_t)rows * n * sizeof(float));
    cf_block_gemm(rows, n, qu, dh, 1, dh, p->kt, g->Tk, s, n, NULL);
    cf_block_gemm(rows, n, qv, dh, 1, dh, p->rt + rbase, g->Tk, bd, n, NULL);   /* R rows rbase .. Tk-1 */
    for (int r = 0; r < rows; r++) {
        int i = i0 + r, vis = g->mlen + i + 1, off = i1 - 1 - i;
        float *sr = s + (int64_t)r * n;
        const float *br = bd + (int64_t)r * n + off;
        for (int j = 0; j < vis; j++) sr[j] = (sr[j] + br[j]) * g->scale2;
        for (int j = vis; j < n; j++) sr[j] = -INFINITY;
    }
}

static void forward_item(const xgeom *g, int64_t bh, float *ws, float *out, float *lse) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), dh = g->Dh, C = g->C, Tk = g->Tk;
    xpack p = {ws, ws + (int64_t)Tk * dh, NULL, ws + 2 * (int64_t)Tk * dh, ws + 3 * (int64_t)Tk * dh,
               ws + 4 * (int64_t)Tk * dh};
    float *s = ws + 5 * (int64_t)Tk * dh, *bd = s + (int64_t)XB * Tk, *qu = bd + (int64_t)XB * Tk, *qv = qu + XB * dh,
          *o = qv + XB * dh;
    pack_item(g, b, h, &p, 0);
    for (int i0 = 0; i0 < g->Tq; i0 += XB) {
        int i1 = i0 + XB < g->Tq ? i0 + XB : g->Tq, rows = i1 - i0, n = g->mlen + i1;
        block_scores(g, b, h, i0, i1, &p, s, bd, qu, qv);
        for (int r = 0; r < rows; r++) {
            int i = i0 + r, vis = g->mlen + i + 1;
            float *sr = s + (int64_t)r * n, mx = row_max(sr, vis), sum = row_exp2(sr, sr, vis, mx);
            float inv = 1.0f / sum;
            if (g->dropout)
                for (int j = 0; j < vis; j++) sr[j] *= inv * xl_z(g, bh, i, j);
            else
                for (int j = 0; j < vis; j++) sr[j] *= inv;
            for (int j = vis; j < n; j++) sr[j] = 0;
            lse[bh * g->Tq + i] = mx + log2f(sum);
        }
        memset(o, 0, (size_t)rows * dh * sizeof(float));
        cf_block_gemm(rows, dh, s, n, 1, n, p.vc, dh, o, dh, NULL);                  /* P' V */
        for (int r = 0; r < rows; r++)
            memcpy(out + ((int64_t)b * g->Tq + i0 + r) * C + (int64_t)h * dh, o + r * dh, (size_t)dh * sizeof(float));
    }
}

/* floats of one thread's workspace */
static size_t xl_ws_floats(const xgeom *g, int backward) {
    size_t tk = (size_t)g->Tk, dh = (size_t)g->Dh;
    size_t f = 6 * tk * dh + 2 * XB * tk + 3 * XB * dh;
    if (backward) f += 3 * tk * dh + 2 * XB * tk + 4 * XB * dh;
    return up16(f);
}

/* Below this much work (multiply-adds of one product) the op stays on the calling thread. */
#define XL_PAR_MIN (1 << 16)

static int xl_team(const xgeom *g) {
    return team_size((double)g->B * g->H * g->Tq * g->Tk * g->Dh, XL_PAR_MIN);
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
    size_t per = xl_ws_floats(&g, 0);
    float *base = team_ws(ctx, nt, per);
    int64_t items = (int64_t)B * n_heads;
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        unsigned csr = flush_subnormals_begin();
        #pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < items; i++) forward_item(&g, i, thread_ws(base, per), out->data, lse);
        flush_subnormals_end(csr);
    }
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

/* One (batch, head) item of backward, by blocks of queries as forward. dq, dk, dv: the gradient
 * buffers (NULL: not wanted); slot [Tk + 2, Dh]: this item's drk rows, then du and dv_bias (NULL:
 * not wanted). Per block, with P' = P Z the dropped probabilities and G = scale P (Z dP' - D):
 *   dV += P'^T dO,  dQu = G K,  dK += G^T Qu,  GB = G shifted into rk rows,  dQv = GB R,
 *   dR += GB^T Qv. */
static void backward_item(const xgeom *g, int64_t bh, const float *o, const float *dout, const float *lse, float *ws,
                          float *dq, float *dk, float *dv, float *slot) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), dh = g->Dh, C = g->C, Tk = g->Tk;
    int64_t tkd = (int64_t)Tk * dh;
    xpack p = {ws, ws + tkd, ws + 2 * tkd, ws + 3 * tkd, ws + 4 * tkd, ws + 5 * tkd};
    float *s = ws + 6 * tkd, *bd = s + (int64_t)XB * Tk, *qu = bd + (int64_t)XB * Tk, *qv = qu + XB * dh,
          *tmp = qv + XB * dh;
    float *dkacc = tmp + XB * dh, *dvacc = dkacc + tkd, *dracc = dvacc + tkd;
    float *pz = dracc + tkd, *gb = pz + (int64_t)XB * Tk, *dob = gb + (int64_t)XB * Tk, *dqu = dob + XB * dh,
          *dqv = dqu + XB * dh, *dd = dqv + XB * dh;
    pack_item(g, b, h, &p, 1);
    memset(dkacc, 0, 3 * (size_t)tkd * sizeof(float));
    int64_t hc = (int64_t)h * dh;
    for (int i0 = 0; i0 < g->Tq; i0 += XB) {
        int i1 = i0 + XB < g->Tq ? i0 + XB : g->Tq, rows = i1 - i0, n = g->mlen + i1;
        block_scores(g, b, h, i0, i1, &p, s, bd, qu, qv);
        for (int r = 0; r < rows; r++) {
            int64_t qrow = ((int64_t)b * g->Tq + i0 + r) * C + hc;
            memcpy(dob + r * dh, dout + qrow, (size_t)dh * sizeof(float));
            float D = 0;
            for (int d = 0; d < dh; d++) D += dout[qrow + d] * o[qrow + d];
            dd[r] = D;
        }
        /* dP' = dO V^T into bd (free now) */
        memset(bd, 0, (size_t)rows * n * sizeof(float));
        cf_block_gemm(rows, n, dob, dh, 1, dh, p.vt, Tk, bd, n, NULL);
        memset(gb, 0, (size_t)rows * n * sizeof(float));
        for (int r = 0; r < rows; r++) {
            int i = i0 + r, vis = g->mlen + i + 1, off = i1 - 1 - i;
            float L = lse[bh * g->Tq + i];
            float *sr = s + (int64_t)r * n, *pr = pz + (int64_t)r * n, *dpr = bd + (int64_t)r * n;
            float *gr = gb + (int64_t)r * n + off;
            row_exp2(sr, pr, vis, L);                                  /* P */
            if (g->dropout)
                for (int j = 0; j < vis; j++) {
                    float pj = pr[j], z = xl_z(g, bh, i, j);
                    pr[j] = pj * z;
                    gr[j] = sr[j] = g->scale * pj * (z * dpr[j] - dd[r]);  /* G */
                }
            else
                for (int j = 0; j < vis; j++) gr[j] = sr[j] = g->scale * pr[j] * (dpr[j] - dd[r]);
            for (int j = vis; j < n; j++) pr[j] = sr[j] = 0;
        }
        if (dv) cf_block_gemm(n, dh, pz, 1, n, rows, dob, dh, dvacc, dh, NULL);
        if (dk) cf_block_gemm(n, dh, s, 1, n, rows, qu, dh, dkacc, dh, NULL);
        int rbase = g->Tq - i1;
        if (slot) cf_block_gemm(n, dh, gb, 1, n, rows, qv, dh, dracc + (int64_t)rbase * dh, dh, NULL);
        if (dq || slot) {
            memset(dqu, 0, 2 * (size_t)XB * dh * sizeof(float));
            cf_block_gemm(rows, dh, s, n, 1, n, p.kc, dh, dqu, dh, NULL);
            cf_block_gemm(rows, dh, gb, n, 1, n, p.rc + (int64_t)rbase * dh, dh, dqv, dh, NULL);
            for (int r = 0; r < rows; r++) {
                int64_t qrow = ((int64_t)b * g->Tq + i0 + r) * C + hc;
                if (dq)
                    for (int d = 0; d < dh; d++) dq[qrow + d] += dqu[r * dh + d] + dqv[r * dh + d];
                if (slot) {
                    float *su = slot + (int64_t)Tk * dh, *sv = su + dh;
                    for (int d = 0; d < dh; d++) { su[d] += dqu[r * dh + d]; sv[d] += dqv[r * dh + d]; }
                }
            }
        }
    }
    for (int j = 0; j < Tk; j++) {
        int64_t krow = ((int64_t)b * Tk + j) * C + hc;
        if (dk)
            for (int d = 0; d < dh; d++) dk[krow + d] += dkacc[(int64_t)j * dh + d];
        if (dv)
            for (int d = 0; d < dh; d++) dv[krow + d] += dvacc[(int64_t)j * dh + d];
        if (slot)
            for (int d = 0; d < dh; d++) slot[(int64_t)j * dh + d] += dracc[(int64_t)j * dh + d];
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
    size_t per = xl_ws_floats(&g, 1), slot_n = (size_t)rows * g.Dh;
    float *base = team_ws(ctx, nt, per);
    float *slots = NULL;
    if (drk) {
        slots = cf_scratch(ctx, (size_t)items * slot_n * sizeof(float));
        memset(slots, 0, (size_t)items * slot_n * sizeof(float));
    }
    const float *o = n->out->data, *dout = n->out->grad, *lse = n->saved;
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        unsigned csr = flush_subnormals_begin();
        float *ws = thread_ws(base, per);
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
        flush_subnormals_end(csr);
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

/* ---- the row of Transformer-XL ------------------------------------------------------------------------ */

static int xl_check(const cf_attn_config *c, const char *path, int n_heads, int d_model) {
    (void)c; (void)n_heads;
    if (d_model % 2) return cf_set_error("%s.type: xl needs an even model.d_model (got %d)", path, d_model);
    return 0;
}

/* rows [r0, r0 + n) of parameter w (2-D, or 1-D for a bias) as a tensor whose gradient lands in
 * the same rows of w's gradient slab */
static cf_tensor *param_rows(cf_ctx *ctx, cf_tensor *w, int r0, int n) {
    int cols = w->ndim == 2 ? w->shape[1] : 1;
    cf_tensor *t = w->ndim == 2 ? cf_tensor_view(ctx, w->data + (int64_t)r0 * cols, 2, (int[]){n, cols})
                                : cf_tensor_view(ctx, w->data + r0, 1, (int[]){n});
    t->grad = w->grad ? w->grad + (int64_t)r0 * cols : NULL;
    t->requires_grad = w->requires_grad;
    return t;
}

/* queries from the layer's input xq [B, Tq, D], keys and values from the state's xc, the
 * sinusoids through r_net (extra[0]): the relative-position attention of cf_xl_attention */
static cf_tensor *xl_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *xq) {
    CF_ASSERT(c->state, "xl attention needs its memory and relative positions (cf_attn_state.xl)");
    const cf_xl_io *io = &c->state->xl;
    cf_tensor *xc = io->xc, *pos = io->pos;
    int D = c->qkv_w->shape[1];
    CF_ASSERT(xq->ndim == 3 && xc->ndim == 3 && xq->shape[2] == D && xc->shape[2] == D && pos->ndim == 2 &&
              pos->shape[0] == xc->shape[1] && pos->shape[1] == D,
              "xl attention: xq %s, xc %s, pos %s do not match d_model %d", cf_shape_str(xq), cf_shape_str(xc),
              cf_shape_str(pos), D);
    cf_tensor *bq = c->qkv_b ? param_rows(ctx, c->qkv_b, 0, D) : NULL;
    cf_tensor *bkv = c->qkv_b ? param_rows(ctx, c->qkv_b, D, 2 * D) : NULL;
    cf_tensor *q = cf_linear(ctx, xq, param_rows(ctx, c->qkv_w, 0, D), bq);              /* (B, Tq, D) */
    cf_tensor *kv = cf_linear(ctx, xc, param_rows(ctx, c->qkv_w, D, 2 * D), bkv);         /* (B, Tk, 2D) */
    cf_tensor *k = cf_slice_last(ctx, kv, 0, D), *v = cf_slice_last(ctx, kv, D, D);
    cf_tensor *rk = cf_linear(ctx, pos, c->extra[0], NULL);                               /* (Tk, D) */
    return cf_xl_attention(ctx, q, k, v, rk, io->u, io->v_bias, c->n_heads, c->dropout);
}

/* ---- incremental decoding ---------------------------------------------------------------------------
 * The segment memory as training and streamed evaluation carry it: a call of span positions
 * starting at position call0 sees the last mem_len positions before call0 (the memory) and its
 * own positions up to the query. Keys and values depend only on their own row's input (the
 * memory holds the layer's inputs, normalised again when they are read: the same per-row
 * function), so the cache keeps them for the last mem_len + span positions in a ring and a call
 * boundary only moves call0. The projected relative sinusoids r_net R_p for every distance p the
 * ring can hold are computed once, when the cache starts; u and v come with them. */

static int xl_rows(const cf_attn_config *c, int span) { return c->mem_len + span; }
/* aux: rk [rows, D] by distance (row p: distance p), then u [D], v [D] */
static size_t xl_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    return ((size_t)c->mem_len + span + 2) * (size_t)n_heads * d_head;
}

static void xl_start(cf_ctx *ctx, const cf_attn_call *call, cf_attn_cache *c) {
    CF_ASSERT(call->state && call->state->xl.u && call->state->xl.v_bias, "xl decoding needs u and v (cf_attn_state.xl)");
    int rows = c->rows, D = c->H * c->Dh;
    size_t mark = cf_arena_mark(&ctx->arena);
    float *sin = cf_scratch(ctx, sizeof(float) * (size_t)rows * D), *rk = cf_scratch(ctx, sizeof(float) * (size_t)rows * D);
    cf_xl_sinusoids(sin, rows, D, call->cfg->clamp_len);          /* row j: distance rows - 1 - j */
    cf_gemm(0, 1, rows, D, D, 1.0f, sin, D, call->extra[0]->data, D, 0.0f, rk, D);
    for (int p = 0; p < rows; p++) memcpy(c->aux + (size_t)p * D, rk + (size_t)(rows - 1 - p) * D, sizeof(float) * D);
    memcpy(c->aux + (size_t)rows * D, call->state->xl.u->data, sizeof(float) * D);
    memcpy(c->aux + (size_t)(rows + 1) * D, call->state->xl.v_bias->data, sizeof(float) * D);
    cf_arena_rewind(&ctx->arena, mark);
}

/* Per head, the scores of the query against the keys (q + u) and against the projected distances
 * (q + v) are two runs of dot products (cf_dot_rows): the keys by ring row, the distances 0..nk-1
 * in one run, read back to front (key position j0 + j is distance nk - 1 - j from p). */
static void xl_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v, int ld,
                    int n, float *out) {
    int H = c->H, Dh = c->Dh, D = H * Dh, M = call->cfg->mem_len;
    float scale = 1.0f / sqrtf((float)Dh);
    const float *rk = c->aux, *u = rk + (size_t)c->rows * D, *vb = u + D;
    size_t wsf = cf_attn_cache_ws_floats(c->rows, c->Dh);
    for (int r = 0; r < n; r++) {
        int64_t p = c->pos, j0 = c->call0 - M > 0 ? c->call0 - M : 0;
        CF_ASSERT(p - j0 < c->rows, "xl decoding: position %lld of the call at %lld past the cache's %d rows",
                  (long long)p, (long long)c->call0, c->rows);
        cf_cache_put(c, p, k + (int64_t)r * ld, v + (int64_t)r * ld);
        int nk = (int)(p - j0 + 1), r0 = cf_cache_row(c, j0);
        #pragma omp parallel for schedule(static) if ((int64_t)nk * H * Dh >= CF_CACHE_PAR_MIN)
        for (int h = 0; h < H; h++) {
            float *s = c->ws + (size_t)omp_get_thread_num() * wsf, *bd = s + c->rows, *qu = bd + c->rows, *qv = qu + Dh;
            int32_t *rows = (int32_t *)(qv + Dh);
            const float *qr = q + (int64_t)r * ld + h * Dh;
            for (int i = 0; i < Dh; i++) { qu[i] = qr[i] + u[h * Dh + i]; qv[i] = qr[i] + vb[h * Dh + i]; }
            for (int j = 0; j < nk; j++) rows[j] = r0 + j < c->rows ? r0 + j : r0 + j - c->rows;
            const float *K = c->k + (int64_t)h * c->rows * Dh, *V = c->v + (int64_t)h * c->rows * Dh;
            cf_dot_rows(nk, Dh, K, Dh, rows, qu, s);
            cf_dot_rows(nk, Dh, rk + h * Dh, D, NULL, qv, bd);
            for (int j = 0; j < nk; j++) s[j] = (s[j] + bd[nk - 1 - j]) * scale;
            cf_cache_mix(s, nk, V, Dh, rows, Dh, out + ((int64_t)r * H + h) * Dh);
        }
        c->pos = p + 1;
    }
}

/* the call ends: its positions (the last mem_len of them, with the memory) become the memory */
static void xl_boundary(const cf_attn_call *call, cf_attn_cache *c) {
    (void)call;
    c->call0 = c->pos;
    c->has_mem = 1;
}

/* r_net [D, D], no bias ("<prefix>.r_net.weight"): projects the relative sinusoids */
const cf_attn_variant cf_attn_xl = {
    .name = "xl", .flags = CF_ATTN_RECURRENT | CF_ATTN_CAUSAL_ONLY | CF_ATTN_OWN_QKV, .check = xl_check,
    .n_extra = 1, .extra = {{"r_net.weight", 2, {CF_ATTN_DIM_MODEL, CF_ATTN_DIM_MODEL}}}, .core = xl_core,
    /* the last mem_len inputs of the layer, oldest first */
    .n_state = 1, .state = {{"xl_mem", 2, {CF_ATTN_DIM_MEM, CF_ATTN_DIM_MODEL}, 0}},
    .cache_rows = xl_rows, .cache_aux = xl_aux, .cache_start = xl_start, .step = xl_step, .boundary = xl_boundary};
