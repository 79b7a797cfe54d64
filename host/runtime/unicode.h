/* UTF-8 and the few Unicode properties the tokenizers need: letters (L*), numbers (N*) and
 * White_Space, for the GPT-2 pre-tokenizer regex. Tables: unicode_tables.c (generated). */
#ifndef HOST_RUNTIME_UNICODE_H
#define HOST_RUNTIME_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#define UNI_REPLACEMENT 0xFFFDu

typedef struct uni_range {
    uint32_t lo, hi; /* inclusive */
} uni_range;

extern const uni_range uni_letter_ranges[];
extern const size_t uni_letter_ranges_len;
extern const uni_range uni_number_ranges[];
extern const size_t uni_number_ranges_len;

int uni_is_letter(uint32_t cp);
int uni_is_number(uint32_t cp);
/* The White_Space property (what Rust's char::is_whitespace and the regex \s test). */
int uni_is_space(uint32_t cp);

/* Decodes the code point at s[0..n) (n >= 1) into *cp and returns its length in bytes (1..4).
 * A byte that does not start a well-formed sequence (truncated, overlong, surrogate, above
 * U+10FFFF, stray continuation) decodes as U+FFFD with length 1. */
size_t uni_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Writes cp as UTF-8 into out (4 bytes room); returns the length. */
size_t uni_encode(uint32_t cp, char *out);
/* A malloc'd, NUL-terminated copy of s[0..n) in which every ill-formed sequence is replaced by
 * U+FFFD, one per maximal subpart (what Python's bytes.decode(errors="replace") and so
 * transformers' decode give). *out_len gets its length. NULL when out of memory. */
char *uni_sanitize(const char *s, size_t n, size_t *out_len);
/* 1 if s[0..n) is well-formed UTF-8. */
int uni_valid(const unsigned char *s, size_t n);

#endif
