/* The cpu plugin's quantized matmul and embedding kernels, loaded through the real loader and
 * compared with f32 math on the weights as host/runtime/quant.c dequantizes them.
 * Tolerances. Dequantized rows (embedding; the sgemm path, M > 4): 1e-5 relative + 1e-5
 * absolute (f32 sums in another order; s*u + m vs s*(u - o)). The int8 path (M <= 4) also
 * quantizes x per 32 (dx = amax/127, |x - dx*xq| <= dx/2), so output n may differ by up to
 * sum_k |w[n,k]| * dx(k) / 2 from the f32 result; the test checks that bound (+1e-4 relative),
 * and that the output equals x quantized that way times the dequantized W within 1e-5 relative. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>
#include <cmocka.h>

#include "cpu_fixture.h"

#include "plugin/loader.h"
#include "runtime/quant.h"
#include "runtime/runtime.h"
#include "runtime/threadpool.h"
#include "sched/stage_ctx.h"

static registry *g_reg;
static plugin_rec *g_cpu;
static int g_skip;

static const int g_types[] = {
    LLMOPT_DTYPE_Q8_0, LLMOPT_DTYPE_Q4_0, LLMOPT_DTYPE_Q4_1,
    LLMOPT_DTYPE_GQ(8, 32, 0), LLMOPT_DTYPE_GQ(8, 64, 0), LLMOPT_DTYPE_GQ(8, 128, 0),
    LLMOPT_DTYPE_GQ(4, 32, 0), LLMOPT_DTYPE_GQ(4, 64, 0), LLMOPT_DTYPE_GQ(4, 128, 0),
    LLMOPT_DTYPE_GQ(4, 32, 1), LLMOPT_DTYPE_GQ(4, 64, 1), LLMOPT_DTYPE_GQ(4, 128, 1),
    LLMOPT_DTYPE_GQ(3, 32, 0), LLMOPT_DTYPE_GQ(3, 64, 0), LLMOPT_DTYPE_GQ(3, 128, 0),
    LLMOPT_DTYPE_GQ(3, 32, 1), LLMOPT_DTYPE_GQ(3, 64, 1), LLMOPT_DTYPE_GQ(3, 128, 1),
    LLMOPT_DTYPE_GQ(2, 32, 0), LLMOPT_DTYPE_GQ(2, 64, 0), LLMOPT_DTYPE_GQ(2, 128, 0),
    LLMOPT_DTYPE_GQ(2, 32, 1), LLMOPT_DTYPE_GQ(2, 64, 1), LLMOPT_DTYPE_GQ(2, 128, 1),
};
#define N_TYPES (sizeof g_types / sizeof g_types[0])

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    uint64_t r = g_rng * 2685821657736338717ull;
    return lo + (hi - lo) * (float)((double)(r >> 40) / (double)(1ull << 24));
}

static llmopt_tensor *tnew(int dtype, int64_t a, int64_t b) {
    llmopt_tensor *t = rt_tensor_new(dtype, 2, (int64_t[]){a, b});
    assert_non_null(t);
    return t;
}

static llmopt_tensor *trand(int64_t a, int64_t b) {
    llmopt_tensor *t = tnew(LLMOPT_DTYPE_F32, a, b);
    for (int64_t i = 0; i < a * b; i++) ((float *)t->data)[i] = frand(-1, 1);
    return t;
}

/* The kernel the runtime would get for dtype: an exact key or the GQ any-group key of its bits
 * and asym, never the f32 fallback. */
static llmopt_kernel_fn kernel(const char *op, int dtype) {
    const kernel_rec *k = registry_find_kernel(g_reg, op, LLMOPT_DEVICE_CPU, dtype);
    if (!k || k->desc.dtype == LLMOPT_DTYPE_ANY || k->desc.dtype == LLMOPT_DTYPE_F32) return NULL;
    return k->desc.fn;
}

/* The plugin quantizes x per 32 for every M when its matmul summary says so (the VNNI integer
 * GEMM for prefill), else only up to QMM_INT_MAX_M = 4 rows. */
static int int8_x_rows(int dtype, int64_t M) {
    const kernel_rec *k = registry_find_kernel(g_reg, LLMOPT_OP_MATMUL, LLMOPT_DEVICE_CPU, dtype);
    return M <= 4 || (k && k->desc.summary && strstr(k->desc.summary, "int8 GEMM"));
}

