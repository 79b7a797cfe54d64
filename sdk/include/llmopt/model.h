/* llmopt SDK: models. A model is an architecture config, named tensors (named as in the
 * Hugging Face checkpoint, so load/save round trips are lossless) and provenance. It is opaque
 * and refcounted; plugins reach it through llmopt_host_api's model_* members. */
#ifndef LLMOPT_MODEL_H
#define LLMOPT_MODEL_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque model handle. Models handed to a stage as inputs are borrowed and read-only; a stage
 *  that changes a model clones it (sharing every tensor) and sets the clone as its output. */
typedef struct llmopt_model llmopt_model;

#ifdef __cplusplus
}
#endif
#endif
