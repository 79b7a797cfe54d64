/* Training data for the finetune stages: plain text cut into windows for causal LM, and JSONL
 * SFT records ({prompt, response} or {messages: [...]}) with the loss on response tokens only,
 * packed into windows; the order in which windows are drawn (a function of seed and step, so a
 * resumed run continues identically); learning-rate schedules. No host API in here: tokenizing
 * and chat rendering come as callbacks, so the unit tests compile this file directly. */
#ifndef FINETUNE_DATA_H
#define FINETUNE_DATA_H

#include <stddef.h>
#include <stdint.h>

#define FT_IGNORE (-100) /* a target the loss skips (torch's ignore_index) */

enum { FT_FORMAT_TEXT = 0, FT_FORMAT_JSONL_SFT = 1 };

/* What the data builder needs from a tokenizer. encode returns 0 or a negative status, *ids
 * freed with free_mem. render (may be NULL) renders chat messages with the model's template:
 * 0, LLMOPT_ENOTFOUND when there is no template (the "User:/Assistant:" fallback is used), or
 * another negative status (an error: the builder stops). */
typedef struct ft_tokenizer {
    void *arg;
    int (*encode)(void *arg, const char *text, size_t len, int add_special, int32_t **ids, size_t *n);
    int (*render)(void *arg, const char *const *roles, const char *const *contents, size_t n, int add_gen,
                  char **out, size_t *len);
    void (*free_mem)(void *arg, void *p);
    int32_t eos; /* appended (as a target) after each response in the fallback format; -1: none */
} ft_tokenizer;

typedef struct ft_data_options {
    int format;        /* FT_FORMAT_* */
    int seq;           /* T: tokens per window (targets are the next T tokens) */
    int skip_bad;      /* 1: malformed JSONL lines are skipped (and listed); 0: the first fails */
    int truncate_long; /* 1: a record longer than T+1 tokens is truncated (counted); 0: error */
} ft_data_options;

typedef struct ft_dataset {
    int seq;
    size_t n;                 /* windows */
    int32_t *inputs;          /* [n, seq]; padding positions hold 0 */
    int32_t *targets;         /* [n, seq]; FT_IGNORE where there is no loss */
    size_t n_targets;         /* targets that are not FT_IGNORE */
    size_t n_records;         /* JSONL records used */
    size_t n_truncated;       /* records cut to seq + 1 tokens */
    size_t n_bad;             /* malformed lines skipped */
    size_t bad_lines[16];     /* the first of them (1-based line numbers) */
} ft_dataset;

/* Builds windows from text. Returns 0, or a negative LLMOPT_E* status with a message in err
 * (a malformed line names its 1-based line number; an empty dataset is LLMOPT_EINVAL). */
int ft_dataset_build(const char *text, size_t len, const ft_data_options *o, const ft_tokenizer *tok,
                     ft_dataset *out, char *err, size_t err_len);
void ft_dataset_free(ft_dataset *d);

/* One record's tokens and loss mask before packing: mask[i] = 1 when ids[i] is a target. */
typedef struct ft_record {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
} ft_record;

/* Tokenizes one JSONL line (without its newline) into r (reset first). 0, or LLMOPT_EFORMAT with
 * a message for a malformed record, or another status from the tokenizer. */
int ft_record_parse(const char *line, size_t len, const ft_tokenizer *tok, ft_record *r, char *err, size_t err_len);
void ft_record_free(ft_record *r);

/* Window order: epoch e = g / n draws window perm_e[g % n], perm_e a Fisher-Yates permutation
 * seeded by (seed, e); identity when shuffle is 0. g = (step * accum + micro) * batch + row. */
typedef struct ft_order {
    size_t n;
    int shuffle;
    uint64_t seed;
    int64_t epoch;  /* of perm; -1 before the first draw */
    size_t *perm;
} ft_order;
int ft_order_init(ft_order *o, size_t n, uint64_t seed, int shuffle);
size_t ft_order_at(ft_order *o, uint64_t g);
void ft_order_free(ft_order *o);

/* Learning-rate schedules as transformers' get_*_schedule_with_warmup: the rate of optimizer
 * step `step` (0-based) of `total` is lr * step / warmup during warmup, then constant, linear to
 * 0 at `total`, or half a cosine to 0 at `total`. */
enum { FT_SCHED_CONSTANT = 0, FT_SCHED_LINEAR = 1, FT_SCHED_COSINE = 2 };
double ft_lr_at(int schedule, double lr, int warmup, int total, int step);

#endif
