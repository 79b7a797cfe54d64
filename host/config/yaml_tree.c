/* YAML documents as cfg_node trees, built from libyaml's event stream so that every node keeps
 * the 1-based line/column it started at; `--set` overrides; block YAML output; and the YAML 1.2
 * core-schema reading of plain scalars (bool, int, float, null). */
#include "yaml_tree.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../util/fs.h"

/* Deeper nesting than this is refused rather than recursed into (fuzzed inputs). */
#define CFG_MAX_DEPTH 200

/* ---- nodes ---------------------------------------------------------------------------- */

static char *str_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static cfg_node *node_new(cfg_kind kind, const char *file, int line, int col) {
    cfg_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->line = line;
    n->col = col;
    n->file = str_dup(file ? file : "");
    if (!n->file) {
        free(n);
        return NULL;
    }
    return n;
}

cfg_node *cfg_new_scalar(const char *file, int line, int col, const char *s, int quoted) {
    cfg_node *n = node_new(CFG_SCALAR, file, line, col);
    if (!n) return NULL;
    n->str = str_dup(s ? s : "");
    if (!n->str) {
        cfg_free(n);
        return NULL;
    }
    n->quoted = quoted;
    return n;
}

cfg_node *cfg_new_map(const char *file, int line, int col) {
    return node_new(CFG_MAP, file, line, col);
}

cfg_node *cfg_new_seq(const char *file, int line, int col) {
    return node_new(CFG_SEQ, file, line, col);
}

void cfg_free(cfg_node *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys) free(n->keys[i]);
        if (n->key_nodes) cfg_free(n->key_nodes[i]);
        cfg_free(n->items[i]);
    }
    free(n->keys);
    free(n->key_nodes);
    free(n->items);
    free(n->str);
    free((char *)n->file);
    free(n);
}

/* Grows the item arrays by one slot (keys too for maps). Sizes stay exact: configs are small. */
static int node_grow(cfg_node *n) {
    cfg_node **items = realloc(n->items, (n->n + 1) * sizeof *items);
    if (!items) return LLMOPT_ENOMEM;
    n->items = items;
    if (n->kind != CFG_MAP) return 0;
    char **keys = realloc(n->keys, (n->n + 1) * sizeof *keys);
    if (!keys) return LLMOPT_ENOMEM;
    n->keys = keys;
    cfg_node **kn = realloc(n->key_nodes, (n->n + 1) * sizeof *kn);
    if (!kn) return LLMOPT_ENOMEM;
    n->key_nodes = kn;
    return 0;
}

/* Appends a pair; takes key and val (frees both on failure). */
static int map_push(cfg_node *map, cfg_node *key, cfg_node *val) {
    char *k = str_dup(key->str);
    if (!k || node_grow(map) != 0) {
        free(k);
        cfg_free(key);
        cfg_free(val);
        return LLMOPT_ENOMEM;
    }
    map->keys[map->n] = k;
    map->key_nodes[map->n] = key;
    map->items[map->n] = val;
    map->n++;
    return 0;
}

int cfg_seq_push(cfg_node *seq, cfg_node *val) {
    if (!seq || seq->kind != CFG_SEQ || node_grow(seq) != 0) {
        cfg_free(val);
        return seq && seq->kind == CFG_SEQ ? LLMOPT_ENOMEM : LLMOPT_EINVAL;
    }
    seq->items[seq->n++] = val;
    return 0;
}

long cfg_map_index(const cfg_node *map, const char *key) {
    if (!map || map->kind != CFG_MAP) return -1;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i], key) == 0) return (long)i;
    return -1;
}

cfg_node *cfg_map_get(const cfg_node *map, const char *key) {
    long i = cfg_map_index(map, key);
    return i < 0 ? NULL : map->items[i];
}

int cfg_map_set(cfg_node *map, const char *key, cfg_node *val) {
    if (!map || map->kind != CFG_MAP || !val) {
        cfg_free(val);
        return LLMOPT_EINVAL;
    }
    long i = cfg_map_index(map, key);
    if (i >= 0) {
        cfg_free(map->items[i]);
        map->items[i] = val;
        return 0;
    }
    cfg_node *k = cfg_new_scalar(val->file, val->line, val->col, key, 0);
    if (!k) {
        cfg_free(val);
        return LLMOPT_ENOMEM;
    }
    return map_push(map, k, val);
}

