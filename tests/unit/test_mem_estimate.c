/* test_mem_estimate.c — the device memory estimate (server/train/mem_estimate.c) against figures
 * computed by hand from the formulas in mem_estimate.h for a small Llama config, its parameter
 * count against model_config_num_params, the budget rule (free memory within the operator's
 * limit) and the refusal message: the figures, the breakdown and what to lower, biggest first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "server/model/config.h"
#include "server/model/model.h"
#include "server/train/jobconfig.h"
#include "server/train/mem_estimate.h"

/* V 100, C 8, L 2, Hq 2, Hkv 1, D 4, I 16, untied, no biases, max_position 64. */
#define SMALL                                                                                      \
    "{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 8, "                        \
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, "           \
    "\"intermediate_size\": 16, \"max_position_embeddings\": 64, "                                 \
    "\"tie_word_embeddings\": false}"

static void small_config(model_config *mc) {
    chord_err err = {0};
    int rc = model_config_parse(SMALL, mc, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(mc->head_dim, 4);
}

/* A job on SMALL: 3 prompts x 2 samples, 20 new tokens, micro-batches of 10 tokens. */
static void job_of(const char *algorithm, const char *data, const char *extra, job_config *cfg) {
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"model\": {\"init\": {\"config\": " SMALL "}}, \"data\": %s, "
             "\"algorithm\": \"%s\", \"grpo\": {\"prompts_per_step\": 3, \"group_size\": 2}, "
             "\"sampling\": {\"max_new_tokens\": 20}, \"micro_batch_tokens\": 10%s}",
             data, algorithm, extra);
    chord_err err = {0};
    int rc = jobconfig_parse(doc, cfg, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
}

static void job(const char *extra, job_config *cfg) {
    job_of("grpo",
           strstr(extra, "eval") ? "{\"prompts\": \"p\", \"eval\": \"e\"}" : "{\"prompts\": \"p\"}",
           extra, cfg);
}

/* Parameters: per layer q 8x8 + k, v 2 (8x4) + o 8x8 + MLP 3 (8x16) + norms 2x8 = 592; two
 * layers 1184; embeddings 100x8 and lm_head 100x8; final norm 8: P = 2792. */
static void test_weights(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    mem_estimate e;
    mem_estimate_weights(&mc, &e);
    assert_true(e.params == 2792.0);
    assert_true(e.weights == 4.0 * 2792);
    assert_true(e.total == e.weights);
    assert_true(e.optimizer == 0 && e.activations == 0 && e.kv_cache == 0 && e.sampling == 0);
    assert_int_equal(e.kind, MEM_KIND_WEIGHTS);
}

/* The estimate's own count agrees with the model's across the flags that change it. */
static void test_params_agree_with_model(void **state) {
    (void)state;
    static const char *const configs[] = {
        SMALL,
        "{\"model_type\": \"qwen2\", \"vocab_size\": 151, \"hidden_size\": 24, "
        "\"num_hidden_layers\": 3, \"num_attention_heads\": 6, \"num_key_value_heads\": 2, "
        "\"intermediate_size\": 40, \"tie_word_embeddings\": true}",
        "{\"model_type\": \"qwen3\", \"vocab_size\": 97, \"hidden_size\": 16, \"head_dim\": 8, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
        "\"intermediate_size\": 32}",
        "{\"model_type\": \"llama\", \"vocab_size\": 50, \"hidden_size\": 16, "
        "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"intermediate_size\": 24, "
        "\"attention_bias\": true, \"mlp_bias\": true}",
    };
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        model_config mc;
        chord_err err = {0};
        assert_int_equal(model_config_parse(configs[i], &mc, &err), 0);
        mem_estimate e;
        mem_estimate_weights(&mc, &e);
        assert_true(e.params == (double)model_config_num_params(&mc));
    }
}

