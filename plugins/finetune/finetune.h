/* The finetune plugin: full fine-tuning, LoRA (saved in PEFT's format) and pretraining from
 * scratch over the host's training engine, with text and JSONL SFT data (data.h). */
#ifndef FINETUNE_H
#define FINETUNE_H

#include <llmopt/llmopt.h>

#include "data.h"

extern const llmopt_host_api *ft_api;

extern const llmopt_stage_desc ft_full_stage, ft_lora_stage, ft_qlora_stage, ft_pretrain_stage;

/* What a stage hands the shared training loop. */
typedef struct ft_job {
    const llmopt_model *model;          /* the model to train (borrowed) */
    const char *const *trainable;       /* full fine-tuning subset (globs); NULL: all */
    size_t n_trainable;
    int lora_rank;                      /* > 0: LoRA */
    float lora_alpha, lora_dropout;
    const char *const *lora_targets;
    size_t n_lora_targets;
} ft_job;

/* Reads the data, trains (resuming, checkpointing, evaluating, stopping early as the parameters
 * say), reports the metrics, and leaves the trainer in *out (ft_api->trainer_free). */
int ft_train(llmopt_stage_ctx *ctx, const ft_job *job, llmopt_trainer **out);

/* LoRA on m with the stage's LoRA parameters (FT_LORA_PARAMS): trains, writes the adapter in
 * PEFT's format to <stage dir>/adapter, and leaves in *out the model with the adapters merged
 * (merge) or m itself (a new reference-counted clone either way). */
int ft_lora_train(llmopt_stage_ctx *ctx, const llmopt_model *m, int merge, llmopt_model **out);

/* The LoRA parameters of finetune.lora and finetune.qlora. */
#define FT_LORA_PARAMS                                                                                                \
    {.name = "rank", .type = LLMOPT_PARAM_INT, .default_value = "8", .min = 1, .max = 4096, .doc = "LoRA rank r"},   \
    {.name = "alpha", .type = LLMOPT_PARAM_FLOAT, .default_value = "16", .min = 0, .max = 1e6,                       \
     .doc = "LoRA alpha: the update is scaled by alpha / r"},                                                        \
    {.name = "dropout", .type = LLMOPT_PARAM_FLOAT, .default_value = "0", .min = 0, .max = 0.999,                    \
     .doc = "dropout on the adapter's input (PEFT's lora_dropout)"},                                                 \
    {.name = "targets", .type = LLMOPT_PARAM_LIST, .default_value = "",                                             \
     .doc = "modules to adapt by HF name (c_attn, q_proj, ...) or globs over full names; empty = PEFT's "           \
            "defaults (gpt2: c_attn; llama: q_proj, v_proj)"},                                                       \
    {.name = "merge", .type = LLMOPT_PARAM_BOOL, .default_value = "false",                                          \
     .doc = "output the base with the adapters merged in (a plain HF checkpoint); else the base itself"},           \
    {.name = "base_model_name_or_path", .type = LLMOPT_PARAM_STRING, .default_value = "",                           \
     .doc = "written into adapter_config.json for PEFT"}

/* The training parameters every finetune stage takes (data, loop, checkpoints), and a macro
 * listing them into a stage's schema. */
