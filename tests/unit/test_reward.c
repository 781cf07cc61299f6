/* test_reward.c — unit tests of the verifiers (server/train/reward.h, mathnorm.h): a table of
 * tricky math_boxed cases with their MATH-convention verdicts, every reason of every verifier,
 * the regex match budget on a catastrophic pattern, input caps, and malformed configurations.
 * The comparison with math-verify itself is tests/reference/reward_math_verify.py; the webhook
 * against a live server is tests/reference/reward_webhook.py. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/base/fileutil.h"
#include "server/train/mathnorm.h"
#include "server/train/reward.h"
#include "server/train/reward_internal.h"

static reward_verifier *make(const char *json) {
    json_error_t jerr;
    json_t *cfg = json_loads(json, 0, &jerr);
    assert_non_null(cfg);
    chord_err err = {0};
    reward_verifier *v = NULL;
    int rc = reward_verifier_new(cfg, &v, &err);
    if (rc != 0) print_error("config %s: %s\n", json, err.msg);
    assert_int_equal(rc, 0);
    json_decref(cfg);
    return v;
}

static reward_result score(const reward_verifier *v, const char *prompt, const char *completion,
                           const char *answer, bool truncated) {
    reward_result r;
    memset(&r, 0x5A, sizeof r);
    assert_int_equal(reward_score(v, prompt, completion, answer, truncated, &r), 0);
    assert_non_null(memchr(r.detail, '\0', sizeof r.detail));
    return r;
}

/* ---- math_boxed: the table ---- */

typedef struct math_case {
    const char *gold, *completion;
    reward_reason reason;
} math_case;

