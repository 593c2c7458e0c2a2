/* Infini-attention's compressive memory (Munkhdalai et al. 2024; docs/attention.md section 8), forward
 * and backward side by side. The contract is the comment on cf_infini_attention in attention.h.
 *
 * Per (batch, head), with sq = sigma(q), sk = sigma(k) by rows, g = sigmoid(beta[h]), and (M, z) the
 * memory before segment s (M_p, z_p below):
 *   A_mem_i = sq_i^T M / (sq_i . z),  out_i = g A_mem_i + (1 - g) a_dot_i   (a_dot_i alone: no memory)
 *   linear: M' = M + SK^T V,  delta: M' = M + SK^T U, U = V - R, r_t = sk_t^T M / (sk_t . z),
 *   z' = z + sum_t sk_t.
 * Every row of a segment reads the same memory, so a segment has no recurrence inside it: it is
 * processed in chunks of TC rows, each a few small dense products (src/kernels/block_gemm.h), and
 * the workspace is bounded by TC whatever segment_len is.
 *
 * Backward (docs/attention.md section 8.3) walks the segments in reverse carrying dM, dz = dLoss/d(M_s, z_s);
 * the state after the last segment only reaches M_out, which is detached, so it starts at zero.
 * For segment s, with dM_s, dz_s read-only and dM_p, dz_p = dM_s, dz_s (the identity path) plus:
 *   retrieval: dnum_i = g dout_i / den_i,  dden_i = -g (dout_i . A_mem_i) / den_i,
 *              dsq_i = M_p dnum_i + dden_i z_p,  dM_p += SQ^T dNUM,  dz_p += sum_i dden_i sq_i,
 *              dbeta += sum_i dout_i . (A_mem_i - a_dot_i) g (1 - g),  da_dot_i += (1 - g) dout_i
 *   update:    dU = SK dM_s,  dv_t += du_t,  dsk_t += dM_s u_t + dz_s   (u = v for the linear rule)
 *   delta:     r_t enters like A_mem with -du_t for dout_t: drnum_t = -du_t / rden_t,
 *              drden_t = (du_t . r_t) / rden_t, dsk_t += M_p drnum_t + drden_t z_p,
 *              dM_p += SK^T dRNUM, dz_p += sum_t drden_t sk_t.
 * No gradient flows into M0, z0, so segment 0 adds nothing to dM_p; the last segment's update
 * feeds only M_out, so its k and v get no gradient and that work is skipped.
 *
 * Forward keeps the memory before every segment, [B, H, n_seg, d*d + d] floats (M then z), and
 * nothing per row: backward recomputes A_mem and r from them (one extra n d^2 product per chunk
 * against keeping [B, T, H*d] more activations). Each (batch, head) is one work item writing only
 * its own columns; the per-item dbeta partials are summed over the batch in ascending order after
 * the parallel loop, so results are bitwise independent of the thread count.
 *
 * Denominators carry no eps: sigma > 0, and z is a sum of sigma(k) rows or the caller's z0, which
 * the forward checks to be nonnegative with a positive sum, so sq . z > 0 wherever a memory exists
 * (short of e^x underflowing to 0 for every entry of a row of q, all below about -100). */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "cformer/attention.h"
#include "cache.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "../ops/backward.h"
#include "../kernels/attn_geom.h"
#include "../kernels/attn_tiles.h"
#include "../kernels/block_gemm.h"

#define TC 64

typedef struct igeom {
    int B, T, H, d, L, nseg, delta, has_m0;
    int64_t C;                       /* H*d: the row stride of out and a_dot, a third of qkv's */
    size_t ss;                       /* d*d + d: one state, M then z */
    const float *qkv, *adot, *beta;
    float *states;                   /* [B*H, nseg, ss]: the memory before each segment, or NULL */
    float *out;                      /* forward */
    const float *dout;               /* backward: the output's gradient */
    float *dqkv, *dadot;             /* backward: gradients wanted, or NULL */
    int want_dbeta;
} igeom;

