/* k-quant dequantization (see kquant.h). Layouts (ggml-common.h):
 *   block_q4_K: f16 d, f16 dmin, u8 scales[12] (8 6-bit scales and 8 6-bit mins), u8 qs[128]
 *   block_q5_K: f16 d, f16 dmin, u8 scales[12], u8 qh[32] (the 5th bits), u8 qs[128]
 *   block_q6_K: u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), i8 scales[16], f16 d
 * Each product is formed in the reference's order ((d * sc) * q - dmin * m), in f32, without
 * contraction (C11 mode: -ffp-contract=off), so the bits match. */
#include "kquant.h"

#include <string.h>

#include "quant.h"

enum { T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };

size_t kq_block_bytes(uint32_t t) { return t == T_Q4_K ? 144 : t == T_Q5_K ? 176 : t == T_Q6_K ? 210 : 0; }

static float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return q_f16_to_f32(h);
}

/* The j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K block (ggml's get_scale_min_k4). */
static void scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Q4_K (hbits NULL) and Q5_K: 4 pairs of 32-weight sub-blocks, low then high nibbles of 32 bytes. */
static void dequantize_q4_5_k(const uint8_t *b, float *y, int five) {
    const float d = half(b), min = half(b + 2);
    const uint8_t *scales = b + 4, *qh = five ? b + 16 : NULL, *q = b + (five ? 48 : 16);
    uint8_t sc, m, u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < KQ_QK_K; j += 64, is += 2, q += 32) {
        scale_min(is, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        scale_min(is + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] & 0xF) + (qh && (qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)((q[l] >> 4) + (qh && (qh[l] & u2) ? 16 : 0)) - m2;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

static void dequantize_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = half(b + 208);
    for (int n = 0; n < KQ_QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * (float)sc[is + 0] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
}

int kq_dequantize(uint32_t t, const void *blocks, float *y, int64_t n) {
    const size_t bs = kq_block_bytes(t);
    if (!bs || n < 0 || n % KQ_QK_K != 0) return -1;
    const uint8_t *b = blocks;
    for (int64_t i = 0; i < n / KQ_QK_K; i++, b += bs, y += KQ_QK_K) {
        if (t == T_Q6_K) dequantize_q6_k(b, y);
        else dequantize_q4_5_k(b, y, t == T_Q5_K);
    }
    return 0;
}
