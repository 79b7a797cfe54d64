/* Unit tests for the tokenizer.json loader and BPE encoder/decoder (host/runtime/tokenizer*.c):
 * hand-made byte-level (GPT-2 style) and Llama style (byte fallback) fixtures with expected ids
 * derived by hand, round trips, and one test per malformed file naming the file and field. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include "testutil.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer.h"
#include "runtime/tokenizer_internal.h"
#include "runtime/unicode.h"
#include "util/fs.h"

/* ---- helpers ---- */

static char *make_tmpdir(void) { return make_test_dir("tokenizer"); }

static void write_text(const char *dir, const char *name, const char *text) {
    char *path = fs_join(dir, name);
    assert_int_equal(fs_write_atomic(path, text, strlen(text), NULL), 0);
    free(path);
}

static void write_json(const char *dir, const char *name, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    write_text(dir, name, s);
    free(s);
}

/* GPT-2's byte -> code point map, restated here as the specification the loader must follow. */
static void byte_symbol(int b, char out[3]) {
    int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    int cp = keep ? b : 256;
    if (!keep)
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) cp++;
    size_t n = uni_encode((uint32_t)cp, out);
    out[n] = '\0';
}

/* Byte-level fixture: ids 0..255 are the byte symbols (id == byte), then the merges below in
 * rank order, each making the next id; 266 is <|endoftext|> (special). */
static const char *const bl_merges[][2] = {
    {"Ġ", "w"}, {"o", "r"}, {"Ġw", "or"}, {"l", "d"}, {"Ġwor", "ld"}, {"H", "e"}, {"l", "l"},
    {"He", "ll"}, {"Hell", "o"}, {"!", "!"}, {"Ġ", "Ġ"}, {"a", "b"}, {"b", "c"},
};
enum { ID_GW = 256, ID_OR, ID_GWOR, ID_LD, ID_GWORLD, ID_HE, ID_LL, ID_HELL, ID_HELLO, ID_BANGS,
       ID_GG, ID_AB, ID_BC, ID_EOT };

static json_t *bl_tokenizer(int add_prefix_space, int string_merges) {
    json_t *vocab = json_object(), *merges = json_array();
    for (int b = 0; b < 256; b++) {
        char s[3];
        byte_symbol(b, s);
        json_object_set_new(vocab, s, json_integer(b));
    }
    for (size_t i = 0; i < sizeof bl_merges / sizeof bl_merges[0]; i++) {
        char joined[32];
        snprintf(joined, sizeof joined, "%s%s", bl_merges[i][0], bl_merges[i][1]);
        json_object_set_new(vocab, joined, json_integer(256 + (json_int_t)i));
        if (string_merges) {
            snprintf(joined, sizeof joined, "%s %s", bl_merges[i][0], bl_merges[i][1]);
            json_array_append_new(merges, json_string(joined));
        } else {
            json_array_append_new(merges, json_pack("[ss]", bl_merges[i][0], bl_merges[i][1]));
        }
    }
    return json_pack(
        "{s:[{s:i,s:s,s:b,s:b,s:b,s:b,s:b}],s:n,s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,s:b},"
        "s:{s:s,s:b,s:b},s:{s:s,s:n,s:o,s:o}}",
        "added_tokens", "id", ID_EOT, "content", "<|endoftext|>", "single_word", 0, "lstrip", 0, "rstrip", 0,
        "normalized", 0, "special", 1,
        "normalizer",
        "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", add_prefix_space, "trim_offsets", 1, "use_regex", 1,
        "post_processor", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 0,
        "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1,
        "model", "type", "BPE", "dropout", "vocab", vocab, "merges", merges);
}

/* Llama fixture: <unk> <s> </s>, <0x00>..<0xFF> at 3..258, then "▁" "a" "b" "▁a" "ab" "▁ab". */
enum { L_UNK, L_BOS, L_EOS, L_BYTE0, L_SP = 259, L_A, L_B, L_SPA, L_AB, L_SPAB };

