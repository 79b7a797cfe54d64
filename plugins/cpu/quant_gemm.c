/* The integer prefill GEMM's driver (quant_gemm.h): x quantized per 32 on the host's threads,
 * then panels of W unpacked into the kernel's operand layout and multiplied, panels split over
 * the threads. The kernels: quant_gemm_vnni.c (AVX-512 VNNI), quant_gemm_avx2.c (AVX2). */
#include "quant_gemm.h"

#include <stdlib.h>
#include <string.h>

/* The integer zero code of a format, or 0 when its zero is a float (Q4_1, asymmetric GQ). */
static int qg_int_zero(int dtype) {
    if (dtype == LLMOPT_DTYPE_Q8_0) return 128;
    if (dtype == LLMOPT_DTYPE_Q4_0) return 8;
    if (LLMOPT_DTYPE_IS_GQ(dtype) && !LLMOPT_DTYPE_GQ_ASYM(dtype)) return 1 << (LLMOPT_DTYPE_GQ_BITS(dtype) - 1);
    return 0;
}

static void qg_quantize_rows(void *arg, int64_t m0, int64_t m1) {
    qg_job *j = arg;
    const int64_t K = j->g->K, nb = j->nb;
    for (int64_t m = m0; m < m1; m++) {
        cpu_qisa->quantize_x(j->g->x + m * K, K, j->xq + m * K, j->dx + m * nb, j->xsum + m * nb);
        for (int64_t b = m * nb; b < (m + 1) * nb; b++) {
            j->dxs[b] = j->dx[b] * (float)j->xsum[b];
            j->xoff[b] = -j->zi * j->xsum[b];
        }
    }
}

/* Rows [n0, n0 + rows) of W into a panel: codes[b][k4][r][4], s[b][r], z[b][r]; rows
 * past the end are zero (they add nothing and are not stored). */
static void qg_pack(const qg_job *j, int64_t n0, int rows, uint8_t *codes, float *s, float *z, uint8_t *u, float *us,
                    float *uz) {
    const cpu_qgemm *g = j->g;
    const int nr = j->L->nr;
    const int64_t nb = j->nb;
    const size_t blk = (size_t)nr * CPU_QK;
    if (rows < nr) {
        memset(codes, 0, (size_t)nb * blk);
        memset(s, 0, (size_t)(nb * nr) * sizeof(float));
        memset(z, 0, (size_t)(nb * nr) * sizeof(float));
    }
    for (int r = 0; r < rows; r++) {
        cpu_q_unpack_row(g->wt, g->w + (size_t)(n0 + r) * g->row_bytes, g->K, u, us, uz);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *dst = codes + b * blk + r * 4;
            const uint8_t *src = u + b * CPU_QK;
            for (int k4 = 0; k4 < CPU_QK / 4; k4++) memcpy(dst + k4 * nr * 4, src + k4 * 4, 4);
            s[b * nr + r] = us[b];
            z[b * nr + r] = uz[b];
        }
    }
}

static void qg_panels(void *arg, int64_t p0, int64_t p1) {
    qg_job *j = arg;
    const cpu_qgemm *g = j->g;
    const int64_t nb = j->nb, nr = j->L->nr;
    /* the panel (64-byte aligned for the vector loads), then one unpacked row */
    const size_t cb = (size_t)(nb * nr) * CPU_QK, sb = (size_t)(nb * nr) * sizeof(float);
    const size_t bytes = cb + 2 * sb + (size_t)g->K + (size_t)nb * 2 * sizeof(float);
    uint8_t *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63); /* C11: a multiple of the alignment */
    if (!buf) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *s = (float *)(void *)(buf + cb), *z = s + nb * nr;
    uint8_t *u = (uint8_t *)(z + nb * nr);
    float *us = (float *)(void *)(u + g->K), *uz = us + nb; /* K % 32 == 0: aligned */
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n0 = p * nr;
        const int cols = g->N - n0 < nr ? (int)(g->N - n0) : (int)nr;
        qg_pack(j, n0, cols, buf, s, z, u, us, uz);
        j->L->panel(j, n0, cols, buf, s, z);
    }
    free(buf);
}

int cpu_qgemm_run(const cpu_qgemm *g, const qg_layout *L) {
    const int64_t nb = g->K / CPU_QK;
    qg_job j = {.g = g, .L = L, .nb = nb, .zi = qg_int_zero(g->wt)};
    atomic_init(&j.failed, 0);
    j.xq = malloc((size_t)(g->M * g->K) + (size_t)(g->M * nb) * (2 * sizeof(float) + 2 * sizeof(int32_t)));
    if (!j.xq) return LLMOPT_ENOMEM;
    /* M*K is a multiple of 32: every array after the codes is aligned */
    j.dx = (float *)(void *)(j.xq + g->M * g->K);
    j.dxs = j.dx + g->M * nb;
    j.xsum = (int32_t *)(j.dxs + g->M * nb);
    j.xoff = j.xsum + g->M * nb;
    cpu_api->parallel_for(g->M, (8192 + g->K - 1) / g->K, qg_quantize_rows, &j);
    cpu_api->parallel_for((g->N + L->nr - 1) / L->nr, 1, qg_panels, &j);
    free(j.xq);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}
