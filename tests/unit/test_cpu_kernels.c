/* CPU kernel plugin tests: cpu.so is loaded through the real loader and its kernels found in the
 * registry. Hand-computed cases pin the math of both the reference (plugins/cpu/ref.c, compiled
 * into this test) and the registered kernel; random data of awkward sizes (1, odd, ~1000, not
 * multiples of 8 or 16) compares the fast path with the reference within a stated tolerance.
 * ctest also runs this with LLMOPT_CPU_FORCE=generic and =avx2 so every path is covered. */
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
#include "cpu.h"

/* Tolerances. Elementwise ops and row reductions of f32: 1e-5 relative (+1e-6 absolute, for
 * values near 0). matmul and attention sum up to 1000 products in a different order (SIMD lanes,
 * sgemm blocking): 1e-5 relative + 1e-5 * sqrt(K) absolute, inputs uniform in [-1, 1]. */
#define RTOL 1e-5
#define ATOL 1e-6

static registry *g_reg;
static plugin_rec *g_cpu;
static int g_skip;

/* ---- tensors ---- */

static size_t esize(int dtype) {
    return dtype == LLMOPT_DTYPE_F16 || dtype == LLMOPT_DTYPE_BF16 ? 2 : 4;
}

/* A zero-filled CPU tensor owned by the test (free with tfree). */
static llmopt_tensor *tnew(int dtype, int ndim, const int64_t *shape) {
    llmopt_tensor *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->struct_size = sizeof *t;
    t->dtype = dtype;
    t->device = LLMOPT_DEVICE_CPU;
    t->ndim = ndim;
    int64_t n = 1;
    for (int i = 0; i < LLMOPT_MAX_DIMS; i++) {
        t->shape[i] = i < ndim ? shape[i] : 1;
        if (i < ndim) n *= shape[i];
    }
    t->nbytes = (size_t)n * esize(dtype);
    t->data = calloc((size_t)n, esize(dtype));
    assert_non_null(t->data);
    return t;
}

static llmopt_tensor *t1(int dtype, int64_t a) { return tnew(dtype, 1, (int64_t[]){a}); }
static llmopt_tensor *t2(int dtype, int64_t a, int64_t b) { return tnew(dtype, 2, (int64_t[]){a, b}); }
static llmopt_tensor *t3(int dtype, int64_t a, int64_t b, int64_t c) {
    return tnew(dtype, 3, (int64_t[]){a, b, c});
}

static void tfree(llmopt_tensor *t) {
    if (!t) return;
    free(t->data);
    free(t);
}

static int64_t tnumel(const llmopt_tensor *t) { return (int64_t)(t->nbytes / esize(t->dtype)); }
static float *F(const llmopt_tensor *t) { return t->data; }

static void tset(llmopt_tensor *t, const float *v) {
    int64_t n = tnumel(t);
    for (int64_t i = 0; i < n; i++) {
        if (t->dtype == LLMOPT_DTYPE_F32) F(t)[i] = v[i];
        else if (t->dtype == LLMOPT_DTYPE_F16) ((uint16_t *)t->data)[i] = cpu_f32_to_f16(v[i]);
        else ((uint16_t *)t->data)[i] = cpu_f32_to_bf16(v[i]);
    }
}

static uint64_t g_rng = 0x243f6a8885a308d3ull;

/* Uniform in [lo, hi): xorshift64*. */
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    uint64_t r = g_rng * 2685821657736338717ull;
    return lo + (hi - lo) * (float)((double)(r >> 40) / (double)(1ull << 24));
}

static void trand(llmopt_tensor *t, float lo, float hi) {
    int64_t n = tnumel(t);
    float *v = malloc((size_t)n * sizeof(float));
    assert_non_null(v);
    for (int64_t i = 0; i < n; i++) v[i] = frand(lo, hi);
    tset(t, v);
    free(v);
}

static llmopt_tensor *tclone(const llmopt_tensor *src) {
    llmopt_tensor *t = tnew(src->dtype, src->ndim, src->shape);
    memcpy(t->data, src->data, src->nbytes);
    return t;
}

static void assert_close(const float *got, const float *want, int64_t n, double rtol, double atol,
                         const char *what) {
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - (double)want[i]);
        if (!(err <= atol + rtol * fabs((double)want[i])))
            fail_msg("%s: element %lld is %.9g, expected %.9g (|err| %.3g > %.3g)", what, (long long)i,
                     (double)got[i], (double)want[i], err, atol + rtol * fabs((double)want[i]));
    }
}

static void assert_values(const llmopt_tensor *t, const float *want, int64_t n, const char *what) {
    assert_int_equal(tnumel(t), n);
    assert_close(F(t), want, n, 1e-6, 1e-6, what);
}

/* ---- the plugin ---- */

/* The registered kernel for (op, CPU, dtype); fails the test when missing. */
static llmopt_kernel_fn kernel(const char *op, int dtype) {
    const kernel_rec *k = registry_find_kernel(g_reg, op, LLMOPT_DEVICE_CPU, dtype);
    if (!k) fail_msg("no CPU kernel for %s dtype %d", op, dtype);
    assert_ptr_equal(k->plugin, g_cpu);
    return k->desc.fn;
}

typedef struct impl { const char *name; llmopt_kernel_fn fn; } impl;

/* The reference and the registered kernel of an op: hand-computed cases check both. */
static void impls(impl out[2], const char *op, int dtype, llmopt_kernel_fn ref) {
    out[0] = (impl){"reference", ref};
    out[1] = (impl){"registered", kernel(op, dtype)};
}

static int run(llmopt_kernel_fn fn, llmopt_tensor *out, const void *params, int n_in, ...) {
    const llmopt_tensor *in[4] = {0};
    va_list ap;
    va_start(ap, n_in);
    for (int i = 0; i < n_in; i++) in[i] = va_arg(ap, const llmopt_tensor *);
    va_end(ap);
    return fn(in, n_in, out, params);
}

