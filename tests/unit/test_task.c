/* test_task.c — the built-in arithmetic task: answers checked by recomputing a op b here,
 * determinism by (seed, split, index), the held-out split disjoint from training (commuted
 * twins included) and near its share, the difficulty knobs, and the JSONL / corpus files read
 * back with jansson. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/train/task.h"

static task_problem draw(const task_arith_config *cfg, uint64_t seed, task_split split,
                         uint64_t i) {
    task_problem p;
    chord_err err = {0};
    if (task_arith_problem(cfg, seed, split, i, &p, &err)) fail_msg("%s", err.msg);
    return p;
}

static long long count_digits(long long v) {
    if (v < 0) v = -v;
    long long d = 1;
    while (v >= 10)
        v /= 10, d++;
    return d;
}

/* The texts say what a op b is, computed here independently. */
static void check_problem(const task_arith_config *cfg, const task_problem *p) {
    long long a = p->a, b = p->b, c;
    switch (p->op) {
    case '+':
        c = a + b;
        assert_true(cfg->ops & TASK_OP_ADD);
        break;
    case '-':
        c = a - b;
        assert_true(cfg->ops & TASK_OP_SUB);
        break;
    case '*':
        c = a * b;
        assert_true(cfg->ops & TASK_OP_MUL);
        break;
    default:
        fail_msg("op %c", p->op);
        return;
    }
    char want[128];
    snprintf(want, sizeof want, "Compute %lld%c%lld.", a, p->op, b);
    assert_string_equal(p->prompt, want);
    snprintf(want, sizeof want, "%lld", c);
    assert_string_equal(p->answer, want);
    snprintf(want, sizeof want, "%lld%c%lld=%lld \\boxed{%lld}", a, p->op, b, c, c);
    assert_string_equal(p->response, want);
    if (!cfg->allow_negative) assert_true(c >= 0);
    assert_true(count_digits(a) >= (cfg->min_digits) && count_digits(a) <= cfg->max_digits);
    if (p->op == '*') {
        assert_true(count_digits(b) == cfg->mul_digits);
        assert_true(b >= 2);
    } else {
        assert_true(count_digits(b) >= cfg->min_digits && count_digits(b) <= cfg->max_digits);
    }
}

static void test_default_problems(void **state) {
    (void)state;
    task_arith_config cfg;
    task_arith_default(&cfg);
    chord_err err = {0};
    assert_int_equal(task_arith_check(&cfg, &err), 0);
    int ops_seen[2] = {0, 0};
    for (uint64_t i = 0; i < 2000; i++) {
        task_problem p = draw(&cfg, 1, TASK_SPLIT_TRAIN, i);
        check_problem(&cfg, &p);
        ops_seen[p.op == '-']++;
        assert_true(strlen(p.response) <= 24); /* short: "99+99=198 \boxed{198}" */
    }
    assert_true(ops_seen[0] > 800 && ops_seen[1] > 800);
    task_problem p = draw(&cfg, 1, TASK_SPLIT_TRAIN, 0);
    printf("example: %s -> %s (answer %s)\n", p.prompt, p.response, p.answer);
}

static void test_knobs(void **state) {
    (void)state;
    task_arith_config cfg = {.ops = TASK_OP_ADD | TASK_OP_SUB | TASK_OP_MUL,
                             .min_digits = 2,
                             .max_digits = 3,
                             .mul_digits = 1,
                             .allow_negative = 1,
                             .heldout_percent = 20};
    int neg = 0, mul = 0;
    for (uint64_t i = 0; i < 3000; i++) {
        task_problem p = draw(&cfg, 5, i % 2 ? TASK_SPLIT_HELDOUT : TASK_SPLIT_TRAIN, i);
        check_problem(&cfg, &p);
        neg += p.answer[0] == '-';
        mul += p.op == '*';
    }
    assert_true(neg > 100);
    assert_true(mul > 700);
    chord_err err = {0};
    task_arith_config bad = cfg;
    bad.max_digits = 1;
    assert_int_equal(task_arith_check(&bad, &err), -1);
    assert_non_null(strstr(err.msg, "task.max_digits"));
    bad = cfg;
    bad.ops = 0;
    assert_int_equal(task_arith_check(&bad, &err), -1);
    assert_non_null(strstr(err.msg, "task.ops"));
    bad = cfg;
    bad.heldout_percent = 0;
    task_problem p;
    assert_int_equal(task_arith_problem(&bad, 1, TASK_SPLIT_TRAIN, 0, &p, &err), -1);
    assert_non_null(strstr(err.msg, "task.heldout_percent"));
}

