/* Test plugin: a descriptor claiming 16 bytes, less than ABI v1's minimum; refused. */
#include <llmopt/llmopt.h>

static int small_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    (void)reg;
    return 0;
}

LLMOPT_EXPORT extern const llmopt_plugin_desc llmopt_plugin_v1;
const llmopt_plugin_desc llmopt_plugin_v1 = {
    .struct_size = 16, .abi_major = LLMOPT_ABI_MAJOR, .abi_minor = LLMOPT_ABI_MINOR,
    .id = "small", .version = "0.1.0", .init = small_init};
