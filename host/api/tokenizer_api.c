/* The tokenizer-training member of the host API table: tok_train_bpe on a stage's text, the
 * result stored with a model (the way a model directory carries tokenizer.json), so a stage that
 * builds a model from scratch can give it its own tokenizer. */
#include <stdlib.h>

#include "tokenizer_api.h"
#include "../runtime/arch.h"
#include "../runtime/runtime.h"
#include "../runtime/tokenizer_train.h"
#include "../sched/stage_ctx.h"

static int api_tokenizer_train(llmopt_stage_ctx *ctx, const char *text, size_t len, int vocab_size,
                               int min_frequency, const char *const *specials, size_t n_specials, llmopt_model *m) {
    llmopt_error err = {0};
    tok_train_options o = {.vocab_size = vocab_size, .min_frequency = min_frequency, .specials = specials,
                           .n_specials = n_specials};
    arch_config c;
    llmopt_error ignored = {0};
    int max_len = m && arch_from_model(m, &c, &ignored) == 0 && c.n_ctx > 0 ? c.n_ctx : 1024;
    char *json = NULL, *config = NULL;
    size_t json_len = 0, config_len = 0;
    int rc;
    if (!m || (!text && len)) rc = error_set(&err, LLMOPT_EINVAL, "tokenizer_train: NULL model or text");
    else if ((rc = tok_train_bpe(text, len, &o, &json, &json_len, &err)) == 0 &&
             (rc = tok_train_config_json(&o, max_len, &config, &config_len, &err)) == 0 &&
             (rt_model_set_file(m, "tokenizer_config.json", config, config_len) != 0 ||
              rt_model_set_file(m, "tokenizer.json", json, json_len) != 0))
        rc = error_set(&err, LLMOPT_ENOMEM, "tokenizer_train: out of memory storing the tokenizer");
    free(json);
    free(config);
    if (rc != 0 && ctx) ctx->err = err;
    return rc;
}

void tokenizer_api_fill(llmopt_host_api *api) { api->tokenizer_train = api_tokenizer_train; }
