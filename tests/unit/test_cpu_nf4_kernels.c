/* The cpu plugin's NF4 matmul and embedding, and matmul_backward (dx, db) through frozen
 * quantized weights (NF4, GQ, ggml types), loaded through the real loader and compared with f32
 * math on the weights as host/runtime/quant.c dequantizes them: the forward against a double
 * sum, the backward against the f32 matmul_backward kernel run on the dequantized W. ctest runs
 * this with the detected path and again with LLMOPT_CPU_FORCE=ref (the reference loops).
 * Tolerances: f32 sums in another order, 1e-5 relative to the sum of |terms| + 1e-6. */
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

static registry *g_reg;
static plugin_rec *g_cpu;

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    uint64_t r = g_rng * 2685821657736338717ull;
    return lo + (hi - lo) * (float)((double)(r >> 40) / (double)(1ull << 24));
}

static llmopt_tensor *trand(int64_t a, int64_t b) {
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){a, b});
    assert_non_null(t);
    for (int64_t i = 0; i < a * b; i++) ((float *)t->data)[i] = frand(-1, 1);
    return t;
}

/* The kernel registered under exactly this key (or a GQ any-group key), never a fallback. */
static llmopt_kernel_fn kernel(const char *op, int dtype) {
    const kernel_rec *k = registry_find_kernel(g_reg, op, LLMOPT_DEVICE_CPU, dtype);
    if (!k || k->desc.dtype == LLMOPT_DTYPE_ANY) return NULL;
    if (dtype != LLMOPT_DTYPE_F32 && k->desc.dtype == LLMOPT_DTYPE_F32) return NULL;
    return k->desc.fn;
}

static const char *tname(int dt) { return rt_dtype_traits(dt)->name; }

static int group_setup(void **state) {
    (void)state;
    if (cpu_fixture_load(3, &g_cpu) != 0) return -1;
    g_reg = cpu_fixture_reg;
    if (g_cpu->state != PLUGIN_LOADED) {
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

static llmopt_tensor *quantize(const llmopt_tensor *w, int dt, llmopt_tensor **deq) {
    llmopt_tensor *q = NULL;
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(q_quantize_tensor(w, dt, &q, &err), 0);
    assert_int_equal(q_dequantize_tensor(q, deq, &err), 0);
    return q;
}

static void nf4_has_matmul_embedding_and_matmul_backward(void **state) {
    (void)state;
    assert_non_null(kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_NF4));
    assert_non_null(kernel(LLMOPT_OP_EMBEDDING, LLMOPT_DTYPE_NF4));
    assert_non_null(kernel(LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_NF4));
}

static void check_nf4_matmul(int64_t M, int64_t N, int64_t K, int with_bias, int accumulate) {
    llmopt_kernel_fn fn = kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_NF4);
    assert_non_null(fn);
    llmopt_tensor *w = trand(N, K), *x = trand(M, K), *bias = with_bias ? trand(1, N) : NULL, *out = trand(M, N);
    llmopt_tensor *wd = NULL, *q = quantize(w, LLMOPT_DTYPE_NF4, &wd);
    const float *xf = x->data, *wf = wd->data, *o = out->data;
    double *want = malloc((size_t)(M * N) * sizeof *want), *mag = malloc((size_t)(M * N) * sizeof *mag);
    assert_non_null(want);
    assert_non_null(mag);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = bias ? ((float *)bias->data)[n] : 0.0, a = fabs(acc);
            for (int64_t k = 0; k < K; k++) {
                acc += (double)xf[m * K + k] * wf[n * K + k];
                a += fabs((double)xf[m * K + k] * wf[n * K + k]);
            }
            if (accumulate) acc += o[m * N + n], a += fabs(o[m * N + n]);
            want[m * N + n] = acc, mag[m * N + n] = a;
        }
    llmopt_op_matmul p = {sizeof p, LLMOPT_W_OUT_IN, accumulate, LLMOPT_MATMUL_HIGHEST};
    const llmopt_tensor *in[3] = {x, q, bias};
    assert_int_equal(fn(in, bias ? 3 : 2, out, &p), 0);
    for (int64_t i = 0; i < M * N; i++)
        if (!(fabs(o[i] - want[i]) <= 1e-5 * mag[i] + 1e-6))
            fail_msg("nf4 M=%lld N=%lld K=%lld: out[%lld] = %.7g, f32 on dequantized W %.7g", (long long)M, (long long)N,
                     (long long)K, (long long)i, (double)o[i], want[i]);
    free(want), free(mag);
    rt_tensor_unref(w), rt_tensor_unref(x), rt_tensor_unref(bias), rt_tensor_unref(out);
    rt_tensor_unref(q), rt_tensor_unref(wd);
}