/* A GRPO job, 3 prompts x 2 samples, 20 new tokens, micro-batches of 10 tokens:
 *   per layer, per row: 3C 24 + qkv (2+2)4 16 + att 8 + gate/up 32 + lse 2 + rstd 2 = 84
 *   forward row: res (L+1)C 24 + 2 x 84 + h 16 + xf 8 + 10 = 226
 *   backward row: 2 + 2C 16 + dqkv 16 + datt 8 + 3I 48 = 90
 *   rows: the step's 6 sequences of min(2048 + 20, 64) = 64 tokens each are longer than the 10
 *         of micro_batch_tokens, so each trains alone: N = 64
 *   activations: 4 (64 x 316 + 2 x 64 rows x 100) = 132096
 *   sampling: prompts bounded by max_position 64; rows max(3 x 64, 6) = 192 of
 *             C 8 + 84 + 16 + 8 + 10 = 126 floats, and 6 x 100 logits: 4 (24192 + 600) = 99168
 *   KV cache: positions min(2048 + 20, 64) = 64: 4 x 2 L x 6 slots x 64 x 1 x 4 = 24576 */
static void test_job(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    job("", &cfg);
    mem_estimate e;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    assert_int_equal(e.kind, MEM_KIND_JOB);
    assert_true(e.weights == 11168.0);
    assert_true(e.optimizer == 33504.0);
    assert_true(e.tokens == 64.0);
    assert_true(e.activations == 132096.0);
    assert_true(e.sampling == 99168.0);
    assert_true(e.kv_cache == 24576.0);
    assert_true(e.slots == 6.0 && e.positions == 64.0);
    assert_true(e.eval == 0 && e.eval_slots == 0);
    assert_true(e.total == 11168.0 + 33504 + 132096 + 99168 + 24576);
    /* grpo.share_prompt adds attention's expanded layout: G N = 128 rows of 2 qkv 32 + 2 att 16
     * + lse 2 + 4 indices = 54 floats: 4 x 128 x 54 = 27648 */
    cfg.grpo.share_prompt = 1;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    assert_true(e.activations == 132096.0 + 27648.0);
    cfg.grpo.share_prompt = 0;
    jobconfig_free(&cfg);

    /* LoRA rank 2 on q (8 -> 8) and v (8 -> 4): 2 layers x (2 (8 + 8) + 2 (8 + 4)) = 112 adapter
     * parameters: weights + 448, optimizer 12 x 112 = 1344 instead of 33504, and with a KL no
     * reference copy (the base under the adapter) */
    job(", \"lora\": {\"rank\": 2}", &cfg);
    cfg.grpo.kl_coef = 0.1;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    assert_true(e.lora_params == 112.0);
    assert_true(e.weights == 11168.0 + 448.0);
    assert_true(e.optimizer == 1344.0 && e.full_optimizer == 33504.0);
    assert_true(e.reference == 0.0);
    /* and its activations: x A^T of 7 targets per layer kept + the widest projection (I 16)
     * and r as scratch: 4 x 64 rows x (2 x 7 x 2 + 16 + 2) = 11776; none stored in bf16 */
    assert_true(e.activations == 132096.0 + 11776.0);
    assert_true(e.act16_saving == 0.0);
    jobconfig_free(&cfg);

    /* the estimate's adapter size is the engine's (model_lora_attach's layout), not a second
     * formula that could drift: three target sets on the small GQA config, without and with
     * the trained embeddings */
    static const unsigned sets[] = {(1u << MODEL_LORA_Q) | (1u << MODEL_LORA_V), 0x7f,
                                    (1u << MODEL_LORA_O) | (1u << MODEL_LORA_DOWN)};
    char oerr[128];
    ops_ctx *ops = ops_open("cpu", 1, oerr, sizeof oerr);
    assert_non_null(ops);
    for (size_t k = 0; k < 2 * sizeof sets / sizeof sets[0]; k++) { /* then train_embeddings */
        const int emb = k >= sizeof sets / sizeof sets[0];
        model *m = NULL;
        chord_err err = {0};
        assert_int_equal(model_create(&mc, ops, &m, &err), 0);
        model_lora_config lc = {
            .rank = 3, .alpha = 6, .targets = sets[k % 3], .train_embeddings = emb};
        assert_int_equal(model_lora_attach(m, &lc, 1, &err), 0);
        job(emb ? ", \"lora\": {\"rank\": 3, \"train_embeddings\": true}"
                : ", \"lora\": {\"rank\": 3}",
            &cfg);
        cfg.lora.targets = sets[k % 3];
        mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
        assert_true(e.lora_params == (double)model_trainable_params(m));
        jobconfig_free(&cfg);
        model_free(m);
    }
    ops_close(ops);

    /* SFT samples nothing: no training rollouts, no KV cache */
    job_of("sft", "{\"expert\": \"x\"}", "", &cfg);
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    assert_true(e.sampling == 0 && e.kv_cache == 0);
    assert_true(e.total == 11168.0 + 33504 + 132096);
    jobconfig_free(&cfg);
}

