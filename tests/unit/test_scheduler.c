/* The scheduler with in-process stages: dependency order, models passed along edges without
 * copying, parallel branches bounded by --jobs, failure skipping dependants, cancellation by
 * SIGINT, and the stage directory kept on success and removed on failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/pipeline.h"
#include "plugin/registry.h"
#include "runtime/runtime.h"
#include "sched/scheduler.h"
#include "util/fs.h"

static const llmopt_host_api *api;
static atomic_int running, max_running;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* t.make: one f32 tensor "w" of 4 elements, all 1. */
static int make_run(llmopt_stage_ctx *ctx) {
    llmopt_model *m = api->model_new("test");
    int64_t shape[1] = {4};
    llmopt_tensor *t = api->tensor_new(LLMOPT_DTYPE_F32, 1, shape);
    for (int i = 0; i < 4; i++) ((float *)t->data)[i] = 1.0f;
    api->model_set(m, "w", t);
    api->tensor_unref(t);
    return api->stage_set_output(ctx, m);
}

/* t.pass: clone the input; report whether its tensor is the input's very tensor (no copy). */
static int pass_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *in = api->stage_input(ctx, "model");
    if (!in) return api->set_error(ctx, LLMOPT_EINVAL, "no input");
    llmopt_model *out = api->model_clone(in);
    api->metric(ctx, "same_tensor", api->model_get(out, "w") == api->model_get(in, "w"), NULL, 0);
    api->metric(ctx, "refcount", (double)rt_tensor_refcount(api->model_get(in, "w")), NULL, 0);
    return api->stage_set_output(ctx, out);
}

/* t.conc: records the largest number of stages running at once. */
static int conc_run(llmopt_stage_ctx *ctx) {
    (void)ctx;
    int now = atomic_fetch_add(&running, 1) + 1;
    int seen = atomic_load(&max_running);
    while (now > seen && !atomic_compare_exchange_weak(&max_running, &seen, now)) {}
    sleep_ms(60);
    atomic_fetch_sub(&running, 1);
    return 0;
}

/* t.fail: writes a file into its directory, then fails. */
static int fail_run(llmopt_stage_ctx *ctx) {
    char *p = fs_join(api->stage_dir(ctx), "half.bin");
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    free(p);
    return api->set_error(ctx, LLMOPT_EFAIL, "planned failure");
}

/* t.write: writes a file into its directory and succeeds. */
static int write_run(llmopt_stage_ctx *ctx) {
    char *p = fs_join(api->stage_dir(ctx), "result.txt");
    FILE *f = fopen(p, "w");
    if (f) {
        fputs("done\n", f);
        fclose(f);
    }
    free(p);
    return 0;
}

/* t.interrupt: sends this process SIGINT, then waits (at most 5 s) for the cancel flag. */
static int interrupt_run(llmopt_stage_ctx *ctx) {
    raise(SIGINT);
    for (int i = 0; i < 500; i++) {
        if (api->cancelled(ctx)) return api->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
        sleep_ms(10);
    }
    return 0;
}

static const llmopt_input_desc need_model[] = {{.name = "model", .required = 1}};
static const llmopt_input_desc opt_model[] = {{.name = "model", .required = 0}};
#define STAGE(nm, fl, in, fn)                                                                 \
    {.struct_size = sizeof(llmopt_stage_desc), .flags = (fl), .name = (nm), .summary = "test", \
     .param_size = sizeof(llmopt_param_desc), LLMOPT_STAGE_INPUTS(in), .run = (fn)}
static const llmopt_stage_desc stages[] = {
    STAGE("t.make", LLMOPT_STAGE_OUTPUTS_MODEL, opt_model, make_run),
    STAGE("t.pass", LLMOPT_STAGE_OUTPUTS_MODEL, need_model, pass_run),
    STAGE("t.conc", 0, opt_model, conc_run),
    STAGE("t.fail", LLMOPT_STAGE_OUTPUTS_MODEL, opt_model, fail_run),
    STAGE("t.write", 0, opt_model, write_run),
    STAGE("t.interrupt", LLMOPT_STAGE_OUTPUTS_MODEL, opt_model, interrupt_run),
};

typedef struct fixture {
    registry *reg;
    pipeline *p;
    run_result r;
    char dir[64];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->reg = registry_new();
    plugin_rec *owner = registry_add_plugin(f->reg, "in-process");
    owner->desc.id = "inproc";
    owner->desc.version = "0";
    llmopt_error err = {0};
    for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++)
        if (registry_add_stage(f->reg, owner, &stages[i], &err) != 0) fail_msg("%s", err.msg);
    snprintf(f->dir, sizeof f->dir, "/tmp/llmopt-sched-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    run_result_free(&f->r);
    pipeline_free(f->p);
    registry_free(f->reg);
    fs_rmtree(f->dir);
    free(f);
    return 0;
}

/* Builds the pipeline text and runs it with `jobs` workers. */
static void run(fixture *f, const char *yaml, int jobs) {
    llmopt_error err = {0};
    cfg_node *root = NULL;
    if (cfg_parse_text("t.yaml", yaml, strlen(yaml), &root, &err) != 0) fail_msg("%s", err.msg);
    if (pipeline_build(root, "t.yaml", f->reg, &f->p, &err) != 0) fail_msg("%s", err.msg);
    cfg_free(root);
    run_options opt = {.run_dir = f->dir, .jobs = jobs, .tty = 0, .reg = f->reg};
    assert_int_equal(sched_run(f->p, &opt, &f->r, &err), 0);
}

