/* From a parsed config to a validated pipeline: top-level keys, data sets, stages bound to the
 * registry, parameters checked against their typed schemas (defaults filled in), inputs wired,
 * and a topological order. Every error names file:line:col and what was expected. */
#include "pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dag/dag.h"
#include "../runtime/data.h"
#include "../util/strutil.h"

static const char *const TOP_KEYS[] = {"name", "model", "device", "matmul_precision", "seed",
                                       "data", "stages", "outputs"};
static const char *const STAGE_KEYS[] = {"id", "uses", "with", "inputs"};
static const char *const DATA_KEYS[] = {"path", "split"};
static const char *const DEVICES[] = {"auto", "cpu", "cuda"};
/* in the order of llmopt_matmul_precision */
static const char *const PRECISIONS[] = {"highest", "medium"};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- small helpers -------------------------------------------------------------------- */

static char *str_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int oom(llmopt_error *err) {
    return error_set(err, LLMOPT_ENOMEM, "out of memory building the pipeline");
}

/* Joins names with ", " into buf (truncated to cap). */
static const char *join(char *buf, size_t cap, const char *const *names, size_t n) {
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", names[i]);
    }
    return buf;
}

static int all_chars_in(const char *s, const char *extra) {
    if (!*s) return 0;
    for (; *s; s++) {
        char c = *s;
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && !strchr(extra, c)) return 0;
    }
    return 1;
}

static const char *kind_str(const cfg_node *n) {
    return n->kind == CFG_MAP ? "a map" : n->kind == CFG_SEQ ? "a sequence" : "a scalar";
}

/* A non-null scalar's text, copied. what names the value for the message. */
static int get_string(const cfg_node *v, const char *what, char **out, llmopt_error *err) {
    if (v->kind != CFG_SCALAR || cfg_scalar_is_null(v))
        return cfg_error(err, v, LLMOPT_EINVAL, "%s: expected a string, got %s", what,
                         v->kind == CFG_SCALAR ? "nothing" : kind_str(v));
    *out = str_dup(v->str);
    return *out ? 0 : oom(err);
}

/* Refuses keys of map not in allowed; ctx prefixes the message ("" for the top level). */
static int check_keys(const cfg_node *map, const char *const *allowed, size_t n, const char *ctx,
                      llmopt_error *err) {
    char list[256];
    for (size_t i = 0; i < map->n; i++) {
        size_t k = 0;
        while (k < n && strcmp(map->keys[i], allowed[k]) != 0) k++;
        if (k < n) continue;
        join(list, sizeof list, allowed, n);
        if (!*ctx)
            return cfg_error(err, map->key_nodes[i], LLMOPT_EINVAL,
                             "unknown top-level key '%s' (expected one of: %s)", map->keys[i], list);
        return cfg_error(err, map->key_nodes[i], LLMOPT_EINVAL,
                         "%s: unknown key '%s' (expected one of: %s)", ctx, map->keys[i], list);
    }
    return 0;
}

/* A map, or NULL for an absent or null value; other kinds are an error. */
static int get_map(const cfg_node *v, const char *what, const cfg_node **out, llmopt_error *err) {
    *out = NULL;
    if (!v || cfg_scalar_is_null(v)) return 0;
    if (v->kind != CFG_MAP)
        return cfg_error(err, v, LLMOPT_EINVAL, "%s: expected a map, got %s", what, kind_str(v));
    *out = v;
    return 0;
}

/* ---- parameters ----------------------------------------------------------------------- */

const char *param_type_str(int type) {
    switch (type) {
    case LLMOPT_PARAM_BOOL: return "bool";
    case LLMOPT_PARAM_INT: return "int";
    case LLMOPT_PARAM_FLOAT: return "float";
    case LLMOPT_PARAM_STRING: return "string";
    case LLMOPT_PARAM_ENUM: return "enum";
    case LLMOPT_PARAM_LIST: return "list";
    default: return "unknown";
    }
}

