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
/** How exactly a matmul multiplies, as torch.set_float32_matmul_precision names it. */
typedef enum llmopt_matmul_precision {
    LLMOPT_MATMUL_HIGHEST = 0, /**< the products of x and W as given (f16/bf16 W widened), f32 sums */
    LLMOPT_MATMUL_MEDIUM = 1   /**< x and W may be rounded to bf16 (nearest even) before they are
                                    multiplied; sums stay f32. A kernel with no faster way computes
                                    as HIGHEST. */
} llmopt_matmul_precision;
typedef struct llmopt_op_matmul {
    uint32_t struct_size;
    int32_t w_layout;   /**< llmopt_w_layout */
    int32_t accumulate; /**< 1: out += result (residual connections), 0: out = result */
    int32_t precision;  /**< llmopt_matmul_precision; a caller whose struct_size ends before this
                             field (built before it) gets HIGHEST. Kernels refuse other values. */
} llmopt_op_matmul;
/** The size of llmopt_op_matmul before `precision`: kernels accept params of at least this size. */
#define LLMOPT_OP_MATMUL_V0_SIZE 12u
LLMOPT_PIN(llmopt_op_matmul, w_layout, 4);
LLMOPT_PIN(llmopt_op_matmul, accumulate, 8);
LLMOPT_PIN(llmopt_op_matmul, precision, LLMOPT_OP_MATMUL_V0_SIZE);

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
 *  in[0] x [T,H,D]; out [T,H,D], may alias in[0]. Row t has position p = (n_past + t) / scale;
 *  pair i of the first rot_dim dims of each head, (i, i + rot_dim/2), turns by p * inv_freq[i]
 *  radians, inv_freq[i] = theta^(-2i/rot_dim).
 *  in[1] inv_freq [rot_dim/2] f32, optional (n_in == 2), on the device of in[0]: the
 *  frequencies themselves, in place of theta's (rope_scaling "llama3" of Llama 3.1 and later;
 *  the runtime passes it only for such models). A kernel that takes only in[0] must refuse
 *  n_in == 2 with LLMOPT_EINVAL rather than ignore it. */
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

/* ---- backward ops (training). Gradients are f32. "accumulate" outputs are added to (+=), so
 * a caller zeroes them once per step; other outputs are overwritten. Ops that produce more than
 * one gradient take the extra output tensors in their params struct. ---- */

/** matmul_backward: for out = x·W (+ b): dx = dy·Wᵀ into out [M,K] (+= when accumulate_dx),
 *  dW += xᵀ·dy in W's layout (when dw), db += column sums of dy (when db).
 *  in[0] x [M,K] f32; in[1] W of the key dtype (for frozen quantized weights only dx is
 *  computed: dw must be NULL); in[2] dy [M,N]. out may be NULL-data (skip dx) when only dW is
 *  wanted: pass out->data == NULL. */
#define LLMOPT_OP_MATMUL_BACKWARD "matmul_backward"
struct llmopt_tensor;
typedef struct llmopt_op_matmul_backward {
    uint32_t struct_size;
    int32_t w_layout;            /**< as in the forward call */
    int32_t accumulate_dx;
    struct llmopt_tensor *dw;    /**< [N,K] or [K,N] like W, f32, accumulated; NULL: skip */
    struct llmopt_tensor *db;    /**< [N] f32, accumulated; NULL: skip */
    int32_t precision;           /**< llmopt_matmul_precision of dx (dW and db stay exact); a
                                      caller whose struct_size ends before it gets HIGHEST */
} llmopt_op_matmul_backward;
/** The size of llmopt_op_matmul_backward before `precision` (LP64). */
#define LLMOPT_OP_MATMUL_BACKWARD_V0_SIZE 32u
LLMOPT_PIN(llmopt_op_matmul_backward, dw, 16);
LLMOPT_PIN(llmopt_op_matmul_backward, db, 24);
LLMOPT_PIN(llmopt_op_matmul_backward, precision, LLMOPT_OP_MATMUL_BACKWARD_V0_SIZE);

