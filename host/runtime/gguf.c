/* GGUF (ggml's docs/gguf.md): header "GGUF", u32 version, u64 tensor count, u64 metadata count;
 * metadata (key string, u32 type, value); tensor infos (name, u32 n_dims, u64 ne[n_dims], u32 ggml
 * type, u64 offset from the data section); padding to general.alignment; the data. All
 * little-endian; strings are a u64 length and bytes, no NUL. This file parses and validates such a
 * buffer, loads a GPT-2/Llama file into the runtime's Hugging Face form, and writes one. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch.h"
#include "kquant.h"
#include "mapping.h"
#include "../util/log.h"
#include "runtime.h"
#include "tokenizer_internal.h"

/* ---- ggml tensor types: one table (block of `block` elements takes `size` bytes) ---- */

typedef struct ggml_type_info {
    const char *name;  /* NULL: ggml defines no type with this id (removed or never used) */
    uint32_t block, size;
    int dtype;         /* the llmopt dtype, -1 when llmopt has none */
} ggml_type_info;

static const ggml_type_info ggml_types[] = {
    [0] = {"f32", 1, 4, LLMOPT_DTYPE_F32},       [1] = {"f16", 1, 2, LLMOPT_DTYPE_F16},
    [2] = {"q4_0", 32, 18, LLMOPT_DTYPE_Q4_0},   [3] = {"q4_1", 32, 20, LLMOPT_DTYPE_Q4_1},
    [6] = {"q5_0", 32, 22, -1},                  [7] = {"q5_1", 32, 24, -1},
    [8] = {"q8_0", 32, 34, LLMOPT_DTYPE_Q8_0},   [9] = {"q8_1", 32, 36, -1},
    [10] = {"q2_k", 256, 84, -1},                [11] = {"q3_k", 256, 110, -1},
    [12] = {"q4_k", 256, 144, -1},               [13] = {"q5_k", 256, 176, -1},
    [14] = {"q6_k", 256, 210, -1},               [15] = {"q8_k", 256, 292, -1},
    [16] = {"iq2_xxs", 256, 66, -1},             [17] = {"iq2_xs", 256, 74, -1},
    [18] = {"iq3_xxs", 256, 98, -1},             [19] = {"iq1_s", 256, 50, -1},
    [20] = {"iq4_nl", 32, 18, -1},               [21] = {"iq3_s", 256, 110, -1},
    [22] = {"iq2_s", 256, 82, -1},               [23] = {"iq4_xs", 256, 136, -1},
    [24] = {"i8", 1, 1, LLMOPT_DTYPE_I8},        [25] = {"i16", 1, 2, -1},
    [26] = {"i32", 1, 4, LLMOPT_DTYPE_I32},      [27] = {"i64", 1, 8, LLMOPT_DTYPE_I64},
    [28] = {"f64", 1, 8, -1},                    [29] = {"iq1_m", 256, 56, -1},
    [30] = {"bf16", 1, 2, LLMOPT_DTYPE_BF16},    [34] = {"tq1_0", 256, 54, -1},
    [35] = {"tq2_0", 256, 66, -1},               [39] = {"mxfp4", 32, 17, -1},
    [40] = {"nvfp4", 64, 36, -1},                [41] = {"q1_0", 128, 18, -1},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

static const ggml_type_info *ggml_type(uint32_t t) {
    return t < N_GGML_TYPES && ggml_types[t].name ? &ggml_types[t] : NULL;
}

const char *gguf_ggml_type_name(uint32_t type) {
    const ggml_type_info *ti = ggml_type(type);
    return ti ? ti->name : NULL;
}

static int ggml_from_dtype(int dtype) {
    for (uint32_t t = 0; t < N_GGML_TYPES; t++)
        if (ggml_types[t].name && ggml_types[t].dtype == dtype) return (int)t;
    return -1;
}

/* Bytes of scalar values of each metadata type (0: string/array). */
static const uint8_t value_size[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const value_type_name[GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
    "uint64", "int64", "float64"};

/* ---- the parsed file ---- */

typedef struct gguf_kv {
    char *key;
    int type;
    int arr_type;          /* arrays: element type */
    uint64_t n;            /* arrays: element count */
    const uint8_t *p;      /* scalars and numeric arrays: the value bytes; strings: the length */
    char *str;             /* string scalars: NUL-terminated copy */
    size_t str_len;
    const uint8_t **elems; /* string arrays: each element's length field */
} gguf_kv;

struct gguf_file {
    uint32_t version;
    size_t alignment, data_off;
    gguf_kv *kv;
    size_t n_kv;
    gguf_tensor_info *t;
    char **t_names;
    size_t n_t;
};

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A cursor over the buffer; every read is checked against its end. */
typedef struct rd {
    const char *file;
    const uint8_t *b;
    size_t len, pos;
    llmopt_error *err;
} rd;

static int need(rd *r, uint64_t n, const char *what, const char *whose) {
    if (n <= r->len - r->pos) return 0;
    return error_set(r->err, LLMOPT_EFORMAT, "%s: %s%s%s (%llu bytes at offset %zu) goes beyond the end of the file (%zu bytes)",
                     r->file, whose ? whose : "", whose ? ": " : "", what, (unsigned long long)n, r->pos, r->len);
}

static int rd_u32(rd *r, uint32_t *v, const char *what, const char *whose) {
    if (need(r, 4, what, whose)) return LLMOPT_EFORMAT;
    *v = (uint32_t)le(r->b + r->pos, 4);
    r->pos += 4;
    return 0;
}

static int rd_u64(rd *r, uint64_t *v, const char *what, const char *whose) {
    if (need(r, 8, what, whose)) return LLMOPT_EFORMAT;
    *v = le(r->b + r->pos, 8);
    r->pos += 8;
    return 0;
}

/* A string: *p points at its bytes, *n its length. */
static int rd_str(rd *r, const uint8_t **p, uint64_t *n, const char *what, const char *whose) {
    int rc = rd_u64(r, n, what, whose);
    if (rc) return rc;
    char w[96];
    snprintf(w, sizeof w, "%s of %llu bytes", what, (unsigned long long)*n);
    if (need(r, *n, w, whose)) return LLMOPT_EFORMAT;
    *p = r->b + r->pos;
    r->pos += (size_t)*n;
    return 0;
}

static int fail(llmopt_error *err, int status) { return err ? err->status : status; }

/* One value of type `type` for key `key` (type already known to be < GGUF_TYPE_COUNT). */
static int parse_value(rd *r, gguf_kv *kv) {
    char whose[160];
    snprintf(whose, sizeof whose, "key '%.120s'", kv->key);
    kv->p = r->b + r->pos;
    if (kv->type == GGUF_TYPE_STRING) {
        const uint8_t *s;
        uint64_t n;
        if (rd_str(r, &s, &n, "string value", whose)) return LLMOPT_EFORMAT;
        if (!(kv->str = malloc((size_t)n + 1))) return error_set(r->err, LLMOPT_ENOMEM, "%s: out of memory", r->file);
        memcpy(kv->str, s, (size_t)n);
        kv->str[n] = '\0';
        kv->str_len = (size_t)n;
        return 0;
    }
    if (kv->type != GGUF_TYPE_ARRAY) {
        if (need(r, value_size[kv->type], value_type_name[kv->type], whose)) return LLMOPT_EFORMAT;
        if (kv->type == GGUF_TYPE_BOOL && r->b[r->pos] > 1)
            return error_set(r->err, LLMOPT_EFORMAT, "%s: %s: bool value %u is neither 0 nor 1", r->file, whose, r->b[r->pos]);
        r->pos += value_size[kv->type];
        return 0;
    }
    uint32_t at;
    if (rd_u32(r, &at, "array type", whose) || rd_u64(r, &kv->n, "array length", whose)) return LLMOPT_EFORMAT;
    if (at >= GGUF_TYPE_COUNT)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: %s: array of unknown type %u", r->file, whose, at);
    if (at == GGUF_TYPE_ARRAY)
        return error_set(r->err, LLMOPT_EUNSUPPORTED, "%s: %s: arrays of arrays are not supported", r->file, whose);
    kv->arr_type = (int)at;
    kv->p = r->b + r->pos;
    if (at != GGUF_TYPE_STRING) {
        uint64_t room = (r->len - r->pos) / value_size[at];
        if (kv->n > room)
            return error_set(r->err, LLMOPT_EFORMAT, "%s: %s: array of %llu %s values goes beyond the end of the file (%zu bytes)",
                             r->file, whose, (unsigned long long)kv->n, value_type_name[at], r->len);
        if (at == GGUF_TYPE_BOOL)
            for (uint64_t j = 0; j < kv->n; j++)
                if (kv->p[j] > 1)
                    return error_set(r->err, LLMOPT_EFORMAT, "%s: %s: element %llu: bool value %u is neither 0 nor 1",
                                     r->file, whose, (unsigned long long)j, kv->p[j]);
        r->pos += (size_t)kv->n * value_size[at];
        return 0;
    }
    if (kv->n > (r->len - r->pos) / 8)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: %s: array of %llu strings goes beyond the end of the file (%zu bytes)",
                         r->file, whose, (unsigned long long)kv->n, r->len);
    if (!(kv->elems = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *kv->elems)))
        return error_set(r->err, LLMOPT_ENOMEM, "%s: out of memory", r->file);
    for (uint64_t j = 0; j < kv->n; j++) {
        const uint8_t *s;
        uint64_t n;
        kv->elems[j] = r->b + r->pos;
        char what[64];
        snprintf(what, sizeof what, "string %llu", (unsigned long long)j);
        if (rd_str(r, &s, &n, what, whose)) return LLMOPT_EFORMAT;
    }
    return 0;
}

static int cmp_strp(const void *a, const void *b) {
    return strcmp(**(const char *const *const *)a, **(const char *const *const *)b);
}

/* Finds a duplicate among n names (pointers to the name pointers); NULL if none. */
static const char *find_duplicate(char **names, size_t stride_bytes, size_t n) {
    const char ***idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx) return NULL;
    for (size_t i = 0; i < n; i++) idx[i] = (const char **)((char *)names + i * stride_bytes);
    qsort(idx, n, sizeof *idx, cmp_strp);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(*idx[i], *idx[i - 1]) == 0) dup = *idx[i];
    free(idx);
    return dup;
}

static int parse_kvs(rd *r, gguf_file *f) {
    for (size_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        const uint8_t *k;
        uint64_t kn;
        char what[64];
        snprintf(what, sizeof what, "metadata key %zu", i);
        if (rd_str(r, &k, &kn, what, NULL)) return LLMOPT_EFORMAT;
        if (kn == 0 || kn > 65535 || memchr(k, 0, (size_t)kn))
            return error_set(r->err, LLMOPT_EFORMAT, "%s: metadata key %zu is empty, longer than 65535 bytes or holds a NUL",
                             r->file, i);
        if (!(kv->key = malloc((size_t)kn + 1))) return error_set(r->err, LLMOPT_ENOMEM, "%s: out of memory", r->file);
        memcpy(kv->key, k, (size_t)kn);
        kv->key[kn] = '\0';
        uint32_t type;
        char whose[160];
        snprintf(whose, sizeof whose, "key '%.120s'", kv->key);
        if (rd_u32(r, &type, "value type", whose)) return LLMOPT_EFORMAT;
        if (type >= GGUF_TYPE_COUNT)
            return error_set(r->err, LLMOPT_EFORMAT, "%s: key '%s': unknown value type %u", r->file, kv->key, type);
        kv->type = (int)type;
        int rc = parse_value(r, kv);
        if (rc) return fail(r->err, rc);
    }
    const char *dup = find_duplicate(&f->kv[0].key, sizeof f->kv[0], f->n_kv);
    if (dup) return error_set(r->err, LLMOPT_EFORMAT, "%s: key '%s' appears twice", r->file, dup);
    long a = gguf_find_key(f, "general.alignment");
    if (a >= 0) {
        uint64_t v = 0;
        if (f->kv[a].type != GGUF_TYPE_UINT32 || (v = le(f->kv[a].p, 4)) == 0 || (v & (v - 1)) != 0)
            return error_set(r->err, LLMOPT_EFORMAT, "%s: key 'general.alignment' must be a uint32 power of two", r->file);
        f->alignment = (size_t)v;
    }
    return 0;
}

static void format_ne(char *buf, size_t size, uint32_t n, const uint64_t *ne) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (uint32_t d = 0; d < n && k < size; d++)
        k += (size_t)snprintf(buf + k, size - k, "%s%llu", d ? ", " : "", (unsigned long long)ne[d]);
    if (k < size) snprintf(buf + k, size - k, "]");
}