/* "expected an integer in [2, 8], got '9'": what the schema wants and what the value was. */
static int expected(const llmopt_param_desc *d, const cfg_node *v, llmopt_error *err) {
    char want[320], got[160];
    int range = d->min < d->max;
    switch (d->type) {
    case LLMOPT_PARAM_BOOL: snprintf(want, sizeof want, "true or false"); break;
    case LLMOPT_PARAM_INT:
        if (range)
            snprintf(want, sizeof want, "an integer in [%lld, %lld]", (long long)d->min,
                     (long long)d->max);
        else
            snprintf(want, sizeof want, "an integer");
        break;
    case LLMOPT_PARAM_FLOAT:
        if (range) snprintf(want, sizeof want, "a number in [%g, %g]", d->min, d->max);
        else snprintf(want, sizeof want, "a number");
        break;
    case LLMOPT_PARAM_ENUM: {
        size_t len = (size_t)snprintf(want, sizeof want, "one of: ");
        for (const char *c = d->choices ? d->choices : ""; *c && len + 3 < sizeof want; c++) {
            if (*c == '|') want[len++] = ',';
            want[len++] = *c == '|' ? ' ' : *c;
        }
        want[len] = '\0';
        break;
    }
    case LLMOPT_PARAM_LIST: snprintf(want, sizeof want, "a list of scalars"); break;
    default: snprintf(want, sizeof want, "a string"); break;
    }
    if (v->kind == CFG_SCALAR) snprintf(got, sizeof got, "'%.120s'", v->str);
    else snprintf(got, sizeof got, "%s", kind_str(v));
    return error_set(err, LLMOPT_EINVAL, "expected %s, got %s", want, got);
}

static int enum_has(const char *choices, const char *s) {
    size_t n = strlen(s);
    for (const char *c = choices; c && *c;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && strncmp(c, s, n) == 0) return 1;
        c = bar ? bar + 1 : c + len;
    }
    return 0;
}

static int list_push(param_value *out, const char *s) {
    char **l = realloc(out->list, (out->n_list + 1) * sizeof *l);
    if (!l) return LLMOPT_ENOMEM;
    out->list = l;
    if (!(l[out->n_list] = str_dup(s))) return LLMOPT_ENOMEM;
    out->n_list++;
    return 0;
}

/* A sequence of scalars, or one scalar taken as a list of one (null: an empty list). */
static int parse_list(const llmopt_param_desc *d, const cfg_node *v, param_value *out,
                      llmopt_error *err) {
    if (v->kind == CFG_MAP) return expected(d, v, err);
    if (v->kind == CFG_SCALAR)
        return cfg_scalar_is_null(v) || list_push(out, v->str) == 0 ? 0 : oom(err);
    for (size_t i = 0; i < v->n; i++) {
        if (v->items[i]->kind != CFG_SCALAR) return expected(d, v->items[i], err);
        if (list_push(out, v->items[i]->str) != 0) return oom(err);
    }
    return 0;
}

static int parse_scalar_param(const llmopt_param_desc *d, const cfg_node *v, param_value *out,
                              llmopt_error *err) {
    int range = d->min < d->max;
    long long i;
    if (d->type == LLMOPT_PARAM_STRING || d->type == LLMOPT_PARAM_ENUM) {
        if (d->type == LLMOPT_PARAM_ENUM && !enum_has(d->choices, v->str)) return expected(d, v, err);
        out->s = str_dup(v->str);
        return out->s ? 0 : oom(err);
    }
    switch (d->type) {
    case LLMOPT_PARAM_BOOL:
        return cfg_scalar_bool(v, &out->b) == 0 ? 0 : expected(d, v, err);
    case LLMOPT_PARAM_INT:
        if (cfg_scalar_int(v, &i) != 0 || (range && (i < d->min || i > d->max)))
            return expected(d, v, err);
        out->i = i;
        return 0;
    case LLMOPT_PARAM_FLOAT:
        if (cfg_scalar_float(v, &out->f) != 0 || (range && !(out->f >= d->min && out->f <= d->max)))
            return expected(d, v, err);
        return 0;
    default:
        return error_set(err, LLMOPT_EINVAL, "unknown parameter type %d", (int)d->type);
    }
}