static int group_setup(void **state) {
    (void)state;
    if (cpu_fixture_load(3, &g_cpu) != 0) return -1;
    g_reg = cpu_fixture_reg;
    const char *force = getenv("LLMOPT_CPU_FORCE");
    if (g_cpu->state != PLUGIN_LOADED) {
        /* a forced SIMD path this CPU lacks: nothing to test here */
        if (force && *force && g_cpu->reason && strstr(g_cpu->reason, "lacks")) {
            fprintf(stderr, "skipping: %s\n", g_cpu->reason);
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

/* ---- the plugin and its registrations ---- */

static void plugin_registers_every_op_for_the_cpu_and_names_its_path(void **state) {
    SKIP_IF_UNAVAILABLE();
    assert_string_equal(g_cpu->desc.id, "cpu");
    assert_null(g_cpu->desc.variant_of);
    const char *force = getenv("LLMOPT_CPU_FORCE");
    const char *label = !force || !*force ? "" : strcmp(force, "avx2") == 0 ? "AVX2"
                       : strcmp(force, "avx512") == 0 ? "AVX-512" : strcmp(force, "ref") == 0 ? "reference"
                       : "portable C";
    if (!strstr(g_cpu->desc.summary, label) || !strstr(g_cpu->desc.summary, "CPU kernels"))
        fail_msg("summary '%s' does not name the path '%s'", g_cpu->desc.summary, label);
    const char *f32_ops[] = {LLMOPT_OP_MATMUL, LLMOPT_OP_EMBEDDING, LLMOPT_OP_LAYERNORM, LLMOPT_OP_RMSNORM,
                             LLMOPT_OP_ROPE, LLMOPT_OP_ATTENTION, LLMOPT_OP_GELU, LLMOPT_OP_GELU_ERF,
                             LLMOPT_OP_SILU, LLMOPT_OP_SWIGLU, LLMOPT_OP_ADD, LLMOPT_OP_SOFTMAX,
                             LLMOPT_OP_CROSS_ENTROPY};
    for (size_t i = 0; i < sizeof f32_ops / sizeof f32_ops[0]; i++) {
        const kernel_rec *k = registry_find_kernel(g_reg, f32_ops[i], LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32);
        if (!k || k->desc.dtype != LLMOPT_DTYPE_F32) fail_msg("%s f32 not registered", f32_ops[i]);
        assert_true(k->desc.summary && *k->desc.summary);
    }
    const char *half_ops[] = {LLMOPT_OP_MATMUL, LLMOPT_OP_EMBEDDING};
    for (size_t i = 0; i < 2; i++)
        for (int dt = LLMOPT_DTYPE_F16; dt <= LLMOPT_DTYPE_BF16; dt++) {
            const kernel_rec *k = registry_find_kernel(g_reg, half_ops[i], LLMOPT_DEVICE_CPU, dt);
            if (!k || k->desc.dtype != dt) fail_msg("%s dtype %d not registered", half_ops[i], dt);
        }
    assert_true(g_cpu->n_kernels >= 17); /* the 17 forward ops; quantized and backward kernels add more */
}

/* OpenBLAS runs SIMD kernels on a SIMD CPU: Debian's 0.3.21 fell back to its SSE3 Prescott ones
 * on an Emerald Rapids Xeon (a fifth of the sgemm speed) until the loader set OPENBLAS_CORETYPE
 * from the CPU's features (host/plugin/blas_env.h). */
static void openblas_runs_simd_kernels_on_a_simd_cpu(void **state) {
    SKIP_IF_UNAVAILABLE();
    const char *force = getenv("LLMOPT_CPU_FORCE");
    if (force && strcmp(force, "ref") == 0) skip(); /* no sgemm on the reference path */
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) skip();
    const char *weak[] = {"(Prescott kernels)", "(Core2 kernels)", "(Penryn kernels)", "(Dunnington kernels)",
                          "(Nehalem kernels)", "(Atom kernels)", "(Katmai kernels)", "(Northwood kernels)"};
    for (size_t i = 0; i < sizeof weak / sizeof weak[0]; i++)
        if (strstr(g_cpu->desc.summary, weak[i]))
            fail_msg("an AVX2 CPU, but OpenBLAS chose pre-AVX kernels: %s", g_cpu->desc.summary);
    assert_non_null(strstr(g_cpu->desc.summary, " kernels)"));
#else
    skip();
#endif
}

/* ---- f16 / bf16 conversions ---- */

static void f16_conversion_rounds_to_nearest_even_and_keeps_subnormals(void **state) {
    (void)state;
    assert_int_equal(cpu_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(cpu_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(cpu_f32_to_f16(65504.0f), 0x7bff);          /* largest finite */
    assert_int_equal(cpu_f32_to_f16(65519.0f), 0x7bff);          /* below the halfway point */
    assert_int_equal(cpu_f32_to_f16(65520.0f), 0x7c00);          /* halfway to 2^16: inf */
    assert_int_equal(cpu_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(cpu_f32_to_f16(ldexpf(1, -24)), 0x0001);    /* smallest subnormal */
    assert_int_equal(cpu_f32_to_f16(ldexpf(1, -25)), 0x0000);    /* tie: to even (0) */
    assert_int_equal(cpu_f32_to_f16(ldexpf(3, -25)), 0x0002);    /* tie: to even (2) */
    assert_int_equal(cpu_f32_to_f16(ldexpf(1, -14)), 0x0400);    /* smallest normal */
    assert_int_equal(cpu_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);     /* tie: to even */
    assert_int_equal(cpu_f32_to_f16(1.0f + ldexpf(3, -11)), 0x3c02);     /* tie: to even */
    assert_int_equal(cpu_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3c01);
    assert_true(isnan(cpu_f16_to_f32(cpu_f32_to_f16(NAN))));
    assert_true(cpu_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(cpu_f16_to_f32(0x83ff) == -ldexpf(1023, -24));
    assert_true(cpu_f16_to_f32(0xfc00) == -INFINITY);
    /* every f16 value survives f16 -> f32 -> f16 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = cpu_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
            continue;
        }
        if (cpu_f32_to_f16(f) != h) fail_msg("f16 0x%04x -> %g -> 0x%04x", h, (double)f, cpu_f32_to_f16(f));
    }
}

static void bf16_conversion_rounds_the_top_16_bits_to_nearest_even(void **state) {
    (void)state;
    assert_int_equal(cpu_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(cpu_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);   /* tie: to even */
    assert_int_equal(cpu_f32_to_bf16(1.0f + ldexpf(3, -8)), 0x3f82);   /* tie: to even */
    assert_int_equal(cpu_f32_to_bf16(1.0f + ldexpf(1, -8) + ldexpf(1, -20)), 0x3f81);
    assert_int_equal(cpu_f32_to_bf16(-INFINITY), 0xff80);
    assert_true(isnan(cpu_bf16_to_f32(cpu_f32_to_bf16(NAN))));
    assert_true(cpu_bf16_to_f32(0x4049) == 3.140625f);
}

/* ---- matmul ---- */

static void matmul_computes_x_times_w_plus_bias_in_both_layouts(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_MATMUL, LLMOPT_DTYPE_F32, cpu_ref_matmul);
    for (int dt = LLMOPT_DTYPE_F32; dt <= LLMOPT_DTYPE_BF16; dt++) {
        if (dt != LLMOPT_DTYPE_F32) f[1].fn = kernel(LLMOPT_OP_MATMUL, dt);
        for (int i = 0; i < 2; i++) {
            llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, 1, 2), *b = t1(LLMOPT_DTYPE_F32, 3);
            llmopt_tensor *w_oi = t2(dt, 3, 2), *w_io = t2(dt, 2, 3), *o = t2(LLMOPT_DTYPE_F32, 1, 3);
            tset(x, (float[]){1, 2});
            tset(w_oi, (float[]){1, 0, 0, 1, 1, 1});  /* rows are outputs */
            tset(w_io, (float[]){1, 0, 1, 0, 1, 1});  /* the same map, transposed */
            tset(b, (float[]){10, 20, 30});
            llmopt_op_matmul p = {sizeof p, LLMOPT_W_OUT_IN, 0, LLMOPT_MATMUL_HIGHEST};
            assert_int_equal(run(f[i].fn, o, &p, 2, x, w_oi), 0);
            assert_values(o, (float[]){1, 2, 3}, 3, f[i].name);
            p.w_layout = LLMOPT_W_IN_OUT;
            assert_int_equal(run(f[i].fn, o, &p, 3, x, w_io, b), 0);
            assert_values(o, (float[]){11, 22, 33}, 3, f[i].name);
            p.accumulate = 1; /* out += x W + b */
            assert_int_equal(run(f[i].fn, o, &p, 3, x, w_io, b), 0);
            assert_values(o, (float[]){22, 44, 66}, 3, f[i].name);
            tfree(x), tfree(b), tfree(w_oi), tfree(w_io), tfree(o);
        }
    }
}

static void matmul_rejects_inconsistent_arguments(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_MATMUL, LLMOPT_DTYPE_F32, cpu_ref_matmul);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, 2, 4), *w = t2(LLMOPT_DTYPE_F32, 3, 4);
        llmopt_tensor *o = t2(LLMOPT_DTYPE_F32, 2, 3), *bad_o = t2(LLMOPT_DTYPE_F32, 2, 4);
        llmopt_tensor *bias5 = t1(LLMOPT_DTYPE_F32, 5), *xi = t2(LLMOPT_DTYPE_I32, 2, 4);
        llmopt_op_matmul p = {sizeof p, LLMOPT_W_OUT_IN, 0, LLMOPT_MATMUL_HIGHEST}, in_out = {sizeof p, LLMOPT_W_IN_OUT, 0, LLMOPT_MATMUL_HIGHEST};
        llmopt_op_matmul bad_layout = {sizeof p, 7, 0, LLMOPT_MATMUL_HIGHEST}, small = {2, LLMOPT_W_OUT_IN, 0, LLMOPT_MATMUL_HIGHEST};
        assert_int_equal(run(f[i].fn, o, &p, 2, x, w), 0);
        assert_int_equal(run(f[i].fn, o, &in_out, 2, x, w), LLMOPT_EINVAL);   /* K != W rows */
        assert_int_equal(run(f[i].fn, o, &bad_layout, 2, x, w), LLMOPT_EINVAL);
        assert_int_equal(run(f[i].fn, o, &small, 2, x, w), LLMOPT_EINVAL);     /* struct_size */
        assert_int_equal(run(f[i].fn, o, NULL, 2, x, w), LLMOPT_EINVAL);
        assert_int_equal(run(f[i].fn, o, &p, 1, x), LLMOPT_EINVAL);
        assert_int_equal(run(f[i].fn, bad_o, &p, 2, x, w), LLMOPT_EINVAL);
        assert_int_equal(run(f[i].fn, o, &p, 3, x, w, bias5), LLMOPT_EINVAL);
        assert_int_equal(run(f[i].fn, o, &p, 2, xi, w), LLMOPT_EINVAL);       /* x must be f32 */
        assert_int_equal(run(f[i].fn, o, &p, 3, x, w, NULL), LLMOPT_EINVAL);
        assert_int_equal(f[i].fn(NULL, 2, o, &p), LLMOPT_EINVAL);
        llmopt_tensor alias = *x; /* out over x's storage */
        alias.ndim = 2, alias.shape[0] = 2, alias.shape[1] = 3;
        assert_int_equal(run(f[i].fn, &alias, &p, 2, x, w), LLMOPT_EINVAL);
        w->device = LLMOPT_DEVICE_CUDA;
        assert_int_equal(run(f[i].fn, o, &p, 2, x, w), LLMOPT_EINVAL);
        w->device = LLMOPT_DEVICE_CPU;
        w->nbytes -= 4; /* storage smaller than the shape */
        assert_int_equal(run(f[i].fn, o, &p, 2, x, w), LLMOPT_EINVAL);
        w->nbytes += 4;
        tfree(x), tfree(w), tfree(o), tfree(bad_o), tfree(bias5), tfree(xi);
    }
}

static void matmul_fast_path_matches_reference_on_awkward_sizes(void **state) {
    SKIP_IF_UNAVAILABLE();
    static const int64_t sizes[][3] = {{1, 1, 1},    {1, 1000, 13}, {2, 129, 1000}, {3, 7, 130},
                                       {4, 999, 77}, {5, 33, 17},   {17, 1000, 131}, {64, 77, 300},
                                       {1, 768, 768}};
    for (int dt = LLMOPT_DTYPE_F32; dt <= LLMOPT_DTYPE_BF16; dt++) {
        llmopt_kernel_fn fast = kernel(LLMOPT_OP_MATMUL, dt);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t M = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
            for (int variant = 0; variant < 8; variant++) {
                int layout = variant & 1, with_bias = (variant >> 1) & 1, acc = (variant >> 2) & 1;
                llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, M, K), *b = t1(LLMOPT_DTYPE_F32, N);
                llmopt_tensor *w = layout == LLMOPT_W_OUT_IN ? t2(dt, N, K) : t2(dt, K, N);
                llmopt_tensor *want = t2(LLMOPT_DTYPE_F32, M, N);
                trand(x, -1, 1), trand(w, -1, 1), trand(b, -1, 1), trand(want, -1, 1);
                llmopt_tensor *got = tclone(want);
                llmopt_op_matmul p = {sizeof p, layout, acc, LLMOPT_MATMUL_HIGHEST};
                int n_in = with_bias ? 3 : 2;
                assert_int_equal(run(cpu_ref_matmul, want, &p, n_in, x, w, b), 0);
                assert_int_equal(run(fast, got, &p, n_in, x, w, b), 0);
                char what[128];
                snprintf(what, sizeof what, "matmul dtype %d M=%lld K=%lld N=%lld layout %d bias %d acc %d", dt,
                         (long long)M, (long long)K, (long long)N, layout, with_bias, acc);
                assert_close(F(got), F(want), M * N, RTOL, 1e-5 * sqrt((double)K), what);
                tfree(x), tfree(b), tfree(w), tfree(want), tfree(got);
            }
        }
    }
}