static int parse_tensor_info(rd *r, gguf_file *f, size_t i) {
    gguf_tensor_info *t = &f->t[i];
    const uint8_t *s;
    uint64_t n;
    char what[64];
    snprintf(what, sizeof what, "name of tensor %zu", i);
    if (rd_str(r, &s, &n, what, NULL)) return LLMOPT_EFORMAT;
    if (n == 0 || n > 64 || memchr(s, 0, (size_t)n))
        return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor %zu: name is empty, longer than 64 bytes or holds a NUL",
                         r->file, i);
    if (!(f->t_names[i] = malloc((size_t)n + 1))) return error_set(r->err, LLMOPT_ENOMEM, "%s: out of memory", r->file);
    memcpy(f->t_names[i], s, (size_t)n);
    f->t_names[i][n] = '\0';
    t->name = f->t_names[i];
    char whose[96];
    snprintf(whose, sizeof whose, "tensor '%s'", t->name);
    if (rd_u32(r, &t->n_dims, "n_dims", whose)) return LLMOPT_EFORMAT;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor '%s': n_dims %u is outside 1..%d", r->file, t->name,
                         t->n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        if (rd_u64(r, &t->ne[d], "dims", whose)) return LLMOPT_EFORMAT;
    uint64_t off;
    if (rd_u32(r, &t->type, "type", whose) || rd_u64(r, &off, "offset", whose)) return LLMOPT_EFORMAT;
    const ggml_type_info *ti = ggml_type(t->type);
    if (!ti) return error_set(r->err, LLMOPT_EUNSUPPORTED, "%s: tensor '%s': unknown ggml type %u", r->file, t->name, t->type);
    char dims[128];
    format_ne(dims, sizeof dims, t->n_dims, t->ne);
    if (t->ne[0] % ti->block != 0)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor '%s': row length %llu is not a multiple of the %s block of %u",
                         r->file, t->name, (unsigned long long)t->ne[0], ti->name, ti->block);
    /* numel * size / block below PTRDIFF_MAX, so offsets and sums below stay representable */
    const uint64_t limit = (uint64_t)PTRDIFF_MAX;
    uint64_t numel = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] != 0 && numel > limit / t->ne[d])
            return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor '%s': dims %s are too large", r->file, t->name, dims);
        numel *= t->ne[d];
    }
    uint64_t nblocks = numel / ti->block;
    if (nblocks != 0 && ti->size > limit / nblocks)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor '%s': dims %s are too large", r->file, t->name, dims);
    t->nbytes = (size_t)(nblocks * ti->size);
    if (off % f->alignment != 0)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor '%s': offset %llu is not a multiple of the alignment %zu",
                         r->file, t->name, (unsigned long long)off, f->alignment);
    if (off > limit) return error_set(r->err, LLMOPT_EFORMAT, "%s: tensor '%s': offset %llu is too large", r->file, t->name,
                                      (unsigned long long)off);
    t->offset = (size_t)off;  /* relative until the data section is known */
    return 0;
}

static int cmp_offset(const void *a, const void *b) {
    const gguf_tensor_info *x = *(const gguf_tensor_info *const *)a, *y = *(const gguf_tensor_info *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Every tensor's bytes inside the data section, none overlapping another's. */
static int check_data(rd *r, gguf_file *f) {
    /* even empty tensors point into the data section, so it must start inside the file */
    if (f->n_t > 0 && f->data_off > r->len)
        return error_set(r->err, LLMOPT_EFORMAT, "%s: the data section (aligned to %zu) starts at byte %zu, beyond the "
                         "end of the file (%zu bytes)", r->file, f->alignment, f->data_off, r->len);
    size_t data_len = f->data_off <= r->len ? r->len - f->data_off : 0;
    for (size_t i = 0; i < f->n_t; i++) {
        gguf_tensor_info *t = &f->t[i];
        if (t->offset > data_len || t->nbytes > data_len - t->offset)
            return error_set(r->err, LLMOPT_EFORMAT,
                             "%s: tensor '%s': data [%zu, %llu) goes beyond the data section's %zu bytes", r->file, t->name,
                             t->offset, (unsigned long long)t->offset + t->nbytes, data_len);
    }
    const gguf_tensor_info **by = malloc((f->n_t ? f->n_t : 1) * sizeof *by);
    if (!by) return error_set(r->err, LLMOPT_ENOMEM, "%s: out of memory", r->file);
    for (size_t i = 0; i < f->n_t; i++) by[i] = &f->t[i];
    qsort(by, f->n_t, sizeof *by, cmp_offset);
    int rc = 0;
    const gguf_tensor_info *prev = NULL;
    for (size_t i = 0; i < f->n_t && !rc; i++) {
        if (by[i]->nbytes == 0) continue;
        if (prev && by[i]->offset < prev->offset + prev->nbytes)
            rc = error_set(r->err, LLMOPT_EFORMAT, "%s: tensors '%s' and '%s' overlap (data bytes [%zu, %zu) and [%zu, %zu))",
                           r->file, prev->name, by[i]->name, prev->offset, prev->offset + prev->nbytes, by[i]->offset,
                           by[i]->offset + by[i]->nbytes);
        prev = by[i];
    }
    free(by);
    for (size_t i = 0; i < f->n_t && !rc; i++) f->t[i].offset += f->data_off;
    return rc;
}

void gguf_file_free(gguf_file *f) {
    if (!f) return;
    for (size_t i = 0; f->kv && i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].str);
        free(f->kv[i].elems);
    }
    for (size_t i = 0; f->t_names && i < f->n_t; i++) free(f->t_names[i]);
    free(f->kv);
    free(f->t);
    free(f->t_names);
    free(f);
}

int gguf_parse(const char *name, const uint8_t *buf, size_t len, gguf_file **out, llmopt_error *err) {
    *out = NULL;
    if (!name) name = "gguf";
    rd r = {name, buf, len, 0, err};
    if (len < 24)
        return error_set(err, LLMOPT_EFORMAT, "%s: header is %zu bytes, GGUF needs 24 (magic, version, counts)", name, len);
    if (memcmp(buf, "GGUF", 4) != 0)
        return error_set(err, LLMOPT_EFORMAT, "%s: bad magic %02x %02x %02x %02x (a GGUF file starts with \"GGUF\")", name,
                         buf[0], buf[1], buf[2], buf[3]);
    uint32_t version = (uint32_t)le(buf + 4, 4);
    if (version == 0x02000000u || version == 0x03000000u)
        return error_set(err, LLMOPT_EUNSUPPORTED, "%s: version: a big-endian GGUF file, which is not supported", name);
    if (version != 2 && version != 3)
        return error_set(err, LLMOPT_EUNSUPPORTED, "%s: version: GGUF version %u is not supported (2 or 3)", name, version);
    uint64_t n_t = le(buf + 8, 8), n_kv = le(buf + 16, 8);
    r.pos = 24;
    /* smallest key-value: 8-byte length, 1-byte key, type, 1-byte value; tensor info: 8 + 1 + 4 + 8 + 4 + 8 */
    if (n_kv > (len - r.pos) / 14)
        return error_set(err, LLMOPT_EFORMAT, "%s: metadata_kv_count %llu cannot fit in the file's %zu bytes", name,
                         (unsigned long long)n_kv, len);
    if (n_t > (len - r.pos) / 33)
        return error_set(err, LLMOPT_EFORMAT, "%s: tensor_count %llu cannot fit in the file's %zu bytes", name,
                         (unsigned long long)n_t, len);
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) return error_set(err, LLMOPT_ENOMEM, "%s: out of memory", name);
    f->version = version;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    f->n_kv = (size_t)n_kv;
    f->n_t = (size_t)n_t;
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->t = calloc(f->n_t ? f->n_t : 1, sizeof *f->t);
    f->t_names = calloc(f->n_t ? f->n_t : 1, sizeof *f->t_names);
    int rc = f->kv && f->t && f->t_names ? 0 : error_set(err, LLMOPT_ENOMEM, "%s: out of memory", name);
    if (!rc) rc = parse_kvs(&r, f);
    for (size_t i = 0; !rc && i < f->n_t; i++) rc = parse_tensor_info(&r, f, i);
    if (!rc) {
        const char *dup = find_duplicate(f->t_names, sizeof *f->t_names, f->n_t);
        if (dup) rc = error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s' appears twice", name, dup);
    }
    if (!rc) {
        f->data_off = r.pos + (f->alignment - r.pos % f->alignment) % f->alignment;
        rc = check_data(&r, f);
    }
    if (rc) {
        gguf_file_free(f);
        return err ? err->status : rc;
    }
    *out = f;
    return 0;
}

/* ---- accessors ---- */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
size_t gguf_alignment(const gguf_file *f) { return f->alignment; }
size_t gguf_data_offset(const gguf_file *f) { return f->data_off; }
size_t gguf_n_kv(const gguf_file *f) { return f->n_kv; }
const char *gguf_kv_key(const gguf_file *f, size_t i) { return i < f->n_kv ? f->kv[i].key : NULL; }
int gguf_kv_type(const gguf_file *f, size_t i) { return i < f->n_kv ? f->kv[i].type : -1; }
size_t gguf_n_tensors(const gguf_file *f) { return f->n_t; }
const gguf_tensor_info *gguf_tensor(const gguf_file *f, size_t i) { return i < f->n_t ? &f->t[i] : NULL; }

long gguf_find_key(const gguf_file *f, const char *key) {
    for (size_t i = 0; i < f->n_kv; i++)
        if (strcmp(f->kv[i].key, key) == 0) return (long)i;
    return -1;
}

long gguf_find_tensor(const gguf_file *f, const char *name) {
    for (size_t i = 0; i < f->n_t; i++)
        if (strcmp(f->t[i].name, name) == 0) return (long)i;
    return -1;
}

/* A numeric value of type `type` at p, as an integer (is_int) or a double. */
static void number_at(int type, const uint8_t *p, int64_t *iv, uint64_t *uv, double *dv, int *is_int) {
    *is_int = 1;
    switch (type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_BOOL: *uv = p[0]; *iv = (int64_t)*uv; break;
    case GGUF_TYPE_INT8: *iv = (int8_t)p[0]; break;
    case GGUF_TYPE_UINT16: *uv = le(p, 2); *iv = (int64_t)*uv; break;
    case GGUF_TYPE_INT16: *iv = (int16_t)le(p, 2); break;
    case GGUF_TYPE_UINT32: *uv = le(p, 4); *iv = (int64_t)*uv; break;
    case GGUF_TYPE_INT32: *iv = (int32_t)le(p, 4); break;
    case GGUF_TYPE_UINT64: *uv = le(p, 8); *iv = (int64_t)*uv; break;
    case GGUF_TYPE_INT64: *iv = (int64_t)le(p, 8); break;
    case GGUF_TYPE_FLOAT32: {
        uint32_t b = (uint32_t)le(p, 4);
        float x;
        memcpy(&x, &b, 4);
        *dv = x;
        *is_int = 0;
        return;
    }
    case GGUF_TYPE_FLOAT64: {
        uint64_t b = le(p, 8);
        memcpy(dv, &b, 8);
        *is_int = 0;
        return;
    }
    default: *is_int = -1; return;
    }
    if (type != GGUF_TYPE_UINT64 && type != GGUF_TYPE_UINT8 && type != GGUF_TYPE_UINT16 && type != GGUF_TYPE_UINT32 &&
        type != GGUF_TYPE_BOOL)
        *uv = *iv < 0 ? 0 : (uint64_t)*iv;
    *dv = type == GGUF_TYPE_UINT64 ? (double)*uv : (double)*iv;
}

static int get_num(int type, const uint8_t *p, int want, uint64_t *u, int64_t *i, double *d) {
    int64_t iv = 0;
    uint64_t uv = 0;
    double dv = 0;
    int is_int;
    number_at(type, p, &iv, &uv, &dv, &is_int);
    if (is_int < 0) return -1;
    if (want == 'd') {
        *d = dv;
        return 0;
    }
    if (!is_int) return -1;
    if (want == 'u') {
        if (iv < 0 && type != GGUF_TYPE_UINT64) return -1;
        *u = uv;
    } else {
        if (type == GGUF_TYPE_UINT64 && uv > (uint64_t)INT64_MAX) return -1;
        *i = iv;
    }
    return 0;
}

int gguf_get_u64(const gguf_file *f, size_t i, uint64_t *v) {
    return i < f->n_kv ? get_num(f->kv[i].type, f->kv[i].p, 'u', v, NULL, NULL) : -1;
}
int gguf_get_i64(const gguf_file *f, size_t i, int64_t *v) {
    return i < f->n_kv ? get_num(f->kv[i].type, f->kv[i].p, 'i', NULL, v, NULL) : -1;
}
int gguf_get_f64(const gguf_file *f, size_t i, double *v) {
    return i < f->n_kv ? get_num(f->kv[i].type, f->kv[i].p, 'd', NULL, NULL, v) : -1;
}

const char *gguf_get_str(const gguf_file *f, size_t i, size_t *len) {
    if (i >= f->n_kv || f->kv[i].type != GGUF_TYPE_STRING) return NULL;
    if (len) *len = f->kv[i].str_len;
    return f->kv[i].str;
}

