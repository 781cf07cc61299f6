/* chat.h — chat templates for `messages` data, rendered natively (no Jinja engine).
 *
 * A template family is recognised from the tokenizer's chat_template text or named explicitly;
 * rendering equals transformers' apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=...) with that family's template, and the ids equal tokenizing that text
 * (add_special_tokens=False, as apply_chat_template does). The assistant mask marks the tokens the
 * model must produce in a demonstration: each assistant turn's content (with Qwen3's think block)
 * and its end-of-turn token, never the role header.
 *
 * Families: "qwen3" (ChatML with think blocks), "chatml" (Qwen2/2.5 and plain ChatML, with the
 * template's default system prompt if it has one), "deepseek_v3", "llama3", and "raw" (contents
 * concatenated, EOS after each assistant turn). Tool calls inside assistant messages are not
 * supported; role "tool" is (Qwen3 and DeepSeek-V3). An unrecognised template is an error. */
#ifndef CHORD_MODEL_CHAT_H
#define CHORD_MODEL_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/model/tokenizer.h"

typedef struct chat_message {
    char *role;              /* "system", "user", "assistant" or "tool" */
    char *content;           /* UTF-8 */
    char *reasoning_content; /* optional (Qwen3), NULL when absent */
} chat_message;

typedef enum {
    CHAT_RAW = 0,
    CHAT_CHATML,
    CHAT_QWEN3,
    CHAT_DEEPSEEK_V3,
    CHAT_LLAMA3,
} chat_family;

#define CHAT_MAX_DEFAULT_SYSTEM 1024

typedef struct chat_template {
    chat_family family;
    char default_system[CHAT_MAX_DEFAULT_SYSTEM]; /* chatml: used when no system message; "" */
    int enable_thinking; /* qwen3: -1 undefined (the template's default), 0 false, 1 true */
    const char *bos;     /* bos/eos token text from the tokenizer ("" when absent) */
    const char *eos;
    int add_bos; /* raw: start with the BOS text (tokenizer_config add_bos_token) */
} chat_template;

/* The family's name ("qwen3", ...). */
const char *chat_family_name(chat_family f);
/* Recognises tok's chat_template. No template or an unknown one is an error that says so. */
int chat_template_detect(const tok_tokenizer *tok, chat_template *out, chord_err *err);
/* An explicit family by name; tok supplies bos/eos (and chatml's default system if its template
 * has one). An unknown name is an error listing the known ones. */
int chat_template_by_name(const char *name, const tok_tokenizer *tok, chat_template *out,
                          chord_err *err);

/* Renders messages. *text is malloc'd (NUL-terminated); *spans (malloc'd, 2 * *n_spans byte
 * offsets [start, end)) are the assistant parts the mask covers. spans may be NULL. */
int chat_render(const chat_template *tpl, const chat_message *msgs, size_t n,
                int add_generation_prompt, char **text, size_t *text_len, uint32_t **spans,
                size_t *n_spans, chord_err *err);

typedef struct chat_encoding {
    char *text;
    size_t text_len;
    tok_ids ids;
    uint8_t *mask; /* (ids.n) 1 on assistant tokens */
} chat_encoding;

/* Renders and tokenizes; mask[i] = 1 when token i starts inside an assistant span. */
int chat_encode(const tok_tokenizer *tok, const chat_template *tpl, const chat_message *msgs,
                size_t n, int add_generation_prompt, chat_encoding *out, chord_err *err);
void chat_encoding_free(chat_encoding *enc);

/* Messages from JSON: {"messages": [{"role", "content"}...]}, a bare array of messages, or
 * {"prompt": s[, "response": s]} (a user turn and an assistant turn). content may be a string or
 * OpenAI-style parts [{"type": "text", "text": ...}]. Errors name the bad field. */
struct json_t;
int chat_messages_from_json(const struct json_t *v, chat_message **msgs, size_t *n, chord_err *err);
void chat_messages_free(chat_message *msgs, size_t n);

#endif
