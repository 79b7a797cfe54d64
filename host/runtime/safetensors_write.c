/* Saving a model as a Hugging Face directory: model.safetensors (8-byte LE header length, JSON
 * header, data; https://github.com/huggingface/safetensors#format) and config.json. Both are
 * streamed to temporary names and renamed only when both are complete. */
#include "runtime.h"
#include "../util/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A file being written under "<final>.tmp-<pid>"; nothing appears under the final name until
 * out_commit. Writes go through stdio so large tensors stream without a second copy. */
typedef struct out_file {
    char final[4096];
    char tmp[4096];
    FILE *f;
} out_file;

static int out_open(out_file *o, const char *dir, const char *name, llmopt_error *err) {
    o->f = NULL;
    int n = snprintf(o->final, sizeof o->final, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof o->final ||
        snprintf(o->tmp, sizeof o->tmp, "%s.tmp-%ld", o->final, (long)getpid()) >= (int)sizeof o->tmp)
        return error_set(err, LLMOPT_EINVAL, "%s: path too long", dir);
    o->f = fopen(o->tmp, "wb");
    if (!o->f) return error_set(err, LLMOPT_EIO, "%s: cannot write: %s", o->tmp, strerror(errno));
    return 0;
}

static int out_write(out_file *o, const void *p, size_t n, llmopt_error *err) {
    if (n == 0 || fwrite(p, 1, n, o->f) == n) return 0;
    return error_set(err, LLMOPT_EIO, "%s: write failed: %s", o->final, strerror(errno));
}

/* Flushes and syncs the temporary file and closes it (still under its temporary name). */
static int out_finish(out_file *o, llmopt_error *err) {
    int bad = fflush(o->f) != 0 || (fsync(fileno(o->f)) != 0 && errno != EINVAL);
    int e = errno;
    bad |= fclose(o->f) != 0;
    o->f = NULL;
    if (bad) return error_set(err, LLMOPT_EIO, "%s: cannot finish writing: %s", o->final, strerror(e));
    return 0;
}

/* Removes the temporary file (closing it first if open); safe to call more than once. */
static void out_abort(out_file *o) {
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp[0]) unlink(o->tmp);
    o->tmp[0] = '\0';
}

static int out_commit(out_file *o, llmopt_error *err) {
    if (rename(o->tmp, o->final) != 0)
        return error_set(err, LLMOPT_EIO, "%s: cannot rename into place: %s", o->final, strerror(errno));
    o->tmp[0] = '\0';
    return 0;
}

/* Checks every tensor can be saved; fills err naming the first that cannot. */
static int check_tensors(const llmopt_model *m, llmopt_error *err) {
    for (size_t i = 0; i < rt_model_n_tensors(m); i++) {
        const char *name = rt_model_tensor_name(m, i);
        const llmopt_tensor *t = rt_model_get(m, name);
        const llmopt_dtype_traits *tr = rt_dtype_traits(t->dtype);
        if (strcmp(name, "__metadata__") == 0)
            return error_set(err, LLMOPT_EINVAL, "tensor name '__metadata__' is reserved by safetensors");
        if (t->device != LLMOPT_DEVICE_CPU)
            return error_set(err, LLMOPT_EUNSUPPORTED,
                             "tensor '%s': only CPU tensors can be saved (copy it to the CPU first)", name);
        if (tr && tr->is_quantized && t->ndim >= 1) continue; /* stored as U8 rows, see below */
        if (!tr || tr->is_quantized || !rt_dtype_safetensors_name(t->dtype))
            return error_set(err, LLMOPT_EUNSUPPORTED, "tensor '%s': dtype %s has no safetensors type",
                             name, tr ? tr->name : "unknown");
    }
    return 0;
}

/* The tensors of one file: indices into the model's tensors, in order. */
typedef struct shard {
    const size_t *idx;
    size_t n;
} shard;

/* The header JSON of the tensors of sh, compact, padded with spaces so that 8 + length is a
 * multiple of 8. */
