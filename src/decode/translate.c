/* Decoding for encoder-decoder models (encdec.h): the incremental decoder with cached keys and
 * values, greedy decoding of a batch of sources, and beam search.
 *
 * The encoder runs once per source. Each decoder layer keeps the keys and values of every token
 * fed so far (self-attention) and the projected keys and values of the encoder output
 * (cross-attention, computed once), so step t costs O(t + S) per layer and row instead of the full
 * forward's O(t^2 + t S). The caches are those of the decoder-only model's incremental decoding
 * (docs/architecture.md section 20): the self-attention of each row is a stream that the
 * variant's step extends (cf_attn_step_streams), and the cross-attention reads the encoder's keys
 * and values with the same one-query attention (cf_attn_cache_attend). The norms and MLPs are the
 * training ops run without recording. Step t's logits equal those of the full forward pass at
 * position t up to float rounding (tests/test_encdec.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/decode.h"

/* below this many multiply-adds one step's cross-attention stays on the calling thread */
#define ATT_PAR_MIN (1 << 16)

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
    int H = mc->n_heads, Dh = D / H, threads = cf_num_threads();
    c->self = cf_scratch(ctx, 2 * (size_t)L * rows * sizeof *c->self);
    c->cross = c->self + (size_t)L * rows;
    for (int l = 0; l < L; l++) {
        const cf_attn_layer *a = &ed->dec[l].self.attn;
        const cf_attn_variant *v = cf_attn_variant_of(a->cfg.type);
        int kr = v->cache_rows(&a->cfg, max_T);
        size_t aux = v->cache_aux(&a->cfg, H, Dh, max_T);
        const float *kv = cf_cross_attn_kv(ctx, &ed->dec[l].cross, mem)->data;   /* (n_src, S, 2D) */
        for (int r = 0; r < rows; r++) {
            cf_attn_cache *sc = &c->self[(size_t)l * rows + r], *cc = &c->cross[(size_t)l * rows + r];
            int Hkv = a->heads.n_kv_heads;
            *sc = (cf_attn_cache){.H = H, .Hkv = Hkv, .Dh = Dh, .rows = kr, .span = max_T};
            sc->k = cf_scratch(ctx, sizeof(float) * (size_t)Hkv * kr * Dh);
            sc->v = cf_scratch(ctx, sizeof(float) * (size_t)Hkv * kr * Dh);
            sc->aux = aux ? cf_scratch(ctx, sizeof(float) * aux) : NULL;
            if (aux) memset(sc->aux, 0, sizeof(float) * aux);
            sc->ws = cf_scratch(ctx, sizeof(float) * threads * cf_attn_cache_ws_floats(kr, Dh));
            cf_attn_cache_start(ctx, a, NULL, sc);
            /* the source's keys and values, head by head */
            *cc = (cf_attn_cache){.H = H, .Hkv = H, .Dh = Dh, .rows = S, .span = S, .pos = S};
            cc->k = cf_scratch(ctx, sizeof(float) * (size_t)H * S * Dh);
            cc->v = cf_scratch(ctx, sizeof(float) * (size_t)H * S * Dh);
            for (int j = 0; j < S; j++) {
                const float *row = kv + ((size_t)(r / per_src) * S + j) * 2 * D;
                for (int h = 0; h < H; h++) {
                    memcpy(cc->k + ((size_t)h * S + j) * Dh, row + h * Dh, sizeof(float) * Dh);
                    memcpy(cc->v + ((size_t)h * S + j) * Dh, row + D + h * Dh, sizeof(float) * Dh);
                }
            }
        }
    }
    c->visible = cf_scratch(ctx, sizeof(int32_t) * (size_t)rows * S);
    c->n_visible = cf_scratch(ctx, sizeof(int) * (size_t)rows);
    for (int r = 0; r < rows; r++) {
        const uint8_t *kp = keep + (size_t)(r / per_src) * S;
        int n = 0;
        for (int j = 0; j < S; j++) if (kp[j]) c->visible[(size_t)r * S + n++] = j;
        c->n_visible[r] = n;
    }
    c->logits = cf_scratch(ctx, (size_t)rows * mc->vocab_size * sizeof(float));
    c->mark = cf_arena_mark(&ctx->arena);
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    return 0;
}

/* causal self-attention of one new token per row, each row its own stream */
static cf_tensor *self_step(cf_dec_cache *c, int l, const cf_attn_layer *a, cf_tensor *x) {
    cf_tensor *y = cf_tensor_3d(c->ctx, c->rows, 1, c->m->cfg.d_model);
    cf_attn_step_streams(c->ctx, a, NULL, c->self + (size_t)l * c->rows, x->data, c->rows, y->data);
    return y;
}

/* one query per row and head against its source's visible keys */
static cf_tensor *cross_step(cf_dec_cache *c, int l, const cf_cross_attn_layer *a, cf_tensor *x) {
    cf_ctx *ctx = c->ctx;
    int B = c->rows, D = c->m->cfg.d_model, H = a->n_heads, Dh = D / H, S = c->S;
    cf_tensor *q = cf_linear_apply(ctx, &a->q, x);                          /* (B, 1, D) */
    cf_tensor *y = cf_tensor_3d(ctx, B, 1, D);
    float *s = cf_scratch(ctx, (size_t)B * H * S * sizeof(float)), scale = 1.0f / sqrtf((float)Dh);
    const cf_attn_cache *cc = c->cross + (size_t)l * B;
    #pragma omp parallel for schedule(static) if ((int64_t)B * H * S * Dh > ATT_PAR_MIN)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        cf_attn_cache_attend(&cc[b], h, q->data + (size_t)b * D + h * Dh, scale, c->visible + (size_t)b * S,
                             c->n_visible[b], s + (size_t)bh * S, y->data + (size_t)b * D + h * Dh);
    }
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
    int B = c->rows, L = c->m->ed->n_dec;
    if (c->t == 0) return;
    size_t mark = cf_arena_mark(&c->ctx->arena);
    for (int l = 0; l < L; l++) {
        cf_attn_cache *sc = c->self + (size_t)l * B;
        /* a cache's keys (values) are [Hkv, rows, Dh]: the filled part is t rows of each head */
        int Hkv = sc[0].Hkv;
        size_t head = (size_t)sc[0].rows * sc[0].Dh, used = (size_t)c->t * sc[0].Dh, per = Hkv * used;
        float *tmp = cf_scratch(c->ctx, 2 * (size_t)B * per * sizeof(float));
        for (int r = 0; r < B; r++)
            for (int h = 0; h < Hkv; h++) {
                memcpy(tmp + (2 * (size_t)r * Hkv + h) * used, sc[parent[r]].k + h * head, used * sizeof(float));
                memcpy(tmp + ((2 * (size_t)r + 1) * Hkv + h) * used, sc[parent[r]].v + h * head, used * sizeof(float));
            }
        for (int r = 0; r < B; r++)
            for (int h = 0; h < Hkv; h++) {
                memcpy(sc[r].k + h * head, tmp + (2 * (size_t)r * Hkv + h) * used, used * sizeof(float));
                memcpy(sc[r].v + h * head, tmp + ((2 * (size_t)r + 1) * Hkv + h) * used, used * sizeof(float));
            }
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
