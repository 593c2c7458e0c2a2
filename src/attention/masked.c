/* Masked softmax attention, flash style, for the window and sparse patterns (docs/attention.md sections
 * 2, 3, 4). The structure is that of the fused full attention (src/ops/attention.c): 64 x 64 blocks,
 * Q packed times scale log2(e) so that scores are in base 2, online softmax in the forward with only
 * the output and the per-row log-sum-exp L kept, and a backward that recomputes P = 2^(S - L) block
 * by block with D_i = dO_i . O_i:
 *   dV += P'^T dO,  dP' = dO V^T,  dP = dP' Z/(1-p),  dS = P (dP - D),  dQ = scale dS K,  dK = scale dS^T Q.
 * What differs is which blocks meet: a plan (masked.h; built by window.c and sparse.c) lists, per
 * head, segments of gathered query and key rows and a rule for the key ranges each query sees. The
 * engine gathers a segment's rows into packed blocks as it needs them (a small per-thread cache,
 * see ws), visits for each query block only the key blocks its ranges touch, and masks inside a
 * block with one 64-bit visibility word per row. Memory: the output, L, the (at most two) stage
 * outputs and a fixed workspace per thread; O(T) in all, no T x T term. Stages (at
 * most two, for a merged sparse pattern) each produce an output and L; the second is merged into
 * the first as two softmax partitions: L = log2(2^L1 + 2^L2), O = 2^(L1-L) O1 + 2^(L2-L) O2. The
 * backward of each stage then uses the merged L and D, which is exactly the backward of the union.
 *
 * Two backward drivers, as in the full attention: per segment (one thread owns a (batch, head,
 * segment) and accumulates its dQ, dK, dV: five block GEMMs per pair; dQ lives in a ring of the
 * query blocks still open, see prepare) and two passes (key blocks
 * for dK and dV, then query blocks for dQ: seven per pair, many more work items). Each gradient
 * element gets its terms in ascending block order with the same kernels in both, so they give the
 * same bits, and the result does not depend on the thread count. Within a stage the segments'
 * query lists partition the rows and so do their key lists, so no two work items write one row;
 * the stages run one after the other.
 *
 * Dropout on P keys element (b, h, i, j) by positions, ((b H + h) T + i) T + j, exactly as the full
 * attention does: the same mask as dense attention under the pattern's mask.
 *
 * The block kernels are those of src/ops/attention.c, from src/kernels/attn_tiles.h. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "masked.h"
#include "../ops/backward.h"
#include "../kernels/attn_geom.h"
#include "../kernels/attn_tiles.h"

/* ---- position lists and rules ------------------------------------------------------------------ */

plist cf_plist_ident(int T) { return (plist){.kind = PL_IDENT, .start = 0, .step = 1, .n = T}; }

plist cf_plist_arith(int start, int step, int T) {
    return (plist){.kind = PL_ARITH, .start = start, .step = step, .n = start < T ? (T - start + step - 1) / step : 0};
}

/* entries of p with position < x */
static int pl_below(const plist *p, int64_t x) {
    if (x <= 0) return 0;
    int64_t n;
    switch (p->kind) {
    case PL_IDENT: n = x; break;
    case PL_ARITH: n = x <= p->start ? 0 : (x - p->start + p->step - 1) / p->step; break;
    default: {
        int64_t rem = x % p->l - (p->l - p->c);
        n = x / p->l * p->c + (rem < 0 ? 0 : rem);
    }
    }
    return n < p->n ? (int)n : p->n;
}

plist cf_plist_summary(int l, int c, int T) {
    plist p = {.kind = PL_SUMMARY, .l = l, .c = c, .n = T};
    p.n = pl_below(&p, T);
    return p;
}

static int pl_pos(const plist *p, int i) {
    switch (p->kind) {
    case PL_IDENT: return i;
    case PL_ARITH: return p->start + i * p->step;
    default: return i / p->c * p->l + p->l - p->c + i % p->c;
    }
}

/* the (at most two) position ranges query position i sees, inclusive; returns how many */
static int rule_ranges(const rule *r, int i, int T, int64_t a[2], int64_t b[2]) {
    int64_t bs = r->l ? (int64_t)i / r->l * r->l : 0, be = r->l ? (bs + r->l < T ? bs + r->l : T) - 1 : 0;
    switch (r->kind) {
    case R_BAND:  a[0] = (int64_t)i - r->back; b[0] = (int64_t)i + r->fwd; return 1;
    case R_BLOCK: a[0] = bs; b[0] = r->causal ? i : be; return 1;
    case R_UPTO:  a[0] = 0; b[0] = r->causal ? i : T - 1; return 1;
    case R_BEFORE:
        a[0] = 0; b[0] = (int64_t)i - 1; a[1] = (int64_t)i + 1; b[1] = T - 1;
        return r->causal ? 1 : 2;
    default:      /* R_OUTSIDE_BLOCK */
        a[0] = 0; b[0] = bs - 1; a[1] = be + 1; b[1] = T - 1;
        return r->causal ? 1 : 2;
    }
}

