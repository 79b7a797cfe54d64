/* `run` and `validate`: both load the config the same way (parse, overrides, schema checks,
 * each stage's own validate); `run` then makes the run directory and hands over to the scheduler. */
#include "cli_internal.h"

#include <errno.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../config/pipeline.h"
#include "../report/report.h"
#include "../sched/scheduler.h"
#include "../util/fs.h"
#include "../util/log.h"

static void print_error(const llmopt_error *e) { fprintf(stderr, "%s\n", e->msg); }

/* Runs each stage's own validate hook (parameters only, no models). */
static int validate_stages(const pipeline *p) {
    int bad = 0;
    for (size_t i = 0; i < p->n_stages; i++) {
        const pipeline_stage *ps = &p->stages[i];
        if (!ps->stage->desc.validate) continue;
        llmopt_stage_ctx ctx;
        if (stage_ctx_init(&ctx, p, i, NULL) != 0) return EXIT_CONFIG;
        if (ps->stage->desc.validate(&ctx) != 0) {
            fprintf(stderr, "%s:%d:%d: stage '%s' (%s): %s\n", p->file, ps->line, ps->col, ps->id,
                    ps->stage->desc.name, ctx.err.msg[0] ? ctx.err.msg : "invalid parameters");
            bad = 1;
        }
        stage_ctx_clear(&ctx);
    }
    return bad ? EXIT_CONFIG : 0;
}

/* Checks that `model:` and `data:` paths exist, pointing at the config line when not. */
static int check_paths(const pipeline *p) {
    int bad = 0;
    const cfg_node *m = cfg_map_get(p->resolved, "model");
    if (p->model && !fs_exists(p->model)) {
        fprintf(stderr, "%s:%d:%d: model '%s' does not exist\n", p->file, m ? m->line : 1, m ? m->col : 1,
                p->model);
        bad = 1;
    }
    const cfg_node *data = cfg_map_get(p->resolved, "data");
    for (size_t i = 0; i < p->n_data; i++) {
        if (fs_exists(p->data[i].path)) continue;
        const cfg_node *d = cfg_map_get(data, p->data[i].name);
        fprintf(stderr, "%s:%d:%d: data '%s': file '%s' does not exist\n", p->file, d ? d->line : 1,
                d ? d->col : 1, p->data[i].name, p->data[i].path);
        bad = 1;
    }
    return bad ? EXIT_CONFIG : 0;
}

static int load_pipeline(const cli_opts *o, registry **reg, pipeline **out) {
    *out = NULL;
    int rc = cli_load_plugins(o, reg);
    if (rc != 0) return rc;
    llmopt_error err = {0};
    cfg_node *root = NULL;
    if (cfg_parse_file(o->args[0], &root, &err) != 0) {
        print_error(&err);
        return EXIT_CONFIG;
    }
    for (size_t i = 0; i < o->n_sets; i++) {
        if (cfg_apply_override(root, o->sets[i], &err) != 0) {
            print_error(&err);
            cfg_free(root);
            return EXIT_CONFIG;
        }
    }
    rc = pipeline_build(root, o->args[0], *reg, out, &err);
    cfg_free(root);
    if (rc != 0) {
        print_error(&err);
        return EXIT_CONFIG;
    }
    if ((rc = validate_stages(*out)) == 0) rc = check_paths(*out);
    return rc;
}

int cmd_validate(const cli_opts *o) {
    registry *reg = NULL;
    pipeline *p = NULL;
    int rc = load_pipeline(o, &reg, &p);
    if (rc == 0) {
        printf("%s: ok: pipeline '%s', %zu stage%s; run order:", o->args[0], p->name, p->n_stages,
               p->n_stages == 1 ? "" : "s");
        for (size_t k = 0; k < p->n_stages; k++) printf(" %s", p->stages[p->order[k]].id);
        printf("\n");
    }
    pipeline_free(p);
    registry_free(reg);
    return rc;
}

static int dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = 0;
    closedir(d);
    return empty;
}

/* --out, or runs/<name>-<YYYYmmdd-HHMMSS> (with -2, -3... if two runs start in one second).
 * An existing non-empty directory is never reused: nothing of an earlier run is overwritten. */
static char *make_run_dir(const cli_opts *o, const pipeline *p, llmopt_error *err) {
    char path[4096];
    if (o->out) {
        if (fs_exists(o->out) && !(fs_is_dir(o->out) && dir_is_empty(o->out))) {
            error_set(err, LLMOPT_EEXIST, "%s: already exists and is not an empty directory; choose another --out",
                      o->out);
            return NULL;
        }
        snprintf(path, sizeof path, "%s", o->out);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
        snprintf(path, sizeof path, "runs/%s-%s", p->name, stamp);
        for (int k = 2; fs_exists(path) && k < 1000; k++)
            snprintf(path, sizeof path, "runs/%s-%s-%d", p->name, stamp, k);
    }
    if (fs_mkdirs(path, err) != 0) return NULL;
    return strdup(path);
}

static int write_resolved_config(const pipeline *p, const char *run_dir, llmopt_error *err) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    fprintf(f, "# resolved config of %s (overrides applied, defaults filled in)\n", p->file);
    int rc = cfg_emit(p->resolved, f);
    fclose(f);
    char *path = fs_join(run_dir, "config.yaml");
    if (rc == 0 && path) rc = fs_write_atomic(path, buf, len, err);
    else if (rc != 0) error_set(err, rc, "cannot write the resolved config");
    free(path);
    free(buf);
    return rc;
}

int cmd_run(const cli_opts *o) {
    registry *reg = NULL;
    pipeline *p = NULL;
    char *run_dir = NULL;
    llmopt_error err = {0};
    int rc = load_pipeline(o, &reg, &p);
    if (rc != 0) goto out;
    if (!(run_dir = make_run_dir(o, p, &err)) || write_resolved_config(p, run_dir, &err) != 0) {
        print_error(&err);
        rc = EXIT_IO;
        goto out;
    }
    log_msg(LLMOPT_LOG_INFO, "run '%s': %zu stages, up to %d at a time, writing to %s", p->name, p->n_stages,
            o->jobs, run_dir);
    cli_blas_hint();
    run_options opt = {.run_dir = run_dir, .jobs = o->jobs, .tty = isatty(STDERR_FILENO), .reg = reg};
    run_result r;
    int srv = sched_run(p, &opt, &r, &err);
    if (srv != 0) print_error(&err);
    const char *status = r.cancelled ? "cancelled" : (srv || r.n_failed || r.n_skipped || r.n_cancelled) ? "failed" : "ok";
    if (report_write(p, &opt, &r, status, &err) != 0) {
        print_error(&err);
        rc = EXIT_IO;
    }
    report_print_summary(p, &r, stdout);
    printf("run directory: %s\n", run_dir);
    if (!rc) rc = r.cancelled ? EXIT_CANCELLED : strcmp(status, "ok") != 0 ? EXIT_STAGE_FAILED : 0;
    run_result_free(&r);
out:
    free(run_dir);
    pipeline_free(p);
    registry_free(reg);
    return rc;
}
