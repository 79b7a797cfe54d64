/* Backward kernels and AdamW of the cpu plugin. The reference backward (plugins/cpu/backward_ref.c,
 * compiled in) is held to the forward reference (ref.c) by central finite differences: for a
 * random upstream gradient w, the loss L = sum(w * forward(inputs)) is evaluated in double over
 * the f32 forward with each input element moved by +-eps (eps = 1e-3, inputs uniform in
 * [-1, 1]); the gradient tensor must match norm-wise, ||num - ana|| / ||num|| < 1e-2 (f32
 * forward rounding divided by 2 eps is ~1e-4 of a unit gradient). The registered (fast) kernels
 * are compared with the reference on awkward sizes within 1e-4 relative + 1e-5 absolute (sgemm
 * and chunked row sums add in another order). */
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
#include "runtime/threadpool.h"
#include "sched/stage_ctx.h"
#include "backward.h"

#define FD_EPS 1e-3
#define FD_RTOL 1e-2
#define FAST_RTOL 1e-4
#define FAST_ATOL 1e-5

static registry *g_reg;

/* ---- tensors ---- */

static size_t esize(int dtype) {
    return dtype == LLMOPT_DTYPE_U8 ? 1 : dtype == LLMOPT_DTYPE_F16 || dtype == LLMOPT_DTYPE_BF16 ? 2 : 4;
}

static llmopt_tensor *tnew(int dtype, int ndim, int64_t a, int64_t b, int64_t c) {
    llmopt_tensor *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->struct_size = sizeof *t;
    t->dtype = dtype;
    t->device = LLMOPT_DEVICE_CPU;
    t->ndim = ndim;
    int64_t s[4] = {a, ndim > 1 ? b : 1, ndim > 2 ? c : 1, 1};
    memcpy(t->shape, s, sizeof s);
    int64_t n = s[0] * s[1] * s[2];
    t->nbytes = (size_t)n * esize(dtype);
    t->data = calloc((size_t)n, esize(dtype));
    assert_non_null(t->data);
    return t;
}

static void tfree(llmopt_tensor *t) {
    if (t) free(t->data);
    free(t);
}

static int64_t numel(const llmopt_tensor *t) { return (int64_t)(t->nbytes / esize(t->dtype)); }
static float *F(const llmopt_tensor *t) { return t->data; }

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return lo + (hi - lo) * (float)((double)((g_rng * 2685821657736338717ull) >> 40) / 16777216.0);
}

static llmopt_tensor *trand(int ndim, int64_t a, int64_t b, int64_t c, float lo, float hi) {
    llmopt_tensor *t = tnew(LLMOPT_DTYPE_F32, ndim, a, b, c);
    for (int64_t i = 0; i < numel(t); i++) F(t)[i] = frand(lo, hi);
    return t;
}

static llmopt_tensor *tclone(const llmopt_tensor *s) {
    llmopt_tensor *t = tnew(s->dtype, s->ndim, s->shape[0], s->shape[1], s->shape[2]);
    memcpy(t->data, s->data, s->nbytes);
    return t;
}

static int run(llmopt_kernel_fn fn, llmopt_tensor *out, const void *params, int n_in, ...) {
    const llmopt_tensor *in[4] = {0};
    va_list ap;
    va_start(ap, n_in);
    for (int i = 0; i < n_in; i++) in[i] = va_arg(ap, const llmopt_tensor *);
    va_end(ap);
    return fn(in, n_in, out, params);
}

static llmopt_kernel_fn kernel(const char *op, int dtype) {
    const kernel_rec *k = registry_find_kernel(g_reg, op, LLMOPT_DEVICE_CPU, dtype);
    if (!k) fail_msg("no CPU kernel for %s dtype %d", op, dtype);
    return k->desc.fn;
}

static void assert_close(const llmopt_tensor *got, const llmopt_tensor *want, const char *what) {
    assert_int_equal(numel(got), numel(want));
    for (int64_t i = 0; i < numel(got); i++) {
        double e = fabs((double)F(got)[i] - F(want)[i]);
        if (!(e <= FAST_ATOL + FAST_RTOL * fabs((double)F(want)[i])))
            fail_msg("%s: element %lld is %.9g, reference %.9g", what, (long long)i, (double)F(got)[i], (double)F(want)[i]);
    }
}

/* ---- finite differences ---- */

/* A forward whose output is dotted with w: L = sum(w * out). */
typedef struct fd_case {
    int (*forward)(struct fd_case *c, llmopt_tensor *out);
    llmopt_tensor *in[4];
    int n_in;
    const void *params;
    llmopt_kernel_fn fn;
    llmopt_tensor *w;
} fd_case;

static int fwd_plain(fd_case *c, llmopt_tensor *out) {
    const llmopt_tensor *in[4] = {c->in[0], c->in[1], c->in[2], c->in[3]};
    return c->fn(in, c->n_in, out, c->params);
}

static double loss(fd_case *c) {
    llmopt_tensor *out = tnew(LLMOPT_DTYPE_F32, c->w->ndim, c->w->shape[0], c->w->shape[1], c->w->shape[2]);
    assert_int_equal(c->forward(c, out), 0);
    double L = 0;
    for (int64_t i = 0; i < numel(out); i++) L += (double)F(c->w)[i] * F(out)[i];
    tfree(out);
    return L;
}

/* Checks grad (the analytic d L / d c->in[which]) against central differences. */
static void fd_check(fd_case *c, int which, const llmopt_tensor *grad, const char *what) {
    llmopt_tensor *x = c->in[which];
    double num2 = 0, diff2 = 0;
    for (int64_t i = 0; i < numel(x); i++) {
        float keep = F(x)[i];
        F(x)[i] = keep + (float)FD_EPS;
        double up = loss(c);
        F(x)[i] = keep - (float)FD_EPS;
        double down = loss(c);
        F(x)[i] = keep;
        double num = (up - down) / (2 * FD_EPS);
        num2 += num * num;
        diff2 += (num - F(grad)[i]) * (num - F(grad)[i]);
    }
    double rel = sqrt(diff2) / (sqrt(num2) + 1e-12);
    if (!(rel < FD_RTOL)) fail_msg("%s: finite differences differ by %.3g (norm-wise relative)", what, rel);
}

/* ---- setup ---- */

static int group_setup(void **state) {
    (void)state;
    plugin_rec *cpu = NULL;
    if (cpu_fixture_load(3, &cpu) != 0 || cpu->state != PLUGIN_LOADED) return -1;
    g_reg = cpu_fixture_reg;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    cpu_fixture_unload();
    return 0;
}

/* ---- gradient checks ---- */

