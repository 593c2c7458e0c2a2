/* The encoder-decoder (encdec.h, pairs.h): the pair file format and batch layout, gradient checks
 * of cross-attention and of a whole tiny model, padding invariance, gradient checkpointing with
 * bitwise equal gradients, the cached incremental decoder against the full forward pass, and exact
 * resume of a training run. tests/test_encdec_train.c trains the reverse task. Files live in a
 * fresh directory under /tmp. */
#include <ftw.h>
#include <string.h>
#include <unistd.h>
#include "test.h"
#include "gradcheck.h"
#include "cformer/checkpoint.h"
#include "cformer/pairs.h"

static char root[256];

static void write_text(const char *path, const char *text, size_t n) {
    FILE *f = fopen(path, "wb");
    CF_ASSERT(f && fwrite(text, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

static char *path_in(const char *name) {
    static char buf[4][512];
    static int slot;
    char *p = buf[slot++ & 3];
    snprintf(p, 512, "%s/%s", root, name);
    return p;
}

/* the encoder-decoder used by most checks: small, every part present, overridable */
static void config(cf_config *c, const char *const *extra, int n_extra) {
    const char *base[] = {"model.arch=\"encoder_decoder\"", "model.vocab_size=259", "model.d_model=16",
                          "model.n_heads=2", "model.d_ff=32", "model.encoder={\"n_layers\": 2}",
                          "model.decoder={\"n_layers\": 2}", "model.max_seq_len=16", "train.seq_len=8",
                          "train.batch_size=3"};
    const char *all[40];
    int n = 0;
    for (size_t i = 0; i < sizeof base / sizeof *base; i++) all[n++] = base[i];
    for (int i = 0; i < n_extra; i++) all[n++] = extra[i];
    CF_ASSERT(cf_config_parse(c, "{}", all, n, 0) == 0, "%s", cf_error_msg());
}

/* a pair file of these lines, loaded */
static void load_pairs(cf_pairs *p, const char *name, const char *text, int max_tokens) {
    write_text(path_in(name), text, strlen(text));
    CF_ASSERT(cf_pairs_load(p, path_in(name), max_tokens) == 0, "%s", cf_error_msg());
}

/* ---- pair files --------------------------------------------------------------------------------- */
static void expect_load_error(const char *text, const char *want) {
    write_text(path_in("bad.txt"), text, strlen(text));
    cf_pairs p;
    int rc = cf_pairs_load(&p, path_in("bad.txt"), 8);
    CHECK(rc == -1 && strstr(cf_error_msg(), want), "load of \"%s\": rc %d, message \"%s\", want \"%s\"", text, rc,
          rc ? cf_error_msg() : "", want);
}

static void test_pairs(void) {
    cf_pairs p;
    load_pairs(&p, "fmt.txt", "abc\tcba\na\\tb\tx\\ny\n\\\\\t\n\tz", 8);
    CHECK(p.n == 4, "pairs: %d, want 4", p.n);
    if (p.n == 4) {
        CHECK(cf_pairs_src_len(&p, 1) == 3 && !memcmp(cf_pairs_src(&p, 1), "a\tb", 3), "escaped TAB in a source");
        CHECK(cf_pairs_tgt_len(&p, 1) == 3 && !memcmp(cf_pairs_tgt(&p, 1), "x\ny", 3), "escaped LF in a target");
        CHECK(cf_pairs_src_len(&p, 2) == 1 && cf_pairs_src(&p, 2)[0] == '\\' && cf_pairs_tgt_len(&p, 2) == 0,
              "escaped backslash and an empty target");
        CHECK(cf_pairs_src_len(&p, 3) == 0 && cf_pairs_tgt_len(&p, 3) == 1, "empty source, last line without LF");
    }
    cf_pairs_free(&p);
    expect_load_error("abc\n", ":1: no TAB");
    expect_load_error("a\tb\n\nc\td\n", ":2: no TAB");
    expect_load_error("a\tb\tc\n", ":1: a second TAB");
    expect_load_error("ok\tfine\na\\x\tb\n", ":2:2: bad escape");
    expect_load_error("a\tb\\", ":1:4: bad escape");
    write_text(path_in("empty.txt"), "", 0);
    CHECK(cf_pairs_load(&p, path_in("empty.txt"), 8) == -1 && strstr(cf_error_msg(), "empty"), "empty file: %s",
          cf_error_msg());

    /* every byte survives escaping */
    uint8_t all[256], back[256];
    char esc[513];
    for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
    size_t n = cf_pairs_escape(all, 256, esc);
    CHECK(!memchr(esc, '\t', n) && !memchr(esc, '\n', n), "escaped text has no TAB or LF");
    CHECK(cf_pairs_unescape(esc, n, back, NULL) == 256 && !memcmp(all, back, 256), "escape round trip");

    /* layout and cuts at 4 tokens a side (encdec.h) */
    load_pairs(&p, "cut.txt", "ab\txyz\nabcdef\tuvwxyz\n\tq\n", 4);
    CHECK(p.n_cut_src == 1 && p.n_cut_tgt == 1 && p.max_src_len == 6 && p.max_tgt_len == 6,
          "cut counts: %d sources, %d targets", p.n_cut_src, p.n_cut_tgt);
    cf_s2s_batch b;
    cf_s2s_batch_alloc(&b, 3, 4);
    cf_pairs_batch(&p, (int[]){0, 1, 2}, 3, 4, &b);
    const int P = CF_TOK_PAD, E = CF_TOK_EOS, B0 = CF_TOK_BOS;
    int32_t want_src[12] = {'a', 'b', E, P, 'a', 'b', 'c', E, E, P, P, P};
    uint8_t want_keep[12] = {1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0};
    int32_t want_in[12] = {B0, 'x', 'y', 'z', B0, 'u', 'v', 'w', B0, 'q', P, P};
    int32_t want_out[12] = {'x', 'y', 'z', E, 'u', 'v', 'w', 'x', 'q', E, P, P};
    CHECK(b.B == 3 && b.S == 4 && b.T == 4, "batch shape %d x %d / %d", b.B, b.S, b.T);
    CHECK(!memcmp(b.src, want_src, sizeof want_src) && !memcmp(b.src_keep, want_keep, sizeof want_keep),
          "source layout: bytes, EOS, PAD; a long source keeps 3 bytes and its EOS");
    CHECK(!memcmp(b.tgt_in, want_in, sizeof want_in) && !memcmp(b.tgt_out, want_out, sizeof want_out),
          "target layout: BOS t / t EOS; a long target keeps 4 bytes and no EOS");
    CHECK(b.src_tokens == 8 && b.tgt_tokens == 10, "real tokens %lld + %lld", (long long)b.src_tokens,
          (long long)b.tgt_tokens);
    /* the batch is padded to the longest row it holds, not to the limit */
    cf_pairs_batch(&p, (int[]){2}, 1, 4, &b);
    CHECK(b.S == 1 && b.T == 2, "a lone short pair: %d x %d", b.S, b.T);
    /* random batches are a function of (seed, index) */
    int same = 1, differ = 0;
    for (int r = 0; r < 8; r++) {
        same &= cf_pairs_pick(&p, 5, 17, r) == cf_pairs_pick(&p, 5, 17, r);
        differ |= cf_pairs_pick(&p, 5, 17, r) != cf_pairs_pick(&p, 5, 18, r);
    }
    CHECK(same && differ, "pair sampling is keyed by (seed, index, row)");
    cf_s2s_batch_free(&b);
    cf_pairs_free(&p);

    /* length buckets (train.bucket_pool): the batch is one run of B of the sorted pool of k B picks */
    char text[4096] = "";
    for (int i = 1; i <= 40; i++) {
        char line[100];
        snprintf(line, sizeof line, "%.*s\t%.*s\n", i % 17 + 1, "abcdefghijklmnopqrstu", i, "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOP");
        strcat(text, line);
    }
    load_pairs(&p, "lens.txt", text, 64);
    cf_s2s_batch_alloc(&b, 4, 64);
    int scratch[32], pool[32], rows_ok = 1, k = 8, B = 4;
    int64_t pad_random = 0, pad_bucket = 0;
    for (uint64_t index = 0; index < 50; index++) {
        cf_pairs_sample(&p, 3, index, B, 64, k, scratch, &b);
        pad_bucket += (int64_t)B * (b.S + b.T) - b.src_tokens - b.tgt_tokens;
        /* the reference: sort the picks by (target length, source length, index) */
        for (int r = 0; r < k * B; r++) {
            int x = cf_pairs_pick(&p, 3, index, r), i = r;
            while (i > 0 && (cf_pairs_tgt_len(&p, pool[i - 1]) > cf_pairs_tgt_len(&p, x) ||
                             (cf_pairs_tgt_len(&p, pool[i - 1]) == cf_pairs_tgt_len(&p, x) &&
                              (cf_pairs_src_len(&p, pool[i - 1]) > cf_pairs_src_len(&p, x) ||
                               (cf_pairs_src_len(&p, pool[i - 1]) == cf_pairs_src_len(&p, x) && pool[i - 1] > x))))) {
                pool[i] = pool[i - 1];
                i--;
            }
            pool[i] = x;
        }
        int run = (int)(cf_mix64(cf_rng_key(3, index, (uint64_t)(k * B))) % (uint64_t)k);
        rows_ok &= !memcmp(scratch + run * B, pool + run * B, sizeof(int) * B) && b.B == B &&
                   b.T == cf_pairs_tgt_len(&p, pool[run * B + B - 1]) + 1;
        cf_pairs_sample(&p, 3, index, B, 64, 1, scratch, &b);
        pad_random += (int64_t)B * (b.S + b.T) - b.src_tokens - b.tgt_tokens;
    }
    CHECK(rows_ok, "bucketed batches are not runs of the sorted pool");
    CHECK(pad_bucket * 2 < pad_random, "bucketing: %lld padding tokens, %lld without", (long long)pad_bucket,
          (long long)pad_random);
    printf("bucket_pool 8: %lld padding tokens in 50 batches of 4, %lld without\n", (long long)pad_bucket,
           (long long)pad_random);
    cf_s2s_batch_free(&b);
    cf_pairs_free(&p);

    cf_config c;
    CHECK(cf_config_parse(&c, "{}", (const char *[]){"model.arch=\"encoder_decoder\""}, 1, 0) == 0, "%s", cf_error_msg());
    cf_model m;
    CHECK(cf_model_init(&m, &c.model, 1) == -1 && strstr(cf_error_msg(), "model.vocab_size"),
          "vocab 256 is refused: %s", cf_error_msg());
}

/* ---- gradient checks ------------------------------------------------------------------------------ */
static const uint8_t cross_keep[2 * 5] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};

/* in: x [2, 3, 8], mem [2, 5, 8], Wq, bq, Wkv, bkv, Wproj, bproj */
static cf_tensor *f_cross(cf_ctx *ctx, cf_tensor **in, void *arg) {
    float *dropout = arg;
    cf_cross_attn_layer l = {{in[2], in[3]}, {in[4], in[5]}, {in[6], in[7]}, 2, *dropout};
    return cf_cross_attn_apply(ctx, &l, in[0], in[1], cross_keep);
}

static void test_cross_gradcheck(void) {
    static float x[2 * 3 * 8], mem[2 * 5 * 8], wq[64], bq[8], wkv[128], bkv[16], wp[64], bp[8];
    float *bufs[8] = {x, mem, wq, bq, wkv, bkv, wp, bp};
    int sizes[8] = {48, 80, 64, 8, 128, 16, 64, 8};
    for (int i = 0; i < 8; i++) t_fill_uniform(bufs[i], sizes[i], -1, 1, 100 + i);
    gc_input in[8] = {
        {x, 3, {2, 3, 8}, 1}, {mem, 3, {2, 5, 8}, 1}, {wq, 2, {8, 8}, 1}, {bq, 1, {8}, 1},
        {wkv, 2, {16, 8}, 1}, {bkv, 1, {16}, 1}, {wp, 2, {8, 8}, 1}, {bp, 1, {8}, 1},
    };
    float p = 0;
    gradcheck("cross-attention", f_cross, &p, in, 8, 1e-2f, 1e-2);
    p = 0.2f;   /* the dropout mask is keyed by (seed, step, call), so every evaluation draws the same */
    gradcheck("cross-attention dropout", f_cross, &p, in, 8, 1e-2f, 1e-2);

    /* padded memory positions get no gradient and change nothing */
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, 64 << 20, 1 << 12) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t[8];
    for (int i = 0; i < 8; i++) t[i] = cf_tensor_leaf(&ctx, bufs[i], in[i].ndim, in[i].shape, 1);
    float zero = 0;
    cf_tensor *y = f_cross(&ctx, t, &zero);
    float *y0 = malloc(sizeof(float) * y->numel);
    memcpy(y0, y->data, sizeof(float) * y->numel);
    cf_backward(&ctx, cf_sum(&ctx, y), NULL);
    int silent = 1;
    for (int j = 3; j < 5; j++)
        for (int d = 0; d < 8; d++) silent &= t[1]->grad[(5 + j) * 8 + d] == 0;
    CHECK(silent, "padded memory rows get gradient");
    for (int j = 3; j < 5; j++)
        for (int d = 0; d < 8; d++) mem[(5 + j) * 8 + d] = 50.0f;
    cf_ctx_begin(&ctx, 0);
    for (int i = 0; i < 8; i++) t[i] = cf_tensor_leaf(&ctx, bufs[i], in[i].ndim, in[i].shape, 0);
    y = f_cross(&ctx, t, &zero);
    CHECK(!memcmp(y0, y->data, sizeof(float) * y->numel), "padded memory rows change the output");
    free(y0);
    cf_ctx_free(&ctx);
}

/* a fixed batch of 3 pairs of different lengths, cut to the config's seq_len */
static const char *batch_text = "hello\tworld\nab\tba\nlonger source\tx\n";

static void fixed_batch(cf_pairs *p, cf_s2s_batch *b, int L) {
    load_pairs(p, "batch.txt", batch_text, L);
    cf_s2s_batch_alloc(b, p->n, L);
    cf_pairs_batch(p, (int[]){0, 1, 2}, 3, L, b);
}

/* d/dtheta of sum(logits * R) against central differences, for a few elements of each parameter */
static void test_model_gradcheck(const char *what, const char *const *sets, int n_sets) {
    cf_config c;
    config(&c, sets, n_sets);
    c.model.init_std = 0.3f;   /* logits that depend visibly on every layer */
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 5) == 0, "%s", cf_error_msg());
    cf_pairs p;
    cf_s2s_batch b;
    fixed_batch(&p, &b, c.train.seq_len);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, b.B, c.train.seq_len), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 0;
    cf_ctx_begin(&ctx, 0);
    cf_params_zero_grad(&m.params);
    cf_tensor *z = cf_encdec_logits(&m, &ctx, &b);
    int64_t nz = z->numel;
    float *R = malloc(sizeof(float) * nz);
    t_fill_uniform(R, nz, -1, 1, 77);
    cf_backward(&ctx, z, R);
    double worst = 0, gmax = 0;
    int checked = 0;
    for (int i = 0; i < m.params.n; i++) {
        cf_tensor *t = m.params.t[i];
        /* the floor: float32 rounding of sum(logits * R) over ~5000 logits is ~5e-4 after the division
         * by 2h, so tensors whose gradient is (mathematically) zero, like the key bias of an attention
         * (softmax ignores a constant added to every score), measure noise against 5e-2 (real gradients
         * here are O(1)) */
        double num = 0, den = 5e-2;
        for (int k = 0; k < 4; k++) {
            int64_t j = (int64_t)((cf_mix64((uint64_t)(i * 31 + k)) >> 11) % (uint64_t)t->numel);
            float x0 = t->data[j], h = 1e-2f, ga = t->grad[j];
            double f[2];
            for (int s = 0; s < 2; s++) {
                t->data[j] = x0 + (s ? -h : h);
                cf_ctx_begin(&ctx, 0);
                ctx.grad_enabled = 0;
                const float *zz = cf_encdec_logits(&m, &ctx, &b)->data;
                ctx.grad_enabled = 1;
                f[s] = 0;
                for (int64_t e = 0; e < nz; e++) f[s] += (double)zz[e] * R[e];
            }
            t->data[j] = x0;
            double gn = (f[0] - f[1]) / (2.0 * h);
            if (fabs(ga - gn) > num) num = fabs(ga - gn);
            if (fabs(gn) > den) den = fabs(gn);
            if (fabs(gn) > gmax) gmax = fabs(gn);
            checked++;
        }
        double e = num / den;
        if (e > worst) worst = e;
        CHECK(e < 2e-2, "%s: gradient of %s: max rel err %.3g", what, t->name, e);
    }
    printf("model gradcheck %s: %d parameters, %d elements, largest gradient %.3g, worst rel err %.2g\n", what,
           m.params.n, checked, gmax, worst);
    free(R);
    cf_ctx_free(&ctx);
    cf_s2s_batch_free(&b);
    cf_pairs_free(&p);
    cf_model_free(&m);
}

