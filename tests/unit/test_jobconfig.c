/* test_jobconfig.c — the job document: ALGORITHM.md's preset defaults, overrides, errors that
 * name the field by its JSON path, and the resolved document's round trip. Expected numbers are
 * ALGORITHM.md's table and DESIGN.md's example, typed in here. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/base/fileutil.h"
#include "server/model/model.h"
#include "server/train/jobconfig.h"

/* cmocka 1.1.5 has no assert_double_equal: |got − want| <= tol, printing both. */
#define assert_near(got, want, tol) near_check((got), (want), (tol), #got, __LINE__)
static void near_check(double got, double want, double tol, const char *expr, int line) {
    if (!(fabs(got - want) <= tol))
        fail_msg("line %d: %s = %.17g, want %.17g", line, expr, got, want);
}

#define MODEL "\"model\": {\"path\": \"tiny\"}"
#define TINY_CONFIG                                                                                \
    "{\"model_type\": \"qwen2\", \"vocab_size\": 300, \"hidden_size\": 64,"                        \
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"           \
    " \"intermediate_size\": 128}"
#define BOTH_DATA "\"data\": {\"prompts\": \"p.jsonl\", \"expert\": \"e.jsonl\"}"

static void parse_ok(const char *text, job_config *cfg) {
    chord_err err = {0};
    int rc = jobconfig_parse(text, cfg, &err);
    if (rc != 0) fail_msg("parse failed: %s\n%s", err.msg, text);
}

/* The document must be rejected with a message containing `want`. */
static void parse_fails(const char *text, const char *want) {
    job_config cfg;
    chord_err err = {0};
    int rc = jobconfig_parse(text, &cfg, &err);
    if (rc == 0) {
        jobconfig_free(&cfg);
        fail_msg("accepted: %s", text);
    }
    if (!strstr(err.msg, want)) fail_msg("error \"%s\" lacks \"%s\" for %s", err.msg, want, text);
    assert_int_equal(err.code, CHORD_E_INVALID);
}

static void test_chord_defaults(void **state) {
    (void)state;
    job_config c;
    parse_ok("{" MODEL ", " BOTH_DATA "}", &c);
    assert_int_equal(c.algorithm, JOB_ALGO_CHORD); /* the product's default */
    assert_int_equal(c.mu.kind, JOB_MU_SCHEDULE);
    assert_int_equal(c.mu.warmup_steps, 200);
    assert_int_equal(c.mu.decay_steps, 400);
    assert_near(c.mu.peak, 0.5, 0);
    assert_near(c.mu.valley, 0.02, 0);
    assert_true(c.phi);
    assert_int_equal(c.grpo.group_size, 8);
    assert_int_equal(c.grpo.prompts_per_step, 32);
    assert_near(c.grpo.clip_low, 0.2, 0);
    assert_near(c.grpo.clip_high, 0.2, 0);
    assert_near(c.grpo.dual_clip, 0.0, 0);
    assert_near(c.grpo.kl_coef, 0.0, 0);
    assert_near(c.grpo.entropy_coef, 0.0, 0);
    assert_int_equal(c.expert_per_step, 64);
    assert_near(c.sampling.temperature, 1.0, 0);
    assert_near(c.sampling.top_p, 1.0, 0);
    assert_near(c.optimizer.lr, 1e-6, 0);
    assert_int_equal(c.optimizer.schedule, JOB_LR_CONSTANT);
    assert_near(c.optimizer.weight_decay, 0.01, 0);
    assert_near(c.optimizer.beta1, 0.9, 0);
    assert_near(c.optimizer.beta2, 0.999, 0);
    assert_near(c.optimizer.grad_clip, 1.0, 0);
    assert_string_equal(json_string_value(json_object_get(c.reward, "type")), "math_boxed");
    assert_string_equal(c.model_path, "tiny");
    assert_null(c.model_init_config);
    assert_string_equal(c.data_prompts, "p.jsonl");
    assert_string_equal(c.data_expert, "e.jsonl");
    assert_null(c.data_eval);
    assert_string_equal(c.device, "auto");
    assert_int_equal(c.eval.max_new_tokens, c.sampling.max_new_tokens);
    jobconfig_free(&c);
    jobconfig_free(&c); /* idempotent */
}