static const math_case math_cases[] = {
    /* extraction */
    {"5", "so the answer is \\boxed{5}.", REWARD_REASON_CORRECT},
    {"5", "first \\boxed{3}, no wait: \\boxed{5}", REWARD_REASON_CORRECT},
    {"3", "first \\boxed{3}, no wait: \\boxed{5}", REWARD_REASON_WRONG},
    {"\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", REWARD_REASON_CORRECT},
    {"\\{1,2\\}", "\\boxed{\\{1, 2\\}}", REWARD_REASON_CORRECT},
    {"7", "\\fbox{7}", REWARD_REASON_CORRECT},
    {"7", "$\\boxed 7$", REWARD_REASON_CORRECT},
    {"7", "the answer is 7", REWARD_REASON_NO_ANSWER},
    {"7", "\\boxed{}", REWARD_REASON_NO_ANSWER},
    {"7", "\\boxed{  }", REWARD_REASON_NO_ANSWER},
    {"7", "\\boxed{7", REWARD_REASON_NO_ANSWER},           /* cut inside the box */
    {"\\boxed{12}", "\\boxed{12}", REWARD_REASON_CORRECT}, /* a boxed gold is unwrapped */
    {"$12$", "\\boxed{12}", REWARD_REASON_CORRECT},
    /* spaces, \left \right, \! \, dfrac tfrac */
    {"(1,2)", "\\boxed{\\left( 1 , 2 \\right)}", REWARD_REASON_CORRECT},
    {"\\frac{3}{4}", "\\boxed{\\dfrac{3}{4}}", REWARD_REASON_CORRECT},
    {"\\frac{3}{4}", "\\boxed{\\tfrac34}", REWARD_REASON_CORRECT},
    {"\\frac{1}{2}", "\\boxed{\\frac12}", REWARD_REASON_CORRECT},
    {"\\frac{a}{b}", "\\boxed{\\frac ab}", REWARD_REASON_CORRECT},
    {"\\frac{1}{\\pi}", "\\boxed{\\frac1\\pi}", REWARD_REASON_CORRECT},
    {"1000", "\\boxed{1\\!000}", REWARD_REASON_CORRECT},
    {"1000", "\\boxed{1\\,000}", REWARD_REASON_CORRECT},
    /* degrees, percent, dollars, units */
    {"45", "\\boxed{45^\\circ}", REWARD_REASON_CORRECT},
    {"45", "\\boxed{45^{\\circ}}", REWARD_REASON_CORRECT},
    {"45^\\circ", "\\boxed{45}", REWARD_REASON_CORRECT},
    {"45", "\\boxed{45\xc2\xb0}", REWARD_REASON_CORRECT},
    {"20", "\\boxed{20\\%}", REWARD_REASON_CORRECT},
    {"20\\%", "\\boxed{0.2}", REWARD_REASON_WRONG}, /* off by 100: % is a unit */
    {"5.50", "\\boxed{\\$5.50}", REWARD_REASON_CORRECT},
    {"5.5", "\\boxed{\\$5.50}", REWARD_REASON_CORRECT},
    {"12", "\\boxed{12 \\text{ cm}^2}", REWARD_REASON_CORRECT},
    {"12", "\\boxed{12\\mbox{ inches}}", REWARD_REASON_CORRECT},
    {"\\text{Tuesday}", "\\boxed{\\text{Tuesday}}", REWARD_REASON_CORRECT},
    {"B", "\\boxed{\\text{(B)}}", REWARD_REASON_CORRECT},
    {"x-axis", "\\boxed{\\text{x-axis}}", REWARD_REASON_CORRECT},
    /* numbers */
    {"10", "\\boxed{10.0}", REWARD_REASON_CORRECT},
    {"10", "\\boxed{10.00}", REWARD_REASON_CORRECT},
    {"10.5", "\\boxed{10.50}", REWARD_REASON_CORRECT},
    {"0.5", "\\boxed{.5}", REWARD_REASON_CORRECT},
    {"-0.5", "\\boxed{-.5}", REWARD_REASON_CORRECT},
    {"0.5", "\\boxed{\\frac{1}{2}}", REWARD_REASON_CORRECT},
    {"\\frac{1}{2}", "\\boxed{1/2}", REWARD_REASON_CORRECT},
    {"\\frac{6}{8}", "\\boxed{\\frac{3}{4}}", REWARD_REASON_CORRECT},
    {"-\\frac{2}{3}", "\\boxed{\\frac{-2}{3}}", REWARD_REASON_CORRECT},
    {"-\\frac{2}{3}", "\\boxed{\\frac{2}{-3}}", REWARD_REASON_CORRECT},
    {"\\frac{2}{3}", "\\boxed{-\\frac{2}{3}}", REWARD_REASON_WRONG},
    {"\\frac{1}{3}", "\\boxed{0.333333}", REWARD_REASON_CORRECT}, /* 6 places, rounds equal */
    {"\\frac{1}{3}", "\\boxed{0.33}", REWARD_REASON_WRONG},
    {"\\frac{1}{4}", "\\boxed{0.2500001}", REWARD_REASON_WRONG}, /* terminating: exact only */
    {"1000000", "\\boxed{1,000,000}", REWARD_REASON_CORRECT},
    {"1000000", "\\boxed{1{,}000{,}000}", REWARD_REASON_CORRECT},
    {"1234.5", "\\boxed{1,234.5}", REWARD_REASON_CORRECT},
    {"1000", "\\boxed{1,00}", REWARD_REASON_WRONG},   /* not a thousands separator */
    {"12", "\\boxed{1,2}", REWARD_REASON_WRONG},      /* a list, not 12 */
    {"1,2", "\\boxed{2,1}", REWARD_REASON_CORRECT},   /* a bare list ignores order */
    {"(1,2)", "\\boxed{(2,1)}", REWARD_REASON_WRONG}, /* a tuple does not */
    {"[1,2)", "\\boxed{[1,2]}", REWARD_REASON_WRONG},
    {"(0.5,1),(2,3)", "\\boxed{(2,3),(\\frac12,1)}", REWARD_REASON_CORRECT},
    {"\\{1\\},\\{2\\}", "\\boxed{\\{2\\},\\{1\\}}", REWARD_REASON_CORRECT},
    {"\\{1,2\\},\\{3\\}", "\\boxed{\\{1\\},\\{2,3\\}}", REWARD_REASON_WRONG},
    {"(1,2),(3,4)", "\\boxed{(3,4),(1,2)}", REWARD_REASON_CORRECT},
    {"(1,2),(3,4)", "\\boxed{(1,2,3,4)}", REWARD_REASON_WRONG},
    {"123456789012345678901", "\\boxed{123456789012345678901}", REWARD_REASON_CORRECT},
    {"123456789012345678901", "\\boxed{123456789012345678902}", REWARD_REASON_WRONG},
    /* x= prefixes, sqrt */
    {"5", "\\boxed{x=5}", REWARD_REASON_CORRECT},
    {"5", "\\boxed{k = 5}", REWARD_REASON_CORRECT},
    {"\\frac{\\pi}{3}", "\\boxed{\\theta = \\frac{\\pi}{3}}", REWARD_REASON_CORRECT},
    {"5", "\\boxed{2x=10}", REWARD_REASON_WRONG},
    {"5", "\\boxed{x=5, y=3}", REWARD_REASON_WRONG},
    {"y=2x+1", "\\boxed{2x+1}", REWARD_REASON_CORRECT},
    {"3x+2y=5", "\\boxed{6x+4y=10}", REWARD_REASON_WRONG},
    {"2\\sqrt{2}", "\\boxed{2\\sqrt2}", REWARD_REASON_CORRECT},
    {"\\sqrt{2}3", "\\boxed{\\sqrt23}", REWARD_REASON_CORRECT}, /* LaTeX: one token */
    {"\\sqrt[3]{2}", "\\boxed{\\sqrt[3]2}", REWARD_REASON_CORRECT},
    {"\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt 3}{2}}", REWARD_REASON_CORRECT},
    /* false positives a looser checker makes */
    {"\\frac{1}{2004!}", "\\boxed{\\frac{1}{2006!}}", REWARD_REASON_WRONG},
    {"10^{-20}", "\\boxed{10^{-21}}", REWARD_REASON_WRONG},
    {"9\\%", "\\boxed{0.09}", REWARD_REASON_WRONG},
    /* odd inputs */
    {"5", "\\boxed{\xff\xfe}", REWARD_REASON_WRONG},
    {"-5",
     "\\boxed{\xe2\x88\x92"
     "5}",
     REWARD_REASON_CORRECT}, /* U+2212 minus */
};

