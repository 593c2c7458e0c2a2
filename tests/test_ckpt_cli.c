/* The checkpoint commands of the cformer binary (docs/architecture.md section 10): train --until / --resume,
 * info, eval, sample on checkpoints; exit status 2 with one line on stderr for bad input (and
 * nothing written); SIGINT stops training with status 130 after a checkpoint.
 *
 * The binary is the one built beside this test (BUILD/cformer, made by `make all`, which
 * `make test` runs first). Everything lives in a fresh directory under /tmp. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "cli.h"

static char root[256], bin[1024], cfg[300], valid[300], out_path[300], err_path[300];

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CF_ASSERT(f && fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

static int exists(const char *p) { struct stat st; return stat(p, &st) == 0; }

/* a whole file (binary), malloc'd; *n its size */
static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    CF_ASSERT(f, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = cf_xmalloc(*n ? *n : 1);
    CF_ASSERT(fread(b, 1, *n, f) == *n, "cannot read %s", path);
    fclose(f);
    return b;
}

static pid_t spawn(const char *const *args) { return t_spawn(args); }
static int run(const char *const *args) { return t_run(args); }
static void expect_bad(const char *what, const char *const *args, const char *want) { t_expect_bad(what, args, want, 0); }

/* Bit flips across a checkpoint: every one is refused before HDF5 parses the file (in process, so
 * a crash would end the test), and a few through every loading command, each with one line. */
static void flips(const char *ckpt) {
    size_t n;
    char *orig = read_file(ckpt, &n), flip_path[300];
    snprintf(flip_path, sizeof flip_path, "%s/flip.h5", root);
    int refused = 0, total = 0;
    cf_rng r;
    cf_rng_seed(&r, 7);
    for (int i = 0; i < 400; i++) {
        /* 100 offsets spread evenly over the file, then random ones */
        size_t off = i < 100 ? (size_t)i * (n / 100) : (size_t)(cf_rng_next(&r) % n);
        char bit = (char)(1 << (cf_rng_next(&r) % 8));
        orig[off] ^= bit;
        write_bytes(flip_path, orig, n);
        orig[off] ^= bit;
        cf_config c;
        cf_model m;
        int rc = cf_ckpt_load_model(flip_path, &c, &m, NULL);
        if (rc == 0) cf_model_free(&m);
        refused += rc == -1 && strstr(cf_error_msg(), flip_path) && !strchr(cf_error_msg(), '\n');
        total++;
    }
    CHECK(refused == total, "bit flips: %d of %d refused", refused, total);
    printf("bit flips: %d of %d refused with one line\n", refused, total);
    orig[n / 2] ^= 4;
    write_bytes(flip_path, orig, n);
    expect_bad("info flipped bit", (const char *[]){"info", flip_path, NULL}, "damaged");
    expect_bad("eval flipped bit", (const char *[]){"eval", flip_path, "--data", valid, NULL}, "damaged");
    expect_bad("sample flipped bit", (const char *[]){"sample", flip_path, NULL}, "damaged");
    expect_bad("info --verify flipped", (const char *[]){"info", "--verify", flip_path, NULL}, "damaged");
    int rc = run((const char *[]){"info", "--verify", ckpt, NULL});
    char *out = t_read_text(out_path);
    CHECK(rc == 0 && strstr(out, "checksums match"), "info --verify: status %d: %s", rc, out);
    free(out);
    free(orig);
}

/* A full disk: a small tmpfs when this runs as root and may mount one, else the write-failure hook
 * (CF_CKPT_FAIL_DISK) that fails the checkpoint's real write as ENOSPC does: exit 2, one line, no
 * temporary file left, no crash at exit. */
static void full_disk(void) {
    char mnt[300], run_dir[400];
    snprintf(mnt, sizeof mnt, "%s/small", root);
    mkdir(mnt, 0755);
    char cmd[500];
    int mounted = 0;
    if (geteuid() == 0) {
        snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=200k tmpfs %s 2>/dev/null", mnt);
        mounted = system(cmd) == 0;
    }
    snprintf(run_dir, sizeof run_dir, "%s/run", mnt);
    if (!mounted) setenv("CF_CKPT_FAIL_DISK", "1", 1);
    /* the run's opening line, then the error: the save fails, the run stops */
    int rc = run((const char *[]){"train", cfg, "--out", run_dir, "--quiet", NULL});
    char *err = t_read_text(err_path), *last = strstr(err, "\ncformer: ");
    CHECK(rc == 2 && t_count_lines(err) == 2 && last && strstr(last, "No space left on device"),
          "full disk (%s): status %d, stderr \"%s\" (want exit 2 and one error line)", mounted ? "tmpfs" : "hook", rc, err);
    printf("full disk (%s) -> exit %d:%s", mounted ? "tmpfs" : "hook", rc, last ? last : err);
    free(err);
    unsetenv("CF_CKPT_FAIL_DISK");
    snprintf(cmd, sizeof cmd, "ls -a %s/ckpt | grep -c tmp >/dev/null", run_dir);
    CHECK(system(cmd) != 0, "a temporary checkpoint file is left behind");
    if (mounted) {
        snprintf(cmd, sizeof cmd, "umount %s", mnt);
        CHECK(system(cmd) == 0, "cannot unmount %s", mnt);
    }
}

