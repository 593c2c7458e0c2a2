/* cformer: the command line (docs/architecture.md section 10). A thin client of libcformer and the only place
 * that exits: 0 success, 2 bad usage or input, 1 an MPI job stopped by one rank's failure. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cformer/cformer.h"
#include "omp_wait.h"

#define MAX_SETS 64

static void usage(FILE *f) {
    fprintf(f,
        "usage: cformer <command> [options]\n"
        "  train CONFIG.json [--out DIR] [--resume CKPT.h5|RUN_DIR] [--until STEP] [--set key.path=value]... [--threads N]\n"
        "  eval  CKPT.h5 --data FILE [--precision fp32|bf16] [--ctx N] [--stride S] [--bytes N] [--mem-len N]   bits per byte of FILE\n"
        "        [--columns N] (xl/infini streams) [--cached] (one stream through incremental decoding)\n"
        "        [--reset-memory] (cached, every call afresh)\n"
        "  sample CKPT.h5 [--prompt TEXT | --prompt-file F] [--tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
        "        [--seed S] [--n SAMPLES] [--stop STRING] [--span N] [--slide N] [--uncached] [--precision fp32|bf16]\n"
        "        bytes to stdout as they come; a BENCH sample line (bytes/s, memory) on stderr\n"
        "  info  [--verify] CKPT.h5                                        config, step, parameter counts\n"
        "  translate CKPT.h5 [--input TEXT] [--beam K] [--max-len N]   encoder-decoder: one line per input line\n"
        "        (stdin without --input); input and output use the escapes \\t \\n \\\\ of pair files\n"
        "  bench CONFIG.json [--steps N] [--profile] [--set key=value]... [--threads N]   training-step speed and memory;\n"
        "        --profile: time, share, calls and GFLOP/s per op and direction, optimizer, data, eval\n"
        "  --help, --version\n"
        "Under mpirun (make MPI=1) train and bench run data-parallel, train.batch_size being the global\n"
        "batch (README: Training on several processes).\n"
        "Exit status: 0 done, 2 bad usage or input, 1 another MPI rank failed, 130/143 stopped by SIGINT/SIGTERM\n"
        "(after the current step and a checkpoint; --resume RUN_DIR continues it).\n"
        "Configuration keys and defaults: configs/README.md\n");
}

/* under MPI, an error that another rank reports is not printed again (dist.h: cf_dist_quiet) */
static int fail(const char *msg) {
    if (!cf_dist_quiet()) fprintf(stderr, "cformer: %s\n", msg);
    return 2;
}

/* parse a float option value, or report it */
static int float_arg(const char *opt, const char *v, float *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || !*v || *end || !isfinite(x) || x < 0) {
        fprintf(stderr, "cformer: %s: expected a non-negative number, got \"%s\"\n", opt, v ? v : "");
        return -1;
    }
    *out = (float)x;
    return 0;
}

/* parse an integer option value in [lo, hi], or report it in one line */
static int int_arg(const char *opt, const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = v && *v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "cformer: %s: expected an integer in %d..%d, got \"%s\"\n", opt, lo, hi, v ? v : "");
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* --precision fp32|bf16 into *out (a cf_precision), or report it in one line */
static int precision_arg(const char *opt, const char *v, int *out) {
    for (int i = 0; v && cf_precision_names[i]; i++)
        if (!strcmp(v, cf_precision_names[i])) { *out = i; return 0; }
    fprintf(stderr, "cformer: %s: expected fp32 or bf16, got \"%s\"\n", opt, v ? v : "");
    return -1;
}

