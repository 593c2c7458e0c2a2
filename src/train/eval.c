/* Bits per byte with sliding windows (docs/attention.md section 9): every byte after the first is
 * scored exactly once, and after the first window each scored byte sees at least ctx - stride
 * bytes of context. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdio.h>
#include "cformer/decode.h"
#include "cformer/dist.h"
#include "cformer/train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* nats of the scored targets of one row: positions [from, len) of the window */
static double row_nats(const float *logits, const int32_t *y, int from, int len, int V) {
    double s = 0;
    for (int t = from; t < len; t++) {
        const float *z = logits + (size_t)t * V;
        float mx = z[0];
        for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)z[v] - mx);
        s += mx + log(sum) - z[y[t]];
    }
    return s;
}

/* Recurrent models (xl, infini) read the file as Transformer-XL's evaluation does: `batch`
 * contiguous columns, each walked in order in segments of T bytes with the state carried from one
 * segment to the next, so a byte's context is everything before it in its column (as far as the
 * memory reaches). Every byte after the first is scored once: column c holds targets
 * [1 + c N / cols, 1 + (c + 1) N / cols) of the N = n - 1; the columns' last segments are padded
 * at the end, which a causal model cannot see. The model's training state is left alone. */
static int eval_stream(cf_model *m, cf_ctx *ctx, const uint8_t *data, size_t n, int T, int batch,
                       cf_eval_result *r) {
    double t0 = now_s();
    size_t N = n - 1;
    int cols = batch, V = m->cfg.vocab_size;
    if ((size_t)cols * (size_t)T > N) cols = N / (size_t)T > 0 ? (int)(N / (size_t)T) : 1;
    size_t *start = cf_xmalloc(sizeof(size_t) * (size_t)(cols + 1));
    for (int c = 0; c <= cols; c++) start[c] = 1 + (size_t)c * N / (size_t)cols;
    size_t longest = 0;
    for (int c = 0; c < cols; c++) longest = start[c + 1] - start[c] > longest ? start[c + 1] - start[c] : longest;
    int32_t *x = cf_xmalloc(sizeof(int32_t) * (size_t)cols * T), *y = cf_xmalloc(sizeof(int32_t) * (size_t)cols * T);
    int *len = cf_xmalloc(sizeof(int) * (size_t)cols);
    double *part = cf_xmalloc(sizeof(double) * (size_t)cols);
    cf_rec_state mine = {0}, *saved_state = m->state;
    int saved_stream = m->stream, saved_grad = ctx->grad_enabled, saved_train = ctx->training;
    m->state = &mine;
    m->stream = 1;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    double nats = 0;
    int64_t scored = 0;
    for (size_t off = 0; off < longest; off += (size_t)T) {
        for (int c = 0; c < cols; c++) {
            size_t have = start[c + 1] - start[c], j0 = start[c] + off;   /* first target of this segment */
            len[c] = off < have ? (int)(have - off < (size_t)T ? have - off : (size_t)T) : 0;
            for (int t = 0; t < T; t++) {
                int real = t < len[c];
                x[c * T + t] = real ? data[j0 + t - 1] : 0;
                y[c * T + t] = real ? data[j0 + t] : 0;
            }
            scored += len[c];
        }
        cf_ctx_begin(ctx, 0);
        cf_tensor *logits = cf_model_logits(m, ctx, x, cols, T);
        #pragma omp parallel for schedule(static)
        for (int c = 0; c < cols; c++) part[c] = row_nats(logits->data + (size_t)c * T * V, y + (size_t)c * T, 0, len[c], V);
        for (int c = 0; c < cols; c++) nats += part[c];
    }
    cf_rec_state_free(m, &mine);
    m->state = saved_state;
    m->stream = saved_stream;
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    free(start); free(x); free(y); free(len); free(part);
    r->bytes = scored;
    r->bits = nats / log(2.0);
    r->bpb = r->bits / (double)scored;
    r->seconds = now_s() - t0;
    return 0;
}