cfg_node *cfg_copy(const cfg_node *n) {
    if (!n) return NULL;
    cfg_node *c = n->kind == CFG_SCALAR ? cfg_new_scalar(n->file, n->line, n->col, n->str, n->quoted)
                                        : node_new(n->kind, n->file, n->line, n->col);
    if (!c) return NULL;
    for (size_t i = 0; i < n->n; i++) {
        cfg_node *k = n->kind == CFG_MAP ? cfg_copy(n->key_nodes[i]) : NULL;
        cfg_node *v = cfg_copy(n->items[i]);
        int rc = LLMOPT_ENOMEM;
        if (v && n->kind == CFG_SEQ) rc = cfg_seq_push(c, v);
        else if (v && k) rc = map_push(c, k, v);
        else {
            cfg_free(k);
            cfg_free(v);
        }
        if (rc != 0) {
            cfg_free(c);
            return NULL;
        }
    }
    return c;
}

int cfg_error(llmopt_error *err, const cfg_node *at, int status, const char *fmt, ...) {
    if (!err) return status;
    char msg[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (at)
        return error_set(err, status, "%s:%d:%d: %s", at->file, at->line, at->col, msg);
    return error_set(err, status, "%s", msg);
}

/* ---- parsing -------------------------------------------------------------------------- */

typedef struct yparse {
    yaml_parser_t p;
    const char *name;
    const char *text;  /* the input, for placing reader errors, which carry only an offset */
    size_t len;
    llmopt_error *err;
} yparse;

static int mark_error(yparse *y, yaml_mark_t m, const char *fmt, ...) LLMOPT_PRINTF(3, 4);
static int mark_error(yparse *y, yaml_mark_t m, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return error_set(y->err, LLMOPT_EINVAL, "%s:%d:%d: %s", y->name, (int)m.line + 1,
                     (int)m.column + 1, msg);
}

/* libyaml's problem ("did not find expected key") and context ("while parsing a block
 * mapping") joined on one line, at the problem's mark. */
static int syntax_error(yparse *y) {
    const yaml_parser_t *p = &y->p;
    const char *problem = p->problem ? p->problem : "syntax error";
    if (p->error == YAML_MEMORY_ERROR)
        return error_set(y->err, LLMOPT_ENOMEM, "%s: out of memory parsing YAML", y->name);
    yaml_mark_t m = p->problem_mark;
    if (p->error == YAML_READER_ERROR) { /* bad encoding: only a byte offset is known */
        m.line = m.column = 0;
        for (size_t i = 0; i < p->problem_offset && i < y->len; i++) {
            m.column = y->text[i] == '\n' ? 0 : m.column + 1;
            m.line += y->text[i] == '\n';
        }
    }
    return error_set(y->err, LLMOPT_EINVAL, "%s:%d:%d: %s%s%s", y->name, (int)m.line + 1,
                     (int)m.column + 1, problem, p->context ? " " : "",
                     p->context ? p->context : "");
}

static int oom(yparse *y) {
    return error_set(y->err, LLMOPT_ENOMEM, "%s: out of memory", y->name);
}

static int next_event(yparse *y, yaml_event_t *ev) {
    return yaml_parser_parse(&y->p, ev) ? 0 : syntax_error(y);
}

static int parse_node(yparse *y, yaml_event_t *ev, int depth, cfg_node **out);

static int refuse_anchor(yparse *y, const yaml_event_t *ev) {
    const yaml_char_t *anchor = NULL;
    if (ev->type == YAML_SCALAR_EVENT) anchor = ev->data.scalar.anchor;
    if (ev->type == YAML_SEQUENCE_START_EVENT) anchor = ev->data.sequence_start.anchor;
    if (ev->type == YAML_MAPPING_START_EVENT) anchor = ev->data.mapping_start.anchor;
    if (ev->type == YAML_ALIAS_EVENT) anchor = ev->data.alias.anchor;
    if (!anchor) return 0;
    return mark_error(y, ev->start_mark, "anchors and aliases are not supported ('%s')",
                      (const char *)anchor);
}

/* Parses the next node (reading its first event) into *out. */
static int parse_next(yparse *y, int depth, cfg_node **out) {
    yaml_event_t ev;
    int rc = next_event(y, &ev);
    if (rc != 0) return rc;
    rc = parse_node(y, &ev, depth, out);
    yaml_event_delete(&ev);
    return rc;
}

static int parse_seq(yparse *y, cfg_node *seq, int depth) {
    for (;;) {
        yaml_event_t ev;
        int rc = next_event(y, &ev);
        if (rc != 0) return rc;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        cfg_node *item = NULL;
        rc = parse_node(y, &ev, depth + 1, &item);
        yaml_event_delete(&ev);
        if (rc != 0) return rc;
        if (cfg_seq_push(seq, item) != 0) return oom(y);
    }
}

/* One key of a mapping: a scalar not seen before in this map. */
static int parse_key(yparse *y, const cfg_node *map, yaml_event_t *ev, cfg_node **out) {
    int rc = refuse_anchor(y, ev);
    if (rc != 0) return rc;
    if (ev->type != YAML_SCALAR_EVENT)
        return mark_error(y, ev->start_mark, "map keys must be scalars");
    rc = parse_node(y, ev, 0, out);
    if (rc != 0) return rc;
    long dup = cfg_map_index(map, (*out)->str);
    if (dup < 0) return 0;
    rc = mark_error(y, ev->start_mark, "duplicate key '%.200s' (first at line %d)", (*out)->str,
                    map->key_nodes[dup]->line);
    cfg_free(*out);
    *out = NULL;
    return rc;
}

static int parse_map(yparse *y, cfg_node *map, int depth) {
    for (;;) {
        yaml_event_t ev;
        int rc = next_event(y, &ev);
        if (rc != 0) return rc;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        cfg_node *key = NULL, *val = NULL;
        rc = parse_key(y, map, &ev, &key);
        yaml_event_delete(&ev);
        if (rc == 0) rc = parse_next(y, depth + 1, &val);
        if (rc != 0) {
            cfg_free(key);
            return rc;
        }
        if (map_push(map, key, val) != 0) return oom(y);
    }
}

static int parse_node(yparse *y, yaml_event_t *ev, int depth, cfg_node **out) {
    int rc = refuse_anchor(y, ev);
    if (rc != 0) return rc;
    if (depth > CFG_MAX_DEPTH) return mark_error(y, ev->start_mark, "nesting too deep");
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    cfg_node *n = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        n = cfg_new_scalar(y->name, line, col, (const char *)ev->data.scalar.value,
                           ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE);
        break;
    case YAML_SEQUENCE_START_EVENT: n = cfg_new_seq(y->name, line, col); break;
    case YAML_MAPPING_START_EVENT: n = cfg_new_map(y->name, line, col); break;
    default: return mark_error(y, ev->start_mark, "unexpected YAML event");
    }
    if (!n) return oom(y);
    if (ev->type == YAML_SEQUENCE_START_EVENT) rc = parse_seq(y, n, depth);
    if (ev->type == YAML_MAPPING_START_EVENT) rc = parse_map(y, n, depth);
    if (rc != 0) {
        cfg_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

/* Expects an event of one type (the stream/document frame), else a syntax error. */
static int expect_event(yparse *y, yaml_event_type_t type, yaml_event_t *ev) {
    int rc = next_event(y, ev);
    if (rc != 0) return rc;
    if (ev->type == type) return 0;
    rc = mark_error(y, ev->start_mark, "unexpected YAML structure");
    yaml_event_delete(ev);
    return rc;
}

/* STREAM_START (DOCUMENT_START node DOCUMENT_END)? STREAM_END, with one document at most. */
static int parse_stream(yparse *y, cfg_node **out) {
    yaml_event_t ev;
    int rc = expect_event(y, YAML_STREAM_START_EVENT, &ev);
    if (rc != 0) return rc;
    yaml_event_delete(&ev);
    if ((rc = next_event(y, &ev)) != 0) return rc;
    int empty = ev.type == YAML_STREAM_END_EVENT;
    yaml_event_delete(&ev);
    if (empty) return 0;
    if ((rc = parse_next(y, 0, out)) != 0) return rc;
    if ((rc = expect_event(y, YAML_DOCUMENT_END_EVENT, &ev)) != 0) return rc;
    yaml_event_delete(&ev);
    if ((rc = next_event(y, &ev)) != 0) return rc;
    if (ev.type != YAML_STREAM_END_EVENT)
        rc = mark_error(y, ev.start_mark, "only one YAML document is allowed");
    yaml_event_delete(&ev);
    return rc;
}

int cfg_parse_text(const char *name, const char *text, size_t len, cfg_node **out,
                   llmopt_error *err) {
    yparse y = {.name = name, .text = text, .len = len, .err = err};
    cfg_node *root = NULL;
    *out = NULL;
    if (!yaml_parser_initialize(&y.p))
        return error_set(err, LLMOPT_ENOMEM, "%s: out of memory", name);
    yaml_parser_set_input_string(&y.p, (const unsigned char *)text, len);
    int rc = parse_stream(&y, &root);
    yaml_parser_delete(&y.p);
    if (rc != 0) {
        cfg_free(root);
        return rc;
    }
    /* An empty document (nothing, or a lone null) reads as an empty map. */
    if (!root || (root->kind == CFG_SCALAR && !root->quoted && root->str[0] == '\0')) {
        int line = root ? root->line : 1, col = root ? root->col : 1;
        cfg_free(root);
        root = cfg_new_map(name, line, col);
        if (!root) return error_set(err, LLMOPT_ENOMEM, "%s: out of memory", name);
    }
    *out = root;
    return 0;
}

int cfg_parse_file(const char *path, cfg_node **out, llmopt_error *err) {
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = fs_read_all(path, &text, &len, err);
    if (rc != 0) return rc;
    rc = cfg_parse_text(path, text, len, out, err);
    free(text);
    return rc;
}

/* ---- overrides ------------------------------------------------------------------------ */

static void shift_cols(cfg_node *n, int by) {
    n->col += by;
    for (size_t i = 0; i < n->n; i++) {
        if (n->kind == CFG_MAP) n->key_nodes[i]->col += by;
        shift_cols(n->items[i], by);
    }
}

/* Parses the text after '=' (starting at byte off of the assignment) as one YAML flow node.
 * Wrapping it in "[...]" puts libyaml in flow context, so "a: b" cannot become a block map. */
static int parse_override_value(const char *set, size_t off, cfg_node **out, llmopt_error *err) {
    const char *val = set + off;
    size_t n = strlen(val);
    char *text = malloc(n + 3);
    if (!text) return error_set(err, LLMOPT_ENOMEM, "--set %s: out of memory", set);
    text[0] = '[';
    memcpy(text + 1, val, n);
    memcpy(text + 1 + n, "]", 2);
    cfg_node *seq = NULL;
    int rc = cfg_parse_text("--set", text, n + 2, &seq, err);
    free(text);
    if (rc != 0) {
        error_prefix(err, "--set %s: bad value", set);
        return rc;
    }
    if (seq->kind != CFG_SEQ || seq->n > 1) {
        cfg_free(seq);
        return error_set(err, LLMOPT_EINVAL,
                         "--set %s: the value must be one YAML value (quote it, or use [a, b])",
                         set);
    }
    if (seq->n == 1) {
        *out = seq->items[0];
        seq->n = 0;
        shift_cols(*out, (int)off - 1);
    } else {
        *out = cfg_new_scalar("--set", 1, (int)off + 1, "", 0);
    }
    cfg_free(seq);
    return *out ? 0 : error_set(err, LLMOPT_ENOMEM, "--set %s: out of memory", set);
}

static int parse_index(const char *s, size_t *out) {
    if (!*s) return -1;
    size_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (SIZE_MAX - 9) / 10) return -1;
        v = v * 10 + (size_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* Index of the sequence item a path component names: a stage id inside the top-level
 * `stages`, else a number. -1 with err set when there is none. */
static long seq_lookup(const cfg_node *seq, const char *comp, int is_stages, const char *set,
                       llmopt_error *err) {
    if (is_stages) {
        for (size_t i = 0; i < seq->n; i++) {
            const cfg_node *id = cfg_map_get(seq->items[i], "id");
            if (id && id->kind == CFG_SCALAR && strcmp(id->str, comp) == 0) return (long)i;
        }
    }
    size_t idx;
    if (parse_index(comp, &idx) == 0 && idx < seq->n) return (long)idx;
    if (is_stages)
        error_set(err, LLMOPT_EINVAL, "--set %s: no stage with id '%s'", set, comp);
    else
        error_set(err, LLMOPT_EINVAL, "--set %s: '%s' is not an index of a sequence of %zu", set,
                  comp, seq->n);
    return -1;
}

/* Sets comp of parent (a map or a sequence) to val; takes val. */
static int set_child(cfg_node *parent, const char *comp, int is_stages, cfg_node *val,
                     const char *set, llmopt_error *err) {
    if (parent->kind == CFG_MAP) {
        int rc = cfg_map_set(parent, comp, val);
        return rc ? error_set(err, rc, "--set %s: out of memory", set) : 0;
    }
    long i = seq_lookup(parent, comp, is_stages, set, err);
    if (i < 0) {
        cfg_free(val);
        return LLMOPT_EINVAL;
    }
    cfg_free(parent->items[i]);
    parent->items[i] = val;
    return 0;
}

/* The child of cur that comp names into *next, created (as an empty map, marked at the
 * component's column) in maps when missing. */
static int walk(cfg_node *cur, const char *comp, int col, int is_stages, const char *set,
                cfg_node **next, llmopt_error *err) {
    if (cur->kind == CFG_SCALAR)
        return error_set(err, LLMOPT_EINVAL, "--set %s: cannot go into '%s': its parent is a scalar",
                         set, comp);
    if (cur->kind == CFG_SEQ) {
        long i = seq_lookup(cur, comp, is_stages, set, err);
        if (i < 0) return LLMOPT_EINVAL;
        *next = cur->items[i];
        return 0;
    }
    if ((*next = cfg_map_get(cur, comp))) return 0;
    *next = cfg_new_map("--set", 1, col);
    if (!*next || cfg_map_set(cur, comp, *next) != 0)
        return error_set(err, LLMOPT_ENOMEM, "--set %s: out of memory", set);
    return 0;
}

/* Walks every component but the last, then sets the last to val; takes val. */
static int apply_path(cfg_node *root, char *path, cfg_node *val, const char *set,
                      llmopt_error *err) {
    cfg_node *cur = root;
    for (char *comp = path;;) {
        char *dot = strchr(comp, '.');
        if (dot) *dot = '\0';
        const cfg_node *stages = cfg_map_get(root, "stages");
        int is_stages = cur == stages && cur->kind == CFG_SEQ;
        int rc = 0;
        if (!*comp)
            rc = error_set(err, LLMOPT_EINVAL, "--set %s: empty component in the path", set);
        else if (!dot && cur->kind == CFG_SCALAR)
            rc = error_set(err, LLMOPT_EINVAL, "--set %s: cannot set '%s' inside a scalar", set,
                           comp);
        else if (!dot)
            return set_child(cur, comp, is_stages, val, set, err);
        else
            rc = walk(cur, comp, (int)(comp - path) + 1, is_stages, set, &cur, err);
        if (rc != 0) {
            cfg_free(val);
            return rc;
        }
        comp = dot + 1;
    }
}

int cfg_apply_override(cfg_node *root, const char *set, llmopt_error *err) {
    const char *eq = strchr(set, '=');
    if (!eq || eq == set)
        return error_set(err, LLMOPT_EINVAL, "--set %s: expected path=value", set);
    size_t plen = (size_t)(eq - set);
    char *path = malloc(plen + 1);
    if (!path) return error_set(err, LLMOPT_ENOMEM, "--set %s: out of memory", set);
    memcpy(path, set, plen);
    path[plen] = '\0';
    cfg_node *val = NULL;
    int rc = parse_override_value(set, plen + 1, &val, err);
    if (rc == 0) rc = apply_path(root, path, val, set, err);
    free(path);
    return rc;
}

/* ---- emitting ------------------------------------------------------------------------- */

static int emit_scalar(yaml_emitter_t *em, const char *s, int quoted) {
    yaml_event_t ev;
    /* Quoted scalars stay quoted so a re-read never turns "3" into a number. */
    yaml_scalar_style_t style = quoted ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE;
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s),
                                      !quoted, quoted, style))
        return -1;
    return yaml_emitter_emit(em, &ev) ? 0 : -1;
}

