/* Unicode normalization forms NFD and NFC (UAX #15): decompose every code point fully
 * (canonical decompositions from the generated tables, Hangul syllables by arithmetic), put each
 * run of non-starters in canonical order (a stable sort by combining class), and for NFC compose
 * each starter with the following characters it is not blocked from. */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

/* Hangul syllable arithmetic (Unicode chapter 3.12) */
enum {
    H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7,
    H_LCOUNT = 19, H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = H_VCOUNT * H_TCOUNT, H_SCOUNT = H_LCOUNT * H_NCOUNT
};
/* an ill-formed input byte, carried through as itself */
#define RAW_BYTE 0x80000000u

typedef struct cp_buf {
    uint32_t *p;
    size_t n, cap;
} cp_buf;

static int push(cp_buf *b, uint32_t cp) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        uint32_t *g = realloc(b->p, cap * sizeof *g);
        if (!g) return -1;
        b->p = g;
        b->cap = cap;
    }
    b->p[b->n++] = cp;
    return 0;
}

unsigned uni_ccc(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = uni_ccc_ranges_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < uni_ccc_ranges[mid].lo) hi = mid;
        else if (cp > uni_ccc_ranges[mid].hi) lo = mid + 1;
        else return uni_ccc_ranges[mid].ccc;
    }
    return 0;
}

static const uni_pair_map *find_decomp(uint32_t cp) {
    if (cp < 0xC0) return NULL;
    size_t lo = 0, hi = uni_decomp_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < uni_decomp[mid].a) hi = mid;
        else if (cp > uni_decomp[mid].a) lo = mid + 1;
        else return &uni_decomp[mid];
    }
    return NULL;
}

static int decompose(cp_buf *b, uint32_t cp) {
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t s = cp - H_SBASE, t = s % H_TCOUNT;
        if (push(b, H_LBASE + s / H_NCOUNT) != 0 || push(b, H_VBASE + (s % H_NCOUNT) / H_TCOUNT) != 0) return -1;
        return t ? push(b, H_TBASE + t) : 0;
    }
    const uni_pair_map *d = find_decomp(cp);
    if (!d) return push(b, cp);
    if (decompose(b, d->b) != 0) return -1;
    return d->c ? decompose(b, d->c) : 0;
}

/* The primary composite of a and b, or 0. */
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = uni_comp_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uni_pair_map *m = &uni_comp[mid];
        if (a < m->a || (a == m->a && b < m->b)) hi = mid;
        else if (a > m->a || b > m->b) lo = mid + 1;
        else return m->c;
    }
    return 0;
}

/* Canonical ordering: a stable insertion sort of each run of non-starters by class. */
static void reorder(uint32_t *p, size_t n) {
    for (size_t i = 1; i < n; i++) {
        unsigned c = uni_ccc(p[i]);
        if (c == 0) continue;
        uint32_t v = p[i];
        size_t j = i;
        while (j > 0) {
            unsigned cj = uni_ccc(p[j - 1]);
            if (cj <= c) break; /* a starter (0) or a class not above ours stops the move */
            p[j] = p[j - 1];
            j--;
        }
        p[j] = v;
    }
}

/* Canonical composition in place; returns the new length. A character composes with the last
 * starter when nothing between them blocks it: everything between has a lower non-zero class,
 * or nothing is between. */
static size_t compose(uint32_t *p, size_t n) {
    if (n == 0) return 0;
    size_t starter = 0, out = 1;
    unsigned last = uni_ccc(p[0]);
    if (last != 0) last = 256; /* a leading non-starter has no starter to compose with */
    for (size_t i = 1; i < n; i++) {
        uint32_t ch = p[i];
        unsigned cc = uni_ccc(ch);
        uint32_t c = last == 256 ? 0 : compose_pair(p[starter], ch);
        if (c && (last < cc || last == 0)) {
            p[starter] = c;
            continue;
        }
        if (cc == 0) starter = out;
        last = cc == 0 ? 0 : (last == 256 ? 256 : cc);
        p[out++] = ch;
    }
    return out;
}

int uni_normalized_quick(const char *str, size_t n, int compose) {
    const unsigned char *s = (const unsigned char *)str;
    /* below U+0300 nothing composes or reorders, below U+00C0 nothing decomposes: lead bytes under
     * 0xCC (NFC) or 0xC3 (NFD) leave the text as it is */
    const unsigned limit = compose ? 0xCC : 0xC3;
    for (size_t i = 0; i < n; i++)
        if (s[i] >= limit) return 0;
    return 1;
}

int uni_normalize(const char *str, size_t n, int compose_too, char **out, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)str;
    *out = NULL;
    size_t i;
    if (uni_normalized_quick(str, n, compose_too)) {
        char *copy = malloc(n + 1);
        if (!copy) return -1;
        memcpy(copy, s, n);
        copy[n] = '\0';
        *out = copy;
        if (out_len) *out_len = n;
        return 0;
    }
    cp_buf b = {0};
    for (i = 0; i < n;) {
        uint32_t cp;
        size_t l = uni_decode(s + i, n - i, &cp);
        int rc = (l == 1 && s[i] >= 0x80) ? push(&b, RAW_BYTE | s[i]) : decompose(&b, cp);
        if (rc != 0) goto oom;
        i += l;
    }
    reorder(b.p, b.n);
    size_t m = compose_too ? compose(b.p, b.n) : b.n;
    char *o = malloc(4 * m + 1);
    if (!o) goto oom;
    size_t k = 0;
    for (size_t j = 0; j < m; j++) {
        if (b.p[j] & RAW_BYTE) o[k++] = (char)(b.p[j] & 0xFF);
        else k += uni_encode(b.p[j], o + k);
    }
    o[k] = '\0';
    free(b.p);
    *out = o;
    if (out_len) *out_len = k;
    return 0;
oom:
    free(b.p);
    return -1;
}
