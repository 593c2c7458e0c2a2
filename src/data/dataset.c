/* The data of a run by model family (dataset.h): byte files with the batch sampler, or pair files
 * sampled in length buckets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/dataset.h"
#include "cformer/encdec.h"

const char *const cf_split_names[] = {"data.train", "data.valid", "data.test", NULL};

static const char *split_path(const cf_dataset *d, int s) {
    return s == CF_SPLIT_TRAIN ? d->c->data.train : s == CF_SPLIT_VALID ? d->c->data.valid : d->c->data.test;
}

/* ---- bytes: a decoder-only model reads windows (random) or streams (ordered) of byte files ----- */
/* Every split is checked against what the run will ask of it before the first step: its bytes
 * are tokens of the model, and an evaluation split has a byte to predict. */
static int bytes_open(cf_dataset *d) {
    for (int s = 0; s < CF_SPLIT_COUNT; s++) {
        if (s != CF_SPLIT_TRAIN && !split_path(d, s)[0]) continue;
        cf_bytes *b = &d->bytes[s];
        int bad = cf_bytes_open(b, split_path(d, s)) || cf_bytes_check_vocab(b, d->c->model.vocab_size);
        if (!bad && s != CF_SPLIT_TRAIN && b->n < 2)
            bad = cf_set_error("\"%s\": %zu byte, too short to evaluate (at least 2: a context and a byte to predict)",
                               b->path, b->n);
        if (bad) {
            char msg[1200];
            snprintf(msg, sizeof msg, "%s", cf_error_msg());
            return cf_set_error("%s: %s", cf_split_names[s], msg);
        }
    }
    return 0;
}

/* the batch buffers, allocated once before the first step (the step allocates nothing) */
static void bytes_alloc(cf_dataset *d) {
    size_t n = (size_t)d->rows * d->c->train.seq_len;
    if (!d->x) d->x = cf_xmalloc(sizeof(int32_t) * n);
    if (!d->y) d->y = cf_xmalloc(sizeof(int32_t) * n);
}

static int bytes_start(cf_dataset *d, uint64_t seed) {
    const cf_train_config *t = &d->c->train;
    d->seed = seed;
    if (cf_sampler_init(&d->sampler, &d->bytes[CF_SPLIT_TRAIN], t->batch_size, t->seq_len,
                        t->sampling == CF_SAMPLE_ORDERED, seed))
        return -1;
    cf_sampler_shard(&d->sampler, d->rank, d->size);
    bytes_alloc(d);
    return 0;
}


static void bytes_batch(cf_dataset *d, uint64_t index, cf_batch *b) {
    CF_ASSERT(d->x && d->y, "bytes_batch before bytes_start");
    cf_sampler_batch(&d->sampler, index, d->x, d->y);
    int T = d->c->train.seq_len;
    *b = (cf_batch){.B = d->rows, .T = T, .x = d->x, .y = d->y, .tokens = (int64_t)d->rows * d->size * T};
}

static void bytes_synthetic(cf_dataset *d, cf_batch *b) {
    bytes_alloc(d);
    int T = d->c->train.seq_len, V = d->c->model.vocab_size;
    cf_rng r;
    cf_rng_seed(&r, 1);
    for (int i = 0; i < d->rows * T; i++) {
        d->x[i] = (int32_t)(cf_rng_next(&r) % V);
        d->y[i] = (int32_t)(cf_rng_next(&r) % V);
    }
    *b = (cf_batch){.B = d->rows, .T = T, .x = d->x, .y = d->y, .tokens = (int64_t)d->rows * d->size * T};
}

static void bytes_note(const cf_dataset *d) { (void)d; }

static void bytes_describe(const cf_dataset *d, char *buf, size_t size) {
    const cf_train_config *t = &d->c->train;
    snprintf(buf, size, "%lld tokens", (long long)t->batch_size * t->seq_len * t->grad_accum);
}

static void bytes_close(cf_dataset *d) {
    for (int s = 0; s < CF_SPLIT_COUNT; s++) cf_bytes_close(&d->bytes[s]);
    free(d->x);
    free(d->y);
}

static const cf_data_kind bytes_kind = {
    .name = "bytes", .data_parallel = 1, .open = bytes_open, .start = bytes_start, .batch = bytes_batch,
    .synthetic = bytes_synthetic, .note = bytes_note, .describe_step = bytes_describe, .close = bytes_close,
};

/* ---- pairs: an encoder-decoder reads (source, target) pairs, cut to train.seq_len tokens a side - */
static int pairs_open(cf_dataset *d) {
    const cf_train_config *t = &d->c->train;
    int T = t->seq_len;
    if (t->sampling == CF_SAMPLE_ORDERED)
        return cf_set_error("train.sampling: \"ordered\" reads byte streams; encoder_decoder samples pairs at random");
    if (T < 2) return cf_set_error("train.seq_len: encoder_decoder needs at least 2 tokens a side (a byte and EOS)");
    if ((int64_t)t->batch_size * t->bucket_pool > (1 << 24))
        return cf_set_error("train.bucket_pool: batch_size x bucket_pool must be at most %d (got %d x %d)", 1 << 24,
                            t->batch_size, t->bucket_pool);
    for (int s = 0; s < CF_SPLIT_COUNT; s++) {
        if (s != CF_SPLIT_TRAIN && !split_path(d, s)[0]) continue;
        if (cf_pairs_load(&d->pairs[s], split_path(d, s), T)) {
            char msg[1200];
            snprintf(msg, sizeof msg, "%s", cf_error_msg());
            return cf_set_error("%s: %s", cf_split_names[s], msg);
        }
    }
    return 0;
}

