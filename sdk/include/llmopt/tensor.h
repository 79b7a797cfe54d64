/* llmopt SDK: tensors. A tensor is a dtype, a shape, a device and a refcounted storage owned
 * by the host. Tensors shared between models are immutable: a stage that changes weights makes a
 * new tensor (llmopt_host_api.tensor_new) and sets it on its output model (copy on write). */
#ifndef LLMOPT_TENSOR_H
#define LLMOPT_TENSOR_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Element types. Values are stable across ABI v1; new types are appended. */
typedef enum llmopt_dtype {
    LLMOPT_DTYPE_F32 = 0,
    LLMOPT_DTYPE_F16 = 1,
    LLMOPT_DTYPE_BF16 = 2,
    LLMOPT_DTYPE_I8 = 3,
    LLMOPT_DTYPE_U8 = 4,
    LLMOPT_DTYPE_I32 = 5,
    LLMOPT_DTYPE_I64 = 6,
    /* GGML block layouts, bit-exact with ggml's definitions (block of 32 weights of a row):
     * Q8_0: f16 d, 32 x int8 q; w = d*q.   Q4_0: f16 d, 16 bytes of nibbles; w = d*(q-8).
     * Q4_1: f16 d, f16 m, 16 bytes of nibbles; w = d*q + m. Nibble order as ggml: byte j holds
     * element j (low nibble) and element j+16 (high nibble). */
    LLMOPT_DTYPE_Q8_0 = 7,
    LLMOPT_DTYPE_Q4_0 = 8,
    LLMOPT_DTYPE_Q4_1 = 9,
    /* NF4, 4-bit NormalFloat (Dettmers et al. 2023, QLoRA, section 3; bitsandbytes' blockwise
     * layout without double quantization): a block of 64 weights of a row is an f32 absmax and
     * 32 bytes of codes; w = absmax * LLMOPT_NF4_CODES[q], q the nearest code to w / absmax.
     * Byte j holds element 2j in its high nibble and element 2j+1 in its low one (as
     * bitsandbytes packs them). 36 bytes per 64 weights: 4.5 bits per weight. */
    LLMOPT_DTYPE_NF4 = 10,
    LLMOPT_DTYPE_COUNT, /**< number of fixed types this SDK knows; not a type */
    LLMOPT_DTYPE_ANY = -1 /**< wildcard in kernel keys */
} llmopt_dtype;

/** The 16 NF4 values, ascending: the QLoRA paper's NormalFloat data type as bitsandbytes
 *  defines it (equal-area quantiles of N(0, 1) normalized to [-1, 1], with an exact zero). One
 *  definition for the host's quantizer and every kernel plugin. */
#define LLMOPT_NF4_BLOCK 64
#define LLMOPT_NF4_CODES                                                                        \
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,                  \
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,                 \
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,     \
     0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f}

/** Group-quantized types (GPTQ/AWQ/RTN style), any group size: each run of `group` consecutive
 *  weights of a row is one block holding an f16 scale, for asym also an f16 zero point, then the
 *  group's `bits`-bit codes packed little-endian (code i at bit i*bits of the block's code
 *  bytes). sym: w = scale * (q - 2^(bits-1)); asym: w = scale * (q - zero). bits: 2, 3, 4, 8;
 *  group * bits must be a multiple of 8. int8 per output channel is GQ(8, row length, 0).
 *  The traits (block size, bytes) of these dtypes come from llmopt_host_api.dtype_traits. */
#define LLMOPT_DTYPE_GQ_FLAG 0x40000000
#define LLMOPT_DTYPE_GQ(bits, group, asym) \
    (LLMOPT_DTYPE_GQ_FLAG | ((bits) << 24) | ((asym) << 23) | (group))
#define LLMOPT_DTYPE_IS_GQ(dt) (((dt) & LLMOPT_DTYPE_GQ_FLAG) != 0 && (dt) > 0)
#define LLMOPT_DTYPE_GQ_BITS(dt) (((dt) >> 24) & 0x3f)
#define LLMOPT_DTYPE_GQ_ASYM(dt) (((dt) >> 23) & 1)
#define LLMOPT_DTYPE_GQ_GROUP(dt) ((dt) & 0x7fffff)
/** A kernel key only (no tensor has it): GQ(bits, any group, asym), for a kernel that runs every
 *  group size. The registry looks up an exact key first, then this one, then LLMOPT_DTYPE_ANY. */
#define LLMOPT_DTYPE_GQ_ANY_GROUP(bits, asym) LLMOPT_DTYPE_GQ(bits, 0, asym)

/** Where a tensor's bytes live. Values are stable across ABI v1; new devices are appended.
 *  Memory of every device but the CPU belongs to the plugin that registered llmopt_device_ops
 *  for it (device.h); its data pointers are not host addresses. */
typedef enum llmopt_device {
    LLMOPT_DEVICE_CPU = 0,
    LLMOPT_DEVICE_CUDA = 1,
    /** Reserved for test plugins: a device whose memory is host memory behind the plugin's own
     *  allocator, so the host's device data path runs without hardware. No shipped plugin
     *  registers it. */
    LLMOPT_DEVICE_TEST = 2,
    LLMOPT_DEVICE_COUNT /**< number of device ids this SDK knows; not a device */
} llmopt_device;

/** Per-dtype facts: one table, as ggml's type traits, instead of switches in every file.
 *  A block of `block_size` elements takes `type_size` bytes (1 element for plain types). */
typedef struct llmopt_dtype_traits {
    uint32_t struct_size;
    const char *name;     /**< "f32", "f16", ...: the spelling used in configs and reports */
    int64_t block_size;   /**< elements per block */
    size_t type_size;     /**< bytes per block */
    int is_quantized;     /**< 1 for block-quantized types */
} llmopt_dtype_traits;
LLMOPT_PIN(llmopt_dtype_traits, name, 8);
LLMOPT_PIN(llmopt_dtype_traits, block_size, 16);
LLMOPT_PIN(llmopt_dtype_traits, type_size, 24);
LLMOPT_PIN(llmopt_dtype_traits, is_quantized, 32);

/** Most dimensions a tensor has. */
#define LLMOPT_MAX_DIMS 4

/** A tensor. Created, referenced and released only through the host API table.
 *  shape is row-major as in Hugging Face checkpoints: shape[ndim-1] is contiguous. */
typedef struct llmopt_tensor {
    uint32_t struct_size;
    int32_t dtype;                  /**< llmopt_dtype */
    int32_t device;                 /**< llmopt_device */
    int32_t ndim;                   /**< 0..LLMOPT_MAX_DIMS */
    int64_t shape[LLMOPT_MAX_DIMS]; /**< unused trailing entries are 1 */
    void *data;                     /**< nbytes of element data on `device` (a device address
                                         off the CPU: never dereference it on the host) */
    size_t nbytes;
    void *host_private;             /**< the host's bookkeeping; never touch */
} llmopt_tensor;
LLMOPT_PIN(llmopt_tensor, dtype, 4);
LLMOPT_PIN(llmopt_tensor, device, 8);
LLMOPT_PIN(llmopt_tensor, ndim, 12);
LLMOPT_PIN(llmopt_tensor, shape, 16);
LLMOPT_PIN(llmopt_tensor, data, 48);
LLMOPT_PIN(llmopt_tensor, nbytes, 56);
LLMOPT_PIN(llmopt_tensor, host_private, 64);

#ifdef __cplusplus
}
#endif
#endif