int param_parse(const llmopt_param_desc *d, const cfg_node *val, param_value *out,
                llmopt_error *err) {
    memset(out, 0, sizeof *out);
    out->desc = d;
    int rc;
    if (d->type == LLMOPT_PARAM_LIST) rc = parse_list(d, val, out, err);
    else if (val->kind != CFG_SCALAR) rc = expected(d, val, err);
    else rc = parse_scalar_param(d, val, out, err);
    if (rc != 0) param_value_clear(out);
    return rc;
}

void param_value_clear(param_value *v) {
    if (!v) return;
    free(v->s);
    for (size_t i = 0; i < v->n_list; i++) free(v->list[i]);
    free(v->list);
    v->s = NULL;
    v->list = NULL;
    v->n_list = 0;
}

/* The default as a node of the resolved config: a sequence for a list ("a|b" spelling), else
 * a scalar, quoted when a string would otherwise read back as a bool, number or null. */
static cfg_node *default_node(const llmopt_param_desc *d, const cfg_node *at) {
    const char *def = d->default_value ? d->default_value : "";
    if (d->type != LLMOPT_PARAM_LIST) {
        cfg_node *n = cfg_new_scalar(at->file, at->line, at->col, def, 0);
        long long i;
        int b;
        if (n && d->type == LLMOPT_PARAM_STRING)
            n->quoted = cfg_scalar_is_null(n) || cfg_scalar_bool(n, &b) == 0 ||
                        cfg_scalar_int(n, &i) == 0;
        return n;
    }
    cfg_node *seq = cfg_new_seq(at->file, at->line, at->col);
    for (const char *c = def; seq && *c;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        char item[256];
        snprintf(item, sizeof item, "%.*s", (int)(len < 255 ? len : 255), c);
        if (cfg_seq_push(seq, cfg_new_scalar(at->file, at->line, at->col, item, 0)) != 0) {
            cfg_free(seq);
            return NULL;
        }
        c = bar ? bar + 1 : c + len;
    }
    return seq;
}

const param_value *pipeline_param(const pipeline_stage *s, const char *name) {
    if (!s || !s->stage || !s->params) return NULL;
    for (uint32_t i = 0; i < s->stage->desc.n_params; i++)
        if (strcmp(s->params[i].desc->name, name) == 0) return &s->params[i];
    return NULL;
}

/* ---- building ------------------------------------------------------------------------- */

typedef struct build {
    const registry *reg;
    pipeline *p;
    const cfg_node *stages;   /* the config's `stages` sequence */
    cfg_node *res_stages;     /* the same in p->resolved */
    llmopt_error *err;
} build;

long pipeline_find_stage(const pipeline *p, const char *id) {
    for (size_t i = 0; p && i < p->n_stages; i++)
        if (p->stages[i].id && strcmp(p->stages[i].id, id) == 0) return (long)i;
    return -1;
}

static int unknown_stage(const build *b, const cfg_node *uses) {
    size_t n = b->reg->n_stages;
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names) return oom(b->err);
    for (size_t i = 0; i < n; i++) names[i] = b->reg->stages[i]->desc.name;
    const char *best = str_suggest(uses->str, names, n);
    char hint[200] = "";
    if (best) snprintf(hint, sizeof hint, "; did you mean '%s'?", best);
    free(names);
    return cfg_error(b->err, uses, LLMOPT_EINVAL,
                     "unknown stage '%s' (run 'llmopt-host plugins' to list stages)%s", uses->str,
                     hint);
}