static void test_preset_table(void **state) {
    (void)state;
    struct {
        const char *name;
        job_mu_kind kind;
        int64_t w, d;
        double peak, valley;
        int phi;
        const char *data;
    } rows[] = {
        {"sft", JOB_MU_SFT, 0, 0, 0, 0, 0, "\"data\": {\"expert\": \"e\"}"},
        {"grpo", JOB_MU_GRPO, 0, 0, 0, 0, 0, "\"data\": {\"prompts\": \"p\"}"},
        {"sft_then_grpo", JOB_MU_SFT_THEN_GRPO, 0, 0, 0, 0, 0, BOTH_DATA},
        {"chord_mu", JOB_MU_SCHEDULE, 0, 200, 0.9, 0.05, 0, BOTH_DATA},
        {"chord_phi", JOB_MU_SCHEDULE, 0, 0, 0.1, 0.1, 1, BOTH_DATA},
        {"chord", JOB_MU_SCHEDULE, 200, 400, 0.5, 0.02, 1, BOTH_DATA},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char doc[512];
        snprintf(doc, sizeof doc, "{" MODEL ", %s, \"algorithm\": \"%s\", \"steps\": 100}",
                 rows[i].data, rows[i].name);
        job_config c;
        parse_ok(doc, &c);
        assert_string_equal(jobconfig_algorithm_name(c.algorithm), rows[i].name);
        assert_int_equal(c.mu.kind, rows[i].kind);
        assert_int_equal(c.phi, rows[i].phi);
        if (rows[i].kind == JOB_MU_SCHEDULE) {
            assert_int_equal(c.mu.warmup_steps, rows[i].w);
            assert_int_equal(c.mu.decay_steps, rows[i].d);
            assert_near(c.mu.peak, rows[i].peak, 0);
            assert_near(c.mu.valley, rows[i].valley, 0);
        }
        /* sft_then_grpo: half the steps of SFT unless told */
        assert_int_equal(c.sft_steps, rows[i].kind == JOB_MU_SFT_THEN_GRPO ? 50 : 0);
        jobconfig_free(&c);
    }
}

/* DESIGN.md's example document, every knob set. */
static const char *const full_doc =
    "{\"name\": \"math-chord\","
    " \"model\": {\"init\": {\"config\": " TINY_CONFIG ","
    "   \"seed\": 7, \"tokenizer\": \"demo-tok\"}},"
    " \"data\": {\"prompts\": \"ds_p\", \"expert\": \"ds_e\", \"eval\": \"ds_v\"},"
    " \"algorithm\": \"chord\","
    " \"chord\": {\"mu\": {\"warmup_steps\": 20, \"decay_steps\": 40, \"peak\": 0.6,"
    "   \"valley\": 0.03}, \"phi\": false, \"sft_steps\": 0},"
    " \"grpo\": {\"group_size\": 4, \"prompts_per_step\": 16, \"clip_low\": 0.1,"
    "   \"clip_high\": 0.28, \"dual_clip\": 3, \"kl_coef\": 0.001, \"entropy_coef\": 0.002},"
    " \"expert_per_step\": 12,"
    " \"sampling\": {\"temperature\": 0.9, \"top_p\": 0.95, \"max_new_tokens\": 64},"
    " \"optimizer\": {\"lr\": 3e-4, \"schedule\": \"cosine\", \"warmup_steps\": 5,"
    "   \"weight_decay\": 0.1, \"betas\": [0.8, 0.95], \"eps\": 1e-6, \"grad_clip\": 0.5,"
    "   \"min_lr_ratio\": 0.1},"
    " \"micro_batch_tokens\": 2048,"
    " \"reward\": {\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/r\", \"timeout_ms\": 500},"
    " \"steps\": 300, \"seed\": 1234, \"checkpoint_every\": 25, \"keep_checkpoints\": 2,"
    " \"eval\": {\"every\": 10, \"k\": 8, \"temperature\": 0.0, \"max_new_tokens\": 32},"
    " \"device\": \"cuda:0,1\"}";