static void nf4_matmul_matches_f32_on_the_dequantized_weights(void **state) {
    (void)state;
    const int64_t Ms[] = {1, 3, 4, 5, 64};
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++) {
        check_nf4_matmul(Ms[i], 37, 256, 1, 0);
        check_nf4_matmul(Ms[i], 130, 64 * 5, 0, 1);
    }
    check_nf4_matmul(2, 769, 768, 1, 0); /* a GPT-2-sized row */
}

static void nf4_embedding_returns_the_dequantized_rows_exactly(void **state) {
    (void)state;
    llmopt_tensor *w = trand(11, 192), *wd = NULL, *q = quantize(w, LLMOPT_DTYPE_NF4, &wd);
    llmopt_tensor *ids = rt_tensor_new(LLMOPT_DTYPE_I32, 1, (int64_t[]){5});
    const int32_t pick[5] = {10, 0, 3, 3, 7};
    memcpy(ids->data, pick, sizeof pick);
    llmopt_tensor *out = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){5, 192});
    const llmopt_tensor *in[2] = {q, ids};
    llmopt_kernel_fn fn = kernel(LLMOPT_OP_EMBEDDING, LLMOPT_DTYPE_NF4);
    assert_int_equal(fn(in, 2, out, NULL), 0);
    for (int t = 0; t < 5; t++)
        assert_memory_equal((float *)out->data + t * 192, (float *)wd->data + pick[t] * 192, 192 * sizeof(float));
    ((int32_t *)ids->data)[2] = 11; /* out of range */
    assert_int_equal(fn(in, 2, out, NULL), LLMOPT_EINVAL);
    rt_tensor_unref(w), rt_tensor_unref(wd), rt_tensor_unref(q), rt_tensor_unref(ids), rt_tensor_unref(out);
}

/* dx and db of the quantized kernel against the f32 kernel on the dequantized W. */
static void check_backward(int dt, int64_t M, int64_t N, int64_t K, int accumulate, int with_db) {
    llmopt_kernel_fn qfn = kernel(LLMOPT_OP_MATMUL_BACKWARD, dt), ffn = kernel(LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_F32);
    if (!qfn) fail_msg("%s: no matmul_backward kernel", tname(dt));
    assert_non_null(ffn);
    llmopt_tensor *w = trand(N, K), *x = trand(M, K), *dy = trand(M, N), *wd = NULL, *q = quantize(w, dt, &wd);
    llmopt_tensor *dx = trand(M, K), *dx_want = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){M, K});
    llmopt_tensor *db = with_db ? trand(1, N) : NULL;
    llmopt_tensor *db_want = with_db ? rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){1, N}) : NULL;
    memcpy(dx_want->data, dx->data, dx->nbytes);
    if (db) memcpy(db_want->data, db->data, db->nbytes);
    llmopt_op_matmul_backward pq = {sizeof pq, LLMOPT_W_OUT_IN, accumulate, NULL, db, LLMOPT_MATMUL_HIGHEST};
    llmopt_op_matmul_backward pf = {sizeof pf, LLMOPT_W_OUT_IN, accumulate, NULL, db_want, LLMOPT_MATMUL_HIGHEST};
    const llmopt_tensor *inq[3] = {x, q, dy}, *inf[3] = {x, wd, dy};
    assert_int_equal(ffn(inf, 3, dx_want, &pf), 0);
    assert_int_equal(qfn(inq, 3, dx, &pq), 0);
    const float *g = dx->data, *want = dx_want->data, *dyf = dy->data, *wf = wd->data;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            double mag = 0;
            for (int64_t n = 0; n < N; n++) mag += fabs((double)dyf[m * N + n] * wf[n * K + k]);
            double tol = 1e-5 * (mag + fabs(want[m * K + k])) + 1e-6;
            if (!(fabs((double)g[m * K + k] - want[m * K + k]) <= tol))
                fail_msg("%s M=%lld N=%lld K=%lld acc=%d: dx[%lld,%lld] = %.7g, f32 backward on dequantized W %.7g", tname(dt),
                         (long long)M, (long long)N, (long long)K, accumulate, (long long)m, (long long)k,
                         (double)g[m * K + k], (double)want[m * K + k]);
        }
    for (int64_t n = 0; db && n < N; n++) {
        float a = ((float *)db->data)[n], b = ((float *)db_want->data)[n];
        if (!(fabsf(a - b) <= 1e-5f * (float)M + 1e-6f))
            fail_msg("%s: db[%lld] = %.7g, expected %.7g", tname(dt), (long long)n, a, b);
    }
    rt_tensor_unref(w), rt_tensor_unref(x), rt_tensor_unref(dy), rt_tensor_unref(wd), rt_tensor_unref(q);
    rt_tensor_unref(dx), rt_tensor_unref(dx_want), rt_tensor_unref(db), rt_tensor_unref(db_want);
}

