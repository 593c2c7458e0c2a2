/* HDF5 checkpoints, exact resume and safe interruption (checkpoint.h, docs/architecture.md sections 9-10).
 *
 *   - round trip: save and load give back every weight, moment and state field bitwise; the
 *     layout is the documented one and /params matches the golden files' names and shapes;
 *   - exact resume: N steps straight == N/2 steps (--until) + resume to N, bitwise (final weights,
 *     optimizer state, every logged loss), for random windows and ordered streams, dropout on,
 *     with AdamW and with Lion;
 *   - the optimizer in the file: /optimizer/name and the slabs of the run's optimizer; a file
 *     without the name loads as AdamW; resuming with another train.optimizer is refused;
 *   - a writer killed mid-save (CF_CKPT_FAIL_AFTER) leaves the previous checkpoint intact and
 *     loadable, its leftover temporary is never taken for a checkpoint, and resuming from there
 *     still ends bitwise where the uninterrupted run did;
 *   - SIGTERM stops after the step with a checkpoint and status 143; a second signal kills at once
 *     and the last checkpoint still loads;
 *   - bad input (not HDF5, truncated, wrong format or version, missing dataset, wrong shape or
 *     type, NaN, extra parameter, resume without checkpoint, model shape change, unwritable output,
 *     full disk, NaN loss): -1 with one line naming the file, and nothing on disk changes.
 *
 * Training runs in forked children (as the CLI would run them), so a kill or abort hits only the
 * child, and the parent never starts OpenMP threads before a fork (libgomp's pool does not survive
 * fork): it runs its own work at one thread, and each child takes back the thread count. Everything lives in a fresh directory under /tmp, removed when every check passed. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>
#include "test.h"
#include "cformer/checkpoint.h"
#include "cformer/h5io.h"
#include "cformer/train.h"

static char root[256];      /* the test's scratch directory */
static char err_path[300];  /* children's stderr and stdout */
static int child_threads;    /* the thread count the test runs at: the children's (the parent's is 1) */

/* ---- files ------------------------------------------------------------------------------------ */
static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CF_ASSERT(f && fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

/* whole file, NUL-terminated; NULL when missing */
static char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    size_t got = fread(b, 1, (size_t)len, f);
    fclose(f);
    b[got] = 0;
    if (n) *n = got;
    return b;
}

static int exists(const char *path) { struct stat st; return stat(path, &st) == 0; }

static int same_bytes(const char *path, const char *data, size_t n) {
    size_t m;
    char *b = read_bytes(path, &m);
    int same = b && m == n && !memcmp(b, data, n);
    free(b);
    return same;
}

static void copy_file(const char *src, const char *dst) {
    size_t n;
    char *b = read_bytes(src, &n);
    CF_ASSERT(b, "cannot read %s", src);
    write_bytes(dst, b, n);
    free(b);
}

static int count_temps(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* names, sizes, inodes and modification times of everything under dir: "did anything change?" */
static char snap_buf[16384];
static size_t snap_len;
static int snap_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)flag; (void)ftw;
    snap_len += (size_t)snprintf(snap_buf + snap_len, sizeof snap_buf - snap_len, "%s %lld %llu %lld.%09ld\n", p,
                                 (long long)st->st_size, (unsigned long long)st->st_ino, (long long)st->st_mtim.tv_sec,
                                 st->st_mtim.tv_nsec);
    return snap_len >= sizeof snap_buf - 1;
}
static char *snapshot(const char *dir) {
    snap_len = 0;
    snap_buf[0] = 0;
    nftw(dir, snap_one, 16, FTW_PHYS);
    return strdup(snap_buf);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    chmod(p, 0755);
    return remove(p);
}

/* ---- data and configs ----------------------------------------------------------------------------- */
/* English-like bytes, so a few steps of training move the loss */
static void make_text(const char *path, size_t n, uint64_t seed) {
    static const char *words[] = {"the", "model", "learns", "a", "byte", "stream", "of", "text", "and", "checkpoint",
                                  "resumes", "exactly", "where", "it", "stopped", "with", "every", "weight"};
    cf_rng r;
    cf_rng_seed(&r, seed);
    char *b = malloc(n);
    size_t i = 0;
    while (i < n) {
        const char *w = words[cf_rng_next(&r) % (sizeof words / sizeof *words)];
        for (; *w && i < n; w++) b[i++] = *w;
        if (i < n) b[i++] = cf_rng_next(&r) % 9 ? ' ' : '\n';
    }
    write_bytes(path, b, n);
    free(b);
}

static char base_json[2048];

static void make_config(cf_config *c, const char *const *over, int n) {
    int rc = cf_config_parse(c, base_json, over, n, 1);
    CF_ASSERT(rc == 0, "test config: %s", cf_error_msg());
    snprintf(c->name, sizeof c->name, "ckpt-test");
}

/* ---- training in a child -------------------------------------------------------------------------- */
static const char *child_output(void) {
    static char buf[8192];
    size_t n;
    char *b = read_bytes(err_path, &n);
    snprintf(buf, sizeof buf, "%s", b ? b : "");
    free(b);
    return buf;
}

/* run cf_train in a child (stderr and stdout into err_path); the wait status, with the exit code
 * main() would give: 0, 2 for errors, 128 + signal when one stopped the run */
static pid_t spawn_train(const cf_config *c, const char *out, const char *resume, int until, const char *env_k,
                         const char *env_v) {
    fflush(stdout);
    fflush(stderr);
    pid_t p = fork();
    CF_ASSERT(p >= 0, "fork: %s", strerror(errno));
    if (p == 0) {
        omp_set_num_threads(child_threads);
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        close(fd);
        if (env_k) setenv(env_k, env_v, 1);
        int sig = 0;
        cf_train_opts o = {.out_dir = out, .resume = resume, .until = until, .quiet = 1, .stop_signal = &sig};
        int rc = cf_train(c, &o);
        if (rc < 0) fprintf(stderr, "cformer: %s\n", cf_error_msg());
        fflush(stdout);
        fflush(stderr);
        _exit(rc < 0 ? 2 : rc > 0 ? 128 + sig : 0);
    }
    return p;
}

static int train_child(const cf_config *c, const char *out, const char *resume, int until, const char *env_k,
                       const char *env_v) {
    int st;
    waitpid(spawn_train(c, out, resume, until, env_k, env_v), &st, 0);
    return st;
}

#define EXITED(st, code) (WIFEXITED(st) && WEXITSTATUS(st) == (code))

/* ---- checkpoint comparisons ------------------------------------------------------------------------ */
typedef struct { cf_model m; cf_optim o; cf_train_state s; } loaded;

static int load_all(const char *path, const cf_config *c, loaded *l) {
    memset(l, 0, sizeof *l);
    CF_ASSERT(cf_model_init(&l->m, &c->model, 99) == 0, "%s", cf_error_msg());
    cf_optim_init(&l->o, c->train.optimizer, &l->m.params);
    return cf_ckpt_load(path, &l->m, &l->o, &l->s);
}

