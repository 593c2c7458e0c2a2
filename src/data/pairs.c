/* Sequence-to-sequence pair files and their batches (pairs.h, encdec.h for the token layout). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/data.h"
#include "cformer/pairs.h"

int64_t cf_pairs_unescape(const char *in, size_t n, uint8_t *out, size_t *bad) {
    int64_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] != '\\') { out[k++] = (uint8_t)in[i]; continue; }
        char e = i + 1 < n ? in[i + 1] : 0;
        if (e == 't') out[k++] = '\t';
        else if (e == 'n') out[k++] = '\n';
        else if (e == '\\') out[k++] = '\\';
        else { if (bad) *bad = i; return -1; }
        i++;
    }
    return k;
}

size_t cf_pairs_escape(const uint8_t *in, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = in[i];
        if (c == '\t') { out[k++] = '\\'; out[k++] = 't'; }
        else if (c == '\n') { out[k++] = '\\'; out[k++] = 'n'; }
        else if (c == '\\') { out[k++] = '\\'; out[k++] = '\\'; }
        else out[k++] = (char)c;
    }
    out[k] = 0;
    return k;
}

void cf_pairs_free(cf_pairs *p) {
    free(p->bytes);
    free(p->off);
    free(p->len);
    memset(p, 0, sizeof *p);
}

int cf_pairs_load(cf_pairs *p, const char *path, int max_tokens) {
    memset(p, 0, sizeof *p);
    snprintf(p->path, sizeof p->path, "%s", path);
    if (max_tokens < 2) return cf_set_error("%s: a token limit of %d leaves no room for a byte and EOS", path, max_tokens);
    cf_bytes f;
    if (cf_bytes_open(&f, path)) return -1;
    const char *text = (const char *)f.data;
    size_t n = f.n;
    /* decoded fields are never longer than the file, and there are at most n / 1 + 1 lines */
    size_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    p->bytes = cf_xmalloc(n);
    p->off = cf_xmalloc(2 * lines * sizeof *p->off);
    p->len = cf_xmalloc(2 * lines * sizeof *p->len);
    p->max_tokens = max_tokens;
    int64_t used = 0;
    int rc = 0;
    size_t line_no = 0;
    for (size_t at = 0; at < n && !rc;) {
        line_no++;
        const char *line = text + at, *nl = memchr(line, '\n', n - at);
        size_t len = nl ? (size_t)(nl - line) : n - at;
        at += len + (nl ? 1 : 0);
        const char *tab = memchr(line, '\t', len);
        if (!tab) {
            rc = cf_set_error("%s:%zu: no TAB between source and target%s", path, line_no, len ? "" : " (empty line)");
            break;
        }
        size_t ls = (size_t)(tab - line), lt = len - ls - 1;
        if (memchr(tab + 1, '\t', lt)) {
            rc = cf_set_error("%s:%zu: a second TAB (write a TAB inside a field as \\t)", path, line_no);
            break;
        }
        const char *field[2] = {line, tab + 1};
        size_t flen[2] = {ls, lt};
        for (int s = 0; s < 2; s++) {
            size_t bad = 0;
            int64_t k = cf_pairs_unescape(field[s], flen[s], p->bytes + used, &bad);
            if (k < 0) {
                size_t col = (size_t)(field[s] - line) + bad + 1;
                rc = cf_set_error("%s:%zu:%zu: bad escape (only \\t, \\n and \\\\ exist)", path, line_no, col);
                break;
            }
            if (k > INT32_MAX / 2) { rc = cf_set_error("%s:%zu: a field longer than 1 GB", path, line_no); break; }
            p->off[2 * p->n + s] = used;
            p->len[2 * p->n + s] = (int32_t)k;
            used += k;
        }
        if (rc) break;
        int i = p->n++;
        int ls_b = p->len[2 * i], lt_b = p->len[2 * i + 1];
        if (ls_b > p->max_src_len) p->max_src_len = ls_b;
        if (lt_b > p->max_tgt_len) p->max_tgt_len = lt_b;
        p->n_cut_src += ls_b + 1 > max_tokens;       /* bytes + EOS */
        p->n_cut_tgt += lt_b + 1 > max_tokens;       /* BOS + bytes, bytes + EOS */
    }
    cf_bytes_close(&f);
    if (!rc && p->n == 0) rc = cf_set_error("%s: no pairs", path);
    if (rc) {
        char msg[1200];
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        cf_pairs_free(p);
        return cf_set_error("%s", msg);
    }
    return 0;
}

/* ---- batches ---------------------------------------------------------------------------------------
 * Layout (encdec.h): src = s EOS, tgt_in = BOS t, tgt_out = t EOS, each cut to L = max_tokens: a long
 * source keeps L - 1 bytes and its EOS; a long target keeps tgt_out = its first L bytes (no EOS) and
 * tgt_in = BOS and the first L - 1 bytes. */
