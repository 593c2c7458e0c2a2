/* AVX-512 micro-kernel: 9 x 48 tile of C in 27 zmm accumulators. Each k step loads three vectors
 * of the B panel and broadcasts 9 scalars of the A panel: 27 FMAs against 12 loads, and the 31
 * live registers (27 + 3 + 1) just fit the 32 zmm. Measured on Cascade Lake against 12 x 32
 * (24 FMAs against 14 loads), 8 x 48, 14 x 32 and 6 x 64, inside the whole GEMM: 9 x 48 was the
 * fastest, by 5-8% over 12 x 32 (fewer loads per FMA, and a smaller A panel in L1). */
#include "gemm_internal.h"

#include <stddef.h>

#if defined(__AVX512F__)
#include <immintrin.h>

enum { MR = CF_GEMM_MR, NR = CF_GEMM_NR, NV = NR / 16 };

/* B micro-panels are NR wide, except the last of a block, which is trimmed to whole vectors
 * (n = 256 with NR = 48 would otherwise compute 288 columns, 12% for nothing): the row stride of
 * a panel of nr columns is 16 * vecs(nr). */
static inline int vecs(int nr) { return (nr + 15) / 16; }

static inline __mmask16 lane_mask(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* the kernel for panels of nv vectors; nv is a constant in each caller below, so the loops over
 * it unroll and the accumulators live in registers */
static inline __attribute__((always_inline))
void micro_nv(int nv, int kc, const float *restrict a, const float *restrict b, float *restrict c,
              int ldc, float alpha, float beta, int mr, int nr) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    /* C is read (beta != 0) or written only after the k loop: start pulling its lines in now */
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            _mm_prefetch((const char *)(c + (size_t)r * ldc + 16 * v), _MM_HINT_T0);
    for (int p = 0; p < kc; p++) {
        __m512 bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
        a += MR;
        b += 16 * nv;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        if (r >= mr) break;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            /* masks clip the tile to nr columns and never fault on the lanes they leave out */
            __mmask16 k = lane_mask(nr - 16 * v);
            float *cp = c + (size_t)r * ldc + 16 * v;
            __m512 x = _mm512_mul_ps(acc[r][v], va);
            if (beta != 0.0f) x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(k, cp), x);
            _mm512_mask_storeu_ps(cp, k, x);
        }
    }
}

#if CF_GEMM_NR > 48
#error "gemm_avx512.c instantiates the kernel for panels of up to 3 vectors"
#endif
#define MICRO(nv)                                                                                 \
    static void micro_##nv(int kc, const float *a, const float *b, float *c, int ldc,            \
                           float alpha, float beta, int mr, int nr) {                            \
        micro_nv(nv, kc, a, b, c, ldc, alpha, beta, mr, nr);                                     \
    }
MICRO(1)
#if CF_GEMM_NR >= 32
MICRO(2)
#endif
#if CF_GEMM_NR >= 48
MICRO(3)
#endif

void cf_gemm_micro(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                   int ldc, float alpha, float beta, int mr, int nr) {
    switch (vecs(nr)) {
#if CF_GEMM_NR >= 48
    case 3: micro_3(kc, a, b, c, ldc, alpha, beta, mr, nr); break;
#endif
#if CF_GEMM_NR >= 32
    case 2: micro_2(kc, a, b, c, ldc, alpha, beta, mr, nr); break;
#endif
    default: micro_1(kc, a, b, c, ldc, alpha, beta, mr, nr); break;
    }
}

/* ---- packing ------------------------------------------------------------------------------
 * The transposing cases (op(A) from A [m, k], op(B) from B^T [n, k]) read 16 source rows of 16
 * floats and transpose them in registers: 64 shuffles per 256 floats, against a scalar gather
 * that costs a load and a store per float and was 10-15% of a whole GEMM with n = 256. */

