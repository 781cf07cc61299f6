/* test_tinker_loss.c — the Tinker losses (server/tinker/tinker_loss.h) on cases small enough to
 * work out by hand: parsing a loss and its config, checking a datum's inputs (each error names
 * the datum and the input), the per-position terms and gradients, and the metrics. The random
 * comparison against PyTorch autograd is tests/reference/tinker_loss_reference.py. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "server/tinker/tinker_loss.h"

#define assert_near(got, want) near_check((got), (want), #got, __LINE__)
static void near_check(double got, double want, const char *expr, int line) {
    if (!(fabs(got - want) <= 1e-6 * fmax(1.0, fabs(want))))
        fail_msg("line %d: %s = %.9g, want %.9g", line, expr, got, want);
}

#define assert_has(msg, part)                                                                      \
    do {                                                                                           \
        if (!strstr((msg), (part))) fail_msg("\"%s\" does not contain \"%s\"", (msg), (part));     \
    } while (0)

/* ---- a datum built from stack arrays (nothing to free) ---- */

typedef struct test_datum {
    tk_datum d;
    char *names[6];
    tk_tensor inputs[6];
    int32_t tokens[16];
    int64_t targets[16];
} test_datum;

static void datum_init(test_datum *t, size_t n) {
    memset(t, 0, sizeof *t);
    t->d.tokens = t->tokens;
    t->d.n_tokens = n;
    t->d.input_names = t->names;
    t->d.inputs = t->inputs;
    for (size_t i = 0; i < n; i++)
        t->targets[i] = (int64_t)(i % 7);
    t->names[0] = "target_tokens";
    t->inputs[0] = (tk_tensor){TK_I64, 1, {(int64_t)n, 0}, n, NULL, t->targets};
    t->d.n_inputs = 1;
}

static void datum_add(test_datum *t, const char *name, float *values, size_t n) {
    t->names[t->d.n_inputs] = (char *)name;
    t->inputs[t->d.n_inputs] = (tk_tensor){TK_F32, 1, {(int64_t)n, 0}, n, values, NULL};
    t->d.n_inputs++;
}

static tk_loss_config parse_ok(const char *name, const tk_config_value *cv, int n) {
    tk_loss_config c;
    chord_err err = {0};
    if (tk_loss_parse(name, cv, n, &c, &err)) fail_msg("%s: %s", name, err.msg);
    return c;
}

