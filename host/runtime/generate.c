/* Generation: prefill, then one decode step per token with the sampling chain of transformers'
 * generate() (RepetitionPenalty, Temperature, TopK, TopP logits processors, then multinomial). */
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

typedef struct cand {
    float logit;
    int32_t id;
} cand;

static int by_logit_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->logit, y = ((const cand *)b)->logit;
    if (x != y) return x > y ? -1 : 1;
    return ((const cand *)a)->id - ((const cand *)b)->id;
}

int32_t gen_pick(float *logits, int vocab, const gen_params *p, const int32_t *history, size_t n_history,
                 uint64_t *rng) {
    if (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f) {
        /* each distinct earlier token once: divide positive logits, multiply negative ones */
        unsigned char *seen = calloc((size_t)vocab, 1);
        for (size_t i = 0; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= vocab || (seen && seen[id])) continue;
            if (seen) seen[id] = 1;
            logits[id] = logits[id] < 0 ? logits[id] * p->repetition_penalty : logits[id] / p->repetition_penalty;
        }
        free(seen);
    }
    if (p->greedy || p->temperature <= 0) return argmax(logits, vocab);

    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return argmax(logits, vocab);
    for (int i = 0; i < vocab; i++) c[i] = (cand){logits[i] / p->temperature, i};
    qsort(c, (size_t)vocab, sizeof *c, by_logit_desc);
    int n = vocab;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    /* softmax over the kept candidates, then the smallest prefix whose mass reaches top_p */
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)(c[i].logit - c[0].logit));
    if (p->top_p > 0 && p->top_p < 1) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += exp((double)(c[i].logit - c[0].logit)) / sum;
            if (acc >= p->top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)(c[i].logit - c[0].logit));
    }
    double u = (double)(next_u64(rng) >> 11) * (1.0 / 9007199254740992.0) * sum, acc = 0;
    int32_t pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += exp((double)(c[i].logit - c[0].logit));
        if (u < acc) {
            pick = c[i].id;
            break;
        }
    }
    free(c);
    return pick;
}

int gen_run(tf_session *s, const int32_t *prompt, size_t n_prompt, const gen_params *p, gen_step_fn step,
            void *step_arg, int32_t **out, size_t *n_out, llmopt_error *err) {
    *out = NULL;
    *n_out = 0;
    if (n_prompt == 0) return error_set(err, LLMOPT_EINVAL, "the prompt has no tokens");
    int vocab = tf_model_arch(tf_session_model(s))->vocab;
    size_t cap = n_prompt + (size_t)(p->max_tokens > 0 ? p->max_tokens : 0);
    int32_t *all = malloc((cap ? cap : 1) * sizeof *all);   /* prompt + generated, for the penalty */
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!all || !logits) {
        free(all);
        free(logits);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    memcpy(all, prompt, n_prompt * sizeof *all);
    uint64_t rng = p->seed;
    tf_session_rewind(s, 0);
    int rc = tf_forward(s, prompt, (int)n_prompt, logits, 0, err);
    size_t n = 0;
    while (rc == 0 && n < (size_t)(p->max_tokens > 0 ? p->max_tokens : 0)) {
        int32_t id = gen_pick(logits, vocab, p, all, n_prompt + n, &rng);
        all[n_prompt + n++] = id;
        int end = 0;
        for (int e = 0; e < p->n_eos && e < GEN_MAX_EOS; e++) end |= id == p->eos[e];
        if (end) break;
        if (step && step(step_arg, all + n_prompt, n)) break;
        if (n == (size_t)p->max_tokens) break;
        if (tf_session_pos(s) >= tf_session_capacity(s)) break; /* context full */
        rc = tf_forward(s, &id, 1, logits, 0, err);
    }
    free(logits);
    if (rc) {
        free(all);
        return rc;
    }
    memmove(all, all + n_prompt, n * sizeof *all);
    *out = all;
    *n_out = n;
    return 0;
}
