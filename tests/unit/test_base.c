/* test_base.c — the small helpers of server/base that other layers lean on: the number-to-text
 * rule of numtext.h (shortest round-trip, ECMAScript layout), the growable buffer and array of
 * buf.h (a failed growth changes nothing), the UTF-8 decoder of utf8.h (Unicode's validity, and
 * lossy text equal to Python's bytes.decode("utf-8", "replace")), the typed JSON field readers of
 * json_field.h (every refusal names the field's full path and says what it got), and
 * chord_rmtree (no shell, links not followed). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/numtext.h"
#include "server/base/utf8.h"

static void expect_text(double v, const char *want) {
    char got[CHORD_NUMBER_TEXT_MAX];
    size_t n = chord_number_text(v, got);
    if (strcmp(got, want) != 0) fail_msg("%.17g: got \"%s\", want \"%s\"", v, got, want);
    assert_int_equal(n, strlen(want));
}

static void test_number_text_cases(void **state) {
    (void)state;
    expect_text(0.1, "0.1"); /* the bug: json_dumps wrote 0.10000000000000001 */
    expect_text(0.5, "0.5");
    expect_text(-2.5, "-2.5");
    expect_text(1.0, "1");
    expect_text(-0.0, "0");
    expect_text(0.0, "0");
    expect_text(100.0, "100");
    expect_text(12345678.0, "12345678");
    expect_text(0.3, "0.3");
    expect_text(0.1 + 0.2, "0.30000000000000004"); /* a different double: all 17 digits */
    expect_text(1.0 / 3.0, "0.3333333333333333");
    expect_text(2.0 / 3.0, "0.6666666666666666");
    expect_text(3.14159, "3.14159");
    expect_text(1e20, "100000000000000000000");
    expect_text(1e21, "1e+21");
    expect_text(1.5e21, "1.5e+21");
    expect_text(123456789012345680000.0, "123456789012345680000");
    expect_text(1e-6, "0.000001");
    expect_text(1.5e-6, "0.0000015");
    expect_text(1e-7, "1e-7");
    expect_text(-1.5e-7, "-1.5e-7");
    expect_text(5e-324, "5e-324");
    expect_text(1.7976931348623157e308, "1.7976931348623157e+308");
    expect_text(9007199254740993.0, "9007199254740992"); /* 2^53 + 1 is not a double */
    expect_text(0.000123, "0.000123");
    expect_text(NAN, "NaN");
    expect_text(INFINITY, "Infinity");
    expect_text(-INFINITY, "-Infinity");
}

/* Every text reads back as the same double, and no shorter digit string would. */
static void test_number_text_round_trips(void **state) {
    (void)state;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double v;
        if (i % 2) {
            uint64_t bits = x;
            memcpy(&v, &bits, sizeof v);
            if (v != v || v - v != 0) continue; /* NaN, infinities */
        } else {
            v = (double)(int64_t)(x % 2000001) / 1000.0 - 1000.0; /* short decimals */
        }
        char text[CHORD_NUMBER_TEXT_MAX];
        size_t n = chord_number_text(v, text);
        assert_true(n < CHORD_NUMBER_TEXT_MAX);
        if (strtod(text, NULL) != v && !(v == 0)) fail_msg("%.17g -> %s", v, text);
        /* the digits are the fewest: one fewer significant digit does not round-trip */
        int sig = 0, leading = 1;
        for (const char *p = text; *p && *p != 'e'; p++) {
            if (*p == '0' && leading) continue;
            if (*p >= '1' && *p <= '9') leading = 0;
            if (*p >= '0' && *p <= '9') sig++;
        }
        if (sig > 1 && fabs(v) < 1e15 && fabs(v) >= 1e-6 && v != (double)(int64_t)v) {
            char shorter[40];
            snprintf(shorter, sizeof shorter, "%.*e", sig - 2, v);
            if (strtod(shorter, NULL) == v) fail_msg("%.17g: %s is not the shortest", v, text);
        }
    }
}