int gguf_arr_type(const gguf_file *f, size_t i) {
    return i < f->n_kv && f->kv[i].type == GGUF_TYPE_ARRAY ? f->kv[i].arr_type : GGUF_TYPE_COUNT;
}
size_t gguf_arr_n(const gguf_file *f, size_t i) {
    return i < f->n_kv && f->kv[i].type == GGUF_TYPE_ARRAY ? (size_t)f->kv[i].n : 0;
}

int gguf_arr_f64(const gguf_file *f, size_t i, size_t j, double *v) {
    int at = gguf_arr_type(f, i);
    if (at >= GGUF_TYPE_COUNT || at == GGUF_TYPE_STRING || j >= f->kv[i].n) return -1;
    return get_num(at, f->kv[i].p + j * value_size[at], 'd', NULL, NULL, v);
}
int gguf_arr_i64(const gguf_file *f, size_t i, size_t j, int64_t *v) {
    int at = gguf_arr_type(f, i);
    if (at >= GGUF_TYPE_COUNT || at == GGUF_TYPE_STRING || j >= f->kv[i].n) return -1;
    return get_num(at, f->kv[i].p + j * value_size[at], 'i', NULL, v, NULL);
}
const char *gguf_arr_str(const gguf_file *f, size_t i, size_t j, size_t *len) {
    if (gguf_arr_type(f, i) != GGUF_TYPE_STRING || j >= f->kv[i].n) return NULL;
    *len = (size_t)le(f->kv[i].elems[j], 8);
    return (const char *)f->kv[i].elems[j] + 8;
}

/* ---- HF <-> GGUF names (llama.cpp's tensor names; convert_hf_to_gguf.py's transforms) ---- */

enum { X_NONE, X_PERMUTE_Q, X_PERMUTE_K, X_TRANSPOSE };
typedef struct name_map {
    const char *gguf, *hf;  /* hf: arch_tensor_name's `what` (GPT-2 without "transformer.") */
    int xform;
} name_map;

static const name_map llama_global[] = {
    {"token_embd.weight", "model.embed_tokens.weight", X_NONE},
    {"output_norm.weight", "model.norm.weight", X_NONE},
    {"output.weight", "lm_head.weight", X_NONE},
};
static const name_map llama_layer[] = {
    {"attn_norm.weight", "input_layernorm.weight", X_NONE},
    {"attn_q.weight", "self_attn.q_proj.weight", X_PERMUTE_Q}, {"attn_q.bias", "self_attn.q_proj.bias", X_PERMUTE_Q},
    {"attn_k.weight", "self_attn.k_proj.weight", X_PERMUTE_K}, {"attn_k.bias", "self_attn.k_proj.bias", X_PERMUTE_K},
    {"attn_v.weight", "self_attn.v_proj.weight", X_NONE},      {"attn_v.bias", "self_attn.v_proj.bias", X_NONE},
    {"attn_output.weight", "self_attn.o_proj.weight", X_NONE}, {"attn_output.bias", "self_attn.o_proj.bias", X_NONE},
    {"ffn_norm.weight", "post_attention_layernorm.weight", X_NONE},
    {"ffn_gate.weight", "mlp.gate_proj.weight", X_NONE},       {"ffn_gate.bias", "mlp.gate_proj.bias", X_NONE},
    {"ffn_up.weight", "mlp.up_proj.weight", X_NONE},           {"ffn_up.bias", "mlp.up_proj.bias", X_NONE},
    {"ffn_down.weight", "mlp.down_proj.weight", X_NONE},       {"ffn_down.bias", "mlp.down_proj.bias", X_NONE},
};
static const name_map gpt2_global[] = {
    {"token_embd.weight", "wte.weight", X_NONE},    {"position_embd.weight", "wpe.weight", X_NONE},
    {"output_norm.weight", "ln_f.weight", X_NONE},  {"output_norm.bias", "ln_f.bias", X_NONE},
    {"output.weight", "lm_head.weight", X_NONE},
};
static const name_map gpt2_layer[] = {
    {"attn_norm.weight", "ln_1.weight", X_NONE},           {"attn_norm.bias", "ln_1.bias", X_NONE},
    {"attn_qkv.weight", "attn.c_attn.weight", X_TRANSPOSE}, {"attn_qkv.bias", "attn.c_attn.bias", X_NONE},
    {"attn_output.weight", "attn.c_proj.weight", X_TRANSPOSE}, {"attn_output.bias", "attn.c_proj.bias", X_NONE},
    {"ffn_norm.weight", "ln_2.weight", X_NONE},            {"ffn_norm.bias", "ln_2.bias", X_NONE},
    {"ffn_up.weight", "mlp.c_fc.weight", X_TRANSPOSE},     {"ffn_up.bias", "mlp.c_fc.bias", X_NONE},
    {"ffn_down.weight", "mlp.c_proj.weight", X_TRANSPOSE}, {"ffn_down.bias", "mlp.c_proj.bias", X_NONE},
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* llama.cpp runs Llama's rope on adjacent pairs (ggml rope mode 0), transformers rotates halves;
 * its converter reorders the rows of each q/k head from [x0..x(D/2-1), y0..] to [x0, y0, x1, y1, ...]
 * (convert_hf_to_gguf.py, LlamaModel.permute). rows = n_head * D rows of row_bytes each. */
static void permute_rows(uint8_t *dst, const uint8_t *src, int64_t rows, int64_t n_head, size_t row_bytes, int inverse) {
    int64_t D = rows / n_head, half = D / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t j = 0; j < half; j++)
            for (int64_t s = 0; s < 2; s++) {
                int64_t hf = h * D + s * half + j, gg = h * D + 2 * j + s;
                int64_t to = inverse ? hf : gg, from = inverse ? gg : hf;
                memcpy(dst + (size_t)to * row_bytes, src + (size_t)from * row_bytes, row_bytes);
            }
}

/* dst[c][r] = src[r][c] for an R x C matrix of esize-byte elements. */
static void transpose(uint8_t *dst, const uint8_t *src, int64_t R, int64_t C, size_t esize) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++)
            memcpy(dst + ((size_t)c * (size_t)R + (size_t)r) * esize, src + ((size_t)r * (size_t)C + (size_t)c) * esize, esize);
}

/* ---- loading: a refcounted read-only mapping that the untransformed tensors point into ---- */

typedef struct ld {
    const char *path;
    const gguf_file *f;
    const uint8_t *base;
    const char *arch;  /* "llama", "qwen2" or "gpt2" */
    int llama;         /* llama or qwen2: Llama's blocks and names */
    llmopt_error *err;
} ld;

/* {arch}.suffix as an unsigned integer: 0 and *out set, 1 when absent, <0 on a wrong type. */
static int key_uint(ld *l, const char *suffix, uint64_t *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", l->arch, suffix);
    long i = gguf_find_key(l->f, key);
    if (i < 0) return 1;
    if (gguf_get_u64(l->f, (size_t)i, out) != 0 || *out > (uint64_t)INT32_MAX)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s' must be a non-negative integer (of %s type)", l->path, key,
                         gguf_kv_type(l->f, (size_t)i) == GGUF_TYPE_ARRAY ? "a scalar, not an array" : "an integer");
    return 0;
}

static int key_float(ld *l, const char *suffix, double *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", l->arch, suffix);
    long i = gguf_find_key(l->f, key);
    if (i < 0) return 1;
    if (gguf_get_f64(l->f, (size_t)i, out) != 0)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s' must be a number", l->path, key);
    return 0;
}

/* A required count: stored in cfg[name]. */
static int cfg_uint(ld *l, json_t *cfg, const char *suffix, const char *name, int required, uint64_t dflt, uint64_t *out) {
    uint64_t v = dflt;
    int rc = key_uint(l, suffix, &v);
    if (rc < 0) return rc;
    if (rc == 1 && required)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: missing key '%s.%s'", l->path, l->arch, suffix);
    if (out) *out = v;
    if (name) json_object_set_new(cfg, name, json_integer((json_int_t)v));
    return 0;
}

/* The config.json values of the {arch}.* keys (transformers' LlamaConfig / GPT2Config names). */
static int build_config(ld *l, json_t *cfg, int tied, int64_t vocab, uint64_t *n_layer, uint64_t *n_head, uint64_t *n_kv) {
    uint64_t C = 0, ctx, ff, kl = 0;
    double eps = 0;
    int rc, is_llama = l->llama, qwen2 = strcmp(l->arch, "qwen2") == 0;
    json_object_set_new(cfg, "model_type", json_string(l->arch));
    json_t *archs = json_array();
    json_array_append_new(archs, json_string(qwen2 ? "Qwen2ForCausalLM" : is_llama ? "LlamaForCausalLM" : "GPT2LMHeadModel"));
    json_object_set_new(cfg, "architectures", archs);
    json_object_set_new(cfg, "vocab_size", json_integer(vocab));
    json_object_set_new(cfg, "tie_word_embeddings", json_boolean(tied));
    if ((rc = cfg_uint(l, cfg, "embedding_length", is_llama ? "hidden_size" : "n_embd", 1, 0, &C)) ||
        (rc = cfg_uint(l, cfg, "block_count", is_llama ? "num_hidden_layers" : "n_layer", 1, 0, n_layer)) ||
        (rc = cfg_uint(l, cfg, "attention.head_count", is_llama ? "num_attention_heads" : "n_head", 1, 0, n_head)) ||
        (rc = cfg_uint(l, cfg, "context_length", is_llama ? "max_position_embeddings" : "n_positions", 0,
                       is_llama ? 2048 : 1024, &ctx)) ||
        (rc = cfg_uint(l, cfg, "feed_forward_length", is_llama ? "intermediate_size" : "n_inner", is_llama, 4 * C, &ff)))
        return rc;
    if (*n_head == 0) return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s.attention.head_count' is 0", l->path, l->arch);
    if (!is_llama) {
        json_object_set_new(cfg, "n_ctx", json_integer((json_int_t)ctx));
        json_object_set_new(cfg, "activation_function", json_string("gelu_new"));
        if ((rc = key_float(l, "attention.layer_norm_epsilon", &eps)) < 0) return rc;
        json_object_set_new(cfg, "layer_norm_epsilon", json_real(rc == 1 ? 1e-5 : eps));
        *n_kv = *n_head;
        return 0;
    }
    if ((rc = cfg_uint(l, cfg, "attention.head_count_kv", "num_key_value_heads", 0, *n_head, n_kv))) return rc;
    if ((rc = key_uint(l, "attention.key_length", &kl)) < 0) return rc;
    uint64_t D = rc == 0 ? kl : C / *n_head, rot = D;
    if (qwen2 && D * *n_head != C) /* transformers' Qwen2 takes its head size from hidden / heads */
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: key 'qwen2.attention.key_length' is %llu, not hidden / heads "
                         "(%llu), which a Qwen2 model cannot express", l->path, (unsigned long long)D,
                         (unsigned long long)(C / *n_head));
    json_object_set_new(cfg, "head_dim", json_integer((json_int_t)D));
    if ((rc = key_uint(l, "rope.dimension_count", &rot)) < 0) return rc;
    if (rot != D)
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: key '%s.rope.dimension_count' is %llu, not the head size %llu "
                         "(partial rotary embeddings are not supported)", l->path, l->arch, (unsigned long long)rot,
                         (unsigned long long)D);
    if ((rc = key_float(l, "attention.layer_norm_rms_epsilon", &eps)) < 0) return rc;
    json_object_set_new(cfg, "rms_norm_eps", json_real(rc == 1 ? 1e-5 : eps));
    double theta = 10000.0, factor = 1.0;
    if ((rc = key_float(l, "rope.freq_base", &theta)) < 0) return rc;
    json_object_set_new(cfg, "rope_theta", json_real(theta));
    json_object_set_new(cfg, "hidden_act", json_string("silu"));
    char sk[64];
    snprintf(sk, sizeof sk, "%s.rope.scaling.type", l->arch);
    long st = gguf_find_key(l->f, sk);
    const char *type = st >= 0 ? gguf_get_str(l->f, (size_t)st, NULL) : NULL;
    if (st >= 0 && !type) return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s' must be a string", l->path, sk);
    if ((rc = key_float(l, type ? "rope.scaling.factor" : "rope.scale_linear", &factor)) < 0) return rc;
    if (type && strcmp(type, "none") != 0 && strcmp(type, "linear") != 0)
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: key '%s' is '%s' (none or linear are supported)", l->path, sk, type);
    if ((!type || strcmp(type, "linear") == 0) && rc == 0 && factor != 1.0) {
        if (!(factor > 0)) return error_set(l->err, LLMOPT_EFORMAT, "%s: the rope scaling factor must be positive", l->path);
        json_t *rs = json_object();
        json_object_set_new(rs, "type", json_string("linear"));
        json_object_set_new(rs, "factor", json_real(factor));
        json_object_set_new(cfg, "rope_scaling", rs);
    }
    return 0;
}

/* ---- loading: rope_freqs.weight as transformers' llama3 rope_scaling ---- */

