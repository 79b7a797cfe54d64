/* Reading tokenizer.json (model type BPE) and the bos/eos/chat template of tokenizer_config.json
 * and generation_config.json into a tok_tokenizer. Every refusal names the file and the field.
 * Format: the serde serialization of the `tokenizers` library (Tokenizer::from_file). */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/fs.h"
#include "tokenizer_internal.h"
#include "unicode.h"

#define TOK_MAX_ID (1 << 24) /* ids are dense in practice; this bounds the id table */

typedef struct load_ctx {
    tok_tokenizer *t;
    const char *file;
    llmopt_error *err;
} load_ctx;

static int fail(load_ctx *c, int status, const char *field, const char *fmt, ...) LLMOPT_PRINTF(4, 5);
static int fail(load_ctx *c, int status, const char *field, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return error_set(c->err, status, "%s: %s: %s", c->file, field, msg);
}

static char *dupn(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* ---- containers ---- */

int tok_buf_add(tok_buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return LLMOPT_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

void tok_buf_free(tok_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

const tok_map_entry *tok_map_get(const tok_map *m, const char *key, size_t len) {
    if (!m->cap) return NULL;
    uint32_t h = hash_bytes(key, len);
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        const tok_map_entry *e = &m->e[i];
        if (e->len == UINT32_MAX) return NULL;
        if (e->hash == h && e->len == len && (len == 0 || memcmp(m->keys.p + e->off, key, len) == 0)) return e;
    }
}

static int map_grow(tok_map *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    tok_map_entry *e = malloc(cap * sizeof *e);
    if (!e) return LLMOPT_ENOMEM;
    for (size_t i = 0; i < cap; i++) e[i].len = UINT32_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->e[i].len == UINT32_MAX) continue;
        size_t j = m->e[i].hash & (cap - 1);
        while (e[j].len != UINT32_MAX) j = (j + 1) & (cap - 1);
        e[j] = m->e[i];
    }
    free(m->e);
    m->e = e;
    m->cap = cap;
    return 0;
}

int tok_map_put(tok_map *m, const char *key, size_t len, int32_t a, int32_t b) {
    if (len >= UINT32_MAX || m->keys.n + len >= UINT32_MAX) return LLMOPT_ENOMEM;
    if ((m->count + 1) * 4 > m->cap * 3 && map_grow(m) != 0) return LLMOPT_ENOMEM;
    uint32_t h = hash_bytes(key, len);
    size_t i = h & (m->cap - 1);
    for (;; i = (i + 1) & (m->cap - 1)) {
        tok_map_entry *e = &m->e[i];
        if (e->len == UINT32_MAX) break;
        if (e->hash == h && e->len == len && (len == 0 || memcmp(m->keys.p + e->off, key, len) == 0)) {
            e->a = a;
            e->b = b;
            return 0;
        }
    }
    uint32_t off = (uint32_t)m->keys.n;
    if (tok_buf_add(&m->keys, key, len) != 0) return LLMOPT_ENOMEM;
    m->e[i] = (tok_map_entry){off, (uint32_t)len, h, a, b};
    m->count++;
    return 0;
}

void tok_map_free(tok_map *m) {
    tok_buf_free(&m->keys);
    free(m->e);
    memset(m, 0, sizeof *m);
}

static size_t hash_u64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

const tok_merge *tok_merges_get(const tok_merges *m, int32_t left, int32_t right) {
    if (!m->cap) return NULL;
    uint64_t k = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = hash_u64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->e[i].key == k) return &m->e[i];
        if (m->e[i].key == UINT64_MAX) return NULL;
    }
}

int tok_merges_put(tok_merges *m, int32_t left, int32_t right, uint32_t rank, int32_t id) {
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        tok_merge *e = malloc(cap * sizeof *e);
        if (!e) return LLMOPT_ENOMEM;
        for (size_t i = 0; i < cap; i++) e[i].key = UINT64_MAX;
        for (size_t i = 0; i < m->cap; i++) {
            if (m->e[i].key == UINT64_MAX) continue;
            size_t j = hash_u64(m->e[i].key) & (cap - 1);
            while (e[j].key != UINT64_MAX) j = (j + 1) & (cap - 1);
            e[j] = m->e[i];
        }
        free(m->e);
        m->e = e;
        m->cap = cap;
    }
    uint64_t k = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = hash_u64(k) & (m->cap - 1);
    while (m->e[i].key != UINT64_MAX && m->e[i].key != k) i = (i + 1) & (m->cap - 1);
    if (m->e[i].key == UINT64_MAX) m->count++;
    m->e[i] = (tok_merge){k, rank, id}; /* a repeated pair takes the later rank, as tokenizers */
    return 0;
}

/* ---- JSON helpers ---- */

/* A string member or NULL (absent or JSON null); a present non-string is an error. */
static int get_str(load_ctx *c, json_t *obj, const char *key, const char *field, const char **out) {
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return fail(c, LLMOPT_EFORMAT, field, "expected a string");
    *out = json_string_value(v);
    return 0;
}

static int get_bool(load_ctx *c, json_t *obj, const char *key, const char *field, int dflt, int *out) {
    json_t *v = json_object_get(obj, key);
    *out = dflt;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return fail(c, LLMOPT_EFORMAT, field, "expected true or false");
    *out = json_is_true(v);
    return 0;
}

static int get_id(load_ctx *c, json_t *v, const char *field, int32_t *out) {
    if (!json_is_integer(v)) return fail(c, LLMOPT_EFORMAT, field, "expected an integer id");
    json_int_t id = json_integer_value(v);
    if (id < 0 || id >= TOK_MAX_ID)
        return fail(c, LLMOPT_EFORMAT, field, "id %lld out of range [0, %d)", (long long)id, TOK_MAX_ID);
    *out = (int32_t)id;
    return 0;
}

