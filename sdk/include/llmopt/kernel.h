/* llmopt SDK: compute kernels. A kernel implements one op for one device and one primary dtype;
 * the runtime looks kernels up by that key (llmopt_host_api.kernel_find) and never knows which
 * plugin supplied them, so a CUDA plugin can stand in for the CPU one op by op. */
#ifndef LLMOPT_KERNEL_H
#define LLMOPT_KERNEL_H

#include "common.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The one calling convention of every kernel: inputs, one output (allocated by the caller on
 *  the kernel's device), and an op-specific parameter struct (see the op's documentation, NULL
 *  when the op takes none). Returns 0 or a negative llmopt_status. Off the CPU, tensors' data
 *  are addresses in memory from that device's llmopt_device_ops (device.h), often offsets into
 *  a larger allocation; the kernel may run asynchronously in issue order, as device.h says. */
typedef int (*llmopt_kernel_fn)(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                                const void *op_params);

/** A kernel, registered by a plugin's init through llmopt_registrar.add_kernel.
 *  The key (op, device, dtype) must be unique among all loaded plugins. */
typedef struct llmopt_kernel_desc {
    uint32_t struct_size; /**< sizeof(llmopt_kernel_desc) the plugin was built with */
    int32_t device;       /**< llmopt_device */
    const char *op;       /**< op name: "matmul", "rmsnorm", ... */
    int32_t dtype;        /**< primary (weight) dtype handled, or LLMOPT_DTYPE_ANY */
    llmopt_kernel_fn fn;
    const char *summary;  /**< one line: what path this is ("OpenBLAS sgemm", "AVX2 int8 dot") */
} llmopt_kernel_desc;
LLMOPT_PIN(llmopt_kernel_desc, device, 4);
LLMOPT_PIN(llmopt_kernel_desc, op, 8);
LLMOPT_PIN(llmopt_kernel_desc, dtype, 16);
LLMOPT_PIN(llmopt_kernel_desc, fn, 24);
LLMOPT_PIN(llmopt_kernel_desc, summary, 32);

#ifdef __cplusplus
}
#endif
#endif
