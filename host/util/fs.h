/* File-system helpers with the "nothing half-written" rule built in: files are written to a
 * temporary name beside the target, synced, then renamed over it. */
#ifndef HOST_UTIL_FS_H
#define HOST_UTIL_FS_H

#include <stddef.h>
#include "error.h"

/* mkdir -p. */
int fs_mkdirs(const char *path, llmopt_error *err);
/* Writes len bytes to path atomically (path.tmp-PID, fsync, rename). */
int fs_write_atomic(const char *path, const void *data, size_t len, llmopt_error *err);
/* Reads a whole file into a NUL-terminated malloc'd buffer. */
int fs_read_all(const char *path, char **out, size_t *len, llmopt_error *err);
/* rm -rf; a missing path is not an error. */
int fs_rmtree(const char *path);
int fs_is_dir(const char *path);
int fs_exists(const char *path);
/* malloc'd "a/b". */
char *fs_join(const char *a, const char *b);

#endif
