/* eval.generate: completions of given prompts, into the report and completions.jsonl. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

#define A eval_api

static int generate_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    size_t n_prompts = A->param_list_len(ctx, "prompts");
    llmopt_gen_params p = {.struct_size = sizeof p,
                           .max_tokens = (int32_t)A->param_int(ctx, "max_tokens"),
                           .greedy = A->param_bool(ctx, "greedy"),
                           .temperature = (float)A->param_float(ctx, "temperature"),
                           .top_k = (int32_t)A->param_int(ctx, "top_k"),
                           .top_p = (float)A->param_float(ctx, "top_p"),
                           .repetition_penalty = (float)A->param_float(ctx, "repetition_penalty"),
                           .seed = A->seed(ctx),
                           .stop_at_eos = 1};
    llmopt_session *s = A->session_new(ctx, m, 0);
    if (!s) return LLMOPT_EFAIL;
    char path[4096];
    snprintf(path, sizeof path, "%s/completions.jsonl", A->stage_dir(ctx));
    FILE *f = fopen(path, "w");
    if (!f) {
        A->session_free(s);
        return A->set_error(ctx, LLMOPT_EIO, "cannot write %s", path);
    }
    int rc = 0;
    size_t total_tokens = 0;
    for (size_t i = 0; !rc && i < n_prompts; i++) {
        const char *prompt = A->param_list_at(ctx, "prompts", i);
        int32_t *ids = NULL, *out = NULL;
        size_t n = 0, n_out = 0, len = 0;
        char *text = NULL;
        rc = A->tokenize(ctx, m, prompt, strlen(prompt), 1, &ids, &n);
        if (!rc) rc = A->generate(ctx, s, ids, n, &p, &out, &n_out);
        if (!rc) rc = A->detokenize(ctx, m, out, n_out, 1, &text, &len);
        if (!rc) {
            char name[32];
            snprintf(name, sizeof name, "completion %zu", i + 1);
            A->report_text(ctx, name, text);
            json_t *rec = json_pack("{s:s, s:s%, s:I}", "prompt", prompt, "completion", text, len, "tokens", (json_int_t)n_out);
            char *line = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
            if (line) fprintf(f, "%s\n", line);
            free(line);
            json_decref(rec);
            total_tokens += n_out;
        }
        A->mem_free(ids);
        A->mem_free(out);
        A->mem_free(text);
        A->progress(ctx, (double)(i + 1) / (double)n_prompts, "%zu/%zu prompts", i + 1, n_prompts);
        if (!rc && A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled");
    }
    if (fclose(f) != 0 && !rc) rc = A->set_error(ctx, LLMOPT_EIO, "cannot write %s", path);
    if (!rc) A->metric(ctx, "generated_tokens", (double)total_tokens, NULL, LLMOPT_BETTER_NONE);
    A->session_free(s);
    return rc;
}

static const llmopt_param_desc params[] = {
    {.name = "prompts", .type = LLMOPT_PARAM_LIST, .required = 1, .doc = "the prompts to complete"},
    {.name = "max_tokens", .type = LLMOPT_PARAM_INT, .default_value = "48", .min = 1, .max = 1 << 20,
     .doc = "new tokens per completion at most"},
    {.name = "greedy", .type = LLMOPT_PARAM_BOOL, .default_value = "false", .doc = "always the most likely token"},
    {.name = "temperature", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.8", .min = 0, .max = 100,
     .doc = "sampling temperature"},
    {.name = "top_k", .type = LLMOPT_PARAM_INT, .default_value = "40", .min = 0, .max = 1 << 24,
     .doc = "sample among the k most likely tokens (0 = all)"},
    {.name = "top_p", .type = LLMOPT_PARAM_FLOAT, .default_value = "0.95", .min = 1e-6, .max = 1,
     .doc = "nucleus sampling mass"},
    {.name = "repetition_penalty", .type = LLMOPT_PARAM_FLOAT, .default_value = "1.0", .min = 1e-3, .max = 100,
     .doc = "penalty for tokens already present (1 = off)"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to sample"}};

const llmopt_stage_desc eval_generate_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "eval.generate",
    .summary = "complete prompts; the texts go into the report and completions.jsonl",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = generate_run,
};
