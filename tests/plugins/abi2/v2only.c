/* Test plugin: what a plugin for ABI major 2 looks like to this host: only the
 * llmopt_plugin_v2 symbol (its layout is unknown here, so it is never read). */
#include <llmopt/common.h>

LLMOPT_EXPORT extern const uint32_t llmopt_plugin_v2[4];
const uint32_t llmopt_plugin_v2[4] = {16, 2, 0, 0};
