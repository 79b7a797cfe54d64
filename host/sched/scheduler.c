/* The scheduler: stages run on libuv's thread pool as soon as their inputs are done, at most
 * `jobs` at a time; the loop thread owns all bookkeeping (statuses, directories, the report),
 * pool threads only run stage code. Cancellation is cooperative: a signal sets a flag stages poll. */
#include "scheduler.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "../report/progress.h"
#include "../report/report.h"
#include "../runtime/runtime.h"
#include "../util/fs.h"
#include "../util/log.h"

typedef struct sched sched;

typedef struct job {
    uv_work_t req;
    sched *s;
    size_t index;
    int rc;
} job;

struct sched {
    const pipeline *p;
    const run_options *opt;
    run_result *r;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_timer_t timer;
    job *jobs;
    atomic_int cancel;
    size_t running;
    int n_signals;
    int finished;
    llmopt_model *base;       /* the pipeline's model, loaded once, shared by every stage */
    size_t *consumers_left;   /* per stage: dependants that have not finished yet */
};

const char *stage_status_str(stage_status st) {
    static const char *names[] = {"pending", "running", "ok", "failed", "skipped", "cancelled"};
    return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "?";
}

static int stage_saves_output(const pipeline *p, const pipeline_stage *ps) {
    for (size_t i = 0; i < p->n_outputs; i++)
        if (strcmp(p->outputs[i], ps->id) == 0) return 1;
    return 0;
}

static char *partial_dir(const sched *s, const pipeline_stage *ps) {
    char name[512];
    snprintf(name, sizeof name, ".%s.partial", ps->id);
    return fs_join(s->opt->run_dir, name);
}

/* Pool thread: everything the stage does, and saving its model when the config asks for it. */
static void work_cb(uv_work_t *req) {
    job *j = req->data;
    sched *s = j->s;
    llmopt_stage_ctx *c = &s->r->stages[j->index];
    const pipeline_stage *ps = c->ps;
    const llmopt_stage_desc *d = &ps->stage->desc;

    for (size_t i = 0; i < ps->n_inputs; i++) {
        long from = ps->inputs[i].from;
        c->inputs[i] = from < 0 ? s->base : s->r->stages[from].output;
    }
    for (size_t i = 0; i < d->n_inputs; i++) {
        const llmopt_input_desc *in = &ps->stage->inputs[i];
        const llmopt_model *m = NULL;
        for (size_t k = 0; k < ps->n_inputs; k++)
            if (strcmp(ps->inputs[k].slot, in->name) == 0) m = c->inputs[k];
        if (in->required && !m) {
            j->rc = error_set(&c->err, LLMOPT_EINVAL,
                              "input '%s' is required but there is no model for it%s", in->name,
                              strcmp(in->name, "model") == 0 ? " (set 'model:' in the config)" : "");
            return;
        }
    }
    if (d->validate && (j->rc = d->validate(c)) != 0) return;
    j->rc = d->run(c);
    if (j->rc != 0) return;
    if ((d->flags & LLMOPT_STAGE_OUTPUTS_MODEL) && !c->output) {
        j->rc = error_set(&c->err, LLMOPT_EFAIL, "stage finished without setting its output model");
        return;
    }
    if (c->output) rt_model_add_provenance(c->output, ps->id, d->name);
    if (c->output && stage_saves_output(s->p, ps)) {
        char *mdir = fs_join(c->dir, "model");
        j->rc = mdir ? rt_model_save(c->output, mdir, &c->err) : LLMOPT_ENOMEM;
        free(mdir);
    }
}

static void schedule(sched *s);

/* Loop thread: a stage finished. Keep its files (rename) or remove them, free inputs no one
 * needs any more, update the report, start what became ready. */
