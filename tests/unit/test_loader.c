/* Loader tests: each scenario under tests/plugins/<set> is loaded on its own and the plugin's
 * state and reason are checked: refusals before any plugin code runs, init failures rolled
 * back, variant groups resolved by score, and the good plugin's stages and kernel found. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "plugin/blas_env.h"
#include "plugin/loader.h"

static void test_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "plugin log %d: ", level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The real table is the runtime's; plugins under test only need log at init. */
static const llmopt_host_api test_api = {
    .struct_size = sizeof(llmopt_host_api), .abi_major = LLMOPT_ABI_MAJOR,
    .abi_minor = LLMOPT_ABI_MINOR, .host_version = "test", .log = test_log};

static char *set_dir(const char *set) {
    const char *root = getenv("LLMOPT_TEST_PLUGINS");
    if (!root) fail_msg("LLMOPT_TEST_PLUGINS is not set (run through ctest)");
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, set);
    return dir;
}

/* A fresh registry with one scenario loaded; the load must succeed. */
static registry *load_set(const char *set) {
    registry *reg = registry_new();
    assert_non_null(reg);
    const char *dirs[] = {set_dir(set)};
    llmopt_error err;
    error_clear(&err);
    int rc = loader_load_dirs(reg, dirs, 1, &test_api, &err);
    if (rc != 0) fail_msg("loading %s: %s", set, err.msg);
    return reg;
}

/* The record of the file named base (e.g. "alpha.so") in reg. */
static const plugin_rec *plugin(const registry *reg, const char *base) {
    char want[256];
    snprintf(want, sizeof want, "/%s%s", base, LLMOPT_PLUGIN_SUFFIX);
    for (size_t i = 0; i < reg->n_plugins; i++) {
        const char *path = reg->plugins[i]->path;
        size_t n = strlen(path), w = strlen(want);
        if (n >= w && strcmp(path + n - w, want) == 0) return reg->plugins[i];
    }
    fail_msg("no plugin file %s loaded", want);
    return NULL;
}

static void assert_reason(const plugin_rec *p, plugin_state st, const char *want) {
    if (p->state != st)
        fail_msg("%s: state %s, expected %s (%s)", p->path, plugin_state_str(p->state),
                 plugin_state_str(st), p->reason ? p->reason : "");
    assert_non_null(p->reason);
    if (!strstr(p->reason, want)) fail_msg("%s: reason '%s' lacks '%s'", p->path, p->reason, want);
}

static void good_plugin_loads_and_its_stages_and_kernel_are_found(void **state) {
    (void)state;
    registry *reg = load_set("good");
    assert_int_equal(reg->n_plugins, 1);
    const plugin_rec *p = plugin(reg, "alpha");
    assert_int_equal(p->state, PLUGIN_LOADED);
    assert_null(p->reason);
    assert_string_equal(p->desc.id, "alpha");
    assert_string_equal(p->desc.version, "0.1.0");
    assert_int_equal(p->score, -1);
    assert_int_equal(p->n_stages, 3);
    assert_int_equal(p->n_kernels, 1);
    const stage_rec *echo = registry_find_stage(reg, "test.echo");
    assert_non_null(echo);
    assert_ptr_equal(echo->plugin, p);
    assert_string_equal(stage_find_param(echo, "message")->default_value, "hello");
    assert_non_null(registry_find_stage(reg, "test.fail"));
    assert_non_null(registry_find_stage(reg, "test.sleep"));
    const kernel_rec *k = registry_find_kernel(reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32);
    assert_non_null(k);
    assert_ptr_equal(k->plugin, p);
    registry_free(reg);
}

static void shared_object_without_descriptor_is_refused(void **state) {
    (void)state;
    registry *reg = load_set("noentry");
    assert_reason(plugin(reg, "plain"), PLUGIN_REFUSED,
                  "no llmopt_plugin_v1 symbol (not an llmopt plugin, or built for another ABI "
                  "major)");
    registry_free(reg);
}

static void text_file_with_plugin_suffix_is_refused(void **state) {
    (void)state;
    registry *reg = load_set("notelf");
    assert_reason(plugin(reg, "bad"), PLUGIN_REFUSED, "not a loadable shared object: ");
    registry_free(reg);
}

