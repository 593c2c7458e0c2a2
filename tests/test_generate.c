/* Incremental decoding (model.h: cf_gen) against the full forward, for every attention variant
 * and the block options: the logits of each fed byte equal those of cf_model_logits on the same
 * prefix (streamed evaluation's calls with the memory carried for xl and infini), byte by byte
 * and with several bytes fed at once; greedy sampling through the cache picks at each step the
 * byte the full forward ranks first, and gives the same bytes as the uncached sampler. */
#include <string.h>
#include <omp.h>
#include "test.h"
#include "cformer/decode.h"

#define TOL 1e-5

static const char *TEXT =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity.";

typedef struct tcase { const char *name; const char *sets[8]; int span; } tcase;

static const tcase CASES[] = {
    {"full", {"model.attention={\"type\":\"full\"}"}, 48},
    {"full sinusoidal post-norm rmsnorm relu untied no-bias",
     {"model.attention={\"type\":\"full\"}", "model.position=\"sinusoidal\"", "model.norm_position=\"post\"",
      "model.norm=\"rmsnorm\"", "model.activation=\"relu\"", "model.tie_embeddings=false", "model.bias=false"}, 48},
    {"full no positions", {"model.attention={\"type\":\"full\"}", "model.position=\"none\""}, 48},
    {"window", {"model.attention={\"type\":\"window\",\"window\":5}"}, 48},
    {"window no positions", {"model.attention={\"type\":\"window\",\"window\":3}", "model.position=\"none\""}, 48},
    {"sparse_strided alternate", {"model.attention={\"type\":\"sparse_strided\",\"stride\":4}"}, 48},
    {"sparse_strided merged", {"model.attention={\"type\":\"sparse_strided\",\"stride\":5,\"combine\":\"merged\"}"}, 48},
    {"sparse_fixed heads", {"model.attention={\"type\":\"sparse_fixed\",\"stride\":6,\"c\":2,\"combine\":\"heads\"}"}, 48},
    {"sparse_fixed merged", {"model.attention={\"type\":\"sparse_fixed\",\"stride\":4,\"c\":1,\"combine\":\"merged\"}"}, 48},
    {"sparse_fixed alternate", {"model.attention={\"type\":\"sparse_fixed\",\"stride\":5,\"c\":2}"}, 48},
    {"linear", {"model.attention={\"type\":\"linear\"}"}, 48},
    {"linear no positions", {"model.attention={\"type\":\"linear\"}", "model.position=\"none\""}, 48},
    /* The softmax kernel's key stabiliser is the largest projection of the whole sequence, which
     * the eps term does not cancel: with large weights the full forward is itself not causal, so
     * a deeper layer's earlier rows move when bytes are appended and only the first layer can
     * match it exactly (docs/attention.md section 6.8); with weights of init_std 0.02 the
     * difference is float rounding. */
    {"performer softmax 1 layer", {"model.attention={\"type\":\"performer\",\"features\":12}", "model.n_layers=1"}, 48},
    {"performer softmax", {"model.attention={\"type\":\"performer\",\"features\":12}", "model.init_std=0.02"}, 48},
    {"performer relu", {"model.attention={\"type\":\"performer\",\"features\":16,\"kernel\":\"relu\"}"}, 48},
    {"xl", {"model.attention={\"type\":\"xl\",\"mem_len\":8}"}, 10},
    {"xl post-norm clamp", {"model.attention={\"type\":\"xl\",\"mem_len\":12,\"clamp_len\":6}",
                            "model.norm_position=\"post\""}, 7},
    {"xl without memory", {"model.attention={\"type\":\"xl\",\"mem_len\":0}"}, 9},
    {"xl and full", {"model.attention=[{\"type\":\"xl\",\"mem_len\":6},{\"type\":\"full\"}]"}, 8},
    {"infini linear", {"model.attention={\"type\":\"infini\",\"segment_len\":4}"}, 10},
    {"infini delta", {"model.attention={\"type\":\"infini\",\"segment_len\":3,\"update\":\"delta\"}"}, 12},
    {"infini none", {"model.attention={\"type\":\"infini\",\"segment_len\":4,\"update\":\"none\"}"}, 10},
    /* the block options: heads made by cf_attn_step_qkv, ALiBi in the cached scores, gated MLPs */
    {"full llama (rmsnorm rope swiglu gqa qk-norm no bias)",
     {"model.attention={\"type\":\"full\"}", "model.norm=\"rmsnorm\"", "model.position=\"rope\"",
      "model.activation=\"silu\"", "model.glu=true", "model.n_kv_heads=2", "model.qk_norm=true", "model.bias=false"}, 48},
    {"full rope half the dims, multi-query",
     {"model.attention={\"type\":\"full\"}", "model.position=\"rope\"", "model.rope_fraction=0.5",
      "model.n_kv_heads=1"}, 48},
    {"full alibi geglu", {"model.attention={\"type\":\"full\"}", "model.position=\"alibi\"", "model.glu=true"}, 48},
    {"window alibi gqa",
     {"model.attention={\"type\":\"window\",\"window\":5}", "model.position=\"alibi\"", "model.n_kv_heads=2"}, 48},
    {"sparse_strided rope qk-norm",
     {"model.attention={\"type\":\"sparse_strided\",\"stride\":4}", "model.position=\"rope\"", "model.qk_norm=true"}, 48},
    {"sparse_fixed alibi reglu",
     {"model.attention={\"type\":\"sparse_fixed\",\"stride\":5,\"c\":2}", "model.position=\"alibi\"",
      "model.activation=\"relu\"", "model.glu=true"}, 48},
    {"linear rope gqa", {"model.attention={\"type\":\"linear\"}", "model.position=\"rope\"", "model.n_kv_heads=2"}, 48},
    {"performer rope qk-norm",
     {"model.attention={\"type\":\"performer\",\"features\":12}", "model.init_std=0.02", "model.position=\"rope\"",
      "model.qk_norm=true"}, 48},
    {"infini rope gqa silu",
     {"model.attention={\"type\":\"infini\",\"segment_len\":4}", "model.position=\"rope\"", "model.n_kv_heads=2",
      "model.activation=\"silu\""}, 10},
    {"infini delta multi-query", {"model.attention={\"type\":\"infini\",\"segment_len\":3,\"update\":\"delta\"}",
                                  "model.n_kv_heads=1"}, 12},
    {"performer gqa", {"model.attention={\"type\":\"performer\",\"features\":12}", "model.init_std=0.02",
                       "model.n_kv_heads=2"}, 48},
    {"sparse_fixed gqa", {"model.attention={\"type\":\"sparse_fixed\",\"stride\":5,\"c\":2}", "model.n_kv_heads=2"}, 48},
    {"infini and linear sinusoidal",
     {"model.attention=[{\"type\":\"infini\",\"segment_len\":5,\"update\":\"delta\"},{\"type\":\"linear\"}]",
      "model.position=\"sinusoidal\""}, 11},
};

