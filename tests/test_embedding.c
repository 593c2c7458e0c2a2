/* embedding: gradient check of the table with repeated ids (the scatter-add must accumulate), the
 * gather against the table rows, the backward against a naive double scatter, fan-out of one table
 * into two lookups (tied embeddings), output shapes for 1-3 dim ids, bitwise equality at 1 and 2
 * threads, and the abort (naming the id and V) for ids outside [0, V). */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "gradcheck.h"

typedef struct emb_arg { const int32_t *ids, *ids2; int ndim, shape[3]; } emb_arg;

static cf_tensor *f_emb(cf_ctx *c, cf_tensor **in, void *arg) {
    emb_arg *a = arg;
    return cf_embedding(c, in[0], a->ids, a->ndim, a->shape);
}
/* one table, two lookups: both scatters add into the same gradient */
static cf_tensor *f_emb2(cf_ctx *c, cf_tensor **in, void *arg) {
    emb_arg *a = arg;
    return cf_add(c, cf_embedding(c, in[0], a->ids, a->ndim, a->shape), cf_embedding(c, in[0], a->ids2, a->ndim, a->shape));
}

/* Runs fn in a child whose stderr is captured; true when it died of SIGABRT with `needle` in the
 * message. Runs before the parent starts any thread, so the child inherits no thread pool. */
static int dies_with(void (*fn)(void *), void *arg, const char *needle) {
    int fd[2];
    if (pipe(fd)) return 0;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        fn(arg);
        _exit(0);
    }
    close(fd[1]);
    char buf[4096];
    size_t len = 0;
    ssize_t k;
    while (len < sizeof buf - 1 && (k = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)k;
    buf[len] = 0;
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    int ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(buf, needle);
    if (!ok) printf("  child status %d, stderr: %s\n", st, buf);
    return ok;
}

static void bad_lookup(void *arg) {
    const int32_t *ids = arg;
    float table[5 * 3] = {0};
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, 1 << 20, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t = cf_tensor_leaf(&ctx, table, 2, (int[]){5, 3}, 1);
    cf_embedding(&ctx, t, ids, 1, (int[]){4});
}

static void check_aborts(void) {
    int32_t too_big[4] = {0, 4, 5, 1}, negative[4] = {2, -1, 0, 0};
    CHECK(dies_with(bad_lookup, too_big, "id 5 at position 2 is outside [0, 5)"), "embedding: id 5 with V 5 did not abort as expected");
    CHECK(dies_with(bad_lookup, negative, "id -1 at position 1 is outside [0, 5)"), "embedding: id -1 did not abort as expected");
}

typedef struct emb_run { float *y, *dt; } emb_run;

/* forward + backward with cotangent R; returns copies of y and the table gradient */
static emb_run run_emb(float *table, int V, int D, const int32_t *ids, int ndim, const int *shape, const float *R) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)256 << 20, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t = cf_tensor_leaf(&ctx, table, 2, (int[]){V, D}, 1);
    cf_tensor *y = cf_embedding(&ctx, t, ids, ndim, shape);
    cf_backward(&ctx, y, R);
    emb_run o = {malloc(y->numel * sizeof(float)), malloc((size_t)V * D * sizeof(float))};
    memcpy(o.y, y->data, y->numel * sizeof(float));
    memcpy(o.dt, t->grad, (size_t)V * D * sizeof(float));
    cf_ctx_free(&ctx);
    return o;
}