static int cmd_train_or_bench(int argc, char **argv, int bench) {
    const char *config = NULL, *sets[MAX_SETS];
    int n_sets = 0, threads = 0, steps = 10, profile = 0;
    cf_train_opts o = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--set") && v) { if (n_sets == MAX_SETS) return fail("--set: too many"); sets[n_sets++] = v; i++; }
        else if (!strcmp(a, "--threads")) { if (int_arg(a, v, 1, CF_MAX_THREADS, &threads)) return 2; i++; }
        else if (!bench && !strcmp(a, "--out") && v) { o.out_dir = v; i++; }
        else if (!bench && !strcmp(a, "--resume") && v) { o.resume = v; i++; }
        else if (!bench && !strcmp(a, "--until")) { if (int_arg(a, v, 1, INT_MAX, &o.until)) return 2; i++; }
        else if (!bench && !strcmp(a, "--quiet")) o.quiet = 1;
        else if (bench && !strcmp(a, "--steps")) { if (int_arg(a, v, 1, 1000000, &steps)) return 2; i++; }
        else if (bench && !strcmp(a, "--profile")) profile = 1;
        else if (a[0] == '-' || config) { fprintf(stderr, "cformer: %s: unexpected argument \"%s\"\n", bench ? "bench" : "train", a); return 2; }
        else config = a;
    }
    if (!config) return fail(bench ? "bench: missing CONFIG.json" : "train: missing CONFIG.json");
    cf_config c;
    int bad = cf_config_load(&c, config, sets, n_sets, !bench) != 0;
    if (cf_dist_size() > 1) bad = cf_dist_agree_error(bad) != 0;   /* e.g. a data file one node lacks */
    if (bad) return fail(cf_error_msg());
    if (threads) c.train.threads = threads;
    if (c.train.threads) cf_set_num_threads(c.train.threads);
    if (bench) return cf_bench_train_step(&c, steps, profile) < 0 ? fail(cf_error_msg()) : 0;
    int sig = 0;
    o.stop_signal = &sig;
    int rc = cf_train(&c, &o);
    if (rc < 0) return fail(cf_error_msg());
    return rc > 0 ? 128 + sig : 0;   /* the shell's status for a process stopped by that signal */
}

/* the model of a checkpoint (eval, sample, info); on failure prints the one-line error, returns 2 */
static int load_ckpt(const char *path, cf_config *c, cf_model *m, cf_train_state *s) {
    if (!path) return fail("missing CKPT.h5");
    if (cf_ckpt_load_model(path, c, m, s)) return fail(cf_error_msg());
    return 0;
}

/* ---- encoder-decoder models (encdec.h, pairs.h) ------------------------------------------------------ */
/* eval on a pair file: bits per target token and greedy exact match; limit > 0 stops after that many
 * target tokens */
/* what cformer eval was asked */
typedef struct eval_opts { const char *data; int ctx_len, stride, limit, mem_len, cached, reset_memory, columns; } eval_opts;

static int eval_pairs(cf_config *c, cf_model *m, const eval_opts *o) {
    if (o->ctx_len || o->stride || o->mem_len >= 0 || o->cached || o->reset_memory || o->columns)
        return fail("eval: --ctx, --stride, --mem-len, --cached, --reset-memory and --columns are for decoder models; "
                    "an encoder-decoder scores pairs");
    const char *data = o->data;
    int limit = o->limit;
    int batch = c->train.batch_size, T = c->train.seq_len;
    cf_pairs p;
    if (cf_pairs_load(&p, data, T)) return fail(cf_error_msg());
    cf_ctx ctx;
    int rc = 0;
    if (cf_ctx_init(&ctx, cf_model_arena_bytes(&c->model, batch, T), 1 << 20)) {
        cf_pairs_free(&p);
        return fail(cf_error_msg());
    }
    ctx.bf16 = c->train.precision == CF_PRECISION_BF16;
    cf_eval_result r;
    if (cf_s2s_eval(m, &ctx, &p, limit, batch, T, &r)) rc = fail(cf_error_msg());
    else if (!isfinite(r.bpb)) rc = fail("eval: bits per target token is not finite (the model's weights are broken)");
    else printf("BENCH eval bpb=%.6f exact_match=%.4f pairs=%lld tokens=%lld seconds=%.1f\n", r.bpb, r.exact,
                (long long)r.pairs, (long long)r.bytes, r.seconds);
    cf_ctx_free(&ctx);
    cf_pairs_free(&p);
    return rc;
}