/** layernorm_backward / rmsnorm_backward: in[0] x [M,C]; in[1] gamma [C]; in[2] dy [M,C];
 *  out dx [M,C] (overwritten); dgamma (and dbeta for layernorm) accumulated. Statistics are
 *  recomputed from x. */
#define LLMOPT_OP_LAYERNORM_BACKWARD "layernorm_backward"
#define LLMOPT_OP_RMSNORM_BACKWARD "rmsnorm_backward"
typedef struct llmopt_op_norm_backward {
    uint32_t struct_size;
    float eps;
    struct llmopt_tensor *dgamma;  /**< [C], accumulated */
    struct llmopt_tensor *dbeta;   /**< [C], accumulated; NULL for rmsnorm */
} llmopt_op_norm_backward;

/** rope_backward: the gradient of rope is the inverse rotation. in[0] dy [T,H,D]; in[1]
 *  inv_freq, optional, as rope's; out dx, may alias in[0]; params as rope (llmopt_op_rope). */
#define LLMOPT_OP_ROPE_BACKWARD "rope_backward"

/** attention_backward: in[0] q [T,Hq,D]; in[1] k [T,Hkv,D]; in[2] v [T,Hkv,D]; in[3] dy
 *  [T,Hq,D] (gradient of the attention output); out dq [T,Hq,D] (overwritten); dk, dv
 *  [T,Hkv,D] (overwritten). Training runs whole sequences: n_past must be 0, causal as given.
 *  Probabilities are recomputed. */
#define LLMOPT_OP_ATTENTION_BACKWARD "attention_backward"
typedef struct llmopt_op_attention_backward {
    uint32_t struct_size;
    int32_t causal;
    float scale;
    struct llmopt_tensor *dk;
    struct llmopt_tensor *dv;
} llmopt_op_attention_backward;

/** gelu_backward, gelu_erf_backward, silu_backward: in[0] x (the forward input); in[1] dy;
 *  out dx = dy * f'(x), may alias in[1]. */
#define LLMOPT_OP_GELU_BACKWARD "gelu_backward"
#define LLMOPT_OP_GELU_ERF_BACKWARD "gelu_erf_backward"
#define LLMOPT_OP_SILU_BACKWARD "silu_backward"
/** swiglu_backward: in[0] gate; in[1] up; in[2] dy; out dgate (overwritten); dup in params
 *  (overwritten). */
#define LLMOPT_OP_SWIGLU_BACKWARD "swiglu_backward"
typedef struct llmopt_op_swiglu_backward {
    uint32_t struct_size;
    struct llmopt_tensor *dup;
} llmopt_op_swiglu_backward;

/** embedding_backward: in[0] ids [T] i32; in[1] dy [T,C]; out dtable [V,C] f32, accumulated
 *  (rows of repeated ids add up). */
#define LLMOPT_OP_EMBEDDING_BACKWARD "embedding_backward"

/** cross_entropy_backward: in[0] logits [T,V]; in[1] targets [T] i32; out dlogits [T,V] =
 *  (softmax(logits) - onehot(target)) * scale, and 0 rows where the target is ignore_index. */
#define LLMOPT_OP_CROSS_ENTROPY_BACKWARD "cross_entropy_backward"
typedef struct llmopt_op_cross_entropy_backward {
    uint32_t struct_size;
    int32_t ignore_index;
    float scale;              /**< usually 1 / (number of non-ignored targets in the batch) */
} llmopt_op_cross_entropy_backward;

/** cross_entropy_fused: cross_entropy and cross_entropy_backward of the same rows in one pass
 *  over them (a trainer's loss and its gradient). in[0] logits [T,V]; in[1] targets [T] i32;
 *  out dlogits [T,V] as cross_entropy_backward's, may alias in[0]; losses [T] f32 in params as
 *  cross_entropy's out. Optional: a trainer falls back to the two ops when no plugin has it. */
#define LLMOPT_OP_CROSS_ENTROPY_FUSED "cross_entropy_fused"
typedef struct llmopt_op_cross_entropy_fused {
    uint32_t struct_size;
    int32_t ignore_index;
    float scale;
    struct llmopt_tensor *losses;
} llmopt_op_cross_entropy_fused;

