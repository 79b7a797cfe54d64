/* A bounded interpreter for the Jinja2 subset of Hugging Face chat templates (see chat_template.h).
 * Pipeline: lex the template into tokens (applying whitespace control as Jinja's lexer does),
 * parse into a statement tree with expression trees, then walk it. All memory comes from one
 * arena freed at the end, so errors unwind with longjmp (as Lua does) and never leak.
 *
 * Supported: text, {{ }}, {% if/elif/else/endif %}, {% for x in e %}...{% else %}...{% endfor %}
 * with loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem, {% set x = e %}
 * and {% set ns.attr = e %} (a set inside a loop body stays in that iteration, as in Jinja2),
 * {% break %}, {% continue %}, comments, -/+ whitespace control, trim_blocks, lstrip_blocks.
 * Expressions: string/int/bool/none literals, list literals, names, .attr, [item], [a:b:c],
 * a if c else b, + - * // % ~, comparisons (chained), in / not in, and/or/not, filters (trim,
 * length, count, upper, lower, default/d, string, list, first, last, join, tojson), tests
 * (defined, undefined, none, string, number, integer, boolean, mapping, sequence, iterable,
 * true, false, even, odd), string methods (strip, lstrip, rstrip, startswith, endswith, upper,
 * lower, replace), dict .get, and the functions raise_exception, range, namespace, strftime_now
 * (the local time, as transformers' datetime.now().strftime; the C library's format codes).
 * Not supported (LLMOPT_EUNSUPPORTED): floats and '/', dict literals, tuples and unpacking,
 * macros, call/filter blocks, {% set %}...{% endset %}, raw, include/import/extends, loop
 * filters ("for x in y if c"), recursive loops, loop.cycle. upper/lower change
 * ASCII letters only. */
#define _POSIX_C_SOURCE 200809L /* localtime_r */
#include "chat_template.h"

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "unicode.h"

/* Bounds: a step is one statement run or one loop iteration. Memory and output scale with the
 * input so long conversations fit, and a runaway template stops well before the machine does. */
#define CHAT_MAX_STEPS 10000000u
#define CHAT_MAX_RANGE 1000000
#define CHAT_MAX_DEPTH 200
#define CHAT_MAX_EVAL_DEPTH 2000
#define CHAT_MEM_BASE ((size_t)128 << 20)
#define CHAT_OUT_BASE ((size_t)32 << 20)

/* ---- arena ---- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[];
} arena_block;

/* ---- values ---- */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_STR, V_LIST, V_DICT, V_LOOP, V_FUNC } vtype; /* V_FUNC: a global function, u.s its name */

typedef struct value value;
typedef struct vlist vlist;
typedef struct vdict vdict;
typedef struct loopstate loopstate;

struct value {
    vtype t;
    union {
        int b;
        int64_t i;
        struct { const char *p; size_t n; } s;
        vlist *l;
        vdict *d;
        loopstate *loop;
    } u;
};

struct vlist { size_t n; value *v; };
struct vdict { size_t n, cap; const char **k; value *v; }; /* small: linear lookup */
struct loopstate { const vlist *items; size_t i; };

/* ---- tokens ---- */

typedef enum { T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STR, T_INT, T_OP, T_EOF } ttype;

typedef struct token {
    ttype t;
    size_t pos;      /* byte offset in the (newline-normalised) template */
    const char *s;   /* T_TEXT, T_NAME, T_STR (decoded), T_OP */
    size_t n;
    int64_t i;       /* T_INT */
} token;

/* ---- expressions and statements ---- */

typedef enum {
    E_LIT, E_NAME, E_LIST, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_METHOD, E_FILTER, E_TEST,
    E_NOT, E_NEG, E_BIN, E_AND, E_OR, E_COND, E_CMP
} ekind;

typedef struct expr expr;
struct expr {
    ekind k;
    size_t pos;
    const char *name;   /* E_NAME, E_ATTR, E_CALL, E_METHOD, E_FILTER, E_TEST; E_BIN/E_CMP op */
    value lit;          /* E_LIT */
    expr *a, *b, *c;    /* operands; E_SLICE: a[b:c:d] with d in args[0] */
    size_t nargs;       /* E_LIST items, call/filter/test arguments, E_CMP operands */
    expr **args;
    const char **kw;    /* keyword names of args (NULL entries for positional), or NULL */
    const char **ops;   /* E_CMP: nargs - 1 operators */
    int negate;         /* E_TEST: "is not" */
};

typedef enum { N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_BREAK, N_CONTINUE } nkind;

typedef struct node node;
typedef struct body { size_t n; node **v; } body;
struct node {
    nkind k;
    size_t pos;
    const char *s;      /* N_TEXT text; N_FOR loop variable; N_SET name */
    size_t n;
    const char *attr;   /* N_SET ns.attr */
    expr *e;            /* N_OUT, N_FOR iterable, N_SET value */
    size_t nconds;      /* N_IF: conds[i] guards bodies[i]; els is the else body */
    expr **conds;
    body *bodies;
    body b, els;        /* N_FOR body and else body */
};

/* ---- interpreter state ---- */

typedef struct frame {
    struct frame *parent;
    vdict vars;
} frame;

typedef struct ctx {
    jmp_buf jb;
    llmopt_error *err;
    const char *src;
    size_t srclen;
    arena_block *arena;
    size_t mem, mem_cap;
    token *tok;
    size_t ntok, itok, tokcap;
    char *out;
    size_t outlen, outcap, out_max;
    uint64_t steps;
    int depth;
    int edepth;
    int brk, cont; /* a break/continue is unwinding to its loop */
} ctx;

/* ---- errors ---- */

