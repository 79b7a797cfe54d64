/* AVX-512 VNNI primitives of the quantized kernels: _mm256_dpbusd_epi32 sums four u8 x s8
 * products into each int32 lane without the 16-bit saturation of maddubs, so every code width
 * takes one instruction per 32 weights; codes -> f32 on 512-bit vectors. plugin.c picks this
 * table when the CPU has AVX-512 F, BW, VL and VNNI. */
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

VNNI static float vnni_dot_u8s8(const uint8_t *u, const int8_t *xq, const float *c, int64_t nblk, int wide) {
    (void)wide; /* dpbusd does not saturate */
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nblk; b += 2) {
        __m256i p0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)(u + b * CPU_QK)),
                                         _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)));
        __m256i p1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)(u + (b + 1) * CPU_QK)),
                                         _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * CPU_QK)));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(c[b]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(c[b + 1]), acc1);
    }
    if (b < nblk) {
        __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)(u + b * CPU_QK)),
                                        _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(c[b]), acc0);
    }
    __m256 v = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

VNNI static void vnni_codes_to_f32(float *dst, const uint8_t *u, const float *s, const float *m, int64_t nblk) {
    for (int64_t b = 0; b < nblk; b++, u += CPU_QK, dst += CPU_QK) {
        __m512 vs = _mm512_set1_ps(s[b]), vm = _mm512_set1_ps(m[b]);
        for (int k = 0; k < CPU_QK; k += 16) {
            __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(u + k)));
            _mm512_storeu_ps(dst + k, _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), vs, vm));
        }
    }
}

/* The fused row dot (quant_rowdot.h): dpbusd multiplies unsigned codes with x as they are; a
 * signed Q8_0 code q is read as q ^ 0x80 = q + 128, which adds 128 * sum(x). */
#define QD_ATTR VNNI
#define QD_DOTA_U4(a, u, x) _mm256_dpbusd_epi32((a), (u), (x))
#define QD_DOTA_U8(a, u, x) _mm256_dpbusd_epi32((a), (u), (x))
#define QD_DOTA_S8(a, q, x) _mm256_dpbusd_epi32((a), _mm256_xor_si256((q), _mm256_set1_epi8((char)0x80)), (x))
#define QD_LANESUM(x) _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), (x))
#define QD_S8_BIAS 128
#define QD_U8_BIAS 0
#define QD_NAME vnni_row_dot
#define QD_F32_NAME vnni_row_f32
#define QD_QX_NAME vnni_quantize_x
#define QD_PX_NAME vnni_permute_x
#include "quant_rowdot.h"

const cpu_qsimd cpu_qsimd_avx512vnni = {"avx512vnni", vnni_dot_u8s8, vnni_codes_to_f32, vnni_row_dot, vnni_row_f32, vnni_quantize_x,
                                           cpu_qgemm_vnni, vnni_permute_x, 255};

#else
const cpu_qsimd cpu_qsimd_avx512vnni = {"avx512vnni", NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};
#endif
