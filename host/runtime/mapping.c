/* Read-only, refcounted file mappings for checkpoint loaders. */
/* madvise(MADV_DONTNEED) is Linux/BSD, outside POSIX 2008 (whose posix_madvise DONTNEED glibc ignores). */
#define _DEFAULT_SOURCE
#include "mapping.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int rt_mapping_open(const char *path, rt_mapping **out, llmopt_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return error_set(err, errno == ENOENT ? LLMOPT_ENOTFOUND : LLMOPT_EIO, "%s: cannot open: %s", path,
                         strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return error_set(err, LLMOPT_EIO, "%s: not a regular file", path);
    }
    rt_mapping *map = calloc(1, sizeof *map);
    if (!map) {
        close(fd);
        return error_set(err, LLMOPT_ENOMEM, "%s: out of memory", path);
    }
    atomic_init(&map->refs, 1);
    map->len = (size_t)st.st_size;
    if (map->len > 0) {
        /* MAP_PRIVATE + PROT_READ: tensors shared between models are immutable anyway, and a
         * change to the file on disk while we run is not ours to see. */
        void *p = mmap(NULL, map->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(map);
            return error_set(err, LLMOPT_EIO, "%s: cannot mmap: %s", path, strerror(e));
        }
        map->base = p;
    }
    close(fd); /* the mapping stays valid without the descriptor */
    *out = map;
    return 0;
}

int rt_mapping_copy(const char *name, const void *buf, size_t len, rt_mapping **out, llmopt_error *err) {
    *out = NULL;
    rt_mapping *map = calloc(1, sizeof *map);
    void *p = len ? malloc(len) : NULL;
    if (!map || (len && !p)) {
        free(map);
        free(p);
        return error_set(err, LLMOPT_ENOMEM, "%s: out of memory for a copy of %zu bytes", name, len);
    }
    if (len) memcpy(p, buf, len);
    atomic_init(&map->refs, 1);
    map->base = p;
    map->len = len;
    map->heap = 1;
    *out = map;
    return 0;
}

void rt_mapping_ref(rt_mapping *map) { atomic_fetch_add_explicit(&map->refs, 1, memory_order_relaxed); }

void rt_mapping_unref(void *owner) {
    rt_mapping *map = owner;
    if (!map || atomic_fetch_sub_explicit(&map->refs, 1, memory_order_acq_rel) != 1) return;
    if (map->heap) free(map->base);
    else if (map->base) munmap(map->base, map->len);
    free(map);
}

void rt_mapping_evict(const rt_mapping *map, const void *p, size_t n) {
    if (!map || map->heap || !map->base || n == 0) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) / page * page, hi = ((uintptr_t)p + n) / page * page;
    uintptr_t b0 = (uintptr_t)map->base, b1 = b0 + map->len;
    if (lo < b0 || hi > b1 || hi <= lo) return; /* not inside this mapping, or no whole page */
    /* MADV_DONTNEED on a private mapping that was never written drops clean file pages; the
     * result is only a hint taken or not, and nothing is lost either way. */
    (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
