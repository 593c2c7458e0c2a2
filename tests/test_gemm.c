/* cf_gemm against cf_gemm_ref: every layout on awkward sizes (tile edges, primes, 1), alpha and
 * beta (beta == 0 over NaN), padded leading dimensions, blocking boundaries, determinism. */
#include <math.h>
#include <string.h>
#include <omp.h>
#include "test.h"

#define SENTINEL 12345.0f

typedef struct {
    int ta, tb, m, n, k;
    float alpha, beta;
    int pad;        /* extra floats at the end of every row of A, B and C */
    int nan_c;      /* fill C with NaN before the call (beta must be 0) */
} gcase;

static const char *layout(int ta, int tb) {
    static const char *names[4] = {"nn", "nt", "tn", "tt"};
    return names[ta * 2 + tb];
}

/* runs one case through cf_gemm (into *out, allocated here, ldc-strided) and, when with_ref, the
 * reference; returns the error relative to max(max |ref|, 1), or INFINITY when the row padding of
 * C changed (without the reference, only the padding is checked) */
static double run_case(const gcase *g, uint64_t seed, float **out, int with_ref) {
    int ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
    int br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    int lda = ac + g->pad, ldb = bc + g->pad, ldc = g->n + g->pad;
    float *a = malloc(sizeof(float) * ((size_t)ar * lda + 1));
    float *b = malloc(sizeof(float) * ((size_t)br * ldb + 1));
    size_t csz = (size_t)g->m * ldc + 1;
    float *c = malloc(sizeof(float) * csz), *r = malloc(sizeof(float) * csz);
    t_fill_uniform(a, (int64_t)ar * lda, -1, 1, seed);
    t_fill_uniform(b, (int64_t)br * ldb, -1, 1, seed + 1);
    t_fill_uniform(c, (int64_t)csz, -1, 1, seed + 2);
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < ldc; j++)
            if (j >= g->n) c[(size_t)i * ldc + j] = SENTINEL;
            else if (g->nan_c) c[(size_t)i * ldc + j] = NAN;
    memcpy(r, c, sizeof(float) * csz);
    cf_gemm(g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta, c, ldc);
    if (with_ref)
        cf_gemm_ref(g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta, r, ldc);
    double num = 0, den = 1;
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < ldc; j++) {
            float x = c[(size_t)i * ldc + j], y = r[(size_t)i * ldc + j];
            if (j >= g->n) { if (x != SENTINEL) num = INFINITY; continue; }
            if (!with_ref) continue;
            double d = fabs((double)x - y);
            if (!(d <= num)) num = d == d ? d : INFINITY;
            if (fabs(y) > den) den = fabs(y);
        }
    free(a); free(b); free(r);
    if (out) *out = c; else free(c);
    return num / den;
}

static double tol(int k) { return 1e-5 * sqrt(k > 1 ? k : 1); }

static void check_case(const gcase *g, uint64_t seed) {
    double e = run_case(g, seed, NULL, 1);
    CHECK(e <= tol(g->k), "%s m=%d n=%d k=%d alpha=%g beta=%g pad=%d nan=%d: rel err %.3g > %.3g",
          layout(g->ta, g->tb), g->m, g->n, g->k, g->alpha, g->beta, g->pad, g->nan_c, e, tol(g->k));
}

/* the same case twice, and at several team sizes: bitwise the same every time */
static void check_determinism(gcase g) {
    float *c0, *c1;
    int ldc = g.n + g.pad;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    run_case(&g, 99, &c0, 0);
    for (int th = 1; th <= 4; th++) {
        omp_set_num_threads(th);
        for (int rep = 0; rep < 2; rep++) {
            run_case(&g, 99, &c1, 0);
            CHECK(memcmp(c0, c1, sizeof(float) * (size_t)g.m * ldc) == 0,
                  "%s m=%d n=%d k=%d threads=%d rep=%d: not bitwise identical to 1 thread",
                  layout(g.ta, g.tb), g.m, g.n, g.k, th, rep);
            free(c1);
        }
    }
    free(c0);
    omp_set_num_threads(saved);
}

