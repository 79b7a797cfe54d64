/* The stage graph: topological ordering (Kahn, stable in config order) and cycle reports. */
#ifndef HOST_DAG_DAG_H
#define HOST_DAG_DAG_H

#include <stddef.h>
#include "../util/error.h"

/* n nodes; deps[i] lists the nodes i depends on (n_deps[i] of them). Fills order (n entries);
 * among nodes ready at the same time the lower index comes first, so order follows the config.
 * A cycle is an LLMOPT_EINVAL whose message lists its members in data-flow order (a dependency
 * before its dependent), "cycle between stages: a -> b -> a", using names[i], starting at the
 * member with the lowest index; order[0] then holds that index (so the caller can point at it). */
int dag_toposort(size_t n, const size_t *const *deps, const size_t *n_deps,
                 const char *const *names, size_t *order, llmopt_error *err);

#endif
