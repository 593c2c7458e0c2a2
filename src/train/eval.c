/* Bits per byte with sliding windows (ALGORITHMS.md section 7): every byte after the first is
 * scored exactly once, and after the first window each scored byte sees at least ctx - stride
 * bytes of context. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

int cf_eval_bpb(cf_model *m, cf_ctx *ctx, const uint8_t *data, size_t n, int ctx_len, int stride,
                int batch, cf_eval_result *r) {
    memset(r, 0, sizeof *r);
    if (n < 2) return cf_set_error("eval: need at least 2 bytes, got %zu", n);
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
