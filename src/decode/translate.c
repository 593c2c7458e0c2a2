/* Decoding for encoder-decoder models (encdec.h): the incremental decoder with cached keys and
 * values, greedy decoding of a batch of sources, and beam search.
 *
 * The encoder runs once per source. Each decoder layer keeps the keys and values of every token
 * fed so far (self-attention) and the projected keys and values of the encoder output
 * (cross-attention, computed once), so step t costs O(t + S) per layer and row instead of the full
 * forward's O(t^2 + t S). The projections, norms and MLPs are the training ops run without
 * recording; the one-query attention is the small kernel below. Step t's logits equal those of
 * the full forward pass at position t up to float rounding (tests/test_encdec.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/decode.h"

/* below this many multiply-adds one step's attention stays on the calling thread */
#define ATT_PAR_MIN (1 << 16)

/* One query per (row, head) against n_keys cached keys: out[b, h] = softmax(scale q k^T) v.
 * q row b starts at q + b * q_stride; key/value j of row b at k/v + b * kv_stride + j * H*Dh;
 * keep (NULL = all) [b * keep_stride + j] nonzero = visible. s is [B*H, n_keys] scratch. Each
 * (row, head) is one thread's, so the result does not depend on the thread count. */
static void attend_one(const float *q, int64_t q_stride, const float *k, const float *v, int64_t kv_stride, int n_keys,
                       const uint8_t *keep, int64_t keep_stride, int B, int H, int Dh, float *out, float *s) {
    int C = H * Dh;
    float scale = 1.0f / sqrtf((float)Dh);
    int64_t work = (int64_t)B * H * n_keys * Dh;
    #pragma omp parallel for schedule(static) if (work > ATT_PAR_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *qh = q + b * q_stride + (int64_t)h * Dh;
        const float *kb = k + b * kv_stride + (int64_t)h * Dh, *vb = v + b * kv_stride + (int64_t)h * Dh;
        const uint8_t *kp = keep ? keep + b * keep_stride : NULL;
        float *sc = s + (int64_t)bh * n_keys, *o = out + (int64_t)b * C + (int64_t)h * Dh, mx = -INFINITY;
        for (int j = 0; j < n_keys; j++) {
            if (kp && !kp[j]) { sc[j] = -INFINITY; continue; }
            const float *kj = kb + (int64_t)j * C;
            float d = 0;
            for (int e = 0; e < Dh; e++) d += qh[e] * kj[e];
            sc[j] = d * scale;
            if (sc[j] > mx) mx = sc[j];
        }
        memset(o, 0, sizeof(float) * (size_t)Dh);
        if (mx == -INFINITY) continue;   /* no visible key: zero, as the fused kernel does */
        float sum = 0;
        for (int j = 0; j < n_keys; j++) {
            sc[j] = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mx);
            sum += sc[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < n_keys; j++) {
            if (sc[j] == 0) continue;
            float w = sc[j] * inv;
            const float *vj = vb + (int64_t)j * C;
            for (int e = 0; e < Dh; e++) o[e] += w * vj[e];
        }
    }
}

static int has_positions(const cf_model_config *c) { return c->position != CF_POS_NONE; }

