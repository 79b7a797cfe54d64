/* Error values inside the host: a status code and one line a user can act on.
 * Every host function that can fail fills one of these (the SQLite errmsg pattern). */
#ifndef HOST_UTIL_ERROR_H
#define HOST_UTIL_ERROR_H

#include <llmopt/common.h>

typedef struct llmopt_error {
    int status;       /* llmopt_status; 0 while nothing failed */
    char msg[1024];   /* one line, no trailing newline */
} llmopt_error;

/* Sets e (if not NULL) and returns status, so `return error_set(e, LLMOPT_EINVAL, ...)`. */
int error_set(llmopt_error *e, int status, const char *fmt, ...) LLMOPT_PRINTF(3, 4);
/* Prefixes the message already in e with "prefix: " (to add the file or stage it came from). */
void error_prefix(llmopt_error *e, const char *fmt, ...) LLMOPT_PRINTF(2, 3);
void error_clear(llmopt_error *e);
/* A short name for a status ("invalid argument"). */
const char *status_str(int status);

#endif
