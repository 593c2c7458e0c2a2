/* Incremental decoding of the decoder-only model (model.h: cf_gen; docs/architecture.md section
 * 20): the embedding of the new rows, the blocks through their layers' caches (cf_block_step), the
 * final norm and the output projection, each row once. The model owns where positions restart and
 * where calls end; each attention variant owns what its cache holds (its row in the variant
 * table). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/kernels.h"
#include "cformer/model.h"

static const cf_attn_variant *variant_of(const cf_model *m, int l) { return cf_attn_variant_of(m->blocks[l].attn.cfg.type); }

/* layer l's cache laid out at slab + *at (slab NULL: only count) */
static void lay_out(cf_gen *g, int l, float *slab, size_t *at) {
    const cf_model *m = g->m;
    const cf_attn_config *c = &m->blocks[l].attn.cfg;
    const cf_attn_variant *v = variant_of(m, l);
    int H = m->cfg.n_heads, Hkv = m->blocks[l].attn.heads.n_kv_heads, Dh = m->cfg.d_model / H;
    int rows = v->cache_rows(c, g->span);
    cf_attn_cache *k = &g->cache[l];
    *k = (cf_attn_cache){.H = H, .Hkv = Hkv, .Dh = Dh, .rows = rows, .span = g->span};
    size_t kv = (size_t)Hkv * rows * Dh, aux = v->cache_aux(c, H, Dh, g->span);
    size_t ws = (size_t)cf_num_threads() * cf_attn_cache_ws_floats(rows, Dh);
    if (slab) {
        k->k = slab + *at;
        k->v = k->k + kv;
        k->aux = k->v + kv;
        k->ws = k->aux + aux;
    }
    *at += 2 * kv + aux + ws;
    *at = (*at + 15) / 16 * 16;
}

/* layer l starts afresh: nothing cached, its variant's once-per-stream values computed again */
static void restart_layer(cf_gen *g, int l) {
    cf_attn_cache *k = &g->cache[l];
    const cf_attn_variant *v = variant_of(g->m, l);
    size_t aux = v->cache_aux(&g->m->blocks[l].attn.cfg, k->H, k->Dh, g->span);
    memset(k->aux, 0, sizeof(float) * aux);
    k->pos = k->call0 = 0;
    k->has_mem = 0;
    cf_attn_cache_start(g->ctx, &g->m->blocks[l].attn, &g->state, k);
}

int cf_gen_init(cf_gen *g, cf_model *m, cf_ctx *ctx, int span, int max_rows) {
    memset(g, 0, sizeof *g);
    if (m->family != &cf_decoder_family)
        return cf_set_error("incremental decoding: an %s model decodes with cformer %s", m->family->title,
                            m->family->generator);
    const cf_model_config *c = &m->cfg;
    int absolute = !m->has_xl && cf_pos_has_table(c->position);
    if (span < 1 || max_rows < 1) return cf_set_error("incremental decoding: span %d and rows %d must be >= 1", span, max_rows);
    if (absolute && span > c->max_seq_len)
        return cf_set_error("incremental decoding: a context of %d positions exceeds model.max_seq_len %d", span,
                            c->max_seq_len);
    g->m = m;
    g->ctx = ctx;
    g->span = span;
    g->max_rows = max_rows;
    g->recurrent = cf_model_is_recurrent(m);
    g->state = (cf_attn_state){.xl = {.u = m->r_w_bias, .v_bias = m->r_r_bias}};
    g->cache = cf_xcalloc((size_t)m->n_blocks, sizeof *g->cache);
    size_t at = 0;
    for (int l = 0; l < m->n_blocks; l++) lay_out(g, l, NULL, &at);
    g->slab_floats = at;
    g->slab = cf_xcalloc(at ? at : 1, sizeof(float));
    at = 0;
    for (int l = 0; l < m->n_blocks; l++) lay_out(g, l, g->slab, &at);
    /* without recurrent layers the stream is bounded by absolute positions, and by a layer whose
     * cache must hold every position of the context */
    g->bounded = !g->recurrent && absolute;
    for (int l = 0; l < m->n_blocks && !g->recurrent; l++) g->bounded |= g->cache[l].rows >= span;
    g->x = cf_xmalloc(sizeof(float) * (size_t)max_rows * c->d_model);
    g->logits = cf_xmalloc(sizeof(float) * (size_t)max_rows * c->vocab_size);
    cf_gen_reset(g);
    return 0;
}

void cf_gen_free(cf_gen *g) {
    free(g->cache);
    free(g->slab);
    free(g->x);
    free(g->logits);
    memset(g, 0, sizeof *g);
}

