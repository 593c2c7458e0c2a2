/* The gradient all-reduce's timing rule (dist.h), without MPI: a bucket of the gradient slab may
 * start reducing during backward only once no later backward can add to it. A probe copies each
 * bucket's gradient at the moment it starts; after backward the copies must equal the final
 * gradients bitwise, which must equal those of a backward with no reducer armed. Models: tied
 * embeddings (tok_emb read by the first and the last op), untied with dropout, gradient
 * checkpointing (a region's reads come from its unrecorded forward), Transformer-XL with memory
 * (u, v shared by every layer). Also: most buckets do start during backward (there is overlap),
 * and a read hidden from cf_record is caught (the process dies naming the parameter). */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test.h"
#include "cformer/dist.h"
#include "cformer/train.h"

typedef struct probe_state {
    const cf_params *p;
    float *snap;            /* (numel) each bucket's gradient when it started */
    float *first;           /* (numel) the whole slab when the first bucket started */
    int    in_backward;     /* 1 while cf_backward runs */
    int    started, started_in_backward;
} probe_state;

static void probe(void *arg, int bucket, int64_t off, int64_t len) {
    (void)bucket;
    probe_state *ps = arg;
    if (!ps->started) memcpy(ps->first, ps->p->grads, (size_t)ps->p->numel * sizeof(float));
    memcpy(ps->snap + off, ps->p->grads + off, (size_t)len * sizeof(float));
    ps->started++;
    ps->started_in_backward += ps->in_backward;
}

/* Two training steps (the second with XL memory from the first) of the model of `sets`; the
 * second with a reducer of buckets of bucket_bytes armed when arm is set. Returns the gradients. */
static float *grads_of(const char *const *sets, int n_sets, int ckpt, int arm, size_t bucket_bytes, probe_state *ps,
                       int *n_buckets) {
    cf_config c;
    CF_ASSERT(cf_config_parse(&c, "{}", sets, n_sets, 0) == 0, "%s", cf_error_msg());
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 3) == 0, "%s", cf_error_msg());
    cf_model_set_checkpointing(&m, ckpt);
    int B = c.train.batch_size, T = c.train.seq_len, V = c.model.vocab_size;
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 11;
    cf_grad_sync *s = arm ? cf_grad_sync_new(&m.params, bucket_bytes) : NULL;
    if (s) {
        ps->p = &m.params;
        ps->snap = calloc((size_t)m.params.numel, sizeof(float));
        ps->first = calloc((size_t)m.params.numel, sizeof(float));
        cf_grad_sync_set_probe(s, probe, ps);
        *n_buckets = cf_grad_sync_buckets(s);
    }
    for (int step = 0; step < 2; step++) {
        for (int i = 0; i < B * T; i++) { x[i] = (i * 7 + 3 + step) % V; y[i] = (i * 13 + 5 + step) % V; }
        cf_ctx_begin(&ctx, (uint64_t)step);
        cf_params_zero_grad(&m.params);
        int hooked = s && step == 1;
        if (hooked) cf_grad_sync_arm(s, &ctx);
        cf_tensor *loss = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
        if (hooked) ps->in_backward = 1;
        cf_backward(&ctx, loss, NULL);
        if (hooked) {
            ps->in_backward = 0;
            cf_grad_sync_finish(s, &ctx);
            CHECK(ctx.hook == NULL, "finish leaves the context without a hook");
        }
    }
    float *g = malloc(sizeof(float) * (size_t)m.params.numel);
    memcpy(g, m.params.grads, sizeof(float) * (size_t)m.params.numel);
    cf_grad_sync_free(s);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    free(x); free(y);
    return g;
}

