/* llmopt SDK: device memory. A kernel plugin for an accelerator (CUDA, ...) registers one
 * llmopt_device_ops for its device id through llmopt_registrar.add_device; the host then
 * allocates tensors there, copies between host and device and frees through it, and calls the
 * plugin's kernels for that device with tensors whose data it allocated. CPU memory is the
 * host's own: no plugin registers LLMOPT_DEVICE_CPU. See docs/plugin-authoring.md. */
#ifndef LLMOPT_DEVICE_H
#define LLMOPT_DEVICE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A device's memory, as its plugin provides it. Every function gets `ctx` first and returns 0
 *  or a negative llmopt_status (LLMOPT_ENOMEM when the device is full).
 *
 *  Addresses. A device pointer is a byte address: the host passes `ptr + offset` inside an
 *  allocation to the copies and as tensor data (it slices KV caches and activations), as CUDA's
 *  cudaMalloc pointers allow. A backend whose memory is a handle (OpenCL cl_mem) maps it itself.
 *
 *  Ordering. Work the host issues from one thread on one device (copies, kernel calls) runs in
 *  issue order, as on one CUDA stream; it may be asynchronous:
 *  - copy_h2d: the host may reuse or free `src` as soon as the call returns (stage it, as
 *    cudaMemcpy from pageable memory does);
 *  - copy_d2h: `dst` holds the bytes when the call returns (it waits for earlier work);
 *  - copy_d2d and kernels may return before they are done; an error found later is returned by
 *    the next copy_d2h or synchronize;
 *  - free: the host calls it only when it issues no more work on that memory; work already
 *    queued on it must still complete (cudaFree waits; a pool must not reuse it early).
 *  Calls may come from several host threads at once (parallel pipeline branches); the plugin
 *  makes that safe (a lock, or a stream per thread).
 *
 *  Append-only: later minors add fields at the end; the host reads struct_size first. */
typedef struct llmopt_device_ops {
    uint32_t struct_size;  /**< sizeof(llmopt_device_ops) the plugin was built with */
    int32_t device;        /**< llmopt_device this plugin owns (never LLMOPT_DEVICE_CPU) */
    const char *name;      /**< one line for logs and errors: "cuda:0 NVIDIA H200" */
    void *ctx;             /**< the plugin's state, passed first to every call */
    /** bytes > 0; align a power of two (the host asks for 64 or more). *out gets memory that
     *  stays valid until free. Contents are undefined. */
    int (*alloc)(void *ctx, size_t bytes, size_t align, void **out);
    /** Releases memory from alloc; NULL is ignored. */
    void (*free)(void *ctx, void *ptr);
    /** bytes from host memory src to device memory dst. */
    int (*copy_h2d)(void *ctx, void *dst, const void *src, size_t bytes);
    /** bytes from device memory src to host memory dst; complete on return. */
    int (*copy_d2h)(void *ctx, void *dst, const void *src, size_t bytes);
    /** bytes between device memories of this device; the ranges do not overlap. */
    int (*copy_d2d)(void *ctx, void *dst, const void *src, size_t bytes);
    /** Waits until all issued work is done; returns the first error it had. */
    int (*synchronize)(void *ctx);
    /** Optional (NULL): free and total bytes of device memory (cudaMemGetInfo). */
    int (*memory_info)(void *ctx, size_t *free_bytes, size_t *total_bytes);
} llmopt_device_ops;
LLMOPT_PIN(llmopt_device_ops, device, 4);
LLMOPT_PIN(llmopt_device_ops, name, 8);
LLMOPT_PIN(llmopt_device_ops, ctx, 16);
LLMOPT_PIN(llmopt_device_ops, alloc, 24);
LLMOPT_PIN(llmopt_device_ops, free, 32);
LLMOPT_PIN(llmopt_device_ops, copy_h2d, 40);
LLMOPT_PIN(llmopt_device_ops, copy_d2h, 48);
LLMOPT_PIN(llmopt_device_ops, copy_d2d, 56);
LLMOPT_PIN(llmopt_device_ops, synchronize, 64);
LLMOPT_PIN(llmopt_device_ops, memory_info, 72);

#ifdef __cplusplus
}
#endif
#endif
