/* Fused multi-head scaled-dot-product attention, flash-attention style (docs/attention.md section 2).
 *
 * Forward, per (batch, head, block of BQ queries): walk the key blocks of BK keys, compute the
 * score block S = scale Q K^T as a small register-tiled GEMM, and fold it into a running row max m,
 * row sum l and unnormalised output with the online softmax. Only the output O and the per-row
 * log-sum-exp L = m + log l [B, H, Tq] are kept; no T x T matrix ever exists.
 *
 * Backward recomputes P = exp(S - L) block by block, with D_i = dO_i . O_i:
 *   dV += P'^T dO,  dP' = dO V^T,  dP = dP' Z/(1-p),  dS = P (dP - D),  dQ = scale dS K,
 *   dK = scale dS^T Q.
 * Two drivers, chosen by how well the heads fill the threads (use_per_item):
 *   per head:   one thread owns a (batch, head) and accumulates its dQ, dK and dV alone
 *               (five block GEMMs per block pair);
 *   two passes: pass 1 over key blocks computes dK, dV; pass 2 over query blocks computes dQ
 *               (seven block GEMMs per pair, since S and dP are recomputed, but B*H*blocks items).
 * Both sum every gradient element over the other axis in ascending block order with the same
 * kernels and the same start values, so they give bitwise the same result: the output and all
 * gradients are independent of the thread count, and no reduction between threads is needed.
 *
 * Layout: row r of q, k or v starts at r * stride and head h is columns [h*Dh, (h+1)*Dh); the fused
 * qkv tensor [B, T, 3C] is read in place with stride 3C and column offsets 0, C, 2C, and its
 * gradient goes to the one qkv gradient buffer the same way.
 *
 * Dropout on P is inverted and counter-based: element (b, h, i, j) keeps with the uniform
 * cf_rng_uniform(key, ((b H + h) Tq + i) Tk + j) >= p, where key is drawn once per call, so
 * backward (and a checkpointed recomputation) regenerates exactly the forward's mask.
 *
 * Memory: besides O and L, a call takes from the arena, and gives back before it returns, packed
 * copies of Q, K^T and V (backward: Q, dO, D, K^T, V^T and K), O(T) each, plus one workspace per
 * thread (the per-head backward's holds that head's dQ, Tq x Dh). With AVX-512 the block kernels
 * are intrinsics; otherwise they are plain loops that gcc vectorises.
 *
 * Precision bf16 (ctx->bf16, Dh even): the operands of the products (S = Q K^T and O = P V; in
 * backward S again, dP' = dO V^T, dV, dK and dQ), that is Q, K, V, dO and the blocks of P' and
 * dS, are rounded to bfloat16 and the sums kept in fp32 (attn_bf16.h); the packed
 * copies then hold bf16 pairs instead of floats, Q unscaled (scale log2(e) multiplies the score
 * sums instead). The softmax statistics, P, dS, the output and the gradients stay fp32. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "cformer/ops.h"
#include "backward.h"
#include "../kernels/attn_geom.h"
#include "../kernels/attn_tiles.h"
#include "../kernels/attn_bf16.h"
#include "../kernels/gemm_bf16_internal.h"

typedef struct geom {
    int B, H, Tq, Tk, Dh;
    int nqb, nkb;                    /* query and key blocks per head */
    int64_t sq, sk, sv, so;          /* row strides of q, k, v and of the output (elements) */
    const float *q, *k, *v;          /* column 0 of head 0, row 0 */
    float *dq, *dk, *dv;             /* gradient buffers with the same layout; NULL: not needed */
    const float *o, *dout;           /* output and its gradient (backward) */
    float *lse;                      /* [B, H, Tq] */
    const uint8_t *keep;             /* [B, Tk] or NULL */
    int causal, off;                 /* off = Tk - Tq */
    int alibi;                       /* ALiBi biases (query i at key position i + off) */
    float scale;
    attn_dropout drop;
    int fresh;                       /* backward: dq, dk, dv are new buffers, written (=), not added to */
    /* Packed blocks of the heads [bh0, ...): of every head, once per call (arena, given back on
     * return; the two-pass backward), or of one head at a time in a thread's workspace, packed just
     * before its blocks are used (forward, per-head backward), so that they are still in that
     * core's cache. Padding rows of qs, dos, dd and padding columns of kt, vt are zero. */
    int64_t bh0;
    float *qs, *dos;                 /* [B*H, nqb*BQ, Dh] scale log2(e) Q, and dO (backward) */
    float *dd;                       /* [B*H, nqb*BQ] D = dO . O (backward) */
    float *kt, *vt;                  /* [B*H, nkb, Dh, BK] K^T and V^T (V^T backward) */
    float *rows;                     /* [B*H, nkb, BK, Dh] V (forward) or K (backward), rows of Dh */
    /* bf16: the kernel, and the packed operands instead of qs, dos, kt, vt and rows (NULL: fp32).
     * Every block is BQ Dh / 2 words (BQ = BK): rows of Dh / 2 pairs, or BQ / 2 pairs of rows. */
    const cf_attn_bf16_kernel *bk;
    uint32_t *q16, *do16;            /* [B*H, nqb, BQ, Dh/2] Q and dO (backward) rows */
    uint32_t *qp16, *dop16;          /* [B*H, nqb, BQ/2, Dh] Q and dO by pairs of rows (backward) */
    uint32_t *kt16, *vt16;           /* [B*H, nkb, Dh/2, BK] K^T and V^T (backward) */
    uint32_t *rows16;                /* [B*H, nkb, BK/2, Dh] V (forward) or K (backward) by pairs of rows */
} geom;