static int llama3_matches(const double *div, int n, float theta, int D, double F, double lo, double hi, double ctx) {
    double want[ARCH_ROPE_MAX_FREQ];
    arch_rope_llama3_divisors(theta, D, F, lo, hi, ctx, want);
    for (int i = 0; i < n; i++)
        if (!(fabs(want[i] - div[i]) <= 1e-4 * div[i])) return 0;
    return 1;
}

/* llama.cpp's converter turns Llama 3.1's rope_scaling into rope_freqs.weight, the divisor of
 * each pair's frequency: 1 for short wavelengths w, the factor F for long ones, and between
 * them 1 / ((1 - s) / F + s) with s = (ctx / w - lo) / (hi - lo). The file keeps only the
 * divisors, so this finds (lo, hi, ctx) that give them back: Llama 3's own (1, 4, 8192) if
 * they fit, else a fit of s, which is linear in 1 / w, over the pairs on the ramp (only the
 * ratios ctx / lo and ctx / hi matter). Divisors no llama3 scaling gives are refused. */
static int rope_freqs_scaling(ld *l, json_t *cfg, long idx) {
    const gguf_tensor_info *ti = gguf_tensor(l->f, (size_t)idx);
    const int D = (int)json_integer_value(json_object_get(cfg, "head_dim")), n = D / 2;
    const float theta = (float)json_number_value(json_object_get(cfg, "rope_theta"));
    if (ti->type != GGML_TYPE_F32 || ti->n_dims != 1 || n < 1 || n > ARCH_ROPE_MAX_FREQ || ti->ne[0] != (uint64_t)n)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: tensor 'rope_freqs.weight' must be %d f32 values (half the head size)",
                         l->path, n);
    if (json_object_get(cfg, "rope_scaling"))
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: tensor 'rope_freqs.weight' together with linear rope scaling "
                         "is not supported", l->path);
    double div[ARCH_ROPE_MAX_FREQ], w[ARCH_ROPE_MAX_FREQ], F = 0;
    for (int i = 0; i < n; i++) {
        float v;
        memcpy(&v, l->base + ti->offset + 4 * (size_t)i, 4);
        div[i] = v;
        w[i] = 2.0 * 3.14159265358979323846 / arch_rope_base_freq(theta, D, i);
        if (!(v >= 1.0f - 1e-6f) || !isfinite(v))
            return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: tensor 'rope_freqs.weight': factor %d is %g; llama3 rope "
                             "scaling's are 1 or more", l->path, i, v);
        if (div[i] > F) F = div[i];
    }
    if (F <= 1.0 + 1e-6) return 0; /* every pair as it is: no scaling */
    /* the pairs: 1 (short wavelengths), then the ramp, then F (long), as w grows with i */
    int last_one = -1, first_f = n, n_ramp = 0;
    double su = 0, ss = 0, suu = 0, sus = 0, one_s_u = 0, one_s_s = 0;
    for (int i = 0; i < n; i++) {
        if (fabs(div[i] - 1.0) <= 1e-6) last_one = i;
        else if (fabs(div[i] - F) <= 1e-6 * F) { if (first_f == n) first_f = i; }
        else { /* s from 1 / div = (1 - s) / F + s, against u = 1 / w */
            double sm = (1.0 / div[i] - 1.0 / F) / (1.0 - 1.0 / F), u = 1.0 / w[i];
            su += u, ss += sm, suu += u * u, sus += u * sm, n_ramp++;
            one_s_u = u, one_s_s = sm;
        }
    }
    double lo = 1.0, hi = 4.0, ctx = 8192.0;
    if (!llama3_matches(div, n, theta, D, F, lo, hi, ctx)) {
        double L, r; /* ctx / lo and hi / lo */
        if (n_ramp >= 2) { /* s = a u + b, a = L / (r - 1), b = -1 / (r - 1) */
            double a = (n_ramp * sus - su * ss) / (n_ramp * suu - su * su), b = (ss - a * su) / n_ramp;
            r = 1.0 - 1.0 / b, L = a * (r - 1.0);
        } else if (n_ramp == 1) { /* with r = 4, as Llama 3 */
            r = 4.0, L = (3.0 * one_s_s + 1.0) / one_s_u;
        } else if (last_one >= 0 && first_f < n) { /* a ramp between two pairs */
            double gap = w[first_f] / w[last_one];
            r = sqrt(gap), L = w[first_f] / pow(gap, 0.25);
        } else {
            r = 0, L = 0;
        }
        ctx = round(L);
        int fits = r > 1.0 && ctx >= 1.0 && isfinite(L) && ctx <= 1e9;
        lo = fits ? ctx / L : 0, hi = lo * r;
    }
    if (!(lo > 0) || !llama3_matches(div, n, theta, D, F, lo, hi, ctx))
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: tensor 'rope_freqs.weight' holds rope factors that llama3 rope "
                         "scaling does not give; llmopt runs no other kind", l->path);
    json_t *rs = json_object();
    json_object_set_new(rs, "rope_type", json_string("llama3"));
    json_object_set_new(rs, "factor", json_real(F));
    json_object_set_new(rs, "low_freq_factor", json_real(lo));
    json_object_set_new(rs, "high_freq_factor", json_real(hi));
    json_object_set_new(rs, "original_max_position_embeddings", json_integer((json_int_t)ctx));
    json_object_set_new(cfg, "rope_scaling", rs);
    return 0;
}

/* ---- loading: tokenizer.json rebuilt from tokenizer.ggml.* ---- */

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* Index of tokenizer key `key` if present with the given type (array element type when arr), -1 if
 * absent, or an error. */
static int tok_key(ld *l, const char *key, int type, int arr, long *idx) {
    *idx = gguf_find_key(l->f, key);
    if (*idx < 0) return 0;
    int t = arr ? gguf_arr_type(l->f, (size_t)*idx) : gguf_kv_type(l->f, (size_t)*idx);
    int ok = t == type || (type == GGUF_TYPE_INT32 && (t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT64 || t == GGUF_TYPE_UINT64 ||
                                                       t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_UINT16 ||
                                                       t == GGUF_TYPE_INT16)) ||
             (type == GGUF_TYPE_FLOAT32 && t == GGUF_TYPE_FLOAT64);
    if (!ok)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s' must be %s%s", l->path, key, arr ? "an array of " : "a ",
                         type == GGUF_TYPE_INT32 ? "integers" : value_type_name[type]);
    return 0;
}

/* A special token id key: -1 when absent. */
static int tok_id(ld *l, const char *key, size_t n_tokens, int64_t *id) {
    long i;
    int rc = tok_key(l, key, GGUF_TYPE_INT32, 0, &i);
    *id = -1;
    if (rc || i < 0) return rc;
    if (gguf_get_i64(l->f, (size_t)i, id) != 0 || *id < 0 || (uint64_t)*id >= n_tokens)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s' is not the id of one of the %zu tokens", l->path, key, n_tokens);
    return 0;
}

static int tok_bool(ld *l, const char *key, int dflt) {
    long i = gguf_find_key(l->f, key);
    uint64_t v;
    if (i < 0 || gguf_kv_type(l->f, (size_t)i) != GGUF_TYPE_BOOL || gguf_get_u64(l->f, (size_t)i, &v) != 0) return dflt;
    return (int)v;
}

static json_t *str_obj(const char *k1, const char *v1) {
    json_t *o = json_object();
    json_object_set_new(o, k1, json_string(v1));
    return o;
}

/* {"type": type} plus the given string/bool fields. */
static json_t *typed(const char *type) { return str_obj("type", type); }

static json_t *byte_level(int use_regex, int add_prefix_space) {
    json_t *o = typed("ByteLevel");
    json_object_set_new(o, "add_prefix_space", json_boolean(add_prefix_space));
    json_object_set_new(o, "trim_offsets", json_true());
    json_object_set_new(o, "use_regex", json_boolean(use_regex));
    return o;
}

/* A Sequence pre-tokenizer of a then b (taking both). */
static json_t *pretok_pair(json_t *a, json_t *b) {
    json_t *seq = typed("Sequence"), *ps = json_array();
    json_array_append_new(ps, a);
    json_array_append_new(ps, b);
    json_object_set_new(seq, "pretokenizers", ps);
    return seq;
}

static json_t *replace(const char *from, const char *to) {
    json_t *o = typed("Replace");
    json_object_set_new(o, "pattern", str_obj("String", from));
    json_object_set_new(o, "content", json_string(to));
    return o;
}

static json_t *pair(json_t *a, json_t *b) {
    json_t *x = json_array();
    json_array_append_new(x, a);
    json_array_append_new(x, b);
    return x;
}

/* tokenizers' TemplateProcessing piece: {"SpecialToken": {"id": tok, "type_id": t}}. */
static json_t *tmpl_piece(const char *kind, const char *id, int type_id) {
    json_t *in = json_object(), *o = json_object();
    json_object_set_new(in, "id", json_string(id));
    json_object_set_new(in, "type_id", json_integer(type_id));
    json_object_set_new(o, kind, in);
    return o;
}

/* "<bos> $A <eos>" with either end optional (NULL). */
static json_t *template_processing(const char *bos, int64_t bos_id, const char *eos, int64_t eos_id) {
    json_t *single = json_array(), *pr = json_array(), *sp = json_object();
    for (int seq = 0; seq < 2; seq++) {
        json_t *dst = seq ? pr : single;
        for (int part = 0; part <= seq; part++) {
            if (bos) json_array_append_new(dst, tmpl_piece("SpecialToken", bos, part));
            json_array_append_new(dst, tmpl_piece("Sequence", part ? "B" : "A", part));
            if (eos) json_array_append_new(dst, tmpl_piece("SpecialToken", eos, part));
        }
    }
    for (int k = 0; k < 2; k++) {
        const char *t = k ? eos : bos;
        if (!t) continue;
        json_t *e = json_object(), *ids = json_array(), *toks = json_array();
        json_array_append_new(ids, json_integer(k ? eos_id : bos_id));
        json_array_append_new(toks, json_string(t));
        json_object_set_new(e, "id", json_string(t));
        json_object_set_new(e, "ids", ids);
        json_object_set_new(e, "tokens", toks);
        json_object_set_new(sp, t, e);
    }
    json_t *o = typed("TemplateProcessing");
    json_object_set_new(o, "single", single);
    json_object_set_new(o, "pair", pr);
    json_object_set_new(o, "special_tokens", sp);
    return o;
}

typedef struct merge_cand {
    double score;
    size_t tok, split;
} merge_cand;

static int cmp_cand(const void *a, const void *b) {
    const merge_cand *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->tok != y->tok) return x->tok < y->tok ? -1 : 1;
    return x->split < y->split ? -1 : x->split > y->split;
}

/* SentencePiece-style vocabularies carry scores, not merges: every split of a token into two
 * vocabulary pieces becomes a merge ranked by the token's score (higher first), as transformers'
 * GGUF and SentencePiece converters do. An approximation of SentencePiece's BPE: ties and merges
 * that SentencePiece would never reach can make rare encodings differ. */
static int merges_from_scores(ld *l, long itok, long iscore, long itype, json_t *vocab, json_t *merges) {
    size_t n = gguf_arr_n(l->f, (size_t)itok), cap = 0, nc = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        gguf_arr_str(l->f, (size_t)itok, i, &len);
        cap += len;
    }
    merge_cand *c = malloc((cap ? cap : 1) * sizeof *c);
    if (!c) return error_set(l->err, LLMOPT_ENOMEM, "%s: out of memory", l->path);
    for (size_t i = 0; i < n; i++) {
        int64_t type = TT_NORMAL;
        if (itype >= 0) gguf_arr_i64(l->f, (size_t)itype, i, &type);
        if (type != TT_NORMAL && type != TT_USER_DEFINED) continue;
        size_t len = 0;
        const char *s = gguf_arr_str(l->f, (size_t)itok, i, &len);
        double score = 0;
        gguf_arr_f64(l->f, (size_t)iscore, i, &score);
        for (size_t k = 1; k < len; k++) {
            if (((unsigned char)s[k] & 0xc0) == 0x80) continue;  /* inside a UTF-8 sequence */
            if (json_object_getn(vocab, s, k) && json_object_getn(vocab, s + k, len - k)) c[nc++] = (merge_cand){score, i, k};
        }
    }
    qsort(c, nc, sizeof *c, cmp_cand);
    for (size_t j = 0; j < nc; j++) {
        size_t len = 0;
        const char *s = gguf_arr_str(l->f, (size_t)itok, c[j].tok, &len);
        json_array_append_new(merges, pair(json_stringn(s, c[j].split), json_stringn(s + c[j].split, len - c[j].split)));
    }
    free(c);
    return 0;
}

static int set_json_file(ld *l, llmopt_model *m, const char *name, json_t *j) {
    char *text = json_dumps(j, JSON_INDENT(1));
    int rc = text && rt_model_set_file(m, name, text, strlen(text)) == 0 ? 0
                                                                          : error_set(l->err, LLMOPT_ENOMEM, "%s: out of memory", l->path);
    free(text);
    return rc;
}