static void check_vs_ref(void) {
    enum { V = 11, D = 37, N = 60 };
    float table[V * D], R[N * D];
    int32_t ids[N];
    t_fill_uniform(table, V * D, -1, 1, 41);
    t_fill_uniform(R, N * D, -1, 1, 42);
    cf_rng rng;
    cf_rng_seed(&rng, 43);
    for (int p = 0; p < N; p++) ids[p] = (int32_t)(cf_rng_next(&rng) % (V - 1));   /* id V-1 never used */
    emb_run o = run_emb(table, V, D, ids, 2, (int[]){6, 10}, R);
    int gather_ok = 1;
    for (int p = 0; p < N; p++) gather_ok &= memcmp(o.y + p * D, table + ids[p] * D, D * sizeof(float)) == 0;
    CHECK(gather_ok, "embedding: output rows are not exact copies of the table rows");
    static double ref[V * D];
    memset(ref, 0, sizeof ref);
    for (int p = 0; p < N; p++)
        for (int j = 0; j < D; j++) ref[ids[p] * D + j] += R[p * D + j];
    double num = 0, den = 1e-6;
    for (int i = 0; i < V * D; i++) {
        if (fabs(o.dt[i] - ref[i]) > num) num = fabs(o.dt[i] - ref[i]);
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    CHECK(num / den < 1e-6, "embedding: table gradient vs double scatter: rel err %.3g", num / den);
    int unused_zero = 1;
    for (int j = 0; j < D; j++) unused_zero &= o.dt[(V - 1) * D + j] == 0.0f;
    CHECK(unused_zero, "embedding: a row no id selects got a gradient");
    free(o.y); free(o.dt);
}

static void check_shapes(void) {
    float table[4 * 3];
    int32_t ids[24] = {0};
    t_fill_uniform(table, 12, -1, 1, 51);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, 1 << 20, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t = cf_tensor_leaf(&ctx, table, 2, (int[]){4, 3}, 0);
    cf_tensor *y1 = cf_embedding(&ctx, t, ids, 1, (int[]){5});
    cf_tensor *y2 = cf_embedding(&ctx, t, ids, 2, (int[]){2, 5});
    cf_tensor *y3 = cf_embedding(&ctx, t, ids, 3, (int[]){2, 3, 4});
    CHECK(!strcmp(cf_shape_str(y1), "(5, 3)"), "embedding 1-d ids: shape %s", cf_shape_str(y1));
    CHECK(!strcmp(cf_shape_str(y2), "(2, 5, 3)"), "embedding 2-d ids: shape %s", cf_shape_str(y2));
    CHECK(!strcmp(cf_shape_str(y3), "(2, 3, 4, 3)"), "embedding 3-d ids: shape %s", cf_shape_str(y3));
    CHECK(ctx.n_nodes == 0, "embedding recorded a node although the table needs no gradient");
    cf_ctx_free(&ctx);
}

/* large enough that the forward and backward loops run threaded */
static void check_threads(void) {
    enum { V = 50, D = 96, N = 2048 };
    float *table = malloc(V * D * sizeof(float)), *R = malloc((size_t)N * D * sizeof(float));
    int32_t *ids = malloc(N * sizeof(int32_t));
    t_fill_uniform(table, V * D, -1, 1, 61);
    t_fill_uniform(R, (int64_t)N * D, -1, 1, 62);
    cf_rng rng;
    cf_rng_seed(&rng, 63);
    for (int p = 0; p < N; p++) ids[p] = (int32_t)(cf_rng_next(&rng) % 7);   /* heavy repetition */
    int saved = cf_num_threads();
    cf_set_num_threads(1);
    emb_run a = run_emb(table, V, D, ids, 2, (int[]){8, N / 8}, R);
    cf_set_num_threads(2);
    emb_run b = run_emb(table, V, D, ids, 2, (int[]){8, N / 8}, R);
    cf_set_num_threads(saved);
    CHECK(!memcmp(a.y, b.y, (size_t)N * D * sizeof(float)), "embedding: y differs between 1 and 2 threads");
    CHECK(!memcmp(a.dt, b.dt, (size_t)V * D * sizeof(float)), "embedding: table gradient differs between 1 and 2 threads");
    free(a.y); free(a.dt); free(b.y); free(b.dt);
    free(table); free(R); free(ids);
}

int main(void) {
    check_aborts();
    enum { V = 6, D = 5 };
    float table[V * D];
    t_fill_uniform(table, V * D, -1, 1, 1);
    int32_t ids[10] = {3, 1, 3, 0, 5, 3, 1, 1, 2, 3};
    int32_t ids2[10] = {4, 4, 3, 0, 0, 2, 1, 5, 5, 3};
    emb_arg a = {ids, ids2, 2, {2, 5, 0}};
    gc_input in[1] = {{table, 2, {V, D}, 1}};
    gradcheck("embedding repeated ids", f_emb, &a, in, 1, 1e-2f, 1e-3);
    gradcheck("embedding fan-out", f_emb2, &a, in, 1, 1e-2f, 1e-3);
    check_vs_ref();
    check_shapes();
    check_threads();
    TEST_MAIN_END();
}
