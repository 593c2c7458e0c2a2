/* The pieces of the fused softmax attention kernels (src/ops/attention.c: full and causal;
 * src/attention/masked.c: window and sparse patterns), built around one 64 x 64 block pair: the
 * block sizes, the score block Q K^T, the online-softmax steps of the forward, the dS rows of the
 * backward, the packing of query rows and key blocks, dropout as integer compares, the per-thread
 * buffers and the choice of backward driver. The 16-lane 2^x is here too, and the Performer's and
 * Infini-attention's feature maps use it. Internal; every helper is static inline, since each runs
 * once per row or per block of the kernels' inner loops.
 *
 * Scores are kept in base 2: Q is packed times scale log2(e) (pack_q_row), so every exponential is
 * a 2^x with no extra multiply; L is saved in base 2 too, and dK, summed against that packed Q,
 * takes the factor ln 2 back when it is written out. */
#ifndef CF_KERNELS_ATTN_TILES_H
#define CF_KERNELS_ATTN_TILES_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef __SSE__
#include <xmmintrin.h>
#endif
#include "cformer/core.h"
#include "attn_geom.h"
#include "block_gemm.h"
#include "transpose16.h"

/* 64 x 64 blocks: the packed K^T block (Dh x 64 floats, 16 KB at Dh 64) stays in L1 while the score
 * tile is built, a 64-wide score row is four AVX-512 vectors, and the keys of a row that it may see
 * are one 64-bit word. The tiles below are written for BK = 64. BQ = 32 measured 3-6% slower in
 * both directions (n 2048, Dh 64, one thread): more passes over each K^T and V^T block. */
#define BQ 64                        /* query rows per block */
#define BK 64                        /* keys per block */
#define LOG2E 1.44269504088896341f

#ifdef __AVX512F__
/* 4 rows by nv vectors of a score block (see nt_block_cols); inlined with nv constant, so that the
 * 4 x nv accumulators stay in registers */
