/* The registry: plugin records, and the stages and kernels loaded plugins registered.
 * Descriptors are validated and copied into host-sized structs (read with the plugin's own
 * sizes and strides, missing trailing fields zeroed), so lookups never depend on plugin layout. */
#include "registry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/pipeline.h"
#include "../config/yaml_tree.h"
#include "../runtime/runtime.h"

/* The smallest descriptors ABI v1 accepts: the v1.0 structs, whole. Later minors only append. */
#define STAGE_DESC_V1_SIZE (offsetof(llmopt_stage_desc, user) + sizeof(void *))
#define PARAM_DESC_V1_SIZE (offsetof(llmopt_param_desc, doc) + sizeof(const char *))
#define INPUT_DESC_V1_SIZE (offsetof(llmopt_input_desc, doc) + sizeof(const char *))
#define KERNEL_DESC_V1_SIZE (offsetof(llmopt_kernel_desc, summary) + sizeof(const char *))
#define DEVICE_OPS_V1_SIZE (offsetof(llmopt_device_ops, memory_info) + sizeof(void (*)(void)))

/* The input a stage gets when its descriptor lists none. */
static const llmopt_input_desc default_input = {"model", 0, "the model to work on"};

/* ---- plugins ---- */

registry *registry_new(void) { return calloc(1, sizeof(registry)); }

static void stage_rec_free(stage_rec *s) {
    if (!s) return;
    free(s->params);
    free(s->inputs);
    free(s);
}

/* Never dlcloses: stage and kernel descriptors, their strings and function pointers live in
 * the plugin image and may be referenced until the very end; and ASan/LSan report leaks in
 * dlclose'd modules without symbols, which hides real ones. The OS unmaps at exit. */
void registry_free(registry *reg) {
    if (!reg) return;
    for (size_t i = reg->n_plugins; i-- > 0;) {
        plugin_rec *p = reg->plugins[i];
        if (p->state == PLUGIN_LOADED && p->desc.shutdown) p->desc.shutdown();
    }
    for (size_t i = 0; i < reg->n_stages; i++) stage_rec_free(reg->stages[i]);
    for (size_t i = 0; i < reg->n_kernels; i++) free(reg->kernels[i]);
    for (size_t i = 0; i < reg->n_devices; i++) free(reg->devices[i]);
    for (size_t i = 0; i < reg->n_plugins; i++) {
        free(reg->plugins[i]->path);
        free(reg->plugins[i]->reason);
        free(reg->plugins[i]);
    }
    free(reg->plugins);
    free(reg->stages);
    free(reg->kernels);
    free(reg->devices);
    free(reg);
}

/* Appends item to a growing pointer array; 0 or LLMOPT_ENOMEM. */
static int push_ptr(void ***arr, size_t *n, void *item) {
    void **grown = realloc(*arr, (*n + 1) * sizeof(void *));
    if (!grown) return LLMOPT_ENOMEM;
    grown[(*n)++] = item;
    *arr = grown;
    return 0;
}

plugin_rec *registry_add_plugin(registry *reg, const char *path) {
    plugin_rec *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->path = strdup(path ? path : "");
    p->score = -1;
    if (!p->path || push_ptr((void ***)&reg->plugins, &reg->n_plugins, p) != 0) {
        free(p->path);
        free(p);
        return NULL;
    }
    return p;
}

void plugin_set_state(plugin_rec *p, plugin_state st, const char *fmt, ...) {
    p->state = st;
    free(p->reason);
    p->reason = NULL;
    if (!fmt) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    p->reason = strdup(buf);
}

const char *plugin_state_str(plugin_state st) {
    switch (st) {
    case PLUGIN_LOADED: return "loaded";
    case PLUGIN_REFUSED: return "refused";
    case PLUGIN_SKIPPED: return "skipped";
    case PLUGIN_INIT_FAILED: return "init failed";
    }
    return "unknown";
}

/* Owners are registry records the public API takes as const; their counters are the
 * registry's own bookkeeping, so it may write them. */
static plugin_rec *owner_mut(const plugin_rec *owner) { return (plugin_rec *)owner; }

static const char *owner_path(const plugin_rec *owner) {
    return owner && owner->path ? owner->path : "<host>";
}

/* ---- stages ---- */