static int emit_node(yaml_emitter_t *em, const cfg_node *n) {
    yaml_event_t ev;
    if (n->kind == CFG_SCALAR) return emit_scalar(em, n->str, n->quoted);
    int ok = n->kind == CFG_MAP
        ? yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE)
        : yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
    if (!ok || !yaml_emitter_emit(em, &ev)) return -1;
    for (size_t i = 0; i < n->n; i++) {
        if (n->kind == CFG_MAP && emit_scalar(em, n->keys[i], n->key_nodes[i]->quoted) != 0)
            return -1;
        if (emit_node(em, n->items[i]) != 0) return -1;
    }
    ok = n->kind == CFG_MAP ? yaml_mapping_end_event_initialize(&ev)
                            : yaml_sequence_end_event_initialize(&ev);
    return ok && yaml_emitter_emit(em, &ev) ? 0 : -1;
}

static int emit_document(yaml_emitter_t *em, const cfg_node *root) {
    yaml_event_t ev;
    if (!yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) ||
        !yaml_emitter_emit(em, &ev))
        return -1;
    if (!yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) ||
        !yaml_emitter_emit(em, &ev))
        return -1;
    if (emit_node(em, root) != 0) return -1;
    if (!yaml_document_end_event_initialize(&ev, 1) || !yaml_emitter_emit(em, &ev)) return -1;
    if (!yaml_stream_end_event_initialize(&ev) || !yaml_emitter_emit(em, &ev)) return -1;
    return yaml_emitter_flush(em) ? 0 : -1;
}