/* translate one source (escaped as in pair files) and print the escaped result as one line */
static int translate_one(const cf_config *c, cf_model *m, cf_ctx *ctx, const char *text, size_t n, int beam,
                         int max_len, uint8_t *out, char *esc, const char *where) {
    uint8_t *src = cf_xmalloc(n ? n : 1);
    size_t bad = 0;
    int64_t len = cf_pairs_unescape(text, n, src, &bad);
    if (len < 0) {
        free(src);
        fprintf(stderr, "cformer: translate: %s, byte %zu: bad escape (only \\t, \\n and \\\\ exist)\n", where, bad + 1);
        return 2;
    }
    int max_src = c->train.seq_len - 1, out_len = 0, src_len = len > 1000000000 ? 1000000000 : (int)len, rc;
    if (src_len > max_src)
        fprintf(stderr, "cformer: translate: %s: %d bytes, cut to %d (train.seq_len - 1) as in training\n", where,
                src_len, max_src);
    const uint8_t *sp = src;
    if (beam > 1) rc = cf_translate_beam(m, ctx, src, src_len, max_src, beam, max_len, out, &out_len, NULL);
    else rc = cf_translate_greedy(m, ctx, &sp, &src_len, 1, max_src, max_len, &out, &out_len);
    free(src);
    if (rc) return fail(cf_error_msg());
    cf_pairs_escape(out, (size_t)out_len, esc);
    printf("%s\n", esc);
    fflush(stdout);
    return 0;
}

static int cmd_translate(int argc, char **argv) {
    const char *ckpt = NULL, *input = NULL;
    int beam = 1, max_len = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--input") && v) { input = v; i++; }
        else if (!strcmp(a, "--beam")) { if (int_arg(a, v, 1, 256, &beam)) return 2; i++; }
        else if (!strcmp(a, "--max-len")) { if (int_arg(a, v, 1, 1 << 20, &max_len)) return 2; i++; }
        else if (a[0] == '-' || ckpt) { fprintf(stderr, "cformer: translate: unexpected argument \"%s\"\n", a); return 2; }
        else ckpt = a;
    }
    if (!ckpt) return fail("translate: missing CKPT.h5");
    cf_config c;
    cf_model m;
    if (load_ckpt(ckpt, &c, &m, NULL)) return 2;
    int rc = 0;
    char msg[256] = "";
    /* output tokens (bytes and the EOS) per input: training's limit unless --max-len says otherwise */
    if (!max_len) max_len = c.train.seq_len;
    if (strcmp(m.family->generator, "translate"))
        snprintf(msg, sizeof msg, "translate: %s is a %s model (use cformer %s)", ckpt,
                 m.family->title, m.family->generator);
    else if (c.model.position != CF_POS_NONE && max_len > c.model.max_seq_len)
        snprintf(msg, sizeof msg, "--max-len: %d exceeds the model's max_seq_len %d", max_len, c.model.max_seq_len);
    if (msg[0]) { cf_model_free(&m); return fail(msg); }
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, cf_encdec_arena_bytes(&c.model, beam, c.train.seq_len, max_len), 1 << 20)) {
        cf_model_free(&m);
        return fail(cf_error_msg());
    }
    uint8_t *out = cf_xmalloc((size_t)max_len);
    char *esc = cf_xmalloc(2 * (size_t)max_len + 1);
    if (input) {
        rc = translate_one(&c, &m, &ctx, input, strlen(input), beam, max_len, out, esc, "--input");
    } else {
        char *line = NULL, where[64];
        size_t cap = 0;
        ssize_t n;
        for (long no = 1; !rc && (n = getline(&line, &cap, stdin)) >= 0; no++) {
            if (n > 0 && line[n - 1] == '\n') n--;
            snprintf(where, sizeof where, "stdin line %ld", no);
            rc = translate_one(&c, &m, &ctx, line, (size_t)n, beam, max_len, out, esc, where);
        }
        free(line);
    }
    free(out);
    free(esc);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    return rc;
}