static int is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* "family.method": [a-z0-9_]+ '.' [a-z0-9_.]+ */
static int stage_name_ok(const char *name) {
    const char *s = name;
    while (is_name_char(*s)) s++;
    if (s == name || *s != '.' || s[1] == '\0') return 0;
    for (s++; *s; s++)
        if (!is_name_char(*s) && *s != '.') return 0;
    return 1;
}

/* Copies one element of a plugin array into a host-sized slot: min(plugin, host) bytes, the
 * rest zero. */
static void copy_sized(void *dst, size_t dst_size, const void *src, size_t src_size) {
    size_t n = src_size < dst_size ? src_size : dst_size;
    memcpy(dst, src, n);
    if (n < dst_size) memset((char *)dst + n, 0, dst_size - n);
}

/* Parses a default as a config value would be, so a bad default fails at load time rather
 * than in the middle of someone's pipeline. */
static int check_default(const llmopt_param_desc *p, llmopt_error *err) {
    cfg_node *val = cfg_new_scalar("<schema>", 0, 0, p->default_value, 0);
    if (!val) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    param_value pv;
    memset(&pv, 0, sizeof pv);
    llmopt_error perr;
    error_clear(&perr);
    int rc = param_parse(p, val, &pv, &perr);
    param_value_clear(&pv);
    cfg_free(val);
    if (rc == 0) return 0;
    /* Drop the "<schema>:0:0: " position: it points nowhere a user can look. */
    const char *why = perr.msg;
    const char *pos = "<schema>:0:0: ";
    if (strncmp(why, pos, strlen(pos)) == 0) why += strlen(pos);
    return error_set(err, LLMOPT_EINVAL, "default '%s' is invalid: %s", p->default_value,
                     why[0] ? why : status_str(rc));
}

static int check_params(const llmopt_param_desc *params, size_t n, llmopt_error *err) {
    for (size_t i = 0; i < n; i++) {
        const llmopt_param_desc *p = &params[i];
        if (!p->name || !p->name[0])
            return error_set(err, LLMOPT_EINVAL, "params[%zu]: name is empty", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(params[j].name, p->name) == 0)
                return error_set(err, LLMOPT_EINVAL, "param '%s' is listed twice", p->name);
        if (p->type < LLMOPT_PARAM_BOOL || p->type > LLMOPT_PARAM_LIST)
            return error_set(err, LLMOPT_EINVAL, "param '%s': unknown type %d", p->name,
                             (int)p->type);
        if (p->type == LLMOPT_PARAM_ENUM && (!p->choices || !p->choices[0]))
            return error_set(err, LLMOPT_EINVAL, "param '%s': enum without choices", p->name);
        if (!p->required && !p->default_value)
            return error_set(err, LLMOPT_EINVAL,
                             "param '%s': not required, so it needs a default_value", p->name);
        if (p->default_value && check_default(p, err) != 0) {
            error_prefix(err, "param '%s'", p->name);
            return err ? err->status : LLMOPT_EINVAL;
        }
    }
    return 0;
}

static int check_inputs(const llmopt_input_desc *inputs, size_t n, llmopt_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (!inputs[i].name || !inputs[i].name[0])
            return error_set(err, LLMOPT_EINVAL, "inputs[%zu]: name is empty", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(inputs[j].name, inputs[i].name) == 0)
                return error_set(err, LLMOPT_EINVAL, "input '%s' is listed twice",
                                 inputs[i].name);
    }
    return 0;
}

/* Reads the plugin's descriptor into a host-sized stage_rec (params/inputs copied by stride). */
static int stage_copy(const llmopt_stage_desc *d, stage_rec **out, llmopt_error *err) {
    stage_rec *s = calloc(1, sizeof *s);
    if (!s) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    copy_sized(&s->desc, sizeof s->desc, d, d->struct_size);
    s->desc.struct_size = sizeof s->desc;

    size_t np = d->n_params, ni = d->n_inputs ? d->n_inputs : 1;
    s->params = np ? calloc(np, sizeof *s->params) : NULL;
    s->inputs = calloc(ni, sizeof *s->inputs);
    if ((np && !s->params) || !s->inputs) {
        stage_rec_free(s);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < np; i++)
        copy_sized(&s->params[i], sizeof s->params[i],
                   (const char *)d->params + i * d->param_size, d->param_size);
    if (d->n_inputs == 0)
        s->inputs[0] = default_input;
    for (size_t i = 0; i < d->n_inputs; i++)
        copy_sized(&s->inputs[i], sizeof s->inputs[i],
                   (const char *)d->inputs + i * d->input_size, d->input_size);

    s->desc.params = s->params;
    s->desc.param_size = sizeof *s->params;
    s->desc.inputs = s->inputs;
    s->desc.n_inputs = (uint32_t)ni;
    s->desc.input_size = sizeof *s->inputs;
    *out = s;
    return 0;
}

