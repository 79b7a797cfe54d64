/* pipeline_build against a hand-made registry: defaults, parameter type/range/enum checks,
 * unknown stages with suggestions, input wiring, cycles, top-level keys, data and outputs, order
 * and the resolved config. Every error is checked for its file:line:col and its wording. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/pipeline.h"

static const llmopt_param_desc SCALE_PARAMS[] = {
    {.name = "factor", .type = LLMOPT_PARAM_FLOAT, .default_value = "1.0", .min = 0, .max = 100},
    {.name = "mode", .type = LLMOPT_PARAM_ENUM, .default_value = "a", .choices = "a|b"},
    {.name = "tags", .type = LLMOPT_PARAM_LIST, .default_value = ""},
    {.name = "steps", .type = LLMOPT_PARAM_INT, .default_value = "10", .min = 1, .max = 1000},
    {.name = "flag", .type = LLMOPT_PARAM_BOOL, .default_value = "false"},
};
static const llmopt_param_desc NEED_PARAMS[] = {
    {.name = "bits", .type = LLMOPT_PARAM_INT, .required = 1, .min = 2, .max = 8},
};
static const llmopt_input_desc MODEL_ONLY[] = {{.name = "model"}};
static const llmopt_input_desc MERGE_INPUTS[] = {{.name = "model"},
                                                 {.name = "teacher", .required = 1}};

static stage_rec *make_stage(const char *name, uint32_t flags, const llmopt_param_desc *params,
                             uint32_t n_params, const llmopt_input_desc *inputs,
                             uint32_t n_inputs) {
    stage_rec *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->desc.struct_size = sizeof s->desc;
    s->desc.name = name;
    s->desc.flags = flags;
    s->params = calloc(n_params ? n_params : 1, sizeof *s->params);
    s->inputs = calloc(n_inputs, sizeof *s->inputs);
    if (n_params) memcpy(s->params, params, n_params * sizeof *params);
    memcpy(s->inputs, inputs, n_inputs * sizeof *inputs);
    s->desc.params = s->params;
    s->desc.n_params = n_params;
    s->desc.inputs = s->inputs;
    s->desc.n_inputs = n_inputs;
    return s;
}

static int setup(void **state) {
    registry *reg = calloc(1, sizeof *reg);
    reg->n_stages = 4;
    reg->stages = calloc(reg->n_stages, sizeof *reg->stages);
    reg->stages[0] = make_stage("test.scale", LLMOPT_STAGE_OUTPUTS_MODEL, SCALE_PARAMS, 5,
                                MODEL_ONLY, 1);
    reg->stages[1] = make_stage("test.merge", LLMOPT_STAGE_OUTPUTS_MODEL, NULL, 0, MERGE_INPUTS, 2);
    reg->stages[2] = make_stage("test.measure", 0, NULL, 0, MODEL_ONLY, 1);
    reg->stages[3] = make_stage("test.need", LLMOPT_STAGE_OUTPUTS_MODEL, NEED_PARAMS, 1,
                                MODEL_ONLY, 1);
    *state = reg;
    return 0;
}

static int teardown(void **state) {
    registry *reg = *state;
    for (size_t i = 0; i < reg->n_stages; i++) {
        free(reg->stages[i]->params);
        free(reg->stages[i]->inputs);
        free(reg->stages[i]);
    }
    free(reg->stages);
    free(reg);
    return 0;
}

/* Builds text as cfg.yaml; returns the status, leaving the pipeline in *out on success. */
static int build(void **state, const char *text, pipeline **out, llmopt_error *err) {
    cfg_node *root = NULL;
    error_clear(err);
    *out = NULL;
    if (cfg_parse_text("cfg.yaml", text, strlen(text), &root, err) != 0)
        fail_msg("parse failed: %s", err->msg);
    int rc = pipeline_build(root, "cfg.yaml", *state, out, err);
    cfg_free(root);
    if (rc != 0) assert_null(*out);
    return rc;
}

