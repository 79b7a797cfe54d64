/* The YAML tree: marks, syntax errors, refusals (duplicates, anchors, several documents),
 * scalar interpretation, `--set` overrides, and emit/re-parse round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/yaml_tree.h"

static cfg_node *parse_ok(const char *text) {
    cfg_node *root = NULL;
    llmopt_error err = {0};
    int rc = cfg_parse_text("cfg.yaml", text, strlen(text), &root, &err);
    if (rc != 0) fail_msg("parse failed: %s", err.msg);
    return root;
}

static int parse_err(const char *text, llmopt_error *err) {
    cfg_node *root = NULL;
    error_clear(err);
    int rc = cfg_parse_text("cfg.yaml", text, strlen(text), &root, err);
    assert_null(root);
    return rc;
}

static cfg_node *scalar(const char *s, int quoted) {
    return cfg_new_scalar("t", 1, 1, s, quoted);
}

static const char PIPE[] =
    "name: demo\n"
    "stages:\n"
    "  - id: base\n"
    "    uses: eval.perplexity\n"
    "  - {id: q4, uses: quantize.gptq, with: {bits: 4, group_size: 64}}\n";

/* ---- marks and errors ---- */

static void nested_nodes_carry_one_based_marks(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    assert_int_equal(root->kind, CFG_MAP);
    const cfg_node *stages = cfg_map_get(root, "stages");
    assert_int_equal(stages->line, 3);
    assert_int_equal(stages->col, 3);
    const cfg_node *bits = cfg_map_get(cfg_map_get(stages->items[1], "with"), "bits");
    assert_string_equal(bits->str, "4");
    assert_int_equal(bits->line, 5);
    assert_int_equal(bits->col, 48);
    const cfg_node *uses = cfg_map_get(stages->items[0], "uses");
    assert_int_equal(uses->line, 4);
    assert_int_equal(uses->col, 11);
    assert_int_equal(root->key_nodes[1]->line, 2);
    assert_string_equal(uses->file, "cfg.yaml");
    cfg_free(root);
}

static void syntax_error_names_file_line_col(void **state) {
    (void)state;
    llmopt_error err;
    assert_int_equal(parse_err("name: a\nstages: [a, b\nx: 1\n", &err), LLMOPT_EINVAL);
    assert_true(strncmp(err.msg, "cfg.yaml:", 9) == 0);
    int line = 0, col = 0;
    assert_int_equal(sscanf(err.msg, "cfg.yaml:%d:%d:", &line, &col), 2);
    assert_true(line >= 2);
    assert_true(col >= 1);
    assert_null(strchr(err.msg, '\n'));
}

