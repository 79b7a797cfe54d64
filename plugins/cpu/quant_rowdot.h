/* The fused decode dot of the quantized kernels, written once for both SIMD tables: up to
 * CPU_Q_ROWS consecutive rows of W (read straight from their blocks; one at a time or QD_MAXR at
 * a time, see below) against one row of x quantized per 32. quant_avx2.c and quant_avx512.c include
 * this file after defining
 *   QD_ATTR          the target attribute of their functions;
 *   QD_DOTA_U4(a, u, x)  a + int32 lanes summing u*x over 32 codes u <= 15, each lane the 4
 *                        bytes it covers (x: int8 in [-127, 127]);
 *   QD_DOTA_U8(a, u, x)  the same for codes u <= 255, plus QD_U8_BIAS * x per lane;
 *   QD_DOTA_S8(a, q, x)  the same for signed int8 codes q, plus QD_S8_BIAS * x per lane;
 *   QD_LANESUM(x)        the lanes' sums of x alone;
 *   QD_NAME          the name of the row_dot function to define;
 *   QD_F32_NAME      the name of the row-to-f32 function to define (prefill tiles, embedding);
 *   QD_QX_NAME       the name of the x-quantizing function to define (cpu_q_quantize_x in SIMD);
 *   QD_PX_NAME       the name of the x-permuting function to define (cpu_qsimd.permute_x).
 * Every format reads as codes v with w = c*(v - z) per 32 weights, so a block adds
 * c * (dot - (bias + z) * sum(x)): an integer bias + z is subtracted in the int32 lanes (the dot
 * starts from -(bias + z) * lane sums of x), a fractional zero (Q4_1's min, GQ asym's f16 zero)
 * as a scalar through dxs[b] = dx[b] * sum(x block b); the rest accumulates per row in f32. Four rows at a time give four
 * independent FMA chains (one row alone waits on its accumulator), load each x block once, and
 * keep four weight streams in flight. Each stream prefetches the same bytes of the row R rows
 * on, which the next call reads (decode streams every weight once a token; without the prefetch
 * the GPT-2 124M q8_0 decode took 1.5x the CPU time, perf showing it on the weight loads).
 * The 8-bit formats (qd_rows8), Q4_0 of an even number of blocks and GQ 4-bit in groups of 64k
 * (qd_rows4) now read one row at a time instead; the four-row path is left to Q4_1, odd Q4_0 rows
 * and GQ 4-bit groups of an odd multiple of 32. */
#ifndef QD_ATTR
#error "define QD_ATTR, QD_DOTA_U4, QD_DOTA_U8, QD_DOTA_S8, QD_LANESUM, QD_U8_BIAS, QD_S8_BIAS, QD_NAME, QD_F32_NAME, QD_QX_NAME and QD_PX_NAME first"
#endif

#include <immintrin.h>
#include <string.h>

#define QD_MAXR 4
#define QD_INLINE QD_ATTR static inline __attribute__((always_inline))
/* the row loops unrolled: their accumulators stay in registers */
#define QD_UNROLL _Pragma("GCC unroll 4")

QD_INLINE float qd_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

QD_INLINE float qd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ggml Q4_0/Q4_1: element j is the low nibble of byte j, element j + 16 its high nibble */
QD_INLINE __m256i qd_nib_ggml(const uint8_t *p) {
    __m128i qs = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), _mm256_set1_epi8(0x0f));
}

/* GQ 4-bit: code 2j is the low nibble of byte j, code 2j + 1 its high nibble */
QD_INLINE __m256i qd_nib_gq(const uint8_t *p) {
    __m128i qs = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(qs, m), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m);
    return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
}

/* -zi * (sum of x over each int32 lane's 4 bytes): the accumulator a block's dot starts from when
 * its codes carry an integer zero zi (or the dot instruction's bias), so the block sums
 * (code - zi) * x in int32 with no scalar offset. Once per x block, shared by the R rows. */
QD_INLINE __m256i qd_base(__m256i x, int zi) {
    if (!zi) return _mm256_setzero_si256();
    return _mm256_mullo_epi32(QD_LANESUM(x), _mm256_set1_epi32(-zi));
}

