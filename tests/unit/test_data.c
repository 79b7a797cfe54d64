/* Dataset splits: percentages and line numbers select whole lines, complementary splits
 * partition the text, malformed splits are refused with the expected form in the message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "runtime/data.h"

static const char *TEXT = "l0\nl1\nl2\nl3\nl4\nl5\nl6\nl7\nl8\nl9\n";

static void complementary_percent_splits_partition_the_lines(void **state) {
    (void)state;
    size_t b1, e1, b2, e2, n = strlen(TEXT);
    llmopt_error err = {0};
    assert_int_equal(rt_text_split(TEXT, n, "0:90%", &b1, &e1, &err), 0);
    assert_int_equal(rt_text_split(TEXT, n, "90%:100%", &b2, &e2, &err), 0);
    assert_int_equal(b1, 0);
    assert_int_equal(e1, b2);
    assert_int_equal(e2, n);
    assert_memory_equal(TEXT + b2, "l9\n", 3);
}

static void line_numbers_select_those_lines(void **state) {
    (void)state;
    size_t b, e;
    llmopt_error err = {0};
    assert_int_equal(rt_text_split(TEXT, strlen(TEXT), "2:4", &b, &e, &err), 0);
    assert_int_equal(e - b, 6);
    assert_memory_equal(TEXT + b, "l2\nl3\n", 6);
}

static void empty_split_selects_everything(void **state) {
    (void)state;
    size_t b, e;
    llmopt_error err = {0};
    assert_int_equal(rt_text_split(TEXT, strlen(TEXT), NULL, &b, &e, &err), 0);
    assert_int_equal(b, 0);
    assert_int_equal(e, strlen(TEXT));
}

static void malformed_splits_are_refused(void **state) {
    (void)state;
    const char *bad[] = {"bogus", "10", "50%:20%", "0:101%", "a:b", ":5", "-1:5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llmopt_error err = {0};
        assert_int_equal(rt_split_check(bad[i], &err), LLMOPT_EINVAL);
        assert_non_null(strstr(err.msg, "FROM:TO"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(complementary_percent_splits_partition_the_lines),
        cmocka_unit_test(line_numbers_select_those_lines),
        cmocka_unit_test(empty_split_selects_everything),
        cmocka_unit_test(malformed_splits_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
