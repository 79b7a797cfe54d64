/* libFuzzer target: bytes as tokenizer.json (optionally followed by NUL + tokenizer_config.json
 * and NUL + generation_config.json) through tok_load_mem; a tokenizer that loads encodes and
 * decodes a few fixed strings, the input itself, and every id of a small range. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer.h"

static const char *const texts[] = {
    "Hello, world!", " the  quick\tbrown fox\n\n", "<s>[INST] hi [/INST]</s><|endoftext|>",
    "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82", "bad \xff\xfe\xc3 utf-8 \xed\xa0\x80", "",
    "cafe\xcc\x81 \xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8 a\xcc\x82\xcc\xa3 \xcc\x81\xff\xcc\x81", /* for NFC, NFD */
};

static void round_trip(const tok_tokenizer *t, const char *text, size_t len) {
    llmopt_error err = {0};
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tok_encode(t, text, len, special, &ids, &n, &err) == 0) {
            char *out = NULL;
            size_t out_len = 0;
            if (tok_decode(t, ids, n, special, &out, &out_len, &err) == 0) free(out);
        }
        free(ids);
    }
}

/* The next NUL-separated part of [*p, end), or NULL when none is left. */
static const char *next_part(const char **p, const char *end, size_t *len) {
    if (*p >= end) return NULL;
    const char *s = *p, *nul = memchr(s, '\0', (size_t)(end - s));
    *len = (size_t)((nul ? nul : end) - s);
    *p = nul ? nul + 1 : end;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = (const char *)data, *end = p + size;
    size_t len = 0, cfg_len = 0, gen_len = 0;
    const char *json = next_part(&p, end, &len);
    const char *cfg = next_part(&p, end, &cfg_len);
    const char *gen = next_part(&p, end, &gen_len);
    tok_tokenizer *t = NULL;
    llmopt_error err = {0};
    if (tok_load_mem("tokenizer.json", json ? json : "", len, cfg, cfg_len, gen, gen_len, &t, &err) != 0) return 0;

    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) round_trip(t, texts[i], strlen(texts[i]));
    round_trip(t, (const char *)data, size < 4096 ? size : 4096);

    /* Every id up to 300 (and the last), one at a time and all together, raw and skipping specials. */
    size_t vocab = tok_vocab_size(t), n = vocab < 300 ? vocab : 300;
    int32_t ids[301];
    for (size_t i = 0; i < n; i++) ids[i] = (int32_t)i;
    if (vocab > 0) ids[n++] = (int32_t)(vocab - 1);
    for (int skip = 0; skip < 2; skip++) {
        char *out = NULL;
        size_t out_len = 0;
        if (tok_decode(t, ids, n, skip, &out, &out_len, &err) == 0) free(out);
    }
    for (size_t i = 0; i < n; i++) {
        const char *s = tok_token(t, ids[i]);
        if (s) tok_token_id(t, s);
        tok_is_special(t, ids[i]);
    }
    int32_t bad[2] = {-1, (int32_t)vocab};
    char *out = NULL;
    size_t out_len = 0;
    if (tok_decode(t, bad, 2, 0, &out, &out_len, &err) == 0) abort(); /* out of range must fail */
    tok_chat_template(t);
    size_t n_eos = 0;
    tok_eos_ids(t, &n_eos);
    tok_free(t);
    return 0;
}
