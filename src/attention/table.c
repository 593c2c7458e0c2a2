/* The attention-variant table: one row per cf_attn_kind, each defined at the end of its variant's
 * source file, and the checks and the forward that go through it. */
#include <string.h>
#include "cformer/attention.h"

/* kind, row: one line per variant, in cf_attn_kind order */
#define CF_ATTN_VARIANTS(X)                                                                                  \
    X(CF_ATTN_FULL, cf_attn_full)                                                                            \
    X(CF_ATTN_WINDOW, cf_attn_window)                                                                        \
    X(CF_ATTN_SPARSE_STRIDED, cf_attn_sparse_strided)                                                        \
    X(CF_ATTN_SPARSE_FIXED, cf_attn_sparse_fixed)                                                            \
    X(CF_ATTN_LINEAR, cf_attn_linear)                                                                        \
    X(CF_ATTN_PERFORMER, cf_attn_performer)                                                                  \
    X(CF_ATTN_XL, cf_attn_xl)                                                                                \
    X(CF_ATTN_INFINI, cf_attn_infini)

#define DECLARE(kind, row) extern const cf_attn_variant row;
CF_ATTN_VARIANTS(DECLARE)
#undef DECLARE

#define ROW(kind, row) [kind] = &row,
static const cf_attn_variant *const table[] = {CF_ATTN_VARIANTS(ROW)};
#undef ROW
_Static_assert(sizeof table / sizeof *table == CF_ATTN_KIND_COUNT, "a row for every cf_attn_kind");

const cf_attn_variant *cf_attn_variant_of(cf_attn_kind k) {
    CF_ASSERT((unsigned)k < CF_ATTN_KIND_COUNT && table[k], "attention type %d has no variant row", (int)k);
    return table[k];
}

int cf_attn_table_check(void) {
    for (int k = 0; k < CF_ATTN_KIND_COUNT; k++) {
        const cf_attn_variant *v = table[k];
        if (!v || !v->name || !v->core)
            return cf_set_error("attention type %s: its variant row is missing or has no name or core",
                                cf_attn_kind_names[k]);
        if (strcmp(v->name, cf_attn_kind_names[k]))
            return cf_set_error("attention type %s: its variant row is named \"%s\"", cf_attn_kind_names[k], v->name);
        if (v->n_extra < 0 || v->n_extra > CF_ATTN_MAX_EXTRA)
            return cf_set_error("attention type %s: %d extra parameters", v->name, v->n_extra);
        if (!v->cache_rows || !v->cache_aux || !v->step || !v->boundary != !(v->flags & CF_ATTN_RECURRENT))
            return cf_set_error("attention type %s: its row lacks incremental decoding (cache_rows, cache_aux, step, "
                                "and boundary exactly when recurrent)", v->name);
        if (v->n_state < 0 || v->n_state > CF_ATTN_MAX_STATE || (v->n_state > 0) != !!(v->flags & CF_ATTN_RECURRENT))
            return cf_set_error("attention type %s: %d state arrays for a %srecurrent variant", v->name, v->n_state,
                                v->flags & CF_ATTN_RECURRENT ? "" : "non-");
    }
    return 0;
}

int64_t cf_attn_dim_size(cf_attn_dim d, const cf_attn_config *c, int d_model, int n_heads) {
    switch (d) {
    case CF_ATTN_DIM_MODEL: return d_model;
    case CF_ATTN_DIM_HEADS: return n_heads;
    case CF_ATTN_DIM_HEAD: return d_model / n_heads;
    case CF_ATTN_DIM_MEM: return c->mem_len;
    }
    CF_ASSERT(0, "attention dimension %d", (int)d);
}

int cf_attn_check(const cf_attn_config *c, const char *path, int n_heads, int d_model, int encoder) {
    if (cf_attn_table_check()) return -1;
    if ((unsigned)c->type >= CF_ATTN_KIND_COUNT) return cf_set_error("%s.type: unknown (%d)", path, (int)c->type);
    const cf_attn_variant *v = table[c->type];
    if (encoder && (v->flags & CF_ATTN_RECURRENT))
        return cf_set_error("%s.type: \"%s\" carries state along a stream of bytes and is available in "
                            "decoder-only models (model.arch \"decoder\") only", path, v->name);
    if (encoder && (!(v->flags & CF_ATTN_KEY_PADDING) || (v->flags & CF_ATTN_CAUSAL_ONLY)))
        return cf_set_error("%s.type: \"%s\" %s, as an encoder needs, and is available in decoder-only models "
                            "(model.arch \"decoder\") only", path, v->name,
                            v->flags & CF_ATTN_CAUSAL_ONLY ? "has no bidirectional form" : "takes no key padding");
    return v->check ? v->check(c, path, n_heads, d_model) : 0;
}

int cf_attn_check_heads(const cf_attn_config *c, const char *path, const cf_model_config *m) {
    if ((unsigned)c->type >= CF_ATTN_KIND_COUNT) return cf_set_error("%s.type: unknown (%d)", path, (int)c->type);
    const cf_attn_variant *v = table[c->type];
    const char *key = NULL, *why = "";
    if (m->position == CF_POS_ROPE && !(v->flags & CF_ATTN_ROPE)) key = "position", why = ": rope";
    else if (m->position == CF_POS_ALIBI && !(v->flags & CF_ATTN_ALIBI)) key = "position", why = ": alibi";
    else if (m->n_kv_heads > 0 && m->n_kv_heads != m->n_heads && !(v->flags & CF_ATTN_SHARED_KV))
        key = "n_kv_heads", why = ": shared key/value heads";
    else if (m->qk_norm && !(v->flags & CF_ATTN_QK_NORM)) key = "qk_norm", why = ": QK-norm";
    if (!key) return 0;
    const char *own = v->flags & CF_ATTN_OWN_QKV ? " (it projects and positions its keys itself)" : "";
    return cf_set_error("model.%s%s does not apply to attention type \"%s\" (%s.type)%s", key, why, v->name, path,
                        own);
}

cf_tensor *cf_attn_forward(cf_ctx *ctx, const cf_attn_call *call, cf_tensor *in) {
    const cf_attn_variant *v = cf_attn_variant_of(call->cfg->type);
    CF_ASSERT(!call->key_keep || (v->flags & CF_ATTN_KEY_PADDING), "attention type %s takes no key padding", v->name);
    CF_ASSERT(call->causal || !(v->flags & CF_ATTN_CAUSAL_ONLY), "attention type %s is causal only", v->name);
    CF_ASSERT(!call->alibi || (v->flags & CF_ATTN_ALIBI), "attention type %s takes no alibi", v->name);
    if (!(v->flags & CF_ATTN_OWN_QKV))
        CF_ASSERT(in->ndim == 3 && in->shape[2] % (3 * call->n_heads) == 0,
                  "attention core: qkv %s is not [B, T, 3D] with %d heads", cf_shape_str(in), call->n_heads);
    return v->core(ctx, call, in);
}