static int src_tokens(const cf_pairs *p, int i, int L) {
    int n = cf_pairs_src_len(p, i) + 1;
    return n < L ? n : L;
}
static int tgt_tokens(const cf_pairs *p, int i, int L) {
    int n = cf_pairs_tgt_len(p, i) + 1;
    return n < L ? n : L;
}

void cf_pairs_batch(const cf_pairs *p, const int *idx, int n, int L, cf_s2s_batch *b) {
    CF_ASSERT(n >= 1 && n <= b->cap_B && L >= 2 && L <= b->cap_len, "pairs batch: %d rows of %d tokens, capacity %d x %d",
              n, L, b->cap_B, b->cap_len);
    int S = 1, T = 1;
    for (int r = 0; r < n; r++) {
        CF_ASSERT(idx[r] >= 0 && idx[r] < p->n, "pairs batch: pair %d of %d", idx[r], p->n);
        int s = src_tokens(p, idx[r], L), t = tgt_tokens(p, idx[r], L);
        if (s > S) S = s;
        if (t > T) T = t;
    }
    b->B = n;
    b->S = S;
    b->T = T;
    b->src_tokens = b->tgt_tokens = 0;
    for (int r = 0; r < n; r++) {
        int i = idx[r], s = src_tokens(p, i, L), t = tgt_tokens(p, i, L);
        const uint8_t *sb = cf_pairs_src(p, i), *tb = cf_pairs_tgt(p, i);
        int32_t *src = b->src + (size_t)r * S, *in = b->tgt_in + (size_t)r * T, *out = b->tgt_out + (size_t)r * T;
        uint8_t *keep = b->src_keep + (size_t)r * S;
        for (int j = 0; j < s - 1; j++) src[j] = sb[j];
        src[s - 1] = CF_TOK_EOS;
        for (int j = s; j < S; j++) src[j] = CF_TOK_PAD;
        memset(keep, 1, (size_t)s);
        memset(keep + s, 0, (size_t)(S - s));
        int full = cf_pairs_tgt_len(p, i) + 1 <= L;   /* the whole target and its EOS fit */
        in[0] = CF_TOK_BOS;
        for (int j = 1; j < t; j++) in[j] = tb[j - 1];
        for (int j = 0; j < t; j++) out[j] = j < t - 1 || !full ? tb[j] : CF_TOK_EOS;
        for (int j = t; j < T; j++) in[j] = out[j] = CF_TOK_PAD;
        b->src_tokens += s;
        b->tgt_tokens += t;
    }
}

int cf_pairs_pick(const cf_pairs *p, uint64_t seed, uint64_t index, int r) {
    return (int)(cf_mix64(cf_rng_key(seed, index, (uint64_t)r)) % (uint64_t)p->n);
}

/* Sort order of the pool: target tokens, source tokens, pair index. A total order (only copies of one
 * pair compare equal), so the sorted pool is the same whatever algorithm sorts it. */
static int pool_less(const cf_pairs *p, int L, int x, int y) {
    int tx = tgt_tokens(p, x, L), ty = tgt_tokens(p, y, L);
    if (tx != ty) return tx < ty;
    int sx = src_tokens(p, x, L), sy = src_tokens(p, y, L);
    if (sx != sy) return sx < sy;
    return x < y;
}

/* heapsort in place: O(n log n) and, unlike the C library's qsort, never allocates (this runs in the
 * training step) */
static void sift_down(const cf_pairs *p, int L, int *a, int root, int n) {
    for (;;) {
        int c = 2 * root + 1;
        if (c >= n) return;
        if (c + 1 < n && pool_less(p, L, a[c], a[c + 1])) c++;
        if (!pool_less(p, L, a[root], a[c])) return;
        int t = a[root]; a[root] = a[c]; a[c] = t;
        root = c;
    }
}

static void pool_sort(const cf_pairs *p, int L, int *a, int n) {
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(p, L, a, i, n);
    for (int end = n - 1; end > 0; end--) {
        int t = a[0]; a[0] = a[end]; a[end] = t;
        sift_down(p, L, a, 0, end);
    }
}

void cf_pairs_sample(const cf_pairs *p, uint64_t seed, uint64_t index, int B, int L, int pool, int *scratch,
                     cf_s2s_batch *b) {
    CF_ASSERT(B >= 1 && B <= b->cap_B && pool >= 1, "pairs sample: %d rows, capacity %d, pool %d", B, b->cap_B, pool);
    if (pool == 1) {
        for (int r = 0; r < B; r++) b->rows[r] = cf_pairs_pick(p, seed, index, r);
        cf_pairs_batch(p, b->rows, B, L, b);
        return;
    }
    int n = B * pool;
    for (int r = 0; r < n; r++) scratch[r] = cf_pairs_pick(p, seed, index, r);
    pool_sort(p, L, scratch, n);
    int run = (int)(cf_mix64(cf_rng_key(seed, index, (uint64_t)n)) % (uint64_t)pool);
    cf_pairs_batch(p, scratch + (size_t)run * B, B, L, b);
}