static char *build_header(const llmopt_model *m, shard sh, size_t *len) {
    json_t *h = json_object();
    if (!h) return NULL;
    json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"));
    json_int_t off = 0;
    for (size_t k = 0; k < sh.n; k++) {
        const char *name = rt_model_tensor_name(m, sh.idx[k]);
        const llmopt_tensor *t = rt_model_get(m, name);
        json_t *shape = json_array();
        const llmopt_dtype_traits *tr = rt_dtype_traits(t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            int64_t v = t->shape[d];
            /* a block-quantized tensor is a U8 tensor of its rows' bytes */
            if (tr->is_quantized && d == t->ndim - 1) v = v / tr->block_size * (int64_t)tr->type_size;
            json_array_append_new(shape, json_integer(v));
        }
        json_int_t end = off + (json_int_t)t->nbytes;
        const char *st = tr->is_quantized ? "U8" : rt_dtype_safetensors_name(t->dtype);
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", st,
                              "shape", shape, "data_offsets", off, end);
        if (!e || json_object_set_new(h, name, e) != 0) {
            json_decref(h);
            return NULL;
        }
        off = end;
    }
    char *text = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    if (!text) return NULL;
    size_t n = strlen(text), padded = (n + 7) / 8 * 8;
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + n, ' ', padded - n);
    out[padded] = '\0';
    *len = padded;
    return out;
}

static int write_safetensors(out_file *o, const llmopt_model *m, shard sh, llmopt_error *err) {
    size_t hlen = 0;
    char *header = build_header(m, sh, &hlen);
    if (!header) return error_set(err, LLMOPT_ENOMEM, "%s: cannot build the header", o->final);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int rc = out_write(o, len8, sizeof len8, err);
    if (rc == 0) rc = out_write(o, header, hlen, err);
    free(header);
    /* Tensor bytes go out as they are in memory: safetensors is little-endian, as are the
     * machines we run on (x86-64, aarch64). */
    for (size_t k = 0; rc == 0 && k < sh.n; k++) {
        const llmopt_tensor *t = rt_model_get(m, rt_model_tensor_name(m, sh.idx[k]));
        rc = out_write(o, t->data, t->nbytes, err);
    }
    return rc;
}

/* Every tensor, in order, as one shard; NULL when out of memory. */
static size_t *all_tensors(const llmopt_model *m) {
    size_t n = rt_model_n_tensors(m), *idx = malloc((n ? n : 1) * sizeof *idx);
    for (size_t i = 0; idx && i < n; i++) idx[i] = i;
    return idx;
}

static void sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);  /* best effort: makes the renames durable */
        close(fd);
    }
}

/* ---- block-quantized tensors: U8 rows in the file, their dtypes in config.json ----
 * "quantization_config": {"quant_method": "llmopt", "tensor_dtypes": {name: "q4_0" | "gq4g128s"
 * | ...}} and, when every quantized tensor has one dtype, "dtype", "bits", "group_size" and "sym"
 * for readers that want the summary. rt_model_load turns the U8 tensors back (load_quantized).
 * The map and the summary are rebuilt from the tensors at every save, so they never disagree
 * with them. What a quantize stage recorded of its method in the model's own
 * quantization_config (Hugging Face's GPTQConfig / AwqConfig names: "method": "gptq",
 * "desc_act", "damp_percent", ...) is kept while one dtype covers every quantized tensor, and
 * dropped once they are mixed, when it would describe only some of them. */

static int quant_summary(int dtype, json_t *q) {
    int bits, group, sym;
    if (LLMOPT_DTYPE_IS_GQ(dtype)) {
        bits = LLMOPT_DTYPE_GQ_BITS(dtype), group = LLMOPT_DTYPE_GQ_GROUP(dtype), sym = !LLMOPT_DTYPE_GQ_ASYM(dtype);
    } else if (dtype == LLMOPT_DTYPE_NF4) {
        bits = 4, group = LLMOPT_NF4_BLOCK, sym = 1;
    } else {
        bits = dtype == LLMOPT_DTYPE_Q8_0 ? 8 : 4, group = 32, sym = dtype != LLMOPT_DTYPE_Q4_1;
    }
    json_object_set_new(q, "bits", json_integer(bits));
    json_object_set_new(q, "group_size", json_integer(group));
    json_object_set_new(q, "sym", json_boolean(sym));
    return 0;
}

