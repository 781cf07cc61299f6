/* test_tokenizer.c — unit tests of server/model/tokenizer*.c that need no Python: the embedded
 * default (identical to its files, reproducible from its corpus, good on the arithmetic task),
 * streaming decode, invalid UTF-8, offsets, and clear errors for bad files. Id-for-id equality
 * with Hugging Face is tests/reference/tok_reference.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/base/fileutil.h"
#include "server/model/tokenizer.h"
#include "server/model/tokenizer_train.h"

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

static void encode_ok(const tok_tokenizer *t, const char *s, size_t n, unsigned flags,
                      tok_ids *ids) {
    chord_err err = {0};
    int rc = tok_encode(t, s, n, flags, ids, &err);
    if (rc) fprintf(stderr, "encode: %s\n", err.msg);
    assert_int_equal(rc, 0);
}

static void test_default_embedded_matches_files(void **state) {
    (void)state;
    const char *names[2] = {"tokenizer.json", "tokenizer_config.json"};
    for (int k = 0; k < 2; k++) {
        char path[1024], *data;
        size_t len, elen;
        snprintf(path, sizeof path, "%s/server/model/default_tokenizer/%s", CHORD_SOURCE_DIR,
                 names[k]);
        assert_int_equal(chord_read_file(path, &data, &len, NULL), 0);
        const char *emb =
            k == 0 ? tok_default_tokenizer_json(&elen) : tok_default_config_json(&elen);
        assert_int_equal(elen, len);
        assert_memory_equal(emb, data, len);
        free(data);
    }
    assert_int_equal(tok_vocab_size(dflt), 1024);
    assert_int_equal(tok_eos_id(dflt), tok_token_to_id(dflt, "<|im_end|>"));
    assert_int_equal(tok_pad_id(dflt), tok_token_to_id(dflt, "<|endoftext|>"));
    assert_int_equal(tok_bos_id(dflt), -1);
    assert_non_null(tok_chat_template(dflt));
}

/* `chordd tokenizer train` on the committed corpus gives the committed file, byte for byte. */
static void test_default_reproducible(void **state) {
    (void)state;
    char *corpus, *want_tj, *want_cj, *tj, *cj;
    size_t n, n1, n2;
    assert_int_equal(chord_read_file(CHORD_SOURCE_DIR "/server/model/default_tokenizer/corpus.txt",
                                     &corpus, &n, NULL),
                     0);
    tok_train_options opt;
    tok_train_options_default(&opt);
    chord_err err = {0};
    assert_int_equal(tok_train(corpus, n, &opt, &tj, &cj, &err), 0);
    want_tj = (char *)tok_default_tokenizer_json(&n1);
    want_cj = (char *)tok_default_config_json(&n2);
    assert_int_equal(strlen(tj), n1);
    assert_memory_equal(tj, want_tj, n1);
    assert_int_equal(strlen(cj), n2);
    assert_memory_equal(cj, want_cj, n2);
    free(tj);
    free(cj);
    free(corpus);
}

static size_t count_tokens(const tok_tokenizer *t, const char *s) {
    tok_ids ids = {0};
    encode_ok(t, s, strlen(s), 0, &ids);
    size_t n = ids.n;
    tok_ids_free(&ids);
    return n;
}

