/* Device memory (llmopt/device.h): the registry's checks on a device's memory ops, tensors
 * allocated, copied and freed through them via the host API, and whole GPT-2 and Llama forward
 * passes on the test device (tests/plugins/devtest: host memory behind its own allocator, cpu
 * kernels that refuse any tensor it did not allocate) giving the CPU's logits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin/loader.h"
#include "plugin/registry.h"
#include "runtime/quant.h"
#include "runtime/runtime.h"
#include "runtime/threadpool.h"
#include "runtime/transformer.h"
#include "sched/stage_ctx.h"
#include "tiny_models.h"

/* ---- the registry's checks, on descriptors made here ---- */

static int nop_alloc(void *ctx, size_t bytes, size_t align, void **out) {
    (void)ctx, (void)bytes, (void)align, (void)out;
    return LLMOPT_ENOMEM;
}
static void nop_free(void *ctx, void *p) { (void)ctx, (void)p; }
static int nop_copy(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx, (void)dst, (void)src, (void)n;
    return 0;
}
static int nop_sync(void *ctx) {
    (void)ctx;
    return 0;
}

static llmopt_device_ops ops_for(int device) {
    llmopt_device_ops d = {.struct_size = sizeof d, .device = device, .name = "fake", .alloc = nop_alloc,
                           .free = nop_free, .copy_h2d = nop_copy, .copy_d2h = nop_copy, .copy_d2d = nop_copy,
                           .synchronize = nop_sync};
    return d;
}

typedef struct reg_fixture {
    registry *reg;
    plugin_rec *a, *b;
    llmopt_error err;
} reg_fixture;

static int reg_setup(void **state) {
    static reg_fixture f;
    memset(&f, 0, sizeof f);
    f.reg = registry_new();
    f.a = registry_add_plugin(f.reg, "/plugins/a.so");
    f.b = registry_add_plugin(f.reg, "/plugins/b.so");
    *state = &f;
    return f.reg && f.a && f.b ? 0 : -1;
}

static int reg_teardown(void **state) {
    registry_free(((reg_fixture *)*state)->reg);
    return 0;
}

static void device_ops_register_and_are_found_by_device(void **state) {
    reg_fixture *f = *state;
    llmopt_device_ops d = ops_for(LLMOPT_DEVICE_CUDA);
    assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), 0);
    const device_rec *r = registry_find_device(f->reg, LLMOPT_DEVICE_CUDA);
    assert_non_null(r);
    assert_ptr_equal(r->plugin, f->a);
    assert_ptr_equal(r->ops.alloc, nop_alloc);
    assert_string_equal(r->ops.name, "fake");
    assert_int_equal(f->a->n_devices, 1);
    assert_null(registry_find_device(f->reg, LLMOPT_DEVICE_TEST));
    assert_null(registry_find_device(f->reg, LLMOPT_DEVICE_CPU));
}

static void second_device_ops_for_a_device_is_eexist_naming_both_files(void **state) {
    reg_fixture *f = *state;
    llmopt_device_ops d = ops_for(LLMOPT_DEVICE_CUDA);
    assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), 0);
    assert_int_equal(registry_add_device(f->reg, f->b, &d, &f->err), LLMOPT_EEXIST);
    assert_non_null(strstr(f->err.msg, "/plugins/a.so"));
    assert_non_null(strstr(f->err.msg, "/plugins/b.so"));
    assert_int_equal(f->reg->n_devices, 1);
}

static void device_ops_for_the_cpu_are_refused(void **state) {
    reg_fixture *f = *state;
    llmopt_device_ops d = ops_for(LLMOPT_DEVICE_CPU);
    assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), LLMOPT_EINVAL);
    assert_non_null(strstr(f->err.msg, "cpu"));
    assert_int_equal(f->reg->n_devices, 0);
}

static void device_ops_for_an_unknown_device_are_refused(void **state) {
    reg_fixture *f = *state;
    int bad[] = {-1, LLMOPT_DEVICE_COUNT, 1000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llmopt_device_ops d = ops_for(bad[i]);
        assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), LLMOPT_EINVAL);
        assert_non_null(strstr(f->err.msg, "unknown device"));
    }
    assert_int_equal(f->reg->n_devices, 0);
}