/* every slab of two optimizers of the same kind and parameters is bitwise equal */
static int same_optim(const cf_optim *a, const cf_optim *b) {
    int same = a->kind == b->kind && a->t == b->t && a->n_slabs == b->n_slabs;
    for (int k = 0; same && k < a->n_slabs; k++)
        same = a->slab[k].numel == b->slab[k].numel &&
               !memcmp(a->slab[k].data, b->slab[k].data, sizeof(float) * (size_t)a->slab[k].numel);
    return same;
}

static void free_loaded(loaded *l) {
    cf_optim_free(&l->o);
    cf_model_free(&l->m);
}

/* the recurrent attention state (xl memory, infini memory) of two loaded models is bitwise equal */
static int same_rec(const cf_model *x, const cf_model *y) {
    const cf_rec_state *a = &x->rec, *b = &y->rec;
    if (a->batch != b->batch) return 0;
    if (!a->batch) return 1;
    int B = a->batch;
    for (int l = 0; l < x->n_blocks; l++) {
        cf_state_array sa[CF_STATE_MAX_ARRAYS], sb[CF_STATE_MAX_ARRAYS];
        int n = cf_rec_state_arrays(x, a, l, sa, NULL);
        if (cf_rec_state_arrays(y, b, l, sb, NULL) != n || a->used[l] != b->used[l]) return 0;
        /* the sub-rows in use of every stream */
        for (int k = 0; k < n; k++)
            for (int r = 0; r < B; r++)
                if (memcmp(sa[k].data + r * sa[k].row, sb[k].data + r * sb[k].row,
                           sizeof(float) * (size_t)(sa[k].row / sa[k].shape[0] * a->used[l])))
                    return 0;
    }
    return 1;
}

/* weights, moments and state of two checkpoints are bitwise equal */
static int same_ckpt(const char *a, const char *b, const cf_config *c) {
    loaded x, y;
    int ok = load_all(a, c, &x) == 0;
    ok = load_all(b, c, &y) == 0 && ok;
    if (!ok) printf("  load: %s\n", cf_error_msg());
    size_t bytes = (size_t)x.m.params.numel * sizeof(float);
    if (ok) {
        ok = !memcmp(x.m.params.values, y.m.params.values, bytes) && same_optim(&x.o, &y.o) && x.s.step == y.s.step &&
             x.s.tokens_seen == y.s.tokens_seen && x.s.next_batch == y.s.next_batch && x.s.seed == y.s.seed;
        if (ok && !same_rec(&x.m, &y.m)) {
            printf("  the recurrent attention state differs\n");
            ok = 0;
        } else if (!ok) {
            for (int i = 0; i < x.m.params.n; i++) {
                const cf_tensor *t = x.m.params.t[i], *u = y.m.params.t[i];
                if (memcmp(t->data, u->data, (size_t)t->numel * sizeof(float))) {
                    printf("  first differing parameter: %s\n", t->name);
                    break;
                }
            }
            printf("  t %lld/%lld step %lld/%lld next_batch %llu/%llu\n", (long long)x.o.t, (long long)y.o.t,
                   (long long)x.s.step, (long long)y.s.step, (unsigned long long)x.s.next_batch,
                   (unsigned long long)y.s.next_batch);
        }
    }
    free_loaded(&x);
    free_loaded(&y);
    return ok;
}

static int64_t ckpt_step(const char *path, const cf_config *c) {
    loaded l;
    int64_t s = load_all(path, c, &l) ? -1 : l.s.step;
    free_loaded(&l);
    return s;
}

/* the "step N: loss L" pairs of a log.jsonl, as text, in order */
static char *log_losses(const char *run) {
    char p[600];
    snprintf(p, sizeof p, "%s/log.jsonl", run);
    char *log = read_bytes(p, NULL);
    if (!log) return strdup("(no log)");
    char *out = calloc(strlen(log) + 1, 1);
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) {
        char *l = strstr(line, "\"loss\": ");
        long long s;
        if (!l || sscanf(line, "{\"step\": %lld", &s) != 1) continue;
        char *end = strchr(l + 8, ',');
        sprintf(out + strlen(out), "%lld:%.*s ", s, (int)(end ? end - l - 8 : 0), l + 8);
    }
    free(log);
    return out;
}

static void path_of(char *buf, size_t n, const char *a, const char *b) { snprintf(buf, n, "%s/%s", a, b); }

/* ---- 1. round trip and layout ----------------------------------------------------------------------- */
static void check_golden_names(const char *golden, const char *ckpt_dir) {
    hid_t g = cf_h5_open_read(golden);
    CHECK(g >= 0, "%s", cf_error_msg());
    if (g < 0) return;
    char *json = cf_h5_read_string(g, golden, "config");
    cf_config c;
    CHECK(json && cf_config_parse(&c, json, NULL, 0, 0) == 0, "%s config: %s", golden, cf_error_msg());
    free(json);
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 3) == 0, "%s", cf_error_msg());
    cf_optim o;
    cf_optim_init(&o, c.train.optimizer, &m.params);
    cf_train_state s;
    cf_train_state_init(&s, &c);
    char path[600];
    path_of(path, sizeof path, ckpt_dir, strstr(golden, "untied") ? "untied.h5" : "tied.h5");
    CHECK(cf_ckpt_save(path, &c, &m, &o, &s) == 0, "%s", cf_error_msg());
    hid_t f = cf_h5_open_read(path);
    CHECK(f >= 0, "%s", cf_error_msg());
    H5G_info_t gi, fi;
    H5Gget_info_by_name(g, "params", &gi, H5P_DEFAULT);
    H5Gget_info_by_name(f, "params", &fi, H5P_DEFAULT);
    CHECK(gi.nlinks == fi.nlinks && fi.nlinks == (hsize_t)m.params.n, "%s: %llu params, golden %llu", path,
          (unsigned long long)fi.nlinks, (unsigned long long)gi.nlinks);
    for (hsize_t i = 0; i < gi.nlinks; i++) {
        char name[256], ds[300];
        H5Lget_name_by_idx(g, "params", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
        snprintf(ds, sizeof ds, "params/%s", name);
        int na, nb;
        int64_t sa[4], sb[4];
        int ok = cf_h5_shape(g, ds, &na, sa) == 0 && cf_h5_shape(f, ds, &nb, sb) == 0 && na == nb;
        for (int d = 0; ok && d < na; d++) ok = sa[d] == sb[d];
        CHECK(ok, "%s: /%s missing or shaped differently from %s", path, ds, golden);
    }
    H5Fclose(f);
    H5Fclose(g);
    cf_optim_free(&o);
    cf_model_free(&m);
}