/* The rows of the largest micro-batch: micro_batch_tokens (8192 by default) unless a step holds
 * fewer, or a sequence is longer (it trains alone). */
static void test_micro_batch_rows(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    mem_estimate e;
    chord_err err = {0};
    /* GRPO, 3 x 2 responses of at most 20 + 20 tokens: 240 rows, not 8192 */
    assert_int_equal(jobconfig_parse("{\"model\": {\"init\": {\"config\": " SMALL "}}, "
                                     "\"data\": {\"prompts\": \"p\"}, \"algorithm\": \"grpo\", "
                                     "\"grpo\": {\"prompts_per_step\": 3, \"group_size\": 2}, "
                                     "\"sampling\": {\"max_new_tokens\": 20}}",
                                     &cfg, &err),
                     0);
    mem_estimate_job(&mc, &cfg, 20, 0, 20, &e);
    assert_true(e.tokens == 240.0);
    /* a budget below the step's rows holds */
    cfg.micro_batch_tokens = 100;
    mem_estimate_job(&mc, &cfg, 20, 0, 20, &e);
    assert_true(e.tokens == 100.0);
    /* and one below a sequence's length gives way to it: 40 */
    cfg.micro_batch_tokens = 30;
    mem_estimate_job(&mc, &cfg, 20, 0, 20, &e);
    assert_true(e.tokens == 40.0);
    jobconfig_free(&cfg);
    /* CHORD adds the expert records: E 5 of at most 30 tokens, 240 + 150 = 390 */
    assert_int_equal(jobconfig_parse("{\"model\": {\"init\": {\"config\": " SMALL "}}, "
                                     "\"data\": {\"prompts\": \"p\", \"expert\": \"x\"}, "
                                     "\"algorithm\": \"chord\", \"expert_per_step\": 5, "
                                     "\"grpo\": {\"prompts_per_step\": 3, \"group_size\": 2}, "
                                     "\"sampling\": {\"max_new_tokens\": 20}}",
                                     &cfg, &err),
                     0);
    mem_estimate_job(&mc, &cfg, 20, 30, 20, &e);
    assert_true(e.tokens == 390.0);
    /* expert records longer than max_position are cut there: 5 x 64 */
    mem_estimate_job(&mc, &cfg, 20, 5000, 20, &e);
    assert_true(e.tokens == 240.0 + 320.0);
    jobconfig_free(&cfg);
}

/* Prompts bounded by the datasets: 20 tokens instead of 2048 (the job of test_job):
 *   sampling rows max(3 x 20, 6) = 60: 4 (60 x 126 + 600) = 32640
 *   KV positions min(20 + 20, 64) = 40: 4 x 2 L x 6 x 40 x 1 x 4 = 15360 */
static void test_job_short_prompts(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    job("", &cfg);
    mem_estimate e;
    mem_estimate_job(&mc, &cfg, 20, 20, 20, &e);
    assert_true(e.sampling == 32640.0);
    assert_true(e.kv_cache == 15360.0);
    assert_true(e.positions == 40.0);
    jobconfig_free(&cfg);
}

/* A job with a KL keeps a frozen copy of the starting weights, 4 P more, and runs the policy's
 * micro-batches through it (its own run state): named in the refusal. */