/* LLMOPT_MATMUL_MEDIUM: where the kernel says it runs the AVX-512 BF16 GEMM (its summary), the
 * result is x and W rounded to bf16 with f32 sums: within the f32 summation bound of a double sum
 * of those rounded products, and measurably off the unrounded products (so the bound tells the
 * two apart). Elsewhere medium computes exactly as highest. Sizes cross the kernel's 12-row
 * blocks, 32-column panels and 256-value chunks of K, with odd K and N. */
static double bf16_of(double v) { return (double)cpu_bf16_to_f32(cpu_f32_to_bf16((float)v)); }

static void matmul_at_medium_precision_rounds_x_and_w_to_bf16(void **state) {
    SKIP_IF_UNAVAILABLE();
    static const int64_t sizes[][3] = {{2, 1, 1}, {2, 7, 33}, {13, 257, 77}, {30, 513, 64}, {25, 96, 100}};
    for (int dt = LLMOPT_DTYPE_F32; dt <= LLMOPT_DTYPE_BF16; dt++) {
        const kernel_rec *k = registry_find_kernel(g_reg, LLMOPT_OP_MATMUL, LLMOPT_DEVICE_CPU, dt);
        assert_non_null(k);
        const int bf16_gemm = strstr(k->desc.summary, "BF16 GEMM") != NULL;
        double worst_rounded = 0, worst_exact = 0; /* largest error over its bound, either way */
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            const int64_t M = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
            for (int variant = 0; variant < 8; variant++) {
                const int layout = variant & 1, with_bias = (variant >> 1) & 1, acc = (variant >> 2) & 1;
                llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, M, K), *b = t1(LLMOPT_DTYPE_F32, N);
                llmopt_tensor *w = layout == LLMOPT_W_OUT_IN ? t2(dt, N, K) : t2(dt, K, N);
                llmopt_tensor *got = t2(LLMOPT_DTYPE_F32, M, N);
                trand(x, -1, 1), trand(w, -1, 1), trand(b, -1, 1), trand(got, -1, 1);
                llmopt_tensor *start = tclone(got), *highest = tclone(got);
                llmopt_op_matmul p = {sizeof p, layout, acc, LLMOPT_MATMUL_MEDIUM};
                llmopt_op_matmul ph = {sizeof ph, layout, acc, LLMOPT_MATMUL_HIGHEST};
                const int n_in = with_bias ? 3 : 2;
                assert_int_equal(run(k->desc.fn, got, &p, n_in, x, w, b), 0);
                assert_int_equal(run(k->desc.fn, highest, &ph, n_in, x, w, b), 0);
                char what[128];
                snprintf(what, sizeof what, "medium matmul dtype %d M=%lld K=%lld N=%lld layout %d bias %d acc %d",
                         dt, (long long)M, (long long)K, (long long)N, layout, with_bias, acc);
                if (!bf16_gemm) {
                    assert_close(F(got), F(highest), M * N, 0, 0, what);
                } else {
                    float wv[1];
                    for (int64_t m = 0; m < M; m++)
                        for (int64_t n = 0; n < N; n++) {
                            double rounded = 0, exact = 0, mag = 0;
                            for (int64_t kk = 0; kk < K; kk++) {
                                const int64_t at = layout == LLMOPT_W_OUT_IN ? n * K + kk : kk * N + n;
                                cpu_row_to_f32(wv, (const char *)w->data + at * (int64_t)esize(dt), dt, 1);
                                const double xv = F(x)[m * K + kk];
                                rounded += bf16_of(xv) * bf16_of(wv[0]);
                                exact += xv * wv[0];
                                mag += fabs(bf16_of(xv) * bf16_of(wv[0]));
                            }
                            const double add = (with_bias ? F(b)[n] : 0.0) + (acc ? F(start)[m * N + n] : 0.0);
                            mag += fabs(add);
                            /* f32 sums: K pair adds, a few chunk and bias adds, each within 2^-24 of the partial */
                            const double bound = (double)(K + 8) * ldexp(mag, -24) + 1e-30;
                            const double v = F(got)[m * N + n];
                            const double er = fabs(v - (rounded + add)) / bound, ee = fabs(v - (exact + add)) / bound;
                            if (er > 1) fail_msg("%s: [%lld,%lld] is %.9g, bf16 products give %.9g (bound %.3g)", what,
                                                 (long long)m, (long long)n, v, rounded + add, bound);
                            worst_rounded = er > worst_rounded ? er : worst_rounded;
                            worst_exact = ee > worst_exact ? ee : worst_exact;
                        }
                }
                tfree(x), tfree(b), tfree(w), tfree(got), tfree(start), tfree(highest);
            }
        }
        /* the unrounded products fall far outside the bound: the check above can fail */
        if (bf16_gemm && !(worst_exact > 10)) fail_msg("dtype %d: unrounded products within %.3g of the bound", dt, worst_exact);
        print_message("medium precision, dtype %d: %s (worst error %.2g of the bound; unrounded products %.2g)\n", dt,
                      bf16_gemm ? "AVX-512 BF16 GEMM" : "computed as highest", worst_rounded, worst_exact);
    }
    /* an unknown precision is refused, and a caller built before the field gets highest */
    llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, 2, 4), *w = t2(LLMOPT_DTYPE_F32, 3, 4), *o = t2(LLMOPT_DTYPE_F32, 2, 3);
    llmopt_op_matmul bad = {sizeof bad, LLMOPT_W_OUT_IN, 0, 2}, old = {LLMOPT_OP_MATMUL_V0_SIZE, LLMOPT_W_OUT_IN, 0, 2};
    assert_int_equal(run(kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_F32), o, &bad, 2, x, w), LLMOPT_EINVAL);
    assert_int_equal(run(cpu_ref_matmul, o, &bad, 2, x, w), LLMOPT_EINVAL);
    assert_int_equal(run(kernel(LLMOPT_OP_MATMUL, LLMOPT_DTYPE_F32), o, &old, 2, x, w), 0);
    tfree(x), tfree(w), tfree(o);
}

