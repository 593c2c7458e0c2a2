/* Sequence-to-sequence data: byte-level (source, target) pairs for encoder-decoder models.
 *
 * File format (UTF-8 or any bytes; configs/README.md has it too): one pair per line,
 *     SOURCE <TAB> TARGET <LF>
 * with exactly one unescaped TAB per line. Inside SOURCE and TARGET a backslash starts an escape:
 *     \t  TAB        \n  LF        \\  backslash
 * and any other byte after a backslash (or a backslash at the end of a line) is an error. Every
 * other byte, including CR, stands for itself, so any byte string can be written. The last line
 * may lack its LF; an empty line is an error (it would be a pair without its TAB). Either side may
 * be empty. tools/make_seq2seq.py and tools/make_mo_corpus.sh write such files.
 *
 * Loading keeps the full bytes of every pair; the batches cut them to train.seq_len tokens
 * (encdec.h says how), and the load reports how many pairs that cut. Batches are drawn at random:
 * row r of batch `index` is pair (splitmix64 of (seed, index, r)) mod n, so any batch is a pure
 * function of (seed, index) and a resumed run draws exactly the batches it would have drawn. */
#ifndef CFORMER_PAIRS_H
#define CFORMER_PAIRS_H

#include <stddef.h>
#include <stdint.h>
#include "encdec.h"

typedef struct cf_pairs {
    uint8_t *bytes;             /* the decoded bytes of every source and target, back to back */
    int64_t *off;               /* [2n]: pair i's source starts at off[2i], its target at off[2i + 1] */
    int32_t *len;               /* [2n]: their lengths in bytes */
    int      n;                 /* pairs */
    int      max_tokens;        /* the cut the counts below refer to (train.seq_len) */
    int      n_cut_src, n_cut_tgt;   /* pairs whose source / target the cut shortens */
    int      max_src_len, max_tgt_len;   /* longest source and target in bytes, before the cut */
    char     path[1024];
} cf_pairs;

/* Read a pair file. 0, or -1 with cf_error_msg() = "FILE:LINE: what is wrong" (bad escape, no TAB,
 * two TABs, empty file, unreadable). max_tokens (>= 2) is the per-side token limit of the batches. */
int  cf_pairs_load(cf_pairs *p, const char *path, int max_tokens);
void cf_pairs_free(cf_pairs *p);
static inline const uint8_t *cf_pairs_src(const cf_pairs *p, int i) { return p->bytes + p->off[2 * i]; }
static inline const uint8_t *cf_pairs_tgt(const cf_pairs *p, int i) { return p->bytes + p->off[2 * i + 1]; }
static inline int cf_pairs_src_len(const cf_pairs *p, int i) { return p->len[2 * i]; }
static inline int cf_pairs_tgt_len(const cf_pairs *p, int i) { return p->len[2 * i + 1]; }

/* Batch of pairs idx[0..n) (n <= b->cap_B, max_tokens <= b->cap_len), cut to max_tokens tokens a
 * side and padded to the longest source and target of the batch. */
void cf_pairs_batch(const cf_pairs *p, const int *idx, int n, int max_tokens, cf_s2s_batch *b);
/* the pair of row r of batch `index` under seed (see above) */
int  cf_pairs_pick(const cf_pairs *p, uint64_t seed, uint64_t index, int r);
/* The random training batch `index`. pool = 1: rows cf_pairs_pick(p, seed, index, 0..B-1). pool = k > 1
 * (train.bucket_pool): the k B pairs cf_pairs_pick(p, seed, index, 0..kB-1) are sorted by their
 * target and then source token counts (then pair index), cut into k runs of B, and the batch is run
 * number cf_mix64(cf_rng_key(seed, index, kB)) mod k. Every pair of the pool lands in exactly one run,
 * so each row is still a uniform draw, while the rows of a batch have similar lengths and padding
 * shrinks (about 43% of a random batch of 16 en-de messages is padding, 18% with k = 8). scratch
 * holds k B ints. */
void cf_pairs_sample(const cf_pairs *p, uint64_t seed, uint64_t index, int B, int max_tokens, int pool, int *scratch,
                     cf_s2s_batch *b);

/* Escapes of the file format. cf_pairs_unescape decodes n bytes of one field into out (capacity n),
 * returning the decoded length, or -1 at a bad escape (*bad = its offset). cf_pairs_escape encodes
 * into out (capacity 2n + 1, NUL-terminated) and returns the length. */
int64_t cf_pairs_unescape(const char *in, size_t n, uint8_t *out, size_t *bad);
size_t  cf_pairs_escape(const uint8_t *in, size_t n, char *out);

#endif