/* eval on a byte file: windows of --ctx bytes every --stride, or streams with the recurrent state */
static int eval_bytes(cf_config *c, cf_model *m, const eval_opts *o) {
    const char *data = o->data;
    int ctx_len = o->ctx_len, stride = o->stride, limit = o->limit, mem_len = o->mem_len;
    if (mem_len >= 0 && !m->has_xl) {
        return fail("eval: --mem-len is for models with Transformer-XL (xl) layers");
    }
    if (mem_len >= 0) {
        /* Transformer-XL evaluates with a longer memory than it trained with (Dai et al. 2019) */
        cf_model_set_mem_len(m, mem_len);
        for (int i = 0; i < c->model.n_attn; i++)
            if (c->model.attn[i].type == CF_ATTN_XL) c->model.attn[i].mem_len = mem_len;
    }
    /* defaults: the checkpoint's eval.ctx and eval.stride; a new --ctx halves into the stride */
    if (!ctx_len) ctx_len = c->eval.ctx;
    if (!stride) stride = ctx_len == c->eval.ctx ? c->eval.stride : (ctx_len > 1 ? ctx_len / 2 : 1);
    char msg[256] = "";
    /* a position table caps the context; rope and alibi do not */
    int table = c->model.position == CF_POS_LEARNED || c->model.position == CF_POS_SINUSOIDAL;
    if (table && !m->has_xl && ctx_len > c->model.max_seq_len)
        snprintf(msg, sizeof msg, "--ctx: %d exceeds the model's max_seq_len %d", ctx_len, c->model.max_seq_len);
    else if (stride > ctx_len)
        snprintf(msg, sizeof msg, "--stride: %d exceeds the context %d", stride, ctx_len);
    else if (o->columns && !cf_model_is_recurrent(m))
        snprintf(msg, sizeof msg, "--columns: streams are for models with xl or infini layers");
    else if (o->columns && o->cached)
        snprintf(msg, sizeof msg, "--columns: the cached path reads one stream");
    if (msg[0]) return fail(msg);
    cf_bytes b;
    if (cf_bytes_open(&b, data) || cf_bytes_check_vocab(&b, c->model.vocab_size)) {
        cf_bytes_close(&b);
        return fail(cf_error_msg());
    }
    int batch = o->columns ? o->columns : c->train.batch_size;
    cf_ctx ctx;
    int rc = 0;
    if (cf_ctx_init(&ctx, cf_model_arena_bytes(&c->model, batch, ctx_len), 1 << 20)) { rc = fail(cf_error_msg()); goto out; }
    ctx.grad_enabled = 0;
    ctx.bf16 = c->train.precision == CF_PRECISION_BF16;
    cf_eval_result r;
    size_t n = limit && (size_t)limit < b.n ? (size_t)limit : b.n;
    if (o->cached) {
        /* one stream through incremental decoding: calls (or, with absolute positions, contexts) of ctx bytes */
        if (cf_eval_cached(m, &ctx, b.data, n, ctx_len, o->reset_memory, &r)) rc = fail(cf_error_msg());
        else if (!isfinite(r.bpb)) rc = fail("eval: bits per byte is not finite (the model's weights are broken)");
        else printf("BENCH eval bpb=%.6f bytes=%lld ctx=%d path=cached reset_memory=%d tokens_per_s=%.0f peak_rss_mb=%.0f\n",
                    r.bpb, (long long)r.bytes, ctx_len, o->reset_memory, r.bytes / (r.seconds > 0 ? r.seconds : 1e-9),
                    cf_peak_rss_mb());
    } else if (cf_eval_bpb(m, &ctx, b.data, n, ctx_len, stride, batch, &r)) rc = fail(cf_error_msg());
    else if (!isfinite(r.bpb)) rc = fail("eval: bits per byte is not finite (the model's weights are broken)");
    else if (cf_model_is_recurrent(m)) {
        /* streamed in order with the recurrent state: no stride; the memory is the context */
        int ml = 0;
        for (int l = 0; l < m->n_blocks; l++)
            if (m->blocks[l].attn.cfg.type == CF_ATTN_XL && m->blocks[l].attn.cfg.mem_len > ml) ml = m->blocks[l].attn.cfg.mem_len;
        printf("BENCH eval bpb=%.6f bytes=%lld ctx=%d columns=%d attention=%s mem_len=%d tokens_per_s=%.0f "
               "peak_rss_mb=%.0f\n", r.bpb, (long long)r.bytes, ctx_len, batch, m->has_xl ? "xl" : "infini", ml,
               r.bytes / (r.seconds > 0 ? r.seconds : 1e-9), cf_peak_rss_mb());
    } else
        printf("BENCH eval bpb=%.6f bytes=%lld ctx=%d stride=%d tokens_per_s=%.0f peak_rss_mb=%.0f\n", r.bpb,
               (long long)r.bytes, ctx_len, stride, r.bytes / (r.seconds > 0 ? r.seconds : 1e-9), cf_peak_rss_mb());
    cf_ctx_free(&ctx);
out:
    cf_bytes_close(&b);
    return rc;
}

