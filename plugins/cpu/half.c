/* f16 (IEEE 754 binary16) and bf16 (bfloat16) <-> f32 conversions, portable and exact: f16
 * subnormals, infinities and NaNs are kept; narrowing rounds to nearest, ties to even. The f32 ->
 * f16 path follows F. Giesen, "float_to_half_fast3_rtne" (public domain, 2016). */
#include "cpu.h"

#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float cpu_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13)); /* inf, NaN */
    if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in f32 */
    float v = (float)mant * bits_f32(0x33800000u); /* 2^-24 */
    return sign ? -v : v;
}

uint16_t cpu_f32_to_f16(float f) {
    const uint32_t f32_inf = 255u << 23, f16_max = (127u + 16u) << 23;
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23; /* 0.5f */
    uint32_t u = f32_bits(f);
    uint32_t sign = u & 0x80000000u;
    u ^= sign;
    uint32_t o;
    if (u >= f16_max) {
        o = u > f32_inf ? 0x7e00u : 0x7c00u; /* NaN -> quiet NaN, too big -> inf */
    } else if (u < (113u << 23)) {
        /* subnormal or zero: adding 0.5 puts the f16 subnormal ulp (2^-24) at the f32 ulp, so
         * the FPU does the round-to-nearest-even */
        float s = bits_f32(u) + bits_f32(denorm_magic);
        o = f32_bits(s) - denorm_magic;
    } else {
        uint32_t mant_odd = (u >> 13) & 1u;
        u += ((uint32_t)(15 - 127) << 23) + 0xfffu; /* rebias, round half up ... */
        u += mant_odd;                               /* ... and ties to even */
        o = u >> 13;
    }
    return (uint16_t)(o | (sign >> 16));
}

float cpu_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t cpu_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void cpu_row_to_f32(float *dst, const void *src, int dtype, int64_t n) {
    if (dtype == LLMOPT_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dtype == LLMOPT_DTYPE_F16) {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = cpu_f16_to_f32(h[i]);
    } else {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = cpu_bf16_to_f32(h[i]);
    }
}
