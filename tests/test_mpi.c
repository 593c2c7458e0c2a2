/* Data-parallel training under mpirun (dist.h), end to end with the cformer binary of
 * the MPI build (make MPI=1 test; built without MPI this test says SKIP and checks nothing):
 *   (a) 2 ranks with global batch B train like 1 process with batch B, for the default decoder
 *       and for Transformer-XL on ordered streams with 2 micro-batches a step (dropout 0): the same
 *       losses, gradient norms and final bits per byte (evaluation split across the ranks), to
 *       float rounding;
 *   (b) a run saved by 2 ranks resumes on 1 process, and one saved by 1 process resumes on 2 ranks
 *       (the XL memory of every stream gathered and scattered), each continuing the uninterrupted run;
 *   (c) a rank that fails (an error, a process that dies, weights that drift apart) stops the whole
 *       job with a non-zero status and a message naming the rank, without hanging (timeout), and
 *       the last checkpoint stays loadable; a batch the ranks cannot split is one error line.
 *
 * Tolerance (a, b): 2e-5 nats on each logged loss (6 decimals in log.jsonl), 1e-3 relative on the
 * gradient norm (4 decimals), 2e-5 bits per byte. With 2 ranks each rank's loss is the mean over
 * B/2 rows and the all-reduce adds the two halves' gradients: the same numbers as one process's mean
 * over B rows, summed in another order, so they differ in the last float bits (measured: at most
 * 1e-6 in the loss over these 16 steps, 3e-6 over 200). A real fault is far larger: a gradient
 * not divided by the ranks doubles the logged norm, a wrong row changes the loss in the 2nd digit.
 *
 * The binary is BUILD/cformer beside this test's BUILD/tests/; runs go to a fresh /tmp directory;
 * configs/tiny.json and data/tiny (tools/make_tiny_data.sh, made by make test) are read from the
 * current directory, the repository root. Ranks inherit OMP_NUM_THREADS (run.sh: 1, then 2). */
#include <errno.h>
#include <ftw.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "test.h"

#ifndef CF_MPI
int main(void) {
    printf("SKIP test_mpi: built without MPI (make MPI=1 test runs it)\n");
    TEST_MAIN_END();
}
#else

#define TOL_LOSS 2e-5
#define TOL_NORM 1e-3
#define TOL_BPB  2e-5
#define MAX_STEPS 64

static char root[256], bin[1100], mpirun[64] = "mpirun";

typedef struct run_log {
    int    n;                              /* steps logged */
    double loss[MAX_STEPS + 1], norm[MAX_STEPS + 1];   /* by step (1-based) */
    double valid, test;                    /* final eval_bpb, NAN when absent */
} run_log;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what)) n++;
    return n;
}

/* Run `cformer train ARGS` on `ranks` ranks (0: no mpirun, one plain process) with extra
 * environment `env` ("" or "A=1 B=2"), output to DIR.out / DIR.err; returns the exit status and
 * the seconds it took. */
static int train(int ranks, const char *env, const char *dir, const char *args, double *secs) {
    char cmd[4096], launcher[256] = "";
    if (ranks > 0)
        snprintf(launcher, sizeof launcher, "%s -np %d --oversubscribe --bind-to none ", mpirun, ranks);
    snprintf(cmd, sizeof cmd,
             "cd %s && env %s timeout -k 5 120 %s%s train configs/tiny.json --quiet --out %s "
             "--set train.log_every=1 --set train.eval_every=0 %s >%s.out 2>%s.err",
             root, env, launcher, bin, dir, args, dir, dir);
    double t0 = now_s();
    int st = system(cmd);
    if (secs) *secs = now_s() - t0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static run_log read_log(const char *dir) {
    run_log L;
    memset(&L, 0, sizeof L);
    L.valid = L.test = NAN;
    char path[1100];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return L;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        int step;
        double loss, bpb, lr, norm, v;
        char split[16];
        if (sscanf(line, "{\"step\": %d, \"loss\": %lf, \"bpb\": %lf, \"lr\": %lf, \"grad_norm\": %lf", &step, &loss,
                   &bpb, &lr, &norm) == 5 && step >= 1 && step <= MAX_STEPS) {
            L.loss[step] = loss;
            L.norm[step] = norm;
            if (step > L.n) L.n = step;
        } else if (sscanf(line, "{\"step\": %d, \"split\": \"%15[a-z]\", \"eval_bpb\": %lf", &step, split, &v) == 3) {
            if (!strcmp(split, "valid")) L.valid = v;
            if (!strcmp(split, "test")) L.test = v;
        }
    }
    fclose(f);
    return L;
}

