/* matmul at LLMOPT_MATMUL_MEDIUM precision on AVX-512 BF16: x and W rounded to bf16 (nearest,
 * ties to even), their products summed in f32 by vdpbf16ps, which does 32 multiply-adds a vector
 * where an f32 FMA does 16. This is torch.set_float32_matmul_precision("medium")'s contract, and
 * what a bf16 checkpoint's prefill needs to run at the speed of peers that compute in bf16.
 *
 * Layout (BLIS-style): x is converted once per call into pairs of bf16 (k, k+1) as one u32,
 * rows of BG_KCP pairs per chunk of K, zero past K. W is taken in panels of BG_NR = 32 columns
 * of out (two 16-lane vectors); per chunk of K a panel is packed into [pair][32 lanes] u32
 * (BG_KCP x 128 bytes, 16 KB: it stays in L1 while every row of x passes it), from either layout
 * and from f32, f16, bf16 or NF4 (decoded by a 16-lane table permute, the product rounded as
 * any f32 weight). A micro-kernel multiplies BG_MR rows of x (broadcast pairs) with
 * the panel: 2 x BG_MR f32 accumulators, which start from out (or bias, or zero) and go back to
 * it after each chunk. Panels are split over the host's threads. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define BG_NR 32   /* columns of out in a panel: two vectors */
#define BG_MR 12   /* rows of x in a micro-kernel: 24 accumulators of 32 registers */
#define BG_KCP 128 /* pairs of k in a chunk: 256 values of K */
/* Rows of W [N, K] are prefetched this many 32-value loads ahead while a panel is packed: the
 * packer reads 16 rows at once, more streams than the hardware prefetchers keep up with. On the
 * Zen 4 guest, bench/matmul_speed's Llama 1B set ran 337/263/336 GFLOP/s without and 357/294/345
 * with (A/B interleaved; the K = 8192 shape gained most). */
#define BG_PF 8

#define BG_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))
#define BG_INLINE BG_TARGET static inline __attribute__((always_inline))

typedef struct bg_job {
    const cpu_bgemm *g;
    int64_t kp, nch; /* pairs of K, chunks of BG_KCP pairs */
    uint32_t *xb;    /* [nch][M][BG_KCP] */
    int failed;
} bg_job;

/* n f32 (n <= 32) to bf16 pairs: dst[i] = bf16(src[2i]) | bf16(src[2i+1]) << 16, zero past n. */
BG_INLINE __m512i bg_pairs_f32(const float *src, int n) {
    const __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    const __mmask16 hi = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(lo, src), b = _mm512_maskz_loadu_ps(hi, src + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

/* n f16 (n <= 16) to f32 */
BG_INLINE __m512 bg_f16x16(const uint16_t *src, int n) {
    const __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src));
}

/* NF4 (llmopt/tensor.h): a block of 64 values of a row is an f32 absmax and 32 bytes, byte j
 * holding element 2j in its high nibble and 2j + 1 in its low one. */
static const float bg_nf4_codes[16] = LLMOPT_NF4_CODES;

/* The block of NF4 row r that holds element c. */
BG_INLINE const uint8_t *bg_nf4_block(const cpu_bgemm *g, int64_t r, int64_t c) {
    return (const uint8_t *)g->w + (size_t)r * g->row_bytes + (size_t)(c / LLMOPT_NF4_BLOCK) * (4 + LLMOPT_NF4_BLOCK / 2);
}

/* The block's 16 values (code * absmax, as cpu_nf4_row_to_f32 computes them) in one vector. */
BG_INLINE __m512 bg_nf4_table(const uint8_t *blk) {
    float amax;
    memcpy(&amax, blk, 4);
    return _mm512_mul_ps(_mm512_loadu_ps(bg_nf4_codes), _mm512_set1_ps(amax));
}

/* Elements c..c+31 (c % 32 == 0) of NF4 row r as 16 bf16 pairs: the pair of byte j is its high
 * nibble's value and its low nibble's. */