/* one thread's buffers */
typedef struct iws {
    float *SQ, *SK, *V, *A, *G, *DU, *dQ, *dK;   /* [TC, d] */
    float *e;                                    /* [TC] */
    float *MT, *dMT;                             /* [d, d]: M_p^T and dM_s^T, right operands of products */
    float *sa, *sb;                              /* [ss]: two states (forward M, z; backward dM, dz) */
} iws;

/* the buffers carved from base (NULL: only counted); returns their size in floats */
static size_t iws_layout(iws *w, float *base, int d) {
    ws_carver c = {base, 0};
    size_t td = (size_t)TC * d, dd = (size_t)d * d;
    w->SQ = ws_take(&c, td);
    w->SK = ws_take(&c, td);
    w->V = ws_take(&c, td);
    w->A = ws_take(&c, td);
    w->G = ws_take(&c, td);
    w->DU = ws_take(&c, td);
    w->dQ = ws_take(&c, td);
    w->dK = ws_take(&c, td);
    w->e = ws_take(&c, TC);
    w->MT = ws_take(&c, dd);
    w->dMT = ws_take(&c, dd);
    w->sa = ws_take(&c, dd + d);
    w->sb = ws_take(&c, dd + d);
    return c.floats;
}

static size_t iws_floats(int d) {
    iws w;
    return iws_layout(&w, NULL, d);
}

/* y = sigma(x) = elu(x) + 1 over a row. Half the entries take an exponential, which as scalar expf
 * costs more than the d^2 products of the row, so AVX-512 takes e^x = 2^(x log2 e) by exp2_16
 * (relative error ~1e-7, as expf). Operand orders make NaN propagate; -150 keeps exp2_16's input
 * finite (2^-150 is already 0 in float). */
static void sigma_row(const float *x, float *y, int n) {
    int c = 0;
#ifdef __AVX512F__
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), l2e = _mm512_set1_ps(LOG2E);
    const __m512 lo = _mm512_set1_ps(-150.0f);
    for (; c < n; c += 16) {
        __mmask16 m = n - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - c)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + c);
        __m512 e = exp2_16(_mm512_max_ps(lo, _mm512_mul_ps(_mm512_min_ps(zero, v), l2e)));
        __mmask16 pos = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
        _mm512_mask_storeu_ps(y + c, m, _mm512_mask_add_ps(e, pos, v, one));
    }
#endif
    for (; c < n; c++) y[c] = x[c] > 0 ? x[c] + 1.0f : expf(x[c]);
}
static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void transpose(const float *m, float *mt, int d) {
    for (int r = 0; r < d; r++)
        for (int c = 0; c < d; c++) mt[(int64_t)c * d + r] = m[(int64_t)r * d + c];
}

/* offset of row t, head h in qkv (its q columns; k at + C, v at + 2C) and in out / a_dot */
static inline int64_t at3(const igeom *g, int b, int h, int t) {
    return ((int64_t)b * g->T + t) * 3 * g->C + (int64_t)h * g->d;
}
static inline int64_t at1(const igeom *g, int b, int h, int t) {
    return ((int64_t)b * g->T + t) * g->C + (int64_t)h * g->d;
}

static int seg_end(const igeom *g, int s) { return (s + 1) * g->L < g->T ? (s + 1) * g->L : g->T; }

/* rows [c0, c0 + n) of head (b, h): sigma(q) into SQ (with_q), sigma(k) into SK and v into V (with_kv) */
static void load(const igeom *g, iws *w, int b, int h, int c0, int n, int with_q, int with_kv) {
    int d = g->d;
    for (int i = 0; i < n; i++) {
        const float *q = g->qkv + at3(g, b, h, c0 + i), *k = q + g->C, *v = k + g->C;
        float *sq = w->SQ + (int64_t)i * d, *sk = w->SK + (int64_t)i * d;
        if (with_q) sigma_row(q, sq, d);
        if (with_kv) {
            sigma_row(k, sk, d);
            memcpy(w->V + (int64_t)i * d, v, sizeof(float) * d);
        }
    }
}