static void test_buf(void **state) {
    (void)state;
    chord_buf b = {0};
    assert_int_equal(chord_buf_append(&b, "ab", 2), 0);
    assert_int_equal(chord_buf_append(&b, "", 0), 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(chord_buf_append(&b, "xyz", 3), 0);
    assert_int_equal(b.len, 3002);
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "abxyzxyz", 8);
    /* a growth that cannot happen (size overflow) leaves everything as it was */
    char *data = b.data;
    size_t len = b.len, cap = b.cap;
    assert_int_equal(chord_buf_append(&b, "q", SIZE_MAX - 1), -1);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.len, len);
    assert_int_equal(b.cap, cap);
    char *taken = chord_buf_take(&b);
    assert_ptr_equal(taken, data);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    free(taken);
    taken = chord_buf_take(&b); /* an empty buffer gives "" */
    assert_non_null(taken);
    assert_string_equal(taken, "");
    free(taken);
    chord_buf_free(&b);
    chord_buf_free(&b);

    /* chord_buf_printf: from an empty buffer, and past the room a growth left (a line longer
     * than any fixed scratch: the whole text, not a cut one) */
    assert_int_equal(chord_buf_printf(&b, "%s=%d;", "k", 42), 0);
    assert_string_equal(b.data, "k=42;");
    char big[5000];
    memset(big, 'w', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(chord_buf_printf(&b, "[%s]", big), 0);
    assert_int_equal(b.len, 5 + 2 + sizeof big - 1);
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[b.len], '\0');
    chord_buf_free(&b);

    int32_t *ids = NULL;
    size_t n_cap = 0;
    for (size_t i = 0; i < 5000; i++) {
        int32_t *grown = chord_array_grow(ids, &n_cap, i + 1, sizeof *ids);
        assert_non_null(grown);
        ids = grown;
        ids[i] = (int32_t)i;
    }
    assert_true(n_cap >= 5000);
    assert_ptr_equal(chord_array_grow(ids, &n_cap, 10, sizeof *ids), ids); /* room already */
    size_t cap_before = n_cap;
    assert_null(chord_array_grow(ids, &n_cap, SIZE_MAX / 2, sizeof *ids));
    assert_int_equal(n_cap, cap_before);
    assert_int_equal(ids[4999], 4999); /* still valid, still ours */
    free(ids);
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

/* An independent reading of Unicode's table 3-7: decode by the lead byte's length, then refuse
 * overlong forms, surrogates and values above U+10FFFF. 1 with the length and code point when
 * s[0..n) starts with a valid character. */
static int naive_utf8(const unsigned char *s, size_t n, size_t *len, uint32_t *cp) {
    size_t need = s[0] < 0x80                   ? 1
                  : s[0] >= 0xC0 && s[0] < 0xE0 ? 2
                  : s[0] >= 0xE0 && s[0] < 0xF0 ? 3
                  : s[0] >= 0xF0 && s[0] < 0xF8 ? 4
                                                : 0;
    if (need == 0 || need > n) return 0;
    uint32_t v = need == 1 ? s[0] : s[0] & (0x7F >> need);
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < least[need] || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) return 0;
    *len = need;
    *cp = v;
    return 1;
}

/* Every string of up to three bytes, and four-byte strings over every lead and second byte:
 * chord_utf8_scan says OK exactly when the naive reading does, with the same length and code
 * point; otherwise the subpart it reports lies within the bytes it was given. */
static void test_utf8_scan_agrees_with_the_standard(void **state) {
    (void)state;
    static const unsigned char tails[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F,
                                          0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xF0, 0xFF};
    unsigned char s[4];
    size_t checked = 0;
    for (uint32_t x = 0; x < (1u << 24); x++) {
        s[0] = (unsigned char)(x >> 16);
        s[1] = (unsigned char)(x >> 8);
        s[2] = (unsigned char)x;
        for (size_t n = 1; n <= 3; n++) {
            if (n < 3 && (x & ((1u << (8 * (3 - n))) - 1)) != 0) continue; /* each prefix once */
            size_t len = 0, want_len = 0;
            uint32_t cp = 0, want_cp = 0;
            int r = chord_utf8_scan(s, n, &len, &cp);
            int ok = naive_utf8(s, n, &want_len, &want_cp);
            if ((r == CHORD_UTF8_OK) != ok || (ok && (len != want_len || cp != want_cp)))
                fail_msg("%02X %02X %02X (n=%zu): scan %d len %zu, naive %d len %zu", s[0], s[1],
                         s[2], n, r, len, ok, want_len);
            if (r != CHORD_UTF8_OK) assert_true(len >= 1 && len <= n);
            if (r == CHORD_UTF8_SHORT) assert_int_equal(len, n);
            checked++;
        }
    }
    for (unsigned lead = 0xF0; lead <= 0xFF; lead++)
        for (unsigned second = 0; second < 256; second++)
            for (size_t a = 0; a < sizeof tails; a++)
                for (size_t b = 0; b < sizeof tails; b++) {
                    s[0] = (unsigned char)lead;
                    s[1] = (unsigned char)second;
                    s[2] = tails[a];
                    s[3] = tails[b];
                    size_t len = 0, want_len = 0;
                    uint32_t cp = 0, want_cp = 0;
                    int r = chord_utf8_scan(s, 4, &len, &cp);
                    int ok = naive_utf8(s, 4, &want_len, &want_cp);
                    if ((r == CHORD_UTF8_OK) != ok || (ok && (len != want_len || cp != want_cp)))
                        fail_msg("%02X %02X %02X %02X: scan %d, naive %d", s[0], s[1], s[2], s[3],
                                 r, ok);
                    checked++;
                }
    assert_true(checked > 16000000);
}

