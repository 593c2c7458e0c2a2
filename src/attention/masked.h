/* Internal to src/attention: how a pattern tells the masked flash-attention engine (masked.c) what
 * each query sees. window.c and sparse.c build plans; masked.c runs them.
 *
 * A plan splits one head's attention into segments. A segment pairs a list of query positions with
 * a list of key positions (both increasing: every position, an arithmetic progression, or the
 * summary columns of sparse_fixed) and a rule that gives, for query position i, at most two ranges
 * of key positions it sees. Because the lists are increasing, each range is a range of list
 * indices, so the visible keys of a query are at most two runs in the packed key blocks: the
 * engine visits only blocks a run touches and masks the rest bit by bit. Gathering the keys of a
 * segment is what makes the strided pattern O(T sqrt T): the keys (i - j) mod l == 0 of query i are
 * one arithmetic progression, so the queries and keys of residue r mod l form one small causal
 * attention of T/l rows.
 *
 * Segments are grouped in stages. Within a stage the segments' query lists partition the
 * positions, and so do their key lists; the softmax over the union of two stages is merged from
 * each stage's output and log-sum-exp (a query's visible sets of the two stages are disjoint).
 * Heads may follow different plans (sparse "heads": class = h mod 2). */
#ifndef CF_ATTENTION_MASKED_H
#define CF_ATTENTION_MASKED_H

#include "cformer/attention.h"

enum { PL_IDENT, PL_ARITH, PL_SUMMARY };
typedef struct plist {
    int kind;
    int start, step;            /* PL_ARITH: start + n step */
    int l, c;                   /* PL_SUMMARY: positions p with p mod l >= l - c */
    int n;                      /* entries below T */
} plist;

/* key ranges of query position i (bs = l floor(i / l), be = min(bs + l, T) - 1):
 *   R_BAND          [i - back, i + fwd]
 *   R_BLOCK         [bs, causal ? i : be]
 *   R_UPTO          [0, causal ? i : T - 1]
 *   R_BEFORE        [0, i - 1], and [i + 1, T - 1] when not causal     (all but i itself)
 *   R_OUTSIDE_BLOCK [0, bs - 1], and [be + 1, T - 1] when not causal   (all but i's own block) */
enum { R_BAND, R_BLOCK, R_UPTO, R_BEFORE, R_OUTSIDE_BLOCK };
typedef struct rule { int kind, back, fwd, l, causal; } rule;

typedef struct seg {
    plist q, k;
    rule  r;
    /* derived by the engine */
    int     nqb, nkb;           /* query and key blocks */
    int64_t qb0, kb0;           /* index of the segment's first block among its head's blocks */
    int    *lo1, *hi1, *lo2, *hi2;   /* [nqb * BQ] visible key index ranges of each query (empty: lo > hi) */
    int    *kb_lo, *kb_hi;      /* [nqb] the key blocks a query block may see */
    int    *qb_lo, *qb_hi;      /* [nkb] the query blocks that may see a key block */
    int     ring;               /* query blocks whose dQ is open at once in the key-major walk */
} seg;

#define PLAN_MAX_STAGES 2
typedef struct plan {
    int T;
    int n_classes;                                  /* 1, or 2: head h follows class h mod 2 */
    int n_stages[2];
    int n_segs[2][PLAN_MAX_STAGES];
    seg *segs[2][PLAN_MAX_STAGES];
    int64_t head_qblocks, head_kblocks;             /* blocks per head (the larger class): cache keys */
} plan;

/* room for n segments of class cls, stage st (arena); returns the first */
seg *cf_plan_add(cf_ctx *ctx, plan *p, int cls, int st, int n);
plist cf_plist_ident(int T);
plist cf_plist_arith(int start, int step, int T);
plist cf_plist_summary(int l, int c, int T);

/* the builders: fill p (whose T is set and counts are zero) for pattern pat */
void cf_window_plan(cf_ctx *ctx, plan *p, const cf_attn_pattern *pat, int causal);
void cf_sparse_plan(cf_ctx *ctx, plan *p, const cf_attn_pattern *pat, int causal);

/* the core of the window and sparse rows: the call's pattern (cf_attn_pattern_of) on qkv */
cf_tensor *cf_masked_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv);

#endif