static void packed_take(ws_carver *c, geom *g, int64_t heads, int backward);

/* One thread's workspace: the block-pair buffers, with bf16 the block of bf16 pairs that P' or dS
 * is packed into (*pk), and with local the packed blocks of one head, into lg's pointers (lg is the
 * thread's copy of the geometry); carved from base (NULL: only counted); returns its size in
 * floats */
static size_t ws_layout(attn_bufs *w, uint32_t **pk, geom *lg, int local, int backward, float *base, int acc_rows) {
    ws_carver c = {base, 0};
    attn_bufs_take(&c, w, lg->Dh, acc_rows);
    *pk = lg->bk ? ws_take(&c, BQ * BK / 2) : NULL;
    if (local) packed_take(&c, lg, 1, backward);
    return c.floats;
}

static size_t ws_floats(const geom *g, int local, int backward, int acc_rows) {
    attn_bufs w;
    uint32_t *pk;
    geom lg = *g;
    return ws_layout(&w, &pk, &lg, local, backward, NULL, acc_rows);
}

/* ---- masks and packing ------------------------------------------------------------------------ */

/* bit j: key k0 + j exists and is not padding */
static uint64_t keep_bits(const geom *g, int b, int k0, int nk) {
    uint64_t bits = low_bits(nk);
    if (g->keep) {
        const uint8_t *kp = g->keep + (int64_t)b * g->Tk + k0;
        for (int j = 0; j < nk; j++)
            if (!kp[j]) bits &= ~(1ull << j);
    }
    return bits;
}

/* bits of the keys of the block at k0 that query qi may see */
static uint64_t row_bits(const geom *g, uint64_t keep, int qi, int k0) {
    if (!g->causal) return keep;
    int64_t lim = (int64_t)qi + g->off - k0;   /* the last visible column */
    if (lim < 0) return 0;
    if (lim >= BK - 1) return keep;
    return keep & low_bits((int)lim + 1);
}

/* does any query of [q0, q0 + nq) see any key of the block? (the same test in every driver) */
static int pair_live(const geom *g, uint64_t keep, int q0, int nq, int k0) {
    return keep && (!g->causal || (int64_t)k0 <= (int64_t)q0 + nq - 1 + g->off);
}

/* the causal trimming of the pair of the query block at q0 (nq rows) and the key block at k0 (nk
 * keys); the whole pair when not causal */
static pair_span span_of(const geom *g, int q0, int nq, int k0, int nk) {
    pair_span sp;
    for (int i = 0; i < BQ / 16; i++) {
        int last = 16 * i + 15 < nq ? 16 * i + 15 : nq - 1;
        int64_t see = g->causal ? (int64_t)q0 + last + g->off - k0 + 1 : nk;
        sp.keys[i] = 16 * i >= nq || see <= 0 ? 0 : see > nk ? nk : (int)see;
    }
    for (int j = 0; j < BK / 16; j++) {
        int64_t f = g->causal ? (int64_t)k0 + 16 * j - g->off - q0 : 0;
        sp.first[j] = f <= 0 ? 0 : f >= nq ? nq : (int)(f & ~1);
    }
    return sp;
}

/* the packed blocks of (b*H + h, block) */
static float *qblk(const geom *g, float *base, int64_t bh, int qb) {
    return base + ((bh - g->bh0) * g->nqb + qb) * (int64_t)BQ * g->Dh;
}
static float *kblk(const geom *g, float *base, int64_t bh, int kb) {
    return base + ((bh - g->bh0) * g->nkb + kb) * (int64_t)BK * g->Dh;
}
/* the same for bf16 pairs: block b of nb per head */
static uint32_t *blk16(const geom *g, uint32_t *base, int64_t bh, int b, int nb) {
    return base + ((bh - g->bh0) * nb + b) * (int64_t)BQ * g->Dh / 2;
}
/* D of the query block */
static float *ddblk(const geom *g, int64_t bh, int qb) { return g->dd + ((bh - g->bh0) * g->nqb + qb) * BQ; }

/* Carve the packed buffers of `heads` heads for forward or backward (backward) from c, into g's
 * pointers (counting only when c has no base). */
static void packed_take(ws_carver *c, geom *g, int64_t heads, int backward) {
    size_t q = (size_t)heads * g->nqb * BQ * g->Dh, k = (size_t)heads * g->nkb * BK * g->Dh;
    if (g->bk) {
        g->q16 = ws_take(c, q / 2);
        g->kt16 = ws_take(c, k / 2);
        g->rows16 = ws_take(c, k / 2);
        if (!backward) return;
        g->qp16 = ws_take(c, q / 2);
        g->do16 = ws_take(c, q / 2);
        g->dop16 = ws_take(c, q / 2);
        g->vt16 = ws_take(c, k / 2);
    } else {
        g->qs = ws_take(c, q);
        g->kt = ws_take(c, k);
        g->rows = ws_take(c, k);
        if (!backward) return;
        g->dos = ws_take(c, q);
        g->vt = ws_take(c, k);
    }
    g->dd = ws_take(c, (size_t)heads * g->nqb * BQ);
}

