/* Config parsing: defaults, every kind of error (and that its message names the key path),
 * overrides, per-layer attention, the JSON round trip, and the configs shipped in configs/. */
#include <dirent.h>
#include <string.h>
#include <unistd.h>
#include "test.h"
#include "cformer/config.h"

static cf_config cfg;

static int parse(const char *json, const char *const *ov, int n_ov, int check_files) {
    return cf_config_parse(&cfg, json, ov, n_ov, check_files);
}

/* parsing fails and the message contains `want` */
static void expect_error(const char *json, const char *const *ov, int n_ov, int check_files, const char *want) {
    int rc = parse(json, ov, n_ov, check_files);
    CHECK(rc == -1, "%s: parsed, expected an error containing \"%s\"", json, want);
    if (rc == -1) CHECK(strstr(cf_error_msg(), want), "%s: message \"%s\" lacks \"%s\"", json, cf_error_msg(), want);
}

static void expect_ok(const char *json, const char *const *ov, int n_ov) {
    int rc = parse(json, ov, n_ov, 0);
    CHECK(rc == 0, "%s: %s", json, cf_error_msg());
}

static void test_defaults(void) {
    cf_config d;
    cf_config_defaults(&d);
    CHECK(d.model.vocab_size == 256 && d.model.d_model == 256 && d.train.batch_size == 8 && d.train.seed == 1 &&
          d.train.optimizer == CF_OPTIM_ADAMW, "defaults");
    expect_ok("{}", NULL, 0);
    const cf_model_config *m = &cfg.model;
    CHECK(m->d_ff == 4 * m->d_model, "d_ff resolved to 4 * d_model, got %d", m->d_ff);
    CHECK(m->attn_dropout == m->dropout && m->emb_dropout == m->dropout, "dropouts resolved");
    CHECK(m->n_attn == 1 && m->attn[0].type == CF_ATTN_FULL, "one full attention");
    CHECK(m->attn[0].stride == 16, "sparse stride resolved to sqrt(seq_len) = 16, got %d", m->attn[0].stride);
    CHECK(m->enc_layers == 0 && m->dec_layers == m->n_layers, "stacks of a decoder");
    CHECK(cfg.eval.ctx == cfg.train.seq_len && cfg.eval.stride == cfg.train.seq_len / 2, "eval ctx/stride");
    CHECK(strcmp(cf_attn_kind_name(CF_ATTN_SPARSE_FIXED), "sparse_fixed") == 0, "attn kind name");
    expect_ok("{\"comment\": \"what this config is for\", \"model\": {\"dropout\": 0.1, \"attn_dropout\": 0.2}}",
              NULL, 0);
    CHECK(cfg.model.emb_dropout == 0.1f && cfg.model.attn_dropout == 0.2f, "explicit attn_dropout kept");
    expect_ok("{\"model\": {\"position\": \"none\", \"max_seq_len\": 16}, \"train\": {\"seq_len\": 1024}}", NULL, 0);
}

