/* The finetune plugin's data code (plugins/finetune/data.c, compiled in): JSONL records with
 * line-numbered errors, loss masks on SFT records, packing into windows, text windows, the
 * window order, and learning-rate schedules at given steps. The tokenizer is a fake one: each
 * byte is its own id, BOS = 256 (with add_special), EOS = 257. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llmopt/common.h>
#include "data.h"

#define BOS 256
#define EOS 257

static int fake_encode(void *arg, const char *text, size_t len, int add_special, int32_t **ids, size_t *n) {
    (void)arg;
    *ids = malloc((len + 1) * sizeof **ids);
    size_t k = 0;
    if (add_special) (*ids)[k++] = BOS;
    for (size_t i = 0; i < len; i++) (*ids)[k++] = (unsigned char)text[i];
    *n = k;
    return 0;
}

/* A template "<role>content\n" per message, "<assistant>" as the generation prompt. */
static int fake_render(void *arg, const char *const *roles, const char *const *contents, size_t n, int add_gen,
                       char **out, size_t *len) {
    (void)arg;
    char buf[4096];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)snprintf(buf + k, sizeof buf - k, "<%s>%s\n", roles[i], contents[i]);
    if (add_gen) k += (size_t)snprintf(buf + k, sizeof buf - k, "<assistant>");
    *out = strdup(buf);
    *len = k;
    return 0;
}

static int no_template(void *arg, const char *const *roles, const char *const *contents, size_t n, int add_gen,
                       char **out, size_t *len) {
    (void)arg, (void)roles, (void)contents, (void)n, (void)add_gen, (void)out, (void)len;
    return LLMOPT_ENOTFOUND;
}

static void fake_free(void *arg, void *p) {
    (void)arg;
    free(p);
}

static const ft_tokenizer FALLBACK = {.encode = fake_encode, .render = no_template, .free_mem = fake_free, .eos = EOS};
static const ft_tokenizer TEMPLATE = {.encode = fake_encode, .render = fake_render, .free_mem = fake_free, .eos = EOS};

static int build(const char *text, int format, int seq, int skip_bad, int truncate, const ft_tokenizer *tok,
                 ft_dataset *d, char *err) {
    ft_data_options o = {.format = format, .seq = seq, .skip_bad = skip_bad, .truncate_long = truncate};
    return ft_dataset_build(text, strlen(text), &o, tok, d, err, 512);
}

/* The target string of window w: the bytes that are targets, '.' for FT_IGNORE, '$' for EOS. */
static void targets_str(const ft_dataset *d, size_t w, char *out) {
    for (int i = 0; i < d->seq; i++) {
        int32_t t = d->targets[w * (size_t)d->seq + (size_t)i];
        out[i] = t == FT_IGNORE ? '.' : t == EOS ? '$' : (char)t;
    }
    out[d->seq] = '\0';
}

static void malformed_line_fails_with_its_line_number(void **state) {
    (void)state;
    const char *text = "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": 3, \"response\": \"b\"}\n";
    ft_dataset d;
    char err[512];
    assert_int_equal(build(text, FT_FORMAT_JSONL_SFT, 16, 0, 1, &FALLBACK, &d, err), LLMOPT_EFORMAT);
    assert_non_null(strstr(err, "line 3: "));
    assert_non_null(strstr(err, "'prompt' and 'response'"));
    assert_int_equal(build("{oops\n", FT_FORMAT_JSONL_SFT, 16, 0, 1, &FALLBACK, &d, err), LLMOPT_EFORMAT);
    assert_non_null(strstr(err, "line 1: not JSON"));
}

static void malformed_lines_are_skipped_and_listed(void **state) {
    (void)state;
    const char *text = "[1]\n{\"prompt\": \"a\", \"response\": \"b\"}\nnope\n{\"messages\": []}\n"
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n";
    ft_dataset d;
    char err[512];
    assert_int_equal(build(text, FT_FORMAT_JSONL_SFT, 64, 1, 1, &FALLBACK, &d, err), 0);
    assert_int_equal(d.n_bad, 4);
    assert_int_equal(d.bad_lines[0], 1);
    assert_int_equal(d.bad_lines[1], 3);
    assert_int_equal(d.bad_lines[2], 4);
    assert_int_equal(d.bad_lines[3], 5); /* no assistant message */
    assert_int_equal(d.n_records, 1);
    ft_dataset_free(&d);
}