/* bf16: query block qb of head bh as rows and by pairs of rows (Q; with dO, dO and D too), padding
 * rows zero. D is the rounded dO times O, so that sum_j P_ij dS_ij stays zero as dP is formed from
 * the rounded dO. */
static void pack_q16(const geom *g, int64_t bh, int qb, int with_do) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = qb * BQ, nq = blen(g->Tq, q0, BQ);
    int64_t r0 = (int64_t)b * g->Tq + q0, c0 = (int64_t)h * dh, half = BQ * dh / 2;
    const float *q = g->q + r0 * g->sq + c0;
    uint32_t *rows = blk16(g, g->q16, bh, qb, g->nqb);
    g->bk->rows(q, g->sq, nq, dh, rows, dh / 2);
    memset(rows + (int64_t)nq * dh / 2, 0, (size_t)(half - (int64_t)nq * dh / 2) * sizeof(uint32_t));
    if (!with_do) return;
    const float *dout = g->dout + r0 * g->so + c0, *o = g->o + r0 * g->so + c0;
    g->bk->pairs(q, g->sq, BQ, nq, dh, blk16(g, g->qp16, bh, qb, g->nqb), dh);
    g->bk->pairs(dout, g->so, BQ, nq, dh, blk16(g, g->dop16, bh, qb, g->nqb), dh);
    rows = blk16(g, g->do16, bh, qb, g->nqb);
    g->bk->rows(dout, g->so, nq, dh, rows, dh / 2);
    memset(rows + (int64_t)nq * dh / 2, 0, (size_t)(half - (int64_t)nq * dh / 2) * sizeof(uint32_t));
    float *dd = ddblk(g, bh, qb);
    memset(dd, 0, sizeof(float) * BQ);
    for (int i = 0; i < nq; i++) {
        const uint32_t *pr = rows + (int64_t)i * dh / 2;
        const float *orow = o + i * g->so;
        float s = 0;
        for (int d = 0; d < dh / 2; d++) s += cf_bf16_float((uint16_t)pr[d]) * orow[2 * d] +
                                               cf_bf16_float((uint16_t)(pr[d] >> 16)) * orow[2 * d + 1];
        dd[i] = s;
    }
}

/* bf16: K^T or V^T of a key block, pairs of Dh per key: out[(d/2) BK + j], keys [n, BK) zero */
static void pack_t16(const geom *g, uint32_t *out, const float *x, int64_t stride, int n) {
    int dh2 = g->Dh / 2;
    uint32_t tmp[BK * dh2];
    g->bk->rows(x, stride, n, g->Dh, tmp, dh2);
    pack_t_block(out, tmp, dh2, n, dh2);
}

/* bf16: key block kb of head bh, K^T (and V^T backward) by pairs of Dh, and V (forward) or K
 * (backward) by pairs of rows */
static void pack_k16(const geom *g, int64_t bh, int kb, int backward) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), k0 = kb * BK, nk = blen(g->Tk, k0, BK);
    int64_t r0 = (int64_t)b * g->Tk + k0, c0 = (int64_t)h * dh;
    const float *k = g->k + r0 * g->sk + c0, *v = g->v + r0 * g->sv + c0;
    pack_t16(g, blk16(g, g->kt16, bh, kb, g->nkb), k, g->sk, nk);
    if (backward) pack_t16(g, blk16(g, g->vt16, bh, kb, g->nkb), v, g->sv, nk);
    g->bk->pairs(backward ? k : v, backward ? g->sk : g->sv, BK, nk, dh, blk16(g, g->rows16, bh, kb, g->nkb), dh);
}

/* query block qb of head bh: scale Q (and with dO, also dO and D), padding rows zero */
static void pack_q(const geom *g, int64_t bh, int qb, int with_do) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = qb * BQ, nq = blen(g->Tq, q0, BQ);
    int64_t r0 = (int64_t)b * g->Tq + q0;
    float *qs = qblk(g, g->qs, bh, qb);
    memset(qs, 0, sizeof(float) * BQ * dh);
    for (int i = 0; i < nq; i++)
        pack_q_row(qs + (int64_t)i * dh, g->q + (r0 + i) * g->sq + (int64_t)h * dh, dh, g->scale);
    if (!with_do) return;
    float *dos = qblk(g, g->dos, bh, qb), *dd = ddblk(g, bh, qb);
    memset(dos, 0, sizeof(float) * BQ * dh);
    memset(dd, 0, sizeof(float) * BQ);
    for (int i = 0; i < nq; i++) {
        int64_t at = (r0 + i) * g->so + (int64_t)h * dh;
        dd[i] = pack_do_row(dos + (int64_t)i * dh, g->dout + at, g->o + at, dh);
    }
}

/* Key block kb of head bh: K^T, and the rows the output-side product reads (forward V for P V;
 * backward V^T and K for dS K). Rows are copied even though the source rows could be read in
 * place: at a row stride of 3C or C floats (a multiple of 1 KB for C a multiple of 256) the 64 rows
 * of a block fall into a quarter of the L1 sets and evict each other between 4-row tiles; alone,
 * the 64 x 64 x 64 product ran at best about 15% slower at stride 768 than on contiguous rows. */
