/* The host's log: level filter and a lock so lines from pool threads never interleave. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

static int g_level = LLMOPT_LOG_INFO;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static void (*g_before)(void), (*g_after)(void);

void log_set_hooks(void (*before)(void), void (*after)(void)) {
    log_lock();
    g_before = before;
    g_after = after;
    log_unlock();
}

void log_set_level(int level) { g_level = level; }
int log_get_level(void) { return g_level; }
void log_lock(void) { pthread_mutex_lock(&g_lock); }
void log_unlock(void) { pthread_mutex_unlock(&g_lock); }

void log_msg(int level, const char *fmt, ...) {
    static const char *names[] = {"error", "warning", "info", "debug"};
    if (level > g_level) return;
    if (level < 0) level = 0;
    if (level > 3) level = 3;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_lock();
    if (g_before) g_before();
    if (level == LLMOPT_LOG_INFO)
        fprintf(stderr, "llmopt: %s\n", line);
    else
        fprintf(stderr, "llmopt: %s: %s\n", names[level], line);
    if (g_after) g_after();
    fflush(stderr);
    log_unlock();
}