/* The arithmetic task: every digit one token, the words whole. */
static void test_default_tokenizes_task_well(void **state) {
    (void)state;
    tok_ids ids = {0};
    const char *p = "Compute 37+48.";
    encode_ok(dflt, p, strlen(p), 0, &ids);
    /* "Compute" " " "3" "7" "+" "4" "8" "." */
    assert_int_equal(ids.n, 8);
    assert_int_equal(ids.ids[0], tok_token_to_id(dflt, "Compute"));
    assert_int_equal(ids.ids[2], tok_token_to_id(dflt, "3"));
    tok_ids_free(&ids);
    /* 3 7 + 4 8 = 8 5 " \" boxed { 8 5 } */
    assert_int_equal(count_tokens(dflt, "37+48=85 \\boxed{85}"), 14);
    assert_int_equal(count_tokens(dflt, "The answer is 85."), 7);
    /* - 1 2 * 3 =- 3 6 " \" boxed {- 3 6 } */
    assert_int_equal(count_tokens(dflt, "-12*3=-36 \\boxed{-36}"), 14);
    /* words of the chat template are whole tokens */
    assert_true(tok_token_to_id(dflt, "assistant") >= 0);
    assert_true(tok_token_to_id(dflt, "user") >= 0);
    /* and free English stays reasonable (well under one token per byte) */
    const char *en = "The quick brown fox jumps over the lazy dog. What is the answer?";
    assert_true(count_tokens(dflt, en) * 3 < strlen(en));
}

static void roundtrip(const tok_tokenizer *t, const char *s) {
    tok_ids ids = {0};
    encode_ok(t, s, strlen(s), 0, &ids);
    char *text;
    size_t len;
    assert_int_equal(tok_decode(t, ids.ids, ids.n, 0, &text, &len, NULL), 0);
    assert_int_equal(len, strlen(s));
    assert_memory_equal(text, s, len);
    /* streaming: the pieces concatenate to the same text, and no piece splits a character */
    tok_stream st;
    tok_stream_init(&st, t, 0);
    char *acc = calloc(len * 4 + 64, 1);
    size_t acc_len = 0;
    for (size_t i = 0; i < ids.n; i++) {
        char buf[1024];
        size_t n;
        assert_int_equal(tok_stream_push(&st, ids.ids[i], buf, sizeof buf, &n, NULL), 0);
        assert_null(memmem(buf, n, "\xEF\xBF\xBD", 3));
        memcpy(acc + acc_len, buf, n);
        acc_len += n;
    }
    char tail[8];
    size_t tn;
    tok_stream_finish(&st, tail, &tn);
    assert_int_equal(tn, 0);
    assert_int_equal(acc_len, len);
    assert_memory_equal(acc, s, len);
    free(acc);
    free(text);
    tok_ids_free(&ids);
}

static void test_roundtrip_and_stream(void **state) {
    (void)state;
    const char *texts[] = {
        "Hello world",
        "你好，世界！今天天气很好。",
        "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
        "日本語のテキスト",
        "mixed 中文 and emoji 🎉 with \\boxed{42}\r\n\ttabs",
        "<|im_start|>user\nhi<|im_end|>",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        roundtrip(qwen, texts[i]);
        roundtrip(deepseek, texts[i]);
        roundtrip(dflt, texts[i]);
    }
}