/* Q8_0 (f16 d, 32 int8), Q4_0 (f16 d, 16 bytes; z = 8), Q4_1 (f16 d, f16 m, 16 bytes). */
QD_INLINE void qd_ggml(const int dtype, const int R, const uint8_t *row, size_t rb, const int8_t *xq,
                       const float *dx, const float *dxs, int64_t nb, float *out) {
    const size_t hdr = dtype == LLMOPT_DTYPE_Q4_1 ? 4 : 2, bsz = dtype == LLMOPT_DTYPE_Q8_0 ? 34 : hdr + 16;
    const size_t ahead = (size_t)R * rb;
    const int zi = dtype == LLMOPT_DTYPE_Q8_0 ? QD_S8_BIAS : dtype == LLMOPT_DTYPE_Q4_0 ? 8 : 0;
    __m256 acc[QD_MAXR];
    float off[QD_MAXR];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps(), off[r] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)), base = qd_base(x, zi);
        QD_UNROLL
        for (int r = 0; r < R; r++) {
            const uint8_t *p = row + (size_t)r * rb + (size_t)b * bsz;
            _mm_prefetch((const char *)p + ahead, _MM_HINT_T0);
            const float d = qd_f16(p);
            __m256i s;
            if (dtype == LLMOPT_DTYPE_Q8_0) {
                s = QD_DOTA_S8(base, _mm256_loadu_si256((const __m256i *)(p + 2)), x);
            } else {
                s = QD_DOTA_U4(base, qd_nib_ggml(p + hdr), x);
                if (dtype == LLMOPT_DTYPE_Q4_1) off[r] += qd_f16(p + 2) * dxs[b]; /* the block's min */
            }
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * dx[b]), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = qd_hsum(acc[r]) + off[r];
}

/* The f16 scale (and, asym, zero) at byte `at` of each of R rows, rb bytes apart: a GQ group's
 * header, read once per group by both GQ row dots. */
QD_INLINE void qd_gq_heads(const int R, const int asym, const uint8_t *row, size_t rb, size_t at, float *sc, float *z) {
    QD_UNROLL
    for (int r = 0; r < R; r++) {
        const uint8_t *p = row + (size_t)r * rb + at;
        sc[r] = qd_f16(p);
        z[r] = asym ? qd_f16(p + 2) : 0.0f;
    }
}

/* GQ 4 or 8 bits, groups of `group` (a multiple of 32): f16 scale (, f16 zero), codes. The
 * symmetric zero (8 or 128) is an integer and goes into the int32 sums; an asymmetric one is an
 * f16 and stays a scalar offset. */
QD_INLINE void qd_gq(const int bits, const int asym, const int R, int64_t group, const uint8_t *row, size_t rb,
                     const int8_t *xq, const float *dx, const float *dxs, int64_t nb, float *out) {
    const int64_t per = group / CPU_QK;
    const size_t hdr = asym ? 4 : 2, sub = (size_t)(CPU_QK * bits / 8), gsz = hdr + (size_t)per * sub;
    const size_t ahead = (size_t)R * rb;
    const int zi = (bits == 8 ? QD_U8_BIAS : 0) + (asym ? 0 : 1 << (bits - 1));
    __m256 acc[QD_MAXR];
    float off[QD_MAXR], sc[QD_MAXR], z[QD_MAXR];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps(), off[r] = 0.0f;
    for (int64_t b = 0, g = 0; b < nb; g++) {
        qd_gq_heads(R, asym, row, rb, (size_t)g * gsz, sc, z);
        for (int64_t k = 0; k < per; k++, b++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)), base = qd_base(x, zi);
            QD_UNROLL
            for (int r = 0; r < R; r++) {
                const uint8_t *p = row + (size_t)r * rb + (size_t)g * gsz + hdr + (size_t)k * sub;
                _mm_prefetch((const char *)p + ahead, _MM_HINT_T0);
                __m256i s = bits == 4 ? QD_DOTA_U4(base, qd_nib_gq(p), x)
                                      : QD_DOTA_U8(base, _mm256_loadu_si256((const __m256i *)p), x);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(sc[r] * dx[b]), acc[r]);
                if (asym) off[r] -= z[r] * sc[r] * dxs[b];
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = qd_hsum(acc[r]) + off[r];
}