/* tokenizer.json, tokenizer_config.json and generation_config.json from tokenizer.ggml.*, and
 * bos/eos ids into cfg. A file without tokenizer.ggml.model gets none (run it with --ids). */
static int rebuild_tokenizer(ld *l, llmopt_model *m, json_t *cfg) {
    long im = gguf_find_key(l->f, "tokenizer.ggml.model"), itok, itype, iscore, imerge, ipre, itmpl;
    if (im < 0) return 0;
    const char *kind = gguf_get_str(l->f, (size_t)im, NULL);
    if (!kind) return error_set(l->err, LLMOPT_EFORMAT, "%s: key 'tokenizer.ggml.model' must be a string", l->path);
    int spm = strcmp(kind, "llama") == 0;
    if (!spm && strcmp(kind, "gpt2") != 0) {
        if (strcmp(kind, "none") != 0 && strcmp(kind, "no_vocab") != 0)
            log_msg(LLMOPT_LOG_WARN, "%s: tokenizer.ggml.model '%s' is not supported (gpt2, llama): no tokenizer, run it "
                    "with token ids", l->path, kind);
        return 0;
    }
    int rc;
    if ((rc = tok_key(l, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, 1, &itok)) ||
        (rc = tok_key(l, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, 1, &itype)) ||
        (rc = tok_key(l, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, 1, &iscore)) ||
        (rc = tok_key(l, "tokenizer.ggml.merges", GGUF_TYPE_STRING, 1, &imerge)) ||
        (rc = tok_key(l, "tokenizer.ggml.pre", GGUF_TYPE_STRING, 0, &ipre)) ||
        (rc = tok_key(l, "tokenizer.chat_template", GGUF_TYPE_STRING, 0, &itmpl)))
        return rc;
    if (itok < 0) return error_set(l->err, LLMOPT_EFORMAT, "%s: missing key 'tokenizer.ggml.tokens'", l->path);
    size_t n = gguf_arr_n(l->f, (size_t)itok);
    const char *sized[] = {"tokenizer.ggml.token_type", "tokenizer.ggml.scores"};
    long sidx[] = {itype, iscore};
    for (int k = 0; k < 2; k++)
        if (sidx[k] >= 0 && gguf_arr_n(l->f, (size_t)sidx[k]) != n)
            return error_set(l->err, LLMOPT_EFORMAT, "%s: key '%s' has %zu entries, tokenizer.ggml.tokens %zu", l->path,
                             sized[k], gguf_arr_n(l->f, (size_t)sidx[k]), n);
    if (!spm && imerge < 0) return error_set(l->err, LLMOPT_EFORMAT, "%s: missing key 'tokenizer.ggml.merges' (a gpt2 tokenizer needs it)", l->path);
    if (spm && imerge < 0 && iscore < 0)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: a llama tokenizer needs 'tokenizer.ggml.scores' or 'tokenizer.ggml.merges'", l->path);
    int64_t bos, eos, unk;
    if ((rc = tok_id(l, "tokenizer.ggml.bos_token_id", n, &bos)) || (rc = tok_id(l, "tokenizer.ggml.eos_token_id", n, &eos)) ||
        (rc = tok_id(l, "tokenizer.ggml.unknown_token_id", n, &unk)))
        return rc;
    const char *pre = ipre >= 0 ? gguf_get_str(l->f, (size_t)ipre, NULL) : "default";
    int llama3 = strcmp(pre, "llama-bpe") == 0 || strcmp(pre, "llama3") == 0, qwen2 = strcmp(pre, "qwen2") == 0;
    int smollm = strcmp(pre, "smollm") == 0 || strcmp(pre, "starcoder") == 0; /* \p{N} alone, then GPT-2's */
    int tekken = strcmp(pre, "tekken") == 0, o200k = strcmp(pre, "gpt-4o") == 0 || strcmp(pre, "llama4") == 0;
    if (!spm && !llama3 && !qwen2 && !smollm && !tekken && !o200k && strcmp(pre, "gpt-2") != 0 &&
        strcmp(pre, "default") != 0)
        log_msg(LLMOPT_LOG_WARN, "%s: tokenizer.ggml.pre '%s' is read as GPT-2's pre-tokenizer, an approximation", l->path, pre);
    int add_bos = tok_bool(l, "tokenizer.ggml.add_bos_token", spm), add_eos = tok_bool(l, "tokenizer.ggml.add_eos_token", 0);
    int add_space = tok_bool(l, "tokenizer.ggml.add_space_prefix", 1);

    json_t *vocab = json_object(), *added = json_array(), *merges = json_array();
    const char *tok_str[3] = {NULL, NULL, NULL};  /* bos, eos, unk as NUL-terminated strings (vocab keys) */
    for (size_t i = 0; i < n && !rc; i++) {
        size_t len = 0;
        const char *s = gguf_arr_str(l->f, (size_t)itok, i, &len);
        int64_t type = TT_NORMAL;
        if (itype >= 0) gguf_arr_i64(l->f, (size_t)itype, i, &type);
        if (type == TT_UNUSED) continue;
        json_t *content = json_stringn(s, len);
        if (!content) {
            rc = error_set(l->err, LLMOPT_EFORMAT, "%s: key 'tokenizer.ggml.tokens': token %zu is not valid UTF-8", l->path, i);
            break;
        }
        if (!json_object_getn(vocab, s, len)) json_object_setn_new(vocab, s, len, json_integer((json_int_t)i));
        if (type == TT_CONTROL || type == TT_USER_DEFINED || type == TT_UNKNOWN) {
            json_t *a = json_object();
            json_object_set_new(a, "id", json_integer((json_int_t)i));
            json_object_set(a, "content", content);
            json_object_set_new(a, "single_word", json_false());
            json_object_set_new(a, "lstrip", json_false());
            json_object_set_new(a, "rstrip", json_false());
            json_object_set_new(a, "normalized", json_false());
            json_object_set_new(a, "special", json_boolean(type != TT_USER_DEFINED));
            json_array_append_new(added, a);
        }
        json_decref(content);  /* vocab keys and added tokens keep their own copies */
    }
    int64_t ids[3] = {bos, eos, unk};
    char *names[3] = {NULL, NULL, NULL};
    for (int k = 0; k < 3 && !rc; k++) {
        size_t len = 0;
        if (ids[k] < 0) continue;
        const char *s = gguf_arr_str(l->f, (size_t)itok, (size_t)ids[k], &len);
        if (memchr(s, 0, len) || !(names[k] = strndup(s, len))) continue;
        tok_str[k] = names[k];
    }
    if (!rc && imerge >= 0) {
        for (size_t j = 0; j < gguf_arr_n(l->f, (size_t)imerge) && !rc; j++) {
            size_t len = 0;
            const char *s = gguf_arr_str(l->f, (size_t)imerge, j, &len);
            json_t *x = json_stringn(s, len);
            if (!x) rc = error_set(l->err, LLMOPT_EFORMAT, "%s: key 'tokenizer.ggml.merges': merge %zu is not valid UTF-8", l->path, j);
            else json_array_append_new(merges, x);
        }
    } else if (!rc) {
        rc = merges_from_scores(l, itok, iscore, itype, vocab, merges);
    }

    json_t *model = typed("BPE");
    json_object_set_new(model, "dropout", json_null());
    json_object_set_new(model, "unk_token", spm && tok_str[2] ? json_string(tok_str[2]) : json_null());
    json_object_set_new(model, "continuing_subword_prefix", json_null());
    json_object_set_new(model, "end_of_word_suffix", json_null());
    json_object_set_new(model, "fuse_unk", json_boolean(spm));
    json_object_set_new(model, "byte_fallback", json_boolean(spm));
    json_object_set_new(model, "ignore_merges", json_boolean(llama3 || tekken)); /* as llama.cpp reads them */
    json_object_set_new(model, "vocab", vocab);
    json_object_set_new(model, "merges", merges);

    json_t *root = json_object();
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens", added);
    const char *bos_s = add_bos ? tok_str[0] : NULL, *eos_s = add_eos ? tok_str[1] : NULL;
    if (spm) {
        json_t *norm = typed("Sequence"), *ns = json_array(), *dec = typed("Sequence"), *ds = json_array();
        if (add_space) {
            json_t *p = typed("Prepend");
            json_object_set_new(p, "prepend", json_string("\xe2\x96\x81"));
            json_array_append_new(ns, p);
        }
        json_array_append_new(ns, replace(" ", "\xe2\x96\x81"));
        json_object_set_new(norm, "normalizers", ns);
        json_array_append_new(ds, replace("\xe2\x96\x81", " "));
        json_array_append_new(ds, typed("ByteFallback"));
        json_array_append_new(ds, typed("Fuse"));
        if (add_space) {
            json_t *st = typed("Strip");
            json_object_set_new(st, "content", json_string(" "));
            json_object_set_new(st, "start", json_integer(1));
            json_object_set_new(st, "stop", json_integer(0));
            json_array_append_new(ds, st);
        }
        json_object_set_new(dec, "decoders", ds);
        json_object_set_new(root, "normalizer", norm);
        json_object_set_new(root, "pre_tokenizer", json_null());
        json_object_set_new(root, "post_processor", bos_s || eos_s ? template_processing(bos_s, bos, eos_s, eos) : json_null());
        json_object_set_new(root, "decoder", dec);
    } else {
        /* Qwen2's tokenizer.json (and transformers' GGUF conversion of it) normalizes to NFC */
        json_object_set_new(root, "normalizer", qwen2 ? typed("NFC") : json_null());
        if (llama3 || qwen2 || tekken || o200k) {
            json_t *split = typed("Split");
            json_object_set_new(split, "pattern", str_obj("Regex", qwen2    ? TOK_QWEN2_REGEX
                                                                   : tekken ? TOK_TEKKEN_REGEX
                                                                   : o200k  ? TOK_O200K_REGEX
                                                                            : TOK_LLAMA3_REGEX));
            json_object_set_new(split, "behavior", json_string("Isolated"));
            json_object_set_new(split, "invert", json_false());
            json_object_set_new(root, "pre_tokenizer", pretok_pair(split, byte_level(0, 0)));
        } else if (smollm) {
            json_t *digits = typed("Digits");
            json_object_set_new(digits, "individual_digits", json_true());
            json_object_set_new(root, "pre_tokenizer", pretok_pair(digits, byte_level(1, 0)));
        } else {
            json_object_set_new(root, "pre_tokenizer", byte_level(1, 0));
        }
        json_object_set_new(root, "post_processor",
                            bos_s || eos_s ? template_processing(bos_s, bos, eos_s, eos) : byte_level(1, 1));
        json_object_set_new(root, "decoder", byte_level(1, 1));
    }
    json_object_set_new(root, "model", model);

    json_t *tc = json_object(), *gc = json_object();
    const char *keys[3] = {"bos_token", "eos_token", "unk_token"}, *gkeys[2] = {"bos_token_id", "eos_token_id"};
    for (int k = 0; k < 3; k++)
        if (tok_str[k]) json_object_set_new(tc, keys[k], json_string(tok_str[k]));
    for (int k = 0; k < 2; k++)
        if (ids[k] >= 0) {
            json_object_set_new(gc, gkeys[k], json_integer(ids[k]));
            json_object_set_new(cfg, gkeys[k], json_integer(ids[k]));
        }
    json_object_set_new(tc, "add_bos_token", json_boolean(add_bos));
    json_object_set_new(tc, "add_eos_token", json_boolean(add_eos));
    if (itmpl >= 0) json_object_set_new(tc, "chat_template", json_string(gguf_get_str(l->f, (size_t)itmpl, NULL)));
    json_object_set_new(tc, "tokenizer_class", json_string(spm ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast"));
    if (!rc) rc = set_json_file(l, m, "tokenizer.json", root);
    if (!rc) rc = set_json_file(l, m, "tokenizer_config.json", tc);
    if (!rc && json_object_size(gc)) rc = set_json_file(l, m, "generation_config.json", gc);
    json_decref(root);
    json_decref(tc);
    json_decref(gc);
    for (int k = 0; k < 3; k++) free(names[k]);
    return rc;
}

/* ---- loading: tensors ---- */

/* The map entry and layer of a GGUF tensor name ("blk.3.attn_q.weight": layer 3); NULL if none. */
static const name_map *lookup_gguf(int llama, const char *name, int *layer) {
    const name_map *tab;
    size_t n;
    *layer = -1;
    if (strncmp(name, "blk.", 4) == 0) {
        char *end;
        long b = strtol(name + 4, &end, 10);
        if (end == name + 4 || *end != '.' || b < 0 || b > 100000 || (name[4] == '0' && end != name + 5)) return NULL;
        *layer = (int)b;
        name = end + 1;
        tab = llama ? llama_layer : gpt2_layer;
        n = llama ? N_OF(llama_layer) : N_OF(gpt2_layer);
    } else {
        tab = llama ? llama_global : gpt2_global;
        n = llama ? N_OF(llama_global) : N_OF(gpt2_global);
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(tab[i].gguf, name) == 0) return &tab[i];
    return NULL;
}

/* The Hugging Face checkpoint name (what transformers' save_pretrained writes). */
static void hf_name(int llama, const name_map *nm, int layer, char *buf, size_t size) {
    if (llama) {
        if (layer < 0) snprintf(buf, size, "%s", nm->hf);
        else snprintf(buf, size, "model.layers.%d.%s", layer, nm->hf);
    } else if (strcmp(nm->hf, "lm_head.weight") == 0) {
        snprintf(buf, size, "%s", nm->hf);
    } else if (layer < 0) {
        snprintf(buf, size, "transformer.%s", nm->hf);
    } else {
        snprintf(buf, size, "transformer.h.%d.%s", layer, nm->hf);
    }
}

/* A tensor holding src's bytes transformed (q/k rows un-permuted, GPT-2 float weights transposed
 * back to Conv1D [in, out]). */
static int transformed(ld *l, const gguf_tensor_info *ti, const uint8_t *src, size_t nbytes, int dtype, int ndim,
                       const int64_t *shape, int xform, int64_t n_head, llmopt_tensor **out) {
    *out = NULL;
    if (xform == X_PERMUTE_Q || xform == X_PERMUTE_K) {
        /* no rows, or 0 heads (head_count_kv may say 0), divides nothing: refused, not divided by */
        if (n_head <= 0 || shape[0] <= 0 || shape[0] % n_head != 0 || shape[0] / n_head % 2 != 0)
            return error_set(l->err, LLMOPT_EFORMAT, "%s: tensor '%s': %lld rows are not %lld heads of an even size", l->path,
                             ti->name, (long long)shape[0], (long long)n_head);
        if (!(*out = rt_tensor_new(dtype, ndim, shape))) return error_set(l->err, LLMOPT_ENOMEM, "%s: out of memory", l->path);
        permute_rows((*out)->data, src, shape[0], n_head, nbytes / (size_t)shape[0], 1);
        return 0;
    }
    if (ndim != 2) return error_set(l->err, LLMOPT_EFORMAT, "%s: tensor '%s' must have 2 dims", l->path, ti->name);
    const llmopt_dtype_traits *tr = rt_dtype_traits(dtype);
    int64_t R = shape[0], C = shape[1], tshape[2] = {C, R};
    if (!(*out = rt_tensor_new(dtype, 2, tshape))) return error_set(l->err, LLMOPT_ENOMEM, "%s: out of memory", l->path);
    transpose((*out)->data, src, R, C, tr->type_size);
    return 0;
}

static int load_tensor(ld *l, llmopt_model *m, rt_mapping *map, const gguf_tensor_info *ti, int n_layer, int64_t n_head,
                       int64_t n_kv) {
    int llama = l->llama, layer;
    const name_map *nm = lookup_gguf(llama, ti->name, &layer);
    if (!nm)
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: tensor '%s' has no counterpart in a Hugging Face %s model", l->path,
                         ti->name, l->arch);
    if (layer >= n_layer)
        return error_set(l->err, LLMOPT_EFORMAT, "%s: tensor '%s': block %d, but %s.block_count is %d", l->path, ti->name,
                         layer, l->arch, n_layer);
    const ggml_type_info *gt = ggml_type(ti->type);
    const int kquant = kq_block_bytes(ti->type) != 0;  /* dequantized to f32 here */
    if (gt->dtype < 0 && !kquant)
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: tensor '%s' has ggml type %s, which llmopt does not run "
                         "(f32, f16, bf16, q8_0, q4_0, q4_1) or import (q4_k, q5_k, q6_k, as f32)", l->path, ti->name,
                         gt->name);
    char name[160];
    hf_name(llama, nm, layer, name, sizeof name);
    int ndim = (int)ti->n_dims;
    int64_t shape[LLMOPT_MAX_DIMS] = {1, 1, 1, 1};
    for (int d = 0; d < ndim; d++) shape[d] = (int64_t)ti->ne[ndim - 1 - d];
    llmopt_tensor *t = NULL;
    const int64_t heads = nm->xform == X_PERMUTE_K ? n_kv : n_head;
    /* a quantized GPT-2 weight stays as GGUF has it, [out, in] rows: the runtime runs quantized
     * Conv1D weights in that layout (arch_linear_layout), so it is mapped, not copied */
    int xform = nm->xform == X_TRANSPOSE && rt_dtype_traits(gt->dtype < 0 ? LLMOPT_DTYPE_F32 : gt->dtype)->is_quantized
                    ? X_NONE
                    : nm->xform;
    if ((xform == X_PERMUTE_Q || xform == X_PERMUTE_K) && strcmp(l->arch, "qwen2") == 0)
        xform = X_NONE; /* llama.cpp runs qwen2's rope on halves (NeoX), as transformers: no permute */
    if (kquant) {  /* f32 values, then the float layout's transforms */
        llmopt_tensor *f = rt_tensor_new(LLMOPT_DTYPE_F32, ndim, shape);
        if (!f) return error_set(l->err, LLMOPT_ENOMEM, "%s: tensor '%s': out of memory", l->path, ti->name);
        kq_dequantize(ti->type, l->base + ti->offset, f->data, rt_tensor_numel(f));
        int rc = 0;
        if (xform != X_NONE) {
            rc = transformed(l, ti, f->data, f->nbytes, LLMOPT_DTYPE_F32, ndim, shape, xform, heads, &t);
            rt_tensor_unref(f);
        } else {
            t = f;
        }
        if (rc) return rc;
    } else if (xform != X_NONE) {
        int rc = transformed(l, ti, l->base + ti->offset, ti->nbytes, gt->dtype, ndim, shape, xform, heads, &t);
        if (rc) return rc;
    } else {
        rt_mapping_ref(map);  /* the tensor's reference */
        t = rt_tensor_wrap(gt->dtype, ndim, shape, (uint8_t *)map->base + ti->offset, ti->nbytes, rt_mapping_unref, map);
        if (!t) {
            rt_mapping_unref(map);
            return error_set(l->err, LLMOPT_ENOMEM, "%s: tensor '%s': out of memory", l->path, ti->name);
        }
    }
    int rc = rt_model_set(m, name, t);
    rt_tensor_unref(t);
    return rc ? error_set(l->err, rc, "%s: tensor '%s': cannot add it to the model", l->path, ti->name) : 0;
}

