/* report.json (jansson) and the end-of-run summary table. The report is rewritten atomically
 * after each stage, so it always describes a consistent state of the run. */
#include "report.h"
#include "../util/version.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/threadpool.h"
#include "../runtime/unicode.h"
#include "../util/fs.h"

/* A JSON string of arbitrary bytes: ill-formed UTF-8 becomes U+FFFD, so report.json stays
 * valid JSON. */
static json_t *json_string_lossy(const char *s) {
    size_t n = 0;
    char *clean = uni_sanitize(s, strlen(s), &n);
    json_t *j = clean ? json_stringn(clean, n) : NULL;
    free(clean);
    return j ? j : json_string("");
}

static json_t *param_json(const param_value *v) {
    switch (v->desc->type) {
    case LLMOPT_PARAM_BOOL: return json_boolean(v->b);
    case LLMOPT_PARAM_INT: return json_integer((json_int_t)v->i);
    case LLMOPT_PARAM_FLOAT: return json_real(v->f);
    case LLMOPT_PARAM_LIST: {
        json_t *a = json_array();
        for (size_t i = 0; i < v->n_list; i++) json_array_append_new(a, json_string(v->list[i]));
        return a;
    }
    default: return json_string(v->s ? v->s : "");
    }
}

static json_t *stage_json(const pipeline *p, const llmopt_stage_ctx *c) {
    const pipeline_stage *ps = c->ps;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(ps->id));
    json_object_set_new(o, "uses", json_string(ps->stage->desc.name));
    json_object_set_new(o, "plugin", json_pack("{s:s, s:s, s:s}", "id", ps->stage->plugin->desc.id,
                                               "version", ps->stage->plugin->desc.version,
                                               "path", ps->stage->plugin->path));
    json_object_set_new(o, "status", json_string(stage_status_str(c->status)));
    if (c->err.msg[0] && c->status != STAGE_OK) json_object_set_new(o, "error", json_string(c->err.msg));
    json_t *params = json_object();
    for (size_t i = 0; i < ps->stage->desc.n_params; i++)
        json_object_set_new(params, ps->params[i].desc->name, param_json(&ps->params[i]));
    json_object_set_new(o, "params", params);
    json_t *inputs = json_object();
    for (size_t i = 0; i < ps->n_inputs; i++) {
        long from = ps->inputs[i].from;
        json_object_set_new(inputs, ps->inputs[i].slot,
                            from < 0 ? (p->model ? json_string(p->model) : json_null()) :
                                       json_string(p->stages[from].id));
    }
    json_object_set_new(o, "inputs", inputs);
    if (c->status == STAGE_OK || c->status == STAGE_FAILED || c->status == STAGE_CANCELLED) {
        json_object_set_new(o, "wall_s", json_real(c->wall_s));
        json_object_set_new(o, "peak_rss_bytes", json_integer((json_int_t)c->peak_rss));
    }
    if (c->output_dir) json_object_set_new(o, "output_dir", json_string(ps->id));
    json_t *metrics = json_array();
    for (size_t i = 0; i < c->n_metrics; i++) {
        const metric_rec *m = &c->metrics[i];
        json_t *mj = json_pack("{s:s, s:f}", "name", m->name, "value", m->value);
        if (m->unit) json_object_set_new(mj, "unit", json_string(m->unit));
        json_object_set_new(mj, "better", json_string(m->better < 0 ? "lower" : m->better > 0 ? "higher" : "none"));
        json_array_append_new(metrics, mj);
    }
    json_object_set_new(o, "metrics", metrics);
    if (c->n_texts) {
        json_t *texts = json_array();
        for (size_t i = 0; i < c->n_texts; i++)
            json_array_append_new(texts, json_pack("{s:o, s:o}", "name", json_string_lossy(c->texts[2 * i]), "text",
                                                   json_string_lossy(c->texts[2 * i + 1])));
        json_object_set_new(o, "texts", texts);
    }
    return o;
}

