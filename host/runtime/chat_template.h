/* Chat templates: renders tokenizer_config.json's chat_template (tok_chat_template) for a list of
 * messages as transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt)
 * does, with a small, bounded interpreter for the Jinja2 subset that common templates use. */
#ifndef HOST_RUNTIME_CHAT_TEMPLATE_H
#define HOST_RUNTIME_CHAT_TEMPLATE_H

#include <stddef.h>

#include "../util/error.h"

typedef struct chat_message {
    const char *role;    /* "system", "user", "assistant", ... (UTF-8, NUL-terminated) */
    const char *content; /* UTF-8, NUL-terminated */
} chat_message;

/* Renders tmpl with the variables apply_chat_template passes: messages (a list of
 * {'role', 'content'} dicts), bos_token and eos_token (left undefined when NULL),
 * add_generation_prompt, and tools/documents (none). The environment is transformers':
 * trim_blocks and lstrip_blocks on, one trailing newline of the template dropped, break/continue
 * allowed, raise_exception(msg) a global. *out is a malloc'd, NUL-terminated string of *len
 * bytes (the caller frees it); NULL on failure.
 *
 * Errors name the construct and its line and column in the template: LLMOPT_EFORMAT (syntax:
 * an unterminated tag, a missing endif), LLMOPT_EUNSUPPORTED (a statement, filter, test, method
 * or function outside the subset, see chat_template.c), LLMOPT_EINVAL (raise_exception, whose
 * message is in err, or a type error such as 'a' + 1), LLMOPT_EFAIL (the template ran past the
 * step, memory or output bounds), LLMOPT_ENOMEM. Never crashes or loops without bound. */
int chat_render(const char *tmpl, const chat_message *msgs, size_t n, const char *bos, const char *eos,
                int add_generation_prompt, char **out, size_t *len, llmopt_error *err);

#endif