static void device_ops_smaller_than_v1_are_eabi(void **state) {
    reg_fixture *f = *state;
    llmopt_device_ops d = ops_for(LLMOPT_DEVICE_CUDA);
    d.struct_size = offsetof(llmopt_device_ops, memory_info);
    assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), LLMOPT_EABI);
    assert_non_null(strstr(f->err.msg, "bytes"));
    assert_int_equal(registry_add_device(f->reg, f->a, NULL, &f->err), LLMOPT_EINVAL);
}

static void device_ops_without_a_required_function_name_the_field(void **state) {
    reg_fixture *f = *state;
    static const char *const fields[] = {"alloc", "free", "copy_h2d", "copy_d2h", "copy_d2d", "synchronize"};
    for (size_t i = 0; i < 6; i++) {
        llmopt_device_ops d = ops_for(LLMOPT_DEVICE_CUDA);
        void **slots[] = {(void **)&d.alloc, (void **)&d.free, (void **)&d.copy_h2d,
                          (void **)&d.copy_d2h, (void **)&d.copy_d2d, (void **)&d.synchronize};
        *slots[i] = NULL;
        assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), LLMOPT_EINVAL);
        char want[64];
        snprintf(want, sizeof want, ": %s is NULL", fields[i]);
        assert_non_null(strstr(f->err.msg, want));
    }
    llmopt_device_ops d = ops_for(LLMOPT_DEVICE_CUDA);
    d.name = NULL;
    assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), LLMOPT_EINVAL);
    assert_non_null(strstr(f->err.msg, "name"));
    d = ops_for(LLMOPT_DEVICE_CUDA);
    d.memory_info = NULL; /* optional */
    assert_int_equal(registry_add_device(f->reg, f->a, &d, &f->err), 0);
}

static void removing_an_owner_drops_its_device_ops(void **state) {
    reg_fixture *f = *state;
    llmopt_device_ops cuda = ops_for(LLMOPT_DEVICE_CUDA), test = ops_for(LLMOPT_DEVICE_TEST);
    assert_int_equal(registry_add_device(f->reg, f->a, &cuda, &f->err), 0);
    assert_int_equal(registry_add_device(f->reg, f->b, &test, &f->err), 0);
    registry_remove_owner(f->reg, f->a);
    assert_null(registry_find_device(f->reg, LLMOPT_DEVICE_CUDA));
    assert_non_null(registry_find_device(f->reg, LLMOPT_DEVICE_TEST));
    assert_int_equal(f->a->n_devices, 0);
}

/* ---- through the loader: the test plugins ---- */

static registry *load_set(const char *set) {
    const char *root = getenv("LLMOPT_TEST_PLUGINS");
    assert_non_null(root);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, set);
    registry *reg = registry_new();
    const char *dirs[] = {dir};
    llmopt_error err = {0};
    assert_int_equal(loader_load_dirs(reg, dirs, 1, host_api_table(), &err), 0);
    return reg;
}

static void second_plugin_claiming_a_device_fails_init_naming_both(void **state) {
    (void)state;
    registry *reg = load_set("devdup");
    assert_int_equal(reg->n_plugins, 2);
    assert_int_equal(reg->plugins[0]->state, PLUGIN_LOADED);
    assert_int_equal(reg->plugins[1]->state, PLUGIN_INIT_FAILED);
    assert_non_null(strstr(reg->plugins[1]->reason, "a.so"));
    assert_non_null(strstr(reg->plugins[1]->reason, "b.so"));
    assert_int_equal(reg->n_devices, 1);
    assert_int_equal(reg->plugins[1]->n_kernels, 0); /* rolled back */
    registry_free(reg);
}

static void plugin_with_malformed_device_ops_fails_init_naming_the_field(void **state) {
    (void)state;
    registry *reg = load_set("devbad");
    assert_int_equal(reg->n_plugins, 1);
    assert_int_equal(reg->plugins[0]->state, PLUGIN_INIT_FAILED);
    assert_non_null(strstr(reg->plugins[0]->reason, "free is NULL"));
    assert_int_equal(reg->n_devices, 0);
    assert_int_equal(reg->n_kernels, 0);
    registry_free(reg);
}