static json_t *llama_tokenizer(int old_style, int byte_fallback) {
    json_t *vocab = json_object();
    json_object_set_new(vocab, "<unk>", json_integer(L_UNK));
    json_object_set_new(vocab, "<s>", json_integer(L_BOS));
    json_object_set_new(vocab, "</s>", json_integer(L_EOS));
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        json_object_set_new(vocab, s, json_integer(L_BYTE0 + b));
    }
    const char *rest[] = {"▁", "a", "b", "▁a", "ab", "▁ab"};
    for (int i = 0; i < 6; i++) json_object_set_new(vocab, rest[i], json_integer(L_SP + i));
    json_t *added = json_array();
    const char *special[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        json_array_append_new(added, json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", i, "content", special[i],
                                               "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1));
    json_t *model = json_pack("{s:s,s:n,s:s,s:b,s:b,s:b,s:o,s:[s,s,s]}", "type", "BPE", "dropout", "unk_token", "<unk>",
                              "fuse_unk", 1, "byte_fallback", byte_fallback, "ignore_merges", 0, "vocab", vocab,
                              "merges", "▁ a", "a b", "▁a b");
    json_t *post = json_pack("{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}}", "type",
                             "TemplateProcessing", "single", "SpecialToken", "id", "<s>", "type_id", 0, "Sequence",
                             "id", "A", "type_id", 0, "special_tokens", "<s>", "id", "<s>", "ids", L_BOS, "tokens", "<s>");
    json_t *t = json_pack("{s:o,s:o,s:o}", "added_tokens", added, "model", model, "post_processor", post);
    if (old_style) {
        json_object_set_new(t, "normalizer",
                            json_pack("{s:s,s:[{s:s,s:s},{s:s,s:{s:s},s:s}]}", "type", "Sequence", "normalizers", "type",
                                      "Prepend", "prepend", "▁", "type", "Replace", "pattern", "String", " ", "content", "▁"));
        json_object_set_new(t, "pre_tokenizer", json_null());
        json_object_set_new(t, "decoder",
                            json_pack("{s:s,s:[{s:s,s:{s:s},s:s},{s:s},{s:s},{s:s,s:s,s:i,s:i}]}", "type", "Sequence",
                                      "decoders", "type", "Replace", "pattern", "String", "▁", "content", " ", "type",
                                      "ByteFallback", "type", "Fuse", "type", "Strip", "content", " ", "start", 1, "stop", 0));
    } else {
        json_object_set_new(t, "normalizer", json_null());
        json_object_set_new(t, "pre_tokenizer", json_pack("{s:s,s:s,s:s,s:b}", "type", "Metaspace", "replacement", "▁",
                                                          "prepend_scheme", "first", "split", 0));
        json_object_set_new(t, "decoder", json_pack("{s:s,s:[{s:s},{s:s,s:s,s:s,s:b}]}", "type", "Sequence", "decoders",
                                                    "type", "ByteFallback", "type", "Metaspace", "replacement", "▁",
                                                    "prepend_scheme", "first", "split", 0));
    }
    return t;
}

/* Writes j as DIR/tokenizer.json (taking j), loads it; returns the tokenizer, dir in *dir. */
static tok_tokenizer *load_json(json_t *j, char **dir) {
    *dir = make_tmpdir();
    write_json(*dir, "tokenizer.json", j);
    json_decref(j);
    tok_tokenizer *t = NULL;
    llmopt_error err = {0};
    int rc = tok_load(*dir, &t, &err);
    if (rc != 0) fail_msg("tok_load: %s", err.msg);
    return t;
}

static void expect_ids(const tok_tokenizer *t, const char *text, size_t len, int add_special, const int32_t *want,
                       size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    llmopt_error err = {0};
    assert_int_equal(tok_encode(t, text, len, add_special, &ids, &n, &err), 0);
    if (n != n_want) {
        for (size_t i = 0; i < n; i++) print_message("%d ", (int)ids[i]);
        print_message("\n");
    }
    assert_int_equal(n, n_want);
    for (size_t i = 0; i < n; i++) assert_int_equal(ids[i], want[i]);
    free(ids);
}

/* decode(encode(s)) == s, byte for byte. */
static void expect_roundtrip(const tok_tokenizer *t, const char *s, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL;
    size_t tlen = 0;
    assert_int_equal(tok_encode(t, s, len, 1, &ids, &n, NULL), 0);
    assert_int_equal(tok_decode(t, ids, n, 0, &text, &tlen, NULL), 0);
    assert_int_equal(tlen, len);
    assert_memory_equal(text, s, len);
    /* and encode(decode(ids)) == ids */
    int32_t *again = NULL;
    size_t n2 = 0;
    assert_int_equal(tok_encode(t, text, tlen, 1, &again, &n2, NULL), 0);
    assert_int_equal(n2, n);
    if (n) assert_memory_equal(again, ids, n * sizeof *ids);
    free(again);
    free(text);
    free(ids);
}

static void expect_decoded(const tok_tokenizer *t, const int32_t *ids, size_t n, int skip, const char *want) {
    char *text = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    assert_int_equal(tok_decode(t, ids, n, skip, &text, &len, &err), 0);
    assert_string_equal(text, want);
    assert_int_equal(len, strlen(want));
    free(text);
}

/* ---- byte-level BPE ---- */

static void test_bytelevel_merges_apply_in_rank_order(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    /* "a b" (rank 11) outranks "b c" (rank 12): abc -> ab c, not a bc */
    expect_ids(t, "abc", 3, 1, (int32_t[]){ID_AB, 'c'}, 2);
    /* Hello needs H e, l l, He ll, Hell o in that order */
    expect_ids(t, "Hello", 5, 1, (int32_t[]){ID_HELLO}, 1);
    tok_free(t);
    remove_dir(dir);
}

static void test_bytelevel_string_and_pair_merges_agree(void **state) {
    (void)state;
    char *d1, *d2;
    tok_tokenizer *a = load_json(bl_tokenizer(0, 0), &d1), *b = load_json(bl_tokenizer(0, 1), &d2);
    const char *s = "Hello world abc!!";
    int32_t *ia, *ib;
    size_t na, nb;
    assert_int_equal(tok_encode(a, s, strlen(s), 1, &ia, &na, NULL), 0);
    assert_int_equal(tok_encode(b, s, strlen(s), 1, &ib, &nb, NULL), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(ia, ib, na * sizeof *ia);
    free(ia);
    free(ib);
    tok_free(a);
    tok_free(b);
    remove_dir(d1);
    remove_dir(d2);
}

static void test_gpt2_regex_splits_words_before_merging(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    /* words: "Hello" " world" "'s" " " " 123" "!!" "  \n"; the lone " " before " 123" stays
     * alone (no ĠĠ merge across words), while "  \n" keeps its two spaces together */
    const char *s = "Hello world's  123!!  \n";
    const int32_t want[] = {ID_HELLO, ID_GWORLD, '\'', 's', ' ', ' ', '1', '2', '3', ID_BANGS, ID_GG, '\n'};
    expect_ids(t, s, strlen(s), 1, want, sizeof want / sizeof want[0]);
    tok_free(t);
    remove_dir(dir);
}

/* Llama 3's Split regex written out by hand: the pieces tokenizers' regex engine cuts this
 * string into (Split(Regex(...), "isolated").pre_tokenize_str), and Qwen2's single digits. */
static void test_llama3_split_cuts_where_the_regex_does(void **state) {
    (void)state;
    const char *text = "Hello world's 12345\n\n  x\t\t!?\r\n ,";
    const char *want[] = {"Hello", " world", "'s", " ", "123", "45", "\n\n", " ", " x", "\t", "\t", "!?\r\n", " ,"};
    size_t n = strlen(text), i = 0, k = 0;
    for (; i < n; k++) {
        size_t e = tok_llama3_next((const unsigned char *)text, n, i, 3);
        assert_true(k < sizeof want / sizeof want[0]);
        if (e - i != strlen(want[k]) || memcmp(text + i, want[k], e - i) != 0)
            fail_msg("piece %zu: '%.*s', want '%s'", k, (int)(e - i), text + i, want[k]);
        i = e;
    }
    assert_int_equal(k, sizeof want / sizeof want[0]);
    const unsigned char *digits = (const unsigned char *)"12345";
    assert_int_equal(tok_llama3_next(digits, 5, 0, 1), 1);
    assert_int_equal(tok_llama3_next(digits, 5, 1, 3), 4);
}

static void test_bytelevel_add_prefix_space(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(1, 0), &dir);
    expect_ids(t, "world", 5, 1, (int32_t[]){ID_GWORLD}, 1);
    expect_decoded(t, (int32_t[]){ID_GWORLD}, 1, 0, " world");
    tok_free(t);
    remove_dir(dir);
}

static void test_bytelevel_roundtrips_emoji_cjk_combining(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    const char *samples[] = {"emoji 😀🎉👍🏽 👨‍👩‍👧", "日本語のテキスト、中文", "e\xcc\x81 a\xcc\x88 combining",
                             "tabs\t\tand\r\nnewlines\n\n", "\xc2\xa0nbsp\xe3\x80\x80ideographic space"};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) expect_roundtrip(t, samples[i], strlen(samples[i]));
    tok_free(t);
    remove_dir(dir);
}

