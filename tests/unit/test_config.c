/* test_config.c — config.json parsing (server/model/config.c): Hugging Face defaults per family
 * (values from transformers 5.23's LlamaConfig / Qwen2Config / Qwen3Config and their modeling
 * files), every kind of bad input giving an error that names the field, the written file parsing
 * back to the same config, and parameter counts of public models as transformers counts them.
 * The comparison against transformers itself runs in tests/reference/io_config_test.py. */
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
#include "server/model/config.h"

#define SIZES                                                                                      \
    "\"vocab_size\": 96, \"hidden_size\": 64, \"num_hidden_layers\": 2, "                          \
    "\"num_attention_heads\": 32, \"intermediate_size\": 80"

static void parse_ok(const char *json, model_config *cfg) {
    chord_err err = {0};
    int rc = model_config_parse(json, cfg, &err);
    if (rc) fprintf(stderr, "unexpected error: %s\n", err.msg);
    assert_int_equal(rc, 0);
}

static void test_llama_defaults(void **state) {
    (void)state;
    model_config c;
    parse_ok("{\"model_type\": \"llama\", " SIZES "}", &c);
    assert_string_equal(c.model_type, "llama");
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_int_equal(c.num_key_value_heads, 32); /* = num_attention_heads */
    assert_int_equal(c.head_dim, 2);             /* hidden_size / num_attention_heads */
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_true(c.rms_norm_eps == 1e-6);
    assert_true(c.rope_theta == 10000.0);
    assert_true(c.initializer_range == 0.02);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_token_ids[0], 2);
    assert_int_equal(c.pad_token_id, -1);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.o_proj_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.rope_scaling, ROPE_SCALING_NONE);
}

static void test_llama_attention_bias_covers_o_proj(void **state) {
    (void)state;
    model_config c;
    parse_ok("{\"model_type\": \"llama\", \"attention_bias\": true, \"mlp_bias\": true, " SIZES "}",
             &c);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.o_proj_bias, 1);
    assert_int_equal(c.mlp_bias, 1);
}

static void test_qwen2_defaults(void **state) {
    (void)state;
    model_config c;
    /* Qwen2 has q/k/v bias and no o_proj bias whatever the file says. */
    parse_ok("{\"model_type\": \"qwen2\", \"attention_bias\": false, " SIZES "}", &c);
    assert_string_equal(c.architecture, "Qwen2ForCausalLM");
    assert_int_equal(c.num_key_value_heads, 32); /* Qwen2Config's default, not the head count */
    assert_int_equal(c.head_dim, 2);
    assert_int_equal(c.max_position_embeddings, 32768);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.o_proj_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.n_eos, 0);
}

static void test_qwen3_defaults(void **state) {
    (void)state;
    model_config c;
    parse_ok("{\"model_type\": \"qwen3\", " SIZES "}", &c);
    assert_string_equal(c.architecture, "Qwen3ForCausalLM");
    assert_int_equal(c.head_dim, 128); /* Qwen3Config's default, not hidden / heads */
    assert_int_equal(c.num_key_value_heads, 32);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.o_proj_bias, 0);
    parse_ok("{\"model_type\": \"qwen3\", \"attention_bias\": true, " SIZES "}", &c);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.o_proj_bias, 1); /* Qwen3Attention: o_proj bias=config.attention_bias */
}

static void test_architectures_alone_and_null_fields(void **state) {
    (void)state;
    model_config c;
    parse_ok("{\"architectures\": [\"Qwen2ForCausalLM\"], \"num_key_value_heads\": null, "
             "\"head_dim\": null, \"bos_token_id\": null, \"eos_token_id\": [3, 4, 5], " SIZES "}",
             &c);
    assert_string_equal(c.model_type, "qwen2");
    assert_int_equal(c.num_key_value_heads, 32); /* null is "use the default" */
    assert_int_equal(c.head_dim, 2);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_token_ids[2], 5);
}

