/* cf_gemm_bf16, every kernel this machine runs, against cf_gemm_bf16_ref: every layout on awkward
 * sizes (1, odd, k off every multiple of 2, 16 and 32, large k), alpha and beta, padded leading
 * dimensions, NaN and infinity, determinism at 1 to 4 threads and across calls, calls from a
 * parallel region; the portable kernel bitwise against avx512bf16; cf_bf16_round; CF_BF16_KERNEL.
 *
 * The bound. The reference sums the bf16-rounded products exactly enough (double) and rounds
 * once, so what separates a kernel from it is fp32 summation alone: per element at most one
 * rounding per product, and per k block at most two more (alpha * sum, + C; beta * C once), over
 * at most ceil(k / 128) blocks (no kernel cuts a block shorter than 128), plus the reference's
 * own final rounding. With u = 2^-24 and n = k + 2 ceil(k / 128) + 2 roundings,
 *     |C - ref| <= gamma_n (|alpha| sum_p |a_ip| |b_pj| + |beta| |c_ij|), gamma_n = n u / (1 - n u)
 * where a and b are the rounded operands (the sum is cf_gemm_bf16_ref of |A|, |B|, |alpha|,
 * |beta|, |C|). The test data stay far from fp32's subnormals, where a flushed result would add
 * an absolute error below 2^-126 a step. Each kernel prints its largest error over the bound. */
#include <float.h>
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <omp.h>
#include "test.h"

#define SENTINEL 12345.0f

static const char *const kernel_names[] = {"amx", "avx512bf16", "portable"};
enum { N_KERNELS = 3 };

/* data: uniform in [-1, 1]; wide: that times 2^e, e uniform in [-20, 20]; tiny: uniform times
 * 2^-63, so products and sums lie around 2^-126, where results are flushed; special: a mix of
 * subnormals, bf16 rounding ties, values near the largest and smallest normals, zeros */
enum { UNIFORM, WIDE, TINY, SPECIAL };

typedef struct {
    int ta, tb, m, n, k;
    float alpha, beta;
    int pad;        /* extra floats at the end of every row of A, B and C */
    int nan_c;      /* fill C with NaN before the call (beta must be 0) */
    int data;
} gcase;

static const char *layout(int ta, int tb) {
    static const char *names[4] = {"nn", "nt", "tn", "tt"};
    return names[ta * 2 + tb];
}

static void fill(float *x, size_t n, int data, uint64_t seed) {
    cf_rng r;
    cf_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        float u = 2.0f * cf_rng_float(&r) - 1.0f;
        if (data == WIDE) u = ldexpf(u, (int)(cf_rng_next(&r) % 41) - 20);
        else if (data == TINY) u = ldexpf(u, -63);
        else if (data == SPECIAL) {
            float s = u < 0 ? -1.0f : 1.0f;
            int e = (int)(cf_rng_next(&r) % 16) - 8;
            switch (cf_rng_next(&r) % 8) {
            case 0: u = s * ldexpf(1.0f + 0x1p-8f, e); break;      /* tie: rounds down to even */
            case 1: u = s * ldexpf(1.0f + 0x1.8p-7f, e); break;    /* tie: rounds up to even */
            case 2: u = s * ldexpf(fabsf(u), -130); break;         /* subnormal: flushed */
            case 3: u = s * ldexpf(1.0f + fabsf(u), -63 - (int)(cf_rng_next(&r) % 4)); break;
            case 4: u = s * ldexpf(1.0f + fabsf(u), 60); break;    /* products near 2^121 */
            case 5: u = 0.0f; break;
            default: break;
            }
        }
        x[i] = u;
    }
}

typedef struct {
    float *a, *b, *c0;
    int lda, ldb, ldc, arows, brows;
} operands;