/* inputs that must be refused at once, with one line: a FIFO as data or config, a directory as
 * data, models too large for memory, a vocabulary the data does not fit */
static void hostile_inputs(void) {
    char fifo[300], set[400];
    snprintf(fifo, sizeof fifo, "%s/fifo", root);
    CF_ASSERT(mkfifo(fifo, 0644) == 0, "mkfifo: %s", strerror(errno));
    snprintf(set, sizeof set, "data.train=%s", fifo);
    expect_bad("FIFO as data", (const char *[]){"train", cfg, "--set", set, NULL}, "a FIFO");
    expect_bad("FIFO as config", (const char *[]){"train", fifo, NULL}, "a FIFO");
    expect_bad("FIFO as checkpoint", (const char *[]){"info", fifo, NULL}, "not a regular file");
    snprintf(set, sizeof set, "data.train=%s", root);
    expect_bad("directory as data", (const char *[]){"train", cfg, "--set", set, NULL}, "a directory");
    expect_bad("huge d_model", (const char *[]){"train", cfg, "--set", "model.d_model=1048576", NULL}, "choose a smaller model");
    expect_bad("huge n_layers", (const char *[]){"train", cfg, "--set", "model.n_layers=1048576", NULL}, "choose a smaller model");
    expect_bad("vocab 2", (const char *[]){"train", cfg, "--set", "model.vocab_size=2", NULL}, "is not a token of model.vocab_size 2");
    expect_bad("threads 5000", (const char *[]){"train", cfg, "--threads", "5000", NULL}, "--threads");
    expect_bad("sample --tokens -1", (const char *[]){"sample", "x.h5", "--tokens", "-1", NULL}, "--tokens");
}

/* Crafted files behind valid checksums: resealed with cf_ckpt_seal, the datatype of the "format"
 * attribute says 2 bytes where its variable-length string takes 16, which libhdf5 1.10 would read past
 * the end of, and /config's layout says compact with no bytes (both found by tests/fuzz/); and a header
 * whose own checksum matches but whose chunk size is 0. */
/* Into path: the checkpoint with the byte `at` of the first match of pat[len] after the integrity
 * header set to v (a '.' of pat matches any byte), resealed with cf_ckpt_seal; 0 when nothing matches. */
static int crafted_file(const char *ckpt, const char *path, const char *pat, size_t len, size_t at, char v) {
    size_t n, k = 0;
    char *img = read_file(ckpt, &n), *hit = NULL;
    for (size_t i = CF_CKPT_USERBLOCK; !hit && i + len <= n; i++) {
        for (k = 0; k < len && (pat[k] == '.' || pat[k] == img[i + k]); k++) {}
        if (k == len) hit = img + i;
    }
    if (hit) {
        hit[at] = v;
        cf_ckpt_seal((uint8_t *)img, (uint8_t *)img + CF_CKPT_USERBLOCK, n - CF_CKPT_USERBLOCK);
        write_bytes(path, img, n);
    }
    free(img);
    return hit != NULL;
}

static void crafted(const char *ckpt) {
    char path[300];
    snprintf(path, sizeof path, "%s/crafted.h5", root);
    /* the attribute message's name, then its datatype: version 1, class 9 (variable-length), a string,
     * size 16, which becomes 2 */
    int found = crafted_file(ckpt, path, "format\0\0\x19\x01\x01\x00\x10\x00\x00\x00", 16, 12, 2);
    CHECK(found, "the \"format\" attribute's datatype is not where this test looks for it");
    if (found)
        expect_bad("info crafted attribute", (const char *[]){"info", path, NULL}, "attribute format of / is damaged");
    /* the first contiguous layout message of 16 bytes (that of /config, the first dataset written) made
     * version 2, which libhdf5 1.10 reads as a compact layout of 0 bytes and would copy from NULL */
    found = crafted_file(ckpt, path, "\x08\x00\x18\x00\x00\x00\x00\x00\x03\x01........\x10\0\0\0\0\0\0\0", 26, 8, 2);
    CHECK(found, "the layout message of /config is not where this test looks for it");
    if (found) expect_bad("info crafted layout", (const char *[]){"info", path, NULL}, "/config is damaged");
    /* an integrity header with a valid checksum and a chunk size of 0 */
    size_t n;
    char *img = read_file(ckpt, &n);
    uint8_t *h = (uint8_t *)img;
    memset(h + 48, 0, 4);
    memset(h + 36, 0, 4);
    uint32_t crc = cf_crc32c(0, h, CF_CKPT_USERBLOCK);
    for (int i = 0; i < 4; i++) h[36 + i] = (uint8_t)(crc >> 8 * i);
    write_bytes(path, img, n);
    expect_bad("info crafted header", (const char *[]){"info", path, NULL}, "integrity header (bytes 0..4095) is inconsistent");
    free(img);
}

