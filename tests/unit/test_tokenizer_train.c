/* Unit tests for byte-level BPE training (host/runtime/tokenizer_train.c): merges and their order
 * derived by hand on tiny corpora (tokenizers' BpeTrainer gives the same on them), the id layout,
 * the stopping rules, determinism, and that the tokenizer.json written loads and round-trips. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer.h"
#include "runtime/tokenizer_train.h"

static const char *const eot[] = {"<|endoftext|>"};

static tok_train_options opts(int vocab_size, int min_frequency) {
    return (tok_train_options){.vocab_size = vocab_size, .min_frequency = min_frequency, .specials = eot,
                               .n_specials = 1};
}

static char *train_json(const char *text, const tok_train_options *o, size_t *len) {
    char *json = NULL;
    llmopt_error err = {0};
    assert_int_equal(tok_train_bpe(text, strlen(text), o, &json, len, &err), 0);
    assert_non_null(json);
    return json;
}

static tok_tokenizer *train(const char *text, const tok_train_options *o) {
    size_t len, clen;
    char *json = train_json(text, o, &len), *config = NULL;
    llmopt_error err = {0};
    assert_int_equal(tok_train_config_json(o, 1024, &config, &clen, &err), 0);
    tok_tokenizer *t = NULL;
    if (tok_load_mem("trained", json, len, config, clen, NULL, 0, &t, &err) != 0) fail_msg("load: %s", err.msg);
    free(json);
    free(config);
    return t;
}

/* The merges of the trained tokenizer.json as "LEFT RIGHT" strings, joined by '\n'. */
static char *merges_of(const char *text, const tok_train_options *o) {
    size_t len;
    char *json = train_json(text, o, &len);
    json_t *root = json_loads(json, 0, NULL);
    assert_non_null(root);
    json_t *merges = json_object_get(json_object_get(root, "model"), "merges"), *m;
    size_t i, cap = 1;
    json_array_foreach(merges, i, m) cap += json_string_length(m) + 1;
    char *out = calloc(cap, 1);
    json_array_foreach(merges, i, m) {
        if (i) strcat(out, "\n");
        strcat(out, json_string_value(m));
    }
    json_decref(root);
    free(json);
    return out;
}

/* "aaab aaab aab" pre-tokenizes to aaab, Ġaaab, Ġaab (Ġ is the space's byte symbol). Pair
 * counts: a a 5, a b 3, Ġ a 2. After "a a" (words aa a b, Ġ aa a b, Ġ aa b): aa a 2, a b 2,
 * Ġ aa 2, aa b 1; the tie goes to the smallest id pair, and a (65), b (66) < Ġ (1 + 188 + 32) <
 * aa (257), so "a b" then "Ġ aa"; then count-1 pairs by the same rule. A tie-break on token
 * strings would take "aa ab" before "Ġ aa". */
static void test_merges_take_the_most_frequent_pair_and_the_smallest_ids_on_a_tie(void **state) {
    (void)state;
    tok_train_options o = opts(1000, 0);
    char *m = merges_of("aaab aaab aab", &o);
    assert_string_equal(m, "a a\na b\nĠ aa\naa ab\nĠaa b\nĠaa ab");
    free(m);
}

static void test_min_frequency_stops_at_the_first_rarer_pair(void **state) {
    (void)state;
    tok_train_options o = opts(1000, 2);
    char *m = merges_of("aaab aaab aab", &o);
    assert_string_equal(m, "a a\na b\nĠ aa");
    free(m);
}

/* "aaaa": a a counts 3; merging it left to right gives aa aa, and the pair aa aa (count 1) is
 * next: runs are merged without overlap. */
static void test_runs_of_one_symbol_merge_without_overlap(void **state) {
    (void)state;
    tok_train_options o = opts(1000, 0);
    char *m = merges_of("aaaa", &o);
    assert_string_equal(m, "a a\naa aa");
    free(m);
}

static void test_vocab_size_counts_specials_bytes_and_merges(void **state) {
    (void)state;
    tok_train_options o = opts(1 + 256 + 2, 0);
    char *m = merges_of("aaab aaab aab", &o);
    assert_string_equal(m, "a a\na b");
    free(m);
    tok_tokenizer *t = train("aaab aaab aab", &o);
    assert_int_equal(tok_vocab_size(t), 1 + 256 + 2);
    tok_free(t);
    o.vocab_size = 10; /* below the alphabet: no merges, all bytes kept */
    t = train("aaab aaab aab", &o);
    assert_int_equal(tok_vocab_size(t), 1 + 256);
    tok_free(t);
}

/* Specials first, then the byte symbols by code point ('!' .. '~', 0xA1 .. 0xFF less 0xAD, then
 * the 68 bytes mapped to U+0100..U+0143, 'Ā' for byte 0 first), then the merges. */