/* ---- the host API on the test device (cpu.so + devtest.so loaded) ---- */

static char g_dir[256];
static registry *g_reg;

static void link_plugin(const char *from_dir, const char *name) {
    char src[4096], dst[512];
    assert_true(snprintf(src, sizeof src, "%s/%s%s", from_dir, name, LLMOPT_PLUGIN_SUFFIX) < (int)sizeof src);
    assert_true(snprintf(dst, sizeof dst, "%s/%s%s", g_dir, name, LLMOPT_PLUGIN_SUFFIX) < (int)sizeof dst);
    assert_int_equal(symlink(src, dst), 0);
}

static void unlink_plugin(const char *name) {
    char dst[512];
    snprintf(dst, sizeof dst, "%s/%s%s", g_dir, name, LLMOPT_PLUGIN_SUFFIX);
    unlink(dst);
}

/* 64 MiB of test device: enough for the tiny models, and a limit a test can exceed. */
#define DEV_LIMIT ((size_t)64 << 20)

static int dev_setup_group(void **state) {
    (void)state;
    const char *build = getenv("LLMOPT_BUILD_PLUGINS"), *tests = getenv("LLMOPT_TEST_PLUGINS");
    if (!build || !tests) return -1;
    char limit[32];
    snprintf(limit, sizeof limit, "%zu", DEV_LIMIT);
    setenv("LLMOPT_DEVTEST_LIMIT", limit, 1);
    snprintf(g_dir, sizeof g_dir, "/tmp/llmopt-device-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    char devdir[4096];
    snprintf(devdir, sizeof devdir, "%s/devtest", tests);
    link_plugin(build, "cpu");
    link_plugin(devdir, "devtest");
    tp_set_threads(2);
    g_reg = registry_new();
    const char *dirs[] = {g_dir};
    llmopt_error err = {0};
    if (loader_load_dirs(g_reg, dirs, 1, host_api_table(), &err) != 0 || g_reg->n_plugins != 2) return -1;
    for (size_t i = 0; i < 2; i++)
        if (g_reg->plugins[i]->state != PLUGIN_LOADED) {
            fprintf(stderr, "%s: %s\n", g_reg->plugins[i]->path, g_reg->plugins[i]->reason);
            return -1;
        }
    host_api_set_registry(g_reg);
    return 0;
}

static size_t dev_used(void);

/* Fails the group when device memory is still allocated: a leak of a device allocation. */
static int dev_teardown_group(void **state) {
    (void)state;
    size_t left = dev_used();
    if (left) fprintf(stderr, "%zu bytes of test-device memory leaked\n", left);
    unlink_plugin("cpu");
    unlink_plugin("devtest");
    rmdir(g_dir);
    host_api_set_registry(NULL);
    registry_free(g_reg);
    return left ? -1 : 0;
}

static size_t dev_used(void) {
    const llmopt_device_ops *d = host_api_table()->device_ops(LLMOPT_DEVICE_TEST);
    assert_non_null(d);
    assert_non_null(d->memory_info);
    size_t free_b = 0, total = 0;
    assert_int_equal(d->memory_info(d->ctx, &free_b, &total), 0);
    assert_int_equal(total, DEV_LIMIT);
    return total - free_b;
}

static llmopt_tensor *cpu_ramp(int64_t rows, int64_t cols, float scale) {
    int64_t shape[2] = {rows, cols};
    llmopt_tensor *t = rt_tensor_new(LLMOPT_DTYPE_F32, 2, shape);
    assert_non_null(t);
    float *v = t->data;
    for (int64_t i = 0; i < rows * cols; i++) v[i] = scale * (float)i - 1.5f;
    return t;
}

static void device_ops_are_found_for_the_test_device_only(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    const llmopt_device_ops *d = api->device_ops(LLMOPT_DEVICE_TEST);
    assert_non_null(d);
    assert_int_equal(d->device, LLMOPT_DEVICE_TEST);
    assert_null(api->device_ops(LLMOPT_DEVICE_CPU));
    assert_null(api->device_ops(LLMOPT_DEVICE_CUDA));
    assert_null(api->device_ops(-3));
}

static void tensor_round_trips_host_device_host_and_frees_its_memory(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    size_t before = dev_used();
    llmopt_tensor *h = cpu_ramp(3, 5, 0.25f), *d = NULL, *back = NULL;
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_TEST, &d), 0);
    assert_non_null(d);
    assert_int_equal(d->device, LLMOPT_DEVICE_TEST);
    assert_int_equal(d->dtype, LLMOPT_DTYPE_F32);
    assert_int_equal(d->shape[0], 3);
    assert_int_equal(d->shape[1], 5);
    assert_int_equal(d->nbytes, h->nbytes);
    assert_ptr_not_equal(d->data, h->data);
    assert_true(dev_used() >= before + h->nbytes);
    assert_int_equal(api->tensor_to_host(d, &back), 0);
    assert_int_equal(back->device, LLMOPT_DEVICE_CPU);
    assert_memory_equal(back->data, h->data, h->nbytes);
    api->tensor_unref(d);
    assert_int_equal(dev_used(), before);
    api->tensor_unref(back);
    api->tensor_unref(h);
}