static void where(const ctx *c, size_t pos, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos && i < c->srclen; i++) {
        if (c->src[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)c->src[i] & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

/* Sets the error "<message> (template line L, column C)" and unwinds to chat_render. */
static _Noreturn void fail(ctx *c, int status, size_t pos, const char *fmt, ...) LLMOPT_PRINTF(4, 5);
static _Noreturn void fail(ctx *c, int status, size_t pos, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    where(c, pos, &line, &col);
    error_set(c->err, status, "chat template: %s (template line %d, column %d)", msg, line, col);
    longjmp(c->jb, 1);
}

/* ---- arena ---- */

static void *alloc(ctx *c, size_t n) {
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0) n = sizeof(max_align_t);
    arena_block *b = c->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ((size_t)64 << 10) ? n : ((size_t)64 << 10);
        if (c->mem + cap > c->mem_cap)
            fail(c, LLMOPT_EFAIL, 0, "rendering needs more than %zu MiB of memory", c->mem_cap >> 20);
        b = malloc(sizeof *b + cap);
        if (!b) {
            error_set(c->err, LLMOPT_ENOMEM, "chat template: out of memory");
            longjmp(c->jb, 1);
        }
        b->next = c->arena;
        b->used = 0;
        b->cap = cap;
        c->arena = b;
        c->mem += cap;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    return p;
}

static char *strndup_arena(ctx *c, const char *s, size_t n) {
    char *p = alloc(c, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ---- values ---- */

static value v_undef(void) { value v = {.t = V_UNDEF}; return v; }
static value v_none(void) { value v = {.t = V_NONE}; return v; }
static value v_bool(int b) { value v = {.t = V_BOOL}; v.u.b = !!b; return v; }
static value v_int(int64_t i) { value v = {.t = V_INT}; v.u.i = i; return v; }
static value v_str(const char *p, size_t n) { value v = {.t = V_STR}; v.u.s.p = p; v.u.s.n = n; return v; }
static value v_cstr(const char *p) { return v_str(p, strlen(p)); }

static const char *type_name(value v) {
    static const char *names[] = {"undefined", "NoneType", "bool", "int", "str", "list", "dict", "LoopContext",
                                  "builtin_function_or_method"};
    return names[v.t];
}

static value *dict_find(vdict *d, const char *k, size_t kn) {
    for (size_t i = 0; i < d->n; i++)
        if (strlen(d->k[i]) == kn && memcmp(d->k[i], k, kn) == 0) return &d->v[i];
    return NULL;
}

static void dict_put(ctx *c, vdict *d, const char *k, value v) {
    value *slot = dict_find(d, k, strlen(k));
    if (slot) {
        *slot = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 4;
        const char **nk = alloc(c, cap * sizeof *nk);
        value *nv = alloc(c, cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

/* Python's str.isspace. */
static int is_py_space(uint32_t cp) { return uni_is_space(cp) || (cp >= 0x1C && cp <= 0x1F); }

static int truthy(value v) {
    switch (v.t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_STR: return v.u.s.n != 0;
    case V_LIST: return v.u.l->n != 0;
    case V_DICT: return v.u.d->n != 0;
    case V_LOOP: case V_FUNC: return 1;
    }
    return 0;
}

/* A growable string in the arena. */
typedef struct sbuf { char *p; size_t n, cap; } sbuf;

static void sb_put(ctx *c, sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = alloc(c, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sb_puts(ctx *c, sbuf *b, const char *s) { sb_put(c, b, s, strlen(s)); }

static void repr_str(ctx *c, sbuf *b, const char *s, size_t n) {
    /* Python's repr: single quotes unless the text has ' and no " */
    char q = (memchr(s, '\'', n) && !memchr(s, '"', n)) ? '"' : '\'';
    sb_put(c, b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (ch == '\\' || ch == (unsigned char)q) { tmp[0] = '\\'; tmp[1] = (char)ch; sb_put(c, b, tmp, 2); }
        else if (ch == '\n') sb_puts(c, b, "\\n");
        else if (ch == '\r') sb_puts(c, b, "\\r");
        else if (ch == '\t') sb_puts(c, b, "\\t");
        else if (ch < 0x20 || ch == 0x7F) { snprintf(tmp, sizeof tmp, "\\x%02x", ch); sb_puts(c, b, tmp); }
        else sb_put(c, b, (const char *)&s[i], 1);
    }
    sb_put(c, b, &q, 1);
}

static void to_str_into(ctx *c, sbuf *b, value v, int repr);

static void to_str_into(ctx *c, sbuf *b, value v, int repr) {
    char tmp[32];
    switch (v.t) {
    case V_UNDEF: break;
    case V_NONE: sb_puts(c, b, "None"); break;
    case V_BOOL: sb_puts(c, b, v.u.b ? "True" : "False"); break;
    case V_INT: snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i); sb_puts(c, b, tmp); break;
    case V_STR:
        if (repr) repr_str(c, b, v.u.s.p, v.u.s.n);
        else sb_put(c, b, v.u.s.p, v.u.s.n);
        break;
    case V_LIST:
        sb_puts(c, b, "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(c, b, ", ");
            to_str_into(c, b, v.u.l->v[i], 1);
        }
        sb_puts(c, b, "]");
        break;
    case V_DICT:
        sb_puts(c, b, "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(c, b, ", ");
            repr_str(c, b, v.u.d->k[i], strlen(v.u.d->k[i]));
            sb_puts(c, b, ": ");
            to_str_into(c, b, v.u.d->v[i], 1);
        }
        sb_puts(c, b, "}");
        break;
    case V_LOOP: sb_puts(c, b, "<LoopContext>"); break;
    case V_FUNC: sb_puts(c, b, "<built-in function "), sb_put(c, b, v.u.s.p, v.u.s.n), sb_puts(c, b, ">"); break;
    }
}

/* str(v) as Jinja prints it; undefined prints as "". */
static value to_str(ctx *c, value v) {
    if (v.t == V_STR) return v;
    sbuf b = {0};
    to_str_into(c, &b, v, 0);
    return v_str(b.p ? b.p : "", b.n);
}

static int v_equal(value a, value b) {
    if ((a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL)) {
        int64_t x = a.t == V_INT ? a.u.i : a.u.b, y = b.t == V_INT ? b.u.i : b.u.b;
        return x == y;
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!v_equal(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            value *o = dict_find(b.u.d, a.u.d->k[i], strlen(a.u.d->k[i]));
            if (!o || !v_equal(a.u.d->v[i], *o)) return 0;
        }
        return 1;
    case V_LOOP: return a.u.loop == b.u.loop;
    default: return 0;
    }
}

/* ---- UTF-8 helpers: Python indexes strings by code point ---- */

static size_t cp_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}

/* Byte offset of code point index k (k <= count). */
static size_t cp_offset(const char *s, size_t n, size_t k) {
    size_t i = 0;
    while (i < n && k > 0) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return i;
}

/* Splits a string into its code points (iteration, list filter, indexing). */
static vlist *str_chars(ctx *c, value s) {
    vlist *l = alloc(c, sizeof *l);
    l->n = cp_count(s.u.s.p, s.u.s.n);
    l->v = alloc(c, (l->n ? l->n : 1) * sizeof *l->v);
    size_t i = 0;
    for (size_t k = 0; k < l->n; k++) {
        size_t j = i + 1;
        while (j < s.u.s.n && ((unsigned char)s.u.s.p[j] & 0xC0) == 0x80) j++;
        l->v[k] = v_str(s.u.s.p + i, j - i);
        i = j;
    }
    return l;
}

static int in_chars(uint32_t cp, value chars) {
    const unsigned char *p = (const unsigned char *)chars.u.s.p;
    size_t i = 0;
    while (i < chars.u.s.n) {
        uint32_t x;
        i += uni_decode(p + i, chars.u.s.n - i, &x);
        if (x == cp) return 1;
    }
    return 0;
}

/* str.strip/lstrip/rstrip: chars is a V_STR, or anything else for whitespace. */
static value str_strip(value s, int left, int right, value chars) {
    const unsigned char *p = (const unsigned char *)s.u.s.p;
    size_t b = 0, e = s.u.s.n;
    int ws = chars.t != V_STR;
    while (left && b < e) {
        uint32_t cp;
        size_t k = uni_decode(p + b, e - b, &cp);
        if (ws ? !is_py_space(cp) : !in_chars(cp, chars)) break;
        b += k;
    }
    while (right && e > b) {
        size_t s0 = e - 1;
        while (s0 > b && (p[s0] & 0xC0) == 0x80) s0--;
        uint32_t cp;
        uni_decode(p + s0, e - s0, &cp);
        if (ws ? !is_py_space(cp) : !in_chars(cp, chars)) break;
        e = s0;
    }
    return v_str(s.u.s.p + b, e - b);
}

static value str_case(ctx *c, value s, int upper) {
    char *p = alloc(c, s.u.s.n + 1);
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.p[i];
        if (upper && ch >= 'a' && ch <= 'z') ch = (char)(ch - 32);
        if (!upper && ch >= 'A' && ch <= 'Z') ch = (char)(ch + 32);
        p[i] = ch;
    }
    p[s.u.s.n] = '\0';
    return v_str(p, s.u.s.n);
}

static int str_contains(value hay, value needle) {
    if (needle.u.s.n == 0) return 1;
    if (needle.u.s.n > hay.u.s.n) return 0;
    for (size_t i = 0; i + needle.u.s.n <= hay.u.s.n; i++)
        if (memcmp(hay.u.s.p + i, needle.u.s.p, needle.u.s.n) == 0) return 1;
    return 0;
}

/* ---- lexer ---- */

static void push_tok(ctx *c, ttype t, size_t pos, const char *s, size_t n) {
    if (c->ntok == c->tokcap) {
        size_t cap = c->tokcap ? 2 * c->tokcap : 256;
        token *nt = alloc(c, cap * sizeof *nt);
        if (c->ntok) memcpy(nt, c->tok, c->ntok * sizeof *nt);
        c->tok = nt;
        c->tokcap = cap;
    }
    token *k = &c->tok[c->ntok++];
    k->t = t;
    k->pos = pos;
    k->s = s;
    k->n = n;
    k->i = 0;
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }
static int is_name0(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }
static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* A string literal at src[i] (a quote); decodes Python escapes. Returns the index after it. */
static size_t lex_string(ctx *c, size_t i) {
    const char *s = c->src;
    char q = s[i];
    size_t start = i++;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    while (i < c->srclen && s[i] != q) {
        if (s[i] == '\\' && i + 1 < c->srclen) {
            char e = s[i + 1], ch = 0;
            int hex = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
            switch (e) {
            case 'n': ch = '\n'; break;
            case 't': ch = '\t'; break;
            case 'r': ch = '\r'; break;
            case '0': ch = '\0'; break;
            case 'a': ch = '\a'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'v': ch = '\v'; break;
            case '\\': case '\'': case '"': ch = e; break;
            case '\n': i += 2; continue; /* line continuation */
            default: break;
            }
            if (hex) {
                uint32_t cp = 0;
                for (int k = 0; k < hex; k++) {
                    int h = i + 2 + (size_t)k < c->srclen ? hexval(s[i + 2 + k]) : -1;
                    if (h < 0) fail(c, LLMOPT_EFORMAT, i, "bad \\%c escape in a string literal", e);
                    cp = cp * 16 + (uint32_t)h;
                }
                if (cp > 0x10FFFF) fail(c, LLMOPT_EFORMAT, i, "escape beyond U+10FFFF in a string literal");
                char u[4];
                sb_put(c, &b, u, uni_encode(cp, u));
                i += 2 + (size_t)hex;
                continue;
            }
            if (ch || e == '0') {
                sb_put(c, &b, &ch, 1);
            } else {
                sb_put(c, &b, s + i, 2); /* unknown escapes stay as written */
            }
            i += 2;
            continue;
        }
        sb_put(c, &b, s + i, 1);
        i++;
    }
    if (i >= c->srclen) fail(c, LLMOPT_EFORMAT, start, "unterminated string literal");
    push_tok(c, T_STR, start, b.p, b.n);
    return i + 1;
}

/* Tokens of one {{ }} or {% %} tag starting at src[i] (after the opening delimiter). Returns the
 * index after the closing delimiter; *strip_after is 1 for "-}}"/"-%}", 2 for "+%}". */
static size_t lex_tag(ctx *c, size_t i, size_t open, char kind, int *strip_after) {
    const char *s = c->src;
    char close = kind == '{' ? '}' : '%';
    for (;;) {
        while (i < c->srclen && is_ws(s[i])) i++;
        if (i >= c->srclen)
            fail(c, LLMOPT_EFORMAT, open, "unterminated '{%c' tag (no '%c}')", kind, close);
        /* the closing delimiter, optionally with '-' (strip after) or '+' (no trim_blocks) */
        size_t j = i;
        int sign = 0;
        if ((s[j] == '-' || (s[j] == '+' && kind == '%')) && j + 2 < c->srclen && s[j + 1] == close && s[j + 2] == '}') {
            sign = s[j] == '-' ? 1 : 2;
            j++;
        }
        if (j + 1 < c->srclen && s[j] == close && s[j + 1] == '}') {
            *strip_after = sign;
            push_tok(c, kind == '{' ? T_VAR_END : T_BLOCK_END, i, NULL, 0);
            return j + 2;
        }
        char ch = s[i];
        if (is_name0(ch)) {
            size_t b = i;
            while (i < c->srclen && (is_name0(s[i]) || is_digit(s[i]))) i++;
            push_tok(c, T_NAME, b, s + b, i - b);
        } else if (is_digit(ch)) {
            size_t b = i;
            int64_t v = 0;
            while (i < c->srclen && (is_digit(s[i]) || s[i] == '_')) {
                if (s[i] != '_') {
                    if (v > (INT64_MAX - 9) / 10) fail(c, LLMOPT_EUNSUPPORTED, b, "integer literal too large");
                    v = v * 10 + (s[i] - '0');
                }
                i++;
            }
            if (i < c->srclen && (s[i] == '.' || s[i] == 'e' || s[i] == 'E') && i + 1 < c->srclen && is_digit(s[i + 1]))
                fail(c, LLMOPT_EUNSUPPORTED, b, "float literals are not supported");
            push_tok(c, T_INT, b, s + b, i - b);
            c->tok[c->ntok - 1].i = v;
        } else if (ch == '\'' || ch == '"') {
            i = lex_string(c, i);
        } else {
            static const char *ops2[] = {"//", "**", "==", "!=", "<=", ">="};
            size_t n = 0;
            for (size_t k = 0; k < sizeof ops2 / sizeof *ops2; k++)
                if (i + 1 < c->srclen && s[i] == ops2[k][0] && s[i + 1] == ops2[k][1]) n = 2;
            if (!n && strchr("+-*/%~|.,:()[]{}=<>", ch) && ch != '\0') n = 1;
            if (!n) fail(c, LLMOPT_EFORMAT, i, "unexpected character '%c' in a tag", ch);
            push_tok(c, T_OP, i, s + i, n);
            i += n;
        }
    }
}

static void lex(ctx *c) {
    const char *s = c->src;
    size_t n = c->srclen, i = 0;
    int line_starting = 1, strip_next = 0;
    while (i <= n) {
        size_t j = i;
        while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#'))) j++;
        if (j + 1 >= n) j = n;
        size_t tb = i, te = j;
        if (strip_next)
            while (tb < te && is_ws(s[tb])) tb++;
        if (j == n) {
            if (te > tb) push_tok(c, T_TEXT, tb, s + tb, te - tb);
            break;
        }
        char kind = s[j + 1];
        char sign = j + 2 < n ? s[j + 2] : 0;
        if (sign == '-') {
            while (te > tb && is_ws(s[te - 1])) te--;
        } else if (!(sign == '+' && kind != '{') && kind != '{') {
            /* lstrip_blocks: spaces and tabs from the line start to a block or comment */
            size_t l = te;
            while (l > tb && s[l - 1] != '\n') l--;
            if (l > tb || line_starting) {
                size_t k = l;
                while (k < te && is_ws(s[k]) && s[k] != '\n') k++;
                if (k == te && te > l) te = l;
            }
        }
        if (te > tb) push_tok(c, T_TEXT, tb, s + tb, te - tb);
        line_starting = 0;
        strip_next = 0;
        size_t body = j + 2 + ((sign == '-' || (sign == '+' && kind != '{')) ? 1 : 0);
        int strip_after = 0;
        if (kind == '#') {
            size_t k = body;
            while (k + 1 < n && !(s[k] == '#' && s[k + 1] == '}')) k++;
            if (k + 1 >= n) fail(c, LLMOPT_EFORMAT, j, "unterminated comment (no '#}')");
            if (k > body && s[k - 1] == '-') strip_after = 1;
            else if (k > body && s[k - 1] == '+') strip_after = 2;
            i = k + 2;
        } else {
            size_t k = body;
            while (k < n && is_ws(s[k])) k++;
            if (kind == '%' && k + 3 <= n && memcmp(s + k, "raw", 3) == 0 && (k + 3 == n || !(is_name0(s[k + 3]) || is_digit(s[k + 3]))))
                fail(c, LLMOPT_EUNSUPPORTED, k, "the 'raw' statement is not supported");
            push_tok(c, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, j, NULL, 0);
            i = lex_tag(c, body, j, kind, &strip_after);
        }
        if (strip_after == 1) {
            strip_next = 1;
        } else if (strip_after == 0 && kind != '{' && i < n && s[i] == '\n') {
            i++; /* trim_blocks */
            line_starting = 1;
        }
    }
    push_tok(c, T_EOF, n, NULL, 0);
}

/* ---- parser ---- */

static token *peek(ctx *c) { return &c->tok[c->itok]; }
static token *next(ctx *c) {
    token *t = &c->tok[c->itok];
    if (t->t != T_EOF) c->itok++;
    return t;
}
static int tok_is(const token *t, ttype type, const char *s) {
    return t->t == type && (!s || (t->n == strlen(s) && memcmp(t->s, s, t->n) == 0));
}
static int accept(ctx *c, ttype type, const char *s) {
    if (tok_is(peek(c), type, s)) {
        next(c);
        return 1;
    }
    return 0;
}
static const char *tok_desc(ctx *c, const token *t) {
    switch (t->t) {
    case T_EOF: return "the end of the template";
    case T_VAR_END: return "'}}'";
    case T_BLOCK_END: return "'%}'";
    case T_TEXT: return "text";
    default: {
        char *p = alloc(c, t->n + 3);
        snprintf(p, t->n + 3, "'%.*s'", (int)t->n, t->s);
        return p;
    }
    }
}
static void expect(ctx *c, ttype type, const char *s, const char *what) {
    if (!accept(c, type, s)) {
        token *t = peek(c);
        fail(c, LLMOPT_EFORMAT, t->pos, "expected %s, found %s", what, tok_desc(c, t));
    }
}
static const char *expect_name(ctx *c) {
    token *t = peek(c);
    if (t->t != T_NAME) fail(c, LLMOPT_EFORMAT, t->pos, "expected a name, found %s", tok_desc(c, t));
    next(c);
    return strndup_arena(c, t->s, t->n);
}

static expr *new_expr(ctx *c, ekind k, size_t pos) {
    expr *e = alloc(c, sizeof *e);
    memset(e, 0, sizeof *e);
    e->k = k;
    e->pos = pos;
    return e;
}

static expr *parse_expr(ctx *c);
static expr *parse_or(ctx *c);

static void enter(ctx *c, size_t pos) {
    if (++c->depth > CHAT_MAX_DEPTH) fail(c, LLMOPT_EUNSUPPORTED, pos, "nesting deeper than %d", CHAT_MAX_DEPTH);
}

/* "(a, k=v, ...)" after the '(' was consumed. */
static void parse_args(ctx *c, expr *e) {
    size_t cap = 4;
    e->args = alloc(c, cap * sizeof *e->args);
    e->kw = alloc(c, cap * sizeof *e->kw);
    while (!accept(c, T_OP, ")")) {
        if (e->nargs) expect(c, T_OP, ",", "',' or ')'");
        if (accept(c, T_OP, ")")) break;
        if (e->nargs == cap) {
            expr **na = alloc(c, 2 * cap * sizeof *na);
            const char **nk = alloc(c, 2 * cap * sizeof *nk);
            memcpy(na, e->args, cap * sizeof *na);
            memcpy(nk, e->kw, cap * sizeof *nk);
            e->args = na;
            e->kw = nk;
            cap *= 2;
        }
        const char *kw = NULL;
        if (peek(c)->t == T_NAME && tok_is(&c->tok[c->itok + 1], T_OP, "=")) {
            kw = expect_name(c);
            next(c);
        }
        e->kw[e->nargs] = kw;
        e->args[e->nargs++] = parse_expr(c);
    }
}

static expr *parse_primary(ctx *c) {
    token *t = next(c);
    expr *e;
    switch (t->t) {
    case T_NAME:
        e = new_expr(c, E_LIT, t->pos);
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True")) e->lit = v_bool(1);
        else if (tok_is(t, T_NAME, "false") || tok_is(t, T_NAME, "False")) e->lit = v_bool(0);
        else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) e->lit = v_none();
        else {
            e->k = E_NAME;
            e->name = strndup_arena(c, t->s, t->n);
        }
        return e;
    case T_STR: {
        /* adjacent literals concatenate, as in Python */
        sbuf b = {0};
        sb_put(c, &b, t->s, t->n);
        while (peek(c)->t == T_STR) {
            token *u = next(c);
            sb_put(c, &b, u->s, u->n);
        }
        e = new_expr(c, E_LIT, t->pos);
        e->lit = v_str(b.p, b.n);
        return e;
    }
    case T_INT:
        e = new_expr(c, E_LIT, t->pos);
        e->lit = v_int(t->i);
        return e;
    case T_OP:
        if (tok_is(t, T_OP, "(")) {
            e = parse_expr(c);
            if (tok_is(peek(c), T_OP, ",")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "tuples are not supported");
            expect(c, T_OP, ")", "')'");
            return e;
        }
        if (tok_is(t, T_OP, "[")) {
            e = new_expr(c, E_LIST, t->pos);
            size_t cap = 4;
            e->args = alloc(c, cap * sizeof *e->args);
            while (!accept(c, T_OP, "]")) {
                if (e->nargs) expect(c, T_OP, ",", "',' or ']'");
                if (accept(c, T_OP, "]")) break;
                if (e->nargs == cap) {
                    expr **na = alloc(c, 2 * cap * sizeof *na);
                    memcpy(na, e->args, cap * sizeof *na);
                    e->args = na;
                    cap *= 2;
                }
                e->args[e->nargs++] = parse_expr(c);
            }
            return e;
        }
        if (tok_is(t, T_OP, "{")) fail(c, LLMOPT_EUNSUPPORTED, t->pos, "dict literals are not supported");
        break;
    default:
        break;
    }
    fail(c, LLMOPT_EFORMAT, t->pos, "expected an expression, found %s", tok_desc(c, t));
}

static expr *parse_postfix(ctx *c, expr *e) {
    for (;;) {
        token *t = peek(c);
        if (tok_is(t, T_OP, ".")) {
            next(c);
            token *nt = peek(c);
            if (nt->t == T_INT) fail(c, LLMOPT_EUNSUPPORTED, nt->pos, "numeric attribute access");
            const char *name = expect_name(c);
            expr *a = new_expr(c, E_ATTR, t->pos);
            a->a = e;
            a->name = name;
            if (accept(c, T_OP, "(")) {
                a->k = E_METHOD;
                parse_args(c, a);
            }
            e = a;
        } else if (tok_is(t, T_OP, "[")) {
            next(c);
            expr *x = new_expr(c, E_ITEM, t->pos);
            x->a = e;
            expr *lo = NULL;
            if (!tok_is(peek(c), T_OP, ":")) lo = parse_expr(c);
            if (accept(c, T_OP, ":")) {
                x->k = E_SLICE;
                x->b = lo;
                if (!tok_is(peek(c), T_OP, "]") && !tok_is(peek(c), T_OP, ":")) x->c = parse_expr(c);
                x->args = alloc(c, sizeof *x->args);
                x->args[0] = NULL;
                if (accept(c, T_OP, ":") && !tok_is(peek(c), T_OP, "]")) x->args[0] = parse_expr(c);
            } else {
                if (!lo) fail(c, LLMOPT_EFORMAT, t->pos, "empty subscript");
                x->b = lo;
            }
            if (tok_is(peek(c), T_OP, ",")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "tuple subscripts are not supported");
            expect(c, T_OP, "]", "']'");
            e = x;
        } else if (tok_is(t, T_OP, "(")) {
            if (e->k != E_NAME) fail(c, LLMOPT_EUNSUPPORTED, t->pos, "calling anything but a named function or a method");
            next(c);
            e->k = E_CALL;
            parse_args(c, e);
        } else {
            return e;
        }
    }
}

/* Filters and tests: "x | f(args) | g", "x is [not] t(args)". */
static expr *parse_filters(ctx *c, expr *e) {
    for (;;) {
        token *t = peek(c);
        if (tok_is(t, T_OP, "|")) {
            next(c);
            expr *f = new_expr(c, E_FILTER, peek(c)->pos);
            f->name = expect_name(c);
            f->a = e;
            if (accept(c, T_OP, "(")) parse_args(c, f);
            e = f;
        } else if (tok_is(t, T_NAME, "is")) {
            next(c);
            expr *f = new_expr(c, E_TEST, t->pos);
            f->negate = accept(c, T_NAME, "not");
            f->pos = peek(c)->pos;
            token *nt = peek(c);
            if (nt->t != T_NAME) fail(c, LLMOPT_EUNSUPPORTED, nt->pos, "a test named by %s", tok_desc(c, nt));
            f->name = expect_name(c);
            f->a = e;
            if (accept(c, T_OP, "(")) {
                parse_args(c, f);
            } else {
                /* Jinja's rule for one argument without parentheses: "x is divisibleby 3" */
                token *at = peek(c);
                if ((at->t == T_STR || at->t == T_INT || at->t == T_NAME || tok_is(at, T_OP, "(") || tok_is(at, T_OP, "[") ||
                     tok_is(at, T_OP, "{")) &&
                    !tok_is(at, T_NAME, "else") && !tok_is(at, T_NAME, "or") && !tok_is(at, T_NAME, "and")) {
                    f->args = alloc(c, sizeof *f->args);
                    f->kw = alloc(c, sizeof *f->kw);
                    f->kw[0] = NULL;
                    f->args[0] = parse_postfix(c, parse_primary(c));
                    f->nargs = 1;
                }
            }
            e = f;
        } else {
            return e;
        }
    }
}

static expr *parse_unary(ctx *c) {
    token *t = peek(c);
    enter(c, t->pos);
    expr *e;
    if (tok_is(t, T_OP, "-") || tok_is(t, T_OP, "+")) {
        next(c);
        e = new_expr(c, E_NEG, t->pos);
        e->name = tok_is(t, T_OP, "+") ? "+" : "-";
        e->a = parse_unary(c);
    } else {
        e = parse_filters(c, parse_postfix(c, parse_primary(c)));
    }
    c->depth--;
    return e;
}

static expr *bin(ctx *c, const char *op, size_t pos, expr *a, expr *b) {
    expr *e = new_expr(c, E_BIN, pos);
    e->name = op;
    e->a = a;
    e->b = b;
    return e;
}

static expr *parse_pow(ctx *c) {
    expr *e = parse_unary(c);
    while (tok_is(peek(c), T_OP, "**")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "'**' is not supported");
    return e;
}

static expr *parse_math2(ctx *c) {
    expr *e = parse_pow(c);
    for (;;) {
        token *t = peek(c);
        if (tok_is(t, T_OP, "*") || tok_is(t, T_OP, "//") || tok_is(t, T_OP, "%")) {
            next(c);
            e = bin(c, strndup_arena(c, t->s, t->n), t->pos, e, parse_pow(c));
        } else if (tok_is(t, T_OP, "/")) {
            fail(c, LLMOPT_EUNSUPPORTED, t->pos, "'/' (true division makes floats, which are not supported; use '//')");
        } else {
            return e;
        }
    }
}

static expr *parse_concat(ctx *c) {
    expr *e = parse_math2(c);
    while (tok_is(peek(c), T_OP, "~")) {
        token *t = next(c);
        e = bin(c, "~", t->pos, e, parse_math2(c));
    }
    return e;
}

static expr *parse_math1(ctx *c) {
    expr *e = parse_concat(c);
    for (;;) {
        token *t = peek(c);
        if (!tok_is(t, T_OP, "+") && !tok_is(t, T_OP, "-")) return e;
        next(c);
        e = bin(c, tok_is(t, T_OP, "+") ? "+" : "-", t->pos, e, parse_concat(c));
    }
}

static expr *parse_compare(ctx *c) {
    expr *first = parse_math1(c);
    expr *e = NULL;
    for (;;) {
        token *t = peek(c);
        const char *op = NULL;
        static const char *cmp[] = {"==", "!=", "<", "<=", ">", ">="};
        for (size_t k = 0; k < 6; k++)
            if (tok_is(t, T_OP, cmp[k])) op = cmp[k];
        if (op) {
            next(c);
        } else if (tok_is(t, T_NAME, "in")) {
            next(c);
            op = "in";
        } else if (tok_is(t, T_NAME, "not") && tok_is(&c->tok[c->itok + 1], T_NAME, "in")) {
            next(c);
            next(c);
            op = "not in";
        } else {
            return e ? e : first;
        }
        if (!e) {
            e = new_expr(c, E_CMP, t->pos);
            e->args = alloc(c, 8 * sizeof *e->args);
            e->ops = alloc(c, 8 * sizeof *e->ops);
            e->args[0] = first;
            e->nargs = 1;
        }
        if (e->nargs == 8) fail(c, LLMOPT_EUNSUPPORTED, t->pos, "more than 7 chained comparisons");
        e->ops[e->nargs - 1] = op;
        e->args[e->nargs++] = parse_math1(c);
    }
}

static expr *parse_not(ctx *c) {
    token *t = peek(c);
    if (tok_is(t, T_NAME, "not")) {
        next(c);
        enter(c, t->pos);
        expr *e = new_expr(c, E_NOT, t->pos);
        e->a = parse_not(c);
        c->depth--;
        return e;
    }
    return parse_compare(c);
}

static expr *parse_and(ctx *c) {
    expr *e = parse_not(c);
    while (tok_is(peek(c), T_NAME, "and")) {
        token *t = next(c);
        expr *x = new_expr(c, E_AND, t->pos);
        x->a = e;
        x->b = parse_not(c);
        e = x;
    }
    return e;
}

static expr *parse_or(ctx *c) {
    expr *e = parse_and(c);
    while (tok_is(peek(c), T_NAME, "or")) {
        token *t = next(c);
        expr *x = new_expr(c, E_OR, t->pos);
        x->a = e;
        x->b = parse_and(c);
        e = x;
    }
    return e;
}

/* "a if cond [else b]" */
static expr *parse_expr(ctx *c) {
    enter(c, peek(c)->pos);
    expr *e = parse_or(c);
    while (tok_is(peek(c), T_NAME, "if")) {
        token *t = next(c);
        expr *x = new_expr(c, E_COND, t->pos);
        x->a = e;
        x->b = parse_or(c);
        if (accept(c, T_NAME, "else")) x->c = parse_expr(c);
        e = x;
    }
    c->depth--;
    return e;
}

static node *new_node(ctx *c, nkind k, size_t pos) {
    node *n = alloc(c, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->pos = pos;
    return n;
}

static void body_push(ctx *c, body *b, size_t *cap, node *n) {
    if (b->n == *cap) {
        size_t nc = *cap ? 2 * *cap : 8;
        node **nv = alloc(c, nc * sizeof *nv);
        if (b->n) memcpy(nv, b->v, b->n * sizeof *nv);
        b->v = nv;
        *cap = nc;
    }
    b->v[b->n++] = n;
}

/* Statements up to one of ends (a NULL-terminated list of keywords; NULL at the top level).
 * Leaves the parser after the keyword and returns it; opener names the block for messages. */
static const char *parse_body(ctx *c, body *out, const char *const *ends, const token *opener);

static void parse_if(ctx *c, node *n, const token *opener) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const endif[] = {"endif", NULL};
    size_t cap = 0;
    const char *kw = "if";
    n->conds = NULL;
    for (;;) {
        if (n->nconds == cap) {
            size_t nc = cap ? 2 * cap : 4;
            expr **ce = alloc(c, nc * sizeof *ce);
            body *cb = alloc(c, nc * sizeof *cb);
            if (n->nconds) {
                memcpy(ce, n->conds, n->nconds * sizeof *ce);
                memcpy(cb, n->bodies, n->nconds * sizeof *cb);
            }
            n->conds = ce;
            n->bodies = cb;
            cap = nc;
        }
        n->conds[n->nconds] = parse_expr(c);
        expect(c, T_BLOCK_END, NULL, "'%}'");
        memset(&n->bodies[n->nconds], 0, sizeof(body));
        kw = parse_body(c, &n->bodies[n->nconds++], ends, opener);
        if (strcmp(kw, "elif") != 0) break;
    }
    if (strcmp(kw, "else") == 0) {
        expect(c, T_BLOCK_END, NULL, "'%}'");
        parse_body(c, &n->els, endif, opener);
    }
    expect(c, T_BLOCK_END, NULL, "'%}'");
}

static void parse_for(ctx *c, node *n, const token *opener) {
    static const char *const ends[] = {"else", "endfor", NULL};
    static const char *const endfor[] = {"endfor", NULL};
    n->s = expect_name(c);
    if (tok_is(peek(c), T_OP, ",")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "unpacking several loop variables");
    expect(c, T_NAME, "in", "'in'");
    n->e = parse_or(c);
    if (tok_is(peek(c), T_NAME, "if")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "loop filters ('for x in y if c')");
    if (tok_is(peek(c), T_NAME, "recursive")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "recursive loops");
    expect(c, T_BLOCK_END, NULL, "'%}'");
    const char *kw = parse_body(c, &n->b, ends, opener);
    if (strcmp(kw, "else") == 0) {
        expect(c, T_BLOCK_END, NULL, "'%}'");
        parse_body(c, &n->els, endfor, opener);
    }
    expect(c, T_BLOCK_END, NULL, "'%}'");
}

static void parse_set(ctx *c, node *n) {
    n->s = expect_name(c);
    if (accept(c, T_OP, ".")) n->attr = expect_name(c);
    if (tok_is(peek(c), T_OP, ",")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "unpacking in 'set'");
    if (tok_is(peek(c), T_BLOCK_END, NULL) || tok_is(peek(c), T_OP, "|"))
        fail(c, LLMOPT_EUNSUPPORTED, n->pos, "block assignments ('{%% set x %%}...{%% endset %%}')");
    expect(c, T_OP, "=", "'='");
    n->e = parse_expr(c);
    if (tok_is(peek(c), T_OP, ",")) fail(c, LLMOPT_EUNSUPPORTED, peek(c)->pos, "tuples are not supported");
    expect(c, T_BLOCK_END, NULL, "'%}'");
}

static const char *parse_body(ctx *c, body *out, const char *const *ends, const token *opener) {
    size_t cap = 0;
    enter(c, peek(c)->pos);
    for (;;) {
        token *t = next(c);
        if (t->t == T_EOF) {
            if (!ends) {
                c->depth--;
                return NULL;
            }
            size_t k = 0;
            while (ends[k + 1]) k++;
            fail(c, LLMOPT_EFORMAT, opener->pos, "'%.*s' block has no '{%% %s %%}'", (int)opener->n, opener->s, ends[k]);
        }
        if (t->t == T_TEXT) {
            node *n = new_node(c, N_TEXT, t->pos);
            n->s = t->s;
            n->n = t->n;
            body_push(c, out, &cap, n);
        } else if (t->t == T_VAR_BEGIN) {
            node *n = new_node(c, N_OUT, t->pos);
            n->e = parse_expr(c);
            expect(c, T_VAR_END, NULL, "'}}'");
            body_push(c, out, &cap, n);
        } else if (t->t == T_BLOCK_BEGIN) {
            token *kw = peek(c);
            if (kw->t != T_NAME) fail(c, LLMOPT_EFORMAT, kw->pos, "expected a statement name, found %s", tok_desc(c, kw));
            for (size_t k = 0; ends && ends[k]; k++)
                if (tok_is(kw, T_NAME, ends[k])) {
                    next(c);
                    c->depth--;
                    return ends[k];
                }
            next(c);
            node *n = new_node(c, N_TEXT, kw->pos);
            if (tok_is(kw, T_NAME, "if")) {
                n->k = N_IF;
                parse_if(c, n, kw);
            } else if (tok_is(kw, T_NAME, "for")) {
                n->k = N_FOR;
                parse_for(c, n, kw);
            } else if (tok_is(kw, T_NAME, "set")) {
                n->k = N_SET;
                parse_set(c, n);
            } else if (tok_is(kw, T_NAME, "break") || tok_is(kw, T_NAME, "continue")) {
                n->k = tok_is(kw, T_NAME, "break") ? N_BREAK : N_CONTINUE;
                expect(c, T_BLOCK_END, NULL, "'%}'");
            } else if (tok_is(kw, T_NAME, "elif") || tok_is(kw, T_NAME, "else") || tok_is(kw, T_NAME, "endif") ||
                       tok_is(kw, T_NAME, "endfor")) {
                fail(c, LLMOPT_EFORMAT, kw->pos, "unexpected '%.*s'", (int)kw->n, kw->s);
            } else {
                fail(c, LLMOPT_EUNSUPPORTED, kw->pos, "the '%.*s' statement is not supported", (int)kw->n, kw->s);
            }
            body_push(c, out, &cap, n);
        } else {
            fail(c, LLMOPT_EFORMAT, t->pos, "unexpected %s", tok_desc(c, t));
        }
    }
}

/* ---- evaluation ---- */

static value eval(ctx *c, frame *f, const expr *e);

static value lookup(frame *f, const char *name) {
    for (; f; f = f->parent) {
        value *v = dict_find(&f->vars, name, strlen(name));
        if (v) return *v;
    }
    return v_undef();
}

static void need_str(ctx *c, value v, size_t pos, const char *what) {
    if (v.t != V_STR) fail(c, LLMOPT_EINVAL, pos, "%s needs a string, got %s", what, type_name(v));
}

static int64_t need_int(ctx *c, value v, size_t pos, const char *what) {
    if (v.t == V_BOOL) return v.u.b;
    if (v.t != V_INT) fail(c, LLMOPT_EINVAL, pos, "%s needs an integer, got %s", what, type_name(v));
    return v.u.i;
}

static value loop_attr(ctx *c, const loopstate *l, const char *name, size_t pos) {
    size_t n = l->items->n, i = l->i;
    if (!strcmp(name, "index")) return v_int((int64_t)i + 1);
    if (!strcmp(name, "index0")) return v_int((int64_t)i);
    if (!strcmp(name, "revindex")) return v_int((int64_t)(n - i));
    if (!strcmp(name, "revindex0")) return v_int((int64_t)(n - i - 1));
    if (!strcmp(name, "first")) return v_bool(i == 0);
    if (!strcmp(name, "last")) return v_bool(i + 1 == n);
    if (!strcmp(name, "length")) return v_int((int64_t)n);
    if (!strcmp(name, "depth")) return v_int(1);
    if (!strcmp(name, "depth0")) return v_int(0);
    if (!strcmp(name, "previtem")) return i > 0 ? l->items->v[i - 1] : v_undef();
    if (!strcmp(name, "nextitem")) return i + 1 < n ? l->items->v[i + 1] : v_undef();
    if (!strcmp(name, "cycle") || !strcmp(name, "changed"))
        fail(c, LLMOPT_EUNSUPPORTED, pos, "loop.%s is not supported", name);
    return v_undef(); /* as Jinja: any other attribute is undefined */
}

/* The list a value iterates over (for, list filter, join). */
static const vlist *iter_list(ctx *c, value v, size_t pos) {
    static const vlist empty = {0, NULL};
    switch (v.t) {
    case V_UNDEF: return &empty;
    case V_LIST: return v.u.l;
    case V_STR: return str_chars(c, v);
    case V_DICT: {
        vlist *l = alloc(c, sizeof *l);
        l->n = v.u.d->n;
        l->v = alloc(c, (l->n ? l->n : 1) * sizeof *l->v);
        for (size_t i = 0; i < l->n; i++) l->v[i] = v_cstr(v.u.d->k[i]);
        return l;
    }
    default: fail(c, LLMOPT_EINVAL, pos, "'%s' object is not iterable", type_name(v));
    }
}

static void undefined_error(ctx *c, const expr *e, size_t pos) {
    if (e->k == E_NAME) fail(c, LLMOPT_EINVAL, pos, "'%s' is undefined", e->name);
    fail(c, LLMOPT_EINVAL, pos, "an undefined value has no attributes or items");
}

static value get_attr(ctx *c, value obj, const char *name, const expr *e) {
    if (obj.t == V_UNDEF) undefined_error(c, e->a, e->pos);
    if (obj.t == V_DICT) {
        value *v = dict_find(obj.u.d, name, strlen(name));
        return v ? *v : v_undef();
    }
    if (obj.t == V_LOOP) return loop_attr(c, obj.u.loop, name, e->pos);
    return v_undef();
}

static value get_item(ctx *c, value obj, value key, const expr *e) {
    if (obj.t == V_UNDEF) undefined_error(c, e->a, e->pos);
    if (obj.t == V_DICT) {
        if (key.t != V_STR) return v_undef();
        value *v = dict_find(obj.u.d, key.u.s.p, key.u.s.n);
        return v ? *v : v_undef();
    }
    if (obj.t == V_LOOP && key.t == V_STR) {
        const char *k = strndup_arena(c, key.u.s.p, key.u.s.n);
        return loop_attr(c, obj.u.loop, k, e->pos);
    }
    if ((obj.t == V_LIST || obj.t == V_STR) && (key.t == V_INT || key.t == V_BOOL)) {
        const vlist *l = obj.t == V_LIST ? obj.u.l : str_chars(c, obj);
        int64_t i = key.t == V_INT ? key.u.i : key.u.b;
        if (i < 0) i += (int64_t)l->n;
        if (i < 0 || (uint64_t)i >= l->n) return v_undef();
        return l->v[i];
    }
    return v_undef();
}

/* Python slice bounds for a sequence of n items. */
static void slice_bounds(int64_t n, int has_lo, int64_t lo, int has_hi, int64_t hi, int64_t step, int64_t *b, int64_t *e) {
    if (step > 0) {
        *b = !has_lo ? 0 : lo < 0 ? (lo + n < 0 ? 0 : lo + n) : (lo > n ? n : lo);
        *e = !has_hi ? n : hi < 0 ? (hi + n < 0 ? 0 : hi + n) : (hi > n ? n : hi);
    } else {
        *b = !has_lo ? n - 1 : lo < 0 ? (lo + n < 0 ? -1 : lo + n) : (lo >= n ? n - 1 : lo);
        *e = !has_hi ? -1 : hi < 0 ? (hi + n < 0 ? -1 : hi + n) : (hi >= n ? n - 1 : hi);
    }
}

static value eval_slice(ctx *c, frame *f, const expr *e) {
    value obj = eval(c, f, e->a);
    if (obj.t == V_UNDEF) undefined_error(c, e->a, e->pos);
    value lo = e->b ? eval(c, f, e->b) : v_none();
    value hi = e->c ? eval(c, f, e->c) : v_none();
    value st = e->args[0] ? eval(c, f, e->args[0]) : v_none();
    int64_t step = st.t == V_NONE ? 1 : need_int(c, st, e->pos, "a slice step");
    if (step == 0) fail(c, LLMOPT_EINVAL, e->pos, "slice step cannot be zero");
    if (obj.t != V_LIST && obj.t != V_STR) fail(c, LLMOPT_EINVAL, e->pos, "cannot slice a %s", type_name(obj));
    const vlist *l = obj.t == V_LIST ? obj.u.l : NULL;
    int64_t n = l ? (int64_t)l->n : (int64_t)cp_count(obj.u.s.p, obj.u.s.n);
    int64_t b, en;
    slice_bounds(n, lo.t != V_NONE, lo.t != V_NONE ? need_int(c, lo, e->pos, "a slice bound") : 0, hi.t != V_NONE,
                 hi.t != V_NONE ? need_int(c, hi, e->pos, "a slice bound") : 0, step, &b, &en);
    if (obj.t == V_STR && step == 1) {
        size_t ob = cp_offset(obj.u.s.p, obj.u.s.n, (size_t)b);
        size_t oe = en > b ? cp_offset(obj.u.s.p, obj.u.s.n, (size_t)en) : ob;
        return v_str(obj.u.s.p + ob, oe - ob);
    }
    if (!l) l = str_chars(c, obj);
    vlist *r = alloc(c, sizeof *r);
    r->n = 0;
    r->v = alloc(c, (size_t)(n > 0 ? n : 1) * sizeof *r->v);
    for (int64_t i = b; step > 0 ? i < en : i > en; i += step) r->v[r->n++] = l->v[i];
    if (obj.t == V_STR) {
        sbuf sb = {0};
        sb_put(c, &sb, "", 0);
        for (size_t i = 0; i < r->n; i++) sb_put(c, &sb, r->v[i].u.s.p, r->v[i].u.s.n);
        return v_str(sb.p, sb.n);
    }
    value v = {.t = V_LIST};
    v.u.l = r;
    return v;
}

static value concat(ctx *c, value a, value b) {
    char *p = alloc(c, a.u.s.n + b.u.s.n + 1);
    memcpy(p, a.u.s.p, a.u.s.n);
    memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
    p[a.u.s.n + b.u.s.n] = '\0';
    return v_str(p, a.u.s.n + b.u.s.n);
}

static int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static value eval_bin(ctx *c, const char *op, value a, value b, size_t pos) {
    if (!strcmp(op, "~")) return concat(c, to_str(c, a), to_str(c, b));
    if (a.t == V_UNDEF || b.t == V_UNDEF) fail(c, LLMOPT_EINVAL, pos, "'%s' on an undefined value", op);
    int ints = (a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL);
    int64_t x = ints ? (a.t == V_INT ? a.u.i : a.u.b) : 0, y = ints ? (b.t == V_INT ? b.u.i : b.u.b) : 0;
    if (!strcmp(op, "+")) {
        if (a.t == V_STR && b.t == V_STR) return concat(c, a, b);
        if (ints) {
            if ((y > 0 && x > INT64_MAX - y) || (y < 0 && x < INT64_MIN - y)) fail(c, LLMOPT_EUNSUPPORTED, pos, "integer overflow");
            return v_int(x + y);
        }
        if (a.t == V_LIST && b.t == V_LIST) {
            vlist *l = alloc(c, sizeof *l);
            l->n = a.u.l->n + b.u.l->n;
            l->v = alloc(c, (l->n ? l->n : 1) * sizeof *l->v);
            if (a.u.l->n) memcpy(l->v, a.u.l->v, a.u.l->n * sizeof *l->v);
            if (b.u.l->n) memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof *l->v);
            value v = {.t = V_LIST};
            v.u.l = l;
            return v;
        }
    } else if (!strcmp(op, "-")) {
        if (ints) {
            if ((y < 0 && x > INT64_MAX + y) || (y > 0 && x < INT64_MIN + y)) fail(c, LLMOPT_EUNSUPPORTED, pos, "integer overflow");
            return v_int(x - y);
        }
    } else if (!strcmp(op, "*")) {
        if (ints) {
            if (x != 0 && (y > INT32_MAX || y < -INT32_MAX || x > INT32_MAX || x < -INT32_MAX))
                fail(c, LLMOPT_EUNSUPPORTED, pos, "integer overflow");
            return v_int(x * y);
        }
        if ((a.t == V_STR && (b.t == V_INT || b.t == V_BOOL)) || (b.t == V_STR && (a.t == V_INT || a.t == V_BOOL))) {
            value s = a.t == V_STR ? a : b;
            int64_t k = a.t == V_STR ? (b.t == V_INT ? b.u.i : b.u.b) : (a.t == V_INT ? a.u.i : a.u.b);
            if (k <= 0 || s.u.s.n == 0) return v_str("", 0);
            if ((uint64_t)k > (c->mem_cap / s.u.s.n))
                fail(c, LLMOPT_EFAIL, pos, "rendering needs more than %zu MiB of memory", c->mem_cap >> 20);
            size_t total = (size_t)k * s.u.s.n;
            char *p = alloc(c, total + 1);
            for (int64_t i = 0; i < k; i++) memcpy(p + (size_t)i * s.u.s.n, s.u.s.p, s.u.s.n);
            p[total] = '\0';
            return v_str(p, total);
        }
    } else if (!strcmp(op, "//") || !strcmp(op, "%")) {
        if (a.t == V_STR && op[0] == '%') fail(c, LLMOPT_EUNSUPPORTED, pos, "'%%' string formatting");
        if (ints) {
            if (y == 0) fail(c, LLMOPT_EINVAL, pos, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) fail(c, LLMOPT_EUNSUPPORTED, pos, "integer overflow");
            int64_t q = floordiv(x, y);
            return v_int(op[0] == '/' ? q : x - q * y);
        }
    }
    fail(c, LLMOPT_EINVAL, pos, "unsupported operand types for %s: '%s' and '%s'", op, type_name(a), type_name(b));
}

static int compare(ctx *c, const char *op, value a, value b, size_t pos) {
    if (!strcmp(op, "==")) return v_equal(a, b);
    if (!strcmp(op, "!=")) return !v_equal(a, b);
    if (!strcmp(op, "in") || !strcmp(op, "not in")) {
        int neg = op[0] == 'n', r;
        if (b.t == V_STR) {
            if (a.t != V_STR) fail(c, LLMOPT_EINVAL, pos, "'in <string>' requires a string on the left, got %s", type_name(a));
            r = str_contains(b, a);
        } else if (b.t == V_LIST) {
            r = 0;
            for (size_t i = 0; i < b.u.l->n && !r; i++) r = v_equal(a, b.u.l->v[i]);
        } else if (b.t == V_DICT) {
            r = a.t == V_STR && dict_find(b.u.d, a.u.s.p, a.u.s.n) != NULL;
        } else if (b.t == V_UNDEF) {
            r = 0;
        } else {
            fail(c, LLMOPT_EINVAL, pos, "argument of type '%s' is not iterable", type_name(b));
        }
        return neg ? !r : r;
    }
    int cmp;
    if ((a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL)) {
        int64_t x = a.t == V_INT ? a.u.i : a.u.b, y = b.t == V_INT ? b.u.i : b.u.b;
        cmp = x < y ? -1 : x > y;
    } else if (a.t == V_STR && b.t == V_STR) {
        size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        cmp = memcmp(a.u.s.p, b.u.s.p, m);
        if (cmp == 0) cmp = a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    } else {
        fail(c, LLMOPT_EINVAL, pos, "'%s' not supported between '%s' and '%s'", op, type_name(a), type_name(b));
    }
    if (!strcmp(op, "<")) return cmp < 0;
    if (!strcmp(op, "<=")) return cmp <= 0;
    if (!strcmp(op, ">")) return cmp > 0;
    return cmp >= 0;
}

/* Positional argument i or keyword kw of a call, or def. */
static value arg(ctx *c, frame *f, const expr *e, size_t i, const char *kw, value def) {
    size_t npos = 0;
    for (size_t k = 0; k < e->nargs; k++) {
        if (e->kw && e->kw[k]) {
            if (kw && !strcmp(e->kw[k], kw)) return eval(c, f, e->args[k]);
        } else if (npos++ == i) {
            return eval(c, f, e->args[k]);
        }
    }
    return def;
}

static void max_args(ctx *c, const expr *e, size_t n, const char *what) {
    if (e->nargs > n) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "%s takes at most %zu argument%s here", what, n, n == 1 ? "" : "s");
}

static void json_str(ctx *c, sbuf *b, const char *s, size_t n) {
    sb_puts(c, b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (ch == '"') sb_puts(c, b, "\\\"");
        else if (ch == '\\') sb_puts(c, b, "\\\\");
        else if (ch == '\n') sb_puts(c, b, "\\n");
        else if (ch == '\r') sb_puts(c, b, "\\r");
        else if (ch == '\t') sb_puts(c, b, "\\t");
        else if (ch == '\b') sb_puts(c, b, "\\b");
        else if (ch == '\f') sb_puts(c, b, "\\f");
        else if (ch < 0x20) { snprintf(tmp, sizeof tmp, "\\u%04x", ch); sb_puts(c, b, tmp); }
        else sb_put(c, b, (const char *)&s[i], 1);
    }
    sb_puts(c, b, "\"");
}

/* json.dumps(v, ensure_ascii=False): transformers' tojson. */
static void to_json(ctx *c, sbuf *b, value v, size_t pos) {
    char tmp[32];
    switch (v.t) {
    case V_NONE: sb_puts(c, b, "null"); break;
    case V_BOOL: sb_puts(c, b, v.u.b ? "true" : "false"); break;
    case V_INT: snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i); sb_puts(c, b, tmp); break;
    case V_STR: json_str(c, b, v.u.s.p, v.u.s.n); break;
    case V_LIST:
        sb_puts(c, b, "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(c, b, ", ");
            to_json(c, b, v.u.l->v[i], pos);
        }
        sb_puts(c, b, "]");
        break;
    case V_DICT:
        sb_puts(c, b, "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(c, b, ", ");
            json_str(c, b, v.u.d->k[i], strlen(v.u.d->k[i]));
            sb_puts(c, b, ": ");
            to_json(c, b, v.u.d->v[i], pos);
        }
        sb_puts(c, b, "}");
        break;
    default: fail(c, LLMOPT_EINVAL, pos, "%s is not JSON serializable", type_name(v));
    }
}

static value eval_filter(ctx *c, frame *f, const expr *e) {
    const char *name = e->name;
    value v = eval(c, f, e->a);
    if (!strcmp(name, "trim")) {
        max_args(c, e, 1, "trim");
        return str_strip(to_str(c, v), 1, 1, arg(c, f, e, 0, "chars", v_none()));
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        max_args(c, e, 0, name);
        switch (v.t) {
        case V_UNDEF: return v_int(0);
        case V_STR: return v_int((int64_t)cp_count(v.u.s.p, v.u.s.n));
        case V_LIST: return v_int((int64_t)v.u.l->n);
        case V_DICT: return v_int((int64_t)v.u.d->n);
        default: fail(c, LLMOPT_EINVAL, e->pos, "object of type '%s' has no len()", type_name(v));
        }
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower")) {
        max_args(c, e, 0, name);
        return str_case(c, to_str(c, v), name[0] == 'u');
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        max_args(c, e, 2, name);
        value def = arg(c, f, e, 0, "default_value", v_str("", 0));
        int boolean = truthy(arg(c, f, e, 1, "boolean", v_bool(0)));
        return (v.t == V_UNDEF || (boolean && !truthy(v))) ? def : v;
    }
    if (!strcmp(name, "string")) {
        max_args(c, e, 0, name);
        return to_str(c, v);
    }
    if (!strcmp(name, "list")) {
        max_args(c, e, 0, name);
        value r = {.t = V_LIST};
        r.u.l = (vlist *)iter_list(c, v, e->pos);
        return r;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        max_args(c, e, 0, name);
        const vlist *l = iter_list(c, v, e->pos);
        if (!l->n) return v_undef();
        return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
    }
    if (!strcmp(name, "join")) {
        max_args(c, e, 1, name);
        value sep = to_str(c, arg(c, f, e, 0, "d", v_str("", 0)));
        const vlist *l = iter_list(c, v, e->pos);
        sbuf b = {0};
        sb_put(c, &b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            if (i) sb_put(c, &b, sep.u.s.p, sep.u.s.n);
            to_str_into(c, &b, l->v[i], 0);
        }
        return v_str(b.p, b.n);
    }
    if (!strcmp(name, "tojson")) {
        if (e->nargs) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "tojson with arguments");
        sbuf b = {0};
        sb_put(c, &b, "", 0);
        to_json(c, &b, v, e->pos);
        return v_str(b.p, b.n);
    }
    fail(c, LLMOPT_EUNSUPPORTED, e->pos, "the '%s' filter is not supported", name);
}