static const char *tname(int dt) { return rt_dtype_traits(dt)->name; }

static int group_setup(void **state) {
    (void)state;
    if (cpu_fixture_load(3, &g_cpu) != 0) return -1;
    g_reg = cpu_fixture_reg;
    if (g_cpu->state != PLUGIN_LOADED) {
        const char *force = getenv("LLMOPT_CPU_FORCE");
        if (force && *force && g_cpu->reason && strstr(g_cpu->reason, "lacks")) {
            g_skip = 1;
            return 0;
        }
        fprintf(stderr, "cpu.so not loaded: %s\n", g_cpu->reason ? g_cpu->reason : "?");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    cpu_fixture_unload();
    return 0;
}

#define SKIP_IF_UNAVAILABLE() \
    do {                      \
        (void)state;          \
        if (g_skip) skip();   \
    } while (0)

static void every_quantized_dtype_has_matmul_and_embedding(void **state) {
    SKIP_IF_UNAVAILABLE();
    for (size_t i = 0; i < N_TYPES; i++) {
        if (!kernel(LLMOPT_OP_MATMUL, g_types[i]) || !kernel(LLMOPT_OP_EMBEDDING, g_types[i]))
            fail_msg("%s: matmul or embedding not registered", tname(g_types[i]));
    }
}

/* out = x · Wd^T + bias in double, and the int8-activation bound of each output. */
static void f32_matmul(const float *x, const float *wd, const float *bias, int64_t M, int64_t N, int64_t K,
                       double *want, double *bound) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        for (int64_t n = 0; n < N; n++) {
            double acc = bias ? bias[n] : 0.0, b = 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; k++) {
                acc += (double)xr[k] * wd[n * K + k];
                mag += fabs((double)xr[k] * wd[n * K + k]);
                if (k % 32 == 0) {
                    float amax = 0;
                    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xr[k + j]));
                    for (int j = 0; j < 32; j++) b += fabs((double)wd[n * K + k + j]) * amax / 127.0 / 2.0;
                }
            }
            want[m * N + n] = acc;
            bound[m * N + n] = b * 1.0001 + 1e-4 * mag + 1e-5;
        }
    }
}

/* The int8 path exactly: x quantized as the kernel does (ggml's Q8_0 rule, cpu.h), times the
 * dequantized W, in double. What the kernel sums in int32 and scales in f32 must match this to
 * f32 rounding, which catches a wrong code offset or scale that the activation bound above is
 * too loose to see. */
static void int8_matmul(const float *x, const float *wd, const float *bias, int64_t M, int64_t N, int64_t K,
                        double *want, double *tol) {
    double *xd = malloc((size_t)K * sizeof(double));
    assert_non_null(xd);
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < K; b += 32) {
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[m * K + b + j]));
            const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
            for (int j = 0; j < 32; j++) xd[b + j] = (double)d * roundf(x[m * K + b + j] * id);
        }
        for (int64_t n = 0; n < N; n++) {
            double acc = bias ? bias[n] : 0.0, mag = 0.0;
            for (int64_t k = 0; k < K; k++) {
                acc += xd[k] * wd[n * K + k];
                mag += fabs(xd[k] * wd[n * K + k]);
            }
            want[m * N + n] = acc;
            tol[m * N + n] = 1e-5 * mag + 1e-5;
        }
    }
    free(xd);
}

/* When set, check_matmul's x is made of exact halves: each block of 32 holds 127 (so its scale is
 * 1) and values k/2, whose int8 codes are ties that roundf sends away from zero. */
static int g_tie_x;

