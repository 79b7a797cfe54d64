/* quantize.gguf: writes the input model as <stage_dir>/model.gguf (llama.cpp's names and
 * layout, through the host's GGUF writer); F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors. */
#include <stdio.h>
#include <sys/stat.h>

#include "quantize.h"

#define A qz_api

static int gguf_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    char path[4096];
    if (snprintf(path, sizeof path, "%s/model.gguf", A->stage_dir(ctx)) >= (int)sizeof path)
        return A->set_error(ctx, LLMOPT_EINVAL, "stage directory path too long");
    int rc = A->gguf_write(ctx, m, path);
    if (rc) return rc;
    struct stat sb;
    if (stat(path, &sb) == 0) A->metric(ctx, "size_bytes", (double)sb.st_size, "B", LLMOPT_BETTER_LOWER);
    return 0;
}

static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to export"}};

const llmopt_stage_desc qz_gguf_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "quantize.gguf",
    .summary = "export the model as a GGUF file (llama.cpp)",
    .doc = "Writes <stage>/model.gguf: GGUF v3 with llama.cpp's tensor names and layout and the\n"
           "tokenizer. Tensors must be f32, f16, bf16, q8_0, q4_0 or q4_1 (GQ types have no ggml\n"
           "counterpart). Metric: size_bytes of the file.",
    LLMOPT_STAGE_INPUTS(inputs),
    .run = gguf_run,
};
