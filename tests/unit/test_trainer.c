/* test_trainer.c — the CHORD step loop (server/train/trainer.h) learning, on tiny random-init
 * models and the built-in arithmetic task, short and seeded:
 *
 * - SFT drives the expert NLL down (a large relative drop in a few steps);
 * - GRPO raises the mean reward on a task a random model sometimes solves (a regex reward for a
 *   digit early in the response);
 * - chord_mu ends with a higher held-out accuracy than grpo alone, same seeds and budgets (GRPO
 *   gets no signal from scratch: every reward is 0);
 * - stopping and resuming from the checkpoint repeats an uninterrupted run's metrics exactly;
 * - grpo.kl_coef > 0 reports the KL to the starting weights and keeps the policy nearer them;
 * - a checkpoint is a loadable model directory (config, weights, tokenizer files).
 *
 * The outcomes are checked against the job's own definition of success (the verifier's score,
 * the expert NLL), never against numbers an earlier chord run produced. */
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
#include <jansson.h>

#include "kernels/ops.h"
#include "server/base/fileutil.h"
#include "server/model/model.h"
#include "server/model/tokenizer.h"
#include "server/train/bootstrap.h"
#include "server/train/jobconfig.h"
#include "server/train/task.h"
#include "server/train/trainer.h"

/* ---- a run's record ------------------------------------------------------------------------ */

#define MAX_STEPS 400
#define MAX_NAMES 64

typedef struct run_log {
    int n_names;
    char names[MAX_NAMES][48];
    double values[MAX_STEPS + 1][MAX_NAMES]; /* [step][name], NAN when absent */
    int64_t last_step;
    int64_t stop_after; /* should_stop once this step is done (0 = never) */
    char ckdir[4096];   /* where checkpoints go */
    int64_t checkpoints[16];
    int n_checkpoints;
    int verbose;
} run_log;

static int name_index(run_log *r, const char *name, int add) {
    for (int i = 0; i < r->n_names; i++)
        if (!strcmp(r->names[i], name)) return i;
    if (!add || r->n_names == MAX_NAMES) return -1;
    snprintf(r->names[r->n_names], sizeof r->names[0], "%s", name);
    for (int s = 0; s <= MAX_STEPS; s++)
        r->values[s][r->n_names] = NAN;
    return r->n_names++;
}

static double value(run_log *r, int64_t step, const char *name) {
    int i = name_index(r, name, 0);
    if (i < 0 || step < 1 || step > MAX_STEPS) return NAN;
    return r->values[step][i];
}

static int cb_on_step(void *user, int64_t step, const char *const *names, const double *values,
                      int n) {
    run_log *r = user;
    if (step < 1 || step > MAX_STEPS) return -1;
    for (int i = 0; i < n; i++) {
        int k = name_index(r, names[i], 1);
        if (k >= 0) r->values[step][k] = values[i];
    }
    r->last_step = step;
    return 0;
}

static int cb_checkpoint_begin(void *user, int64_t step, char *dir, size_t dirlen, chord_err *err) {
    run_log *r = user;
    snprintf(dir, dirlen, "%s/step_%lld.tmp", r->ckdir, (long long)step);
    return chord_mkdirs(dir, err);
}

static int cb_checkpoint_commit(void *user, int64_t step, const char *dir, chord_err *err) {
    run_log *r = user;
    char final_dir[4200];
    snprintf(final_dir, sizeof final_dir, "%s/step_%lld", r->ckdir, (long long)step);
    if (rename(dir, final_dir) != 0) return chord_err_set(err, "rename %s", dir);
    if (r->n_checkpoints < 16) r->checkpoints[r->n_checkpoints++] = step;
    return 0;
}

static int cb_should_stop(void *user, int *checkpoint_on_stop) {
    run_log *r = user;
    *checkpoint_on_stop = 1;
    return r->stop_after > 0 && r->last_step >= r->stop_after;
}

static void cb_on_log(void *user, const char *line) {
    run_log *r = user;
    if (r->verbose) fprintf(stderr, "  | %s\n", line);
}

/* ---- fixture: the built-in task's files in a temporary directory ---------------------------- */

