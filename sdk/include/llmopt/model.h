/* llmopt SDK: models. A model is an architecture config, named tensors (named as in the
 * Hugging Face checkpoint, so load/save round trips are lossless) and provenance. It is opaque
 * and refcounted; plugins reach it through llmopt_host_api's model_* members. */
#ifndef LLMOPT_MODEL_H
#define LLMOPT_MODEL_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque model handle. Models handed to a stage as inputs are borrowed and read-only; a stage
 *  that changes a model clones it (sharing every tensor) and sets the clone as its output. */
typedef struct llmopt_model llmopt_model;

/** Model families the runtime runs (config.json model_type gpt2; llama, mistral, qwen2). */
typedef enum llmopt_arch_family { LLMOPT_ARCH_GPT2 = 0, LLMOPT_ARCH_LLAMA = 1 } llmopt_arch_family;
/** The MLP's activation (GPT-2) or the gate's (Llama): gelu with tanh (gelu_new,
 *  gelu_pytorch_tanh), gelu with erf, silu. */
typedef enum llmopt_arch_act { LLMOPT_ACT_GELU_TANH = 0, LLMOPT_ACT_GELU_ERF = 1, LLMOPT_ACT_SILU = 2 } llmopt_arch_act;

/** The most rotated pairs llmopt_arch_info holds (head_dim up to 512). */
#define LLMOPT_ROPE_MAX_FREQ 256

/** A runnable model's architecture as the runtime reads it from config.json (defaults and the
 *  model_type variants applied: Qwen2's q/k/v biases, Mistral's window), for a plugin that
 *  rebuilds the forward pass elsewhere (llmopt_host_api.model_arch_info; the ONNX export).
 *  Append-only: the caller sets struct_size to sizeof what it was built with. */
typedef struct llmopt_arch_info {
    uint32_t struct_size;
    int32_t family;              /**< llmopt_arch_family */
    int32_t n_layer, n_embd;     /**< blocks; hidden size */
    int32_t n_head, n_kv_head;   /**< query heads; key/value heads (GQA; n_head for GPT-2) */
    int32_t head_dim, n_ff;      /**< per head; the MLP's width */
    int32_t vocab, n_ctx;        /**< vocabulary; positions the model runs */
    float norm_eps;              /**< LayerNorm (GPT-2) or RMSNorm (Llama) epsilon */
    int32_t act;                 /**< llmopt_arch_act */
    int32_t tied;                /**< the LM head is the token embedding */
    int32_t attn_bias, o_bias, mlp_bias; /**< q/k/v, o_proj, gate/up/down biases (Llama) */
    int32_t attn_unscaled;       /**< GPT-2 scale_attn_weights false: scores not / sqrt(head_dim) */
    int32_t attn_scale_by_layer; /**< GPT-2 scale_attn_by_inverse_layer_idx: layer l's scores / (l+1) */
    float rope_scale;            /**< linear rope scaling: positions are divided by it (1: none) */
    int32_t rope_n_freq;         /**< rotated pairs: head_dim / 2 for Llama, 0 for GPT-2 */
    /** radians per (scaled) position of each rotated pair: theta^(-2i/head_dim), or the
     *  llama3 rope_scaling table; pair i rotates dims i and i + head_dim/2 (rotate_half) */
    float rope_freq[LLMOPT_ROPE_MAX_FREQ];
} llmopt_arch_info;
LLMOPT_PIN(llmopt_arch_info, family, 4);
LLMOPT_PIN(llmopt_arch_info, norm_eps, 40);
LLMOPT_PIN(llmopt_arch_info, rope_scale, 72);
LLMOPT_PIN(llmopt_arch_info, rope_n_freq, 76);
LLMOPT_PIN(llmopt_arch_info, rope_freq, 80);

#ifdef __cplusplus
}
#endif
#endif
