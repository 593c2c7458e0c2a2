/* Differentiable ops. Each computes its output now and records a tape node when a gradient will
 * be needed (see core.h). Shapes are checked here, when the node is recorded: a mismatch aborts
 * naming the op and the shapes. Every op's forward and backward sit side by side in
 * src/ops/<file>.c, named in the comment of each declaration. */
#ifndef CFORMER_OPS_H
#define CFORMER_OPS_H

#include <stdint.h>
#include "core.h"
#include "schema.h"

/* ---- src/ops/matmul.c ---------------------------------------------------------------------- */
/* C = op(A) op(B), batched over leading dims. A [..., M, K] (or [..., K, M] with trans_a),
 * B [..., K, N] (or [..., N, K] with trans_b). B may be 2-D and is then shared by every batch. */
cf_tensor *cf_matmul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, int trans_a, int trans_b);
/* y = x W^T + b. x [..., in], W [out, in] (PyTorch layout), b [out] or NULL */
cf_tensor *cf_linear(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b);
/* src/ops/linear_gelu.c: gelu(cf_linear(x, w, b)) in one op, the GELU in the GEMM's epilogue: the same bits */
cf_tensor *cf_linear_gelu(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b);

/* ---- src/ops/elementwise.c ------------------------------------------------------------------ */
/* a + b and a * b. b has a's shape or a trailing part of it (then it is broadcast over the
 * leading dims: positions [T, D] added to [B, T, D]). */
cf_tensor *cf_add(cf_ctx *ctx, cf_tensor *a, cf_tensor *b);
cf_tensor *cf_mul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b);
cf_tensor *cf_scale(cf_ctx *ctx, cf_tensor *x, float s);

/* ---- src/ops/activation.c ------------------------------------------------------------------- */
cf_tensor *cf_gelu(cf_ctx *ctx, cf_tensor *x);               /* tanh approximation (GPT-2) */
cf_tensor *cf_relu(cf_ctx *ctx, cf_tensor *x);
cf_tensor *cf_elu(cf_ctx *ctx, cf_tensor *x, float alpha);
cf_tensor *cf_silu(cf_ctx *ctx, cf_tensor *x);               /* x sigmoid(x) */
/* act(a) * b elementwise (a, b of one shape), act gelu (tanh), relu or silu: GEGLU, ReGLU, SwiGLU */
cf_tensor *cf_glu(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, cf_act_kind act);

/* ---- src/ops/softmax.c ---------------------------------------------------------------------- */
cf_tensor *cf_softmax(cf_ctx *ctx, cf_tensor *x);            /* over the last dim; an all -inf row gives 0 */

/* ---- src/ops/cross_entropy.c ---------------------------------------------------------------- */
/* Fused log-softmax + negative log-likelihood. logits [..., V]; targets one per row; rows whose
 * target equals ignore_index count for nothing. Returns the mean over counted rows, shape [1],
 * in nats. smoothing > 0 mixes the one-hot target with the uniform distribution (label smoothing).
 * If n_counted is not NULL it receives the number of counted rows. targets is borrowed: keep it
 * alive and unchanged until backward (and any checkpoint recomputation) is done. */
cf_tensor *cf_cross_entropy(cf_ctx *ctx, cf_tensor *logits, const int32_t *targets,
                            int ignore_index, float smoothing, int64_t *n_counted);

/* ---- src/ops/norm.c ------------------------------------------------------------------------- */
cf_tensor *cf_layernorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b, float eps);
cf_tensor *cf_rmsnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, float eps);
/* y = norm(x + r) (rmsnorm when rms, else layernorm with bias b, which may be NULL) in one pass, the
 * sum x + r into *sum: what cf_add then the norm compute, with the same bits and nodes */
cf_tensor *cf_add_norm(cf_ctx *ctx, cf_tensor *x, cf_tensor *r, cf_tensor *w, cf_tensor *b, int rms, float eps,
                       cf_tensor **sum);

/* ---- src/ops/embedding.c -------------------------------------------------------------------- */
/* gather rows of table [V, D] by ids (shape ids_shape, ndim <= 3) -> [ids_shape..., D];
 * backward scatter-adds into the table's gradient. Ids outside [0, V) abort. ids is borrowed like
 * cf_cross_entropy's targets. */
cf_tensor *cf_embedding(cf_ctx *ctx, cf_tensor *table, const int32_t *ids, int ndim, const int *ids_shape);

/* ---- src/ops/dropout.c ---------------------------------------------------------------------- */
/* inverted dropout with a counter-based mask keyed by (ctx->seed, ctx->step, call counter, element):
 * independent of thread count and replayed exactly when a checkpointed region is recomputed.
 * Identity (no node) when p == 0 or ctx->training == 0. */
cf_tensor *cf_dropout(cf_ctx *ctx, cf_tensor *x, float p);