static void expect_lossy(const char *in, size_t n, const char *want) {
    chord_buf out = {0};
    assert_int_equal(chord_utf8_append_lossy(&out, in, n), 0);
    size_t wn = strlen(want);
    if (out.len != wn || memcmp(out.data ? out.data : "", want, wn) != 0)
        fail_msg("lossy of %zu bytes: got %zu bytes, want %zu", n, out.len, wn);
    assert_int_equal(chord_utf8_valid(out.data ? out.data : "", out.len), 1);
    chord_buf_free(&out);
}

#define FFFD "\xEF\xBF\xBD"

/* What Python's bytes.decode("utf-8", "replace") gives for each (computed with CPython 3). */
static void test_utf8_lossy_like_python(void **state) {
    (void)state;
    expect_lossy("", 0, "");
    expect_lossy("plain ascii", 11, "plain ascii");
    expect_lossy("\xC0\xAF", 2, FFFD FFFD);                   /* overlong '/' */
    expect_lossy("\xE0\x80\xAF", 3, FFFD FFFD FFFD);          /* overlong, 3 bytes */
    expect_lossy("\xF0\x80\x80\xAF", 4, FFFD FFFD FFFD FFFD); /* overlong, 4 bytes */
    expect_lossy("\xED\xA0\x80", 3, FFFD FFFD FFFD);          /* surrogate U+D800 */
    expect_lossy("\xED\xBF\xBF", 3, FFFD FFFD FFFD);          /* surrogate U+DFFF */
    expect_lossy("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD); /* U+110000 */
    expect_lossy("\xF5\x80\x80\x80", 4, FFFD FFFD FFFD FFFD); /* no such lead byte */
    expect_lossy("\xE4\xBD", 2, FFFD);                        /* cut at the end: one */
    expect_lossy("a\xE4\xBD\x62", 4, "a" FFFD "b");           /* cut inside: one */
    expect_lossy("\xF0\x9F\x98", 3, FFFD);
    expect_lossy("\xF4\x8F\xBF", 3, FFFD);
    expect_lossy("\xE1\x80\x41", 3, FFFD "A");
    expect_lossy("\xE4\xBD\xE4\xBD\xA0", 5, FFFD "\xE4\xBD\xA0");
    expect_lossy("\x80\x80", 2, FFFD FFFD); /* lone continuation bytes: one each */
    expect_lossy("\xFF", 1, FFFD);
    expect_lossy("\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80");
    /* the edges of each length, all valid */
    expect_lossy("\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", 18,
                 "\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80\xF4\x8F\xBF\xBF");
    /* a NUL is a character like any other */
    chord_buf out = {0};
    assert_int_equal(chord_utf8_append_lossy(&out, "a\0b", 3), 0);
    assert_int_equal(out.len, 3);
    assert_memory_equal(out.data, "a\0b", 3);
    assert_int_equal(chord_utf8_valid("a\0b", 3), 1);
    chord_buf_free(&out);
}

static void test_utf8_valid_prev_next(void **state) {
    (void)state;
    assert_int_equal(chord_utf8_valid("", 0), 1);
    assert_int_equal(chord_utf8_valid("h\xC3\xA9llo \xE4\xBD\xA0\xF0\x9F\x98\x80", 14), 1);
    assert_int_equal(chord_utf8_valid("\xC0\xAF", 2), 0);
    assert_int_equal(chord_utf8_valid("\xED\xA0\x80", 3), 0);
    assert_int_equal(chord_utf8_valid("\xF4\x90\x80\x80", 4), 0);
    assert_int_equal(chord_utf8_valid("ab\xE4\xBD", 4), 0); /* cut */

    /* "aé你😀" backwards, character by character */
    const unsigned char *s = (const unsigned char *)"a\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80";
    size_t end = 10, start;
    static const uint32_t want[] = {0x1F600, 0x4F60, 0xE9, 'a'};
    static const size_t starts[] = {6, 3, 1, 0};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(chord_utf8_prev(s, end, &start), want[i]);
        assert_int_equal(start, starts[i]);
        end = start;
    }
    /* not one valid character there: U+FFFD */
    assert_int_equal(chord_utf8_prev((const unsigned char *)"a\x80", 2, &start), 0xFFFD);
    assert_int_equal(chord_utf8_prev((const unsigned char *)"\xE4\xBD", 2, &start), 0xFFFD);
    assert_int_equal(start, 0);

    /* forwards: to the next character's first byte, never past the end */
    assert_int_equal(chord_utf8_next(s, 10, 0), 1);
    assert_int_equal(chord_utf8_next(s, 10, 1), 3);
    assert_int_equal(chord_utf8_next(s, 10, 3), 6);
    assert_int_equal(chord_utf8_next(s, 10, 6), 10);
    assert_int_equal(chord_utf8_next(s, 8, 6), 8);
}

