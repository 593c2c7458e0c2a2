/* The AMX kernel: a 32 x 32 tile of C in four 16 x 16 fp32 tile registers. For each 32 k it loads
 * two A tiles (16 rows x 32 k, rows of the AMX A panel) and two B tiles (16 pairs of k x 16
 * columns, read out of the VNNI B panel with its 128-byte row stride), and runs four tdpbf16ps:
 * 32 K multiply-adds per 4 KB of tile loads, the A tiles from L1 and the B tiles streaming from
 * L2. tdpbf16ps sums in fp32 in its own order, so this kernel's results are its own: within the
 * fp32 bound of the reference, not bitwise those of the VNNI kernels.
 *
 * Tile registers are per-thread state: each thread loads the configuration before its share of
 * a call (begin) and releases the tiles after it (end), so no tile state outlives the call and
 * the OS need not save it across context switches. Compiled for AMX and AVX-512 by its target
 * attribute; run only where cf_cpu() found AMX-BF16 and AVX512-BF16 and Linux granted the tile
 * permission. */
#include "gemm_bf16_internal.h"

#include <stddef.h>

#if defined(__x86_64__)

#define TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

/* k per block: the A panel, 32 x KC bf16 (32 KB), stays in L1 across a column block. On a
 * 16-core Xeon with AMX, KC = 512 matched or beat 256 on the linear-layer shapes of
 * tools/bench/gemm_bf16.c at 1 and 16 threads; -DCF_BF16_AMX_KC=... (a multiple of 32, at most
 * 608) measures another. */
#ifndef CF_BF16_AMX_KC
#define CF_BF16_AMX_KC 512
#endif
enum { MR = 32, NR = 32, KC = CF_BF16_AMX_KC };

/* palette 1; tiles 0-3 the C quarters, 4-5 the A tiles, 6-7 the B tiles, all 16 rows of 64 bytes.
 * A constant: ldtilecfg reads all 64 bytes, more than the intrinsic tells the compiler. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config __attribute__((aligned(64))) = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

TARGET void cf_bf16_amx_begin(void) { _tile_loadconfig(&tile_config); }
TARGET void cf_bf16_amx_end(void) { _tile_release(); }

static TARGET void micro(int kcp, const uint16_t *a, const uint16_t *b, float *c, int ldc,
                         float alpha, float beta, int mr, int nr) {
    /* A whole tile with alpha 1 and beta 0 or 1 (every product of a linear layer) goes straight
     * between C and the tile registers: the sums start from zero or from C, and are stored back
     * as they are. Others are summed from zero, stored aside and combined with AVX-512. Which way
     * a tile goes depends on where it lies in the fixed grid of 32 x 32 tiles, not on threads. */
    int direct = mr == MR && nr == NR && alpha == 1.0f && (beta == 0.0f || beta == 1.0f);
    long ldcb = (long)ldc * (long)sizeof(float);
    float *c2 = c + (size_t)16 * ldc;
    /* the tile loads are asm that the compiler does not know reads the panels (and C): every
     * store to them must be done first */
    __asm__ volatile("" ::: "memory");
    if (direct && beta == 1.0f) {
        _tile_loadd(0, c, ldcb);
        _tile_loadd(1, c + 16, ldcb);
        _tile_loadd(2, c2, ldcb);
        _tile_loadd(3, c2 + 16, ldcb);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int p = 0; p < kcp; p += 32) {
        const uint16_t *ap = a + (size_t)p * 32, *bp = b + (size_t)p * 32;
        _tile_loadd(4, ap, 64);
        _tile_loadd(5, ap + 16 * 32, 64);
        _tile_loadd(6, bp, 128);
        _tile_loadd(7, bp + 32, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    if (direct) {
        _tile_stored(0, c, ldcb);
        _tile_stored(1, c + 16, ldcb);
        _tile_stored(2, c2, ldcb);
        _tile_stored(3, c2 + 16, ldcb);
        return;
    }
    float sum[32][32] __attribute__((aligned(64)));
    _tile_stored(0, &sum[0][0], 128);
    _tile_stored(1, &sum[0][16], 128);
    _tile_stored(2, &sum[16][0], 128);
    _tile_stored(3, &sum[16][16], 128);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++)
        for (int h = 0; h < 2; h++)
            cf_bf16_store16(c + (size_t)r * ldc + 16 * h, _mm512_load_ps(&sum[r][16 * h]), va, beta,
                            vb, cf_bf16_lanes(nr - 16 * h));
}

const cf_bf16_kernel cf_bf16_amx = {
    .name = "amx", .mr = MR, .nr = NR, .kc = KC, .kstep = 32,
    .pack_a = cf_bf16_pack_a_amx, .pack_b = cf_bf16_pack_b_vnni32, .micro = micro,
    .begin = cf_bf16_amx_begin, .end = cf_bf16_amx_end,
};
#else
/* not x86-64: cf_cpu() finds no AMX, so the driver never picks this */
const cf_bf16_kernel cf_bf16_amx = {.name = "amx"};
#endif
