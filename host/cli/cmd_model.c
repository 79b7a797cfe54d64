/* `forward` and `generate`: run a Hugging Face checkpoint directly, for a quick look and for the
 * interop tests that hold our logits and generations to transformers'. */
#include "cli_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../api/runtime_api.h"
#include "../runtime/chat_template.h"
#include "../runtime/generate.h"
#include "../runtime/runtime.h"
#include "../runtime/tokenizer.h"
#include "../runtime/transformer.h"
#include "../util/fs.h"

/* Parses "1,2,3" (or a JSON-ish "[1, 2, 3]") into ids. */
static int parse_ids(const char *s, int32_t **out, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    while (*s) {
        while (*s == ' ' || *s == ',' || *s == '[' || *s == ']' || *s == '\n') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (k == cap) {
            int32_t *g = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!g) {
                free(ids);
                return -1;
            }
            ids = g;
        }
        ids[k++] = (int32_t)v;
        s = end;
    }
    *out = ids;
    *n = k;
    return 0;
}

/* Loads plugins, the model and binds it; prints the error and returns an exit code on failure. */
static int open_model(const cli_opts *o, const char *dir, int device, int precision, registry **reg, llmopt_model **m,
                      tf_model **tm) {
    llmopt_error err = {0};
    *reg = NULL, *m = NULL, *tm = NULL;
    int rc = cli_load_plugins(o, reg);
    if (rc) return rc;
    if (rt_model_load(dir, m, &err) != 0 || tf_model_new(*m, device, tm, &err) != 0) {
        fprintf(stderr, "llmopt-host: %s: %s\n", dir, err.msg);
        return EXIT_CONFIG;
    }
    tf_model_set_matmul_precision(*tm, precision);
    return 0;
}

/* --matmul-precision's value: an llmopt_matmul_precision, or -1 */
static int precision_from_name(const char *v) {
    return strcmp(v, "highest") == 0 ? LLMOPT_MATMUL_HIGHEST : strcmp(v, "medium") == 0 ? LLMOPT_MATMUL_MEDIUM : -1;
}

static void close_model(registry *reg, llmopt_model *m, tf_model *tm) {
    tf_model_free(tm);
    rt_model_unref(m);
    registry_free(reg);
}