static void test_full_document(void **state) {
    (void)state;
    job_config c;
    parse_ok(full_doc, &c);
    assert_string_equal(c.name, "math-chord");
    assert_null(c.model_path);
    assert_int_equal(json_integer_value(json_object_get(c.model_init_config, "hidden_size")), 64);
    assert_int_equal(c.model_init_seed, 7);
    assert_string_equal(c.model_init_tokenizer, "demo-tok");
    assert_string_equal(c.data_eval, "ds_v");
    assert_int_equal(c.mu.warmup_steps, 20);
    assert_int_equal(c.mu.decay_steps, 40);
    assert_near(c.mu.peak, 0.6, 0);
    assert_near(c.mu.valley, 0.03, 0);
    assert_false(c.phi);
    assert_int_equal(c.grpo.group_size, 4);
    assert_int_equal(c.grpo.prompts_per_step, 16);
    assert_near(c.grpo.clip_low, 0.1, 0);
    assert_near(c.grpo.clip_high, 0.28, 0);
    assert_near(c.grpo.dual_clip, 3.0, 0);
    assert_near(c.grpo.kl_coef, 0.001, 0);
    assert_near(c.grpo.entropy_coef, 0.002, 0);
    assert_int_equal(c.expert_per_step, 12);
    assert_near(c.sampling.temperature, 0.9, 0);
    assert_near(c.sampling.top_p, 0.95, 0);
    assert_int_equal(c.sampling.max_new_tokens, 64);
    assert_near(c.optimizer.lr, 3e-4, 0);
    assert_int_equal(c.optimizer.schedule, JOB_LR_COSINE);
    assert_int_equal(c.optimizer.warmup_steps, 5);
    assert_near(c.optimizer.weight_decay, 0.1, 0);
    assert_near(c.optimizer.beta1, 0.8, 0);
    assert_near(c.optimizer.beta2, 0.95, 0);
    assert_near(c.optimizer.eps, 1e-6, 0);
    assert_near(c.optimizer.grad_clip, 0.5, 0);
    assert_near(c.optimizer.min_lr_ratio, 0.1, 0);
    assert_int_equal(c.micro_batch_tokens, 2048);
    assert_string_equal(json_string_value(json_object_get(c.reward, "type")), "webhook");
    assert_int_equal(json_integer_value(json_object_get(c.reward, "timeout_ms")), 500);
    assert_int_equal(c.steps, 300);
    assert_int_equal(c.seed, 1234);
    assert_int_equal(c.checkpoint_every, 25);
    assert_int_equal(c.keep_checkpoints, 2);
    assert_int_equal(c.eval.every, 10);
    assert_int_equal(c.eval.k, 8);
    assert_near(c.eval.temperature, 0.0, 0);
    assert_int_equal(c.eval.max_new_tokens, 32);
    assert_string_equal(c.device, "cuda:0,1");
    jobconfig_free(&c);
}

static void test_mu_forms(void **state) {
    (void)state;
    job_config c;
    parse_ok("{" MODEL ", " BOTH_DATA ", \"algorithm\": \"chord_mu\","
             " \"chord\": {\"mu\": {\"adaptive\": {\"tau\": 0.7}}}}",
             &c);
    assert_int_equal(c.mu.kind, JOB_MU_ADAPTIVE);
    assert_near(c.mu.tau, 0.7, 0);
    jobconfig_free(&c);
    parse_ok("{" MODEL ", " BOTH_DATA ", \"chord\": {\"mu\": {\"adaptive\": {}}}}", &c);
    assert_int_equal(c.mu.kind, JOB_MU_ADAPTIVE);
    assert_near(c.mu.tau, 0.5, 0); /* the paper's τ */
    jobconfig_free(&c);
    /* a number is a constant μ; a partial schedule keeps the preset's other values */
    parse_ok("{" MODEL ", " BOTH_DATA ", \"chord\": {\"mu\": 0.25}}", &c);
    assert_int_equal(c.mu.kind, JOB_MU_SCHEDULE);
    assert_int_equal(c.mu.warmup_steps + c.mu.decay_steps, 0);
    assert_near(c.mu.valley, 0.25, 0);
    jobconfig_free(&c);
    parse_ok("{" MODEL ", " BOTH_DATA ", \"chord\": {\"mu\": {\"peak\": 0.8}}}", &c);
    assert_near(c.mu.peak, 0.8, 0);
    assert_int_equal(c.mu.decay_steps, 400);
    assert_near(c.mu.valley, 0.02, 0);
    jobconfig_free(&c);
    /* integers written as reals, and null meaning "default" */
    parse_ok("{" MODEL ", \"steps\": 1e3, \"grpo\": {\"dual_clip\": null},"
             " \"data\": {\"prompts\": \"p\", \"expert\": \"e\", \"eval\": null}}",
             &c);
    assert_int_equal(c.steps, 1000);
    assert_near(c.grpo.dual_clip, 0.0, 0);
    assert_null(c.data_eval);
    jobconfig_free(&c);
}

