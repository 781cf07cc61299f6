/* test_dataset.c — the JSONL readers of server/train/dataset.h: both record shapes of each kind,
 * line-numbered errors that let reading go on, cursors that resume exactly, counting, and a line
 * of a megabyte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/train/dataset.h"

static char *write_temp(const char *content, size_t len) {
    char tmpl[] = "/tmp/chord_ds_XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    return strdup(tmpl);
}

static const char PROMPTS[] =
    "\xEF\xBB\xBF{\"prompt\": \"Compute 1+2.\", \"answer\": \"3\", \"id\": 7}\n"
    "\n"
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
    "\"content\": \"Compute 2*3.\"}], \"answer\": 6}\n"
    "{\"prompt\": \"broken\", \n"
    "{\"prompt\": \"no answer\"}\n"
    "{\"prompt\": \"real answer\", \"answer\": 0.5}\r\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
    "\"content\": \"a\"}], \"answer\": \"x\"}\n"
    "[1, 2]\n"
    "{\"prompt\": 5, \"answer\": \"1\"}\n"
    "{\"prompt\": \"last\", \"answer\": \"-1\"}";

static void test_prompts(void **state) {
    (void)state;
    char *path = write_temp(PROMPTS, sizeof PROMPTS - 1);
    ds_reader *r;
    chord_err err = {0};
    assert_int_equal(ds_open(path, DS_PROMPTS, &r, &err), 0);
    ds_record rec;
    assert_int_equal(ds_next(r, &rec, &err), 1);
    assert_string_equal(rec.prompt, "Compute 1+2.");
    assert_string_equal(rec.answer, "3");
    assert_int_equal(rec.line, 1);
    assert_int_equal(rec.index, 0);
    ds_record_free(&rec);

    assert_int_equal(ds_next(r, &rec, &err), 1);
    assert_int_equal(rec.line, 3);
    assert_null(rec.prompt);
    assert_int_equal(rec.n_messages, 2);
    assert_string_equal(rec.messages[1].role, "user");
    assert_string_equal(rec.messages[1].content, "Compute 2*3.");
    assert_string_equal(rec.answer, "6");
    ds_record_free(&rec);

    /* line 4: malformed JSON; line 5: no answer — errors name file and line, reading goes on */
    char want[512];
    assert_int_equal(ds_next(r, &rec, &err), -1);
    snprintf(want, sizeof want, "%s:4: not valid JSON", path);
    assert_non_null(strstr(err.msg, want));
    assert_int_equal(ds_next(r, &rec, &err), -1);
    snprintf(want, sizeof want, "%s:5: missing \"answer\"", path);
    assert_non_null(strstr(err.msg, want));

    assert_int_equal(ds_next(r, &rec, &err), 1);
    assert_string_equal(rec.answer, "0.5");
    assert_string_equal(rec.prompt, "real answer");
    assert_int_equal(rec.index, 2);
    ds_record_free(&rec);

    assert_int_equal(ds_next(r, &rec, &err), -1);
    assert_non_null(strstr(err.msg, ":7: messages: an RL prompt must not end with an assistant"));
    assert_int_equal(ds_next(r, &rec, &err), -1);
    assert_non_null(strstr(err.msg, ":8: a record must be a JSON object"));
    assert_int_equal(ds_next(r, &rec, &err), -1);
    assert_non_null(strstr(err.msg, ":9: \"prompt\" must be a string"));
    assert_int_equal(ds_next(r, &rec, &err), 1); /* no final newline */
    assert_string_equal(rec.prompt, "last");
    ds_record_free(&rec);
    assert_int_equal(ds_next(r, &rec, &err), 0);
    assert_int_equal(ds_next(r, &rec, &err), 0);

    /* counting stops at the first bad line */
    size_t n;
    assert_int_equal(ds_count(r, &n, &err), -1);
    assert_non_null(strstr(err.msg, ":4:"));
    ds_close(r);
    unlink(path);
    free(path);
}

