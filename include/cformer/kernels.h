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
/* cf_gemm with hooks on blocks of C, each run by the thread that owns the block, while the block
 * is in its cache; the blocks of each hook cover C exactly once and never overlap. before(arg, i0,
 * j0, rows, cols), if set, writes a block of C before anything reads it (then beta scales what it
 * wrote: a bias, with beta 1); after, if set, runs on a block once its final value is written.
 * C's values are those of cf_gemm on a C that before had filled. They spare a fused op the passes
 * over C that filling it and an elementwise function of it would take (linear's bias, GELU). */
typedef struct cf_gemm_hooks {
    void (*before)(void *arg, int i0, int j0, int rows, int cols);
    void (*after)(void *arg, int i0, int j0, int rows, int cols);
    void *arg;
} cf_gemm_hooks;
void cf_gemm_epi(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc, const cf_gemm_hooks *hooks);
/* Same contract, a plain triple loop (double accumulation): the reference for tests. */
void cf_gemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* y[m] = W x + b for W [m, k] (row stride ldw), b [m] or NULL: one row through a linear layer, the
 * product of incremental decoding. No packing (the weights are read once, in place, which is all
 * a single row can do with them); OpenMP over blocks of output rows when the matrix is large.
 * Each y[i] is summed by one thread in a fixed order: the result does not depend on the thread
 * count. */
void cf_gemv(int m, int k, const float *w, int ldw, const float *x, const float *b, float *y);
/* y[j] = W[idx[j]] . x over k for j < n (idx NULL: rows 0..n-1), rows ldw apart, in cf_gemv's order
 * and on the calling thread: the scores of one query against cached keys. */
void cf_dot_rows(int n, int k, const float *w, int ldw, const int32_t *idx, const float *x, float *y);

/* which micro-kernel cf_gemm runs: "avx512", "avx2" or "portable" */
const char *cf_gemm_isa(void);

/* ---- bfloat16 GEMM: the matrix products of mixed-precision training ---------------------------
 * cf_gemm's contract (layouts, leading dimensions, alpha and beta, beta == 0 ignores C, alpha == 0
 * or k == 0 leave A and B unread, deterministic at any thread count, safe from several threads at
 * once, no allocation after a thread's first call), except that every element of op(A) and op(B)
 * is rounded to bfloat16 (cf_bf16_round) as it is packed and the products are summed in fp32. The
 * tensors stay fp32. The micro-kernel is chosen at run time, so one binary runs on any x86-64:
 *   "amx"         AMX-BF16 tiles (tdpbf16ps), where Linux grants the tile permission
 *   "avx512bf16"  AVX512-BF16 (vdpbf16ps)
 *   "portable"    C that gives bitwise the same C as avx512bf16, on any machine
 * the first this machine runs, unless the environment variable CF_BF16_KERNEL names one: then that
 * one, and a name that is unknown or that this machine cannot run stops the program with a message.
 * The kernels differ in their k blocking and summation order: each is within the fp32 summation
 * bound of cf_gemm_bf16_ref, and only portable and avx512bf16 agree bitwise. */
void cf_gemm_bf16(int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* cf_gemm_bf16 with hooks, on the terms of cf_gemm_epi */
void cf_gemm_bf16_epi(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, float beta, float *c, int ldc, const cf_gemm_hooks *hooks);
/* The reference the tests trust: op(A) and op(B) rounded as cf_gemm_bf16 rounds them, then
 * cf_gemm_ref (products summed in double). */
void cf_gemm_bf16_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
                      const float *a, int lda, const float *b, int ldb, float beta, float *c,
                      int ldc);
/* x rounded to bfloat16 (returned as the float of the same value), as packing rounds: to nearest,
 * ties to even, overflow to infinity, NaN stays NaN, and subnormal x gives a zero of its sign (the
 * bf16 instructions read subnormals as zero; rounding a normal x never makes one). */
float cf_bf16_round(float x);
/* the kernel the fused softmax attention runs with bf16 operands, the one cf_gemm_bf16 runs:
 * "amx", "avx512bf16" or "portable" */
const char *cf_attn_bf16_kernel_name(void);
/* the kernel cf_gemm_bf16 runs: "amx", "avx512bf16" or "portable" */
const char *cf_gemm_bf16_kernel(void);
/* Runs the named kernel from the next call on (tests and benchmarks compare them in one process;
 * not while calls are in flight). 0, or -1 with cf_error_msg() when the name is unknown or this
 * machine cannot run it. */
int cf_gemm_bf16_set_kernel(const char *name);

#endif
