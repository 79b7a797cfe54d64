/* The registry: every plugin the loader looked at (loaded, refused, skipped, failed, and why),
 * and the stages, kernels and device memory ops the loaded ones registered. Stage and kernel descriptors are
 * copied into host-sized structs, so plugins built against an older minor (smaller structs)
 * read as if the missing trailing fields were zero. */
#ifndef HOST_PLUGIN_REGISTRY_H
#define HOST_PLUGIN_REGISTRY_H

#include <stddef.h>
#include <llmopt/llmopt.h>
#include "../util/error.h"

typedef enum plugin_state {
    PLUGIN_LOADED = 0,      /* descriptor ok, init succeeded */
    PLUGIN_REFUSED = 1,     /* not a plugin, or ABI/descriptor check failed; no code ran */
    PLUGIN_SKIPPED = 2,     /* a better variant of its group won, or score 0 on this machine */
    PLUGIN_INIT_FAILED = 3  /* init returned an error; its registrations were rolled back */
} plugin_state;

typedef struct plugin_rec {
    char *path;                     /* the .so as found */
    plugin_state state;
    char *reason;                   /* why refused/skipped/failed; NULL when loaded */
    llmopt_plugin_desc desc;        /* host-sized copy; zeroed when refused before reading */
    void *handle;                   /* dlopen handle; never dlclose'd while the host runs */
    int score;                      /* from desc.score, or -1 when not a variant */
    size_t n_stages, n_kernels;     /* registered by this plugin */
    size_t n_devices;
} plugin_rec;

typedef struct stage_rec {
    llmopt_stage_desc desc;         /* host-sized copy; desc.params/inputs point at the copies */
    llmopt_param_desc *params;      /* n = desc.n_params, host-sized */
    llmopt_input_desc *inputs;      /* n = desc.n_inputs, host-sized; never NULL (default "model") */
    const plugin_rec *plugin;
} stage_rec;

typedef struct kernel_rec {
    llmopt_kernel_desc desc;        /* host-sized copy */
    const plugin_rec *plugin;
} kernel_rec;

typedef struct device_rec {
    llmopt_device_ops ops;          /* host-sized copy; tensors on the device point at it */
    const plugin_rec *plugin;
} device_rec;

typedef struct registry {
    plugin_rec **plugins;
    size_t n_plugins;
    stage_rec **stages;
    size_t n_stages;
    kernel_rec **kernels;
    size_t n_kernels;
    device_rec **devices;
    size_t n_devices;
} registry;

registry *registry_new(void);
/* Calls every loaded plugin's shutdown, then frees. Handles are not dlclose'd. Tensors on a
 * plugin's device must be released before. */
void registry_free(registry *reg);

/* Appends a record for a plugin file; the registry owns it. */
plugin_rec *registry_add_plugin(registry *reg, const char *path);
/* Marks a plugin with a state and a reason (printf-style). */
void plugin_set_state(plugin_rec *p, plugin_state st, const char *fmt, ...) LLMOPT_PRINTF(3, 4);
const char *plugin_state_str(plugin_state st);

/* Validates and copies a stage descriptor (name "family.method", run set, param schema well
 * formed: known types, defaults parse and lie in range, enum defaults among choices).
 * LLMOPT_EEXIST with both files named when the name is taken. */
int registry_add_stage(registry *reg, const plugin_rec *owner, const llmopt_stage_desc *d,
                       llmopt_error *err);
int registry_add_kernel(registry *reg, const plugin_rec *owner, const llmopt_kernel_desc *d,
                        llmopt_error *err);
/* Validates and copies a device's memory ops: not the CPU, a known device id, every required
 * function set; LLMOPT_EEXIST with both files named when the device already has ops. */
int registry_add_device(registry *reg, const plugin_rec *owner, const llmopt_device_ops *d,
                        llmopt_error *err);
/* The memory ops of a device, or NULL (always for the CPU). */
const device_rec *registry_find_device(const registry *reg, int device);
/* Removes everything registered by owner (used when its init fails after registering). */
void registry_remove_owner(registry *reg, const plugin_rec *owner);

const stage_rec *registry_find_stage(const registry *reg, const char *name);
/* Exact (op, device, dtype), else (op, device, ANY). */
const kernel_rec *registry_find_kernel(const registry *reg, const char *op, int device, int dtype);
/* The schema entry of a stage's parameter, or NULL. */
const llmopt_param_desc *stage_find_param(const stage_rec *s, const char *name);

#endif
