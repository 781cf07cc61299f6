/* chat.c — native renderers for the chat template families of chat.h, the assistant mask, and
 * messages from JSON. Each renderer transcribes its family's Jinja template branch by branch
 * (the comments quote the template), so the text equals apply_chat_template's.
 *
 * Not here: a general Jinja engine, tool-call rendering inside assistant messages. */
#include "server/model/chat.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server/model/tokenizer_internal.h"

static const struct {
    chat_family family;
    const char *name;
} families[] = {
    {CHAT_QWEN3, "qwen3"},   {CHAT_CHATML, "chatml"}, {CHAT_DEEPSEEK_V3, "deepseek_v3"},
    {CHAT_LLAMA3, "llama3"}, {CHAT_RAW, "raw"},
};

const char *chat_family_name(chat_family f) {
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (families[i].family == f) return families[i].name;
    return "?";
}

/* The literal default system prompt of a Qwen2/2.5-style template: the text of a string literal
 * '<|im_start|>system\n...<|im_end|>' that is not a concatenation. */
static void extract_default_system(const char *tpl, char *out, size_t cap) {
    out[0] = '\0';
    if (!tpl) return;
    const char *needle = "<|im_start|>system";
    for (const char *p = strstr(tpl, needle); p; p = strstr(p + 1, needle)) {
        const char *q = p + strlen(needle);
        if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else if (q[0] == '\n')
            q += 1;
        else
            continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end || end == q) continue;
        /* a quote inside means the prompt is built from variables */
        int literal = 1;
        for (const char *r = q; r < end; r++)
            if (*r == '\'' || *r == '"' || *r == '{' || *r == '}') literal = 0;
        if (!literal) continue;
        size_t k = 0;
        for (const char *r = q; r < end && k + 1 < cap; r++) {
            if (r[0] == '\\' && r + 1 < end) {
                char e = r[1];
                out[k++] = e == 'n' ? '\n' : e == 't' ? '\t' : e;
                r++;
            } else {
                out[k++] = *r;
            }
        }
        out[k] = '\0';
        return;
    }
}

static void fill_tokens(const tok_tokenizer *tok, chat_template *out) {
    out->bos = tok && tok_bos_token(tok) ? tok_bos_token(tok) : "";
    out->eos = tok && tok_eos_token(tok) ? tok_eos_token(tok) : "";
    out->add_bos = tok ? tok->add_bos : 0;
}

int chat_template_by_name(const char *name, const tok_tokenizer *tok, chat_template *out,
                          chord_err *err) {
    memset(out, 0, sizeof *out);
    out->enable_thinking = -1;
    fill_tokens(tok, out);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        if (strcmp(name, families[i].name) == 0) {
            out->family = families[i].family;
            if (out->family == CHAT_CHATML && tok)
                extract_default_system(tok_chat_template(tok), out->default_system,
                                       sizeof out->default_system);
            return 0;
        }
    }
    return chord_err_set(err,
                         "unknown chat template '%s' (known: qwen3, chatml, deepseek_v3, llama3, "
                         "raw)",
                         name);
}

int chat_template_detect(const tok_tokenizer *tok, chat_template *out, chord_err *err) {
    const char *t = tok_chat_template(tok);
    if (!t)
        return chord_err_set(err, "the tokenizer has no chat_template; name a template family "
                                  "(qwen3, chatml, deepseek_v3, llama3, raw)");
    const char *name = NULL;
    if (strstr(t, "<|im_start|>")) {
        if (strstr(t, "<think>") && strstr(t, "reasoning_content"))
            name = "qwen3";
        else if (!strstr(t, "<think>"))
            name = "chatml";
    } else if (strstr(t, "<\xef\xbd\x9cUser\xef\xbd\x9c>") && strstr(t, "<\xef\xbd\x9c"
                                                                        "Assistant\xef\xbd\x9c>")) {
        name = "deepseek_v3";
    } else if (strstr(t, "<|start_header_id|>") && strstr(t, "<|eot_id|>") &&
               !strstr(t, "Cutting Knowledge Date")) {
        name = "llama3";
    }
    if (!name) {
        char head[81];
        size_t k = 0;
        for (const char *p = t; *p && k < 80; p++)
            head[k++] = (*p == '\n') ? ' ' : *p;
        head[k] = '\0';
        return chord_err_set(err,
                             "unrecognised chat template (it begins \"%s\"); chord renders the "
                             "qwen3, chatml, deepseek_v3 and llama3 families: name one explicitly "
                             "if it applies",
                             head);
    }
    return chat_template_by_name(name, tok, out, err);
}

