/* cformer sample and the cached paths of cformer eval, through the binary: greedy bytes through the
 * cache equal those of the uncached sampler (past max_seq_len too, with --slide 1), --n, --stop,
 * --prompt-file, the BENCH sample line on stderr; eval --cached equals the streamed evaluation of
 * one column for an xl model, and --reset-memory scores the same bytes without the memory; bad
 * options get exit status 2 and one line.
 *
 * The binary is the one built beside this test (BUILD/cformer, made by `make all`, which `make
 * test` runs first). Everything lives in a fresh directory under /tmp. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cli.h"

static char root[256], bin[1024], out_path[300], err_path[300];

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CF_ASSERT(f && fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

static int run(const char *const *args) { return t_run(args); }

static void expect_bad(const char *what, const char *const *args, const char *want) { t_expect_bad(what, args, want, 1); }

/* the value of key= in a BENCH line (NaN when absent) */
static double field(const char *line, const char *key) {
    const char *p = strstr(line, key);
    return p ? atof(p + strlen(key)) : NAN;
}

static void train(const char *cfg, const char *dir, const char *ckpt) {
    int rc = run((const char *[]){"train", cfg, "--out", dir, "--quiet", NULL});
    char *err = t_read_text(err_path);
    CHECK(rc == 0 && access(ckpt, R_OK) == 0, "train %s: status %d: %s", cfg, rc, err);
    free(err);
}

