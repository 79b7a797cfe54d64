/* The integer prefill GEMM's driver, shared by its SIMD kernels (quant_gemm.c; the kernels in
 * quant_gemm_vnni.c and quant_gemm_avx2.c): out[M, N] (+)= x[M, K] · W[N, K]^T (+ bias) with x
 * quantized per 32 as decode does it (ggml's Q8_0 rule, cpu_q_quantize_x), so that a block b of
 * row m against row n of W is
 *     s[n,b] * dx[m,b] * sum_j u[n,32b+j] * xq[m,32b+j]  +  z[n,b] * dx[m,b] * xsum[m,b]
 * for codes u with w = s*u + z (cpu_q_unpack_row's form).
 *
 * Layout: panels of `nr` rows of W, each unpacked once per call into the operand form of the
 * kernel's integer dot: per block b and group of 4 codes, nr rows x 4 bytes (one int32 lane a
 * row: dpbusd's operand, and maddubs' in pairs), with s and z of the block as nr floats each.
 * The kernel multiplies rows of x with one panel over QG_KC weights at a time (the panel's slice
 * then sits in L1 across the rows of x). Panels are split over the host's threads; x is quantized
 * on them first. */
#ifndef LLMOPT_CPU_QUANT_GEMM_H
#define LLMOPT_CPU_QUANT_GEMM_H

#include "cpu.h"

#include <stdatomic.h>

#define QG_KC 512 /* weights of a row per pass over the rows of x (16 blocks) */

typedef struct qg_layout qg_layout;

typedef struct qg_job {
    const cpu_qgemm *g;
    const qg_layout *L;
    int64_t nb; /* blocks of 32 in a row */
    /* x quantized per 32: codes, scale, scale times the codes' sum */
    int8_t *xq;
    float *dx, *dxs;
    int32_t *xsum;
    /* the formats whose zero is an integer code zi (Q8_0's 128 after the sign flip, Q4_0's 8,
     * symmetric GQ's 2^(bits-1)): -zi * xsum, where a block's int32 sums start, so z drops out */
    int zi;
    int32_t *xoff;
    atomic_int failed;
} qg_job;

/* One panel (rows [n0, n0 + cols) of W, cols <= nr) against every row of x: out written. */
typedef void (*qg_panel_fn)(const qg_job *j, int64_t n0, int cols, const uint8_t *codes, const float *s,
                            const float *z);

struct qg_layout {
    int nr; /* rows of W in a panel (a multiple of 8) */
    qg_panel_fn panel;
};

/* Quantizes x, packs each panel of W, runs the layout's kernel on it: 0 or LLMOPT_ENOMEM. */
int cpu_qgemm_run(const cpu_qgemm *g, const qg_layout *L);

#endif