static void device_to_device_copy_keeps_the_bytes(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    size_t before = dev_used();
    llmopt_tensor *h = cpu_ramp(4, 8, -0.5f), *a = NULL, *back = NULL;
    int64_t shape[2] = {4, 8};
    llmopt_tensor *b = api->tensor_new_on(LLMOPT_DEVICE_TEST, LLMOPT_DTYPE_F32, 2, shape);
    assert_non_null(b);
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_TEST, &a), 0);
    assert_int_equal(api->tensor_copy(b, a), 0);
    assert_int_equal(api->tensor_to_host(b, &back), 0);
    assert_memory_equal(back->data, h->data, h->nbytes);
    /* and back into a host tensor through tensor_copy */
    llmopt_tensor *h2 = api->tensor_new(LLMOPT_DTYPE_F32, 2, shape);
    assert_int_equal(api->tensor_copy(h2, b), 0);
    assert_memory_equal(h2->data, h->data, h->nbytes);
    api->tensor_unref(a), api->tensor_unref(b), api->tensor_unref(back), api->tensor_unref(h2), api->tensor_unref(h);
    assert_int_equal(dev_used(), before);
}

static void moving_to_where_a_tensor_is_copies_nothing(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    llmopt_tensor *h = cpu_ramp(2, 2, 1.0f), *same = NULL, *d = NULL, *d2 = NULL;
    assert_int_equal(api->tensor_to_host(h, &same), 0);
    assert_ptr_equal(same, h);
    assert_int_equal(rt_tensor_refcount(h), 2);
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_TEST, &d), 0);
    size_t used = dev_used();
    assert_int_equal(api->tensor_to_device(d, LLMOPT_DEVICE_TEST, &d2), 0);
    assert_ptr_equal(d2, d);
    assert_int_equal(dev_used(), used);
    api->tensor_unref(d2), api->tensor_unref(d), api->tensor_unref(same), api->tensor_unref(h);
}

static void a_device_nobody_registered_is_not_found(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    int64_t shape[1] = {4};
    assert_null(api->tensor_new_on(LLMOPT_DEVICE_CUDA, LLMOPT_DTYPE_F32, 1, shape));
    assert_null(api->tensor_new_on(99, LLMOPT_DTYPE_F32, 1, shape));
    llmopt_tensor *h = cpu_ramp(1, 4, 1.0f), *out = h;
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_CUDA, &out), LLMOPT_ENOTFOUND);
    assert_null(out);
    assert_int_equal(api->tensor_to_device(NULL, LLMOPT_DEVICE_TEST, &out), LLMOPT_EINVAL);
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_TEST, NULL), LLMOPT_EINVAL);
    api->tensor_unref(h);
}

