/* Kernelised attention by prefix sums: linear attention (Katharopoulos et al. 2020, phi(x) =
 * elu(x) + 1) and the core of the Performer (performer.c supplies FAVOR+ features). docs/attention.md
 * sections 5 and 6.6.
 *
 * Per (batch, head), with F features, Dv value columns, Q = phi(q) and K = phi(k) by rows:
 *   causal:        S_i = sum_{j <= i} K_j V_j^T (F x Dv),  z_i = sum_{j <= i} K_j
 *   bidirectional: S = sum_j K_j V_j^T,  z = sum_j K_j, the same for every query
 *   out_i = Q_i^T S_i / den_i,  den_i = Q_i . z_i + eps.
 * The causal sums run over chunks of TC = 64 positions, as in the chunked form of causal linear
 * attention: for chunk c with A = tril(Q_c K_c^T) and the state (S, z) of the chunks before it,
 *   num_c = A V_c + Q_c S,  den_c = A 1 + Q_c z + eps,  then S += K_c^T V_c, z += K_c^T 1.
 * That is exactly the prefix sum of docs/attention.md section 5 (fast-transformers' causal_product)
 * regrouped: the state moves once per chunk instead of once per position, and every step is a small
 * dense product (src/kernels/block_gemm.h) instead of a rank-1 update that streams the F x Dv state
 * through memory for each position.
 *
 * Backward, with G_i = dout_i / den_i and e_i = -(dout_i . out_i) / den_i, dA_ij = G_i . V_j + e_i
 * for j <= i (the gradient of the quadratic form A_ij = Q_i . K_j):
 *   dQ_c = tril(dA) K_c + G_c S^T + e_c z^T                 forward walk over chunks (S, z before c)
 *   dK_c = tril(dA)^T Q_c + V_c R^T + 1 r^T,  dV_c = A^T G_c + K_c R
 *                                                         reverse walk (R = sum Q^T G, r = sum Q^T e
 *                                                         over the chunks after c)
 * (bidirectional: no A, the states summed over every chunk once). No per-position state is kept:
 * the op stores its output and den [B, H, T], a thread O(F Dv + TC (F + Dv + TC)) floats, so memory
 * is O(T (F + Dv)), not O(T F Dv). Each (batch, head) is one work item that writes only its own
 * columns, summing in a fixed order: the result does not depend on the thread count.
 *
 * Padded keys (key_keep) get K = 0, so they are in no sum, and no gradient; a query whose visible
 * keys are all padding has den = eps, or 0 without eps, and then a zero output and no gradient. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "cformer/attention.h"
#include "../ops/backward.h"
#include "../kernels/attn_geom.h"
#include "../kernels/block_gemm.h"
#include "cache.h"

#define TC 64

enum { FM_IDENT, FM_ELU1 };   /* features given as tensors, or elu(x) + 1 of the q and k columns */

typedef struct kgeom {
    int B, T, H, F, Dv, map, causal;
    float eps;
    const float *q, *k, *v;          /* head 0, row 0 of the query / key sources and of v */
    int64_t sq, sk, sv, so;          /* row strides (elements) */
    float *dq, *dk, *dv;             /* gradients with the same layout; NULL: not needed */
    float *out;                      /* forward: the output */
    const float *o, *dout;           /* backward: the output and its gradient */
    float *den;                      /* [B, H, T] */
    const uint8_t *keep;             /* [B, T] or NULL */
} kgeom;

/* one thread's chunk buffers and states */
typedef struct kws {
    float *Q, *K, *KT, *V, *VT;      /* [TC, F], [TC, F], [F, TC], [TC, Dv], [Dv, TC] */
    float *A, *dA;                   /* [TC, TC] */
    float *G, *num;                  /* [TC, Dv]: dout / den; the numerator (forward) or dV (backward) */
    float *dF;                       /* [TC, F] dQ or dK */
    float *S, *ST, *R, *RT;          /* [F, Dv], [Dv, F], [F, Dv], [Dv, F] */
    float *z, *r, *e, *dn;           /* [F], [F], [TC], [TC] */
} kws;

