/* buf.c — chord_buf and chord_array_grow (buf.h). */
#include "server/base/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *chord_array_grow(void *items, size_t *cap, size_t need, size_t elem_size) {
    if (need <= *cap && items) return items;
    if (elem_size == 0 || need == 0) return NULL;
    size_t grown = *cap > SIZE_MAX / 2 ? SIZE_MAX : *cap * 2;
    if (grown < need) grown = need;
    if (grown < 16) grown = 16;
    if (grown > SIZE_MAX / elem_size) {
        if (need > SIZE_MAX / elem_size) return NULL;
        grown = need;
    }
    void *p = realloc(items, grown * elem_size);
    if (!p) return NULL;
    *cap = grown;
    return p;
}

int chord_buf_reserve(chord_buf *b, size_t cap) {
    if (cap == 0) cap = 1;
    char *data = chord_array_grow(b->data, &b->cap, cap, 1);
    if (!data) return -1;
    b->data = data;
    return 0;
}

int chord_buf_append(chord_buf *b, const void *data, size_t n) {
    if (n > SIZE_MAX - b->len - 1) return -1;
    if (chord_buf_reserve(b, b->len + n + 1) != 0) return -1;
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int chord_buf_printf(chord_buf *b, const char *fmt, ...) {
    for (;;) {
        size_t room = b->cap - b->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            if (b->data) b->data[b->len] = '\0';
            return -1;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return 0;
        }
        /* too long for the room left (or no buffer yet): grow and print again */
        if (chord_buf_reserve(b, b->len + (size_t)n + 1) != 0) {
            if (b->data) b->data[b->len] = '\0';
            return -1;
        }
    }
}

char *chord_buf_take(chord_buf *b) {
    if (!b->data && chord_buf_reserve(b, 1) != 0) return NULL;
    if (b->len == 0) b->data[0] = '\0';
    char *data = b->data;
    memset(b, 0, sizeof *b);
    return data;
}

void chord_buf_free(chord_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}