static void quantized_backward_dx_matches_the_f32_backward_on_the_dequantized_weights(void **state) {
    (void)state;
    const int dts[] = {LLMOPT_DTYPE_NF4,         LLMOPT_DTYPE_GQ(4, 32, 0), LLMOPT_DTYPE_GQ(4, 64, 0),
                       LLMOPT_DTYPE_GQ(4, 128, 0), LLMOPT_DTYPE_GQ(4, 64, 1), LLMOPT_DTYPE_GQ(4, 128, 1),
                       LLMOPT_DTYPE_Q4_0,        LLMOPT_DTYPE_Q8_0,         LLMOPT_DTYPE_GQ(8, 384, 0),
                       LLMOPT_DTYPE_GQ(3, 64, 1), LLMOPT_DTYPE_GQ(4, 96, 1)};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        /* K 384: a short last column block (256 + 128); N 300: a short last row tile */
        check_backward(dts[i], 5, 300, 384, 0, 0);
        check_backward(dts[i], 1, 37, 384, 1, 1);
    }
    check_backward(LLMOPT_DTYPE_NF4, 64, 130, 768, 0, 1);
}

/* matmul_precision medium through NF4: where the kernel says it has the AVX-512 BF16 GEMM (M > 4
 * forward, M >= 2 dx), x (or dy) and the dequantized W are rounded to bf16 (nearest, ties to
 * even) and the products summed in f32: within (terms + 8) f32 roundings of the bf16-rounded
 * double sum, and far outside that bound of the unrounded one (so the check can fail).
 * Elsewhere medium gives exactly what highest gives. */
static double bf16_of(double v) {
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&f, &u, 4);
    return f;
}

static int says_bf16_gemm(const char *op) {
    const kernel_rec *k = registry_find_kernel(g_reg, op, LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_NF4);
    return k && strstr(k->desc.summary, "BF16 GEMM") != NULL;
}

/* out (M x N, row stride N) against a[m][k] · b[n][k] rounded to bf16, plus add; returns the
 * worst error of the unrounded products over the bound. */
static double check_rounded(const char *what, const float *got, const float *a, const float *b, const float *add,
                            int64_t M, int64_t N, int64_t K) {
    double worst_exact = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double rounded = 0, exact = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                rounded += bf16_of(a[m * K + k]) * bf16_of(b[n * K + k]);
                exact += (double)a[m * K + k] * b[n * K + k];
                mag += fabs(bf16_of(a[m * K + k]) * bf16_of(b[n * K + k]));
            }
            const double extra = add ? add[m * N + n] : 0.0, bound = (double)(K + 8) * ldexp(mag + fabs(extra), -24) + 1e-30;
            const double v = got[m * N + n];
            if (fabs(v - (rounded + extra)) > bound)
                fail_msg("%s: [%lld,%lld] is %.9g, bf16 products give %.9g (bound %.3g)", what, (long long)m, (long long)n,
                         v, rounded + extra, bound);
            const double ee = fabs(v - (exact + extra)) / bound;
            worst_exact = ee > worst_exact ? ee : worst_exact;
        }
    return worst_exact;
}