static pipeline *build_ok(void **state, const char *text) {
    pipeline *p;
    llmopt_error err;
    if (build(state, text, &p, &err) != 0) fail_msg("build failed: %s", err.msg);
    return p;
}

static void assert_build_error(void **state, const char *text, const char *want) {
    pipeline *p;
    llmopt_error err;
    assert_int_equal(build(state, text, &p, &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, want);
}

#define HEAD "name: t\nstages:\n"

static void absent_parameters_get_their_defaults(void **state) {
    pipeline *p = build_ok(state, HEAD "  - {id: s, uses: test.scale, with: {steps: 20}}\n");
    const pipeline_stage *s = &p->stages[0];
    assert_true(pipeline_param(s, "factor")->f == 1.0);
    assert_true(pipeline_param(s, "factor")->from_default);
    assert_string_equal(pipeline_param(s, "mode")->s, "a");
    assert_int_equal(pipeline_param(s, "tags")->n_list, 0);
    assert_false(pipeline_param(s, "flag")->b);
    assert_int_equal(pipeline_param(s, "steps")->i, 20);
    assert_false(pipeline_param(s, "steps")->from_default);
    assert_null(pipeline_param(s, "nope"));
    assert_string_equal(p->device, "auto");
    assert_int_equal(p->seed, 0);
    pipeline_free(p);
}

static void given_values_are_read_by_type(void **state) {
    pipeline *p = build_ok(state, HEAD "  - id: s\n    uses: test.scale\n    with:\n"
                                  "      factor: 2.5\n      mode: b\n      tags: [x, y]\n"
                                  "      flag: true\n");
    const pipeline_stage *s = &p->stages[0];
    assert_true(pipeline_param(s, "factor")->f == 2.5);
    assert_string_equal(pipeline_param(s, "mode")->s, "b");
    assert_int_equal(pipeline_param(s, "tags")->n_list, 2);
    assert_string_equal(pipeline_param(s, "tags")->list[1], "y");
    assert_true(pipeline_param(s, "flag")->b);
    pipeline_free(p);
}

static void list_parameter_takes_a_single_scalar(void **state) {
    pipeline *p = build_ok(state, HEAD "  - {id: s, uses: test.scale, with: {tags: only}}\n");
    const param_value *tags = pipeline_param(&p->stages[0], "tags");
    assert_int_equal(tags->n_list, 1);
    assert_string_equal(tags->list[0], "only");
    pipeline_free(p);
}

static void unknown_parameter_lists_valid_names(void **state) {
    assert_build_error(state, HEAD "  - {id: s, uses: test.scale, with: {stepz: 3}}\n",
                       "cfg.yaml:3:38: stage 's' (test.scale): unknown parameter 'stepz' "
                       "(parameters: factor, mode, tags, steps, flag); did you mean 'steps'?");
}

static void wrong_type_says_what_was_expected(void **state) {
    assert_build_error(state, HEAD "  - {id: s, uses: test.scale, with: {flag: maybe}}\n",
                       "cfg.yaml:3:44: stage 's' parameter 'flag': expected true or false, got "
                       "'maybe'");
    assert_build_error(state, HEAD "  - {id: s, uses: test.scale, with: {steps: \"5\"}}\n",
                       "cfg.yaml:3:45: stage 's' parameter 'steps': expected an integer in "
                       "[1, 1000], got '5'");
}

static void out_of_range_is_refused(void **state) {
    assert_build_error(state, HEAD "  - {id: s, uses: test.scale, with: {factor: 101}}\n",
                       "cfg.yaml:3:46: stage 's' parameter 'factor': expected a number in "
                       "[0, 100], got '101'");
    assert_build_error(state, HEAD "  - {id: q4, uses: test.need, with: {bits: 9}}\n",
                       "cfg.yaml:3:44: stage 'q4' parameter 'bits': expected an integer in "
                       "[2, 8], got '9'");
}

static void with_must_be_a_map(void **state) {
    assert_build_error(state, HEAD "  - {id: s, uses: test.scale, with: [steps]}\n",
                       "cfg.yaml:3:37: stage 's': 'with': expected a map, got a sequence");
}

static void enum_value_must_be_a_choice(void **state) {
    assert_build_error(state, HEAD "  - {id: s, uses: test.scale, with: {mode: c}}\n",
                       "cfg.yaml:3:44: stage 's' parameter 'mode': expected one of: a, b, got "
                       "'c'");
}

static void required_parameter_must_be_given(void **state) {
    assert_build_error(state, HEAD "  - {id: q4, uses: test.need}\n",
                       "cfg.yaml:3:5: stage 'q4' (test.need): missing required parameter 'bits' "
                       "(int)");
}

static void unknown_stage_suggests_a_close_name(void **state) {
    assert_build_error(state, HEAD "  - {id: s, uses: test.scal}\n",
                       "cfg.yaml:3:19: unknown stage 'test.scal' (run 'llmopt-host plugins' to "
                       "list stages); did you mean 'test.scale'?");
    assert_build_error(state, HEAD "  - {id: s, uses: quantize.gptq}\n",
                       "cfg.yaml:3:19: unknown stage 'quantize.gptq' (run 'llmopt-host plugins' "
                       "to list stages)");
}

static void input_naming_no_stage_is_refused(void **state) {
    assert_build_error(state, HEAD "  - {id: heal, uses: test.scale, inputs: {model: nope}}\n",
                       "cfg.yaml:3:50: input 'model' of stage 'heal' names 'nope', which is not "
                       "a stage in this pipeline");
}

static void stage_cannot_take_its_own_output(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale, inputs: {model: a}}\n",
                       "cfg.yaml:3:47: stage 'a' cannot take its own output as input 'model'");
}

