/* Encoding and decoding with a loaded tokenizer.json, in the order of the `tokenizers` pipeline:
 * split on added tokens, normalize, pre-tokenize into words, BPE each word (cached per call),
 * post-process; decoding runs the decoder chain over the tokens' strings.
 *
 * Supported: model BPE (merges in both forms, unk_token, fuse_unk, byte_fallback, ignore_merges,
 * continuing_subword_prefix, end_of_word_suffix); normalizers Prepend, Replace (String), NFC, NFD,
 * Sequence;
 * pre-tokenizers ByteLevel (GPT-2 regex written out by hand), Split with Llama 3's, Qwen2's,
 * Mistral's (tekken) or GPT-4o's (o200k) regex (written out by hand too), Digits (SmolLM's and
 * StarCoder's), Metaspace, Sequence; decoders
 * ByteLevel, Metaspace, Replace (String), ByteFallback, Fuse, Strip, BPEDecoder, Sequence;
 * post-processors TemplateProcessing (single), Roberta/BertProcessing, ByteLevel, Sequence.
 * Not supported (refused at load): other models (Unigram, WordPiece, WordLevel), BPE dropout,
 * NFKC/NFKD and the other normalizers, Whitespace/Punctuation/... pre-tokenizers, other Split
 * patterns. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "unicode.h"

typedef struct span {
    size_t off, len;
} span;

/* Strings in one arena: the words of a pre-tokenizer step, or the tokens of a decoder step. */
typedef struct strs {
    tok_buf text;
    span *s;
    size_t n, cap;
} strs;

static int strs_push(strs *l, const char *p, size_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        span *g = realloc(l->s, cap * sizeof *g);
        if (!g) return LLMOPT_ENOMEM;
        l->s = g;
        l->cap = cap;
    }
    l->s[l->n] = (span){l->text.n, n};
    if (tok_buf_add(&l->text, p, n) != 0) return LLMOPT_ENOMEM;
    l->n++;
    return 0;
}

/* Appends to the last string (which must exist). */
static int strs_append(strs *l, const char *p, size_t n) {
    if (tok_buf_add(&l->text, p, n) != 0) return LLMOPT_ENOMEM;
    l->s[l->n - 1].len += n;
    return 0;
}

static void strs_clear(strs *l) {
    l->n = 0;
    l->text.n = 0;
}

static void strs_free(strs *l) {
    tok_buf_free(&l->text);
    free(l->s);
    memset(l, 0, sizeof *l);
}

#define STR_AT(l, i) ((l)->text.p + (l)->s[i].off)

/* ---- encoding ---- */

typedef struct sym {
    int32_t id; /* -1 once merged into its left neighbour */
    int prev, next;
} sym;

typedef struct merge_cand {
    uint32_t rank;
    int pos, right;
    int32_t a, b, id;
} merge_cand;

typedef struct enc_ctx {
    const tok_tokenizer *t;
    int32_t *ids;
    size_t n, cap;
    tok_map cache;   /* word -> (offset, count) in pool */
    int32_t *pool;
    size_t n_pool, cap_pool;
    tok_buf key, norm;
    strs words[2];
    sym *syms;
    size_t cap_syms;
    merge_cand *heap;
    size_t n_heap, cap_heap;
} enc_ctx;

static int push_id(enc_ctx *c, int32_t id) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        int32_t *g = realloc(c->ids, cap * sizeof *g);
        if (!g) return LLMOPT_ENOMEM;
        c->ids = g;
        c->cap = cap;
    }
    c->ids[c->n++] = id;
    return 0;
}