static void after_work_cb(uv_work_t *req, int uv_status) {
    job *j = req->data;
    sched *s = j->s;
    llmopt_stage_ctx *c = &s->r->stages[j->index];
    const pipeline_stage *ps = c->ps;
    s->running--;
    c->wall_s = now_monotonic() - c->start_s;
    c->peak_rss = peak_rss_bytes();
    int rc = uv_status == UV_ECANCELED ? LLMOPT_ECANCELED : j->rc;

    if (rc == 0) {
        char *final = fs_join(s->opt->run_dir, ps->id);
        if (rmdir(c->dir) == 0) { /* empty: the stage wrote no files */
            free(final);
        } else if (final && rename(c->dir, final) == 0) {
            c->output_dir = final;
        } else {
            rc = error_set(&c->err, LLMOPT_EIO, "cannot move %s into place", c->dir);
            free(final);
        }
    }
    if (rc != 0) fs_rmtree(c->dir);
    free(c->dir);
    c->dir = NULL;

    if (rc == 0) {
        c->status = STAGE_OK;
        log_msg(LLMOPT_LOG_INFO, "stage '%s' (%s) done in %.2fs", ps->id, ps->stage->desc.name, c->wall_s);
    } else if (rc == LLMOPT_ECANCELED || atomic_load(&s->cancel)) {
        c->status = STAGE_CANCELLED;
        if (!c->err.msg[0]) error_set(&c->err, LLMOPT_ECANCELED, "cancelled");
        log_msg(LLMOPT_LOG_WARN, "stage '%s' (%s) cancelled after %.2fs", ps->id, ps->stage->desc.name,
                c->wall_s);
    } else {
        c->status = STAGE_FAILED;
        if (!c->err.msg[0]) error_set(&c->err, rc, "%s", status_str(rc));
        log_msg(LLMOPT_LOG_ERROR, "stage '%s' (%s) failed: %s", ps->id, ps->stage->desc.name, c->err.msg);
    }

    for (size_t k = 0; k < ps->n_deps; k++) {
        size_t d = ps->deps[k];
        if (--s->consumers_left[d] == 0 && s->r->stages[d].output) {
            rt_model_unref(s->r->stages[d].output);
            s->r->stages[d].output = NULL;
        }
    }
    if (s->consumers_left[j->index] == 0 && c->output) {
        rt_model_unref(c->output);
        c->output = NULL;
    }
    llmopt_error err = {0};
    if (report_write(s->p, s->opt, s->r, "running", &err) != 0) log_msg(LLMOPT_LOG_ERROR, "%s", err.msg);
    schedule(s);
}

static void start_stage(sched *s, size_t i) {
    llmopt_stage_ctx *c = &s->r->stages[i];
    llmopt_error err = {0};
    c->dir = partial_dir(s, c->ps);
    if (!c->dir) {
        c->status = STAGE_FAILED;
        error_set(&c->err, LLMOPT_ENOMEM, "out of memory");
        return;
    }
    fs_rmtree(c->dir);
    if (fs_mkdirs(c->dir, &err) != 0) {
        c->status = STAGE_FAILED;
        c->err = err;
        free(c->dir);
        c->dir = NULL;
        log_msg(LLMOPT_LOG_ERROR, "stage '%s' failed: %s", c->ps->id, err.msg);
        return;
    }
    c->status = STAGE_RUNNING;
    c->start_s = now_monotonic();
    job *j = &s->jobs[i];
    j->s = s;
    j->index = i;
    j->rc = 0;
    j->req.data = j;
    log_msg(LLMOPT_LOG_INFO, "stage '%s' (%s) started", c->ps->id, c->ps->stage->desc.name);
    s->running++;
    int rc = uv_queue_work(&s->loop, &j->req, work_cb, after_work_cb);
    if (rc != 0) {
        s->running--;
        c->status = STAGE_FAILED;
        error_set(&c->err, LLMOPT_EFAIL, "cannot queue work: %s", uv_strerror(rc));
    }
}

static void close_handles(sched *s) {
    if (s->finished) return;
    s->finished = 1;
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->timer, NULL);
}

/* Starts every stage whose inputs are done, in topological order; marks stages whose inputs
 * failed as skipped; finishes the loop when nothing is running and nothing can start. */