static value eval_test(ctx *c, frame *f, const expr *e) {
    const char *name = e->name;
    value v = eval(c, f, e->a);
    int r;
    if (!strcmp(name, "defined")) r = v.t != V_UNDEF;
    else if (!strcmp(name, "undefined")) r = v.t == V_UNDEF;
    else if (!strcmp(name, "none")) r = v.t == V_NONE;
    else if (!strcmp(name, "string")) r = v.t == V_STR;
    else if (!strcmp(name, "number") || !strcmp(name, "integer")) r = v.t == V_INT;
    else if (!strcmp(name, "boolean")) r = v.t == V_BOOL;
    else if (!strcmp(name, "true")) r = v.t == V_BOOL && v.u.b;
    else if (!strcmp(name, "false")) r = v.t == V_BOOL && !v.u.b;
    else if (!strcmp(name, "mapping")) r = v.t == V_DICT;
    else if (!strcmp(name, "sequence")) r = v.t == V_STR || v.t == V_LIST || v.t == V_DICT;
    else if (!strcmp(name, "iterable")) r = v.t == V_STR || v.t == V_LIST || v.t == V_DICT;
    else if (!strcmp(name, "even") || !strcmp(name, "odd")) {
        int64_t x = need_int(c, v, e->pos, name);
        r = (x % 2 == 0) == (name[0] == 'e');
    } else {
        fail(c, LLMOPT_EUNSUPPORTED, e->pos, "the '%s' test is not supported", name);
    }
    if (e->nargs) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "the '%s' test takes no argument", name);
    return v_bool(e->negate ? !r : r);
}

