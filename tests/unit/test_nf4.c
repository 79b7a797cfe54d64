/* The NF4 dtype (QLoRA, Dettmers et al. 2023, section 3) in the host: its traits and name, the
 * exact 16-value table (bitsandbytes' NF4 values, typed in here from the paper's reference code,
 * not from our header), nearest-code rounding, the f32 absmax of each block of 64, the nibble
 * order (element 2j high, 2j+1 low, as bitsandbytes packs), and whole-tensor round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "runtime/quant.h"
#include "runtime/runtime.h"

/* bitsandbytes' NF4 table (functional.py get_4bit_type('nf4'), csrc nf4 data). */
static const double paper_nf4[16] = {
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0};

static float block_absmax(const uint8_t *b) {
    float a;
    memcpy(&a, b, 4);
    return a;
}

static unsigned code_at(const uint8_t *b, int j) { return j % 2 == 0 ? b[4 + j / 2] >> 4 : b[4 + j / 2] & 15u; }

static void nf4_traits_are_blocks_of_64_in_36_bytes_named_nf4(void **state) {
    (void)state;
    const llmopt_dtype_traits *t = rt_dtype_traits(LLMOPT_DTYPE_NF4);
    assert_non_null(t);
    assert_string_equal(t->name, "nf4");
    assert_int_equal(t->block_size, 64);
    assert_int_equal(t->type_size, 36);
    assert_true(t->is_quantized);
    assert_int_equal(rt_dtype_from_name("nf4"), LLMOPT_DTYPE_NF4);
    assert_int_equal(LLMOPT_DTYPE_NF4, 10); /* appended after Q4_1; values are ABI */
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_NF4, 2, (int64_t[]){3, 128}), 3 * 2 * 36);
    assert_int_equal(rt_dtype_nbytes(LLMOPT_DTYPE_NF4, 2, (int64_t[]){3, 96}), 0);
}

static void nf4_code_table_is_exactly_the_qlora_papers(void **state) {
    (void)state;
    for (unsigned i = 0; i < 16; i++) {
        if (q_nf4_value(i) != (float)paper_nf4[i])
            fail_msg("NF4 code %u is %.17g, the paper's table has %.17g", i, (double)q_nf4_value(i), paper_nf4[i]);
        if (i > 0) assert_true(q_nf4_value(i) > q_nf4_value(i - 1));
    }
    assert_true(q_nf4_value(7) == 0.0f); /* an exact zero */
}

static void every_code_value_rounds_to_itself(void **state) {
    (void)state;
    for (unsigned i = 0; i < 16; i++) assert_int_equal(q_nf4_nearest((float)paper_nf4[i]), i);
}

static void normalized_weights_go_to_the_nearest_code_and_exact_ties_to_the_lower(void **state) {
    (void)state;
    int ties = 0;
    for (unsigned i = 0; i < 15; i++) {
        double mid = (paper_nf4[i] + paper_nf4[i + 1]) / 2.0;
        float below = nextafterf((float)mid, -2.0f), above = nextafterf((float)mid, 2.0f);
        if ((double)below > mid) below = nextafterf(below, -2.0f);
        if ((double)above <= mid) above = nextafterf(above, 2.0f);
        assert_int_equal(q_nf4_nearest(below), i);
        assert_int_equal(q_nf4_nearest(above), i + 1);
        /* an exact tie (six midpoints are floats) takes the lower code, as bitsandbytes' '>' */
        if ((double)(float)mid == mid) assert_int_equal(q_nf4_nearest((float)mid), i), ties++;
        /* a brute-force nearest over the table agrees at points across the interval */
        for (int s = 0; s <= 8; s++) {
            float x = (float)(paper_nf4[i] + (paper_nf4[i + 1] - paper_nf4[i]) * s / 8.0);
            unsigned best = 0;
            for (unsigned c = 1; c < 16; c++)
                if (fabs((double)x - paper_nf4[c]) < fabs((double)x - paper_nf4[best])) best = c;
            assert_int_equal(q_nf4_nearest(x), best);
        }
    }
    assert_int_equal(ties, 6);
    /* outside [-1, 1] (not produced by absmax scaling, but defined): the end codes */
    assert_int_equal(q_nf4_nearest(-3.0f), 0);
    assert_int_equal(q_nf4_nearest(3.0f), 15);
}

static void block_stores_the_f32_absmax_and_packs_element_2j_in_the_high_nibble(void **state) {
    (void)state;
    float x[64];
    for (int j = 0; j < 64; j++) x[j] = 0.0f;
    x[0] = 0.5f;      /* 0.5 / 2.5 = 0.2: nearest is 0.16093 (code 9) */
    x[1] = -2.5f;     /* the absmax, negative: code 0 */
    x[2] = 2.5f * 0.7229568362236023f; /* exactly a code: 14 */
    x[63] = 1.0e-3f;  /* 0.0004: code 7 (zero) */
    uint8_t b[36];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_NF4, x, b, 64), 0);
    assert_true(block_absmax(b) == 2.5f);
    assert_int_equal(b[4], 9 << 4 | 0);  /* element 0 high, element 1 low */
    assert_int_equal(code_at(b, 2), 14);
    assert_int_equal(code_at(b, 3), 7);
    assert_int_equal(code_at(b, 63), 7);
    float y[64];
    assert_int_equal(q_dequantize_row(LLMOPT_DTYPE_NF4, b, y, 64), 0);
    assert_true(y[1] == -2.5f); /* the absmax element comes back exactly */
    assert_true(y[0] == 2.5f * (float)paper_nf4[9]);
    assert_true(y[3] == 0.0f);
}