/* GQ 4-bit with groups of 64k, x permuted (QD_PX_NAME): every 64 codes of x as its 32 even ones,
 * then its 32 odd ones. 32 bytes of W hold 64 codes, code 2j the low nibble of byte j and 2j + 1
 * the high one, so the low nibbles meet the first half of x and the high nibbles the second as
 * they sit, without the byte interleave qd_nib_gq does per 32 codes; int32 lanes 0-3 then sum
 * the first block of 32, lanes 4-7 the second, and each half of the lanes takes its block's dx.
 * Per 64 codes and row: one load, two masks, two dots, one FMA (qd_gq: twice the loads, the
 * interleave and the FMA). */
QD_INLINE int qd_gq4x_ok(int dtype) {
    return LLMOPT_DTYPE_IS_GQ(dtype) && LLMOPT_DTYPE_GQ_BITS(dtype) == 4 && LLMOPT_DTYPE_GQ_GROUP(dtype) % 64 == 0;
}

/* Q4_0 on x permuted (QD_PX_NAME): every 64 codes of x, two blocks, as the first 16 codes of
 * each block, then the last 16 of each. A block's 16 bytes hold element j in the low nibble of
 * byte j and j + 16 in the high one, so two blocks' bytes side by side (one 256-bit register)
 * meet the first half of that x with their low nibbles and the second with their high ones:
 * per two blocks and row, two loads, two masks, two dots and one FMA, where qd_ggml takes one
 * load, a shift, an insert, a mask, a dot and an FMA per block. Lanes 0-3 sum the first block,
 * 4-7 the second; each half takes its block's d * dx. Rows of an odd number of blocks keep
 * qd_ggml. */
QD_INLINE int qd_q40x_ok(int dtype, int64_t K) { return dtype == LLMOPT_DTYPE_Q4_0 && K % 64 == 0; }

/* cpu_qsimd.permute_x: x's codes in place, every 64 as qd_gq4x_row (evens, then odds) or qd_q40x_row
 * (each block's first 16, then each block's last 16) reads them; other dtypes read x as it is. */
QD_ATTR static void QD_PX_NAME(int dtype, int8_t *xq, int64_t K) {
    const int gq4 = qd_gq4x_ok(dtype);
    if (!gq4 && !qd_q40x_ok(dtype, K)) return;
    /* per 128-bit lane: its 8 even bytes, then its 8 odd bytes */
    const __m256i sh = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                        14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int64_t i = 0; i + 64 <= K; i += 64) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(xq + i)), c = _mm256_loadu_si256((const __m256i *)(xq + i + 32));
        if (gq4) { /* quadwords [even 0-15, odd 0-15, even 16-31, odd 16-31] -> [even 0-31, odd 0-31] */
            a = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(a, sh), _MM_SHUFFLE(3, 1, 2, 0));
            c = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(c, sh), _MM_SHUFFLE(3, 1, 2, 0));
        }
        _mm256_storeu_si256((__m256i *)(xq + i), _mm256_permute2x128_si256(a, c, 0x20));
        _mm256_storeu_si256((__m256i *)(xq + i + 32), _mm256_permute2x128_si256(a, c, 0x31));
    }
}

/* R rows at once, R a constant once inlined. */
QD_INLINE int qd_rows(const int R, int dtype, const uint8_t *row, size_t rb, const int8_t *xq, const float *dx,
                      const float *dxs, int64_t K, float *out) {
    const int64_t nb = K / CPU_QK;
    switch (dtype) {
    case LLMOPT_DTYPE_Q8_0: qd_ggml(LLMOPT_DTYPE_Q8_0, R, row, rb, xq, dx, dxs, nb, out); return 0;
    case LLMOPT_DTYPE_Q4_0: qd_ggml(LLMOPT_DTYPE_Q4_0, R, row, rb, xq, dx, dxs, nb, out); return 0; /* odd blocks */
    case LLMOPT_DTYPE_Q4_1: qd_ggml(LLMOPT_DTYPE_Q4_1, R, row, rb, xq, dx, dxs, nb, out); return 0;
    default: break;
    }
    if (!LLMOPT_DTYPE_IS_GQ(dtype) || LLMOPT_DTYPE_GQ_GROUP(dtype) % CPU_QK != 0) return -1;
    const int64_t g = LLMOPT_DTYPE_GQ_GROUP(dtype);
    const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    if (bits == 4 && !asym) qd_gq(4, 0, R, g, row, rb, xq, dx, dxs, nb, out);
    else if (bits == 4) qd_gq(4, 1, R, g, row, rb, xq, dx, dxs, nb, out);
    else if (bits == 8 && !asym) qd_gq(8, 0, R, g, row, rb, xq, dx, dxs, nb, out);
    else if (bits == 8) qd_gq(8, 1, R, g, row, rb, xq, dx, dxs, nb, out);
    else return -1;
    return 0;
}

