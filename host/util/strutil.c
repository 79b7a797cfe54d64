/* Small string helpers: edit distance for "did you mean" hints. */
#include "strutil.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

size_t str_edit_distance(const char *a, const char *b, size_t cap) {
    size_t na = strlen(a), nb = strlen(b);
    if ((na > nb ? na - nb : nb - na) > cap) return cap + 1;
    size_t *row = malloc((nb + 1) * sizeof *row);
    if (!row) return cap + 1;
    for (size_t j = 0; j <= nb; j++) row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0], best = i;
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
            if (v < best) best = v;
        }
        if (best > cap) {
            free(row);
            return cap + 1;
        }
    }
    size_t d = row[nb];
    free(row);
    return d;
}

const char *str_suggest(const char *s, const char *const *candidates, size_t n) {
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = str_edit_distance(s, candidates[i], 2);
        if (d < best_d) {
            best_d = d;
            best = candidates[i];
        }
    }
    if (best || !*s) return best;
    for (size_t i = 0; i < n; i++)
        if (strncasecmp(candidates[i], s, strlen(s)) == 0) return candidates[i];
    return NULL;
}