static void unknown_input_slot_lists_declared_ones(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\n"
                              "  - {id: b, uses: test.merge, inputs: {teacher: a, pupil: a}}\n",
                       "cfg.yaml:4:52: stage 'b' (test.merge): unknown input 'pupil' (inputs: "
                       "model, teacher)");
}

static void missing_required_input_is_refused(void **state) {
    assert_build_error(state, HEAD "  - {id: b, uses: test.merge}\n",
                       "cfg.yaml:3:5: stage 'b' (test.merge): missing required input 'teacher'");
}

static void input_from_a_stage_without_a_model_is_refused(void **state) {
    assert_build_error(state, HEAD "  - {id: m, uses: test.measure}\n"
                              "  - {id: b, uses: test.merge, inputs: {teacher: m}}\n",
                       "cfg.yaml:4:49: input 'teacher' of stage 'b' names 'm' (test.measure), "
                       "which outputs no model");
}

static void inputs_are_wired_and_model_defaults_to_the_pipeline(void **state) {
    pipeline *p = build_ok(state, HEAD "  - {id: a, uses: test.scale}\n"
                                  "  - {id: b, uses: test.merge, inputs: {teacher: a}}\n"
                                  "  - {id: c, uses: test.merge, inputs: {model: a, teacher: a}}\n");
    const pipeline_stage *b = &p->stages[1], *c = &p->stages[2];
    assert_int_equal(b->n_inputs, 2);
    assert_string_equal(b->inputs[0].slot, "model");
    assert_int_equal(b->inputs[0].from, -1);
    assert_string_equal(b->inputs[1].slot, "teacher");
    assert_int_equal(b->inputs[1].from, 0);
    assert_int_equal(b->n_deps, 1);
    assert_int_equal(c->n_deps, 1); /* the same producer twice is one dependency */
    assert_int_equal(c->deps[0], 0);
    pipeline_free(p);
}

static void cycle_names_members_and_points_at_one(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale, inputs: {model: c}}\n"
                              "  - {id: b, uses: test.scale, inputs: {model: a}}\n"
                              "  - {id: c, uses: test.scale, inputs: {model: b}}\n",
                       "cfg.yaml:3:5: cycle between stages: a -> b -> c -> a");
}

static void empty_stages_is_refused(void **state) {
    assert_build_error(state, "name: t\nstages: []\n",
                       "cfg.yaml:2:9: empty pipeline: 'stages' has no entries");
    assert_build_error(state, "name: t\n",
                       "cfg.yaml:1:1: missing required key 'stages' (a list of {id, uses, with, "
                       "inputs})");
}

