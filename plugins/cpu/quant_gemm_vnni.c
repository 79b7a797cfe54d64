/* Prefill with block-quantized weights in integers: out[M, N] (+)= x[M, K] · W[N, K]^T (+ bias)
 * with x quantized per 32 as decode does it (ggml's Q8_0 rule, cpu_q_quantize_x), so that a
 * block b of row m against row n of W is
 *     s[n,b] * dx[m,b] * sum_j u[n,32b+j] * xq[m,32b+j]  +  z[n,b] * dx[m,b] * xsum[m,b]
 * for codes u with w = s*u + z (cpu_q_unpack_row's form). The integer sums run on AVX-512 VNNI
 * dpbusd: 64 u8 x s8 products a vector a cycle against 16 f32 FMAs, which is why a quantized model
 * can prefill faster than f32 rather than only dequantize into the f32 sgemm.
 *
 * Layout: panels of QG_NR = 32 rows of W, each unpacked once per call into dpbusd's operand form:
 * per block b and group of 4 codes g, 32 rows x 4 bytes (two vectors), with s and z of the block
 * as 32 floats each. A micro-kernel multiplies QG_MR rows of x with one panel over QG_KC weights
 * at a time (the panel's slice then sits in L1 across the rows of x), 2 x QG_MR int32 vectors
 * summing a block and 2 x QG_MR f32 vectors the outputs. Panels are split over the host's
 * threads; x is quantized on them first. */
#include "cpu.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define QG_NR 32  /* rows of W in a panel: two 16-lane vectors */
#define QG_MR 4   /* rows of x in a micro-kernel */
#define QG_KC 512 /* weights of a row per pass over the rows of x (16 blocks; 16 KB of panel) */
#define QG_BLK_BYTES (QG_NR * CPU_QK) /* one block of a panel */

typedef struct qg_job {
    const cpu_qgemm *g;
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

/* Rows [n0, n0 + rows) of W into a panel: codes[b][g][r][4], s[b][r], z[b][r]; rows past the
 * end are zero (they add nothing and are not stored). */
static void qg_pack(const cpu_qgemm *g, int64_t n0, int rows, int64_t nb, uint8_t *codes, float *s, float *z,
                    uint8_t *u, float *us, float *uz) {
    if (rows < QG_NR) {
        memset(codes, 0, (size_t)nb * QG_BLK_BYTES);
        memset(s, 0, (size_t)nb * QG_NR * sizeof(float));
        memset(z, 0, (size_t)nb * QG_NR * sizeof(float));
    }
    for (int r = 0; r < rows; r++) {
        cpu_q_unpack_row(g->wt, g->w + (size_t)(n0 + r) * g->row_bytes, g->K, u, us, uz);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *dst = codes + b * QG_BLK_BYTES + r * 4;
            const uint8_t *src = u + b * CPU_QK;
            for (int k4 = 0; k4 < CPU_QK / 4; k4++) memcpy(dst + k4 * QG_NR * 4, src + k4 * 4, 4);
            s[b * QG_NR + r] = us[b];
            z[b * QG_NR + r] = uz[b];
        }
    }
}

#define QG_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#define QG_INLINE QG_VNNI static inline __attribute__((always_inline))

/* R rows of x (R <= QG_MR) against one panel over blocks [b0, b1): acc (2 vectors a row) starts
 * from out (first = 0: zero, or out when accumulating) and is written back to out's first
 * `cols` columns; last adds the bias. IZ: the format's zero is the integer j->zi (the sums start
 * from xoff), else the float z of each row and block adds z * dx * xsum. */
QG_INLINE void qg_kernel(const int R, const int IZ, const qg_job *j, int64_t m0, int64_t n0, int cols, const uint8_t *codes,
                         const float *s, const float *z, int64_t b0, int64_t b1, int first, int last) {
    const cpu_qgemm *g = j->g;
    const int64_t K = g->K, nb = j->nb, N = g->N;
    const __mmask16 k0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    const __mmask16 k1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    __m512 acc[QG_MR][2];
    for (int r = 0; r < R; r++) {
        float *o = g->out + (m0 + r) * N + n0;
        if (first && !g->accumulate) {
            acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        } else {
            acc[r][0] = _mm512_maskz_loadu_ps(k0, o);
            acc[r][1] = _mm512_maskz_loadu_ps(k1, o + 16);
        }
    }
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *cb = codes + b * QG_BLK_BYTES;
        __m512i ia[QG_MR][2];
        for (int r = 0; r < R; r++)
            ia[r][0] = ia[r][1] = IZ ? _mm512_set1_epi32(j->xoff[(m0 + r) * nb + b]) : _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int k4 = 0; k4 < CPU_QK / 4; k4++) {
            const __m512i w0 = _mm512_load_si512((const void *)(cb + k4 * QG_NR * 4));
            const __m512i w1 = _mm512_load_si512((const void *)(cb + k4 * QG_NR * 4 + 64));
            for (int r = 0; r < R; r++) {
                int32_t x4;
                memcpy(&x4, j->xq + (m0 + r) * K + b * CPU_QK + k4 * 4, 4);
                const __m512i xb = _mm512_set1_epi32(x4);
                ia[r][0] = _mm512_dpbusd_epi32(ia[r][0], w0, xb);
                ia[r][1] = _mm512_dpbusd_epi32(ia[r][1], w1, xb);
            }
        }
        const __m512 s0 = _mm512_load_ps(s + b * QG_NR), s1 = _mm512_load_ps(s + b * QG_NR + 16);
        for (int r = 0; r < R; r++) {
            const __m512 d = _mm512_set1_ps(j->dx[(m0 + r) * nb + b]);
            acc[r][0] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia[r][0]), s0), d, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia[r][1]), s1), d, acc[r][1]);
        }
        if (!IZ) {
            const __m512 z0 = _mm512_load_ps(z + b * QG_NR), z1 = _mm512_load_ps(z + b * QG_NR + 16);
            for (int r = 0; r < R; r++) {
                const __m512 e = _mm512_set1_ps(j->dxs[(m0 + r) * nb + b]);
                acc[r][0] = _mm512_fmadd_ps(z0, e, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(z1, e, acc[r][1]);
            }
        }
    }
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (last && g->bias) {
        bias0 = _mm512_maskz_loadu_ps(k0, g->bias + n0);
        bias1 = _mm512_maskz_loadu_ps(k1, g->bias + n0 + 16);
    }
    for (int r = 0; r < R; r++) {
        float *o = g->out + (m0 + r) * N + n0;
        _mm512_mask_storeu_ps(o, k0, _mm512_add_ps(acc[r][0], bias0));
        _mm512_mask_storeu_ps(o + 16, k1, _mm512_add_ps(acc[r][1], bias1));
    }
}

