/* The cformer binary with encoder-decoder models: train (BENCH line with exact match), info, eval
 * on a pair file, translate (--input, lines from stdin, --beam), bench; and bad input: exit status
 * 2 with one line on stderr that names the problem (bad escapes, a malformed pair file, vocab_size
 * below 259, ordered sampling, sample or --ctx on an encoder-decoder, translate on a decoder-only
 * model, --max-len beyond the positions).
 *
 * The binary is the one built beside this test (BUILD/cformer, made by `make all`, which `make
 * test` runs first). Everything lives in a fresh directory under /tmp. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cli.h"

static char root[256], bin[1024], out_path[300], err_path[300], in_path[300];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CF_ASSERT(f && fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", path);
}

/* run `cformer args...` with stdin_text (NULL: none) on its standard input; the exit status */
static int run_in(const char *stdin_text, const char *const *args) {
    if (stdin_text) write_text(in_path, stdin_text);
    t_cli.in = stdin_text ? in_path : NULL;
    return t_run(args);
}

static int run(const char *const *args) { return run_in(NULL, args); }

static void expect_bad_in(const char *what, const char *stdin_text, const char *const *args, const char *want) {
    if (stdin_text) write_text(in_path, stdin_text);
    t_cli.in = stdin_text ? in_path : NULL;
    t_expect_bad(what, args, want, 0);
}