BG_INLINE __m512i bg_nf4_pairs(const cpu_bgemm *g, int64_t r, int64_t c) {
    const uint8_t *blk = bg_nf4_block(g, r, c);
    const __m512 tab = bg_nf4_table(blk);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 4 + (c % 64) / 2)));
    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), tab);
    const __m512 lo = _mm512_permutexvar_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)), tab);
    const __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    const __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    return _mm512_or_si512(h, _mm512_slli_epi32(l, 16));
}

/* Elements c..c+15 (c % 16 == 0) of NF4 row r, n of them (zero past n), as bf16 in the low halves
 * of 32-bit lanes: byte j's two nibbles go to lanes 2j (high) and 2j + 1 (low). */
BG_INLINE __m512i bg_nf4_row16_lo(const cpu_bgemm *g, int64_t r, int64_t c, int n) {
    if (n <= 0) return _mm512_setzero_si512();
    const uint8_t *blk = bg_nf4_block(g, r, c);
    const __m512 tab = bg_nf4_table(blk);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)(blk + 4 + (c % 64) / 2)), dup));
    const __m512i shift = _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    const __m512i code = _mm512_and_si512(_mm512_srlv_epi32(b, shift), _mm512_set1_epi32(15));
    const __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    return _mm512_maskz_cvtepu16_epi32(m, (__m256i)_mm512_cvtneps_pbh(_mm512_permutexvar_ps(code, tab)));
}

/* n values (n <= 32) of a row of W, of dtype wt, as 16 bf16 pairs (zero past n). */
BG_INLINE __m512i bg_row_pairs(const void *w, int wt, int64_t at, int n) {
    if (wt == LLMOPT_DTYPE_F32) return bg_pairs_f32((const float *)w + at, n);
    const uint16_t *h = (const uint16_t *)w + at;
    if (wt == LLMOPT_DTYPE_BF16) {
        const __mmask32 m = n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1);
        return _mm512_maskz_loadu_epi16(m, h);
    }
    const __m512 a = bg_f16x16(h, n), b = bg_f16x16(h + 16, n > 16 ? n - 16 : 0);
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

/* n values (n <= 16) of a row of W [K, N] as 16 bf16 in the low halves of 32-bit lanes. */
BG_INLINE __m512i bg_row16_lo(const void *w, int wt, int64_t at, int n) {
    const __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    __m256i h;
    if (wt == LLMOPT_DTYPE_BF16) h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + at);
    else if (wt == LLMOPT_DTYPE_F32) h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, (const float *)w + at));
    else h = (__m256i)_mm512_cvtneps_pbh(bg_f16x16((const uint16_t *)w + at, n));
    return _mm512_cvtepu16_epi32(h);
}

/* r[i] lane j becomes r[j] lane i (16 x 16 u32): within 128-bit lanes by unpacks, then lanes
 * across vectors by shuffle_i32x4. */
BG_INLINE void bg_transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);     /* a0 b0 a1 b1 per 128-bit lane */
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]); /* a2 b2 a3 b3 */
    }
    for (int i = 0; i < 16; i += 4) {                      /* u[i + j]: column 4L + j of rows i..i+3 */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xee);
        const __m512i w0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
        const __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xee);
        r[j] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        r[8 + j] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
}

/* Rows of x [m0, m1) into their pairs, every chunk. */
BG_TARGET static void bg_pack_x(void *arg, int64_t m0, int64_t m1) {
    bg_job *j = arg;
    const cpu_bgemm *g = j->g;
    for (int64_t m = m0; m < m1; m++) {
        const float *x = g->x + m * g->K;
        for (int64_t c = 0; c < j->nch; c++) {
            uint32_t *dst = j->xb + (c * g->M + m) * BG_KCP;
            for (int p = 0; p < BG_KCP; p += 16) {
                const int64_t k = (c * BG_KCP + p) * 2;
                const int n = k >= g->K ? 0 : g->K - k < 32 ? (int)(g->K - k) : 32;
                _mm512_storeu_si512((void *)(dst + p), bg_pairs_f32(x + k, n));
            }
        }
    }
}