int main(int argc, char **argv) {
    (void)argc;
    char self[1024];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(bin, sizeof bin, "%s/../cformer", dirname(self));
    if (access(bin, X_OK)) {
        CHECK(0, "%s is not built: run `make BUILD=<dir>` (make test does) before this test", bin);
        TEST_MAIN_END();
    }
    snprintf(root, sizeof root, "/tmp/cf_test_sample_cli_XXXXXX");
    CF_ASSERT(mkdtemp(root), "mkdtemp: %s", strerror(errno));
    snprintf(out_path, sizeof out_path, "%s/stdout", root);
    snprintf(err_path, sizeof err_path, "%s/stderr", root);
    t_cli = (t_cli_paths){.bin = bin, .out = out_path, .err = err_path};

    char train_bin[300], valid[300], text[20000];
    for (size_t i = 0; i < sizeof text; i++) text[i] = "the cat sat on the mat. a dog ran. "[i % 35] ^ (char)(i % 89 == 0);
    snprintf(train_bin, sizeof train_bin, "%s/train.bin", root);
    snprintf(valid, sizeof valid, "%s/valid.bin", root);
    write_bytes(train_bin, text, sizeof text);
    write_bytes(valid, text + 3001, 3000);
    const char *attn[2] = {"{\"type\": \"full\"}", "{\"type\": \"xl\", \"mem_len\": 16}"};
    char cfg[2][300], dir[2][300], ckpt[2][700];
    for (int k = 0; k < 2; k++) {
        snprintf(cfg[k], sizeof cfg[k], "%s/tiny%d.json", root, k);
        char json[1024];
        int n = snprintf(json, sizeof json,
                         "{\"model\": {\"d_model\": 32, \"n_layers\": 2, \"n_heads\": 2, \"d_ff\": 64, \"max_seq_len\": 32,"
                         " \"attention\": %s},"
                         " \"train\": {\"batch_size\": 4, \"seq_len\": 32, \"steps\": 120, \"lr\": 1e-2, \"warmup_steps\": 2,"
                         " \"min_lr\": 1e-3, \"log_every\": 10, \"eval_every\": 0, \"checkpoint_every\": 120},"
                         " \"data\": {\"train\": \"%s\", \"valid\": \"%s\"}, \"eval\": {\"ctx\": 16}}",
                         attn[k], train_bin, valid);
        write_bytes(cfg[k], json, (size_t)n);
        snprintf(dir[k], sizeof dir[k], "%s/run%d", root, k);
        snprintf(ckpt[k], sizeof ckpt[k], "%s/ckpt/latest.h5", dir[k]);
        train(cfg[k], dir[k], ckpt[k]);
    }
    const char *ck = ckpt[0], *xl = ckpt[1];

    /* greedy: through the cache (re-encoding every byte past the context: --slide 1) and without */
    const char *greedy[] = {"sample", ck, "--prompt", "the ", "--tokens", "80", "--temperature", "0", "--slide", "1", NULL};
    int rc = run(greedy);
    char *cached = t_read_text(out_path), *err = t_read_text(err_path);
    CHECK(rc == 0 && strlen(cached) == 4 + 80 + 1 && !strncmp(cached, "the ", 4), "sample greedy: status %d: %s", rc, cached);
    CHECK(strstr(err, "BENCH sample variant=full ctx=32 bytes=80 ") && field(err, "bytes_per_s=") > 0 &&
          field(err, "peak_rss_mb=") > 0 && field(err, "cached=") == 1 && strstr(err, "the context of 32 bytes is full"),
          "sample: stderr \"%s\"", err);
    printf("sample greedy: %s", cached);
    free(err);
    rc = run((const char *[]){"sample", ck, "--prompt", "the ", "--tokens", "80", "--temperature", "0", "--uncached", NULL});
    char *ref = t_read_text(out_path);
    CHECK(rc == 0 && !strcmp(cached, ref), "greedy bytes: cached \"%s\", uncached \"%s\"", cached, ref);
    free(ref);
    /* --precision bf16 decodes through the cache, whose products stay fp32: the fp32 bytes */
    rc = run((const char *[]){"sample", ck, "--prompt", "the ", "--tokens", "80", "--temperature", "0", "--slide", "1",
                              "--precision", "bf16", NULL});
    ref = t_read_text(out_path);
    err = t_read_text(err_path);
    CHECK(rc == 0 && !strcmp(cached, ref) && field(err, "cached=") == 1,
          "--precision bf16: cached=%g, bytes \"%s\" (fp32: \"%s\")", field(err, "cached="), ref, cached);
    free(ref);
    free(err);
    rc = run((const char *[]){"sample", ck, "--prompt", "the ", "--tokens", "80", "--temperature", "0", "--uncached",
                              "--precision", "bf16", NULL});
    ref = t_read_text(out_path);
    CHECK(rc == 0 && strlen(ref) == strlen(cached), "--precision bf16 --uncached: status %d: \"%s\"", rc, ref);
    printf("greedy, bf16 full forward: %s", ref);
    free(ref);

    /* --prompt-file gives what --prompt gives; --n repeats the prompt per sample */
    char pfile[300];
    snprintf(pfile, sizeof pfile, "%s/prompt.txt", root);
    write_bytes(pfile, "the ", 4);
    rc = run((const char *[]){"sample", ck, "--prompt-file", pfile, "--tokens", "80", "--temperature", "0", "--slide", "1",
                              NULL});
    char *viafile = t_read_text(out_path);
    CHECK(rc == 0 && !strcmp(viafile, cached), "--prompt-file: status %d: \"%s\"", rc, viafile);
    free(viafile);
    rc = run((const char *[]){"sample", ck, "--prompt", "a", "--tokens", "20", "--n", "3", "--seed", "5", NULL});
    char *three = t_read_text(out_path);
    err = t_read_text(err_path);
    CHECK(rc == 0 && strlen(three) == 3 * 22 && three[0] == 'a' && three[22] == 'a' && three[44] == 'a' &&
          three[21] == '\n' && strstr(err, "bytes=60 samples=3"), "--n 3: status %d: \"%s\" %s", rc, three, err);
    free(three);
    free(err);

    free(cached);

    /* --stop: the text ends before the first occurrence of the stop string in the new bytes (the
     * same seed draws the same bytes up to there) */
    const char *sampled[] = {"sample", ck, "--prompt", "the ", "--tokens", "80", "--seed", "9", NULL};
    rc = run(sampled);
    cached = t_read_text(out_path);
    CHECK(rc == 0 && strlen(cached) == 85, "sample --seed 9: %d \"%s\"", rc, cached);
    const char *gen = cached + 4, *stop_at = NULL;
    char stop[4] = {0};
    for (int i = 10; i + 3 <= 80 && !stop_at; i++) {
        memcpy(stop, gen + i, 3);
        const char *first = strstr(gen, stop);
        if (first && first - gen >= 5 && !strchr(stop, '\n')) stop_at = first;
        if (stop_at) printf("stop string \"%s\" first at byte %d of \"%s\"\n", stop, (int)(first - gen), gen);
    }
    CHECK(stop_at != NULL, "no stop string found in \"%s\"", gen);
    if (stop_at) {
        rc = run((const char *[]){"sample", ck, "--prompt", "the ", "--tokens", "80", "--seed", "9", "--stop", stop, NULL});
        char *stopped = t_read_text(out_path);
        err = t_read_text(err_path);
        size_t keep = (size_t)(stop_at - cached);
        CHECK(rc == 0 && strlen(stopped) == keep + 1 && !strncmp(stopped, cached, keep) && stopped[keep] == '\n',
              "--stop \"%s\": \"%s\" (want the first %zu bytes of \"%s\")", stop, stopped, keep, cached);
        CHECK(field(err, "bytes=") == (double)(keep - 4), "--stop: %s", err);
        free(stopped);
        free(err);
    }
    free(cached);

    /* xl: the cached path scores one stream as streamed evaluation does; the memory matters */
    rc = run((const char *[]){"eval", xl, "--data", valid, "--columns", "1", NULL});
    char *stream = t_read_text(out_path);
    rc |= run((const char *[]){"eval", xl, "--data", valid, "--cached", NULL});
    char *viacache = t_read_text(out_path);
    rc |= run((const char *[]){"eval", xl, "--data", valid, "--reset-memory", NULL});
    char *reset = t_read_text(out_path);
    double b1 = field(stream, "bpb="), b2 = field(viacache, "bpb="), b3 = field(reset, "bpb=");
    printf("xl eval: streamed %.6f, cached %.6f, cached with the memory reset %.6f\n", b1, b2, b3);
    CHECK(rc == 0 && fabs(b1 - b2) <= 1e-4 && strstr(viacache, "path=cached reset_memory=0") &&
          strstr(reset, "reset_memory=1") && b3 > b2, "xl eval: \"%s\" \"%s\" \"%s\"", stream, viacache, reset);
    free(stream); free(viacache); free(reset);
    rc = run((const char *[]){"sample", xl, "--prompt", "the ", "--tokens", "40", "--temperature", "0", NULL});
    char *xs = t_read_text(out_path);
    err = t_read_text(err_path);
    CHECK(rc == 0 && strlen(xs) == 45 && strstr(err, "variant=xl ctx=16 "), "sample xl: %d \"%s\" %s", rc, xs, err);
    free(xs); free(err);

    expect_bad("--top-p 0", (const char *[]){"sample", ck, "--top-p", "0", NULL}, "--top-p");
    expect_bad("--top-p 1.5", (const char *[]){"sample", ck, "--top-p", "1.5", NULL}, "--top-p");
    expect_bad("--n 0", (const char *[]){"sample", ck, "--n", "0", NULL}, "--n");
    expect_bad("--stop empty", (const char *[]){"sample", ck, "--stop", "", NULL}, "--stop");
    expect_bad("--span past positions", (const char *[]){"sample", ck, "--span", "33", NULL}, "max_seq_len");
    expect_bad("--prompt and --prompt-file", (const char *[]){"sample", ck, "--prompt", "a", "--prompt-file", pfile, NULL},
               "exclude");
    expect_bad("--prompt-file missing", (const char *[]){"sample", ck, "--prompt-file", "/nonexistent/p", NULL},
               "/nonexistent/p");
    expect_bad("unknown option", (const char *[]){"sample", ck, "--beam", "2", NULL}, "--beam");
    expect_bad("eval --columns full", (const char *[]){"eval", ck, "--data", valid, "--columns", "2", NULL}, "--columns");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    CHECK(system(cmd) == 0, "cannot remove %s", root);
    TEST_MAIN_END();
}