int cmd_forward(const cli_opts *o) {
    const char *dir = NULL, *ids_arg = NULL, *out_path = NULL;
    int kv = 0, device = LLMOPT_DEVICE_CPU, precision = LLMOPT_MATMUL_HIGHEST;
    for (size_t i = 0; i < o->n_args; i++) {
        const char *a = o->args[i], *v = i + 1 < o->n_args ? o->args[i + 1] : NULL;
        if (strcmp(a, "--ids") == 0 && v) ids_arg = v, i++;
        else if (strcmp(a, "--matmul-precision") == 0 && v) {
            if ((precision = precision_from_name(v)) < 0)
                return fprintf(stderr, "llmopt-host: forward: --matmul-precision '%s': expected highest or medium\n", v),
                       EXIT_USAGE;
            i++;
        }
        else if (strcmp(a, "--device") == 0 && v) {
            if ((device = rt_device_from_name(v)) < 0)
                return fprintf(stderr, "llmopt-host: forward: --device '%s': expected cpu, cuda or test\n", v), EXIT_USAGE;
            i++;
        }
        else if (strcmp(a, "--out") == 0 && v) out_path = v, i++;
        else if (strcmp(a, "--kv-cache") == 0) kv = 1;
        else if (a[0] != '-' && !dir) dir = a;
        else return fprintf(stderr, "llmopt-host: forward: unexpected '%s'\n", a), EXIT_USAGE;
    }
    if (!o->out && !out_path) out_path = NULL;
    if (o->out) out_path = o->out; /* the global --out also works */
    if (!dir || !ids_arg) return fprintf(stderr, "usage: llmopt-host forward MODEL_DIR --ids 1,2,3 [--out FILE] [--kv-cache] [--device D] [--matmul-precision P]\n"), EXIT_USAGE;
    /* one sequence "1,2,3", or a batch of equally long ones "1,2,3;4,5,6" */
    int32_t *ids = NULL;
    size_t n = 0, B = 0, T = 0;
    for (const char *seq = ids_arg; seq; B++) {
        const char *semi = strchr(seq, ';');
        char *one = semi ? strndup(seq, (size_t)(semi - seq)) : strdup(seq);
        int32_t *part = NULL;
        size_t k = 0;
        int bad = !one || parse_ids(one, &part, &k) != 0 || k == 0 || (B > 0 && k != T);
        int32_t *grown = bad ? NULL : realloc(ids, (n + k) * sizeof *ids);
        if (grown) {
            memcpy(grown + n, part, k * sizeof *part);
            ids = grown, n += k, T = k;
        }
        free(one);
        free(part);
        if (!grown) {
            free(ids);
            return fprintf(stderr, "llmopt-host: forward: --ids wants comma-separated token ids, sequences of equal "
                                   "length separated by ';'\n"), EXIT_USAGE;
        }
        seq = semi ? semi + 1 : NULL;
    }
    registry *reg;
    llmopt_model *m;
    tf_model *tm;
    int rc = open_model(o, dir, device, precision, &reg, &m, &tm);
    tf_session *s = NULL;
    float *logits = NULL;
    llmopt_error err = {0};
    int V = rc ? 0 : tf_model_arch(tm)->vocab;
    int32_t *step_ids = malloc(B * sizeof *step_ids);
    float *step_logits = malloc(B * (size_t)(V ? V : 1) * sizeof *step_logits);
    if (!rc && (tf_session_new_batch(tm, (int)B, 0, &s, &err) != 0 || !step_ids || !step_logits ||
                !(logits = malloc(n * (size_t)V * sizeof *logits)))) {
        fprintf(stderr, "llmopt-host: %s\n", err.msg[0] ? err.msg : "out of memory");
        rc = EXIT_CONFIG;
    }
    /* all positions at once (prefill), or one token of each sequence at a time through the cache */
    if (!rc && !kv && tf_forward_batch(s, ids, (int)T, logits, 1, &err) != 0) rc = EXIT_STAGE_FAILED;
    for (size_t t = 0; !rc && kv && t < T; t++) {
        for (size_t b = 0; b < B; b++) step_ids[b] = ids[b * T + t];
        if (tf_forward_batch(s, step_ids, 1, step_logits, 1, &err) != 0) rc = EXIT_STAGE_FAILED;
        for (size_t b = 0; !rc && b < B; b++)
            memcpy(logits + (b * T + t) * (size_t)V, step_logits + b * (size_t)V, (size_t)V * sizeof *logits);
    }
    if (rc == EXIT_STAGE_FAILED) fprintf(stderr, "llmopt-host: forward: %s\n", err.msg);
    free(step_ids);
    free(step_logits);
    if (!rc && out_path) {
        if (fs_write_atomic(out_path, logits, n * (size_t)V * sizeof *logits, &err) != 0) {
            fprintf(stderr, "llmopt-host: %s\n", err.msg);
            rc = EXIT_IO;
        } else {
            printf("{\"sequences\": %zu, \"tokens\": %zu, \"vocab\": %d, \"out\": \"%s\"}\n", B, T, V, out_path);
        }
    } else if (!rc) {
        const float *last = logits + (n - 1) * (size_t)V;
        int best = 0;
        for (int i = 1; i < V; i++)
            if (last[i] > last[best]) best = i;
        printf("{\"sequences\": %zu, \"tokens\": %zu, \"vocab\": %d, \"argmax_last\": %d, \"logit\": %.6g}\n", B, T, V,
               best, last[best]);
    }
    free(logits);
    free(ids);
    tf_session_free(s);
    close_model(reg, m, tm);
    return rc;
}

typedef struct stream {
    const tok_tokenizer *tok;
    const char *const *stop;
    size_t n_stop;
    const int32_t *prompt;   /* the prompt's ids: the continuation is decoded after them, so */
    size_t n_prompt;         /* tokenizers that strip a leading space keep the joining space */
    size_t prompt_text;      /* bytes of the decoded prompt alone */
    int32_t *buf;            /* prompt + generated ids */
    size_t printed;          /* bytes of the continuation already printed */
    int print_text;
    int final;               /* print everything held back */
} stream;

/* Length of the longest prefix of s[0..len) that does not end inside a UTF-8 sequence. */
static size_t utf8_whole(const char *s, size_t len) {
    size_t i = len, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return len;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return back + 1 < need ? i - 1 : len;
}

/* Where a stop string might be starting at the end of text: the start of the longest suffix
 * of text[0..len) that is a proper prefix of a stop string, else len. */
static size_t stop_prefix_start(const stream *st, const char *text, size_t len) {
    size_t start = len;
    for (size_t i = 0; i < st->n_stop; i++) {
        size_t sl = strlen(st->stop[i]);
        if (sl == 0) continue;
        for (size_t k = sl > len ? len : sl - 1; k > 0; k--)
            if (memcmp(text + len - k, st->stop[i], k) == 0) {
                if (len - k < start) start = len - k;
                break;
            }
    }
    return start;
}

