/* AWQ's scale search (plugins/quantize/awq.c, compiled in): on activations with a few outlier
 * channels, the scales it picks lower the output error against plain round to nearest; alpha = 0
 * is round to nearest itself; the error through G = X^T X equals the direct ||(Q - W) X^T||^2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "quantize.h"
#include "runtime/quant.h"

const llmopt_host_api *host_api_table(void);
const llmopt_host_api *qz_api; /* the plugin defines it in plugin.c, not compiled in here */

static uint64_t rng = 2463534242ull;
static double uniform(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static float gauss(void) { return (float)(sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform())); }

enum { OUT = 64, IN = 128, N = 256 };

static float *W, *X, *G, *xm;

static int setup(void **state) {
    (void)state;
    qz_api = host_api_table();
    W = malloc(OUT * IN * sizeof *W), X = malloc(N * IN * sizeof *X), G = calloc(IN * IN, sizeof *G);
    xm = calloc(IN, sizeof *xm);
    for (int i = 0; i < OUT * IN; i++) W[i] = gauss() * 0.05f;
    /* four outlier channels, 30x the others (as LLM activations have) */
    for (int n = 0; n < N; n++)
        for (int c = 0; c < IN; c++) X[n * IN + c] = gauss() * (c % 37 == 3 ? 30.0f : 1.0f);
    for (int a = 0; a < IN; a++)
        for (int b = 0; b < IN; b++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += (double)X[n * IN + a] * X[n * IN + b];
            G[a * IN + b] = (float)s;
        }
    for (int n = 0; n < N; n++)
        for (int c = 0; c < IN; c++) xm[c] += fabsf(X[n * IN + c]) / N;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(W), free(X), free(G), free(xm);
    return 0;
}

static void awq_scales_lower_the_output_error_on_outlier_channels(void **s) {
    (void)s;
    float sc[IN];
    const float *Ws[1] = {W};
    int64_t outs[1] = {OUT};
    double best = 0, rtn = 0;
    int dt = LLMOPT_DTYPE_GQ(4, 128, 1);
    assert_int_equal(qz_awq_search(G, xm, IN, Ws, outs, 1, dt, 20, sc, &best, &rtn), 0);
    if (!(best < 0.8 * rtn)) fail_msg("AWQ error %g is not 20%% below round to nearest's %g", best, rtn);
    /* the outlier channels got the larger scales */
    assert_true(sc[3] > sc[4] && sc[40] > sc[41]);
}

static void awq_alpha_zero_is_round_to_nearest(void **s) {
    (void)s;
    float sc[IN];
    const float *Ws[1] = {W};
    int64_t outs[1] = {OUT};
    double best = 0, rtn = 0;
    int dt = LLMOPT_DTYPE_GQ(4, 32, 0);
    assert_int_equal(qz_awq_search(G, xm, IN, Ws, outs, 1, dt, 1, sc, &best, &rtn), 0);
    assert_true(best == rtn);
    for (int j = 0; j < IN; j++) assert_true(sc[j] == 1.0f);
    assert_true(fabs(qz_awq_error(G, IN, W, OUT, dt, NULL) - rtn) <= 1e-6 * rtn);
}

static void awq_error_through_gram_matrix_equals_direct_error(void **s) {
    (void)s;
    int dt = LLMOPT_DTYPE_Q4_0;
    float *row = malloc(IN * sizeof *row);
    uint8_t blk[IN];
    double direct = 0;
    float *D = malloc(OUT * IN * sizeof *D);
    for (int r = 0; r < OUT; r++) {
        q_quantize_row(dt, W + r * IN, blk, IN);
        q_dequantize_row(dt, blk, row, IN);
        for (int j = 0; j < IN; j++) D[r * IN + j] = row[j] - W[r * IN + j];
    }
    for (int r = 0; r < OUT; r++)
        for (int n = 0; n < N; n++) {
            double d = 0;
            for (int j = 0; j < IN; j++) d += (double)D[r * IN + j] * X[n * IN + j];
            direct += d * d;
        }
    double via = qz_awq_error(G, IN, W, OUT, dt, NULL);
    assert_true(fabs(via - direct) <= 1e-3 * direct);
    free(row), free(D);
}

static void clipping_search_clips_an_outlier_weight_whose_input_is_silent(void **s) {
    (void)s;
    /* row 1 of a copy of W gets a weight 40x the others on channel 0, where this G has no input:
     * clipping it costs nothing and gives the rest of its group finer codes */
    float *Wc = malloc(OUT * IN * sizeof *Wc), *Gc = malloc(IN * IN * sizeof *Gc);
    memcpy(Wc, W, OUT * IN * sizeof *Wc);
    memcpy(Gc, G, IN * IN * sizeof *Gc);
    for (int k = 0; k < IN; k++) Gc[k] = Gc[k * IN] = 0.0f;
    Wc[1 * IN + 0] = 2.0f;
    int dt = LLMOPT_DTYPE_GQ(4, 32, 1);
    double before = 0, after = 0;
    assert_int_equal(qz_awq_clip(Wc, OUT, IN, 1, 3, Gc, NULL, dt, 20, 0.5, &before, &after), 0);
    assert_true(after < 0.5 * before);
    assert_true(fabsf(Wc[1 * IN + 0]) < 2.0f * 0.6f);           /* clipped to at most 0.55 of its max */
    assert_memory_equal(Wc, W, IN * sizeof *Wc);                 /* row 0: outside [1, 3) */
    assert_memory_equal(Wc + 3 * IN, W + 3 * IN, (OUT - 3) * IN * sizeof *Wc);
    /* `after` is the error the clipped rows really have, group by group against the originals */
    double direct = 0;
    float q[IN];
    uint8_t blk[IN];
    for (int r = 1; r < 3; r++) {
        assert_int_equal(qz_api->quantize_row(dt, Wc + r * IN, blk, IN), 0);
        assert_int_equal(qz_api->dequantize_row(dt, blk, q, IN), 0);
        for (int j0 = 0; j0 < IN; j0 += 32)
            for (int a = j0; a < j0 + 32; a++)
                for (int b = j0; b < j0 + 32; b++) {
                    float wa = r == 1 && a == 0 ? 2.0f : W[r * IN + a], wb = r == 1 && b == 0 ? 2.0f : W[r * IN + b];
                    direct += (double)(q[a] - wa) * Gc[a * IN + b] * (double)(q[b] - wb);
                }
    }
    assert_true(fabs(direct - after) <= 1e-3 * after);
    free(Wc), free(Gc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(awq_scales_lower_the_output_error_on_outlier_channels),
        cmocka_unit_test(awq_alpha_zero_is_round_to_nearest),
        cmocka_unit_test(awq_error_through_gram_matrix_equals_direct_error),
        cmocka_unit_test(clipping_search_clips_an_outlier_weight_whose_input_is_silent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