static void test_rope_new_and_old_places(void **state) {
    (void)state;
    model_config c;
    /* transformers 5: inside rope_parameters */
    parse_ok("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_type\": \"llama3\", "
             "\"rope_theta\": 500000.0, \"factor\": 32.0, \"low_freq_factor\": 1.0, "
             "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}, " SIZES "}",
             &c);
    assert_true(c.rope_theta == 500000.0);
    assert_int_equal(c.rope_scaling, ROPE_SCALING_LLAMA3);
    assert_true(c.rope_factor == 32.0);
    assert_int_equal(c.rope_original_max_position, 8192);
    /* older files: top-level rope_theta, rope_scaling with "type" */
    parse_ok("{\"model_type\": \"qwen2\", \"rope_theta\": 1000000.0, "
             "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4}, " SIZES "}",
             &c);
    assert_true(c.rope_theta == 1000000.0);
    assert_int_equal(c.rope_scaling, ROPE_SCALING_LINEAR);
    assert_true(c.rope_factor == 4.0);
    /* llama3 without original_max_position_embeddings: max_position_embeddings */
    parse_ok("{\"model_type\": \"llama\", \"max_position_embeddings\": 4096, \"rope_scaling\": "
             "{\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, "
             "\"high_freq_factor\": 4}, " SIZES "}",
             &c);
    assert_int_equal(c.rope_original_max_position, 4096);
}