static void matmul_backward_matches_finite_differences_in_both_layouts(void **state) {
    (void)state;
    int64_t M = 3, K = 5, N = 4;
    for (int layout = 0; layout < 2; layout++) {
        llmopt_tensor *x = trand(2, M, K, 1, -1, 1), *b = trand(1, N, 1, 1, -1, 1);
        llmopt_tensor *W = layout == LLMOPT_W_OUT_IN ? trand(2, N, K, 1, -1, 1) : trand(2, K, N, 1, -1, 1);
        llmopt_tensor *dy = trand(2, M, N, 1, -1, 1), *dx = tnew(LLMOPT_DTYPE_F32, 2, M, K, 1);
        llmopt_tensor *dW = tnew(LLMOPT_DTYPE_F32, 2, W->shape[0], W->shape[1], 1), *db = tnew(LLMOPT_DTYPE_F32, 1, N, 1, 1);
        llmopt_op_matmul_backward p = {sizeof p, layout, 0, dW, db, LLMOPT_MATMUL_HIGHEST};
        assert_int_equal(run(cpu_ref_matmul_backward, dx, &p, 3, x, W, dy), 0);
        llmopt_op_matmul fp = {sizeof fp, layout, 0, LLMOPT_MATMUL_HIGHEST};
        fd_case c = {fwd_plain, {x, W, b}, 3, &fp, cpu_ref_matmul, dy};
        fd_check(&c, 0, dx, "matmul dx");
        fd_check(&c, 1, dW, "matmul dW");
        fd_check(&c, 2, db, "matmul db");
        tfree(x), tfree(b), tfree(W), tfree(dy), tfree(dx), tfree(dW), tfree(db);
    }
}

static void norm_backwards_match_finite_differences(void **state) {
    (void)state;
    int64_t M = 3, C = 7;
    for (int ln = 0; ln < 2; ln++) {
        llmopt_tensor *x = trand(2, M, C, 1, -1, 1), *g = trand(1, C, 1, 1, 0.5f, 1.5f), *b = trand(1, C, 1, 1, -1, 1);
        llmopt_tensor *dy = trand(2, M, C, 1, -1, 1), *dx = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1);
        llmopt_tensor *dg = tnew(LLMOPT_DTYPE_F32, 1, C, 1, 1), *dbeta = tnew(LLMOPT_DTYPE_F32, 1, C, 1, 1);
        llmopt_op_norm_backward p = {sizeof p, 1e-5f, dg, ln ? dbeta : NULL};
        assert_int_equal(run(ln ? cpu_ref_layernorm_backward : cpu_ref_rmsnorm_backward, dx, &p, 3, x, g, dy), 0);
        llmopt_op_norm fp = {sizeof fp, 1e-5f};
        fd_case c = {fwd_plain, {x, g, b}, ln ? 3 : 2, &fp, ln ? cpu_ref_layernorm : cpu_ref_rmsnorm, dy};
        fd_check(&c, 0, dx, ln ? "layernorm dx" : "rmsnorm dx");
        fd_check(&c, 1, dg, ln ? "layernorm dgamma" : "rmsnorm dgamma");
        if (ln) fd_check(&c, 2, dbeta, "layernorm dbeta");
        tfree(x), tfree(g), tfree(b), tfree(dy), tfree(dx), tfree(dg), tfree(dbeta);
    }
}

static void rope_backward_matches_finite_differences_with_linear_scaling(void **state) {
    (void)state;
    llmopt_tensor *x = trand(3, 5, 2, 6, -1, 1), *dy = trand(3, 5, 2, 6, -1, 1), *dx = tnew(LLMOPT_DTYPE_F32, 3, 5, 2, 6);
    llmopt_op_rope p = {sizeof p, 3, 4, 100.0f, 2.0f}; /* 2 of 6 dims pass through */
    assert_int_equal(run(cpu_ref_rope_backward, dx, &p, 1, dy), 0);
    fd_case c = {fwd_plain, {x}, 1, &p, cpu_ref_rope, dy};
    fd_check(&c, 0, dx, "rope dx");
    /* with a frequency table (llama3 rope scaling) */
    llmopt_tensor *freq = trand(1, 2, 1, 1, 0, 1);
    assert_int_equal(run(cpu_ref_rope_backward, dx, &p, 2, dy, freq), 0);
    fd_case ct = {fwd_plain, {x, freq}, 2, &p, cpu_ref_rope, dy};
    fd_check(&ct, 0, dx, "rope dx, table");
    tfree(x), tfree(dy), tfree(dx), tfree(freq);
}

static void attention_backward_matches_finite_differences_with_grouped_heads(void **state) {
    (void)state;
    int64_t T = 5, Hq = 4, Hkv = 2, D = 3;
    for (int causal = 0; causal < 2; causal++) {
        llmopt_tensor *q = trand(3, T, Hq, D, -1, 1), *k = trand(3, T, Hkv, D, -1, 1), *v = trand(3, T, Hkv, D, -1, 1);
        llmopt_tensor *dy = trand(3, T, Hq, D, -1, 1), *dq = tnew(LLMOPT_DTYPE_F32, 3, T, Hq, D);
        llmopt_tensor *dk = tnew(LLMOPT_DTYPE_F32, 3, T, Hkv, D), *dv = tnew(LLMOPT_DTYPE_F32, 3, T, Hkv, D);
        llmopt_op_attention_backward p = {sizeof p, causal, 0.7f, dk, dv};
        assert_int_equal(run(cpu_ref_attention_backward, dq, &p, 4, q, k, v, dy), 0);
        llmopt_op_attention fp = {sizeof fp, 0, causal, 0.7f};
        fd_case c = {fwd_plain, {q, k, v}, 3, &fp, cpu_ref_attention, dy};
        fd_check(&c, 0, dq, "attention dq");
        fd_check(&c, 1, dk, "attention dk");
        fd_check(&c, 2, dv, "attention dv");
        tfree(q), tfree(k), tfree(v), tfree(dy), tfree(dq), tfree(dk), tfree(dv);
    }
}

static void activation_backwards_match_finite_differences(void **state) {
    (void)state;
    llmopt_kernel_fn fwd[] = {cpu_ref_gelu, cpu_ref_gelu_erf, cpu_ref_silu};
    llmopt_kernel_fn bwd[] = {cpu_ref_gelu_backward, cpu_ref_gelu_erf_backward, cpu_ref_silu_backward};
    const char *names[] = {"gelu dx", "gelu_erf dx", "silu dx"};
    for (int i = 0; i < 3; i++) {
        llmopt_tensor *x = trand(1, 40, 1, 1, -4, 4), *dy = trand(1, 40, 1, 1, -1, 1), *dx = tnew(LLMOPT_DTYPE_F32, 1, 40, 1, 1);
        assert_int_equal(run(bwd[i], dx, NULL, 2, x, dy), 0);
        fd_case c = {fwd_plain, {x}, 1, NULL, fwd[i], dy};
        fd_check(&c, 0, dx, names[i]);
        tfree(x), tfree(dy), tfree(dx);
    }
    llmopt_tensor *g = trand(2, 3, 7, 1, -3, 3), *u = trand(2, 3, 7, 1, -1, 1), *dy = trand(2, 3, 7, 1, -1, 1);
    llmopt_tensor *dg = tnew(LLMOPT_DTYPE_F32, 2, 3, 7, 1), *du = tnew(LLMOPT_DTYPE_F32, 2, 3, 7, 1);
    llmopt_op_swiglu_backward p = {sizeof p, du};
    assert_int_equal(run(cpu_ref_swiglu_backward, dg, &p, 3, g, u, dy), 0);
    fd_case c = {fwd_plain, {g, u}, 2, NULL, cpu_ref_swiglu, dy};
    fd_check(&c, 0, dg, "swiglu dgate");
    fd_check(&c, 1, du, "swiglu dup");
    tfree(g), tfree(u), tfree(dy), tfree(dg), tfree(du);
}