static int unknown_param(const pipeline_stage *s, const cfg_node *key, llmopt_error *err) {
    const llmopt_param_desc *ps = s->stage->params;
    uint32_t n = s->stage->desc.n_params;
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names) return oom(err);
    for (uint32_t i = 0; i < n; i++) names[i] = ps[i].name;
    char list[512], hint[200] = "";
    const char *best = str_suggest(key->str, names, n);
    if (best) snprintf(hint, sizeof hint, "; did you mean '%s'?", best);
    if (n) join(list, sizeof list, names, n);
    free(names);
    if (!n)
        return cfg_error(err, key, LLMOPT_EINVAL,
                         "stage '%s' (%s): unknown parameter '%s' (this stage takes none)", s->id,
                         s->stage->desc.name, key->str);
    return cfg_error(err, key, LLMOPT_EINVAL,
                     "stage '%s' (%s): unknown parameter '%s' (parameters: %s)%s", s->id,
                     s->stage->desc.name, key->str, list, hint);
}

/* The `with` map of the resolved copy of a stage, created when the config had none. */
static cfg_node *resolved_with(cfg_node *res_item) {
    cfg_node *w = cfg_map_get(res_item, "with");
    if (w && w->kind == CFG_MAP) return w;
    w = cfg_new_map(res_item->file, res_item->line, res_item->col);
    return w && cfg_map_set(res_item, "with", w) == 0 ? w : NULL;
}

/* One absent parameter: its default (parsed as if written in the config) or an error. */
static int fill_default(const build *b, pipeline_stage *s, const llmopt_param_desc *d,
                        const cfg_node *at, cfg_node *res_with, param_value *pv) {
    if (d->required || !d->default_value)
        return cfg_error(b->err, at, LLMOPT_EINVAL, "stage '%s' (%s): missing required parameter "
                         "'%s' (%s)", s->id, s->stage->desc.name, d->name, param_type_str(d->type));
    cfg_node *def = default_node(d, at);
    if (!def) return oom(b->err);
    int rc = param_parse(d, def, pv, b->err);
    if (rc != 0) {
        cfg_free(def);
        error_prefix(b->err, "stage '%s' (%s): default of parameter '%s'", s->id,
                     s->stage->desc.name, d->name);
        return rc;
    }
    pv->from_default = 1;
    return cfg_map_set(res_with, d->name, def) == 0 ? 0 : oom(b->err);
}

static int build_params(const build *b, pipeline_stage *s, const cfg_node *item,
                        cfg_node *res_item) {
    const cfg_node *with;
    char what[160];
    snprintf(what, sizeof what, "stage '%s': 'with'", s->id);
    int rc = get_map(cfg_map_get(item, "with"), what, &with, b->err);
    if (rc != 0) return rc;
    for (size_t k = 0; with && k < with->n; k++) {
        uint32_t i = 0;
        while (i < s->stage->desc.n_params && strcmp(s->stage->params[i].name, with->keys[k]))
            i++;
        if (i == s->stage->desc.n_params) return unknown_param(s, with->key_nodes[k], b->err);
    }
    uint32_t n = s->stage->desc.n_params;
    s->params = calloc(n ? n : 1, sizeof *s->params);
    cfg_node *res_with = resolved_with(res_item);
    if (!s->params || !res_with) return oom(b->err);
    for (uint32_t i = 0; i < n; i++) {
        const llmopt_param_desc *d = &s->stage->params[i];
        const cfg_node *v = cfg_map_get(with, d->name);
        s->params[i].desc = d;
        if (!v) {
            rc = fill_default(b, s, d, with ? with : item, res_with, &s->params[i]);
        } else if ((rc = param_parse(d, v, &s->params[i], b->err)) != 0) {
            char msg[sizeof b->err->msg];
            snprintf(msg, sizeof msg, "%s", b->err ? b->err->msg : "");
            rc = cfg_error(b->err, v, rc, "stage '%s' parameter '%s': %s", s->id, d->name, msg);
        }
        if (rc != 0) return rc;
    }
    return 0;
}

/* ---- inputs --------------------------------------------------------------------------- */

