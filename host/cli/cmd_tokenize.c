/* `tokenize DIR`: encodes text to ids (one JSON line) or decodes a JSON array of ids to text with
 * a Hugging Face tokenizer.json, the way the interop tests compare us with `tokenizers`. */
#include "cli_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/tokenizer.h"
#include "../util/fs.h"

static int tokenize_usage(const char *msg, const char *arg) {
    fprintf(stderr, "llmopt-host tokenize: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\n(see 'llmopt-host help tokenize')\n");
    return EXIT_USAGE;
}

/* Parses a JSON array of ids into a malloc'd array. */
static int parse_ids(const char *src, const char *text, size_t len, int32_t **ids, size_t *n) {
    json_error_t je;
    json_t *arr = json_loadb(text, len, 0, &je), *v;
    if (!json_is_array(arr)) {
        if (arr) fprintf(stderr, "llmopt-host tokenize: %s: expected a JSON array of ids\n", src);
        else fprintf(stderr, "llmopt-host tokenize: %s:%d:%d: not valid JSON: %s\n", src, je.line, je.column, je.text);
        json_decref(arr);
        return EXIT_USAGE;
    }
    *n = json_array_size(arr);
    *ids = malloc((*n + 1) * sizeof **ids);
    size_t i;
    int rc = *ids ? 0 : EXIT_IO;
    json_array_foreach(arr, i, v) {
        if (rc) break;
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            fprintf(stderr, "llmopt-host tokenize: %s: element %zu is not a token id\n", src, i);
            rc = EXIT_USAGE;
        } else
            (*ids)[i] = (int32_t)json_integer_value(v);
    }
    json_decref(arr);
    if (rc) {
        free(*ids);
        *ids = NULL;
    }
    return rc;
}

static int print_ids(const int32_t *ids, size_t n) {
    char num[16];
    fputs("{\"ids\": [", stdout);
    for (size_t i = 0; i < n; i++) {
        int k = snprintf(num, sizeof num, i ? ", %d" : "%d", (int)ids[i]);
        fwrite(num, 1, (size_t)k, stdout);
    }
    printf("], \"n\": %zu}\n", n);
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : EXIT_IO;
}

int cmd_tokenize(const cli_opts *o) {
    const char *text_arg = NULL, *file = NULL;
    int decode = 0, special = 1;
    const char *dir = NULL;
    /* cli.c passes this command's options through in o->args, with the positional DIR */
    for (size_t i = 0; i < o->n_args; i++) {
        const char *a = o->args[i];
        if ((strcmp(a, "--text") == 0 || strcmp(a, "--file") == 0) && i + 1 >= o->n_args)
            return tokenize_usage("%s needs a value", a);
        if (strcmp(a, "--text") == 0) text_arg = o->args[++i];
        else if (strncmp(a, "--text=", 7) == 0) text_arg = a + 7;
        else if (strcmp(a, "--file") == 0) file = o->args[++i];
        else if (strncmp(a, "--file=", 7) == 0) file = a + 7;
        else if (strcmp(a, "--decode") == 0) decode = 1;
        else if (strcmp(a, "--no-special") == 0) special = 0;
        else if (a[0] == '-' && a[1] != '\0') return tokenize_usage("unknown option '%s'", a);
        else if (!dir) dir = a;
        else return tokenize_usage("unexpected argument '%s' (one tokenizer directory)", a);
    }
    if (!dir) return tokenize_usage("%s", "missing the tokenizer directory (or tokenizer.json)");
    if (!!text_arg == !!file) return tokenize_usage("%s", "give exactly one of --text STRING or --file PATH");

    llmopt_error err = {0};
    char *data = NULL;
    size_t len = 0;
    if (file) {
        if (fs_read_all(file, &data, &len, &err) != 0) {
            fprintf(stderr, "llmopt-host tokenize: %s\n", err.msg);
            return EXIT_IO;
        }
    }
    const char *in = file ? data : text_arg;
    if (!file) len = strlen(text_arg);

    tok_tokenizer *tok = NULL;
    if (tok_load(dir, &tok, &err) != 0) {
        fprintf(stderr, "llmopt-host tokenize: %s\n", err.msg);
        free(data);
        return EXIT_CONFIG;
    }
    int rc = 0;
    if (!decode) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tok_encode(tok, in, len, special, &ids, &n, &err) != 0) {
            fprintf(stderr, "llmopt-host tokenize: %s\n", err.msg);
            rc = EXIT_STAGE_FAILED;
        } else {
            rc = print_ids(ids, n);
        }
        free(ids);
    } else {
        int32_t *ids = NULL;
        size_t n = 0;
        char *out = NULL;
        size_t out_len = 0;
        rc = parse_ids(file ? file : "--text", in, len, &ids, &n);
        if (rc == 0 && tok_decode(tok, ids, n, !special, &out, &out_len, &err) != 0) {
            fprintf(stderr, "llmopt-host tokenize: %s\n", err.msg);
            rc = EXIT_USAGE;
        }
        if (rc == 0 && (fwrite(out, 1, out_len, stdout) != out_len || fflush(stdout) != 0)) rc = EXIT_IO;
        free(out);
        free(ids);
    }
    tok_free(tok);
    free(data);
    return rc;
}
