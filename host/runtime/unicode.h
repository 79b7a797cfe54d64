/* UTF-8 and the few Unicode properties the tokenizers need: letters (L*), numbers (N*) and
 * White_Space, for the GPT-2 pre-tokenizer regex, and the canonical normalization forms NFC and
 * NFD (Qwen2's tokenizer.json normalizes to NFC). Tables: unicode_tables.c (generated). */
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
/* Ll; Lu and Lt; M* (Mn, Mc, Me) */
extern const uni_range uni_lower_ranges[];
extern const size_t uni_lower_ranges_len;
extern const uni_range uni_upper_ranges[];
extern const size_t uni_upper_ranges_len;
extern const uni_range uni_mark_ranges[];
extern const size_t uni_mark_ranges_len;

typedef struct uni_ccc_range {
    uint32_t lo, hi; /* inclusive, every code point of one non-zero canonical combining class */
    uint32_t ccc;
} uni_ccc_range;
typedef struct uni_pair_map {
    uint32_t a, b, c;
} uni_pair_map;
/* Non-zero canonical combining classes, sorted. */
extern const uni_ccc_range uni_ccc_ranges[];
extern const size_t uni_ccc_ranges_len;
/* Canonical decompositions, one level: a (code point) -> b c (c 0 for a singleton); sorted by
 * a; Hangul syllables are algorithmic and not listed. */
extern const uni_pair_map uni_decomp[];
extern const size_t uni_decomp_len;
/* Primary composites: a b -> c, sorted by (a, b); Hangul not listed. */
extern const uni_pair_map uni_comp[];
extern const size_t uni_comp_len;

int uni_is_letter(uint32_t cp);
int uni_is_number(uint32_t cp);
int uni_is_lower(uint32_t cp); /* Ll */
int uni_is_upper(uint32_t cp); /* Lu or Lt */
int uni_is_mark(uint32_t cp);  /* M* */
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

/* The canonical combining class of cp (0 for starters). */
unsigned uni_ccc(uint32_t cp);
/* Normalization form D (compose 0) or C (compose 1) of s[0..n), Unicode's algorithm (UAX #15):
 * full canonical decomposition, canonical ordering, and for NFC canonical composition. A byte
 * that is not well-formed UTF-8 passes through unchanged and acts as a starter nothing composes
 * with (byte-level tokenizers take any bytes). *out gets a malloc'd copy, NUL-terminated, and
 * *out_len its length; returns 0, or -1 when out of memory (*out NULL). */
int uni_normalize(const char *s, size_t n, int compose, char **out, size_t *out_len);
/* 1 when a quick check shows s[0..n) already in that form (no lead byte that could start a
 * character normalization changes), 0 when it may not be. */
int uni_normalized_quick(const char *s, size_t n, int compose);

#endif
