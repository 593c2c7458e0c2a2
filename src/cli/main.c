/* cformer: the command line. A thin client of libcformer; the only place that exits. */
#include <stdio.h>
#include <string.h>
#include "cformer/cformer.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: cformer <command> [options]\n"
        "commands:\n"
        "  train CONFIG.json [--out DIR] [--resume CKPT.h5|RUN_DIR] [--until STEP] [--set key=value]... [--threads N]\n"
        "  eval  CKPT.h5 --data FILE [--ctx N] [--stride S]\n"
        "  sample CKPT.h5 [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
        "  info  CKPT.h5\n"
        "  bench CONFIG.json [--steps N]\n"
        "  --help, --version\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version")) { printf("cformer %s (gemm: %s)\n", CF_VERSION, cf_gemm_isa()); return 0; }
    fprintf(stderr, "cformer: unknown command '%s' (see cformer --help)\n", argv[1]);
    return 2;
}