int cfg_emit(const cfg_node *root, FILE *f) {
    yaml_emitter_t em;
    if (!yaml_emitter_initialize(&em)) return LLMOPT_ENOMEM;
    yaml_emitter_set_output_file(&em, f);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    int rc = emit_document(&em, root) == 0 ? 0 : LLMOPT_EIO;
    yaml_emitter_delete(&em);
    return rc;
}

/* ---- scalar interpretation ------------------------------------------------------------ */

static int is_plain(const cfg_node *n) {
    return n && n->kind == CFG_SCALAR && !n->quoted;
}

int cfg_scalar_bool(const cfg_node *n, int *out) {
    static const char *const yes[] = {"true", "True", "TRUE"}, *const no[] = {"false", "False", "FALSE"};
    if (!is_plain(n)) return LLMOPT_EINVAL;
    for (int i = 0; i < 3; i++) {
        if (strcmp(n->str, yes[i]) == 0) return *out = 1, 0;
        if (strcmp(n->str, no[i]) == 0) return *out = 0, 0;
    }
    return LLMOPT_EINVAL;
}

/* [-+]?[0-9]+ or [-+]?0x[0-9a-fA-F]+, with no overflow and nothing after. */
int cfg_scalar_int(const cfg_node *n, long long *out) {
    if (!is_plain(n)) return LLMOPT_EINVAL;
    const char *s = n->str, *digits = s + (s[0] == '+' || s[0] == '-');
    int base = digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X') ? 16 : 10;
    unsigned char first = (unsigned char)(base == 16 ? digits[2] : digits[0]);
    /* strtoll would accept leading spaces and a second sign; the digits must start here. */
    if (base == 16 ? !isxdigit(first) : !isdigit(first)) return LLMOPT_EINVAL;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, base);
    if (errno == ERANGE || *end != '\0') return LLMOPT_EINVAL;
    *out = v;
    return 0;
}

