/* GGUF files (llama.cpp / ggml's single-file model format, v2 and v3; the spec is ggml's
 * docs/gguf.md): a validating parser over a buffer (the fuzzing entry point), a loader that turns
 * a GPT-2 or Llama GGUF into the Hugging Face form the runtime runs (names, config.json values,
 * tokenizer.json), and a writer for the other direction, named and laid out as llama.cpp's
 * convert_hf_to_gguf.py does (Llama q/k rows permuted for ggml's rope, GPT-2 Conv1D transposed). */
#ifndef HOST_RUNTIME_GGUF_H
#define HOST_RUNTIME_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include <llmopt/llmopt.h>

#include "../util/error.h"

/* Metadata value types (gguf_metadata_value_type). */
typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

/* The ggml tensor types this code maps to llmopt dtypes (ggml.h's enum ggml_type values). */
enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_BF16 = 30,
};

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

typedef struct gguf_file gguf_file;

/* One tensor as the file describes it, already checked: ne[] is ggml's order (ne[0] is the
 * row length, innermost first), unused trailing entries are 1; offset is from the start of the
 * buffer (not of the data section). */
typedef struct gguf_tensor_info {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint32_t type;   /* ggml type id */
    size_t offset;
    size_t nbytes;
} gguf_tensor_info;

/* Validates a whole GGUF file held in memory (buf, len bytes) and indexes its metadata and
 * tensors. Reads nothing outside buf; *out keeps pointers into buf, which must outlive it.
 * Errors name the file (`name`) and the key or tensor: LLMOPT_EFORMAT for a malformed file,
 * LLMOPT_EUNSUPPORTED for a version other than 2 or 3, a big-endian file, nested arrays or a
 * tensor type ggml does not define. */
int gguf_parse(const char *name, const uint8_t *buf, size_t len, gguf_file **out, llmopt_error *err);
void gguf_file_free(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
size_t gguf_alignment(const gguf_file *f);
size_t gguf_data_offset(const gguf_file *f);  /* where the data section starts in buf */

/* Metadata, in file order. i is an index below gguf_n_kv. */
size_t gguf_n_kv(const gguf_file *f);
const char *gguf_kv_key(const gguf_file *f, size_t i);
int gguf_kv_type(const gguf_file *f, size_t i);
long gguf_find_key(const gguf_file *f, const char *key);  /* -1 when absent */
/* Scalars: an integer or bool key as u64/i64 (-1 if it is of another type or out of range),
 * any number as a double, a string (NUL-terminated copy; *len its bytes; NULL if not a string). */
int gguf_get_u64(const gguf_file *f, size_t i, uint64_t *v);
int gguf_get_i64(const gguf_file *f, size_t i, int64_t *v);
int gguf_get_f64(const gguf_file *f, size_t i, double *v);
const char *gguf_get_str(const gguf_file *f, size_t i, size_t *len);
/* Arrays: the element type and count (0 / GGUF_TYPE_COUNT when the key is not an array). */
int gguf_arr_type(const gguf_file *f, size_t i);
size_t gguf_arr_n(const gguf_file *f, size_t i);
/* Element j of a numeric or bool array, converted (-1 when not numeric / out of range). */
int gguf_arr_f64(const gguf_file *f, size_t i, size_t j, double *v);
int gguf_arr_i64(const gguf_file *f, size_t i, size_t j, int64_t *v);
/* Element j of a string array: a pointer into the buffer (not NUL-terminated) and its length. */
const char *gguf_arr_str(const gguf_file *f, size_t i, size_t j, size_t *len);

size_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor_info *gguf_tensor(const gguf_file *f, size_t i);  /* in file order */
long gguf_find_tensor(const gguf_file *f, const char *name);         /* -1 when absent */
/* "q4_k", ... for any ggml type id; NULL when ggml defines none. */
const char *gguf_ggml_type_name(uint32_t type);

/* Loads a GPT-2 or Llama GGUF as the runtime's Hugging Face form: tensors renamed (token_embd.weight
 * -> model.embed_tokens.weight, ...), Llama q/k rows un-permuted, GPT-2 Conv1D weights transposed
 * back (copies), the others mapped from the file without a copy; config.json values from the
 * {arch}.* keys; tokenizer.json (+ tokenizer_config.json, generation_config.json) rebuilt from
 * tokenizer.ggml.*. F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors are kept in their type; Q4_K/Q5_K/Q6_K
 * ones are dequantized to f32 (kquant.h: llmopt runs no k-quant type); any other type is
 * LLMOPT_EUNSUPPORTED naming the tensor. */
int gguf_load(const char *path, llmopt_model **out, llmopt_error *err);
/* The same from a file held in memory (copied, so buf need not outlive the model); name stands
 * for the path in errors and as the model's source. The fuzzing entry point. */
int gguf_load_mem(const char *name, const uint8_t *buf, size_t len, llmopt_model **out, llmopt_error *err);

/* Writes m (model_type gpt2 or llama) as a GGUF v3 file at path (through a temporary name),
 * alignment 32, with the architecture keys, the tokenizer from its tokenizer.json side file
 * (when it has one) and every tensor in llama.cpp's names and layout. */
int gguf_write(const llmopt_model *m, const char *path, llmopt_error *err);

#endif
