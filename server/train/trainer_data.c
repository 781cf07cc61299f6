/* trainer_data.c — JSONL datasets for the step loop (trainer_data.h): a line index, a seeded
 * permutation per epoch, and records parsed by dataset.h and tokenized by chat.h on demand. */
#include "server/train/trainer_data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/base/buf.h"
#include "server/base/rng.h"

/* Every record passes the record parser (dataset.h) once, at open, so that a bad line fails the
 * job before any training (naming the line), not at the step that happens to draw it. Reads the
 * file sequentially; no tokenization. */
static int check_records(trainer_dataset *ds, chord_err *err) {
    chord_buf buf = {0};
    int rc = 0;
    for (int64_t i = 0; i < ds->n && rc == 0; i++) {
        size_t len = (size_t)(ds->offsets[i + 1] - ds->offsets[i]);
        if (chord_buf_reserve(&buf, len + 1) != 0) {
            rc = chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", ds->path);
            break;
        }
        if (pread(ds->fd, buf.data, len, (off_t)ds->offsets[i]) != (ssize_t)len) {
            rc = chord_err_setc(err, CHORD_E_IO, "%s: read failed", ds->path);
            break;
        }
        if (ds_parse_line(ds->kind, buf.data, len, (uint64_t)ds->lines[i], NULL, err) < 0)
            rc = chord_err_prefix(err, "%s", ds->path);
    }
    chord_buf_free(&buf);
    return rc;
}

int trainer_dataset_open(trainer_dataset *ds, const char *path, ds_kind kind, uint64_t seed,
                         chord_err *err) {
    memset(ds, 0, sizeof *ds);
    ds->fd = -1;
    ds->perm_epoch = -1;
    ds->kind = kind;
    ds->seed = seed;
    if (kind != DS_PROMPTS && kind != DS_EXPERT)
        return chord_err_set(err, "%s: unknown dataset kind %d", path, (int)kind);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return chord_err_setc(err, CHORD_E_NOT_FOUND, "%s: %s", path, strerror(errno));
    ds->fd = fd;
    ds->path = strdup(path);
    if (!ds->path) goto oom;
    /* index the non-blank lines (blank: only spaces, tabs and CRs, as dataset.h; the UTF-8 BOM
     * that may open the file counts as blank) */
    size_t cap_offsets = 0, cap_lines = 0;
    char buf[1 << 16];
    int has_bom = pread(fd, buf, 3, 0) == 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0;
    uint64_t pos = 0, line_start = 0;
    int64_t line_no = 1;
    int blank = 1;
    for (;;) {
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            trainer_dataset_close(ds);
            return chord_err_setc(err, CHORD_E_IO, "%s: %s", path, strerror(e));
        }
        for (ssize_t i = 0; i <= got; i++) {
            int at_eof = got == 0 && i == 0;
            if (i == got && !at_eof) break;
            char c = at_eof ? '\n' : buf[i];
            uint64_t at = pos + (uint64_t)i;
            if (c == '\n') {
                if (!blank) {
                    uint64_t *offsets = chord_array_grow(ds->offsets, &cap_offsets,
                                                         (size_t)ds->n + 2, sizeof *offsets);
                    if (!offsets) goto oom;
                    ds->offsets = offsets;
                    int64_t *lines =
                        chord_array_grow(ds->lines, &cap_lines, (size_t)ds->n + 1, sizeof *lines);
                    if (!lines) goto oom;
                    ds->lines = lines;
                    ds->offsets[ds->n] = line_start;
                    ds->lines[ds->n] = line_no;
                    ds->n++;
                }
                line_no++;
                line_start = at + 1;
                blank = 1;
            } else if (c != ' ' && c != '\t' && c != '\r' && !(has_bom && at < 3)) {
                blank = 0;
            }
            if (at_eof) break;
        }
        if (got == 0) break;
        pos += (uint64_t)got;
    }
    if (ds->n == 0) {
        trainer_dataset_close(ds);
        return chord_err_set(err, "%s: no records", path);
    }
    ds->offsets[ds->n] = pos;
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

/* Fisher–Yates with a splitmix64 stream keyed by (seed, epoch). */
static void build_perm(trainer_dataset *ds, int64_t epoch) {
    for (int64_t i = 0; i < ds->n; i++)
        ds->perm[i] = i;
    uint64_t state = chord_splitmix64(ds->seed ^ chord_splitmix64((uint64_t)epoch + 1));
    for (int64_t i = ds->n - 1; i > 0; i--) {
        state = chord_splitmix64(state);
        int64_t j = (int64_t)(state % (uint64_t)(i + 1));
        int64_t tmp = ds->perm[i];
        ds->perm[i] = ds->perm[j];
        ds->perm[j] = tmp;
    }
    ds->perm_epoch = epoch;
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
    long long lno = (long long)ds->lines[i];
    ds_record rec;
    int prc = ds_parse_line(ds->kind, line, len, (uint64_t)lno, &rec, err);
    free(line);
    if (prc <= 0) /* a blank line cannot be indexed: the file changed since it was opened */
        return prc < 0
                   ? chord_err_prefix(err, "%s", ds->path)
                   : chord_err_set(err, "%s: line %lld: blank (the file changed)", ds->path, lno);
    int rc = -1;
    chat_encoding enc;
    memset(&enc, 0, sizeof enc);
    if (ds->kind == DS_PROMPTS) {
        out->answer = rec.answer;
        rec.answer = NULL;
        out->text = strdup(ds_prompt_text(rec.messages, rec.n_messages));
        if (!out->text) goto oom;
    }
    if (chat_encode(tok, tpl, rec.messages, rec.n_messages, with_generation_prompt, &enc, err) !=
        0) {
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
    if (ds->kind == DS_EXPERT) {
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
    ds_record_free(&rec);
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