static void test_bytelevel_invalid_utf8_roundtrips_exactly(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    const char s[] = "ab\xff\xfe \x80x\xc3 \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82";
    expect_roundtrip(t, s, sizeof s - 1);
    /* a bad byte is split like U+FFFD (not a letter): "ab" and "\xff\xfe" are separate words */
    expect_ids(t, "ab\xff", 3, 1, (int32_t[]){ID_AB, 0xff}, 2);
    tok_free(t);
    remove_dir(dir);
}

static void test_bytelevel_random_bytes_roundtrip(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    unsigned seed = 12345;
    char buf[64];
    for (int iter = 0; iter < 500; iter++) {
        size_t n = (size_t)(iter % 64);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = (seed >> 16) & 0xFF;
            /* half the strings biased to ASCII letters and spaces, half any bytes */
            buf[i] = iter % 2 ? (char)r : "ab c!Hello \n"[r % 12];
        }
        expect_roundtrip(t, buf, n);
    }
    tok_free(t);
    remove_dir(dir);
}

static void test_added_special_token_is_never_split(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    const char *s = "ab<|endoftext|>Hello<|endoftext";
    const int32_t want[] = {ID_AB, ID_EOT, ID_HELLO, '<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't'};
    expect_ids(t, s, strlen(s), 1, want, sizeof want / sizeof want[0]);
    expect_decoded(t, (int32_t[]){ID_AB, ID_EOT, ID_HELLO}, 3, 0, "ab<|endoftext|>Hello");
    expect_decoded(t, (int32_t[]){ID_AB, ID_EOT, ID_HELLO}, 3, 1, "abHello");
    assert_int_equal(tok_token_id(t, "<|endoftext|>"), ID_EOT);
    assert_true(tok_is_special(t, ID_EOT));
    assert_string_equal(tok_token(t, ID_GWORLD), "Ġworld");
    assert_int_equal(tok_vocab_size(t), ID_EOT + 1);
    tok_free(t);
    remove_dir(dir);
}

static void test_decode_rejects_unknown_id(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    char *text = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    assert_int_equal(tok_decode(t, (int32_t[]){1, 99999}, 2, 0, &text, &len, &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "99999"));
    assert_null(text);
    tok_free(t);
    remove_dir(dir);
}

/* ---- Llama style ---- */

static void test_llama_metaspace_and_bos_template(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(llama_tokenizer(0, 1), &dir);
    expect_ids(t, "ab ab", 5, 1, (int32_t[]){L_BOS, L_SPAB, L_SPAB}, 3);
    expect_ids(t, "ab ab", 5, 0, (int32_t[]){L_SPAB, L_SPAB}, 2);
    expect_decoded(t, (int32_t[]){L_BOS, L_SPAB, L_SPAB}, 3, 1, "ab ab");
    tok_free(t);
    remove_dir(dir);
}

static void test_llama_unknown_chars_fall_back_to_bytes(void **state) {
    (void)state;
    for (int old = 0; old <= 1; old++) {
        char *dir;
        tok_tokenizer *t = load_json(llama_tokenizer(old, 1), &dir);
        /* é = C3 A9, 😀 = F0 9F 98 80: not in the vocabulary, so byte tokens */
        const int32_t want[] = {L_BOS, L_SPA, L_SP, L_BYTE0 + 0xC3, L_BYTE0 + 0xA9, L_BYTE0 + 0xF0,
                                L_BYTE0 + 0x9F, L_BYTE0 + 0x98, L_BYTE0 + 0x80, L_B};
        expect_ids(t, "a é😀b", strlen("a é😀b"), 1, want, sizeof want / sizeof want[0]);
        expect_decoded(t, want, sizeof want / sizeof want[0], 1, "a é😀b");
        /* a byte sequence that is not UTF-8 decodes to one U+FFFD per byte, as tokenizers does */
        expect_decoded(t, (int32_t[]){L_A, L_BYTE0 + 0xC3, L_B}, 3, 1, "a\xef\xbf\xbd" "b");
        tok_free(t);
        remove_dir(dir);
    }
}

static void test_llama_without_byte_fallback_fuses_unknowns(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(llama_tokenizer(0, 0), &dir);
    expect_ids(t, "aéé", strlen("aéé"), 0, (int32_t[]){L_SPA, L_UNK}, 2);
    tok_free(t);
    remove_dir(dir);
}

static void test_llama_invalid_utf8_is_replacement_char(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(llama_tokenizer(0, 1), &dir);
    /* the bad byte \xff counts as U+FFFD = EF BF BD, which falls back to bytes */
    expect_ids(t, "a\xff", 2, 0, (int32_t[]){L_SPA, L_BYTE0 + 0xEF, L_BYTE0 + 0xBF, L_BYTE0 + 0xBD}, 4);
    tok_free(t);
    remove_dir(dir);
}

static void test_llama_special_token_inside_text(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(llama_tokenizer(0, 1), &dir);
    /* prepend_scheme "first": only the piece at the very start gets "▁" */
    expect_ids(t, "ab</s>ab", 8, 0, (int32_t[]){L_SPAB, L_EOS, L_AB}, 3);
    tok_free(t);
    remove_dir(dir);
}

static void test_config_files_give_bos_eos_and_template(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    json_t *j = llama_tokenizer(0, 1);
    write_json(dir, "tokenizer.json", j);
    json_decref(j);
    write_text(dir, "tokenizer_config.json",
               "{\"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"</s>\", \"add_bos_token\": true,"
               " \"chat_template\": \"{{ messages }}\"}");
    write_text(dir, "generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": [2, 0]}");
    tok_tokenizer *t = NULL;
    char *file = fs_join(dir, "tokenizer.json");
    assert_int_equal(tok_load(file, &t, NULL), 0); /* the file itself: configs come from its directory */
    free(file);
    assert_int_equal(tok_bos(t), L_BOS);
    assert_int_equal(tok_eos(t), L_EOS);
    assert_true(tok_add_bos(t));
    assert_false(tok_add_eos(t));
    assert_string_equal(tok_chat_template(t), "{{ messages }}");
    size_t n;
    const int32_t *eos = tok_eos_ids(t, &n);
    assert_int_equal(n, 2);
    assert_int_equal(eos[0], L_EOS);
    assert_int_equal(eos[1], L_UNK);
    tok_free(t);
    remove_dir(dir);
}

static void test_no_config_means_no_bos_eos(void **state) {
    (void)state;
    char *dir;
    tok_tokenizer *t = load_json(bl_tokenizer(0, 0), &dir);
    assert_int_equal(tok_bos(t), -1);
    assert_int_equal(tok_eos(t), -1);
    assert_null(tok_chat_template(t));
    tok_free(t);
    remove_dir(dir);
}

/* ---- malformed files ---- */

/* Loads text as tokenizer.json; expects status and a message naming the file and each of the
 * needles. */
static void expect_load_error(const char *text, int status, const char *needle1, const char *needle2) {
    char *dir = make_tmpdir();
    write_text(dir, "tokenizer.json", text);
    tok_tokenizer *t = (tok_tokenizer *)1;
    llmopt_error err = {0};
    assert_int_equal(tok_load(dir, &t, &err), status);
    assert_null(t);
    assert_non_null(strstr(err.msg, "tokenizer.json"));
    if (!strstr(err.msg, needle1) || (needle2 && !strstr(err.msg, needle2))) fail_msg("message: %s", err.msg);
    assert_null(strchr(err.msg, '\n'));
    remove_dir(dir);
}

static void expect_load_error_json(json_t *j, int status, const char *needle1, const char *needle2) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    expect_load_error(s, status, needle1, needle2);
    free(s);
}

