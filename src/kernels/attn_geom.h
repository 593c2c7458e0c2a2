/* Block geometry, per-thread workspaces and thread teams, for the attention kernels
 * (src/ops/attention.c and those of src/attention). Internal.
 *
 * Every kernel cuts its rows into blocks or chunks, gives each thread of a team one workspace from
 * the arena, and sizes the team by the op's work. The helpers are static inline: they sit in the
 * kernels' inner loops. */
#ifndef CF_KERNELS_ATTN_GEOM_H
#define CF_KERNELS_ATTN_GEOM_H

#include <stddef.h>
#include <stdint.h>
#include <omp.h>
#include "cformer/core.h"

/* ---- geometry ------------------------------------------------------------------------------ */

/* n rounded up to a multiple of 16 floats (64 bytes): with every array of a workspace padded so,
 * each starts on a 64-byte boundary (a cache line, and an aligned AVX-512 load) when the workspace
 * does */
static inline size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }

/* rows rounded up to a multiple of 4: the register tiles (nt_block, cf_block_gemm) take 4 rows at
 * a time, so a block's rows from n up to round4(n) are computed too and must be zero */
static inline int round4(int n) { return (n + 3) & ~3; }

/* blocks of bs entries that cover n */
static inline int nblocks(int n, int bs) { return (n + bs - 1) / bs; }

/* entries in the block at `at` of n entries cut into blocks of bs: bs, fewer in the last block */
static inline int blen(int n, int at, int bs) { return n - at < bs ? n - at : bs; }

/* ---- per-thread workspaces ------------------------------------------------------------------
 * An op takes one block of floats per thread from the arena (team_ws); each thread lays out its
 * arrays in its own block (thread_ws) with a carver. A kernel writes its layout once, as a
 * function that carves: run on a carver without a base it only counts, and that count is the
 * size of a block, so the size and the layout cannot disagree. */

typedef struct ws_carver {
    float *base;                     /* the block being carved; NULL: count only */
    size_t floats;                   /* floats handed out so far, each array padded by up16 */
} ws_carver;

/* the next array of n floats (an array of another type: its size in floats); NULL when counting */
static inline void *ws_take(ws_carver *c, size_t n) {
    float *p = c->base ? c->base + c->floats : NULL;
    c->floats += up16(n);
    return p;
}

/* nt workspaces of per floats from the arena, one per thread: each starts 64-byte aligned, since
 * arena blocks do and per, a sum of up16 sizes, is a multiple of 16 floats */
static inline float *team_ws(cf_ctx *ctx, int nt, size_t per) {
    return cf_scratch(ctx, (size_t)nt * per * sizeof(float));
}

/* the calling thread's workspace among those of team_ws */
static inline float *thread_ws(float *base, size_t per) { return base + (size_t)omp_get_thread_num() * per; }

/* ---- thread teams --------------------------------------------------------------------------- */

/* Below this many multiply-adds (about 0.1 ms of work) an op runs on the calling thread: waking
 * the team would cost more than it saves. */
#define PAR_MIN_WORK (1 << 18)

/* The threads for an op of `work` multiply-adds: one below min_work (PAR_MIN_WORK, or the op's own
 * threshold), else cf_num_threads(). Every kernel's results are independent of
 * the thread count, so this sets speed only. */
static inline int team_size(double work, double min_work) { return work < min_work ? 1 : cf_num_threads(); }

/* the same for an op whose only parallel loop has `items` work items: no more threads than items,
 * since an idle thread would still cost its workspace */
static inline int team_size_items(double work, double min_work, int64_t items) {
    int nt = team_size(work, min_work);
    return nt > items ? (int)items : nt;
}

#endif