static void test_errors(void) {
    expect_error("{\"modle\": {}}", NULL, 0, 0, "modle: unknown key");
    expect_error("{\"model\": {\"n_haeds\": 4}}", NULL, 0, 0, "model.n_haeds: unknown key");
    expect_error("{\"model\": {\"attention\": {\"windw\": 4}}}", NULL, 0, 0, "model.attention.windw: unknown key");
    expect_error("{\"model\": {\"attention\": [{}, {\"x\": 1}]}}", NULL, 0, 0, "model.attention[1].x: unknown key");
    expect_error("{\"model\": {\"comment\": \"x\"}}", NULL, 0, 0, "model.comment: unknown key");
    expect_error("{\"comment\": 3}", NULL, 0, 0, "comment: expected a string, got number");
    expect_error("{\"train\": {\"lr\": \"fast\"}}", NULL, 0, 0, "train.lr: expected a number, got string");
    expect_error("{\"train\": {\"steps\": 2.5}}", NULL, 0, 0, "train.steps: expected an integer, got 2.5");
    expect_error("{\"train\": {\"steps\": 1e12}}", NULL, 0, 0, "train.steps: 1000000000000 is out of range");
    expect_error("{\"train\": {\"steps\": null}}", NULL, 0, 0, "train.steps: expected an integer, got null");
    expect_error("{\"train\": 5}", NULL, 0, 0, "train: expected an object, got number");
    expect_error("{\"model\": {\"bias\": 1}}", NULL, 0, 0, "model.bias: expected true or false, got number");
    expect_error("{\"model\": {\"norm\": \"batchnorm\"}}", NULL, 0, 0,
                 "model.norm: expected one of layernorm, rmsnorm, got \"batchnorm\"");
    expect_error("{\"model\": {\"attention\": {\"kernel\": \"tanh\"}}}", NULL, 0, 0,
                 "model.attention.kernel: expected one of softmax, relu, got \"tanh\"");
    expect_error("{\"train\": {\"optimizer\": \"sgd\"}}", NULL, 0, 0,
                 "train.optimizer: expected one of adamw, lion, got \"sgd\"");
    expect_error("{\"data\": {\"train\": 7}}", NULL, 0, 0, "data.train: expected a string, got number");
    /* a NUL escape would cut the string short: refused, and an escaped backslash before u0000 is not one */
    expect_error("{\"data\": {\"train\": \"a\\u0000b\"}}", NULL, 0, 0, "\\u0000 (a NUL byte) at line 1, column 22");
    expect_error("{}", (const char *[]){"data.train=\"a\\u0000\""}, 1, 0, "cannot be part of a value");
    expect_ok("{\"comment\": \"a \\\\u0000 b\"}", NULL, 0);
    expect_error("{\"train\": {\"seed\": 9007199254740993}}", NULL, 0, 0, "train.seed: 9007199254740992 is out of range");
    expect_error("{\"model\": {\"d_model\": 256, \"n_heads\": 6}}", NULL, 0, 0,
                 "model.n_heads: must divide model.d_model (256 % 6 != 0)");
    expect_error("{\"model\": {\"max_seq_len\": 128}, \"train\": {\"seq_len\": 256}}", NULL, 0, 0,
                 "train.seq_len: must not exceed model.max_seq_len");
    expect_error("{\"model\": {\"position\": \"sinusoidal\", \"max_seq_len\": 128}, \"train\": {\"seq_len\": 256}}",
                 NULL, 0, 0, "model.max_seq_len");
    expect_error("{\"train\": {\"lr\": -0.001}}", NULL, 0, 0, "train.lr:");
    expect_error("{\"train\": {\"lr\": 1e-4, \"min_lr\": 1e-3}}", NULL, 0, 0, "train.min_lr: must not exceed train.lr");
    expect_error("{\"model\": {\"dropout\": 1.0}}", NULL, 0, 0, "model.dropout:");
    expect_error("{\"train\": {\"beta2\": 1}}", NULL, 0, 0, "train.beta2:");
    expect_error("{\"train\": {\"batch_size\": 0}}", NULL, 0, 0, "train.batch_size: must be positive");
    expect_error("{\"train\": {\"grad_accum\": 0}}", NULL, 0, 0, "train.grad_accum:");
    expect_error("{\"train\": {\"warmup_steps\": -1}}", NULL, 0, 0, "train.warmup_steps:");
    expect_error("{\"model\": {\"vocab_size\": 70000}}", NULL, 0, 0, "model.vocab_size: must be in 1..65536");
    expect_error("{\"model\": {\"attention\": {\"window\": 0}}}", NULL, 0, 0, "model.attention.window:");
    expect_error("{\"model\": {\"attention\": [{}, {\"features\": -3}]}}", NULL, 0, 0, "model.attention[1].features:");
    expect_error("{\"model\": {\"attention\": {\"type\": \"sparse_fixed\", \"stride\": 4, \"c\": 8}}}", NULL, 0, 0,
                 "model.attention.c: must not exceed the stride");
    expect_error("{\"eval\": {\"ctx\": 64, \"stride\": 65}}", NULL, 0, 0, "eval.stride: must not exceed eval.ctx");
    expect_error("{\"eval\": {\"ctx\": 512}}", NULL, 0, 0, "eval.ctx: must not exceed model.max_seq_len");
    expect_error("{\"model\": {\"d_model\": 64, \"d_model\": 128}}", NULL, 0, 0, "model.d_model: duplicate key");
    expect_error("{\"model\": {\"d_model\": 64,}}", NULL, 0, 0, "invalid JSON at line 1");
    expect_error("{\n  \"model\": {\n    \"d_model\": 64 64\n  }\n}", NULL, 0, 0, "invalid JSON at line 3");
    expect_error("[1, 2]", NULL, 0, 0, "expected a JSON object at the top level, got list");
    /* control bytes of the input are escaped in the message, which stays one line */
    expect_error("{\"model\": {\"norm\": \"layer\\nnorm\\r\\u0001\"}}", NULL, 0, 0, "got \"layer\\nnorm\\r\\x01\"");
    expect_error("{\"a\\nb\": 1}", NULL, 0, 0, "a\\nb: unknown key");
    expect_error("{\"model\": {\"encoder\": {\"n_layers\": 2}}}", NULL, 0, 0,
                 "model.encoder: only for model.arch \"encoder_decoder\"");
    expect_error("{\"model\": {\"arch\": \"encoder_decoder\", \"decoder\": {\"n_layers\": 0}}}", NULL, 0, 0,
                 "model.decoder.n_layers: must be positive");
    expect_error("{\"model\": {\"arch\": \"encoder_decoder\", \"decoder\": {\"n_heads\": 2}}}", NULL, 0, 0,
                 "model.decoder.n_heads: unknown key");
}

