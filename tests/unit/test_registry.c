/* Registry tests: stage and kernel descriptors are validated (the message names the field),
 * copied by the plugin's sizes and strides, unique by name/key (both files named), and rolled
 * back per owner. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "plugin/registry.h"

static int nop_run(llmopt_stage_ctx *ctx) {
    (void)ctx;
    return 0;
}

static int nop_kernel(const llmopt_tensor *const *in, int n_in, llmopt_tensor *out,
                      const void *op_params) {
    (void)in;
    (void)n_in;
    (void)out;
    (void)op_params;
    return 0;
}

static llmopt_stage_desc stage(const char *name) {
    llmopt_stage_desc d = {.struct_size = sizeof d, .name = name, .summary = "a test stage",
                           .run = nop_run};
    return d;
}

static llmopt_kernel_desc kernel(const char *op, int dtype) {
    llmopt_kernel_desc k = {.struct_size = sizeof k, .device = LLMOPT_DEVICE_CPU, .op = op,
                            .dtype = dtype, .fn = nop_kernel, .summary = "test"};
    return k;
}

typedef struct fixture {
    registry *reg;
    plugin_rec *a, *b;
    llmopt_error err;
} fixture;

static int setup(void **state) {
    static fixture f;
    memset(&f, 0, sizeof f);
    f.reg = registry_new();
    f.a = registry_add_plugin(f.reg, "/plugins/a.so");
    f.b = registry_add_plugin(f.reg, "/plugins/b.so");
    *state = &f;
    return f.reg && f.a && f.b ? 0 : -1;
}

static int teardown(void **state) {
    fixture *f = *state;
    registry_free(f->reg);
    return 0;
}

/* Adds d as plugin a and expects it refused with a message containing want. */
static void expect_refused(fixture *f, const llmopt_stage_desc *d, int status, const char *want) {
    assert_int_equal(registry_add_stage(f->reg, f->a, d, &f->err), status);
    assert_int_equal(f->err.status, status);
    if (!strstr(f->err.msg, want)) fail_msg("message '%s' lacks '%s'", f->err.msg, want);
    assert_null(registry_find_stage(f->reg, d->name));
    assert_int_equal(f->a->n_stages, 0);
}

static void stage_is_found_after_add_with_default_model_input(void **state) {
    fixture *f = *state;
    llmopt_stage_desc d = stage("test.one");
    assert_int_equal(registry_add_stage(f->reg, f->a, &d, &f->err), 0);
    const stage_rec *s = registry_find_stage(f->reg, "test.one");
    assert_non_null(s);
    assert_ptr_equal(s->plugin, f->a);
    assert_int_equal(f->a->n_stages, 1);
    assert_int_equal(s->desc.n_inputs, 1);
    assert_string_equal(s->inputs[0].name, "model");
    assert_int_equal(s->inputs[0].required, 0);
    assert_ptr_equal(s->desc.inputs, s->inputs);
    assert_null(registry_find_stage(f->reg, "test.two"));
}

static void stage_name_must_be_family_dot_method(void **state) {
    fixture *f = *state;
    const char *bad[] = {"noDot", "Upper.case", "nodot", ".method", "family.", "fam-ily.x",
                         "family.Method"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llmopt_stage_desc d = stage(bad[i]);
        expect_refused(f, &d, LLMOPT_EINVAL, "must look like family.method");
    }
    llmopt_stage_desc ok = stage("quant_2.gptq.v2");
    assert_int_equal(registry_add_stage(f->reg, f->a, &ok, &f->err), 0);
}

static void stage_without_run_is_refused_naming_run(void **state) {
    fixture *f = *state;
    llmopt_stage_desc d = stage("test.norun");
    d.run = NULL;
    expect_refused(f, &d, LLMOPT_EINVAL, "run is NULL");
}

static void stage_without_summary_is_refused_naming_summary(void **state) {
    fixture *f = *state;
    llmopt_stage_desc d = stage("test.nosummary");
    d.summary = NULL;
    expect_refused(f, &d, LLMOPT_EINVAL, "summary is NULL");
}

static void stage_descriptor_smaller_than_v1_is_refused(void **state) {
    fixture *f = *state;
    llmopt_stage_desc d = stage("test.small");
    d.struct_size = offsetof(llmopt_stage_desc, run);
    expect_refused(f, &d, LLMOPT_EABI, "stage descriptor is 72 bytes, ABI v1 needs at least 88");
}

static void param_array_smaller_than_v1_is_refused(void **state) {
    fixture *f = *state;
    llmopt_param_desc p[] = {{.name = "x", .type = LLMOPT_PARAM_INT, .default_value = "1"}};
    llmopt_stage_desc d = stage("test.pstride");
    d.params = p;
    d.n_params = 1;
    d.param_size = 16;
    expect_refused(f, &d, LLMOPT_EABI, "param_size is 16");
}

