/* Sparse Transformer patterns (Child et al. 2019; ALGORITHMS.md section 2.1, conventions of
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
