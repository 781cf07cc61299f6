/* trainer_data.c — JSONL datasets for the step loop (trainer_data.h). */
#include "server/train/trainer_data.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/base/fileutil.h"

/* Every record parses as a JSON object with the fields its kind needs, checked once at open so
 * that a bad line fails the job before any training (naming the line), not at the step that
 * happens to draw it. Reads the file sequentially; no tokenization. */
static int check_records(trainer_dataset *ds, chord_err *err) {
    char *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int64_t i = 0; i < ds->n && rc == 0; i++) {
        size_t len = (size_t)(ds->offsets[i + 1] - ds->offsets[i]);
        if (len + 1 > cap) {
            char *nb = realloc(buf, len + 1);
            if (!nb) {
                rc = chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", ds->path);
                break;
            }
            buf = nb;
            cap = len + 1;
        }
        if (pread(ds->fd, buf, len, (off_t)ds->offsets[i]) != (ssize_t)len) {
            rc = chord_err_setc(err, CHORD_E_IO, "%s: read failed", ds->path);
            break;
        }
        buf[len] = '\0';
        long long lno = (long long)ds->lines[i];
        json_error_t je;
        json_t *rec = json_loads(buf, JSON_DISABLE_EOF_CHECK, &je);
        if (!rec) {
            rc = chord_err_set(err, "%s: line %lld: invalid JSON: %s (column %d)", ds->path, lno,
                               je.text, je.column);
            break;
        }
        const json_t *prompt = json_object_get(rec, "prompt");
        const json_t *messages = json_object_get(rec, "messages");
        if (!json_is_object(rec))
            rc = chord_err_set(err, "%s: line %lld: not a JSON object", ds->path, lno);
        else if (messages && !json_is_array(messages))
            rc = chord_err_set(err, "%s: line %lld: \"messages\" must be an array", ds->path, lno);
        else if (!messages && !json_is_string(prompt))
            rc = chord_err_set(err, "%s: line %lld: needs a string \"prompt\" or \"messages\"",
                               ds->path, lno);
        else if (ds->kind == TRAINER_DATA_EXPERT && !messages &&
                 !json_is_string(json_object_get(rec, "response")))
            rc = chord_err_set(err,
                               "%s: line %lld: an expert record needs a string \"response\" "
                               "(or \"messages\")",
                               ds->path, lno);
        json_decref(rec);
    }
    free(buf);
    return rc;
}

int trainer_dataset_open(trainer_dataset *ds, const char *path, trainer_data_kind kind,
                         uint64_t seed, chord_err *err) {
    memset(ds, 0, sizeof *ds);
    ds->fd = -1;
    ds->perm_epoch = -1;
    ds->kind = kind;
    ds->seed = seed;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return chord_err_setc(err, CHORD_E_NOT_FOUND, "%s: %s", path, strerror(errno));
    ds->fd = fd;
    ds->path = strdup(path);
    size_t cap = 1024;
    ds->offsets = malloc((cap + 1) * sizeof *ds->offsets);
    ds->lines = malloc(cap * sizeof *ds->lines);
    if (!ds->path || !ds->offsets || !ds->lines) goto oom;
    /* index the non-blank lines */
    char buf[1 << 16];
    uint64_t pos = 0, line_start = 0;
    int64_t line_no = 1;
    int blank = 1;
    for (;;) {
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0) {
            if (errno == EINTR) continue;
            trainer_dataset_close(ds);
            return chord_err_setc(err, CHORD_E_IO, "%s: %s", path, strerror(errno));
        }
        for (ssize_t i = 0; i <= got; i++) {
            int at_eof = got == 0 && i == 0;
            if (i == got && !at_eof) break;
            char c = at_eof ? '\n' : buf[i];
            if (c == '\n') {
                if (!blank) {
                    if ((size_t)ds->n == cap) {
                        cap *= 2;
                        uint64_t *no = realloc(ds->offsets, (cap + 1) * sizeof *no);
                        if (!no) goto oom;
                        ds->offsets = no;
                        int64_t *nl = realloc(ds->lines, cap * sizeof *nl);
                        if (!nl) goto oom;
                        ds->lines = nl;
                    }
                    ds->offsets[ds->n] = line_start;
                    ds->lines[ds->n] = line_no;
                    ds->n++;
                }
                line_no++;
                line_start = pos + (uint64_t)i + 1;
                blank = 1;
            } else if (c != ' ' && c != '\t' && c != '\r') {
                blank = 0;
            }
            if (at_eof) break;
        }
        if (got == 0) break;
        pos += (uint64_t)got;
    }
    ds->offsets[ds->n] = pos;
    if (ds->n == 0) {
        trainer_dataset_close(ds);
        return chord_err_set(err, "%s: no records", path);
    }
    ds->perm = malloc((size_t)ds->n * sizeof *ds->perm);
    if (!ds->perm) goto oom;
    if (check_records(ds, err) != 0) {
        trainer_dataset_close(ds);
        return -1;
    }
    return 0;