/* ---- typed JSON fields ---------------------------------------------------------------------- */

static json_t *doc_of(const char *text) {
    json_error_t je;
    json_t *doc = json_loads(text, JSON_ALLOW_NUL, &je);
    if (!doc) fail_msg("test JSON: %s", je.text);
    return doc;
}

/* The read fails with exactly `want`, category CHORD_E_INVALID. */
#define EXPECT_REFUSAL(call, want)                                                                 \
    do {                                                                                           \
        chord_err err_ = {0};                                                                      \
        chord_err *err = &err_;                                                                    \
        assert_int_equal((call), -1);                                                              \
        assert_string_equal(err_.msg, want);                                                       \
        assert_int_equal(err_.code, CHORD_E_INVALID);                                              \
    } while (0)

static void test_json_fields_read(void **state) {
    (void)state;
    json_t *doc = doc_of("{\"grpo\": {\"clip_low\": 0.25, \"group_size\": 8, \"whole\": 1e3,"
                         " \"on\": true, \"name\": \"x\", \"off\": null}, \"list\": [1, 2]}");
    json_t *g = NULL, *list = NULL;
    chord_err err = {0};
    assert_int_equal(chord_json_get_object(doc, "", "grpo", CHORD_JSON_REQUIRED, &g, &err), 0);
    assert_ptr_equal(g, json_object_get(doc, "grpo"));
    assert_int_equal(chord_json_get_array(doc, "", "list", 0, &list, &err), 0);
    assert_int_equal(json_array_size(list), 2);
    double d = -1;
    assert_int_equal(chord_json_get_number(g, "grpo", "clip_low", 0, 0, 1, &d, &err), 0);
    assert_true(d == 0.25);
    assert_int_equal(chord_json_get_number(g, "grpo", "group_size", 0, 0, INFINITY, &d, &err), 0);
    assert_true(d == 8); /* an integer is a number */
    int64_t i = -1;
    assert_int_equal(chord_json_get_int(g, "grpo", "group_size", 0, 1, 64, &i, &err), 0);
    assert_int_equal(i, 8);
    assert_int_equal(
        chord_json_get_int(g, "grpo", "whole", CHORD_JSON_WHOLE_REAL, 0, INT64_MAX, &i, &err), 0);
    assert_int_equal(i, 1000);
    int b = 0;
    assert_int_equal(chord_json_get_bool(g, "grpo", "on", 0, &b, &err), 0);
    assert_int_equal(b, 1);
    const char *str = NULL;
    assert_int_equal(chord_json_get_string(g, "grpo", "name", CHORD_JSON_NONEMPTY, &str, &err), 0);
    assert_string_equal(str, "x");
    /* left out (absent or null): *out keeps the default */
    d = 0.5;
    i = 7;
    b = 1;
    str = "default";
    assert_int_equal(chord_json_get_number(g, "grpo", "absent", 0, 0, 1, &d, &err), 0);
    assert_int_equal(chord_json_get_int(g, "grpo", "off", 0, 0, 9, &i, &err), 0);
    assert_int_equal(chord_json_get_bool(g, "grpo", "off", 0, &b, &err), 0);
    assert_int_equal(chord_json_get_string(g, "grpo", "off", 0, &str, &err), 0);
    assert_true(d == 0.5 && i == 7 && b == 1 && strcmp(str, "default") == 0);
    assert_null(chord_json_field(g, "off"));
    assert_non_null(chord_json_field(g, "on"));
    assert_string_equal(err.msg, "");
    /* lenient lookups */
    assert_string_equal(chord_json_string_or(g, "name", "?"), "x");
    assert_string_equal(chord_json_string_or(g, "on", "?"), "?");
    assert_true(chord_json_number_or(g, "clip_low", 1) == 0.25);
    assert_true(chord_json_number_or(g, "name", 1) == 1);
    json_decref(doc);
}

