/* The CPU plugin's NF4 kernels (nf4.c) and the dx-only backward through frozen quantized weights
 * (quant_backward.c): their argument checks, row decoding, and registration. */
#ifndef LLMOPT_PLUGIN_CPU_NF4_H
#define LLMOPT_PLUGIN_CPU_NF4_H

#include "cpu.h"

/* K weights of one NF4 row (K a multiple of 64) to f32: absmax * NF4[code] per element. */
void cpu_nf4_row_to_f32(const uint8_t *row, int64_t K, float *dst);

/* Argument-check helpers of nf4.c and quant_backward.c: elements of t; a CPU tensor of dtype
 * (f32, i32: 4 bytes an element) with 1..4 dims >= 1 whose storage holds every element; whether
 * two byte ranges intersect. */
int64_t cpu_qt_numel(const llmopt_tensor *t);
int cpu_qt_plain_ok(const llmopt_tensor *t, int dtype);
int cpu_qt_overlaps(const void *a, size_t na, const void *b, size_t nb);

/* A 2-D CPU weight [R, C] of a block-quantized dtype (any that has traits: NF4, ggml, GQ): C whole
 * blocks and storage for every row. 1 and *row_bytes, *bytes set when it is one. */
int cpu_qweight_ok(const llmopt_tensor *w, size_t *row_bytes, size_t *bytes);

/* Columns [k0, k0 + n) of row `row` of a quantized W with K columns to f32; k0 and n whole
 * blocks of the dtype. scratch: cpu_q_scratch_bytes(n) bytes. */
void cpu_qrow_range_to_f32(int dtype, const uint8_t *row, int64_t k0, int64_t n, float *dst, void *scratch);

int cpu_nf4_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_nf4_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_nf4_matmul(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_nf4_embedding(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

/* matmul_backward with a frozen quantized W [N,K] (layout OUT_IN): dx (+)= dy · W and, when
 * asked, db += colsum(dy); a dW is refused (LLMOPT_EINVAL): quantized weights are not trained. */
int cpu_qmatmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_qmatmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

/* Registers NF4 matmul, embedding and matmul_backward (the reference loops when use_ref). */
int cpu_register_nf4(llmopt_registrar *reg, int use_ref);

#endif
