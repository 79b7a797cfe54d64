/* llmopt SDK: the host API table, every host service a plugin may use (the SQLite
 * sqlite3_api_routines pattern). A plugin links against no part of the host: it keeps the table
 * it gets in init and calls through it. The table is append-only; check struct_size (or
 * abi_minor) before using a member added after the minor you were built with. */
#ifndef LLMOPT_HOST_API_H
#define LLMOPT_HOST_API_H

#include "common.h"
#include "tensor.h"
#include "model.h"
#include "stage.h"
#include "kernel.h"
#include "device.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque: a forward-pass session over one model (its KV cache and scratch). */
typedef struct llmopt_session llmopt_session;

/** Text generation settings for llmopt_host_api.generate (transformers' generate() semantics). */
typedef struct llmopt_gen_params {
    uint32_t struct_size;
    int32_t max_tokens;         /**< new tokens at most */
    int32_t greedy;             /**< 1: argmax (also when temperature <= 0) */
    float temperature;
    int32_t top_k;              /**< 0: off */
    float top_p;                /**< 1: off */
    float repetition_penalty;   /**< 1: off */
    uint64_t seed;
    int32_t stop_at_eos;        /**< 1: stop after the model's end-of-sequence token */
} llmopt_gen_params;
LLMOPT_PIN(llmopt_gen_params, max_tokens, 4);
LLMOPT_PIN(llmopt_gen_params, temperature, 12);
LLMOPT_PIN(llmopt_gen_params, seed, 32);
LLMOPT_PIN(llmopt_gen_params, stop_at_eos, 40);

/** Opaque: a training engine bound to one model (trainer_new). */
typedef struct llmopt_trainer llmopt_trainer;

/** Training settings for llmopt_host_api.trainer_new; fill with train_options_default first. */
typedef struct llmopt_train_options {
    uint32_t struct_size;
    int32_t batch;                      /**< B sequences per micro-batch */
    int32_t seq;                        /**< T tokens per sequence (<= the model's context) */
    int32_t lora_rank;                  /**< > 0: freeze the base, train LoRA adapters */
    /** full fine-tuning: checkpoint names (globs, '*') of the tensors to train; none: all */
    const char *const *trainable;
    size_t n_trainable;
    /** LoRA targets: module names ("c_attn", "q_proj") or globs over the full name */
    const char *const *lora_targets;
    size_t n_lora_targets;
    float lora_alpha;                   /**< adapter scale alpha / rank (Hu et al. 2021) */
    float lora_dropout;                 /**< on the adapter's input, as PEFT */
    float beta1, beta2, eps, weight_decay; /**< AdamW (decoupled weight decay) */
    uint64_t seed;                      /**< adapter init and dropout */
    /** Appended in ABI 1.0 before its release (the host reads it when struct_size covers it):
     *  1 keeps only each layer's input from the forward and runs the layer again in the
     *  backward (activation checkpointing, transformers' gradient_checkpointing): far fewer
     *  saved activations for about a third more forward work; the same losses and gradients. */
    int32_t recompute;
    /** Appended in ABI 1.0 before its release, as recompute: 32 (or 0) keeps AdamW's moments in
     *  f32; 8 keeps those of tensors of 4096 values or more in 8 bits, block-wise (the adamw_8bit
     *  op, bitsandbytes' AdamW8bit): 2 bytes a value instead of 8, moments rounded to 8 bits. */
    int32_t optimizer_bits;
} llmopt_train_options;
LLMOPT_PIN(llmopt_train_options, batch, 4);
LLMOPT_PIN(llmopt_train_options, trainable, 16);
LLMOPT_PIN(llmopt_train_options, lora_targets, 32);
LLMOPT_PIN(llmopt_train_options, lora_alpha, 48);
LLMOPT_PIN(llmopt_train_options, seed, 72);
LLMOPT_PIN(llmopt_train_options, recompute, 80);
LLMOPT_PIN(llmopt_train_options, optimizer_bits, 84);

struct llmopt_host_api {
    uint32_t struct_size;
    uint16_t abi_major;
    uint16_t abi_minor;
    const char *host_version; /**< e.g. "0.1.0" */

    /* ---- logging ---- */
    /** One line to the host's log (stderr), prefixed with the level. No trailing newline needed. */
    void (*log)(int level, const char *fmt, ...) LLMOPT_PRINTF(2, 3);

