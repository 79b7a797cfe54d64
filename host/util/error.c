/* Error values: formatting the one-line messages the host prints. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int error_set(llmopt_error *e, int status, const char *fmt, ...) {
    if (!e) return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    return status;
}

void error_prefix(llmopt_error *e, const char *fmt, ...) {
    if (!e) return;
    char prefix[512], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    /* prefix, ": ", old message; truncated to fit, never overflowing */
    size_t np = strnlen(prefix, sizeof e->msg - 3), no = strnlen(old, sizeof old);
    if (np + 2 + no >= sizeof e->msg) no = sizeof e->msg - 3 - np;
    memcpy(e->msg, prefix, np);
    memcpy(e->msg + np, ": ", 2);
    memcpy(e->msg + np + 2, old, no);
    e->msg[np + 2 + no] = '\0';
}

void error_clear(llmopt_error *e) {
    if (!e) return;
    e->status = 0;
    e->msg[0] = '\0';
}

const char *status_str(int status) {
    switch (status) {
    case LLMOPT_OK: return "ok";
    case LLMOPT_EINVAL: return "invalid argument";
    case LLMOPT_ENOMEM: return "out of memory";
    case LLMOPT_EIO: return "I/O error";
    case LLMOPT_ENOTFOUND: return "not found";
    case LLMOPT_EEXIST: return "already exists";
    case LLMOPT_ECANCELED: return "cancelled";
    case LLMOPT_EABI: return "ABI mismatch";
    case LLMOPT_EFORMAT: return "malformed input";
    case LLMOPT_EUNSUPPORTED: return "unsupported";
    default: return "failed";
    }
}