static void other_abi_major_is_refused(void **state) {
    (void)state;
    registry *reg = load_set("abi2");
    const plugin_rec *major2 = plugin(reg, "major2");
    assert_reason(major2, PLUGIN_REFUSED, "built for ABI major 2, this host speaks ABI 1.0");
    assert_int_equal(major2->n_stages, 0);
    assert_reason(plugin(reg, "v2only"), PLUGIN_REFUSED,
                  "exports llmopt_plugin_v2: built for ABI major 2");
    registry_free(reg);
}

static void newer_minor_is_refused_with_upgrade_hint(void **state) {
    (void)state;
    registry *reg = load_set("minor_newer");
    assert_reason(plugin(reg, "newer"), PLUGIN_REFUSED,
                  "built for ABI 1.1, newer than this host's 1.0: upgrade llmopt");
    registry_free(reg);
}

static void descriptor_smaller_than_v1_is_refused(void **state) {
    (void)state;
    registry *reg = load_set("small");
    char want[128];
    snprintf(want, sizeof want, "descriptor is 16 bytes, ABI v1 needs at least %zu",
             sizeof(llmopt_plugin_desc));
    assert_reason(plugin(reg, "small"), PLUGIN_REFUSED, want);
    registry_free(reg);
}

static void malformed_descriptor_fields_are_refused_naming_the_field(void **state) {
    (void)state;
    registry *reg = load_set("badfields");
    assert_reason(plugin(reg, "badid"), PLUGIN_REFUSED,
                  "descriptor field 'id' is 'Bad.Id', must match [a-z0-9_-]+");
    assert_reason(plugin(reg, "noinit"), PLUGIN_REFUSED, "descriptor field 'init' is NULL");
    registry_free(reg);
}

static void second_plugin_with_same_id_is_refused_naming_the_first(void **state) {
    (void)state;
    registry *reg = load_set("dupid");
    const plugin_rec *first = plugin(reg, "first");
    assert_int_equal(first->state, PLUGIN_LOADED);
    char want[4200];
    snprintf(want, sizeof want, "plugin id 'same' already loaded from %s", first->path);
    assert_reason(plugin(reg, "second"), PLUGIN_REFUSED, want);
    registry_free(reg);
}

static void duplicate_stage_fails_the_second_plugin_and_rolls_it_back(void **state) {
    (void)state;
    registry *reg = load_set("dup");
    const plugin_rec *a = plugin(reg, "a"), *b = plugin(reg, "b");
    assert_int_equal(a->state, PLUGIN_LOADED);
    char want[8400];
    snprintf(want, sizeof want, "stage 'dup.same' is registered by both %s and %s", a->path,
             b->path);
    assert_reason(b, PLUGIN_INIT_FAILED, want);
    assert_ptr_equal(registry_find_stage(reg, "dup.same")->plugin, a);
    assert_non_null(registry_find_stage(reg, "dup.a"));
    assert_null(registry_find_stage(reg, "dup.b"));
    assert_int_equal(b->n_stages, 0);
    registry_free(reg);
}

static void duplicate_kernel_fails_the_second_plugin(void **state) {
    (void)state;
    registry *reg = load_set("dupkernel");
    const plugin_rec *a = plugin(reg, "a"), *b = plugin(reg, "b");
    assert_int_equal(a->state, PLUGIN_LOADED);
    assert_reason(b, PLUGIN_INIT_FAILED, "kernel 'matmul' (cpu, f32) is registered by both");
    assert_non_null(strstr(b->reason, a->path));
    assert_ptr_equal(registry_find_kernel(reg, "matmul", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32)
                         ->plugin, a);
    registry_free(reg);
}

static void init_failure_reports_its_message_and_rolls_back(void **state) {
    (void)state;
    registry *reg = load_set("initfail");
    const plugin_rec *p = plugin(reg, "initfail");
    assert_reason(p, PLUGIN_INIT_FAILED, "cannot find libfoo.so.3");
    assert_string_equal(p->reason, "cannot find libfoo.so.3");
    assert_null(registry_find_stage(reg, "initfail.early"));
    assert_int_equal(reg->n_stages, 0);
    registry_free(reg);
}