    /* ---- dtypes and tensors ---- */
    /** Traits of a dtype, or NULL for an unknown value. */
    const llmopt_dtype_traits *(*dtype_traits)(int dtype);
    /** Looks a dtype up by its name ("f16"); -1 when unknown. */
    int (*dtype_from_name)(const char *name);
    /** A new zero-filled CPU tensor with one reference, owned by the caller; NULL on a bad shape
     *  (rows not a whole number of blocks) or out of memory. Write it before sharing it. */
    llmopt_tensor *(*tensor_new)(int dtype, int ndim, const int64_t *shape);
    /** Adds a reference; returns t. */
    const llmopt_tensor *(*tensor_ref)(const llmopt_tensor *t);
    /** Drops a reference; the storage is freed with the last one. NULL is ignored. */
    void (*tensor_unref)(const llmopt_tensor *t);
    /** Number of elements (product of the shape). */
    int64_t (*tensor_numel)(const llmopt_tensor *t);

    /* ---- models ---- */
    /** An empty model of an architecture ("gpt2", "llama"), refcount 1. */
    llmopt_model *(*model_new)(const char *arch);
    /** A copy sharing every tensor with src (copy on write), refcount 1. */
    llmopt_model *(*model_clone)(const llmopt_model *src);
    /** Drops a reference; NULL is ignored. */
    void (*model_unref)(llmopt_model *m);
    /** The architecture string. */
    const char *(*model_arch)(const llmopt_model *m);
    /** Number of tensors, and the name of the i-th in insertion (checkpoint) order. */
    size_t (*model_n_tensors)(const llmopt_model *m);
    const char *(*model_tensor_name)(const llmopt_model *m, size_t i);
    /** The tensor of that name (borrowed; immutable), or NULL. */
    const llmopt_tensor *(*model_get)(const llmopt_model *m, const char *name);
    /** Sets or replaces a tensor; the model takes its own reference (the caller keeps its). */
    int (*model_set)(llmopt_model *m, const char *name, const llmopt_tensor *t);
    /** Removes a tensor; LLMOPT_ENOTFOUND when absent. */
    int (*model_remove)(llmopt_model *m, const char *name);
    /** Architecture config (config.json) values by key; get returns LLMOPT_ENOTFOUND / NULL
     *  when the key is absent or of the other kind. */
    int (*model_cfg_get_num)(const llmopt_model *m, const char *key, double *out);
    const char *(*model_cfg_get_str)(const llmopt_model *m, const char *key);
    int (*model_cfg_set_num)(llmopt_model *m, const char *key, double v);
    int (*model_cfg_set_str)(llmopt_model *m, const char *key, const char *v);
    /** Total bytes of tensor data, counting shared tensors once per model. */
    size_t (*model_nbytes)(const llmopt_model *m);

    /* ---- the running stage ---- */
    /** The stage's id in the pipeline ("q4"). */
    const char *(*stage_id)(llmopt_stage_ctx *ctx);
    /** The user pointer of the stage's descriptor. */
    void *(*stage_user)(llmopt_stage_ctx *ctx);
    /** An input model by slot name ("model", "teacher"), borrowed; NULL when not wired. */
    const llmopt_model *(*stage_input)(llmopt_stage_ctx *ctx, const char *slot);
    /** Sets the output model; the host takes the caller's reference. */
    int (*stage_set_output)(llmopt_stage_ctx *ctx, llmopt_model *m);
    /** Validated parameter values by name (defaults filled in). Asking for a name that is
     *  not in the schema, or as the wrong type, logs an error and returns 0 / NULL. */
    int (*param_bool)(llmopt_stage_ctx *ctx, const char *name);
    int64_t (*param_int)(llmopt_stage_ctx *ctx, const char *name);
    double (*param_float)(llmopt_stage_ctx *ctx, const char *name);
    const char *(*param_str)(llmopt_stage_ctx *ctx, const char *name); /**< STRING and ENUM */
    size_t (*param_list_len)(llmopt_stage_ctx *ctx, const char *name);
    const char *(*param_list_at)(llmopt_stage_ctx *ctx, const char *name, size_t i);
    /** A pipeline `data:` entry's field ("path", "split") by entry name ("train"), or NULL. */
    const char *(*data_get)(llmopt_stage_ctx *ctx, const char *entry, const char *field);
    /** Records a metric for the report. better: llmopt_better. unit may be NULL. */
    int (*metric)(llmopt_stage_ctx *ctx, const char *name, double value, const char *unit,
                  int better);
    /** Reports progress: fraction in [0,1] (negative when unknown) and a short status. */
    void (*progress)(llmopt_stage_ctx *ctx, double fraction, const char *fmt, ...)
        LLMOPT_PRINTF(3, 4);
    /** Non-zero once the run is cancelled; long loops poll it and return LLMOPT_ECANCELED. */
    int (*cancelled)(llmopt_stage_ctx *ctx);
    /** Records why the stage failed; returns status, so `return api->set_error(ctx, ...)`. */
    int (*set_error)(llmopt_stage_ctx *ctx, int status, const char *fmt, ...) LLMOPT_PRINTF(3, 4);
    /** The pipeline seed mixed with the stage id: deterministic per stage. */
    uint64_t (*seed)(llmopt_stage_ctx *ctx);
    /** A directory for the stage's files. It is renamed into the run directory when the stage
     *  succeeds and removed when it fails, so nothing half-written is ever left. */
    const char *(*stage_dir)(llmopt_stage_ctx *ctx);
    /** The device the pipeline asked for (llmopt_device). */
    int (*device)(llmopt_stage_ctx *ctx);

