/* test_decode.c — the trainer's text helpers shared with rollouts and eval.
 * trainer_decode_response: ids of a padded model vocabulary (past the tokenizer's) have no text;
 * a NUL byte in the output would cut the text short in C strings and JSON, so it must not survive.
 * trainer_chat_template: the tokenizer's own template, raw only when it has none, and an
 * unrecognised template is an error (never a silent fallback). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/base/fileutil.h"
#include "server/model/chat.h"
#include "server/model/tokenizer.h"
#include "server/train/trainer.h"

static void padded_vocab_ids_decode_to_nothing(void **state) {
    (void)state;
    tok_tokenizer *tok = NULL;
    chord_err err = {0};
    assert_int_equal(tok_load_default(&tok, &err), 0);
    const char *text = "Compute 37+48.";
    tok_ids ids = {0};
    assert_int_equal(tok_encode(tok, text, strlen(text), 0, &ids, &err), 0);
    /* the same ids with two ids past the tokenizer spliced in */
    int32_t *with_pad = malloc((ids.n + 2) * sizeof *with_pad);
    assert_non_null(with_pad);
    size_t n = 0;
    int32_t vocab = tok_vocab_size(tok);
    with_pad[n++] = vocab + 7;
    for (size_t i = 0; i < ids.n; i++) {
        with_pad[n++] = ids.ids[i];
        if (i == 2) with_pad[n++] = vocab;
    }
    char *out = NULL;
    assert_int_equal(trainer_decode_response(tok, with_pad, (int)n, &out, &err), 0);
    assert_string_equal(out, text);
    free(out);
    free(with_pad);
    tok_ids_free(&ids);
    tok_free(tok);
}

static void nul_bytes_do_not_cut_the_text(void **state) {
    (void)state;
    tok_tokenizer *tok = NULL;
    chord_err err = {0};
    assert_int_equal(tok_load_default(&tok, &err), 0);
    const char text[] = {'a', 'b', '\0', 'c', 'd'};
    tok_ids ids = {0};
    assert_int_equal(tok_encode(tok, text, sizeof text, 0, &ids, &err), 0);
    char *out = NULL;
    assert_int_equal(trainer_decode_response(tok, ids.ids, (int)ids.n, &out, &err), 0);
    assert_non_null(strstr(out, "ab"));
    assert_non_null(strstr(out, "cd")); /* still there after the NUL's place */
    free(out);
    tok_ids_free(&ids);
    tok_free(tok);
}

static void chat_template_is_the_tokenizers_or_raw_never_a_guess(void **state) {
    (void)state;
    char *tj = NULL, *cj = NULL;
    size_t tl = 0, cl = 0;
    chord_err err = {0};
    assert_int_equal(chord_read_file(CHORD_TEST_DATA "/tokenizers/qwen3/tokenizer.json", &tj, &tl,
                                     &err), 0);
    assert_int_equal(chord_read_file(CHORD_TEST_DATA "/tokenizers/qwen3/tokenizer_config.json",
                                     &cj, &cl, &err), 0);
    tok_tokenizer *tok = NULL;
    chat_template tpl;
    /* its own template: recognised */
    assert_int_equal(tok_load_from_memory(tj, tl, cj, cl, &tok, &err), 0);
    assert_int_equal(trainer_chat_template(tok, &tpl, &err), 0);
    assert_int_equal(tpl.family, CHAT_QWEN3);
    tok_free(tok);
    /* no template at all: raw */
    assert_int_equal(tok_load_from_memory(tj, tl, NULL, 0, &tok, &err), 0);
    assert_int_equal(trainer_chat_template(tok, &tpl, &err), 0);
    assert_int_equal(tpl.family, CHAT_RAW);
    tok_free(tok);
    /* a template nobody recognises: an error, not raw */
    const char *odd = "{\"chat_template\": \"{% for m in messages %}<<{{ m.content }}>>{% endfor %}\"}";
    assert_int_equal(tok_load_from_memory(tj, tl, odd, strlen(odd), &tok, &err), 0);
    chord_err_clear(&err);
    assert_int_equal(trainer_chat_template(tok, &tpl, &err), -1);
    assert_non_null(strstr(err.msg, "template"));
    tok_free(tok);
    free(tj);
    free(cj);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(padded_vocab_ids_decode_to_nothing),
        cmocka_unit_test(nul_bytes_do_not_cut_the_text),
        cmocka_unit_test(chat_template_is_the_tokenizers_or_raw_never_a_guess),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
