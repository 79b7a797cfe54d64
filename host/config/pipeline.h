/* A pipeline: the validated, resolved form of a config file. Every stage is bound to a
 * registered stage, every parameter checked against its typed schema with defaults filled in,
 * every input wired to an existing stage, and the stage graph checked for cycles. */
#ifndef HOST_CONFIG_PIPELINE_H
#define HOST_CONFIG_PIPELINE_H

#include <stdint.h>
#include "yaml_tree.h"
#include "../plugin/registry.h"

/* A validated parameter value. */
typedef struct param_value {
    const llmopt_param_desc *desc; /* schema entry (in the stage_rec) */
    int from_default;              /* 1 when the config did not give it */
    int b;                         /* BOOL */
    int64_t i;                     /* INT */
    double f;                      /* FLOAT */
    char *s;                       /* STRING, ENUM */
    char **list;                   /* LIST */
    size_t n_list;
} param_value;

typedef struct pipeline_input {
    char *slot;       /* "model", "teacher" */
    long from;        /* index of the producing stage, or -1 for the pipeline's model */
} pipeline_input;

typedef struct pipeline_stage {
    char *id;
    const stage_rec *stage;
    param_value *params;        /* one per stage->desc.n_params, schema order */
    pipeline_input *inputs;     /* wired slots */
    size_t n_inputs;
    size_t *deps;               /* distinct producing stages (indices) */
    size_t n_deps;
    int line, col;              /* where the stage's entry starts */
} pipeline_stage;

typedef struct pipeline_data {
    char *name;                 /* "train", "eval", ... */
    char *path;
    char *split;                /* may be NULL */
} pipeline_data;

typedef struct pipeline {
    char *file;                 /* the config file */
    char *name;
    char *model;                /* path of the pipeline's model, may be NULL */
    char *device;               /* "auto" | "cpu" | "cuda" */
    int matmul_precision;       /* llmopt_matmul_precision: "highest" (default) | "medium" */
    uint64_t seed;
    pipeline_data *data;
    size_t n_data;
    char **outputs;             /* ids of stages whose output models are saved */
    size_t n_outputs;
    pipeline_stage *stages;
    size_t n_stages;
    size_t *order;              /* a topological order of stages */
    cfg_node *resolved;         /* the config with overrides and defaults applied */
} pipeline;

/* Builds a pipeline from a parsed config (overrides already applied). Takes nothing from root
 * (it is copied into resolved). Errors: "file:line:col: what was expected". */
int pipeline_build(const cfg_node *root, const char *file, const registry *reg,
                   pipeline **out, llmopt_error *err);
void pipeline_free(pipeline *p);

/* Index of a stage by id, or -1. */
long pipeline_find_stage(const pipeline *p, const char *id);
/* The value of a parameter by name, or NULL. */
const param_value *pipeline_param(const pipeline_stage *s, const char *name);

/* Checks a value for one schema entry (shared with registry default checks and describe).
 * Fills out (caller frees with param_value_clear). */
int param_parse(const llmopt_param_desc *d, const cfg_node *val, param_value *out,
                llmopt_error *err);
void param_value_clear(param_value *v);
const char *param_type_str(int type);

#endif