static void check_matmul(int dt, int64_t M, int64_t N, int64_t K, int with_bias, int accumulate) {
    llmopt_kernel_fn fn = kernel(LLMOPT_OP_MATMUL, dt);
    assert_non_null(fn);
    llmopt_tensor *w = trand(N, K), *x = trand(M, K), *bias = with_bias ? trand(1, N) : NULL;
    if (g_tie_x)
        for (int64_t i = 0; i < M * K; i++)
            ((float *)x->data)[i] = i % 32 == 0 ? 127.0f : (float)((i * 7) % 33 - 16) * 0.5f;
    llmopt_tensor *q = NULL, *wd = NULL, *out = trand(M, N);
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(q_quantize_tensor(w, dt, &q, &err), 0);
    assert_int_equal(q_dequantize_tensor(q, &wd, &err), 0);
    double *want = malloc((size_t)(M * N) * sizeof(double)), *bound = malloc((size_t)(M * N) * sizeof(double));
    double *exact = malloc((size_t)(M * N) * sizeof(double)), *etol = malloc((size_t)(M * N) * sizeof(double));
    assert_true(want && bound && exact && etol);
    f32_matmul(x->data, wd->data, bias ? bias->data : NULL, M, N, K, want, bound);
    int8_matmul(x->data, wd->data, bias ? bias->data : NULL, M, N, K, exact, etol);
    float *o = out->data;
    if (accumulate)
        for (int64_t i = 0; i < M * N; i++) want[i] += o[i], exact[i] += o[i];
    llmopt_op_matmul p = {sizeof p, LLMOPT_W_OUT_IN, accumulate, LLMOPT_MATMUL_HIGHEST};
    const llmopt_tensor *in[3] = {x, q, bias};
    assert_int_equal(fn(in, bias ? 3 : 2, out, &p), 0);
    const int int_path = int8_x_rows(dt, M);
    /* GQ groups that are not a multiple of 32 take dequantized rows and f32 x on every path */
    const int int8_x = int_path && !(LLMOPT_DTYPE_IS_GQ(dt) && LLMOPT_DTYPE_GQ_GROUP(dt) % 32 != 0);
    for (int64_t i = 0; i < M * N; i++) {
        double tol = int_path ? bound[i] : 1e-5 * fabs(want[i]) + 1e-5 * sqrt((double)K);
        if (accumulate && int_path) tol += 1e-6 * fabs(want[i]);
        if (!(fabs(o[i] - want[i]) <= tol))
            fail_msg("%s M=%lld N=%lld K=%lld: out[%lld] = %.7g, f32 on dequantized W %.7g (tol %.3g)", tname(dt),
                     (long long)M, (long long)N, (long long)K, (long long)i, (double)o[i], want[i], tol);
        if (int8_x && !(fabs(o[i] - exact[i]) <= etol[i] + (accumulate ? 1e-6 * fabs(exact[i]) : 0.0)))
            fail_msg("%s M=%lld N=%lld K=%lld: out[%lld] = %.7g, int8 x times dequantized W %.7g (tol %.3g)",
                     tname(dt), (long long)M, (long long)N, (long long)K, (long long)i, (double)o[i], exact[i],
                     etol[i]);
    }
    free(want);
    free(bound);
    free(exact);
    free(etol);
    rt_tensor_unref(w);
    rt_tensor_unref(x);
    rt_tensor_unref(bias);
    rt_tensor_unref(q);
    rt_tensor_unref(wd);
    rt_tensor_unref(out);
}

static void matmul_matches_f32_on_the_dequantized_weights(void **state) {
    SKIP_IF_UNAVAILABLE();
    const int64_t Ms[] = {1, 3, 64};
    for (size_t i = 0; i < N_TYPES; i++) {
        for (size_t m = 0; m < 3; m++) {
            check_matmul(g_types[i], Ms[m], 37, 256, m != 1, 0);
            check_matmul(g_types[i], Ms[m], 5, 128 * 3, 1, 1);
        }
    }
}