/* --- rendering helpers -------------------------------------------------------------------- */

typedef struct render {
    chord_buf text;
    uint32_t *spans;
    size_t n_spans, cap_spans;
    int oom;
} render;

static void put(render *r, const char *s) {
    if (chord_buf_append(&r->text, s, strlen(s))) r->oom = 1;
}

static void putn(render *r, const char *s, size_t n) {
    if (chord_buf_append(&r->text, s, n)) r->oom = 1;
}

static void span_begin(render *r) {
    if (r->n_spans == r->cap_spans) { /* a span is two offsets: begin, end */
        uint32_t *p = chord_array_grow(r->spans, &r->cap_spans, r->n_spans + 1, 2 * sizeof *p);
        if (!p) {
            r->oom = 1;
            return;
        }
        r->spans = p;
    }
    r->spans[2 * r->n_spans] = r->spans[2 * r->n_spans + 1] = (uint32_t)r->text.len;
    r->n_spans++;
}

static void span_end(render *r) {
    if (r->n_spans > 0) r->spans[2 * r->n_spans - 1] = (uint32_t)r->text.len;
}

static int is_role(const chat_message *m, const char *role) {
    return strcmp(m->role, role) == 0;
}

/* Python's str.isspace for one code point. */
static int py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Jinja's |trim (Python str.strip()): sets *s / *n to the stripped range. */
static void py_strip(const char **s, size_t *n) {
    const unsigned char *u = (const unsigned char *)*s;
    size_t a = 0, b = *n;
    while (a < b) {
        size_t len;
        uint32_t cp = 0;
        if (chord_utf8_scan(u + a, b - a, &len, &cp) != CHORD_UTF8_OK || !py_isspace(cp)) break;
        a += len;
    }
    while (b > a) {
        size_t k;
        if (!py_isspace(chord_utf8_prev(u + a, b - a, &k))) break;
        b = a + k;
    }
    *s += a;
    *n = b - a;
}

/* str.lstrip('\n') / rstrip('\n') on a range. */
static void lstrip_nl(const char **s, size_t *n) {
    while (*n > 0 && **s == '\n')
        (*s)++, (*n)--;
}
static void rstrip_nl(const char **s, size_t *n) {
    while (*n > 0 && (*s)[*n - 1] == '\n')
        (*n)--;
}

/* The last occurrence of needle in s[0..n), or NULL. */
static const char *last_occurrence(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    const char *found = NULL;
    for (const char *p = s; p + k <= s + n; p++) {
        p = memmem(p, (size_t)(s + n - p), needle, k);
        if (!p) break;
        found = p;
    }
    return found;
}

/* --- Qwen3 ---------------------------------------------------------------------------------- */