/* rows of X (SQ or SK) times M_p into A, each divided by its denominator X_i . z_p, whose
 * inverse goes to e: A_mem for queries, r for the delta rule's keys */
static void retrieve(iws *w, const float *X, int n, int d, const float *Mp) {
    const float *zp = Mp + (size_t)d * d;
    memset(w->A, 0, sizeof(float) * n * d);
    cf_block_gemm(n, d, X, d, 1, d, Mp, d, w->A, d, NULL);
    for (int i = 0; i < n; i++) {
        float inv = 1.0f / dotf(X + (int64_t)i * d, zp, d), *a = w->A + (int64_t)i * d;
        for (int c = 0; c < d; c++) a[c] *= inv;
        w->e[i] = inv;
    }
}

static void fwd_item(const igeom *g, iws *w, int64_t bh, const float *M0, const float *z0, float *M_out,
                     float *z_out) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), d = g->d;
    size_t dd = (size_t)d * d, ss = g->ss;
    float gate = sigmoidf(g->beta[h]), og = 1.0f - gate;
    float *st = g->states ? g->states + (size_t)bh * g->nseg * ss : NULL;
    /* The memory before segment s is its saved slot when recording, else one of the two workspace
     * states taken in turn. M0 is copied first, so M_out may alias it. */
    float *Mp = st ? st : w->sa;
    if (M0) {
        memcpy(Mp, M0 + (size_t)bh * dd, sizeof(float) * dd);
        memcpy(Mp + dd, z0 + (size_t)bh * d, sizeof(float) * d);
    } else {
        memset(Mp, 0, sizeof(float) * ss);
    }
    for (int s = 0; s < g->nseg; s++) {
        float *Mn = st && s + 1 < g->nseg ? st + (s + 1) * ss : Mp == w->sa ? w->sb : w->sa;
        float *zn = Mn + dd;
        int mem = g->has_m0 || s > 0, t1 = seg_end(g, s);
        memcpy(Mn, Mp, sizeof(float) * ss);
        for (int c0 = s * g->L; c0 < t1; c0 += TC) {
            int n = blen(t1, c0, TC);
            load(g, w, b, h, c0, n, mem, 1);
            if (mem) retrieve(w, w->SQ, n, d, Mp);
            for (int i = 0; i < n; i++) {
                int64_t at = at1(g, b, h, c0 + i);
                float *o = g->out + at;
                const float *a = g->adot + at, *am = w->A + (int64_t)i * d;
                if (mem)
                    for (int c = 0; c < d; c++) o[c] = gate * am[c] + og * a[c];
                else
                    memcpy(o, a, sizeof(float) * d);
            }
            const float *U = w->V;
            if (g->delta && mem) {
                retrieve(w, w->SK, n, d, Mp);
                for (int64_t x = 0; x < (int64_t)n * d; x++) w->G[x] = w->V[x] - w->A[x];
                U = w->G;
            }
            /* every chunk reads M_p and writes M_n: the rows of a segment see the same memory */
            cf_block_gemm(d, d, w->SK, 1, d, n, U, d, Mn, d, NULL);
            for (int i = 0; i < n; i++) {
                const float *sk = w->SK + (int64_t)i * d;
                for (int c = 0; c < d; c++) zn[c] += sk[c];
            }
        }
        Mp = Mn;
    }
    if (M_out) memcpy(M_out + (size_t)bh * dd, Mp, sizeof(float) * dd);
    if (z_out) memcpy(z_out + (size_t)bh * d, Mp + dd, sizeof(float) * d);
}

/* grad[c] += dx[c] sigma'(x[c]); sigma'(x) = 1 for x > 0, else e^x = sigma(x), which sx holds */
static inline void sigma_back(const float *x, const float *sx, const float *dx, float *grad, int d) {
    for (int c = 0; c < d; c++) grad[c] += x[c] > 0 ? dx[c] : dx[c] * sx[c];
}