static void pack_k(const geom *g, int64_t bh, int kb, int backward) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), k0 = kb * BK, nk = blen(g->Tk, k0, BK);
    int64_t r0 = (int64_t)b * g->Tk + k0, c0 = (int64_t)h * dh;
    const float *k = g->k + r0 * g->sk + c0, *v = g->v + r0 * g->sv + c0, *src = backward ? k : v;
    int64_t stride = backward ? g->sk : g->sv;
    pack_t_block(kblk(g, g->kt, bh, kb), k, g->sk, nk, dh);
    if (backward) pack_t_block(kblk(g, g->vt, bh, kb), v, g->sv, nk, dh);
    float *dst = kblk(g, g->rows, bh, kb);
    for (int j = 0; j < nk; j++) memcpy(dst + (int64_t)j * dh, src + j * stride, sizeof(float) * dh);
}

/* query blocks [qa, qz) and key blocks [0, kz) of head bh, into g's buffers */
static void pack_head(const geom *g, int64_t bh, int qa, int qz, int kz, int backward) {
    for (int qb = qa; qb < qz; qb++) (g->bk ? pack_q16 : pack_q)(g, bh, qb, backward);
    for (int kb = 0; kb < kz; kb++) (g->bk ? pack_k16 : pack_k)(g, bh, kb, backward);
}

/* every block of every head, inside a parallel region (each item writes its own blocks) */
static void pack_all(const geom *g, int backward) {
    int64_t bh = (int64_t)g->B * g->H;
    void (*pq)(const geom *, int64_t, int, int) = g->bk ? pack_q16 : pack_q;
    void (*pk)(const geom *, int64_t, int, int) = g->bk ? pack_k16 : pack_k;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < bh * g->nqb; i++) pq(g, i / g->nqb, (int)(i % g->nqb), backward);
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < bh * g->nkb; i++) pk(g, i / g->nkb, (int)(i % g->nkb), backward);
}

/* z[j] = 1/(1-p) when element (bh, qi, k0 + j) is kept, else 0, with idx * DROP_IDX_MUL stepped
 * by addition (the same value modulo 2^64, one vector multiply fewer per element) */
static void dropout_row(const geom *g, float *z, int64_t bh, int qi, int k0) {
    uint64_t idx = (uint64_t)((bh * g->Tq + qi) * g->Tk + k0), key = g->drop.key, h = idx * DROP_IDX_MUL;
    uint64_t thr = dropout_threshold(g->drop.p);
    float s = g->drop.inv_keep;
    for (int j = 0; j < BK; j++, h += DROP_IDX_MUL) z[j] = dropout_keeps(key, h, thr) ? s : 0.0f;
}

/* ---- forward --------------------------------------------------------------------------------- */

/* the ALiBi biases of head h on rows [0, nq) of the score block of queries q0.. and keys k0.. */
static void alibi_block(const geom *g, float *s, int h, int q0, int nq, int k0) {
    float slope2 = cf_alibi_slope(h, g->H) * LOG2E;
    for (int i = 0; i < nq; i++) alibi_row_run(s + (int64_t)i * BK, (int64_t)k0 - (q0 + i + g->off), slope2);
}

/* Fold the score block in w->p (rows [0, nq), in base-2 units) into each row's running max m and
 * sum l: w->alpha gets the factor by which the row's output accumulator must shrink, and w->p the
 * (dropped) probabilities 2^(s - m_new), padding rows zero. */
static void fwd_softmax_block(const geom *g, attn_bufs *w, int64_t bh, int q0, int nq, int rows, int k0,
                              uint64_t keep) {
    for (int i = 0; i < nq; i++) online_max_row(w, i, row_bits(g, keep, q0 + i, k0));
    online_alpha(w, nq, rows);
    for (int i = 0; i < nq; i++) {
        uint64_t vis = row_bits(g, keep, q0 + i, k0);
        if (vis && g->drop.on) dropout_row(g, w->z, bh, q0 + i, k0);
        online_fold_row(w, i, vis, g->drop.on ? w->z : NULL);
    }
    zero_pad_rows(w->p, nq, rows);
}

/* s[0..rows) x BK = the base-2 scores of query block qb against key block kb, and, when dp is not
 * NULL, dP' = dO V^T into dp; each group of 16 rows only up to the keys it sees (sp) */
static void scores(const geom *g, int64_t bh, int qb, int kb, int rows, const pair_span *sp, float *s, float *dp) {
    int dh = g->Dh;
    for (int i = 0; i < BQ / 16; i++) {
        int rn = group_rows(i, rows), cols = span_cols(sp->keys[i]);
        if (!rn || !cols) continue;
        int64_t r0 = 16 * i;
        if (g->bk) {
            const uint32_t *q = blk16(g, g->q16, bh, qb, g->nqb) + r0 * dh / 2;
            g->bk->gemm(rn, cols, q, dh / 2, 1, dh / 2, blk16(g, g->kt16, bh, kb, g->nkb), BK, s + r0 * BK, BK, NULL,
                        g->scale * LOG2E);
            if (dp)
                g->bk->gemm(rn, cols, blk16(g, g->do16, bh, qb, g->nqb) + r0 * dh / 2, dh / 2, 1, dh / 2,
                            blk16(g, g->vt16, bh, kb, g->nkb), BK, dp + r0 * BK, BK, NULL, 1.0f);
        } else {
            nt_block_cols(rn, cols, dh, qblk(g, g->qs, bh, qb) + r0 * dh, dh, kblk(g, g->kt, bh, kb), s + r0 * BK);
            if (dp) nt_block_cols(rn, cols, dh, qblk(g, g->dos, bh, qb) + r0 * dh, dh, kblk(g, g->vt, bh, kb), dp + r0 * BK);
        }
    }
}