static int special_float(const char *s, double *out) {
    const char *t = s + (s[0] == '+' || s[0] == '-');
    double sign = s[0] == '-' ? -1.0 : 1.0;
    if (!strcmp(t, ".inf") || !strcmp(t, ".Inf") || !strcmp(t, ".INF")) return *out = sign * INFINITY, 0;
    if (t == s && (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN")))
        return *out = NAN, 0;
    return -1;
}

/* YAML 1.2 core floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?, .inf, .nan;
 * every int is also a float. strtod alone would take "inf", "nan" and hex floats. */
int cfg_scalar_float(const cfg_node *n, double *out) {
    if (!is_plain(n)) return LLMOPT_EINVAL;
    long long i;
    if (cfg_scalar_int(n, &i) == 0) return *out = (double)i, 0;
    const char *s = n->str;
    if (special_float(s, out) == 0) return 0;
    if (!*s || strspn(s, "0123456789.eE+-") != strlen(s) || !strpbrk(s, "0123456789"))
        return LLMOPT_EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || (errno == ERANGE && isinf(v))) return LLMOPT_EINVAL;
    *out = v;
    return 0;
}

int cfg_scalar_is_null(const cfg_node *n) {
    if (!is_plain(n)) return 0;
    const char *s = n->str;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}