int cf_dec_cache_init(cf_dec_cache *c, cf_model *m, cf_ctx *ctx, const int32_t *src, const uint8_t *keep, int n_src,
                      int S, int per_src, int max_T) {
    memset(c, 0, sizeof *c);
    const cf_model_config *mc = &m->cfg;
    if (!m->ed) return cf_set_error("decoding: the model is not an encoder-decoder (model.arch \"decoder\")");
    if (n_src < 1 || per_src < 1 || S < 1 || max_T < 1)
        return cf_set_error("decoding: %d sources x %d rows of %d tokens, %d steps: all must be positive", n_src,
                            per_src, S, max_T);
    if (has_positions(mc) && S > mc->max_seq_len)
        return cf_set_error("decoding: a source of %d tokens exceeds model.max_seq_len %d", S, mc->max_seq_len);
    if (has_positions(mc) && max_T > mc->max_seq_len)
        return cf_set_error("decoding: %d steps exceed model.max_seq_len %d", max_T, mc->max_seq_len);
    for (int l = 0; l < m->ed->n_dec; l++)
        if (m->ed->dec[l].self.attn.cfg.type != CF_ATTN_FULL)
            return cf_set_error("decoding: cached keys and values need full attention (decoder layer %d)", l);
    int saved_grad = ctx->grad_enabled, saved_train = ctx->training;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    cf_ctx_begin(ctx, 0);
    const cf_encdec *ed = m->ed;
    int L = ed->n_dec, D = mc->d_model, rows = n_src * per_src;
    c->m = m;
    c->ctx = ctx;
    c->rows = rows;
    c->S = S;
    c->max_T = max_T;
    cf_tensor *mem = cf_encdec_encode(m, ctx, src, keep, n_src, S);          /* (n_src, S, D) */
    c->self_k = cf_scratch(ctx, 4 * (size_t)L * sizeof(float *));
    c->self_v = c->self_k + L;
    c->cross_k = c->self_k + 2 * L;
    c->cross_v = c->self_k + 3 * L;
    for (int l = 0; l < L; l++) {
        const float *kv = cf_cross_attn_kv(ctx, &ed->dec[l].cross, mem)->data;   /* (n_src, S, 2D) */
        c->self_k[l] = cf_scratch(ctx, (size_t)rows * max_T * D * sizeof(float));
        c->self_v[l] = cf_scratch(ctx, (size_t)rows * max_T * D * sizeof(float));
        c->cross_k[l] = cf_scratch(ctx, (size_t)rows * S * D * sizeof(float));
        c->cross_v[l] = cf_scratch(ctx, (size_t)rows * S * D * sizeof(float));
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < S; j++) {
                const float *row = kv + ((size_t)(r / per_src) * S + j) * 2 * D;
                memcpy(c->cross_k[l] + ((size_t)r * S + j) * D, row, sizeof(float) * (size_t)D);
                memcpy(c->cross_v[l] + ((size_t)r * S + j) * D, row + D, sizeof(float) * (size_t)D);
            }
    }
    c->keep = cf_scratch(ctx, (size_t)rows * S);
    for (int r = 0; r < rows; r++) memcpy(c->keep + (size_t)r * S, keep + (size_t)(r / per_src) * S, (size_t)S);
    c->logits = cf_scratch(ctx, (size_t)rows * mc->vocab_size * sizeof(float));
    c->mark = cf_arena_mark(&ctx->arena);
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    return 0;
}

/* causal self-attention of one new token per row: its k, v join the cache at position t */
static cf_tensor *self_step(cf_dec_cache *c, int l, const cf_attn_layer *a, cf_tensor *x) {
    cf_ctx *ctx = c->ctx;
    int B = c->rows, D = c->m->cfg.d_model, H = a->n_heads, t = c->t;
    cf_tensor *qkv = cf_linear_apply(ctx, &a->qkv, x);                      /* (B, 1, 3D) */
    for (int r = 0; r < B; r++) {
        const float *row = qkv->data + (size_t)r * 3 * D;
        memcpy(c->self_k[l] + ((size_t)r * c->max_T + t) * D, row + D, sizeof(float) * (size_t)D);
        memcpy(c->self_v[l] + ((size_t)r * c->max_T + t) * D, row + 2 * D, sizeof(float) * (size_t)D);
    }
    cf_tensor *y = cf_tensor_3d(ctx, B, 1, D);
    float *s = cf_scratch(ctx, (size_t)B * H * (t + 1) * sizeof(float));
    attend_one(qkv->data, 3 * D, c->self_k[l], c->self_v[l], (int64_t)c->max_T * D, t + 1, NULL, 0, B, H, D / H,
               y->data, s);
    return cf_linear_apply(ctx, &a->proj, y);
}