static value eval_method(ctx *c, frame *f, const expr *e) {
    value obj = eval(c, f, e->a);
    const char *m = e->name;
    if (obj.t == V_UNDEF) undefined_error(c, e->a, e->pos);
    if (obj.t == V_STR) {
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            max_args(c, e, 1, m);
            value chars = arg(c, f, e, 0, NULL, v_none());
            if (chars.t != V_NONE) need_str(c, chars, e->pos, m);
            return str_strip(obj, m[0] != 'r', m[0] != 'l', chars);
        }
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            max_args(c, e, 1, m);
            value p = arg(c, f, e, 0, NULL, v_undef());
            if (p.t == V_LIST) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "%s with a tuple", m);
            need_str(c, p, e->pos, m);
            if (p.u.s.n > obj.u.s.n) return v_bool(0);
            const char *at = m[0] == 's' ? obj.u.s.p : obj.u.s.p + obj.u.s.n - p.u.s.n;
            return v_bool(memcmp(at, p.u.s.p, p.u.s.n) == 0);
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower")) {
            max_args(c, e, 0, m);
            return str_case(c, obj, m[0] == 'u');
        }
        if (!strcmp(m, "replace")) {
            max_args(c, e, 3, m);
            value old = arg(c, f, e, 0, NULL, v_undef()), new = arg(c, f, e, 1, NULL, v_undef());
            need_str(c, old, e->pos, m);
            need_str(c, new, e->pos, m);
            int64_t count = need_int(c, arg(c, f, e, 2, NULL, v_int(-1)), e->pos, m);
            if (old.u.s.n == 0) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "replace of an empty string");
            sbuf b = {0};
            sb_put(c, &b, "", 0);
            size_t i = 0;
            while (i < obj.u.s.n) {
                if (count != 0 && i + old.u.s.n <= obj.u.s.n && memcmp(obj.u.s.p + i, old.u.s.p, old.u.s.n) == 0) {
                    sb_put(c, &b, new.u.s.p, new.u.s.n);
                    i += old.u.s.n;
                    if (count > 0) count--;
                } else {
                    sb_put(c, &b, obj.u.s.p + i, 1);
                    i++;
                }
            }
            return v_str(b.p, b.n);
        }
    } else if (obj.t == V_DICT && !strcmp(m, "get")) {
        max_args(c, e, 2, m);
        value k = arg(c, f, e, 0, NULL, v_undef());
        value def = arg(c, f, e, 1, NULL, v_none());
        value *v = k.t == V_STR ? dict_find(obj.u.d, k.u.s.p, k.u.s.n) : NULL;
        return v ? *v : def;
    }
    fail(c, LLMOPT_EUNSUPPORTED, e->pos, "the method '%s' of a %s is not supported", m, type_name(obj));
}

