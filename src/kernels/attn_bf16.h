/* The bf16 block products of the fused softmax attention (src/ops/attention.c) under
 * train.precision "bf16". Internal.
 *
 * Operands are bfloat16 pairs, one 32-bit word each (low half the even element of the pair, as
 * vdpbf16ps reads them), rounded to nearest even as cf_bf16_round rounds. The four product
 * families of the kernel map onto one block product, C[r][0..n) (+)= sum over pairs p of
 * A(r, p) . B(p, 0..n), where A(r, p) = a[r*ars + p*acs] and B(p, j) = b[p*ldb + j] are words:
 *   S = Q K^T, dP' = dO V^T   A: query rows (pairs along Dh),  B: K^T or V^T, pairs of Dh per key;
 *   O = P V,   dQ = dS K      A: P or dS rows (pairs of keys), B: V or K rows, pairs of keys;
 *   dV = P'^T dO, dK = dS^T Q A: P or dS, pairs of queries,    B: dO or Q rows, pairs of queries.
 * Sums are fp32, two products a pair (odd element first), each rounded, as vdpbf16ps does. Two
 * kernels: AVX512-BF16 intrinsics, and portable C that reproduces them bitwise (built with
 * -ffp-contract=off). */
#ifndef CF_KERNELS_ATTN_BF16_H
#define CF_KERNELS_ATTN_BF16_H

#include <stdint.h>

typedef struct {
    const char *name;
    /* For r < rows (a multiple of 4) and j < n: with scale != 0, C[r][j] = scale * sum (C is not
     * read); with scale == 0, C[r][j] = cs[r] C[r][j] + sum (cs NULL: 1), the sum added into the
     * fp32 accumulator pair by pair in ascending p. */
    void (*gemm)(int rows, int n, const uint32_t *a, int64_t ars, int64_t acs, int np, const uint32_t *b,
                 int64_t ldb, float *c, int64_t ldc, const float *cs, float scale);
    /* rows [0, rows) of n floats (n even), row r at x + r ldx, as n / 2 pairs each:
     * out[r ldo + k/2] = (x[r][k], x[r][k+1]) */
    void (*rows)(const float *x, int64_t ldx, int rows, int n, uint32_t *out, int64_t ldo);
    /* pairs of rows (rows even), rows [have, rows) read as zero:
     * out[(r/2) ldo + k] = (x[r][k], x[r+1][k]) for k < n */
    void (*pairs)(const float *x, int64_t ldx, int rows, int have, int n, uint32_t *out, int64_t ldo);
    /* NULL, or called by each thread before its first gemm and after its last within one
     * parallel region (AMX: load the tile configuration, release the tiles) */
    void (*begin)(void);
    void (*end)(void);
} cf_attn_bf16_kernel;

/* the AVX512-BF16 conversions, which the AMX kernel shares (attn_bf16_avx512.c) */
void cf_attn_bf16_rows_avx512(const float *x, int64_t ldx, int rows, int n, uint32_t *out, int64_t ldo);
void cf_attn_bf16_pairs_avx512(const float *x, int64_t ldx, int rows, int have, int n, uint32_t *out, int64_t ldo);

/* The kernel bf16 attention runs, following cf_gemm_bf16's: amx where it runs AMX tiles (the CPUs
 * with AMX issue vdpbf16ps at a fraction of their fp32 FMA rate, so the avx512bf16 kernel measured
 * slower than fp32 attention there: docs/bf16/README.md), avx512bf16 where it runs avx512bf16, and
 * the portable one where it runs portable. Never NULL. */
const cf_attn_bf16_kernel *cf_attn_bf16(void);

#endif