/* compare run b with the reference a over steps [from, to]: losses, norms, final evaluations */
static void compare(const char *what, const run_log *a, const run_log *b, int from, int to) {
    double dl = 0, dn = 0;
    int missing = 0;
    for (int s = from; s <= to; s++) {
        if (!a->loss[s] || !b->loss[s]) { missing++; continue; }
        double l = fabs(a->loss[s] - b->loss[s]), n = fabs(a->norm[s] - b->norm[s]) / a->norm[s];
        dl = l > dl ? l : dl;
        dn = n > dn ? n : dn;
    }
    CHECK(!missing && a->n == to && b->n == to, "%s: steps logged %d and %d of %d", what, a->n, b->n, to);
    CHECK(dl <= TOL_LOSS, "%s: losses differ by up to %.2g (tolerance %.0e)", what, dl, TOL_LOSS);
    CHECK(dn <= TOL_NORM, "%s: gradient norms differ by up to %.2g relative (tolerance %.0e)", what, dn, TOL_NORM);
    double dv = fabs(a->valid - b->valid), dt = fabs(a->test - b->test);
    CHECK(dv <= TOL_BPB && dt <= TOL_BPB, "%s: valid bpb %.6f vs %.6f, test %.6f vs %.6f", what, a->valid, b->valid,
          a->test, b->test);
    printf("%-44s steps %2d..%2d: max |loss diff| %.1e, max norm diff %.1e rel, bpb diff %.1e / %.1e\n", what, from,
           to, dl, dn, dv, dt);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

int main(int argc, char **argv) {
    (void)argc;
    char self[1024];
    snprintf(self, sizeof self, "%s", argv[0]);
    char *tests_dir = dirname(self);
    char resolved[1024];
    if (!realpath(tests_dir, resolved)) { printf("FAIL cannot resolve %s\n", tests_dir); return 1; }
    snprintf(bin, sizeof bin, "%s/../cformer", resolved);
    CF_ASSERT(getcwd(root, sizeof root), "getcwd: %s", strerror(errno));
    if (access("configs/tiny.json", R_OK) || access("data/tiny/train.bin", R_OK)) {
        printf("FAIL run from the repository root with data/tiny made (make test does both)\n");
        return 1;
    }
    if (system("command -v mpirun >/dev/null 2>&1")) {
        printf("FAIL mpirun not found (make deps MPI=1 installs openmpi-bin)\n");
        return 1;
    }
    /* mpirun refuses root unless told; the test runs wherever make test runs */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    char tmp[] = "/tmp/cformer-test-mpi-XXXXXX";
    CF_ASSERT(mkdtemp(tmp), "mkdtemp: %s", strerror(errno));
    double t_all = now_s(), secs;
    char d1[300], d2[300], d3[300], args[1024];
    const char *plain = "--set train.steps=16 --set train.checkpoint_every=8";
    const char *xl = "--set train.steps=16 --set train.checkpoint_every=8 --set train.grad_accum=2 "
                     "--set 'model.attention={\"type\": \"xl\", \"mem_len\": 32}' --set train.sampling=ordered";

    /* (a) the default decoder and Transformer-XL: 2 ranks = 1 process */
    snprintf(d1, sizeof d1, "%s/plain-1", tmp);
    snprintf(d2, sizeof d2, "%s/plain-2", tmp);
    CHECK(train(0, "", d1, plain, NULL) == 0, "plain, 1 process: failed (%s.err)", d1);
    CHECK(train(2, "CF_MPI_CHECK_EVERY=1", d2, plain, &secs) == 0, "plain, 2 ranks: failed (%s.err)", d2);
    run_log p1 = read_log(d1), p2 = read_log(d2);
    compare("(a) decoder: 2 ranks vs 1 process", &p1, &p2, 1, 16);
    printf("    (2 ranks: %.1f s)\n", secs);
    snprintf(d1, sizeof d1, "%s/xl-1", tmp);
    snprintf(d2, sizeof d2, "%s/xl-2", tmp);
    CHECK(train(0, "", d1, xl, NULL) == 0, "xl, 1 process: failed (%s.err)", d1);
    CHECK(train(2, "CF_MPI_CHECK_EVERY=1 CF_MPI_BUCKET_MB=0.01", d2, xl, NULL) == 0, "xl, 2 ranks: failed (%s.err)", d2);
    run_log x1 = read_log(d1), x2 = read_log(d2);
    compare("(a) xl, ordered streams: 2 ranks vs 1 process", &x1, &x2, 1, 16);

    /* (b) resume across rank counts: 2 -> 1 (decoder), 1 -> 2 (xl, its memory travels) */
    snprintf(d3, sizeof d3, "%s/plain-2to1", tmp);
    snprintf(args, sizeof args, "%s --until 8", plain);
    CHECK(train(2, "", d3, args, NULL) == 0, "plain, 2 ranks to step 8: failed (%s.err)", d3);
    snprintf(args, sizeof args, "%s --resume %s", plain, d3);
    CHECK(train(0, "", d3, args, NULL) == 0, "plain, resumed on 1 process: failed (%s.err)", d3);
    run_log p3 = read_log(d3);
    compare("(b) decoder: 2 ranks to step 8, then 1", &p1, &p3, 1, 16);
    snprintf(d3, sizeof d3, "%s/xl-1to2", tmp);
    snprintf(args, sizeof args, "%s --until 8", xl);
    CHECK(train(0, "", d3, args, NULL) == 0, "xl, 1 process to step 8: failed (%s.err)", d3);
    snprintf(args, sizeof args, "%s --resume %s", xl, d3);
    CHECK(train(2, "CF_MPI_CHECK_EVERY=1", d3, args, NULL) == 0, "xl, resumed on 2 ranks: failed (%s.err)", d3);
    run_log x3 = read_log(d3);
    compare("(b) xl: 1 process to step 8, then 2 ranks", &x1, &x3, 1, 16);

    /* (c) failures: the whole job stops, naming the rank, and the last checkpoint loads */
    struct { const char *env, *want, *what; int ckpt_step; } fails[] = {
        {"CF_DIST_FAIL=1:10", "rank 1 of 2: injected failure after step 10", "an error on rank 1", 8},
        {"CF_DIST_FAIL=1:10:exit", "Process name: [[", "rank 1 dies (exit 3)", 8},
        {"CF_DIST_FAIL=1:10:perturb CF_MPI_CHECK_EVERY=1", "parameters differ across ranks: rank 1 ",
         "rank 1's weights drift", 8},
    };
    for (int i = 0; i < 3; i++) {
        snprintf(d3, sizeof d3, "%s/fail-%d", tmp, i);
        int rc = train(2, fails[i].env, d3, plain, &secs);
        char path[400], *err;
        snprintf(path, sizeof path, "%s.err", d3);
        err = t_read_text(path);
        CHECK(rc != 0 && rc != 124 && rc != 137, "(c) %s: exit status %d (want a failure, not a timeout)", fails[i].what,
              rc);
        /* a process that dies says nothing: mpirun names it, "Process name: [[job,1],1]" (the rank last) */
        const char *w = strstr(err, fails[i].want);
        int named = w && (i != 1 || (strstr(w, "],1]") && strstr(err, "non-zero status")));
        CHECK(named, "(c) %s: stderr lacks \"%s\" naming rank 1:\n%s", fails[i].what, fails[i].want, err);
        CHECK(secs < 60, "(c) %s: took %.0f s", fails[i].what, secs);
        char cmd[1600];
        snprintf(cmd, sizeof cmd, "%s info %s/ckpt/latest.h5 2>&1 | grep -q '^step *%d of 16'", bin, d3,
                 fails[i].ckpt_step);
        CHECK(system(cmd) == 0, "(c) %s: %s/ckpt/latest.h5 is not a loadable checkpoint of step %d", fails[i].what, d3,
              fails[i].ckpt_step);
        printf("(c) %-40s exit %d after %.1f s, rank named, checkpoint of step %d loads\n", fails[i].what, rc, secs,
               fails[i].ckpt_step);
        free(err);
    }
    /* a batch that does not split: every rank fails alike at set-up, one line says so */
    snprintf(d3, sizeof d3, "%s/bad-batch", tmp);
    int rc = train(2, "", d3, "--set train.batch_size=3", NULL);
    char path[400];
    snprintf(path, sizeof path, "%s.err", d3);
    char *err = t_read_text(path);
    CHECK(rc == 2 && count(err, "cformer: ") == 1 && strstr(err, "train.batch_size: 3 does not split over 2 MPI ranks"),
          "(c) batch 3 on 2 ranks: exit %d, stderr:\n%s", rc, err);
    struct stat st;
    CHECK(stat(d3, &st) != 0, "(c) batch 3 on 2 ranks: the run directory was created");
    printf("(c) %-40s exit %d: %s", "batch_size 3 on 2 ranks", rc, err);
    free(err);

    printf("test_mpi: %.1f s\n", now_s() - t_all);
    if (!t_failed) nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else printf("runs kept in %s\n", tmp);
    TEST_MAIN_END();
}
#endif