static void malformed_params_are_refused_naming_the_param(void **state) {
    fixture *f = *state;
    struct {
        llmopt_param_desc p[2];
        const char *want;
    } cases[] = {
        {{{.name = "", .type = LLMOPT_PARAM_INT, .default_value = "1"}}, "params[0]: name is empty"},
        {{{.name = "k", .type = LLMOPT_PARAM_INT, .default_value = "1"},
          {.name = "k", .type = LLMOPT_PARAM_INT, .default_value = "2"}},
         "param 'k' is listed twice"},
        {{{.name = "t", .type = 42, .default_value = "1"}}, "param 't': unknown type 42"},
        {{{.name = "nodef", .type = LLMOPT_PARAM_INT}}, "param 'nodef': not required"},
        {{{.name = "mode", .type = LLMOPT_PARAM_ENUM, .default_value = "a"}},
         "param 'mode': enum without choices"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        llmopt_stage_desc d = stage("test.params");
        d.params = cases[i].p;
        d.n_params = cases[i].p[1].name ? 2 : 1;
        d.param_size = sizeof(llmopt_param_desc);
        expect_refused(f, &d, LLMOPT_EINVAL, cases[i].want);
        assert_non_null(strstr(f->err.msg, "stage 'test.params'"));
    }
}

static void required_param_needs_no_default(void **state) {
    fixture *f = *state;
    llmopt_param_desc p[] = {{.name = "path", .type = LLMOPT_PARAM_STRING, .required = 1}};
    llmopt_stage_desc d = stage("test.required");
    d.params = p;
    d.n_params = 1;
    d.param_size = sizeof p[0];
    assert_int_equal(registry_add_stage(f->reg, f->a, &d, &f->err), 0);
    assert_non_null(stage_find_param(registry_find_stage(f->reg, "test.required"), "path"));
}

static void default_that_does_not_parse_is_refused(void **state) {
    fixture *f = *state;
    llmopt_param_desc p[] = {{.name = "bits", .type = LLMOPT_PARAM_INT, .default_value = "four"}};
    llmopt_stage_desc d = stage("test.baddefault");
    d.params = p;
    d.n_params = 1;
    d.param_size = sizeof p[0];
    expect_refused(f, &d, LLMOPT_EINVAL, "param 'bits': default 'four' is invalid");
}

static void good_defaults_of_every_type_are_accepted(void **state) {
    fixture *f = *state;
    llmopt_param_desc p[] = {
        {.name = "b", .type = LLMOPT_PARAM_BOOL, .default_value = "true"},
        {.name = "i", .type = LLMOPT_PARAM_INT, .default_value = "4", .min = 1, .max = 8},
        {.name = "f", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.5"},
        {.name = "s", .type = LLMOPT_PARAM_STRING, .default_value = "hello"},
        {.name = "e", .type = LLMOPT_PARAM_ENUM, .default_value = "b", .choices = "a|b|c"},
        {.name = "l", .type = LLMOPT_PARAM_LIST, .default_value = "x"},
    };
    llmopt_stage_desc d = stage("test.types");
    d.params = p;
    d.n_params = 6;
    d.param_size = sizeof p[0];
    assert_int_equal(registry_add_stage(f->reg, f->a, &d, &f->err), 0);
    const stage_rec *s = registry_find_stage(f->reg, "test.types");
    assert_int_equal(s->desc.n_params, 6);
    assert_string_equal(stage_find_param(s, "e")->choices, "a|b|c");
    assert_null(stage_find_param(s, "zz"));
}

static void duplicate_stage_name_names_both_files(void **state) {
    fixture *f = *state;
    llmopt_stage_desc d = stage("test.same");
    assert_int_equal(registry_add_stage(f->reg, f->a, &d, &f->err), 0);
    assert_int_equal(registry_add_stage(f->reg, f->b, &d, &f->err), LLMOPT_EEXIST);
    assert_string_equal(f->err.msg,
                        "stage 'test.same' is registered by both /plugins/a.so and /plugins/b.so");
    assert_ptr_equal(registry_find_stage(f->reg, "test.same")->plugin, f->a);
    assert_int_equal(f->b->n_stages, 0);
}

/* A descriptor from a newer minor: the structs carry trailing fields this host does not know.
 * The host reads params and inputs with the plugin's strides and keeps its own sizes. */
typedef struct newer_param {
    llmopt_param_desc v1;
    int64_t added_later;
} newer_param;
typedef struct newer_input {
    llmopt_input_desc v1;
    int64_t added_later[3];
} newer_input;
typedef struct newer_stage {
    llmopt_stage_desc v1;
    void *added_later;
} newer_stage;

static void newer_minor_descriptor_is_read_with_its_strides(void **state) {
    fixture *f = *state;
    newer_param p[2] = {
        {{.name = "alpha", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.1"}, -1},
        {{.name = "beta", .type = LLMOPT_PARAM_INT, .default_value = "2"}, -1},
    };
    newer_input in[2] = {{{.name = "model", .required = 1}, {-1, -1, -1}},
                         {{.name = "teacher", .doc = "the larger model"}, {-1, -1, -1}}};
    newer_stage d = {stage("test.newer"), (void *)&d};
    d.v1.struct_size = sizeof d;
    d.v1.params = &p[0].v1;
    d.v1.n_params = 2;
    d.v1.param_size = sizeof p[0];
    d.v1.inputs = &in[0].v1;
    d.v1.n_inputs = 2;
    d.v1.input_size = sizeof in[0];
    assert_int_equal(registry_add_stage(f->reg, f->a, &d.v1, &f->err), 0);
    const stage_rec *s = registry_find_stage(f->reg, "test.newer");
    assert_int_equal(s->desc.struct_size, sizeof(llmopt_stage_desc));
    assert_int_equal(s->desc.param_size, sizeof(llmopt_param_desc));
    assert_int_equal(s->desc.input_size, sizeof(llmopt_input_desc));
    assert_string_equal(s->params[1].name, "beta");
    assert_string_equal(stage_find_param(s, "beta")->default_value, "2");
    assert_int_equal(s->inputs[0].required, 1);
    assert_string_equal(s->inputs[1].name, "teacher");
    assert_string_equal(s->inputs[1].doc, "the larger model");
}

static void duplicate_inputs_are_refused(void **state) {
    fixture *f = *state;
    llmopt_input_desc in[] = {{.name = "model"}, {.name = "model"}};
    llmopt_stage_desc d = stage("test.inputs");
    d.inputs = in;
    d.n_inputs = 2;
    d.input_size = sizeof in[0];
    expect_refused(f, &d, LLMOPT_EINVAL, "input 'model' is listed twice");
}

static void kernel_lookup_prefers_exact_dtype_then_any(void **state) {
    fixture *f = *state;
    llmopt_kernel_desc any = kernel("matmul", LLMOPT_DTYPE_ANY);
    llmopt_kernel_desc f16 = kernel("matmul", LLMOPT_DTYPE_F16);
    assert_int_equal(registry_add_kernel(f->reg, f->a, &any, &f->err), 0);
    assert_int_equal(registry_add_kernel(f->reg, f->b, &f16, &f->err), 0);
    assert_ptr_equal(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F16)
                         ->plugin, f->b);
    assert_ptr_equal(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32)
                         ->plugin, f->a);
    assert_null(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CUDA, LLMOPT_DTYPE_F16));
    assert_null(registry_find_kernel(f->reg, "rmsnorm", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32));
}

static void gq_lookup_prefers_the_exact_group_then_the_any_group_key_of_its_bits(void **state) {
    fixture *f = *state;
    llmopt_kernel_desc any4 = kernel("matmul", LLMOPT_DTYPE_GQ_ANY_GROUP(4, 1));
    llmopt_kernel_desc g32 = kernel("matmul", LLMOPT_DTYPE_GQ(4, 32, 1));
    assert_int_equal(registry_add_kernel(f->reg, f->a, &any4, &f->err), 0);
    assert_int_equal(registry_add_kernel(f->reg, f->b, &g32, &f->err), 0);
    assert_ptr_equal(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_GQ(4, 32, 1))->plugin, f->b);
    assert_ptr_equal(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_GQ(4, 768, 1))->plugin, f->a);
    /* other bits or symmetry are other types */
    assert_null(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_GQ(4, 768, 0)));
    assert_null(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_GQ(8, 768, 1)));
    /* a second any-group key of the same bits is a duplicate, named as such */
    assert_int_equal(registry_add_kernel(f->reg, f->b, &any4, &f->err), LLMOPT_EEXIST);
    assert_non_null(strstr(f->err.msg, "kernel 'matmul' (cpu, gq4g*a)"));
    llmopt_kernel_desc bad = kernel("matmul", LLMOPT_DTYPE_GQ_ANY_GROUP(5, 0)); /* no 5-bit type */
    assert_int_equal(registry_add_kernel(f->reg, f->a, &bad, &f->err), LLMOPT_EINVAL);
}

