/* eval.speed: prefill tokens/s at prompt lengths 128 and 512, decode tokens/s, time to first
 * token, peak RSS, and model bytes in memory and on disk (the files it was loaded from). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "eval.h"

#define A eval_api

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best of `reps` runs of a prefill of n tokens: seconds. */
static int time_prefill(llmopt_stage_ctx *ctx, llmopt_session *s, const int32_t *ids, int n, float *logits, int reps,
                        double *best) {
    *best = 1e30;
    for (int r = 0; r < reps; r++) {
        A->session_rewind(s, 0);
        double t0 = now();
        int rc = A->session_forward(ctx, s, ids, n, logits, 0);
        double t = now() - t0;
        if (rc) return rc;
        if (t < *best) *best = t;
    }
    return 0;
}

static int speed_run(llmopt_stage_ctx *ctx) {
    const llmopt_model *m = A->stage_input(ctx, "model");
    int vocab = A->model_vocab(m), n_ctx = A->model_context(m);
    int decode = (int)A->param_int(ctx, "decode_tokens"), reps = (int)A->param_int(ctx, "repeats");
    if (vocab <= 0) return A->set_error(ctx, LLMOPT_EUNSUPPORTED, "the input is not a runnable model (gpt2, llama)");
    llmopt_session *s = A->session_new(ctx, m, 0);
    int32_t *ids = malloc((size_t)n_ctx * sizeof *ids);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!s || !ids || !logits) {
        A->session_free(s);
        free(ids);
        free(logits);
        return s ? A->set_error(ctx, LLMOPT_ENOMEM, "out of memory") : LLMOPT_EFAIL;
    }
    uint64_t x = A->seed(ctx) | 1;
    for (int i = 0; i < n_ctx; i++) { /* a fixed pseudo-random token sequence */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)vocab);
    }
    int rc = 0, lens[2] = {128, 512};
    for (int k = 0; !rc && k < 2; k++) {
        if (lens[k] > n_ctx) continue;
        double t;
        A->progress(ctx, k * 0.3, "prefill of %d tokens", lens[k]);
        rc = time_prefill(ctx, s, ids, lens[k], logits, reps, &t);
        if (!rc) {
            char name[32];
            snprintf(name, sizeof name, "prefill%d_tok_s", lens[k]);
            A->metric(ctx, name, lens[k] / t, "tok/s", LLMOPT_BETTER_HIGHER);
            if (k == 0) A->metric(ctx, "ttft128_s", t, "s", LLMOPT_BETTER_LOWER);
        }
    }
    /* decode: `decode` single-token steps after a 128-token prompt */
    int prompt = n_ctx <= 128 ? n_ctx / 2 : 128; /* leave room to decode in short contexts */
    if (!rc && prompt + decode > n_ctx) decode = n_ctx - prompt;
    if (!rc && decode > 0) {
        A->progress(ctx, 0.6, "decode of %d tokens", decode);
        A->session_rewind(s, 0);
        rc = A->session_forward(ctx, s, ids, prompt, logits, 0);
        double t0 = now();
        for (int i = 0; !rc && i < decode; i++) rc = A->session_forward(ctx, s, ids + prompt + i, 1, logits, 0);
        double t = now() - t0;
        if (!rc) A->metric(ctx, "decode_tok_s", decode / t, "tok/s", LLMOPT_BETTER_HIGHER);
    }
    if (!rc) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        A->metric(ctx, "peak_rss_bytes", (double)ru.ru_maxrss * 1024.0, "B", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "model_bytes", (double)A->model_nbytes(m), "B", LLMOPT_BETTER_LOWER);
        A->metric(ctx, "threads", (double)A->n_threads(), NULL, LLMOPT_BETTER_NONE);
    }
    free(ids);
    free(logits);
    A->session_free(s);
    return rc;
}

static const llmopt_param_desc params[] = {
    {.name = "decode_tokens", .type = LLMOPT_PARAM_INT, .default_value = "128", .min = 1, .max = 1 << 20,
     .doc = "tokens decoded one at a time after a 128-token prompt"},
    {.name = "repeats", .type = LLMOPT_PARAM_INT, .default_value = "3", .min = 1, .max = 1000,
     .doc = "prefill timings are the best of this many runs"},
};
static const llmopt_input_desc inputs[] = {{.name = "model", .required = 1, .doc = "the model to time"}};

const llmopt_stage_desc eval_speed_stage = {
    .struct_size = sizeof(llmopt_stage_desc),
    .name = "eval.speed",
    .summary = "prefill and decode tokens/s, time to first token, memory",
    .doc = "Times a prefill of 128 and of 512 tokens (best of `repeats`), then `decode_tokens`\n"
           "single-token steps after a 128-token prompt. Also reports the process's peak RSS and\n"
           "the model's bytes in memory.",
    LLMOPT_STAGE_PARAMS(params),
    LLMOPT_STAGE_INPUTS(inputs),
    .run = speed_run,
};