static void test_json_fields_name_the_field(void **state) {
    (void)state;
    json_t *doc =
        doc_of("{\"s\": \"0.2\", \"n\": 2.5, \"w\": 64.0, \"i\": -96, \"big\": 4294967296,"
               " \"t\": true, \"o\": {}, \"a\": [1], \"e\": \"\", \"z\": \"a\\u0000b\","
               " \"x\": 1.5, \"null\": null}");
    double d;
    int64_t i;
    int b;
    const char *s;
    json_t *v;
    /* wrong types: numbers and booleans as written, the rest by type */
    EXPECT_REFUSAL(chord_json_get_number(doc, "grpo", "s", 0, 0, 1, &d, err),
                   "grpo.s: must be a number, got a string");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "n", 0, 0, 9, &i, err),
                   "n: must be an integer, got 2.5");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "w", 0, 0, 99, &i, err),
                   "w: must be an integer, got 64.0");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "n", CHORD_JSON_WHOLE_REAL, 0, 9, &i, err),
                   "n: must be an integer, got 2.5");
    EXPECT_REFUSAL(chord_json_get_bool(doc, "a.b", "i", 0, &b, err),
                   "a.b.i: must be true or false, got -96");
    EXPECT_REFUSAL(chord_json_get_string(doc, "", "t", 0, &s, err),
                   "t: must be a string, got true");
    EXPECT_REFUSAL(chord_json_get_object(doc, "", "a", 0, &v, err),
                   "a: must be an object, got an array");
    EXPECT_REFUSAL(chord_json_get_array(doc, "", "o", 0, &v, err),
                   "o: must be an array, got an object");
    EXPECT_REFUSAL(chord_json_object_value(json_object_get(doc, "null"), "p[3]", err),
                   "p[3]: must be an object, got null");
    /* required */
    EXPECT_REFUSAL(chord_json_get_object(doc, "model", "init", CHORD_JSON_REQUIRED, &v, err),
                   "model.init: missing (required)");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "null", CHORD_JSON_REQUIRED, 0, 9, &i, err),
                   "null: missing (required)");
    /* strings */
    EXPECT_REFUSAL(chord_json_get_string(doc, "", "e", CHORD_JSON_NONEMPTY, &s, err),
                   "e: must not be empty");
    EXPECT_REFUSAL(chord_json_get_string(doc, "", "z", 0, &s, err),
                   "z: must not contain NUL characters");
    /* ranges: the bounds that exist, then the value */
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "i", 0, 1, INT64_MAX, &i, err),
                   "i: must be positive, got -96");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "i", 0, 0, INT64_MAX, &i, err),
                   "i: must be >= 0, got -96");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "big", 0, INT64_MIN, 2147483647, &i, err),
                   "big: must be <= 2147483647, got 4294967296");
    EXPECT_REFUSAL(chord_json_get_int(doc, "", "i", 0, 1, 64, &i, err),
                   "i: must be in [1, 64], got -96");
    EXPECT_REFUSAL(chord_json_get_number(doc, "", "x", CHORD_JSON_HI_OPEN, 0, 1, &d, err),
                   "x: must be in [0, 1), got 1.5");
    EXPECT_REFUSAL(chord_json_get_number(doc, "", "i", CHORD_JSON_LO_OPEN, 0, INFINITY, &d, err),
                   "i: must be positive, got -96");
    EXPECT_REFUSAL(chord_json_get_number(doc, "", "i", 0, 0, INFINITY, &d, err),
                   "i: must be >= 0, got -96");
    EXPECT_REFUSAL(chord_json_get_number(doc, "", "x", CHORD_JSON_HI_OPEN, -INFINITY, 1, &d, err),
                   "x: must be < 1, got 1.5");
    EXPECT_REFUSAL(chord_check_number_range(NAN, "q", 0, 0, 1, err), "q: must be a finite number");
    EXPECT_REFUSAL(chord_check_int_range(0, "steps", 1, INT64_MAX, err),
                   "steps: must be positive, got 0");
    /* unknown keys, with what is allowed */
    static const char *const allowed[] = {"s", "n", NULL};
    EXPECT_REFUSAL(chord_json_check_keys(doc, "top", allowed, err),
                   "unknown field \"top.w\" (allowed: s, n)");
    json_decref(doc);
}

