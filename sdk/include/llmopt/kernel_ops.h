/* llmopt SDK: the op contract every kernel plugin implements (CPU, CUDA, ...). For each op: the
 * inputs, the output, the parameter struct and the shapes. Tensors are row-major; activations are
 * f32; the key dtype of an op is its weight's dtype (matmul, embedding) or f32. Kernels run on the
 * device their tensors live on; the caller allocates `out` there. Unless an op says otherwise, out
 * must not alias an input. Ops are named by the LLMOPT_OP_* strings. */
#ifndef LLMOPT_KERNEL_OPS_H
#define LLMOPT_KERNEL_OPS_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** matmul: out[M,N] = x[M,K] · W (+ bias[N]) (+ out, when accumulate).
 *  in[0] x [M,K] f32; in[1] W, layout per w_layout, of the key dtype; in[2] bias [N] f32,
 *  optional (n_in == 3). */
#define LLMOPT_OP_MATMUL "matmul"
typedef enum llmopt_w_layout {
    LLMOPT_W_OUT_IN = 0, /**< W is [N,K]: torch.nn.Linear, Llama */
    LLMOPT_W_IN_OUT = 1  /**< W is [K,N]: transformers' Conv1D, GPT-2 */
} llmopt_w_layout;
typedef struct llmopt_op_matmul {
    uint32_t struct_size;
    int32_t w_layout;   /**< llmopt_w_layout */
    int32_t accumulate; /**< 1: out += result (residual connections), 0: out = result */
} llmopt_op_matmul;

/** embedding: out[T,C] = table[ids[t], :]. in[0] table [V,C] of the key dtype; in[1] ids [T] i32.
 *  An id outside [0,V) is an LLMOPT_EINVAL. No params. */
#define LLMOPT_OP_EMBEDDING "embedding"

/** layernorm: out[M,C] = (x - mean) / sqrt(var + eps) * gamma + beta (biased variance, as
 *  torch). in[0] x [M,C]; in[1] gamma [C]; in[2] beta [C], optional. */
#define LLMOPT_OP_LAYERNORM "layernorm"
/** rmsnorm: out[M,C] = x / sqrt(mean(x^2) + eps) * gamma. in[0] x [M,C]; in[1] gamma [C]. */
#define LLMOPT_OP_RMSNORM "rmsnorm"
typedef struct llmopt_op_norm {
    uint32_t struct_size;
    float eps;
} llmopt_op_norm;

/** rope: rotary position embedding, rotate-half convention (transformers' Llama, GPT-NeoX).
 *  in[0] x [T,H,D]; out [T,H,D], may alias in[0]. Row t has position (n_past + t) / scale;
 *  the first rot_dim dims of each head rotate with inv_freq[i] = theta^(-2i/rot_dim). */
#define LLMOPT_OP_ROPE "rope"
typedef struct llmopt_op_rope {
    uint32_t struct_size;
    int32_t n_past;     /**< position of row 0 */
    int32_t rot_dim;    /**< rotated dims per head (even, <= D) */
    float theta;        /**< rope_theta, 10000 for Llama 2 */
    float scale;        /**< linear rope scaling factor (1 = none) */
} llmopt_op_rope;

/** attention: scaled dot-product attention with grouped-query heads and a causal mask.
 *  in[0] q [T,Hq,D]; in[1] k [S,Hkv,D]; in[2] v [S,Hkv,D] (the KV cache, S >= n_past + T
 *  rows valid up to n_past + T); out [T,Hq,D]. Query row t sees keys 0..n_past+t when causal.
 *  Hq must be a multiple of Hkv; query head h reads kv head h / (Hq/Hkv). */
#define LLMOPT_OP_ATTENTION "attention"
typedef struct llmopt_op_attention {
    uint32_t struct_size;
    int32_t n_past;
    int32_t causal;
    float scale;        /**< usually 1/sqrt(D) */
} llmopt_op_attention;

/** Elementwise activations, out may alias in[0]:
 *  gelu (tanh approximation, transformers' "gelu_new"/"gelu_pytorch_tanh"), gelu_erf (exact),
 *  silu. in[0] x; out same shape. */
#define LLMOPT_OP_GELU "gelu"
#define LLMOPT_OP_GELU_ERF "gelu_erf"
#define LLMOPT_OP_SILU "silu"
/** swiglu: out = silu(gate) * up. in[0] gate [M,F]; in[1] up [M,F]; out may alias in[0]. */
#define LLMOPT_OP_SWIGLU "swiglu"
/** add: out = a + b, same shapes; out may alias in[0]. */
#define LLMOPT_OP_ADD "add"
/** softmax over the last dim. in[0] x [M,N]; out may alias in[0]. */
#define LLMOPT_OP_SOFTMAX "softmax"

/** cross_entropy: out[t] = -log softmax(logits[t])[targets[t]], 0 where the target is
 *  ignore_index. in[0] logits [T,V] f32; in[1] targets [T] i32; out [T] f32. */
#define LLMOPT_OP_CROSS_ENTROPY "cross_entropy"
typedef struct llmopt_op_cross_entropy {
    uint32_t struct_size;
    int32_t ignore_index; /**< -100 as in torch */
} llmopt_op_cross_entropy;

#ifdef __cplusplus
}
#endif
#endif