int cf_eval_cached(cf_model *m, cf_ctx *ctx, const uint8_t *data, size_t n, int span, int reset_every_call,
                   cf_eval_result *r) {
    memset(r, 0, sizeof *r);
    if (n < 2) return cf_set_error("eval: need at least 2 bytes, got %zu", n);
    double t0 = now_s();
    enum { ROWS = 64 };
    cf_gen g;
    if (cf_gen_init(&g, m, ctx, span, ROWS)) return -1;
    int V = m->cfg.vocab_size;
    int32_t x[ROWS], y[ROWS];
    double nats = 0;
    size_t in_call = 0;
    for (size_t i = 0; i + 1 < n;) {
        /* a bounded context (absolute positions) and the reset ablation both end at span bytes */
        size_t k = n - 1 - i < ROWS ? n - 1 - i : ROWS;
        if ((g.bounded || reset_every_call) && k > (size_t)span - in_call) k = (size_t)span - in_call;
        for (size_t j = 0; j < k; j++) { x[j] = data[i + j]; y[j] = data[i + j + 1]; }
        nats += row_nats(cf_gen_feed(&g, x, (int)k), y, 0, (int)k, V);
        i += k;
        in_call += k;
        if (in_call == (size_t)span) {
            in_call = 0;
            if (g.bounded || reset_every_call) cf_gen_reset(&g);
        }
    }
    cf_gen_free(&g);
    r->bytes = (int64_t)n - 1;
    r->bits = nats / log(2.0);
    r->bpb = r->bits / (double)r->bytes;
    r->seconds = now_s() - t0;
    return 0;
}

int cf_eval_bpb(cf_model *m, cf_ctx *ctx, const uint8_t *data, size_t n, int ctx_len, int stride,
                int batch, cf_eval_result *r) {
    memset(r, 0, sizeof *r);
    if (n < 2) return cf_set_error("eval: need at least 2 bytes, got %zu", n);
    if (cf_model_is_recurrent(m)) return eval_stream(m, ctx, data, n, ctx_len, batch, r);
    if (stride <= 0 || stride > ctx_len) return cf_set_error("eval: stride %d must be in 1..ctx %d", stride, ctx_len);
    double t0 = now_s();
    int L = (int64_t)n - 1 < ctx_len ? (int)(n - 1) : ctx_len, V = m->cfg.vocab_size;
    int32_t *x = cf_xmalloc(sizeof(int32_t) * (size_t)batch * L), *y = cf_xmalloc(sizeof(int32_t) * (size_t)batch * L);
    int *from = cf_xmalloc(sizeof(int) * (size_t)batch);
    int saved_grad = ctx->grad_enabled, saved_train = ctx->training;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    double nats = 0;
    int64_t scored = 0;
    size_t e = (size_t)L;                 /* end (exclusive, in target positions + 1) of the next window */
    size_t prev = 0;                      /* targets below prev + 1 are scored already */
    while (prev < n - 1) {
        int rows = 0;
        while (rows < batch && prev < n - 1) {
            size_t st = e - (size_t)L;    /* inputs data[st, st + L), targets data[st + 1, st + L + 1) */
            for (int t = 0; t < L; t++) { x[rows * L + t] = data[st + t]; y[rows * L + t] = data[st + t + 1]; }
            from[rows] = (int)(prev - st);
            scored += (int64_t)(e - prev);
            prev = e;
            e = e + (size_t)stride < n - 1 ? e + (size_t)stride : n - 1;
            rows++;
        }
        cf_ctx_begin(ctx, 0);
        cf_tensor *logits = cf_model_logits(m, ctx, x, rows, L);
        double part[rows];
        #pragma omp parallel for schedule(static)
        for (int b = 0; b < rows; b++)
            part[b] = row_nats(logits->data + (size_t)b * L * V, y + (size_t)b * L, from[b], L, V);
        for (int b = 0; b < rows; b++) nats += part[b];
    }
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    free(x); free(y); free(from);
    r->bytes = scored;
    r->bits = nats / log(2.0);
    r->bpb = r->bits / (double)scored;
    r->seconds = now_s() - t0;
    return 0;
}

