/* Test plugin "clitest" for the CLI tests: stages that make, transform, measure, fail and
 * wait, so tests can drive llmopt-host end to end (DAG order, parallel branches, copy on write,
 * failure propagation, cancellation). Built against the SDK only, like any plugin. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <llmopt/llmopt.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

static const llmopt_host_api *api;

/* test.make: a model with `n` f32 tensors "t0".."t{n-1}" of `size` elements filled with `value`. */
static int make_run(llmopt_stage_ctx *ctx) {
    int64_t n = api->param_int(ctx, "n"), size = api->param_int(ctx, "size");
    double value = api->param_float(ctx, "value");
    llmopt_model *m = api->model_new("test");
    if (!m) return api->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        int64_t shape[1] = {size};
        llmopt_tensor *t = api->tensor_new(LLMOPT_DTYPE_F32, 1, shape);
        if (!t) {
            api->model_unref(m);
            return api->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
        }
        float *x = t->data;
        for (int64_t k = 0; k < size; k++) x[k] = (float)value;
        char name[32];
        snprintf(name, sizeof name, "t%lld", (long long)i);
        api->model_set(m, name, t);
        api->tensor_unref(t);
    }
    api->model_cfg_set_num(m, "n_tensors", (double)n);
    api->metric(ctx, "params", (double)(n * size), NULL, LLMOPT_BETTER_NONE);
    return api->stage_set_output(ctx, m);
}

/* test.scale: clone the input and scale tensor `which` by `factor`; every other tensor stays
 * shared with the input. Reports how many tensors are shared (copy on write). */
static int scale_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = api->stage_input(ctx, "model");
    const char *which = api->param_str(ctx, "which");
    double factor = api->param_float(ctx, "factor");
    const llmopt_tensor *src = api->model_get(in, which);
    if (!src) return api->set_error(ctx, LLMOPT_ENOTFOUND, "input model has no tensor '%s'", which);
    llmopt_model *out = api->model_clone(in);
    llmopt_tensor *t = api->tensor_new(src->dtype, src->ndim, src->shape);
    const float *a = src->data;
    float *b = t->data;
    for (int64_t k = 0; k < api->tensor_numel(src); k++) b[k] = (float)(a[k] * factor);
    api->model_set(out, which, t);
    api->tensor_unref(t);
    size_t shared = 0, n = api->model_n_tensors(out);
    for (size_t i = 0; i < n; i++) {
        const char *name = api->model_tensor_name(out, i);
        if (api->model_get(out, name) == api->model_get(in, name)) shared++;
    }
    api->metric(ctx, "shared_tensors", (double)shared, NULL, LLMOPT_BETTER_NONE);
    api->metric(ctx, "sum", b[0] * (double)api->tensor_numel(src), NULL, LLMOPT_BETTER_NONE);
    return api->stage_set_output(ctx, out);
}

/* test.sum: sum of every element of the input model (a metric-only stage). */
static int sum_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = api->stage_input(ctx, "model");
    double sum = 0;
    for (size_t i = 0; i < api->model_n_tensors(in); i++) {
        const llmopt_tensor *t = api->model_get(in, api->model_tensor_name(in, i));
        const float *x = t->data;
        for (int64_t k = 0; k < api->tensor_numel(t); k++) sum += x[k];
    }
    const llmopt_model *other = api->stage_input(ctx, "other");
    if (other) api->metric(ctx, "other_tensors", (double)api->model_n_tensors(other), NULL, 0);
    api->metric(ctx, "sum", sum, NULL, LLMOPT_BETTER_NONE);
    return 0;
}

static int fail_run(llmopt_stage_ctx *ctx) {
    return api->set_error(ctx, LLMOPT_EFAIL, "%s", api->param_str(ctx, "message"));
}

/* test.sleep: waits `seconds`, reporting progress and polling the cancel flag every 10 ms;
 * writes a file first so tests can check that a cancelled stage leaves nothing behind. */
static int sleep_run(llmopt_stage_ctx *ctx) {
    double seconds = api->param_float(ctx, "seconds");
    char path[4096];
    snprintf(path, sizeof path, "%s/partial.txt", api->stage_dir(ctx));
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("work in progress\n", f);
        fclose(f);
    }
    int steps = (int)(seconds * 100);
    for (int i = 0; i < steps; i++) {
        if (api->cancelled(ctx)) return api->set_error(ctx, LLMOPT_ECANCELED, "cancelled at step %d", i);
        api->progress(ctx, (double)i / steps, "step %d/%d", i, steps);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    api->metric(ctx, "slept_s", seconds, "s", LLMOPT_BETTER_LOWER);
    /* pass the input through (or an empty model), so tests can hang stages after this one */
    const llmopt_model *in = api->stage_input(ctx, "model");
    return api->stage_set_output(ctx, in ? api->model_clone(in) : api->model_new("test"));
}