/* the buffers carved from base (NULL: only counted); returns their size in floats */
static size_t kws_layout(kws *w, float *base, int F, int Dv) {
    ws_carver c = {base, 0};
    size_t tf = (size_t)TC * F, tv = (size_t)TC * Dv, fv = (size_t)F * Dv;
    w->Q = ws_take(&c, tf);
    w->K = ws_take(&c, tf);
    w->KT = ws_take(&c, tf);
    w->dF = ws_take(&c, tf);
    w->V = ws_take(&c, tv);
    w->G = ws_take(&c, tv);
    w->num = ws_take(&c, tv);
    w->VT = ws_take(&c, tv);
    w->A = ws_take(&c, TC * TC);
    w->dA = ws_take(&c, TC * TC);
    w->S = ws_take(&c, fv);
    w->ST = ws_take(&c, fv);
    w->R = ws_take(&c, fv);
    w->RT = ws_take(&c, fv);
    w->z = ws_take(&c, F);
    w->r = ws_take(&c, F);
    w->e = ws_take(&c, TC);
    w->dn = ws_take(&c, TC);
    return c.floats;
}

static size_t kws_floats(int F, int Dv) {
    kws w;
    return kws_layout(&w, NULL, F, Dv);
}

static int kept(const kgeom *g, int b, int t) { return !g->keep || g->keep[(int64_t)b * g->T + t]; }

/* phi of one row */
static void feat(const kgeom *g, const float *x, float *f) {
    if (g->map == FM_IDENT) {
        memcpy(f, x, sizeof(float) * g->F);
        return;
    }
    for (int r = 0; r < g->F; r++) f[r] = x[r] > 0 ? x[r] + 1.0f : expf(x[r]);
}

/* grad[r] += d[r] phi'(x[r]) */
static void feat_back(const kgeom *g, const float *x, const float *d, float *grad) {
    if (g->map == FM_IDENT) {
        for (int r = 0; r < g->F; r++) grad[r] += d[r];
        return;
    }
    for (int r = 0; r < g->F; r++) grad[r] += x[r] > 0 ? d[r] : d[r] * expf(x[r]);
}

/* Chunk [c0, c0 + n) of head (b, h) into the buffers: Q (with_q), K and K^T (padded keys zero),
 * V and V^T (with_vt); rows from n on are zero. */
static void pack(const kgeom *g, kws *w, int b, int h, int c0, int n, int with_q, int with_k, int with_vt) {
    int F = g->F, Dv = g->Dv;
    if (with_q) memset(w->Q, 0, sizeof(float) * TC * F);
    if (with_k) {
        memset(w->K, 0, sizeof(float) * TC * F);
        memset(w->KT, 0, sizeof(float) * F * TC);
    }
    memset(w->V, 0, sizeof(float) * TC * Dv);
    if (with_vt) memset(w->VT, 0, sizeof(float) * Dv * TC);
    for (int i = 0; i < n; i++) {
        int64_t row = (int64_t)b * g->T + c0 + i;
        if (with_q) feat(g, g->q + row * g->sq + (int64_t)h * F, w->Q + (int64_t)i * F);
        if (with_k && kept(g, b, c0 + i)) {
            float *kr = w->K + (int64_t)i * F;
            feat(g, g->k + row * g->sk + (int64_t)h * F, kr);
            for (int r = 0; r < F; r++) w->KT[(int64_t)r * TC + i] = kr[r];
        }
        const float *vr = g->v + row * g->sv + (int64_t)h * Dv;
        memcpy(w->V + (int64_t)i * Dv, vr, sizeof(float) * Dv);
        if (with_vt)
            for (int c = 0; c < Dv; c++) w->VT[(int64_t)c * TC + i] = vr[c];
    }
}

/* zero the entries j > i of a TC x TC block */
static void tril(float *m) {
    for (int i = 0; i < TC - 1; i++) memset(m + (int64_t)i * TC + i + 1, 0, sizeof(float) * (TC - 1 - i));
}