/* GPT-2 converters write output.weight as a copy of token_embd.weight (the tied lm_head). */
static int same_tensor(const gguf_file *f, const uint8_t *base, long a, long b) {
    const gguf_tensor_info *x = gguf_tensor(f, (size_t)a), *y = gguf_tensor(f, (size_t)b);
    return x->type == y->type && x->n_dims == y->n_dims && memcmp(x->ne, y->ne, sizeof x->ne) == 0 &&
           memcmp(base + x->offset, base + y->offset, x->nbytes) == 0;
}

/* The loader over a mapping (the file's, or a buffer's copy); takes the caller's reference. */
static int load_mapping(const char *path, rt_mapping *map, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    gguf_file *f = NULL;
    int rc = gguf_parse(path, map->base, map->len, &f, err);
    if (rc) {
        rt_mapping_unref(map);
        return rc;
    }
    ld l = {path, f, map->base, NULL, 0, err};
    long ia = gguf_find_key(f, "general.architecture");
    l.arch = ia >= 0 ? gguf_get_str(f, (size_t)ia, NULL) : NULL;
    if (!l.arch) rc = error_set(err, LLMOPT_EFORMAT, "%s: key 'general.architecture' is missing or not a string", path);
    else if (strcmp(l.arch, "llama") != 0 && strcmp(l.arch, "qwen2") != 0 && strcmp(l.arch, "gpt2") != 0)
        rc = error_set(err, LLMOPT_EUNSUPPORTED, "%s: general.architecture '%s' is not supported (llama, qwen2, gpt2)", path,
                       l.arch);
    l.llama = !rc && strcmp(l.arch, "gpt2") != 0;
    long emb = rc ? -1 : gguf_find_tensor(f, "token_embd.weight"), head = rc ? -1 : gguf_find_tensor(f, "output.weight");
    if (!rc && (emb < 0 || gguf_tensor(f, (size_t)emb)->n_dims != 2))
        rc = error_set(err, LLMOPT_EFORMAT, "%s: tensor 'token_embd.weight' is missing or not 2-dimensional", path);
    int gpt2_tied = !rc && strcmp(l.arch, "gpt2") == 0 && head >= 0 && same_tensor(f, map->base, emb, head);
    json_t *cfg = json_object();
    uint64_t n_layer = 0, n_head = 0, n_kv = 0;
    if (!rc) rc = build_config(&l, cfg, head < 0 || gpt2_tied, (int64_t)gguf_tensor(f, (size_t)emb)->ne[1], &n_layer, &n_head, &n_kv);
    long freqs = rc || strcmp(l.arch, "llama") != 0 ? -1 : gguf_find_tensor(f, "rope_freqs.weight");
    if (freqs >= 0) rc = rope_freqs_scaling(&l, cfg, freqs);
    llmopt_model *m = NULL;
    if (!rc && !(m = rt_model_new(l.arch))) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
    if (!rc) rc = rebuild_tokenizer(&l, m, cfg);
    if (!rc) {
        char *text = json_dumps(cfg, JSON_INDENT(2));
        rc = text ? rt_model_config_load(m, text, strlen(text), err) : error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
        if (rc && text) error_prefix(err, "%s", path);
        free(text);
    }
    for (size_t i = 0; !rc && i < gguf_n_tensors(f); i++)
        if (!(gpt2_tied && (long)i == head) && (long)i != freqs) /* rope_freqs went into the config */
            rc = load_tensor(&l, m, map, gguf_tensor(f, i), (int)n_layer, (int64_t)n_head, (int64_t)n_kv);
    json_decref(cfg);
    gguf_file_free(f);
    rt_mapping_unref(map);  /* the loader's reference; the mapped tensors keep theirs */
    if (!rc && rt_model_set_source(m, path)) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
    if (rc) {
        rt_model_unref(m);
        return rc;
    }
    *out = m;
    return 0;
}

int gguf_load(const char *path, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    rt_mapping *map = NULL;
    int rc = rt_mapping_open(path, &map, err);
    return rc ? rc : load_mapping(path, map, out, err);
}

int gguf_load_mem(const char *name, const uint8_t *buf, size_t len, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    if (!name) name = "gguf";
    rt_mapping *map = NULL;
    int rc = rt_mapping_copy(name, buf, len, &map, err);
    return rc ? rc : load_mapping(name, map, out, err);
}

/* ---- writing: metadata into a growing buffer ---- */

typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} gbuf;