static void prompt_response_loss_covers_the_response_and_eos_only(void **state) {
    (void)state;
    ft_dataset d;
    char err[512], got[64];
    assert_int_equal(build("{\"prompt\": \"Hi\", \"response\": \"Yo\"}\n", FT_FORMAT_JSONL_SFT, 24, 0, 1, &FALLBACK,
                           &d, err), 0);
    /* BOS "User: Hi" "\nAssistant: " "Yo" EOS: 1 + 8 + 12 + 2 + 1 = 24 tokens; 'Y' (token 21) is
     * the target of position 20 */
    assert_int_equal(d.n, 1);
    targets_str(&d, 0, got);
    assert_string_equal(got, "....................Yo$.");
    assert_int_equal(d.inputs[0], BOS);
    assert_int_equal(d.n_targets, 3);
    ft_dataset_free(&d);
}

static void chat_template_masks_all_but_assistant_turns(void **state) {
    (void)state;
    const char *text = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"B\"},"
                       " {\"role\": \"user\", \"content\": \"c\"}, {\"role\": \"assistant\", \"content\": \"D\"}]}\n";
    ft_dataset d;
    char err[512], got[64];
    assert_int_equal(build(text, FT_FORMAT_JSONL_SFT, 48, 0, 1, &TEMPLATE, &d, err), 0);
    /* "<user>a\n<assistant>" masked, "B\n" trained, "<user>c\n<assistant>" masked, "D\n" trained;
     * no BOS (templates write their own), no EOS added */
    targets_str(&d, 0, got);
    assert_string_equal(got, "..................B\n...................D\n.......");
    ft_dataset_free(&d);
}

static void records_are_packed_whole_into_windows(void **state) {
    (void)state;
    /* each record: BOS "User: x" "\nAssistant: " "y" EOS = 22 tokens */
    const char *rec = "{\"prompt\": \"x\", \"response\": \"y\"}\n";
    char text[256];
    snprintf(text, sizeof text, "%s%s%s", rec, rec, rec);
    ft_dataset d;
    char err[512], got[64];
    assert_int_equal(build(text, FT_FORMAT_JSONL_SFT, 47, 0, 1, &FALLBACK, &d, err), 0);
    assert_int_equal(d.n_records, 3);
    assert_int_equal(d.n, 2); /* two records fit in 48 tokens, the third starts a window */
    targets_str(&d, 0, got);
    /* position 21 would predict the second record's BOS: not a target */
    assert_string_equal(got, "...................y$....................y$....");
    assert_int_equal(d.inputs[22], BOS); /* the second record starts at position 22 */
    targets_str(&d, 1, got);
    assert_string_equal(got, "...................y$..........................");
    assert_int_equal(d.n_targets, 6);
    ft_dataset_free(&d);
}

static void long_records_are_truncated_or_refused(void **state) {
    (void)state;
    const char *text = "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a long prompt here\", \"response\": \"b\"}\n";
    ft_dataset d;
    char err[512];
    assert_int_equal(build(text, FT_FORMAT_JSONL_SFT, 25, 0, 0, &FALLBACK, &d, err), LLMOPT_EINVAL);
    assert_non_null(strstr(err, "line 2: the record is 39 tokens, longer than seq_len + 1 = 26"));
    assert_int_equal(build(text, FT_FORMAT_JSONL_SFT, 25, 0, 1, &FALLBACK, &d, err), 0);
    assert_int_equal(d.n_truncated, 1);
    assert_int_equal(d.n_records, 2);
    ft_dataset_free(&d);
}

static void text_windows_predict_every_token_after_the_first_once(void **state) {
    (void)state;
    ft_dataset d;
    char err[512], got[64];
    assert_int_equal(build("abcdefghij", FT_FORMAT_TEXT, 4, 0, 1, &FALLBACK, &d, err), 0);
    /* BOS a..j: 11 tokens, 10 targets in windows of 4 */
    assert_int_equal(d.n, 3);
    assert_int_equal(d.n_targets, 10);
    targets_str(&d, 0, got);
    assert_string_equal(got, "abcd");
    assert_int_equal(d.inputs[0], BOS);
    targets_str(&d, 1, got);
    assert_string_equal(got, "efgh");
    assert_int_equal(d.inputs[4], 'd');
    targets_str(&d, 2, got);
    assert_string_equal(got, "ij..");
    ft_dataset_free(&d);
}