/* ---- encoder-decoder: bits per target token and exact match (pairs.h) ------------------------------ */

/* nats of the real targets of row b (those that are not padding) */
static double s2s_row_nats(const float *logits, const int32_t *y, int T, int V) {
    double s = 0;
    for (int t = 0; t < T; t++) {
        if (y[t] == CF_TOK_PAD) continue;
        s += row_nats(logits + (size_t)t * V, y + t, 0, 1, V);
    }
    return s;
}

int cf_s2s_eval(cf_model *m, cf_ctx *ctx, const cf_pairs *p, int64_t max_tokens, int batch, int seq_len,
                cf_eval_result *r) {
    memset(r, 0, sizeof *r);
    if (!m->ed) return cf_set_error("eval: pairs need an encoder-decoder model (model.arch \"encoder_decoder\")");
    if (batch < 1 || seq_len < 2) return cf_set_error("eval: batch %d and seq_len %d must be >= 1 and >= 2", batch, seq_len);
    double t0 = now_s();
    int V = m->cfg.vocab_size;
    cf_s2s_batch b;
    cf_s2s_batch_alloc(&b, batch, seq_len);
    uint8_t *outbuf = cf_xmalloc((size_t)batch * seq_len), **out = cf_xmalloc(sizeof *out * (size_t)batch);
    const uint8_t **src = cf_xmalloc(sizeof *src * (size_t)batch);
    int *src_len = cf_xmalloc(sizeof(int) * (size_t)batch), *out_len = cf_xmalloc(sizeof(int) * (size_t)batch);
    double *part = cf_xmalloc(sizeof(double) * (size_t)batch);
    for (int i = 0; i < batch; i++) out[i] = outbuf + (size_t)i * seq_len;
    int saved_grad = ctx->grad_enabled, saved_train = ctx->training, rc = 0;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    double nats = 0;
    int64_t scored = 0, pairs = 0, exact = 0;
    for (int i0 = 0; i0 < p->n && !(max_tokens > 0 && scored >= max_tokens); i0 += batch) {
        int n = p->n - i0 < batch ? p->n - i0 : batch;
        for (int i = 0; i < n; i++) b.rows[i] = i0 + i;
        cf_pairs_batch(p, b.rows, n, seq_len, &b);
        cf_ctx_begin(ctx, 0);
        cf_tensor *logits = cf_encdec_logits(m, ctx, &b);
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++)
            part[i] = s2s_row_nats(logits->data + (size_t)i * b.T * V, b.tgt_out + (size_t)i * b.T, b.T, V);
        for (int i = 0; i < n; i++) nats += part[i];
        scored += b.tgt_tokens;
        for (int i = 0; i < n; i++) {
            src[i] = cf_pairs_src(p, i0 + i);
            src_len[i] = cf_pairs_src_len(p, i0 + i);
        }
        if ((rc = cf_translate_greedy(m, ctx, src, src_len, n, seq_len - 1, seq_len, out, out_len))) break;
        for (int i = 0; i < n; i++) {
            int len = cf_pairs_tgt_len(p, i0 + i);
            exact += out_len[i] == len && !memcmp(out[i], cf_pairs_tgt(p, i0 + i), (size_t)len);
        }
        pairs += n;
    }
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    free(outbuf); free(out); free(src); free(src_len); free(out_len); free(part);
    cf_s2s_batch_free(&b);
    if (rc) return -1;
    r->bytes = scored;
    r->bits = nats / log(2.0);
    r->bpb = r->bits / (double)scored;
    r->pairs = pairs;
    r->exact = (double)exact / (double)pairs;
    r->seconds = now_s() - t0;
    return 0;
}

