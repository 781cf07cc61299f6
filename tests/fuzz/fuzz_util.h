/* fuzz_util.h — what the fuzz targets share: the input as a NUL-terminated string, and as a file
 * for the parsers that read a path (one temp directory per process, created once). */
#ifndef CHORD_FUZZ_UTIL_H
#define CHORD_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* data as a malloc'd C string (embedded NULs end it early, as they would for the parser). */
static inline char *fuzz_cstring(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* The process's scratch directory (mkdtemp under $TMPDIR or /tmp). */
static inline const char *fuzz_dir(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/chord-fuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) abort();
    }
    return dir;
}

/* Writes data to fuzz_dir()/name; the full path goes to path. */
static inline void fuzz_write_file(const char *name, const uint8_t *data, size_t size, char *path,
                                   size_t cap) {
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f)) abort();
}

#endif