seg *cf_plan_add(cf_ctx *ctx, plan *p, int cls, int st, int n) {
    CF_ASSERT(cls < 2 && st < PLAN_MAX_STAGES && !p->segs[cls][st] && n > 0, "plan: bad segment slot");
    seg *s = cf_scratch(ctx, (size_t)n * sizeof *s);
    memset(s, 0, (size_t)n * sizeof *s);
    p->segs[cls][st] = s;
    p->n_segs[cls][st] = n;
    return s;
}

/* Everything the engine derives from a plan, shared by every (batch, head) of a class. */
typedef struct blockref { seg *s; int b; } blockref;   /* packed block -> segment, block within it */
typedef struct derived {
    blockref *qref[2], *kref[2];        /* [head_qblocks], [head_kblocks] per class */
    int64_t q0[2][PLAN_MAX_STAGES + 1];  /* stage st of class c owns query blocks [q0[c][st], q0[c][st+1]) */
    int64_t k0[2][PLAN_MAX_STAGES + 1];
    int max_ring;                        /* the largest segment's dQ ring, in blocks (per-segment driver) */
} derived;

/* ranges, block spans and packed offsets of every segment */
static void prepare(cf_ctx *ctx, plan *p, derived *dv) {
    int T = p->T;
    memset(dv, 0, sizeof *dv);
    p->head_qblocks = p->head_kblocks = 0;
    for (int c = 0; c < p->n_classes; c++) {
        int64_t qb0 = 0, kb0 = 0;
        for (int st = 0; st < p->n_stages[c]; st++) {
            dv->q0[c][st] = qb0;
            dv->k0[c][st] = kb0;
            for (int si = 0; si < p->n_segs[c][st]; si++) {
                seg *s = &p->segs[c][st][si];
                s->nqb = nblocks(s->q.n, BQ);
                s->nkb = nblocks(s->k.n, BK);
                s->qb0 = qb0;
                s->kb0 = kb0;
                qb0 += s->nqb;
                kb0 += s->nkb;
                size_t nr = (size_t)s->nqb * BQ;
                s->lo1 = cf_scratch(ctx, nr * sizeof(int));
                s->hi1 = cf_scratch(ctx, nr * sizeof(int));
                s->lo2 = cf_scratch(ctx, nr * sizeof(int));
                s->hi2 = cf_scratch(ctx, nr * sizeof(int));
                s->kb_lo = cf_scratch(ctx, (size_t)(s->nqb + 1) * sizeof(int));
                s->kb_hi = cf_scratch(ctx, (size_t)(s->nqb + 1) * sizeof(int));
                s->qb_lo = cf_scratch(ctx, (size_t)(s->nkb + 1) * sizeof(int));
                s->qb_hi = cf_scratch(ctx, (size_t)(s->nkb + 1) * sizeof(int));
                for (size_t i = 0; i < nr; i++) {
                    int *lo[2] = {&s->lo1[i], &s->lo2[i]}, *hi[2] = {&s->hi1[i], &s->hi2[i]};
                    *lo[0] = *lo[1] = 0;
                    *hi[0] = *hi[1] = -1;
                    if ((int)i >= s->q.n) continue;
                    int64_t a[2], b[2];
                    int n = rule_ranges(&s->r, pl_pos(&s->q, (int)i), T, a, b);
                    for (int r = 0; r < n; r++) {
                        *lo[r] = pl_below(&s->k, a[r]);
                        *hi[r] = pl_below(&s->k, b[r] + 1) - 1;
                    }
                }
                for (int qb = 0; qb < s->nqb; qb++) {
                    int lo = s->nkb, hi = -1;
                    for (int i = qb * BQ; i < qb * BQ + BQ; i++) {
                        if (s->lo1[i] <= s->hi1[i]) { lo = s->lo1[i] / BK < lo ? s->lo1[i] / BK : lo; hi = s->hi1[i] / BK > hi ? s->hi1[i] / BK : hi; }
                        if (s->lo2[i] <= s->hi2[i]) { lo = s->lo2[i] / BK < lo ? s->lo2[i] / BK : lo; hi = s->hi2[i] / BK > hi ? s->hi2[i] / BK : hi; }
                    }
                    s->kb_lo[qb] = lo;
                    s->kb_hi[qb] = hi;
                }
                /* the inverse: the backward's key-major walk must meet exactly the pairs the
                 * query-major walk meets, so it checks each candidate against the query's span */
                for (int kb = 0; kb < s->nkb; kb++) {
                    int lo = s->nqb, hi = -1;
                    for (int qb = 0; qb < s->nqb; qb++)
                        if (s->kb_lo[qb] <= kb && kb <= s->kb_hi[qb]) { if (qb < lo) lo = qb; hi = qb; }
                    s->qb_lo[kb] = lo;
                    s->qb_hi[kb] = hi;
                }
                /* The per-segment backward walks the key blocks in order and adds dS K into the dQ
                 * of the query blocks each one meets. Query block qb is complete once the walk
                 * passes kb_hi[qb]; completing them in query order (as kb_hi allows), the blocks
                 * still open at key block kb are [next, the highest touched so far], so a ring of
                 * that many blocks holds them (a band: about window / 64 + 2, not T / 64). */
                int next = 0, top = -1;
                s->ring = 1;
                for (int kb = 0; kb < s->nkb; kb++) {
                    if (s->qb_hi[kb] > top) top = s->qb_hi[kb];
                    if (top - next + 1 > s->ring) s->ring = top - next + 1;
                    while (next < s->nqb && s->kb_hi[next] <= kb) next++;
                }
                if (s->ring > dv->max_ring) dv->max_ring = s->ring;
            }
        }
        dv->q0[c][p->n_stages[c]] = qb0;
        dv->k0[c][p->n_stages[c]] = kb0;
        if (qb0 > p->head_qblocks) p->head_qblocks = qb0;
        if (kb0 > p->head_kblocks) p->head_kblocks = kb0;
        dv->qref[c] = cf_scratch(ctx, (size_t)(qb0 + 1) * sizeof(blockref));
        dv->kref[c] = cf_scratch(ctx, (size_t)(kb0 + 1) * sizeof(blockref));
        for (int st = 0; st < p->n_stages[c]; st++)
            for (int si = 0; si < p->n_segs[c][st]; si++) {
                seg *s = &p->segs[c][st][si];
                for (int b = 0; b < s->nqb; b++) dv->qref[c][s->qb0 + b] = (blockref){s, b};
                for (int b = 0; b < s->nkb; b++) dv->kref[c][s->kb0 + b] = (blockref){s, b};
            }
    }
}