static void nf4_at_medium_precision_rounds_x_and_w_to_bf16(void **state) {
    (void)state;
    const int fwd_gemm = says_bf16_gemm(LLMOPT_OP_MATMUL), bwd_gemm = says_bf16_gemm(LLMOPT_OP_MATMUL_BACKWARD);
    llmopt_kernel_fn fwd = kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_NF4), bwd = kernel(LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_NF4);
    /* M crosses the 12-row micro-kernel, N the 32-column panels, K the 256-value chunks */
    static const int64_t sizes[][3] = {{5, 37, 192}, {13, 130, 320}, {30, 33, 768}, {2, 64, 64}};
    double worst_fwd = 0, worst_bwd = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
        for (int variant = 0; variant < 4; variant++) {
            const int with_bias = variant & 1, acc = variant >> 1;
            llmopt_tensor *w = trand(N, K), *x = trand(M, K), *bias = with_bias ? trand(1, N) : NULL, *out = trand(M, N);
            llmopt_tensor *wd = NULL, *q = quantize(w, LLMOPT_DTYPE_NF4, &wd), *high = trand(M, N);
            memcpy(high->data, out->data, out->nbytes);
            float *add = malloc((size_t)(M * N) * sizeof *add);
            assert_non_null(add);
            for (int64_t i = 0; i < M * N; i++)
                add[i] = (with_bias ? ((float *)bias->data)[i % N] : 0.0f) + (acc ? ((float *)out->data)[i] : 0.0f);
            llmopt_op_matmul pm = {sizeof pm, LLMOPT_W_OUT_IN, acc, LLMOPT_MATMUL_MEDIUM};
            llmopt_op_matmul ph = {sizeof ph, LLMOPT_W_OUT_IN, acc, LLMOPT_MATMUL_HIGHEST};
            const llmopt_tensor *in[3] = {x, q, bias};
            assert_int_equal(fwd(in, bias ? 3 : 2, out, &pm), 0);
            assert_int_equal(fwd(in, bias ? 3 : 2, high, &ph), 0);
            char what[128];
            snprintf(what, sizeof what, "nf4 medium matmul M=%lld N=%lld K=%lld bias %d acc %d", (long long)M,
                     (long long)N, (long long)K, with_bias, acc);
            if (fwd_gemm && M > 4) {
                double e = check_rounded(what, out->data, x->data, wd->data, add, M, N, K);
                worst_fwd = e > worst_fwd ? e : worst_fwd;
            } else {
                assert_memory_equal(out->data, high->data, out->nbytes);
            }
            /* dx = dy · W: the same rounding, W read along its columns */
            llmopt_tensor *dy = trand(M, N), *dx = trand(M, K), *dxh = trand(M, K);
            memcpy(dxh->data, dx->data, dx->nbytes);
            float *addx = malloc((size_t)(M * K) * sizeof *addx), *wt = malloc((size_t)(N * K) * sizeof *wt);
            assert_non_null(addx);
            assert_non_null(wt);
            for (int64_t i = 0; i < M * K; i++) addx[i] = acc ? ((float *)dx->data)[i] : 0.0f;
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < K; k++) wt[k * N + n] = ((float *)wd->data)[n * K + k];
            llmopt_op_matmul_backward bm = {sizeof bm, LLMOPT_W_OUT_IN, acc, NULL, NULL, LLMOPT_MATMUL_MEDIUM};
            llmopt_op_matmul_backward bh = {sizeof bh, LLMOPT_W_OUT_IN, acc, NULL, NULL, LLMOPT_MATMUL_HIGHEST};
            const llmopt_tensor *bin[3] = {x, q, dy};
            assert_int_equal(bwd(bin, 3, dx, &bm), 0);
            assert_int_equal(bwd(bin, 3, dxh, &bh), 0);
            snprintf(what, sizeof what, "nf4 medium dx M=%lld N=%lld K=%lld acc %d", (long long)M, (long long)N,
                     (long long)K, acc);
            if (bwd_gemm) {
                double e = check_rounded(what, dx->data, dy->data, wt, addx, M, K, N);
                worst_bwd = e > worst_bwd ? e : worst_bwd;
            } else {
                assert_memory_equal(dx->data, dxh->data, dx->nbytes);
            }
            free(add), free(addx), free(wt);
            rt_tensor_unref(w), rt_tensor_unref(x), rt_tensor_unref(bias), rt_tensor_unref(out), rt_tensor_unref(high);
            rt_tensor_unref(q), rt_tensor_unref(wd), rt_tensor_unref(dy), rt_tensor_unref(dx), rt_tensor_unref(dxh);
        }
    }
    if (fwd_gemm && !(worst_fwd > 10)) fail_msg("forward: unrounded products within %.3g of the bound", worst_fwd);
    if (bwd_gemm && !(worst_bwd > 10)) fail_msg("dx: unrounded products within %.3g of the bound", worst_bwd);
    print_message("nf4 at medium: forward %s, dx %s (unrounded products %.2g / %.2g of the bound)\n",
                  fwd_gemm ? "AVX-512 BF16 GEMM" : "as highest", bwd_gemm ? "AVX-512 BF16 GEMM" : "as highest", worst_fwd,
                  worst_bwd);
}

