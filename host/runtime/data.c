/* Dataset splits over lines of text. Percentages are of the line count, rounded down, so
 * "0:90%" and "90%:100%" partition the lines exactly. */
#include "data.h"

#include <stdlib.h>
#include <string.h>

/* One bound of a split: a percentage ("90%", 0..100) or a line number; 0 when well formed. */
static int parse_bound(const char *s, size_t len, double *v, int *percent) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    *v = strtod(buf, &end);
    *percent = *end == '%';
    if (end == buf || *v < 0 || (*percent && (end[1] != '\0' || *v > 100))) return -1;
    if (!*percent && (*end != '\0' || *v != (double)(long)*v)) return -1;
    return 0;
}

/* The line index a bound stands for in a text of n lines. */
static long bound_line(double v, int percent, long n) {
    long l = percent ? (long)(v / 100.0 * (double)n) : (long)v;
    return l > n ? n : l;
}

static int split_bounds(const char *split, double *a, int *pa, double *b, int *pb, llmopt_error *err) {
    const char *colon = strchr(split, ':');
    if (!colon || parse_bound(split, (size_t)(colon - split), a, pa) != 0 ||
        parse_bound(colon + 1, strlen(colon + 1), b, pb) != 0 || (*pa == *pb && *a > *b))
        return error_set(err, LLMOPT_EINVAL, "split '%s' should be FROM:TO with FROM <= TO, as percentages or line "
                         "numbers (e.g. \"0:90%%\", \"90%%:100%%\", \"0:1000\")", split);
    return 0;
}

int rt_split_check(const char *split, llmopt_error *err) {
    double a, b;
    int pa, pb;
    return split && *split ? split_bounds(split, &a, &pa, &b, &pb, err) : 0;
}

int rt_text_split(const char *text, size_t len, const char *split, size_t *begin, size_t *end, llmopt_error *err) {
    *begin = 0, *end = len;
    if (!split || !*split) return 0;
    double a, b;
    int pa, pb;
    int rc = split_bounds(split, &a, &pa, &b, &pb, err);
    if (rc) return rc;
    long lines = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    if (len && text[len - 1] != '\n') lines++;
    long la = bound_line(a, pa, lines), lb = bound_line(b, pb, lines);
    if (la > lb) la = lb;
    /* byte offsets of line la and line lb */
    long line = 0;
    size_t pos = 0;
    for (; pos < len && line < la; pos++) line += text[pos] == '\n';
    *begin = pos;
    for (; pos < len && line < lb; pos++) line += text[pos] == '\n';
    *end = pos;
    return 0;
}
