/* The op table: name and backward of every op kind, indexed by cf_op_kind. A kind without a row
 * here is caught by cf_op_table_check() (run by the test suite). */
#include "cformer/core.h"
#include "backward.h"

const cf_op_info cf_op_table[CF_OP_COUNT] = {
    [CF_OP_MATMUL]        = {"matmul", cf_matmul_backward},
    [CF_OP_LINEAR]        = {"linear", cf_linear_backward},
    [CF_OP_ADD]           = {"add", cf_add_backward},
    [CF_OP_MUL]           = {"mul", cf_mul_backward},
    [CF_OP_SCALE]         = {"scale", cf_scale_backward},
    [CF_OP_GELU]          = {"gelu", cf_gelu_backward},
    [CF_OP_RELU]          = {"relu", cf_relu_backward},
    [CF_OP_ELU]           = {"elu", cf_elu_backward},
    [CF_OP_SOFTMAX]       = {"softmax", cf_softmax_backward},
    [CF_OP_CROSS_ENTROPY] = {"cross_entropy", cf_cross_entropy_backward},
    [CF_OP_LAYERNORM]     = {"layernorm", cf_layernorm_backward},
    [CF_OP_RMSNORM]       = {"rmsnorm", cf_rmsnorm_backward},
    [CF_OP_EMBEDDING]     = {"embedding", cf_embedding_backward},
    [CF_OP_DROPOUT]       = {"dropout", cf_dropout_backward},
    [CF_OP_RESHAPE]       = {"reshape", cf_reshape_backward},
    [CF_OP_PERMUTE]       = {"permute", cf_permute_backward},
    [CF_OP_CONCAT]        = {"concat", cf_concat_backward},
    [CF_OP_SLICE]         = {"slice", cf_slice_backward},
    [CF_OP_MASK]          = {"mask", cf_mask_backward},
    [CF_OP_SUM]           = {"sum", cf_sum_backward},
    [CF_OP_MEAN]          = {"mean", cf_mean_backward},
    [CF_OP_ATTENTION]     = {"attention", cf_attention_backward},
    [CF_OP_CHECKPOINT]    = {"checkpoint", cf_checkpoint_backward},
    [CF_OP_MASKED_ATTENTION] = {"masked_attention", cf_masked_attention_backward},
    [CF_OP_KERNEL_ATTENTION] = {"kernel_attention", cf_kernel_attention_backward},
    [CF_OP_FAVOR]         = {"favor", cf_favor_backward},
    [CF_OP_XL_ATTENTION]  = {"xl_attention", cf_xl_attention_backward},
    [CF_OP_INFINI_ATTENTION] = {"infini_attention", cf_infini_attention_backward},
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