/* Each bad config must fail with a message holding `want` (the field) — never crash. */
static const struct {
    const char *json, *want;
} bad_configs[] = {
    {"", "invalid JSON"},
    {"{\"model_type\": \"llama\", ", "invalid JSON"},
    {"[1, 2]", "must be a JSON object"},
    {"{\"model_type\": \"llama\"} trailing", "invalid JSON"},
    {"{\"model_type\": \"llama\", \"model_type\": \"qwen2\", " SIZES "}", "model_type"},
    {"{" SIZES "}", "model_type: missing"},
    {"{\"model_type\": 3, " SIZES "}", "model_type: must be a string"},
    {"{\"model_type\": \"gpt2\", " SIZES "}", "model_type: \"gpt2\" is not supported"},
    {"{\"architectures\": [\"MistralForCausalLM\"], " SIZES "}", "architectures"},
    {"{\"architectures\": \"LlamaForCausalLM\", \"model_type\": \"llama\", " SIZES "}",
     "architectures"},
    {"{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"llama\", " SIZES "}",
     "architectures: \"Qwen2ForCausalLM\" does not match model_type \"llama\""},
    {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_hidden_layers\": 2, "
     "\"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "vocab_size: missing"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"num_hidden_layers\": 2, "
     "\"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "hidden_size: missing"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 64, "
     "\"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "num_hidden_layers: missing"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 64, "
     "\"num_hidden_layers\": 2, \"intermediate_size\": 80}",
     "num_attention_heads: missing"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 64, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
     "intermediate_size: missing"},
    {"{\"model_type\": \"llama\", \"vocab_size\": -96, \"hidden_size\": 64, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "vocab_size: must be positive, got -96"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 0, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "hidden_size: must be positive"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": \"64\", "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "hidden_size: must be an integer"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 64.5, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "hidden_size: must be an integer, got 64.5"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 64, "
     "\"num_hidden_layers\": true, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "num_hidden_layers: must be an integer"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 64, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 1e3}",
     "intermediate_size: must be an integer, got 1000.0"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 4294967296, \"hidden_size\": 64, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "vocab_size: must be <= 2147483647, got 4294967296"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 60, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 12, \"num_key_value_heads\": 5, "
     "\"intermediate_size\": 80}",
     "config.json: num_key_value_heads: must divide num_attention_heads (12 % 5 != 0)"},
    {"{\"model_type\": \"llama\", \"num_key_value_heads\": 0, " SIZES "}",
     "num_key_value_heads: must be positive"},
    {"{\"model_type\": \"qwen2\", \"vocab_size\": 96, \"hidden_size\": 64, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "num_key_value_heads: must divide num_attention_heads (4 % 32 != 0)"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 50, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "hidden_size: must be a multiple of num_attention_heads"},
    {"{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 50, \"head_dim\": 16, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
     "hidden_size: must be a multiple of num_attention_heads for llama (50 % 4 != 0)"},
    {"{\"model_type\": \"llama\", \"head_dim\": -8, " SIZES "}", "head_dim: must be positive"},
    {"{\"model_type\": \"llama\", \"head_dim\": 7, " SIZES "}", "head_dim: must be even"},
    {"{\"model_type\": \"llama\", \"max_position_embeddings\": 0, " SIZES "}",
     "max_position_embeddings: must be positive"},
    {"{\"model_type\": \"llama\", \"rms_norm_eps\": 0, " SIZES "}",
     "rms_norm_eps: must be positive"},
    {"{\"model_type\": \"llama\", \"rms_norm_eps\": -1e-6, " SIZES "}",
     "rms_norm_eps: must be positive"},
    {"{\"model_type\": \"llama\", \"rms_norm_eps\": \"1e-6\", " SIZES "}",
     "rms_norm_eps: must be a number, got a string"},
    {"{\"model_type\": \"llama\", \"rms_norm_eps\": NaN, " SIZES "}", "rms_norm_eps"},
    {"{\"model_type\": \"llama\", \"rope_theta\": Infinity, " SIZES "}", "rope_theta"},
    {"{\"model_type\": \"llama\", \"rope_theta\": 1e999, " SIZES "}", "rope_theta"},
    {"{\"model_type\": \"llama\", \"rope_theta\": -10000, " SIZES "}",
     "rope_theta: must be positive"},
    {"{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_theta\": 0}, " SIZES "}",
     "rope_parameters.rope_theta: must be positive"},
    {"{\"model_type\": \"llama\", \"rope_parameters\": 5, " SIZES "}",
     "rope_parameters: must be an object"},
    {"{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": "
     "4}, " SIZES "}",
     "rope_scaling.rope_type: \"yarn\" is not supported"},
    {"{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"llama3\", "
     "\"low_freq_factor\": 1, \"high_freq_factor\": 4}, " SIZES "}",
     "rope_scaling.factor: missing"},
    {"{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
     "\"low_freq_factor\": 4, \"high_freq_factor\": 1}, " SIZES "}",
     "high_freq_factor: must exceed low_freq_factor"},
    {"{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": "
     "-2}, " SIZES "}",
     "rope_scaling.factor: must be positive"},
    {"{\"model_type\": \"llama\", \"rope_parameters\": {\"partial_rotary_factor\": 0.5}, " SIZES
     "}",
     "partial_rotary_factor"},
    {"{\"model_type\": \"llama\", \"tie_word_embeddings\": 1, " SIZES "}",
     "tie_word_embeddings: must be true or false"},
    {"{\"model_type\": \"llama\", \"attention_bias\": \"yes\", " SIZES "}",
     "attention_bias: must be true or false"},
    {"{\"model_type\": \"llama\", \"hidden_act\": \"gelu\", " SIZES "}",
     "hidden_act: \"gelu\" is not supported"},
    {"{\"model_type\": \"qwen2\", \"use_sliding_window\": true, " SIZES "}", "use_sliding_window"},
    {"{\"model_type\": \"llama\", \"pretraining_tp\": 2, " SIZES "}", "pretraining_tp"},
    {"{\"model_type\": \"llama\", \"bos_token_id\": -3, " SIZES "}", "bos_token_id: must be >= 0, got -3"},
    {"{\"model_type\": \"llama\", \"pad_token_id\": \"0\", " SIZES "}",
     "pad_token_id: must be an integer"},
    {"{\"model_type\": \"llama\", \"eos_token_id\": \"2\", " SIZES "}", "eos_token_id"},
    {"{\"model_type\": \"llama\", \"eos_token_id\": [1, null], " SIZES "}", "eos_token_id[1]"},
    {"{\"model_type\": \"llama\", \"eos_token_id\": [1,2,3,4,5,6,7,8,9], " SIZES "}",
     "eos_token_id: at most 8"},
    {"{\"model_type\": \"llama\", \"initializer_range\": 2, " SIZES "}", "initializer_range: must be in [0, 1], got 2"},
    {"{\"model_type\": \"llama\", \"dtype\": \"a-very-long-dtype-name\", " SIZES "}", "dtype"},
};

static void test_bad_configs_name_the_field(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        model_config c;
        chord_err err = {0};
        int rc = model_config_parse(bad_configs[i].json, &c, &err);
        if (rc != -1 || !strstr(err.msg, bad_configs[i].want) ||
            strncmp(err.msg, "config.json: ", 13) != 0)
            fprintf(stderr, "case %zu: %s\n  want \"%s\"\n  got rc=%d \"%s\"\n", i,
                    bad_configs[i].json, bad_configs[i].want, rc, err.msg);
        assert_int_equal(rc, -1);
        assert_non_null(strstr(err.msg, bad_configs[i].want));
        assert_int_equal(strncmp(err.msg, "config.json: ", 13), 0);
        assert_int_equal(err.code, CHORD_E_INVALID);
    }
}

