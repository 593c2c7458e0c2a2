/* Internal to src/kernels/gemm_bf16*.c: the bfloat16 rounding and the interface between the
 * driver (gemm_bf16.c) and its micro-kernels, one of which is chosen at run time.
 *
 * Packed operands hold bfloat16 bit patterns (uint16_t), k padded with zeros up to kcp, a multiple
 * of the kernel's kstep, and rows and columns past the matrix's edge packed as zeros, so a
 * micro-kernel always runs whole tiles and only its stores are clipped:
 *   VNNI layout (avx512bf16, portable; B panels of the AMX kernel too): pairs of k side by side,
 *     the operand of vdpbf16ps, and AMX's B tile rows:
 *       A micro-panel  a[(p2 * MR + r) * 2 + e] = op(A)(r, 2 p2 + e)
 *       B micro-panel  b[(p2 * NR + j) * 2 + e] = op(B)(2 p2 + e, j)
 *   AMX A layout: 32 k at a time, each row of the panel its own 64-byte tile row:
 *       a[(p / 32) * MR * 32 + r * 32 + p % 32] = op(A)(r, p)
 * A micro-panel is MR x kcp, a B micro-panel NR x kcp; panels follow one another. B panels and
 * the A buffer start 64-byte aligned. */
#ifndef CF_GEMM_BF16_INTERNAL_H
#define CF_GEMM_BF16_INTERNAL_H

#include <stdint.h>
#include <string.h>

/* fp32 to bfloat16 bits, as vcvtne2ps2bf16 does it: zero and subnormal inputs give a zero of the
 * same sign (the dot-product instructions treat subnormal bf16 as zero anyway, so no kernel ever
 * sees one), NaN stays NaN (quieted: the top bits alone could otherwise read as infinity), and
 * everything else rounds to nearest, ties to even (overflow gives infinity). */
static inline uint16_t cf_bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0) return (uint16_t)(u >> 16 & 0x8000u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x0040u);
    u += 0x7fffu + (u >> 16 & 1u);
    return (uint16_t)(u >> 16);
}

static inline float cf_bf16_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* trans says whether the operand is stored transposed: op(A)(i, p) = a[p * lda + i] with trans,
 * a[i * lda + p] without; op(B)(p, j) = b[j * ldb + p] with trans, b[p * ldb + j] without. */
typedef struct {
    const char *name;
    int mr, nr;        /* tile of C per micro-kernel call */
    int kc;            /* k per block (a multiple of kstep): A panels live in L1 across a block */
    int kstep;         /* k granularity of packed panels */
    /* mc x kc of op(A) from a (its (0, 0)) into ceil(mc / mr) A panels of kcp */
    void (*pack_a)(int trans, const float *a, int lda, int mc, int kc, int kcp, uint16_t *out);
    /* kc x nc of op(B) from b into ceil(nc / nr) B panels of kcp */
    void (*pack_b)(int trans, const float *b, int ldb, int kc, int kcp, int nc, uint16_t *out);
    /* C[0:mr, 0:nr] = alpha * (A panel)(B panel) + beta * C over kcp; beta == 0 never reads C.
     * The products are summed in fp32 in an order fixed by the kernel alone, then scaled as
     * x = alpha * sum, x = x + beta * c (two roundings, no FMA), whatever mr and nr are. */
    void (*micro)(int kcp, const uint16_t *a, const uint16_t *b, float *c, int ldc,
                  float alpha, float beta, int mr, int nr);
    /* per thread, around each call's work: set up and give back per-thread state (AMX tiles);
     * NULL when there is none */
    void (*begin)(void);
    void (*end)(void);
} cf_bf16_kernel;

/* The kernels. avx512bf16 and portable share their blocking, so that the portable C, which
 * reproduces vdpbf16ps's arithmetic, gives bitwise the same C. */
enum { CF_BF16_VNNI_MR = 14, CF_BF16_VNNI_NR = 32, CF_BF16_VNNI_KC = 512 };
extern const cf_bf16_kernel cf_bf16_portable, cf_bf16_avx512bf16, cf_bf16_amx;

#if defined(__x86_64__)
#include <immintrin.h>

/* what the avx512bf16 kernel and the AVX-512 parts of the AMX kernel are compiled for */
#define CF_BF16_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* The lanes m of c[0 .. 16) become alpha * sum + beta * c, as x = alpha * sum, x = x + beta * c
 * with two roundings (the portable kernel's arithmetic); beta == 0 never reads c. */
static inline CF_BF16_AVX512 void cf_bf16_store16(float *c, __m512 sum, __m512 alpha, float beta,
                                                  __m512 vbeta, __mmask16 m) {
    __m512 x = _mm512_mul_ps(sum, alpha);
    if (beta != 0.0f) x = _mm512_add_ps(x, _mm512_mul_ps(vbeta, _mm512_maskz_loadu_ps(m, c)));
    _mm512_mask_storeu_ps(c, m, x);
}

static inline CF_BF16_AVX512 __mmask16 cf_bf16_lanes(int n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}
#endif

/* the AVX-512 packers, shared by the avx512bf16 and AMX kernels (gemm_bf16_avx512.c) */
void cf_bf16_pack_b_vnni32(int trans, const float *b, int ldb, int kc, int kcp, int nc,
                           uint16_t *out);
void cf_bf16_pack_a_amx(int trans, const float *a, int lda, int mc, int kc, int kcp,
                        uint16_t *out);

#endif
