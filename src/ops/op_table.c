/* The op table: name, backward, FLOP count and selective-recompute flags (core.h: CF_RC_*) of every
 * op kind, indexed by cf_op_kind. A kind without a row here is caught by cf_op_table_check() (run
 * by the test suite). The flags say what each backward reads, as its code does: add, scale and
 * dropout read no values (dropout regenerates its mask from the key), linear reads x and W, gelu
 * its input, the norms their input (and the statistics their forward saves), attention q, k, v,
 * its output and its log-sum-exp. */
#include "cformer/core.h"
#include "backward.h"

/* FLOP counts for the profiler (core.h: cf_flops_fn); a multiply-add counts 2. */

/* C = op(A) op(B): 2 M N K per batch = 2 numel(A) N (A always carries the whole batch); backward
 * is one such product per input that needs a gradient */
static void matmul_flops(const cf_node *n, int recorded, double *fwd, double *bwd) {
    (void)recorded;
    double f = 2.0 * (double)n->in[0]->numel * cf_cols(n->out);
    *fwd = f;
    *bwd = f * (n->in[0]->requires_grad + n->in[1]->requires_grad);
}

/* y = x W^T + b: 2 rows in out; backward dX = G W and dW = G^T x (the bias sum is not counted) */
static void linear_flops(const cf_node *n, int recorded, double *fwd, double *bwd) {
    (void)recorded;
    double f = 2.0 * (double)n->in[0]->numel * cf_cols(n->out);
    *fwd = f;
    *bwd = f * (n->in[0]->requires_grad + n->in[1]->requires_grad);
}

/* Softmax attention: S = Q K^T and O = P V over the (query, key) pairs it scores, 4 C per pair
 * (C = heads x head width); backward recomputes S and forms dP, dV, dQ, dK: 10 C per pair. Causal
 * attention scores key j for query i when j <= i + Tk - Tq, which only a recorded node says. */
static void attention_flops(const cf_node *n, int recorded, double *fwd, double *bwd) {
    if (!recorded) { *fwd = *bwd = -1; return; }
    int B = n->out->shape[0], Tq = n->out->shape[1], C = n->out->shape[2];
    int Tk = n->n_in == 1 ? Tq : n->in[1]->shape[1];
    double pairs = (double)Tq * Tk;
    if (n->iarg[1]) {
        pairs = 0;
        for (int i = 0; i < Tq; i++) {
            int keys = i + Tk - Tq + 1;
            pairs += keys < 0 ? 0 : keys > Tk ? Tk : keys;
        }
    }
    *fwd = 4.0 * B * pairs * C;
    *bwd = 10.0 * B * pairs * C;
}

const cf_op_info cf_op_table[CF_OP_COUNT] = {
    [CF_OP_MATMUL]        = {"matmul", cf_matmul_backward, matmul_flops},
    [CF_OP_LINEAR]        = {"linear", cf_linear_backward, linear_flops, CF_RC_SET | CF_RC_IN | CF_RC_SKIP},
    [CF_OP_ADD]           = {"add", cf_add_backward, NULL, CF_RC_SET | CF_RC_KEEP},
    [CF_OP_MUL]           = {"mul", cf_mul_backward},
    [CF_OP_SCALE]         = {"scale", cf_scale_backward, NULL, CF_RC_SET},
    [CF_OP_GELU]          = {"gelu", cf_gelu_backward, NULL, CF_RC_SET | CF_RC_IN},
    [CF_OP_RELU]          = {"relu", cf_relu_backward},
    [CF_OP_ELU]           = {"elu", cf_elu_backward},
    [CF_OP_SOFTMAX]       = {"softmax", cf_softmax_backward},
    [CF_OP_CROSS_ENTROPY] = {"cross_entropy", cf_cross_entropy_backward},
    [CF_OP_LAYERNORM]     = {"layernorm", cf_layernorm_backward, NULL, CF_RC_SET | CF_RC_IN},
    [CF_OP_RMSNORM]       = {"rmsnorm", cf_rmsnorm_backward, NULL, CF_RC_SET | CF_RC_IN},
    [CF_OP_EMBEDDING]     = {"embedding", cf_embedding_backward},
    [CF_OP_DROPOUT]       = {"dropout", cf_dropout_backward, NULL, CF_RC_SET},
    [CF_OP_RESHAPE]       = {"reshape", cf_reshape_backward},
    [CF_OP_PERMUTE]       = {"permute", cf_permute_backward},
    [CF_OP_CONCAT]        = {"concat", cf_concat_backward},
    [CF_OP_SLICE]         = {"slice", cf_slice_backward},
    [CF_OP_MASK]          = {"mask", cf_mask_backward},
    [CF_OP_SUM]           = {"sum", cf_sum_backward},
    [CF_OP_MEAN]          = {"mean", cf_mean_backward},
    [CF_OP_ATTENTION]     = {"attention", cf_attention_backward, attention_flops,
                             CF_RC_SET | CF_RC_IN | CF_RC_OUT | CF_RC_KEEP},
    [CF_OP_CHECKPOINT]    = {"checkpoint", cf_checkpoint_backward},
    [CF_OP_MASKED_ATTENTION] = {"masked_attention", cf_masked_attention_backward},
    [CF_OP_KERNEL_ATTENTION] = {"kernel_attention", cf_kernel_attention_backward},
    [CF_OP_FAVOR]         = {"favor", cf_favor_backward},
    [CF_OP_XL_ATTENTION]  = {"xl_attention", cf_xl_attention_backward},
    [CF_OP_INFINI_ATTENTION] = {"infini_attention", cf_infini_attention_backward},
    [CF_OP_LINEAR_GELU]   = {"linear_gelu", cf_linear_gelu_backward, linear_flops, CF_RC_SET | CF_RC_IN},
    [CF_OP_SILU]          = {"silu", cf_silu_backward},
    [CF_OP_GLU]           = {"glu", cf_glu_backward},
    [CF_OP_ROPE]          = {"rope", cf_rope_backward},
    [CF_OP_QK_NORM]       = {"qk_norm", cf_qk_norm_backward},
    [CF_OP_KV_REPEAT]     = {"kv_repeat", cf_kv_repeat_backward},
};

int cf_op_table_check(void) {
    for (int i = 0; i < CF_OP_COUNT; i++)
        if (!cf_op_table[i].name || !cf_op_table[i].backward) return cf_set_error("op kind %d has no row in cf_op_table", i);
    return 0;
}