static operands make_operands(const gcase *g, uint64_t seed) {
    operands o;
    o.arows = g->ta ? g->k : g->m;
    o.brows = g->tb ? g->n : g->k;
    o.lda = (g->ta ? g->m : g->k) + g->pad;
    o.ldb = (g->tb ? g->k : g->n) + g->pad;
    o.ldc = g->n + g->pad;
    size_t asz = (size_t)o.arows * o.lda + 1, bsz = (size_t)o.brows * o.ldb + 1;
    size_t csz = (size_t)g->m * o.ldc + 1;
    o.a = malloc(sizeof(float) * asz);
    o.b = malloc(sizeof(float) * bsz);
    o.c0 = malloc(sizeof(float) * csz);
    fill(o.a, asz, g->data, seed);
    fill(o.b, bsz, g->data, seed + 1);
    fill(o.c0, csz, g->data == SPECIAL ? UNIFORM : g->data, seed + 2);
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < o.ldc; j++)
            if (j >= g->n) o.c0[(size_t)i * o.ldc + j] = SENTINEL;
            else if (g->nan_c) o.c0[(size_t)i * o.ldc + j] = NAN;
    return o;
}

static void free_operands(operands *o) { free(o->a); free(o->b); free(o->c0); }

static float *copy_c(const gcase *g, const operands *o) {
    size_t csz = (size_t)g->m * o->ldc + 1;
    float *c = malloc(sizeof(float) * csz);
    memcpy(c, o->c0, sizeof(float) * csz);
    return c;
}

/* C of cf_gemm_bf16 on the case (the caller frees) */
static float *run_ours(const gcase *g, const operands *o) {
    float *c = copy_c(g, o);
    cf_gemm_bf16(g->ta, g->tb, g->m, g->n, g->k, g->alpha, o->a, o->lda, o->b, o->ldb, g->beta,
                 c, o->ldc);
    return c;
}

static double gamma_n(int k) {
    double n = k + 2.0 * ((k + 127) / 128) + 2, u = 0x1p-24;
    return n * u / (1 - n * u);
}

/* the largest |C - ref| / bound over the case, INFINITY when a NaN or infinity of the reference
 * is missed or the row padding of C changed */
static double check_ours(const gcase *g, const operands *o, const float *c) {
    float *r = copy_c(g, o), *w = copy_c(g, o);
    cf_gemm_bf16_ref(g->ta, g->tb, g->m, g->n, g->k, g->alpha, o->a, o->lda, o->b, o->ldb,
                     g->beta, r, o->ldc);
    /* the bound's sum: the reference on magnitudes */
    size_t asz = (size_t)o->arows * o->lda, bsz = (size_t)o->brows * o->ldb;
    float *aa = malloc(sizeof(float) * (asz + 1)), *ab = malloc(sizeof(float) * (bsz + 1));
    for (size_t i = 0; i < asz; i++) aa[i] = fabsf(o->a[i]);
    for (size_t i = 0; i < bsz; i++) ab[i] = fabsf(o->b[i]);
    for (size_t i = 0; i < (size_t)g->m * o->ldc; i++) w[i] = fabsf(w[i]);
    cf_gemm_bf16_ref(g->ta, g->tb, g->m, g->n, g->k, fabsf(g->alpha), aa, o->lda, ab, o->ldb,
                     fabsf(g->beta), w, o->ldc);
    double worst = 0, gam = gamma_n(g->k);
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < o->ldc; j++) {
            size_t x = (size_t)i * o->ldc + j;
            if (j >= g->n) {
                if (c[x] != SENTINEL) worst = INFINITY;
                continue;
            }
            if (!isfinite(r[x])) {
                if (isnan(r[x]) ? !isnan(c[x]) : c[x] != r[x]) worst = INFINITY;
                continue;
            }
            double d = fabs((double)c[x] - r[x]), bound = gam * w[x];
            double ratio = d == 0 ? 0 : d / bound;     /* NaN when c is NaN: caught below */
            if (!(ratio <= worst)) worst = ratio == ratio ? ratio : INFINITY;
        }
    free(r); free(w); free(aa); free(ab);
    return worst;
}

static double worst_ratio;      /* over the current kernel's cases */
static int n_cases;