/* ---- embedding ---- */

static void embedding_gathers_rows_and_rejects_out_of_range_ids(void **state) {
    SKIP_IF_UNAVAILABLE();
    for (int dt = LLMOPT_DTYPE_F32; dt <= LLMOPT_DTYPE_BF16; dt++) {
        impl f[2];
        impls(f, LLMOPT_OP_EMBEDDING, dt, cpu_ref_embedding);
        for (int i = 0; i < 2; i++) {
            llmopt_tensor *table = t2(dt, 3, 2), *ids = t1(LLMOPT_DTYPE_I32, 2), *o = t2(LLMOPT_DTYPE_F32, 2, 2);
            tset(table, (float[]){1, 2, 3, 4, 5, 6});
            int32_t *id = ids->data;
            id[0] = 2, id[1] = 0;
            assert_int_equal(run(f[i].fn, o, NULL, 2, table, ids), 0);
            assert_values(o, (float[]){5, 6, 1, 2}, 4, f[i].name);
            id[1] = 3;
            assert_int_equal(run(f[i].fn, o, NULL, 2, table, ids), LLMOPT_EINVAL);
            id[1] = -1;
            assert_int_equal(run(f[i].fn, o, NULL, 2, table, ids), LLMOPT_EINVAL);
            id[1] = 0;
            llmopt_tensor *wide = t2(LLMOPT_DTYPE_F32, 2, 3);
            assert_int_equal(run(f[i].fn, wide, NULL, 2, table, ids), LLMOPT_EINVAL);
            tfree(table), tfree(ids), tfree(o), tfree(wide);
        }
    }
}