/* bf16: acc[0..rows) x Dh = cs acc + X Y, X the [rows, BK] block x (P or dS) by pairs of keys and
 * Y the rows of the key block (V forward, K backward), each group of 16 rows only up to the keys
 * it sees (sp); a group that sees none keeps its acc, its cs being 1 */
static void rows_product16(const geom *g, uint32_t *pk, const float *x, int rows, int64_t bh, int kb,
                           const pair_span *sp, float *acc, const float *cs) {
    int dh = g->Dh;
    g->bk->rows(x, BK, rows, BK, pk, BK / 2);
    for (int i = 0; i < BQ / 16; i++) {
        int rn = group_rows(i, rows);
        if (rn && sp->keys[i])
            g->bk->gemm(rn, dh, pk + 16 * i * BK / 2, BK / 2, 1, (sp->keys[i] + 1) / 2, blk16(g, g->rows16, bh, kb, g->nkb),
                        dh, acc + 16 * i * dh, dh, cs ? cs + 16 * i : NULL, 0.0f);
    }
}

static void fwd_block(const geom *g, attn_bufs *w, uint32_t *pk, int64_t bh, int qb, float *out) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = qb * BQ, nq = blen(g->Tq, q0, BQ);
    int rows = round4(nq);
    online_start(w, nq, rows, dh);
    for (int kb = 0; kb < g->nkb; kb++) {
        int k0 = kb * BK, nk = blen(g->Tk, k0, BK);
        uint64_t keep = keep_bits(g, b, k0, nk);
        if (!pair_live(g, keep, q0, nq, k0)) continue;
        pair_span sp = span_of(g, q0, nq, k0, nk);
        scores(g, bh, qb, kb, rows, &sp, w->p, NULL);
        if (g->alibi) alibi_block(g, w->p, h, q0, nq, k0);
        fwd_softmax_block(g, w, bh, q0, nq, rows, k0, keep);
        if (g->bk) {
            rows_product16(g, pk, w->p, rows, bh, kb, &sp, w->acc, w->alpha);
            continue;
        }
        /* a group that sees no key of the block has alpha 1: its acc stays as it is */
        for (int i = 0; i < BQ / 16; i++) {
            int rn = group_rows(i, rows);
            if (rn && sp.keys[i])
                cf_block_gemm(rn, dh, w->p + 16 * i * BK, BK, 1, sp.keys[i], kblk(g, g->rows, bh, kb), dh,
                              w->acc + 16 * i * dh, dh, w->alpha + 16 * i);
        }
    }
    /* a row with no visible key gets L = inf, which makes every recomputed P zero */
    for (int i = 0; i < nq; i++)
        g->lse[bh * g->Tq + q0 + i] = out_row(out + ((int64_t)b * g->Tq + q0 + i) * g->so + (int64_t)h * dh,
                                              w->acc + (int64_t)i * dh, dh, w->m[i], w->l[i], INFINITY);
}

/* ---- backward -------------------------------------------------------------------------------- */

/* One (query block, key block) pair: recompute P, form dS, and add P'^T dO and dS^T (scale Q)
 * into the dV and dK accumulators (want_kv) and dS K into dqacc (when not NULL). */
/* bf16: bwd_pair_products on bf16 operands, P' and dS packed into pk one after the other */
static void bwd_products16(const geom *g, attn_bufs *w, uint32_t *pk, int64_t bh, int qb, int kb, int nq, int nk,
                           const pair_span *sp, int want_kv, float *dqacc) {
    int dh = g->Dh, rows = round4(nq);
    zero_pad_rows(w->p, nq, rows);
    zero_pad_rows(w->ds, nq, rows);
    if (want_kv) {
        int np = (nq + 1) / 2;
        for (int x = 0; x < 2; x++) {
            g->bk->pairs(x ? w->ds : w->p, BK, rows, rows, BK, pk, BK);
            const uint32_t *y = blk16(g, x ? g->qp16 : g->dop16, bh, qb, g->nqb);
            float *acc = x ? w->dkacc : w->dvacc;
            for (int j = 0; j < BK / 16; j++) {
                int kn = group_rows(j, round4(nk)), f = sp->first[j] / 2;
                if (kn && sp->first[j] < nq)
                    g->bk->gemm(kn, dh, pk + (int64_t)f * BK + 16 * j, 1, BK, np - f, y + (int64_t)f * dh, dh,
                                acc + 16 * j * dh, dh, NULL, 0.0f);
            }
        }
    }
    if (dqacc) rows_product16(g, pk, w->ds, rows, bh, kb, sp, dqacc, NULL);
}

