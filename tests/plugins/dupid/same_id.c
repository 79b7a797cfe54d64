/* Test plugin built twice (first.so, second.so) with the same id: the second is refused. */
#include <llmopt/llmopt.h>

static int same_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    (void)reg;
    return 0;
}

LLMOPT_PLUGIN(.id = "same", .version = "0.1.0", .init = same_init);
