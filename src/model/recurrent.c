/* Recurrent attention in the decoder: the layers that carry state from one call to the next,
 * Transformer-XL (a memory of earlier hidden states, relative positions; docs/attention.md section 7)
 * and Infini-attention (a compressive memory per head; section 8). The state lives in a
 * cf_rec_state, one row per stream (batch row), and is a constant to autograd: gradients stop at
 * the segment boundary between calls, as in both papers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/attention.h"
#include "cformer/model.h"

static int dh_of(const cf_model *m) { return m->cfg.d_model / m->cfg.n_heads; }

int cf_model_is_recurrent(const cf_model *m) { return m->has_xl || m->has_infini; }

void cf_rec_state_free(const cf_model *m, cf_rec_state *st) {
    for (int k = 0; k < CF_STATE_MAX_ARRAYS; k++)
        for (int l = 0; st->arr[k] && l < m->n_blocks; l++) free(st->arr[k][l]);
    for (int k = 0; k < CF_STATE_MAX_ARRAYS; k++) free(st->arr[k]);
    free(st->used);
    memset(st, 0, sizeof *st);
}

int cf_rec_state_arrays(const cf_model *m, const cf_rec_state *st, int l, cf_state_array *out, int *present) {
    const cf_attn_config *c = &m->blocks[l].attn.cfg;
    const cf_attn_variant *v = cf_attn_variant_of(c->type);
    int n = 0;
    for (int k = 0; k < v->n_state; k++) {
        const cf_attn_state_array *s = &v->state[k];
        cf_state_array a = {.name = s->name, .ndim = s->ndim, .row = 1, .nonneg = s->nonneg};
        for (int i = 0; i < s->ndim; i++) {
            a.shape[i] = cf_attn_dim_size(s->shape[i], c, m->cfg.d_model, m->cfg.n_heads);
            a.row *= a.shape[i];
        }
        if (a.row == 0) return present ? (*present = 0) : 0;   /* xl without a memory: no state */
        a.data = st ? st->arr[k][l] : NULL;
        a.used = st ? st->used[l] : 0;
        out[n++] = a;
    }
    if (present) *present = st && n ? st->used[l] > 0 : 0;
    return n;
}

void cf_rec_state_alloc(const cf_model *m, cf_rec_state *st, int batch) {
    cf_rec_state_free(m, st);
    int L = m->n_blocks;
    st->batch = batch;
    for (int k = 0; k < CF_STATE_MAX_ARRAYS; k++) st->arr[k] = cf_xcalloc((size_t)L, sizeof *st->arr[k]);
    st->used = cf_xcalloc((size_t)L, sizeof *st->used);
    for (int l = 0; l < L; l++) {
        cf_state_array a[CF_STATE_MAX_ARRAYS];
        int n = cf_rec_state_arrays(m, NULL, l, a, NULL);
        for (int k = 0; k < n; k++) st->arr[k][l] = cf_xmalloc((size_t)(batch * a[k].row) * sizeof(float));
    }
}

void cf_rec_state_set_used(const cf_model *m, cf_rec_state *st, int l, int used) {
    (void)m;
    st->used[l] = used;
}

void cf_rec_state_copy_rows(const cf_model *m, cf_rec_state *dst, const cf_rec_state *src, int row0) {
    for (int l = 0; l < m->n_blocks; l++) {
        cf_state_array a[CF_STATE_MAX_ARRAYS], b[CF_STATE_MAX_ARRAYS];
        int n = cf_rec_state_arrays(m, src, l, a, NULL);
        cf_rec_state_arrays(m, dst, l, b, NULL);
        for (int k = 0; k < n; k++)
            memcpy(b[k].data, a[k].data + (int64_t)row0 * a[k].row, (size_t)(dst->batch * a[k].row) * sizeof(float));
        dst->used[l] = src->used[l];
    }
}

void cf_model_reset_memory(cf_model *m) {
    cf_rec_state *st = m->state;
    if (!st || !st->batch) return;
    for (int l = 0; l < m->n_blocks; l++) st->used[l] = 0;
}

void cf_model_set_mem_len(cf_model *m, int n) {
    for (int i = 0; i < m->cfg.n_attn; i++)
        if (m->cfg.attn[i].type == CF_ATTN_XL) m->cfg.attn[i].mem_len = n;
    for (int l = 0; l < m->n_blocks; l++)
        if (m->blocks[l].attn.cfg.type == CF_ATTN_XL) m->blocks[l].attn.cfg.mem_len = n;
    if (m->state && m->state->batch) cf_rec_state_alloc(m, m->state, m->state->batch);
}

