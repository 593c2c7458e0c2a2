/* HDF5 checkpoints, format version 1 (docs/architecture.md section 9): everything a run needs to continue
 * exactly as if it had never stopped, in a file that h5py alone can read.
 *
 *   /                          attributes: format = "cformer-checkpoint" (string),
 *                              format_version = 1, step, tokens_seen (int64)
 *   /config                    string: the resolved JSON config (cf_config_to_json)
 *   /params/<name>             float32, each parameter's own shape; the names and [out, in] linear
 *                              layouts of the PyTorch twin (tok_emb.weight, blocks.0.attn.qkv.weight,
 *                              ...), so h5py + torch load them with no renaming
 *   /optimizer/name            string: the optimizer (train.optimizer: "adamw", "lion"); a file
 *                              without it holds AdamW's state. Loading refuses another optimizer's.
 *   /optimizer/t               int64 scalar: optimizer steps taken (AdamW's bias correction)
 *   /optimizer/<slab>/<name>   float32: the optimizer's state slabs (optim.h), one dataset per
 *                              parameter, same names as /params and, for the optimizers here, the
 *                              same shapes:
 *                                adamw: m (first moments), v (second moments, never negative)
 *                                lion:  m (momentum)
 *   /state/seed                uint64 scalar: train.seed. All randomness of training (batch windows,
 *                              dropout masks) is counter-based, keyed by (seed, batch index), so the
 *                              seed and the next batch index ARE the RNG state.
 *   /state/next_batch          uint64 scalar: index of the next micro-batch the sampler draws
 *                              (step * grad_accum in an uninterrupted run)
 *   /state/best_valid_bpb      float64 scalar: best validation bits per byte so far (inf: none yet)
 *   /state/elapsed_s           float64 scalar: training time so far (log.jsonl's elapsed_s goes on)
 *   /state/sampler/mode        string: "random" or "ordered" (train.sampling when saved)
 *   /state/sampler/batch_size  int64 scalar   } the sampler's geometry when saved: with next_batch
 *   /state/sampler/seq_len     int64 scalar   } they fix every ordered stream's read position
 *   /state/attention/          group, empty for stateless attention (and before the first step).
 *                              Recurrent attention keeps its per-stream state here (model.h
 *                              cf_rec_state: the training streams'), one group per layer that holds
 *                              some, batch row b = ordered stream b:
 *                                /state/attention/layer.<i>/xl_mem   float32 [B, used, D], used <= mem_len
 *                                    Transformer-XL: the last `used` inputs of layer i, oldest first
 *                                /state/attention/layer.<i>/infini_M float32 [B, H, Dh, Dh]
 *                                /state/attention/layer.<i>/infini_z float32 [B, H, Dh]
 *                                    Infini-attention: compressive memory and its normaliser
 *                              (i = the block index as in /params/blocks.<i>). Loading checks every
 *                              entry against the model (a layer of another type, a wrong shape, a
 *                              non-finite value or a negative normaliser is an error naming it).
 *
 * Writing is atomic: the file is written under a temporary name in the same directory
 * (".<name>.tmp.<pid>"), flushed, closed, fsync'ed, renamed over the target, and the directory is
 * fsync'ed. A crash or kill at any moment leaves the previous checkpoint intact under its name,
 * and a leftover temporary never has a checkpoint's name (cf_ckpt_remove_temps clears them).
 *
 * Fault injection for tests (read at each save; writes are datasets and attributes, counted from
 * 1 in each save, in the order of the layout above):
 *   CF_CKPT_FAIL_AFTER=n   abort() right after the n-th write: a kill in the middle of a save
 *   CF_CKPT_FAIL_WRITE=n   the n-th write fails with ENOSPC, as on a full disk
 *
 * Every function returns 0, or -1 with cf_error_msg() = one line naming the file and the dataset. */
#ifndef CFORMER_CHECKPOINT_H
#define CFORMER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "model.h"
#include "optim.h"

#define CF_CKPT_FORMAT  "cformer-checkpoint"
#define CF_CKPT_VERSION 1

