/* The AMX attention kernel (attn_bf16.h): 16 x 16 tiles of C, one fp32 tile register, summed by
 * tdpbf16ps over 16 pairs at a time. The block products of attention are small (64 x 64 x 32
 * pairs at Dh 64), so the kernel keeps to one C tile at a time and spends its care on feeding the
 * tiles: the B operand of every product is already in the VNNI layout the tile wants (pairs of
 * rows, columns contiguous), and is loaded in place with its row stride; the A operand is copied
 * into a row-major buffer of 16 rows (a transpose for dV and dK, whose A is read down columns),
 * once for all the column tiles of its rows. Tails (rows, columns or pairs short of 16) go through
 * zero-padded buffers, so no tile reads past an operand.
 *
 * tdpbf16ps sums in its own order, so this kernel's results are its own, within the same bound as
 * the vdpbf16ps kernels (tests/test_attn_bf16.c), not bitwise theirs. Row r of C depends only on
 * row r of A, so the results do not depend on how the drivers split the work between threads.
 *
 * Tile state is per thread: the drivers call begin on each thread before its first product and
 * end after its last (within one parallel region), so no tile configuration outlives a call of
 * the op. The configuration is the AMX GEMM's (gemm_bf16_amx.c), of which this kernel uses tiles
 * 0 (C), 1 (A) and 2 (B). Compiled for AMX by its target attribute; chosen only where cf_gemm_bf16 runs AMX tiles
 * (the CPU has them and Linux granted the permission). */
#include "attn_bf16.h"

#include <string.h>
#include "gemm_bf16_internal.h"

#if defined(__x86_64__)

#define TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

/* A rows wider than this (Dh > 256) go to the avx512bf16 kernel */
enum { MAXP = 128 };

extern const cf_attn_bf16_kernel cf_attn_bf16_avx512;

/* abuf[i][p] = A(r0 + i, p) for i < mr, p < np; zero up to 16 rows and np16 pairs */
static TARGET void pack_a(uint32_t *abuf, int np16, const uint32_t *a, int64_t ars, int64_t acs, int r0, int mr,
                          int np) {
    if (acs == 1) {
        for (int i = 0; i < mr; i++) {
            memcpy(abuf + i * np16, a + (r0 + i) * ars, sizeof(uint32_t) * np);
            memset(abuf + i * np16 + np, 0, sizeof(uint32_t) * (np16 - np));
        }
    } else if (ars == 1 && mr == 16) {
        /* A read down columns (dV, dK): 16 x 16 blocks of words, transposed in registers */
        for (int p = 0; p < np; p += 16) {
            __m512i r[16];
            for (int q = 0; q < 16; q++)
                r[q] = p + q < np ? _mm512_loadu_si512(a + r0 + (p + q) * acs) : _mm512_setzero_si512();
            cf_transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_store_si512(abuf + i * np16 + p, r[i]);
        }
    } else {
        for (int i = 0; i < mr; i++) {
            for (int p = 0; p < np; p++) abuf[i * np16 + p] = a[(r0 + i) * ars + p * acs];
            memset(abuf + i * np16 + np, 0, sizeof(uint32_t) * (np16 - np));
        }
    }
    for (int i = mr; i < 16; i++) memset(abuf + i * np16, 0, sizeof(uint32_t) * np16);
}

static TARGET void gemm(int rows, int n, const uint32_t *a, int64_t ars, int64_t acs, int np, const uint32_t *b,
                        int64_t ldb, float *c, int64_t ldc, const float *cs, float scale) {
    if (np > MAXP) {
        cf_attn_bf16_avx512.gemm(rows, n, a, ars, acs, np, b, ldb, c, ldc, cs, scale);
        return;
    }
    int np16 = (np + 15) & ~15;
    uint32_t abuf[16 * MAXP] __attribute__((aligned(64)));
    uint32_t bbuf[16 * 16] __attribute__((aligned(64)));
    float cbuf[16 * 16] __attribute__((aligned(64)));
    long ldbb = (long)ldb * (long)sizeof(uint32_t), ldcb = (long)ldc * (long)sizeof(float);
    __m512 vs = _mm512_set1_ps(scale);
    for (int r0 = 0; r0 < rows; r0 += 16) {
        int mr = rows - r0 < 16 ? rows - r0 : 16;
        pack_a(abuf, np16, a, ars, acs, r0, mr, np);
        for (int c0 = 0; c0 < n; c0 += 16) {
            int nc = n - c0 < 16 ? n - c0 : 16, full = mr == 16 && nc == 16;
            __mmask16 cm = cf_bf16_lanes(nc);
            float *ct = c + r0 * ldc + c0;
            /* the tile loads and stores are asm the compiler does not see touch the buffers */
            if (scale != 0) {
                _tile_zero(0);
            } else if (full) {
                if (cs)
                    for (int i = 0; i < 16; i++)
                        _mm512_storeu_ps(ct + i * ldc, _mm512_mul_ps(_mm512_loadu_ps(ct + i * ldc),
                                                                     _mm512_set1_ps(cs[r0 + i])));
                __asm__ volatile("" ::: "memory");
                _tile_loadd(0, ct, ldcb);
            } else {
                for (int i = 0; i < 16; i++) {
                    __m512 v = i < mr ? _mm512_maskz_loadu_ps(cm, ct + i * ldc) : _mm512_setzero_ps();
                    if (cs && i < mr) v = _mm512_mul_ps(v, _mm512_set1_ps(cs[r0 + i]));
                    _mm512_store_ps(cbuf + 16 * i, v);
                }
                __asm__ volatile("" ::: "memory");
                _tile_loadd(0, cbuf, 64);
            }
            for (int p = 0; p < np16; p += 16) {
                _tile_loadd(1, abuf + p, np16 * (long)sizeof(uint32_t));
                if (p + 16 <= np && nc == 16) {
                    _tile_loadd(2, b + p * ldb + c0, ldbb);
                } else {
                    for (int i = 0; i < 16; i++)
                        _mm512_store_si512(bbuf + 16 * i, p + i < np ? _mm512_maskz_loadu_epi32(cm, b + (p + i) * ldb + c0)
                                                                     : _mm512_setzero_si512());
                    __asm__ volatile("" ::: "memory");
                    _tile_loadd(2, bbuf, 64);
                }
                _tile_dpbf16ps(0, 1, 2);
            }
            if (full && scale == 0) {
                _tile_stored(0, ct, ldcb);
                __asm__ volatile("" ::: "memory");
                continue;
            }
            _tile_stored(0, cbuf, 64);
            __asm__ volatile("" ::: "memory");
            for (int i = 0; i < mr; i++) {
                __m512 v = _mm512_load_ps(cbuf + 16 * i);
                _mm512_mask_storeu_ps(ct + i * ldc, cm, scale != 0 ? _mm512_mul_ps(v, vs) : v);
            }
        }
    }
}

const cf_attn_bf16_kernel cf_attn_bf16_amx = {"amx", gemm, cf_attn_bf16_rows_avx512, cf_attn_bf16_pairs_avx512,
                                          cf_bf16_amx_begin, cf_bf16_amx_end};

#endif
