/* The training engine: forward with saved activations and backward for GPT-2 and Llama (full
 * sequences, batch B x T), over registered kernels (forward ops and the *_backward ops of
 * kernel_ops.h), LoRA adapters on chosen linear layers (Hu et al. 2021: W x + (alpha/r) B A x,
 * A random, B zero), and AdamW (Loshchilov & Hutter) with decoupled weight decay and bias
 * correction. Deterministic for a given seed and thread count. */
#ifndef HOST_RUNTIME_TRAIN_H
#define HOST_RUNTIME_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <llmopt/llmopt.h>
#include "../util/error.h"

typedef struct tr_trainer tr_trainer;

typedef struct tr_options {
    int batch;                      /* B sequences per micro-batch */
    int seq;                        /* T tokens per sequence (<= the model's context) */
    /* full fine-tuning: checkpoint names (glob patterns, '*' wildcard) of the tensors to train;
     * NULL/0 with lora_rank == 0 trains every floating-point tensor */
    const char *const *trainable;
    size_t n_trainable;
    /* LoRA: rank > 0 freezes the base and trains adapters on the linear layers whose module name
     * (the checkpoint name without ".weight", matched on its last component: "c_attn", "q_proj",
     * or a glob over the full name) is in targets */
    int lora_rank;
    float lora_alpha;
    float lora_dropout;             /* on the adapter's input, as PEFT */
    const char *const *lora_targets;
    size_t n_lora_targets;
    /* AdamW */
    float beta1, beta2, eps, weight_decay;
    uint64_t seed;                  /* adapter init and dropout */
    /* rows of logits per cross-entropy backward call without cross_entropy_fused (0: about 4 MB
     * of them, at least 16); the gradients do not depend on it (tests set a small one) */
    int ce_rows;
    /* 1: cross_entropy and cross_entropy_backward even where cross_entropy_fused is there (the
     * path of plugins without it; tests hold the two to the same bits) */
    int unfused_ce;
    /* rows of the LM head's logits at a time (0: about 32 MB of them, at least 16): the logits
     * of a batch are never all in memory, as a [B*T, vocab] buffer would be (823 MB for GPT-2
     * at 8 x 512, 2.1 GB for Llama 3 at 4 x 1024); each block's loss gradient goes through the
     * head before the next block is computed. Losses and gradients depend on it only by
     * rounding: a block's row count picks the matmul's path for its logits, and the head's weight
     * gradient is summed a block at a time (tests set a small one) */
    int lm_rows;
    /* llmopt_matmul_precision of the forward matmuls and of dx through the weights (MEDIUM: the
     * kernel may round both sides to bf16); weight gradients are exact either way. HIGHEST by default. */
    int matmul_precision;
    /* 1: keep only each layer's input from the forward and run the layer's forward again in the
     * backward, just before its gradients (activation checkpointing at layer boundaries, what
     * transformers calls gradient checkpointing). The saved activations shrink from about
     * (4 C + 3 Q/KV widths + 2-3 F) x B*T floats per layer to C per layer plus one layer's set,
     * for about a third more forward work in the layers. Losses and gradients are the same bits. */
    int recompute;
    /* 32 (0 reads as 32): f32 AdamW moments. 8: the moments of every parameter of at least
     * TR_MIN_8BIT values in 8 bits, block-wise (the adamw_8bit op; bitsandbytes' AdamW8bit, whose
     * min_8bit_size is the same): 2 bytes a value instead of 8, for moments rounded to 256 levels
     * of each 256-value block's range. Smaller tensors (biases, norms) keep f32 moments. */
    int optimizer_bits;
    int min_8bit;                   /* 0: TR_MIN_8BIT (tests of tiny models set 1) */
} tr_options;

#define TR_MIN_8BIT 4096

/* Defaults: batch 1, seq 128, full fine-tuning of every floating-point tensor, lora_alpha 16,
 * no dropout, AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.01 (torch.optim.AdamW's). */
void tr_options_default(tr_options *o);

/* Binds a model for training: trainable tensors get f32 master copies, gradients and AdamW
 * state. LLMOPT_EINVAL naming the pattern when a trainable pattern or LoRA target matches
 * nothing. The model is referenced; its tensors are never written. */