/* ---- evaluation split across MPI ranks ------------------------------------------------------------ */
/* Bits per byte of bytes [0, n) of data across the N ranks (collective): each rank scores a contiguous share of what one
 * process scores, and the bits and bytes are summed.
 *
 * Windowed models (eval.c: cf_eval_bpb): window k ends at e_k = min(L + k stride, n - 1) (L = the
 * context, or n - 1 when shorter) and scores the targets (e_{k-1}, e_k]. Rank r takes windows
 * [k0, k1) of the K and calls cf_eval_bpb on bytes [e_k0 - L, e_{k1-1}]: its first window is exactly
 * window k0 of one process, and the following ones are windows k0 + 1 ... k1 - 1. Being a first
 * window, it scores all of its L targets, and the X = L - (e_k0 - e_{k0-1}) targets before
 * e_{k0-1} + 1 belong to the previous rank: a second call on bytes [e_k0 - L, e_k0 - L + X] scores
 * exactly those (with the same context: the model is causal), and is subtracted. Every byte is
 * scored once, with one process's context, so the result equals one process's up to float
 * rounding (summation order, and GEMMs over other row counts).
 * Recurrent models (xl, infini: cf_eval_bpb walks `batch` columns in order with their state): rank r
 * takes columns [c0, c1) of the batch and calls cf_eval_bpb on their bytes with c1 - c0 columns;
 * the columns' bounds can differ from one process's by a byte, and so can the result, slightly. */
static int eval_bytes_split(cf_model *m, cf_ctx *ctx, const cf_config *c, int rank, int N, const uint8_t *data,
                            size_t n, cf_eval_result *res) {
    int B = c->train.batch_size, ctx_len = c->eval.ctx, stride = c->eval.stride, rc = 0;
    memset(res, 0, sizeof *res);
    double t0 = now_s(), bits = 0, bytes = 0;
    cf_eval_result part;
    if (n < 2 || stride <= 0 || stride > ctx_len) {
        /* an error for every rank alike: let one process's function say it */
        return cf_eval_bpb(m, ctx, data, n, ctx_len, stride, B, res);
    }
    if (cf_model_is_recurrent(m)) {
        size_t tot = n - 1;
        int cols = B;
        if ((size_t)cols * (size_t)ctx_len > tot) cols = tot / (size_t)ctx_len > 0 ? (int)(tot / (size_t)ctx_len) : 1;
        int c0 = (int)((int64_t)cols * rank / N), c1 = (int)((int64_t)cols * (rank + 1) / N);
        if (c1 > c0) {
            size_t s0 = 1 + (size_t)c0 * tot / (size_t)cols, s1 = 1 + (size_t)c1 * tot / (size_t)cols;
            rc = cf_eval_bpb(m, ctx, data + s0 - 1, s1 - s0 + 1, ctx_len, stride, c1 - c0, &part);
            bits = part.bits;
            bytes = (double)part.bytes;
        }
    } else {
        size_t L = n - 1 < (size_t)ctx_len ? n - 1 : (size_t)ctx_len, S = (size_t)stride;
        size_t K = 1 + (n - 1 - L + S - 1) / S;
#define WIN_END(k) (L + (size_t)(k) * S < n - 1 ? L + (size_t)(k) * S : n - 1)
        size_t k0 = K * (size_t)rank / (size_t)N, k1 = K * (size_t)(rank + 1) / (size_t)N;
        if (k1 > k0) {
            size_t off = WIN_END(k0) - L, end = WIN_END(k1 - 1);
            rc = cf_eval_bpb(m, ctx, data + off, end + 1 - off, ctx_len, stride, B, &part);
            bits = part.bits;
            bytes = (double)part.bytes;
            size_t X = k0 ? L - (WIN_END(k0) - WIN_END(k0 - 1)) : 0;
            if (!rc && X > 0) {
                rc = cf_eval_bpb(m, ctx, data + off, X + 1, ctx_len, stride, B, &part);
                bits -= part.bits;
                bytes -= (double)part.bytes;
            }
        }
#undef WIN_END
    }
    if (rc) return -1;
    double v[2] = {bits, bytes}, secs = now_s() - t0;
    cf_dist_sum_f64(v, 2);
    cf_dist_max_f64(&secs, 1);
    res->bits = v[0];
    res->bytes = (int64_t)(v[1] + 0.5);
    res->bpb = res->bits / v[1];
    res->seconds = secs;
    return 0;
}

