/* Architecture configs of the model families the runtime runs (GPT-2, Llama), read from a
 * model's config.json values and checked against its tensors, so a bad checkpoint is one clear
 * error naming the field or tensor instead of a crash in the forward pass. */
#ifndef HOST_RUNTIME_ARCH_H
#define HOST_RUNTIME_ARCH_H

#include <llmopt/llmopt.h>
#include "../util/error.h"

typedef enum arch_family { ARCH_GPT2 = 0, ARCH_LLAMA = 1 } arch_family;
typedef enum arch_act { ACT_GELU_TANH = 0, ACT_GELU_ERF = 1, ACT_SILU = 2 } arch_act;

/* The most rotated pairs a rope frequency table holds: head_dim up to 512. */
#define ARCH_ROPE_MAX_FREQ 256

typedef struct arch_config {
    arch_family family;
    int n_layer;
    int n_embd;        /* hidden size C */
    int n_head;        /* query heads */
    int n_kv_head;     /* key/value heads (GQA); n_head for GPT-2 */
    int head_dim;      /* D */
    int n_ff;          /* MLP width */
    int vocab;
    int n_ctx;         /* max positions (Mistral, Qwen2: at most a sliding_window they use) */
    float norm_eps;
    float rope_theta;
    float rope_scale;  /* linear rope scaling factor, 1 = none */
    /* rope_scaling of rope_type "llama3" (Llama 3.1 and later): frequencies whose wavelength is
     * above original_ctx / low_freq turn `factor` times slower, those below original_ctx /
     * high_freq as they are, those between on a smooth ramp. rope_n_freq is 0 otherwise. */
    float rope_factor, rope_low_freq, rope_high_freq, rope_orig_ctx;
    int rope_n_freq;                            /* head_dim / 2 with a table, else 0 */
    float rope_inv_freq[ARCH_ROPE_MAX_FREQ];    /* the rope op's in[1]: radians per position */
    int tied;          /* lm_head shares the token embedding */
    int attn_bias;     /* q/k/v projections have biases (Llama attention_bias; Qwen2 always) */
    int o_bias;        /* o_proj has a bias (Llama attention_bias; Qwen2 never) */
    int mlp_bias;      /* Llama mlp_bias */
    int attn_unscaled; /* GPT-2 scale_attn_weights false: scores are not divided by sqrt(head_dim) */
    int attn_scale_by_layer; /* GPT-2 scale_attn_by_inverse_layer_idx: layer l's scores / (l + 1) */
    arch_act act;
} arch_config;

/* Reads and validates the config of a loaded model (model_type gpt2 or llama). Errors name the
 * config field ("config.json: num_key_value_heads (3) must divide num_attention_heads (4)") or
 * the tensor whose shape disagrees with it. */
int arch_from_model(const llmopt_model *m, arch_config *c, llmopt_error *err);

/* The attention scale of layer l: 1/sqrt(head_dim) (or 1, GPT-2's scale_attn_weights false),
 * over l + 1 with GPT-2's scale_attn_by_inverse_layer_idx. */
float arch_attn_scale(const arch_config *c, int layer);

/* Rotary pair i's frequency before any scaling, theta^(-2i/head_dim) radians per position. */
double arch_rope_base_freq(float theta, int head_dim, int i);

/* llama3 rope scaling's divisor of each rotated pair's base frequency theta^(-2i/head_dim), as
 * llama.cpp's converter writes them into GGUF's rope_freqs.weight: 1 for short wavelengths,
 * `factor` for long ones, a ramp between. Writes head_dim / 2 values. */
void arch_rope_llama3_divisors(float theta, int head_dim, double factor, double low_freq, double high_freq,
                               double orig_ctx, double *out);

/* The layout of a transformer block's linear weight w: GPT-2's Conv1D weights are [in, out]
 * (LLMOPT_W_IN_OUT) while they are float; quantized ones are stored [out, in] (LLMOPT_W_OUT_IN),
 * as Llama's Linear weights always are and as llama.cpp stores GPT-2's, because quantized rows
 * run along the inputs that each output's dot product reads. */
int arch_linear_layout(const arch_config *c, const llmopt_tensor *w);

/* arch_linear_layout for the 2-D tensor `name` of m, read from its model_type and name alone
 * (GPT-2's Conv1D weights are its block's "h.<i>." 2-D weights); LLMOPT_EINVAL when m has no 2-D
 * tensor of that name. The host API's model_linear_layout. */
int arch_model_linear_layout(const llmopt_model *m, const char *name);

/* The checkpoint name of a tensor: layer -1 for model-level tensors. Writes into buf. */
const char *arch_tensor_name(const arch_config *c, const llmopt_model *m, int layer, const char *what,
                             char *buf, size_t n);

#endif
