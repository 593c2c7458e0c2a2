/* cross_entropy: gradient checks of the logits (smoothing 0 and 0.1, with and without ignored rows,
 * 2-D and 3-D logits), loss and gradient against a naive double reference (also with logits near
 * 100, where an unshifted exp overflows), n_counted, the all-ignored case (loss 0, gradient 0),
 * bitwise equality at 1 and 2 threads, and the abort naming a target outside [0, V). */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "gradcheck.h"

#define IGN (-100)

typedef struct ce_arg { const int32_t *targets; float smoothing; } ce_arg;

static cf_tensor *f_ce(cf_ctx *c, cf_tensor **in, void *arg) {
    ce_arg *a = arg;
    return cf_cross_entropy(c, in[0], a->targets, IGN, a->smoothing, NULL);
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

static void bad_targets(void *arg) {
    const int32_t *targets = arg;
    float logits[4 * 5] = {0};
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, 1 << 20, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t = cf_tensor_leaf(&ctx, logits, 2, (int[]){4, 5}, 1);
    cf_cross_entropy(&ctx, t, targets, IGN, 0, NULL);
}

static void check_aborts(void) {
    int32_t too_big[4] = {0, IGN, 5, 1}, negative[4] = {-1, 0, 0, 0};
    CHECK(dies_with(bad_targets, too_big, "target 5 at row 2 is outside [0, 5)"),
          "cross_entropy: target 5 with V 5 did not abort as expected");
    CHECK(dies_with(bad_targets, negative, "target -1 at row 0 is outside [0, 5)"),
          "cross_entropy: target -1 did not abort as expected");
}

/* loss in double (PyTorch's label smoothing) and the gradient of loss * g */
static double ref_ce(const float *z, const int32_t *tg, int64_t rows, int V, double s, double g, double *dz) {
    double total = 0;
    int64_t counted = 0;
    for (int64_t r = 0; r < rows; r++) if (tg[r] != IGN) counted++;
    for (int64_t r = 0; r < rows; r++) {
        const float *zr = z + r * V;
        for (int v = 0; v < V; v++) dz[r * V + v] = 0;
        if (tg[r] == IGN) continue;
        double m = zr[0], se = 0, nll_mean = 0;
        for (int v = 1; v < V; v++) if (zr[v] > m) m = zr[v];
        for (int v = 0; v < V; v++) se += exp(zr[v] - m);
        double lse = m + log(se);
        for (int v = 0; v < V; v++) nll_mean += (lse - zr[v]) / V;
        total += (1 - s) * (lse - zr[tg[r]]) + s * nll_mean;
        for (int v = 0; v < V; v++) {
            double q = s / V + (v == tg[r] ? 1 - s : 0);
            dz[r * V + v] = (exp(zr[v] - lse) - q) * g / counted;
        }
    }
    return counted ? total / counted : 0;
}

typedef struct ce_run { float loss, *dz; int64_t counted; } ce_run;

static ce_run run_ce(float *z, int ndim, const int *shape, const int32_t *tg, float s, float g) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)256 << 20, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *t = cf_tensor_leaf(&ctx, z, ndim, shape, 1);
    ce_run o = {0, malloc(t->numel * sizeof(float)), -1};
    cf_tensor *y = cf_cross_entropy(&ctx, t, tg, IGN, s, &o.counted);
    CHECK(y->ndim == 1 && y->shape[0] == 1, "cross_entropy: output shape %s, expected (1)", cf_shape_str(y));
    o.loss = y->data[0];
    cf_backward(&ctx, y, &g);
    CHECK(t->grad != NULL, "cross_entropy: backward left the logits without a gradient");
    if (t->grad) memcpy(o.dz, t->grad, t->numel * sizeof(float));
    cf_ctx_free(&ctx);
    return o;
}

static void check_vs_ref(int64_t rows, int V, float lo, float hi, float s, int ignore_every) {
    int64_t n = rows * V;
    float *z = malloc(n * sizeof(float));
    int32_t *tg = malloc(rows * sizeof(int32_t));
    double *dzr = malloc(n * sizeof(double));
    t_fill_uniform(z, n, lo, hi, 71);
    cf_rng rng;
    cf_rng_seed(&rng, 72);
    int64_t expect_counted = 0;
    for (int64_t r = 0; r < rows; r++) {
        tg[r] = ignore_every && r % ignore_every == 1 ? IGN : (int32_t)(cf_rng_next(&rng) % V);
        expect_counted += tg[r] != IGN;
    }
    const float g = 0.7f;
    ce_run o = run_ce(z, 2, (int[]){(int)rows, V}, tg, s, g);
    double lr = ref_ce(z, tg, rows, V, s, g, dzr);
    double num = 0, den = 1e-6;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(o.dz[i] - dzr[i]) > num) num = fabs(o.dz[i] - dzr[i]);
        if (fabs(dzr[i]) > den) den = fabs(dzr[i]);
    }
    CHECK(fabs(o.loss - lr) <= 1e-5 * fmax(1, fabs(lr)),
          "cross_entropy [%lld, %d] logits in [%g, %g] s=%g: loss %.9g, double ref %.9g", (long long)rows, V, lo, hi, s, o.loss, lr);
    CHECK(num / den < 1e-4, "cross_entropy [%lld, %d] logits in [%g, %g] s=%g: dlogits rel err %.3g",
          (long long)rows, V, lo, hi, s, num / den);
    CHECK(o.counted == expect_counted, "cross_entropy: n_counted %lld, expected %lld", (long long)o.counted, (long long)expect_counted);
    free(o.dz); free(z); free(tg); free(dzr);
}

