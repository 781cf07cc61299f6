/* test_dataset.c — the one record parser (server/train/dataset.h) and the trainer's datasets
 * built on it (trainer_data.h): both record shapes of each kind, every rule docs/api.md
 * ("Records") states, errors that name the line and the field, numeric answers as the text a
 * person wrote, cursors that read the same records after a reopen, and a line of a megabyte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/model/tokenizer.h"
#include "server/train/dataset.h"
#include "server/train/reward.h"
#include "server/train/trainer.h"
#include "server/train/trainer_data.h"

static char *write_temp(const char *content, size_t len) {
    char tmpl[] = "/tmp/chord_ds_XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    return strdup(tmpl);
}

/* Line `line` (1-based) of text, without its newline. */
static const char *nth_line(const char *text, int line, size_t *len) {
    const char *p = text;
    for (int i = 1; i < line; i++) {
        p = strchr(p, '\n');
        assert_non_null(p);
        p++;
    }
    const char *nl = strchr(p, '\n');
    *len = nl ? (size_t)(nl - p) : strlen(p);
    return p;
}

/* Parses line `line` of text as a record of kind; returns ds_parse_line's result. */
static int parse_nth(ds_kind kind, const char *text, int line, ds_record *rec, chord_err *err) {
    size_t len;
    const char *p = nth_line(text, line, &len);
    chord_err_clear(err);
    return ds_parse_line(kind, p, len, (uint64_t)line, rec, err);
}

static void expect_error(ds_kind kind, const char *text, int line, const char *want) {
    chord_err err = {0};
    ds_record rec;
    int rc = parse_nth(kind, text, line, &rec, &err);
    if (rc != -1 || !strstr(err.msg, want))
        fail_msg("line %d: got %d \"%s\", want an error containing \"%s\"", line, rc, err.msg,
                 want);
    assert_int_equal(err.code, CHORD_E_INVALID);
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
    chord_err err = {0};
    ds_record rec;
    assert_int_equal(parse_nth(DS_PROMPTS, PROMPTS, 1, &rec, &err), 1); /* after the BOM */
    assert_int_equal(rec.n_messages, 1);
    assert_string_equal(rec.messages[0].role, "user");
    assert_string_equal(rec.messages[0].content, "Compute 1+2.");
    assert_string_equal(rec.answer, "3");
    ds_record_free(&rec);

    assert_int_equal(parse_nth(DS_PROMPTS, PROMPTS, 2, &rec, &err), 0); /* blank */

    assert_int_equal(parse_nth(DS_PROMPTS, PROMPTS, 3, &rec, &err), 1);
    assert_int_equal(rec.n_messages, 2);
    assert_string_equal(rec.messages[1].role, "user");
    assert_string_equal(rec.messages[1].content, "Compute 2*3.");
    assert_string_equal(rec.answer, "6");
    assert_string_equal(ds_prompt_text(rec.messages, rec.n_messages), "Compute 2*3.");
    ds_record_free(&rec);

    expect_error(DS_PROMPTS, PROMPTS, 4, "line 4: invalid JSON");
    expect_error(DS_PROMPTS, PROMPTS, 5, "line 5: \"answer\": required");

    assert_int_equal(parse_nth(DS_PROMPTS, PROMPTS, 6, &rec, &err), 1);
    assert_string_equal(rec.answer, "0.5");
    assert_string_equal(rec.messages[0].content, "real answer");
    ds_record_free(&rec);

    /* a trailing assistant turn (a reference solution) is not part of the prompt: dropped */
    assert_int_equal(parse_nth(DS_PROMPTS, PROMPTS, 7, &rec, &err), 1);
    assert_int_equal(rec.n_messages, 1);
    assert_string_equal(rec.messages[0].content, "q");
    assert_string_equal(rec.answer, "x");
    ds_record_free(&rec);

    expect_error(DS_PROMPTS, PROMPTS, 8, "line 8: a record must be a JSON object");
    expect_error(DS_PROMPTS, PROMPTS, 9, "line 9: \"prompt\": must be a non-empty string");
    assert_int_equal(parse_nth(DS_PROMPTS, PROMPTS, 10, &rec, &err), 1); /* no final newline */
    assert_string_equal(rec.messages[0].content, "last");
    ds_record_free(&rec);

    /* the whole file: opening it names the first bad line, with the path */
    char *path = write_temp(PROMPTS, sizeof PROMPTS - 1);
    trainer_dataset ds;
    assert_int_equal(trainer_dataset_open(&ds, path, DS_PROMPTS, 1, &err), -1);
    char want[512];
    snprintf(want, sizeof want, "%s: line 4: invalid JSON", path);
    if (!strstr(err.msg, want)) fail_msg("got \"%s\"", err.msg);
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
    chord_err err = {0};
    ds_record rec;
    assert_int_equal(parse_nth(DS_EXPERT, EXPERT, 1, &rec, &err), 1);
    assert_int_equal(rec.n_messages, 2);
    assert_string_equal(rec.messages[0].role, "user");
    assert_string_equal(rec.messages[0].content, "Compute 1+2.");
    assert_string_equal(rec.messages[1].role, "assistant");
    assert_string_equal(rec.messages[1].content, "1+2=3 \\boxed{3}");
    assert_null(rec.answer);
    ds_record_free(&rec);

    assert_int_equal(parse_nth(DS_EXPERT, EXPERT, 2, &rec, &err), 1);
    assert_int_equal(rec.n_messages, 2);
    assert_string_equal(rec.messages[0].content, "hi there"); /* text parts, joined */
    assert_string_equal(rec.messages[1].content, "hello");
    ds_record_free(&rec);

    expect_error(DS_EXPERT, EXPERT, 3,
                 "line 3: \"messages\": needs at least one assistant message");
    expect_error(DS_EXPERT, EXPERT, 4, "line 4: \"response\": required");
    expect_error(DS_EXPERT, EXPERT, 5, "line 5: \"response\": must be a string");
    expect_error(DS_EXPERT, EXPERT, 6,
                 "line 6: messages[0].role 'narrator' is not system, user, assistant or tool");
    expect_error(DS_EXPERT, EXPERT, 7,
                 "line 7: messages[0].content must be a string or a list of text parts");
    expect_error(DS_EXPERT, EXPERT, 8, "line 8: give \"prompt\" or \"messages\", not both");
}