/* ---- Transformer-XL ------------------------------------------------------------------------------ */

/* new memory of layer l: the last mem_len rows of concat(old memory, x) per stream */
static void xl_update(const cf_model *m, cf_rec_state *st, int l, const cf_tensor *old, const cf_tensor *x) {
    int B = x->shape[0], T = x->shape[1], D = x->shape[2], M = m->blocks[l].attn.cfg.mem_len;
    int mlen = old ? old->shape[1] : 0, total = mlen + T, keep = total < M ? total : M;
    for (int b = 0; b < B; b++)
        for (int r = 0; r < keep; r++) {
            int src = total - keep + r;                   /* row of concat(old, x) */
            const float *from = src < mlen ? old->data + ((int64_t)b * mlen + src) * D
                                           : x->data + ((int64_t)b * T + src - mlen) * D;
            memcpy(st->arr[0][l] + ((int64_t)b * M + r) * D, from, (size_t)D * sizeof(float));
        }
    st->used[l] = keep;
}

/* one xl block (docs/attention.md section 7.6): pre-norm x + drop(attn(LN(x), LN(concat(mem, x)))),
 * x + drop(mlp(LN(x))); post-norm LN(x + drop(attn(x, concat(mem, x)))), LN(x + drop(mlp(x))) */
static cf_tensor *xl_block(cf_ctx *ctx, const cf_model *m, const cf_block *b, cf_tensor *mem, cf_tensor *pos_all,
                           cf_tensor *x) {
    int T = x->shape[1], D = x->shape[2], klen = (mem ? mem->shape[1] : 0) + T, kmax = pos_all->shape[0];
    cf_tensor *pos = cf_tensor_view(ctx, pos_all->data + (int64_t)(kmax - klen) * D, 2, (int[]){klen, D});
    cf_tensor *c = mem ? cf_concat(ctx, mem, x, 1) : x;
    if (b->norm_position == CF_NORM_PRE) {
        cf_tensor *xq = cf_norm_apply(ctx, &b->ln1, x), *xc = mem ? cf_norm_apply(ctx, &b->ln1, c) : xq;
        cf_attn_state s = {.xl = {.xc = xc, .pos = pos, .u = m->r_w_bias, .v_bias = m->r_r_bias}};
        cf_tensor *a = cf_attn_apply_state(ctx, &b->attn, xq, NULL, &s);
        x = cf_add(ctx, x, cf_dropout(ctx, a, b->dropout));
        return cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, cf_norm_apply(ctx, &b->ln2, x)), b->dropout));
    }
    cf_attn_state s = {.xl = {.xc = c, .pos = pos, .u = m->r_w_bias, .v_bias = m->r_r_bias}};
    cf_tensor *a = cf_attn_apply_state(ctx, &b->attn, x, NULL, &s);
    x = cf_norm_apply(ctx, &b->ln1, cf_add(ctx, x, cf_dropout(ctx, a, b->dropout)));
    return cf_norm_apply(ctx, &b->ln2, cf_add(ctx, x, cf_dropout(ctx, cf_mlp_apply(ctx, &b->mlp, x), b->dropout)));
}

/* ---- the blocks of a recurrent model ----------------------------------------------------------------- */

/* Blocks [first, first + n) with what their recurrent layers read: copies of the state as this
 * forward found it (xl: mem[l] constant [B, mlen_l, D] or NULL; infini: M0[l], z0[l] or NULL),
 * and the relative sinusoids (constant, after dropout) for the longest xl key sequence, of which
 * a layer uses the last mlen_l + T rows. update: write the new state (first run only: a
 * checkpointed region's recomputation must not). Lives in the arena below the region. */
typedef struct rec_region {
    cf_model   *m;
    cf_rec_state *st;                 /* NULL: no state is read or written */
    int         first, n, update;
    cf_tensor **mem;                  /* [n_blocks] */
    float     **M0, **z0;             /* [n_blocks] */
    cf_tensor  *pos;                  /* [klen_max, D] or NULL without xl layers */
} rec_region;