static void test_errors_name_the_field(void **state) {
    (void)state;
    struct {
        const char *body; /* after MODEL and BOTH_DATA */
        const char *want;
    } cases[] = {
        {"\"grpo\": {\"clipp_low\": 0.1}", "unknown field \"grpo.clipp_low\""},
        {"\"stepz\": 3", "unknown field \"stepz\" (allowed: name, model, data, algorithm"},
        {"\"chord\": {\"mu\": {\"adaptive\": {\"tua\": 1}}}",
         "unknown field \"chord.mu.adaptive.tua\""},
        {"\"grpo\": {\"clip_low\": 1.0}", "grpo.clip_low: must be in [0, 1), got 1"},
        {"\"grpo\": {\"clip_low\": -0.1}", "grpo.clip_low: must be in [0, 1)"},
        {"\"grpo\": {\"clip_low\": \"0.2\"}", "grpo.clip_low: must be a number, got a string"},
        {"\"grpo\": {\"clip_high\": -1}", "grpo.clip_high: must be >= 0"},
        {"\"grpo\": {\"group_size\": -1}", "grpo.group_size: must be positive"},
        {"\"grpo\": {\"prompts_per_step\": 2.5}",
         "grpo.prompts_per_step: must be an integer, got 2.5"},
        {"\"grpo\": {\"dual_clip\": 0.5}", "grpo.dual_clip: must be null (off) or a number > 1"},
        {"\"grpo\": {\"kl_coef\": -0.1}", "grpo.kl_coef: must be >= 0"},
        {"\"grpo\": 3", "grpo: must be an object"},
        {"\"lora\": {\"rank\": 0}", "lora.rank: must be in [1, 1024], got 0"},
        {"\"lora\": {\"alpha\": 0}", "lora.alpha: must be"},
        {"\"lora\": {\"dropout\": 1.0}", "lora.dropout: must be in [0, 1), got 1"},
        {"\"lora\": {\"train_embeddings\": 1}", "lora.train_embeddings: must be true or false, got 1"},
        {"\"lora\": {\"target_modules\": [\"q_proj\", \"lm_head\"]}",
         "lora.target_modules[1]: \"lm_head\" is none of"},
        {"\"lora\": {\"target_modules\": \"all\"}", "lora.target_modules: \"all\" is not"},
        {"\"lora\": {\"target_modules\": []}", "lora.target_modules: empty"},
        {"\"lora\": {\"rnak\": 4}", "unknown field \"lora.rnak\""},
        {"\"steps\": -5", "steps: must be positive, got -5"},
        {"\"steps\": 0", "steps: must be positive"},
        {"\"steps\": true", "steps: must be an integer"},
        {"\"seed\": -1", "seed: must be >= 0"},
        {"\"checkpoint_every\": -1", "checkpoint_every: must be >= 0"},
        {"\"keep_checkpoints\": -2", "keep_checkpoints: must be >= 0"},
        {"\"micro_batch_tokens\": 0", "micro_batch_tokens: must be positive"},
        {"\"expert_per_step\": 0", "expert_per_step: must be positive"},
        {"\"algorithm\": \"chrod\"", "algorithm: must be one of"},
        {"\"algorithm\": 3", "algorithm: must be one of"},
        {"\"chord\": {\"mu\": {\"peak\": 1.5}}", "chord.mu.peak: must be in [0, 1]"},
        {"\"chord\": {\"mu\": {\"warmup_steps\": -1}}", "chord.mu.warmup_steps: must be >= 0"},
        {"\"chord\": {\"mu\": {\"adaptive\": {\"tau\": 0.5}, \"peak\": 0.5}}", "chord.mu: give"},
        {"\"chord\": {\"mu\": \"cosine\"}", "chord.mu: must be an object"},
        {"\"chord\": {\"phi\": 1}", "chord.phi: must be true or false, got 1"},
        {"\"chord\": {\"sft_steps\": 5}", "chord.sft_steps: only used by algorithm"},
        {"\"algorithm\": \"grpo\", \"chord\": {\"mu\": 0.5}",
         "chord.mu: not used by algorithm \"grpo\""},
        {"\"algorithm\": \"grpo\", \"chord\": {\"phi\": true}", "chord.phi: algorithm \"grpo\""},
        {"\"algorithm\": \"sft_then_grpo\", \"steps\": 10, \"chord\": {\"sft_steps\": 11}",
         "chord.sft_steps: must be in [1, steps]"},
        {"\"sampling\": {\"temperature\": 0}", "sampling.temperature: must be positive"},
        {"\"sampling\": {\"top_p\": 0}", "sampling.top_p: must be in (0, 1]"},
        {"\"sampling\": {\"top_p\": 1.01}", "sampling.top_p: must be in (0, 1]"},
        {"\"sampling\": {\"max_new_tokens\": 0}", "sampling.max_new_tokens: must be positive"},
        {"\"optimizer\": {\"lr\": 0}", "optimizer.lr: must be positive"},
        {"\"optimizer\": {\"lr\": 1e400}", "invalid JSON"}, /* overflow, not infinity */
        {"\"optimizer\": {\"lr\": NaN}", "invalid JSON"},
        {"\"optimizer\": {\"schedule\": \"exp\"}", "optimizer.schedule: must be"},
        {"\"optimizer\": {\"betas\": [0.9]}", "optimizer.betas: must be an array of two numbers"},
        {"\"optimizer\": {\"betas\": [0.9, 1.0]}", "optimizer.betas[1]: must be in [0, 1)"},
        {"\"optimizer\": {\"betas\": [\"a\", 0.9]}", "optimizer.betas[0]: must be a number"},
        {"\"optimizer\": {\"min_lr_ratio\": 2}", "optimizer.min_lr_ratio: must be in [0, 1]"},
        {"\"optimizer\": {\"eps\": 0}", "optimizer.eps: must be positive"},
        {"\"optimizer\": {\"warmup_steps\": -3}", "optimizer.warmup_steps: must be >= 0"},
        {"\"reward\": \"math_boxed\"", "reward: must be an object"},
        {"\"eval\": {\"k\": 0}", "eval.k: must be positive"},
        {"\"eval\": {\"every\": -1}", "eval.every: must be >= 0"},
        {"\"eval\": {\"temperature\": -1}", "eval.temperature: must be >= 0"},
        {"\"device\": \"gpu\"", "device: must be"},
        {"\"device\": \"cuda:\"", "device: must be"},
        {"\"name\": \"\"", "name: must not be empty"},
        {"\"name\": 5", "name: must be a string"},
        {"\"steps\": 3, \"steps\": 4", "invalid JSON"}, /* duplicate keys */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char doc[1024];
        snprintf(doc, sizeof doc, "{" MODEL ", " BOTH_DATA ", %s}", cases[i].body);
        parse_fails(doc, cases[i].want);
    }
    /* the model and the datasets each algorithm needs */
    parse_fails("{" BOTH_DATA "}", "model: required");
    parse_fails("{\"model\": {\"path\": \"a\", \"init\": {\"config\": {}}}, " BOTH_DATA "}",
                "model: give path or init, not both");
    parse_fails("{\"model\": {}, " BOTH_DATA "}", "model: needs path or init");
    parse_fails("{\"model\": {\"init\": {\"seed\": 1}}, " BOTH_DATA "}",
                "model.init.config: required");
    parse_fails("{\"model\": {\"init\": {\"config\": {}, \"sed\": 1}}, " BOTH_DATA "}",
                "unknown field \"model.init.sed\"");
    parse_fails("{\"model\": {\"path\": 3}, " BOTH_DATA "}", "model.path: must be a string");
    parse_fails("{" MODEL ", \"algorithm\": \"grpo\"}",
                "data.prompts: required by algorithm \"grpo\"");
    parse_fails("{" MODEL ", \"algorithm\": \"sft\", \"data\": {\"prompts\": \"p\"}}",
                "data.expert: required by algorithm \"sft\"");
    parse_fails("{" MODEL ", \"data\": {\"prompts\": \"p\"}}",
                "data.expert: required by algorithm \"chord\"");
    parse_fails("{" MODEL ", \"algorithm\": \"chord_phi\", \"data\": {\"expert\": \"e\"}}",
                "data.prompts: required by algorithm \"chord_phi\"");
    parse_fails("{" MODEL ", \"data\": {\"prompts\": \"p\", \"expret\": \"e\"}}",
                "unknown field \"data.expret\"");
    /* the reward and the model config are checked by their own parsers, named by path */
    parse_fails("{" MODEL ", " BOTH_DATA ", \"reward\": {\"type\": \"nope\"}}", "reward.type");
    parse_fails("{" MODEL ", " BOTH_DATA ", \"reward\": {\"type\": \"exact\", \"x\": 1}}",
                "reward.x");
    parse_fails("{" MODEL ", " BOTH_DATA ", \"reward\": {\"type\": \"sum\", \"terms\": "
                "[{\"type\": \"math_boxed\"}, {\"type\": \"format\", \"weight\": true}]}}",
                "reward.terms[1].weight");
    parse_fails("{\"model\": {\"init\": {\"config\": {\"model_type\": \"qwen2\"}}}, " BOTH_DATA "}",
                "model.init.config: vocab_size");
    parse_fails("[1, 2]", "job: must be a JSON object");
    parse_fails("{\"model\": ", "invalid JSON at line 1");
}

