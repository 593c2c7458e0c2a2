/* Byte-level data (docs/architecture.md section 11): a token is a byte. Files are mapped read-only. */
#ifndef CFORMER_DATA_H
#define CFORMER_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct cf_bytes {
    const uint8_t *data;
    size_t         n;
    void          *map;      /* munmap handle */
    size_t         map_len;
    char           path[1024];  /* for error messages of later stages (sampler set-up) */
} cf_bytes;

/* 0, or -1 with cf_error_msg() naming the file (missing, unreadable, empty) */
int  cf_bytes_open(cf_bytes *b, const char *path);
void cf_bytes_close(cf_bytes *b);
/* Every byte of b is a token id below vocab: 0, or -1 with cf_error_msg() naming the file, the
 * offset and the byte (a model of vocab_size 2 cannot read text). */
int  cf_bytes_check_vocab(const cf_bytes *b, int vocab);

/* The training batch sampler. Random: row r of batch `index` starts at a position drawn from the
 * counter-based RNG keyed by (seed, index, r), so any batch can be regenerated from its index
 * alone (exact resume). Ordered: the file is cut into batch_size contiguous streams and each row
 * reads the next seq_len bytes of its stream, wrapping to the stream's start at its end; the
 * position is a function of the batch index too. */
typedef struct cf_sampler {
    const cf_bytes *src;
    int      batch, seq_len;
    int      ordered;
    uint64_t seed;
    int      row0, rows;     /* the rows this process draws: [row0, row0 + rows) (cf_sampler_shard) */
} cf_sampler;

/* Set up a sampler over src (which must outlive it). 0, or -1 with cf_error_msg() naming the file
 * when it is too short: random needs seq_len + 1 bytes, ordered needs seq_len + 1 per stream.
 * Ordered, exactly: L = n / batch (the n % batch bytes at the end are never read); stream r is
 * bytes [r*L, (r+1)*L); it holds W = (L - 1) / seq_len windows, and row r of batch `index` reads
 * x = bytes [r*L + k*seq_len, r*L + (k+1)*seq_len) with k = index % W (y one byte later), so
 * batch i+1 continues where batch i ended and every W batches the streams start over. */
int cf_sampler_init(cf_sampler *s, const cf_bytes *src, int batch, int seq_len, int ordered, uint64_t seed);

/* x and y are [rows, seq_len] int32 (rows = batch unless sharded): y is x shifted by one byte */
void cf_sampler_batch(const cf_sampler *s, uint64_t index, int32_t *x, int32_t *y);

/* Data parallelism (dist.h): rank `rank` of `size` draws only rows [rank*batch/size,
 * (rank+1)*batch/size) of every batch, exactly the rows a one-process sampler draws there: random
 * rows keep their (seed, index, row) keys, ordered rows their streams, so each stream stays on one
 * rank and the data position (the batch index) is the same for any number of ranks. batch must be
 * a multiple of size (the caller reports it against its config key). */
void cf_sampler_shard(cf_sampler *s, int rank, int size);

/* Ordered: W, the number of batches after which the streams wrap to their starts (a batch with
 * index % W == 0 begins a pass, where recurrent attention state should start afresh).
 * Random: 0. */
uint64_t cf_sampler_period(const cf_sampler *s);

#endif
