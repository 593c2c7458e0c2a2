/* The training batch sampler (data.h): random windows or ordered streams. Every batch is a pure
 * function of (file, seed, batch index), so a resumed run regenerates exactly the batches it would
 * have seen. */
#include <string.h>
#include "cformer/core.h"
#include "cformer/data.h"

int cf_sampler_init(cf_sampler *s, const cf_bytes *src, int batch, int seq_len, int ordered, uint64_t seed) {
    memset(s, 0, sizeof *s);
    const char *name = src->path[0] ? src->path : "data";
    if (batch <= 0 || seq_len <= 0)
        return cf_set_error("\"%s\": sampler needs a positive batch and seq_len (got %d, %d)", name, batch, seq_len);
    size_t need = (size_t)seq_len + 1;   /* seq_len inputs and the byte after them as the last target */
    if (!ordered && src->n < need)
        return cf_set_error("\"%s\": %zu bytes, too short for seq_len %d (needs at least %zu)",
                            name, src->n, seq_len, need);
    if (ordered && src->n / (size_t)batch < need)
        return cf_set_error("\"%s\": %zu bytes cut into %d streams of %zu, too short for seq_len %d "
                            "(each stream needs at least %zu bytes)",
                            name, src->n, batch, src->n / (size_t)batch, seq_len, need);
    s->src = src;
    s->batch = batch;
    s->seq_len = seq_len;
    s->ordered = ordered != 0;
    s->seed = seed;
    s->row0 = 0;
    s->rows = batch;
    return 0;
}

void cf_sampler_shard(cf_sampler *s, int rank, int size) {
    CF_ASSERT(size >= 1 && rank >= 0 && rank < size && s->batch % size == 0,
              "cf_sampler_shard: batch %d over %d ranks (rank %d)", s->batch, size, rank);
    s->rows = s->batch / size;
    s->row0 = rank * s->rows;
}

uint64_t cf_sampler_period(const cf_sampler *s) {
    if (!s->ordered) return 0;
    size_t L = s->src->n / (size_t)s->batch;
    return (uint64_t)((L - 1) / (size_t)s->seq_len);
}

void cf_sampler_batch(const cf_sampler *s, uint64_t index, int32_t *x, int32_t *y) {
    CF_ASSERT(s->src && s->src->data, "cf_sampler_batch: sampler not initialised (cf_sampler_init)");
    const uint8_t *d = s->src->data;
    size_t n = s->src->n, T = (size_t)s->seq_len;
    size_t L = n / (size_t)s->batch;
    CF_ASSERT(s->ordered ? L >= T + 1 : n >= T + 1, "cf_sampler_batch: file too short for seq_len %d", s->seq_len);
    uint64_t W = s->ordered ? (uint64_t)((L - 1) / T) : 0;
    for (int r = s->row0; r < s->row0 + s->rows; r++) {
        size_t start;
        if (s->ordered) {
            start = (size_t)r * L + (size_t)(index % W) * T;
        } else {
            /* n - T starts are possible: [0, n - T - 1]. The modulo bias is below n / 2^64. */
            start = (size_t)(cf_rng_key(s->seed, index, (uint64_t)r) % (uint64_t)(n - T));
        }
        const uint8_t *p = d + start;
        int32_t *xr = x + (size_t)(r - s->row0) * T, *yr = y + (size_t)(r - s->row0) * T;
        for (size_t t = 0; t < T; t++) {
            xr[t] = p[t];
            yr[t] = p[t + 1];
        }
    }
}