/* Index of the stage an input names, checked: another stage of this pipeline with a model. */
static int input_source(const build *b, const pipeline_stage *s, const char *slot,
                        const cfg_node *v, long *from) {
    char *id = NULL;
    char what[160];
    snprintf(what, sizeof what, "input '%s' of stage '%s'", slot, s->id);
    int rc = get_string(v, what, &id, b->err);
    if (rc != 0) return rc;
    *from = pipeline_find_stage(b->p, id);
    if (strcmp(id, s->id) == 0)
        rc = cfg_error(b->err, v, LLMOPT_EINVAL, "stage '%s' cannot take its own output as "
                       "input '%s'", s->id, slot);
    else if (*from < 0)
        rc = cfg_error(b->err, v, LLMOPT_EINVAL, "%s names '%s', which is not a stage in this "
                       "pipeline", what, id);
    else if (!(b->p->stages[*from].stage->desc.flags & LLMOPT_STAGE_OUTPUTS_MODEL))
        rc = cfg_error(b->err, v, LLMOPT_EINVAL, "%s names '%s' (%s), which outputs no model",
                       what, id, b->p->stages[*from].stage->desc.name);
    free(id);
    return rc;
}

static int check_input_slots(const pipeline_stage *s, const cfg_node *inputs, llmopt_error *err) {
    const stage_rec *st = s->stage;
    for (size_t k = 0; inputs && k < inputs->n; k++) {
        uint32_t j = 0;
        while (j < st->desc.n_inputs && strcmp(st->inputs[j].name, inputs->keys[k]) != 0) j++;
        if (j < st->desc.n_inputs) continue;
        char list[256] = "";
        for (j = 0; j < st->desc.n_inputs; j++) {
            size_t len = strlen(list);
            snprintf(list + len, sizeof list - len, "%s%s", j ? ", " : "", st->inputs[j].name);
        }
        return cfg_error(err, inputs->key_nodes[k], LLMOPT_EINVAL,
                         "stage '%s' (%s): unknown input '%s' (inputs: %s)", s->id,
                         st->desc.name, inputs->keys[k], list);
    }
    return 0;
}

static int add_input(pipeline_stage *s, const char *slot, long from) {
    pipeline_input *in = realloc(s->inputs, (s->n_inputs + 1) * sizeof *in);
    if (!in) return LLMOPT_ENOMEM;
    s->inputs = in;
    if (!(in[s->n_inputs].slot = str_dup(slot))) return LLMOPT_ENOMEM;
    in[s->n_inputs++].from = from;
    if (from < 0) return 0;
    for (size_t i = 0; i < s->n_deps; i++)
        if (s->deps[i] == (size_t)from) return 0;
    size_t *deps = realloc(s->deps, (s->n_deps + 1) * sizeof *deps);
    if (!deps) return LLMOPT_ENOMEM;
    s->deps = deps;
    s->deps[s->n_deps++] = (size_t)from;
    return 0;
}

/* Wires every declared input in schema order: given, else "model" from the pipeline's model,
 * else (when required) an error. */
static int build_inputs(const build *b, pipeline_stage *s, const cfg_node *item) {
    const cfg_node *inputs;
    char what[160];
    snprintf(what, sizeof what, "stage '%s': 'inputs'", s->id);
    int rc = get_map(cfg_map_get(item, "inputs"), what, &inputs, b->err);
    if (rc == 0) rc = check_input_slots(s, inputs, b->err);
    for (uint32_t j = 0; rc == 0 && j < s->stage->desc.n_inputs; j++) {
        const llmopt_input_desc *d = &s->stage->inputs[j];
        const cfg_node *v = cfg_map_get(inputs, d->name);
        long from = -1;
        if (v) rc = input_source(b, s, d->name, v, &from);
        else if (strcmp(d->name, "model") != 0 && d->required)
            return cfg_error(b->err, inputs ? inputs : item, LLMOPT_EINVAL,
                             "stage '%s' (%s): missing required input '%s'", s->id,
                             s->stage->desc.name, d->name);
        else if (strcmp(d->name, "model") != 0)
            continue;
        if (rc == 0 && add_input(s, d->name, from) != 0) rc = oom(b->err);
    }
    return rc;
}

/* ---- stages --------------------------------------------------------------------------- */