static void duplicate_kernel_key_names_both_files(void **state) {
    fixture *f = *state;
    llmopt_kernel_desc k = kernel("matmul", LLMOPT_DTYPE_ANY);
    assert_int_equal(registry_add_kernel(f->reg, f->a, &k, &f->err), 0);
    assert_int_equal(registry_add_kernel(f->reg, f->b, &k, &f->err), LLMOPT_EEXIST);
    assert_non_null(strstr(f->err.msg, "kernel 'matmul' (cpu, any)"));
    assert_non_null(strstr(f->err.msg, "both /plugins/a.so and /plugins/b.so"));
    assert_int_equal(f->b->n_kernels, 0);
}

static void malformed_kernels_are_refused_naming_the_field(void **state) {
    fixture *f = *state;
    llmopt_kernel_desc k = kernel("matmul", LLMOPT_DTYPE_F32);
    k.fn = NULL;
    assert_int_equal(registry_add_kernel(f->reg, f->a, &k, &f->err), LLMOPT_EINVAL);
    assert_non_null(strstr(f->err.msg, "fn is NULL"));
    k = kernel(NULL, LLMOPT_DTYPE_F32);
    assert_int_equal(registry_add_kernel(f->reg, f->a, &k, &f->err), LLMOPT_EINVAL);
    assert_non_null(strstr(f->err.msg, "op is NULL"));
    k = kernel("matmul", 99);
    assert_int_equal(registry_add_kernel(f->reg, f->a, &k, &f->err), LLMOPT_EINVAL);
    assert_non_null(strstr(f->err.msg, "unknown dtype 99"));
    k = kernel("matmul", LLMOPT_DTYPE_F32);
    k.struct_size = 24;
    assert_int_equal(registry_add_kernel(f->reg, f->a, &k, &f->err), LLMOPT_EABI);
    assert_int_equal(f->reg->n_kernels, 0);
}