static void test_math_table(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"math_boxed\"}");
    int bad = 0;
    for (size_t i = 0; i < sizeof math_cases / sizeof math_cases[0]; i++) {
        const math_case *c = &math_cases[i];
        reward_result r = score(v, NULL, c->completion, c->gold, false);
        double want = c->reason == REWARD_REASON_CORRECT ? 1.0 : 0.0;
        if (r.reason != c->reason || r.reward != want ||
            r.correct != (c->reason == REWARD_REASON_CORRECT)) {
            print_error("case %zu: gold %s, completion %s: got %s (%g, %s), want %s\n", i, c->gold,
                        c->completion, reward_reason_name(r.reason), r.reward, r.detail,
                        reward_reason_name(c->reason));
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    reward_verifier_free(v);
}

static void test_math_last_boxed(void **state) {
    (void)state;
    const char *s;
    size_t n;
    assert_true(mathnorm_last_boxed("a \\boxed{\\frac{1}{2}} b", &s, &n));
    assert_int_equal(n, strlen("\\frac{1}{2}"));
    assert_memory_equal(s, "\\frac{1}{2}", n);
    assert_true(mathnorm_last_boxed("\\boxed{1} \\fbox{2}", &s, &n));
    assert_memory_equal(s, "2", 1);
    assert_true(mathnorm_last_boxed("\\boxed{\\{a\\}}", &s, &n)); /* escaped braces inside */
    assert_int_equal(n, 5);
    assert_false(mathnorm_last_boxed("\\boxed{1} then \\boxed{2", &s, &n));
    assert_false(mathnorm_last_boxed("\\boxedx{1}", &s, &n));
    assert_false(mathnorm_last_boxed("nothing", &s, &n));
}

static void test_math_think_format(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"math_boxed\", \"think_format\": true}");
    reward_result r = score(v, "Q", "<think>2+2</think> \\boxed{4}", "4", false);
    assert_int_equal(r.reason, REWARD_REASON_CORRECT);
    assert_float_equal(r.reward, 1.0, 0);
    /* no think block: format, accuracy kept, 0.1 off (Trinity-RFT adds the format score) */
    r = score(v, "Q", "\\boxed{4}", "4", false);
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    assert_true(r.correct);
    assert_float_equal(r.reward, 0.9, 1e-12);
    r = score(v, "Q", "</think> x <think> \\boxed{4}", "4", false); /* wrong order */
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    r = score(v, "Q", "<think>a</think><think>b</think>\\boxed{4}", "4", false); /* twice */
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    r = score(v, "Q", "<think>a</think> \\boxed{5}", "4", false);
    assert_int_equal(r.reason, REWARD_REASON_WRONG);
    assert_float_equal(r.reward, 0.0, 0);
    r = score(v, "Q", "no think, \\boxed{5}", "4", false);
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    assert_false(r.correct);
    assert_float_equal(r.reward, -0.1, 1e-12);
    /* a template that opens <think> in the prompt: the response only closes it */
    r = score(v, "<|im_start|>assistant\n<think>\n", "hmm</think>\\boxed{4}", "4", false);
    assert_int_equal(r.reason, REWARD_REASON_CORRECT);
    r = score(v, "<|im_start|>assistant\n<think>\n", "<think>hmm</think>\\boxed{4}", "4", false);
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    reward_verifier_free(v);

    v = make("{\"type\": \"math_boxed\", \"think_format\": true, \"format_penalty\": 0.5}");
    r = score(v, NULL, "\\boxed{4}", "4", false);
    assert_float_equal(r.reward, 0.5, 1e-12);
    reward_verifier_free(v);
}

static void test_math_length_penalty(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"math_boxed\", \"length_penalty\": -1}");
    reward_result r = score(v, NULL, "long reasoning that never ends \\boxed{12", "12", true);
    assert_int_equal(r.reason, REWARD_REASON_NO_ANSWER);
    assert_float_equal(r.reward, -1.0, 0);
    r = score(v, NULL, "not truncated, no answer", "12", false);
    assert_int_equal(r.reason, REWARD_REASON_NO_ANSWER);
    assert_float_equal(r.reward, 0.0, 0);
    r = score(v, NULL, "truncated after answering \\boxed{12} and more", "12", true);
    assert_int_equal(r.reason, REWARD_REASON_CORRECT);
    assert_float_equal(r.reward, 1.0, 0);
    reward_verifier_free(v);
    /* null: no penalty */
    v = make("{\"type\": \"math_boxed\", \"length_penalty\": null}");
    r = score(v, NULL, "cut", "12", true);
    assert_float_equal(r.reward, 0.0, 0);
    reward_verifier_free(v);
}

