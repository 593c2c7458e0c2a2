/* TEMPORARY while the ops are written in parallel: weak definitions that die, overridden by the
 * real ones. Deleted before the foundation lands. */
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wreturn-type"
#include "cformer/cformer.h"
#include "backward.h"
#define PENDING(name) cf_die(__FILE__, __LINE__, "%s is not written yet", name)
__attribute__((weak)) void cf_matmul_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_matmul_backward"); }
__attribute__((weak)) void cf_linear_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_linear_backward"); }
__attribute__((weak)) void cf_gelu_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_gelu_backward"); }
__attribute__((weak)) void cf_relu_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_relu_backward"); }
__attribute__((weak)) void cf_elu_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_elu_backward"); }
__attribute__((weak)) void cf_softmax_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_softmax_backward"); }
__attribute__((weak)) void cf_cross_entropy_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_cross_entropy_backward"); }
__attribute__((weak)) void cf_layernorm_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_layernorm_backward"); }
__attribute__((weak)) void cf_rmsnorm_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_rmsnorm_backward"); }
__attribute__((weak)) void cf_embedding_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_embedding_backward"); }
__attribute__((weak)) void cf_dropout_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_dropout_backward"); }
__attribute__((weak)) void cf_reshape_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_reshape_backward"); }
__attribute__((weak)) void cf_permute_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_permute_backward"); }
__attribute__((weak)) void cf_concat_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_concat_backward"); }
__attribute__((weak)) void cf_slice_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_slice_backward"); }
__attribute__((weak)) void cf_mask_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_mask_backward"); }
__attribute__((weak)) void cf_sum_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_sum_backward"); }
__attribute__((weak)) void cf_mean_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_mean_backward"); }
__attribute__((weak)) void cf_attention_backward(cf_ctx *ctx, cf_node *n) { (void)ctx; (void)n; PENDING("cf_attention_backward"); }
__attribute__((weak)) cf_tensor *cf_matmul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, int trans_a, int trans_b) { PENDING("cf_matmul"); }
__attribute__((weak)) cf_tensor *cf_linear(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b) { PENDING("cf_linear"); }
__attribute__((weak)) cf_tensor *cf_gelu(cf_ctx *ctx, cf_tensor *x) { PENDING("cf_gelu"); }
__attribute__((weak)) cf_tensor *cf_relu(cf_ctx *ctx, cf_tensor *x) { PENDING("cf_relu"); }
__attribute__((weak)) cf_tensor *cf_elu(cf_ctx *ctx, cf_tensor *x, float alpha) { PENDING("cf_elu"); }
__attribute__((weak)) cf_tensor *cf_softmax(cf_ctx *ctx, cf_tensor *x) { PENDING("cf_softmax"); }
__attribute__((weak)) cf_tensor *cf_cross_entropy(cf_ctx *ctx, cf_tensor *logits, const int32_t *targets, int ignore_index, float smoothing, int64_t *n_counted) { PENDING("cf_cross_entropy"); }
__attribute__((weak)) cf_tensor *cf_layernorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b, float eps) { PENDING("cf_layernorm"); }
__attribute__((weak)) cf_tensor *cf_rmsnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, float eps) { PENDING("cf_rmsnorm"); }
__attribute__((weak)) cf_tensor *cf_embedding(cf_ctx *ctx, cf_tensor *table, const int32_t *ids, int ndim, const int *ids_shape) { PENDING("cf_embedding"); }
__attribute__((weak)) cf_tensor *cf_dropout(cf_ctx *ctx, cf_tensor *x, float p) { PENDING("cf_dropout"); }
__attribute__((weak)) cf_tensor *cf_reshape(cf_ctx *ctx, cf_tensor *x, int ndim, const int *shape) { PENDING("cf_reshape"); }
__attribute__((weak)) cf_tensor *cf_permute(cf_ctx *ctx, cf_tensor *x, const int *perm) { PENDING("cf_permute"); }
__attribute__((weak)) cf_tensor *cf_concat(cf_ctx *ctx, cf_tensor *a, cf_tensor *b, int dim) { PENDING("cf_concat"); }
__attribute__((weak)) cf_tensor *cf_slice_last(cf_ctx *ctx, cf_tensor *x, int start, int len) { PENDING("cf_slice_last"); }
__attribute__((weak)) cf_tensor *cf_mask_causal(cf_ctx *ctx, cf_tensor *x, int offset) { PENDING("cf_mask_causal"); }
__attribute__((weak)) cf_tensor *cf_mask_explicit(cf_ctx *ctx, cf_tensor *x, const uint8_t *keep, int batched) { PENDING("cf_mask_explicit"); }
__attribute__((weak)) cf_tensor *cf_sum(cf_ctx *ctx, cf_tensor *x) { PENDING("cf_sum"); }
__attribute__((weak)) cf_tensor *cf_mean(cf_ctx *ctx, cf_tensor *x) { PENDING("cf_mean"); }
__attribute__((weak)) cf_tensor *cf_attention(cf_ctx *ctx, cf_tensor *q, cf_tensor *k, cf_tensor *v, int n_heads, const cf_attn_opts *o) { PENDING("cf_attention"); }
__attribute__((weak)) cf_tensor *cf_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, const cf_attn_opts *o) { PENDING("cf_attention_qkv"); }
__attribute__((weak)) void cf_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) { PENDING("cf_gemm"); }
__attribute__((weak)) void cf_gemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) { PENDING("cf_gemm_ref"); }
__attribute__((weak)) const char *cf_gemm_isa(void) { return "pending"; }