static void unknown_top_level_key_names_allowed_keys(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\nstagez: 1\n",
                       "cfg.yaml:4:1: unknown top-level key 'stagez' (expected one of: name, "
                       "model, device, matmul_precision, seed, data, stages, outputs)");
}

static void unknown_stage_key_is_refused(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale, width: {}}\n",
                       "cfg.yaml:3:31: stage 'a': unknown key 'width' (expected one of: id, "
                       "uses, with, inputs)");
}

static void duplicate_stage_id_points_at_the_first(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\n  - {id: a, uses: test.scale}\n",
                       "cfg.yaml:4:10: duplicate stage id 'a' (first at line 3)");
}

static void bad_stage_id_and_name_are_refused(void **state) {
    assert_build_error(state, HEAD "  - {id: a.b, uses: test.scale}\n",
                       "cfg.yaml:3:10: stage id must match [A-Za-z0-9_-]+, got 'a.b'");
    assert_build_error(state, "name: a b\nstages: [{id: a, uses: test.scale}]\n",
                       "cfg.yaml:1:7: 'name' must match [A-Za-z0-9._-]+, got 'a b'");
}

static void top_level_scalars_are_checked(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\ndevice: gpu\n",
                       "cfg.yaml:4:9: 'device': expected one of: auto, cpu, cuda, got 'gpu'");
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\nmatmul_precision: low\n",
                       "cfg.yaml:4:19: 'matmul_precision': expected one of: highest, medium, got 'low'");
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\nmatmul_precision: [medium]\n",
                       "cfg.yaml:4:19: 'matmul_precision': expected one of: highest, medium, got a sequence");
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\nseed: -1\n",
                       "cfg.yaml:4:7: 'seed': expected a non-negative integer, got '-1'");
    pipeline *p = build_ok(state, HEAD "  - {id: a, uses: test.scale}\nseed: 7\ndevice: cuda\n"
                                  "model: models/tiny\n");
    assert_int_equal(p->seed, 7);
    assert_string_equal(p->device, "cuda");
    assert_string_equal(p->model, "models/tiny");
    assert_int_equal(p->matmul_precision, LLMOPT_MATMUL_HIGHEST);
    pipeline_free(p);
    p = build_ok(state, HEAD "  - {id: a, uses: test.scale}\nmatmul_precision: medium\n");
    assert_int_equal(p->matmul_precision, LLMOPT_MATMUL_MEDIUM);
    pipeline_free(p);
}

static void outputs_must_name_stages_with_models(void **state) {
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\noutputs: [a, zz]\n",
                       "cfg.yaml:4:14: outputs: 'zz' is not a stage in this pipeline");
    assert_build_error(state, HEAD "  - {id: m, uses: test.measure}\noutputs: m\n",
                       "cfg.yaml:4:10: outputs: stage 'm' (test.measure) outputs no model");
    pipeline *p = build_ok(state, HEAD "  - {id: a, uses: test.scale}\noutputs: a\n");
    assert_int_equal(p->n_outputs, 1);
    assert_string_equal(p->outputs[0], "a");
    pipeline_free(p);
}

static void data_takes_a_path_or_a_map(void **state) {
    pipeline *p = build_ok(state, HEAD "  - {id: a, uses: test.scale}\n"
                                  "data:\n  train: data/a.txt\n"
                                  "  eval: {path: data/b.txt, split: \"90%:100%\"}\n");
    assert_int_equal(p->n_data, 2);
    assert_string_equal(p->data[0].name, "train");
    assert_string_equal(p->data[0].path, "data/a.txt");
    assert_null(p->data[0].split);
    assert_string_equal(p->data[1].path, "data/b.txt");
    assert_string_equal(p->data[1].split, "90%:100%");
    pipeline_free(p);
    assert_build_error(state, HEAD "  - {id: a, uses: test.scale}\ndata:\n  eval: {split: x}\n",
                       "cfg.yaml:5:9: data 'eval': missing required key 'path'");
}