/* The 8-bit formats (Q8_0, GQ 8-bit: int8 per channel among them) are read one row at a time,
 * with four accumulators over its blocks. They are memory-bound, and four interleaved row
 * streams read DRAM at about half the rate of one: on the 2-vCPU AMD EPYC of docs/benchmarks.md,
 * GPT-2's Q8_0 LM head (50257 x 768) streamed at ~10 GB/s per thread four rows at a time and
 * ~19 GB/s one row at a time. What the rows share is made once per call: each x block's integer
 * base, and where each block's scale and codes sit in a row (the same for every row). Q4_0 and
 * GQ 4-bit in groups of 64k go one row at a time as well (qd_rows4, below); the other 4-bit
 * cases keep the four-row path above. */
#define QD_ROW8_MAXB 512 /* rows of up to 16384 weights; longer ones take the four-row path */
#define QD_ROW8_AHEAD 1024

QD_INLINE void qd_row8(const int q80, const int asym, const uint8_t *row, const int8_t *xq, const float *dx,
                       const float *dxs, const __m256i *base, const int32_t *hoff, const int32_t *coff, int64_t nb,
                       float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float off = 0.0f;
    int64_t b = 0;
#define QD_ROW8_BLOCK(k, bb)                                                                                       \
    do {                                                                                                           \
        const uint8_t *p = row + coff[bb];                                                                         \
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (bb) * CPU_QK)), c = _mm256_loadu_si256((const __m256i *)p); \
        const __m256i s = q80 ? QD_DOTA_S8(base[bb], c, x) : QD_DOTA_U8(base[bb], c, x);                          \
        const float sc = qd_f16(row + hoff[bb]);                                                                   \
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(sc * dx[bb]), acc[k]);                      \
        if (asym) off -= qd_f16(row + hoff[bb] + 2) * sc * dxs[bb];                                                \
    } while (0)
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)row + coff[b] + QD_ROW8_AHEAD, _MM_HINT_T0);
        _mm_prefetch((const char *)row + coff[b] + QD_ROW8_AHEAD + 64, _MM_HINT_T0);
        QD_ROW8_BLOCK(0, b);
        QD_ROW8_BLOCK(1, b + 1);
        QD_ROW8_BLOCK(2, b + 2);
        QD_ROW8_BLOCK(3, b + 3);
    }
    for (; b < nb; b++) QD_ROW8_BLOCK(0, b);
#undef QD_ROW8_BLOCK
    *out = qd_hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + off;
}

/* 1 when dtype went the one-row path, 0 when it is not an 8-bit format it takes */
QD_INLINE int qd_rows8(int dtype, const uint8_t *row, size_t rb, int nrows, const int8_t *xq, const float *dx,
                       const float *dxs, int64_t K, float *out) {
    const int64_t nb = K / CPU_QK;
    const int q80 = dtype == LLMOPT_DTYPE_Q8_0;
    if (!q80 && !(LLMOPT_DTYPE_IS_GQ(dtype) && LLMOPT_DTYPE_GQ_BITS(dtype) == 8 && LLMOPT_DTYPE_GQ_GROUP(dtype) % CPU_QK == 0))
        return 0;
    if (nb > QD_ROW8_MAXB || nb == 0) return 0;
    const int asym = !q80 && LLMOPT_DTYPE_GQ_ASYM(dtype);
    __m256i base[QD_ROW8_MAXB];
    int32_t hoff[QD_ROW8_MAXB], coff[QD_ROW8_MAXB];
    const int zi = q80 ? QD_S8_BIAS : QD_U8_BIAS + (asym ? 0 : 128);
    const int64_t per = q80 ? 1 : LLMOPT_DTYPE_GQ_GROUP(dtype) / CPU_QK;
    const size_t hdr = q80 ? 2 : asym ? 4 : 2, gsz = hdr + (size_t)per * CPU_QK;
    /* group g and sub-block k of block b counted along: a 64-bit division a block was 7% of
     * the row dot's samples on a Q8_0 LM head (Zen 3); with 16 rows a call, the rest of this
     * setup is shared by four times as many rows as it was */
    for (int64_t b = 0, g = 0, k = 0; b < nb; b++) {
        base[b] = qd_base(_mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)), zi);
        hoff[b] = (int32_t)((size_t)g * gsz);
        coff[b] = hoff[b] + (int32_t)(hdr + (size_t)k * CPU_QK);
        if (++k == per) k = 0, g++;
    }
    for (int r = 0; r < nrows; r++) {
        const uint8_t *w = row + (size_t)r * rb;
        if (q80) qd_row8(1, 0, w, xq, dx, dxs, base, hoff, coff, nb, out + r);
        else if (asym) qd_row8(0, 1, w, xq, dx, dxs, base, hoff, coff, nb, out + r);
        else qd_row8(0, 0, w, xq, dx, dxs, base, hoff, coff, nb, out + r);
    }
    return 1;
}