static void test_roundtrip(void) {
    char dir[300], path[400];
    path_of(dir, sizeof dir, root, "rt");
    mkdir(dir, 0755);
    path_of(path, sizeof path, dir, "a.h5");
    cf_config c;
    make_config(&c, NULL, 0);
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 5) == 0, "%s", cf_error_msg());
    cf_optim o;
    cf_optim_init(&o, c.train.optimizer, &m.params);
    t_fill_uniform(m.params.values, m.params.numel, -1, 1, 11);
    t_fill_uniform(o.slab[0].data, o.slab[0].numel, -1e-3f, 1e-3f, 12);
    t_fill_uniform(o.slab[1].data, o.slab[1].numel, 0, 1e-5f, 13);
    o.t = 7;
    cf_train_state s;
    cf_train_state_init(&s, &c);
    s.step = 7;
    s.tokens_seen = 7 * 64;
    s.next_batch = 14;
    s.best_valid_bpb = 3.25;
    s.elapsed_s = 1.5;
    CHECK(cf_ckpt_save(path, &c, &m, &o, &s) == 0, "save: %s", cf_error_msg());
    CHECK(count_temps(dir) == 0, "a temporary file is left after a save");

    loaded l;
    CHECK(load_all(path, &c, &l) == 0, "load: %s", cf_error_msg());
    size_t bytes = (size_t)m.params.numel * sizeof(float);
    CHECK(!memcmp(l.m.params.values, m.params.values, bytes), "weights differ after a round trip");
    CHECK(same_optim(&l.o, &o) && l.o.t == 7, "AdamW state differs");
    CHECK(l.s.step == 7 && l.s.tokens_seen == 7 * 64 && l.s.next_batch == 14 && l.s.seed == c.train.seed &&
          l.s.best_valid_bpb == 3.25 && l.s.elapsed_s == 1.5 && l.s.batch_size == c.train.batch_size &&
          l.s.seq_len == c.train.seq_len && l.s.sampling == CF_SAMPLE_RANDOM, "train state differs");
    free_loaded(&l);

    /* eval/sample/info path: config from the file */
    cf_config c2;
    cf_model m2;
    cf_train_state s2;
    CHECK(cf_ckpt_load_model(path, &c2, &m2, &s2) == 0, "load_model: %s", cf_error_msg());
    CHECK(!memcmp(m2.params.values, m.params.values, bytes) && s2.step == 7, "load_model: weights or step differ");
    char *ja = cf_config_to_json(&c), *jb = cf_config_to_json(&c2);
    CHECK(!strcmp(ja, jb), "the stored config does not read back as the saved one");
    free(ja); free(jb);
    cf_model_free(&m2);

    /* the documented layout, with plain HDF5 calls */
    hid_t f = cf_h5_open_read(path);
    char *fmt = cf_h5_read_attr_string(f, path, "/", "format");
    int64_t ver = 0, step = 0, tok = 0, t = 0;
    CHECK(fmt && !strcmp(fmt, "cformer-checkpoint"), "format attribute: %s", fmt ? fmt : cf_error_msg());
    free(fmt);
    CHECK(cf_h5_read_attr_i64(f, path, "/", "format_version", &ver) == 0 && ver == 1, "format_version");
    CHECK(cf_h5_read_attr_i64(f, path, "/", "step", &step) == 0 && step == 7, "step attribute");
    CHECK(cf_h5_read_attr_i64(f, path, "/", "tokens_seen", &tok) == 0 && tok == 7 * 64, "tokens_seen attribute");
    CHECK(cf_h5_read_i64(f, path, "optimizer/t", &t, 1) == 0 && t == 7, "/optimizer/t");
    const char *need[] = {"config", "params/tok_emb.weight", "params/blocks.1.mlp.proj.weight",
                          "optimizer/m/ln_f.bias", "optimizer/v/pos_emb.weight", "state/seed", "state/next_batch",
                          "state/best_valid_bpb", "state/sampler/mode", "state/sampler/batch_size",
                          "state/sampler/seq_len", "state/attention"};
    for (size_t i = 0; i < sizeof need / sizeof *need; i++) CHECK(cf_h5_exists(f, need[i]), "missing /%s", need[i]);
    int nd;
    int64_t sh[4];
    CHECK(cf_h5_shape(f, "params/blocks.0.mlp.fc.weight", &nd, sh) == 0 && nd == 2 && sh[0] == c.model.d_ff &&
          sh[1] == c.model.d_model, "mlp.fc.weight is not [d_ff, d_model]");
    H5Fclose(f);

    /* names and shapes are the PyTorch twin's: those of the golden files' /params */
    check_golden_names("tests/golden/gpt_tied.h5", dir);
    check_golden_names("tests/golden/gpt_untied.h5", dir);

    /* saving over an existing checkpoint replaces it (atomically) */
    s.step = 8;
    CHECK(cf_ckpt_save(path, &c, &m, &o, &s) == 0 && ckpt_step(path, &c) == 8, "re-save: %s", cf_error_msg());
    /* weights that are not finite are never written over a checkpoint */
    m.params.values[3] = NAN;
    CHECK(cf_ckpt_save(path, &c, &m, &o, &s) == -1 && strstr(cf_error_msg(), "NaN"), "NaN weights saved: %s",
          cf_error_msg());
    CHECK(ckpt_step(path, &c) == 8 && count_temps(dir) == 0, "refused save touched the checkpoint");
    cf_optim_free(&o);
    cf_model_free(&m);

    /* config differences */
    cf_config d;
    make_config(&d, (const char *[]){"train.steps=12", "train.lr=0.002"}, 2);
    char *diff = cf_ckpt_config_diff(&c, &d, NULL, NULL);
    CHECK(diff && strstr(diff, "train.steps: 8 -> 12") && strstr(diff, "train.lr: 0.003 -> 0.002"), "diff: %s",
          diff ? diff : "(none)");
    free(diff);
    CHECK(cf_ckpt_config_diff(&c, &d, "model.", NULL) == NULL, "a model diff where only train keys changed");
    CHECK(cf_ckpt_config_diff(&c, &c, NULL, NULL) == NULL, "a diff between equal configs");
}