static value eval_call(ctx *c, frame *f, const expr *e) {
    const char *name = e->name;
    if (!strcmp(name, "raise_exception")) {
        value msg = to_str(c, arg(c, f, e, 0, NULL, v_str("", 0)));
        fail(c, LLMOPT_EINVAL, e->pos, "raise_exception: %.*s", (int)(msg.u.s.n > 700 ? 700 : msg.u.s.n), msg.u.s.p);
    }
    if (!strcmp(name, "range")) {
        max_args(c, e, 3, name);
        int64_t a = need_int(c, arg(c, f, e, 0, NULL, v_undef()), e->pos, "range");
        int64_t b = 0, s = 1;
        if (e->nargs >= 2) b = need_int(c, arg(c, f, e, 1, NULL, v_undef()), e->pos, "range");
        else b = a, a = 0;
        if (e->nargs == 3) s = need_int(c, arg(c, f, e, 2, NULL, v_undef()), e->pos, "range");
        if (s == 0) fail(c, LLMOPT_EINVAL, e->pos, "range() step must not be zero");
        int64_t n = s > 0 ? (b > a ? (b - a + s - 1) / s : 0) : (a > b ? (a - b - s - 1) / -s : 0);
        if (n > CHAT_MAX_RANGE) fail(c, LLMOPT_EFAIL, e->pos, "range of %" PRId64 " items (the limit is %d)", n, CHAT_MAX_RANGE);
        vlist *l = alloc(c, sizeof *l);
        l->n = (size_t)n;
        l->v = alloc(c, (size_t)(n ? n : 1) * sizeof *l->v);
        for (int64_t i = 0; i < n; i++) l->v[i] = v_int(a + i * s);
        value r = {.t = V_LIST};
        r.u.l = l;
        return r;
    }
    if (!strcmp(name, "namespace")) {
        vdict *d = alloc(c, sizeof *d);
        memset(d, 0, sizeof *d);
        for (size_t k = 0; k < e->nargs; k++) {
            if (!e->kw[k]) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "namespace() with positional arguments");
            dict_put(c, d, e->kw[k], eval(c, f, e->args[k]));
        }
        value r = {.t = V_DICT};
        r.u.d = d;
        return r;
    }
    if (!strcmp(name, "strftime_now")) { /* transformers' global: datetime.now().strftime(format) */
        max_args(c, e, 1, name);
        value fmt = arg(c, f, e, 0, "format", v_undef());
        need_str(c, fmt, e->pos, "strftime_now");
        char *fz = alloc(c, fmt.u.s.n + 1);
        memcpy(fz, fmt.u.s.p, fmt.u.s.n);
        fz[fmt.u.s.n] = '\0';
        time_t now = time(NULL);
        struct tm tm;
        if (!localtime_r(&now, &tm)) fail(c, LLMOPT_EFAIL, e->pos, "strftime_now: the local time is unknown");
        size_t cap = 256 + 16 * fmt.u.s.n;
        char *buf = alloc(c, cap);
        size_t k = strftime(buf, cap, fz, &tm); /* 0: an empty result (no code gives 16 bytes) */
        return v_str(buf, k);
    }
    fail(c, LLMOPT_EUNSUPPORTED, e->pos, "the function '%s' is not supported", name);
}

