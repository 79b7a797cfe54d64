/* Training data: text windows, JSONL SFT records with response-only loss masks and packing,
 * the order windows are drawn in, and learning-rate schedules (see data.h). */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llmopt/common.h>

#include "data.h"

static int errf(char *err, size_t n, int status, const char *fmt, ...) {
    if (err && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* ---- records ---- */

static int record_reserve(ft_record *r, size_t extra) {
    if (r->n + extra <= r->cap) return 0;
    size_t cap = r->cap ? r->cap : 64;
    while (cap < r->n + extra) cap *= 2;
    int32_t *ids = realloc(r->ids, cap * sizeof *ids);
    if (!ids) return LLMOPT_ENOMEM;
    r->ids = ids;
    uint8_t *mask = realloc(r->mask, cap);
    if (!mask) return LLMOPT_ENOMEM;
    r->mask = mask;
    r->cap = cap;
    return 0;
}

/* Tokenizes one segment of a record and appends it with the given mask. */
static int record_add(ft_record *r, const ft_tokenizer *tok, const char *text, size_t len, int add_special,
                      uint8_t mask, char *err, size_t err_len) {
    if (len == 0 && !add_special) return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tok->encode(tok->arg, text, len, add_special, &ids, &n);
    if (rc) return errf(err, err_len, rc, "tokenizing failed");
    rc = record_reserve(r, n);
    if (!rc) {
        memcpy(r->ids + r->n, ids, n * sizeof *ids);
        memset(r->mask + r->n, mask, n);
        r->n += n;
    }
    tok->free_mem(tok->arg, ids);
    return rc ? errf(err, err_len, rc, "out of memory") : 0;
}

static int record_add_id(ft_record *r, int32_t id, uint8_t mask) {
    if (record_reserve(r, 1)) return LLMOPT_ENOMEM;
    r->ids[r->n] = id;
    r->mask[r->n++] = mask;
    return 0;
}

/* The fallback format when the model has no chat template:
 *   "System: <c>\n" "User: <c>\n" "Assistant: " <c> <eos> ["\n" before a following turn]
 * with the loss on the assistant's content and the eos only. */
static int render_fallback(ft_record *r, const ft_tokenizer *tok, const char *const *roles,
                           const char *const *contents, size_t n, char *err, size_t err_len) {
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int first = i == 0;
        if (strcmp(roles[i], "assistant") == 0) {
            const char *p = first ? "Assistant: " : "\nAssistant: ";
            rc = record_add(r, tok, p, strlen(p), first, 0, err, err_len);
            if (!rc) rc = record_add(r, tok, contents[i], strlen(contents[i]), 0, 1, err, err_len);
            if (!rc && tok->eos >= 0 && record_add_id(r, tok->eos, 1)) rc = errf(err, err_len, LLMOPT_ENOMEM, "out of memory");
        } else {
            /* "System", "User", or the role as written with a capital */
            char head[64];
            const char *role = roles[i];
            snprintf(head, sizeof head, "%s%c%.40s: ", first ? "" : "\n", role[0] >= 'a' && role[0] <= 'z' ? role[0] - 32 : role[0],
                     role[0] ? role + 1 : "");
            rc = record_add(r, tok, head, strlen(head), first, 0, err, err_len);
            if (!rc) rc = record_add(r, tok, contents[i], strlen(contents[i]), 0, 0, err, err_len);
        }
    }
    return rc;
}

/* With a chat template: each turn's text is what rendering one more message adds to the previous
 * rendering (and, before an assistant turn, what add_generation_prompt adds: masked), so the
 * loss covers exactly the assistant's rendered turns. Needs templates that render a prefix of
 * the conversation as a prefix of the text, as common templates do. */
static int render_template(ft_record *r, const ft_tokenizer *tok, const char *const *roles,
                           const char *const *contents, size_t n, char *err, size_t err_len) {
    char *prev = NULL;
    size_t prev_len = 0;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int assistant = strcmp(roles[i], "assistant") == 0;
        for (int part = assistant ? 0 : 1; part < 2 && !rc; part++) {
            /* part 0: the conversation so far plus the generation prompt; part 1: with message i */
            char *cur = NULL;
            size_t cur_len = 0;
            rc = tok->render(tok->arg, roles, contents, part ? i + 1 : i, !part, &cur, &cur_len);
            if (rc) {
                rc = errf(err, err_len, rc == LLMOPT_ENOTFOUND ? LLMOPT_EFAIL : rc, "rendering the chat template failed");
                break;
            }
            if (cur_len < prev_len || (prev_len && memcmp(cur, prev, prev_len) != 0)) {
                tok->free_mem(tok->arg, cur);
                rc = errf(err, err_len, LLMOPT_EUNSUPPORTED,
                          "the chat template does not render the conversation turn by turn (message %zu changes the "
                          "text before it); the loss mask cannot be found", i + 1);
                break;
            }
            rc = record_add(r, tok, cur + prev_len, cur_len - prev_len, 0, (uint8_t)(assistant && part), err, err_len);
            if (prev) tok->free_mem(tok->arg, prev);
            prev = cur, prev_len = cur_len;
        }
    }
    if (prev) tok->free_mem(tok->arg, prev);
    return rc;
}

