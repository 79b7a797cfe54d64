/* finetune.qlora: LoRA over a frozen 4-bit base (Dettmers et al. 2023, QLoRA). The stage
 * quantizes the float linear weights of the transformer blocks (embeddings and the LM head stay
 * as they are, as in the paper) to NF4 (blocks of 64, f32 absmax; no double quantization) or to
 * our GQ int4 groups, keeps weights the input already has quantized, and trains adapters in f32
 * whose gradients flow through the dequantized base (the cpu plugin's dx-only matmul_backward).
 * The adapter is saved in PEFT's format as finetune.lora does; merge: true outputs a plain HF
 * checkpoint: the dequantized base plus the merged adapters, in the input's float dtypes. */
#include <stdlib.h>
#include <string.h>

#include "finetune.h"

#define A ft_api

static int is_float(int dt) { return dt == LLMOPT_DTYPE_F32 || dt == LLMOPT_DTYPE_F16 || dt == LLMOPT_DTYPE_BF16; }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A linear weight of a transformer block: 2-D *.weight that is not an embedding or the head. */
static int block_linear(const llmopt_model *m, const char *name) {
    const llmopt_tensor *t = A->model_get(m, name);
    if (!t || t->ndim != 2 || !ends_with(name, ".weight") || A->model_linear_layout(m, name) < 0) return 0;
    static const char *const skip[] = {"wte.weight", "wpe.weight", "embed_tokens.weight", "lm_head.weight"};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (ends_with(name, skip[i])) return 0;
    return 1;
}

/* The base dtype for a weight of `cols` inputs. */
static int base_dtype(llmopt_stage_ctx *ctx, int64_t cols) {
    if (strcmp(A->param_str(ctx, "base_format"), "nf4") == 0) return LLMOPT_DTYPE_NF4;
    int64_t g = A->param_int(ctx, "group_size");
    return LLMOPT_DTYPE_GQ(4, (int)(g ? g : cols), !A->param_bool(ctx, "sym"));
}

static int qlora_validate(llmopt_stage_ctx *ctx) {
    int64_t g = A->param_int(ctx, "group_size");
    if (strcmp(A->param_str(ctx, "base_format"), "gq4") == 0 && g % 2 != 0)
        return A->set_error(ctx, LLMOPT_EINVAL,
                            "group_size %lld: 4-bit groups must hold a whole number of bytes (an even size)", (long long)g);
    return 0;
}

/* [rows, cols] f32 as [cols, rows] */
static llmopt_tensor *transposed(llmopt_stage_ctx *ctx, const llmopt_tensor *f) {
    int64_t R = f->shape[0], C = f->shape[1];
    llmopt_tensor *t = A->tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){C, R});
    if (!t) {
        A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        return NULL;
    }
    const float *s = f->data;
    float *d = t->data;
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) d[c * R + r] = s[r * C + c];
    return t;
}

/* Weight `name` of `in` quantized to dtype into `qm`, stored [out, in] (quantized rows run along
 * the inputs: a GPT-2 Conv1D weight [in, out] is transposed first). */
static int quantize_weight(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *qm, const char *name, int dtype) {
    const llmopt_tensor *t = A->model_get(in, name);
    llmopt_tensor *f = NULL, *q = NULL;
    int rc = A->tensor_convert(ctx, t, LLMOPT_DTYPE_F32, &f);
    if (rc) return rc;
    if (A->model_linear_layout(in, name) == LLMOPT_W_IN_OUT) {
        llmopt_tensor *tt = transposed(ctx, f);
        A->tensor_unref(f);
        if (!tt) return LLMOPT_ENOMEM;
        f = tt;
    }
    rc = A->tensor_convert(ctx, f, dtype, &q);
    A->tensor_unref(f);
    if (rc) return rc;
    rc = A->model_set(qm, name, q);
    A->tensor_unref(q);
    return rc ? A->set_error(ctx, rc, "cannot set tensor '%s'", name) : 0;
}