static void test_files(void) {
    char full[] = "/tmp/cf_test_config_XXXXXX", empty[] = "/tmp/cf_test_config_XXXXXX";
    int fd = mkstemp(full);
    CHECK(fd >= 0 && write(fd, "abcdefgh", 8) == 8, "temp file");
    close(fd);
    fd = mkstemp(empty);
    CHECK(fd >= 0, "temp file");
    close(fd);
    char json[512];
    snprintf(json, sizeof json, "{\"data\": {\"train\": \"%s\", \"valid\": \"/nonexistent/x.bin\"}}", full);
    expect_error(json, NULL, 0, 1, "data.valid: cannot open \"/nonexistent/x.bin\": No such file or directory");
    CHECK(parse(json, NULL, 0, 0) == 0, "files are not checked without check_files: %s", cf_error_msg());
    snprintf(json, sizeof json, "{\"data\": {\"train\": \"%s\", \"test\": \"%s\"}}", full, full);
    CHECK(parse(json, NULL, 0, 1) == 0, "existing files: %s", cf_error_msg());
    snprintf(json, sizeof json, "{\"data\": {\"train\": \"%s\"}}", empty);
    expect_error(json, NULL, 0, 1, "data.train:");
    CHECK(strstr(cf_error_msg(), "empty"), "empty file message: %s", cf_error_msg());
    expect_error("{}", NULL, 0, 1, "data.train: required");
    unlink(full);
    unlink(empty);

    CHECK(cf_config_load(&cfg, "/nonexistent/run.json", NULL, 0, 0) == -1 &&
          strstr(cf_error_msg(), "/nonexistent/run.json"), "missing config file named: %s", cf_error_msg());
    char bad[] = "/tmp/cf_test_config_XXXXXX";
    fd = mkstemp(bad);
    CHECK(fd >= 0 && write(fd, "{\n\"model\": }", 12) == 12, "temp file");
    close(fd);
    CHECK(cf_config_load(&cfg, bad, NULL, 0, 0) == -1 && strstr(cf_error_msg(), bad) &&
          strstr(cf_error_msg(), "line 2"), "bad JSON names the file and line: %s", cf_error_msg());
    unlink(bad);
}

