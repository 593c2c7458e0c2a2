/* Internal to the bf16 kernels (src/kernels/gemm_bf16*.c, attn_bf16*.c; src/ops/attention.c
 * reads packed pairs back with cf_bf16_float): the bfloat16 rounding and the interface between the
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

/* One step of vdpbf16ps on one lane, acc + x * y for bf16 values x and y, as the portable kernels
 * (gemm_bf16_portable.c, attn_bf16.c) reproduce it: the head comment of gemm_bf16_portable.c
 * says why this is exact. Callers compile with -ffp-contract=off. */
static inline uint32_t cf_bf16_f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* One step. Where |s| < 2^-126 the result is the smallest normal if s rounds to it at 24 bits
 * with an unbounded exponent, else zero, signed as s: scaled by 2^64 (exact), s lies in float's
 * normal range, where the conversion rounds at 24 bits (below 2^-190 it is tiny anyway). Both
 * results are computed and one is picked with a mask, not a branch: the compiler vectorises the
 * loop over columns only if no floating-point operation sits under a condition. */
static inline float cf_bf16_dp_step(float acc, float x, float y) {
    double s = (double)acc + (double)x * y;
    uint64_t sb;
    memcpy(&sb, &s, sizeof sb);
    uint32_t r = cf_bf16_f32_bits((float)s), t = cf_bf16_f32_bits((float)(s * 0x1p64));
    uint32_t tiny = (t & 0x80000000u) | ((t & 0x7fffffffu) >= 0x20800000u ? 0x00800000u : 0u);
    uint32_t pick = 0u - (uint32_t)((sb & 0x7fffffffffffffffull) < 0x3810000000000000ull);
    uint32_t out = r ^ ((r ^ tiny) & pick);  /* 0x3810...: 2^-126 as a double, 0x2080...: 2^-62 */
    memcpy(&x, &out, sizeof x);
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
#include "transpose16.h"

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

/* x[0 .. 32), of which the first n exist (n may be <= 0 or > 32), as 16 pairs (x[2i], x[2i+1]) */
static inline CF_BF16_AVX512 __m512i cf_bf16_pairs_along(const float *x, int n) {
    __m512 lo = _mm512_maskz_loadu_ps(cf_bf16_lanes(n), x);
    __m512 hi = _mm512_maskz_loadu_ps(cf_bf16_lanes(n - 16), x + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* columns m of rows x and y as 16 pairs (x[j], y[j]); a NULL row reads as zeros */
static inline CF_BF16_AVX512 __m512i cf_bf16_pairs_across(const float *x, const float *y, __mmask16 m) {
    __m512 vx = x ? _mm512_maskz_loadu_ps(m, x) : _mm512_setzero_ps();
    __m512 vy = y ? _mm512_maskz_loadu_ps(m, y) : _mm512_setzero_ps();
    /* word w of the result takes word w / 2 of x's half (w even) or of y's (w odd) */
    static const uint16_t interleave[32] __attribute__((aligned(64))) = {
        0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    __m512i v = (__m512i)_mm512_cvtne2ps_pbh(vy, vx);   /* words 0-15 from x, 16-31 from y */
    return _mm512_permutexvar_epi16(_mm512_load_si512(interleave), v);
}

#endif

/* the AMX kernel's tile configuration, loaded and released per thread (gemm_bf16_amx.c): palette
 * 1, eight tiles of 16 rows by 64 bytes; the AMX attention kernel shares it */
void cf_bf16_amx_begin(void);
void cf_bf16_amx_end(void);

/* the AVX-512 packers, shared by the avx512bf16 and AMX kernels (gemm_bf16_avx512.c) */
void cf_bf16_pack_b_vnni32(int trans, const float *b, int ldb, int kc, int kcp, int nc,
                           uint16_t *out);
void cf_bf16_pack_a_amx(int trans, const float *a, int lda, int mc, int kc, int kcp,
                        uint16_t *out);

#endif