static const char *type_of(json_t *obj) {
    json_t *v = json_object_get(obj, "type");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Sets id's token string; a second, different string for one id is an error. */
static int set_token(load_ctx *c, int32_t id, const char *s, size_t n, const char *field) {
    tok_tokenizer *t = c->t;
    if (t->tokens[id]) {
        if (t->token_len[id] == n && memcmp(t->tokens[id], s, n) == 0) return 0;
        return fail(c, LLMOPT_EFORMAT, field, "id %d is given to both '%s' and '%.*s'", (int)id,
                    t->tokens[id], (int)(n > 200 ? 200 : n), s);
    }
    if (!(t->tokens[id] = dupn(s, n))) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    t->token_len[id] = (uint32_t)n;
    if ((size_t)id + 1 > t->n_ids) t->n_ids = (size_t)id + 1;
    return 0;
}

/* ---- model ---- */

static int load_vocab(load_ctx *c, json_t *model, json_t *added) {
    tok_tokenizer *t = c->t;
    json_t *vocab = json_object_get(model, "vocab");
    if (!vocab) return fail(c, LLMOPT_EFORMAT, "model.vocab", "missing");
    if (!json_is_object(vocab)) return fail(c, LLMOPT_EFORMAT, "model.vocab", "expected an object {token: id}");
    /* the id table covers the vocabulary and the added tokens */
    size_t cap = json_object_size(vocab) + (json_is_array(added) ? json_array_size(added) : 0);
    if (cap > TOK_MAX_ID) cap = TOK_MAX_ID;
    size_t max_id = 0;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < TOK_MAX_ID &&
            (size_t)json_integer_value(v) > max_id)
            max_id = (size_t)json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *idv = json_object_get(v, "id");
        if (json_is_integer(idv) && json_integer_value(idv) >= 0 && json_integer_value(idv) < TOK_MAX_ID &&
            (size_t)json_integer_value(idv) > max_id)
            max_id = (size_t)json_integer_value(idv);
    }
    if (max_id + 1 > cap) cap = max_id + 1;
    t->tokens = calloc(cap + 1, sizeof *t->tokens);
    t->token_len = calloc(cap + 1, sizeof *t->token_len);
    if (!t->tokens || !t->token_len) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    char field[300];
    json_object_foreach(vocab, key, v) {
        snprintf(field, sizeof field, "model.vocab[\"%.200s\"]", key);
        int32_t id = 0;
        int rc = get_id(c, v, field, &id);
        if (rc == 0) rc = set_token(c, id, key, strlen(key), field);
        if (rc != 0) return rc;
        if (tok_map_put(&t->vocab, key, strlen(key), id, 0) != 0)
            return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    }
    return 0;
}

static int vocab_id(const tok_tokenizer *t, const char *s, size_t n, int32_t *id) {
    const tok_map_entry *e = tok_map_get(&t->vocab, s, n);
    if (!e) return -1;
    *id = e->a;
    return 0;
}

static int load_merges(load_ctx *c, json_t *model) {
    tok_tokenizer *t = c->t;
    json_t *merges = json_object_get(model, "merges"), *m;
    if (!merges || json_is_null(merges)) return 0;
    if (!json_is_array(merges)) return fail(c, LLMOPT_EFORMAT, "model.merges", "expected an array");
    size_t i;
    char field[64];
    tok_buf joined = {0};
    int rc = 0;
    json_array_foreach(merges, i, m) {
        snprintf(field, sizeof field, "model.merges[%zu]", i);
        const char *a, *b;
        size_t na, nb;
        if (json_is_string(m)) { /* "a b" */
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = fail(c, LLMOPT_EFORMAT, field, "expected \"LEFT RIGHT\" (one space), got \"%.200s\"", a);
                break;
            }
            na = (size_t)(sp - a);
            b = sp + 1;
            nb = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) { /* ["a", "b"] */
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            na = json_string_length(json_array_get(m, 0));
            nb = json_string_length(json_array_get(m, 1));
        } else {
            rc = fail(c, LLMOPT_EFORMAT, field, "expected \"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"]");
            break;
        }
        int32_t ia, ib, inew;
        if (vocab_id(t, a, na, &ia) != 0) {
            rc = fail(c, LLMOPT_EFORMAT, field, "token '%.*s' is not in model.vocab", (int)(na > 200 ? 200 : na), a);
            break;
        }
        if (vocab_id(t, b, nb, &ib) != 0) {
            rc = fail(c, LLMOPT_EFORMAT, field, "token '%.*s' is not in model.vocab", (int)(nb > 200 ? 200 : nb), b);
            break;
        }
        /* the merged token drops the right side's continuing_subword_prefix */
        size_t np = t->cont_prefix ? strlen(t->cont_prefix) : 0;
        if (np && nb >= np && memcmp(b, t->cont_prefix, np) == 0) b += np, nb -= np;
        joined.n = 0;
        if (tok_buf_add(&joined, a, na) != 0 || tok_buf_add(&joined, b, nb) != 0) {
            rc = error_set(c->err, LLMOPT_ENOMEM, "out of memory");
            break;
        }
        if (vocab_id(t, joined.p, joined.n, &inew) != 0) {
            rc = fail(c, LLMOPT_EFORMAT, field, "merged token '%.200s' is not in model.vocab", joined.p);
            break;
        }
        if (tok_merges_put(&t->merges, ia, ib, (uint32_t)i, inew) != 0) {
            rc = error_set(c->err, LLMOPT_ENOMEM, "out of memory");
            break;
        }
    }
    tok_buf_free(&joined);
    return rc;
}

