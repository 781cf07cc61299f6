/* test_loss.c — the CHORD loss and GRPO advantages on cases small enough to work out by hand
 * from ALGORITHM.md (the random-input comparison against PyTorch autograd is
 * tests/reference/loss_reference.py), plus the micro-batch bookkeeping and the errors. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "server/train/jobconfig.h"
#include "server/train/loss.h"

#define assert_near(got, want) near_check((got), (want), #got, __LINE__)
static void near_check(double got, double want, const char *expr, int line) {
    /* fp32 outputs: relative 1e-6 */
    if (!(fabs(got - want) <= 1e-6 * fmax(1.0, fabs(want))))
        fail_msg("line %d: %s = %.9g, want %.9g", line, expr, got, want);
}

static chord_loss_params params(double mu, int phi, int64_t n_pol, int64_t n_exp) {
    return (chord_loss_params){.mu = mu,
                               .phi = phi,
                               .clip_low = 0.2,
                               .clip_high = 0.2,
                               .n_policy_tokens = n_pol,
                               .n_expert_tokens = n_exp};
}

/* One on-policy token: returns dL/dlogp with μ = 0 and N = 1, and the metrics. */
static double one_policy_token(chord_loss_params p, float logp, float logp_old, float adv,
                               chord_loss_metrics *m) {
    uint8_t kind = CHORD_TOKEN_POLICY;
    chord_loss_batch b = {1, &kind, &logp, &logp_old, &adv, NULL, NULL, NULL, NULL};
    float g;
    chord_loss_accum acc;
    chord_loss_accum_init(&acc);
    chord_err err = {0};
    if (chord_loss_micro_batch(&p, &b, &g, NULL, &acc, &err)) fail_msg("%s", err.msg);
    if (chord_loss_finish(&p, &acc, m, &err)) fail_msg("%s", err.msg);
    return g;
}

static void test_policy_term(void **state) {
    (void)state;
    chord_loss_params p = params(0.0, 0, 1, 0);
    chord_loss_metrics m;
    /* ratio 1, A = 1: ℓ = −A·r = −1, dℓ/dlogp = −A·r = −1 */
    double g = one_policy_token(p, -1.0f, -1.0f, 1.0f, &m);
    assert_near(m.loss, -1.0);
    assert_near(g, -1.0);
    assert_near(m.pg_clipfrac, 0.0);
    assert_near(m.ppo_kl, 0.0);
    /* ratio 1.5, A = 1: max(−1.5, −1.2) = −1.2, the clipped branch: no gradient */
    float lr = (float)log(1.5);
    g = one_policy_token(p, -1.0f + lr, -1.0f, 1.0f, &m);
    assert_near(m.loss, -1.2);
    assert_near(g, 0.0);
    assert_near(m.pg_clipfrac, 1.0);
    assert_near(m.ppo_kl, -lr);
    /* ratio 1.5, A = −1: max(1.5, 1.2) = 1.5, unclipped: dℓ/dlogp = −A·r = 1.5 */
    g = one_policy_token(p, -1.0f + lr, -1.0f, -1.0f, &m);
    assert_near(m.loss, 1.5);
    assert_near(g, 1.5);
    assert_near(m.pg_clipfrac, 0.0);
    /* ... with dual clip c = 1.4: min(1.5, 1.4) = 1.4, constant */
    p.dual_clip = 1.4;
    g = one_policy_token(p, -1.0f + lr, -1.0f, -1.0f, &m);
    assert_near(m.loss, 1.4);
    assert_near(g, 0.0);
    assert_near(m.pg_clipfrac_lower, 1.0);
    /* dual clip leaves A > 0 alone */
    g = one_policy_token(p, -1.0f, -1.0f, 2.0f, &m);
    assert_near(m.loss, -2.0);
    assert_near(g, -2.0);
    /* ratio 0.5, A = 1: max(−0.5, −0.8) = −0.5, unclipped: −0.5 */
    p.dual_clip = 0;
    g = one_policy_token(p, -1.0f + (float)log(0.5), -1.0f, 1.0f, &m);
    assert_near(m.loss, -0.5);
    assert_near(g, -0.5);
    /* log-ratio 30 is clamped to 20: no gradient through the clamp, ratio e^20, A = −1 */
    g = one_policy_token(p, 0.0f, -30.0f, -1.0f, &m);
    assert_near(m.loss, exp(20.0));
    assert_near(g, 0.0);
    /* μ = 1 removes the policy term */
    p.mu = 1.0;
    g = one_policy_token(p, -1.0f, -1.0f, 1.0f, &m);
    assert_near(m.loss, 0.0);
    assert_near(g, 0.0);
    assert_near(m.pg_loss, -1.0); /* still logged */
}

