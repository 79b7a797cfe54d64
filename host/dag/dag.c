/* The stage graph: Kahn's algorithm with ties broken by the lower index (so independent stages
 * keep config order), and, when nodes remain, one actual cycle among them named in flow order.
 * Pipelines have tens of stages, so picking the next ready node by a linear scan is fine. */
#include "dag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reverse edges in CSR form: dependents of node v are who[off[v] .. off[v+1]). */
typedef struct rev_edges {
    size_t *off, *who;
} rev_edges;

static int rev_build(size_t n, const size_t *const *deps, const size_t *n_deps, rev_edges *r) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += n_deps[i];
    r->off = calloc(n + 1, sizeof *r->off);
    r->who = malloc((total ? total : 1) * sizeof *r->who);
    size_t *fill = calloc(n + 1, sizeof *fill);
    if (!r->off || !r->who || !fill) {
        free(fill);
        return LLMOPT_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < n_deps[i]; k++) r->off[deps[i][k] + 1]++;
    for (size_t v = 0; v < n; v++) r->off[v + 1] += r->off[v];
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < n_deps[i]; k++) {
            size_t d = deps[i][k];
            r->who[r->off[d] + fill[d]++] = i;
        }
    free(fill);
    return 0;
}

/* Appends "s" to buf (cap bytes), truncating with "..." rather than overflowing. */
static void buf_add(char *buf, size_t cap, const char *s) {
    size_t len = strlen(buf);
    if (len + strlen(s) + 4 >= cap) {
        if (len + 4 < cap) strcat(buf, "...");
        return;
    }
    strcat(buf, s);
}

/* Called with at least one node not placed: every such node has an unplaced dependency, so
 * following those from the lowest unplaced node must come back to a node already on the path. */
static int report_cycle(size_t n, const size_t *const *deps, const char *const *names, const unsigned char *placed, size_t *order,
                        llmopt_error *err) {
    size_t *path = malloc(n * sizeof *path), len = 0, cur = 0;
    long *pos = malloc(n * sizeof *pos);
    if (!path || !pos) {
        free(path);
        free(pos);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) pos[i] = -1;
    while (placed[cur]) cur++;
    while (pos[cur] < 0) {
        pos[cur] = (long)len;
        path[len++] = cur;
        size_t k = 0;
        while (placed[deps[cur][k]]) k++;
        cur = deps[cur][k];
    }
    /* path[start..len) is c0 <- c1 <- ... (each depends on the next); print it backwards,
     * starting at the lowest index. */
    size_t start = (size_t)pos[cur], L = len - start, m = 0;
    for (size_t k = 1; k < L; k++)
        if (path[start + k] < path[start + m]) m = k;
    char msg[sizeof err->msg / 2] = "cycle between stages: ";
    for (size_t k = 0; k <= L; k++) {
        if (k) buf_add(msg, sizeof msg, " -> ");
        buf_add(msg, sizeof msg, names[path[start + (m + L - k % L) % L]]);
    }
    order[0] = path[start + m];
    free(path);
    free(pos);
    return error_set(err, LLMOPT_EINVAL, "%s", msg);
}

static int check_edges(size_t n, const size_t *const *deps, const size_t *n_deps,
                       const char *const *names, llmopt_error *err) {
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < n_deps[i]; k++)
            if (deps[i][k] >= n)
                return error_set(err, LLMOPT_EINVAL, "'%s' depends on node %zu of %zu", names[i],
                                 deps[i][k], n);
    return 0;
}

int dag_toposort(size_t n, const size_t *const *deps, const size_t *n_deps,
                 const char *const *names, size_t *order, llmopt_error *err) {
    if (n == 0) return 0;
    int rc = check_edges(n, deps, n_deps, names, err);
    if (rc != 0) return rc;
    rev_edges r = {0};
    size_t *waiting = malloc(n * sizeof *waiting); /* unplaced dependencies, with repeats */
    unsigned char *placed = calloc(n, 1);
    if (!waiting || !placed || rev_build(n, deps, n_deps, &r) != 0) {
        rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) waiting[i] = n_deps[i];
    size_t done_n = 0;
    for (; done_n < n; done_n++) {
        size_t v = 0;
        while (v < n && (placed[v] || waiting[v] > 0)) v++;
        if (v == n) break;
        placed[v] = 1;
        order[done_n] = v;
        for (size_t e = r.off[v]; e < r.off[v + 1]; e++) waiting[r.who[e]]--;
    }
    if (done_n < n) rc = report_cycle(n, deps, names, placed, order, err);
done:
    free(r.off);
    free(r.who);
    free(waiting);
    free(placed);
    return rc;
}