static void test_error_not_json_gives_line_and_column(void **state) {
    (void)state;
    expect_load_error("{\n  \"model\": {,\n}", LLMOPT_EFORMAT, "tokenizer.json:2:", "not valid JSON");
}

static void test_error_missing_model(void **state) {
    (void)state;
    expect_load_error("{\"version\": \"1.0\"}", LLMOPT_EFORMAT, "model: missing", NULL);
}

static void test_error_model_type_not_bpe(void **state) {
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", LLMOPT_EUNSUPPORTED, "model.type", "Unigram");
}

static void test_error_vocab_not_object(void **state) {
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": [1, 2], \"merges\": []}}", LLMOPT_EFORMAT, "model.vocab",
                      "expected an object");
}

static void test_error_merge_names_unknown_token(void **state) {
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\", \"a z\"]}}",
                      LLMOPT_EFORMAT, "model.merges[1]", "'z' is not in model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", \"b\"]]}}",
                      LLMOPT_EFORMAT, "model.merges[0]", "merged token 'ab'");
}

static void test_error_id_out_of_range(void **state) {
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}", LLMOPT_EFORMAT,
                      "model.vocab[\"a\"]", "out of range");
    expect_load_error("{\"added_tokens\": [{\"id\": 99999999999, \"content\": \"<x>\"}],"
                      " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                      LLMOPT_EFORMAT, "added_tokens[0].id", "out of range");
}