static void fwd_head(const kgeom *g, kws *w, int64_t bh) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), F = g->F, Dv = g->Dv, T = g->T;
    float *den = g->den + bh * T;
    memset(w->S, 0, sizeof(float) * F * Dv);
    memset(w->z, 0, sizeof(float) * F);
    if (!g->causal)
        for (int c0 = 0; c0 < T; c0 += TC) {
            pack(g, w, b, h, c0, blen(T, c0, TC), 0, 1, 0);
            cf_block_gemm(F, Dv, w->K, 1, F, TC, w->V, Dv, w->S, Dv, NULL);
            for (int i = 0; i < TC; i++)
                for (int r = 0; r < F; r++) w->z[r] += w->K[(int64_t)i * F + r];
        }
    for (int c0 = 0; c0 < T; c0 += TC) {
        int n = blen(T, c0, TC);
        pack(g, w, b, h, c0, n, 1, g->causal, 0);
        memset(w->num, 0, sizeof(float) * TC * Dv);
        for (int i = 0; i < n; i++) w->dn[i] = g->eps;
        if (g->causal) {
            memset(w->A, 0, sizeof(float) * TC * TC);
            cf_block_gemm(TC, TC, w->Q, F, 1, F, w->KT, TC, w->A, TC, NULL);
            tril(w->A);
            cf_block_gemm(TC, Dv, w->A, TC, 1, TC, w->V, Dv, w->num, Dv, NULL);
            for (int i = 0; i < n; i++)
                for (int j = 0; j <= i; j++) w->dn[i] += w->A[(int64_t)i * TC + j];
        }
        cf_block_gemm(TC, Dv, w->Q, F, 1, F, w->S, Dv, w->num, Dv, NULL);
        for (int i = 0; i < n; i++) {
            const float *qi = w->Q + (int64_t)i * F;
            float d = w->dn[i];
            for (int r = 0; r < F; r++) d += qi[r] * w->z[r];
            float *o = g->out + ((int64_t)b * T + c0 + i) * g->so + (int64_t)h * Dv;
            const float *nu = w->num + (int64_t)i * Dv;
            float inv = d != 0 ? 1.0f / d : 0.0f;
            for (int c = 0; c < Dv; c++) o[c] = nu[c] * inv;
            den[c0 + i] = d;
        }
        if (g->causal) {
            cf_block_gemm(F, Dv, w->K, 1, F, TC, w->V, Dv, w->S, Dv, NULL);
            for (int i = 0; i < n; i++)
                for (int r = 0; r < F; r++) w->z[r] += w->K[(int64_t)i * F + r];
        }
    }
}

/* G = dout / den and e = -(dout . out) / den for the rows of a chunk (0 where den is 0) */
static void out_grads(const kgeom *g, kws *w, int64_t bh, int c0, int n) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), Dv = g->Dv;
    memset(w->G, 0, sizeof(float) * TC * Dv);
    memset(w->e, 0, sizeof(float) * TC);
    for (int i = 0; i < n; i++) {
        int64_t at = ((int64_t)b * g->T + c0 + i) * g->so + (int64_t)h * Dv;
        const float *go = g->dout + at, *o = g->o + at;
        float d = g->den[bh * g->T + c0 + i];
        if (d == 0) continue;
        float inv = 1.0f / d, dot = 0;
        float *gi = w->G + (int64_t)i * Dv;
        for (int c = 0; c < Dv; c++) {
            gi[c] = go[c] * inv;
            dot += go[c] * o[c];
        }
        w->e[i] = -dot * inv;
    }
}

/* dA = tril(G V^T + e 1^T) */
static void make_da(kws *w, int Dv) {
    memset(w->dA, 0, sizeof(float) * TC * TC);
    cf_block_gemm(TC, TC, w->G, Dv, 1, Dv, w->VT, TC, w->dA, TC, NULL);
    for (int i = 0; i < TC; i++)
        for (int j = 0; j <= i; j++) w->dA[(int64_t)i * TC + j] += w->e[i];
    tril(w->dA);
}