/* The quantized base: every float block linear weight of `in` quantized, the rest shared. */
static int make_base(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model **out) {
    *out = NULL;
    size_t n = A->model_n_tensors(in), n_new = 0, n_kept = 0;
    const char *fmt = A->param_str(ctx, "base_format");
    /* check every weight before quantizing any: a bad shape fails at once, naming the tensor */
    for (size_t i = 0; i < n; i++) {
        const char *name = A->model_tensor_name(in, i);
        if (!block_linear(in, name)) continue;
        const llmopt_tensor *t = A->model_get(in, name);
        const llmopt_dtype_traits *tr = A->dtype_traits(t->dtype);
        if (tr && tr->is_quantized) {
            n_kept++;
            continue;
        }
        if (!is_float(t->dtype)) continue;
        int in_out = A->model_linear_layout(in, name) == LLMOPT_W_IN_OUT;
        int64_t rows = t->shape[in_out ? 1 : 0], cols = t->shape[in_out ? 0 : 1];
        const llmopt_dtype_traits *qt = A->dtype_traits(base_dtype(ctx, cols));
        if (!qt)
            return A->set_error(ctx, LLMOPT_EINVAL, "base_format %s: no 4-bit type with groups of %lld", fmt,
                                (long long)A->param_int(ctx, "group_size"));
        if (cols % qt->block_size != 0)
            return A->set_error(ctx, LLMOPT_EINVAL,
                                "'%s' (%lld outputs x %lld inputs): %s quantizes blocks of %lld weights along the inputs, "
                                "and %lld is not a multiple of %lld; use base_format: gq4 with a group_size that divides "
                                "%lld, or quantize the model beforehand",
                                name, (long long)rows, (long long)cols, qt->name, (long long)qt->block_size, (long long)cols,
                                (long long)qt->block_size, (long long)cols);
        n_new++;
    }
    if (n_new + n_kept == 0)
        return A->set_error(ctx, LLMOPT_EINVAL, "the model has no linear weights in its transformer blocks to quantize");
    llmopt_model *qm = A->model_clone(in);
    if (!qm) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = A->model_tensor_name(in, i);
        const llmopt_tensor *t = A->model_get(in, name);
        if (!block_linear(in, name) || !is_float(t->dtype)) continue;
        int in_out = A->model_linear_layout(in, name) == LLMOPT_W_IN_OUT;
        int rc = quantize_weight(ctx, in, qm, name, base_dtype(ctx, t->shape[in_out ? 0 : 1]));
        if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
        if (rc) {
            A->model_unref(qm);
            return rc;
        }
        A->progress(ctx, 0.0, "quantizing the base: %zu/%zu weights", ++done, n_new);
    }
    A->log(LLMOPT_LOG_INFO, "finetune.qlora: %zu linear weights quantized to %s, %zu already quantized kept", n_new,
           strcmp(fmt, "nf4") == 0 ? "nf4" : "gq4", n_kept);
    *out = qm;
    return 0;
}

/* merge: true. `out` holds the merged weights (f32, float layout) and the rest of the quantized
 * base: every quantized or merged tensor becomes float again, in the input's float dtype
 * and layout (f32 where the input was quantized; a quantized GPT-2 Conv1D weight [out, in] goes
 * back to [in, out]), so the output is a plain HF checkpoint. */
