/* The data of a run, read the way its model family needs: byte files cut into windows or streams
 * for a decoder-only model, files of (source, target) pairs for an encoder-decoder. One row of
 * cf_data_kinds per model.arch (src/data/dataset.c); the trainer and the benchmark hold a
 * cf_dataset and never ask which kind it is. */
#ifndef CFORMER_DATASET_H
#define CFORMER_DATASET_H

#include "data.h"
#include "model.h"
#include "pairs.h"
#include "schema.h"

typedef enum { CF_SPLIT_TRAIN, CF_SPLIT_VALID, CF_SPLIT_TEST, CF_SPLIT_COUNT } cf_split;
extern const char *const cf_split_names[];      /* data.train, data.valid, data.test */

typedef struct cf_data_kind cf_data_kind;

typedef struct cf_dataset {
    const cf_data_kind *kind;
    const cf_config    *c;
    int       rows;                   /* rows of each global batch this process trains on */
    int       rank, size;             /* this process among the MPI ranks (dist.h) */
    uint64_t  seed;                   /* the key of every batch */
    /* bytes (decoder-only) */
    cf_bytes   bytes[CF_SPLIT_COUNT];
    cf_sampler sampler;
    int32_t   *x, *y;                 /* [rows, seq_len] */
    /* pairs (encoder-decoder) */
    cf_pairs     pairs[CF_SPLIT_COUNT];
    cf_s2s_batch pb;
    int         *pool;                /* train.bucket_pool x batch_size scratch of cf_pairs_sample */
} cf_dataset;

struct cf_data_kind {
    const char *name;                 /* "bytes", "pairs" */
    int data_parallel;                /* trains over several MPI ranks */
    /* open and check the files of c->data; -1 with cf_error_msg() naming the key */
    int  (*open)(cf_dataset *d);
    /* ready to draw batches under seed (a resumed run's is the checkpoint's) */
    int  (*start)(cf_dataset *d, uint64_t seed);
    /* training batch `index` (this rank's rows), into storage of d */
    void (*batch)(cf_dataset *d, uint64_t index, cf_batch *b);
    /* a batch of random tokens of the training geometry (the benchmark; needs no files) */
    void (*synthetic)(cf_dataset *d, cf_batch *b);
    /* a line on stderr about the data, once the run is set up (or nothing) */
    void (*note)(const cf_dataset *d);
    /* what one optimiser step trains on, for the start line ("8192 tokens") */
    void (*describe_step)(const cf_dataset *d, char *buf, size_t size);
    void (*close)(cf_dataset *d);
};
extern const cf_data_kind *const cf_data_kinds[CF_ARCH_COUNT];

/* Set d up for config c (its model.arch picks the kind) on rank `rank` of `size`; files are opened
 * when open_files is set (the benchmark draws synthetic batches and opens none). 0, or -1 with
 * cf_error_msg(); cf_dataset_close is safe after a failure. */
int  cf_dataset_open(cf_dataset *d, const cf_config *c, int rank, int size, int open_files);
void cf_dataset_close(cf_dataset *d);
int  cf_dataset_has(const cf_dataset *d, cf_split s);   /* the split was given and is not empty */

#endif