static int load_model(load_ctx *c, json_t *root) {
    tok_tokenizer *t = c->t;
    json_t *model = json_object_get(root, "model");
    if (!model) return fail(c, LLMOPT_EFORMAT, "model", "missing");
    if (!json_is_object(model)) return fail(c, LLMOPT_EFORMAT, "model", "expected an object");
    const char *type = type_of(model);
    if (type && strcmp(type, "BPE") != 0)
        return fail(c, LLMOPT_EUNSUPPORTED, "model.type", "model type '%s' is not supported (only BPE)", type);
    if (!type && !json_object_get(model, "merges"))
        return fail(c, LLMOPT_EUNSUPPORTED, "model.type", "missing, and the model has no merges (only BPE is supported)");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout))
        return fail(c, LLMOPT_EUNSUPPORTED, "model.dropout",
                    "BPE dropout is not supported (encoding would be random); it must be null");
    const char *s;
    int rc;
    if ((rc = get_str(c, model, "continuing_subword_prefix", "model.continuing_subword_prefix", &s)) != 0) return rc;
    if (s && *s && !(t->cont_prefix = dupn(s, strlen(s)))) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    if ((rc = get_str(c, model, "end_of_word_suffix", "model.end_of_word_suffix", &s)) != 0) return rc;
    if (s && *s && !(t->eow_suffix = dupn(s, strlen(s)))) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    if ((rc = get_bool(c, model, "fuse_unk", "model.fuse_unk", 0, &t->fuse_unk)) != 0 ||
        (rc = get_bool(c, model, "byte_fallback", "model.byte_fallback", 0, &t->byte_fallback)) != 0 ||
        (rc = get_bool(c, model, "ignore_merges", "model.ignore_merges", 0, &t->ignore_merges)) != 0)
        return rc;
    if ((rc = load_vocab(c, model, json_object_get(root, "added_tokens"))) != 0) return rc;
    if ((rc = load_merges(c, model)) != 0) return rc;
    t->unk_id = -1;
    if ((rc = get_str(c, model, "unk_token", "model.unk_token", &s)) != 0) return rc;
    if (s && vocab_id(t, s, strlen(s), &t->unk_id) != 0)
        return fail(c, LLMOPT_EFORMAT, "model.unk_token", "'%.200s' is not in model.vocab", s);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        if (vocab_id(t, name, 6, &t->byte_ids[b]) != 0) t->byte_ids[b] = -1;
    }
    return 0;
}

/* ---- added tokens ---- */