/* Prints the newly decoded continuation; stops at a stop string (which is not printed). */
static int on_token(void *arg, const int32_t *ids, size_t n) {
    stream *st = arg;
    if (!st->tok) return 0;
    memcpy(st->buf + st->n_prompt, ids, n * sizeof *ids);
    char *full = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    if (tok_decode(st->tok, st->buf, st->n_prompt + n, 1, &full, &len, &err) != 0) return 0;
    size_t skip = st->prompt_text < len ? st->prompt_text : len;
    const char *text = full + skip;
    size_t tlen = len - skip, upto = tlen;
    int stop = 0;
    for (size_t i = 0; i < st->n_stop; i++) {
        const char *hit = strstr(text, st->stop[i]);
        if (hit && (size_t)(hit - text) < upto) upto = (size_t)(hit - text), stop = 1;
    }
    if (!stop && !st->final) upto = utf8_whole(text, stop_prefix_start(st, text, tlen));
    if (st->print_text && upto > st->printed) {
        fwrite(text + st->printed, 1, upto - st->printed, stdout);
        fflush(stdout);
        st->printed = upto;
    }
    free(full);
    return stop;
}

/* Decoded length of the prompt alone, where the continuation's text begins. */
static void stream_begin(stream *st, size_t max_tokens) {
    st->buf = malloc((st->n_prompt + max_tokens + 1) * sizeof *st->buf);
    if (!st->buf) {
        st->tok = NULL; /* no streaming; the ids are still generated */
        return;
    }
    memcpy(st->buf, st->prompt, st->n_prompt * sizeof *st->prompt);
    char *text = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    if (tok_decode(st->tok, st->prompt, st->n_prompt, 1, &text, &len, &err) == 0) st->prompt_text = len;
    free(text);
}