static void embedding_fast_path_matches_reference(void **state) {
    SKIP_IF_UNAVAILABLE();
    for (int dt = LLMOPT_DTYPE_F32; dt <= LLMOPT_DTYPE_BF16; dt++) {
        int64_t V = 1001, C = 37, T = 999;
        llmopt_tensor *table = t2(dt, V, C), *ids = t1(LLMOPT_DTYPE_I32, T);
        llmopt_tensor *want = t2(LLMOPT_DTYPE_F32, T, C), *got = t2(LLMOPT_DTYPE_F32, T, C);
        trand(table, -3, 3);
        for (int64_t t = 0; t < T; t++) ((int32_t *)ids->data)[t] = (int32_t)(frand(0, 1) * (float)V) % (int32_t)V;
        assert_int_equal(run(cpu_ref_embedding, want, NULL, 2, table, ids), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_EMBEDDING, dt), got, NULL, 2, table, ids), 0);
        assert_close(F(got), F(want), T * C, 0, 0, "embedding (exact)");
        tfree(table), tfree(ids), tfree(want), tfree(got);
    }
}

/* ---- layernorm, rmsnorm ---- */

static void layernorm_normalises_with_biased_variance_then_scales_and_shifts(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_LAYERNORM, LLMOPT_DTYPE_F32, cpu_ref_layernorm);
    /* x = [1,2,3,4]: mean 2.5, biased variance 1.25 */
    float r = 1.0f / sqrtf(1.25f);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, 1, 4), *g = t1(LLMOPT_DTYPE_F32, 4), *b = t1(LLMOPT_DTYPE_F32, 4);
        llmopt_tensor *o = t2(LLMOPT_DTYPE_F32, 1, 4);
        tset(x, (float[]){1, 2, 3, 4});
        tset(g, (float[]){1, 1, 1, 1});
        tset(b, (float[]){0, 0, 0, 0});
        llmopt_op_norm p = {sizeof p, 0.0f};
        assert_int_equal(run(f[i].fn, o, &p, 3, x, g, b), 0);
        assert_values(o, (float[]){-1.5f * r, -0.5f * r, 0.5f * r, 1.5f * r}, 4, f[i].name);
        tset(g, (float[]){2, 2, 2, 2});
        tset(b, (float[]){1, 1, 1, 1});
        assert_int_equal(run(f[i].fn, o, &p, 3, x, g, b), 0);
        assert_values(o, (float[]){1 - 3 * r, 1 - r, 1 + r, 1 + 3 * r}, 4, f[i].name);
        assert_int_equal(run(f[i].fn, o, &p, 2, x, g), 0); /* beta is optional */
        assert_values(o, (float[]){-3 * r, -r, r, 3 * r}, 4, f[i].name);
        p.eps = -1.0f;
        assert_int_equal(run(f[i].fn, o, &p, 3, x, g, b), LLMOPT_EINVAL);
        tfree(x), tfree(g), tfree(b), tfree(o);
    }
}

static void rmsnorm_divides_by_root_mean_square(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_RMSNORM, LLMOPT_DTYPE_F32, cpu_ref_rmsnorm);
    for (int i = 0; i < 2; i++) {
        /* x = [3,4]: mean square 12.5 */
        llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, 1, 2), *g = t1(LLMOPT_DTYPE_F32, 2), *o = t2(LLMOPT_DTYPE_F32, 1, 2);
        tset(x, (float[]){3, 4});
        tset(g, (float[]){1, 2});
        llmopt_op_norm p = {sizeof p, 0.0f};
        assert_int_equal(run(f[i].fn, o, &p, 2, x, g), 0);
        float rms = sqrtf(12.5f);
        assert_values(o, (float[]){3 / rms, 8 / rms}, 2, f[i].name);
        assert_int_equal(run(f[i].fn, o, &p, 3, x, g, g), LLMOPT_EINVAL); /* no beta */
        tfree(x), tfree(g), tfree(o);
    }
}

static void norms_fast_path_match_reference(void **state) {
    SKIP_IF_UNAVAILABLE();
    static const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 1000}, {33, 1025}, {1000, 17}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = shapes[s][0], C = shapes[s][1];
        llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, M, C), *g = t1(LLMOPT_DTYPE_F32, C), *b = t1(LLMOPT_DTYPE_F32, C);
        llmopt_tensor *want = t2(LLMOPT_DTYPE_F32, M, C), *got = t2(LLMOPT_DTYPE_F32, M, C);
        trand(x, -2, 3), trand(g, -1, 1), trand(b, -1, 1);
        llmopt_op_norm p = {sizeof p, 1e-5f};
        for (int with_beta = 0; with_beta < 2; with_beta++) {
            assert_int_equal(run(cpu_ref_layernorm, want, &p, 2 + with_beta, x, g, b), 0);
            assert_int_equal(run(kernel(LLMOPT_OP_LAYERNORM, LLMOPT_DTYPE_F32), got, &p, 2 + with_beta, x, g, b), 0);
            assert_close(F(got), F(want), M * C, 1e-4, 1e-5, "layernorm");
        }
        assert_int_equal(run(cpu_ref_rmsnorm, want, &p, 2, x, g), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_RMSNORM, LLMOPT_DTYPE_F32), got, &p, 2, x, g), 0);
        assert_close(F(got), F(want), M * C, RTOL, ATOL, "rmsnorm");
        tfree(x), tfree(g), tfree(b), tfree(want), tfree(got);
    }
}

/* ---- rope ---- */

static void rope_is_identity_at_position_zero_and_rotates_half_pairs(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_ROPE, LLMOPT_DTYPE_F32, cpu_ref_rope);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *x = t3(LLMOPT_DTYPE_F32, 1, 2, 6), *o = t3(LLMOPT_DTYPE_F32, 1, 2, 6);
        float v[12] = {1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, -6};
        tset(x, v);
        llmopt_op_rope p = {sizeof p, 0, 4, 10000.0f, 1.0f};
        assert_int_equal(run(f[i].fn, o, &p, 1, x), 0);
        assert_values(o, v, 12, "rope at position 0");
        /* position 1, rot_dim 4: pairs (x[0], x[2]) at angle 1 and (x[1], x[3]) at 1/100;
         * dims 4..5 pass through */
        p.n_past = 1;
        assert_int_equal(run(f[i].fn, o, &p, 1, x), 0);
        float c0 = cosf(1), s0 = sinf(1), c1 = cosf(0.01f), s1 = sinf(0.01f);
        float want[12] = {1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1, 5, 6};
        for (int e = 0; e < 6; e++) want[6 + e] = -want[e]; /* head 1 is -head 0 */
        assert_values(o, want, 12, f[i].name);
        /* linear scaling: position 2 with scale 2 is position 1 */
        llmopt_tensor *o2 = t3(LLMOPT_DTYPE_F32, 1, 2, 6);
        llmopt_op_rope scaled = {sizeof p, 2, 4, 10000.0f, 2.0f};
        assert_int_equal(run(f[i].fn, o2, &scaled, 1, x), 0);
        assert_close(F(o2), F(o), 12, 1e-6, 1e-6, "rope scale");
        /* in place */
        assert_int_equal(run(f[i].fn, x, &p, 1, x), 0);
        assert_close(F(x), F(o), 12, 0, 0, "rope in place");
        p.rot_dim = 3;
        assert_int_equal(run(f[i].fn, o, &p, 1, x), LLMOPT_EINVAL);
        p.rot_dim = 8;
        assert_int_equal(run(f[i].fn, o, &p, 1, x), LLMOPT_EINVAL);
        tfree(x), tfree(o), tfree(o2);
    }
}