static void schedule(sched *s) {
    const pipeline *p = s->p;
    int cancel = atomic_load(&s->cancel);
    for (size_t k = 0; k < p->n_stages; k++) {
        size_t i = p->order[k];
        llmopt_stage_ctx *c = &s->r->stages[i];
        if (c->status != STAGE_PENDING) continue;
        if (cancel) {
            c->status = STAGE_CANCELLED;
            error_set(&c->err, LLMOPT_ECANCELED, "not started: the run was cancelled");
            continue;
        }
        int ready = 1;
        for (size_t d = 0; d < c->ps->n_deps && ready; d++) {
            const llmopt_stage_ctx *dep = &s->r->stages[c->ps->deps[d]];
            if (dep->status == STAGE_OK) continue;
            ready = 0;
            if (dep->status == STAGE_FAILED || dep->status == STAGE_SKIPPED ||
                dep->status == STAGE_CANCELLED) {
                c->status = STAGE_SKIPPED;
                error_set(&c->err, LLMOPT_EFAIL, "skipped: input stage '%s' %s", dep->ps->id,
                          dep->status == STAGE_FAILED ? "failed" : "did not run");
                log_msg(LLMOPT_LOG_WARN, "stage '%s' %s", c->ps->id, c->err.msg);
            }
        }
        if (!ready || s->running >= (size_t)s->opt->jobs) continue;
        start_stage(s, i);
    }
    progress_update();
    if (s->running == 0) close_handles(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    sched *s = h->data;
    s->r->cancelled = 1;
    if (++s->n_signals == 1) {
        atomic_store(&s->cancel, 1);
        log_msg(LLMOPT_LOG_WARN,
                "%s: cancelling; running stages stop at their next check, finished stages are kept "
                "(signal again to quit now)", signum == SIGINT ? "interrupted" : "terminated");
        schedule(s);
        return;
    }
    /* Second signal: remove the partial directories of running stages and leave at once. */
    for (size_t i = 0; i < s->r->n_stages; i++)
        if (s->r->stages[i].dir) fs_rmtree(s->r->stages[i].dir);
    progress_end();
    log_msg(LLMOPT_LOG_ERROR, "quitting without waiting for running stages");
    _exit(130);
}

static void on_timer(uv_timer_t *t) {
    (void)t;
    progress_update();
}

static int needs_base_model(const pipeline *p) {
    for (size_t i = 0; i < p->n_stages; i++)
        for (size_t k = 0; k < p->stages[i].n_inputs; k++)
            if (p->stages[i].inputs[k].from < 0) return 1;
    return 0;
}

static int result_init(run_result *r, const pipeline *p, atomic_int *cancel) {
    memset(r, 0, sizeof *r);
    r->stages = calloc(p->n_stages ? p->n_stages : 1, sizeof *r->stages);
    if (!r->stages) return LLMOPT_ENOMEM;
    r->n_stages = p->n_stages;
    for (size_t i = 0; i < p->n_stages; i++)
        if (stage_ctx_init(&r->stages[i], p, i, cancel) != 0) return LLMOPT_ENOMEM;
    return 0;
}

static void count_outcomes(run_result *r) {
    for (size_t i = 0; i < r->n_stages; i++) {
        switch (r->stages[i].status) {
        case STAGE_OK: r->n_ok++; break;
        case STAGE_FAILED: r->n_failed++; break;
        case STAGE_SKIPPED: r->n_skipped++; break;
        default: r->n_cancelled++; break;
        }
    }
}

int sched_run(const pipeline *p, const run_options *opt, run_result *r, llmopt_error *err) {
    sched s;
    memset(&s, 0, sizeof s);
    s.p = p;
    s.opt = opt;
    s.r = r;
    atomic_init(&s.cancel, 0);
    double t0 = now_monotonic();
    if (result_init(r, p, &s.cancel) != 0) return error_set(err, LLMOPT_ENOMEM, "out of memory");

    s.jobs = calloc(p->n_stages, sizeof *s.jobs);
    s.consumers_left = calloc(p->n_stages, sizeof *s.consumers_left);
    if (!s.jobs || !s.consumers_left) {
        free(s.jobs);
        free(s.consumers_left);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < p->n_stages; i++)
        for (size_t k = 0; k < p->stages[i].n_deps; k++) s.consumers_left[p->stages[i].deps[k]]++;

    int rc = 0;
    if (p->model && needs_base_model(p)) {
        log_msg(LLMOPT_LOG_INFO, "loading model %s", p->model);
        rc = rt_model_load(p->model, &s.base, err);
    }
    if (rc == 0) {
        /* libuv sizes its pool from this variable when the pool first starts. */
        char jobs[16];
        snprintf(jobs, sizeof jobs, "%d", opt->jobs);
        setenv("UV_THREADPOOL_SIZE", jobs, 0);
        uv_loop_init(&s.loop);
        uv_signal_init(&s.loop, &s.sigint);
        uv_signal_init(&s.loop, &s.sigterm);
        uv_timer_init(&s.loop, &s.timer);
        s.sigint.data = s.sigterm.data = &s;
        uv_signal_start(&s.sigint, on_signal, SIGINT);
        uv_signal_start(&s.sigterm, on_signal, SIGTERM);
        uv_timer_start(&s.timer, on_timer, 200, opt->tty ? 200 : 1000);
        progress_begin(r, opt->tty);
        schedule(&s);
        uv_run(&s.loop, UV_RUN_DEFAULT);
        progress_end();
        uv_loop_close(&s.loop);
    } else {
        for (size_t i = 0; i < p->n_stages; i++) {
            r->stages[i].status = STAGE_SKIPPED;
            error_set(&r->stages[i].err, rc, "not started: the pipeline's model did not load");
        }
    }
    for (size_t i = 0; i < p->n_stages; i++) {
        if (r->stages[i].output) {
            rt_model_unref(r->stages[i].output);
            r->stages[i].output = NULL;
        }
    }
    rt_model_unref(s.base);
    free(s.jobs);
    free(s.consumers_left);
    r->wall_s = now_monotonic() - t0;
    count_outcomes(r);
    return rc;
}

void run_result_free(run_result *r) {
    for (size_t i = 0; i < r->n_stages; i++) stage_ctx_clear(&r->stages[i]);
    free(r->stages);
    memset(r, 0, sizeof *r);
}
