/* dag_toposort: stable topological order (config order among independent stages) and cycle
 * messages that name one actual cycle in data-flow order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "dag/dag.h"

static const char *const NAMES[] = {"a", "b", "c", "d", "e"};

static int sort(size_t n, const size_t *const *deps, const size_t *n_deps, size_t *order,
                llmopt_error *err) {
    error_clear(err);
    return dag_toposort(n, deps, n_deps, NAMES, order, err);
}

static void linear_chain_sorts_producers_first(void **state) {
    (void)state;
    /* c <- b <- a, written in reverse config order */
    static const size_t d0[] = {1}, d1[] = {2};
    const size_t *deps[] = {d0, d1, NULL};
    const size_t n_deps[] = {1, 1, 0};
    size_t order[3];
    llmopt_error err;
    assert_int_equal(sort(3, deps, n_deps, order, &err), 0);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 1);
    assert_int_equal(order[2], 0);
}

static void diamond_puts_join_last_and_branches_in_config_order(void **state) {
    (void)state;
    /* a -> b, a -> c, b + c -> d */
    static const size_t db[] = {0}, dc[] = {0}, dd[] = {2, 1};
    const size_t *deps[] = {NULL, db, dc, dd};
    const size_t n_deps[] = {0, 1, 1, 2};
    size_t order[4];
    llmopt_error err;
    assert_int_equal(sort(4, deps, n_deps, order, &err), 0);
    size_t want[] = {0, 1, 2, 3};
    assert_memory_equal(order, want, sizeof want);
}

static void independent_nodes_keep_config_order(void **state) {
    (void)state;
    const size_t *deps[5] = {0};
    const size_t n_deps[5] = {0};
    size_t order[5];
    llmopt_error err;
    assert_int_equal(sort(5, deps, n_deps, order, &err), 0);
    for (size_t i = 0; i < 5; i++) assert_int_equal(order[i], i);
}

static void ready_node_with_lower_index_goes_first(void **state) {
    (void)state;
    /* b depends on e; a, c, d are free: a c d e b */
    static const size_t db[] = {4};
    const size_t *deps[5] = {NULL, db, NULL, NULL, NULL};
    const size_t n_deps[5] = {0, 1, 0, 0, 0};
    size_t order[5];
    llmopt_error err;
    assert_int_equal(sort(5, deps, n_deps, order, &err), 0);
    size_t want[] = {0, 2, 3, 4, 1};
    assert_memory_equal(order, want, sizeof want);
}

static void two_cycle_is_named(void **state) {
    (void)state;
    static const size_t d0[] = {1}, d1[] = {0};
    const size_t *deps[] = {d0, d1};
    const size_t n_deps[] = {1, 1};
    size_t order[2];
    llmopt_error err;
    assert_int_equal(sort(2, deps, n_deps, order, &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "cycle between stages: a -> b -> a");
    assert_int_equal(order[0], 0);
}

static void three_cycle_is_named_in_flow_order(void **state) {
    (void)state;
    /* a takes c, b takes a, c takes b: data flows a -> b -> c -> a; d hangs off the cycle */
    static const size_t da[] = {2}, db[] = {0}, dc[] = {1}, dd[] = {2};
    const size_t *deps[] = {da, db, dc, dd};
    const size_t n_deps[] = {1, 1, 1, 1};
    size_t order[4];
    llmopt_error err;
    assert_int_equal(sort(4, deps, n_deps, order, &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "cycle between stages: a -> b -> c -> a");
}

static void cycle_behind_acyclic_prefix_names_only_members(void **state) {
    (void)state;
    /* a is fine; b depends on d, c on b, d on c; e depends on the cycle */
    static const size_t db[] = {0, 3}, dc[] = {1}, dd[] = {2}, de[] = {1};
    const size_t *deps[] = {NULL, db, dc, dd, de};
    const size_t n_deps[] = {0, 2, 1, 1, 1};
    size_t order[5];
    llmopt_error err;
    assert_int_equal(sort(5, deps, n_deps, order, &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "cycle between stages: b -> c -> d -> b");
    assert_int_equal(order[0], 1);
}

static void self_loop_is_a_cycle(void **state) {
    (void)state;
    static const size_t d1[] = {1};
    const size_t *deps[] = {NULL, d1};
    const size_t n_deps[] = {0, 1};
    size_t order[2];
    llmopt_error err;
    assert_int_equal(sort(2, deps, n_deps, order, &err), LLMOPT_EINVAL);
    assert_string_equal(err.msg, "cycle between stages: b -> b");
}

static void dependency_out_of_range_is_refused(void **state) {
    (void)state;
    static const size_t d0[] = {7};
    const size_t *deps[] = {d0};
    const size_t n_deps[] = {1};
    size_t order[1];
    llmopt_error err;
    assert_int_equal(sort(1, deps, n_deps, order, &err), LLMOPT_EINVAL);
    assert_non_null(strstr(err.msg, "'a'"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(linear_chain_sorts_producers_first),
        cmocka_unit_test(diamond_puts_join_last_and_branches_in_config_order),
        cmocka_unit_test(independent_nodes_keep_config_order),
        cmocka_unit_test(ready_node_with_lower_index_goes_first),
        cmocka_unit_test(two_cycle_is_named),
        cmocka_unit_test(three_cycle_is_named_in_flow_order),
        cmocka_unit_test(cycle_behind_acyclic_prefix_names_only_members),
        cmocka_unit_test(self_loop_is_a_cycle),
        cmocka_unit_test(dependency_out_of_range_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