/* The training state besides the weights and the optimizer. */
typedef struct cf_train_state {
    int64_t  step;            /* optimiser steps completed */
    int64_t  tokens_seen;     /* training tokens consumed */
    uint64_t seed;            /* train.seed of the run: the key of every random stream */
    uint64_t next_batch;      /* the next micro-batch index of the sampler */
    int      sampling;        /* cf_sample_kind when saved */
    int      batch_size, seq_len;
    double   best_valid_bpb;  /* INFINITY when no validation has run */
    double   elapsed_s;       /* training seconds so far */
} cf_train_state;

/* the state at step 0 of a run of config c */
void cf_train_state_init(cf_train_state *s, const cf_config *c);

/* Write a checkpoint atomically to path (see above). Refuses weights that are not finite, so a
 * diverged model never replaces a good checkpoint. */
int cf_ckpt_save(const char *path, const cf_config *c, const cf_model *m, const cf_optim *o,
                 const cf_train_state *s);

/* Make dst another name of the finished checkpoint src (RUN/ckpt/latest.h5), atomically: a hard
 * link (or, where links are not supported, a copy) under a temporary name, fsync, rename. */
int cf_ckpt_publish(const char *src, const char *dst);

/* The config stored in a checkpoint, parsed and validated (data files are not checked: they may
 * live elsewhere now). c->name is set to the checkpoint's base name. Also checks the format. */
int cf_ckpt_read_config(const char *path, cf_config *c);

/* Load into a model already built (cf_model_init) from a config with the same shape, and
 * optionally the optimizer (o, initialised with cf_optim_init for the model's parameters and the
 * kind the file holds: another kind is an error naming both) and the state (s). Every model
 * parameter must be in the file with the same shape, and the file must hold no other: the error
 * names the first parameter that differs. Weights and optimizer state must be finite. On error m,
 * o, s may be partly overwritten (discard them); the file is never written. */
int cf_ckpt_load(const char *path, cf_model *m, cf_optim *o, cf_train_state *s);

/* For eval, sample, info: read the config, build the model from it and load its weights; s is
 * optional. On error nothing needs freeing. */
int cf_ckpt_load_model(const char *path, cf_config *c, cf_model *m, cf_train_state *s);

/* Resolve --resume ARG: a checkpoint file is taken as is (run_dir = ""); a directory is a run
 * directory and means ARG/ckpt/latest.h5 (run_dir = ARG), which must exist. */
int cf_ckpt_resolve(const char *arg, char *path, size_t path_size, char *run_dir, size_t run_dir_size);

/* ---- integrity (src/io/integrity.c) ----
 * A checkpoint's first CF_CKPT_USERBLOCK bytes (HDF5's user block) are a header of CRC-32C
 * checksums of the header itself, of the whole HDF5 image after it and of each of its chunks
 * (about 1000 of them at most), written once the image is complete. */
#define CF_CKPT_USERBLOCK 4096
/* the header for image[n] into h[CF_CKPT_USERBLOCK] */
void cf_ckpt_seal(uint8_t *h, const uint8_t *image, size_t n);
/* Check path against its checksums before anything parses it: 0 with *sealed = 1 when they match,
 * 0 with *sealed = 0 for a file written without them (HDF5 at byte 0), else -1 with cf_error_msg()
 * naming the file and the part that failed (the header, a byte range, the length). */
int  cf_ckpt_verify(const char *path, int *sealed);

/* Keys whose values differ between two resolved configs, as one malloc'd line
 * ("train.steps: 200 -> 400, train.lr: 0.001 -> 0.0005"), or NULL when none do. prefix selects
 * a section ("model.") or NULL for all; skip (NULL-terminated, may be NULL) lists keys to ignore. */
char *cf_ckpt_config_diff(const cf_config *saved, const cf_config *now, const char *prefix,
                          const char *const *skip);

/* Delete leftover temporary files of interrupted saves in dir; returns how many were removed. */
int cf_ckpt_remove_temps(const char *dir);

/* step files RUN/ckpt/step_<N>.h5: delete those with N < newest_step beyond the newest `keep`
 * (counting newest_step's own); only names of exactly that form are touched. */
int cf_ckpt_rotate(const char *ckpt_dir, int64_t newest_step, int keep);

#endif