static int dequantize_output(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out) {
    const char *arch = A->model_arch(in);
    int gpt2 = arch && strcmp(arch, "gpt2") == 0;
    for (size_t i = 0; i < A->model_n_tensors(out); i++) {
        const char *name = A->model_tensor_name(out, i);
        const llmopt_tensor *t = A->model_get(out, name), *src = A->model_get(in, name);
        const llmopt_dtype_traits *tr = A->dtype_traits(t->dtype);
        if (t == src && !(tr && tr->is_quantized)) continue; /* a float tensor of the input, shared */
        int target = src && is_float(src->dtype) ? src->dtype : LLMOPT_DTYPE_F32;
        llmopt_tensor *f = NULL;
        int rc = A->tensor_convert(ctx, t, tr && tr->is_quantized ? LLMOPT_DTYPE_F32 : target, &f);
        if (rc) return rc;
        if (tr && tr->is_quantized && t->ndim == 2) {
            /* stored [out, in]; the float checkpoint has src's layout, [in, out] in GPT-2 blocks */
            int flip = src && is_float(src->dtype) ? A->model_linear_layout(in, name) == LLMOPT_W_IN_OUT
                                                   : gpt2 && block_linear(out, name);
            if (flip) {
                llmopt_tensor *tt = transposed(ctx, f);
                A->tensor_unref(f);
                if (!tt) return LLMOPT_ENOMEM;
                f = tt;
            }
            if (target != LLMOPT_DTYPE_F32) {
                llmopt_tensor *c = NULL;
                rc = A->tensor_convert(ctx, f, target, &c);
                A->tensor_unref(f);
                if (rc) return rc;
                f = c;
            }
        }
        rc = A->model_set(out, name, f);
        A->tensor_unref(f);
        if (rc) return A->set_error(ctx, rc, "cannot set tensor '%s'", name);
    }
    return 0;
}

static int qlora_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    if (A->model_context(in) <= 0)
        return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a trainable model (gpt2, llama)");
    llmopt_model *base = NULL, *out = NULL;
    int rc = make_base(ctx, in, &base);
    if (rc) return rc;
    A->metric(ctx, "base_bytes", (double)A->model_nbytes(base), "B", LLMOPT_BETTER_LOWER);
    A->metric(ctx, "base_bytes_ratio", (double)A->model_nbytes(base) / (double)A->model_nbytes(in), NULL,
              LLMOPT_BETTER_LOWER);
    int merge = A->param_bool(ctx, "merge");
    rc = ft_lora_train(ctx, base, merge, &out);
    A->model_unref(base);
    if (!rc && merge) rc = dequantize_output(ctx, in, out);
    if (rc) {
        A->model_unref(out);
        return rc;
    }
    return A->stage_set_output(ctx, out);
}

static const llmopt_param_desc qlora_params[] = {
    {.name = "base_format", .type = LLMOPT_PARAM_ENUM, .default_value = "nf4", .choices = "nf4|gq4",
     .doc = "the frozen base's float linear weights: nf4 (QLoRA's NormalFloat, blocks of 64, f32 absmax) or gq4 "
            "(4-bit groups of group_size, f16 scale); weights the input already has quantized are kept"},
    {.name = "group_size", .type = LLMOPT_PARAM_INT, .default_value = "64", .min = 0, .max = 1 << 22,
     .doc = "gq4: weights per scale along a row; 0: one group per row"},
    {.name = "sym", .type = LLMOPT_PARAM_BOOL, .default_value = "true",
     .doc = "gq4: symmetric codes (true) or a zero point per group (false)"},
    FT_LORA_PARAMS,
    FT_COMMON_PARAMS,
};
static const llmopt_input_desc inputs[] = {
    {.name = "model", .required = 1, .doc = "the model to fine-tune (float, or already quantized)"}};

const llmopt_stage_desc ft_qlora_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "finetune.qlora",
    .summary = "QLoRA (Dettmers et al. 2023): LoRA over a frozen 4-bit (NF4 or GQ4) base, PEFT format",
    .doc = "Quantizes the linear weights of the transformer blocks (not embeddings or the LM head) to NF4\n"
           "or GQ4, keeps weights already quantized, freezes the base and trains rank-r adapters in f32 on\n"
           "the target modules. Writes adapter/ as finetune.lora does. The output is the quantized base,\n"
           "or with merge: true the dequantized base with the adapters merged (a plain HF checkpoint).\n"
           "Metrics: those of finetune.lora, base_bytes (the base's tensors in memory), base_bytes_ratio.",
    LLMOPT_STAGE_PARAMS(qlora_params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = qlora_validate,
    .run = qlora_run,
};