static cf_tensor *cross_step(cf_dec_cache *c, int l, const cf_cross_attn_layer *a, cf_tensor *x) {
    cf_ctx *ctx = c->ctx;
    int B = c->rows, D = c->m->cfg.d_model, H = a->n_heads, S = c->S;
    cf_tensor *q = cf_linear_apply(ctx, &a->q, x);                          /* (B, 1, D) */
    cf_tensor *y = cf_tensor_3d(ctx, B, 1, D);
    float *s = cf_scratch(ctx, (size_t)B * H * S * sizeof(float));
    attend_one(q->data, D, c->cross_k[l], c->cross_v[l], (int64_t)S * D, S, c->keep, S, B, H, D / H, y->data, s);
    return cf_linear_apply(ctx, &a->proj, y);
}

const float *cf_dec_cache_step(cf_dec_cache *c, const int32_t *tok) {
    CF_ASSERT(c->t < c->max_T, "decoding: step %d of a cache for %d", c->t, c->max_T);
    cf_model *m = c->m;
    cf_ctx *ctx = c->ctx;
    const cf_encdec *ed = m->ed;
    int saved_grad = ctx->grad_enabled, saved_train = ctx->training;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    cf_arena_rewind(&ctx->arena, c->mark);
    cf_tensor *h = cf_encdec_embed(m, ctx, 1, tok, c->rows, 1, c->t);        /* (B, 1, D) */
    for (int l = 0; l < ed->n_dec; l++) {
        const cf_dec_block *d = &ed->dec[l];
        const cf_block *b = &d->self;
        if (b->norm_position == CF_NORM_PRE) {
            h = cf_add(ctx, h, self_step(c, l, &b->attn, cf_norm_apply(ctx, &b->ln1, h)));
            h = cf_add(ctx, h, cross_step(c, l, &d->cross, cf_norm_apply(ctx, &d->ln_cross, h)));
            h = cf_add(ctx, h, cf_mlp_apply(ctx, &b->mlp, cf_norm_apply(ctx, &b->ln2, h)));
        } else {
            h = cf_norm_apply(ctx, &b->ln1, cf_add(ctx, h, self_step(c, l, &b->attn, h)));
            h = cf_norm_apply(ctx, &d->ln_cross, cf_add(ctx, h, cross_step(c, l, &d->cross, h)));
            h = cf_norm_apply(ctx, &b->ln2, cf_add(ctx, h, cf_mlp_apply(ctx, &b->mlp, h)));
        }
    }
    if (m->cfg.norm_position == CF_NORM_PRE) h = cf_norm_apply(ctx, &ed->dec_ln_f, h);
    cf_tensor *z = cf_linear(ctx, h, ed->out_emb, NULL);                     /* (B, 1, V) */
    memcpy(c->logits, z->data, sizeof(float) * (size_t)z->numel);
    c->t++;
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    return c->logits;
}

void cf_dec_cache_reorder(cf_dec_cache *c, const int *parent) {
    int D = c->m->cfg.d_model, B = c->rows, L = c->m->ed->n_dec;
    size_t row = (size_t)c->t * D;   /* the filled part of a row */
    if (row == 0) return;
    size_t mark = cf_arena_mark(&c->ctx->arena);
    float *tmp = cf_scratch(c->ctx, (size_t)B * row * sizeof(float));
    for (int l = 0; l < L; l++)
        for (int kv = 0; kv < 2; kv++) {
            float *cache = kv ? c->self_v[l] : c->self_k[l];
            for (int r = 0; r < B; r++) memcpy(tmp + r * row, cache + (size_t)parent[r] * c->max_T * D, row * sizeof(float));
            for (int r = 0; r < B; r++) memcpy(cache + (size_t)r * c->max_T * D, tmp + r * row, row * sizeof(float));
        }
    cf_arena_rewind(&c->ctx->arena, mark);
}