static void copy_between_tensors_of_other_shapes_is_einval(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    size_t before = dev_used();
    int64_t s1[2] = {2, 3}, s2[2] = {3, 2}, s3[1] = {6};
    llmopt_tensor *a = api->tensor_new_on(LLMOPT_DEVICE_TEST, LLMOPT_DTYPE_F32, 2, s1);
    llmopt_tensor *b = api->tensor_new_on(LLMOPT_DEVICE_TEST, LLMOPT_DTYPE_F32, 2, s2);
    llmopt_tensor *c = api->tensor_new(LLMOPT_DTYPE_F32, 1, s3);
    llmopt_tensor *i = api->tensor_new(LLMOPT_DTYPE_I32, 2, s1);
    assert_int_equal(api->tensor_copy(b, a), LLMOPT_EINVAL);
    assert_int_equal(api->tensor_copy(c, a), LLMOPT_EINVAL);
    assert_int_equal(api->tensor_copy(i, a), LLMOPT_EINVAL);
    assert_int_equal(api->tensor_copy(NULL, a), LLMOPT_EINVAL);
    /* a device tensor header the host did not allocate (no memory ops behind it) */
    llmopt_tensor fake = *c;
    fake.device = LLMOPT_DEVICE_TEST;
    fake.host_private = NULL;
    llmopt_tensor *c2 = api->tensor_new(LLMOPT_DTYPE_F32, 1, s3);
    assert_int_equal(api->tensor_copy(c2, &fake), LLMOPT_EINVAL);
    api->tensor_unref(a), api->tensor_unref(b), api->tensor_unref(c), api->tensor_unref(i), api->tensor_unref(c2);
    assert_int_equal(dev_used(), before);
}

static void allocation_beyond_the_device_is_null_and_leaks_nothing(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    size_t before = dev_used();
    int64_t shape[1] = {(int64_t)(DEV_LIMIT / 4) + 1};
    assert_null(api->tensor_new_on(LLMOPT_DEVICE_TEST, LLMOPT_DTYPE_F32, 1, shape));
    llmopt_tensor *big = api->tensor_new(LLMOPT_DTYPE_F32, 1, shape), *out = NULL;
    assert_non_null(big);
    assert_int_equal(api->tensor_to_device(big, LLMOPT_DEVICE_TEST, &out), LLMOPT_ENOMEM);
    assert_null(out);
    api->tensor_unref(big);
    int64_t bad[1] = {-1};
    assert_null(api->tensor_new_on(LLMOPT_DEVICE_TEST, LLMOPT_DTYPE_F32, 1, bad));
    assert_int_equal(dev_used(), before);
}

static void device_tensors_are_not_read_as_host_memory(void **state) {
    (void)state;
    llmopt_tensor *h = cpu_ramp(2, 2, 1.0f), *d = NULL;
    assert_int_equal(host_api_table()->tensor_to_device(h, LLMOPT_DEVICE_TEST, &d), 0);
    float out[4];
    assert_int_equal(rt_tensor_read_f32(d, out), LLMOPT_EINVAL);
    assert_null(rt_tensor_f32_copy(d));
    rt_tensor_unref(d);
    rt_tensor_unref(h);
}

/* The test device's kernels refuse what a missed copy would hand them. */
static void test_device_kernel_refuses_a_host_tensor(void **state) {
    (void)state;
    const llmopt_host_api *api = host_api_table();
    const llmopt_kernel_desc *k = api->kernel_find(LLMOPT_OP_ADD, LLMOPT_DEVICE_TEST, LLMOPT_DTYPE_F32);
    assert_non_null(k);
    llmopt_tensor *h = cpu_ramp(2, 3, 1.0f), *a = NULL, *b = NULL;
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_TEST, &a), 0);
    assert_int_equal(api->tensor_to_device(h, LLMOPT_DEVICE_TEST, &b), 0);
    assert_ptr_not_equal(a, b); /* h is on the CPU: two copies */
    const llmopt_tensor *in[2] = {a, h};
    assert_int_equal(k->fn(in, 2, a, NULL), LLMOPT_EINVAL);            /* input on the host */
    llmopt_tensor lie = *h;
    lie.device = LLMOPT_DEVICE_TEST;                                  /* host bytes, device label */
    in[1] = &lie;
    assert_int_equal(k->fn(in, 2, a, NULL), LLMOPT_EINVAL);
    in[1] = b;
    assert_int_equal(k->fn(in, 2, h, NULL), LLMOPT_EINVAL);            /* output on the host */
    assert_int_equal(k->fn(in, 2, a, NULL), 0);                        /* a = a + b, on the device */
    llmopt_tensor *back = NULL;
    assert_int_equal(api->tensor_to_host(a, &back), 0);
    const float *hv = h->data, *bv = back->data;
    for (int i = 0; i < 6; i++) assert_true(bv[i] == 2.0f * hv[i]);
    api->tensor_unref(back), api->tensor_unref(a), api->tensor_unref(b), api->tensor_unref(h);
}