/* ---- a split of a run's data, by data kind --------------------------------------------------------- */
static int eval_bytes(cf_model *m, cf_ctx *ctx, const cf_dataset *d, cf_split s, size_t limit, cf_eval_result *res) {
    const cf_config *c = d->c;
    const cf_bytes *b = &d->bytes[s];
    size_t n = limit && limit < b->n ? limit : b->n;
    if (d->size > 1) return eval_bytes_split(m, ctx, c, d->rank, d->size, b->data, n, res);
    return cf_eval_bpb(m, ctx, b->data, n, c->eval.ctx, c->eval.stride, c->train.batch_size, res);
}

static int eval_pairs(cf_model *m, cf_ctx *ctx, const cf_dataset *d, cf_split s, size_t limit, cf_eval_result *res) {
    const cf_config *c = d->c;
    return cf_s2s_eval(m, ctx, &d->pairs[s], (int64_t)limit, c->train.batch_size, c->train.seq_len, res);
}

static void bench_bytes(const cf_model *m, const cf_dataset *d, const char *split, const cf_eval_result *e) {
    const cf_config *c = d->c;
    if (cf_model_is_recurrent(m))   /* streamed in order with the state: no stride */
        printf("BENCH eval split=%s bpb=%.4f bytes=%lld ctx=%d columns=%d tokens_per_s=%.0f\n", split, e->bpb,
               (long long)e->bytes, c->eval.ctx, c->train.batch_size, e->bytes / e->seconds);
    else
        printf("BENCH eval split=%s bpb=%.4f bytes=%lld ctx=%d stride=%d tokens_per_s=%.0f\n", split, e->bpb,
               (long long)e->bytes, c->eval.ctx, c->eval.stride, e->bytes / e->seconds);
}

static void bench_pairs(const cf_model *m, const cf_dataset *d, const char *split, const cf_eval_result *e) {
    (void)m; (void)d;
    printf("BENCH eval split=%s bpb=%.4f exact_match=%.4f pairs=%lld tokens=%lld seconds=%.1f\n", split, e->bpb,
           e->exact, (long long)e->pairs, (long long)e->bytes, e->seconds);
}

typedef struct eval_kind {
    int  (*eval)(cf_model *m, cf_ctx *ctx, const cf_dataset *d, cf_split s, size_t limit, cf_eval_result *res);
    void (*bench)(const cf_model *m, const cf_dataset *d, const char *split, const cf_eval_result *e);
} eval_kind;

static const eval_kind eval_kinds[CF_ARCH_COUNT] = {
    [CF_ARCH_DECODER] = {eval_bytes, bench_bytes},
    [CF_ARCH_ENCODER_DECODER] = {eval_pairs, bench_pairs},
};
_Static_assert(sizeof eval_kinds / sizeof *eval_kinds == CF_ARCH_COUNT, "one evaluation per model.arch");

int cf_eval_dataset(cf_model *m, cf_ctx *ctx, const cf_dataset *d, cf_split s, size_t limit, cf_eval_result *res) {
    return eval_kinds[d->c->model.arch].eval(m, ctx, d, s, limit, res);
}

void cf_eval_print_bench(const cf_model *m, const cf_dataset *d, const char *split, const cf_eval_result *e) {
    eval_kinds[d->c->model.arch].bench(m, d, split, e);
}