/* -log softmax of the target computed directly, for one row of large logits */
static void check_large_logits(void) {
    float z[4] = {100.0f, 99.0f, 101.5f, 60.0f};
    int32_t tg[1] = {1};
    ce_run o = run_ce(z, 2, (int[]){1, 4}, tg, 0, 1);
    double se = 0;
    for (int v = 0; v < 4; v++) se += exp((double)z[v] - 101.5);
    double expect = -((double)z[1] - 101.5 - log(se));
    CHECK(isfinite(o.loss) && fabs(o.loss - expect) < 1e-5, "cross_entropy large logits: loss %.9g, expected %.9g", o.loss, expect);
    double sum = 0;
    for (int v = 0; v < 4; v++) sum += o.dz[v];
    CHECK(fabs(sum) < 1e-6, "cross_entropy large logits: gradient row sums to %.3g, not 0", sum);
    free(o.dz);
}

static void check_all_ignored(void) {
    float z[3 * 4];
    int32_t tg[3] = {IGN, IGN, IGN};
    t_fill_uniform(z, 12, -1, 1, 81);
    ce_run o = run_ce(z, 2, (int[]){3, 4}, tg, 0.1f, 1);
    int zero = 1;
    for (int i = 0; i < 12; i++) zero &= o.dz[i] == 0.0f;
    CHECK(o.loss == 0.0f && o.counted == 0 && zero, "cross_entropy all rows ignored: loss %g, counted %lld, zero grad %d",
          o.loss, (long long)o.counted, zero);
    free(o.dz);
}

/* large enough that forward and backward run threaded */
static void check_threads(void) {
    enum { ROWS = 300, V = 256 };
    float *z = malloc(ROWS * V * sizeof(float));
    int32_t tg[ROWS];
    t_fill_uniform(z, ROWS * V, -8, 8, 91);
    for (int r = 0; r < ROWS; r++) tg[r] = r % 9 == 4 ? IGN : (r * 37) % V;
    for (int k = 0; k < 2; k++) {
        float s = k ? 0.1f : 0.0f;
        int saved = cf_num_threads();
        cf_set_num_threads(1);
        ce_run a = run_ce(z, 3, (int[]){3, ROWS / 3, V}, tg, s, 1);
        cf_set_num_threads(2);
        ce_run b = run_ce(z, 3, (int[]){3, ROWS / 3, V}, tg, s, 1);
        cf_set_num_threads(saved);
        CHECK(!memcmp(&a.loss, &b.loss, sizeof a.loss), "cross_entropy s=%g: loss differs between 1 and 2 threads", s);
        CHECK(!memcmp(a.dz, b.dz, ROWS * V * sizeof(float)), "cross_entropy s=%g: dlogits differ between 1 and 2 threads", s);
        free(a.dz); free(b.dz);
    }
    free(z);
}

int main(void) {
    check_aborts();
    enum { R = 6, V = 7 };
    float z[R * V];
    t_fill_uniform(z, R * V, -2, 2, 1);
    int32_t all[R] = {3, 0, 6, 2, 2, 5}, some[R] = {3, IGN, 6, IGN, 2, 5};
    gc_input in2[1] = {{z, 2, {R, V}, 1}};
    gc_input in3[1] = {{z, 3, {2, 3, V}, 1}};
    for (int k = 0; k < 2; k++) {
        float s = k ? 0.1f : 0.0f;
        char name[64];
        ce_arg a_all = {all, s}, a_some = {some, s};
        snprintf(name, sizeof name, "cross_entropy s=%g", s);
        gradcheck(name, f_ce, &a_all, in2, 1, 1e-2f, 1e-3);
        snprintf(name, sizeof name, "cross_entropy ignored rows s=%g", s);
        gradcheck(name, f_ce, &a_some, in2, 1, 1e-2f, 1e-3);
        snprintf(name, sizeof name, "cross_entropy 3-d ignored rows s=%g", s);
        gradcheck(name, f_ce, &a_some, in3, 1, 1e-2f, 1e-3);
    }
    for (int k = 0; k < 2; k++) {
        float s = k ? 0.1f : 0.0f;
        check_vs_ref(40, 33, -3, 3, s, 0);
        check_vs_ref(40, 33, -3, 3, s, 5);
        check_vs_ref(12, 50, 90, 110, s, 4);    /* logits near 100: exp without the max shift overflows */
    }
    check_large_logits();
    check_all_ignored();
    check_threads();
    TEST_MAIN_END();
}
