/* fuzz_chat.c — the chat templates (server/model/chat.h): messages from JSON
 * (chat_messages_from_json, as records and requests give them), rendered and encoded by each
 * family with the embedded default tokenizer. First byte: bits 0-2 the family (0-4 by name,
 * "raw" .. "llama3"; 5-7 the tokenizer's own template, chat_template_detect), bit 3
 * add_generation_prompt, bits 4-5 enable_thinking (-1, 0, 1). The rest is the JSON. */
#include <jansson.h>

#include "server/model/chat.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tok_tokenizer *tok;
    static const char *const families[] = {"raw", "chatml", "qwen3", "deepseek_v3", "llama3"};
    if (size < 1) return 0;
    if (!tok) {
        chord_err err = {0};
        if (tok_load_default(&tok, &err)) abort();
    }
    unsigned family = data[0] & 7u;
    int add_generation_prompt = (data[0] >> 3) & 1;
    int thinking = (int)((data[0] >> 4) & 3u) % 3 - 1;
    chat_template tpl;
    chord_err err = {0};
    int rc = family < 5 ? chat_template_by_name(families[family], tok, &tpl, &err)
                        : chat_template_detect(tok, &tpl, &err);
    if (rc) abort(); /* the default tokenizer knows every family */
    tpl.enable_thinking = thinking;
    json_error_t jerr;
    json_t *doc = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) return 0;
    chat_message *msgs = NULL;
    size_t n = 0;
    if (chat_messages_from_json(doc, &msgs, &n, &err) == 0) {
        char *text = NULL;
        size_t text_len = 0, n_spans = 0;
        uint32_t *spans = NULL;
        chord_err e2 = {0};
        if (chat_render(&tpl, msgs, n, add_generation_prompt, &text, &text_len, &spans, &n_spans,
                        &e2) == 0) {
            if (strlen(text) > text_len) abort();
            for (size_t i = 0; i < n_spans; i++)
                if (spans[2 * i] > spans[2 * i + 1] || spans[2 * i + 1] > text_len) abort();
            free(text);
            free(spans);
        }
        chat_encoding enc = {0};
        chord_err e3 = {0};
        if (chat_encode(tok, &tpl, msgs, n, add_generation_prompt, &enc, &e3) == 0) {
            volatile uint8_t sink = 0;
            for (size_t i = 0; i < enc.ids.n; i++)
                sink ^= enc.mask[i];
            (void)sink;
        }
        chat_encoding_free(&enc);
        chat_messages_free(msgs, n);
    }
    json_decref(doc);
    return 0;
}
