/* libFuzzer target: bytes as a chat template (tokenizer_config.json's "chat_template", which comes
 * with any checkpoint a user downloads), optionally followed by NUL-separated role and content
 * strings (a conversation; a fixed four-message one when none is given), through chat_render
 * with and without a generation prompt and bos/eos tokens.
 *
 * Checked beyond "no crash, no leak, no hang": a success returns a NUL-terminated string of the
 * length it reports; a failure returns no string, one of the statuses chat_template.h lists and
 * a message; the same call renders the same bytes twice. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llmopt/common.h"
#include "runtime/chat_template.h"

#define MAX_MSGS 64

static const chat_message fixed[] = {
    {"system", "You are a helpful assistant."},
    {"user", "Hello, who are you?"},
    {"assistant", "  I am an AI. \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 "},
    {"user", "{{ not a tag }} 'q' \"d\"\n"},
};

static int documented(int rc) {
    return rc == LLMOPT_EFORMAT || rc == LLMOPT_EUNSUPPORTED || rc == LLMOPT_EINVAL || rc == LLMOPT_EFAIL ||
           rc == LLMOPT_ENOMEM;
}

static void render(const char *tmpl, const chat_message *m, size_t n, const char *bos, const char *eos, int gen,
                   int twice) {
    char *out = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    int rc = chat_render(tmpl, m, n, bos, eos, gen, &out, &len, &err);
    if (rc == 0) {
        if (!out || out[len] != '\0') abort();
        if (twice) {
            char *again = NULL;
            size_t len2 = 0;
            llmopt_error err2 = {0};
            if (chat_render(tmpl, m, n, bos, eos, gen, &again, &len2, &err2) != 0) abort();
            if (len2 != len || memcmp(out, again, len) != 0) abort();
            free(again);
        }
    } else if (out || !documented(rc) || err.msg[0] == '\0') {
        abort();
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* one copy, NUL-terminated, so every NUL-separated part is a C string */
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    const char *tmpl = buf, *end = buf + size;
    const char *p = buf + strlen(buf);

    chat_message msgs[MAX_MSGS];
    size_t n = 0;
    while (p < end && n < MAX_MSGS) {
        const char *role = p + 1;
        if (role >= end) break;
        const char *content = role + strlen(role) + 1;
        if (content > end) break;
        msgs[n].role = role;
        msgs[n].content = content;
        n++;
        p = content + strlen(content);
    }
    const chat_message *m = n ? msgs : fixed;
    if (!n) n = sizeof fixed / sizeof fixed[0];

    render(tmpl, m, n, "<s>", "</s>", 1, 1);
    render(tmpl, m, n, "<s>", "</s>", 0, 0);
    render(tmpl, m, n, NULL, NULL, 1, 0);
    render(tmpl, m, 0, "<s>", "</s>", 1, 0); /* no messages: messages[0] must fail, not crash */
    free(buf);
    return 0;
}