/* id and uses of one stage entry: a unique id, and a registered stage. */
static int bind_stage(const build *b, size_t i, const cfg_node *item) {
    pipeline_stage *s = &b->p->stages[i];
    char ctx[64];
    snprintf(ctx, sizeof ctx, "stage entry %zu", i + 1);
    if (item->kind != CFG_MAP)
        return cfg_error(b->err, item, LLMOPT_EINVAL, "%s: expected a map with 'id' and 'uses', "
                         "got %s", ctx, kind_str(item));
    s->line = item->line;
    s->col = item->col;
    const cfg_node *id = cfg_map_get(item, "id"), *uses = cfg_map_get(item, "uses");
    if (!id || !uses)
        return cfg_error(b->err, item, LLMOPT_EINVAL, "%s: missing required key '%s'", ctx,
                         id ? "uses" : "id");
    int rc = get_string(id, "'id'", &s->id, b->err);
    if (rc != 0) return rc;
    if (!all_chars_in(s->id, "_-"))
        return cfg_error(b->err, id, LLMOPT_EINVAL, "stage id must match [A-Za-z0-9_-]+, got "
                         "'%s'", s->id);
    long first = pipeline_find_stage(b->p, s->id);
    if (first >= 0 && (size_t)first < i)
        return cfg_error(b->err, id, LLMOPT_EINVAL, "duplicate stage id '%s' (first at line %d)",
                         s->id, b->p->stages[first].line);
    snprintf(ctx, sizeof ctx, "stage '%s'", s->id);
    if ((rc = check_keys(item, STAGE_KEYS, COUNT(STAGE_KEYS), ctx, b->err)) != 0) return rc;
    if (uses->kind != CFG_SCALAR || !(s->stage = registry_find_stage(b->reg, uses->str)))
        return uses->kind == CFG_SCALAR ? unknown_stage(b, uses)
            : cfg_error(b->err, uses, LLMOPT_EINVAL, "'uses': expected a stage name, got %s",
                        kind_str(uses));
    return 0;
}

static int build_stages(build *b, const cfg_node *root) {
    const cfg_node *st = cfg_map_get(root, "stages");
    if (!st)
        return cfg_error(b->err, root, LLMOPT_EINVAL, "missing required key 'stages' (a list of "
                         "{id, uses, with, inputs})");
    if (st->kind == CFG_MAP)
        return cfg_error(b->err, st, LLMOPT_EINVAL, "'stages': expected a sequence, got a map");
    if (st->kind == CFG_SCALAR && !cfg_scalar_is_null(st))
        return cfg_error(b->err, st, LLMOPT_EINVAL, "'stages': expected a sequence, got '%s'",
                         st->str);
    if (st->n == 0)
        return cfg_error(b->err, st, LLMOPT_EINVAL, "empty pipeline: 'stages' has no entries");
    b->stages = st;
    b->res_stages = cfg_map_get(b->p->resolved, "stages");
    b->p->stages = calloc(st->n, sizeof *b->p->stages);
    if (!b->p->stages) return oom(b->err);
    b->p->n_stages = st->n;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < st->n; i++) rc = bind_stage(b, i, st->items[i]);
    for (size_t i = 0; rc == 0 && i < st->n; i++)
        rc = build_params(b, &b->p->stages[i], st->items[i], b->res_stages->items[i]);
    for (size_t i = 0; rc == 0 && i < st->n; i++)
        rc = build_inputs(b, &b->p->stages[i], st->items[i]);
    return rc;
}

static int build_order(build *b) {
    pipeline *p = b->p;
    const size_t **deps = calloc(p->n_stages, sizeof *deps);
    size_t *n_deps = calloc(p->n_stages, sizeof *n_deps);
    const char **names = calloc(p->n_stages, sizeof *names);
    p->order = calloc(p->n_stages, sizeof *p->order);
    int rc = 0;
    if (!deps || !n_deps || !names || !p->order) rc = oom(b->err);
    for (size_t i = 0; rc == 0 && i < p->n_stages; i++) {
        deps[i] = p->stages[i].deps;
        n_deps[i] = p->stages[i].n_deps;
        names[i] = p->stages[i].id;
    }
    if (rc == 0) rc = dag_toposort(p->n_stages, deps, n_deps, names, p->order, b->err);
    if (rc == LLMOPT_EINVAL) { /* a cycle: point at the member the message starts with */
        const cfg_node *at = b->stages->items[p->order[0]];
        error_prefix(b->err, "%s:%d:%d", at->file, at->line, at->col);
    }
    free(deps);
    free(n_deps);
    free(names);
    return rc;
}