/* rows [c0, c0 + n) of a feature gradient: grad += dF phi'(x), keys only where kept */
static void write_feat_grad(const kgeom *g, const kws *w, int b, int h, int c0, int n, const float *src, int64_t ss,
                            float *grad, int keys) {
    for (int i = 0; i < n; i++) {
        if (keys && !kept(g, b, c0 + i)) continue;
        int64_t row = (int64_t)b * g->T + c0 + i;
        feat_back(g, src + row * ss + (int64_t)h * g->F, w->dF + (int64_t)i * g->F, grad + row * ss + (int64_t)h * g->F);
    }
}

static void bwd_head(const kgeom *g, kws *w, int64_t bh) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), F = g->F, Dv = g->Dv, T = g->T;
    int nc = nblocks(T, TC);
    memset(w->ST, 0, sizeof(float) * F * Dv);
    memset(w->z, 0, sizeof(float) * F);
    memset(w->R, 0, sizeof(float) * F * Dv);
    memset(w->RT, 0, sizeof(float) * F * Dv);
    memset(w->r, 0, sizeof(float) * F);
    if (!g->causal) {
        /* S^T, z over every key; then dQ and R, R^T, r over every query; then dK and dV */
        for (int c = 0; c < nc; c++) {
            int c0 = c * TC;
            pack(g, w, b, h, c0, blen(T, c0, TC), 0, 1, 0);
            cf_block_gemm(Dv, F, w->V, 1, Dv, TC, w->K, F, w->ST, F, NULL);
            for (int i = 0; i < TC; i++)
                for (int r = 0; r < F; r++) w->z[r] += w->K[(int64_t)i * F + r];
        }
        for (int c = 0; c < nc; c++) {
            int c0 = c * TC, n = blen(T, c0, TC);
            pack(g, w, b, h, c0, n, 1, 0, 0);
            out_grads(g, w, bh, c0, n);
            if (g->dq) {
                memset(w->dF, 0, sizeof(float) * TC * F);
                cf_block_gemm(TC, F, w->G, Dv, 1, Dv, w->ST, F, w->dF, F, NULL);
                for (int i = 0; i < n; i++)
                    for (int r = 0; r < F; r++) w->dF[(int64_t)i * F + r] += w->e[i] * w->z[r];
                write_feat_grad(g, w, b, h, c0, n, g->q, g->sq, g->dq, 0);
            }
            cf_block_gemm(F, Dv, w->Q, 1, F, TC, w->G, Dv, w->R, Dv, NULL);
            cf_block_gemm(Dv, F, w->G, 1, Dv, TC, w->Q, F, w->RT, F, NULL);
            for (int i = 0; i < TC; i++)
                for (int r = 0; r < F; r++) w->r[r] += w->e[i] * w->Q[(int64_t)i * F + r];
        }
        if (g->dk || g->dv)
            for (int c = 0; c < nc; c++) {
                int c0 = c * TC, n = blen(T, c0, TC);
                pack(g, w, b, h, c0, n, 0, 1, 0);
                if (g->dk) {
                    memset(w->dF, 0, sizeof(float) * TC * F);
                    cf_block_gemm(TC, F, w->V, Dv, 1, Dv, w->RT, F, w->dF, F, NULL);
                    for (int i = 0; i < n; i++)
                        for (int r = 0; r < F; r++) w->dF[(int64_t)i * F + r] += w->r[r];
                    write_feat_grad(g, w, b, h, c0, n, g->k, g->sk, g->dk, 1);
                }
                if (g->dv) {
                    memset(w->num, 0, sizeof(float) * TC * Dv);
                    cf_block_gemm(TC, Dv, w->K, F, 1, F, w->R, Dv, w->num, Dv, NULL);
                    for (int i = 0; i < n; i++) {
                        float *d = g->dv + ((int64_t)b * T + c0 + i) * g->sv + (int64_t)h * Dv;
                        for (int x = 0; x < Dv; x++) d[x] += w->num[(int64_t)i * Dv + x];
                    }
                }
            }
        return;
    }
    /* forward walk: dQ needs the state before each chunk, rebuilt rather than stored */
    if (g->dq)
        for (int c = 0; c < nc; c++) {
            int c0 = c * TC, n = blen(T, c0, TC);
            pack(g, w, b, h, c0, n, 0, 1, 1);
            out_grads(g, w, bh, c0, n);
            make_da(w, Dv);
            memset(w->dF, 0, sizeof(float) * TC * F);
            cf_block_gemm(TC, F, w->dA, TC, 1, TC, w->K, F, w->dF, F, NULL);
            cf_block_gemm(TC, F, w->G, Dv, 1, Dv, w->ST, F, w->dF, F, NULL);
            for (int i = 0; i < n; i++)
                for (int r = 0; r < F; r++) w->dF[(int64_t)i * F + r] += w->e[i] * w->z[r];
            write_feat_grad(g, w, b, h, c0, n, g->q, g->sq, g->dq, 0);
            cf_block_gemm(Dv, F, w->V, 1, Dv, TC, w->K, F, w->ST, F, NULL);
            for (int i = 0; i < TC; i++)
                for (int r = 0; r < F; r++) w->z[r] += w->K[(int64_t)i * F + r];
        }
    /* reverse walk: dK and dV need the sums over the queries of the chunks after */
    if (g->dk || g->dv)
        for (int c = nc - 1; c >= 0; c--) {
            int c0 = c * TC, n = blen(T, c0, TC);
            pack(g, w, b, h, c0, n, 1, 1, 1);
            out_grads(g, w, bh, c0, n);
            make_da(w, Dv);
            if (g->dk) {
                memset(w->dF, 0, sizeof(float) * TC * F);
                cf_block_gemm(TC, F, w->dA, 1, TC, TC, w->Q, F, w->dF, F, NULL);
                cf_block_gemm(TC, F, w->V, Dv, 1, Dv, w->RT, F, w->dF, F, NULL);
                for (int i = 0; i < n; i++)
                    for (int r = 0; r < F; r++) w->dF[(int64_t)i * F + r] += w->r[r];
                write_feat_grad(g, w, b, h, c0, n, g->k, g->sk, g->dk, 1);
            }
            if (g->dv) {
                memset(w->A, 0, sizeof(float) * TC * TC);
                cf_block_gemm(TC, TC, w->Q, F, 1, F, w->KT, TC, w->A, TC, NULL);
                tril(w->A);
                memset(w->num, 0, sizeof(float) * TC * Dv);
                cf_block_gemm(TC, Dv, w->A, 1, TC, TC, w->G, Dv, w->num, Dv, NULL);
                cf_block_gemm(TC, Dv, w->K, F, 1, F, w->R, Dv, w->num, Dv, NULL);
                for (int i = 0; i < n; i++) {
                    float *d = g->dv + ((int64_t)b * T + c0 + i) * g->sv + (int64_t)h * Dv;
                    for (int x = 0; x < Dv; x++) d[x] += w->num[(int64_t)i * Dv + x];
                }
            }
            cf_block_gemm(F, Dv, w->Q, 1, F, TC, w->G, Dv, w->R, Dv, NULL);
            cf_block_gemm(Dv, F, w->G, 1, Dv, TC, w->Q, F, w->RT, F, NULL);
            for (int i = 0; i < TC; i++)
                for (int r = 0; r < F; r++) w->r[r] += w->e[i] * w->Q[(int64_t)i * F + r];
        }
}

