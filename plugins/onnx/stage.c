/* onnx.export: writes the input model's forward pass as <stage>/model.onnx (opset 17 or later),
 * weights as float32 initializers inside the file, for onnxruntime and every other ONNX reader.
 * Input input_ids int64 [batch, sequence], output logits float [batch, sequence, vocab] at every
 * position; with kv_cache, the blocks' past keys and values in and the present ones out.
 * GPT-2 and the Llama family (llama, mistral, qwen2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "onnx_export.h"

#define A ox_api

int ox_keep_add(llmopt_stage_ctx *ctx, ox_keep *keep, const llmopt_tensor *t) {
    if (keep->n == keep->cap) {
        size_t cap = keep->cap ? 2 * keep->cap : 64;
        const llmopt_tensor **nt = realloc(keep->t, cap * sizeof *nt);
        if (!nt) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        keep->t = nt, keep->cap = cap;
    }
    keep->t[keep->n++] = t;
    return 0;
}

const llmopt_tensor *ox_f32_ref(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *name) {
    const llmopt_tensor *t = A->model_get(m, name);
    if (!t) {
        A->set_error(ctx, LLMOPT_EINVAL, "the model has no tensor '%s'", name);
        return NULL;
    }
    const llmopt_dtype_traits *tr = A->dtype_traits(t->dtype);
    if (t->dtype != LLMOPT_DTYPE_F32 && t->dtype != LLMOPT_DTYPE_F16 && t->dtype != LLMOPT_DTYPE_BF16 &&
        !(tr && tr->is_quantized)) {
        A->set_error(ctx, LLMOPT_EUNSUPPORTED, "'%s' is %s: the ONNX export takes float or block-quantized weights",
                     name, tr ? tr->name : "of an unknown type");
        return NULL;
    }
    if (t->device != LLMOPT_DEVICE_CPU) {
        A->set_error(ctx, LLMOPT_EUNSUPPORTED, "'%s' is not in host memory", name);
        return NULL;
    }
    llmopt_tensor *c = NULL;
    if (t->dtype == LLMOPT_DTYPE_F32) return A->tensor_ref(t);
    return A->tensor_convert(ctx, t, LLMOPT_DTYPE_F32, &c) == 0 ? c : NULL;
}

const llmopt_tensor *ox_f32(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *name, ox_keep *keep) {
    const llmopt_tensor *f = ox_f32_ref(ctx, m, name);
    if (!f) return NULL;
    if (ox_keep_add(ctx, keep, f)) {
        A->tensor_unref(f);
        return NULL;
    }
    return f;
}

/* The model's side files (tokenizer.json, tokenizer_config.json, generation_config.json, ...)
 * beside the graph, so the directory carries what a runtime needs to tokenize and stop. */
static int write_side_files(llmopt_stage_ctx *ctx, const llmopt_model *m) {
    char path[4200];
    for (size_t i = 0; i < A->model_n_files(m); i++) {
        const char *name = A->model_file_name(m, i);
        size_t len = 0;
        const char *data = A->model_get_file(m, name, &len);
        if (!data || strchr(name, '/')) continue;
        snprintf(path, sizeof path, "%s/%s", A->stage_dir(ctx), name);
        FILE *f = fopen(path, "wb");
        int bad = !f || fwrite(data, 1, len, f) != len;
        if (f && fclose(f) != 0) bad = 1;
        if (bad) return A->set_error(ctx, LLMOPT_EIO, "cannot write %s", path);
    }
    return 0;
}

