/* test_chat.c — chat.h without Python: family recognition on the real files, the assistant mask
 * of a demonstration covers exactly "response<|im_end|>", rollout prompts end with the
 * generation header, raw prompts, and errors. Text equality with transformers is
 * tests/reference/tok_chat.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/model/chat.h"

static tok_tokenizer *qwen, *deepseek, *dflt;

static int setup(void **state) {
    (void)state;
    chord_err err = {0};
    if (tok_load(CHORD_TEST_DATA "/tokenizers/qwen3", &qwen, &err) ||
        tok_load(CHORD_TEST_DATA "/tokenizers/deepseek_v3", &deepseek, &err) ||
        tok_load_default(&dflt, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tok_free(qwen);
    tok_free(deepseek);
    tok_free(dflt);
    return 0;
}

static void test_detect(void **state) {
    (void)state;
    chat_template t;
    chord_err err = {0};
    assert_int_equal(chat_template_detect(qwen, &t, &err), 0);
    assert_int_equal(t.family, CHAT_QWEN3);
    assert_int_equal(chat_template_detect(deepseek, &t, &err), 0);
    assert_int_equal(t.family, CHAT_DEEPSEEK_V3);
    assert_string_equal(t.bos, "<\xef\xbd\x9c"
                               "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    assert_int_equal(chat_template_detect(dflt, &t, &err), 0);
    assert_int_equal(t.family, CHAT_CHATML);
    assert_string_equal(t.default_system, "");
    assert_int_equal(chat_template_by_name("llama3", qwen, &t, &err), 0);
    assert_int_equal(t.family, CHAT_LLAMA3);
    assert_int_equal(chat_template_by_name("alpaca", qwen, &t, &err), -1);
    assert_non_null(strstr(err.msg, "unknown chat template 'alpaca'"));
}

/* Mask of a demonstration = exactly the tokens of "response<|im_end|>". */
static void test_mask_is_the_response(void **state) {
    (void)state;
    chat_template t;
    assert_int_equal(chat_template_detect(dflt, &t, NULL), 0);
    chat_message m[3] = {{"system", "You are a helpful assistant.", NULL},
                         {"user", "Compute 37+48.", NULL},
                         {"assistant", "37+48=85 \\boxed{85}", NULL}};
    chat_encoding enc;
    chord_err err = {0};
    assert_int_equal(chat_encode(dflt, &t, m, 3, 0, &enc, &err), 0);
    assert_string_equal(enc.text, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                  "<|im_start|>user\nCompute 37+48.<|im_end|>\n"
                                  "<|im_start|>assistant\n37+48=85 \\boxed{85}<|im_end|>\n");
    int32_t sel[64];
    size_t k = 0;
    for (size_t i = 0; i < enc.ids.n; i++)
        if (enc.mask[i]) sel[k++] = enc.ids.ids[i];
    /* the masked tokens are contiguous and decode to the response and its end token */
    size_t first = 0;
    while (!enc.mask[first])
        first++;
    for (size_t i = first; i < first + k; i++)
        assert_int_equal(enc.mask[i], 1);
    char *text;
    size_t len;
    assert_int_equal(tok_decode(dflt, sel, k, 0, &text, &len, NULL), 0);
    assert_string_equal(text, "37+48=85 \\boxed{85}<|im_end|>");
    free(text);
    /* the end token is the tokenizer's eos, and it is the last masked token */
    assert_int_equal(sel[k - 1], tok_eos_id(dflt));
    chat_encoding_free(&enc);
}

/* A rollout prompt ends with the assistant header; nothing is masked. */
static void test_generation_prompt(void **state) {
    (void)state;
    chat_template t;
    assert_int_equal(chat_template_detect(qwen, &t, NULL), 0);
    chat_message m[1] = {{"user", "Compute 37+48.", NULL}};
    chat_encoding enc;
    assert_int_equal(chat_encode(qwen, &t, m, 1, 1, &enc, NULL), 0);
    assert_string_equal(enc.text, "<|im_start|>user\nCompute 37+48.<|im_end|>\n"
                                  "<|im_start|>assistant\n");
    for (size_t i = 0; i < enc.ids.n; i++)
        assert_int_equal(enc.mask[i], 0);
    assert_int_equal(enc.ids.ids[0], tok_token_to_id(qwen, "<|im_start|>"));
    chat_encoding_free(&enc);
    /* Qwen3 with enable_thinking = false: the empty think block follows */
    t.enable_thinking = 0;
    assert_int_equal(chat_encode(qwen, &t, m, 1, 1, &enc, NULL), 0);
    assert_non_null(strstr(enc.text, "<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    chat_encoding_free(&enc);
}

/* raw: the prompt as is, the response then EOS (for base models without a template). */
static void test_raw(void **state) {
    (void)state;
    chat_template t;
    assert_int_equal(chat_template_by_name("raw", deepseek, &t, NULL), 0);
    chat_message m[2] = {{"user", "Q: 1+1?\nA:", NULL}, {"assistant", " 2", NULL}};
    char *text;
    size_t len;
    uint32_t *spans;
    size_t ns;
    assert_int_equal(chat_render(&t, m, 2, 0, &text, &len, &spans, &ns, NULL), 0);
    /* DeepSeek's config has add_bos_token: BOS text first */
    assert_string_equal(text, "<\xef\xbd\x9c"
                              "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
                              "Q: 1+1?\nA: 2<\xef\xbd\x9c"
                              "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    assert_int_equal(ns, 1);
    assert_memory_equal(text + spans[0], " 2", 2);
    assert_int_equal(spans[1], len);
    free(text);
    free(spans);
}

/* An empty conversation renders to a NUL-terminated text too (chat.h): a fuzz_chat finding, where
 * nothing rendered left the text unterminated (ASan in the Sanitize build). */
static void test_empty_conversation(void **state) {
    (void)state;
    const char *families[] = {"raw", "chatml", "qwen3", "deepseek_v3", "llama3"};
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        chat_template t;
        assert_int_equal(chat_template_by_name(families[f], dflt, &t, NULL), 0);
        char *text = NULL;
        size_t len = 99;
        assert_int_equal(chat_render(&t, NULL, 0, 0, &text, &len, NULL, NULL, NULL), 0);
        assert_non_null(text);
        assert_int_equal(strlen(text), len);
        free(text);
    }
}

static void test_errors(void **state) {
    (void)state;
    chat_template t;
    assert_int_equal(chat_template_by_name("llama3", qwen, &t, NULL), 0);
    chat_message m[1] = {{"tool", "x", NULL}};
    char *text;
    chord_err err = {0};
    assert_int_equal(chat_render(&t, m, 1, 0, &text, NULL, NULL, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "role 'tool' is not supported by the llama3 template"));
    chat_message bad[1] = {{"robot", "x", NULL}};
    assert_int_equal(chat_render(&t, bad, 1, 0, &text, NULL, NULL, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "messages[0].role 'robot'"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_mask_is_the_response),
        cmocka_unit_test(test_generation_prompt),
        cmocka_unit_test(test_raw),
        cmocka_unit_test(test_empty_conversation),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