static void run(cf_ctx *ctx, const kgeom *g, int backward) {
    int64_t BH = (int64_t)g->B * g->H;
    int nt = team_size_items((double)BH * g->T * (g->F + TC) * g->Dv, PAR_MIN_WORK, BH);
    size_t per = kws_floats(g->F, g->Dv), mark = cf_arena_mark(&ctx->arena);
    float *base = team_ws(ctx, nt, per);
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        kws w;
        kws_layout(&w, thread_ws(base, per), g->F, g->Dv);
        /* dynamic: heads are equal in work, but threads may not be equally fast */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < BH; bh++) {
            if (backward) bwd_head(g, &w, bh);
            else fwd_head(g, &w, bh);
        }
    }
    cf_arena_rewind(&ctx->arena, mark);
}

/* the geometry of a node's inputs: one qkv (elu + 1 features) or fq, fk and qkv */
static kgeom kgeom_of(int n_in, cf_tensor **in, int n_heads, int causal, float eps) {
    kgeom g;
    memset(&g, 0, sizeof g);
    cf_tensor *qkv = in[n_in - 1];
    int64_t C = qkv->shape[2] / 3;
    g.B = qkv->shape[0];
    g.T = qkv->shape[1];
    g.H = n_heads;
    g.Dv = (int)(C / n_heads);
    g.causal = causal;
    g.eps = eps;
    g.v = qkv->data + 2 * C;
    g.sv = 3 * C;
    g.so = C;
    if (n_in == 1) {
        g.map = FM_ELU1;
        g.F = g.Dv;
        g.q = qkv->data;
        g.k = qkv->data + C;
        g.sq = g.sk = 3 * C;
    } else {
        g.map = FM_IDENT;
        g.F = in[0]->shape[2] / n_heads;
        g.q = in[0]->data;
        g.k = in[1]->data;
        g.sq = g.sk = in[0]->shape[2];
    }
    return g;
}

