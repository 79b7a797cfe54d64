/* llmopt SDK: the plugin descriptor and the registrar.
 * A plugin is a shared object exporting exactly one symbol, the constant descriptor
 * `llmopt_plugin_v1` (define it with LLMOPT_PLUGIN). The descriptor is data, not a function, so
 * the host checks its size and ABI version before any plugin function runs. */
#ifndef LLMOPT_PLUGIN_H
#define LLMOPT_PLUGIN_H

#include "common.h"
#include "stage.h"
#include "kernel.h"
#include "device.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmopt_host_api llmopt_host_api;

/** Handed to a plugin's init; adds the plugin's stages and kernels to the host's registry. */
typedef struct llmopt_registrar llmopt_registrar;
struct llmopt_registrar {
    uint32_t struct_size;
    /* The registrar is valid only during init: do not keep the pointer. */
    /** Adds a stage. LLMOPT_EEXIST when another plugin has the name (the host logs both
     *  files), LLMOPT_EINVAL for a malformed descriptor (the message says which field). */
    int (*add_stage)(llmopt_registrar *reg, const llmopt_stage_desc *stage);
    /** Adds a kernel. LLMOPT_EEXIST when the (op, device, dtype) key is taken. */
    int (*add_kernel)(llmopt_registrar *reg, const llmopt_kernel_desc *kernel);
    /** Records why init failed; the host prints it as "<file>: init failed: <message>". */
    void (*set_error)(llmopt_registrar *reg, const char *fmt, ...) LLMOPT_PRINTF(2, 3);
    void *host_private;
    /** Registers the memory of a device (device.h), at most one plugin per device. LLMOPT_EEXIST
     *  when another plugin owns the device (both files named), LLMOPT_EINVAL for a malformed
     *  descriptor (the message names the field), LLMOPT_EABI when struct_size is too small.
     *  The descriptor and ctx must stay valid until shutdown. Appended in ABI 1.0 before its
     *  release; a plugin checks reg->struct_size covers it before calling. */
    int (*add_device)(llmopt_registrar *reg, const llmopt_device_ops *device);
};
LLMOPT_PIN(llmopt_registrar, add_stage, 8);
LLMOPT_PIN(llmopt_registrar, add_kernel, 16);
LLMOPT_PIN(llmopt_registrar, set_error, 24);
LLMOPT_PIN(llmopt_registrar, host_private, 32);
LLMOPT_PIN(llmopt_registrar, add_device, 40);

/** The plugin descriptor. Append-only: later minors add fields at the end only. */
typedef struct llmopt_plugin_desc {
    uint32_t struct_size;   /**< sizeof(llmopt_plugin_desc) the plugin was built with */
    uint16_t abi_major;     /**< LLMOPT_ABI_MAJOR the plugin was built with */
    uint16_t abi_minor;     /**< LLMOPT_ABI_MINOR the plugin was built with */
    const char *id;         /**< unique id, e.g. "quantize" or "kernels-cpu-avx2" */
    const char *version;    /**< the plugin's own version, e.g. "0.1.0" */
    const char *license;    /**< SPDX identifier */
    const char *summary;    /**< one line for `llmopt-host plugins` */
    /** Kernel plugins only: the group this plugin is one variant of (e.g. "kernels.cpu").
     *  Of the plugins in one group only the one with the highest score is initialised;
     *  the others are listed as skipped with their reason. NULL for ordinary plugins. */
    const char *variant_of;
    /** Optional: how well this plugin fits this machine, 0 = cannot run here. Write a short
     *  reason into why ("no AVX-512", "2 CUDA devices"). Called after the ABI check. */
    int (*score)(char *why, size_t why_len);
    /** Registers stages and kernels. Return 0, or a status after reg->set_error. The api table
     *  stays valid until shutdown; keep the pointer. */
    int (*init)(const llmopt_host_api *api, llmopt_registrar *reg);
    /** Optional: called once at host exit. */
    void (*shutdown)(void);
} llmopt_plugin_desc;
LLMOPT_PIN(llmopt_plugin_desc, abi_major, 4);
LLMOPT_PIN(llmopt_plugin_desc, abi_minor, 6);
LLMOPT_PIN(llmopt_plugin_desc, id, 8);
LLMOPT_PIN(llmopt_plugin_desc, version, 16);
LLMOPT_PIN(llmopt_plugin_desc, license, 24);
LLMOPT_PIN(llmopt_plugin_desc, summary, 32);
LLMOPT_PIN(llmopt_plugin_desc, variant_of, 40);
LLMOPT_PIN(llmopt_plugin_desc, score, 48);
LLMOPT_PIN(llmopt_plugin_desc, init, 56);
LLMOPT_PIN(llmopt_plugin_desc, shutdown, 64);

/** The name of the one exported symbol for ABI major 1. */
#define LLMOPT_PLUGIN_SYMBOL "llmopt_plugin_v1"

/** Defines the descriptor. Use once per plugin, at file scope:
 *    LLMOPT_PLUGIN(.id = "example", .version = "0.1.0", .license = "MIT",
 *                  .summary = "...", .init = example_init);                       */
#define LLMOPT_PLUGIN(...)                                                         \
    LLMOPT_EXPORT extern const llmopt_plugin_desc llmopt_plugin_v1;                \
    const llmopt_plugin_desc llmopt_plugin_v1 = {                                  \
        .struct_size = sizeof(llmopt_plugin_desc),                                 \
        .abi_major = LLMOPT_ABI_MAJOR, .abi_minor = LLMOPT_ABI_MINOR, __VA_ARGS__}

#ifdef __cplusplus
}
#endif
#endif