static void test_sft_term(void **state) {
    (void)state;
    uint8_t kind[2] = {CHORD_TOKEN_EXPERT, CHORD_TOKEN_EXPERT};
    float logp[2] = {(float)log(0.5), (float)log(0.9)};
    float g[2];
    chord_loss_batch b = {2, kind, logp, NULL, NULL, NULL, NULL, NULL, NULL};
    chord_err err = {0};
    for (int phi = 0; phi <= 1; phi++) {
        chord_loss_params p = params(1.0, phi, 0, 2);
        chord_loss_accum acc;
        chord_loss_metrics m;
        chord_loss_accum_init(&acc);
        assert_int_equal(chord_loss_micro_batch(&p, &b, g, NULL, &acc, &err), 0);
        assert_int_equal(chord_loss_finish(&p, &acc, &m, &err), 0);
        double w0 = phi ? 0.5 * 0.5 : 1.0, w1 = phi ? 0.9 * 0.1 : 1.0;
        /* token mean over the 2 expert tokens (divided by the count, not Σφ) */
        double want = (-w0 * log(0.5) - w1 * log(0.9)) / 2;
        assert_near(m.loss, want);
        assert_near(m.sft_loss, want);
        assert_near(m.sft_nll, (-log(0.5) - log(0.9)) / 2);
        assert_near(m.phi_mean, (0.25 + 0.09) / 2);
        assert_near(g[0], -w0 / 2); /* sg(φ): −φ ∇log p */
        assert_near(g[1], -w1 / 2);
        assert_int_equal(m.n_expert_tokens, 2);
    }
}

/* A step of 3 on-policy and 2 expert tokens (plus ignored ones) in two micro-batches: each
 * stream is averaged on its own and the sum is mixed by μ. */
static void test_mix_and_micro_batches(void **state) {
    (void)state;
    uint8_t kind[7] = {0, 1, 1, 2, 0, 1, 2};
    float logp[7] = {-9.0f, -1.0f, -2.0f, (float)log(0.5), 5.0f, -0.5f, (float)log(0.25)};
    float old[7] = {0, -1.0f, -2.0f, 0, 0, -0.5f, 0};
    float adv[7] = {0, 1.0f, -2.0f, 0, 0, 0.5f, 0};
    float ent[7] = {0, 1.0f, 2.0f, 9.0f, 9.0f, 3.0f, 9.0f};
    chord_loss_params p = params(0.3, 0, 3, 2);
    p.entropy_coef = 0.1;
    float g[7], gent[7];
    chord_loss_accum acc;
    chord_loss_accum_init(&acc);
    chord_err err = {0};
    chord_loss_batch b1 = {4, kind, logp, old, adv, ent, NULL, NULL, NULL};
    chord_loss_batch b2 = {3, kind + 4, logp + 4, old + 4, adv + 4, ent + 4, NULL, NULL, NULL};
    assert_int_equal(chord_loss_micro_batch(&p, &b1, g, gent, &acc, &err), 0);
    assert_int_equal(chord_loss_micro_batch(&p, &b2, g + 4, gent + 4, &acc, &err), 0);
    chord_loss_metrics m;
    assert_int_equal(chord_loss_finish(&p, &acc, &m, &err), 0);
    double pg = (-1.0 + 2.0 - 0.5) / 3; /* ratios 1: ℓ = −A */
    double sft = (-log(0.5) - log(0.25)) / 2;
    double h = (1.0 + 2.0 + 3.0) / 3;
    assert_near(m.pg_loss, pg);
    assert_near(m.sft_loss, sft);
    assert_near(m.entropy, h);
    assert_near(m.loss, 0.7 * pg + 0.3 * sft - 0.1 * h);
    assert_near(g[0], 0.0);
    assert_near(g[4], 0.0);
    assert_near(g[1], 0.7 * -1.0 / 3);
    assert_near(g[2], 0.7 * 2.0 / 3);
    assert_near(g[5], 0.7 * -0.5 / 3);
    assert_near(g[3], 0.3 * -1.0 / 2);
    assert_near(g[6], 0.3 * -1.0 / 2);
    assert_near(gent[1], -0.1 / 3);
    assert_near(gent[3], 0.0);
    assert_int_equal(m.n_policy_tokens, 3);
    assert_int_equal(m.n_expert_tokens, 2);
}

