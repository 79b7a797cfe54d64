/* Byte-level BPE training (Sennrich et al. 2016, sec. 3.2, on GPT-2's byte alphabet), step for
 * step the algorithm of tokenizers' BpeTrainer (models/bpe/trainer.rs) so that merges agree:
 * count the pre-tokenized words, count adjacent symbol pairs over them, then pop the best pair
 * from a max-heap of (count, pair) whose entries are refreshed lazily, merge it in the words that
 * held it and apply each word's pair-count changes, pushing the pairs the merge created.
 * What tokenizers does and this repeats, odd as some of it is:
 *   - a heap entry carries the set of words where its pair was seen when it was pushed, and a
 *     merge visits only those words;
 *   - the merged pair's own count is not reset (an overlapping run "aaa" leaves some behind);
 *   - a merge whose string is already a token reuses that id and adds no vocabulary entry.
 * One difference: the text is split at the special tokens before pre-tokenizing (tokenizers
 * trains across them), so no merge ever joins a special's pieces. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "tokenizer_train.h"
#include "unicode.h"

/* ---- growable arrays ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return LLMOPT_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}
#define GROW(arr, cap, need) grow((void **)&(arr), &(cap), (need), sizeof *(arr))

/* A set of word indices: where a heap entry's pair was seen (no repeats by construction). */
typedef struct wlist {
    int32_t *w;
    size_t n, cap;
} wlist;

/* A heap entry: (count, pair) ordered by count, then by the smaller pair (tokenizers' Merge). */
typedef struct hent {
    int64_t count;
    uint64_t pair; /* left << 32 | right, so smaller pairs compare smaller */
    uint32_t list;
} hent;

typedef struct trainer {
    /* words: the pre-tokenized pieces of the text, counted (key: the raw bytes) */
    tok_map words;
    int64_t *wcount;
    size_t n_words, cap_wcount;
    /* each word's symbols: sym[wstart[w] .. wstart[w] + wlen[w]) */
    int32_t *sym;
    size_t *wstart;
    uint32_t *wlen;

    /* tokens: id -> string (NUL-terminated in text), and string -> id */
    tok_buf text;
    size_t *toff;
    size_t n_tok, cap_tok;
    tok_map tok_ids;
    int32_t byte_id[256];

    /* pairs: open addressing from pair to index; per index its key, count and the word list
     * being built for it during the current merge (upd_step == step) */
    uint64_t *slot_key;
    uint32_t *slot_idx;
    size_t n_slots;
    uint64_t *pkey;
    int64_t *pcount;
    uint32_t *upd_step, *upd_list;
    size_t n_pairs, cap_pairs;
    uint32_t *touched;
    size_t n_touched, cap_touched;

    wlist *lists;
    size_t n_lists, cap_lists;
    uint32_t *free_lists;
    size_t n_free, cap_free;

    hent *heap;
    size_t n_heap, cap_heap;

    uint64_t *merges; /* in rank order */
    size_t n_merges, cap_merges;
    uint32_t step;
} trainer;

/* ---- tokens ---- */

static int add_token(trainer *t, const char *s, size_t n, int32_t *id) {
    const tok_map_entry *e = tok_map_get(&t->tok_ids, s, n);
    if (e) {
        *id = e->a;
        return 0;
    }
    if (t->n_tok >= INT32_MAX || GROW(t->toff, t->cap_tok, t->n_tok + 1) != 0) return LLMOPT_ENOMEM;
    t->toff[t->n_tok] = t->text.n;
    if (tok_buf_add(&t->text, s, n) != 0 || tok_buf_add(&t->text, "", 1) != 0) return LLMOPT_ENOMEM;
    *id = (int32_t)t->n_tok;
    if (tok_map_put(&t->tok_ids, s, n, *id, 0) != 0) return LLMOPT_ENOMEM;
    t->n_tok++;
    return 0;
}

static const char *token(const trainer *t, int32_t id) { return t->text.p + t->toff[id]; }

/* The 256 byte symbols, in the order of their characters' code points (tokenizers sorts its
 * alphabet by code point): bytes '!'..'~', 0xA1.., then those mapped to 256..323. */