/* how each model family is evaluated on a file, by model.arch */
static int (*const eval_of[CF_ARCH_COUNT])(cf_config *c, cf_model *m, const eval_opts *o) = {
    [CF_ARCH_DECODER] = eval_bytes,
    [CF_ARCH_ENCODER_DECODER] = eval_pairs,
};

static int cmd_eval(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL;
    int ctx_len = 0, stride = 0, limit = 0, mem_len = -1, precision = -1, cached = 0, reset_memory = 0, columns = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--data") && v) { data = v; i++; }
        else if (!strcmp(a, "--mem-len")) { if (int_arg(a, v, 0, 1 << 20, &mem_len)) return 2; i++; }
        else if (!strcmp(a, "--precision")) { if (precision_arg(a, v, &precision)) return 2; i++; }
        else if (!strcmp(a, "--bytes")) { if (int_arg(a, v, 2, INT_MAX, &limit)) return 2; i++; }
        else if (!strcmp(a, "--ctx")) { if (int_arg(a, v, 1, 1 << 20, &ctx_len)) return 2; i++; }
        else if (!strcmp(a, "--stride")) { if (int_arg(a, v, 1, 1 << 20, &stride)) return 2; i++; }
        else if (!strcmp(a, "--columns")) { if (int_arg(a, v, 1, 1 << 16, &columns)) return 2; i++; }
        else if (!strcmp(a, "--cached")) cached = 1;
        else if (!strcmp(a, "--reset-memory")) cached = reset_memory = 1;
        else if (a[0] == '-' || ckpt) { fprintf(stderr, "cformer: eval: unexpected argument \"%s\"\n", a); return 2; }
        else ckpt = a;
    }
    if (!ckpt) return fail("eval: missing CKPT.h5");
    if (!data) return fail("eval: missing --data FILE");
    cf_config c;
    cf_model m;
    if (load_ckpt(ckpt, &c, &m, NULL)) return 2;
    if (precision >= 0) c.train.precision = precision;   /* default: the precision the model trained in */
    eval_opts o = {data, ctx_len, stride, limit, mem_len, cached, reset_memory, columns};
    int rc = eval_of[c.model.arch](&c, &m, &o);
    cf_model_free(&m);
    return rc;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* what the sampler hands out as it goes: the bytes to stdout, at once, and when they came */
typedef struct sample_out {
    int64_t total;              /* bytes emitted by this sample */
    int64_t n_new;              /* bytes asked for */
    double  t0, t_first_kb, t_last_kb_start;   /* seconds: start, 1024th byte, byte n_new - 1024 */
} sample_out;