static void test_deterministic(void **state) {
    (void)state;
    task_arith_config cfg;
    task_arith_default(&cfg);
    int differ = 0;
    for (uint64_t i = 0; i < 200; i++) {
        task_problem a = draw(&cfg, 42, TASK_SPLIT_TRAIN, i),
                     b = draw(&cfg, 42, TASK_SPLIT_TRAIN, i);
        assert_memory_equal(&a, &b, sizeof a);
        task_problem c = draw(&cfg, 43, TASK_SPLIT_TRAIN, i);
        differ += strcmp(a.prompt, c.prompt) != 0;
    }
    assert_true(differ > 150);
}

/* Problems as a canonical key: commuted + and * are the same problem. */
static long long key_of(const task_problem *p) {
    long long a = p->a, b = p->b;
    if ((p->op == '+' || p->op == '*') && a > b) {
        long long t = a;
        a = b;
        b = t;
    }
    return (a * 1000 + b) * 4 + (p->op == '+' ? 0 : p->op == '-' ? 1 : 2);
}

static void test_heldout_disjoint(void **state) {
    (void)state;
    task_arith_config cfg;
    task_arith_default(&cfg); /* 0..99 operands: every problem fits a 100k-entry table */
    static unsigned char in_train[100 * 1000 * 4 + 100 * 4 + 4];
    memset(in_train, 0, sizeof in_train);
    for (uint64_t seed = 0; seed < 3; seed++)
        for (uint64_t i = 0; i < 5000; i++) {
            task_problem p = draw(&cfg, seed, TASK_SPLIT_TRAIN, i);
            assert_int_equal(task_arith_split_of(&cfg, p.a, p.op, p.b), TASK_SPLIT_TRAIN);
            in_train[key_of(&p)] = 1;
        }
    for (uint64_t seed = 0; seed < 3; seed++)
        for (uint64_t i = 0; i < 1000; i++) {
            task_problem p = draw(&cfg, seed + 100, TASK_SPLIT_HELDOUT, i);
            assert_int_equal(task_arith_split_of(&cfg, p.a, p.op, p.b), TASK_SPLIT_HELDOUT);
            assert_false(in_train[key_of(&p)]);
        }
    /* the held-out share over the whole problem space is near heldout_percent (10%) */
    long total = 0, held = 0;
    for (int a = 0; a < 100; a++)
        for (int b = 0; b < 100; b++) {
            total++;
            held += task_arith_split_of(&cfg, a, '+', b) == TASK_SPLIT_HELDOUT;
            assert_int_equal(task_arith_split_of(&cfg, a, '+', b),
                             task_arith_split_of(&cfg, b, '+', a));
        }
    double share = (double)held / (double)total;
    printf("held-out share of 1-2 digit additions: %.4f\n", share);
    assert_true(share > 0.08 && share < 0.12);
}

/* Reads a JSONL file: each line one object with exactly the keys k1, k2. */
static size_t check_jsonl(const char *path, const char *k1, const char *k2) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t jerr;
        json_t *obj = json_loads(line, 0, &jerr);
        if (!obj) fail_msg("%s line %zu: %s", path, n + 1, jerr.text);
        assert_int_equal(json_object_size(obj), 2);
        assert_true(json_is_string(json_object_get(obj, k1)));
        assert_true(json_is_string(json_object_get(obj, k2)));
        if (!strcmp(k2, "response"))
            assert_non_null(strstr(json_string_value(json_object_get(obj, k2)), "\\boxed{"));
        json_decref(obj);
        n++;
    }
    fclose(f);
    return n;
}

