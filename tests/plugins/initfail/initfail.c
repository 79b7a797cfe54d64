/* Test plugin whose init registers a stage, then fails with a message: the host reports the
 * message and rolls the stage back. */
#include <llmopt/llmopt.h>

static int nop_run(llmopt_stage_ctx *ctx) {
    (void)ctx;
    return 0;
}

static const llmopt_stage_desc stage = {
    .struct_size = sizeof(llmopt_stage_desc), .name = "initfail.early",
    .summary = "Registered before init fails.", .run = nop_run};

static int initfail_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    int rc = reg->add_stage(reg, &stage);
    if (rc != 0) return rc;
    reg->set_error(reg, "cannot find libfoo.so.3");
    return LLMOPT_EUNSUPPORTED;
}

LLMOPT_PLUGIN(.id = "initfail", .version = "0.1.0", .init = initfail_init);
