/* The evaluation plugin: perplexity, multiple-choice accuracy, completions and speed, all run
 * through the host's model runtime (llmopt_host_api's session and tokenizer members). */
#ifndef PLUGINS_EVAL_EVAL_H
#define PLUGINS_EVAL_EVAL_H

#include <llmopt/llmopt.h>

extern const llmopt_host_api *eval_api;

extern const llmopt_stage_desc eval_perplexity_stage, eval_choice_stage, eval_generate_stage, eval_speed_stage;

/* -log softmax(logits[0..V))[target], in double precision. */
double eval_nll(const float *logits, int vocab, int32_t target);

#endif
