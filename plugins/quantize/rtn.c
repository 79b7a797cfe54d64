/* quantize.rtn: round-to-nearest quantization of the selected linear weights into ggml's
 * Q8_0 / Q4_0 / Q4_1, QLoRA's NF4, int8 per output channel, or group-quantized GQ(bits, group, sym|asym),
 * with the host's reference quantizers (the rules in host/runtime/quant.h). */
#include <string.h>

#include "params.h"
#include "quantize.h"

#define A qz_api

/* The dtype for a weight of cols inputs. */
static int rtn_dtype(llmopt_stage_ctx *ctx, int64_t cols) {
    const char *f = A->param_str(ctx, "format");
    if (strcmp(f, "int8") == 0) return LLMOPT_DTYPE_GQ(8, (int)cols, 0);
    if (strcmp(f, "gq") == 0) return qz_group_dtype(ctx, cols);
    return A->dtype_from_name(f);
}

static int rtn_validate(llmopt_stage_ctx *ctx) {
    return strcmp(A->param_str(ctx, "format"), "gq") == 0 ? qz_validate_group(ctx) : 0;
}

static int rtn_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = A->stage_input(ctx, "model");
    qz_selection sel;
    int rc = qz_select(ctx, in, 1, &sel);
    if (rc) return rc;
    for (size_t i = 0; !rc && i < sel.n; i++) {
        int64_t rows, cols;
        qz_linear_dims(in, sel.names[i], &rows, &cols);
        qz_selection one = {&sel.names[i], 1};
        int dt = rtn_dtype(ctx, cols);
        rc = qz_check_rows(ctx, in, &one, dt);
        if (!rc && !A->kernel_find(LLMOPT_OP_MATMUL, LLMOPT_DEVICE_CPU, dt))
            A->log(LLMOPT_LOG_WARN, "quantize.rtn: no CPU matmul kernel for %s ('%s'): the output is saved but cannot run here",
                   A->dtype_traits(dt)->name, sel.names[i]);
    }
    llmopt_model *out = rc ? NULL : A->model_clone(in);
    if (!rc && !out) rc = A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < sel.n; i++) {
        int64_t rows, cols;
        qz_linear_dims(in, sel.names[i], &rows, &cols);
        rc = qz_quantize_linear(ctx, in, out, sel.names[i], rtn_dtype(ctx, cols));
        A->progress(ctx, (double)(i + 1) / (double)sel.n, "%zu/%zu weights", i + 1, sel.n);
        if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    }
    if (rc) {
        A->model_unref(out);
        qz_selection_free(&sel);
        return rc;
    }
    /* round to nearest is what the dtypes already say; this clears an earlier stage's method */
    rc = qz_record(ctx, in, out, NULL, NULL);
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
    {.name = "format", .type = LLMOPT_PARAM_ENUM, .default_value = "q8_0", .choices = "q8_0|q4_0|q4_1|nf4|int8|gq",
     .doc = "ggml q8_0/q4_0/q4_1 (blocks of 32), nf4 (QLoRA's NormalFloat, blocks of 64, f32 absmax), int8 per "
            "output channel, or gq: bits/group_size/sym below"},
    QZ_GROUP_PARAMS("4", "true"),
    QZ_SELECT_PARAMS(QZ_EXCLUDE_EMBEDDINGS),
    QZ_EVAL_PARAMS,
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to quantize"}};

const llmopt_stage_desc qz_rtn_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .flags = LLMOPT_STAGE_OUTPUTS_MODEL,
    .name = "quantize.rtn",
    .summary = "round-to-nearest weight quantization (q8_0, q4_0, q4_1, nf4, int8, GQ)",
    .doc = "Quantizes the selected 2-D linear weights (default: all but embeddings and the LM head) by\n"
           "round to nearest. GPT-2 and Llama (a GPT-2 Conv1D weight is stored [out, in] once quantized).\n"
           "Metrics: size_bytes, size_ratio, bits_per_weight; ppl_input, ppl, ppl_ratio with eval_data.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .validate = rtn_validate,
    .run = rtn_run,
};