static void test_overrides(void) {
    const char *ov1[] = {"model.n_layers=6", "model.norm=rmsnorm", "data.train=some dir/x.bin", "train.lr=1e-3",
                         "model.tie_embeddings=false", "eval.ctx=128"};
    expect_ok("{\"model\": {\"n_layers\": 2}}", ov1, 6);
    CHECK(cfg.model.n_layers == 6, "override int, got %d", cfg.model.n_layers);
    CHECK(cfg.model.norm == CF_NORM_RMSNORM, "override with a bare string");
    CHECK(strcmp(cfg.data.train, "some dir/x.bin") == 0, "override path: %s", cfg.data.train);
    CHECK(cfg.train.lr == 1e-3f && cfg.model.tie_embeddings == 0 && cfg.eval.ctx == 128, "override values");
    CHECK(cfg.eval.stride == 64, "stride default follows overridden ctx");
    const char *ov_opt[] = {"train.optimizer=lion"};
    expect_ok("{}", ov_opt, 1);
    CHECK(cfg.train.optimizer == CF_OPTIM_LION, "train.optimizer \"lion\"");

    const char *ov2[] = {"model.attention.type=window", "model.attention.window=32"};
    expect_ok("{\"model\": {\"attention\": {\"type\": \"full\"}}}", ov2, 2);
    CHECK(cfg.model.attn[0].type == CF_ATTN_WINDOW && cfg.model.attn[0].window == 32, "override inside attention");
    expect_ok("{}", ov2, 2);
    CHECK(cfg.model.attn[0].type == CF_ATTN_WINDOW, "override creates the attention object");

    const char *ov3[] = {"model.attention[1].window=16"};
    expect_ok("{\"model\": {\"attention\": [{\"type\": \"full\"}, {\"type\": \"window\"}]}}", ov3, 1);
    CHECK(cfg.model.n_attn == 2 && cfg.model.attn[1].window == 16, "override one list entry");
    const char *ov4[] = {"model.attention.window=16"};
    expect_error("{\"model\": {\"attention\": [{}, {}]}}", ov4, 1, 0, "model.attention is a list");
    const char *ov5[] = {"model.attention[2].window=16"};
    expect_error("{\"model\": {\"attention\": [{}, {}]}}", ov5, 1, 0, "model.attention has 2 entries");
    const char *ov6[] = {"model.attention=[{\"type\": \"linear\"}, {\"type\": \"performer\", \"features\": 64}]"};
    expect_ok("{}", ov6, 1);
    CHECK(cfg.model.n_attn == 2 && cfg.model.attn[1].type == CF_ATTN_PERFORMER && cfg.model.attn[1].features == 64,
          "override with a JSON list");

    const char *bad1[] = {"model.n_haeds=3"};
    expect_error("{}", bad1, 1, 0, "model.n_haeds: unknown key");
    const char *bad2[] = {"train.lr=fast"};
    expect_error("{}", bad2, 1, 0, "train.lr: expected a number, got string");
    const char *bad3[] = {"model.n_layers"};
    expect_error("{}", bad3, 1, 0, "expected key.path=value");
    const char *bad4[] = {"model.d_model.x=1"};
    expect_error("{\"model\": {\"d_model\": 64}}", bad4, 1, 0, "model.d_model is a number, not an object");
    const char *bad5[] = {"model..d_model=1"};
    expect_error("{}", bad5, 1, 0, "empty key");
    const char *bad6[] = {"modle.d_model=1"};
    expect_error("{}", bad6, 1, 0, "modle: unknown key");
    const char *bad7[] = {"model.encoder.n_layers=2"};
    expect_error("{}", bad7, 1, 0, "model.encoder: only for");
}