/* ---- padding ------------------------------------------------------------------------------------- */
/* nats of row r's real targets */
static double row_nats(const float *z, const int32_t *y, int T, int V) {
    double s = 0;
    for (int t = 0; t < T; t++) {
        if (y[t] == CF_TOK_PAD) continue;
        const float *zt = z + (size_t)t * V;
        double mx = zt[0], se = 0;
        for (int v = 1; v < V; v++) if (zt[v] > mx) mx = zt[v];
        for (int v = 0; v < V; v++) se += exp(zt[v] - mx);
        s += mx + log(se) - zt[y[t]];
    }
    return s;
}

static void test_padding(const char *what, const char *const *sets, int n_sets) {
    cf_config c;
    config(&c, sets, n_sets);
    c.model.init_std = 0.3f;
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 9) == 0, "%s", cf_error_msg());
    cf_pairs p;
    cf_s2s_batch b, one;
    fixed_batch(&p, &b, c.train.seq_len);
    cf_s2s_batch_alloc(&one, 1, c.train.seq_len);
    /* garbage under the padding: masks, not the PAD id, must keep it out */
    for (int i = 0; i < b.B * b.S; i++)
        if (!b.src_keep[i]) b.src[i] = 'Q';
    int V = c.model.vocab_size;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, b.B, c.train.seq_len), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.grad_enabled = 0;
    cf_ctx_begin(&ctx, 0);
    cf_tensor *z = cf_encdec_logits(&m, &ctx, &b);
    float *zb = malloc(sizeof(float) * z->numel);
    memcpy(zb, z->data, sizeof(float) * z->numel);
    double worst_logit = 0, worst_nats = 0;
    for (int r = 0; r < b.B; r++) {
        cf_pairs_batch(&p, (int[]){r}, 1, c.train.seq_len, &one);
        cf_ctx_begin(&ctx, 0);
        const float *z1 = cf_encdec_logits(&m, &ctx, &one)->data;
        /* the real target positions of row r */
        double e = t_max_rel_err(zb + (size_t)r * b.T * V, z1, (int64_t)one.T * V, 1e-3);
        double n0 = row_nats(zb + (size_t)r * b.T * V, b.tgt_out + (size_t)r * b.T, b.T, V);
        double n1 = row_nats(z1, one.tgt_out, one.T, V);
        double en = fabs(n0 - n1) / fabs(n1);
        if (e > worst_logit) worst_logit = e;
        if (en > worst_nats) worst_nats = en;
        CHECK(e < 1e-5, "%s: row %d: logits in the padded batch differ from alone (rel %.3g)", what, r, e);
        CHECK(en < 1e-6, "%s: row %d: loss %.9g in the batch, %.9g alone", what, r, n0, n1);
    }
    printf("padding %s: logits rel err %.2g, per-example loss rel err %.2g\n", what, worst_logit, worst_nats);
    free(zb);
    cf_ctx_free(&ctx);
    cf_s2s_batch_free(&one);
    cf_s2s_batch_free(&b);
    cf_pairs_free(&p);
    cf_model_free(&m);
}