static void order_is_topological_and_follows_config(void **state) {
    pipeline *p = build_ok(state, HEAD "  - {id: heal, uses: test.scale, inputs: {model: q}}\n"
                                  "  - {id: base, uses: test.measure}\n"
                                  "  - {id: q, uses: test.scale}\n"
                                  "  - {id: d, uses: test.merge, inputs: {model: heal, teacher: q}}\n");
    size_t want[] = {1, 2, 0, 3};
    assert_memory_equal(p->order, want, sizeof want);
    assert_int_equal(pipeline_find_stage(p, "d"), 3);
    assert_int_equal(pipeline_find_stage(p, "zz"), -1);
    pipeline_free(p);
}

static void resolved_config_contains_defaults(void **state) {
    pipeline *p = build_ok(state, HEAD "  - {id: s, uses: test.scale, with: {steps: 20}}\n"
                                  "  - {id: m, uses: test.measure}\n");
    const cfg_node *stages = cfg_map_get(p->resolved, "stages");
    const cfg_node *with = cfg_map_get(stages->items[0], "with");
    assert_int_equal(with->n, 5);
    assert_string_equal(cfg_map_get(with, "steps")->str, "20");
    assert_string_equal(cfg_map_get(with, "factor")->str, "1.0");
    assert_string_equal(cfg_map_get(with, "flag")->str, "false");
    assert_int_equal(cfg_map_get(with, "tags")->kind, CFG_SEQ);
    assert_int_equal(cfg_map_get(stages->items[1], "with")->n, 0);
    assert_string_equal(cfg_map_get(p->resolved, "name")->str, "t");

    /* the resolved config builds the same pipeline again */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_int_equal(cfg_emit(p->resolved, f), 0);
    fclose(f);
    pipeline *again = build_ok(state, text);
    assert_false(pipeline_param(&again->stages[0], "factor")->from_default);
    assert_true(pipeline_param(&again->stages[0], "factor")->f == 1.0);
    free(text);
    pipeline_free(again);
    pipeline_free(p);
}

static void param_type_names_are_the_schema_words(void **state) {
    (void)state;
    assert_string_equal(param_type_str(LLMOPT_PARAM_BOOL), "bool");
    assert_string_equal(param_type_str(LLMOPT_PARAM_INT), "int");
    assert_string_equal(param_type_str(LLMOPT_PARAM_FLOAT), "float");
    assert_string_equal(param_type_str(LLMOPT_PARAM_STRING), "string");
    assert_string_equal(param_type_str(LLMOPT_PARAM_ENUM), "enum");
    assert_string_equal(param_type_str(LLMOPT_PARAM_LIST), "list");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(absent_parameters_get_their_defaults),
        T(given_values_are_read_by_type),
        T(list_parameter_takes_a_single_scalar),
        T(unknown_parameter_lists_valid_names),
        T(wrong_type_says_what_was_expected),
        T(out_of_range_is_refused),
        T(with_must_be_a_map),
        T(enum_value_must_be_a_choice),
        T(required_parameter_must_be_given),
        T(unknown_stage_suggests_a_close_name),
        T(input_naming_no_stage_is_refused),
        T(stage_cannot_take_its_own_output),
        T(unknown_input_slot_lists_declared_ones),
        T(missing_required_input_is_refused),
        T(input_from_a_stage_without_a_model_is_refused),
        T(inputs_are_wired_and_model_defaults_to_the_pipeline),
        T(cycle_names_members_and_points_at_one),
        T(empty_stages_is_refused),
        T(unknown_top_level_key_names_allowed_keys),
        T(unknown_stage_key_is_refused),
        T(duplicate_stage_id_points_at_the_first),
        T(bad_stage_id_and_name_are_refused),
        T(top_level_scalars_are_checked),
        T(outputs_must_name_stages_with_models),
        T(data_takes_a_path_or_a_map),
        T(order_is_topological_and_follows_config),
        T(resolved_config_contains_defaults),
        cmocka_unit_test(param_type_names_are_the_schema_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