static void embedding_backward_adds_rows_of_repeated_ids(void **state) {
    (void)state;
    llmopt_tensor *table = trand(2, 5, 3, 1, -1, 1), *ids = tnew(LLMOPT_DTYPE_I32, 1, 4, 1, 1);
    int32_t *id = ids->data;
    id[0] = 2, id[1] = 0, id[2] = 2, id[3] = 4;
    llmopt_tensor *dy = trand(2, 4, 3, 1, -1, 1), *dt = tnew(LLMOPT_DTYPE_F32, 2, 5, 3, 1);
    assert_int_equal(run(cpu_ref_embedding_backward, dt, NULL, 2, ids, dy), 0);
    fd_case c = {fwd_plain, {table, ids}, 2, NULL, cpu_ref_embedding, dy};
    fd_check(&c, 0, dt, "embedding dtable");
    /* row 2 is the sum of dy rows 0 and 2; rows 1 and 3 are untouched */
    assert_true(F(dt)[2 * 3] == F(dy)[0] + F(dy)[2 * 3]);
    assert_true(F(dt)[1 * 3] == 0.0f && F(dt)[3 * 3 + 2] == 0.0f);
    id[3] = 5;
    assert_int_equal(run(cpu_ref_embedding_backward, dt, NULL, 2, ids, dy), LLMOPT_EINVAL);
    tfree(table), tfree(ids), tfree(dy), tfree(dt);
}

/* L = sum_t w_t loss_t, so scale takes the role of w (one value for every row). */
static void cross_entropy_backward_matches_finite_differences_and_zeroes_ignored_rows(void **state) {
    (void)state;
    llmopt_tensor *logits = trand(2, 4, 6, 1, -3, 3), *tg = tnew(LLMOPT_DTYPE_I32, 1, 4, 1, 1);
    int32_t *t = tg->data;
    t[0] = 1, t[1] = -100, t[2] = 5, t[3] = 0;
    llmopt_tensor *w = tnew(LLMOPT_DTYPE_F32, 1, 4, 1, 1), *dl = tnew(LLMOPT_DTYPE_F32, 2, 4, 6, 1);
    for (int i = 0; i < 4; i++) F(w)[i] = 0.25f;
    llmopt_op_cross_entropy_backward p = {sizeof p, -100, 0.25f};
    assert_int_equal(run(cpu_ref_cross_entropy_backward, dl, &p, 2, logits, tg), 0);
    llmopt_op_cross_entropy fp = {sizeof fp, -100};
    fd_case c = {fwd_plain, {logits, tg}, 2, &fp, cpu_ref_cross_entropy, w};
    fd_check(&c, 0, dl, "cross_entropy dlogits");
    for (int i = 0; i < 6; i++) assert_true(F(dl)[6 + i] == 0.0f);
    tfree(logits), tfree(tg), tfree(w), tfree(dl);
}

/* ---- the registered kernels against the reference ---- */

static void matmul_backward_fast_matches_reference_on_awkward_sizes(void **state) {
    (void)state;
    static const int64_t sizes[][3] = {{1, 1, 1}, {3, 7, 130}, {17, 129, 33}, {64, 65, 300}};
    int dtypes[] = {LLMOPT_DTYPE_F32, LLMOPT_DTYPE_F16, LLMOPT_DTYPE_BF16};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int layout = 0; layout < 2; layout++)
            for (int di = 0; di < 3; di++) {
                int64_t M = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
                llmopt_tensor *x = trand(2, M, K, 1, -1, 1), *dy = trand(2, M, N, 1, -1, 1);
                llmopt_tensor *W = layout == LLMOPT_W_OUT_IN ? tnew(dtypes[di], 2, N, K, 1) : tnew(dtypes[di], 2, K, N, 1);
                for (int64_t i = 0; i < numel(W); i++) {
                    float v = frand(-1, 1);
                    if (dtypes[di] == LLMOPT_DTYPE_F32) F(W)[i] = v;
                    else ((uint16_t *)W->data)[i] = dtypes[di] == LLMOPT_DTYPE_F16 ? cpu_f32_to_f16(v) : cpu_f32_to_bf16(v);
                }
                int f32 = dtypes[di] == LLMOPT_DTYPE_F32;
                llmopt_tensor *dx0 = trand(2, M, K, 1, -1, 1), *dx1 = tclone(dx0);
                llmopt_tensor *dw0 = trand(2, W->shape[0], W->shape[1], 1, -1, 1), *dw1 = tclone(dw0);
                llmopt_tensor *db0 = trand(1, N, 1, 1, -1, 1), *db1 = tclone(db0);
                llmopt_op_matmul_backward p0 = {sizeof p0, layout, 1, f32 ? dw0 : NULL, db0, LLMOPT_MATMUL_HIGHEST};
                llmopt_op_matmul_backward p1 = {sizeof p1, layout, 1, f32 ? dw1 : NULL, db1, LLMOPT_MATMUL_HIGHEST};
                assert_int_equal(run(cpu_ref_matmul_backward, dx0, &p0, 3, x, W, dy), 0);
                assert_int_equal(run(kernel(LLMOPT_OP_MATMUL_BACKWARD, dtypes[di]), dx1, &p1, 3, x, W, dy), 0);
                assert_close(dx1, dx0, "matmul_backward dx (accumulated)");
                assert_close(dw1, dw0, "matmul_backward dW");
                assert_close(db1, db0, "matmul_backward db");
                tfree(x), tfree(dy), tfree(W), tfree(dx0), tfree(dx1), tfree(dw0), tfree(dw1), tfree(db0), tfree(db1);
            }
}

/* At matmul_precision medium, where the kernel says dx runs through the AVX-512 BF16 GEMM: dx
 * within the f32 summation bound of dy and W rounded to bf16 (and well outside it for the
 * unrounded products), dW and db exactly highest's. Elsewhere all of it equals highest. */
static double bf16_of(double v) { return (double)cpu_bf16_to_f32(cpu_f32_to_bf16((float)v)); }