#define FT_COMMON_PARAMS                                                                                              \
    {.name = "data", .type = LLMOPT_PARAM_STRING, .default_value = "train",                                         \
     .doc = "the pipeline data entry to train on (its split applies)"},                                             \
    {.name = "eval_data", .type = LLMOPT_PARAM_STRING, .default_value = "",                                         \
     .doc = "the data entry for validation loss and perplexity; empty: none"},                                       \
    {.name = "format", .type = LLMOPT_PARAM_ENUM, .default_value = "text", .choices = "text|jsonl-sft",             \
     .doc = "text: causal LM on the whole text; jsonl-sft: {prompt, response} or {messages} records, loss on responses"}, \
    {.name = "on_bad_line", .type = LLMOPT_PARAM_ENUM, .default_value = "fail", .choices = "skip|fail",             \
     .doc = "a malformed JSONL line: skip it (listed in the log with its line number) or fail naming it"},           \
    {.name = "on_long", .type = LLMOPT_PARAM_ENUM, .default_value = "truncate", .choices = "truncate|fail",          \
     .doc = "a JSONL record longer than seq_len + 1 tokens: cut it (counted in the log) or fail"},                    \
    {.name = "seq_len", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1 << 20,                   \
     .doc = "tokens per training sequence; 0 = the model's context"},                                               \
    {.name = "batch", .type = LLMOPT_PARAM_INT, .default_value = "4", .min = 1, .max = 4096,                        \
     .doc = "sequences per micro-batch"},                                                                            \
    {.name = "accum", .type = LLMOPT_PARAM_INT, .default_value = "1", .min = 1, .max = 4096,                        \
     .doc = "micro-batches per optimizer step (gradient accumulation)"},                                            \
    {.name = "steps", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,                         \
     .doc = "optimizer steps; 0 = as many as `epochs` passes over the data take"},                                  \
    {.name = "epochs", .type = LLMOPT_PARAM_FLOAT, .default_value = "1", .min = 0, .max = 1e6,                      \
     .doc = "passes over the training windows when steps is 0"},                                                    \
    {.name = "lr", .type = LLMOPT_PARAM_FLOAT, .default_value = "1e-4", .min = 0, .max = 10,                         \
     .doc = "peak learning rate"},                                                                                   \
    {.name = "schedule", .type = LLMOPT_PARAM_ENUM, .default_value = "linear", .choices = "constant|linear|cosine", \
     .doc = "learning-rate schedule after warmup (transformers' get_*_schedule_with_warmup)"},                     \
    {.name = "warmup", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,                        \
     .doc = "steps of linear warmup from 0"},                                                                        \
    {.name = "weight_decay", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.01", .min = 0, .max = 10,               \
     .doc = "AdamW decoupled weight decay"},                                                                         \
    {.name = "grad_clip", .type = LLMOPT_PARAM_FLOAT, .default_value = "1", .min = 0, .max = 1e9,                   \
     .doc = "clip the global gradient norm to this; 0 = off"},                                                       \
    {.name = "gradient_checkpointing", .type = LLMOPT_PARAM_BOOL, .default_value = "false",                          \
     .doc = "save only each layer's input and run the layer again in the backward: far less memory for "           \
            "activations (most of LoRA's), ~12-20% slower steps, the same gradients"},                              \
    {.name = "optimizer", .type = LLMOPT_PARAM_ENUM, .default_value = "adamw", .choices = "adamw|adamw_8bit",      \
     .doc = "adamw: f32 moments (torch.optim.AdamW); adamw_8bit: moments in 8 bits block-wise "                    \
            "(bitsandbytes' AdamW8bit), 6 of AdamW's 8 bytes a trained value saved"},                                \
    {.name = "seed", .type = LLMOPT_PARAM_INT, .default_value = "-1", .min = -1, .max = 9e18,                       \
     .doc = "data order, adapter init and dropout; -1 = the pipeline's seed for this stage"},                        \
    {.name = "shuffle", .type = LLMOPT_PARAM_BOOL, .default_value = "true",                                          \
     .doc = "draw windows in a seeded random order, a new one each epoch"},                                          \
    {.name = "eval_every", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,                    \
     .doc = "validation every N steps (and at the end); 0 = only at the end"},                                       \
    {.name = "eval_batches", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,                  \
     .doc = "validate on at most this many batches; 0 = all of eval_data"},                                          \
    {.name = "patience", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,                      \
     .doc = "stop after this many validations without a better val_loss; 0 = never"},                               \
    {.name = "checkpoint_every", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,              \
     .doc = "save a checkpoint every N steps (and always on cancel); 0 = only on cancel"},                           \
    {.name = "checkpoint_dir", .type = LLMOPT_PARAM_STRING, .default_value = "",                                    \
     .doc = "where checkpoint-<step>/ go; empty = <run dir>/<stage id>.checkpoints (kept if the stage fails)"},      \
    {.name = "resume_from", .type = LLMOPT_PARAM_STRING, .default_value = "",                                       \
     .doc = "a checkpoint-<step> directory, or a checkpoint_dir (its latest) to continue from"}

#endif