/* ---- geometry and workspaces -------------------------------------------------------------------- */

typedef struct geom {
    int B, H, T, Dh;
    int64_t s3, C;                   /* row stride of qkv (3C) and of the output (C) */
    const float *q, *k, *v;          /* columns 0, C, 2C of qkv, row 0 */
    float *dq, *dk, *dv;             /* the same columns of qkv's gradient */
    const float *o, *dout;
    float *lse;                      /* [B, H, T] base 2 */
    const uint8_t *keep;             /* [B, T] or NULL */
    int alibi;                       /* ALiBi biases by the positions of queries and keys */
    float scale;
    attn_dropout drop;
    const plan *pl;
    const derived *der;
    int backward;                    /* what the packed blocks hold (see ws) */
} geom;

static int cls_of(const geom *g, int64_t bh) { return g->pl->n_classes == 2 ? (int)(bh % g->H) % 2 : 0; }

/* Packed blocks are made just in time, in two small direct-mapped caches per thread (NSLOT blocks
 * each, keyed by head and block): a query block (Q times scale log2(e); backward also dO, D = dO . O
 * and L) and a key block (K^T and the rows of V; backward K^T, V^T and the rows of K), padding
 * rows and columns zero. Work items are handed out in runs of neighbouring blocks, so a block is
 * packed about once and used while it is still in cache; nothing of size T x D is packed ahead. A
 * block that falls out is packed again, to the same values, so what a thread computes never
 * depends on what its cache held. */
#define NSLOT 8
#define RUN 8                        /* work items (neighbouring blocks) handed out at a time */

typedef struct ws {
    attn_bufs b;                     /* the block-pair buffers */
    uint64_t *vis;                   /* [BQ] visible keys of each row in the current key block */
    int *kpos;                       /* [BK] positions of the current key block */
    float *cq, *cdo, *cdd, *cls;     /* query-block cache: [NSLOT] x [BQ, Dh], [BQ, Dh], [BQ], [BQ] */
    float *ckt, *cvt, *ckr;          /* key-block cache: [NSLOT] x [Dh, BK], [Dh, BK], [BK, Dh] */
    int64_t *qtag, *ktag;            /* [NSLOT] the block each slot holds, -1: none */
} ws;

/* one thread's workspace carved from base, its caches empty (base NULL: only counted); returns
 * its size in floats */
static size_t ws_layout(ws *w, float *base, int dh, int acc_rows) {
    ws_carver c = {base, 0};
    size_t qd = up16((size_t)BQ * dh), q1 = up16(BQ), kd = up16((size_t)BK * dh);
    attn_bufs_take(&c, &w->b, dh, acc_rows);
    w->vis = ws_take(&c, 2 * BQ);    /* 8-byte entries: 2 floats each */
    w->kpos = ws_take(&c, BK);
    w->cq = ws_take(&c, NSLOT * qd);
    w->cdo = ws_take(&c, NSLOT * qd);
    w->cdd = ws_take(&c, NSLOT * q1);
    w->cls = ws_take(&c, NSLOT * q1);
    w->ckt = ws_take(&c, NSLOT * kd);
    w->cvt = ws_take(&c, NSLOT * kd);
    w->ckr = ws_take(&c, NSLOT * kd);
    w->qtag = ws_take(&c, 2 * NSLOT);
    w->ktag = ws_take(&c, 2 * NSLOT);
    if (base)
        for (int i = 0; i < NSLOT; i++) w->qtag[i] = w->ktag[i] = -1;
    return c.floats;
}

static size_t ws_floats(int dh, int acc_rows) {
    ws w;
    return ws_layout(&w, NULL, dh, acc_rows);
}

/* ---- packing ------------------------------------------------------------------------------------ */

/* the pointers of a cached query block / key block */
typedef struct qblock { const float *qs, *dos, *dd, *ls; } qblock;
typedef struct kblock { const float *kt, *vt, *rows; } kblock;

