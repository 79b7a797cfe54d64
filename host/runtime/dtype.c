/* The dtype traits table: element sizes, block sizes and names for every llmopt_dtype, in one
 * place (as ggml's type_traits), plus overflow-checked byte counts for a shape. */
#include "runtime.h"

#include <string.h>

/* The SDK traits plus the host-only facts about each type (its safetensors spelling). */
typedef struct rt_dtype_entry {
    llmopt_dtype_traits t;
    const char *st_name; /* safetensors header "dtype", NULL when the format has none */
} rt_dtype_entry;

#define PLAIN(name_, size_, st_) \
    { {sizeof(llmopt_dtype_traits), name_, 1, size_, 0}, st_ }

static const rt_dtype_entry dtype_table[LLMOPT_DTYPE_COUNT] = {
    [LLMOPT_DTYPE_F32] = PLAIN("f32", 4, "F32"),
    [LLMOPT_DTYPE_F16] = PLAIN("f16", 2, "F16"),
    [LLMOPT_DTYPE_BF16] = PLAIN("bf16", 2, "BF16"),
    [LLMOPT_DTYPE_I8] = PLAIN("i8", 1, "I8"),
    [LLMOPT_DTYPE_U8] = PLAIN("u8", 1, "U8"),
    [LLMOPT_DTYPE_I32] = PLAIN("i32", 4, "I32"),
    [LLMOPT_DTYPE_I64] = PLAIN("i64", 8, "I64"),
    /* ggml blocks of 32: f16 scale (+ f16 min) and the codes; no safetensors spelling */
    [LLMOPT_DTYPE_Q8_0] = {{sizeof(llmopt_dtype_traits), "q8_0", 32, 2 + 32, 1}, NULL},
    [LLMOPT_DTYPE_Q4_0] = {{sizeof(llmopt_dtype_traits), "q4_0", 32, 2 + 16, 1}, NULL},
    [LLMOPT_DTYPE_Q4_1] = {{sizeof(llmopt_dtype_traits), "q4_1", 32, 2 + 2 + 16, 1}, NULL},
};

const llmopt_dtype_traits *rt_dtype_traits(int dtype) {
    if (dtype < 0 || dtype >= LLMOPT_DTYPE_COUNT) return NULL;
    return &dtype_table[dtype].t;
}

int rt_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < LLMOPT_DTYPE_COUNT; i++)
        if (strcmp(dtype_table[i].t.name, name) == 0) return i;
    return -1;
}

const char *rt_dtype_safetensors_name(int dtype) {
    if (dtype < 0 || dtype >= LLMOPT_DTYPE_COUNT) return NULL;
    return dtype_table[dtype].st_name;
}

int rt_dtype_from_safetensors_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < LLMOPT_DTYPE_COUNT; i++)
        if (dtype_table[i].st_name && strcmp(dtype_table[i].st_name, name) == 0) return i;
    return -1;
}

size_t rt_dtype_nbytes(int dtype, int ndim, const int64_t *shape) {
    const llmopt_dtype_traits *tr = rt_dtype_traits(dtype);
    if (!tr || ndim < 0 || ndim > LLMOPT_MAX_DIMS || (ndim > 0 && !shape)) return 0;
    /* Keep sizes below PTRDIFF_MAX so pointer arithmetic and alignment round-ups stay safe. */
    const uint64_t limit = (uint64_t)PTRDIFF_MAX;
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return 0;
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && numel > limit / d) return 0;
        numel *= d;
    }
    int64_t last = ndim > 0 ? shape[ndim - 1] : 1;  /* a scalar is one element */
    if (last % tr->block_size != 0) return 0;
    uint64_t nblocks = numel / (uint64_t)tr->block_size;
    if (nblocks != 0 && (uint64_t)tr->type_size > limit / nblocks) return 0;
    return (size_t)(nblocks * tr->type_size);
}