static cf_tensor *kernel_attention(cf_ctx *ctx, int n_in, cf_tensor **in, int n_heads, int causal, float eps,
                                   const uint8_t *keep) {
    kgeom g = kgeom_of(n_in, in, n_heads, causal, eps);
    g.keep = keep;
    cf_tensor *out = cf_tensor_3d(ctx, g.B, g.T, g.H * g.Dv);
    int record = cf_needs_grad(ctx, n_in, in);
    size_t den_bytes = (size_t)g.B * g.H * g.T * sizeof(float);
    float *den = record ? cf_scratch(ctx, den_bytes) : NULL;
    size_t mark = cf_arena_mark(&ctx->arena);
    g.den = record ? den : cf_scratch(ctx, den_bytes);
    g.out = out->data;
    run(ctx, &g, 0);
    cf_arena_rewind(&ctx->arena, mark);
    cf_node *n = cf_record(ctx, CF_OP_KERNEL_ATTENTION, out, n_in, in);
    if (n) {
        n->saved = den;
        n->ptr = keep;
        n->iarg[0] = n_heads;
        n->iarg[1] = causal;
        n->farg[0] = eps;
    }
    return out;
}

cf_tensor *cf_linear_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, int causal, const uint8_t *key_keep) {
    CF_ASSERT(qkv->ndim == 3 && n_heads > 0 && qkv->shape[2] % (3 * n_heads) == 0 && qkv->shape[1] > 0,
              "linear attention: qkv %s is not [B, T, 3*H*Dh] with H = %d", cf_shape_str(qkv), n_heads);
    /* eps of fast-transformers' LinearAttention and CausalLinearAttention */
    return kernel_attention(ctx, 1, &qkv, n_heads, causal != 0, 1e-6f, key_keep);
}

cf_tensor *cf_kernel_attention(cf_ctx *ctx, cf_tensor *fq, cf_tensor *fk, cf_tensor *qkv, int n_heads, int causal,
                               float eps, const uint8_t *key_keep) {
    CF_ASSERT(qkv->ndim == 3 && n_heads > 0 && qkv->shape[2] % (3 * n_heads) == 0 && qkv->shape[1] > 0,
              "kernel attention: qkv %s is not [B, T, 3*H*Dv] with H = %d", cf_shape_str(qkv), n_heads);
    CF_ASSERT(fq->ndim == 3 && cf_same_shape(fq, fk) && fq->shape[0] == qkv->shape[0] &&
              fq->shape[1] == qkv->shape[1] && fq->shape[2] % n_heads == 0,
              "kernel attention: features %s and %s do not match qkv %s and %d heads", cf_shape_str(fq),
              cf_shape_str(fk), cf_shape_str(qkv), n_heads);
    CF_ASSERT(eps >= 0, "kernel attention: eps %g", eps);
    return kernel_attention(ctx, 3, (cf_tensor *[]){fq, fk, qkv}, n_heads, causal != 0, eps, key_keep);
}

