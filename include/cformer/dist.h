/* Data-parallel training over MPI: the ranks of a job, the few collectives the trainer
 * needs, and the gradient all-reduce that overlaps backward. src/dist/dist.c.
 *
 * `make MPI=1` builds with mpicc and -DCF_MPI. Without it (the default build) there is no MPI at
 * all and this layer is the one-process case: rank 0 of 1, every collective is the identity, and
 * the trainer never creates a gradient reducer.
 *
 * The model of a data-parallel step (the trainer, src/train/trainer.c):
 *   - every rank holds the whole model and the same optimizer state; train.batch_size is the global
 *     batch and rank r trains on rows [r*B/N, (r+1)*B/N) of every global batch (data.h);
 *   - the loss of the last micro-batch is seeded with 1 / (grad_accum * N), so the SUM of the
 *     ranks' gradients is the gradient of the global mean loss;
 *   - while that micro-batch runs backward, the gradient slab (param.h) is summed across ranks in
 *     buckets, contiguous ranges of whole parameters: a bucket's MPI_Iallreduce starts as soon as
 *     backward can no longer add to any of its parameters (below), so communication overlaps the
 *     rest of backward; the trainer waits for all of them before clipping (global norm of the
 *     reduced gradient, the same on every rank) and the optimizer step, which keeps the ranks' weights
 *     identical (cf_dist_check_params compares them).
 *
 * When is a parameter's gradient final? The tape is the execution order and a node's backward
 * adds only into its inputs' gradients. Armed on a context, the reducer sees every op's inputs in
 * cf_record (core.h: cf_hook) and keeps, per parameter, the lowest tape index that reads it: an
 * input whose gradient points into the slab (a parameter, or a view of one such as the first T
 * rows of pos_emb) is read by that node. A checkpointed region's forward records nothing, but its
 * ops still call cf_record, and a read there belongs to the region's node (the index it will take).
 * Backward walks the tape down; once the node at index i has run, no gradient can reach a
 * parameter whose lowest reader is >= i, so every bucket whose parameters all have readers >= i
 * starts. Tied embeddings (tok_emb read by the first and the last op) are final only at the end.
 * The rule is exact, and checked: before each node's backward the reducer makes sure that none of
 * the node's inputs lies in a bucket already started, and dies naming the parameter otherwise. */
#ifndef CFORMER_DIST_H
#define CFORMER_DIST_H

#include <stddef.h>
#include <stdint.h>
#include "param.h"

/* ---- the job ---------------------------------------------------------------------------------- */
/* MPI_Init_thread (MPI_THREAD_FUNNELED: only the main thread calls MPI, OpenMP threads never do),
 * unless MPI is initialised already. A no-op without MPI. 0, or -1 with cf_error_msg(). */
int  cf_dist_init(int *argc, char ***argv);
/* MPI_Finalize when cf_dist_init initialised MPI; safe to call twice */
void cf_dist_finalize(void);
int  cf_dist_rank(void);          /* 0 without MPI or before cf_dist_init */
int  cf_dist_size(void);          /* 1 without MPI or before cf_dist_init */
int  cf_dist_mpi_built(void);     /* 1 when built with MPI=1 */

/* A failure that the other ranks cannot know of (a write that failed on rank 0, an error in the
 * middle of the training loop): prints "cformer: rank R of N: <message>" and stops the whole job
 * (MPI_Abort with status 1), so no rank waits for ever in a collective. exit(1) without MPI. */
void cf_dist_abort(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Errors that every rank reaches at the same point (set-up): each rank passes whether it failed;
 * returns the lowest failing rank, or -1 when none did, and the number that failed in *n_failed
 * (may be NULL). Collective. */
int  cf_dist_first_failed(int failed, int *n_failed);

/* The same for an error with its message in cf_error_msg(): 0 when no rank failed, else -1 with
 * cf_error_msg() set to what this rank should print: "rank R of N: <its message>" on a failing
 * rank, a line naming the first failing rank on rank 0; the other ranks are made quiet
 * (cf_dist_quiet). When every rank failed, rank 0 keeps its message and the others are quiet.
 * Collective. */
int  cf_dist_agree_error(int failed);
/* This rank's error is reported by another rank (rank 0), so the caller prints nothing. */
void cf_dist_set_quiet(void);
int  cf_dist_quiet(void);

/* collectives over all ranks, in place; identities without MPI */
void cf_dist_sum_f64(double *x, int n);
void cf_dist_max_f64(double *x, int n);
/* rank 0's `bytes` bytes at buf to every rank */
void cf_dist_bcast(void *buf, size_t bytes);
/* rank 0 receives the n floats of every rank, in rank order, in recv (size * n floats); other
 * ranks may pass recv = NULL. Without MPI: a copy. */
void cf_dist_gather_f32(const float *send, float *recv, int64_t n);

/* A 64-bit checksum of the parameter values (exact bits; order-independent sum, so the result
 * does not depend on the thread count). */
uint64_t cf_params_checksum(const cf_params *p);
/* Compare the checksums of all ranks (collective). When they differ, rank 0 prints which ranks
 * differ from it at `step` and the job stops (cf_dist_abort). A no-op on one rank. */
void cf_dist_check_params(const cf_params *p, int64_t step);

/* ---- the gradient reducer --------------------------------------------------------------------- */
typedef struct cf_grad_sync cf_grad_sync;

/* A reducer of p's gradient slab in buckets of about bucket_bytes (whole parameters, contiguous,
 * from the end of the slab: the last declared parameters are usually final first). */
cf_grad_sync *cf_grad_sync_new(cf_params *p, size_t bucket_bytes);
void          cf_grad_sync_free(cf_grad_sync *s);
/* Bucket size for the trainer: env CF_MPI_BUCKET_MB (default 4 MB). */
size_t        cf_grad_sync_default_bytes(void);
int           cf_grad_sync_buckets(const cf_grad_sync *s);

/* Arm on ctx before the forward whose backward completes the gradient (the last micro-batch):
 * from then on cf_record reports reads and backward starts buckets as they become final. */
void   cf_grad_sync_arm(cf_grad_sync *s, cf_ctx *ctx);
/* After that backward: start the buckets not started yet (parameters nothing read), wait for all
 * reductions and disarm ctx. Returns the seconds this step spent inside MPI for the gradient:
 * the final wait plus the MPI calls made during backward (starting buckets, progress tests),
 * i.e. the part of the all-reduce that did not overlap computation. */
double cf_grad_sync_finish(cf_grad_sync *s, cf_ctx *ctx);

/* Tests: called when bucket b (slab elements [off, off + len)) starts, before its reduction. */
void cf_grad_sync_set_probe(cf_grad_sync *s, void (*probe)(void *arg, int bucket, int64_t off, int64_t len),
                            void *arg);

#endif