/* ---- top level ------------------------------------------------------------------------ */

static int build_data_entry(pipeline_data *d, const char *name, const cfg_node *v,
                            llmopt_error *err) {
    char ctx[160];
    snprintf(ctx, sizeof ctx, "data '%s'", name);
    if (!(d->name = str_dup(name))) return oom(err);
    if (v->kind != CFG_MAP) return get_string(v, ctx, &d->path, err);
    int rc = check_keys(v, DATA_KEYS, COUNT(DATA_KEYS), ctx, err);
    if (rc != 0) return rc;
    const cfg_node *path = cfg_map_get(v, "path"), *split = cfg_map_get(v, "split");
    if (!path) return cfg_error(err, v, LLMOPT_EINVAL, "%s: missing required key 'path'", ctx);
    rc = get_string(path, ctx, &d->path, err);
    if (rc == 0 && split) rc = get_string(split, ctx, &d->split, err);
    llmopt_error why = {0};
    if (rc == 0 && d->split && rt_split_check(d->split, &why) != 0)
        return cfg_error(err, split, LLMOPT_EINVAL, "%s: %s", ctx, why.msg);
    return rc;
}

static int build_data(pipeline *p, const cfg_node *root, llmopt_error *err) {
    const cfg_node *data;
    int rc = get_map(cfg_map_get(root, "data"), "'data'", &data, err);
    if (rc != 0 || !data || data->n == 0) return rc;
    if (!(p->data = calloc(data->n, sizeof *p->data))) return oom(err);
    for (size_t i = 0; rc == 0 && i < data->n; i++, p->n_data++)
        rc = build_data_entry(&p->data[i], data->keys[i], data->items[i], err);
    return rc;
}

static int build_outputs(pipeline *p, const cfg_node *root, llmopt_error *err) {
    const cfg_node *out = cfg_map_get(root, "outputs");
    if (!out || cfg_scalar_is_null(out)) return 0;
    if (out->kind == CFG_MAP)
        return cfg_error(err, out, LLMOPT_EINVAL, "'outputs': expected a list of stage ids, got a map");
    size_t n = out->kind == CFG_SEQ ? out->n : 1;
    if (!(p->outputs = calloc(n ? n : 1, sizeof *p->outputs))) return oom(err);
    for (size_t i = 0; i < n; i++) {
        const cfg_node *v = out->kind == CFG_SEQ ? out->items[i] : out;
        int rc = get_string(v, "'outputs'", &p->outputs[i], err);
        if (rc != 0) return rc;
        p->n_outputs++;
        long s = pipeline_find_stage(p, v->str);
        if (s < 0)
            return cfg_error(err, v, LLMOPT_EINVAL, "outputs: '%s' is not a stage in this "
                             "pipeline", v->str);
        if (!(p->stages[s].stage->desc.flags & LLMOPT_STAGE_OUTPUTS_MODEL))
            return cfg_error(err, v, LLMOPT_EINVAL, "outputs: stage '%s' (%s) outputs no model",
                             v->str, p->stages[s].stage->desc.name);
    }
    return 0;
}

/* A scalar that must be one of n choices: *index of it, 0 (the default) when the key is absent. */
static int get_choice(const cfg_node *v, const char *key, const char *const *choices, size_t n, size_t *index,
                      llmopt_error *err) {
    *index = 0;
    if (!v) return 0;
    for (size_t i = 0; i < n; i++)
        if (v->kind == CFG_SCALAR && strcmp(v->str, choices[i]) == 0) return *index = i, 0;
    char list[128] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", choices[i]);
    return cfg_error(err, v, LLMOPT_EINVAL, "'%s': expected one of: %s, got %s%s%s", key, list,
                     v->kind == CFG_SCALAR ? "'" : "", v->kind == CFG_SCALAR ? v->str : kind_str(v),
                     v->kind == CFG_SCALAR ? "'" : "");
}

