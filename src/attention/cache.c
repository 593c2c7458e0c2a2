/* Incremental decoding for the softmax variants (full, window, sparse, infini's local part): a
 * layer's keys and values per head in a ring of rows, and one query at a time against the rows
 * its pattern lets it see. The variants say which rows (their keys functions); this file does the
 * arithmetic: scores (with ALiBi's biases when the layer has them), a two-pass softmax, the
 * weighted sum of values. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "cache.h"

void cf_cache_put(cf_attn_cache *c, int64_t p, const float *k, const float *v) {
    int r = cf_cache_row(c, p), Dh = c->Dh;
    for (int h = 0; h < c->H; h++) {
        memcpy(c->k + ((int64_t)h * c->rows + r) * Dh, k + (int64_t)h * Dh, sizeof(float) * Dh);
        memcpy(c->v + ((int64_t)h * c->rows + r) * Dh, v + (int64_t)h * Dh, sizeof(float) * Dh);
    }
}

/* cf_attn_cache_attend for the query at position p, with ALiBi's bias -slope |p - j| on the score
 * of the key at position j (slope 0: none). A ring row r holds the latest position at or before p
 * that is r modulo the ring's length, which for a cache that never wraps is r itself. */
static void attend(const cf_attn_cache *c, int h, const float *q, float scale, const int32_t *rows, int n,
                   float *scores, float *out, float slope, int64_t p) {
    int Dh = c->Dh;
    const float *K = c->k + (int64_t)h * c->rows * Dh, *V = c->v + (int64_t)h * c->rows * Dh;
    memset(out, 0, sizeof(float) * Dh);
    if (n == 0) return;
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        scores[j] = cf_cache_dot(q, K + (int64_t)rows[j] * Dh, Dh) * scale;
        if (slope != 0) {
            int64_t back = ((p - rows[j]) % c->rows + c->rows) % c->rows;     /* p minus the key's position */
            scores[j] -= slope * (float)back;
        }
        mx = scores[j] > mx ? scores[j] : mx;
    }
    float sum = 0;
    for (int j = 0; j < n; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    for (int j = 0; j < n; j++) {
        const float *vr = V + (int64_t)rows[j] * Dh;
        float pj = scores[j];
        for (int i = 0; i < Dh; i++) out[i] += pj * vr[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < Dh; i++) out[i] *= inv;
}

void cf_attn_cache_attend(const cf_attn_cache *c, int h, const float *q, float scale, const int32_t *rows, int n,
                          float *scores, float *out) {
    attend(c, h, q, scale, rows, n, scores, out, 0.0f, 0);
}

void cf_cache_softmax_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k, const float *v,
                           int ld, int n, float *out, cf_cache_keys_fn keys) {
    int H = c->H, Dh = c->Dh;
    float scale = 1.0f / sqrtf((float)Dh);
    size_t wsf = cf_attn_cache_ws_floats(c->rows, c->Dh);
    for (int r = 0; r < n; r++) {
        int64_t p = c->pos;
        cf_cache_put(c, p, k + (int64_t)r * ld, v + (int64_t)r * ld);
        int64_t seen = p + 1 < c->rows ? p + 1 : c->rows;
        #pragma omp parallel for schedule(static) if (seen * H * Dh >= (1 << 16))
        for (int h = 0; h < H; h++) {
            float *w = c->ws + (size_t)omp_get_thread_num() * wsf;
            int32_t *list = (int32_t *)(w + c->rows);
            int nk = keys(call, c, h, p, list);
            attend(c, h, q + (int64_t)r * ld + (int64_t)h * Dh, scale, list, nk, w,
                   out + (int64_t)r * H * Dh + (int64_t)h * Dh, call->alibi ? cf_alibi_slope(h, H) : 0.0f, p);
        }
        c->pos = p + 1;
    }
}