/* ---- 2. exact resume ------------------------------------------------------------------------------- */
static void test_exact_resume(const char *mode, const char *const *over, int n_over) {
    cf_config c;
    make_config(&c, over, n_over);
    char a[300], b[300], pa[400], pb[400];
    snprintf(a, sizeof a, "%s/%s-straight", root, mode);
    snprintf(b, sizeof b, "%s/%s-resumed", root, mode);
    int st = train_child(&c, a, NULL, 0, NULL, NULL);
    CHECK(EXITED(st, 0), "%s: straight run failed (status %d): %s", mode, st, child_output());
    st = train_child(&c, b, NULL, 4, NULL, NULL);
    CHECK(EXITED(st, 0), "%s: --until 4 failed (status %d): %s", mode, st, child_output());
    path_of(pb, sizeof pb, b, "ckpt/latest.h5");
    CHECK(ckpt_step(pb, &c) == 4, "%s: --until 4 did not leave a checkpoint at step 4", mode);
    st = train_child(&c, NULL, b, 0, NULL, NULL);   /* --resume RUN_DIR writes on into RUN_DIR */
    CHECK(EXITED(st, 0), "%s: resume failed (status %d): %s", mode, st, child_output());
    CHECK(strstr(child_output(), "resuming from") != NULL, "%s: resume said nothing", mode);

    path_of(pa, sizeof pa, a, "ckpt/latest.h5");
    CHECK(ckpt_step(pa, &c) == 8 && ckpt_step(pb, &c) == 8, "%s: final checkpoints are not at step 8", mode);
    CHECK(same_ckpt(pa, pb, &c), "%s: straight and resumed runs end with different weights or state", mode);
    char *la = log_losses(a), *lb = log_losses(b);
    CHECK(!strcmp(la, lb), "%s: logged losses differ\n  straight %s\n  resumed  %s", mode, la, lb);
    CHECK(strstr(la, "8:") != NULL, "%s: the log lacks step 8: %s", mode, la);
    printf("%s: straight == until 4 + resume, bitwise; losses %s\n", mode, la);
    free(la);
    free(lb);

    /* keep_checkpoints 2: step_6 and step_8 stay, older ones went after the new one was written */
    char p[400];
    path_of(p, sizeof p, a, "ckpt/step_8.h5");
    int ok = exists(p);
    path_of(p, sizeof p, a, "ckpt/step_6.h5");
    ok &= exists(p);
    path_of(p, sizeof p, a, "ckpt/step_4.h5");
    ok &= !exists(p);
    path_of(p, sizeof p, a, "ckpt/step_2.h5");
    ok &= !exists(p);
    CHECK(ok, "%s: rotation did not keep exactly the last 2 step files", mode);
    path_of(p, sizeof p, a, "ckpt");
    CHECK(count_temps(p) == 0, "%s: temporary files left in %s", mode, p);
}

/* The state is really in the file, with the documented shapes, and a resume without it differs:
 * the exact-resume tests above would pass vacuously if the streams restarted at no cost. */
static void test_rec_state_saved(const char *const *xl_over, const char *const *inf_over) {
    char p[400], q[400];
    snprintf(p, sizeof p, "%s/xl-straight/ckpt/step_6.h5", root);
    hid_t f = cf_h5_open_read(p);
    CHECK(f >= 0, "cannot open %s", p);
    if (f < 0) return;
    int nd = 0;
    int64_t sh[4] = {0};
    CHECK(cf_h5_shape(f, "state/attention/layer.0/xl_mem", &nd, sh) == 0 && nd == 3 && sh[0] == 2 && sh[1] == 24 &&
              sh[2] == 32 && cf_h5_shape(f, "state/attention/layer.1/xl_mem", &nd, sh) == 0,
          "xl checkpoint: /state/attention/layer.<i>/xl_mem missing or not [2, 24, 32] (%d dims: %lld %lld %lld)", nd,
          (long long)sh[0], (long long)sh[1], (long long)sh[2]);
    H5Fclose(f);
    snprintf(p, sizeof p, "%s/infini-straight/ckpt/step_6.h5", root);
    f = cf_h5_open_read(p);
    CHECK(f >= 0 && cf_h5_shape(f, "state/attention/layer.1/infini_M", &nd, sh) == 0 && nd == 4 && sh[0] == 2 &&
              sh[1] == 2 && sh[2] == 16 && sh[3] == 16 && cf_h5_shape(f, "state/attention/layer.1/infini_z", &nd, sh) == 0 &&
              nd == 3 && sh[2] == 16,
          "infini checkpoint: /state/attention/layer.1/infini_M [2, 2, 16, 16] or infini_z [2, 2, 16] missing");
    if (f >= 0) H5Fclose(f);
    /* drop the state from the step-4 checkpoint of a copy of the run: the resumed run then differs */
    const char *const *overs[2] = {xl_over, inf_over};
    const char *modes[2] = {"xl", "infini"};
    for (int k = 0; k < 2; k++) {
        cf_config c;
        make_config(&c, overs[k], k ? 3 : 4);
        char b[300];
        snprintf(b, sizeof b, "%s/%s-stateless", root, modes[k]);
        int st = train_child(&c, b, NULL, 4, NULL, NULL);
        CHECK(EXITED(st, 0), "%s: --until 4 failed: %s", modes[k], child_output());
        snprintf(p, sizeof p, "%s/ckpt/step_4.h5", b);
        hid_t g = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        CHECK(g >= 0, "cannot open %s for writing", p);
        if (g < 0) continue;
        H5Ldelete(g, "state/attention/layer.0", H5P_DEFAULT);
        H5Ldelete(g, "state/attention/layer.1", H5P_DEFAULT);
        H5Fclose(g);
        CHECK(t_reseal(p) == 0, "cannot reseal %s", p);
        st = train_child(&c, NULL, b, 0, NULL, NULL);   /* latest.h5 is a link to step_4.h5 */
        snprintf(q, sizeof q, "%s/%s-straight", root, modes[k]);
        char *la = log_losses(q), *lb = log_losses(b);
        CHECK(EXITED(st, 0) && strcmp(la, lb), "%s: resuming without the recurrent state changes nothing (%s)", modes[k],
              child_output());
        free(la);
        free(lb);
    }
}

/* ---- the optimizer in the file ------------------------------------------------------------------------ */
/* the "loss" values of a log, in order; returns how many (at most n) */
static int log_loss_values(const char *run, float *loss, int n) {
    char *l = log_losses(run), *p = l;
    int k = 0, used;
    long long step;
    while (k < n && sscanf(p, "%lld:%f %n", &step, &loss[k], &used) == 2) { k++; p += used; }
    free(l);
    return k;
}

/* Lion (run by test_exact_resume as mode "lion"): the loss goes down, the file holds its name and
 * its one slab, and neither optimizer resumes from the other's checkpoint */
static void test_lion_run(const char *const *lion_over, int n_over) {
    char run[300], p[400];
    path_of(run, sizeof run, root, "lion-straight");
    float loss[8];
    int n = log_loss_values(run, loss, 8);
    CHECK(n == 8 && loss[7] < loss[0] - 0.1f && loss[6] + loss[7] < loss[0] + loss[1] - 0.2f,
          "lion: the loss does not go down over 8 steps (%d logged, %.4f ... %.4f)", n, loss[0], n ? loss[n - 1] : 0.f);
    path_of(p, sizeof p, run, "ckpt/latest.h5");
    hid_t f = cf_h5_open_read(p);
    char *name = f >= 0 ? cf_h5_read_string(f, p, "optimizer/name") : NULL;
    CHECK(name && !strcmp(name, "lion") && cf_h5_exists(f, "optimizer/m/tok_emb.weight") &&
          !cf_h5_exists(f, "optimizer/v"), "lion checkpoint: /optimizer/name \"%s\", or /optimizer/m missing, or a "
          "/optimizer/v", name ? name : cf_error_msg());
    free(name);
    if (f >= 0) H5Fclose(f);
    /* a Lion run resumed as AdamW: one line naming both, the run directory untouched */
    cf_config c;
    const char *ov[16];
    for (int i = 0; i < n_over; i++) ov[i] = lion_over[i];
    ov[n_over] = "train.optimizer=\"adamw\"";
    ov[n_over + 1] = "train.steps=9";
    make_config(&c, ov, n_over + 2);
    char *snap = snapshot(run);
    int st = train_child(&c, NULL, run, 0, NULL, NULL);
    const char *out = child_output();
    const char *nl = strchr(out, '\n');
    CHECK(EXITED(st, 2) && strstr(out, "optimizer \"lion\", the run's train.optimizer is \"adamw\"") && nl && !nl[1],
          "lion run resumed as adamw: status %d, want one line: %s", st, out);
    char *after = snapshot(run);
    CHECK(!strcmp(snap, after), "a refused resume changed the run directory");
    printf("resume lion as adamw   -> %s", out);
    free(snap);
    free(after);
}

