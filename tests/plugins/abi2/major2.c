/* Test plugin: exports llmopt_plugin_v1 but says ABI major 2 (written by hand, without the
 * LLMOPT_PLUGIN macro); the host must refuse it without calling init. */
#include <llmopt/llmopt.h>

static int major2_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    (void)reg;
    return 0;
}

LLMOPT_EXPORT extern const llmopt_plugin_desc llmopt_plugin_v1;
const llmopt_plugin_desc llmopt_plugin_v1 = {
    .struct_size = sizeof(llmopt_plugin_desc), .abi_major = 2, .abi_minor = 0,
    .id = "major2", .version = "0.1.0", .init = major2_init};
