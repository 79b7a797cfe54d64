/* ggml's k-quant super-blocks of 256 weights (Q4_K, Q5_K, Q6_K) to f32, bit-exact with
 * ggml-quants.c's dequantize_row_q4_K / _q5_K / _q6_K (and the gguf package's numpy port). The
 * GGUF loader imports such tensors as f32 with them: llmopt has no k-quant dtype to keep them in. */
#ifndef HOST_RUNTIME_KQUANT_H
#define HOST_RUNTIME_KQUANT_H

#include <stddef.h>
#include <stdint.h>

#define KQ_QK_K 256

/* Bytes of one super-block of ggml type `type` (12 Q4_K, 13 Q5_K, 14 Q6_K), 0 for any other. */
size_t kq_block_bytes(uint32_t ggml_type);
/* n values (a multiple of 256) from n / 256 blocks; -1 for a type kq_block_bytes does not know
 * or a partial block. */
int kq_dequantize(uint32_t ggml_type, const void *blocks, float *y, int64_t n);

#endif