static void expect_bad(const char *what, const char *const *args, const char *want) {
    expect_bad_in(what, NULL, args, want);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

static char *in_root(const char *name) {
    static char buf[8][400];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 400, "%s/%s", root, name);
    return p;
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
    snprintf(root, sizeof root, "/tmp/cf_test_encdec_cli_XXXXXX");
    CF_ASSERT(mkdtemp(root), "mkdtemp: %s", strerror(errno));
    snprintf(out_path, sizeof out_path, "%s/stdout", root);
    snprintf(err_path, sizeof err_path, "%s/stderr", root);
    snprintf(in_path, sizeof in_path, "%s/stdin", root);
    t_cli = (t_cli_paths){.bin = bin, .out = out_path, .err = err_path};

    /* a copy task and a tiny encoder-decoder */
    char train[400], valid[400], cfg[400], json[2048];
    snprintf(train, sizeof train, "%s", in_root("train.txt"));
    snprintf(valid, sizeof valid, "%s", in_root("valid.txt"));
    snprintf(cfg, sizeof cfg, "%s", in_root("ed.json"));
    write_text(train, "abc\tabc\nhello\thello\nx\\ty\tx\\ty\nlonger line here\tlonger line here\n");
    write_text(valid, "cab\tcab\nhi\thi\n");
    snprintf(json, sizeof json,
             "{\"model\": {\"arch\": \"encoder_decoder\", \"vocab_size\": 259, \"d_model\": 32, \"n_heads\": 2,"
             " \"d_ff\": 64, \"encoder\": {\"n_layers\": 1}, \"decoder\": {\"n_layers\": 1}, \"max_seq_len\": 16},"
             " \"train\": {\"batch_size\": 4, \"seq_len\": 12, \"steps\": 6, \"lr\": 3e-3, \"warmup_steps\": 2,"
             " \"log_every\": 2, \"eval_every\": 3, \"checkpoint_every\": 3},"
             " \"data\": {\"train\": \"%s\", \"valid\": \"%s\", \"test\": \"%s\"}}", train, valid, valid);
    write_text(cfg, json);

    char rdir[400], ckpt[500];
    snprintf(rdir, sizeof rdir, "%s", in_root("run"));
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/latest.h5", rdir);
    int rc = run((const char *[]){"train", cfg, "--out", rdir, "--quiet", NULL});
    char *out = t_read_text(out_path), *err = t_read_text(err_path);
    CHECK(rc == 0 && strstr(out, "BENCH eval split=valid bpb=") && strstr(out, "exact_match=") &&
          strstr(out, "pairs=2") && strstr(out, "BENCH eval split=test"),
          "train: status %d\nstdout: %s\nstderr: %s", rc, out, err);
    CHECK(strstr(err, "are cut to train.seq_len 12 tokens"), "train: no note about the cut pair: %s", err);
    printf("train: %s", out);
    free(out);
    free(err);

    rc = run((const char *[]){"info", ckpt, NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && strstr(out, "decoder.blocks.0.cross.kv.weight") && strstr(out, "encoder.blocks.0.attn.qkv.weight") &&
          strstr(out, "\"arch\": \"encoder_decoder\"") && strstr(out, "emb.weight"), "info: status %d: %s", rc, out);
    free(out);

    rc = run((const char *[]){"eval", ckpt, "--data", valid, NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && !strncmp(out, "BENCH eval bpb=", 15) && strstr(out, "exact_match=") && strstr(out, "pairs=2 tokens=7"),
          "eval: status %d: %s", rc, out);
    printf("eval: %s", out);
    free(out);

    rc = run((const char *[]){"translate", ckpt, "--input", "ab\\tc", NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && t_count_lines(out) == 1 && !strchr(out, '\t'), "translate --input: status %d: \"%s\"", rc, out);
    free(out);
    rc = run_in("abc\nhello\n\n", (const char *[]){"translate", ckpt, NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && t_count_lines(out) == 3, "translate from stdin: status %d: \"%s\"", rc, out);
    free(out);
    /* K = 1 is greedy decoding; K = 3 runs */
    rc = run((const char *[]){"translate", ckpt, "--input", "hello", NULL});
    char *greedy = t_read_text(out_path);
    rc |= run((const char *[]){"translate", ckpt, "--input", "hello", "--beam", "1", NULL});
    char *k1 = t_read_text(out_path);
    CHECK(rc == 0 && !strcmp(greedy, k1), "translate --beam 1 \"%s\" vs greedy \"%s\"", k1, greedy);
    rc = run((const char *[]){"translate", ckpt, "--input", "hello", "--beam", "3", "--max-len", "16", NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && t_count_lines(out) == 1, "translate --beam 3: status %d: \"%s\"", rc, out);
    free(out); free(greedy); free(k1);

    rc = run((const char *[]){"bench", cfg, "--steps", "2", NULL});
    out = t_read_text(out_path);
    CHECK(rc == 0 && strstr(out, "BENCH train_step config=ed "), "bench: status %d: %s", rc, out);
    free(out);

    expect_bad("translate bad escape", (const char *[]){"translate", ckpt, "--input", "a\\q", NULL}, "bad escape");
    expect_bad_in("translate stdin escape", "fine\nbad\\\n", (const char *[]){"translate", ckpt, NULL}, "stdin line 2");
    expect_bad("translate --max-len", (const char *[]){"translate", ckpt, "--max-len", "17", NULL}, "max_seq_len 16");
    expect_bad("sample on encdec", (const char *[]){"sample", ckpt, NULL}, "cformer translate");
    expect_bad("eval --ctx on encdec", (const char *[]){"eval", ckpt, "--data", valid, "--ctx", "8", NULL}, "--ctx");
    expect_bad("train vocab 256", (const char *[]){"train", cfg, "--out", in_root("r2"), "--set", "model.vocab_size=256", NULL},
               "model.vocab_size: must be at least 259");
    expect_bad("train ordered", (const char *[]){"train", cfg, "--out", in_root("r3"), "--set", "train.sampling=ordered", NULL},
               "train.sampling");
    write_text(in_root("broken.txt"), "ok\tfine\nno tab here\n");
    char dset[500];
    snprintf(dset, sizeof dset, "data.train=%s", in_root("broken.txt"));
    expect_bad("train broken pairs", (const char *[]){"train", cfg, "--out", in_root("r4"), "--set", dset, NULL},
               "broken.txt:2: no TAB");

    /* translate on a decoder-only checkpoint */
    char dcfg[400], djson[1024], dbin[400];
    snprintf(dcfg, sizeof dcfg, "%s", in_root("dec.json"));
    snprintf(dbin, sizeof dbin, "%s", in_root("bytes.bin"));
    write_text(dbin, "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat.");
    snprintf(djson, sizeof djson,
             "{\"model\": {\"d_model\": 16, \"n_layers\": 1, \"n_heads\": 2, \"max_seq_len\": 16},"
             " \"train\": {\"batch_size\": 2, \"seq_len\": 16, \"steps\": 1, \"eval_every\": 0},"
             " \"data\": {\"train\": \"%s\"}}", dbin);
    write_text(dcfg, djson);
    char ddir[400], dckpt[500];
    snprintf(ddir, sizeof ddir, "%s", in_root("drun"));
    snprintf(dckpt, sizeof dckpt, "%s/ckpt/latest.h5", ddir);
    rc = run((const char *[]){"train", dcfg, "--out", ddir, "--quiet", NULL});
    CHECK(rc == 0, "decoder train: status %d", rc);
    expect_bad("translate on decoder", (const char *[]){"translate", dckpt, "--input", "x", NULL}, "decoder-only");

    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    TEST_MAIN_END();
}