static void parse_fails(const char *name, const tk_config_value *cv, int n, const char *part) {
    tk_loss_config c;
    chord_err err = {0};
    assert_int_equal(tk_loss_parse(name, cv, n, &c, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    assert_has(err.msg, part);
}

static void test_parse(void **state) {
    (void)state;
    tk_loss_config c = parse_ok("cross_entropy", NULL, 0);
    assert_int_equal(c.kind, TK_LOSS_CROSS_ENTROPY);
    c = parse_ok("importance_sampling", NULL, 0);
    assert_int_equal(c.kind, TK_LOSS_IMPORTANCE_SAMPLING);
    c = parse_ok("ppo", NULL, 0);
    assert_int_equal(c.kind, TK_LOSS_PPO);
    assert_near(c.clip_low, 0.8);
    assert_near(c.clip_high, 1.2);
    tk_config_value clip[] = {{"clip_low_threshold", 0.9, NULL},
                              {"clip_high_threshold", 1.1, NULL}};
    c = parse_ok("cispo", clip, 2);
    assert_int_equal(c.kind, TK_LOSS_CISPO);
    assert_near(c.clip_low, 0.9);
    assert_near(c.clip_high, 1.1);
    tk_config_value chord[] = {
        {"mu", 0.3, NULL}, {"phi", 1, NULL}, {"clip_high_threshold", 1.3, NULL}};
    c = parse_ok("chord", chord, 3);
    assert_int_equal(c.kind, TK_LOSS_CHORD);
    assert_near(c.mu, 0.3);
    assert_int_equal(c.phi, 1);
    assert_near(c.clip_low, 0.8);
    assert_near(c.clip_high, 1.3);

    tk_loss_config out;
    chord_err err = {0};
    assert_int_equal(tk_loss_parse("dro", NULL, 0, &out, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    assert_string_equal(err.msg, "loss_fn: \"dro\" is not supported; chord runs cross_entropy, "
                                 "importance_sampling, ppo, cispo, chord");
    parse_fails("gspo", NULL, 0, "\"gspo\" is not supported");
    parse_fails("stable_reinforce", NULL, 0, "\"stable_reinforce\" is not supported");
    parse_fails("custom", NULL, 0, "\"custom\" is not supported");

    tk_config_value beta[] = {{"beta", 0.1, NULL}};
    parse_fails("ppo", beta, 1, "loss_fn_config.beta");
    parse_fails("cross_entropy", clip, 1, "loss_fn_config.clip_low_threshold");
    parse_fails("importance_sampling", clip, 1, "loss_fn_config.clip_low_threshold");
    tk_config_value mu_ppo[] = {{"mu", 0.5, NULL}};
    parse_fails("ppo", mu_ppo, 1, "loss_fn_config.mu");
    tk_config_value text[] = {{"clip_low_threshold", 0, "low"}};
    parse_fails("ppo", text, 1, "loss_fn_config.clip_low_threshold: a number is needed");
    parse_fails("chord", NULL, 0, "loss_fn_config.mu: chord needs mu");
    tk_config_value mu_big[] = {{"mu", 1.5, NULL}};
    parse_fails("chord", mu_big, 1, "loss_fn_config.mu: 1.5 is not in [0, 1]");
    tk_config_value phi2[] = {{"mu", 0.5, NULL}, {"phi", 2, NULL}};
    parse_fails("chord", phi2, 2, "loss_fn_config.phi");
    tk_config_value low_eps[] = {{"clip_low_threshold", 0.2, NULL},
                                 {"clip_high_threshold", 0.2, NULL}};
    parse_fails("ppo", low_eps, 2, "loss_fn_config.clip_high_threshold");
    tk_config_value low_big[] = {{"clip_low_threshold", 1.1, NULL}};
    parse_fails("cispo", low_big, 1, "loss_fn_config.clip_low_threshold");
    tk_config_value low_zero[] = {{"clip_low_threshold", 0.0, NULL}};
    parse_fails("ppo", low_zero, 1, "loss_fn_config.clip_low_threshold");
    tk_config_value nan_mu[] = {{"mu", NAN, NULL}};
    parse_fails("chord", nan_mu, 1, "loss_fn_config.mu");
    tk_config_value twice[] = {{"mu", 0.1, NULL}, {"mu", 0.2, NULL}};
    parse_fails("chord", twice, 2, "loss_fn_config.mu: given twice");
    tk_config_value bounds_one[] = {{"clip_low_threshold", 1.0, NULL},
                                    {"clip_high_threshold", 1.0, NULL}};
    c = parse_ok("ppo", bounds_one, 2); /* lo = hi = 1: allowed, every ratio clipped */
    assert_near(c.clip_low, 1.0);
}

static void check_fails(const tk_loss_config *c, const test_datum *t, size_t index,
                        const char *part) {
    chord_err err = {0};
    assert_int_equal(tk_loss_check(c, &t->d, index, 10, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    assert_has(err.msg, part);
}

static void check_ok(const tk_loss_config *c, const test_datum *t) {
    chord_err err = {0};
    if (tk_loss_check(c, &t->d, 0, 10, &err)) fail_msg("%s", err.msg);
}

static void test_check(void **state) {
    (void)state;
    tk_loss_config ce = parse_ok("cross_entropy", NULL, 0);
    tk_loss_config is = parse_ok("importance_sampling", NULL, 0);
    tk_config_value mu[] = {{"mu", 0.5, NULL}};
    tk_loss_config chord = parse_ok("chord", mu, 1);
    float w8[8] = {1, 1, 1, 1, 1, 1, 1, 1}, a7[7] = {0}, q8[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    float a8[8] = {0, 0, 1, 1, 1, 1, 1, 1};
    test_datum t;

    datum_init(&t, 8); /* cross_entropy: weights may be absent (every weight 1) */
    check_ok(&ce, &t);
    datum_add(&t, "weights", w8, 8);
    check_ok(&ce, &t);
    datum_add(&t, "mask", w8, 8); /* inputs no loss reads are ignored */
    check_ok(&ce, &t);

    datum_init(&t, 8);
    datum_add(&t, "logprobs", q8, 8);
    datum_add(&t, "advantages", a7, 7);
    check_fails(&is, &t, 3, "data[3].loss_fn_inputs.advantages: 7 values for 8 positions");
    datum_init(&t, 8);
    datum_add(&t, "advantages", a8, 8);
    check_fails(&is, &t, 2, "data[2].loss_fn_inputs.logprobs: missing");
    datum_init(&t, 8);
    datum_add(&t, "logprobs", q8, 8);
    check_fails(&is, &t, 2, "data[2].loss_fn_inputs.advantages: missing");
    datum_add(&t, "advantages", a8, 8);
    check_ok(&is, &t);
    check_ok(&chord, &t);

    /* chord: a datum with advantages is on-policy and needs logprobs; one without is expert */
    datum_init(&t, 8);
    check_ok(&chord, &t);
    datum_add(&t, "advantages", a8, 8);
    check_fails(&chord, &t, 1, "data[1].loss_fn_inputs.logprobs: missing");

    /* non-finite values, wrong dtype, wrong rank */
    float bad[8] = {0, 0, 0, NAN, 0, 0, 0, 0};
    datum_init(&t, 8);
    datum_add(&t, "weights", bad, 8);
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.weights[3]");
    bad[3] = INFINITY;
    check_fails(&chord, &t, 5, "data[5].loss_fn_inputs.weights[3]");
    datum_init(&t, 8);
    datum_add(&t, "weights", w8, 8);
    t.inputs[1].dtype = TK_I64;
    t.inputs[1].f32 = NULL;
    t.inputs[1].i64 = t.targets;
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.weights: must be float32");
    datum_init(&t, 8);
    datum_add(&t, "weights", w8, 8);
    t.inputs[1].ndim = 2;
    t.inputs[1].shape[0] = 4;
    t.inputs[1].shape[1] = 2;
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.weights: must be 1-D");

    /* target_tokens */
    datum_init(&t, 8);
    t.d.n_inputs = 0;
    check_fails(&ce, &t, 4, "data[4].loss_fn_inputs.target_tokens: missing");
    datum_init(&t, 8);
    t.targets[5] = 10;
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.target_tokens[5]: token id 10 is outside");
    t.targets[5] = -1;
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.target_tokens[5]: token id -1 is outside");
    datum_init(&t, 8);
    t.inputs[0].n = 7;
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.target_tokens: 7 values for 8 positions");
    datum_init(&t, 4);
    t.inputs[0] = (tk_tensor){TK_I64, 2, {4, 2}, 8, NULL, t.targets};
    check_fails(&ce, &t, 0, "multi-target");
    check_fails(&ce, &t, 0, "not supported");
    datum_init(&t, 8);
    t.inputs[0].dtype = TK_F32;
    t.inputs[0].i64 = NULL;
    t.inputs[0].f32 = w8;
    check_fails(&ce, &t, 0, "data[0].loss_fn_inputs.target_tokens: must be 1-D int64");
    datum_init(&t, 8);
    datum_add(&t, "logprobs", q8, 8);
    datum_add(&t, "advantages", a8, 8);
    datum_add(&t, "clip_low_threshold", w8, 8);
    check_fails(&is, &t, 0, "data[0].loss_fn_inputs.clip_low_threshold: per-position");
    datum_init(&t, 0);
    check_fails(&ce, &t, 6, "data[6].model_input");
}

/* ---- values ---- */

static void test_cross_entropy(void **state) {
    (void)state;
    tk_loss_config c = parse_ok("cross_entropy", NULL, 0);
    test_datum t;
    datum_init(&t, 4);
    float w[4] = {0.0f, 1.0f, 0.5f, -2.0f}, lp[4] = {-1.0f, -2.0f, -0.5f, -0.25f};
    datum_add(&t, "weights", w, 4);
    float el[4], g[4];
    tk_loss_stats st = {0};
    tk_loss_datum(&c, &t.d, lp, 4, el, g, &st);
    /* ℓ = −w lp, dℓ/dlp = −w; zero weight: nothing */
    assert_near(el[0], 0.0);
    assert_near(el[1], 2.0);
    assert_near(el[2], 0.25);
    assert_near(el[3], -0.5);
    assert_near(g[0], 0.0);
    assert_near(g[1], -1.0);
    assert_near(g[2], -0.5);
    assert_near(g[3], 2.0);
    assert_near(st.loss_sum, 1.75);
    /* no weights: every weight 1; forward only (no gradient array) */
    datum_init(&t, 4);
    tk_loss_datum(&c, &t.d, lp, 4, el, NULL, &st);
    assert_near(el[0], 1.0);
    assert_near(st.loss_sum, 1.75 + 3.75);

    tk_fb_output o = {0};
    chord_err err = {0};
    assert_int_equal(tk_loss_metrics(&c, &st, &o, &err), 0);
    assert_int_equal(o.n_metrics, 1);
    assert_string_equal(o.metric_keys[0], "loss:sum");
    assert_near(o.metric_values[0], 5.5);
    tk_fb_output_free(&o);
}

static void test_policy_losses(void **state) {
    (void)state;
    test_datum t;
    datum_init(&t, 5);
    /* ratios 1, 1.5, 0.5, 0.5, and a prompt position (A = 0, q = 0) */
    float l15 = (float)log(1.5), l05 = (float)log(0.5);
    float q[5] = {-1.0f, -1.0f, -1.0f, -1.0f, 0.0f};
    float lp[5] = {-1.0f, -1.0f + l15, -1.0f + l05, -1.0f + l05, -3.0f};
    float a[5] = {2.0f, 1.0f, 1.0f, -1.0f, 0.0f};
    datum_add(&t, "logprobs", q, 5);
    datum_add(&t, "advantages", a, 5);
    float el[5], g[5];

    /* importance_sampling: ℓ = −r A, dℓ/dlp = −r A */
    tk_loss_config c = parse_ok("importance_sampling", NULL, 0);
    tk_loss_stats st = {0};
    tk_loss_datum(&c, &t.d, lp, 5, el, g, &st);
    assert_near(el[0], -2.0);
    assert_near(g[0], -2.0);
    assert_near(el[1], -1.5);
    assert_near(g[1], -1.5);
    assert_near(el[3], 0.5);
    assert_near(g[3], 0.5);
    assert_near(el[4], 0.0);
    assert_near(g[4], 0.0);
    assert_near(st.policy_tokens, 4.0);
    assert_near(st.parity_max, fabs((double)l05)); /* the prompt position (gap 3) does not count */

    /* ppo (0.8, 1.2): −min(rA, clip(r)A) */
    c = parse_ok("ppo", NULL, 0);
    st = (tk_loss_stats){0};
    tk_loss_datum(&c, &t.d, lp, 5, el, g, &st);
    assert_near(el[0], -2.0); /* r = 1 */
    assert_near(g[0], -2.0);
    assert_near(el[1], -1.2); /* r = 1.5, A > 0: clipped, no gradient */
    assert_near(g[1], 0.0);
    assert_near(el[2], -0.5); /* r = 0.5, A > 0: the unclipped branch is smaller */
    assert_near(g[2], -0.5);
    assert_near(el[3], 0.8); /* r = 0.5, A < 0: clipped at 0.8 */
    assert_near(g[3], 0.0);
    assert_near(st.clipfrac_num, 2.0);
    assert_near(st.loss_sum, -2.0 - 1.2 - 0.5 + 0.8);

    /* cispo: −sg(clip(r)) A lp: gradient −clip(r) A everywhere */
    c = parse_ok("cispo", NULL, 0);
    st = (tk_loss_stats){0};
    tk_loss_datum(&c, &t.d, lp, 5, el, g, &st);
    assert_near(el[0], -2.0 * -1.0);
    assert_near(g[0], -2.0);
    assert_near(el[1], -1.2 * lp[1]);
    assert_near(g[1], -1.2);
    assert_near(el[3], 0.8 * lp[3]);
    assert_near(g[3], 0.8);
    assert_near(g[4], 0.0);
    assert_near(st.clipfrac_num, 3.0);

    tk_fb_output o = {0};
    chord_err err = {0};
    assert_int_equal(tk_loss_metrics(&c, &st, &o, &err), 0);
    assert_int_equal(o.n_metrics, 4);
    assert_string_equal(o.metric_keys[0], "loss:sum");
    assert_string_equal(o.metric_keys[1], "parity_max:max");
    assert_string_equal(o.metric_keys[2], "clipfrac:mean");
    assert_near(o.metric_values[2], 0.75);
    assert_string_equal(o.metric_keys[3], "policy_tokens:sum");
    assert_near(o.metric_values[3], 4.0);
    for (int i = 0; i < o.n_metrics; i++)
        assert_ptr_equal(strchr(o.metric_keys[i], ':'), strrchr(o.metric_keys[i], ':'));
    tk_fb_output_free(&o);
}

static void test_chord(void **state) {
    (void)state;
    tk_config_value cfg[] = {{"mu", 0.25, NULL}, {"phi", 1, NULL}};
    tk_loss_config c = parse_ok("chord", cfg, 2);
    /* expert datum: ℓ = μ w (−sg(p(1 − p)) lp); p = 0.5, w = 2: ℓ = 0.125 ln 2, grad −0.125 */
    test_datum e;
    datum_init(&e, 3);
    float w[3] = {2.0f, 0.0f, 1.0f}, lpe[3] = {(float)log(0.5), -1.0f, (float)log(0.9)};
    datum_add(&e, "weights", w, 3);
    float el[3], g[3];
    tk_loss_stats st = {0};
    tk_loss_datum(&c, &e.d, lpe, 3, el, g, &st);
    assert_near(el[0], 0.125 * log(2.0));
    assert_near(g[0], -0.125);
    assert_near(el[1], 0.0);
    assert_near(g[1], 0.0);
    assert_near(el[2], -0.25 * 0.9 * 0.1 * log(0.9));
    assert_near(g[2], -0.25 * 0.09);
    assert_near(st.expert_tokens, 2.0);
    assert_near(st.policy_tokens, 0.0);
    /* φ off: ℓ = μ w (−lp) */
    c.phi = 0;
    tk_loss_datum(&c, &e.d, lpe, 3, el, g, &st);
    assert_near(el[0], 0.5 * log(2.0));
    assert_near(g[0], -0.5);
    c.phi = 1;

    /* on-policy datum: (1 − μ) × the ppo term */
    test_datum p;
    datum_init(&p, 2);
    float q[2] = {-1.0f, -1.0f}, a[2] = {1.0f, 1.0f};
    float lpp[2] = {-1.0f, -1.0f + (float)log(1.5)};
    datum_add(&p, "logprobs", q, 2);
    datum_add(&p, "advantages", a, 2);
    st = (tk_loss_stats){0};
    tk_loss_datum(&c, &p.d, lpp, 2, el, g, &st);
    assert_near(el[0], -0.75);
    assert_near(g[0], -0.75);
    assert_near(el[1], -0.75 * 1.2);
    assert_near(g[1], 0.0);
    assert_near(st.policy_tokens, 2.0);
    assert_near(st.clipfrac_num, 1.0);
    tk_loss_datum(&c, &e.d, lpe, 3, NULL, NULL, &st);

    tk_fb_output o = {0};
    chord_err err = {0};
    assert_int_equal(tk_loss_metrics(&c, &st, &o, &err), 0);
    assert_int_equal(o.n_metrics, 5);
    assert_string_equal(o.metric_keys[4], "expert_tokens:sum");
    assert_near(o.metric_values[4], 2.0);
    assert_near(o.metric_values[0], -0.75 - 0.9 + 0.125 * log(2.0) - 0.25 * 0.09 * log(0.9));
    tk_fb_output_free(&o);

    /* μ = 1: on-policy datums contribute nothing; μ = 0: expert datums nothing */
    c.mu = 1.0;
    tk_loss_datum(&c, &p.d, lpp, 2, el, g, &st);
    assert_near(el[0], 0.0);
    assert_near(g[0], 0.0);
    c.mu = 0.0;
    tk_loss_datum(&c, &e.d, lpe, 3, el, g, &st);
    assert_near(el[0], 0.0);
    assert_near(g[0], 0.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),         cmocka_unit_test(test_check),
        cmocka_unit_test(test_cross_entropy), cmocka_unit_test(test_policy_losses),
        cmocka_unit_test(test_chord),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