int main(void) {
    printf("cf_gemm isa: %s\n", cf_gemm_isa());
    CHECK(!strcmp(cf_gemm_isa(), "avx512") || !strcmp(cf_gemm_isa(), "avx2") ||
          !strcmp(cf_gemm_isa(), "portable"), "isa %s", cf_gemm_isa());

    /* 1, primes, and +-1 around every micro-tile size: MR 9/6/4 and NR 48/16/8 (AVX-512, AVX2,
     * portable), and the 16-float vectors AVX-512 trims the last B panel to */
    static const int sizes[] = {1, 3, 5, 7, 8, 9, 10, 15, 17, 31, 33, 47, 49, 67};
    static const float alphas[] = {1.0f, -0.7f, 1.3f};
    static const float betas[] = {0.0f, 1.0f, 0.5f};
    int ns = (int)(sizeof sizes / sizeof *sizes), idx = 0;
    for (int l = 0; l < 4; l++)
        for (int im = 0; im < ns; im++)
            for (int in = 0; in < ns; in++)
                for (int ik = 0; ik < ns; ik++, idx++) {
                    /* rotate alpha, beta, padding and NaN-filled C through the sweep */
                    gcase g = {l >> 1, l & 1, sizes[im], sizes[in], sizes[ik],
                               alphas[idx % 3], betas[(idx / 3) % 3], (idx % 5 == 0) ? 3 : 0, 0};
                    g.nan_c = g.beta == 0.0f && (idx % 2);
                    check_case(&g, (uint64_t)idx);
                }

    /* larger non-multiples, and every blocking boundary: k past KC (beta applied once, then
     * accumulated), m past one task's rows, n past NC, tasks cut across columns (70 x 1000 x 20
     * at 2 threads), B in several super-blocks along k and n (3 x 700 x 3100), m or n of 1 */
    static const int big[][3] = {{131, 257, 93}, {1100, 45, 50}, {70, 1000, 20}, {37, 41, 800},
                                 {40, 50, 777}, {1, 2000, 300}, {2000, 1, 300}, {300, 300, 1},
                                 {1, 1, 5000}, {24, 1030, 33}, {3, 700, 3100}};
    for (int s = 0; s < (int)(sizeof big / sizeof *big); s++)
        for (int l = 0; l < 4; l++)
            for (int bi = 0; bi < 3; bi++) {
                gcase g = {l >> 1, l & 1, big[s][0], big[s][1], big[s][2], bi == 1 ? 1.0f : 0.75f,
                           betas[bi], (s + l + bi) % 2 ? 5 : 0, bi == 0};
                check_case(&g, 1000 + (uint64_t)s * 16 + l * 4 + bi);
            }

    /* k == 0 and alpha == 0: C = beta C without reading A or B; beta == 0 still clears NaN */
    for (int bi = 0; bi < 3; bi++) {
        gcase g = {0, 1, 9, 37, 0, 1.0f, betas[bi], 2, bi == 0};
        check_case(&g, 7);
        gcase z = {1, 0, 9, 37, 13, 0.0f, betas[bi], 2, bi == 0};
        check_case(&z, 8);
    }

    gcase d1 = {0, 1, 131, 257, 93, 0.5f, 0.5f, 1, 0};
    gcase d2 = {1, 0, 20, 300, 800, 1.0f, 1.0f, 0, 0};   /* few rows: the columns are split */
    gcase d3 = {0, 0, 523, 97, 410, -1.0f, 0.0f, 0, 1};
    check_determinism(d1);
    check_determinism(d2);
    check_determinism(d3);
    gcase d4 = {0, 0, 3000, 1, 700, 1.0f, 0.5f, 0, 0};  /* matrix times vector, both ways */
    gcase d5 = {1, 1, 1, 5000, 300, 1.0f, 0.0f, 2, 1};
    gcase d6 = {0, 1, 5, 700, 3100, 1.0f, 1.0f, 0, 0};  /* several B super-blocks */
    check_determinism(d4);
    check_determinism(d5);
    check_determinism(d6);

    /* calls from inside a parallel region, at the same time: each thread has its own buffers */
    double errs[4] = {0};
#pragma omp parallel for num_threads(2) schedule(static)
    for (int i = 0; i < 4; i++) {
        gcase g = {i & 1, i >> 1, 150 + i, 260, 420, 1.0f, 0.5f, 0, 0};
        errs[i] = run_case(&g, 500 + (uint64_t)i, NULL, 1);
    }
    for (int i = 0; i < 4; i++)
        CHECK(errs[i] <= tol(420), "call %d inside a parallel region: rel err %.3g", i, errs[i]);
    TEST_MAIN_END();
}