static void gb_put(gbuf *b, const void *d, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void gb_le(gbuf *b, uint64_t v, int n) {
    uint8_t x[8];
    for (int i = 0; i < n; i++) x[i] = (uint8_t)(v >> (8 * i));
    gb_put(b, x, (size_t)n);
}

static void gb_str(gbuf *b, const char *s, size_t n) {
    gb_le(b, n, 8);
    gb_put(b, s, n);
}

typedef struct wr {
    gbuf kv;
    uint64_t n_kv;
    const char *arch;
} wr;

static void kv_head(wr *w, const char *key, int type) {
    gb_str(&w->kv, key, strlen(key));
    gb_le(&w->kv, (uint64_t)type, 4);
    w->n_kv++;
}
static void kv_u32(wr *w, const char *key, uint32_t v) {
    kv_head(w, key, GGUF_TYPE_UINT32);
    gb_le(&w->kv, v, 4);
}
static void kv_f32(wr *w, const char *key, float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    kv_head(w, key, GGUF_TYPE_FLOAT32);
    gb_le(&w->kv, b, 4);
}
static void kv_bool(wr *w, const char *key, int v) {
    kv_head(w, key, GGUF_TYPE_BOOL);
    gb_le(&w->kv, v ? 1 : 0, 1);
}
static void kv_str(wr *w, const char *key, const char *s) {
    kv_head(w, key, GGUF_TYPE_STRING);
    gb_str(&w->kv, s, strlen(s));
}
static void kv_arr(wr *w, const char *key, int type, uint64_t n) {
    kv_head(w, key, GGUF_TYPE_ARRAY);
    gb_le(&w->kv, (uint64_t)type, 4);
    gb_le(&w->kv, n, 8);
}
/* {arch}.suffix */
static const char *ak(wr *w, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", w->arch, suffix);
    return buf;
}

/* ---- writing: the tokenizer from tokenizer.json ---- */

/* The first object of that "type" in a tokenizer.json component or its Sequence members. */
static json_t *find_typed(json_t *node, const char *type) {
    if (!json_is_object(node)) return NULL;
    const char *t = json_string_value(json_object_get(node, "type"));
    if (t && strcmp(t, type) == 0) return node;
    const char *lists[] = {"normalizers", "pretokenizers", "decoders", "processors"};
    for (int k = 0; k < 4; k++) {
        json_t *a = json_object_get(node, lists[k]), *x;
        size_t i;
        json_array_foreach(a, i, x) {
            json_t *hit = find_typed(x, type);
            if (hit) return hit;
        }
    }
    return NULL;
}

/* The id of a token string (an added token or a vocabulary entry), -1 if none. */
static int64_t token_id(json_t *vocab, json_t *added, const char *s) {
    if (!s) return -1;
    json_t *x;
    size_t i;
    json_array_foreach(added, i, x) if (json_is_string(json_object_get(x, "content")) &&
                                        strcmp(json_string_value(json_object_get(x, "content")), s) == 0)
        return json_integer_value(json_object_get(x, "id"));
    x = json_object_get(vocab, s);
    return json_is_integer(x) ? json_integer_value(x) : -1;
}

/* tokenizer_config.json's bos_token / eos_token: a string or {"content": ...}. */
static const char *config_token(json_t *tc, const char *key) {
    json_t *v = json_object_get(tc, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

static json_t *load_side_json(const llmopt_model *m, const char *name) {
    size_t len = 0;
    const char *text = rt_model_get_file(m, name, &len);
    json_t *j = text ? json_loadb(text, len, 0, NULL) : NULL;
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* The pre-tokenizer of a byte-level BPE, in tokenizer.ggml.pre's terms. */
static const char *gpt2_pre(json_t *root) {
    json_t *pre = json_object_get(root, "pre_tokenizer"), *split = find_typed(pre, "Split");
    const char *rx = split ? json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex")) : NULL;
    if (rx && strcmp(rx, TOK_LLAMA3_REGEX) == 0) return "llama-bpe"; /* Llama 3's Split regex */
    if (rx && strcmp(rx, TOK_QWEN2_REGEX) == 0) return "qwen2";      /* Qwen2's: digits one at a time */
    if (rx && strcmp(rx, TOK_TEKKEN_REGEX) == 0) return "tekken";    /* Mistral NeMo's */
    if (rx && strcmp(rx, TOK_O200K_REGEX) == 0) return "gpt-4o";     /* GPT-4o's o200k */
    json_t *bl = find_typed(pre, "ByteLevel"), *digits = find_typed(pre, "Digits");
    int regex = bl && !json_is_false(json_object_get(bl, "use_regex"));
    /* SmolLM's (and StarCoder's): each digit alone, then GPT-2's regex: llama.cpp's "smollm" */
    if (!split && regex && digits && json_is_true(json_object_get(digits, "individual_digits"))) return "smollm";
    if (!split && !digits && regex) return "gpt-2";
    return "default";
}

static int export_tokenizer(wr *w, const llmopt_model *m, int64_t vocab_size, llmopt_error *err) {
    size_t len = 0;
    const char *text = rt_model_get_file(m, "tokenizer.json", &len);
    if (!text) return 0;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
    json_t *added = json_object_get(root, "added_tokens"), *merges = json_object_get(model, "merges");
    const char *type = json_string_value(json_object_get(model, "type"));
    int rc = 0;
    if (!root) rc = error_set(err, LLMOPT_EFORMAT, "tokenizer.json: not valid JSON: line %d: %s", je.line, je.text);
    else if (type && strcmp(type, "BPE") != 0)
        rc = error_set(err, LLMOPT_EUNSUPPORTED, "tokenizer.json: model type '%s' cannot be written to GGUF (BPE only)", type);
    else if (!json_is_object(vocab))
        rc = error_set(err, LLMOPT_EFORMAT, "tokenizer.json: 'model.vocab' is missing or not an object");
    if (rc) {
        json_decref(root);
        return rc;
    }
    int spm = json_is_true(json_object_get(model, "byte_fallback"));
    /* n: every id of the vocabulary, the added tokens and the embedding rows */
    int64_t n = vocab_size;
    const char *key;
    json_t *v;
    size_t i;
    json_object_foreach(vocab, key, v) if (json_integer_value(v) + 1 > n) n = json_integer_value(v) + 1;
    json_array_foreach(added, i, v) if (json_integer_value(json_object_get(v, "id")) + 1 > n)
        n = json_integer_value(json_object_get(v, "id")) + 1;
    if (n > (1 << 26)) {
        json_decref(root);
        return error_set(err, LLMOPT_EFORMAT, "tokenizer.json: token id %lld is implausibly large", (long long)n - 1);
    }
    const char **tok = calloc((size_t)n, sizeof *tok);
    int32_t *tt = calloc((size_t)n, sizeof *tt);
    float *score = calloc((size_t)n, sizeof *score);
    char *pads = malloc((size_t)n * 16);
    if (!tok || !tt || !score || !pads) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
    json_object_foreach(vocab, key, v) {
        int64_t id = json_integer_value(v);
        if (rc || id < 0 || tok[id]) continue;
        tok[id] = key;
        tt[id] = TT_NORMAL;
        if (spm && strlen(key) == 6 && strncmp(key, "<0x", 3) == 0 && key[5] == '>') tt[id] = TT_BYTE;
    }
    json_array_foreach(added, i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        const char *c = json_string_value(json_object_get(v, "content"));
        if (rc || id < 0 || !c) continue;
        tok[id] = c;
        tt[id] = json_is_true(json_object_get(v, "special")) ? TT_CONTROL : TT_USER_DEFINED;
    }
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    int64_t unk_id = spm ? token_id(vocab, added, unk) : -1;
    if (!rc && unk_id >= 0 && unk_id < n) tt[unk_id] = TT_UNKNOWN;
    for (int64_t id = 0; !rc && id < n; id++)
        if (!tok[id]) {  /* ids no token uses (padded embeddings), as llama.cpp's converter fills them */
            snprintf(pads + id * 16, 16, "[PAD%lld]", (long long)id);
            tok[id] = pads + id * 16;
            tt[id] = TT_UNUSED;
        }
    /* merges as "a b" strings; a merged token's score is minus its merge's rank */
    size_t n_merges = json_array_size(merges);
    gbuf mb = {0};
    for (i = 0; !rc && i < n_merges; i++) {
        json_t *x = json_array_get(merges, i);
        const char *a = json_string_value(x), *b = NULL;
        char *joined = NULL;
        if (json_is_array(x)) {
            a = json_string_value(json_array_get(x, 0));
            b = json_string_value(json_array_get(x, 1));
        }
        if (!a || (json_is_array(x) && !b)) {
            rc = error_set(err, LLMOPT_EFORMAT, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", i);
            break;
        }
        size_t la = strlen(a), lb = b ? strlen(b) : 0;
        if (b) {
            gb_le(&mb, la + 1 + lb, 8);
            gb_put(&mb, a, la);
            gb_put(&mb, " ", 1);
            gb_put(&mb, b, lb);
        } else {
            gb_str(&mb, a, la);
        }
        if (spm) {  /* the product of merge i */
            const char *sp = b ? NULL : strchr(a, ' ');
            size_t l1 = b ? la : (sp ? (size_t)(sp - a) : la);
            const char *p2 = b ? b : (sp ? sp + 1 : "");
            if ((joined = malloc(l1 + strlen(p2) + 1))) {
                memcpy(joined, a, l1);
                strcpy(joined + l1, p2);
                int64_t id = json_integer_value(json_object_get(vocab, joined));
                if (json_object_get(vocab, joined) && id >= 0 && id < n && score[id] == 0) score[id] = -(float)(i + 1);
                free(joined);
            }
        }
    }
    if (mb.oom) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");

    /* bos/eos: tokenizer_config.json, then generation_config.json */
    json_t *tc = load_side_json(m, "tokenizer_config.json"), *gc = load_side_json(m, "generation_config.json");
    int64_t bos = token_id(vocab, added, config_token(tc, "bos_token"));
    int64_t eos = token_id(vocab, added, config_token(tc, "eos_token"));
    json_t *g;
    if (bos < 0 && (g = json_object_get(gc, "bos_token_id"))) bos = json_integer_value(json_is_array(g) ? json_array_get(g, 0) : g);
    if (eos < 0 && (g = json_object_get(gc, "eos_token_id"))) eos = json_integer_value(json_is_array(g) ? json_array_get(g, 0) : g);
    json_t *ab = json_object_get(tc, "add_bos_token"), *ae = json_object_get(tc, "add_eos_token");
    json_t *post = find_typed(json_object_get(root, "post_processor"), "TemplateProcessing");
    json_t *first = json_array_get(json_object_get(post, "single"), 0);
    int add_bos = json_is_boolean(ab) ? json_is_true(ab) : json_object_get(first, "SpecialToken") != NULL;
    json_t *tmpl = json_object_get(tc, "chat_template");

    if (!rc) {
        kv_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
        kv_str(w, "tokenizer.ggml.pre", spm ? "default" : gpt2_pre(root));
        kv_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, (uint64_t)n);
        for (int64_t id = 0; id < n; id++) gb_str(&w->kv, tok[id], strlen(tok[id]));
        kv_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, (uint64_t)n);
        for (int64_t id = 0; id < n; id++) gb_le(&w->kv, (uint32_t)tt[id], 4);
        if (spm) {
            kv_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, (uint64_t)n);
            for (int64_t id = 0; id < n; id++) {
                uint32_t b;
                memcpy(&b, &score[id], 4);
                gb_le(&w->kv, b, 4);
            }
            json_t *pre = json_object_get(root, "pre_tokenizer"), *ms = find_typed(pre, "Metaspace");
            const char *scheme = json_string_value(json_object_get(ms, "prepend_scheme"));
            int space = find_typed(json_object_get(root, "normalizer"), "Prepend") != NULL ||
                        (ms && (scheme ? strcmp(scheme, "never") != 0 : !json_is_false(json_object_get(ms, "add_prefix_space"))));
            kv_bool(w, "tokenizer.ggml.add_space_prefix", space);
        }
        /* llama.cpp reads merges for gpt2 vocabularies only; for llama ones they keep the BPE exact */
        if (n_merges) {
            kv_arr(w, "tokenizer.ggml.merges", GGUF_TYPE_STRING, n_merges);
            gb_put(&w->kv, mb.p, mb.n);
        }
        if (bos >= 0 && bos < n) kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
        if (eos >= 0 && eos < n) kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
        if (unk_id >= 0 && unk_id < n) kv_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk_id);
        kv_bool(w, "tokenizer.ggml.add_bos_token", add_bos);
        if (json_is_boolean(ae)) kv_bool(w, "tokenizer.ggml.add_eos_token", json_is_true(ae));
        if (json_is_string(tmpl)) kv_str(w, "tokenizer.chat_template", json_string_value(tmpl));
    }
    free(mb.p);
    free(tok);
    free(tt);
    free(score);
    free(pads);
    json_decref(tc);
    json_decref(gc);
    json_decref(root);
    return rc;
}

/* ---- writing: the file ---- */

typedef struct wt {
    char hf[160];
    char name[96];
    const llmopt_tensor *t;
    int xform;
    int64_t n_head;    /* rows of q/k are n_head heads */
    uint32_t type;     /* ggml type */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    size_t offset;     /* in the data section */
} wt;

static int plan_tensor(const arch_config *c, const llmopt_model *m, const name_map *nm, int layer, int permute, wt *p,
                       size_t *np, llmopt_error *err) {
    wt *w = &p[*np];
    memset(w, 0, sizeof *w);
    arch_tensor_name(c, m, layer, nm->hf, w->hf, sizeof w->hf);
    if (!(w->t = rt_model_get(m, w->hf))) return 0;  /* optional (biases, lm_head) */
    if (layer < 0) snprintf(w->name, sizeof w->name, "%s", nm->gguf);
    else snprintf(w->name, sizeof w->name, "blk.%d.%s", layer, nm->gguf);
    const llmopt_tensor *t = w->t;
    int type = ggml_from_dtype(t->dtype);
    const llmopt_dtype_traits *tr = rt_dtype_traits(t->dtype);
    if (type < 0 || !tr)
        return error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s': dtype %s has no ggml type", w->hf, tr ? tr->name : "(group-quantized)");
    if (t->device != LLMOPT_DEVICE_CPU)
        return error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s': only CPU tensors can be written", w->hf);
    if (t->ndim < 1) return error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s': a scalar has no GGUF layout here", w->hf);
    w->type = (uint32_t)type;
    w->xform = !permute && (nm->xform == X_PERMUTE_Q || nm->xform == X_PERMUTE_K) ? X_NONE : nm->xform;
    w->n_head = nm->xform == X_PERMUTE_K ? c->n_kv_head : c->n_head;
    w->n_dims = (uint32_t)t->ndim;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) w->ne[d] = 1;
    for (int d = 0; d < t->ndim; d++) w->ne[d] = (uint64_t)t->shape[t->ndim - 1 - d];
    if (w->xform == X_TRANSPOSE && tr->is_quantized) {
        w->xform = X_NONE;  /* a quantized Conv1D weight is already [out, in] rows (arch_linear_layout) */
    } else if (w->xform == X_TRANSPOSE) {
        if (t->ndim != 2) return error_set(err, LLMOPT_EFORMAT, "tensor '%s' must have 2 dims", w->hf);
        w->ne[0] = (uint64_t)t->shape[0];  /* Conv1D [in, out] is written as [out, in] rows of in */
        w->ne[1] = (uint64_t)t->shape[1];
    }
    if ((w->xform == X_PERMUTE_Q || w->xform == X_PERMUTE_K) && t->shape[0] % (2 * w->n_head) != 0)
        return error_set(err, LLMOPT_EFORMAT, "tensor '%s': %lld rows are not %lld heads of an even size", w->hf,
                         (long long)t->shape[0], (long long)w->n_head);
    (*np)++;
    return 0;
}

