/* The block options as a user meets them (docs/attention.md section 11): the config keys' errors
 * and the refusals of combinations a variant cannot take, each one line naming the key; the
 * parameters each option declares; every combination of variant, position scheme, shared
 * key/value heads, QK-norm and gated feed-forward that the config accepts trains (a fixed batch is
 * fitted: the loss falls) with finite gradients; rope and alibi models run at four times the
 * training context, with no position table to outgrow, and agree with themselves on the prefix
 * when the context is causal. */
#include <string.h>
#include "test.h"
#include "cformer/attention.h"

static const char *BASE = "{\"model\": {\"d_model\": 32, \"n_layers\": 2, \"n_heads\": 4, \"d_ff\": 64, \"max_seq_len\": 16}, "
                          "\"train\": {\"batch_size\": 2, \"seq_len\": 16, \"lr\": 3e-3, \"warmup_steps\": 0, "
                          "\"schedule\": \"constant\", \"grad_clip\": 1.0}}";

/* parse BASE with the overrides; 0 or -1 with the message in err */
static int parse(cf_config *c, const char *const *ov, int n) { return cf_config_parse(c, BASE, ov, n, 0); }

/* the message of building a model of BASE with overrides ("" when it builds) */
static const char *build_msg(const char *const *ov, int n) {
    static char msg[512];
    cf_config c;
    msg[0] = 0;
    if (parse(&c, ov, n)) {
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        return msg;
    }
    cf_model m;
    if (cf_model_init(&m, &c.model, 1)) snprintf(msg, sizeof msg, "%s", cf_error_msg());
    else cf_model_free(&m);
    return msg;
}

static void expect_error(const char *const *ov, int n, const char *want) {
    const char *msg = build_msg(ov, n);
    CHECK(strstr(msg, want) != NULL && !strchr(msg, '\n'), "%s: got \"%s\", want \"%s\"", ov[n - 1], msg, want);
}

static void test_errors(void) {
    expect_error((const char *[]){"model.n_kv_heads=3"}, 1, "model.n_kv_heads: must divide model.n_heads (4 % 3 != 0)");
    expect_error((const char *[]){"model.n_kv_heads=8"}, 1, "model.n_kv_heads: must be in 0..4 (got 8)");
    expect_error((const char *[]){"model.n_kv_heads=-1"}, 1, "model.n_kv_heads: must not be negative (got -1)");
    expect_error((const char *[]){"model.n_kv_heads=2.5"}, 1, "model.n_kv_heads");
    expect_error((const char *[]){"model.rope_theta=0"}, 1, "model.rope_theta: must be > 0");
    expect_error((const char *[]){"model.rope_fraction=1.5"}, 1, "model.rope_fraction: must be in (0, 1]");
    expect_error((const char *[]){"model.position=\"rope\"", "model.rope_fraction=0.2"}, 2,
                 "model.rope_fraction: 0.2 of a head's 8 dimensions rotates no pair of them");
    expect_error((const char *[]){"model.position=\"rotary\""}, 1, "model.position");
    expect_error((const char *[]){"model.glu=1"}, 1, "model.glu");
    expect_error((const char *[]){"model.qk_norm=\"yes\""}, 1, "model.qk_norm");
    expect_error((const char *[]){"model.activation=\"swish\""}, 1, "model.activation");
    /* what a variant's row rules out, naming the model key and the entry */
    expect_error((const char *[]){"model.attention={\"type\": \"xl\"}", "model.position=\"rope\""}, 2,
                 "model.position: rope does not apply to attention type \"xl\" (model.attention.type)");
    expect_error((const char *[]){"model.attention={\"type\": \"xl\"}", "model.position=\"alibi\""}, 2,
                 "model.position: alibi does not apply to attention type \"xl\"");
    expect_error((const char *[]){"model.attention={\"type\": \"xl\"}", "model.n_kv_heads=2"}, 2,
                 "model.n_kv_heads: shared key/value heads does not apply to attention type \"xl\"");
    expect_error((const char *[]){"model.attention={\"type\": \"xl\"}", "model.qk_norm=true"}, 2,
                 "model.qk_norm: QK-norm does not apply to attention type \"xl\"");
    expect_error((const char *[]){"model.attention=[{\"type\": \"full\"}, {\"type\": \"linear\"}]", "model.position=\"alibi\""},
                 2, "model.position: alibi does not apply to attention type \"linear\" (model.attention[1].type)");
    expect_error((const char *[]){"model.attention={\"type\": \"performer\"}", "model.position=\"alibi\""}, 2,
                 "attention type \"performer\"");
    expect_error((const char *[]){"model.attention={\"type\": \"infini\"}", "model.position=\"alibi\""}, 2,
                 "attention type \"infini\"");
    const char *ed[] = {"model.arch=\"encoder_decoder\"", "model.vocab_size=259"};
    expect_error((const char *[]){ed[0], ed[1], "model.position=\"rope\""}, 3,
                 "model.position: \"rope\" is available in decoder-only models");
    expect_error((const char *[]){ed[0], ed[1], "model.n_kv_heads=1"}, 3, "model.n_kv_heads: grouped-query attention");
    expect_error((const char *[]){ed[0], ed[1], "model.qk_norm=true"}, 3, "model.qk_norm: available in decoder-only");
    CHECK(!build_msg((const char *[]){ed[0], ed[1], "model.glu=true", "model.activation=\"silu\""}, 4)[0],
          "encoder-decoder with SwiGLU: %s", build_msg((const char *[]){ed[0], ed[1], "model.glu=true"}, 3));
    /* a table caps the context; rope and alibi do not */
    expect_error((const char *[]){"eval.ctx=64"}, 1, "eval.ctx: must not exceed model.max_seq_len with learned positions");
    cf_config c;
    CHECK(parse(&c, (const char *[]){"model.position=\"rope\"", "train.seq_len=64", "eval.ctx=256"}, 3) == 0,
          "rope beyond max_seq_len: %s", cf_error_msg());
    CHECK(parse(&c, (const char *[]){"model.position=\"alibi\"", "eval.ctx=256"}, 2) == 0, "alibi eval.ctx: %s",
          cf_error_msg());
    CHECK(parse(&c, NULL, 0) == 0 && c.model.n_kv_heads == 4, "n_kv_heads resolves to n_heads: %d", c.model.n_kv_heads);
}

