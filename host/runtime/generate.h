/* Text generation over a transformer session: greedy or sampled (temperature, top-k, top-p),
 * with a repetition penalty, a token budget, end-of-sequence and caller-defined stop checks
 * (stop strings need the tokenizer, which the caller owns). Processing order as transformers'
 * generate(): repetition penalty, temperature, top-k, top-p, then sampling. */
#ifndef HOST_RUNTIME_GENERATE_H
#define HOST_RUNTIME_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include "transformer.h"

/* End-of-sequence ids a generation stops at, at most. */
#define GEN_MAX_EOS 8

typedef struct gen_params {
    int max_tokens;           /* new tokens at most */
    int greedy;               /* argmax (also when temperature <= 0) */
    float temperature;
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float repetition_penalty; /* 1: off (CTRL paper's penalty, as transformers) */
    uint64_t seed;
    int32_t eos[GEN_MAX_EOS]; /* stop after any of these tokens (Llama 3 has three) */
    int n_eos;                /* 0: none */
} gen_params;

/* Called after each new token with every generated id so far; return non-zero to stop. */
typedef int (*gen_step_fn)(void *arg, const int32_t *ids, size_t n);

/* Runs the prompt (prefill), then decodes up to max_tokens new tokens. *out (malloc'd) gets the
 * new ids, the eos id included when one was produced. The session starts from position 0. */
int gen_run(tf_session *s, const int32_t *prompt, size_t n_prompt, const gen_params *p, gen_step_fn step,
            void *step_arg, int32_t **out, size_t *n_out, llmopt_error *err);

/* Picks the next token from logits[vocab] (modified in place). history: ids the repetition
 * penalty applies to. rng: the generator state. Exposed for tests. */
int32_t gen_pick(float *logits, int vocab, const gen_params *p, const int32_t *history, size_t n_history,
                 uint64_t *rng);

#endif
