/* Test plugin built three times as variants of group "kernels.test", scoring VARIANT_SCORE
 * (0 means "no AVX-512"). Each registers the same kernel key, so only the winner may init. */
#include <llmopt/llmopt.h>

#include <stdio.h>

static int variant_score(char *why, size_t why_len) {
    if (VARIANT_SCORE == 0) snprintf(why, why_len, "no AVX-512");
    return VARIANT_SCORE;
}

static int nop_kernel(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                      const void *op_params) {
    (void)in;
    (void)n_in;
    (void)out;
    (void)op_params;
    return 0;
}

static const llmopt_kernel_desc k = {
    .struct_size = sizeof(llmopt_kernel_desc), .device = LLMOPT_DEVICE_CPU, .op = "vtest",
    .dtype = LLMOPT_DTYPE_F32, .fn = nop_kernel, .summary = PLUGIN_ID};

static int variant_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    return reg->add_kernel(reg, &k);
}

LLMOPT_PLUGIN(.id = PLUGIN_ID, .version = "0.1.0", .variant_of = "kernels.test",
              .score = variant_score, .init = variant_init);