/* config.json's text: the model's config plus (or minus) its llmopt quantization_config. */
static char *config_text(const llmopt_model *m) {
    char *text = rt_model_config_dump(m);
    if (!text) return NULL;
    json_t *map = json_object();
    int one = -1, mixed = 0;
    for (size_t i = 0; map && i < rt_model_n_tensors(m); i++) {
        const char *name = rt_model_tensor_name(m, i);
        const llmopt_tensor *t = rt_model_get(m, name);
        const llmopt_dtype_traits *tr = rt_dtype_traits(t->dtype);
        if (!tr || !tr->is_quantized) continue;
        json_object_set_new(map, name, json_string(tr->name));
        if (one != -1 && one != t->dtype) mixed = 1;
        one = t->dtype;
    }
    json_t *qc = json_object_get(rt_model_config_json(m), "quantization_config");
    const char *method = json_string_value(json_object_get(qc, "quant_method"));
    int ours = method && strcmp(method, "llmopt") == 0;
    if (map && json_object_size(map) == 0 && !ours) {  /* nothing to add or take away */
        json_decref(map);
        return text;
    }
    json_t *cfg = map ? json_loads(text, 0, NULL) : NULL;
    free(text);
    text = NULL;
    if (cfg && json_object_size(map) == 0) {
        json_object_del(cfg, "quantization_config");
    } else if (cfg) {
        json_t *q = json_object();
        json_object_set_new(q, "quant_method", json_string("llmopt"));
        if (!mixed) {
            json_object_set_new(q, "dtype", json_string(rt_dtype_traits(one)->name));
            quant_summary(one, q);
            const char *k;
            json_t *v;
            json_object_foreach(ours ? qc : NULL, k, v)  /* the stage's record of its method */
                if (!json_object_get(q, k) && strcmp(k, "tensor_dtypes") != 0) json_object_set(q, k, v);
        }
        json_object_set(q, "tensor_dtypes", map);
        json_object_set_new(cfg, "quantization_config", q);
    }
    if (cfg) text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    json_decref(map);
    return text;
}

int rt_safetensors_write(const llmopt_model *m, const char *path, llmopt_error *err) {
    int rc = check_tensors(m, err);
    if (rc != 0) return rc;
    char *dir = strdup(path);
    if (!dir) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    const char *name = slash ? slash + 1 : path;
    if (slash) *slash = '\0';
    out_file st = {0};
    size_t *idx = all_tensors(m);
    rc = idx ? out_open(&st, slash ? (*dir ? dir : "/") : ".", name, err) : error_set(err, LLMOPT_ENOMEM, "out of memory");
    if (rc == 0) rc = write_safetensors(&st, m, (shard){idx, rt_model_n_tensors(m)}, err);
    free(idx);
    if (rc == 0) rc = out_finish(&st, err);
    if (rc == 0) rc = out_commit(&st, err);
    out_abort(&st);
    if (rc == 0) sync_dir(slash ? (*dir ? dir : "/") : ".");
    free(dir);
    return rc;
}

/* ---- sharding, as huggingface_hub's split_torch_state_dict_into_shards ----
 * Tensors in order fill a shard until the next would take it over max bytes; a tensor larger
 * than max is a shard of its own. More than one shard: model-0000i-of-0000n.safetensors and
 * model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map": {name: file}}). */

static uint64_t g_max_shard = RT_DEFAULT_MAX_SHARD;

void rt_set_max_shard_bytes(uint64_t max) { g_max_shard = max ? max : RT_DEFAULT_MAX_SHARD; }

/* Splits the tensors into shards: order[] holds tensor indices grouped by shard, sh[] points
 * into it. Returns the number of shards, 0 when out of memory. */
static size_t plan_shards(const llmopt_model *m, uint64_t max, size_t *order, shard *sh) {
    const size_t n = rt_model_n_tensors(m);
    size_t ns = 0, used = 0, cur = 0, cur_start = 0;
    uint64_t cur_bytes = 0;
    /* big tensors first take their own slots at the end of order; the rest fill shards in order */
    size_t *big = malloc((n ? n : 1) * sizeof *big), nbig = 0;
    if (!big) return 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t b = rt_model_get(m, rt_model_tensor_name(m, i))->nbytes;
        if (b > max) {
            big[nbig++] = i;
            continue;
        }
        if (cur > 0 && cur_bytes + b > max) {
            sh[ns++] = (shard){order + cur_start, cur};
            cur_start = used, cur = 0, cur_bytes = 0;
        }
        order[used++] = i, cur++, cur_bytes += b;
    }
    if (cur > 0) sh[ns++] = (shard){order + cur_start, cur};
    for (size_t k = 0; k < nbig; k++) {
        order[used] = big[k];
        sh[ns++] = (shard){order + used++, 1};
    }
    free(big);
    if (ns == 0) sh[ns++] = (shard){order, 0}; /* a model without tensors: one empty file */
    return ns;
}