    /* ---- kernels ---- */
    /** The registered kernel for (op, device, dtype), falling back to dtype ANY; NULL if none. */
    const llmopt_kernel_desc *(*kernel_find)(const char *op, int device, int dtype);

    /* ---- compute threads (plugins start no threads of their own) ---- */
    /** Runs fn(arg, begin, end) over [0, n) split into chunks of at least `grain` items on the
     *  host's compute threads (the caller's thread takes part) and returns when all are done.
     *  Chunks are contiguous and run in no particular order. Safe to call from stage threads;
     *  a nested call runs inline. */
    void (*parallel_for)(int64_t n, int64_t grain, void (*fn)(void *arg, int64_t begin, int64_t end),
                         void *arg);
    /** Number of compute threads parallel_for uses (the --threads option, default: all cores). */
    int (*n_threads)(void);

    /* ---- the model runtime: tokenizer, forward passes, generation, data ---- */
    /** Frees memory the host allocated for the caller (token ids, text). */
    void (*mem_free)(void *p);
    /** Encodes with the model's tokenizer (its tokenizer.json). *ids is freed with mem_free.
     *  add_special applies the tokenizer's post-processor (e.g. a bos token). Errors (no
     *  tokenizer, malformed file) go to set_error and are returned. */
    int (*tokenize)(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *text, size_t len,
                    int add_special, int32_t **ids, size_t *n);
    /** Decodes ids into NUL-terminated, well-formed UTF-8 text (freed with mem_free); bytes of
     *  a character cut between tokens become U+FFFD, as transformers' decode gives. */
    int (*detokenize)(llmopt_stage_ctx *ctx, const llmopt_model *m, const int32_t *ids, size_t n,
                      int skip_special, char **text, size_t *len);
    /** The model's end-of-sequence and beginning-of-sequence ids, -1 when it has none. */
    int32_t (*token_eos)(const llmopt_model *m);
    int32_t (*token_bos)(const llmopt_model *m);
    /** Vocabulary size and context length of a runnable model (GPT-2, Llama); 0 otherwise. */
    int (*model_vocab)(const llmopt_model *m);
    int (*model_context)(const llmopt_model *m);
    /** A forward-pass session on the pipeline's device with a KV cache of max_ctx positions
     *  (0: the model's context). NULL after set_error (unsupported architecture, no kernels). */
    llmopt_session *(*session_new)(llmopt_stage_ctx *ctx, const llmopt_model *m, int max_ctx);
    void (*session_free)(llmopt_session *s);
    /** Runs n tokens after the cached ones. logits: NULL, [vocab] for the last token, or
     *  [n, vocab] when all_logits. */
    int (*session_forward)(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *ids, int n,
                           float *logits, int all_logits);
    /** Positions cached; rewind forgets positions from pos on (0: a new sequence). */
    int (*session_pos)(const llmopt_session *s);
    void (*session_rewind)(llmopt_session *s, int pos);
    /** Generates after the prompt ids; *out (mem_free) gets the new ids. */
    int (*generate)(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *prompt, size_t n_prompt,
                    const llmopt_gen_params *p, int32_t **out, size_t *n_out);
    /** Reads the pipeline's data entry (`data: {name: {path, split}}`) as text, with its split
     *  ("0:90%", "90%:100%", or line ranges "0:1000") applied; freed with mem_free. */
    int (*data_read)(llmopt_stage_ctx *ctx, const char *entry, char **text, size_t *len);
    /** Adds a named text to the stage's entry in report.json ("texts": [{name, text}]), e.g. a
     *  generated completion. */
    int (*report_text)(llmopt_stage_ctx *ctx, const char *name, const char *text);

