/* Loading a Hugging Face model directory: config.json plus model.safetensors or its sharded form
 * (model.safetensors.index.json). Each file is mmap'd once and its tensors point into the
 * mapping, no copy; the mapping is refcounted and unmapped with the last tensor that uses it. */
#include "runtime.h"
#include "mapping.h"
#include "gguf.h"
#include "../util/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the header: every check runs on an in-memory buffer ---- */

static int field_error(llmopt_error *err, const char *file, const char *tensor, const char *field,
                       const json_t *v, const char *want) {
    if (!v) return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s': missing '%s'", file, tensor, field);
    return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s': '%s' must be %s", file, tensor, field, want);
}

/* "[2, 3]" into buf. */
static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && k < size; d++)
        k += (size_t)snprintf(buf + k, size - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < size) snprintf(buf + k, size - k, "]");
}

/* Fills e from one header entry (offset relative to the data); data_len is the data's size. */
static int parse_entry(const char *file, const char *name, const json_t *v, size_t data_len,
                       rt_safetensors_entry *e, llmopt_error *err) {
    if (!json_is_object(v))
        return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s': entry is not an object", file, name);
    const json_t *dtype = json_object_get(v, "dtype");
    const json_t *shape = json_object_get(v, "shape");
    const json_t *offs = json_object_get(v, "data_offsets");

    if (!json_is_string(dtype)) return field_error(err, file, name, "dtype", dtype, "a string");
    e->dtype = rt_dtype_from_safetensors_name(json_string_value(dtype));
    if (e->dtype < 0)
        return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", file, name,
                         json_string_value(dtype));

    if (!json_is_array(shape))
        return field_error(err, file, name, "shape", shape, "a list of non-negative integers");
    size_t ndim = json_array_size(shape);
    if (ndim > LLMOPT_MAX_DIMS)
        return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s': 'shape' has %zu dims, more than %d",
                         file, name, ndim, LLMOPT_MAX_DIMS);
    int has_zero = 0;
    for (size_t d = 0; d < LLMOPT_MAX_DIMS; d++) e->shape[d] = 1;
    for (size_t d = 0; d < ndim; d++) {
        const json_t *x = json_array_get(shape, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return field_error(err, file, name, "shape", shape, "a list of non-negative integers");
        e->shape[d] = json_integer_value(x);
        has_zero |= e->shape[d] == 0;
    }
    e->ndim = (int)ndim;

    const json_t *b = json_array_get(offs, 0), *en = json_array_get(offs, 1);
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(b) ||
        !json_is_integer(en) || json_integer_value(b) < 0 ||
        json_integer_value(b) > json_integer_value(en))
        return field_error(err, file, name, "data_offsets", offs,
                           "two integers [begin, end] with 0 <= begin <= end");
    uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(en);
    if (end > data_len)
        return error_set(err, LLMOPT_EFORMAT,
                         "%s: tensor '%s': data_offsets end %llu goes beyond the data's %zu bytes",
                         file, name, (unsigned long long)end, data_len);

    size_t need = rt_dtype_nbytes(e->dtype, e->ndim, e->shape);
    char dims[128];
    format_shape(dims, sizeof dims, e->ndim, e->shape);
    if (need == 0 && !has_zero)  /* rt_dtype_nbytes overflowed */
        return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s': shape %s is too large", file, name, dims);
    if (end - begin != need)
        return error_set(err, LLMOPT_EFORMAT,
                         "%s: tensor '%s': data_offsets hold %llu bytes but %s %s needs %zu", file,
                         name, (unsigned long long)(end - begin), json_string_value(dtype), dims, need);
    e->offset = (size_t)begin;
    e->nbytes = need;
    return 0;
}

/* __metadata__ is free-form text for the writer's tools; we check its type and ignore it. */
static int check_metadata(const char *file, json_t *v, llmopt_error *err) {
    const char *key;
    json_t *x;
    int ok = json_is_object(v);
    if (ok) json_object_foreach(v, key, x) ok &= json_is_string(x);
    if (ok) return 0;
    return error_set(err, LLMOPT_EFORMAT, "%s: '__metadata__' must be an object of strings", file);
}

static int cmp_entry_offset(const void *a, const void *b) {
    const rt_safetensors_entry *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->header_index < y->header_index ? -1 : x->header_index > y->header_index;
}

