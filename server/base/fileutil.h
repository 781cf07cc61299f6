/* fileutil.h — whole-file reads, atomic writes (temp + fsync + rename), directories (create,
 * remove), SHA-256. */
#ifndef CHORD_BASE_FILEUTIL_H
#define CHORD_BASE_FILEUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

/* Reads a whole file into a NUL-terminated malloc'd buffer; *len excludes the NUL. */
int chord_read_file(const char *path, char **data, size_t *len, chord_err *err);
/* Writes data to path atomically: path.tmp.<pid>, fsync, rename, fsync of the directory. */
int chord_write_file_atomic(const char *path, const void *data, size_t len, chord_err *err);
/* fsync a directory (after a rename into it). */
int chord_fsync_dir(const char *dir, chord_err *err);
/* mkdir -p. */
int chord_mkdirs(const char *path, chord_err *err);
/* rm -rf without a shell: removes path and, for a directory, everything under it (symbolic
 * links are removed, never followed). A missing path is success. Errors name the entry. */
int chord_rmtree(const char *path, chord_err *err);
/* 1 when path exists and is a directory / regular file. */
int chord_is_dir(const char *path);
int chord_is_file(const char *path);
/* SHA-256 of a buffer / a file, as 64 lowercase hex characters + NUL. */
void chord_sha256_hex(const void *data, size_t len, char out[65]);
int chord_sha256_file(const char *path, char out[65], chord_err *err);
/* Monotonic seconds. */
double chord_now(void);

#endif
