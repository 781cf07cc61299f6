/* test_decode.c — trainer_decode_response: the text a verifier scores and the service stores.
 * Ids of a padded model vocabulary (past the tokenizer's) have no text; a NUL byte in the output
 * would cut the text short in C strings and JSON, so it must not survive. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(padded_vocab_ids_decode_to_nothing),
        cmocka_unit_test(nul_bytes_do_not_cut_the_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