static void test_error_duplicated_id(void **state) {
    (void)state;
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}", LLMOPT_EFORMAT,
                      "model.vocab[\"b\"]", "id 0 is given to both");
}

static void test_error_unknown_pipeline_types(void **state) {
    (void)state;
    json_t *j = bl_tokenizer(0, 0);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:[{s:s}]}", "type", "Sequence", "pretokenizers", "type", "Whitespace"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "pre_tokenizer.pretokenizers[0].type", "'Whitespace'");
    /* Split runs Llama 3's and Qwen2's regexes only, isolated */
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:{s:s},s:s}", "type", "Split", "pattern", "Regex", "\\d+",
                                                      "behavior", "Isolated"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "pre_tokenizer.pattern", "Split regex '\\d+' is not supported");
    /* tekken's regex one character off (no '/' in the tail) is another regex: refused */
    char near[sizeof TOK_TEKKEN_REGEX];
    memcpy(near, TOK_TEKKEN_REGEX, sizeof near);
    char *slash = strstr(near, "\\n/]*");
    assert_non_null(slash);
    memmove(slash + 2, slash + 3, strlen(slash + 3) + 1);
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:{s:s},s:s}", "type", "Split", "pattern", "Regex", near,
                                                      "behavior", "Isolated"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "pre_tokenizer.pattern", "is not supported");
    /* Digits' flag must be a boolean, named in the error */
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:s}", "type", "Digits", "individual_digits", "yes"));
    expect_load_error_json(j, LLMOPT_EFORMAT, "pre_tokenizer.individual_digits", "expected true or false");
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:{s:s},s:s}", "type", "Split", "pattern", "String", " ",
                                                      "behavior", "Isolated"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "pre_tokenizer.pattern", "must be a {\"Regex\"");
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:{s:s},s:s}", "type", "Split", "pattern", "Regex", TOK_LLAMA3_REGEX,
                                                      "behavior", "Removed"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "pre_tokenizer", "behavior \"Isolated\"");
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "NFKC"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "normalizer.type", "'NFKC'");
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "decoder", json_pack("{s:s}", "type", "WordPiece"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "decoder.type", "'WordPiece'");
    j = bl_tokenizer(0, 0);
    json_object_set_new(j, "post_processor", json_pack("{s:s}", "type", "Mystery"));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "post_processor.type", "'Mystery'");
}

