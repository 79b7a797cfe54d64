/* The host's log: one line per message on stderr, "llmopt: error: ...". Thread-safe. */
#ifndef HOST_UTIL_LOG_H
#define HOST_UTIL_LOG_H

#include <llmopt/common.h>

/* Messages above this level are dropped (default LLMOPT_LOG_INFO; -q gives WARN, -v DEBUG). */
void log_set_level(int level);
int log_get_level(void);
void log_msg(int level, const char *fmt, ...) LLMOPT_PRINTF(2, 3);

/* The progress display erases its live lines before a log line and redraws them after;
 * both hooks run with the log lock held. NULL to remove. */
void log_set_hooks(void (*before)(void), void (*after)(void));

/* Serialises writers of stderr (the progress display shares it). */
void log_lock(void);
void log_unlock(void);

#endif