/* The 4-bit formats that read x permuted (qd_gq4x_ok, qd_q40x_ok) one row at a time too, as the
 * 8-bit ones above: each thread then streams whole rows in order, where four rows side by side
 * (this file's first path, which these formats took before d9edb60) were four streams. What the
 * rows share is made once per call, per 64 codes: the integer base of a symmetric zero and the
 * pair of x scales, QD_ROW4_SEG chunks of 64 at a time, so rows of any length take this path.
 * Each row sums its chunks in order into one accumulator, the order the four-row path had, so
 * the results did not change by a bit. On the Zen 4 of docs/benchmarks.md (sixth session),
 * GPT-2 124M decode with a Q8_0 LM head, A/B of the plugins at 2 threads: GQ4 g128 182-224 ->
 * 210-244 tok/s, Q4_0 193-242 -> 175-267 (median 199 -> 230). */
#define QD_ROW4_SEG 256

/* GQ 4-bit, chunks [c0, c1) of one row (per chunks of 64 a group of gsz bytes) into *acc, *off:
 * per chunk one load, two masks, two dots, one FMA. */
QD_INLINE void qd_gq4x_row(const int asym, int64_t per, size_t hdr, size_t gsz, const uint8_t *row, const int8_t *xq,
                           const __m256i *base, const __m256 *dxv, const float *ds, int64_t c0, int64_t c1,
                           __m256 *acc, float *off) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 a = *acc;
    float o = *off;
    int64_t g = c0 / per, k = c0 % per;
    for (int64_t c = c0; c < c1; g++, k = 0) {
        const uint8_t *grp = row + (size_t)g * gsz;
        const float sc = qd_f16(grp), z = asym ? qd_f16(grp + 2) : 0.0f;
        for (; k < per && c < c1; k++, c++) {
            const uint8_t *p = grp + hdr + (size_t)k * 32;
            _mm_prefetch((const char *)p + QD_ROW8_AHEAD, _MM_HINT_T0);
            const __m256i w = _mm256_loadu_si256((const __m256i *)p);
            const __m256i xe = _mm256_loadu_si256((const __m256i *)(xq + c * 64)),
                          xo = _mm256_loadu_si256((const __m256i *)(xq + c * 64 + 32));
            __m256i s = QD_DOTA_U4(base[c - c0], _mm256_and_si256(w, m4), xe);
            s = QD_DOTA_U4(s, _mm256_and_si256(_mm256_srli_epi16(w, 4), m4), xo);
            a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(_mm256_set1_ps(sc), dxv[c - c0]), a);
            if (asym) o -= z * sc * ds[c - c0];
        }
    }
    *acc = a, *off = o;
}

/* Q4_0, chunks [c0, c1) of one row: two 18-byte blocks per 64 codes. */
QD_INLINE void qd_q40x_row(const uint8_t *row, const int8_t *xq, const __m256i *base, const __m256 *dxv, int64_t c0,
                           int64_t c1, __m256 *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 a = *acc;
    for (int64_t c = c0; c < c1; c++) {
        const uint8_t *p = row + (size_t)c * 36;
        _mm_prefetch((const char *)p + QD_ROW8_AHEAD, _MM_HINT_T0);
        const __m256i w = _mm256_loadu2_m128i((const __m128i *)(p + 20), (const __m128i *)(p + 2));
        const __m256i xe = _mm256_loadu_si256((const __m256i *)(xq + c * 64)),
                      xo = _mm256_loadu_si256((const __m256i *)(xq + c * 64 + 32));
        __m256i s = QD_DOTA_U4(base[c - c0], _mm256_and_si256(w, m4), xe);
        s = QD_DOTA_U4(s, _mm256_and_si256(_mm256_srli_epi16(w, 4), m4), xo);
        const __m256 d = _mm256_set_m128(_mm_set1_ps(qd_f16(p + 18)), _mm_set1_ps(qd_f16(p)));
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, dxv[c - c0]), a);
    }
    *acc = a;
}