/* Columns [n0, n0 + cols) of W, pairs [p0, p0 + np) of K, into wp[p][32]: zero past cols. */
BG_TARGET static void bg_pack_w(const cpu_bgemm *g, int64_t n0, int cols, int64_t p0, int np, uint32_t *wp) {
    const int64_t K = g->K, k0 = p0 * 2;
    if (g->layout == LLMOPT_W_IN_OUT) {
        /* rows k and k+1 of W [K, N]: lane r pairs W[k][n0+r] with W[k+1][n0+r] */
        for (int p = 0; p < np; p++) {
            const int64_t k = k0 + 2 * p;
            for (int h = 0; h < BG_NR; h += 16) {
                const int n = cols - h > 16 ? 16 : cols - h > 0 ? cols - h : 0;
                __m512i a, b = _mm512_setzero_si512();
                if (g->wt == LLMOPT_DTYPE_NF4) {
                    a = bg_nf4_row16_lo(g, k, n0 + h, n);
                    if (k + 1 < K) b = bg_nf4_row16_lo(g, k + 1, n0 + h, n);
                } else {
                    a = bg_row16_lo(g->w, g->wt, k * g->N + n0 + h, n);
                    if (k + 1 < K) b = bg_row16_lo(g->w, g->wt, (k + 1) * g->N + n0 + h, n);
                }
                _mm512_store_si512((void *)(wp + p * BG_NR + h), _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
            }
        }
        return;
    }
    /* W [N, K]: 16 rows by 16 pairs at a time, transposed in registers so that each pair of
     * the 16 rows is one store (the panel's lanes h..h+15); rows past cols are zero */
    for (int h = 0; h < BG_NR; h += 16)
        for (int p = 0; p < np; p += 16) {
            const int64_t k = k0 + 2 * p;
            const int n = K - k < 32 ? (int)(K - k) : 32;
            const int64_t es = g->wt == LLMOPT_DTYPE_F32 ? 4 : 2;
            __m512i r[16];
            if (g->wt == LLMOPT_DTYPE_NF4) { /* K % 64 == 0: n is 32 */
                for (int i = 0; i < 16; i++) {
                    if (h + i < cols && k + 64 * BG_PF < K)
                        _mm_prefetch((const char *)bg_nf4_block(g, n0 + h + i, k + 64 * BG_PF), _MM_HINT_T0);
                    r[i] = h + i < cols ? bg_nf4_pairs(g, n0 + h + i, k) : _mm512_setzero_si512();
                }
            } else {
                for (int i = 0; i < 16; i++) {
                    if (h + i < cols && k + 32 * BG_PF < K)
                        _mm_prefetch((const char *)g->w + ((n0 + h + i) * K + k + 32 * BG_PF) * es, _MM_HINT_T0);
                    r[i] = h + i < cols ? bg_row_pairs(g->w, g->wt, (n0 + h + i) * K + k, n) : _mm512_setzero_si512();
                }
            }
            bg_transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_store_si512((void *)(wp + (p + i) * BG_NR + h), r[i]);
        }
}

/* R rows of x from m0 against the panel over np pairs of chunk c: acc from out (or bias or zero
 * in the first chunk), back to out's first cols columns. */
BG_INLINE void bg_kernel(const int R, const bg_job *j, int64_t m0, int64_t n0, int cols, int64_t c, int np,
                         const uint32_t *wp) {
    const cpu_bgemm *g = j->g;
    const __mmask16 k0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    const __mmask16 k1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    const int first = c == 0, from_out = !first || g->accumulate;
    __m512 acc[BG_MR][2];
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (first && g->bias) {
        b0 = _mm512_maskz_loadu_ps(k0, g->bias + n0);
        b1 = _mm512_maskz_loadu_ps(k1, g->bias + n0 + 16);
    }
    for (int r = 0; r < R; r++) {
        const float *o = g->out + (m0 + r) * g->N + n0;
        acc[r][0] = from_out ? _mm512_add_ps(_mm512_maskz_loadu_ps(k0, o), b0) : b0;
        acc[r][1] = from_out ? _mm512_add_ps(_mm512_maskz_loadu_ps(k1, o + 16), b1) : b1;
    }
    const uint32_t *x = j->xb + (c * g->M + m0) * BG_KCP;
    for (int p = 0; p < np; p++) {
        const __m512bh w0 = (__m512bh)_mm512_load_si512((const void *)(wp + p * BG_NR));
        const __m512bh w1 = (__m512bh)_mm512_load_si512((const void *)(wp + p * BG_NR + 16));
        for (int r = 0; r < R; r++) {
            const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[r * BG_KCP + p]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
        }
    }
    for (int r = 0; r < R; r++) {
        float *o = g->out + (m0 + r) * g->N + n0;
        _mm512_mask_storeu_ps(o, k0, acc[r][0]);
        _mm512_mask_storeu_ps(o + 16, k1, acc[r][1]);
    }
}

BG_TARGET static void bg_rows(const bg_job *j, int64_t n0, int cols, int64_t c, int np, const uint32_t *wp) {
    const int64_t M = j->g->M;
    for (int64_t m = 0; m < M; m += BG_MR) {
        const int r = M - m < BG_MR ? (int)(M - m) : BG_MR;
        switch (r) {
#define BG_K(R) \
    case R: bg_kernel(R, j, m, n0, cols, c, np, wp); break
            BG_K(12); BG_K(11); BG_K(10); BG_K(9); BG_K(8); BG_K(7);
            BG_K(6); BG_K(5); BG_K(4); BG_K(3); BG_K(2); BG_K(1);
#undef BG_K
        }
    }
}

static void bg_panels(void *arg, int64_t q0, int64_t q1) {
    bg_job *j = arg;
    const cpu_bgemm *g = j->g;
    uint32_t *wp = aligned_alloc(64, (size_t)BG_KCP * BG_NR * sizeof(uint32_t));
    if (!wp) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t q = q0; q < q1; q++) {
        const int64_t n0 = q * BG_NR;
        const int cols = g->N - n0 < BG_NR ? (int)(g->N - n0) : BG_NR;
        for (int64_t c = 0; c < j->nch; c++) {
            const int np = j->kp - c * BG_KCP < BG_KCP ? (int)(j->kp - c * BG_KCP) : BG_KCP;
            bg_pack_w(g, n0, cols, c * BG_KCP, np, wp);
            bg_rows(j, n0, cols, c, np, wp);
        }
    }
    free(wp);
}

int cpu_bf16_gemm(const cpu_bgemm *g) {
    bg_job j = {.g = g, .kp = (g->K + 1) / 2};
    j.nch = (j.kp + BG_KCP - 1) / BG_KCP;
    j.xb = aligned_alloc(64, (size_t)(j.nch * g->M) * BG_KCP * sizeof(uint32_t));
    if (!j.xb) return LLMOPT_ENOMEM;
    cpu_api->parallel_for(g->M, (16384 + g->K - 1) / g->K, bg_pack_x, &j);
    cpu_api->parallel_for((g->N + BG_NR - 1) / BG_NR, 1, bg_panels, &j);
    free(j.xb);
    return __atomic_load_n(&j.failed, __ATOMIC_RELAXED) ? LLMOPT_ENOMEM : 0;
}

int cpu_bf16_gemm_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

#else
int cpu_bf16_gemm(const cpu_bgemm *g) {
    (void)g;
    return LLMOPT_EUNSUPPORTED;
}

int cpu_bf16_gemm_supported(void) { return 0; }
#endif