static int add_alphabet(trainer *t) {
    int order[256], n = 0;
    for (uint32_t cp = 0; cp < 324; cp++)
        for (unsigned b = 0; b < 256; b++)
            if (tok_byte_cp(b) == cp) order[n++] = (int)b;
    for (int i = 0; i < 256; i++) {
        char u[4];
        size_t l = uni_encode(tok_byte_cp((unsigned)order[i]), u);
        int rc = add_token(t, u, l, &t->byte_id[order[i]]);
        if (rc != 0) return rc;
    }
    return 0;
}

/* ---- words ---- */

static int count_word(trainer *t, const char *w, size_t n) {
    const tok_map_entry *e = tok_map_get(&t->words, w, n);
    if (e) {
        t->wcount[e->a]++;
        return 0;
    }
    if (t->n_words >= INT32_MAX || GROW(t->wcount, t->cap_wcount, t->n_words + 1) != 0 ||
        tok_map_put(&t->words, w, n, (int32_t)t->n_words, 0) != 0)
        return LLMOPT_ENOMEM;
    t->wcount[t->n_words++] = 1;
    return 0;
}

/* Pre-tokenizes one piece of text (between specials) as the ByteLevel pre-tokenizer does. */
static int count_piece(trainer *t, const char *s, size_t n, int add_prefix_space, tok_buf *tmp) {
    if (n == 0) return 0;
    if (add_prefix_space && s[0] != ' ') {
        tmp->n = 0;
        if (tok_buf_add(tmp, " ", 1) != 0 || tok_buf_add(tmp, s, n) != 0) return LLMOPT_ENOMEM;
        s = tmp->p;
        n = tmp->n;
    }
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t e = tok_gpt2_next(u, n, i);
        if (count_word(t, s + i, e - i) != 0) return LLMOPT_ENOMEM;
        i = e;
    }
    return 0;
}

/* The leftmost special at or after from (the longest there), or 0. */
static int find_special(const tok_train_options *o, const char *s, size_t n, size_t from, size_t *at, size_t *len) {
    for (size_t i = from; i < n; i++) {
        size_t best = 0;
        for (size_t k = 0; k < o->n_specials; k++) {
            if (s[i] != o->specials[k][0]) continue;
            size_t l = strlen(o->specials[k]);
            if (l > best && l <= n - i && memcmp(s + i, o->specials[k], l) == 0) best = l;
        }
        if (best) {
            *at = i;
            *len = best;
            return 1;
        }
    }
    return 0;
}

static int count_words(trainer *t, const char *text, size_t len, const tok_train_options *o) {
    tok_buf tmp = {0};
    size_t from = 0, at, l;
    int rc = 0;
    while (rc == 0 && find_special(o, text, len, from, &at, &l)) {
        rc = count_piece(t, text + from, at - from, o->add_prefix_space, &tmp);
        from = at + l;
    }
    if (rc == 0) rc = count_piece(t, text + from, len - from, o->add_prefix_space, &tmp);
    tok_buf_free(&tmp);
    return rc;
}

/* Each word as its byte symbols. */
static int split_words(trainer *t) {
    size_t total = t->words.keys.n;
    t->sym = malloc((total ? total : 1) * sizeof *t->sym);
    t->wstart = malloc((t->n_words ? t->n_words : 1) * sizeof *t->wstart);
    t->wlen = malloc((t->n_words ? t->n_words : 1) * sizeof *t->wlen);
    if (!t->sym || !t->wstart || !t->wlen) return LLMOPT_ENOMEM;
    for (size_t i = 0; i < t->words.cap; i++) {
        const tok_map_entry *e = &t->words.e[i];
        if (e->len == UINT32_MAX) continue;
        const unsigned char *k = (const unsigned char *)t->words.keys.p + e->off;
        t->wstart[e->a] = e->off;
        t->wlen[e->a] = e->len;
        for (uint32_t j = 0; j < e->len; j++) t->sym[e->off + j] = t->byte_id[k[j]];
    }
    return 0;
}

/* ---- pairs ---- */