static void faults(const char *ckpt) {
    flips(ckpt);
    crafted(ckpt);
    full_disk();
    hostile_inputs();
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

int main(int argc, char **argv) {
    (void)argc;
    char self[1024];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(bin, sizeof bin, "%s/../cformer", dirname(self));   /* BUILD/tests/x -> BUILD/cformer */
    if (access(bin, X_OK)) {
        CHECK(0, "%s is not built: run `make BUILD=<dir>` (make test does) before this test", bin);
        TEST_MAIN_END();
    }
    snprintf(root, sizeof root, "/tmp/cf_test_ckpt_cli_XXXXXX");
    CF_ASSERT(mkdtemp(root), "mkdtemp: %s", strerror(errno));
    snprintf(out_path, sizeof out_path, "%s/stdout", root);
    snprintf(err_path, sizeof err_path, "%s/stderr", root);
    t_cli = (t_cli_paths){.bin = bin, .out = out_path, .err = err_path};

    /* data: a repetitive text, and a tiny config */
    char train[300], text[20000];
    for (size_t i = 0; i < sizeof text; i++) text[i] = "the cat sat on the mat. "[i % 24] ^ (char)(i % 97 == 0);
    snprintf(train, sizeof train, "%s/train.bin", root);
    snprintf(valid, sizeof valid, "%s/valid.bin", root);
    write_bytes(train, text, sizeof text);
    write_bytes(valid, text + 1000, 2000);
    snprintf(cfg, sizeof cfg, "%s/tiny.json", root);
    char json[1024];
    int n = snprintf(json, sizeof json,
                     "{\"model\": {\"d_model\": 32, \"n_layers\": 2, \"n_heads\": 2, \"d_ff\": 64, \"max_seq_len\": 32},"
                     " \"train\": {\"batch_size\": 2, \"seq_len\": 32, \"steps\": 8, \"lr\": 3e-3, \"warmup_steps\": 2,"
                     " \"min_lr\": 3e-4, \"log_every\": 1, \"eval_every\": 0, \"checkpoint_every\": 2},"
                     " \"data\": {\"train\": \"%s\", \"valid\": \"%s\"}}", train, valid);
    write_bytes(cfg, json, (size_t)n);

    char rdir[300], ckpt[400];
    snprintf(rdir, sizeof rdir, "%s/run", root);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/latest.h5", rdir);
    int rc = run((const char *[]){"train", cfg, "--out", rdir, "--until", "4", "--quiet", NULL});
    CHECK(rc == 0 && exists(ckpt), "train --until 4: status %d: %s", rc, t_read_text(err_path));
    rc = run((const char *[]){"train", cfg, "--resume", rdir, "--quiet", NULL});
    char *err = t_read_text(err_path);
    CHECK(rc == 0 && strstr(err, "resuming from") && strstr(err, "at step 4"), "train --resume: status %d: %s", rc, err);
    free(err);

    rc = run((const char *[]){"info", ckpt, NULL});
    char *out = t_read_text(out_path);
    CHECK(rc == 0 && strstr(out, "step         8 of 8") && strstr(out, "tokens seen  512") &&
          strstr(out, "blocks.1.mlp.fc.weight") && strstr(out, "  total") && strstr(out, "\"d_model\": 32"),
          "info: status %d: %s", rc, out);
    free(out);

    rc = run((const char *[]){"eval", ckpt, "--data", valid, NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && !strncmp(out, "BENCH eval bpb=", 15) && strstr(out, "bytes=1999 ctx=32 stride=16 tokens_per_s="),
          "eval: status %d: %s", rc, out);
    printf("eval: %s", out);
    free(out);
    rc = run((const char *[]){"eval", ckpt, "--data", valid, "--ctx", "16", "--stride", "4", NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && strstr(out, "ctx=16 stride=4"), "eval --ctx 16 --stride 4: status %d: %s", rc, out);
    free(out);

    const char *sample[] = {"sample", ckpt, "--prompt", "the ", "--tokens", "20", "--temperature", "0.8", "--top-k",
                            "10", "--seed", "3", NULL};
    rc = run(sample);
    char *s1 = t_read_text(out_path);
    rc |= run(sample);
    char *s2 = t_read_text(out_path);
    CHECK(rc == 0 && strlen(s1) == 4 + 20 + 1 && !strncmp(s1, "the ", 4) && !strcmp(s1, s2),
          "sample: status %d, \"%s\" then \"%s\"", rc, s1, s2);
    free(s1);
    free(s2);

    /* bad input: exit 2, one line, nothing written */
    char bad[300], trunc[300], empty[300], file[300], under[400];
    snprintf(bad, sizeof bad, "%s/text.h5", root);
    write_bytes(bad, "hello\n", 6);
    snprintf(trunc, sizeof trunc, "%s/trunc.h5", root);
    char *full = t_read_text(ckpt);
    write_bytes(trunc, full, 600);
    free(full);
    snprintf(empty, sizeof empty, "%s/empty-run", root);
    mkdir(empty, 0755);
    snprintf(file, sizeof file, "%s/a-file", root);
    write_bytes(file, "x", 1);
    snprintf(under, sizeof under, "%s/run", file);
    expect_bad("info text file", (const char *[]){"info", bad, NULL}, "not an HDF5 file");
    expect_bad("info missing file", (const char *[]){"info", "/nonexistent/x.h5", NULL}, "No such file");
    expect_bad("info truncated", (const char *[]){"info", trunc, NULL}, trunc);
    expect_bad("info no argument", (const char *[]){"info", NULL}, "missing CKPT.h5");
    expect_bad("eval without --data", (const char *[]){"eval", ckpt, NULL}, "missing --data");
    expect_bad("eval --ctx too long", (const char *[]){"eval", ckpt, "--data", valid, "--ctx", "64", NULL}, "max_seq_len");
    expect_bad("eval missing data", (const char *[]){"eval", ckpt, "--data", "/nonexistent.bin", NULL}, "/nonexistent.bin");
    expect_bad("sample --tokens 0", (const char *[]){"sample", ckpt, "--tokens", "0", NULL}, "--tokens");
    expect_bad("sample text file", (const char *[]){"sample", bad, NULL}, "not an HDF5 file");
    expect_bad("resume empty dir", (const char *[]){"train", cfg, "--resume", empty, NULL}, "has no checkpoint");
    CHECK(rmdir(empty) == 0, "resume from an empty run directory wrote into it");
    expect_bad("resume text file", (const char *[]){"train", cfg, "--resume", bad, NULL}, "not an HDF5 file");
    expect_bad("resume finished run", (const char *[]){"train", cfg, "--resume", rdir, NULL}, "nothing to train");
    expect_bad("resume other shape", (const char *[]){"train", cfg, "--resume", rdir, "--set", "model.d_model=64", NULL},
               "/params/tok_emb.weight: shape (256, 32) in the checkpoint, (256, 64) in the model");
    expect_bad("resume other optimizer",
               (const char *[]){"train", cfg, "--resume", rdir, "--set", "train.optimizer=\"lion\"", NULL},
               "the checkpoint holds the state of optimizer \"adamw\", the run's train.optimizer is \"lion\"");
    expect_bad("unwritable --out", (const char *[]){"train", cfg, "--out", under, NULL}, "cannot create");
    CHECK(!exists(under), "a run directory appeared under a file");

    faults(ckpt);

    /* SIGINT: finish the step, checkpoint, exit 130, say where */
    char srun[300], slog[400], slatest[400];
    snprintf(srun, sizeof srun, "%s/sigint", root);
    snprintf(slog, sizeof slog, "%s/log.jsonl", srun);
    snprintf(slatest, sizeof slatest, "%s/ckpt/latest.h5", srun);
    pid_t p = spawn((const char *[]){"train", cfg, "--out", srun, "--quiet", "--set", "train.steps=1000000", "--set",
                                     "train.checkpoint_every=0", NULL});
    int started = 0;
    for (int i = 0; i < 6000 && !started; i++) {
        char *log = t_read_text(slog);
        started = t_count_lines(log) >= 2;
        free(log);
        if (!started) nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    CHECK(started, "train did not start");
    kill(p, SIGINT);
    int st;
    waitpid(p, &st, 0);
    err = t_read_text(err_path);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 130 && strstr(err, "SIGINT") && strstr(err, "--resume"),
          "SIGINT: status %d: %s", st, err);
    printf("SIGINT -> exit %d: %s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, strstr(err, "cformer: SIGINT") ? strstr(err, "cformer: SIGINT") : err);
    free(err);
    rc = run((const char *[]){"info", slatest, NULL});
    CHECK(rc == 0, "info on the SIGINT checkpoint: status %d: %s", rc, t_read_text(err_path));

    if (t_failed == 0) nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    else printf("scratch directory kept for inspection: %s\n", root);
    TEST_MAIN_END();
}