static void test_job_with_reference(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config plain, kl;
    job("", &plain);
    chord_err perr = {0};
    assert_int_equal(jobconfig_parse("{\"model\": {\"init\": {\"config\": " SMALL "}}, "
                                     "\"data\": {\"prompts\": \"p\"}, \"algorithm\": \"grpo\", "
                                     "\"grpo\": {\"prompts_per_step\": 3, \"group_size\": 2, "
                                     "\"kl_coef\": 0.1}, \"sampling\": {\"max_new_tokens\": 20}, "
                                     "\"micro_batch_tokens\": 10}",
                                     &kl, &perr),
                     0);
    mem_estimate a, b;
    mem_estimate_job(&mc, &plain, 20, 20, 20, &a);
    mem_estimate_job(&mc, &kl, 20, 20, 20, &b);
    assert_true(a.reference == 0.0);
    /* its weights, and its run state for the same micro-batches (model_forward on its model) */
    assert_true(b.reference == 4.0 * 2792 + a.activations);
    assert_true(b.total == a.total + b.reference);
    mem_budget budget;
    mem_budget_make(&budget, "cpu", 1.0, 0.0);
    chord_err err = {0};
    assert_int_equal(mem_estimate_check(&b, &budget, &err), -1);
    assert_non_null(strstr(err.msg, "the KL's reference (weights and activations)"));
    jobconfig_free(&plain);
    jobconfig_free(&kl);
}

/* The bound read from a JSONL file: the longest line's bytes plus the template's tokens, 8 more
 * per "role" key; a file that cannot be read gives MEM_PROMPT_TOKENS. */
static void test_prompt_tokens_of_file(void **state) {
    (void)state;
    char path[] = "/tmp/chord-test-mem-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *a = "{\"prompt\": \"Compute 1+2.\", \"answer\": \"3\"}\n"; /* 44 bytes */
    const char *b = "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, "
                    "{\"role\": \"user\", \"content\": \"u\"}], \"answer\": \"1\"}";
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(a, f);
    fputs("\n", f); /* a blank line */
    fputs(b, f);    /* the last line has no newline */
    fclose(f);
    const double la = (double)strlen(a) - 1, lb = (double)strlen(b);
    double want = la + MEM_TEMPLATE_TOKENS + MEM_MESSAGE_TOKENS;
    if (lb + MEM_TEMPLATE_TOKENS + 2 * MEM_MESSAGE_TOKENS > want)
        want = lb + MEM_TEMPLATE_TOKENS + 2 * MEM_MESSAGE_TOKENS;
    assert_true(mem_prompt_tokens_of_file(path) == want);
    unlink(path);
    assert_true(mem_prompt_tokens_of_file(path) == MEM_PROMPT_TOKENS);
    assert_true(mem_prompt_tokens_of_file(NULL) == MEM_PROMPT_TOKENS);
}

/* With an eval set: one chunk of 64 prompts x k 4, 10 new tokens, beside the training engine:
 *   rows max(64 x 64, 256) = 4096: 4 (4096 x 126 + 256 x 100) = 2166784
 *   KV: 4 x 2 L x 256 x min(2048 + 10, 64) x 4 = 1048576 */
static void test_job_with_eval(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    job(", \"eval\": {\"every\": 5, \"k\": 4, \"max_new_tokens\": 10}", &cfg);
    mem_estimate e;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    assert_true(e.eval == 2166784.0 + 1048576.0);
    assert_true(e.eval_slots == 256.0 && e.eval_positions == 64.0);
    assert_true(e.sampling == 99168.0 + 2166784.0);
    assert_true(e.kv_cache == 24576.0 + 1048576.0);
    jobconfig_free(&cfg);
    /* every = 0: the eval set is never sampled during training */
    job(", \"eval\": {\"every\": 0}", &cfg);
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    assert_true(e.eval == 0 && e.kv_cache == 24576.0);
    jobconfig_free(&cfg);
}

/* A rollout request: 2 prompts of at most 5 tokens, n 3, 7 new tokens:
 *   rows max(2 x 5, 6) = 10: 4 (10 x 126 + 6 x 100) = 7440; KV 4 x 2 L x 6 x 12 x 4 = 4608 */
static void test_rollout(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    mem_estimate e;
    mem_estimate_rollout(&mc, 2, 3, 5, 7, 1, &e);
    assert_int_equal(e.kind, MEM_KIND_ROLLOUT);
    assert_true(e.sampling == 7440.0 && e.kv_cache == 4608.0);
    assert_true(e.slots == 6.0 && e.positions == 12.0);
    assert_true(e.optimizer == 0 && e.activations == 0);
    assert_true(e.total == 11168.0 + 7440 + 4608);
    /* on a running job's model: the weights are already there */
    mem_estimate_rollout(&mc, 2, 3, 5, 7, 0, &e);
    assert_true(e.total == 7440.0 + 4608);
    /* positions never exceed max_position_embeddings */
    mem_estimate_rollout(&mc, 1, 1, 60, 1000, 1, &e);
    assert_true(e.positions == 64.0);
    /* the prompt bound: bytes, the template's tokens and each message's */
    assert_true(mem_prompt_tokens_bound(100, 1) ==
                100.0 + MEM_TEMPLATE_TOKENS + MEM_MESSAGE_TOKENS);
    assert_true(mem_prompt_tokens_bound(0, 3) == MEM_TEMPLATE_TOKENS + 3.0 * MEM_MESSAGE_TOKENS);
}

static void test_budget(void **state) {
    (void)state;
    mem_budget b;
    mem_budget_make(&b, "cpu", 100, 0);
    assert_true(b.bytes == 100 && !b.limited);
    assert_string_equal(b.device, "cpu");
    mem_budget_make(&b, "cuda:1", 100, 50);
    assert_true(b.bytes == 50 && b.limited);
    mem_budget_make(&b, "cpu", 40, 50);
    assert_true(b.bytes == 40 && !b.limited);
    mem_budget_make(&b, "cpu", -1, 50);
    assert_true(b.bytes == 50 && b.limited);
    mem_budget_make(&b, "cpu", -1, 0);
    assert_true(b.bytes < 0);
}

/* ZeRO-1 over R ranks: gradients 4 P + moments 8 ceil(P / R) per rank (P = 2792); the total
 * follows; the message says so; one rank changes nothing. */
static void test_job_zero1(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    job("", &cfg);
    mem_estimate e, plain;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &plain);
    e = plain;
    mem_estimate_zero1(&e, 1);
    assert_true(e.optimizer == 33504.0 && e.zero_ranks == 0);
    mem_estimate_zero1(&e, 2);
    assert_true(e.optimizer == 11168.0 + 11168.0 && e.zero_ranks == 2);
    assert_true(e.total == plain.total - 33504.0 + 22336.0);
    e = plain;
    mem_estimate_zero1(&e, 3);
    assert_true(e.optimizer == 11168.0 + 8.0 * 931.0);
    mem_budget b;
    chord_err err = {0};
    mem_budget_make(&b, "cpu", 1000, 0);
    assert_int_equal(mem_estimate_check(&e, &b, &err), -1);
    assert_non_null(strstr(err.msg, "(ZeRO-1: moments of 1/3 of them per rank)"));
    jobconfig_free(&cfg);
    /* LoRA: the adapter's 112 parameters are sharded */
    job(", \"lora\": {\"rank\": 2}", &cfg);
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    mem_estimate_zero1(&e, 2);
    assert_true(e.optimizer == 4.0 * 112 + 8.0 * 56);
    jobconfig_free(&cfg);
}

