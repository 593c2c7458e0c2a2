/* The attention variants inside the decoder model: per-layer lists of variants build (each layer
 * gets its entry, cycled, and its block index), train on a repeated batch (loss finite and going
 * down), and give bitwise the same gradients with gradient checkpointing as without, with dropout
 * on (residual and attention dropout both replay); configurations the model cannot run are refused
 * with the key path. */
#include <string.h>
#include "test.h"
#include "cformer/attention.h"
#include "cformer/train.h"

#define LIST_ALL "[{\"type\":\"window\",\"window\":5},{\"type\":\"sparse_strided\",\"stride\":4}," \
                 "{\"type\":\"sparse_fixed\",\"stride\":6,\"c\":2,\"combine\":\"heads\"},{\"type\":\"linear\"}," \
                 "{\"type\":\"performer\",\"features\":12,\"redraw_every\":3}," \
                 "{\"type\":\"sparse_strided\",\"stride\":5,\"combine\":\"merged\"}]"

static int parse(cf_config *c, const char *const *sets, int n) {
    return cf_config_parse(c, "{}", sets, n, 0);
}

/* ---- a few training steps on one batch ------------------------------------------------------------ */
static void trains(const char *what, const char *const *sets, int n_sets) {
    cf_config c;
    CF_ASSERT(parse(&c, sets, n_sets) == 0, "%s", cf_error_msg());
    cf_model m;
    CHECK(cf_model_init(&m, &c.model, 1) == 0, "%s: %s", what, cf_error_msg());
    int B = c.train.batch_size, T = c.train.seq_len, V = c.model.vocab_size;
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    /* a learnable stream: each byte predicts the next of a short repeating text */
    const char *text = "the quick brown fox jumps over the lazy dog; ";
    int L = (int)strlen(text);
    for (int i = 0; i < B * T; i++) { x[i] = (uint8_t)text[(i + i / T) % L] % V; y[i] = (uint8_t)text[(i + i / T + 1) % L] % V; }
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 1;
    cf_optim opt;
    cf_optim_init(&opt, c.train.optimizer, &m.params);
    float first = 0, last = 0;
    int finite = 1;
    for (int s = 0; s < 12; s++) {
        cf_ctx_begin(&ctx, (uint64_t)s);
        cf_params_zero_grad(&m.params);
        cf_tensor *loss = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
        cf_backward(&ctx, loss, NULL);
        float g = cf_clip_grad_norm(&m.params, 1.0f);
        finite &= isfinite(loss->data[0]) && isfinite(g);
        if (s == 0) first = loss->data[0];
        last = loss->data[0];
        cf_optim_step(&opt, &m.params, 3e-3f, &c.train);
    }
    printf("%s: loss %.4f -> %.4f in 12 steps\n", what, first, last);
    CHECK(finite, "%s: a loss or gradient norm is not finite", what);
    CHECK(last < first - 0.5f, "%s: loss %.4f -> %.4f does not go down", what, first, last);
    cf_optim_free(&opt);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    free(x); free(y);
}

/* ---- gradient checkpointing --------------------------------------------------------------------------- */
typedef struct result { float loss; float *grads; int64_t numel; } result;

static result run(const char *const *sets, int n_sets, int ckpt) {
    cf_config c;
    CF_ASSERT(parse(&c, sets, n_sets) == 0, "%s", cf_error_msg());
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 3) == 0, "%s", cf_error_msg());
    cf_model_set_checkpointing(&m, ckpt);
    int B = c.train.batch_size, T = c.train.seq_len, V = c.model.vocab_size;
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    for (int i = 0; i < B * T; i++) { x[i] = (i * 7 + 3) % V; y[i] = (i * 13 + 5) % V; }
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 11;
    cf_ctx_begin(&ctx, 5);
    cf_params_zero_grad(&m.params);
    cf_tensor *loss = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
    cf_backward(&ctx, loss, NULL);
    result r = {loss->data[0], malloc(sizeof(float) * m.params.numel), m.params.numel};
    memcpy(r.grads, m.params.grads, sizeof(float) * m.params.numel);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    free(x); free(y);
    return r;
}