/* ---- whole forward passes ---- */

#define N_PROMPT 6

/* Logits of a prefill of N_PROMPT tokens (every position) and of one decode step after it. */
static void run_forward(llmopt_model *m, int device, float *prefill, float *decode) {
    tf_model *tm = NULL;
    tf_session *s = NULL;
    llmopt_error err = {0};
    if (tf_model_new(m, device, &tm, &err) != 0) fail_msg("tf_model_new: %s", err.msg);
    if (tf_session_new(tm, 0, &s, &err) != 0) fail_msg("tf_session_new: %s", err.msg);
    const int32_t ids[N_PROMPT] = {1, 7, 3, 22, 0, 11}, next = 5;
    if (tf_forward(s, ids, N_PROMPT, prefill, 1, &err) != 0) fail_msg("prefill: %s", err.msg);
    if (tf_forward(s, &next, 1, decode, 0, &err) != 0) fail_msg("decode: %s", err.msg);
    tf_session_free(s);
    tf_model_free(tm);
}

/* tiny_llama with llama3 rope scaling: its frequency table goes to the device as a weight. */
static llmopt_model *llama3_llama(uint64_t seed) {
    llmopt_model *m = tiny_llama(seed);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", \"hidden_size\": 16, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"intermediate_size\": 24, \"vocab_size\": %d, \"num_hidden_layers\": 2, "
             "\"max_position_embeddings\": 16, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": false, "
             "\"attention_bias\": true, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 4.0, "
             "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8}}", VOCAB);
    config(m, cfg);
    return m;
}

/* The same kernels run on the same bytes, so the logits match to the bit. */
static void forward_on_test_device_equals_cpu(void **state) {
    (void)state;
    static const char *const names[] = {"gpt2", "llama", "llama3 rope"};
    for (int which = 0; which < 3; which++) {
        llmopt_model *m = which == 0 ? tiny_gpt2(1, 2) : which == 1 ? tiny_llama(2) : llama3_llama(2);
        float cpu_p[N_PROMPT * VOCAB], cpu_d[VOCAB], dev_p[N_PROMPT * VOCAB], dev_d[VOCAB];
        size_t before = dev_used();
        run_forward(m, LLMOPT_DEVICE_CPU, cpu_p, cpu_d);
        assert_int_equal(dev_used(), before); /* the CPU path allocates nothing on the device */
        memset(dev_p, 0, sizeof dev_p), memset(dev_d, 0, sizeof dev_d);
        run_forward(m, LLMOPT_DEVICE_TEST, dev_p, dev_d);
        assert_int_equal(dev_used(), before); /* weights, cache and scratch all freed */
        int nonzero = 0;
        for (int i = 0; i < N_PROMPT * VOCAB; i++) nonzero += cpu_p[i] != 0.0f;
        assert_true(nonzero > N_PROMPT * VOCAB / 2);
        if (memcmp(cpu_p, dev_p, sizeof cpu_p) != 0 || memcmp(cpu_d, dev_d, sizeof cpu_d) != 0)
            fail_msg("%s: logits on the test device differ from the CPU's", names[which]);
        rt_model_unref(m);
    }
}

/* A Llama whose projections are 4-bit group-quantized and whose embedding is f16: the weight
 * bytes go to the device as they are, and the device's matmul and embedding get those dtypes. */
static llmopt_model *mixed_dtype_llama(void) {
    llmopt_model *m = tiny_llama(4);
    llmopt_error err = {0};
    for (size_t i = 0; i < rt_model_n_tensors(m); i++) {
        const char *name = rt_model_tensor_name(m, i);
        const llmopt_tensor *t = rt_model_get(m, name);
        llmopt_tensor *c = NULL;
        if (strstr(name, "proj.weight")) {
            if (q_quantize_tensor(t, LLMOPT_DTYPE_GQ(4, 8, 0), &c, &err) != 0) fail_msg("%s: %s", name, err.msg);
        } else if (strcmp(name, "model.embed_tokens.weight") == 0) {
            c = rt_tensor_new(LLMOPT_DTYPE_F16, t->ndim, t->shape);
            assert_non_null(c);
            const float *src = t->data;
            uint16_t *dst = c->data;
            for (int64_t j = 0; j < rt_tensor_numel(t); j++) dst[j] = q_f32_to_f16(src[j]);
        } else {
            continue;
        }
        assert_int_equal(rt_model_set(m, name, c), 0);
        rt_tensor_unref(c);
    }
    return m;
}