static uint64_t pair_hash(uint64_t x) { /* splitmix64's finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int rehash(trainer *t, size_t n_slots) {
    uint64_t *k = malloc(n_slots * sizeof *k);
    uint32_t *v = malloc(n_slots * sizeof *v);
    if (!k || !v) {
        free(k);
        free(v);
        return LLMOPT_ENOMEM;
    }
    for (size_t i = 0; i < n_slots; i++) k[i] = UINT64_MAX;
    for (size_t p = 0; p < t->n_pairs; p++) {
        size_t i = pair_hash(t->pkey[p]) & (n_slots - 1);
        while (k[i] != UINT64_MAX) i = (i + 1) & (n_slots - 1);
        k[i] = t->pkey[p];
        v[i] = (uint32_t)p;
    }
    free(t->slot_key);
    free(t->slot_idx);
    t->slot_key = k;
    t->slot_idx = v;
    t->n_slots = n_slots;
    return 0;
}

/* The index of pair key, made (count 0) when new; UINT32_MAX when out of memory. */
static uint32_t pair_index(trainer *t, uint64_t key) {
    if (t->n_slots) {
        size_t i = pair_hash(key) & (t->n_slots - 1);
        for (; t->slot_key[i] != UINT64_MAX; i = (i + 1) & (t->n_slots - 1))
            if (t->slot_key[i] == key) return t->slot_idx[i];
    }
    if (2 * (t->n_pairs + 1) > t->n_slots && rehash(t, t->n_slots ? 2 * t->n_slots : 1024) != 0) return UINT32_MAX;
    size_t cap = t->cap_pairs;
    if (t->n_pairs + 1 > cap) {
        if (t->n_pairs >= UINT32_MAX - 1) return UINT32_MAX;
        size_t c = cap ? 2 * cap : 1024;
        uint64_t *k = realloc(t->pkey, c * sizeof *k);
        if (k) t->pkey = k;
        int64_t *n = realloc(t->pcount, c * sizeof *n);
        if (n) t->pcount = n;
        uint32_t *s = realloc(t->upd_step, c * sizeof *s);
        if (s) t->upd_step = s;
        uint32_t *l = realloc(t->upd_list, c * sizeof *l);
        if (l) t->upd_list = l;
        if (!k || !n || !s || !l) return UINT32_MAX;
        t->cap_pairs = c;
    }
    uint32_t p = (uint32_t)t->n_pairs++;
    t->pkey[p] = key;
    t->pcount[p] = 0;
    t->upd_step[p] = UINT32_MAX;
    size_t i = pair_hash(key) & (t->n_slots - 1);
    while (t->slot_key[i] != UINT64_MAX) i = (i + 1) & (t->n_slots - 1);
    t->slot_key[i] = key;
    t->slot_idx[i] = p;
    return p;
}

static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

/* ---- word lists and the heap ---- */

static uint32_t list_new(trainer *t) {
    if (t->n_free) {
        uint32_t l = t->free_lists[--t->n_free];
        t->lists[l].n = 0;
        return l;
    }
    if (t->n_lists >= UINT32_MAX || GROW(t->lists, t->cap_lists, t->n_lists + 1) != 0) return UINT32_MAX;
    t->lists[t->n_lists] = (wlist){0};
    return (uint32_t)t->n_lists++;
}

static int list_release(trainer *t, uint32_t l) {
    if (GROW(t->free_lists, t->cap_free, t->n_free + 1) != 0) return LLMOPT_ENOMEM;
    t->free_lists[t->n_free++] = l;
    return 0;
}

/* Adds word w to list l unless it was the last one added (a word's pairs come together). */
static int list_add(trainer *t, uint32_t l, int32_t w) {
    wlist *x = &t->lists[l];
    if (x->n && x->w[x->n - 1] == w) return 0;
    if (GROW(x->w, x->cap, x->n + 1) != 0) return LLMOPT_ENOMEM;
    x->w[x->n++] = w;
    return 0;
}

static int hent_before(const hent *a, const hent *b) {
    return a->count != b->count ? a->count > b->count : a->pair < b->pair;
}

static int heap_push(trainer *t, hent h) {
    if (GROW(t->heap, t->cap_heap, t->n_heap + 1) != 0) return LLMOPT_ENOMEM;
    size_t i = t->n_heap++;
    while (i > 0 && hent_before(&h, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = h;
    return 0;
}

static hent heap_pop(trainer *t) {
    hent top = t->heap[0], last = t->heap[--t->n_heap];
    size_t i = 0, n = t->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hent_before(&t->heap[c + 1], &t->heap[c])) c++;
        if (!hent_before(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n) t->heap[i] = last;
    return top;
}

/* ---- counting and merging ---- */

static int count_pairs(trainer *t) {
    for (size_t w = 0; w < t->n_words; w++) {
        const int32_t *s = t->sym + t->wstart[w];
        for (uint32_t j = 0; j + 1 < t->wlen[w]; j++) {
            uint32_t p = pair_index(t, pair_key(s[j], s[j + 1]));
            if (p == UINT32_MAX) return LLMOPT_ENOMEM;
            if (t->upd_step[p] != 0) {
                if ((t->upd_list[p] = list_new(t)) == UINT32_MAX) return LLMOPT_ENOMEM;
                t->upd_step[p] = 0;
            }
            t->pcount[p] += t->wcount[w];
            if (list_add(t, t->upd_list[p], (int32_t)w) != 0) return LLMOPT_ENOMEM;
        }
    }
    for (size_t p = 0; p < t->n_pairs; p++)
        if (heap_push(t, (hent){t->pcount[p], t->pkey[p], t->upd_list[p]}) != 0) return LLMOPT_ENOMEM;
    return 0;
}

/* One pair-count change of word w; a pair that gains is noted with w for this step's pushes. */
static int change(trainer *t, int32_t a, int32_t b, int delta, int32_t w) {
    uint32_t p = pair_index(t, pair_key(a, b));
    if (p == UINT32_MAX) return LLMOPT_ENOMEM;
    t->pcount[p] += delta * t->wcount[w];
    if (delta < 0) return 0;
    if (t->upd_step[p] != t->step) {
        if ((t->upd_list[p] = list_new(t)) == UINT32_MAX ||
            GROW(t->touched, t->cap_touched, t->n_touched + 1) != 0)
            return LLMOPT_ENOMEM;
        t->upd_step[p] = t->step;
        t->touched[t->n_touched++] = p;
    }
    return list_add(t, t->upd_list[p], w);
}

/* Replaces every non-overlapping (a, b) of word w, left to right, by id, in place; as
 * tokenizers' Word::merge, the neighbours seen are the already merged ones. */
static int merge_word(trainer *t, int32_t w, int32_t a, int32_t b, int32_t id) {
    int32_t *s = t->sym + t->wstart[w];
    uint32_t n = t->wlen[w], o = 0;
    for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            if (o > 0 && (change(t, s[o - 1], a, -1, w) != 0 || change(t, s[o - 1], id, 1, w) != 0))
                return LLMOPT_ENOMEM;
            if (i + 2 < n && (change(t, b, s[i + 2], -1, w) != 0 || change(t, id, s[i + 2], 1, w) != 0))
                return LLMOPT_ENOMEM;
            s[o++] = id;
            i += 2;
        } else {
            s[o++] = s[i++];
        }
    }
    t->wlen[w] = o;
    return 0;
}

static int merge_loop(trainer *t, size_t vocab_size, int64_t min_frequency) {
    tok_buf joined = {0};
    int rc = 0;
    while (t->n_tok < vocab_size && t->n_heap) {
        hent top = heap_pop(t);
        uint32_t p = pair_index(t, top.pair);
        if (top.count != t->pcount[p]) { /* stale: requeue with the count of now */
            top.count = t->pcount[p];
            if ((rc = heap_push(t, top)) != 0) break;
            continue;
        }
        if (top.count < 1 || top.count < min_frequency) break;
        int32_t a = (int32_t)(top.pair >> 32), b = (int32_t)(uint32_t)top.pair, id;
        joined.n = 0;
        if ((rc = tok_buf_add(&joined, token(t, a), strlen(token(t, a)))) != 0 ||
            (rc = tok_buf_add(&joined, token(t, b), strlen(token(t, b)))) != 0 ||
            (rc = add_token(t, joined.p, joined.n, &id)) != 0 ||
            (rc = GROW(t->merges, t->cap_merges, t->n_merges + 1)) != 0)
            break;
        t->merges[t->n_merges++] = top.pair;
        t->step++;
        t->n_touched = 0;
        /* (t->lists may move while merging: change() makes lists) */
        for (size_t k = 0; k < t->lists[top.list].n && rc == 0; k++)
            rc = merge_word(t, t->lists[top.list].w[k], a, b, id);
        if (rc == 0) rc = list_release(t, top.list);
        for (size_t k = 0; k < t->n_touched && rc == 0; k++) {
            uint32_t q = t->touched[k];
            rc = t->pcount[q] > 0 ? heap_push(t, (hent){t->pcount[q], t->pkey[q], t->upd_list[q]})
                                  : list_release(t, t->upd_list[q]);
        }
        if (rc != 0) break;
    }
    tok_buf_free(&joined);
    return rc;
}

/* ---- output ---- */

static json_t *byte_level(int add_prefix_space, int trim_offsets) {
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", add_prefix_space,
                     "trim_offsets", trim_offsets, "use_regex", 1);
}