    /* ---- quantization, calibration and export ---- */
    /** One row of n f32 values into n / block_size blocks of a block-quantized dtype (Q8_0,
     *  Q4_0, Q4_1, GQ: the host's reference rules, bit-exact with what the kernels expect), and
     *  back. LLMOPT_EINVAL when dtype is not block-quantized or n is not a whole number of blocks. */
    int (*quantize_row)(int dtype, const float *x, void *blocks, int64_t n);
    int (*dequantize_row)(int dtype, const void *blocks, float *y, int64_t n);
    /** A new CPU tensor (*out, one reference, owned by the caller) holding t converted to dtype:
     *  between f32, f16 and bf16 (any shape; f16/bf16 round to nearest even), from those into a
     *  block-quantized dtype (2-D, round to nearest; rows must be a whole number of blocks) and
     *  from a block-quantized one back to f32/f16/bf16. The same dtype gives a new reference to
     *  t. Errors (a row that is not whole blocks, an unsupported pair) go to set_error. */
    int (*tensor_convert)(llmopt_stage_ctx *ctx, const llmopt_tensor *t, int dtype, llmopt_tensor **out);
    /** Calibration: runs the model (CPU) over n_seq sequences of seq_len tokens each (tokens holds
     *  n_seq * seq_len ids) and calls fn with the input of every matrix multiply by a weight, as
     *  the forward pass makes it: x is [rows, cols] f32 (rows = seq_len tokens, cols = the
     *  weight's input features), borrowed for the call; weight is the checkpoint name of the
     *  weight ("model.layers.0.self_attn.q_proj.weight"; the tied head comes as the embedding's
     *  name). Weights that read the same input (q/k/v, gate/up) are called in a row with the same
     *  x pointer. A non-zero return from fn stops the pass and is returned (fn sets the error). */
    int (*calibrate)(llmopt_stage_ctx *ctx, const llmopt_model *m, const int32_t *tokens, size_t n_seq,
                     size_t seq_len,
                     int (*fn)(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols),
                     void *arg);
    /** Writes m (gpt2 or llama) as a GGUF v3 file at path, through a temporary name, in llama.cpp's
     *  names and layout; tensors must be F32, F16, BF16, Q8_0, Q4_0 or Q4_1 (GQ types have no
     *  ggml counterpart: LLMOPT_EUNSUPPORTED naming the tensor). */
    int (*gguf_write)(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *path);