static void bwd_pair(const geom *g, attn_bufs *w, uint32_t *pk, int64_t bh, int qb, int kb, uint64_t keep,
                     int want_kv, float *dqacc) {
    int dh = g->Dh;
    int q0 = qb * BQ, nq = blen(g->Tq, q0, BQ), rows = round4(nq), k0 = kb * BK, nk = blen(g->Tk, k0, BK);
    const float *lse = g->lse + bh * g->Tq + q0, *dd = ddblk(g, bh, qb);
    pair_span sp = span_of(g, q0, nq, k0, nk);
    scores(g, bh, qb, kb, rows, &sp, w->p, w->ds);
    if (g->alibi) alibi_block(g, w->p, (int)(bh % g->H), q0, nq, k0);
    for (int i = 0; i < nq; i++) {
        uint64_t vis = row_bits(g, keep, q0 + i, k0);
        if (vis && g->drop.on) dropout_row(g, w->z, bh, q0 + i, k0);
        ds_row(w->p + (int64_t)i * BK, w->ds + (int64_t)i * BK, vis, lse[i], dd[i], g->drop.on ? w->z : NULL);
    }
    if (g->bk) bwd_products16(g, w, pk, bh, qb, kb, nq, nk, &sp, want_kv, dqacc);
    else bwd_pair_products_span(w, nq, rows, nk, dh, qblk(g, g->qs, bh, qb), qblk(g, g->dos, bh, qb),
                                kblk(g, g->rows, bh, kb), want_kv, dqacc, &sp);
}

/* grad rows [r0, r0 + n) of head h += s * acc, or = s * acc when the gradient buffer is fresh
 * (g->fresh: every element is written exactly once, so it need not be zeroed first) */
static void add_rows(const geom *g, float *grad, int64_t stride, int64_t r0, int n, int h, const float *acc, float s) {
    int dh = g->Dh;
    for (int i = 0; i < n; i++) {
        float *gr = grad + (r0 + i) * stride + (int64_t)h * dh;
        const float *a = acc + (int64_t)i * dh;
        if (g->fresh)
            for (int d = 0; d < dh; d++) gr[d] = s * a[d];
        else
            for (int d = 0; d < dh; d++) gr[d] += s * a[d];
    }
}

/* the team for the multiply-adds of one of the matrix products, B H Tq Tk Dh */
static int team(const geom *g) {
    return team_size((double)g->B * g->H * g->Tq * g->Tk * g->Dh, PAR_MIN_WORK);
}

/* the key blocks [0, n) that query blocks [0, qz) may see */
static int key_blocks_seen(const geom *g, int qz) {
    if (!g->causal) return g->nkb;
    int64_t last = (int64_t)(qz * BQ < g->Tq ? qz * BQ : g->Tq) - 1 + g->off;   /* the last key seen */
    if (last < 0) return 0;
    int n = (int)(last / BK) + 1;
    return n < g->nkb ? n : g->nkb;
}

/* first query block whose rows may see key k0 (causal), else 0 */
static int first_qb(const geom *g, int k0) {
    if (!g->causal) return 0;
    int64_t i = (int64_t)k0 - g->off;
    return i <= 0 ? 0 : (int)(i / BQ);
}

/* dK, dV of key block kb: the sum over query blocks in ascending order; with dqacc_head (the
 * per-head driver), dS K goes into the head's dQ accumulator on the way */
static void bwd_kv_block(const geom *g, attn_bufs *w, uint32_t *pk, int64_t bh, int kb, int want_kv,
                         float *dqacc_head) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), k0 = kb * BK, nk = blen(g->Tk, k0, BK);
    uint64_t keep = keep_bits(g, b, k0, nk);
    if (want_kv) {
        memset(w->dkacc, 0, (size_t)BK * dh * sizeof(float));
        memset(w->dvacc, 0, (size_t)BK * dh * sizeof(float));
    }
    if (keep)
        for (int qb = first_qb(g, k0); qb < g->nqb; qb++) {
            int q0 = qb * BQ;
            if (!pair_live(g, keep, q0, blen(g->Tq, q0, BQ), k0)) continue;
            bwd_pair(g, w, pk, bh, qb, kb, keep, want_kv, dqacc_head ? dqacc_head + (int64_t)q0 * dh : NULL);
        }
    if (!want_kv) return;
    int64_t r0 = (int64_t)b * g->Tk + k0;
    /* dkacc sums dS against Q as packed: scale log2(e) Q in fp32, Q in bf16 */
    if (g->dk) add_rows(g, g->dk, g->sk, r0, nk, h, w->dkacc, g->bk ? g->scale : 1.0f / LOG2E);
    if (g->dv) add_rows(g, g->dv, g->sv, r0, nk, h, w->dvacc, 1.0f);
}

/* dQ of query block qb: the sum over key blocks in ascending order */
static void bwd_q_block(const geom *g, attn_bufs *w, uint32_t *pk, int64_t bh, int qb) {
    int dh = g->Dh, b = (int)(bh / g->H), h = (int)(bh % g->H), q0 = qb * BQ, nq = blen(g->Tq, q0, BQ);
    memset(w->acc, 0, (size_t)round4(nq) * dh * sizeof(float));
    for (int kb = 0; kb < g->nkb; kb++) {
        int k0 = kb * BK;
        uint64_t keep = keep_bits(g, b, k0, blen(g->Tk, k0, BK));
        if (!pair_live(g, keep, q0, nq, k0)) continue;
        bwd_pair(g, w, pk, bh, qb, kb, keep, 0, w->acc);
    }
    add_rows(g, g->dq, g->sq, (int64_t)b * g->Tq + q0, nq, h, w->acc, g->scale);
}

/* Per head (use_per_item): a thread packs a head's blocks into its workspace and sums the head's
 * dQ, dK and dV alone. Two passes: every head's blocks are packed first, since the threads share
 * them, then dK and dV over key blocks, dQ over query blocks. */
