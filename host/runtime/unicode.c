/* UTF-8 decoding with U+FFFD for ill-formed bytes, and property lookups by binary search over
 * the generated range tables (ASCII answered without a search). */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

static int in_ranges(const uni_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

int uni_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(uni_letter_ranges, uni_letter_ranges_len, cp);
}

int uni_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(uni_number_ranges, uni_number_ranges_len, cp);
}

int uni_is_lower(uint32_t cp) {
    if (cp < 0x80) return cp >= 'a' && cp <= 'z';
    return in_ranges(uni_lower_ranges, uni_lower_ranges_len, cp);
}

int uni_is_upper(uint32_t cp) {
    if (cp < 0x80) return cp >= 'A' && cp <= 'Z';
    return in_ranges(uni_upper_ranges, uni_upper_ranges_len, cp);
}

int uni_is_mark(uint32_t cp) { return cp >= 0x300 && in_ranges(uni_mark_ranges, uni_mark_ranges_len, cp); }

int uni_is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

size_t uni_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, v = c & 0x07, min = 0x10000;
    else goto bad;
    if (len > n) goto bad;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) goto bad;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) goto bad;
    *cp = v;
    return len;
bad:
    *cp = UNI_REPLACEMENT;
    return 1;
}

size_t uni_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int uni_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = uni_decode(s + i, n - i, &cp);
        if (l == 1 && s[i] >= 0x80) return 0; /* ill-formed: decoded as U+FFFD */
        i += l;
    }
    return 1;
}

/* Length of the well-formed prefix of a sequence starting at s[0] (its "maximal subpart"):
 * the full length when the sequence is complete, else how many bytes could begin one. */
static size_t subpart(const unsigned char *s, size_t n, size_t *full) {
    unsigned c = s[0];
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) *full = 2;
    else if (c >= 0xE0 && c <= 0xEF) *full = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) *full = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return *full = 1, 0;
    size_t i = 1;
    for (; i < *full && i < n; i++) {
        unsigned b = s[i];
        if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) break;
    }
    return i;
}

char *uni_sanitize(const char *str, size_t n, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)str;
    char *out = malloc(3 * n + 1); /* each replaced byte grows to at most 3 */
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            out[k++] = (char)s[i++];
            continue;
        }
        size_t full = 0, good = subpart(s + i, n - i, &full);
        if (good == full) {
            memcpy(out + k, s + i, full);
            k += full, i += full;
        } else {
            memcpy(out + k, "\xEF\xBF\xBD", 3);
            k += 3, i += good ? good : 1;
        }
    }
    out[k] = '\0';
    if (out_len) *out_len = k;
    return out;
}