/* validate hook: test.scale refuses factor 0 with a reason (cross-parameter style check). */
static int scale_validate(llmopt_stage_ctx *ctx) {
    if (api->param_float(ctx, "factor") == 0.0)
        return api->set_error(ctx, LLMOPT_EINVAL, "factor 0 would erase the tensor; use a non-zero factor");
    return 0;
}

static const llmopt_param_desc make_params[] = {
    {.name = "n", .type = LLMOPT_PARAM_INT, .default_value = "3", .min = 1, .max = 1000, .doc = "number of tensors"},
    {.name = "size", .type = LLMOPT_PARAM_INT, .default_value = "4", .min = 1, .max = 1 << 24, .doc = "elements per tensor"},
    {.name = "value", .type = LLMOPT_PARAM_FLOAT, .default_value = "1.0", .doc = "fill value"},
};
static const llmopt_param_desc scale_params[] = {
    {.name = "which", .type = LLMOPT_PARAM_STRING, .default_value = "t0", .doc = "tensor to scale"},
    {.name = "factor", .type = LLMOPT_PARAM_FLOAT, .default_value = "2.0", .min = -100, .max = 100, .doc = "multiplier"},
};
static const llmopt_param_desc fail_params[] = {
    {.name = "message", .type = LLMOPT_PARAM_STRING, .default_value = "planned failure", .doc = "error text"},
};
static const llmopt_param_desc sleep_params[] = {
    {.name = "seconds", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.1", .min = 0, .max = 3600, .doc = "how long"},
};
static const llmopt_input_desc model_in[] = {{.name = "model", .required = 1, .doc = "model to read"}};
static const llmopt_input_desc sum_in[] = {
    {.name = "model", .required = 1, .doc = "model to sum"},
    {.name = "other", .required = 0, .doc = "optional second model"},
};
static const llmopt_input_desc no_model[] = {{.name = "model", .required = 0, .doc = "ignored"}};

static const llmopt_stage_desc stages[] = {
    {.struct_size = sizeof(llmopt_stage_desc), .flags = LLMOPT_STAGE_OUTPUTS_MODEL, .name = "test.make",
     .summary = "make a model of constant tensors", LLMOPT_STAGE_PARAMS(make_params),
     LLMOPT_STAGE_INPUTS(no_model), .run = make_run},
    {.struct_size = sizeof(llmopt_stage_desc), .flags = LLMOPT_STAGE_OUTPUTS_MODEL, .name = "test.scale",
     .summary = "scale one tensor of a copy of the input", LLMOPT_STAGE_PARAMS(scale_params),
     LLMOPT_STAGE_INPUTS(model_in), .validate = scale_validate, .run = scale_run},
    {.struct_size = sizeof(llmopt_stage_desc), .name = "test.sum", .summary = "sum every element",
     .params = NULL, .n_params = 0, .param_size = sizeof(llmopt_param_desc), LLMOPT_STAGE_INPUTS(sum_in),
     .run = sum_run},
    {.struct_size = sizeof(llmopt_stage_desc), .name = "test.fail", .summary = "always fails",
     LLMOPT_STAGE_PARAMS(fail_params), LLMOPT_STAGE_INPUTS(no_model), .run = fail_run},
    {.struct_size = sizeof(llmopt_stage_desc), .flags = LLMOPT_STAGE_OUTPUTS_MODEL, .name = "test.sleep",
     .summary = "wait, cancellably, then pass the input on",
     LLMOPT_STAGE_PARAMS(sleep_params), LLMOPT_STAGE_INPUTS(no_model), .run = sleep_run},
};

static int init(const llmopt_host_api *host, llmopt_registrar *reg) {
    api = host;
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
        int rc = reg->add_stage(reg, &stages[i]);
        if (rc != 0) return rc;
    }
    return 0;
}

LLMOPT_PLUGIN(.id = "clitest", .version = "0.0.1", .license = "MIT",
              .summary = "stages for the CLI tests", .init = init);