/** adamw: one AdamW step (Loshchilov & Hutter; decoupled weight decay, bias correction) on a
 *  parameter. in[0] grad [n] f32; out param [n] f32 (updated in place); state m, v in params. */
#define LLMOPT_OP_ADAMW "adamw"
typedef struct llmopt_op_adamw {
    uint32_t struct_size;
    float lr, beta1, beta2, eps, weight_decay;
    float grad_scale;         /**< grads are multiplied by this first (clipping, accumulation) */
    int32_t step;             /**< 1-based, for the bias corrections */
    struct llmopt_tensor *m;  /**< first moment [n] f32 */
    struct llmopt_tensor *v;  /**< second moment [n] f32 */
} llmopt_op_adamw;

/** adamw_8bit: the AdamW step of adamw with both moments held in 8 bits, block-wise (Dettmers et
 *  al. 2022, "8-bit Optimizers via Block-wise Quantization"; bitsandbytes' AdamW8bit): the
 *  parameter's n values are blocks of LLMOPT_ADAMW8_BLOCK (the last may be shorter), each with
 *  its own absmax. A moment is code[c] * absmax[block] with c its byte: m through the signed
 *  dynamic map, v through the unsigned one (llmopt_adamw8_map). One step, per block: both moments
 *  are dequantized, updated and applied in f32 exactly as adamw does; then each block's new
 *  absmax is the largest |value|, and each value is stored as the byte of the map entry nearest
 *  to value / absmax (the count of midpoints (map[k] + map[k+1]) / 2 at or below it; absmax 0
 *  stores the byte of 0), except that a v above 0 is stored as byte 1 at least: a v rounded to
 *  0 under an m that is not would make the next step m / eps (1e4 times the f32 step, seen with
 *  gradients four decades apart in one block). in[0] grad [n] f32; out param [n] f32 (updated
 *  in place). */
#define LLMOPT_OP_ADAMW_8BIT "adamw_8bit"
#define LLMOPT_ADAMW8_BLOCK 256
typedef struct llmopt_op_adamw_8bit {
    uint32_t struct_size;
    float lr, beta1, beta2, eps, weight_decay;
    float grad_scale;               /**< as adamw */
    int32_t step;                   /**< 1-based */
    struct llmopt_tensor *m;        /**< first moment codes [n] u8, signed map */
    struct llmopt_tensor *v;        /**< second moment codes [n] u8, unsigned map */
    struct llmopt_tensor *m_absmax; /**< [ceil(n / LLMOPT_ADAMW8_BLOCK)] f32 */
    struct llmopt_tensor *v_absmax; /**< [ceil(n / LLMOPT_ADAMW8_BLOCK)] f32 */
} llmopt_op_adamw_8bit;
LLMOPT_PIN(llmopt_op_adamw_8bit, step, 28);
LLMOPT_PIN(llmopt_op_adamw_8bit, m, 32);

/** The dynamic maps of adamw_8bit (bitsandbytes' create_dynamic_map), 256 values ascending:
 *  0, 1, and for each decade i = 0..6 the midpoints of E linearly spaced points from 0.1 to 1
 *  (both ends included), times 10^(i-6): E = 2^i + 1 and each midpoint with both signs for the
 *  signed map, E = 2^(i+1) + 1 and positive for the unsigned one. Each value is computed in
 *  double and rounded to f32 once. Writes 256 floats to out. */
static inline void llmopt_adamw8_map(int is_signed, float *out) {
    double v[256];
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int e = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
        double scale = 1.0;
        for (int k = i; k < 6; k++) scale /= 10.0;
        for (int j = 0; j + 1 < e; j++) {
            double lo = 0.1 + 0.9 * j / (e - 1), hi = 0.1 + 0.9 * (j + 1) / (e - 1);
            v[n++] = scale * (lo + hi) / 2.0;
            if (is_signed) v[n++] = -scale * (lo + hi) / 2.0;
        }
    }
    v[n++] = 0.0, v[n++] = 1.0;
    for (int i = 1; i < n; i++) /* insertion sort: 256 values, once */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    for (int i = 0; i < 256; i++) out[i] = (float)v[i];
}

#ifdef __cplusplus
}
#endif
#endif
