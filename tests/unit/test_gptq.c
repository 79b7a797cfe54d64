/* GPTQ (plugins/quantize/gptq.c, compiled in) on random layers: its output error ||(W - Q) X||
 * is below round to nearest's at the same bits and group, with and without act-order; dampening
 * is applied; a singular Hessian is rescued by more dampening, and a degenerate one (NaN) is a
 * clear error; its codes are those of the paper's unblocked algorithm with the reference
 * implementation's inverse factor, written out here in double. The packed blocks are read back
 * with the host's reference dequantizer. */
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
#include "runtime/runtime.h"

const llmopt_host_api *host_api_table(void);
const llmopt_host_api *qz_api; /* the plugin defines it in plugin.c, not compiled in here */

static uint64_t rng = 88172645463325252ull;
static double uniform(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static float gauss(void) { return (float)(sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform())); }

enum { ROWS = 48, COLS = 128, N = 512 };

/* X [N, COLS] with correlated channels (as real activations) and H = 2 X^T X / N */
static void make_inputs(float *X, float *H) {
    for (int n = 0; n < N; n++) {
        float common = gauss();
        for (int c = 0; c < COLS; c++) X[n * COLS + c] = gauss() * (1.0f + (float)(c % 7)) * 0.5f + common * 0.8f;
    }
    for (int a = 0; a < COLS; a++)
        for (int b = 0; b < COLS; b++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += (double)X[n * COLS + a] * X[n * COLS + b];
            H[a * COLS + b] = (float)(2 * s / N);
        }
}

/* ||(W - What) X^T||^2 */
static double out_error(const float *W, const float *What, const float *X) {
    double e = 0;
    for (int r = 0; r < ROWS; r++)
        for (int n = 0; n < N; n++) {
            double d = 0;
            for (int c = 0; c < COLS; c++) d += ((double)W[r * COLS + c] - What[r * COLS + c]) * X[n * COLS + c];
            e += d * d;
        }
    return e;
}

static void dequant(int dtype, const uint8_t *blocks, float *What) {
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    size_t row = (size_t)(COLS / t->block_size) * t->type_size;
    for (int r = 0; r < ROWS; r++) assert_int_equal(q_dequantize_row(dtype, blocks + r * row, What + r * COLS, COLS), 0);
}

static double rtn_error(int dtype, const float *W, const float *X) {
    uint8_t *b = malloc(ROWS * COLS * 2);
    float *What = malloc(ROWS * COLS * sizeof *What);
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    size_t row = (size_t)(COLS / t->block_size) * t->type_size;
    for (int r = 0; r < ROWS; r++) q_quantize_row(dtype, W + r * COLS, b + r * row, COLS);
    dequant(dtype, b, What);
    double e = out_error(W, What, X);
    free(b), free(What);
    return e;
}

static double gptq_error(const qz_gptq_opts *o, const float *W, const float *H, const float *X, int expect_rc, double *damp) {
    uint8_t *b = calloc(ROWS * COLS * 2, 1);
    float *What = malloc(ROWS * COLS * sizeof *What);
    char msg[512] = "";
    int rc = qz_gptq_layer(W, ROWS, COLS, H, o, b, damp, msg, sizeof msg);
    assert_int_equal(rc, expect_rc);
    double e = -1;
    if (!rc) {
        dequant(o->dtype, b, What);
        e = out_error(W, What, X);
    }
    free(b), free(What);
    return e;
}

static float *W, *X, *H;

static int setup(void **state) {
    (void)state;
    qz_api = host_api_table();
    W = malloc(ROWS * COLS * sizeof *W), X = malloc(N * COLS * sizeof *X), H = malloc(COLS * COLS * sizeof *H);
    for (int i = 0; i < ROWS * COLS; i++) W[i] = gauss() * 0.1f;
    make_inputs(X, H);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(W), free(X), free(H);
    return 0;
}

