/* The prune plugin: its descriptor and registration. Stages: prune.magnitude, prune.wanda,
 * prune.sparsegpt. */
#include <stddef.h>

#include "prune.h"
#include "quantize.h"

const llmopt_host_api *qz_api; /* the table the quantize plugin's shared parts read */

static int init(const llmopt_host_api *api, llmopt_registrar *reg) {
    if (api->struct_size < offsetof(llmopt_host_api, calibrate_sequential) + sizeof api->calibrate_sequential) {
        reg->set_error(reg, "the host's API table is older than this plugin's (needs calibrate_sequential)");
        return LLMOPT_EABI;
    }
    qz_api = api;
    const llmopt_stage_desc *stages[] = {&pr_magnitude_stage, &pr_wanda_stage, &pr_sparsegpt_stage};
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        int rc = reg->add_stage(reg, stages[i]);
        if (rc) return rc;
    }
    return 0;
}

LLMOPT_PLUGIN(.id = "prune", .version = "0.1.0", .license = "MIT",
              .summary = "pruning: magnitude, Wanda and SparseGPT, unstructured or N:M", .init = init);