static void test_writers(void **state) {
    (void)state;
    task_arith_config cfg;
    task_arith_default(&cfg);
    char dir[] = "/tmp/chord_test_task_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char prompts[256], expert[256], corpus[256];
    snprintf(prompts, sizeof prompts, "%s/prompts.jsonl", dir);
    snprintf(expert, sizeof expert, "%s/expert.jsonl", dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    chord_err err = {0};
    assert_int_equal(task_write_prompts_jsonl(prompts, &cfg, 7, TASK_SPLIT_HELDOUT, 50, &err), 0);
    assert_int_equal(task_write_expert_jsonl(expert, &cfg, 8, TASK_SPLIT_TRAIN, 80, &err), 0);
    assert_int_equal(task_write_corpus(corpus, &cfg, 9, 30, &err), 0);
    assert_int_equal(check_jsonl(prompts, "prompt", "answer"), 50);
    assert_int_equal(check_jsonl(expert, "prompt", "response"), 80);
    /* the first record is problem 0 of the split, the backslash escaped in JSON */
    FILE *f = fopen(expert, "r");
    char line[512];
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    task_problem p = draw(&cfg, 8, TASK_SPLIT_TRAIN, 0);
    char want[512];
    snprintf(want, sizeof want,
             "{\"prompt\":\"%s\",\"response\":\"%lld%c%lld=%s \\\\boxed{%s}\"}\n", p.prompt,
             (long long)p.a, p.op, (long long)p.b, p.answer, p.answer);
    assert_string_equal(line, want);
    f = fopen(corpus, "r");
    size_t lines = 0;
    while (fgets(line, sizeof line, f))
        lines++;
    fclose(f);
    assert_int_equal(lines, 60);
    assert_int_equal(task_write_corpus("/nonexistent/dir/c.txt", &cfg, 9, 3, &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/dir/c.txt"));
    unlink(prompts);
    unlink(expert);
    unlink(corpus);
    rmdir(dir);
}

static void test_default_files(void **state) {
    (void)state;
    task_arith_config cfg;
    task_arith_default(&cfg);
    char dir[] = "/tmp/chord_test_taskdir_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[256];
    snprintf(sub, sizeof sub, "%s/builtin", dir);
    chord_err err = {0};
    assert_int_equal(task_write_default_files(sub, &cfg, 11, 40, 30, 20, &err), 0);
    const char *names[] = {"prompts.jsonl", "expert.jsonl", "eval.jsonl", "corpus.txt"};
    size_t want[] = {40, 30, 20, 80};
    for (int i = 0; i < 4; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", sub, names[i]);
        size_t n = i == 0 || i == 2 ? check_jsonl(path, "prompt", "answer")
                   : i == 1         ? check_jsonl(path, "prompt", "response")
                                    : 0;
        if (i == 3) {
            FILE *f = fopen(path, "r");
            assert_non_null(f);
            char line[256];
            while (fgets(line, sizeof line, f))
                n++;
            fclose(f);
        }
        assert_int_equal(n, want[i]);
        if (i == 2) { /* eval.jsonl holds held-out problems only, prompts.jsonl none */
            FILE *f = fopen(path, "r");
            char line[256];
            while (fgets(line, sizeof line, f)) {
                long long a, b;
                char op;
                assert_int_equal(sscanf(line, "{\"prompt\":\"Compute %lld%c%lld.", &a, &op, &b), 3);
                assert_int_equal(task_arith_split_of(&cfg, a, op, b), TASK_SPLIT_HELDOUT);
            }
            fclose(f);
        }
        unlink(path);
    }
    rmdir(sub);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_problems), cmocka_unit_test(test_knobs),
        cmocka_unit_test(test_deterministic),    cmocka_unit_test(test_heldout_disjoint),
        cmocka_unit_test(test_writers),          cmocka_unit_test(test_default_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