static void highest_scoring_variant_wins_and_the_others_say_why(void **state) {
    (void)state;
    registry *reg = load_set("variants");
    const plugin_rec *v0 = plugin(reg, "v0"), *v10 = plugin(reg, "v10"), *v20 = plugin(reg, "v20");
    assert_int_equal(v20->state, PLUGIN_LOADED);
    assert_int_equal(v20->score, 20);
    assert_reason(v0, PLUGIN_SKIPPED, "cannot run on this machine: no AVX-512");
    assert_reason(v10, PLUGIN_SKIPPED, "variant kernels-test-v20 scored higher (20 > 10)");
    const kernel_rec *k = registry_find_kernel(reg, "vtest", LLMOPT_DEVICE_CPU, LLMOPT_DTYPE_F32);
    assert_non_null(k);
    assert_ptr_equal(k->plugin, v20);
    registry_free(reg);
}

static void missing_dir_is_an_error_after_the_other_dirs_load(void **state) {
    (void)state;
    registry *reg = registry_new();
    char missing[4200], good[4200];
    snprintf(missing, sizeof missing, "%s", set_dir("no-such-set"));
    snprintf(good, sizeof good, "%s", set_dir("good"));
    const char *dirs[] = {missing, good};
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(loader_load_dirs(reg, dirs, 2, &test_api, &err), LLMOPT_ENOTFOUND);
    char want[4300];
    snprintf(want, sizeof want, "%s: plugin directory not found", missing);
    assert_string_equal(err.msg, want);
    assert_int_equal(plugin(reg, "alpha")->state, PLUGIN_LOADED);
    assert_non_null(registry_find_stage(reg, "test.echo"));
    registry_free(reg);
}

static void regular_file_given_as_dir_is_not_found(void **state) {
    (void)state;
    registry *reg = registry_new();
    char file[4200];
    snprintf(file, sizeof file, "%s/bad%s", set_dir("notelf"), LLMOPT_PLUGIN_SUFFIX);
    const char *dirs[] = {file};
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(loader_load_dirs(reg, dirs, 1, &test_api, &err), LLMOPT_ENOTFOUND);
    assert_non_null(strstr(err.msg, "plugin directory not found"));
    assert_int_equal(reg->n_plugins, 0);
    registry_free(reg);
}

static int never_called(const llmopt_host_api *api, llmopt_registrar *reg) {
    (void)api;
    (void)reg;
    return 0;
}

/* OPENBLAS_CORETYPE: a value the user set stays; unset, it is set (and reported) or left unset. */
static void blas_coretype_the_user_set_is_kept(void **state) {
    (void)state;
    const char *saved = getenv("OPENBLAS_CORETYPE"), *v = NULL;
    char keep[64] = "";
    if (saved) snprintf(keep, sizeof keep, "%s", saved);
    assert_int_equal(setenv("OPENBLAS_CORETYPE", "Haswell", 1), 0);
    assert_int_equal(blas_env_prepare(&v), 0);
    assert_null(v);
    assert_string_equal(getenv("OPENBLAS_CORETYPE"), "Haswell");
    assert_int_equal(unsetenv("OPENBLAS_CORETYPE"), 0);
    if (blas_env_prepare(&v)) {
        assert_non_null(v);
        assert_string_equal(getenv("OPENBLAS_CORETYPE"), v);
    } else {
        assert_null(getenv("OPENBLAS_CORETYPE"));
    }
    if (saved) setenv("OPENBLAS_CORETYPE", keep, 1);
    else unsetenv("OPENBLAS_CORETYPE");
}