static void test_every_truncation_fails_cleanly(void **state) {
    (void)state;
    const char *full = "{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_type\": "
                       "\"llama3\", \"factor\": 8, \"low_freq_factor\": 1, "
                       "\"high_freq_factor\": 4}, \"eos_token_id\": [1, 2], " SIZES "}";
    size_t n = strlen(full);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    for (size_t k = 0; k < n; k++) {
        memcpy(buf, full, k);
        buf[k] = '\0';
        model_config c;
        chord_err err = {0};
        assert_int_equal(model_config_parse(buf, &c, &err), -1);
        assert_true(err.msg[0] != '\0');
    }
    free(buf);
    model_config c;
    parse_ok(full, &c);
}

static int same_config(const model_config *a, const model_config *b) {
    return strcmp(a->model_type, b->model_type) == 0 &&
           strcmp(a->architecture, b->architecture) == 0 && a->vocab_size == b->vocab_size &&
           a->hidden_size == b->hidden_size && a->num_hidden_layers == b->num_hidden_layers &&
           a->num_attention_heads == b->num_attention_heads &&
           a->num_key_value_heads == b->num_key_value_heads && a->head_dim == b->head_dim &&
           a->intermediate_size == b->intermediate_size &&
           a->max_position_embeddings == b->max_position_embeddings &&
           a->rope_theta == b->rope_theta && a->rms_norm_eps == b->rms_norm_eps &&
           a->tie_word_embeddings == b->tie_word_embeddings &&
           a->attention_bias == b->attention_bias && a->o_proj_bias == b->o_proj_bias &&
           a->mlp_bias == b->mlp_bias && a->qk_norm == b->qk_norm &&
           a->rope_scaling == b->rope_scaling && a->rope_factor == b->rope_factor &&
           a->rope_low_freq_factor == b->rope_low_freq_factor &&
           a->rope_high_freq_factor == b->rope_high_freq_factor &&
           a->rope_original_max_position == b->rope_original_max_position &&
           a->initializer_range == b->initializer_range && a->bos_token_id == b->bos_token_id &&
           a->n_eos == b->n_eos &&
           memcmp(a->eos_token_ids, b->eos_token_ids, sizeof(int) * (size_t)a->n_eos) == 0 &&
           a->pad_token_id == b->pad_token_id && strcmp(a->torch_dtype, b->torch_dtype) == 0;
}

static void test_written_json_parses_back(void **state) {
    (void)state;
    const char *cases[] = {
        "{\"model_type\": \"llama\", \"rms_norm_eps\": 1e-5, \"initializer_range\": "
        "0.1234567890123, "
        "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000, \"factor\": 8, "
        "\"low_freq_factor\": 1, \"high_freq_factor\": 4, "
        "\"original_max_position_embeddings\": 64}, \"attention_bias\": true, "
        "\"eos_token_id\": [7, 8], \"pad_token_id\": 0, \"torch_dtype\": \"bfloat16\", " SIZES "}",
        "{\"model_type\": \"qwen2\", \"tie_word_embeddings\": true, \"rope_theta\": 1e6, "
        "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}, " SIZES "}",
        "{\"model_type\": \"qwen3\", \"num_key_value_heads\": 8, \"head_dim\": 64, "
        "\"eos_token_id\": 151645, \"dtype\": \"float32\", " SIZES "}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_config a, b;
        parse_ok(cases[i], &a);
        char *text = model_config_to_json(&a);
        assert_non_null(text);
        parse_ok(text, &b);
        assert_true(same_config(&a, &b));
        /* short numbers where they are exact; %.17g where they are not */
        if (i == 0) assert_non_null(strstr(text, "\"rms_norm_eps\": 1e-5,"));
        free(text);
    }
}