static void matmul_backward_dx_at_medium_precision_rounds_to_bf16(void **state) {
    (void)state;
    static const int64_t sizes[][3] = {{2, 7, 33}, {13, 300, 65}, {30, 64, 513}};
    const kernel_rec *k = registry_find_kernel(g_reg, LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32);
    assert_non_null(k);
    const int rounded = strstr(k->desc.summary, "BF16 GEMM") != NULL;
    double worst_exact = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int layout = 0; layout < 2; layout++)
            for (int acc = 0; acc < 2; acc++) {
                const int64_t M = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
                llmopt_tensor *x = trand(2, M, K, 1, -1, 1), *dy = trand(2, M, N, 1, -1, 1);
                llmopt_tensor *W = layout == LLMOPT_W_OUT_IN ? trand(2, N, K, 1, -1, 1) : trand(2, K, N, 1, -1, 1);
                llmopt_tensor *dx0 = trand(2, M, K, 1, -1, 1), *dx1 = tclone(dx0), *start = tclone(dx0);
                llmopt_tensor *dw0 = trand(2, W->shape[0], W->shape[1], 1, -1, 1), *dw1 = tclone(dw0);
                llmopt_tensor *db0 = trand(1, N, 1, 1, -1, 1), *db1 = tclone(db0);
                llmopt_op_matmul_backward ph = {sizeof ph, layout, acc, dw0, db0, LLMOPT_MATMUL_HIGHEST};
                llmopt_op_matmul_backward pm = {sizeof pm, layout, acc, dw1, db1, LLMOPT_MATMUL_MEDIUM};
                assert_int_equal(run(k->desc.fn, dx0, &ph, 3, x, W, dy), 0);
                assert_int_equal(run(k->desc.fn, dx1, &pm, 3, x, W, dy), 0);
                assert_memory_equal(dw1->data, dw0->data, dw0->nbytes);
                assert_memory_equal(db1->data, db0->data, db0->nbytes);
                if (!rounded) {
                    assert_memory_equal(dx1->data, dx0->data, dx0->nbytes);
                } else {
                    for (int64_t m = 0; m < M; m++)
                        for (int64_t kk = 0; kk < K; kk++) {
                            double want = acc ? F(start)[m * K + kk] : 0, exact = want, mag = fabs(want);
                            for (int64_t n = 0; n < N; n++) {
                                const double w = F(W)[layout == LLMOPT_W_OUT_IN ? n * K + kk : kk * N + n];
                                const double g = F(dy)[m * N + n];
                                want += bf16_of(g) * bf16_of(w), exact += g * w, mag += fabs(bf16_of(g) * bf16_of(w));
                            }
                            const double bound = (double)(N + 8) * ldexp(mag, -24) + 1e-30, got = F(dx1)[m * K + kk];
                            if (fabs(got - want) > bound)
                                fail_msg("dx[%lld,%lld] at medium (M=%lld K=%lld N=%lld layout %d acc %d) is %.9g, "
                                         "bf16 products give %.9g (bound %.3g)", (long long)m, (long long)kk, (long long)M,
                                         (long long)K, (long long)N, layout, acc, got, want, bound);
                            worst_exact = fmax(worst_exact, fabs(got - exact) / bound);
                        }
                }
                tfree(x), tfree(dy), tfree(W), tfree(dx0), tfree(dx1), tfree(start);
                tfree(dw0), tfree(dw1), tfree(db0), tfree(db1);
            }
    if (rounded && !(worst_exact > 10)) fail_msg("unrounded products within %.3g of the bound", worst_exact);
    print_message("matmul_backward dx at medium: %s\n", rounded ? "AVX-512 BF16 GEMM" : "computed as highest");
}

static void matmul_backward_refuses_dw_of_half_weights_and_empty_calls(void **state) {
    (void)state;
    llmopt_tensor *x = trand(2, 2, 3, 1, -1, 1), *dy = trand(2, 2, 4, 1, -1, 1), *W = tnew(LLMOPT_DTYPE_F16, 2, 4, 3, 1);
    llmopt_tensor *dx = tnew(LLMOPT_DTYPE_F32, 2, 2, 3, 1), *dw = tnew(LLMOPT_DTYPE_F32, 2, 4, 3, 1);
    llmopt_op_matmul_backward p = {sizeof p, LLMOPT_W_OUT_IN, 0, dw, NULL, LLMOPT_MATMUL_HIGHEST};
    llmopt_kernel_fn fns[] = {cpu_ref_matmul_backward, kernel(LLMOPT_OP_MATMUL_BACKWARD, LLMOPT_DTYPE_F16)};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(run(fns[i], dx, &p, 3, x, W, dy), LLMOPT_EINVAL);
        llmopt_tensor none = *dx;
        none.data = NULL;
        llmopt_op_matmul_backward q = {sizeof q, LLMOPT_W_OUT_IN, 0, NULL, NULL, LLMOPT_MATMUL_HIGHEST};
        assert_int_equal(run(fns[i], &none, &q, 3, x, W, dy), LLMOPT_EINVAL);
    }
    tfree(x), tfree(dy), tfree(W), tfree(dx), tfree(dw);
}

