/* eval.choice: multiple-choice accuracy by log-likelihood, as lm-evaluation-harness scores
 * multiple_choice tasks: each choice's summed log-probability as a continuation of the context;
 * acc takes the best sum, acc_norm the best sum per byte of the choice's text. */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

#define A eval_api

/* Summed log p(cont | ctx) of the tokens cont[0..n_cont). */
static int loglik(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *all, size_t n_ctx, size_t n_all,
                  int vocab, float *logits, double *out) {
    A->session_rewind(s, 0);
    int rc = 0;
    if (n_ctx > 1) rc = A->session_forward(ctx, s, all, (int)(n_ctx - 1), NULL, 0);
    size_t k = n_all - n_ctx;                 /* positions n_ctx-1 .. n_all-2 predict the continuation */
    if (!rc) rc = A->session_forward(ctx, s, all + n_ctx - 1, (int)k, logits, 1);
    double sum = 0;
    for (size_t j = 0; !rc && j < k; j++) sum -= eval_nll(logits + j * (size_t)vocab, vocab, all[n_ctx + j]);
    *out = sum;
    return rc;
}

/* Tokens of context+choice, and where the choice starts: the harness encodes the whole string
 * and takes the context's own encoding length as the split (a space ending the context moves to
 * the choice). */
static int encode_pair(llmopt_stage_ctx *ctx, const llmopt_model *m, const char *context, const char *choice,
                       int32_t **ids, size_t *n, size_t *n_ctx) {
    size_t lc = strlen(context), lch = strlen(choice);
    while (lc > 0 && context[lc - 1] == ' ') lc--;
    size_t moved = strlen(context) - lc;
    char *whole = malloc(lc + moved + lch + 1);
    if (!whole) return A->set_error(ctx, LLMOPT_ENOMEM, "out of memory");
    memcpy(whole, context, lc + moved);
    memcpy(whole + lc + moved, choice, lch + 1);
    int32_t *cids = NULL;
    size_t nc = 0;
    int rc = A->tokenize(ctx, m, context, lc, 1, &cids, &nc);
    if (!rc) rc = A->tokenize(ctx, m, whole, lc + moved + lch, 1, ids, n);
    free(whole);
    A->mem_free(cids);
    if (rc) return rc;
    *n_ctx = nc < *n ? nc : *n - 1;
    if (*n_ctx == 0) *n_ctx = 1; /* the first token can't be predicted: it stays context */
    return 0;
}

static int choice_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    const char *entry = A->param_str(ctx, "data");
    int64_t limit = A->param_int(ctx, "limit");
    int vocab = A->model_vocab(m);
    if (vocab <= 0) return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a runnable model (gpt2, llama)");
    char *text = NULL;
    size_t len = 0;
    int rc = A->data_read(ctx, entry, &text, &len);
    if (rc) return rc;
    int n_ctx_max = A->model_context(m);
    llmopt_session *s = A->session_new(ctx, m, 0);
    float *logits = malloc((size_t)n_ctx_max * (size_t)vocab * sizeof *logits);
    if (!s || !logits) {
        A->mem_free(text);
        A->session_free(s);
        free(logits);
        return s ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory") : LLMOPT_EFAIL;
    }
    size_t total = 0, n_lines = 0;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    double acc = 0, acc_norm = 0;
    char *save = NULL;
    size_t line_no = 0;
    for (char *line = strtok_r(text, "\n", &save); !rc && line; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        if (!*line || (limit > 0 && (int64_t)total >= limit)) continue;
        json_error_t jerr;
        json_t *rec = json_loads(line, 0, &jerr);
        json_t *jc = json_object_get(rec, "context"), *jch = json_object_get(rec, "choices"), *jl = json_object_get(rec, "label");
        if (!rec || !json_is_string(jc) || !json_is_array(jch) || json_array_size(jch) < 2 || !json_is_integer(jl) ||
            json_integer_value(jl) < 0 || (size_t)json_integer_value(jl) >= json_array_size(jch)) {
            rc = A->set_error(ctx, LLMOPT_EFORMAT, "data '%s' line %zu: expected {\"context\": str, \"choices\": [str, ...], "
                              "\"label\": index}%s%s", entry, line_no, rec ? "" : ": ", rec ? "" : jerr.text);
            json_decref(rec);
            break;
        }
        size_t nch = json_array_size(jch), best = 0, best_norm = 0;
        double best_ll = 0, best_ll_norm = 0;
        for (size_t c = 0; !rc && c < nch; c++) {
            const char *choice = json_string_value(json_array_get(jch, c));
            if (!choice) {
                rc = A->set_error(ctx, LLMOPT_EFORMAT, "data '%s' line %zu: choice %zu is not a string", entry, line_no, c);
                break;
            }
            int32_t *ids = NULL;
            size_t n = 0, n_ctx = 0;
            double ll = 0;
            rc = encode_pair(ctx, m, json_string_value(jc), choice, &ids, &n, &n_ctx);
            if (!rc && n > (size_t)n_ctx_max) rc = A->set_error(ctx, LLMOPT_EINVAL, "data '%s' line %zu: %zu tokens exceed the "
                                                              "model's context of %d", entry, line_no, n, n_ctx_max);
            if (!rc) rc = loglik(ctx, s, ids, n_ctx, n, vocab, logits, &ll);
            A->mem_free(ids);
            double norm = ll / (double)(strlen(choice) ? strlen(choice) : 1);
            if (c == 0 || ll > best_ll) best = c, best_ll = ll;
            if (c == 0 || norm > best_ll_norm) best_norm = c, best_ll_norm = norm;
        }
        if (!rc) {
            acc += best == (size_t)json_integer_value(jl);
            acc_norm += best_norm == (size_t)json_integer_value(jl);
            total++;
        }
        json_decref(rec);
        A->progress(ctx, n_lines ? (double)line_no / (double)n_lines : -1, "%zu questions, acc %.3f", total,
                    total ? acc / (double)total : 0);
        if (A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled after %zu questions", total);
    }
    if (!rc && total == 0) rc = A->set_error(ctx, LLMOPT_EINVAL, "data '%s' has no questions", entry);
    if (!rc) {
        A->metric(ctx, "acc", acc / (double)total, NULL, LLMOPT_BETTER_HIGHER);
        A->metric(ctx, "acc_norm", acc_norm / (double)total, NULL, LLMOPT_BETTER_HIGHER);
        A->metric(ctx, "questions", (double)total, NULL, LLMOPT_BETTER_NONE);
    }
    free(logits);
    A->session_free(s);
    A->mem_free(text);
    return rc;
}

static const llmopt_param_desc params[] = {
    {.name = "data", .type = LLMOPT_PARAM_STRING, .default_value = "choice",
     .doc = "data entry: JSONL lines {\"context\": ..., \"choices\": [...], \"label\": i}"},
    {.name = "limit", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e9,
     .doc = "score at most this many questions (0 = all)"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to measure"}};

const llmopt_stage_desc eval_choice_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "eval.choice",
    .summary = "multiple-choice accuracy by log-likelihood (acc, acc_norm)",
    .doc = "For each JSONL question, scores every choice by the summed log-probability of its tokens\n"
           "after the context (lm-evaluation-harness style). acc: the best sum is the label;\n"
           "acc_norm: the best sum per byte of the choice is the label.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = choice_run,
};