static void bwd_item(const igeom *g, iws *w, int64_t bh, float *dbeta_slot) {
    int b = (int)(bh / g->H), h = (int)(bh % g->H), d = g->d;
    size_t dd = (size_t)d * d, ss = g->ss;
    float gate = sigmoidf(g->beta[h]), og = 1.0f - gate;
    const float *st = g->states + (size_t)bh * g->nseg * ss;
    float *dMs = w->sa, *dMp = w->sb;   /* dLoss/d(M, z) after and before the segment */
    double dbeta = 0;
    memset(dMs, 0, sizeof(float) * ss);
    for (int s = g->nseg - 1; s >= 0; s--) {
        const float *Mp = st + s * ss, *zp = Mp + dd, *dzs = dMs + dd;
        float *dzp = dMp + dd;
        /* without a qkv gradient only A_mem matters (for a_dot and beta): no chain through M */
        int mem = g->has_m0 || s > 0, upd = g->dqkv && s + 1 < g->nseg, acc = g->dqkv && s > 0;
        int t1 = seg_end(g, s);
        memcpy(dMp, dMs, sizeof(float) * ss);
        if (mem && g->dqkv) transpose(Mp, w->MT, d);
        if (upd) transpose(dMs, w->dMT, d);
        for (int c0 = s * g->L; c0 < t1; c0 += TC) {
            int n = blen(t1, c0, TC);
            load(g, w, b, h, c0, n, mem, upd);
            if (mem) {
                retrieve(w, w->SQ, n, d, Mp);
                for (int i = 0; i < n; i++) {
                    int64_t at = at1(g, b, h, c0 + i);
                    const float *go = g->dout + at, *a = g->adot + at, *am = w->A + (int64_t)i * d;
                    if (g->want_dbeta) {
                        float t = 0;
                        for (int c = 0; c < d; c++) t += go[c] * (am[c] - a[c]);
                        dbeta += t;
                    }
                    if (g->dadot)
                        for (int c = 0; c < d; c++) g->dadot[at + c] += og * go[c];
                    if (g->dqkv) {
                        float inv = w->e[i], *gi = w->G + (int64_t)i * d;
                        for (int c = 0; c < d; c++) gi[c] = gate * go[c] * inv;
                        w->e[i] = -gate * dotf(go, am, d) * inv;
                    }
                }
                if (g->dqkv) {
                    memset(w->dQ, 0, sizeof(float) * n * d);
                    cf_block_gemm(n, d, w->G, d, 1, d, w->MT, d, w->dQ, d, NULL);
                    for (int i = 0; i < n; i++) {
                        float *dq = w->dQ + (int64_t)i * d;
                        for (int c = 0; c < d; c++) dq[c] += w->e[i] * zp[c];
                    }
                    if (acc) {
                        cf_block_gemm(d, d, w->SQ, 1, d, n, w->G, d, dMp, d, NULL);
                        for (int i = 0; i < n; i++) {
                            const float *sq = w->SQ + (int64_t)i * d;
                            for (int c = 0; c < d; c++) dzp[c] += w->e[i] * sq[c];
                        }
                    }
                    for (int i = 0; i < n; i++) {
                        int64_t at = at3(g, b, h, c0 + i);
                        sigma_back(g->qkv + at, w->SQ + (int64_t)i * d, w->dQ + (int64_t)i * d, g->dqkv + at, d);
                    }
                }
            } else if (g->dadot) {
                for (int i = 0; i < n; i++) {
                    int64_t at = at1(g, b, h, c0 + i);
                    for (int c = 0; c < d; c++) g->dadot[at + c] += g->dout[at + c];
                }
            }
            if (!upd) continue;
            /* dU = SK dM_s is dV; the keys get dM_s u_t + dz_s */
            memset(w->DU, 0, sizeof(float) * n * d);
            cf_block_gemm(n, d, w->SK, d, 1, d, dMs, d, w->DU, d, NULL);
            memset(w->dK, 0, sizeof(float) * n * d);
            if (g->delta && mem) {
                /* u = v - r, and -dU flows into r as dout flows into A_mem (without the gate) */
                retrieve(w, w->SK, n, d, Mp);
                for (int i = 0; i < n; i++) {
                    float inv = w->e[i], *gi = w->G + (int64_t)i * d, *u = w->V + (int64_t)i * d;
                    const float *du = w->DU + (int64_t)i * d, *r = w->A + (int64_t)i * d;
                    for (int c = 0; c < d; c++) {
                        gi[c] = -du[c] * inv;
                        u[c] -= r[c];
                    }
                    w->e[i] = dotf(du, r, d) * inv;
                }
                cf_block_gemm(n, d, w->G, d, 1, d, w->MT, d, w->dK, d, NULL);
                for (int i = 0; i < n; i++) {
                    float *dk = w->dK + (int64_t)i * d;
                    for (int c = 0; c < d; c++) dk[c] += w->e[i] * zp[c];
                }
                if (acc) {
                    cf_block_gemm(d, d, w->SK, 1, d, n, w->G, d, dMp, d, NULL);
                    for (int i = 0; i < n; i++) {
                        const float *sk = w->SK + (int64_t)i * d;
                        for (int c = 0; c < d; c++) dzp[c] += w->e[i] * sk[c];
                    }
                }
            }
            cf_block_gemm(n, d, w->V, d, 1, d, w->dMT, d, w->dK, d, NULL);
            for (int i = 0; i < n; i++) {
                int64_t at = at3(g, b, h, c0 + i);
                float *dk = w->dK + (int64_t)i * d, *dv = g->dqkv + at + 2 * g->C;
                const float *du = w->DU + (int64_t)i * d;
                for (int c = 0; c < d; c++) {
                    dk[c] += dzs[c];
                    dv[c] += du[c];
                }
                sigma_back(g->qkv + at + g->C, w->SK + (int64_t)i * d, dk, g->dqkv + at + g->C, d);
            }
        }
        float *t = dMs;
        dMs = dMp;
        dMp = t;
    }
    if (dbeta_slot) *dbeta_slot = (float)(dbeta * gate * og);
}

