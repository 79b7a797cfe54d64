/* The integer prefill GEMM on AVX-512 VNNI (the driver and layout: quant_gemm.h): dpbusd does
 * 64 u8 x s8 products a vector a cycle against 16 f32 FMAs, which is why a quantized model can
 * prefill faster than f32 rather than only dequantize into the f32 sgemm. Panels of QG_NR = 32
 * rows of W (two 16-lane vectors); a micro-kernel multiplies QG_MR rows of x with one panel over
 * QG_KC weights at a time, 2 x QG_MR int32 vectors summing a block and 2 x QG_MR f32 vectors the
 * outputs. */
#include "quant_gemm.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define QG_NR 32  /* rows of W in a panel: two 16-lane vectors */
#define QG_MR 4   /* rows of x in a micro-kernel */
#define QG_BLK_BYTES (QG_NR * CPU_QK) /* one block of a panel */

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

static const qg_layout vnni_layout = {.nr = QG_NR, .panel = qg_panel};

int cpu_qgemm_vnni(const cpu_qgemm *g) { return cpu_qgemm_run(g, &vnni_layout); }

#else
int cpu_qgemm_vnni(const cpu_qgemm *g) {
    (void)g;
    return LLMOPT_EUNSUPPORTED;
}
#endif