/* ---- gradient checkpointing ------------------------------------------------------------------------- */
typedef struct grads { float loss; float *g; int64_t n; size_t peak; int64_t counts[3]; } grads;

static grads ckpt_run(const char *const *sets, int n_sets, int k, int full) {
    cf_config c;
    config(&c, sets, n_sets);
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 3) == 0, "%s", cf_error_msg());
    cf_model_set_checkpointing(&m, k);
    cf_model_set_recompute(&m, full ? CF_RECOMPUTE_FULL : CF_RECOMPUTE_SELECTIVE);
    cf_pairs p;
    cf_s2s_batch b;
    fixed_batch(&p, &b, c.train.seq_len);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, b.B, c.train.seq_len), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 11;
    cf_ctx_begin(&ctx, 5);
    cf_params_zero_grad(&m.params);
    cf_tensor *loss = cf_encdec_loss(&m, &ctx, &b, 0.1f, NULL);
    cf_backward(&ctx, loss, NULL);
    grads r = {loss->data[0], malloc(sizeof(float) * m.params.numel), m.params.numel, ctx.arena.peak, {0}};
    memcpy(r.g, m.params.grads, sizeof(float) * m.params.numel);
    cf_rc_counts(&ctx, r.counts);
    cf_ctx_free(&ctx);
    cf_s2s_batch_free(&b);
    cf_pairs_free(&p);
    cf_model_free(&m);
    return r;
}