/* Long operator chains ("a + b + ... ") parse without recursion but evaluate with it. */
static value eval_node(ctx *c, frame *f, const expr *e);
static value eval(ctx *c, frame *f, const expr *e) {
    if (++c->edepth > CHAT_MAX_EVAL_DEPTH)
        fail(c, LLMOPT_EUNSUPPORTED, e->pos, "an expression nested deeper than %d", CHAT_MAX_EVAL_DEPTH);
    value v = eval_node(c, f, e);
    c->edepth--;
    return v;
}

static value eval_node(ctx *c, frame *f, const expr *e) {
    switch (e->k) {
    case E_LIT: return e->lit;
    case E_NAME: return lookup(f, e->name);
    case E_LIST: {
        vlist *l = alloc(c, sizeof *l);
        l->n = e->nargs;
        l->v = alloc(c, (l->n ? l->n : 1) * sizeof *l->v);
        for (size_t i = 0; i < e->nargs; i++) l->v[i] = eval(c, f, e->args[i]);
        value v = {.t = V_LIST};
        v.u.l = l;
        return v;
    }
    case E_ATTR: return get_attr(c, eval(c, f, e->a), e->name, e);
    case E_ITEM: {
        value obj = eval(c, f, e->a);
        return get_item(c, obj, eval(c, f, e->b), e);
    }
    case E_SLICE: return eval_slice(c, f, e);
    case E_CALL: return eval_call(c, f, e);
    case E_METHOD: return eval_method(c, f, e);
    case E_FILTER: return eval_filter(c, f, e);
    case E_TEST: return eval_test(c, f, e);
    case E_NOT: return v_bool(!truthy(eval(c, f, e->a)));
    case E_NEG: {
        int64_t x = need_int(c, eval(c, f, e->a), e->pos, "a unary sign");
        if (x == INT64_MIN) fail(c, LLMOPT_EUNSUPPORTED, e->pos, "integer overflow");
        return v_int(e->name[0] == '-' ? -x : x);
    }
    case E_BIN: {
        value a = eval(c, f, e->a);
        return eval_bin(c, e->name, a, eval(c, f, e->b), e->pos);
    }
    case E_AND: {
        value a = eval(c, f, e->a);
        return truthy(a) ? eval(c, f, e->b) : a;
    }
    case E_OR: {
        value a = eval(c, f, e->a);
        return truthy(a) ? a : eval(c, f, e->b);
    }
    case E_COND:
        if (truthy(eval(c, f, e->b))) return eval(c, f, e->a);
        return e->c ? eval(c, f, e->c) : v_undef();
    case E_CMP: {
        value a = eval(c, f, e->args[0]);
        for (size_t i = 1; i < e->nargs; i++) {
            value b = eval(c, f, e->args[i]);
            if (!compare(c, e->ops[i - 1], a, b, e->pos)) return v_bool(0);
            a = b;
        }
        return v_bool(1);
    }
    }
    return v_undef();
}