static void quantized_and_half_weights_on_test_device_equal_cpu(void **state) {
    (void)state;
    llmopt_model *m = mixed_dtype_llama();
    assert_int_equal(rt_model_get(m, "model.layers.0.mlp.down_proj.weight")->dtype, LLMOPT_DTYPE_GQ(4, 8, 0));
    float cpu_p[N_PROMPT * VOCAB], cpu_d[VOCAB], dev_p[N_PROMPT * VOCAB], dev_d[VOCAB];
    run_forward(m, LLMOPT_DEVICE_CPU, cpu_p, cpu_d);
    run_forward(m, LLMOPT_DEVICE_TEST, dev_p, dev_d);
    assert_memory_equal(cpu_p, dev_p, sizeof cpu_p);
    assert_memory_equal(cpu_d, dev_d, sizeof cpu_d);
    rt_model_unref(m);
}

static void batch_forward_on_test_device_equals_cpu(void **state) {
    (void)state;
    llmopt_model *m = tiny_llama(3);
    float logits[2][2 * VOCAB];
    const int32_t ids[2 * 4] = {1, 2, 3, 4, 9, 8, 7, 6};
    for (int i = 0; i < 2; i++) {
        tf_model *tm = NULL;
        tf_session *s = NULL;
        llmopt_error err = {0};
        int device = i == 0 ? LLMOPT_DEVICE_CPU : LLMOPT_DEVICE_TEST;
        if (tf_model_new(m, device, &tm, &err) || tf_session_new_batch(tm, 2, 8, &s, &err) ||
            tf_forward_batch(s, ids, 4, logits[i], 0, &err))
            fail_msg("device %d: %s", device, err.msg);
        tf_session_free(s);
        tf_model_free(tm);
    }
    assert_memory_equal(logits[0], logits[1], sizeof logits[0]);
    rt_model_unref(m);
}

static void binding_to_a_device_without_memory_ops_names_it(void **state) {
    (void)state;
    llmopt_model *m = tiny_gpt2(1, 1);
    tf_model *tm = NULL;
    llmopt_error err = {0};
    assert_int_equal(tf_model_new(m, LLMOPT_DEVICE_CUDA, &tm, &err), LLMOPT_ENOTFOUND);
    assert_null(tm);
    assert_non_null(strstr(err.msg, "cuda"));
    assert_int_equal(tf_model_new(m, 42, &tm, &err), LLMOPT_ENOTFOUND);
    rt_model_unref(m);
}

/* A device lacking a kernel the model needs: an error naming the op, and no device memory left. */
static void binding_without_a_device_kernel_names_the_op_and_leaks_nothing(void **state) {
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/llmopt-devnorope-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char src[4096], cpu_dst[512], dev_dst[512];
    snprintf(src, sizeof src, "%s/cpu%s", getenv("LLMOPT_BUILD_PLUGINS"), LLMOPT_PLUGIN_SUFFIX);
    snprintf(cpu_dst, sizeof cpu_dst, "%s/cpu%s", dir, LLMOPT_PLUGIN_SUFFIX);
    assert_int_equal(symlink(src, cpu_dst), 0);
    snprintf(src, sizeof src, "%s/devnorope/devtest%s", getenv("LLMOPT_TEST_PLUGINS"), LLMOPT_PLUGIN_SUFFIX);
    snprintf(dev_dst, sizeof dev_dst, "%s/devtest%s", dir, LLMOPT_PLUGIN_SUFFIX);
    assert_int_equal(symlink(src, dev_dst), 0);
    registry *reg = registry_new();
    const char *dirs[] = {dir};
    llmopt_error err = {0};
    assert_int_equal(loader_load_dirs(reg, dirs, 1, host_api_table(), &err), 0);
    host_api_set_registry(reg);

    llmopt_model *llama = tiny_llama(2), *gpt2 = tiny_gpt2(1, 1);
    tf_model *tm = NULL;
    assert_int_equal(tf_model_new(llama, LLMOPT_DEVICE_TEST, &tm, &err), LLMOPT_ENOTFOUND);
    assert_null(tm);
    assert_non_null(strstr(err.msg, "'rope'"));
    assert_non_null(strstr(err.msg, "test"));
    assert_int_equal(dev_used(), 0); /* this registry's test device: nothing left allocated */
    assert_int_equal(tf_model_new(gpt2, LLMOPT_DEVICE_TEST, &tm, &err), 0); /* GPT-2 needs no rope */
    assert_true(dev_used() > 0);
    tf_model_free(tm);
    assert_int_equal(dev_used(), 0);
    rt_model_unref(llama);
    rt_model_unref(gpt2);

    host_api_set_registry(g_reg);
    registry_free(reg);
    unlink(cpu_dst), unlink(dev_dst), rmdir(dir);
}

