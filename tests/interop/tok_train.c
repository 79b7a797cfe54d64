/* Test driver for tests/interop/test_tokenizer_train.py: trains a byte-level BPE tokenizer with
 * tok_train_bpe on the text read from stdin and writes it to PATH (tokenizer.json), with
 * tokenizer_config.json in the same directory; prints {"train_s": seconds} (training only).
 *   tok_train PATH [--vocab N] [--min-frequency N] [--special TOKEN]... [--max-length N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/tokenizer_train.h"
#include "util/fs.h"

static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *g = realloc(buf, cap *= 2);
            if (!g) free(buf);
            buf = g;
        }
    }
    *len = n;
    return buf;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tok_train PATH [--vocab N] [--min-frequency N] [--special TOKEN]... "
                        "[--max-length N]\n");
        return 2;
    }
    const char *specials[16];
    tok_train_options o = {.vocab_size = 4096, .min_frequency = 2, .specials = specials};
    int max_length = 1024;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--vocab") == 0) o.vocab_size = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--min-frequency") == 0) o.min_frequency = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--max-length") == 0) max_length = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--special") == 0 && o.n_specials < 16) specials[o.n_specials++] = argv[i + 1];
        else {
            fprintf(stderr, "tok_train: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    size_t len;
    char *text = read_all(stdin, &len);
    if (!text) {
        fprintf(stderr, "tok_train: out of memory reading stdin\n");
        return 1;
    }
    llmopt_error err = {0};
    char *json = NULL, *config = NULL;
    size_t json_len, config_len;
    double t0 = now();
    int rc = tok_train_bpe(text, len, &o, &json, &json_len, &err);
    double dt = now() - t0;
    if (rc == 0) rc = tok_train_config_json(&o, max_length, &config, &config_len, &err);
    const char *slash = strrchr(argv[1], '/');
    char *dir = slash ? strndup(argv[1], (size_t)(slash - argv[1] + 1)) : strdup(".");
    char *config_path = dir ? fs_join(dir, "tokenizer_config.json") : NULL;
    if (rc == 0 && !config_path) rc = error_set(&err, LLMOPT_ENOMEM, "out of memory");
    if (rc == 0 && (rc = fs_write_atomic(argv[1], json, json_len, &err)) == 0)
        rc = fs_write_atomic(config_path, config, config_len, &err);
    if (rc == 0) printf("{\"train_s\": %.3f}\n", dt);
    else fprintf(stderr, "tok_train: %d: %s\n", err.status, err.msg);
    free(dir);
    free(config_path);
    free(json);
    free(config);
    free(text);
    return rc == 0 ? 0 : 1;
}