/* An id that ends mid-character is held back, then completed; a cut tail flushes as U+FFFD. */
static void test_stream_holds_partial_utf8(void **state) {
    (void)state;
    /* with the default tokenizer, a CJK character is three byte tokens */
    tok_ids ids = {0};
    encode_ok(dflt, "中", 3, 0, &ids);
    assert_int_equal(ids.n, 3);
    tok_stream st;
    tok_stream_init(&st, dflt, 0);
    char buf[64];
    size_t n;
    assert_int_equal(tok_stream_push(&st, ids.ids[0], buf, sizeof buf, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_int_equal(tok_stream_push(&st, ids.ids[1], buf, sizeof buf, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_int_equal(tok_stream_push(&st, ids.ids[2], buf, sizeof buf, &n, NULL), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(buf, "中", 3);
    /* two of three bytes, then the end: one replacement character, like tok_decode */
    tok_stream_init(&st, dflt, 0);
    assert_int_equal(tok_stream_push(&st, ids.ids[0], buf, sizeof buf, &n, NULL), 0);
    assert_int_equal(tok_stream_push(&st, ids.ids[1], buf, sizeof buf, &n, NULL), 0);
    tok_stream_finish(&st, buf, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(buf, "\xEF\xBF\xBD", 3);
    char *text;
    size_t len;
    assert_int_equal(tok_decode(dflt, ids.ids, 2, 0, &text, &len, NULL), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(text, "\xEF\xBF\xBD", 3);
    free(text);
    /* a cut character followed by ASCII: U+FFFD then the ASCII, as the whole decode gives */
    int32_t seq[3] = {ids.ids[0], ids.ids[1], tok_token_to_id(dflt, "a")};
    tok_stream_init(&st, dflt, 0);
    char acc[64];
    size_t an = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tok_stream_push(&st, seq[i], buf, sizeof buf, &n, NULL), 0);
        memcpy(acc + an, buf, n);
        an += n;
    }
    assert_int_equal(an, 4);
    assert_memory_equal(acc,
                        "\xEF\xBF\xBD"
                        "a",
                        4);
    tok_ids_free(&ids);
}

/* Invalid UTF-8 never fails and reads as Python's errors="replace" text. */
static void test_invalid_utf8(void **state) {
    (void)state;
    const char bad[] = "ok \xff\xfe then \xe4\xbd cut \xed\xa0\x80 surrogate \xf0\x9f\x98";
    const char fixed[] =
        "ok \xEF\xBF\xBD\xEF\xBF\xBD then \xEF\xBF\xBD cut \xEF\xBF\xBD\xEF\xBF\xBD"
        "\xEF\xBF\xBD surrogate \xEF\xBF\xBD";
    tok_ids a = {0}, b = {0};
    encode_ok(qwen, bad, sizeof bad - 1, 0, &a);
    encode_ok(qwen, fixed, sizeof fixed - 1, 0, &b);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    tok_ids_free(&a);
    tok_ids_free(&b);
    /* empty text: no ids, no error */
    encode_ok(qwen, "", 0, 0, &a);
    assert_int_equal(a.n, 0);
    tok_ids_free(&a);
}

/* Offsets point at each token's bytes in the input (NFC leaves this text unchanged). */
static void test_offsets(void **state) {
    (void)state;
    const char *s = "Hello <|im_end|> wörld 12345\n\n  done";
    tok_ids ids = {0};
    encode_ok(qwen, s, strlen(s), TOK_ENCODE_OFFSETS, &ids);
    size_t total = strlen(s);
    for (size_t i = 0; i < ids.n; i++) {
        size_t end = i + 1 < ids.n ? ids.offsets[i + 1] : total;
        size_t len;
        const char *b = tok_id_bytes(qwen, ids.ids[i], &len);
        assert_non_null(b);
        assert_int_equal(end - ids.offsets[i], len);
        assert_memory_equal(s + ids.offsets[i], b, len);
    }
    tok_ids_free(&ids);
}

/* Offsets of invalid UTF-8 point into the caller's text, not into its repaired copy (each U+FFFD
 * is 3 bytes): a fuzz_tokenizer finding, where they ran past the end of the input. */
static void test_offsets_of_invalid_utf8(void **state) {
    (void)state;
    const char bad[] = "abÿÃ(âð ok";
    const char *tail = strstr(bad, " ok");
    const tok_tokenizer *toks[] = {qwen, dflt};
    for (size_t t = 0; t < 2; t++) {
        tok_ids ids = {0};
        encode_ok(toks[t], bad, sizeof bad - 1, TOK_ENCODE_OFFSETS | TOK_ENCODE_ADD_SPECIAL, &ids);
        int tail_found = 0;
        for (size_t i = 0; i < ids.n; i++) {
            assert_true(ids.offsets[i] <= sizeof bad - 1);
            if (i) assert_true(ids.offsets[i] >= ids.offsets[i - 1]);
            tail_found |= ids.offsets[i] == (uint32_t)(tail - bad);
        }
        assert_true(tail_found); /* " ok" starts a pre-token at its own offset */
        tok_ids_free(&ids);
    }
}

/* Without a decoder, tokenizers joins the tokens with spaces; the stream must too (its output is
 * tok_decode's): a fuzz_tokenizer finding, where the stream joined them with nothing. */
static void test_stream_without_decoder(void **state) {
    (void)state;
    const char *json = "{\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}], "
                       "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                       "\"merges\": [\"a b\"]}}";
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    assert_int_equal(tok_load_from_memory(json, strlen(json), NULL, 0, &t, &err), 0);
    const int32_t ids[] = {3, 2, 0, 3, 1, 2};
    for (int skip = 0; skip < 2; skip++) {
        char *text = NULL;
        size_t len = 0;
        assert_int_equal(tok_decode(t, ids, 6, skip, &text, &len, &err), 0);
        assert_string_equal(text, skip ? "ab a b ab" : "<s> ab a <s> b ab");
        char streamed[64] = "", out[64];
        tok_stream s;
        tok_stream_init(&s, t, skip);
        for (size_t i = 0; i < 6; i++) {
            size_t n = 0;
            assert_int_equal(tok_stream_push(&s, ids[i], out, sizeof out, &n, &err), 0);
            strncat(streamed, out, n);
        }
        assert_string_equal(streamed, text);
        free(text);
    }
    tok_free(t);
}

/* Characters with no token (no unk_token, no byte token) are dropped, as tokenizers drops them,
 * also when nothing at all is left: a fuzz_tokenizer finding (UBSan in the Sanitize build: a
 * copy of zero ids from a NULL array). */
static void test_word_without_tokens(void **state) {
    (void)state;
    const char *json = "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, \"model\": {\"type\": "
                       "\"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"byte_fallback\": true}}";
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    assert_int_equal(tok_load_from_memory(json, strlen(json), NULL, 0, &t, &err), 0);
    for (unsigned flags = 0; flags < 4; flags++) {
        tok_ids ids = {0};
        encode_ok(t, "xyz", 3, flags, &ids);
        assert_int_equal(ids.n, 0);
        encode_ok(t, "xa a", 4, flags, &ids);
        assert_int_equal(ids.n, 2);
        tok_ids_free(&ids);
    }
    tok_free(t);
}

/* DeepSeek's config sets add_bos_token: BOS comes first with TOK_ENCODE_ADD_SPECIAL. */
static void test_add_special(void **state) {
    (void)state;
    tok_ids ids = {0};
    encode_ok(deepseek, "hi", 2, TOK_ENCODE_ADD_SPECIAL, &ids);
    assert_true(ids.n >= 2);
    assert_int_equal(ids.ids[0], tok_bos_id(deepseek));
    assert_int_equal(tok_bos_id(deepseek), 0);
    tok_ids_free(&ids);
    encode_ok(qwen, "hi", 2, TOK_ENCODE_ADD_SPECIAL, &ids);
    assert_int_equal(ids.n, 1);
    tok_ids_free(&ids);
}

static void expect_load_error(const char *json, const char *needle) {
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    int rc = tok_load_from_memory(json, strlen(json), NULL, 0, &t, &err);
    if (rc == 0 || !strstr(err.msg, needle))
        fprintf(stderr, "wanted an error with '%s', got rc %d: %s\n", needle, rc, err.msg);
    assert_int_equal(rc, -1);
    assert_null(t);
    assert_non_null(strstr(err.msg, needle));
}

#define MODEL                                                                                      \
    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a " \
    "b\"]}"

static void test_errors_name_the_problem(void **state) {
    (void)state;
    expect_load_error("{\"model\": {", "malformed JSON");
    expect_load_error("[1, 2]", "top level must be an object");
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"UnicodeScripts\"}, " MODEL "}",
                      "unsupported pre-tokenizer type 'UnicodeScripts'");
    expect_load_error("{\"normalizer\": {\"type\": \"Precompiled\"}, " MODEL "}",
                      "unsupported normalizer type 'Precompiled'");
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": "
                      "[{\"type\": \"ByteLevel\"}, {\"type\": \"Digits\"}]}, " MODEL "}",
                      "a pre-tokenizer after ByteLevel is not supported");
    expect_load_error("{\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": "
                      "\"Fuse\"}, {\"type\": \"ByteFallback\"}]}, " MODEL "}",
                      "a ByteFallback step after the tokens are joined");
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",
                      "unsupported model type 'Unigram'");
    expect_load_error("{\"decoder\": {\"type\": \"WordPiece\"}, " MODEL "}",
                      "unsupported decoder type 'WordPiece'");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a "
                      "c\"]}}",
                      "merges[0]: token 'c' is not in the vocabulary");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
                      "model.vocab['a'] must be a non-negative integer id");
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, "
                      "\"behavior\": \"Isolated\"}, " MODEL "}",
                      "the regex does not compile");
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, "
                      "\"behavior\": \"Sideways\"}, " MODEL "}",
                      "unknown split behavior 'Sideways'");
    expect_load_error("{\"added_tokens\": [{\"id\": 5}], " MODEL "}",
                      "added_tokens[0].content must be a non-empty string");
    /* a post-processor's ids reach the model as they are: each must be in the vocabulary (a
     * fuzz_tokenizer finding: encode returned id 7 of a 7-token vocabulary) */
    expect_load_error("{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                      "[{\"SpecialToken\": {\"id\": \"<s>\"}}, {\"Sequence\": {\"id\": \"A\"}}], "
                      "\"special_tokens\": {\"<s>\": {\"ids\": [7]}}}, " MODEL "}",
                      "special token id 7 is not in the vocabulary");
    expect_load_error("{\"post_processor\": {\"type\": \"BertProcessing\", \"cls\": [\"[CLS]\", "
                      "-1], \"sep\": [\"b\", 1]}, " MODEL "}",
                      "special token id -1 is not in the vocabulary");
    expect_load_error("{\"post_processor\": {\"type\": \"RobertaProcessing\", \"cls\": [\"a\", "
                      "0], \"sep\": [\"x\", 4294967296]}, " MODEL "}",
                      "special token id 4294967296 is not in the vocabulary");
    /* and a missing directory */
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    assert_int_equal(tok_load("/nonexistent/dir", &t, &err), -1);
    assert_non_null(strstr(err.msg, "no tokenizer.json"));
}

/* A special token of tokenizer_config.json missing from the vocabulary is named in the error: a
 * fuzz_tokenizer finding, where the message read the name after its JSON was freed (ASan in the
 * Sanitize build). */
static void test_config_token_not_in_vocabulary(void **state) {
    (void)state;
    const char *json = "{" MODEL "}";
    const char *config = "{\"bos_token\": \"a\", \"eos_token\": {\"content\": "
                         "\"<|a-rather-long-end-of-text-token|>\"}}";
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    assert_int_equal(tok_load_from_memory(json, strlen(json), config, strlen(config), &t, &err),
                     -1);
    assert_null(t);
    assert_non_null(strstr(err.msg, "eos_token '<|a-rather-long-end-of-text-token|>' is not in the "
                                    "vocabulary"));
}

/* A minimal non-byte-level file works too, and a Split pattern given as a String is literal. */
static void test_minimal_file(void **state) {
    (void)state;
    const char *json =
        "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \".\"}, "
        "\"behavior\": \"Removed\"}, " MODEL "}";
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    int rc = tok_load_from_memory(json, strlen(json), NULL, 0, &t, &err);
    if (rc) fprintf(stderr, "load: %s\n", err.msg);
    assert_int_equal(rc, 0);
    tok_ids ids = {0};
    encode_ok(t, "ab.ba", 5, 0, &ids);
    /* "ab" → 2; "." removed; "ba" → b a */
    assert_int_equal(ids.n, 3);
    assert_int_equal(ids.ids[0], 2);
    assert_int_equal(ids.ids[1], 1);
    assert_int_equal(ids.ids[2], 0);
    tok_ids_free(&ids);
    tok_free(t);
}

/* A Llama-2 / Mistral style file (Metaspace prepend_scheme first, BPE with byte_fallback, the
 * decoder Replace + ByteFallback + Fuse + Strip): decode gives the text back, streaming equals
 * the whole decode (the leading space stripped once, byte-fallback characters held back until
 * complete), and offsets point into the input. */
static tok_tokenizer *llama_style(const char *decoder) {
    size_t cap = 16384, n = 0;
    char *json = malloc(cap);
    n += (size_t)snprintf(json + n, cap - n,
                          "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": "
                          "true}, {\"id\": 262, \"content\": \"<s>\", \"special\": true}], "
                          "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": "
                          "\"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false}, "
                          "\"decoder\": %s, \"model\": {\"type\": \"BPE\", \"unk_token\": "
                          "\"<unk>\", \"byte_fallback\": true, \"fuse_unk\": true, \"vocab\": "
                          "{\"<unk>\": 0, \"\\u2581\": 1, \"a\": 2, \"b\": 3, \"\\u2581a\": 4, "
                          "\"ab\": 5",
                          decoder);
    for (int b = 0; b < 256; b++)
        n += (size_t)snprintf(json + n, cap - n, ", \"<0x%02X>\": %d", b, 6 + b);
    n += (size_t)snprintf(json + n, cap - n,
                          "}, \"merges\": [[\"\\u2581\", \"a\"], [\"a\", \"b\"]]}}");
    tok_tokenizer *t = NULL;
    chord_err err = {0};
    int rc = tok_load_from_memory(json, n, NULL, 0, &t, &err);
    if (rc) fprintf(stderr, "load: %s\n", err.msg);
    assert_int_equal(rc, 0);
    free(json);
    return t;
}

static void stream_equals_decode(const tok_tokenizer *t, const int32_t *ids, size_t n) {
    char *text;
    size_t len;
    assert_int_equal(tok_decode(t, ids, n, 0, &text, &len, NULL), 0);
    tok_stream st;
    tok_stream_init(&st, t, 0);
    char acc[4096];
    size_t acc_len = 0;
    for (size_t i = 0; i < n; i++) {
        char buf[1024];
        size_t k;
        assert_int_equal(tok_stream_push(&st, ids[i], buf, sizeof buf, &k, NULL), 0);
        memcpy(acc + acc_len, buf, k);
        acc_len += k;
    }
    size_t k;
    tok_stream_finish(&st, acc + acc_len, &k);
    acc_len += k;
    if (acc_len != len || memcmp(acc, text, len) != 0)
        fprintf(stderr, "stream '%.*s' decode '%s'\n", (int)acc_len, acc, text);
    assert_int_equal(acc_len, len);
    assert_memory_equal(acc, text, len);
    free(text);
}

static void test_llama_style(void **state) {
    (void)state;
    const char *chain = "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", "
                        "\"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"}, {\"type\": "
                        "\"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", "
                        "\"content\": \" \", \"start\": 1, \"stop\": 0}]}";
    const char *meta = "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
                       "\"prepend_scheme\": \"always\"}";
    const char *decoders[2] = {chain, meta};
    for (int d = 0; d < 2; d++) {
        tok_tokenizer *t = llama_style(decoders[d]);
        const char *s = "a ab \xe4\xbd\xa0"
                        "b<s>  a";
        tok_ids ids = {0};
        assert_int_equal(tok_encode(t, s, strlen(s), TOK_ENCODE_OFFSETS, &ids, NULL), 0);
        /* ▁a, ▁a b (▁a ranks first), ▁, the three bytes of 你, b, <s>, then "  a": ▁ ▁a (the
         * ids and decodes below are what `tokenizers` gives for the same file) */
        int32_t want[] = {4, 4, 3, 1, 6 + 0xE4, 6 + 0xBD, 6 + 0xA0, 3, 262, 1, 4};
        assert_int_equal(ids.n, sizeof want / sizeof want[0]);
        assert_memory_equal(ids.ids, want, sizeof want);
        /* byte offsets: a replacement character points at its space, a byte token at its byte */
        uint32_t want_off[] = {0, 1, 3, 4, 5, 6, 7, 8, 9, 12, 13};
        assert_memory_equal(ids.offsets, want_off, sizeof want_off);
        char *text;
        size_t len;
        assert_int_equal(tok_decode(t, ids.ids, ids.n, 0, &text, &len, NULL), 0);
        /* the Metaspace decoder alone has no ByteFallback: byte tokens stay as written */
        assert_string_equal(text, d == 0 ? "a ab \xe4\xbd\xa0"
                                           "b<s>  a"
                                         : "a ab <0xE4><0xBD><0xA0>b<s>  a");
        free(text);
        stream_equals_decode(t, ids.ids, ids.n);
        int32_t lead[] = {1, 1, 4, 6 + 0xE4, 6 + 0xBD, 6 + 0xA0}; /* "  a你" / "▁▁a" first */
        stream_equals_decode(t, lead, 6);
        int32_t first_byte[] = {6 + 0x20, 4};
        stream_equals_decode(t, first_byte, 2);
        /* ByteFallback: a run of byte tokens that is not UTF-8 gives one U+FFFD per byte */
        int32_t cut[] = {4, 6 + 0xE4, 6 + 0xBD};
        assert_int_equal(tok_decode(t, cut, 3, 0, &text, &len, NULL), 0);
        assert_string_equal(text, d == 0 ? "a\xef\xbf\xbd\xef\xbf\xbd" : "a<0xE4><0xBD>");
        free(text);
        tok_ids_free(&ids);
        tok_free(t);
    }
}

/* A Strip decoder with stop > 0 after the join (docs/fuzzing.md, finding 7): tok_decode strips the
 * last `stop` copies of the whole text, so the stream holds back the copies that end the text so
 * far until more text comes, and drops them at the end. The decodes are those of `tokenizers`
 * 0.23.3 for the same file (where it does not panic: its Strip slices past a text of copies
 * only), the pieces those of its DecodeStream; the stream always equals chord's decode. */
static tok_tokenizer *strip_stop_style(int start, int stop, const char *character) {
    char chain[512];
    snprintf(chain, sizeof chain,
             "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": "
             "{\"String\": \"\\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, "
             "{\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \"%s\", \"start\": %d, "
             "\"stop\": %d}]}",
             character, start, stop);
    return llama_style(chain);
}

static void expect_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, const char *want) {
    char *text;
    size_t len;
    assert_int_equal(tok_decode(t, ids, n, 0, &text, &len, NULL), 0);
    assert_string_equal(text, want);
    free(text);
    stream_equals_decode(t, ids, n);
}