static void decode_matmul_stays_within_the_activation_quantization_bound_at_model_sizes(void **state) {
    SKIP_IF_UNAVAILABLE();
    check_matmul(LLMOPT_DTYPE_Q8_0, 1, 769, 768, 1, 0);
    check_matmul(LLMOPT_DTYPE_Q4_0, 1, 301, 3072, 0, 1);
    check_matmul(LLMOPT_DTYPE_GQ(4, 128, 0), 2, 129, 768, 1, 0);
    /* the 8-bit formats go one row at a time up to 16384 weights a row, four rows at a time
     * beyond; both sides of that limit, asymmetric 8-bit groups too */
    check_matmul(LLMOPT_DTYPE_Q8_0, 1, 7, 16384, 0, 0);
    check_matmul(LLMOPT_DTYPE_Q8_0, 1, 7, 16384 + 32, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(8, 64, 1), 1, 9, 16384 + 64, 1, 0);
    check_matmul(LLMOPT_DTYPE_GQ(8, 64, 1), 1, 9, 768, 1, 1);
    check_matmul(LLMOPT_DTYPE_GQ(8, 32, 1), 1, 3, 256, 0, 0);
    /* Q4_0 and GQ 4-bit in groups of 64k go one row at a time, with what the rows share made
     * 16384 weights at a time: rows of one such segment, and past it, a GQ group across the cut */
    check_matmul(LLMOPT_DTYPE_Q4_0, 1, 9, 16384, 1, 1);
    check_matmul(LLMOPT_DTYPE_Q4_0, 1, 5, 16384 + 64, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 64, 0), 1, 9, 16384, 1, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 128, 1), 1, 9, 16384, 0, 1);
    check_matmul(LLMOPT_DTYPE_GQ(4, 128, 0), 1, 9, 16384 + 128, 1, 1);
    check_matmul(LLMOPT_DTYPE_GQ(4, 64, 1), 1, 5, 16384 + 64, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 192, 1), 1, 5, 192 * 86, 1, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 192, 0), 1, 17, 192 * 86, 0, 1);
    /* Q4_0 reads two blocks at a time against x permuted per 64: an odd number of blocks a row
     * keeps the one-block path and x as it is */
    check_matmul(LLMOPT_DTYPE_Q4_0, 3, 9, 96, 1, 0);
    check_matmul(LLMOPT_DTYPE_Q4_0, 1, 6, 800, 0, 1);
    /* decode quantizes x per 32 in SIMD: ties of x * (1 / d) round away from zero, as roundf */
    g_tie_x = 1;
    check_matmul(LLMOPT_DTYPE_Q8_0, 1, 9, 256, 0, 0);
    check_matmul(LLMOPT_DTYPE_Q4_0, 2, 9, 256, 1, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 128, 1), 1, 9, 768, 0, 0);
    g_tie_x = 0;
}

/* Prefill shapes of the integer GEMM: rows of x past a multiple of its 4-row kernel (M 5..7, 13),
 * panels of 32 rows of W cut short (N 33, 40, 70: a partial second vector, or none), rows longer
 * than one 512-weight pass (K 544, 1056: a pass of one or two blocks after full ones), bias and
 * accumulate, every int-path format, and x ties. */
static void prefill_matmul_covers_kernel_rows_panels_and_passes(void **state) {
    SKIP_IF_UNAVAILABLE();
    check_matmul(LLMOPT_DTYPE_Q8_0, 7, 70, 1056, 1, 1);
    check_matmul(LLMOPT_DTYPE_Q4_0, 13, 33, 768, 0, 0);
    check_matmul(LLMOPT_DTYPE_Q4_1, 5, 40, 544, 1, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 128, 1), 6, 40, 1024, 1, 1);
    check_matmul(LLMOPT_DTYPE_GQ(8, 768, 0), 9, 16, 768, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(3, 64, 0), 8, 35, 576, 1, 0);
    check_matmul(LLMOPT_DTYPE_GQ(2, 32, 1), 5, 47, 544, 0, 1);
    check_matmul(LLMOPT_DTYPE_GQ(4, 32, 0), 12, 64, 64, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 32, 1), 12, 176, 64, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 32, 0), 12, 256, 128, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 32, 0), 12, 128, 256, 0, 1);
    check_matmul(LLMOPT_DTYPE_GQ(4, 32, 0), 12, 512, 128, 0, 0);
    check_matmul(LLMOPT_DTYPE_GQ(4, 32, 0), 12, 2000, 128, 0, 0);
    g_tie_x = 1;
    check_matmul(LLMOPT_DTYPE_Q8_0, 6, 9, 256, 0, 0);
    check_matmul(LLMOPT_DTYPE_Q4_0, 7, 9, 544, 1, 0);
    g_tie_x = 0;
}

static void any_group_kernels_run_int8_per_channel_and_odd_groups(void **state) {
    SKIP_IF_UNAVAILABLE();
    /* int8 per output channel (one group per row of 768), a group of 96 (3 x 32) and one of 24
     * (not a multiple of 32: the one-code-at-a-time path) */
    const int dts[] = {LLMOPT_DTYPE_GQ(8, 768, 0), LLMOPT_DTYPE_GQ(4, 96, 1), LLMOPT_DTYPE_GQ(8, 24, 1)};
    for (size_t i = 0; i < 3; i++) {
        if (!kernel(LLMOPT_OP_MATMUL, dts[i]) || !kernel(LLMOPT_OP_EMBEDDING, dts[i]))
            fail_msg("%s: no matmul or embedding through the any-group key", tname(dts[i]));
        check_matmul(dts[i], 1, 33, 768, 1, 0);
        check_matmul(dts[i], 5, 17, 768, 0, 1);
    }
}