static void test_ids_are_specials_then_bytes_by_code_point_then_merges(void **state) {
    (void)state;
    tok_train_options o = opts(1000, 0);
    tok_tokenizer *t = train("aaab aaab aab", &o);
    assert_int_equal(tok_token_id(t, "<|endoftext|>"), 0);
    assert_true(tok_is_special(t, 0));
    assert_int_equal(tok_token_id(t, "!"), 1);
    assert_int_equal(tok_token_id(t, "a"), 1 + 'a' - '!');
    assert_int_equal(tok_token_id(t, "\xC3\xBF"), 188); /* ÿ, the last of the 188 printable */
    assert_int_equal(tok_token_id(t, "\xC4\x80"), 189); /* Ā: byte 0 */
    assert_int_equal(tok_token_id(t, "aa"), 257);
    assert_int_equal(tok_token_id(t, "ab"), 258);
    assert_int_equal(tok_bos(t), 0);
    assert_int_equal(tok_eos(t), 0);
    tok_free(t);
}

static const char *const corpus =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep.\nAnd God said, Let there be light: and there was light.\n"
    "Caf\xC3\xA9 \xE2\x80\x94 \xE5\xA4\xAA\xE5\x88\x9D \xF0\x9F\x98\x80 it's 1,000 times\t\ttabs  \n\n";

static void test_training_is_deterministic(void **state) {
    (void)state;
    tok_train_options o = opts(400, 1);
    size_t n1, n2;
    char *a = train_json(corpus, &o, &n1), *b = train_json(corpus, &o, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

static void test_trained_tokenizer_round_trips_and_compresses(void **state) {
    (void)state;
    tok_train_options o = opts(400, 1);
    tok_tokenizer *t = train(corpus, &o);
    int32_t *ids = NULL;
    size_t n = 0, len = 0;
    char *back = NULL;
    llmopt_error err = {0};
    assert_int_equal(tok_encode(t, corpus, strlen(corpus), 1, &ids, &n, &err), 0);
    assert_true(n < strlen(corpus) / 2);
    assert_int_equal(tok_decode(t, ids, n, 0, &back, &len, &err), 0);
    assert_int_equal(len, strlen(corpus));
    assert_memory_equal(back, corpus, len);
    free(ids);
    free(back);
    /* bytes never seen in training still encode, one symbol each */
    assert_int_equal(tok_encode(t, "\x01\xFF", 2, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 2);
    free(ids);
    tok_free(t);
}

/* The text is split at specials before counting, so "<|endoftext|>" between documents teaches no
 * merge of its pieces, and encoding keeps it one token. */
static void test_specials_are_kept_whole(void **state) {
    (void)state;
    const char *text = "ab<|endoftext|>ab<|endoftext|>ab<|endoftext|>ab<|endoftext|>";
    tok_train_options o = opts(1000, 2);
    char *m = merges_of(text, &o);
    assert_string_equal(m, "a b");
    free(m);
    tok_tokenizer *t = train(text, &o);
    int32_t *ids = NULL;
    size_t n = 0;
    llmopt_error err = {0};
    assert_int_equal(tok_encode(t, text, strlen(text), 1, &ids, &n, &err), 0);
    int32_t ab = tok_token_id(t, "ab");
    assert_int_equal(n, 8);
    for (size_t i = 0; i < n; i++) assert_int_equal(ids[i], i % 2 ? 0 : ab);
    free(ids);
    tok_free(t);
}

static void test_empty_text_gives_the_alphabet_only(void **state) {
    (void)state;
    tok_train_options o = opts(1000, 0);
    tok_tokenizer *t = train("", &o);
    assert_int_equal(tok_vocab_size(t), 257);
    tok_free(t);
}

static void test_bad_options_are_refused(void **state) {
    (void)state;
    char *json = NULL;
    size_t len;
    llmopt_error err = {0};
    tok_train_options o = opts(0, 0);
    assert_int_equal(tok_train_bpe("a", 1, &o, &json, &len, &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "vocab_size"));
    o = opts(100, -1);
    assert_int_equal(tok_train_bpe("a", 1, &o, &json, &len, &err), LLMOPT_EINVAL);
    const char *const dup[] = {"<s>", "<s>"}, *const empty[] = {""}, *const bad_utf8[] = {"\xFF"};
    o = (tok_train_options){.vocab_size = 300, .specials = dup, .n_specials = 2};
    assert_int_equal(tok_train_bpe("a", 1, &o, &json, &len, &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "twice"));
    o.specials = empty;
    o.n_specials = 1;
    assert_int_equal(tok_train_bpe("a", 1, &o, &json, &len, &err), LLMOPT_EINVAL);
    o.specials = bad_utf8;
    assert_int_equal(tok_train_bpe("a", 1, &o, &json, &len, &err), LLMOPT_EINVAL);
    assert_null(json);
    o = opts(300, 0);
    assert_int_equal(tok_train_config_json(&o, 0, &json, &len, &err), LLMOPT_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merges_take_the_most_frequent_pair_and_the_smallest_ids_on_a_tie),
        cmocka_unit_test(test_min_frequency_stops_at_the_first_rarer_pair),
        cmocka_unit_test(test_runs_of_one_symbol_merge_without_overlap),
        cmocka_unit_test(test_vocab_size_counts_specials_bytes_and_merges),
        cmocka_unit_test(test_ids_are_specials_then_bytes_by_code_point_then_merges),
        cmocka_unit_test(test_training_is_deterministic),
        cmocka_unit_test(test_trained_tokenizer_round_trips_and_compresses),
        cmocka_unit_test(test_specials_are_kept_whole),
        cmocka_unit_test(test_empty_text_gives_the_alphabet_only),
        cmocka_unit_test(test_bad_options_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
