/* Incremental decoding for the softmax variants (full, window, sparse, infini's local part): a
 * layer's keys and values per head in a ring of rows, and one query at a time against the rows
 * its pattern lets it see. The variants say which rows (their keys functions); this file does the
 * arithmetic: scores (with ALiBi's biases when the layer has them), a two-pass softmax, the
 * weighted sum of values. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "cformer/kernels.h"
#include "cache.h"
#include "../kernels/attn_tiles.h"

void cf_cache_put(cf_attn_cache *c, int64_t p, const float *k, const float *v) {
    int r = cf_cache_row(c, p), Dh = c->Dh;
    for (int h = 0; h < c->Hkv; h++) {
        memcpy(c->k + ((int64_t)h * c->rows + r) * Dh, k + (int64_t)h * Dh, sizeof(float) * Dh);
        memcpy(c->v + ((int64_t)h * c->rows + r) * Dh, v + (int64_t)h * Dh, sizeof(float) * Dh);
    }
}

void cf_cache_mix(float *s, int n, const float *V, int ldv, const int32_t *rows, int Dh, float *out) {
    memset(out, 0, sizeof(float) * Dh);
    if (n == 0) return;
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
#ifdef __AVX512F__
    /* e^(s - mx) as 2^((s - mx) log2 e), 16 at a time */
    for (int j = 0; j < n; j += 16) {
        __mmask16 live = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + j), _mm512_set1_ps(mx)),
                                 _mm512_set1_ps(LOG2E));
        _mm512_mask_storeu_ps(s + j, live, exp2_16(t));
    }
#else
    for (int j = 0; j < n; j++) s[j] = expf(s[j] - mx);
#endif
    float sum = 0;
    for (int j = 0; j < n; j++) sum += s[j];
    for (int j = 0; j < n; j++) {
        const float *restrict vr = V + (int64_t)(rows ? rows[j] : j) * ldv;
        float pj = s[j];
        for (int i = 0; i < Dh; i++) out[i] += pj * vr[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < Dh; i++) out[i] *= inv;
}

/* cf_attn_cache_attend for the query at position p, with ALiBi's bias -slope |p - j| on the score
 * of the key at position j (slope 0: none). A ring row r holds the latest position at or before p
 * that is r modulo the ring's length, which for a cache that never wraps is r itself. */
static void attend(const cf_attn_cache *c, int h, const float *q, float scale, const int32_t *rows, int n,
                   float *scores, float *out, float slope, int64_t p) {
    int Dh = c->Dh;
    unsigned csr = flush_subnormals_begin();   /* far keys' weights, as in the training kernels */
    int64_t head = (int64_t)cf_attn_cache_kv_head(c, h) * c->rows * Dh;
    const float *K = c->k + head, *V = c->v + head;
    cf_dot_rows(n, Dh, K, Dh, rows, q, scores);
    int pr = cf_cache_row(c, p);
    for (int j = 0; j < n; j++) {
        scores[j] *= scale;
        if (slope != 0) {
            int back = pr - rows[j];                                /* p minus the key's position */
            scores[j] -= slope * (float)(back < 0 ? back + c->rows : back);
        }
    }
    cf_cache_mix(scores, n, V, Dh, rows, Dh, out);
    flush_subnormals_end(csr);
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
        #pragma omp parallel for schedule(static) if (seen * H * Dh >= CF_CACHE_PAR_MIN)
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
