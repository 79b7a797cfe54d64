/* The integer prefill GEMM on AVX2 (the driver and layout: quant_gemm.h), for CPUs without
 * AVX-512 VNNI, for codes <= 15 (4-, 3- and 2-bit formats). AVX2 has no u8 x s8 dot into int32
 * in one instruction: _mm256_maddubs_epi16 gives 16 int16 pair sums of 32 products
 * (|pair| <= 2 * 15 * 127 = 3810), the 8 steps of a block add up in int16 (<= 30480, no
 * overflow) and _mm256_madd_epi16 with ones widens them to int32 once a block. That is 32
 * multiply-adds an instruction against an f32 FMA's 8 (on a Zen 3 EPYC, one core: this loop alone
 * 85 G/s in a scratch test, the whole call with x quantized and W packed 63-70 G/s, against
 * OpenBLAS sgemm's 45 on the GPT-2 124M shapes). 8-bit codes (Q8_0, GQ 8-bit)
 * would saturate maddubs' pairs (2 * 255 * 127); their int16 madd does 16 an instruction on
 * the same port, no faster than the f32 sgemm, so they keep dequantized tiles + sgemm.
 *
 * Panels of QA_NR = 16 rows of W (two 8-lane vectors); the micro-kernel multiplies one row of x
 * with one panel over QG_KC weights (2 int16 and 2 f32 accumulators; with 2 or 4 rows of x a
 * scratch test of the loop ran at 0.9x and 0.65x). */
#include "quant_gemm.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define QA_NR 16 /* rows of W in a panel: two 8-lane vectors */

#define QA_AVX2 __attribute__((target("avx2,fma")))
#define QA_INLINE QA_AVX2 static inline __attribute__((always_inline))

/* Row m of x against one panel over blocks [b0, b1): the sums start from out (first = 0: zero,
 * or out when accumulating) and are written back to out's first `cols` columns; last adds the
 * bias. IZ: the format's zero is the integer j->zi (the block sums start from xoff), else the
 * float z of each row and block adds z * dx * xsum. */
QA_INLINE void qa_kernel(const int IZ, const int FULL, const qg_job *j, int64_t m, int64_t n0, __m256i k0, __m256i k1,
                         const uint8_t *codes, const float *s, const float *z, int64_t b0, int64_t b1, int first,
                         int last) {
    const cpu_qgemm *g = j->g;
    const int64_t nb = j->nb;
    const int8_t *xq = j->xq + m * g->K;
    const __m256i ones = _mm256_set1_epi16(1);
    float *o = g->out + m * g->N + n0;
    __m256 acc0, acc1;
    if (first && !g->accumulate) {
        acc0 = acc1 = _mm256_setzero_ps();
    } else if (FULL) {
        acc0 = _mm256_loadu_ps(o);
        acc1 = _mm256_loadu_ps(o + 8);
    } else {
        acc0 = _mm256_maskload_ps(o, k0);
        acc1 = _mm256_maskload_ps(o + 8, k1);
    }
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *cb = codes + b * (QA_NR * CPU_QK);
        __m256i ia0 = _mm256_setzero_si256(), ia1 = _mm256_setzero_si256();
        /* the empty asm keeps each step's sum in its register, in order: without it GCC turned the
         * 8 int16 adds into a tree, hoisted the loads and spilled the accumulators to the stack */
#define QA_STEP(k4)                                                                                                \
    do {                                                                                                           \
        int32_t x4;                                                                                                \
        memcpy(&x4, xq + b * CPU_QK + (k4) * 4, 4);                                                                \
        const __m256i xb = _mm256_set1_epi32(x4);                                                                  \
        const __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)(cb + (k4) * QA_NR * 4));              \
        const __m256i w1 = _mm256_load_si256((const __m256i *)(const void *)(cb + (k4) * QA_NR * 4 + 32));         \
        ia0 = _mm256_add_epi16(ia0, _mm256_maddubs_epi16(w0, xb));                                                 \
        ia1 = _mm256_add_epi16(ia1, _mm256_maddubs_epi16(w1, xb));                                                 \
        __asm__("" : "+x"(ia0), "+x"(ia1));                                                                        \
    } while (0)
        for (int k4 = 0; k4 < CPU_QK / 4; k4 += 4) {
            QA_STEP(k4);
            QA_STEP(k4 + 1);
            QA_STEP(k4 + 2);
            QA_STEP(k4 + 3);
        }
#undef QA_STEP
        ia0 = _mm256_madd_epi16(ia0, ones);
        ia1 = _mm256_madd_epi16(ia1, ones);
        if (IZ) {
            const __m256i off = _mm256_set1_epi32(j->xoff[m * nb + b]);
            ia0 = _mm256_add_epi32(ia0, off);
            ia1 = _mm256_add_epi32(ia1, off);
        }
        const __m256 d = _mm256_set1_ps(j->dx[m * nb + b]);
        acc0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ia0), _mm256_load_ps(s + b * QA_NR)), d, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ia1), _mm256_load_ps(s + b * QA_NR + 8)), d, acc1);
        if (!IZ) {
            const __m256 e = _mm256_set1_ps(j->dxs[m * nb + b]);
            acc0 = _mm256_fmadd_ps(_mm256_load_ps(z + b * QA_NR), e, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_load_ps(z + b * QA_NR + 8), e, acc1);
        }
    }
    if (last && g->bias) {
        acc0 = _mm256_add_ps(acc0, FULL ? _mm256_loadu_ps(g->bias + n0) : _mm256_maskload_ps(g->bias + n0, k0));
        acc1 = _mm256_add_ps(acc1, FULL ? _mm256_loadu_ps(g->bias + n0 + 8) : _mm256_maskload_ps(g->bias + n0 + 8, k1));
    }
    if (FULL) {
        _mm256_storeu_ps(o, acc0);
        _mm256_storeu_ps(o + 8, acc1);
    } else { /* a masked store is microcoded on AMD's cores: only the last panel takes it */
        _mm256_maskstore_ps(o, k0, acc0);
        _mm256_maskstore_ps(o + 8, k1, acc1);
    }
}

QA_AVX2 static void qa_panel(const qg_job *j, int64_t n0, int cols, const uint8_t *codes, const float *s,
                             const float *z) {
    const int64_t M = j->g->M, nb = j->nb, kcb = QG_KC / CPU_QK;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i k0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), iota);
    const __m256i k1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), iota);
    const int full = cols == QA_NR;
    for (int64_t b0 = 0; b0 < nb; b0 += kcb) {
        const int64_t b1 = b0 + kcb < nb ? b0 + kcb : nb;
        const int first = b0 == 0, last = b1 == nb;
        for (int64_t m = 0; m < M; m++) {
#define QA_K(IZ, FULL) qa_kernel(IZ, FULL, j, m, n0, k0, k1, codes, s, z, b0, b1, first, last)
            if (j->zi) {
                if (full) QA_K(1, 1); else QA_K(1, 0);
            } else {
                if (full) QA_K(0, 1); else QA_K(0, 0);
            }
#undef QA_K
        }
    }
}

static const qg_layout qa_layout = {.nr = QA_NR, .panel = qa_panel};

int cpu_qgemm_avx2(const cpu_qgemm *g) {
    return cpu_q_code_max(g->wt) > cpu_qsimd_avx2.gemm_max_code ? LLMOPT_EUNSUPPORTED : cpu_qgemm_run(g, &qa_layout);
}

#else
int cpu_qgemm_avx2(const cpu_qgemm *g) {
    (void)g;
    return LLMOPT_EUNSUPPORTED;
}
#endif