static void sample_emit(void *arg, const uint8_t *bytes, int n) {
    sample_out *so = arg;
    fwrite(bytes, 1, (size_t)n, stdout);
    fflush(stdout);
    int64_t before = so->total;
    so->total += n;
    double t = now_s();
    if (before < 1024 && so->total >= 1024) so->t_first_kb = t;
    if (before < so->n_new - 1024 && so->total >= so->n_new - 1024) so->t_last_kb_start = t;
}

/* the model's attention types, "full" or "xl,full" */
static void attn_types(const cf_model_config *c, char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < c->n_attn; i++)
        snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", i ? "," : "", cf_attn_kind_names[c->attn[i].type]);
}

static int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = NULL, *prompt_file = NULL, *stop = NULL;
    int tokens = 256, top_k = 0, seed = 1, precision = -1, n_samples = 1, span = 0, slide = 0, uncached = 0;
    float temperature = 1.0f, top_p = 1.0f;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--prompt") && v) { prompt = v; i++; }
        else if (!strcmp(a, "--prompt-file") && v) { prompt_file = v; i++; }
        else if (!strcmp(a, "--stop") && v) { stop = v; i++; }
        else if (!strcmp(a, "--tokens")) { if (int_arg(a, v, 1, 1 << 24, &tokens)) return 2; i++; }
        else if (!strcmp(a, "--top-k")) { if (int_arg(a, v, 0, 1 << 20, &top_k)) return 2; i++; }
        else if (!strcmp(a, "--seed")) { if (int_arg(a, v, 0, INT_MAX, &seed)) return 2; i++; }
        else if (!strcmp(a, "--n")) { if (int_arg(a, v, 1, 1 << 20, &n_samples)) return 2; i++; }
        else if (!strcmp(a, "--span")) { if (int_arg(a, v, 1, 1 << 20, &span)) return 2; i++; }
        else if (!strcmp(a, "--slide")) { if (int_arg(a, v, 1, 1 << 20, &slide)) return 2; i++; }
        else if (!strcmp(a, "--temperature")) { if (float_arg(a, v, &temperature)) return 2; i++; }
        else if (!strcmp(a, "--top-p")) {
            if (float_arg(a, v, &top_p)) return 2;
            if (top_p <= 0 || top_p > 1) { fprintf(stderr, "cformer: --top-p: expected a number in (0, 1], got \"%s\"\n", v); return 2; }
            i++;
        }
        else if (!strcmp(a, "--precision")) { if (precision_arg(a, v, &precision)) return 2; i++; }
        else if (!strcmp(a, "--uncached")) uncached = 1;
        else if (a[0] == '-' || ckpt) { fprintf(stderr, "cformer: sample: unexpected argument \"%s\"\n", a); return 2; }
        else ckpt = a;
    }
    if (!ckpt) return fail("sample: missing CKPT.h5");
    if (prompt && prompt_file) return fail("sample: --prompt and --prompt-file exclude each other");
    if (stop && !*stop) return fail("--stop: empty");
    char *file_text = NULL;
    size_t n_file = 0;
    if (prompt_file) {
        FILE *f = fopen(prompt_file, "rb");
        if (!f) {
            char msg[512];
            snprintf(msg, sizeof msg, "--prompt-file: cannot open %s: %s", prompt_file, strerror(errno));
            return fail(msg);
        }
        file_text = cf_xmalloc(1000001);
        n_file = fread(file_text, 1, 1000001, f);
        fclose(f);
        if (n_file > 1000000) { free(file_text); return fail("--prompt-file: longer than 1000000 bytes"); }
    }
    cf_config c;
    cf_model m;
    if (load_ckpt(ckpt, &c, &m, NULL)) { free(file_text); return 2; }
    if (strcmp(m.family->generator, "sample")) {
        char msg[128];
        snprintf(msg, sizeof msg, "sample: an %s model generates with cformer %s",
                 m.family->title, m.family->generator);
        cf_model_free(&m);
        free(file_text);
        return fail(msg);
    }
    const char *text = prompt_file ? file_text : prompt ? prompt : "";
    int n_prompt = prompt_file ? (int)n_file : (int)strlen(text), rc = 0;
    char msg[256] = "";
    int absolute = !m.has_xl && cf_pos_has_table(c.model.position);
    if (n_prompt > 1000000) snprintf(msg, sizeof msg, "--prompt: longer than 1000000 bytes");
    for (int i = 0; !msg[0] && i < n_prompt; i++)
        if ((uint8_t)text[i] >= c.model.vocab_size)
            snprintf(msg, sizeof msg, "%s: byte %d at offset %d is not a token of the model's vocab_size %d",
                     prompt_file ? "--prompt-file" : "--prompt", (uint8_t)text[i], i, c.model.vocab_size);
    if (!msg[0] && span && absolute && !cf_model_is_recurrent(&m) && span > c.model.max_seq_len)
        snprintf(msg, sizeof msg, "--span: %d exceeds the model's max_seq_len %d", span, c.model.max_seq_len);
    if (!msg[0] && span && cf_model_is_recurrent(&m) && absolute && span > c.model.max_seq_len)
        snprintf(msg, sizeof msg, "--span: %d exceeds the model's max_seq_len %d", span, c.model.max_seq_len);
    if (msg[0]) { cf_model_free(&m); free(file_text); return fail(msg); }
    /* a recurrent model generates in calls of its streamed evaluation's length */
    if (!span && cf_model_is_recurrent(&m)) span = c.eval.ctx;
    if (slide && span && slide > span) slide = span;
    int W = c.model.max_seq_len;
    cf_ctx ctx;
    if (cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, 1, W), 1 << 20)) {
        cf_model_free(&m);
        free(file_text);
        return fail(cf_error_msg());
    }
    /* bf16 rounds the operands of the full forward's products (--uncached); the cached step's
     * products are matrix-vector products, which read each weight once and stay fp32 at either
     * precision, so a cached bf16 sample is the fp32 sample (docs/architecture.md section 20) */
    if (precision == CF_PRECISION_BF16) ctx.bf16 = 1;
    uint8_t *out = cf_xmalloc((size_t)n_prompt + (size_t)tokens + 1);
    char types[128];
    attn_types(&c.model, types, sizeof types);
    int64_t total = 0;
    double t0 = now_s(), first_kb = 0, last_kb = 0, cache_mb = 0;
    for (int s = 0; s < n_samples && !rc; s++) {
        memcpy(out, text, (size_t)n_prompt);
        fwrite(out, 1, (size_t)n_prompt, stdout);
        sample_out so = {.n_new = tokens, .t0 = now_s()};
        cf_sample_opts o = cf_sample_defaults();
        o.temperature = temperature;
        o.top_k = top_k;
        o.top_p = top_p;
        o.seed = (uint64_t)seed + (uint64_t)s;
        o.span = span;
        o.slide = slide;
        o.stop = stop;
        o.uncached = uncached;
        o.emit = sample_emit;
        o.emit_arg = &so;
        int made = cf_sample(&m, &ctx, out, n_prompt, tokens, &o);
        if (made < 0) { rc = fail(cf_error_msg()); break; }
        fputc('\n', stdout);
        fflush(stdout);
        double t1 = now_s();
        total += made;
        cache_mb = o.cache_bytes / 1048576.0;
        if (tokens >= 2048 && made == tokens) {
            first_kb += so.t_first_kb - so.t0;
            last_kb += t1 - so.t_last_kb_start;
        }
    }
    if (!rc) {
        double dt = now_s() - t0;
        /* the context: a recurrent model's call, a bounded one's window, or none (window, linear,
         * performer without positions read an unbounded stream) */
        char ctx_s[32];
        if (span || absolute) snprintf(ctx_s, sizeof ctx_s, "%d", span ? span : W);
        else snprintf(ctx_s, sizeof ctx_s, "unbounded");
        fprintf(stderr, "BENCH sample variant=%s ctx=%s bytes=%lld samples=%d bytes_per_s=%.1f cached=%d threads=%d "
                "cache_mb=%.2f peak_rss_mb=%.1f", types, ctx_s, (long long)total, n_samples,
                total / (dt > 0 ? dt : 1e-9), !uncached, cf_num_threads(), cache_mb,
                cf_peak_rss_mb());
        if (first_kb > 0) fprintf(stderr, " first_1k_s=%.4f last_1k_s=%.4f", first_kb / n_samples, last_kb / n_samples);
        fputc('\n', stderr);
    }
    free(out);
    free(file_text);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    return rc;
}