int ft_record_parse(const char *line, size_t len, const ft_tokenizer *tok, ft_record *r, char *err, size_t err_len) {
    r->n = 0;
    json_error_t jerr;
    json_t *j = json_loadb(line, len, 0, &jerr);
    if (!j) return errf(err, err_len, LLMOPT_EFORMAT, "not JSON: %s (column %d)", jerr.text, jerr.column);
    const char *roles_buf[2], *contents_buf[2];
    const char **roles = roles_buf, **contents = contents_buf;
    size_t n = 0;
    int rc = 0;
    json_t *msgs = json_object_get(j, "messages");
    if (!json_is_object(j)) {
        rc = errf(err, err_len, LLMOPT_EFORMAT, "a record must be a JSON object");
    } else if (msgs) {
        n = json_array_size(msgs);
        if (!json_is_array(msgs) || n == 0) rc = errf(err, err_len, LLMOPT_EFORMAT, "'messages' must be a non-empty array");
        roles = rc ? NULL : calloc(n, sizeof *roles);
        contents = rc ? NULL : calloc(n, sizeof *contents);
        if (!rc && (!roles || !contents)) rc = errf(err, err_len, LLMOPT_ENOMEM, "out of memory");
        int has_assistant = 0;
        for (size_t i = 0; i < n && !rc; i++) {
            json_t *m = json_array_get(msgs, i);
            roles[i] = json_string_value(json_object_get(m, "role"));
            contents[i] = json_string_value(json_object_get(m, "content"));
            if (!roles[i] || !contents[i] || !roles[i][0])
                rc = errf(err, err_len, LLMOPT_EFORMAT, "message %zu needs string 'role' and 'content'", i + 1);
            else if (strcmp(roles[i], "assistant") == 0)
                has_assistant = 1;
        }
        if (!rc && !has_assistant) rc = errf(err, err_len, LLMOPT_EFORMAT, "no 'assistant' message: nothing to learn");
    } else {
        roles[0] = "user", roles[1] = "assistant";
        contents[0] = json_string_value(json_object_get(j, "prompt"));
        contents[1] = json_string_value(json_object_get(j, "response"));
        n = 2;
        if (!contents[0] || !contents[1])
            rc = errf(err, err_len, LLMOPT_EFORMAT, "a record needs string fields 'prompt' and 'response', or 'messages'");
    }
    if (!rc) {
        /* is there a template? render() answers ENOTFOUND when not */
        int templ = 0;
        if (tok->render) {
            char *probe = NULL;
            size_t pl = 0;
            int pr = tok->render(tok->arg, roles, contents, 1, 0, &probe, &pl);
            if (probe) tok->free_mem(tok->arg, probe);
            if (pr == 0) templ = 1;
            else if (pr != LLMOPT_ENOTFOUND) rc = errf(err, err_len, pr, "rendering the chat template failed");
        }
        if (!rc) rc = templ ? render_template(r, tok, roles, contents, n, err, err_len)
                            : render_fallback(r, tok, roles, contents, n, err, err_len);
    }
    if (roles != roles_buf) free((void *)roles);
    if (contents != contents_buf) free((void *)contents);
    json_decref(j);
    return rc;
}