void cf_gen_reset(cf_gen *g) {
    int saved_grad = g->ctx->grad_enabled, saved_train = g->ctx->training;
    g->ctx->grad_enabled = 0;
    g->ctx->training = 0;
    for (int l = 0; l < g->m->n_blocks; l++) restart_layer(g, l);
    g->ctx->grad_enabled = saved_grad;
    g->ctx->training = saved_train;
    g->pos = 0;
}

int64_t cf_gen_room(const cf_gen *g) { return g->bounded ? g->span - g->pos : INT64_MAX; }

size_t cf_gen_bytes(const cf_gen *g) { return g->slab_floats * sizeof(float); }

/* rows [0, n) of g->x: the embedding of ids at positions p0, p0 + 1, ... of the current call
 * (recurrent) or of the stream */
static void embed(cf_gen *g, const int32_t *ids, int n, int64_t p0) {
    const cf_model *m = g->m;
    const cf_model_config *c = &m->cfg;
    int D = c->d_model;
    float s = sqrtf((float)D);
    for (int r = 0; r < n; r++) {
        float *x = g->x + (size_t)r * D;
        const float *e = m->tok_emb->data + (size_t)ids[r] * D;
        int64_t p = p0 + r;
        if (m->has_xl) {
            for (int i = 0; i < D; i++) x[i] = e[i] * s;
        } else if (c->position == CF_POS_LEARNED) {
            const float *pe = m->pos_emb->data + (size_t)p * D;
            for (int i = 0; i < D; i++) x[i] = e[i] + pe[i];
        } else if (c->position == CF_POS_SINUSOIDAL) {
            const float *pe = m->pos_table + (size_t)p * D;
            for (int i = 0; i < D; i++) x[i] = e[i] * s + pe[i];
        } else {
            memcpy(x, e, sizeof(float) * D);
        }
    }
}

/* n rows (all within one call) through the model: logits into out [n, V] */
static void run_rows(cf_gen *g, const int32_t *ids, int n, float *out) {
    cf_model *m = g->m;
    const cf_model_config *c = &m->cfg;
    int D = c->d_model, V = c->vocab_size;
    int64_t in_call = g->recurrent ? g->pos % g->span : g->pos;
    embed(g, ids, n, in_call);
    for (int l = 0; l < m->n_blocks; l++) cf_block_step(g->ctx, &m->blocks[l], &g->state, &g->cache[l], g->x, n);
    size_t mark = cf_arena_mark(&g->ctx->arena);
    const float *h = g->x;
    if (c->norm_position == CF_NORM_PRE)
        h = cf_norm_apply(g->ctx, &m->ln_f, cf_tensor_view(g->ctx, g->x, 2, (int[]){n, D}))->data;
    const float *E = (m->lm_head ? m->lm_head : m->tok_emb)->data;
    if (n == 1) cf_gemv(V, D, E, D, h, NULL, out);
    else cf_gemm(0, 1, n, V, D, 1.0f, h, D, E, D, 0.0f, out, V);
    cf_arena_rewind(&g->ctx->arena, mark);
    g->pos += n;
}

/* a recurrent model's call has ended: recurrent layers hand their state on, the others forget */
static void end_call(cf_gen *g) {
    for (int l = 0; l < g->m->n_blocks; l++) {
        if (variant_of(g->m, l)->boundary) cf_attn_boundary(&g->m->blocks[l].attn, &g->state, &g->cache[l]);
        else restart_layer(g, l);
    }
}

const float *cf_gen_feed(cf_gen *g, const int32_t *ids, int n) {
    CF_ASSERT(n >= 1 && n <= g->max_rows, "cf_gen_feed: %d rows (at most %d at once)", n, g->max_rows);
    CF_ASSERT(n <= cf_gen_room(g), "cf_gen_feed: %d rows with room for %lld", n, (long long)cf_gen_room(g));
    int saved_grad = g->ctx->grad_enabled, saved_train = g->ctx->training;
    g->ctx->grad_enabled = 0;
    g->ctx->training = 0;
    int V = g->m->cfg.vocab_size;
    for (int done = 0; done < n;) {
        int k = n - done;
        if (g->recurrent) {
            int left = g->span - (int)(g->pos % g->span);
            k = k < left ? k : left;
        }
        run_rows(g, ids + done, k, g->logits + (size_t)done * V);
        done += k;
        if (g->recurrent && g->pos % g->span == 0) end_call(g);
    }
    g->ctx->grad_enabled = saved_grad;
    g->ctx->training = saved_train;
    return g->logits;
}