static void a_zero_block_has_absmax_zero_and_dequantizes_to_zeros(void **state) {
    (void)state;
    float x[128] = {0};
    x[64] = 1.0f; /* second block only */
    uint8_t b[72];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_NF4, x, b, 128), 0);
    assert_true(block_absmax(b) == 0.0f);
    for (int j = 0; j < 64; j++) assert_int_equal(code_at(b, j), 7);
    assert_true(block_absmax(b + 36) == 1.0f);
    float y[128];
    assert_int_equal(q_dequantize_row(LLMOPT_DTYPE_NF4, b, y, 128), 0);
    for (int j = 0; j < 128; j++) assert_true(y[j] == x[j]);
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return (float)((double)((g_rng * 2685821657736338717ull) >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static void random_rows_dequantize_to_absmax_times_the_nearest_code(void **state) {
    (void)state;
    enum { N = 64 * 16 };
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = frand() * (float)(1 + i / 64); /* a different scale per block */
    uint8_t b[16 * 36];
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_NF4, x, b, N), 0);
    assert_int_equal(q_dequantize_row(LLMOPT_DTYPE_NF4, b, y, N), 0);
    double max_gap = 0;
    for (int i = 0; i < 15; i++) max_gap = fmax(max_gap, paper_nf4[i + 1] - paper_nf4[i]);
    for (int blk = 0; blk < 16; blk++) {
        float amax = 0;
        for (int j = 0; j < 64; j++) amax = fmaxf(amax, fabsf(x[blk * 64 + j]));
        assert_true(block_absmax(b + blk * 36) == amax);
        for (int j = 0; j < 64; j++) {
            int i = blk * 64 + j;
            float n = x[i] / amax;
            unsigned best = 0;
            for (unsigned c = 1; c < 16; c++)
                if (fabs((double)n - paper_nf4[c]) < fabs((double)n - paper_nf4[best])) best = c;
            assert_int_equal(code_at(b + blk * 36, j), best);
            assert_true(y[i] == (float)paper_nf4[best] * amax);
            assert_true(fabs((double)y[i] - x[i]) <= amax * max_gap / 2 * (1 + 1e-6));
        }
    }
}

static void tensors_quantize_to_nf4_and_reject_rows_that_are_not_whole_blocks(void **state) {
    (void)state;
    llmopt_tensor *w = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){3, 128});
    for (int i = 0; i < 3 * 128; i++) ((float *)w->data)[i] = frand();
    llmopt_tensor *q = NULL, *f = NULL;
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(q_quantize_tensor(w, LLMOPT_DTYPE_NF4, &q, &err), 0);
    assert_int_equal(q->dtype, LLMOPT_DTYPE_NF4);
    assert_int_equal(q->nbytes, 3 * 2 * 36);
    assert_int_equal(q_dequantize_tensor(q, &f, &err), 0);
    float y[128];
    for (int r = 0; r < 3; r++) {
        assert_int_equal(q_dequantize_row(LLMOPT_DTYPE_NF4, (uint8_t *)q->data + r * 72, y, 128), 0);
        assert_memory_equal(y, (float *)f->data + r * 128, sizeof y);
    }
    rt_tensor_unref(q), rt_tensor_unref(f), rt_tensor_unref(w);
    llmopt_tensor *odd = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){2, 96});
    error_clear(&err);
    assert_int_equal(q_quantize_tensor(odd, LLMOPT_DTYPE_NF4, &q, &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "96"));
    assert_non_null(strstr(err.msg, "64"));
    assert_int_equal(q_quantize_row(LLMOPT_DTYPE_NF4, odd->data, y, 96), LLMOPT_EINVAL);
    rt_tensor_unref(odd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nf4_traits_are_blocks_of_64_in_36_bytes_named_nf4),
        cmocka_unit_test(nf4_code_table_is_exactly_the_qlora_papers),
        cmocka_unit_test(every_code_value_rounds_to_itself),
        cmocka_unit_test(normalized_weights_go_to_the_nearest_code_and_exact_ties_to_the_lower),
        cmocka_unit_test(block_stores_the_f32_absmax_and_packs_element_2j_in_the_high_nibble),
        cmocka_unit_test(a_zero_block_has_absmax_zero_and_dequantizes_to_zeros),
        cmocka_unit_test(random_rows_dequantize_to_absmax_times_the_nearest_code),
        cmocka_unit_test(tensors_quantize_to_nf4_and_reject_rows_that_are_not_whole_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