static inline __attribute__((always_inline)) void nt_tile(int nv, int dh, const float *a, int lda, const float *bt,
                                                          float *s) {
    __m512 c[4][4];
    for (int i = 0; i < 4; i++)
        for (int v = 0; v < nv; v++) c[i][v] = _mm512_setzero_ps();
    for (int d = 0; d < dh; d++) {
        const float *b = bt + (int64_t)d * BK;
        __m512 bv[4];
        for (int v = 0; v < nv; v++) bv[v] = _mm512_load_ps(b + 16 * v);
        for (int i = 0; i < 4; i++) {
            __m512 x = _mm512_set1_ps(a[(int64_t)i * lda + d]);
            for (int v = 0; v < nv; v++) c[i][v] = _mm512_fmadd_ps(x, bv[v], c[i][v]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int v = 0; v < nv; v++) _mm512_store_ps(s + (int64_t)i * BK + 16 * v, c[i][v]);
}
#endif

/* S[r][0..cols) = sum_d A[r*lda + d] Bt[d][0..cols) for r < rows (a multiple of 4), cols a multiple
 * of 16 up to BK; columns [cols, BK) of S are left as they were. Bt is a packed transposed block,
 * so a score row is built from broadcasts of A and vector loads of Bt: the 4 x 64 tile stays in 16
 * registers for the whole d loop. The causal kernels pass fewer columns for the rows left of the
 * diagonal, whose other scores are masked anyway. */
static inline void nt_block_cols(int rows, int cols, int dh, const float *a, int lda, const float *bt, float *s) {
#ifdef __AVX512F__
    for (int r = 0; r < rows; r += 4) {
        const float *ar = a + (int64_t)r * lda;
        float *sr = s + (int64_t)r * BK;
        switch (cols / 16) {
        case 1: nt_tile(1, dh, ar, lda, bt, sr); break;
        case 2: nt_tile(2, dh, ar, lda, bt, sr); break;
        case 3: nt_tile(3, dh, ar, lda, bt, sr); break;
        default: nt_tile(4, dh, ar, lda, bt, sr); break;
        }
    }
#else
    for (int r = 0; r < rows; r++) {
        float *sr = s + (int64_t)r * BK;
        for (int j = 0; j < cols; j++) sr[j] = 0;
        for (int d = 0; d < dh; d++) {
            float x = a[(int64_t)r * lda + d];
            const float *b = bt + (int64_t)d * BK;
            for (int j = 0; j < cols; j++) sr[j] += x * b[j];
        }
    }
#endif
}

/* the whole score block, S[r][0..BK) */
static inline void nt_block(int rows, int dh, const float *a, int lda, const float *bt, float *s) {
    nt_block_cols(rows, BK, dh, a, lda, bt, s);
}

#ifdef __AVX512F__
/* 2^t on 16 lanes: t = n + f with n = round(t) and |f| <= 1/2, 2^f by a degree-6 polynomial fitted
 * for relative error on [-1/2, 1/2] (about 1e-7 in float), times 2^n by vscalefps. Where n < -125
 * (t below about -125.5) the result is 0, not a subnormal: softmax weights of far keys (ALiBi's
 * distant positions put whole bands of them there) would otherwise reach the products as
 * subnormals, which Intel cores handle by microcode assists, each costing as much as a hundred
 * vector instructions; a weight below 2^-125 changes no sum it is added to. t must not be
 * infinite: callers mask or clamp. */
static inline __m512 exp2_16(__m512 t) {
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_set1_ps(1.5370706387e-4f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.3399848249e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.6183735877e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5503290147e-2f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022647738e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314718246e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
    __mmask16 normal = _mm512_cmp_ps_mask(n, _mm512_set1_ps(-125.0f), _CMP_GE_OQ);
    return _mm512_maskz_scalef_ps(normal, y, n);
}
#endif

/* 2^t in one float, 0 where exp2_16 gives 0 (below -125.5) */
static inline float exp2_flush(float t) { return t < -125.5f ? 0.0f : exp2f(t); }

/* ---- subnormals ----------------------------------------------------------------------------
 * Far from the diagonal a softmax weight can be tiny (ALiBi's distant keys put whole bands of them
 * near 2^-120), and its products with values and gradients (P V, dS = P (dP - D), dS K, dS^T Q)
 * are then subnormal. Intel cores handle every instruction that reads or writes a subnormal float
 * by a microcode assist: the ALiBi backward at seq 1024 took 4.7x its time with them. The fused
 * kernels therefore run with MXCSR's flush-to-zero and denormals-are-zero set, thread by thread
 * for the length of their parallel region, and restore the caller's mode after: a subnormal there
 * becomes 0, a change of less than 2^-126, below the rounding of any sum of normal size it would
 * have entered; results stay the same bits for any thread count, and bitwise equal to the IEEE
 * ones wherever no subnormal arises. */
static inline unsigned flush_subnormals_begin(void) {
#if defined(__SSE__)
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);   /* FTZ (bit 15) and DAZ (bit 6) */
    return csr;
#else
    return 0;
#endif
}

static inline void flush_subnormals_end(unsigned csr) {
#if defined(__SSE__)
    _mm_setcsr(csr);
#else
    (void)csr;
#endif
}

/* ---- per-thread buffers ------------------------------------------------------------------- */

/* One thread's buffers for the block pairs of a fused kernel. Every array starts on a 64-byte
 * boundary (the tiles load p, ds and z aligned). */
typedef struct attn_bufs {
    float *p, *ds;                   /* [BQ, BK] scores, then probabilities (dropped) and dS */
    float *z;                        /* [BK] dropout multipliers of one row */
    float *m, *mnew, *l, *alpha;     /* [BQ] running max, new max, running sum, rescaling factor */
    float *dkacc, *dvacc;            /* [BK, Dh] dK and dV of one key block */
    float *acc;                      /* [acc_rows, Dh]: output (forward) or dQ (backward) */
} attn_bufs;

/* carve the buffers for heads of dh columns (see ws_carver) */
static inline void attn_bufs_take(ws_carver *c, attn_bufs *w, int dh, int acc_rows) {
    w->p = ws_take(c, BQ * BK);
    w->ds = ws_take(c, BQ * BK);
    w->z = ws_take(c, BK);
    w->m = ws_take(c, BQ);
    w->mnew = ws_take(c, BQ);
    w->l = ws_take(c, BQ);
    w->alpha = ws_take(c, BQ);
    w->dkacc = ws_take(c, (size_t)BK * dh);
    w->dvacc = ws_take(c, (size_t)BK * dh);
    w->acc = ws_take(c, (size_t)acc_rows * dh);
}

/* zero rows [n, rows) of a [BQ, BK] block: the padding rows the 4-row tiles read */
static inline void zero_pad_rows(float *blk, int n, int rows) {
    memset(blk + (int64_t)n * BK, 0, (size_t)(rows - n) * BK * sizeof(float));
}

/* ---- packing ------------------------------------------------------------------------------
 * A query block is BQ rows of Dh (scale log2(e) Q, and for backward dO and D), a key block K^T
 * as Dh rows of BK (the Bt of nt_block) and the Dh-wide rows the output-side products read.
 * Padding rows and columns are zero. */

/* a query row: scale log2(e) q, so that its scores come out in base 2 */
static inline void pack_q_row(float *dst, const float *q, int dh, float scale) {
    for (int d = 0; d < dh; d++) dst[d] = scale * LOG2E * q[d];
}

/* a row of dO; returns D = dO . O, the row's constant in dS = P (dP - D) */
static inline float pack_do_row(float *dst, const float *dout, const float *o, int dh) {
    float s = 0;
    #pragma omp simd reduction(+ : s)
    for (int d = 0; d < dh; d++) s += dout[d] * o[d];
    memcpy(dst, dout, sizeof(float) * dh);
    return s;
}

/* column j of a transposed [dh, BK] block: row j of the source */
static inline void pack_t_col(float *blk, int j, const float *row, int dh) {
    for (int d = 0; d < dh; d++) blk[(int64_t)d * BK + j] = row[d];
}

/* dst[c*BK + r] = src[r*lds + c] for c < cols and r < BK, 32-bit elements (floats, or bf16 pairs),
 * rows r >= n read as zero: a block of BK rows transposed into the [cols, BK] layout of K^T and V^T.
 * With AVX-512, 16 x 16 pieces are transposed in registers, a scalar scatter otherwise. */
static inline void pack_t_block(void *dst, const void *src, int64_t lds, int n, int cols) {
    char *d8 = dst;
    const char *s8 = src;
    int c0 = 0;
#ifdef __AVX512F__
    for (; c0 + 16 <= cols; c0 += 16)
        for (int r0 = 0; r0 < BK; r0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = r0 + i < n ? _mm512_loadu_si512(s8 + 4 * ((int64_t)(r0 + i) * lds + c0)) : _mm512_setzero_si512();
            cf_transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_store_si512(d8 + 4 * ((int64_t)(c0 + i) * BK + r0), r[i]);
        }
#endif
    for (int c = c0; c < cols; c++)
        for (int r = 0; r < BK; r++) {
            if (r < n) memcpy(d8 + 4 * ((int64_t)c * BK + r), s8 + 4 * ((int64_t)r * lds + c), 4);
            else memset(d8 + 4 * ((int64_t)c * BK + r), 0, 4);
        }
}

/* zero the padding columns [n, BK) of a transposed [dh, BK] block */
static inline void zero_pad_cols(float *blk, int n, int dh) {
    if (n < BK)
        for (int d = 0; d < dh; d++) memset(blk + (int64_t)d * BK + n, 0, sizeof(float) * (BK - n));
}

/* ---- ALiBi ----------------------------------------------------------------------------------------
 * Press et al. 2022: the score of query position i and key position j gains -m |i - j| (m the
 * head's slope); the kernels add it to each score block as it is formed, forward and backward
 * alike, so no score matrix is kept. slope2 is m log2(e), as the scores are in base 2. Values of
 * keys a row does not see are changed too, harmlessly: the visibility bits mask them. */

/* a row whose keys sit at consecutive positions: key j at position qpos + d0 + j */
static inline void alibi_row_run(float *s, int64_t d0, float slope2) {
    #pragma omp simd
    for (int j = 0; j < BK; j++) s[j] -= slope2 * fabsf((float)(d0 + j));
}

/* a row at position qpos against keys at positions kpos[0..BK) */
static inline void alibi_row_at(float *s, int qpos, const int *kpos, float slope2) {
    #pragma omp simd
    for (int j = 0; j < BK; j++) s[j] -= slope2 * fabsf((float)kpos[j] - (float)qpos);
}

/* ---- visibility and dropout ------------------------------------------------------------------ */

/* the visibility word of keys [0, n) of a block, n <= 64: bit j says that key j may be seen */
static inline uint64_t low_bits(int n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

/* One call's attention dropout. The mask's key is drawn once per call, so backward (and a
 * checkpointed recomputation) regenerates exactly the forward's mask. */
typedef struct attn_dropout {
    int on;                          /* 1 when training with p > 0 */
    float p, inv_keep;               /* drop probability, 1 / (1 - p) */
    uint64_t key;
} attn_dropout;

/* the forward's: on when training with p > 0, the key then drawn from ctx's stream */
static inline attn_dropout attn_dropout_draw(cf_ctx *ctx, float p) {
    attn_dropout d = {0};
    d.on = ctx->training && p > 0;
    if (d.on) {
        d.p = p;
        d.inv_keep = 1.0f / (1.0f - p);
        d.key = cf_rng_key(ctx->seed, ctx->step, ctx->rng_calls++);
    }
    return d;
}

/* the backward's, from the on, p and key that the forward saved */
static inline attn_dropout attn_dropout_saved(int on, float p, uint64_t key) {
    attn_dropout d = {on, p, on ? 1.0f / (1.0f - p) : 0.0f, key};
    return d;
}

/* Dropout keeps element idx of an attention when cf_rng_uniform(key, idx) >= p. The kernels
 * compare the uniform's 24 bits as the integer they are: cf_mix64(key ^ idx * DROP_IDX_MUL) >> 40
 * against dropout_threshold(p), which keeps exactly the same elements without a conversion and
 * lets a row step idx * DROP_IDX_MUL by addition. */
#define DROP_IDX_MUL 0xd1b54a32d192ed03ull   /* cf_rng_uniform's index multiplier */

static inline uint64_t dropout_threshold(float p) { return (uint64_t)ceilf(p * 16777216.0f); }

/* is the element whose index times DROP_IDX_MUL is idx_mul kept? */
static inline int dropout_keeps(uint64_t key, uint64_t idx_mul, uint64_t thr) {
    return cf_mix64(key ^ idx_mul) >> 40 >= thr;
}

/* ---- forward: the online softmax over 64-key blocks ------------------------------------------
 * A query block walks its key blocks keeping, per row i, the running max m[i] and sum l[i] of
 * 2^(s - m) and an output accumulator scaled to m. Per key block, after nt_block has put the scores
 * in p: online_max_row for each row, online_alpha, online_fold_row for each row, then
 * cf_block_gemm(p, V) into acc with alpha as its row scales. After the last block, out_row. */

/* before the first key block: max -inf and sum 0 for rows [0, nq), and the output accumulator
 * zero, padding rows included */
static inline void online_start(attn_bufs *w, int nq, int rows, int dh) {
    for (int i = 0; i < nq; i++) { w->m[i] = -INFINITY; w->l[i] = 0; }
    memset(w->acc, 0, (size_t)rows * dh * sizeof(float));
}

/* the largest visible score of a row (bit j of vis; -inf when no key is visible; s 64-byte
 * aligned) */
static inline float masked_row_max(const float *s, uint64_t vis) {
    float mx = -INFINITY;
#ifdef __AVX512F__
    if (vis) {
        __m512 m4 = _mm512_set1_ps(-INFINITY);
        for (int v = 0; v < 4; v++)
            m4 = _mm512_mask_max_ps(m4, (__mmask16)(vis >> (16 * v)), m4, _mm512_load_ps(s + 16 * v));
        mx = _mm512_reduce_max_ps(m4);
    }
#else
    for (int j = 0; j < 64; j++)
        if ((vis >> j) & 1 && s[j] > mx) mx = s[j];
#endif
    return mx;
}

/* row i's new max, the keys of this block that it sees being bit j of vis */
static inline void online_max_row(attn_bufs *w, int i, uint64_t vis) {
    w->mnew[i] = fmaxf(w->m[i], masked_row_max(w->p + (int64_t)i * BK, vis));
}

/* The factor alpha[i] = 2^(m[i] - mnew[i]) by which row i's running sum and output shrink when
 * its maximum grows, for i < nq: 1 while no key is visible yet (mnew = -inf: the accumulator is
 * still zero anyway), and 1 for the padding rows [nq, rows), which the 4-row tiles scale too. All
 * the rows of a block in one vector pass, once their maxima are known. */
static inline void online_alpha(attn_bufs *w, int nq, int rows) {
    const float *m = w->m, *mnew = w->mnew;
    float *alpha = w->alpha;
    for (int i = nq; i < rows; i++) alpha[i] = 1.0f;
#ifdef __AVX512F__
    for (int i = 0; i < nq; i += 16) {
        __mmask16 live = (__mmask16)(nq - i >= 16 ? 0xFFFF : (1u << (nq - i)) - 1);
        __m512 mo = _mm512_maskz_loadu_ps(live, m + i), mn = _mm512_maskz_loadu_ps(live, mnew + i);
        __mmask16 empty = _mm512_cmp_ps_mask(mn, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
        __m512 t = _mm512_max_ps(_mm512_maskz_sub_ps((__mmask16)~empty, mo, mn), _mm512_set1_ps(-200.0f));
        _mm512_mask_storeu_ps(alpha + i, live, exp2_16(t));
    }
#else
    for (int i = 0; i < nq; i++) alpha[i] = mnew[i] == -INFINITY ? 1.0f : exp2_flush(m[i] - mnew[i]);
#endif
}

/* the probabilities of a row: s[j] = 2^(s[j] - m) on visible keys, 0 elsewhere, times the dropout
 * multipliers z[j] when z is not NULL; returns the sum before dropout (the softmax denominator's
 * share of this block) */
static inline float prob_row(float *s, uint64_t vis, float m, const float *z) {
#ifdef __AVX512F__
    __m512 mv = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    for (int v = 0; v < 4; v++) {
        __m512 pv = _mm512_maskz_mov_ps((__mmask16)(vis >> (16 * v)), exp2_16(_mm512_sub_ps(_mm512_load_ps(s + 16 * v), mv)));
        sum = _mm512_add_ps(sum, pv);
        if (z) pv = _mm512_mul_ps(pv, _mm512_load_ps(z + 16 * v));
        _mm512_store_ps(s + 16 * v, pv);
    }
    return _mm512_reduce_add_ps(sum);
#else
    float rowsum = 0;
    for (int j = 0; j < 64; j++) {
        float pj = (vis >> j) & 1 ? exp2_flush(s[j] - m) : 0.0f;
        rowsum += pj;
        s[j] = z ? pj * z[j] : pj;
    }
    return rowsum;
#endif
}

/* Row i of the block into probabilities (times z, the row's dropout multipliers, unless NULL;
 * zero when it sees no key, vis = 0), and its max and sum moved on to this block. */
static inline void online_fold_row(attn_bufs *w, int i, uint64_t vis, const float *z) {
    float *s = w->p + (int64_t)i * BK, m = w->mnew[i];
    w->m[i] = m;
    if (!vis) {
        memset(s, 0, BK * sizeof(float));
        w->l[i] *= w->alpha[i];
        return;
    }
    w->l[i] = w->l[i] * w->alpha[i] + prob_row(s, vis, m, z);
}

/* An output row, o = acc / l, after the last key block; returns the row's L = m + log2(l), or
 * `none` when the row saw no key (l = 0; o is then zero). */
static inline float out_row(float *o, const float *acc, int dh, float m, float l, float none) {
    if (l > 0) {
        float inv = 1.0f / l;
        for (int d = 0; d < dh; d++) o[d] = acc[d] * inv;
        return m + log2f(l);
    }
    memset(o, 0, (size_t)dh * sizeof(float));
    return none;
}

/* ---- backward ---------------------------------------------------------------------------------
 * Per block pair: nt_block recomputes S into p and dP' = dO V^T into ds, ds_row turns each row
 * into P' and dS, and bwd_pair_products adds them into dV, dK and dQ. */

/* One row of the attention backward over a 64-key block: P = 2^(S - L) on visible keys (bit j of
 * vis), then dS = P (dP - D), with the dropout mask z (NULL: none) applied as P' = P z and
 * dP = dP' z. On return s holds P' (for dV) and dp holds dS, both zero on the keys not visible
 * (whose s and dp need not be finite: the causal kernels leave them unset). */
static inline void ds_row(float *s, float *dp, uint64_t vis, float lse, float dd, const float *z) {
    if (!vis) {
        memset(s, 0, BK * sizeof(float));
        memset(dp, 0, BK * sizeof(float));
        return;
    }
#ifdef __AVX512F__
    __m512 lv = _mm512_set1_ps(lse), dv = _mm512_set1_ps(dd);
    for (int v = 0; v < 4; v++) {
        __m512 pv = _mm512_maskz_mov_ps((__mmask16)(vis >> (16 * v)),
                                        exp2_16(_mm512_sub_ps(_mm512_load_ps(s + 16 * v), lv)));
        __m512 gv = _mm512_load_ps(dp + 16 * v), pd = pv;
        if (z) {
            __m512 zv = _mm512_load_ps(z + 16 * v);
            pd = _mm512_mul_ps(pv, zv);
            gv = _mm512_mul_ps(gv, zv);
        }
        _mm512_store_ps(s + 16 * v, pd);
        _mm512_store_ps(dp + 16 * v, _mm512_maskz_mul_ps((__mmask16)(vis >> (16 * v)), pv, _mm512_sub_ps(gv, dv)));
    }
#else
    for (int j = 0; j < BK; j++) {
        float pj = (vis >> j) & 1 ? exp2_flush(s[j] - lse) : 0.0f, gj = dp[j], pd = pj;
        if (z) { pd = pj * z[j]; gj *= z[j]; }
        s[j] = pd;
        dp[j] = (vis >> j) & 1 ? pj * (gj - dd) : 0.0f;
    }
#endif
}

/* ---- causal trimming of a block pair ------------------------------------------------------------
 * A block pair that the causal diagonal crosses is worked in groups of 16 query rows and of 16
 * keys: query group i sees keys [0, keys[i]) of the block, and key group j is seen by query rows
 * [first[j], nq) only. The score tiles then stop at the diagonal (rounded up to 16 columns) and the
 * products skip the parts of P and dS above it, about 40% of a diagonal block; every term skipped
 * is an exact zero, so the sums are the same. A pair the diagonal does not cross has keys[i] = nk
 * for the groups with rows and first[j] = 0. */
typedef struct pair_span {
    int keys[BQ / 16];               /* keys of the block that query rows [16 i, 16 i + 16) may see */
    int first[BK / 16];              /* the first query row (even) that sees keys [16 j, 16 j + 16); nq: none */
} pair_span;

/* columns of the score tiles that cover `keys` keys */
static inline int span_cols(int keys) { return (keys + 15) & ~15; }

/* rows of query group i among rows (a multiple of 4): 16, fewer in the last group, 0 past it */
static inline int group_rows(int i, int rows) {
    int n = rows - 16 * i;
    return n < 0 ? 0 : n < 16 ? n : 16;
}

/* The products of a block pair once rows [0, nq) of P' (w->p) and dS (w->ds) are formed: with
 * want_kv, dV += P'^T dO and dK += dS^T (scale Q) into w->dvacc and w->dkacc; with dqacc,
 * dQ += dS K there. qs and dos are the query block (rows of Dh), krows the key block's K rows; sp
 * the parts of the pair that are not zero. */
static inline void bwd_pair_products_span(attn_bufs *w, int nq, int rows, int nk, int dh, const float *qs,
                                          const float *dos, const float *krows, int want_kv, float *dqacc,
                                          const pair_span *sp) {
    zero_pad_rows(w->p, nq, rows);
    zero_pad_rows(w->ds, nq, rows);
    if (want_kv)
        for (int j = 0; j < BK / 16; j++) {
            int kn = group_rows(j, round4(nk)), f = sp->first[j];
            if (!kn || f >= nq) continue;
            int64_t at = (int64_t)f * BK + 16 * j;
            cf_block_gemm(kn, dh, w->p + at, 1, BK, nq - f, dos + (int64_t)f * dh, dh, w->dvacc + 16 * j * dh, dh, NULL);
            cf_block_gemm(kn, dh, w->ds + at, 1, BK, nq - f, qs + (int64_t)f * dh, dh, w->dkacc + 16 * j * dh, dh, NULL);
        }
    if (dqacc)
        for (int i = 0; i < BQ / 16; i++) {
            int rn = group_rows(i, rows);
            if (rn && sp->keys[i])
                cf_block_gemm(rn, dh, w->ds + 16 * i * BK, BK, 1, sp->keys[i], krows, dh, dqacc + 16 * i * dh, dh, NULL);
        }
}

/* the same for a whole pair (no causal diagonal through it) */
static inline void bwd_pair_products(attn_bufs *w, int nq, int rows, int nk, int dh, const float *qs,
                                     const float *dos, const float *krows, int want_kv, float *dqacc) {
    pair_span sp;
    for (int i = 0; i < BQ / 16; i++) sp.keys[i] = 16 * i < nq ? nk : 0;
    for (int j = 0; j < BK / 16; j++) sp.first[j] = 0;
    bwd_pair_products_span(w, nq, rows, nk, dh, qs, dos, krows, want_kv, dqacc, &sp);
}

/* Which backward driver. Per item: one thread owns a whole head (or segment) and sums its dQ, dK
 * and dV alone, 5 block GEMMs per pair. Two passes: dK and dV over key blocks, then dQ over query
 * blocks, 7 per pair (S and dP are recomputed) but many more work items. Per item is used when its
 * load imbalance (items dealt to the nt threads in rounds) costs less than the two-pass driver's
 * extra recomputation. Measured on a quiet 16-core Xeon (causal, n 2048, Dh 64, B 1): at one
 * thread per head is 1.40-1.44x faster (the 7/5); at 2, 4 and 8 threads with H from 1 to 8 this
 * rule picked the faster driver in every case but one near tie (H 3 at 2 threads, 4% apart). Both
 * drivers give the same bits, so this sets speed only. */
static inline int use_per_item(int64_t items, int nt) {
    if (nt <= 1) return 1;
    int64_t rounds = (items + nt - 1) / nt;
    return 7.0 * items >= 5.0 * rounds * nt;
}

#endif