static int cand_less(const merge_cand *x, const merge_cand *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static int heap_push(enc_ctx *c, const tok_tokenizer *t, int pos, int right) {
    const tok_merge *m = tok_merges_get(&t->merges, c->syms[pos].id, c->syms[right].id);
    if (!m) return 0;
    if (c->n_heap == c->cap_heap) {
        size_t cap = c->cap_heap ? c->cap_heap * 2 : 64;
        merge_cand *g = realloc(c->heap, cap * sizeof *g);
        if (!g) return LLMOPT_ENOMEM;
        c->heap = g;
        c->cap_heap = cap;
    }
    merge_cand e = {m->rank, pos, right, c->syms[pos].id, c->syms[right].id, m->id};
    size_t i = c->n_heap++;
    while (i > 0 && cand_less(&e, &c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = e;
    return 0;
}

static merge_cand heap_pop(enc_ctx *c) {
    merge_cand top = c->heap[0], last = c->heap[--c->n_heap];
    size_t i = 0, n = c->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        const merge_cand *bv = &last;
        if (l < n && cand_less(&c->heap[l], bv)) best = l, bv = &c->heap[l];
        if (l + 1 < n && cand_less(&c->heap[l + 1], bv)) best = l + 1;
        if (best == i) break;
        c->heap[i] = c->heap[best];
        i = best;
    }
    if (n) c->heap[i] = last;
    return top;
}

static int add_sym(enc_ctx *c, size_t *n, int32_t id) {
    if (*n == c->cap_syms) {
        size_t cap = c->cap_syms ? c->cap_syms * 2 : 64;
        sym *g = realloc(c->syms, cap * sizeof *g);
        if (!g) return LLMOPT_ENOMEM;
        c->syms = g;
        c->cap_syms = cap;
    }
    c->syms[*n] = (sym){id, (int)*n - 1, (int)*n + 1};
    (*n)++;
    return 0;
}

/* BPE of one word (Sennrich et al. 2016, sec. 3.1, as tokenizers applies it): characters, with
 * the subword prefix/suffix, mapped to ids (or bytes, or unk), then the lowest-ranked adjacent
 * pair merged first, leftmost on ties, until no pair has a merge. Appends to c->ids. */
static int bpe_word(enc_ctx *c, const char *w, size_t n) {
    const tok_tokenizer *t = c->t;
    const tok_map_entry *e;
    if (t->ignore_merges && (e = tok_map_get(&t->vocab, w, n)) != NULL) return push_id(c, e->a);
    size_t ns = 0, np = t->cont_prefix ? strlen(t->cont_prefix) : 0, nx = t->eow_suffix ? strlen(t->eow_suffix) : 0;
    int last_unk = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = uni_decode((const unsigned char *)w + i, n - i, &cp);
        c->key.n = 0;
        if ((i > 0 && np && tok_buf_add(&c->key, t->cont_prefix, np) != 0) || tok_buf_add(&c->key, w + i, l) != 0 ||
            (i + l == n && nx && tok_buf_add(&c->key, t->eow_suffix, nx) != 0))
            return LLMOPT_ENOMEM;
        i += l;
        if ((e = tok_map_get(&t->vocab, c->key.p, c->key.n)) != NULL) {
            if (add_sym(c, &ns, e->a) != 0) return LLMOPT_ENOMEM;
            last_unk = 0;
            continue;
        }
        if (t->byte_fallback) {
            size_t k = 0;
            while (k < c->key.n && t->byte_ids[(unsigned char)c->key.p[k]] >= 0) k++;
            if (k == c->key.n) {
                for (k = 0; k < c->key.n; k++)
                    if (add_sym(c, &ns, t->byte_ids[(unsigned char)c->key.p[k]]) != 0) return LLMOPT_ENOMEM;
                last_unk = 0;
                continue;
            }
        }
        if (t->unk_id < 0) continue; /* tokenizers drops what it cannot name */
        if (t->fuse_unk && last_unk) continue;
        if (add_sym(c, &ns, t->unk_id) != 0) return LLMOPT_ENOMEM;
        last_unk = 1;
    }
    if (ns == 0) return 0;
    c->syms[ns - 1].next = -1;
    c->n_heap = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (heap_push(c, t, (int)i, (int)i + 1) != 0) return LLMOPT_ENOMEM;
    while (c->n_heap) {
        merge_cand m = heap_pop(c);
        sym *L = &c->syms[m.pos], *R = &c->syms[m.right];
        if (L->id != m.a || L->next != m.right || R->id != m.b) continue; /* stale */
        L->id = m.id;
        L->next = R->next;
        if (R->next >= 0) c->syms[R->next].prev = m.pos;
        R->id = -1;
        if (L->prev >= 0 && heap_push(c, t, L->prev, m.pos) != 0) return LLMOPT_ENOMEM;
        if (L->next >= 0 && heap_push(c, t, m.pos, L->next) != 0) return LLMOPT_ENOMEM;
    }
    for (int i = 0; i >= 0; i = c->syms[i].next)
        if (push_id(c, c->syms[i].id) != 0) return LLMOPT_ENOMEM;
    return 0;
}

#define TOK_CACHE_MAX_WORD 256

static int model_word(enc_ctx *c, const char *w, size_t n) {
    if (n == 0) return 0;
    if (n > TOK_CACHE_MAX_WORD) return bpe_word(c, w, n);
    const tok_map_entry *e = tok_map_get(&c->cache, w, n);
    if (e) {
        for (int32_t i = 0; i < e->b; i++)
            if (push_id(c, c->pool[e->a + i]) != 0) return LLMOPT_ENOMEM;
        return 0;
    }
    size_t before = c->n;
    if (bpe_word(c, w, n) != 0) return LLMOPT_ENOMEM;
    size_t k = c->n - before;
    if (c->n_pool + k > c->cap_pool) {
        size_t cap = c->cap_pool ? c->cap_pool : 1024;
        while (cap < c->n_pool + k) cap *= 2;
        int32_t *g = realloc(c->pool, cap * sizeof *g);
        if (!g) return LLMOPT_ENOMEM;
        c->pool = g;
        c->cap_pool = cap;
    }
    if (c->n_pool + k > INT32_MAX) return 0; /* cache full: keep encoding without it */
    if (k) memcpy(c->pool + c->n_pool, c->ids + before, k * sizeof *c->ids);
    if (tok_map_put(&c->cache, w, n, (int32_t)c->n_pool, (int32_t)k) != 0) return LLMOPT_ENOMEM;
    c->n_pool += k;
    return 0;
}

/* tok_gpt2_next (tokenizer_internal.h): the GPT-2 pre-tokenizer regex written out by hand.
 * Every character belongs to exactly one of \s, L, N or the rest, so a match starts at every i.
 * Ill-formed bytes count as U+FFFD (the rest). */
enum { CL_SPACE, CL_LETTER, CL_NUMBER, CL_OTHER };

static int char_class(uint32_t cp) {
    if (uni_is_space(cp)) return CL_SPACE;
    if (uni_is_letter(cp)) return CL_LETTER;
    if (uni_is_number(cp)) return CL_NUMBER;
    return CL_OTHER;
}

/* The end of the run of characters of class cls that starts at s[j]. */
static size_t class_run(const unsigned char *s, size_t n, size_t j, int cls) {
    uint32_t cp;
    for (size_t l; j < n; j += l) {
        l = uni_decode(s + j, n - j, &cp);
        if (char_class(cp) != cls) break;
    }
    return j;
}

size_t tok_gpt2_next(const unsigned char *s, size_t n, size_t i) {
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    }
    uint32_t cp;
    size_t j = i, l = uni_decode(s + i, n - i, &cp);
    int cls = char_class(cp);
    if (cp == ' ' && i + 1 < n) { /* " ?" before a letter, number or other run */
        uint32_t cp2;
        size_t l2 = uni_decode(s + i + 1, n - i - 1, &cp2);
        int cls2 = char_class(cp2);
        if (cls2 != CL_SPACE) {
            cls = cls2;
            j = i + 1;
            l = l2;
        }
    }
    if (cls != CL_SPACE) return class_run(s, n, j, cls);
    /* \s+(?!\S): the whitespace run, less its last character when a non-space follows and
     * the run is longer than one; else \s+ takes the single character */
    size_t last = i;
    for (j = i; j < n; j += l) {
        l = uni_decode(s + j, n - j, &cp);
        if (!uni_is_space(cp)) break;
        last = j;
    }
    if (j < n && last > i) return last;
    return j;
}