/* A verifier error is never a wrong answer. */
static void test_math_errors(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"math_boxed\"}");
    reward_result r = score(v, NULL, "\\boxed{1}", NULL, false);
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    assert_float_equal(r.reward, 0.0, 0);
    r = score(v, NULL, "\\boxed{1}", "  ", false);
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    r = score(v, NULL, NULL, "1", false);
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    /* an answer over the cap: error, in bounded time */
    size_t big = MATHNORM_MAX_LEN + 10;
    char *text = malloc(big + 16);
    assert_non_null(text);
    strcpy(text, "\\boxed{");
    memset(text + 7, '1', big);
    strcpy(text + 7 + big, "}");
    r = score(v, NULL, text, "1", false);
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    r = score(v, NULL, "\\boxed{1}", text + 7, false); /* gold too long */
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    free(text);
    assert_int_equal(reward_score(NULL, NULL, "x", "y", false, &r), -1);
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    assert_int_equal(reward_score(v, NULL, "x", "y", false, NULL), -1);
    reward_verifier_free(v);
}

/* Hostile inputs stay bounded: deep nesting, many boxes, a long response. */
static void test_math_bounded(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"math_boxed\"}");
    size_t depth = 5000;
    size_t cap = depth * 8 + 64;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t w = (size_t)sprintf(s, "\\boxed{");
    for (size_t i = 0; i < depth / 2; i++)
        w += (size_t)sprintf(s + w, "\\frac{");
    for (size_t i = 0; i < depth / 2; i++)
        w += (size_t)sprintf(s + w, "1}{2}");
    sprintf(s + w, "}");
    double t0 = chord_now();
    reward_result r = score(v, NULL, s, "1", false);
    assert_true(r.reason == REWARD_REASON_WRONG || r.reason == REWARD_REASON_ERROR);
    free(s);
    /* 2 MB of "\boxed{1}" repeated */
    size_t reps = 200000;
    s = malloc(reps * 10 + 1);
    assert_non_null(s);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + 10 * i, "\\boxed{1} ", 10);
    s[reps * 10] = '\0';
    r = score(v, NULL, s, "1", false);
    assert_int_equal(r.reason, REWARD_REASON_CORRECT);
    free(s);
    /* 64 sets of 64 numbers, each pair of sets differing only in its last element: the
     * unordered comparison runs out of its comparison budget -> error, not a guess */
    size_t bufsz = 64 * 64 * 4 + 64 * 8 + 64;
    char *gold = malloc(bufsz), *pred = malloc(bufsz + 16);
    assert_non_null(gold);
    assert_non_null(pred);
    size_t gw = 0, pw = (size_t)sprintf(pred, "\\boxed{");
    for (int set = 0; set < 64; set++) {
        gw += (size_t)sprintf(gold + gw, "%s\\{", set ? "," : "");
        pw += (size_t)sprintf(pred + pw, "%s\\{", set ? "," : "");
        for (int i = 0; i < 63; i++) {
            gw += (size_t)sprintf(gold + gw, "%d,", i);
            pw += (size_t)sprintf(pred + pw, "%d,", 62 - i);
        }
        gw += (size_t)sprintf(gold + gw, "63\\}");
        pw += (size_t)sprintf(pred + pw, "64\\}");
    }
    sprintf(pred + pw, "}");
    assert_true(gw < MATHNORM_MAX_LEN);
    r = score(v, NULL, pred, gold, false);
    assert_int_equal(r.reason, REWARD_REASON_ERROR);
    free(gold);
    free(pred);
    assert_true(chord_now() - t0 < 2.0);
    reward_verifier_free(v);
}

/* ---- exact, contains ---- */

static void test_exact(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"exact\"}");
    assert_int_equal(score(v, NULL, "  Paris\n", "Paris", false).reason, REWARD_REASON_CORRECT);
    assert_int_equal(score(v, NULL, "paris", "Paris", false).reason, REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "Paris!", "Paris", false).reason, REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "  ", "Paris", false).reason, REWARD_REASON_NO_ANSWER);
    assert_int_equal(score(v, NULL, "Paris", NULL, false).reason, REWARD_REASON_ERROR);
    reward_verifier_free(v);
    v = make("{\"type\": \"exact\", \"ignore_case\": true, \"length_penalty\": -0.5}");
    assert_int_equal(score(v, NULL, "paris", "Paris", false).reason, REWARD_REASON_CORRECT);
    reward_result r = score(v, NULL, "", "Paris", true);
    assert_int_equal(r.reason, REWARD_REASON_NO_ANSWER);
    assert_float_equal(r.reward, -0.5, 0);
    reward_verifier_free(v);
}