static void run(cf_ctx *ctx, const igeom *g, int backward, const float *M0, const float *z0, float *M_out,
                float *z_out, float *dbeta_slots) {
    int64_t BH = (int64_t)g->B * g->H;
    int nt = team_size_items((double)BH * g->T * g->d * g->d, PAR_MIN_WORK, BH);
    size_t per = iws_floats(g->d), mark = cf_arena_mark(&ctx->arena);
    float *base = team_ws(ctx, nt, per);
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        iws w;
        iws_layout(&w, thread_ws(base, per), g->d);
        #pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < BH; bh++) {
            if (backward) bwd_item(g, &w, bh, dbeta_slots ? dbeta_slots + bh : NULL);
            else fwd_item(g, &w, bh, M0, z0, M_out, z_out);
        }
    }
    cf_arena_rewind(&ctx->arena, mark);
}

static igeom igeom_of(cf_tensor **in, int n_heads, int segment_len, int delta, int has_m0) {
    igeom g;
    memset(&g, 0, sizeof g);
    g.B = in[0]->shape[0];
    g.T = in[0]->shape[1];
    g.H = n_heads;
    g.C = in[0]->shape[2] / 3;
    g.d = (int)(g.C / n_heads);
    g.L = segment_len;
    g.nseg = nblocks(g.T, segment_len);
    g.delta = delta != 0;
    g.has_m0 = has_m0;
    g.ss = (size_t)g.d * g.d + g.d;
    g.qkv = in[0]->data;
    g.adot = in[1]->data;
    g.beta = in[2]->data;
    return g;
}