static int ascii_lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* tok_llama3_next (tokenizer_internal.h): the alternatives in order, each with the match the
 * regex's backtracking settles on:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)  case-insensitive, and U+017F (long s) folds to s
 *   [^\r\n\p{L}\p{N}]?\p{L}+     one character other than CR, LF, a letter or a number, then letters
 *   \p{N}{1,3}                   up to `digits` numbers
 *    ?[^\s\p{L}\p{N}]+[\r\n]*     an optional U+0020, the rest, then any CRs and LFs
 *   \s*[\r\n]+                   a whitespace run up to and with its last CR or LF
 *   \s+(?!\S)|\s+               a whitespace run, less its last character when a non-space
 *                               follows and it is longer than one */
/* The length of (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i], 0 if none: case-insensitive, and U+017F
 * (long s) folds to s. */
static size_t contraction_len(const unsigned char *s, size_t n, size_t i) {
    if (i + 1 >= n || s[i] != '\'') return 0;
    int a = ascii_lower(s[i + 1]), b = i + 2 < n ? ascii_lower(s[i + 2]) : 0;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return 3; /* 'ſ */
    return 0;
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ at s[i], a whitespace character: the run up to and with its last CR
 * or LF; else the run, less its last character when a non-space follows and it is longer than
 * one. */
static size_t space_run_end(const unsigned char *s, size_t n, size_t i) {
    uint32_t cp;
    size_t e, l, last = i, last_crlf = n;
    for (e = i; e < n; e += l) {
        l = uni_decode(s + e, n - e, &cp);
        if (!uni_is_space(cp)) break;
        if (cp == '\r' || cp == '\n') last_crlf = e;
        last = e;
    }
    if (last_crlf < n) return last_crlf + 1;
    if (e < n && last > i) return last;
    return e;
}

/* Up to `digits` numbers from s[j]. */
static size_t number_run(const unsigned char *s, size_t n, size_t j, int digits) {
    uint32_t cp;
    for (int k = 0; k < digits && j < n; k++) {
        size_t lj = uni_decode(s + j, n - j, &cp);
        if (char_class(cp) != CL_NUMBER) break;
        j += lj;
    }
    return j;
}

size_t tok_llama3_next(const unsigned char *s, size_t n, size_t i, int digits) {
    size_t c = contraction_len(s, n, i);
    if (c) return i + c;
    uint32_t cp, cp2 = 0;
    size_t l = uni_decode(s + i, n - i, &cp);
    int cls = char_class(cp), crlf = cp == '\r' || cp == '\n';
    if (cls == CL_LETTER) return class_run(s, n, i, CL_LETTER);
    int cls2 = -1;
    if (i + l < n) {
        uni_decode(s + i + l, n - i - l, &cp2);
        cls2 = char_class(cp2);
    }
    if (cls != CL_NUMBER && !crlf && cls2 == CL_LETTER) return class_run(s, n, i + l, CL_LETTER);
    if (cls == CL_NUMBER) return number_run(s, n, i, digits);
    if (cls == CL_OTHER || (cp == ' ' && cls2 == CL_OTHER)) {
        size_t j = class_run(s, n, cls == CL_OTHER ? i : i + l, CL_OTHER);
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    return space_run_end(s, n, i);
}

/* The two word classes of the case-aware patterns: A = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] (upper
 * case first), B = [\p{Ll}\p{Lm}\p{Lo}\p{M}] (lower case after). */
static int in_a(uint32_t cp) { return (uni_is_letter(cp) && !uni_is_lower(cp)) || uni_is_mark(cp); }
static int in_b(uint32_t cp) { return (uni_is_letter(cp) && !uni_is_upper(cp)) || uni_is_mark(cp); }

/* A*B+ from s[j] as backtracking settles it, 0 if it cannot match: greedy A*, then B+ at the first
 * place from the right that can start it: after the A run if a B follows, else the run's last
 * character that is also a B (Lm, Lo, M), which then ends the match. alt2: A+B* instead. */
static size_t cased_word(const unsigned char *s, size_t n, size_t j, int alt2) {
    uint32_t cp;
    size_t e = j, last_ab = 0, l; /* last_ab: the end of the run's last A that is also a B */
    for (; e < n; e += l) {
        l = uni_decode(s + e, n - e, &cp);
        if (!in_a(cp)) break;
        if (in_b(cp)) last_ab = e + l;
    }
    if (alt2 && e == j) return 0; /* A+ needs one */
    size_t b = e;
    for (; b < n; b += l) {
        l = uni_decode(s + b, n - b, &cp);
        if (!in_b(cp)) break;
    }
    return b > e || alt2 ? b : last_ab;
}

/* tok_cased_next (tokenizer_internal.h): the alternatives in order, each as the regex's
 * backtracking settles it:
 *   [^\r\n\p{L}\p{N}]?A*B+ (?i:'s|...)?   an optional character other than CR, LF, a letter or
 *                                        a number (first with it, then without), then a word
 *   [^\r\n\p{L}\p{N}]?A+B* (?i:'s|...)?   the same, a word of A first
 *   \p{N} or \p{N}{1,3}                    up to `digits` numbers
 *    ?[^\s\p{L}\p{N}]+[\r\n/]*             an optional U+0020, the rest, then CRs, LFs and slashes
 *   \s*[\r\n]+|\s+(?!\S)|\s+              as Llama 3's (space_run_end) */
size_t tok_cased_next(const unsigned char *s, size_t n, size_t i, int contractions, int digits) {
    uint32_t cp;
    size_t l = uni_decode(s + i, n - i, &cp);
    const int cls = char_class(cp), prefix = cp != '\r' && cp != '\n' && cls != CL_LETTER && cls != CL_NUMBER;
    size_t e = 0;
    for (int alt2 = 0; alt2 < 2 && !e; alt2++) {
        if (prefix && i + l < n) e = cased_word(s, n, i + l, alt2);
        if (!e) e = cased_word(s, n, i, alt2);
    }
    if (e) return contractions ? e + contraction_len(s, n, e) : e;
    if (cls == CL_NUMBER) return number_run(s, n, i, digits);
    size_t j = i;
    int other = cls == CL_OTHER;
    if (!other && cp == ' ' && i + 1 < n) {
        uint32_t cp2;
        uni_decode(s + i + 1, n - i - 1, &cp2);
        if (char_class(cp2) == CL_OTHER) other = 1, j = i + 1;
    }
    if (!other) return space_run_end(s, n, i);
    j = class_run(s, n, j, CL_OTHER);
    while (j < n && (s[j] == '\r' || s[j] == '\n' || s[j] == '/')) j++;
    return j;
}

static int pre_split(enc_ctx *c, const tok_pretok *p, const char *s, size_t n, strs *out) {
    (void)c;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t e = p->cased ? tok_cased_next(u, n, i, p->contractions, p->digits) : tok_llama3_next(u, n, i, p->digits);
        if (strs_push(out, s + i, e - i) != 0) return LLMOPT_ENOMEM;
        i = e;
    }
    return 0;
}

/* Digits: numbers (\p{N}, what Rust's char::is_numeric tests) isolated from the text around
 * them, each one alone (individual_digits) or in runs. */
static int pre_digits(const tok_pretok *p, const char *s, size_t n, strs *out) {
    const unsigned char *u = (const unsigned char *)s;
    size_t start = 0;
    int in_run = 0; /* the open piece is a run of numbers */
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = uni_decode(u + i, n - i, &cp);
        int num = uni_is_number(cp); /* an ill-formed byte decodes as U+FFFD, no number */
        if (num && (p->individual || !in_run)) {
            if (i > start && strs_push(out, s + start, i - start) != 0) return LLMOPT_ENOMEM;
            start = i;
        } else if (!num && in_run) {
            if (strs_push(out, s + start, i - start) != 0) return LLMOPT_ENOMEM;
            start = i;
        }
        in_run = num;
        i += l;
    }
    if (n > start && strs_push(out, s + start, n - start) != 0) return LLMOPT_ENOMEM;
    return 0;
}