/* NFC and NFD against values from the Unicode standard's data (checked with Python's
 * unicodedata when written): composition, singletons, exclusions, Hangul, reordering, blocking,
 * and ill-formed bytes passing through. */
static void expect_norm(const char *in, int compose, const char *want) {
    char *out = NULL;
    size_t n = 0;
    assert_int_equal(uni_normalize(in, strlen(in), compose, &out, &n), 0);
    assert_int_equal(n, strlen(want));
    assert_string_equal(out, want);
    free(out);
}

static void test_unicode_normalization(void **state) {
    (void)state;
    static const char *const cases[][3] = { /* input, NFC, NFD */
        {"plain ascii", "plain ascii", "plain ascii"},
        {"e\xCC\x81", "\xC3\xA9", "e\xCC\x81"},                      /* e + acute <-> U+00E9 */
        {"caf\xC3\xA9", "caf\xC3\xA9", "cafe\xCC\x81"},
        {"\xE2\x84\xAB", "\xC3\x85", "A\xCC\x8A"},                    /* ANGSTROM SIGN, a singleton */
        {"\xE2\x84\xA6", "\xCE\xA9", "\xCE\xA9"},                     /* OHM SIGN -> OMEGA */
        {"\xED\x95\x9C", "\xED\x95\x9C", "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"}, /* Hangul LVT */
        {"\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81", "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"},
        {"a\xCC\x82\xCC\xA3", "\xE1\xBA\xAD", "a\xCC\xA3\xCC\x82"},   /* reordered 230/220, then composed */
        {"a\xCC\x81\xCC\x81", "\xC3\xA1\xCC\x81", "a\xCC\x81\xCC\x81"}, /* the second acute stays */
        {"\xCC\x81" "e", "\xCC\x81" "e", "\xCC\x81" "e"},             /* a leading non-starter */
        {"\xE0\xA5\x98", "\xE0\xA4\x95\xE0\xA4\xBC", "\xE0\xA4\x95\xE0\xA4\xBC"}, /* an exclusion */
        {"e\xFF\xCC\x81", "e\xFF\xCC\x81", "e\xFF\xCC\x81"},         /* a raw byte blocks composing */
        {"\xC3\xA9\xC3", "\xC3\xA9\xC3", "e\xCC\x81\xC3"},            /* a truncated sequence */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_norm(cases[i][0], 1, cases[i][1]);
        expect_norm(cases[i][0], 0, cases[i][2]);
    }
    assert_int_equal(uni_ccc(0x301), 230);
    assert_int_equal(uni_ccc(0x323), 220);
    assert_int_equal(uni_ccc('a'), 0);
}