static void test_contains(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"contains\"}");
    reward_result r = score(v, NULL, "I think it is Paris, France.", " Paris ", false);
    assert_int_equal(r.reason, REWARD_REASON_CORRECT);
    assert_float_equal(r.reward, 1.0, 0);
    assert_int_equal(score(v, NULL, "London", "Paris", false).reason, REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "PARIS", "Paris", false).reason, REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "", "Paris", false).reason, REWARD_REASON_NO_ANSWER);
    assert_int_equal(score(v, NULL, "Paris", "", false).reason, REWARD_REASON_ERROR);
    reward_verifier_free(v);
    v = make("{\"type\": \"contains\", \"ignore_case\": true}");
    assert_int_equal(score(v, NULL, "PARIS", "Paris", false).reason, REWARD_REASON_CORRECT);
    reward_verifier_free(v);
}

/* ---- regex ---- */

static void test_regex(void **state) {
    (void)state;
    /* no capture group, no {answer}: a match is correct */
    reward_verifier *v = make("{\"type\": \"regex\", \"pattern\": \"^Answer: [0-9]+$\"}");
    assert_int_equal(score(v, NULL, "Answer: 42", NULL, false).reason, REWARD_REASON_CORRECT);
    assert_int_equal(score(v, NULL, "Answer: x", NULL, false).reason, REWARD_REASON_WRONG);
    reward_verifier_free(v);
    /* a capture group: the captured text is the answer */
    v = make(
        "{\"type\": \"regex\", \"pattern\": \"Answer:\\\\s*(\\\\S+)\", \"length_penalty\": -1}");
    assert_int_equal(score(v, NULL, "... Answer: 42", "42", false).reason, REWARD_REASON_CORRECT);
    assert_int_equal(score(v, NULL, "... Answer: 41", "42", false).reason, REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "no idea", "42", false).reason, REWARD_REASON_NO_ANSWER);
    reward_result r = score(v, NULL, "no idea and cut", "42", true);
    assert_int_equal(r.reason, REWARD_REASON_NO_ANSWER);
    assert_float_equal(r.reward, -1.0, 0);
    assert_int_equal(score(v, NULL, "Answer: 42", NULL, false).reason, REWARD_REASON_ERROR);
    reward_verifier_free(v);
    /* {answer} is substituted literally: regex metacharacters in the answer are escaped */
    v = make("{\"type\": \"regex\", \"pattern\": \"(?i)the answer is \\\\s*{answer}(?!\\\\w)\"}");
    assert_int_equal(score(v, NULL, "The answer is 1+1.5", "1+1.5", false).reason,
                     REWARD_REASON_CORRECT);
    assert_int_equal(score(v, NULL, "The answer is 11x5", "1+1.5", false).reason,
                     REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "the answer is (a|b)", "(a|b)", false).reason,
                     REWARD_REASON_CORRECT);
    assert_int_equal(score(v, NULL, "the answer is a", "(a|b)", false).reason, REWARD_REASON_WRONG);
    assert_int_equal(score(v, NULL, "the answer is \\E]", "\\E]", false).reason,
                     REWARD_REASON_CORRECT);
    reward_verifier_free(v);
    /* invalid UTF-8 in a response is matched, not an error */
    v = make("{\"type\": \"regex\", \"pattern\": \"ok\"}");
    assert_int_equal(score(v, NULL, "\xff\xfe ok", NULL, false).reason, REWARD_REASON_CORRECT);
    reward_verifier_free(v);
}

/* A catastrophic-backtracking pattern hits the match budget: `timeout`, quickly. */
static void test_regex_catastrophic(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"regex\", \"pattern\": \"^(?:a|a?)+$\"}");
    char text[64];
    memset(text, 'a', 40);
    strcpy(text + 40, "!");
    double t0 = chord_now();
    reward_result r = score(v, NULL, text, NULL, false);
    double dt = chord_now() - t0;
    assert_int_equal(r.reason, REWARD_REASON_TIMEOUT);
    assert_float_equal(r.reward, 0.0, 0);
    assert_true(dt < 2.0);
    reward_verifier_free(v);
    /* a smaller budget from the config */
    v = make("{\"type\": \"regex\", \"pattern\": \"^(?:\\\\w+\\\\s?)*$\", \"match_limit\": 1000}");
    r = score(v, NULL, "an input that almost matches but ends with a bang!", NULL, false);
    assert_int_equal(r.reason, REWARD_REASON_TIMEOUT);
    reward_verifier_free(v);
}

/* ---- batch ---- */