/* full and selective recompute (the latter keeps attention outputs and residual sums and skips
 * output projections: some of each must happen) give the gradients of no checkpointing */
static void test_checkpointing(const char *what, const char *const *sets, int n_sets) {
    grads base = ckpt_run(sets, n_sets, 0, 0);
    for (int full = 0; full <= 1; full++)
        for (int k = 1; k <= 3; k++) {
            const char *mode = full ? "full" : "selective";
            grads r = ckpt_run(sets, n_sets, k, full);
            CHECK(r.loss == base.loss, "%s %s k=%d: loss %.9g vs %.9g", what, mode, k, r.loss, base.loss);
            CHECK(!memcmp(r.g, base.g, sizeof(float) * base.n), "%s %s k=%d: gradients differ", what, mode, k);
            if (k == 1) CHECK(r.peak < base.peak, "%s %s: arena peak %zu with checkpointing, %zu without", what, mode,
                              r.peak, base.peak);
            CHECK(full ? r.counts[CF_RC_KEPT] + r.counts[CF_RC_SKIPPED] == 0
                       : r.counts[CF_RC_KEPT] > 0 && r.counts[CF_RC_SKIPPED] > 0,
                  "%s %s k=%d: the replay kept %lld ops and skipped %lld", what, mode, k,
                  (long long)r.counts[CF_RC_KEPT], (long long)r.counts[CF_RC_SKIPPED]);
            printf("checkpointing %s %s k=%d: bitwise equal gradients, arena peak %.2f MB vs %.2f MB, kept %lld, "
                   "skipped %lld\n", what, mode, k, r.peak / 1048576.0, base.peak / 1048576.0,
                   (long long)r.counts[CF_RC_KEPT], (long long)r.counts[CF_RC_SKIPPED]);
            free(r.g);
        }
    free(base.g);
}