static char *index_text(const llmopt_model *m, const shard *sh, size_t ns, char names[][64]) {
    json_t *map = json_object(), *idx = json_object();
    json_int_t total = 0;
    for (size_t s = 0; s < ns; s++)
        for (size_t k = 0; k < sh[s].n; k++) {
            const char *name = rt_model_tensor_name(m, sh[s].idx[k]);
            total += (json_int_t)rt_model_get(m, name)->nbytes;
            json_object_set_new(map, name, json_string(names[s]));
        }
    json_object_set_new(idx, "metadata", json_pack("{s:I}", "total_size", total));
    json_object_set_new(idx, "weight_map", map);
    char *text = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(idx);
    return text;
}

int rt_model_save(const llmopt_model *m, const char *dir, llmopt_error *err) {
    int rc = check_tensors(m, err);
    if (rc != 0) return rc;
    const size_t n = rt_model_n_tensors(m);
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    shard *sh = malloc((n ? n : 1) * sizeof *sh);
    size_t ns = order && sh ? plan_shards(m, g_max_shard, order, sh) : 0;
    char (*names)[64] = ns ? calloc(ns, sizeof *names) : NULL;
    out_file *files = ns ? calloc(ns + 2, sizeof *files) : NULL; /* shards, the index, config.json */
    char *config = files ? config_text(m) : NULL, *index = NULL;
    if (!config) rc = error_set(err, LLMOPT_ENOMEM, "%s: cannot serialize config.json", dir);
    for (size_t s = 0; rc == 0 && s < ns; s++) {
        if (ns == 1) snprintf(names[s], sizeof names[s], "model.safetensors");
        else snprintf(names[s], sizeof names[s], "model-%05zu-of-%05zu.safetensors", s + 1, ns);
    }
    if (rc == 0 && ns > 1 && !(index = index_text(m, sh, ns, names)))
        rc = error_set(err, LLMOPT_ENOMEM, "%s: cannot serialize the shard index", dir);
    if (rc == 0) rc = fs_mkdirs(dir, err);
    /* side files (tokenizer, generation config) first, each complete or absent */
    for (size_t i = 0; rc == 0 && i < rt_model_n_files(m); i++) {
        size_t len = 0;
        const char *name = rt_model_file_name(m, i), *data = rt_model_get_file(m, name, &len);
        char *path = fs_join(dir, name);
        rc = path ? fs_write_atomic(path, data, len, err) : error_set(err, LLMOPT_ENOMEM, "out of memory");
        free(path);
    }
    size_t nf = 0; /* files opened, in order: shards, index (when sharded), config.json */
    for (size_t s = 0; rc == 0 && s < ns; s++) {
        rc = out_open(&files[nf++], dir, names[s], err);
        if (rc == 0) rc = write_safetensors(&files[nf - 1], m, sh[s], err);
        if (rc == 0) rc = out_finish(&files[nf - 1], err);
    }
    if (rc == 0 && index) {
        rc = out_open(&files[nf++], dir, "model.safetensors.index.json", err);
        if (rc == 0) rc = out_write(&files[nf - 1], index, strlen(index), err);
        if (rc == 0) rc = out_write(&files[nf - 1], "\n", 1, err);
        if (rc == 0) rc = out_finish(&files[nf - 1], err);
    }
    if (rc == 0) {
        rc = out_open(&files[nf++], dir, "config.json", err);
        if (rc == 0) rc = out_write(&files[nf - 1], config, strlen(config), err);
        if (rc == 0) rc = out_write(&files[nf - 1], "\n", 1, err);
        if (rc == 0) rc = out_finish(&files[nf - 1], err);
    }
    /* Every file is complete; now the renames, config.json last. If one fails, take the ones
     * already renamed back out so no weights stand without their index and config. */
    size_t done = 0;
    for (; rc == 0 && done < nf; done++) rc = out_commit(&files[done], err);
    if (rc != 0)
        for (size_t k = 0; k < done && k < nf; k++)
            if (!files[k].tmp[0]) unlink(files[k].final);
    for (size_t k = 0; files && k < nf; k++) out_abort(&files[k]);
    if (rc == 0) sync_dir(dir);
    free(config), free(index), free(files), free(names), free(sh), free(order);
    return rc;
}
