/* Sampling bytes from a decoder: temperature and top-k, seeded. Each new byte re-runs the model
 * on the last max_seq_len bytes (no key/value cache: generation is not the hot path here). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/decode.h"

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

int cf_sample(cf_model *m, cf_ctx *ctx, uint8_t *out, int n_prompt, int n_new, float temperature, int top_k,
              uint64_t seed) {
    int V = m->cfg.vocab_size, W = m->cfg.max_seq_len;
    if (V > 256) return cf_set_error("sample: vocab_size %d is not byte-level", V);
    cf_rng r;
    cf_rng_seed(&r, seed);
    int32_t *ids = cf_xmalloc(sizeof(int32_t) * (size_t)W);
    float *p = cf_xmalloc(sizeof(float) * (size_t)V), *sorted = cf_xmalloc(sizeof(float) * (size_t)V);
    int saved_grad = ctx->grad_enabled, saved_train = ctx->training;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    int n = n_prompt;
    if (n == 0) out[n++] = '\n', n_new--;          /* an empty prompt starts from a newline */
    for (int i = 0; i < n_new; i++) {
        int T = n < W ? n : W;
        for (int t = 0; t < T; t++) ids[t] = out[n - T + t];
        cf_ctx_begin(ctx, 0);
        const float *z = cf_model_logits(m, ctx, ids, 1, T)->data + (size_t)(T - 1) * V;
        int next = 0;
        if (temperature <= 0) {
            for (int v = 1; v < V; v++) if (z[v] > z[next]) next = v;
        } else {
            float cut = -INFINITY;
            if (top_k > 0 && top_k < V) {
                memcpy(sorted, z, sizeof(float) * (size_t)V);
                qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
                cut = sorted[top_k - 1];
            }
            float mx = -INFINITY;
            for (int v = 0; v < V; v++) if (z[v] > mx) mx = z[v];
            double sum = 0;
            for (int v = 0; v < V; v++) { p[v] = z[v] >= cut ? expf((z[v] - mx) / temperature) : 0.0f; sum += p[v]; }
            double u = cf_rng_float(&r) * sum, acc = 0;
            next = V - 1;
            for (int v = 0; v < V; v++) { acc += p[v]; if (p[v] > 0 && u < acc) { next = v; break; } }
        }
        out[n++] = (uint8_t)next;
    }
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    free(ids); free(p); free(sorted);
    return 0;
}
