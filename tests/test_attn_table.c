/* The attention-variant table: every kind has a complete row named as the config names it; the
 * one config check refuses what a variant cannot run with a one-line message naming the key; a
 * layer declares its variant's extra parameters after qkv and proj; a recurrent variant's state
 * travels with the call and the layer is left as it was. */
#include <string.h>
#include "test.h"
#include "cformer/attention.h"

static void rows(void) {
    CHECK(cf_attn_table_check() == 0, "table: %s", cf_error_msg());
    for (int k = 0; k < CF_ATTN_KIND_COUNT; k++) {
        const cf_attn_variant *v = cf_attn_variant_of((cf_attn_kind)k);
        CHECK(v && v->name && !strcmp(v->name, cf_attn_kind_names[k]), "row %d is named %s, kind %s", k,
              v && v->name ? v->name : "(none)", cf_attn_kind_names[k]);
        CHECK(v && v->core && v->n_extra >= 0 && v->n_extra <= CF_ATTN_MAX_EXTRA, "row %s: core or extra missing",
              cf_attn_kind_names[k]);
        /* the model keeps the state of these between calls (src/model/recurrent.c) */
        if (k == CF_ATTN_XL || k == CF_ATTN_INFINI)
            CHECK(v->flags & CF_ATTN_RECURRENT, "row %s: not marked recurrent", v->name);
    }
}

/* cf_attn_check on a default config of `type` with one setting changed by `edit` */
typedef struct refusal {
    cf_attn_kind type;
    const char *what;
    int encoder, n_heads, d_model;
    const char *want;                /* the message starts with this */
} refusal;

static void edit(cf_attn_config *a, const char *what) {
    if (!strcmp(what, "stride0")) a->stride = 0;
    else if (!strcmp(what, "c>stride")) { a->stride = 4; a->c = 5; }
    else if (!strcmp(what, "heads")) { a->stride = 8; a->combine = CF_COMBINE_HEADS; }
    else if (!strcmp(what, "features0")) a->features = 0;
    else if (!strcmp(what, "redraw0")) a->redraw_every = 0;
    else if (!strcmp(what, "segment0")) a->segment_len = 0;
    else a->stride = 8;                    /* the reader resolves the default 0 */
}

