/* The host API table (llmopt_host_api): the only door from a plugin into the host. Each entry
 * is a thin, checked wrapper over the runtime or the running stage's context. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../plugin/registry.h"
#include "../runtime/arch.h"
#include "../runtime/runtime.h"
#include "../runtime/threadpool.h"
#include "runtime_api.h"
#include "train_api.h"
#include "quant_api.h"
#include "tokenizer_api.h"
#include "../sched/stage_ctx.h"
#include "../util/log.h"

static const registry *g_registry;

void host_api_set_registry(const registry *reg) { g_registry = reg; }

double now_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The peak RSS of this process's own memory: Linux's VmHWM (/proc/self/status), which starts
 * afresh at exec. getrusage's ru_maxrss does not: it keeps the parent's RSS at fork, so a host
 * started from a Python process holding torch reported that process's 400 MB as its own. */
size_t peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb) return (size_t)kb * 1024u;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

static void api_log(int level, const char *fmt, ...) {
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_msg(level, "%s", line);
}

/* ---- parameters: looked up by name in the stage's validated values ---- */

static const param_value *param_of(llmopt_stage_ctx *ctx, const char *name, int type) {
    const param_value *v = pipeline_param(ctx->ps, name);
    if (!v) {
        log_msg(LLMOPT_LOG_ERROR, "stage '%s' (%s) asked for parameter '%s', which is not in its schema",
                ctx->ps->id, ctx->ps->stage->desc.name, name);
        return NULL;
    }
    int t = v->desc->type;
    int ok = t == type || (type == LLMOPT_PARAM_STRING && t == LLMOPT_PARAM_ENUM);
    if (!ok) {
        log_msg(LLMOPT_LOG_ERROR, "stage '%s' asked for parameter '%s' as %s, but it is %s", ctx->ps->id,
                name, param_type_str(type), param_type_str(t));
        return NULL;
    }
    return v;
}

static int api_param_bool(llmopt_stage_ctx *ctx, const char *name) {
    const param_value *v = param_of(ctx, name, LLMOPT_PARAM_BOOL);
    return v ? v->b : 0;
}
static int64_t api_param_int(llmopt_stage_ctx *ctx, const char *name) {
    const param_value *v = param_of(ctx, name, LLMOPT_PARAM_INT);
    return v ? v->i : 0;
}
static double api_param_float(llmopt_stage_ctx *ctx, const char *name) {
    const param_value *v = param_of(ctx, name, LLMOPT_PARAM_FLOAT);
    return v ? v->f : 0.0;
}
static const char *api_param_str(llmopt_stage_ctx *ctx, const char *name) {
    const param_value *v = param_of(ctx, name, LLMOPT_PARAM_STRING);
    return v ? v->s : NULL;
}
static size_t api_param_list_len(llmopt_stage_ctx *ctx, const char *name) {
    const param_value *v = param_of(ctx, name, LLMOPT_PARAM_LIST);
    return v ? v->n_list : 0;
}
static const char *api_param_list_at(llmopt_stage_ctx *ctx, const char *name, size_t i) {
    const param_value *v = param_of(ctx, name, LLMOPT_PARAM_LIST);
    return v && i < v->n_list ? v->list[i] : NULL;
}

/* ---- the running stage ---- */

static const char *api_stage_id(llmopt_stage_ctx *ctx) { return ctx->ps->id; }
static void *api_stage_user(llmopt_stage_ctx *ctx) { return ctx->ps->stage->desc.user; }

static const llmopt_model *api_stage_input(llmopt_stage_ctx *ctx, const char *slot) {
    if (!ctx->inputs || !slot) return NULL;
    for (size_t i = 0; i < ctx->ps->n_inputs; i++)
        if (strcmp(ctx->ps->inputs[i].slot, slot) == 0) return ctx->inputs[i];
    return NULL;
}

static int api_stage_set_output(llmopt_stage_ctx *ctx, llmopt_model *m) {
    if (!(ctx->ps->stage->desc.flags & LLMOPT_STAGE_OUTPUTS_MODEL)) {
        rt_model_unref(m);
        return error_set(&ctx->err, LLMOPT_EINVAL,
                         "stage %s set an output model but does not declare LLMOPT_STAGE_OUTPUTS_MODEL",
                         ctx->ps->stage->desc.name);
    }
    if (ctx->output) rt_model_unref(ctx->output);
    ctx->output = m;
    return 0;
}

static const char *api_data_get(llmopt_stage_ctx *ctx, const char *entry, const char *field) {
    for (size_t i = 0; i < ctx->p->n_data; i++) {
        const pipeline_data *d = &ctx->p->data[i];
        if (strcmp(d->name, entry) != 0) continue;
        if (strcmp(field, "path") == 0) return d->path;
        if (strcmp(field, "split") == 0) return d->split;
    }
    return NULL;
}