int tr_new(llmopt_model *m, const tr_options *o, tr_trainer **out, llmopt_error *err);
void tr_free(tr_trainer *t);
/* Frees the activations and backward scratch of a batch (the largest buffers after the
 * parameters and their AdamW moments); the next forward allocates them again. */
void tr_free_buffers(tr_trainer *t);

/* Trainable parameter count (adapters only, for LoRA). */
size_t tr_n_trainable(const tr_trainer *t);
/* The trainable tensors: full fine-tuning in checkpoint order (a tied embedding once), LoRA
 * adapters in forward order, named as tr_lora_export names them. value is the f32 master copy,
 * grad the gradient of the summed loss accumulated since the last step (borrowed, live). */
size_t tr_n_params(const tr_trainer *t);
const char *tr_param_name(const tr_trainer *t, size_t i);
const llmopt_tensor *tr_param_value(const tr_trainer *t, size_t i);
const llmopt_tensor *tr_param_grad(const tr_trainer *t, size_t i);

/* Forward and backward over one micro-batch: inputs and targets are [B, T] token ids, a target
 * of -100 is ignored. Gradients of the summed loss are accumulated; *loss_sum and *n_targets
 * receive this batch's summed cross-entropy and its non-ignored target count. */
int tr_forward_backward(tr_trainer *t, const int32_t *inputs, const int32_t *targets, double *loss_sum,
                        size_t *n_targets, llmopt_error *err);
/* Forward only (evaluation, no dropout): summed loss and target count. */
int tr_eval(tr_trainer *t, const int32_t *inputs, const int32_t *targets, double *loss_sum, size_t *n_targets,
            llmopt_error *err);

/* One AdamW step on the accumulated gradients, divided by the targets accumulated since the
 * last step (mean loss over the accumulated micro-batches), clipped to global norm `clip`
 * (0: no clipping); *grad_norm gets the norm before clipping. Zeroes the gradients. */
int tr_step(tr_trainer *t, float lr, float clip, float *grad_norm, llmopt_error *err);
/* Drops the accumulated gradients and target count without a step. */
void tr_zero_grad(tr_trainer *t);
/* Optimizer steps taken. */
int tr_steps(const tr_trainer *t);
/* Training is over: frees the gradients, the AdamW moments and the batch's buffers (for full
 * fine-tuning three times the trained weights' f32 size), and lets tr_export hand the f32
 * masters of f32 tensors to the exported model instead of copying them. tr_eval, tr_export and
 * tr_lora_export still work; tr_forward_backward, tr_step, tr_save_state and tr_load_state fail
 * saying the training is finished; tr_param_grad is NULL. */
void tr_finish(tr_trainer *t);

/* A new model with the trained weights: full fine-tuning replaces the trained tensors (others
 * stay shared with the input; after tr_finish an f32 tensor is the master itself); LoRA with merge adds (alpha/r) B A into the targets, without
 * merge the base is returned unchanged (save the adapters with tr_lora_export). It first frees
 * the batch's activations (tr_free_buffers), so the copy does not come on top of them. */
int tr_export(tr_trainer *t, int merge_lora, llmopt_model **out, llmopt_error *err);
/* The adapters as tensors named as PEFT saves them ("base_model.model.<module>.lora_A.weight"
 * [r, in], "...lora_B.weight" [out, r]) in a new model (no architecture config). */
int tr_lora_export(tr_trainer *t, llmopt_model **out, llmopt_error *err);

/* Checkpoints: trainable weights, AdamW moments (as the trainer holds them: 8-bit codes and
 * block absmax with optimizer_bits 8), step and RNG state, written atomically into
 * dir (a checkpoint of another model or other options is refused on load, saying why).
 * Gradients accumulated since the last step are not saved; loading drops them. Batch and seq
 * may differ on resume; every other option must match. */
int tr_save_state(const tr_trainer *t, const char *dir, llmopt_error *err);
int tr_load_state(tr_trainer *t, const char *dir, llmopt_error *err);

#endif