static void check_model(const char *what, const char *const *sets, int n_sets, int ckpt) {
    int64_t numel;
    {
        cf_config c;
        cf_model m;
        CF_ASSERT(cf_config_parse(&c, "{}", sets, n_sets, 0) == 0 && cf_model_init(&m, &c.model, 3) == 0, "%s",
                  cf_error_msg());
        numel = m.params.numel;
        cf_model_free(&m);
    }
    float *ref = grads_of(sets, n_sets, ckpt, 0, 0, NULL, NULL);
    /* one parameter per bucket (1 byte), then a few large buckets */
    size_t sizes[2] = {1, 64 << 10};
    for (int k = 0; k < 2; k++) {
        probe_state ps = {0};
        int nb = 0;
        float *g = grads_of(sets, n_sets, ckpt, 1, sizes[k], &ps, &nb);
        CHECK(!memcmp(g, ref, sizeof(float) * (size_t)numel), "%s, buckets of %zu bytes: the reducer changed the "
              "gradients", what, sizes[k]);
        int64_t bad = -1;
        for (int64_t i = 0; i < numel && bad < 0; i++)
            if (memcmp(&ps.snap[i], &g[i], sizeof(float))) bad = i;
        CHECK(bad < 0, "%s, buckets of %zu bytes: slab element %lld changed after its bucket started (%g then %g)",
              what, sizes[k], (long long)bad, bad >= 0 ? ps.snap[bad] : 0.0, bad >= 0 ? g[bad] : 0.0);
        CHECK(ps.started == nb, "%s: %d of %d buckets started", what, ps.started, nb);
        /* all but the bucket holding tok_emb (final only at the very end) start while backward runs */
        if (nb > 2)
            CHECK(ps.started_in_backward >= nb - 1, "%s, buckets of %zu bytes: only %d of %d buckets started during "
                  "backward", what, sizes[k], ps.started_in_backward, nb);
        /* overlap: when the first bucket (one parameter near the output) started, backward still had
         * most gradients to compute */
        int64_t later = 0;
        for (int64_t i = 0; i < numel; i++) later += memcmp(&ps.first[i], &g[i], sizeof(float)) != 0;
        if (k == 0) CHECK(later > numel / 2, "%s, %zu-byte buckets: only %lld of %lld gradients changed after the first bucket started", what, sizes[k],
              (long long)later, (long long)numel);
        printf("%-34s buckets of %6zu bytes: %3d buckets, %3d started during backward, gradients exact\n", what,
               sizes[k], nb, ps.started_in_backward);
        free(ps.snap);
        free(ps.first);
        free(g);
    }
    free(ref);
}

/* a read hidden from cf_record: the parameter's bucket starts too early and the check must die */
static void check_guard(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) dup2(devnull, 2);
        cf_params p;
        cf_params_init(&p);
        cf_tensor *a = cf_param_add(&p, "a", 1, (int[]){16}), *b = cf_param_add(&p, "b", 1, (int[]){16});
        cf_params_finalize(&p);
        for (int i = 0; i < 16; i++) a->data[i] = b->data[i] = 1.0f + i;
        cf_ctx ctx;
        cf_ctx_init(&ctx, 1 << 20, 64);
        cf_grad_sync *s = cf_grad_sync_new(&p, 1);
        cf_grad_sync_arm(s, &ctx);
        cf_tensor *u = cf_scale(&ctx, a, 2.0f);
        cf_hook *h = ctx.hook;
        ctx.hook = NULL;                          /* b's read goes unreported */
        cf_tensor *v = cf_mul(&ctx, u, b);
        ctx.hook = h;
        cf_tensor *w = cf_sum(&ctx, cf_scale(&ctx, v, 3.0f));
        cf_backward(&ctx, w, NULL);               /* must die before b's gradient is added */
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "a read hidden from cf_record was not caught (status %d)", st);
    printf("a read hidden from cf_record: the reducer dies naming the parameter (SIGABRT)\n");
}

int main(void) {
    const char *tied[] = {"model.d_model=32", "model.n_layers=3", "model.n_heads=2", "model.max_seq_len=16",
                          "train.seq_len=16", "train.batch_size=2"};
    check_model("tied embeddings", tied, 6, 0);
    check_model("tied, checkpointed blocks", tied, 6, 1);
    check_model("tied, checkpointed pairs of blocks", tied, 6, 2);
    const char *untied[] = {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=16",
                            "model.tie_embeddings=false", "model.dropout=0.1", "train.seq_len=16", "train.batch_size=2"};
    check_model("untied, dropout", untied, 8, 0);
    const char *xl[] = {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=16",
                        "model.attention={\"type\": \"xl\", \"mem_len\": 8}", "train.seq_len=16", "train.batch_size=2"};
    check_model("xl with memory", xl, 7, 0);
    check_model("xl with memory, checkpointed", xl, 7, 1);
    check_guard();
    TEST_MAIN_END();
}
