/* test_auth.c — the token file and the bearer check of api/auth/auth.h, without a server: the
 * file's rules (each refusal names the line and never the token), the Authorization header's
 * forms, every token of a large file found with its own scope, near misses (one byte changed,
 * a prefix, an extension) refused, and scopes against what a method needs.
 * (integration.auth checks the same through curl and grpcio on a real chordd.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/auth/auth.h"

static api_auth *parse_ok(const char *text) {
    api_auth *a = NULL;
    chord_err err = {0};
    if (api_auth_parse(text, strlen(text), "tokens", &a, &err)) fail_msg("refused: %s", err.msg);
    return a;
}

static void expect_refused(const char *text, const char *message, const char *secret) {
    api_auth *a = NULL;
    chord_err err = {0};
    assert_int_equal(api_auth_parse(text, strlen(text), "tokens", &a, &err), -1);
    assert_null(a);
    if (!strstr(err.msg, message)) fail_msg("got \"%s\", want \"%s\"", err.msg, message);
    if (secret && strstr(err.msg, secret)) fail_msg("the message shows the token: %s", err.msg);
}

static api_auth_result check(const api_auth *a, const char *header, api_scope need,
                             api_scope *granted) {
    return api_auth_check(a, header, header ? strlen(header) : 0, need, granted, NULL);
}

static void test_file_rules(void **state) {
    (void)state;
    api_auth *a = parse_ok("# tokens\n\n  admin  aaaaaaaaaaaaaaaa \r\nread\tbbbbbbbbbbbbbbbb\n"
                           "  # indented comment\nread cccccccccccccccc");
    assert_int_equal(api_auth_count(a, API_SCOPE_ADMIN), 1);
    assert_int_equal(api_auth_count(a, API_SCOPE_READ), 2);
    api_auth_free(a);

    expect_refused("", "tokens: no tokens", NULL);
    expect_refused("# none\n\n", "no tokens", NULL);
    expect_refused("admin aaaaaaaaaaaaaaaa\nwrite secretsecretsecret1\n",
                   "tokens: line 2: the scope must be 'admin' or 'read'", "secretsecretsecret1");
    expect_refused("read\n", "line 1: expected 'SCOPE TOKEN'", NULL);
    expect_refused("secretsecretsecret2\n", "line 1: expected 'SCOPE TOKEN'",
                   "secretsecretsecret2");
    expect_refused("admin secretsecretsecret3 # admin\n", "line 1: expected 'SCOPE TOKEN'",
                   "secretsecretsecret3");
    expect_refused("admin short16charsxxxx\nadmin short\n", "line 2: a token must be 16 to 1024",
                   NULL);
    expect_refused("read secretsecretsecret4\n#\nadmin secretsecretsecret4\n",
                   "line 3: the same token as line 1", "secretsecretsecret4");
    expect_refused("ADMIN secretsecretsecret5\n", "the scope must be", "secretsecretsecret5");
    char with_nul[] = "admin aaaaaaaaaaaaaaaa\nread bbbbbbbb\0bbbbbbbb\n";
    api_auth *b = NULL;
    chord_err err = {0};
    assert_int_equal(api_auth_parse(with_nul, sizeof with_nul - 1, "tokens", &b, &err), -1);
    assert_non_null(strstr(err.msg, "line 2: a NUL byte"));
    expect_refused("admin secret\x7fsecretsecret6\n", "line 1: a token must be printable ASCII",
                   NULL);
    char long_token[1100 + 16];
    memcpy(long_token, "admin ", 6);
    memset(long_token + 6, 'x', 1025);
    long_token[6 + 1025] = '\0';
    expect_refused(long_token, "a token must be 16 to 1024 characters (this one: 1025)", NULL);
    long_token[6 + 1024] = '\0';
    api_auth_free(parse_ok(long_token));
}

static void test_header_forms(void **state) {
    (void)state;
    api_auth *a = parse_ok("admin aaaaaaaaaaaaaaaa\nread bbbbbbbbbbbbbbbb\n");
    api_scope g;
    assert_int_equal(check(a, "Bearer aaaaaaaaaaaaaaaa", API_SCOPE_ADMIN, &g), API_AUTH_OK);
    assert_int_equal(g, API_SCOPE_ADMIN);
    assert_int_equal(check(a, "bearer bbbbbbbbbbbbbbbb", API_SCOPE_READ, &g), API_AUTH_OK);
    assert_int_equal(g, API_SCOPE_READ);
    assert_int_equal(check(a, "BEARER \t bbbbbbbbbbbbbbbb  ", API_SCOPE_READ, NULL), API_AUTH_OK);
    static const char *const bad[] = {NULL,
                                      "",
                                      "Bearer",
                                      "Bearer ",
                                      "Bearerbbbbbbbbbbbbbbbb",
                                      "Basic bbbbbbbbbbbbbbbb",
                                      "bbbbbbbbbbbbbbbb",
                                      "Bearer bbbbbbbbbbbbbbbb bbbbbbbbbbbbbbbb",
                                      "Bearer bbbbbbbbbbbbbbb",
                                      "Bearer bbbbbbbbbbbbbbbbb",
                                      "Bearer bbbbbbbbbbbbbbbc",
                                      "Bearer Bbbbbbbbbbbbbbbb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *reason = NULL;
        g = API_SCOPE_ADMIN;
        api_auth_result r =
            api_auth_check(a, bad[i], bad[i] ? strlen(bad[i]) : 0, API_SCOPE_READ, &g, &reason);
        if (r != API_AUTH_UNAUTHENTICATED) fail_msg("'%s' passed", bad[i] ? bad[i] : "(none)");
        assert_int_equal(g, API_SCOPE_NONE);
        assert_non_null(reason);
        /* health: anyone, whatever the header says */
        assert_int_equal(check(a, bad[i], API_SCOPE_NONE, NULL), API_AUTH_OK);
    }
    /* the header's length, not its NUL, bounds it */
    assert_int_equal(
        api_auth_check(a, "Bearer bbbbbbbbbbbbbbbbXYZ", 23, API_SCOPE_READ, NULL, NULL),
        API_AUTH_OK);
    api_auth_free(a);
}