static int push_mapped(const tok_tokenizer *t, strs *out, const unsigned char *s, size_t n) {
    if (strs_push(out, "", 0) != 0) return LLMOPT_ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (strs_append(out, t->bl_map[s[i]], t->bl_len[s[i]]) != 0) return LLMOPT_ENOMEM;
    return 0;
}

static int pre_bytelevel(enc_ctx *c, const tok_pretok *p, const char *s, size_t n, strs *out) {
    const tok_tokenizer *t = c->t;
    if (p->add_prefix_space && s[0] != ' ') {
        c->key.n = 0;
        if (tok_buf_add(&c->key, " ", 1) != 0 || tok_buf_add(&c->key, s, n) != 0) return LLMOPT_ENOMEM;
        s = c->key.p;
        n = c->key.n;
    }
    const unsigned char *u = (const unsigned char *)s;
    if (!p->use_regex) return push_mapped(t, out, u, n);
    for (size_t i = 0; i < n;) {
        size_t e = tok_gpt2_next(u, n, i);
        if (push_mapped(t, out, u + i, e - i) != 0) return LLMOPT_ENOMEM;
        i = e;
    }
    return 0;
}

static int pre_metaspace(enc_ctx *c, const tok_pretok *p, const char *s, size_t n, int at_start, strs *out) {
    const char *r = p->replacement;
    size_t nr = strlen(r);
    tok_buf *b = &c->key;
    b->n = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ' ' ? tok_buf_add(b, r, nr) != 0 : tok_buf_add(b, s + i, 1) != 0) return LLMOPT_ENOMEM;
    int starts = b->n >= nr && memcmp(b->p, r, nr) == 0;
    int prepend = !starts && (p->prepend_scheme == TOK_PREPEND_ALWAYS || (p->prepend_scheme == TOK_PREPEND_FIRST && at_start));
    if (!p->split) {
        if (strs_push(out, prepend ? r : "", prepend ? nr : 0) != 0) return LLMOPT_ENOMEM;
        return strs_append(out, b->p, b->n);
    }
    /* split with the replacement merged with the text after it */
    size_t start = 0;
    int open = 0;
    if (prepend) {
        if (strs_push(out, r, nr) != 0) return LLMOPT_ENOMEM;
        open = 1;
    }
    for (size_t i = 0; i <= b->n; i++) {
        int at_r = i + nr <= b->n && memcmp(b->p + i, r, nr) == 0;
        if (i < b->n && !at_r) continue;
        if (i > start) {
            if (open ? strs_append(out, b->p + start, i - start) != 0 : strs_push(out, b->p + start, i - start) != 0)
                return LLMOPT_ENOMEM;
        }
        if (i == b->n) break;
        if (strs_push(out, r, nr) != 0) return LLMOPT_ENOMEM;
        open = 1;
        start = i + nr;
        i += nr - 1;
    }
    return 0;
}

