/* Compute thread pool: workers wait on a condition variable for a job (fn, range), claim
 * chunks with an atomic counter, and the caller works too, then waits for the stragglers. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct job {
    void (*fn)(void *, int64_t, int64_t);
    void *arg;
    int64_t n, chunk;
    atomic_llong next;      /* next chunk start */
    atomic_int active;      /* workers still inside this job */
} job;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;     /* guards the fields below */
static pthread_cond_t g_work = PTHREAD_COND_INITIALIZER, g_done = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t g_call = PTHREAD_MUTEX_INITIALIZER;   /* one parallel_for at a time */
static int g_threads, g_started;
static job *g_job;
static unsigned long g_generation;
static _Thread_local int t_inside;                           /* inside a chunk: run inline */

void tp_set_threads(int n) {
    pthread_mutex_lock(&g_mu);
    if (!g_started) g_threads = n;
    pthread_mutex_unlock(&g_mu);
}

int tp_threads(void) {
    pthread_mutex_lock(&g_mu);
    if (g_threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        g_threads = c > 0 ? (int)c : 1;
    }
    int n = g_threads;
    pthread_mutex_unlock(&g_mu);
    return n;
}

static void run_chunks(job *j) {
    t_inside = 1;
    for (;;) {
        int64_t b = atomic_fetch_add(&j->next, j->chunk);
        if (b >= j->n) break;
        int64_t e = b + j->chunk < j->n ? b + j->chunk : j->n;
        j->fn(j->arg, b, e);
    }
    t_inside = 0;
}

static void *worker(void *unused) {
    (void)unused;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&g_mu);
        while (g_generation == seen) pthread_cond_wait(&g_work, &g_mu);
        seen = g_generation;
        job *j = g_job;
        pthread_mutex_unlock(&g_mu);
        if (!j) continue;
        run_chunks(j);
        pthread_mutex_lock(&g_mu);
        if (atomic_fetch_sub(&j->active, 1) == 1) pthread_cond_signal(&g_done);
        pthread_mutex_unlock(&g_mu);
    }
    return NULL;
}

/* Starts the workers once; they live until the process exits. */
static void start_workers(int n) {
    pthread_mutex_lock(&g_mu);
    if (!g_started) {
        g_started = 1;
        for (int i = 1; i < n; i++) {
            pthread_t t;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&t, &at, worker, NULL) != 0) g_threads = i;
            pthread_attr_destroy(&at);
            if (g_threads == i) break;
        }
    }
    pthread_mutex_unlock(&g_mu);
}

void tp_parallel_for(int64_t n, int64_t grain, void (*fn)(void *arg, int64_t begin, int64_t end),
                     void *arg) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int threads = tp_threads();
    if (t_inside || threads == 1 || n <= grain) {
        fn(arg, 0, n);
        return;
    }
    start_workers(threads);
    threads = tp_threads();
    /* about 4 chunks per thread for balance, never smaller than grain */
    int64_t chunk = (n + 4 * threads - 1) / (4 * threads);
    if (chunk < grain) chunk = grain;

    pthread_mutex_lock(&g_call);
    job j = {.fn = fn, .arg = arg, .n = n, .chunk = chunk};
    atomic_init(&j.next, 0);
    atomic_init(&j.active, threads - 1);
    pthread_mutex_lock(&g_mu);
    g_job = &j;
    g_generation++;
    pthread_cond_broadcast(&g_work);
    pthread_mutex_unlock(&g_mu);

    run_chunks(&j);

    pthread_mutex_lock(&g_mu);
    while (atomic_load(&j.active) > 0) pthread_cond_wait(&g_done, &g_mu);
    g_job = NULL;
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_unlock(&g_call);
}