/* A checkpoint without /optimizer/name (the layout of files that hold AdamW state only) loads as
 * AdamW, bitwise, and is refused to a Lion run with one line naming both. */
static void test_unnamed_optimizer(const char *straight) {
    char good[400], p[400];
    path_of(good, sizeof good, straight, "ckpt/latest.h5");
    snprintf(p, sizeof p, "%s/unnamed.h5", root);
    copy_file(good, p);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(f >= 0 && H5Ldelete(f, "optimizer/name", H5P_DEFAULT) >= 0, "cannot delete /optimizer/name from %s", p);
    if (f >= 0) H5Fclose(f);
    CHECK(t_reseal(p) == 0, "cannot reseal %s", p);
    f = cf_h5_open_read(p);
    CHECK(f >= 0 && !cf_h5_exists(f, "optimizer/name"), "/optimizer/name is still there");
    if (f >= 0) H5Fclose(f);
    cf_config c;
    make_config(&c, (const char *[]){"train.sampling=\"random\"", "model.dropout=0.1"}, 2);
    CHECK(c.train.optimizer == CF_OPTIM_ADAMW && same_ckpt(p, good, &c),
          "a checkpoint without /optimizer/name does not load as the AdamW checkpoint it was: %s", cf_error_msg());
    make_config(&c, (const char *[]){"train.optimizer=\"lion\""}, 1);
    loaded l;
    int rc = load_all(p, &c, &l);
    free_loaded(&l);
    const char *msg = cf_error_msg();
    CHECK(rc == -1 && strstr(msg, p) && strstr(msg, "optimizer \"adamw\", the run's train.optimizer is \"lion\"") &&
          !strchr(msg, '\n'), "an unnamed checkpoint loaded by Lion: rc %d: %s", rc, msg);
    printf("unnamed, as lion       -> %s\n", msg);
}

/* ---- 3. a writer killed in the middle of a save ----------------------------------------------------- */
static void test_kill_mid_write(const cf_config *c, const char *straight) {
    char k[300], latest[400], step4[400], step6[400], ckdir[400];
    path_of(k, sizeof k, root, "killed");
    path_of(latest, sizeof latest, k, "ckpt/latest.h5");
    path_of(step4, sizeof step4, k, "ckpt/step_4.h5");
    path_of(step6, sizeof step6, k, "ckpt/step_6.h5");
    path_of(ckdir, sizeof ckdir, k, "ckpt");
    int st = train_child(c, k, NULL, 4, NULL, NULL);
    CHECK(EXITED(st, 0), "first half failed: %s", child_output());
    size_t n_latest;
    char *before = read_bytes(latest, &n_latest);
    CHECK(before != NULL, "no latest.h5 after --until 4");
    if (!before) return;
    /* the step-6 save aborts after its 12th write: attributes, config and some parameters are in */
    st = train_child(c, NULL, k, 0, "CF_CKPT_FAIL_AFTER", "12");
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "the writer was not killed mid-save (status %d): %s", st,
          child_output());
    CHECK(same_bytes(latest, before, n_latest), "latest.h5 changed although the save was killed");
    CHECK(ckpt_step(latest, c) == 4 && ckpt_step(step4, c) == 4, "the previous checkpoint does not load: %s",
          cf_error_msg());
    CHECK(!exists(step6), "a half-written step_6.h5 exists under a checkpoint's name");
    CHECK(count_temps(ckdir) == 1, "the killed save should leave exactly one temporary file, found %d",
          count_temps(ckdir));
    char path[1200], rd[1024];
    CHECK(cf_ckpt_resolve(k, path, sizeof path, rd, sizeof rd) == 0 && !strcmp(path, latest), "resolve: %s",
          cf_error_msg());
    /* resume again: the leftover is cleared, and the run still ends bitwise where the straight one did */
    st = train_child(c, NULL, k, 0, NULL, NULL);
    CHECK(EXITED(st, 0), "resume after the kill failed: %s", child_output());
    CHECK(count_temps(ckdir) == 0, "the leftover temporary file was not removed");
    char sa[400];
    path_of(sa, sizeof sa, straight, "ckpt/latest.h5");
    CHECK(same_ckpt(sa, latest, c), "a run killed mid-save and resumed differs from the straight run");
    char *la = log_losses(straight), *lk = log_losses(k);
    CHECK(!strcmp(la, lk), "log after kill + resume differs (duplicated or missing steps?)\n  %s\n  %s", la, lk);
    free(la);
    free(lk);
    free(before);
}

/* ---- 4. signals --------------------------------------------------------------------------------------- */
/* wait until the run's log has at least `lines` lines (the child is training); 0 on timeout */
static int wait_for_log(const char *run, int lines, double timeout_s) {
    char p[400];
    path_of(p, sizeof p, run, "log.jsonl");
    for (double t = 0; t < timeout_s; t += 0.01) {
        char *b = read_bytes(p, NULL);
        int n = 0;
        for (char *q = b; q && *q; q++) n += *q == '\n';
        free(b);
        if (n >= lines) return 1;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    return 0;
}

static void test_signals(void) {
    cf_config c;
    make_config(&c, (const char *[]){"train.steps=1000000", "train.checkpoint_every=0", "train.eval_every=0"}, 3);
    char s[300], p[400];
    path_of(s, sizeof s, root, "sigterm");
    pid_t pid = spawn_train(&c, s, NULL, 0, NULL, NULL);
    int started = wait_for_log(s, 3, 60);
    CHECK(started, "the child did not start training");
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    CHECK(EXITED(st, 143), "SIGTERM: status %d, expected exit 143: %s", st, child_output());
    path_of(p, sizeof p, s, "ckpt/latest.h5");
    int64_t step = ckpt_step(p, &c);
    CHECK(step >= 3, "SIGTERM: no checkpoint past step 3 (%lld): %s", (long long)step, cf_error_msg());
    char want[500];
    snprintf(want, sizeof want, "%s/ckpt/step_%lld.h5", s, (long long)step);
    CHECK(exists(want) && strstr(child_output(), want) && strstr(child_output(), "SIGTERM"),
          "SIGTERM: the message does not name %s: %s", want, child_output());
    /* the step that was running finished: its loss is the log's last line, the checkpoint's step */
    char *l = log_losses(s), this_step[32], next_step[32];
    snprintf(this_step, sizeof this_step, " %lld:", (long long)step);
    snprintf(next_step, sizeof next_step, " %lld:", (long long)step + 1);
    CHECK(strstr(l, this_step) && !strstr(l, next_step),
          "SIGTERM: the last logged step is not the checkpoint's (%lld): %s", (long long)step, l);
    free(l);

    /* SIGINT then SIGTERM at once: the second kills by its default action; the last complete checkpoint
     * (one per step here) still loads */
    make_config(&c, (const char *[]){"train.steps=1000000", "train.checkpoint_every=1", "train.eval_every=0"}, 3);
    path_of(s, sizeof s, root, "sigtwice");
    pid = spawn_train(&c, s, NULL, 0, NULL, NULL);
    CHECK(wait_for_log(s, 3, 60), "the child did not start training");
    kill(pid, SIGINT);
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && (WTERMSIG(st) == SIGTERM || WTERMSIG(st) == SIGINT),
          "two signals: status %d, expected death by the second signal: %s", st, child_output());
    path_of(p, sizeof p, s, "ckpt/latest.h5");
    CHECK(ckpt_step(p, &c) >= 2, "two signals: latest.h5 does not load: %s", cf_error_msg());
}