static void test_batch_local(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"math_boxed\"}");
    reward_sample s[4] = {
        {NULL, "\\boxed{2}", "2", false},
        {NULL, "\\boxed{3}", "2", false},
        {NULL, "none", "2", false},
        {NULL, "\\boxed{2}", NULL, false},
    };
    reward_result r[4];
    chord_err err = {0};
    assert_int_equal(reward_score_batch(v, s, 4, r, &err), 0);
    assert_int_equal(r[0].reason, REWARD_REASON_CORRECT);
    assert_int_equal(r[1].reason, REWARD_REASON_WRONG);
    assert_int_equal(r[2].reason, REWARD_REASON_NO_ANSWER);
    assert_int_equal(r[3].reason, REWARD_REASON_ERROR);
    assert_int_equal(reward_score_batch(v, s, 0, NULL, &err), 0);
    assert_int_equal(reward_score_batch(NULL, s, 1, r, &err), -1);
    reward_verifier_free(v);
}

/* ---- format, sum ---- */

static void test_format(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"format\"}"); /* boxed by default */
    reward_result r = score(v, NULL, "so \\boxed{42}", NULL, false);
    assert_int_equal(r.reason, REWARD_REASON_CORRECT);
    assert_true(r.reward == 1.0 && r.correct);
    r = score(v, NULL, "so 42", NULL, false);
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    assert_true(r.reward == 0.0 && !r.correct);
    r = score(v, NULL, "\\boxed{ }", NULL, false); /* empty box */
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    r = score(v, NULL, "\\boxed{4", NULL, true); /* cut off inside the box */
    assert_int_equal(r.reason, REWARD_REASON_FORMAT);
    reward_verifier_free(v);
    v = make("{\"type\": \"format\", \"boxed\": false, \"think\": true}");
    assert_int_equal(score(v, NULL, "<think>hm</think> 4", NULL, false).reason,
                     REWARD_REASON_CORRECT);
    assert_int_equal(score(v, NULL, "hm</think> 4", NULL, false).reason, REWARD_REASON_FORMAT);
    assert_int_equal(score(v, "Q: <think>", "hm</think> 4", NULL, false).reason,
                     REWARD_REASON_CORRECT);
    reward_verifier_free(v);
    v = make("{\"type\": \"format\", \"think\": true}");
    assert_int_equal(score(v, NULL, "<think>a</think> 4", NULL, false).reason,
                     REWARD_REASON_FORMAT);
    assert_int_equal(score(v, NULL, "<think>a</think> \\boxed{4}", NULL, false).reason,
                     REWARD_REASON_CORRECT);
    reward_verifier_free(v);
}

static void test_sum(void **state) {
    (void)state;
    reward_verifier *v = make("{\"type\": \"sum\", \"terms\": [{\"type\": \"math_boxed\"}, "
                              "{\"type\": \"format\", \"weight\": 0.1}, "
                              "{\"type\": \"contains\", \"weight\": -0.5, "
                              "\"length_penalty\": -2}]}");
    assert_int_equal(reward_verifier_type(v), REWARD_SUM);
    reward_sample s[5] = {
        {NULL, "\\boxed{2}", "2", false},  /* 1 + 0.1 - 0.5 */
        {NULL, "\\boxed{3}", "2", false},  /* 0 + 0.1 + 0 */
        {NULL, "about 7", "7", false},     /* no_answer 0 + 0 - 0.5 */
        {NULL, "", "7", true},             /* 0 + 0 + (-0.5)(-2) */
        {NULL, "\\boxed{2}", NULL, false}, /* no answer: math_boxed says error */
    };
    reward_result r[5];
    chord_err err = {0};
    assert_int_equal(reward_score_batch(v, s, 5, r, &err), 0);
    assert_true(fabs(r[0].reward - 0.6) < 1e-12);
    assert_int_equal(r[0].reason, REWARD_REASON_CORRECT);
    assert_true(r[0].correct);
    assert_non_null(strstr(r[0].detail, "terms[0]: boxed 2"));
    assert_true(fabs(r[1].reward - 0.1) < 1e-12);
    assert_int_equal(r[1].reason, REWARD_REASON_WRONG);
    assert_false(r[1].correct);
    assert_true(fabs(r[2].reward + 0.5) < 1e-12);
    assert_int_equal(r[2].reason, REWARD_REASON_NO_ANSWER);
    assert_true(fabs(r[3].reward - 1.0) < 1e-12);
    assert_true(r[4].reward == 0.0);
    assert_int_equal(r[4].reason, REWARD_REASON_ERROR);
    assert_non_null(strstr(r[4].detail, "terms[0] (math_boxed)"));
    /* the one-sample call agrees */
    reward_result one = score(v, NULL, "\\boxed{2}", "2", false);
    assert_true(fabs(one.reward - 0.6) < 1e-12);
    assert_int_equal(reward_score_batch(v, s, 0, NULL, &err), 0);
    reward_verifier_free(v);
    /* a format term alone needs no answer; weights default to 1 */
    v = make("{\"type\": \"sum\", \"terms\": [{\"type\": \"format\"}, "
             "{\"type\": \"format\", \"boxed\": false, \"think\": true}]}");
    assert_true(score(v, NULL, "<think>x</think>\\boxed{1}", NULL, false).reward == 2.0);
    assert_true(score(v, NULL, "\\boxed{1}", NULL, false).reward == 1.0);
    reward_verifier_free(v);
}