/* An empty stream adds 0 (no division by zero). */
static void test_empty_streams(void **state) {
    (void)state;
    uint8_t kind[2] = {CHORD_TOKEN_IGNORE, CHORD_TOKEN_EXPERT};
    float logp[2] = {-1.0f, (float)log(0.5)};
    float g[2];
    chord_loss_params p = params(0.4, 0, 0, 1);
    chord_loss_accum acc;
    chord_loss_metrics m;
    chord_err err = {0};
    chord_loss_accum_init(&acc);
    chord_loss_batch b = {2, kind, logp, NULL, NULL, NULL, NULL, NULL, NULL};
    assert_int_equal(chord_loss_micro_batch(&p, &b, g, NULL, &acc, &err), 0);
    assert_int_equal(chord_loss_finish(&p, &acc, &m, &err), 0);
    assert_near(m.loss, 0.4 * log(2.0));
    assert_near(m.pg_loss, 0.0);
    assert_false(isnan(m.pg_clipfrac));
    /* nothing at all */
    p = params(0.4, 1, 0, 0);
    chord_loss_accum_init(&acc);
    chord_loss_batch none = {0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    assert_int_equal(chord_loss_micro_batch(&p, &none, NULL, NULL, &acc, &err), 0);
    assert_int_equal(chord_loss_finish(&p, &acc, &m, &err), 0);
    assert_near(m.loss, 0.0);
}

static void expect_error(const chord_loss_params *p, const chord_loss_batch *b, const char *want) {
    float g[8];
    chord_loss_accum acc;
    chord_loss_accum_init(&acc);
    chord_loss_accum before = acc;
    chord_err err = {0};
    assert_int_equal(chord_loss_micro_batch(p, b, g, NULL, &acc, &err), -1);
    if (!strstr(err.msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err.msg, want);
    assert_memory_equal(&acc, &before, sizeof acc); /* untouched on failure */
}

static void test_errors(void **state) {
    (void)state;
    uint8_t kind[3] = {1, 1, 3};
    float logp[3] = {-1, -1, -1}, old[3] = {-1, -1, -1}, adv[3] = {1, 1, 1};
    chord_loss_params p = params(0.5, 0, 2, 0);
    chord_loss_batch b = {3, kind, logp, old, adv, NULL, NULL, NULL, NULL};
    expect_error(&p, &b, "token 2: kind 3");
    p.n_policy_tokens = 1;
    expect_error(&p, &b, "token 1: more on-policy tokens");
    p.n_policy_tokens = 2;
    kind[2] = 0;
    logp[1] = NAN;
    expect_error(&p, &b, "token 1: logp is not finite");
    logp[1] = -1;
    adv[0] = INFINITY;
    expect_error(&p, &b, "token 0: logp_old or advantage");
    adv[0] = 1;
    p.entropy_coef = 0.1;
    expect_error(&p, &b, "needs per-token entropy");
    p.entropy_coef = 0;
    p.mu = 1.5;
    expect_error(&p, &b, "mu must be in [0, 1]");
    p.mu = 0.5;
    p.dual_clip = 0.9;
    expect_error(&p, &b, "dual_clip");
    p.dual_clip = 0;
    /* the step declared more tokens than the micro-batches held */
    p.n_policy_tokens = 5;
    float g[3];
    chord_loss_accum acc;
    chord_loss_metrics m;
    chord_err err = {0};
    chord_loss_accum_init(&acc);
    assert_int_equal(chord_loss_micro_batch(&p, &b, g, NULL, &acc, &err), 0);
    assert_int_equal(chord_loss_finish(&p, &acc, &m, &err), -1);
    assert_non_null(strstr(err.msg, "declared 5 on-policy"));
}

static void test_advantages(void **state) {
    (void)state;
    float r[] = {1, 0, 1, 0, /* */ 3, /* */ 1, 1, 1, /* */ 0.5f, 1.5f};
    int sizes[] = {4, 1, 3, 2};
    float a[10];
    int64_t zero = -1;
    chord_err err = {0};
    assert_int_equal(chord_grpo_advantages(r, sizes, 4, 1, a, &zero, &err), 0);
    double std4 = sqrt((4 * 0.25) / 3.0); /* unbiased */
    assert_near(a[0], 0.5 / (std4 + 1e-6));
    assert_near(a[1], -0.5 / (std4 + 1e-6));
    assert_near(a[4], 3.0 / (1.0 + 1e-6)); /* a group of one: mean 0, std 1 */
    assert_near(a[5], 0.0);                /* all equal */
    assert_near(a[7], 0.0);
    double std2 = sqrt(2 * 0.25 / 1.0);
    assert_near(a[8], -0.5 / (std2 + 1e-6));
    assert_near(a[9], 0.5 / (std2 + 1e-6));
    assert_int_equal(zero, 1);
    int bad[] = {4, 0};
    assert_int_equal(chord_grpo_advantages(r, bad, 2, 1, a, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "group 1 is empty"));
    float rn[] = {1, NAN};
    int two[] = {2};
    assert_int_equal(chord_grpo_advantages(rn, two, 1, 1, a, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "reward 1"));
}

static void test_params_for_job(void **state) {
    (void)state;
    const char *doc =
        "{\"model\": {\"path\": \"m\"}, \"data\": {\"prompts\": \"p\", \"expert\": \"e\"},"
        " \"grpo\": {\"clip_low\": 0.1, \"clip_high\": 0.3, \"dual_clip\": 3,"
        " \"kl_coef\": 0.01, \"entropy_coef\": 0.02, \"kl_estimator\": \"k2\","
        " \"loss_agg_mode\": \"seq-mean-token-sum-norm\"},"
        " \"sampling\": {\"max_new_tokens\": 77}}";
    job_config cfg;
    chord_err err = {0};
    assert_int_equal(jobconfig_parse(doc, &cfg, &err), 0);
    chord_loss_params p = chord_loss_params_for_job(&cfg, 0.25, 10, 20, 3, 4);
    assert_near(p.mu, 0.25);
    assert_int_equal(p.phi, 1); /* chord's default */
    assert_near(p.clip_low, 0.1);
    assert_near(p.clip_high, 0.3);
    assert_near(p.dual_clip, 3.0);
    assert_near(p.kl_coef, 0.01);
    assert_near(p.entropy_coef, 0.02);
    assert_int_equal(p.n_policy_tokens, 10);
    assert_int_equal(p.n_expert_tokens, 20);
    assert_int_equal(p.n_policy_seqs, 3);
    assert_int_equal(p.n_expert_seqs, 4);
    assert_int_equal(p.kl_estimator, CHORD_KL_K2);
    assert_int_equal(p.grpo_agg, CHORD_AGG_SEQ_MEAN_TOKEN_SUM_NORM);
    assert_int_equal(p.sft_agg, CHORD_AGG_TOKEN_MEAN);
    assert_near(p.norm_tokens, 77.0);
    assert_int_equal(chord_loss_params_check(&p, &err), 0);
    jobconfig_free(&cfg);
}

/* The policy-loss variants as the job document names them, and the rules that bind them: GSPO's
 * sequence ratio needs a sequence's tokens in one micro-batch; CISPO takes no sequence ratio and
 * no dual clip (jobconfig refuses both, naming the field). */
static void test_policy_loss_variants(void **state) {
    (void)state;
    chord_err err = {0};
    job_config cfg;
    const char *gspo = "{\"model\": {\"path\": \"m\"}, \"data\": {\"prompts\": \"p\"},"
                       " \"algorithm\": \"grpo\", \"grpo\": {\"ratio_level\": \"sequence\"}}";
    assert_int_equal(jobconfig_parse(gspo, &cfg, &err), 0);
    chord_loss_params p = chord_loss_params_for_job(&cfg, 0.0, 3, 0, 1, 0);
    assert_int_equal(p.ratio_level, CHORD_RATIO_SEQUENCE);
    assert_int_equal(p.policy_loss, CHORD_POLICY_LOSS_PPO);
    jobconfig_free(&cfg);
    /* one sequence of 3 on-policy tokens split over two micro-batches: refused */
    uint8_t kind[3] = {CHORD_TOKEN_POLICY, CHORD_TOKEN_POLICY, CHORD_TOKEN_POLICY};
    float logp[3] = {-1.0f, -2.0f, -0.5f}, old[3] = {-1.1f, -1.9f, -0.6f}, adv[3] = {1, 1, 1};
    int32_t seq_tokens[3] = {3, 3, 3}, seq[3] = {0, 0, 0};
    float d[3];
    chord_loss_accum acc;
    chord_loss_accum_init(&acc);
    chord_loss_batch first = {2, kind, logp, old, adv, NULL, NULL, seq_tokens, seq};
    assert_int_equal(chord_loss_micro_batch(&p, &first, d, NULL, &acc, &err), -1);
    assert_non_null(strstr(err.msg, "one micro-batch"));
    /* whole: every token gets the same gradient, (1/3) of the sequence ratio's */
    chord_loss_batch whole = {3, kind, logp, old, adv, NULL, NULL, seq_tokens, seq};
    assert_int_equal(chord_loss_micro_batch(&p, &whole, d, NULL, &acc, &err), 0);
    assert_true(d[0] == d[1] && d[1] == d[2] && d[0] < 0.0f);

    const char *cispo = "{\"model\": {\"path\": \"m\"}, \"data\": {\"prompts\": \"p\"},"
                        " \"algorithm\": \"grpo\", \"grpo\": {\"policy_loss\": \"cispo\"}}";
    assert_int_equal(jobconfig_parse(cispo, &cfg, &err), 0);
    assert_int_equal(chord_loss_params_for_job(&cfg, 0.0, 3, 0, 1, 0).policy_loss,
                     CHORD_POLICY_LOSS_CISPO);
    jobconfig_free(&cfg);
    static const char *const refused[][2] = {
        {"{\"policy_loss\": \"cispo\", \"ratio_level\": \"sequence\"}", "grpo.ratio_level"},
        {"{\"policy_loss\": \"cispo\", \"dual_clip\": 3}", "grpo.dual_clip"},
        {"{\"policy_loss\": \"reinforce\"}", "grpo.policy_loss"},
        {"{\"ratio_level\": 1}", "grpo.ratio_level"},
        {"{\"loss_agg_mode\": \"seq-sum\"}", "grpo.loss_agg_mode"},
        {"{\"kl_estimator\": \"k4\"}", "grpo.kl_estimator"}};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char doc[512];
        snprintf(doc, sizeof doc,
                 "{\"model\": {\"path\": \"m\"}, \"data\": {\"prompts\": \"p\"},"
                 " \"algorithm\": \"grpo\", \"grpo\": %s}",
                 refused[i][0]);
        err.msg[0] = 0;
        assert_int_equal(jobconfig_parse(doc, &cfg, &err), -1);
        if (!strstr(err.msg, refused[i][1])) fail_msg("%s: %s", refused[i][0], err.msg);
    }
    const char *sft = "{\"model\": {\"path\": \"m\"}, \"data\": {\"expert\": \"e\"},"
                      " \"algorithm\": \"sft\","
                      " \"chord\": {\"sft_loss_agg_mode\": \"seq-mean-token-sum-norm\"}}";
    assert_int_equal(jobconfig_parse(sft, &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "chord.sft_loss_agg_mode"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_term),
        cmocka_unit_test(test_sft_term),
        cmocka_unit_test(test_mix_and_micro_batches),
        cmocka_unit_test(test_empty_streams),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_params_for_job),
        cmocka_unit_test(test_advantages),
        cmocka_unit_test(test_policy_loss_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