/* query block qb of segment s of head bh, packed into its slot if it is not there */
static qblock get_q(const geom *g, ws *w, int64_t bh, const seg *s, int qb) {
    int dh = g->Dh;
    int64_t key = bh * g->pl->head_qblocks + s->qb0 + qb;
    int slot = (int)(key % NSLOT);
    size_t qd = up16((size_t)BQ * dh), q1 = up16(BQ);
    float *qs = w->cq + slot * qd, *dos = w->cdo + slot * qd, *dd = w->cdd + slot * q1, *ls = w->cls + slot * q1;
    qblock r = {qs, dos, dd, ls};
    if (w->qtag[slot] == key) return r;
    w->qtag[slot] = key;
    int b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = qb * BQ, nq = blen(s->q.n, q0, BQ);
    memset(qs, 0, sizeof(float) * BQ * dh);
    for (int i = 0; i < nq; i++) {
        int64_t row = (int64_t)b * g->T + pl_pos(&s->q, q0 + i);
        pack_q_row(qs + (int64_t)i * dh, g->q + row * g->s3 + (int64_t)h * dh, dh, g->scale);
    }
    if (!g->backward) return r;
    memset(dos, 0, sizeof(float) * BQ * dh);
    memset(dd, 0, sizeof(float) * BQ);
    memset(ls, 0, sizeof(float) * BQ);
    for (int i = 0; i < nq; i++) {
        int p = pl_pos(&s->q, q0 + i);
        int64_t at = ((int64_t)b * g->T + p) * g->C + (int64_t)h * dh;
        dd[i] = pack_do_row(dos + (int64_t)i * dh, g->dout + at, g->o + at, dh);
        ls[i] = g->lse[bh * g->T + p];
    }
    return r;
}

/* key block kb of segment s of head bh, packed into its slot if it is not there */
static kblock get_k(const geom *g, ws *w, int64_t bh, const seg *s, int kb) {
    int dh = g->Dh;
    int64_t key = bh * g->pl->head_kblocks + s->kb0 + kb;
    int slot = (int)(key % NSLOT);
    size_t kd = up16((size_t)BK * dh);
    float *kt = w->ckt + slot * kd, *vt = w->cvt + slot * kd, *rows = w->ckr + slot * kd;
    kblock r = {kt, vt, rows};
    if (w->ktag[slot] == key) return r;
    w->ktag[slot] = key;
    int b = (int)(bh / g->H), h = (int)(bh % g->H), k0 = kb * BK, nk = blen(s->k.n, k0, BK);
    zero_pad_cols(kt, nk, dh);
    if (g->backward) zero_pad_cols(vt, nk, dh);
    for (int j = 0; j < nk; j++) {
        int64_t row = ((int64_t)b * g->T + pl_pos(&s->k, k0 + j)) * g->s3 + (int64_t)h * dh;
        const float *kr = g->k + row, *vr = g->v + row;
        pack_t_col(kt, j, kr, dh);
        if (g->backward) pack_t_col(vt, j, vr, dh);
        memcpy(rows + (int64_t)j * dh, g->backward ? kr : vr, sizeof(float) * dh);
    }
    return r;
}

/* ---- visibility ----------------------------------------------------------------------------------- */

/* bits [lo - k0, hi - k0] of a block of nk keys at index k0 */
static uint64_t range_bits(int lo, int hi, int k0, int nk) {
    int a = lo - k0, b = hi - k0;
    if (a < 0) a = 0;
    if (b > nk - 1) b = nk - 1;
    if (a > b) return 0;
    return low_bits(b + 1) & ~low_bits(a);
}

/* w->vis[i] for the rows [q0, q0 + nq) of segment s against key block kb, and w->kpos; returns
 * whether any row sees any key */
static int block_vis(const geom *g, ws *w, const seg *s, int b, int q0, int nq, int kb) {
    int k0 = kb * BK, nk = blen(s->k.n, k0, BK);
    uint64_t keep = low_bits(nk), any = 0;
    for (int j = 0; j < nk; j++) {
        w->kpos[j] = pl_pos(&s->k, k0 + j);
        if (g->keep && !g->keep[(int64_t)b * g->T + w->kpos[j]]) keep &= ~(1ull << j);
    }
    for (int i = 0; i < nq; i++) {
        int r = q0 + i;
        uint64_t v = (range_bits(s->lo1[r], s->hi1[r], k0, nk) | range_bits(s->lo2[r], s->hi2[r], k0, nk)) & keep;
        w->vis[i] = v;
        any |= v;
    }
    return any != 0;
}

/* z[j] = 1/(1-p) when element (bh, qi, kpos[j]) is kept, else 0 */
static void dropout_row(const geom *g, const ws *w, int64_t bh, int qi, int nk) {
    uint64_t base = (uint64_t)((bh * g->T + qi) * g->T), thr = dropout_threshold(g->drop.p);
    for (int j = 0; j < BK; j++)
        w->b.z[j] = j < nk && dropout_keeps(g->drop.key, (base + (uint64_t)w->kpos[j]) * DROP_IDX_MUL, thr)
                        ? g->drop.inv_keep : 0.0f;
}

/* ---- forward -------------------------------------------------------------------------------------- */

/* the ALiBi biases of head h on rows [0, nq) of the score block (query list entries q0.., the
 * keys at w->kpos) */
