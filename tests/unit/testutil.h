/* Helpers shared by the unit tests (include after cmocka.h). */
#ifndef TESTS_UNIT_TESTUTIL_H
#define TESTS_UNIT_TESTUTIL_H

#include <stdlib.h>
#include <string.h>

#include "util/fs.h"

/* A fresh directory /tmp/llmopt-test-<what>-XXXXXX (malloc'd path); remove with remove_dir. */
static inline char *make_test_dir(const char *what) {
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "/tmp/llmopt-test-%s-XXXXXX", what);
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static inline void remove_dir(char *dir) {
    fs_rmtree(dir);
    free(dir);
}

#endif