/* Up to CPU_Q_ROWS rows of a format qd_rows4 takes. */
QD_INLINE void qd_rows4_some(const int q40, int dtype, const uint8_t *row, size_t rb, int nrows, const int8_t *xq,
                             const float *dx, const float *dxs, int64_t K, float *out) {
    const int asym = !q40 && LLMOPT_DTYPE_GQ_ASYM(dtype);
    const int64_t group = q40 ? 64 : LLMOPT_DTYPE_GQ_GROUP(dtype), per = group / 64, nc = K / 64;
    const size_t hdr = asym ? 4 : 2, gsz = hdr + (size_t)group / 2;
    const __m256i eight = _mm256_set1_epi8(8), zero = _mm256_setzero_si256();
    __m256i base[QD_ROW4_SEG];
    __m256 dxv[QD_ROW4_SEG], acc[CPU_Q_ROWS];
    float ds[QD_ROW4_SEG], off[CPU_Q_ROWS];
    for (int r = 0; r < nrows; r++) acc[r] = _mm256_setzero_ps(), off[r] = 0.0f;
    for (int64_t c0 = 0; c0 < nc; c0 += QD_ROW4_SEG) {
        const int64_t c1 = nc - c0 < QD_ROW4_SEG ? nc : c0 + QD_ROW4_SEG;
        for (int64_t c = c0; c < c1; c++) {
            const int64_t b = 2 * c;
            const __m256i xe = _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK)),
                          xo = _mm256_loadu_si256((const __m256i *)(xq + b * CPU_QK + 32));
            /* the symmetric zero 8, in the int32 sums: they start from -8 * sum(x) per lane */
            base[c - c0] = asym ? zero : _mm256_sub_epi32(zero, QD_DOTA_U4(QD_DOTA_U4(zero, eight, xe), eight, xo));
            dxv[c - c0] = _mm256_set_m128(_mm_set1_ps(dx[b + 1]), _mm_set1_ps(dx[b]));
            ds[c - c0] = asym ? dxs[b] + dxs[b + 1] : 0.0f;
        }
        for (int r = 0; r < nrows; r++) {
            const uint8_t *w = row + (size_t)r * rb;
            if (q40) qd_q40x_row(w, xq, base, dxv, c0, c1, &acc[r]);
            else if (asym) qd_gq4x_row(1, per, hdr, gsz, w, xq, base, dxv, ds, c0, c1, &acc[r], &off[r]);
            else qd_gq4x_row(0, per, hdr, gsz, w, xq, base, dxv, ds, c0, c1, &acc[r], &off[r]);
        }
    }
    for (int r = 0; r < nrows; r++) out[r] = qd_hsum(acc[r]) + off[r];
}

/* 1 when dtype went the one-row 4-bit path, 0 when it is not a format it takes (the four-row
 * path must not get these: their x is permuted) */
QD_INLINE int qd_rows4(int dtype, const uint8_t *row, size_t rb, int nrows, const int8_t *xq, const float *dx,
                       const float *dxs, int64_t K, float *out) {
    const int q40 = qd_q40x_ok(dtype, K);
    if (!(q40 || qd_gq4x_ok(dtype))) return 0;
    for (int r = 0; r < nrows; r += CPU_Q_ROWS)
        qd_rows4_some(q40, dtype, row + (size_t)r * rb, rb, nrows - r < CPU_Q_ROWS ? nrows - r : CPU_Q_ROWS, xq, dx,
                      dxs, K, out + r);
    return 1;
}

QD_ATTR static int QD_NAME(int dtype, const uint8_t *row, size_t row_bytes, int nrows, const int8_t *xq,
                           const float *dx, const float *dxs, int64_t K, float *out) {
    if (qd_rows8(dtype, row, row_bytes, nrows, xq, dx, dxs, K, out)) return 0;
    if (qd_rows4(dtype, row, row_bytes, nrows, xq, dx, dxs, K, out)) return 0;
    int r = 0;
    for (; r + QD_MAXR <= nrows; r += QD_MAXR)
        if (qd_rows(QD_MAXR, dtype, row + (size_t)r * row_bytes, row_bytes, xq, dx, dxs, K, out + r)) return -1;
    for (; r < nrows; r++)
        if (qd_rows(1, dtype, row + (size_t)r * row_bytes, row_bytes, xq, dx, dxs, K, out + r)) return -1;
    return 0;
}

