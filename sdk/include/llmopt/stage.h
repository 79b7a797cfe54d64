/* llmopt SDK: stages, their typed parameter schemas, and metrics.
 * A stage is one step of a pipeline (quantize.gptq, eval.perplexity): it receives a context
 * with validated parameters and its input models, and gives back an output model and metrics. */
#ifndef LLMOPT_STAGE_H
#define LLMOPT_STAGE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque: one stage's run (parameters, inputs, output, metrics, progress, cancel flag). */
typedef struct llmopt_stage_ctx llmopt_stage_ctx;

/** Parameter types. Values arrive from YAML (or --set) and are checked before any stage runs. */
typedef enum llmopt_param_type {
    LLMOPT_PARAM_BOOL = 0,   /**< true/false */
    LLMOPT_PARAM_INT = 1,    /**< 64-bit integer; range [min,max] checked when min < max */
    LLMOPT_PARAM_FLOAT = 2,  /**< double; range [min,max] checked when min < max */
    LLMOPT_PARAM_STRING = 3, /**< any string */
    LLMOPT_PARAM_ENUM = 4,   /**< one of `choices`, written "a|b|c" */
    LLMOPT_PARAM_LIST = 5    /**< a YAML sequence of strings (a scalar is taken as a list of one) */
} llmopt_param_type;

/** One parameter of a stage's schema. Arrays of these are read with stride
 *  llmopt_stage_desc.param_size, so this struct may grow at its end in later minors. */
typedef struct llmopt_param_desc {
    const char *name;          /**< key under `with:` */
    int32_t type;              /**< llmopt_param_type */
    int32_t required;          /**< 1: no default, must be given */
    const char *default_value; /**< default, in YAML scalar spelling ("4", "0.5", "true", "a|b"
                                    for a list); NULL only when required */
    double min, max;           /**< inclusive range for INT and FLOAT when min < max */
    const char *choices;       /**< ENUM: "a|b|c" */
    const char *doc;           /**< one or two sentences shown by `llmopt-host describe` */
} llmopt_param_desc;
LLMOPT_PIN(llmopt_param_desc, type, 8);
LLMOPT_PIN(llmopt_param_desc, default_value, 16);
LLMOPT_PIN(llmopt_param_desc, min, 24);
LLMOPT_PIN(llmopt_param_desc, choices, 40);
LLMOPT_PIN(llmopt_param_desc, doc, 48);

/** One named model input of a stage ("model", "teacher"). Read with stride input_size. */
typedef struct llmopt_input_desc {
    const char *name;   /**< key under `inputs:`; "model" defaults to the pipeline's model */
    int32_t required;   /**< 1: the stage cannot run without it */
    const char *doc;
} llmopt_input_desc;
LLMOPT_PIN(llmopt_input_desc, required, 8);
LLMOPT_PIN(llmopt_input_desc, doc, 16);

/** Stage flags. */
enum {
    LLMOPT_STAGE_OUTPUTS_MODEL = 1u << 0 /**< the stage sets an output model (else it only measures) */
};

/** A stage, registered by a plugin's init through llmopt_registrar.add_stage.
 *  The descriptor and everything it points to must live as long as the plugin. */
typedef struct llmopt_stage_desc {
    uint32_t struct_size;            /**< sizeof(llmopt_stage_desc) the plugin was built with */
    uint32_t flags;                  /**< LLMOPT_STAGE_* */
    const char *name;                /**< "family.method", e.g. "quantize.gptq"; unique */
    const char *summary;             /**< one line */
    const char *doc;                 /**< a paragraph for `describe`; may be NULL */
    const llmopt_param_desc *params; /**< the typed schema of `with:` */
    uint32_t n_params;
    uint32_t param_size;             /**< sizeof(llmopt_param_desc) the plugin was built with */
    const llmopt_input_desc *inputs; /**< accepted inputs; NULL means one optional "model" */
    uint32_t n_inputs;
    uint32_t input_size;             /**< sizeof(llmopt_input_desc) the plugin was built with */
    /** Optional cross-parameter checks, run by `validate` and before `run` with parameters
     *  only (no models). Return 0, or a status after llmopt_host_api.set_error. */
    int (*validate)(llmopt_stage_ctx *ctx);
    /** Does the work. Runs on a host pool thread; polls llmopt_host_api.cancelled in long loops
     *  and returns LLMOPT_ECANCELED when it is set. Return 0, or a status after set_error. */
    int (*run)(llmopt_stage_ctx *ctx);
    void *user;                      /**< passed back through llmopt_host_api.stage_user */
} llmopt_stage_desc;
LLMOPT_PIN(llmopt_stage_desc, flags, 4);
LLMOPT_PIN(llmopt_stage_desc, name, 8);
LLMOPT_PIN(llmopt_stage_desc, params, 32);
LLMOPT_PIN(llmopt_stage_desc, n_params, 40);
LLMOPT_PIN(llmopt_stage_desc, param_size, 44);
LLMOPT_PIN(llmopt_stage_desc, inputs, 48);
LLMOPT_PIN(llmopt_stage_desc, validate, 64);
LLMOPT_PIN(llmopt_stage_desc, run, 72);
LLMOPT_PIN(llmopt_stage_desc, user, 80);

/** Designated initialisers for a stage descriptor's schema arrays and their size fields:
 *  `LLMOPT_STAGE_PARAMS(params), LLMOPT_STAGE_INPUTS(inputs)` inside the initialiser. */
#define LLMOPT_STAGE_PARAMS(arr) .params = (arr), \
    .n_params = (uint32_t)(sizeof(arr) / sizeof((arr)[0])), .param_size = (uint32_t)sizeof(llmopt_param_desc)
#define LLMOPT_STAGE_INPUTS(arr) .inputs = (arr), \
    .n_inputs = (uint32_t)(sizeof(arr) / sizeof((arr)[0])), .input_size = (uint32_t)sizeof(llmopt_input_desc)

/** Which direction of a metric is an improvement. */
typedef enum llmopt_better {
    LLMOPT_BETTER_NONE = 0,
    LLMOPT_BETTER_LOWER = -1,
    LLMOPT_BETTER_HIGHER = 1
} llmopt_better;

#ifdef __cplusplus
}
#endif
#endif
