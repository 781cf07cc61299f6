/* buf.h — growable memory without the `p = realloc(p, n)` leak: a byte buffer (chord_buf) and a
 * growth step for typed arrays (chord_array_grow).
 *
 * The rule both keep: a failed growth changes nothing. The old block, its contents and the
 * recorded capacity stay as they were and the call returns -1, so the caller's single cleanup
 * path still frees everything. Capacities grow geometrically (x2, at least what was asked), and
 * size arithmetic that would overflow size_t fails like an allocation.
 *
 *     chord_buf b = {0};
 *     if (chord_buf_append(&b, text, len) != 0) goto fail;   // b.data is NUL-terminated
 *     ...
 *     chord_buf_free(&b);
 *
 *     int32_t *ids = NULL; size_t cap = 0;           // ... n ids in use
 *     int32_t *grown = chord_array_grow(ids, &cap, n + 1, sizeof *ids);
 *     if (!grown) goto fail;                          // ids still valid, still owned
 *     ids = grown;
 *
 * Not here: ownership transfer beyond chord_buf_take, pools, anything thread-safe. */
#ifndef CHORD_BASE_BUF_H
#define CHORD_BASE_BUF_H

#include <stddef.h>

typedef struct chord_buf {
    char *data; /* NULL until the first growth; NUL-terminated after any append */
    size_t len; /* bytes in use (the NUL not counted) */
    size_t cap; /* bytes allocated */
} chord_buf;

/* Makes room for at least `cap` bytes (len and contents kept). 0, or -1 with b unchanged. */
int chord_buf_reserve(chord_buf *b, size_t cap);
/* Appends n bytes and keeps a NUL after them. 0, or -1 with b unchanged. */
int chord_buf_append(chord_buf *b, const void *data, size_t n);
/* Appends printf-formatted text (any length) and keeps a NUL after it. 0, or -1 with b's
 * contents unchanged (an encoding error or out of memory). */
int chord_buf_printf(chord_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the data (NUL-terminated, "" for an empty buffer; NULL when out of memory) to the
 * caller, who frees it, and leaves b empty. */
char *chord_buf_take(chord_buf *b);
/* Frees the data; b is empty and reusable. */
void chord_buf_free(chord_buf *b);

/* The array `items` (elem_size bytes each, *cap of them allocated; NULL with *cap 0 at first)
 * with room for at least need >= 1 items: items itself when it is large enough, else the grown
 * (possibly moved) block, *cap updated. NULL when out of memory: items is still valid and owned
 * by the caller, *cap unchanged. */
void *chord_array_grow(void *items, size_t *cap, size_t need, size_t elem_size);

#endif