static void row_and_elementwise_backwards_fast_match_reference(void **state) {
    (void)state;
    static const int64_t rows[] = {1, 33, 100};
    static const int64_t cols[] = {1, 7, 1000};
    for (size_t r = 0; r < 3; r++)
        for (size_t cc = 0; cc < 3; cc++) {
            int64_t M = rows[r], C = cols[cc];
            llmopt_tensor *x = trand(2, M, C, 1, -2, 2), *g = trand(1, C, 1, 1, 0.5f, 1.5f), *dy = trand(2, M, C, 1, -1, 1);
            for (int ln = 0; ln < 2; ln++) {
                llmopt_tensor *dx0 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1), *dx1 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1);
                llmopt_tensor *dg0 = trand(1, C, 1, 1, -1, 1), *dg1 = tclone(dg0), *db0 = trand(1, C, 1, 1, -1, 1), *db1 = tclone(db0);
                llmopt_op_norm_backward p0 = {sizeof p0, 1e-5f, dg0, ln ? db0 : NULL}, p1 = {sizeof p1, 1e-5f, dg1, ln ? db1 : NULL};
                const char *op = ln ? LLMOPT_OP_LAYERNORM_BACKWARD : LLMOPT_OP_RMSNORM_BACKWARD;
                assert_int_equal(run(ln ? cpu_ref_layernorm_backward : cpu_ref_rmsnorm_backward, dx0, &p0, 3, x, g, dy), 0);
                assert_int_equal(run(kernel(op, LLMOPT_DTYPE_F32), dx1, &p1, 3, x, g, dy), 0);
                assert_close(dx1, dx0, "norm dx");
                assert_close(dg1, dg0, "norm dgamma");
                assert_close(db1, db0, "norm dbeta");
                tfree(dx0), tfree(dx1), tfree(dg0), tfree(dg1), tfree(db0), tfree(db1);
            }
            const char *ops[] = {LLMOPT_OP_GELU_BACKWARD, LLMOPT_OP_GELU_ERF_BACKWARD, LLMOPT_OP_SILU_BACKWARD};
            llmopt_kernel_fn refs[] = {cpu_ref_gelu_backward, cpu_ref_gelu_erf_backward, cpu_ref_silu_backward};
            for (int i = 0; i < 3; i++) {
                llmopt_tensor *o0 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1), *o1 = tclone(dy);
                assert_int_equal(run(refs[i], o0, NULL, 2, x, dy), 0);
                assert_int_equal(run(kernel(ops[i], LLMOPT_DTYPE_F32), o1, NULL, 2, x, o1), 0); /* in place on dy */
                assert_close(o1, o0, ops[i]);
                tfree(o0), tfree(o1);
            }
            llmopt_tensor *dg0 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1), *du0 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1);
            llmopt_tensor *dg1 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1), *du1 = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1);
            llmopt_op_swiglu_backward s0 = {sizeof s0, du0}, s1 = {sizeof s1, du1};
            assert_int_equal(run(cpu_ref_swiglu_backward, dg0, &s0, 3, x, dy, dy), 0);
            assert_int_equal(run(kernel(LLMOPT_OP_SWIGLU_BACKWARD, LLMOPT_DTYPE_F32), dg1, &s1, 3, x, dy, dy), 0);
            assert_close(dg1, dg0, "swiglu dgate");
            assert_close(du1, du0, "swiglu dup");
            /* embedding: ids cycle over a table of 5 rows, so rows repeat */
            llmopt_tensor *ids = tnew(LLMOPT_DTYPE_I32, 1, M, 1, 1);
            for (int64_t i = 0; i < M; i++) ((int32_t *)ids->data)[i] = (int32_t)((i * 3) % 5);
            llmopt_tensor *t0 = trand(2, 5, C, 1, -1, 1), *t1 = tclone(t0);
            assert_int_equal(run(cpu_ref_embedding_backward, t0, NULL, 2, ids, dy), 0);
            assert_int_equal(run(kernel(LLMOPT_OP_EMBEDDING_BACKWARD, LLMOPT_DTYPE_F32), t1, NULL, 2, ids, dy), 0);
            assert_close(t1, t0, "embedding dtable");
            /* cross-entropy over C classes, every third row ignored */
            for (int64_t i = 0; i < M; i++) ((int32_t *)ids->data)[i] = i % 3 == 2 ? -100 : (int32_t)((i * 7) % C);
            llmopt_op_cross_entropy_backward cp = {sizeof cp, -100, 0.5f};
            assert_int_equal(run(cpu_ref_cross_entropy_backward, dg0, &cp, 2, x, ids), 0);
            assert_int_equal(run(kernel(LLMOPT_OP_CROSS_ENTROPY_BACKWARD, LLMOPT_DTYPE_F32), dg1, &cp, 2, x, ids), 0);
            assert_close(dg1, dg0, "cross_entropy dlogits");
            /* cross_entropy_fused: the losses of cross_entropy and the dlogits of its backward,
             * the reference out of place, the registered kernel in place over a copy of the logits
             * (to the bit what the registered pair of ops gives) */
            llmopt_tensor *l0 = tnew(LLMOPT_DTYPE_F32, 1, M, 1, 1), *lr = tnew(LLMOPT_DTYPE_F32, 1, M, 1, 1);
            llmopt_tensor *l1 = tnew(LLMOPT_DTYPE_F32, 1, M, 1, 1), *lf = tnew(LLMOPT_DTYPE_F32, 1, M, 1, 1);
            llmopt_tensor *dr = tnew(LLMOPT_DTYPE_F32, 2, M, C, 1), *xf = tclone(x);
            llmopt_op_cross_entropy fw = {sizeof fw, -100};
            assert_int_equal(run(cpu_ref_cross_entropy, l0, &fw, 2, x, ids), 0);
            llmopt_op_cross_entropy_fused fr = {sizeof fr, -100, 0.5f, lr}, ff = {sizeof ff, -100, 0.5f, lf};
            assert_int_equal(run(cpu_ref_cross_entropy_fused, dr, &fr, 2, x, ids), 0);
            assert_close(dr, dg0, "cross_entropy_fused (reference) dlogits");
            assert_close(lr, l0, "cross_entropy_fused (reference) losses");
            assert_int_equal(run(kernel(LLMOPT_OP_CROSS_ENTROPY, LLMOPT_DTYPE_F32), l1, &fw, 2, x, ids), 0);
            assert_int_equal(run(kernel(LLMOPT_OP_CROSS_ENTROPY_FUSED, LLMOPT_DTYPE_F32), xf, &ff, 2, xf, ids), 0);
            assert_memory_equal(xf->data, dg1->data, dg1->nbytes);
            assert_memory_equal(lf->data, l1->data, l1->nbytes);
            assert_close(lf, l0, "cross_entropy_fused losses");
            /* out partly over the logits, or losses the wrong length, are refused */
            if (M > 1) {
                llmopt_tensor part = *xf, short_l = *lf; /* part: one value past the logits' start */
                part.data = (float *)xf->data + 1;
                short_l.shape[0] = M - 1, short_l.nbytes -= sizeof(float);
                llmopt_op_cross_entropy_fused fs = {sizeof fs, -100, 0.5f, &short_l};
                assert_int_equal(run(kernel(LLMOPT_OP_CROSS_ENTROPY_FUSED, LLMOPT_DTYPE_F32), &part, &ff, 2, xf, ids),
                                 LLMOPT_EINVAL);
                assert_int_equal(run(kernel(LLMOPT_OP_CROSS_ENTROPY_FUSED, LLMOPT_DTYPE_F32), dr, &fs, 2, x, ids),
                                 LLMOPT_EINVAL);
            }
            tfree(l0), tfree(lr), tfree(l1), tfree(lf), tfree(dr), tfree(xf);
            tfree(dg0), tfree(du0), tfree(dg1), tfree(du1), tfree(ids), tfree(t0), tfree(t1);
            tfree(x), tfree(g), tfree(dy);
        }
}

