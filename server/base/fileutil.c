/* fileutil.c — see fileutil.h. */
#include "server/base/fileutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int chord_read_file(const char *path, char **data, size_t *len, chord_err *err) {
    *data = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return chord_err_setc(err, CHORD_E_NOT_FOUND, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return chord_err_setc(err, CHORD_E_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    *data = buf;
    if (len) *len = n;
    return 0;
}

int chord_fsync_dir(const char *dir, chord_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return chord_err_setc(err, CHORD_E_IO, "%s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0) return chord_err_setc(err, CHORD_E_IO, "fsync %s: %s", dir, strerror(errno));
    return 0;
}

int chord_write_file_atomic(const char *path, const void *data, size_t len, chord_err *err) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return chord_err_setc(err, CHORD_E_IO, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return chord_err_setc(err, CHORD_E_IO, "%s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return chord_err_setc(err, CHORD_E_IO, "write %s: %s", tmp, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return chord_err_setc(err, CHORD_E_IO, "fsync %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return chord_err_setc(err, CHORD_E_IO, "rename %s: %s", path, strerror(e));
    }
    char dcopy[PATH_MAX];
    snprintf(dcopy, sizeof dcopy, "%s", path);
    return chord_fsync_dir(dirname(dcopy), err);
}

int chord_mkdirs(const char *path, chord_err *err) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return chord_err_setc(err, CHORD_E_IO, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return chord_err_setc(err, CHORD_E_IO, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return chord_err_setc(err, CHORD_E_IO, "mkdir %s: %s", buf, strerror(errno));
    return 0;
}

/* nftw's callback for chord_rmtree: children before their directory (FTW_DEPTH). The error
 * text goes through a thread-local so the walk can stop with it. */
static _Thread_local char rmtree_failed[PATH_MAX + 64];

static int rmtree_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    int rc = type == FTW_DP ? rmdir(path) : unlink(path);
    if (rc != 0 && errno != ENOENT) {
        snprintf(rmtree_failed, sizeof rmtree_failed, "%s %s: %s",
                 type == FTW_DP ? "rmdir" : "unlink", path, strerror(errno));
        return -1;
    }
    return 0;
}

int chord_rmtree(const char *path, chord_err *err) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return 0;
        return chord_err_setc(err, CHORD_E_IO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0 && errno != ENOENT)
            return chord_err_setc(err, CHORD_E_IO, "unlink %s: %s", path, strerror(errno));
        return 0;
    }
    rmtree_failed[0] = '\0';
    if (nftw(path, rmtree_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return chord_err_setc(err, CHORD_E_IO, "removing %s: %s", path,
                              rmtree_failed[0] ? rmtree_failed : strerror(errno));
    return 0;
}

int chord_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int chord_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void to_hex(const unsigned char *md, unsigned n, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * n] = '\0';
}

void chord_sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    to_hex(md, n, out);
}

int chord_sha256_file(const char *path, char out[65], chord_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return chord_err_setc(err, CHORD_E_NOT_FOUND, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        fclose(f);
        EVP_MD_CTX_free(ctx);
        return chord_err_setc(err, CHORD_E_INTERNAL, "sha256: init failed");
    }
    unsigned char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(ctx, buf, got);
    int bad = ferror(f);
    fclose(f);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(ctx, md, &n);
    EVP_MD_CTX_free(ctx);
    if (bad) return chord_err_setc(err, CHORD_E_IO, "%s: read error", path);
    to_hex(md, n, out);
    return 0;
}

double chord_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
