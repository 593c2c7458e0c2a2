/* Raw float kernels, no autograd: the hot path. Each has a naive reference the tests trust. */
#ifndef CFORMER_KERNELS_H
#define CFORMER_KERNELS_H

#include <stdint.h>

/* C[m, n] = alpha * op(A) op(B) + beta * C, row-major with leading dimensions (row strides).
 * op(A) is A [m, k] (lda >= k) or, with trans_a, A^T where A is [k, m] (lda >= m); likewise B
 * [k, n] or, with trans_b, B^T where B is [n, k]. beta == 0 ignores C's old contents (NaN too).
 * The three layouts of a linear layer, with no transpose in memory:
 *   forward     Y  = X  W^T : cf_gemm(0, 1, ...)
 *   grad input  dX = dY W   : cf_gemm(0, 0, ...)
 *   grad weight dW = dY^T X : cf_gemm(1, 0, ...)
 * Packed, cache-blocked, register-blocked SIMD micro-kernel (AVX-512 9x48 or AVX2+FMA 6x16,
 * chosen at compile time by -march; portable C with PORTABLE=1), OpenMP over macro-tiles.
 * Deterministic at any thread count: each element of C is summed by one thread in a fixed k
 * order. Safe to call from several threads at once (it then runs single-threaded inside).
 * alpha == 0 or k == 0 follow BLAS: C = beta C without reading A or B. */
void cf_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* Same contract, a plain triple loop (double accumulation): the reference for tests. */
void cf_gemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* which micro-kernel cf_gemm runs: "avx512", "avx2" or "portable" */
const char *cf_gemm_isa(void);

#endif
