/* The quantize plugin: its descriptor and registration. Stages: quantize.cast (f32/f16/bf16),
 * quantize.rtn (round to nearest), quantize.gptq, quantize.awq, quantize.gguf (export), quantize.export
 * (AutoGPTQ's format). */
#include <stddef.h>

#include "quantize.h"

const llmopt_host_api *qz_api;

static int init(const llmopt_host_api *api, llmopt_registrar *reg) {
    /* needs the quantization members (quantize_row ... gguf_write) and model_cfg_set/get_json */
    if (api->struct_size < offsetof(llmopt_host_api, model_cfg_get_json) + sizeof api->model_cfg_get_json) {
        reg->set_error(reg, "the host's API table is older than this plugin's (needs quantize_row ... model_cfg_get_json)");
        return LLMOPT_EABI;
    }
    qz_api = api;
    const llmopt_stage_desc *stages[] = {&qz_cast_stage, &qz_rtn_stage, &qz_gptq_stage, &qz_awq_stage, &qz_gguf_stage, &qz_export_stage};
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        int rc = reg->add_stage(reg, stages[i]);
        if (rc) return rc;
    }
    return 0;
}

LLMOPT_PLUGIN(.id = "quantize", .version = "0.1.0", .license = "MIT",
              .summary = "quantization: cast, round-to-nearest, GPTQ, AWQ, GGUF and AutoGPTQ export", .init = init);
