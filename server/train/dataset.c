/* dataset.c — the JSONL dataset readers of dataset.h: getline over a FILE, one jansson parse per
 * line, validation that names the line and the field. Nothing is held beyond the current line. */
#include "server/train/dataset.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct ds_reader {
    FILE *f;
    char *path;
    ds_kind kind;
    ds_cursor pos;
    char *line;
    size_t line_cap;
};

int ds_open(const char *path, ds_kind kind, ds_reader **out, chord_err *err) {
    *out = NULL;
    if (kind != DS_PROMPTS && kind != DS_EXPERT)
        return chord_err_set(err, "dataset: unknown kind %d", (int)kind);
    struct stat st;
    if (stat(path, &st) != 0)
        return chord_err_setc(err, errno == ENOENT ? CHORD_E_NOT_FOUND : CHORD_E_IO, "%s: %s", path,
                              strerror(errno));
    if (S_ISDIR(st.st_mode))
        return chord_err_set(err, "%s: is a directory, not a JSONL file", path);
    ds_reader *r = calloc(1, sizeof *r);
    if (!r) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    r->f = fopen(path, "rb");
    r->path = strdup(path);
    if (!r->f || !r->path) {
        int e = errno;
        ds_close(r);
        return chord_err_setc(err, CHORD_E_IO, "%s: %s", path, strerror(e));
    }
    r->kind = kind;
    *out = r;
    return 0;
}

void ds_close(ds_reader *r) {
    if (!r) return;
    if (r->f) fclose(r->f);
    free(r->path);
    free(r->line);
    free(r);
}

void ds_record_free(ds_record *rec) {
    free(rec->prompt);
    free(rec->response);
    free(rec->answer);
    chat_messages_free(rec->messages, rec->n_messages);
    memset(rec, 0, sizeof *rec);
}

ds_cursor ds_tell(const ds_reader *r) {
    return r->pos;
}

int ds_seek(ds_reader *r, ds_cursor c, chord_err *err) {
    struct stat st;
    if (fstat(fileno(r->f), &st) != 0)
        return chord_err_setc(err, CHORD_E_IO, "%s: %s", r->path, strerror(errno));
    if ((uint64_t)st.st_size < c.offset)
        return chord_err_set(err,
                             "%s: cursor offset %llu is past the end (%lld bytes): the file "
                             "changed since the checkpoint",
                             r->path, (unsigned long long)c.offset, (long long)st.st_size);
    if (fseeko(r->f, (off_t)c.offset, SEEK_SET) != 0)
        return chord_err_setc(err, CHORD_E_IO, "%s: seek: %s", r->path, strerror(errno));
    r->pos = c;
    return 0;
}

int ds_rewind(ds_reader *r, chord_err *err) {
    ds_cursor c = {0, 0, 0};
    return ds_seek(r, c, err);
}

static char *text_of(const json_t *v) {
    if (json_is_string(v)) return strndup(json_string_value(v), json_string_length(v));
    char buf[64];
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return strdup(buf);
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        snprintf(buf, sizeof buf, "%.15g", d);
        if (strtod(buf, NULL) != d) snprintf(buf, sizeof buf, "%.17g", d);
        return strdup(buf);
    }
    return NULL;
}

