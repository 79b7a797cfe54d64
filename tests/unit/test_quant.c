/* Reference quantization (host/runtime/quant.c) and the traits of quantized dtypes. The ggml
 * blocks are pinned byte by byte against blocks derived by hand from ggml's rules
 * (ggml-quants.c, quantize_row_q8_0_ref / q4_0_ref / q4_1_ref): a change in rounding, in the
 * choice of scale or in nibble order shows up as a wrong byte. GQ blocks follow quant.h's rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <cmocka.h>

#include "runtime/quant.h"
#include "runtime/runtime.h"

static void assert_bytes(const uint8_t *got, const uint8_t *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) fail_msg("%s: byte %zu is 0x%02x, expected 0x%02x", what, i, got[i], want[i]);
}

/* ---- ggml blocks, by hand ---- */

static void q8_0_block_is_f16_amax_over_127_and_roundf_codes(void **state) {
    (void)state;
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16);
    uint8_t b[34];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_Q8_0, x, b, 32), 0);
    /* amax 16: d = 16/127 = 0.12598 = 2^-3 * 1.00787; mantissa 0.00787*1024 = 8.06 -> 8: 0x3008 */
    assert_int_equal(b[0] | b[1] << 8, 0x3008);
    /* id = 127/16 = 7.9375; q = roundf((j-16) * 7.9375): -127 at j=0, -119 at j=1, -63.5 -> -64
     * (half away from zero) at j=8, 0 at j=16, 8 at j=17, 119 at j=31 */
    assert_int_equal((int8_t)b[2 + 0], -127);
    assert_int_equal((int8_t)b[2 + 1], -119);
    assert_int_equal((int8_t)b[2 + 8], -64);
    assert_int_equal((int8_t)b[2 + 16], 0);
    assert_int_equal((int8_t)b[2 + 17], 8);
    assert_int_equal((int8_t)b[2 + 24], 64);
    assert_int_equal((int8_t)b[2 + 31], 119);
    float y[32];
    assert_int_equal(q_dequantize_row(LLMOPT_DTYPE_Q8_0, b, y, 32), 0);
    assert_true(y[17] == 8.0f * q_f16_to_f32(0x3008)); /* w = d * q */
}

static void q4_0_block_takes_d_from_the_signed_max_and_truncates_after_adding_8_5(void **state) {
    (void)state;
    float x[32] = {0};
    /* max magnitude 4 (positive): d = 4 / -8 = -0.5 (f16 0xb800), id = -2.
     * q = min(15, (int8)(x*id + 8.5)): 4 -> 0.5 -> 0; -3.9 -> 16.3 -> 16 -> 15 (clamped);
     * 0 -> 8; 1 -> 6.5 -> 6; 0.3 -> 7.9 -> 7; x16 = -1 -> 10.5 -> 10; x17 = 2 -> 4.5 -> 4 */
    x[0] = 4.0f, x[1] = -3.9f, x[3] = 1.0f, x[4] = 0.3f, x[16] = -1.0f, x[17] = 2.0f;
    uint8_t b[18];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_Q4_0, x, b, 32), 0);
    /* byte j: element j in the low nibble, element j+16 in the high one */
    const uint8_t want[18] = {0x00, 0xb8, 0xa0, 0x4f, 0x88, 0x86, 0x87, 0x88, 0x88, 0x88,
                              0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
    assert_bytes(b, want, 18, "q4_0");
    float y[32];
    assert_int_equal(q_dequantize_row(LLMOPT_DTYPE_Q4_0, b, y, 32), 0);
    assert_true(y[0] == 4.0f && y[1] == -3.5f && y[3] == 1.0f && y[4] == 0.5f && y[16] == -1.0f);
}

static void q4_0_keeps_the_first_of_two_equal_magnitudes(void **state) {
    (void)state;
    float x[32] = {-2.0f, 2.0f};
    uint8_t b[18];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_Q4_0, x, b, 32), 0);
    /* max = -2 (strict < keeps the first): d = 0.25 (0x3400), id = 4; x1 = 2 -> 16.5 -> 15 */
    assert_int_equal(b[0] | b[1] << 8, 0x3400);
    assert_int_equal(b[2], 0x80); /* element 0: -8 + 8.5 -> 0; element 16: 0 -> 8 */
    assert_int_equal(b[3], 0x8f);
}

