/* report.json: what ran, with which plugins and versions, each stage's status, metrics, wall
 * time and peak memory, the seed, and the host's version and git revision. */
#ifndef HOST_REPORT_REPORT_H
#define HOST_REPORT_REPORT_H

#include <stdio.h>
#include "../sched/scheduler.h"

/* Writes <run_dir>/report.json atomically. status: "running", "ok", "failed" or "cancelled". */
int report_write(const pipeline *p, const run_options *opt, const run_result *r,
                 const char *status, llmopt_error *err);
/* The summary table printed at the end of a run. */
void report_print_summary(const pipeline *p, const run_result *r, FILE *f);

#endif
