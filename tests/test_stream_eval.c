/* Evaluation of recurrent models (xl, infini) by streaming (src/train/eval.c): the file is read in
 * order, segment by segment, with the state carried, so it must score exactly what one long call
 * over the whole file scores when the memory reaches back that far; every byte after the first is
 * scored once whatever the number of columns; the training streams' state is left alone; and
 * Transformer-XL's evaluation memory length (cformer eval --mem-len) changes what a byte sees. */
#include <string.h>
#include "test.h"
#include "cformer/train.h"

static void make_model(cf_config *c, cf_model *m, const char *attn, int max_seq) {
    char a[256], ms[64];
    snprintf(a, sizeof a, "model.attention=%s", attn);
    snprintf(ms, sizeof ms, "model.max_seq_len=%d", max_seq);
    const char *sets[] = {"model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.d_ff=32",
                          "model.init_std=0.2", "train.batch_size=3", "train.seq_len=8", ms, a,
                          /* no absolute positions: a call's positions would restart at 0 */
                          "model.position=\"none\""};
    CF_ASSERT(cf_config_parse(c, "{}", sets, 10, 0) == 0, "%s", cf_error_msg());
    CF_ASSERT(cf_model_init(m, &c->model, 7) == 0, "%s", cf_error_msg());
}

static void make_text(uint8_t *b, size_t n) {
    const char *text = "streams carry their state from one segment to the next; ";
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)text[(i * 7 + i / 13) % strlen(text)];
}

/* bits per byte of data[1..n) from one call over the whole file, no state (the reference) */
static double one_call_bpb(cf_model *m, cf_ctx *ctx, const uint8_t *data, int n) {
    int32_t *x = malloc(sizeof(int32_t) * n), *y = malloc(sizeof(int32_t) * n);
    for (int t = 0; t < n - 1; t++) { x[t] = data[t]; y[t] = data[t + 1]; }
    ctx->training = 0;
    ctx->grad_enabled = 0;
    cf_ctx_begin(ctx, 0);
    cf_tensor *loss = cf_model_loss(m, ctx, x, y, 1, n - 1, NULL);
    double bpb = loss->data[0] / log(2.0);
    free(x); free(y);
    return bpb;
}

static void check_stream(const char *what, const char *attn, int T) {
    enum { N = 97 };
    cf_config c;
    cf_model m;
    make_model(&c, &m, attn, 128);
    uint8_t data[N];
    make_text(data, N);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, 3, 128), 1 << 14) == 0, "%s", cf_error_msg());
    double want = one_call_bpb(&m, &ctx, data, N);
    /* the training state must survive an evaluation: give it something recognisable */
    cf_rec_state_alloc(&m, &m.rec, 3);
    cf_eval_result r;
    CHECK(cf_eval_bpb(&m, &ctx, data, N, T, T, 1, &r) == 0, "%s: %s", what, cf_error_msg());
    double e = fabs(r.bpb - want) / want;
    printf("%s: streamed in segments of %d = %.6f bpb, one call over %d bytes = %.6f (rel err %.2g)\n", what, T,
           r.bpb, N, want, e);
    CHECK(r.bytes == N - 1 && e < 2e-6, "%s: streamed %.7f bpb over %lld bytes, one call %.7f over %d", what, r.bpb,
          (long long)r.bytes, want, N - 1);
    CHECK(m.state == &m.rec && m.rec.batch == 3 && !m.stream, "%s: evaluation left the training state swapped", what);
    int untouched = 1;
    for (int l = 0; l < m.n_blocks; l++) untouched &= !m.rec.used[l];
    CHECK(untouched, "%s: evaluation wrote the training streams' state", what);
    /* columns: every byte scored once, whatever their number */
    for (int cols = 2; cols <= 5; cols += 3) {
        CHECK(cf_eval_bpb(&m, &ctx, data, N, T, T, cols, &r) == 0 && r.bytes == N - 1,
              "%s: %d columns scored %lld bytes of %d", what, cols, (long long)r.bytes, N - 1);
        CHECK(r.bpb > 0 && fabs(r.bpb - want) / want < 0.2, "%s: %d columns: %.4f bpb vs %.4f", what, cols, r.bpb, want);
    }
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

/* --mem-len: the memory an xl layer keeps at evaluation decides what a byte sees */
static void check_mem_len(void) {
    enum { N = 97 };
    cf_config c;
    cf_model m;
    make_model(&c, &m, "{\"type\":\"xl\",\"mem_len\":8}", 128);
    uint8_t data[N];
    make_text(data, N);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, 3, 256), 1 << 14) == 0, "%s", cf_error_msg());
    double want = one_call_bpb(&m, &ctx, data, N);
    cf_eval_result r8, r96, r0;
    cf_eval_bpb(&m, &ctx, data, N, 8, 8, 1, &r8);
    cf_model_set_mem_len(&m, 96);
    cf_eval_bpb(&m, &ctx, data, N, 8, 8, 1, &r96);
    cf_model_set_mem_len(&m, 0);
    cf_eval_bpb(&m, &ctx, data, N, 8, 8, 1, &r0);
    printf("xl eval memory: mem_len 0 %.5f, 8 %.5f, 96 %.5f bpb; one call %.5f\n", r0.bpb, r8.bpb, r96.bpb, want);
    CHECK(fabs(r96.bpb - want) / want < 2e-6, "xl --mem-len 96 (the whole file): %.7f vs one call %.7f", r96.bpb, want);
    CHECK(fabs(r8.bpb - r96.bpb) > 1e-4 && fabs(r0.bpb - r8.bpb) > 1e-4,
          "xl: the evaluation memory length changes nothing (%.6f %.6f %.6f)", r0.bpb, r8.bpb, r96.bpb);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

int main(void) {
    /* xl: the memory holds the whole file, so each segment sees everything before it */
    check_stream("xl", "{\"type\":\"xl\",\"mem_len\":96}", 8);
    check_stream("xl, a last short segment", "{\"type\":\"xl\",\"mem_len\":100}", 10);
    /* infini: one call over the file runs its segments with the memory carried inside the op;
     * streaming carries the same memory between calls of one segment (or two) each */
    check_stream("infini linear", "{\"type\":\"infini\",\"segment_len\":8}", 8);
    check_stream("infini delta", "{\"type\":\"infini\",\"segment_len\":8,\"update\":\"delta\"}", 16);
    check_mem_len();
    TEST_MAIN_END();
}
