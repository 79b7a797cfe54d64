/* The tokenizer-training member of the host API table (tokenizer_api.c): trains a byte-level BPE
 * tokenizer and attaches it to a model as its tokenizer.json and tokenizer_config.json. */
#ifndef HOST_API_TOKENIZER_API_H
#define HOST_API_TOKENIZER_API_H

#include <llmopt/llmopt.h>

/* Fills the tokenizer-training member of the table. */
void tokenizer_api_fill(llmopt_host_api *api);

#endif