static void checks(void) {
    static const refusal cases[] = {
        {CF_ATTN_SPARSE_STRIDED, "stride0", 0, 4, 64, "model.attention[2].stride: must be >= 1"},
        {CF_ATTN_SPARSE_FIXED, "c>stride", 0, 4, 64, "model.attention[2].c: must be in [1, stride 4]"},
        {CF_ATTN_SPARSE_FIXED, "heads", 1, 1, 64, "model.attention[2].combine: \"heads\" splits the two parts"},
        {CF_ATTN_PERFORMER, "features0", 1, 4, 64, "model.attention[2].features: must be >= 1"},
        {CF_ATTN_PERFORMER, "redraw0", 0, 4, 64, "model.attention[2].redraw_every: must be >= 1"},
        {CF_ATTN_INFINI, "segment0", 0, 4, 64, "model.attention[2].segment_len: must be >= 1"},
        {CF_ATTN_XL, "", 0, 3, 63, "model.attention[2].type: xl needs an even model.d_model (got 63)"},
        {CF_ATTN_XL, "", 1, 4, 64, "model.attention[2].type: \"xl\" carries state along a stream of bytes"},
        {CF_ATTN_INFINI, "", 1, 4, 64, "model.attention[2].type: \"infini\" carries state along a stream"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const refusal *r = &cases[i];
        cf_attn_config a;
        cf_attn_config_defaults(&a);
        a.type = r->type;
        edit(&a, r->what);
        int rc = cf_attn_check(&a, "model.attention[2]", r->n_heads, r->d_model, r->encoder);
        const char *msg = rc ? cf_error_msg() : "";
        CHECK(rc == -1 && !strncmp(msg, r->want, strlen(r->want)) && !strchr(msg, '\n'),
              "%s %s: rc %d, message \"%s\", want \"%s...\"", cf_attn_kind_names[r->type], r->what, rc, msg, r->want);
    }
    /* every kind runs in a decoder with its defaults (the sparse stride resolved); all but the
     * recurrent ones in an encoder */
    for (int k = 0; k < CF_ATTN_KIND_COUNT; k++)
        for (int encoder = 0; encoder < 2; encoder++) {
            cf_attn_config a;
            cf_attn_config_defaults(&a);
            a.type = (cf_attn_kind)k;
            edit(&a, "");
            int want = encoder && (k == CF_ATTN_XL || k == CF_ATTN_INFINI) ? -1 : 0;
            int rc = cf_attn_check(&a, "model.attention", 4, 64, encoder);
            CHECK(rc == want, "%s encoder=%d: rc %d (%s)", cf_attn_kind_names[k], encoder, rc, rc ? cf_error_msg() : "");
        }
}

/* the parameter names and shapes of a layer of each kind, in declaration order */
static void extra_params(void) {
    enum { D = 16, H = 4 };
    for (int k = 0; k < CF_ATTN_KIND_COUNT; k++) {
        cf_attn_config a;
        cf_attn_config_defaults(&a);
        a.type = (cf_attn_kind)k;
        cf_params p;
        cf_params_init(&p);
        cf_attn_layer L;
        cf_attn_decl(&L, &p, "blocks.1.attn", D, H, 1, 0.0f, &a, 1);
        const char *want[4] = {"blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias", "blocks.1.attn.proj.weight",
                               "blocks.1.attn.proj.bias"};
        int ok = p.n == 4 + (k == CF_ATTN_XL || k == CF_ATTN_INFINI);
        for (int i = 0; ok && i < 4; i++) ok = !strcmp(p.t[i]->name, want[i]);
        if (k == CF_ATTN_XL)
            ok = ok && !strcmp(p.t[4]->name, "blocks.1.attn.r_net.weight") && p.t[4]->ndim == 2 &&
                 p.t[4]->shape[0] == D && p.t[4]->shape[1] == D && L.extra[0] == p.t[4];
        if (k == CF_ATTN_INFINI)
            ok = ok && !strcmp(p.t[4]->name, "blocks.1.attn.gate") && p.t[4]->ndim == 1 && p.t[4]->shape[0] == H &&
                 L.extra[0] == p.t[4];
        CHECK(ok && L.extra[1] == NULL && L.draw && L.draw->index == -1, "%s: the layer's parameters (%d)",
              cf_attn_kind_names[k], p.n);
        cf_params_free(&p);
    }
}

/* infini through cf_attn_apply_state: the memory goes in and comes out with the call, the layer's
 * bytes stay as they were, and a second call from the first's memory differs from one without */
static void infini_state(void) {
    enum { B = 2, T = 12, D = 16, H = 2, d = D / H };
    cf_attn_config a;
    cf_attn_config_defaults(&a);
    a.type = CF_ATTN_INFINI;
    a.segment_len = 5;
    cf_params p;
    cf_params_init(&p);
    cf_attn_layer L;
    cf_attn_decl(&L, &p, "blocks.0.attn", D, H, 1, 0.0f, &a, 1);
    cf_params_finalize(&p);
    t_fill_uniform(p.values, p.numel, -0.3f, 0.3f, 5);
    cf_attn_layer before;
    memcpy(&before, &L, sizeof L);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 24, 1 << 10) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    static float x[B * T * D], M[B * H * d * d], z[B * H * d], M2[B * H * d * d], z2[B * H * d];
    t_fill_uniform(x, B * T * D, -1, 1, 6);
    cf_tensor *xt = cf_tensor_leaf(&ctx, x, 3, (int[]){B, T, D}, 0);
    memset(M, 0xff, sizeof M);
    cf_attn_state first = {.infini = {.M_out = M, .z_out = z}};
    cf_tensor *y0 = cf_attn_apply_state(&ctx, &L, xt, NULL, &first);
    CHECK(M[0] == M[0] && z[0] > 0, "infini: the call did not write its memory (z %g)", z[0]);
    cf_attn_state second = {.infini = {.M0 = M, .z0 = z, .M_out = M2, .z_out = z2}};
    cf_tensor *y1 = cf_attn_apply_state(&ctx, &L, xt, NULL, &second);
    cf_tensor *y2 = cf_attn_apply(&ctx, &L, xt);
    CHECK(!memcmp(y0->data, y2->data, sizeof(float) * B * T * D), "infini: no state in, no state out differs");
    CHECK(memcmp(y1->data, y2->data, sizeof(float) * B * T * D), "infini: the memory passed in changed nothing");
    CHECK(!memcmp(&before, &L, sizeof L), "infini: the call changed the layer");
    cf_ctx_free(&ctx);
    cf_params_free(&p);
}

int main(void) {
    rows();
    checks();
    extra_params();
    infini_state();
    TEST_MAIN_END();
}