static const llmopt_stage_ctx *stage(const fixture *f, const char *id) {
    long i = pipeline_find_stage(f->p, id);
    assert_true(i >= 0);
    return &f->r.stages[i];
}

static double metric(const llmopt_stage_ctx *c, const char *name) {
    for (size_t i = 0; i < c->n_metrics; i++)
        if (strcmp(c->metrics[i].name, name) == 0) return c->metrics[i].value;
    fail_msg("no metric %s", name);
    return 0;
}

static void models_flow_along_edges_without_copying(void **state) {
    fixture *f = *state;
    run(f, "name: t\nstages:\n - {id: a, uses: t.make}\n - {id: b, uses: t.pass, inputs: {model: a}}\n"
           " - {id: c, uses: t.pass, inputs: {model: b}}\n", 2);
    assert_int_equal(f->r.n_ok, 3);
    assert_true(metric(stage(f, "b"), "same_tensor") == 1.0);
    assert_true(metric(stage(f, "c"), "same_tensor") == 1.0);
    /* while c ran: referenced by b's output (a's output already released) and c's clone */
    assert_true(metric(stage(f, "c"), "refcount") <= 3.0);
}

static void independent_stages_run_in_parallel_up_to_jobs(void **state) {
    fixture *f = *state;
    atomic_store(&max_running, 0);
    run(f, "name: t\nstages:\n - {id: a, uses: t.conc}\n - {id: b, uses: t.conc}\n"
           " - {id: c, uses: t.conc}\n - {id: d, uses: t.conc}\n", 2);
    assert_int_equal(f->r.n_ok, 4);
    assert_int_equal(atomic_load(&max_running), 2);
}

static void jobs_1_runs_stages_one_at_a_time(void **state) {
    fixture *f = *state;
    atomic_store(&max_running, 0);
    run(f, "name: t\nstages:\n - {id: a, uses: t.conc}\n - {id: b, uses: t.conc}\n - {id: c, uses: t.conc}\n", 1);
    assert_int_equal(f->r.n_ok, 3);
    assert_int_equal(atomic_load(&max_running), 1);
}

static void failure_skips_dependants_and_removes_its_directory(void **state) {
    fixture *f = *state;
    run(f, "name: t\nstages:\n - {id: bad, uses: t.fail}\n - {id: dep, uses: t.pass, inputs: {model: bad}}\n"
           " - {id: dep2, uses: t.pass, inputs: {model: dep}}\n - {id: other, uses: t.write}\n", 2);
    assert_int_equal(stage(f, "bad")->status, STAGE_FAILED);
    assert_string_equal(stage(f, "bad")->err.msg, "planned failure");
    assert_int_equal(stage(f, "dep")->status, STAGE_SKIPPED);
    assert_int_equal(stage(f, "dep2")->status, STAGE_SKIPPED);
    assert_int_equal(stage(f, "other")->status, STAGE_OK);
    char *bad = fs_join(f->dir, "bad"), *partial = fs_join(f->dir, ".bad.partial");
    char *kept = fs_join(f->dir, "other/result.txt"), *report = fs_join(f->dir, "report.json");
    assert_false(fs_exists(bad));
    assert_false(fs_exists(partial));
    assert_true(fs_exists(kept));
    assert_true(fs_exists(report)); /* rewritten after every stage */
    free(bad);
    free(partial);
    free(kept);
    free(report);
}

static void sigint_cancels_running_and_pending_stages(void **state) {
    fixture *f = *state;
    run(f, "name: t\nstages:\n - {id: first, uses: t.make}\n"
           " - {id: stop, uses: t.interrupt, inputs: {model: first}}\n"
           " - {id: later, uses: t.pass, inputs: {model: stop}}\n", 1);
    assert_true(f->r.cancelled);
    assert_int_equal(stage(f, "first")->status, STAGE_OK);
    assert_int_equal(stage(f, "stop")->status, STAGE_CANCELLED);
    assert_int_equal(stage(f, "later")->status, STAGE_CANCELLED);
    char *partial = fs_join(f->dir, ".stop.partial");
    assert_false(fs_exists(partial));
    free(partial);
}

static void missing_required_input_fails_the_stage_with_a_hint(void **state) {
    fixture *f = *state;
    run(f, "name: t\nstages:\n - {id: p, uses: t.pass}\n", 1);
    assert_int_equal(stage(f, "p")->status, STAGE_FAILED);
    assert_non_null(strstr(stage(f, "p")->err.msg, "set 'model:' in the config"));
}

int main(void) {
    setenv("UV_THREADPOOL_SIZE", "4", 1);
    api = host_api_table();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(models_flow_along_edges_without_copying, setup, teardown),
        cmocka_unit_test_setup_teardown(independent_stages_run_in_parallel_up_to_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(jobs_1_runs_stages_one_at_a_time, setup, teardown),
        cmocka_unit_test_setup_teardown(failure_skips_dependants_and_removes_its_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(sigint_cancels_running_and_pending_stages, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_required_input_fails_the_stage_with_a_hint, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