static const char EXPERT[] =
    "{\"prompt\": \"Compute 1+2.\", \"response\": \"1+2=3 \\\\boxed{3}\"}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"hi \"}, "
    "{\"type\": \"text\", \"text\": \"there\"}]}, {\"role\": \"assistant\", \"content\": "
    "\"hello\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n"
    "{\"prompt\": \"p\"}\n"
    "{\"prompt\": \"p\", \"response\": null}\n"
    "{\"messages\": [{\"role\": \"narrator\", \"content\": \"x\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": 3}, {\"role\": \"assistant\", "
    "\"content\": \"x\"}]}\n"
    "{\"prompt\": \"a\", \"messages\": []}\n";

static void test_expert(void **state) {
    (void)state;
    char *path = write_temp(EXPERT, sizeof EXPERT - 1);
    ds_reader *r;
    chord_err err = {0};
    assert_int_equal(ds_open(path, DS_EXPERT, &r, &err), 0);
    ds_record rec;
    assert_int_equal(ds_next(r, &rec, &err), 1);
    assert_string_equal(rec.response, "1+2=3 \\boxed{3}");
    chat_message *m;
    size_t n;
    assert_int_equal(ds_record_messages(&rec, &m, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(m[0].role, "user");
    assert_string_equal(m[0].content, "Compute 1+2.");
    assert_string_equal(m[1].role, "assistant");
    chat_messages_free(m, n);
    ds_record_free(&rec);

    assert_int_equal(ds_next(r, &rec, &err), 1);
    assert_string_equal(rec.messages[0].content, "hi there");
    assert_int_equal(ds_record_messages(&rec, &m, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(m[1].content, "hello");
    chat_messages_free(m, n);
    ds_record_free(&rec);

    const char *errors[] = {
        ":3: messages: an expert demonstration needs an assistant turn",
        ":4: missing \"response\"",
        ":5: \"response\" must be a string",
        ":6: messages[0].role 'narrator' is not system, user, assistant or tool",
        ":7: messages[0].content must be a string or a list of text parts",
        ":8: give \"prompt\" or \"messages\", not both",
    };
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
        chord_err_clear(&err);
        assert_int_equal(ds_next(r, &rec, &err), -1);
        if (!strstr(err.msg, errors[i])) fprintf(stderr, "got: %s\nwant: %s\n", err.msg, errors[i]);
        assert_non_null(strstr(err.msg, errors[i]));
    }
    assert_int_equal(ds_next(r, &rec, &err), 0);
    ds_close(r);
    unlink(path);
    free(path);
}

/* A cursor saved mid-file resumes exactly where an uninterrupted read would have gone on. */
static void test_cursor_resume_and_count(void **state) {
    (void)state;
    char buf[8192];
    size_t len = 0;
    for (int i = 0; i < 50; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "{\"prompt\": \"p%d\", \"answer\": \"%d\"}\n%s", i, i,
                                i % 7 == 0 ? "\n" : "");
    char *path = write_temp(buf, len);
    ds_reader *r;
    chord_err err = {0};
    assert_int_equal(ds_open(path, DS_PROMPTS, &r, &err), 0);
    size_t n;
    assert_int_equal(ds_count(r, &n, &err), 0);
    assert_int_equal(n, 50);
    ds_record rec;
    for (int i = 0; i < 17; i++) {
        assert_int_equal(ds_next(r, &rec, &err), 1);
        ds_record_free(&rec);
    }
    ds_cursor c = ds_tell(r);
    assert_int_equal(c.index, 17);
    char rest[33][16];
    for (int i = 0; i < 33; i++) {
        assert_int_equal(ds_next(r, &rec, &err), 1);
        snprintf(rest[i], sizeof rest[i], "%s", rec.prompt);
        ds_record_free(&rec);
    }
    assert_int_equal(ds_next(r, &rec, &err), 0);
    /* a fresh reader (a restarted server) seeks to the saved cursor */
    ds_reader *r2;
    assert_int_equal(ds_open(path, DS_PROMPTS, &r2, &err), 0);
    assert_int_equal(ds_seek(r2, c, &err), 0);
    for (int i = 0; i < 33; i++) {
        assert_int_equal(ds_next(r2, &rec, &err), 1);
        assert_string_equal(rec.prompt, rest[i]);
        assert_int_equal(rec.index, 17 + (uint64_t)i);
        ds_record_free(&rec);
    }
    /* count keeps the position; rewind starts over */
    assert_int_equal(ds_rewind(r2, &err), 0);
    assert_int_equal(ds_next(r2, &rec, &err), 1);
    assert_string_equal(rec.prompt, "p0");
    ds_record_free(&rec);
    ds_cursor far = {1 << 20, 0, 0};
    assert_int_equal(ds_seek(r2, far, &err), -1);
    assert_non_null(strstr(err.msg, "past the end"));
    ds_close(r2);
    ds_close(r);
    unlink(path);
    free(path);
}

static void test_long_line_and_missing_file(void **state) {
    (void)state;
    size_t big = 1 << 20;
    char *buf = malloc(big + 64);
    size_t len = (size_t)sprintf(buf, "{\"prompt\": \"");
    memset(buf + len, 'x', big);
    len += big;
    len += (size_t)sprintf(buf + len, "\", \"answer\": \"1\"}\n");
    char *path = write_temp(buf, len);
    ds_reader *r;
    chord_err err = {0};
    assert_int_equal(ds_open(path, DS_PROMPTS, &r, &err), 0);
    ds_record rec;
    assert_int_equal(ds_next(r, &rec, &err), 1);
    assert_int_equal(strlen(rec.prompt), big);
    ds_record_free(&rec);
    ds_close(r);
    unlink(path);
    free(path);
    free(buf);
    assert_int_equal(ds_open("/nonexistent/data.jsonl", DS_PROMPTS, &r, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/data.jsonl"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompts),
        cmocka_unit_test(test_expert),
        cmocka_unit_test(test_cursor_resume_and_count),
        cmocka_unit_test(test_long_line_and_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
