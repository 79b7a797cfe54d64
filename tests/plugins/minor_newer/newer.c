/* Test plugin: built for a minor newer than the host's; refused with "upgrade llmopt". */
#include <llmopt/llmopt.h>

static int newer_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    (void)reg;
    return 0;
}

LLMOPT_EXPORT extern const llmopt_plugin_desc llmopt_plugin_v1;
const llmopt_plugin_desc llmopt_plugin_v1 = {
    .struct_size = sizeof(llmopt_plugin_desc), .abi_major = LLMOPT_ABI_MAJOR,
    .abi_minor = LLMOPT_ABI_MINOR + 1, .id = "newer", .version = "0.1.0", .init = newer_init};