static int build_scalars(pipeline *p, const cfg_node *root, llmopt_error *err) {
    const cfg_node *name = cfg_map_get(root, "name"), *model = cfg_map_get(root, "model");
    const cfg_node *device = cfg_map_get(root, "device"), *seed = cfg_map_get(root, "seed");
    if (!name) return cfg_error(err, root, LLMOPT_EINVAL, "missing required key 'name'");
    int rc = get_string(name, "'name'", &p->name, err);
    if (rc != 0) return rc;
    if (!all_chars_in(p->name, "._-"))
        return cfg_error(err, name, LLMOPT_EINVAL, "'name' must match [A-Za-z0-9._-]+, got '%s'",
                         p->name);
    if (model && (rc = get_string(model, "'model'", &p->model, err)) != 0) return rc;
    size_t d = 0, prec = 0;
    if ((rc = get_choice(device, "device", DEVICES, COUNT(DEVICES), &d, err)) != 0 ||
        (rc = get_choice(cfg_map_get(root, "matmul_precision"), "matmul_precision", PRECISIONS, COUNT(PRECISIONS),
                         &prec, err)) != 0)
        return rc;
    if (!(p->device = str_dup(DEVICES[d]))) return oom(err);
    p->matmul_precision = (int)prec;
    long long s = 0;
    if (seed && (cfg_scalar_int(seed, &s) != 0 || s < 0))
        return cfg_error(err, seed, LLMOPT_EINVAL, "'seed': expected a non-negative integer, "
                         "got '%s'", seed->kind == CFG_SCALAR ? seed->str : kind_str(seed));
    p->seed = (uint64_t)s;
    return 0;
}

int pipeline_build(const cfg_node *root, const char *file, const registry *reg, pipeline **out,
                   llmopt_error *err) {
    *out = NULL;
    if (root->kind != CFG_MAP)
        return cfg_error(err, root, LLMOPT_EINVAL, "a pipeline config is a map (name, stages, "
                         "...), got %s", kind_str(root));
    pipeline *p = calloc(1, sizeof *p);
    if (!p) return oom(err);
    build b = {.reg = reg, .p = p, .err = err};
    int rc = 0;
    if (!(p->file = str_dup(file)) || !(p->resolved = cfg_copy(root))) rc = oom(err);
    if (rc == 0) rc = check_keys(root, TOP_KEYS, COUNT(TOP_KEYS), "", err);
    if (rc == 0) rc = build_scalars(p, root, err);
    if (rc == 0) rc = build_data(p, root, err);
    if (rc == 0) rc = build_stages(&b, root);
    if (rc == 0) rc = build_outputs(p, root, err);
    if (rc == 0) rc = build_order(&b);
    if (rc != 0) {
        pipeline_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void pipeline_free(pipeline *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_stages; i++) {
        pipeline_stage *s = &p->stages[i];
        for (uint32_t k = 0; s->params && k < s->stage->desc.n_params; k++)
            param_value_clear(&s->params[k]);
        for (size_t k = 0; k < s->n_inputs; k++) free(s->inputs[k].slot);
        free(s->params);
        free(s->inputs);
        free(s->deps);
        free(s->id);
    }
    for (size_t i = 0; i < p->n_data; i++) {
        free(p->data[i].name);
        free(p->data[i].path);
        free(p->data[i].split);
    }
    for (size_t i = 0; i < p->n_outputs; i++) free(p->outputs[i]);
    free(p->outputs);
    free(p->data);
    free(p->stages);
    free(p->order);
    cfg_free(p->resolved);
    free(p->file);
    free(p->name);
    free(p->model);
    free(p->device);
    free(p);
}