/* the parameters the options declare, with their shapes */
static void test_params(void) {
    cf_config c;
    CHECK(parse(&c, (const char *[]){"model.n_kv_heads=1", "model.qk_norm=true", "model.glu=true", "model.bias=false",
                                     "model.position=\"rope\""}, 5) == 0, "%s", cf_error_msg());
    cf_model m;
    CHECK(cf_model_init(&m, &c.model, 1) == 0, "%s", cf_error_msg());
    const cf_tensor *qkv = cf_params_find(&m.params, "blocks.1.attn.qkv.weight");
    CHECK(qkv && qkv->shape[0] == 32 + 2 * 8 && qkv->shape[1] == 32, "qkv with one kv head: %s",
          qkv ? cf_shape_str(qkv) : "missing");
    const cf_tensor *qn = cf_params_find(&m.params, "blocks.0.attn.q_norm.weight");
    const cf_tensor *kn = cf_params_find(&m.params, "blocks.0.attn.k_norm.weight");
    CHECK(qn && kn && qn->numel == 8 && kn->numel == 8 && qn->data[0] == 1.0f, "q_norm, k_norm [Dh], initialised to 1");
    const cf_tensor *up = cf_params_find(&m.params, "blocks.0.mlp.up.weight");
    CHECK(up && up->shape[0] == 64 && up->shape[1] == 32, "mlp.up [d_ff, D]");
    CHECK(!cf_params_find(&m.params, "pos_emb.weight") && !cf_params_find(&m.params, "blocks.0.attn.qkv.bias"),
          "rope without biases declares neither positions nor biases");
    cf_model_free(&m);
}

/* A fixed batch: the loss after 12 AdamW steps must be well below the first, every gradient finite. */
static int fit(const char *const *ov, int n, double *first, double *last) {
    cf_config c;
    if (parse(&c, ov, n)) return -1;
    cf_model m;
    if (cf_model_init(&m, &c.model, 3)) return -1;
    int B = c.train.batch_size, T = c.train.seq_len;
    int32_t x[2 * 16], y[2 * 16];
    for (int i = 0; i < B * T; i++) {
        x[i] = (int32_t)((i * 37 + 11) % 97);
        y[i] = (int32_t)((i * 37 + 48) % 97);
    }
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    cf_optim opt;
    cf_optim_init(&opt, CF_OPTIM_ADAMW, &m.params);
    int finite = 1;
    for (int s = 0; s < 12; s++) {
        cf_ctx_begin(&ctx, (uint64_t)s);
        cf_params_zero_grad(&m.params);
        cf_tensor *l = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
        cf_backward(&ctx, l, NULL);
        for (int64_t i = 0; i < m.params.numel; i++) finite &= isfinite(m.params.grads[i]);
        if (s == 0) *first = l->data[0];
        *last = l->data[0];
        cf_clip_grad_norm(&m.params, c.train.grad_clip);
        cf_optim_step(&opt, &m.params, c.train.lr, &c.train);
    }
    cf_optim_free(&opt);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    return finite ? 0 : 1;
}