/* Pre-tokenizes s (a piece between added tokens, normalized) and encodes its words. */
static int encode_words(enc_ctx *c, const char *s, size_t n, int at_start) {
    const tok_tokenizer *t = c->t;
    if (n == 0) return 0;
    if (t->n_pres == 0) return model_word(c, s, n);
    strs *in = &c->words[0], *out = &c->words[1];
    strs_clear(in);
    if (strs_push(in, s, n) != 0) return LLMOPT_ENOMEM;
    for (size_t k = 0; k < t->n_pres; k++) {
        const tok_pretok *p = &t->pres[k];
        strs_clear(out);
        for (size_t i = 0; i < in->n; i++) {
            if (in->s[i].len == 0) continue;
            int rc = p->kind == TOK_PRE_BYTELEVEL ? pre_bytelevel(c, p, STR_AT(in, i), in->s[i].len, out)
                     : p->kind == TOK_PRE_SPLIT   ? pre_split(c, p, STR_AT(in, i), in->s[i].len, out)
                     : p->kind == TOK_PRE_DIGITS  ? pre_digits(p, STR_AT(in, i), in->s[i].len, out)
                                                  : pre_metaspace(c, p, STR_AT(in, i), in->s[i].len, at_start && i == 0, out);
            if (rc != 0) return rc;
        }
        strs *tmp = in;
        in = out;
        out = tmp;
    }
    for (size_t i = 0; i < in->n; i++)
        if (model_word(c, STR_AT(in, i), in->s[i].len) != 0) return LLMOPT_ENOMEM;
    return 0;
}

