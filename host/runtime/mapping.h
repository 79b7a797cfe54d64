/* A checkpoint file mapped read-only and refcounted: tensors point into it (no copy) and the
 * last one released unmaps it. Shared by the safetensors and GGUF loaders. */
#ifndef HOST_RUNTIME_MAPPING_H
#define HOST_RUNTIME_MAPPING_H

#include <stdatomic.h>
#include <stddef.h>
#include "../util/error.h"

typedef struct rt_mapping {
    atomic_long refs;  /* the loader's reference plus one per tensor */
    void *base;        /* NULL for an empty file, which mmap cannot map */
    size_t len;
    int heap;          /* base is malloc'd (rt_mapping_copy), not mmap'd */
} rt_mapping;

/* Maps a regular file (refcount 1). */
int rt_mapping_open(const char *path, rt_mapping **out, llmopt_error *err);
/* A heap copy of len bytes at buf standing in for a file (refcount 1): what in-memory loaders
 * (the fuzz targets) hand to code written for a mapping. */
int rt_mapping_copy(const char *name, const void *buf, size_t len, rt_mapping **out, llmopt_error *err);
/* Takes a reference for a tensor; release with rt_mapping_unref (an rt_tensor_wrap release). */
void rt_mapping_ref(rt_mapping *map);
void rt_mapping_unref(void *map);
/* Tells the kernel that the whole pages of [p, p + n) inside a file mapping will not be read
 * again soon, so they leave this process's resident set (a later read faults them back in from
 * the file: the bytes never change). Nothing for a heap copy, whose pages hold the only copy. */
void rt_mapping_evict(const rt_mapping *map, const void *p, size_t n);

#endif
