/* utf8.c — the UTF-8 decoder of utf8.h. */
#include "server/base/utf8.h"

int chord_utf8_scan(const unsigned char *s, size_t n, size_t *len, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) {
        *len = 1;
        if (cp) *cp = c;
        return CHORD_UTF8_OK;
    }
    /* the lead byte fixes the length and the range of the second byte (table 3-7): E0 and F0
     * exclude the overlong forms, ED the surrogates, F4 what lies above U+10FFFF */
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *len = 1; /* a continuation byte, C0/C1 (always overlong) or F5..FF */
        return CHORD_UTF8_BAD;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *len = n;
            return CHORD_UTF8_SHORT;
        }
        unsigned char d = s[i];
        if (d < lo || d > hi) {
            *len = i;
            return CHORD_UTF8_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
        v = (v << 6) | (d & 0x3F);
    }
    *len = need;
    if (cp) *cp = v;
    return CHORD_UTF8_OK;
}

int chord_utf8_valid(const void *data, size_t n) {
    const unsigned char *s = data;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len;
        if (chord_utf8_scan(s + i, n - i, &len, NULL) != CHORD_UTF8_OK) return 0;
        i += len;
    }
    return 1;
}

uint32_t chord_utf8_prev(const unsigned char *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    size_t len;
    uint32_t cp = 0xFFFD;
    if (chord_utf8_scan(s + i, end - i, &len, &cp) != CHORD_UTF8_OK || len != end - i) cp = 0xFFFD;
    *start = i;
    return cp;
}

size_t chord_utf8_next(const unsigned char *s, size_t n, size_t i) {
    i++;
    while (i < n && (s[i] & 0xC0) == 0x80)
        i++;
    return i;
}

int chord_utf8_append_lossy(chord_buf *out, const void *data, size_t n) {
    const unsigned char *s = data;
    size_t i = 0;
    while (i < n) {
        size_t start = i; /* a run of ASCII in one append */
        while (i < n && s[i] < 0x80)
            i++;
        if (i > start && chord_buf_append(out, s + start, i - start)) return -1;
        if (i >= n) break;
        size_t len;
        if (chord_utf8_scan(s + i, n - i, &len, NULL) == CHORD_UTF8_OK) {
            if (chord_buf_append(out, s + i, len)) return -1;
        } else if (chord_buf_append(out, "\xEF\xBF\xBD", 3)) {
            return -1;
        }
        i += len;
    }
    return 0;
}