static int api_metric(llmopt_stage_ctx *ctx, const char *name, double value, const char *unit,
                      int better) {
    if (!name || !*name) return LLMOPT_EINVAL;
    pthread_mutex_lock(&ctx->lock);
    int rc = 0;
    metric_rec *m = NULL;
    for (size_t i = 0; i < ctx->n_metrics; i++) /* a metric reported twice keeps the last value */
        if (strcmp(ctx->metrics[i].name, name) == 0) m = &ctx->metrics[i];
    if (!m) {
        if (ctx->n_metrics == ctx->cap_metrics) {
            size_t cap = ctx->cap_metrics ? ctx->cap_metrics * 2 : 8;
            metric_rec *nm = realloc(ctx->metrics, cap * sizeof *nm);
            if (!nm) { rc = LLMOPT_ENOMEM; goto out; }
            ctx->metrics = nm;
            ctx->cap_metrics = cap;
        }
        m = &ctx->metrics[ctx->n_metrics++];
        memset(m, 0, sizeof *m);
        m->name = strdup(name);
    }
    free(m->unit);
    m->unit = unit ? strdup(unit) : NULL;
    m->value = value;
    m->better = better < 0 ? -1 : better > 0 ? 1 : 0;
out:
    pthread_mutex_unlock(&ctx->lock);
    return rc;
}

static int api_report_text(llmopt_stage_ctx *ctx, const char *name, const char *text) {
    if (!name || !text) return LLMOPT_EINVAL;
    pthread_mutex_lock(&ctx->lock);
    char **nt = realloc(ctx->texts, (ctx->n_texts + 1) * 2 * sizeof *nt);
    int rc = LLMOPT_ENOMEM;
    if (nt) {
        ctx->texts = nt;
        nt[2 * ctx->n_texts] = strdup(name);
        nt[2 * ctx->n_texts + 1] = strdup(text);
        ctx->n_texts++;
        rc = 0;
    }
    pthread_mutex_unlock(&ctx->lock);
    return rc;
}

static void api_progress(llmopt_stage_ctx *ctx, double fraction, const char *fmt, ...) {
    pthread_mutex_lock(&ctx->lock);
    ctx->progress = fraction > 1.0 ? 1.0 : fraction;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->progress_msg, sizeof ctx->progress_msg, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&ctx->lock);
}

static int api_cancelled(llmopt_stage_ctx *ctx) { return ctx->cancel && atomic_load(ctx->cancel); }

static int api_set_error(llmopt_stage_ctx *ctx, int status, const char *fmt, ...) {
    if (status >= 0) status = LLMOPT_EFAIL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err.msg, sizeof ctx->err.msg, fmt, ap);
    va_end(ap);
    ctx->err.status = status;
    return status;
}

/* splitmix64 of the pipeline seed and an FNV-1a hash of the stage id: stable per stage, and
 * independent of the order stages happen to run in. */
