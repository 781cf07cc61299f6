/* test_schedule.c — μ of every preset at s = 1, W, W + D and beyond, and the learning rate, with
 * expected values worked out by hand from ALGORITHM.md's formula and transformers' lr lambdas
 * (tests/reference/loss_schedule_reference.py compares against transformers itself). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "server/train/jobconfig.h"
#include "server/train/schedule.h"

#define assert_near(got, want) near_check((got), (want), #got, __LINE__)
static void near_check(double got, double want, const char *expr, int line) {
    if (!(fabs(got - want) <= 1e-12))
        fail_msg("line %d: %s = %.17g, want %.17g", line, expr, got, want);
}

static job_config parse(const char *algorithm, const char *extra) {
    char doc[512];
    snprintf(doc, sizeof doc,
             "{\"model\": {\"path\": \"m\"}, \"data\": {\"prompts\": \"p\", \"expert\": \"e\"},"
             " \"algorithm\": \"%s\"%s%s}",
             algorithm, extra ? ", " : "", extra ? extra : "");
    job_config c;
    chord_err err = {0};
    if (jobconfig_parse(doc, &c, &err)) fail_msg("%s", err.msg);
    return c;
}

static void test_mu_chord(void **state) {
    (void)state;
    job_config c = parse("chord", NULL);            /* W = 200, D = 400, 0.5 → 0.02 */
    assert_near(sched_mu(&c, 1, 0), 0.5 * 1 / 200); /* warmup: μ_p · s / W */
    assert_near(sched_mu(&c, 100, 0), 0.25);
    assert_near(sched_mu(&c, 199, 0), 0.5 * 199 / 200);
    assert_near(sched_mu(&c, 200, 0), 0.5);               /* s = W: the peak */
    assert_near(sched_mu(&c, 400, 0), 0.02 + 0.48 * 0.5); /* halfway: cos(π/2) = 0 */
    assert_near(sched_mu(&c, 500, 0), 0.02 + 0.48 * 0.5 * (1 + cos(M_PI * 0.75)));
    assert_near(sched_mu(&c, 600, 0), 0.02); /* s = W + D: the valley */
    assert_near(sched_mu(&c, 10000, 0), 0.02);
    jobconfig_free(&c);
}

static void test_mu_presets(void **state) {
    (void)state;
    job_config c = parse("chord_mu", NULL); /* W = 0, D = 200, 0.9 → 0.05 */
    assert_near(sched_mu(&c, 1, 0), 0.05 + 0.85 * 0.5 * (1 + cos(M_PI / 200)));
    assert_near(sched_mu(&c, 100, 0), 0.05 + 0.85 * 0.5);
    assert_near(sched_mu(&c, 200, 0), 0.05);
    assert_near(sched_mu(&c, 201, 0), 0.05);
    jobconfig_free(&c);

    c = parse("chord_phi", NULL); /* constant 0.1 */
    for (int64_t s = 1; s < 1000; s += 37)
        assert_near(sched_mu(&c, s, 0), 0.1);
    jobconfig_free(&c);

    c = parse("sft", NULL);
    for (int64_t s = 1; s < 1000; s += 37)
        assert_near(sched_mu(&c, s, 0), 1.0);
    jobconfig_free(&c);

    c = parse("grpo", NULL);
    for (int64_t s = 1; s < 1000; s += 37)
        assert_near(sched_mu(&c, s, 0), 0.0);
    jobconfig_free(&c);

    c = parse("sft_then_grpo", "\"steps\": 100, \"chord\": {\"sft_steps\": 30}");
    assert_near(sched_mu(&c, 1, 0), 1.0);
    assert_near(sched_mu(&c, 30, 0), 1.0);
    assert_near(sched_mu(&c, 31, 0), 0.0);
    assert_near(sched_mu(&c, 100, 0), 0.0);
    jobconfig_free(&c);

    /* W = D = 0 with distinct peak and valley: the valley from step 1 */
    c = parse("chord", "\"chord\": {\"mu\": {\"warmup_steps\": 0, \"decay_steps\": 0,"
                       " \"peak\": 0.9, \"valley\": 0.3}}");
    assert_near(sched_mu(&c, 1, 0), 0.3);
    assert_near(sched_mu(&c, 50, 0), 0.3);
    jobconfig_free(&c);
}