QG_VNNI static void qg_panel(const qg_job *j, int64_t n0, int cols, const uint8_t *codes, const float *s,
                             const float *z) {
    const int64_t M = j->g->M, nb = j->nb, kcb = QG_KC / CPU_QK;
    for (int64_t b0 = 0; b0 < nb; b0 += kcb) {
        const int64_t b1 = b0 + kcb < nb ? b0 + kcb : nb;
        const int first = b0 == 0, last = b1 == nb;
        for (int64_t m = 0; m < M; m += QG_MR) {
#define QG_K(R, IZ) qg_kernel(R, IZ, j, m, n0, cols, codes, s, z, b0, b1, first, last)
            const int64_t r = M - m < QG_MR ? M - m : QG_MR;
            if (j->zi) {
                if (r == 4) QG_K(4, 1); else if (r == 3) QG_K(3, 1); else if (r == 2) QG_K(2, 1); else QG_K(1, 1);
            } else {
                if (r == 4) QG_K(4, 0); else if (r == 3) QG_K(3, 0); else if (r == 2) QG_K(2, 0); else QG_K(1, 0);
            }
#undef QG_K
        }
    }
}

static void qg_panels(void *arg, int64_t p0, int64_t p1) {
    qg_job *j = arg;
    const cpu_qgemm *g = j->g;
    const int64_t nb = j->nb;
    /* the panel (64-byte aligned for the vector loads), then one unpacked row */
    const size_t cb = (size_t)nb * QG_BLK_BYTES, sb = (size_t)nb * QG_NR * sizeof(float);
    const size_t bytes = cb + 2 * sb + (size_t)g->K + (size_t)nb * 2 * sizeof(float);
    uint8_t *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63); /* C11: a multiple of the alignment */
    if (!buf) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *s = (float *)(void *)(buf + cb), *z = s + nb * QG_NR;
    uint8_t *u = (uint8_t *)(z + nb * QG_NR);
    float *us = (float *)(void *)(u + g->K), *uz = us + nb; /* K % 32 == 0: aligned */
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n0 = p * QG_NR;
        const int cols = g->N - n0 < QG_NR ? (int)(g->N - n0) : QG_NR;
        qg_pack(g, n0, cols, nb, buf, s, z, u, us, uz);
        qg_panel(j, n0, cols, buf, s, z);
    }
    free(buf);
}

int cpu_qgemm_vnni(const cpu_qgemm *g) {
    const int64_t nb = g->K / CPU_QK;
    qg_job j = {.g = g, .nb = nb, .zi = qg_int_zero(g->wt)};
    atomic_init(&j.failed, 0);
    j.xq = malloc((size_t)(g->M * g->K) + (size_t)(g->M * nb) * (2 * sizeof(float) + 2 * sizeof(int32_t)));
    if (!j.xq) return LLMOPT_ENOMEM;
    j.dx = (float *)(void *)(j.xq + g->M * g->K); /* M*K is a multiple of 32: aligned */
    j.dxs = j.dx + g->M * nb;
    j.xsum = (int32_t *)(j.dxs + g->M * nb);
    j.xoff = j.xsum + g->M * nb;
    cpu_api->parallel_for(g->M, (8192 + g->K - 1) / g->K, qg_quantize_rows, &j);
    cpu_api->parallel_for((g->N + QG_NR - 1) / QG_NR, 1, qg_panels, &j);
    free(j.xq);
    return atomic_load(&j.failed) ? LLMOPT_ENOMEM : 0;
}

#else
int cpu_qgemm_vnni(const cpu_qgemm *g) {
    (void)g;
    return LLMOPT_EUNSUPPORTED;
}
#endif
