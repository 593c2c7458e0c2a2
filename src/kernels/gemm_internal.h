/* Internal to src/kernels/gemm*.c: the micro-kernel shape and entry point, chosen at compile time
 * from the target's instruction set (the default build has -march=native, PORTABLE=1 has none).
 *
 * Packed operands, as the driver in gemm.c lays them out:
 *   A micro-panel: CF_GEMM_MR rows of op(A) for kc steps, p-major: a[p * MR + r] = op(A)(r, p);
 *   B micro-panel: CF_GEMM_NR columns of op(B) for kc steps, p-major: b[p * NR + j] = op(B)(p, j)
 *                  (AVX-512 trims a block's last, partial panel to whole 16-float vectors, so its
 *                  row stride is 16 * ceil(nr / 16); only gemm_avx512.c reads or writes panels).
 * Rows and columns past the edge of the matrix are packed as zeros, so the kernel runs the whole
 * tile and only its stores are clipped to mr x nr. B panels start 64-byte aligned (the kernels
 * load them aligned; A is only broadcast from, at any alignment), and the driver places B panel j
 * of a block at j * NR * kc floats from the block's start. */
#ifndef CF_GEMM_INTERNAL_H
#define CF_GEMM_INTERNAL_H

#if defined(__AVX512F__)
#define CF_GEMM_MR 9
#define CF_GEMM_NR 48
#define CF_GEMM_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define CF_GEMM_MR 6
#define CF_GEMM_NR 16
#define CF_GEMM_ISA "avx2"
#else
#define CF_GEMM_MR 4
#define CF_GEMM_NR 8
#define CF_GEMM_ISA "portable"
#endif

/* C[0:mr, 0:nr] = alpha * (A panel)(B panel) + beta * C, over kc steps. beta == 0 never reads C.
 * Every tile of a given C element goes through the same arithmetic whatever mr and nr are, so an
 * element's value does not depend on where the thread partition put the tile edges. */
void cf_gemm_micro(int kc, const float *a, const float *b, float *c, int ldc,
                   float alpha, float beta, int mr, int nr);

/* mc x kc of op(A), whose (0, 0) is at a, into ceil(mc / MR) A micro-panels, one after another;
 * kc x nc of op(B), whose (0, 0) is at b, into ceil(nc / NR) B micro-panels. trans says whether
 * the operand is stored transposed (op(A)(i, p) = a[p * lda + i], op(B)(p, j) = b[j * ldb + p]). */
void cf_gemm_pack_a(int trans, const float *a, int lda, int mc, int kc, float *out);
void cf_gemm_pack_b(int trans, const float *b, int ldb, int kc, int nc, float *out);

#endif