static void test_scopes(void **state) {
    (void)state;
    api_auth *a = parse_ok("admin aaaaaaaaaaaaaaaa\nread bbbbbbbbbbbbbbbb\n");
    const char *reason = NULL;
    assert_int_equal(
        api_auth_check(a, "Bearer bbbbbbbbbbbbbbbb", 23, API_SCOPE_ADMIN, NULL, &reason),
        API_AUTH_FORBIDDEN);
    assert_non_null(strstr(reason, "read-only"));
    assert_int_equal(check(a, "Bearer aaaaaaaaaaaaaaaa", API_SCOPE_READ, NULL), API_AUTH_OK);
    assert_int_equal(check(a, "Bearer aaaaaaaaaaaaaaaa", API_SCOPE_NONE, NULL), API_AUTH_OK);
    api_auth_free(a);
    /* authentication off: everything, as admin */
    api_scope g = API_SCOPE_NONE;
    assert_int_equal(check(NULL, NULL, API_SCOPE_ADMIN, &g), API_AUTH_OK);
    assert_int_equal(g, API_SCOPE_ADMIN);
}

/* 200 tokens: each found with its own scope (the loop that never stops at a match must still
 * pick the right one), and a one-byte change of any of them found by none. */
static void test_many_tokens(void **state) {
    (void)state;
    enum { N = 200 };
    static char text[N * 64];
    size_t len = 0;
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%s token-%04d-%016x\n",
                                i % 3 ? "read" : "admin", i, (unsigned)(i * 2654435761u));
    api_auth *a = parse_ok(text);
    assert_int_equal(api_auth_count(a, API_SCOPE_ADMIN) + api_auth_count(a, API_SCOPE_READ), N);
    for (int i = 0; i < N; i++) {
        char h[80];
        snprintf(h, sizeof h, "Bearer token-%04d-%016x", i, (unsigned)(i * 2654435761u));
        api_scope g;
        assert_int_equal(check(a, h, API_SCOPE_READ, &g), API_AUTH_OK);
        assert_int_equal(g, i % 3 ? API_SCOPE_READ : API_SCOPE_ADMIN);
        h[strlen(h) - 1] ^= 1;
        assert_int_equal(check(a, h, API_SCOPE_READ, &g), API_AUTH_UNAUTHENTICATED);
        assert_int_equal(g, API_SCOPE_NONE);
    }
    api_auth_free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_rules),
        cmocka_unit_test(test_header_forms),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_many_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
