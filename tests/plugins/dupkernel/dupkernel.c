/* Test plugin built twice (a.so, b.so): both register kernel (matmul, cpu, f32); b's init
 * fails with a message naming both files. */
#include <llmopt/llmopt.h>

static int nop_kernel(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                      const void *op_params) {
    (void)in;
    (void)n_in;
    (void)out;
    (void)op_params;
    return 0;
}

static const llmopt_kernel_desc k = {
    .struct_size = sizeof(llmopt_kernel_desc), .device = LLMOPT_DEVICE_CPU, .op = "matmul",
    .dtype = LLMOPT_DTYPE_F32, .fn = nop_kernel, .summary = "does nothing"};

static int dupkernel_init(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    return reg->add_kernel(reg, &k);
}

LLMOPT_PLUGIN(.id = PLUGIN_ID, .version = "0.1.0", .init = dupkernel_init);
