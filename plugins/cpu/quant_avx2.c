/* AVX2 primitives of the quantized kernels: u8 x s8 dot products per 32 weights with
 * _mm256_maddubs_epi16 (codes <= 15: pair sums <= 2*15*127, no saturation; 8-bit codes are
 * widened to 16 bits and use _mm256_madd_epi16 instead) and codes -> f32 with FMA. */
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the 8 int32 partial sums of one block of 32 */
AVX2 static __m256i block_dot(const uint8_t *u, const int8_t *xq, int wide) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i vu = _mm256_loadu_si256((const __m256i *)u), vx = _mm256_loadu_si256((const __m256i *)xq);
    if (!wide) return _mm256_madd_epi16(_mm256_maddubs_epi16(vu, vx), ones);
    __m256i u0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(vu)), u1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(vu, 1));
    __m256i x0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vx)), x1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(vx, 1));
    return _mm256_add_epi32(_mm256_madd_epi16(u0, x0), _mm256_madd_epi16(u1, x1));
}

AVX2 static float avx2_dot_u8s8(const uint8_t *u, const int8_t *xq, const float *c, int64_t nblk, int wide) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nblk; b += 2) {
        __m256i p0 = block_dot(u + b * CPU_QK, xq + b * CPU_QK, wide);
        __m256i p1 = block_dot(u + (b + 1) * CPU_QK, xq + (b + 1) * CPU_QK, wide);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(c[b]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(c[b + 1]), acc1);
    }
    if (b < nblk)
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(u + b * CPU_QK, xq + b * CPU_QK, wide)),
                               _mm256_set1_ps(c[b]), acc0);
    return hsum8(_mm256_add_ps(acc0, acc1));
}

AVX2 static void avx2_codes_to_f32(float *dst, const uint8_t *u, const float *s, const float *m, int64_t nblk) {
    for (int64_t b = 0; b < nblk; b++, u += CPU_QK, dst += CPU_QK) {
        __m256 vs = _mm256_set1_ps(s[b]), vm = _mm256_set1_ps(m[b]);
        for (int k = 0; k < CPU_QK; k += 8) {
            __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(u + k)));
            _mm256_storeu_ps(dst + k, _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), vs, vm));
        }
    }
}

/* 32 signed codes q times xq as 8 int32 lanes (|q| <= 128: maddubs cannot saturate). */
AVX2 static __m256i dot_s8(__m256i q, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q)),
                             _mm256_set1_epi16(1));
}

/* The fused row dot (quant_rowdot.h): codes <= 15 go straight into maddubs; 8-bit codes u are
 * read as u - 128 (signed), which subtracts 128 * sum(x). */
#define QD_ATTR AVX2
#define QD_DOTA_U4(a, u, x) _mm256_add_epi32((a), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (x)), _mm256_set1_epi16(1)))
#define QD_DOTA_S8(a, q, x) _mm256_add_epi32((a), dot_s8((q), (x)))
#define QD_DOTA_U8(a, u, x) _mm256_add_epi32((a), dot_s8(_mm256_xor_si256((u), _mm256_set1_epi8((char)0x80)), (x)))
#define QD_LANESUM(x) _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), (x)), _mm256_set1_epi16(1))
#define QD_S8_BIAS 0
#define QD_U8_BIAS (-128)
#define QD_NAME avx2_row_dot
#define QD_F32_NAME avx2_row_f32
#define QD_QX_NAME avx2_quantize_x
#define QD_PX_NAME avx2_permute_x
#include "quant_rowdot.h"

const cpu_qsimd cpu_qsimd_avx2 = {"avx2",          avx2_dot_u8s8,   avx2_codes_to_f32, avx2_row_dot,
                                  avx2_row_f32,    avx2_quantize_x, cpu_qgemm_avx2,    avx2_permute_x,
                                  15};

#else
const cpu_qsimd cpu_qsimd_avx2 = {"avx2", NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};
#endif