static void test_check_message(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    job("", &cfg);
    mem_estimate e;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    jobconfig_free(&cfg);
    mem_budget b;
    chord_err err = {0};
    mem_budget_make(&b, "cpu", e.total, 0); /* exactly enough */
    assert_int_equal(mem_estimate_check(&e, &b, &err), 0);
    mem_budget_make(&b, "cpu", -1, 0); /* unknown: trusted */
    assert_int_equal(mem_estimate_check(&e, &b, &err), 0);
    assert_int_equal(mem_estimate_check(&e, NULL, &err), 0);

    mem_budget_make(&b, "cpu", 100000, 0);
    assert_int_equal(mem_estimate_check(&e, &b, &err), -1);
    assert_int_equal(err.code, CHORD_E_TOO_LARGE);
    const char *want[] = {
        "the job needs about 293.5 KiB on cpu but only 97.7 KiB are free",
        "weights 10.9 KiB + gradients and AdamW moments 32.7 KiB",
        "activations 129.0 KiB (64 tokens per micro-batch)",
        "sampling 96.8 KiB + KV cache 24.0 KiB (6 slots x 64 positions)",
        /* activations (129 KiB), then sampling + KV (121 KiB), then weights + optimizer (44 KiB) */
        "; to fit, lower (biggest share first) micro_batch_tokens, then grpo.prompts_per_step x "
        "grpo.group_size or sampling.max_new_tokens, then the model's size, or use a larger "
        "device",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(err.msg, want[i])) fail_msg("missing \"%s\" in: %s", want[i], err.msg);
    assert_null(strstr(err.msg, "eval"));

    chord_err_clear(&err);
    mem_budget_make(&b, "cuda:0", 1e12, 3.0 * 1073741824.0);
    e.total = 5.5 * 1073741824.0;
    assert_int_equal(mem_estimate_check(&e, &b, &err), -1);
    assert_non_null(strstr(err.msg, "about 5.50 GiB on cuda:0 but the device memory limit "
                                    "(--device-memory-mb) allows 3.00 GiB:"));

    chord_err_clear(&err);
    mem_estimate_weights(&mc, &e);
    mem_budget_make(&b, "cpu", 1000, 0);
    assert_int_equal(mem_estimate_check(&e, &b, &err), -1);
    assert_non_null(strstr(err.msg, "the model's weights need about 10.9 KiB on cpu but only "
                                    "1000 bytes are free: 2792 parameters in float32; use a "
                                    "smaller model or a larger device"));
}

