/* The tokenizer's parts, shared by tokenizer_load.c (tokenizer.json -> these structs) and
 * tokenizer.c (encode/decode). Not part of any public interface. */
#ifndef HOST_RUNTIME_TOKENIZER_INTERNAL_H
#define HOST_RUNTIME_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* A growable byte string. */
typedef struct tok_buf {
    char *p;
    size_t n, cap;
} tok_buf;

int tok_buf_add(tok_buf *b, const void *s, size_t n);
void tok_buf_free(tok_buf *b);

/* Open-addressing hash map from byte strings (copied into its own arena) to two int32 values. */
typedef struct tok_map_entry {
    uint32_t off, len; /* key in keys.p; len == UINT32_MAX marks an empty slot */
    uint32_t hash;
    int32_t a, b;
} tok_map_entry;

typedef struct tok_map {
    tok_buf keys;
    tok_map_entry *e;
    size_t cap, count; /* cap is a power of two */
} tok_map;

/* Returns the entry for key, or NULL. */
const tok_map_entry *tok_map_get(const tok_map *m, const char *key, size_t len);
/* Inserts or overwrites; 0 or LLMOPT_ENOMEM. */
int tok_map_put(tok_map *m, const char *key, size_t len, int32_t a, int32_t b);
void tok_map_free(tok_map *m);

/* BPE merges: (left id, right id) -> (rank, merged id). */
typedef struct tok_merge {
    uint64_t key; /* left << 32 | right; UINT64_MAX marks an empty slot */
    uint32_t rank;
    int32_t id;
} tok_merge;

typedef struct tok_merges {
    tok_merge *e;
    size_t cap, count;
} tok_merges;

const tok_merge *tok_merges_get(const tok_merges *m, int32_t left, int32_t right);
int tok_merges_put(tok_merges *m, int32_t left, int32_t right, uint32_t rank, int32_t id);

/* The end of the GPT-2 pre-tokenizer match that starts at s[i] (i < n), the split of tokenizers'
 * ByteLevel pre-tokenizer with use_regex (Radford et al. 2019, encoder.py):
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Shared by the encoder (tokenizer.c) and the trainer (tokenizer_train.c). */
size_t tok_gpt2_next(const unsigned char *s, size_t n, size_t i);
/* The code point GPT-2's bytes_to_unicode gives byte b (0..255): b itself for printable Latin-1,
 * else 256, 257, ... in byte order (so every code point is below 324). */
uint32_t tok_byte_cp(unsigned b);

enum { TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_NFC, TOK_NORM_NFD };
typedef struct tok_normalizer {
    int kind;
    char *a, *b; /* prepend: a; replace: pattern a, content b; NFC, NFD: neither */
} tok_normalizer;

enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
/* The Split pre-tokenizer regex of Llama 3 (tiktoken's cl100k pattern) and of Qwen2, which
 * has \p{N} where Llama 3 has \p{N}{1,3}: the two runnable Split patterns. */
#define TOK_LLAMA3_REGEX                                                                                          \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define TOK_QWEN2_REGEX                                                                                           \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"      \
    "\\s+(?!\\S)|\\s+"

/* The end of the match of that pattern starting at s[i] (i < n), digits 3 for Llama 3's, 1 for
 * Qwen2's. As tok_gpt2_next, a match starts at every i. */
size_t tok_llama3_next(const unsigned char *s, size_t n, size_t i, int digits);
/* The case-aware Split regexes: Mistral's tekken (Mistral NeMo and later) and GPT-4o's o200k,
 * which has contractions after words and numbers in threes. */
#define TOK_TEKKEN_REGEX                                                                                      \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"                   \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"                   \
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define TOK_O200K_REGEX                                                                                       \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"                    \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"                                                                          \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"                    \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"                                                                          \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* The end of the match of a case-aware pattern at s[i] (i < n): contractions 1 and digits 3 for
 * o200k's, 0 and 1 for tekken's. A match starts at every i. */
size_t tok_cased_next(const unsigned char *s, size_t n, size_t i, int contractions, int digits);

enum { TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE, TOK_PRE_SPLIT, TOK_PRE_DIGITS };
typedef struct tok_pretok {
    int kind;
    int add_prefix_space, use_regex; /* ByteLevel */
    char *replacement;               /* Metaspace */
    int prepend_scheme, split;
    int digits;                      /* Split: tok_llama3_next's or tok_cased_next's */
    int cased, contractions;         /* Split: tok_cased_next (tekken, o200k) */
    int individual;                  /* Digits: each digit its own piece (else runs of them) */
} tok_pretok;

enum {
    TOK_DEC_BYTELEVEL, TOK_DEC_METASPACE, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE,
    TOK_DEC_STRIP, TOK_DEC_BPE
};
typedef struct tok_decoder {
    int kind;
    char *a, *b;       /* Metaspace: replacement a; Replace: pattern a, content b; Strip: content a;
                          BPEDecoder: suffix a */
    int start, stop;   /* Strip */
    int prepend_scheme;/* Metaspace */
} tok_decoder;

/* A post-processor step: prefix ids + the sequence + suffix ids (TemplateProcessing "single",
 * RobertaProcessing, BertProcessing). ByteLevel post-processing changes no ids and is dropped. */
typedef struct tok_post {
    int32_t *pre, *post;
    size_t n_pre, n_post;
} tok_post;

typedef struct tok_added {
    char *content;
    size_t len;
    int32_t id;
    int special, single_word, lstrip, rstrip, normalized;
} tok_added;

struct tok_tokenizer {
    char *path; /* tokenizer.json, for messages */
    /* id -> token string (NULL for an unused id) */
    char **tokens;
    uint32_t *token_len;
    size_t n_ids;
    tok_map vocab; /* model.vocab: token -> id */
    tok_map added_map;
    tok_merges merges;
    int32_t unk_id;
    int fuse_unk, byte_fallback, ignore_merges;
    char *cont_prefix, *eow_suffix; /* NULL when unset */
    int32_t byte_ids[256];          /* <0xXX> tokens, -1 if absent */

    tok_added *added;
    size_t n_added;
    /* sorted by first byte, longest first: those starting with byte c are added[first[c] ..
     * first[c + 1]) */
    uint32_t first[257];
    int has_normalized_added;
    unsigned char *is_special; /* per id */

    tok_normalizer *norms;
    size_t n_norms;
    tok_pretok *pres;
    size_t n_pres;
    tok_decoder *decs;
    size_t n_decs;
    int has_decoder; /* 0: tokens are joined with " ", as tokenizers does without a decoder */
    tok_post *posts;
    size_t n_posts;

    int byte_level;          /* a ByteLevel pre-tokenizer maps bytes to the GPT-2 alphabet */
    char bl_map[256][2];     /* byte -> its code point in UTF-8 (1 or 2 bytes) */
    uint8_t bl_len[256];
    int16_t bl_rev[324];     /* code point -> byte, -1 if not in the alphabet */

    int32_t bos, eos;
    int32_t *eos_ids;
    size_t n_eos_ids;
    int add_bos, add_eos;
    char *chat_template;
};

#endif