static void check_beats_rtn(int bits, int group, int asym, int act_order) {
    int dt = LLMOPT_DTYPE_GQ(bits, group, asym);
    qz_gptq_opts o = {.dtype = dt, .act_order = act_order, .damp = 0.01, .block = 128};
    double g = gptq_error(&o, W, H, X, 0, NULL), r = rtn_error(dt, W, X);
    if (!(g < 0.9 * r)) fail_msg("gq%dg%d%c act_order=%d: GPTQ error %g is not 10%% below RTN's %g", bits, group,
                                 asym ? 'a' : 's', act_order, g, r);
}

static void gptq_output_error_is_below_round_to_nearest_4bit_g32(void **s) { (void)s; check_beats_rtn(4, 32, 0, 0); }
static void gptq_output_error_is_below_round_to_nearest_3bit_g128_asym(void **s) { (void)s; check_beats_rtn(3, 128, 1, 0); }
static void gptq_output_error_is_below_round_to_nearest_2bit_g64(void **s) { (void)s; check_beats_rtn(2, 64, 1, 0); }
static void gptq_with_act_order_is_below_round_to_nearest(void **s) {
    (void)s;
    check_beats_rtn(4, 32, 0, 1);
    check_beats_rtn(3, 128, 1, 1);
}

static void gptq_lazy_block_size_does_not_change_the_result(void **s) {
    (void)s;
    int dt = LLMOPT_DTYPE_GQ(4, 32, 0);
    qz_gptq_opts a = {.dtype = dt, .damp = 0.01, .block = 128}, b = a;
    b.block = 32;
    double ea = gptq_error(&a, W, H, X, 0, NULL), eb = gptq_error(&b, W, H, X, 0, NULL);
    assert_true(fabs(ea - eb) <= 1e-3 * ea);
}

static void gptq_uses_the_dampening_asked_for(void **s) {
    (void)s;
    qz_gptq_opts o = {.dtype = LLMOPT_DTYPE_GQ(4, 32, 0), .damp = 0.05, .block = 128};
    double used = 0;
    gptq_error(&o, W, H, X, 0, &used);
    assert_true(used == 0.05);
}

static void gptq_singular_hessian_gets_more_dampening(void **s) {
    (void)s;
    /* 8 calibration rows for 128 inputs: H has rank 8; no dampening cannot factor it */
    float *Hs = calloc(COLS * COLS, sizeof *Hs);
    for (int a = 0; a < COLS; a++)
        for (int b = 0; b < COLS; b++)
            for (int n = 0; n < 8; n++) Hs[a * COLS + b] += 2 * X[n * COLS + a] * X[n * COLS + b] / 8;
    qz_gptq_opts o = {.dtype = LLMOPT_DTYPE_GQ(4, 32, 0), .damp = 0, .block = 128};
    double used = -1;
    assert_true(gptq_error(&o, W, Hs, X, 0, &used) > 0);
    assert_true(used > 0);
    free(Hs);
}

static void gptq_degenerate_hessian_is_a_clear_error(void **s) {
    (void)s;
    float *Hn = malloc(COLS * COLS * sizeof *Hn);
    memcpy(Hn, H, COLS * COLS * sizeof *Hn);
    Hn[5 * COLS + 7] = Hn[7 * COLS + 5] = NAN;
    qz_gptq_opts o = {.dtype = LLMOPT_DTYPE_GQ(4, 32, 0), .damp = 0.01, .block = 128};
    uint8_t *b = calloc(ROWS * COLS, 1);
    char msg[512] = "";
    assert_int_equal(qz_gptq_layer(W, ROWS, COLS, Hn, &o, b, NULL, msg, sizeof msg), LLMOPT_EFAIL);
    assert_non_null(strstr(msg, "not positive definite"));
    free(Hn), free(b);
}

static void gptq_refuses_a_group_that_does_not_divide_the_row(void **s) {
    (void)s;
    qz_gptq_opts o = {.dtype = LLMOPT_DTYPE_GQ(4, 96, 0), .damp = 0.01, .block = 128};
    uint8_t *b = calloc(ROWS * COLS, 1);
    char msg[512] = "";
    assert_int_equal(qz_gptq_layer(W, ROWS, COLS, H, &o, b, NULL, msg, sizeof msg), LLMOPT_EINVAL);
    free(b);
}

