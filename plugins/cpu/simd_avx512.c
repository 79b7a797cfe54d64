/* AVX-512F primitives for the CPU kernels (16 floats a vector). Function-level target
 * attributes keep the rest of the build portable; plugin.c selects this table only when
 * __builtin_cpu_supports("avx512f") says the CPU has it. */
#include "cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f")))

AVX512 static float avx512_dot(const float *a, const float *b, int64_t n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    if (i < n) { /* masked tail: the lanes past n load as zero */
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

AVX512 static void avx512_axpy(float *y, float a, const float *x, int64_t n) {
    __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
    }
}

AVX512 static void avx512_f16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    for (; i < n; i++) dst[i] = cpu_f16_to_f32(src[i]);
}

AVX512 static void avx512_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = cpu_bf16_to_f32(src[i]);
}

/* 16 f16 (bf16 when bf16) values at p as f32 */
AVX512 static inline __m512 avx512_half16(const uint16_t *p, int bf16) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

AVX512 static float avx512_dot_half(const float *a, const uint16_t *b, int64_t n, int bf16) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), avx512_half16(b + i, bf16), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), avx512_half16(b + i + 16, bf16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), avx512_half16(b + i + 32, bf16), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), avx512_half16(b + i + 48, bf16), acc3);
    }
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), avx512_half16(b + i, bf16), acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (; i < n; i++) s += a[i] * (bf16 ? cpu_bf16_to_f32(b[i]) : cpu_f16_to_f32(b[i]));
    return s;
}

AVX512 static void avx512_axpy_half(float *y, const float *a, const uint16_t *w, int64_t ldw, int rows, int64_t n,
                                    int bf16) {
    const __m512 a0 = _mm512_set1_ps(a[0]), a1 = _mm512_set1_ps(rows > 1 ? a[1] : 0.0f);
    const __m512 a2 = _mm512_set1_ps(rows > 2 ? a[2] : 0.0f), a3 = _mm512_set1_ps(rows > 3 ? a[3] : 0.0f);
    int64_t i = 0;
    for (; rows == 4 && i + 16 <= n; i += 16) { /* four rows: y is loaded and stored once for all */
        __m512 acc = _mm512_fmadd_ps(a0, avx512_half16(w + i, bf16), _mm512_loadu_ps(y + i));
        acc = _mm512_fmadd_ps(a1, avx512_half16(w + ldw + i, bf16), acc);
        acc = _mm512_fmadd_ps(a2, avx512_half16(w + 2 * ldw + i, bf16), acc);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a3, avx512_half16(w + 3 * ldw + i, bf16), acc));
    }
    for (; i + 16 <= n; i += 16) {
        __m512 acc = _mm512_loadu_ps(y + i);
        for (int r = 0; r < rows; r++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), avx512_half16(w + r * ldw + i, bf16), acc);
        _mm512_storeu_ps(y + i, acc);
    }
    for (; i < n; i++)
        for (int r = 0; r < rows; r++)
            y[i] += a[r] * (bf16 ? cpu_bf16_to_f32(w[r * ldw + i]) : cpu_f16_to_f32(w[r * ldw + i]));
}

/* exp of 16 floats,
 * Cephes expf: x = n ln2 + r, |r| <= ln2/2 (ln2 split in two for the reduction), exp(r) by a
 * degree-5 polynomial, times 2^n through the exponent bits. */
AVX512 static __m512 avx512_exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(CPU_EXP_LO)), _mm512_set1_ps(CPU_EXP_HI));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