static void check_case(const char *kernel, const gcase *g, uint64_t seed) {
    operands o = make_operands(g, seed);
    float *c = run_ours(g, &o);
    double e = check_ours(g, &o, c);
    CHECK(e <= 1.0, "%s %s m=%d n=%d k=%d alpha=%g beta=%g pad=%d nan=%d data=%d: err/bound %.3g",
          kernel, layout(g->ta, g->tb), g->m, g->n, g->k, g->alpha, g->beta, g->pad, g->nan_c,
          g->data, e);
    if (e > worst_ratio) worst_ratio = e;
    n_cases++;
    free(c);
    free_operands(&o);
}

/* NaN and infinity in the operands: a NaN of op(A) makes its row of C NaN, an infinity of op(B)
 * its column infinite (or NaN where it meets the NaN or an infinity of the other sign) */
static void check_nonfinite(const char *kernel, int ta, int tb) {
    gcase g = {ta, tb, 37, 45, 70, 1.0f, 0.5f, 1, 0, UNIFORM};
    operands o = make_operands(&g, 4242);
    /* op(A)(i, p) and op(B)(p, j) in memory */
#define OPA(i, p) o.a[ta ? (size_t)(p) * o.lda + (i) : (size_t)(i) * o.lda + (p)]
#define OPB(p, j) o.b[tb ? (size_t)(j) * o.ldb + (p) : (size_t)(p) * o.ldb + (j)]
    OPA(3, 5) = NAN;
    OPA(20, 69) = -INFINITY;
    OPB(11, 7) = INFINITY;
    OPB(12, 30) = -INFINITY;
    OPB(0, 44) = NAN;
#undef OPA
#undef OPB
    float *c = run_ours(&g, &o);
    int nan_row = 1, inf_col = 1;
    for (int j = 0; j < g.n; j++) nan_row &= isnan(c[3 * o.ldc + j]) != 0;
    for (int i = 0; i < g.m; i++)
        if (i != 3 && i != 20) inf_col &= isinf(c[(size_t)i * o.ldc + 7]) != 0;
    CHECK(nan_row && inf_col, "%s %s: NaN row %d, infinite column %d", kernel, layout(ta, tb),
          nan_row, inf_col);
    double e = check_ours(&g, &o, c);
    CHECK(e <= 1.0, "%s %s with NaN and infinity: err/bound %.3g", kernel, layout(ta, tb), e);
    free(c);
    free_operands(&o);
}

/* the same case at 1 to 4 threads, twice each: bitwise the same every time */
static void check_determinism(const char *kernel, const gcase *g) {
    operands o = make_operands(g, 99);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    float *c0 = run_ours(g, &o);
    size_t bytes = sizeof(float) * (size_t)g->m * o.ldc;
    for (int th = 1; th <= 4; th++) {
        omp_set_num_threads(th);
        for (int rep = 0; rep < 2; rep++) {
            float *c1 = run_ours(g, &o);
            CHECK(memcmp(c0, c1, bytes) == 0, "%s %s m=%d n=%d k=%d threads=%d rep=%d: not bitwise "
                  "identical to 1 thread", kernel, layout(g->ta, g->tb), g->m, g->n, g->k, th, rep);
            free(c1);
        }
    }
    omp_set_num_threads(saved);
    free(c0);
    free_operands(&o);
}