/* ---- sources ------------------------------------------------------------------------------------- */
/* ids and keep [n, S] for sources cut to max_src bytes (+ EOS), padded; returns S */
static int build_sources(const uint8_t *const *src, const int *src_len, int n, int max_src, int32_t **ids, uint8_t **keep) {
    int S = 1;
    for (int i = 0; i < n; i++) {
        int s = (src_len[i] < max_src ? src_len[i] : max_src) + 1;
        if (s > S) S = s;
    }
    *ids = cf_xmalloc(sizeof(int32_t) * (size_t)n * S);
    *keep = cf_xmalloc((size_t)n * S);
    for (int i = 0; i < n; i++) {
        int s = (src_len[i] < max_src ? src_len[i] : max_src) + 1;
        int32_t *row = *ids + (size_t)i * S;
        for (int j = 0; j < s - 1; j++) row[j] = src[i][j];
        row[s - 1] = CF_TOK_EOS;
        for (int j = s; j < S; j++) row[j] = CF_TOK_PAD;
        memset(*keep + (size_t)i * S, 1, (size_t)s);
        memset(*keep + (size_t)i * S + s, 0, (size_t)(S - s));
    }
    return S;
}

/* the decodable ids: the bytes and EOS (never BOS, PAD or unused ids) */
static int decodable(int v) { return v < 256 || v == CF_TOK_EOS; }

int cf_translate_greedy(cf_model *m, cf_ctx *ctx, const uint8_t *const *src, const int *src_len, int n, int max_src,
                        int max_len, uint8_t **out, int *out_len) {
    if (max_src < 0) return cf_set_error("decoding: a source limit of %d bytes", max_src);
    int32_t *ids;
    uint8_t *keep;
    int S = build_sources(src, src_len, n, max_src, &ids, &keep);
    cf_dec_cache c;
    int rc = cf_dec_cache_init(&c, m, ctx, ids, keep, n, S, 1, max_len);
    free(ids);
    free(keep);
    if (rc) return -1;
    int V = m->cfg.vocab_size, live = n;
    int32_t *tok = cf_xmalloc(sizeof(int32_t) * (size_t)n);
    uint8_t *done = cf_xcalloc((size_t)n, 1);
    for (int i = 0; i < n; i++) { tok[i] = CF_TOK_BOS; out_len[i] = 0; }
    for (int t = 0; t < max_len && live; t++) {
        const float *z = cf_dec_cache_step(&c, tok);
        for (int i = 0; i < n; i++) {
            if (done[i]) { tok[i] = CF_TOK_EOS; continue; }   /* a finished row's input no longer matters */
            const float *zi = z + (size_t)i * V;
            int best = -1;
            for (int v = 0; v < V; v++)
                if (decodable(v) && (best < 0 || zi[v] > zi[best])) best = v;
            tok[i] = best;
            if (best == CF_TOK_EOS) { done[i] = 1; live--; }
            else out[i][out_len[i]++] = (uint8_t)best;
        }
    }
    free(tok);
    free(done);
    return 0;
}

/* ---- beam search ------------------------------------------------------------------------------- */
typedef struct cand { double score; int parent, token; } cand;

/* keep the best `want` candidates in c[0..*n) sorted by score, descending; a later candidate with
 * an equal score ranks below, so ties go to the lower (parent, token) */
static void cand_push(cand *c, int *n, int want, cand x) {
    if (*n == want && !(x.score > c[*n - 1].score)) return;
    int i = *n < want ? (*n)++ : want - 1;
    while (i > 0 && x.score > c[i - 1].score) { c[i] = c[i - 1]; i--; }
    c[i] = x;
}

