/* The scheduler: runs a validated pipeline's stages on libuv's thread pool in dependency order,
 * independent branches in parallel, with cooperative cancellation on SIGINT/SIGTERM. */
#ifndef HOST_SCHED_SCHEDULER_H
#define HOST_SCHED_SCHEDULER_H

#include "../config/pipeline.h"
#include "../plugin/registry.h"
#include "stage_ctx.h"

typedef struct run_options {
    const char *run_dir;   /* exists already; stage outputs and report.json go here */
    int jobs;              /* stages at most in parallel (>= 1) */
    int tty;               /* 1: live progress lines; 0: plain lines */
    const registry *reg;   /* for plugin ids in the report */
} run_options;

typedef struct run_result {
    llmopt_stage_ctx *stages;   /* one per pipeline stage, in config order */
    size_t n_stages;
    int cancelled;              /* a signal arrived */
    double wall_s;
    size_t n_ok, n_failed, n_skipped, n_cancelled;
} run_result;

/* Runs p. Returns 0 when the run happened (look at result for stage outcomes), or an error when
 * it could not start (pipeline model failed to load, loop setup failed). result is filled in
 * both cases; free it with run_result_free. report.json is written (atomically) after every
 * finished stage, so an interrupted run still reports what finished. */
int sched_run(const pipeline *p, const run_options *opt, run_result *result, llmopt_error *err);
void run_result_free(run_result *r);
const char *stage_status_str(stage_status st);

#endif