static void emit(ctx *c, const char *s, size_t n, size_t pos) {
    if (c->outlen + n > c->out_max)
        fail(c, LLMOPT_EFAIL, pos, "the rendering exceeds %zu MiB", c->out_max >> 20);
    if (c->outlen + n + 1 > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 4096;
        while (cap < c->outlen + n + 1) cap *= 2;
        char *p = realloc(c->out, cap);
        if (!p) {
            error_set(c->err, LLMOPT_ENOMEM, "chat template: out of memory");
            longjmp(c->jb, 1);
        }
        c->out = p;
        c->outcap = cap;
    }
    memcpy(c->out + c->outlen, s, n);
    c->outlen += n;
    c->out[c->outlen] = '\0';
}

static void step(ctx *c, size_t pos) {
    if (++c->steps > CHAT_MAX_STEPS)
        fail(c, LLMOPT_EFAIL, pos, "the template ran more than %u steps", CHAT_MAX_STEPS);
}

static void run_body(ctx *c, frame *f, const body *b);

static void run_node(ctx *c, frame *f, const node *n) {
    step(c, n->pos);
    switch (n->k) {
    case N_TEXT: emit(c, n->s, n->n, n->pos); break;
    case N_OUT: {
        value v = to_str(c, eval(c, f, n->e));
        emit(c, v.u.s.p, v.u.s.n, n->pos);
        break;
    }
    case N_IF:
        for (size_t i = 0; i < n->nconds; i++)
            if (truthy(eval(c, f, n->conds[i]))) {
                run_body(c, f, &n->bodies[i]);
                return;
            }
        run_body(c, f, &n->els);
        break;
    case N_FOR: {
        const vlist *items = iter_list(c, eval(c, f, n->e), n->pos);
        loopstate ls = {items, 0};
        value lv = {.t = V_LOOP};
        lv.u.loop = &ls;
        /* each iteration has its own scope: a set in the body does not outlive it; the scope's
         * storage is reused, so an iteration costs no memory */
        frame it = {f, {0, 0, NULL, NULL}};
        for (size_t i = 0; i < items->n; i++) {
            step(c, n->pos);
            it.vars.n = 0;
            ls.i = i;
            dict_put(c, &it.vars, "loop", lv);
            dict_put(c, &it.vars, n->s, items->v[i]);
            run_body(c, &it, &n->b);
            c->cont = 0;
            if (c->brk) {
                c->brk = 0;
                break;
            }
        }
        if (!items->n) run_body(c, f, &n->els);
        break;
    }
    case N_SET: {
        value v = eval(c, f, n->e);
        if (n->attr) {
            value ns = lookup(f, n->s);
            if (ns.t != V_DICT) fail(c, LLMOPT_EINVAL, n->pos, "cannot assign an attribute of '%s', which is not a namespace", n->s);
            dict_put(c, ns.u.d, n->attr, v);
        } else {
            dict_put(c, &f->vars, n->s, v);
        }
        break;
    }
    case N_BREAK: case N_CONTINUE: {
        int in_loop = 0;
        for (frame *p = f; p && !in_loop; p = p->parent) in_loop = dict_find(&p->vars, "loop", 4) && p->parent;
        if (!in_loop) fail(c, LLMOPT_EFORMAT, n->pos, "'%s' outside a loop", n->k == N_BREAK ? "break" : "continue");
        if (n->k == N_BREAK) c->brk = 1;
        else c->cont = 1;
        break;
    }
    }
}