static void rope_and_attention_backwards_fast_match_reference(void **state) {
    (void)state;
    static const int64_t shapes[][4] = {{1, 1, 1, 2}, {7, 4, 2, 6}, {33, 6, 3, 16}, {130, 2, 1, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], Hq = shapes[s][1], Hkv = shapes[s][2], D = shapes[s][3];
        llmopt_tensor *dy = trand(3, T, Hq, D, -1, 1), *o0 = tnew(LLMOPT_DTYPE_F32, 3, T, Hq, D), *o1 = tclone(dy);
        llmopt_op_rope rp = {sizeof rp, 0, (int32_t)(D >= 4 ? D - 2 : D), 10000.0f, 1.5f};
        assert_int_equal(run(cpu_ref_rope_backward, o0, &rp, 1, dy), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_ROPE_BACKWARD, LLMOPT_DTYPE_F32), o1, &rp, 1, o1), 0); /* in place */
        assert_close(o1, o0, "rope dx");
        llmopt_tensor *freq = trand(1, rp.rot_dim / 2, 1, 1, 0, 1), *o2 = tclone(dy);
        assert_int_equal(run(cpu_ref_rope_backward, o0, &rp, 2, dy, freq), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_ROPE_BACKWARD, LLMOPT_DTYPE_F32), o2, &rp, 2, o2, freq), 0);
        assert_close(o2, o0, "rope dx, table");
        tfree(freq), tfree(o2);
        for (int causal = 0; causal < 2; causal++) {
            llmopt_tensor *q = trand(3, T, Hq, D, -1, 1), *k = trand(3, T, Hkv, D, -1, 1), *v = trand(3, T, Hkv, D, -1, 1);
            llmopt_tensor *dq0 = tnew(LLMOPT_DTYPE_F32, 3, T, Hq, D), *dq1 = tnew(LLMOPT_DTYPE_F32, 3, T, Hq, D);
            llmopt_tensor *dk0 = tnew(LLMOPT_DTYPE_F32, 3, T, Hkv, D), *dk1 = trand(3, T, Hkv, D, -1, 1);
            llmopt_tensor *dv0 = tnew(LLMOPT_DTYPE_F32, 3, T, Hkv, D), *dv1 = trand(3, T, Hkv, D, -1, 1);
            llmopt_op_attention_backward p0 = {sizeof p0, causal, 0.4f, dk0, dv0}, p1 = {sizeof p1, causal, 0.4f, dk1, dv1};
            assert_int_equal(run(cpu_ref_attention_backward, dq0, &p0, 4, q, k, v, dy), 0);
            assert_int_equal(run(kernel(LLMOPT_OP_ATTENTION_BACKWARD, LLMOPT_DTYPE_F32), dq1, &p1, 4, q, k, v, dy), 0);
            assert_close(dq1, dq0, "attention dq");
            assert_close(dk1, dk0, "attention dk (overwritten)");
            assert_close(dv1, dv0, "attention dv (overwritten)");
            tfree(q), tfree(k), tfree(v), tfree(dq0), tfree(dq1), tfree(dk0), tfree(dk1), tfree(dv0), tfree(dv1);
        }
        tfree(dy), tfree(o0), tfree(o1);
    }
}

/* ---- AdamW ---- */

static void adamw_step_matches_hand_computed_values(void **state) {
    (void)state;
    llmopt_kernel_fn fns[] = {cpu_ref_adamw, kernel(LLMOPT_OP_ADAMW, LLMOPT_DTYPE_F32)};
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *g = tnew(LLMOPT_DTYPE_F32, 1, 1, 1, 1), *p = tnew(LLMOPT_DTYPE_F32, 1, 1, 1, 1);
        llmopt_tensor *m = tnew(LLMOPT_DTYPE_F32, 1, 1, 1, 1), *v = tnew(LLMOPT_DTYPE_F32, 1, 1, 1, 1);
        F(g)[0] = 0.5f, F(p)[0] = 1.0f;
        /* step 1, grad 0.5 * grad_scale 2 = 1: m = 0.1, v = 0.001, both bias-corrected to 1;
         * p = 1 * (1 - 0.1 * 0.01) - 0.1 * 1 / (1 + 1e-8) = 0.899 */
        llmopt_op_adamw a = {sizeof a, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 2.0f, 1, m, v};
        assert_int_equal(fns[i](( const llmopt_tensor *const[]){g}, 1, p, &a), 0);
        assert_float_equal(F(m)[0], 0.1f, 1e-7);
        assert_float_equal(F(v)[0], 0.001f, 2e-8); /* 1 - 0.999f is 0.001 to 1.3e-5 relative */
        assert_float_equal(F(p)[0], 0.899f, 1e-6);
        /* step 2 with grad -1: m = 0.09 - 0.1 = -0.01, v = 0.000999 + 0.001 = 0.001999;
         * mhat = -0.01 / 0.19, vhat = 0.001999 / 0.001999 = 1; p = 0.899 (1 - 0.001) + 0.1 * 0.01 / 0.19 */
        F(g)[0] = -0.5f;
        a.step = 2;
        assert_int_equal(fns[i]((const llmopt_tensor *const[]){g}, 1, p, &a), 0);
        double want = 0.899 * 0.999 + 0.1 * (0.01 / 0.19) / (sqrt(0.001999 / (1 - 0.999 * 0.999)) + 1e-8);
        assert_float_equal(F(p)[0], want, 2e-6);
        a.step = 0; /* bias corrections are 1-based */
        assert_int_equal(fns[i]((const llmopt_tensor *const[]){g}, 1, p, &a), LLMOPT_EINVAL);
        tfree(g), tfree(p), tfree(m), tfree(v);
    }
}

static void adamw_fast_matches_reference(void **state) {
    (void)state;
    int64_t n = 100003;
    llmopt_tensor *g = trand(1, n, 1, 1, -1, 1), *p0 = trand(1, n, 1, 1, -1, 1), *p1 = tclone(p0);
    llmopt_tensor *m0 = trand(1, n, 1, 1, -0.1f, 0.1f), *m1 = tclone(m0), *v0 = trand(1, n, 1, 1, 0, 0.01f), *v1 = tclone(v0);
    llmopt_op_adamw a0 = {sizeof a0, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, 7, m0, v0};
    llmopt_op_adamw a1 = a0;
    a1.m = m1, a1.v = v1;
    assert_int_equal(cpu_ref_adamw((const llmopt_tensor *const[]){g}, 1, p0, &a0), 0);
    assert_int_equal(kernel(LLMOPT_OP_ADAMW, LLMOPT_DTYPE_F32)((const llmopt_tensor *const[]){g}, 1, p1, &a1), 0);
    assert_close(p1, p0, "adamw param");
    assert_close(m1, m0, "adamw m");
    assert_close(v1, v0, "adamw v");
    tfree(g), tfree(p0), tfree(p1), tfree(m0), tfree(m1), tfree(v0), tfree(v1);
}

/* ---- AdamW with 8-bit moments ---- */