static void test_mu_adaptive(void **state) {
    (void)state;
    job_config c = parse("chord_phi", "\"chord\": {\"mu\": {\"adaptive\": {\"tau\": 0.5}}}");
    assert_near(sched_mu(&c, 1, 0.2), 0.3); /* max(0, τ − mean reward) */
    assert_near(sched_mu(&c, 7, 0.5), 0.0);
    assert_near(sched_mu(&c, 7, 0.9), 0.0);
    assert_near(sched_mu(&c, 7, -0.8), 1.0); /* negative rewards: clamped to 1 */
    assert_near(sched_mu(&c, 7, NAN), 0.0);
    jobconfig_free(&c);
}

static void test_lr(void **state) {
    (void)state;
    /* transformers: warmup ramps completed / W; the s-th step uses completed = s − 1 */
    assert_near(sched_lr_factor(JOB_LR_CONSTANT, 0, 10, 100, 0), 0.0);
    assert_near(sched_lr_factor(JOB_LR_CONSTANT, 5, 10, 100, 0), 0.5);
    assert_near(sched_lr_factor(JOB_LR_CONSTANT, 10, 10, 100, 0), 1.0);
    assert_near(sched_lr_factor(JOB_LR_CONSTANT, 500, 10, 100, 0), 1.0);
    assert_near(sched_lr_factor(JOB_LR_CONSTANT, 0, 0, 100, 0), 1.0);
    /* linear: (T − k) / (T − W) */
    assert_near(sched_lr_factor(JOB_LR_LINEAR, 55, 10, 100, 0), 0.5);
    assert_near(sched_lr_factor(JOB_LR_LINEAR, 100, 10, 100, 0), 0.0);
    assert_near(sched_lr_factor(JOB_LR_LINEAR, 120, 10, 100, 0), 0.0);
    assert_near(sched_lr_factor(JOB_LR_LINEAR, 100, 10, 100, 0.2), 0.2); /* floor */
    assert_near(sched_lr_factor(JOB_LR_LINEAR, 55, 10, 100, 0.2), 0.2 + 0.8 * 0.5);
    /* cosine: ½(1 + cos(π · progress)), min_lr_rate as in transformers */
    assert_near(sched_lr_factor(JOB_LR_COSINE, 10, 10, 100, 0), 1.0);
    assert_near(sched_lr_factor(JOB_LR_COSINE, 55, 10, 100, 0), 0.5);
    assert_near(sched_lr_factor(JOB_LR_COSINE, 100, 10, 100, 0), 0.0);
    assert_near(sched_lr_factor(JOB_LR_COSINE, 55, 10, 100, 0.1), 0.1 + 0.9 * 0.5);
    assert_near(sched_lr_factor(JOB_LR_COSINE, 100, 10, 100, 0.1), 0.1);

    job_config c = parse("chord", "\"steps\": 100, \"optimizer\": {\"lr\": 0.001,"
                                  " \"schedule\": \"cosine\", \"warmup_steps\": 10}");
    assert_near(sched_lr(&c, 1), 0.0); /* as a Hugging Face Trainer's first step */
    assert_near(sched_lr(&c, 6), 0.0005);
    assert_near(sched_lr(&c, 11), 0.001);
    assert_near(sched_lr(&c, 56), 0.0005);
    jobconfig_free(&c);
    c = parse("chord", NULL); /* default: constant 1e-6 */
    assert_near(sched_lr(&c, 1), 1e-6);
    assert_near(sched_lr(&c, 500), 1e-6);
    jobconfig_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mu_chord),
        cmocka_unit_test(test_mu_presets),
        cmocka_unit_test(test_mu_adaptive),
        cmocka_unit_test(test_lr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