uint64_t stage_seed(const pipeline *p, const pipeline_stage *ps) {
    uint64_t h = 1469598103934665603ull;
    for (const char *c = ps->id; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    uint64_t z = p->seed + h + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (z ^ (z >> 31)) >> 1; /* 63 bits: fits report.json's signed integers */
}

static uint64_t api_seed(llmopt_stage_ctx *ctx) { return stage_seed(ctx->p, ctx->ps); }

static const char *api_stage_dir(llmopt_stage_ctx *ctx) { return ctx->dir; }
static int api_device(llmopt_stage_ctx *ctx) { return ctx->device; }

static const llmopt_kernel_desc *api_kernel_find(const char *op, int device, int dtype) {
    if (!g_registry || !op) return NULL;
    const kernel_rec *k = registry_find_kernel(g_registry, op, device, dtype);
    return k ? &k->desc : NULL;
}

static llmopt_tensor *api_tensor_new(int dtype, int ndim, const int64_t *shape) {
    return rt_tensor_new(dtype, ndim, shape);
}

/* ---- device memory ---- */

static const llmopt_device_ops *host_device_ops(int device) {
    const device_rec *d = g_registry ? registry_find_device(g_registry, device) : NULL;
    return d ? &d->ops : NULL;
}

static llmopt_tensor *api_tensor_new_on(int device, int dtype, int ndim, const int64_t *shape) {
    if (device == LLMOPT_DEVICE_CPU) return rt_tensor_new(dtype, ndim, shape);
    const llmopt_device_ops *dev = host_device_ops(device);
    return dev ? rt_tensor_new_on(dev, dtype, ndim, shape) : NULL;
}

static int api_tensor_to_device(const llmopt_tensor *t, int device, llmopt_tensor **out) {
    if (!out) return LLMOPT_EINVAL;
    *out = NULL;
    if (!t) return LLMOPT_EINVAL;
    const llmopt_device_ops *dev = device == LLMOPT_DEVICE_CPU ? NULL : host_device_ops(device);
    if (device != LLMOPT_DEVICE_CPU && !dev) return LLMOPT_ENOTFOUND;
    llmopt_error err;
    error_clear(&err);
    return rt_tensor_to(t, dev, out, &err);
}

static int api_tensor_to_host(const llmopt_tensor *t, llmopt_tensor **out) {
    return api_tensor_to_device(t, LLMOPT_DEVICE_CPU, out);
}

static int api_tensor_copy(llmopt_tensor *dst, const llmopt_tensor *src) {
    llmopt_error err;
    error_clear(&err);
    return rt_tensor_copy(dst, src, &err);
}

static llmopt_host_api g_api = {
    .struct_size = sizeof(llmopt_host_api),
    .abi_major = LLMOPT_ABI_MAJOR,
    .abi_minor = LLMOPT_ABI_MINOR,
    .host_version = LLMOPT_VERSION,
    .log = api_log,
    .dtype_traits = rt_dtype_traits,
    .dtype_from_name = rt_dtype_from_name,
    .tensor_new = api_tensor_new,
    .tensor_ref = rt_tensor_ref,
    .tensor_unref = rt_tensor_unref,
    .tensor_numel = rt_tensor_numel,
    .model_new = rt_model_new,
    .model_clone = rt_model_clone,
    .model_unref = rt_model_unref,
    .model_arch = rt_model_arch,
    .model_linear_layout = arch_model_linear_layout,
    .model_n_tensors = rt_model_n_tensors,
    .model_tensor_name = rt_model_tensor_name,
    .model_get = rt_model_get,
    .model_set = rt_model_set,
    .model_remove = rt_model_remove,
    .model_cfg_get_num = rt_model_cfg_get_num,
    .model_cfg_get_str = rt_model_cfg_get_str,
    .model_cfg_set_num = rt_model_cfg_set_num,
    .model_cfg_set_str = rt_model_cfg_set_str,
    .model_cfg_set_json = rt_model_cfg_set_json,
    .model_cfg_get_json = rt_model_cfg_get_json,
    .model_nbytes = rt_model_nbytes,
    .model_source = rt_model_source,
    .stage_id = api_stage_id,
    .stage_user = api_stage_user,
    .stage_input = api_stage_input,
    .stage_set_output = api_stage_set_output,
    .param_bool = api_param_bool,
    .param_int = api_param_int,
    .param_float = api_param_float,
    .param_str = api_param_str,
    .param_list_len = api_param_list_len,
    .param_list_at = api_param_list_at,
    .data_get = api_data_get,
    .metric = api_metric,
    .progress = api_progress,
    .cancelled = api_cancelled,
    .set_error = api_set_error,
    .seed = api_seed,
    .stage_dir = api_stage_dir,
    .device = api_device,
    .kernel_find = api_kernel_find,
    .parallel_for = tp_parallel_for,
    .n_threads = tp_threads,
    .report_text = api_report_text,
    .device_ops = host_device_ops,
    .tensor_new_on = api_tensor_new_on,
    .tensor_to_device = api_tensor_to_device,
    .tensor_to_host = api_tensor_to_host,
    .tensor_copy = api_tensor_copy,
};

static void fill_runtime(void) {
    runtime_api_fill(&g_api);
    quant_api_fill(&g_api);
    train_api_fill(&g_api);
    tokenizer_api_fill(&g_api);
}

const llmopt_host_api *host_api_table(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fill_runtime);
    return &g_api;
}

int stage_ctx_init(llmopt_stage_ctx *ctx, const pipeline *p, size_t index, atomic_int *cancel) {
    memset(ctx, 0, sizeof *ctx);
    ctx->p = p;
    ctx->ps = &p->stages[index];
    ctx->index = index;
    ctx->cancel = cancel;
    ctx->progress = -1.0;
    ctx->device = strcmp(p->device, "cuda") == 0 ? LLMOPT_DEVICE_CUDA : LLMOPT_DEVICE_CPU;
    if (ctx->ps->n_inputs) {
        ctx->inputs = calloc(ctx->ps->n_inputs, sizeof *ctx->inputs);
        if (!ctx->inputs) return LLMOPT_ENOMEM;
    }
    pthread_mutex_init(&ctx->lock, NULL);
    return 0;
}

void stage_ctx_clear(llmopt_stage_ctx *ctx) {
    for (size_t i = 0; i < ctx->n_metrics; i++) {
        free(ctx->metrics[i].name);
        free(ctx->metrics[i].unit);
    }
    free(ctx->metrics);
    for (size_t i = 0; i < 2 * ctx->n_texts; i++) free(ctx->texts[i]);
    free(ctx->texts);
    free(ctx->inputs);
    free(ctx->dir);
    free(ctx->output_dir);
    if (ctx->output) rt_model_unref(ctx->output);
    pthread_mutex_destroy(&ctx->lock);
    memset(ctx, 0, sizeof *ctx);
}