/* ---- cached decoding ------------------------------------------------------------------------------ */
static void test_cache(const char *what, const char *const *sets, int n_sets) {
    cf_config c;
    config(&c, sets, n_sets);
    c.model.init_std = 0.3f;
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 13) == 0, "%s", cf_error_msg());
    cf_pairs p;
    cf_s2s_batch b;
    fixed_batch(&p, &b, c.train.seq_len);
    int V = c.model.vocab_size, B = b.B, T = b.T;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, c.train.seq_len), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.grad_enabled = 0;
    cf_ctx_begin(&ctx, 0);
    cf_tensor *z = cf_encdec_logits(&m, &ctx, &b);
    float *full = malloc(sizeof(float) * z->numel);
    memcpy(full, z->data, sizeof(float) * z->numel);
    cf_dec_cache dc;
    CF_ASSERT(cf_dec_cache_init(&dc, &m, &ctx, b.src, b.src_keep, B, b.S, 1, T) == 0, "%s", cf_error_msg());
    double worst = 0;
    int32_t tok[8];
    for (int t = 0; t < T; t++) {
        for (int r = 0; r < B; r++) tok[r] = b.tgt_in[r * T + t];
        const float *zs = cf_dec_cache_step(&dc, tok);
        for (int r = 0; r < B; r++) {
            double e = t_max_rel_err(zs + (size_t)r * V, full + ((size_t)r * T + t) * V, V, 1e-3);
            if (e > worst) worst = e;
        }
    }
    CHECK(worst < 1e-5, "%s: cached decoding differs from the full forward pass (rel %.3g)", what, worst);
    printf("cached decoding %s: %d steps of %d rows, max rel err %.2g against the full forward\n", what, T, B, worst);

    /* beams: rows 0, 1 decode source 2; after feeding (u, v), row 0 continues row 1 and row 1 row 0 */
    int32_t src2[16];
    uint8_t keep2[16];
    memcpy(src2, b.src + 2 * b.S, sizeof(int32_t) * b.S);
    memcpy(keep2, b.src_keep + 2 * b.S, (size_t)b.S);
    float ref[2][512];
    CF_ASSERT(V <= 512, "vocab");
    for (int pass = 0; pass < 2; pass++) {
        CF_ASSERT(cf_dec_cache_init(&dc, &m, &ctx, src2, keep2, 1, b.S, 2, 4) == 0, "%s", cf_error_msg());
        cf_dec_cache_step(&dc, (int32_t[]){CF_TOK_BOS, CF_TOK_BOS});
        if (pass == 0) {
            cf_dec_cache_step(&dc, (int32_t[]){'v', 'u'});
        } else {
            cf_dec_cache_step(&dc, (int32_t[]){'u', 'v'});
            cf_dec_cache_reorder(&dc, (int[]){1, 0});
        }
        const float *zs = cf_dec_cache_step(&dc, (int32_t[]){'w', 'w'});
        if (pass == 0) { memcpy(ref[0], zs, sizeof(float) * V); memcpy(ref[1], zs + V, sizeof(float) * V); }
        else CHECK(!memcmp(ref[0], zs, sizeof(float) * V) && !memcmp(ref[1], zs + V, sizeof(float) * V),
                   "%s: reordered beams do not continue their parents", what);
    }
    free(full);
    cf_ctx_free(&ctx);
    cf_s2s_batch_free(&b);
    cf_pairs_free(&p);
    cf_model_free(&m);
}