static size_t char_before(const char *s, size_t at, uint32_t *cp) {
    size_t b = at - 1;
    while (b > 0 && at - b < 4 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
    size_t l = uni_decode((const unsigned char *)s + b, at - b, cp);
    if (b + l != at) { /* not one whole character: take the last byte alone */
        b = at - 1;
        uni_decode((const unsigned char *)s + b, 1, cp);
    }
    return b;
}

static int is_word_char(uint32_t cp) { return cp == '_' || uni_is_letter(cp) || uni_is_number(cp); }

/* The next added token (of the given normalized flag) at or after from: leftmost, longest at
 * that position; its span widened by lstrip/rstrip. Returns 1 and sets [*ms, *me) and *id. */
static int find_added(const tok_tokenizer *t, const char *s, size_t n, size_t from, int normalized, size_t *ms,
                      size_t *me, int32_t *id) {
    for (size_t i = from; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        for (uint32_t k = t->first[b]; k < t->first[b + 1]; k++) {
            const tok_added *a = &t->added[k];
            if (a->normalized != normalized || a->len > n - i || memcmp(s + i, a->content, a->len) != 0) continue;
            size_t st = i, en = i + a->len;
            uint32_t cp;
            if (a->single_word) {
                int before = st > 0 && (char_before(s, st, &cp), is_word_char(cp));
                int after = en < n && (uni_decode((const unsigned char *)s + en, n - en, &cp), is_word_char(cp));
                if (before || after) { /* not a match; the search goes on after it */
                    i = en - 1;
                    break;
                }
            }
            if (a->lstrip)
                while (st > from) {
                    size_t p = char_before(s, st, &cp);
                    if (!uni_is_space(cp)) break;
                    st = p;
                }
            if (a->rstrip)
                while (en < n) {
                    size_t l = uni_decode((const unsigned char *)s + en, n - en, &cp);
                    if (!uni_is_space(cp)) break;
                    en += l;
                }
            *ms = st;
            *me = en;
            *id = a->id;
            return 1;
        }
    }
    return 0;
}

static int normalize(const tok_tokenizer *t, const char *s, size_t n, tok_buf *out) {
    tok_buf tmp = {0};
    out->n = 0;
    if (tok_buf_add(out, s, n) != 0) return LLMOPT_ENOMEM;
    for (size_t k = 0; k < t->n_norms; k++) {
        const tok_normalizer *nm = &t->norms[k];
        if (out->n == 0) break;
        tmp.n = 0;
        if (nm->kind == TOK_NORM_PREPEND) {
            if (tok_buf_add(&tmp, nm->a, strlen(nm->a)) != 0 || tok_buf_add(&tmp, out->p, out->n) != 0) goto oom;
        } else if (nm->kind == TOK_NORM_NFC || nm->kind == TOK_NORM_NFD) {
            if (uni_normalized_quick(out->p, out->n, nm->kind == TOK_NORM_NFC)) continue; /* out stays */
            char *u;
            size_t un;
            if (uni_normalize(out->p, out->n, nm->kind == TOK_NORM_NFC, &u, &un) != 0) goto oom;
            int rc = tok_buf_add(&tmp, u, un);
            free(u);
            if (rc != 0) goto oom;
        } else {
            size_t np = strlen(nm->a), nc = strlen(nm->b);
            for (size_t i = 0; i < out->n;) {
                if (i + np <= out->n && memcmp(out->p + i, nm->a, np) == 0) {
                    if (tok_buf_add(&tmp, nm->b, nc) != 0) goto oom;
                    i += np;
                } else {
                    if (tok_buf_add(&tmp, out->p + i, 1) != 0) goto oom;
                    i++;
                }
            }
        }
        tok_buf swap = *out;
        *out = tmp;
        tmp = swap;
    }
    tok_buf_free(&tmp);
    return 0;
oom:
    tok_buf_free(&tmp);
    return LLMOPT_ENOMEM;
}

/* A piece of the input between non-normalized added tokens. */
static int encode_piece(enc_ctx *c, const char *s, size_t n, int at_start) {
    const tok_tokenizer *t = c->t;
    if (n == 0) return 0;
    const char *p = s;
    size_t np = n;
    if (t->n_norms) {
        if (normalize(t, s, n, &c->norm) != 0) return LLMOPT_ENOMEM;
        p = c->norm.p;
        np = c->norm.n;
    }
    if (!t->has_normalized_added) return encode_words(c, p, np, at_start);
    /* normalized added tokens are matched in the normalized text; c->norm is not reused below */
    tok_buf copy = {0};
    if (tok_buf_add(&copy, p, np) != 0) return LLMOPT_ENOMEM;
    size_t from = 0, ms, me;
    int32_t id;
    int rc = 0;
    while (rc == 0 && find_added(t, copy.p, np, from, 1, &ms, &me, &id)) {
        rc = encode_words(c, copy.p + from, ms - from, at_start && from == 0);
        if (rc == 0) rc = push_id(c, id);
        from = me;
    }
    if (rc == 0) rc = encode_words(c, copy.p + from, np - from, at_start && from == 0);
    tok_buf_free(&copy);
    return rc;
}

/* Copies s with each ill-formed UTF-8 byte replaced by U+FFFD. */
static void enc_free(enc_ctx *c) {
    tok_map_free(&c->cache);
    free(c->pool);
    tok_buf_free(&c->key);
    tok_buf_free(&c->norm);
    strs_free(&c->words[0]);
    strs_free(&c->words[1]);
    free(c->syms);
    free(c->heap);
    free(c->ids);
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, size_t *n,
               llmopt_error *err) {
    if (!t || (!text && len) || !ids || !n) return error_set(err, LLMOPT_EINVAL, "tok_encode: NULL argument");
    *ids = NULL;
    *n = 0;
    enc_ctx c = {.t = t};
    char *clean = NULL;
    int rc = 0;
    /* ill-formed UTF-8: U+FFFD for each maximal ill-formed subpart, the text Python's and Rust's
     * lossy decoding give the tokenizers library (byte-level tokenizers keep the bytes) */
    if (!t->byte_level && !uni_valid((const unsigned char *)text, len)) {
        size_t clean_len = 0;
        if (!(clean = uni_sanitize(text, len, &clean_len))) {
            rc = LLMOPT_ENOMEM;
            goto done;
        }
        text = clean;
        len = clean_len;
    }
    size_t from = 0, ms, me;
    int32_t id;
    while (find_added(t, text, len, from, 0, &ms, &me, &id)) {
        if ((rc = encode_piece(&c, text + from, ms - from, from == 0)) != 0 || (rc = push_id(&c, id)) != 0) goto done;
        from = me;
    }
    if ((rc = encode_piece(&c, text + from, len - from, from == 0)) != 0) goto done;
    for (size_t k = 0; add_special && k < t->n_posts; k++) {
        const tok_post *p = &t->posts[k];
        size_t total = p->n_pre + c.n + p->n_post;
        int32_t *g = malloc((total + 1) * sizeof *g);
        if (!g) {
            rc = LLMOPT_ENOMEM;
            goto done;
        }
        if (p->n_pre) memcpy(g, p->pre, p->n_pre * sizeof *g);
        if (c.n) memcpy(g + p->n_pre, c.ids, c.n * sizeof *g);
        if (p->n_post) memcpy(g + p->n_pre + c.n, p->post, p->n_post * sizeof *g);
        free(c.ids);
        c.ids = g;
        c.n = c.cap = total;
    }
    if (!c.ids && !(c.ids = malloc(sizeof *c.ids))) rc = LLMOPT_ENOMEM;
done:
    free(clean);
    if (rc == 0) {
        *ids = c.ids;
        *n = c.n;
        c.ids = NULL;
    }
    enc_free(&c);
    if (rc != 0) return error_set(err, rc, "tokenizer %s: out of memory while encoding %zu bytes", t->path, len);
    return 0;
}

/* ---- decoding ---- */

static int dec_bytelevel(const tok_tokenizer *t, const strs *in, strs *out) {
    /* every token's characters map back to bytes; a token with a character outside the byte
     * alphabet (an added token like "▁x") contributes its own UTF-8 bytes. One string out. */
    if (strs_push(out, "", 0) != 0) return LLMOPT_ENOMEM;
    for (size_t i = 0; i < in->n; i++) {
        const unsigned char *s = (const unsigned char *)STR_AT(in, i);
        size_t n = in->s[i].len, mark = out->text.n, j;
        for (j = 0; j < n;) {
            uint32_t cp;
            size_t l = uni_decode(s + j, n - j, &cp);
            if (cp >= 324 || t->bl_rev[cp] < 0 || (l == 1 && s[j] >= 0x80)) break;
            char byte = (char)t->bl_rev[cp];
            if (strs_append(out, &byte, 1) != 0) return LLMOPT_ENOMEM;
            j += l;
        }
        if (j < n) {
            out->text.n = mark;
            out->s[0].len = mark - out->s[0].off;
            if (strs_append(out, (const char *)s, n) != 0) return LLMOPT_ENOMEM;
        }
    }
    return 0;
}

static int replace_into(strs *out, const char *s, size_t n, const char *pat, const char *with, size_t skip_first) {
    size_t np = strlen(pat), nw = strlen(with);
    if (strs_push(out, "", 0) != 0) return LLMOPT_ENOMEM;
    for (size_t i = 0; i < n;) {
        if (i + np <= n && memcmp(s + i, pat, np) == 0) {
            if (i >= skip_first && strs_append(out, with, nw) != 0) return LLMOPT_ENOMEM;
            i += np;
        } else {
            if (strs_append(out, s + i, 1) != 0) return LLMOPT_ENOMEM;
            i++;
        }
    }
    return 0;
}

static int parse_byte_token(const char *s, size_t n, unsigned char *b) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return 0;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = s[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') v |= (unsigned)(ch - 'A' + 10);
        else return 0;
    }
    *b = (unsigned char)v;
    return 1;
}