int report_write(const pipeline *p, const run_options *opt, const run_result *r, const char *status,
                 llmopt_error *err) {
    json_t *root = json_object();
    char when[64];
    time_t now = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_object_set_new(root, "llmopt", json_pack("{s:s, s:s, s:s}", "version", LLMOPT_VERSION,
                                                  "git_revision", llmopt_git_rev, "abi", "1.0"));
    json_object_set_new(root, "pipeline", json_string(p->name));
    json_object_set_new(root, "config", json_string(p->file));
    json_object_set_new(root, "model", p->model ? json_string(p->model) : json_null());
    json_object_set_new(root, "device", json_string(p->device));
    json_object_set_new(root, "seed", json_integer((json_int_t)p->seed));
    json_object_set_new(root, "jobs", json_integer(opt->jobs));
    json_object_set_new(root, "status", json_string(status));
    json_object_set_new(root, "updated_at", json_string(when));
    json_object_set_new(root, "wall_s", json_real(r->wall_s));
    json_object_set_new(root, "threads", json_integer(tp_threads()));
    const char *core = getenv("OPENBLAS_CORETYPE"); /* the user's, or the one the loader set */
    json_object_set_new(root, "openblas_coretype", core && *core ? json_string(core) : json_null());
    json_t *plugins = json_array();
    for (size_t i = 0; opt->reg && i < opt->reg->n_plugins; i++) {
        const plugin_rec *pl = opt->reg->plugins[i];
        if (pl->state != PLUGIN_LOADED) continue;
        /* the summary says what a kernel plugin detected (the cpu plugin: its SIMD path and
         * OpenBLAS's kernels), which the run's speed depends on */
        json_array_append_new(plugins, json_pack("{s:s, s:s, s:s, s:s?}", "id", pl->desc.id, "version",
                                                 pl->desc.version, "path", pl->path, "summary", pl->desc.summary));
    }
    json_object_set_new(root, "plugins", plugins);
    json_t *stages = json_array();
    for (size_t i = 0; i < r->n_stages; i++) {
        json_t *sj = stage_json(p, &r->stages[i]);
        json_object_set_new(sj, "seed", json_integer((json_int_t)stage_seed(p, r->stages[i].ps)));
        json_array_append_new(stages, sj);
    }
    json_object_set_new(root, "stages", stages);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (!text) return error_set(err, LLMOPT_ENOMEM, "cannot format report.json");
    size_t len = strlen(text);
    char *path = fs_join(opt->run_dir, "report.json");
    char *line = malloc(len + 2);
    int rc = LLMOPT_ENOMEM;
    if (path && line) {
        memcpy(line, text, len);
        line[len] = '\n';
        rc = fs_write_atomic(path, line, len + 1, err);
    }
    free(line);
    free(path);
    free(text);
    return rc;
}

static void fmt_metrics(const llmopt_stage_ctx *c, char *buf, size_t n) {
    buf[0] = '\0';
    size_t used = 0;
    for (size_t i = 0; i < c->n_metrics && used + 1 < n; i++) {
        const metric_rec *m = &c->metrics[i];
        int w = snprintf(buf + used, n - used, "%s%s=%.4g%s%s", i ? " " : "", m->name, m->value,
                         m->unit ? " " : "", m->unit ? m->unit : "");
        if (w < 0) break;
        used += (size_t)w;
    }
    if (!c->n_metrics && c->status != STAGE_OK) snprintf(buf, n, "%.200s", c->err.msg);
}

void report_print_summary(const pipeline *p, const run_result *r, FILE *f) {
    size_t wid = 5, wuse = 4;
    for (size_t i = 0; i < r->n_stages; i++) {
        size_t a = strlen(r->stages[i].ps->id), b = strlen(r->stages[i].ps->stage->desc.name);
        if (a > wid) wid = a;
        if (b > wuse) wuse = b;
    }
    fprintf(f, "\n%-*s  %-*s  %-9s  %8s  %s\n", (int)wid, "stage", (int)wuse, "uses", "status", "time",
            "metrics / error");
    for (size_t k = 0; k < p->n_stages; k++) {
        const llmopt_stage_ctx *c = &r->stages[p->order[k]];
        char metrics[512], t[32] = "-";
        fmt_metrics(c, metrics, sizeof metrics);
        if (c->status == STAGE_OK || c->status == STAGE_FAILED || c->status == STAGE_CANCELLED)
            snprintf(t, sizeof t, "%.2fs", c->wall_s);
        fprintf(f, "%-*s  %-*s  %-9s  %8s  %s\n", (int)wid, c->ps->id, (int)wuse, c->ps->stage->desc.name,
                stage_status_str(c->status), t, metrics);
    }
    fprintf(f, "\n%zu ok, %zu failed, %zu skipped, %zu cancelled in %.2fs\n", r->n_ok, r->n_failed,
            r->n_skipped, r->n_cancelled, r->wall_s);
}