static json_t *added_token(const char *content, size_t id) {
    return json_pack("{s:I, s:s, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)id, "content", content, "single_word", 0,
                     "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
}

/* The serialization of tokenizers' Tokenizer::save, fields in its order. */
static json_t *tokenizer_json(const trainer *t, const tok_train_options *o) {
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    int bad = !vocab || !merges || !added;
    for (size_t id = 0; !bad && id < t->n_tok; id++)
        bad = json_object_set_new(vocab, token(t, (int32_t)id), json_integer((json_int_t)id)) != 0;
    tok_buf m = {0};
    for (size_t k = 0; !bad && k < t->n_merges; k++) {
        const char *a = token(t, (int32_t)(t->merges[k] >> 32)), *b = token(t, (int32_t)(uint32_t)t->merges[k]);
        m.n = 0;
        bad = tok_buf_add(&m, a, strlen(a)) != 0 || tok_buf_add(&m, " ", 1) != 0 ||
              tok_buf_add(&m, b, strlen(b)) != 0 || json_array_append_new(merges, json_stringn(m.p, m.n)) != 0;
    }
    tok_buf_free(&m);
    for (size_t k = 0; !bad && k < o->n_specials; k++)
        bad = json_array_append_new(added, added_token(o->specials[k], k)) != 0;
    if (bad) {
        json_decref(vocab);
        json_decref(merges);
        json_decref(added);
        return NULL;
    }
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:o}", "type", "BPE", "dropout",
                              "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                              "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges", merges);
    if (!model) {
        json_decref(added);
        return NULL;
    }
    return json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:o, s:o, s:o}", "version", "1.0", "truncation", "padding",
                     "added_tokens", added, "normalizer", "pre_tokenizer", byte_level(o->add_prefix_space, 1),
                     "post_processor", byte_level(o->add_prefix_space, 0), "decoder",
                     byte_level(o->add_prefix_space, 1), "model", model);
}