static int capture_nop(void *arg, const llmopt_tensor *w, const float *x, int rows, int cols) {
    (void)arg, (void)w, (void)x, (void)rows, (void)cols;
    return 0;
}

static void calibration_capture_on_a_device_is_unsupported(void **state) {
    (void)state;
    llmopt_model *m = tiny_gpt2(1, 1);
    tf_model *tm = NULL;
    tf_session *s = NULL;
    llmopt_error err = {0};
    assert_int_equal(tf_model_new(m, LLMOPT_DEVICE_TEST, &tm, &err), 0);
    assert_int_equal(tf_session_new(tm, 0, &s, &err), 0);
    tf_model_set_capture(tm, capture_nop, NULL);
    const int32_t ids[2] = {1, 2};
    assert_int_equal(tf_forward(s, ids, 2, NULL, 0, &err), LLMOPT_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "calibration"));
    tf_session_free(s);
    tf_model_free(tm);
    rt_model_unref(m);
}

int main(void) {
    const struct CMUnitTest registry_tests[] = {
        cmocka_unit_test_setup_teardown(device_ops_register_and_are_found_by_device, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(second_device_ops_for_a_device_is_eexist_naming_both_files, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(device_ops_for_the_cpu_are_refused, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(device_ops_for_an_unknown_device_are_refused, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(device_ops_smaller_than_v1_are_eabi, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(device_ops_without_a_required_function_name_the_field, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(removing_an_owner_drops_its_device_ops, reg_setup, reg_teardown),
        cmocka_unit_test(second_plugin_claiming_a_device_fails_init_naming_both),
        cmocka_unit_test(plugin_with_malformed_device_ops_fails_init_naming_the_field),
    };
    const struct CMUnitTest device_tests[] = {
        cmocka_unit_test(device_ops_are_found_for_the_test_device_only),
        cmocka_unit_test(tensor_round_trips_host_device_host_and_frees_its_memory),
        cmocka_unit_test(device_to_device_copy_keeps_the_bytes),
        cmocka_unit_test(moving_to_where_a_tensor_is_copies_nothing),
        cmocka_unit_test(a_device_nobody_registered_is_not_found),
        cmocka_unit_test(copy_between_tensors_of_other_shapes_is_einval),
        cmocka_unit_test(allocation_beyond_the_device_is_null_and_leaks_nothing),
        cmocka_unit_test(device_tensors_are_not_read_as_host_memory),
        cmocka_unit_test(test_device_kernel_refuses_a_host_tensor),
        cmocka_unit_test(forward_on_test_device_equals_cpu),
        cmocka_unit_test(batch_forward_on_test_device_equals_cpu),
        cmocka_unit_test(quantized_and_half_weights_on_test_device_equal_cpu),
        cmocka_unit_test(binding_to_a_device_without_memory_ops_names_it),
        cmocka_unit_test(binding_without_a_device_kernel_names_the_op_and_leaks_nothing),
        cmocka_unit_test(calibration_capture_on_a_device_is_unsupported),
    };
    int failed = cmocka_run_group_tests_name("device registry", registry_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("device memory", device_tests, dev_setup_group, dev_teardown_group);
    return failed;
}