typedef struct fixture {
    char dir[256];
    char prompts[320], expert[320], eval[320];
    char easy_prompts[320], easy_expert[320], easy_eval[320], easy_seen[320];
    ops_ctx *ops;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    snprintf(f->dir, sizeof f->dir, "/tmp/chord_test_trainer_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    chord_err err = {0};
    task_arith_config tc;
    task_arith_default(&tc);
    if (task_write_default_files(f->dir, &tc, 11, 2000, 2000, 64, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(f->prompts, sizeof f->prompts, "%s/prompts.jsonl", f->dir);
    snprintf(f->expert, sizeof f->expert, "%s/expert.jsonl", f->dir);
    snprintf(f->eval, sizeof f->eval, "%s/eval.jsonl", f->dir);
    /* single-digit additions: learnable by a tiny model in seconds */
    char easy[300];
    snprintf(easy, sizeof easy, "%s/easy", f->dir);
    task_arith_config ec = tc;
    ec.ops = TASK_OP_ADD;
    ec.max_digits = 1;
    ec.heldout_percent = 20;
    if (chord_mkdirs(easy, &err) != 0 ||
        task_write_default_files(easy, &ec, 5, 2000, 2000, 32, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(f->easy_prompts, sizeof f->easy_prompts, "%s/prompts.jsonl", easy);
    snprintf(f->easy_expert, sizeof f->easy_expert, "%s/expert.jsonl", easy);
    snprintf(f->easy_eval, sizeof f->easy_eval, "%s/eval.jsonl", easy);
    /* problems of the training split (other draws than the prompts file's) */
    snprintf(f->easy_seen, sizeof f->easy_seen, "%s/seen.jsonl", easy);
    if (task_write_prompts_jsonl(f->easy_seen, &ec, 99, TASK_SPLIT_TRAIN, 64, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    char e[256];
    f->ops = ops_open("cpu", 1, e, sizeof e); /* 1 thread: no spinning on shared cores */
    return f->ops ? 0 : -1;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (!f) return 0;
    ops_close(f->ops);
    if (f->dir[0] && strncmp(f->dir, "/tmp/chord_test_trainer_", 24) == 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
    }
    free(f);
    return 0;
}

/* A tiny Qwen2-style model over the embedded 1024-token tokenizer. */
#define TINY_MODEL                                                                                 \
    "\"model\": {\"init\": {\"seed\": 3, \"config\": {\"model_type\": \"qwen2\", "                 \
    "\"vocab_size\": 1024, \"hidden_size\": 64, \"num_hidden_layers\": 2, "                        \
    "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"intermediate_size\": 128, "         \
    "\"max_position_embeddings\": 96, \"tie_word_embeddings\": true, "                             \
    "\"initializer_range\": 0.02}}}"

static run_log *new_log(void) {
    run_log *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->verbose = getenv("CHORD_TEST_VERBOSE") != NULL;
    return r;
}

static const char *g_model_dir; /* env.model_dir of the next run_job ("model": {"path"}) */

/* Runs the job document `json` (TINY_MODEL spliced in by the caller) with the given data. */
static int run_job(fixture *f, const char *json, const char *prompts, const char *expert,
                   const char *eval, const char *resume_dir, run_log *r, chord_err *err) {
    /* the data fields name the files the env hands over */
    json_error_t je;
    json_t *doc = json_loads(json, 0, &je);
    if (!doc) fail_msg("test job: %s", je.text);
    json_t *data = json_object();
    if (prompts) json_object_set_new(data, "prompts", json_string(prompts));
    if (expert) json_object_set_new(data, "expert", json_string(expert));
    if (eval) json_object_set_new(data, "eval", json_string(eval));
    json_object_set_new(doc, "data", data);
    job_config cfg;
    int prc = jobconfig_from_json(doc, &cfg, err);
    json_decref(doc);
    if (prc != 0) fail_msg("job: %s", err->msg);
    if (!r->ckdir[0]) {
        snprintf(r->ckdir, sizeof r->ckdir, "%s/ck_XXXXXX", f->dir);
        if (!mkdtemp(r->ckdir)) fail_msg("mkdtemp");
    }
    trainer_env env = {.ops = f->ops,
                       .model_dir = g_model_dir,
                       .prompts_path = prompts,
                       .expert_path = expert,
                       .eval_path = eval,
                       .resume_dir = resume_dir};
    trainer_callbacks cb = {.user = r,
                            .on_step = cb_on_step,
                            .checkpoint_begin = cb_checkpoint_begin,
                            .checkpoint_commit = cb_checkpoint_commit,
                            .should_stop = cb_should_stop,
                            .on_log = cb_on_log};
    double t0 = chord_now();
    int rc = trainer_run(&cfg, &env, &cb, err);
    if (r->verbose) fprintf(stderr, "  (%.1fs)\n", chord_now() - t0);
    jobconfig_free(&cfg);
    return rc;
}

static double mean_over(run_log *r, const char *name, int64_t from, int64_t to) {
    double s = 0;
    int n = 0;
    for (int64_t k = from; k <= to; k++) {
        double v = value(r, k, name);
        if (!isnan(v)) s += v, n++;
    }
    return n ? s / n : NAN;
}

/* ---- SFT ------------------------------------------------------------------------------------ */

static void test_sft_drives_nll_down(void **state) {
    fixture *f = *state;
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"sft\", \"expert_per_step\": 16, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 12, \"seed\": 1, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    run_log *r = new_log();
    chord_err err = {0};
    if (run_job(f, json, NULL, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    double first = value(r, 1, "sft_nll"), last = value(r, 12, "sft_nll");
    print_message("sft: expert NLL %.3f -> %.3f (ln 1024 = %.3f)\n", first, last, log(1024.0));
    /* a random-init model starts near uniform over the vocabulary */
    assert_true(fabs(first - log(1024.0)) < 0.5);
    assert_true(last < 0.5 * first);
    for (int64_t s = 1; s <= 12; s++) {
        assert_true(value(r, s, "mu") == 1.0);
        assert_true(value(r, s, "policy_tokens") == 0.0);
        assert_true(value(r, s, "expert_tokens") > 0.0);
    }
    free(r);
}

/* ---- GRPO ----------------------------------------------------------------------------------- */

/* Reward 1 when the response starts with a digit: a random model over 1024 tokens does so now
 * and then, and GRPO must make it the rule. */
static void test_grpo_raises_reward(void **state) {
    fixture *f = *state;
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"grpo\", "
             "\"grpo\": {\"group_size\": 8, \"prompts_per_step\": 8}, "
             "\"sampling\": {\"max_new_tokens\": 4}, "
             "\"reward\": {\"type\": \"regex\", \"pattern\": \"^\\\\s*[0-9]\"}, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 25, \"seed\": 2, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    run_log *r = new_log();
    chord_err err = {0};
    if (run_job(f, json, f->prompts, NULL, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    double early = mean_over(r, "reward_mean", 1, 3), late = mean_over(r, "reward_mean", 23, 25);
    print_message("grpo: mean reward %.3f (steps 1-3) -> %.3f (steps 23-25)\n", early, late);
    assert_true(early > 0.0); /* sometimes solved at the start ... */
    assert_true(early < 0.5);
    assert_true(late > early + 0.3); /* ... and much more often after */
    for (int64_t s = 1; s <= 25; s++)
        assert_true(value(r, s, "mu") == 0.0);
    /* before the update the trainer's log-probs are the rollout's: ppo_kl ~ 0 */
    assert_true(fabs(value(r, 1, "ppo_kl")) < 1e-5);
    free(r);
}

/* ---- CHORD-μ vs GRPO ------------------------------------------------------------------------ */

/* The built-in task's single-digit additions, same seeds, model and budget for both: GRPO alone
 * never sees a reward from scratch (a random model does not write \boxed{} with the right sum),
 * so every group has zero advantage and nothing is learnt; CHORD-μ learns the task from the
 * expert data, then from its own rewards. Accuracy is greedy, on problems of the training split
 * the trainer did not sample (and their rollout accuracy at temperature 1). */
#define MID_MODEL                                                                                  \
    "\"model\": {\"init\": {\"seed\": 3, \"config\": {\"model_type\": \"qwen2\", "                 \
    "\"vocab_size\": 1024, \"hidden_size\": 128, \"num_hidden_layers\": 2, "                       \
    "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"intermediate_size\": 256, "         \
    "\"max_position_embeddings\": 96, \"tie_word_embeddings\": true, "                             \
    "\"initializer_range\": 0.02}}}"
#define CMP_STEPS 150

static void test_chord_mu_beats_grpo(void **state) {
    fixture *f = *state;
    static const char *algos[2] = {"chord_mu", "grpo"};
    double acc[2], roll_acc[2], zero_adv[2];
    for (int a = 0; a < 2; a++) {
        char json[4096];
        snprintf(json, sizeof json,
                 "{" MID_MODEL ", \"algorithm\": \"%s\", %s"
                 "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 8}, "
                 "\"sampling\": {\"max_new_tokens\": 12}, "
                 "\"optimizer\": {\"lr\": 0.003}, \"steps\": %d, \"seed\": 4, "
                 "\"checkpoint_every\": 0, "
                 "\"eval\": {\"every\": %d, \"k\": 1, \"temperature\": 0}}",
                 algos[a],
                 a == 0 ? "\"expert_per_step\": 32, \"chord\": {\"mu\": {\"warmup_steps\": 0, "
                          "\"decay_steps\": 150, \"peak\": 0.9, \"valley\": 0.3}}, "
                        : "",
                 CMP_STEPS, CMP_STEPS);
        run_log *r = new_log();
        chord_err err = {0};
        if (run_job(f, json, f->easy_prompts, a == 0 ? f->easy_expert : NULL, f->easy_seen, NULL, r,
                    &err) != TRAINER_DONE)
            fail_msg("%s: %s", algos[a], err.msg);
        acc[a] = value(r, CMP_STEPS, "eval/accuracy");
        roll_acc[a] = mean_over(r, "accuracy", CMP_STEPS - 9, CMP_STEPS);
        zero_adv[a] = mean_over(r, "zero_adv_groups", 1, CMP_STEPS);
        print_message("%s: accuracy %.3f (greedy), rollout accuracy %.3f (last 10 steps), "
                      "zero-advantage groups %.2f\n",
                      algos[a], acc[a], roll_acc[a], zero_adv[a]);
        free(r);
    }
    assert_true(acc[1] == 0.0); /* grpo alone: no reward, no signal, nothing learnt */
    assert_true(roll_acc[1] == 0.0);
    assert_true(zero_adv[1] == 1.0);
    assert_true(acc[0] >= 0.2); /* chord_mu: learnt from the expert data (0.375 when written) */
    assert_true(roll_acc[0] >= 0.1);
    assert_true(zero_adv[0] < 1.0); /* and its own rewards now carry a signal */
}

/* ---- stop + resume -------------------------------------------------------------------------- */

/* timings, and the memory peak (the process's, not the run's) */
static int is_timing(const char *name) {
    return !strncmp(name, "time/", 5) || !strncmp(name, "tokens_per_s", 12) ||
           !strcmp(name, "eval/time") || !strncmp(name, "memory/", 7);
}

/* A CHORD job stopped after step 3 and resumed from its checkpoint repeats the uninterrupted
 * run's every non-timing metric bit for bit; grpo_extra / extra go into "grpo" / the top. */
static void resume_case(fixture *f, const char *grpo_extra, const char *extra) {
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"chord\", "
             "\"chord\": {\"mu\": {\"warmup_steps\": 2, \"decay_steps\": 3, \"peak\": 0.8, "
             "\"valley\": 0.2}}, "
             "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4%s}, \"expert_per_step\": 8, "
             "\"sampling\": {\"max_new_tokens\": 8}, "
             "\"optimizer\": {\"lr\": 0.003, \"schedule\": \"cosine\", \"warmup_steps\": 2}, "
             "\"micro_batch_tokens\": 300, \"steps\": 5, \"seed\": 9, \"checkpoint_every\": 2, "
             "\"eval\": {\"every\": 2, \"k\": 2, \"temperature\": 1.0, \"max_new_tokens\": 8}%s}",
             grpo_extra, extra);
    chord_err err = {0};
    run_log *whole = new_log();
    if (run_job(f, json, f->prompts, f->expert, f->eval, NULL, whole, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    assert_int_equal(whole->last_step, 5);

    run_log *part = new_log();
    part->stop_after = 3;
    assert_int_equal(run_job(f, json, f->prompts, f->expert, f->eval, NULL, part, &err),
                     TRAINER_STOPPED);
    assert_int_equal(part->last_step, 3);
    assert_int_equal(part->checkpoints[part->n_checkpoints - 1], 3); /* written on stop */
    char resume[4200];
    snprintf(resume, sizeof resume, "%s/step_3", part->ckdir);
    run_log *rest = new_log();
    snprintf(rest->ckdir, sizeof rest->ckdir, "%s", part->ckdir);
    if (run_job(f, json, f->prompts, f->expert, f->eval, resume, rest, &err) != TRAINER_DONE)
        fail_msg("resume: %s", err.msg);
    assert_int_equal(rest->last_step, 5);

    int compared = 0;
    for (int i = 0; i < whole->n_names; i++) {
        const char *name = whole->names[i];
        if (is_timing(name)) continue;
        for (int64_t s = 1; s <= 5; s++) {
            double want = whole->values[s][i];
            double got = s <= 3 ? value(part, s, name) : value(rest, s, name);
            if (isnan(want)) {
                assert_true(isnan(got));
                continue;
            }
            if (want != got)
                fail_msg("step %lld %s: uninterrupted %.17g, resumed %.17g", (long long)s, name,
                         want, got);
            compared++;
        }
    }
    print_message("resume%s: %d metric values identical (steps 1-5, stop after 3)\n",
                  extra[0] ? " (LoRA)" : "", compared);
    assert_true(compared > 5 * 20);
    assert_false(isnan(value(rest, 4, "eval/accuracy"))); /* eval ran after the resume too */
    free(whole);
    free(part);
    free(rest);
}

static void test_resume_repeats_metrics(void **state) {
    resume_case(*state, "", "");
}

/* ---- LoRA ----------------------------------------------------------------------------------- */

/* A LoRA job (model.h "LoRA"; the numbers against peft are reference.model's): SFT through the
 * adapter alone drives the expert NLL down; its checkpoints hold the adapter (a PEFT directory)
 * and its optimizer state, not the model; the KL's reference is the base under the adapter (0 at
 * step 1, exactly); and stop + resume repeats the uninterrupted run bit for bit. */
static void test_lora_job(void **state) {
    fixture *f = *state;
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"sft\", \"expert_per_step\": 16, "
             "\"lora\": {\"rank\": 8, \"alpha\": 16, \"target_modules\": \"all-linear\"}, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 12, \"seed\": 1, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    run_log *r = new_log();
    chord_err err = {0};
    if (run_job(f, json, NULL, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    double first = value(r, 1, "sft_nll"), last = value(r, 12, "sft_nll");
    print_message("lora sft: expert NLL %.3f -> %.3f\n", first, last);
    assert_true(fabs(first - log(1024.0)) < 0.5); /* B = 0: the base's NLL at first */
    assert_true(last < first - 0.3);              /* slower than full fine-tuning's (< 0.5 x) */
    char path[4300];
    static const char *has[] = {"adapter_config.json",
                                "adapter_model.safetensors",
                                "optimizer.safetensors",
                                "trainer_state.json",
                                "job.json",
                                "tokenizer.json"};
    for (size_t i = 0; i < sizeof has / sizeof has[0]; i++) {
        snprintf(path, sizeof path, "%s/step_12/%s", r->ckdir, has[i]);
        if (!chord_is_file(path)) fail_msg("the LoRA checkpoint lacks %s", has[i]);
    }
    snprintf(path, sizeof path, "%s/step_12/model.safetensors", r->ckdir);
    assert_false(chord_is_file(path)); /* the adapter alone */
    free(r);

    /* train_embeddings (PEFT's modules_to_save): the tied embedding trains beside the adapter,
     * and on the random-init base, whose logits are flat, that is what moves the NLL most */
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"sft\", \"expert_per_step\": 16, "
             "\"lora\": {\"rank\": 8, \"alpha\": 16, \"target_modules\": \"all-linear\", "
             "\"train_embeddings\": true}, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 12, \"seed\": 1, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    r = new_log();
    if (run_job(f, json, NULL, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    double emb_first = value(r, 1, "sft_nll"), emb_last = value(r, 12, "sft_nll");
    print_message("lora sft + embeddings: expert NLL %.3f -> %.3f\n", emb_first, emb_last);
    assert_true(emb_first == first); /* the copy starts as the base's: the same first step */
    assert_true(emb_last < last);
    free(r);

    /* the KL's reference under LoRA: exactly the policy before the first update */
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"chord\", \"chord\": {\"mu\": 0.5}, "
             "\"lora\": {\"rank\": 4, \"target_modules\": [\"q_proj\", \"v_proj\", "
             "\"down_proj\"]}, \"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4, "
             "\"kl_coef\": 0.5}, \"expert_per_step\": 8, \"sampling\": {\"max_new_tokens\": 6}, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 3, \"seed\": 2, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    r = new_log();
    if (run_job(f, json, f->prompts, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    print_message("lora kl: %.3g %.3g %.3g\n", value(r, 1, "kl"), value(r, 2, "kl"),
                  value(r, 3, "kl"));
    assert_true(value(r, 1, "kl") == 0.0);
    assert_true(value(r, 3, "kl") > 0.0);
    free(r);

    resume_case(f, ", \"kl_coef\": 0.1",
                ", \"lora\": {\"rank\": 4, \"alpha\": 8, \"target_modules\": \"all-linear\", "
                "\"dropout\": 0.1}");
    resume_case(f, "", ", \"lora\": {\"rank\": 2, \"train_embeddings\": true}");

    /* a LoRA checkpoint of a base directory opens as base + adapter (bootstrap.h): the rollout
     * executor's and chordd eval's way in; a random-init base's is refused by name */
    char base[400], ck[4300];
    snprintf(base, sizeof base, "%s/lora_base", f->dir);
    model *bm = NULL;
    tok_tokenizer *tok = NULL;
    model_config mc;
    assert_int_equal(model_config_parse("{\"model_type\": \"qwen2\", \"vocab_size\": 1024, "
                                        "\"hidden_size\": 64, \"num_hidden_layers\": 2, "
                                        "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                                        "\"intermediate_size\": 128, "
                                        "\"max_position_embeddings\": 96, "
                                        "\"tie_word_embeddings\": true}",
                                        &mc, &err),
                     0);
    assert_int_equal(model_create(&mc, f->ops, &bm, &err), 0);
    assert_int_equal(model_init_random(bm, 3, &err), 0);
    assert_int_equal(model_save(bm, base, ST_F32, 0, &err), 0);
    assert_int_equal(tok_load_default(&tok, &err), 0);
    assert_int_equal(tok_save(tok, base, &err), 0);
    tok_free(tok);
    model_free(bm);
    snprintf(json, sizeof json,
             "{\"model\": {\"path\": \"%s\"}, \"algorithm\": \"sft\", \"expert_per_step\": 8, "
             "\"lora\": {\"rank\": 2}, \"optimizer\": {\"lr\": 0.01}, \"steps\": 2, "
             "\"seed\": 1, \"checkpoint_every\": 0, \"eval\": {\"every\": 0}}",
             base);
    r = new_log();
    g_model_dir = base;
    int rc = run_job(f, json, NULL, f->expert, NULL, NULL, r, &err);
    g_model_dir = NULL;
    if (rc != TRAINER_DONE) fail_msg("%s", err.msg);
    snprintf(ck, sizeof ck, "%s/step_2", r->ckdir);
    bootstrap_spec spec = {.dir = ck};
    bootstrap_model b;
    if (bootstrap_open(&spec, f->ops, &b, &err) != 0) fail_msg("bootstrap: %s", err.msg);
    assert_non_null(b.m->lora);
    size_t np = 0;
    model_lora_tensors(b.m, NULL, &np);
    assert_true(np > 0);
    bootstrap_close(&b);
    free(r);
    /* the earlier job's base was a random init: its adapter cannot be opened alone */
    run_log *r2 = new_log();
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"sft\", \"expert_per_step\": 8, "
             "\"lora\": {\"rank\": 2}, \"steps\": 1, \"seed\": 1, \"checkpoint_every\": 0, "
             "\"eval\": {\"every\": 0}}");
    if (run_job(f, json, NULL, f->expert, NULL, NULL, r2, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    snprintf(ck, sizeof ck, "%s/step_1", r2->ckdir);
    spec = (bootstrap_spec){.dir = ck};
    assert_int_equal(bootstrap_open(&spec, f->ops, &b, &err), -1);
    if (!strstr(err.msg, "LoRA adapter whose base")) fail_msg("%s", err.msg);
    free(r2);
}

/* ---- verifier errors are never read as wrong answers -------------------------------------- */

/* Half the prompts have no reference answer ("answer": null), so `contains` cannot decide their
 * responses (`error`): those leave the advantage groups and the loss, the error rate says so,
 * and the reward and accuracy are the decided samples'. */
static void test_verifier_errors_are_excluded(void **state) {
    fixture *f = *state;
    char path[400];
    snprintf(path, sizeof path, "%s/half_answers.jsonl", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 4; i++)
        fprintf(fp,
                i % 2 ? "{\"prompt\": \"Say %d.\", \"answer\": null}\n"
                      : "{\"prompt\": \"Say %d.\", \"answer\": \"1\"}\n",
                i);
    fclose(fp);
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"grpo\", "
             "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4}, "
             "\"sampling\": {\"max_new_tokens\": 6}, \"reward\": {\"type\": \"contains\"}, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 3, \"seed\": 2, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    run_log *r = new_log();
    chord_err err = {0};
    if (run_job(f, json, path, NULL, NULL, NULL, r, &err) != TRAINER_DONE) fail_msg("%s", err.msg);
    for (int64_t s = 1; s <= 3; s++) {
        double rate = value(r, s, "verifier_error_rate");
        double all = value(r, s, "response_len_mean") * 16;
        double trained = value(r, s, "policy_tokens");
        print_message("step %lld: error rate %.2f, policy tokens %.0f of %.0f\n", (long long)s,
                      rate, trained, all);
        assert_true(rate == 0.5);                  /* 2 prompts x 4 samples of 16 */
        assert_true(trained > 0 && trained < all); /* only the decided half is trained */
        double acc = value(r, s, "accuracy"), rw = value(r, s, "reward_mean");
        assert_true(acc >= 0.0 && acc <= 1.0 && rw == acc); /* over the decided samples */
    }
    free(r);
}

/* ---- zero-advantage responses skip the forward/backward ----------------------------------- */

/* Their gradient is exactly zero, so skipping them must not change the training: a run with
 * a negligible entropy bonus (which forces every response through the model) takes the same
 * steps, to fp32 round-off. */
static void test_zero_advantage_skip_is_exact(void **state) {
    fixture *f = *state;
    double loss[2][7], reward[2][7], skipped[2] = {0, 0};
    for (int a = 0; a < 2; a++) {
        char json[4096];
        snprintf(json, sizeof json,
                 "{" TINY_MODEL ", \"algorithm\": \"chord\", \"chord\": {\"mu\": 0.5}, "
                 "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 8, "
                 "\"entropy_coef\": %s}, \"expert_per_step\": 8, "
                 "\"sampling\": {\"max_new_tokens\": 4}, "
                 "\"reward\": {\"type\": \"regex\", \"pattern\": \"^\\\\s*[0-9]\"}, "
                 "\"optimizer\": {\"lr\": 0.01}, \"steps\": 6, \"seed\": 2, "
                 "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}",
                 a == 0 ? "0" : "1e-30");
        run_log *r = new_log();
        chord_err err = {0};
        if (run_job(f, json, f->prompts, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
            fail_msg("%s", err.msg);
        for (int s = 1; s <= 6; s++) {
            loss[a][s] = value(r, s, "loss");
            reward[a][s] = value(r, s, "reward_mean");
            skipped[a] += value(r, s, "policy_tokens_skipped");
        }
        free(r);
    }
    print_message("skipped %.0f zero-advantage tokens; final loss %.6f vs %.6f\n", skipped[0],
                  loss[0][6], loss[1][6]);
    assert_true(skipped[0] > 0 && skipped[1] == 0);
    for (int s = 1; s <= 6; s++) {
        assert_true(reward[0][s] == reward[1][s]); /* the same samples, step after step */
        assert_true(fabs(loss[0][s] - loss[1][s]) <= 1e-4 * (1 + fabs(loss[1][s])));
    }
}

/* ---- the KL to a reference policy ---------------------------------------------------------- */

/* grpo.kl_coef > 0 gives the job a frozen reference (its starting weights): step 1's policy is
 * the reference, so its KL is exactly 0; later steps report kl > 0, and the update differs from
 * the same job without a KL. A strong KL keeps the policy nearer the reference than a negligible
 * one does (the KL regularises), as a loss term and as a reward penalty alike; kl_coef 0 has no
 * reference and no kl row. */
static void run_chord_job(fixture *f, const char *grpo_extra, double kl[9], double loss[9]) {
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"chord\", \"chord\": {\"mu\": 0.5}, "
             "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4%s}, "
             "\"expert_per_step\": 8, \"sampling\": {\"max_new_tokens\": 6}, "
             "\"reward\": {\"type\": \"regex\", \"pattern\": \"^\\\\s*[0-9]\"}, "
             "\"optimizer\": {\"lr\": 0.01}, \"steps\": 8, \"seed\": 2, "
             "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}",
             grpo_extra);
    run_log *r = new_log();
    chord_err err = {0};
    if (run_job(f, json, f->prompts, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    for (int s = 1; s <= 8; s++) {
        kl[s] = value(r, s, "kl");
        loss[s] = value(r, s, "loss");
    }
    free(r);
}

static void test_kl_to_reference(void **state) {
    fixture *f = *state;
    double kl[5][9], loss[5][9];
    run_chord_job(f, "", kl[0], loss[0]);
    run_chord_job(f, ", \"kl_coef\": 1e-9", kl[1], loss[1]);
    run_chord_job(f, ", \"kl_coef\": 5.0", kl[2], loss[2]);
    run_chord_job(f, ", \"kl_coef\": 1e-9, \"kl_estimator\": \"k2\", \"kl_in_reward\": true", kl[3],
                  loss[3]);
    run_chord_job(f, ", \"kl_coef\": 5.0, \"kl_estimator\": \"k2\", \"kl_in_reward\": true", kl[4],
                  loss[4]);
    for (int s = 1; s <= 8; s++)
        print_message("step %d: kl (1e-9) %.3g, (5) %.3g; in reward (1e-9) %.3g, (5) %.3g; "
                      "loss %.5f / %.5f / %.5f\n",
                      s, kl[1][s], kl[2][s], kl[3][s], kl[4][s], loss[0][s], loss[1][s],
                      loss[2][s]);
    for (int s = 1; s <= 8; s++)
        assert_true(isnan(kl[0][s])); /* no reference, no row */
    /* before the first update the policy is the reference: exactly, where the KL is a loss term
     * (the same forward on the same weights); to round-off at the rollout's log-probs (the
     * decode path's) where it is a reward penalty */
    assert_true(kl[1][1] == 0.0 && kl[2][1] == 0.0);
    assert_true(fabs(kl[3][1]) < 1e-6 && fabs(kl[4][1]) < 1e-6);
    for (int a = 1; a <= 4; a++)
        for (int s = 2; s <= 8; s++)
            assert_true(kl[a][s] > 1e-6); /* k3 and k2 are >= 0; the policy drifts */
    /* the KL term takes part in the update: from step 2 the loss differs from no KL */
    int differs = 0;
    for (int s = 2; s <= 8; s++)
        differs += loss[2][s] != loss[0][s];
    assert_true(differs > 0);
    /* and it regularises: a strong coefficient ends nearer the reference */
    assert_true(kl[2][8] < kl[1][8]);
    assert_true(kl[4][8] < kl[3][8]);
}

/* GSPO's sequence ratio and CISPO train end to end (the packing keeps a sequence's tokens in one
 * micro-batch, as the sequence ratio needs). With one update per batch the policy IS the
 * rollout's (ratio 1 to round-off), where PPO, GSPO and CISPO have the same gradient; with
 * grpo.ppo_epochs = 2 the second update is off-policy and the three part ways. */
static void test_policy_loss_variants_train(void **state) {
    fixture *f = *state;
    double kl[4][9], loss[4][9];
    run_chord_job(f, "", kl[0], loss[0]);
    run_chord_job(f, ", \"ppo_epochs\": 2", kl[1], loss[1]);
    run_chord_job(f, ", \"ppo_epochs\": 2, \"ratio_level\": \"sequence\"", kl[2], loss[2]);
    run_chord_job(f, ", \"ppo_epochs\": 2, \"policy_loss\": \"cispo\", \"clip_high\": 0.28", kl[3],
                  loss[3]);
    int differs[4] = {0, 0, 0, 0};
    for (int s = 1; s <= 8; s++) {
        print_message("step %d: loss 1 epoch %.6f; 2 epochs: ppo %.6f, gspo %.6f, cispo %.6f\n", s,
                      loss[0][s], loss[1][s], loss[2][s], loss[3][s]);
        for (int a = 1; a < 4; a++) {
            assert_true(isfinite(loss[a][s]));
            differs[a] += loss[a][s] != loss[a == 1 ? 0 : 1][s];
        }
    }
    assert_true(differs[1] > 0); /* a second epoch changes the training */
    assert_true(differs[2] > 0); /* off-policy, GSPO's sequence ratio is not PPO's */
    assert_true(differs[3] > 0); /* nor is CISPO */
}

/* sampling.overlong "mask" (DAPO's overlong filtering): a truncated response stays in its
 * group's advantages but trains nothing. A random-init model runs every response to the
 * 6-token limit, so the masked job trains on the expert batch alone; "penalty" keeps them. */
static void test_overlong(void **state) {
    fixture *f = *state;
    static const char *const modes[] = {"null", "{\"mode\": \"mask\"}",
                                        "{\"mode\": \"penalty\", \"buffer_tokens\": 4}"};
    double pol[3][4], trunc[3][4], expert[3][4];
    for (int a = 0; a < 3; a++) {
        char json[4096];
        snprintf(json, sizeof json,
                 "{" TINY_MODEL ", \"algorithm\": \"chord\", \"chord\": {\"mu\": 0.5}, "
                 "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4, "
                 "\"entropy_coef\": 1e-3}, \"expert_per_step\": 8, "
                 "\"sampling\": {\"max_new_tokens\": 6, \"overlong\": %s}, "
                 "\"optimizer\": {\"lr\": 0.01}, \"steps\": 3, \"seed\": 2, "
                 "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}",
                 modes[a]);
        run_log *r = new_log();
        chord_err err = {0};
        if (run_job(f, json, f->prompts, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
            fail_msg("%s: %s", modes[a], err.msg);
        for (int s = 1; s <= 3; s++) {
            pol[a][s] = value(r, s, "policy_tokens");
            trunc[a][s] = value(r, s, "truncated_frac");
            expert[a][s] = value(r, s, "expert_tokens");
        }
        free(r);
    }
    for (int s = 1; s <= 3; s++) {
        print_message("step %d: policy tokens %.0f / masked %.0f / penalty %.0f (truncated %.2f)\n",
                      s, pol[0][s], pol[1][s], pol[2][s], trunc[1][s]);
        assert_true(trunc[1][s] == 1.0 && pol[0][s] == 16 * 6);
        assert_true(pol[1][s] == 0.0 && expert[1][s] > 0); /* masked: the SFT half trains */
        assert_true(pol[2][s] == pol[0][s]);
    }
}

/* grpo.filter_groups (DAPO's dynamic sampling): groups whose rewards are all equal are dropped
 * and more batches of B prompts drawn, up to max_sample_batches; every group trained on has an
 * advantage, the metrics say what was drawn and dropped, and without the filter the same job
 * trains on zero-advantage groups. */
static void test_dynamic_sampling(void **state) {
    fixture *f = *state;
    double drawn[2][6], dropped[2][6], zero[2][6];
    for (int a = 0; a < 2; a++) {
        char json[4096];
        snprintf(json, sizeof json,
                 "{" TINY_MODEL ", \"algorithm\": \"grpo\", "
                 "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4%s}, "
                 "\"sampling\": {\"max_new_tokens\": 4}, "
                 "\"reward\": {\"type\": \"regex\", \"pattern\": \"^[^ ]{0,9}$\"}, "
                 "\"optimizer\": {\"lr\": 0.01}, \"steps\": 5, \"seed\": 2, "
                 "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}",
                 a ? ", \"filter_groups\": true, \"max_sample_batches\": 6" : "");
        run_log *r = new_log();
        chord_err err = {0};
        if (run_job(f, json, f->prompts, NULL, NULL, NULL, r, &err) != TRAINER_DONE)
            fail_msg("%s", err.msg);
        for (int s = 1; s <= 5; s++) {
            drawn[a][s] = value(r, s, "prompts_drawn");
            dropped[a][s] = value(r, s, "groups_dropped");
            zero[a][s] = value(r, s, "zero_adv_groups");
        }
        free(r);
    }
    double zero_plain = 0;
    int filled = 0; /* steps that found all B informative groups */
    for (int s = 1; s <= 5; s++) {
        print_message("step %d: plain zero-adv groups %.2f; filtered: drawn %.0f, dropped %.0f, "
                      "zero-adv %.2f\n",
                      s, zero[0][s], drawn[1][s], dropped[1][s], zero[1][s]);
        assert_true(isnan(drawn[0][s]) && isnan(dropped[0][s])); /* no filter, no rows */
        zero_plain += zero[0][s];
        double d = drawn[1][s];
        assert_true(d >= 4 && d <= 24 && fmod(d, 4) == 0); /* whole batches, at most 6 */
        double kept = d - dropped[1][s];
        assert_true(kept >= 0 && kept <= 4);
        assert_true(kept == 4 || d == 24); /* B informative groups, or the batches ran out */
        if (kept == 4) assert_true(zero[1][s] == 0.0); /* every group trained on has a signal */
        filled += kept == 4 && d < 24;
    }
    assert_true(zero_plain > 0); /* the filter removed something the plain job trained on */
    assert_true(filled > 0);     /* and some step stopped drawing once it had B groups */
}

/* ---- the prompt shared in the training pass (grpo.share_prompt) ----------------------------- */

/* A group's G responses run their prompt once (model_batch.seg_parent): the same job with and
 * without it takes the same steps to fp32 round-off — the same samples, loss, KL to the
 * reference (whose forward shares too) and entropy — while the shared job reports the rows it
 * saved. The exact equality of the shared pass itself is test_model.c's. */
static void test_share_prompt_is_exact(void **state) {
    fixture *f = *state;
    double v[2][5][5], shared[5] = {0};
    static const char *const names[5] = {"loss", "kl", "reward_mean", "entropy", "grad_norm"};
    for (int a = 0; a < 2; a++) {
        char json[4096];
        snprintf(json, sizeof json,
                 "{" TINY_MODEL ", \"algorithm\": \"chord\", \"chord\": {\"mu\": 0.5}, "
                 "\"grpo\": {\"group_size\": 4, \"prompts_per_step\": 4, \"kl_coef\": 0.5, "
                 "\"entropy_coef\": 1e-3, \"share_prompt\": %s}, \"expert_per_step\": 8, "
                 "\"sampling\": {\"max_new_tokens\": 6}, \"micro_batch_tokens\": 48, "
                 "\"reward\": {\"type\": \"regex\", \"pattern\": \"^\\\\s*[0-9]\"}, "
                 "\"optimizer\": {\"lr\": 0.01}, \"steps\": 4, \"seed\": 3, "
                 "\"checkpoint_every\": 0, \"eval\": {\"every\": 0}}",
                 a ? "true" : "false");
        run_log *r = new_log();
        chord_err err = {0};
        if (run_job(f, json, f->prompts, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
            fail_msg("share_prompt %d: %s", a, err.msg);
        for (int s = 1; s <= 4; s++) {
            for (int k = 0; k < 5; k++)
                v[a][k][s] = value(r, s, names[k]);
            if (a)
                shared[s] = value(r, s, "prompt_rows_shared");
            else
                assert_true(isnan(value(r, s, "prompt_rows_shared"))); /* no row without it */
        }
        free(r);
    }
    for (int s = 1; s <= 4; s++) {
        print_message("step %d: loss %.7f / %.7f, kl %.3g / %.3g; %.0f prompt rows shared\n", s,
                      v[0][0][s], v[1][0][s], v[0][1][s], v[1][1][s], shared[s]);
        assert_true(shared[s] > 0);
        assert_true(v[0][2][s] == v[1][2][s]); /* the same samples, step after step */
        for (int k = 0; k < 5; k++)
            if (!(fabs(v[0][k][s] - v[1][k][s]) <= 1e-4 * (1 + fabs(v[0][k][s]))))
                fail_msg("step %d: %s %.8g unshared, %.8g shared", s, names[k], v[0][k][s],
                         v[1][k][s]);
    }
}

/* ---- checkpoints are model directories ------------------------------------------------------ */

static void test_checkpoint_is_loadable(void **state) {
    fixture *f = *state;
    char json[4096];
    snprintf(json, sizeof json,
             "{" TINY_MODEL ", \"algorithm\": \"sft\", \"expert_per_step\": 4, "
             "\"steps\": 1, \"seed\": 1, \"checkpoint_every\": 0, \"eval\": {\"every\": 0}}");
    run_log *r = new_log();
    chord_err err = {0};
    if (run_job(f, json, NULL, f->expert, NULL, NULL, r, &err) != TRAINER_DONE)
        fail_msg("%s", err.msg);
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/step_1", r->ckdir);
    static const char *files[] = {
        "config.json",           "model.safetensors",  "tokenizer.json", "tokenizer_config.json",
        "optimizer.safetensors", "trainer_state.json", "job.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (!chord_is_file(path)) fail_msg("checkpoint lacks %s", files[i]);
    }
    model *m = NULL;
    if (model_load(dir, f->ops, &m, &err) != 0) fail_msg("model_load: %s", err.msg);
    assert_int_equal(m->cfg.vocab_size, 1024);
    model_free(m);
    tok_tokenizer *tok = NULL, *def = NULL;
    if (tok_load(dir, &tok, &err) != 0) fail_msg("tok_load: %s", err.msg);
    assert_int_equal(tok_load_default(&def, &err), 0);
    /* the saved tokenizer is the embedded one: same vocabulary, same encoding */
    assert_int_equal(tok_vocab_size(tok), tok_vocab_size(def));
    tok_ids a = {0}, b = {0};
    const char *text = "Compute 37+48. 37+48=85 \\boxed{85}";
    assert_int_equal(tok_encode(tok, text, strlen(text), 0, &a, &err), 0);
    assert_int_equal(tok_encode(def, text, strlen(text), 0, &b, &err), 0);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    tok_ids_free(&a);
    tok_ids_free(&b);
    tok_free(tok);
    tok_free(def);
    free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sft_drives_nll_down),
        cmocka_unit_test(test_grpo_raises_reward),
        cmocka_unit_test(test_chord_mu_beats_grpo),
        cmocka_unit_test(test_resume_repeats_metrics),
        cmocka_unit_test(test_lora_job),
        cmocka_unit_test(test_verifier_errors_are_excluded),
        cmocka_unit_test(test_zero_advantage_skip_is_exact),
        cmocka_unit_test(test_kl_to_reference),
        cmocka_unit_test(test_policy_loss_variants_train),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_dynamic_sampling),
        cmocka_unit_test(test_share_prompt_is_exact),
        cmocka_unit_test(test_checkpoint_is_loadable),
    };
    /* CHORD_TEST_ONLY=test_kl_to_reference runs the one test (a glob, cmocka's filter) */
    if (getenv("CHORD_TEST_ONLY")) cmocka_set_test_filter(getenv("CHORD_TEST_ONLY"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
