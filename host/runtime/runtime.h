/* The host runtime's tensors and models (the part every technique needs). Tensors are
 * refcounted with atomics, since parallel DAG branches share them; a model holds references,
 * so cloning a model copies no tensor data (copy on write at the tensor level). */
#ifndef HOST_RUNTIME_RUNTIME_H
#define HOST_RUNTIME_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#include <llmopt/llmopt.h>
#include "../util/error.h"

/* ---- dtypes: one traits table (host/runtime/dtype.c) ---- */
const llmopt_dtype_traits *rt_dtype_traits(int dtype);  /* NULL when unknown */
int rt_dtype_from_name(const char *name);               /* -1 when unknown */
/* Bytes of a row-major tensor of that shape, 0 when the last dim is not a whole number of
 * blocks, a dim is negative, ndim is outside 0..LLMOPT_MAX_DIMS or the size overflows (and, of
 * course, for a shape with a zero dim). ndim 0 is a scalar of one element. */
size_t rt_dtype_nbytes(int dtype, int ndim, const int64_t *shape);
/* The safetensors header spelling ("F32", "BF16", ...) and back; NULL / -1 when none. */
const char *rt_dtype_safetensors_name(int dtype);
int rt_dtype_from_safetensors_name(const char *name);

/* ---- tensors (host/runtime/tensor.c) ---- */
/* A device id's spelling in configs and messages ("cpu", "cuda", "test"); "?" when unknown. */
const char *rt_device_name(int device);
/* The id of a device name, -1 when unknown. */
int rt_device_from_name(const char *name);
/* Zero-filled, 64-byte aligned heap tensor, refcount 1; NULL on bad dtype/shape or no memory. */
llmopt_tensor *rt_tensor_new(int dtype, int ndim, const int64_t *shape);
/* A tensor over memory someone else owns (an mmap'd checkpoint): release(owner) runs when the
 * last reference goes (release may be NULL). refcount 1. nbytes must equal rt_dtype_nbytes of
 * the shape; on NULL (bad arguments, no memory) release is not called: the caller still owns. */
llmopt_tensor *rt_tensor_wrap(int dtype, int ndim, const int64_t *shape, void *data,
                              size_t nbytes, void (*release)(void *owner), void *owner);
/* A tensor on the device whose memory ops are dev (from the registry), refcount 1, its storage
 * from dev->alloc and freed through dev->free at the last unref; contents undefined. dev NULL:
 * rt_tensor_new. NULL on bad dtype/shape or when the device is out of memory. The ops must
 * outlive the tensor (release device tensors before the registry). */
llmopt_tensor *rt_tensor_new_on(const llmopt_device_ops *dev, int dtype, int ndim, const int64_t *shape);
/* The memory ops that own t's storage; NULL for host tensors (and views the host did not make). */
const llmopt_device_ops *rt_tensor_device_ops(const llmopt_tensor *t);
/* n bytes between any two memories (NULL ops = host memory): memcpy, h2d, d2h, d2d, or through
 * a host buffer between two devices. 0 or the status of the plugin's copy. */
int rt_copy_bytes(const llmopt_device_ops *dst_dev, void *dst, const llmopt_device_ops *src_dev,
                  const void *src, size_t n);
/* src's bytes into dst: same dtype and shape, any devices the host allocated on. */
int rt_tensor_copy(llmopt_tensor *dst, const llmopt_tensor *src, llmopt_error *err);
/* *out = t on dev (NULL = host): a new reference to t when it is already there, else a copy. */
int rt_tensor_to(const llmopt_tensor *t, const llmopt_device_ops *dev, llmopt_tensor **out, llmopt_error *err);
const llmopt_tensor *rt_tensor_ref(const llmopt_tensor *t);
void rt_tensor_unref(const llmopt_tensor *t);
int64_t rt_tensor_numel(const llmopt_tensor *t);
long rt_tensor_refcount(const llmopt_tensor *t);  /* for tests and diagnostics */
/* An f32/f16/bf16 tensor's values widened to f32 (exact) into dst (numel floats);
 * LLMOPT_EINVAL for any other dtype. */
int rt_tensor_read_f32(const llmopt_tensor *t, float *dst);
/* t's bytes will not be read again soon: when t is a view of a checkpoint's file mapping, its
 * whole pages leave the process's resident set (reads still work: they fault back in from the
 * file). Nothing for heap and device tensors. What a trainer calls once it holds f32 copies. */
void rt_tensor_evict(const llmopt_tensor *t);
/* A new f32 heap tensor of t's shape and values (refcount 1); NULL for other dtypes or no memory. */
llmopt_tensor *rt_tensor_f32_copy(const llmopt_tensor *t);