/* Each rule docs/api.md states, decided once for uploads, training, eval and rollouts. */
static void test_rules(void **state) {
    (void)state;
    chord_err err = {0};
    ds_record rec;
    static const struct {
        ds_kind kind;
        const char *line;
        const char *error; /* NULL: a record */
    } cases[] = {
        /* whitespace around the object is fine (blank lines: below) */
        {DS_PROMPTS, "{\"prompt\": \"p\", \"answer\": \"1\"} ", NULL},
        /* the answer: required; a string, a number or null */
        {DS_PROMPTS, "{\"prompt\": \"p\", \"answer\": null}", NULL},
        {DS_PROMPTS, "{\"prompt\": \"p\", \"answer\": [1]}",
         "line 1: \"answer\": must be a string, a number or null"},
        {DS_PROMPTS, "{\"prompt\": \"p\", \"answer\": true}", "\"answer\": must be a string"},
        {DS_PROMPTS, "{\"prompt\": \"p\"}", "\"answer\": required: a string or a number"},
        {DS_PROMPTS, "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}",
         "\"answer\": required"},
        /* prompt and messages: one of them */
        {DS_PROMPTS,
         "{\"prompt\": \"p\", \"messages\": [{\"role\": \"user\", \"content\": \"q\"}], "
         "\"answer\": 1}",
         "give \"prompt\" or \"messages\", not both"},
        {DS_PROMPTS, "{\"answer\": 1}", "\"prompt\": required (or \"messages\")"},
        {DS_EXPERT, "{\"response\": \"r\"}", "\"prompt\": required with \"response\""},
        {DS_PROMPTS, "{\"prompt\": \"\", \"answer\": 1}", "\"prompt\": must be a non-empty string"},
        {DS_PROMPTS, "{\"messages\": [], \"answer\": 1}",
         "\"messages\": must be a non-empty array"},
        {DS_PROMPTS, "{\"messages\": {\"role\": \"user\"}, \"answer\": 1}",
         "\"messages\": must be a non-empty array"},
        /* text-part content: accepted everywhere */
        {DS_PROMPTS,
         "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": "
         "\"q\"}]}], \"answer\": 1}",
         NULL},
        {DS_PROMPTS,
         "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\"}]}], "
         "\"answer\": 1}",
         "messages[0].content[0] must be {\"type\": \"text\", \"text\": string}"},
        /* trailing assistant turns: dropped from a prompt; a prompt of assistant turns only */
        {DS_PROMPTS,
         "{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"}], \"answer\": 1}",
         "\"messages\": a prompt needs a system, user or tool turn"},
        {DS_EXPERT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
         "\"content\": \"a\"}], \"response\": \"r\"}",
         "\"response\": not used with \"messages\""},
        /* JSON itself: duplicate keys, text after the object, invalid UTF-8, NUL */
        {DS_PROMPTS, "{\"prompt\": \"a\", \"answer\": \"1\", \"prompt\": \"b\"}",
         "line 1: invalid JSON: duplicate object key"},
        {DS_PROMPTS, "{\"prompt\": \"a\", \"answer\": \"1\"} x", "line 1: invalid JSON"},
        {DS_PROMPTS, "{\"prompt\": \"\xff\xfe\", \"answer\": \"1\"}", "line 1: invalid JSON"},
        {DS_PROMPTS, "{\"prompt\": \"a\\u0000b\", \"answer\": \"1\"}", "line 1: invalid JSON"},
        /* other keys: ignored (an expert record's answer, a prompt record's response) */
        {DS_EXPERT, "{\"prompt\": \"p\", \"response\": \"r\", \"answer\": 1, \"meta\": {}}", NULL},
        {DS_PROMPTS, "{\"prompt\": \"p\", \"response\": \"r\", \"answer\": 1}", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chord_err_clear(&err);
        int rc = ds_parse_line(cases[i].kind, cases[i].line, strlen(cases[i].line), 1, &rec, &err);
        if (!cases[i].error) {
            if (rc != 1) fail_msg("case %zu: %s", i, err.msg);
            ds_record_free(&rec);
        } else if (rc != -1 || !strstr(err.msg, cases[i].error)) {
            fail_msg("case %zu: got %d \"%s\", want \"%s\"", i, rc, err.msg, cases[i].error);
        }
    }
    static const char *const blanks[] = {"", " ", "\t \r", "\xEF\xBB\xBF", "\xEF\xBB\xBF  "};
    for (size_t i = 0; i < sizeof blanks / sizeof blanks[0]; i++)
        assert_int_equal(ds_parse_line(DS_PROMPTS, blanks[i], strlen(blanks[i]), 1, &rec, &err), 0);
    /* a BOM only opens the file: on line 2 it is not JSON */
    assert_int_equal(ds_parse_line(DS_PROMPTS, "\xEF\xBB\xBF{}", 5, 2, &rec, &err), -1);
    /* validation only (rec NULL), as uploads do */
    const char *ok = "{\"prompt\": \"p\", \"response\": \"r\"}";
    assert_int_equal(ds_parse_line(DS_EXPERT, ok, strlen(ok), 9, NULL, &err), 1);

    /* prompts of rollout requests: a string or a conversation, the same rules */
    json_t *conv = json_loads("[{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", "
                              "\"content\": [{\"type\": \"text\", \"text\": \"u\"}]}, "
                              "{\"role\": \"assistant\", \"content\": \"a\"}]",
                              0, NULL);
    chat_message *m;
    size_t n;
    assert_int_equal(ds_prompt_messages(conv, &m, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(m[1].content, "u");
    assert_string_equal(ds_prompt_text(m, n), "u");
    chat_messages_free(m, n);
    json_decref(conv);
    json_t *s = json_string("");
    assert_int_equal(ds_prompt_messages(s, &m, &n, &err), -1);
    json_decref(s);
}

/* A numeric answer is the text a person wrote: 0.1 stays "0.1" (json_dumps wrote
 * "0.10000000000000001", which an exact / contains / regex verifier then compared). */
static void test_numeric_answers(void **state) {
    (void)state;
    static const struct {
        const char *json, *text;
    } cases[] = {
        {"0.1", "0.1"},
        {"4", "4"},
        {"-7", "-7"},
        {"1.0", "1"},
        {"2.50", "2.5"},
        {"1e21", "1e+21"},
        {"1e20", "100000000000000000000"},
        {"-0.0", "0"},
        {"1e-7", "1e-7"},
        {"0.000001", "0.000001"},
        {"3.14159", "3.14159"},
        {"12345678901234567", "12345678901234567"},
        {"\"0.10\"", "0.10"},
        {"\"\"", ""},
    };
    chord_err err = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *v = json_loads(cases[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(v);
        char *text = NULL;
        assert_int_equal(ds_answer_text(v, &text, &err), 0);
        if (strcmp(text, cases[i].text) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].json, text, cases[i].text);
        free(text);
        json_decref(v);
    }
    char *text = (char *)"unset";
    assert_int_equal(ds_answer_text(json_null(), &text, &err), 0);
    assert_null(text);

    /* through the trainer's dataset (the path of training and `chordd eval`), then scored */
    static const char FILE_TEXT[] = "{\"prompt\": \"What is 1/10?\", \"answer\": 0.1}\n"
                                    "{\"prompt\": \"And 3/2?\", \"answer\": 1.5e0}\n";
    char *path = write_temp(FILE_TEXT, sizeof FILE_TEXT - 1);
    tok_tokenizer *tok = NULL;
    assert_int_equal(tok_load_default(&tok, &err), 0);
    chat_template tpl;
    assert_int_equal(trainer_chat_template(tok, &tpl, &err), 0);
    trainer_dataset ds;
    if (trainer_dataset_open(&ds, path, DS_PROMPTS, 1, &err) != 0) fail_msg("%s", err.msg);
    trainer_item it;
    assert_int_equal(trainer_dataset_item_at(&ds, 0, tok, &tpl, 1, &it, &err), 0);
    assert_string_equal(it.answer, "0.1");
    assert_string_equal(it.text, "What is 1/10?");
    json_t *cfg = json_pack("{s:s}", "type", "exact");
    reward_verifier *v = NULL;
    assert_int_equal(reward_verifier_new(cfg, &v, &err), 0);
    reward_result res;
    reward_score(v, it.text, "0.1", it.answer, false, &res);
    assert_int_equal(res.reason, REWARD_REASON_CORRECT);
    trainer_item_free(&it);
    assert_int_equal(trainer_dataset_item_at(&ds, 1, tok, &tpl, 1, &it, &err), 0);
    assert_string_equal(it.answer, "1.5");
    trainer_item_free(&it);
    reward_verifier_free(v);
    json_decref(cfg);
    trainer_dataset_close(&ds);
    tok_free(tok);
    unlink(path);
    free(path);
}

/* Blank lines skipped but counted; records read in file order and, through the cursor, in a
 * seeded order that a reopened dataset (a restarted server) repeats exactly. */
static void test_cursor_resume_and_count(void **state) {
    (void)state;
    char buf[8192];
    size_t len = 0;
    for (int i = 0; i < 50; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "{\"prompt\": \"p%d\", \"answer\": \"%d\"}\n%s", i, i,
                                i % 7 == 0 ? "\n" : "");
    char *path = write_temp(buf, len);
    chord_err err = {0};
    tok_tokenizer *tok = NULL;
    assert_int_equal(tok_load_default(&tok, &err), 0);
    chat_template tpl;
    assert_int_equal(trainer_chat_template(tok, &tpl, &err), 0);
    trainer_dataset a, b;
    assert_int_equal(trainer_dataset_open(&a, path, DS_PROMPTS, 7, &err), 0);
    assert_int_equal(a.n, 50);
    assert_int_equal(a.lines[0], 1);
    assert_int_equal(a.lines[1], 3); /* line 2 is blank */
    trainer_item it;
    assert_int_equal(trainer_dataset_item_at(&a, 17, tok, &tpl, 1, &it, &err), 0);
    assert_string_equal(it.text, "p17");
    assert_string_equal(it.answer, "17");
    trainer_item_free(&it);
    char seen[120][16];
    for (int c = 0; c < 120; c++) { /* more than two epochs */
        assert_int_equal(trainer_dataset_item(&a, c, tok, &tpl, 1, &it, &err), 0);
        snprintf(seen[c], sizeof seen[c], "%s", it.text);
        trainer_item_free(&it);
    }
    /* a fresh open reads the same record at every cursor, in any order of access */
    assert_int_equal(trainer_dataset_open(&b, path, DS_PROMPTS, 7, &err), 0);
    for (int c = 119; c >= 17; c -= 3) {
        assert_int_equal(trainer_dataset_item(&b, c, tok, &tpl, 1, &it, &err), 0);
        assert_string_equal(it.text, seen[c]);
        trainer_item_free(&it);
    }
    /* an epoch is a permutation: each record once */
    for (int i = 0; i < 50; i++)
        for (int j = i + 1; j < 50; j++)
            assert_string_not_equal(seen[i], seen[j]);
    assert_int_equal(trainer_dataset_item_at(&b, 50, tok, &tpl, 1, &it, &err), -1);
    assert_non_null(strstr(err.msg, "out of range"));
    trainer_dataset_close(&a);
    trainer_dataset_close(&b);
    tok_free(tok);
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
    chord_err err = {0};
    ds_record rec;
    assert_int_equal(ds_parse_line(DS_PROMPTS, buf, len, 1, &rec, &err), 1);
    assert_int_equal(strlen(rec.messages[0].content), big);
    ds_record_free(&rec);
    char *path = write_temp(buf, len);
    trainer_dataset ds;
    assert_int_equal(trainer_dataset_open(&ds, path, DS_PROMPTS, 1, &err), 0);
    assert_int_equal(ds.n, 1);
    trainer_dataset_close(&ds);
    unlink(path);
    free(path);
    free(buf);
    assert_int_equal(trainer_dataset_open(&ds, "/nonexistent/data.jsonl", DS_PROMPTS, 1, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/data.jsonl"));
    path = write_temp("\n \n", 3); /* blank lines only: no records */
    chord_err_clear(&err);
    assert_int_equal(trainer_dataset_open(&ds, path, DS_PROMPTS, 1, &err), -1);
    assert_non_null(strstr(err.msg, "no records"));
    unlink(path);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompts),
        cmocka_unit_test(test_expert),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_numeric_answers),
        cmocka_unit_test(test_cursor_resume_and_count),
        cmocka_unit_test(test_long_line_and_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