static void test_kernel(const char *kernel) {
    worst_ratio = 0;
    n_cases = 0;
    /* 1, odd sizes, and +-1 around the tiles (14 and 32 rows, 32 columns); k off every multiple
     * of 2, 16 and 32 */
    static const int mn[] = {1, 2, 5, 13, 14, 15, 17, 31, 32, 33, 45};
    static const int ks[] = {1, 2, 3, 16, 17, 31, 33, 64, 95};
    static const float alphas[] = {1.0f, -0.7f, 1.3f};
    static const float betas[] = {0.0f, 1.0f, 0.5f};
    int nmn = (int)(sizeof mn / sizeof *mn), nk = (int)(sizeof ks / sizeof *ks), idx = 0;
    for (int l = 0; l < 4; l++)
        for (int im = 0; im < nmn; im++)
            for (int in = 0; in < nmn; in++)
                for (int ik = 0; ik < nk; ik++, idx++) {
                    gcase g = {l >> 1, l & 1, mn[im], mn[in], ks[ik], alphas[idx % 3],
                               betas[(idx / 3) % 3], idx % 5 == 0 ? 3 : 0, 0,
                               idx % 7 ? UNIFORM : WIDE};
                    g.nan_c = g.beta == 0.0f && idx % 2;
                    check_case(kernel, &g, (uint64_t)idx);
                }
    /* k past one block (beta once, then accumulated), large k, m or n of 1, columns cut into
     * tasks (few rows), B in several spans along k (5 x 3000 x 1500) and along n (24 x 9000) */
    static const int big[][3] = {{131, 257, 93}, {300, 70, 1100}, {37, 41, 2000}, {1, 600, 700},
                                 {600, 1, 700}, {70, 1000, 40}, {1, 1, 5000}, {200, 300, 513},
                                 {5, 3000, 1500}, {24, 9000, 600}};
    int nbig = (int)(sizeof big / sizeof *big);
    for (int s = 0; s < nbig; s++)
        for (int l = 0; l < 4; l++) {
            if (s >= nbig - 2 && l != s % 4) continue;      /* the largest in one layout each */
            gcase g = {l >> 1, l & 1, big[s][0], big[s][1], big[s][2], l == 1 ? 1.0f : 0.75f,
                       betas[(s + l) % 3], (s + l) % 2 ? 5 : 0, 0, (s + l) % 3 ? UNIFORM : WIDE};
            g.nan_c = g.beta == 0.0f;
            check_case(kernel, &g, 1000 + (uint64_t)s * 16 + l);
        }
    /* k == 0 and alpha == 0: C = beta C without reading A or B; beta == 0 still clears NaN */
    for (int bi = 0; bi < 3; bi++) {
        gcase g = {0, 1, 9, 37, 0, 1.0f, betas[bi], 2, bi == 0, UNIFORM};
        check_case(kernel, &g, 7);
        gcase z = {1, 0, 9, 37, 13, 0.0f, betas[bi], 2, bi == 0, UNIFORM};
        check_case(kernel, &z, 8);
    }
    printf("kernel=%s cases=%d max err/bound=%.3g (gamma_n = (k + 2 ceil(k/128) + 2) 2^-24)\n",
           kernel, n_cases, worst_ratio);

    for (int l = 0; l < 4; l++) check_nonfinite(kernel, l >> 1, l & 1);

    static const gcase det[] = {
        {0, 1, 131, 257, 93, 0.5f, 0.5f, 1, 0, UNIFORM},
        {1, 0, 20, 300, 800, 1.0f, 1.0f, 0, 0, WIDE},       /* few rows: the columns are cut */
        {0, 0, 523, 97, 1100, -1.0f, 0.0f, 0, 1, UNIFORM},
        {1, 1, 300, 1, 700, 1.0f, 0.5f, 2, 0, UNIFORM},
        {0, 1, 5, 3000, 1500, 1.0f, 1.0f, 0, 0, UNIFORM}};  /* two spans */
    for (int d = 0; d < (int)(sizeof det / sizeof *det); d++) check_determinism(kernel, &det[d]);

    /* calls from inside a parallel region, at the same time: each thread has its own buffers */
    double errs[4] = {0};
#pragma omp parallel for num_threads(2) schedule(static)
    for (int i = 0; i < 4; i++) {
        gcase g = {i & 1, i >> 1, 150 + i, 260, 420, 1.0f, 0.5f, 0, 0, UNIFORM};
        operands o = make_operands(&g, 500 + (uint64_t)i);
        float *c = run_ours(&g, &o);
        errs[i] = check_ours(&g, &o, c);
        free(c);
        free_operands(&o);
    }
    for (int i = 0; i < 4; i++)
        CHECK(errs[i] <= 1.0, "%s call %d inside a parallel region: err/bound %.3g", kernel, i,
              errs[i]);
}