cf_tensor *cf_infini_attention(cf_ctx *ctx, cf_tensor *qkv, cf_tensor *a_dot, cf_tensor *beta, int n_heads,
                               int segment_len, int delta, const float *M0, const float *z0, float *M_out,
                               float *z_out) {
    CF_ASSERT(qkv->ndim == 3 && n_heads > 0 && qkv->shape[2] % (3 * n_heads) == 0 && qkv->shape[1] > 0,
              "infini_attention: qkv %s is not [B, T, 3*H*d] with H = %d", cf_shape_str(qkv), n_heads);
    int B = qkv->shape[0], T = qkv->shape[1], C = qkv->shape[2] / 3, d = C / n_heads;
    CF_ASSERT(a_dot->ndim == 3 && a_dot->shape[0] == B && a_dot->shape[1] == T && a_dot->shape[2] == C,
              "infini_attention: a_dot %s must be [B, T, H*d] = (%d, %d, %d)", cf_shape_str(a_dot), B, T, C);
    CF_ASSERT(beta->numel == n_heads, "infini_attention: beta %s must hold one value per head (%d)",
              cf_shape_str(beta), n_heads);
    CF_ASSERT(segment_len > 0, "infini_attention: segment_len %d", segment_len);
    CF_ASSERT((M0 == NULL) == (z0 == NULL), "infini_attention: M0 and z0 come together (both NULL: no memory)");
    if (z0)
        /* a memory must have a positive normaliser (sum of sigma(k) rows); zeros mean "no memory":
         * pass NULL for that, or the first retrieval divides by zero */
        for (int64_t bh = 0; bh < (int64_t)B * n_heads; bh++) {
            float sum = 0;
            int neg = 0;
            for (int c = 0; c < d; c++) {
                sum += z0[bh * d + c];
                neg |= !(z0[bh * d + c] >= 0);
            }
            CF_ASSERT(!neg && sum > 0, "infini_attention: z0 of batch row %lld, head %lld is not a normaliser "
                      "(entries >= 0, sum > 0); pass M0 = z0 = NULL for no memory",
                      (long long)(bh / n_heads), (long long)(bh % n_heads));
        }
    cf_tensor *in[3] = {qkv, a_dot, beta};
    igeom g = igeom_of(in, n_heads, segment_len, delta, M0 != NULL);
    cf_tensor *out = cf_tensor_3d(ctx, B, T, C);
    g.out = out->data;
    int record = cf_needs_grad(ctx, 3, in);
    if (record) g.states = cf_scratch(ctx, (size_t)B * n_heads * g.nseg * g.ss * sizeof(float));
    run(ctx, &g, 0, M0, z0, M_out, z_out, NULL);
    cf_node *n = cf_record(ctx, CF_OP_INFINI_ATTENTION, out, 3, in);
    if (n) {
        n->saved = g.states;
        n->iarg[0] = n_heads;
        n->iarg[1] = segment_len;
        n->iarg[2] = g.delta;
        n->iarg[3] = g.has_m0;
    }
    return out;
}

void cf_infini_attention_backward(cf_ctx *ctx, cf_node *n) {
    igeom g = igeom_of(n->in, (int)n->iarg[0], (int)n->iarg[1], (int)n->iarg[2], (int)n->iarg[3]);
    g.states = n->saved;
    g.dout = n->out->grad;
    if (n->in[0]->requires_grad) g.dqkv = cf_grad(ctx, n->in[0]);
    if (n->in[1]->requires_grad) g.dadot = cf_grad(ctx, n->in[1]);
    g.want_dbeta = n->in[2]->requires_grad;
    float *dbeta = g.want_dbeta ? cf_grad(ctx, n->in[2]) : NULL;
    size_t mark = cf_arena_mark(&ctx->arena);
    int64_t BH = (int64_t)g.B * g.H;
    float *slots = NULL;
    if (dbeta) {
        slots = cf_scratch(ctx, (size_t)BH * sizeof(float));
        memset(slots, 0, (size_t)BH * sizeof(float));
    }
    run(ctx, &g, 1, NULL, NULL, NULL, NULL, slots);
    if (dbeta)
        for (int h = 0; h < g.H; h++)
            for (int b = 0; b < g.B; b++) dbeta[h] += slots[(int64_t)b * g.H + h];
    cf_arena_rewind(&ctx->arena, mark);
}

/* ---- the row of Infini-attention ---------------------------------------------------------------------- */