AVX512 static void avx512_vexp(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, avx512_exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(x + i, k, avx512_exp16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

/* cpu_simd.adamw, 16 values a vector, the generic loop's operations in its order. */
AVX512 static void avx512_adamw(const cpu_adamw_k *k, const float *grad, float *param, float *m, float *v, int64_t n) {
    const __m512 gs = _mm512_set1_ps(k->grad_scale), b1 = _mm512_set1_ps(k->b1), c1 = _mm512_set1_ps(1.0f - k->b1);
    const __m512 b2 = _mm512_set1_ps(k->b2), c2 = _mm512_set1_ps(1.0f - k->b2), decay = _mm512_set1_ps(k->decay);
    const __m512 step = _mm512_set1_ps(k->step_size), bc2 = _mm512_set1_ps(k->bc2_sqrt), eps = _mm512_set1_ps(k->eps);
    __m512 mv, vv, pv;
#define ADAMW_STEP(G, P, M, V)                                                                                   \
    do {                                                                                                         \
        const __m512 g = _mm512_mul_ps((G), gs);                                                                    \
        mv = _mm512_add_ps(_mm512_mul_ps(b1, (M)), _mm512_mul_ps(c1, g));                                           \
        vv = _mm512_add_ps(_mm512_mul_ps(b2, (V)), _mm512_mul_ps(_mm512_mul_ps(c2, g), g));                         \
        pv = _mm512_mul_ps((P), decay);                                                                         \
        pv = _mm512_sub_ps(pv, _mm512_div_ps(_mm512_mul_ps(step, mv), _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vv), bc2), eps))); \
    } while (0)
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        ADAMW_STEP(_mm512_loadu_ps(grad + i), _mm512_loadu_ps(param + i), _mm512_loadu_ps(m + i), _mm512_loadu_ps(v + i));
        _mm512_storeu_ps(m + i, mv);
        _mm512_storeu_ps(v + i, vv);
        _mm512_storeu_ps(param + i, pv);
    }
    if (i < n) {
        const __mmask16 msk = (__mmask16)((1u << (n - i)) - 1u);
        ADAMW_STEP(_mm512_maskz_loadu_ps(msk, grad + i), _mm512_maskz_loadu_ps(msk, param + i),
                   _mm512_maskz_loadu_ps(msk, m + i), _mm512_maskz_loadu_ps(msk, v + i));
        _mm512_mask_storeu_ps(m + i, msk, mv);
        _mm512_mask_storeu_ps(v + i, msk, vv);
        _mm512_mask_storeu_ps(param + i, msk, pv);
    }
}

/* cpu_simd.a8_codes, 16 values a vector: two gathers a vector, independent of each other */
AVX512 static void avx512_a8_codes(const int32_t *base, const float *thr, uint32_t cells, const float *x, uint8_t *out,
                                   int64_t n) {
    const __m512i sign = _mm512_set1_epi32(0x10000), magm = _mm512_set1_epi32(0xffff), cap = _mm512_set1_epi32((int)cells - 1);
    const __m512i one = _mm512_set1_epi32(1);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
        const __m512i c = _mm512_srli_epi32(_mm512_castps_si512(xv), 15);
        const __m512i idx = _mm512_or_si512(_mm512_and_si512(c, sign), _mm512_min_epu32(_mm512_and_si512(c, magm), cap));
        __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, base, 4);
        const __m512 t = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, thr, 4);
        g = _mm512_mask_add_epi32(g, _mm512_cmp_ps_mask(t, xv, _CMP_LE_OQ), g, one);
        _mm512_mask_cvtepi32_storeu_epi8(out + i, k, g);
    }
}