/* in[1], the frequency table of llama3 rope scaling: pair i turns by position * freq[i]. */
static void rope_frequency_table_replaces_thetas(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_ROPE, LLMOPT_DTYPE_F32, cpu_ref_rope);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *x = t3(LLMOPT_DTYPE_F32, 1, 2, 6), *o = t3(LLMOPT_DTYPE_F32, 1, 2, 6), *o2 = t3(LLMOPT_DTYPE_F32, 1, 2, 6);
        float v[12] = {1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, -6};
        tset(x, v);
        /* theta's own frequencies as a table: the same rotation */
        llmopt_tensor *thetas = t1(LLMOPT_DTYPE_F32, 2), *freq = t1(LLMOPT_DTYPE_F32, 2);
        tset(thetas, (float[]){1.0f, 0.01f});
        llmopt_op_rope p = {sizeof p, 3, 4, 10000.0f, 1.0f};
        assert_int_equal(run(f[i].fn, o, &p, 1, x), 0);
        assert_int_equal(run(f[i].fn, o2, &p, 2, x, thetas), 0);
        assert_close(F(o2), F(o), 12, 1e-6, 1e-6, "theta's table");
        /* other frequencies: theta no longer matters; scale still divides the position */
        tset(freq, (float[]){0.25f, 2.0f});
        llmopt_op_rope q = {sizeof q, 2, 4, 123.0f, 2.0f}; /* position 1 */
        assert_int_equal(run(f[i].fn, o, &q, 2, x, freq), 0);
        float c0 = cosf(0.25f), s0 = sinf(0.25f), c1 = cosf(2.0f), s1 = sinf(2.0f);
        float want[12] = {1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1, 5, 6};
        for (int e = 0; e < 6; e++) want[6 + e] = -want[e];
        assert_values(o, want, 12, f[i].name);
        /* in place with a table */
        llmopt_tensor *y = tclone(x);
        assert_int_equal(run(f[i].fn, y, &q, 2, y, freq), 0);
        assert_close(F(y), F(o), 12, 0, 0, "rope table in place");
        /* a table of the wrong length is refused */
        llmopt_tensor *f3 = t1(LLMOPT_DTYPE_F32, 3);
        assert_int_equal(run(f[i].fn, o, &q, 2, x, f3), LLMOPT_EINVAL);
        tfree(x), tfree(o), tfree(o2), tfree(thetas), tfree(freq), tfree(y), tfree(f3);
    }
}

static void rope_fast_path_matches_reference(void **state) {
    SKIP_IF_UNAVAILABLE();
    static const int64_t shapes[][4] = {{1, 1, 2, 2}, {5, 3, 10, 8}, {7, 4, 64, 64}, {33, 5, 96, 32}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        llmopt_tensor *x = t3(LLMOPT_DTYPE_F32, shapes[s][0], shapes[s][1], shapes[s][2]);
        trand(x, -1, 1);
        llmopt_tensor *want = tclone(x), *got = tclone(x);
        llmopt_op_rope p = {sizeof p, 1000, (int32_t)shapes[s][3], 500000.0f, 1.5f};
        assert_int_equal(run(cpu_ref_rope, want, &p, 1, x), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_ROPE, LLMOPT_DTYPE_F32), got, &p, 1, x), 0);
        assert_close(F(got), F(want), tnumel(x), RTOL, ATOL, "rope");
        /* with a frequency table */
        llmopt_tensor *freq = t1(LLMOPT_DTYPE_F32, shapes[s][3] / 2);
        trand(freq, 0, 1);
        assert_int_equal(run(cpu_ref_rope, want, &p, 2, x, freq), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_ROPE, LLMOPT_DTYPE_F32), got, &p, 2, x, freq), 0);
        assert_close(F(got), F(want), tnumel(x), RTOL, ATOL, "rope with a table");
        tfree(x), tfree(want), tfree(got), tfree(freq);
    }
}

/* ---- attention ---- */

static void attention_with_one_key_returns_its_value(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_ATTENTION, LLMOPT_DTYPE_F32, cpu_ref_attention);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *q = t3(LLMOPT_DTYPE_F32, 1, 1, 3), *k = t3(LLMOPT_DTYPE_F32, 1, 1, 3);
        llmopt_tensor *v = t3(LLMOPT_DTYPE_F32, 1, 1, 3), *o = t3(LLMOPT_DTYPE_F32, 1, 1, 3);
        tset(q, (float[]){5, -1, 2});
        tset(k, (float[]){0.3f, 7, 1});
        tset(v, (float[]){4, 5, 6});
        llmopt_op_attention p = {sizeof p, 0, 1, 1 / sqrtf(3)};
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k, v), 0);
        assert_values(o, (float[]){4, 5, 6}, 3, f[i].name);
        tfree(q), tfree(k), tfree(v), tfree(o);
    }
}

static void attention_masks_future_keys_when_causal(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_ATTENTION, LLMOPT_DTYPE_F32, cpu_ref_attention);
    for (int i = 0; i < 2; i++) {
        /* zero queries: every visible key gets the same weight */
        llmopt_tensor *q = t3(LLMOPT_DTYPE_F32, 2, 1, 2), *k = t3(LLMOPT_DTYPE_F32, 3, 1, 2);
        llmopt_tensor *v = t3(LLMOPT_DTYPE_F32, 3, 1, 2), *o = t3(LLMOPT_DTYPE_F32, 2, 1, 2);
        trand(k, -1, 1);
        tset(v, (float[]){2, 4, 6, 8, 100, 100});
        llmopt_op_attention p = {sizeof p, 0, 1, 1.0f};
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k, v), 0);
        assert_values(o, (float[]){2, 4, 4, 6}, 4, "causal, n_past 0"); /* row 0: key 0; row 1: keys 0,1 */
        p.causal = 0;
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k, v), 0);
        assert_values(o, (float[]){4, 6, 4, 6}, 4, "not causal");      /* keys 0..n_past+T-1 */
        p.causal = 1, p.n_past = 1;
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k, v), 0);
        assert_values(o, (float[]){4, 6, 36, 112.0f / 3}, 4, "causal, n_past 1");
        p.n_past = 2; /* needs S >= 4 */
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k, v), LLMOPT_EINVAL);
        tfree(q), tfree(k), tfree(v), tfree(o);
    }
}

