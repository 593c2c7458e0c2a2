/* A performer redraws its random features every redraw_every steps; a model loaded from a
 * checkpoint must evaluate with the features of its last training step, so `cformer eval` on the
 * checkpoint reproduces the trainer's own final validation figure exactly. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "test.h"
#include "cformer/checkpoint.h"
#include "cformer/train.h"

/* the last validation eval_bpb in RUN/log.jsonl */
static double last_valid_bpb(const char *dir) {
    char path[1024], line[1024];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    double v = -1;
    if (!f) return v;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"eval_bpb\": ");
        if (p && strstr(line, "\"split\": \"valid\"")) v = atof(p + 12);
    }
    fclose(f);
    return v;
}

int main(void) {
    char dir[] = "/tmp/cf_test_perf_XXXXXX";
    CF_ASSERT(mkdtemp(dir), "mkdtemp");
    char out[600];
    snprintf(out, sizeof out, "%s/run", dir);
    const char *sets[] = {"model.attention={\"type\":\"performer\",\"features\":16,\"redraw_every\":7}",
                          "train.steps=20", "train.eval_every=0", "train.log_every=5"};
    cf_config c;
    CHECK(cf_config_load(&c, "configs/tiny.json", sets, 4, 1) == 0, "%s", cf_error_msg());
    cf_train_opts o = {.out_dir = out, .quiet = 1};
    int rc = t_train_quietly(&c, &o);
    CHECK(rc == 0, "train: %s", cf_error_msg());
    double want = last_valid_bpb(out);
    CHECK(want > 0, "no validation line in %s/log.jsonl", out);

    char ckpt[700];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/latest.h5", out);
    cf_config lc;
    cf_model m;
    cf_train_state s;
    CHECK(cf_ckpt_load_model(ckpt, &lc, &m, &s) == 0, "%s", cf_error_msg());
    cf_bytes b;
    CHECK(cf_bytes_open(&b, lc.data.valid) == 0, "%s", cf_error_msg());
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&lc.model, lc.train.batch_size, lc.eval.ctx), 1 << 16) == 0, "%s",
              cf_error_msg());
    cf_eval_result r;
    CHECK(cf_eval_bpb(&m, &ctx, b.data, b.n, lc.eval.ctx, lc.eval.stride, lc.train.batch_size, &r) == 0, "%s",
          cf_error_msg());
    /* the log keeps 6 decimals */
    CHECK(fabs(r.bpb - want) < 1e-6, "eval after load %.6f, trainer's final validation %.6f", r.bpb, want);
    cf_ctx_free(&ctx);
    cf_bytes_close(&b);
    cf_model_free(&m);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    TEST_MAIN_END();
}