int cf_translate_beam(cf_model *m, cf_ctx *ctx, const uint8_t *src, int src_len, int max_src, int K, int max_len,
                      uint8_t *out, int *out_len, float *score) {
    if (K < 1) return cf_set_error("decoding: beam width %d must be at least 1", K);
    if (max_src < 0) return cf_set_error("decoding: a source limit of %d bytes", max_src);
    int32_t *ids;
    uint8_t *keep;
    int S = build_sources(&src, &src_len, 1, max_src, &ids, &keep);
    cf_dec_cache c;
    int rc = cf_dec_cache_init(&c, m, ctx, ids, keep, 1, S, K, max_len);
    free(ids);
    free(keep);
    if (rc) return -1;
    int V = m->cfg.vocab_size;
    /* live hypotheses: row r of the cache is beam r; hyp[r] its bytes so far (t of them) */
    uint8_t *hyp = cf_xmalloc((size_t)K * max_len), *hyp2 = cf_xmalloc((size_t)K * max_len);
    double *sum = cf_xcalloc((size_t)K, sizeof(double));
    int32_t *tok = cf_xmalloc(sizeof(int32_t) * (size_t)K);
    int *parent = cf_xmalloc(sizeof(int) * (size_t)K);
    cand *top = cf_xmalloc(sizeof(cand) * (size_t)K);
    /* the best finished hypothesis so far */
    uint8_t *best = cf_xmalloc((size_t)max_len);
    int best_len = -1, n_fin = 0, n_live = 1;
    double best_score = -INFINITY;
    for (int r = 0; r < K; r++) tok[r] = CF_TOK_BOS;
    int t = 0;
    for (; t < max_len && n_live > 0; t++) {
        const float *z = cf_dec_cache_step(&c, tok);
        int want = K - n_fin, n_top = 0;
        for (int r = 0; r < n_live; r++) {
            const float *zr = z + (size_t)r * V;
            double mx = -INFINITY, se = 0;
            for (int v = 0; v < V; v++) if (zr[v] > mx) mx = zr[v];
            for (int v = 0; v < V; v++) se += exp((double)zr[v] - mx);
            double lse = mx + log(se);
            for (int v = 0; v < V; v++)
                if (decodable(v)) cand_push(top, &n_top, want, (cand){sum[r] + ((double)zr[v] - lse), r, v});
        }
        int next = 0;
        for (int i = 0; i < n_top; i++) {
            cand x = top[i];
            if (x.token == CF_TOK_EOS) {
                /* finished with t bytes and its EOS: t + 1 tokens */
                double norm = x.score / (t + 1);
                n_fin++;
                if (norm > best_score) {
                    best_score = norm;
                    best_len = t;
                    memcpy(best, hyp + (size_t)x.parent * max_len, (size_t)t);
                }
                continue;
            }
            parent[next] = x.parent;
            memcpy(hyp2 + (size_t)next * max_len, hyp + (size_t)x.parent * max_len, (size_t)t);
            hyp2[(size_t)next * max_len + t] = (uint8_t)x.token;
            sum[next] = x.score;   /* sum[] is read only through top[] from here on */
            tok[next] = x.token;
            next++;
        }
        for (int r = next; r < K; r++) { parent[r] = 0; tok[r] = CF_TOK_EOS; }
        uint8_t *swap = hyp; hyp = hyp2; hyp2 = swap;
        n_live = next;
        if (n_live > 0 && t + 1 < max_len) cf_dec_cache_reorder(&c, parent);
    }
    if (best_len < 0) {
        /* nothing finished within max_len tokens: the best live hypothesis, of t bytes */
        for (int r = 0; r < n_live; r++) {
            double norm = sum[r] / t;
            if (norm > best_score) {
                best_score = norm;
                best_len = t;
                memcpy(best, hyp + (size_t)r * max_len, (size_t)t);
            }
        }
    }
    memcpy(out, best, (size_t)(best_len > 0 ? best_len : 0));
    *out_len = best_len > 0 ? best_len : 0;
    if (score) *score = (float)best_score;
    free(hyp); free(hyp2); free(sum); free(tok); free(parent); free(top); free(best);
    return 0;
}