static int starts_with(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

static int ends_with(const char *s, const char *p) {
    size_t a = strlen(s), b = strlen(p);
    return a >= b && memcmp(s + a - b, p, b) == 0;
}

static void render_qwen3(render *r, const chat_template *tpl, const chat_message *m, size_t n,
                         int gen) {
    /* {%- if messages[0].role == 'system' %} '<|im_start|>system\n' + content + '<|im_end|>\n' */
    if (n > 0 && is_role(&m[0], "system")) {
        put(r, "<|im_start|>system\n");
        put(r, m[0].content);
        put(r, "<|im_end|>\n");
    }
    /* ns.last_query_index: the last user turn that is not a wrapped tool response */
    size_t last_query = n ? n - 1 : 0;
    for (size_t k = n; k-- > 0;) {
        if (is_role(&m[k], "user") && !(starts_with(m[k].content, "<tool_response>") &&
                                        ends_with(m[k].content, "</tool_response>"))) {
            last_query = k;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const chat_message *msg = &m[i];
        if (is_role(msg, "user") || (is_role(msg, "system") && i > 0)) {
            put(r, "<|im_start|>");
            put(r, msg->role);
            put(r, "\n");
            put(r, msg->content);
            put(r, "<|im_end|>\n");
        } else if (is_role(msg, "assistant")) {
            const char *content = msg->content;
            size_t content_len = strlen(content);
            const char *reasoning = "";
            size_t reasoning_len = 0;
            if (msg->reasoning_content) {
                reasoning = msg->reasoning_content;
                reasoning_len = strlen(reasoning);
            } else if (strstr(content, "</think>")) {
                /* content.split('</think>')[-1].lstrip('\n') */
                const char *last = last_occurrence(content, content_len, "</think>");
                const char *after = last + strlen("</think>");
                size_t after_len = content_len - (size_t)(after - content);
                /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                const char *first = strstr(content, "</think>");
                const char *rs = content;
                size_t rn = (size_t)(first - content);
                rstrip_nl(&rs, &rn);
                const char *open = last_occurrence(rs, rn, "<think>");
                if (open) {
                    size_t skip = (size_t)(open - rs) + strlen("<think>");
                    rs += skip;
                    rn -= skip;
                }
                lstrip_nl(&rs, &rn);
                lstrip_nl(&after, &after_len);
                reasoning = rs;
                reasoning_len = rn;
                content = after;
                content_len = after_len;
            }
            put(r, "<|im_start|>assistant\n");
            span_begin(r);
            if (i > last_query && (i == n - 1 || reasoning_len > 0)) {
                /* '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') */
                const char *rs = reasoning;
                size_t rn = reasoning_len;
                lstrip_nl(&rs, &rn);
                rstrip_nl(&rs, &rn);
                const char *cs = content;
                size_t cn = content_len;
                lstrip_nl(&cs, &cn);
                put(r, "<think>\n");
                putn(r, rs, rn);
                put(r, "\n</think>\n\n");
                putn(r, cs, cn);
            } else {
                putn(r, content, content_len);
            }
            put(r, "<|im_end|>");
            span_end(r);
            put(r, "\n");
        } else if (is_role(msg, "tool")) {
            if (i == 0 || !is_role(&m[i - 1], "tool")) put(r, "<|im_start|>user");
            put(r, "\n<tool_response>\n");
            put(r, msg->content);
            put(r, "\n</tool_response>");
            if (i == n - 1 || !is_role(&m[i + 1], "tool")) put(r, "<|im_end|>\n");
        }
    }
    if (gen) {
        put(r, "<|im_start|>assistant\n");
        if (tpl->enable_thinking == 0) put(r, "<think>\n\n</think>\n\n");
    }
}

/* --- ChatML (Qwen2/2.5, plain) ---------------------------------------------------------------- */

static void render_chatml(render *r, const chat_template *tpl, const chat_message *m, size_t n,
                          int gen) {
    /* Qwen2.5: a system turn always comes first, the template's default when none is given */
    if (tpl->default_system[0] && (n == 0 || !is_role(&m[0], "system"))) {
        put(r, "<|im_start|>system\n");
        put(r, tpl->default_system);
        put(r, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        put(r, "<|im_start|>");
        put(r, m[i].role);
        put(r, "\n");
        if (is_role(&m[i], "assistant")) span_begin(r);
        put(r, m[i].content);
        put(r, "<|im_end|>");
        if (is_role(&m[i], "assistant")) span_end(r);
        put(r, "\n");
    }
    if (gen) put(r, "<|im_start|>assistant\n");
}

/* --- DeepSeek-V3 --------------------------------------------------------------------------------
 */

#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT                                                                               \
    "<\xef\xbd\x9c"                                                                                \
    "Assistant\xef\xbd\x9c>"
#define DS_EOS                                                                                     \
    "<\xef\xbd\x9c"                                                                                \
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_OUTPUTS_BEGIN                                                                           \
    "<\xef\xbd\x9ctool\xe2\x96\x81outputs\xe2\x96\x81"                                             \
    "begin\xef\xbd\x9c>"
#define DS_OUTPUTS_END                                                                             \
    "<\xef\xbd\x9ctool\xe2\x96\x81outputs\xe2\x96\x81"                                             \
    "end\xef\xbd\x9c>"
#define DS_OUTPUT_BEGIN                                                                            \
    "<\xef\xbd\x9ctool\xe2\x96\x81output\xe2\x96\x81"                                              \
    "begin\xef\xbd\x9c>"
#define DS_OUTPUT_END                                                                              \
    "<\xef\xbd\x9ctool\xe2\x96\x81output\xe2\x96\x81"                                              \
    "end\xef\xbd\x9c>"

static void render_deepseek(render *r, const chat_template *tpl, const chat_message *m, size_t n,
                            int gen) {
    /* {{bos_token}}{{ns.system_prompt}}: every system message, joined by '\n\n' */
    put(r, tpl->bos);
    int first_sp = 1;
    for (size_t i = 0; i < n; i++) {
        if (!is_role(&m[i], "system")) continue;
        if (!first_sp) put(r, "\n\n");
        put(r, m[i].content);
        first_sp = 0;
    }
    int is_tool = 0, output_first = 1;
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            is_tool = 0;
            put(r, DS_USER);
            put(r, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            if (is_tool) {
                put(r, DS_OUTPUTS_END);
                is_tool = 0;
            } else {
                put(r, DS_ASSISTANT);
            }
            span_begin(r);
            put(r, m[i].content);
            put(r, DS_EOS); /* the template writes it literally */
            span_end(r);
        } else if (is_role(&m[i], "tool")) {
            is_tool = 1;
            if (output_first) {
                put(r, DS_OUTPUTS_BEGIN DS_OUTPUT_BEGIN);
                output_first = 0; /* the template never resets it */
            } else {
                put(r, "\n" DS_OUTPUT_BEGIN);
            }
            put(r, m[i].content);
            put(r, DS_OUTPUT_END);
        }
    }
    if (is_tool) put(r, DS_OUTPUTS_END);
    if (gen && !is_tool) put(r, DS_ASSISTANT);
}

/* --- Llama 3 ------------------------------------------------------------------------------------
 */

static void render_llama3(render *r, const chat_template *tpl, const chat_message *m, size_t n,
                          int gen) {
    /* '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content|trim + '<|eot_id|>',
     * bos_token before the first */
    for (size_t i = 0; i < n; i++) {
        if (i == 0) put(r, tpl->bos);
        put(r, "<|start_header_id|>");
        put(r, m[i].role);
        put(r, "<|end_header_id|>\n\n");
        const char *c = m[i].content;
        size_t cn = strlen(c);
        py_strip(&c, &cn);
        int asst = is_role(&m[i], "assistant");
        if (asst) span_begin(r);
        putn(r, c, cn);
        put(r, "<|eot_id|>");
        if (asst) span_end(r);
    }
    if (gen) put(r, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* --- raw ------------------------------------------------------------------------------------- */

static void render_raw(render *r, const chat_template *tpl, const chat_message *m, size_t n,
                       int gen) {
    (void)gen;
    if (tpl->add_bos) put(r, tpl->bos);
    for (size_t i = 0; i < n; i++) {
        int asst = is_role(&m[i], "assistant");
        if (asst) span_begin(r);
        put(r, m[i].content);
        if (asst) {
            put(r, tpl->eos);
            span_end(r);
        }
    }
}

int chat_render(const chat_template *tpl, const chat_message *msgs, size_t n,
                int add_generation_prompt, char **text, size_t *text_len, uint32_t **spans,
                size_t *n_spans, chord_err *err) {
    *text = NULL;
    if (text_len) *text_len = 0;
    if (spans) *spans = NULL;
    if (n_spans) *n_spans = 0;
    for (size_t i = 0; i < n; i++) {
        const char *role = msgs[i].role;
        if (!role || !msgs[i].content)
            return chord_err_set(err, "messages[%zu]: role and content are required", i);
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
            strcmp(role, "tool"))
            return chord_err_set(
                err, "messages[%zu].role '%s' is not system, user, assistant or tool", i, role);
        if (!strcmp(role, "tool") && tpl->family != CHAT_QWEN3 && tpl->family != CHAT_DEEPSEEK_V3 &&
            tpl->family != CHAT_CHATML)
            return chord_err_set(err,
                                 "messages[%zu]: role 'tool' is not supported by the %s "
                                 "template",
                                 i, chat_family_name(tpl->family));
    }
    render r = {0};
    if (chord_buf_reserve(&r.text, 256)) r.oom = 1;
    switch (tpl->family) {
    case CHAT_QWEN3:
        render_qwen3(&r, tpl, msgs, n, add_generation_prompt);
        break;
    case CHAT_CHATML:
        render_chatml(&r, tpl, msgs, n, add_generation_prompt);
        break;
    case CHAT_DEEPSEEK_V3:
        render_deepseek(&r, tpl, msgs, n, add_generation_prompt);
        break;
    case CHAT_LLAMA3:
        render_llama3(&r, tpl, msgs, n, add_generation_prompt);
        break;
    case CHAT_RAW:
        render_raw(&r, tpl, msgs, n, add_generation_prompt);
        break;
    }
    if (r.oom) {
        chord_buf_free(&r.text);
        free(r.spans);
        return chord_err_setc(err, CHORD_E_INTERNAL, "chat: out of memory");
    }
    if (text_len) *text_len = r.text.len;
    *text = chord_buf_take(&r.text); /* NUL-terminated also when nothing was rendered */
    if (spans) {
        *spans = r.spans;
        *n_spans = r.n_spans;
    } else {
        free(r.spans);
    }
    return 0;
}

int chat_encode(const tok_tokenizer *tok, const chat_template *tpl, const chat_message *msgs,
                size_t n, int add_generation_prompt, chat_encoding *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    uint32_t *spans = NULL;
    size_t n_spans = 0;
    if (chat_render(tpl, msgs, n, add_generation_prompt, &out->text, &out->text_len, &spans,
                    &n_spans, err))
        return -1;
    if (tok_encode(tok, out->text, out->text_len, TOK_ENCODE_OFFSETS, &out->ids, err)) {
        free(spans);
        chat_encoding_free(out);
        return -1;
    }
    out->mask = calloc(out->ids.n + 1, 1);
    if (!out->mask) {
        free(spans);
        chat_encoding_free(out);
        return chord_err_setc(err, CHORD_E_INTERNAL, "chat: out of memory");
    }
    /* offsets rise, spans rise: one merge pass */
    size_t s = 0;
    for (size_t i = 0; i < out->ids.n; i++) {
        uint32_t off = out->ids.offsets[i];
        while (s < n_spans && spans[2 * s + 1] <= off)
            s++;
        if (s < n_spans && off >= spans[2 * s] && off < spans[2 * s + 1]) out->mask[i] = 1;
    }
    free(spans);
    return 0;
}

void chat_encoding_free(chat_encoding *enc) {
    free(enc->text);
    tok_ids_free(&enc->ids);
    free(enc->mask);
    memset(enc, 0, sizeof *enc);
}

/* --- messages from JSON ---------------------------------------------------------------------- */

static int content_from_json(const json_t *c, char **out, const char *where, chord_err *err) {
    if (json_is_string(c)) {
        *out = strndup(json_string_value(c), json_string_length(c));
        return *out ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    if (json_is_array(c)) {
        chord_buf b = {0};
        size_t i;
        json_t *part;
        json_array_foreach(c, i, part) {
            const char *type = json_string_value(json_object_get(part, "type"));
            json_t *tx = json_object_get(part, "text");
            if (!type || strcmp(type, "text") != 0 || !json_is_string(tx)) {
                chord_buf_free(&b);
                return chord_err_set(err,
                                     "%s.content[%zu] must be {\"type\": \"text\", \"text\": "
                                     "string}",
                                     where, i);
            }
            if (chord_buf_append(&b, json_string_value(tx), json_string_length(tx))) {
                chord_buf_free(&b);
                return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
            }
        }
        *out = chord_buf_take(&b); /* "" for an empty list */
        return *out ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    return chord_err_set(err, "%s.content must be a string or a list of text parts", where);
}

void chat_messages_free(chat_message *msgs, size_t n) {
    if (!msgs) return;
    for (size_t i = 0; i < n; i++) {
        free(msgs[i].role);
        free(msgs[i].content);
        free(msgs[i].reasoning_content);
    }
    free(msgs);
}

int chat_messages_from_json(const json_t *v, chat_message **msgs, size_t *n, chord_err *err) {
    *msgs = NULL;
    *n = 0;
    const json_t *arr = json_is_array(v) ? v : json_object_get(v, "messages");
    if (!arr && json_is_object(v) && json_object_get(v, "prompt")) {
        json_t *p = json_object_get(v, "prompt"), *resp = json_object_get(v, "response");
        if (!json_is_string(p)) return chord_err_set(err, "prompt must be a string");
        if (resp && !json_is_string(resp)) return chord_err_set(err, "response must be a string");
        chat_message *m = calloc(2, sizeof *m);
        if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        size_t k = 0;
        m[k].role = strdup("user");
        m[k].content = strndup(json_string_value(p), json_string_length(p));
        k++;
        if (resp) {
            m[k].role = strdup("assistant");
            m[k].content = strndup(json_string_value(resp), json_string_length(resp));
            k++;
        }
        for (size_t i = 0; i < k; i++)
            if (!m[i].role || !m[i].content) {
                chat_messages_free(m, k);
                return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
            }
        *msgs = m;
        *n = k;
        return 0;
    }
    if (!json_is_array(arr))
        return chord_err_set(err, "expected \"messages\": [...] (or \"prompt\")");
    size_t count = json_array_size(arr);
    chat_message *m = calloc(count + 1, sizeof *m);
    if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    for (size_t i = 0; i < count; i++) {
        json_t *e = json_array_get(arr, i);
        char where[64];
        snprintf(where, sizeof where, "messages[%zu]", i);
        if (!json_is_object(e)) {
            chat_messages_free(m, count);
            return chord_err_set(err, "%s must be an object", where);
        }
        json_t *role = json_object_get(e, "role");
        if (!json_is_string(role)) {
            chat_messages_free(m, count);
            return chord_err_set(err, "%s.role must be a string", where);
        }
        const char *rs = json_string_value(role);
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
            strcmp(rs, "tool")) {
            chat_messages_free(m, count);
            return chord_err_set(err, "%s.role '%s' is not system, user, assistant or tool", where,
                                 rs);
        }
        m[i].role = strdup(rs);
        if (!m[i].role) {
            chat_messages_free(m, count);
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
        json_t *rc = json_object_get(e, "reasoning_content");
        if (content_from_json(json_object_get(e, "content"), &m[i].content, where, err) ||
            (json_is_string(rc) && content_from_json(rc, &m[i].reasoning_content, where, err))) {
            chat_messages_free(m, count);
            return -1;
        }
    }
    *msgs = m;
    *n = count;
    return 0;
}
