/* eval.perplexity: sliding-window perplexity as in the transformers "Perplexity of fixed-length
 * models" recipe (window = max_length, stride), token-weighted: every token after the first is
 * predicted exactly once, with up to window-1 tokens of context, and ppl = exp(sum nll / count). */
#include <math.h>
#include <stdlib.h>

#include "eval.h"

#define A eval_api
#define CHUNK 256 /* positions whose logits are held at once: bounds memory to CHUNK x vocab */

static int ppl_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    const char *entry = A->param_str(ctx, "data");
    int64_t window = A->param_int(ctx, "window"), stride = A->param_int(ctx, "stride");
    int64_t max_tokens = A->param_int(ctx, "max_tokens");
    int vocab = A->model_vocab(m), n_ctx = A->model_context(m);
    if (vocab <= 0) return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a runnable model (gpt2, llama)");
    if (window == 0 || window > n_ctx) window = n_ctx;
    if (stride == 0 || stride > window) stride = window;

    char *text = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    int rc = A->data_read(ctx, entry, &text, &len);
    if (!rc) rc = A->tokenize(ctx, m, text, len, A->param_bool(ctx, "add_special"), &ids, &n);
    A->mem_free(text);
    if (rc) return rc;
    if (max_tokens > 0 && (size_t)max_tokens < n) n = (size_t)max_tokens;
    if (n < 2) {
        A->mem_free(ids);
        return A->set_error(ctx, LLMOPT_EINVAL, "data '%s' has %zu tokens; perplexity needs at least 2", entry, n);
    }
    llmopt_session *s = A->session_new(ctx, m, (int)window);
    float *logits = malloc((size_t)CHUNK * (size_t)vocab * sizeof *logits);
    if (!s || !logits) {
        A->mem_free(ids);
        free(logits);
        A->session_free(s);
        return s ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory") : LLMOPT_EFAIL;
    }
    double nll = 0;
    size_t count = 0, prev_end = 0;
    for (size_t begin = 0; !rc && begin < n; begin += (size_t)stride) {
        size_t end = begin + (size_t)window < n ? begin + (size_t)window : n;
        /* targets are the tokens in [max(prev_end, begin+1), end) */
        size_t first = prev_end > begin + 1 ? prev_end : begin + 1;
        A->session_rewind(s, 0);
        /* context before the first target: no logits needed */
        if (first - 1 > begin) rc = A->session_forward(ctx, s, ids + begin, (int)(first - 1 - begin), NULL, 0);
        for (size_t p = first - 1; !rc && p < end - 1; p += CHUNK) {
            size_t k = end - 1 - p < CHUNK ? end - 1 - p : CHUNK;  /* positions p..p+k-1 predict p+1..p+k */
            rc = A->session_forward(ctx, s, ids + p, (int)k, logits, 1);
            for (size_t j = 0; !rc && j < k; j++) nll += eval_nll(logits + j * (size_t)vocab, vocab, ids[p + j + 1]);
            count += rc ? 0 : k;
        }
        prev_end = end;
        A->progress(ctx, (double)end / (double)n, "%zu/%zu tokens, ppl %.3f", end, n, exp(nll / (double)(count ? count : 1)));
        if (A->cancelled(ctx)) rc = A->set_error(ctx, LLMOPT_ECANCELED, "cancelled after %zu tokens", end);
        if (end == n) break;
    }
    if (!rc) {
        A->metric(ctx, "ppl", exp(nll / (double)count), NULL, LLMOPT_BETTER_LOWER);
        A->metric(ctx, "nll", nll / (double)count, "nats/token", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "tokens", (double)count, NULL, LLMOPT_BETTER_NONE);
    }
    free(logits);
    A->session_free(s);
    A->mem_free(ids);
    return rc;
}

static const llmopt_param_desc params[] = {
    {.name = "data", .type = LLMOPT_PARAM_STRING, .default_value = "eval",
     .doc = "the pipeline data entry to measure on (its split applies)"},
    {.name = "window", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1 << 20,
     .doc = "tokens per window (transformers' max_length); 0 = the model's context"},
    {.name = "stride", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1 << 20,
     .doc = "tokens the window moves by; each token is scored once, with up to window-1 of context; 0 = window"},
    {.name = "max_tokens", .type = LLMOPT_PARAM_INT, .default_value = "0", .min = 0, .max = 1e12,
     .doc = "score at most this many tokens of the data (0 = all)"},
    {.name = "add_special", .type = LLMOPT_PARAM_BOOL, .default_value = "true",
     .doc = "apply the tokenizer's post-processor (e.g. a leading bos) as tokenizers' encode does"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to measure"}};

const llmopt_stage_desc eval_perplexity_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "eval.perplexity",
    .summary = "sliding-window perplexity on a dataset",
    .doc = "Tokenizes the data entry, slides a window of `window` tokens by `stride`, and scores\n"
           "every token after the first exactly once (the transformers recipe, token-weighted).\n"
           "Metrics: ppl, nll (nats/token), tokens.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = ppl_run,
};