/* vdpbf16ps's edge at the smallest normal, which the portable kernel reproduces: row e of A and
 * the column of B make the first pair (odd element first) sum to exactly 2^-126, and the second
 * pair add d_e = a_e * 2^-75; a result that is tiny once rounded to 24 bits with an unbounded
 * exponent is flushed to zero. 2^-126 - 2^-151 is a tie that rounds up to 2^-126. */
static void check_flush_edges(const char *kernel) {
    static const float a_e[] = {-0x1p-76f, -0x1.8p-76f, -0x1p-75f, -0x1.8p-75f, 0x1p-76f,
                                -0x1p-51f};
    static const float want[] = {FLT_MIN, 0.0f, 0.0f, 0.0f, FLT_MIN, 0.0f};
    enum { E = sizeof a_e / sizeof *a_e };
    float a[E][4], b[4] = {0.0f, 0x1p-63f, 0.0f, 0x1p-75f}, c[E];
    for (int e = 0; e < E; e++) {
        a[e][0] = a[e][2] = 0.0f;
        a[e][1] = 0x1p-63f;
        a[e][3] = a_e[e];
    }
    cf_gemm_bf16(0, 0, E, 1, 4, 1.0f, &a[0][0], 4, b, 1, 0.0f, c, 1);
    for (int e = 0; e < E; e++)
        CHECK(c[e] == want[e], "%s: 2^-126 + %a * 2^-75 gives %a, not %a", kernel, a_e[e], c[e],
              want[e]);
}

/* bitwise equal, NaN to any NaN */
static int same_bits(const float *x, const float *y, size_t n, size_t *where) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&x[i], &y[i], sizeof(float)) && !(isnan(x[i]) && isnan(y[i]))) {
            *where = i;
            return 0;
        }
    return 1;
}

/* the portable kernel against avx512bf16, on data that reach every corner of the arithmetic:
 * rounding ties, subnormals, flushed results, overflow */
static void test_portable_bitwise(void) {
    static const gcase cases[] = {
        {0, 1, 131, 257, 93, 1.0f, 0.0f, 0, 0, UNIFORM},
        {0, 0, 45, 77, 1100, -0.7f, 0.5f, 3, 0, UNIFORM},
        {1, 0, 33, 65, 513, 1.3f, 1.0f, 0, 0, WIDE},
        {1, 1, 17, 31, 97, 1.0f, 0.5f, 1, 0, WIDE},
        {0, 1, 64, 64, 600, 1.0f, 0.0f, 0, 0, TINY},
        {1, 0, 29, 40, 333, 0.5f, 1.0f, 0, 0, TINY},
        {0, 0, 50, 50, 257, 1.0f, 0.0f, 0, 0, SPECIAL},
        {1, 1, 19, 70, 1030, -1.0f, 0.5f, 2, 0, SPECIAL},
        {0, 1, 1, 300, 700, 1.0f, 0.0f, 0, 0, SPECIAL},
        {1, 0, 300, 1, 64, 1.0f, 1.0f, 0, 0, TINY}};
    int n = (int)(sizeof cases / sizeof *cases), agree = 0;
    for (int i = 0; i < n; i++) {
        const gcase *g = &cases[i];
        operands o = make_operands(g, 7000 + (uint64_t)i);
        CHECK(cf_gemm_bf16_set_kernel("portable") == 0, "%s", cf_error_msg());
        float *cp = run_ours(g, &o);
        CHECK(cf_gemm_bf16_set_kernel("avx512bf16") == 0, "%s", cf_error_msg());
        float *cv = run_ours(g, &o);
        size_t at = 0;
        int same = same_bits(cp, cv, (size_t)g->m * o.ldc, &at);
        CHECK(same, "portable vs avx512bf16 %s m=%d n=%d k=%d data=%d: element %zu %a vs %a",
              layout(g->ta, g->tb), g->m, g->n, g->k, g->data, at, cp[at], cv[at]);
        agree += same;
        free(cp);
        free(cv);
        free_operands(&o);
    }
    printf("portable vs avx512bf16: %d of %d cases bitwise equal\n", agree, n);
}

