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
#include "runtime.h"

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

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | man << 13;
    else if (exp != 0) bits = sign | (exp + 112) << 23 | man << 13;
    else if (man == 0) bits = sign;
    else {  /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | (uint32_t)(112 - e) << 23 | (man & 0x3ff) << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* n elements (a multiple of 32) of a ggml Q8_0/Q4_0/Q4_1 row (layouts in llmopt/tensor.h) to f32. */
static void dequantize(int dtype, const uint8_t *src, float *dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, dst += 32) {
        float d = f16_to_f32((uint16_t)le(src, 2));
        if (dtype == LLMOPT_DTYPE_Q8_0) {
            for (int i = 0; i < 32; i++) dst[i] = d * (float)(int8_t)src[2 + i];
            src += 34;
        } else if (dtype == LLMOPT_DTYPE_Q4_0) {
            for (int i = 0; i < 16; i++) {
                dst[i] = d * (float)((src[2 + i] & 0xf) - 8);
                dst[i + 16] = d * (float)((src[2 + i] >> 4) - 8);
            }
            src += 18;
        } else {
            float m = f16_to_f32((uint16_t)le(src + 2, 2));
            for (int i = 0; i < 16; i++) {
                dst[i] = d * (float)(src[4 + i] & 0xf) + m;
                dst[i + 16] = d * (float)(src[4 + i] >> 4) + m;
            }
            src += 20;
        }
    }
}

/* ---- loading: a refcounted read-only mapping that the untransformed tensors point into ---- */

typedef struct gg_mapping {
    atomic_long refs;  /* the loader's reference plus one per tensor */
    void *base;
    size_t len;
} gg_mapping;

static void mapping_unref(void *owner) {
    gg_mapping *map = owner;
    if (atomic_fetch_sub_explicit(&map->refs, 1, memory_order_acq_rel) != 1) return;
    if (map->base) munmap(map->base, map->len);
    free(map);
}

static int map_file(const char *path, gg_mapping **out, llmopt_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return error_set(err, errno == ENOENT ? LLMOPT_ENOTFOUND : LLMOPT_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return error_set(err, LLMOPT_EIO, "%s: not a regular file", path);
    }
    gg_mapping *map = calloc(1, sizeof *map);
    if (!map) {
        close(fd);
        return error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
    }
    atomic_init(&map->refs, 1);
    map->len = (size_t)st.st_size;
    if (map->len > 0) {
        void *p = mmap(NULL, map->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(map);
            return error_set(err, LLMOPT_EIO, "%s: cannot mmap: %s", path, strerror(e));
        }
        map->base = p;
    }
    close(fd);
    *out = map;
    return 0;
}

typedef struct ld {
    const char *path;
    const gguf_file *f;
    const uint8_t *base;
    const char *arch;  /* "llama" or "gpt2" */
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
    int rc, is_llama = strcmp(l->arch, "llama") == 0;
    json_object_set_new(cfg, "model_type", json_string(l->arch));
    json_t *archs = json_array();
    json_array_append_new(archs, json_string(is_llama ? "LlamaForCausalLM" : "GPT2LMHeadModel"));
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
    json_object_set_new(cfg, "head_dim", json_integer((json_int_t)D));
    if ((rc = key_uint(l, "rope.dimension_count", &rot)) < 0) return rc;
    if (rot != D)
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: key 'llama.rope.dimension_count' is %llu, not the head size %llu "
                         "(partial rotary embeddings are not supported)", l->path, (unsigned long long)rot, (unsigned long long)D);
    if ((rc = key_float(l, "attention.layer_norm_rms_epsilon", &eps)) < 0) return rc;
    json_object_set_new(cfg, "rms_norm_eps", json_real(rc == 1 ? 1e-5 : eps));
    double theta = 10000.0, factor = 1.0;
    if ((rc = key_float(l, "rope.freq_base", &theta)) < 0) return rc;
    json_object_set_new(cfg, "rope_theta", json_real(theta));
    json_object_set_new(cfg, "hidden_act", json_string("silu"));
    long st = gguf_find_key(l->f, "llama.rope.scaling.type");
    const char *type = st >= 0 ? gguf_get_str(l->f, (size_t)st, NULL) : NULL;
    if (st >= 0 && !type) return error_set(l->err, LLMOPT_EFORMAT, "%s: key 'llama.rope.scaling.type' must be a string", l->path);
    if ((rc = key_float(l, type ? "rope.scaling.factor" : "rope.scale_linear", &factor)) < 0) return rc;
    if (type && strcmp(type, "none") != 0 && strcmp(type, "linear") != 0)
        return error_set(l->err, LLMOPT_EUNSUPPORTED, "%s: key 'llama.rope.scaling.type' is '%s' (none or linear are supported)",
                         l->path, type);
    if ((!type || strcmp(type, "linear") == 0) && rc == 0 && factor != 1.0) {
        if (!(factor > 0)) return error_set(l->err, LLMOPT_EFORMAT, "%s: the rope scaling factor must be positive", l->path);
        json_t *rs = json_object();
        json_object_set_new(rs, "type", json_string("linear"));
        json_object_set_new(rs, "factor", json_real(factor));
        json_object_set_new(cfg, "rope_scaling", rs);
    }
    return 0;
}