oom:
    trainer_dataset_close(ds);
    return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
}

void trainer_dataset_close(trainer_dataset *ds) {
    if (ds->fd >= 0) close(ds->fd);
    free(ds->path);
    free(ds->offsets);
    free(ds->lines);
    free(ds->perm);
    memset(ds, 0, sizeof *ds);
    ds->fd = -1;
}

void trainer_item_free(trainer_item *it) {
    free(it->ids);
    free(it->mask);
    free(it->text);
    free(it->answer);
    memset(it, 0, sizeof *it);
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Fisher–Yates with a splitmix64 stream keyed by (seed, epoch). */
static void build_perm(trainer_dataset *ds, int64_t epoch) {
    for (int64_t i = 0; i < ds->n; i++)
        ds->perm[i] = i;
    uint64_t state = mix64(ds->seed ^ mix64((uint64_t)epoch + 1));
    for (int64_t i = ds->n - 1; i > 0; i--) {
        state = mix64(state);
        int64_t j = (int64_t)(state % (uint64_t)(i + 1));
        int64_t tmp = ds->perm[i];
        ds->perm[i] = ds->perm[j];
        ds->perm[j] = tmp;
    }
    ds->perm_epoch = epoch;
}

static char *json_to_text(const json_t *v) {
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (json_is_integer(v) || json_is_real(v)) return json_dumps(v, JSON_ENCODE_ANY);
    return NULL;
}

int trainer_dataset_item_at(trainer_dataset *ds, int64_t i, const tok_tokenizer *tok,
                            const chat_template *tpl, int with_generation_prompt, trainer_item *out,
                            chord_err *err) {
    memset(out, 0, sizeof *out);
    if (i < 0 || i >= ds->n)
        return chord_err_set(err, "%s: record %lld out of range", ds->path, (long long)i);
    uint64_t start = ds->offsets[i], end = ds->offsets[i + 1];
    size_t len = (size_t)(end - start);
    char *line = malloc(len + 1);
    if (!line) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    ssize_t got = pread(ds->fd, line, len, (off_t)start);
    if (got != (ssize_t)len) {
        free(line);
        return chord_err_setc(err, CHORD_E_IO, "%s: read failed", ds->path);
    }
    line[len] = '\0';
    long long lno = (long long)ds->lines[i];
    json_error_t je;
    json_t *rec = json_loads(line, JSON_DISABLE_EOF_CHECK, &je);
    free(line);
    if (!rec)
        return chord_err_set(err, "%s: line %lld: invalid JSON: %s (column %d)", ds->path, lno,
                             je.text, je.column);
    if (!json_is_object(rec)) {
        json_decref(rec);
        return chord_err_set(err, "%s: line %lld: not a JSON object", ds->path, lno);
    }
    int rc = -1;
    chat_message *msgs = NULL;
    size_t n_msgs = 0;
    chat_encoding enc;
    memset(&enc, 0, sizeof enc);
    json_t *prompt = json_object_get(rec, "prompt");
    json_t *messages = json_object_get(rec, "messages");
    json_t *view = NULL; /* only the fields chat_messages_from_json reads */
    if (messages) {
        view = json_pack("{s:O}", "messages", messages);
    } else if (prompt) {
        json_t *resp = ds->kind == TRAINER_DATA_EXPERT ? json_object_get(rec, "response") : NULL;
        view = resp ? json_pack("{s:O, s:O}", "prompt", prompt, "response", resp)
                    : json_pack("{s:O}", "prompt", prompt);
    } else {
        chord_err_set(err, "%s: line %lld: needs \"prompt\" or \"messages\"", ds->path, lno);
        goto done;
    }
    if (!view || chat_messages_from_json(view, &msgs, &n_msgs, err) != 0) {
        chord_err_prefix(err, "%s: line %lld", ds->path, lno);
        goto done;
    }
    if (ds->kind == TRAINER_DATA_PROMPTS) {
        /* the prompt is everything up to the last user turn; a trailing assistant turn (if the
         * record has one) is dropped */
        while (n_msgs > 0 && !strcmp(msgs[n_msgs - 1].role, "assistant")) {
            n_msgs--;
            free(msgs[n_msgs].role);
            free(msgs[n_msgs].content);
            free(msgs[n_msgs].reasoning_content);
        }
        if (n_msgs == 0) {
            chord_err_set(err, "%s: line %lld: no prompt", ds->path, lno);
            goto done;
        }
        json_t *ans = json_object_get(rec, "answer");
        if (ans && !(out->answer = json_to_text(ans))) {
            chord_err_set(err, "%s: line %lld: answer must be a string or a number", ds->path, lno);
            goto done;
        }
        for (size_t k = n_msgs; k-- > 0;)
            if (!strcmp(msgs[k].role, "user")) {
                out->text = strdup(msgs[k].content);
                break;
            }
        if (!out->text) out->text = strdup(msgs[n_msgs - 1].content);
    }
    if (chat_encode(tok, tpl, msgs, n_msgs, with_generation_prompt, &enc, err) != 0) {
        chord_err_prefix(err, "%s: line %lld", ds->path, lno);
        goto done;
    }
    if (enc.ids.n < 1 || enc.ids.n > (size_t)1 << 30) {
        chord_err_set(err, "%s: line %lld: renders to no tokens", ds->path, lno);
        goto done;
    }
    out->len = (int)enc.ids.n;
    out->ids = malloc(enc.ids.n * sizeof *out->ids);
    if (!out->ids) goto oom;
    memcpy(out->ids, enc.ids.ids, enc.ids.n * sizeof *out->ids);
    if (ds->kind == TRAINER_DATA_EXPERT) {
        out->mask = malloc(enc.ids.n);
        if (!out->mask) goto oom;
        memcpy(out->mask, enc.mask, enc.ids.n);
        size_t trained = 0;
        for (size_t k = 0; k < enc.ids.n; k++)
            trained += out->mask[k];
        if (trained == 0) {
            chord_err_set(err, "%s: line %lld: no assistant tokens to learn", ds->path, lno);
            goto done;
        }
    }
    rc = 0;
    goto done;
oom:
    chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
done:
    if (rc != 0) trainer_item_free(out);
    chat_encoding_free(&enc);
    chat_messages_free(msgs, n_msgs);
    json_decref(view);
    json_decref(rec);
    return rc;
}

int trainer_dataset_item(trainer_dataset *ds, int64_t cursor, const tok_tokenizer *tok,
                         const chat_template *tpl, int with_generation_prompt, trainer_item *out,
                         chord_err *err) {
    int64_t epoch = cursor / ds->n;
    if (epoch != ds->perm_epoch) build_perm(ds, epoch);
    return trainer_dataset_item_at(ds, ds->perm[cursor % ds->n], tok, tpl, with_generation_prompt,
                                   out, err);
}
