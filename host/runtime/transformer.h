/* The transformer runtime: GPT-2 and Llama forward passes with a KV cache (prefill and decode),
 * built from registered kernels (the runtime never knows which plugin supplied them). */
#ifndef HOST_RUNTIME_TRANSFORMER_H
#define HOST_RUNTIME_TRANSFORMER_H

#include <stdint.h>
#include <llmopt/llmopt.h>
#include "arch.h"
#include "../util/error.h"

typedef struct tf_model tf_model;
typedef struct tf_session tf_session;

/* Binds a loaded model: reads its architecture, checks its tensors and finds a kernel for every
 * op on `device`. The model is referenced, not copied. */
int tf_model_new(llmopt_model *m, int device, tf_model **out, llmopt_error *err);
void tf_model_free(tf_model *tm);
/* llmopt_matmul_precision of every matmul by a weight (LLMOPT_MATMUL_HIGHEST when bound): with
 * MEDIUM, kernels that can may round x and W to bf16 before multiplying. */
void tf_model_set_matmul_precision(tf_model *tm, int precision);
const arch_config *tf_model_arch(const tf_model *tm);
/* The model it was bound to. */
const llmopt_model *tf_model_source(const tf_model *tm);
/* Calibration capture (quantization): while set, fn sees the input of every matmul by a weight
 * (x [rows, cols] f32, borrowed for the call) just before it runs, the LM head included; a
 * non-zero return fails the forward pass with that status. NULL turns it off. */
typedef int (*tf_capture_fn)(void *arg, const llmopt_tensor *w, const float *x, int rows, int cols);
void tf_model_set_capture(tf_model *tm, tf_capture_fn fn, void *arg);

/* One block at a time, for sequential calibration (GPTQ quantizes each group of weights on the
 * inputs the already quantized groups before it produce). A session of one sequence; positions
 * start at the session's position and do not advance (rewind between sequences as usual). */
/* x[T, n_embd] = token (+ position) embeddings of ids. */
int tf_embed(tf_session *s, const int32_t *ids, int T, float *x, llmopt_error *err);
/* A block in steps, each ending where the next linear weights take their input (GPTQ's true
 * sequential order: each group quantized before the inputs of the next are made). step:
 *   TF_STEP_LN1       buf[T, n_embd] = ln1(x)                         (c_attn | q, k, v)
 *   TF_STEP_ATTN      buf[T, n_head*head_dim] = attention of ln1(x)   (o)
 *   TF_STEP_ATTN_OUT  x += buf · W_o (+ b); buf[T, n_embd] = ln2(x)   (c_fc | gate, up)
 *   TF_STEP_MLP       buf[T, n_ff] = act(ln2(x) · W_up)               (down)
 *   TF_STEP_MLP_OUT   x += buf · W_down (+ b): the block's output
 * buf of ATTN_OUT is ATTN's and of MLP_OUT is MLP's (for the same x). Run with the capture hook
 * unset (the caller reports buf); tf_block_step_weights names the weights (up to 3) whose input
 * the step's buf is. */
enum { TF_STEP_LN1, TF_STEP_ATTN, TF_STEP_ATTN_OUT, TF_STEP_MLP, TF_STEP_MLP_OUT, TF_STEPS };
int tf_block_step(tf_session *s, int layer, int step, float *x, float *buf, int T, llmopt_error *err);
int tf_block_step_weights(const tf_model *tm, int layer, int step, const llmopt_tensor **w);
/* The final norm of x[T, n_embd] into out: the LM head's input. */
int tf_final_norm(tf_session *s, const float *x, int T, float *out, llmopt_error *err);
const llmopt_tensor *tf_model_lm_head(const tf_model *tm);
/* Re-reads layer l's linear weights from the model after they were replaced (model_set), and
 * finds kernels for their dtypes. Norm gains and biases are kept as bound. */
int tf_model_rebind_weights(tf_model *tm, int l, llmopt_error *err);

/* A sequence's state: the KV cache for up to max_ctx positions (0 = the model's context). */
int tf_session_new(tf_model *tm, int max_ctx, tf_session **out, llmopt_error *err);
/* A batch of n_seq sequences, each with its own cache and position: one forward call runs the
 * same number of new tokens for each (their projections and MLPs as one [n_seq*T] matmul). */
int tf_session_new_batch(tf_model *tm, int n_seq, int max_ctx, tf_session **out, llmopt_error *err);
int tf_session_n_seq(const tf_session *s);
int tf_session_seq_pos(const tf_session *s, int seq);
void tf_session_free(tf_session *s);
/* Positions already in the cache (of sequence 0), and how many it holds. */
int tf_session_pos(const tf_session *s);
int tf_session_capacity(const tf_session *s);
const tf_model *tf_session_model(const tf_session *s);
/* Forgets cached positions from pos on, in every sequence (0 starts new sequences). */
void tf_session_rewind(tf_session *s, int pos);

/* Runs n tokens at the current position, appending their keys and values to the cache.
 * logits (may be NULL): all_logits ? [n, vocab] : [vocab] for the last token. One-sequence
 * sessions only. */
int tf_forward(tf_session *s, const int32_t *ids, int n, float *logits, int all_logits, llmopt_error *err);
/* The batch form: ids [n_seq, n]; logits (may be NULL): all_logits ? [n_seq, n, vocab] :
 * [n_seq, vocab] (each sequence's last token). */
int tf_forward_batch(tf_session *s, const int32_t *ids, int n, float *logits, int all_logits, llmopt_error *err);

#endif