/* Digits (SmolLM's and StarCoder's pre-tokenizer, before ByteLevel): with individual_digits a
 * merge of two digits never applies; without it a run of digits stays one word. */
static json_t *digits_tokenizer(int digits, int individual) {
    json_t *j = bl_tokenizer(0, 0), *model = json_object_get(j, "model");
    json_object_set_new(json_object_get(model, "vocab"), "12", json_integer(ID_EOT + 1));
    json_array_append_new(json_object_get(model, "merges"), json_pack("[ss]", "1", "2"));
    json_t *bl = json_deep_copy(json_object_get(j, "pre_tokenizer"));
    if (digits)
        json_object_set_new(j, "pre_tokenizer", json_pack("{s:s,s:[{s:s,s:b},o]}", "type", "Sequence", "pretokenizers",
                                                          "type", "Digits", "individual_digits", individual, bl));
    else
        json_decref(bl);
    return j;
}

static void test_digits_pre_tokenizer(void **state) {
    (void)state;
    char *d1, *d2, *d3;
    tok_tokenizer *plain = load_json(digits_tokenizer(0, 0), &d1), *ind = load_json(digits_tokenizer(1, 1), &d2),
                  *runs = load_json(digits_tokenizer(1, 0), &d3);
    expect_ids(plain, "x12", 3, 1, (int32_t[]){'x', ID_EOT + 1}, 2);
    expect_ids(ind, "x12", 3, 1, (int32_t[]){'x', '1', '2'}, 3);
    expect_ids(runs, "x12", 3, 1, (int32_t[]){'x', ID_EOT + 1}, 2);
    /* a digit splits a word ("ab" merges, "a" "b" across the 1 do not) and a run of them ends */
    expect_ids(ind, "ab1ab", 5, 1, (int32_t[]){ID_AB, '1', ID_AB}, 3);
    expect_ids(runs, "a12b", 4, 1, (int32_t[]){'a', ID_EOT + 1, 'b'}, 3);
    /* a non-ASCII number (U+0663 ARABIC-INDIC DIGIT THREE) is one too, an ill-formed byte is not */
    expect_ids(ind, "a\xD9\xA3" "b\xFF" "1", 6, 1, (int32_t[]){'a', 0xD9, 0xA3, 'b', 0xFF, '1'}, 6);
    const char *mixed = "In 1611 the 2nd; \xD9\xA3\xD9\xA4 x9y";
    expect_roundtrip(ind, mixed, strlen(mixed));
    tok_free(plain);
    tok_free(ind);
    tok_free(runs);
    remove_dir(d1);
    remove_dir(d2);
    remove_dir(d3);
}

/* The case-aware Split patterns (Mistral's tekken, GPT-4o's o200k), cut by hand from their
 * regexes: "|" marks each match's end. The interop tests hold them to tokenizers' own regex. */
static void expect_cuts(int contractions, int digits, const char *text, const char *want) {
    char got[256];
    size_t k = 0, n = strlen(text);
    for (size_t i = 0; i < n;) {
        size_t e = tok_cased_next((const unsigned char *)text, n, i, contractions, digits);
        assert_true(e > i && e <= n);
        if (k) got[k++] = '|';
        memcpy(got + k, text + i, e - i);
        k += e - i;
        i = e;
    }
    got[k] = '\0';
    assert_string_equal(got, want);
}

