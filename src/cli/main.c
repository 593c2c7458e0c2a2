/* cformer: the command line (DESIGN.md section 4). A thin client of libcformer and the only place
 * that exits: 0 success, 2 bad usage or input, 1 internal failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/cformer.h"
#include "cformer/train.h"

#define MAX_SETS 64

static void usage(FILE *f) {
    fprintf(f,
        "usage: cformer <command> [options]\n"
        "  train CONFIG.json [--out DIR] [--resume CKPT.h5|RUN_DIR] [--until STEP] [--set key.path=value]... [--threads N]\n"
        "  eval  CKPT.h5 --data FILE [--ctx N] [--stride S]      bits per byte of FILE\n"
        "  sample CKPT.h5 [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
        "  info  CKPT.h5                                        config, step, parameter counts\n"
        "  bench CONFIG.json [--steps N] [--set key=value]... [--threads N]   training-step speed and memory\n"
        "  --help, --version\n"
        "Configuration keys and defaults: configs/README.md\n");
}

static int fail(const char *msg) {
    fprintf(stderr, "cformer: %s\n", msg);
    return 2;
}

/* parse an integer option value, or report it */
static int int_arg(const char *opt, const char *v, int *out) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < 0 || x > 1000000000) {
        fprintf(stderr, "cformer: %s: expected a non-negative integer, got \"%s\"\n", opt, v ? v : "");
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int cmd_train_or_bench(int argc, char **argv, int bench) {
    const char *config = NULL, *sets[MAX_SETS];
    int n_sets = 0, threads = 0, steps = 10;
    cf_train_opts o = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--set") && v) { if (n_sets == MAX_SETS) return fail("--set: too many"); sets[n_sets++] = v; i++; }
        else if (!strcmp(a, "--threads")) { if (int_arg(a, v, &threads)) return 2; i++; }
        else if (!bench && !strcmp(a, "--out") && v) { o.out_dir = v; i++; }
        else if (!bench && !strcmp(a, "--resume") && v) { o.resume = v; i++; }
        else if (!bench && !strcmp(a, "--until")) { if (int_arg(a, v, &o.until)) return 2; i++; }
        else if (!bench && !strcmp(a, "--quiet")) o.quiet = 1;
        else if (bench && !strcmp(a, "--steps")) { if (int_arg(a, v, &steps) || steps < 1) return fail("--steps: must be >= 1"); i++; }
        else if (a[0] == '-' || config) { fprintf(stderr, "cformer: %s: unexpected argument \"%s\"\n", bench ? "bench" : "train", a); return 2; }
        else config = a;
    }
    if (!config) return fail(bench ? "bench: missing CONFIG.json" : "train: missing CONFIG.json");
    cf_config c;
    if (cf_config_load(&c, config, sets, n_sets, !bench)) return fail(cf_error_msg());
    if (threads) c.train.threads = threads;
    if (c.train.threads) cf_set_num_threads(c.train.threads);
    if (o.resume) return fail("train: --resume needs checkpoints, which this build does not write yet");
    if (bench) return cf_bench_train_step(&c, steps) < 0 ? fail(cf_error_msg()) : 0;
    if (cf_train(&c, &o)) return fail(cf_error_msg());
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "--version")) { printf("cformer %s (gemm: %s)\n", CF_VERSION, cf_gemm_isa()); return 0; }
    if (!strcmp(cmd, "train")) return cmd_train_or_bench(argc - 2, argv + 2, 0);
    if (!strcmp(cmd, "bench")) return cmd_train_or_bench(argc - 2, argv + 2, 1);
    fprintf(stderr, "cformer: unknown command \"%s\" (see cformer --help)\n", cmd);
    return 2;
}