/* Pending <0xXX> bytes: one string when they form valid UTF-8, else one U+FFFD per byte. */
static int flush_bytes(strs *out, tok_buf *bytes) {
    if (!bytes->n) return 0;
    int rc = 0;
    if (uni_valid((const unsigned char *)bytes->p, bytes->n)) rc = strs_push(out, bytes->p, bytes->n);
    else
        for (size_t i = 0; rc == 0 && i < bytes->n; i++) rc = strs_push(out, "\xEF\xBF\xBD", 3);
    bytes->n = 0;
    return rc;
}

static int dec_step(const tok_tokenizer *t, const tok_decoder *d, const strs *in, strs *out) {
    switch (d->kind) {
    case TOK_DEC_BYTELEVEL:
        return dec_bytelevel(t, in, out);
    case TOK_DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++)
            if (replace_into(out, STR_AT(in, i), in->s[i].len, d->a, d->b, 0) != 0) return LLMOPT_ENOMEM;
        return 0;
    case TOK_DEC_METASPACE:
        /* the first token loses every replacement character (tokenizers' rule) unless
         * prepend_scheme is "never"; elsewhere each becomes a space */
        for (size_t i = 0; i < in->n; i++) {
            int drop = i == 0 && d->prepend_scheme != TOK_PREPEND_NEVER;
            if (replace_into(out, STR_AT(in, i), in->s[i].len, d->a, " ", drop ? (size_t)-1 : 0) != 0)
                return LLMOPT_ENOMEM;
        }
        return 0;
    case TOK_DEC_BYTEFALLBACK: {
        tok_buf bytes = {0};
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < in->n; i++) {
            unsigned char b;
            if (parse_byte_token(STR_AT(in, i), in->s[i].len, &b)) rc = tok_buf_add(&bytes, &b, 1);
            else if ((rc = flush_bytes(out, &bytes)) == 0) rc = strs_push(out, STR_AT(in, i), in->s[i].len);
        }
        if (rc == 0) rc = flush_bytes(out, &bytes);
        tok_buf_free(&bytes);
        return rc;
    }
    case TOK_DEC_FUSE:
        if (strs_push(out, in->text.p ? in->text.p : "", in->text.n) != 0) return LLMOPT_ENOMEM;
        return 0;
    case TOK_DEC_STRIP: {
        size_t nc = strlen(d->a);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = STR_AT(in, i);
            size_t a = 0, b = in->s[i].len;
            for (int k = 0; k < d->start && a + nc <= b && memcmp(s + a, d->a, nc) == 0; k++) a += nc;
            for (int k = 0; k < d->stop && b >= a + nc && memcmp(s + b - nc, d->a, nc) == 0; k++) b -= nc;
            if (strs_push(out, s + a, b - a) != 0) return LLMOPT_ENOMEM;
        }
        return 0;
    }
    case TOK_DEC_BPE:
        for (size_t i = 0; i < in->n; i++)
            if (replace_into(out, STR_AT(in, i), in->s[i].len, d->a, i + 1 == in->n ? "" : " ", 0) != 0)
                return LLMOPT_ENOMEM;
        return 0;
    default:
        return LLMOPT_EINVAL;
    }
}