static void test_case_aware_split_patterns(void **state) {
    (void)state;
    /* tekken: contractions 0, one digit at a time */
    expect_cuts(0, 1, "CamelCaseWORDS aBC ABCdef", "Camel|Case|WORDS| a|BC| ABCdef");
    expect_cuts(0, 1, "path/to/file\n/x a//\r\n//b", "path|/to|/file|\n|/x| a|//\r\n//|b");
    expect_cuts(0, 1, "they'LL 1611", "they|'LL| |1|6|1|1");
    /* o200k: contractions after words (any case), numbers in threes */
    expect_cuts(1, 3, "they'LL THEY'RE 12345", "they'LL| THEY'RE| |123|45");
    /* a mark belongs to both word classes: it ends an upper run (as U+02B0, Lm, does); after a
     * space and punctuation it is "the rest", as the punctuation */
    expect_cuts(0, 1, "E\xCC\x81" "COLE A\xCA\xB0" "B !\xCC\x81x", "E\xCC\x81|COLE| A\xCA\xB0|B| !\xCC\x81|x");
    expect_cuts(0, 1, "!\xCC\x81x", "!\xCC\x81x"); /* at the punctuation itself: prefix, then the word */
    /* whitespace as Llama 3's: the run less its last space before a word, newlines kept */
    expect_cuts(0, 1, "a   b\n\n c", "a|  | b|\n\n| c");
}

/* A tokenizer whose normalizer is NFC encodes a decomposed text as its composed form. */
static void test_nfc_normalizer(void **state) {
    (void)state;
    char *dir;
    json_t *j = bl_tokenizer(0, 0);
    json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "NFC"));
    tok_tokenizer *t = load_json(j, &dir);
    const int32_t want[] = {'c', 'a', 'f', 0xC3, 0xA9}; /* the two bytes of U+00E9 */
    expect_ids(t, "cafe\xCC\x81", 6, 1, want, 5);
    expect_ids(t, "caf\xC3\xA9", 5, 1, want, 5);
    tok_free(t);
    remove_dir(dir);
}

static void test_error_dropout_refused(void **state) {
    (void)state;
    json_t *j = bl_tokenizer(0, 0);
    json_object_set_new(json_object_get(j, "model"), "dropout", json_real(0.1));
    expect_load_error_json(j, LLMOPT_EUNSUPPORTED, "model.dropout", "must be null");
}

static void test_error_missing_file(void **state) {
    (void)state;
    char *dir = make_tmpdir();
    tok_tokenizer *t = NULL;
    llmopt_error err = {0};
    assert_int_equal(tok_load(dir, &t, &err), LLMOPT_ENOTFOUND);
    assert_non_null(strstr(err.msg, "tokenizer.json"));
    remove_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytelevel_merges_apply_in_rank_order),
        cmocka_unit_test(test_bytelevel_string_and_pair_merges_agree),
        cmocka_unit_test(test_gpt2_regex_splits_words_before_merging),
        cmocka_unit_test(test_llama3_split_cuts_where_the_regex_does),
        cmocka_unit_test(test_bytelevel_add_prefix_space),
        cmocka_unit_test(test_bytelevel_roundtrips_emoji_cjk_combining),
        cmocka_unit_test(test_bytelevel_invalid_utf8_roundtrips_exactly),
        cmocka_unit_test(test_bytelevel_random_bytes_roundtrip),
        cmocka_unit_test(test_added_special_token_is_never_split),
        cmocka_unit_test(test_decode_rejects_unknown_id),
        cmocka_unit_test(test_llama_metaspace_and_bos_template),
        cmocka_unit_test(test_llama_unknown_chars_fall_back_to_bytes),
        cmocka_unit_test(test_llama_without_byte_fallback_fuses_unknowns),
        cmocka_unit_test(test_llama_invalid_utf8_is_replacement_char),
        cmocka_unit_test(test_llama_special_token_inside_text),
        cmocka_unit_test(test_config_files_give_bos_eos_and_template),
        cmocka_unit_test(test_no_config_means_no_bos_eos),
        cmocka_unit_test(test_error_not_json_gives_line_and_column),
        cmocka_unit_test(test_error_missing_model),
        cmocka_unit_test(test_error_model_type_not_bpe),
        cmocka_unit_test(test_error_vocab_not_object),
        cmocka_unit_test(test_error_merge_names_unknown_token),
        cmocka_unit_test(test_error_id_out_of_range),
        cmocka_unit_test(test_error_duplicated_id),
        cmocka_unit_test(test_error_unknown_pipeline_types),
        cmocka_unit_test(test_error_dropout_refused),
        cmocka_unit_test(test_unicode_normalization),
        cmocka_unit_test(test_nfc_normalizer),
        cmocka_unit_test(test_digits_pre_tokenizer),
        cmocka_unit_test(test_case_aware_split_patterns),
        cmocka_unit_test(test_error_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