/* A narrower OPENBLAS_CORETYPE than the CPU can run is kept but named, with what to do. */
static void blas_coretype_narrower_than_the_cpu_is_named(void **state) {
    (void)state;
    const char *saved = getenv("OPENBLAS_CORETYPE");
    char keep[64] = "", msg[256] = "";
    if (saved) snprintf(keep, sizeof keep, "%s", saved);
    int avx512 = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512cd");
#endif
    assert_int_equal(setenv("OPENBLAS_CORETYPE", "Haswell", 1), 0);
    assert_int_equal(blas_env_weaker_than_cpu(msg, sizeof msg), avx512);
    if (avx512) {
        assert_non_null(strstr(msg, "OPENBLAS_CORETYPE=Haswell"));
        assert_non_null(strstr(msg, "unset it"));
    }
    assert_string_equal(getenv("OPENBLAS_CORETYPE"), "Haswell"); /* kept */
    assert_int_equal(setenv("OPENBLAS_CORETYPE", "zen", 1), 0); /* OpenBLAS reads it case-blind */
    assert_int_equal(blas_env_weaker_than_cpu(msg, sizeof msg), avx512);
    assert_int_equal(setenv("OPENBLAS_CORETYPE", "skylakex", 1), 0);
    assert_int_equal(blas_env_weaker_than_cpu(msg, sizeof msg), 0);
    assert_int_equal(setenv("OPENBLAS_CORETYPE", "Foo", 1), 0); /* a name OpenBLAS ignores */
    assert_int_equal(blas_env_weaker_than_cpu(msg, sizeof msg), 0);
    assert_int_equal(unsetenv("OPENBLAS_CORETYPE"), 0);
    assert_int_equal(blas_env_weaker_than_cpu(msg, sizeof msg), 0);
    if (saved) setenv("OPENBLAS_CORETYPE", keep, 1);
}

static void check_desc_reads_nothing_beyond_avail(void **state) {
    (void)state;
    llmopt_plugin_desc d = {.struct_size = sizeof d, .abi_major = LLMOPT_ABI_MAJOR,
                            .abi_minor = LLMOPT_ABI_MINOR, .id = "ok", .version = "1",
                            .init = never_called};
    llmopt_error why;
    error_clear(&why);
    assert_int_equal(loader_check_desc(&d, SIZE_MAX, &why), 0);
    assert_int_equal(loader_check_desc(&d, 4, &why), LLMOPT_EABI);
    assert_non_null(strstr(why.msg, "descriptor is 4 bytes"));
    /* The symbol is smaller than the size it claims: only what the symbol holds counts. */
    assert_int_equal(loader_check_desc(&d, 40, &why), LLMOPT_EABI);
    assert_non_null(strstr(why.msg, "descriptor is 40 bytes"));
    d.version = NULL;
    assert_int_equal(loader_check_desc(&d, sizeof d, &why), LLMOPT_EINVAL);
    assert_string_equal(why.msg, "descriptor field 'version' is NULL");
    d.version = "1";
    d.id = NULL;
    assert_int_equal(loader_check_desc(&d, sizeof d, &why), LLMOPT_EINVAL);
    assert_string_equal(why.msg, "descriptor field 'id' is NULL");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(good_plugin_loads_and_its_stages_and_kernel_are_found),
        cmocka_unit_test(shared_object_without_descriptor_is_refused),
        cmocka_unit_test(text_file_with_plugin_suffix_is_refused),
        cmocka_unit_test(other_abi_major_is_refused),
        cmocka_unit_test(newer_minor_is_refused_with_upgrade_hint),
        cmocka_unit_test(descriptor_smaller_than_v1_is_refused),
        cmocka_unit_test(malformed_descriptor_fields_are_refused_naming_the_field),
        cmocka_unit_test(second_plugin_with_same_id_is_refused_naming_the_first),
        cmocka_unit_test(duplicate_stage_fails_the_second_plugin_and_rolls_it_back),
        cmocka_unit_test(duplicate_kernel_fails_the_second_plugin),
        cmocka_unit_test(init_failure_reports_its_message_and_rolls_back),
        cmocka_unit_test(highest_scoring_variant_wins_and_the_others_say_why),
        cmocka_unit_test(missing_dir_is_an_error_after_the_other_dirs_load),
        cmocka_unit_test(regular_file_given_as_dir_is_not_found),
        cmocka_unit_test(blas_coretype_the_user_set_is_kept),
        cmocka_unit_test(blas_coretype_narrower_than_the_cpu_is_named),
        cmocka_unit_test(check_desc_reads_nothing_beyond_avail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