static void pairs_alloc(cf_dataset *d) {
    const cf_train_config *t = &d->c->train;
    if (!d->pb.cap_B) cf_s2s_batch_alloc(&d->pb, t->batch_size, t->seq_len);
    if (!d->pool) d->pool = cf_xmalloc(sizeof(int) * (size_t)t->batch_size * t->bucket_pool);
}

static int pairs_start(cf_dataset *d, uint64_t seed) {
    d->seed = seed;
    pairs_alloc(d);
    return 0;
}

static void pairs_batch(cf_dataset *d, uint64_t index, cf_batch *b) {
    const cf_train_config *t = &d->c->train;
    cf_pairs_sample(&d->pairs[CF_SPLIT_TRAIN], d->seed, index, d->rows, t->seq_len, t->bucket_pool, d->pool, &d->pb);
    *b = (cf_batch){.B = d->pb.B, .T = d->pb.T, .pairs = &d->pb, .tokens = d->pb.src_tokens + d->pb.tgt_tokens};
}

/* B pairs of seq_len tokens a side: random bytes, no padding */
static void pairs_synthetic(cf_dataset *d, cf_batch *b) {
    pairs_alloc(d);
    int B = d->rows, T = d->c->train.seq_len, V = d->c->model.vocab_size;
    cf_s2s_batch *sb = &d->pb;
    sb->B = B;
    sb->S = sb->T = T;
    cf_rng r;
    cf_rng_seed(&r, 1);
    int32_t prev = 0;
    for (int i = 0; i < B * T; i++) {
        int32_t x = (int32_t)(cf_rng_next(&r) % V), y = (int32_t)(cf_rng_next(&r) % V);
        int last = i % T == T - 1;
        sb->src[i] = last ? CF_TOK_EOS : x % 256;
        sb->tgt_in[i] = i % T == 0 ? CF_TOK_BOS : prev % 256;
        sb->tgt_out[i] = last ? CF_TOK_EOS : y % 256;
        sb->src_keep[i] = 1;
        prev = y;
    }
    sb->src_tokens = sb->tgt_tokens = (int64_t)B * T;
    *b = (cf_batch){.B = B, .T = T, .pairs = sb, .tokens = sb->src_tokens + sb->tgt_tokens};
}

/* said once the run is set up (so that a failed set-up prints its one error line alone) */
static void pairs_note(const cf_dataset *d) {
    for (int s = 0; s < CF_SPLIT_COUNT; s++) {
        const cf_pairs *p = &d->pairs[s];
        if (p->n && (p->n_cut_src || p->n_cut_tgt))
            fprintf(stderr, "cformer: %s: %s: %d pairs; %d sources (longest %d bytes) and %d targets (longest %d bytes) "
                            "are cut to train.seq_len %d tokens\n", cf_split_names[s], p->path, p->n, p->n_cut_src,
                    p->max_src_len, p->n_cut_tgt, p->max_tgt_len, p->max_tokens);
    }
}

static void pairs_describe(const cf_dataset *d, char *buf, size_t size) {
    snprintf(buf, size, "%d pairs", d->c->train.batch_size * d->c->train.grad_accum);
}

static void pairs_close(cf_dataset *d) {
    for (int s = 0; s < CF_SPLIT_COUNT; s++) cf_pairs_free(&d->pairs[s]);
    cf_s2s_batch_free(&d->pb);
    free(d->pool);
}

static const cf_data_kind pairs_kind = {
    .name = "pairs", .data_parallel = 0, .open = pairs_open, .start = pairs_start, .batch = pairs_batch,
    .synthetic = pairs_synthetic, .note = pairs_note, .describe_step = pairs_describe, .close = pairs_close,
};

/* ---- the table ------------------------------------------------------------------------------------ */
const cf_data_kind *const cf_data_kinds[CF_ARCH_COUNT] = {
    [CF_ARCH_DECODER] = &bytes_kind,
    [CF_ARCH_ENCODER_DECODER] = &pairs_kind,
};
_Static_assert(sizeof cf_data_kinds / sizeof *cf_data_kinds == CF_ARCH_COUNT, "one data kind per model.arch");

int cf_dataset_open(cf_dataset *d, const cf_config *c, int rank, int size, int open_files) {
    memset(d, 0, sizeof *d);
    d->kind = cf_data_kinds[c->model.arch];
    d->c = c;
    d->rank = rank;
    d->size = size;
    int B = c->train.batch_size;
    if (B % size)
        return cf_set_error("train.batch_size: %d does not split over %d MPI ranks (each rank trains on batch_size / "
                            "ranks rows of every batch; use a multiple of %d)", B, size, size);
    if (size > 1 && !d->kind->data_parallel)
        return cf_set_error("model.arch: \"%s\" does not train data-parallel yet (%d MPI ranks); run it as one process",
                            cf_arch_names[c->model.arch], size);
    d->rows = B / size;
    return open_files ? d->kind->open(d) : 0;
}

void cf_dataset_close(cf_dataset *d) {
    if (d->kind) d->kind->close(d);
    memset(d, 0, sizeof *d);
}

int cf_dataset_has(const cf_dataset *d, cf_split s) { return d->bytes[s].n > 0 || d->pairs[s].n > 0; }
