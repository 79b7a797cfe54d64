/* Compute thread pool: workers wait for a job (fn, range), claim chunks with an atomic counter,
 * and the caller works too, then waits for the stragglers.
 *
 * Waiting spins for a while before it sleeps. A decode step of GPT-2 124M is ~80 parallel_for
 * calls in a few milliseconds; with workers asleep on a condition variable between them, every
 * call paid a wake-up (a futex and, in a VM, an IPI to a halted vCPU), and perf showed 2 threads
 * decoding only 1.3x faster than 1 with a tenth of the samples in the scheduler. So a worker that
 * finished a job polls the job counter for up to SPIN_NS before it blocks, and the caller polls
 * for its stragglers likewise; a sleeping side is woken through the mutex and condition variable
 * (the sleepers count and main_waiting flag say when that is needed). */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_NS 1000000L /* 1 ms: longer than the gaps between the calls of a decode step */

typedef struct job {
    void (*fn)(void *, int64_t, int64_t);
    void *arg;
    int64_t n, chunk;
    atomic_llong next;      /* next chunk start */
    atomic_int active;      /* workers still inside this job */
} job;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;     /* guards sleeping and waking */
static pthread_cond_t g_work = PTHREAD_COND_INITIALIZER, g_done = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t g_call = PTHREAD_MUTEX_INITIALIZER;   /* one parallel_for at a time */
static atomic_int g_threads, g_started;
static _Atomic(job *) g_job;
static atomic_ulong g_generation;                            /* +1 per job */
static atomic_int g_sleepers;                                /* workers blocked on g_work */
static atomic_int g_main_waiting;                            /* the caller blocked on g_done */
static _Thread_local int t_inside;                           /* inside a chunk: run inline */

void tp_set_threads(int n) {
    pthread_mutex_lock(&g_mu);
    if (!atomic_load(&g_started)) atomic_store(&g_threads, n);
    pthread_mutex_unlock(&g_mu);
}

int tp_threads(void) {
    int n = atomic_load(&g_threads);
    if (n > 0) return n;
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    n = c > 0 ? (int)c : 1;
    int zero = 0;
    atomic_compare_exchange_strong(&g_threads, &zero, n);
    return atomic_load(&g_threads);
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Polls until done(arg) or SPIN_NS have passed; returns done(arg). */
static int spin_until(int (*done)(const void *), const void *arg) {
    long long t0 = 0;
    for (unsigned i = 0;; i++) {
        if (done(arg)) return 1;
        if ((i & 63) == 63) {
            long long t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > SPIN_NS) return done(arg);
        }
        CPU_RELAX();
    }
}

static int new_job(const void *seen) { return atomic_load(&g_generation) != *(const unsigned long *)seen; }
static int all_done(const void *j) { return atomic_load(&((job *)j)->active) == 0; }

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
        if (!spin_until(new_job, &seen)) {
            pthread_mutex_lock(&g_mu);
            atomic_fetch_add(&g_sleepers, 1);
            while (atomic_load(&g_generation) == seen) pthread_cond_wait(&g_work, &g_mu);
            atomic_fetch_sub(&g_sleepers, 1);
            pthread_mutex_unlock(&g_mu);
        }
        seen = atomic_load(&g_generation);
        job *j = atomic_load(&g_job);
        run_chunks(j);
        /* the caller's job lives on its stack: nothing of j is touched after this */
        if (atomic_fetch_sub(&j->active, 1) == 1 && atomic_load(&g_main_waiting)) {
            pthread_mutex_lock(&g_mu);
            pthread_cond_signal(&g_done);
            pthread_mutex_unlock(&g_mu);
        }
    }
    return NULL;
}

/* Starts the workers once; they live until the process exits. */
static void start_workers(int n) {
    pthread_mutex_lock(&g_mu);
    if (!atomic_load(&g_started)) {
        atomic_store(&g_started, 1);
        for (int i = 1; i < n; i++) {
            pthread_t t;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            int failed = pthread_create(&t, &at, worker, NULL) != 0;
            pthread_attr_destroy(&at);
            if (failed) {
                atomic_store(&g_threads, i);
                break;
            }
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
    if (threads == 1) {
        fn(arg, 0, n);
        return;
    }
    /* about 4 chunks per thread for balance, never smaller than grain */
    int64_t chunk = (n + 4 * threads - 1) / (4 * threads);
    if (chunk < grain) chunk = grain;

    pthread_mutex_lock(&g_call);
    job j = {.fn = fn, .arg = arg, .n = n, .chunk = chunk};
    atomic_init(&j.next, 0);
    atomic_init(&j.active, threads - 1);
    atomic_store(&g_job, &j);
    atomic_fetch_add(&g_generation, 1);
    if (atomic_load(&g_sleepers) > 0) { /* a worker that checked before the increment sleeps: wake it */
        pthread_mutex_lock(&g_mu);
        pthread_cond_broadcast(&g_work);
        pthread_mutex_unlock(&g_mu);
    }

    run_chunks(&j);

    if (!spin_until(all_done, &j)) {
        pthread_mutex_lock(&g_mu);
        atomic_store(&g_main_waiting, 1);
        while (atomic_load(&j.active) > 0) pthread_cond_wait(&g_done, &g_mu);
        atomic_store(&g_main_waiting, 0);
        pthread_mutex_unlock(&g_mu);
    }
    pthread_mutex_unlock(&g_call);
}