    /* ---- training (the host's engine: forward/backward, LoRA, AdamW, checkpoints) ---- */
    /** Defaults: batch 1, seq 128, every floating-point tensor trainable, lora_alpha 16,
     *  no dropout, AdamW (0.9, 0.999), eps 1e-8, weight decay 0.01 (torch.optim.AdamW's). */
    void (*train_options_default)(llmopt_train_options *o);
    /** Binds a model for training (it is referenced, never written; trainable tensors get f32
     *  master copies). NULL after set_error, e.g. a trainable pattern or LoRA target that
     *  matches nothing. */
    llmopt_trainer *(*trainer_new)(llmopt_stage_ctx *ctx, const llmopt_model *m,
                                   const llmopt_train_options *o);
    void (*trainer_free)(llmopt_trainer *t);
    /** Trainable parameter count (adapters only, for LoRA). */
    size_t (*trainer_n_trainable)(const llmopt_trainer *t);
    /** Forward and backward over one micro-batch of [B, T] inputs and targets (-100: ignored);
     *  gradients of the summed loss accumulate. Gets the batch's summed loss and target count. */
    int (*trainer_forward_backward)(llmopt_stage_ctx *ctx, llmopt_trainer *t, const int32_t *inputs,
                                    const int32_t *targets, double *loss_sum, size_t *n_targets);
    /** Forward only (no dropout): summed loss and target count of a [B, T] batch. */
    int (*trainer_eval)(llmopt_stage_ctx *ctx, llmopt_trainer *t, const int32_t *inputs,
                        const int32_t *targets, double *loss_sum, size_t *n_targets);
    /** One AdamW step at learning rate lr on the gradients accumulated since the last step,
     *  averaged over their targets and clipped to global norm clip (0: off); *grad_norm (may be
     *  NULL) gets the norm before clipping. Zeroes the gradients. */
    int (*trainer_step)(llmopt_stage_ctx *ctx, llmopt_trainer *t, float lr, float clip, float *grad_norm);
    /** Drops accumulated gradients without a step. */
    void (*trainer_zero_grad)(llmopt_trainer *t);
    /** Optimizer steps taken (restored by trainer_load_state). */
    int (*trainer_steps)(const llmopt_trainer *t);
    /** A new model with the trained weights (refcount 1): full fine-tuning replaces the trained
     *  tensors; LoRA with merge adds (alpha/r) B A into the targets, without merge the base. */
    int (*trainer_export)(llmopt_stage_ctx *ctx, llmopt_trainer *t, int merge_lora, llmopt_model **out);
    /** The LoRA adapters as a tensors-only model named as PEFT saves them
     *  ("base_model.model.<module>.lora_A.weight" [r, in], "...lora_B.weight" [out, r]). */
    int (*trainer_lora_export)(llmopt_stage_ctx *ctx, llmopt_trainer *t, llmopt_model **out);
    /** Checkpoint: weights, AdamW moments, step and RNG state, into dir (created). Loading a
     *  checkpoint of another model or other options fails, saying why. */
    int (*trainer_save_state)(llmopt_stage_ctx *ctx, const llmopt_trainer *t, const char *dir);
    int (*trainer_load_state)(llmopt_stage_ctx *ctx, llmopt_trainer *t, const char *dir);

    /* ---- writing models and side files, chat templates ---- */
    /** Saves a model as a Hugging Face directory (config.json, model.safetensors, side files),
     *  each file complete or absent. */
    int (*model_save)(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *dir);
    /** Writes a model's tensors as one plain safetensors file at path (written to a temporary
     *  name and renamed), e.g. PEFT's adapter_model.safetensors. */
    int (*tensors_save)(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *path);
    /** Side files that travel with a model (tokenizer.json, tokenizer_config.json, ...): set
     *  copies the bytes, replacing a file of that name; get returns NULL when absent (the bytes
     *  are NUL-terminated; len may be NULL). Files are listed by index. */
    int (*model_set_file)(llmopt_model *m, const char *name, const void *data, size_t len);
    const char *(*model_get_file)(const llmopt_model *m, const char *name, size_t *len);
    size_t (*model_n_files)(const llmopt_model *m);
    const char *(*model_file_name)(const llmopt_model *m, size_t i);
    /** Renders messages (roles[i], contents[i]) with the model's chat template as transformers'
     *  apply_chat_template(tokenize=False) does; *out (mem_free) is NUL-terminated. Returns
     *  LLMOPT_ENOTFOUND without set_error when the model has no chat template. */
    int (*chat_render)(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *const *roles,
                       const char *const *contents, size_t n, int add_generation_prompt, char **out,
                       size_t *len);

    /* ---- tokenizer training ---- */
    /** Trains a GPT-2 style byte-level BPE tokenizer on text[0..len) (the rules and result of
     *  tokenizers' BpeTrainer with a ByteLevel pre-tokenizer: ids are the specials, the 256 byte
     *  symbols, then one per merge; the text is split at the specials, which are kept whole) and
     *  stores tokenizer.json and tokenizer_config.json (bos/eos = specials[0], model_max_length =
     *  the model's context, else 1024) as side files of m, replacing any. vocab_size counts
     *  specials, bytes and merges; merging stops there or when no pair is seen min_frequency
     *  times. Errors (bad options: LLMOPT_EINVAL) go to set_error. */
    int (*tokenizer_train)(llmopt_stage_ctx *ctx, const char *text, size_t len, int vocab_size, int min_frequency,
                           const char *const *specials, size_t n_specials, llmopt_model *m);