static void assert_same_config(const job_config *a, const job_config *b) {
    assert_string_equal(a->name, b->name);
    if (a->model_path || b->model_path) assert_string_equal(a->model_path, b->model_path);
    assert_true(json_equal(a->model_init_config, b->model_init_config) ||
                (!a->model_init_config && !b->model_init_config));
    assert_int_equal(a->model_init_seed, b->model_init_seed);
    assert_int_equal(!a->model_init_tokenizer, !b->model_init_tokenizer);
    if (a->model_init_tokenizer)
        assert_string_equal(a->model_init_tokenizer, b->model_init_tokenizer);
    const char *da[3] = {a->data_prompts, a->data_expert, a->data_eval};
    const char *db[3] = {b->data_prompts, b->data_expert, b->data_eval};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(!da[i], !db[i]);
        if (da[i]) assert_string_equal(da[i], db[i]);
    }
    assert_int_equal(a->algorithm, b->algorithm);
    assert_memory_equal(&a->mu, &b->mu, sizeof a->mu);
    assert_int_equal(a->phi, b->phi);
    assert_int_equal(a->sft_steps, b->sft_steps);
    assert_memory_equal(&a->grpo, &b->grpo, sizeof a->grpo);
    assert_int_equal(a->expert_per_step, b->expert_per_step);
    assert_memory_equal(&a->sampling, &b->sampling, sizeof a->sampling);
    assert_memory_equal(&a->optimizer, &b->optimizer, sizeof a->optimizer);
    assert_int_equal(a->micro_batch_tokens, b->micro_batch_tokens);
    assert_memory_equal(&a->lora, &b->lora, sizeof a->lora);
    assert_true(json_equal(a->reward, b->reward));
    assert_int_equal(a->steps, b->steps);
    assert_int_equal(a->seed, b->seed);
    assert_int_equal(a->checkpoint_every, b->checkpoint_every);
    assert_int_equal(a->keep_checkpoints, b->keep_checkpoints);
    assert_memory_equal(&a->eval, &b->eval, sizeof a->eval);
    assert_string_equal(a->device, b->device);
}

