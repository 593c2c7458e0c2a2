/* The decoder, default and with the block options, against its PyTorch twin (tools/torch_gpt.py --golden): on the
 * same weights and batch, logits, loss and every parameter's gradient agree to float32 rounding,
 * and five AdamW steps give the same losses. The .h5 files were written once with Debian's
 * python3-torch (tests/golden/README.md), so this test needs no PyTorch. */
#include <string.h>
#include "test.h"
#include "cformer/h5io.h"
#include "cformer/train.h"

static double rel_err(const float *a, const float *b, int64_t n) {
    double num = 0, den = 1e-12;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > num || d != d) num = d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}

static void check_golden(const char *path, int checkpointing) {
    hid_t f = cf_h5_open_read(path);
    CHECK(f >= 0, "%s", cf_error_msg());
    if (f < 0) return;
    char *json = cf_h5_read_string(f, path, "config");
    cf_config c;
    int rc = cf_config_parse(&c, json, (const char *[]){"train.warmup_steps=0", "train.schedule=\"constant\""}, 2, 0);
    CHECK(rc == 0, "%s config: %s", path, cf_error_msg());
    free(json);
    if (rc) { H5Fclose(f); return; }
    cf_model m;
    CHECK(cf_model_init(&m, &c.model, 7) == 0, "%s", cf_error_msg());
    cf_model_set_checkpointing(&m, checkpointing);
    for (int i = 0; i < m.params.n; i++) {
        cf_tensor *t = m.params.t[i];
        char name[256];
        snprintf(name, sizeof name, "params/%s", t->name);
        CHECK(cf_h5_read_f32(f, path, name, t->data, t->ndim, t->shape, t->numel) == 0, "%s", cf_error_msg());
    }
    int B = c.train.batch_size, T = c.train.seq_len, V = c.model.vocab_size;
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    CHECK(cf_h5_read_i32(f, path, "input/x", x, (int64_t)B * T) == 0, "%s", cf_error_msg());
    CHECK(cf_h5_read_i32(f, path, "input/y", y, (int64_t)B * T) == 0, "%s", cf_error_msg());

    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    cf_ctx_begin(&ctx, 0);
    cf_params_zero_grad(&m.params);
    cf_tensor *logits;
    cf_tensor *loss = cf_model_loss(&m, &ctx, x, y, B, T, &logits);
    cf_backward(&ctx, loss, NULL);

    float *buf = malloc(sizeof(float) * (size_t)B * T * V);
    CHECK(cf_h5_read_f32(f, path, "expect/logits", buf, 3, (int[]){B, T, V}, (int64_t)B * T * V) == 0, "%s", cf_error_msg());
    double e = rel_err(logits->data, buf, (int64_t)B * T * V);
    CHECK(e < 1e-4, "%s logits: max rel err %.3g", path, e);
    double want;
    CHECK(cf_h5_read_f64(f, path, "expect/loss", &want, 1) == 0, "%s", cf_error_msg());
    CHECK(fabs(loss->data[0] - want) < 1e-4 * fabs(want), "%s loss %.7f, torch %.7f", path, loss->data[0], want);
    double worst = 0;
    for (int i = 0; i < m.params.n; i++) {
        cf_tensor *t = m.params.t[i];
        char name[256];
        float *g = malloc(sizeof(float) * t->numel);
        snprintf(name, sizeof name, "expect/grads/%s", t->name);
        CHECK(cf_h5_read_f32(f, path, name, g, t->ndim, t->shape, t->numel) == 0, "%s", cf_error_msg());
        double eg = rel_err(t->grad, g, t->numel);
        if (eg > worst) worst = eg;
        CHECK(eg < 1e-4, "%s grad %s: max rel err %.3g", path, t->name, eg);
        free(g);
    }
    printf("%s (checkpointing %d): loss %.6f vs %.6f, logits err %.2g, worst grad err %.2g\n", path, checkpointing,
           loss->data[0], want, e, worst);

    /* five AdamW steps on the same batch at constant lr */
    double losses[5];
    CHECK(cf_h5_read_f64(f, path, "expect/losses", losses, 5) == 0, "%s", cf_error_msg());
    cf_optim opt;
    cf_optim_init(&opt, CF_OPTIM_ADAMW, &m.params);
    for (int s = 0; s < 5; s++) {
        cf_ctx_begin(&ctx, (uint64_t)s);
        cf_params_zero_grad(&m.params);
        cf_tensor *l = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
        cf_backward(&ctx, l, NULL);
        cf_clip_grad_norm(&m.params, c.train.grad_clip);
        cf_optim_step(&opt, &m.params, cf_lr_at(&c.train, s), &c.train);
        CHECK(fabs(l->data[0] - losses[s]) < 1e-4 * fabs(losses[s]), "%s step %d loss %.7f, torch %.7f", path, s,
              l->data[0], losses[s]);
    }
    cf_optim_free(&opt);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    free(buf); free(x); free(y);
    H5Fclose(f);
}

int main(void) {
    check_golden("tests/golden/gpt_tied.h5", 0);
    check_golden("tests/golden/gpt_untied.h5", 0);
    check_golden("tests/golden/gpt_tied.h5", 1);
    /* the block options (docs/attention.md section 11): RMSNorm, rope, SwiGLU, no biases, grouped
     * kv heads and QK-norm (llama); ALiBi over 6 heads with GEGLU and one kv head; rope on half of
     * each head with post-norm ReGLU. 80 tokens span two of the kernels' 64-key blocks. */
    check_golden("tests/golden/llama.h5", 0);
    check_golden("tests/golden/llama.h5", 1);
    check_golden("tests/golden/alibi_geglu.h5", 0);
    check_golden("tests/golden/rope_partial.h5", 0);
    TEST_MAIN_END();
}