static void adamw8_maps_are_the_dynamic_maps_of_bitsandbytes(void **state) {
    (void)state;
    float sm[256], um[256];
    llmopt_adamw8_map(1, sm), llmopt_adamw8_map(0, um);
    for (int k = 1; k < 256; k++) assert_true(sm[k - 1] < sm[k] && um[k - 1] < um[k]);
    /* signed: 127 negative values, 0, 127 positive ones, 1; unsigned: 0, 254 positive, 1 */
    assert_true(sm[126] < 0.0f && sm[127] == 0.0f && sm[255] == 1.0f && um[0] == 0.0f && um[255] == 1.0f);
    for (int k = 0; k < 127; k++) assert_true(sm[k] == -sm[254 - k]);
    /* decade 0 (x 1e-6): the midpoint of {0.1, 1} (signed), of {0.1, 0.55, 1} (unsigned) */
    assert_float_equal(sm[128], 0.55e-6, 1e-13);
    assert_float_equal(um[1], 0.325e-6, 1e-13), assert_float_equal(um[2], 0.775e-6, 1e-13);
    /* decade 6: 64 (signed) and 128 (unsigned) midpoints of steps of 0.9/64 and 0.9/128 from 0.1 */
    assert_float_equal(sm[254], 1.0 - 0.45 / 64, 1e-7), assert_float_equal(sm[191], 0.1 + 0.45 / 64, 1e-8);
    assert_float_equal(um[254], 1.0 - 0.45 / 128, 1e-7), assert_float_equal(um[127], 0.1 + 0.45 / 128, 1e-8);
}

typedef struct a8_state {
    llmopt_tensor *p, *m, *v, *am, *av;
} a8_state;

static a8_state a8_new(int64_t n) {
    int64_t blocks = (n + LLMOPT_ADAMW8_BLOCK - 1) / LLMOPT_ADAMW8_BLOCK;
    a8_state s = {trand(1, n, 1, 1, -1, 1), tnew(LLMOPT_DTYPE_U8, 1, n, 1, 1), tnew(LLMOPT_DTYPE_U8, 1, n, 1, 1),
                  tnew(LLMOPT_DTYPE_F32, 1, blocks, 1, 1), tnew(LLMOPT_DTYPE_F32, 1, blocks, 1, 1)};
    return s;
}

static void a8_free(a8_state *s) { tfree(s->p), tfree(s->m), tfree(s->v), tfree(s->am), tfree(s->av); }

static int a8_step(llmopt_kernel_fn fn, a8_state *s, const llmopt_tensor *g, int step) {
    llmopt_op_adamw_8bit a = {sizeof a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, step, s->m, s->v, s->am, s->av};
    return fn((const llmopt_tensor *const[]){g}, 1, s->p, &a);
}

static void adamw_8bit_fast_gives_the_reference_bytes(void **state) {
    (void)state;
    int64_t n = 100003; /* a short last block */
    a8_state r = a8_new(n), f = a8_new(n);
    memcpy(f.p->data, r.p->data, r.p->nbytes);
    llmopt_kernel_fn fast = kernel(LLMOPT_OP_ADAMW_8BIT, LLMOPT_DTYPE_F32);
    for (int step = 1; step <= 5; step++) {
        /* gradients over eight decades, so that every part of the maps is used */
        llmopt_tensor *g = trand(1, n, 1, 1, -1, 1);
        for (int64_t i = 0; i < n; i++) F(g)[i] *= powf(10.0f, -(float)(i % 8));
        assert_int_equal(a8_step(cpu_ref_adamw_8bit, &r, g, step), 0);
        assert_int_equal(a8_step(fast, &f, g, step), 0);
        tfree(g);
        const llmopt_tensor *pairs[5][2] = {{r.p, f.p}, {r.m, f.m}, {r.v, f.v}, {r.am, f.am}, {r.av, f.av}};
        const char *what[5] = {"param", "m codes", "v codes", "m absmax", "v absmax"};
        for (int k = 0; k < 5; k++)
            if (memcmp(pairs[k][0]->data, pairs[k][1]->data, pairs[k][0]->nbytes) != 0)
                fail_msg("step %d: %s differ between the fast and the reference kernel", step, what[k]);
    }
    a8_free(&r), a8_free(&f);
}

/* One step from zero moments: each block's absmax is its largest |moment|, each byte the map
 * entry nearest to moment / absmax, and the parameter moves as f32 AdamW moves it (the update
 * uses the moments before they are stored). */
static void adamw_8bit_stores_each_moment_as_its_nearest_map_entry(void **state) {
    (void)state;
    int64_t n = 4096 + 77;
    a8_state s = a8_new(n);
    llmopt_tensor *p32 = tclone(s.p), *m32 = tnew(LLMOPT_DTYPE_F32, 1, n, 1, 1), *v32 = tnew(LLMOPT_DTYPE_F32, 1, n, 1, 1);
    llmopt_tensor *g = trand(1, n, 1, 1, -1, 1);
    for (int64_t i = 0; i < n; i++) F(g)[i] *= powf(10.0f, -(float)(i % 7));
    assert_int_equal(a8_step(kernel(LLMOPT_OP_ADAMW_8BIT, LLMOPT_DTYPE_F32), &s, g, 1), 0);
    llmopt_op_adamw a = {sizeof a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, 1, m32, v32};
    assert_int_equal(cpu_ref_adamw((const llmopt_tensor *const[]){g}, 1, p32, &a), 0);
    if (memcmp(p32->data, s.p->data, p32->nbytes) != 0) fail_msg("the first step moved the parameter unlike adamw");
    float maps[2][256];
    llmopt_adamw8_map(1, maps[0]), llmopt_adamw8_map(0, maps[1]);
    const uint8_t *codes[2] = {s.m->data, s.v->data};
    const llmopt_tensor *want[2] = {m32, v32}, *absmax[2] = {s.am, s.av};
    for (int w = 0; w < 2; w++)
        for (int64_t b = 0; b * LLMOPT_ADAMW8_BLOCK < n; b++) {
            int64_t i0 = b * LLMOPT_ADAMW8_BLOCK, i1 = i0 + LLMOPT_ADAMW8_BLOCK < n ? i0 + LLMOPT_ADAMW8_BLOCK : n;
            float mx = 0.0f;
            for (int64_t i = i0; i < i1; i++) mx = fmaxf(mx, fabsf(F(want[w])[i]));
            if (F(absmax[w])[b] != mx) fail_msg("%s block %lld: absmax %g, largest |moment| %g", w ? "v" : "m", (long long)b,
                                                (double)F(absmax[w])[b], (double)mx);
            for (int64_t i = i0; i < i1; i++) {
                float x = F(want[w])[i] / mx, got = fabsf(maps[w][codes[w][i]] - x);
                if (w == 1 && x > 0.0f && codes[w][i] == 1 && fabsf(x) < fabsf(x - maps[1][1]))
                    continue; /* a v above 0 is never stored as 0 */
                for (int k = 0; k < 256; k++)
                    if (fabsf(maps[w][k] - x) < got)
                        fail_msg("%s[%lld] = %g of absmax: byte %d (%g), but %d (%g) is nearer", w ? "v" : "m",
                                 (long long)i, (double)x, codes[w][i], (double)maps[w][codes[w][i]], k, (double)maps[w][k]);
            }
        }
    tfree(p32), tfree(m32), tfree(v32), tfree(g);
    a8_free(&s);
}

/* A block holding gradients four decades apart: the small one's v, 1e-8 of the block's absmax,
 * would round to 0 and its next step be m / eps (4.4 with lr 1e-3). Stored as the smallest
 * positive byte, its step stays as small as AdamW's. */
