/* dataset.c — the record rules of dataset.h: one jansson parse per line, then the fields each
 * kind needs, checked in a fixed order so the first problem of a line is the one reported,
 * wherever the line is read. Messages are converted by chat.h's chat_messages_from_json. */
#include "server/train/dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/numtext.h"

void ds_record_free(ds_record *rec) {
    if (!rec) return;
    chat_messages_free(rec->messages, rec->n_messages);
    free(rec->answer);
    memset(rec, 0, sizeof *rec);
}

int ds_answer_text(const json_t *answer, char **text, chord_err *err) {
    *text = NULL;
    if (json_is_null(answer)) return 0;
    char buf[CHORD_NUMBER_TEXT_MAX > 32 ? CHORD_NUMBER_TEXT_MAX : 32];
    const char *s = buf;
    size_t len;
    if (json_is_string(answer)) {
        s = json_string_value(answer);
        len = json_string_length(answer);
    } else if (json_is_integer(answer)) {
        len = (size_t)snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(answer));
    } else if (json_is_real(answer)) {
        len = chord_number_text(json_real_value(answer), buf);
    } else {
        return chord_err_set(err, "must be a string, a number or null");
    }
    *text = strndup(s, len);
    return *text ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
}

const char *ds_prompt_text(const chat_message *msgs, size_t n) {
    for (size_t k = n; k-- > 0;)
        if (!strcmp(msgs[k].role, "user")) return msgs[k].content;
    return n > 0 ? msgs[n - 1].content : NULL;
}

static int one_turn(const char *role, const json_t *text, chat_message *m, chord_err *err) {
    m->role = strdup(role);
    m->content = strndup(json_string_value(text), json_string_length(text));
    return m->role && m->content ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
}

/* "messages" (an array) under the kind's rules: a prompt drops its trailing assistant turns and
 * keeps at least one other; a demonstration has an assistant turn. */
static int conversation(ds_kind kind, const json_t *arr, chat_message **msgs, size_t *n,
                        chord_err *err) {
    *msgs = NULL;
    *n = 0;
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return chord_err_set(err, "\"messages\": must be a non-empty array of messages");
    chat_message *m = NULL;
    size_t count = 0;
    if (chat_messages_from_json(arr, &m, &count, err) != 0) return -1;
    if (kind == DS_PROMPTS) {
        while (count > 0 && !strcmp(m[count - 1].role, "assistant")) {
            count--;
            free(m[count].role);
            free(m[count].content);
            free(m[count].reasoning_content);
            memset(&m[count], 0, sizeof m[count]);
        }
        if (count == 0) {
            chat_messages_free(m, json_array_size(arr));
            return chord_err_set(err, "\"messages\": a prompt needs a system, user or tool turn "
                                      "(trailing assistant turns are dropped: the model writes "
                                      "that turn)");
        }
    } else {
        size_t assistant = 0;
        for (size_t i = 0; i < count; i++)
            assistant += !strcmp(m[i].role, "assistant");
        if (assistant == 0) {
            chat_messages_free(m, count);
            return chord_err_set(
                err, "\"messages\": needs at least one assistant message (expert data)");
        }
    }
    *msgs = m;
    *n = count;
    return 0;
}

static int nonempty_prompt(const json_t *prompt, chord_err *err) {
    if (!json_is_string(prompt) || json_string_length(prompt) == 0)
        return chord_err_set(err, "\"prompt\": must be a non-empty string");
    return 0;
}

int ds_prompt_messages(const json_t *prompt, chat_message **msgs, size_t *n, chord_err *err) {
    *msgs = NULL;
    *n = 0;
    if (json_is_array(prompt)) return conversation(DS_PROMPTS, prompt, msgs, n, err);
    if (!json_is_string(prompt) || json_string_length(prompt) == 0)
        return chord_err_set(err, "must be a non-empty string or an array of messages");
    chat_message *m = calloc(1, sizeof *m);
    if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    if (one_turn("user", prompt, &m[0], err) != 0) {
        chat_messages_free(m, 1);
        return -1;
    }
    *msgs = m;
    *n = 1;
    return 0;
}

int ds_record_from_json(ds_kind kind, const json_t *v, ds_record *rec, chord_err *err) {
    ds_record r = {0};
    if (!json_is_object(v)) return chord_err_set(err, "a record must be a JSON object");
    const json_t *prompt = json_object_get(v, "prompt"), *messages = json_object_get(v, "messages");
    const json_t *response = json_object_get(v, "response"), *answer = json_object_get(v, "answer");
    if (prompt && messages) return chord_err_set(err, "give \"prompt\" or \"messages\", not both");
    if (!prompt && !messages)
        return chord_err_set(err, kind == DS_PROMPTS
                                      ? "\"prompt\": required (or \"messages\")"
                                      : "\"prompt\": required with \"response\" (or \"messages\")");
    if (prompt && nonempty_prompt(prompt, err) != 0) return -1;
    if (kind == DS_EXPERT) {
        if (prompt && !response)
            return chord_err_set(err, "\"response\": required (the demonstration's reply, a "
                                      "string)");
        if (prompt && !json_is_string(response))
            return chord_err_set(err, "\"response\": must be a string");
        if (messages && response)
            return chord_err_set(err, "\"response\": not used with \"messages\" (put the reply in "
                                      "an assistant message)");
    }
    if (messages) {
        if (conversation(kind, messages, &r.messages, &r.n_messages, err) != 0) return -1;
    } else {
        size_t n = kind == DS_EXPERT ? 2 : 1;
        r.messages = calloc(n, sizeof *r.messages);
        r.n_messages = n;
        if (!r.messages) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        if (one_turn("user", prompt, &r.messages[0], err) != 0 ||
            (kind == DS_EXPERT && one_turn("assistant", response, &r.messages[1], err) != 0)) {
            ds_record_free(&r);
            return -1;
        }
    }
    if (kind == DS_PROMPTS) {
        if (!answer) {
            ds_record_free(&r);
            return chord_err_set(err, "\"answer\": required: a string or a number (null when the "
                                      "job's verifier needs no reference answer)");
        }
        if (ds_answer_text(answer, &r.answer, err) != 0) {
            ds_record_free(&r);
            return chord_err_prefix(err, "\"answer\"");
        }
    }
    if (rec)
        *rec = r;
    else
        ds_record_free(&r);
    return 0;
}

int ds_parse_line(ds_kind kind, const char *text, size_t len, uint64_t line, ds_record *rec,
                  chord_err *err) {
    if (rec) memset(rec, 0, sizeof *rec);
    if (line == 1 && len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    size_t k = 0;
    while (k < len && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r' || text[k] == '\n'))
        k++;
    if (k == len) return 0;
    json_error_t je;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!v)
        return chord_err_set(err, "line %llu: invalid JSON: %s (column %d)",
                             (unsigned long long)line, je.text, je.column);
    int rc = ds_record_from_json(kind, v, rec, err);
    json_decref(v);
    if (rc != 0) return chord_err_prefix(err, "line %llu", (unsigned long long)line);
    return 1;
}