static void checkpointing(void) {
    const char *sets[] = {"model.d_model=32", "model.n_layers=6", "model.n_heads=2", "model.max_seq_len=40",
                          "model.dropout=0.1", "train.seq_len=40", "train.batch_size=2", "model.attention=" LIST_ALL};
    result base = run(sets, 8, 0);
    CHECK(isfinite(base.loss), "loss %g", base.loss);
    for (int k = 1; k <= 3; k++) {
        result r = run(sets, 8, k);
        CHECK(r.loss == base.loss, "checkpointing k=%d: loss %.9g vs %.9g", k, r.loss, base.loss);
        CHECK(!memcmp(r.grads, base.grads, sizeof(float) * base.numel), "checkpointing k=%d: gradients differ", k);
        free(r.grads);
    }
    free(base.grads);
}

/* ---- building ----------------------------------------------------------------------------------------- */
static void layers(void) {
    const char *sets[] = {"model.n_layers=7", "model.attention=" LIST_ALL};
    cf_config c;
    CF_ASSERT(parse(&c, sets, 2) == 0, "%s", cf_error_msg());
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 1) == 0, "%s", cf_error_msg());
    static const cf_attn_kind want[] = {CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED, CF_ATTN_SPARSE_FIXED, CF_ATTN_LINEAR,
                                        CF_ATTN_PERFORMER, CF_ATTN_SPARSE_STRIDED, CF_ATTN_WINDOW};
    for (int i = 0; i < 7; i++) {
        CHECK(m.blocks[i].attn.cfg.type == want[i] && m.blocks[i].attn.layer == i,
              "block %d: type %s layer %d", i, cf_attn_kind_name(m.blocks[i].attn.cfg.type), m.blocks[i].attn.layer);
        cf_attn_pattern p = cf_attn_pattern_of(&m.blocks[i].attn.cfg, m.blocks[i].attn.layer);
        if (i == 1) CHECK(p.parts == 2 && !p.split_heads, "block 1 (odd, alternate) should take part 2");
    }
    /* stride 0 resolves to round(sqrt(seq_len)) */
    const char *s2[] = {"train.seq_len=200", "model.max_seq_len=200", "model.attention.type=sparse_fixed"};
    CF_ASSERT(parse(&c, s2, 3) == 0, "%s", cf_error_msg());
    CHECK(c.model.attn[0].stride == 14, "default stride %d for seq_len 200", c.model.attn[0].stride);
    cf_model_free(&m);
}

static void refused(void) {
    /* xl and infini carry state along one byte stream: decoder-only */
    struct { const char *set, *arch, *msg; } cases[] = {
        {"model.attention.type=infini", "model.arch=encoder_decoder",
         "model.attention.type: \"infini\" carries state along a stream of bytes and is available in decoder-only"},
        {"model.attention=[{\"type\":\"window\"},{\"type\":\"xl\"}]", "model.arch=encoder_decoder",
         "model.attention[1].type: \"xl\" carries state"},
        {"model.attention={\"type\":\"sparse_strided\",\"combine\":\"heads\"}", "model.arch=decoder",
         "model.attention.combine: \"heads\""},
    };
    for (int i = 0; i < 3; i++) {
        const char *sets[] = {"model.n_heads=1", "model.d_model=16", "model.vocab_size=260", cases[i].set, cases[i].arch};
        cf_config c;
        CF_ASSERT(parse(&c, sets, 5) == 0, "%s", cf_error_msg());
        cf_model m;
        int rc = cf_model_init(&m, &c.model, 1);
        CHECK(rc == -1 && strstr(cf_error_msg(), cases[i].msg), "%s: rc %d, message \"%s\"", cases[i].set, rc,
              rc ? cf_error_msg() : "");
        if (rc == 0) cf_model_free(&m);
    }
}

int main(void) {
    layers();
    refused();
    const char *base[] = {"model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=64",
                          "train.seq_len=64", "train.batch_size=2", "train.weight_decay=0", NULL};
    const char *lists[][2] = {
        {"window + sparse_strided", "model.attention=[{\"type\":\"window\",\"window\":8},{\"type\":\"sparse_strided\"}]"},
        {"sparse_fixed merged + linear", "model.attention=[{\"type\":\"sparse_fixed\",\"combine\":\"merged\"},{\"type\":\"linear\"}]"},
        {"performer + sparse_strided heads", "model.attention=[{\"type\":\"performer\",\"features\":32},{\"type\":\"sparse_strided\",\"combine\":\"heads\"}]"},
    };
    for (int i = 0; i < 3; i++) {
        base[7] = lists[i][1];
        trains(lists[i][0], base, 8);
    }
    checkpointing();
    TEST_MAIN_END();
}
