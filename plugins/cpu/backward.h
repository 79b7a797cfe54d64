/* The CPU plugin's training kernels: the *_backward ops and adamw of llmopt/kernel_ops.h.
 * Argument checks (check.c, shared with the forward checks), the reference loops
 * (backward_ref.c, compiled into tests/unit/test_backward_kernels.c) and the threaded fast
 * kernels (backward_fast.c: OpenBLAS sgemm for matmul_backward, rows / element ranges on the
 * host's threads elsewhere), and their registration. */
#ifndef LLMOPT_PLUGIN_CPU_BACKWARD_H
#define LLMOPT_PLUGIN_CPU_BACKWARD_H

#include "cpu.h"

/* ---- check.c ---- */
/* matmul_backward: d as for matmul (accumulate = accumulate_dx); *want_dx is 0 when
 * out->data is NULL. dw needs an f32 W (dx only for f16/bf16 weights). */
int cpu_check_matmul_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                              const void *params, cpu_mm_dims *d, int *want_dx);
int cpu_check_norm_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                            const void *params, int with_beta, cpu_rows *d);
/* attention_backward: d->S == d->T. */
int cpu_check_attention_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                 const void *params, cpu_attn_dims *d);
int cpu_check_swiglu_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                              const void *params, int64_t *n);
/* embedding_backward: d->rows = T ids, d->cols = C; *V the table's rows. */
int cpu_check_embedding_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                 cpu_rows *d, int64_t *V);
int cpu_check_cross_entropy_backward(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                     const void *params, cpu_rows *d);
/* cross_entropy_fused: as cross_entropy_backward; out may be in[0] itself, losses [rows] f32. */
int cpu_check_cross_entropy_fused(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out,
                                  const void *params, cpu_rows *d);
int cpu_check_adamw(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, const void *params,
                    int64_t *n);
int cpu_check_adamw_8bit(const llmopt_tensor *const *in, int n_in, const llmopt_tensor *out, const void *params,
                         int64_t *n);

/* adamw8.c: one adamw_8bit call, checked, as blocks of LLMOPT_ADAMW8_BLOCK values that
 * cpu_adamw8_blocks updates (fast: each byte found through a table, else by binary search; the
 * same bytes) */
typedef struct cpu_adamw8_maps {
    float code[2][256]; /* [0] signed (m), [1] unsigned (v) */
    float mid[2][255];  /* (code[k] + code[k+1]) / 2 */
} cpu_adamw8_maps;
typedef struct cpu_adamw8_job {
    const float *grad;
    float *param;
    uint8_t *m, *v;
    float *m_absmax, *v_absmax;
    int64_t n, blocks;
    float b1, b2, eps, decay, step_size, bc2_sqrt, grad_scale;
    const cpu_adamw8_maps *maps;
    int fast;  /* 1: the two functions below, else adamw8.c's loops and a binary search */
    void (*adamw)(const cpu_adamw_k *k, const float *grad, float *param, float *m, float *v, int64_t n);
    void (*codes)(const int32_t *base, const float *thr, uint32_t cells, const float *x, uint8_t *out, int64_t n);
    void (*block)(const cpu_adamw_k *k, const cpu_a8_tables *t, const float *grad, float *param, uint8_t *mc,
                  uint8_t *vc, float *m_absmax, float *v_absmax, int64_t len); /* NULL: the two above */
    cpu_adamw8_maps local;
} cpu_adamw8_job;
int cpu_adamw8_job_init(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p, int fast,
                        cpu_adamw8_job *j);
void cpu_adamw8_blocks(void *arg, int64_t b0, int64_t b1);

/* ---- backward_ref.c: plain loops, one thread ---- */
int cpu_ref_matmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_layernorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_rmsnorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_rope_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_attention_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_gelu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_gelu_erf_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_silu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_swiglu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_embedding_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_cross_entropy_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_cross_entropy_fused(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_ref_adamw(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
/* adamw8.c: adamw_8bit, one thread and a binary search per value */
int cpu_ref_adamw_8bit(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

/* The local derivatives the reference and the fast kernels share (one definition of the math). */
float cpu_gelu_grad(float x);      /* d/dx of the tanh-approximated gelu */
float cpu_gelu_erf_grad(float x);  /* d/dx of 0.5 x (1 + erf(x / sqrt 2)) */
float cpu_silu_grad(float x);      /* d/dx of x sigmoid(x) */

/* ---- backward_fast.c ---- */
int cpu_matmul_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_layernorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_rmsnorm_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_rope_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_attention_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_gelu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_gelu_erf_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_silu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_swiglu_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_embedding_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_cross_entropy_backward(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_cross_entropy_fused(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
int cpu_adamw(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);
/* adamw_8bit: cpu_adamw8_blocks on host threads */
int cpu_adamw_8bit(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out, const void *p);

/* Registers every backward op and adamw for LLMOPT_DEVICE_CPU (f32; matmul_backward also for
 * f16/bf16 weights, dx only): the reference loops when use_ref, else the fast kernels. */
int cpu_register_backward(llmopt_registrar *reg, int use_ref);

#endif
