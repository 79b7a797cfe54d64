/* What a quantize stage records of its method in the output model's config.json
 * "quantization_config", in the field names Hugging Face uses for the same knobs (transformers'
 * GPTQConfig: desc_act, static_groups, damp_percent as a fraction, true_sequential; AwqConfig:
 * zero_point). The saver adds bits/group_size/sym/dtype from the tensors themselves and keeps
 * this record only while one dtype covers every quantized tensor (safetensors_write.c). */
#include <stdio.h>

#include "quantize.h"

#define A qz_api

static int has_quantized(const llmopt_model *m) {
    for (size_t i = 0; i < A->model_n_tensors(m); i++) {
        const llmopt_tensor *t = A->model_get(m, A->model_tensor_name(m, i));
        if (A->dtype_traits(t->dtype)->is_quantized) return 1;
    }
    return 0;
}

int qz_record(llmopt_stage_ctx *ctx, const llmopt_model *in, llmopt_model *out, const char *method, const char *fields) {
    char text[1024];
    /* tensors the input had quantized already came from another stage: no one method describes all */
    int n = !method || has_quantized(in) ? snprintf(text, sizeof text, "{\"quant_method\": \"llmopt\"}")
                              : snprintf(text, sizeof text, "{\"quant_method\": \"llmopt\", \"method\": \"%s\"%s%s}", method,
                                         fields && *fields ? ", " : "", fields ? fields : "");
    if (n < 0 || (size_t)n >= sizeof text) return A->set_error(ctx, LLMOPT_EINVAL, "quantization record too long");
    int rc = A->model_cfg_set_json(out, "quantization_config", text);
    return rc ? A->set_error(ctx, rc, "cannot record the quantization method in the config: %s", text) : 0;
}