static void quantized_backward_refuses_a_weight_gradient_and_bad_shapes(void **state) {
    (void)state;
    llmopt_kernel_fn fn = kernel(LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_NF4);
    llmopt_tensor *w = trand(8, 128), *wd = NULL, *q = quantize(w, LLMOPT_DTYPE_NF4, &wd);
    llmopt_tensor *x = trand(2, 128), *dy = trand(2, 8), *dx = trand(2, 128), *dw = trand(8, 128);
    const llmopt_tensor *in[3] = {x, q, dy};
    llmopt_op_matmul_backward p = {sizeof p, LLMOPT_W_OUT_IN, 0, NULL, NULL, LLMOPT_MATMUL_HIGHEST};
    assert_int_equal(fn(in, 3, dx, &p), 0);
    p.dw = dw; /* a frozen quantized W has no gradient */
    assert_int_equal(fn(in, 3, dx, &p), LLMOPT_EINVAL);
    p.dw = NULL;
    p.w_layout = LLMOPT_W_IN_OUT;
    assert_int_equal(fn(in, 3, dx, &p), LLMOPT_EUNSUPPORTED);
    p.w_layout = LLMOPT_W_OUT_IN;
    llmopt_tensor *dy2 = trand(2, 9); /* N 9 against W's 8 */
    in[2] = dy2;
    assert_int_equal(fn(in, 3, dx, &p), LLMOPT_EINVAL);
    in[2] = dy;
    in[1] = wd; /* f32 W under the nf4 key */
    assert_int_equal(fn(in, 3, dx, &p), LLMOPT_EINVAL);
    in[1] = q;
    q->nbytes -= 1; /* storage short of the shape */
    assert_int_equal(fn(in, 3, dx, &p), LLMOPT_EINVAL);
    q->nbytes += 1;
    llmopt_tensor nodx = *dx;
    nodx.data = NULL; /* neither dx nor db: nothing to do */
    assert_int_equal(fn(in, 3, &nodx, &p), LLMOPT_EINVAL);
    rt_tensor_unref(w), rt_tensor_unref(wd), rt_tensor_unref(q), rt_tensor_unref(x), rt_tensor_unref(dy);
    rt_tensor_unref(dy2), rt_tensor_unref(dx), rt_tensor_unref(dw);
}

static void nf4_matmul_refuses_in_out_layout_and_bad_shapes(void **state) {
    (void)state;
    llmopt_kernel_fn fn = kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_NF4);
    llmopt_tensor *w = trand(64, 128), *wd = NULL, *q = quantize(w, LLMOPT_DTYPE_NF4, &wd);
    llmopt_tensor *x = trand(2, 128), *x2 = trand(2, 64), *out = trand(2, 64);
    const llmopt_tensor *in[3] = {x, q, NULL};
    llmopt_op_matmul p = {sizeof p, LLMOPT_W_IN_OUT, 0, LLMOPT_MATMUL_HIGHEST};
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EUNSUPPORTED);
    p.w_layout = LLMOPT_W_OUT_IN;
    assert_int_equal(fn(in, 2, out, &p), 0);
    in[0] = x2; /* K 64 against W's 128 */
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EINVAL);
    in[0] = x;
    q->shape[1] = 96; /* not whole blocks of 64 */
    assert_int_equal(fn(in, 2, out, &p), LLMOPT_EINVAL);
    q->shape[1] = 128;
    rt_tensor_unref(w), rt_tensor_unref(wd), rt_tensor_unref(q), rt_tensor_unref(x), rt_tensor_unref(x2);
    rt_tensor_unref(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nf4_has_matmul_embedding_and_matmul_backward),
        cmocka_unit_test(nf4_matmul_matches_f32_on_the_dequantized_weights),
        cmocka_unit_test(nf4_embedding_returns_the_dequantized_rows_exactly),
        cmocka_unit_test(quantized_backward_dx_matches_the_f32_backward_on_the_dequantized_weights),
        cmocka_unit_test(quantized_backward_refuses_a_weight_gradient_and_bad_shapes),
        cmocka_unit_test(nf4_matmul_refuses_in_out_layout_and_bad_shapes),
        cmocka_unit_test(nf4_at_medium_precision_rounds_x_and_w_to_bf16),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