/* 32 codes (bytes of u, unsigned or, when sign, int8) to f32: dst = s * code + m. */
QD_INLINE void qd_codes_f32(__m256i u, int sign, float s, float m, float *dst) {
    const __m256 vs = _mm256_set1_ps(s), vm = _mm256_set1_ps(m);
    const __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
        __m256i q = sign ? _mm256_cvtepi8_epi32(part[k]) : _mm256_cvtepu8_epi32(part[k]);
        _mm256_storeu_ps(dst + 8 * k, _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), vs, vm));
    }
}

/* One row of K weights to f32 straight from its blocks (what cpu_q_unpack_row + codes_to_f32 do
 * in two passes); -1 for the formats without a fused path (GQ 2/3 bits, groups not of 32k). */
QD_ATTR static int QD_F32_NAME(int dtype, const uint8_t *row, int64_t K, float *dst) {
    const int64_t nb = K / CPU_QK;
    if (dtype == LLMOPT_DTYPE_Q8_0) {
        for (int64_t b = 0; b < nb; b++, row += 34, dst += CPU_QK)
            qd_codes_f32(_mm256_loadu_si256((const __m256i *)(row + 2)), 1, qd_f16(row), 0.0f, dst);
        return 0;
    }
    if (dtype == LLMOPT_DTYPE_Q4_0 || dtype == LLMOPT_DTYPE_Q4_1) {
        const int q40 = dtype == LLMOPT_DTYPE_Q4_0;
        for (int64_t b = 0; b < nb; b++, row += q40 ? 18 : 20, dst += CPU_QK) {
            const float d = qd_f16(row);
            qd_codes_f32(qd_nib_ggml(row + (q40 ? 2 : 4)), 0, d, q40 ? -8.0f * d : qd_f16(row + 2), dst);
        }
        return 0;
    }
    if (!LLMOPT_DTYPE_IS_GQ(dtype) || LLMOPT_DTYPE_GQ_GROUP(dtype) % CPU_QK != 0) return -1;
    const int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    if (bits != 4 && bits != 8) return -1;
    const int64_t per = LLMOPT_DTYPE_GQ_GROUP(dtype) / CPU_QK;
    const size_t hdr = asym ? 4 : 2, sub = (size_t)(CPU_QK * bits / 8);
    for (int64_t b = 0; b < nb; row += hdr + (size_t)per * sub) {
        const float sc = qd_f16(row), z = asym ? qd_f16(row + 2) : (float)(1 << (bits - 1));
        for (int64_t k = 0; k < per; k++, b++, dst += CPU_QK) {
            const uint8_t *p = row + hdr + (size_t)k * sub;
            qd_codes_f32(bits == 4 ? qd_nib_gq(p) : _mm256_loadu_si256((const __m256i *)p), 0, sc, -z * sc, dst);
        }
    }
    return 0;
}

/* cpu_q_quantize_x in SIMD: per 32 values, d = amax / 127, codes roundf(x * (1 / d)) (half
 * away from zero: trunc, then +-1 where the dropped fraction is at least one half; the
 * fraction is exact), and their sum. Decode quantizes x once per matmul on the calling thread
 * while the others wait, and the scalar loop (libm roundf and fmaxf per value) was ~3% of a
 * 4-bit GPT-2 decode. */
QD_ATTR static void QD_QX_NAME(const float *x, int64_t K, int8_t *xq, float *dx, int32_t *xsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < K / CPU_QK; b++, x += CPU_QK, xq += CPU_QK) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h), d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4], sum = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const __m256 s = _mm256_mul_ps(v[k], vid), t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(s, t)), half, _CMP_GE_OQ);
            const __m256 r = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(sign, s))));
            q[k] = _mm256_cvtps_epi32(r); /* an integer already: exact */
            sum = _mm256_add_epi32(sum, q[k]);
        }
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)xq, _mm256_permutevar8x32_epi32(p, order));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        dx[b] = d;
        xsum[b] = _mm_cvtsi128_si32(s4);
    }
}