static void attention_maps_query_heads_to_kv_groups(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_ATTENTION, LLMOPT_DTYPE_F32, cpu_ref_attention);
    for (int i = 0; i < 2; i++) {
        /* Hq = 4, Hkv = 2: query heads 0,1 read kv head 0; heads 2,3 read kv head 1 */
        llmopt_tensor *q = t3(LLMOPT_DTYPE_F32, 1, 4, 1), *k = t3(LLMOPT_DTYPE_F32, 1, 2, 1);
        llmopt_tensor *v = t3(LLMOPT_DTYPE_F32, 1, 2, 1), *o = t3(LLMOPT_DTYPE_F32, 1, 4, 1);
        trand(q, -1, 1), trand(k, -1, 1);
        tset(v, (float[]){10, 20});
        llmopt_op_attention p = {sizeof p, 0, 1, 1.0f};
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k, v), 0);
        assert_values(o, (float[]){10, 10, 20, 20}, 4, f[i].name);
        llmopt_tensor *k3 = t3(LLMOPT_DTYPE_F32, 1, 3, 1), *v3 = t3(LLMOPT_DTYPE_F32, 1, 3, 1);
        assert_int_equal(run(f[i].fn, o, &p, 3, q, k3, v3), LLMOPT_EINVAL); /* 4 % 3 != 0 */
        tfree(q), tfree(k), tfree(v), tfree(o), tfree(k3), tfree(v3);
    }
}

static void attention_fast_path_matches_reference(void **state) {
    SKIP_IF_UNAVAILABLE();
    /* T, S, Hq, Hkv, D, n_past, causal */
    static const int cfg[][7] = {{1, 9, 4, 2, 7, 8, 1},   {5, 12, 6, 3, 33, 7, 1}, {7, 7, 2, 2, 64, 0, 0},
                                 {3, 20, 8, 1, 17, 10, 0}, {17, 40, 3, 1, 128, 23, 1}, {1, 1000, 2, 1, 64, 999, 1},
                                 /* several query blocks of the fast path (32 rows), a partial last one */
                                 {70, 70, 4, 2, 64, 0, 1},  {45, 50, 3, 3, 16, 5, 1},  {33, 33, 2, 1, 8, 0, 0}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int T = cfg[c][0], S = cfg[c][1], Hq = cfg[c][2], Hkv = cfg[c][3], D = cfg[c][4];
        llmopt_tensor *q = t3(LLMOPT_DTYPE_F32, T, Hq, D), *k = t3(LLMOPT_DTYPE_F32, S, Hkv, D);
        llmopt_tensor *v = t3(LLMOPT_DTYPE_F32, S, Hkv, D);
        llmopt_tensor *want = t3(LLMOPT_DTYPE_F32, T, Hq, D), *got = t3(LLMOPT_DTYPE_F32, T, Hq, D);
        trand(q, -1, 1), trand(k, -1, 1), trand(v, -1, 1);
        llmopt_op_attention p = {sizeof p, cfg[c][5], cfg[c][6], 1 / sqrtf((float)D)};
        assert_int_equal(run(cpu_ref_attention, want, &p, 3, q, k, v), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_ATTENTION, LLMOPT_DTYPE_F32), got, &p, 3, q, k, v), 0);
        assert_close(F(got), F(want), tnumel(want), RTOL, 1e-5 * sqrt((double)D), "attention");
        tfree(q), tfree(k), tfree(v), tfree(want), tfree(got);
    }
}

/* ---- activations, add ---- */

static void activations_match_their_closed_forms(void **state) {
    SKIP_IF_UNAVAILABLE();
    struct { const char *op; llmopt_kernel_fn ref; float in[3], want[3]; } cases[] = {
        /* gelu tanh form at 1: 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) */
        {LLMOPT_OP_GELU, cpu_ref_gelu, {0, 1, -1}, {0, 0.8411920f, -0.1588080f}},
        /* exact: Phi(1) = 0.8413447 */
        {LLMOPT_OP_GELU_ERF, cpu_ref_gelu_erf, {0, 1, -1}, {0, 0.8413447f, -0.1586553f}},
        /* sigmoid(1) = 0.7310586 */
        {LLMOPT_OP_SILU, cpu_ref_silu, {0, 1, -1}, {0, 0.7310586f, -0.2689414f}},
    };
    for (size_t c = 0; c < 3; c++) {
        impl f[2];
        impls(f, cases[c].op, LLMOPT_DTYPE_F32, cases[c].ref);
        for (int i = 0; i < 2; i++) {
            llmopt_tensor *x = t1(LLMOPT_DTYPE_F32, 3), *o = t1(LLMOPT_DTYPE_F32, 3);
            tset(x, cases[c].in);
            assert_int_equal(run(f[i].fn, o, NULL, 1, x), 0);
            assert_values(o, cases[c].want, 3, cases[c].op);
            llmopt_tensor *o4 = t1(LLMOPT_DTYPE_F32, 4);
            assert_int_equal(run(f[i].fn, o4, NULL, 1, x), LLMOPT_EINVAL);
            tfree(x), tfree(o), tfree(o4);
        }
    }
    impl sw[2], ad[2];
    impls(sw, LLMOPT_OP_SWIGLU, LLMOPT_DTYPE_F32, cpu_ref_swiglu);
    impls(ad, LLMOPT_OP_ADD, LLMOPT_DTYPE_F32, cpu_ref_add);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *a = t2(LLMOPT_DTYPE_F32, 1, 2), *b = t2(LLMOPT_DTYPE_F32, 1, 2), *o = t2(LLMOPT_DTYPE_F32, 1, 2);
        tset(a, (float[]){1, 0});
        tset(b, (float[]){2, 5});
        assert_int_equal(run(sw[i].fn, o, NULL, 2, a, b), 0);
        assert_values(o, (float[]){2 * 0.7310586f, 0}, 2, "swiglu");
        assert_int_equal(run(ad[i].fn, a, NULL, 2, a, b), 0); /* in place */
        assert_values(a, (float[]){3, 5}, 2, "add");
        llmopt_tensor *b3 = t2(LLMOPT_DTYPE_F32, 1, 3);
        assert_int_equal(run(ad[i].fn, o, NULL, 2, a, b3), LLMOPT_EINVAL);
        tfree(a), tfree(b), tfree(o), tfree(b3);
    }
}

static void elementwise_fast_paths_match_reference(void **state) {
    SKIP_IF_UNAVAILABLE();
    struct { const char *op; llmopt_kernel_fn ref; int n_in; } ops[] = {
        {LLMOPT_OP_GELU, cpu_ref_gelu, 1},     {LLMOPT_OP_GELU_ERF, cpu_ref_gelu_erf, 1},
        {LLMOPT_OP_SILU, cpu_ref_silu, 1},     {LLMOPT_OP_SWIGLU, cpu_ref_swiglu, 2},
        {LLMOPT_OP_ADD, cpu_ref_add, 2}};
    static const int64_t sizes[] = {1, 7, 1000, 100003};
    for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++)
        for (size_t s = 0; s < 4; s++) {
            llmopt_tensor *a = t1(LLMOPT_DTYPE_F32, sizes[s]), *b = t1(LLMOPT_DTYPE_F32, sizes[s]);
            trand(a, -8, 8), trand(b, -8, 8);
            llmopt_tensor *want = t1(LLMOPT_DTYPE_F32, sizes[s]), *got = tclone(a);
            assert_int_equal(run(ops[o].ref, want, NULL, ops[o].n_in, a, b), 0);
            assert_int_equal(run(kernel(ops[o].op, LLMOPT_DTYPE_F32), got, NULL, ops[o].n_in, got, b), 0); /* in place */
            assert_close(F(got), F(want), sizes[s], RTOL, ATOL, ops[o].op);
            tfree(a), tfree(b), tfree(want), tfree(got);
        }
}