static int cmd_info(int argc, char **argv) {
    const char *ckpt = NULL;
    int verify = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        if (!strcmp(argv[i], "--verify")) { verify = 1; continue; }
        if (argv[i][0] == '-' || ckpt) { fprintf(stderr, "cformer: info: unexpected argument \"%s\"\n", argv[i]); return 2; }
        ckpt = argv[i];
    }
    if (!ckpt) return fail("info: missing CKPT.h5");
    if (verify) {   /* the checksums alone: nothing is parsed */
        int sealed;
        if (cf_ckpt_verify(ckpt, &sealed)) return fail(cf_error_msg());
        if (!sealed) return fail("info --verify: the checkpoint has no checksums (written by an earlier cformer)");
        printf("%s: checksums match\n", ckpt);
        return 0;
    }
    cf_config c;
    cf_model m;
    cf_train_state s;
    if (load_ckpt(ckpt, &c, &m, &s)) return 2;
    printf("checkpoint   %s (%s version %d)\n", ckpt, CF_CKPT_FORMAT, CF_CKPT_VERSION);
    printf("step         %lld of %d\n", (long long)s.step, c.train.steps);
    printf("tokens seen  %lld\n", (long long)s.tokens_seen);
    if (isfinite(s.best_valid_bpb)) printf("best valid   %.6f bpb\n", s.best_valid_bpb);
    else printf("best valid   none (no validation yet)\n");
    printf("sampler      %s, batch %d x %d, next batch %llu, seed %llu\n",
           s.sampling == CF_SAMPLE_ORDERED ? "ordered" : "random", s.batch_size, s.seq_len,
           (unsigned long long)s.next_batch, (unsigned long long)s.seed);
    printf("parameters\n");
    int64_t total = 0;
    for (int i = 0; i < m.params.n; i++) {
        const cf_tensor *t = m.params.t[i];
        printf("  %-32s %-14s %10lld\n", t->name, cf_shape_str(t), (long long)t->numel);
        total += t->numel;
    }
    printf("  %-32s %-14s %10lld\n", "total", "", (long long)total);
    char *json = cf_config_to_json(&c);
    printf("config\n%s\n", json);
    free(json);
    cf_model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    cf_cli_omp_wait_default(argv);
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "--version")) { printf("cformer %s (gemm: %s)\n", CF_VERSION, cf_gemm_isa()); return 0; }
    if (!strcmp(cmd, "train") || !strcmp(cmd, "bench")) {
        /* under mpirun, one rank of a data-parallel job (dist.h); alone, rank 0 of 1 */
        if (cf_dist_init(&argc, &argv)) return fail(cf_error_msg());
        int rc = cmd_train_or_bench(argc - 2, argv + 2, !strcmp(cmd, "bench"));
        cf_dist_finalize();
        return rc;
    }
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "sample")) return cmd_sample(argc - 2, argv + 2);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "translate")) return cmd_translate(argc - 2, argv + 2);
    fprintf(stderr, "cformer: unknown command \"%s\" (see cformer --help)\n", cmd);
    return 2;
}
