/* The private side of llmopt_stage_ctx: what one stage's run sees (parameters, inputs, output,
 * metrics, progress, cancel flag) and what the scheduler records about it. The SDK only ever
 * sees the opaque pointer; host/runtime/host_api.c implements the SDK calls on it. */
#ifndef HOST_SCHED_STAGE_CTX_H
#define HOST_SCHED_STAGE_CTX_H

#include <pthread.h>
#include <stdatomic.h>
#include <llmopt/llmopt.h>
#include "../config/pipeline.h"
#include "../util/error.h"

typedef enum stage_status {
    STAGE_PENDING = 0,
    STAGE_RUNNING,
    STAGE_OK,
    STAGE_FAILED,
    STAGE_SKIPPED,   /* an input stage did not succeed */
    STAGE_CANCELLED
} stage_status;

typedef struct metric_rec {
    char *name;
    double value;
    char *unit;
    int better;
} metric_rec;

struct llmopt_stage_ctx {
    const pipeline *p;
    const pipeline_stage *ps;
    size_t index;
    const llmopt_model **inputs;   /* one per ps->inputs, borrowed */
    llmopt_model *output;          /* set by the stage */
    atomic_int *cancel;            /* shared by the whole run */
    char *dir;                     /* the stage's temporary directory, NULL when not running */
    int device;

    /* written by the stage thread, read by the display: guarded by lock */
    pthread_mutex_t lock;
    double progress;               /* -1 unknown */
    char progress_msg[160];
    metric_rec *metrics;
    size_t n_metrics, cap_metrics;
    char **texts;                  /* report_text: name, text, name, text, ... */
    size_t n_texts;                /* pairs */

    /* results */
    stage_status status;
    llmopt_error err;
    double start_s, wall_s;        /* monotonic seconds */
    size_t peak_rss;               /* process peak RSS when the stage ended, bytes */
    char *output_dir;              /* final directory of the stage's files, if any */
};

/* Prepares a context for stage `index` of p (no models, not running): used for validate. */
int stage_ctx_init(llmopt_stage_ctx *ctx, const pipeline *p, size_t index, atomic_int *cancel);
void stage_ctx_clear(llmopt_stage_ctx *ctx);

/* The host API table handed to every plugin. */
const llmopt_host_api *host_api_table(void);
/* Kernel lookups go to this registry (set once after loading). */
void host_api_set_registry(const struct registry *reg);

/* The seed a stage sees: the pipeline seed mixed with the stage id. */
uint64_t stage_seed(const pipeline *p, const pipeline_stage *ps);

double now_monotonic(void);
size_t peak_rss_bytes(void);

#endif