/* ---- softmax, cross_entropy ---- */

static void softmax_of_zero_and_ln2_is_one_third_two_thirds_even_when_shifted(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_SOFTMAX, LLMOPT_DTYPE_F32, cpu_ref_softmax);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, 2, 2), *o = t2(LLMOPT_DTYPE_F32, 2, 2);
        float ln2 = logf(2);
        tset(x, (float[]){0, ln2, 1000, 1000 + ln2}); /* the second row overflows expf unshifted */
        assert_int_equal(run(f[i].fn, o, NULL, 1, x), 0);
        /* 1000 + ln 2 is stored rounded (ulp 6e-5): expect the softmax of the stored values */
        double d = (double)F(x)[3] - (double)F(x)[2];
        float p0 = (float)(1 / (1 + exp(d))), p1 = (float)(1 / (1 + exp(-d)));
        assert_values(o, (float[]){1.0f / 3, 2.0f / 3, p0, p1}, 4, f[i].name);
        assert_int_equal(run(f[i].fn, x, NULL, 1, x), 0); /* in place */
        assert_close(F(x), F(o), 4, 0, 0, "softmax in place");
        tfree(x), tfree(o);
    }
}

static void cross_entropy_is_log_sum_exp_minus_target_logit_and_zero_when_ignored(void **state) {
    SKIP_IF_UNAVAILABLE();
    impl f[2];
    impls(f, LLMOPT_OP_CROSS_ENTROPY, LLMOPT_DTYPE_F32, cpu_ref_cross_entropy);
    for (int i = 0; i < 2; i++) {
        llmopt_tensor *l = t2(LLMOPT_DTYPE_F32, 3, 2), *tg = t1(LLMOPT_DTYPE_I32, 3), *o = t1(LLMOPT_DTYPE_F32, 3);
        tset(l, (float[]){0, 0, 500, 500 + logf(3), 1, 2});
        int32_t *t = tg->data;
        t[0] = 1, t[1] = 0, t[2] = -100;
        llmopt_op_cross_entropy p = {sizeof p, -100};
        assert_int_equal(run(f[i].fn, o, &p, 2, l, tg), 0);
        /* log(1 + 3) up to the rounding of the stored 500 + ln 3 */
        float l4 = (float)log1p(exp((double)F(l)[3] - (double)F(l)[2]));
        assert_values(o, (float[]){logf(2), l4, 0}, 3, f[i].name);
        t[2] = 2; /* not ignored and outside [0, V) */
        assert_int_equal(run(f[i].fn, o, &p, 2, l, tg), LLMOPT_EINVAL);
        tfree(l), tfree(tg), tfree(o);
    }
}

static void softmax_and_cross_entropy_fast_paths_match_reference(void **state) {
    SKIP_IF_UNAVAILABLE();
    static const int64_t shapes[][2] = {{1, 1}, {3, 7}, {17, 1000}, {1000, 33}, {2, 50257}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], V = shapes[s][1];
        llmopt_tensor *x = t2(LLMOPT_DTYPE_F32, T, V), *tg = t1(LLMOPT_DTYPE_I32, T);
        trand(x, -10, 10);
        for (int64_t t = 0; t < T; t++) ((int32_t *)tg->data)[t] = t % 5 == 4 ? -1 : (int32_t)((t * 7919) % V);
        llmopt_tensor *want = t2(LLMOPT_DTYPE_F32, T, V), *got = t2(LLMOPT_DTYPE_F32, T, V);
        assert_int_equal(run(cpu_ref_softmax, want, NULL, 1, x), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_SOFTMAX, LLMOPT_DTYPE_F32), got, NULL, 1, x), 0);
        assert_close(F(got), F(want), T * V, RTOL, ATOL, "softmax");
        llmopt_op_cross_entropy p = {sizeof p, -1};
        llmopt_tensor *lw = t1(LLMOPT_DTYPE_F32, T), *lg = t1(LLMOPT_DTYPE_F32, T);
        assert_int_equal(run(cpu_ref_cross_entropy, lw, &p, 2, x, tg), 0);
        assert_int_equal(run(kernel(LLMOPT_OP_CROSS_ENTROPY, LLMOPT_DTYPE_F32), lg, &p, 2, x, tg), 0);
        assert_close(F(lg), F(lw), T, RTOL, ATOL, "cross_entropy");
        tfree(x), tfree(tg), tfree(want), tfree(got), tfree(lw), tfree(lg);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plugin_registers_every_op_for_the_cpu_and_names_its_path),
        cmocka_unit_test(openblas_runs_simd_kernels_on_a_simd_cpu),
        cmocka_unit_test(f16_conversion_rounds_to_nearest_even_and_keeps_subnormals),
        cmocka_unit_test(bf16_conversion_rounds_the_top_16_bits_to_nearest_even),
        cmocka_unit_test(matmul_computes_x_times_w_plus_bias_in_both_layouts),
        cmocka_unit_test(matmul_rejects_inconsistent_arguments),
        cmocka_unit_test(matmul_fast_path_matches_reference_on_awkward_sizes),
        cmocka_unit_test(matmul_at_medium_precision_rounds_x_and_w_to_bf16),
        cmocka_unit_test(embedding_gathers_rows_and_rejects_out_of_range_ids),
        cmocka_unit_test(embedding_fast_path_matches_reference),
        cmocka_unit_test(layernorm_normalises_with_biased_variance_then_scales_and_shifts),
        cmocka_unit_test(rmsnorm_divides_by_root_mean_square),
        cmocka_unit_test(norms_fast_path_match_reference),
        cmocka_unit_test(rope_is_identity_at_position_zero_and_rotates_half_pairs),
        cmocka_unit_test(rope_frequency_table_replaces_thetas),
        cmocka_unit_test(rope_fast_path_matches_reference),
        cmocka_unit_test(attention_with_one_key_returns_its_value),
        cmocka_unit_test(attention_masks_future_keys_when_causal),
        cmocka_unit_test(attention_maps_query_heads_to_kv_groups),
        cmocka_unit_test(attention_fast_path_matches_reference),
        cmocka_unit_test(activations_match_their_closed_forms),
        cmocka_unit_test(elementwise_fast_paths_match_reference),
        cmocka_unit_test(softmax_of_zero_and_ln2_is_one_third_two_thirds_even_when_shifted),
        cmocka_unit_test(cross_entropy_is_log_sum_exp_minus_target_logit_and_zero_when_ignored),
        cmocka_unit_test(softmax_and_cross_entropy_fast_paths_match_reference),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