static void test_save_and_load_directory(void **state) {
    (void)state;
    char dir[] = "/tmp/chord_test_config_XXXXXX";
    assert_non_null(mkdtemp(dir));
    model_config a, b;
    parse_ok("{\"model_type\": \"qwen3\", \"num_key_value_heads\": 4, " SIZES "}", &a);
    chord_err err = {0};
    assert_int_equal(model_config_save(&a, dir, &err), 0);
    assert_int_equal(model_config_load(dir, &b, &err), 0);
    assert_true(same_config(&a, &b));
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    assert_int_equal(model_config_load(dir, &b, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    assert_non_null(strstr(err.msg, "config.json"));
    rmdir(dir);
}

/* Parameter counts as transformers 5.23 counts them (sum of p.numel() over
 * AutoModelForCausalLM.from_config on the meta device) for public models' configs. */
static void test_num_params_of_public_models(void **state) {
    (void)state;
    static const struct {
        const char *json;
        size_t params;
    } models[] = {
        {"{\"model_type\": \"qwen2\", \"vocab_size\": 151936, \"hidden_size\": 896, "
         "\"num_hidden_layers\": 24, \"num_attention_heads\": 14, \"num_key_value_heads\": 2, "
         "\"intermediate_size\": 4864, \"tie_word_embeddings\": true}",
         494032768}, /* Qwen2.5-0.5B */
        {"{\"model_type\": \"llama\", \"vocab_size\": 128256, \"hidden_size\": 2048, "
         "\"num_hidden_layers\": 16, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, "
         "\"intermediate_size\": 8192, \"tie_word_embeddings\": true}",
         1235814400}, /* Llama-3.2-1B */
        {"{\"model_type\": \"qwen3\", \"vocab_size\": 151936, \"hidden_size\": 1024, "
         "\"num_hidden_layers\": 28, \"num_attention_heads\": 16, \"num_key_value_heads\": 8, "
         "\"head_dim\": 128, \"intermediate_size\": 3072, \"tie_word_embeddings\": true}",
         596049920}, /* Qwen3-0.6B */
        {"{\"model_type\": \"llama\", \"vocab_size\": 1000, \"hidden_size\": 64, "
         "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
         "\"intermediate_size\": 96, \"attention_bias\": true, \"mlp_bias\": true}",
         221952}, /* untied, every bias */
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        model_config c;
        parse_ok(models[i].json, &c);
        assert_int_equal(model_config_num_params(&c), models[i].params);
    }
}

/* inv_freq for theta 10000, head_dim 8: 10000^-(0, 1/4, 1/2, 3/4) = 1, 0.1, 0.01, 0.001, each
 * the nearest float (transformers' fp32 computation gives the same values). */
static void test_rope_inv_freq_default(void **state) {
    (void)state;
    model_config c;
    parse_ok("{\"model_type\": \"llama\", \"vocab_size\": 96, \"hidden_size\": 32, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 80}",
             &c);
    float f[4];
    model_config_rope_inv_freq(&c, f);
    assert_true(f[0] == 1.0f);
    assert_true(f[1] == 0.1f);
    assert_true(f[2] == 0.01f);
    assert_true(f[3] == 0.001f);
}

/* llama3 scaling (Llama 3.1: factor 8, low 1, high 4, original 8192): wavelengths above
 * 8192 are divided by 8, below 2048 kept, in between interpolated — checked band by band. */
static void test_rope_inv_freq_llama3_bands(void **state) {
    (void)state;
    model_config plain, scaled;
    const char *base = "\"vocab_size\": 96, \"hidden_size\": 4096, \"num_hidden_layers\": 1, "
                       "\"num_attention_heads\": 32, \"intermediate_size\": 80";
    char json[1024];
    snprintf(json, sizeof json, "{\"model_type\": \"llama\", \"rope_theta\": 500000.0, %s}", base);
    parse_ok(json, &plain);
    snprintf(json, sizeof json,
             "{\"model_type\": \"llama\", \"rope_theta\": 500000.0, \"rope_scaling\": "
             "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
             "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}, %s}",
             base);
    parse_ok(json, &scaled);
    float p[64], s[64];
    model_config_rope_inv_freq(&plain, p);
    model_config_rope_inv_freq(&scaled, s);
    int low = 0, high = 0, mid = 0;
    for (int i = 0; i < 64; i++) {
        double wavelen = 2 * M_PI / p[i];
        if (wavelen < 2048) {
            assert_true(s[i] == p[i]);
            high++;
        } else if (wavelen > 8192) {
            assert_true(s[i] == p[i] / 8.0f);
            low++;
        } else {
            assert_true(s[i] < p[i] && s[i] > p[i] / 8.0f);
            mid++;
        }
    }
    assert_true(low > 0 && high > 0 && mid > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_defaults),
        cmocka_unit_test(test_llama_attention_bias_covers_o_proj),
        cmocka_unit_test(test_qwen2_defaults),
        cmocka_unit_test(test_qwen3_defaults),
        cmocka_unit_test(test_architectures_alone_and_null_fields),
        cmocka_unit_test(test_rope_new_and_old_places),
        cmocka_unit_test(test_bad_configs_name_the_field),
        cmocka_unit_test(test_every_truncation_fails_cleanly),
        cmocka_unit_test(test_written_json_parses_back),
        cmocka_unit_test(test_save_and_load_directory),
        cmocka_unit_test(test_num_params_of_public_models),
        cmocka_unit_test(test_rope_inv_freq_default),
        cmocka_unit_test(test_rope_inv_freq_llama3_bands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