static void invalid_utf8_is_placed_at_its_byte(void **state) {
    (void)state;
    llmopt_error err;
    assert_int_equal(parse_err("a: 1\nb: \xff\n", &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "cfg.yaml:2:4: invalid leading UTF-8 octet");
}

static void duplicate_key_is_refused_with_first_line(void **state) {
    (void)state;
    llmopt_error err;
    assert_int_equal(parse_err("a: 1\nb: 2\na: 3\n", &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "cfg.yaml:3:1: duplicate key 'a' (first at line 1)");
}

static void anchors_and_aliases_are_refused(void **state) {
    (void)state;
    llmopt_error err;
    assert_int_equal(parse_err("a: &x 1\nb: *x\n", &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "cfg.yaml:1:4: anchors and aliases are not supported"));
}

static void non_scalar_key_is_refused(void **state) {
    (void)state;
    llmopt_error err;
    assert_int_equal(parse_err("? [a, b]\n: 1\n", &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "map keys must be scalars"));
}

static void second_document_is_refused(void **state) {
    (void)state;
    llmopt_error err;
    assert_int_equal(parse_err("a: 1\n---\nb: 2\n", &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "only one YAML document"));
}

static void empty_document_is_an_empty_map(void **state) {
    (void)state;
    cfg_node *root = parse_ok("# nothing here\n");
    assert_int_equal(root->kind, CFG_MAP);
    assert_int_equal(root->n, 0);
    cfg_free(root);
}

static void missing_file_is_an_io_error(void **state) {
    (void)state;
    cfg_node *root = NULL;
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(cfg_parse_file("/nonexistent/cfg.yaml", &root, &err), LLMOPT_EIO);
    assert_null(root);
    assert_non_null(strstr(err.msg, "/nonexistent/cfg.yaml: cannot open:"));
}

/* ---- scalars ---- */

static void bools_accept_the_core_spellings_only(void **state) {
    (void)state;
    const char *yes[] = {"true", "True", "TRUE"}, *no[] = {"false", "False", "FALSE"};
    for (int i = 0; i < 3; i++) {
        cfg_node *t = scalar(yes[i], 0), *f = scalar(no[i], 0);
        int b = -1;
        assert_int_equal(cfg_scalar_bool(t, &b), 0);
        assert_int_equal(b, 1);
        assert_int_equal(cfg_scalar_bool(f, &b), 0);
        assert_int_equal(b, 0);
        cfg_free(t);
        cfg_free(f);
    }
    cfg_node *yes_word = scalar("yes", 0), *quoted = scalar("true", 1);
    int b;
    assert_int_not_equal(cfg_scalar_bool(yes_word, &b), 0);
    assert_int_not_equal(cfg_scalar_bool(quoted, &b), 0);
    cfg_free(yes_word);
    cfg_free(quoted);
}

static void ints_read_decimal_and_hex(void **state) {
    (void)state;
    struct { const char *s; long long v; } ok[] = {
        {"0", 0}, {"-17", -17}, {"+8", 8}, {"0x1F", 31}, {"9223372036854775807", INT64_MAX}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cfg_node *n = scalar(ok[i].s, 0);
        long long v = 0;
        assert_int_equal(cfg_scalar_int(n, &v), 0);
        assert_true(v == ok[i].v);
        cfg_free(n);
    }
}

static void ints_refuse_overflow_junk_and_quotes(void **state) {
    (void)state;
    const char *bad[] = {"99999999999999999999", "12abc", "1.5", "", " 3", "0x", "--3", "3 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg_node *n = scalar(bad[i], 0);
        long long v;
        assert_int_not_equal(cfg_scalar_int(n, &v), 0);
        cfg_free(n);
    }
    cfg_node *q = scalar("3", 1);
    long long v;
    assert_int_not_equal(cfg_scalar_int(q, &v), 0);
    cfg_free(q);
}

static void floats_read_decimals_exponents_ints_and_specials(void **state) {
    (void)state;
    struct { const char *s; double v; } ok[] = {
        {"0.5", 0.5}, {"-1e3", -1000.0}, {".25", 0.25}, {"7", 7.0}, {"2.", 2.0}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cfg_node *n = scalar(ok[i].s, 0);
        double v = 0;
        assert_int_equal(cfg_scalar_float(n, &v), 0);
        assert_true(v == ok[i].v);
        cfg_free(n);
    }
    cfg_node *inf = scalar("-.inf", 0), *nan_ = scalar(".nan", 0);
    double v;
    assert_int_equal(cfg_scalar_float(inf, &v), 0);
    assert_true(isinf(v) && v < 0);
    assert_int_equal(cfg_scalar_float(nan_, &v), 0);
    assert_true(isnan(v));
    cfg_free(inf);
    cfg_free(nan_);
}

static void floats_refuse_c_only_spellings_and_junk(void **state) {
    (void)state;
    const char *bad[] = {"inf", "nan", "0x1p3", "1e999", "1.2.3", ".", "1e", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg_node *n = scalar(bad[i], 0);
        double v;
        if (cfg_scalar_float(n, &v) == 0) fail_msg("'%s' read as a float", bad[i]);
        cfg_free(n);
    }
    cfg_node *q = scalar("0.5", 1);
    double v;
    assert_int_not_equal(cfg_scalar_float(q, &v), 0);
    cfg_free(q);
}

static void null_is_tilde_null_or_empty_plain(void **state) {
    (void)state;
    const char *nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < 5; i++) {
        cfg_node *n = scalar(nulls[i], 0);
        assert_true(cfg_scalar_is_null(n));
        cfg_free(n);
    }
    cfg_node *q = scalar("null", 1), *word = scalar("none", 0);
    assert_false(cfg_scalar_is_null(q));
    assert_false(cfg_scalar_is_null(word));
    cfg_free(q);
    cfg_free(word);
}

static void parsed_quotes_are_remembered(void **state) {
    (void)state;
    cfg_node *root = parse_ok("a: \"3\"\nb: 3\nc: 'x'\n");
    long long v;
    assert_true(cfg_map_get(root, "a")->quoted);
    assert_int_not_equal(cfg_scalar_int(cfg_map_get(root, "a"), &v), 0);
    assert_int_equal(cfg_scalar_int(cfg_map_get(root, "b"), &v), 0);
    assert_true(cfg_map_get(root, "c")->quoted);
    cfg_free(root);
}

/* ---- overrides ---- */

static void override(cfg_node *root, const char *set) {
    llmopt_error err = {0};
    if (cfg_apply_override(root, set, &err) != 0) fail_msg("--set %s failed: %s", set, err.msg);
}

static void override_creates_missing_keys(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    override(root, "data.train.path=data/kjv.txt");
    const cfg_node *path = cfg_map_get(cfg_map_get(cfg_map_get(root, "data"), "train"), "path");
    assert_non_null(path);
    assert_string_equal(path->str, "data/kjv.txt");
    assert_string_equal(path->file, "--set");
    assert_int_equal(path->line, 1);
    assert_int_equal(path->col, 17);
    cfg_free(root);
}

static void override_replaces_a_value(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    override(root, "name=other");
    assert_string_equal(cfg_map_get(root, "name")->str, "other");
    assert_int_equal(root->n, 2);
    cfg_free(root);
}

static void override_addresses_stages_by_id(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    override(root, "stages.q4.with.bits=3");
    override(root, "stages.base.with.batch=2");
    const cfg_node *stages = cfg_map_get(root, "stages");
    const cfg_node *bits = cfg_map_get(cfg_map_get(stages->items[1], "with"), "bits");
    assert_string_equal(bits->str, "3");
    assert_int_equal(cfg_map_get(stages->items[1], "with")->n, 2);
    assert_string_equal(cfg_map_get(cfg_map_get(stages->items[0], "with"), "batch")->str, "2");
    cfg_free(root);
}

static void override_indexes_sequences_by_number(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    override(root, "stages.0.uses=eval.other");
    assert_string_equal(cfg_map_get(cfg_map_get(root, "stages")->items[0], "uses")->str,
                        "eval.other");
    cfg_free(root);
}

static void override_with_unknown_stage_id_fails(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    llmopt_error err;
    error_clear(&err);
    assert_int_equal(cfg_apply_override(root, "stages.q9.with.bits=3", &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "--set stages.q9.with.bits=3: no stage with id 'q9'");
    cfg_free(root);
}

static void override_value_is_parsed_as_yaml(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    override(root, "tags=[a, b]");
    override(root, "opts={x: 1}");
    override(root, "label=\"7\"");
    override(root, "empty=");
    const cfg_node *tags = cfg_map_get(root, "tags");
    assert_int_equal(tags->kind, CFG_SEQ);
    assert_int_equal(tags->n, 2);
    assert_string_equal(tags->items[1]->str, "b");
    assert_int_equal(tags->items[1]->col, 10);
    assert_int_equal(cfg_map_get(root, "opts")->kind, CFG_MAP);
    assert_string_equal(cfg_map_get(cfg_map_get(root, "opts"), "x")->str, "1");
    assert_true(cfg_map_get(root, "label")->quoted);
    assert_true(cfg_scalar_is_null(cfg_map_get(root, "empty")));
    cfg_free(root);
}

static void override_without_equals_fails(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    llmopt_error err;
    assert_int_equal(cfg_apply_override(root, "name", &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "expected path=value"));
    assert_int_equal(cfg_apply_override(root, "name=[a", &err), LLMOPT_EINVAL);
    assert_true(strncmp(err.msg, "--set name=[a: ", 15) == 0);
    assert_int_equal(cfg_apply_override(root, "name.x=1", &err), LLMOPT_EINVAL);
    assert_string_equal(cfg_map_get(root, "name")->str, "demo");
    cfg_free(root);
}

/* ---- emitting ---- */

static void assert_same_tree(const cfg_node *a, const cfg_node *b) {
    assert_int_equal(a->kind, b->kind);
    assert_int_equal(a->n, b->n);
    if (a->kind == CFG_SCALAR) {
        assert_string_equal(a->str, b->str);
        assert_int_equal(a->quoted, b->quoted);
    }
    for (size_t i = 0; i < a->n; i++) {
        if (a->kind == CFG_MAP) assert_string_equal(a->keys[i], b->keys[i]);
        assert_same_tree(a->items[i], b->items[i]);
    }
}

static cfg_node *emit_and_reparse(const cfg_node *root, char **text) {
    size_t len = 0;
    FILE *f = open_memstream(text, &len);
    assert_non_null(f);
    assert_int_equal(cfg_emit(root, f), 0);
    fclose(f);
    return parse_ok(*text);
}

static void emit_then_parse_gives_the_same_tree(void **state) {
    (void)state;
    cfg_node *root = parse_ok(
        "name: demo\n"
        "data:\n  train: {path: \"data/a b.txt\", split: \"0:90%\"}\n"
        "stages:\n"
        "  - {id: q4, uses: quantize.gptq, with: {bits: 4, tags: [x, 'y z'], note: \"3\"}}\n"
        "  - id: heal\n    uses: finetune.lora\n    inputs: {model: q4}\n    with: {}\n"
        "empty:\nweird: \"a: b # c\"\nlist: []\n");
    char *text = NULL;
    cfg_node *again = emit_and_reparse(root, &text);
    assert_same_tree(root, again);
    assert_null(strstr(text, "{path"));   /* block style, not flow */
    free(text);
    cfg_free(again);
    cfg_free(root);
}

static void copy_is_deep_and_equal(void **state) {
    (void)state;
    cfg_node *root = parse_ok(PIPE);
    cfg_node *copy = cfg_copy(root);
    assert_same_tree(root, copy);
    override(copy, "stages.q4.with.bits=2");
    assert_string_equal(
        cfg_map_get(cfg_map_get(cfg_map_get(root, "stages")->items[1], "with"), "bits")->str, "4");
    assert_int_equal(cfg_map_get(copy, "stages")->items[1]->line, 5);
    cfg_free(copy);
    cfg_free(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nested_nodes_carry_one_based_marks),
        cmocka_unit_test(syntax_error_names_file_line_col),
        cmocka_unit_test(invalid_utf8_is_placed_at_its_byte),
        cmocka_unit_test(duplicate_key_is_refused_with_first_line),
        cmocka_unit_test(anchors_and_aliases_are_refused),
        cmocka_unit_test(non_scalar_key_is_refused),
        cmocka_unit_test(second_document_is_refused),
        cmocka_unit_test(empty_document_is_an_empty_map),
        cmocka_unit_test(missing_file_is_an_io_error),
        cmocka_unit_test(bools_accept_the_core_spellings_only),
        cmocka_unit_test(ints_read_decimal_and_hex),
        cmocka_unit_test(ints_refuse_overflow_junk_and_quotes),
        cmocka_unit_test(floats_read_decimals_exponents_ints_and_specials),
        cmocka_unit_test(floats_refuse_c_only_spellings_and_junk),
        cmocka_unit_test(null_is_tilde_null_or_empty_plain),
        cmocka_unit_test(parsed_quotes_are_remembered),
        cmocka_unit_test(override_creates_missing_keys),
        cmocka_unit_test(override_replaces_a_value),
        cmocka_unit_test(override_addresses_stages_by_id),
        cmocka_unit_test(override_indexes_sequences_by_number),
        cmocka_unit_test(override_with_unknown_stage_id_fails),
        cmocka_unit_test(override_value_is_parsed_as_yaml),
        cmocka_unit_test(override_without_equals_fails),
        cmocka_unit_test(emit_then_parse_gives_the_same_tree),
        cmocka_unit_test(copy_is_deep_and_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