static void remove_owner_drops_only_that_plugins_registrations(void **state) {
    fixture *f = *state;
    llmopt_stage_desc s1 = stage("a.one"), s2 = stage("b.one"), s3 = stage("a.two");
    llmopt_kernel_desc k1 = kernel("matmul", LLMOPT_DTYPE_F32), k2 = kernel("add", LLMOPT_DTYPE_F32);
    assert_int_equal(registry_add_stage(f->reg, f->a, &s1, &f->err), 0);
    assert_int_equal(registry_add_stage(f->reg, f->b, &s2, &f->err), 0);
    assert_int_equal(registry_add_stage(f->reg, f->a, &s3, &f->err), 0);
    assert_int_equal(registry_add_kernel(f->reg, f->a, &k1, &f->err), 0);
    assert_int_equal(registry_add_kernel(f->reg, f->b, &k2, &f->err), 0);
    registry_remove_owner(f->reg, f->a);
    assert_null(registry_find_stage(f->reg, "a.one"));
    assert_null(registry_find_stage(f->reg, "a.two"));
    assert_non_null(registry_find_stage(f->reg, "b.one"));
    assert_null(registry_find_kernel(f->reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32));
    assert_non_null(registry_find_kernel(f->reg, "add", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32));
    assert_int_equal(f->a->n_stages, 0);
    assert_int_equal(f->a->n_kernels, 0);
    assert_int_equal(f->b->n_stages, 1);
    /* The name is free again. */
    assert_int_equal(registry_add_stage(f->reg, f->b, &s1, &f->err), 0);
}

static int shutdowns;
static void count_shutdown(void) { shutdowns++; }

static void free_calls_shutdown_of_loaded_plugins_only(void **state) {
    fixture *f = *state;
    shutdowns = 0;
    f->a->desc.shutdown = count_shutdown;
    f->b->desc.shutdown = count_shutdown;
    plugin_set_state(f->b, PLUGIN_SKIPPED, "variant %s scored higher", "x");
    assert_string_equal(f->b->reason, "variant x scored higher");
    assert_string_equal(plugin_state_str(f->b->state), "skipped");
    registry_free(f->reg);
    assert_int_equal(shutdowns, 1);
    f->reg = registry_new(); /* for teardown */
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(stage_is_found_after_add_with_default_model_input),
        T(stage_name_must_be_family_dot_method),
        T(stage_without_run_is_refused_naming_run),
        T(stage_without_summary_is_refused_naming_summary),
        T(stage_descriptor_smaller_than_v1_is_refused),
        T(param_array_smaller_than_v1_is_refused),
        T(malformed_params_are_refused_naming_the_param),
        T(required_param_needs_no_default),
        T(default_that_does_not_parse_is_refused),
        T(good_defaults_of_every_type_are_accepted),
        T(duplicate_stage_name_names_both_files),
        T(newer_minor_descriptor_is_read_with_its_strides),
        T(duplicate_inputs_are_refused),
        T(kernel_lookup_prefers_exact_dtype_then_any),
        T(gq_lookup_prefers_the_exact_group_then_the_any_group_key_of_its_bits),
        T(duplicate_kernel_key_names_both_files),
        T(malformed_kernels_are_refused_naming_the_field),
        T(remove_owner_drops_only_that_plugins_registrations),
        T(free_calls_shutdown_of_loaded_plugins_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