static void adamw_8bit_never_rounds_a_positive_v_to_zero(void **state) {
    (void)state;
    a8_state s = a8_new(LLMOPT_ADAMW8_BLOCK);
    llmopt_tensor *g = tnew(LLMOPT_DTYPE_F32, 1, LLMOPT_ADAMW8_BLOCK, 1, 1);
    for (int64_t i = 0; i < LLMOPT_ADAMW8_BLOCK; i++) F(s.p)[i] = 0.0f, F(g)[i] = 1.0f;
    F(g)[1] = 1e-4f;
    llmopt_kernel_fn fns[] = {cpu_ref_adamw_8bit, kernel(LLMOPT_OP_ADAMW_8BIT, LLMOPT_DTYPE_F32)};
    for (int f = 0; f < 2; f++) {
        memset(s.m->data, 0, s.m->nbytes), memset(s.v->data, 0, s.v->nbytes);
        memset(s.am->data, 0, s.am->nbytes), memset(s.av->data, 0, s.av->nbytes);
        F(s.p)[1] = 0.0f, F(g)[1] = 1e-4f;
        assert_int_equal(a8_step(fns[f], &s, g, 1), 0);
        assert_int_equal(((uint8_t *)s.v->data)[1], 1);
        float p1 = F(s.p)[1];
        F(g)[1] = 1e-9f;
        assert_int_equal(a8_step(fns[f], &s, g, 2), 0);
        if (!(fabsf(F(s.p)[1] - p1) < 1e-3f * 0.5f))
            fail_msg("the small gradient's second step moved it by %g (lr 1e-3)", (double)fabsf(F(s.p)[1] - p1));
    }
    tfree(g);
    a8_free(&s);
}

/* Many steps: the 8-bit moments keep the parameters near f32 AdamW's path. */
static void adamw_8bit_follows_f32_adamw_over_fifty_steps(void **state) {
    (void)state;
    int64_t n = 8192;
    a8_state s = a8_new(n);
    llmopt_tensor *p0 = tclone(s.p), *p32 = tclone(s.p), *m32 = tnew(LLMOPT_DTYPE_F32, 1, n, 1, 1),
                  *v32 = tnew(LLMOPT_DTYPE_F32, 1, n, 1, 1), *dir = trand(1, n, 1, 1, -1, 1);
    for (int step = 1; step <= 50; step++) {
        /* a steady direction plus noise, as gradients are */
        llmopt_tensor *g = trand(1, n, 1, 1, -1, 1);
        for (int64_t i = 0; i < n; i++) F(g)[i] = F(dir)[i] + 0.5f * F(g)[i];
        assert_int_equal(a8_step(kernel(LLMOPT_OP_ADAMW_8BIT, LLMOPT_DTYPE_F32), &s, g, step), 0);
        llmopt_op_adamw a = {sizeof a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, step, m32, v32};
        assert_int_equal(cpu_ref_adamw((const llmopt_tensor *const[]){g}, 1, p32, &a), 0);
        tfree(g);
    }
    double moved = 0, off = 0;
    for (int64_t i = 0; i < n; i++) {
        moved += fabs((double)F(p32)[i] - F(p0)[i]);
        off += fabs((double)F(s.p)[i] - F(p32)[i]);
    }
    print_message("adamw_8bit: mean |p - p_f32| is %.3g%% of f32 AdamW's mean move\n", 100.0 * off / moved);
    assert_true(moved > n * 0.02);      /* about 50 steps of lr 1e-3 */
    assert_true(off < 0.02 * moved);
    tfree(p0), tfree(p32), tfree(m32), tfree(v32), tfree(dir);
    a8_free(&s);
}

static void adamw_8bit_refuses_state_of_the_wrong_size_or_type(void **state) {
    (void)state;
    int64_t n = 600; /* three blocks */
    a8_state s = a8_new(n);
    llmopt_tensor *g = trand(1, n, 1, 1, -1, 1), *two = tnew(LLMOPT_DTYPE_F32, 1, 2, 1, 1),
                  *f32m = tnew(LLMOPT_DTYPE_F32, 1, n, 1, 1);
    llmopt_kernel_fn fns[] = {cpu_ref_adamw_8bit, kernel(LLMOPT_OP_ADAMW_8BIT, LLMOPT_DTYPE_F32)};
    for (int i = 0; i < 2; i++) {
        llmopt_op_adamw_8bit a = {sizeof a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 1, s.m, s.v, two, s.av};
        assert_int_equal(fns[i]((const llmopt_tensor *const[]){g}, 1, s.p, &a), LLMOPT_EINVAL);
        a.m_absmax = s.am, a.m = f32m;
        assert_int_equal(fns[i]((const llmopt_tensor *const[]){g}, 1, s.p, &a), LLMOPT_EINVAL);
        a.m = s.m, a.v = s.m;
        assert_int_equal(fns[i]((const llmopt_tensor *const[]){g}, 1, s.p, &a), LLMOPT_EINVAL);
        a.v = s.v;
        assert_int_equal(fns[i]((const llmopt_tensor *const[]){g}, 1, s.p, &a), 0);
    }
    tfree(g), tfree(two), tfree(f32m);
    a8_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matmul_backward_matches_finite_differences_in_both_layouts),
        cmocka_unit_test(norm_backwards_match_finite_differences),
        cmocka_unit_test(rope_backward_matches_finite_differences_with_linear_scaling),
        cmocka_unit_test(attention_backward_matches_finite_differences_with_grouped_heads),
        cmocka_unit_test(activation_backwards_match_finite_differences),
        cmocka_unit_test(embedding_backward_adds_rows_of_repeated_ids),
        cmocka_unit_test(cross_entropy_backward_matches_finite_differences_and_zeroes_ignored_rows),
        cmocka_unit_test(matmul_backward_fast_matches_reference_on_awkward_sizes),
        cmocka_unit_test(matmul_backward_dx_at_medium_precision_rounds_to_bf16),
        cmocka_unit_test(matmul_backward_refuses_dw_of_half_weights_and_empty_calls),
        cmocka_unit_test(row_and_elementwise_backwards_fast_match_reference),
        cmocka_unit_test(rope_and_attention_backwards_fast_match_reference),
        cmocka_unit_test(adamw_step_matches_hand_computed_values),
        cmocka_unit_test(adamw_fast_matches_reference),
        cmocka_unit_test(adamw8_maps_are_the_dynamic_maps_of_bitsandbytes),
        cmocka_unit_test(adamw_8bit_fast_gives_the_reference_bytes),
        cmocka_unit_test(adamw_8bit_stores_each_moment_as_its_nearest_map_entry),
        cmocka_unit_test(adamw_8bit_follows_f32_adamw_over_fifty_steps),
        cmocka_unit_test(adamw_8bit_never_rounds_a_positive_v_to_zero),
        cmocka_unit_test(adamw_8bit_refuses_state_of_the_wrong_size_or_type),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
