/* Test plugins with a malformed descriptor field: BAD_ID gives an id with capitals and a dot,
 * NO_INIT leaves init NULL. Both are refused naming the field. */
#include <llmopt/llmopt.h>

#ifdef BAD_ID
static int fields_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    (void)reg;
    return 0;
}
LLMOPT_PLUGIN(.id = "Bad.Id", .version = "0.1.0", .init = fields_init);
#else
LLMOPT_PLUGIN(.id = "noinit", .version = "0.1.0", .init = NULL);
#endif
