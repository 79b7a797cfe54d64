/* The onnx plugin's parts: the graph builder (ox.h) and the exporters of each architecture,
 * which read the model through the host API table. */
#ifndef PLUGINS_ONNX_EXPORT_H
#define PLUGINS_ONNX_EXPORT_H

#include <llmopt/llmopt.h>

#include "ox.h"

extern const llmopt_host_api *ox_api;
extern const llmopt_stage_desc ox_export_stage;

/* What the graph is asked to be (the stage's parameters). */
typedef struct ox_opts {
    int64_t opset;
    int cache;
    int last;         /* logits of the last position only */
    int int8_compute; /* MatMulNBits accuracy_level 4: activations rounded to int8 per block */
    int masked;       /* attention_mask and position_ids inputs */
} ox_opts;

/* The f32 tensors a graph's initializers point into, held until the model is written. */
typedef struct ox_keep {
    const llmopt_tensor **t;
    size_t n, cap;
} ox_keep;
/* keep takes t's reference; non-zero (t not taken) when out of memory */
int ox_keep_add(llmopt_stage_ctx *ctx, ox_keep *keep, const llmopt_tensor *t);
/* The f32 values of the model's tensor name: a new reference (the caller's to unref), or a copy
 * converted from f16 or bf16; ox_f32 keeps it in keep instead. NULL after set_error when it is
 * missing or not a float type. */
const llmopt_tensor *ox_f32_ref(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *name);
const llmopt_tensor *ox_f32(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *name, ox_keep *keep);

/* ---- common.c ---- */
/* an initializer of checkpoint tensor name as it is, or transposed (name.T: a Linear's [out, in]
 * as MatMul's [in, out]); NULL after set_error */
const char *ox_tensor(llmopt_stage_ctx *ctx, const llmopt_model *m, ox_graph *g, ox_keep *keep, const char *name);
const char *ox_tensor_t(llmopt_stage_ctx *ctx, const llmopt_model *m, ox_graph *g, ox_keep *keep, const char *name);
/* ---- nbits.c ---- */
/* x W^T (+ bias) for checkpoint weight name, W [N, K]: MatMul on float values, MatMulNBits
 * (com.microsoft) on 4-bit GQ and Q4_0 blocks, other quantized types dequantized; NULL after
 * set_error */
const char *ox_linear(llmopt_stage_ctx *ctx, const llmopt_model *m, const ox_opts *o, ox_graph *g, ox_keep *keep,
                      const char *name, const char *x, const char *bias);

/* The graph inputs: input_ids int64 [batch, sequence] and, with a cache, past_key_values.<l>.key
 * and .value float [batch, kv_heads, past_sequence, head_dim] for every block (the names
 * optimum's ONNX models use); the shape of input_ids, the positions p..p+s-1 [s] after the p
 * cached ones, and the additive causal mask [s, p + s]. */
typedef struct ox_positions_out {
    const char *ids_shape, *pos, *mask;
    int cache, n_layer;
    int64_t kv_heads, head_dim;
} ox_positions_out;
/* With opts->masked also attention_mask int64 [batch, p + s] (0: padding) and position_ids
 * int64 [batch, sequence], optimum's inputs: pos is then position_ids, and the mask also hides
 * the padding keys, broadcasting to scores of score_rank dimensions. */
void ox_positions(ox_graph *g, ox_positions_out *o, const ox_opts *opts, int n_layer, int64_t kv_heads, int64_t head_dim,
                  int score_rank);
/* block l's keys or values [b, kv_heads, p + s, hd]: the new ones [b, kv_heads, s, hd] after the
 * cached ones, as the graph output present.<l>.key / .value (without a cache: the new ones) */
const char *ox_cached(ox_graph *g, const ox_positions_out *o, int layer, int value, const char *fresh);
/* the present.* graph outputs, after logits */
void ox_cache_outputs(ox_graph *g, const ox_positions_out *o);
const char *ox_activation(ox_graph *g, int act, const char *x); /* llmopt_arch_act */
const char *ox_transpose(ox_graph *g, const char *x, const int64_t *perm, size_t n);
const char *ox_slice_last(ox_graph *g, const char *x, int64_t from, int64_t to); /* x[..., from:to] */
/* the graph output logits float [batch, sequence, vocab] = x [b, s, d] head^T (head [V, d]);
 * with last, only the last position's: [batch, 1, vocab] */
void ox_logits(ox_graph *g, const char *x, const char *head, const char *ids_shape, int64_t d, int64_t vocab, int last);

/* ---- the forward graphs: input_ids int64 [batch, sequence] (and the cache) -> logits float
 * [batch, sequence, vocab] at every position (and the cache). 0 or a status after set_error. ---- */
int ox_gpt2_graph(llmopt_stage_ctx *ctx, const llmopt_model *m, const llmopt_arch_info *a, const ox_opts *o, ox_graph *g,
                  ox_keep *keep);
int ox_llama_graph(llmopt_stage_ctx *ctx, const llmopt_model *m, const llmopt_arch_info *a, const ox_opts *o, ox_graph *g,
                   ox_keep *keep);

#endif