static void test_attention_layers(void) {
    expect_ok("{\"model\": {\"n_layers\": 6, \"attention\": [{\"type\": \"full\"}, {\"type\": \"window\", \"window\": 8},"
              " {\"type\": \"sparse_strided\", \"stride\": 4}]}}", NULL, 0);
    const cf_model_config *m = &cfg.model;
    CHECK(m->n_attn == 3, "three entries");
    const cf_attn_kind want[6] = {CF_ATTN_FULL, CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED,
                                  CF_ATTN_FULL, CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED};
    for (int i = 0; i < 6; i++) CHECK(cf_config_layer_attn(m, i)->type == want[i], "layer %d cycles", i);
    CHECK(cf_config_layer_attn(m, 4)->window == 8 && cf_config_layer_attn(m, 5)->stride == 4, "per-layer values");
    CHECK(m->attn[0].window == 128, "unset keys of an entry take the defaults");
    expect_error("{\"model\": {\"attention\": []}}", NULL, 0, 0, "model.attention: expected an object or a non-empty");
    expect_error("{\"model\": {\"attention\": \"full\"}}", NULL, 0, 0, "model.attention: expected an object or a list");
    expect_error("{\"model\": {\"n_layers\": 2, \"attention\": [{}, {}, {}]}}", NULL, 0, 0,
                 "model.attention: 3 entries for 2 layers");
    expect_error("{\"model\": {\"attention\": [{}, 3]}}", NULL, 0, 0, "model.attention[1]: expected an object");
    char big[4096] = "{\"model\": {\"n_layers\": 100, \"attention\": [{}";
    for (int i = 1; i <= CF_MAX_LAYER_ATTN; i++) strcat(big, ", {}");
    strcat(big, "]}}");
    expect_error(big, NULL, 0, 0, "model.attention: 65 entries, at most 64");
}

static void test_grad_checkpoint(void) {
    expect_ok("{\"train\": {\"grad_checkpoint\": \"none\"}}", NULL, 0);
    CHECK(cfg.train.grad_checkpoint == 0, "none");
    expect_ok("{\"train\": {\"grad_checkpoint\": \"blocks\"}}", NULL, 0);
    CHECK(cfg.train.grad_checkpoint == 1, "blocks");
    expect_ok("{\"train\": {\"grad_checkpoint\": 3}}", NULL, 0);
    CHECK(cfg.train.grad_checkpoint == 3, "integer");
    const char *ov[] = {"train.grad_checkpoint=blocks"};
    expect_ok("{}", ov, 1);
    CHECK(cfg.train.grad_checkpoint == 1, "blocks from an override");
    expect_error("{\"train\": {\"grad_checkpoint\": 0}}", NULL, 0, 0,
                 "train.grad_checkpoint: expected \"none\", \"blocks\" or a positive integer, got 0");
    expect_error("{\"train\": {\"grad_checkpoint\": \"layers\"}}", NULL, 0, 0, "train.grad_checkpoint:");
    expect_error("{\"train\": {\"grad_checkpoint\": 1.5}}", NULL, 0, 0, "train.grad_checkpoint:");
    expect_error("{\"train\": {\"grad_checkpoint\": true}}", NULL, 0, 0, "got boolean");
}

static void test_encoder_decoder(void) {
    expect_ok("{\"model\": {\"arch\": \"encoder_decoder\", \"n_layers\": 3, \"encoder\": {\"n_layers\": 5}}}", NULL, 0);
    CHECK(cfg.model.arch == CF_ARCH_ENCODER_DECODER && cfg.model.enc_layers == 5 && cfg.model.dec_layers == 3,
          "stacks: %d %d", cfg.model.enc_layers, cfg.model.dec_layers);
}

/* parse -> to_json -> parse gives a bytewise identical config, and printing again the same text */
static void round_trip(const char *json) {
    if (parse(json, NULL, 0, 0)) {
        CHECK(0, "round trip source: %s", cf_error_msg());
        return;
    }
    cf_config a = cfg;
    char *text = cf_config_to_json(&a);
    int rc = parse(text, NULL, 0, 0);
    CHECK(rc == 0, "resolved JSON parses back: %s\n%s", cf_error_msg(), text);
    CHECK(rc == 0 && memcmp(&a, &cfg, sizeof a) == 0, "round trip gives an identical config:\n%s", text);
    char *again = cf_config_to_json(&cfg);
    CHECK(strcmp(text, again) == 0, "printing is stable");
    free(again);
    free(text);
}

