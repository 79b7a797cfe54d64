/* Small string helpers shared by the config checker and the CLI. */
#ifndef HOST_UTIL_STRUTIL_H
#define HOST_UTIL_STRUTIL_H

#include <stddef.h>

/* Levenshtein distance, capped: returns cap+1 as soon as it must exceed cap. */
size_t str_edit_distance(const char *a, const char *b, size_t cap);
/* Of n candidates, the one closest to s within distance 2 (or a case-insensitive prefix
 * match), or NULL: for "did you mean ...?" hints. */
const char *str_suggest(const char *s, const char *const *candidates, size_t n);

#endif
