/* The fused attention kernels flush subnormal floats to zero (src/kernels/attn_tiles.h says why):
 * values that are subnormal reach the products as zeros and no output or gradient is subnormal,
 * in both kernels (full: cf_attention_qkv; pattern: cf_masked_attention_qkv with a window), both
 * precisions' paths and forward and backward; and the calling thread's floating-point mode (MXCSR)
 * is the same after the call as before it, so that code outside the kernels keeps IEEE subnormals. */
#include <float.h>
#include "test.h"
#ifdef __SSE__
#include <xmmintrin.h>
#endif

enum { B = 2, T = 96, H = 2, DH = 16, C = H * DH };

static int subnormal_count(const float *x, int64_t n) {
    int bad = 0;
    for (int64_t i = 0; i < n; i++) bad += x[i] != 0.0f && fabsf(x[i]) < FLT_MIN;
    return bad;
}

/* one forward and backward of the kernel (masked: a window of 24), with the values and the
 * output gradient subnormal and q, k ordinary; 1 when every check holds */
static void run(int masked, int bf16, int alibi) {
    int64_t n = (int64_t)B * T * 3 * C;
    float *qkv = malloc(sizeof(float) * n), *dO = malloc(sizeof(float) * B * T * C);
    uint64_t s = 12345;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        float u = (float)((s >> 40) & 0xffffff) / 16777216.0f * 2 - 1;
        qkv[i] = i % (3 * C) >= 2 * C ? u * 1e-39f : u;   /* v columns: subnormal */
    }
    for (int64_t i = 0; i < (int64_t)B * T * C; i++) dO[i] = (i % 7 - 3) * 1e-39f;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 26, 64) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.bf16 = bf16;
    cf_ctx_begin(&ctx, 0);
    cf_tensor *x = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 1);
    cf_attn_opts o = {.causal = 1, .alibi = alibi};
    cf_attn_pattern p = {.type = CF_ATTN_WINDOW, .window = 24};
#ifdef __SSE__
    unsigned before = _mm_getcsr();
#endif
    cf_tensor *y = masked ? cf_masked_attention_qkv(&ctx, x, H, &p, &o) : cf_attention_qkv(&ctx, x, H, &o);
#ifdef __SSE__
    unsigned mid = _mm_getcsr();
#endif
    cf_backward(&ctx, y, dO);
    const char *name = masked ? "masked" : "full";
    int nonzero = 0;
    for (int64_t i = 0; i < (int64_t)B * T * C; i++) nonzero += y->data[i] != 0.0f;
    int64_t dv_nonzero = 0;
    for (int64_t i = 0; i < n; i++) dv_nonzero += i % (3 * C) >= 2 * C && x->grad[i] != 0.0f;
#ifdef __SSE__
    CHECK(nonzero == 0, "%s bf16=%d alibi=%d: %d outputs of subnormal values not flushed to 0", name, bf16, alibi,
          nonzero);
    CHECK(dv_nonzero == 0, "%s bf16=%d alibi=%d: %lld value gradients of subnormal dO not 0", name, bf16, alibi,
          (long long)dv_nonzero);
    CHECK(mid == before && _mm_getcsr() == before, "%s bf16=%d alibi=%d: MXCSR %#x -> %#x (forward) -> %#x", name,
          bf16, alibi, before, mid, _mm_getcsr());
#endif
    CHECK(subnormal_count(y->data, (int64_t)B * T * C) == 0 && subnormal_count(x->grad, n) == 0,
          "%s bf16=%d alibi=%d: subnormal outputs or gradients", name, bf16, alibi);
    cf_ctx_free(&ctx);
    free(qkv);
    free(dO);
}

int main(void) {
    for (int masked = 0; masked < 2; masked++)
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int alibi = 0; alibi < 2; alibi++) run(masked, bf16, alibi);
#ifdef __SSE__
    /* ordinary code after the kernels still keeps subnormals (the mode was restored) */
    volatile float tiny = FLT_MIN;
    CHECK(tiny / 4 != 0.0f, "FLT_MIN / 4 flushed to 0 outside the kernels");
#endif
    TEST_MAIN_END();
}