static void backward_run(cf_ctx *ctx, geom *g) {
    int nt = team(g), bh = g->B * g->H, per_head = use_per_item(bh, nt), kv = g->dk || g->dv;
    int acc_rows = per_head ? g->nqb * BQ : BQ;
    size_t per = ws_floats(g, per_head, 1, acc_rows), mark = cf_arena_mark(&ctx->arena);
    if (!per_head) {
        ws_carver c = {NULL, 0};
        packed_take(&c, g, bh, 1);
        c.base = cf_scratch(ctx, c.floats * sizeof(float));
        c.floats = 0;
        packed_take(&c, g, bh, 1);
    }
    float *base = team_ws(ctx, nt, per);
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        attn_bufs w;
        uint32_t *pk;
        geom lg = *g;
        ws_layout(&w, &pk, &lg, per_head, 1, thread_ws(base, per), acc_rows);
        unsigned csr = flush_subnormals_begin();
        if (g->bk && g->bk->begin) g->bk->begin();
        if (per_head) {
            /* dynamic: padding can make heads unequal; results do not depend on who runs what */
            #pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < bh; i++) {
                lg.bh0 = i;
                pack_head(&lg, i, 0, g->nqb, g->nkb, 1);
                float *dq = g->dq ? w.acc : NULL;
                if (dq) memset(dq, 0, (size_t)acc_rows * g->Dh * sizeof(float));
                for (int kb = 0; kb < g->nkb; kb++) bwd_kv_block(&lg, &w, pk, i, kb, kv, dq);
                if (dq) add_rows(g, g->dq, g->sq, (int64_t)(i / g->H) * g->Tq, g->Tq, i % g->H, dq, g->scale);
            }
        } else {
            pack_all(g, 1);
            if (kv) {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t i = 0; i < (int64_t)bh * g->nkb; i++) bwd_kv_block(g, &w, pk, i / g->nkb, (int)(i % g->nkb), 1, NULL);
            }
            if (g->dq) {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t i = 0; i < (int64_t)bh * g->nqb; i++) bwd_q_block(g, &w, pk, i / g->nqb, (int)(i % g->nqb));
            }
        }
        if (g->bk && g->bk->end) g->bk->end();
        flush_subnormals_end(csr);
    }
    cf_arena_rewind(&ctx->arena, mark);
}

/* ---- the op ---------------------------------------------------------------------------------- */

/* the geometry of inputs in[0..n_in) (q, k, v or one fused qkv) */
static geom geom_of(int n_in, cf_tensor **in, int n_heads, int causal, float scale) {
    geom g;
    memset(&g, 0, sizeof g);
    cf_tensor *q = in[0];
    g.B = q->shape[0];
    g.Tq = q->shape[1];
    g.H = n_heads;
    if (n_in == 1) {
        int c = q->shape[2] / 3;
        g.Tk = g.Tq;
        g.sq = g.sk = g.sv = 3 * (int64_t)c;
        g.q = q->data;
        g.k = q->data + c;
        g.v = q->data + 2 * c;
        g.so = c;
    } else {
        g.Tk = in[1]->shape[1];
        g.sq = g.sk = g.sv = g.so = q->shape[2];
        g.q = q->data;
        g.k = in[1]->data;
        g.v = in[2]->data;
    }
    g.Dh = (int)(g.so / n_heads);
    g.causal = causal;
    g.off = g.Tk - g.Tq;
    g.scale = scale != 0 ? scale : 1.0f / sqrtf((float)g.Dh);
    g.nqb = nblocks(g.Tq, BQ);
    g.nkb = nblocks(g.Tk, BK);
    return g;
}

/* what backward needs besides the inputs and the output */
static void record_attrs(cf_node *n, const geom *g, int n_heads, const void *key_keep, void *lse) {
    n->saved = lse;
    n->ptr = key_keep;
    n->iarg[0] = n_heads;
    n->iarg[1] = g->causal;
    n->iarg[2] = g->drop.on;
    n->iarg[3] = (int64_t)g->drop.key;
    n->iarg[4] = g->bk != NULL;
    n->iarg[5] = g->alibi;
    n->farg[0] = g->scale;
    n->farg[1] = g->drop.p;
}

