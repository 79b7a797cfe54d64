/* Progress display. On a TTY: one live line per running stage, redrawn in place (log lines are
 * printed above it). Otherwise: plain lines when stages start and finish, and a progress line
 * per stage at most every 10 seconds. */
#ifndef HOST_REPORT_PROGRESS_H
#define HOST_REPORT_PROGRESS_H

#include "../sched/scheduler.h"

void progress_begin(const run_result *r, int tty);
/* Called from the loop thread on a timer and on every state change. */
void progress_update(void);
/* Erases the live block (before the summary). */
void progress_end(void);

#endif