static void test_every_combination(void) {
    const char *types[] = {"{\"type\": \"full\"}", "{\"type\": \"window\", \"window\": 4}",
                           "{\"type\": \"sparse_strided\", \"stride\": 4, \"combine\": \"merged\"}",
                           "{\"type\": \"sparse_fixed\", \"stride\": 4, \"c\": 2}", "{\"type\": \"linear\"}",
                           "{\"type\": \"performer\", \"features\": 16}", "{\"type\": \"infini\", \"segment_len\": 8}",
                           "{\"type\": \"xl\", \"mem_len\": 8}"};
    const char *positions[] = {"\"learned\"", "\"rope\"", "\"alibi\""};
    /* each row: n_kv_heads, qk_norm, glu, activation */
    const char *heads[][4] = {{"4", "false", "false", "\"gelu\""}, {"2", "true", "true", "\"silu\""},
                              {"1", "false", "true", "\"gelu\""}};
    int trained = 0, refused = 0;
    for (int t = 0; t < 8; t++)
        for (int p = 0; p < 3; p++)
            for (int h = 0; h < 3; h++) {
                char ov[6][160];
                snprintf(ov[0], sizeof ov[0], "model.attention=%s", types[t]);
                snprintf(ov[1], sizeof ov[1], "model.position=%s", positions[p]);
                snprintf(ov[2], sizeof ov[2], "model.n_kv_heads=%s", heads[h][0]);
                snprintf(ov[3], sizeof ov[3], "model.qk_norm=%s", heads[h][1]);
                snprintf(ov[4], sizeof ov[4], "model.glu=%s", heads[h][2]);
                snprintf(ov[5], sizeof ov[5], "model.activation=%s", heads[h][3]);
                const char *o[6] = {ov[0], ov[1], ov[2], ov[3], ov[4], ov[5]};
                const char *msg = build_msg(o, 6);
                /* what the rows' flags allow: xl only the plain block, alibi only the softmax kernels */
                int xl = t == 7, alibi_ok = t <= 3;
                int accept = xl ? p == 0 && h == 0 : p != 2 || alibi_ok;
                if (!accept) {
                    CHECK(msg[0] && strstr(msg, "does not apply to attention type"), "%s %s kv %s: want a refusal, got \"%s\"",
                          types[t], positions[p], heads[h][0], msg);
                    refused++;
                    continue;
                }
                CHECK(!msg[0], "%s %s kv %s: %s", types[t], positions[p], heads[h][0], msg);
                double first = 0, last = 0;
                int rc = fit(o, 6, &first, &last);
                CHECK(rc == 0 && last < 0.8 * first, "%s %s kv %s qk %s glu %s: rc %d, loss %.4f -> %.4f", types[t],
                      positions[p], heads[h][0], heads[h][1], heads[h][2], rc, first, last);
                trained++;
            }
    printf("trained %d combinations, %d refused\n", trained, refused);
}

/* rope and alibi at four times the training context; causal, so the first T positions' logits
 * are those of a call of T tokens */
static void test_long_context(void) {
    const char *pos[] = {"model.position=\"rope\"", "model.position=\"alibi\""};
    for (int p = 0; p < 2; p++) {
        cf_config c;
        CHECK(parse(&c, (const char *[]){pos[p], "model.n_kv_heads=2"}, 2) == 0, "%s", cf_error_msg());
        cf_model m;
        CHECK(cf_model_init(&m, &c.model, 5) == 0, "%s", cf_error_msg());
        int T = 4 * c.model.max_seq_len, V = c.model.vocab_size;
        int32_t ids[64];
        for (int i = 0; i < T; i++) ids[i] = (int32_t)((i * 53 + 7) % 256);
        cf_ctx ctx;
        CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, 1, T), 1 << 16) == 0, "%s", cf_error_msg());
        cf_ctx_begin(&ctx, 0);
        cf_tensor *lo = cf_model_logits(&m, &ctx, ids, 1, T);
        int finite = 1;
        for (int64_t i = 0; i < lo->numel; i++) finite &= isfinite(lo->data[i]);
        float *head = malloc(sizeof(float) * 16 * V);
        memcpy(head, lo->data, sizeof(float) * 16 * V);
        cf_ctx_begin(&ctx, 1);
        cf_tensor *ls = cf_model_logits(&m, &ctx, ids, 1, 16);
        double e = t_max_rel_err(ls->data, head, 16 * V, 1e-3);
        CHECK(finite && e < 1e-5, "%s at %d tokens: finite %d, prefix differs by %.3g", pos[p], T, finite, e);
        free(head);
        cf_ctx_free(&ctx);
        cf_model_free(&m);
    }
}

int main(void) {
    test_errors();
    test_params();
    test_every_combination();
    test_long_context();
    TEST_MAIN_END();
}