static void alibi_block(const geom *g, ws *w, int h, const seg *s, int q0, int nq) {
    float slope2 = cf_alibi_slope(h, g->H) * LOG2E;
    for (int i = 0; i < nq; i++) alibi_row_at(w->b.p + (int64_t)i * BK, pl_pos(&s->q, q0 + i), w->kpos, slope2);
}

/* fold the score block in w->b.p into the running max and sum, rows seeing w->vis */
static void fwd_softmax_block(const geom *g, ws *w, int64_t bh, const seg *s, int q0, int nq, int rows, int nk) {
    for (int i = 0; i < nq; i++) online_max_row(&w->b, i, w->vis[i]);
    online_alpha(&w->b, nq, rows);
    for (int i = 0; i < nq; i++) {
        if (w->vis[i] && g->drop.on) dropout_row(g, w, bh, pl_pos(&s->q, q0 + i), nk);
        online_fold_row(&w->b, i, w->vis[i], g->drop.on ? w->b.z : NULL);
    }
    zero_pad_rows(w->b.p, nq, rows);
}

/* query block qb of segment s (packed block blk) of head bh: output rows and L (-inf: no key) */
static void fwd_block(const geom *g, ws *w, int64_t bh, int64_t blk, float *out, float *lse) {
    blockref br = g->der->qref[cls_of(g, bh)][blk];
    const seg *s = br.s;
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = br.b * BQ, nq = blen(s->q.n, q0, BQ);
    int rows = round4(nq);
    const float *qs = get_q(g, w, bh, s, br.b).qs;
    online_start(&w->b, nq, rows, dh);
    for (int kb = s->kb_lo[br.b]; kb <= s->kb_hi[br.b]; kb++) {
        if (!block_vis(g, w, s, b, q0, nq, kb)) continue;
        int nk = blen(s->k.n, kb * BK, BK);
        kblock k = get_k(g, w, bh, s, kb);
        nt_block(rows, dh, qs, dh, k.kt, w->b.p);
        if (g->alibi) alibi_block(g, w, h, s, q0, nq);
        fwd_softmax_block(g, w, bh, s, q0, nq, rows, nk);
        cf_block_gemm(rows, dh, w->b.p, BK, 1, nk, k.rows, dh, w->b.acc, dh, w->b.alpha);
    }
    for (int i = 0; i < nq; i++) {
        int p = pl_pos(&s->q, q0 + i);
        float *o = out + ((int64_t)b * g->T + p) * g->C + (int64_t)h * dh;
        lse[bh * g->T + p] = out_row(o, w->b.acc + (int64_t)i * dh, dh, w->b.m[i], w->b.l[i], -INFINITY);
    }
}

/* merge stage 1 (o2, l2) into stage 0 (out, lse): two disjoint partitions of one softmax */
static void merge_stage(const geom *g, float *out, float *lse, const float *o2, const float *l2) {
    int64_t n = (int64_t)g->B * g->T * g->H;
    #pragma omp for schedule(static)
    for (int64_t x = 0; x < n; x++) {
        int64_t row = x / g->H, h = x % g->H, b = row / g->T, t = row % g->T;
        int64_t li = (b * g->H + h) * g->T + t, at = row * g->C + h * g->Dh;
        float L1 = lse[li], L2 = l2[li];
        if (L2 == -INFINITY) continue;
        float *o = out + at;
        const float *p = o2 + at;
        if (L1 == -INFINITY) {
            memcpy(o, p, sizeof(float) * g->Dh);
            lse[li] = L2;
            continue;
        }
        float M = fmaxf(L1, L2), a1 = exp2f(L1 - M), a2 = exp2f(L2 - M), s = a1 + a2;
        float w1 = a1 / s, w2 = a2 / s;
        for (int d = 0; d < g->Dh; d++) o[d] = w1 * o[d] + w2 * p[d];
        lse[li] = M + log2f(s);
    }
}

/* ---- backward ------------------------------------------------------------------------------------- */

/* one (query block, key block) pair, w->vis and w->kpos already set: recompute P, form dS, add
 * P'^T dO and dS^T (scale Q) into the dV and dK accumulators (want_kv) and dS K into dqacc */
static void bwd_pair(const geom *g, ws *w, int64_t bh, const seg *s, int qb, int kb, int want_kv, float *dqacc) {
    int dh = g->Dh, q0 = qb * BQ, nq = blen(s->q.n, q0, BQ), rows = round4(nq), nk = blen(s->k.n, kb * BK, BK);
    qblock qc = get_q(g, w, bh, s, qb);
    kblock k = get_k(g, w, bh, s, kb);
    const float *qs = qc.qs, *dos = qc.dos, *lse = qc.ls, *dd = qc.dd;
    nt_block(rows, dh, qs, dh, k.kt, w->b.p);
    nt_block(rows, dh, dos, dh, k.vt, w->b.ds);
    if (g->alibi) alibi_block(g, w, (int)(bh % g->H), s, q0, nq);
    for (int i = 0; i < nq; i++) {
        if (w->vis[i] && g->drop.on) dropout_row(g, w, bh, pl_pos(&s->q, q0 + i), nk);
        ds_row(w->b.p + (int64_t)i * BK, w->b.ds + (int64_t)i * BK, w->vis[i], lse[i], dd[i],
               g->drop.on ? w->b.z : NULL);
    }
    bwd_pair_products(&w->b, nq, rows, nk, dh, qs, dos, k.rows, want_kv, dqacc);
}