static int n_sets(const tcase *t) {
    int n = 0;
    while (n < 8 && t->sets[n]) n++;
    return n;
}

static void model_of(const tcase *t, cf_config *c, cf_model *m) {
    const char *base[16] = {"model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.d_ff=64",
                            "model.max_seq_len=64", "model.init_std=0.3", "train.seq_len=16", "eval.ctx=16"};
    int n = 8;
    for (int i = 0; i < n_sets(t); i++) base[n++] = t->sets[i];
    CF_ASSERT(cf_config_parse(c, "{}", base, n, 0) == 0, "%s: %s", t->name, cf_error_msg());
    CF_ASSERT(cf_model_init(m, &c->model, 7) == 0, "%s: %s", t->name, cf_error_msg());
    /* the gate and the performer's draw: as a trained model has them */
    for (int l = 0; l < m->n_blocks; l++)
        if (m->blocks[l].attn.extra[0] && m->blocks[l].attn.cfg.type == CF_ATTN_INFINI)
            for (int h = 0; h < m->cfg.n_heads; h++) m->blocks[l].attn.extra[0]->data[h] = 0.7f * (h - 1.5f);
    cf_model_set_step(m, 5, 40);
}

/* the reference logits [N, V]: the full forward on every prefix, or for a recurrent model
 * streamed evaluation's calls of span bytes */
static float *reference(cf_model *m, cf_ctx *ctx, const int32_t *ids, int N, int span) {
    int V = m->cfg.vocab_size;
    float *ref = malloc(sizeof(float) * (size_t)N * V);
    ctx->grad_enabled = 0;
    ctx->training = 0;
    if (cf_model_is_recurrent(m)) {
        cf_rec_state mine = {0};
        m->state = &mine;
        m->stream = 1;
        for (int s = 0; s < N; s += span) {
            int len = N - s < span ? N - s : span;
            cf_ctx_begin(ctx, 0);
            memcpy(ref + (size_t)s * V, cf_model_logits(m, ctx, ids + s, 1, len)->data, sizeof(float) * (size_t)len * V);
        }
        cf_rec_state_free(m, &mine);
        m->state = &m->rec;
        m->stream = 0;
    } else {
        for (int t = 1; t <= N; t++) {
            cf_ctx_begin(ctx, 0);
            memcpy(ref + (size_t)(t - 1) * V, cf_model_logits(m, ctx, ids, 1, t)->data + (size_t)(t - 1) * V,
                   sizeof(float) * V);
        }
    }
    return ref;
}