static void test_json_key_before(void **state) {
    (void)state;
    const char *text = "{\"a\": 1,\n  \"rms_norm_eps\" :\r\n NaN}";
    char key[8];
    chord_json_key_before(text, strlen(text), (int)(strstr(text, "NaN") - text), key, sizeof key);
    assert_string_equal(key, "rms_nor"); /* cut to fit */
    char whole[64];
    chord_json_key_before(text, strlen(text), (int)strlen(text), whole, sizeof whole);
    assert_string_equal(whole, "rms_norm_eps");
    chord_json_key_before(text, strlen(text), 3, whole, sizeof whole);
    assert_string_equal(whole, "");
    chord_json_key_before(text, strlen(text), -1, whole, sizeof whole);
    assert_string_equal(whole, "");
}

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("x", f);
    fclose(f);
}

static void test_rmtree(void **state) {
    (void)state;
    char root[] = "/tmp/chord_rmtree_XXXXXX";
    assert_non_null(mkdtemp(root));
    char path[256], outside[256], link[600];
    /* a name a shell would split or expand: quotes, spaces, a glob, a command separator */
    snprintf(path, sizeof path, "%s/it's a \"dir\"; *", root);
    chord_err err = {0};
    char sub[600];
    snprintf(sub, sizeof sub, "%s/step_1/nested/deeper", path);
    assert_int_equal(chord_mkdirs(sub, &err), 0);
    snprintf(sub, sizeof sub, "%s/step_1/nested/deeper/model.safetensors", path);
    touch(sub);
    snprintf(sub, sizeof sub, "%s/step_1/config.json", path);
    touch(sub);
    /* a link to a directory outside: removed as a link, its target untouched */
    snprintf(outside, sizeof outside, "%s/outside", root);
    assert_int_equal(mkdir(outside, 0755), 0);
    snprintf(sub, sizeof sub, "%s/keep.txt", outside);
    touch(sub);
    snprintf(link, sizeof link, "%s/step_1/link", path);
    assert_int_equal(symlink(outside, link), 0);

    assert_int_equal(chord_rmtree(path, &err), 0);
    assert_false(chord_is_dir(path));
    assert_true(chord_is_file(sub));
    /* missing: fine; a plain file: removed */
    assert_int_equal(chord_rmtree(path, &err), 0);
    assert_int_equal(chord_rmtree(sub, &err), 0);
    assert_false(chord_is_file(sub));
    assert_int_equal(chord_rmtree(root, &err), 0);
    assert_false(chord_is_dir(root));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number_text_cases),
        cmocka_unit_test(test_number_text_round_trips),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_utf8_scan_agrees_with_the_standard),
        cmocka_unit_test(test_utf8_lossy_like_python),
        cmocka_unit_test(test_utf8_valid_prev_next),
        cmocka_unit_test(test_json_fields_read),
        cmocka_unit_test(test_json_fields_name_the_field),
        cmocka_unit_test(test_json_key_before),
        cmocka_unit_test(test_rmtree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
