/* fuzz_tokenizer.c — tokenizer.json loading and encoding (tokenizer.h).
 * First byte, bit 0 clear: the rest is text, encoded by the embedded default tokenizer (loaded
 * once) with the flags of bits 1-2; the ids are decoded (bit 3: skip special tokens) and
 * streamed, and the stream must equal the decode (tokenizer.h's promise).
 * The rest read as 16-bit ids (some out of range) is decoded too.
 * Bit 0 set: the rest is a tokenizer.json, then optionally a NUL and a tokenizer_config.json
 * (tok_load_from_memory); a tokenizer that loads encodes, decodes and streams a few texts. */
#include "server/model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Decodes ids both ways; when both succeed they must agree. */
static void decode_both(const tok_tokenizer *tok, const int32_t *ids, size_t n, int skip_special) {
    char *text = NULL;
    size_t len = 0;
    chord_err err = {0};
    int rc = tok_decode(tok, ids, n, skip_special, &text, &len, &err);
    tok_stream s;
    tok_stream_init(&s, tok, skip_special);
    char *streamed = NULL;
    size_t slen = 0, scap = 0;
    int src = 0;
    for (size_t i = 0; i < n && src == 0; i++) {
        size_t blen = 0;
        (void)tok_id_bytes(tok, ids[i], &blen);
        size_t cap = 3 * blen + 16, out_len = 0;
        char *out = malloc(cap);
        if (!out) abort();
        chord_err e2 = {0};
        src = tok_stream_push(&s, ids[i], out, cap, &out_len, &e2);
        if (src == 0 && out_len) {
            if (out_len > cap) abort();
            if (slen + out_len + 8 > scap) {
                scap = 2 * (slen + out_len + 8);
                streamed = realloc(streamed, scap);
                if (!streamed) abort();
            }
            memcpy(streamed + slen, out, out_len);
            slen += out_len;
        }
        free(out);
    }
    if (src == 0) {
        char tail[8];
        size_t tail_len = 0;
        tok_stream_finish(&s, tail, &tail_len);
        if (tail_len > sizeof tail) abort();
        if (tail_len) {
            streamed = realloc(streamed, slen + tail_len + 1);
            if (!streamed) abort();
            memcpy(streamed + slen, tail, tail_len);
            slen += tail_len;
        }
    }
    /* equal to the byte, a decoder's Strip with stop > 0 included (docs/fuzzing.md, finding 7) */
    if (rc == 0 && src == 0 && (len != slen || (len && memcmp(text, streamed, len)))) {
        fprintf(stderr, "stream (%zu bytes) differs from decode (%zu bytes)\n", slen, len);
        fprintf(stderr, "decode: '%.*s'\nstream: '%.*s'\nids:", (int)len, text, (int)slen,
                streamed ? streamed : "");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, " (skip_special %d)\n", skip_special);
        abort();
    }
    free(streamed);
    free(text);
}

static void encode_decode(const tok_tokenizer *tok, const char *text, size_t len, unsigned flags,
                          int skip_special) {
    tok_ids ids = {0};
    chord_err err = {0};
    if (tok_encode(tok, text, len, flags, &ids, &err) == 0) {
        int32_t vocab = tok_vocab_size(tok);
        for (size_t i = 0; i < ids.n; i++) {
            if (ids.ids[i] < 0 || ids.ids[i] >= vocab) abort();
            if ((flags & TOK_ENCODE_OFFSETS) && ids.offsets[i] > len) abort();
        }
        decode_both(tok, ids.ids, ids.n, skip_special);
    }
    tok_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t mode = data[0];
    unsigned flags = (mode >> 1) & 3u;
    int skip_special = (mode >> 3) & 1;
    char *rest = fuzz_cstring(data + 1, size - 1);
    size_t len = size - 1;
    if (!(mode & 1)) {
        static tok_tokenizer *def;
        if (!def) {
            chord_err err = {0};
            if (tok_load_default(&def, &err)) abort();
        }
        encode_decode(def, rest, len, flags, skip_special);
        size_t n = len / 2;
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        if (!ids) abort();
        int32_t vocab = tok_vocab_size(def);
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)(((uint32_t)data[1 + 2 * i] | (uint32_t)data[2 + 2 * i] << 8) %
                               (uint32_t)(vocab + 4)) -
                     2; /* a few out of range both ways */
        decode_both(def, ids, n, skip_special);
        free(ids);
    } else {
        const char *nul = memchr(rest, '\0', len);
        size_t tj_len = nul ? (size_t)(nul - rest) : len;
        const char *config = nul ? nul + 1 : NULL;
        size_t config_len = nul ? len - tj_len - 1 : 0;
        tok_tokenizer *tok = NULL;
        chord_err err = {0};
        if (tok_load_from_memory(rest, tj_len, config, config_len, &tok, &err) == 0) {
            static const char *const samples[] = {
                "Hello world! It's 2+3=5.\n\n  <|im_start|>user\nhi<|im_end|>",
                "\xC3\xA9t\xC3\xA9 \xE2\x80\x94 \xF0\x9F\x98\x80 \xFF\xFE ab",
                "",
            };
            for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++)
                encode_decode(tok, samples[i], strlen(samples[i]), flags, skip_special);
            (void)tok_token_to_id(tok, "a");
            (void)tok_id_to_token(tok, 0);
            tok_free(tok);
        }
    }
    free(rest);
    return 0;
}
