/* AVX2 primitives of the quantized kernels: u8 x s8 dot products per 32 weights with
 * _mm256_maddubs_epi16 (codes <= 15: pair sums <= 2*15*127, no saturation; 8-bit codes are
 * widened to 16 bits and use _mm256_madd_epi16 instead) and codes -> f32 with FMA. */
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

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

AVX2 static float f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 32 signed codes q times xq: sum of q*xq as 8 int32 lanes (|q| <= 128: no saturation). */
AVX2 static __m256i dot_s8(__m256i q, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q)),
                             _mm256_set1_epi16(1));
}

/* 32 codes <= 15 times xq. */
AVX2 static __m256i dot_u4(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

/* Per sub-block b: acc += c_b * isum_b (vector), off += o_b * xsum_b (scalar). w = s*(code - z):
 * 4-bit codes are used as they are (z folded into off), 8-bit ones as code - 128 (signed). */
AVX2 int cpu_q_row_dot_avx2(int dtype, const uint8_t *row, const int8_t *xq, const float *dx,
                            const int32_t *xsum, int64_t K, float *out) {
    const int64_t nb = K / CPU_QK;
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    float off = 0.0f;
    if (dtype == LLMOPT_DTYPE_Q8_0) {
        for (int64_t b = 0; b < nb; b++, row += 34) {
            __m256i p = dot_s8(_mm256_loadu_si256((const __m256i *)(row + 2)), _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16(row) * dx[b]), acc);
        }
    } else if (dtype == LLMOPT_DTYPE_Q4_0 || dtype == LLMOPT_DTYPE_Q4_1) {
        const int hdr = dtype == LLMOPT_DTYPE_Q4_0 ? 2 : 4;
        for (int64_t b = 0; b < nb; b++, row += hdr + 16) {
            __m128i qs = _mm_loadu_si128((const __m128i *)(row + hdr));
            __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), low); /* j | j+16 */
            __m256i p = dot_u4(u, _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)));
            float d = f16(row), c = d * dx[b];
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(c), acc);
            off += (hdr == 2 ? -8.0f * c : f16(row + 2) * dx[b]) * (float)xsum[b];
        }
    } else if (LLMOPT_DTYPE_IS_GQ(dtype) && LLMOPT_DTYPE_GQ_GROUP(dtype) % CPU_QK == 0 &&
               (LLMOPT_DTYPE_GQ_BITS(dtype) == 4 || LLMOPT_DTYPE_GQ_BITS(dtype) == 8)) {
        const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
        const int64_t per = LLMOPT_DTYPE_GQ_GROUP(dtype) / CPU_QK;
        const int hdr = asym ? 4 : 2;
        for (int64_t b = 0; b < nb; row += hdr + per * CPU_QK * bits / 8) {
            const float sc = f16(row), z = asym ? f16(row + 2) : (float)(1 << (bits - 1));
            const uint8_t *codes = row + hdr;
            for (int64_t k = 0; k < per; k++, b++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)), p;
                float c = sc * dx[b];
                if (bits == 4) {  /* byte j: code 2j low, 2j+1 high */
                    __m128i qs = _mm_loadu_si128((const __m128i *)(codes + k * 16));
                    __m128i lo = _mm_and_si128(qs, _mm_set1_epi8(0x0f)), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), _mm_set1_epi8(0x0f));
                    p = dot_u4(_mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi)), x);
                    off -= z * c * (float)xsum[b];
                } else {          /* code - 128 as int8 */
                    __m256i q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(codes + k * 32)), _mm256_set1_epi8((char)0x80));
                    p = dot_s8(q, x);
                    off += (128.0f - z) * c * (float)xsum[b];
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(c), acc);
            }
        }
    } else {
        return -1;
    }
    *out = hsum8(acc) + off;
    return 0;
}

const cpu_qsimd cpu_qsimd_avx2 = {"avx2", avx2_dot_u8s8, avx2_codes_to_f32, cpu_q_row_dot_avx2};

#else
int cpu_q_row_dot_avx2(int dtype, const uint8_t *row, const int8_t *xq, const float *dx, const int32_t *xsum,
                       int64_t K, float *out) {
    (void)dtype, (void)row, (void)xq, (void)dx, (void)xsum, (void)K, (void)out;
    return -1;
}
const cpu_qsimd cpu_qsimd_avx2 = {"avx2", NULL, NULL, cpu_q_row_dot_avx2};
#endif