static int check_options(const tok_train_options *o, llmopt_error *err) {
    if (o->vocab_size < 1) return error_set(err, LLMOPT_EINVAL, "tokenizer training: vocab_size %d < 1", o->vocab_size);
    if (o->min_frequency < 0)
        return error_set(err, LLMOPT_EINVAL, "tokenizer training: min_frequency %d < 0", o->min_frequency);
    if (o->n_specials && !o->specials) return error_set(err, LLMOPT_EINVAL, "tokenizer training: NULL specials");
    for (size_t k = 0; k < o->n_specials; k++) {
        const char *s = o->specials[k];
        if (!s || !*s) return error_set(err, LLMOPT_EINVAL, "tokenizer training: special token %zu is empty", k);
        if (!uni_valid((const unsigned char *)s, strlen(s)))
            return error_set(err, LLMOPT_EINVAL, "tokenizer training: special token %zu is not valid UTF-8", k);
        for (size_t j = 0; j < k; j++)
            if (strcmp(o->specials[j], s) == 0)
                return error_set(err, LLMOPT_EINVAL, "tokenizer training: special token '%.100s' given twice", s);
    }
    return 0;
}

static int dump(json_t *root, char **out, size_t *len, llmopt_error *err) {
    *out = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!*out) return error_set(err, LLMOPT_ENOMEM, "tokenizer training: out of memory writing JSON");
    *len = strlen(*out);
    return 0;
}