static void test_stream_strip_stop(void **state) {
    (void)state;
    enum { SP = 1, A = 2, B = 3, S = 262, E4 = 6 + 0xE4, SPACE_BYTE = 6 + 0x20 };
    tok_tokenizer *t = strip_stop_style(0, 1, " ");
    expect_decode(t, (int32_t[]){SP}, 1, "");
    expect_decode(t, (int32_t[]){A, SP}, 2, "a");
    expect_decode(t, (int32_t[]){A, SP, SP}, 3, "a ");
    expect_decode(t, (int32_t[]){A, SP, B}, 3, "a b");
    expect_decode(t, (int32_t[]){A, SP, SP, SP}, 4, "a  ");
    expect_decode(t, (int32_t[]){A, SP, SP, B}, 4, "a  b");
    expect_decode(t, (int32_t[]){A, SPACE_BYTE}, 2, "a"); /* a byte token's space */
    expect_decode(t, (int32_t[]){SP, S, SP}, 3, " <s>");
    expect_decode(t, (int32_t[]){A, SP, E4}, 3, "a \xef\xbf\xbd"); /* held, then not last */
    /* the pieces: the space comes out with the text after it (DecodeStream: a, None, " b") */
    tok_stream st;
    tok_stream_init(&st, t, 0);
    const int32_t ids[] = {A, SP, B, SP};
    const char *pieces[] = {"a", "", " b", ""};
    for (int i = 0; i < 4; i++) {
        char buf[64];
        size_t n;
        assert_int_equal(tok_stream_push(&st, ids[i], buf, sizeof buf, &n, NULL), 0);
        assert_int_equal(n, strlen(pieces[i]));
        assert_memory_equal(buf, pieces[i], n);
    }
    char tail[8];
    size_t tn;
    tok_stream_finish(&st, tail, &tn);
    assert_int_equal(tn, 0); /* the held space is the last character: stripped */
    tok_free(t);

    t = strip_stop_style(1, 1, " "); /* start and stop: "▁" alone panics `tokenizers` */
    expect_decode(t, (int32_t[]){A, SP, SP}, 3, "a ");
    expect_decode(t, (int32_t[]){A, SP, SP, B}, 4, "a  b");
    stream_equals_decode(t, (int32_t[]){SP}, 1);
    stream_equals_decode(t, (int32_t[]){SP, SP, SP}, 3);
    stream_equals_decode(t, (int32_t[]){SP, A, SP}, 3);
    tok_free(t);

    t = strip_stop_style(0, 2, " ");
    expect_decode(t, (int32_t[]){A, SP, SP}, 3, "a");
    expect_decode(t, (int32_t[]){A, SP, SP, SP}, 4, "a ");
    expect_decode(t, (int32_t[]){A, SP, SP, B}, 4, "a  b");
    stream_equals_decode(t, (int32_t[]){SP, SP, SP}, 3);
    tok_free(t);

    /* what a stream would hold back is bounded at load (tokenizer.h, TOK_STREAM_MAX_HELD) */
    const char *refused[] = {
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, {\"type\": \"Strip\", "
        "\"content\": \"\\u2581\", \"start\": 0, \"stop\": 2}]}",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, {\"type\": \"Strip\", "
        "\"content\": \" \", \"start\": 0, \"stop\": 1}, {\"type\": \"Strip\", \"content\": "
        "\"a\", \"start\": 0, \"stop\": 1}]}",
    };
    for (int i = 0; i < 2; i++) {
        char json[512];
        int n = snprintf(json, sizeof json,
                         "{\"decoder\": %s, \"model\": {\"type\": \"BPE\", \"vocab\": "
                         "{\"a\": 0}, \"merges\": []}}",
                         refused[i]);
        chord_err err = {0};
        assert_int_equal(tok_load_from_memory(json, (size_t)n, NULL, 0, &t, &err), -1);
        assert_non_null(strstr(err.msg, "Strip with a stop"));
    }
}

static void test_bad_ids_decode(void **state) {
    (void)state;
    int32_t ids[2] = {1, 999999999};
    char *text;
    size_t len;
    chord_err err = {0};
    assert_int_equal(tok_decode(qwen, ids, 2, 0, &text, &len, &err), -1);
    assert_non_null(strstr(err.msg, "999999999"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_embedded_matches_files),
        cmocka_unit_test(test_default_reproducible),
        cmocka_unit_test(test_default_tokenizes_task_well),
        cmocka_unit_test(test_roundtrip_and_stream),
        cmocka_unit_test(test_stream_holds_partial_utf8),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_offsets_of_invalid_utf8),
        cmocka_unit_test(test_stream_without_decoder),
        cmocka_unit_test(test_word_without_tokens),
        cmocka_unit_test(test_config_token_not_in_vocabulary),
        cmocka_unit_test(test_add_special),
        cmocka_unit_test(test_errors_name_the_problem),
        cmocka_unit_test(test_minimal_file),
        cmocka_unit_test(test_bad_ids_decode),
        cmocka_unit_test(test_llama_style),
        cmocka_unit_test(test_stream_strip_stop),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