static int infini_check(const cf_attn_config *c, const char *path, int n_heads, int d_model) {
    (void)n_heads; (void)d_model;
    /* segments of local attention are blocks of the sparse_fixed "own block" pattern */
    if (c->segment_len < 1) return cf_set_error("%s.segment_len: must be >= 1 (got %d)", path, c->segment_len);
    return 0;
}

/* local attention inside each segment (causal, block-diagonal), then the memory and the gate
 * (extra[0]); the memory the call starts from and leaves is call->state->infini (NULL: none, and
 * nothing written) */
static cf_tensor *infini_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv) {
    cf_attn_opts o = cf_attn_call_opts(c);
    cf_attn_pattern p = {.type = CF_ATTN_SPARSE_FIXED, .stride = c->cfg->segment_len, .c = 1, .parts = 1};
    cf_tensor *a_dot = cf_masked_attention_qkv(ctx, qkv, c->n_heads, &p, &o);
    if (c->cfg->update == CF_UPDATE_NONE) return a_dot;         /* the ablation: no memory at all */
    const cf_infini_io *io = c->state ? &c->state->infini : NULL;
    return cf_infini_attention(ctx, qkv, a_dot, c->extra[0], c->n_heads, c->cfg->segment_len,
                               c->cfg->update == CF_UPDATE_DELTA, io ? io->M0 : NULL, io ? io->z0 : NULL,
                               io ? io->M_out : NULL, io ? io->z_out : NULL);
}

/* ---- incremental decoding ---------------------------------------------------------------------------
 * As training and streamed evaluation cut a call of span positions (starting at call0) into
 * segments of segment_len (the last one of a call may be shorter): a query attends by softmax to
 * its own segment's positions up to itself (the cache holds one segment's keys and values, row
 * t = position - segment start) and reads the memory (M, z) as it was before the segment; when
 * the segment's last position has been fed, its keys and values update the memory and the rows
 * are free again. Memory and cost per byte are constant however long the text. */

static int infini_rows(const cf_attn_config *c, int span) { return c->segment_len < span ? c->segment_len : span; }
/* aux: per head M [d, d], z [d], a workspace of 2 d floats, and M as the segment found it [d, d] */
static size_t infini_head_floats(int d) { return 2 * (size_t)d * d + 3 * (size_t)d; }
static size_t infini_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    (void)c, (void)span;
    return (size_t)n_heads * infini_head_floats(d_head);
}

/* the segment [s0, s0 + len) ends: M += sigma(K)^T V (linear; also the first segment of the
 * stream) or sigma(K)^T (V - sigma(K) M / (sigma(K) z)) (delta, with M and z before the segment),
 * z += sum_t sigma(k_t). The query heads of a group read the same key and value rows, which
 * therefore stay as they are: each row's delta term is formed against a copy of M as the segment
 * found it and added at once. */
static void infini_close(const cf_attn_call *call, cf_attn_cache *c, int len) {
    int H = c->H, d = c->Dh, delta = call->cfg->update == CF_UPDATE_DELTA && c->has_mem;
    #pragma omp parallel for schedule(static) if (H * len * d * d >= CF_CACHE_PAR_MIN)
    for (int h = 0; h < H; h++) {
        float *M = c->aux + (size_t)h * infini_head_floats(d), *z = M + (size_t)d * d, *sk = z + d, *u = sk + d;
        float *M0 = u + d;
        int64_t head = (int64_t)cf_attn_cache_kv_head(c, h) * c->rows * d;
        const float *K = c->k + head, *V = c->v + head;
        if (delta) memcpy(M0, M, sizeof(float) * (size_t)d * d);
        for (int t = 0; t < len; t++) {
            const float *vt = V + (int64_t)t * d;
            sigma_row(K + (int64_t)t * d, sk, d);
            if (delta) {
                float den = 0;
                for (int a = 0; a < d; a++) den += sk[a] * z[a];
                memset(u, 0, sizeof(float) * d);
                for (int a = 0; a < d; a++)
                    for (int b = 0; b < d; b++) u[b] += sk[a] * M0[(size_t)a * d + b];
                for (int b = 0; b < d; b++) u[b] = vt[b] - u[b] / den;
                vt = u;
            }
            for (int a = 0; a < d; a++)
                for (int b = 0; b < d; b++) M[(size_t)a * d + b] += sk[a] * vt[b];
        }
        for (int t = 0; t < len; t++) {            /* z after every row's den has read it */
            sigma_row(K + (int64_t)t * d, sk, d);
            for (int a = 0; a < d; a++) z[a] += sk[a];
        }
    }
    c->has_mem = 1;
}

