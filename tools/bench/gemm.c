/* cf_gemm against OpenBLAS's cblas_sgemm on the shapes of a linear layer's three products:
 *   nt  forward      Y  = X W^T    A = X  [m, k],  B = W [n, k]
 *   nn  grad input   dX = dY W     A = dY [m, k],  B = W [k, n]
 *   tn  grad weight  dW = dY^T X   A = dY [k, m],  B = X [k, n]
 * (m, n, k name the product C[m, n] = op(A) op(B) in every layout), at 1 and 2 threads.
 * The libraries take turns in short blocks of calls, several rounds per case, so that the noise of
 * a shared machine falls on both alike; gflops are medians over all calls, and ratio is the median
 * over rounds of (OpenBLAS's median time / ours) within the round, steadier than a ratio of
 * medians. Each block is followed by a pause long enough for that library's idle threads to stop
 * spinning: OpenBLAS's keep a core about 40% busy for ~0.1 s after a call (sched_yield loop,
 * 2^28 cycles), OpenMP's spin briefly too, and either would otherwise tax the other library's
 * next block. One BENCH line per case; the argument, if any, is the seconds of calls per case. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
#include "cformer/cformer.h"
#include "bench.h"
#ifdef CF_HAVE_OPENBLAS
#include <cblas.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

typedef struct { int ta, tb; float beta; } layout;

/* gradients accumulate (beta 1), the forward overwrites (beta 0), as the ops will call it */
static double run_ours(layout l, int m, int n, int k, const float *a, const float *b, float *c) {
    double t = now();
    cf_gemm(l.ta, l.tb, m, n, k, 1.0f, a, l.ta ? m : k, b, l.tb ? k : n, l.beta, c, n);
    return now() - t;
}

#ifdef CF_HAVE_OPENBLAS
static double run_blas(layout l, int m, int n, int k, const float *a, const float *b, float *c) {
    double t = now();
    cblas_sgemm(CblasRowMajor, l.ta ? CblasTrans : CblasNoTrans, l.tb ? CblasTrans : CblasNoTrans,
                m, n, k, 1.0f, a, l.ta ? m : k, b, l.tb ? k : n, l.beta, c, n);
    return now() - t;
}

static void pause_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
#endif

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 1.0;
    static const int shapes[][3] = {{1024, 1024, 1024}, {2048, 768, 256}, {2048, 1024, 256},
                                    {2048, 256, 1024}, {2048, 2048, 512}, {2048, 512, 2048}};
    static const struct { const char *name; layout l; } layouts[] = {
        {"nt", {0, 1, 0.0f}}, {"nn", {0, 0, 1.0f}}, {"tn", {1, 0, 1.0f}}};
    enum { ROUNDS = 5, MAX_BLOCK = 8, PAUSE_OURS_MS = 30, PAUSE_BLAS_MS = 130 };
    size_t maxe = 2048 * 2048;
    float *a = malloc(maxe * sizeof(float)), *b = malloc(maxe * sizeof(float));
    float *c = malloc(maxe * sizeof(float));
    if (!a || !b || !c) { fprintf(stderr, "bench gemm: out of memory\n"); return 1; }
    for (size_t i = 0; i < maxe; i++) {
        a[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        b[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
        c[i] = 0.0f;
    }
    printf("# cf_gemm isa=%s", cf_gemm_isa());
#ifdef CF_HAVE_OPENBLAS
    printf(", %s", openblas_get_config());
#endif
    printf("\n");
    for (int th = 1; th <= 2; th++) {
        omp_set_num_threads(th);
#ifdef CF_HAVE_OPENBLAS
        openblas_set_num_threads(th);
#endif
        for (int s = 0; s < (int)(sizeof shapes / sizeof *shapes); s++)
            for (int li = 0; li < 3; li++) {
                int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                layout l = layouts[li].l;
                double flops = 2.0 * m * n * k;
                /* warm-up (packing buffers, thread pools, page faults of C), which sizes the run */
                double t_pair = run_ours(l, m, n, k, a, b, c);
#ifdef CF_HAVE_OPENBLAS
                t_pair += run_blas(l, m, n, k, a, b, c);
                pause_ms(PAUSE_BLAS_MS);
#endif
                int block = (int)(budget / t_pair / ROUNDS);
                block = block < 1 ? 1 : block > MAX_BLOCK ? MAX_BLOCK : block;
                double t_ours[ROUNDS * MAX_BLOCK], t_blas[ROUNDS * MAX_BLOCK], ratio[ROUNDS];
                int calls = 0;
                for (int r = 0; r < ROUNDS; r++, calls += block) {
                    double *to = t_ours + calls, *tb = t_blas + calls, so[MAX_BLOCK], sb[MAX_BLOCK];
                    for (int i = 0; i < block; i++) so[i] = to[i] = run_ours(l, m, n, k, a, b, c);
#ifdef CF_HAVE_OPENBLAS
                    pause_ms(PAUSE_OURS_MS);
                    for (int i = 0; i < block; i++) sb[i] = tb[i] = run_blas(l, m, n, k, a, b, c);
                    pause_ms(PAUSE_BLAS_MS);
                    ratio[r] = median(sb, block) / median(so, block);
#else
                    (void)tb, (void)sb, (void)so;
#endif
                }
                printf("BENCH gemm m=%d n=%d k=%d layout=%s threads=%d gflops=%.1f", m, n, k,
                       layouts[li].name, th, flops / median(t_ours, calls) * 1e-9);
#ifdef CF_HAVE_OPENBLAS
                printf(" openblas_gflops=%.1f ratio=%.2f\n", flops / median(t_blas, calls) * 1e-9,
                       median(ratio, ROUNDS));
#else
                (void)ratio;
                printf(" openblas_gflops=na ratio=na\n");
#endif
                fflush(stdout);
            }
    }
    free(a); free(b); free(c);
    return 0;
}