/* a run resumed from a checkpoint ends bitwise where the uninterrupted run ends */
static void test_resume(void) {
    char train[600], dtrain[700], a_dir[600], b_dir[600], pa[700], pb[700];
    snprintf(train, sizeof train, "%s", path_in("resume-train.txt"));
    snprintf(dtrain, sizeof dtrain, "data.train=\"%s\"", train);
    write_text(train, batch_text, strlen(batch_text));
    snprintf(a_dir, sizeof a_dir, "%s", path_in("resume-a"));
    snprintf(b_dir, sizeof b_dir, "%s", path_in("resume-b"));
    const char *sets[] = {"model.d_model=32", "train.steps=12", "train.batch_size=8", "model.dropout=0.1",
                          "train.checkpoint_every=0", "train.grad_accum=2", dtrain};
    cf_config c;
    config(&c, sets, 7);
    cf_train_opts o = {.out_dir = a_dir, .quiet = 1};
    CHECK(cf_train(&c, &o) == 0, "resume: %s", cf_error_msg());
    cf_train_opts o1 = {.out_dir = b_dir, .quiet = 1, .until = 5};
    CHECK(cf_train(&c, &o1) == 0, "resume: %s", cf_error_msg());
    cf_train_opts o2 = {.resume = b_dir, .quiet = 1};
    CHECK(cf_train(&c, &o2) == 0, "resume: %s", cf_error_msg());
    snprintf(pa, sizeof pa, "%s/ckpt/latest.h5", a_dir);
    snprintf(pb, sizeof pb, "%s/ckpt/latest.h5", b_dir);
    cf_config ca, cb;
    cf_model ma, mb;
    cf_train_state sa, sb;
    if (cf_ckpt_load_model(pa, &ca, &ma, &sa) || cf_ckpt_load_model(pb, &cb, &mb, &sb)) {
        CHECK(0, "resume: %s", cf_error_msg());
        return;
    }
    CHECK(sa.step == 12 && sb.step == 12 && sa.next_batch == sb.next_batch && sa.tokens_seen == sb.tokens_seen,
          "resume: state step %lld/%lld, tokens %lld/%lld", (long long)sa.step, (long long)sb.step,
          (long long)sa.tokens_seen, (long long)sb.tokens_seen);
    CHECK(!memcmp(ma.params.values, mb.params.values, sizeof(float) * ma.params.numel),
          "resume: weights after 5 + 7 steps differ from 12 steps");
    cf_model_free(&ma);
    cf_model_free(&mb);
}