static void q4_1_block_stores_range_over_15_and_the_min(void **state) {
    (void)state;
    float x[32] = {0};
    /* min -1, max 2: d = 3/15 = 0.2 = 2^-3 * 1.6 -> mantissa 614.4 -> 614: 0x3266; m = -1: 0xbc00.
     * q = min(15, (int8)((x+1)*5 + 0.5)): -1 -> 0; 2 -> 15; 0 -> 5; 0.5 -> 8; x16 = 1 -> 10;
     * x17 = -0.5 -> 3 */
    x[0] = -1.0f, x[1] = 2.0f, x[3] = 0.5f, x[16] = 1.0f, x[17] = -0.5f;
    uint8_t b[20];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_Q4_1, x, b, 32), 0);
    const uint8_t want[20] = {0x66, 0x32, 0x00, 0xbc, 0xa0, 0x3f, 0x55, 0x58, 0x55, 0x55,
                              0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55};
    assert_bytes(b, want, 20, "q4_1");
}

/* ---- GQ blocks, by the rules of quant.h ---- */

static void gq4_sym_block_rounds_the_scale_up_to_f16_and_packs_codes_low_nibble_first(void **state) {
    (void)state;
    const int dt = LLMOPT_DTYPE_GQ(4, 8, 0);
    const float x[8] = {0.7f, -0.7f, 0.35f, 0.0f, 0.1f, -0.05f, 0.7f, 0.0f};
    uint8_t b[6];
    assert_int_equal(q_quantize_row(dt, x, b, 8), 0);
    /* amax/7 = 0.1 = 2^-4 * 1.6: nearest f16 mantissa 614 is below 0.1, so up: 615 -> 0x2e67
     * (0.1000366). q = roundf(x/scale) + 8: 15, 1, 11 (3.4987), 8, 9, 8 (-0.4998), 15, 8 */
    const uint8_t want[6] = {0x67, 0x2e, 0x1f, 0x8b, 0x89, 0x8f};
    assert_bytes(b, want, 6, "gq4g8s");
}

static void gq2_asym_block_includes_zero_in_the_range(void **state) {
    (void)state;
    const int dt = LLMOPT_DTYPE_GQ(2, 4, 1);
    const float x[4] = {-1.0f, 0.5f, 2.0f, 0.0f};
    uint8_t b[5];
    assert_int_equal(q_quantize_row(dt, x, b, 4), 0);
    /* scale = (2 - -1)/3 = 1 (0x3c00), zero = roundf(1/1) = 1 (0x3c00); q = roundf(x) + 1:
     * 0, 2 (0.5 rounds away from zero), 3, 1 -> bits 0|2<<2|3<<4|1<<6 = 0x78 */
    const uint8_t want[5] = {0x00, 0x3c, 0x00, 0x3c, 0x78};
    assert_bytes(b, want, 5, "gq2g4a");
    float y[4];
    assert_int_equal(q_dequantize_row(dt, b, y, 4), 0);
    assert_true(y[0] == -1.0f && y[1] == 1.0f && y[2] == 2.0f && y[3] == 0.0f);
}

static void gq3_codes_cross_byte_boundaries_little_endian(void **state) {
    (void)state;
    const int dt = LLMOPT_DTYPE_GQ(3, 8, 0);
    const float x[8] = {3, -3, 1, 2, -1, 0, -2, 3};
    uint8_t b[5];
    assert_int_equal(q_quantize_row(dt, x, b, 8), 0);
    /* scale = 3/3 = 1; q = x + 4 = 7,1,5,6,3,4,2,7 at bits 0,3,...,21: 0xea3d4f */
    const uint8_t want[5] = {0x00, 0x3c, 0x4f, 0x3d, 0xea};
    assert_bytes(b, want, 5, "gq3g8s");
}

/* ---- round trips ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* roughly N(0,1): sum of 4 uniforms, plus an outlier now and then */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
        s += (float)((double)((g_rng * 2685821657736338717ull) >> 40) / (double)(1ull << 24)) - 0.5f;
    }
    return s * 1.7f;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* The largest |w - dequant(quant(w))| each block allows, from its stored header. */
