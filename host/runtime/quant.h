/* Reference quantization of weight rows and tensors: ggml's Q8_0, Q4_0, Q4_1 (bit-exact with
 * ggml's quantize_row_*_ref / dequantize_row_*) and the group-quantized LLMOPT_DTYPE_GQ types
 * (rules below). The slow, obvious specification that quantize stages and the kernels' tests use.
 *
 * GQ rules (b = bits, group of g weights w, codes q in [0, 2^b - 1], f16 = round to nearest even):
 *   sym:  scale = f16up(amax / (2^(b-1) - 1));        q = clamp(roundf(w / scale) + 2^(b-1))
 *   asym: lo = min(min w, 0), hi = max(max w, 0)        (the GPTQ rule: 0 is always in range)
 *         scale = f16up((hi - lo) / (2^b - 1)); zero = roundf(-lo / scale) (an integer, kept as f16)
 *         q = clamp(roundf(w / scale) + zero)
 *   f16up rounds the f32 ratio *up* to an f16 value, so no code clamps below the real range and
 *   every weight dequantizes within scale/2: |w - scale * (q - offset)| <= scale / 2. A group of
 *   zeros has scale 0 (and zero 0); roundf rounds halves away from zero, as ggml's Q8_0.
 *
 * NF4 (QLoRA): per block of 64, absmax = max |w| in f32; q = the NF4 value nearest w / absmax
 * (f32 division; a tie takes the lower code); w' = absmax * NF4[q]. No double quantization. */
#ifndef HOST_RUNTIME_QUANT_H
#define HOST_RUNTIME_QUANT_H

#include <stdint.h>
#include <llmopt/llmopt.h>
#include "../util/error.h"

/* IEEE binary16 <-> f32 (round to nearest even, subnormals, inf and NaN kept), as ggml's
 * GGML_FP32_TO_FP16. */
float q_f16_to_f32(uint16_t h);
uint16_t q_f32_to_f16(float f);

/* NF4 (LLMOPT_DTYPE_NF4): the value of a code (0..15), and the code nearest a normalized weight
 * x = w / absmax (ties to the lower code). */
float q_nf4_value(unsigned code);
unsigned q_nf4_nearest(float x);

/* One row of n f32 values into n / block_size blocks of a quantized dtype, and back.
 * LLMOPT_EINVAL when dtype is not block-quantized or n is not a whole number of blocks. */
int q_quantize_row(int dtype, const float *x, void *blocks, int64_t n);
int q_dequantize_row(int dtype, const void *blocks, float *y, int64_t n);

/* A 2-D f32/f16/bf16 weight [rows, cols] quantized row by row into a new tensor (*out, one
 * reference, owned by the caller). The row length must be a multiple of the block size; the
 * error names both. */
int q_quantize_tensor(const llmopt_tensor *w, int dtype, llmopt_tensor **out, llmopt_error *err);
/* A 2-D block-quantized tensor back to a new f32 tensor of the same shape. */
int q_dequantize_tensor(const llmopt_tensor *w, llmopt_tensor **out, llmopt_error *err);

#endif