/* Fills rec from one parsed line. Messages go through chat_messages_from_json. */
static int parse_record(ds_kind kind, json_t *v, ds_record *rec, chord_err *err) {
    if (!json_is_object(v)) return chord_err_set(err, "a record must be a JSON object");
    json_t *msgs = json_object_get(v, "messages");
    json_t *prompt = json_object_get(v, "prompt");
    if (msgs && prompt) return chord_err_set(err, "give \"prompt\" or \"messages\", not both");
    if (msgs) {
        if (!json_is_array(msgs)) return chord_err_set(err, "\"messages\" must be an array");
        if (json_array_size(msgs) == 0) return chord_err_set(err, "\"messages\" is empty");
        if (chat_messages_from_json(msgs, &rec->messages, &rec->n_messages, err)) return -1;
        const chat_message *last = &rec->messages[rec->n_messages - 1];
        int has_assistant = 0;
        for (size_t i = 0; i < rec->n_messages; i++)
            if (strcmp(rec->messages[i].role, "assistant") == 0) has_assistant = 1;
        if (kind == DS_PROMPTS && strcmp(last->role, "assistant") == 0)
            return chord_err_set(err, "messages: an RL prompt must not end with an assistant "
                                      "turn (the model writes it)");
        if (kind == DS_EXPERT && !has_assistant)
            return chord_err_set(err, "messages: an expert demonstration needs an assistant turn");
    } else if (prompt) {
        if (!json_is_string(prompt)) return chord_err_set(err, "\"prompt\" must be a string");
        rec->prompt = strndup(json_string_value(prompt), json_string_length(prompt));
        if (!rec->prompt) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    } else {
        return chord_err_set(err, kind == DS_PROMPTS
                                      ? "missing \"prompt\" (or \"messages\")"
                                      : "missing \"prompt\"/\"response\" (or \"messages\")");
    }
    if (kind == DS_PROMPTS) {
        json_t *answer = json_object_get(v, "answer");
        if (!answer) return chord_err_set(err, "missing \"answer\"");
        rec->answer = text_of(answer);
        if (!rec->answer) return chord_err_set(err, "\"answer\" must be a string or a number");
    } else if (rec->prompt) {
        json_t *resp = json_object_get(v, "response");
        if (!resp) return chord_err_set(err, "missing \"response\"");
        if (!json_is_string(resp)) return chord_err_set(err, "\"response\" must be a string");
        rec->response = strndup(json_string_value(resp), json_string_length(resp));
        if (!rec->response) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    return 0;
}

int ds_next(ds_reader *r, ds_record *rec, chord_err *err) {
    memset(rec, 0, sizeof *rec);
    for (;;) {
        ssize_t n = getline(&r->line, &r->line_cap, r->f);
        if (n < 0) {
            if (ferror(r->f))
                return chord_err_setc(err, CHORD_E_IO, "%s:%llu: read error: %s", r->path,
                                      (unsigned long long)r->pos.line + 1, strerror(errno));
            return 0;
        }
        r->pos.offset += (uint64_t)n;
        r->pos.line++;
        char *s = r->line;
        size_t len = (size_t)n;
        while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
            len--;
        if (r->pos.line == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
            s += 3;
            len -= 3;
        }
        size_t k = 0;
        while (k < len && (s[k] == ' ' || s[k] == '\t'))
            k++;
        if (k == len) continue; /* blank line */
        json_error_t je;
        json_t *v = json_loadb(s, len, 0, &je);
        if (!v)
            return chord_err_set(err, "%s:%llu: not valid JSON (column %d): %s", r->path,
                                 (unsigned long long)r->pos.line, je.column, je.text);
        int rc = parse_record(r->kind, v, rec, err);
        json_decref(v);
        if (rc) {
            ds_record_free(rec);
            return chord_err_prefix(err, "%s:%llu", r->path, (unsigned long long)r->pos.line);
        }
        rec->line = r->pos.line;
        rec->index = r->pos.index++;
        return 1;
    }
}

int ds_count(ds_reader *r, size_t *n, chord_err *err) {
    ds_cursor saved = ds_tell(r);
    *n = 0;
    int rc = ds_rewind(r, err);
    while (rc == 0) {
        ds_record rec;
        int got = ds_next(r, &rec, err);
        if (got < 0) rc = -1;
        if (got <= 0) break;
        ds_record_free(&rec);
        (*n)++;
    }
    chord_err tmp = {0};
    if (ds_seek(r, saved, rc ? &tmp : err)) return -1;
    return rc;
}

static int add_message(chat_message *m, const char *role, const char *content) {
    m->role = strdup(role);
    m->content = strdup(content);
    return m->role && m->content ? 0 : -1;
}

int ds_record_messages(const ds_record *rec, chat_message **msgs, size_t *n, chord_err *err) {
    *msgs = NULL;
    *n = 0;
    size_t count = rec->messages ? rec->n_messages
                                 : (size_t)(rec->prompt != NULL) + (size_t)(rec->response != NULL);
    chat_message *m = calloc(count + 1, sizeof *m);
    if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    int bad = 0;
    if (rec->messages) {
        for (size_t i = 0; i < count && !bad; i++) {
            bad = add_message(&m[i], rec->messages[i].role, rec->messages[i].content);
            if (!bad && rec->messages[i].reasoning_content) {
                m[i].reasoning_content = strdup(rec->messages[i].reasoning_content);
                bad = !m[i].reasoning_content;
            }
        }
    } else {
        size_t k = 0;
        if (rec->prompt) bad = add_message(&m[k++], "user", rec->prompt);
        if (!bad && rec->response) bad = add_message(&m[k++], "assistant", rec->response);
    }
    if (bad) {
        chat_messages_free(m, count);
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    *msgs = m;
    *n = count;
    return 0;
}
