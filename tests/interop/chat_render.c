/* Test driver for the chat template interop test: reads {"template", "messages": [{"role",
 * "content"}], "bos", "eos", "add_generation_prompt"} as JSON on stdin and writes chat_render's
 * output to stdout, or its error ("status: message") to stderr with exit status 1. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/chat_template.h"

static const char *opt_str(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int main(void) {
    json_error_t jerr;
    json_t *root = json_loadf(stdin, 0, &jerr);
    if (!root || !json_is_object(root)) {
        fprintf(stderr, "chat_render: bad JSON on stdin: %s\n", root ? "not an object" : jerr.text);
        return 2;
    }
    const char *tmpl = opt_str(root, "template");
    json_t *msgs = json_object_get(root, "messages");
    if (!tmpl || !json_is_array(msgs)) {
        fprintf(stderr, "chat_render: need \"template\" (string) and \"messages\" (array)\n");
        return 2;
    }
    size_t n = json_array_size(msgs);
    chat_message *m = calloc(n ? n : 1, sizeof *m);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(msgs, i);
        m[i].role = opt_str(o, "role");
        m[i].content = opt_str(o, "content");
        if (!m[i].role || !m[i].content) {
            fprintf(stderr, "chat_render: message %zu needs string \"role\" and \"content\"\n", i);
            return 2;
        }
    }
    char *out = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    int rc = chat_render(tmpl, m, n, opt_str(root, "bos"), opt_str(root, "eos"),
                         json_is_true(json_object_get(root, "add_generation_prompt")), &out, &len, &err);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", status_str(rc), err.msg);
    } else {
        fwrite(out, 1, len, stdout);
    }
    free(out);
    free(m);
    json_decref(root);
    return rc != 0;
}