/* grad rows at the positions of list entries [i0, i0 + n) of head h += s * acc */
static void add_rows(const geom *g, float *grad, int b, const plist *pl, int i0, int n, int h, const float *acc, float s) {
    for (int i = 0; i < n; i++) {
        float *gr = grad + ((int64_t)b * g->T + pl_pos(pl, i0 + i)) * g->s3 + (int64_t)h * g->Dh;
        const float *a = acc + (int64_t)i * g->Dh;
        for (int d = 0; d < g->Dh; d++) gr[d] += s * a[d];
    }
}

/* dK, dV of key block kb of segment s: the sum over its query blocks in ascending order; with
 * dqring (the per-segment driver), dS K goes on the way into the dQ of query block qb, slot
 * qb mod s->ring of the ring */
static void bwd_kv_block(const geom *g, ws *w, int64_t bh, const seg *s, int kb, float *dqring) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), nk = blen(s->k.n, kb * BK, BK);
    memset(w->b.dkacc, 0, (size_t)BK * dh * sizeof(float));
    memset(w->b.dvacc, 0, (size_t)BK * dh * sizeof(float));
    for (int qb = s->qb_lo[kb]; qb <= s->qb_hi[kb]; qb++) {
        if (kb < s->kb_lo[qb] || kb > s->kb_hi[qb]) continue;
        int q0 = qb * BQ;
        if (!block_vis(g, w, s, b, q0, blen(s->q.n, q0, BQ), kb)) continue;
        bwd_pair(g, w, bh, s, qb, kb, 1, dqring ? dqring + (int64_t)(qb % s->ring) * BQ * dh : NULL);
    }
    add_rows(g, g->dk, b, &s->k, kb * BK, nk, h, w->b.dkacc, 1.0f / LOG2E);
    add_rows(g, g->dv, b, &s->k, kb * BK, nk, h, w->b.dvacc, 1.0f);
}

/* dQ of query block qb of segment s: the sum over its key blocks in ascending order */
static void bwd_q_block(const geom *g, ws *w, int64_t bh, const seg *s, int qb) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = qb * BQ, nq = blen(s->q.n, q0, BQ);
    memset(w->b.acc, 0, (size_t)round4(nq) * dh * sizeof(float));
    for (int kb = s->kb_lo[qb]; kb <= s->kb_hi[qb]; kb++) {
        if (!block_vis(g, w, s, b, q0, nq, kb)) continue;
        bwd_pair(g, w, bh, s, qb, kb, 0, w->b.acc);
    }
    add_rows(g, g->dq, b, &s->q, q0, nq, h, w->b.acc, g->scale);
}

/* ---- drivers -------------------------------------------------------------------------------------- */

/* work items of one stage: (batch*head, index) pairs, the index a packed query block, key block
 * or segment of that head's class */
typedef struct items { int64_t n; int64_t *bh; int *idx; } items;

enum { IT_QBLOCKS, IT_KBLOCKS, IT_SEGS };

static items stage_items(cf_ctx *ctx, const geom *g, int st, int kind) {
    int64_t BH = (int64_t)g->B * g->H, n = 0;
    for (int64_t bh = 0; bh < BH; bh++) {
        int c = cls_of(g, bh);
        if (st >= g->pl->n_stages[c]) continue;
        n += kind == IT_QBLOCKS ? g->der->q0[c][st + 1] - g->der->q0[c][st]
           : kind == IT_KBLOCKS ? g->der->k0[c][st + 1] - g->der->k0[c][st] : g->pl->n_segs[c][st];
    }
    items it = {n, cf_scratch(ctx, (size_t)(n + 1) * sizeof(int64_t)), cf_scratch(ctx, (size_t)(n + 1) * sizeof(int))};
    int64_t k = 0;
    for (int64_t bh = 0; bh < BH; bh++) {
        int c = cls_of(g, bh);
        if (st >= g->pl->n_stages[c]) continue;
        int64_t lo = kind == IT_QBLOCKS ? g->der->q0[c][st] : kind == IT_KBLOCKS ? g->der->k0[c][st] : 0;
        int64_t hi = kind == IT_QBLOCKS ? g->der->q0[c][st + 1] : kind == IT_KBLOCKS ? g->der->k0[c][st + 1]
                                                                                    : g->pl->n_segs[c][st];
        for (int64_t i = lo; i < hi; i++, k++) { it.bh[k] = bh; it.idx[k] = (int)i; }
    }
    return it;
}

/* the team for the multiply-adds of a score product of one key block per query, B H T Dh BK */
static int team(const geom *g) {
    return team_size((double)g->B * g->H * g->T * g->Dh * BK, PAR_MIN_WORK);
}

static void build_plan(cf_ctx *ctx, plan *pl, derived *dv, const cf_attn_pattern *pat, int T, int causal) {
    memset(pl, 0, sizeof *pl);
    pl->T = T;
    if (pat->type == CF_ATTN_WINDOW) cf_window_plan(ctx, pl, pat, causal);
    else cf_sparse_plan(ctx, pl, pat, causal);
    prepare(ctx, pl, dv);
}