static void empty_datasets_are_errors(void **state) {
    (void)state;
    ft_dataset d;
    char err[512];
    assert_int_equal(build("", FT_FORMAT_TEXT, 8, 0, 1, &FALLBACK, &d, err), LLMOPT_EINVAL);
    assert_non_null(strstr(err, "the dataset is empty"));
    assert_int_equal(build("\n  \n", FT_FORMAT_JSONL_SFT, 8, 1, 1, &FALLBACK, &d, err), LLMOPT_EINVAL);
    assert_non_null(strstr(err, "no valid records"));
    assert_int_equal(build("nope\n", FT_FORMAT_JSONL_SFT, 8, 1, 1, &FALLBACK, &d, err), LLMOPT_EINVAL);
}

static void window_order_depends_only_on_seed_and_index(void **state) {
    (void)state;
    ft_order a, b;
    assert_int_equal(ft_order_init(&a, 7, 42, 1), 0);
    assert_int_equal(ft_order_init(&b, 7, 42, 1), 0);
    int seen[7] = {0}, differs = 0;
    for (uint64_t g = 0; g < 7; g++) seen[ft_order_at(&a, g)]++;
    for (int i = 0; i < 7; i++) assert_int_equal(seen[i], 1); /* an epoch is a permutation */
    for (uint64_t g = 0; g < 7; g++) differs |= ft_order_at(&a, g) != ft_order_at(&a, g + 7);
    assert_true(differs); /* a new order each epoch */
    /* b jumps straight to epoch 3 (a resumed run): the same windows as a walking there */
    for (uint64_t g = 21; g < 28; g++) assert_int_equal(ft_order_at(&b, g), ft_order_at(&a, g));
    ft_order_free(&a);
    ft_order_free(&b);
    ft_order c;
    assert_int_equal(ft_order_init(&c, 5, 1, 0), 0);
    assert_int_equal(ft_order_at(&c, 12), 2);
    ft_order_free(&c);
}

static void lr_schedules_match_transformers_at_given_steps(void **state) {
    (void)state;
    /* transformers' lr_lambda values (warmup 10, total 110) times lr 1e-3 */
    assert_true(fabs(ft_lr_at(FT_SCHED_LINEAR, 1e-3, 10, 110, 0) - 0.0) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_LINEAR, 1e-3, 10, 110, 5) - 0.5e-3) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_LINEAR, 1e-3, 10, 110, 10) - 1e-3) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_LINEAR, 1e-3, 10, 110, 60) - 0.5e-3) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_LINEAR, 1e-3, 10, 110, 110) - 0.0) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_COSINE, 1e-3, 10, 110, 60) - 0.5e-3) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_COSINE, 1e-3, 10, 110, 35) - 1e-3 * 0.5 * (1 + cos(3.14159265358979323846 * 0.25))) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_COSINE, 1e-3, 10, 110, 110)) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_CONSTANT, 1e-3, 10, 110, 3) - 0.3e-3) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_CONSTANT, 1e-3, 10, 110, 100) - 1e-3) < 1e-15);
    assert_true(fabs(ft_lr_at(FT_SCHED_LINEAR, 1e-3, 0, 4, 0) - 1e-3) < 1e-15); /* no warmup: full rate at once */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(malformed_line_fails_with_its_line_number),
        cmocka_unit_test(malformed_lines_are_skipped_and_listed),
        cmocka_unit_test(prompt_response_loss_covers_the_response_and_eos_only),
        cmocka_unit_test(chat_template_masks_all_but_assistant_turns),
        cmocka_unit_test(records_are_packed_whole_into_windows),
        cmocka_unit_test(long_records_are_truncated_or_refused),
        cmocka_unit_test(text_windows_predict_every_token_after_the_first_once),
        cmocka_unit_test(empty_datasets_are_errors),
        cmocka_unit_test(window_order_depends_only_on_seed_and_index),
        cmocka_unit_test(lr_schedules_match_transformers_at_given_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