    /* ---- where a model came from ---- */
    /** The weights file the model was loaded from: <dir>/model.safetensors, the shard index
     *  <dir>/model.safetensors.index.json, or the .gguf file. NULL for a model made or changed in
     *  memory (every model_clone, so every stage output). */
    const char *(*model_source)(const llmopt_model *m);

    /* ---- weight layout ---- */
    /** How the 2-D tensor `name` of m multiplies its input (llmopt_w_layout in kernel_ops.h):
     *  LLMOPT_W_IN_OUT for GPT-2's Conv1D block weights while they are float ([in, out]), else
     *  LLMOPT_W_OUT_IN: Llama's Linear weights, embeddings, lm_head, and every quantized weight,
     *  whose quantized rows run along the inputs (a quantized GPT-2 Conv1D weight is stored
     *  transposed, [out, in], as llama.cpp stores it). Negative LLMOPT_E* when m has no 2-D tensor
     *  of that name. */
    int (*model_linear_layout)(const llmopt_model *m, const char *name);

    /* ---- device memory (device.h): tensors on a plugin's device ----
     * Appended in ABI 1.0 before its release (abi_minor stays 0); a plugin built against an
     * older table checks struct_size covers a member before calling it. Device tensors must be
     * released before the host shuts plugins down. */
    /** The memory ops registered for device (borrowed, valid until shutdown); NULL when no
     *  plugin registered it, and always for LLMOPT_DEVICE_CPU (host memory is the host's). */
    const llmopt_device_ops *(*device_ops)(int device);
    /** A new tensor on device with one reference, owned by the caller. On LLMOPT_DEVICE_CPU it is
     *  tensor_new (zero-filled); elsewhere the contents are undefined until written (tensor_copy,
     *  or a kernel's output). NULL for a bad shape, a device nobody registered, or no memory. */
    llmopt_tensor *(*tensor_new_on)(int device, int dtype, int ndim, const int64_t *shape);
    /** *out = a tensor on device holding t's contents (one reference, owned by the caller). When
     *  t already lives there, *out is a new reference to t and nothing is copied, so calling it
     *  on the CPU path costs nothing. LLMOPT_ENOTFOUND for a device nobody registered,
     *  LLMOPT_EINVAL for bad arguments, LLMOPT_ENOMEM, or the plugin's copy status. */
    int (*tensor_to_device)(const llmopt_tensor *t, int device, llmopt_tensor **out);
    /** tensor_to_device(t, LLMOPT_DEVICE_CPU, out): the contents readable on the host. */
    int (*tensor_to_host)(const llmopt_tensor *t, llmopt_tensor **out);
    /** Copies src's bytes into dst, each on any device (host<->device, device<->device; between
     *  two accelerators through host memory). Same dtype and shape, else LLMOPT_EINVAL; dst must
     *  not be shared (it is written). Complete on return when dst is on the CPU. */
    int (*tensor_copy)(llmopt_tensor *dst, const llmopt_tensor *src);

    /** Sequential calibration, as GPTQ quantizes (AutoGPTQ's true_sequential order): the n_seq
     *  sequences' hidden states go through each block in steps, one per group of linear weights
     *  that share an input (GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj; Llama: q/k/v, o,
     *  gate/up, down). At each step fn sees that group's inputs (as in calibrate, one call per
     *  sequence and weight, in sequence order; where the activations are kept, all of them after
     *  the step's forward pass), then block_done(arg, step) is called (step counts from 0 over the
     *  whole model), which may replace those weights in m (model_set, e.g. with their quantized
     *  versions); the next group's inputs are made with the new weights. After the last block the
     *  final norm's output is reported as the LM head's input and block_done is called once more.
     *  Each matmul runs once when the activations between steps fit in memory (n_seq * seq_len *
     *  (n_embd + n_ff) floats, kept when that is at most a quarter of the machine's memory or
     *  LLMOPT_CALIB_STASH_MB); otherwise a step recomputes them (about 1.6 forward passes).
     *  Memory: n_seq * seq_len * n_embd floats of hidden states besides. A non-zero return from
     *  fn or block_done stops and is returned (they set the error). */
    int (*calibrate_sequential)(llmopt_stage_ctx *ctx, llmopt_model *m, const int32_t *tokens, size_t n_seq,
                                size_t seq_len,
                                int (*fn)(void *arg, const char *weight, const float *x, int64_t rows, int64_t cols),
                                int (*block_done)(void *arg, int block), void *arg);