/* ---- 5. bad input --------------------------------------------------------------------------------------- */
/* a checkpoint copy edited with HDF5, then loaded: -1, one line naming the file and `want`, file unchanged.
 * weights: the damage is in what eval/sample/info read too (cf_ckpt_load_model must refuse it) */
typedef void (*edit_fn)(hid_t f);
static void bad_load(const char *good, const cf_config *c, const char *name, edit_fn edit, const char *want,
                     int weights) {
    char p[400];
    snprintf(p, sizeof p, "%s/bad/%s.h5", root, name);
    copy_file(good, p);
    if (edit) {
        hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        CF_ASSERT(f >= 0, "cannot edit %s", p);
        edit(f);
        H5Fclose(f);
        CF_ASSERT(t_reseal(p) == 0, "cannot reseal %s", p);
    }
    size_t n;
    char *before = read_bytes(p, &n);
    loaded l;
    int rc = load_all(p, c, &l);
    free_loaded(&l);
    const char *msg = cf_error_msg();
    CHECK(rc == -1 && strstr(msg, p) && strstr(msg, want) && !strchr(msg, '\n'),
          "%s: rc %d, message \"%s\" (want one line with the path and \"%s\")", name, rc, msg, want);
    cf_config c2;
    cf_model m2;
    cf_train_state s2;
    rc = cf_ckpt_load_model(p, &c2, &m2, &s2);
    if (rc == 0) cf_model_free(&m2);
    if (weights) CHECK(rc == -1, "%s: load_model accepted it", name);
    CHECK(same_bytes(p, before, n), "%s: loading changed the file", name);
    free(before);
    printf("bad input %-14s -> %s\n", name, msg);
}

