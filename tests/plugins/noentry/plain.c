/* Test plugin "noentry": a shared object that exports a function but no llmopt_plugin_v1,
 * as any unrelated library in a plugin directory would. */
#include <llmopt/common.h>

LLMOPT_EXPORT int not_a_plugin(void);
int not_a_plugin(void) { return 42; }