void ft_record_free(ft_record *r) {
    free(r->ids);
    free(r->mask);
    memset(r, 0, sizeof *r);
}

/* ---- windows ---- */

static int add_window(ft_dataset *d, size_t *cap) {
    if (d->n == *cap) {
        size_t c = *cap ? *cap * 2 : 64, T = (size_t)d->seq;
        int32_t *in = realloc(d->inputs, c * T * sizeof *in);
        if (!in) return LLMOPT_ENOMEM;
        d->inputs = in;
        int32_t *tg = realloc(d->targets, c * T * sizeof *tg);
        if (!tg) return LLMOPT_ENOMEM;
        d->targets = tg;
        *cap = c;
    }
    size_t T = (size_t)d->seq;
    memset(d->inputs + d->n * T, 0, T * sizeof *d->inputs);
    for (size_t i = 0; i < T; i++) d->targets[d->n * T + i] = FT_IGNORE;
    d->n++;
    return 0;
}

/* Window from L <= T+1 tokens: position j reads ids[j] and predicts ids[j+1] where mask[j+1]. */
static int emit_window(ft_dataset *d, size_t *cap, const int32_t *ids, const uint8_t *mask, size_t L) {
    if (L < 2) return 0;
    if (add_window(d, cap)) return LLMOPT_ENOMEM;
    size_t T = (size_t)d->seq;
    int32_t *in = d->inputs + (d->n - 1) * T, *tg = d->targets + (d->n - 1) * T;
    for (size_t j = 0; j + 1 < L; j++) {
        in[j] = ids[j];
        if (!mask || mask[j + 1]) {
            tg[j] = ids[j + 1];
            d->n_targets++;
        }
    }
    return 0;
}

static int build_text(const char *text, size_t len, const ft_data_options *o, const ft_tokenizer *tok, ft_dataset *d,
                      char *err, size_t err_len) {
    int32_t *ids = NULL;
    size_t n = 0, cap = 0, T = (size_t)o->seq;
    int rc = tok->encode(tok->arg, text, len, 1, &ids, &n);
    if (rc) return errf(err, err_len, rc, "tokenizing the text failed");
    /* windows of T+1 tokens overlapping by one: every token after the first is a target once */
    for (size_t b = 0; !rc && b + 1 < n; b += T) rc = emit_window(d, &cap, ids + b, NULL, n - b < T + 1 ? n - b : T + 1);
    tok->free_mem(tok->arg, ids);
    return rc ? errf(err, err_len, rc, "out of memory") : 0;
}

static int build_jsonl(const char *text, size_t len, const ft_data_options *o, const ft_tokenizer *tok, ft_dataset *d,
                       char *err, size_t err_len) {
    size_t T = (size_t)o->seq, cap = 0, line_no = 0;
    ft_record r = {0};
    int32_t *wids = malloc((T + 1) * sizeof *wids);
    uint8_t *wmask = malloc(T + 1);
    size_t wl = 0; /* tokens in the window being packed */
    int rc = wids && wmask ? 0 : errf(err, err_len, LLMOPT_ENOMEM, "out of memory");
    char msg[512];
    for (size_t pos = 0; !rc && pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len, llen = end - pos;
        const char *line = text + pos;
        pos = end + 1;
        line_no++;
        size_t k = 0;
        while (k < llen && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == llen) continue; /* blank lines are not records */
        msg[0] = '\0';
        int prc = ft_record_parse(line, llen, tok, &r, msg, sizeof msg);
        if (prc == LLMOPT_EFORMAT && o->skip_bad) {
            if (d->n_bad < sizeof d->bad_lines / sizeof d->bad_lines[0]) d->bad_lines[d->n_bad] = line_no;
            d->n_bad++;
            continue;
        }
        if (prc) {
            rc = errf(err, err_len, prc, "line %zu: %s", line_no, msg);
            break;
        }
        if (r.n > T + 1) {
            if (!o->truncate_long) {
                rc = errf(err, err_len, LLMOPT_EINVAL,
                          "line %zu: the record is %zu tokens, longer than seq_len + 1 = %zu (set on_long: truncate to cut it)",
                          line_no, r.n, T + 1);
                break;
            }
            r.n = T + 1;
            d->n_truncated++;
        }
        d->n_records++;
        /* greedy packing: a record goes whole into the current window, or starts the next */
        if (wl + r.n > T + 1) {
            rc = emit_window(d, &cap, wids, wmask, wl);
            wl = 0;
        }
        memcpy(wids + wl, r.ids, r.n * sizeof *wids);
        memcpy(wmask + wl, r.mask, r.n);
        /* a record's first token is never a target: it would be predicted from the previous record */
        wmask[wl] = 0;
        wl += r.n;
    }
    if (!rc) rc = emit_window(d, &cap, wids, wmask, wl);
    if (rc == LLMOPT_ENOMEM && !err[0]) errf(err, err_len, rc, "out of memory");
    ft_record_free(&r);
    free(wids);
    free(wmask);
    return rc;
}