/* parse → resolved JSON text → parse gives the same struct, and resolving again is stable. */
static void round_trip(const char *text) {
    job_config a, b;
    parse_ok(text, &a);
    json_t *ja = jobconfig_to_json(&a);
    assert_non_null(ja);
    char *dumped = json_dumps(ja, JSON_COMPACT);
    assert_non_null(dumped);
    parse_ok(dumped, &b);
    assert_same_config(&a, &b);
    json_t *jb = jobconfig_to_json(&b);
    assert_true(json_equal(ja, jb));
    /* every knob is present in the resolved document */
    json_t *grpo = json_object_get(ja, "grpo");
    assert_true(json_is_real(json_object_get(grpo, "clip_low")));
    assert_non_null(json_object_get(grpo, "dual_clip"));
    assert_true(json_is_array(json_object_get(json_object_get(ja, "optimizer"), "betas")));
    free(dumped);
    json_decref(ja);
    json_decref(jb);
    jobconfig_free(&a);
    jobconfig_free(&b);
}

static void test_round_trip(void **state) {
    (void)state;
    round_trip(full_doc);
    const char *names[] = {"sft", "grpo", "sft_then_grpo", "chord_mu", "chord_phi", "chord"};
    for (size_t i = 0; i < 6; i++) {
        char doc[512];
        snprintf(doc, sizeof doc, "{" MODEL ", " BOTH_DATA ", \"algorithm\": \"%s\"}", names[i]);
        round_trip(doc);
    }
    round_trip("{" MODEL ", " BOTH_DATA ", \"chord\": {\"mu\": {\"adaptive\": {\"tau\": 0.3}}},"
               " \"optimizer\": {\"lr\": 0.1, \"betas\": [0.1, 0.2]}, \"seed\": 0}");
    round_trip("{\"model\": {\"init\": {\"config\": " TINY_CONFIG "}}, " BOTH_DATA
               ", \"seed\": 9007199254740993}");
    round_trip("{" MODEL ", " BOTH_DATA ", \"lora\": {\"rank\": 16, \"alpha\": 32, "
               "\"target_modules\": [\"down_proj\", \"q_proj\"]}}");
    round_trip("{" MODEL ", " BOTH_DATA ", \"lora\": {\"target_modules\": \"all-linear\", "
               "\"dropout\": 0.05}}");
    round_trip("{" MODEL ", " BOTH_DATA ", \"lora\": {\"train_embeddings\": true}}");
    /* the defaults are PEFT's: r 8, alpha 8, q_proj + v_proj; no lora: full fine-tuning */
    job_config c;
    parse_ok("{" MODEL ", " BOTH_DATA ", \"lora\": {}}", &c);
    assert_int_equal(c.lora.rank, 8);
    assert_true(c.lora.alpha == 8.0);
    assert_int_equal(c.lora.targets, (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_V));
    assert_int_equal(c.lora.train_embeddings, 0);
    jobconfig_free(&c);
    parse_ok("{" MODEL ", " BOTH_DATA "}", &c);
    assert_int_equal(c.lora.rank, 0);
    json_t *j = jobconfig_to_json(&c);
    assert_true(json_is_null(json_object_get(j, "lora")));
    json_decref(j);
    jobconfig_free(&c);
}

static void test_load_file(void **state) {
    (void)state;
    char dir[] = "/tmp/chord_test_jobconfig_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/job.json", dir);
    const char *bad = "{" MODEL ", " BOTH_DATA ", \"grpo\": {\"clip_low\": 2}}";
    chord_err err = {0};
    assert_int_equal(chord_write_file_atomic(path, bad, strlen(bad), &err), 0);
    job_config c;
    assert_int_equal(jobconfig_load(path, &c, &err), -1);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "grpo.clip_low"));
    assert_int_equal(chord_write_file_atomic(path, full_doc, strlen(full_doc), &err), 0);
    assert_int_equal(jobconfig_load(path, &c, &err), 0);
    assert_int_equal(c.steps, 300);
    jobconfig_free(&c);
    assert_int_equal(jobconfig_load("/nonexistent/job.json", &c, &err), -1);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chord_defaults),
        cmocka_unit_test(test_preset_table),
        cmocka_unit_test(test_full_document),
        cmocka_unit_test(test_mu_forms),
        cmocka_unit_test(test_errors_name_the_field),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
