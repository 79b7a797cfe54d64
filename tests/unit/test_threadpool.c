/* Compute thread pool tests (host/runtime/threadpool.c): parallel_for covers every index exactly
 * once in contiguous chunks of at least `grain`, a nested call runs inline on the calling thread,
 * work is shared between threads, and concurrent callers from two threads both complete. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <cmocka.h>

#include "runtime/threadpool.h"

#define MAX_N 20000

typedef struct cover {
    atomic_int hits[MAX_N];
    int64_t n, grain;
    atomic_int bad_chunk; /* a chunk shorter than grain that is not the last one, or empty */
} cover;

static void count_chunk(void *arg, int64_t begin, int64_t end) {
    cover *c = arg;
    if (begin >= end || begin < 0 || end > c->n || (end - begin < c->grain && end != c->n))
        atomic_store(&c->bad_chunk, 1);
    for (int64_t i = begin; i < end && i < c->n; i++) atomic_fetch_add(&c->hits[i], 1);
}

static void run_cover(cover *c, int64_t n, int64_t grain) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->grain = grain < 1 ? 1 : grain;
    tp_parallel_for(n, grain, count_chunk, c);
    if (atomic_load(&c->bad_chunk)) fail_msg("n=%lld grain=%lld: bad chunk bounds", (long long)n, (long long)grain);
    for (int64_t i = 0; i < n; i++)
        if (atomic_load(&c->hits[i]) != 1)
            fail_msg("n=%lld grain=%lld: index %lld ran %d times", (long long)n, (long long)grain, (long long)i,
                     atomic_load(&c->hits[i]));
}

static void parallel_for_covers_every_index_exactly_once(void **state) {
    (void)state;
    static cover c;
    static const int64_t ns[] = {1, 2, 3, 7, 8, 100, 1000, 4097, MAX_N};
    static const int64_t grains[] = {0, 1, 3, 64, 1000, 100000};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (size_t g = 0; g < sizeof grains / sizeof grains[0]; g++) run_cover(&c, ns[i], grains[g]);
}

static void parallel_for_with_nothing_to_do_calls_nothing(void **state) {
    (void)state;
    static cover c;
    memset(&c, 0, sizeof c);
    tp_parallel_for(0, 1, count_chunk, &c);
    tp_parallel_for(-5, 1, count_chunk, &c);
    assert_int_equal(atomic_load(&c.bad_chunk), 0);
    assert_int_equal(atomic_load(&c.hits[0]), 0);
}

typedef struct nested {
    atomic_int outer_items, inner_calls, inner_items, inner_off_thread, inner_not_whole;
} nested;

static _Thread_local pthread_t t_self;

static void inner_chunk(void *arg, int64_t begin, int64_t end) {
    nested *s = arg;
    atomic_fetch_add(&s->inner_calls, 1);
    atomic_fetch_add(&s->inner_items, (int)(end - begin));
    if (!pthread_equal(pthread_self(), t_self)) atomic_store(&s->inner_off_thread, 1);
    if (begin != 0 || end != 50) atomic_store(&s->inner_not_whole, 1);
}

static void outer_chunk(void *arg, int64_t begin, int64_t end) {
    nested *s = arg;
    t_self = pthread_self();
    for (int64_t i = begin; i < end; i++) {
        atomic_fetch_add(&s->outer_items, 1);
        tp_parallel_for(50, 1, inner_chunk, s); /* nested: runs inline, in one piece */
    }
}

static void nested_parallel_for_runs_inline_on_the_calling_thread(void **state) {
    (void)state;
    nested s;
    memset(&s, 0, sizeof s);
    tp_parallel_for(40, 1, outer_chunk, &s);
    assert_int_equal(atomic_load(&s.outer_items), 40);
    assert_int_equal(atomic_load(&s.inner_calls), 40);      /* one inline call per outer item */
    assert_int_equal(atomic_load(&s.inner_items), 40 * 50);
    assert_int_equal(atomic_load(&s.inner_off_thread), 0);
    assert_int_equal(atomic_load(&s.inner_not_whole), 0);
}

typedef struct who {
    pthread_t seen[64];
    atomic_int n_seen;
    pthread_mutex_t mu;
} who;

static void record_thread(void *arg, int64_t begin, int64_t end) {
    who *w = arg;
    (void)begin;
    (void)end;
    struct timespec ts = {0, 2000000}; /* 2 ms: long enough for the workers to wake */
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&w->mu);
    int n = atomic_load(&w->n_seen), found = 0;
    for (int i = 0; i < n; i++) found |= pthread_equal(w->seen[i], pthread_self());
    if (!found && n < 64) w->seen[atomic_fetch_add(&w->n_seen, 1)] = pthread_self();
    pthread_mutex_unlock(&w->mu);
}

static void work_is_shared_between_threads(void **state) {
    (void)state;
    assert_int_equal(tp_threads(), 3);
    who w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.mu, NULL);
    tp_parallel_for(48, 1, record_thread, &w);
    pthread_mutex_destroy(&w.mu);
    assert_true(atomic_load(&w.n_seen) > 1);
    assert_true(atomic_load(&w.n_seen) <= 3);
}

typedef struct caller {
    cover c;
    int rounds, failed;
} caller;

static void *caller_main(void *arg) {
    caller *k = arg;
    for (int r = 0; r < k->rounds && !k->failed; r++) {
        int64_t n = 1 + (r * 7919) % 3000, grain = 1 + r % 17;
        memset(&k->c, 0, sizeof k->c);
        k->c.n = n;
        k->c.grain = grain;
        tp_parallel_for(n, grain, count_chunk, &k->c);
        if (atomic_load(&k->c.bad_chunk)) k->failed = 1;
        for (int64_t i = 0; i < n; i++)
            if (atomic_load(&k->c.hits[i]) != 1) k->failed = 1;
    }
    return NULL;
}

static void concurrent_callers_from_two_threads_both_complete_correctly(void **state) {
    (void)state;
    caller *k = calloc(2, sizeof *k);
    assert_non_null(k);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        k[i].rounds = 200;
        assert_int_equal(pthread_create(&t[i], NULL, caller_main, &k[i]), 0);
    }
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(k[0].failed, 0);
    assert_int_equal(k[1].failed, 0);
    free(k);
}

int main(void) {
    tp_set_threads(3); /* before first use: more threads than a small CI runner has cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parallel_for_covers_every_index_exactly_once),
        cmocka_unit_test(parallel_for_with_nothing_to_do_calls_nothing),
        cmocka_unit_test(nested_parallel_for_runs_inline_on_the_calling_thread),
        cmocka_unit_test(work_is_shared_between_threads),
        cmocka_unit_test(concurrent_callers_from_two_threads_both_complete_correctly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