static void set_attr_string(hid_t f, const char *name, const char *v) {
    H5Adelete(f, name);
    cf_h5_write_attr_string(f, "edit", "/", name, v);
}
static void ed_format(hid_t f) { set_attr_string(f, "format", "something-else"); }
static void ed_version(hid_t f) { H5Adelete(f, "format_version"); cf_h5_write_attr_i64(f, "edit", "/", "format_version", 2); }
static void ed_missing(hid_t f) { H5Ldelete(f, "params/ln_f.bias", H5P_DEFAULT); }
static void ed_shape(hid_t f) {
    H5Ldelete(f, "params/ln_f.bias", H5P_DEFAULT);
    float z[3] = {0};
    cf_h5_write_f32(f, "edit", "params/ln_f.bias", z, 1, (int64_t[]){3});
}
static void ed_type(hid_t f) {
    int nd;
    int64_t sh[4];
    cf_h5_shape(f, "params/ln_f.bias", &nd, sh);
    H5Ldelete(f, "params/ln_f.bias", H5P_DEFAULT);
    double z[1024] = {0};
    cf_h5_write_f64(f, "edit", "params/ln_f.bias", z, sh[0]);
}
static void ed_nan(hid_t f) {
    hid_t d = H5Dopen2(f, "params/blocks.0.mlp.fc.weight", H5P_DEFAULT);
    hid_t s = H5Dget_space(d);
    hsize_t start[2] = {1, 2}, count[2] = {1, 1};
    H5Sselect_hyperslab(s, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t ms = H5Screate_simple(1, (hsize_t[]){1}, NULL);
    float v = NAN;
    H5Dwrite(d, H5T_NATIVE_FLOAT, ms, s, H5P_DEFAULT, &v);
    H5Sclose(ms); H5Sclose(s); H5Dclose(d);
}
static void ed_extra(hid_t f) { float z[4] = {0}; cf_h5_write_f32(f, "edit", "params/extra.weight", z, 1, (int64_t[]){4}); }
static void ed_state(hid_t f) { H5Ldelete(f, "state/next_batch", H5P_DEFAULT); }
static void ed_attn(hid_t f) { cf_h5_create_group(f, "edit", "state/attention/layer.0"); }
static void ed_moment(hid_t f) { H5Ldelete(f, "optimizer/v/tok_emb.weight", H5P_DEFAULT); }

static void test_bad_input(const char *good_run) {
    cf_config c;
    make_config(&c, (const char *[]){"train.sampling=\"random\"", "model.dropout=0.1"}, 2);
    char good[400], p[400];
    path_of(good, sizeof good, good_run, "ckpt/latest.h5");
    path_of(p, sizeof p, root, "bad");
    mkdir(p, 0755);

    snprintf(p, sizeof p, "%s/bad/text.h5", root);
    write_bytes(p, "not a checkpoint\n", 17);
    loaded l;
    int rc = load_all(p, &c, &l);
    free_loaded(&l);
    CHECK(rc == -1 && strstr(cf_error_msg(), "not an HDF5 file"), "text file: %s", cf_error_msg());
    printf("bad input %-14s -> %s\n", "not HDF5", cf_error_msg());
    snprintf(p, sizeof p, "%s/bad/nonexistent.h5", root);
    CHECK(load_all(p, &c, &l) == -1 && strstr(cf_error_msg(), "No such file"), "missing file: %s", cf_error_msg());
    free_loaded(&l);

    /* truncated: cut at half and at 100 bytes */
    size_t n;
    char *b = read_bytes(good, &n);
    snprintf(p, sizeof p, "%s/bad/half.h5", root);
    write_bytes(p, b, n / 2);
    CHECK(load_all(p, &c, &l) == -1 && strstr(cf_error_msg(), p), "truncated to half: %s", cf_error_msg());
    free_loaded(&l);
    printf("bad input %-14s -> %s\n", "truncated", cf_error_msg());
    write_bytes(p, b, 100);
    CHECK(load_all(p, &c, &l) == -1 && strstr(cf_error_msg(), p), "truncated to 100 bytes: %s", cf_error_msg());
    free_loaded(&l);
    free(b);

    bad_load(good, &c, "format", ed_format, "not a cformer checkpoint", 1);
    bad_load(good, &c, "version", ed_version, "format_version 2", 1);
    bad_load(good, &c, "missing", ed_missing, "/params/ln_f.bias: missing", 1);
    bad_load(good, &c, "shape", ed_shape, "/params/ln_f.bias: shape (3)", 1);
    bad_load(good, &c, "type", ed_type, "wrong type", 1);
    bad_load(good, &c, "nan", ed_nan, "/params/blocks.0.mlp.fc.weight: element 34 is NaN", 1);
    bad_load(good, &c, "extra", ed_extra, "/params/extra.weight: in the checkpoint but not in the model", 1);
    bad_load(good, &c, "state", ed_state, "/state/next_batch", 1);
    bad_load(good, &c, "attention", ed_attn, "/state/attention/layer.0", 1);
    bad_load(good, &c, "moment", ed_moment, "/optimizer/v/tok_emb.weight: missing", 0);

    /* a run directory without a checkpoint: error, and nothing created in it */
    char e[300];
    path_of(e, sizeof e, root, "empty-run");
    mkdir(e, 0755);
    int st = train_child(&c, NULL, e, 0, NULL, NULL);
    CHECK(EXITED(st, 2) && strstr(child_output(), "has no checkpoint"), "resume from an empty dir: %s", child_output());
    char *snap = snapshot(e);
    CHECK(!strchr(strchr(snap, '\n') + 1, '\n'), "resume from an empty dir created files: %s", snap);
    free(snap);

    /* resume with a damaged latest.h5, a changed model shape or activation: the run dir is untouched */
    char r[300];
    path_of(r, sizeof r, root, "shape-run");
    st = train_child(&c, r, NULL, 2, NULL, NULL);
    CHECK(EXITED(st, 0), "setup run: %s", child_output());
    struct { const char *set, *want; } changes[] = {
        {"model.d_ff=96", "/params/blocks.0.mlp.fc.weight: shape (64, 32) in the checkpoint, (96, 32) in the model"},
        {"model.n_layers=3", "/params/blocks.2.ln1.weight: missing"},
        {"model.activation=\"relu\"", "model.activation: \"gelu\" -> \"relu\""},
        {"train.optimizer=\"lion\"", "optimizer \"adamw\", the run's train.optimizer is \"lion\""},
    };
    for (size_t i = 0; i < sizeof changes / sizeof *changes; i++) {
        cf_config c3;
        const char *ov[] = {"train.sampling=\"random\"", "model.dropout=0.1", changes[i].set};
        make_config(&c3, ov, 3);
        snap = snapshot(r);
        st = train_child(&c3, NULL, r, 0, NULL, NULL);
        CHECK(EXITED(st, 2) && strstr(child_output(), changes[i].want), "resume with %s: status %d: %s",
              changes[i].set, st, child_output());
        char *after = snapshot(r);
        CHECK(!strcmp(snap, after), "resume with %s changed the run directory", changes[i].set);
        printf("resume with %-24s -> %s", changes[i].set, child_output());
        free(snap);
        free(after);
    }
    /* dropout may change on resume; training keys too, and they are reported */
    {
        cf_config c4;
        make_config(&c4, (const char *[]){"train.sampling=\"random\"", "model.dropout=0.0", "train.steps=5"}, 3);
        st = train_child(&c4, NULL, r, 0, NULL, NULL);
        CHECK(EXITED(st, 0) && strstr(child_output(), "changed keys: ") && strstr(child_output(), "train.steps: 8 -> 5") &&
              strstr(child_output(), "model.dropout: 0.1 -> 0"), "resume with changed training keys: %s", child_output());
        char lp[400];
        path_of(lp, sizeof lp, r, "ckpt/latest.h5");
        CHECK(ckpt_step(lp, &c4) == 5, "resume with train.steps=5 did not end at step 5");
        /* a finished run: nothing to train is an error, not a silent success */
        st = train_child(&c4, NULL, r, 0, NULL, NULL);
        CHECK(EXITED(st, 2) && strstr(child_output(), "nothing to train"), "resume of a finished run: %s", child_output());
    }
    {
        char lp[400];
        path_of(lp, sizeof lp, r, "ckpt/latest.h5");
        size_t m;
        char *good_bytes = read_bytes(lp, &m);
        write_bytes(lp, good_bytes, m / 3);
        snap = snapshot(r);
        cf_config c5;
        make_config(&c5, (const char *[]){"train.steps=9"}, 1);
        st = train_child(&c5, NULL, r, 0, NULL, NULL);
        CHECK(EXITED(st, 2) && strstr(child_output(), lp), "resume from a truncated latest.h5: %s", child_output());
        char *after = snapshot(r);
        CHECK(!strcmp(snap, after), "a failed resume changed the run directory");
        free(snap);
        free(after);
        write_bytes(lp, good_bytes, m);
        free(good_bytes);
    }

    /* an output directory that cannot be created */
    char f[300], out[400];
    path_of(f, sizeof f, root, "a-file");
    write_bytes(f, "x", 1);
    path_of(out, sizeof out, f, "run");
    st = train_child(&c, out, NULL, 0, NULL, NULL);
    CHECK(EXITED(st, 2) && strstr(child_output(), "cannot create or write the run directory"), "unwritable --out: %s",
          child_output());
    if (geteuid() != 0) {   /* root writes anywhere: a read-only directory only stops others */
        char ro[300];
        path_of(ro, sizeof ro, root, "read-only");
        mkdir(ro, 0555);
        path_of(out, sizeof out, ro, "run");
        st = train_child(&c, out, NULL, 0, NULL, NULL);
        CHECK(EXITED(st, 2), "read-only --out parent: %s", child_output());
    }

    /* a full disk during a save: the old checkpoint survives bitwise, no temporary file remains */
    char d[300], ck[400];
    path_of(d, sizeof d, root, "full");
    mkdir(d, 0755);
    path_of(ck, sizeof ck, d, "ckpt.h5");
    copy_file(good, ck);
    char *orig = read_bytes(ck, &n);
    loaded g;
    CHECK(load_all(ck, &c, &g) == 0, "%s", cf_error_msg());
    g.s.step += 1;
    g.m.params.values[0] += 1;
    setenv("CF_CKPT_FAIL_WRITE", "20", 1);
    rc = cf_ckpt_save(ck, &c, &g.m, &g.o, &g.s);
    unsetenv("CF_CKPT_FAIL_WRITE");
    CHECK(rc == -1 && strstr(cf_error_msg(), "No space left") && strstr(cf_error_msg(), ck), "CF_CKPT_FAIL_WRITE: %s",
          cf_error_msg());
    printf("full disk (injected)   -> %s\n", cf_error_msg());
    CHECK(same_bytes(ck, orig, n) && count_temps(d) == 0, "a failed save changed the checkpoint or left a temp file");
    /* the real thing: a file size limit, as a full disk fails write(2) */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &(struct rlimit){64 << 10, 64 << 10});
        int rc2 = cf_ckpt_save(ck, &c, &g.m, &g.o, &g.s);
        printf("RLIMIT_FSIZE save      -> %s\n", rc2 ? cf_error_msg() : "succeeded");
        fflush(stdout);
        _exit(rc2 == -1 ? 0 : 1);
    }
    waitpid(pid, &st, 0);
    CHECK(EXITED(st, 0), "a save beyond RLIMIT_FSIZE did not fail cleanly (status %d)", st);
    CHECK(same_bytes(ck, orig, n) && count_temps(d) == 0, "RLIMIT_FSIZE: the checkpoint changed or a temp file remains");
    free_loaded(&g);
    free(orig);

    /* the same through the trainer: it stops with the error, the run's last checkpoint is intact */
    char fr[300], lp[400];
    path_of(fr, sizeof fr, root, "full-run");
    st = train_child(&c, fr, NULL, 2, NULL, NULL);
    path_of(lp, sizeof lp, fr, "ckpt/latest.h5");
    orig = read_bytes(lp, &n);
    st = train_child(&c, NULL, fr, 0, "CF_CKPT_FAIL_WRITE", "30");
    CHECK(EXITED(st, 2) && strstr(child_output(), "No space left"), "trainer on a full disk: %s", child_output());
    path_of(p, sizeof p, fr, "ckpt");
    CHECK(orig && same_bytes(lp, orig, n) && count_temps(p) == 0, "trainer on a full disk damaged latest.h5");
    free(orig);

    /* NaN loss: stop, and do not save over the last good checkpoint */
    orig = read_bytes(lp, &n);
    cf_config cn;
    make_config(&cn, (const char *[]){"train.lr=1e30", "train.checkpoint_every=100"}, 2);
    st = train_child(&cn, NULL, fr, 0, NULL, NULL);
    CHECK(EXITED(st, 2) && (strstr(child_output(), "NaN") || strstr(child_output(), "infinite")) &&
          strstr(child_output(), "is kept"), "NaN loss: status %d: %s", st, child_output());
    CHECK(orig && same_bytes(lp, orig, n), "NaN loss: latest.h5 was replaced");
    path_of(p, sizeof p, fr, "ckpt/step_8.h5");
    CHECK(!exists(p), "NaN loss: a final checkpoint was written");
    printf("NaN loss               -> %s", child_output());
    free(orig);
}