static cf_tensor *attention(cf_ctx *ctx, int n_in, cf_tensor **in, int n_heads, const cf_attn_opts *o) {
    static const cf_attn_opts defaults = {0};
    if (!o) o = &defaults;
    CF_ASSERT(o->dropout >= 0 && o->dropout < 1, "attention: dropout %g outside [0, 1)", o->dropout);
    geom g = geom_of(n_in, in, n_heads, o->causal != 0, o->scale);
    g.keep = o->key_keep;
    g.alibi = o->alibi != 0;
    g.drop = attn_dropout_draw(ctx, o->dropout);
    g.bk = ctx->bf16 && g.Dh % 2 == 0 ? cf_attn_bf16() : NULL;
    size_t lse_bytes = (size_t)g.B * g.H * g.Tq * sizeof(float);
    float *kept;
    void *kept_lse;
    cf_tensor *out;
    if (cf_rc_action(ctx, &kept, &kept_lse) == CF_RC_KEPT) {
        /* a selective replay: the region's forward kept the output and its log-sum-exp */
        out = cf_tensor_view(ctx, kept, 3, (int[]){g.B, g.Tq, (int)g.so});
        cf_node *n = cf_record(ctx, CF_OP_ATTENTION, out, n_in, in);
        if (n) record_attrs(n, &g, n_heads, o->key_keep, kept_lse);
        return out;
    }
    out = cf_tensor_3d(ctx, g.B, g.Tq, (int)g.so);
    int record = cf_needs_grad(ctx, n_in, in), keep = record || cf_rc_keeping(ctx);
    float *lse = keep ? cf_scratch(ctx, lse_bytes) : NULL;
    size_t mark = cf_arena_mark(&ctx->arena);
    g.lse = keep ? lse : cf_scratch(ctx, lse_bytes);
    int nt = team(&g);
    size_t per = ws_floats(&g, 1, 0, BQ);
    int64_t bh = (int64_t)g.B * g.H;
    /* Work items: runs of query blocks of one head, about four per thread, each packing the blocks
     * it reads into its thread's workspace (key blocks that several runs of a head see are packed
     * by each). */
    int runs = bh >= 4 * nt ? 1 : (int)((4 * nt + bh - 1) / bh);
    if (runs > g.nqb) runs = g.nqb;
    int64_t items = bh * runs;
    float *base = team_ws(ctx, nt, per);
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        attn_bufs w;
        uint32_t *pk;
        geom lg = g;
        ws_layout(&w, &pk, &lg, 1, 0, thread_ws(base, per), BQ);
        unsigned csr = flush_subnormals_begin();
        if (g.bk && g.bk->begin) g.bk->begin();
        /* dynamic: causal query blocks differ in work; results do not depend on who runs what */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < items; i++) {
            int64_t hd = i / runs;
            int r = (int)(i % runs), qa = r * g.nqb / runs, qz = (r + 1) * g.nqb / runs;
            lg.bh0 = hd;
            pack_head(&lg, hd, qa, qz, key_blocks_seen(&g, qz), 0);
            for (int qb = qa; qb < qz; qb++) fwd_block(&lg, &w, pk, hd, qb, out->data);
        }
        if (g.bk && g.bk->end) g.bk->end();
        flush_subnormals_end(csr);
    }
    cf_arena_rewind(&ctx->arena, mark);
    cf_node *n = cf_record(ctx, CF_OP_ATTENTION, out, n_in, in);
    if (n) record_attrs(n, &g, n_heads, o->key_keep, lse);
    else if (keep) cf_rc_keep_saved(ctx, lse, lse_bytes);
    return out;
}

/* key_keep is borrowed: it must stay valid until backward has run */
cf_tensor *cf_attention(cf_ctx *ctx, cf_tensor *q, cf_tensor *k, cf_tensor *v, int n_heads, const cf_attn_opts *o) {
    CF_ASSERT(q->ndim == 3 && k->ndim == 3 && v->ndim == 3, "attention: q %s, k %s, v %s must be [B, T, H*Dh]",
              cf_shape_str(q), cf_shape_str(k), cf_shape_str(v));
    CF_ASSERT(k->shape[0] == q->shape[0] && v->shape[0] == q->shape[0] && k->shape[2] == q->shape[2] &&
              v->shape[2] == q->shape[2] && v->shape[1] == k->shape[1],
              "attention: q %s, k %s, v %s do not match", cf_shape_str(q), cf_shape_str(k), cf_shape_str(v));
    CF_ASSERT(n_heads > 0 && q->shape[2] % n_heads == 0 && q->shape[1] > 0 && k->shape[1] > 0,
              "attention: %d heads do not divide q %s", n_heads, cf_shape_str(q));
    return attention(ctx, 3, (cf_tensor *[]){q, k, v}, n_heads, o);
}

cf_tensor *cf_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, const cf_attn_opts *o) {
    CF_ASSERT(qkv->ndim == 3 && n_heads > 0 && qkv->shape[2] % (3 * n_heads) == 0 && qkv->shape[1] > 0,
              "attention_qkv: qkv %s is not [B, T, 3*H*Dh] with H = %d", cf_shape_str(qkv), n_heads);
    return attention(ctx, 1, &qkv, n_heads, o);
}

void cf_attention_backward(cf_ctx *ctx, cf_node *n) {
    geom g = geom_of(n->n_in, n->in, (int)n->iarg[0], (int)n->iarg[1], n->farg[0]);
    g.keep = n->ptr;
    g.drop = attn_dropout_saved((int)n->iarg[2], n->farg[1], (uint64_t)n->iarg[3]);
    g.bk = n->iarg[4] ? cf_attn_bf16() : NULL;
    g.alibi = (int)n->iarg[5];
    g.lse = n->saved;
    g.o = n->out->data;
    g.dout = n->out->grad;
    if (n->n_in == 1) {
        float *gq = cf_grad_nozero(ctx, n->in[0], &g.fresh);
        int64_t c = g.so;
        g.dq = gq;
        g.dk = gq + c;
        g.dv = gq + 2 * c;
    } else {
        /* the same tensor may be passed as two of q, k, v: cf_grad then hands out one buffer, and
         * the drivers never write one row of a head from two threads at once */
        if (n->in[0]->requires_grad) g.dq = cf_grad(ctx, n->in[0]);
        if (n->in[1]->requires_grad) g.dk = cf_grad(ctx, n->in[1]);
        if (n->in[2]->requires_grad) g.dv = cf_grad(ctx, n->in[2]);
    }
    backward_run(ctx, &g);
}
