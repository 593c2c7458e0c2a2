/* Byte-level data (DESIGN.md section 8): a token is a byte. Files are mapped read-only. */
#ifndef CFORMER_DATA_H
#define CFORMER_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct cf_bytes {
    const uint8_t *data;
    size_t         n;
    void          *map;      /* munmap handle */
    size_t         map_len;
} cf_bytes;

/* 0, or -1 with cf_error_msg() naming the file (missing, unreadable, empty) */
int  cf_bytes_open(cf_bytes *b, const char *path);
void cf_bytes_close(cf_bytes *b);

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
} cf_sampler;

/* x and y are [batch, seq_len] int32: y is x shifted by one byte */
void cf_sampler_batch(const cf_sampler *s, uint64_t index, int32_t *x, int32_t *y);

#endif
