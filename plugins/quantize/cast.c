/* quantize.cast: the selected float weights to f32, f16 or bf16 (round to nearest even). Only
 * 2-D weights (linear layers, embeddings) are candidates: norms and biases stay as they are (the
 * norm kernels take f32 gains; llama.cpp's f16 files keep them f32 too). Quantized and integer
 * tensors are left alone, so `dtype: f32` on an f32 model is a pass-through that saves the
 * checkpoint bit for bit. */
#include "quantize.h"

#define A qz_api

static int cast_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    int dtype = A->dtype_from_name(A->param_str(ctx, "dtype"));
    qz_selection sel;
    int rc = qz_select(ctx, in, 1, &sel);
    if (rc) return rc;
    llmopt_model *out = A->model_clone(in);
    if (!out) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < sel.n; i++) {
        const llmopt_tensor *t = A->model_get(in, sel.names[i]);
        if (t->dtype == dtype) continue;  /* shared, not copied */
        llmopt_tensor *c = NULL;
        if (!(rc = A->tensor_convert(ctx, t, dtype, &c))) {
            rc = A->model_set(out, sel.names[i], c);
            A->tensor_unref(c);
        }
        if (A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    }
    if (rc) {
        A->model_unref(out);
        qz_selection_free(&sel);
        return rc;
    }
    rc = qz_finish(ctx, in, out, &sel);
    qz_selection_free(&sel);
    return rc;
}

static const llmopt_param_desc params[] = {
    {.name = "dtype", .type = LLMOPT_PARAM_ENUM, .default_value = "f16", .choices = "f32|f16|bf16",
     .doc = "the float type to store the selected tensors in"},
    {.name = "include", .type = LLMOPT_PARAM_LIST, .default_value = "",
     .doc = "globs over checkpoint names of the 2-D weights to cast; empty: every one (norms, biases stay)"},
    {.name = "exclude", .type = LLMOPT_PARAM_LIST, .default_value = "", .doc = "globs of tensors to leave as they are"},
    {.name = "eval_data", .type = LLMOPT_PARAM_STRING, .default_value = "",
     .doc = "a data entry to measure the perplexity of the input and the output on; empty: none"},
    {.name = "eval_tokens", .type = LLMOPT_PARAM_INT, .default_value = "8192", .min = 0, .max = 1e12,
     .doc = "score at most this many tokens of eval_data (0: all)"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to cast"}};

const llmopt_stage_desc qz_cast_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "quantize.cast",
    .summary = "cast float tensors to f32, f16 or bf16",
    .doc = "Converts the selected 2-D f32/f16/bf16 weights to `dtype` (round to nearest even); norms,\n"
           "biases, quantized and integer tensors are kept. Metrics: size_bytes, size_ratio, bits_per_weight.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = cast_run,
};
