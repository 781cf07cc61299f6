/* test_base.c — the small helpers of server/base that other layers lean on: the number-to-text
 * rule of numtext.h (shortest round-trip, ECMAScript layout), the growable buffer and array of
 * buf.h (a failed growth changes nothing), and chord_rmtree (no shell, links not followed). */
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
#include "server/base/numtext.h"

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
        cmocka_unit_test(test_rmtree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
