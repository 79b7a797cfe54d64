/* File-system helpers: atomic writes, recursive mkdir and remove. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fs_mkdirs(const char *path, llmopt_error *err) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return error_set(err, LLMOPT_EINVAL, "bad directory path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return error_set(err, LLMOPT_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
        buf[i] = c;
    }
    if (!fs_is_dir(path)) return error_set(err, LLMOPT_EIO, "%s: not a directory", path);
    return 0;
}

int fs_write_atomic(const char *path, const void *data, size_t len, llmopt_error *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return error_set(err, LLMOPT_EINVAL, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) return error_set(err, LLMOPT_EIO, "%s: cannot write: %s", path, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return error_set(err, LLMOPT_EIO, "%s: write failed: %s", path, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 && errno != EINVAL) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return error_set(err, LLMOPT_EIO, "%s: fsync failed: %s", path, strerror(e));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return error_set(err, LLMOPT_EIO, "%s: cannot finish writing: %s", path, strerror(e));
    }
    return 0;
}

int fs_read_all(const char *path, char **out, size_t *len, llmopt_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return error_set(err, LLMOPT_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
        if (cap - n - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) return error_set(err, LLMOPT_ENOMEM, "%s: out of memory reading file", path);
    if (bad) {
        free(buf);
        return error_set(err, LLMOPT_EIO, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p) != 0 && errno != ENOENT ? -1 : 0;
}

int fs_rmtree(const char *path) {
    if (!fs_exists(path)) return 0;
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : LLMOPT_EIO;
}

int fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

char *fs_join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 2);
    if (!s) return NULL;
    memcpy(s, a, na);
    size_t k = na;
    if (k > 0 && s[k - 1] != '/') s[k++] = '/';
    memcpy(s + k, b, nb + 1);
    return s;
}