/* largest |a - b| over a row relative to the row's largest |b| */
static double row_err(const float *a, const float *b, int V) {
    double d = 0, s = 1e-6;
    for (int v = 0; v < V; v++) {
        d = fmax(d, fabs((double)a[v] - b[v]));
        s = fmax(s, fabs((double)b[v]));
    }
    return d / s;
}

static int argmax(const float *z, int V) {
    int k = 0;
    for (int v = 1; v < V; v++) if (z[v] > z[k]) k = v;
    return k;
}

static void equivalence(const tcase *t) {
    cf_config c;
    cf_model m;
    model_of(t, &c, &m);
    int N = cf_model_is_recurrent(&m) ? (int)strlen(TEXT) : t->span, V = m.cfg.vocab_size;
    int32_t *ids = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) ids[i] = (uint8_t)TEXT[i];
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&m.cfg, 1, 64), 1 << 12) == 0, "%s", cf_error_msg());
    float *ref = reference(&m, &ctx, ids, N, t->span);
    /* byte by byte, then in pieces of 1..7 bytes */
    for (int mode = 0; mode < 2; mode++) {
        cf_gen g;
        CHECK(cf_gen_init(&g, &m, &ctx, t->span, 8) == 0, "%s: %s", t->name, cf_error_msg());
        double worst = 0;
        int at = 0;
        for (int i = 0, k = 1; i < N; i += k, k = mode ? k % 7 + 1 : 1) {
            k = k < N - i ? k : N - i;
            const float *z = cf_gen_feed(&g, ids + i, k);
            for (int r = 0; r < k; r++) {
                double e = row_err(z + (size_t)r * V, ref + (size_t)(i + r) * V, V);
                if (e > worst) worst = e, at = i + r;
            }
        }
        printf("%-52s %s: max relative error %.2e (position %d of %d)\n", t->name, mode ? "pieces" : "bytes ", worst,
               at, N);
        CHECK(worst <= TOL, "%s (%s): logits differ from the full forward by %.2e relative at position %d", t->name,
              mode ? "pieces" : "bytes", worst, at);
        if (!g.recurrent) CHECK(cf_gen_room(&g) == (g.bounded ? 0 : INT64_MAX), "%s: room", t->name);
        /* shared key/value heads are cached once: n_kv_heads of n_heads */
        for (int l = 0; l < m.n_blocks; l++)
            CHECK(g.cache[l].Hkv == m.blocks[l].attn.heads.n_kv_heads &&
                  g.cache[l].v - g.cache[l].k == (ptrdiff_t)g.cache[l].Hkv * g.cache[l].rows * g.cache[l].Dh,
                  "%s: layer %d caches %d key/value heads", t->name, l, g.cache[l].Hkv);
        cf_gen_free(&g);
    }
    /* greedy: every sampled byte is the full forward's first choice after the bytes before it */
    int P = 5, G = N - P;
    uint8_t *out = malloc((size_t)N);
    memcpy(out, TEXT, (size_t)P);
    cf_sample_opts so = cf_sample_defaults();
    so.temperature = 0;
    so.span = t->span;
    CHECK(cf_sample(&m, &ctx, out, P, G, &so) == G, "%s: %s", t->name, cf_error_msg());
    for (int i = 0; i < N; i++) ids[i] = out[i];
    float *gref = reference(&m, &ctx, ids, N, t->span);
    int agree = 1;
    for (int i = P; i < N; i++) agree &= argmax(gref + (size_t)(i - 1) * V, V) == out[i];
    CHECK(agree, "%s: a greedy byte is not the full forward's first choice", t->name);
    if (!cf_model_is_recurrent(&m)) {
        uint8_t *old = malloc((size_t)N);
        memcpy(old, TEXT, (size_t)P);
        so.uncached = 1;
        CHECK(cf_sample(&m, &ctx, old, P, G, &so) == G, "%s: %s", t->name, cf_error_msg());
        CHECK(!memcmp(old, out, (size_t)N), "%s: greedy bytes differ between the cached and the uncached sampler", t->name);
        free(old);
    }
    free(gref); free(out); free(ref); free(ids);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

/* The sampler may change the thread count between steps (src/decode/sample.c), so a step's
 * logits must not depend on it: at d_model 256 every parallel region of a step runs (the
 * matrix-vector products, the cached attention's heads), and one thread gives the team's logits
 * bit for bit. */