/* In place: the lower Cholesky factor of the n x n row-major a (a = L L^T), in double. */
static void ref_cholesky(double *a, int n) {
    for (int j = 0; j < n; j++) {
        double d = a[j * n + j];
        for (int k = 0; k < j; k++) d -= a[j * n + k] * a[j * n + k];
        assert_true(d > 0);
        a[j * n + j] = sqrt(d);
        for (int i = j + 1; i < n; i++) {
            double v = a[i * n + j];
            for (int k = 0; k < j; k++) v -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = v / a[j * n + j];
        }
        for (int k = j + 1; k < n; k++) a[j * n + k] = 0;
    }
}

/* The paper's Algorithm 1 without lazy batches, as the reference implementation computes its
 * factor: Hinv = cholesky(cholesky_inverse(cholesky(H + damp I)), upper), here the inverse by
 * Gauss-Jordan and both factorizations in double; each group's scale from the weights as updated
 * when the quantizer reaches its first column. Blocks out like qz_gptq_layer's. */
static void ref_gptq(int dtype, double damp, uint8_t *out) {
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    const int g = (int)t->block_size, bits = LLMOPT_DTYPE_GQ_BITS(dtype), qmax = (1 << bits) - 1;
    const size_t tsz = t->type_size, code_off = LLMOPT_DTYPE_GQ_ASYM(dtype) ? 4 : 2, row = (size_t)(COLS / g) * tsz;
    double *Hd = malloc(COLS * COLS * sizeof *Hd), *inv = calloc(COLS * COLS, sizeof *inv), mean = 0;
    float *w = malloc(COLS * sizeof *w);
    for (int i = 0; i < COLS * COLS; i++) Hd[i] = H[i];
    for (int i = 0; i < COLS; i++) mean += Hd[i * COLS + i] / COLS;
    for (int i = 0; i < COLS; i++) Hd[i * COLS + i] += damp * mean, inv[i * COLS + i] = 1;
    for (int c = 0; c < COLS; c++) { /* Gauss-Jordan: H is positive definite, no pivoting needed */
        const double p = Hd[c * COLS + c];
        for (int k = 0; k < COLS; k++) Hd[c * COLS + k] /= p, inv[c * COLS + k] /= p;
        for (int r = 0; r < COLS; r++) {
            const double f = Hd[r * COLS + c];
            if (r == c || f == 0) continue;
            for (int k = 0; k < COLS; k++) Hd[r * COLS + k] -= f * Hd[c * COLS + k], inv[r * COLS + k] -= f * inv[c * COLS + k];
        }
    }
    ref_cholesky(inv, COLS); /* inv = L L^T; the upper factor is L^T */
    for (int r = 0; r < ROWS; r++) {
        memcpy(w, W + r * COLS, COLS * sizeof *w);
        uint8_t *blocks = out + r * row;
        for (int i = 0; i < COLS; i++) {
            uint8_t *blk = blocks + (size_t)(i / g) * tsz;
            if (i % g == 0) q_quantize_row(dtype, w + i, blk, g);
            float scale, off;
            qz_gq_params(dtype, blk, &scale, &off);
            float q = off;
            if (scale != 0) {
                q = roundf(w[i] / scale) + off;
                q = q < 0 ? 0 : q > (float)qmax ? (float)qmax : q;
            }
            qz_gq_set_code(blk + code_off, i % g, bits, (unsigned)q);
            const double e = ((double)w[i] - (double)scale * (q - off)) / inv[i * COLS + i];
            for (int k = i + 1; k < COLS; k++) w[k] -= (float)(e * inv[k * COLS + i]);
        }
    }
    free(Hd), free(inv), free(w);
}