int main(void) {
    child_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    cf_h5_quiet();
    snprintf(root, sizeof root, "/tmp/cf_test_ckpt_XXXXXX");
    CF_ASSERT(mkdtemp(root), "mkdtemp: %s", strerror(errno));
    path_of(err_path, sizeof err_path, root, "child.out");
    char tr[300], va[300];
    path_of(tr, sizeof tr, root, "train.bin");
    path_of(va, sizeof va, root, "valid.bin");
    make_text(tr, 16384, 1);
    make_text(va, 1024, 2);
    /* a tiny model: 8 steps of 2 x 32 bytes, validation every 4 steps, checkpoints every 2, keep 2 */
    snprintf(base_json, sizeof base_json,
             "{\"model\": {\"d_model\": 32, \"n_layers\": 2, \"n_heads\": 2, \"d_ff\": 64, \"max_seq_len\": 32},"
             " \"train\": {\"batch_size\": 2, \"seq_len\": 32, \"steps\": 8, \"lr\": 3e-3, \"min_lr\": 3e-4,"
             " \"warmup_steps\": 2, \"log_every\": 1, \"eval_every\": 4, \"eval_tokens\": 512,"
             " \"checkpoint_every\": 2, \"keep_checkpoints\": 2},"
             " \"data\": {\"train\": \"%s\", \"valid\": \"%s\"}}", tr, va);

    test_roundtrip();
    const char *random_over[] = {"train.sampling=\"random\"", "model.dropout=0.1"};
    const char *ordered_over[] = {"train.sampling=\"ordered\"", "model.dropout=0.1", "train.grad_accum=2"};
    test_exact_resume("random", random_over, 2);
    test_exact_resume("ordered", ordered_over, 3);
    /* recurrent attention: the state in /state/attention carries the streams across the resume */
    const char *xl_over[] = {"train.sampling=\"ordered\"", "model.dropout=0.1", "train.grad_accum=2",
                             "model.attention={\"type\":\"xl\",\"mem_len\":24}"};
    const char *inf_over[] = {"train.sampling=\"ordered\"", "model.dropout=0.1",
                              "model.attention={\"type\":\"infini\",\"segment_len\":8,\"update\":\"delta\"}"};
    const char *mix_over[] = {"train.sampling=\"ordered\"", "model.dropout=0.1", "train.grad_checkpoint=\"blocks\"",
                              "model.attention=[{\"type\":\"infini\",\"segment_len\":16},{\"type\":\"xl\",\"mem_len\":32}]"};
    test_exact_resume("xl", xl_over, 4);
    test_exact_resume("infini", inf_over, 3);
    test_exact_resume("infini+xl", mix_over, 4);
    test_rec_state_saved(xl_over, inf_over);
    /* Lion at its customary betas and a third of the AdamW runs' lr */
    const char *lion_over[] = {"train.sampling=\"random\"", "model.dropout=0.1", "train.optimizer=\"lion\"",
                               "train.lr=1e-3", "train.min_lr=1e-4", "train.beta2=0.99"};
    test_exact_resume("lion", lion_over, 6);
    test_lion_run(lion_over, 6);
    /* the block options (their parameters q_norm, k_norm, mlp.up and the narrower qkv), trained past
     * max_seq_len, which rope and alibi allow */
    const char *llama_over[] = {"train.sampling=\"random\"", "model.dropout=0.1", "model.norm=\"rmsnorm\"",
                                "model.position=\"rope\"", "model.activation=\"silu\"", "model.glu=true",
                                "model.bias=false", "model.n_kv_heads=1", "model.qk_norm=true", "train.seq_len=48"};
    const char *alibi_over[] = {"train.sampling=\"random\"", "model.dropout=0.1", "model.position=\"alibi\"",
                                "model.attention={\"type\":\"window\",\"window\":8}", "train.grad_checkpoint=\"blocks\""};
    test_exact_resume("llama", llama_over, 10);
    test_exact_resume("alibi", alibi_over, 5);
    cf_config c;
    make_config(&c, random_over, 2);
    char straight[300];
    path_of(straight, sizeof straight, root, "random-straight");
    test_unnamed_optimizer(straight);
    test_kill_mid_write(&c, straight);
    test_signals();
    test_bad_input(straight);

    if (t_failed == 0) nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    else printf("scratch directory kept for inspection: %s\n", root);
    TEST_MAIN_END();
}