/* ---- models (host/runtime/model.c) ---- */
/* The struct is private to model.c; the SDK sees llmopt_model as opaque. */
llmopt_model *rt_model_new(const char *arch);
llmopt_model *rt_model_clone(const llmopt_model *src);  /* shares tensors, copies config */
llmopt_model *rt_model_ref(llmopt_model *m);
void rt_model_unref(llmopt_model *m);
const char *rt_model_arch(const llmopt_model *m);
size_t rt_model_n_tensors(const llmopt_model *m);
const char *rt_model_tensor_name(const llmopt_model *m, size_t i);
const llmopt_tensor *rt_model_get(const llmopt_model *m, const char *name);
int rt_model_set(llmopt_model *m, const char *name, const llmopt_tensor *t);
int rt_model_remove(llmopt_model *m, const char *name);
int rt_model_cfg_get_num(const llmopt_model *m, const char *key, double *out);
const char *rt_model_cfg_get_str(const llmopt_model *m, const char *key);
int rt_model_cfg_set_num(llmopt_model *m, const char *key, double v);
int rt_model_cfg_set_str(llmopt_model *m, const char *key, const char *v);
/* Any JSON value by top-level key (NULL json removes it); get: compact text, malloc'd. */
int rt_model_cfg_set_json(llmopt_model *m, const char *key, const char *json);
char *rt_model_cfg_get_json(const llmopt_model *m, const char *key);
size_t rt_model_nbytes(const llmopt_model *m);
/* The weights file the model was loaded from (<dir>/model.safetensors, the shard index, or the
 * .gguf), for error messages and sizes on disk; NULL for a model made or changed in memory
 * (a clone has none: it is made to be changed). set copies the path (NULL clears it). */
int rt_model_set_source(llmopt_model *m, const char *path);
const char *rt_model_source(const llmopt_model *m);
/* Appends {"stage": id, "uses": stage_name} to the model's provenance list. */
int rt_model_add_provenance(llmopt_model *m, const char *stage_id, const char *uses);
size_t rt_model_n_provenance(const llmopt_model *m);
const char *rt_model_provenance_stage(const llmopt_model *m, size_t i);
const char *rt_model_provenance_uses(const llmopt_model *m, size_t i);
/* The architecture config as a new JSON text (config.json contents plus "llmopt_provenance",
 * and "model_type": arch when the config has none), malloc'd; NULL on failure. */
char *rt_model_config_dump(const llmopt_model *m);
/* The architecture config itself (a jansson object, borrowed), for nested values such as
 * rope_scaling that the flat num/str accessors cannot reach. */
struct json_t;
struct json_t *rt_model_config_json(const llmopt_model *m);
/* Replaces the config with the JSON object in text (a config.json; len bytes). A
 * "llmopt_provenance" list in it becomes the model's provenance, so dump/load round-trips. */
int rt_model_config_load(llmopt_model *m, const char *text, size_t len, llmopt_error *err);

/* The side files rt_model_load reads and rt_model_save writes, when present. */
extern const char *const rt_model_side_files[];

/* Side files that travel with a model unchanged and are saved beside its weights
 * (tokenizer.json, tokenizer_config.json, generation_config.json, special_tokens_map.json):
 * stored once and shared by clones. set copies the bytes (replacing a file of that name). */
int rt_model_set_file(llmopt_model *m, const char *name, const void *data, size_t len);
const char *rt_model_get_file(const llmopt_model *m, const char *name, size_t *len); /* NUL-terminated */
size_t rt_model_n_files(const llmopt_model *m);
const char *rt_model_file_name(const llmopt_model *m, size_t i);
/* The parsed form of a side file, made once by parse(data, len, arg) and cached with the file
 * (so every clone shares one parsed tokenizer); NULL when the file is absent or parse fails. */
void *rt_model_file_parsed(const llmopt_model *m, const char *name,
                           void *(*parse)(const char *data, size_t len, void *arg), void (*free_parsed)(void *),
                           void *arg);

/* Saves every tensor of the model as <dir>/model.safetensors (plus config.json), written to
 * temporary names first. F32/F16/BF16/I8/U8/I32/I64 tensors only. */
int rt_model_save(const llmopt_model *m, const char *dir, llmopt_error *err);
/* rt_model_save splits the weights into shards of at most this many bytes (a tensor larger than
 * that is a shard alone), as transformers' save_pretrained(max_shard_size=...) does: default
 * 5 GB, its default. 0 restores the default. */
#define RT_DEFAULT_MAX_SHARD 5000000000ull
void rt_set_max_shard_bytes(uint64_t max);
/* Writes m's tensors as one safetensors file at path (no config.json, no side files): streamed to
 * a temporary name and renamed, so the file is complete or absent. */
int rt_safetensors_write(const llmopt_model *m, const char *path, llmopt_error *err);

/* Loads a Hugging Face model directory (config.json + model.safetensors); every error names the
 * file and the tensor or field. */
int rt_model_load(const char *dir, llmopt_model **out, llmopt_error *err);

/* ---- safetensors reading (host/runtime/safetensors_read.c) ---- */
/* One tensor as a safetensors header describes it, already checked against the file. */
typedef struct rt_safetensors_entry {
    char *name;
    int dtype;                       /* llmopt_dtype */
    int ndim;
    int64_t shape[LLMOPT_MAX_DIMS];  /* unused trailing entries are 1 */
    size_t offset;                   /* bytes from the start of the file, not of the data */
    size_t nbytes;
    size_t header_index;             /* position in the header: breaks ties in the order */
} rt_safetensors_entry;
/* Validates a whole safetensors file held in memory (buf, len bytes: 8-byte header length,
 * JSON header, data) and lists its tensors in data-offset order in *out (*n of them; free with
 * rt_safetensors_free). Reads nothing outside buf and no tensor data, so it is the entry point
 * for fuzzing. `file` names the file in error messages (LLMOPT_EFORMAT, naming the tensor). */
int rt_safetensors_parse_header(const char *file, const uint8_t *buf, size_t len,
                                rt_safetensors_entry **out, size_t *n, llmopt_error *err);
void rt_safetensors_free(rt_safetensors_entry *entries, size_t n);

#endif