static void gptq_matches_the_papers_algorithm_unblocked(void **s) {
    (void)s;
    const int dts[] = {LLMOPT_DTYPE_GQ(4, 32, 0), LLMOPT_DTYPE_GQ(3, 64, 1)};
    for (int d = 0; d < 2; d++) {
        qz_gptq_opts o = {.dtype = dts[d], .damp = 0.01, .block = 32};
        uint8_t *got = calloc(ROWS * COLS * 2, 1), *want = calloc(ROWS * COLS * 2, 1);
        float *Wg = malloc(ROWS * COLS * sizeof *Wg), *Ww = malloc(ROWS * COLS * sizeof *Ww);
        char msg[512] = "";
        assert_int_equal(qz_gptq_layer(W, ROWS, COLS, H, &o, got, NULL, msg, sizeof msg), 0);
        ref_gptq(dts[d], 0.01, want);
        dequant(dts[d], got, Wg);
        dequant(dts[d], want, Ww);
        /* float sums in another order: a code may land on the other side of a rounding tie and
         * carry its error on, so the weights are compared in bulk, the outputs' errors closely */
        int same = 0;
        for (int i = 0; i < ROWS * COLS; i++) same += Wg[i] == Ww[i];
        const double eg = out_error(W, Wg, X), ew = out_error(W, Ww, X);
        if (same < ROWS * COLS * 98 / 100 || fabs(eg - ew) > 0.01 * ew)
            fail_msg("%s: %d of %d weights as the reference's, output error %g against %g", d ? "gq3g64a" : "gq4g32s",
                     same, ROWS * COLS, eg, ew);
        free(got), free(want), free(Wg), free(Ww);
    }
}

void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

/* The calibration's X^T X (calib.c: block rows of 128 as sgemm calls on the host's threads, the
 * upper triangle, mirrored at the end) over two inputs of a weight whose 300 features make three
 * block rows, the last partial: it equals the sum in double, is exactly symmetric, and leaves
 * OpenBLAS at the one thread the cpu plugin keeps it at (a stage that widened it widened it for
 * every stage running beside). */
static void calibration_gram_is_x_transpose_x_and_leaves_openblas_alone(void **s) {
    (void)s;
    enum { C = 300, R1 = 70, R2 = 45 };
    float *x = malloc(sizeof(float) * (R1 + R2) * C);
    assert_non_null(x);
    for (int i = 0; i < (R1 + R2) * C; i++) x[i] = gauss();
    const char *names[] = {"w"};
    int64_t cols[] = {C}, rows[] = {0};
    int root[] = {-2};
    float *gram[] = {NULL};
    double *absum[] = {NULL};
    qz_stats st = {.n = 1, .names = names, .cols = cols, .root = root, .gram = gram, .absum = absum,
                   .no_absum = 1, .rows = rows, .prev = -1};
    qz_collect_arg arg = {.st = &st};
    openblas_set_num_threads(1);
    assert_int_equal(qz_stats_input(&arg, "w", x, R1, C), 0);
    assert_int_equal(qz_stats_input(&arg, "w", x + R1 * C, R2, C), 0);
    qz_stats_mirror(&st, 0);
    assert_int_equal(openblas_get_num_threads(), 1);
    assert_non_null(gram[0]);
    for (int a = 0; a < C; a++)
        for (int b = 0; b < C; b++) {
            double want = 0;
            for (int n = 0; n < R1 + R2; n++) want += (double)x[n * C + a] * x[n * C + b];
            if (fabs(gram[0][a * C + b] - want) > 1e-4 * (R1 + R2))
                fail_msg("G[%d][%d] = %.7g, want %.7g", a, b, (double)gram[0][a * C + b], want);
            assert_true(gram[0][a * C + b] == gram[0][b * C + a]);
        }
    free(gram[0]);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gptq_output_error_is_below_round_to_nearest_4bit_g32),
        cmocka_unit_test(gptq_output_error_is_below_round_to_nearest_3bit_g128_asym),
        cmocka_unit_test(gptq_output_error_is_below_round_to_nearest_2bit_g64),
        cmocka_unit_test(gptq_with_act_order_is_below_round_to_nearest),
        cmocka_unit_test(gptq_lazy_block_size_does_not_change_the_result),
        cmocka_unit_test(gptq_matches_the_papers_algorithm_unblocked),
        cmocka_unit_test(gptq_uses_the_dampening_asked_for),
        cmocka_unit_test(gptq_singular_hessian_gets_more_dampening),
        cmocka_unit_test(gptq_degenerate_hessian_is_a_clear_error),
        cmocka_unit_test(gptq_refuses_a_group_that_does_not_divide_the_row),
        cmocka_unit_test(calibration_gram_is_x_transpose_x_and_leaves_openblas_alone),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