/* r[i] holds row i of a 16 x 16 block; afterwards r[j] holds column j */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* afterwards each 128-bit lane L of r[4g + q] holds column 4L + q of rows 4g .. 4g + 3 */
    for (int g = 0; g < 4; g++) {
        __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]);
        __m512d t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    /* gather the four lanes L of each column from the four row groups */
    for (int q = 0; q < 4; q++) {
        __m512 u = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
        __m512 v = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd);
        __m512 w = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
        __m512 x = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
        t[q] = _mm512_shuffle_f32x4(u, w, 0x88);
        t[8 + q] = _mm512_shuffle_f32x4(u, w, 0xdd);
        t[4 + q] = _mm512_shuffle_f32x4(v, x, 0x88);
        t[12 + q] = _mm512_shuffle_f32x4(v, x, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* rows src[0 .. rows) of a row-major matrix (row stride ld), columns p .. p + 16 (clipped to
 * `cols` by a mask), into r[], transposed; rows past `rows` read as zeros */
static inline void load_transposed(const float *src, int ld, int rows, __mmask16 cols,
                                   __m512 r[16]) {
    for (int i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(cols, src + (size_t)i * ld) : _mm512_setzero_ps();
    transpose16(r);
}

void cf_gemm_pack_a(int trans, const float *a, int lda, int mc, int kc, float *restrict out) {
    for (int i = 0; i < mc; i += MR, out += (size_t)kc * MR) {
        int mr = mc - i < MR ? mc - i : MR;
        __mmask16 rmask = (__mmask16)((1u << mr) - 1);
        if (trans) {           /* op(A)(i, p) = a[p * lda + i]: rows of the panel are contiguous */
            for (int p = 0; p < kc; p++)
                _mm512_mask_storeu_ps(out + (size_t)p * MR, (1u << MR) - 1,
                                      _mm512_maskz_loadu_ps(rmask, a + (size_t)p * lda + i));
        } else {               /* op(A)(i, p) = a[i * lda + p]: transpose 16 p at a time */
            for (int p = 0; p < kc; p += 16) {
                int np = kc - p < 16 ? kc - p : 16;
                __m512 r[16];
                load_transposed(a + (size_t)i * lda + p, lda, mr, (__mmask16)((1u << np) - 1), r);
                for (int q = 0; q < np; q++)
                    _mm512_mask_storeu_ps(out + (size_t)(p + q) * MR, (1u << MR) - 1, r[q]);
            }
        }
    }
}

void cf_gemm_pack_b(int trans, const float *b, int ldb, int kc, int nc, float *restrict out) {
    for (int j = 0; j < nc; j += NR, out += (size_t)kc * NR) {
        int nr = nc - j < NR ? nc - j : NR, nv = vecs(nr), w = 16 * nv;
        if (trans) {           /* op(B)(p, j) = b[j * ldb + p]: 16-row groups, transposed */
            for (int p = 0; p < kc; p += 16) {
                int np = kc - p < 16 ? kc - p : 16;
                for (int v = 0; v < nv; v++) {
                    __m512 r[16];
                    load_transposed(b + (size_t)(j + 16 * v) * ldb + p, ldb, nr - 16 * v,
                                    (__mmask16)((1u << np) - 1), r);
                    for (int q = 0; q < np; q++)
                        _mm512_store_ps(out + (size_t)(p + q) * w + 16 * v, r[q]);
                }
            }
        } else {               /* op(B)(p, j) = b[p * ldb + j]: rows of the panel are contiguous */
            for (int p = 0; p < kc; p++) {
                const float *src = b + (size_t)p * ldb + j;
                for (int v = 0; v < nv; v++)
                    _mm512_store_ps(out + (size_t)p * w + 16 * v,
                                    _mm512_maskz_loadu_ps(lane_mask(nr - 16 * v), src + 16 * v));
            }
        }
    }
}
#else
/* this instruction set is not the build's target: gemm_avx2.c or gemm.c defines the kernel */
typedef int cf_gemm_avx512_unused;
#endif
