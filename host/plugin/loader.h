/* The plugin loader: scans directories for the plugin suffix, dlopens each file with
 * RTLD_NOW|RTLD_LOCAL, checks the `llmopt_plugin_v1` descriptor (struct size, ABI major and
 * minor, required fields) before any plugin function runs, resolves kernel variant groups by
 * score, then calls init with the host API table and a registrar. */
#ifndef HOST_PLUGIN_LOADER_H
#define HOST_PLUGIN_LOADER_H

#include "registry.h"

#ifndef LLMOPT_PLUGIN_SUFFIX
#define LLMOPT_PLUGIN_SUFFIX ".so"
#endif

/* Loads every plugin file in dirs (in order; files sorted by name within a directory).
 * Problems with single plugins are recorded in the registry and logged as one line each
 * ("<file>: refused: ABI major 2, host speaks 1"); the call still succeeds. A directory that
 * is missing or unreadable is an error (LLMOPT_ENOTFOUND / LLMOPT_EIO) naming it, after the
 * remaining directories were loaded. */
int loader_load_dirs(registry *reg, const char *const *dirs, size_t n_dirs,
                     const llmopt_host_api *api, llmopt_error *err);

/* Checks a descriptor read from a plugin file without calling into it. avail is how many
 * bytes may be read (the symbol's size when known, else SIZE_MAX). Fills why on refusal. */
int loader_check_desc(const llmopt_plugin_desc *d, size_t avail, llmopt_error *why);

#endif