/* entries are sorted by offset; empty tensors own no bytes and so overlap nothing. */
static int check_overlaps(const char *file, const rt_safetensors_entry *es, size_t n,
                          size_t data_start, llmopt_error *err) {
    const rt_safetensors_entry *prev = NULL;  /* the last non-empty tensor */
    for (size_t i = 0; i < n; i++) {
        const rt_safetensors_entry *e = &es[i];
        if (e->nbytes == 0) continue;
        if (prev && e->offset < prev->offset + prev->nbytes)
            return error_set(err, LLMOPT_EFORMAT,
                             "%s: tensors '%s' and '%s' overlap (data bytes [%zu, %zu) and [%zu, %zu))",
                             file, prev->name, e->name, prev->offset - data_start,
                             prev->offset + prev->nbytes - data_start, e->offset - data_start,
                             e->offset + e->nbytes - data_start);
        prev = e;
    }
    return 0;
}

void rt_safetensors_free(rt_safetensors_entry *entries, size_t n) {
    if (!entries) return;
    for (size_t i = 0; i < n; i++) free(entries[i].name);
    free(entries);
}

int rt_safetensors_parse_header(const char *file, const uint8_t *buf, size_t len,
                                rt_safetensors_entry **out, size_t *n, llmopt_error *err) {
    *out = NULL;
    *n = 0;
    if (len < 8)
        return error_set(err, LLMOPT_EFORMAT,
                         "%s: file is %zu bytes, too short for the 8-byte header length", file, len);
    uint64_t hlen = 0;  /* little-endian u64 */
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > len - 8)
        return error_set(err, LLMOPT_EFORMAT, "%s: header length %llu goes beyond the file's %zu bytes",
                         file, (unsigned long long)hlen, len);
    size_t data_start = 8 + (size_t)hlen, data_len = len - data_start;

    json_error_t je;
    json_t *h = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!h)
        return error_set(err, LLMOPT_EFORMAT, "%s: header is not valid JSON: line %d, column %d: %s",
                         file, je.line, je.column, je.text);
    if (!json_is_object(h)) {
        json_decref(h);
        return error_set(err, LLMOPT_EFORMAT, "%s: header is not a JSON object", file);
    }

    size_t cap = json_object_size(h), k = 0;
    rt_safetensors_entry *es = calloc(cap ? cap : 1, sizeof *es);
    int rc = es ? 0 : error_set(err, LLMOPT_ENOMEM, "%s: out of memory reading the header", file);
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v) {
        if (rc != 0) break;
        if (strcmp(key, "__metadata__") == 0) {
            rc = check_metadata(file, v, err);
            continue;
        }
        rt_safetensors_entry *e = &es[k];
        if (key[0] == '\0') rc = error_set(err, LLMOPT_EFORMAT, "%s: a tensor has an empty name", file);
        if (rc == 0) rc = parse_entry(file, key, v, data_len, e, err);
        if (rc == 0 && !(e->name = strdup(key)))
            rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory reading the header", file);
        if (rc == 0) {
            e->offset += data_start;
            e->header_index = k++;
        }
    }
    json_decref(h);
    if (rc == 0) {
        qsort(es, k, sizeof *es, cmp_entry_offset);
        rc = check_overlaps(file, es, k, data_start, err);
    }
    if (rc != 0) {
        rt_safetensors_free(es, k);
        return rc;
    }
    *out = es;
    *n = k;
    return 0;
}

/* ---- one file: a refcounted read-only mapping that its tensors point into ---- */

static int add_tensor(llmopt_model *m, const char *path, rt_mapping *map,
                      const rt_safetensors_entry *e, llmopt_error *err) {
    if (rt_model_get(m, e->name))
        return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s' is also in another shard", path, e->name);
    rt_mapping_ref(map);  /* the tensor's reference */
    llmopt_tensor *t = rt_tensor_wrap(e->dtype, e->ndim, e->shape, (uint8_t *)map->base + e->offset,
                                      e->nbytes, rt_mapping_unref, map);
    if (!t) {
        rt_mapping_unref(map);
        return error_set(err, LLMOPT_ENOMEM, "%s: tensor '%s': out of memory", path, e->name);
    }
    int rc = rt_model_set(m, e->name, t);
    rt_tensor_unref(t);  /* the model holds it now, or nobody does */
    if (rc != 0) return error_set(err, rc, "%s: tensor '%s': cannot add it to the model", path, e->name);
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every name in want (what the index says this shard holds) must be among its tensors. */
static int check_shard_names(const char *path, const char *index, const rt_safetensors_entry *es,
                             size_t n, const char **want, size_t nwant, llmopt_error *err) {
    const char **have = malloc((n ? n : 1) * sizeof *have);
    if (!have) return error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) have[i] = es[i].name;
    qsort(have, n, sizeof *have, cmp_str);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nwant; i++)
        if (!bsearch(&want[i], have, n, sizeof *have, cmp_str))
            rc = error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s' is listed in %s but missing from this shard",
                           path, want[i], index);
    free(have);
    return rc;
}

/* Adds every tensor of one safetensors file to m, in data-offset order. For a shard, index
 * and want (the names the index maps to it) are given and checked. */
