/* The host's compute threads: a fixed pool that runs parallel_for over index ranges. Separate
 * from libuv's pool (which runs whole stages), so a stage's kernels can use every core. */
#ifndef HOST_RUNTIME_THREADPOOL_H
#define HOST_RUNTIME_THREADPOOL_H

#include <stdint.h>

/* Sets the number of threads (including the caller) before first use; 0 = all online cores. */
void tp_set_threads(int n);
int tp_threads(void);
/* See llmopt_host_api.parallel_for. Concurrent calls from different threads are serialised;
 * a call from inside a running chunk runs inline. */
void tp_parallel_for(int64_t n, int64_t grain, void (*fn)(void *arg, int64_t begin, int64_t end),
                     void *arg);

#endif