static double block_bound(int dt, const uint8_t *blk, const float *x, int64_t n) {
    double d = fabs(q_f16_to_f32(get16(blk)));
    if (dt == LLMOPT_DTYPE_Q8_0) return d * (0.5 + 127.0 / 1024);      /* q from f32 d, f16 d stored */
    if (dt == LLMOPT_DTYPE_Q4_0) return d * (1.0 + 8.0 / 1024);        /* the far side clamps at 15 */
    if (dt == LLMOPT_DTYPE_Q4_1) {
        float mn = x[0];
        for (int64_t j = 1; j < n; j++) mn = fminf(mn, x[j]);
        return d * (0.5 + 15.0 / 1024) + fabs(mn) / 1024;
    }
    return d * 0.5 * (1 + 1e-6) + 1e-12;                               /* GQ: scale/2, by design */
}

static void every_type_dequantizes_within_its_bound(void **state) {
    (void)state;
    const int types[] = {LLMOPT_DTYPE_Q8_0, LLMOPT_DTYPE_Q4_0, LLMOPT_DTYPE_Q4_1,
                         LLMOPT_DTYPE_GQ(8, 32, 0), LLMOPT_DTYPE_GQ(8, 256, 1), LLMOPT_DTYPE_GQ(4, 128, 0),
                         LLMOPT_DTYPE_GQ(4, 32, 1), LLMOPT_DTYPE_GQ(3, 64, 0), LLMOPT_DTYPE_GQ(3, 8, 1),
                         LLMOPT_DTYPE_GQ(2, 128, 1), LLMOPT_DTYPE_GQ(2, 4, 0)};
    enum { K = 256, ROWS = 8 };
    float x[K], y[K];
    uint8_t blocks[K * 2];
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const llmopt_dtype_traits *tr = rt_dtype_traits(types[t]);
        assert_non_null(tr);
        for (int r = 0; r < ROWS; r++) {
            for (int k = 0; k < K; k++) x[k] = frand() * (r == 0 ? 1e-3f : 1.0f) + (r == 1 ? 3.0f : 0.0f);
            if (r == 2) memset(x, 0, sizeof x); /* zeros stay zeros */
            assert_int_equal(q_quantize_row(types[t], x, blocks, K), 0);
            assert_int_equal(q_dequantize_row(types[t], blocks, y, K), 0);
            for (int64_t b = 0; b < K / tr->block_size; b++) {
                const uint8_t *blk = blocks + b * tr->type_size;
                const float *xb = x + b * tr->block_size;
                double bound = block_bound(types[t], blk, xb, tr->block_size);
                for (int64_t j = 0; j < tr->block_size; j++) {
                    double err = fabs((double)xb[j] - y[b * tr->block_size + j]);
                    if (!(err <= bound))
                        fail_msg("%s row %d element %lld: |%g - %g| = %g > %g", tr->name, r,
                                 (long long)(b * tr->block_size + j), xb[j], y[b * tr->block_size + j], err, bound);
                }
            }
        }
    }
}

