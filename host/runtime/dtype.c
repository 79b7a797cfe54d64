/* The dtype traits table: element sizes, block sizes and names for every llmopt_dtype, in one
 * place (as ggml's type_traits), plus overflow-checked byte counts for a shape. */
#include "runtime.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
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
    /* QLoRA's NF4, blocks of 64: f32 absmax and 32 bytes of codes */
    [LLMOPT_DTYPE_NF4] = {{sizeof(llmopt_dtype_traits), "nf4", LLMOPT_NF4_BLOCK, 4 + LLMOPT_NF4_BLOCK / 2, 1}, NULL},
};

/* ---- group-quantized dtypes: LLMOPT_DTYPE_GQ(bits, group, asym) ----
 * A block is one group: f16 scale, (asym) f16 zero, then group*bits/8 bytes of codes. Their
 * traits are made on first request and kept for the life of the process in a fixed table, so
 * the pointer handed out stays valid; readers scan the published prefix without a lock and only
 * a new entry takes the mutex. A program that asks for more than GQ_CACHE distinct GQ types gets
 * NULL for the extra ones (a model uses a handful). */
#define GQ_CACHE 256

typedef struct gq_entry {
    int dtype;
    char name[24];   /* "gq4g128s": bits, group, s(ym)/a(sym) */
    llmopt_dtype_traits t;
} gq_entry;

static gq_entry gq_table[GQ_CACHE];
static atomic_int gq_count;  /* entries [0, gq_count) are complete */
static pthread_mutex_t gq_lock = PTHREAD_MUTEX_INITIALIZER;

static int gq_valid(int bits, int64_t group, int asym) {
    return (bits == 2 || bits == 3 || bits == 4 || bits == 8) && group >= 1 &&
           group <= LLMOPT_DTYPE_GQ_GROUP(0x7fffffff) && (group * bits) % 8 == 0 && (asym == 0 || asym == 1);
}

static const llmopt_dtype_traits *gq_find(int dtype, int n) {
    for (int i = 0; i < n; i++)
        if (gq_table[i].dtype == dtype) return &gq_table[i].t;
    return NULL;
}

static const llmopt_dtype_traits *gq_traits(int dtype) {
    int bits = LLMOPT_DTYPE_GQ_BITS(dtype), asym = LLMOPT_DTYPE_GQ_ASYM(dtype);
    int64_t group = LLMOPT_DTYPE_GQ_GROUP(dtype);
    /* every bit outside the fields must be clear, so one type has one value */
    if (!gq_valid(bits, group, asym) || dtype != LLMOPT_DTYPE_GQ(bits, (int)group, asym)) return NULL;
    const llmopt_dtype_traits *t = gq_find(dtype, atomic_load_explicit(&gq_count, memory_order_acquire));
    if (t) return t;
    pthread_mutex_lock(&gq_lock);
    int n = atomic_load_explicit(&gq_count, memory_order_relaxed);
    if (!(t = gq_find(dtype, n)) && n < GQ_CACHE) {
        gq_entry *e = &gq_table[n];
        e->dtype = dtype;
        snprintf(e->name, sizeof e->name, "gq%dg%lld%c", bits, (long long)group, asym ? 'a' : 's');
        e->t = (llmopt_dtype_traits){sizeof(llmopt_dtype_traits), e->name, group,
                                     (size_t)(asym ? 4 : 2) + (size_t)(group * bits / 8), 1};
        atomic_store_explicit(&gq_count, n + 1, memory_order_release);
        t = &e->t;
    }
    pthread_mutex_unlock(&gq_lock);
    return t;
}

/* "gq<bits>g<group><s|a>" -> LLMOPT_DTYPE_GQ, -1 when the spelling or the combination is bad. */
static int gq_from_name(const char *name) {
    if (strncmp(name, "gq", 2) != 0 || name[2] < '1' || name[2] > '9') return -1;
    char *end;
    long bits = strtol(name + 2, &end, 10);
    if (end == name + 2 || *end != 'g' || bits < 0 || bits > 8) return -1;
    const char *g = end + 1;
    if (*g < '1' || *g > '9') return -1; /* no sign, no leading zero: one spelling per type */
    long long group = strtoll(g, &end, 10);
    if ((*end != 's' && *end != 'a') || end[1] != '\0') return -1;
    int asym = *end == 'a';
    if (!gq_valid((int)bits, group, asym)) return -1;
    return LLMOPT_DTYPE_GQ((int)bits, (int)group, asym);
}

const llmopt_dtype_traits *rt_dtype_traits(int dtype) {
    if (LLMOPT_DTYPE_IS_GQ(dtype)) return gq_traits(dtype);
    if (dtype < 0 || dtype >= LLMOPT_DTYPE_COUNT) return NULL;
    return &dtype_table[dtype].t;
}

int rt_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < LLMOPT_DTYPE_COUNT; i++)
        if (strcmp(dtype_table[i].t.name, name) == 0) return i;
    return gq_from_name(name);
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
