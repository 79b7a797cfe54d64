/* Test plugin built twice (a.so, b.so): both register stage dup.same, so b's init fails with
 * a message naming both files. Each also registers a stage of its own, which must be rolled
 * back with the failure. */
#include <llmopt/llmopt.h>

static int dup_run(llmopt_stage_ctx *ctx) {
    (void)ctx;
    return 0;
}

static const llmopt_stage_desc own = {
    .struct_size = sizeof(llmopt_stage_desc), .name = "dup." PLUGIN_ID_STAGE,
    .summary = "A stage only this plugin has.", .run = dup_run};
static const llmopt_stage_desc same = {
    .struct_size = sizeof(llmopt_stage_desc), .name = "dup.same",
    .summary = "A stage both plugins register.", .run = dup_run};

static int dup_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    int rc = reg->add_stage(reg, &own);
    if (rc != 0) return rc;
    /* Returns 0 whatever add_stage said: the host must still fail the plugin. */
    reg->add_stage(reg, &same);
    return 0;
}

LLMOPT_PLUGIN(.id = PLUGIN_ID, .version = "0.1.0", .init = dup_init);