static geom geom_of(cf_tensor *qkv, int n_heads, float scale) {
    geom g;
    memset(&g, 0, sizeof g);
    g.B = qkv->shape[0];
    g.T = qkv->shape[1];
    g.H = n_heads;
    g.C = qkv->shape[2] / 3;
    g.s3 = 3 * g.C;
    g.Dh = (int)(g.C / n_heads);
    g.q = qkv->data;
    g.k = qkv->data + g.C;
    g.v = qkv->data + 2 * g.C;
    g.scale = scale != 0 ? scale : 1.0f / sqrtf((float)g.Dh);
    return g;
}

/* what the node keeps: L and everything needed to rebuild the plan */
typedef struct saved {
    float *lse;
    cf_attn_pattern pat;
    int H, causal, dropout, alibi;
    uint64_t key;
    float scale, p;
} saved;

static void check_pattern(const cf_attn_pattern *p) {
    CF_ASSERT(p->type == CF_ATTN_WINDOW || p->type == CF_ATTN_SPARSE_STRIDED || p->type == CF_ATTN_SPARSE_FIXED,
              "masked attention: type %s has no pattern", cf_attn_kind_name(p->type));
    if (p->type == CF_ATTN_WINDOW) {
        CF_ASSERT(p->window >= 0, "masked attention: window %d", p->window);
        return;
    }
    CF_ASSERT(p->stride >= 1, "masked attention: stride %d", p->stride);
    CF_ASSERT(p->type != CF_ATTN_SPARSE_FIXED || (p->c >= 1 && p->c <= p->stride),
              "masked attention: c %d with stride %d", p->c, p->stride);
    CF_ASSERT(p->split_heads || (p->parts >= 1 && p->parts <= 3), "masked attention: parts %d", p->parts);
}

cf_tensor *cf_masked_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, const cf_attn_pattern *pat,
                                   const cf_attn_opts *o) {
    static const cf_attn_opts defaults = {0};
    if (!o) o = &defaults;
    CF_ASSERT(qkv->ndim == 3 && n_heads > 0 && qkv->shape[2] % (3 * n_heads) == 0 && qkv->shape[1] > 0,
              "masked attention: qkv %s is not [B, T, 3*H*Dh] with H = %d", cf_shape_str(qkv), n_heads);
    CF_ASSERT(o->dropout >= 0 && o->dropout < 1, "masked attention: dropout %g outside [0, 1)", o->dropout);
    check_pattern(pat);
    geom g = geom_of(qkv, n_heads, o->scale);
    g.keep = o->key_keep;
    g.alibi = o->alibi != 0;
    g.drop = attn_dropout_draw(ctx, o->dropout);
    cf_tensor *out = cf_tensor_3d(ctx, g.B, g.T, (int)g.C);
    int record = cf_needs_grad(ctx, 1, &qkv);
    size_t lse_bytes = (size_t)g.B * g.H * g.T * sizeof(float);
    saved *sv = record ? cf_scratch(ctx, sizeof *sv) : NULL;
    float *lse = record ? cf_scratch(ctx, lse_bytes) : NULL;
    size_t mark = cf_arena_mark(&ctx->arena);
    g.lse = record ? lse : cf_scratch(ctx, lse_bytes);
    plan pl;
    derived dv;
    build_plan(ctx, &pl, &dv, pat, g.T, o->causal != 0);
    g.pl = &pl;
    g.der = &dv;
    int nt = team(&g), stages = pl.n_stages[0] > pl.n_stages[1] ? pl.n_stages[0] : pl.n_stages[1];
    size_t per = ws_floats(g.Dh, BQ), BH = (size_t)g.B * g.H;
    float *o2 = stages > 1 ? cf_scratch(ctx, (size_t)g.B * g.T * g.C * sizeof(float)) : NULL;
    float *l2 = stages > 1 ? cf_scratch(ctx, lse_bytes) : NULL;
    items it[PLAN_MAX_STAGES];
    for (int st = 0; st < stages; st++) it[st] = stage_items(ctx, &g, st, IT_QBLOCKS);
    float *base = team_ws(ctx, nt, per);
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        ws w;
        ws_layout(&w, thread_ws(base, per), g.Dh, BQ);
        unsigned csr = flush_subnormals_begin();
        for (int st = 0; st < stages; st++) {
            float *dst = st ? o2 : out->data, *ldst = st ? l2 : g.lse;
            /* dynamic, in runs of neighbouring query blocks that share key blocks (see ws); results
             * do not depend on who runs what */
            #pragma omp for schedule(dynamic, RUN)
            for (int64_t i = 0; i < it[st].n; i++) fwd_block(&g, &w, it[st].bh[i], it[st].idx[i], dst, ldst);
            if (st) merge_stage(&g, out->data, g.lse, o2, l2);
        }
        /* no visible key at all: L = +inf makes every recomputed P zero in backward */
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < (int64_t)BH * g.T; i++)
            if (g.lse[i] == -INFINITY) g.lse[i] = INFINITY;
        flush_subnormals_end(csr);
    }
    cf_arena_rewind(&ctx->arena, mark);
    cf_node *n = cf_record(ctx, CF_OP_MASKED_ATTENTION, out, 1, &qkv);
    if (n) {
        *sv = (saved){lse, *pat, n_heads, o->causal != 0, g.drop.on, g.alibi, g.drop.key, g.scale, g.drop.p};
        n->saved = sv;
        n->ptr = o->key_keep;
    }
    return out;
}