int cmd_generate(const cli_opts *o) {
    const char *dir = NULL, *prompt = NULL, *ids_arg = NULL;
    const char **stops = calloc(o->n_args + 1, sizeof *stops);
    size_t n_stop = 0;
    gen_params p = {.max_tokens = 64, .temperature = 0.8f, .top_k = 40, .top_p = 0.95f,
                    .repetition_penalty = 1.0f, .seed = 0};
    const char *system = NULL;
    int print_ids = 0, ignore_eos = 0, chat = 0, bad = !stops, precision = LLMOPT_MATMUL_HIGHEST;
    for (size_t i = 0; !bad && i < o->n_args; i++) {
        const char *a = o->args[i], *v = i + 1 < o->n_args ? o->args[i + 1] : NULL;
        char *end = NULL;
        if ((strcmp(a, "-p") == 0 || strcmp(a, "--prompt") == 0) && v) prompt = v, i++;
        else if (strcmp(a, "--ids") == 0 && v) ids_arg = v, i++;
        else if (strcmp(a, "--max-tokens") == 0 && v) p.max_tokens = (int)strtol(v, &end, 10), i++;
        else if (strcmp(a, "--temperature") == 0 && v) p.temperature = strtof(v, &end), i++;
        else if (strcmp(a, "--top-k") == 0 && v) p.top_k = (int)strtol(v, &end, 10), i++;
        else if (strcmp(a, "--top-p") == 0 && v) p.top_p = strtof(v, &end), i++;
        else if (strcmp(a, "--repetition-penalty") == 0 && v) p.repetition_penalty = strtof(v, &end), i++;
        else if (strcmp(a, "--seed") == 0 && v) p.seed = strtoull(v, &end, 10), i++;
        else if (strcmp(a, "--stop") == 0 && v) stops[n_stop++] = v, i++;
        else if (strcmp(a, "--greedy") == 0) p.greedy = 1;
        else if (strcmp(a, "--print-ids") == 0) print_ids = 1;
        else if (strcmp(a, "--ignore-eos") == 0) ignore_eos = 1;
        else if (strcmp(a, "--chat") == 0) chat = 1;
        else if (strcmp(a, "--system") == 0 && v) system = v, chat = 1, i++;
        else if (strcmp(a, "--matmul-precision") == 0 && v) bad = (precision = precision_from_name(v)) < 0, i++;
        else if (a[0] != '-' && !dir) dir = a;
        else bad = 1;
        if (end && *end) bad = 1;
    }
    if (bad || !dir || (!prompt == !ids_arg) || p.max_tokens < 0 || p.top_p <= 0 || p.top_p > 1 ||
        p.repetition_penalty <= 0) {
        free(stops);
        fprintf(stderr, "llmopt-host: generate: bad arguments\n\n");
        cli_help("generate");
        return EXIT_USAGE;
    }
    registry *reg;
    llmopt_model *m;
    tf_model *tm;
    int rc = open_model(o, dir, LLMOPT_DEVICE_CPU, precision, &reg, &m, &tm);
    const tok_tokenizer *tok = NULL;
    llmopt_error err = {0};
    int32_t *ids = NULL, *gen = NULL;
    size_t n = 0, n_gen = 0;
    tf_session *s = NULL;
    /* the model's own tokenizer files (kept with it on load: from the directory, or rebuilt
     * from a GGUF's tokenizer.ggml.* keys) */
    if (!rc && rt_model_get_file(m, "tokenizer.json", NULL) && !(tok = rt_model_tokenizer(m, &err))) {
        fprintf(stderr, "llmopt-host: %s/%s\n", dir, err.msg); /* err names tokenizer.json and the field */
        rc = EXIT_CONFIG;
    }
    char *rendered = NULL;
    if (!rc && prompt && chat) {
        /* the prompt as the user's turn (after an optional system turn), in the model's template */
        const char *tmpl = tok ? tok_chat_template(tok) : NULL;
        chat_message msgs[2] = {{"system", system}, {"user", prompt}};
        size_t len = 0;
        if (!tmpl) {
            fprintf(stderr, "llmopt-host: %s has no chat_template in tokenizer_config.json; drop --chat\n", dir);
            rc = EXIT_USAGE;
        } else if (chat_render(tmpl, system ? msgs : msgs + 1, system ? 2 : 1, tok_token(tok, tok_bos(tok)),
                               tok_token(tok, tok_eos(tok)), 1, &rendered, &len, &err) != 0) {
            fprintf(stderr, "llmopt-host: %s: chat template: %s\n", dir, err.msg);
            rc = EXIT_CONFIG;
        } else {
            prompt = rendered;
        }
    }
    if (!rc && prompt) {
        if (!tok) {
            fprintf(stderr, "llmopt-host: %s has no tokenizer (tokenizer.json): give token ids with --ids\n", dir);
            rc = EXIT_USAGE;
        } else if (tok_encode(tok, prompt, strlen(prompt), !chat, &ids, &n, &err) != 0) { /* a template adds its own bos */
            fprintf(stderr, "llmopt-host: %s\n", err.msg);
            rc = EXIT_CONFIG;
        }
    } else if (!rc && (parse_ids(ids_arg, &ids, &n) != 0 || n == 0)) {
        fprintf(stderr, "llmopt-host: generate: --ids wants comma-separated token ids\n");
        rc = EXIT_USAGE;
    }
    if (!rc && !ignore_eos) p.n_eos = rt_model_eos_ids(m, p.eos, GEN_MAX_EOS);
    if (!rc && tf_session_new(tm, 0, &s, &err) != 0) {
        fprintf(stderr, "llmopt-host: %s\n", err.msg);
        rc = EXIT_CONFIG;
    }
    if (!rc) cli_blas_hint();
    stream st = {.tok = tok, .stop = stops, .n_stop = n_stop, .print_text = !print_ids, .prompt = ids, .n_prompt = n};
    if (!rc && tok) stream_begin(&st, (size_t)p.max_tokens);
    if (!rc && prompt && !print_ids) fputs(prompt, stdout);
    if (!rc && gen_run(s, ids, n, &p, on_token, &st, &gen, &n_gen, &err) != 0) {
        fprintf(stderr, "llmopt-host: generate: %s\n", err.msg);
        rc = EXIT_STAGE_FAILED;
    }
    if (!rc && print_ids) {
        printf("{\"ids\": [");
        for (size_t i = 0; i < n_gen; i++) printf("%s%d", i ? ", " : "", gen[i]);
        printf("]}\n");
    } else if (!rc) {
        if (!tok) {
            for (size_t i = 0; i < n_gen; i++) printf("%s%d", i ? " " : "", gen[i]);
        } else {
            st.final = 1;
            on_token(&st, gen, n_gen); /* flush what was held back */
        }
        printf("\n");
    }
    free(st.buf);
    free(rendered);
    free(gen);
    free(ids);
    free(stops);
    tf_session_free(s);
    close_model(reg, m, tm);
    return rc;
}