static void test_round_trip(void) {
    round_trip("{}");
    round_trip("{\"model\": {\"arch\": \"encoder_decoder\", \"d_model\": 96, \"n_heads\": 3, \"n_layers\": 5,"
               " \"encoder\": {\"n_layers\": 2}, \"dropout\": 0.1, \"emb_dropout\": 0.05, \"norm\": \"rmsnorm\","
               " \"norm_eps\": 1e-6, \"init_std\": 0.0123, \"label_smoothing\": 0.1, \"bias\": false,"
               " \"attention\": [{\"type\": \"xl\", \"mem_len\": 64, \"clamp_len\": 100},"
               " {\"type\": \"infini\", \"segment_len\": 32, \"update\": \"delta\"},"
               " {\"type\": \"sparse_fixed\", \"combine\": \"merged\", \"c\": 2}]},"
               " \"train\": {\"lr\": 0.00037, \"min_lr\": 1.7e-7, \"seed\": 9007199254740991, \"grad_checkpoint\": 3,"
               " \"beta2\": 0.999, \"eps\": 1e-9, \"sampling\": \"ordered\", \"schedule\": \"linear\","
               " \"optimizer\": \"lion\"},"
               " \"data\": {\"train\": \"a \\\"quoted\\\" path.bin\", \"valid\": \"v.bin\"},"
               " \"eval\": {\"ctx\": 200, \"stride\": 7}}");
    round_trip("{\"train\": {\"grad_checkpoint\": \"blocks\"}, \"model\": {\"attention\": [{\"type\": \"performer\","
               " \"kernel\": \"relu\", \"features\": 32, \"redraw_every\": 7}]}}");
    /* a default d_ff of 4 * d_model above the bound of the other sizes is stated in the printed config */
    round_trip("{\"model\": {\"d_model\": 400000, \"n_heads\": 1}}");
    /* the printed config is readable: two-space indents, one key per line, floats in short form */
    parse("{}", NULL, 0, 0);
    char *text = cf_config_to_json(&cfg);
    CHECK(strstr(text, "\n    \"d_model\": 256,\n") && strstr(text, "\"lr\": 0.0003,") && !strchr(text, '\t'),
          "readable output:\n%s", text);
    free(text);
}

static void test_shipped_configs(void) {
    DIR *d = opendir("configs");
    CHECK(d, "configs/ not found: tests run from the repository root");
    if (!d) return;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json")) continue;
        char path[512];
        snprintf(path, sizeof path, "configs/%s", e->d_name);
        int rc = cf_config_load(&cfg, path, NULL, 0, 0);
        CHECK(rc == 0, "%s: %s", path, cf_error_msg());
        CHECK(rc || (strlen(cfg.name) == l - 5 && strncmp(cfg.name, e->d_name, l - 5) == 0),
              "%s: name \"%s\"", path, cfg.name);
        CHECK(rc || cfg.data.train[0], "%s: names its training data", path);
        n++;
    }
    closedir(d);
    CHECK(n >= 4, "expected at least 4 configs in configs/, found %d", n);
    if (cf_config_load(&cfg, "configs/enwik8-small.json", NULL, 0, 0) == 0)
        CHECK(cfg.model.n_layers == 4 && cfg.model.d_model == 256 && cfg.model.d_ff == 1024 &&
              cfg.train.seq_len == 256 && strcmp(cfg.data.train, "data/enwik8/train.bin") == 0, "enwik8-small");
}

int main(void) {
    test_defaults();
    test_errors();
    test_files();
    test_overrides();
    test_attention_layers();
    test_grad_checkpoint();
    test_encoder_decoder();
    test_round_trip();
    test_shipped_configs();
    TEST_MAIN_END();
}