void cf_masked_attention_backward(cf_ctx *ctx, cf_node *n) {
    const saved *sv = n->saved;
    cf_tensor *qkv = n->in[0];
    geom g = geom_of(qkv, sv->H, sv->scale);
    g.keep = n->ptr;
    g.alibi = sv->alibi;
    g.drop = attn_dropout_saved(sv->dropout, sv->p, sv->key);
    g.lse = sv->lse;
    g.o = n->out->data;
    g.dout = n->out->grad;
    float *gq = cf_grad(ctx, qkv);
    g.dq = gq;
    g.dk = gq + g.C;
    g.dv = gq + 2 * g.C;
    size_t mark = cf_arena_mark(&ctx->arena);
    plan pl;
    derived dv;
    build_plan(ctx, &pl, &dv, &sv->pat, g.T, sv->causal);
    g.pl = &pl;
    g.der = &dv;
    int nt = team(&g), stages = pl.n_stages[0] > pl.n_stages[1] ? pl.n_stages[0] : pl.n_stages[1];
    g.backward = 1;
    items segs[PLAN_MAX_STAGES], kvs[PLAN_MAX_STAGES], qs[PLAN_MAX_STAGES];
    int per_seg[PLAN_MAX_STAGES], any_per_seg = 0;
    for (int st = 0; st < stages; st++) {
        segs[st] = stage_items(ctx, &g, st, IT_SEGS);
        per_seg[st] = use_per_item(segs[st].n, nt);
        any_per_seg |= per_seg[st];
        if (!per_seg[st]) {
            kvs[st] = stage_items(ctx, &g, st, IT_KBLOCKS);
            qs[st] = stage_items(ctx, &g, st, IT_QBLOCKS);
        }
    }
    int acc_rows = any_per_seg && dv.max_ring > 1 ? dv.max_ring * BQ : BQ;
    size_t per = ws_floats(g.Dh, acc_rows);
    float *base = team_ws(ctx, nt, per);
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        ws w;
        ws_layout(&w, thread_ws(base, per), g.Dh, acc_rows);
        unsigned csr = flush_subnormals_begin();
        for (int st = 0; st < stages; st++) {
            if (per_seg[st]) {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t i = 0; i < segs[st].n; i++) {
                    int64_t bh = segs[st].bh[i];
                    const seg *s = &pl.segs[cls_of(&g, bh)][st][segs[st].idx[i]];
                    int b = (int)(bh / g.H), h = (int)(bh % g.H), next = 0;
                    size_t blk = (size_t)BQ * g.Dh;
                    memset(w.b.acc, 0, (size_t)s->ring * blk * sizeof(float));
                    for (int kb = 0; kb <= s->nkb; kb++) {
                        if (kb < s->nkb) bwd_kv_block(&g, &w, bh, s, kb, w.b.acc);
                        /* query blocks the walk has passed are complete: into dQ, slot cleared */
                        for (; next < s->nqb && (kb == s->nkb || s->kb_hi[next] <= kb); next++) {
                            float *a = w.b.acc + (size_t)(next % s->ring) * blk;
                            add_rows(&g, g.dq, b, &s->q, next * BQ, blen(s->q.n, next * BQ, BQ), h, a, g.scale);
                            memset(a, 0, blk * sizeof(float));
                        }
                    }
                }
            } else {
                #pragma omp for schedule(dynamic, RUN)
                for (int64_t i = 0; i < kvs[st].n; i++) {
                    int64_t bh = kvs[st].bh[i];
                    blockref br = dv.kref[cls_of(&g, bh)][kvs[st].idx[i]];
                    bwd_kv_block(&g, &w, bh, br.s, br.b, NULL);
                }
                #pragma omp for schedule(dynamic, RUN)
                for (int64_t i = 0; i < qs[st].n; i++) {
                    int64_t bh = qs[st].bh[i];
                    blockref br = dv.qref[cls_of(&g, bh)][qs[st].idx[i]];
                    bwd_q_block(&g, &w, bh, br.s, br.b);
                }
            }
        }
        flush_subnormals_end(csr);
    }
    cf_arena_rewind(&ctx->arena, mark);
}

/* ---- the core of the pattern variants (window.c and sparse.c hold their rows) ----------------------- */

cf_attn_pattern cf_attn_pattern_of(const cf_attn_config *c, int layer) {
    cf_attn_pattern p = {.type = c->type, .window = c->window, .stride = c->stride, .c = c->c};
    if (c->combine == CF_COMBINE_HEADS) p.split_heads = 1;
    else if (c->combine == CF_COMBINE_MERGED) p.parts = 3;
    else p.parts = layer % 2 ? 2 : 1;                                     /* "alternate" */
    return p;
}

cf_tensor *cf_masked_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv) {
    cf_attn_pattern p = cf_attn_pattern_of(c->cfg, c->layer);
    cf_attn_opts o = cf_attn_call_opts(c);
    return cf_masked_attention_qkv(ctx, qkv, c->n_heads, &p, &o);
}