static void thread_invariance(const char *name, const char *attn, int span) {
    int team = omp_get_max_threads();
    if (team < 2) return;
    const char *sets[] = {"model.d_model=256", "model.n_heads=4", "model.n_layers=1", "model.d_ff=512",
                          "model.max_seq_len=128", "train.seq_len=64", "eval.ctx=64", attn};
    cf_config c;
    cf_model m;
    CF_ASSERT(cf_config_parse(&c, "{}", sets, 8, 0) == 0, "%s: %s", name, cf_error_msg());
    CF_ASSERT(cf_model_init(&m, &c.model, 7) == 0, "%s: %s", name, cf_error_msg());
    cf_model_set_step(&m, 5, 40);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&m.cfg, 1, 128), 1 << 12) == 0, "%s", cf_error_msg());
    int V = m.cfg.vocab_size, N = 96;
    float *z[2];
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run ? 1 : team);
        z[run] = malloc(sizeof(float) * (size_t)N * V);
        cf_gen g;
        CHECK(cf_gen_init(&g, &m, &ctx, span, 8) == 0, "%s: %s", name, cf_error_msg());
        for (int i = 0; i < N; i++) {
            int32_t id = (uint8_t)TEXT[i % (int)strlen(TEXT)];
            memcpy(z[run] + (size_t)i * V, cf_gen_feed(&g, &id, 1), sizeof(float) * V);
        }
        cf_gen_free(&g);
    }
    omp_set_num_threads(team);
    CHECK(!memcmp(z[0], z[1], sizeof(float) * (size_t)N * V), "%s: logits at %d threads differ from 1 thread's", name,
          team);
    free(z[0]);
    free(z[1]);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

/* the cuts of the distribution: top-k 1 and a tiny top-p keep only the most likely byte, so they
 * sample the greedy bytes whatever the seed; without a cut a seed repeats its bytes and another
 * seed draws others; a stop string ends the sample before itself */
static void sampling(void) {
    cf_config c;
    cf_model m;
    model_of(&CASES[0], &c, &m);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&m.cfg, 1, 64), 1 << 12) == 0, "%s", cf_error_msg());
    enum { P = 4, G = 40 };
    uint8_t greedy[P + G], out[P + G], again[P + G];
    cf_sample_opts o = cf_sample_defaults();
    o.temperature = 0;
    memcpy(greedy, TEXT, P);
    CHECK(cf_sample(&m, &ctx, greedy, P, G, &o) == G, "greedy: %s", cf_error_msg());
    for (int cut = 0; cut < 2; cut++) {
        o = cf_sample_defaults();
        o.temperature = 1.5f;
        o.seed = 11;
        if (cut) o.top_p = 1e-6f; else o.top_k = 1;
        memcpy(out, TEXT, P);
        CHECK(cf_sample(&m, &ctx, out, P, G, &o) == G && !memcmp(out, greedy, sizeof out),
              "%s keeps more than the most likely byte", cut ? "top-p 1e-6" : "top-k 1");
    }
    o = cf_sample_defaults();
    o.seed = 3;
    memcpy(out, TEXT, P);
    memcpy(again, TEXT, P);
    CHECK(cf_sample(&m, &ctx, out, P, G, &o) == G && cf_sample(&m, &ctx, again, P, G, &o) == G &&
          !memcmp(out, again, sizeof out), "seed 3 does not repeat its bytes");
    o.seed = 4;
    CHECK(cf_sample(&m, &ctx, again, P, G, &o) == G && memcmp(out, again, sizeof out), "seeds 3 and 4 draw the same bytes");
    o.top_k = 5;
    o.top_p = 0.9f;
    CHECK(cf_sample(&m, &ctx, again, P, G, &o) == G, "top-k 5, top-p 0.9: %s", cf_error_msg());
    /* the stop string: the greedy bytes up to its first occurrence after the prompt */
    char stop[3] = {(char)greedy[P + 20], (char)greedy[P + 21], 0};
    const uint8_t *first = memmem(greedy + P, G, stop, 2);
    o = cf_sample_defaults();
    o.temperature = 0;
    o.stop = stop;
    memcpy(out, TEXT, P);
    int made = cf_sample(&m, &ctx, out, P, G, &o);
    CHECK(first && made == first - (greedy + P) && !memcmp(out, greedy, (size_t)(P + made)),
          "--stop \"%s\": %d bytes", stop, made);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

int main(void) {
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) equivalence(&CASES[i]);
    sampling();
    thread_invariance("full", "model.attention={\"type\":\"full\"}", 128);
    thread_invariance("window", "model.attention={\"type\":\"window\",\"window\":32}", 128);
    thread_invariance("sparse_strided", "model.attention={\"type\":\"sparse_strided\",\"stride\":8}", 128);
    thread_invariance("linear", "model.attention={\"type\":\"linear\"}", 128);
    thread_invariance("performer", "model.attention={\"type\":\"performer\",\"features\":32}", 128);
    thread_invariance("xl", "model.attention={\"type\":\"xl\",\"mem_len\":32}", 32);
    thread_invariance("infini", "model.attention={\"type\":\"infini\",\"segment_len\":32}", 32);
    TEST_MAIN_END();
}
