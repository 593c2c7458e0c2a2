/* Gradient checkpointing: recomputing blocks in backward gives bitwise the gradients of storing
 * them, with dropout on (the masks replay from the counter-based RNG), for every region size, in
 * full and in selective recompute, and uses less arena memory. Selective recompute keeps each
 * block's attention and the residual sums a norm reads (pre-norm: the one after attention, and a
 * block's output inside a region; post-norm: both), and skips the two output projections, which
 * nothing reads. */
#include <string.h>
#include "test.h"
#include "cformer/train.h"

typedef struct result { float loss; float *grads; int64_t numel; size_t peak; int64_t counts[3]; int layers; } result;

static result run(const char *const *sets, int n_sets, int ckpt, int full) {
    cf_config c;
    CF_ASSERT(cf_config_parse(&c, "{}", sets, n_sets, 0) == 0, "%s", cf_error_msg());
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 3) == 0, "%s", cf_error_msg());
    cf_model_set_checkpointing(&m, ckpt);
    cf_model_set_recompute(&m, full ? CF_RECOMPUTE_FULL : CF_RECOMPUTE_SELECTIVE);
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
    result r = {loss->data[0], malloc(sizeof(float) * m.params.numel), m.params.numel, ctx.arena.peak, {0}, c.model.n_layers};
    memcpy(r.grads, m.params.grads, sizeof(float) * m.params.numel);
    cf_rc_counts(&ctx, r.counts);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    free(x); free(y);
    return r;
}

static void compare(const char *what, const char *const *sets, int n_sets, int pre) {
    result base = run(sets, n_sets, 0, 0);
    for (int full = 0; full <= 1; full++)
        for (int k = 1; k <= 3; k++) {
            const char *mode = full ? "full" : "selective";
            result r = run(sets, n_sets, k, full);
            CHECK(r.loss == base.loss, "%s %s k=%d: loss %.9g vs %.9g", what, mode, k, r.loss, base.loss);
            CHECK(!memcmp(r.grads, base.grads, sizeof(float) * base.numel), "%s %s k=%d: gradients differ", what, mode, k);
            if (k == 1) CHECK(r.peak < base.peak, "%s %s: arena peak %zu with checkpointing, %zu without", what, mode, r.peak, base.peak);
            if (full) CHECK(r.counts[CF_RC_SKIPPED] + r.counts[CF_RC_KEPT] == 0, "%s full k=%d: a replay kept or skipped ops", what, k);
            int L = r.layers, regions = (L + k - 1) / k, kept = pre ? 2 * L + (L - regions) : 3 * L;
            if (!full) CHECK(r.counts[CF_RC_KEPT] == kept && r.counts[CF_RC_SKIPPED] == 2 * L,
                             "%s selective k=%d: %lld kept, %lld skipped over %d layers (want %d and %d)", what, k,
                             (long long)r.counts[CF_RC_KEPT], (long long)r.counts[CF_RC_SKIPPED], L, kept, 2 * L);
            printf("%s %s k=%d: arena peak %.2f MB vs %.2f MB without; replay computed %lld ops, kept %lld, skipped %lld\n",
                   what, mode, k, r.peak / 1048576.0, base.peak / 1048576.0, (long long)r.counts[CF_RC_COMPUTE],
                   (long long)r.counts[CF_RC_KEPT], (long long)r.counts[CF_RC_SKIPPED]);
            free(r.grads);
        }
    free(base.grads);
}

int main(void) {
    const char *pre[] = {"model.d_model=32", "model.n_layers=5", "model.n_heads=2", "model.max_seq_len=32",
                         "model.dropout=0.1", "train.seq_len=32", "train.batch_size=3"};
    compare("pre-norm, dropout", pre, 7, 1);
    const char *post[] = {"model.d_model=32", "model.n_layers=4", "model.n_heads=4", "model.max_seq_len=24",
                          "model.dropout=0.2", "model.norm_position=\"post\"", "model.norm=\"rmsnorm\"",
                          "model.activation=\"relu\"", "model.position=\"sinusoidal\"", "train.seq_len=24", "train.batch_size=2"};
    compare("post-norm rmsnorm relu sinusoidal, dropout", post, 11, 0);
    TEST_MAIN_END();
}