static void infini_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                        int ld, int n, float *out) {
    int H = c->H, d = c->Dh, S = call->cfg->segment_len, mem = call->cfg->update != CF_UPDATE_NONE;
    float scale = 1.0f / sqrtf((float)d);
    size_t wsf = cf_attn_cache_ws_floats(c->rows, d);
    const float *beta = call->extra[0]->data;
    for (int r = 0; r < n; r++) {
        int64_t p = c->pos, s0 = c->call0 + (p - c->call0) / S * S;
        int t = (int)(p - s0);
        CF_ASSERT(t < c->rows, "infini decoding: row %d of a segment past the cache's %d rows", t, c->rows);
        cf_cache_put(c, t, k + (int64_t)r * ld, v + (int64_t)r * ld);
        #pragma omp parallel for schedule(static) if ((t + 1 + d) * H * d >= CF_CACHE_PAR_MIN)
        for (int h = 0; h < H; h++) {
            float *w = c->ws + (size_t)omp_get_thread_num() * wsf;
            int32_t *list = (int32_t *)(w + c->rows);
            float *sq = w + 2 * (size_t)c->rows, *am = sq + d;
            for (int j = 0; j <= t; j++) list[j] = j;
            const float *qr = q + (int64_t)r * ld + h * d;
            float *o = out + ((int64_t)r * H + h) * d;
            cf_attn_cache_attend(c, h, qr, scale, list, t + 1, w, o);            /* the local part */
            if (!mem || !c->has_mem) continue;
            const float *M = c->aux + (size_t)h * infini_head_floats(d), *z = M + (size_t)d * d;
            sigma_row(qr, sq, d);
            float den = 0;
            memset(am, 0, sizeof(float) * d);
            for (int a = 0; a < d; a++) {
                den += sq[a] * z[a];
                for (int b = 0; b < d; b++) am[b] += sq[a] * M[(size_t)a * d + b];
            }
            float g = sigmoidf(beta[h]), og = 1.0f - g;
            for (int b = 0; b < d; b++) o[b] = g * (am[b] / den) + og * o[b];
        }
        c->pos = p + 1;
        if (mem && (t + 1 == S || c->pos - c->call0 == c->span)) infini_close(call, c, t + 1);
    }
}

/* the call ends (its last segment has closed with its last position): the next starts at pos */
static void infini_boundary(const cf_attn_call *call, cf_attn_cache *c) {
    (void)call;
    c->call0 = c->pos;
}

/* the gate beta [H] ("<prefix>.gate", starts at 0: half memory, half local) */
const cf_attn_variant cf_attn_infini = {
    .name = "infini", .flags = CF_ATTN_RECURRENT | CF_ATTN_CAUSAL_ONLY | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_QK_NORM,
    .check = infini_check,
    .n_extra = 1, .extra = {{"gate", 1, {CF_ATTN_DIM_HEADS}}}, .core = infini_core,
    /* the compressive memory M and its normaliser z, per head */
    .n_state = 2, .state = {{"infini_M", 3, {CF_ATTN_DIM_HEADS, CF_ATTN_DIM_HEAD, CF_ATTN_DIM_HEAD}, 0},
                            {"infini_z", 2, {CF_ATTN_DIM_HEADS, CF_ATTN_DIM_HEAD}, 1}},
    .cache_rows = infini_rows, .cache_aux = infini_aux, .step = infini_step, .boundary = infini_boundary};