/* Every tensor of the model, in llama.cpp's names (GPT-2's tied lm_head written out as
 * output.weight, as convert_hf_to_gguf.py does); permute: Llama's q/k rows in llama.cpp's rope
 * order (not qwen2's, which llama.cpp rotates by halves as transformers does). */
static int plan_tensors(const arch_config *c, const llmopt_model *m, int permute, wt **out, size_t *np,
                        llmopt_error *err) {
    int llama = c->family == ARCH_LLAMA;
    const name_map *g = llama ? llama_global : gpt2_global, *ly = llama ? llama_layer : gpt2_layer;
    size_t ng = llama ? N_OF(llama_global) : N_OF(gpt2_global), nl = llama ? N_OF(llama_layer) : N_OF(gpt2_layer);
    wt *p = calloc(ng + 2 + (size_t)c->n_layer * nl, sizeof *p); /* + output.weight, rope_freqs.weight */
    *out = p;
    *np = 0;
    if (!p) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t i = 0; !rc && i < ng; i++) rc = plan_tensor(c, m, &g[i], -1, permute, p, np, err);
    if (!rc && !llama && c->tied && !rt_model_get(m, "lm_head.weight")) {
        p[*np] = p[0];  /* token_embd.weight is planned first */
        snprintf(p[*np].name, sizeof p[*np].name, "output.weight");
        (*np)++;
    }
    for (int l = 0; !rc && l < c->n_layer; l++)
        for (size_t i = 0; !rc && i < nl; i++) rc = plan_tensor(c, m, &ly[i], l, permute, p, np, err);
    for (size_t i = 0; !rc && i < rt_model_n_tensors(m); i++) {
        const char *name = rt_model_tensor_name(m, i);
        size_t k = 0, ln = strlen(name);
        while (k < *np && strcmp(p[k].hf, name) != 0) k++;
        int mask = ln > 10 && (strcmp(name + ln - 10, ".attn.bias") == 0 || (ln > 17 && strcmp(name + ln - 17, ".attn.masked_bias") == 0));
        if (k == *np && !(mask && !llama))  /* GPT-2's causal-mask buffers are not weights */
            rc = error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s' has no GGUF name in a %s model", name,
                           llama ? permute ? "llama" : "qwen2" : "gpt2");
    }
    return rc;
}

/* llama3 rope scaling as llama.cpp's converter writes it: rope_freqs.weight, each pair's
 * frequency divisor (ggml's rope freq_factors), f32. *out holds it until the file is written. */
static int plan_rope_freqs(const arch_config *c, wt *p, size_t *np, llmopt_tensor **out, llmopt_error *err) {
    int64_t n = c->rope_n_freq;
    double div[ARCH_ROPE_MAX_FREQ];
    if (!(*out = rt_tensor_new(LLMOPT_DTYPE_F32, 1, &n))) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    arch_rope_llama3_divisors(c->rope_theta, c->head_dim, c->rope_factor, c->rope_low_freq, c->rope_high_freq,
                              c->rope_orig_ctx, div);
    for (int64_t i = 0; i < n; i++) ((float *)(*out)->data)[i] = (float)div[i];
    wt *w = &p[(*np)++];
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "rope_freqs.weight");
    w->t = *out;
    w->xform = X_NONE;
    w->type = GGML_TYPE_F32;
    w->n_dims = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) w->ne[d] = 1;
    w->ne[0] = (uint64_t)n;
    return 0;
}

/* llama_ftype: what most 2-D weights are. */
static uint32_t file_type(const wt *p, size_t n, int *quantized) {
    size_t count[N_GGML_TYPES] = {0};
    *quantized = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i].n_dims == 2) count[p[i].type]++;
        *quantized |= ggml_types[p[i].type].block > 1;
    }
    uint32_t best = GGML_TYPE_F32;
    for (uint32_t t = 0; t < N_GGML_TYPES; t++)
        if (count[t] > count[best]) best = t;
    switch (best) {
    case GGML_TYPE_F16: return 1;
    case GGML_TYPE_Q4_0: return 2;
    case GGML_TYPE_Q4_1: return 3;
    case GGML_TYPE_Q8_0: return 7;
    case GGML_TYPE_BF16: return 32;
    default: return 0;
    }
}

static void write_metadata(wr *w, const arch_config *c, const llmopt_model *m, const char *path, uint32_t ftype, int quantized) {
    char k[128];
    kv_str(w, "general.architecture", w->arch);
    const char *src = rt_model_cfg_get_str(m, "_name_or_path");
    const char *base = strrchr(path, '/');
    char name[256];
    snprintf(name, sizeof name, "%s", src && *src ? src : base ? base + 1 : path);
    size_t ln = strlen(name);
    if (ln > 5 && strcmp(name + ln - 5, ".gguf") == 0) name[ln - 5] = '\0';
    kv_str(w, "general.name", name);
    kv_u32(w, "general.file_type", ftype);
    if (quantized) kv_u32(w, "general.quantization_version", 2);
    kv_u32(w, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    kv_u32(w, ak(w, "context_length", k, sizeof k), (uint32_t)c->n_ctx);
    kv_u32(w, ak(w, "embedding_length", k, sizeof k), (uint32_t)c->n_embd);
    kv_u32(w, ak(w, "block_count", k, sizeof k), (uint32_t)c->n_layer);
    kv_u32(w, ak(w, "feed_forward_length", k, sizeof k), (uint32_t)c->n_ff);
    kv_u32(w, ak(w, "attention.head_count", k, sizeof k), (uint32_t)c->n_head);
    kv_u32(w, ak(w, "vocab_size", k, sizeof k), (uint32_t)c->vocab);
    if (c->family == ARCH_GPT2) {
        kv_f32(w, ak(w, "attention.layer_norm_epsilon", k, sizeof k), c->norm_eps);
        return;
    }
    kv_u32(w, ak(w, "attention.head_count_kv", k, sizeof k), (uint32_t)c->n_kv_head);
    kv_f32(w, ak(w, "attention.layer_norm_rms_epsilon", k, sizeof k), c->norm_eps);
    kv_f32(w, ak(w, "rope.freq_base", k, sizeof k), c->rope_theta);
    kv_u32(w, ak(w, "rope.dimension_count", k, sizeof k), (uint32_t)c->head_dim);
    if (c->head_dim * c->n_head != c->n_embd) {
        kv_u32(w, ak(w, "attention.key_length", k, sizeof k), (uint32_t)c->head_dim);
        kv_u32(w, ak(w, "attention.value_length", k, sizeof k), (uint32_t)c->head_dim);
    }
    if (c->rope_scale != 1.0f) {
        kv_str(w, ak(w, "rope.scaling.type", k, sizeof k), "linear");
        kv_f32(w, ak(w, "rope.scaling.factor", k, sizeof k), c->rope_scale);
    }
}

static int write_all(FILE *fp, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, fp) == n ? 0 : -1; }

static int write_pad(FILE *fp, size_t pos) {
    static const uint8_t zero[GGUF_DEFAULT_ALIGNMENT];
    return write_all(fp, zero, (GGUF_DEFAULT_ALIGNMENT - pos % GGUF_DEFAULT_ALIGNMENT) % GGUF_DEFAULT_ALIGNMENT);
}

/* One tensor's bytes in GGUF layout: as stored, or permuted/transposed through scratch. */
static int write_tensor(FILE *fp, const wt *p, uint8_t **scratch, size_t *cap) {
    const llmopt_tensor *t = p->t;
    if (p->xform == X_NONE) return write_all(fp, t->data, t->nbytes);
    if (*cap < t->nbytes) {
        uint8_t *s = realloc(*scratch, t->nbytes);
        if (!s) return -2;
        *scratch = s;
        *cap = t->nbytes;
    }
    if (p->xform == X_TRANSPOSE) transpose(*scratch, t->data, t->shape[0], t->shape[1], rt_dtype_traits(t->dtype)->type_size);
    else permute_rows(*scratch, t->data, t->shape[0], p->n_head, t->nbytes / (size_t)t->shape[0], 0);
    return write_all(fp, *scratch, t->nbytes);
}

int gguf_write(const llmopt_model *m, const char *path, llmopt_error *err) {
    arch_config c;
    int rc = arch_from_model(m, &c, err);
    if (rc) {
        error_prefix(err, "%s", path);
        return rc;
    }
    const char *type = rt_model_cfg_get_str(m, "model_type");
    const int qwen2 = type && strcmp(type, "qwen2") == 0;
    if (qwen2 && c.rope_n_freq) /* llama.cpp's qwen2 reads no rope_freqs.weight */
        return error_set(err, LLMOPT_EUNSUPPORTED, "%s: a qwen2 model with llama3 rope scaling has no GGUF form", path);
    if (c.attn_unscaled || c.attn_scale_by_layer) /* llama.cpp would run it with 1/sqrt(head_dim) */
        return error_set(err, LLMOPT_EUNSUPPORTED, "%s: GGUF has no key for GPT-2's %s, so llama.cpp would run "
                         "this model with another attention scale", path,
                         c.attn_scale_by_layer ? "scale_attn_by_inverse_layer_idx" : "scale_attn_weights false");
    wt *p = NULL;
    size_t np = 0;
    wr w = {.arch = qwen2 ? "qwen2" : c.family == ARCH_LLAMA ? "llama" : "gpt2"};
    rc = plan_tensors(&c, m, !qwen2, &p, &np, err);
    llmopt_tensor *freqs = NULL;
    if (!rc && c.rope_n_freq) rc = plan_rope_freqs(&c, p, &np, &freqs, err);
    int quantized = 0;
    uint32_t ftype = rc ? 0 : file_type(p, np, &quantized);
    if (!rc) write_metadata(&w, &c, m, path, ftype, quantized);
    if (!rc && (rc = export_tokenizer(&w, m, c.vocab, err))) error_prefix(err, "%s", path);
    gbuf info = {0};
    size_t off = 0;
    for (size_t i = 0; !rc && i < np; i++) {
        p[i].offset = off;
        off += p[i].t->nbytes;
        off += (GGUF_DEFAULT_ALIGNMENT - off % GGUF_DEFAULT_ALIGNMENT) % GGUF_DEFAULT_ALIGNMENT;
        gb_str(&info, p[i].name, strlen(p[i].name));
        gb_le(&info, p[i].n_dims, 4);
        for (uint32_t d = 0; d < p[i].n_dims; d++) gb_le(&info, p[i].ne[d], 8);
        gb_le(&info, p[i].type, 4);
        gb_le(&info, p[i].offset, 8);
    }
    if (!rc && (w.kv.oom || info.oom)) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);

    char tmp[4096];
    FILE *fp = NULL;
    if (!rc && snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >= (int)sizeof tmp)
        rc = error_set(err, LLMOPT_EINVAL, "%s: path too long", path);
    if (!rc && !(fp = fopen(tmp, "wb"))) rc = error_set(err, LLMOPT_EIO, "%s: cannot write: %s", tmp, strerror(errno));
    if (!rc) {
        gbuf h = {0};
        gb_put(&h, "GGUF", 4);
        gb_le(&h, 3, 4);
        gb_le(&h, np, 8);
        gb_le(&h, w.n_kv, 8);
        size_t pos = h.n + w.kv.n + info.n;
        int bad = h.oom || write_all(fp, h.p, h.n) || write_all(fp, w.kv.p, w.kv.n) || write_all(fp, info.p, info.n) ||
                  write_pad(fp, pos);
        free(h.p);
        uint8_t *scratch = NULL;
        size_t cap = 0;
        for (size_t i = 0; !bad && i < np; i++) {
            int r = write_tensor(fp, &p[i], &scratch, &cap);
            if (r == -2) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
            bad = r || write_pad(fp, p[i].t->nbytes);
        }
        free(scratch);
        int e = errno;
        bad |= fflush(fp) != 0 || (fsync(fileno(fp)) != 0 && errno != EINVAL);
        bad |= fclose(fp) != 0;
        if (bad && !rc) rc = error_set(err, LLMOPT_EIO, "%s: write failed: %s", tmp, strerror(e ? e : errno));
        if (!rc && rename(tmp, path) != 0) rc = error_set(err, LLMOPT_EIO, "%s: cannot rename into place: %s", path, strerror(errno));
        if (rc) unlink(tmp);
    }
    free(info.p);
    free(w.kv.p);
    free(p);
    rt_tensor_unref(freqs);
    return rc;
}
