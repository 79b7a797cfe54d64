/* AVX2 + FMA + F16C primitives for the CPU kernels. Each function carries its own target
 * attribute, so this file builds with the project's portable flags and the instructions only
 * run after plugin.c has checked the CPU (__builtin_cpu_supports). */
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static float avx2_dot(const float *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

AVX2 static void avx2_axpy(float *y, float a, const float *x, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

AVX2 static void avx2_f16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = cpu_f16_to_f32(src[i]);
}

AVX2 static void avx2_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = cpu_bf16_to_f32(src[i]);
}

/* 8 f16 (bf16 when bf16) values at p as f32 */
AVX2 static inline __m256 avx2_half8(const uint16_t *p, int bf16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

AVX2 static float avx2_dot_half(const float *a, const uint16_t *b, int64_t n, int bf16) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), avx2_half8(b + i, bf16), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), avx2_half8(b + i + 8, bf16), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), avx2_half8(b + i + 16, bf16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), avx2_half8(b + i + 24, bf16), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), avx2_half8(b + i, bf16), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) s += a[i] * (bf16 ? cpu_bf16_to_f32(b[i]) : cpu_f16_to_f32(b[i]));
    return s;
}

AVX2 static void avx2_axpy_half(float *y, const float *a, const uint16_t *w, int64_t ldw, int rows, int64_t n,
                                int bf16) {
    const __m256 a0 = _mm256_set1_ps(a[0]), a1 = _mm256_set1_ps(rows > 1 ? a[1] : 0.0f);
    const __m256 a2 = _mm256_set1_ps(rows > 2 ? a[2] : 0.0f), a3 = _mm256_set1_ps(rows > 3 ? a[3] : 0.0f);
    int64_t i = 0;
    for (; rows == 4 && i + 8 <= n; i += 8) { /* four rows: y is loaded and stored once for all */
        __m256 acc = _mm256_fmadd_ps(a0, avx2_half8(w + i, bf16), _mm256_loadu_ps(y + i));
        acc = _mm256_fmadd_ps(a1, avx2_half8(w + ldw + i, bf16), acc);
        acc = _mm256_fmadd_ps(a2, avx2_half8(w + 2 * ldw + i, bf16), acc);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a3, avx2_half8(w + 3 * ldw + i, bf16), acc));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_loadu_ps(y + i);
        for (int r = 0; r < rows; r++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), avx2_half8(w + r * ldw + i, bf16), acc);
        _mm256_storeu_ps(y + i, acc);
    }
    for (; i < n; i++)
        for (int r = 0; r < rows; r++)
            y[i] += a[r] * (bf16 ? cpu_bf16_to_f32(w[r * ldw + i]) : cpu_f16_to_f32(w[r * ldw + i]));
}

/* exp of 8 floats,
 * Cephes expf: x = n ln2 + r, |r| <= ln2/2 (ln2 split in two for the reduction), exp(r) by a
 * degree-5 polynomial, times 2^n through the exponent bits. */
AVX2 static __m256 avx2_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(CPU_EXP_LO)), _mm256_set1_ps(CPU_EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

AVX2 static void avx2_vexp(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, avx2_exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float t[8] = {0};
        memcpy(t, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(t, avx2_exp8(_mm256_loadu_ps(t)));
        memcpy(x + i, t, (size_t)(n - i) * sizeof(float));
    }
}

/* cpu_simd.adamw, 8 values a vector, the generic loop's operations in its order. */
AVX2 static void avx2_adamw(const cpu_adamw_k *k, const float *grad, float *param, float *m, float *v, int64_t n) {
    const __m256 gs = _mm256_set1_ps(k->grad_scale), b1 = _mm256_set1_ps(k->b1), c1 = _mm256_set1_ps(1.0f - k->b1);
    const __m256 b2 = _mm256_set1_ps(k->b2), c2 = _mm256_set1_ps(1.0f - k->b2), decay = _mm256_set1_ps(k->decay);
    const __m256 step = _mm256_set1_ps(k->step_size), bc2 = _mm256_set1_ps(k->bc2_sqrt), eps = _mm256_set1_ps(k->eps);
    __m256 mv, vv, pv;
#define ADAMW_STEP(G, P, M, V)                                                                                   \
    do {                                                                                                         \
        const __m256 g = _mm256_mul_ps((G), gs);                                                                    \
        mv = _mm256_add_ps(_mm256_mul_ps(b1, (M)), _mm256_mul_ps(c1, g));                                           \
        vv = _mm256_add_ps(_mm256_mul_ps(b2, (V)), _mm256_mul_ps(_mm256_mul_ps(c2, g), g));                         \
        pv = _mm256_mul_ps((P), decay);                                                                         \
        pv = _mm256_sub_ps(pv, _mm256_div_ps(_mm256_mul_ps(step, mv), _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bc2), eps))); \
    } while (0)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        ADAMW_STEP(_mm256_loadu_ps(grad + i), _mm256_loadu_ps(param + i), _mm256_loadu_ps(m + i), _mm256_loadu_ps(v + i));
        _mm256_storeu_ps(m + i, mv);
        _mm256_storeu_ps(v + i, vv);
        _mm256_storeu_ps(param + i, pv);
    }
    if (i < n) cpu_simd_generic.adamw(k, grad + i, param + i, m + i, v + i, n - i);
#undef ADAMW_STEP
}

/* cpu_simd.a8_codes, 8 values a vector: two gathers a vector, independent of each other */
AVX2 static void avx2_a8_codes(const int32_t *base, const float *thr, uint32_t cells, const float *x, uint8_t *out,
                               int64_t n) {
    const __m256i sign = _mm256_set1_epi32(0x10000), magm = _mm256_set1_epi32(0xffff), cap = _mm256_set1_epi32((int)cells - 1);
    const __m256i pack = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        const __m256i c = _mm256_srli_epi32(_mm256_castps_si256(xv), 15);
        const __m256i idx = _mm256_or_si256(_mm256_and_si256(c, sign), _mm256_min_epu32(_mm256_and_si256(c, magm), cap));
        __m256i g = _mm256_i32gather_epi32(base, idx, 4);
        const __m256 t = _mm256_i32gather_ps(thr, idx, 4);
        g = _mm256_sub_epi32(g, _mm256_castps_si256(_mm256_cmp_ps(t, xv, _CMP_LE_OQ))); /* true is -1 */
        const __m256i b = _mm256_shuffle_epi8(g, pack); /* each lane's low byte, 4 in each 128-bit half */
        const uint32_t lo = (uint32_t)_mm256_extract_epi32(b, 0), hi = (uint32_t)_mm256_extract_epi32(b, 4);
        memcpy(out + i, &lo, 4), memcpy(out + i + 4, &hi, 4);
    }
    if (i < n) cpu_simd_generic.a8_codes(base, thr, cells, x + i, out + i, n - i);
}

const cpu_simd cpu_simd_avx2 = {"avx2", avx2_dot, avx2_axpy, avx2_f16_to_f32, avx2_bf16_to_f32, avx2_vexp, avx2_adamw,
                                avx2_dot_half, avx2_axpy_half, avx2_a8_codes, NULL};

#else
/* Not x86: never selected (plugin.c detects nothing), defined so the table links. */
const cpu_simd cpu_simd_avx2 = {"avx2", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
#endif