void cf_kernel_attention_backward(cf_ctx *ctx, cf_node *n) {
    kgeom g = kgeom_of(n->n_in, n->in, (int)n->iarg[0], (int)n->iarg[1], n->farg[0]);
    g.keep = n->ptr;
    g.den = n->saved;
    g.o = n->out->data;
    g.dout = n->out->grad;
    cf_tensor *qkv = n->in[n->n_in - 1];
    int64_t C = qkv->shape[2] / 3;
    if (n->n_in == 1) {
        float *gq = cf_grad(ctx, qkv);
        g.dq = gq;
        g.dk = gq + C;
        g.dv = gq + 2 * C;
    } else {
        if (n->in[0]->requires_grad) g.dq = cf_grad(ctx, n->in[0]);
        if (n->in[1]->requires_grad) g.dk = cf_grad(ctx, n->in[1]);
        if (qkv->requires_grad) g.dv = cf_grad(ctx, qkv) + 2 * C;
    }
    run(ctx, &g, 1);
}

/* ---- the row of linear attention ---------------------------------------------------------------------- */

static cf_tensor *linear_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv) {
    return cf_linear_attention_qkv(ctx, qkv, c->n_heads, c->causal, c->key_keep);
}

/* ---- incremental decoding: the recurrent form, S += phi(k) v^T, z += phi(k), then
 * out = phi(q)^T S / (phi(q) . z + eps); constant memory and cost per byte ----------------------------- */

static int linear_rows(const cf_attn_config *c, int span) { (void)c, (void)span; return 0; }
/* per head S [Dh, Dh], then z [Dh] */
static size_t linear_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    (void)c, (void)span;
    return (size_t)n_heads * d_head * (d_head + 1);
}

static inline float elu1(float x) { return x > 0 ? x + 1.0f : expf(x); }

static void linear_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                        int ld, int n, float *out) {
    (void)call;
    int H = c->H, d = c->Dh;
    for (int r = 0; r < n; r++) {
        #pragma omp parallel for schedule(static) if (H * d * d >= CF_CACHE_PAR_MIN)
        for (int h = 0; h < H; h++) {
            float *S = c->aux + (size_t)h * d * (d + 1), *z = S + (size_t)d * d;
            int g = cf_attn_cache_kv_head(c, h);
            const float *kr = k + (int64_t)r * ld + g * d, *vr = v + (int64_t)r * ld + g * d;
            const float *qr = q + (int64_t)r * ld + h * d;
            float *o = out + ((int64_t)r * H + h) * d;
            for (int a = 0; a < d; a++) {
                float fk = elu1(kr[a]);
                for (int b = 0; b < d; b++) S[a * d + b] += fk * vr[b];
                z[a] += fk;
            }
            float den = 1e-6f;
            memset(o, 0, sizeof(float) * d);
            for (int a = 0; a < d; a++) {
                float fq = elu1(qr[a]);
                den += fq * z[a];
                for (int b = 0; b < d; b++) o[b] += fq * S[a * d + b];
            }
            float inv = den > 0 ? 1.0f / den : 0.0f;
            for (int b = 0; b < d; b++) o[b] *= inv;
        }
    }
    c->pos += n;
}

const cf_attn_variant cf_attn_linear = {
    .name = "linear", .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_QK_NORM,
    .core = linear_core, .cache_rows = linear_rows, .cache_aux = linear_aux, .step = linear_step};