static void test_round(void) {
    static const float in[] = {1.0f, 1.0f + 0x1p-8f, 1.0f + 0x1.8p-7f, -(1.0f + 0x1p-7f + 0x1p-9f),
                               0x1p-130f, -0x1p-140f, FLT_MIN, FLT_MAX, 0x1.fcp127f, -0.0f,
                               INFINITY, 3.14159265f};
    static const float out[] = {1.0f, 1.0f, 1.0f + 0x1p-6f, -(1.0f + 0x1p-7f),
                                0.0f, -0.0f, FLT_MIN, INFINITY, 0x1.fcp127f, -0.0f,
                                INFINITY, 3.140625f};
    for (int i = 0; i < (int)(sizeof in / sizeof *in); i++) {
        float r = cf_bf16_round(in[i]);
        CHECK(memcmp(&r, &out[i], sizeof r) == 0, "cf_bf16_round(%a) = %a, not %a", in[i], r,
              out[i]);
    }
    CHECK(isnan(cf_bf16_round(NAN)), "NaN rounds to NaN");
    uint32_t snan_bits = 0x7f800001u;     /* a NaN whose payload lies in the dropped bits */
    float snan;
    memcpy(&snan, &snan_bits, sizeof snan);
    CHECK(isnan(cf_bf16_round(snan)), "a signalling NaN rounds to NaN, not infinity");
}

/* CF_BF16_KERNEL, in child processes forked before this one has called cf_gemm_bf16_kernel (the
 * choice is made once) or started a thread: a kernel this machine runs is taken; an unknown one,
 * or one this machine cannot run, stops the program with a failing status */
static const char *env_name(int i) { return i < N_KERNELS ? kernel_names[i] : "bogus"; }

static void env_children(int code[N_KERNELS + 1]) {
    for (int i = 0; i <= N_KERNELS; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("CF_BF16_KERNEL", env_name(i), 1);
            if (!freopen("/dev/null", "w", stderr)) _exit(3);
            _exit(strcmp(cf_gemm_bf16_kernel(), env_name(i)) ? 4 : 0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        code[i] = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
}

static void check_env(const int code[N_KERNELS + 1]) {
    for (int i = 0; i <= N_KERNELS; i++) {
        int runs = i < N_KERNELS && cf_gemm_bf16_set_kernel(env_name(i)) == 0;
        CHECK(runs ? code[i] == 0 : code[i] == EXIT_FAILURE,
              "CF_BF16_KERNEL=%s: exit %d (runs here: %d)", env_name(i), code[i], runs);
    }
}

int main(void) {
    int env_code[N_KERNELS + 1];
    env_children(env_code);
    const char *dflt = cf_gemm_bf16_kernel();
    printf("cf_gemm_bf16 kernel: %s\n", dflt);
    check_env(env_code);
    test_round();
    int have[N_KERNELS];
    for (int i = 0; i < N_KERNELS; i++) {
        have[i] = cf_gemm_bf16_set_kernel(kernel_names[i]) == 0;
        if (!have[i]) printf("SKIP kernel %s: %s\n", kernel_names[i], cf_error_msg());
        else test_kernel(kernel_names[i]);
    }
    CHECK(have[2], "the portable kernel runs everywhere");
    for (int i = 1; i < N_KERNELS; i++)       /* the edges of vdpbf16ps's arithmetic */
        if (have[i] && cf_gemm_bf16_set_kernel(kernel_names[i]) == 0)
            check_flush_edges(kernel_names[i]);
    if (have[1]) test_portable_bitwise();
    else printf("SKIP portable vs avx512bf16 bitwise: no AVX512-BF16 here\n");
    CHECK(cf_gemm_bf16_set_kernel(dflt) == 0, "%s", cf_error_msg());
    TEST_MAIN_END();
}
