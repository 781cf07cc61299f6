/* utf8.h — chord's one UTF-8 decoder: scanning a code point with validity, stepping back and
 * forth over characters, and lossy conversion of arbitrary bytes to valid UTF-8.
 *
 * Validity is the Unicode standard's (§3.9, table 3-7): no overlong forms, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF. Invalid input is replaced by the "maximal subpart"
 * rule, one U+FFFD per maximal invalid subpart, which is what Python's
 * bytes.decode("utf-8", "replace"), Rust's String::from_utf8_lossy and the Hugging Face
 * tokenizers do: b"\xE4\xBD" (a cut character) is one U+FFFD, b"\xC0\xAF" (overlong) two,
 * b"\xED\xA0\x80" (a surrogate) three.
 *
 * Not here: normalization and character classes (utf8proc), encoding a code point. */
#ifndef CHORD_BASE_UTF8_H
#define CHORD_BASE_UTF8_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/buf.h"

/* What chord_utf8_scan found at the start of a buffer. */
enum {
    CHORD_UTF8_OK = 0,    /* a valid character */
    CHORD_UTF8_BAD = 1,   /* an invalid subpart */
    CHORD_UTF8_SHORT = 2, /* a valid but incomplete character cut by the end of the buffer */
};

/* Scans the character at s[0..n) (n >= 1). CHORD_UTF8_OK with *len its length (1 to 4) and *cp
 * (when cp is not NULL) its code point; CHORD_UTF8_BAD with *len the length of the maximal
 * invalid subpart (>= 1); CHORD_UTF8_SHORT with *len = n when all of s[0..n) is a valid prefix
 * of a longer character. */
int chord_utf8_scan(const unsigned char *s, size_t n, size_t *len, uint32_t *cp);

/* 1 when s[0..n) is valid UTF-8 (NUL bytes allowed), else 0. */
int chord_utf8_valid(const void *s, size_t n);

/* The character that ends at s[0..end) (end >= 1): its code point, with *start the index of its
 * first byte. U+FFFD when the bytes there are not one valid character. */
uint32_t chord_utf8_prev(const unsigned char *s, size_t end, size_t *start);

/* The index just past the character that starts at s[i]: i + 1, then past any continuation
 * bytes before n, so it never stops inside a character of valid text. */
size_t chord_utf8_next(const unsigned char *s, size_t n, size_t i);

/* Appends s[0..n) to out with each maximal invalid subpart (and an incomplete tail) replaced by
 * U+FFFD; NUL bytes are kept. 0, or -1 when out of memory (out then holds a prefix). */
int chord_utf8_append_lossy(chord_buf *out, const void *s, size_t n);

#endif