static void embedding_returns_the_dequantized_rows(void **state) {
    SKIP_IF_UNAVAILABLE();
    for (size_t i = 0; i < N_TYPES; i++) {
        const int dt = g_types[i];
        llmopt_tensor *w = trand(11, 256), *q = NULL, *wd = NULL;
        llmopt_error err;
        assert_int_equal(q_quantize_tensor(w, dt, &q, &err), 0);
        assert_int_equal(q_dequantize_tensor(q, &wd, &err), 0);
        llmopt_tensor *ids = rt_tensor_new(LLMOPT_DTYPE_I32, 1, (int64_t[]){5});
        const int32_t pick[5] = {10, 0, 3, 3, 7};
        memcpy(ids->data, pick, sizeof pick);
        llmopt_tensor *out = tnew(LLMOPT_DTYPE_F32, 5, 256);
        const llmopt_tensor *in[2] = {q, ids};
        assert_int_equal(kernel(LLMOPT_OP_EMBEDDING, dt)(in, 2, out, NULL), 0);
        for (int t = 0; t < 5; t++)
            for (int c = 0; c < 256; c++) {
                float got = ((float *)out->data)[t * 256 + c], want = ((float *)wd->data)[pick[t] * 256 + c];
                if (!(fabsf(got - want) <= 1e-6f + 1e-6f * fabsf(want)))
                    fail_msg("%s: row %d col %d is %.9g, expected %.9g", tname(dt), pick[t], c, got, want);
            }
        ((int32_t *)ids->data)[2] = 11; /* out of range */
        assert_int_equal(kernel(LLMOPT_OP_EMBEDDING, dt)(in, 2, out, NULL), LLMOPT_EINVAL);
        rt_tensor_unref(w);
        rt_tensor_unref(q);
        rt_tensor_unref(wd);
        rt_tensor_unref(ids);
        rt_tensor_unref(out);
    }
}

static void matmul_refuses_in_out_layout_and_bad_shapes(void **state) {
    SKIP_IF_UNAVAILABLE();
    llmopt_kernel_fn fn = kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_Q4_0);
    llmopt_tensor *w = trand(64, 64), *q = NULL, *x = trand(2, 64), *out = tnew(LLMOPT_DTYPE_F32, 2, 64);
    llmopt_error err;
    assert_int_equal(q_quantize_tensor(w, LLMOPT_DTYPE_Q4_0, &q, &err), 0);
    const llmopt_tensor *in[3] = {x, q, NULL};
    llmopt_op_matmul p = {sizeof p, LLMOPT_W_IN_OUT, 0, LLMOPT_MATMUL_HIGHEST};
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EUNSUPPORTED);
    p.w_layout = LLMOPT_W_OUT_IN;
    assert_int_equal(fn(in, 2, out, &p), 0);
    llmopt_tensor *x2 = trand(2, 32);                       /* K 32 against W's 64 */
    in[0] = x2;
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EINVAL);
    in[0] = x;
    in[1] = w;                                              /* f32 W under a q4_0 key */
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EINVAL);
    in[1] = q;
    q->nbytes -= 1;                                         /* storage short of the shape */
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EINVAL);
    q->nbytes += 1;
    q->shape[1] = 48;                                       /* not whole blocks */
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EINVAL);
    q->shape[1] = 64;
    llmopt_op_matmul small = {LLMOPT_OP_MATMUL_V0_SIZE - 1, LLMOPT_W_OUT_IN, 0, LLMOPT_MATMUL_HIGHEST};
    assert_int_equal(fn(in, 2, out, &small), LLMOPT_EINVAL);
    rt_tensor_unref(w);
    rt_tensor_unref(q);
    rt_tensor_unref(x);
    rt_tensor_unref(x2);
    rt_tensor_unref(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_quantized_dtype_has_matmul_and_embedding),
        cmocka_unit_test(matmul_matches_f32_on_the_dequantized_weights),
        cmocka_unit_test(decode_matmul_stays_within_the_activation_quantization_bound_at_model_sizes),
        cmocka_unit_test(prefill_matmul_covers_kernel_rows_panels_and_passes),
        cmocka_unit_test(any_group_kernels_run_int8_per_channel_and_odd_groups),
        cmocka_unit_test(embedding_returns_the_dequantized_rows),
        cmocka_unit_test(matmul_refuses_in_out_layout_and_bad_shapes),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