/* Checks what must hold before the descriptor can even be copied. */
static int stage_check_layout(const llmopt_stage_desc *d, llmopt_error *err) {
    if (d->struct_size < STAGE_DESC_V1_SIZE)
        return error_set(err, LLMOPT_EABI, "stage descriptor is %u bytes, ABI v1 needs at least %zu",
                         (unsigned)d->struct_size, (size_t)STAGE_DESC_V1_SIZE);
    if (!d->name)
        return error_set(err, LLMOPT_EINVAL, "stage descriptor: name is NULL");
    if (!stage_name_ok(d->name))
        return error_set(err, LLMOPT_EINVAL,
                         "stage name '%s' must look like family.method ([a-z0-9_]+.[a-z0-9_.]+)",
                         d->name);
    if (!d->summary)
        return error_set(err, LLMOPT_EINVAL, "stage '%s': summary is NULL", d->name);
    if (!d->run)
        return error_set(err, LLMOPT_EINVAL, "stage '%s': run is NULL", d->name);
    if (d->n_params && !d->params)
        return error_set(err, LLMOPT_EINVAL, "stage '%s': n_params is %u but params is NULL",
                         d->name, (unsigned)d->n_params);
    if (d->n_params && d->param_size < PARAM_DESC_V1_SIZE)
        return error_set(err, LLMOPT_EABI, "stage '%s': param_size is %u, ABI v1 needs at least %zu",
                         d->name, (unsigned)d->param_size, (size_t)PARAM_DESC_V1_SIZE);
    if (d->n_inputs && !d->inputs)
        return error_set(err, LLMOPT_EINVAL, "stage '%s': n_inputs is %u but inputs is NULL",
                         d->name, (unsigned)d->n_inputs);
    if (d->n_inputs && d->input_size < INPUT_DESC_V1_SIZE)
        return error_set(err, LLMOPT_EABI, "stage '%s': input_size is %u, ABI v1 needs at least %zu",
                         d->name, (unsigned)d->input_size, (size_t)INPUT_DESC_V1_SIZE);
    return 0;
}