static int rm_entry(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s; (void)flag; (void)f;
    return remove(p);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/cformer-encdec-XXXXXX");
    CF_ASSERT(mkdtemp(root), "mkdtemp failed");
    test_pairs();
    test_cross_gradcheck();
    const char *pre[] = {"model.dropout=0"};
    const char *post[] = {"model.norm_position=\"post\"", "model.position=\"sinusoidal\"", "model.activation=\"relu\"",
                          "model.tie_embeddings=false"};
    const char *rms[] = {"model.norm=\"rmsnorm\"", "model.bias=false", "model.position=\"none\""};
    test_model_gradcheck("pre-norm learned tied", pre, 1);
    /* relu's kink is within a finite-difference step of some units at this size: gelu here */
    const char *post_gelu[] = {"model.norm_position=\"post\"", "model.position=\"sinusoidal\"", "model.tie_embeddings=false"};
    test_model_gradcheck("post-norm sinusoidal untied", post_gelu, 3);
    test_model_gradcheck("rmsnorm no-bias no-position", rms, 3);
    test_padding("pre-norm", pre, 1);
    test_padding("post-norm sinusoidal", post, 4);
    /* the encoder's attention variants get the padding mask too */
    const char *window[] = {"model.attention={\"type\": \"window\", \"window\": 2}"};
    const char *linear[] = {"model.attention={\"type\": \"linear\"}"};
    test_padding("encoder window attention", window, 1);
    test_padding("encoder linear attention", linear, 1);
    const char *drop_pre[] = {"model.dropout=0.1", "model.encoder={\"n_layers\": 3}", "model.decoder={\"n_layers\": 3}"};
    const char *drop_post[] = {"model.dropout=0.2", "model.norm_position=\"post\"", "model.encoder={\"n_layers\": 2}",
                               "model.decoder={\"n_layers\": 4}", "model.position=\"sinusoidal\""};
    test_checkpointing("pre-norm, dropout 0.1, 3+3 layers", drop_pre, 3);
    test_checkpointing("post-norm, dropout 0.2, 2+4 layers", drop_post, 5);
    test_cache("pre-norm learned", pre, 1);
    test_cache("post-norm sinusoidal untied", post, 4);
    test_cache("rmsnorm no-bias no-position", rms, 3);
    test_resume();
    nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    TEST_MAIN_END();
}
