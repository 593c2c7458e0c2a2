/* The backward half of every op, for the op table (src/ops/op_table.c). Each is defined
 * beside its forward in the file named here. Internal: not part of the public headers. */
#ifndef CFORMER_OPS_BACKWARD_H
#define CFORMER_OPS_BACKWARD_H

#include "cformer/core.h"

void cf_matmul_backward(cf_ctx *ctx, cf_node *n);        /* ops/matmul.c */
void cf_linear_backward(cf_ctx *ctx, cf_node *n);        /* ops/matmul.c */
/* linear and the ops fused with it (ops/matmul.c): the output [..., out] of x W^T after the shape
 * checks (op names the caller in messages), and y = x W^T + b through the precision's GEMM, the
 * bias written by its before hook, then after(arg, ...) on each final block of y (NULL: none) */
cf_tensor *cf_linear_output(cf_ctx *ctx, const cf_tensor *x, const cf_tensor *w, const cf_tensor *b, const char *op);
void cf_linear_product(cf_ctx *ctx, const cf_tensor *x, const cf_tensor *w, const cf_tensor *b, float *y,
                       void (*after)(void *arg, int i0, int j0, int rows, int cols), void *arg);
void cf_add_backward(cf_ctx *ctx, cf_node *n);           /* ops/elementwise.c */
void cf_mul_backward(cf_ctx *ctx, cf_node *n);           /* ops/elementwise.c */
void cf_scale_backward(cf_ctx *ctx, cf_node *n);         /* ops/elementwise.c */
void cf_gelu_backward(cf_ctx *ctx, cf_node *n);          /* ops/activation.c */
void cf_relu_backward(cf_ctx *ctx, cf_node *n);          /* ops/activation.c */
void cf_elu_backward(cf_ctx *ctx, cf_node *n);           /* ops/activation.c */
void cf_silu_backward(cf_ctx *ctx, cf_node *n);          /* ops/activation.c */
void cf_glu_backward(cf_ctx *ctx, cf_node *n);           /* ops/activation.c */
void cf_rope_backward(cf_ctx *ctx, cf_node *n);          /* ops/heads.c */
void cf_qk_norm_backward(cf_ctx *ctx, cf_node *n);       /* ops/heads.c */
void cf_kv_repeat_backward(cf_ctx *ctx, cf_node *n);     /* ops/heads.c */
void cf_softmax_backward(cf_ctx *ctx, cf_node *n);       /* ops/softmax.c */
void cf_cross_entropy_backward(cf_ctx *ctx, cf_node *n); /* ops/cross_entropy.c */
void cf_layernorm_backward(cf_ctx *ctx, cf_node *n);     /* ops/norm.c */
void cf_rmsnorm_backward(cf_ctx *ctx, cf_node *n);       /* ops/norm.c */
void cf_embedding_backward(cf_ctx *ctx, cf_node *n);     /* ops/embedding.c */
void cf_dropout_backward(cf_ctx *ctx, cf_node *n);       /* ops/dropout.c */
void cf_reshape_backward(cf_ctx *ctx, cf_node *n);       /* ops/shape.c */
void cf_permute_backward(cf_ctx *ctx, cf_node *n);       /* ops/shape.c */
void cf_concat_backward(cf_ctx *ctx, cf_node *n);        /* ops/shape.c */
void cf_slice_backward(cf_ctx *ctx, cf_node *n);         /* ops/shape.c */
void cf_mask_backward(cf_ctx *ctx, cf_node *n);          /* ops/mask.c */
void cf_sum_backward(cf_ctx *ctx, cf_node *n);           /* ops/reduce.c */
void cf_mean_backward(cf_ctx *ctx, cf_node *n);          /* ops/reduce.c */
void cf_attention_backward(cf_ctx *ctx, cf_node *n);     /* ops/attention.c */
void cf_checkpoint_backward(cf_ctx *ctx, cf_node *n);    /* autograd/checkpoint.c */
void cf_masked_attention_backward(cf_ctx *ctx, cf_node *n); /* attention/masked.c */
void cf_kernel_attention_backward(cf_ctx *ctx, cf_node *n); /* attention/linear.c */
void cf_favor_backward(cf_ctx *ctx, cf_node *n);         /* attention/performer.c */
void cf_xl_attention_backward(cf_ctx *ctx, cf_node *n);  /* attention/xl.c */
void cf_infini_attention_backward(cf_ctx *ctx, cf_node *n); /* attention/infini.c */
void cf_linear_gelu_backward(cf_ctx *ctx, cf_node *n);   /* ops/linear_gelu.c */

#endif
