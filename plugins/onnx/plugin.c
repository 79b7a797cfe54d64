/* The onnx plugin: its descriptor and registration. Stage: onnx.export. */
#include <stddef.h>

#include "onnx_export.h"

const llmopt_host_api *ox_api;

static int init(const llmopt_host_api *api, llmopt_registrar *reg) {
    if (api->struct_size < offsetof(llmopt_host_api, model_arch_info) + sizeof api->model_arch_info) {
        reg->set_error(reg, "the host's API table is older than this plugin's (needs model_arch_info)");
        return LLMOPT_EABI;
    }
    ox_api = api;
    return reg->add_stage(reg, &ox_export_stage);
}

LLMOPT_PLUGIN(.id = "onnx", .version = "0.1.0", .license = "MIT",
              .summary = "ONNX export of the forward pass (protobuf-c, Debian's onnx.proto)", .init = init);
