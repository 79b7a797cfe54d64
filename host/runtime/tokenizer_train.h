/* Training a GPT-2 style byte-level BPE tokenizer on a text (Sennrich et al. 2016, sec. 3.2;
 * Radford et al. 2019, sec. 2.2), with the rules of Hugging Face tokenizers' BpeTrainer, so that
 * the same corpus and settings give the same vocabulary and merges; the result is a
 * tokenizer.json that tok_load_mem and tokenizers' Tokenizer.from_str both load. */
#ifndef HOST_RUNTIME_TOKENIZER_TRAIN_H
#define HOST_RUNTIME_TOKENIZER_TRAIN_H

#include <stddef.h>

#include "../util/error.h"

typedef struct tok_train_options {
    /* The vocabulary size to stop at: special tokens + the 256 byte symbols + merges (a merge
     * whose string is already a token adds no id, as in tokenizers). */
    int vocab_size;
    /* A pair is merged only while its count is at least this (0 and 1: any pair seen). */
    int min_frequency;
    /* Special tokens (non-empty UTF-8), ids 0..n_specials-1 in this order; kept whole: the
     * training text is split at them and they take part in no merge. */
    const char *const *specials;
    size_t n_specials;
    /* The ByteLevel pre-tokenizer's add_prefix_space: a space is put before every piece of text
     * that does not start with one (GPT-2: 0). */
    int add_prefix_space;
} tok_train_options;

/* Trains on text[0..len) (any bytes; ill-formed UTF-8 is split as U+FFFD would be, the bytes
 * kept) and writes a tokenizer.json into a malloc'd, NUL-terminated *tokenizer_json of
 * *json_len bytes (the caller frees it): model BPE with vocab in id order and merges in rank
 * order, ByteLevel pre-tokenizer (use_regex), decoder and post-processor, the specials as
 * special added tokens.
 * Ids: the specials, then the 256 byte symbols in code point order of their GPT-2 characters,
 * then one per merge in the order made. Each step merges the adjacent pair with the largest
 * count over the corpus's words; a tie goes to the smallest (left id, right id), as in
 * tokenizers. Deterministic: the same input gives the same bytes.
 * Errors: LLMOPT_EINVAL (bad options: vocab_size < 1, min_frequency < 0, an empty, duplicate or
 * ill-formed special), LLMOPT_ENOMEM. */
int tok_train_bpe(const char *text, size_t len, const tok_train_options *o, char **tokenizer_json, size_t *json_len,
                  llmopt_error *err);

/* The tokenizer_config.json that goes with it (transformers' GPT2TokenizerFast): bos, eos and
 * unk tokens = the first special (absent without specials), add_prefix_space, and
 * model_max_length (> 0). Same ownership as tok_train_bpe. */
int tok_train_config_json(const tok_train_options *o, int model_max_length, char **config_json, size_t *json_len,
                          llmopt_error *err);

#endif