int registry_add_stage(registry *reg, const plugin_rec *owner, const llmopt_stage_desc *d,
                       llmopt_error *err) {
    if (!reg || !d) return error_set(err, LLMOPT_EINVAL, "stage descriptor is NULL");
    int rc = stage_check_layout(d, err);
    if (rc != 0) return rc;
    const stage_rec *prev = registry_find_stage(reg, d->name);
    if (prev)
        return error_set(err, LLMOPT_EEXIST, "stage '%s' is registered by both %s and %s",
                         d->name, owner_path(prev->plugin), owner_path(owner));

    stage_rec *s = NULL;
    rc = stage_copy(d, &s, err);
    if (rc != 0) return rc;
    s->plugin = owner;
    /* Check the host-sized copies: every field read below exists in them. */
    if ((rc = check_params(s->params, s->desc.n_params, err)) != 0 ||
        (rc = check_inputs(s->inputs, s->desc.n_inputs, err)) != 0) {
        error_prefix(err, "stage '%s'", d->name);
        stage_rec_free(s);
        return rc;
    }
    if (push_ptr((void ***)&reg->stages, &reg->n_stages, s) != 0) {
        stage_rec_free(s);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    if (owner) owner_mut(owner)->n_stages++;
    return 0;
}

const stage_rec *registry_find_stage(const registry *reg, const char *name) {
    if (!reg || !name) return NULL;
    for (size_t i = 0; i < reg->n_stages; i++)
        if (strcmp(reg->stages[i]->desc.name, name) == 0) return reg->stages[i];
    return NULL;
}

const llmopt_param_desc *stage_find_param(const stage_rec *s, const char *name) {
    if (!s || !name) return NULL;
    for (size_t i = 0; i < s->desc.n_params; i++)
        if (strcmp(s->params[i].name, name) == 0) return &s->params[i];
    return NULL;
}

/* ---- kernels ---- */


static int is_gq_any_group(int dtype) {
    int bits = LLMOPT_DTYPE_GQ_BITS(dtype);
    return LLMOPT_DTYPE_IS_GQ(dtype) && LLMOPT_DTYPE_GQ_GROUP(dtype) == 0 && (bits == 2 || bits == 3 || bits == 4 || bits == 8);
}

/* A kernel key's dtype for messages, in buf when it needs formatting. */
static const char *dtype_str(int dtype, char *buf, size_t n) {
    if (dtype == LLMOPT_DTYPE_ANY) return "any";
    if (is_gq_any_group(dtype)) {
        snprintf(buf, n, "gq%dg*%s", LLMOPT_DTYPE_GQ_BITS(dtype), LLMOPT_DTYPE_GQ_ASYM(dtype) ? "a" : "s");
        return buf;
    }
    const llmopt_dtype_traits *t = rt_dtype_traits(dtype);
    return t && t->name ? t->name : "?";
}

static const kernel_rec *find_kernel_exact(const registry *reg, const char *op, int device,
                                           int dtype) {
    for (size_t i = 0; i < reg->n_kernels; i++) {
        const llmopt_kernel_desc *k = &reg->kernels[i]->desc;
        if (k->device == device && k->dtype == dtype && strcmp(k->op, op) == 0)
            return reg->kernels[i];
    }
    return NULL;
}

int registry_add_kernel(registry *reg, const plugin_rec *owner, const llmopt_kernel_desc *d,
                        llmopt_error *err) {
    if (!reg || !d) return error_set(err, LLMOPT_EINVAL, "kernel descriptor is NULL");
    if (d->struct_size < KERNEL_DESC_V1_SIZE)
        return error_set(err, LLMOPT_EABI, "kernel descriptor is %u bytes, ABI v1 needs at least %zu",
                         (unsigned)d->struct_size, (size_t)KERNEL_DESC_V1_SIZE);
    if (!d->op || !d->op[0]) return error_set(err, LLMOPT_EINVAL, "kernel: op is NULL or empty");
    if (!d->fn) return error_set(err, LLMOPT_EINVAL, "kernel '%s': fn is NULL", d->op);
    if (d->device < 0 || d->device >= LLMOPT_DEVICE_COUNT)
        return error_set(err, LLMOPT_EINVAL, "kernel '%s': unknown device %d", d->op,
                         (int)d->device);
    if (d->dtype != LLMOPT_DTYPE_ANY && !rt_dtype_traits(d->dtype) && !is_gq_any_group(d->dtype))
        return error_set(err, LLMOPT_EINVAL, "kernel '%s': unknown dtype %d", d->op,
                         (int)d->dtype);
    const kernel_rec *prev = find_kernel_exact(reg, d->op, d->device, d->dtype);
    char dbuf[32];
    if (prev)
        return error_set(err, LLMOPT_EEXIST, "kernel '%s' (%s, %s) is registered by both %s and %s",
                         d->op, rt_device_name(d->device), dtype_str(d->dtype, dbuf, sizeof dbuf),
                         owner_path(prev->plugin), owner_path(owner));

    kernel_rec *k = calloc(1, sizeof *k);
    if (!k) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    copy_sized(&k->desc, sizeof k->desc, d, d->struct_size);
    k->desc.struct_size = sizeof k->desc;
    k->plugin = owner;
    if (push_ptr((void ***)&reg->kernels, &reg->n_kernels, k) != 0) {
        free(k);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    if (owner) owner_mut(owner)->n_kernels++;
    return 0;
}

const kernel_rec *registry_find_kernel(const registry *reg, const char *op, int device,
                                       int dtype) {
    if (!reg || !op) return NULL;
    const kernel_rec *k = find_kernel_exact(reg, op, device, dtype);
    if (!k && LLMOPT_DTYPE_IS_GQ(dtype))
        k = find_kernel_exact(reg, op, device, LLMOPT_DTYPE_GQ_ANY_GROUP(LLMOPT_DTYPE_GQ_BITS(dtype), LLMOPT_DTYPE_GQ_ASYM(dtype)));
    if (!k && dtype != LLMOPT_DTYPE_ANY) k = find_kernel_exact(reg, op, device, LLMOPT_DTYPE_ANY);
    return k;
}

/* ---- device memory ---- */

const device_rec *registry_find_device(const registry *reg, int device) {
    if (!reg) return NULL;
    for (size_t i = 0; i < reg->n_devices; i++)
        if (reg->devices[i]->ops.device == device) return reg->devices[i];
    return NULL;
}

int registry_add_device(registry *reg, const plugin_rec *owner, const llmopt_device_ops *d,
                        llmopt_error *err) {
    if (!reg || !d) return error_set(err, LLMOPT_EINVAL, "device ops descriptor is NULL");
    if (d->struct_size < DEVICE_OPS_V1_SIZE)
        return error_set(err, LLMOPT_EABI, "device ops descriptor is %u bytes, ABI v1 needs at least %zu",
                         (unsigned)d->struct_size, (size_t)DEVICE_OPS_V1_SIZE);
    if (d->device == LLMOPT_DEVICE_CPU)
        return error_set(err, LLMOPT_EINVAL, "device ops for cpu: host memory is the host's own, no plugin registers it");
    if (d->device < 0 || d->device >= LLMOPT_DEVICE_COUNT)
        return error_set(err, LLMOPT_EINVAL, "device ops: unknown device %d", (int)d->device);
    if (!d->name || !d->name[0])
        return error_set(err, LLMOPT_EINVAL, "device ops (%s): name is NULL or empty", rt_device_name(d->device));
    const struct { const char *field; int set; } need[] = {
        {"alloc", d->alloc != NULL},       {"free", d->free != NULL},
        {"copy_h2d", d->copy_h2d != NULL}, {"copy_d2h", d->copy_d2h != NULL},
        {"copy_d2d", d->copy_d2d != NULL}, {"synchronize", d->synchronize != NULL},
    };
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!need[i].set)
            return error_set(err, LLMOPT_EINVAL, "device ops '%s' (%s): %s is NULL", d->name, rt_device_name(d->device),
                             need[i].field);
    const device_rec *prev = registry_find_device(reg, d->device);
    if (prev)
        return error_set(err, LLMOPT_EEXIST, "device %s has memory ops from both %s ('%s') and %s ('%s')",
                         rt_device_name(d->device), owner_path(prev->plugin), prev->ops.name, owner_path(owner), d->name);
    device_rec *r = calloc(1, sizeof *r);
    if (!r) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    copy_sized(&r->ops, sizeof r->ops, d, d->struct_size);
    r->ops.struct_size = sizeof r->ops;
    r->plugin = owner;
    if (push_ptr((void ***)&reg->devices, &reg->n_devices, r) != 0) {
        free(r);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    if (owner) owner_mut(owner)->n_devices++;
    return 0;
}

/* ---- rollback ---- */

void registry_remove_owner(registry *reg, const plugin_rec *owner) {
    if (!reg) return;
    size_t kept = 0;
    for (size_t i = 0; i < reg->n_stages; i++) {
        if (reg->stages[i]->plugin == owner)
            stage_rec_free(reg->stages[i]);
        else
            reg->stages[kept++] = reg->stages[i];
    }
    reg->n_stages = kept;
    kept = 0;
    for (size_t i = 0; i < reg->n_kernels; i++) {
        if (reg->kernels[i]->plugin == owner)
            free(reg->kernels[i]);
        else
            reg->kernels[kept++] = reg->kernels[i];
    }
    reg->n_kernels = kept;
    kept = 0;
    for (size_t i = 0; i < reg->n_devices; i++) {
        if (reg->devices[i]->plugin == owner)
            free(reg->devices[i]);
        else
            reg->devices[kept++] = reg->devices[i];
    }
    reg->n_devices = kept;
    if (owner) {
        owner_mut(owner)->n_stages = 0;
        owner_mut(owner)->n_kernels = 0;
        owner_mut(owner)->n_devices = 0;
    }
}