static int load_file(llmopt_model *m, const char *path, const char *index, const char **want,
                     size_t nwant, llmopt_error *err) {
    rt_mapping *map = NULL;
    int rc = rt_mapping_open(path, &map, err);
    if (rc != 0) return rc;
    rt_safetensors_entry *es = NULL;
    size_t n = 0;
    rc = rt_safetensors_parse_header(path, map->base, map->len, &es, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) rc = add_tensor(m, path, map, &es[i], err);
    if (rc == 0 && index) rc = check_shard_names(path, index, es, n, want, nwant, err);
    rt_safetensors_free(es, n);
    rt_mapping_unref(map);  /* the loader's reference; the tensors keep theirs */
    return rc;
}

/* ---- the directory: config.json, then one file or an index of shards ---- */

/* Reads path as a JSON object: *text (malloc'd, len bytes) and *out (parsed). */
static int read_json_object(const char *path, char **text, size_t *len, json_t **out,
                            llmopt_error *err) {
    *text = NULL;
    *out = NULL;
    if (!fs_exists(path)) return error_set(err, LLMOPT_ENOTFOUND, "%s: not found", path);
    int rc = fs_read_all(path, text, len, err);
    if (rc != 0) return rc;
    json_error_t je;
    *out = json_loadb(*text, *len, 0, &je);
    if (!*out)
        rc = error_set(err, LLMOPT_EFORMAT, "%s: not valid JSON: line %d, column %d: %s", path,
                       je.line, je.column, je.text);
    else if (!json_is_object(*out))
        rc = error_set(err, LLMOPT_EFORMAT, "%s: expected a JSON object", path);
    if (rc != 0) {
        json_decref(*out);
        free(*text);
        *out = NULL;
        *text = NULL;
    }
    return rc;
}

/* A new model whose arch is config.json's model_type and whose config is config.json. */
static int load_config(const char *dir, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    char *path = fs_join(dir, "config.json"), *text = NULL;
    size_t len = 0;
    json_t *cfg = NULL;
    int rc = path ? read_json_object(path, &text, &len, &cfg, err)
                  : error_set(err, LLMOPT_ENOMEM, "%s: out of memory", dir);
    const char *arch = rc == 0 ? json_string_value(json_object_get(cfg, "model_type")) : NULL;
    if (rc == 0 && !arch)
        rc = error_set(err, LLMOPT_EFORMAT, "%s: 'model_type' is missing or not a string", path);
    llmopt_model *m = NULL;
    if (rc == 0 && !(m = rt_model_new(arch))) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
    if (rc == 0 && (rc = rt_model_config_load(m, text, len, err)) != 0) error_prefix(err, "%s", path);
    json_decref(cfg);
    free(text);
    free(path);
    if (rc != 0) {
        rt_model_unref(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* Loads every shard named in the index's weight_map, in file-name order (checkpoint order). */
static int load_index(llmopt_model *m, const char *dir, const char *index, llmopt_error *err) {
    char *text = NULL;
    size_t len = 0;
    json_t *idx = NULL;
    int rc = read_json_object(index, &text, &len, &idx, err);
    if (rc != 0) return rc;
    free(text);
    json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(idx);
        return error_set(err, LLMOPT_EFORMAT, "%s: 'weight_map' is missing or not an object", index);
    }
    size_t nw = json_object_size(wm), ns = 0;
    const char **shards = malloc((nw ? nw : 1) * sizeof *shards);
    const char **want = malloc((nw ? nw : 1) * sizeof *want);
    if (!shards || !want) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", index);
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        if (rc != 0) break;
        const char *f = json_string_value(v);
        /* A plain file name: the index may not point outside the model directory. */
        if (!f || !*f || strchr(f, '/') || strcmp(f, "..") == 0)
            rc = error_set(err, LLMOPT_EFORMAT,
                           "%s: weight_map '%s': expected the name of a file in the model directory",
                           index, key);
        else
            shards[ns++] = f;
    }
    if (rc == 0) qsort(shards, ns, sizeof *shards, cmp_str);
    for (size_t i = 0; rc == 0 && i < ns; i++) {
        if (i > 0 && strcmp(shards[i], shards[i - 1]) == 0) continue;
        size_t nwant = 0;
        json_object_foreach(wm, key, v)
            if (strcmp(json_string_value(v), shards[i]) == 0) want[nwant++] = key;
        char *path = fs_join(dir, shards[i]);
        if (!path) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", index);
        if (rc == 0 && (rc = load_file(m, path, index, want, nwant, err)) == LLMOPT_ENOTFOUND)
            error_prefix(err, "%s lists a shard that does not exist", index);
        free(path);
    }
    free(want);
    free(shards);
    json_decref(idx);
    return rc;
}

const char *const rt_model_side_files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                           "special_tokens_map.json", NULL};