    /* ---- structured config values ---- */
    /** A config.json value of any JSON type by top-level key: set parses json (NULL removes the
     *  key; LLMOPT_EINVAL when json is not valid JSON); get returns the value as compact JSON
     *  text (mem_free), NULL when absent. quantize stages record what they did this way
     *  ("quantization_config"). */
    int (*model_cfg_set_json)(llmopt_model *m, const char *key, const char *json);
    char *(*model_cfg_get_json)(const llmopt_model *m, const char *key);

    /* ---- training, continued ---- */
    /** Training is over: frees the trainer's gradients, AdamW moments and batch buffers (for
     *  full fine-tuning three times the trained weights' f32 size) before the export, whose f32
     *  tensors are then the trainer's masters themselves rather than copies. trainer_eval,
     *  trainer_export and trainer_lora_export still work; forward_backward, step, save_state and
     *  load_state fail saying the training is finished. */
    void (*trainer_finish)(llmopt_trainer *t);

    /* ---- architecture ---- */
    /** Fills out (its first out->struct_size bytes, which the caller sets) with m's architecture
     *  as the runtime runs it. LLMOPT_EUNSUPPORTED / LLMOPT_EINVAL (set_error, naming the
     *  config field or tensor) when m is no runnable model. */
    int (*model_arch_info)(llmopt_stage_ctx *ctx, const llmopt_model *m, llmopt_arch_info *out);
};
LLMOPT_PIN(llmopt_host_api, abi_major, 4);
LLMOPT_PIN(llmopt_host_api, host_version, 8);
LLMOPT_PIN(llmopt_host_api, log, 16);
LLMOPT_PIN(llmopt_host_api, dtype_traits, 24);
LLMOPT_PIN(llmopt_host_api, tensor_new, 40);
LLMOPT_PIN(llmopt_host_api, model_new, 72);
LLMOPT_PIN(llmopt_host_api, model_nbytes, 176);
LLMOPT_PIN(llmopt_host_api, stage_id, 184);
LLMOPT_PIN(llmopt_host_api, set_error, 296);
LLMOPT_PIN(llmopt_host_api, kernel_find, 328);
LLMOPT_PIN(llmopt_host_api, parallel_for, 336);
LLMOPT_PIN(llmopt_host_api, n_threads, 344);
LLMOPT_PIN(llmopt_host_api, mem_free, 352);
LLMOPT_PIN(llmopt_host_api, data_read, 456);
LLMOPT_PIN(llmopt_host_api, report_text, 464);
LLMOPT_PIN(llmopt_host_api, quantize_row, 472);
LLMOPT_PIN(llmopt_host_api, gguf_write, 504);
LLMOPT_PIN(llmopt_host_api, train_options_default, 512);
LLMOPT_PIN(llmopt_host_api, trainer_load_state, 608);
LLMOPT_PIN(llmopt_host_api, model_save, 616);
LLMOPT_PIN(llmopt_host_api, chat_render, 664);
LLMOPT_PIN(llmopt_host_api, tokenizer_train, 672);
LLMOPT_PIN(llmopt_host_api, model_source, 680);
LLMOPT_PIN(llmopt_host_api, model_linear_layout, 688);
LLMOPT_PIN(llmopt_host_api, device_ops, 696);
LLMOPT_PIN(llmopt_host_api, tensor_new_on, 704);
LLMOPT_PIN(llmopt_host_api, tensor_to_device, 712);
LLMOPT_PIN(llmopt_host_api, tensor_to_host, 720);
LLMOPT_PIN(llmopt_host_api, tensor_copy, 728);
LLMOPT_PIN(llmopt_host_api, calibrate_sequential, 736);
LLMOPT_PIN(llmopt_host_api, model_cfg_set_json, 744);
LLMOPT_PIN(llmopt_host_api, model_cfg_get_json, 752);
LLMOPT_PIN(llmopt_host_api, trainer_finish, 760);
LLMOPT_PIN(llmopt_host_api, model_arch_info, 768);

#ifdef __cplusplus
}
#endif
#endif