/* Added tokens ordered by first byte, longest first: the matcher tries them in this order. */
static int cmp_added(const void *pa, const void *pb) {
    const tok_added *a = pa, *b = pb;
    unsigned char fa = (unsigned char)a->content[0], fb = (unsigned char)b->content[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int load_added(load_ctx *c, json_t *root) {
    tok_tokenizer *t = c->t;
    json_t *arr = json_object_get(root, "added_tokens"), *v;
    if (!arr || json_is_null(arr)) arr = NULL;
    else if (!json_is_array(arr)) return fail(c, LLMOPT_EFORMAT, "added_tokens", "expected an array");
    size_t n = arr ? json_array_size(arr) : 0, i;
    t->added = calloc(n + 1, sizeof *t->added);
    if (!t->added) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    char field[96];
    json_array_foreach(arr, i, v) {
        int rc;
        tok_added *a = &t->added[t->n_added];
        const char *content;
        if (!json_is_object(v)) {
            snprintf(field, sizeof field, "added_tokens[%zu]", i);
            return fail(c, LLMOPT_EFORMAT, field, "expected an object");
        }
        snprintf(field, sizeof field, "added_tokens[%zu].content", i);
        if ((rc = get_str(c, v, "content", field, &content)) != 0) return rc;
        if (!content || !*content) return fail(c, LLMOPT_EFORMAT, field, "missing or empty");
        snprintf(field, sizeof field, "added_tokens[%zu].id", i);
        json_t *idv = json_object_get(v, "id");
        if (!idv) return fail(c, LLMOPT_EFORMAT, field, "missing");
        if ((rc = get_id(c, idv, field, &a->id)) != 0) return rc;
        a->len = json_string_length(json_object_get(v, "content"));
        if ((rc = set_token(c, a->id, content, a->len, field)) != 0) return rc;
        if (!(a->content = dupn(content, a->len))) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
        t->n_added++;
        snprintf(field, sizeof field, "added_tokens[%zu]", i);
        if ((rc = get_bool(c, v, "special", field, 0, &a->special)) != 0 ||
            (rc = get_bool(c, v, "single_word", field, 0, &a->single_word)) != 0 ||
            (rc = get_bool(c, v, "lstrip", field, 0, &a->lstrip)) != 0 ||
            (rc = get_bool(c, v, "rstrip", field, 0, &a->rstrip)) != 0 ||
            (rc = get_bool(c, v, "normalized", field, !a->special, &a->normalized)) != 0)
            return rc;
        if (a->normalized) t->has_normalized_added = 1;
        if (tok_map_put(&t->added_map, a->content, a->len, a->id, 0) != 0)
            return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    }
    t->is_special = calloc(t->n_ids + 1, 1);
    if (!t->is_special) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    for (i = 0; i < t->n_added; i++)
        if (t->added[i].special) t->is_special[t->added[i].id] = 1;
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    for (int b = 0, j = 0; b <= 256; b++) {
        while ((size_t)j < t->n_added && (unsigned char)t->added[j].content[0] < b) j++;
        t->first[b] = (uint32_t)j;
    }
    return 0;
}

/* ---- pipeline parts ---- */

static int add_norm(load_ctx *c, json_t *n, const char *field) {
    tok_tokenizer *t = c->t;
    char sub[512];
    const char *type = type_of(n);
    if (!json_is_object(n) || !type) return fail(c, LLMOPT_EFORMAT, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(n, "normalizers"), *v;
        snprintf(sub, sizeof sub, "%s.normalizers", field);
        if (!json_is_array(arr)) return fail(c, LLMOPT_EFORMAT, sub, "expected an array");
        size_t i;
        json_array_foreach(arr, i, v) {
            snprintf(sub, sizeof sub, "%.200s.normalizers[%zu]", field, i);
            int rc = add_norm(c, v, sub);
            if (rc != 0) return rc;
        }
        return 0;
    }
    tok_normalizer nm = {0};
    const char *a = NULL, *b = NULL;
    int rc;
    if (strcmp(type, "Prepend") == 0) {
        nm.kind = TOK_NORM_PREPEND;
        snprintf(sub, sizeof sub, "%.200s.prepend", field);
        if ((rc = get_str(c, n, "prepend", sub, &a)) != 0) return rc;
        if (!a) return fail(c, LLMOPT_EFORMAT, sub, "missing");
    } else if (strcmp(type, "Replace") == 0) {
        nm.kind = TOK_NORM_REPLACE;
        json_t *pat = json_object_get(n, "pattern");
        snprintf(sub, sizeof sub, "%.200s.pattern", field);
        if (json_is_object(pat) && json_object_get(pat, "Regex"))
            return fail(c, LLMOPT_EUNSUPPORTED, sub, "Replace with a Regex pattern is not supported (only String)");
        if (!json_is_object(pat) || !json_is_string(json_object_get(pat, "String")))
            return fail(c, LLMOPT_EFORMAT, sub, "expected {\"String\": ...}");
        a = json_string_value(json_object_get(pat, "String"));
        if (!*a) return fail(c, LLMOPT_EFORMAT, sub, "empty pattern");
        snprintf(sub, sizeof sub, "%.200s.content", field);
        if ((rc = get_str(c, n, "content", sub, &b)) != 0) return rc;
        if (!b) return fail(c, LLMOPT_EFORMAT, sub, "missing");
    } else if (strcmp(type, "NFC") == 0 || strcmp(type, "NFD") == 0) {
        nm.kind = type[2] == 'C' ? TOK_NORM_NFC : TOK_NORM_NFD;
    } else {
        snprintf(sub, sizeof sub, "%.200s.type", field);
        return fail(c, LLMOPT_EUNSUPPORTED, sub,
                    "normalizer '%s' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD)", type);
    }
    tok_normalizer *grown = realloc(t->norms, (t->n_norms + 1) * sizeof *grown);
    if (!grown) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    t->norms = grown;
    nm.a = a ? dupn(a, strlen(a)) : NULL;
    nm.b = b ? dupn(b, strlen(b)) : NULL;
    t->norms[t->n_norms++] = nm;
    if ((a && !nm.a) || (b && !nm.b)) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    return 0;
}

/* Metaspace's prepend_scheme, or the older add_prefix_space flag. */
static int get_prepend_scheme(load_ctx *c, json_t *o, const char *field, int *out) {
    char sub[512];
    const char *s;
    int rc, aps;
    snprintf(sub, sizeof sub, "%.200s.prepend_scheme", field);
    if ((rc = get_str(c, o, "prepend_scheme", sub, &s)) != 0) return rc;
    if (s) {
        if (strcmp(s, "always") == 0) *out = TOK_PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0) *out = TOK_PREPEND_FIRST;
        else if (strcmp(s, "never") == 0) *out = TOK_PREPEND_NEVER;
        else return fail(c, LLMOPT_EFORMAT, sub, "expected \"always\", \"first\" or \"never\", not \"%.100s\"", s);
        return 0;
    }
    snprintf(sub, sizeof sub, "%.200s.add_prefix_space", field);
    if ((rc = get_bool(c, o, "add_prefix_space", sub, 1, &aps)) != 0) return rc;
    *out = aps ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    return 0;
}

static int get_replacement(load_ctx *c, json_t *o, const char *field, char **out) {
    char sub[512];
    const char *s;
    int rc;
    snprintf(sub, sizeof sub, "%.200s.replacement", field);
    if ((rc = get_str(c, o, "replacement", sub, &s)) != 0) return rc;
    if (!s || !*s) return fail(c, LLMOPT_EFORMAT, sub, "missing or empty");
    if (!(*out = dupn(s, strlen(s)))) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    return 0;
}

uint32_t tok_byte_cp(unsigned b) {
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other bytes
     * take the code points from 256 on, in byte order (Radford et al. 2019, encoder.py). */
    uint32_t next = 256;
    for (unsigned x = 0; x <= b; x++) {
        int keep = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        if (x == b) return keep ? b : next;
        if (!keep) next++;
    }
    return UNI_REPLACEMENT; /* b > 255 */
}

static void init_byte_alphabet(tok_tokenizer *t) {
    for (int i = 0; i < 324; i++) t->bl_rev[i] = -1;
    for (unsigned b = 0; b < 256; b++) {
        uint32_t cp = tok_byte_cp(b);
        t->bl_len[b] = (uint8_t)uni_encode(cp, t->bl_map[b]);
        t->bl_rev[cp] = (int16_t)b;
    }
}

static int add_pretok(load_ctx *c, json_t *p, const char *field) {
    tok_tokenizer *t = c->t;
    char sub[512];
    const char *type = type_of(p);
    if (!json_is_object(p) || !type) return fail(c, LLMOPT_EFORMAT, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(p, "pretokenizers"), *v;
        snprintf(sub, sizeof sub, "%.200s.pretokenizers", field);
        if (!json_is_array(arr)) return fail(c, LLMOPT_EFORMAT, sub, "expected an array");
        size_t i;
        json_array_foreach(arr, i, v) {
            snprintf(sub, sizeof sub, "%.200s.pretokenizers[%zu]", field, i);
            int rc = add_pretok(c, v, sub);
            if (rc != 0) return rc;
        }
        return 0;
    }
    tok_pretok pt = {0};
    int rc;
    if (strcmp(type, "ByteLevel") == 0) {
        pt.kind = TOK_PRE_BYTELEVEL;
        snprintf(sub, sizeof sub, "%.200s", field);
        if ((rc = get_bool(c, p, "add_prefix_space", sub, 1, &pt.add_prefix_space)) != 0 ||
            (rc = get_bool(c, p, "use_regex", sub, 1, &pt.use_regex)) != 0)
            return rc;
        t->byte_level = 1;
    } else if (strcmp(type, "Metaspace") == 0) {
        pt.kind = TOK_PRE_METASPACE;
        if ((rc = get_prepend_scheme(c, p, field, &pt.prepend_scheme)) != 0) return rc;
        if ((rc = get_bool(c, p, "split", field, 1, &pt.split)) != 0) return rc;
        if ((rc = get_replacement(c, p, field, &pt.replacement)) != 0) return rc;
    } else if (strcmp(type, "Split") == 0) {
        pt.kind = TOK_PRE_SPLIT;
        json_t *pat = json_object_get(p, "pattern");
        const char *rx = json_string_value(json_object_get(pat, "Regex")), *beh = json_string_value(json_object_get(p, "behavior"));
        snprintf(sub, sizeof sub, "%.200s.pattern", field);
        if (!rx) return fail(c, LLMOPT_EUNSUPPORTED, sub, "a Split pattern must be a {\"Regex\": ...} (of Llama 3, Qwen2, tekken or o200k)");
        if (strcmp(rx, TOK_LLAMA3_REGEX) == 0) pt.digits = 3;
        else if (strcmp(rx, TOK_QWEN2_REGEX) == 0) pt.digits = 1;
        else if (strcmp(rx, TOK_TEKKEN_REGEX) == 0) pt.cased = 1, pt.digits = 1;
        else if (strcmp(rx, TOK_O200K_REGEX) == 0) pt.cased = 1, pt.contractions = 1, pt.digits = 3;
        else return fail(c, LLMOPT_EUNSUPPORTED, sub,
                         "Split regex '%.80s%s' is not supported (Llama 3's, Qwen2's, Mistral's tekken and GPT-4o's are)",
                         rx, strlen(rx) > 80 ? "..." : "");
        snprintf(sub, sizeof sub, "%.200s", field);
        if (!beh || strcmp(beh, "Isolated") != 0 || json_is_true(json_object_get(p, "invert")))
            return fail(c, LLMOPT_EUNSUPPORTED, sub, "Split must have behavior \"Isolated\" and invert false");
    } else if (strcmp(type, "Digits") == 0) { /* SmolLM's and StarCoder's, before ByteLevel */
        pt.kind = TOK_PRE_DIGITS;
        snprintf(sub, sizeof sub, "%.200s.individual_digits", field);
        if ((rc = get_bool(c, p, "individual_digits", sub, 0, &pt.individual)) != 0) return rc;
    } else {
        snprintf(sub, sizeof sub, "%.200s.type", field);
        return fail(c, LLMOPT_EUNSUPPORTED, sub,
                    "pre-tokenizer '%s' is not supported (supported: ByteLevel, Metaspace, Split, Digits, Sequence)", type);
    }
    tok_pretok *grown = realloc(t->pres, (t->n_pres + 1) * sizeof *grown);
    if (!grown) {
        free(pt.replacement);
        return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    }
    t->pres = grown;
    t->pres[t->n_pres++] = pt;
    return 0;
}

static int add_decoder(load_ctx *c, json_t *d, const char *field) {
    tok_tokenizer *t = c->t;
    char sub[512];
    const char *type = type_of(d);
    if (!json_is_object(d) || !type) return fail(c, LLMOPT_EFORMAT, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(d, "decoders"), *v;
        snprintf(sub, sizeof sub, "%.200s.decoders", field);
        if (!json_is_array(arr)) return fail(c, LLMOPT_EFORMAT, sub, "expected an array");
        size_t i;
        json_array_foreach(arr, i, v) {
            snprintf(sub, sizeof sub, "%.200s.decoders[%zu]", field, i);
            int rc = add_decoder(c, v, sub);
            if (rc != 0) return rc;
        }
        return 0;
    }
    tok_decoder dc = {0};
    const char *a = NULL, *b = NULL;
    int rc = 0;
    if (strcmp(type, "ByteLevel") == 0) {
        dc.kind = TOK_DEC_BYTELEVEL;
    } else if (strcmp(type, "Metaspace") == 0) {
        dc.kind = TOK_DEC_METASPACE;
        if ((rc = get_prepend_scheme(c, d, field, &dc.prepend_scheme)) != 0) return rc;
        if ((rc = get_replacement(c, d, field, &dc.a)) != 0) return rc;
    } else if (strcmp(type, "Replace") == 0) {
        dc.kind = TOK_DEC_REPLACE;
        json_t *pat = json_object_get(d, "pattern");
        snprintf(sub, sizeof sub, "%.200s.pattern", field);
        if (json_is_object(pat) && json_object_get(pat, "Regex"))
            return fail(c, LLMOPT_EUNSUPPORTED, sub, "Replace with a Regex pattern is not supported (only String)");
        if (!json_is_object(pat) || !json_is_string(json_object_get(pat, "String")) ||
            !*json_string_value(json_object_get(pat, "String")))
            return fail(c, LLMOPT_EFORMAT, sub, "expected {\"String\": non-empty}");
        a = json_string_value(json_object_get(pat, "String"));
        snprintf(sub, sizeof sub, "%.200s.content", field);
        if ((rc = get_str(c, d, "content", sub, &b)) != 0) return rc;
        if (!b) return fail(c, LLMOPT_EFORMAT, sub, "missing");
    } else if (strcmp(type, "ByteFallback") == 0) {
        dc.kind = TOK_DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        dc.kind = TOK_DEC_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        dc.kind = TOK_DEC_STRIP;
        snprintf(sub, sizeof sub, "%.200s.content", field);
        if ((rc = get_str(c, d, "content", sub, &a)) != 0) return rc;
        if (!a || !*a) return fail(c, LLMOPT_EFORMAT, sub, "missing or empty");
        json_t *st = json_object_get(d, "start"), *sp = json_object_get(d, "stop");
        snprintf(sub, sizeof sub, "%.200s.start", field);
        if (!json_is_integer(st) || json_integer_value(st) < 0 || json_integer_value(st) > 1000000)
            return fail(c, LLMOPT_EFORMAT, sub, "expected a count");
        snprintf(sub, sizeof sub, "%.200s.stop", field);
        if (!json_is_integer(sp) || json_integer_value(sp) < 0 || json_integer_value(sp) > 1000000)
            return fail(c, LLMOPT_EFORMAT, sub, "expected a count");
        dc.start = (int)json_integer_value(st);
        dc.stop = (int)json_integer_value(sp);
    } else if (strcmp(type, "BPEDecoder") == 0) {
        dc.kind = TOK_DEC_BPE;
        snprintf(sub, sizeof sub, "%.200s.suffix", field);
        if ((rc = get_str(c, d, "suffix", sub, &a)) != 0) return rc;
        if (!a) a = "</w>";
    } else {
        snprintf(sub, sizeof sub, "%.200s.type", field);
        return fail(c, LLMOPT_EUNSUPPORTED, sub,
                    "decoder '%s' is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, "
                    "Fuse, Strip, BPEDecoder, Sequence)", type);
    }
    tok_decoder *grown = realloc(t->decs, (t->n_decs + 1) * sizeof *grown);
    if (!grown) {
        free(dc.a);
        return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    }
    t->decs = grown;
    if (a) dc.a = dupn(a, strlen(a));
    if (b) dc.b = dupn(b, strlen(b));
    t->decs[t->n_decs++] = dc;
    if ((a && !dc.a) || (b && !dc.b)) return error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    return 0;
}

static int push_ids(int32_t **arr, size_t *n, const int32_t *ids, size_t k) {
    int32_t *g = realloc(*arr, (*n + k + 1) * sizeof *g);
    if (!g) return LLMOPT_ENOMEM;
    memcpy(g + *n, ids, k * sizeof *ids);
    *arr = g;
    *n += k;
    return 0;
}

/* [token, id] of RobertaProcessing/BertProcessing's cls and sep. */
static int pair_id(load_ctx *c, json_t *p, const char *key, const char *field, int32_t *id) {
    char sub[512];
    json_t *v = json_object_get(p, key);
    snprintf(sub, sizeof sub, "%.200s.%s", field, key);
    if (!json_is_array(v) || json_array_size(v) != 2) return fail(c, LLMOPT_EFORMAT, sub, "expected [token, id]");
    int rc = get_id(c, json_array_get(v, 1), sub, id);
    if (rc == 0 && (size_t)*id >= c->t->n_ids) return fail(c, LLMOPT_EFORMAT, sub, "id %d is not in the vocabulary", (int)*id);
    return rc;
}

static int add_post(load_ctx *c, json_t *p, const char *field) {
    tok_tokenizer *t = c->t;
    char sub[512];
    const char *type = type_of(p);
    if (!json_is_object(p) || !type) return fail(c, LLMOPT_EFORMAT, field, "expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(p, "processors"), *v;
        snprintf(sub, sizeof sub, "%.200s.processors", field);
        if (!json_is_array(arr)) return fail(c, LLMOPT_EFORMAT, sub, "expected an array");
        size_t i;
        json_array_foreach(arr, i, v) {
            snprintf(sub, sizeof sub, "%.200s.processors[%zu]", field, i);
            int rc = add_post(c, v, sub);
            if (rc != 0) return rc;
        }
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) return 0; /* adjusts offsets only */
    tok_post pp = {0};
    int rc = 0;
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        if ((rc = pair_id(c, p, "cls", field, &cls)) != 0 || (rc = pair_id(c, p, "sep", field, &sep)) != 0) return rc;
        if (push_ids(&pp.pre, &pp.n_pre, &cls, 1) != 0 || push_ids(&pp.post, &pp.n_post, &sep, 1) != 0)
            rc = error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    } else if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens"), *it;
        snprintf(sub, sizeof sub, "%.200s.single", field);
        if (!json_is_array(single)) return fail(c, LLMOPT_EFORMAT, sub, "expected an array");
        int seen_seq = 0;
        size_t i;
        json_array_foreach(single, i, it) {
            snprintf(sub, sizeof sub, "%.200s.single[%zu]", field, i);
            json_t *st = json_object_get(it, "SpecialToken");
            if (json_object_get(it, "Sequence")) {
                if (seen_seq) { rc = fail(c, LLMOPT_EUNSUPPORTED, sub, "a second sequence in \"single\""); break; }
                seen_seq = 1;
                continue;
            }
            const char *name = json_is_object(st) ? json_string_value(json_object_get(st, "id")) : NULL;
            if (!name) { rc = fail(c, LLMOPT_EFORMAT, sub, "expected {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": ...}"); break; }
            json_t *spec = json_is_object(specials) ? json_object_get(specials, name) : NULL;
            json_t *ids = json_is_object(spec) ? json_object_get(spec, "ids") : NULL, *idv;
            if (!json_is_array(ids)) {
                snprintf(sub, sizeof sub, "%.200s.special_tokens[\"%.40s\"].ids", field, name);
                rc = fail(c, LLMOPT_EFORMAT, sub, "missing: the template names special token '%.100s'", name);
                break;
            }
            size_t k;
            json_array_foreach(ids, k, idv) {
                int32_t id = 0;
                snprintf(sub, sizeof sub, "%.200s.special_tokens[\"%.40s\"].ids[%zu]", field, name, k);
                if ((rc = get_id(c, idv, sub, &id)) != 0) break;
                if ((size_t)id >= t->n_ids) { rc = fail(c, LLMOPT_EFORMAT, sub, "id %d is not in the vocabulary", (int)id); break; }
                if (push_ids(seen_seq ? &pp.post : &pp.pre, seen_seq ? &pp.n_post : &pp.n_pre, &id, 1) != 0) {
                    rc = error_set(c->err, LLMOPT_ENOMEM, "out of memory");
                    break;
                }
            }
            if (rc != 0) break;
        }
        if (rc == 0 && !seen_seq) {
            snprintf(sub, sizeof sub, "%.200s.single", field);
            rc = fail(c, LLMOPT_EFORMAT, sub, "the template has no sequence ($A)");
        }
    } else {
        snprintf(sub, sizeof sub, "%.200s.type", field);
        return fail(c, LLMOPT_EUNSUPPORTED, sub,
                    "post-processor '%s' is not supported (supported: ByteLevel, TemplateProcessing, "
                    "RobertaProcessing, BertProcessing, Sequence)", type);
    }
    tok_post *grown = rc == 0 ? realloc(t->posts, (t->n_posts + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(pp.pre);
        free(pp.post);
        return rc ? rc : error_set(c->err, LLMOPT_ENOMEM, "out of memory");
    }
    t->posts = grown;
    t->posts[t->n_posts++] = pp;
    return 0;
}

/* ---- tokenizer_config.json / generation_config.json ---- */

static int32_t named_id(const tok_tokenizer *t, json_t *v) {
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    return tok_token_id(t, json_string_value(v));
}

static int add_eos_id(tok_tokenizer *t, int32_t id) {
    if (id < 0) return 0;
    for (size_t i = 0; i < t->n_eos_ids; i++)
        if (t->eos_ids[i] == id) return 0;
    return push_ids(&t->eos_ids, &t->n_eos_ids, &id, 1);
}

static json_t *load_json(const char *name, const char *data, size_t len, llmopt_error *err) {
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    if (!root) {
        error_set(err, LLMOPT_EFORMAT, "%s:%d:%d: not valid JSON: %s", name, je.line, je.column, je.text);
    } else if (!json_is_object(root)) {
        error_set(err, LLMOPT_EFORMAT, "%s: expected a JSON object at the top level", name);
        json_decref(root);
        root = NULL;
    }
    return root;
}

static int load_tokenizer_config(tok_tokenizer *t, const char *name, const char *data, size_t len, llmopt_error *err) {
    json_t *cfg = load_json(name, data, len, err);
    if (!cfg) return err ? err->status : LLMOPT_EFORMAT;
    int rc = 0;
    t->bos = named_id(t, json_object_get(cfg, "bos_token"));
    t->eos = named_id(t, json_object_get(cfg, "eos_token"));
    t->add_bos = json_is_true(json_object_get(cfg, "add_bos_token"));
    t->add_eos = json_is_true(json_object_get(cfg, "add_eos_token"));
    json_t *ct = json_object_get(cfg, "chat_template"), *it;
    const char *tmpl = json_string_value(ct);
    size_t i;
    json_array_foreach(ct, i, it) { /* [{"name": "default", "template": ...}, ...] */
        const char *tname = json_string_value(json_object_get(it, "name"));
        if (!tmpl || (tname && strcmp(tname, "default") == 0)) tmpl = json_string_value(json_object_get(it, "template"));
    }
    if (tmpl && !(t->chat_template = dupn(tmpl, strlen(tmpl)))) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
    json_decref(cfg);
    return rc;
}

static int valid_id(const tok_tokenizer *t, json_t *v) {
    return json_is_integer(v) && json_integer_value(v) >= 0 && (size_t)json_integer_value(v) < t->n_ids;
}

static int load_generation_config(tok_tokenizer *t, const char *name, const char *data, size_t len, llmopt_error *err) {
    json_t *gen = load_json(name, data, len, err), *v;
    if (!gen) return err ? err->status : LLMOPT_EFORMAT;
    json_t *b = json_object_get(gen, "bos_token_id"), *e = json_object_get(gen, "eos_token_id");
    if (json_is_array(b)) b = json_array_get(b, 0);
    if (t->bos < 0 && valid_id(t, b)) t->bos = (int32_t)json_integer_value(b);
    json_t *e0 = json_is_array(e) ? json_array_get(e, 0) : e;
    if (t->eos < 0 && valid_id(t, e0)) t->eos = (int32_t)json_integer_value(e0);
    int rc = add_eos_id(t, t->eos);
    if (valid_id(t, e)) rc = rc ? rc : add_eos_id(t, (int32_t)json_integer_value(e));
    size_t i;
    json_array_foreach(e, i, v) {
        if (rc == 0 && valid_id(t, v)) rc = add_eos_id(t, (int32_t)json_integer_value(v));
    }
    json_decref(gen);
    return rc ? error_set(err, LLMOPT_ENOMEM, "out of memory") : 0;
}

/* ---- entry points ---- */

static int load_parts(load_ctx *c, json_t *root) {
    int rc;
    if ((rc = load_model(c, root)) != 0 || (rc = load_added(c, root)) != 0) return rc;
    json_t *v = json_object_get(root, "normalizer");
    if (v && !json_is_null(v) && (rc = add_norm(c, v, "normalizer")) != 0) return rc;
    v = json_object_get(root, "pre_tokenizer");
    if (v && !json_is_null(v) && (rc = add_pretok(c, v, "pre_tokenizer")) != 0) return rc;
    v = json_object_get(root, "decoder");
    c->t->has_decoder = v && !json_is_null(v);
    if (c->t->has_decoder && (rc = add_decoder(c, v, "decoder")) != 0) return rc;
    v = json_object_get(root, "post_processor");
    if (v && !json_is_null(v) && (rc = add_post(c, v, "post_processor")) != 0) return rc;
    return 0;
}

static int load_all(const char *name, const char *data, size_t len, const char *cfg_name, const char *cfg,
                    size_t cfg_len, const char *gen_name, const char *gen, size_t gen_len, tok_tokenizer **out,
                    llmopt_error *err) {
    *out = NULL;
    tok_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->path = dupn(name, strlen(name)))) {
        free(t);
        return error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    t->bos = t->eos = t->unk_id = -1;
    init_byte_alphabet(t);
    int rc;
    json_t *root = load_json(name, data, len, err);
    if (!root) rc = err ? err->status : LLMOPT_EFORMAT;
    else {
        load_ctx c = {t, t->path, err};
        rc = load_parts(&c, root);
        json_decref(root);
    }
    if (rc == 0 && cfg) rc = load_tokenizer_config(t, cfg_name, cfg, cfg_len, err);
    if (rc == 0 && gen) rc = load_generation_config(t, gen_name, gen, gen_len, err);
    if (rc == 0 && !gen && add_eos_id(t, t->eos) != 0) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
    if (rc != 0) {
        tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int tok_load_mem(const char *name, const char *json, size_t len, const char *config, size_t config_len,
                 const char *gen_config, size_t gen_config_len, tok_tokenizer **out, llmopt_error *err) {
    if (!out) return error_set(err, LLMOPT_EINVAL, "tok_load_mem: no output");
    *out = NULL;
    if (!json) return error_set(err, LLMOPT_EINVAL, "tok_load_mem: no tokenizer.json text");
    return load_all(name ? name : "tokenizer.json", json, len, "tokenizer_config.json", config, config_len,
                    "generation_config.json", gen_config, gen_config_len, out, err);
}

/* Reads dir/name into *data when the file exists (else leaves it NULL); *path is malloc'd. */
static int read_optional(const char *dir, const char *name, char **path, char **data, size_t *len, llmopt_error *err) {
    *data = NULL;
    *len = 0;
    if (!(*path = fs_join(dir, name))) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    if (!fs_exists(*path)) return 0;
    return fs_read_all(*path, data, len, err);
}

int tok_load(const char *dir_or_file, tok_tokenizer **out, llmopt_error *err) {
    if (!out) return error_set(err, LLMOPT_EINVAL, "tok_load: no output");
    *out = NULL;
    if (!dir_or_file) return error_set(err, LLMOPT_EINVAL, "tok_load: no path");
    char *file, *dir;
    if (fs_is_dir(dir_or_file)) {
        file = fs_join(dir_or_file, "tokenizer.json");
        dir = dupn(dir_or_file, strlen(dir_or_file));
    } else {
        file = dupn(dir_or_file, strlen(dir_or_file));
        const char *slash = strrchr(dir_or_file, '/');
        dir = slash ? dupn(dir_or_file, (size_t)(slash - dir_or_file) + (slash == dir_or_file)) : dupn(".", 1);
    }
    char *data = NULL, *cfg = NULL, *gen = NULL, *cfg_path = NULL, *gen_path = NULL;
    size_t len = 0, cfg_len = 0, gen_len = 0;
    int rc = 0;
    if (!file || !dir) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
    else if (!fs_exists(file))
        rc = error_set(err, LLMOPT_ENOTFOUND, "%s: no such file (a tokenizer.json or a directory holding one)", file);
    else if ((rc = fs_read_all(file, &data, &len, err)) == 0 &&
             (rc = read_optional(dir, "tokenizer_config.json", &cfg_path, &cfg, &cfg_len, err)) == 0 &&
             (rc = read_optional(dir, "generation_config.json", &gen_path, &gen, &gen_len, err)) == 0)
        rc = load_all(file, data, len, cfg_path, cfg, cfg_len, gen_path, gen, gen_len, out, err);
    free(file);
    free(dir);
    free(data);
    free(cfg);
    free(gen);
    free(cfg_path);
    free(gen_path);
    return rc;
}

void tok_free(tok_tokenizer *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_ids; i++) free(t->tokens[i]);
    free(t->tokens);
    free(t->token_len);
    tok_map_free(&t->vocab);
    tok_map_free(&t->added_map);
    free(t->merges.e);
    free(t->cont_prefix);
    free(t->eow_suffix);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->is_special);
    for (size_t i = 0; i < t->n_norms; i++) free(t->norms[i].a), free(t->norms[i].b);
    free(t->norms);
    for (size_t i = 0; i < t->n_pres; i++) free(t->pres[i].replacement);
    free(t->pres);
    for (size_t i = 0; i < t->n_decs; i++) free(t->decs[i].a), free(t->decs[i].b);
    free(t->decs);
    for (size_t i = 0; i < t->n_posts; i++) free(t->posts[i].pre), free(t->posts[i].post);
    free(t->posts);
    free(t->eos_ids);
    free(t->chat_template);
    free(t->path);
    free(t);
}