static void test_names(void **state) {
    (void)state;
    const char *names[] = {"correct", "wrong", "no_answer", "format", "error", "timeout"};
    for (int i = 0; i < REWARD_REASON_COUNT; i++) {
        assert_string_equal(reward_reason_name((reward_reason)i), names[i]);
        reward_reason back;
        assert_int_equal(reward_reason_parse(names[i], &back), 0);
        assert_int_equal(back, i);
    }
    reward_reason back;
    assert_int_equal(reward_reason_parse("maybe", &back), -1);
    assert_string_equal(reward_type_name(REWARD_WEBHOOK), "webhook");
    reward_verifier *v = make("{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/x\"}");
    assert_int_equal(reward_verifier_type(v), REWARD_WEBHOOK);
    reward_verifier_free(v);
}

/* ---- one verifier, several threads ---- */

typedef struct thread_arg {
    const reward_verifier *math, *regex;
    int bad;
} thread_arg;

static void *score_many(void *p) {
    thread_arg *a = p;
    for (int i = 0; i < 300; i++) {
        char completion[64], answer[32];
        snprintf(completion, sizeof completion, "so \\boxed{\\frac{%d}{2}}", 2 * i);
        snprintf(answer, sizeof answer, "%d", i);
        reward_result r;
        reward_score(a->math, NULL, completion, answer, false, &r);
        if (r.reason != REWARD_REASON_CORRECT) a->bad++;
        snprintf(completion, sizeof completion, "Answer: %d", i + (i % 2));
        reward_score(a->regex, NULL, completion, answer, false, &r);
        if (r.reason != (i % 2 ? REWARD_REASON_WRONG : REWARD_REASON_CORRECT)) a->bad++;
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    reward_verifier *math = make("{\"type\": \"math_boxed\"}");
    reward_verifier *regex = make("{\"type\": \"regex\", \"pattern\": \"Answer: (\\\\d+)\"}");
    pthread_t t[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){math, regex, 0};
        assert_int_equal(pthread_create(&t[i], NULL, score_many, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(args[i].bad, 0);
    }
    reward_verifier_free(math);
    reward_verifier_free(regex);
}

/* ---- malformed configurations: each error names the field ---- */

typedef struct bad_config {
    const char *json, *names;
} bad_config;

static const bad_config bad_configs[] = {
    {"[]", "reward"},
    {"{}", "reward.type"},
    {"{\"type\": 3}", "reward.type"},
    {"{\"type\": \"maths\"}", "reward.type"},
    {"{\"type\": \"math_boxed\", \"thinkformat\": true}", "reward.thinkformat"},
    {"{\"type\": \"math_boxed\", \"think_format\": 1}", "reward.think_format"},
    {"{\"type\": \"math_boxed\", \"length_penalty\": \"-1\"}", "reward.length_penalty"},
    {"{\"type\": \"math_boxed\", \"format_penalty\": -0.1}", "reward.format_penalty"},
    {"{\"type\": \"math_boxed\", \"pattern\": \"x\"}", "reward.pattern"},
    {"{\"type\": \"exact\", \"ignore_case\": \"yes\"}", "reward.ignore_case"},
    {"{\"type\": \"contains\", \"think_format\": true}", "reward.think_format"},
    {"{\"type\": \"regex\"}", "reward.pattern"},
    {"{\"type\": \"regex\", \"pattern\": \"\"}", "reward.pattern"},
    {"{\"type\": \"regex\", \"pattern\": \"(unclosed\"}", "reward.pattern"},
    {"{\"type\": \"regex\", \"pattern\": \"a{answer}(\"}", "reward.pattern"},
    {"{\"type\": \"regex\", \"pattern\": \"a\", \"match_limit\": 0}", "reward.match_limit"},
    {"{\"type\": \"regex\", \"pattern\": \"a\", \"match_limit\": 1.5}", "reward.match_limit"},
    {"{\"type\": \"webhook\"}", "reward.url"},
    {"{\"type\": \"webhook\", \"url\": \"ftp://x\"}", "reward.url"},
    {"{\"type\": \"webhook\", \"url\": \"file:///etc/passwd\"}", "reward.url"},
    {"{\"type\": \"webhook\", \"url\": \"http://a b\"}", "reward.url"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"timeout_ms\": 0}", "reward.timeout_ms"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"timeout_ms\": \"2s\"}", "reward.timeout_ms"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"retries\": -1}", "reward.retries"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"retries\": 11}", "reward.retries"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"max_concurrency\": 0}",
     "reward.max_concurrency"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"headers\": []}", "reward.headers"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"headers\": {\"A\": 1}}", "reward.headers.A"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"headers\": {\"A\": \"x\\ny\"}}",
     "reward.headers.A"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"headers\": {\"A B\": \"x\"}}",
     "reward.headers.A B"},
    {"{\"type\": \"webhook\", \"url\": \"http://x\", \"timeoutms\": 5}", "reward.timeoutms"},
    {"{\"type\": \"format\", \"boxed\": false}", "reward: a format verifier"},
    {"{\"type\": \"format\", \"boxed\": 1}", "reward.boxed"},
    {"{\"type\": \"format\", \"length_penalty\": -1}", "reward.length_penalty"},
    {"{\"type\": \"math_boxed\", \"weight\": 2}", "reward.weight"},
    {"{\"type\": \"sum\"}", "reward.terms: missing"},
    {"{\"type\": \"sum\", \"terms\": []}", "reward.terms: must hold 1 to 16"},
    {"{\"type\": \"sum\", \"terms\": {}}", "reward.terms"},
    {"{\"type\": \"sum\", \"terms\": [5]}", "reward.terms[0]: must be an object"},
    {"{\"type\": \"sum\", \"terms\": [{\"type\": \"exact\"}, {\"type\": \"regex\"}]}",
     "reward.terms[1].pattern: required"},
    {"{\"type\": \"sum\", \"terms\": [{\"type\": \"exact\", \"weight\": \"x\"}]}",
     "reward.terms[0].weight"},
    {"{\"type\": \"sum\", \"terms\": [{\"type\": \"exact\", \"wieght\": 1}]}",
     "reward.terms[0].wieght"},
    {"{\"type\": \"sum\", \"terms\": [{\"type\": \"sum\", \"terms\": []}]}",
     "reward.terms[0].type: a sum cannot"},
    {"{\"type\": \"sum\", \"terms\": [{\"type\": \"exact\"}], \"length_penalty\": 1}",
     "reward.length_penalty"},
};

static void expect_sanitized(const char *in, size_t n, const char *want) {
    char *got = reward_utf8_sanitize(in, n);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

/* Text a verifier or the webhook sees is valid UTF-8 by Python's errors="replace" rule (one
 * U+FFFD per maximal invalid subpart), with each NUL replaced too: it is a C string. */
static void test_utf8_sanitize(void **state) {
    (void)state;
    expect_sanitized("", 0, "");
    expect_sanitized("plain", 5, "plain");
    expect_sanitized("caf\xC3\xA9", 5, "caf\xC3\xA9");
    expect_sanitized("a\xE4\xBD\x62", 4, "a\xEF\xBF\xBD\x62");   /* a cut character: one */
    expect_sanitized("\xC0\xAF", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"); /* overlong: two */
    expect_sanitized("\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"); /* surrogate */
    expect_sanitized("x\0y", 3, "x\xEF\xBF\xBDy");
}

static void test_bad_configs(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        json_error_t jerr;
        json_t *cfg = json_loads(bad_configs[i].json, 0, &jerr);
        assert_non_null(cfg);
        chord_err err = {0};
        reward_verifier *v = (reward_verifier *)(uintptr_t)1;
        int rc = reward_verifier_new(cfg, &v, &err);
        json_decref(cfg);
        if (rc != -1 || v != NULL || !strstr(err.msg, bad_configs[i].names) ||
            err.code != CHORD_E_INVALID) {
            print_error("config %s: rc %d, message \"%s\" should name %s\n", bad_configs[i].json,
                        rc, err.msg, bad_configs[i].names);
            fail();
        }
    }
    /* NULL config */
    chord_err err = {0};
    reward_verifier *v;
    assert_int_equal(reward_verifier_new(NULL, &v, &err), -1);
}

static void test_good_configs(void **state) {
    (void)state;
    const char *good[] = {
        "{\"type\": \"math_boxed\", \"think_format\": false, \"length_penalty\": null}",
        "{\"type\": \"math_boxed\", \"think_format\": true, \"length_penalty\": -1, "
        "\"format_penalty\": 0.2}",
        "{\"type\": \"exact\"}",
        "{\"type\": \"contains\", \"ignore_case\": true}",
        "{\"type\": \"regex\", \"pattern\": \"\\\\b{answer}\\\\b\", \"match_limit\": 5000, "
        "\"depth_limit\": 100}",
        "{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:8000/score\", \"timeout_ms\": 2000, "
        "\"retries\": 2, \"max_concurrency\": 4, \"headers\": {\"Authorization\": \"Bearer x\"}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        reward_verifier_free(make(good[i]));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_math_table),
        cmocka_unit_test(test_math_last_boxed),
        cmocka_unit_test(test_math_think_format),
        cmocka_unit_test(test_math_length_penalty),
        cmocka_unit_test(test_math_errors),
        cmocka_unit_test(test_math_bounded),
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_contains),
        cmocka_unit_test(test_regex),
        cmocka_unit_test(test_regex_catastrophic),
        cmocka_unit_test(test_batch_local),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_sum),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_utf8_sanitize),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_good_configs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
