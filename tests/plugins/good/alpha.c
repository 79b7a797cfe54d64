/* Test plugin "alpha": a well-formed plugin with trivial stages (test.echo, test.fail,
 * test.sleep) and a reference matmul kernel (cpu, f32), for loader and CLI tests. */
#define _POSIX_C_SOURCE 200809L
#include <llmopt/llmopt.h>

#include <time.h>

static const llmopt_host_api *api;

/* Logs its message parameter. */
static int echo_run(llmopt_stage_ctx *ctx) {
    api->log(LLMOPT_LOG_INFO, "test.echo: %s", api->param_str(ctx, "message"));
    return 0;
}

static int fail_run(llmopt_stage_ctx *ctx) {
    return api->set_error(ctx, LLMOPT_EFAIL, "test.fail failed as asked");
}

/* Sleeps ms milliseconds in 1 ms steps, returning early when the run is cancelled. */
static int sleep_run(llmopt_stage_ctx *ctx) {
    int64_t ms = api->param_int(ctx, "ms");
    struct timespec step = {0, 1000000};
    for (int64_t i = 0; i < ms; i++) {
        if (api->cancelled(ctx)) return LLMOPT_ECANCELED;
        nanosleep(&step, NULL);
    }
    return 0;
}

static const llmopt_param_desc echo_params[] = {
    {.name = "message", .type = LLMOPT_PARAM_STRING, .default_value = "hello",
     .doc = "What to log."},
};
static const llmopt_param_desc sleep_params[] = {
    {.name = "ms", .type = LLMOPT_PARAM_INT, .default_value = "10", .min = 0, .max = 600000,
     .doc = "How long to sleep, in milliseconds."},
};

static const llmopt_stage_desc stages[] = {
    {.struct_size = sizeof(llmopt_stage_desc), .name = "test.echo",
     .summary = "Logs a message.", LLMOPT_STAGE_PARAMS(echo_params), .run = echo_run},
    {.struct_size = sizeof(llmopt_stage_desc), .name = "test.fail",
     .summary = "Always fails.", .run = fail_run},
    {.struct_size = sizeof(llmopt_stage_desc), .name = "test.sleep",
     .summary = "Sleeps, polling for cancellation.", LLMOPT_STAGE_PARAMS(sleep_params),
     .run = sleep_run},
};

/* out = a @ b; a is (M,K), b is (K,N), out is (M,N), all f32 on the CPU. */
static int matmul_f32(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                      const void *op_params) {
    (void)op_params;
    if (n_in != 2) return LLMOPT_EINVAL;
    const llmopt_tensor *a = in[0], *b = in[1];
    if (a->ndim != 2 || b->ndim != 2 || out->ndim != 2 || a->shape[1] != b->shape[0] ||
        out->shape[0] != a->shape[0] || out->shape[1] != b->shape[1])
        return LLMOPT_EINVAL;
    int64_t M = a->shape[0], K = a->shape[1], N = b->shape[1];
    const float *A = a->data, *B = b->data;
    float *C = out->data;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++) acc += A[m * K + k] * B[k * N + n];
            C[m * N + n] = acc;
        }
    return 0;
}

static const llmopt_kernel_desc matmul = {
    .struct_size = sizeof(llmopt_kernel_desc), .device = LLMOPT_DEVICE_CPU, .op = "matmul",
    .dtype = LLMOPT_DTYPE_F32, .fn = matmul_f32, .summary = "naive reference loop"};

static int alpha_init(const llmopt_host_api *host, llmopt_registrar *reg) {
    api = host;
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        int rc = reg->add_stage(reg, &stages[i]);
        if (rc != 0) return rc;
    }
    return reg->add_kernel(reg, &matmul);
}

LLMOPT_PLUGIN(.id = "alpha", .version = "0.1.0", .license = "MIT",
              .summary = "test stages and a reference matmul", .init = alpha_init);