static void f16_conversion_rounds_to_nearest_even(void **state) {
    (void)state;
    assert_int_equal(q_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(q_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(q_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(q_f32_to_f16(ldexpf(1, -24)), 0x0001);
    assert_int_equal(q_f32_to_f16(ldexpf(1, -25)), 0x0000);
    assert_int_equal(q_f32_to_f16(ldexpf(3, -25)), 0x0002);
    assert_int_equal(q_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);
    assert_int_equal(q_f32_to_f16(1.0f + ldexpf(3, -11)), 0x3c02);
    assert_int_equal(q_f32_to_f16(-2.0f), 0xc000);
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = q_f16_to_f32((uint16_t)h);
        if (!isnan(f) && q_f32_to_f16(f) != h) fail_msg("f16 0x%04x does not round-trip", h);
    }
}

/* ---- tensors ---- */

static llmopt_tensor *random_weight(int dtype, int64_t rows, int64_t cols) {
    llmopt_tensor *w = rt_tensor_new(dtype, 2, (int64_t[]){rows, cols});
    assert_non_null(w);
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = frand();
        if (dtype == LLMOPT_DTYPE_F32) ((float *)w->data)[i] = v;
        else if (dtype == LLMOPT_DTYPE_F16) ((uint16_t *)w->data)[i] = q_f32_to_f16(v);
        else { uint32_t u; memcpy(&u, &v, 4); ((uint16_t *)w->data)[i] = (uint16_t)(u >> 16); }
    }
    return w;
}

static void tensors_quantize_row_by_row_from_f32_f16_and_bf16(void **state) {
    (void)state;
    const int src[] = {LLMOPT_DTYPE_F32, LLMOPT_DTYPE_F16, LLMOPT_DTYPE_BF16};
    const int dt = LLMOPT_DTYPE_GQ(4, 64, 1);
    for (int s = 0; s < 3; s++) {
        llmopt_tensor *w = random_weight(src[s], 5, 128), *q = NULL, *f = NULL;
        llmopt_error err;
        error_clear(&err);
        assert_int_equal(q_quantize_tensor(w, dt, &q, &err), 0);
        assert_int_equal(q->dtype, dt);
        assert_int_equal(q->shape[0], 5);
        assert_int_equal(q->shape[1], 128);
        assert_int_equal(q->nbytes, 5 * 2 * (4 + 32));
        assert_int_equal(q_dequantize_tensor(q, &f, &err), 0);
        assert_int_equal(f->dtype, LLMOPT_DTYPE_F32);
        /* row 3 of the tensor is the row quantizer's output for row 3 of the source */
        float row[128], y[128];
        uint8_t blk[72];
        for (int k = 0; k < 128; k++) {
            int64_t i = 3 * 128 + k;
            if (src[s] == LLMOPT_DTYPE_F32) row[k] = ((float *)w->data)[i];
            else if (src[s] == LLMOPT_DTYPE_F16) row[k] = q_f16_to_f32(((uint16_t *)w->data)[i]);
            else { uint32_t u = (uint32_t)((uint16_t *)w->data)[i] << 16; memcpy(&row[k], &u, 4); }
        }
        q_quantize_row(dt, row, blk, 128);
        assert_memory_equal((uint8_t *)q->data + 3 * 72, blk, 72);
        q_dequantize_row(dt, blk, y, 128);
        assert_memory_equal((float *)f->data + 3 * 128, y, sizeof y);
        rt_tensor_unref(w);
        rt_tensor_unref(q);
        rt_tensor_unref(f);
    }
}

static void quantizing_a_row_that_is_not_whole_blocks_names_both_lengths(void **state) {
    (void)state;
    llmopt_tensor *w = random_weight(LLMOPT_DTYPE_F32, 2, 48), *q = NULL;
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(q_quantize_tensor(w, LLMOPT_DTYPE_Q4_0, &q, &err), LLMOPT_EINVAL);
    assert_null(q);
    if (!strstr(err.msg, "48") || !strstr(err.msg, "32")) fail_msg("message: %s", err.msg);
    assert_int_equal(q_quantize_tensor(w, LLMOPT_DTYPE_GQ(4, 128, 0), &q, &err), LLMOPT_EINVAL);
    if (!strstr(err.msg, "48") || !strstr(err.msg, "128")) fail_msg("message: %s", err.msg);
    assert_int_equal(q_quantize_tensor(w, LLMOPT_DTYPE_F16, &q, &err), LLMOPT_EINVAL);
    assert_int_equal(q_dequantize_tensor(w, &q, &err), LLMOPT_EINVAL); /* f32 is not quantized */
    llmopt_tensor *v = rt_tensor_new(LLMOPT_DTYPE_F32, 1, (int64_t[]){64});
    assert_int_equal(q_quantize_tensor(v, LLMOPT_DTYPE_Q8_0, &q, &err), LLMOPT_EINVAL);
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_Q8_0, (float[40]){0}, (uint8_t[64]){0}, 40), LLMOPT_EINVAL);
    rt_tensor_unref(w);
    rt_tensor_unref(v);
}

/* ---- GQ traits and names ---- */

