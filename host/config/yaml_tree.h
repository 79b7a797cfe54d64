/* A YAML document as a tree of maps, sequences and scalars, every node marked with the line and
 * column it came from, so each config error can say file:line:col. Built with libyaml; anchors
 * and aliases are refused (a pipeline config has no need of them). */
#ifndef HOST_CONFIG_YAML_TREE_H
#define HOST_CONFIG_YAML_TREE_H

#include <stdio.h>
#include <stddef.h>
#include "../util/error.h"

typedef enum cfg_kind { CFG_SCALAR = 0, CFG_MAP = 1, CFG_SEQ = 2 } cfg_kind;

typedef struct cfg_node cfg_node;
struct cfg_node {
    cfg_kind kind;
    int line, col;        /* 1-based position of the node's first character */
    const char *file;     /* the file (or "--set") it came from; each node owns its copy */
    char *str;            /* CFG_SCALAR: the text */
    int quoted;           /* CFG_SCALAR: written in quotes (so never a number/bool/null) */
    size_t n;             /* CFG_MAP: pairs; CFG_SEQ: items */
    char **keys;          /* CFG_MAP: keys (scalars only) */
    cfg_node **key_nodes; /* CFG_MAP: the key scalars, for their marks */
    cfg_node **items;     /* CFG_MAP: values; CFG_SEQ: items */
};

/* Parses a file (or text) holding one YAML document. Errors: "file:line:col: message".
 * An empty document gives an empty map. */
int cfg_parse_file(const char *path, cfg_node **out, llmopt_error *err);
int cfg_parse_text(const char *name, const char *text, size_t len, cfg_node **out,
                   llmopt_error *err);
void cfg_free(cfg_node *n);

cfg_node *cfg_new_scalar(const char *file, int line, int col, const char *s, int quoted);
cfg_node *cfg_new_map(const char *file, int line, int col);
cfg_node *cfg_new_seq(const char *file, int line, int col);
/* A deep copy (marks and file names included), or NULL when out of memory. */
cfg_node *cfg_copy(const cfg_node *n);
/* Sets key to val in a map (replacing and freeing an existing value); takes val. */
int cfg_map_set(cfg_node *map, const char *key, cfg_node *val);
int cfg_seq_push(cfg_node *seq, cfg_node *val);
/* Value of key in a map, NULL when absent or when map is not a map. */
cfg_node *cfg_map_get(const cfg_node *map, const char *key);
/* Index of key in a map, or -1. */
long cfg_map_index(const cfg_node *map, const char *key);

/* Applies one `--set path=value` override. The path walks maps by key; inside `stages` a
 * component is a stage id ("stages.q4.with.bits=3"); a numeric component indexes a sequence.
 * Missing map keys are created. The value is parsed as a YAML flow scalar/sequence/map
 * ("3", "[a, b]", "{x: 1}"). Errors name the override: "--set stages.q9.with.bits=3: ...". */
int cfg_apply_override(cfg_node *root, const char *assignment, llmopt_error *err);

/* Writes the tree as block YAML (used for the resolved config in the run directory). */
int cfg_emit(const cfg_node *root, FILE *f);

/* Scalar interpretation, YAML 1.2 core schema style. Return 0 on success. */
int cfg_scalar_bool(const cfg_node *n, int *out);
int cfg_scalar_int(const cfg_node *n, long long *out);
int cfg_scalar_float(const cfg_node *n, double *out);
int cfg_scalar_is_null(const cfg_node *n);

/* Formats "file:line:col: " for a node into err and appends the message. */
int cfg_error(llmopt_error *err, const cfg_node *at, int status, const char *fmt, ...)
    LLMOPT_PRINTF(4, 5);

#endif