int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text, size_t *len,
               llmopt_error *err) {
    if (!t || (!ids && n) || !text || !len) return error_set(err, LLMOPT_EINVAL, "tok_decode: NULL argument");
    *text = NULL;
    *len = 0;
    strs a = {0}, b = {0}, *in = &a, *out = &b;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= t->n_ids || !t->tokens[id]) {
            strs_free(&a);
            return error_set(err, LLMOPT_EINVAL, "tok_decode: id %d (position %zu) is not in the vocabulary of %zu",
                             (int)id, i, t->n_ids);
        }
        if (skip_special && t->is_special[id]) continue;
        if ((rc = strs_push(in, t->tokens[id], t->token_len[id])) != 0) goto done;
    }
    if (!t->has_decoder) { /* tokenizers joins the tokens with spaces */
        if ((rc = strs_push(out, "", 0)) != 0) goto done;
        for (size_t i = 0; i < in->n; i++)
            if ((i && (rc = strs_append(out, " ", 1)) != 0) || (rc = strs_append(out, STR_AT(in, i), in->s[i].len)) != 0)
                goto done;
        strs *tmp = in;
        in = out;
        out = tmp;
    }
    for (size_t k = 0; k < t->n_decs; k++) {
        strs_clear(out);
        if ((rc = dec_step(t, &t->decs[k], in, out)) != 0) goto done;
        strs *tmp = in;
        in = out;
        out = tmp;
    }
    /* the tokens' strings, concatenated */
    tok_buf res = {0};
    if ((rc = tok_buf_add(&res, "", 0)) != 0) goto done;
    for (size_t i = 0; i < in->n; i++)
        if ((rc = tok_buf_add(&res, STR_AT(in, i), in->s[i].len)) != 0) {
            tok_buf_free(&res);
            goto done;
        }
    *text = res.p;
    *len = res.n;
done:
    strs_free(&a);
    strs_free(&b);
    if (rc != 0) return error_set(err, LLMOPT_ENOMEM, "tok_decode: out of memory");
    return 0;
}

/* ---- accessors ---- */

size_t tok_vocab_size(const tok_tokenizer *t) { return t ? t->n_ids : 0; }
int32_t tok_bos(const tok_tokenizer *t) { return t ? t->bos : -1; }
int32_t tok_eos(const tok_tokenizer *t) { return t ? t->eos : -1; }
int tok_add_bos(const tok_tokenizer *t) { return t ? t->add_bos : 0; }
int tok_add_eos(const tok_tokenizer *t) { return t ? t->add_eos : 0; }
const char *tok_chat_template(const tok_tokenizer *t) { return t ? t->chat_template : NULL; }

const int32_t *tok_eos_ids(const tok_tokenizer *t, size_t *n) {
    *n = t ? t->n_eos_ids : 0;
    return t ? t->eos_ids : NULL;
}

const char *tok_token(const tok_tokenizer *t, int32_t id) {
    if (!t || id < 0 || (size_t)id >= t->n_ids) return NULL;
    return t->tokens[id];
}

int32_t tok_token_id(const tok_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    const tok_map_entry *e = tok_map_get(&t->added_map, token, n);
    if (!e) e = tok_map_get(&t->vocab, token, n);
    return e ? e->a : -1;
}

int tok_is_special(const tok_tokenizer *t, int32_t id) {
    return t && id >= 0 && (size_t)id < t->n_ids && t->is_special[id];
}