static void trainer_free(trainer *t) {
    tok_map_free(&t->words);
    free(t->wcount);
    free(t->sym);
    free(t->wstart);
    free(t->wlen);
    tok_buf_free(&t->text);
    free(t->toff);
    tok_map_free(&t->tok_ids);
    free(t->slot_key);
    free(t->slot_idx);
    free(t->pkey);
    free(t->pcount);
    free(t->upd_step);
    free(t->upd_list);
    free(t->touched);
    for (size_t i = 0; i < t->n_lists; i++) free(t->lists[i].w);
    free(t->lists);
    free(t->free_lists);
    free(t->heap);
    free(t->merges);
}

int tok_train_bpe(const char *text, size_t len, const tok_train_options *o, char **tokenizer_json_out, size_t *json_len,
                  llmopt_error *err) {
    if ((!text && len) || !o || !tokenizer_json_out || !json_len)
        return error_set(err, LLMOPT_EINVAL, "tok_train_bpe: NULL argument");
    *tokenizer_json_out = NULL;
    *json_len = 0;
    int rc = check_options(o, err);
    if (rc != 0) return rc;
    trainer t = {0};
    for (size_t k = 0; rc == 0 && k < o->n_specials; k++) {
        int32_t id;
        rc = add_token(&t, o->specials[k], strlen(o->specials[k]), &id);
    }
    if (rc == 0) rc = add_alphabet(&t);
    if (rc == 0) rc = count_words(&t, text, len, o);
    if (rc == 0) rc = split_words(&t);
    if (rc == 0) rc = count_pairs(&t);
    if (rc == 0) rc = merge_loop(&t, (size_t)o->vocab_size, o->min_frequency);
    if (rc == 0) rc = dump(tokenizer_json(&t, o), tokenizer_json_out, json_len, err);
    else rc = error_set(err, LLMOPT_ENOMEM, "tokenizer training: out of memory (%zu bytes of text)", len);
    trainer_free(&t);
    return rc;
}

int tok_train_config_json(const tok_train_options *o, int model_max_length, char **config_json, size_t *json_len,
                          llmopt_error *err) {
    if (!o || !config_json || !json_len) return error_set(err, LLMOPT_EINVAL, "tok_train_config_json: NULL argument");
    *config_json = NULL;
    *json_len = 0;
    if (model_max_length < 1)
        return error_set(err, LLMOPT_EINVAL, "tokenizer_config.json: model_max_length %d < 1", model_max_length);
    int rc = check_options(o, err);
    if (rc != 0) return rc;
    json_t *root = json_pack("{s:b, s:b, s:b}", "add_bos_token", 0, "add_prefix_space", o->add_prefix_space,
                             "clean_up_tokenization_spaces", 0);
    json_t *dec = json_object();
    int bad = !root || !dec;
    for (size_t k = 0; !bad && k < o->n_specials; k++) {
        char id[32];
        snprintf(id, sizeof id, "%zu", k);
        json_t *a = added_token(o->specials[k], k);
        bad = !a || json_object_del(a, "id") != 0 || json_object_set_new(dec, id, a) != 0;
    }
    if (!bad) bad = json_object_set_new(root, "added_tokens_decoder", dec) != 0;
    else json_decref(dec);
    for (size_t k = 0; !bad && k < 3 && o->n_specials; k++) {
        static const char *const names[] = {"bos_token", "eos_token", "unk_token"};
        bad = json_object_set_new(root, names[k], json_string(o->specials[0])) != 0;
    }
    if (!bad)
        bad = json_object_set_new(root, "model_max_length", json_integer(model_max_length)) != 0 ||
              json_object_set_new(root, "tokenizer_class", json_string("GPT2Tokenizer")) != 0;
    if (bad) {
        json_decref(root);
        root = NULL;
    }
    return dump(root, config_json, json_len, err);
}