int ft_dataset_build(const char *text, size_t len, const ft_data_options *o, const ft_tokenizer *tok,
                     ft_dataset *out, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    if (err && err_len) err[0] = '\0';
    if (o->seq < 1) return errf(err, err_len, LLMOPT_EINVAL, "seq_len must be at least 1");
    out->seq = o->seq;
    int rc = o->format == FT_FORMAT_JSONL_SFT ? build_jsonl(text, len, o, tok, out, err, err_len)
                                              : build_text(text, len, o, tok, out, err, err_len);
    if (!rc && out->n_targets == 0)
        rc = errf(err, err_len, LLMOPT_EINVAL, "the dataset is empty: %s",
                  o->format == FT_FORMAT_TEXT ? "the text has fewer than 2 tokens"
                  : out->n_records ? "no record has a response token to learn"
                                   : "no valid records");
    if (rc) ft_dataset_free(out);
    return rc;
}

void ft_dataset_free(ft_dataset *d) {
    free(d->inputs);
    free(d->targets);
    d->inputs = d->targets = NULL;
    d->n = 0;
}

/* ---- order ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int ft_order_init(ft_order *o, size_t n, uint64_t seed, int shuffle) {
    memset(o, 0, sizeof *o);
    o->n = n, o->seed = seed, o->shuffle = shuffle, o->epoch = -1;
    o->perm = malloc((n ? n : 1) * sizeof *o->perm);
    return o->perm ? 0 : LLMOPT_ENOMEM;
}

size_t ft_order_at(ft_order *o, uint64_t g) {
    int64_t e = (int64_t)(g / o->n);
    size_t i = (size_t)(g % o->n);
    if (!o->shuffle) return i;
    if (e != o->epoch) {
        uint64_t s = o->seed ^ ((uint64_t)e * 0xd1b54a32d192ed03ull);
        for (size_t k = 0; k < o->n; k++) o->perm[k] = k;
        for (size_t k = o->n; k > 1; k--) {
            size_t j = (size_t)(splitmix64(&s) % k);
            size_t t = o->perm[k - 1];
            o->perm[k - 1] = o->perm[j], o->perm[j] = t;
        }
        o->epoch = e;
    }
    return o->perm[i];
}

void ft_order_free(ft_order *o) {
    free(o->perm);
    o->perm = NULL;
}

/* ---- schedules ---- */

double ft_lr_at(int schedule, double lr, int warmup, int total, int step) {
    if (step < warmup) return lr * (double)step / (double)(warmup > 1 ? warmup : 1);
    if (schedule == FT_SCHED_CONSTANT) return lr;
    int span = total - warmup > 1 ? total - warmup : 1;
    double progress = (double)(step - warmup) / (double)span;
    if (schedule == FT_SCHED_LINEAR) return lr * fmax(0.0, 1.0 - progress);
    return lr * fmax(0.0, 0.5 * (1.0 + cos(3.14159265358979323846 * progress)));
}