static cf_tensor *rec_run(cf_ctx *ctx, void *closure, cf_tensor *x) {
    rec_region *r = closure;
    cf_model *m = r->m;
    for (int l = r->first; l < r->first + r->n; l++) {
        cf_block *b = &m->blocks[l];
        if (b->attn.cfg.type == CF_ATTN_XL) {
            if (r->update && r->st->arr[0][l]) xl_update(m, r->st, l, r->mem[l], x);
            x = xl_block(ctx, m, b, r->mem[l], r->pos, x);
        } else if (b->attn.cfg.type == CF_ATTN_INFINI) {
            cf_infini_io io = {.M0 = r->M0[l], .z0 = r->z0[l]};
            if (r->update) {
                io.M_out = r->st->arr[0][l];
                io.z_out = r->st->arr[1][l];
                r->st->used[l] = m->cfg.n_heads;   /* every head's memory is in use */
            }
            x = cf_block_apply_state(ctx, b, x, &(cf_attn_state){.infini = io});
        } else {
            x = cf_block_apply(ctx, b, x);
        }
    }
    return x;
}

static float *arena_copy(cf_ctx *ctx, const float *src, size_t n) {
    float *p = cf_scratch(ctx, n * sizeof(float));
    memcpy(p, src, n * sizeof(float));
    return p;
}

cf_tensor *cf_model_rec_blocks(cf_model *m, cf_ctx *ctx, cf_tensor *h) {
    const cf_model_config *c = &m->cfg;
    int B = h->shape[0], T = h->shape[1], D = h->shape[2], H = c->n_heads, d = dh_of(m);
    cf_rec_state *st = (ctx->training || m->stream) ? m->state : NULL;
    if (st && st->batch != B) cf_rec_state_alloc(m, st, B);   /* new batch geometry: start afresh */
    cf_tensor **mem = cf_scratch(ctx, (size_t)m->n_blocks * sizeof *mem);
    float **M0 = cf_scratch(ctx, (size_t)m->n_blocks * sizeof *M0), **z0 = cf_scratch(ctx, (size_t)m->n_blocks * sizeof *z0);
    int kmax = T;
    for (int l = 0; l < m->n_blocks; l++) {
        mem[l] = NULL;
        M0[l] = z0[l] = NULL;
        if (!st) continue;
        cf_attn_kind type = m->blocks[l].attn.cfg.type;
        if (type == CF_ATTN_INFINI && st->used[l]) {
            M0[l] = arena_copy(ctx, st->arr[0][l], (size_t)B * H * d * d);
            z0[l] = arena_copy(ctx, st->arr[1][l], (size_t)B * H * d);
        }
        int mlen = type == CF_ATTN_XL ? st->used[l] : 0, cap = m->blocks[l].attn.cfg.mem_len;
        if (!mlen) continue;
        mem[l] = cf_tensor_3d(ctx, B, mlen, D);
        for (int b = 0; b < B; b++)
            memcpy(mem[l]->data + (int64_t)b * mlen * D, st->arr[0][l] + (int64_t)b * cap * D,
                   (size_t)mlen * D * sizeof(float));
        if (mlen + T > kmax) kmax = mlen + T;
    }
    /* one table of relative sinusoids for the longest keys, with the ordinary dropout (as
     * mem_transformer.py's pos_emb = drop(pos_emb)); shorter layers read its last rows. The clamp
     * is the first xl layer's (one model.attention object gives every layer the same). */
    cf_tensor *pos = NULL;
    if (m->has_xl) {
        int clamp = -1;
        for (int l = 0; l < m->n_blocks && clamp < 0; l++)
            if (m->blocks[l].attn.cfg.type == CF_ATTN_XL) clamp = m->blocks[l].attn.cfg.clamp_len;
        pos = cf_tensor_2d(ctx, kmax, D);
        cf_xl_sinusoids(pos->data, kmax, D, clamp);
        pos = cf_dropout(ctx, pos, c->dropout);
    }
    int k = m->grad_checkpoint > 0 ? m->grad_checkpoint : m->n_blocks;
    for (int first = 0; first < m->n_blocks; first += k) {
        rec_region *r = cf_scratch(ctx, sizeof *r);
        *r = (rec_region){.m = m, .st = st, .first = first, .n = first + k <= m->n_blocks ? k : m->n_blocks - first,
                          .update = st != NULL, .mem = mem, .M0 = M0, .z0 = z0, .pos = pos};
        h = m->grad_checkpoint > 0 ? cf_checkpoint(ctx, rec_run, r, h) : rec_run(ctx, r, h);
        r->update = 0;
    }
    return h;
}
