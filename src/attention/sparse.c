/* Sparse Transformer patterns (Child et al. 2019; docs/attention.md section 4.1, conventions of
 * openai/sparse_attention), as plans for the masked flash-attention engine (masked.c).
 *
 * strided, l = stride:
 *   part 1, local:    i - l < j <= i (l keys), one band segment;
 *   part 2, strided:  (i - j) mod l == 0, j <= i. Queries and keys of one residue r mod l form an
 *                     arithmetic progression r, r + l, r + 2l, ..., and within it the pattern is
 *                     plain causal attention: l segments of about T/l rows (the "strided
 *                     transpose" of the blocksparse code), O(T^2 / l) = O(T sqrt T) in all.
 * fixed:
 *   part 1, own block: floor(j / l) == floor(i / l), j <= i: a band segment with a block rule;
 *   part 2, summary:   j mod l >= l - c, j <= i: the summary columns gathered into one key list
 *                      of c T / l entries, every query against it, O(T^2 c / l).
 * Bidirectional forms (encoders) drop j <= i; local becomes |i - j| < l.
 *
 * combine: "alternate" (the layer's pattern says parts 1 or 2), "heads" (two head classes: even
 * heads part 1, odd heads part 2), "merged" (part 1 in stage 0, part 2 in stage 1 minus what part
 * 1 already has: j == i for strided, the own block for fixed; the engine merges the softmax). */
#include "masked.h"
#include "cache.h"

/* part (1 or 2) of the pattern into class cls, stage st; without_part1: leave out what part 1 sees */
static void add_part(cf_ctx *ctx, plan *p, const cf_attn_pattern *pat, int causal, int cls, int st, int part,
                     int without_part1) {
    int T = p->T, l = pat->stride;
    if (part == 1) {
        seg *s = cf_plan_add(ctx, p, cls, st, 1);
        s->q = s->k = cf_plist_ident(T);
        if (pat->type == CF_ATTN_SPARSE_STRIDED)
            s->r = (rule){.kind = R_BAND, .back = l - 1, .fwd = causal ? 0 : l - 1, .causal = causal};
        else
            s->r = (rule){.kind = R_BLOCK, .l = l, .causal = causal};
        return;
    }
    if (pat->type == CF_ATTN_SPARSE_STRIDED) {
        int lanes = l < T ? l : T;
        seg *s = cf_plan_add(ctx, p, cls, st, lanes);
        for (int r = 0; r < lanes; r++) {
            s[r].q = s[r].k = cf_plist_arith(r, l, T);
            s[r].r = (rule){.kind = without_part1 ? R_BEFORE : R_UPTO, .causal = causal};
        }
    } else {
        seg *s = cf_plan_add(ctx, p, cls, st, 1);
        s->q = cf_plist_ident(T);
        s->k = cf_plist_summary(l, pat->c, T);
        s->r = (rule){.kind = without_part1 ? R_OUTSIDE_BLOCK : R_UPTO, .l = l, .causal = causal};
    }
}

void cf_sparse_plan(cf_ctx *ctx, plan *p, const cf_attn_pattern *pat, int causal) {
    if (pat->split_heads) {
        p->n_classes = 2;
        for (int cls = 0; cls < 2; cls++) {
            p->n_stages[cls] = 1;
            add_part(ctx, p, pat, causal, cls, 0, cls + 1, 0);
        }
        return;
    }
    p->n_classes = 1;
    if (pat->parts == 3) {
        p->n_stages[0] = 2;
        add_part(ctx, p, pat, causal, 0, 0, 1, 0);
        add_part(ctx, p, pat, causal, 0, 1, 2, 1);
    } else {
        p->n_stages[0] = 1;
        add_part(ctx, p, pat, causal, 0, 0, pat->parts, 0);
    }
}

/* ---- the rows of sparse_strided and sparse_fixed ------------------------------------------------------ */

static int sparse_check(const cf_attn_config *c, const char *path, int n_heads, int d_model) {
    (void)d_model;
    if (c->stride < 1) return cf_set_error("%s.stride: must be >= 1 (got %d)", path, c->stride);
    if (c->type == CF_ATTN_SPARSE_FIXED && (c->c < 1 || c->c > c->stride))
        return cf_set_error("%s.c: must be in [1, stride %d] (got %d)", path, c->stride, c->c);
    if (c->combine == CF_COMBINE_HEADS && n_heads < 2)
        return cf_set_error("%s.combine: \"heads\" splits the two parts between heads and needs at least 2 "
                            "heads (model.n_heads is %d)", path, n_heads);
    return 0;
}

/* ---- incremental decoding: the cache holds every position; a query reads only those its part(s)
 * of the pattern allow, causal, with the conventions of the plans above ---------------------------- */

static int sparse_rows(const cf_attn_config *c, int span) { (void)c; return span; }
static size_t sparse_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    (void)c, (void)n_heads, (void)d_head, (void)span;
    return 0;
}

/* the positions of part (1 or 2) of pattern pat that query p sees; without_part1: leave out
 * those part 1 sees (a merged pattern lists part 1, then the rest of part 2) */
static int part_keys(const cf_attn_pattern *pat, int part, int without_part1, int64_t p, int32_t *out) {
    int64_t l = pat->stride, bs = p / l * l;
    int n = 0;
    if (pat->type == CF_ATTN_SPARSE_STRIDED) {
        if (part == 1)
            for (int64_t j = p - l + 1 > 0 ? p - l + 1 : 0; j <= p; j++) out[n++] = (int32_t)j;
        else
            for (int64_t j = p % l; j <= p - (without_part1 ? l : 0); j += l) out[n++] = (int32_t)j;   /* i - j = 0 mod l */
        return n;
    }
    if (part == 1) {
        for (int64_t j = bs; j <= p; j++) out[n++] = (int32_t)j;
        return n;
    }
    int64_t end = without_part1 ? bs - 1 : p;       /* summary columns: j mod l >= l - c */
    for (int64_t b0 = 0; b0 <= end; b0 += l)
        for (int64_t j = b0 + l - pat->c; j < b0 + l && j <= end; j++) out[n++] = (int32_t)j;
    return n;
}

static int sparse_keys(const cf_attn_call *call, const cf_attn_cache *c, int h, int64_t p, int32_t *rows) {
    CF_ASSERT(p < c->rows, "sparse attention: position %lld past the cache's %d rows", (long long)p, c->rows);
    cf_attn_pattern pat = cf_attn_pattern_of(call->cfg, call->layer);
    if (pat.split_heads) return part_keys(&pat, h % 2 + 1, 0, p, rows);
    if (pat.parts != 3) return part_keys(&pat, pat.parts, 0, p, rows);
    int n = part_keys(&pat, 1, 0, p, rows);
    return n + part_keys(&pat, 2, 1, p, rows + n);
}

static void sparse_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                        int ld, int n, float *out) {
    cf_cache_softmax_step(call, c, q, k, v, ld, n, out, sparse_keys);
}

const cf_attn_variant cf_attn_sparse_strided = {
    .name = "sparse_strided", .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_ALIBI | CF_ATTN_QK_NORM,
    .check = sparse_check, .core = cf_masked_core,
    .cache_rows = sparse_rows, .cache_aux = sparse_aux, .step = sparse_step};
const cf_attn_variant cf_attn_sparse_fixed = {
    .name = "sparse_fixed", .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_ALIBI | CF_ATTN_QK_NORM,
    .check = sparse_check, .core = cf_masked_core,
    .cache_rows = sparse_rows, .cache_aux = sparse_aux, .step = sparse_step};
