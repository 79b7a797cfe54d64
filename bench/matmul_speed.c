/* The matmul kernel alone, as the runtime calls it: GFLOP/s of the registered matmul for given
 * shapes, weight dtype, layout and matmul precision, through the real loader and the host's
 * thread pool (built as <build>/bench/matmul_speed).
 *
 *   matmul_speed --plugins DIR [--threads T] [--reps N] [--dtype f32|f16|bf16] [--layout out_in|in_out]
 *                [--precision highest|medium] [--shape MxNxK ...]
 *
 * Without --shape: the linear layers of a 512-token prefill of Llama 3.2 1B (q, k/v, o, gate/up,
 * down). One line per shape, `key=value` fields (bench scripts grep them):
 *   matmul dtype=bf16 layout=out_in precision=medium threads=2 M=512 N=2048 K=2048 best_s=... gflops=...
 * then `total ... gflops=` over the set (the flop-weighted rate of the whole set). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plugin/loader.h"
#include "runtime/runtime.h"
#include "runtime/threadpool.h"
#include "sched/stage_ctx.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(void) {
    fprintf(stderr, "usage: matmul_speed --plugins DIR [--threads T] [--reps N] [--dtype f32|f16|bf16] "
                    "[--layout out_in|in_out] [--precision highest|medium] [--shape MxNxK ...]\n");
    return 2;
}

/* uniform in [-1, 1), deterministic */
static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 40) / (double)(1ull << 23)) - 1.0f;
}

int main(int argc, char **argv) {
    const char *plugins = NULL, *dtype_name = "bf16";
    int threads = 2, reps = 5, layout = LLMOPT_W_OUT_IN, precision = LLMOPT_MATMUL_HIGHEST;
    int64_t shapes[16][3];
    int n_shapes = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        i++;
        if (strcmp(a, "--plugins") == 0) plugins = v;
        else if (strcmp(a, "--threads") == 0) threads = atoi(v);
        else if (strcmp(a, "--reps") == 0) reps = atoi(v);
        else if (strcmp(a, "--dtype") == 0) dtype_name = v;
        else if (strcmp(a, "--layout") == 0 && (strcmp(v, "out_in") == 0 || strcmp(v, "in_out") == 0))
            layout = strcmp(v, "out_in") == 0 ? LLMOPT_W_OUT_IN : LLMOPT_W_IN_OUT;
        else if (strcmp(a, "--precision") == 0 && (strcmp(v, "highest") == 0 || strcmp(v, "medium") == 0))
            precision = strcmp(v, "medium") == 0 ? LLMOPT_MATMUL_MEDIUM : LLMOPT_MATMUL_HIGHEST;
        else if (strcmp(a, "--shape") == 0 && n_shapes < 16) {
            long long m, n, k;
            if (sscanf(v, "%lldx%lldx%lld", &m, &n, &k) != 3 || m < 1 || n < 1 || k < 1) return usage();
            shapes[n_shapes][0] = m, shapes[n_shapes][1] = n, shapes[n_shapes][2] = k;
            n_shapes++;
        } else
            return usage();
    }
    const int dtype = strcmp(dtype_name, "f32") == 0 ? LLMOPT_DTYPE_F32 : strcmp(dtype_name, "f16") == 0 ? LLMOPT_DTYPE_F16
                      : strcmp(dtype_name, "bf16") == 0 ? LLMOPT_DTYPE_BF16 : -1;
    if (!plugins || dtype < 0 || threads < 1 || reps < 1) return usage();
    if (n_shapes == 0) {
        static const int64_t llama[][3] = {{512, 2048, 2048}, {512, 512, 2048}, {512, 8192, 2048}, {512, 2048, 8192}};
        n_shapes = 4;
        memcpy(shapes, llama, sizeof llama);
    }

    tp_set_threads(threads);
    registry *reg = registry_new();
    llmopt_error err = {0};
    const char *dirs[] = {plugins};
    if (!reg || loader_load_dirs(reg, dirs, 1, host_api_table(), &err) != 0) {
        fprintf(stderr, "matmul_speed: loading %s: %s\n", plugins, err.msg);
        return 1;
    }
    host_api_set_registry(reg);
    const kernel_rec *k = registry_find_kernel(reg, LLMOPT_OP_MATMUL, LLMOPT_DEVICE_CPU, dtype);
    if (!k) {
        fprintf(stderr, "matmul_speed: no CPU matmul kernel for %s in %s\n", dtype_name, plugins);
        return 1;
    }
    fprintf(stderr, "kernel: %s\n", k->desc.summary ? k->desc.summary : "?");
    double flops_all = 0, secs_all = 0;
    uint64_t seed = 1;
    for (int s = 0; s < n_shapes; s++) {
        const int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        const int64_t wshape[2] = {layout == LLMOPT_W_OUT_IN ? N : K, layout == LLMOPT_W_OUT_IN ? K : N};
        llmopt_tensor *x = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){M, K});
        llmopt_tensor *wf = rt_tensor_new(LLMOPT_DTYPE_F32, 2, wshape);
        llmopt_tensor *out = rt_tensor_new(LLMOPT_DTYPE_F32, 2, (int64_t[]){M, N});
        if (!x || !wf || !out) return fprintf(stderr, "matmul_speed: out of memory\n"), 1;
        for (int64_t i = 0; i < M * K; i++) ((float *)x->data)[i] = frand(&seed);
        for (int64_t i = 0; i < N * K; i++) ((float *)wf->data)[i] = frand(&seed) * 0.05f;
        llmopt_tensor *w = NULL;
        if (host_api_table()->tensor_convert(NULL, wf, dtype, &w) != 0) return fprintf(stderr, "matmul_speed: convert\n"), 1;
        const llmopt_tensor *in[2] = {x, w};
        const llmopt_op_matmul p = {sizeof p, layout, 0, precision};
        double best = 1e30;
        /* the first run warms caches and pages; then at least reps runs and 0.3 s of them, as
         * sgemm_peak: five runs of the first shape (55 ms) measured it at half the rate of the
         * same shape timed later in the process (the clock and the pool's threads still waking) */
        double spent = 0;
        for (int r = 0; r < reps + 1 || spent < 0.3; r++) {
            const double t0 = now();
            const int rc = k->desc.fn(in, 2, out, &p);
            const double t = now() - t0;
            if (rc) return fprintf(stderr, "matmul_speed: the kernel failed (%d)\n", rc), 1;
            if (r > 0) spent += t;
            if (r > 0 && t < best) best = t;
        }
        const double flops = 2.0 * (double)M * (double)N * (double)K;
        flops_all += flops, secs_all += best;
        printf("matmul dtype=%s layout=%s precision=%s threads=%d M=%lld N=%lld K=%lld best_s=%.6f gflops=%.1f\n",
               dtype_name, layout == LLMOPT_W_OUT_IN ? "out_in" : "in_out",
               precision == LLMOPT_MATMUL_MEDIUM ? "medium" : "highest", threads, (long long)M, (long long)N,
               (long long)K, best, flops / best * 1e-9);
        rt_tensor_unref(x), rt_tensor_unref(wf), rt_tensor_unref(out);
        host_api_table()->tensor_unref(w);
    }
    printf("total dtype=%s layout=%s precision=%s threads=%d shapes=%d gflops=%.1f\n", dtype_name,
           layout == LLMOPT_W_OUT_IN ? "out_in" : "in_out", precision == LLMOPT_MATMUL_MEDIUM ? "medium" : "highest",
           threads, n_shapes, flops_all / secs_all * 1e-9);
    host_api_set_registry(NULL);
    registry_free(reg);
    return 0;
}