static int export_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    const char *file = A->param_str(ctx, "file");
    llmopt_arch_info a = {.struct_size = sizeof a};
    if (A->model_arch_info(ctx, m, &a)) return LLMOPT_EINVAL;
    if (!*file || strchr(file, '/'))
        return A->set_error(ctx, LLMOPT_EINVAL, "file '%s' must be a plain file name (it goes in the stage's directory)",
                            file);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", A->stage_dir(ctx), file) >= (int)sizeof path)
        return A->set_error(ctx, LLMOPT_EINVAL, "stage directory path too long");
    ox_graph *g = ox_graph_new(a.family == LLMOPT_ARCH_GPT2 ? "gpt2" : "llama");
    const ox_opts o = {.opset = A->param_int(ctx, "opset"), .cache = A->param_bool(ctx, "kv_cache"),
                       .last = strcmp(A->param_str(ctx, "logits"), "last") == 0,
                       .int8_compute = A->param_bool(ctx, "int8_compute"),
                       .masked = A->param_bool(ctx, "attention_mask")};
    ox_keep keep = {0};
    int rc = !g ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory")
             : a.family == LLMOPT_ARCH_GPT2 ? ox_gpt2_graph(ctx, m, &a, &o, g, &keep)
                                            : ox_llama_graph(ctx, m, &a, &o, g, &keep);
    if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    if (!rc) {
        A->progress(ctx, 0.6, "writing %s", file);
        char msg[512];
        const char *ext = A->param_str(ctx, "external_data");
        const int mode = strcmp(ext, "always") == 0 ? OX_EXTERNAL_ALWAYS : strcmp(ext, "never") == 0 ? OX_EXTERNAL_NEVER
                                                                                                    : OX_EXTERNAL_AUTO;
        if (ox_write(g, path, o.opset, "llmopt", "0.1.0", mode, msg, sizeof msg))
            rc = A->set_error(ctx, LLMOPT_EIO, "%s", msg);
    }
    if (!rc) rc = write_side_files(ctx, m);
    for (size_t i = 0; i < keep.n; i++) A->tensor_unref(keep.t[i]);
    free(keep.t);
    ox_graph_free(g);
    if (rc) return rc;
    struct stat sb;
    double bytes = stat(path, &sb) == 0 ? (double)sb.st_size : 0;
    char data[4200];
    snprintf(data, sizeof data, "%s.data", path);
    if (stat(data, &sb) == 0) bytes += (double)sb.st_size;
    A->metric(ctx, "size_bytes", bytes, "B", LLMOPT_BETTER_LOWER);
    return 0;
}

static const llmopt_param_desc params[] = {
    {.name = "opset", .type = LLMOPT_PARAM_INT, .default_value = "17", .min = 17, .max = 21,
     .doc = "the ONNX opset of the default domain (17 has LayerNormalization)"},
    {.name = "kv_cache", .type = LLMOPT_PARAM_BOOL, .default_value = "false",
     .doc = "also take past_key_values.<l>.key/.value [batch, kv_heads, past, head_dim] and return "
            "present.<l>.key/.value with the new positions appended (optimum's names), for decoding step by step"},
    {.name = "attention_mask", .type = LLMOPT_PARAM_BOOL, .default_value = "false",
     .doc = "also take attention_mask int64 [batch, past + sequence] (0: padding) and position_ids int64 "
            "[batch, sequence], optimum's inputs, for batches of sequences of different lengths"},
    {.name = "logits", .type = LLMOPT_PARAM_ENUM, .default_value = "all", .choices = "all|last",
     .doc = "logits at every position [batch, sequence, vocab], or at the last one only [batch, 1, vocab] "
            "(generation: the LM head over one position)"},
    {.name = "int8_compute", .type = LLMOPT_PARAM_BOOL, .default_value = "false",
     .doc = "4-bit MatMulNBits at accuracy_level 4: onnxruntime rounds activations to int8 per block and "
            "multiplies in integers (faster; llmopt's CPU kernels do the same); false: float32 math"},
    {.name = "external_data", .type = LLMOPT_PARAM_ENUM, .default_value = "auto", .choices = "auto|always|never",
     .doc = "weights in <file>.data beside the graph (ONNX external data): auto when the file would reach "
            "protobuf's 2 GiB limit"},
    {.name = "file", .type = LLMOPT_PARAM_STRING, .default_value = "model.onnx",
     .doc = "the file's name in the stage's directory"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to export"}};

const llmopt_stage_desc ox_export_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "onnx.export",
    .summary = "export the model's forward pass as an ONNX graph (onnxruntime)",
    .doc = "Writes <stage>/model.onnx: input_ids int64 [batch, sequence] -> logits float\n"
           "[batch, sequence, vocab] for every position, with kv_cache also the past and present\n"
           "keys and values of every block; float32 weights inside the file, or in model.onnx.data\n"
           "beside it (external_data; automatic at 2 GiB). GPT-2 and Llama-family models (f32, f16\n"
           "or bf16 weights). Metric: size_bytes (the graph and its data file).",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = export_run,
};
