/* The model-runtime members of the host API table, and the runtime helpers they share with the
 * CLI (a model's parsed tokenizer, its eos id, dataset splits). */
#ifndef HOST_API_RUNTIME_API_H
#define HOST_API_RUNTIME_API_H

#include <llmopt/llmopt.h>
#include "../runtime/data.h"
#include "../runtime/tokenizer.h"
#include "../sched/stage_ctx.h"

/* Fills the runtime members of the table. */
void runtime_api_fill(llmopt_host_api *api);

/* The model's tokenizer, parsed once from its tokenizer.json and shared by its clones. */
const tok_tokenizer *rt_model_tokenizer(const llmopt_model *m, llmopt_error *err);
/* The end-of-sequence id: the tokenizer's, else config.json's eos_token_id; -1 if none. */
int32_t rt_model_eos(const llmopt_model *m);
/* Every end-of-sequence id of the model, at most max into out: the tokenizer's (its config's
 * eos_token and generation_config.json's eos_token_id, one id or a list), else config.json's and
 * generation_config.json's eos_token_id. Returns how many. */
int rt_model_eos_ids(const llmopt_model *m, int32_t *out, int max);

#endif