/* cpu_simd.a8_block: the block in registers and one 256-value buffer a moment */
AVX512 static void avx512_a8_block(const cpu_adamw_k *k, const cpu_a8_tables *t, const float *grad, float *param,
                                   uint8_t *mc, uint8_t *vc, float *m_absmax, float *v_absmax, int64_t len) {
    const __m512 gs = _mm512_set1_ps(k->grad_scale), b1 = _mm512_set1_ps(k->b1), c1 = _mm512_set1_ps(1.0f - k->b1);
    const __m512 b2 = _mm512_set1_ps(k->b2), c2 = _mm512_set1_ps(1.0f - k->b2), decay = _mm512_set1_ps(k->decay);
    const __m512 step = _mm512_set1_ps(k->step_size), bc2 = _mm512_set1_ps(k->bc2_sqrt), eps = _mm512_set1_ps(k->eps);
    const __m512 am = _mm512_set1_ps(*m_absmax), av = _mm512_set1_ps(*v_absmax);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    float nm[256], nv[256];
    __m512 mx = _mm512_setzero_ps(), vx = _mm512_setzero_ps(), mv, vv, pv;
    for (int64_t i = 0; i < len; i += 16) {
        const __mmask16 msk = len - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - i)) - 1u);
        __m128i cb = _mm_setzero_si128(), vb = _mm_setzero_si128(); /* 16 bytes, zeros past len (SSE2 loads: AVX-512F has no byte masks) */
        if (msk == 0xffff) cb = _mm_loadu_si128((const __m128i *)(mc + i)), vb = _mm_loadu_si128((const __m128i *)(vc + i));
        else memcpy(&cb, mc + i, (size_t)(len - i)), memcpy(&vb, vc + i, (size_t)(len - i));
        const __m512i ci = _mm512_cvtepu8_epi32(cb), cv = _mm512_cvtepu8_epi32(vb);
        const __m512 m0 = _mm512_mul_ps(_mm512_i32gather_ps(ci, t->code[0], 4), am);
        const __m512 v0 = _mm512_mul_ps(_mm512_i32gather_ps(cv, t->code[1], 4), av);
        ADAMW_STEP(_mm512_maskz_loadu_ps(msk, grad + i), _mm512_maskz_loadu_ps(msk, param + i), m0, v0);
        _mm512_mask_storeu_ps(param + i, msk, pv);
        _mm512_storeu_ps(nm + i, mv), _mm512_storeu_ps(nv + i, vv);
        /* lanes past len hold the update of zeros: keep them out of the maxima */
        mx = _mm512_mask_max_ps(mx, msk, mx, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(mv), absm)));
        vx = _mm512_mask_max_ps(vx, msk, vx, vv);
    }
    const float mmax = _mm512_reduce_max_ps(mx), vmax = _mm512_reduce_max_ps(vx);
    *m_absmax = mmax, *v_absmax = vmax;
    const __m512 dm = _mm512_set1_ps(mmax > 0.0f ? mmax : 1.0f), dv = _mm512_set1_ps(vmax > 0.0f ? vmax : 1.0f);
    const __m512i sign = _mm512_set1_epi32(0x10000), magm = _mm512_set1_epi32(0xffff),
                  cap = _mm512_set1_epi32((int)t->cells - 1), one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
    for (int64_t i = 0; i < len; i += 16) {
        const __mmask16 msk = len - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - i)) - 1u);
        for (int s = 0; s < 2; s++) {
            const __m512 x = _mm512_div_ps(_mm512_loadu_ps((s ? nv : nm) + i), s ? dv : dm);
            const __m512i c = _mm512_srli_epi32(_mm512_castps_si512(x), 15);
            const __m512i idx = _mm512_or_si512(_mm512_and_si512(c, sign), _mm512_min_epu32(_mm512_and_si512(c, magm), cap));
            __m512i g = _mm512_mask_i32gather_epi32(zero, msk, idx, t->base[s], 4);
            const __m512 th = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), msk, idx, t->thr[s], 4);
            g = _mm512_mask_add_epi32(g, _mm512_cmp_ps_mask(th, x, _CMP_LE_OQ), g, one);
            if (s) /* a v above 0 never becomes 0 */
                g = _mm512_mask_add_epi32(g, _mm512_cmpeq_epi32_mask(g, zero) & _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), g, one);
            _mm512_mask_cvtepi32_storeu_epi8((s ? vc : mc) + i, msk, g);
        }
    }
}
#undef ADAMW_STEP

const cpu_simd cpu_simd_avx512 = {"avx512", avx512_dot, avx512_axpy, avx512_f16_to_f32, avx512_bf16_to_f32,
                                  avx512_vexp, avx512_adamw, avx512_dot_half, avx512_axpy_half, avx512_a8_codes,
                                  avx512_a8_block};

#else
/* Not x86: never selected (plugin.c detects nothing), defined so the table links. */
const cpu_simd cpu_simd_avx512 = {"avx512", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
#endif