/* bf16 weights (model.h precision): the copy of the matrices, and the bf16 activations (ln1,
 * ln2, gate/up: N (L (2C + 2I) 2 - 4C) = 64 (2 x 48 x 2 - 32) = 10240 bytes less), count on a
 * device whose models keep one (ops_device_bf16_weights: CHORD_WEIGHTS, else CUDA with bf16
 * GEMMs) and nowhere else */
static void test_bf16_copy(void **state) {
    (void)state;
    model_config mc;
    small_config(&mc);
    job_config cfg;
    job("", &cfg);
    mem_estimate e;
    mem_estimate_job(&mc, &cfg, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, MEM_PROMPT_TOKENS, &e);
    jobconfig_free(&cfg);
    assert_true(e.weights16 == 2.0 * 2792);
    assert_true(e.act16_saving == 10240.0);
    mem_budget b;
    chord_err err = {0};
    setenv("CHORD_WEIGHTS", "bf16", 1);
    mem_budget_make(&b, "cpu", e.total - 10240.0, 0); /* too little for bf16 weights */
    assert_int_equal(b.bf16_weights, 1);
    assert_true(mem_estimate_need(&e, &b) == e.total + 2.0 * 2792 - 10240.0);
    assert_int_equal(mem_estimate_check(&e, &b, &err), -1);
    if (!strstr(err.msg, "weights 10.9 KiB + their bf16 copy 5.5 KiB + gradients"))
        fail_msg("no bf16 copy in: %s", err.msg);
    /* 132096 - 10240 bytes */
    if (!strstr(err.msg, "activations 119.0 KiB (64 tokens per micro-batch, norms and gate/up "
                         "in bf16)"))
        fail_msg("no bf16 activations in: %s", err.msg);
    setenv("CHORD_WEIGHTS", "fp32", 1);
    mem_budget_make(&b, "cuda:0", e.total, 0);
    assert_int_equal(b.bf16_weights, 0);
    assert_int_equal(mem_estimate_check(&e, &b, &err), 0);
    unsetenv("CHORD_WEIGHTS");
    mem_budget_make(&b, "cuda:0", e.total, 0); /* the GPU default */
    assert_int_equal(b.bf16_weights, 1);
    mem_budget_make(&b, "cpu", e.total, 0);
    assert_int_equal(b.bf16_weights, 0);
    setenv("CHORD_CUDA_MATMUL", "fp32", 1);
    mem_budget_make(&b, "cuda:0", e.total, 0);
    assert_int_equal(b.bf16_weights, 0);
    unsetenv("CHORD_CUDA_MATMUL");
    /* a rollout on a model already loaded adds no copy; the KL's reference adds its own */
    mem_estimate_rollout(&mc, 1, 1, 10, 10, 0, &e);
    assert_true(e.weights16 == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_params_agree_with_model),
        cmocka_unit_test(test_job),
        cmocka_unit_test(test_job_short_prompts),
        cmocka_unit_test(test_micro_batch_rows),
        cmocka_unit_test(test_job_with_reference),
        cmocka_unit_test(test_prompt_tokens_of_file),
        cmocka_unit_test(test_job_with_eval),
        cmocka_unit_test(test_rollout),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_job_zero1),
        cmocka_unit_test(test_check_message),
        cmocka_unit_test(test_bf16_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