static void gq_traits_give_group_elements_per_block_and_header_plus_codes_bytes(void **state) {
    (void)state;
    const struct { int dt; int64_t block; size_t size; const char *name; } cases[] = {
        {LLMOPT_DTYPE_GQ(4, 128, 0), 128, 2 + 64, "gq4g128s"},
        {LLMOPT_DTYPE_GQ(4, 32, 1), 32, 4 + 16, "gq4g32a"},
        {LLMOPT_DTYPE_GQ(3, 32, 0), 32, 2 + 12, "gq3g32s"},
        {LLMOPT_DTYPE_GQ(2, 64, 1), 64, 4 + 16, "gq2g64a"},
        {LLMOPT_DTYPE_GQ(8, 768, 0), 768, 2 + 768, "gq8g768s"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const llmopt_dtype_traits *t = rt_dtype_traits(cases[i].dt);
        assert_non_null(t);
        assert_int_equal(t->block_size, cases[i].block);
        assert_int_equal(t->type_size, cases[i].size);
        assert_true(t->is_quantized);
        assert_string_equal(t->name, cases[i].name);
        assert_ptr_equal(rt_dtype_traits(cases[i].dt), t); /* cached: one stable pointer */
        assert_int_equal(rt_dtype_from_name(cases[i].name), cases[i].dt);
        assert_null(rt_dtype_safetensors_name(cases[i].dt));
    }
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_GQ(4, 128, 0), 2, (int64_t[]){10, 256}), 10 * 2 * 66);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_GQ(4, 128, 0), 2, (int64_t[]){10, 200}), 0);
    assert_int_equal(rt_dtype_from_name("q4_0"), LLMOPT_DTYPE_Q4_0);
}

static void invalid_gq_parameters_have_no_traits_and_no_name(void **state) {
    (void)state;
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_GQ(5, 32, 0)));   /* bits not in {2,3,4,8} */
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_GQ(1, 32, 0)));
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_GQ(4, 0, 0)));    /* empty group */
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_GQ(3, 4, 1)));    /* 12 bits: not whole bytes */
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_GQ(2, 2, 0)));
    assert_null(rt_dtype_traits(LLMOPT_DTYPE_GQ(4, 32, 0) | 32 << 24));  /* bits field 36 */
    const char *bad[] = {"gq5g32s", "gq4g0s", "gq4g32x", "gq4g032s", "gq3g4s", "gq4g32", "gq4g32sx",
                         "gq-4g32s", "gq 4g32s", "gqg32s", "gq4g+32s", "gq4g99999999999s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (rt_dtype_from_name(bad[i]) != -1) fail_msg("'%s' parsed as a dtype", bad[i]);
    assert_null(rt_tensor_new(LLMOPT_DTYPE_GQ(5, 32, 0), 2, (int64_t[]){1, 32}));
}

static void *traits_worker(void *arg) {
    const llmopt_dtype_traits **seen = arg;
    for (int g = 1; g <= 40; g++) seen[g] = rt_dtype_traits(LLMOPT_DTYPE_GQ(8, 1000 + g, 0));
    return NULL;
}

static void gq_traits_are_made_once_when_threads_race(void **state) {
    (void)state;
    enum { T = 4 };
    const llmopt_dtype_traits *seen[T][41];
    pthread_t th[T];
    for (int i = 0; i < T; i++) assert_int_equal(pthread_create(&th[i], NULL, traits_worker, seen[i]), 0);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    for (int g = 1; g <= 40; g++) {
        assert_non_null(seen[0][g]);
        assert_int_equal(seen[0][g]->block_size, 1000 + g);
        for (int i = 1; i < T; i++) assert_ptr_equal(seen[i][g], seen[0][g]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(q8_0_block_is_f16_amax_over_127_and_roundf_codes),
        cmocka_unit_test(q4_0_block_takes_d_from_the_signed_max_and_truncates_after_adding_8_5),
        cmocka_unit_test(q4_0_keeps_the_first_of_two_equal_magnitudes),
        cmocka_unit_test(q4_1_block_stores_range_over_15_and_the_min),
        cmocka_unit_test(gq4_sym_block_rounds_the_scale_up_to_f16_and_packs_codes_low_nibble_first),
        cmocka_unit_test(gq2_asym_block_includes_zero_in_the_range),
        cmocka_unit_test(gq3_codes_cross_byte_boundaries_little_endian),
        cmocka_unit_test(every_type_dequantizes_within_its_bound),
        cmocka_unit_test(f16_conversion_rounds_to_nearest_even),
        cmocka_unit_test(tensors_quantize_row_by_row_from_f32_f16_and_bf16),
        cmocka_unit_test(quantizing_a_row_that_is_not_whole_blocks_names_both_lengths),
        cmocka_unit_test(gq_traits_give_group_elements_per_block_and_header_plus_codes_bytes),
        cmocka_unit_test(invalid_gq_parameters_have_no_traits_and_no_name),
        cmocka_unit_test(gq_traits_are_made_once_when_threads_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