/* ---- src/ops/shape.c ------------------------------------------------------------------------ */
cf_tensor *cf_reshape(cf_ctx *ctx, cf_tensor *x, int ndim, const int *shape); /* shares data */
cf_tensor *cf_permute(cf_ctx *ctx, cf_tensor *x, const int *perm);            /* copies; perm has x->ndim entries */
cf_tensor *cf_concat(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, int dim);       /* equal shapes but dim */
/* columns [start, start+len) of the last dim, copied (splits a fused qkv) */
cf_tensor *cf_slice_last(cf_ctx *ctx, cf_tensor *x, int start, int len);

/* ---- src/ops/mask.c ------------------------------------------------------------------------- */
/* x [..., Tq, Tk] with entries set to -inf where masked. Causal: key j is masked for query i when
 * j > i + offset (offset = Tk - Tq lets queries sit at the end of a longer key sequence, as with a
 * memory). Explicit: mask [Tq, Tk] (or [B, Tq, Tk] matching x's leading dim), nonzero = keep. */
cf_tensor *cf_mask_causal(cf_ctx *ctx, cf_tensor *x, int offset);
cf_tensor *cf_mask_explicit(cf_ctx *ctx, cf_tensor *x, const uint8_t *keep, int batched);

/* ---- src/ops/reduce.c ----------------------------------------------------------------------- */
cf_tensor *cf_sum(cf_ctx *ctx, cf_tensor *x);                /* -> [1] */
cf_tensor *cf_mean(cf_ctx *ctx, cf_tensor *x);               /* -> [1] */

/* ---- src/ops/heads.c ------------------------------------------------------------------------
 * Ops on the heads of a fused projection qkv [B, T, (H + 2 Hkv) Dh]: H query heads, then Hkv key
 * heads, then Hkv value heads (Hkv divides H). docs/attention.md section 11. */
/* Rotary positions on the query and key heads: the first rot dims of each (rot even) as pairs
 * (i, i + rot/2) turned by (pos0 + t) theta^(-2i/rot) at row t; value heads copied. */
cf_tensor *cf_rope(cf_ctx *ctx, cf_tensor *qkv, int n_heads, int n_kv_heads, int rot, float theta, int64_t pos0);
/* The same rotation in place on plain floats (cached decoding): T rows of x, row t at x + t stride
 * and at position pos0 + t, heads [0, n_heads) of dh columns each from the row's start. */
void cf_rope_rows(float *x, int T, int64_t stride, int n_heads, int dh, int rot, float theta, int64_t pos0);
/* RMSNorm of every query head (weight wq [Dh]) and key head (wk [Dh]); value heads copied */
cf_tensor *cf_qk_norm(cf_ctx *ctx, cf_tensor *qkv, cf_tensor *wq, cf_tensor *wk, int n_heads, int n_kv_heads, float eps);
/* The same in place on plain floats (cached decoding): T rows of x, row t at x + t stride, n_q
 * query heads then n_k key heads of dh columns from the row's start */
void cf_qk_norm_rows(float *x, int T, int64_t stride, int n_q, int n_k, int dh, const float *wq, const float *wk,
                     float eps);
/* -> [B, T, 3 H Dh]: key and value head h from shared head h / (H / Hkv) */
cf_tensor *cf_kv_repeat(cf_ctx *ctx, cf_tensor *qkv, int n_heads, int n_kv_heads);
/* ALiBi's slope of head h of H (Press et al. 2022): the score of query i and key j gains
 * -slope |i - j| */
float cf_alibi_slope(int h, int H);

/* ---- src/ops/attention.c -------------------------------------------------------------------- */
typedef struct cf_attn_opts {
    int            causal;         /* key j visible to query i only when j <= i + (Tk - Tq) */
    float          scale;          /* 0 means 1/sqrt(Dh) */
    float          dropout;        /* on the attention probabilities (training only) */
    const uint8_t *key_keep;       /* [B, Tk], nonzero = real token; NULL = all (padding masks);
                                      borrowed: keep it valid until backward has run */
    int            alibi;          /* ALiBi: score of query i, key j (key positions) gains
                                      -cf_alibi_slope(h, H) |i + Tk - Tq - j| */
} cf_attn_opts;
/* Fused multi-head scaled-dot-product attention, tiled so that no T x T matrix is stored: backward
 * recomputes probabilities from the saved per-row log-sum-exp. q [B, Tq, H*Dh], k and v
 * [B, Tk, H*Dh] (heads are contiguous column blocks, as after a fused qkv projection); returns
 * [B, Tq, H*Dh] with heads merged back in the same layout. o may be NULL (all defaults). With
 * ctx->bf16 (and Dh even) the operands of its products are rounded to bfloat16, sums fp32. */
cf_tensor *cf_attention(cf_ctx *ctx, cf_tensor *q, cf_tensor *k, cf_tensor *v, int n_heads,
                        const cf_attn_opts *o);
/* The same on a fused projection qkv [B, T, 3*H*Dh] (all q columns, then k, then v), reading q,
 * k and v in place without splitting copies. */
cf_tensor *cf_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, const cf_attn_opts *o);

#endif