/* Keeps a side file's bytes with the model (parsed later, by whoever needs it). */
static int load_side_file(llmopt_model *m, const char *dir, const char *name, llmopt_error *err) {
    char *path = fs_join(dir, name), *data = NULL;
    size_t len = 0;
    int rc = 0;
    if (!path) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    if (fs_exists(path)) {
        rc = fs_read_all(path, &data, &len, err);
        if (rc == 0 && rt_model_set_file(m, name, data, len) != 0) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
    }
    free(data);
    free(path);
    return rc;
}

/* ---- block-quantized tensors saved by rt_model_save: U8 [..., row bytes] tensors whose dtype
 * config.json's quantization_config.tensor_dtypes names (quant_method "llmopt") ---- */

static void unref_tensor(void *t) { rt_tensor_unref(t); }

static int load_quantized(llmopt_model *m, const char *dir, llmopt_error *err) {
    json_t *qc = json_object_get(rt_model_config_json(m), "quantization_config");
    const char *method = json_string_value(json_object_get(qc, "quant_method"));
    if (!method || strcmp(method, "llmopt") != 0) return 0;  /* someone else's (GPTQ, AWQ): not ours to read */
    json_t *map = json_object_get(qc, "tensor_dtypes");
    if (!json_is_object(map))
        return error_set(err, LLMOPT_EFORMAT, "%s/config.json: quantization_config.tensor_dtypes is missing or not an object",
                         dir);
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        const char *dn = json_string_value(v);
        int dtype = rt_dtype_from_name(dn);
        const llmopt_dtype_traits *tr = rt_dtype_traits(dtype);
        const llmopt_tensor *t = rt_model_get(m, name);
        if (!tr || !tr->is_quantized)
            return error_set(err, LLMOPT_EFORMAT, "%s/config.json: tensor_dtypes '%s': '%s' is not a quantized dtype", dir,
                             name, dn ? dn : "(not a string)");
        if (!t) return error_set(err, LLMOPT_EFORMAT, "%s: tensor_dtypes names '%s', which the checkpoint lacks", dir, name);
        if (t->dtype == dtype) continue;
        int64_t shape[LLMOPT_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        int64_t last = t->ndim > 0 ? shape[t->ndim - 1] : 0;
        if (t->dtype != LLMOPT_DTYPE_U8 || t->ndim < 1 || last % (int64_t)tr->type_size != 0)
            return error_set(err, LLMOPT_EFORMAT, "%s: tensor '%s' is not U8 rows of whole %s blocks (%zu bytes each)", dir,
                             name, tr->name, tr->type_size);
        shape[t->ndim - 1] = last / (int64_t)tr->type_size * tr->block_size;
        rt_tensor_ref(t);  /* the new tensor's view keeps the U8 one (and its mapping) alive */
        llmopt_tensor *q = rt_tensor_wrap(dtype, t->ndim, shape, t->data, t->nbytes, unref_tensor, (void *)t);
        if (!q) {
            rt_tensor_unref(t);
            return error_set(err, LLMOPT_ENOMEM, "%s: tensor '%s': out of memory", dir, name);
        }
        int rc = rt_model_set(m, name, q);
        rt_tensor_unref(q);
        if (rc) return error_set(err, rc, "%s: tensor '%s': cannot replace it", dir, name);
    }
    return 0;
}

int rt_model_load(const char *dir, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    size_t n = strlen(dir);
    if (n > 5 && strcmp(dir + n - 5, ".gguf") == 0 && !fs_is_dir(dir)) return gguf_load(dir, out, err);
    llmopt_model *m = NULL;
    int rc = load_config(dir, &m, err);
    if (rc != 0) return rc;
    char *single = fs_join(dir, "model.safetensors");
    char *index = fs_join(dir, "model.safetensors.index.json");
    if (!single || !index) rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", dir);
    else if (fs_exists(single)) rc = load_file(m, single, NULL, NULL, 0, err);
    else if (fs_exists(index)) rc = load_index(m, dir, index, err);
    else rc = error_set(err, LLMOPT_ENOTFOUND, "%s: not found (nor %s)", single, index);
    if (rc == 0 && rt_model_set_source(m, fs_exists(single) ? single : index))
        rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", dir);
    free(single);
    free(index);
    for (size_t i = 0; rc == 0 && rt_model_side_files[i]; i++) rc = load_side_file(m, dir, rt_model_side_files[i], err);
    if (rc == 0) rc = load_quantized(m, dir, err);
    if (rc != 0) {
        rt_model_unref(m);  /* drops the tensors, and with them the mappings */
        return rc;
    }
    *out = m;
    return 0;
}
