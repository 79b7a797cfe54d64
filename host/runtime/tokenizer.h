/* Hugging Face tokenizer.json (model type BPE) in C: GPT-2 style byte-level BPE and Llama style
 * BPE with byte fallback, added/special tokens, and the bos/eos/chat template of the
 * tokenizer_config.json and generation_config.json beside it. Encodings match the `tokenizers`
 * library's Tokenizer.encode(text).ids; see tokenizer.c for what is supported. */
#ifndef HOST_RUNTIME_TOKENIZER_H
#define HOST_RUNTIME_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../util/error.h"

typedef struct tok_tokenizer tok_tokenizer;

/* Loads dir_or_file: a directory holding tokenizer.json (and optionally tokenizer_config.json,
 * generation_config.json), or a tokenizer.json file itself (its directory is searched for the
 * config files). Errors name the file and the field: LLMOPT_EIO (unreadable), LLMOPT_EFORMAT
 * (malformed), LLMOPT_EUNSUPPORTED (a model, normalizer, pre-tokenizer, decoder or
 * post-processor type this loader does not implement). *out is NULL on failure. */
int tok_load(const char *dir_or_file, tok_tokenizer **out, llmopt_error *err);
/* The same from memory: json is tokenizer.json's text (name is used in messages); config and
 * gen_config are tokenizer_config.json's and generation_config.json's texts, or NULL. */
int tok_load_mem(const char *name, const char *json, size_t len, const char *config, size_t config_len,
                 const char *gen_config, size_t gen_config_len, tok_tokenizer **out, llmopt_error *err);
void tok_free(tok_tokenizer *t);

/* Encodes text[0..len) into a malloc'd array *ids of *n ids (the caller frees it). add_special
 * applies the post-processor (e.g. Llama's "<s> $A" template), as tokenizers' encode does by
 * default. Ill-formed UTF-8 never fails: each bad byte is treated as U+FFFD; with a byte-level
 * pre-tokenizer it is split as U+FFFD would be but keeps its own byte, so decode returns the
 * input bytes exactly. Safe to call from several threads on one tokenizer. */
int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
               size_t *n, llmopt_error *err);
/* Decodes ids into a malloc'd, NUL-terminated *text of *len bytes (the caller frees it).
 * skip_special drops special added tokens. Ids out of range are an error (LLMOPT_EINVAL).
 * Byte-level tokens decode to their exact bytes (tokenizers would replace a resulting ill-formed
 * UTF-8 sequence by U+FFFD; valid text is identical); the ByteFallback decoder, like
 * tokenizers', gives one U+FFFD per byte token of an ill-formed sequence. */
int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
               size_t *len, llmopt_error *err);

/* One more than the largest id of the vocabulary and the added tokens. */
size_t tok_vocab_size(const tok_tokenizer *t);
/* The bos/eos ids from tokenizer_config.json (bos_token, eos_token), else from
 * generation_config.json (bos_token_id, eos_token_id: the first when a list); -1 if none. */
int32_t tok_bos(const tok_tokenizer *t);
int32_t tok_eos(const tok_tokenizer *t);
/* Every end-of-sequence id: tok_eos and all of generation_config.json's eos_token_id list. */
const int32_t *tok_eos_ids(const tok_tokenizer *t, size_t *n);
/* tokenizer_config.json's add_bos_token / add_eos_token (0 when absent). Informational: encode
 * follows tokenizer.json's post-processor, as tokenizers does. */
int tok_add_bos(const tok_tokenizer *t);
int tok_add_eos(const tok_tokenizer *t);
/* tokenizer_config.json's chat_template (the "default" one when it is a list), or NULL. */
const char *tok_chat_template(const tok_tokenizer *t);
/* The token string of id as stored in tokenizer.json (byte-level tokens in their mapped form,
 * e.g. "Ġthe"), or NULL when id names no token. */
const char *tok_token(const tok_tokenizer *t, int32_t id);
/* The id of a token string (vocabulary or added token), or -1. */
int32_t tok_token_id(const tok_tokenizer *t, const char *token);
/* 1 if id is an added token marked special. */
int tok_is_special(const tok_tokenizer *t, int32_t id);

#endif