static void run_body(ctx *c, frame *f, const body *b) {
    if (++c->depth > CHAT_MAX_DEPTH) fail(c, LLMOPT_EUNSUPPORTED, b->n ? b->v[0]->pos : 0, "nesting deeper than %d", CHAT_MAX_DEPTH);
    for (size_t i = 0; i < b->n && !c->brk && !c->cont; i++) run_node(c, f, b->v[i]);
    c->depth--;
}

/* ---- entry point ---- */

static void free_arena(arena_block *b) {
    while (b) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
}

int chat_render(const char *tmpl, const chat_message *msgs, size_t n, const char *bos, const char *eos,
                int add_generation_prompt, char **out, size_t *len, llmopt_error *err) {
    if (out) *out = NULL;
    if (len) *len = 0;
    if (!tmpl || !out || (n && !msgs))
        return error_set(err, LLMOPT_EINVAL, "chat_render: template, output and messages must not be NULL");
    size_t input = strlen(tmpl);
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return error_set(err, LLMOPT_EINVAL, "chat_render: message %zu has a NULL role or content", i);
        input += strlen(msgs[i].role) + strlen(msgs[i].content);
    }
    ctx *c = calloc(1, sizeof *c);
    if (!c) return error_set(err, LLMOPT_ENOMEM, "chat template: out of memory");
    llmopt_error local;
    c->err = err ? err : &local;
    c->mem_cap = CHAT_MEM_BASE + (input > SIZE_MAX / 64 ? SIZE_MAX / 4 : 16 * input);
    c->out_max = CHAT_OUT_BASE + (input > SIZE_MAX / 64 ? SIZE_MAX / 4 : 4 * input);
    int rc = 0;
    if (setjmp(c->jb) == 0) {
        /* Jinja reads "\r\n" and "\r" as "\n" and drops one trailing newline */
        size_t tn = strlen(tmpl), k = 0;
        char *src = alloc(c, tn + 1);
        for (size_t i = 0; i < tn; i++) {
            if (tmpl[i] == '\r') {
                src[k++] = '\n';
                if (i + 1 < tn && tmpl[i + 1] == '\n') i++;
            } else {
                src[k++] = tmpl[i];
            }
        }
        if (k && src[k - 1] == '\n') k--;
        src[k] = '\0';
        c->src = src;
        c->srclen = k;
        lex(c);
        body top = {0};
        parse_body(c, &top, NULL, NULL);

        vlist *ml = alloc(c, sizeof *ml);
        ml->n = n;
        ml->v = alloc(c, (n ? n : 1) * sizeof *ml->v);
        for (size_t i = 0; i < n; i++) {
            vdict *d = alloc(c, sizeof *d);
            memset(d, 0, sizeof *d);
            dict_put(c, d, "role", v_cstr(msgs[i].role));
            dict_put(c, d, "content", v_cstr(msgs[i].content));
            ml->v[i].t = V_DICT;
            ml->v[i].u.d = d;
        }
        frame g = {NULL, {0, 0, NULL, NULL}};
        value mv = {.t = V_LIST};
        mv.u.l = ml;
        dict_put(c, &g.vars, "messages", mv);
        if (bos) dict_put(c, &g.vars, "bos_token", v_cstr(bos));
        if (eos) dict_put(c, &g.vars, "eos_token", v_cstr(eos));
        dict_put(c, &g.vars, "add_generation_prompt", v_bool(add_generation_prompt));
        dict_put(c, &g.vars, "tools", v_none());
        dict_put(c, &g.vars, "documents", v_none());
        /* the functions are defined names, as in transformers' environment ("strftime_now is
         * defined" picks Llama 3.1's dated system header) */
        static const char *const funcs[] = {"raise_exception", "range", "namespace", "strftime_now"};
        for (size_t i = 0; i < sizeof funcs / sizeof funcs[0]; i++) {
            value fv = {.t = V_FUNC};
            fv.u.s.p = funcs[i], fv.u.s.n = strlen(funcs[i]);
            dict_put(c, &g.vars, funcs[i], fv);
        }
        c->depth = 0;
        run_body(c, &g, &top);
        emit(c, "", 0, 0); /* makes out non-NULL for an empty rendering */
        *out = c->out;
        if (len) *len = c->outlen;
        c->out = NULL;
    } else {
        rc = c->err->status ? c->err->status : LLMOPT_EFAIL;
    }
    free(c->out);
    free_arena(c->arena);
    free(c);
    return rc;
}
