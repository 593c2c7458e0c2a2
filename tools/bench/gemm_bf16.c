/* cf_gemm_bf16, kernel by kernel, beside cf_gemm (fp32) on the linear-layer shapes of a d256 and a
 * d512 model with B * T = 2048 rows (m, n, k name the product C[m, n] = op(A) op(B) in every
 * layout):
 *   nt  forward      Y  = X W^T      nn  grad input   dX = dY W      tn  grad weight  dW = dY^T X
 * at OMP_NUM_THREADS threads. The kernels take turns in short blocks of calls, several rounds per
 * case, so that the noise of a shared machine falls on all alike; gflops are medians over all of
 * a kernel's calls (2 m n k flops a call, whatever the precision), speedup is over fp32.
 * Arguments: the seconds of calls per case and kernel (default 0.3), then the bf16 kernels to run
 * (default: every one this machine runs but portable, the slow fallback). One BENCH line per case
 * and kernel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "cformer/core.h"
#include "cformer/kernels.h"

/* the median of v[0 .. n), sorting v */
static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return 0.5 * (v[(n - 1) / 2] + v[n / 2]);
}

typedef struct { const char *name; int ta, tb; float beta; } layout;

/* one call of kernel `kernel` (NULL: fp32 cf_gemm); gradients accumulate (beta 1), the forward
 * overwrites (beta 0), as the ops call them */
static double run(const char *kernel, const layout *l, int m, int n, int k, const float *a,
                  const float *b, float *c) {
    if (kernel && cf_gemm_bf16_set_kernel(kernel)) {
        fprintf(stderr, "bench gemm_bf16: %s\n", cf_error_msg());
        exit(1);
    }
    int lda = l->ta ? m : k, ldb = l->tb ? k : n;
    double t = omp_get_wtime();
    if (kernel) cf_gemm_bf16(l->ta, l->tb, m, n, k, 1.0f, a, lda, b, ldb, l->beta, c, n);
    else cf_gemm(l->ta, l->tb, m, n, k, 1.0f, a, lda, b, ldb, l->beta, c, n);
    return omp_get_wtime() - t;
}

int main(int argc, char **argv) {
    double budget = argc > 1 ? atof(argv[1]) : 0.3;
    enum { MAX_KERNELS = 4, ROUNDS = 5, MAX_BLOCK = 8 };
    /* runners[0] is fp32 (NULL), then the bf16 kernels */
    const char *runners[MAX_KERNELS + 1] = {NULL};
    int nr = 1;
    if (argc > 2) {
        for (int i = 2; i < argc && nr <= MAX_KERNELS; i++) runners[nr++] = argv[i];
    } else {
        static const char *const hw[] = {"amx", "avx512bf16"};
        for (int i = 0; i < 2; i++)
            if (cf_gemm_bf16_set_kernel(hw[i]) == 0) runners[nr++] = hw[i];
        if (nr == 1) runners[nr++] = "portable";     /* nothing faster here: measure the fallback */
    }
    /* (m, n, k): d256: qkv 768 x 256, out 256 x 256, mlp 1024 x 256 and 256 x 1024; d512: qkv
     * 1536 x 512, out 512 x 512, mlp 2048 x 512 and 512 x 2048 */
    static const int shapes[][3] = {{2048, 768, 256}, {2048, 256, 256}, {2048, 1024, 256},
                                    {2048, 256, 1024}, {2048, 1536, 512}, {2048, 512, 512},
                                    {2048, 2048, 512}, {2048, 512, 2048}};
    static const layout layouts[] = {{"nt", 0, 1, 0.0f}, {"nn", 0, 0, 1.0f}, {"tn", 1, 0, 1.0f}};
    /* operands of up to 2048 x 2048, uniform in [-0.5, 0.5) */
    const size_t most = 2048 * 2048;
    float *a = cf_xmalloc(most * sizeof *a), *b = cf_xmalloc(most * sizeof *b);
    float *c = cf_xcalloc(most, sizeof *c);
    cf_rng rng;
    cf_rng_seed(&rng, 2048);
    for (size_t i = 0; i < most; i++) a[i] = cf_rng_float(&rng) - 0.5f;
    for (size_t i = 0; i < most; i++) b[i] = cf_rng_float(&rng) - 0.5f;
    int threads = omp_get_max_threads();
    printf("# cf_gemm isa=%s, cf_gemm_bf16 kernels:", cf_gemm_isa());
    for (int r = 1; r < nr; r++) printf(" %s", runners[r]);
    printf(", threads=%d\n", threads);
    for (int s = 0; s < (int)(sizeof shapes / sizeof *shapes); s++)
        for (int li = 0; li < 3; li++) {
            int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            const layout *l = &layouts[li];
            double flops = 2.0 * m * n * k, times[MAX_KERNELS + 1][ROUNDS * MAX_BLOCK];
            int block[MAX_KERNELS + 1];
            /* warm-up (packing buffers, thread pools, page faults of C), which sizes the blocks */
            for (int r = 0; r < nr; r++) {
                double t = run(runners[r], l, m, n, k, a, b, c);
                block[r] = (int)(budget / t / ROUNDS);
                block[r] = block[r] < 1 ? 1 : block[r] > MAX_BLOCK ? MAX_BLOCK : block[r];
            }
            for (int round = 0; round < ROUNDS; round++)
                for (int r = 0; r < nr; r++)
                    for (int i = 0; i < block[r]; i++)
                        times[r][round * block[r] + i] = run(runners[r], l, m, n, k, a, b, c);
            double fp32 = flops / median(times[0], ROUNDS * block[0]) * 1e-9;
            for (int r = 1; r < nr; r++) {
                double g = flops / median(times[r], ROUNDS * block[r]) * 1e-9;
                printf("BENCH gemm_bf16 kernel=%s m=%d n=%d k=%d layout=%s threads=%d gflops=%.1f "
                       "fp32_gflops=%.1f speedup=%.2f\n", runners[r], m, n, k, l->name, threads, g,
                       fp32, g / fp32);
            }
            fflush(stdout);
        }
    free(a); free(b); free(c);
    return 0;
}
